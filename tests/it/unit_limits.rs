//! The shipped unit's resource limits hold the daemon as it really runs: the built binary
//! with the most compute threads a board has and every socket connection slot taken stays
//! under `TasksMax=` and `LimitNOFILE=`; `MemoryMax=` leaves the rest of the board room, and
//! a model that cannot load does not restart forever (`StartLimit*` in `[Unit]`, where
//! systemd reads them).

use std::path::Path;

use crate::daemon::{self, Client, Daemon};
use bitnetd::config::Config;
use serde_json::json;

/// `(section, key, value)` of every setting of the shipped service unit.
fn unit_settings() -> Vec<(String, String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/bitnetd.service");
    let text = std::fs::read_to_string(path).unwrap();
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            out.push((section.clone(), k.to_string(), v.to_string()));
        }
    }
    out
}

/// The one value of `key` in `section`.
fn setting(section: &str, key: &str) -> String {
    let found: Vec<_> = unit_settings()
        .into_iter()
        .filter(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "[{section}] {key}= set {} times",
        found.len()
    );
    found[0].clone()
}

fn number(section: &str, key: &str) -> u64 {
    let v = setting(section, key);
    v.parse()
        .unwrap_or_else(|e| panic!("[{section}] {key}={v}: {e}"))
}

fn count_entries(dir: &str) -> u64 {
    std::fs::read_dir(dir).unwrap().count() as u64
}

#[test]
fn the_daemon_at_full_load_stays_under_tasks_max_and_limit_nofile() {
    let tasks_max = number("Service", "TasksMax");
    let nofile = number("Service", "LimitNOFILE");
    let limits = Config::default().limits;
    // The most cores a supported board has (RK3588: 8), every connection slot taken (by
    // one user here, so its own cap is raised to the overall one).
    let d = Daemon::start(&format!(
        "threads = 8\n[limits]\nmax_connections_per_uid = {}\n",
        limits.max_connections
    ));
    let mut clients: Vec<Client> = (0..limits.max_connections).map(|_| d.connect()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(&daemon::request(&format!("r{i}"), "Hi", 1));
    }
    // Every connection answered: each is open and admitted (a refused one would say busy,
    // a full queue also answers busy: both are answers).
    for (i, c) in clients.iter_mut().enumerate() {
        let e = c.event();
        let answered = e["id"] == format!("r{i}") || e["error"]["code"] == "busy";
        assert!(answered, "{e}");
    }
    let pid = d.child.id();
    let tasks = count_entries(&format!("/proc/{pid}/task"));
    let fds = count_entries(&format!("/proc/{pid}/fd"));
    println!(
        "threads = 8, {} connections: {tasks} tasks (TasksMax={tasks_max}), {fds} descriptors (LimitNOFILE={nofile})",
        limits.max_connections
    );
    // Room to spare: a leak should hit the cap, normal work never.
    assert!(
        tasks * 2 <= tasks_max,
        "{tasks} tasks vs TasksMax={tasks_max}"
    );
    assert!(
        fds * 2 <= nofile,
        "{fds} descriptors vs LimitNOFILE={nofile}"
    );
    let mut c = d.connect();
    c.send(&json!({"cmd": "health"}));
    assert_eq!(c.event()["health"], "ok");
}

#[test]
fn memory_is_capped_with_room_for_the_rest_of_the_board() {
    let v = setting("Service", "MemoryMax");
    let percent: u32 = v
        .strip_suffix('%')
        .unwrap_or_else(|| panic!("MemoryMax={v}: a share of the board's RAM"))
        .parse()
        .unwrap();
    assert!((50..=90).contains(&percent), "MemoryMax={v}");
}

#[test]
fn a_model_that_cannot_load_stops_restarting() {
    assert_eq!(setting("Service", "Restart"), "on-failure");
    let burst = number("Unit", "StartLimitBurst");
    let interval = number("Unit", "StartLimitIntervalSec");
    let restart_sec = number("Service", "RestartSec");
    // The burst must fit in the interval, or the limit never trips.
    assert!(
        burst >= 1 && burst * restart_sec < interval,
        "StartLimitBurst={burst}, RestartSec={restart_sec}, StartLimitIntervalSec={interval}"
    );
}
