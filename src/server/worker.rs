//! The engine thread: the only owner of the model. It takes jobs from the queue one at a
//! time, renders and tokenizes them, generates, and sends each job's events down the job's
//! channel. Tokio never runs this code, so a long generation never stalls the I/O.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::chat::{ChatTemplate, Message, Rendered, Role};
use crate::engine::{Engine, FinishReason, GenParams, Outcome, Step};

use super::log_escape::Escaped;
use super::metrics::RequestEnd;
use super::protocol::{Done, ErrorCode, Event, Prompt, Timings, Usage};
use super::queue::{Job, Next, QueueReceiver, Stats};

/// How often the idle engine wakes to show the watchdog it is alive.
const IDLE_TICK: Duration = Duration::from_millis(500);

/// Everything the engine thread owns.
pub struct Worker {
    /// The model, its tokenizer and the KV cache reused between requests.
    pub engine: Engine,
    /// Renders `messages` into the prompt text the model was trained on.
    pub template: ChatTemplate,
    /// Longest prompt accepted, in tokens (already capped below the context).
    pub max_prompt_tokens: usize,
    /// Requests older than this are cancelled (None: never).
    pub timeout: Option<Duration>,
    /// Reuse the KV state of the prompt prefix shared with the previous request (off: every
    /// prompt is evaluated from its first token; the output is the same either way).
    pub prefix_cache: bool,
    /// Counters for `status` and the watchdog heartbeat.
    pub stats: Arc<Stats>,
}

impl Worker {
    /// Answers a short chat turn and evaluates the system prompt before serving: every
    /// weight page is then resident, and so is what the request path builds on first use
    /// (the template, the tokenizer's lazily built state, the batch buffers), so the idle
    /// footprint is the working footprint and a model that cannot run fails at boot. The
    /// system prompt comes last, so that with the prefix cache the first request already
    /// finds its prefix.
    pub fn warm_up(&mut self, system_prompt: &str) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut turn = vec![];
        if !system_prompt.is_empty() {
            turn.push(Message::new(Role::System, system_prompt));
        }
        turn.push(Message::new(Role::User, "Hello"));
        // Tokenized as requests are (content without special parsing), so that their
        // tokens share this prefix.
        let system = match system_prompt {
            "" => Default::default(),
            s => self
                .template
                .render_marked(&[Message::new(Role::System, s)], false),
        };
        let params = GenParams {
            max_tokens: 1,
            sampler: Default::default(),
            ignore_eos: true,
            json_schema: None,
        };
        let mut evaluated = 0;
        for rendered in [self.template.render_marked(&turn, true), system] {
            let tokens = self.engine.tokenizer.encode_with_literal(
                &rendered.text,
                true,
                &rendered.content,
            )?;
            self.engine
                .generate_reusing(&tokens, &params, |_| ControlFlow::Continue(()))?;
            evaluated += tokens.len();
        }
        log::info!(
            "warmed up on {evaluated} tokens in {:.0} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
        Ok(())
    }

    /// Serves jobs until every queue sender is gone.
    pub fn run(mut self, queue: QueueReceiver) {
        self.stats.beat();
        loop {
            match queue.next(IDLE_TICK) {
                Next::Job(job) => {
                    self.stats.busy.store(true, Ordering::Relaxed);
                    let last = self.serve(&job);
                    // Idle before the final event goes out: a client that has its answer
                    // and asks for `status` sees the engine free.
                    self.stats.busy.store(false, Ordering::Relaxed);
                    self.stats.beat();
                    // A closed channel means the client went away.
                    let _ = job.events.send(last);
                }
                Next::Idle => self.stats.beat(),
                Next::Closed => break,
            }
        }
        log::debug!("engine thread done");
    }

    /// Runs a job: returns its final event (done or error), for the caller to send.
    fn serve(&mut self, job: &Job) -> Event {
        let started = Instant::now();
        let id = &job.request.id;
        let queue_ms = ms(started - job.arrived);
        if job.expires.is_some_and(|t| started > t) {
            let message = "the request's message expiry passed while it waited in the queue";
            log::info!(
                "request {} via {}: expired in the queue; {}",
                Escaped(id),
                job.transport,
                job.client
            );
            self.stats
                .metrics
                .record(RequestEnd::refused(job.transport));
            return Event::error(Some(id.clone()), ErrorCode::Expired, message);
        }
        if self.stopped(job) {
            log::info!(
                "request {} via {}: 0 prompt tokens, 0 completion tokens, \
                 finish cancelled (before it started); {}",
                Escaped(id),
                job.transport,
                job.client
            );
            self.stats.metrics.record(RequestEnd {
                finish: FinishReason::Cancelled.as_str(),
                ..RequestEnd::refused(job.transport)
            });
            return Event::Done(Box::new(Done {
                id: id.clone(),
                done: true,
                text: String::new(),
                finish_reason: FinishReason::Cancelled,
                usage: Usage {
                    prompt_tokens: 0,
                    completion_tokens: 0,
                },
                timings: Timings {
                    queue_ms,
                    ttft_ms: 0.0,
                    tokens_per_s: 0.0,
                },
            }));
        }
        let tokens = match self.prompt(job) {
            Ok(t) => t,
            Err((prompt_tokens, code, message)) => {
                return fail(job, &self.stats, prompt_tokens, code, message);
            }
        };
        let generated = match self.generate(job, &tokens) {
            Ok(g) => g,
            Err(message) => {
                return fail(job, &self.stats, tokens.len(), ErrorCode::Internal, message);
            }
        };
        self.finish(job, queue_ms, generated)
    }

