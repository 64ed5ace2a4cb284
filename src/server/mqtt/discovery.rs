//! Home Assistant MQTT discovery: the node appears in Home Assistant as one device with a
//! few sensors and a busy binary sensor, without any YAML.
//!
//! ```text
//! <prefix>/sensor/bitnetd_<node>/<key>/config         retained entity configs
//! <prefix>/binary_sensor/bitnetd_<node>/busy/config
//! <base>/<node>/state                                  retained values, on change (≤ 1 per 2 s)
//! <base>/<node>/status                                 availability (the existing status)
//! <prefix>/status                                      Home Assistant's birth: "online"
//! ```
//!
//! Configs go out at every connect and again when Home Assistant says `online` on
//! `<prefix>/status` (it has restarted and lost them unless retained), at most once per
//! [`ANNOUNCE_GAP`]; triggers in between fold into one announcement at its end. The state
//! topic carries only what the entities read, so that it changes only when they do.
//! `discovery = "remove"` publishes empty retained configs instead, Home Assistant's signal to
//! remove the entities, and clears the state topic.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::Shared;
use super::link::{Client, Message};
use super::topic;
use crate::config::MqttConfig;
use crate::server::protocol::Status;

/// Announcements are at least this far apart, so that a Home Assistant (or anyone) repeating
/// `online` on the birth topic cannot make the daemon flood the broker.
pub const ANNOUNCE_GAP: Duration = Duration::from_secs(5);
/// How often the state is compared with what was published last.
pub const STATE_EVERY: Duration = Duration::from_secs(2);

/// `[mqtt] discovery`: `true` (default), `false`, or `"remove"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiscoveryMode {
    /// Announce the entities and keep their state topic current.
    #[default]
    On,
    /// Publish nothing under the discovery prefix.
    Off,
    /// Publish empty retained configs at each connect: Home Assistant removes the entities.
    Remove,
}

impl FromStr for DiscoveryMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "true" | "on" => Ok(DiscoveryMode::On),
            "false" | "off" => Ok(DiscoveryMode::Off),
            "remove" => Ok(DiscoveryMode::Remove),
            other => Err(format!(
                "mqtt.discovery is {other:?}: it must be true, false or \"remove\""
            )),
        }
    }
}

impl fmt::Display for DiscoveryMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiscoveryMode::On => "true",
            DiscoveryMode::Off => "false",
            DiscoveryMode::Remove => "remove",
        })
    }
}

impl<'de> serde::Deserialize<'de> for DiscoveryMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// TOML gives a boolean or a string.
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Word(String),
        }
        match Raw::deserialize(d) {
            Ok(Raw::Flag(true)) => Ok(DiscoveryMode::On),
            Ok(Raw::Flag(false)) => Ok(DiscoveryMode::Off),
            Ok(Raw::Word(w)) => w.parse().map_err(serde::de::Error::custom),
            Err(_) => Err(serde::de::Error::custom(
                "mqtt.discovery must be true, false or \"remove\"",
            )),
        }
    }
}

/// Home Assistant's entity platforms used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Component {
    Sensor,
    BinarySensor,
}

impl Component {
    fn as_str(self) -> &'static str {
        match self {
            Component::Sensor => "sensor",
            Component::BinarySensor => "binary_sensor",
        }
    }
}

/// When an entity exists: some values only come from the power module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Nothing,
    Power,
    Temperature,
}

/// One entity: its key in the state JSON is `key`.
struct Entity {
    component: Component,
    key: &'static str,
    name: &'static str,
    value_template: &'static str,
    unit: Option<&'static str>,
    device_class: Option<&'static str>,
    state_class: Option<&'static str>,
    /// "diagnostic" for what describes the daemon rather than its work.
    category: Option<&'static str>,
    icon: Option<&'static str>,
    needs: Needs,
}

const MODEL_STATES: [&str; 3] = ["loading", "no_model", "ready"];

