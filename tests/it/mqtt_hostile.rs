//! MQTT clients that attack or misuse the daemon, against a real mosquitto on loopback and
//! the built binary: reply topics the broker refuses or the daemon must not write to,
//! retained requests, oversize packets, floods, wrong credentials, node names. Each attack
//! must leave the daemon connected (no broker disconnects) and serving.
//!
//! The MQTT payloads and topics of these attacks are also the seeds of the `mqtt_payload`
//! fuzz target (fuzz/seeds/mqtt_payload), which the last tests replay.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use crate::daemon::mqtt::*;
use crate::daemon::{Daemon, PATIENCE, wait_for};
use bitnetd::config::Config;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde_json::{Value, json};

const SEEDS: &str = "fuzz/seeds/mqtt_payload";

/// Reply topics that must get no publish: the broker would refuse the first ones (and
/// drop the daemon's connection), the rest are valid topics the daemon must not write to.
const HOSTILE_TOPICS: [&str; 17] = [
    "bitnetd/reply/a\u{1}",
    "bitnetd/reply/a\u{1f}",
    "bitnetd/reply/a\u{7f}",
    "bitnetd/reply/a\u{85}",
    "bitnetd/reply/a\u{9f}",
    "bitnetd/reply/a\u{fffe}",
    "bitnetd/reply/a\u{ffff}",
    "bitnetd/reply/a\u{fdd0}",
    "bitnetd/reply/a\u{0}",
    "bitnetd/reply/+",
    "bitnetd/reply/#",
    "$SYS/broker/x",
    "",
    "home/garage/door/set",
    "bitnetd/replyx/y",
    "bitnetd/reply",
    "bitnetd/h5/request",
];

/// The `mqtt` object of a daemon's status, asked over its socket.
fn mqtt_status(d: &Daemon) -> Value {
    d.status()["mqtt"].clone()
}

fn health(d: &Daemon) -> String {
    let mut c = d.connect();
    c.send(&json!({"cmd": "health"}));
    c.event()["health"].as_str().unwrap().to_owned()
}

/// Times mosquitto logged that `client` connected.
fn broker_connects(broker: &Broker, client: &str) -> usize {
    broker
        .log()
        .lines()
        .filter(|l| l.contains("New client connected") && l.contains(&format!(" as {client} ")))
        .count()
}

/// Sends `id` to `node` with a permitted reply topic and waits for its final reply: the
/// daemon handles messages in order, so everything sent before it has been handled.
fn sentinel(peer: &Peer, node: &str, id: &str, v5: bool) -> Msg {
    let reply = format!("bitnetd/reply/{id}");
    peer.subscribe(&reply);
    let mut req = json!({"id": id, "prompt": "Hi", "max_tokens": 1, "stream": false});
    if v5 {
        peer.request5(&format!("bitnetd/{node}/request"), &req, &reply, id);
    } else {
        req["reply_to"] = json!(reply);
        peer.publish(
            &format!("bitnetd/{node}/request"),
            req.to_string(),
            Default::default(),
        );
    }
    loop {
        let m = peer.next();
        if m.topic == reply {
            assert_eq!(m.json["done"], true, "{m:?}");
            return m;
        }
    }
}

