//! The balanced policy's calibration: decode tokens/s against thread count, and against the
//! clock when the daemon may set it, measured on the loaded model at start (a few hundred
//! milliseconds each).

use std::time::{Duration, Instant};

use crate::compute::{Phase, Plan, PlanHandle};
use crate::model::{Logits, Model};

use super::clock::Clock;
use super::speed::{ClockCurve, SpeedCurve};

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
    let mut speeds = Vec::with_capacity(counts);
    for n in 1..=counts {
        set_plan(plan, n, cores);
        speeds.push(decode_speed(model, per_count)?);
    }
    clear_plan(plan);
    SpeedCurve::new(speeds)
}

/// Times decode on `threads` threads (pinned to `cores` when given) at the full clock, then
/// at the clock's steps from the lowest up, stopping at the first within `fraction` of the
/// full clock's speed: on a memory-bound model that is the first. About `budget` a step.
/// Leaves the plan empty and the clock at its full step.
pub fn calibrate_clock(
    model: &mut Model,
    plan: &PlanHandle,
    threads: usize,
    cores: &[usize],
    clock: &mut Clock,
    fraction: f64,
    budget: Duration,
) -> Option<ClockCurve> {
    let steps = clock.steps().to_vec();
    let mut speeds = vec![None; steps.len()];
    set_plan(plan, threads.max(1), cores);
    let mut measure = |khz: u64| -> Option<f64> {
        clock.set(khz).ok()?;
        decode_speed(model, budget)
    };
    let full = measure(steps[steps.len() - 1]);
    speeds[steps.len() - 1] = full;
    if let Some(full) = full {
        for (i, &khz) in steps[..steps.len() - 1].iter().enumerate() {
            let speed = measure(khz);
            speeds[i] = speed;
            if speed.is_none_or(|s| s >= full * fraction) {
                break;
            }
        }
    }
    let restored = clock.set(steps[steps.len() - 1]);
    clear_plan(plan);
    restored.ok()?;
    ClockCurve::new(steps, speeds)
}

/// Single-token decode passes per second with the current plan, over about `budget`.
fn decode_speed(model: &mut Model, budget: Duration) -> Option<f64> {
    let n_ctx = CONTEXT.min(model.hparams.n_ctx_train.max(4));
    let mut session = model.session(n_ctx);
    // A short prompt, so that the timed steps attend over a few positions as real ones do.
    let prompt: Vec<u32> = (1..4).map(|t| t % model.hparams.n_vocab as u32).collect();
    model.enter(Phase::Decode);
    model.forward(&mut session, &prompt, Logits::Last).ok()?;
    // One untimed step: the threads wake and the caches fill.
    model.forward(&mut session, &[1], Logits::Last).ok()?;
    let start = Instant::now();
    let mut steps = 0;
    while (steps < MIN_STEPS || start.elapsed() < budget) && session.n_past() < n_ctx {
        model.forward(&mut session, &[1], Logits::Last).ok()?;
        steps += 1;
    }
    Some(steps as f64 / start.elapsed().as_secs_f64().max(1e-9))
}

fn clear_plan(plan: &PlanHandle) {
    *plan
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
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
