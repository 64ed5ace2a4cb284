//! The bounded request queue between the transports and the engine thread.
//!
//! Every transport (the socket, MQTT, HTTP) turns a request into a [`Job`] and calls
//! [`Queue::submit`]. The engine takes the clients' jobs in turn (round-robin over the clients
//! with queued jobs, each client's own in order), so that one client sending many requests
//! cannot make the others wait behind all of them. A full queue, or a client with
//! `max_queued_per_client` jobs already waiting, is answered at once with `busy` instead of
//! making clients wait without bound. Events flow back through the job's own channel to
//! whichever transport made it.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::ServerInfo;
use super::log_escape::Escaped;
use super::metrics::{Metrics, RequestEnd};
use super::protocol::{ErrorCode, Event, GenRequest};

/// One request on its way to the engine.
#[derive(Debug)]
pub struct Job {
    /// The validated request.
    pub request: GenRequest,
    /// Which transport it came from ("socket", "mqtt"): for the log line.
    pub transport: &'static str,
    /// Who sent it: the unit of fairness and of the per-client cap.
    pub client: ClientKey,
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

/// Who a job belongs to, for round-robin and the per-client cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// One socket connection: its peer's uid and the daemon's number for the connection.
    Socket { uid: u32, connection: u64 },
    /// An MQTT reply topic (one device, one reply topic), by its hash: fairness only needs
    /// to tell topics apart, and the key stays `Copy`.
    ReplyTopic(u64),
    /// An HTTP client over TCP, by its address (not its port: one host, one client).
    HttpPeer(std::net::IpAddr),
    /// An HTTP client on the HTTP Unix socket, by its peer's uid.
    HttpUid(u32),
}

impl ClientKey {
    /// The key of the MQTT requests that reply to `topic`.
    pub fn reply_topic(topic: &str) -> Self {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        topic.hash(&mut hasher);
        ClientKey::ReplyTopic(hasher.finish())
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientKey::Socket { uid, connection } => {
                write!(f, "connection {connection} (uid {uid})")
            }
            ClientKey::ReplyTopic(hash) => write!(f, "reply topic {hash:016x}"),
            ClientKey::HttpPeer(ip) => write!(f, "http peer {ip}"),
            ClientKey::HttpUid(uid) => write!(f, "http uid {uid}"),
        }
    }
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
    /// Counters for `GET /metrics`, over every transport.
    pub metrics: Metrics,
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
            metrics: Metrics::default(),
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

/// The transports' end of the queue; cheap to clone. When the last clone is dropped, the
/// engine takes what is still queued and then hears [`Next::Closed`].
#[derive(Debug, Clone)]
pub struct Queue {
    shared: Arc<Shared>,
    /// Closes the queue when the last clone goes.
    _senders: Arc<Senders>,
}

/// The engine thread's end.
pub struct QueueReceiver {
    shared: Arc<Shared>,
}

/// What [`QueueReceiver::next`] found.
#[derive(Debug)]
pub enum Next {
    /// The next client's oldest job (boxed: a job is large, the other variants empty).
    Job(Box<Job>),
    /// Nothing arrived in time.
    Idle,
    /// Every sender is gone and nothing is left.
    Closed,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Signalled on each submit and at close.
    arrived: Condvar,
    /// Jobs waiting at most, over all clients.
    capacity: usize,
    /// Jobs waiting at most, per client.
    per_client: usize,
    stats: Arc<Stats>,
    /// Whether the engine can take jobs now (loading, no model).
    info: Arc<ServerInfo>,
}

impl Shared {
    /// Counts a job that never reaches the engine, and writes its one log line.
    fn refused(&self, job: &Job, code: ErrorCode, message: &str) {
        self.stats
            .metrics
            .record(RequestEnd::refused(job.transport));
        log::info!(
            "request {} via {}: 0 prompt tokens, 0 completion tokens, \
             finish error ({}: {message}); {}",
            Escaped(&job.request.id),
            job.transport,
            code.as_str(),
            job.client,
        );
    }
}

#[derive(Debug, Default)]
struct State {
    /// Clients with waiting jobs, in the order they will be served.
    turns: VecDeque<ClientKey>,
    /// Each client's waiting jobs, oldest first; only clients in `turns` have an entry.
    jobs: HashMap<ClientKey, VecDeque<Job>>,
    /// Jobs waiting, over all clients.
    len: usize,
    closed: bool,
}

