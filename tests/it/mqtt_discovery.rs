//! Home Assistant MQTT discovery end to end: a real mosquitto, the built daemon, and rumqttc
//! clients reading the retained discovery topics as Home Assistant would.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common;
use crate::daemon::mqtt::*;
use crate::daemon::{self, Daemon, PATIENCE, refused_config};
use crate::power::{Tree, cpu};

/// The daemon's minimum gap between two announcements (`discovery::ANNOUNCE_GAP`).
const ANNOUNCE_GAP: Duration = Duration::from_secs(5);

/// A two-core board with a SoC thermal zone at 50 °C, so that the power module reports.
fn board() -> Tree {
    let t = Tree::empty();
    t.cpus(&[cpu(Some(1024), 2_400_000, 0), cpu(Some(1024), 2_400_000, 0)]);
    t.zone(0, "cpu-thermal", 50_000, &[]);
    t.throttled("0\n");
    t
}

/// A daemon as `node` on the fake board, with `mqtt` added to its `[mqtt]` table.
fn start(broker: &Broker, tree: &Tree, node: &str, mqtt: &str) -> Daemon {
    let table = format!(
        "host = \"127.0.0.1\"\nport = {}\nnode = {node:?}\nreconnect_max_s = 1\n{mqtt}",
        broker.port
    );
    let args = [
        "--sysfs-root",
        tree.root().to_str().unwrap(),
        "--power",
        "balanced",
        "--threads",
        "2",
    ];
    start_daemon_args(&table, "", &args, &format!("as node {node}"))
}

/// The last message per topic, read until `done` holds for them.
fn read_until(
    peer: &Peer,
    seen: &mut BTreeMap<String, Msg>,
    done: impl Fn(&BTreeMap<String, Msg>) -> bool,
) {
    while !done(seen) {
        let m = peer.next();
        seen.insert(m.topic.clone(), m);
    }
}

fn configs(seen: &BTreeMap<String, Msg>) -> Vec<&Msg> {
    seen.values()
        .filter(|m| m.topic.ends_with("/config") && !m.json.is_null())
        .collect()
}

