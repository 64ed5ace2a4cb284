use clap::{Parser, Subcommand};

use bitnetd::app;

/// BitNet b1.58 inference for small boards: bitnet.cpp's GGUF models, run locally.
#[derive(Parser)]
#[command(name = "bitnetd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: serve a model on a Unix socket (JSON lines) and over MQTT.
    Serve(app::serve::ServeArgs),
    /// Ask the daemon a question; the answer streams to stdout.
    Ask(app::ask::AskArgs),
    /// Generate from a prompt, or chat with -cnv (like bitnet.cpp's run_inference.py).
    Run(app::run::RunArgs),
    /// Show a model's architecture, shapes, tensors and tokenizer, and validate it.
    Info(app::info::InfoArgs),
    /// Tokenize text with a model's tokenizer (like llama-tokenize).
    Tokenize(app::tokenize::TokenizeArgs),
    /// Prompt and generation speed in tokens/s (like llama-bench / e2e_benchmark.py).
    Bench(app::bench::BenchArgs),
    /// Perplexity of a text file (like llama-perplexity).
    Perplexity(app::perplexity::PerplexityArgs),
    /// Write a random ternary model (like generate-dummy-bitnet-model.py).
    GenDummy(app::gen_dummy::GenDummyArgs),
    /// Rewrite a model with its ternary weights in another layout (i2_s or tl1).
    Convert(app::convert::ConvertArgs),
}

/// bitnet.cpp's users type `-cnv`, which clap cannot take as a short flag.
fn normalized_args() -> Vec<String> {
    std::env::args()
        .map(|a| if a == "-cnv" { "--cnv".to_owned() } else { a })
        .collect()
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .init();
    let cli = Cli::parse_from(normalized_args());
    let result = match &cli.command {
        Command::Serve(args) => app::serve::run(args),
        Command::Ask(args) => app::ask::run(args),
        Command::Run(args) => app::run::run(args),
        Command::Info(args) => app::info::run(args),
        Command::Tokenize(args) => app::tokenize::run(args),
        Command::Bench(args) => app::bench::run(args),
        Command::Perplexity(args) => app::perplexity::run(args),
        Command::GenDummy(args) => app::gen_dummy::run(args),
        Command::Convert(args) => app::convert::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
