//! The bounded request queue between the transports and the engine thread.
//!
//! Every transport (the socket, MQTT) turns a request into a [`Job`] and calls
//! [`Queue::submit`]; first come, first served, whatever the transport. A full queue answers at
//! once with `busy` instead of making clients wait without bound. Events flow back through the
//! job's own channel to whichever transport made it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::protocol::{Event, GenRequest};

/// One request on its way to the engine.
#[derive(Debug)]
pub struct Job {
    /// The validated request.
    pub request: GenRequest,
    /// Which transport it came from ("socket", "mqtt"): for the log line.
    pub transport: &'static str,
    /// Where this request's events go. The engine thread sends without blocking; the
    /// transport's task writes them out. A closed channel means the client is gone.
    pub events: UnboundedSender<Event>,
    /// Set by the transport (cancel message, client gone) to stop the request within a token.
    pub cancel: CancelToken,
    /// When the request arrived: queue time, time to first token and the timeout count from it.
    pub arrived: Instant,
    /// A request not started by then is answered `expired` (MQTT 5 message expiry).
    pub expires: Option<Instant>,
}

/// A flag shared by a job's transport and the engine thread.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Whether both are the same request's token.
    pub fn same_as(&self, other: &CancelToken) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// What the engine thread publishes for `status`, health and the watchdog.
#[derive(Debug)]
pub struct Stats {
    /// When the daemon started: uptime, and the time base of `heartbeat_ms`.
    pub started: Instant,
    /// Jobs submitted and not yet taken by the engine.
    pub waiting: AtomicUsize,
    /// Whether the engine is generating.
    pub busy: AtomicBool,
    /// Requests finished.
    pub requests: AtomicU64,
    /// Tokens per second of the last request, as f64 bits.
    pub last_tokens_per_s: AtomicU64,
    /// Milliseconds after `started` at which the engine last made progress (a token, a
    /// finished request, or a wait on an empty queue): the watchdog pings only while this moves.
    pub heartbeat_ms: AtomicU64,
    /// Set at shutdown: the engine cancels the running job and every queued one.
    pub shutting_down: AtomicBool,
}

impl Stats {
    pub fn new() -> Self {
        Stats {
            started: Instant::now(),
            waiting: AtomicUsize::new(0),
            busy: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            last_tokens_per_s: AtomicU64::new(0f64.to_bits()),
            heartbeat_ms: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Records that the engine is alive now.
    pub fn beat(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    /// How long ago the engine last made progress.
    pub fn since_heartbeat(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed)))
    }

    pub fn tokens_per_s(&self) -> f64 {
        f64::from_bits(self.last_tokens_per_s.load(Ordering::Relaxed))
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

/// The transports' end of the queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct Queue {
    /// Bounded to `queue_depth`: `try_send` never blocks the runtime.
    tx: SyncSender<Job>,
    /// Shared with the engine thread.
    stats: Arc<Stats>,
    /// The bound, for `status`.
    capacity: usize,
}

/// The engine thread's end.
pub struct QueueReceiver {
    rx: Receiver<Job>,
    stats: Arc<Stats>,
}

/// A job the queue could not take, handed back so that its transport can answer it.
#[derive(Debug)]
pub enum SubmitError {
    /// `queue_depth` jobs are already waiting.
    Full(Box<Job>),
    /// The engine thread is gone (shutting down).
    Closed(Box<Job>),
}

pub fn queue(capacity: usize, stats: Arc<Stats>) -> (Queue, QueueReceiver) {
    let (tx, rx) = sync_channel(capacity);
    (
        Queue {
            tx,
            stats: stats.clone(),
            capacity,
        },
        QueueReceiver { rx, stats },
    )
}

impl Queue {
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        // Counted before sending so that the engine's decrement never comes first.
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        let result = self.tx.try_send(job);
        if let Err(e) = &result {
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            let (TrySendError::Full(job) | TrySendError::Disconnected(job)) = e;
            // The request's one log line: it never reaches the engine.
            log::info!(
                "request {} via {}: 0 prompt tokens, 0 completion tokens, finish error ({})",
                job.request.id,
                job.transport,
                match e {
                    TrySendError::Full(_) => "busy: the queue is full",
                    TrySendError::Disconnected(_) => "internal: shutting down",
                }
            );
        }
        result.map_err(|e| match e {
            TrySendError::Full(job) => SubmitError::Full(Box::new(job)),
            TrySendError::Disconnected(job) => SubmitError::Closed(Box::new(job)),
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}

impl QueueReceiver {
    /// The next job, waiting at most `timeout`; `Err(true)` when every sender is gone.
    pub fn next(&self, timeout: Duration) -> Result<Job, bool> {
        match self.rx.recv_timeout(timeout) {
            Ok(job) => {
                self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
                Ok(job)
            }
            Err(RecvTimeoutError::Timeout) => Err(false),
            Err(RecvTimeoutError::Disconnected) => Err(true),
        }
    }
}
