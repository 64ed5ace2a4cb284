//! A passively cooled Raspberry Pi 5 serving back-to-back requests for half an hour, with the
//! real governor choosing the threads and, where it may, the clock ceiling
//! (`bitnetd power --simulate`).
//!
//! Modelled, not measured: the thermal model, the firmware's throttling, the board's power
//! and the Pi's memory bandwidth are stated constants ([`Pi5Model`], README "Power"); the
//! speed model's shape (decode tokens/s follow the memory bandwidth the threads get, at the
//! fraction bitnetd reaches, and prefill scales with threads as measured) comes from
//! `bitnetd bench` at -t 1 and -t 2 on the development machine.

use std::time::Duration;

use serde::Serialize;

use super::cpus::Cpu;
use super::energy::{PI5, PowerModel};
use super::machine::Machine;
use super::policy::{Governor, Policy, Settings};
use super::speed::{ClockCurve, SpeedCurve};
use super::supply::Supply;
use super::throttle::Throttle;

/// Every constant of the simulated board and workload.
#[derive(Debug, Clone, Serialize)]
pub struct Pi5Model {
    pub ambient_c: f64,
    /// SoC to air through the board and a closed plastic case, K/W.
    pub thermal_resistance_k_per_w: f64,
    /// SoC, package and the board copper around it, J/K.
    pub heat_capacity_j_per_k: f64,
    /// Board draw that does not heat the SoC (PMIC losses, RP1, Ethernet PHY, USB), W.
    pub off_soc_w: f64,
    pub power: PowerModel,
    /// The firmware's soft limit (clock steps down) and hard limit (minimum clock), °C.
    pub firmware_soft_c: f64,
    pub firmware_hard_c: f64,
    /// The A76's rated clock, which the speed and power figures are for.
    pub max_khz: f64,
    /// The clock the firmware runs at when cool (`arm_freq` in config.txt; the rated clock
    /// by default): a lower one is how a Pi owner trades clock for heat today.
    pub arm_freq_khz: f64,
    pub min_khz: f64,
    /// One firmware clock step each `firmware_tick_s`, kHz; also the steps of the cpufreq
    /// ceiling (`scaling_available_frequencies`) from `min_khz` to `arm_freq_khz`.
    pub step_khz: f64,
    pub firmware_tick_s: f64,
    /// DRAM read bandwidth one A76 core gets, and all four together, GB/s.
    pub one_core_gbps: f64,
    pub all_cores_gbps: f64,
    /// Decode's share of that bandwidth (measured: `bitnetd bench`'s decode GiB/s against
    /// the read bandwidth measured after each repetition).
    pub decode_share: f64,
    /// Bytes a decode step reads (BitNet b1.58 2B-4T with `--head q8`).
    pub bytes_per_token: f64,
    /// One core's compute-bound decode speed over its memory-bound one, at full clock.
    pub compute_headroom: f64,
    /// Prefill tokens/s on one thread over decode tokens/s on one thread (measured).
    pub prefill_over_decode: f64,
    /// Prefill speed grows as threads^this (measured from -t 1 and -t 2).
    pub prefill_scaling_exponent: f64,
    pub prompt_tokens: usize,
    pub reply_tokens: usize,
}

impl Default for Pi5Model {
    fn default() -> Self {
        Pi5Model {
            ambient_c: 25.0,
            thermal_resistance_k_per_w: 12.0,
            heat_capacity_j_per_k: 15.0,
            off_soc_w: 1.2,
            power: PI5,
            firmware_soft_c: 80.0,
            firmware_hard_c: 85.0,
            max_khz: 2_400_000.0,
            arm_freq_khz: 2_400_000.0,
            min_khz: 1_500_000.0,
            step_khz: 100_000.0,
            firmware_tick_s: 0.5,
            one_core_gbps: 6.0,
            all_cores_gbps: 9.0,
            decode_share: 0.89,
            bytes_per_token: 0.85e9,
            compute_headroom: 1.25,
            prefill_over_decode: 3.4,
            prefill_scaling_exponent: 0.79,
            prompt_tokens: 64,
            reply_tokens: 128,
        }
    }
}

const CORES: usize = 4;
const STEP_S: f64 = 0.05;
/// The governor's period in the daemon (`daemon::INTERVAL`).
const GOVERNOR_S: f64 = 2.0;

impl Pi5Model {
    /// DRAM bandwidth `threads` cores get together: each adds the same share of what is
    /// left, saturating at `all_cores_gbps`.
    pub fn bandwidth_gbps(&self, threads: usize) -> f64 {
        let left = 1.0 - self.one_core_gbps / self.all_cores_gbps;
        self.all_cores_gbps * (1.0 - left.powi(threads as i32))
    }