/// Every entity the daemon may announce (and removes).
const ENTITIES: [Entity; 8] = [
    Entity {
        component: Component::Sensor,
        key: "tokens_per_s",
        name: "Tokens per second",
        value_template: "{{ value_json.tokens_per_s }}",
        unit: Some("tokens/s"),
        device_class: None,
        state_class: Some("measurement"),
        category: None,
        icon: Some("mdi:speedometer"),
        needs: Needs::Nothing,
    },
    Entity {
        component: Component::Sensor,
        key: "queue_depth",
        name: "Queue depth",
        value_template: "{{ value_json.queue_depth }}",
        unit: None,
        device_class: None,
        state_class: Some("measurement"),
        category: None,
        icon: Some("mdi:tray-full"),
        needs: Needs::Nothing,
    },
    Entity {
        component: Component::Sensor,
        key: "requests",
        name: "Requests served",
        value_template: "{{ value_json.requests }}",
        unit: None,
        device_class: None,
        // Counts up from 0 at each start: Home Assistant takes a drop as a reset.
        state_class: Some("total_increasing"),
        category: None,
        icon: Some("mdi:counter"),
        needs: Needs::Nothing,
    },
    Entity {
        component: Component::Sensor,
        key: "model_state",
        name: "Model state",
        value_template: "{{ value_json.model_state }}",
        unit: None,
        device_class: Some("enum"),
        state_class: None,
        category: Some("diagnostic"),
        icon: Some("mdi:brain"),
        needs: Needs::Nothing,
    },
    Entity {
        component: Component::Sensor,
        key: "temperature_c",
        name: "SoC temperature",
        value_template: "{{ value_json.temperature_c }}",
        unit: Some("°C"),
        device_class: Some("temperature"),
        state_class: Some("measurement"),
        category: None,
        icon: None,
        needs: Needs::Temperature,
    },
    Entity {
        component: Component::Sensor,
        key: "power_policy",
        name: "Power policy",
        value_template: "{{ value_json.power_policy }}",
        unit: None,
        device_class: None,
        state_class: None,
        category: Some("diagnostic"),
        icon: Some("mdi:leaf"),
        needs: Needs::Power,
    },
    Entity {
        component: Component::Sensor,
        key: "decode_threads",
        name: "Decode threads",
        value_template: "{{ value_json.decode_threads }}",
        unit: None,
        device_class: None,
        state_class: Some("measurement"),
        category: Some("diagnostic"),
        icon: Some("mdi:cpu-64-bit"),
        needs: Needs::Power,
    },
    Entity {
        component: Component::BinarySensor,
        key: "busy",
        name: "Busy",
        value_template: "{{ 'ON' if value_json.busy else 'OFF' }}",
        unit: None,
        device_class: Some("running"),
        state_class: None,
        category: None,
        icon: None,
        needs: Needs::Nothing,
    },
];

/// The retained payload of the state topic: exactly what the entities read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeState {
    model_state: &'static str,
    busy: bool,
    queue_depth: usize,
    requests: u64,
    tokens_per_s: f64,
    /// Absent (null) without a thermal zone: Home Assistant shows "unknown".
    temperature_c: Option<f64>,
    power_policy: Option<String>,
    decode_threads: Option<usize>,
}

impl NodeState {
    pub fn of(status: &Status) -> NodeState {
        let power = status.power.as_ref().map(|p| &p.power);
        NodeState {
            model_state: status.model_state,
            busy: status.busy,
            queue_depth: status.queue_depth,
            requests: status.requests,
            // Two decimals: noise in the last digits is no change worth a publish.
            tokens_per_s: (status.tokens_per_s * 100.0).round() / 100.0,
            temperature_c: power
                .and_then(|p| p.temperature_c)
                .map(|t| (t * 10.0).round() / 10.0),
            power_policy: power.map(|p| p.policy.to_string()),
            decode_threads: power.map(|p| p.decode_threads),
        }
    }
}

