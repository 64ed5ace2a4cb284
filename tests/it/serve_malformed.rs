//! Malformed input over the Unix socket: every kind gets an error reply with a sensible code,
//! under the request's id when it had a readable one, naming what was wrong; the connection
//! goes on, and valid requests on another connection complete meanwhile.
//!
//! The same lines are the seed corpus of the `request_parse` fuzz target (fuzz/seeds), which
//! the last tests replay through the parser and rewrite on demand.

use std::panic::catch_unwind;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::daemon::{self, Daemon, request};
use bitnetd::config::Config;
use bitnetd::server::protocol::{Incoming, parse_line};

const SEEDS: &str = "fuzz/seeds/request_parse";
/// The daemon's line limit in these tests.
const MAX_LINE: usize = 16384;

/// One kind of malformed input and the error it must get.
struct Case {
    name: &'static str,
    /// The line, without its newline.
    line: Vec<u8>,
    code: &'static str,
    /// The id the error must carry; None: the line had no usable id.
    id: Option<&'static str>,
    /// What the message must contain: the field or the problem, named.
    names: &'static str,
}

fn bad(name: &'static str, line: &str, id: Option<&'static str>, names: &'static str) -> Case {
    bytes(name, line.as_bytes(), id, names)
}

fn bytes(name: &'static str, line: &[u8], id: Option<&'static str>, names: &'static str) -> Case {
    Case {
        name,
        line: line.to_vec(),
        code: "bad_request",
        id,
        names,
    }
}

