#![deny(unsafe_code)]

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
    /// Convert a Hugging Face checkpoint to GGUF, or a GGUF to another ternary layout.
    Convert(app::convert::ConvertArgs),
    /// Download a model file from Hugging Face (resumable, sha256-checked).
    Pull(app::pull::PullArgs),
    /// What the thread policy sees (CPUs, temperature, throttling, power) and decides.
    Power(app::power::PowerArgs),
}

/// bitnet.cpp's users type `-cnv`, which clap cannot take as a short flag.
fn normalized_args() -> Vec<String> {
    std::env::args()
        .map(|a| if a == "-cnv" { "--cnv".to_owned() } else { a })
        .collect()
}

/// Info and up, then RUST_LOG's directives on top.
///
/// rumqttc's state modules start at warn: they log "Collision on packet id" at info when a
/// QoS 1 publish draws a packet id whose earlier publish the broker has not acknowledged yet.
/// Ids cycle over the broker's receive maximum, and subscribing takes ids too, so this happens
/// when the daemon resubscribes after a reconnect while replies stream. It is flow control,
/// not a fault: rumqttc holds that publish until the acknowledgement comes and then sends it,
/// in order, nothing lost (an acknowledgement that never comes ends the connection, which we
/// log as lost). RUST_LOG naming the modules still turns the message on.
fn logger(env: env_logger::Env) -> env_logger::Builder {
    use log::LevelFilter;
    let mut logger = env_logger::Builder::new();
    logger
        .filter_level(LevelFilter::Info)
        .filter_module("rumqttc::state", LevelFilter::Warn)
        .filter_module("rumqttc::v5::state", LevelFilter::Warn)
        .parse_env(env)
        .format_timestamp(None);
    logger
}

fn main() {
    logger(env_logger::Env::default()).init();
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
        Command::Pull(args) => app::pull::run(args),
        Command::Power(args) => app::power::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use log::{Level, Log, Metadata};

    /// Whether a message of `target` at `level` is logged under this RUST_LOG.
    fn logs(rust_log: &str, target: &str, level: Level) -> bool {
        let env = env_logger::Env::new().filter_or("BITNETD_TEST_RUST_LOG_UNSET", rust_log);
        let metadata = Metadata::builder().target(target).level(level).build();
        super::logger(env).build().enabled(&metadata)
    }

    #[test]
    fn rumqttc_packet_id_collisions_are_quiet_unless_named() {
        for rust_log in ["info", "debug"] {
            assert!(logs(rust_log, "bitnetd::server", Level::Info));
            assert!(logs(rust_log, "rumqttc::v5::eventloop", Level::Info));
            assert!(!logs(rust_log, "rumqttc::v5::state", Level::Info));
            assert!(!logs(rust_log, "rumqttc::state", Level::Info));
            assert!(logs(rust_log, "rumqttc::v5::state", Level::Warn));
        }
        assert!(!logs("warn", "bitnetd::server", Level::Info));
        assert!(logs(
            "rumqttc::v5::state=info",
            "rumqttc::v5::state",
            Level::Info
        ));
    }
}
