//! The power governor inside a running `bitnetd serve`: the calibration at start, the power
//! state in `status` (and joules per token from a sensor), decisions that follow the fake
//! machine, and an idle daemon that uses (almost) no CPU.

use std::time::{Duration, Instant};

use crate::daemon::{Daemon, PATIENCE, request};
use crate::power::{Tree, cpu};

/// A two-core board like this machine (so that pinning can work here), with a power sensor.
fn two_core_board() -> Tree {
    let t = Tree::empty();
    t.cpus(&[cpu(Some(1024), 2_400_000, 0), cpu(Some(1024), 2_400_000, 0)]);
    t.zone(0, "cpu-thermal", 50_000, &[]);
    t.throttled("0\n");
    t.write("sys/class/hwmon/hwmon0/name", "board\n");
    t.write("sys/class/hwmon/hwmon0/power1_input", "5000000\n");
    t
}

#[test]
fn status_carries_the_power_state_and_it_follows_the_machine() {
    let tree = two_core_board();
    let d = launch_balanced(&tree);
    d.wait_log("power: calibrated decode tokens/s");
    d.wait_log("power: decode ");
    let s = d.status();
    let p = &s["power"];
    assert_eq!(p["policy"], "balanced", "{s}");
    assert_eq!(p["temperature_c"], 50.0);
    assert_eq!(p["throttled"], false);
    assert_eq!(p["prefill_threads"], 2);
    let decode = p["decode_threads"].as_u64().unwrap();
    assert!((1..=2).contains(&decode), "{p}");
    assert_eq!(p["cores"], serde_json::json!([0, 1]));
    assert!(
        p["reason"]
            .as_str()
            .unwrap()
            .contains("measured decode speed"),
        "{p}"
    );
    assert!(
        s["joules_per_token"].is_null(),
        "nothing generated yet: {s}"
    );

    // A request, then the sensor's 5 W over the request's speed.
    let mut c = d.connect();
    c.send(&request("r1", "Hello", 8));
    let (_, done) = c.finish("r1");
    assert_eq!(done["usage"]["completion_tokens"], 8, "{done}");
    let s = d.status();
    let tps = s["tokens_per_s"].as_f64().unwrap();
    let joules = s["joules_per_token"].as_f64().unwrap();
    assert_eq!(s["joules_per_token_source"], "sensor");
    assert!((joules - 5.0 / tps).abs() <= 1e-9 * joules, "{s}");

    // Hot: the governor (every 2 s) sheds a thread and says why; requests still work.
    tree.set_temp(0, 79_000);
    d.wait_log("at or over the soft limit 77.0 °C");
    let start = Instant::now();
    let p = loop {
        let p = d.status()["power"].clone();
        if p["prefill_threads"] == 1 {
            break p;
        }
        assert!(start.elapsed() < PATIENCE, "{p}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        (p["decode_threads"].as_u64(), p["temperature_c"].as_f64()),
        (Some(1), Some(79.0))
    );
    c.send(&request("r2", "Hello", 8));
    let (_, done) = c.finish("r2");
    assert_eq!(done["finish_reason"], "length", "{done}");
}

const CEILING: &str = "sys/devices/system/cpu/cpufreq/policy0/scaling_max_freq";

fn launch_balanced(tree: &Tree) -> Daemon {
    Daemon::launch(
        "threads = 2\n",
        &[
            "--sysfs-root",
            tree.root().to_str().unwrap(),
            "--power",
            "balanced",
        ],
        &[],
    )
}

#[test]
fn a_writable_clock_is_calibrated_set_between_passes_and_restored_on_stop() {
    let tree = two_core_board();
    tree.clock_floor(0, 1_500_000);
    let mut d = launch_balanced(&tree);
    d.wait_log("power: calibrated decode tokens/s on 2 thread(s) in ");
    d.wait_log("power: decode ");
    let p = d.status()["power"].clone();
    // Decode on both cores at a ceiling of the calibration's choice (this machine's clock
    // does not follow the fake file, so any step may be within 97% of the full one's speed).
    let decode_khz = p["clock_khz"].as_u64().unwrap();
    assert!(
        (1_500_000..=2_400_000).contains(&decode_khz) && decode_khz.is_multiple_of(100_000),
        "{p}"
    );
    assert_eq!(p["prefill_clock_khz"], 2_400_000, "{p}");
    assert_eq!(
        (&p["decode_threads"], &p["prefill_threads"]),
        (&2.into(), &2.into())
    );
    assert!(
        p["reason"]
            .as_str()
            .unwrap()
            .contains("MHz, the lowest clock"),
        "{p}"
    );
    // The calibration left the full clock; a request ends on decode, at the ceiling chosen.
    assert_eq!(tree.read(CEILING), "2400000");
    let mut c = d.connect();
    c.send(&request("r1", "Hello", 8));
    let (_, done) = c.finish("r1");
    assert_eq!(done["usage"]["completion_tokens"], 8, "{done}");
    assert_eq!(tree.read(CEILING), decode_khz.to_string());
    // Stopped: the ceiling found at start is back.
    d.sigterm();
    assert!(d.wait_exit(PATIENCE).is_some_and(|s| s.success()));
    assert_eq!(tree.read(CEILING), "2400000");
    assert!(
        d.log().contains("power: clock ceiling restored"),
        "{}",
        d.log()
    );
}

#[test]
fn an_unwritable_clock_leaves_the_daemon_on_threads_only() {
    let tree = two_core_board();
    tree.clock_floor(0, 1_500_000);
    tree.read_only_ceiling(0);
    let d = launch_balanced(&tree);
    d.wait_log("power: clock control unavailable: scaling_max_freq not writable (");
    d.wait_log("power: decode ");
    let log = d.log();
    let line = log.lines().find(|l| l.contains("clock control")).unwrap();
    assert!(line.ends_with(": threads only"), "{line}");
    let p = d.status()["power"].clone();
    assert!(
        p["clock_khz"].is_null() && p["prefill_clock_khz"].is_null(),
        "{p}"
    );
    assert!(
        p["reason"]
            .as_str()
            .unwrap()
            .contains("measured decode speed"),
        "{p}"
    );
}

/// An idle daemon parks its threads: under 1% of one core over 60 s (utime + stime from
/// /proc/PID/stat), after its start-up work is done.
#[test]
fn an_idle_daemon_uses_under_one_percent_of_a_core() {
    let d = Daemon::start("threads = 2\n");
    d.wait_log("power: decode ");
    let pid = d.child.id();
    let ticks = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name (which may hold spaces) start at state (field 3).
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let hz: f64 = String::from_utf8(
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let (before, start) = (ticks(), Instant::now());
    std::thread::sleep(Duration::from_secs(60));
    let used = (ticks() - before) as f64 / hz;
    let share = used / start.elapsed().as_secs_f64();
    println!(
        "idle bitnetd serve: {used:.2} s of CPU in 60 s = {:.3}% of one core",
        share * 100.0
    );
    assert!(share < 0.01, "{:.3}% of one core while idle", share * 100.0);
}
