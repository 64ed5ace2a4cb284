//! The power policy on fake sysfs trees of real boards: what it reads, what it decides, how
//! it follows temperature ramps (with hysteresis), throttle flags and the battery, and that
//! missing or broken files degrade to a fixed thread count. Through the library and through
//! `bitnetd power --json`.

use std::process::Command;
use std::time::Duration;

use crate::power::Tree;
use bitnetd::power::clock::Clock;
use bitnetd::power::speed::{ClockCurve, SpeedCurve};
use bitnetd::power::{Governor, Machine, Policy, Settings, SysRoot};
use serde_json::Value;

fn governor(policy: Policy, threads: usize) -> Governor {
    Governor::new(
        Settings {
            policy,
            ..Settings::default()
        },
        threads,
    )
}

fn read(tree: &Tree) -> Machine {
    Machine::read(&SysRoot::new(tree.root()))
}

/// `bitnetd power --json --sysfs-root TREE` plus `extra`.
fn power_json(tree: &Tree, extra: &[&str]) -> Value {
    let out = crate::common::succeeds(
        Command::new(env!("CARGO_BIN_EXE_bitnetd"))
            .args(["power", "--json", "--sysfs-root"])
            .arg(tree.root())
            .args(extra),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn pi5_is_read_through_symlinks() {
    let t = Tree::pi5();
    let m = read(&t);
    assert_eq!(m.cpus.len(), 4);
    for c in &m.cpus {
        assert!(c.online);
        assert_eq!(
            (c.capacity, c.max_khz, c.cur_khz),
            (Some(1024), Some(2_400_000), Some(1_200_000))
        );
        assert_eq!(c.cluster, Some(0));
        assert_eq!(c.governor.as_deref(), Some("ondemand"));
    }
    assert_eq!(m.temperature_c, Some(52.35));
    assert_eq!(
        m.passive_trip_c, None,
        "a critical trip point is not passive"
    );
    assert_eq!(m.throttled(), Some(false));
    assert_eq!(
        (m.supply.on_battery, m.supply.battery_percent),
        (None, None)
    );
    let d = governor(Policy::Performance, 4).decide(&m, Duration::ZERO);
    assert_eq!((d.decode_threads, d.prefill_threads), (4, 4));
    assert_eq!(d.cores, [0, 1, 2, 3]);
}

#[test]
fn pi5_json_has_every_field_the_issue_lists() {
    let t = Tree::pi5();
    let v = power_json(&t, &["--policy", "performance"]);
    let cpus = v["cpus"].as_array().unwrap();
    assert_eq!(cpus.len(), 4);
    for key in ["id", "online", "capacity", "max_khz", "cur_khz", "cluster"] {
        assert!(cpus[0].get(key).is_some(), "cpus[0].{key}: {v}");
    }
    assert_eq!(cpus[3]["max_khz"], 2_400_000);
    assert_eq!(v["temperature_c"], 52.35);
    assert_eq!(v["throttled"], false);
    assert!(
        v["on_battery"].is_null() && v["battery_percent"].is_null(),
        "{v}"
    );
    let d = &v["decision"];
    assert_eq!(d["policy"], "performance");
    assert_eq!(
        (d["decode_threads"].as_u64(), d["prefill_threads"].as_u64()),
        (Some(4), Some(4))
    );
    assert_eq!(d["cores"], serde_json::json!([0, 1, 2, 3]));
    assert!(
        d["reason"].as_str().unwrap().contains("every fast core"),
        "{d}"
    );
}

#[test]
fn pi4_under_voltage_and_throttling_shed_a_thread() {
    let t = Tree::pi4();
    let m = read(&t);
    assert_eq!(m.throttled(), Some(true));
    let mut g = governor(Policy::Balanced, 4);
    g.set_speed(SpeedCurve::new(vec![3.0, 5.0, 6.8, 7.0]).unwrap());
    let d = g.decide(&m, Duration::ZERO);
    // 3 threads cost the fewest joules per token; the firmware's flags take one away.
    assert_eq!(
        (d.decode_threads, d.prefill_threads),
        (2, 3),
        "{}",
        d.reason
    );
    assert!(
        d.reason.contains("under-voltage, throttled"),
        "{}",
        d.reason
    );
    // Performance keeps every core whatever the firmware says.
    let d = governor(Policy::Performance, 4).decide(&m, Duration::ZERO);
    assert_eq!(d.decode_threads, 4);
}

#[test]
fn pi_zero_2w_without_capacities_uses_frequencies() {
    let t = Tree::pi_zero_2w();
    let v = power_json(&t, &["--policy", "fixed:2"]);
    assert_eq!(v["cpus"][0]["capacity"], Value::Null);
    assert_eq!(v["throttled"], false, "0x0 parses");
    assert_eq!(v["temperature_c"], 47.0);
    let d = &v["decision"];
    assert_eq!(
        (d["decode_threads"].as_u64(), d["prefill_threads"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(d["cores"], serde_json::json!([0, 1]));
    assert_eq!(d["policy"], "fixed:2");
}

#[test]
fn rk3588_pins_to_the_big_cores_and_reads_the_hotter_zone() {
    let t = Tree::rk3588();
    let m = read(&t);
    assert_eq!(m.cpus.len(), 8);
    assert_eq!(m.cpus[0].capacity, Some(414));
    assert_eq!(
        m.cpus
            .iter()
            .map(|c| c.cluster.unwrap())
            .collect::<Vec<_>>(),
        [0, 0, 0, 0, 1, 1, 2, 2]
    );
    // The A76s, the higher-clocked pair first; never an A55.
    assert_eq!(m.fast_cores(), [6, 7, 4, 5]);
    assert_eq!(m.temperature_c, Some(46.5), "the hotter of the two zones");
    assert_eq!(m.passive_trip_c, Some(85.0));
    let mut g = governor(Policy::Balanced, 8);
    assert_eq!(
        g.soft_limit_c(&m),
        82.0,
        "3 °C under the passive trip point"
    );
    g.set_speed(SpeedCurve::new(vec![4.0, 7.0, 9.5, 9.8]).unwrap());
    let d = g.decide(&m, Duration::ZERO);
    assert_eq!(
        (d.decode_threads, d.prefill_threads),
        (3, 4),
        "{}",
        d.reason
    );
    assert_eq!(d.cores, [6, 7, 4, 5]);
    let v = power_json(&t, &["--policy", "performance"]);
    assert_eq!(v["decision"]["cores"], serde_json::json!([6, 7, 4, 5]));
    assert_eq!(v["decision"]["decode_threads"], 4);
}

#[test]
fn balanced_decodes_where_another_thread_costs_more_energy_than_it_saves() {
    let t = Tree::pi5();
    let mut g = governor(Policy::Balanced, 4);
    // Memory-bound from two threads: the third would add 7% speed for about 20% more power.
    g.set_speed(SpeedCurve::new(vec![5.0, 8.8, 9.4, 9.6]).unwrap());
    let d = g.decide(&read(&t), Duration::ZERO);
    assert_eq!(
        (d.decode_threads, d.prefill_threads),
        (2, 4),
        "{}",
        d.reason
    );
    assert!(
        d.reason
            .contains("fewest estimated joules per token (92% of the best"),
        "{}",
        d.reason
    );
    // Compute-bound (speed still growing with every core): racing on all four is cheaper.
    g.set_speed(SpeedCurve::new(vec![5.0, 9.5, 13.5, 17.0]).unwrap());
    assert_eq!(g.decide(&read(&t), Duration::ZERO).decode_threads, 4);
}

#[test]
fn a_temperature_ramp_moves_threads_down_and_back_with_hysteresis() {
    let t = Tree::pi5();
    let mut g = governor(Policy::Balanced, 4);
    g.set_speed(SpeedCurve::new(vec![5.0, 8.0, 11.0, 11.5]).unwrap());
    // (seconds, °C, decode and prefill threads expected). Soft limit 77 °C, back under
    // 74 °C; at most one step down per 10 s and one up per 30 s; shedding takes from both.
    let ramp = [
        (0, 60.0, 3, 4),
        (10, 76.9, 3, 4),
        (12, 77.0, 2, 3),
        (16, 79.0, 2, 3),
        (22, 79.0, 1, 2),
        (31, 79.0, 1, 2),
        (32, 79.0, 1, 1),
        (60, 79.0, 1, 1),
        (80, 75.0, 1, 1),
        (100, 74.5, 1, 1),
        (101, 73.9, 1, 2),
        (110, 70.0, 1, 2),
        (131, 70.0, 2, 3),
        (161, 70.0, 3, 4),
        (300, 70.0, 3, 4),
        (302, 76.0, 3, 4),
    ];
    for (s, c, decode, prefill) in ramp {
        t.set_temp(0, (c * 1000.0) as i64);
        let d = g.decide(&read(&t), Duration::from_secs(s));
        let got = (d.decode_threads, d.prefill_threads);
        assert_eq!(got, (decode, prefill), "at {s} s, {c} °C: {}", d.reason);
        assert_eq!(d.cores.len(), d.prefill_threads);
    }
}

#[test]
fn throttle_flags_act_and_clear() {
    let t = Tree::pi5();
    let mut g = governor(Policy::Balanced, 4);
    g.set_speed(SpeedCurve::new(vec![5.0, 8.0, 11.0, 11.5]).unwrap());
    assert_eq!(g.decide(&read(&t), Duration::ZERO).decode_threads, 3);
    t.throttled("0x20004\n");
    let d = g.decide(&read(&t), Duration::from_secs(2));
    assert_eq!(d.decode_threads, 2);
    assert!(d.reason.contains("throttled (0x20004)"), "{}", d.reason);
    // Bits 16-19 alone are history: they do not hold threads back.
    t.throttled("0x20000\n");
    assert_eq!(
        g.decide(&read(&t), Duration::from_secs(31)).decode_threads,
        2,
        "too early"
    );
    assert_eq!(
        g.decide(&read(&t), Duration::from_secs(32)).decode_threads,
        3
    );
}

#[test]
fn a_laptop_on_a_low_battery_switches_balanced_to_powersave() {
    let low = Tree::laptop(15, false);
    let m = read(&low);
    assert_eq!(m.supply.on_battery, Some(true));
    assert_eq!(
        m.supply.battery_percent,
        Some(15.0),
        "the mouse's battery is not the laptop's"
    );
    assert_eq!(m.temperature_c, Some(55.0), "x86_pkg_temp before acpitz");
    assert_eq!(m.passive_trip_c, None, "a trip point at 0 is unset");
    assert!(
        m.sensor
            .as_ref()
            .unwrap()
            .name
            .contains("rapl/energy1_input")
    );
    let mut g = governor(Policy::Balanced, 4);
    g.set_speed(SpeedCurve::new(vec![5.0, 8.0, 11.0, 11.5]).unwrap());
    let d = g.decide(&m, Duration::ZERO);
    assert_eq!(d.policy, Policy::Powersave);
    assert_eq!(
        (d.decode_threads, d.prefill_threads),
        (1, 1),
        "5 tokens/s >= 4 on one thread"
    );
    assert!(d.reason.contains("on battery at 15%"), "{}", d.reason);
    let v = power_json(&low, &[]);
    assert_eq!(
        (v["on_battery"].as_bool(), v["battery_percent"].as_f64()),
        (Some(true), Some(15.0))
    );
    assert_eq!(v["decision"]["policy"], "powersave");

    // Plugged in, or charged enough: balanced stays balanced. Performance ignores batteries.
    for tree in [Tree::laptop(15, true), Tree::laptop(60, false)] {
        let d = g.decide(&read(&tree), Duration::ZERO);
        assert_eq!(d.policy, Policy::Balanced, "{}", d.reason);
        assert_eq!(d.decode_threads, 3);
    }
    let d = governor(Policy::Performance, 4).decide(&m, Duration::ZERO);
    assert_eq!((d.policy, d.decode_threads), (Policy::Performance, 4));
}

#[test]
fn a_container_without_sysfs_gets_a_fixed_unpinned_count() {
    let t = Tree::empty();
    let m = read(&t);
    assert!(m.cpus.is_empty() && m.zones.is_empty());
    let d = governor(Policy::Balanced, 3).decide(&m, Duration::ZERO);
    assert_eq!((d.decode_threads, d.prefill_threads), (3, 3));
    assert!(d.cores.is_empty());
    assert!(d.reason.contains("no CPU information"), "{}", d.reason);
    let v = power_json(&t, &["-t", "3"]);
    assert_eq!(v["cpus"], serde_json::json!([]));
    for key in [
        "temperature_c",
        "throttled",
        "on_battery",
        "battery_percent",
    ] {
        assert!(v[key].is_null(), "{key}: {v}");
    }
    assert_eq!(v["decision"]["decode_threads"], 3);
    let missing = Command::new(env!("CARGO_BIN_EXE_bitnetd"))
        .args(["power", "--sysfs-root", "/nonexistent/bitnetd-test"])
        .output()
        .unwrap();
    assert!(missing.status.success());
    let text = String::from_utf8_lossy(&missing.stdout);
    assert!(
        text.contains("no CPUs in sysfs") && text.contains("temperature: unknown"),
        "{text}"
    );
}

#[test]
fn broken_files_degrade_instead_of_failing() {
    let t = Tree::pi5();
    t.write("sys/devices/system/cpu/online", "garbage\n");
    t.write("sys/devices/system/cpu/cpu1/online", "0\n");
    t.write("sys/devices/system/cpu/cpu2/cpu_capacity", "");
    std::fs::remove_file(t.path("sys/devices/system/cpu/cpu3/cpu_capacity")).unwrap();
    // A directory where a file should be, and a dangling symlink.
    std::fs::create_dir_all(t.path("sys/devices/system/cpu/cpu3/cpu_capacity")).unwrap();
    std::fs::remove_file(t.path("sys/devices/system/cpu/cpu3/cpufreq")).unwrap();
    t.symlink("../cpufreq/policy9", "sys/devices/system/cpu/cpu3/cpufreq");
    t.write("sys/devices/virtual/thermal/thermal_zone0/temp", "hot\n");
    t.throttled("0xzz\n");
    let m = read(&t);
    assert_eq!(m.cpus.len(), 4);
    // With a garbled online list each cpuN/online decides (cpu0 has none: online).
    assert_eq!(
        m.cpus.iter().map(|c| c.online).collect::<Vec<_>>(),
        [true, false, true, true]
    );
    assert_eq!(m.cpus[2].capacity, None);
    assert_eq!((m.cpus[3].capacity, m.cpus[3].max_khz), (None, None));
    assert_eq!(m.temperature_c, None);
    assert_eq!(m.throttled(), None);
    let d = governor(Policy::Performance, 4).decide(&m, Duration::ZERO);
    // Core 0 has the best capacity on record; 2 and 3 have none.
    assert_eq!(d.decode_threads, 1, "{d:?}");
    let v = power_json(&t, &[]);
    assert!(
        v["temperature_c"].is_null() && v["throttled"].is_null(),
        "{v}"
    );
}

const CEILING: &str = "sys/devices/system/cpu/cpufreq/policy0/scaling_max_freq";

/// A Pi 5's decode on four cores against the ceiling, 1.5 to 2.4 GHz: memory-bound from
/// 1.8 GHz up (97% of the full speed there), compute-bound under it.
fn pi5_clock_curve() -> ClockCurve {
    let steps: Vec<u64> = (15..=24).map(|s| s * 100_000).collect();
    let speeds = [7.0, 8.0, 8.8, 9.05, 9.1, 9.15, 9.2, 9.25, 9.3, 9.3];
    ClockCurve::new(steps, speeds.iter().map(|&s| Some(s)).collect()).unwrap()
}

#[test]
fn a_writable_clock_decodes_capped_and_prefills_at_full_clock() {
    let t = Tree::pi5();
    t.clock_floor(0, 1_500_000);
    let root = SysRoot::new(t.root());
    let mut clock = Clock::open(&root, &read(&t).fast_cores()).unwrap();
    assert_eq!(clock.steps().len(), 10);
    assert_eq!(clock.full_khz(), 2_400_000);
    let mut g = governor(Policy::Balanced, 4);
    g.set_speed(SpeedCurve::new(vec![6.3, 8.4, 9.1, 9.3]).unwrap());
    g.set_clock(pi5_clock_curve());
    let d = g.decide(&read(&t), Duration::ZERO);
    assert_eq!(
        (d.decode_threads, d.prefill_threads),
        (4, 4),
        "{}",
        d.reason
    );
    assert_eq!(d.clock_khz, Some(1_800_000), "{}", d.reason);
    assert_eq!(d.prefill_clock_khz, Some(2_400_000));
    assert!(
        d.reason.contains("at 1800 MHz") && d.reason.contains(">= 97%"),
        "{}",
        d.reason
    );
    // What the engine's thread writes as it enters each phase, then the original back.
    clock.set(d.clock_khz.unwrap()).unwrap();
    assert_eq!(t.read(CEILING), "1800000");
    clock.set(d.prefill_clock_khz.unwrap()).unwrap();
    assert_eq!(t.read(CEILING), "2400000");
    clock.set(1_500_000).unwrap();
    clock.restore().unwrap();
    assert_eq!(t.read(CEILING), "2400000");
    // Restored: later writes do nothing.
    clock.set(1_500_000).unwrap();
    assert_eq!(t.read(CEILING), "2400000");
    // A stricter fraction picks a higher clock; performance and fixed never cap.
    let mut strict = Governor::new(
        Settings {
            decode_speed_fraction: 0.995,
            ..Settings::default()
        },
        4,
    );
    strict.set_clock(pi5_clock_curve());
    assert_eq!(
        strict.decide(&read(&t), Duration::ZERO).clock_khz,
        Some(2_300_000)
    );
    for policy in [Policy::Performance, Policy::Fixed(2)] {
        let mut g = governor(policy, 4);
        g.set_clock(pi5_clock_curve());
        let d = g.decide(&read(&t), Duration::ZERO);
        assert_eq!((d.clock_khz, d.prefill_clock_khz), (None, None), "{policy}");
    }
}

#[test]
fn an_admins_lower_ceiling_stays_the_top_step() {
    let t = Tree::pi5();
    t.clock_floor(0, 1_500_000);
    t.write(CEILING, "2000000\n");
    let mut clock = Clock::open(&SysRoot::new(t.root()), &[0, 1, 2, 3]).unwrap();
    assert_eq!(clock.full_khz(), 2_000_000);
    clock.set(1_600_000).unwrap();
    clock.restore().unwrap();
    assert_eq!(t.read(CEILING), "2000000");
}

#[test]
fn an_unwritable_or_missing_ceiling_leaves_threads_only() {
    let t = Tree::pi5();
    t.clock_floor(0, 1_500_000);
    t.read_only_ceiling(0);
    let e = Clock::open(&SysRoot::new(t.root()), &[0, 1, 2, 3])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("scaling_max_freq not writable (") && e.contains("policy0/scaling_max_freq"),
        "{e}"
    );
    // No steps (no cpuinfo_min_freq nor a frequency list), no cpufreq at all.
    let e = Clock::open(&SysRoot::new(Tree::pi5().root()), &[0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("no clock steps"), "{e}");
    let empty = Tree::empty();
    let e = Clock::open(&SysRoot::new(empty.root()), &[0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("no cpufreq policy for cores [0]"), "{e}");
    // `bitnetd power` says so.
    let j = power_json(&t, &[]);
    assert_eq!(j["clock_steps_khz"], serde_json::json!([]));
    assert!(
        j["clock_unavailable"]
            .as_str()
            .unwrap()
            .contains("not writable"),
        "{j}"
    );
    assert!(j["decision"]["clock_khz"].is_null(), "{j}");
}

#[test]
fn clock_steps_go_down_before_threads_and_come_back_after_them() {
    let t = Tree::pi5();
    let mut g = governor(Policy::Balanced, 4);
    g.set_clock(pi5_clock_curve());
    // (seconds, °C, decode MHz, decode and prefill threads). Decoding at 1800 MHz, three
    // steps above the lowest: hot, one step each 10 s, then threads; cool (under 74 °C),
    // threads come back first, one step each 30 s.
    let ramp = [
        (0, 60.0, 1800, 4, 4),
        (10, 77.0, 1700, 4, 4),
        (15, 79.0, 1700, 4, 4),
        (20, 79.0, 1600, 4, 4),
        (30, 79.0, 1500, 4, 4),
        (40, 79.0, 1500, 3, 3),
        (60, 75.0, 1500, 3, 3),
        (70, 73.0, 1500, 4, 4),
        (90, 73.0, 1500, 4, 4),
        (100, 73.0, 1600, 4, 4),
        (130, 73.0, 1700, 4, 4),
        (160, 73.0, 1800, 4, 4),
        (400, 73.0, 1800, 4, 4),
    ];
    for (s, c, mhz, decode, prefill) in ramp {
        t.set_temp(0, (c * 1000.0) as i64);
        let d = g.decide(&read(&t), Duration::from_secs(s));
        let got = (d.clock_khz, d.decode_threads, d.prefill_threads);
        assert_eq!(
            got,
            (Some(mhz * 1000), decode, prefill),
            "at {s} s, {c} °C: {}",
            d.reason
        );
        // Prompts are evaluated at the full clock whatever the heat.
        assert_eq!(d.prefill_clock_khz, Some(2_400_000));
    }
    // The firmware's flags step the clock down too.
    t.throttled("0x8\n");
    let d = g.decide(&read(&t), Duration::from_secs(410));
    assert_eq!(d.clock_khz, Some(1_700_000), "{}", d.reason);
    assert!(
        d.reason.contains("decode clock 1 step(s) lower"),
        "{}",
        d.reason
    );
}

/// `bitnetd power --sysfs-root TREE` plus `args`: its stdout, after checking it succeeded.
fn power_cmd(tree: &Tree, args: &[&str]) -> String {
    let out = crate::common::succeeds(
        Command::new(env!("CARGO_BIN_EXE_bitnetd"))
            .args(["power", "--sysfs-root"])
            .arg(tree.root())
            .args(args),
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_units_grant_and_restore_commands_on_fake_trees() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let t = Tree::rk3588();
    let little = "sys/devices/system/cpu/cpufreq/policy0/scaling_max_freq";
    let bigs = [
        "sys/devices/system/cpu/cpufreq/policy1/scaling_max_freq",
        "sys/devices/system/cpu/cpufreq/policy2/scaling_max_freq",
    ];
    for f in bigs.iter().chain([&little]) {
        std::fs::set_permissions(t.path(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    // Our own group: a group anyone may give their files to.
    let gid = std::fs::metadata(t.path(little)).unwrap().gid();
    let out = power_cmd(&t, &["--grant-clock", &gid.to_string()]);
    assert_eq!(out.lines().count(), 2, "{out}");
    for f in bigs {
        let meta = std::fs::metadata(t.path(f)).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.gid()), (0o664, gid), "{f}");
        assert!(out.contains(f), "{out}");
    }
    // The slow cores' ceiling is not the daemon's to change.
    let meta = std::fs::metadata(t.path(little)).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o644);

    // A crashed daemon left the big cores capped: the stop step writes their maximum back.
    t.write(bigs[0], "1200000\n");
    t.write(bigs[1], "1200000\n");
    t.write(little, "1000000\n");
    let out = power_cmd(&t, &["--restore-clock"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert_eq!(t.read(bigs[0]), "2256000");
    assert_eq!(t.read(bigs[1]), "2304000");
    assert_eq!(t.read(little), "1000000");

    // Nothing to change (a VM, a container): success, and it says so.
    let empty = Tree::empty();
    for args in [&["--grant-clock", "0"][..], &["--restore-clock"]] {
        let out = power_cmd(&empty, args);
        assert!(out.contains("nothing to do"), "{out}");
    }
    // A group that does not exist is named.
    let out = Command::new(env!("CARGO_BIN_EXE_bitnetd"))
        .args(["power", "--grant-clock", "no-such-group-here"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no group \"no-such-group-here\" in /etc/group"),
        "{err}"
    );
}
