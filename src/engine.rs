//! The one place where generation happens: tokens in, tokens sampled and streamed out,
//! and the reason generation stopped.

use std::ops::ControlFlow;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::compute::Phase;
use crate::constrain::{Allowed, Constraint, Schema, TokenTrie};
use crate::model::{Logits, Model, ModelError, PROMPT_BATCH, Session};
use crate::sampler::{Sampler, SamplerConfig, SamplerError};
use crate::tokenizer::{StreamDecoder, Tokenizer};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    #[error("the prompt has {prompt} tokens but the context holds {n_ctx} (raise -c)")]
    PromptTooLong { prompt: usize, n_ctx: usize },
}

/// How one generation runs.
#[derive(Debug, Clone)]
pub struct GenParams {
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Keep going past end-of-generation tokens (benchmarks, parity runs).
    pub ignore_eos: bool,
    /// Only output that is a value of this schema: other tokens are masked before sampling,
    /// and generation stops as soon as the value is complete.
    pub json_schema: Option<Arc<Schema>>,
}

/// Why generation stopped; the daemon sends it as `finish_reason` (`as_str`'s names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-generation token (or completed the `json_schema` value).
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The context filled up.
    ContextFull,
    /// The caller asked to stop.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContextFull => "context_full",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// A seed for requests that give none: different at each call.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// One generated token, handed to the caller as soon as it is sampled.
pub struct Step<'a> {
    pub token: u32,
    /// The token's raw bytes (what llama-cli prints; may be part of a UTF-8 sequence).
    pub bytes: &'a [u8],
    /// The text this token completes (empty while a UTF-8 sequence is incomplete).
    pub text: &'a str,
    /// The logits the token was sampled from.
    pub logits: &'a [f32],
}

/// What a generation did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub tokens: Vec<u32>,
    /// The steps' texts joined: an unfinished character at the end is left out.
    pub text: String,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV state was reused instead of evaluated (prefix cache).
    pub reused_tokens: usize,
    pub prompt_time: Duration,
    pub gen_time: Duration,
}

/// A model, its tokenizer and one conversation's KV cache.
pub struct Engine {
    pub model: Model,
    pub tokenizer: Tokenizer,
    session: Session,
    /// A sampled token not yet evaluated: it goes in first on the next turn, so a
    /// conversation's cache holds every token, including each reply's end token.
    pending: Option<u32>,
    /// The first tokens whose keys and values the session holds, in order: what a new
    /// prompt's prefix is compared with. Only tokens evaluated in batches of two or more are
    /// here: a one-token pass rounds attention differently (as ggml does), so the state of a
    /// generated token differs from the state of the same token in a prompt.
    cached: Vec<u32>,
    /// The vocabulary's bytes as a trie, built on the first request with a `json_schema`.
    trie: OnceLock<Arc<TokenTrie>>,
    /// The masked logits of a constrained step (reused).
    masked: Vec<f32>,
}

impl Engine {
    pub fn new(model: Model, tokenizer: Tokenizer, n_ctx: usize) -> Self {
        let session = model.session(n_ctx);
        Engine {
            model,
            tokenizer,
            session,
            pending: None,
            cached: Vec::new(),
            trie: OnceLock::new(),
            masked: Vec::new(),
        }
    }

    /// The vocabulary trie of the constrained mask (built once, on first use).
    pub fn token_trie(&self) -> Arc<TokenTrie> {
        Arc::clone(
            self.trie
                .get_or_init(|| Arc::new(TokenTrie::from_tokenizer(&self.tokenizer))),
        )
    }

    pub fn n_ctx(&self) -> usize {
        self.session.n_ctx()
    }

    /// Tokens in the conversation so far.
    pub fn n_past(&self) -> usize {
        self.session.n_past() + usize::from(self.pending.is_some())
    }

    /// Starts a new conversation.
    pub fn reset(&mut self) {
        self.session.truncate(0);
        self.cached.clear();
        self.pending = None;
    }

    /// Generates from `prompt` as a new conversation, as `reset` then `generate` would, but
    /// keeps the KV state of the longest common token prefix of `prompt` and the cache
    /// (typically a system prompt) instead of evaluating it again. The output is the same.
    pub fn generate_reusing(
        &mut self,
        prompt: &[u32],
        params: &GenParams,
        on_step: impl FnMut(Step) -> ControlFlow<()>,
    ) -> Result<Outcome, EngineError> {
        self.generate_reusing_until(prompt, params, &|| false, on_step)
    }