/// A generation request with one field added or replaced.
fn with(name: &'static str, field: &str, value: &str, names: &'static str) -> Case {
    let line = format!(r#"{{"id":"{name}","prompt":"Hi",{field}:{value}}}"#);
    bad(name, &line, Some(name), names)
}

fn cases() -> Vec<Case> {
    let nested = format!(
        r#"{{"id":"deep","prompt":"x","stop":{}{}}}"#,
        "[".repeat(300),
        "]".repeat(300)
    );
    let long_id = format!(r#"{{"id":"{}","prompt":"x"}}"#, "i".repeat(200));
    let many_stops = format!(r#"[{}]"#, [r#""s""#; 9].join(","));
    let long_stop = format!(r#"["{}"]"#, "s".repeat(300));
    let mut cases = vec![
        // Not JSON, or not one JSON object.
        bad("not_json", "{not json", None, "invalid JSON"),
        bad("truncated", r#"{"id":"t","prompt":"x""#, None, "EOF"),
        bad("array", "[1, 2, 3]", None, "JSON object"),
        bad("string", r#""just a string""#, None, "JSON object"),
        bad("number", "42", None, "JSON object"),
        bad("null", "null", None, "JSON object"),
        bad("boolean", "true", None, "JSON object"),
        bad(
            "trailing_garbage",
            r#"{"id":"g","prompt":"x"} extra"#,
            None,
            "trailing",
        ),
        bad(
            "two_objects",
            r#"{"id":"a","prompt":"x"}{"id":"b"}"#,
            None,
            "trailing",
        ),
        bad(
            "trailing_comma",
            r#"{"id":"c","prompt":"x",}"#,
            None,
            "invalid JSON",
        ),
        bad(
            "single_quotes",
            "{'id':'q','prompt':'x'}",
            None,
            "invalid JSON",
        ),
        bad(
            "unquoted_keys",
            r#"{id:"k",prompt:"x"}"#,
            None,
            "invalid JSON",
        ),
        bad(
            "comment",
            r#"{"id":"c","prompt":"x"} // hi"#,
            None,
            "trailing",
        ),
        bad(
            "nan",
            r#"{"id":"n","prompt":"x","temperature":NaN}"#,
            None,
            "invalid JSON",
        ),
        bad(
            "infinity",
            r#"{"id":"i","prompt":"x","top_p":Infinity}"#,
            None,
            "invalid JSON",
        ),
        bad(
            "huge_float",
            r#"{"id":"h","prompt":"x","temperature":1e999}"#,
            None,
            "out of range",
        ),
        bad(
            "hex_number",
            r#"{"id":"x","prompt":"x","max_tokens":0x10}"#,
            None,
            "invalid JSON",
        ),
        bad(
            "leading_zero",
            r#"{"id":"z","prompt":"x","max_tokens":010}"#,
            None,
            "invalid JSON",
        ),
        bad(
            "plus_sign",
            r#"{"id":"p","prompt":"x","max_tokens":+5}"#,
            None,
            "invalid JSON",
        ),
        bad(
            "lone_surrogate",
            r#"{"id":"s","prompt":"\ud800"}"#,
            None,
            "escape",
        ),
        bad("bad_escape", r#"{"id":"e","prompt":"\q"}"#, None, "escape"),
        bad(
            "raw_tab",
            "{\"id\":\"t\",\"prompt\":\"a\tb\"}",
            None,
            "control character",
        ),
        bad("deep_nesting", &nested, None, "recursion limit"),
        bytes(
            "bom",
            b"\xef\xbb\xbf{\"id\":\"b\",\"prompt\":\"x\"}",
            None,
            "invalid JSON",
        ),
        bytes(
            "nul_byte",
            b"{\"id\":\"z\",\0\"prompt\":\"x\"}",
            None,
            "invalid JSON",
        ),
        // Bytes that are not UTF-8: the id is still read from the rest of the line.
        bytes(
            "latin1_prompt",
            b"{\"id\":\"l1\",\"prompt\":\"caf\xe9\"}",
            Some("l1"),
            "UTF-8",
        ),
        bytes(
            "overlong_utf8",
            b"{\"id\":\"ol\",\"prompt\":\"\xc0\xaf\"}",
            Some("ol"),
            "UTF-8",
        ),
        bytes(
            "surrogate_utf8",
            b"{\"id\":\"sg\",\"prompt\":\"\xed\xa0\x80\"}",
            Some("sg"),
            "UTF-8",
        ),
        bytes(
            "cut_utf8",
            b"{\"id\":\"cu\",\"prompt\":\"\xe2\x82\"}",
            Some("cu"),
            "UTF-8",
        ),
        bytes("bare_ff", b"\xff\xfe", None, "UTF-8"),
        // The id.
        bad("empty_object", "{}", None, "missing field `id`"),
        bad(
            "missing_id",
            r#"{"prompt":"x"}"#,
            None,
            "missing field `id`",
        ),
        bad(
            "id_number",
            r#"{"id":5,"prompt":"x"}"#,
            None,
            "id: invalid type",
        ),
        bad(
            "id_null",
            r#"{"id":null,"prompt":"x"}"#,
            None,
            "id: invalid type",
        ),
        bad(
            "id_array",
            r#"{"id":["a"],"prompt":"x"}"#,
            None,
            "id: invalid type",
        ),
        bad(
            "id_empty",
            r#"{"id":"","prompt":"x"}"#,
            None,
            "id must have",
        ),
        bad("id_too_long", &long_id, None, "id must have"),
        // Unknown and repeated fields.
        with("unknown_field", r#""colour""#, r#""red""#, "colour"),
        with("misspelled_field", r#""max_token""#, "5", "max_token"),
        with(
            "duplicate_field",
            r#""prompt""#,
            r#""again""#,
            "duplicate field `prompt`",
        ),
        with(
            "nested_junk",
            r#""extra""#,
            r#"{"a":[{"b":null}]}"#,
            "extra",
        ),
        // Wrong types, field by field.
        bad(
            "prompt_number",
            r#"{"id":"pn","prompt":42}"#,
            Some("pn"),
            "prompt: invalid type",
        ),
        bad(
            "prompt_array",
            r#"{"id":"pa","prompt":["x"]}"#,
            Some("pa"),
            "prompt: invalid type",
        ),
        bad(
            "prompt_object",
            r#"{"id":"po","prompt":{}}"#,
            Some("po"),
            "prompt: invalid type",
        ),
        with("system_number", r#""system""#, "1", "system: invalid type"),
        with(
            "max_tokens_string",
            r#""max_tokens""#,
            r#""5""#,
            "max_tokens: invalid type",
        ),
        with(
            "max_tokens_float",
            r#""max_tokens""#,
            "2.5",
            "max_tokens: invalid type",
        ),
        with(
            "temperature_string",
            r#""temperature""#,
            r#""0.5""#,
            "temperature: invalid type",
        ),
        with(
            "temperature_nan_string",
            r#""temperature""#,
            r#""NaN""#,
            "temperature: invalid type",
        ),
        with("top_k_float", r#""top_k""#, "1.5", "top_k: invalid type"),
        with("top_p_bool", r#""top_p""#, "true", "top_p: invalid type"),
        with(
            "min_p_null_array",
            r#""min_p""#,
            "[null]",
            "min_p: invalid type",
        ),
        with("seed_string", r#""seed""#, r#""7""#, "seed: invalid type"),
        with("stop_string", r#""stop""#, r#""\n""#, "stop: invalid type"),
        with("stop_numbers", r#""stop""#, "[1]", "stop[0]: invalid type"),
        with(
            "stream_string",
            r#""stream""#,
            r#""yes""#,
            "stream: invalid type",
        ),
        with("stream_number", r#""stream""#, "1", "stream: invalid type"),
        // Out of range.
        with(
            "max_tokens_negative",
            r#""max_tokens""#,
            "-1",
            "max_tokens: invalid value",
        ),
        with("max_tokens_zero", r#""max_tokens""#, "0", "max_tokens is 0"),
        with(
            "max_tokens_over_limit",
            r#""max_tokens""#,
            "100000",
            "max_tokens is 100000",
        ),
        with(
            "max_tokens_huge",
            r#""max_tokens""#,
            "99999999999999999999",
            "max_tokens",
        ),
        with(
            "temperature_negative",
            r#""temperature""#,
            "-0.5",
            "temperature",
        ),
        with(
            "temperature_overflow",
            r#""temperature""#,
            "1e39",
            "temperature = inf",
        ),
        with("top_p_zero", r#""top_p""#, "0", "top_p"),
        with("top_p_over_one", r#""top_p""#, "7", "top_p"),
        with("min_p_over_one", r#""min_p""#, "1.5", "min_p"),
        with("top_k_negative", r#""top_k""#, "-3", "top_k: invalid value"),
        with("seed_negative", r#""seed""#, "-1", "seed: invalid value"),
        with(
            "seed_overflow",
            r#""seed""#,
            "18446744073709551616",
            "seed: invalid type",
        ),
        with("stop_empty_string", r#""stop""#, r#"[""]"#, "stop[0]"),
        with("stop_too_many", r#""stop""#, &many_stops, "stop has 9"),
        with(
            "stop_too_long",
            r#""stop""#,
            &long_stop,
            "stop[0] has 300 bytes",
        ),
        // Requests that are well-formed JSON but make no sense.
        bad(
            "empty_prompt",
            r#"{"id":"ep","prompt":""}"#,
            Some("ep"),
            "prompt is empty",
        ),
        bad(
            "prompt_null",
            r#"{"id":"pz","prompt":null}"#,
            Some("pz"),
            "prompt or messages",
        ),
        bad(
            "no_prompt",
            r#"{"id":"np","max_tokens":3}"#,
            Some("np"),
            "prompt or messages",
        ),
        bad(
            "prompt_and_messages",
            r#"{"id":"pm","prompt":"x","messages":[{"role":"user","content":"y"}]}"#,
            Some("pm"),
            "not both",
        ),
        bad(
            "messages_empty",
            r#"{"id":"me","messages":[]}"#,
            Some("me"),
            "user message",
        ),
        bad(
            "messages_only_system",
            r#"{"id":"ms","messages":[{"role":"system","content":"x"}]}"#,
            Some("ms"),
            "user message",
        ),
        bad(
            "system_twice",
            r#"{"id":"st","system":"a","messages":[{"role":"system","content":"b"},{"role":"user","content":"c"}]}"#,
            Some("st"),
            "not both",
        ),
        // Message shapes.
        bad(
            "messages_string",
            r#"{"id":"m1","messages":"hi"}"#,
            Some("m1"),
            "messages: invalid type",
        ),
        bad(
            "messages_object",
            r#"{"id":"m2","messages":{"role":"user"}}"#,
            Some("m2"),
            "messages: invalid type",
        ),
        bad(
            "message_string",
            r#"{"id":"m3","messages":["hi"]}"#,
            Some("m3"),
            "expected a message {",
        ),
        bad(
            "message_no_role",
            r#"{"id":"m4","messages":[{"content":"x"}]}"#,
            Some("m4"),
            "missing field `role`",
        ),
        bad(
            "message_no_content",
            r#"{"id":"m5","messages":[{"role":"user"}]}"#,
            Some("m5"),
            "missing field `content`",
        ),
        bad(
            "message_extra_field",
            r#"{"id":"m6","messages":[{"role":"user","content":"x","name":"bob"}]}"#,
            Some("m6"),
            "messages[0].name",
        ),
        bad(
            "role_unknown",
            r#"{"id":"m7","messages":[{"role":"robot","content":"x"}]}"#,
            Some("m7"),
            "messages[0].role is \"robot\"",
        ),
        bad(
            "role_capitalized",
            r#"{"id":"m8","messages":[{"role":"User","content":"x"}]}"#,
            Some("m8"),
            "messages[0].role is \"User\"",
        ),
        bad(
            "role_number",
            r#"{"id":"m9","messages":[{"role":1,"content":"x"}]}"#,
            Some("m9"),
            "messages[0].role: invalid type",
        ),
        bad(
            "content_parts",
            r#"{"id":"ma","messages":[{"role":"user","content":[{"type":"text","text":"x"}]}]}"#,
            Some("ma"),
            "messages[0].content",
        ),
        bad(
            "second_message_bad",
            r#"{"id":"mb","messages":[{"role":"user","content":"x"},{"role":"assistant","content":null}]}"#,
            Some("mb"),
            "messages[1].content",
        ),
        // Commands and cancels.
        bad("cmd_unknown", r#"{"cmd":"reboot"}"#, None, "reboot"),
        bad(
            "cmd_number",
            r#"{"cmd":1,"id":"c1"}"#,
            Some("c1"),
            "cmd: invalid type",
        ),
        bad("cmd_null", r#"{"cmd":null}"#, None, "cmd: invalid type"),
        bad(
            "cmd_extra_field",
            r#"{"cmd":"status","verbose":true}"#,
            None,
            "verbose",
        ),
        bad(
            "cmd_id_number",
            r#"{"cmd":"health","id":7}"#,
            None,
            "id: invalid type",
        ),
        bad(
            "cmd_with_prompt",
            r#"{"cmd":"status","id":"c2","prompt":"x"}"#,
            Some("c2"),
            "prompt",
        ),
        bad(
            "cancel_number",
            r#"{"cancel":5}"#,
            None,
            "cancel: invalid type",
        ),
        bad(
            "cancel_empty",
            r#"{"cancel":""}"#,
            None,
            "cancel: id must have",
        ),
        bad(
            "cancel_with_id",
            r#"{"cancel":"x","id":"c3"}"#,
            Some("c3"),
            "unknown field `id`",
        ),
        bad(
            "cancel_unknown",
            r#"{"cancel":"nope"}"#,
            Some("nope"),
            "no request \"nope\"",
        ),
    ];
    // Limits: a line past max_line_bytes, and a prompt past the context (1024 tokens).
    cases.push(Case {
        name: "over_long_line",
        line: format!(r#"{{"id":"ll","prompt":"{}"}}"#, "a".repeat(MAX_LINE)).into_bytes(),
        code: "too_long",
        id: None,
        names: "longer than 16384 bytes",
    });
    cases.push(Case {
        name: "prompt_past_context",
        line: format!(r#"{{"id":"ctx","prompt":"{}"}}"#, " a".repeat(1100)).into_bytes(),
        code: "too_long",
        id: Some("ctx"),
        names: "the limit is 1023",
    });
    cases
}

#[test]
fn every_kind_of_malformed_input_gets_an_error_and_the_daemon_goes_on() {
    let cases = cases();
    assert!(cases.len() >= 50, "{} kinds", cases.len());
    let mut names: Vec<_> = cases.iter().map(|c| c.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names are unique");

    let d = Daemon::start(&format!("[limits]\nmax_line_bytes = {MAX_LINE}\n"));
    // Valid requests on another connection, one after another, the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let valid = {
        let socket = d.socket.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = daemon::Client::new(&socket);
            let mut served = 0;
            while served == 0 || !stop.load(Ordering::Relaxed) {
                let id = format!("v{served}");
                c.send(&request(&id, "A fine request", 8));
                let (text, done) = c.finish(&id);
                assert_eq!(done["done"], true, "{done}");
                assert_eq!(done["text"], text.as_str(), "{done}");
                served += 1;
            }
            served
        })
    };

    let mut c = d.connect();
    for case in &cases {
        // Blank lines, bare or with spaces or CR, are skipped without a reply.
        c.send_raw(b"\n \t \r\n\r\n");
        c.send_raw(&case.line);
        c.send_raw(b"\n");
        let e = c.event();
        let what = format!("{}: {e}", case.name);
        assert_eq!(e["error"]["code"], case.code, "{what}");
        let message = e["error"]["message"].as_str().expect(&what);
        assert!(message.contains(case.names), "{what}");
        match case.id {
            Some(id) => assert_eq!(e["id"], id, "{what}"),
            None => assert!(e["id"].is_null(), "{what}"),
        }
        // The next request on the same connection (this one ended by CR LF) is served.
        let id = format!("after_{}", case.name);
        c.send_raw(format!("{}\r\n", request(&id, "Hi", 1)).as_bytes());
        let (_, done) = c.finish(&id);
        assert_eq!(done["done"], true, "after {what}: {done}");
    }
    stop.store(true, Ordering::Relaxed);
    let served = valid
        .join()
        .expect("the valid client's requests all completed");
    assert!(served >= 1);

    let status = d.status();
    assert_eq!(status["queue_depth"], 0, "{status}");
    assert_eq!(
        status["requests"].as_u64().unwrap(),
        served + cases.len() as u64,
        "{status}"
    );
    // Each request that reached the engine has its log line, the refused long prompt too.
    let log = d.log();
    assert!(log.contains("request ctx via socket: "), "{log}");
    assert!(log.contains("finish error (too_long"), "{log}");
}

#[test]
fn a_last_line_without_newline_is_answered_before_the_connection_ends() {
    let d = Daemon::start("");
    let mut c = d.connect();
    c.send_raw(br#"{"id":"x","prompt":"Hi","colour":1}"#);
    c.writer.shutdown(std::net::Shutdown::Write).unwrap();
    let e = c.event();
    assert_eq!(e["id"], "x", "{e}");
    assert_eq!(e["error"]["code"], "bad_request", "{e}");
    let mut rest = String::new();
    use std::io::Read;
    c.reader.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "nothing after the one reply");
}

#[test]
fn an_id_is_free_again_as_soon_as_its_answer_arrives() {
    let d = Daemon::start("");
    let mut c = d.connect();
    // Reusing an id at once never meets "already in flight"; a second request under the id
    // of one still running does.
    for _ in 0..20 {
        c.send(&request("same", "Hi", 1));
        assert_eq!(c.finish("same").1["done"], true);
    }
    c.send(&daemon::long_request("busy"));
    assert!(c.event()["token"].is_string());
    c.send(&request("busy", "Hi", 1));
    // Tokens of the running request may come first.
    let e = loop {
        let e = c.event();
        if e["token"].is_null() {
            break e;
        }
    };
    assert_eq!(e["error"]["code"], "bad_request", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already in flight")
    );
    c.send(&serde_json::json!({"cancel": "busy"}));
    assert_eq!(c.finish("busy").1["finish_reason"], "cancelled");
}

/// Replays the fuzz seeds (and any crash inputs added there) through the parser on stable,
/// without cargo-fuzz: no panic, and every error is one JSON line.
#[test]
fn fuzz_seeds_parse_without_panic() {
    let files = crate::common::files_in(SEEDS);
    assert!(files.len() >= 50, "seed corpus missing from {SEEDS}");
    let config = Config::default();
    let mut failures = Vec::new();
    for path in &files {
        let line = std::fs::read(path).unwrap();
        match catch_unwind(|| parse_line(&line, &config)) {
            Err(_) => failures.push(format!("{}: panicked", path.display())),
            Ok(Ok(_)) => {}
            Ok(Err(rejection)) => {
                let out = rejection.event().to_line();
                if out.iter().filter(|&&b| b == b'\n').count() != 1 {
                    failures.push(format!("{}: the error is not one line", path.display()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The parser alone agrees with the daemon on every case it decides by itself.
#[test]
fn the_parser_refuses_each_case() {
    let config = Config {
        limits: bitnetd::config::Limits {
            max_line_bytes: MAX_LINE,
            ..Default::default()
        },
        ..Config::default()
    };
    let mut failures = Vec::new();
    for case in cases() {
        let decided_later = ["cancel_unknown", "over_long_line", "prompt_past_context"];
        let result = parse_line(&case.line, &config);
        if decided_later.contains(&case.name) {
            // The socket (line length, cancel table) or the engine (tokens) refuses these.
            if !matches!(result, Ok(Incoming::Generate(_) | Incoming::Cancel(_))) {
                failures.push(format!("{}: {result:?}", case.name));
            }
            continue;
        }
        match result {
            Err(r) if r.id.as_deref() == case.id && r.message.contains(case.names) => {}
            other => failures.push(format!("{}: {other:?}", case.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Rewrites the seed corpus: every malformed case and a few valid lines.
/// Run with `cargo test --release --test it serve_malformed::write_fuzz_seeds -- --ignored`.
#[test]
#[ignore = "rewrites fuzz/seeds; run by hand"]
fn write_fuzz_seeds() {
    let dir = Path::new(SEEDS);
    std::fs::create_dir_all(dir).unwrap();
    let valid = [
        (
            "valid_full",
            r#"{"id":"r1","prompt":"hi","system":"be brief","max_tokens":5,"temperature":0.5,"top_k":3,"top_p":0.9,"min_p":0.1,"seed":7,"stop":["\n\n"],"stream":false}"#,
        ),
        (
            "valid_messages",
            r#"{"id":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"u"},{"role":"assistant","content":"a"},{"role":"user","content":"v"}]}"#,
        ),
        (
            "valid_unicode",
            r#"{"id":"ü","prompt":"héllo \u00e9 \ud83d\ude00 😀"}"#,
        ),
        ("valid_cancel", r#"{"cancel":"r1"}"#),
        ("valid_status", r#"{"cmd":"status","id":"s"}"#),
        ("valid_health", r#"{"cmd":"health"}"#),
    ];
    let mut seeds: Vec<(String, Vec<u8>)> = valid
        .iter()
        .map(|(n, l)| (n.to_string(), l.as_bytes().to_vec()))
        .collect();
    seeds.extend(
        cases()
            .into_iter()
            .filter(|c| c.line.len() <= 4096)
            .map(|c| (c.name.to_string(), c.line)),
    );
    for (name, line) in seeds {
        std::fs::write(dir.join(format!("{name}.json")), line).unwrap();
    }
}
