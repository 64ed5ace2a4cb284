//! Token sampling as llama.cpp's common sampler does it for bitnet.cpp's `run_inference.py`.
//!
//! Order, as in llama.cpp: repetition penalty, top-k, top-p, min-p, temperature, softmax, draw.
//! llama.cpp also has tail-free and typical sampling between top-k and top-p; both are off in
//! its defaults and in `run_inference.py`, so they are not implemented here.
//!
//! Temperature 0 is greedy: the largest (penalised) logit, ties to the lowest token id, and no
//! random number is drawn.
//!
//! Logits that are NaN are never picked: the token is treated as absent. A `+inf` logit takes all
//! the probability (shared equally with any other `+inf`), and `-inf` has none unless every
//! surviving logit is `-inf`, in which case they are equally likely.

use std::cmp::Ordering;
use thiserror::Error;

use crate::rng::Rng;

/// Largest `repeat_last_n` accepted: far beyond any context length, small enough that the
/// history ring can be allocated up front.
const MAX_REPEAT_LAST_N: usize = 1 << 20;

/// Sampling settings. The defaults are llama.cpp's common defaults, which `run_inference.py`
/// keeps apart from `--temp` (0.8, the same as the default here).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// Divides the logits before the softmax; 0 means greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 turns it off (then top-p sorts the whole
    /// vocabulary, as llama.cpp does: tens of ms for 128k tokens).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability adds up to `top_p`; 1 is off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 is off.
    pub min_p: f32,
    /// Penalty for tokens seen in the last `repeat_last_n` accepted tokens; 1 is off.
    pub repeat_penalty: f32,
    /// How many accepted tokens the repetition penalty looks back over; 0 turns it off.
    pub repeat_last_n: usize,
    /// Seed of the random draws: the same seed and logits give the same tokens.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            // llama.cpp draws a random seed by default; a fixed one keeps a default sampler
            // reproducible. Callers that want fresh randomness pass their own.
            seed: 0,
        }
    }
}

/// A sampler setting out of its range.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("invalid sampler setting {field} = {value}: it must be {expected}")]
pub struct SamplerError {
    /// The `SamplerConfig` field at fault.
    pub field: &'static str,
    /// Its value, as given.
    pub value: String,
    /// What the field accepts.
    pub expected: &'static str,
}

impl SamplerConfig {
    /// Checks every field's range; the error names the first bad field.
    pub fn validate(&self) -> Result<(), SamplerError> {
        fn check(
            ok: bool,
            field: &'static str,
            value: impl ToString,
            expected: &'static str,
        ) -> Result<(), SamplerError> {
            if ok {
                return Ok(());
            }
            Err(SamplerError {
                field,
                value: value.to_string(),
                expected,
            })
        }
        // Written so that NaN fails every comparison and is rejected.
        let t = self.temperature;
        check(
            t >= 0.0 && t.is_finite(),
            "temperature",
            t,
            "finite and >= 0 (0 = greedy)",
        )?;
        let p = self.top_p;
        check(p > 0.0 && p <= 1.0, "top_p", p, "in (0, 1] (1 = off)")?;
        let m = self.min_p;
        check((0.0..=1.0).contains(&m), "min_p", m, "in [0, 1] (0 = off)")?;
        let r = self.repeat_penalty;
        check(
            r > 0.0 && r.is_finite(),
            "repeat_penalty",
            r,
            "finite and > 0 (1 = off)",
        )?;
        check(
            self.repeat_last_n <= MAX_REPEAT_LAST_N,
            "repeat_last_n",
            self.repeat_last_n,
            "at most 1048576",
        )
    }
}

/// A token still in the running, with its logit (or, in the final draw, its weight).
#[derive(Debug, Clone, Copy)]
struct Candidate {
    id: u32,
    logit: f32,
}

/// Most likely first; equal logits by lowest id, so that every order and every cut is unique
/// and the result depends on neither the sort algorithm nor the platform.
fn most_likely_first(a: &Candidate, b: &Candidate) -> Ordering {
    // NaN never becomes a candidate, so partial_cmp always answers.
    b.logit
        .partial_cmp(&a.logit)
        .unwrap_or(Ordering::Equal)
        .then(a.id.cmp(&b.id))
}

