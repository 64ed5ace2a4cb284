//! The wire protocol, shared by every transport: one JSON object per socket line (or per
//! MQTT message) in, JSON events out.
//!
//! Parsing is strict: unknown fields, wrong types and out-of-range values are refused with a
//! `bad_request` error that names the field, so a client's typo never goes unnoticed.

use serde::{Deserialize, Serialize};

use crate::chat::{Message, Role};
use crate::config::Config;
use crate::sampler::SamplerConfig;

/// Longest request id, in bytes.
const MAX_ID_BYTES: usize = 128;
/// Most stop strings per request, and the longest one in bytes.
const MAX_STOPS: usize = 8;
const MAX_STOP_BYTES: usize = 256;

/// One incoming line, once parsed.
#[derive(Debug)]
pub enum Incoming {
    /// Generate text.
    Generate(Box<GenRequest>),
    /// Stop the named request of this client.
    Cancel(String),
    /// `{"cmd": ...}`, with the optional id to echo.
    Command(Command, Option<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Status,
    Health,
}

/// A generation request as it arrives; every field but `id` is optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRequest {
    id: String,
    prompt: Option<String>,
    system: Option<String>,
    messages: Option<Vec<WireMessage>>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Vec<String>>,
    stream: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireMessage {
    role: String,
    content: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireCancel {
    cancel: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireCommand {
    cmd: Command,
    id: Option<String>,
}

/// A validated generation request, with the config's defaults filled in.
#[derive(Debug, Clone)]
pub struct GenRequest {
    /// The client's name for the request, echoed in each of its events.
    pub id: String,
    /// The conversation, rendered by the model's chat template on the engine thread.
    pub messages: Vec<Message>,
    /// Tokens to generate at most.
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Generation stops before the first of these strings, which is left out of the text.
    pub stop: Vec<String>,
    /// Send each token as it comes; otherwise only the final event.
    pub stream: bool,
}

/// A request that cannot be served, and the id to answer it under (when one was readable).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub id: Option<String>,
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    pub fn new(id: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection {
            id,
            code,
            message: message.into(),
        }
    }

    pub fn event(self) -> Event {
        Event::error(self.id, self.code, self.message)
    }
}

/// Parses and validates one line (without its newline).
pub fn parse_line(line: &[u8], config: &Config) -> Result<Incoming, Rejection> {
    parse_value(parse_json(line)?, config)
}

/// The JSON value of a line or message, which must be valid UTF-8.
pub fn parse_json(line: &[u8]) -> Result<serde_json::Value, Rejection> {
    let bad = |msg: String| Rejection::new(None, ErrorCode::BadRequest, msg);
    let text =
        std::str::from_utf8(line).map_err(|e| bad(format!("the line is not valid UTF-8: {e}")))?;
    serde_json::from_str(text).map_err(|e| bad(format!("invalid JSON: {e}")))
}

/// Validates a parsed request (MQTT takes its own envelope fields out first).
pub fn parse_value(value: serde_json::Value, config: &Config) -> Result<Incoming, Rejection> {
    let bad = |id: Option<String>, msg: String| Rejection::new(id, ErrorCode::BadRequest, msg);
    let Some(object) = value.as_object() else {
        return Err(bad(None, "a request must be a JSON object".into()));
    };
    // Answer under the request's id whenever it has a readable one.
    let id = object
        .get("id")
        .and_then(|v| v.as_str())
        .map(|s| s.chars().take(MAX_ID_BYTES).collect::<String>());
    if object.contains_key("cmd") {
        let c: WireCommand =
            serde_json::from_value(value).map_err(|e| bad(id.clone(), e.to_string()))?;
        return Ok(Incoming::Command(c.cmd, c.id));
    }
    if object.contains_key("cancel") {
        let c: WireCancel =
            serde_json::from_value(value).map_err(|e| bad(id.clone(), e.to_string()))?;
        return Ok(Incoming::Cancel(c.cancel));
    }
    let wire: WireRequest =
        serde_json::from_value(value).map_err(|e| bad(id.clone(), e.to_string()))?;
    validate(wire, config)
        .map(|r| Incoming::Generate(Box::new(r)))
        .map_err(|msg| bad(id, msg))
}

fn validate(w: WireRequest, config: &Config) -> Result<GenRequest, String> {
    if w.id.is_empty() || w.id.len() > MAX_ID_BYTES {
        return Err(format!("id must have 1 to {MAX_ID_BYTES} bytes"));
    }
    let system = w.system.unwrap_or_else(|| config.system_prompt.clone());
    let messages = match (w.prompt, w.messages) {
        (Some(_), Some(_)) => return Err("give either prompt or messages, not both".into()),
        (None, None) => return Err("a request needs prompt or messages".into()),
        (Some(prompt), None) => {
            let mut m = Vec::new();
            if !system.is_empty() {
                m.push(Message::new(Role::System, system));
            }
            m.push(Message::new(Role::User, prompt));
            m
        }
        (None, Some(wire)) => {
            if wire.is_empty() {
                return Err("messages must not be empty".into());
            }
            let mut m = Vec::with_capacity(wire.len() + 1);
            let has_system = wire.iter().any(|w| w.role == "system");
            if !has_system && !system.is_empty() {
                m.push(Message::new(Role::System, system));
            }
            for (i, w) in wire.into_iter().enumerate() {
                let role = match w.role.as_str() {
                    "system" => Role::System,
                    "user" => Role::User,
                    "assistant" => Role::Assistant,
                    other => {
                        return Err(format!(
                            "messages[{i}].role is {other:?}: it must be system, user or assistant"
                        ));
                    }
                };
                m.push(Message::new(role, w.content));
            }
            m
        }
    };
    let max_new = config.limits.max_new_tokens;
    let max_tokens = w.max_tokens.unwrap_or(max_new);
    if max_tokens == 0 || max_tokens > max_new {
        return Err(format!(
            "max_tokens is {max_tokens}: it must be between 1 and {max_new}"
        ));
    }
    let d = &config.sampling;
    let sampler = SamplerConfig {
        temperature: w.temperature.unwrap_or(d.temperature),
        top_k: w.top_k.unwrap_or(d.top_k),
        top_p: w.top_p.unwrap_or(d.top_p),
        min_p: w.min_p.unwrap_or(d.min_p),
        repeat_penalty: d.repeat_penalty,
        seed: w.seed.unwrap_or_else(random_seed),
        ..SamplerConfig::default()
    };
    sampler.validate().map_err(|e| e.to_string())?;
    let stop = w.stop.unwrap_or_default();
    if stop.len() > MAX_STOPS
        || stop
            .iter()
            .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(format!(
            "stop takes at most {MAX_STOPS} non-empty strings of at most {MAX_STOP_BYTES} bytes"
        ));
    }
    Ok(GenRequest {
        id: w.id,
        messages,
        max_tokens,
        sampler,
        stop,
        stream: w.stream.unwrap_or(true),
    })
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Busy,
    TooLong,
    /// An MQTT 5 request whose message expiry passed before the engine could start it.
    Expired,
    Internal,
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
        status: Status,
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
    /// "stop", "length" or "cancelled".
    pub finish_reason: &'static str,
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
    pub model: String,
    pub kernel: String,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Incoming, Rejection> {
        parse_line(s.as_bytes(), &Config::default())
    }

    fn rejected(s: &str) -> Rejection {
        parse(s).unwrap_err()
    }

    #[test]
    fn a_full_request_parses() {
        let r = parse(
            r#"{"id":"r1","prompt":"hi","system":"be brief","max_tokens":5,"temperature":0.5,
            "top_k":3,"top_p":0.9,"seed":7,"stop":["\n\n"],"stream":false}"#,
        )
        .unwrap();
        let Incoming::Generate(r) = r else { panic!() };
        assert_eq!(r.id, "r1");
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.messages[0].role, Role::System);
        assert_eq!(r.max_tokens, 5);
        assert_eq!(r.sampler.seed, 7);
        assert!(!r.stream);
    }

    #[test]
    fn messages_cancel_and_commands_parse() {
        let r = parse(r#"{"id":"m","messages":[{"role":"user","content":"x"}]}"#).unwrap();
        assert!(matches!(r, Incoming::Generate(r) if r.messages.len() == 1));
        assert!(matches!(parse(r#"{"cancel":"r1"}"#).unwrap(), Incoming::Cancel(c) if c == "r1"));
        assert!(matches!(
            parse(r#"{"cmd":"status"}"#).unwrap(),
            Incoming::Command(Command::Status, None)
        ));
    }

    #[test]
    fn malformed_requests_name_the_problem() {
        let r = rejected(r#"{"id":"r1","prompt":"x","colour":1}"#);
        assert_eq!(r.id.as_deref(), Some("r1"));
        assert!(r.message.contains("colour"), "{}", r.message);
        let r = rejected(r#"{"id":"r1","prompt":5}"#);
        assert!(r.message.contains("invalid type"), "{}", r.message);
        let r = rejected(r#"{"id":"r1","prompt":"x","top_p":3}"#);
        assert!(r.message.contains("top_p"), "{}", r.message);
        let r = rejected(r#"{"id":"r1","prompt":"x","max_tokens":100000}"#);
        assert!(r.message.contains("max_tokens"), "{}", r.message);
        let r = rejected(r#"{"id":"r1"}"#);
        assert!(r.message.contains("prompt"), "{}", r.message);
        let r = rejected(r#"{"id":"r1","messages":[{"role":"robot","content":"x"}]}"#);
        assert!(r.message.contains("role"), "{}", r.message);
        assert_eq!(rejected("[1,2]").code, ErrorCode::BadRequest);
        assert_eq!(rejected("{nope").id, None);
        let r = parse_line(b"{\"id\":\"\xff\"}", &Config::default()).unwrap_err();
        assert!(r.message.contains("UTF-8"), "{}", r.message);
        let r = rejected(r#"{"cmd":"reboot"}"#);
        assert!(r.message.contains("reboot"), "{}", r.message);
    }

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
