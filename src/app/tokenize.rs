//! `bitnetd tokenize`: what llama-tokenize prints, for checking prompts.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;

use crate::gguf::Gguf;
use crate::tokenizer::Tokenizer;

#[derive(Debug, clap::Args)]
pub struct TokenizeArgs {
    /// GGUF model whose tokenizer to use.
    #[arg(short = 'm', long = "model", value_name = "PATH")]
    pub model: PathBuf,
    /// Text to tokenize.
    #[arg(
        short = 'p',
        long = "prompt",
        value_name = "TEXT",
        allow_hyphen_values = true,
        required_unless_present = "jsonl"
    )]
    pub prompt: Option<String>,
    /// Do not prepend BOS even if the model asks for it.
    #[arg(long)]
    pub no_bos: bool,
    /// Turn special-token text such as `<|eot_id|>` into its id.
    #[arg(long)]
    pub parse_special: bool,
    /// Print only a JSON array of ids.
    #[arg(long)]
    pub json: bool,
    /// Pre-tokenizer to use instead of `tokenizer.ggml.pre` (gpt-2, llama-bpe, default).
    #[arg(long, value_name = "NAME")]
    pub pretokenizer: Option<String>,
    /// Batch mode: tokenize each stdin line, a JSON object `{"text": ...}` with optional
    /// `add_special` and `parse_special` booleans, and print a JSON array of ids per line.
    #[arg(long, conflicts_with = "prompt")]
    pub jsonl: bool,
}

/// One line of `--jsonl` input.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLine {
    text: String,
    add_special: Option<bool>,
    parse_special: Option<bool>,
    /// Lets a test-case file with expected ids be piped in unchanged.
    #[serde(rename = "ids")]
    _ids: Option<serde::de::IgnoredAny>,
}

pub fn run(args: &TokenizeArgs) -> anyhow::Result<()> {
    let gguf =
        Gguf::open(&args.model).with_context(|| format!("loading {}", args.model.display()))?;
    let tokenizer = Tokenizer::from_gguf(&gguf, args.pretokenizer.as_deref())
        .with_context(|| format!("reading the tokenizer of {}", args.model.display()))?;
    let mut out = std::io::stdout().lock();
    if !args.jsonl {
        let prompt = args.prompt.as_deref().unwrap_or_default();
        let ids = tokenizer.encode(prompt, !args.no_bos, args.parse_special)?;
        write_tokens(&mut out, &tokenizer, &ids, args.json)?;
        return Ok(());
    }
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        let case: BatchLine = serde_json::from_str(&line)
            .with_context(|| format!("stdin line {}: not a {{\"text\": ...}} object", n + 1))?;
        let add = case.add_special.unwrap_or(!args.no_bos);
        let parse = case.parse_special.unwrap_or(args.parse_special);
        let ids = tokenizer.encode(&case.text, add, parse)?;
        write_tokens(&mut out, &tokenizer, &ids, true)?;
    }
    Ok(())
}

/// llama-tokenize's line format: `%6d -> '%s'`, pieces as raw bytes with
/// control tokens spelled out.
fn write_tokens(
    out: &mut impl Write,
    tokenizer: &Tokenizer,
    ids: &[u32],
    json: bool,
) -> std::io::Result<()> {
    if json {
        let list: Vec<String> = ids.iter().map(u32::to_string).collect();
        return writeln!(out, "[{}]", list.join(", "));
    }
    for &id in ids {
        write!(out, "{id:6} -> '")?;
        out.write_all(&tokenizer.token_to_piece_special(id))?;
        writeln!(out, "'")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::common::parse_args;
    use crate::tokenizer::test_gguf::{gguf, i32s, str, strs};

    #[test]
    fn parses_llama_tokenize_style_flags() {
        let a: TokenizeArgs = parse_args(&[
            "-m",
            "x.gguf",
            "-p",
            "hi",
            "--no-bos",
            "--json",
            "--pretokenizer",
            "gpt-2",
        ])
        .unwrap();
        assert_eq!(a.model, PathBuf::from("x.gguf"));
        assert_eq!(
            (
                a.prompt.as_deref().unwrap(),
                a.no_bos,
                a.parse_special,
                a.json
            ),
            ("hi", true, false, true)
        );
        assert_eq!(a.pretokenizer.as_deref(), Some("gpt-2"));
    }

    #[test]
    fn prints_ids_and_pieces() {
        let g = gguf(&[
            ("tokenizer.ggml.model", str("gpt2")),
            ("tokenizer.ggml.pre", str("gpt-2")),
            ("tokenizer.ggml.tokens", strs(&["a", "Ġ", "Ġa", "<|bos|>"])),
            ("tokenizer.ggml.token_type", i32s(&[1, 1, 1, 3])),
            ("tokenizer.ggml.merges", strs(&["Ġ a"])),
            ("tokenizer.ggml.bos_token_id", crate::gguf::Value::U32(3)),
            (
                "tokenizer.ggml.add_bos_token",
                crate::gguf::Value::Bool(true),
            ),
        ]);
        let t = Tokenizer::from_gguf(&g, None).unwrap();
        let ids = t.encode("a a", true, false).unwrap();
        let mut out = Vec::new();
        write_tokens(&mut out, &t, &ids, false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "     3 -> '<|bos|>'\n     0 -> 'a'\n     2 -> ' a'\n"
        );
        let mut out = Vec::new();
        write_tokens(&mut out, &t, &ids, true).unwrap();
        assert_eq!(out, b"[3, 0, 2]\n");
    }
}
