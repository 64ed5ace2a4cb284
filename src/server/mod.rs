//! The daemon: transports (tokio, I/O only) feeding one engine thread through a bounded queue.
//!
//! ```text
//! socket handler ─┐                                 ┌─> job's event channel ─> its transport
//! mqtt dispatcher ┴─> Queue (bounded, FCFS) ─> engine thread (std::thread, owns the model)
//! ```
//!
//! Boot order: the caller has loaded and validated the model; here the engine thread starts,
//! the socket is bound, MQTT starts connecting (a broker that is not up yet is retried), and
//! only then systemd hears READY=1. Shutdown (SIGTERM/SIGINT): stop accepting, cancel running
//! and queued work (each gets a final `cancelled` event), wait for every connection to drain
//! and MQTT to publish offline and disconnect (at most [`DRAIN_TIMEOUT`]), remove the socket
//! file.

pub mod activation;
pub mod mqtt;
pub mod protocol;
pub mod queue;
pub mod shutdown;
pub mod socket;
pub mod worker;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use sd_notify::NotifyState;
use tokio::sync::{Semaphore, broadcast, mpsc};

use crate::config::Config;
use protocol::Status;
use queue::{Queue, Stats};
use shutdown::Shutdown;
use worker::Worker;

/// How long shutdown waits for connections to receive their last events (systemd's stop
/// timeout is longer; the issue asks for an exit within 5 s).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(4);

/// What `status` reports about the loaded model.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// The model's file name.
    pub model: String,
    /// The compute kernel in use.
    pub kernel: String,
    /// The output projection's precision ("f16", "q8_0").
    pub head: String,
    pub threads: usize,
    /// Context size in tokens.
    pub n_ctx: usize,
    /// The MQTT link's state, when MQTT is on.
    pub mqtt: Option<Arc<mqtt::MqttState>>,
    /// The power governor's view, for `status` (None: no governor).
    pub power: Option<Arc<crate::power::daemon::Monitor>>,
}

/// Runs the daemon until SIGTERM or SIGINT. `worker` holds the loaded model.
pub fn run(config: Config, info: ServerInfo, mut worker: Worker) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let stats = worker.stats.clone();
    let (queue, queue_rx) = queue::queue(config.limits.queue_depth, stats.clone());
    // The warm-up runs on the engine thread itself, so that what it allocates is where
    // the requests will find it (glibc gives each thread its own heap).
    let (warmed_tx, warmed_rx) = std::sync::mpsc::channel();
    let system_prompt = config.system_prompt.clone();
    std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let warmed = worker.warm_up(&system_prompt);
            let ok = warmed.is_ok();
            // The receiver waits for this one message.
            let _ = warmed_tx.send(warmed);
            if ok {
                worker.run(queue_rx);
            }
        })
        .context("starting the engine thread")?;
    warmed_rx
        .recv()
        .context("the engine thread ended during its warm-up")?
        .context("a first forward pass")?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the I/O runtime")?;
    runtime.block_on(async move {
        let listener = socket::bind(&config)?;
        let (notify_shutdown, _) = broadcast::channel(1);
        let (shutdown_complete_tx, mut shutdown_complete_rx) = mpsc::channel(1);
        let mut server = socket::Listener {
            listener,
            queue,
            config: config.clone(),
            info: Arc::new(info.clone()),
            limit_connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            notify_shutdown,
            shutdown_complete_tx,
        };
        let mqtt = match config.mqtt.enabled() {
            true => Some(mqtt::start(
                config.clone(),
                server.info.clone(),
                server.queue.clone(),
                Shutdown::new(server.notify_shutdown.subscribe()),
            )?),
            false => None,
        };
        let status = format!(
            "serving {} on {}{} ({} threads, {} kernel, {} head, queue {})",
            info.model,
            config.socket.path.display(),
            mqtt.as_ref()
                .map_or(String::new(), |m| format!(" and {}", m.describe())),
            info.threads,
            info.kernel,
            info.head,
            config.limits.queue_depth
        );
        log::info!("{status}");
        if let Err(e) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]) {
            log::warn!("sd_notify: {e}");
        }
        let watchdog =
            sd_notify::watchdog_enabled().map(|p| tokio::spawn(watchdog(p, stats.clone())));

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
        }
        let _ = sd_notify::notify(&[NotifyState::Stopping]);
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
            tokio::join!(shutdown_complete_rx.recv(), mqtt)
        };
        if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
            log::warn!("some clients did not take their last events in time");
        }
        socket::remove(&config.socket.path);
        log::info!("stopped");
        Ok(())
    })
}

/// The reply to `status`, for every transport.
pub fn status(info: &ServerInfo, queue: &Queue) -> Status {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = queue.stats();
    Status {
        model: info.model.clone(),
        kernel: info.kernel.clone(),
        head: info.head.clone(),
        threads: info.threads,
        n_ctx: info.n_ctx,
        queue_depth: stats.waiting.load(Relaxed),
        queue_capacity: queue.capacity(),
        busy: stats.busy.load(Relaxed),
        requests: stats.requests.load(Relaxed),
        tokens_per_s: stats.tokens_per_s(),
        uptime_s: stats.started.elapsed().as_secs(),
        mqtt: info.mqtt.as_ref().map(|m| m.status()),
        power: info
            .power
            .as_ref()
            .map(|p| Box::new(p.report(stats.tokens_per_s()))),
    }
}

/// The reply to `health`: "stalled" when the engine has made no progress for 30 s, else
/// "mqtt_down" while MQTT is on but not connected.
pub fn health(info: &ServerInfo, queue: &Queue) -> &'static str {
    if queue.stats().since_heartbeat() >= Duration::from_secs(30) {
        "stalled"
    } else if info.mqtt.as_ref().is_some_and(|m| !m.is_connected()) {
        "mqtt_down"
    } else {
        "ok"
    }
}

/// Pings the systemd watchdog, but only while the engine makes progress (a token, or an
/// idle wait on the queue): a stuck engine stops the pings and systemd restarts the daemon.
async fn watchdog(period: Duration, stats: Arc<Stats>) {
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
