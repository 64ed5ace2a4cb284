//! Requests from MQTT messages into the queue, and each request's events back to where its
//! client listens: the MQTT 5 response topic (with the correlation data), else `reply_to`,
//! provided that topic is below one of `mqtt.reply_prefixes` (else nothing is published and
//! the refusal is logged). Client strings (topics, ids) are logged escaped (`{:?}`), so that
//! a newline in them cannot forge a log line.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;

use super::Backlog;
use super::link::{Client, Message};
use super::throttle::{LogBudget, suppressed_note};
use super::topic::ReplyPolicy;
use super::wire;
use crate::config::Config;
use crate::server::ServerInfo;
use crate::server::protocol::{Command, ErrorCode, Event, GenRequest, Incoming};
use crate::server::queue::{CancelToken, ClientKey, Job, Queue};
use crate::server::shutdown::Shutdown;

/// Requests running or queued, by (reply topic, id): ids are the clients' own, so two
/// clients may both use "1"; a client cancels by sending `{"cancel": ID}` with its topic.
type InFlight = Arc<Mutex<HashMap<(String, String), CancelToken>>>;

/// Where the replies of one message go.
#[derive(Debug)]
struct Target {
    topic: Option<String>,
    /// MQTT 5 correlation data, copied into every reply.
    correlation_data: Option<Bytes>,
    /// The envelope's `correlation_id`, echoed in every reply.
    correlation_id: Option<Value>,
}

/// Takes messages one at a time, in arrival order.
pub struct Dispatcher {
    client: Client,
    /// Dropped when the dispatcher ends at shutdown.
    queue: Queue,
    /// Limits and defaults for parsing requests.
    config: Arc<Config>,
    /// What `status` reports about the model.
    info: Arc<ServerInfo>,
    in_flight: InFlight,
    /// Where replies may go.
    policy: ReplyPolicy,
    /// Lines about refused messages, which a hostile client can send without end.
    refusals_log: Mutex<LogBudget>,
    /// Cloned into each reply forwarder: shutdown knows they are all done when the
    /// receiver sees every clone dropped.
    forwarders: mpsc::Sender<()>,
}

impl Dispatcher {
    pub fn new(
        client: Client,
        queue: Queue,
        config: Arc<Config>,
        info: Arc<ServerInfo>,
        policy: ReplyPolicy,
        forwarders: mpsc::Sender<()>,
    ) -> Self {
        Dispatcher {
            client,
            queue,
            config,
            info,
            in_flight: InFlight::default(),
            policy,
            refusals_log: Mutex::new(LogBudget::new(20, Duration::from_secs(10))),
            forwarders,
        }
    }

    /// Logs a refused message, at most 20 lines per 10 s.
    fn log_refusal(&self, what: std::fmt::Arguments<'_>) {
        let allowed = self.refusals_log.lock().unwrap().take(Instant::now());
        if let Some(n) = allowed {
            log::warn!("mqtt: {what}{}", suppressed_note(n));
        }
    }

    /// Handles messages until shutdown. A message is acknowledged once handled (queued or
    /// answered), so that one that arrives during shutdown stays with the broker for the
    /// next session.
    pub async fn run(
        self,
        mut messages: mpsc::Receiver<Box<Message>>,
        backlog: Arc<Backlog>,
        mut shutdown: Shutdown,
    ) {
        loop {
            let message = tokio::select! {
                m = messages.recv() => m,
                _ = shutdown.recv() => None,
            };
            let Some(message) = message else { return };
            backlog.take(message.payload.len());
            if message.retain {
                // A retained request would run again at every connect: refused for good.
                self.log_refusal(format_args!(
                    "ignored a retained message on {:?}: requests must not be retained",
                    message.topic
                ));
            } else {
                self.handle(&message).await;
            }
            if self.client.ack(&message).await.is_err() {
                return;
            }
        }
    }

    async fn handle(&self, m: &Message) {
        let (envelope, parsed) = wire::parse(&m.payload, &self.config);
        // The response topic comes first; `reply_to` serves MQTT 3.1.1 clients.
        let topic = match m.response_topic.clone().or(envelope.reply_to) {
            Some(t) => match self.policy.permit(&t) {
                Ok(()) => Some(t),
                Err(e) => {
                    let id = match &parsed {
                        Ok(Incoming::Generate(r)) => Some(r.id.as_str()),
                        Ok(Incoming::Cancel(id)) => Some(id.as_str()),
                        Ok(Incoming::Command(_, id)) => id.as_deref(),
                        Err(r) => r.id.as_deref(),
                    };
                    self.log_refusal(format_args!(
                        "a message on {:?} (id {id:?}) asks for replies on {t:?}: {e}; \
                         nothing is published there and the message is dropped",
                        m.topic
                    ));
                    return;
                }
            },
            None => None,
        };
        let target = Target {
            topic,
            correlation_data: m.correlation_data.clone(),
            correlation_id: envelope.correlation_id,
        };
        match parsed {
            Err(rejection) => self.answer(&target, rejection.event(), &m.topic).await,
            Ok(Incoming::Generate(request)) => self.submit(*request, target, m).await,
            Ok(Incoming::Cancel(id)) => {
                let key = (target.topic.clone().unwrap_or_default(), id.clone());
                let token = self.in_flight.lock().unwrap().get(&key).cloned();
                match token {
                    Some(t) => t.cancel(),
                    None => {
                        let msg = format!("no request {id:?} replying to this topic is in flight");
                        let event = Event::error(Some(id), ErrorCode::BadRequest, msg);
                        self.answer(&target, event, &m.topic).await;
                    }
                }
            }
            Ok(Incoming::Command(Command::Status, id)) => {
                let status = crate::server::status(&self.info, &self.queue);
                self.answer(
                    &target,
                    Event::Status {
                        id,
                        status: Box::new(status),
                    },
                    &m.topic,
                )
                .await;
            }
            Ok(Incoming::Command(Command::Health, id)) => {
                let health = crate::server::health(&self.queue);
                self.answer(&target, Event::Health { id, health }, &m.topic)
                    .await;
            }
        }
    }

