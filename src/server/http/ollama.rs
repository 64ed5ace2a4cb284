//! Ollama's API: `/api/chat` and `/api/generate` (NDJSON streaming by default, one object
//! with `stream: false`), `/api/tags`, `/api/ps`, `/api/show`, `/api/version`; errors as
//! `{"error": "..."}`. Fields this daemon cannot serve (`keep_alive`, `tools`, `images`,
//! `options.num_ctx`, ...) are ignored rather than refused, as Home Assistant and Open WebUI
//! send them with every request.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::jobs::{self, Running};
use super::openai::with_retry_after;
use super::peer::Peer;
use super::{Api, Failure, json_response, streaming, time};
use crate::server::Readiness;
use crate::server::protocol::{Done, ErrorCode, Event};

/// The Ollama API level these endpoints follow; clients compare it to decide what to call.
const OLLAMA_API_VERSION: &str = "0.6.0";

pub fn error(f: Failure) -> Response {
    with_retry_after(json_response(f.status, &json!({"error": f.message})))
}

pub async fn version() -> Response {
    json_response(StatusCode::OK, &json!({"version": OLLAMA_API_VERSION}))
}

/// The served model as Ollama names models: its file name without `.gguf`, tag `latest`.
fn ollama_name(file: &str) -> String {
    format!("{}:latest", file.strip_suffix(".gguf").unwrap_or(file))
}

/// The model's entry in `/api/tags` and `/api/ps`, when one is loaded.
fn model_entry(api: &Api) -> Option<Value> {
    let Readiness::Ready(m) = api.queue.info().readiness() else {
        return None;
    };
    let name = ollama_name(&m.model);
    Some(json!({
        "name": name,
        "model": name,
        "modified_at": time::rfc3339_now(),
        "size": model_size(api),
        "digest": "",
        "details": details(&m.head),
    }))
}

fn details(head: &str) -> Value {
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": "bitnet",
        "families": ["bitnet"],
        "parameter_size": "",
        "quantization_level": format!("I2_S ternary, {head} head"),
    })
}

/// The model file's size in bytes (0 when it cannot be read).
fn model_size(api: &Api) -> u64 {
    let path = api.config.model.clone().or_else(|| {
        let Readiness::Ready(m) = api.queue.info().readiness() else {
            return None;
        };
        api.config.model_dir.as_ref().map(|d| d.join(m.model))
    });
    path.and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len())
}

pub async fn tags(State(api): State<Api>) -> Response {
    let models: Vec<Value> = model_entry(&api).into_iter().collect();
    json_response(StatusCode::OK, &json!({ "models": models }))
}

pub async fn ps(State(api): State<Api>) -> Response {
    let models: Vec<Value> = model_entry(&api)
        .into_iter()
        .map(|mut m| {
            m["expires_at"] = "2262-01-01T00:00:00.000Z".into(); // never unloaded
            m["size_vram"] = 0.into();
            m
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "models": models }))
}

/// What Open WebUI and Home Assistant read about the model (any name gets the served one).
pub async fn show(State(api): State<Api>, body: Body) -> Response {
    if let Err(f) = jobs::read_body(&api, body).await {
        return error(f);
    }
    let m = match api.queue.info().readiness() {
        Readiness::Ready(m) => m,
        Readiness::Loading { model } => {
            let message = format!("the model {model} is loading; try again in a moment");
            return error(jobs::failure(ErrorCode::Loading, message));
        }
        Readiness::NoModel(message) => return error(jobs::failure(ErrorCode::NoModel, message)),
    };
    json_response(
        StatusCode::OK,
        &json!({
            "modelfile": "",
            "parameters": "",
            "template": "",
            "details": details(&m.head),
            "model_info": {
                "general.architecture": "bitnet",
                "bitnet.context_length": m.n_ctx,
            },
            "capabilities": ["completion"],
            "modified_at": time::rfc3339_now(),
        }),
    )
}

/// The `json_schema` that `format` asks for: "json" is any JSON value, an object is a schema.
pub fn json_output(body: &Map<String, Value>) -> Result<Option<Value>, Failure> {
    match body.get("format") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(json!({}))),
        Some(schema @ Value::Object(_)) => Ok(Some(schema.clone())),
        Some(_) => Err(jobs::bad(
            "format must be \"json\" or a JSON schema object".into(),
        )),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Endpoint {
    Chat,
    Generate,
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

pub async fn generate(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    body: Body,
) -> Response {
    serve(api, peer, body, Endpoint::Generate)
        .await
        .unwrap_or_else(error)
}

async fn serve(api: Api, peer: Peer, body: Body, endpoint: Endpoint) -> Result<Response, Failure> {
    let arrived = Instant::now();
    let body = jobs::read_body(&api, body).await?;
    let stream = match body.get("stream") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(jobs::bad("stream must be true or false".into())),
    };
    let shape = Shape {
        model: body.get("model").and_then(Value::as_str).map_or_else(
            || ollama_name(&super::openai::model_name(&api)),
            str::to_owned,
        ),
        endpoint,
        arrived,
    };
    // Ollama loads the model for a request without a prompt (or messages) and answers
    // at once: clients use it to preload.
    let empty = match endpoint {
        Endpoint::Chat => body
            .get("messages")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty),
        Endpoint::Generate => body
            .get("prompt")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty),
    };
    if empty {
        if let Some((code, message)) = api.queue.info().refusal() {
            return Err(jobs::failure(code, message));
        }
        return Ok(json_response(StatusCode::OK, &shape.loaded()));
    }
    let id = jobs::next_id(&api, "ollama");
    let mut wire = wire_request(&api, &body, &id, endpoint)?;
    wire.insert("stream".into(), Value::Bool(stream));
    jobs::attach_json_schema(&mut wire, json_output(&body)?);
    let (running, first) = jobs::start(&api, peer.0, wire).await?;
    if !stream {
        let (_, done) = jobs::finish(running, first).await?;
        return Ok(json_response(
            StatusCode::OK,
            &shape.last(&done, &done.text),
        ));
    }
    Ok(streaming(
        "application/x-ndjson",
        ndjson(running, first, shape),
    ))
}

