//! Counters for `GET /metrics` (Prometheus text format), bumped where every transport's
//! requests end: the engine thread's final event and the queue's refusals.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the time-to-first-token histogram's buckets.
const TTFT_BUCKETS: [f64; 9] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Request counters by transport and outcome, token counts and time to first token.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Finished requests by (transport, finish reason or "error").
    requests: BTreeMap<(&'static str, &'static str), u64>,
    /// Generated tokens by transport.
    generated: BTreeMap<&'static str, u64>,
    /// Prompt tokens evaluated, by transport.
    prompt: BTreeMap<&'static str, u64>,
    /// Requests whose first token came within each bucket's bound (not cumulative here).
    ttft_buckets: [u64; TTFT_BUCKETS.len()],
    ttft_count: u64,
    ttft_sum_s: f64,
}

/// One request's end, as the metrics count it.
pub struct RequestEnd {
    pub transport: &'static str,
    /// "stop", "length", "context_full", "cancelled", or "error".
    pub finish: &'static str,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// From arrival to the first token, when there was one.
    pub ttft: Option<Duration>,
}

impl RequestEnd {
    /// A request answered with an error before it generated anything.
    pub fn refused(transport: &'static str) -> Self {
        RequestEnd {
            transport,
            finish: "error",
            prompt_tokens: 0,
            completion_tokens: 0,
            ttft: None,
        }
    }
}

impl Metrics {
    pub fn record(&self, o: RequestEnd) {
        let mut c = self.inner.lock().unwrap();
        *c.requests.entry((o.transport, o.finish)).or_default() += 1;
        *c.generated.entry(o.transport).or_default() += o.completion_tokens as u64;
        *c.prompt.entry(o.transport).or_default() += o.prompt_tokens as u64;
        if let Some(ttft) = o.ttft {
            let s = ttft.as_secs_f64();
            if let Some(i) = TTFT_BUCKETS.iter().position(|&bound| s <= bound) {
                c.ttft_buckets[i] += 1;
            }
            c.ttft_count += 1;
            c.ttft_sum_s += s;
        }
    }

    /// The counters in Prometheus text format (exposition format 0.0.4).
    pub fn render(&self, out: &mut String) {
        let c = self.inner.lock().unwrap();
        header(
            out,
            "bitnetd_requests_total",
            "counter",
            "Requests finished, by transport and finish reason.",
        );
        for ((transport, finish), n) in &c.requests {
            let _ = writeln!(
                out,
                "bitnetd_requests_total{{transport=\"{transport}\",finish=\"{finish}\"}} {n}"
            );
        }
        header(
            out,
            "bitnetd_generated_tokens_total",
            "counter",
            "Tokens generated, by transport.",
        );
        for (transport, n) in &c.generated {
            let _ = writeln!(
                out,
                "bitnetd_generated_tokens_total{{transport=\"{transport}\"}} {n}"
            );
        }
        header(
            out,
            "bitnetd_prompt_tokens_total",
            "counter",
            "Prompt tokens, by transport.",
        );
        for (transport, n) in &c.prompt {
            let _ = writeln!(
                out,
                "bitnetd_prompt_tokens_total{{transport=\"{transport}\"}} {n}"
            );
        }
        let name = "bitnetd_time_to_first_token_seconds";
        header(
            out,
            name,
            "histogram",
            "From a request's arrival to its first token.",
        );
        let mut cumulative = 0;
        for (bound, n) in TTFT_BUCKETS.iter().zip(c.ttft_buckets) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", c.ttft_count);
        let _ = writeln!(out, "{name}_sum {}", c.ttft_sum_s);
        let _ = writeln!(out, "{name}_count {}", c.ttft_count);
    }
}

/// A metric's HELP and TYPE lines.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A gauge with its header.
pub fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_as_prometheus_text() {
        let m = Metrics::default();
        for (finish, ttft) in [("stop", 0.07), ("length", 3.0), ("stop", 0.2)] {
            m.record(RequestEnd {
                transport: "http",
                finish,
                prompt_tokens: 4,
                completion_tokens: 10,
                ttft: Some(Duration::from_secs_f64(ttft)),
            });
        }
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("bitnetd_requests_total{transport=\"http\",finish=\"stop\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("bitnetd_generated_tokens_total{transport=\"http\"} 30\n"),
            "{out}"
        );
        assert!(
            out.contains("bitnetd_time_to_first_token_seconds_bucket{le=\"0.1\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("bitnetd_time_to_first_token_seconds_bucket{le=\"2.5\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("bitnetd_time_to_first_token_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("bitnetd_time_to_first_token_seconds_count 3\n"),
            "{out}"
        );
    }
}
