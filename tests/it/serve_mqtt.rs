//! The MQTT transport end to end: a real mosquitto on a free loopback port, the built
//! binary serving the tiny reference model, and rumqttc clients playing the devices.

use std::time::{Duration, Instant};

use crate::common;
use crate::daemon::mqtt::*;
use crate::daemon::{refused_config, request, wait_for};
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde_json::json;

#[test]
fn mqtt5_replies_go_to_the_response_topic_with_the_correlation_data() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let d = start_daemon(&broker, "n1", "", "");
    let peer = Peer::v5(broker.port, "device-1");
    peer.subscribe("test/replies/#");
    peer.subscribe("bitnetd/n1/status");
    peer.status_until("online");

    let req = request("r1", "Hello there", 12);
    peer.request5("bitnetd/n1/request", &req, "test/replies/a", "corr-1");
    let (chunks, done) = peer.finish("r1");
    assert!(!chunks.is_empty());
    for m in chunks.iter().chain([&done]) {
        assert_eq!(m.topic, "test/replies/a");
        assert_eq!(m.correlation.as_deref(), Some(&b"corr-1"[..]), "{m:?}");
        assert!(m.json.get("correlation_id").is_none(), "{m:?}");
    }
    let done = check_sequence(&chunks, &done);
    let completion = done["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=12).contains(&completion), "{done}");

    // Greedy: the same answer over the socket protocol's rules, here without streaming.
    let mut again = request("r2", "Hello there", 12);
    again["stream"] = json!(false);
    peer.request5("bitnetd/n1/request", &again, "test/replies/b", "corr-2");
    let m = peer.next();
    assert_eq!(m.json["id"], "r2");
    assert_eq!(m.json["seq"], 0);
    assert_eq!(m.json["text"], done["text"]);
    assert_eq!(m.correlation.as_deref(), Some(&b"corr-2"[..]));

    // Commands work too.
    peer.request5(
        "bitnetd/n1/request",
        &json!({"cmd": "status", "id": "s"}),
        "test/replies/s",
        "c",
    );
    let m = peer.next();
    assert_eq!(m.json["status"]["requests"], 2, "{m:?}");
    assert_eq!(m.json["status"]["model"], "tiny-i2_s.gguf", "{m:?}");

    let log = d.log();
    let line = log.lines().find(|l| l.contains("request r1 via mqtt"));
    let line = line.unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("completion tokens") && line.contains("finish"),
        "{line}"
    );
}

#[test]
fn mqtt311_requests_name_reply_to_and_get_their_correlation_id_back() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let _d = start_daemon(&broker, "n311", "protocol = \"3.1.1\"", "");
    let peer = Peer::v4(broker.port, "device-311");
    peer.subscribe("bitnetd/n311/status");
    peer.status_until("online");
    peer.subscribe("dev/311/reply");

    let mut req = request("q1", "Hello there", 10);
    req["reply_to"] = json!("dev/311/reply");
    req["correlation_id"] = json!("c-9");
    peer.publish("bitnetd/n311/request", req.to_string(), Default::default());
    let (chunks, done) = peer.finish("q1");
    for m in chunks.iter().chain([&done]) {
        assert_eq!(m.topic, "dev/311/reply");
        assert_eq!(m.json["correlation_id"], "c-9", "{m:?}");
    }
    check_sequence(&chunks, &done);

    // A numeric correlation id comes back as a number; errors are echoed the same way.
    let bad = json!({"id": "q2", "prompt": 5, "reply_to": "dev/311/reply", "correlation_id": 42});
    peer.publish("bitnetd/n311/request", bad.to_string(), Default::default());
    let m = peer.next();
    assert_eq!(m.json["error"]["code"], "bad_request", "{m:?}");
    assert_eq!(m.json["id"], "q2");
    assert_eq!(m.json["correlation_id"], 42);
}

