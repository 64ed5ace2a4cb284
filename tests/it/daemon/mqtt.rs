//! The MQTT test harness: a real mosquitto on free loopback ports, the built daemon as an
//! MQTT client, and rumqttc clients playing the devices.

use std::io::Read;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use crate::common::skip;
use crate::daemon::{Daemon, PATIENCE, free_port, request, signal, wait_for};
use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, PublishProperties};
use serde_json::Value;

/// Debian's mosquitto, started by the tests (not as a service).
const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A mosquitto with persistence in its own directory, killed on drop.
pub struct Broker {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    /// Where the daemons connect.
    pub port: u16,
    /// Options of the main listener (TLS), set before it runs.
    pub main_options: String,
    /// Options for every listener, set before it runs; empty: anonymous clients allowed.
    pub global_options: String,
    /// A second listener for the tests' own clients, up while `port` may be down.
    pub side_port: u16,
}

impl Broker {
    /// A running broker; None, with the skip reported, where mosquitto is not installed.
    pub fn start() -> Option<Broker> {
        let mut b = Broker::new()?;
        b.run(true);
        Some(b)
    }

    /// The directory and ports, with mosquitto not started yet; None as for [`Broker::start`].
    pub fn new() -> Option<Broker> {
        use std::os::unix::fs::PermissionsExt;
        if !std::path::Path::new(MOSQUITTO).exists() {
            skip("mosquitto is not installed (.ci/run installs it)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // Run as root, mosquitto drops to its own user, which must write the database.
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&data, PermissionsExt::from_mode(0o777)).unwrap();
        Some(Broker {
            dir,
            child: None,
            port: free_port(),
            main_options: String::new(),
            global_options: String::new(),
            side_port: free_port(),
        })
    }

    /// Starts mosquitto on the side port, and on the main port when `main` is true.
    pub fn run(&mut self, main: bool) {
        let global = match self.global_options.as_str() {
            "" => "allow_anonymous true",
            options => options,
        };
        let mut config = format!(
            "{global}\npersistence true\npersistence_location {}/\n\
             listener {} 127.0.0.1\n",
            self.dir.path().join("data").display(),
            self.side_port
        );
        if main {
            config += &format!("listener {} 127.0.0.1\n{}\n", self.port, self.main_options);
        }
        let path = self.dir.path().join("mosquitto.conf");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("log"))
            .unwrap();
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto (apt-get install mosquitto)");
        self.child = Some(child);
        let ports = if main {
            vec![self.side_port, self.port]
        } else {
            vec![self.side_port]
        };
        for port in ports {
            wait_for("mosquitto to listen", || {
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
        }
    }

    /// Writes a file the broker (running as its own user) can read.
    pub fn file(&self, name: &str, text: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, PermissionsExt::from_mode(0o644)).unwrap();
        path.display().to_string()
    }

    /// What mosquitto logged so far.
    pub fn log(&self) -> String {
        let mut log = String::new();
        std::fs::File::open(self.dir.path().join("log"))
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        log
    }

    /// Stops mosquitto with SIGTERM, which makes it save its database.
    pub fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        signal(child.id(), "TERM");
        child.wait().unwrap();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The reply topics of the tests in serve_mqtt.rs (unless a test sets its own).
const TEST_REPLY_PREFIXES: &str = r#"reply_prefixes = ["test/replies", "dev/311", "fleet", "restart", "pi7", "good", "bad", "exp", "secure", "bitnetd/reply/"]"#;

/// Starts a daemon as `node`; `mqtt` adds keys to `[mqtt]`, `extra` appends tables.
pub fn start_daemon(broker: &Broker, node: &str, mqtt: &str, extra: &str) -> Daemon {
    start_daemon_env(broker, node, mqtt, extra, &[])
}

/// As [`start_daemon`], with extra environment variables.
pub fn start_daemon_env(
    broker: &Broker,
    node: &str,
    mqtt: &str,
    extra: &str,
    env: &[(&str, &str)],
) -> Daemon {
    let prefixes = match mqtt.contains("reply_prefixes") {
        true => "",
        false => TEST_REPLY_PREFIXES,
    };
    let mqtt = format!(
        "host = \"127.0.0.1\"\nport = {}\nnode = {node:?}\nreconnect_max_s = 1\n{prefixes}\n{mqtt}",
        broker.port
    );
    let d = Daemon::launch(&format!("[mqtt]\n{mqtt}\n{extra}"), &[], env);
    assert!(d.ready.contains(&format!("as node {node}")), "{}", d.ready);
    d
}

/// Starts a daemon with `mqtt` as its `[mqtt]` table and `args` after `serve`; waits for
/// READY=1 with `ready` in its status.
pub fn start_daemon_args(mqtt: &str, extra: &str, args: &[&str], ready: &str) -> Daemon {
    let d = Daemon::launch(&format!("[mqtt]\n{mqtt}\n{extra}"), args, &[]);
    assert!(d.ready.contains(ready), "{}", d.ready);
    d
}

/// A message a test client received.
#[derive(Debug)]
pub struct Msg {
    pub topic: String,
    pub json: Value,
    pub correlation: Option<Vec<u8>>,
    pub retain: bool,
}

pub enum Got {
    Subscribed,
    Msg(Msg),
}

pub enum Handle {
    V5(rumqttc::v5::Client),
    V4(rumqttc::Client),
}

/// A device: an MQTT client whose connection runs on its own thread.
pub struct Peer {
    pub handle: Handle,
    pub rx: Receiver<Got>,
}

impl Peer {
    pub fn v5(port: u16, id: &str) -> Peer {
        Self::v5_session(port, id, None)
    }

    /// An MQTT 5 client; with `session_expiry`, its session outlives the connection.
    pub fn v5_session(port: u16, id: &str, session_expiry: Option<u32>) -> Peer {
        use rumqttc::v5::{Client, Event, MqttOptions};
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_max_packet_size(Some(1 << 20));
        if session_expiry.is_some() {
            o.set_clean_start(false)
                .set_session_expiry_interval(session_expiry);
        }
        let (client, mut connection) = Client::new(o, 64);
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for event in connection.iter() {
                let got = match event {
                    Ok(Event::Incoming(Packet5::Publish(p))) => Got::Msg(Msg {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        json: json_of(&p.payload),
                        correlation: p
                            .properties
                            .and_then(|p| p.correlation_data.map(|c| c.to_vec())),
                        retain: p.retain,
                    }),
                    Ok(Event::Incoming(Packet5::SubAck(_))) => Got::Subscribed,
                    Ok(_) => continue,
                    Err(_) => return,
                };
                if tx.send(got).is_err() {
                    return;
                }
            }
        });
        Peer {
            handle: Handle::V5(client),
            rx,
        }
    }