/// The state key a value template reads (`{{ value_json.KEY ... }}`).
fn template_key(template: &str) -> &str {
    let at = template
        .find("value_json.")
        .expect("a template reading value_json")
        + 11;
    let rest = &template[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// The topics a fresh subscriber gets retained under `filter` within `wait`.
fn retained(broker: &Broker, id: &str, filter: &str, wait: Duration) -> Vec<Msg> {
    let peer = Peer::v5(broker.port, id);
    peer.subscribe(filter);
    peer.drain(wait)
}

#[test]
fn one_device_with_sensors_whose_templates_read_the_state_topic() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let tree = board();
    let peer = Peer::v5(broker.port, "ha-1");
    peer.subscribe("homeassistant/#");
    peer.subscribe("bitnetd/ha1/#");
    let d = start(&broker, &tree, "ha1", "");

    let mut seen = BTreeMap::new();
    read_until(&peer, &mut seen, |s| {
        configs(s).len() == 8
            && s.get("bitnetd/ha1/state")
                .is_some_and(|m| m.json["temperature_c"] == 50.0)
            && s.get("bitnetd/ha1/status")
                .is_some_and(|m| m.json["state"] == "online")
    });
    let state = seen["bitnetd/ha1/state"].json.clone();
    let status = seen["bitnetd/ha1/status"].json.clone();
    let configs = configs(&seen);

    let mut unique_ids = std::collections::HashSet::new();
    let device = configs[0].json["device"].clone();
    assert_eq!(device["identifiers"], serde_json::json!(["bitnetd_ha1"]));
    assert_eq!(device["manufacturer"], "bitnetd");
    assert_eq!(device["model"], "tiny-i2_s.gguf");
    assert_eq!(device["sw_version"], env!("CARGO_PKG_VERSION"));
    for m in &configs {
        let c = &m.json;
        let (component, key) = {
            let parts: Vec<&str> = m.topic.split('/').collect();
            assert_eq!(parts.len(), 5, "{}", m.topic);
            assert_eq!(parts[0], "homeassistant");
            assert_eq!(parts[2], "bitnetd_ha1");
            (parts[1], parts[3])
        };
        assert!(
            ["sensor", "binary_sensor"].contains(&component),
            "{}",
            m.topic
        );
        assert!(
            unique_ids.insert(c["unique_id"].as_str().unwrap().to_owned()),
            "{c}"
        );
        assert_eq!(c["unique_id"], format!("bitnetd_ha1_{key}"), "{c}");
        assert_eq!(
            c["default_entity_id"],
            format!("{component}.bitnetd_ha1_{key}"),
            "{c}"
        );
        assert!(c["name"].as_str().is_some_and(|n| !n.is_empty()), "{c}");
        assert_eq!(c["device"], device, "one device for every entity");
        assert_eq!(c["origin"]["name"], "bitnetd");
        assert_eq!(c["state_topic"], "bitnetd/ha1/state", "{c}");
        let template = c["value_template"].as_str().unwrap();
        let read = template_key(template);
        assert_eq!(read, key, "{template}");
        assert!(state.get(read).is_some(), "{read} not in the state {state}");
        // Availability: the retained status, whose "state" is what the template reads.
        let a = &c["availability"][0];
        assert_eq!(a["topic"], "bitnetd/ha1/status");
        assert_eq!(template_key(a["value_template"].as_str().unwrap()), "state");
        assert_eq!(a["payload_available"], status["state"]);
        assert_eq!(a["payload_not_available"], "offline");
    }
    let by_key = |key: &str| {
        configs
            .iter()
            .find(|m| m.topic.contains(&format!("/{key}/")))
            .map(|m| m.json.clone())
            .unwrap_or_else(|| panic!("no config for {key}"))
    };
    let t = by_key("temperature_c");
    assert_eq!(
        (
            &t["device_class"],
            &t["unit_of_measurement"],
            &t["state_class"]
        ),
        (&"temperature".into(), &"°C".into(), &"measurement".into())
    );
    let model_state = by_key("model_state");
    let busy = by_key("busy");
    assert_eq!(busy["device_class"], "running");
    assert_eq!(
        (&busy["payload_on"], &busy["payload_off"]),
        (&"ON".into(), &"OFF".into())
    );
    assert_eq!(by_key("requests")["state_class"], "total_increasing");
    assert_eq!(by_key("tokens_per_s")["unit_of_measurement"], "tokens/s");
    assert_eq!(state["power_policy"], "balanced", "{state}");
    assert!(
        state["decode_threads"]
            .as_u64()
            .is_some_and(|n| (1..=2).contains(&n)),
        "{state}"
    );
    assert_eq!(
        (&state["requests"], &state["busy"]),
        (&0.into(), &false.into())
    );

    // Retained: Home Assistant starting later finds them all.
    let later = retained(
        &broker,
        "ha-late",
        "homeassistant/#",
        Duration::from_secs(1),
    );
    assert_eq!(later.len(), 8, "{later:?}");
    assert!(later.iter().all(|m| m.retain), "{later:?}");

    // A request moves the state.
    let mut client = d.connect();
    client.send(&daemon::request("r1", "Hello there", 8));
    client.finish("r1");
    read_until(&peer, &mut seen, |s| {
        s["bitnetd/ha1/state"].json["requests"] == 1
    });
    let state = &seen["bitnetd/ha1/state"].json;
    assert!(state["tokens_per_s"].as_f64().unwrap() > 0.0, "{state}");
    assert_eq!(state["model_state"], "ready");
    assert!(
        model_state["options"]
            .as_array()
            .unwrap()
            .contains(&state["model_state"])
    );

    // At shutdown the status says what payload_not_available says.
    d.sigterm();
    read_until(&peer, &mut seen, |s| {
        s["bitnetd/ha1/status"].json["state"] == "offline"
    });
}

#[test]
fn home_assistant_coming_online_gets_the_configs_again_at_a_bounded_rate() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let tree = board();
    let peer = Peer::v5(broker.port, "ha-2-listener");
    peer.subscribe("homeassistant/+/+/+/config");
    let ha = Peer::v5(broker.port, "ha-2");
    let d = start(&broker, &tree, "ha2", "");
    let mut seen = BTreeMap::new();
    read_until(&peer, &mut seen, |s| configs(s).len() == 8);
    let count = |msgs: &[Msg]| {
        msgs.iter()
            .filter(|m| m.topic.ends_with("/busy/config"))
            .count()
    };

    // Past the gap: other payloads are no birth.
    peer.drain(ANNOUNCE_GAP + Duration::from_secs(1));
    ha.publish("homeassistant/status", "offline", Default::default());
    ha.publish("homeassistant/status", "{\"online\":1}", Default::default());
    ha.publish("homeassistant/status", "online ", Default::default());
    let quiet = peer.drain(Duration::from_secs(4));
    assert_eq!(count(&quiet), 0, "{quiet:?}");

    // "online" (Home Assistant's birth message) brings every config again at once.
    let asked = Instant::now();
    ha.publish("homeassistant/status", "online", Default::default());
    let mut again = BTreeMap::new();
    read_until(&peer, &mut again, |s| configs(s).len() == 8);
    assert!(
        asked.elapsed() < ANNOUNCE_GAP - Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    for (topic, m) in &again {
        assert_eq!(m.json, seen[topic].json, "the same config");
    }

    // A flapping Home Assistant: 100 births in a burst, one announcement per gap at most.
    let window = Instant::now();
    for _ in 0..100 {
        ha.publish("homeassistant/status", "online", Default::default());
    }
    let flood = peer.drain(2 * ANNOUNCE_GAP + Duration::from_secs(2));
    let windows = window.elapsed().as_secs_f64() / ANNOUNCE_GAP.as_secs_f64();
    let n = count(&flood);
    assert!(n >= 1, "the burst's births are folded, not lost");
    assert!(
        n as f64 <= windows.ceil(),
        "{n} announcements in {windows:.1} gaps"
    );
    println!(
        "100 births in a burst: {n} announcements over {:.1} s",
        window.elapsed().as_secs_f64()
    );
    // At connect, once more when the power module first reported, the birth, the burst.
    let announced = d
        .log()
        .matches("Home Assistant discovery: announced")
        .count();
    assert!(announced <= 3 + n, "{}", d.log());
}

#[test]
fn an_mqtt311_daemon_announces_and_answers_the_birth_too() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let tree = board();
    let peer = Peer::v4(broker.port, "ha-311-listener");
    peer.subscribe("homeassistant/+/+/+/config");
    let _d = start(&broker, &tree, "ha311", "protocol = \"3.1.1\"");
    let mut seen = BTreeMap::new();
    read_until(&peer, &mut seen, |s| configs(s).len() == 8);
    peer.drain(ANNOUNCE_GAP + Duration::from_secs(1));
    peer.publish("homeassistant/status", "online", Default::default());
    let mut again = BTreeMap::new();
    read_until(&peer, &mut again, |s| configs(s).len() == 8);
    assert!(
        again.values().all(|m| !m.retain),
        "live publishes to a live subscriber"
    );
}

