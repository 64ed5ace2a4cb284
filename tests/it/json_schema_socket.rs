//! `json_schema` over the socket protocol, on the real daemon binary with the tiny reference
//! model (GPT-2's 50k byte-level vocabulary): outputs parse and validate, streamed tokens add
//! up to the final text, and bad schemas are refused as bad_request naming keyword, pointer
//! and request id.

use crate::daemon::Daemon;
use crate::json_schema_common::{refused, schemas, violation};
use serde_json::json;

const SEEDS: u64 = 10;

#[test]
fn schemas_over_the_socket_give_valid_json() {
    let d = Daemon::start("");
    let mut c = d.connect();
    for (name, schema) in schemas() {
        for seed in 0..SEEDS {
            let id = format!("{}-{seed}", name.replace(' ', "_"));
            c.send(
                &json!({"id": id, "prompt": "Reply in JSON", "max_tokens": 64,
                "seed": seed, "json_schema": schema}),
            );
            let (streamed, done) = c.finish(&id);
            assert_eq!(done["done"], true, "{done}");
            let text = done["text"].as_str().unwrap();
            assert_eq!(streamed, text);
            assert_eq!(done["finish_reason"], "stop", "{name}, seed {seed}: {done}");
            let value: serde_json::Value = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("{name}, seed {seed}: {e}: {text:?}"));
            if let Some(v) = violation(&schema, &value) {
                panic!("{name}, seed {seed}: {v}");
            }
        }
    }
    // `{}` (what an Ollama `format: "json"` maps to), not streamed.
    c.send(&json!({"id": "any", "prompt": "x", "stream": false, "json_schema": {}, "seed": 3}));
    let done = c.event();
    assert_eq!(done["id"], "any");
    serde_json::from_str::<serde_json::Value>(done["text"].as_str().unwrap()).unwrap();
}

#[test]
fn bad_schemas_are_refused_naming_keyword_pointer_and_id() {
    let d = Daemon::start("");
    let mut c = d.connect();
    for (i, (schema, keyword, pointer)) in refused().into_iter().enumerate() {
        let id = format!("bad{i}");
        c.send(&json!({"id": id, "prompt": "x", "json_schema": schema}));
        let e = c.event();
        assert_eq!(e["id"], id, "{e}");
        assert_eq!(e["error"]["code"], "bad_request", "{e}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("{keyword:?} at {pointer}")),
            "{message}"
        );
    }
    // Not a schema at all.
    c.send(&json!({"id": "num", "prompt": "x", "json_schema": 5}));
    let e = c.event();
    assert_eq!(
        (e["id"].as_str(), e["error"]["code"].as_str()),
        (Some("num"), Some("bad_request"))
    );
    // The daemon still serves.
    c.send(&json!({"id": "ok", "prompt": "x", "max_tokens": 8, "json_schema": true}));
    let (_, done) = c.finish("ok");
    assert_eq!(done["done"], true, "{done}");
}
