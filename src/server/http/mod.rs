//! The HTTP transport (`[http]`): OpenAI- and Ollama-compatible APIs, `/health` and
//! `/metrics`, on axum.
//!
//! Every generation request becomes a [`Job`](super::queue::Job) on the same queue as the
//! socket's and MQTT's, so the same fairness (a client is a TCP peer address or, on a Unix
//! socket, a uid), per-client cap and depth apply: a full queue is a 429 with Retry-After,
//! loading or no model a 503 naming the reason. A response body owns its job's event
//! channel: a client that closes the connection drops the body, and the engine stops the
//! job at its next token (or layer of the prompt).

mod jobs;
mod ollama;
mod openai;
mod peer;
mod time;

use std::convert::Infallible;
use std::fmt::Write;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::metrics;
use super::queue::Queue;
use super::shutdown::Shutdown;
use crate::config::Config;
use peer::Peer;

/// Where the HTTP listener is: `[http] listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(std::net::SocketAddr),
    /// An absolute path for a Unix socket.
    Unix(PathBuf),
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with('/') {
            return Ok(Listen::Unix(s.into()));
        }
        s.parse().map(Listen::Tcp).map_err(|_| {
            "it must be an address and port such as \"127.0.0.1:11434\" or \"[::1]:11434\", \
             or an absolute Unix socket path"
                .into()
        })
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(addr) => write!(f, "http://{addr}"),
            Listen::Unix(path) => write!(f, "http on {}", path.display()),
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
struct Api {
    queue: Queue,
    config: Arc<Config>,
    /// The bearer key requests must give, when `api_key_file` is set.
    api_key: Option<Arc<str>>,
    /// Numbers the requests' ids (`chatcmpl-7`, `ollama-3`).
    next_id: Arc<AtomicU64>,
}

/// A bound listener, ready to serve.
pub enum Bound {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

/// Binds `[http] listen` and reads the API key (a missing key file stops the daemon at boot).
pub fn bind(config: &Config, listen: &Listen) -> anyhow::Result<(Bound, Option<String>)> {
    let key = match &config.http.api_key_file {
        Some(path) => Some(read_key(path)?),
        None => None,
    };
    let bound = match listen {
        Listen::Tcp(addr) => {
            let std = std::net::TcpListener::bind(addr)
                .with_context(|| format!("http.listen: binding {addr}"))?;
            std.set_nonblocking(true)?;
            Bound::Tcp(tokio::net::TcpListener::from_std(std)?)
        }
        Listen::Unix(path) => {
            remove_stale_socket(path)?;
            let listener = tokio::net::UnixListener::bind(path)
                .with_context(|| format!("http.listen: binding {}", path.display()))?;
            Bound::Unix(listener, path.clone())
        }
    };
    Ok((bound, key))
}

/// Serves until `shutdown` fires, then lets the open requests end (the engine cancels them).
pub async fn serve(
    bound: Bound,
    api_key: Option<String>,
    queue: Queue,
    config: Arc<Config>,
    mut shutdown: Shutdown,
) -> io::Result<()> {
    let api = Api {
        queue,
        config,
        api_key: api_key.map(Arc::from),
        next_id: Arc::default(),
    };
    let app = router(api);
    let stop = async move { shutdown.recv().await };
    match bound {
        Bound::Tcp(listener) => {
            let make = app.into_make_service_with_connect_info::<Peer>();
            axum::serve(listener, make)
                .with_graceful_shutdown(stop)
                .await
        }
        Bound::Unix(listener, path) => {
            let make = app.into_make_service_with_connect_info::<Peer>();
            let result = axum::serve(listener, make)
                .with_graceful_shutdown(stop)
                .await;
            let _ = std::fs::remove_file(&path);
            result
        }
    }
}

fn router(api: Api) -> Router {
    Router::new()
        .route("/", get(root).head(root))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/api/version", get(ollama::version))
        .route("/api/tags", get(ollama::tags))
        .route("/api/ps", get(ollama::ps))
        .route("/api/show", post(ollama::show))
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .layer(middleware::from_fn_with_state(api.clone(), authorize))
        .with_state(api)
}

/// Ollama's answer to the probe clients make before anything else.
async fn root() -> &'static str {
    "Ollama is running"
}

