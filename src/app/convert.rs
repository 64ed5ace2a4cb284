//! `convert`: a Hugging Face checkpoint directory to GGUF, or a GGUF model's ternary
//! weights to another layout (`--to`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use bitnet_kernels::dispatch::Layout;
use indicatif::{ProgressBar, ProgressStyle};

use crate::convert::{EmbeddingType, Options, OutType, convert, convert_checkpoint};
use crate::weight_layout::{layout_name, parse_layout};

#[derive(Debug, Clone, clap::Args)]
pub struct ConvertArgs {
    /// Rewrite the GGUF model IN with its ternary weights in this layout, into OUT:
    /// `tl1` (bitnetd's own, read in place by the TL1 kernels) or `i2_s` (bitnet.cpp's).
    #[arg(long, value_parser = parse_layout, conflicts_with_all = ["out", "outtype", "token_embedding_type"])]
    pub to: Option<Layout>,
    /// A Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer), or
    /// with --to a GGUF model.
    #[arg(value_name = "MODEL_DIR|IN")]
    pub input: PathBuf,
    /// With --to: where to write the converted model (may be IN: it is replaced when complete).
    #[arg(value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// The GGUF file to write from a checkpoint.
    #[arg(short = 'o', long = "outfile", value_name = "OUT.gguf")]
    pub out: Option<PathBuf>,
    /// Ternary weights as `i2_s` (bitnet.cpp's, the default), `tl1` (bitnetd's) or `f32`
    /// (for bitnet.cpp's llama-quantize).
    #[arg(long, default_value = "i2_s")]
    pub outtype: OutType,
    /// Token embedding as `f16` (the default for i2_s and tl1), `q8_0`, `q6_k` or `f32`.
    #[arg(long)]
    pub token_embedding_type: Option<EmbeddingType>,
}

pub fn run(args: &ConvertArgs) -> anyhow::Result<()> {
    match args.to {
        Some(layout) => {
            let Some(output) = &args.output else {
                bail!("convert --to {} needs IN and OUT", layout_name(layout));
            };
            relayout(&args.input, output, layout)
        }
        None => {
            if args.output.is_some() {
                bail!(
                    "a second path is only taken with --to; write the checkpoint's GGUF with -o OUT.gguf"
                );
            }
            let Some(out) = &args.out else {
                bail!(
                    "convert MODEL_DIR needs -o OUT.gguf (or --to LAYOUT IN OUT for a GGUF model)"
                );
            };
            if !args.input.is_dir() {
                bail!(
                    "{} is not a checkpoint directory (to change a GGUF model's layout, use --to)",
                    args.input.display()
                );
            }
            from_checkpoint(args, out)
        }
    }
}

fn relayout(input: &Path, output: &Path, layout: Layout) -> anyhow::Result<()> {
    let done = convert(input, output, layout)
        .with_context(|| format!("converting {} to {}", input.display(), layout_name(layout)))?;
    println!(
        "{}: {} ternary tensors in {}, {} bytes",
        output.display(),
        done.tensors,
        layout_name(layout),
        done.bytes
    );
    Ok(())
}

fn from_checkpoint(args: &ConvertArgs, out: &Path) -> anyhow::Result<()> {
    let start = Instant::now();
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{pos:>4}/{len} {wide_bar} {msg}").expect("a valid template"),
    );
    let options = Options {
        outtype: args.outtype,
        embedding: args.token_embedding_type,
    };
    let summary = convert_checkpoint(&args.input, out, options, &mut |i, n, name| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
        bar.set_message(name.to_owned());
    })
    .with_context(|| format!("converting {}", args.input.display()))?;
    bar.finish_and_clear();
    println!(
        "{}: arch {}, {} tensors, {} bytes, tokenizer {} ({:.1} s)",
        out.display(),
        summary.arch,
        summary.tensors,
        summary.bytes,
        summary.tokenizer,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<ConvertArgs, clap::Error> {
        crate::app::common::parse_args(argv)
    }

    #[test]
    fn takes_a_layout_and_two_paths() {
        let a = parse(&["--to", "tl1", "in.gguf", "out.gguf"]).unwrap();
        assert_eq!(a.to, Some(Layout::Tl1));
        assert_eq!(
            (a.input, a.output),
            ("in.gguf".into(), Some("out.gguf".into()))
        );
        assert_eq!(
            parse(&["--to", "I2_S", "a", "b"]).unwrap().to,
            Some(Layout::I2s)
        );
        let e = parse(&["--to", "tl2", "a", "b"]).unwrap_err().to_string();
        assert!(e.contains("i2_s or tl1"), "{e}");
        assert!(
            parse(&["--to", "tl1", "a", "b", "--outtype", "f32"]).is_err(),
            "--to and --outtype do not mix"
        );
    }

    #[test]
    fn takes_a_checkpoint_directory_and_an_outfile() {
        let a = parse(&["ckpt", "-o", "m.gguf"]).unwrap();
        assert_eq!(a.to, None);
        assert_eq!(a.out, Some("m.gguf".into()));
        assert_eq!(a.outtype, OutType::I2s);
        assert_eq!(a.token_embedding_type, None);
        let a = parse(&[
            "ckpt",
            "-o",
            "m.gguf",
            "--outtype",
            "tl1",
            "--token-embedding-type",
            "q6_k",
        ])
        .unwrap();
        assert_eq!(a.outtype, OutType::Tl1);
        assert_eq!(a.token_embedding_type, Some(EmbeddingType::Q6K));
        let e = parse(&["ckpt", "-o", "m", "--outtype", "q4"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("i2_s, tl1 or f32"), "{e}");
    }
}
