//! The MQTT transport: requests on `<base>/<node>/request` (and `$share/<group>/<base>/request`
//! for a fleet), replies on each request's response topic or `reply_to`, and a retained
//! `<base>/<node>/status` whose last will says offline.
//!
//! ```text
//! poller (owns the connection) ─> dispatcher ─> Queue ─> engine ─> forwarder per request ─> publish
//! ```
//!
//! The session is persistent (fixed client id, no clean start, a session expiry on MQTT 5), so
//! QoS 1 requests published while the daemon was away wait at the broker and are answered
//! after it reconnects. Messages are acknowledged once handled (queued or refused), not on
//! arrival: the broker's in-flight window (MQTT 5: [`link::RECEIVE_MAXIMUM`]) then bounds what
//! it sends ahead. The channel to the dispatcher is bounded; QoS 0 messages that find it
//! nearly full are dropped and counted.
//!
//! Hostile input: every topic the daemon publishes to is checked first ([`topic`]), replies
//! go only below `mqtt.reply_prefixes`, retained requests are ignored, and incoming packets
//! are limited to `limits.max_line_bytes` plus room for the header.
//!
//! Home Assistant discovery ([`discovery`]) announces the node as a device with sensors.

mod discovery;
mod dispatch;
mod link;
mod state;
mod throttle;
pub mod topic;
pub mod wire;

pub use discovery::DiscoveryMode;
pub use state::{MqttState, MqttStatus};

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;

use super::ServerInfo;
use super::queue::Queue;
use super::shutdown::Shutdown;
use crate::config::Config;
use discovery::Discovery;
use dispatch::Dispatcher;
use link::{Client, EventLoop, Notice, Settings};
use throttle::{LogBudget, suppressed_note};
use topic::ReplyPolicy;

/// The first wait before reconnecting; it doubles up to `mqtt.reconnect_max_s`.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Room in the channel to the dispatcher for messages that are acknowledged once handled.
/// The broker's in-flight window should keep them few, but mosquitto 2.0.11 was seen sending
/// hundreds past a receive maximum of 32 during a burst: room for far more, bounded in bytes
/// by [`BACKLOG_BYTES`].
const ACKED_SLOTS: usize = 4096;
/// Room for QoS 0 messages: they are dropped while this many messages wait.
const AT_MOST_ONCE_SLOTS: usize = 32;
/// Payload bytes that may wait in the channel; past it QoS 1/2 messages stay
/// unacknowledged (the broker sends them again in the next session).
const BACKLOG_BYTES: usize = 8 << 20;
/// A connection that keeps failing is logged once per this long (and at the first failure).
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(30);

/// The running transport, kept by the server for shutdown.
pub struct Mqtt {
    client: Client,
    /// What the status topic reports.
    shared: Arc<Shared>,
    poller: JoinHandle<()>,
    /// Ends at the shutdown signal, dropping its queue handle.
    dispatcher: JoinHandle<()>,
    ticker: Option<JoinHandle<()>>,
    /// Home Assistant's announcer and state publisher, when discovery is on.
    discovery: Option<discovery::Tasks>,
    /// Returns `None` once every reply forwarder has sent its final event.
    forwarders_done: mpsc::Receiver<()>,
}

/// What the poller, the ticker and shutdown share.
struct Shared {
    node: String,
    /// Where to connect, for the log.
    broker: String,
    status_topic: String,
    /// The request topics, subscribed after every connect.
    filters: Vec<String>,
    /// Filters the session may hold from an earlier configuration, dropped at every connect.
    stale_filters: Vec<String>,
    info: Arc<ServerInfo>,
    /// For the status counters (not for submitting).
    queue: Queue,
    /// Whether the connection is up (status is only published then), and how it went.
    state: Arc<MqttState>,
    /// What waits for the dispatcher.
    backlog: Arc<Backlog>,
    /// Home Assistant discovery, unless off.
    discovery: Option<Discovery>,
}

