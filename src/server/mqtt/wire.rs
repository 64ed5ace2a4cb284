//! What travels over MQTT: requests are the socket protocol's JSON plus an envelope for
//! MQTT 3.1.1 (`reply_to`, `correlation_id`); replies are the socket protocol's events plus
//! a sequence number; the retained status says `"state": "online"` or `"offline"`.

use serde::Serialize;
use serde_json::Value;

use super::topic;
use crate::config::Config;
use crate::server::protocol::{self, ErrorCode, Event, Incoming, Rejection, Status};

/// The envelope fields of a request, taken out before the request is validated.
#[derive(Debug, Default, PartialEq)]
pub struct Envelope {
    /// The topic to answer on when the message has no MQTT 5 response topic.
    pub reply_to: Option<String>,
    /// Echoed in every reply (a string or a number).
    pub correlation_id: Option<Value>,
}

/// Parses a payload of at most `limits.max_line_bytes`. The envelope is returned even when
/// the request is bad, so that the error can be answered where the client listens.
pub fn parse(payload: &[u8], config: &Config) -> (Envelope, Result<Incoming, Rejection>) {
    let mut envelope = Envelope::default();
    let max = config.limits.max_line_bytes;
    if payload.len() > max {
        let message = format!(
            "the payload has {} bytes; the limit is {max}",
            payload.len()
        );
        return (
            envelope,
            Err(Rejection::new(None, ErrorCode::TooLong, message)),
        );
    }
    let mut value = match protocol::parse_json(payload) {
        Ok(v) => v,
        Err(r) => return (envelope, Err(r)),
    };
    let Some(object) = value.as_object_mut() else {
        return (envelope, protocol::parse_value(value, config));
    };
    let mut problem = None;
    match object.remove("reply_to") {
        None => {}
        Some(Value::String(t)) => match topic::check_name(&t, config.mqtt.max_topic_bytes) {
            Ok(()) => envelope.reply_to = Some(t),
            Err(e) => problem = Some(format!("reply_to: {e}")),
        },
        Some(_) => problem = Some("reply_to must be a topic name (a string)".into()),
    }
    match object.remove("correlation_id") {
        None => {}
        Some(v @ (Value::String(_) | Value::Number(_))) => envelope.correlation_id = Some(v),
        Some(_) => problem = Some("correlation_id must be a string or a number".into()),
    }
    if let Some(message) = problem {
        let id = object.get("id").and_then(Value::as_str).map(str::to_owned);
        let rejection = Rejection::new(id, ErrorCode::BadRequest, message);
        return (envelope, Err(rejection));
    }
    (envelope, protocol::parse_value(value, config))
}

/// The fuzz target's body (also replayed by the tests): `data` is a reply topic, a newline
/// and a payload. Panics when a topic check lets through what a broker refuses, or when
/// parsing breaks its promises.
pub fn fuzz_one(data: &[u8], config: &Config) {
    let (topic_bytes, payload) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&[][..], data),
    };
    if let Ok(t) = std::str::from_utf8(topic_bytes) {
        let max = config.mqtt.max_topic_bytes;
        if topic::check_name(t, max).is_ok() {
            assert_broker_accepts(t, max);
        }
        let policy = topic::ReplyPolicy::new(&config.mqtt.reply_prefixes(), Vec::new(), max);
        if policy.permit(t).is_ok() {
            assert_broker_accepts(t, max);
            assert!(t.starts_with(&format!("{}/reply/", config.mqtt.base_topic)));
        }
    }
    let (envelope, parsed) = parse(payload, config);
    if let Some(t) = &envelope.reply_to {
        assert_broker_accepts(t, config.mqtt.max_topic_bytes);
    }
    if let Err(rejection) = parsed {
        assert!(!rejection.message.is_empty());
        let line = reply(&rejection.event(), 0, envelope.correlation_id.as_ref());
        assert!(!line.contains(&b'\n'), "a reply is one line");
        assert!(std::str::from_utf8(&line).is_ok());
    }
}

/// The rules of MQTT 5 §1.5.4 and §4.7.3 for a PUBLISH topic, written out independently
/// of [`topic::check_name`].
fn assert_broker_accepts(t: &str, max: usize) {
    assert!(!t.is_empty() && t.len() <= max, "{t:?}");
    assert!(
        !t.starts_with('$') && !t.contains('+') && !t.contains('#'),
        "{t:?}"
    );
    for c in t.chars() {
        let n = c as u32;
        assert!(n > 0x1F && !(0x7F..=0x9F).contains(&n), "{t:?}");
        assert!(
            !(0xFDD0..=0xFDEF).contains(&n) && n & 0xFFFF < 0xFFFE,
            "{t:?}"
        );
    }
}

/// One reply message: an event with its place in the request's sequence (0, 1, ...; the
/// final event has the highest) and the request's correlation id.
#[derive(Serialize)]
struct Reply<'a> {
    #[serde(flatten)]
    event: &'a Event,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a Value>,
}

