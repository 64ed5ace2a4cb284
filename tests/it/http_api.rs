//! The `[http]` transport end to end: the built daemon with the tiny model, HTTP on a free
//! loopback port, raw requests and curl checking the OpenAI (SSE) and Ollama (NDJSON)
//! shapes, the API key, 413, 429, 503, a client that hangs up, and fairness with the socket.

use std::io::BufRead;
use std::time::{Duration, Instant};

use crate::daemon::{self, Daemon, PATIENCE, dummy_125m, free_port, long_prompt};
use crate::http::{self, curl, get, http_config, post, request};
use serde_json::{Value, json};

fn chat(content: &str, max_tokens: usize) -> Value {
    json!({"model": "any", "messages": [{"role": "user", "content": content}],
           "max_tokens": max_tokens, "temperature": 0.0})
}

#[test]
fn openai_chat_streams_server_sent_events_ending_in_done() {
    let port = free_port();
    let _d = Daemon::start(&http_config(port, ""));
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let mut body = chat("Hello there", 6);
    body["stream"] = true.into();
    body["stream_options"] = json!({"include_usage": true});
    let raw = curl(&[
        "-H",
        "Content-Type: application/json",
        "-d",
        &body.to_string(),
        &url,
    ]);
    // Each event is one `data:` line and a blank line; the last is [DONE].
    let events: Vec<&str> = raw.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"), "{raw}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        assert_eq!(c["id"], chunks[0]["id"]);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let finish = &chunks[chunks.len() - 2]["choices"][0];
    assert_eq!(finish["finish_reason"], "length", "{raw}");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 6);
    let p = usage["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(p > 0);
    assert_eq!(usage["usage"]["total_tokens"], p + 6);

    // The same greedy request without streaming gives the same text, in one object.
    let whole = post(port, "/v1/chat/completions", &chat("Hello there", 6));
    assert_eq!(whole.status, 200, "{}", whole.body);
    let whole = whole.json();
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["content"], text.as_str());
    assert_eq!(whole["choices"][0]["finish_reason"], "length");
    assert_eq!(whole["usage"]["completion_tokens"], 6);

    let done = post(
        port,
        "/v1/completions",
        &json!({"prompt": "Hello there", "max_tokens": 3, "stop": "\n"}),
    );
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.json()["object"], "text_completion");
    assert!(done.json()["choices"][0]["text"].is_string());

    let models = get(port, "/v1/models").json();
    assert_eq!(models["data"][0]["id"], "tiny-i2_s.gguf", "{models}");
}