#[test]
fn remove_publishes_empty_retained_configs_and_clears_the_state() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let tree = board();
    let peer = Peer::v5(broker.port, "ha-3");
    peer.subscribe("homeassistant/#");
    peer.subscribe("bitnetd/ha3/state");
    let mut d = start(&broker, &tree, "ha3", "");
    let mut seen = BTreeMap::new();
    read_until(&peer, &mut seen, |s| {
        configs(s).len() == 8 && s.contains_key("bitnetd/ha3/state")
    });
    let announced: Vec<String> = configs(&seen).iter().map(|m| m.topic.clone()).collect();
    d.sigterm();
    assert!(d.wait_exit(PATIENCE).is_some());
    drop(d);

    let d = start(&broker, &tree, "ha3", "discovery = \"remove\"");
    read_until(&peer, &mut seen, |s| {
        announced.iter().all(|t| s[t].json.is_null()) && s["bitnetd/ha3/state"].json.is_null()
    });
    d.wait_log("published empty retained configs");
    let left = retained(
        &broker,
        "ha-3-late",
        "homeassistant/#",
        Duration::from_secs(2),
    );
    assert!(left.is_empty(), "retained after removal: {left:?}");
    let left = retained(
        &broker,
        "ha-3-state",
        "bitnetd/ha3/state",
        Duration::from_secs(1),
    );
    assert!(left.is_empty(), "{left:?}");
    // Removal does not listen to Home Assistant's births.
    peer.publish("homeassistant/status", "online", Default::default());
    let (birth, after): (Vec<Msg>, Vec<Msg>) = peer
        .drain(Duration::from_secs(3))
        .into_iter()
        .partition(|m| m.topic == "homeassistant/status");
    assert_eq!(birth.len(), 1, "the listener saw the birth: {birth:?}");
    assert!(after.is_empty(), "{after:?}");
    assert!(!d.log().contains("homeassistant/status"), "{}", d.log());

    // Off after on: the session's old subscription to the birth topic is dropped, so that
    // Home Assistant's "online" does not reach the daemon as a request.
    drop(d);
    let d = start(&broker, &tree, "ha3", "discovery = false");
    peer.publish("homeassistant/status", "online", Default::default());
    let (birth, after): (Vec<Msg>, Vec<Msg>) = peer
        .drain(Duration::from_secs(3))
        .into_iter()
        .partition(|m| m.topic == "homeassistant/status");
    assert_eq!(birth.len(), 1, "{birth:?}");
    assert!(after.is_empty(), "{after:?}");
    assert!(!d.log().contains("homeassistant/status"), "{}", d.log());
}

