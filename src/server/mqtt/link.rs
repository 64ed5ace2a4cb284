//! One MQTT connection, MQTT 5 or 3.1.1. rumqttc has a separate client for each protocol;
//! this module hides the difference behind a small API: publish, subscribe, ack, disconnect,
//! and a poll that yields what the transport cares about.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5::{LastWill as LastWill5, PublishProperties};
use tokio::sync::Notify;

/// Everything needed to open the connection, read and checked at boot.
#[derive(Clone)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub v5: bool,
    /// Username and password.
    pub credentials: Option<(String, String)>,
    pub tls: Option<Tls>,
    pub keep_alive: Duration,
    pub qos: u8,
    /// MQTT 5: how long the broker keeps the session while the daemon is away.
    pub session_expiry_s: u32,
    /// Largest payload the transport accepts; MQTT 5 tells the broker so.
    pub max_payload: usize,
    /// The retained message the broker publishes if the connection dies.
    pub will_topic: String,
    pub will_payload: Vec<u8>,
}

/// TLS material, all PEM.
#[derive(Clone)]
pub struct Tls {
    /// The CA certificates that signed the broker's certificate.
    pub ca: Vec<u8>,
    /// The client's certificate and key, for brokers that ask for one.
    pub client_auth: Option<(Vec<u8>, Vec<u8>)>,
}

/// Room for topic and properties on top of the payload in the largest accepted packet.
const PACKET_OVERHEAD: usize = 64 * 1024;
/// Largest packet MQTT can frame: the limit of what the daemon sends.
const MQTT_MAX_PACKET: usize = 268_435_455;
/// MQTT 5: QoS 1 and 2 messages the broker may have in flight to the daemon (unacknowledged)
/// at once. The daemon acknowledges a request once it is queued, so this bounds what waits
/// between the broker and the queue.
pub const RECEIVE_MAXIMUM: u16 = 32;
/// Requests queued in rumqttc's channel before `publish` waits.
const CHANNEL_CAPACITY: usize = 64;

/// The handle for publishing; cheap to clone.
#[derive(Clone)]
pub struct Client {
    protocol: ClientOf,
    unacked: Arc<Unacked>,
}

#[derive(Clone)]
enum ClientOf {
    V5(v5::AsyncClient, v5::mqttbytes::QoS),
    V4(rumqttc::AsyncClient, rumqttc::QoS),
}

/// The connection itself, driven by [`EventLoop::poll`].
pub struct EventLoop {
    protocol: EventLoopOf,
    unacked: Arc<Unacked>,
}

enum EventLoopOf {
    V5(Box<v5::EventLoop>),
    V4(Box<rumqttc::EventLoop>),
}

/// Publishes at QoS 1 or 2 that the broker has not acknowledged yet. A client that closes
/// its socket before they are acknowledged makes the broker's acks fail: mosquitto then
/// drops the connection as broken (logging "out of memory"), loses the publishes it had
/// not read yet, such as a request's final event, and sends the last will.
#[derive(Default)]
struct Unacked {
    count: AtomicI64,
    none_left: Notify,
}

impl Unacked {
    fn sent(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    fn acked(&self) {
        // An ack can overtake the count of its own publish: the count may dip below zero.
        if self.count.fetch_sub(1, Ordering::SeqCst) <= 1 {
            self.none_left.notify_waiters();
        }
    }

    fn forget(&self) {
        self.count.store(0, Ordering::SeqCst);
        self.none_left.notify_waiters();
    }

    async fn settled(&self) {
        loop {
            // Created before the check, so that an ack in between still wakes it.
            let woken = self.none_left.notified();
            if self.count.load(Ordering::SeqCst) <= 0 {
                return;
            }
            woken.await;
        }
    }
}

/// The connection's event loop is gone: nothing can be sent any more.
#[derive(Debug)]
pub struct Gone;

/// What a poll yields.
pub enum Notice {
    /// A CONNACK: the connection is up.
    Connected { session_present: bool },
    /// A message on a subscribed topic.
    Message(Box<Message>),
    /// The DISCONNECT packet went out.
    Disconnected,
    /// Anything else (acks, pings).
    Other,
}

/// An incoming PUBLISH.
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    /// A redelivery of a message the daemon may have seen before.
    pub dup: bool,
    /// Sent because the topic holds a retained message, not because someone published now.
    pub retain: bool,
    /// At most once: nothing to acknowledge, and the broker never sends it again.
    pub at_most_once: bool,
    /// MQTT 5 properties.
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    /// Seconds until the message expires.
    pub expiry_s: Option<u32>,
    /// The packet, to acknowledge once handled.
    packet: Packet,
}

enum Packet {
    V5(v5::mqttbytes::v5::Publish),
    V4(rumqttc::Publish),
}