    pub fn v4(port: u16, id: &str) -> Peer {
        use rumqttc::{Client, Event, MqttOptions, Packet};
        let (client, mut connection) = Client::new(MqttOptions::new(id, "127.0.0.1", port), 64);
        let (tx, rx): (Sender<Got>, _) = channel();
        std::thread::spawn(move || {
            for event in connection.iter() {
                let got = match event {
                    Ok(Event::Incoming(Packet::Publish(p))) => Got::Msg(Msg {
                        topic: p.topic.clone(),
                        json: json_of(&p.payload),
                        correlation: None,
                        retain: p.retain,
                    }),
                    Ok(Event::Incoming(Packet::SubAck(_))) => Got::Subscribed,
                    Ok(_) => continue,
                    Err(_) => return,
                };
                if tx.send(got).is_err() {
                    return;
                }
            }
        });
        Peer {
            handle: Handle::V4(client),
            rx,
        }
    }

    /// Subscribes at QoS 1 and waits for the broker's SUBACK.
    pub fn subscribe(&self, filter: &str) {
        match &self.handle {
            Handle::V5(c) => c
                .subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                .unwrap(),
            Handle::V4(c) => c.subscribe(filter, rumqttc::QoS::AtLeastOnce).unwrap(),
        }
        loop {
            if let Got::Subscribed = self.got() {
                return;
            }
        }
    }