    /// Decode tokens/s: memory-bound, unless the clock is too low for the cores to keep up.
    pub fn decode_tokens_per_s(&self, threads: usize, khz: f64) -> f64 {
        let memory = self.decode_share * self.bandwidth_gbps(threads) * 1e9 / self.bytes_per_token;
        let one_core = self.decode_share * self.one_core_gbps * 1e9 / self.bytes_per_token;
        let compute = threads as f64 * one_core * self.compute_headroom * khz / self.max_khz;
        memory.min(compute)
    }

    pub fn prefill_tokens_per_s(&self, threads: usize, khz: f64) -> f64 {
        let one = self.decode_tokens_per_s(1, self.max_khz) * self.prefill_over_decode;
        one * (threads as f64).powf(self.prefill_scaling_exponent) * khz / self.max_khz
    }

    /// What the daemon's calibration would measure on the cool board at start.
    pub fn calibration(&self) -> SpeedCurve {
        let speeds = (1..=CORES)
            .map(|n| self.decode_tokens_per_s(n, self.arm_freq_khz))
            .collect();
        SpeedCurve::new(speeds).expect("the model's speeds are positive")
    }

    /// The cpufreq ceilings the daemon may write, ascending, kHz.
    pub fn clock_steps(&self) -> Vec<u64> {
        let (min, max, step) = (
            self.min_khz as u64,
            self.arm_freq_khz as u64,
            self.step_khz as u64,
        );
        let mut steps: Vec<u64> = (min..max).step_by(step as usize).collect();
        steps.push(max);
        steps
    }

    /// What the daemon's clock calibration would measure on the cool board: decode on every
    /// core at each ceiling (the daemon stops at the first close enough; the choice is the
    /// same).
    pub fn clock_calibration(&self) -> ClockCurve {
        let steps = self.clock_steps();
        let speeds = steps
            .iter()
            .map(|&khz| Some(self.decode_tokens_per_s(CORES, khz as f64)))
            .collect();
        ClockCurve::new(steps, speeds).expect("the model's steps ascend")
    }
}

/// One policy's half hour.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The policy, and "(threads only)" when it could have set the clock but was not let.
    pub name: String,
    pub policy: Policy,
    /// Whether the governor could write the clock ceiling.
    pub clock_control: bool,
    /// Generated tokens over the whole run, per second.
    pub tokens_per_s: f64,
    /// Seconds with the firmware's clock under its maximum or the SoC over its soft limit.
    pub throttled_s: f64,
    pub max_temperature_c: f64,
    /// Board energy over generated tokens (prefill included).
    pub joules_per_token: f64,
    pub mean_watts: f64,
    /// Seconds spent decoding with 1, 2, 3, 4 threads.
    pub decode_thread_s: [f64; CORES],
    /// The mean clock while decoding and while evaluating prompts (the ceiling or the
    /// firmware's clock, whichever is lower), MHz.
    pub decode_mhz: f64,
    pub prefill_mhz: f64,
}

