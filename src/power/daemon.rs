//! The policy at work in `bitnetd serve`: the calibration at start, then a governor thread
//! that reads the machine every few seconds, hands the pool its plan and the clock its
//! ceilings (both applied between forward passes), logs every change with its reason, and
//! keeps what `status` reports.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::compute::{Phase, Plan, PlanHandle};
use crate::model::Model;

use super::calibrate::{calibrate, calibrate_clock};
use super::clock::Clock;
use super::energy::PI5;
use super::machine::Machine;
use super::policy::{Decision, Governor, Policy, Settings};
use super::supply::SensorKind;
use super::sysfs::SysRoot;

/// How often the governor looks at the machine: temperatures move over tens of seconds.
const INTERVAL: Duration = Duration::from_secs(2);
/// The calibration's time budget.
const CALIBRATION: Duration = Duration::from_millis(400);

/// The `power` object of `status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PowerStatus {
    pub policy: Policy,
    pub temperature_c: Option<f64>,
    pub throttled: Option<bool>,
    pub decode_threads: usize,
    pub prefill_threads: usize,
    pub cores: Vec<usize>,
    /// The fast cores' clock ceiling while decoding and evaluating prompts, kHz (null: not
    /// controlled).
    pub clock_khz: Option<u64>,
    pub prefill_clock_khz: Option<u64>,
    pub reason: String,
    pub on_battery: Option<bool>,
    pub battery_percent: Option<f64>,
}

/// What `status` adds: the power state and the energy per token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PowerReport {
    pub power: PowerStatus,
    /// Energy per generated token at the last request's speed (null before one).
    pub joules_per_token: Option<f64>,
    /// "sensor" (a hwmon power or energy reading) or "estimate" (the README's model).
    pub joules_per_token_source: Option<&'static str>,
}

/// What the governor last saw; read by `status`.
#[derive(Debug)]
pub struct Monitor {
    state: Mutex<Seen>,
    /// Bytes a decode step reads (the model's weights): the estimate's memory traffic.
    bytes_per_token: f64,
}

#[derive(Debug)]
struct Seen {
    status: PowerStatus,
    /// Board watts from a sensor, when there is one.
    sensor_w: Option<f64>,
    /// The last energy counter reading (µJ) and when it was taken.
    energy: Option<(u64, Instant)>,
}

impl Monitor {
    pub fn status(&self) -> PowerStatus {
        self.lock().status.clone()
    }

    /// `status`'s power fields at the last request's `tokens_per_s`.
    pub fn report(&self, tokens_per_s: f64) -> PowerReport {
        let joules = self.joules_per_token(tokens_per_s);
        PowerReport {
            power: self.status(),
            joules_per_token: joules.map(|(j, _)| j),
            joules_per_token_source: joules.map(|(_, source)| source),
        }
    }

