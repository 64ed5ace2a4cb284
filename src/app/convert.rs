//! `convert`: rewrite a model with its ternary weights in another layout.

use std::path::PathBuf;

use anyhow::Context;
use bitnet_kernels::dispatch::Layout;

use crate::convert::convert;
use crate::weight_layout::{layout_name, parse_layout};

#[derive(Debug, Clone, clap::Args)]
pub struct ConvertArgs {
    /// Layout to write: `tl1` (bitnetd's own, read in place by the TL1 kernels) or
    /// `i2_s` (bitnet.cpp's).
    #[arg(long, value_parser = parse_layout)]
    pub to: Layout,
    /// The model to convert.
    #[arg(value_name = "IN")]
    pub input: PathBuf,
    /// Where to write the converted model (may be IN: it is replaced when complete).
    #[arg(value_name = "OUT")]
    pub output: PathBuf,
}

pub fn run(args: &ConvertArgs) -> anyhow::Result<()> {
    let done = convert(&args.input, &args.output, args.to).with_context(|| {
        format!(
            "converting {} to {}",
            args.input.display(),
            layout_name(args.to)
        )
    })?;
    println!(
        "{}: {} ternary tensors in {}, {} bytes",
        args.output.display(),
        done.tensors,
        layout_name(args.to),
        done.bytes
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
        assert_eq!(a.to, Layout::Tl1);
        assert_eq!((a.input, a.output), ("in.gguf".into(), "out.gguf".into()));
        assert_eq!(parse(&["--to", "I2_S", "a", "b"]).unwrap().to, Layout::I2s);
        let e = parse(&["--to", "tl2", "a", "b"]).unwrap_err().to_string();
        assert!(e.contains("i2_s or tl1"), "{e}");
        assert!(parse(&["a", "b"]).is_err(), "--to is required");
        assert!(parse(&["--to", "tl1", "a"]).is_err(), "OUT is required");
    }
}