impl Shared {
    fn status(&self) -> crate::server::protocol::Status {
        super::status(&self.info, &self.queue)
    }

    fn online(&self) -> Vec<u8> {
        wire::online(&self.node, self.status())
    }
}

/// Reads the credentials and certificates (errors name the config key) and starts the
/// transport; the first connect happens in the background, so that a broker that comes up
/// after the daemon is not an error.
pub fn start(
    config: Arc<Config>,
    info: Arc<ServerInfo>,
    queue: Queue,
    shutdown: Shutdown,
) -> anyhow::Result<Mqtt> {
    let m = &config.mqtt;
    let node = m
        .node_name()
        .map_err(|e| anyhow::anyhow!("mqtt.node: {e}"))?;
    let base = &m.base_topic;
    let own_request = format!("{base}/{node}/request");
    let mut filters = vec![own_request.clone()];
    if !m.group.is_empty() {
        filters.push(format!("$share/{}/{base}/request", m.group));
    }
    let status_topic = format!("{base}/{node}/status");
    for t in [&own_request, &status_topic] {
        topic::check_name(t, m.max_topic_bytes)
            .with_context(|| format!("mqtt.base_topic and mqtt.node make the topic {t:?}"))?;
    }
    let discovery = Discovery::new(m, &node, &status_topic)?;
    let mut own = vec![own_request, format!("{base}/request"), status_topic.clone()];
    if let Some(d) = &discovery {
        own.extend(d.own_topics());
        filters.extend(d.filter());
    }
    let policy = ReplyPolicy::new(&m.reply_prefixes(), own, m.max_topic_bytes);
    let settings = settings(&config, &node, &status_topic)?;
    if password_in_clear(&settings) {
        log::warn!(
            "mqtt: the password goes to {} without TLS: anyone on the network path can read \
             it; set mqtt.tls_ca to encrypt the connection",
            settings.host
        );
    }
    let (client, eventloop) = link::new(&settings);
    let state = info.mqtt.clone().unwrap_or_default();
    let shared = Arc::new(Shared {
        node,
        broker: format!("{}:{}", m.host, m.port),
        status_topic,
        filters,
        stale_filters: discovery::stale_filters(m),
        info: info.clone(),
        queue: queue.clone(),
        state,
        backlog: Arc::new(Backlog::default()),
        discovery,
    });
    let (messages_tx, messages_rx) = mpsc::channel(ACKED_SLOTS + AT_MOST_ONCE_SLOTS);
    let (forwarders, forwarders_done) = mpsc::channel(1);
    let backoff = Backoff::new(Duration::from_secs(m.reconnect_max_s));
    let poller = tokio::spawn(poll(
        eventloop,
        messages_tx,
        client.clone(),
        shared.clone(),
        backoff,
    ));
    let dispatcher = Dispatcher::new(
        client.clone(),
        queue,
        config.clone(),
        info,
        policy,
        forwarders,
    );
    let dispatcher = tokio::spawn(dispatcher.run(messages_rx, shared.backlog.clone(), shutdown));
    let ticker = (m.status_interval_s > 0).then(|| {
        let every = Duration::from_secs(m.status_interval_s);
        tokio::spawn(report_status(client.clone(), shared.clone(), every))
    });
    let discovery = discovery::spawn(client.clone(), shared.clone());
    Ok(Mqtt {
        client,
        shared,
        poller,
        dispatcher,
        ticker,
        discovery,
        forwarders_done,
    })
}

impl Mqtt {
    /// The node name and broker, for the boot message.
    pub fn describe(&self) -> String {
        format!("MQTT {} as node {}", self.shared.broker, self.shared.node)
    }