/// Runs `policy` for `length` of back-to-back requests from a board at ambient temperature;
/// with `clock_control` balanced may write the clock ceiling, as the daemon does when the
/// unit grants it (the other policies never do).
pub fn run(model: &Pi5Model, policy: Policy, clock_control: bool, length: Duration) -> Outcome {
    let settings = Settings {
        policy,
        ..Settings::default()
    };
    let mut governor = Governor::new(settings, CORES);
    governor.set_speed(model.calibration());
    let clock_control = clock_control && policy == Policy::Balanced;
    if clock_control {
        governor.set_clock(model.clock_calibration());
    }
    let mut machine = pi5_machine();
    let mut temp =
        model.ambient_c + (model.power.idle_w - model.off_soc_w) * model.thermal_resistance_k_per_w;
    // The firmware's clock; the cores run at it or under the ceiling, whichever is lower.
    let mut firmware_khz = model.arm_freq_khz;
    let (mut decode_ceiling, mut prefill_ceiling) = (None, None);
    let (mut decode_mhz_s, mut prefill_mhz_s, mut prefill_s) = (0.0, 0.0, 0.0);
    let (mut t, mut next_governor, mut next_tick) = (0.0, 0.0, 0.0);
    let (mut energy, mut generated, mut throttled_s, mut max_temp) = (0.0, 0.0, 0.0, temp);
    let mut decode_thread_s = [0.0; CORES];
    let (mut decode, mut prefill) = (CORES, CORES);
    // Where the current request is: prompt tokens left, then reply tokens left.
    let (mut prompt_left, mut reply_left) = (model.prompt_tokens as f64, model.reply_tokens as f64);
    let end = length.as_secs_f64();
    while t < end {
        if t >= next_governor {
            machine.temperature_c = Some(temp);
            machine.throttle = Some(firmware_flags(model, temp, firmware_khz));
            let d = governor.decide(&machine, Duration::from_secs_f64(t));
            (decode, prefill) = (d.decode_threads, d.prefill_threads);
            (decode_ceiling, prefill_ceiling) = (d.clock_khz, d.prefill_clock_khz);
            next_governor += GOVERNOR_S;
        }
        if t >= next_tick {
            firmware_khz = firmware_clock(model, temp, firmware_khz);
            next_tick += model.firmware_tick_s;
        }
        let prefilling = prompt_left > 0.0;
        let ceiling = if prefilling {
            prefill_ceiling
        } else {
            decode_ceiling
        };
        let khz = ceiling.map_or(firmware_khz, |c| firmware_khz.min(c as f64));
        // Work for one step: the prompt first, then the reply.
        let (busy, gbps) = if prefilling {
            prefill_mhz_s += khz / 1000.0 * STEP_S;
            prefill_s += STEP_S;
            prompt_left -= model.prefill_tokens_per_s(prefill, khz) * STEP_S;
            // Prefill reads the weights once per batch: little traffic.
            (
                prefill,
                model.bytes_per_token / 1e9 / model.prompt_tokens as f64,
            )
        } else {
            let rate = model.decode_tokens_per_s(decode, khz);
            let made = (rate * STEP_S).min(reply_left);
            reply_left -= made;
            generated += made;
            decode_thread_s[decode - 1] += STEP_S;
            decode_mhz_s += khz / 1000.0 * STEP_S;
            if reply_left <= 0.0 {
                (prompt_left, reply_left) = (model.prompt_tokens as f64, model.reply_tokens as f64);
            }
            (decode, rate * model.bytes_per_token / 1e9)
        };
        let watts = model.power.watts(busy, khz, gbps);
        energy += watts * STEP_S;
        let heat = watts - model.off_soc_w;
        let cooling = (temp - model.ambient_c) / model.thermal_resistance_k_per_w;
        temp += (heat - cooling) * STEP_S / model.heat_capacity_j_per_k;
        max_temp = f64::max(max_temp, temp);
        if firmware_khz < model.arm_freq_khz || temp >= model.firmware_soft_c {
            throttled_s += STEP_S;
        }
        t += STEP_S;
    }
    let decode_s: f64 = decode_thread_s.iter().sum();
    let name = if policy == Policy::Balanced && !clock_control {
        format!("{policy} (threads only)")
    } else {
        policy.to_string()
    };
    Outcome {
        name,
        policy,
        clock_control,
        tokens_per_s: generated / end,
        throttled_s,
        max_temperature_c: max_temp,
        joules_per_token: energy / generated.max(1e-9),
        mean_watts: energy / end,
        decode_thread_s,
        decode_mhz: decode_mhz_s / decode_s.max(1e-9),
        prefill_mhz: prefill_mhz_s / prefill_s.max(1e-9),
    }
}

/// The firmware's next clock: down a step per tick from the soft limit, the minimum from
/// the hard limit, back up a step per tick under the soft limit.
fn firmware_clock(model: &Pi5Model, temp: f64, khz: f64) -> f64 {
    if temp >= model.firmware_hard_c {
        model.min_khz
    } else if temp >= model.firmware_soft_c {
        (khz - model.step_khz).max(model.min_khz)
    } else {
        (khz + model.step_khz).min(model.arm_freq_khz)
    }
}

/// `get_throttled` as the firmware would show it: frequency capped, throttled, soft limit.
fn firmware_flags(model: &Pi5Model, temp: f64, khz: f64) -> Throttle {
    let mut bits = 0;
    if khz < model.arm_freq_khz {
        bits |= 0b110;
    }
    if temp >= model.firmware_soft_c {
        bits |= 0b1000;
    }
    Throttle(bits | (bits << 16))
}

fn pi5_machine() -> Machine {
    let cpus = (0..CORES)
        .map(|id| Cpu {
            id,
            online: true,
            capacity: Some(1024),
            max_khz: Some(2_400_000),
            cur_khz: Some(2_400_000),
            scaling_max_khz: Some(2_400_000),
            governor: Some("ondemand".into()),
            cluster: Some(0),
        })
        .collect();
    Machine {
        cpus,
        zones: Vec::new(),
        temperature_c: None,
        passive_trip_c: None,
        throttle: None,
        supply: Supply::default(),
        sensor: None,
    }
}

/// The three policies the issue compares (balanced with and without the clock ceiling),
/// then every fixed thread count: what any policy that only chooses threads could reach.
pub fn compare(model: &Pi5Model, length: Duration) -> Vec<Outcome> {
    let mut runs = vec![
        (Policy::Performance, false),
        (Policy::Balanced, true),
        (Policy::Balanced, false),
        (Policy::Powersave, false),
    ];
    runs.extend((1..=CORES).map(|n| (Policy::Fixed(n), false)));
    runs.into_iter()
        .map(|(p, clock)| run(model, p, clock, length))
        .collect()
}