#[test]
fn two_daemons_in_a_shared_group_split_the_requests() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let group = "group = \"fleet\"";
    // Room in the queue for every request (one client, one reply topic): this test is about
    // sharing, not `busy`.
    let limits = "[limits]\nqueue_depth = 32\nmax_queued_per_client = 32\n";
    let a = start_daemon(&broker, "a", group, limits);
    let b = start_daemon(&broker, "b", group, limits);
    let peer = Peer::v5(broker.port, "fleet-client");
    peer.subscribe("bitnetd/+/status");
    let mut online = Vec::new();
    while online.len() < 2 {
        let m = peer.status_until("online");
        if !online.contains(&m.json["node"]) {
            online.push(m.json["node"].clone());
        }
    }
    peer.subscribe("fleet/replies");
    for i in 0..20 {
        let mut req = request(&format!("f{i}"), "Count with me", 2);
        req["stream"] = json!(false);
        peer.request5("bitnetd/request", &req, "fleet/replies", &format!("c{i}"));
    }
    let mut answered = std::collections::BTreeMap::new();
    while answered.len() < 20 {
        let m = peer.next();
        assert_eq!(m.json["done"], true, "{m:?}");
        let id = m.json["id"].as_str().unwrap().to_owned();
        assert_eq!(m.correlation, Some(format!("c{}", &id[1..]).into_bytes()));
        assert!(answered.insert(id, ()).is_none(), "{m:?} answered twice");
    }
    // Each daemon logs every request it served: together exactly the 20, each once.
    let (la, lb) = (a.log(), b.log());
    let served = |log: &str| log.lines().filter(|l| l.contains(" via mqtt:")).count();
    assert_eq!(served(&la) + served(&lb), 20, "{la}\n{lb}");
    assert!(served(&la) > 0 && served(&lb) > 0, "{la}\n{lb}");
    for i in 0..20 {
        let tag = format!("request f{i} via mqtt");
        assert_eq!(
            la.contains(&tag) as u8 + lb.contains(&tag) as u8,
            1,
            "{tag}"
        );
    }
}

#[test]
fn after_a_broker_restart_the_daemon_answers_what_was_published_meanwhile() {
    let Some(mut broker) = Broker::start() else {
        return;
    };
    let d = start_daemon(&broker, "n1", "", "");
    let watcher = Peer::v5(broker.side_port, "watcher");
    watcher.subscribe("bitnetd/n1/status");
    watcher.status_until("online");
    // A request is running when the broker goes down.
    watcher.subscribe("restart/first");
    watcher.request5(
        "bitnetd/n1/request",
        &long_request("first", 500),
        "restart/first",
        "x",
    );
    assert!(watcher.next().json["token"].is_string());
    broker.stop();
    d.wait_log("connection to");

    // The broker is back, but only on the side port: the daemon cannot reconnect yet.
    // A device with a persistent session asks three questions; the broker queues them
    // in the daemon's session.
    broker.run(false);
    let device = Peer::v5_session(broker.side_port, "device", Some(600));
    device.subscribe("restart/replies");
    for i in 0..3 {
        let req = request(&format!("w{i}"), "What is the weather?", 3);
        device.request5(
            "bitnetd/n1/request",
            &req,
            "restart/replies",
            &format!("c{i}"),
        );
    }
    // The queue in the broker's database: a QoS 1 publish is stored once PUBACKed, and the
    // device's next SUBACK comes after it.
    device.subscribe("restart/sync");
    drop(device);
    broker.stop();

    // Now everything is back: the daemon reconnects and answers the three.
    broker.run(true);
    let device = Peer::v5_session(broker.side_port, "device", Some(600));
    let mut answered = Vec::new();
    while answered.len() < 3 {
        let m = device.next();
        assert_eq!(m.topic, "restart/replies", "{m:?}");
        if m.json["done"] == true {
            let id = m.json["id"].as_str().unwrap().to_owned();
            let c = String::from_utf8(m.correlation.unwrap()).unwrap();
            assert_eq!(c[1..], id[1..]);
            answered.push(id);
        }
    }
    answered.sort();
    assert_eq!(answered, ["w0", "w1", "w2"]);
    let watcher = Peer::v5(broker.side_port, "watcher-2");
    watcher.subscribe("bitnetd/n1/status");
    watcher.status_until("online");
    let log = d.log();
    assert!(
        log.contains("connection to") && log.contains("lost"),
        "{log}"
    );
    let reconnects = log.matches("mqtt: connected to").count();
    assert!(reconnects >= 2, "{log}");
}

