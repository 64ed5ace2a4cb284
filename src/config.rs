//! The daemon's TOML configuration (`/etc/bitnetd/bitnetd.toml`), overridable by CLI flags.
//!
//! Every table refuses unknown keys, and every range is checked in [`Config::validate`], so a
//! typo or a bad value stops the daemon at boot with a message naming the key, instead of being
//! silently ignored. `systemd/bitnetd.toml` is the commented example with every key.

use std::path::{Path, PathBuf};

use bitnet_kernels::dispatch::KernelChoice;
use serde::Deserialize;

use crate::model::HeadChoice;
use crate::power::{Policy, Settings as PowerSettings};
use crate::sampler::SamplerConfig;
use crate::server::mqtt::DiscoveryMode;
use crate::server::mqtt::topic::{self, MAX_TOPIC_BYTES};

/// Where `bitnetd serve` looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/bitnetd/bitnetd.toml";
/// Where the socket lives by default: systemd's `RuntimeDirectory=bitnetd`.
pub const DEFAULT_SOCKET: &str = "/run/bitnetd/bitnetd.sock";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}` = {value}: {expected}")]
    Invalid {
        key: &'static str,
        value: String,
        expected: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The GGUF model to serve. Unset: the one GGUF file in `model_dir`; with neither, the
    /// demo model (random weights, for trying the daemon out).
    pub model: Option<PathBuf>,
    /// Where a packaged daemon finds its model when `model` is unset: the one `.gguf` file
    /// there is served; with none (or several) the daemon stays up and answers `no_model`.
    pub model_dir: Option<PathBuf>,
    /// Compute threads.
    pub threads: usize,
    /// The cores the compute threads may run on (e.g. `[2, 3]`); unset: every core. The
    /// power policy places its threads on the fastest of them (README "Power").
    pub cores: Option<Vec<usize>>,
    /// Ternary kernel (its names are `KernelChoice`'s; a bad one fails the parse).
    pub kernel: KernelChoice,
    /// Output projection: "file" (as the file stores it) or "q8" (an 8-bit copy made at load).
    pub head: HeadChoice,
    /// Context size in tokens (prompt plus reply); 0 takes the model's trained context.
    pub ctx_size: usize,
    /// The system prompt of requests that give none (empty: no system message).
    pub system_prompt: String,
    /// Reuse the KV state of a prompt prefix shared with the previous request.
    pub prefix_cache: bool,
    /// The Unix socket transport.
    pub socket: SocketConfig,
    /// Sizes and times that bound what one client can make the daemon do.
    pub limits: Limits,
    /// Sampling defaults for requests that do not set them.
    pub sampling: Sampling,
    /// The MQTT transport (off while `mqtt.host` is empty).
    pub mqtt: MqttConfig,
    /// How many compute threads run, and where (temperature, throttling, battery).
    pub power: PowerConfig,
    /// The OpenAI- and Ollama-compatible HTTP listener (off while `http.listen` is empty).
    pub http: HttpConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model: None,
            model_dir: None,
            threads: 2,
            cores: None,
            kernel: KernelChoice::Auto,
            head: HeadChoice::File,
            ctx_size: 2048,
            system_prompt: String::new(),
            prefix_cache: true,
            socket: SocketConfig::default(),
            limits: Limits::default(),
            sampling: Sampling::default(),
            mqtt: MqttConfig::default(),
            power: PowerConfig::default(),
            http: HttpConfig::default(),
        }
    }
}

/// `[http]`: the OpenAI- and Ollama-compatible API (README "HTTP: OpenAI and Ollama APIs").
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// "127.0.0.1:11434" (TCP) or an absolute Unix socket path; empty: no HTTP listener.
    pub listen: String,
    /// A file holding the bearer key every request must give (trailing newline ignored); a
    /// relative path is taken in `$CREDENTIALS_DIRECTORY` when systemd sets it. Unset: no key.
    pub api_key_file: Option<PathBuf>,
}

impl HttpConfig {
    /// Where to listen, when HTTP is on (validated at load).
    pub fn listen(&self) -> Option<crate::server::http::Listen> {
        self.listen.parse().ok()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Ok(());
        }
        match self.listen.parse::<crate::server::http::Listen>() {
            Ok(_) => Ok(()),
            Err(expected) => Err(ConfigError::Invalid {
                key: "http.listen",
                value: format!("{:?}", self.listen),
                expected,
            }),
        }
    }
}

/// `[power]`: the thread policy and its limits (see README "Power").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PowerConfig {
    /// performance, balanced, powersave or fixed:N.
    pub policy: Policy,
    /// °C where balanced sheds decode threads; 0: 3 °C under the SoC's first passive trip
    /// point, or 77 °C without one.
    pub soft_limit_c: f64,
    /// Threads come back once the SoC is this many °C under the soft limit.
    pub hysteresis_c: f64,
    /// Powersave runs the fewest threads that keep this speed.
    pub min_tokens_per_s: f64,
    /// On battery below this charge (%), balanced switches to powersave.
    pub battery_percent: f64,
    /// With a writable clock ceiling, balanced decodes at the lowest clock measured at this
    /// fraction of the full clock's decode speed or more.
    pub decode_speed_fraction: f64,
    /// Where sysfs is read from (`/`; tests point it at a fake tree).
    pub sysfs_root: PathBuf,
}

impl Default for PowerConfig {
    fn default() -> Self {
        let s = PowerSettings::default();
        PowerConfig {
            policy: s.policy,
            soft_limit_c: 0.0,
            hysteresis_c: s.hysteresis_c,
            min_tokens_per_s: s.min_tokens_per_s,
            battery_percent: s.battery_percent,
            decode_speed_fraction: s.decode_speed_fraction,
            sysfs_root: "/".into(),
        }
    }
}

impl PowerConfig {
    pub fn settings(&self) -> PowerSettings {
        PowerSettings {
            policy: self.policy,
            soft_limit_c: (self.soft_limit_c > 0.0).then_some(self.soft_limit_c),
            hysteresis_c: self.hysteresis_c,
            min_tokens_per_s: self.min_tokens_per_s,
            battery_percent: self.battery_percent,
            decode_speed_fraction: self.decode_speed_fraction,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let check = |ok: bool, key, value: f64, expected: &str| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    key,
                    value: value.to_string(),
                    expected: expected.into(),
                })
            }
        };
        let t = self.soft_limit_c;
        check(
            t == 0.0 || (30.0..=120.0).contains(&t),
            "power.soft_limit_c",
            t,
            "it must be 0 (automatic) or between 30 and 120",
        )?;
        let h = self.hysteresis_c;
        check(
            (0.5..=30.0).contains(&h),
            "power.hysteresis_c",
            h,
            "it must be between 0.5 and 30",
        )?;
        let m = self.min_tokens_per_s;
        check(
            m.is_finite() && m >= 0.0,
            "power.min_tokens_per_s",
            m,
            "it must be 0 or more",
        )?;
        let b = self.battery_percent;
        check(
            (0.0..=100.0).contains(&b),
            "power.battery_percent",
            b,
            "it must be between 0 and 100",
        )?;
        let f = self.decode_speed_fraction;
        check(
            (0.5..=1.0).contains(&f),
            "power.decode_speed_fraction",
            f,
            "it must be between 0.5 and 1",
        )
    }
}

/// `[socket]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketConfig {
    /// Path of the socket file; an old file there is replaced.
    pub path: PathBuf,
    /// Permissions of the socket file, in octal ("0660").
    pub mode: String,
    /// Group that owns the socket file (whose members may connect); empty keeps the daemon's.
    pub group: String,
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            path: DEFAULT_SOCKET.into(),
            mode: "0660".into(),
            group: String::new(),
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest prompt, in tokens, after the chat template (never more than the context).
    pub max_prompt_tokens: usize,
    /// Largest `max_tokens` a request may ask for; also the default.
    pub max_new_tokens: usize,
    /// Requests that may wait behind the running one; more get an immediate `busy`.
    pub queue_depth: usize,
    /// Seconds from arrival after which a request is cancelled (0: never).
    pub request_timeout_secs: u64,
    /// Longest request line in bytes, newline excluded.
    pub max_line_bytes: usize,
    /// Socket connections open at once. A new one beyond it closes the connection idle the
    /// longest (no request running or queued), or is refused with an error line.
    pub max_connections: usize,
    /// Socket connections one user (peer uid) may hold at once; beyond it, as above among
    /// that user's connections.
    pub max_connections_per_uid: usize,
    /// Requests one client (a socket connection) may have waiting in the queue; more get
    /// `busy` (the queue's own depth bounds it too). The engine serves the clients with
    /// waiting requests in turn.
    pub max_queued_per_client: usize,
    /// Seconds a socket connection may stay without a request in flight and without sending
    /// a complete line before it is closed (0: never).
    pub idle_timeout_secs: u64,
    /// Seconds a request line may take from its first byte to its newline (slow senders
    /// hold a connection slot); the connection is then closed with an error line.
    pub line_timeout_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_prompt_tokens: 1536,
            max_new_tokens: 512,
            queue_depth: 8,
            request_timeout_secs: 300,
            max_line_bytes: 64 * 1024,
            max_connections: 64,
            max_connections_per_uid: 32,
            max_queued_per_client: 4,
            idle_timeout_secs: 300,
            line_timeout_secs: 10,
        }
    }
}