/// A raw prompt is continued as it is (OpenAI's /v1/completions, Ollama's `raw`, the
/// protocol's `"raw": true`): the same greedy text as `bitnetd run -p` (which applies no
/// template), and fewer prompt tokens than the same prompt as a chat turn.
#[test]
fn raw_prompts_are_continued_as_run_continues_them() {
    let prompt = "The capital of France is";
    let out = crate::common::succeeds(
        std::process::Command::new(env!("CARGO_BIN_EXE_bitnetd"))
            .args(["run", "-m"])
            .arg(crate::common::reference("tiny-i2_s.gguf"))
            .args(["-p", prompt, "-n", "8", "--temp", "0", "-t", "1"]),
    );
    let printed = String::from_utf8(out.stdout).unwrap();

    let port = free_port();
    let d = Daemon::start(&http_config(port, ""));
    let openai = post(
        port,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 8, "temperature": 0.0}),
    );
    assert_eq!(openai.status, 200, "{}", openai.body);
    let openai = openai.json();
    let text = openai["choices"][0]["text"].as_str().unwrap().to_owned();
    assert!(
        printed.starts_with(&format!("{prompt}{text}")),
        "run printed {printed:?}, /v1/completions gave {text:?}"
    );

    let generate = |raw: bool| {
        let r = post(
            port,
            "/api/generate",
            &json!({"model": "m", "prompt": prompt, "raw": raw, "stream": false,
                    "options": {"num_predict": 8, "temperature": 0}}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    };
    let raw = generate(true);
    assert_eq!(raw["response"], text.as_str(), "{raw}");
    let raw_tokens = raw["prompt_eval_count"].as_u64().unwrap();
    assert_eq!(openai["usage"]["prompt_tokens"], raw_tokens, "{openai}");
    let templated = generate(false);
    assert!(
        templated["prompt_eval_count"].as_u64().unwrap() > raw_tokens,
        "the chat template adds its markup: {templated}"
    );

    let mut c = d.connect();
    c.send(
        &json!({"id": "r", "prompt": prompt, "raw": true, "max_tokens": 8,
                   "temperature": 0.0}),
    );
    let (streamed, done) = c.finish("r");
    assert_eq!(streamed, text, "{done}");
    assert_eq!(done["usage"]["prompt_tokens"], raw_tokens, "{done}");
    let bad = post(
        port,
        "/api/generate",
        &json!({"model": "m", "prompt": prompt, "raw": "yes", "stream": false}),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(
        bad.body.contains("raw must be true or false"),
        "{}",
        bad.body
    );
}

#[test]
fn ollama_chat_streams_ndjson_with_counts_and_durations() {
    let port = free_port();
    let _d = Daemon::start(&http_config(port, ""));
    let url = format!("http://127.0.0.1:{port}/api/chat");
    let body = json!({"model": "tiny-i2_s:latest", "keep_alive": "5m", "tools": [],
        "messages": [{"role": "user", "content": "Hi"}],
        "options": {"num_predict": 5, "temperature": 0, "num_ctx": 2048, "repeat_penalty": 1.0}});
    let raw = curl(&["-d", &body.to_string(), &url]);
    let lines: Vec<Value> = raw
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let (last, tokens) = lines.split_last().unwrap();
    assert!(!tokens.is_empty(), "{raw}");
    for t in tokens {
        assert_eq!(t["done"], false);
        assert_eq!(t["message"]["role"], "assistant");
        assert!(t["created_at"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(last["done"], true, "{raw}");
    assert_eq!(last["done_reason"], "length");
    assert_eq!(last["eval_count"], 5);
    assert!(last["prompt_eval_count"].as_u64().unwrap() > 0);
    let total = last["total_duration"].as_u64().unwrap();
    let parts = ["load_duration", "prompt_eval_duration", "eval_duration"]
        .map(|k| last[k].as_u64().unwrap_or_else(|| panic!("{k} in {last}")));
    assert!(total > 0 && parts.iter().sum::<u64>() <= total, "{last}");

    let r = post(
        port,
        "/api/generate",
        &json!({"model": "x", "prompt": "Hi", "stream": false,
                "options": {"num_predict": 4, "seed": 3, "stop": ["zzz"]}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = r.json();
    assert_eq!(r["done"], true);
    assert!(r["response"].is_string() && r["eval_count"] == 4, "{r}");
    // No prompt: Ollama's "load the model" call.
    let r = post(port, "/api/generate", &json!({"model": "x"})).json();
    assert_eq!(r["done_reason"], "load", "{r}");

    let tags = get(port, "/api/tags").json();
    assert_eq!(tags["models"][0]["name"], "tiny-i2_s:latest", "{tags}");
    assert!(tags["models"][0]["size"].as_u64().unwrap() > 0);
    assert_eq!(
        get(port, "/api/ps").json()["models"][0]["name"],
        "tiny-i2_s:latest"
    );
    assert!(get(port, "/api/version").json()["version"].is_string());
    let show = post(port, "/api/show", &json!({"model": "tiny-i2_s:latest"}));
    assert_eq!(show.status, 200);
    assert_eq!(show.json()["details"]["format"], "gguf");
    let root = get(port, "/");
    assert_eq!(
        (root.status, root.body.as_str()),
        (200, "Ollama is running")
    );
    assert_eq!(request(port, "HEAD", "/", &[], "").status, 200);
}

#[test]
fn errors_come_in_each_apis_shape_with_their_status() {
    let port = free_port();
    let d = Daemon::start(&format!(
        "{}[limits]\nmax_line_bytes = 4096\n",
        http_config(port, "")
    ));
    let r = request(port, "POST", "/v1/chat/completions", &[], "{nope");
    assert_eq!(r.status, 400);
    let e = &r.json()["error"];
    assert!(
        e["message"].as_str().unwrap().contains("invalid JSON"),
        "{e}"
    );
    assert_eq!(e["type"], "invalid_request_error");
    let r = post(
        port,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "robot", "content": "x"}]}),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages[0].role"),
        "{}",
        r.body
    );
    let r = post(
        port,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "x"}], "top_p": 7}),
    );
    assert!(r.status == 400 && r.body.contains("top_p"), "{}", r.body);
    let r = post(
        port,
        "/api/chat",
        &json!({"messages": [{"role": "user", "content": "x"}], "options": {"num_predict": "many"}}),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"].as_str().unwrap().contains("num_predict"),
        "{}",
        r.body
    );

    // Above limits.max_line_bytes: 413, in the API's shape.
    let big = json!({"messages": [{"role": "user", "content": "x".repeat(5000)}]});
    let r = post(port, "/v1/chat/completions", &big);
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("4096")
    );
    let r = post(port, "/api/chat", &big);
    assert_eq!(r.status, 413);
    assert!(r.json()["error"].is_string());

    // A schema bitnetd cannot enforce is refused before anything runs, naming the keyword
    // and where it is, in each API's shape.
    let mut body = chat("x", 2);
    body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "n",
        "schema": {"type": "object", "properties": {"code": {"type": "string", "pattern": "^a"}}}}});
    let r = post(port, "/v1/chat/completions", &body);
    assert_eq!(r.status, 400, "{}", r.body);
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("\"pattern\"") && message.contains("/properties/code"),
        "{message}"
    );
    let r = post(
        port,
        "/api/generate",
        &json!({"prompt": "x", "format": {"type": "strnig"}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.json()["error"].as_str().unwrap().contains("type"),
        "{}",
        r.body
    );

    // The socket's health, and counters of every transport in /metrics.
    assert_eq!(get(port, "/health").json()["health"], "ok");
    let mut c = d.connect();
    c.send(&daemon::request("s1", "Hi", 2));
    c.finish("s1");
    assert_eq!(
        post(
            port,
            "/api/generate",
            &json!({"prompt": "Hi", "stream": false, "options": {"num_predict": 2}})
        )
        .status,
        200
    );
    let m = get(port, "/metrics");
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    for needle in [
        "bitnetd_requests_total{transport=\"socket\",finish=\"length\"} 1\n",
        "bitnetd_requests_total{transport=\"http\",finish=\"length\"} 1\n",
        "bitnetd_generated_tokens_total{transport=\"http\"} 2\n",
        "bitnetd_time_to_first_token_seconds_count 2\n",
        "bitnetd_queue_depth 0\n",
    ] {
        assert!(m.body.contains(needle), "no {needle:?} in\n{}", m.body);
    }
}

/// The command a home automation wants from a sentence, as a schema.
fn command_schema() -> Value {
    json!({"type": "object",
           "properties": {"entity": {"type": "string", "maxLength": 24},
                          "action": {"enum": ["on", "off"]}},
           "required": ["entity", "action"], "additionalProperties": false})
}

#[test]
fn json_output_parses_and_fits_its_schema_in_both_apis() {
    let port = free_port();
    let _d = Daemon::start(&http_config(port, ""));
    let prompt = "turn the kitchen light off";
    let check = |text: &str| {
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        let o = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {text}"));
        assert_eq!(o.len(), 2, "{text}");
        assert!(
            o["entity"].as_str().unwrap().chars().count() <= 24,
            "{text}"
        );
        assert!(o["action"] == "on" || o["action"] == "off", "{text}");
    };
    for seed in 0..3 {
        // OpenAI: response_format json_schema, sampled (not greedy) so that seeds differ.
        let mut body = chat(prompt, 64);
        body["temperature"] = 1.0.into();
        body["seed"] = seed.into();
        body["response_format"] = json!({"type": "json_schema",
            "json_schema": {"name": "command", "schema": command_schema()}});
        let r = post(port, "/v1/chat/completions", &body);
        assert_eq!(r.status, 200, "{}", r.body);
        check(
            r.json()["choices"][0]["message"]["content"]
                .as_str()
                .unwrap(),
        );
        // Ollama: a schema object as `format`.
        let r = post(
            port,
            "/api/generate",
            &json!({"prompt": prompt, "stream": false, "format": command_schema(),
                    "options": {"num_predict": 64, "seed": seed, "temperature": 1.0}}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        check(r.json()["response"].as_str().unwrap());
    }
    // json_object / "json": an object, any value.
    let mut body = chat(prompt, 48);
    body["response_format"] = json!({"type": "json_object"});
    let r = post(port, "/v1/chat/completions", &body);
    let text = r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        serde_json::from_str::<Value>(&text).unwrap().is_object(),
        "{text}"
    );
    let r = post(
        port,
        "/api/generate",
        &json!({"prompt": prompt, "stream": false, "format": "json",
                "options": {"num_predict": 48}}),
    );
    let text = r.json()["response"].as_str().unwrap().to_string();
    serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
}

#[test]
fn without_the_api_key_requests_are_401() {
    let port = free_port();
    let key_dir = tempfile::tempdir().unwrap();
    let key = key_dir.path().join("key");
    std::fs::write(&key, "s3cret-key\n").unwrap();
    let _d = Daemon::start(&http_config(
        port,
        &format!("api_key_file = {:?}", key.display().to_string()),
    ));
    let body = chat("Hi", 2).to_string();
    let r = request(port, "POST", "/v1/chat/completions", &[], &body);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    let r = request(
        port,
        "POST",
        "/api/chat",
        &["Authorization: Bearer wrong-key!"],
        &body,
    );
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].is_string());
    assert_eq!(request(port, "GET", "/api/tags", &[], "").status, 401);
    let r = request(
        port,
        "POST",
        "/v1/chat/completions",
        &["Authorization: Bearer s3cret-key"],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // The probe needs no key.
    assert_eq!(get(port, "/").status, 200);
}

#[test]
fn without_a_model_requests_are_503_naming_the_reason() {
    let port = free_port();
    let models = tempfile::tempdir().unwrap();
    let mut d = Daemon::spawn(
        &format!(
            "model_dir = {:?}\n{}",
            models.path().display().to_string(),
            http_config(port, "")
        ),
        &[],
        &[],
    );
    d.wait_ready();
    let r = post(port, "/v1/chat/completions", &chat("Hi", 2));
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "no_model");
    let r = post(port, "/api/chat", &chat("Hi", 2));
    assert_eq!(r.status, 503);
    assert!(
        r.json()["error"].as_str().unwrap().contains("GGUF"),
        "{}",
        r.body
    );
    let r = get(port, "/health");
    assert_eq!(
        (r.status, r.json()["health"].clone()),
        (503, json!("no_model"))
    );
    assert_eq!(get(port, "/api/tags").json()["models"], json!([]));
}