#[test]
fn the_status_is_retained_and_the_last_will_says_offline() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let mut d = start_daemon(&broker, "pi7", "status_interval_s = 1", "");
    let peer = Peer::v5(broker.port, "monitor");
    peer.subscribe("bitnetd/pi7/status");
    let online = peer.status_until("online");
    assert_eq!(online.json["node"], "pi7");
    assert_eq!(online.json["model"], "tiny-i2_s.gguf");
    for key in ["kernel", "threads", "queue_depth", "uptime_s", "requests"] {
        assert!(online.json.get(key).is_some(), "{key} in {:?}", online.json);
    }
    // The periodic refresh (every second here) counts the uptime on.
    loop {
        let m = peer.status_until("online");
        if m.json["uptime_s"].as_u64().unwrap() >= 1 {
            break;
        }
    }

    // SIGKILL: the broker publishes the last will, retained.
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let will = peer.status_until("offline");
    assert_eq!(will.json, json!({"state": "offline", "node": "pi7"}));
    let late = Peer::v5(broker.port, "late");
    late.subscribe("bitnetd/pi7/status");
    let m = late.next();
    assert!(m.retain && m.json["state"] == "offline", "{m:?}");

    // A daemon stopped with SIGTERM during a generation: the request gets a final
    // `cancelled` event, then the status says offline, and the daemon exits 0 within 5 s.
    let mut d = start_daemon(&broker, "pi7", "", "");
    peer.status_until("online");
    peer.subscribe("pi7/replies");
    peer.request5(
        "bitnetd/pi7/request",
        &long_request("long", 500),
        "pi7/replies",
        "l",
    );
    let first = peer.next();
    assert!(first.json["token"].is_string(), "{first:?}");
    d.signal("TERM");
    let (mut cancelled, mut offline) = (false, false);
    while !(cancelled && offline) {
        let m = peer.next();
        if m.topic.ends_with("/status") {
            offline |= m.json["state"] == "offline";
        } else if m.json["done"] == true {
            assert_eq!(m.json["finish_reason"], "cancelled", "{m:?}");
            cancelled = true;
        }
    }
    let status = d
        .wait_exit(Duration::from_secs(5))
        .expect("exit within 5 s");
    assert!(status.success(), "{status}");
    let log = d.log();
    assert!(log.contains("offline published, disconnected"), "{log}");
    let late = Peer::v5(broker.port, "later");
    late.subscribe("bitnetd/pi7/status");
    let m = late.next();
    assert!(m.retain && m.json["state"] == "offline", "{m:?}");
    // An orderly disconnect: the broker did not have to send the will.
    let broker_log = broker.log();
    assert!(
        broker_log.contains("Client bitnetd-pi7 disconnected."),
        "{broker_log}"
    );
}

