//! The policies, parsed once, and the governor that turns a machine reading into a decision:
//! how many threads decode, how many evaluate prompts, and on which cores.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use super::energy::PI5;
use super::machine::Machine;
use super::speed::{ClockCurve, SpeedCurve};

/// How the daemon trades speed for heat and energy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Every fast core, prefill and decode.
    Performance,
    /// Prefill on every fast core at the full clock; decode, when the daemon may set the
    /// clock, on every fast core at the lowest clock close enough to the full one's speed
    /// (a step lower near the soft limit), else on as many cores as give the fewest joules
    /// per token (measured speed, modelled board power), one fewer near the soft limit.
    #[default]
    Balanced,
    /// The fewest threads that keep `min_tokens_per_s`.
    Powersave,
    /// Exactly this many threads (at most the pool's).
    Fixed(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a power policy: use performance, balanced, powersave or fixed:N (N >= 1)")]
pub struct BadPolicy(String);

impl FromStr for Policy {
    type Err = BadPolicy;
    fn from_str(s: &str) -> Result<Self, BadPolicy> {
        match s {
            "performance" => Ok(Policy::Performance),
            "balanced" => Ok(Policy::Balanced),
            "powersave" => Ok(Policy::Powersave),
            _ => s
                .strip_prefix("fixed:")
                .and_then(|n| n.parse().ok())
                .filter(|&n| n >= 1)
                .map(Policy::Fixed)
                .ok_or_else(|| BadPolicy(s.to_owned())),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Performance => f.write_str("performance"),
            Policy::Balanced => f.write_str("balanced"),
            Policy::Powersave => f.write_str("powersave"),
            Policy::Fixed(n) => write!(f, "fixed:{n}"),
        }
    }
}

impl Serialize for Policy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Policy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The policy's knobs (`[power]` in the config).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub policy: Policy,
    /// °C where balanced starts to shed threads; `None`: [`SOFT_MARGIN_C`] under the first
    /// passive trip point, or under [`DEFAULT_LIMIT_C`] without one.
    pub soft_limit_c: Option<f64>,
    /// Threads come back only once the SoC is this much under the soft limit.
    pub hysteresis_c: f64,
    /// Powersave's floor.
    pub min_tokens_per_s: f64,
    /// On battery below this charge (%), balanced acts as powersave.
    pub battery_percent: f64,
    /// With clock control, balanced decodes at the lowest clock measured at this fraction
    /// of the full clock's decode speed or more.
    pub decode_speed_fraction: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            policy: Policy::Balanced,
            soft_limit_c: None,
            hysteresis_c: 3.0,
            min_tokens_per_s: 4.0,
            battery_percent: 20.0,
            decode_speed_fraction: 0.97,
        }
    }
}

/// The Raspberry Pi firmware's first throttle point (°C), the limit when the kernel names none.
pub const DEFAULT_LIMIT_C: f64 = 80.0;
/// How far under that limit balanced starts to shed threads.
pub const SOFT_MARGIN_C: f64 = 3.0;
/// At most one thread fewer per this long (the SoC needs time to show the effect)...
pub const STEP_DOWN_EVERY: Duration = Duration::from_secs(10);
/// ...and one back per this long, once cool.
pub const STEP_UP_EVERY: Duration = Duration::from_secs(30);

/// What the daemon should run with now, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The policy in effect (powersave when the battery switched balanced to it).
    pub policy: Policy,
    pub decode_threads: usize,
    pub prefill_threads: usize,
    /// Thread i runs on `cores[i]`; empty: unpinned.
    pub cores: Vec<usize>,
    /// The fast cores' clock ceiling while decoding and while evaluating prompts, kHz;
    /// `None`: the policy does not choose one (a daemon that controls the clock keeps it at
    /// the full step, one that does not leaves it alone).
    pub clock_khz: Option<u64>,
    pub prefill_clock_khz: Option<u64>,
    pub reason: String,
}

impl Decision {
    /// Whether the two would run the pool differently (the reasons may differ).
    pub fn same_plan(&self, other: &Decision) -> bool {
        let plan = |d: &Decision| {
            (
                d.policy,
                d.decode_threads,
                d.prefill_threads,
                d.cores.clone(),
                d.clock_khz,
                d.prefill_clock_khz,
            )
        };
        plan(self) == plan(other)
    }
}

/// The policy with its memory: the measured speed curve and the thermal step-down.
#[derive(Debug, Clone)]
pub struct Governor {
    settings: Settings,
    /// The pool's threads: no decision asks for more.
    max_threads: usize,
    /// Decode tokens/s against thread count, from the calibration at start.
    speed: Option<SpeedCurve>,
    /// Decode tokens/s against the clock, when the daemon may set it.
    clock: Option<ClockCurve>,
    /// Steps shed because of heat or throttling: decode clock steps first (as far as the
    /// lowest), then threads.
    shed: usize,
    /// When `shed` last changed.
    last_step: Option<Duration>,
}

