//! The daemon's TOML configuration (`/etc/bitnetd/bitnetd.toml`), overridable by CLI flags.
//!
//! Every table refuses unknown keys, and every range is checked in [`Config::validate`], so a
//! typo or a bad value stops the daemon at boot with a message naming the key, instead of being
//! silently ignored. `systemd/bitnetd.toml` is the commented example with every key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::sampler::SamplerConfig;

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
    /// The GGUF model to serve; required (here or with `-m`).
    pub model: Option<PathBuf>,
    /// Compute threads.
    pub threads: usize,
    /// Ternary kernel: "auto", "scalar", "tl1" or "i2s".
    pub kernel: String,
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model: None,
            threads: 2,
            kernel: "auto".into(),
            ctx_size: 2048,
            system_prompt: String::new(),
            prefix_cache: true,
            socket: SocketConfig::default(),
            limits: Limits::default(),
            sampling: Sampling::default(),
        }
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
    /// Socket connections open at once; more wait to be accepted.
    pub max_connections: usize,
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
            (1..=256).contains(&self.threads),
            "threads",
            self.threads,
            "it must be between 1 and 256",
        )?;
        check(
            matches!(self.kernel.as_str(), "auto" | "scalar" | "tl1" | "i2s"),
            "kernel",
            &self.kernel,
            "it must be \"auto\", \"scalar\", \"tl1\" or \"i2s\"",
        )?;
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
        assert!(c.model.is_some());
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
        let e = parse("kernel = \"neon9\"\n").unwrap_err().to_string();
        assert!(e.contains("kernel"), "{e}");
    }
}