/// `[sampling]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
}

impl Default for Sampling {
    fn default() -> Self {
        let d = SamplerConfig::default();
        Sampling {
            temperature: d.temperature,
            top_k: d.top_k,
            top_p: d.top_p,
            min_p: d.min_p,
            repeat_penalty: d.repeat_penalty,
        }
    }
}

impl Sampling {
    pub fn sampler(&self, seed: u64) -> SamplerConfig {
        SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed,
            ..SamplerConfig::default()
        }
    }
}

/// `[mqtt]`: the broker, the topics and the session. Paths are read at boot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// The broker's host name or address; empty turns MQTT off.
    pub host: String,
    pub port: u16,
    /// Fixed, so that the broker keeps the session (and its queued requests) across
    /// reconnects; empty: "bitnetd-<node>".
    pub client_id: String,
    /// Empty: connect without credentials.
    pub username: String,
    /// A file holding the password (trailing newline ignored), kept out of the config. This
    /// and the TLS files: a relative path is taken in `$CREDENTIALS_DIRECTORY` when systemd
    /// sets it (`LoadCredential=`).
    pub password_file: Option<PathBuf>,
    /// CA certificates (PEM) of the broker: setting it turns TLS on.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for brokers that ask for one.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Topics start with this: `<base>/<node>/request`, `<base>/<node>/status`.
    pub base_topic: String,
    /// This board's name in the topics; empty: the host name.
    pub node: String,
    /// QoS of the subscriptions and of every publish.
    pub qos: u8,
    /// "5" or "3.1.1".
    pub protocol: String,
    /// Shared-subscription group: the broker spreads `<base>/request` over its members.
    pub group: String,
    /// Seconds between retained status updates (0: only at each connect).
    pub status_interval_s: u64,
    pub keep_alive_s: u64,
    /// How long the broker keeps the session while the daemon is away (MQTT 5).
    pub session_expiry_s: u32,
    /// Longest wait between two reconnect attempts (the wait doubles from 250 ms up to it).
    pub reconnect_max_s: u64,
    /// Replies go only to topics below one of these (`a/b/` or `a/b`: below a/b); unset:
    /// `<base_topic>/reply/`.
    pub reply_prefixes: Option<Vec<String>>,
    /// Longest topic the daemon publishes to, in bytes (MQTT's own limit is 65535).
    pub max_topic_bytes: usize,
    /// Home Assistant's discovery prefix; empty turns discovery off.
    pub discovery_prefix: String,
    /// `true`: announce the node to Home Assistant; `false`: publish nothing under the
    /// prefix; `"remove"`: publish empty configs, which removes the entities.
    pub discovery: DiscoveryMode,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            host: String::new(),
            port: 1883,
            client_id: String::new(),
            username: String::new(),
            password_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            base_topic: "bitnetd".into(),
            node: String::new(),
            qos: 1,
            protocol: "5".into(),
            group: String::new(),
            status_interval_s: 60,
            keep_alive_s: 30,
            session_expiry_s: 86400,
            reconnect_max_s: 5,
            reply_prefixes: None,
            max_topic_bytes: MAX_TOPIC_BYTES,
            discovery_prefix: "homeassistant".into(),
            discovery: DiscoveryMode::On,
        }
    }
}

