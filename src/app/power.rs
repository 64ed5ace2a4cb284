//! `bitnetd power`: what the daemon sees of the machine (CPUs, temperature, throttling, power
//! source, whether it may set the clock) and what its policy would decide now; `--simulate`
//! runs the policies on a modelled, passively cooled Raspberry Pi 5; `--grant-clock` and
//! `--restore-clock` are the service unit's steps around the daemon (run as root).

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::power::clock::{self, Clock};
use crate::power::simulate::{self, Pi5Model};
use crate::power::{Decision, Governor, Machine, Policy, Settings, SysRoot};

#[derive(Debug, clap::Args)]
pub struct PowerArgs {
    /// Read sysfs under DIR instead of /.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub sysfs_root: PathBuf,
    /// The policy to decide with: performance, balanced, powersave or fixed:N.
    #[arg(long, value_name = "P", default_value = "balanced")]
    pub policy: Policy,
    /// Threads the pool would have [default: one per fast core].
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Run performance, balanced, powersave and every fixed thread count on a modelled,
    /// passively cooled Pi 5.
    #[arg(long)]
    pub simulate: bool,
    /// Simulated minutes of back-to-back requests.
    #[arg(long, default_value_t = 30, requires = "simulate")]
    pub minutes: u64,
    /// The simulated Pi's clock when cool (config.txt `arm_freq`), MHz.
    #[arg(long, default_value_t = 2400, value_parser = clap::value_parser!(u64).range(1500..=2400), requires = "simulate")]
    pub arm_freq_mhz: u64,
    /// Give GROUP (a name or a number) write access to the fast cores' cpufreq
    /// scaling_max_freq, so that balanced may lower the decode clock (the unit runs this as
    /// root before the daemon). Missing files are skipped.
    #[arg(long, value_name = "GROUP", conflicts_with_all = ["simulate", "restore_clock"])]
    pub grant_clock: Option<String>,
    /// Write each fast core policy's cpuinfo_max_freq back into its scaling_max_freq (the
    /// unit runs this as root after the daemon stops, even after a crash). Missing files are
    /// skipped.
    #[arg(long, conflicts_with = "simulate")]
    pub restore_clock: bool,
}

/// `--json`'s object.
#[derive(Serialize)]
struct Report<'a> {
    cpus: Vec<CpuReport>,
    temperature_c: Option<f64>,
    /// The zone the temperature comes from.
    thermal_zone: Option<String>,
    soft_limit_c: f64,
    throttled: Option<bool>,
    throttle_flags: Option<String>,
    on_battery: Option<bool>,
    battery_percent: Option<f64>,
    power_sensor: Option<&'a crate::power::supply::PowerSensor>,
    /// The fast cores' clock ceilings the daemon could write (empty: it cannot)...
    clock_steps_khz: Vec<u64>,
    /// ...and why it cannot.
    clock_unavailable: Option<String>,
    decision: &'a Decision,
}

#[derive(Serialize)]
struct CpuReport {
    id: usize,
    online: bool,
    capacity: Option<u64>,
    max_khz: Option<u64>,
    cur_khz: Option<u64>,
    cluster: Option<u64>,
}