/// Picks tokens from logits; keeps its random state and the repetition history between calls.
/// All buffers are sized on the first call and reused after it.
#[derive(Debug)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: Rng,
    /// The last `repeat_last_n` accepted tokens, as a ring once full.
    history: Vec<u32>,
    /// Where the next accepted token goes once `history` is full (its oldest entry).
    oldest: usize,
    /// The distinct tokens of `history`, ascending: llama.cpp penalises each once.
    penalised: Vec<u32>,
    /// The tokens still in the running during one `sample` call.
    candidates: Vec<Candidate>,
}

impl Sampler {
    /// A sampler for `cfg`, which is validated first.
    pub fn new(cfg: SamplerConfig) -> Result<Self, SamplerError> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            rng: Rng::new(cfg.seed),
            history: Vec::with_capacity(cfg.repeat_last_n),
            oldest: 0,
            penalised: Vec::with_capacity(cfg.repeat_last_n),
            candidates: Vec::new(),
        })
    }

    /// Records a token for the repetition penalty. Like llama-cli, call it for every prompt
    /// token as well as for every generated one.
    pub fn accept(&mut self, token: u32) {
        let n = self.cfg.repeat_last_n;
        if n == 0 {
            return;
        }
        if self.history.len() < n {
            self.history.push(token);
        } else {
            self.history[self.oldest] = token;
            self.oldest = (self.oldest + 1) % n;
        }
    }

    /// Picks the next token from one position's logits (one per vocabulary entry).
    ///
    /// # Panics
    /// If `logits` is empty or every logit is NaN: there is no token to pick.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        assert!(
            u32::try_from(logits.len()).is_ok(),
            "vocabulary larger than u32 token ids"
        );
        let cfg = self.cfg;
        self.penalised.clear();
        if cfg.repeat_penalty != 1.0 {
            self.penalised.extend_from_slice(&self.history);
            self.penalised.sort_unstable();
            self.penalised.dedup();
        }
        let penalised = &self.penalised;

        if cfg.temperature <= 0.0 {
            let mut best: Option<Candidate> = None;
            for_each_penalised(logits, penalised, cfg.repeat_penalty, |c| {
                // Strictly greater: an equal logit later on does not replace the lower id.
                if !c.logit.is_nan() && best.is_none_or(|b| c.logit > b.logit) {
                    best = Some(c);
                }
            });
            return best.expect("no token to pick: logits empty or all NaN").id;
        }

        let candidates = &mut self.candidates;
        candidates.clear();
        let k = cfg.top_k;
        // Candidates stay in id order until something needs them sorted; either order is
        // deterministic.
        let mut sorted = false;
        if k > 0 && k < logits.len() {
            collect_top_k(logits, penalised, cfg.repeat_penalty, k, candidates);
            candidates.sort_unstable_by(most_likely_first);
            sorted = true;
        } else {
            candidates.reserve(logits.len());
            for_each_penalised(logits, penalised, cfg.repeat_penalty, |c| {
                if !c.logit.is_nan() {
                    candidates.push(c);
                }
            });
        }
        assert!(
            !candidates.is_empty(),
            "no token to pick: logits empty or all NaN"
        );

        if cfg.top_p < 1.0 {
            if !sorted {
                candidates.sort_unstable_by(most_likely_first);
            }
            keep_top_p(candidates, cfg.top_p);
        }
        if cfg.min_p > 0.0 {
            keep_min_p(candidates, cfg.min_p);
        }
        let pick = draw(candidates, cfg.temperature, self.rng.uniform_f64());
        candidates[pick].id
    }
}

/// Calls `f` with every token and its logit, the repetition penalty applied to the tokens in
/// `penalised` (ascending), without copying the logits.
fn for_each_penalised(
    logits: &[f32],
    penalised: &[u32],
    penalty: f32,
    mut f: impl FnMut(Candidate),
) {
    if penalised.is_empty() {
        // The common case (penalty off) without the per-token check.
        for (id, &logit) in (0u32..).zip(logits) {
            f(Candidate { id, logit });
        }
        return;
    }
    let mut next = penalised.iter().copied().peekable();
    for (id, &logit) in (0u32..).zip(logits) {
        let logit = if next.next_if_eq(&id).is_some() {
            // As llama.cpp: dividing a negative logit would raise it, so those are multiplied.
            if logit > 0.0 {
                logit / penalty
            } else {
                logit * penalty
            }
        } else {
            logit
        };
        f(Candidate { id, logit });
    }
}