/// Creates the client and its event loop; nothing connects before the first poll.
pub fn new(s: &Settings) -> (Client, EventLoop) {
    let transport = match &s.tls {
        Some(t) => rumqttc::Transport::tls(t.ca.clone(), t.client_auth.clone(), None),
        None => rumqttc::Transport::tcp(),
    };
    if s.v5 {
        let mut o = v5::MqttOptions::new(&s.client_id, &s.host, s.port);
        o.set_keep_alive(s.keep_alive)
            .set_clean_start(false)
            .set_session_expiry_interval(Some(s.session_expiry_s))
            // The broker drops bigger messages instead of sending them.
            .set_max_packet_size(Some((s.max_payload + PACKET_OVERHEAD) as u32))
            .set_receive_maximum(Some(RECEIVE_MAXIMUM))
            .set_manual_acks(true)
            .set_transport(transport)
            .set_last_will(LastWill5::new(
                &s.will_topic,
                s.will_payload.clone(),
                qos5(s.qos),
                true,
                None,
            ));
        if let Some((user, password)) = &s.credentials {
            o.set_credentials(user, password);
        }
        let (client, eventloop) = v5::AsyncClient::new(o, CHANNEL_CAPACITY);
        pair(
            ClientOf::V5(client, qos5(s.qos)),
            EventLoopOf::V5(Box::new(eventloop)),
        )
    } else {
        let mut o = rumqttc::MqttOptions::new(&s.client_id, &s.host, s.port);
        o.set_keep_alive(s.keep_alive)
            .set_clean_session(false)
            // 3.1.1 cannot tell the broker: a bigger packet breaks the connection when its
            // header arrives, before its payload is read (see `EventLoop::poll`).
            .set_max_packet_size(s.max_payload + PACKET_OVERHEAD, MQTT_MAX_PACKET)
            .set_manual_acks(true)
            .set_transport(transport)
            .set_last_will(rumqttc::LastWill::new(
                &s.will_topic,
                s.will_payload.clone(),
                qos4(s.qos),
                true,
            ));
        if let Some((user, password)) = &s.credentials {
            o.set_credentials(user, password);
        }
        let (client, eventloop) = rumqttc::AsyncClient::new(o, CHANNEL_CAPACITY);
        pair(
            ClientOf::V4(client, qos4(s.qos)),
            EventLoopOf::V4(Box::new(eventloop)),
        )
    }
}

fn pair(client: ClientOf, eventloop: EventLoopOf) -> (Client, EventLoop) {
    let unacked = Arc::new(Unacked::default());
    (
        Client {
            protocol: client,
            unacked: unacked.clone(),
        },
        EventLoop {
            protocol: eventloop,
            unacked,
        },
    )
}

fn qos5(q: u8) -> v5::mqttbytes::QoS {
    match q {
        0 => v5::mqttbytes::QoS::AtMostOnce,
        1 => v5::mqttbytes::QoS::AtLeastOnce,
        _ => v5::mqttbytes::QoS::ExactlyOnce,
    }
}

fn qos4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

impl Client {
    /// Queues a publish at the configured QoS; waits while rumqttc's channel is full (as it
    /// is while the broker is away). The correlation data goes out on MQTT 5 only.
    pub async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
        correlation_data: Option<Bytes>,
    ) -> Result<(), Gone> {
        let acknowledged = match &self.protocol {
            ClientOf::V5(c, qos) => {
                let properties = PublishProperties {
                    correlation_data,
                    ..PublishProperties::default()
                };
                c.publish_with_properties(topic, *qos, retain, payload, properties)
                    .await
                    .map_err(|_| Gone)?;
                *qos != v5::mqttbytes::QoS::AtMostOnce
            }
            ClientOf::V4(c, qos) => {
                c.publish(topic, *qos, retain, payload)
                    .await
                    .map_err(|_| Gone)?;
                *qos != rumqttc::QoS::AtMostOnce
            }
        };
        if acknowledged {
            self.unacked.sent();
        }
        Ok(())
    }

    /// Subscribes to the request topics. MQTT 5 asks the broker not to send retained
    /// messages (a retained request would run again at every connect); 3.1.1 cannot ask, so
    /// the dispatcher drops messages with the retain flag.
    pub async fn subscribe(&self, filters: &[String]) -> Result<(), Gone> {
        for filter in filters {
            match &self.protocol {
                ClientOf::V5(c, qos) => {
                    let filter = v5::mqttbytes::v5::Filter {
                        path: filter.clone(),
                        qos: *qos,
                        nolocal: false,
                        preserve_retain: false,
                        retain_forward_rule: v5::mqttbytes::v5::RetainForwardRule::Never,
                    };
                    c.subscribe_many([filter]).await.map_err(|_| Gone)?
                }
                ClientOf::V4(c, qos) => c.subscribe(filter, *qos).await.map_err(|_| Gone)?,
            }
        }
        Ok(())
    }

    /// Drops subscriptions an earlier configuration left in the persistent session.
    pub async fn unsubscribe(&self, filters: &[String]) -> Result<(), Gone> {
        for filter in filters {
            match &self.protocol {
                ClientOf::V5(c, _) => c.unsubscribe(filter).await.map_err(|_| Gone)?,
                ClientOf::V4(c, _) => c.unsubscribe(filter).await.map_err(|_| Gone)?,
            }
        }
        Ok(())
    }

    /// Acknowledges a handled message: until then the broker would deliver it again.
    pub async fn ack(&self, message: &Message) -> Result<(), Gone> {
        match (&self.protocol, &message.packet) {
            (ClientOf::V5(c, _), Packet::V5(p)) => c.ack(p).await.map_err(|_| Gone),
            (ClientOf::V4(c, _), Packet::V4(p)) => c.ack(p).await.map_err(|_| Gone),
            _ => unreachable!("a message is acked on the connection it came from"),
        }
    }

    /// Waits until the broker has acknowledged every publish queued so far.
    pub async fn all_acked(&self) {
        self.unacked.settled().await;
    }

    pub async fn disconnect(&self) -> Result<(), Gone> {
        match &self.protocol {
            ClientOf::V5(c, _) => c.disconnect().await.map_err(|_| Gone),
            ClientOf::V4(c, _) => c.disconnect().await.map_err(|_| Gone),
        }
    }
}