/// The protocol's request for an Ollama one: `options` carries the sampling settings.
fn wire_request(
    api: &Api,
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
        Endpoint::Generate => {
            wire.insert(
                "prompt".into(),
                body.get("prompt").cloned().unwrap_or_default(),
            );
            // Ollama's `raw`: the prompt is already in the model's format.
            match body.get("raw") {
                None | Some(Value::Null) => {}
                Some(Value::Bool(raw)) => {
                    wire.insert("raw".into(), (*raw).into());
                }
                Some(_) => return Err(jobs::bad("raw must be true or false".into())),
            }
            if let Some(system) = body.get("system").filter(|v| !v.is_null()) {
                let Some(system) = system.as_str() else {
                    return Err(jobs::bad("system must be a string".into()));
                };
                wire.insert("system".into(), system.into());
            }
        }
    }
    let options = match body.get("options") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(_) => return Err(jobs::bad("options must be an object".into())),
    };
    for key in ["temperature", "top_p", "top_k", "seed"] {
        if let Some(v) = options.get(key).filter(|v| !v.is_null()) {
            wire.insert(key.into(), v.clone());
        }
    }
    // num_predict: Ollama's -1 (no limit) and -2 (fill the context) are the daemon's limit;
    // a larger number is clamped to it (Ollama's is "at most" too).
    let max_new = api.config.limits.max_new_tokens as i64;
    if let Some(n) = options.get("num_predict").filter(|v| !v.is_null()) {
        let Some(n) = n.as_i64() else {
            return Err(jobs::bad("options.num_predict must be an integer".into()));
        };
        let n = if n < 0 { max_new } else { n.min(max_new) };
        if n == 0 {
            return Err(jobs::bad(
                "options.num_predict is 0: ask for at least one token".into(),
            ));
        }
        wire.insert("max_tokens".into(), n.into());
    }
    if let Some(stop) = jobs::stop_list(options.get("stop"), "options.stop")? {
        wire.insert("stop".into(), stop);
    }
    if let Some(p) = options.get("repeat_penalty").filter(|v| !v.is_null()) {
        let Some(p) = p.as_f64() else {
            return Err(jobs::bad("options.repeat_penalty must be a number".into()));
        };
        wire.insert("repeat_penalty".into(), p.into());
    }
    Ok(wire)
}

/// What every line of one response repeats.
struct Shape {
    model: String,
    endpoint: Endpoint,
    arrived: Instant,
}

impl Shape {
    /// A line carrying `text` (a token, or the whole answer).
    fn line(&self, text: &str, done: bool) -> Value {
        let mut v = json!({"model": self.model, "created_at": time::rfc3339_now()});
        match self.endpoint {
            Endpoint::Chat => v["message"] = json!({"role": "assistant", "content": text}),
            Endpoint::Generate => v["response"] = text.into(),
        }
        v["done"] = done.into();
        v
    }

    /// The last line: counts and durations in nanoseconds, measured here (the prompt's
    /// evaluation is the time from the engine taking the request to its first token).
    fn last(&self, done: &Done, text: &str) -> Value {
        let mut v = self.line(text, true);
        let total = self.arrived.elapsed();
        let queue = Duration::from_secs_f64(done.timings.queue_ms / 1e3);
        let ttft = Duration::from_secs_f64(done.timings.ttft_ms / 1e3);
        let prompt_eval = ttft.saturating_sub(queue);
        let eval = total.saturating_sub(ttft);
        v["done_reason"] = jobs::finish_reason(done.finish_reason).into();
        v["total_duration"] = (total.as_nanos() as u64).into();
        v["load_duration"] = 0.into();
        v["prompt_eval_count"] = done.usage.prompt_tokens.into();
        v["prompt_eval_duration"] = (prompt_eval.as_nanos() as u64).into();
        v["eval_count"] = done.usage.completion_tokens.into();
        v["eval_duration"] = (eval.as_nanos() as u64).into();
        if self.endpoint == Endpoint::Generate {
            v["context"] = json!([]);
        }
        v
    }

    /// The answer to a request without a prompt: the model is loaded.
    fn loaded(&self) -> Value {
        let mut v = self.line("", true);
        v["done_reason"] = "load".into();
        v
    }
}

/// One JSON object per line: a line per token, then the last with the counts. An error after
/// the first token is sent as an `{"error": ...}` line.
fn ndjson(running: Running, first: Event, shape: Shape) -> Body {
    jobs::body(running, first, move |event| {
        let (value, last) = match event {
            Event::Token { token, .. } => (shape.line(&token, false), false),
            Event::Done(done) => (shape.last(&done, ""), true),
            Event::Error { error, .. } => (json!({"error": error.message}), true),
            _ => return (Vec::new(), false),
        };
        let mut line = value.to_string().into_bytes();
        line.push(b'\n');
        (line, last)
    })
}
