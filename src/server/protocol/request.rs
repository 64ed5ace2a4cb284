//! The request side of the wire protocol: one JSON object per socket line (or per MQTT
//! message), parsed and validated into an [`Incoming`].
//!
//! Parsing is strict: unknown fields, wrong types and out-of-range values are refused with a
//! `bad_request` error that names the field, so a client's typo never goes unnoticed.

use std::sync::Arc;

use serde::Deserialize;

use super::event::{ErrorCode, Event};

use crate::chat::{Message, Role};
use crate::config::Config;
use crate::constrain::Schema;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// The prompt is the model's input as it is: no chat template, no system prompt.
    raw: Option<bool>,
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
    json_schema: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = r#"a message {"role": ..., "content": ...}"#
)]
struct WireMessage {
    /// A string, so that a wrong type gets serde's clear "invalid type" message.
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
    /// A string, so that a wrong type gets serde's clear "invalid type" message.
    cmd: String,
    id: Option<String>,
}

/// What a request gives the model.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// A conversation, rendered by the model's chat template on the engine thread.
    Chat(Vec<Message>),
    /// Text to continue as it is (`"raw": true`, OpenAI's `/v1/completions`, Ollama's
    /// `raw`): no template and no system prompt; BOS as the model adds it.
    Text(String),
}

/// A validated generation request, with the config's defaults filled in.
#[derive(Debug, Clone)]
pub struct GenRequest {
    /// The client's name for the request, echoed in each of its events.
    pub id: String,
    /// What the model is given.
    pub prompt: Prompt,
    /// Tokens to generate at most.
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Generation stops before the first of these strings, which is left out of the text.
    pub stop: Vec<String>,
    /// Send each token as it comes; otherwise only the final event.
    pub stream: bool,
    /// The output must be a JSON value of this schema (compiled when the request is parsed).
    pub json_schema: Option<Arc<Schema>>,
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
///
/// The line is read twice: once as a generic JSON value, to route it and to find the id to
/// answer under even when the rest is wrong, then into the typed request, which also refuses
/// duplicate keys (a generic value silently keeps the last) and names the bad field's path.
pub fn parse_line(line: &[u8], config: &Config) -> Result<Incoming, Rejection> {
    let text = utf8(line)?;
    let value = json(text)?;
    parse_checked(&value, Source::Text(text), config)
}

/// The JSON value of a line or message, which must be valid UTF-8.
pub fn parse_json(line: &[u8]) -> Result<serde_json::Value, Rejection> {
    json(utf8(line)?)
}

/// Validates a parsed request (MQTT takes its own envelope fields out first), read straight
/// from the value. Duplicate keys are gone from a parsed value, so only [`parse_line`] can
/// refuse them.
pub fn parse_value(value: serde_json::Value, config: &Config) -> Result<Incoming, Rejection> {
    parse_checked(&value, Source::Value(&value), config)
}

/// What the typed request is read from: the line's text, or a value parsed already.
#[derive(Clone, Copy)]
enum Source<'a> {
    Text(&'a str),
    Value(&'a serde_json::Value),
}

fn utf8(line: &[u8]) -> Result<&str, Rejection> {
    std::str::from_utf8(line).map_err(|e| {
        // The id is still worth echoing when only, say, the prompt has a bad byte.
        let id = readable_id(&String::from_utf8_lossy(line));
        let at = e.valid_up_to();
        let msg = format!("the line is not valid UTF-8 (a bad byte at offset {at})");
        Rejection::new(id, ErrorCode::BadRequest, msg)
    })
}

fn json(text: &str) -> Result<serde_json::Value, Rejection> {
    serde_json::from_str(text)
        .map_err(|e| Rejection::new(None, ErrorCode::BadRequest, format!("invalid JSON: {e}")))
}

/// [`parse_line`]'s checks of a request's `value`, read again from `text` into the typed
/// request.
fn parse_checked(
    value: &serde_json::Value,
    text: Source<'_>,
    config: &Config,
) -> Result<Incoming, Rejection> {
    let bad = |id: Option<String>, msg: String| Rejection::new(id, ErrorCode::BadRequest, msg);
    let Some(object) = value.as_object() else {
        let kind = json_kind(value);
        return Err(bad(
            None,
            format!("a request must be a JSON object, not {kind}"),
        ));
    };
    let id = object.get("id").and_then(|v| v.as_str());
    let id = id.filter(|id| check_id(id).is_ok()).map(str::to_owned);
    if object.contains_key("cmd") {
        let c: WireCommand = typed(text).map_err(|e| bad(id.clone(), e))?;
        if let Some(id) = &c.id {
            check_id(id).map_err(|e| bad(None, e))?;
        }
        let cmd = match c.cmd.as_str() {
            "status" => Command::Status,
            "health" => Command::Health,
            other => {
                let msg = format!("cmd {other:?} is unknown: it must be \"status\" or \"health\"");
                return Err(bad(c.id, msg));
            }
        };
        return Ok(Incoming::Command(cmd, c.id));
    }
    if object.contains_key("cancel") {
        let c: WireCancel = typed(text).map_err(|e| bad(id.clone(), e))?;
        check_id(&c.cancel).map_err(|e| bad(None, format!("cancel: {e}")))?;
        return Ok(Incoming::Cancel(c.cancel));
    }
    let wire: WireRequest = typed(text).map_err(|e| bad(id.clone(), e))?;
    validate(wire, config)
        .map(|r| Incoming::Generate(Box::new(r)))
        .map_err(|msg| bad(id, msg))
}

/// Deserializes `source` into `T`; the error starts with the path of the bad field.
fn typed<T: serde::de::DeserializeOwned>(source: Source<'_>) -> Result<T, String> {
    let result = match source {
        Source::Text(text) => {
            let mut de = serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(&mut de)
        }
        Source::Value(value) => serde_path_to_error::deserialize(value),
    };
    result.map_err(|e| {
        let path = e.path().to_string();
        match path.as_str() {
            "." => e.into_inner().to_string(),
            _ => format!("{path}: {}", e.into_inner()),
        }
    })
}

/// The id of a line that is JSON once its bad bytes are replaced, unless they were in the id.
fn readable_id(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let id = value.get("id")?.as_str()?;
    let intact = !id.contains(char::REPLACEMENT_CHARACTER);
    (intact && check_id(id).is_ok()).then(|| id.to_owned())
}

fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(format!(
            "id must have 1 to {MAX_ID_BYTES} bytes, not {}",
            id.len()
        ));
    }
    Ok(())
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    use serde_json::Value::*;
    match v {
        Null => "null",
        Bool(_) => "a boolean",
        Number(_) => "a number",
        String(_) => "a string",
        Array(_) => "an array",
        Object(_) => "an object",
    }
}