/// What an announcement depends on: when it changes, configs go out again. Entities only
/// join within a run (a value that disappears reads null, not a removed entity).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Announced {
    model: String,
    power: bool,
    temperature: bool,
}

impl Announced {
    /// What to announce now, given what was announced before.
    fn wanted(&self, status: &Status) -> Announced {
        let power = status.power.as_ref().map(|p| &p.power);
        let model = match status.model.as_str() {
            "" if !self.model.is_empty() => self.model.clone(),
            "" => "no model".into(),
            m => m.into(),
        };
        Announced {
            model,
            power: self.power || power.is_some(),
            temperature: self.temperature || power.is_some_and(|p| p.temperature_c.is_some()),
        }
    }

    fn includes(&self, e: &Entity) -> bool {
        match e.needs {
            Needs::Nothing => true,
            Needs::Power => self.power,
            Needs::Temperature => self.temperature,
        }
    }
}

/// The discovery side of the transport, shared by the poller and the two tasks.
pub struct Discovery {
    mode: DiscoveryMode,
    prefix: String,
    /// `bitnetd_<node>` with every character Home Assistant refuses in ids as `_`.
    node_id: String,
    node: String,
    state_topic: String,
    /// Availability: the retained status topic.
    status_topic: String,
    /// Where Home Assistant says `online` after it starts.
    birth_topic: String,
    qos: u8,
    announce: Notify,
    announced: Mutex<Announced>,
    /// Set at each connect: the next state tick publishes even without a change.
    state_stale: AtomicBool,
}

impl Discovery {
    /// `None` when discovery is off (`discovery = false` or an empty prefix). Every topic is
    /// checked now, so that a bad prefix stops the daemon at start with the key named.
    pub fn new(
        m: &MqttConfig,
        node: &str,
        status_topic: &str,
    ) -> anyhow::Result<Option<Discovery>> {
        if m.discovery == DiscoveryMode::Off || m.discovery_prefix.is_empty() {
            return Ok(None);
        }
        let d = Discovery {
            mode: m.discovery,
            prefix: m.discovery_prefix.clone(),
            node_id: format!("bitnetd_{}", id_chars(node)),
            node: node.into(),
            state_topic: format!("{}/{node}/state", m.base_topic),
            status_topic: status_topic.into(),
            birth_topic: format!("{}/status", m.discovery_prefix),
            qos: m.qos,
            announce: Notify::new(),
            announced: Mutex::default(),
            state_stale: AtomicBool::new(true),
        };
        for t in d.own_topics() {
            topic::check_name(&t, m.max_topic_bytes).with_context(|| {
                format!("mqtt.discovery_prefix and mqtt.node make the topic {t:?}")
            })?;
        }
        Ok(Some(d))
    }

