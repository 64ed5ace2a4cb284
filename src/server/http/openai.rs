//! OpenAI's API: `/v1/chat/completions`, `/v1/completions` (streamed as server-sent events
//! ending in `data: [DONE]`), `/v1/models`, errors as `{"error": {message, type, code}}`.

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::jobs::{self, Running};
use super::peer::Peer;
use super::{Api, Failure, json_response, streaming, time};
use crate::server::Readiness;
use crate::server::protocol::{Done, Event};

/// The error body, with Retry-After on a 429.
pub fn error(f: Failure) -> Response {
    let kind = match f.status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
        s if s.is_server_error() => "server_error",
        _ => "invalid_request_error",
    };
    let body = json!({"error": {"message": f.message, "type": kind, "code": f.kind}});
    with_retry_after(json_response(f.status, &body))
}

pub fn with_retry_after(mut r: Response) -> Response {
    if r.status() == StatusCode::TOO_MANY_REQUESTS {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(jobs::RETRY_AFTER_S));
    }
    r
}

/// The served model's name (its file name), or "" before one is loaded.
pub fn model_name(api: &Api) -> String {
    match api.queue.info().readiness() {
        Readiness::Ready(m) => m.model,
        Readiness::Loading { model } => model,
        Readiness::NoModel(_) => String::new(),
    }
}

pub async fn models(State(api): State<Api>) -> Response {
    let data: Vec<Value> = match api.queue.info().readiness() {
        Readiness::Ready(m) => vec![json!({
            "id": m.model, "object": "model", "created": 0, "owned_by": "bitnetd",
        })],
        _ => Vec::new(),
    };
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

/// The `json_schema` that `response_format` asks for: `json_object` is any object,
/// `json_schema` its schema, `text` none.
pub fn json_output(body: &Map<String, Value>) -> Result<Option<Value>, Failure> {
    let Some(format) = body.get("response_format").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "object"}))),
        Some("json_schema") => match format.pointer("/json_schema/schema") {
            Some(schema) => Ok(Some(schema.clone())),
            None => Err(jobs::bad(
                "response_format.json_schema.schema is missing".into(),
            )),
        },
        _ => Err(jobs::bad(
            "response_format.type must be \"text\", \"json_object\" or \"json_schema\"".into(),
        )),
    }
}

/// Which endpoint: they differ in the request's text field and the response's shape.
#[derive(Clone, Copy, PartialEq)]
enum Endpoint {
    Chat,
    Completions,
}

pub async fn chat(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    body: Body,
) -> Response {
    serve(api, peer, body, Endpoint::Chat)
        .await
        .unwrap_or_else(error)
}

pub async fn completions(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    body: Body,
) -> Response {
    serve(api, peer, body, Endpoint::Completions)
        .await
        .unwrap_or_else(error)
}

async fn serve(api: Api, peer: Peer, body: Body, endpoint: Endpoint) -> Result<Response, Failure> {
    let body = jobs::read_body(&api, body).await?;
    let prefix = match endpoint {
        Endpoint::Chat => "chatcmpl",
        Endpoint::Completions => "cmpl",
    };
    let id = jobs::next_id(&api, prefix);
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(jobs::bad("stream must be true or false".into())),
    };
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut wire = wire_request(&body, &id, endpoint)?;
    wire.insert("stream".into(), Value::Bool(stream));
    jobs::attach_json_schema(&mut wire, json_output(&body)?);
    let (running, first) = jobs::start(&api, peer.0, wire).await?;
    let shape = Shape {
        id,
        model: model_name(&api),
        created: time::unix_seconds(),
        endpoint,
        include_usage,
    };
    if !stream {
        let (_, done) = jobs::finish(running, first).await?;
        return Ok(json_response(StatusCode::OK, &shape.whole(&done)));
    }
    Ok(streaming("text/event-stream", sse(running, first, shape)))
}

