//! `gen-dummy`: write a random ternary BitNet model (bitnet.cpp's
//! generate-dummy-bitnet-model.py, without needing a real model directory).

use std::path::PathBuf;

use anyhow::Context;
use bitnet_kernels::dispatch::Layout;

use crate::dummy::{self, DummySpec, EmbeddingType, ModelSize};
use crate::model::Arch;
use crate::weight_layout::parse_layout;

#[derive(Debug, Clone, clap::Args)]
pub struct GenDummyArgs {
    /// Where to write the GGUF model.
    #[arg(
        short = 'o',
        long = "outfile",
        visible_alias = "output",
        value_name = "PATH"
    )]
    pub outfile: PathBuf,
    /// Graph to declare: `bitnet` (SiLU FFN) or `bitnet-b1.58` (ReLU² FFN). Default: the
    /// preset's own (bitnet-b1.58 for tiny and 2B-4T, bitnet for the others).
    #[arg(long, value_parser = parse_arch)]
    pub arch: Option<Arch>,
    /// Shape preset (the default is bitnet.cpp's generator's).
    #[arg(long, value_enum, ignore_case = true, default_value = "7B")]
    pub model_size: ModelSize,
    /// Layout of the ternary weights: `i2_s` (bitnet.cpp's) or `tl1` (bitnetd's own,
    /// read in place by the TL1 kernels; the same weights as i2_s for the same seed).
    #[arg(long, default_value = "i2_s", value_parser = parse_layout)]
    pub outtype: Layout,
    /// How to store the token embedding: `f16` (bitnet.cpp's converter) or `q6_k` (the
    /// embedding quantization bitnet.cpp recommends).
    #[arg(long, value_enum, default_value = "f16")]
    pub token_embedding_type: EmbeddingType,
    /// Random seed: the same seed gives a byte-identical file.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Copy the tokenizer (every tokenizer.* key) from this GGUF instead of the
    /// built-in 4096-token BPE.
    #[arg(long, value_name = "GGUF")]
    pub tokenizer_from: Option<PathBuf>,
}

fn parse_arch(s: &str) -> Result<Arch, String> {
    match s {
        "bitnet" => Ok(Arch::Bitnet),
        "bitnet-b1.58" => Ok(Arch::BitnetB158),
        _ => Err(format!("{s:?} is not bitnet or bitnet-b1.58")),
    }
}

pub fn run(args: &GenDummyArgs) -> anyhow::Result<()> {
    let spec = DummySpec {
        size: args.model_size,
        arch: args.arch,
        outtype: args.outtype,
        embedding: args.token_embedding_type,
        seed: args.seed,
        tokenizer_from: args.tokenizer_from.clone(),
    };
    let s = dummy::generate(&spec, &args.outfile)
        .with_context(|| format!("generating {}", args.outfile.display()))?;
    println!(
        "{}: {} {} random model, {:.1}M params, {} tokens, {} bytes",
        s.path.display(),
        s.arch,
        args.model_size.name(),
        s.n_params as f64 / 1e6,
        s.n_vocab,
        s.bytes
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<GenDummyArgs, clap::Error> {
        crate::app::common::parse_args(argv)
    }

    #[test]
    fn defaults_follow_bitnet_cpp_generator() {
        let a = parse(&["-o", "m.gguf"]).unwrap();
        assert_eq!(a.model_size, ModelSize::B7);
        assert_eq!(a.outtype, Layout::I2s);
        assert_eq!(a.token_embedding_type, EmbeddingType::F16);
        assert_eq!(a.seed, 1);
        assert_eq!(a.arch, None);
        assert_eq!(a.tokenizer_from, None);
    }

    #[test]
    fn accepts_aliases_and_case() {
        let a = parse(&[
            "--output",
            "x.gguf",
            "--model-size",
            "2b-4t",
            "--arch",
            "bitnet",
            "--seed",
            "9",
        ])
        .unwrap();
        assert_eq!(a.outfile, PathBuf::from("x.gguf"));
        assert_eq!(a.model_size, ModelSize::B2_4T);
        assert_eq!(a.arch, Some(Arch::Bitnet));
        assert_eq!(a.seed, 9);
    }

    #[test]
    fn parses_outtypes_and_rejects_others() {
        assert_eq!(
            parse(&["-o", "m", "--outtype", "TL1"]).unwrap().outtype,
            Layout::Tl1
        );
        let q6 = parse(&["-o", "m", "--token-embedding-type", "q6_k"]).unwrap();
        assert_eq!(q6.token_embedding_type, EmbeddingType::Q6K);
        assert!(parse(&["-o", "m", "--token-embedding-type", "q4_0"]).is_err());
        let e = parse(&["-o", "m", "--outtype", "tl2"]).unwrap_err();
        assert!(e.to_string().contains("i2_s or tl1"), "{e}");
        assert!(parse(&["-o", "m", "--arch", "llama"]).is_err());
        assert!(parse(&["-o", "m", "--model-size", "13B"]).is_err());
        assert!(parse(&[]).is_err(), "the output path is required");
    }
}
