//! The shipped unit's syscall filter against what the daemon really calls: `bitnetd serve`
//! runs under `strace -f` through socket requests, a status command, an MQTT request (a real
//! mosquitto on a free loopback port), the watchdog and notify messages, and SIGTERM; then
//! `bitnetd run --cores 0` pins a compute thread. Every system call seen must survive the
//! unit's `SystemCallFilter=` lines as systemd applies them (groups expanded by
//! `systemd-analyze syscall-filter`). The filter fails a forbidden call with EPERM, which
//! would break the daemon in the field without killing it, so only this test notices.
//! Names are those of the architecture the test runs on (x86_64 in CI); the aarch64 guest
//! of scripts/pi-vm-test.sh runs the same unit for real.

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use crate::daemon::mqtt::Broker;
use crate::daemon::{Client, PATIENCE, request, wait_for};
use serde_json::json;

const UNIT: &str = include_str!("../../systemd/bitnetd.service");

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// A syscall or `@group`, expanded to syscall names (groups nest).
fn expand(item: &str, out: &mut BTreeSet<String>) {
    if !item.starts_with('@') {
        out.insert(item.to_owned());
        return;
    }
    let listing = Command::new("systemd-analyze")
        .args(["syscall-filter", "--no-pager", item])
        .output()
        .unwrap();
    assert!(
        listing.status.success(),
        "systemd-analyze syscall-filter {item}"
    );
    let text = String::from_utf8(listing.stdout).unwrap();
    let members: Vec<&str> = text
        .lines()
        .skip(1) // the group's own name
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(!members.is_empty(), "{item} is not a group systemd knows");
    for member in members {
        expand(member, out);
    }
}

/// What the unit's `SystemCallFilter=` lines allow, applied in order as systemd does: the
/// first line (an allow list) sets the default and brings `@default` with it (systemd's
/// load-fragment.c), later lines add (`name`) or remove (`~name`).
fn allowed_by_unit(unit: &str) -> BTreeSet<String> {
    let mut allowed: Option<BTreeSet<String>> = None;
    for value in unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SystemCallFilter="))
    {
        let (deny, list) = match value.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        let mut set = BTreeSet::new();
        for item in list.split_whitespace() {
            expand(item, &mut set);
        }
        match allowed.as_mut() {
            None => {
                assert!(
                    !deny,
                    "the first SystemCallFilter= line should be an allow list"
                );
                expand("@default", &mut set);
                allowed = Some(set);
            }
            Some(a) if deny => a.retain(|s| !set.contains(s)),
            Some(a) => a.extend(set),
        }
    }
    allowed.expect("the unit has SystemCallFilter= lines")
}