/// The protocol's request for an OpenAI one (unknown fields are ignored, as OpenAI's
/// clients send many this daemon has no use for).
fn wire_request(
    body: &Map<String, Value>,
    id: &str,
    endpoint: Endpoint,
) -> Result<Map<String, Value>, Failure> {
    let mut wire = Map::new();
    wire.insert("id".into(), id.into());
    match endpoint {
        Endpoint::Chat => {
            wire.insert("messages".into(), jobs::messages(body.get("messages"))?);
        }
        Endpoint::Completions => {
            let prompt = match body.get("prompt") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(list)) if list.len() == 1 && list[0].is_string() => {
                    list[0].as_str().unwrap_or_default().to_owned()
                }
                _ => {
                    return Err(jobs::bad(
                        "prompt must be a string (or a list of one string)".into(),
                    ));
                }
            };
            wire.insert("prompt".into(), prompt.into());
            // A completion continues the text itself: no chat template.
            wire.insert("raw".into(), true.into());
        }
    }
    let max = body
        .get("max_completion_tokens")
        .filter(|v| !v.is_null())
        .or_else(|| body.get("max_tokens").filter(|v| !v.is_null()));
    for (key, value) in [
        ("max_tokens", max),
        ("temperature", body.get("temperature")),
        ("top_p", body.get("top_p")),
        ("seed", body.get("seed")),
    ] {
        if let Some(v) = value.filter(|v| !v.is_null()) {
            wire.insert(key.into(), v.clone());
        }
    }
    if let Some(stop) = jobs::stop_list(body.get("stop"), "stop")? {
        wire.insert("stop".into(), stop);
    }
    if let Some(n) = body.get("n").and_then(Value::as_u64).filter(|&n| n != 1) {
        return Err(jobs::bad(format!(
            "n is {n}: one choice per request is served"
        )));
    }
    Ok(wire)
}

/// What every chunk of one response repeats.
struct Shape {
    id: String,
    model: String,
    created: u64,
    endpoint: Endpoint,
    include_usage: bool,
}

impl Shape {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completions, _) => "text_completion",
        }
    }

    /// A `stream: false` answer.
    fn whole(&self, done: &Done) -> Value {
        let finish = jobs::finish_reason(done.finish_reason);
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": done.text},
                "finish_reason": finish,
                "logprobs": null,
            }),
            Endpoint::Completions => json!({
                "index": 0, "text": done.text, "finish_reason": finish, "logprobs": null,
            }),
        };
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage(done),
        })
    }

    /// One streamed chunk with `text` (and the role in the first) or the finish reason.
    fn chunk(&self, text: Option<&str>, first: bool, finish: Option<&str>) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let mut delta = Map::new();
                if first {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(t) = text {
                    delta.insert("content".into(), t.into());
                }
                json!({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null})
            }
            Endpoint::Completions => json!({
                "index": 0, "text": text.unwrap_or(""), "finish_reason": finish, "logprobs": null,
            }),
        };
        let mut chunk = json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }
}

fn usage(done: &Done) -> Value {
    let (p, c) = (done.usage.prompt_tokens, done.usage.completion_tokens);
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

/// Server-sent events: a chunk per token, a last chunk with the finish reason (and one with
/// the usage when asked), then `data: [DONE]`. An error after the first token is sent as an
/// error event before the stream ends.
fn sse(running: Running, first: Event, shape: Shape) -> Body {
    let mut first_chunk = true;
    jobs::body(running, first, move |event| {
        let mut out = Vec::new();
        let mut data = |v: &Value| {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(v.to_string().as_bytes());
            out.extend_from_slice(b"\n\n");
        };
        let last = match event {
            Event::Token { token, .. } => {
                data(&shape.chunk(Some(&token), first_chunk, None));
                first_chunk = false;
                false
            }
            Event::Done(done) => {
                let finish = jobs::finish_reason(done.finish_reason);
                data(&shape.chunk(first_chunk.then_some(""), first_chunk, Some(finish)));
                if shape.include_usage {
                    let mut chunk = shape.chunk(None, false, None);
                    chunk["choices"] = json!([]);
                    chunk["usage"] = usage(&done);
                    data(&chunk);
                }
                true
            }
            Event::Error { error, .. } => {
                let f = jobs::failure(error.code, error.message);
                data(
                    &json!({"error": {"message": f.message, "type": "server_error", "code": f.kind}}),
                );
                true
            }
            _ => false,
        };
        if last {
            out.extend_from_slice(b"data: [DONE]\n\n");
        }
        (out, last)
    })
}
