//! `bitnetd serve`: the daemon. Reads the config (CLI flags override it) and finds the model
//! (`model`, the one GGUF in `model_dir`, or the demo model), then hands over to
//! `server::run`, which binds the socket and loads the model on the engine thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use super::common;
use crate::chat::ChatTemplate;
use crate::config::{Config, DEFAULT_CONFIG};
use crate::engine::Engine;
use crate::model::HeadChoice;
use crate::server::queue::Stats;
use crate::server::worker::Worker;
use crate::server::{self, Boot, ModelInfo};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML config file [default: /etc/bitnetd/bitnetd.toml when it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// GGUF model (overrides `model`).
    #[arg(short = 'm', long = "model", value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Unix socket path (overrides `socket.path`).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Compute threads (overrides `threads`).
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
    /// Pin the compute threads to these cores, e.g. 2,3 (overrides `cores`).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub cores: Option<Vec<usize>>,
    /// Output projection: file or q8 (overrides `head`).
    #[arg(long, value_name = "HEAD")]
    pub head: Option<HeadChoice>,
    /// Evaluate every prompt from its start (sets `prefix_cache = false`).
    #[arg(long)]
    pub no_prefix_cache: bool,
    /// MQTT broker, HOST or HOST:PORT (overrides `mqtt.host` and `mqtt.port`; turns MQTT on).
    #[arg(long, value_name = "HOST:PORT", value_parser = broker)]
    pub mqtt: Option<(String, Option<u16>)>,
    /// This board's name in the MQTT topics (overrides `mqtt.node`).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// First level(s) of the MQTT topics (overrides `mqtt.base_topic`).
    #[arg(long, value_name = "T")]
    pub base_topic: Option<String>,
    /// Thread policy: performance, balanced, powersave or fixed:N (overrides `power.policy`).
    #[arg(long, value_name = "POLICY")]
    pub power: Option<crate::power::Policy>,
    /// Read sysfs under DIR instead of / (overrides `power.sysfs_root`).
    #[arg(long, value_name = "DIR")]
    pub sysfs_root: Option<PathBuf>,
}

/// `HOST`, `HOST:PORT`, `[V6ADDR]` or `[V6ADDR]:PORT`.
fn broker(s: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']').ok_or("a '[' without ']'")?;
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(p.strip_prefix(':').ok_or("expected :PORT after ]")?),
                ),
            }
        }
        None => match s.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => (s, None), // a bare IPv6 address
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        },
    };
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("{p:?} is not a port (1 to 65535)"))?,
        ),
        None => None,
    };
    Ok((host.to_owned(), port))
}

/// The config file, then the flags on top; validated again after the overrides.
pub fn config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None if Path::new(DEFAULT_CONFIG).exists() => Config::from_file(Path::new(DEFAULT_CONFIG))?,
        None => Config::default(),
    };
    if let Some(m) = &args.model {
        config.model = Some(m.clone());
    }
    if let Some(s) = &args.socket {
        config.socket.path = s.clone();
    }
    if let Some(t) = args.threads {
        config.threads = t;
    }
    if let Some(c) = &args.cores {
        config.cores = Some(c.clone());
    }
    if let Some(h) = args.head {
        config.head = h;
    }
    if args.no_prefix_cache {
        config.prefix_cache = false;
    }
    if let Some((host, port)) = &args.mqtt {
        config.mqtt.host = host.clone();
        if let Some(p) = port {
            config.mqtt.port = *p;
        }
    }
    if let Some(n) = &args.node {
        config.mqtt.node = n.clone();
    }
    if let Some(b) = &args.base_topic {
        config.mqtt.base_topic = b.clone();
    }
    if let Some(p) = args.power {
        config.power.policy = p;
    }
    if let Some(r) = &args.sysfs_root {
        config.power.sysfs_root = r.clone();
    }
    config.validate()?;
    Ok(config)
}

pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let config = config(args)?;
    let boot = match ModelSource::find(&config)? {
        ModelSource::File(path) => {
            // A missing file is a setting to fix, found before the socket is taken.
            std::fs::metadata(&path).with_context(|| format!("model {}", path.display()))?;
            boot(&config, path)
        }
        // A developer's `serve` without any model setting: the demo model (random weights),
        // with a warning saying so.
        ModelSource::Demo => boot(&config, common::model_path(None)?),
        ModelSource::Missing(message) => Boot::NoModel(message),
    };
    let served = server::run(config, boot).context("serving");
    // Whatever ended the serving, the clock ceiling goes back to what it was.
    crate::power::daemon::restore_clock();
    served
}

/// Where the model to serve comes from.
#[derive(Debug, PartialEq, Eq)]
enum ModelSource {
    File(PathBuf),
    /// Neither `model` nor `model_dir` is set.
    Demo,
    /// `model_dir` holds no single GGUF file: the daemon stays up and says this.
    Missing(String),
}

impl ModelSource {
    fn find(config: &Config) -> anyhow::Result<Self> {
        let dir = match (&config.model, &config.model_dir) {
            (Some(path), _) => return Ok(ModelSource::File(path.clone())),
            (None, None) => return Ok(ModelSource::Demo),
            (None, Some(dir)) => dir,
        };
        let put = format!("put a GGUF in {} or set model=", dir.display());
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ModelSource::Missing(format!("no model configured: {put}")));
            }
            Err(e) => bail!("reading model_dir {}: {e}", dir.display()),
        };
        let mut ggufs = Vec::new();
        for entry in entries {
            let path = entry
                .with_context(|| format!("reading model_dir {}", dir.display()))?
                .path();
            if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
                && path.is_file()
            {
                ggufs.push(path);
            }
        }
        ggufs.sort();
        Ok(match ggufs.as_slice() {
            [] => ModelSource::Missing(format!("no model configured: {put}")),
            [one] => ModelSource::File(one.clone()),
            several => {
                let names: Vec<_> = several
                    .iter()
                    .filter_map(|p| p.file_name())
                    .map(|n| n.to_string_lossy())
                    .collect();
                ModelSource::Missing(format!(
                    "{} holds {} GGUF files ({}): set model= to the one to serve",
                    dir.display(),
                    names.len(),
                    names.join(", ")
                ))
            }
        })
    }
}

/// Loading `path` on the engine thread, as the config asks.
fn boot(config: &Config, path: PathBuf) -> Boot {
    let model = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    );
    let config = config.clone();
    Boot::Load {
        model: model.clone(),
        load: Box::new(move |stats| load(&config, &path, model, stats)),
    }
}