fn validate(w: WireRequest, config: &Config) -> Result<GenRequest, String> {
    check_id(&w.id)?;
    let raw = w.raw.unwrap_or(false);
    if w.prompt.as_deref() == Some("") {
        return Err("prompt is empty".into());
    }
    let prompt = match (w.prompt, w.messages) {
        (Some(_), Some(_)) => return Err("give either prompt or messages, not both".into()),
        (None, None) => return Err("a request needs prompt or messages".into()),
        (None, Some(_)) if raw => return Err("raw takes a prompt, not messages".into()),
        (Some(_), None) if raw && w.system.is_some() => {
            return Err("raw takes no system prompt: put it in the prompt".into());
        }
        (Some(prompt), None) if raw => Prompt::Text(prompt),
        (Some(prompt), None) => {
            let system = w.system.unwrap_or_else(|| config.system_prompt.clone());
            let mut m = Vec::new();
            if !system.is_empty() {
                m.push(Message::new(Role::System, system));
            }
            m.push(Message::new(Role::User, prompt));
            Prompt::Chat(m)
        }
        (None, Some(wire)) => {
            let roles = wire
                .iter()
                .enumerate()
                .map(|(i, m)| match m.role.as_str() {
                    "system" => Ok(Role::System),
                    "user" => Ok(Role::User),
                    "assistant" => Ok(Role::Assistant),
                    other => Err(format!(
                        "messages[{i}].role is {other:?}: it must be system, user or assistant"
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            if !roles.contains(&Role::User) {
                return Err("messages needs at least one user message".into());
            }
            let has_system = roles.contains(&Role::System);
            let system = match w.system {
                Some(_) if has_system => {
                    return Err(
                        "give the system prompt either as system or as a system message, not both"
                            .into(),
                    );
                }
                Some(s) => s,
                None if has_system => String::new(),
                None => config.system_prompt.clone(),
            };
            let mut m = Vec::with_capacity(wire.len() + 1);
            if !system.is_empty() {
                m.push(Message::new(Role::System, system));
            }
            m.extend(
                roles
                    .into_iter()
                    .zip(wire)
                    .map(|(role, w)| Message::new(role, w.content)),
            );
            Prompt::Chat(m)
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
        seed: w.seed.unwrap_or_else(crate::engine::random_seed),
        ..SamplerConfig::default()
    };
    sampler.validate().map_err(|e| e.to_string())?;
    let stop = w.stop.unwrap_or_default();
    if stop.len() > MAX_STOPS {
        return Err(format!(
            "stop has {} strings; at most {MAX_STOPS} are allowed",
            stop.len()
        ));
    }
    if let Some((i, s)) = stop
        .iter()
        .enumerate()
        .find(|(_, s)| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(format!(
            "stop[{i}] has {} bytes: it must have 1 to {MAX_STOP_BYTES}",
            s.len()
        ));
    }
    let json_schema = match &w.json_schema {
        None => None,
        Some(v) => Some(Arc::new(Schema::compile(v).map_err(|e| e.to_string())?)),
    };
    Ok(GenRequest {
        id: w.id,
        prompt,
        max_tokens,
        sampler,
        stop,
        stream: w.stream.unwrap_or(true),
        json_schema,
    })
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
        let Prompt::Chat(messages) = &r.prompt else {
            panic!("{:?}", r.prompt)
        };
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].role, Role::System);
        assert_eq!(r.max_tokens, 5);
        assert_eq!(r.sampler.seed, 7);
        assert!(!r.stream);
    }

    #[test]
    fn messages_cancel_and_commands_parse() {
        let r = parse(r#"{"id":"m","messages":[{"role":"user","content":"x"}]}"#).unwrap();
        assert!(
            matches!(r, Incoming::Generate(r) if matches!(&r.prompt, Prompt::Chat(m) if m.len() == 1))
        );
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
        assert_eq!(r.id, None);
        let r = rejected(r#"{"cmd":"reboot"}"#);
        assert!(r.message.contains("reboot"), "{}", r.message);
    }

    #[test]
    fn the_id_survives_a_bad_byte_elsewhere() {
        let r = parse_line(
            b"{\"id\":\"r9\",\"prompt\":\"caf\xe9\"}",
            &Config::default(),
        );
        let r = r.unwrap_err();
        assert_eq!(r.id.as_deref(), Some("r9"));
        assert!(r.message.contains("offset 24"), "{}", r.message);
    }

    #[test]
    fn ambiguous_requests_are_refused() {
        let r = rejected(r#"{"id":"d","prompt":"x","prompt":"y"}"#);
        assert!(
            r.message.contains("duplicate field `prompt`"),
            "{}",
            r.message
        );
        let r = rejected(
            r#"{"id":"s","system":"a","messages":[{"role":"system","content":"b"},{"role":"user","content":"c"}]}"#,
        );
        assert!(r.message.contains("not both"), "{}", r.message);
        let r = rejected(r#"{"id":"e","prompt":""}"#);
        assert!(r.message.contains("empty"), "{}", r.message);
    }

    #[test]
    fn the_system_prompt_comes_from_the_request_or_the_config() {
        let config = Config {
            system_prompt: "default".into(),
            ..Config::default()
        };
        let messages = |line: &str| match parse_line(line.as_bytes(), &config).unwrap() {
            Incoming::Generate(r) => match r.prompt {
                Prompt::Chat(m) => m,
                Prompt::Text(t) => panic!("raw text {t:?}"),
            },
            other => panic!("{other:?}"),
        };
        let m = messages(r#"{"id":"a","prompt":"x"}"#);
        assert_eq!(m[0], Message::new(Role::System, "default"));
        let m = messages(r#"{"id":"a","prompt":"x","system":""}"#);
        assert_eq!(m, [Message::new(Role::User, "x")]);
        let m = messages(r#"{"id":"a","messages":[{"role":"user","content":"x"}],"system":"s"}"#);
        assert_eq!(m[0], Message::new(Role::System, "s"));
        let m = messages(
            r#"{"id":"a","messages":[{"role":"system","content":"own"},{"role":"user","content":"x"}]}"#,
        );
        assert_eq!(m[0], Message::new(Role::System, "own"));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn a_raw_prompt_is_text_without_template_or_system() {
        let config = Config {
            system_prompt: "default".into(),
            ..Config::default()
        };
        let parsed = |line: &str| parse_line(line.as_bytes(), &config);
        let Ok(Incoming::Generate(r)) = parsed(r#"{"id":"a","prompt":"Once upon","raw":true}"#)
        else {
            panic!()
        };
        assert_eq!(
            r.prompt,
            Prompt::Text("Once upon".into()),
            "no default system prompt"
        );
        let Ok(Incoming::Generate(r)) = parsed(r#"{"id":"a","prompt":"x","raw":false}"#) else {
            panic!()
        };
        assert!(matches!(r.prompt, Prompt::Chat(_)));
        for (line, error) in [
            (
                r#"{"id":"a","raw":true,"messages":[{"role":"user","content":"x"}]}"#,
                "raw takes a prompt, not messages",
            ),
            (
                r#"{"id":"a","raw":true,"prompt":"x","system":"s"}"#,
                "raw takes no system prompt",
            ),
            (r#"{"id":"a","raw":true,"prompt":""}"#, "prompt is empty"),
            (r#"{"id":"a","raw":1,"prompt":"x"}"#, "raw"),
        ] {
            let r = rejected(line);
            assert!(r.message.contains(error), "{line}: {}", r.message);
            assert_eq!(r.id.as_deref(), Some("a"), "{line}");
        }
    }
}
