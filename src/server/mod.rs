//! The daemon: transports (tokio, I/O only) feeding one engine thread through a bounded queue.
//!
//! ```text
//! socket handler ─┐                                       ┌─> job's event channel ─> its transport
//! mqtt dispatcher ┼─> Queue (bounded, round-robin) ─> engine thread (std::thread, owns the model)
//! http handlers ──┘
//! ```
//!
//! Boot order: the socket is bound and MQTT starts connecting (a broker that is not up yet is
//! retried) before the model loads, so that clients get a clear `loading` answer instead of
//! a refused connection; the engine thread loads and warms up the model, and only then
//! systemd hears READY=1. Without a model (`model_dir` empty) the daemon stays up and answers
//! every request `no_model`. Shutdown (SIGTERM/SIGINT): stop accepting, cancel running and
//! queued work (each gets a final `cancelled` event; a prompt being evaluated stops within
//! one layer), wait for every connection to drain and MQTT to publish offline and disconnect
//! (at most [`DRAIN_TIMEOUT`]), remove the socket file. SIGHUP is logged and ignored.

pub mod activation;
pub mod connections;
pub mod http;
pub mod log_escape;
pub mod metrics;
pub mod mqtt;
pub mod protocol;
pub mod queue;
pub mod shutdown;
pub mod socket;
pub mod worker;

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use sd_notify::NotifyState;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::Config;
use protocol::{ErrorCode, Status};
use queue::{Queue, QueueReceiver, Stats};
use shutdown::Shutdown;
use worker::Worker;

/// How long shutdown waits for connections to receive their last events (systemd's stop
/// timeout is longer; the issue asks for an exit within 5 s).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(4);

/// What `status` reports about the loaded model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The model's file name.
    pub model: String,
    /// The compute kernel in use.
    pub kernel: String,
    /// The output projection's precision ("f16", "q8_0").
    pub head: String,
    /// Compute threads in the pool (the power policy may run fewer).
    pub threads: usize,
    /// Context size in tokens.
    pub n_ctx: usize,
    /// The power governor's view, for `status` (None: no governor).
    pub power: Option<Arc<crate::power::daemon::Monitor>>,
}

/// Where the daemon is in its life: what `status` and `health` say and whether requests
/// can be queued.
#[derive(Debug, Clone)]
pub enum Readiness {
    /// The engine thread is loading this model file.
    Loading {
        model: String,
    },
    /// There is nothing to serve; the message says what to do.
    NoModel(String),
    Ready(ModelInfo),
}

/// What the transports know about the daemon; the engine thread moves it from
/// [`Readiness::Loading`] to [`Readiness::Ready`].
#[derive(Debug)]
pub struct ServerInfo {
    readiness: RwLock<Readiness>,
    /// The MQTT link's state, when MQTT is on (it exists before the model loads).
    pub mqtt: Option<Arc<mqtt::MqttState>>,
}

impl ServerInfo {
    pub fn new(readiness: Readiness, mqtt: Option<Arc<mqtt::MqttState>>) -> Self {
        ServerInfo {
            readiness: RwLock::new(readiness),
            mqtt,
        }
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness.read().unwrap().clone()
    }

    fn set(&self, readiness: Readiness) {
        *self.readiness.write().unwrap() = readiness;
    }

    /// The error a request gets while the daemon cannot queue it; None when ready.
    pub fn refusal(&self) -> Option<(ErrorCode, String)> {
        match &*self.readiness.read().unwrap() {
            Readiness::Loading { model } => Some((
                ErrorCode::Loading,
                format!("the model {model} is loading; try again in a moment"),
            )),
            Readiness::NoModel(message) => Some((ErrorCode::NoModel, message.clone())),
            Readiness::Ready(_) => None,
        }
    }
}

/// Builds the engine's worker on the engine thread (loading the model can take long: the
/// socket answers `loading` meanwhile). It gets the counters the transports will read.
pub type LoadModel = Box<dyn FnOnce(Arc<Stats>) -> anyhow::Result<(ModelInfo, Worker)> + Send>;