/// The socket's `health`: 200 when "ok", else 503; the body is the state.
async fn health(State(api): State<Api>) -> Response {
    let health = super::health(&api.queue);
    let status = match health {
        "ok" => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    json_response(status, &serde_json::json!({ "health": health }))
}

/// Prometheus text: the request counters of every transport, then `status`'s gauges.
async fn metrics(State(api): State<Api>) -> Response {
    let status = super::status(api.queue.info(), &api.queue);
    let mut out = String::new();
    api.queue.stats().metrics.render(&mut out);
    let gauges = [
        (
            "bitnetd_queue_depth",
            "Requests waiting behind the running one.",
            status.queue_depth as f64,
        ),
        (
            "bitnetd_queue_capacity",
            "Requests that may wait at most.",
            status.queue_capacity as f64,
        ),
        (
            "bitnetd_busy",
            "1 while a request is being generated.",
            f64::from(u8::from(status.busy)),
        ),
        (
            "bitnetd_tokens_per_second",
            "Generation speed of the last request.",
            status.tokens_per_s,
        ),
        (
            "bitnetd_ready",
            "1 once the model is loaded.",
            f64::from(u8::from(status.model_state == "ready")),
        ),
        (
            "bitnetd_uptime_seconds",
            "Seconds since the daemon started.",
            status.uptime_s as f64,
        ),
    ];
    for (name, help, value) in gauges {
        metrics::gauge(&mut out, name, help, value);
    }
    // The power module's numeric fields, whatever it reports (README "Power").
    if let Some(power) = &status.power {
        let value = serde_json::to_value(power).unwrap_or_default();
        power_gauges(&mut out, "bitnetd", &value);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// A gauge per number (and boolean) in `value`, named by its path.
fn power_gauges(out: &mut String, prefix: &str, value: &serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let key: String = key
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                power_gauges(out, &format!("{prefix}_{key}"), v);
            }
        }
        Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                metrics::gauge(out, prefix, "From status (README \"Power\").", x);
            }
        }
        Value::Bool(b) => {
            metrics::gauge(
                out,
                prefix,
                "From status (README \"Power\").",
                f64::from(u8::from(*b)),
            );
        }
        // A state such as the policy: Prometheus's "info" idiom, a label on a constant 1.
        Value::String(text) => {
            metrics::header(out, prefix, "gauge", "From status (README \"Power\").");
            let text = text
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = writeln!(out, "{prefix}{{value=\"{text}\"}} 1");
        }
        _ => {}
    }
}

/// Refuses requests without the configured bearer key (401), in the API's own error shape.
/// The `/` probe needs none: it only says the server is there.
async fn authorize(State(api): State<Api>, request: Request, next: Next) -> Response {
    let Some(key) = &api.api_key else {
        return next.run(request).await;
    };
    if request.uri().path() == "/" || bearer_matches(request.headers(), key) {
        return next.run(request).await;
    }
    let failure = Failure {
        status: StatusCode::UNAUTHORIZED,
        kind: "invalid_api_key",
        message: "a valid API key is required: send it as Authorization: Bearer <key>".into(),
    };
    match request.uri().path().starts_with("/v1/") {
        true => openai::error(failure),
        false => ollama::error(failure),
    }
}

fn bearer_matches(headers: &HeaderMap, key: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Compared without an early exit, so that the time taken does not tell how much matched.
    given.len() == key.len()
        && given
            .bytes()
            .zip(key.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Why a request failed, before each API renders it in its own shape.
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    /// A short machine-readable name ("busy", "loading", "bad_request", ...).
    pub kind: &'static str,
    pub message: String,
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// A streamed body of `chunks` (SSE or NDJSON).
fn streaming(content_type: &'static str, body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The key file's content without its trailing newline; a relative path is taken in
/// `$CREDENTIALS_DIRECTORY` (systemd's `LoadCredential=`) when there is one.
fn read_key(path: &std::path::Path) -> anyhow::Result<String> {
    let path = match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if path.is_relative() => PathBuf::from(dir).join(path),
        _ => path.to_owned(),
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("http.api_key_file: reading {}", path.display()))?;
    let key = text.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(
        !key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic()),
        "http.api_key_file: {} must hold one key of printable ASCII characters",
        path.display()
    );
    Ok(key.to_owned())
}

/// A socket file left by a daemon that did not remove it is replaced; any other file at the
/// path is an error.
fn remove_stale_socket(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("http.listen: removing the old {}", path.display())),
        Ok(_) => anyhow::bail!("http.listen: {} exists and is not a socket", path.display()),
        Err(_) => Ok(()),
    }
}