    /// Every topic discovery publishes to: replies must never go there.
    pub fn own_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = ENTITIES.iter().map(|e| self.config_topic(e)).collect();
        topics.push(self.state_topic.clone());
        topics.push(self.birth_topic.clone());
        topics
    }

    /// The birth topic to subscribe, when Home Assistant's restarts matter.
    pub fn filter(&self) -> Option<String> {
        (self.mode == DiscoveryMode::On).then(|| self.birth_topic.clone())
    }

    /// Whether a message is Home Assistant's birth message rather than a request.
    pub fn is_birth(&self, m: &Message) -> bool {
        m.topic == self.birth_topic
    }

    /// Home Assistant published on its status topic: `online` (not a retained copy, which
    /// says nothing new) asks for the configs again; anything else is ignored.
    pub fn on_birth(&self, m: &Message) {
        if self.mode == DiscoveryMode::On && !m.retain && m.payload.as_ref() == b"online" {
            log::debug!("mqtt: Home Assistant is online: announcing again");
            self.announce.notify_one();
        }
    }

    /// After each connect: the configs (or their removal) and a fresh state.
    pub fn connected(&self) {
        self.state_stale.store(true, Ordering::Relaxed);
        self.announce.notify_one();
    }

    fn config_topic(&self, e: &Entity) -> String {
        format!(
            "{}/{}/{}/{}/config",
            self.prefix,
            e.component.as_str(),
            self.node_id,
            e.key
        )
    }

    /// One entity's discovery payload.
    fn config(&self, e: &Entity, a: &Announced) -> Value {
        let object_id = format!("{}_{}", self.node_id, e.key);
        let mut c = json!({
            "name": e.name,
            "unique_id": object_id,
            "default_entity_id": format!("{}.{}", e.component.as_str(), object_id.to_ascii_lowercase().replace('-', "_")),
            "state_topic": self.state_topic,
            "value_template": e.value_template,
            "availability": [{
                "topic": self.status_topic,
                "value_template": "{{ value_json.state }}",
                "payload_available": "online",
                "payload_not_available": "offline",
            }],
            "device": {
                "identifiers": [self.node_id],
                "name": format!("bitnetd {}", self.node),
                "manufacturer": "bitnetd",
                "model": a.model,
                "sw_version": env!("CARGO_PKG_VERSION"),
            },
            "origin": {
                "name": "bitnetd",
                "sw_version": env!("CARGO_PKG_VERSION"),
            },
            "qos": self.qos,
        });
        let fields = [
            ("unit_of_measurement", e.unit),
            ("device_class", e.device_class),
            ("state_class", e.state_class),
            ("entity_category", e.category),
            ("icon", e.icon),
        ];
        for (field, value) in fields {
            if let Some(v) = value {
                c[field] = json!(v);
            }
        }
        match e.component {
            Component::BinarySensor => {
                c["payload_on"] = json!("ON");
                c["payload_off"] = json!("OFF");
            }
            Component::Sensor if e.device_class == Some("enum") => {
                c["options"] = json!(MODEL_STATES);
            }
            Component::Sensor => {}
        }
        c
    }

    /// The retained configs (or, in remove mode, their empty replacements) to publish now.
    fn announcement(&self, status: &Status) -> Vec<(String, Vec<u8>)> {
        if self.mode == DiscoveryMode::Remove {
            let mut empty: Vec<_> = ENTITIES
                .iter()
                .map(|e| (self.config_topic(e), Vec::new()))
                .collect();
            empty.push((self.state_topic.clone(), Vec::new()));
            return empty;
        }
        let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        *announced = announced.wanted(status);
        ENTITIES
            .iter()
            .filter(|e| announced.includes(e))
            .map(|e| {
                (
                    self.config_topic(e),
                    self.config(e, &announced).to_string().into_bytes(),
                )
            })
            .collect()
    }

    /// Whether the entities to announce differ from the ones announced (the power module
    /// reported for the first time, the model's name became known).
    fn outdated(&self, status: &Status) -> bool {
        let announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        announced.wanted(status) != *announced
    }
}

/// The birth topic when discovery is not on: a session kept from a run with discovery on
/// still holds its subscription, and its `online` would otherwise reach the dispatcher.
pub fn stale_filters(m: &MqttConfig) -> Vec<String> {
    if m.discovery == DiscoveryMode::On || m.discovery_prefix.is_empty() {
        return Vec::new();
    }
    vec![format!("{}/status", m.discovery_prefix)]
}

/// The characters Home Assistant accepts in a discovery topic's node id: others become `_`.
fn id_chars(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' => c,
            _ => '_',
        })
        .collect()
}