/// What the daemon starts with.
pub enum Boot {
    /// Load `model` (its file name, for `status` while loading) with `load`.
    Load { model: String, load: LoadModel },
    /// Serve without a model: every request is answered `no_model` with this message.
    NoModel(String),
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config: Config, boot: Boot) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let stats = Arc::new(Stats::new());
    let readiness = match &boot {
        Boot::Load { model, .. } => Readiness::Loading {
            model: model.clone(),
        },
        Boot::NoModel(message) => Readiness::NoModel(message.clone()),
    };
    let mqtt_state = config.mqtt.enabled().then(Default::default);
    let info = Arc::new(ServerInfo::new(readiness, mqtt_state));
    let (queue, queue_rx) = queue::queue(
        config.limits.queue_depth,
        config.limits.max_queued_per_client,
        stats.clone(),
        info.clone(),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the I/O runtime")?;
    runtime.block_on(async move {
        let listener = socket::bind(&config)?;
        // A transport that fails to start ends the daemon: its socket file goes with it.
        let unbind = |e: anyhow::Error| {
            socket::remove(&config.socket.path);
            e
        };
        let (notify_shutdown, _) = broadcast::channel(1);
        let (shutdown_complete_tx, mut shutdown_complete_rx) = mpsc::channel(1);
        let mut server = socket::Listener::new(
            listener,
            queue,
            config.clone(),
            info.clone(),
            notify_shutdown,
            shutdown_complete_tx,
        );
        let mqtt = match config.mqtt.enabled() {
            true => Some(
                mqtt::start(
                    config.clone(),
                    info.clone(),
                    server.queue.clone(),
                    Shutdown::new(server.notify_shutdown.subscribe()),
                )
                .map_err(unbind)?,
            ),
            false => None,
        };
        // Bound before the model loads, like the socket: clients get 503 `loading`.
        let http = match config.http.listen() {
            Some(listen) => {
                let (bound, key) = http::bind(&config, &listen).map_err(unbind)?;
                let task = tokio::spawn(http::serve(
                    bound,
                    key,
                    server.queue.clone(),
                    config.clone(),
                    Shutdown::new(server.notify_shutdown.subscribe()),
                ));
                Some((listen, task))
            }
            None => None,
        };
        let transports = format!(
            "{}{}{}",
            config.socket.path.display(),
            mqtt.as_ref()
                .map_or(String::new(), |m| format!(" and {}", m.describe())),
            http.as_ref()
                .map_or(String::new(), |(listen, _)| format!(" and {listen}"))
        );
        let (loaded_tx, loaded_rx) = oneshot::channel();
        match boot {
            Boot::Load { model, load } => {
                let status = format!("loading {model}; answering on {transports}");
                log::info!("{status}");
                notify(&[NotifyState::Status(&status)]);
                let system_prompt = config.system_prompt.clone();
                let (stats, info) = (stats.clone(), info.clone());
                std::thread::Builder::new()
                    .name("engine".into())
                    .spawn(move || {
                        engine_thread(load, stats, info, system_prompt, queue_rx, loaded_tx)
                    })
                    .context("starting the engine thread")?;
            }
            Boot::NoModel(message) => {
                log::warn!("{message}; answering no_model on {transports}");
                let status = format!("no model: {message}");
                notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
                drop(queue_rx);
            }
        }
        let mut watchdog = None;
        // Ends only if loading fails; on success it tells systemd and waits forever.
        let booted = async {
            let error = match loaded_rx.await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                // No model: nothing is loading.
                Err(_) if matches!(info.readiness(), Readiness::NoModel(_)) => None,
                Err(_) => Some(anyhow::anyhow!("the engine thread ended while loading")),
            };
            if let Some(e) = error {
                return e;
            }
            if let Readiness::Ready(m) = info.readiness() {
                let status = format!(
                    "serving {} on {transports} ({} threads, {} kernel, {} head, queue {})",
                    m.model, m.threads, m.kernel, m.head, config.limits.queue_depth
                );
                log::info!("{status}");
                notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
                watchdog = sd_notify::watchdog_enabled()
                    .map(|p| tokio::spawn(ping_watchdog(p, stats.clone())));
            }
            std::future::pending().await
        };
        let mut failure = None;
        tokio::select! {
            result = server.run() => {
                if let Err(e) = result {
                    log::error!("accepting connections: {e}");
                }
            }
            signal = shutdown::signal() => match signal {
                Ok(name) => log::info!("{name}: shutting down"),
                Err(e) => log::error!("waiting for signals: {e}"),
            },
            e = booted => {
                log::error!("loading the model: {e:#}");
                failure = Some(e);
            }
        }
        notify(&[NotifyState::Stopping]);
        stats.shutting_down.store(true, Ordering::Relaxed);
        if let Some(w) = watchdog {
            w.abort();
        }
        let socket::Listener {
            listener,
            notify_shutdown,
            shutdown_complete_tx,
            queue,
            ..
        } = server;
        drop(listener);
        drop(notify_shutdown);
        drop(shutdown_complete_tx);
        drop(queue);
        let drain = async {
            let mqtt = async {
                if let Some(m) = mqtt {
                    m.shutdown().await;
                }
            };
            // The HTTP server ends once its open responses have their last events.
            let http = async {
                if let Some((_, task)) = http {
                    match task.await {
                        Ok(Err(e)) => log::error!("http: {e}"),
                        Err(e) => log::error!("http: {e}"),
                        Ok(Ok(())) => {}
                    }
                }
            };
            tokio::join!(shutdown_complete_rx.recv(), mqtt, http)
        };
        if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
            log::warn!("some clients did not take their last events in time");
        }
        socket::remove(&config.socket.path);
        log::info!("stopped");
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })
}