#[test]
fn discovery_off_publishes_nothing_under_the_prefix() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let tree = board();
    let peer = Peer::v5(broker.port, "ha-4");
    peer.subscribe("homeassistant/#");
    peer.subscribe("ha/#");
    peer.subscribe("bitnetd/+/state");
    peer.subscribe("bitnetd/+/status");
    let _off = start(&broker, &tree, "off1", "discovery = false");
    let _empty = start(&broker, &tree, "off2", "discovery_prefix = \"\"");
    // A third, on, proves that the listener would have seen something.
    let _on = start(&broker, &tree, "on3", "discovery_prefix = \"ha\"");
    peer.publish("homeassistant/status", "online", Default::default());
    let got = peer.drain(Duration::from_secs(6));
    let under = |prefix: &str| got.iter().filter(|m| m.topic.starts_with(prefix)).count();
    assert_eq!(
        under("homeassistant/"),
        1,
        "only the test's own birth: {got:?}"
    );
    assert_eq!(
        under("bitnetd/off1/state") + under("bitnetd/off2/state"),
        0,
        "{got:?}"
    );
    for node in ["off1", "off2", "on3"] {
        assert!(
            under(&format!("bitnetd/{node}/status")) > 0,
            "{node} is up: {got:?}"
        );
    }
    assert!(under("ha/sensor/bitnetd_on3/") >= 1, "{got:?}");
    assert!(under("bitnetd/on3/state") >= 1, "{got:?}");
}

#[test]
fn hostile_discovery_prefixes_are_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::reference("tiny-i2_s.gguf");
    let serve = |mqtt: &str| {
        let config = format!(
            "model = {:?}\n[socket]\npath = {:?}\n[mqtt]\nhost = \"127.0.0.1\"\nnode = \"n\"\n{mqtt}\n",
            model.display().to_string(),
            dir.path().join("s.sock").display().to_string()
        );
        refused_config(dir.path(), &config)
    };
    for prefix in [
        "ha/#",
        "ha/+/x",
        "#",
        "$SYS",
        "ha//x",
        "/ha",
        "ha/",
        "h\\u0000a",
        "h\\u0001a",
        "h\\u007fa",
        "h\\ufffea",
    ] {
        let err = serve(&format!("discovery_prefix = \"{prefix}\""));
        assert!(err.contains("mqtt.discovery_prefix"), "{prefix}: {err}");
    }
    // Fine as a topic, too long with the rest of a config topic.
    let err = serve("max_topic_bytes = 40\ndiscovery_prefix = \"homeassistant/a/long/prefix\"");
    assert!(err.contains("mqtt.discovery_prefix"), "{err}");
    assert!(err.contains("the limit is 40"), "{err}");
    let err = serve("discovery = \"yes\"");
    assert!(err.contains("mqtt.discovery"), "{err}");
}
