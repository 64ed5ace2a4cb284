//! What the MQTT link is doing, for `status`, `health` and the retained status: shared by the
//! poller (which writes it) and every transport (which reads it).

use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The link's state; cheap to read, written on every connect and failure.
#[derive(Debug)]
pub struct MqttState {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    connected: bool,
    last_error: Option<String>,
    /// Successful connects after the first.
    reconnects: u64,
    /// Whether the link has been up once (the first connect is not a reconnect).
    ever_connected: bool,
    /// Since when the link has been down (or since start, before the first connect).
    down_since: Option<(Instant, SystemTime)>,
    /// QoS 0 messages dropped because the dispatcher was behind.
    dropped: u64,
}

/// The `mqtt` object of `status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MqttStatus {
    pub connected: bool,
    /// The last connection error, also after the link came back.
    pub last_error: Option<String>,
    pub reconnects: u64,
    /// Unix time (seconds) at which the link went down; absent while connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down_since: Option<u64>,
    /// Seconds the link has been down; absent while connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down_for_s: Option<u64>,
    /// QoS 0 messages dropped because requests arrived faster than they were taken.
    pub dropped_messages: u64,
}

impl Default for MqttState {
    fn default() -> Self {
        MqttState {
            inner: Mutex::new(Inner {
                connected: false,
                last_error: None,
                reconnects: 0,
                ever_connected: false,
                down_since: Some((Instant::now(), SystemTime::now())),
                dropped: 0,
            }),
        }
    }
}

impl MqttState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is plain data: a panic elsewhere leaves it usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn connected(&self) {
        let mut s = self.lock();
        if s.ever_connected {
            s.reconnects += 1;
        }
        s.ever_connected = true;
        s.connected = true;
        s.down_since = None;
    }

    /// A failed connect or a lost connection; returns whether the link was up until now.
    pub fn failed(&self, error: &str) -> bool {
        let mut s = self.lock();
        let was_up = s.connected;
        s.connected = false;
        s.last_error = Some(error.to_owned());
        if s.down_since.is_none() {
            s.down_since = Some((Instant::now(), SystemTime::now()));
        }
        was_up
    }

    pub fn dropped(&self) {
        self.lock().dropped += 1;
    }

    pub fn is_connected(&self) -> bool {
        self.lock().connected
    }

    pub fn status(&self) -> MqttStatus {
        let s = self.lock();
        MqttStatus {
            connected: s.connected,
            last_error: s.last_error.clone(),
            reconnects: s.reconnects,
            down_since: s
                .down_since
                .map(|(_, wall)| wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())),
            down_for_s: s.down_since.map(|(at, _)| at.elapsed().as_secs()),
            dropped_messages: s.dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connects_failures_and_reconnects_are_counted() {
        let s = MqttState::default();
        let st = s.status();
        assert!(!st.connected && st.down_since.is_some() && st.reconnects == 0);
        assert!(!s.failed("refused"));
        s.connected();
        let st = s.status();
        assert!(st.connected && st.down_since.is_none() && st.reconnects == 0);
        assert_eq!(st.last_error.as_deref(), Some("refused"));
        assert!(s.failed("reset"));
        assert!(!s.is_connected());
        s.connected();
        s.dropped();
        let st = s.status();
        assert_eq!((st.reconnects, st.dropped_messages), (1, 1));
        assert_eq!(st.last_error.as_deref(), Some("reset"));
    }
}