    /// Joules per generated token at `tokens_per_s` and where the power figure comes from
    /// ("sensor" or "estimate"); `None` before anything was generated.
    pub fn joules_per_token(&self, tokens_per_s: f64) -> Option<(f64, &'static str)> {
        if !tokens_per_s.is_finite() || tokens_per_s <= 0.0 {
            return None;
        }
        let seen = self.lock();
        let (watts, source) = match seen.sensor_w {
            Some(w) => (w, "sensor"),
            None => {
                let gbps = self.bytes_per_token * tokens_per_s / 1e9;
                let khz = seen.status.clock_khz.map_or(PI5.full_khz, |k| k as f64);
                (PI5.watts(seen.status.decode_threads, khz, gbps), "estimate")
            }
        };
        Some((watts / tokens_per_s, source))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The clock ceilings the governor chose, written by the engine's thread as it enters a
/// forward pass (only when the wanted ceiling differs from the one written).
#[derive(Debug)]
pub struct ClockControl {
    state: Mutex<ClockState>,
}

#[derive(Debug)]
struct ClockState {
    clock: Clock,
    /// Ceilings for prefill and decode; `None`: the full step.
    prefill_khz: Option<u64>,
    decode_khz: Option<u64>,
}

impl ClockControl {
    fn new(clock: Clock) -> Self {
        ClockControl {
            state: Mutex::new(ClockState {
                clock,
                prefill_khz: None,
                decode_khz: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn choose(&self, decision: &Decision) {
        let mut s = self.lock();
        s.prefill_khz = decision.prefill_clock_khz;
        s.decode_khz = decision.clock_khz;
    }

    /// Before a forward pass of kind `phase`: its ceiling. A failed write ends the control
    /// (restoring what it can) rather than failing every pass.
    fn enter(&self, phase: Phase) {
        let mut s = self.lock();
        let wanted = match phase {
            Phase::Prefill => s.prefill_khz,
            Phase::Decode => s.decode_khz,
        };
        let khz = wanted.unwrap_or_else(|| s.clock.full_khz());
        if let Err(e) = s.clock.set(khz) {
            log::warn!("power: clock control stopped: {e}");
            if let Err(e) = s.clock.restore() {
                log::warn!("power: {e}");
            }
        }
    }

    /// Writes back the ceilings found at start; nothing is written afterwards.
    pub fn restore(&self) {
        match self.lock().clock.restore() {
            Ok(()) => log::info!("power: clock ceiling restored"),
            Err(e) => log::warn!("power: restoring the clock ceiling: {e}"),
        }
    }
}

/// The clock the daemon controls, for [`restore_clock`] on the way out.
static CONTROLLED: Mutex<Option<Arc<ClockControl>>> = Mutex::new(None);

/// Puts the clock ceilings back as they were at start, if the daemon set any (every path
/// out of `serve` calls this; the unit's `--restore-clock` covers a crash).
pub fn restore_clock() {
    let taken = CONTROLLED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(control) = taken {
        control.restore();
    }
}

/// Calibrates (balanced and powersave), makes the first decision, and starts the governor
/// thread. The model's pool must already have its threads. With `within` (config `cores`),
/// the policy sees only those cores: it still picks how many threads run, and places them
/// on the fastest of them.
pub fn start(
    settings: Settings,
    root: SysRoot,
    within: Option<Vec<usize>>,
    model: &mut Model,
) -> Arc<Monitor> {
    let plan = model.pool().plan_handle();
    let max_threads = model.pool().capacity();
    let machine = read_within(&root, within.as_deref());
    let mut governor = Governor::new(settings, max_threads);
    let fast = machine.fast_cores();
    if machine.cpus.is_empty() {
        log::info!(
            "power: no CPUs under {}/sys/devices/system/cpu: {max_threads} threads, unpinned",
            root.root().display()
        );
    }
    if matches!(
        governor.settings().policy,
        Policy::Balanced | Policy::Powersave
    ) {
        let counts = if fast.is_empty() {
            max_threads
        } else {
            fast.len().min(max_threads)
        };
        let cores = allowed(&fast);
        // On its own thread: the calibration pins its caller, which must not be ours.
        let started = Instant::now();
        let curve = std::thread::scope(|s| {
            s.spawn(|| calibrate(model, &plan, counts, &cores, CALIBRATION))
                .join()
                .ok()
                .flatten()
        });
        match curve {
            Some(curve) => {
                let speeds: Vec<String> = curve
                    .values()
                    .iter()
                    .enumerate()
                    .map(|(i, v)| format!("{} thread(s) {v:.1}", i + 1))
                    .collect();
                log::info!(
                    "power: calibrated decode tokens/s in {:.0} ms: {}",
                    started.elapsed().as_secs_f64() * 1e3,
                    speeds.join(", ")
                );
                governor.set_speed(curve);
            }
            None => log::warn!("power: the calibration failed; balanced uses every fast core"),
        }
    }
    let control = if governor.settings().policy == Policy::Balanced {
        open_clock(&root, &fast, max_threads, &plan, model, &mut governor)
    } else {
        None
    };
    let epoch = Instant::now();
    let decision = governor.decide(&machine, Duration::ZERO);
    let monitor = Arc::new(Monitor {
        state: Mutex::new(Seen {
            status: status_of(&decision, &machine),
            sensor_w: None,
            energy: None,
        }),
        bytes_per_token: model.gguf.bytes().len() as f64,
    });
    monitor.observe(&decision, &machine);
    apply(&plan, control.as_deref(), &decision, None);
    let shared = Arc::clone(&monitor);
    let spawned = std::thread::Builder::new()
        .name("power".into())
        .spawn(move || {
            let mut last = decision;
            loop {
                std::thread::sleep(INTERVAL);
                let machine = read_within(&root, within.as_deref());
                let decision = governor.decide(&machine, epoch.elapsed());
                apply(&plan, control.as_deref(), &decision, Some(&last));
                shared.observe(&decision, &machine);
                last = decision;
            }
        });
    if let Err(e) = spawned {
        log::warn!("power: cannot start the governor thread ({e}); the first decision stays");
    }
    monitor
}

/// Clock control for balanced when the fast cores' ceiling is writable: calibrated, hooked
/// into the pool's passes and registered for [`restore_clock`]. Else one line says why not.
fn open_clock(
    root: &SysRoot,
    fast: &[usize],
    max_threads: usize,
    plan: &PlanHandle,
    model: &mut Model,
    governor: &mut Governor,
) -> Option<Arc<ClockControl>> {
    let mut clock = match Clock::open(root, fast) {
        Ok(clock) => clock,
        Err(why) => {
            log::info!("power: clock control unavailable: {why}: threads only");
            return None;
        }
    };
    let threads = fast.len().min(max_threads);
    let cores = allowed(&fast[..threads]);
    let fraction = governor.settings().decode_speed_fraction;
    let started = Instant::now();
    let curve = std::thread::scope(|s| {
        s.spawn(|| {
            calibrate_clock(
                model,
                plan,
                threads,
                &cores,
                &mut clock,
                fraction,
                CALIBRATION / 4,
            )
        })
        .join()
        .ok()
        .flatten()
    });
    let Some(curve) = curve else {
        log::info!("power: clock control unavailable: the clock calibration failed: threads only");
        if let Err(e) = clock.restore() {
            log::warn!("power: {e}");
        }
        return None;
    };
    let speeds: Vec<String> = curve
        .steps()
        .iter()
        .zip(curve.speeds())
        .filter_map(|(khz, s)| s.map(|s| format!("{} MHz {s:.1}", khz / 1000)))
        .collect();
    log::info!(
        "power: calibrated decode tokens/s on {threads} thread(s) in {:.0} ms: {}",
        started.elapsed().as_secs_f64() * 1e3,
        speeds.join(", ")
    );
    governor.set_clock(curve);
    let control = Arc::new(ClockControl::new(clock));
    let hook = Arc::clone(&control);
    model.set_phase_hook(Arc::new(move |phase| hook.enter(phase)));
    *CONTROLLED.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&control));
    Some(control)
}

impl Monitor {
    fn observe(&self, decision: &Decision, machine: &Machine) {
        let mut seen = self.lock();
        seen.status = status_of(decision, machine);
        seen.sensor_w = None;
        if let Some(sensor) = &machine.sensor {
            match sensor.kind {
                SensorKind::PowerMicrowatts => seen.sensor_w = Some(sensor.micro as f64 / 1e6),
                SensorKind::EnergyMicrojoules => {
                    let now = Instant::now();
                    if let Some((before, then)) = seen.energy
                        && sensor.micro > before
                    {
                        let dt = now.duration_since(then).as_secs_f64();
                        seen.sensor_w = Some((sensor.micro - before) as f64 / 1e6 / dt);
                    }
                    seen.energy = Some((sensor.micro, now));
                }
            }
        }
    }
}

/// Hands the plan to the pool and the ceilings to the clock, and logs a change with its
/// reason.
fn apply(
    plan: &PlanHandle,
    clock: Option<&ClockControl>,
    decision: &Decision,
    last: Option<&Decision>,
) {
    if last.is_some_and(|l| l.same_plan(decision)) {
        return;
    }
    let clocks = match (decision.clock_khz, decision.prefill_clock_khz) {
        (Some(d), Some(p)) => format!(" at {} / {} MHz", d / 1000, p / 1000),
        _ => String::new(),
    };
    log::info!(
        "power: decode {} / prefill {} threads on cores {:?}{clocks}: {}",
        decision.decode_threads,
        decision.prefill_threads,
        decision.cores,
        decision.reason
    );
    if let Some(clock) = clock {
        clock.choose(decision);
    }
    *plan.lock().unwrap_or_else(PoisonError::into_inner) = Some(Plan {
        decode_threads: decision.decode_threads,
        prefill_threads: decision.prefill_threads,
        cores: allowed(&decision.cores),
    });
}

/// `cores` when this process may run on all of them (a cpuset or `taskset` may forbid
/// some), else none: no pinning.
fn allowed(cores: &[usize]) -> Vec<usize> {
    let Some(ids) = core_affinity::get_core_ids() else {
        return Vec::new();
    };
    if cores.iter().all(|c| ids.iter().any(|id| id.id == *c)) {
        cores.to_vec()
    } else {
        Vec::new()
    }
}

pub fn status_of(d: &Decision, m: &Machine) -> PowerStatus {
    PowerStatus {
        policy: d.policy,
        temperature_c: m.temperature_c,
        throttled: m.throttled(),
        decode_threads: d.decode_threads,
        prefill_threads: d.prefill_threads,
        cores: d.cores.clone(),
        clock_khz: d.clock_khz,
        prefill_clock_khz: d.prefill_clock_khz,
        reason: d.reason.clone(),
        on_battery: m.supply.on_battery,
        battery_percent: m.supply.battery_percent,
    }
}

/// The pool size for `threads = 0`: one thread per fast core this process may use, of
/// `within` when set (when sysfs shows none: one per core of `within`, else per core it
/// may use).
pub fn one_per_fast_core(root: &SysRoot, within: Option<&[usize]>) -> usize {
    let fast = allowed_subset(&read_within(root, within).fast_cores());
    if !fast.is_empty() {
        return fast.len();
    }
    match within {
        Some(cores) => cores.len(),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// The machine as the policy may use it: only the cores of `within` when set.
fn read_within(root: &SysRoot, within: Option<&[usize]>) -> Machine {
    let mut machine = Machine::read(root);
    if let Some(cores) = within {
        machine.cpus.retain(|cpu| cores.contains(&cpu.id));
    }
    machine
}

/// The cores of `cores` this process may run on.
fn allowed_subset(cores: &[usize]) -> Vec<usize> {
    match core_affinity::get_core_ids() {
        Some(ids) => cores
            .iter()
            .copied()
            .filter(|c| ids.iter().any(|id| id.id == *c))
            .collect(),
        None => cores.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_cores_narrow_what_the_policy_sees() {
        // Two slow cores (0, 1) and two fast ones (2, 3).
        let dir = tempfile::tempdir().unwrap();
        for (id, capacity) in [(0, 512), (1, 512), (2, 1024), (3, 1024)] {
            let cpu = dir.path().join(format!("sys/devices/system/cpu/cpu{id}"));
            std::fs::create_dir_all(&cpu).unwrap();
            std::fs::write(cpu.join("cpu_capacity"), format!("{capacity}\n")).unwrap();
        }
        let root = SysRoot::new(dir.path());
        assert_eq!(read_within(&root, None).fast_cores(), [2, 3]);
        // Within the slow cores, they are the fastest there are.
        assert_eq!(read_within(&root, Some(&[1, 0])).fast_cores(), [0, 1]);
        assert_eq!(read_within(&root, Some(&[1, 3])).fast_cores(), [3]);
    }
}