/// Loads and validates the model and builds the engine's worker.
fn load(
    config: &Config,
    path: &Path,
    model: String,
    stats: Arc<Stats>,
) -> anyhow::Result<(ModelInfo, Worker)> {
    let mut loaded = common::load(path, None)?;
    log::info!(
        "loaded {} in {:.0} ms",
        path.display(),
        loaded.load_time.as_secs_f64() * 1e3
    );
    let sysfs = crate::power::SysRoot::new(&config.power.sysfs_root);
    let options = common::ModelOptions {
        threads: match config.threads {
            0 => crate::power::daemon::one_per_fast_core(&sysfs, config.cores.as_deref()),
            n => n,
        },
        cores: config.cores.clone(),
        kernel: config.kernel,
        head: config.head,
    };
    options.apply(&mut loaded.model)?;
    let kernel = loaded.model.kernel();
    let (head, _) = loaded.model.head();
    let power = crate::power::daemon::start(
        config.power.settings(),
        sysfs,
        options.cores.clone(),
        &mut loaded.model,
    );
    let n_ctx_train = loaded.model.hparams.n_ctx_train;
    let n_ctx = match config.ctx_size {
        0 => n_ctx_train,
        n => n,
    };
    let template = ChatTemplate::from_gguf(&loaded.model.gguf);
    let engine = Engine::new(loaded.model, loaded.tokenizer, n_ctx);
    let info = ModelInfo {
        model,
        kernel: kernel.name().into(),
        head,
        threads: options.threads,
        n_ctx,
        power: Some(power),
    };
    let timeout = config.limits.request_timeout_secs;
    let worker = Worker {
        engine,
        template,
        // The reply needs at least one position.
        max_prompt_tokens: config.limits.max_prompt_tokens.min(n_ctx.saturating_sub(1)),
        timeout: (timeout > 0).then(|| Duration::from_secs(timeout)),
        prefix_cache: config.prefix_cache,
        stats,
    };
    Ok((info, worker))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_kernels::dispatch::KernelChoice;

    #[test]
    fn broker_addresses_parse() {
        let ok = |s: &str, h: &str, p: Option<u16>| assert_eq!(broker(s), Ok((h.into(), p)));
        ok("broker.lan", "broker.lan", None);
        ok("10.0.0.2:1884", "10.0.0.2", Some(1884));
        ok("[::1]:8883", "::1", Some(8883));
        ok("[fe80::1]", "fe80::1", None);
        ok("fe80::1", "fe80::1", None);
        for bad in ["", ":1883", "host:0", "host:x", "[::1", "[::1]1883"] {
            assert!(broker(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_override_the_configured_choices() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bitnetd.toml");
        std::fs::write(&file, "cores = [0]\nkernel = \"scalar\"\nhead = \"file\"\n").unwrap();
        let file = file.to_str().unwrap();
        let serve = |flags: &[&str]| {
            let args: ServeArgs = common::parse_args(&[&["--config", file], flags].concat())?;
            config(&args)
        };
        let c = serve(&["--cores", "2,3", "--head", "q8"]).unwrap();
        assert_eq!(c.cores, Some(vec![2, 3]));
        assert_eq!(c.head, HeadChoice::Q8);
        assert_eq!(c.kernel, KernelChoice::Scalar);
        assert_eq!(serve(&[]).unwrap().cores, Some(vec![0]));
        // The flags are validated as the config keys are.
        let e = serve(&["--cores", "2,2"]).unwrap_err().to_string();
        assert!(e.contains("`cores`"), "{e}");
        let e = serve(&["--head", "q4"]).unwrap_err().to_string();
        assert!(
            e.contains("unknown head \"q4\": expected file or q8"),
            "{e}"
        );
    }

    #[test]
    fn the_model_comes_from_model_dir_when_model_is_unset() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            model_dir: Some(dir.path().join("models")),
            ..Config::default()
        };
        let missing = ModelSource::find(&config).unwrap();
        let put = format!(
            "put a GGUF in {} or set model=",
            dir.path().join("models").display()
        );
        assert_eq!(
            missing,
            ModelSource::Missing(format!("no model configured: {put}"))
        );
        std::fs::create_dir(dir.path().join("models")).unwrap();
        std::fs::write(dir.path().join("models/notes.txt"), "x").unwrap();
        assert!(matches!(
            ModelSource::find(&config).unwrap(),
            ModelSource::Missing(_)
        ));
        let a = dir.path().join("models/a.gguf");
        std::fs::write(&a, "x").unwrap();
        assert_eq!(
            ModelSource::find(&config).unwrap(),
            ModelSource::File(a.clone())
        );
        std::fs::write(dir.path().join("models/b.GGUF"), "x").unwrap();
        let ModelSource::Missing(m) = ModelSource::find(&config).unwrap() else {
            panic!("two files must not be chosen between silently")
        };
        assert!(m.contains("2 GGUF files (a.gguf, b.GGUF)"), "{m}");
        let given = Config {
            model: Some(a.clone()),
            ..config
        };
        assert_eq!(ModelSource::find(&given).unwrap(), ModelSource::File(a));
        assert_eq!(
            ModelSource::find(&Config::default()).unwrap(),
            ModelSource::Demo
        );
    }
}