/// Bodies are infallible streams of ready bytes.
type Chunk = Result<bytes::Bytes, Infallible>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            "127.0.0.1:11434".parse::<Listen>().unwrap(),
            Listen::Tcp("127.0.0.1:11434".parse().unwrap())
        );
        assert!(matches!("[::1]:8080".parse::<Listen>(), Ok(Listen::Tcp(_))));
        assert_eq!(
            "/run/bitnetd/http.sock".parse::<Listen>().unwrap(),
            Listen::Unix("/run/bitnetd/http.sock".into())
        );
        assert!("localhost".parse::<Listen>().is_err());
        assert!("relative.sock".parse::<Listen>().is_err());
    }

    #[test]
    fn power_fields_become_gauges() {
        let mut out = String::new();
        let report = serde_json::json!({"power": {"policy": "fixed:\"2\"", "decode_threads": 1,
            "throttled": true, "cores": [1, 2]}, "joules_per_token": null});
        power_gauges(&mut out, "bitnetd", &report);
        assert!(out.contains("\nbitnetd_power_decode_threads 1\n"), "{out}");
        assert!(out.contains("\nbitnetd_power_throttled 1\n"), "{out}");
        assert!(
            out.contains("\nbitnetd_power_policy{value=\"fixed:\\\"2\\\"\"} 1\n"),
            "{out}"
        );
        assert!(!out.contains("cores") && !out.contains("joules"), "{out}");
    }

    #[test]
    fn json_output_maps_to_one_schema_per_api() {
        use serde_json::json;
        let body = |v: serde_json::Value| v.as_object().unwrap().clone();
        let openai = |v| openai::json_output(&body(v)).map_err(|f| f.message);
        assert_eq!(openai(json!({})), Ok(None));
        assert_eq!(
            openai(json!({"response_format": {"type": "text"}})),
            Ok(None)
        );
        assert_eq!(
            openai(json!({"response_format": {"type": "json_object"}})),
            Ok(Some(json!({"type": "object"})))
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        assert_eq!(
            openai(json!({"response_format": {"type": "json_schema",
                "json_schema": {"name": "x", "schema": schema}}})),
            Ok(Some(schema.clone()))
        );
        assert!(
            openai(json!({"response_format": {"type": "json_schema"}}))
                .unwrap_err()
                .contains("schema")
        );
        assert!(openai(json!({"response_format": {"type": "yaml"}})).is_err());
        let ollama = |v| ollama::json_output(&body(v)).map_err(|f| f.message);
        assert_eq!(ollama(json!({"format": ""})), Ok(None));
        assert_eq!(ollama(json!({"format": null})), Ok(None));
        assert_eq!(ollama(json!({"format": "json"})), Ok(Some(json!({}))));
        assert_eq!(ollama(json!({"format": schema})), Ok(Some(schema)));
        assert!(ollama(json!({"format": "xml"})).is_err());
    }

    #[test]
    fn only_the_exact_bearer_key_passes() {
        let mut h = HeaderMap::new();
        assert!(!bearer_matches(&h, "k3y"));
        h.insert(header::AUTHORIZATION, "Bearer k3y".parse().unwrap());
        assert!(bearer_matches(&h, "k3y"));
        assert!(!bearer_matches(&h, "k3"));
        assert!(!bearer_matches(&h, "k3z"));
        h.insert(header::AUTHORIZATION, "Basic k3y".parse().unwrap());
        assert!(!bearer_matches(&h, "k3y"));
    }
}
