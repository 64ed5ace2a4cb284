//! `pull`: download a model file from Hugging Face (or `HF_ENDPOINT`).

use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::hub::{self, FileRef, Hub, Outcome, Progress};

#[derive(Debug, Clone, clap::Args)]
pub struct PullArgs {
    /// Repository, `owner/name`.
    #[arg(default_value = hub::DEFAULT_REPO)]
    pub repo: String,
    /// File in the repository.
    #[arg(default_value = hub::DEFAULT_FILE)]
    pub file: String,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Directory to write FILE into (default: /var/lib/bitnetd/models when it exists and
    /// is writable, else the cache directory; both get an `owner/name/` sub-directory).
    #[arg(short = 'o', long = "output-dir", value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
}

/// A byte-count bar on stderr (hidden when stderr is not a terminal).
struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&mut self, total: Option<u64>, already: u64) {
        self.0.set_length(total.unwrap_or(0));
        self.0.set_position(already);
        if already > 0 {
            self.message(&format!(
                "resuming at byte {already} of the partial download"
            ));
        }
    }

    fn advance(&mut self, bytes: u64) {
        self.0.inc(bytes);
    }

    fn message(&mut self, text: &str) {
        // Not `println`: a hidden bar (stderr not a terminal) drops its lines.
        self.0.suspend(|| eprintln!("{text}"));
    }
}

pub fn run(args: &PullArgs) -> anyhow::Result<()> {
    let hub = Hub::from_env();
    let file = FileRef::new(&args.repo, &args.file, &args.revision)?;
    let dest = match &args.output_dir {
        Some(dir) => dir.join(&file.file),
        None => hub::default_model_dir()
            .context("no model directory: /var/lib/bitnetd/models is not writable and there is no HOME; pass -o DIR")?
            .join(&file.repo)
            .join(&file.file),
    };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{bytes:>10}/{total_bytes:10} {wide_bar} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("a valid template"),
    );
    let mut progress = Bar(bar);
    let outcome = hub::pull(&hub, &file, &dest, &mut progress)
        .with_context(|| format!("pulling {} {} ({})", file.repo, file.file, file.revision))?;
    progress.0.finish_and_clear();
    match outcome {
        Outcome::AlreadyPresent => eprintln!("already present and checked"),
        Outcome::Downloaded { resumed_from: 0 } => eprintln!("downloaded and checked"),
        Outcome::Downloaded { resumed_from } => {
            eprintln!("downloaded (resumed at byte {resumed_from}) and checked")
        }
    }
    println!("{}", dest.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<PullArgs, clap::Error> {
        crate::app::common::parse_args(argv)
    }

    #[test]
    fn defaults_to_the_official_2b4t_gguf() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.repo, "microsoft/BitNet-b1.58-2B-4T-gguf");
        assert_eq!(a.file, "ggml-model-i2_s.gguf");
        assert_eq!(a.revision, "main");
        assert_eq!(a.output_dir, None);
        let a = parse(&["o/n", "f.gguf", "--revision", "v2", "-o", "/m"]).unwrap();
        assert_eq!((a.repo.as_str(), a.file.as_str()), ("o/n", "f.gguf"));
        assert_eq!(a.output_dir, Some(PathBuf::from("/m")));
    }
}