#[test]
fn hostile_reply_topics_get_no_publish_and_never_cost_the_connection() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let prefixes = r#"reply_prefixes = ["bitnetd/reply/"]"#;
    let d311 = start_daemon(
        &broker,
        "h311",
        &format!("protocol = \"3.1.1\"\n{prefixes}"),
        "",
    );
    let d5 = start_daemon(&broker, "h5", prefixes, "");
    // Sees every topic but the broker's own: a reply on a forbidden topic would show here.
    let spy = Peer::v5(broker.side_port, "spy");
    spy.subscribe("#");
    spy.status_until("online");

    // reply_to (both protocols) with every hostile topic, and an id that tries to forge
    // a log line.
    let attacker = Peer::v4(broker.side_port, "attacker-311");
    for node in ["h311", "h5"] {
        for (i, t) in HOSTILE_TOPICS.iter().enumerate() {
            let req = json!({"id": format!("t{i}"), "prompt": "Hi", "max_tokens": 1,
                             "reply_to": t});
            attacker.publish(
                &format!("bitnetd/{node}/request"),
                req.to_string(),
                Default::default(),
            );
        }
        let forged = json!({"id": "x\nFORGED mqtt: connected", "prompt": "Hi",
                            "reply_to": "home/garage/door/set"});
        attacker.publish(
            &format!("bitnetd/{node}/request"),
            forged.to_string(),
            Default::default(),
        );
    }
    sentinel(&attacker, "h311", "after-311", false);
    sentinel(&attacker, "h5", "after-5", false);

    // MQTT 5 response topics: each from its own connection, since the broker may close
    // the connection of a client that sends a topic it refuses.
    let mut refused_by_broker = Vec::new();
    for (i, t) in HOSTILE_TOPICS.iter().enumerate() {
        let a = Peer::v5(broker.side_port, &format!("attacker-5-{i}"));
        let props = PublishProperties {
            response_topic: Some(t.to_string()),
            ..Default::default()
        };
        let req = json!({"id": format!("r{i}"), "prompt": "Hi", "max_tokens": 1});
        a.publish("bitnetd/h5/request", req.to_string(), props);
        if !a.try_subscribe("sync/x", Duration::from_secs(10)) {
            refused_by_broker.push(format!("{t:?}"));
        }
    }
    let checker = Peer::v5(broker.side_port, "checker");
    sentinel(&checker, "h5", "after-rt", true);

    // Nothing went anywhere but the permitted replies, the requests, the statuses and the
    // Home Assistant discovery configs and state.
    let allowed = |t: &str| {
        t.starts_with("bitnetd/reply/after-")
            || t.ends_with("/request")
            || t.ends_with("/status")
            || (t.starts_with("homeassistant/") && t.ends_with("/config"))
            || t.ends_with("/state")
            || t == "sync/x"
    };
    let seen = spy.drain(Duration::from_millis(500));
    for m in &seen {
        assert!(allowed(&m.topic), "a publish on {:?}: {m:?}", m.topic);
    }
    // Zero disconnects: each daemon connected to the broker once and is still connected.
    let (l311, l5) = (d311.log(), d5.log());
    for (d, log, client) in [(&d311, &l311, "bitnetd-h311"), (&d5, &l5, "bitnetd-h5")] {
        assert_eq!(broker_connects(&broker, client), 1, "{}", broker.log());
        assert!(!log.contains("lost"), "{log}");
        let s = mqtt_status(d);
        assert_eq!(s["connected"], true, "{s}");
        assert_eq!(s["reconnects"], 0, "{s}");
        assert!(s["last_error"].is_null(), "{s}");
        assert_eq!(health(d), "ok");
        // Each refusal was logged, escaped: the forged line is not a line of its own.
        assert!(!log.lines().any(|l| l.starts_with("FORGED")), "{log}");
        assert!(log.contains(r#"x\nFORGED"#), "{log}");
        for needle in [
            "U+0001", "U+007F", "U+0085", "U+FFFE", "U+FDD0", "U+0000", "wildcard",
        ] {
            assert!(log.contains(needle), "{needle} not in {log}");
        }
        assert!(
            log.contains(r#"asks for replies on "home/garage/door/set": the topic is not under"#),
            "{log}"
        );
        assert!(
            log.contains("topics starting with $ belong to the broker"),
            "{log}"
        );
    }
    assert!(l5.contains("one of the daemon's own topics"), "{l5}");
    println!(
        "broker disconnects of the daemons under the topic attack: {}; MQTT 5 response \
         topics the broker itself refused (never reached the daemon): {refused_by_broker:?}",
        broker_connects(&broker, "bitnetd-h311") + broker_connects(&broker, "bitnetd-h5") - 2
    );
}

#[test]
fn retained_requests_are_never_executed_before_start_or_across_a_restart() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let publisher = Peer::v4(broker.side_port, "retainer");
    for (node, reply) in [
        ("r311", "bitnetd/reply/ret311"),
        ("r5", "bitnetd/reply/ret5"),
    ] {
        let req = json!({"id": "ret", "prompt": "Hi", "max_tokens": 1, "reply_to": reply});
        publisher.publish_retain(
            &format!("bitnetd/{node}/request"),
            req.to_string(),
            Default::default(),
            true,
        );
    }
    assert!(publisher.try_subscribe("sync/r", Duration::from_secs(10)));
    let watcher = Peer::v5(broker.side_port, "watcher");
    watcher.subscribe("bitnetd/reply/#");

    for round in 0..2 {
        let mut d311 = start_daemon(&broker, "r311", "protocol = \"3.1.1\"", "");
        let mut d5 = start_daemon(&broker, "r5", "", "");
        sentinel(&watcher, "r311", &format!("s311-{round}"), false);
        sentinel(&watcher, "r5", &format!("s5-{round}"), true);
        let late = watcher.drain(Duration::from_millis(300));
        for m in &late {
            assert!(!m.topic.contains("/ret"), "a retained request ran: {m:?}");
        }
        // 3.1.1 cannot ask the broker to hold retained messages back: the daemon drops it.
        d311.wait_log("ignored a retained message on \"bitnetd/r311/request\"");
        // MQTT 5 asked the broker not to send them at all.
        assert!(!d5.log().contains("retained message"), "{}", d5.log());
        for d in [&mut d311, &mut d5] {
            d.sigterm();
            assert!(d.wait_exit(Duration::from_secs(10)).is_some());
        }
    }
}

/// Peak and current resident set of a process, in kB (VmHWM, VmRSS).
fn memory_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// `mosquitto_pub` on the side port with `args`.
fn mosquitto_pub(broker: &Broker, args: &[&str]) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.side_port.to_string()])
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("mosquitto_pub (apt-get install mosquitto-clients)");
    assert!(status.success(), "mosquitto_pub {args:?}");
}