pub fn run(args: &PowerArgs) -> anyhow::Result<()> {
    if args.simulate {
        return simulate(args);
    }
    let root = SysRoot::new(&args.sysfs_root);
    if let Some(group) = &args.grant_clock {
        let gid = clock::group_id(group, std::path::Path::new("/etc/group"))
            .map_err(anyhow::Error::msg)?;
        let files = clock::grant(&root, gid).map_err(anyhow::Error::msg)?;
        report_files(&files, &format!("group {group} may write"));
        return Ok(());
    }
    if args.restore_clock {
        let files = clock::restore_max(&root).map_err(anyhow::Error::msg)?;
        report_files(&files, "restored cpuinfo_max_freq into");
        return Ok(());
    }
    let machine = Machine::read(&root);
    let threads = args
        .threads
        .unwrap_or_else(|| match machine.fast_cores().len() {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        });
    let settings = Settings {
        policy: args.policy,
        ..Settings::default()
    };
    let mut governor = Governor::new(settings, threads);
    let decision = governor.decide(&machine, Duration::ZERO);
    let zone = crate::power::thermal::soc_zone(&machine.zones);
    // Opening writes each ceiling back unchanged: the only way to learn it is writable.
    let (clock_steps_khz, clock_unavailable) = match Clock::open(&root, &machine.fast_cores()) {
        Ok(clock) => (clock.steps().to_vec(), None),
        Err(why) => (Vec::new(), Some(why.to_string())),
    };
    let report = Report {
        cpus: machine
            .cpus
            .iter()
            .map(|c| CpuReport {
                id: c.id,
                online: c.online,
                capacity: c.capacity,
                max_khz: c.max_khz,
                cur_khz: c.cur_khz,
                cluster: c.cluster,
            })
            .collect(),
        temperature_c: machine.temperature_c,
        thermal_zone: zone.map(|z| format!("{} ({})", z.name, z.kind)),
        soft_limit_c: governor.soft_limit_c(&machine),
        throttled: machine.throttled(),
        throttle_flags: machine.throttle.map(|t| format!("0x{:x}", t.0)),
        on_battery: machine.supply.on_battery,
        battery_percent: machine.supply.battery_percent,
        power_sensor: machine.sensor.as_ref(),
        clock_steps_khz,
        clock_unavailable,
        decision: &decision,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

fn print_text(r: &Report) {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!("cpu  online  capacity  max MHz  cur MHz  cluster");
    for c in &r.cpus {
        println!(
            "{:>3}  {:>6}  {:>8}  {:>7}  {:>7}  {:>7}",
            c.id,
            if c.online { "yes" } else { "no" },
            opt(c.capacity.map(|v| v.to_string())),
            opt(c.max_khz.map(|v| (v / 1000).to_string())),
            opt(c.cur_khz.map(|v| (v / 1000).to_string())),
            opt(c.cluster.map(|v| v.to_string())),
        );
    }
    if r.cpus.is_empty() {
        println!("(no CPUs in sysfs)");
    }
    match (r.temperature_c, &r.thermal_zone) {
        (Some(t), Some(z)) => println!(
            "temperature: {t:.1} °C from {z}; soft limit {:.1} °C",
            r.soft_limit_c
        ),
        _ => println!("temperature: unknown (no SoC thermal zone)"),
    }
    match (&r.throttle_flags, r.throttled) {
        (Some(f), Some(now)) => println!(
            "firmware throttling: {f} ({})",
            if now { "now" } else { "not now" }
        ),
        _ => println!("firmware throttling: not reported"),
    }
    match (r.on_battery, r.battery_percent) {
        (Some(true), p) => println!("power: on battery ({})", opt(p.map(|p| format!("{p:.0}%")))),
        (Some(false), p) => println!(
            "power: external{}",
            p.map(|p| format!(", battery {p:.0}%")).unwrap_or_default()
        ),
        (None, _) => println!("power: no supply information"),
    }
    if let Some(s) = r.power_sensor {
        println!("power sensor: {} ({:?} {})", s.name, s.kind, s.micro);
    }
    match (r.clock_steps_khz.as_slice(), &r.clock_unavailable) {
        ([first, .., last], _) | ([first @ last], _) => println!(
            "clock control: available, ceilings {}-{} MHz (balanced calibrates at start)",
            first / 1000,
            last / 1000
        ),
        (_, why) => println!(
            "clock control: unavailable: {}",
            why.as_deref().unwrap_or("no clock steps")
        ),
    }
    let d = r.decision;
    let clocks = match (d.clock_khz, d.prefill_clock_khz) {
        (Some(c), Some(p)) => format!(" at {} / {} MHz", c / 1000, p / 1000),
        _ => String::new(),
    };
    println!(
        "decision ({}): decode {} threads, prefill {} threads, cores {:?}{clocks}\n  because {}",
        d.policy, d.decode_threads, d.prefill_threads, d.cores, d.reason
    );
}

/// One line per file `--grant-clock` or `--restore-clock` changed, or that there was none.
fn report_files(files: &[PathBuf], what: &str) {
    if files.is_empty() {
        println!("no cpufreq scaling_max_freq for the fast cores: nothing to do");
    }
    for f in files {
        println!("{what} {}", f.display());
    }
}

fn simulate(args: &PowerArgs) -> anyhow::Result<()> {
    let model = Pi5Model {
        arm_freq_khz: args.arm_freq_mhz as f64 * 1000.0,
        ..Pi5Model::default()
    };
    let outcomes = simulate::compare(&model, Duration::from_secs(args.minutes * 60));
    if args.json {
        let v = serde_json::json!({"model": model, "minutes": args.minutes, "outcomes": outcomes});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let base = outcomes[0].tokens_per_s;
    println!(
        "{} simulated minutes of back-to-back requests ({} prompt + {} generated tokens) on a \
         passively cooled Raspberry Pi 5 at {} MHz (README \"Power\")",
        args.minutes, model.prompt_tokens, model.reply_tokens, args.arm_freq_mhz
    );
    println!(
        "| policy | tokens/s | of performance | throttled | max °C | W | J/token | clock MHz (decode / prefill) | decode s at 1/2/3/4 threads |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for o in &outcomes {
        let s: Vec<String> = o
            .decode_thread_s
            .iter()
            .map(|s| format!("{s:.0}"))
            .collect();
        println!(
            "| {} | {:.2} | {:.1}% | {:.0} s | {:.1} | {:.2} | {:.3} | {:.0} / {:.0} | {} |",
            o.name,
            o.tokens_per_s,
            o.tokens_per_s / base * 100.0,
            o.throttled_s,
            o.max_temperature_c,
            o.mean_watts,
            o.joules_per_token,
            o.decode_mhz,
            o.prefill_mhz,
            s.join(" / ")
        );
    }
    Ok(())
}