#[test]
fn malformed_payloads_get_error_replies_while_the_daemon_keeps_serving() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let d = start_daemon(
        &broker,
        "n1",
        "",
        "[limits]\nmax_line_bytes = 1024\nmax_prompt_tokens = 64\n",
    );
    let valid = Peer::v5(broker.port, "good-device");
    valid.subscribe("good/replies");
    valid.subscribe("bitnetd/n1/status");
    valid.status_until("online");
    valid.request5(
        "bitnetd/n1/request",
        &request("ok", "A fine request", 20),
        "good/replies",
        "g",
    );

    let bad = Peer::v5(broker.port, "bad-device");
    bad.subscribe("bad/replies");
    let big = format!(r#"{{"id":"big","prompt":"{}"}}"#, "a".repeat(5000));
    let cases: Vec<(Vec<u8>, &str, Option<&str>)> = vec![
        (b"{not json".to_vec(), "bad_request", None),
        (b"[1, 2, 3]".to_vec(), "bad_request", None),
        (b"\"just a string\"".to_vec(), "bad_request", None),
        (b"".to_vec(), "bad_request", None),
        (b"{\"id\":\"\xff\xfe\"}".to_vec(), "bad_request", None),
        (
            br#"{"id":"t","prompt":42}"#.to_vec(),
            "bad_request",
            Some("t"),
        ),
        (
            br#"{"id":"u","prompt":"x","colour":1}"#.to_vec(),
            "bad_request",
            Some("u"),
        ),
        (
            br#"{"id":"m","prompt":"x","max_tokens":-1}"#.to_vec(),
            "bad_request",
            Some("m"),
        ),
        (
            br#"{"id":"rt","prompt":"x","reply_to":7}"#.to_vec(),
            "bad_request",
            Some("rt"),
        ),
        (
            br#"{"id":"ci","prompt":"x","correlation_id":{}}"#.to_vec(),
            "bad_request",
            Some("ci"),
        ),
        (
            br#"{"id":"w","prompt":"x","reply_to":"a/#"}"#.to_vec(),
            "bad_request",
            Some("w"),
        ),
        (
            br#"{"cancel":"nothing"}"#.to_vec(),
            "bad_request",
            Some("nothing"),
        ),
        (br#"{"cmd":"reboot"}"#.to_vec(), "bad_request", None),
        (big.into_bytes(), "too_long", None),
        (
            format!(r#"{{"id":"long","prompt":"{}"}}"#, "word ".repeat(150)).into_bytes(),
            "too_long",
            Some("long"),
        ),
    ];
    for (i, (payload, code, id)) in cases.iter().enumerate() {
        let props = PublishProperties {
            response_topic: Some("bad/replies".into()),
            correlation_data: Some(format!("b{i}").into_bytes().into()),
            ..Default::default()
        };
        bad.publish("bitnetd/n1/request", payload.clone(), props);
        let m = bad.next();
        let what = String::from_utf8_lossy(payload);
        assert_eq!(m.json["error"]["code"], *code, "{m:?} for {what}");
        assert!(!m.json["error"]["message"].as_str().unwrap().is_empty());
        assert_eq!(m.correlation, Some(format!("b{i}").into_bytes()), "{what}");
        if let Some(id) = id {
            assert_eq!(m.json["id"], *id, "{m:?}");
        }
    }
    // A bad request with nowhere to reply is logged.
    bad.publish("bitnetd/n1/request", "nope", Default::default());
    d.wait_log("nowhere to send");
    // A bad MQTT 3.1.1-style request is answered on its reply_to.
    let req = json!({"id": "v3", "prompt": [], "reply_to": "bad/replies"});
    bad.publish("bitnetd/n1/request", req.to_string(), Default::default());
    let m = bad.next();
    assert_eq!(m.json["id"], "v3");
    assert_eq!(m.json["error"]["code"], "bad_request");

    // The valid request completed, and the daemon still serves.
    let (chunks, done) = valid.finish("ok");
    check_sequence(&chunks, &done);
    bad.request5(
        "bitnetd/n1/request",
        &request("after", "Hi", 2),
        "bad/replies",
        "z",
    );
    let (chunks, done) = bad.finish("after");
    check_sequence(&chunks, &done);
}

#[test]
fn a_request_whose_message_expiry_passed_in_the_queue_is_answered_expired() {
    let Some(broker) = Broker::start() else {
        return;
    };
    // Room for a generation that outlasts the expiry on any machine.
    let _d = start_daemon(&broker, "n1", "", "[limits]\nmax_new_tokens = 1000\n");
    let peer = Peer::v5(broker.port, "device");
    peer.subscribe("exp/#");
    peer.subscribe("bitnetd/n1/status");
    peer.status_until("online");
    peer.request5(
        "bitnetd/n1/request",
        &long_request("long", 1000),
        "exp/long",
        "l",
    );
    assert!(peer.next().json["token"].is_string());
    let props = PublishProperties {
        response_topic: Some("exp/short".into()),
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    let published = Instant::now();
    peer.publish(
        "bitnetd/n1/request",
        request("short", "Hi", 2).to_string(),
        props,
    );
    // Keep the engine busy past the expiry, then free it.
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(published.elapsed()));
    peer.publish(
        "bitnetd/n1/request",
        json!({"cancel": "long"}).to_string(),
        PublishProperties {
            response_topic: Some("exp/long".into()),
            ..Default::default()
        },
    );
    let mut short = None;
    let mut long_done = None;
    while short.is_none() || long_done.is_none() {
        let m = peer.next();
        match m.topic.as_str() {
            "exp/short" => short = Some(m),
            _ if m.json["done"] == true => long_done = Some(m),
            _ => {}
        }
    }
    let long_done = long_done.unwrap();
    assert_eq!(
        long_done.json["finish_reason"], "cancelled",
        "{long_done:?}"
    );
    let short = short.unwrap();
    assert_eq!(short.json["id"], "short");
    assert_eq!(short.json["error"]["code"], "expired", "{short:?}");
}

#[test]
fn command_line_flags_turn_mqtt_on_and_name_the_topics() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let peer = Peer::v5(broker.port, "device");
    peer.subscribe("home/llm/kitchen/status");
    let broker_flag = format!("127.0.0.1:{}", broker.port);
    // The file names no broker: the flags alone turn MQTT on.
    let _d = start_daemon_args(
        "",
        "",
        &[
            "--mqtt",
            &broker_flag,
            "--node",
            "kitchen",
            "--base-topic",
            "home/llm",
        ],
        "as node kitchen",
    );
    peer.status_until("online");
    // The default reply prefix follows the base topic.
    peer.subscribe("home/llm/reply/kitchen");
    let req = request("k", "Hi", 2);
    peer.request5(
        "home/llm/kitchen/request",
        &req,
        "home/llm/reply/kitchen",
        "k",
    );
    let (chunks, done) = peer.finish("k");
    check_sequence(&chunks, &done);
}

#[test]
fn tls_with_a_client_certificate() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    // Distinct names: OpenSSL takes a certificate whose subject is its issuer's for a root.
    let params = |name: &str, san: Vec<String>| {
        let mut p = CertificateParams::new(san).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p
    };
    let mut ca_params = params("bitnetd test CA", vec![]);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let params = params(name, vec![name.to_string()]);
        (
            params.signed_by(&key, &ca).unwrap().pem(),
            key.serialize_pem(),
        )
    };
    let (server_cert, server_key) = leaf("127.0.0.1");
    let (client_cert, client_key) = leaf("bitnetd");

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let Some(mut broker) = Broker::new() else {
        return;
    };
    broker.main_options = format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true",
        broker.file("ca.pem", &ca.pem()),
        broker.file("server.pem", &server_cert),
        broker.file("server.key", &server_key),
    );
    broker.run(true);

    // The devices use the plain side listener; the daemon must get through TLS.
    let peer = Peer::v5(broker.side_port, "device");
    peer.subscribe("bitnetd/secure/status");
    let tls = format!(
        "tls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}",
        write("ca.pem", &ca.pem()),
        write("client.pem", &client_cert),
        write("client.key", &client_key),
    );
    let d = start_daemon(&broker, "secure", &tls, "");
    d.wait_log("mqtt: connected to");
    peer.status_until("online");
    peer.subscribe("secure/replies");
    peer.request5(
        "bitnetd/secure/request",
        &request("s", "Hi", 2),
        "secure/replies",
        "s",
    );
    let (chunks, done) = peer.finish("s");
    check_sequence(&chunks, &done);

    // Without a client certificate the broker refuses the daemon, which keeps retrying.
    let tls = format!("tls_ca = {:?}", write("ca.pem", &ca.pem()));
    let d = start_daemon(&broker, "nocert", &tls, "");
    wait_for("the refused connection", || {
        d.log().contains("cannot connect")
    });
    assert!(!d.log().contains("mqtt: connected to"), "{}", d.log());
}

#[test]
fn bad_mqtt_settings_stop_the_daemon_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |mqtt: &str| {
        let model = common::reference("tiny-i2_s.gguf");
        let config = format!(
            "model = {:?}\n[socket]\npath = {:?}\n[mqtt]\nhost = \"127.0.0.1\"\n{mqtt}\n",
            model.display().to_string(),
            dir.path().join("s.sock").display().to_string()
        );
        refused_config(dir.path(), &config)
    };
    let err = serve("username = \"u\"\npassword_file = \"/nonexistent/pw\"");
    assert!(err.contains("mqtt.password_file"), "{err}");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let err = serve(&format!("tls_ca = {:?}", not_pem.display().to_string()));
    assert!(err.contains("mqtt.tls_ca"), "{err}");
    let err = serve("qos = 5");
    assert!(err.contains("mqtt.qos"), "{err}");
    let err = serve("brokr = \"x\"");
    assert!(err.contains("brokr"), "{err}");
}