#[test]
fn an_oversize_311_payload_is_refused_without_the_memory_it_asks_for() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let d = start_daemon(&broker, "big", "protocol = \"3.1.1\"", "");
    let watcher = Peer::v5(broker.side_port, "watcher-big");
    watcher.subscribe("bitnetd/big/status");
    watcher.status_until("online");
    let (peak_before, rss_before) = memory_kb(d.child.id());

    // 100 MB at QoS 1: the broker keeps it in the daemon's session until acknowledged.
    let file = broker.dir.path().join("big.json");
    let mut payload = br#"{"id":"big","prompt":""#.to_vec();
    payload.resize(100 << 20, b'a');
    payload.extend_from_slice(br#"","reply_to":"bitnetd/reply/big"}"#);
    std::fs::write(&file, &payload).unwrap();
    drop(payload);
    mosquitto_pub(
        &broker,
        &[
            "-V",
            "mqttv311",
            "-q",
            "1",
            "-t",
            "bitnetd/big/request",
            "-f",
            &file.display().to_string(),
        ],
    );
    d.wait_log("above limits.max_line_bytes");
    // Back, in a new session without the oversize message, and serving.
    wait_for("the daemon to reconnect", || {
        d.log().matches("mqtt: connected to").count() >= 2
    });
    sentinel(&watcher, "big", "after-big", false);
    // It stays connected: the broker does not send the message again.
    std::thread::sleep(Duration::from_secs(2));
    let log = d.log();
    assert_eq!(
        log.matches("above limits.max_line_bytes").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("mqtt: connected to").count(), 2, "{log}");
    let s = mqtt_status(&d);
    assert_eq!(
        (s["connected"].clone(), s["reconnects"].clone()),
        (json!(true), json!(1))
    );
    let (peak_after, rss_after) = memory_kb(d.child.id());
    println!(
        "100 MB MQTT 3.1.1 payload: daemon peak RSS {peak_before} -> {peak_after} kB, \
         RSS {rss_before} -> {rss_after} kB"
    );
    // The payload is never read: the peak grows by far less than its 100 MB.
    assert!(
        peak_after < peak_before + 16 * 1024,
        "peak RSS {peak_before} -> {peak_after} kB"
    );
}