    pub fn got(&self) -> Got {
        self.rx
            .recv_timeout(PATIENCE)
            .expect("a message from the broker in time")
    }

    /// The next message (SUBACKs are skipped).
    pub fn next(&self) -> Msg {
        loop {
            if let Got::Msg(m) = self.got() {
                return m;
            }
        }
    }

    /// Publishes at QoS 1; MQTT 5 properties are ignored by 3.1.1 peers.
    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>, props: PublishProperties) {
        self.publish_retain(topic, payload, props, false);
    }

    /// Publishes at QoS 1 with the retain flag as given.
    pub fn publish_retain(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        props: PublishProperties,
        retain: bool,
    ) {
        let payload = payload.into();
        match &self.handle {
            Handle::V5(c) => c
                .publish_with_properties(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    retain,
                    payload,
                    props,
                )
                .unwrap(),
            Handle::V4(c) => c
                .publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload)
                .unwrap(),
        }
    }

    /// Subscribes and waits up to `limit` for the SUBACK: false when the broker closed the
    /// connection instead (the broker handles a client's packets in order, so a SUBACK
    /// also says that every earlier publish was taken).
    pub fn try_subscribe(&self, filter: &str, limit: Duration) -> bool {
        let sent = match &self.handle {
            Handle::V5(c) => c
                .subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                .is_ok(),
            Handle::V4(c) => c.subscribe(filter, rumqttc::QoS::AtLeastOnce).is_ok(),
        };
        if !sent {
            return false;
        }
        let until = Instant::now() + limit;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Got::Subscribed) => return true,
                Ok(Got::Msg(_)) => {}
                Err(_) => return false,
            }
        }
    }

    /// Every message that arrives within `wait`.
    pub fn drain(&self, wait: Duration) -> Vec<Msg> {
        let until = Instant::now() + wait;
        let mut got = Vec::new();
        while let Ok(g) = self
            .rx
            .recv_timeout(until.saturating_duration_since(Instant::now()))
        {
            if let Got::Msg(m) = g {
                got.push(m);
            }
        }
        got
    }

    /// Publishes a request that names its reply topic with MQTT 5 properties.
    pub fn request5(&self, topic: &str, request: &Value, reply: &str, correlation: &str) {
        let props = PublishProperties {
            response_topic: Some(reply.into()),
            correlation_data: Some(correlation.as_bytes().to_vec().into()),
            ..Default::default()
        };
        self.publish(topic, request.to_string(), props);
    }

    /// Reads one request's replies: the chunks and the final event (or error).
    pub fn finish(&self, id: &str) -> (Vec<Msg>, Msg) {
        let mut chunks = Vec::new();
        loop {
            let m = self.next();
            assert_eq!(m.json["id"], id, "{m:?}");
            if m.json["token"].is_string() {
                chunks.push(m);
            } else {
                return (chunks, m);
            }
        }
    }

    /// Waits for the retained status of `node` to have `state`.
    pub fn status_until(&self, state: &str) -> Msg {
        loop {
            let m = self.next();
            if m.topic.ends_with("/status") && m.json["state"] == state {
                return m;
            }
        }
    }
}

/// The payload as JSON; an empty payload (a retained message being cleared) is `null`, and
/// one that is no JSON (Home Assistant's `online`) a JSON string of its text.
pub fn json_of(payload: &[u8]) -> Value {
    if payload.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
}

/// A greedy request long enough to still be running when the test acts on it.
pub fn long_request(id: &str, max_tokens: usize) -> Value {
    request(id, "Tell me a long story about the sea", max_tokens)
}

/// Checks a stream of replies: `seq` counts from 0 in order, the final text is the
/// concatenated chunks; returns the final event.
pub fn check_sequence(chunks: &[Msg], done: &Msg) -> Value {
    let mut text = String::new();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.json["seq"], i, "{c:?}");
        text.push_str(c.json["token"].as_str().unwrap());
    }
    assert_eq!(done.json["seq"], chunks.len(), "{done:?}");
    assert_eq!(done.json["done"], true, "{done:?}");
    assert_eq!(done.json["text"], text.as_str(), "{done:?}");
    done.json.clone()
}
