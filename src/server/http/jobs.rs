//! What both APIs do with a generation request: read the body, build the protocol's request,
//! queue it, wait for its first event, and stream the rest.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Body;
use axum::http::StatusCode;
use futures_util::stream;
use serde_json::{Map, Value};
use tokio::sync::mpsc::{self, UnboundedReceiver};

use super::{Api, Chunk, Failure};
use crate::server::protocol::{self, ErrorCode, Event, Incoming};
use crate::server::queue::{CancelToken, ClientKey, Job, SubmitError};

/// Seconds a client told "busy" should wait before trying again.
pub const RETRY_AFTER_S: u64 = 1;

/// A queued request. Dropping it (the response body is dropped when the client goes)
/// cancels the job: the engine stops within a token.
pub struct Running {
    pub events: UnboundedReceiver<Event>,
    cancel: CancelToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Reads the whole body as a JSON object; 413 above `limits.max_line_bytes`.
pub async fn read_body(api: &Api, body: Body) -> Result<Map<String, Value>, Failure> {
    let limit = api.config.limits.max_line_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Failure {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "too_long",
            message: format!(
                "the request body is longer than {limit} bytes (limits.max_line_bytes)"
            ),
        })?;
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(bad("the request body must be a JSON object".into())),
    }
}

pub fn bad(message: String) -> Failure {
    Failure {
        status: StatusCode::BAD_REQUEST,
        kind: "bad_request",
        message,
    }
}

/// A fresh request id with the API's prefix.
pub fn next_id(api: &Api, prefix: &str) -> String {
    format!("{prefix}-{}", api.next_id.fetch_add(1, Ordering::Relaxed))
}

/// Where a request asks for JSON output: the schema goes into the protocol request's
/// `json_schema` field, so that it is compiled, checked and refused (400 naming the schema's
/// fault) in one place for every transport.
pub fn attach_json_schema(wire: &mut Map<String, Value>, schema: Option<Value>) {
    if let Some(schema) = schema {
        wire.insert("json_schema".into(), schema);
    }
}

/// Validates `wire` (the socket protocol's request, built by the API's handler) as the
/// socket would, queues it for `client`, and waits for its first event. A request refused
/// before generating anything (loading, busy, a bad field, a prompt too long) is a
/// [`Failure`] with its HTTP status; otherwise the first event (a token or the final one)
/// comes back with the running job.
pub async fn start(
    api: &Api,
    client: ClientKey,
    mut wire: Map<String, Value>,
) -> Result<(Running, Event), Failure> {
    let arrived = Instant::now();
    if let Some((code, message)) = api.queue.info().refusal() {
        return Err(failure(code, message));
    }
    // The socket protocol takes repeat_penalty from the config only; Ollama's options set it.
    let repeat_penalty = wire.remove("repeat_penalty").and_then(|v| v.as_f64());
    let mut request = match protocol::parse_value(Value::Object(wire), &api.config) {
        Ok(Incoming::Generate(r)) => *r,
        Ok(_) => return Err(bad("not a generation request".into())),
        Err(r) => return Err(failure(r.code, r.message)),
    };
    if let Some(p) = repeat_penalty {
        request.sampler.repeat_penalty = p as f32;
        request
            .sampler
            .validate()
            .map_err(|e| bad(format!("options: {e}")))?;
    }
    let (events, events_rx) = mpsc::unbounded_channel();
    let cancel = CancelToken::default();
    let job = Job {
        request,
        transport: "http",
        client,
        events,
        cancel: cancel.clone(),
        arrived,
        expires: None,
    };
    if let Err(e) = api.queue.submit(job) {
        let (code, message) = e.answer();
        let mut f = failure(code, message.into());
        if matches!(e, SubmitError::Closed(_)) {
            f.status = StatusCode::SERVICE_UNAVAILABLE;
        }
        return Err(f);
    }
    let mut running = Running {
        events: events_rx,
        cancel,
    };
    match running.events.recv().await {
        Some(Event::Error { error, .. }) => Err(failure(error.code, error.message)),
        Some(first) => Ok((running, first)),
        None => Err(failure(
            ErrorCode::Internal,
            "the engine dropped the request".into(),
        )),
    }
}