#[test]
fn a_flood_of_qos0_messages_keeps_memory_bounded() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let d = start_daemon(&broker, "flood", "", "");
    let watcher = Peer::v5(broker.side_port, "watcher-flood");
    watcher.subscribe("bitnetd/flood/status");
    watcher.status_until("online");
    // Warm: one request through the whole path.
    sentinel(&watcher, "flood", "warm", true);
    let (_, rss_before) = memory_kb(d.child.id());

    // 100k messages, one per line: valid requests (mostly refused busy), bad JSON and
    // requests without a permitted reply topic.
    let lines: String = (0..100_000)
        .map(|i| match i % 4 {
            0 => {
                format!(
                    r#"{{"id":"f{i}","prompt":"Hi","max_tokens":1,"reply_to":"bitnetd/reply/f"}}"#
                ) + "\n"
            }
            1 => format!(r#"{{"id":"f{i}","prompt":"Hi","reply_to":"elsewhere/x"}}"#) + "\n",
            2 => "{not json\n".to_string(),
            _ => format!(r#"{{"cmd":"status","id":"s{i}","reply_to":"bitnetd/reply/f"}}"#) + "\n",
        })
        .collect();
    let file = broker.dir.path().join("flood.txt");
    std::fs::write(&file, lines).unwrap();
    let started = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "mosquitto_pub -h 127.0.0.1 -p {} -q 0 -t bitnetd/flood/request -l < {}",
            broker.side_port,
            file.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let sent_s = started.elapsed().as_secs_f64();
    // The daemon digests what it took, then answers again.
    let mut peak_rss = 0;
    let answered = loop {
        peak_rss = peak_rss.max(memory_kb(d.child.id()).1);
        let mut c = d.connect();
        c.send(&json!({"cmd": "status"}));
        let s = c.event()["status"].clone();
        if s["queue_depth"] == 0 && !s["busy"].as_bool().unwrap() {
            break s;
        }
        assert!(started.elapsed() < PATIENCE, "{s}");
        std::thread::sleep(Duration::from_millis(200));
    };
    sentinel(&watcher, "flood", "after-flood", true);
    std::thread::sleep(Duration::from_secs(1));
    let (peak, rss_after) = memory_kb(d.child.id());
    let dropped = answered["mqtt"]["dropped_messages"].as_u64().unwrap();
    println!(
        "100k QoS 0 messages (published in {sent_s:.1} s): daemon RSS {rss_before} kB before, \
         {peak_rss} kB highest sampled, {rss_after} kB after (VmHWM {peak} kB); {dropped} \
         dropped by the bounded channel"
    );
    assert_eq!(answered["mqtt"]["connected"], true, "{answered}");
    assert!(
        rss_after < rss_before + 24 * 1024,
        "RSS {rss_before} -> {rss_after} kB"
    );
}

#[test]
fn a_qos1_burst_is_held_back_by_acks_and_nothing_is_dropped() {
    let Some(mut broker) = Broker::new() else {
        return;
    };
    // The watcher gets all 2000 replies: mosquitto would drop what passes 1000 queued for it.
    broker.global_options = "allow_anonymous true\nmax_queued_messages 0".into();
    broker.run(true);
    let d = start_daemon(&broker, "q1", "", "");
    let watcher = Peer::v5(broker.side_port, "watcher-q1");
    watcher.subscribe("bitnetd/q1/status");
    watcher.status_until("online");
    watcher.subscribe("bitnetd/reply/q1");
    // Far more than the broker's in-flight window: the daemon acknowledges each once handled,
    // so the broker sends the rest as room frees up (mosquitto 2.0.11 overshoots the window
    // during such a burst: the channel has room for that).
    const N: usize = 2000;
    let lines: String = (0..N)
        .map(|i| format!(r#"{{"cmd":"status","id":"s{i}","reply_to":"bitnetd/reply/q1"}}"#) + "\n")
        .collect();
    let file = broker.dir.path().join("burst.txt");
    std::fs::write(&file, lines).unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "mosquitto_pub -h 127.0.0.1 -p {} -q 1 -t bitnetd/q1/request -l < {}",
            broker.side_port,
            file.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let mut seen = std::collections::HashSet::new();
    let started = Instant::now();
    while seen.len() < N {
        assert!(
            started.elapsed() < PATIENCE,
            "{} of {N} answered; {}",
            seen.len(),
            d.log()
        );
        for m in watcher.drain(Duration::from_millis(200)) {
            if m.topic == "bitnetd/reply/q1" {
                assert!(m.json["status"].is_object(), "{m:?}");
                seen.insert(m.json["id"].as_str().unwrap().to_owned());
            }
        }
    }
    let s = mqtt_status(&d);
    assert_eq!(s["dropped_messages"], 0, "{s}");
    assert_eq!(s["reconnects"], 0, "{s}");
}

#[test]
fn wrong_broker_credentials_show_in_status_and_health() {
    let Some(mut broker) = Broker::new() else {
        return;
    };
    let passwords = broker.dir.path().join("passwd");
    let made = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["bitnetd", "right-password"])
        .status()
        .expect("mosquitto_passwd");
    assert!(made.success());
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&passwords, PermissionsExt::from_mode(0o644)).unwrap();
    }
    broker.global_options = format!(
        "allow_anonymous false\npassword_file {}",
        passwords.display()
    );
    broker.run(true);

    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("wrong"), "wrong-password\n").unwrap();
    std::fs::write(secrets.path().join("right"), "right-password\n").unwrap();
    let credentials_dir = secrets.path().display().to_string();
    let env = [("CREDENTIALS_DIRECTORY", credentials_dir.as_str())];

    // Relative password files are read from systemd's credentials directory.
    let wrong = start_daemon_env(
        &broker,
        "wrong",
        "username = \"bitnetd\"\npassword_file = \"wrong\"",
        "",
        &env,
    );
    wait_for("the refusal in status", || {
        mqtt_status(&wrong)["last_error"].is_string()
    });
    let s = mqtt_status(&wrong);
    assert_eq!(s["connected"], false, "{s}");
    let error = s["last_error"].as_str().unwrap();
    assert!(
        error.contains("NotAuthorized") || error.contains("refused"),
        "{s}"
    );
    assert!(s["down_since"].as_u64().unwrap() > 1_700_000_000, "{s}");
    assert_eq!(health(&wrong), "mqtt_down");
    wrong.wait_log("cannot connect to");
    // The password went to loopback: no warning about clear text.
    assert!(!wrong.log().contains("without TLS"), "{}", wrong.log());

    let right = start_daemon_env(
        &broker,
        "right",
        "username = \"bitnetd\"\npassword_file = \"right\"",
        "",
        &env,
    );
    wait_for("the connection", || {
        mqtt_status(&right)["connected"] == true
    });
    assert_eq!(health(&right), "ok");
    let s = mqtt_status(&right);
    assert!(
        s["last_error"].is_null() && s.get("down_since").is_none(),
        "{s}"
    );

    // Still failing after several attempts, and still visible; the log stays short.
    std::thread::sleep(Duration::from_secs(3));
    let s = mqtt_status(&wrong);
    assert_eq!(s["connected"], false, "{s}");
    assert!(s["down_for_s"].as_u64().unwrap() >= 3, "{s}");
    let failures = wrong.log().matches("cannot connect to").count();
    assert_eq!(failures, 1, "rate-limited: {}", wrong.log());
}

