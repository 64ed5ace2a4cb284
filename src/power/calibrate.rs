//! The balanced policy's calibration: decode tokens/s against thread count, measured on the
//! loaded model at start (a few hundred milliseconds).

use std::time::{Duration, Instant};

use crate::compute::{Phase, Plan, PlanHandle};
use crate::model::{Logits, Model};

use super::speed::SpeedCurve;

/// Decode steps timed at each thread count at least (more while time is left).
const MIN_STEPS: usize = 2;
/// Positions the timed steps may fill: attention cost stays that of a short context.
const CONTEXT: usize = 48;

/// Times single-token forward passes on 1..=`cores.len().max(1)` threads (pinned to `cores`
/// when given, fastest first), spending about `budget` in all. Leaves the plan empty.
pub fn calibrate(
    model: &mut Model,
    plan: &PlanHandle,
    max_threads: usize,
    cores: &[usize],
    budget: Duration,
) -> Option<SpeedCurve> {
    let counts = max_threads.max(1);
    let per_count = budget / counts as u32;
    let n_ctx = CONTEXT.min(model.hparams.n_ctx_train.max(4));
    let mut session = model.session(n_ctx);
    // A short prompt, so that the timed steps attend over a few positions as real ones do.
    let prompt: Vec<u32> = (1..4).map(|t| t % model.hparams.n_vocab as u32).collect();
    let mut speeds = Vec::with_capacity(counts);
    for n in 1..=counts {
        set_plan(plan, n, cores);
        model.enter(Phase::Decode);
        session.truncate(0);
        model.forward(&mut session, &prompt, Logits::Last).ok()?;
        // One untimed step: the threads wake and the caches fill.
        model.forward(&mut session, &[1], Logits::Last).ok()?;
        let start = Instant::now();
        let mut steps = 0;
        while (steps < MIN_STEPS || start.elapsed() < per_count) && session.n_past() < n_ctx {
            model.forward(&mut session, &[1], Logits::Last).ok()?;
            steps += 1;
        }
        speeds.push(steps as f64 / start.elapsed().as_secs_f64().max(1e-9));
    }
    *plan
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    SpeedCurve::new(speeds)
}

fn set_plan(plan: &PlanHandle, threads: usize, cores: &[usize]) {
    let cores = if cores.len() >= threads {
        cores[..threads].to_vec()
    } else {
        Vec::new()
    };
    *plan
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Plan {
        decode_threads: threads,
        prefill_threads: threads,
        cores,
    });
}