/// Why the connection is down.
#[derive(Debug)]
pub struct LinkError {
    pub text: String,
    /// The broker sent a packet above the limit.
    pub oversize: bool,
}

impl EventLoop {
    /// The next event; an error means the connection is down (the next poll reconnects).
    pub async fn poll(&mut self) -> Result<Notice, LinkError> {
        let notice = match &mut self.protocol {
            EventLoopOf::V5(l) => {
                use rumqttc::Outgoing;
                use v5::Event;
                use v5::mqttbytes::v5::Packet as P;
                let event = l.poll().await.map_err(|e| {
                    use v5::{ConnectionError as C, StateError as S, mqttbytes::Error as M};
                    let oversize = matches!(
                        e,
                        C::MqttState(S::Deserialization(M::PayloadSizeLimitExceeded { .. }))
                    );
                    LinkError {
                        text: e.to_string(),
                        oversize,
                    }
                })?;
                match event {
                    Event::Incoming(P::ConnAck(c)) => Notice::Connected {
                        session_present: c.session_present,
                    },
                    Event::Incoming(P::Publish(p)) => {
                        let props = p.properties.clone().unwrap_or_default();
                        Notice::Message(Box::new(Message {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.clone(),
                            dup: p.dup,
                            retain: p.retain,
                            at_most_once: p.qos == v5::mqttbytes::QoS::AtMostOnce,
                            response_topic: props.response_topic,
                            correlation_data: props.correlation_data,
                            expiry_s: props.message_expiry_interval,
                            packet: Packet::V5(p),
                        }))
                    }
                    Event::Outgoing(Outgoing::Disconnect) => Notice::Disconnected,
                    Event::Incoming(P::PubAck(_) | P::PubComp(_)) => {
                        self.unacked.acked();
                        Notice::Other
                    }
                    _ => Notice::Other,
                }
            }
            EventLoopOf::V4(l) => {
                use rumqttc::{Event, Outgoing, Packet as P};
                let event = l.poll().await.map_err(|e| {
                    use rumqttc::{ConnectionError as C, StateError as S, mqttbytes::Error as M};
                    let oversize = matches!(
                        e,
                        C::MqttState(S::Deserialization(M::PayloadSizeLimitExceeded(_)))
                    );
                    LinkError {
                        text: e.to_string(),
                        oversize,
                    }
                })?;
                match event {
                    Event::Incoming(P::ConnAck(c)) => Notice::Connected {
                        session_present: c.session_present,
                    },
                    Event::Incoming(P::Publish(p)) => Notice::Message(Box::new(Message {
                        topic: p.topic.clone(),
                        payload: p.payload.clone(),
                        dup: p.dup,
                        retain: p.retain,
                        at_most_once: p.qos == rumqttc::QoS::AtMostOnce,
                        response_topic: None,
                        correlation_data: None,
                        expiry_s: None,
                        packet: Packet::V4(p),
                    })),
                    Event::Outgoing(Outgoing::Disconnect) => Notice::Disconnected,
                    Event::Incoming(P::PubAck(_) | P::PubComp(_)) => {
                        self.unacked.acked();
                        Notice::Other
                    }
                    _ => Notice::Other,
                }
            }
        };
        if let Notice::Connected { session_present } = notice {
            self.set_clean_session(false);
            if !session_present {
                // rumqttc dropped the publishes of the old session: no ack will come.
                self.unacked.forget();
            }
        }
        Ok(notice)
    }

    /// Whether the next connect starts a new session, dropping what the broker holds for
    /// the daemon. Used once after an oversize packet: in the old session the broker would
    /// send it again at every reconnect, and the connection would break every time.
    pub fn set_clean_session(&mut self, clean: bool) {
        match &mut self.protocol {
            EventLoopOf::V5(l) => {
                l.options.set_clean_start(clean);
            }
            EventLoopOf::V4(l) => {
                l.mqtt_options.set_clean_session(clean);
            }
        }
    }
}