    /// [`Engine::generate_reusing`], asking `interrupt` between the layers of every forward
    /// pass of the prompt: when it says true, generation ends at once with
    /// [`FinishReason::Cancelled`] and no tokens (a long prompt is stopped within one layer).
    pub fn generate_reusing_until(
        &mut self,
        prompt: &[u32],
        params: &GenParams,
        interrupt: &dyn Fn() -> bool,
        on_step: impl FnMut(Step) -> ControlFlow<()>,
    ) -> Result<Outcome, EngineError> {
        let common = self
            .cached
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        // At least one token is evaluated: its logits give the first sample.
        let mut keep = common.min(prompt.len().saturating_sub(1));
        // Batches split at the same positions as a fresh start's (multiples of
        // PROMPT_BATCH), and no token alone in a batch that a fresh start evaluates with
        // others: then every token's state is computed exactly as a fresh start computes it.
        let block_end = ((keep / PROMPT_BATCH + 1) * PROMPT_BATCH).min(prompt.len());
        let fresh_batch = block_end - keep / PROMPT_BATCH * PROMPT_BATCH;
        if block_end - keep == 1 && fresh_batch > 1 {
            keep -= 1;
        }
        self.session.truncate(keep);
        self.cached.truncate(keep);
        self.pending = None;
        self.run(prompt, keep, params, interrupt, on_step)
    }

    /// Evaluates `input` after the conversation so far, then samples up to
    /// `params.max_tokens` tokens, calling `on_step` for each; it may cancel.
    pub fn generate(
        &mut self,
        input: &[u32],
        params: &GenParams,
        on_step: impl FnMut(Step) -> ControlFlow<()>,
    ) -> Result<Outcome, EngineError> {
        self.generate_until(input, params, &|| false, on_step)
    }

    /// [`Engine::generate`] with `interrupt` as in [`Engine::generate_reusing_until`].
    pub fn generate_until(
        &mut self,
        input: &[u32],
        params: &GenParams,
        interrupt: &dyn Fn() -> bool,
        on_step: impl FnMut(Step) -> ControlFlow<()>,
    ) -> Result<Outcome, EngineError> {
        let prompt: Vec<u32> = self.pending.iter().chain(input).copied().collect();
        self.run(&prompt, 0, params, interrupt, on_step)
    }