    fn stopped(&self, job: &Job) -> bool {
        stopped(job, &self.stats, self.timeout)
    }

    /// The job's prompt tokens: the chat template's markup with special tokens, the
    /// messages' content (or a raw prompt, whole) as plain text (a client cannot forge
    /// control tokens).
    fn prompt(&self, job: &Job) -> Result<Vec<u32>, (usize, ErrorCode, String)> {
        let rendered = match &job.request.prompt {
            Prompt::Chat(messages) => self.template.render_marked(messages, true),
            Prompt::Text(text) => Rendered::literal(text),
        };
        let tokens = self
            .engine
            .tokenizer
            .encode_with_literal(&rendered.text, true, &rendered.content)
            .map_err(|e| (0, ErrorCode::Internal, e.to_string()))?;
        if tokens.len() > self.max_prompt_tokens {
            let message = format!(
                "the prompt has {} tokens; the limit is {}",
                tokens.len(),
                self.max_prompt_tokens
            );
            return Err((tokens.len(), ErrorCode::TooLong, message));
        }
        Ok(tokens)
    }

    /// Evaluates the prompt (stopping within one layer when the job is stopped; each layer
    /// is progress for the watchdog) and streams the generated text.
    fn generate(&mut self, job: &Job, tokens: &[u32]) -> Result<Generated, String> {
        let params = GenParams {
            max_tokens: job.request.max_tokens,
            sampler: job.request.sampler,
            ignore_eos: false,
            json_schema: job.request.json_schema.clone(),
        };
        let id = &job.request.id;
        let mut stops = StopFilter::new(&job.request.stop);
        let mut first_token: Option<Instant> = None;
        let mut hit_stop = false;
        let stream = job.request.stream;
        let (stats, timeout) = (&self.stats, self.timeout);
        let interrupt = || {
            stats.beat();
            stopped(job, stats, timeout)
        };
        let on_step = |step: Step| {
            first_token.get_or_insert_with(Instant::now);
            stats.beat();
            let (out, found) = stops.push(step.text);
            if stream && !out.is_empty() {
                send(
                    job,
                    Event::Token {
                        id: id.clone(),
                        token: out,
                    },
                );
            }
            if found {
                hit_stop = true;
                return ControlFlow::Break(());
            }
            if stopped(job, stats, timeout) {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        };
        let engine = &mut self.engine;
        let result = if self.prefix_cache {
            engine.generate_reusing_until(tokens, &params, &interrupt, on_step)
        } else {
            engine.reset();
            engine.generate_until(tokens, &params, &interrupt, on_step)
        };
        let outcome = result.map_err(|e| {
            self.engine.reset();
            e.to_string()
        })?;
        let tail = stops.finish();
        if stream && !tail.is_empty() && !hit_stop {
            send(
                job,
                Event::Token {
                    id: id.clone(),
                    token: tail,
                },
            );
        }
        let finish = if hit_stop {
            FinishReason::Stop
        } else {
            outcome.finish
        };
        Ok(Generated {
            text: stops.text,
            finish,
            first_token,
            outcome,
        })
    }

    /// The final event of a generation, its log line and the counters.
    fn finish(&self, job: &Job, queue_ms: f64, g: Generated) -> Event {
        let n = g.outcome.tokens.len();
        let tokens_per_s = if n > 1 {
            (n - 1) as f64 / g.outcome.gen_time.as_secs_f64().max(1e-9)
        } else {
            0.0
        };
        let ttft = g.first_token.map_or(Duration::ZERO, |t| t - job.arrived);
        let done = Done {
            id: job.request.id.clone(),
            done: true,
            text: g.text,
            finish_reason: g.finish,
            usage: Usage {
                prompt_tokens: g.outcome.prompt_tokens,
                completion_tokens: n,
            },
            timings: Timings {
                queue_ms,
                ttft_ms: ms(ttft),
                tokens_per_s,
            },
        };
        log::info!(
            "request {} via {}: {} prompt tokens ({} reused), {n} completion tokens, \
             ttft {:.0} ms, {tokens_per_s:.1} tokens/s, finish {}; {}",
            Escaped(&done.id),
            job.transport,
            g.outcome.prompt_tokens,
            g.outcome.reused_tokens,
            done.timings.ttft_ms,
            g.finish.as_str(),
            job.client,
        );
        // Counted before the caller sends `done`, so that a client that has its answer sees
        // it in `status`.
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.stats.metrics.record(RequestEnd {
            transport: job.transport,
            finish: g.finish.as_str(),
            prompt_tokens: g.outcome.prompt_tokens,
            completion_tokens: n,
            ttft: g.first_token.map(|_| ttft),
        });
        self.stats
            .last_tokens_per_s
            .store(tokens_per_s.to_bits(), Ordering::Relaxed);
        Event::Done(Box::new(done))
    }
}

/// What [`Worker::generate`] made.
struct Generated {
    /// The text up to any stop string.
    text: String,
    finish: FinishReason,
    first_token: Option<Instant>,
    outcome: Outcome,
}

/// Whether the job should stop now: cancelled, its client gone, shutdown, or timed out.
fn stopped(job: &Job, stats: &Stats, timeout: Option<Duration>) -> bool {
    job.cancel.is_cancelled()
        || job.events.is_closed()
        || stats.shutting_down.load(Ordering::Relaxed)
        || timeout.is_some_and(|t| job.arrived.elapsed() > t)
}

/// Sends one of the job's events; a closed channel means the client went away (the engine
/// notices it at its next check).
fn send(job: &Job, event: Event) {
    let _ = job.events.send(event);
}

/// A request that fails gets its error and one log line naming it.
fn fail(job: &Job, stats: &Stats, prompt_tokens: usize, code: ErrorCode, message: String) -> Event {
    stats.metrics.record(RequestEnd {
        prompt_tokens,
        ..RequestEnd::refused(job.transport)
    });
    log::info!(
        "request {} via {}: {prompt_tokens} prompt tokens, 0 completion tokens, \
         finish error ({}: {message}); {}",
        Escaped(&job.request.id),
        job.transport,
        code.as_str(),
        job.client,
    );
    Event::error(Some(job.request.id.clone()), code, message)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Holds back generated text that may be the start of a stop string, so that no part of a
/// stop string is ever streamed; cuts the text at the first complete one.
struct StopFilter<'a> {
    stops: &'a [String],
    /// The text so far, up to any stop string.
    text: String,
    /// How much of `text` has been handed out.
    sent: usize,
}

impl<'a> StopFilter<'a> {
    fn new(stops: &'a [String]) -> Self {
        StopFilter {
            stops,
            text: String::new(),
            sent: 0,
        }
    }