/// The announcer and the state publisher; aborted at shutdown.
pub struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    pub fn abort(&self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

pub fn spawn(client: Client, shared: Arc<Shared>) -> Option<Tasks> {
    let d = shared.discovery.as_ref()?;
    let mut tasks = vec![tokio::spawn(announce(client.clone(), shared.clone()))];
    if d.mode == DiscoveryMode::On {
        tasks.push(tokio::spawn(publish_state(client, shared.clone())));
    }
    Some(Tasks(tasks))
}

/// Publishes the configs whenever asked, at most once per [`ANNOUNCE_GAP`].
async fn announce(client: Client, shared: Arc<Shared>) {
    let Some(d) = shared.discovery.as_ref() else {
        return;
    };
    loop {
        d.announce.notified().await;
        if !shared.state.is_connected() {
            continue; // the next connect asks again
        }
        let status = shared.status();
        let messages = d.announcement(&status);
        let n = messages.len();
        for (topic, payload) in messages {
            if client.publish(&topic, payload, true, None).await.is_err() {
                return;
            }
        }
        match d.mode {
            DiscoveryMode::Remove => log::info!(
                "mqtt: Home Assistant discovery: published empty retained configs for {} \
                 entities under {}/+/{} (removal) and cleared {}",
                n - 1,
                d.prefix,
                d.node_id,
                d.state_topic
            ),
            _ => log::info!(
                "mqtt: Home Assistant discovery: announced {n} entities under {}/+/{}/",
                d.prefix,
                d.node_id
            ),
        }
        d.state_stale.store(true, Ordering::Relaxed);
        tokio::time::sleep(ANNOUNCE_GAP).await;
    }
}

/// Every [`STATE_EVERY`]: publishes the state when it changed (or after a connect), and asks
/// for a new announcement when new entities appeared.
async fn publish_state(client: Client, shared: Arc<Shared>) {
    let Some(d) = shared.discovery.as_ref() else {
        return;
    };
    let mut last: Option<NodeState> = None;
    let mut tick = tokio::time::interval(STATE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !shared.state.is_connected() {
            continue;
        }
        let status = shared.status();
        if d.outdated(&status) {
            d.announce.notify_one();
        }
        let state = NodeState::of(&status);
        let stale = d.state_stale.swap(false, Ordering::Relaxed);
        if !stale && last.as_ref() == Some(&state) {
            continue;
        }
        let payload = serde_json::to_vec(&state).expect("the state always serializes");
        if client
            .publish(&d.state_topic, payload, true, None)
            .await
            .is_err()
        {
            return;
        }
        last = Some(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Status {
        Status {
            queue_depth: 1,
            busy: true,
            tokens_per_s: 12.3456,
            ..crate::server::protocol::event::example_status()
        }
    }

    fn discovery(text: &str) -> Option<Discovery> {
        let config = crate::config::Config::parse(text, std::path::Path::new("t.toml")).unwrap();
        Discovery::new(&config.mqtt, "pi.1", "bitnetd/pi.1/status").unwrap()
    }

    #[test]
    fn the_mode_reads_booleans_and_remove() {
        assert!(discovery("[mqtt]\n").is_some());
        assert!(discovery("[mqtt]\ndiscovery = false\n").is_none());
        assert!(discovery("[mqtt]\ndiscovery_prefix = \"\"\n").is_none());
        let d = discovery("[mqtt]\ndiscovery = \"remove\"\n").unwrap();
        assert_eq!(d.mode, DiscoveryMode::Remove);
        assert_eq!(
            d.filter(),
            None,
            "removal does not listen for Home Assistant"
        );
        assert!("maybe".parse::<DiscoveryMode>().is_err());
    }

    #[test]
    fn configs_follow_home_assistants_conventions() {
        let d = discovery("[mqtt]\n").unwrap();
        assert_eq!(d.node_id, "bitnetd_pi_1", "'.' is no id character");
        assert_eq!(d.filter().as_deref(), Some("homeassistant/status"));
        let messages = d.announcement(&status());
        let keys: Vec<&str> = ENTITIES
            .iter()
            .filter(|e| e.needs == Needs::Nothing)
            .map(|e| e.key)
            .collect();
        assert_eq!(
            messages.len(),
            keys.len(),
            "no power module, no power sensors"
        );
        let state = serde_json::to_value(NodeState::of(&status())).unwrap();
        for ((topic, payload), key) in messages.iter().zip(keys) {
            let c: Value = serde_json::from_slice(payload).unwrap();
            assert!(topic.starts_with("homeassistant/"), "{topic}");
            assert!(
                topic.ends_with(&format!("/bitnetd_pi_1/{key}/config")),
                "{topic}"
            );
            assert_eq!(c["unique_id"], format!("bitnetd_pi_1_{key}"));
            assert_eq!(c["state_topic"], "bitnetd/pi.1/state");
            assert_eq!(c["device"]["identifiers"], json!(["bitnetd_pi_1"]));
            assert_eq!(c["device"]["model"], "m.gguf");
            assert_eq!(c["availability"][0]["topic"], "bitnetd/pi.1/status");
            assert!(state.get(key).is_some(), "{key} in {state}");
        }
        assert_eq!(state["tokens_per_s"], 12.35);
    }

    #[test]
    fn removal_empties_every_config_and_the_state() {
        let d = discovery("[mqtt]\ndiscovery = \"remove\"\n").unwrap();
        let messages = d.announcement(&status());
        assert_eq!(messages.len(), ENTITIES.len() + 1);
        assert!(messages.iter().all(|(_, p)| p.is_empty()));
        assert_eq!(messages.last().unwrap().0, "bitnetd/pi.1/state");
    }

    fn with_power(temperature_c: Option<f64>) -> Status {
        use crate::power::daemon::{PowerReport, PowerStatus};
        let mut s = status();
        s.power = Some(Box::new(PowerReport {
            power: PowerStatus {
                policy: crate::power::Policy::Fixed(3),
                temperature_c,
                throttled: None,
                decode_threads: 3,
                prefill_threads: 4,
                cores: vec![0, 1, 2, 3],
                clock_khz: None,
                prefill_clock_khz: None,
                reason: String::new(),
                on_battery: None,
                battery_percent: None,
            },
            joules_per_token: None,
            joules_per_token_source: None,
        }));
        s
    }

    #[test]
    fn power_values_join_the_state_and_their_entities_the_announcement() {
        let d = discovery("[mqtt]\n").unwrap();
        assert_eq!(d.announcement(&status()).len(), 5);
        assert!(!d.outdated(&status()));
        let no_zone = with_power(None);
        assert!(
            d.outdated(&no_zone),
            "the power module reported: announce again"
        );
        let keys = |m: &[(String, Vec<u8>)]| -> Vec<String> {
            m.iter()
                .map(|(t, _)| t.split('/').nth(3).unwrap().to_owned())
                .collect()
        };
        let k = keys(&d.announcement(&no_zone));
        assert!(k.contains(&"power_policy".into()) && k.contains(&"decode_threads".into()));
        assert!(
            !k.contains(&"temperature_c".into()),
            "no thermal zone, no temperature"
        );
        let hot = with_power(Some(71.26));
        assert!(d.outdated(&hot));
        assert_eq!(d.announcement(&hot).len(), 8);
        assert!(!d.outdated(&no_zone), "entities stay once announced");
        let state = serde_json::to_value(NodeState::of(&hot)).unwrap();
        assert_eq!(state["temperature_c"], 71.3);
        assert_eq!(state["power_policy"], "fixed:3");
        assert_eq!(state["decode_threads"], 3);
        let state = serde_json::to_value(NodeState::of(&no_zone)).unwrap();
        assert!(state["temperature_c"].is_null(), "{state}");
    }

    #[test]
    fn entities_only_join() {
        let a = Announced::default().wanted(&status());
        assert!(!a.power && !a.temperature);
        let mut s = status();
        s.model = String::new();
        assert_eq!(a.wanted(&s).model, "m.gguf", "a known name stays");
        assert_eq!(Announced::default().wanted(&s).model, "no model");
    }
}
