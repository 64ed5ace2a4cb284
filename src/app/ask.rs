//! `bitnetd ask`: a small client of the daemon's socket that streams the answer to stdout.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::config::DEFAULT_SOCKET;

#[derive(Debug, clap::Args)]
pub struct AskArgs {
    /// The daemon's socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// System prompt (the daemon's default when not given).
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Tokens to generate at most (the daemon's limit when not given).
    #[arg(short = 'n', long = "max-tokens")]
    pub max_tokens: Option<usize>,
    /// Sampling temperature; 0 is greedy.
    #[arg(long = "temp")]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print the daemon's raw JSON events instead of the text.
    #[arg(long)]
    pub json: bool,
    /// The question (it may start with "-").
    #[arg(allow_hyphen_values = true)]
    pub prompt: String,
}

pub fn run(args: &AskArgs) -> anyhow::Result<()> {
    let path = &args.socket;
    let mut stream = UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to {} (is bitnetd serve running?)",
            path.display()
        )
    })?;
    let id = format!("ask-{}", std::process::id());
    let mut request = serde_json::json!({ "id": id, "prompt": args.prompt, "stream": true });
    let fields = [
        ("system", args.system.clone().map(Into::into)),
        ("max_tokens", args.max_tokens.map(Into::into)),
        ("temperature", args.temperature.map(Into::into)),
        ("seed", args.seed.map(Into::into)),
    ];
    for (key, value) in fields {
        if let Some(v) = value {
            request[key] = v;
        }
    }
    let mut line = serde_json::to_vec(&request)?;
    line.push(b'\n');
    stream.write_all(&line).context("sending the request")?;

    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stream).lines() {
        let line = line.context("reading from the daemon")?;
        let event: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("the daemon sent {line:?}"))?;
        if args.json {
            writeln!(out, "{line}")?;
        } else if let Some(token) = event["token"].as_str() {
            out.write_all(token.as_bytes())?;
        }
        out.flush()?;
        if let Some(error) = event.get("error") {
            bail!(
                "{}: {}",
                error["code"].as_str().unwrap_or("error"),
                error["message"].as_str().unwrap_or("")
            );
        }
        if event["done"] == true {
            if !args.json {
                writeln!(out)?;
            }
            return Ok(());
        }
    }
    bail!("the daemon closed the connection before the answer was done")
}