/// The daemon on the 125M-shaped model (slow enough that requests are still running while
/// the test acts), HTTP on `port`, and `extra` tables.
fn slow_daemon(port: u16, extra: &str) -> Daemon {
    let top = format!(
        "model = {:?}\nctx_size = 2048\n{}{extra}",
        dummy_125m().display().to_string(),
        http_config(port, "")
    );
    let mut d = Daemon::spawn(&top, &[], &[]);
    d.ready = d.wait_ready();
    d
}

#[test]
fn while_the_model_loads_requests_are_503_loading() {
    let port = free_port();
    // A long system prompt makes the warm-up (part of loading) take seconds on 125M.
    let top = format!(
        "model = {:?}\nctx_size = 2048\nsystem_prompt = {:?}\n{}",
        dummy_125m().display().to_string(),
        long_prompt(700),
        http_config(port, "")
    );
    let mut d = Daemon::spawn(&top, &[], &[]);
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < PATIENCE, "{}", d.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = post(port, "/v1/chat/completions", &chat("Hi", 2));
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "loading");
    assert!(
        r.body.contains("gen-dummy-125M.gguf is loading"),
        "{}",
        r.body
    );
    assert_eq!(get(port, "/health").json()["health"], "loading");
    d.ready = d.wait_ready();
    assert_eq!(post(port, "/api/chat", &chat("Hi", 2)).status, 200);
}