    /// Adds a piece; returns the text that is now safe to send, and whether a stop string
    /// was found (the text then ends before it).
    fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        // A stop string may start in text already held back, never in text already sent.
        let found = self
            .stops
            .iter()
            .filter_map(|s| {
                self.text[self.sent..]
                    .find(s.as_str())
                    .map(|i| self.sent + i)
            })
            .min();
        if let Some(at) = found {
            self.text.truncate(at);
            return (self.take(at), true);
        }
        let held = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.text[self.sent..], s))
            .max()
            .unwrap_or(0);
        let upto = self.text.len() - held;
        (self.take(upto), false)
    }

    /// The text held back at the end of generation (it can no longer become a stop string).
    fn finish(&mut self) -> String {
        let end = self.text.len();
        self.take(end)
    }

    fn take(&mut self, upto: usize) -> String {
        let out = self.text[self.sent..upto].to_owned();
        self.sent = upto;
        out
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of `stop`, on
/// character boundaries.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n)
                && stop.is_char_boundary(n)
                && text.ends_with(&stop[..n])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_never_streamed() {
        let stops = vec!["\n\n".to_string(), "END".to_string()];
        let mut f = StopFilter::new(&stops);
        assert_eq!(f.push("Hello"), ("Hello".into(), false));
        assert_eq!(f.push(" wor\n"), (" wor".into(), false));
        assert_eq!(f.push("ld"), ("\nld".into(), false));
        assert_eq!(f.push(" E"), (" ".into(), false));
        assert_eq!(f.push("N"), ("".into(), false));
        assert_eq!(f.push("Dx"), ("".into(), true));
        assert_eq!(f.text, "Hello wor\nld ");
    }

    #[test]
    fn held_text_comes_out_at_the_end() {
        let stops = vec!["abc".to_string()];
        let mut f = StopFilter::new(&stops);
        assert_eq!(f.push("xab"), ("x".into(), false));
        assert_eq!(f.finish(), "ab");
        assert_eq!(f.text, "xab");
    }
}