pub fn reply(event: &Event, seq: u64, correlation_id: Option<&Value>) -> Vec<u8> {
    let reply = Reply {
        event,
        seq,
        correlation_id,
    };
    serde_json::to_vec(&reply).expect("replies always serialize")
}

/// The retained payload of `<base>/<node>/status`.
#[derive(Serialize)]
struct NodeStatus<'a> {
    state: &'static str,
    node: &'a str,
    #[serde(flatten)]
    status: Option<Status>,
}

/// `{"state":"online","node":..}` with the fields of the `status` command.
pub fn online(node: &str, status: Status) -> Vec<u8> {
    let s = NodeStatus {
        state: "online",
        node,
        status: Some(status),
    };
    serde_json::to_vec(&s).expect("status always serializes")
}

/// `{"state":"offline","node":..}`: the last will, and the goodbye at shutdown.
pub fn offline(node: &str) -> Vec<u8> {
    let s = NodeStatus {
        state: "offline",
        node,
        status: None,
    };
    serde_json::to_vec(&s).expect("status always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(payload: &str) -> (Envelope, Result<Incoming, Rejection>) {
        parse(payload.as_bytes(), &Config::default())
    }

    #[test]
    fn the_envelope_comes_out_before_validation() {
        let (env, r) = parsed(r#"{"id":"a","prompt":"hi","reply_to":"x/y","correlation_id":7}"#);
        assert_eq!(env.reply_to.as_deref(), Some("x/y"));
        assert_eq!(env.correlation_id, Some(json!(7)));
        assert!(matches!(r, Ok(Incoming::Generate(g)) if g.id == "a"));
    }

    #[test]
    fn a_bad_envelope_is_refused_but_still_answered() {
        let (env, r) = parsed(r#"{"id":"a","prompt":"hi","reply_to":"x/y","correlation_id":[1]}"#);
        assert_eq!(env.reply_to.as_deref(), Some("x/y"));
        let r = r.unwrap_err();
        assert_eq!(r.id.as_deref(), Some("a"));
        assert!(r.message.contains("correlation_id"), "{}", r.message);
        for (reply_to, problem) in [
            ("x/#", "wildcard"),
            ("x/+/y", "wildcard"),
            ("x\\u0001", "U+0001"),
            ("x\\u007f", "U+007F"),
            ("x\\u0085", "U+0085"),
            ("x\\ufffe", "U+FFFE"),
            ("x\\ufdd0", "U+FDD0"),
            ("x\\u0000", "U+0000"),
            ("$SYS/x", "$"),
            ("", "empty"),
        ] {
            let payload = format!(r#"{{"id":"a","prompt":"hi","reply_to":"{reply_to}"}}"#);
            let (env, r) = parsed(&payload);
            assert_eq!(env.reply_to, None, "{payload}");
            let message = r.unwrap_err().message;
            assert!(message.contains("reply_to"), "{message}");
            assert!(message.contains(problem), "{payload}: {message}");
        }
        // The socket's rules still hold for the rest.
        let (env, r) = parsed(r#"{"id":"a","prompt":"hi","reply_to":"r","colour":1}"#);
        assert_eq!(env.reply_to.as_deref(), Some("r"));
        assert!(r.unwrap_err().message.contains("colour"));
    }

    #[test]
    fn too_big_payloads_are_not_parsed() {
        let mut config = Config::default();
        config.limits.max_line_bytes = 300;
        let payload = format!(r#"{{"id":"a","prompt":"{}"}}"#, "x".repeat(300));
        let (env, r) = parse(payload.as_bytes(), &config);
        assert_eq!(env, Envelope::default());
        assert_eq!(r.unwrap_err().code, ErrorCode::TooLong);
    }

    #[test]
    fn replies_are_events_with_seq_and_correlation() {
        let e = Event::Token {
            id: "a".into(),
            token: "Hi".into(),
        };
        let r: Value = serde_json::from_slice(&reply(&e, 3, Some(&json!("c1")))).unwrap();
        assert_eq!(
            r,
            json!({"id": "a", "token": "Hi", "seq": 3, "correlation_id": "c1"})
        );
        let e = Event::error(Some("a".into()), ErrorCode::Expired, "late");
        let r: Value = serde_json::from_slice(&reply(&e, 0, None)).unwrap();
        assert_eq!(
            r,
            json!({"id": "a", "error": {"code": "expired", "message": "late"}, "seq": 0})
        );
    }

    #[test]
    fn status_payloads_share_one_shape() {
        let off: Value = serde_json::from_slice(&offline("pi1")).unwrap();
        assert_eq!(off, json!({"state": "offline", "node": "pi1"}));
        let status = crate::server::protocol::event::example_status();
        let on: Value = serde_json::from_slice(&online("pi1", status)).unwrap();
        assert_eq!(on["state"], "online");
        assert_eq!(on["node"], "pi1");
        assert_eq!(on["model"], "m.gguf");
        assert_eq!(on["requests"], 5);
    }
}