    /// Evaluates `prompt[reused..]` (the session already holds the rest) and generates.
    /// The sampler sees the whole `prompt`, so reuse does not change its penalties.
    fn run(
        &mut self,
        prompt: &[u32],
        reused: usize,
        params: &GenParams,
        interrupt: &dyn Fn() -> bool,
        mut on_step: impl FnMut(Step) -> ControlFlow<()>,
    ) -> Result<Outcome, EngineError> {
        let mut sampler = Sampler::new(params.sampler)?;
        let mut constraint = params
            .json_schema
            .as_ref()
            .map(|schema| Constraint::new(Arc::clone(schema), self.token_trie()));
        let input = &prompt[reused..];
        let needed = self.session.n_past() + input.len();
        if needed > self.session.n_ctx() || input.is_empty() {
            return Err(EngineError::PromptTooLong {
                prompt: needed,
                n_ctx: self.session.n_ctx(),
            });
        }
        prompt.iter().for_each(|&t| sampler.accept(t));

        let start = Instant::now();
        // Batches end at multiples of PROMPT_BATCH counted from the prompt's start.
        let first = (PROMPT_BATCH - reused % PROMPT_BATCH).min(input.len());
        let (head, tail) = input.split_at(first);
        let chunks: Vec<&[u32]> = std::iter::once(head)
            .chain(tail.chunks(PROMPT_BATCH))
            .collect();
        let interrupted = |prompt_time| Outcome {
            tokens: Vec::new(),
            text: String::new(),
            finish: FinishReason::Cancelled,
            prompt_tokens: prompt.len(),
            reused_tokens: reused,
            prompt_time,
            gen_time: Duration::ZERO,
        };
        // An interrupted pass leaves the session as it was before that batch; a pending
        // token of the conversation is then dropped with the rest of the prompt.
        self.pending = None;
        for chunk in &chunks[..chunks.len() - 1] {
            self.model.enter(Phase::Prefill);
            let pass = forward_prompt(
                &self.model,
                &mut self.session,
                &mut self.cached,
                chunk,
                interrupt,
            );
            match pass {
                Err(EngineError::Model(ModelError::Interrupted)) => {
                    return Ok(interrupted(start.elapsed()));
                }
                other => other?,
            };
        }
        let last = chunks[chunks.len() - 1];
        self.model.enter(Phase::Prefill);
        let pass = forward_prompt(
            &self.model,
            &mut self.session,
            &mut self.cached,
            last,
            interrupt,
        );
        let mut logits = match pass {
            Err(EngineError::Model(ModelError::Interrupted)) => {
                return Ok(interrupted(start.elapsed()));
            }
            other => other?,
        };
        let prompt_time = start.elapsed();

        let start = Instant::now();
        let mut decoder = StreamDecoder::new();
        let (mut tokens, mut text) = (Vec::new(), String::new());
        let mut finish = FinishReason::Length;
        // The end tokens the mask lets through once the value is complete (none when they
        // are ignored; no allocation without a constraint).
        let eog: Vec<u32> = match constraint {
            Some(_) if !params.ignore_eos => {
                let t = &self.tokenizer;
                t.eos().into_iter().chain(t.eot()).collect()
            }
            _ => Vec::new(),
        };
        while tokens.len() < params.max_tokens {
            let token = match &mut constraint {
                None => sampler.sample(logits),
                Some(c) => {
                    let remaining = params.max_tokens - tokens.len();
                    match c.mask(logits, remaining, &eog, &mut self.masked) {
                        Allowed::Tokens => sampler.sample(&self.masked),
                        Allowed::Done => {
                            finish = FinishReason::Stop;
                            break;
                        }
                        Allowed::Stuck => {
                            log::warn!("no token of the vocabulary continues the JSON value");
                            break;
                        }
                    }
                }
            };
            sampler.accept(token);
            tokens.push(token);
            // The newest token is evaluated only if generation goes on.
            self.pending = Some(token);
            let eog = self.tokenizer.is_eog(token) && !params.ignore_eos;
            let piece = decoder.push(&self.tokenizer, token);
            text.push_str(&piece);
            let step = Step {
                token,
                bytes: self.tokenizer.piece(token),
                text: &piece,
                logits,
            };
            if on_step(step).is_break() {
                finish = FinishReason::Cancelled;
                break;
            }
            if eog {
                finish = FinishReason::Stop;
                break;
            }
            if let Some(c) = &mut constraint {
                c.advance(self.tokenizer.piece(token));
                // A complete value that nothing may extend ends the generation, however
                // unlikely the model finds its end token.
                if !c.can_continue() {
                    finish = FinishReason::Stop;
                    break;
                }
            }
            if tokens.len() == params.max_tokens {
                if constraint.as_ref().is_some_and(Constraint::is_complete) {
                    finish = FinishReason::Stop;
                }
                break;
            }
            if self.session.n_past() == self.session.n_ctx() {
                finish = FinishReason::ContextFull;
                break;
            }
            // Power decisions land here, between tokens.
            self.model.enter(Phase::Decode);
            logits = self
                .model
                .forward(&mut self.session, &[token], Logits::Last)?;
            self.pending = None;
        }
        // Generation may stop between the bytes of a character: its start is dropped.
        let dropped = decoder.finish();
        if dropped > 0 {
            log::debug!("dropped {dropped} bytes of an unfinished character at the end");
        }
        Ok(Outcome {
            tokens,
            text,
            finish,
            prompt_tokens: prompt.len(),
            reused_tokens: reused,
            prompt_time,
            gen_time: start.elapsed(),
        })
    }
}

/// Evaluates a batch of prompt tokens and remembers them for the prefix cache.
fn forward_prompt<'s>(
    model: &Model,
    session: &'s mut Session,
    cached: &mut Vec<u32>,
    chunk: &[u32],
    interrupt: &dyn Fn() -> bool,
) -> Result<&'s [f32], EngineError> {
    let contiguous = cached.len() == session.n_past();
    let logits = model.forward_interruptible(session, chunk, Logits::Last, interrupt)?;
    if contiguous && chunk.len() > 1 {
        cached.extend_from_slice(chunk);
    }
    Ok(logits)
}