/// The engine thread: loads the model, warms it up (on this thread, so that what it
/// allocates is where the requests will find it: glibc gives each thread its own heap),
/// reports to the I/O side, then serves until the queue closes.
fn engine_thread(
    load: LoadModel,
    stats: Arc<Stats>,
    info: Arc<ServerInfo>,
    system_prompt: String,
    queue: QueueReceiver,
    loaded: oneshot::Sender<anyhow::Result<()>>,
) {
    let worker = load(stats).and_then(|(model, mut worker)| {
        worker
            .warm_up(&system_prompt)
            .context("a first forward pass")?;
        Ok((model, worker))
    });
    match worker {
        Ok((model, worker)) => {
            info.set(Readiness::Ready(model));
            // The receiver is gone only at shutdown.
            let _ = loaded.send(Ok(()));
            worker.run(queue);
        }
        Err(e) => {
            let _ = loaded.send(Err(e));
        }
    }
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        log::warn!("sd_notify: {e}");
    }
}

/// The reply to `status`, for every transport.
pub fn status(info: &ServerInfo, queue: &Queue) -> Status {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = queue.stats();
    let (model_state, message, model) = match info.readiness() {
        Readiness::Loading { model } => ("loading", None, ModelInfo::unknown(model)),
        Readiness::NoModel(m) => ("no_model", Some(m), ModelInfo::unknown(String::new())),
        Readiness::Ready(model) => ("ready", None, model),
    };
    Status {
        model_state,
        message,
        model: model.model,
        kernel: model.kernel,
        head: model.head,
        threads: model.threads,
        n_ctx: model.n_ctx,
        queue_depth: stats.waiting.load(Relaxed),
        queue_capacity: queue.capacity(),
        busy: stats.busy.load(Relaxed),
        requests: stats.requests.load(Relaxed),
        tokens_per_s: stats.tokens_per_s(),
        uptime_s: stats.started.elapsed().as_secs(),
        mqtt: info.mqtt.as_ref().map(|m| m.status()),
        power: model
            .power
            .as_ref()
            .map(|p| Box::new(p.report(stats.tokens_per_s()))),
    }
}

impl ModelInfo {
    /// What is known before a model is loaded: at most its name.
    fn unknown(model: String) -> Self {
        ModelInfo {
            model,
            kernel: String::new(),
            head: String::new(),
            threads: 0,
            n_ctx: 0,
            power: None,
        }
    }
}

/// The reply to `health`: "loading", "no_model", or once ready "stalled" when the engine
/// has made no progress for 30 s, else "mqtt_down" while MQTT is on but not connected,
/// else "ok".
pub fn health(queue: &Queue) -> &'static str {
    let info = queue.info();
    match info.readiness() {
        Readiness::Loading { .. } => "loading",
        Readiness::NoModel(_) => "no_model",
        Readiness::Ready(_) if queue.stats().since_heartbeat() >= Duration::from_secs(30) => {
            "stalled"
        }
        Readiness::Ready(_) if info.mqtt.as_ref().is_some_and(|m| !m.is_connected()) => "mqtt_down",
        Readiness::Ready(_) => "ok",
    }
}

/// Pings the systemd watchdog, but only while the engine makes progress (a layer of a forward
/// pass, a token, or an idle wait on the queue): a stuck engine stops the pings and systemd
/// restarts the daemon.
async fn ping_watchdog(period: Duration, stats: Arc<Stats>) {
    let mut tick = tokio::time::interval(period / 4);
    loop {
        tick.tick().await;
        if stats.since_heartbeat() < period / 2 {
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
        } else {
            log::warn!(
                "the engine has made no progress for {:.1} s",
                stats.since_heartbeat().as_secs_f64()
            );
        }
    }
}