#[test]
fn the_node_name_is_the_host_name_and_generic_names_are_refused() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let host = host_name();
    if [
        "localhost",
        "localhost.localdomain",
        "(none)",
        "raspberrypi",
        "debian",
        "bitnetd",
    ]
    .contains(&host.as_str())
    {
        common::skip(&format!(
            "node name from the host name: this machine is called {host:?}"
        ));
        return;
    }
    let peer = Peer::v5(broker.side_port, "node-watch");
    peer.subscribe(&format!("bitnetd/{host}/status"));
    let mqtt = format!(
        "host = \"127.0.0.1\"\nport = {}\nreconnect_max_s = 1",
        broker.port
    );
    let d = start_daemon_args(&mqtt, "", &[], &format!("as node {host}"));
    let m = peer.status_until("online");
    assert_eq!(m.json["node"], host.as_str());
    drop(d);

    // A board still called "localhost" (or "raspberrypi"...) would share its client id
    // with its siblings: refused unless mqtt.node names it. A UTS namespace gives the
    // daemon that host name without touching this machine's.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "model = {:?}\n[socket]\npath = {:?}\n[mqtt]\n{mqtt}\n",
            common::reference("tiny-i2_s.gguf").display().to_string(),
            dir.path().join("s.sock").display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new("unshare")
        .args([
            "--uts",
            "sh",
            "-c",
            "hostname localhost && exec \"$0\" serve --config \"$1\"",
        ])
        .arg(env!("CARGO_BIN_EXE_bitnetd"))
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("unshare failed") || stderr.contains("Operation not permitted") {
        common::skip(&format!(
            "generic host name: no UTS namespace here ({stderr})"
        ));
        return;
    }
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("mqtt.node") && stderr.contains("\"localhost\""),
        "{stderr}"
    );
}