    /// Sends a single reply (an error, a status), or logs it when there is nowhere to send.
    async fn answer(&self, target: &Target, event: Event, from: &str) {
        let Some(topic) = &target.topic else {
            let event = String::from_utf8_lossy(&event.to_line())
                .trim_end()
                .to_owned();
            self.log_refusal(format_args!(
                "a message on {from:?} has no response topic and no reply_to, \
                 nowhere to send {event}"
            ));
            return;
        };
        let payload = wire::reply(&event, 0, target.correlation_id.as_ref());
        let _ = self
            .client
            .publish(topic, payload, false, target.correlation_data.clone())
            .await;
    }

    async fn submit(&self, request: GenRequest, target: Target, m: &Message) {
        let id = request.id.clone();
        let Some(topic) = target.topic.clone() else {
            self.log_refusal(format_args!(
                "request {id:?} on {:?} has no response topic and no reply_to: \
                 nowhere to reply, dropped",
                m.topic
            ));
            return;
        };
        // Fairness: this reply topic is the client's key (one device, one reply topic).
        let key = (topic, id.clone());
        if self.in_flight.lock().unwrap().contains_key(&key) {
            if m.dup {
                log::debug!("mqtt: request {id:?} delivered again while in flight; ignored");
                return;
            }
            let msg = format!("a request {id:?} replying to this topic is already in flight");
            let event = Event::error(Some(id), ErrorCode::BadRequest, msg);
            return self.answer(&target, event, &m.topic).await;
        }
        let arrived = Instant::now();
        let (events, events_rx) = mpsc::unbounded_channel();
        let cancel = CancelToken::default();
        let job = Job {
            request,
            transport: "mqtt",
            client: ClientKey::reply_topic(&key.0),
            events,
            cancel: cancel.clone(),
            arrived,
            expires: m
                .expiry_s
                .map(|s| arrived + Duration::from_secs(u64::from(s))),
        };
        self.in_flight.lock().unwrap().insert(key.clone(), cancel);
        if let Err(e) = self.queue.submit(job) {
            self.in_flight.lock().unwrap().remove(&key);
            let (code, msg) = e.answer();
            let event = Event::error(Some(id), code, msg);
            return self.answer(&target, event, &m.topic).await;
        }
        let forward = Forward {
            client: self.client.clone(),
            target,
            in_flight: self.in_flight.clone(),
            key,
            _done: self.forwarders.clone(),
        };
        tokio::spawn(forward.run(events_rx));
    }
}

/// Publishes one request's events until its final one.
struct Forward {
    client: Client,
    target: Target,
    in_flight: InFlight,
    /// This request's entry in `in_flight`; its topic is the reply topic.
    key: (String, String),
    /// Held until the last event is out (see [`Dispatcher::forwarders`]).
    _done: mpsc::Sender<()>,
}

impl Forward {
    async fn run(self, mut events: mpsc::UnboundedReceiver<Event>) {
        let mut seq = 0;
        let mut next = None;
        loop {
            let event = match next.take() {
                Some(e) => e,
                None => match events.recv().await {
                    Some(e) => e,
                    None => break,
                },
            };
            // Tokens that piled up while the last publish went out travel as one chunk.
            let event = match event {
                Event::Token { id, mut token } => {
                    while let Ok(more) = events.try_recv() {
                        match more {
                            Event::Token { token: t, .. } => token.push_str(&t),
                            other => {
                                next = Some(other);
                                break;
                            }
                        }
                    }
                    Event::Token { id, token }
                }
                other => other,
            };
            let payload = wire::reply(&event, seq, self.target.correlation_id.as_ref());
            seq += 1;
            let sent = self
                .client
                .publish(
                    &self.key.0,
                    payload,
                    false,
                    self.target.correlation_data.clone(),
                )
                .await;
            if sent.is_err() {
                // The connection is gone for good (shutdown): dropping `events` stops the job.
                break;
            }
        }
        self.in_flight.lock().unwrap().remove(&self.key);
    }
}
