//! The daemon end to end: the built binary serving the tiny reference model on a Unix socket,
//! one client: `cargo bench --bench serve`.
//!
//! - `serve/ttft/prefix_cache_{on,off}`: time to first token of a request behind a 200-token
//!   system prompt (the user's question differs every time), with and without the prefix cache.
//! - `serve/request/{1,16}_tokens`: a short prompt and a reply of 1 or 16 tokens, one request
//!   after another; criterion's throughput is requests/s.
//! - `serve/rss` (printed, not timed): the daemon's resident memory idle and after 1,000 short
//!   requests.
//!
//! One compute thread: on a shared machine the figures are then steadier.

// The integration tests' daemon harness (and the helpers it uses), of which a bench needs
// only the start and a client.
#[allow(dead_code)]
#[path = "../tests/it/common.rs"]
mod common;
#[allow(dead_code)]
#[path = "../tests/it/daemon/mod.rs"]
mod daemon;

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use daemon::{Client, Daemon, SHORT_PROMPTS, request};

/// 196 tokens of the tiny model's GPT-2 tokenizer; with the chat template and BOS, 200.
const SYSTEM: &str = "You are Pip, the assistant of a small greenhouse. You answer questions from \
the sensors and the people who look after the plants. Keep every answer short: one or two sentences, \
plain words, no lists. When a reading is outside its normal range, say which reading, its value and \
what to check first. Normal ranges: air temperature 18 to 26 degrees Celsius, soil moisture 35 to 60 \
percent, humidity 50 to 75 percent, light 10,000 to 40,000 lux during the day. Never invent readings \
that you were not given. If a question is not about the greenhouse, the plants or the weather, say \
politely that you can only help with the greenhouse. Watering happens at 6 in the morning and at 7 in \
the evening; the vents open automatically above 27 degrees. The greenhouse grows tomatoes, basil, \
peppers and strawberries in four beds; each bed has its own sensors, named after its plant. Soil \
temperature should stay between 15 and 24 degrees.";

fn start(prefix_cache: bool) -> Daemon {
    Daemon::start(&format!(
        "threads = 1\nprefix_cache = {prefix_cache}\nsystem_prompt = {SYSTEM:?}\n"
    ))
}

/// Sends a greedy request and waits for its final event; returns the time to the first event
/// (the first token, or the final event when no token was streamed) and the final event.
fn ask(c: &mut Client, id: &str, prompt: &str, max_tokens: usize) -> (Duration, serde_json::Value) {
    let start = Instant::now();
    c.send(&request(id, prompt, max_tokens));
    let mut e = c.event();
    let first = start.elapsed();
    while e["token"].is_string() {
        e = c.event();
    }
    assert_eq!(e["done"], true, "{e}");
    (first, e)
}

fn ttft(c: &mut Criterion) {
    let mut group = c.benchmark_group("serve/ttft");
    for (name, prefix_cache) in [("prefix_cache_on", true), ("prefix_cache_off", false)] {
        let d = start(prefix_cache);
        let mut client = d.connect();
        let mut n = 0;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        n += 1;
                        let question = format!("Question {n}: is bed {} too dry?", n % 4);
                        let (first, done) = ask(&mut client, &format!("t{n}"), &question, 1);
                        let prompt = done["usage"]["prompt_tokens"].as_u64().unwrap();
                        assert!(prompt >= 200, "{done}");
                        first
                    })
                    .sum()
            })
        });
    }
    group.finish();
}

fn requests(c: &mut Criterion) {
    let mut group = c.benchmark_group("serve/request");
    group.throughput(Throughput::Elements(1));
    let d = Daemon::start("threads = 1\n");
    let mut client = d.connect();
    for max_tokens in [1, 16] {
        // The prompt is one whose greedy reply runs to the limit: the figure is for a full reply.
        let (_, done) = ask(&mut client, "check", "Hello there", max_tokens);
        assert_eq!(done["usage"]["completion_tokens"], max_tokens, "{done}");
        group.bench_function(format!("{max_tokens}_tokens"), |b| {
            b.iter(|| ask(&mut client, "r", "Hello there", max_tokens))
        });
    }
    group.finish();
}

/// Prints the daemon's RSS idle and after 1,000 short requests (`serve/rss`).
fn rss() {
    let d = Daemon::start("threads = 1\n");
    let idle = d.rss_kb();
    let mut client = d.connect();
    let mut report = vec![];
    for i in 0..1000 {
        ask(
            &mut client,
            &format!("m{i}"),
            SHORT_PROMPTS[i % SHORT_PROMPTS.len()],
            4,
        );
        if [0, 9, 99, 999].contains(&i) {
            report.push(format!("{} requests: {} kB", i + 1, d.rss_kb()));
        }
    }
    let after = d.rss_kb();
    println!(
        "serve/rss: idle {idle} kB; {}; growth {:+.2}% from idle",
        report.join(", "),
        (after as f64 / idle as f64 - 1.0) * 100.0
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    ttft(&mut c);
    requests(&mut c);
    // Only in a measuring run (`cargo bench`, not `cargo test --benches` or `-- --test`), and
    // only when the filter, if any, lets serve/rss through.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let filter = args.iter().find(|a| !a.starts_with('-'));
    let wanted = filter.is_none_or(|f| "serve/rss".contains(f.as_str()));
    if has("--bench") && !has("--test") && !has("--list") && wanted {
        rss();
    }
    c.final_summary();
}