    /// After the shutdown signal: publishes the offline status, lets every request send
    /// its final (cancelled) event, waits for the broker's acks, then disconnects cleanly.
    /// The caller bounds the time.
    pub async fn shutdown(mut self) {
        let _ = self.dispatcher.await;
        if let Some(t) = &self.ticker {
            t.abort();
        }
        if let Some(d) = &self.discovery {
            d.abort();
        }
        if !self.shared.state.is_connected() {
            // The broker is away: it has published the last will already.
            self.poller.abort();
            return;
        }
        let offline = wire::offline(&self.shared.node);
        let _ = self
            .client
            .publish(&self.shared.status_topic, offline, true, None)
            .await;
        let _ = self.forwarders_done.recv().await;
        self.client.all_acked().await;
        let _ = self.client.disconnect().await;
        let _ = self.poller.await;
        log::info!("mqtt: offline published, disconnected");
    }
}

/// Drives the connection: reconnects with backoff, subscribes and says online after each
/// connect, and hands messages to the dispatcher. Ends once DISCONNECT went out.
/// Never waits for the dispatcher: the dispatcher's publishes need this loop to move.
async fn poll(
    mut eventloop: EventLoop,
    messages: mpsc::Sender<Box<link::Message>>,
    client: Client,
    shared: Arc<Shared>,
    mut backoff: Backoff,
) {
    let broker = &shared.broker;
    let backlog = &shared.backlog;
    // Since when the daemon has been trying to (re)connect, and how often it failed.
    let mut down_since = Instant::now();
    let mut failures = 0u32;
    let mut failure_log = LogBudget::new(1, FAILURE_LOG_EVERY);
    let mut overflow_log = LogBudget::new(1, Duration::from_secs(10));
    loop {
        match eventloop.poll().await {
            Ok(Notice::Connected { session_present }) => {
                shared.state.connected();
                backoff.reset();
                log::info!(
                    "mqtt: connected to {broker} as node {} after {:.3} s ({failures} failed \
                     attempts, session present: {session_present})",
                    shared.node,
                    down_since.elapsed().as_secs_f64(),
                );
                failures = 0;
                failure_log = LogBudget::new(1, FAILURE_LOG_EVERY);
                tokio::spawn(on_connect(client.clone(), shared.clone()));
            }
            Ok(Notice::Message(m)) => {
                if let Some(d) = shared.discovery.as_ref().filter(|d| d.is_birth(&m)) {
                    d.on_birth(&m);
                    // Not awaited here: the ack goes out through this loop.
                    let client = client.clone();
                    tokio::spawn(async move { client.ack(&m).await });
                    continue;
                }
                let waiting = ACKED_SLOTS + AT_MOST_ONCE_SLOTS - messages.capacity();
                let full = match m.at_most_once {
                    true => waiting >= AT_MOST_ONCE_SLOTS,
                    false => backlog.bytes() + m.payload.len() > BACKLOG_BYTES,
                };
                if !full {
                    backlog.add(m.payload.len());
                }
                let refused = match full {
                    true => Some(m),
                    false => match messages.try_send(m) {
                        Ok(()) => None,
                        Err(TrySendError::Full(m)) => {
                            backlog.take(m.payload.len());
                            Some(m)
                        }
                        // Shutdown: unacknowledged, it stays for the next session.
                        Err(TrySendError::Closed(_)) => None,
                    },
                };
                if let Some(m) = refused {
                    shared.state.dropped();
                    if let Some(n) = overflow_log.take(Instant::now()) {
                        let what = match m.at_most_once {
                            true => "dropped a QoS 0 message",
                            false => {
                                "left a message unacknowledged (the broker sends it \
                                      again in the next session)"
                            }
                        };
                        log::warn!(
                            "mqtt: requests arrive faster than they are taken: {what} on {:?}{}",
                            m.topic,
                            suppressed_note(n)
                        );
                    }
                }
            }
            Ok(Notice::Disconnected) => return,
            Ok(Notice::Other) => {}
            Err(e) => {
                let now = Instant::now();
                if shared.state.failed(&e.text) {
                    log::warn!("mqtt: connection to {broker} lost: {}", e.text);
                    down_since = now;
                } else if let Some(n) = failure_log.take(now) {
                    log::warn!(
                        "mqtt: cannot connect to {broker}: {} ({} failed attempts in {:.0} s{}); \
                         retrying",
                        e.text,
                        failures + 1,
                        now.duration_since(down_since).as_secs_f64(),
                        suppressed_note(n)
                    );
                }
                if e.oversize {
                    log::warn!(
                        "mqtt: the broker sent a packet above limits.max_line_bytes; the next \
                         connect starts a new session, so that the broker does not send it again \
                         (requests waiting at the broker are lost)"
                    );
                    eventloop.set_clean_session(true);
                }
                failures += 1;
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
}

/// After each connect: (re)subscribe, for a broker that lost the session, and say online.
async fn on_connect(client: Client, shared: Arc<Shared>) {
    if client.unsubscribe(&shared.stale_filters).await.is_err() {
        return;
    }
    if client.subscribe(&shared.filters).await.is_err() {
        return;
    }
    let _ = client
        .publish(&shared.status_topic, shared.online(), true, None)
        .await;
    if let Some(d) = &shared.discovery {
        d.connected();
    }
}

/// Refreshes the retained status every `every` while connected.
async fn report_status(client: Client, shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is at once; connecting says online already
    loop {
        tick.tick().await;
        if shared.state.is_connected() {
            let _ = client
                .publish(&shared.status_topic, shared.online(), true, None)
                .await;
        }
    }
}

/// The connection settings, with the files of `[mqtt]` read now so that a missing or bad
/// file stops the daemon at boot.
fn settings(config: &Config, node: &str, status_topic: &str) -> anyhow::Result<Settings> {
    let m = &config.mqtt;
    let credentials_dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let read = |path: &Path, key: &str| {
        let path = secret_path(path, credentials_dir.as_deref());
        std::fs::read(&path).with_context(|| format!("mqtt.{key}: reading {}", path.display()))
    };
    let credentials = match &m.password_file {
        Some(path) => {
            let bytes = read(path, "password_file")?;
            let password = String::from_utf8(bytes)
                .with_context(|| format!("mqtt.password_file: {} is not UTF-8", path.display()))?;
            Some((
                m.username.clone(),
                password.trim_end_matches(['\r', '\n']).into(),
            ))
        }
        None if !m.username.is_empty() => Some((m.username.clone(), String::new())),
        None => None,
    };
    let tls = match &m.tls_ca {
        Some(ca_path) => {
            // rustls uses the process-wide provider; ring builds with a plain C compiler.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let ca = read(ca_path, "tls_ca")?;
            pem::check_certs(&ca).with_context(|| format!("mqtt.tls_ca: {}", ca_path.display()))?;
            let client_auth = match (&m.tls_cert, &m.tls_key) {
                (Some(cert_path), Some(key_path)) => {
                    let cert = read(cert_path, "tls_cert")?;
                    pem::check_certs(&cert)
                        .with_context(|| format!("mqtt.tls_cert: {}", cert_path.display()))?;
                    let key = read(key_path, "tls_key")?;
                    pem::check_key(&key)
                        .with_context(|| format!("mqtt.tls_key: {}", key_path.display()))?;
                    Some((cert, key))
                }
                _ => None,
            };
            Some(link::Tls { ca, client_auth })
        }
        None => None,
    };
    Ok(Settings {
        host: m.host.clone(),
        port: m.port,
        client_id: match m.client_id.as_str() {
            "" => format!("bitnetd-{node}"),
            id => id.into(),
        },
        v5: m.protocol == "5",
        credentials,
        tls,
        keep_alive: Duration::from_secs(m.keep_alive_s),
        qos: m.qos,
        session_expiry_s: m.session_expiry_s,
        max_payload: config.limits.max_line_bytes,
        will_topic: status_topic.into(),
        will_payload: wire::offline(node),
    })
}

/// Where a configured secret is: a relative path is taken in systemd's
/// `$CREDENTIALS_DIRECTORY` (`LoadCredential=`) when there is one.
fn secret_path(path: &Path, credentials_dir: Option<&Path>) -> PathBuf {
    match credentials_dir {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_owned(),
    }
}

/// Whether a password would cross the network unencrypted (loopback does not count).
fn password_in_clear(s: &Settings) -> bool {
    let has_password = s.credentials.as_ref().is_some_and(|(_, p)| !p.is_empty());
    let host = s.host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    has_password && s.tls.is_none() && !loopback
}

/// PEM checks at boot, so that a wrong file is reported once, by key, instead of failing
/// every connect attempt.
mod pem {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    pub fn check_certs(pem: &[u8]) -> anyhow::Result<()> {
        let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()?;
        anyhow::ensure!(!certs.is_empty(), "no PEM certificate in the file");
        Ok(())
    }

    pub fn check_key(pem: &[u8]) -> anyhow::Result<()> {
        PrivateKeyDer::from_pem_slice(pem)?;
        Ok(())
    }
}

/// Payload bytes in the channel to the dispatcher.
#[derive(Default)]
pub(crate) struct Backlog(AtomicUsize);

impl Backlog {
    fn bytes(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The dispatcher took a message of `n` bytes.
    pub(crate) fn take(&self, n: usize) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Waits between reconnect attempts: doubling from [`FIRST_BACKOFF`] up to a cap, with up
/// to a quarter more at random so that a fleet does not reconnect in lockstep.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Backoff {
            next: FIRST_BACKOFF.min(max),
            max,
        }
    }

    fn reset(&mut self) {
        self.next = FIRST_BACKOFF.min(self.max);
    }

    fn next(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait + wait.mul_f64(jitter() * 0.25)
    }
}

/// A number in [0, 1), different at each call.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    let h = RandomState::new().hash_one(Instant::now());
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(2));
        let waits: Vec<Duration> = (0..6).map(|_| b.next()).collect();
        let base = [250, 500, 1000, 2000, 2000, 2000].map(Duration::from_millis);
        for (w, base) in waits.iter().zip(base) {
            assert!(*w >= base && *w <= base.mul_f64(1.25), "{w:?} vs {base:?}");
        }
        b.reset();
        assert!(b.next() < Duration::from_millis(313));
    }

    #[test]
    fn secrets_come_from_the_credentials_directory_when_relative() {
        let dir = Some(Path::new("/run/credentials/bitnetd.service"));
        assert_eq!(
            secret_path(Path::new("mqtt-password"), dir),
            Path::new("/run/credentials/bitnetd.service/mqtt-password")
        );
        assert_eq!(
            secret_path(Path::new("/etc/bitnetd/pw"), dir),
            Path::new("/etc/bitnetd/pw")
        );
        assert_eq!(secret_path(Path::new("pw"), None), Path::new("pw"));
    }

    #[test]
    fn a_password_without_tls_is_noticed_unless_on_loopback() {
        let mut config = Config::default();
        config.mqtt.host = "broker.lan".into();
        let mut s = settings(&config, "n", "b/n/status").unwrap();
        assert!(!password_in_clear(&s), "no credentials");
        s.credentials = Some(("u".into(), "secret".into()));
        assert!(password_in_clear(&s));
        for host in ["127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost"] {
            s.host = host.into();
            assert!(!password_in_clear(&s), "{host}");
        }
        s.host = "10.0.0.2".into();
        assert!(password_in_clear(&s));
        s.credentials = Some(("u".into(), String::new()));
        assert!(!password_in_clear(&s), "a username alone is no secret");
    }

    #[test]
    fn pem_files_are_checked() {
        assert!(pem::check_certs(b"not a certificate").is_err());
        assert!(pem::check_key(b"no key in here").is_err());
    }
}