impl MqttConfig {
    pub fn enabled(&self) -> bool {
        !self.host.is_empty()
    }

    /// The node name in the topics: `node`, else the host name from gethostname(2) (which,
    /// unlike /proc/sys/kernel/hostname, `ProcSubset=pid` does not hide). A host name that
    /// many boards share would give them all one client id, and the broker would keep
    /// kicking one off for the other: such names are refused unless `node` is set.
    pub fn node_name(&self) -> Result<String, String> {
        if !self.node.is_empty() {
            return Ok(self.node.clone());
        }
        let uname = rustix::system::uname();
        let host = uname.nodename().to_string_lossy();
        let host = host.trim();
        if GENERIC_HOST_NAMES.contains(&host.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "the host name is {host:?}, which other boards may share (the MQTT client id \
                 would collide): set mqtt.node (or --node) to this board's own name"
            ));
        }
        topic::check_level(host).map_err(|e| {
            format!("the host name {host:?} is no topic level ({e}): set mqtt.node")
        })?;
        Ok(host.to_owned())
    }

    /// The reply prefixes, with the default filled in.
    pub fn reply_prefixes(&self) -> Vec<String> {
        match &self.reply_prefixes {
            Some(p) => p.clone(),
            None => vec![format!("{}/reply/", self.base_topic)],
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, value: &dyn std::fmt::Debug, expected: &str| ConfigError::Invalid {
            key,
            value: format!("{value:?}"),
            expected: expected.into(),
        };
        let ensure = |ok: bool, key, value: &dyn std::fmt::Debug, expected: &str| {
            if ok {
                Ok(())
            } else {
                Err(invalid(key, value, expected))
            }
        };
        ensure(
            self.port != 0,
            "mqtt.port",
            &self.port,
            "it must be between 1 and 65535",
        )?;
        ensure(self.qos <= 2, "mqtt.qos", &self.qos, "it must be 0, 1 or 2")?;
        ensure(
            matches!(self.protocol.as_str(), "5" | "3.1.1"),
            "mqtt.protocol",
            &self.protocol,
            "it must be \"5\" or \"3.1.1\"",
        )?;
        ensure(
            !self.base_topic.is_empty() && self.base_topic.split('/').all(is_topic_level),
            "mqtt.base_topic",
            &self.base_topic,
            "it must be a topic such as \"bitnetd\" or \"home/llm\", without wildcards or empty levels",
        )?;
        let level = "it must be one topic level: no '/', '+', '#', '$' first, control characters";
        ensure(
            self.node.is_empty() || is_topic_level(&self.node),
            "mqtt.node",
            &self.node,
            level,
        )?;
        ensure(
            self.group.is_empty() || is_topic_level(&self.group),
            "mqtt.group",
            &self.group,
            level,
        )?;
        ensure(
            (5..=65535).contains(&self.keep_alive_s),
            "mqtt.keep_alive_s",
            &self.keep_alive_s,
            "it must be between 5 and 65535",
        )?;
        ensure(
            (1..=3600).contains(&self.reconnect_max_s),
            "mqtt.reconnect_max_s",
            &self.reconnect_max_s,
            "it must be between 1 and 3600",
        )?;
        ensure(
            self.password_file.is_none() || !self.username.is_empty(),
            "mqtt.password_file",
            &self.password_file,
            "it needs mqtt.username",
        )?;
        ensure(
            self.tls_cert.is_some() == self.tls_key.is_some(),
            "mqtt.tls_cert",
            &self.tls_cert,
            "give tls_cert and tls_key together",
        )?;
        ensure(
            self.tls_cert.is_none() || self.tls_ca.is_some(),
            "mqtt.tls_cert",
            &self.tls_cert,
            "a client certificate needs tls_ca (TLS is on when tls_ca is set)",
        )?;
        ensure(
            (16..=MAX_TOPIC_BYTES).contains(&self.max_topic_bytes),
            "mqtt.max_topic_bytes",
            &self.max_topic_bytes,
            "it must be between 16 and 65535",
        )?;
        ensure(
            self.discovery_prefix.is_empty()
                || self.discovery_prefix.split('/').all(is_topic_level),
            "mqtt.discovery_prefix",
            &self.discovery_prefix,
            "it must be a topic such as \"homeassistant\", without wildcards, '$' first or empty \
             levels (empty turns discovery off)",
        )?;
        let prefixes = self.reply_prefixes();
        ensure(
            !prefixes.is_empty(),
            "mqtt.reply_prefixes",
            &prefixes,
            "give at least one prefix (replies go nowhere else)",
        )?;
        for p in &prefixes {
            ensure(
                topic::check_prefix(p).is_ok() && p.len() < self.max_topic_bytes,
                "mqtt.reply_prefixes",
                p,
                "each must be a topic such as \"bitnetd/reply/\": no wildcards, no '$' first, \
                 no empty levels or control characters, shorter than mqtt.max_topic_bytes",
            )?;
        }
        Ok(())
    }
}