impl Governor {
    pub fn new(settings: Settings, max_threads: usize) -> Self {
        Governor {
            settings,
            max_threads: max_threads.max(1),
            speed: None,
            clock: None,
            shed: 0,
            last_step: None,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn set_speed(&mut self, speed: SpeedCurve) {
        self.speed = Some(speed);
    }

    pub fn speed(&self) -> Option<&SpeedCurve> {
        self.speed.as_ref()
    }

    /// Lets balanced choose the decode clock from `curve`.
    pub fn set_clock(&mut self, curve: ClockCurve) {
        self.clock = Some(curve);
    }

    pub fn clock(&self) -> Option<&ClockCurve> {
        self.clock.as_ref()
    }

    /// The soft limit on this machine.
    pub fn soft_limit_c(&self, m: &Machine) -> f64 {
        self.settings
            .soft_limit_c
            .unwrap_or_else(|| m.passive_trip_c.unwrap_or(DEFAULT_LIMIT_C) - SOFT_MARGIN_C)
    }

    /// The decision for the machine as it is at `now` (time since the daemon started).
    pub fn decide(&mut self, m: &Machine, now: Duration) -> Decision {
        let fast: Vec<usize> = m.fast_cores().into_iter().take(self.max_threads).collect();
        if let Policy::Fixed(n) = self.settings.policy {
            let n = n.min(self.max_threads);
            return Decision {
                policy: Policy::Fixed(n),
                decode_threads: n,
                prefill_threads: n,
                cores: pin_list(&fast, n),
                clock_khz: None,
                prefill_clock_khz: None,
                reason: format!("fixed: {n} threads as configured"),
            };
        }
        if fast.is_empty() {
            let n = self.max_threads;
            return Decision {
                policy: self.settings.policy,
                decode_threads: n,
                prefill_threads: n,
                cores: Vec::new(),
                clock_khz: None,
                prefill_clock_khz: None,
                reason: format!("no CPU information in sysfs: a fixed {n} threads, unpinned"),
            };
        }
        let n_fast = fast.len();
        let mut reasons = Vec::new();
        let policy = self.effective_policy(m, &mut reasons);
        // The decode clock's step, when balanced sets the clock.
        let mut decode_step = None;
        let (decode, prefill) = match policy {
            Policy::Performance => {
                reasons.push(format!("every fast core ({n_fast})"));
                (n_fast, n_fast)
            }
            Policy::Balanced if self.clock.is_some() => {
                let clock = self.clock.as_ref().expect("checked");
                let fraction = self.settings.decode_speed_fraction;
                let step = clock.lowest_within(fraction);
                let (khz, full) = (clock.steps()[step], clock.steps()[clock.steps().len() - 1]);
                reasons.push(format!(
                    "decode on every fast core ({n_fast}) at {} MHz, the lowest clock measured \
                     at >= {:.0}% of the full clock's decode speed ({:.1} of {:.1} tokens/s); \
                     prefill at the full {} MHz",
                    khz / 1000,
                    fraction * 100.0,
                    clock.speeds()[step].unwrap_or(0.0),
                    clock.full_speed(),
                    full / 1000
                ));
                decode_step = Some(step);
                (n_fast, n_fast)
            }
            Policy::Balanced => {
                let decode = match &self.speed {
                    Some(curve) => {
                        let n = curve.cheapest(PI5.idle_w, PI5.core_w).min(n_fast);
                        reasons.push(format!(
                            "decode on {n} of {n_fast} fast cores, the fewest estimated joules \
                             per token ({:.0}% of the best measured decode speed), prefill on all",
                            curve.fraction_of_best(n) * 100.0
                        ));
                        n
                    }
                    None => {
                        reasons.push(format!(
                            "not calibrated: decode and prefill on every fast core ({n_fast})"
                        ));
                        n_fast
                    }
                };
                (decode, n_fast)
            }
            Policy::Powersave => {
                let min = self.settings.min_tokens_per_s;
                let n = match &self.speed {
                    Some(curve) => {
                        let n = curve.fewest_reaching(min).min(n_fast);
                        reasons.push(format!(
                            "{n} threads: the fewest measured at >= {min} tokens/s ({:.1})",
                            curve.at(n)
                        ));
                        n
                    }
                    None => {
                        reasons.push("not calibrated: one thread".into());
                        1
                    }
                };
                (n, n)
            }
            Policy::Fixed(_) => unreachable!("handled above"),
        };
        // Performance means every fast core, whatever the firmware does about the heat.
        // Clock steps below the chosen one come off before threads do.
        let room = decode_step.unwrap_or(0);
        if policy != Policy::Performance {
            self.step(m, now, decode.max(prefill), room, &mut reasons);
        }
        let threads_shed = self.shed.saturating_sub(room);
        let decode = decode.saturating_sub(threads_shed).max(1);
        let prefill = prefill.saturating_sub(threads_shed).max(1);
        let (clock_khz, prefill_clock_khz) = match (decode_step, &self.clock) {
            (Some(step), Some(clock)) => (
                Some(clock.steps()[step - self.shed.min(room)]),
                clock.steps().last().copied(),
            ),
            _ => (None, None),
        };
        Decision {
            policy,
            decode_threads: decode,
            prefill_threads: prefill,
            cores: pin_list(&fast, decode.max(prefill)),
            clock_khz,
            prefill_clock_khz,
            reason: format!("{policy}: {}", reasons.join("; ")),
        }
    }

    /// Balanced turns into powersave on a low battery.
    fn effective_policy(&self, m: &Machine, reasons: &mut Vec<String>) -> Policy {
        let s = &self.settings;
        match (s.policy, m.supply.on_battery, m.supply.battery_percent) {
            (Policy::Balanced, Some(true), Some(p)) if p < s.battery_percent => {
                reasons.push(format!(
                    "on battery at {p:.0}% (under {:.0}%)",
                    s.battery_percent
                ));
                Policy::Powersave
            }
            (policy, ..) => policy,
        }
    }

    /// Sheds a step when hot or throttled (a decode clock step while `room` allows, else a
    /// thread), gives one back when cool, no faster than the step intervals; between the
    /// two temperatures nothing changes (hysteresis).
    fn step(
        &mut self,
        m: &Machine,
        now: Duration,
        base: usize,
        room: usize,
        reasons: &mut Vec<String>,
    ) {
        let soft = self.soft_limit_c(m);
        let back = soft - self.settings.hysteresis_c;
        let since = self
            .last_step
            .map_or(Duration::MAX, |t| now.saturating_sub(t));
        let throttled = m.throttle.filter(|t| t.now());
        let too_hot = m.temperature_c.filter(|&t| t >= soft);
        let cool = m.temperature_c.is_none_or(|t| t < back) && throttled.is_none();
        if too_hot.is_some() || throttled.is_some() {
            let why = match (too_hot, throttled) {
                (_, Some(t)) => format!("firmware reports {} (0x{:x})", t.active().join(", "), t.0),
                (Some(t), None) => {
                    format!("SoC at {t:.1} °C, at or over the soft limit {soft:.1} °C")
                }
                (None, None) => unreachable!(),
            };
            if self.shed + 1 < room + base && since >= STEP_DOWN_EVERY {
                self.shed += 1;
                self.last_step = Some(now);
            }
            if self.shed > 0 {
                reasons.push(format!("{why}: {}", shed_text(self.shed, room)));
            } else if room + base > 1 {
                // A step came back less than a step-down interval ago.
                reasons.push(format!(
                    "{why}: a step down within {} s",
                    STEP_DOWN_EVERY.as_secs()
                ));
            } else {
                reasons.push(format!("{why}, already at one thread"));
            }
        } else if self.shed > 0 {
            if cool && since >= STEP_UP_EVERY {
                self.shed -= 1;
                self.last_step = Some(now);
                let what = if self.shed < room {
                    "clock step"
                } else {
                    "thread"
                };
                reasons.push(format!(
                    "cooled under {back:.1} °C: one {what} back ({} still shed)",
                    self.shed
                ));
            } else {
                reasons.push(format!(
                    "{} until the SoC stays under {back:.1} °C",
                    shed_text(self.shed, room)
                ));
            }
        }
    }
}

/// What `shed` steps mean with `room` clock steps to take first.
fn shed_text(shed: usize, room: usize) -> String {
    let clock = shed.min(room);
    match (clock, shed - clock) {
        (0, threads) => format!("{threads} thread(s) fewer"),
        (clock, 0) => format!("decode clock {clock} step(s) lower"),
        (clock, threads) => {
            format!("decode clock {clock} step(s) lower (the lowest), {threads} thread(s) fewer")
        }
    }
}

/// The first `n` fast cores, or none (no pinning) when there are fewer than `n`.
fn pin_list(fast: &[usize], n: usize) -> Vec<usize> {
    if fast.len() >= n {
        fast[..n].to_vec()
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_print_the_same() {
        for s in ["performance", "balanced", "powersave", "fixed:3"] {
            assert_eq!(s.parse::<Policy>().unwrap().to_string(), s);
        }
        for bad in ["", "fast", "fixed:", "fixed:0", "fixed:-1", "Balanced"] {
            let e = bad.parse::<Policy>().unwrap_err().to_string();
            assert!(e.contains("fixed:N"), "{e}");
        }
        #[derive(serde::Deserialize)]
        struct T {
            p: Policy,
        }
        let t: T = toml::from_str("p = \"fixed:2\"").unwrap();
        assert_eq!(t.p, Policy::Fixed(2));
        assert!(toml::from_str::<T>("p = \"turbo\"").is_err());
        assert_eq!(
            serde_json::to_string(&Policy::Powersave).unwrap(),
            "\"powersave\""
        );
    }
}