/// The syscall names in an `strace -f` output file (`PID name(args) = ret`; resumed and
/// signal lines carry no new name).
fn syscalls_in(trace: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(trace).unwrap();
    text.lines()
        .filter_map(|l| {
            let call = l.split_once(' ')?.1.trim_start();
            let name = &call[..call.find('(')?];
            (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
                .then(|| name.to_owned())
        })
        .collect()
}

fn strace(trace: &Path) -> Command {
    let mut c = Command::new("strace");
    c.args(["-f", "-qq", "-e", "trace=all", "-o"]).arg(trace);
    c
}

/// `mosquitto_sub` for `count` messages on `topic` of the broker's main port, started now.
fn mosquitto_sub(broker: &Broker, topic: &str, count: usize) -> Child {
    Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-V",
            "mqttv5",
        ])
        .args(["-t", topic, "-C", &count.to_string(), "-W", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs the daemon under strace through every path the test drives; returns its trace.
fn trace_serve(dir: &Path, broker: &Broker) -> PathBuf {
    let socket = dir.join("bitnetd.sock");
    let config = dir.join("bitnetd.toml");
    std::fs::write(
        &config,
        format!(
            "model = {:?}\nctx_size = 1024\n[socket]\npath = {:?}\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {}\nnode = \"audit\"\nstatus_interval_s = 1\n",
            common::reference("tiny-i2_s.gguf").display().to_string(),
            socket.display().to_string(),
            broker.port
        ),
    )
    .unwrap();
    let notify_path = dir.join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(PATIENCE)).unwrap();
    let trace = dir.join("serve.trace");
    let log_path = dir.join("serve.log");
    let mut child = strace(&trace)
        .arg(env!("CARGO_BIN_EXE_bitnetd"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "1000000")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // STATUS=loading comes first (the socket answers while the model loads), then READY=1.
    let mut buf = [0u8; 4096];
    loop {
        let n = notify.recv(&mut buf).expect("READY=1 from the daemon");
        if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
            break;
        }
    }

    // Socket: a status, a generation, a malformed line.
    let mut client = Client::new(&socket);
    client.send(&json!({"cmd": "status"}));
    assert_eq!(client.event()["status"]["model"], "tiny-i2_s.gguf");
    client.send(&request("sock", "Hello there", 4));
    assert_eq!(client.finish("sock").1["done"], true);
    client.send_raw(b"{not json\n");
    assert!(client.event()["error"].is_object());

    // MQTT: the retained status, and a request answered on its MQTT 5 response topic.
    let status = mosquitto_sub(broker, "bitnetd/audit/status", 1);
    let reply = mosquitto_sub(broker, "bitnetd/reply/audit", 1);
    std::thread::sleep(Duration::from_millis(300)); // the subscription is in place
    let published = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-V",
            "mqttv5",
        ])
        .args(["-t", "bitnetd/audit/request", "-q", "1"])
        .args(["-D", "publish", "response-topic", "bitnetd/reply/audit"])
        .args(["-m", r#"{"id":"mqtt","prompt":"Hi","max_tokens":4}"#])
        .status()
        .unwrap();
    assert!(published.success());
    for sub in [status, reply] {
        let out = sub.wait_with_output().unwrap();
        assert!(out.status.success() && !out.stdout.is_empty(), "{}", log());
    }
    wait_for("the MQTT request's log line", || {
        log().contains("request mqtt via")
    });
    // A watchdog ping or two while idle.
    std::thread::sleep(Duration::from_millis(1500));

    // SIGTERM to the daemon (strace's first line names its pid), which must exit cleanly.
    let first = std::fs::read_to_string(&trace).unwrap();
    let pid = first.split_whitespace().next().unwrap().to_owned();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < PATIENCE, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}: {}", log());
    assert!(log().contains("stopped"), "{}", log());
    trace
}

/// `bitnetd run --cores 0`: the pinning path (sched_setaffinity).
fn trace_pinned_run(dir: &Path) -> PathBuf {
    let trace = dir.join("run.trace");
    crate::common::succeeds(
        strace(&trace)
            .arg(env!("CARGO_BIN_EXE_bitnetd"))
            .args(["run", "-m"])
            .arg(common::reference("tiny-i2_s.gguf"))
            .args(["-t", "2", "--cores", "0", "-n", "4", "-p", "Hello"]),
    );
    trace
}

#[test]
fn the_unit_allows_every_syscall_the_daemon_makes() {
    for tool in ["strace", "systemd-analyze", "mosquitto_sub"] {
        if !have(tool) {
            common::skip(&format!("{tool} is not installed (.ci/run installs it)"));
            return;
        }
    }
    let allowed = allowed_by_unit(UNIT);
    // The filter must at least be what the unit claims: pinning allowed, privileged calls not.
    assert!(allowed.contains("sched_setaffinity"));
    assert!(!allowed.contains("setuid") && !allowed.contains("chown"));

    let dir = tempfile::tempdir().unwrap();
    let Some(broker) = Broker::start() else {
        return;
    };
    let serve = syscalls_in(&trace_serve(dir.path(), &broker));
    let run = syscalls_in(&trace_pinned_run(dir.path()));
    assert!(
        run.contains("sched_setaffinity"),
        "run --cores 0 did not pin: {run:?}"
    );
    let used: BTreeSet<_> = serve.union(&run).cloned().collect();
    let forbidden: Vec<_> = used.difference(&allowed).collect();
    println!("{} distinct syscalls used: {used:?}", used.len());
    assert!(
        forbidden.is_empty(),
        "the unit's SystemCallFilter= would refuse {forbidden:?} (EPERM); used: {used:?}"
    );
}

#[test]
fn the_filter_is_read_in_systemds_order() {
    if !have("systemd-analyze") {
        common::skip("systemd-analyze is not installed (.ci/run installs it)");
        return;
    }
    let denied = "SystemCallFilter=@system-service\nSystemCallFilter=~@privileged @resources\n";
    let allowed = allowed_by_unit(denied);
    assert!(allowed.contains("read") && allowed.contains("clone3"));
    assert!(!allowed.contains("sched_setaffinity") && !allowed.contains("fchown"));
    let readded = allowed_by_unit(&format!("{denied}SystemCallFilter=sched_setaffinity\n"));
    assert!(readded.contains("sched_setaffinity") && !readded.contains("fchown"));
}