/// Host names that many boards share: the default of an image or of no configuration.
const GENERIC_HOST_NAMES: [&str; 7] = [
    "",
    "(none)",
    "localhost",
    "localhost.localdomain",
    "bitnetd",
    "raspberrypi",
    "debian",
];

/// One level of an MQTT topic that any broker accepts.
fn is_topic_level(s: &str) -> bool {
    topic::check_level(s).is_ok()
}

impl Config {
    /// Reads and validates a config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every range; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn check(
            ok: bool,
            key: &'static str,
            value: impl std::fmt::Debug,
            expected: &str,
        ) -> Result<(), ConfigError> {
            if ok {
                return Ok(());
            }
            Err(ConfigError::Invalid {
                key,
                value: format!("{value:?}"),
                expected: expected.into(),
            })
        }
        check(
            (0..=256).contains(&self.threads),
            "threads",
            self.threads,
            "it must be between 0 (one per fast core) and 256",
        )?;
        if let Some(cores) = &self.cores {
            let distinct: std::collections::BTreeSet<_> = cores.iter().collect();
            check(
                !cores.is_empty() && distinct.len() == cores.len(),
                "cores",
                cores,
                "it must list core ids, each once, such as [2, 3] (leave it out for every core)",
            )?;
        }
        let s = &self.socket;
        check(
            !s.path.as_os_str().is_empty(),
            "socket.path",
            &s.path,
            "it must not be empty",
        )?;
        check(
            self.socket_mode().is_some(),
            "socket.mode",
            &s.mode,
            "it must be an octal mode such as \"0660\"",
        )?;
        let l = &self.limits;
        check(
            l.max_prompt_tokens >= 1,
            "limits.max_prompt_tokens",
            l.max_prompt_tokens,
            "it must be at least 1",
        )?;
        check(
            l.max_new_tokens >= 1,
            "limits.max_new_tokens",
            l.max_new_tokens,
            "it must be at least 1",
        )?;
        check(
            (1..=4096).contains(&l.queue_depth),
            "limits.queue_depth",
            l.queue_depth,
            "it must be between 1 and 4096",
        )?;
        check(
            l.max_line_bytes >= 256,
            "limits.max_line_bytes",
            l.max_line_bytes,
            "it must be at least 256",
        )?;
        check(
            (1..=65536).contains(&l.max_connections),
            "limits.max_connections",
            l.max_connections,
            "it must be between 1 and 65536",
        )?;
        check(
            (1..=l.max_connections).contains(&l.max_connections_per_uid),
            "limits.max_connections_per_uid",
            l.max_connections_per_uid,
            "it must be between 1 and limits.max_connections",
        )?;
        check(
            l.max_queued_per_client >= 1,
            "limits.max_queued_per_client",
            l.max_queued_per_client,
            "it must be at least 1",
        )?;
        check(
            (1..=3600).contains(&l.line_timeout_secs),
            "limits.line_timeout_secs",
            l.line_timeout_secs,
            "it must be between 1 and 3600",
        )?;
        self.mqtt.validate()?;
        self.power.validate()?;
        self.http.validate()?;
        if let Err(e) = self.sampling.sampler(0).validate() {
            let key = match e.field {
                "temperature" => "sampling.temperature",
                "top_p" => "sampling.top_p",
                "min_p" => "sampling.min_p",
                "repeat_penalty" => "sampling.repeat_penalty",
                _ => "sampling",
            };
            return Err(ConfigError::Invalid {
                key,
                value: e.value,
                expected: format!("it must be {}", e.expected),
            });
        }
        Ok(())
    }

    /// `socket.mode` as permission bits.
    pub fn socket_mode(&self) -> Option<u32> {
        let m = self.socket.mode.trim_start_matches("0o");
        u32::from_str_radix(m, 8).ok().filter(|&m| m <= 0o777)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.threads, 2);
        assert_eq!(c.socket.path, Path::new(DEFAULT_SOCKET));
        assert_eq!(c.socket_mode(), Some(0o660));
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../systemd/bitnetd.toml");
        let c = parse(text).unwrap();
        assert_eq!(
            c.model_dir.as_deref(),
            Some(Path::new("/var/lib/bitnetd/models"))
        );
    }

    #[test]
    fn power_keys_parse_and_bad_ones_are_named() {
        let c = parse("[power]\npolicy = \"fixed:3\"\nsoft_limit_c = 70\n").unwrap();
        assert_eq!(c.power.policy, Policy::Fixed(3));
        assert_eq!(c.power.settings().soft_limit_c, Some(70.0));
        assert_eq!(parse("").unwrap().power.policy, Policy::Balanced);
        for (text, key) in [
            ("policy = \"turbo\"", "turbo"),
            ("policy = \"fixed:0\"", "fixed:0"),
            ("soft_limit_c = 10", "power.soft_limit_c"),
            ("hysteresis_c = 0", "power.hysteresis_c"),
            ("min_tokens_per_s = -1", "power.min_tokens_per_s"),
            ("battery_percent = 101", "power.battery_percent"),
            ("decode_speed_fraction = 1.5", "power.decode_speed_fraction"),
            ("polcy = \"balanced\"", "polcy"),
        ] {
            let e = parse(&format!("[power]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let e = parse("[limits]\nqueue_dept = 3\n").unwrap_err().to_string();
        assert!(e.contains("queue_dept"), "{e}");
        let e = parse("modle = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("modle"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        let e = parse("threads = \"two\"\n").unwrap_err().to_string();
        assert!(e.contains("threads"), "{e}");
        let e = parse("[limits]\nqueue_depth = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.queue_depth"), "{e}");
        let e = parse("[sampling]\ntop_p = 2.0\n").unwrap_err().to_string();
        assert!(e.contains("sampling.top_p"), "{e}");
        let e = parse("[socket]\nmode = \"999\"\n").unwrap_err().to_string();
        assert!(e.contains("socket.mode"), "{e}");
        let e = parse("[limits]\nmax_queued_per_client = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.max_queued_per_client"), "{e}");
        let e = parse("[limits]\nline_timeout_secs = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.line_timeout_secs"), "{e}");
        let e = parse("kernel = \"neon9\"\n").unwrap_err().to_string();
        assert!(
            e.contains("kernel = \"neon9\"") && e.contains("auto, scalar, tl1 or i2s"),
            "{e}"
        );
        let e = parse("head = \"q4\"\n").unwrap_err().to_string();
        assert!(
            e.contains("head = \"q4\"") && e.contains("expected file or q8"),
            "{e}"
        );
    }

    #[test]
    fn cores_are_a_list_of_distinct_core_ids() {
        assert_eq!(parse("").unwrap().cores, None);
        assert_eq!(parse("cores = [2, 3]\n").unwrap().cores, Some(vec![2, 3]));
        for text in ["cores = []", "cores = [2, 3, 2]"] {
            let e = parse(&format!("{text}\n")).unwrap_err().to_string();
            assert!(e.starts_with("config key `cores` = "), "{text}: {e}");
        }
        let e = parse("cores = [-1]\n").unwrap_err().to_string();
        assert!(e.contains("cores"), "{e}");
    }

    #[test]
    fn mqtt_is_off_without_a_host_and_checked_by_key() {
        assert!(!parse("").unwrap().mqtt.enabled());
        let c = parse("[mqtt]\nhost = \"broker.lan\"\nnode = \"pi1\"\n").unwrap();
        assert!(c.mqtt.enabled());
        assert_eq!(c.mqtt.node_name().as_deref(), Ok("pi1"));
        assert_eq!(c.mqtt.reply_prefixes(), ["bitnetd/reply/"]);
        let c = parse("[mqtt]\nbase_topic = \"home/llm\"\n").unwrap();
        assert_eq!(c.mqtt.reply_prefixes(), ["home/llm/reply/"]);
        let c = parse("[mqtt]\nreply_prefixes = [\"dev/a/\", \"dev/b\"]\n").unwrap();
        assert_eq!(c.mqtt.reply_prefixes(), ["dev/a/", "dev/b"]);
        for (text, key) in [
            ("qos = 3", "mqtt.qos"),
            ("protocol = \"4\"", "mqtt.protocol"),
            ("port = 0", "mqtt.port"),
            ("base_topic = \"a/+/b\"", "mqtt.base_topic"),
            ("base_topic = \"a//b\"", "mqtt.base_topic"),
            ("node = \"a/b\"", "mqtt.node"),
            ("group = \"g#\"", "mqtt.group"),
            ("node = \"pi\\u0001\"", "mqtt.node"),
            ("base_topic = \"$SYS\"", "mqtt.base_topic"),
            ("reply_prefixes = []", "mqtt.reply_prefixes"),
            ("reply_prefixes = [\"ok/\", \"a/#\"]", "mqtt.reply_prefixes"),
            ("reply_prefixes = [\"$SYS/\"]", "mqtt.reply_prefixes"),
            ("reply_prefixes = [\"a//b\"]", "mqtt.reply_prefixes"),
            ("max_topic_bytes = 70000", "mqtt.max_topic_bytes"),
            ("keep_alive_s = 2", "mqtt.keep_alive_s"),
            ("reconnect_max_s = 0", "mqtt.reconnect_max_s"),
            ("password_file = \"/p\"", "mqtt.password_file"),
            ("tls_cert = \"/c\"", "mqtt.tls_cert"),
            ("discovery_prefix = \"ha/#\"", "mqtt.discovery_prefix"),
            ("discovery_prefix = \"$SYS\"", "mqtt.discovery_prefix"),
            ("discovery_prefix = \"ha//x\"", "mqtt.discovery_prefix"),
            ("discovery_prefix = \"h\\u0000a\"", "mqtt.discovery_prefix"),
            ("discovery = \"maybe\"", "mqtt.discovery"),
            ("discovery = 1", "mqtt.discovery"),
            ("hots = \"x\"", "hots"),
            ("qos = \"1\"", "qos"),
        ] {
            let e = parse(&format!("[mqtt]\n{text}\n")).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