#[derive(Debug)]
struct Senders(Arc<Shared>);

impl Drop for Senders {
    fn drop(&mut self) {
        self.0.state.lock().unwrap().closed = true;
        self.0.arrived.notify_all();
    }
}

/// A job the queue could not take, handed back so that its transport can answer it.
#[derive(Debug)]
pub enum SubmitError {
    /// `queue_depth` jobs are already waiting.
    Full(Box<Job>),
    /// This job's client already has `max_queued_per_client` jobs waiting.
    ClientFull(Box<Job>),
    /// The engine thread is gone (shutting down).
    Closed(Box<Job>),
}

impl SubmitError {
    /// The error to answer the job's client with.
    pub fn answer(&self) -> (ErrorCode, &'static str) {
        match self {
            SubmitError::Full(_) => (ErrorCode::Busy, "the queue is full; try again later"),
            SubmitError::ClientFull(_) => (
                ErrorCode::Busy,
                "this client has as many requests queued as it may; wait for one to finish",
            ),
            SubmitError::Closed(_) => (ErrorCode::Internal, "the daemon is shutting down"),
        }
    }
}

/// A queue holding at most `capacity` waiting jobs, at most `per_client` of them from one
/// client.
pub fn queue(
    capacity: usize,
    per_client: usize,
    stats: Arc<Stats>,
    info: Arc<ServerInfo>,
) -> (Queue, QueueReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::default(),
        arrived: Condvar::new(),
        capacity,
        per_client: per_client.min(capacity),
        stats,
        info,
    });
    (
        Queue {
            shared: shared.clone(),
            _senders: Arc::new(Senders(shared.clone())),
        },
        QueueReceiver { shared },
    )
}

impl Queue {
    /// Queues `job`, or hands it back when there is no room. While the model loads (or
    /// without a model) the job is answered at once through its own channel, with the
    /// error saying so, as the engine would answer it.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        let shared = &self.shared;
        if let Some((code, message)) = shared.info.refusal() {
            shared.refused(&job, code, &message);
            let id = job.request.id.clone();
            // A closed channel means the client went away.
            let _ = job.events.send(Event::error(Some(id), code, message));
            return Ok(());
        }
        let mut state = shared.state.lock().unwrap();
        let queued = state.jobs.get(&job.client).map_or(0, VecDeque::len);
        let refused = if state.closed {
            Some(SubmitError::Closed(Box::new(job)))
        } else if state.len >= shared.capacity {
            Some(SubmitError::Full(Box::new(job)))
        } else if queued >= shared.per_client {
            Some(SubmitError::ClientFull(Box::new(job)))
        } else {
            if queued == 0 {
                state.turns.push_back(job.client);
            }
            state.jobs.entry(job.client).or_default().push_back(job);
            state.len += 1;
            shared.stats.waiting.store(state.len, Ordering::Relaxed);
            None
        };
        drop(state);
        let Some(refused) = refused else {
            shared.arrived.notify_one();
            return Ok(());
        };
        let (SubmitError::Full(job) | SubmitError::ClientFull(job) | SubmitError::Closed(job)) =
            &refused;
        let (code, message) = refused.answer();
        shared.refused(job, code, message);
        Err(refused)
    }

    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.shared.stats
    }

    pub fn info(&self) -> &Arc<ServerInfo> {
        &self.shared.info
    }
}

impl QueueReceiver {
    /// The next client's oldest job, waiting at most `timeout` for one.
    pub fn next(&self, timeout: Duration) -> Next {
        let shared = &self.shared;
        let state = shared.state.lock().unwrap();
        let (mut state, _) = shared
            .arrived
            .wait_timeout_while(state, timeout, |s| s.len == 0 && !s.closed)
            .unwrap();
        let Some(client) = state.turns.pop_front() else {
            return if state.closed {
                Next::Closed
            } else {
                Next::Idle
            };
        };
        let jobs = state
            .jobs
            .get_mut(&client)
            .expect("a client in turn has jobs");
        let job = jobs.pop_front().expect("a client in turn has jobs");
        if jobs.is_empty() {
            state.jobs.remove(&client);
        } else {
            state.turns.push_back(client);
        }
        state.len -= 1;
        shared.stats.waiting.store(state.len, Ordering::Relaxed);
        Next::Job(Box::new(job))
    }
}