/// Starts a streaming request and waits for its first token; the connection stays open.
fn streaming(port: u16, max_tokens: usize) -> std::io::BufReader<std::net::TcpStream> {
    let body = json!({"messages": [{"role": "user", "content": "Tell me a long story about the sea"}],
        "max_tokens": max_tokens, "temperature": 0.0, "stream": true});
    let (status, _, mut reader) =
        http::send(port, "POST", "/v1/chat/completions", &[], &body.to_string());
    assert_eq!(status, 200);
    let mut line = String::new();
    while !line.contains("data: {") {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the stream ended early"
        );
    }
    reader
}

#[test]
fn a_full_queue_is_429_with_retry_after() {
    let port = free_port();
    let d = slow_daemon(port, "[limits]\nqueue_depth = 1\n");
    let _running = streaming(port, 500);
    // The second waits in the queue (its headers come with its first token: not read here).
    let body = chat("Hi", 2).to_string();
    let mut waiting = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    use std::io::Write;
    write!(
        waiting,
        "POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let start = Instant::now();
    while d.status()["queue_depth"] != 1 {
        assert!(
            start.elapsed() < PATIENCE,
            "the second request never queued"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = post(port, "/v1/chat/completions", &chat("Hi", 2));
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    let r = post(port, "/api/chat", &chat("Hi", 2));
    assert_eq!(r.status, 429);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("queue is full")
    );
}

#[test]
fn a_client_that_hangs_up_mid_stream_frees_the_engine() {
    let port = free_port();
    let d = slow_daemon(port, "");
    let reader = streaming(port, 500);
    drop(reader);
    // The engine stops within a token: the request ends cancelled long before 500 tokens.
    d.wait_log("finish cancelled");
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("finish cancelled"))
        .unwrap();
    let generated: usize = line
        .split(", ")
        .find_map(|p| p.strip_suffix(" completion tokens"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(generated < 500, "{line}");
    // The next request is served at once.
    let r = post(port, "/v1/chat/completions", &chat("Hi", 1));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(d.status()["busy"], false);
}

#[test]
fn an_http_flood_does_not_starve_a_socket_client() {
    let port = free_port();
    let d = slow_daemon(
        port,
        "[limits]\nqueue_depth = 8\nmax_queued_per_client = 4\n",
    );
    // One HTTP client (one address) runs one request and queues three more.
    let flood: Vec<_> = (0..4)
        .map(|i| {
            let body = chat(&format!("Tell me a long story number {i}"), 60);
            let handle = std::thread::spawn(move || post(port, "/v1/chat/completions", &body));
            // In order, so that the first is the one running.
            let start = Instant::now();
            while d.status()["queue_depth"].as_u64().unwrap()
                + u64::from(d.status()["busy"] == true)
                < i + 1
            {
                assert!(start.elapsed() < PATIENCE);
                std::thread::sleep(Duration::from_millis(5));
            }
            handle
        })
        .collect();
    let mut c = d.connect();
    c.send(&daemon::request("sock", "Hi", 5));
    let (_, done) = c.finish("sock");
    assert_eq!(done["done"], true, "{done}");
    for h in flood {
        assert_eq!(h.join().unwrap().status, 200);
    }
    // Round-robin: the socket request waited for the running one and at most one more.
    let log = d.log();
    let finished: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("completion tokens"))
        .map(|l| {
            if l.contains("via socket") {
                "socket"
            } else {
                "http"
            }
        })
        .collect();
    let before = finished.iter().position(|&t| t == "socket").unwrap();
    assert!(before <= 2, "{finished:?}\n{log}");
    assert_eq!(finished.len(), 5);
}

#[test]
fn http_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("http.sock");
    let config = format!("[http]\nlisten = {:?}\n", path.display().to_string());
    let mut d = Daemon::start(&config);
    let path = path.display().to_string();
    let url = "http://localhost/api/generate";
    let body = json!({"prompt": "Hi", "stream": false, "options": {"num_predict": 2}});
    let r: Value = serde_json::from_str(&curl(&[
        "--unix-socket",
        &path,
        "-d",
        &body.to_string(),
        url,
    ]))
    .unwrap();
    assert_eq!(r["eval_count"], 2, "{r}");
    // Its client is the peer's uid.
    assert!(
        d.log().contains("via http: ") && d.log().contains("; http uid "),
        "{}",
        d.log()
    );
    d.sigterm();
    assert!(d.wait_exit(PATIENCE).is_some_and(|s| s.success()));
    // The socket file is removed at exit.
    assert!(!std::path::Path::new(&path).exists());
}