/// Puts the `k` most likely tokens (unordered) in `out`, in one pass and without sorting the
/// vocabulary: a buffer of up to 2k is cut back to its best k whenever it fills, and from then on
/// a token must beat the k-th best so far to get in. Tokens arrive in id order, so one equal to
/// that k-th best ranks below it (higher id) and is rightly skipped.
fn collect_top_k(
    logits: &[f32],
    penalised: &[u32],
    penalty: f32,
    k: usize,
    out: &mut Vec<Candidate>,
) {
    out.reserve(2 * k);
    let mut floor: Option<f32> = None;
    for_each_penalised(logits, penalised, penalty, |c| {
        if c.logit.is_nan() || floor.is_some_and(|f| c.logit <= f) {
            return;
        }
        out.push(c);
        if out.len() == 2 * k {
            out.select_nth_unstable_by(k - 1, most_likely_first);
            out.truncate(k);
            floor = Some(out[k - 1].logit);
        }
    });
    if out.len() > k {
        out.select_nth_unstable_by(k - 1, most_likely_first);
        out.truncate(k);
    }
}

/// The largest logit among `candidates`.
fn max_logit(candidates: &[Candidate]) -> f32 {
    candidates
        .iter()
        .map(|c| c.logit)
        .fold(f32::NEG_INFINITY, f32::max)
}

/// `exp((logit - max) / temperature)`, the unnormalised softmax weight, with the infinite cases
/// spelled out: if the largest logit is infinite, exactly the tokens equal to it share the weight.
fn weight(logit: f32, max: f32, temperature: f32) -> f64 {
    if max.is_infinite() {
        return if logit == max { 1.0 } else { 0.0 };
    }
    ((f64::from(logit) - f64::from(max)) / f64::from(temperature)).exp()
}

/// Keeps the shortest prefix of `candidates` (sorted, most likely first) whose probability
/// reaches `p`, and at least one token. As in llama.cpp the probabilities are taken at
/// temperature 1 over the tokens left after top-k.
fn keep_top_p(candidates: &mut Vec<Candidate>, p: f32) {
    let max = candidates[0].logit;
    let total: f64 = candidates.iter().map(|c| weight(c.logit, max, 1.0)).sum();
    let target = f64::from(p) * total;
    let mut cumulative = 0.0;
    for (i, c) in candidates.iter().enumerate() {
        cumulative += weight(c.logit, max, 1.0);
        if cumulative >= target {
            candidates.truncate(i + 1);
            return;
        }
    }
}

/// Drops the tokens whose probability is below `min_p` times the largest. In logits that is
/// `logit < max + ln(min_p)`, which needs neither a softmax nor sorted candidates.
fn keep_min_p(candidates: &mut Vec<Candidate>, min_p: f32) {
    let threshold = f64::from(max_logit(candidates)) + f64::from(min_p).ln();
    candidates.retain(|c| f64::from(c.logit) >= threshold);
}