/// Waits for the final event (a `stream: false` request).
pub async fn finish(
    mut running: Running,
    first: Event,
) -> Result<(Running, Box<protocol::Done>), Failure> {
    let mut event = first;
    loop {
        match event {
            Event::Done(done) => return Ok((running, done)),
            Event::Error { error, .. } => return Err(failure(error.code, error.message)),
            _ => {}
        }
        event =
            running.events.recv().await.ok_or_else(|| {
                failure(ErrorCode::Internal, "the engine dropped the request".into())
            })?;
    }
}

/// The body streaming the job's events as `render` writes them, `first` first; it ends after
/// the event `render` calls the last (or when the engine drops the job).
pub fn body(
    running: Running,
    first: Event,
    render: impl FnMut(Event) -> (Vec<u8>, bool) + Send + 'static,
) -> Body {
    let chunks = stream::unfold(
        (Some(running), Some(first), render),
        |(mut running, mut pending, mut render)| async move {
            let events = &mut running.as_mut()?.events;
            let event = match pending.take() {
                Some(e) => e,
                None => events.recv().await?,
            };
            let (bytes, last) = render(event);
            if last {
                running = None;
            }
            Some((Chunk::Ok(bytes.into()), (running, pending, render)))
        },
    );
    Body::from_stream(chunks)
}

/// The HTTP status of a protocol error.
pub fn failure(code: ErrorCode, message: String) -> Failure {
    let status = match code {
        ErrorCode::BadRequest | ErrorCode::TooLong => StatusCode::BAD_REQUEST,
        ErrorCode::Busy => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Loading | ErrorCode::NoModel | ErrorCode::Closed => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorCode::Expired => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Failure {
        status,
        kind: code.as_str(),
        message,
    }
}

/// The text of a message's `content`: a string, or OpenAI's list of parts (text parts
/// joined; other parts such as images cannot be served and are refused by name).
pub fn content_text(content: Option<&Value>, at: &str) -> Result<String, Failure> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (i, part) in parts.iter().enumerate() {
                match (
                    part.get("type").and_then(Value::as_str),
                    part.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (kind, _) => {
                        return Err(bad(format!(
                            "{at}.content[{i}]: only text parts can be served, not {}",
                            kind.unwrap_or("an untyped part")
                        )));
                    }
                }
            }
            Ok(text)
        }
        Some(_) => Err(bad(format!(
            "{at}.content must be a string or a list of text parts"
        ))),
    }
}

/// The protocol's roles from an API's: "developer" (OpenAI's newer name) is a system
/// message, a "tool" result is shown to the model as a user message.
pub fn role(role: Option<&Value>, at: &str) -> Result<&'static str, Failure> {
    match role.and_then(Value::as_str) {
        Some("system" | "developer") => Ok("system"),
        Some("user" | "tool") => Ok("user"),
        Some("assistant") => Ok("assistant"),
        Some(other) => Err(bad(format!(
            "{at}.role is {other:?}: it must be system, developer, user, assistant or tool"
        ))),
        None => Err(bad(format!("{at}.role is missing"))),
    }
}

/// The conversation of `messages`, in the protocol's shape.
pub fn messages(list: Option<&Value>) -> Result<Value, Failure> {
    let Some(Value::Array(list)) = list else {
        return Err(bad("messages must be a list of messages".into()));
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = role(m.get("role"), &at)?;
        let content = content_text(m.get("content"), &at)?;
        out.push(serde_json::json!({ "role": role, "content": content }));
    }
    Ok(Value::Array(out))
}

/// `stop` as a string or a list of strings.
pub fn stop_list(stop: Option<&Value>, at: &str) -> Result<Option<Value>, Failure> {
    match stop {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(Value::Array(vec![Value::String(s.clone())]))),
        Some(Value::Array(list)) if list.iter().all(Value::is_string) => {
            Ok(Some(Value::Array(list.clone())))
        }
        Some(_) => Err(bad(format!("{at} must be a string or a list of strings"))),
    }
}

/// The API's finish reason for the protocol's: a full context also ran out of length.
pub fn finish_reason(reason: crate::engine::FinishReason) -> &'static str {
    use crate::engine::FinishReason::*;
    match reason {
        Stop => "stop",
        Length | ContextFull => "length",
        Cancelled => "cancelled",
    }
}