/// This machine's host name, as `hostname` (gethostname(2)) gives it.
fn host_name() -> String {
    let out = Command::new("hostname").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Replays the fuzz seeds through the MQTT parser and topic checks on stable: no panic,
/// and what the envelope lets through is a topic a broker accepts.
#[test]
fn fuzz_seeds_parse_without_panic() {
    let files = crate::common::files_in(SEEDS);
    assert!(files.len() >= 20, "seed corpus missing from {SEEDS}");
    let config = Config::default();
    for path in &files {
        let data = std::fs::read(path).unwrap();
        let result =
            std::panic::catch_unwind(|| bitnetd::server::mqtt::wire::fuzz_one(&data, &config));
        assert!(result.is_ok(), "{} panicked", path.display());
    }
}

/// Writes the seed corpus: the payloads of these attacks, with a reply topic line first.
/// Run with `cargo test --release --test it mqtt_hostile::write_fuzz_seeds -- --ignored`.
#[test]
#[ignore = "rewrites fuzz/seeds; run by hand"]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(SEEDS);
    std::fs::create_dir_all(dir).unwrap();
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, t) in HOSTILE_TOPICS.iter().enumerate() {
        let req = json!({"id": format!("t{i}"), "prompt": "Hi", "reply_to": t});
        seeds.push((
            format!("reply_to_{i:02}"),
            format!("{t}\n{req}").into_bytes(),
        ));
    }
    let more: [(&str, &[u8]); 8] = [
        (
            "valid",
            br#"bitnetd/reply/a
{"id":"a","prompt":"Hi","reply_to":"bitnetd/reply/a","correlation_id":7}"#,
        ),
        (
            "cmd",
            b"bitnetd/reply/s\n{\"cmd\":\"status\",\"reply_to\":\"bitnetd/reply/s\"}",
        ),
        (
            "cancel",
            b"x\n{\"cancel\":\"a\",\"reply_to\":\"bitnetd/reply/a\"}",
        ),
        ("no_newline", b"{\"id\":\"a\"}"),
        ("bad_utf8_topic", b"bitnetd/\xff\n{}"),
        (
            "bad_corr",
            b"t\n{\"id\":\"a\",\"prompt\":\"x\",\"correlation_id\":[1]}",
        ),
        (
            "forged_id",
            b"t\n{\"id\":\"x\\nFORGED\",\"prompt\":\"x\",\"reply_to\":\"a/b\"}",
        ),
        (
            "reply_to_number",
            b"t\n{\"id\":\"a\",\"prompt\":\"x\",\"reply_to\":5}",
        ),
    ];
    seeds.extend(more.iter().map(|(n, b)| (n.to_string(), b.to_vec())));
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