/// Applies the temperature, and picks an index with probability proportional to the softmax,
/// using `u` uniform in [0, 1). Overwrites the logits with the weights.
fn draw(candidates: &mut [Candidate], temperature: f32, u: f64) -> usize {
    let max = max_logit(candidates);
    let mut total = 0.0;
    for c in candidates.iter_mut() {
        // Stored as f32: plenty for a probability, and the sums below then add the same values.
        c.logit = weight(c.logit, max, temperature) as f32;
        total += f64::from(c.logit);
    }
    let target = u * total;
    let mut cumulative = 0.0;
    for (i, c) in candidates.iter().enumerate() {
        cumulative += f64::from(c.logit);
        if target < cumulative {
            return i;
        }
    }
    // Only reached when rounding makes u * total equal total: the last token with any weight.
    candidates.iter().rposition(|c| c.logit > 0.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Pure sampling: every filter off.
    fn plain(temperature: f32, seed: u64) -> SamplerConfig {
        SamplerConfig {
            temperature,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed,
        }
    }

    fn sampler(cfg: SamplerConfig) -> Sampler {
        Sampler::new(cfg).expect("valid config")
    }

    /// The tokens that `n` draws produced.
    fn support(s: &mut Sampler, logits: &[f32], n: usize) -> BTreeSet<u32> {
        (0..n).map(|_| s.sample(logits)).collect()
    }

    fn set(ids: &[u32]) -> BTreeSet<u32> {
        ids.iter().copied().collect()
    }

    /// Logits whose softmax is exactly `probs`.
    fn logits_of(probs: &[f32]) -> Vec<f32> {
        probs.iter().map(|p| p.ln()).collect()
    }

    #[test]
    fn defaults_are_llama_cpp_common_defaults() {
        let d = SamplerConfig::default();
        assert_eq!(
            (d.temperature, d.top_k, d.top_p, d.min_p),
            (0.8, 40, 0.95, 0.05)
        );
        assert_eq!((d.repeat_penalty, d.repeat_last_n), (1.0, 64));
        assert_eq!(d.validate(), Ok(()));
    }

    #[test]
    fn validate_names_the_bad_field() {
        let d = SamplerConfig::default();
        let cases = [
            (
                SamplerConfig {
                    temperature: -0.1,
                    ..d
                },
                "temperature",
            ),
            (
                SamplerConfig {
                    temperature: f32::NAN,
                    ..d
                },
                "temperature",
            ),
            (
                SamplerConfig {
                    temperature: f32::INFINITY,
                    ..d
                },
                "temperature",
            ),
            (SamplerConfig { top_p: 0.0, ..d }, "top_p"),
            (SamplerConfig { top_p: 1.5, ..d }, "top_p"),
            (
                SamplerConfig {
                    top_p: f32::NAN,
                    ..d
                },
                "top_p",
            ),
            (SamplerConfig { min_p: -0.01, ..d }, "min_p"),
            (SamplerConfig { min_p: 1.01, ..d }, "min_p"),
            (
                SamplerConfig {
                    min_p: f32::NAN,
                    ..d
                },
                "min_p",
            ),
            (
                SamplerConfig {
                    repeat_penalty: 0.0,
                    ..d
                },
                "repeat_penalty",
            ),
            (
                SamplerConfig {
                    repeat_penalty: f32::NAN,
                    ..d
                },
                "repeat_penalty",
            ),
            (
                SamplerConfig {
                    repeat_last_n: usize::MAX,
                    ..d
                },
                "repeat_last_n",
            ),
        ];
        for (cfg, field) in cases {
            let err = cfg.validate().expect_err(field);
            assert_eq!(err.field, field);
            assert!(err.to_string().contains(field), "{err}");
            assert_eq!(Sampler::new(cfg).map(|_| ()), Err(err));
        }
        // The edges of each range are valid.
        for cfg in [
            SamplerConfig {
                temperature: 0.0,
                top_p: 1.0,
                min_p: 1.0,
                ..d
            },
            SamplerConfig {
                top_p: f32::MIN_POSITIVE,
                min_p: 0.0,
                top_k: 0,
                repeat_last_n: 0,
                ..d
            },
        ] {
            assert_eq!(cfg.validate(), Ok(()));
        }
    }

    #[test]
    fn greedy_picks_the_largest_logit_ties_to_lowest_id() {
        let mut s = sampler(plain(0.0, 1));
        assert_eq!(s.sample(&[0.1, 3.0, -2.0, 2.9]), 1);
        assert_eq!(s.sample(&[1.0, 5.0, 5.0, 5.0]), 1);
        assert_eq!(s.sample(&[7.0, 7.0]), 0);
        // -0.0 and 0.0 are equal logits: still the lowest id.
        assert_eq!(s.sample(&[-1.0, -0.0, 0.0]), 1);
    }

    #[test]
    fn greedy_draws_no_random_number() {
        let mut s = sampler(plain(0.0, 9));
        let before = s.rng.clone();
        for _ in 0..10 {
            s.sample(&[0.5, 0.25, 0.75]);
        }
        assert_eq!(s.rng, before);
        // The seed does not matter.
        assert_eq!(sampler(plain(0.0, 1)).sample(&[0.5, 0.25, 0.75]), 2);
        assert_eq!(sampler(plain(0.0, 2)).sample(&[0.5, 0.25, 0.75]), 2);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let logits: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1013) as f32 * 0.01)
            .collect();
        let greedy = sampler(plain(0.0, 0)).sample(&logits);
        let mut s = sampler(SamplerConfig {
            top_k: 1,
            ..plain(1.5, 3)
        });
        assert_eq!(support(&mut s, &logits, 200), set(&[greedy]));
        // Ties: the lowest id, as greedy.
        let mut s = sampler(SamplerConfig {
            top_k: 1,
            ..plain(1.0, 3)
        });
        assert_eq!(support(&mut s, &[1.0, 2.0, 2.0], 100), set(&[1]));
    }

    #[test]
    fn same_seed_same_tokens_different_seed_different_tokens() {
        let logits: Vec<f32> = (0..100).map(|i| (i % 10) as f32 * 0.1).collect();
        let run = |seed| {
            let mut s = sampler(plain(1.0, seed));
            (0..64).map(|_| s.sample(&logits)).collect::<Vec<u32>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        assert_ne!(run(0), run(1));
    }

    #[test]
    fn top_k_keeps_the_k_largest() {
        let logits = [0.3, 0.9, 0.1, 0.8, 0.0, 0.7, 0.2];
        let mut s = sampler(SamplerConfig {
            top_k: 3,
            ..plain(1.0, 5)
        });
        assert_eq!(support(&mut s, &logits, 2000), set(&[1, 3, 5]));
        // Equal logits at the cut go to the lowest ids.
        let mut s = sampler(SamplerConfig {
            top_k: 3,
            ..plain(1.0, 5)
        });
        assert_eq!(support(&mut s, &[0.0; 8], 2000), set(&[0, 1, 2]));
    }

    #[test]
    fn top_k_in_any_order_of_the_logits() {
        // Rising logits refill the buffer again and again; falling ones never pass the cut.
        let rising: Vec<f32> = (0..1000).map(|i| i as f32 * 1e-3).collect();
        let falling: Vec<f32> = rising.iter().rev().copied().collect();
        let mut s = sampler(SamplerConfig {
            top_k: 5,
            ..plain(1.0, 5)
        });
        assert_eq!(
            support(&mut s, &rising, 1000),
            set(&[995, 996, 997, 998, 999])
        );
        assert_eq!(support(&mut s, &falling, 1000), set(&[0, 1, 2, 3, 4]));
        // Equal logits all the way: the lowest ids, though later ones meet the cut.
        assert_eq!(support(&mut s, &[1.5; 1000], 1000), set(&[0, 1, 2, 3, 4]));
    }

    #[test]
    fn top_k_on_a_full_vocabulary_stays_in_the_top_k() {
        let vocab = 128_256;
        let mut r = Rng::new(11);
        let logits: Vec<f32> = (0..vocab)
            .map(|_| (r.uniform_f64() * 20.0) as f32)
            .collect();
        let mut order: Vec<u32> = (0..vocab as u32).collect();
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        let top40 = set(&order[..40]);
        let mut s = sampler(SamplerConfig {
            top_p: 1.0,
            min_p: 0.0,
            ..SamplerConfig::default()
        });
        let seen = support(&mut s, &logits, 500);
        assert!(seen.is_subset(&top40), "{seen:?}");
        assert!(seen.len() > 20, "{seen:?}");
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities 0.15, 0.5, 0.05, 0.3 (not in order): 0.5 + 0.3 >= 0.75.
        let logits = logits_of(&[0.15, 0.5, 0.05, 0.3]);
        let mut s = sampler(SamplerConfig {
            top_p: 0.75,
            ..plain(1.0, 5)
        });
        assert_eq!(support(&mut s, &logits, 2000), set(&[1, 3]));
        // A p below the top probability still keeps one token.
        let mut s = sampler(SamplerConfig {
            top_p: 0.1,
            ..plain(1.0, 5)
        });
        assert_eq!(support(&mut s, &logits, 200), set(&[1]));
    }

    #[test]
    fn top_p_is_measured_before_temperature() {
        // At temperature 5 the probabilities flatten, and 0.75 would need three tokens; llama.cpp
        // applies the temperature last, so top-p still sees 0.5 + 0.3.
        let logits = logits_of(&[0.15, 0.5, 0.05, 0.3]);
        let mut s = sampler(SamplerConfig {
            top_p: 0.75,
            ..plain(5.0, 5)
        });
        assert_eq!(support(&mut s, &logits, 2000), set(&[1, 3]));
    }

    #[test]
    fn min_p_drops_tokens_below_the_fraction_of_the_top() {
        // 0.2 * 0.5 = 0.1: 0.05 goes, 0.15 stays.
        let logits = logits_of(&[0.15, 0.5, 0.05, 0.3]);
        let mut s = sampler(SamplerConfig {
            min_p: 0.2,
            ..plain(1.0, 5)
        });
        assert_eq!(support(&mut s, &logits, 4000), set(&[0, 1, 3]));
        let mut s = sampler(SamplerConfig {
            min_p: 1.0,
            ..plain(1.0, 5)
        });
        assert_eq!(support(&mut s, &logits, 200), set(&[1]));
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let cfg = SamplerConfig {
            repeat_penalty: 1.1,
            ..plain(0.0, 0)
        };
        // 2.0 / 1.1 = 1.82 < 1.9.
        let mut s = sampler(cfg);
        assert_eq!(s.sample(&[2.0, 1.9]), 0);
        s.accept(0);
        assert_eq!(s.sample(&[2.0, 1.9]), 1);
        // -1.0 * 1.1 = -1.1 < -1.05 (dividing would have raised it to -0.91).
        let mut s = sampler(cfg);
        s.accept(0);
        assert_eq!(s.sample(&[-1.0, -1.05]), 1);
    }

    #[test]
    fn repetition_penalty_applies_once_per_distinct_token() {
        let mut s = sampler(SamplerConfig {
            repeat_penalty: 1.1,
            ..plain(0.0, 0)
        });
        for _ in 0..3 {
            s.accept(0);
        }
        // Once: 2.0 / 1.1 = 1.82 > 1.7. Three times would be 1.50.
        assert_eq!(s.sample(&[2.0, 1.7]), 0);
    }

    #[test]
    fn repetition_window_forgets_old_tokens() {
        let mut s = sampler(SamplerConfig {
            repeat_penalty: 2.0,
            repeat_last_n: 2,
            ..plain(0.0, 0)
        });
        s.accept(0);
        assert_eq!(s.sample(&[2.0, 1.5, 0.0, 0.0]), 1);
        s.accept(2);
        s.accept(3);
        // Token 0 has left the window of two; 2 and 3 are in it.
        assert_eq!(s.sample(&[2.0, 1.5, 0.0, 0.0]), 0);
        assert_eq!(s.sample(&[1.0, 0.0, 1.5, 1.9]), 0);
        // Off when the window is empty.
        let mut s = sampler(SamplerConfig {
            repeat_penalty: 2.0,
            repeat_last_n: 0,
            ..plain(0.0, 0)
        });
        s.accept(0);
        assert_eq!(s.sample(&[2.0, 1.5]), 0);
    }

    #[test]
    fn repetition_penalty_comes_before_top_k() {
        let mut s = sampler(SamplerConfig {
            repeat_penalty: 10.0,
            top_k: 1,
            ..plain(1.0, 0)
        });
        s.accept(0);
        assert_eq!(support(&mut s, &[3.0, 2.0, 1.0], 100), set(&[1]));
    }

    /// Draws `n` tokens and checks each token's share against `expected` probabilities.
    fn assert_frequencies(s: &mut Sampler, logits: &[f32], expected: &[f64], n: usize) {
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..n {
            counts[s.sample(logits) as usize] += 1;
        }
        for (id, (&count, &p)) in counts.iter().zip(expected).enumerate() {
            let freq = count as f64 / n as f64;
            // Five standard deviations of a binomial share; the seed is fixed, so this never
            // flakes, and a wrong distribution (e.g. temperature applied twice) is far outside.
            let tolerance = 5.0 * (p * (1.0 - p) / n as f64).sqrt() + 1e-9;
            assert!(
                (freq - p).abs() <= tolerance,
                "token {id}: frequency {freq:.4}, probability {p:.4}"
            );
        }
    }

    fn softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
        let w: Vec<f64> = logits
            .iter()
            .map(|&l| (f64::from(l) / temperature).exp())
            .collect();
        let total: f64 = w.iter().sum();
        w.iter().map(|x| x / total).collect()
    }

    #[test]
    fn frequencies_match_the_softmax() {
        let logits = [1.0, 2.0, 0.5, -1.0, 1.5, 0.0];
        for temperature in [0.5f32, 1.0, 1.7] {
            let mut s = sampler(plain(temperature, 1234));
            let expected = softmax(&logits, f64::from(temperature));
            assert_frequencies(&mut s, &logits, &expected, 100_000);
        }
    }

    #[test]
    fn frequencies_after_top_k_match_the_renormalised_softmax() {
        let logits = [1.0, 2.0, 0.5, -1.0, 1.5, 0.0];
        let mut s = sampler(SamplerConfig {
            top_k: 3,
            ..plain(0.8, 99)
        });
        // The three largest, 2.0, 1.5 and 1.0, renormalised at temperature 0.8.
        let top = softmax(&[1.0, 2.0, 1.5], 0.8);
        let expected = [top[0], top[1], 0.0, 0.0, top[2], 0.0];
        assert_frequencies(&mut s, &logits, &expected, 100_000);
    }

    #[test]
    fn nan_logits_are_never_picked() {
        let logits = [f32::NAN, 1.0, f32::NAN, 0.5];
        assert_eq!(sampler(plain(0.0, 0)).sample(&logits), 1);
        assert_eq!(sampler(plain(0.0, 0)).sample(&[f32::NAN, -3.0]), 1);
        let mut s = sampler(plain(1.0, 0));
        assert_eq!(support(&mut s, &logits, 1000), set(&[1, 3]));
        let mut s = sampler(SamplerConfig::default());
        assert_eq!(support(&mut s, &logits, 1000), set(&[1, 3]));
    }

    #[test]
    #[should_panic(expected = "no token to pick")]
    fn all_nan_logits_panic() {
        sampler(plain(1.0, 0)).sample(&[f32::NAN, f32::NAN]);
    }

    #[test]
    fn infinite_logits() {
        let inf = f32::INFINITY;
        // +inf takes all the probability, shared by every +inf.
        let logits = [1.0, inf, 2.0, inf];
        assert_eq!(sampler(plain(0.0, 0)).sample(&logits), 1);
        let mut s = sampler(plain(1.0, 0));
        assert_eq!(support(&mut s, &logits, 1000), set(&[1, 3]));
        let mut s = sampler(SamplerConfig::default());
        assert_eq!(support(&mut s, &logits, 1000), set(&[1, 3]));
        // -inf has none, unless everything is -inf.
        let mut s = sampler(SamplerConfig::default());
        assert_eq!(support(&mut s, &[-inf, 0.0, -inf], 1000), set(&[1]));
        let mut s = sampler(plain(1.0, 0));
        assert_eq!(support(&mut s, &[-inf, -inf], 1000), set(&[0, 1]));
    }

    #[test]
    fn buffers_are_reused_after_the_first_call() {
        let logits: Vec<f32> = (0..5000).map(|i| (i % 97) as f32 * 0.05).collect();
        for cfg in [
            SamplerConfig::default(),
            SamplerConfig {
                top_k: 0,
                repeat_penalty: 1.2,
                ..SamplerConfig::default()
            },
        ] {
            let mut s = sampler(cfg);
            let token = s.sample(&logits);
            s.accept(token);
            let buffers = |s: &Sampler| {
                (
                    s.candidates.as_ptr(),
                    s.candidates.capacity(),
                    s.history.as_ptr(),
                    s.history.capacity(),
                    s.penalised.as_ptr(),
                    s.penalised.capacity(),
                )
            };
            let first = buffers(&s);
            for _ in 0..200 {
                let token = s.sample(&logits);
                s.accept(token);
            }
            assert_eq!(buffers(&s), first);
        }
    }
}
