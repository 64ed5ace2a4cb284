//! The event side of the wire protocol: everything the daemon sends, one JSON object per
//! socket line (or per MQTT message).

use serde::Serialize;

use crate::engine::FinishReason;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Busy,
    TooLong,
    /// An MQTT 5 request whose message expiry passed before the engine could start it.
    Expired,
    Internal,
    /// The model is still loading.
    Loading,
    /// No model is configured (or `model_dir` holds no single GGUF file).
    NoModel,
    /// The connection was closed by the daemon (idle, a line too slow, room for another).
    Closed,
}

impl ErrorCode {
    /// The code as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Busy => "busy",
            ErrorCode::TooLong => "too_long",
            ErrorCode::Expired => "expired",
            ErrorCode::Internal => "internal",
            ErrorCode::Loading => "loading",
            ErrorCode::NoModel => "no_model",
            ErrorCode::Closed => "closed",
        }
    }
}

/// Everything the daemon sends: each is one JSON line.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Event {
    Token {
        id: String,
        token: String,
    },
    Done(Box<Done>),
    Error {
        id: Option<String>,
        error: ErrorBody,
    },
    Status {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        status: Box<Status>,
    },
    Health {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        health: &'static str,
    },
}

impl Event {
    pub fn error(id: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Event::Error {
            id,
            error: ErrorBody {
                code,
                message: message.into(),
            },
        }
    }

    /// Whether this is the last event of its request (its final answer or its error).
    pub fn is_final(&self) -> bool {
        matches!(self, Event::Done(_) | Event::Error { .. })
    }

    /// The event as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("events always serialize");
        line.push(b'\n');
        line
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// The final event of a request.
#[derive(Debug, Clone, Serialize)]
pub struct Done {
    pub id: String,
    pub done: bool,
    pub text: String,
    /// "stop" (an end token or a stop string), "length" (`max_tokens`), "context_full"
    /// or "cancelled".
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
}

#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    /// From arrival until the engine took the request.
    pub queue_ms: f64,
    /// From arrival until the first token.
    pub ttft_ms: f64,
    /// Generation speed after the first token.
    pub tokens_per_s: f64,
}

/// The reply to `{"cmd": "status"}`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// "loading", "no_model" or "ready" (not `state`: MQTT's retained status has its own).
    pub model_state: &'static str,
    /// What is wrong when `model_state` is "no_model".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The model's file name (known while it loads).
    pub model: String,
    pub kernel: String,
    /// The output projection's precision ("f16", "q8_0").
    pub head: String,
    pub threads: usize,
    pub n_ctx: usize,
    /// Requests waiting behind the running one.
    pub queue_depth: usize,
    pub queue_capacity: usize,
    /// Whether a request is being generated.
    pub busy: bool,
    pub requests: u64,
    /// Generation speed of the last request.
    pub tokens_per_s: f64,
    pub uptime_s: u64,
    /// The MQTT link, when MQTT is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<crate::server::mqtt::MqttStatus>,
    /// `power` and `joules_per_token` (README "Power"); boxed, so that `Event` stays small.
    #[serde(flatten)]
    pub power: Option<Box<crate::power::daemon::PowerReport>>,
}

/// A ready, idle daemon's status (2 threads, 512 tokens of context, 8 queue slots, 5
/// requests served at 1.5 tokens/s), for the tests of the status's encodings.
#[cfg(test)]
pub(crate) fn example_status() -> Status {
    Status {
        model_state: "ready",
        message: None,
        model: "m.gguf".into(),
        kernel: "i2s".into(),
        head: "f16".into(),
        threads: 2,
        n_ctx: 512,
        queue_depth: 0,
        queue_capacity: 8,
        busy: false,
        requests: 5,
        tokens_per_s: 1.5,
        uptime_s: 9,
        mqtt: None,
        power: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_as_documented() {
        let e = Event::Token {
            id: "r1".into(),
            token: "Hel".into(),
        };
        assert_eq!(
            String::from_utf8(e.to_line()).unwrap(),
            "{\"id\":\"r1\",\"token\":\"Hel\"}\n"
        );
        let e = Event::error(Some("r1".into()), ErrorCode::TooLong, "m");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"id":"r1","error":{"code":"too_long","message":"m"}}"#
        );
    }
}
