//! The schemas the JSON-output tests run, and a validator of the JSON Schema subset bitnetd
//! supports. A Rust validator rather than Python's `jsonschema`: it runs in every test run
//! without a virtual environment, and the subset is small enough to check by reading.

use serde_json::{Value, json};

/// A dozen schemas covering every supported keyword, with a name for messages.
pub fn schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "home assistant action",
            json!({"type": "object",
                "properties": {"entity": {"type": "string"}, "action": {"enum": ["on", "off", "toggle"]}},
                "required": ["entity", "action"], "additionalProperties": false}),
        ),
        (
            "flat scalars",
            json!({"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"},
                "score": {"type": "number"}, "ok": {"type": "boolean"}, "none": {"type": "null"}},
                "required": ["name", "age", "score", "ok"]}),
        ),
        (
            "nested object",
            json!({"type": "object", "properties": {
                "device": {"type": "object", "properties": {
                    "id": {"type": "integer"},
                    "room": {"type": "object", "properties": {"floor": {"type": "integer"}},
                        "required": ["floor"]}},
                    "required": ["id", "room"], "additionalProperties": false}},
                "required": ["device"]}),
        ),
        (
            "array of objects",
            json!({"type": "array", "minItems": 1, "maxItems": 3, "items": {
                "type": "object", "properties": {"x": {"type": "number"}, "tag": {"type": "string"}},
                "required": ["x"]}}),
        ),
        (
            "mixed enum",
            json!({"enum": ["red", 7, null, true, -1.5, {"k": [1]}]}),
        ),
        (
            "any of",
            json!({"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 5},
                {"type": "object", "properties": {"v": {"type": "boolean"}}, "required": ["v"]}]}),
        ),
        ("any value", json!({})),
        ("any object", json!({"type": "object"})),
        (
            "bounded string",
            json!({"type": "string", "minLength": 3, "maxLength": 8}),
        ),
        (
            "integer array",
            json!({"type": "array", "items": {"type": "integer"}, "maxItems": 6}),
        ),
        (
            "one of with a const tag",
            json!({"oneOf": [
                {"type": "object", "properties": {"kind": {"const": "a"}, "n": {"type": "integer"}},
                    "required": ["kind", "n"], "additionalProperties": false},
                {"type": "object", "properties": {"kind": {"const": "b"}, "s": {"type": "string"}},
                    "required": ["kind", "s"], "additionalProperties": false}]}),
        ),
        (
            "additional properties schema",
            json!({"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"],
                "additionalProperties": {"type": "boolean"}}),
        ),
        ("nullable string", json!({"type": ["string", "null"]})),
    ]
}

/// Why `v` does not validate against `schema` (None: it does), for the supported subset.
pub fn violation(schema: &Value, v: &Value) -> Option<String> {
    let s = match schema {
        Value::Bool(true) => return None,
        Value::Object(s) => s,
        other => panic!("not a schema: {other}"),
    };
    let fail = |what: String| Some(format!("{what}: {v}"));
    if let Some(c) = s.get("const")
        && c != v
    {
        return fail(format!("not const {c}"));
    }
    if let Some(Value::Array(e)) = s.get("enum")
        && !e.contains(v)
    {
        return fail("not in enum".into());
    }
    if let Some(Value::Array(alts)) = s.get("anyOf")
        && alts.iter().all(|a| violation(a, v).is_some())
    {
        return fail("no anyOf alternative".into());
    }
    if let Some(Value::Array(alts)) = s.get("oneOf") {
        let n = alts.iter().filter(|a| violation(a, v).is_none()).count();
        if n != 1 {
            return fail(format!("{n} oneOf alternatives"));
        }
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(t) => vec![t],
            Value::Array(ts) => ts.iter().map(|t| t.as_str().unwrap()).collect(),
            _ => panic!("type {t}"),
        };
        let is = |t: &str| match t {
            "null" => v.is_null(),
            "boolean" => v.is_boolean(),
            "string" => v.is_string(),
            "number" => v.is_number(),
            "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
            "object" => v.is_object(),
            "array" => v.is_array(),
            other => panic!("type {other}"),
        };
        if !types.iter().any(|t| is(t)) {
            return fail(format!("not of type {t}"));
        }
    }
    let count = |k: &str| s.get(k).and_then(Value::as_u64).map(|n| n as usize);
    if let Value::String(text) = v {
        let n = text.chars().count();
        if count("minLength").is_some_and(|m| n < m) || count("maxLength").is_some_and(|m| n > m) {
            return fail(format!("{n} characters"));
        }
    }
    if let Value::Array(items) = v {
        if count("minItems").is_some_and(|m| items.len() < m)
            || count("maxItems").is_some_and(|m| items.len() > m)
        {
            return fail(format!("{} items", items.len()));
        }
        if let Some(item) = s.get("items") {
            for x in items {
                if let Some(e) = violation(item, x) {
                    return Some(e);
                }
            }
        }
    }
    if let Value::Object(members) = v {
        let empty = serde_json::Map::new();
        let props = s
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        if let Some(Value::Array(req)) = s.get("required")
            && let Some(r) = req
                .iter()
                .find(|r| !members.contains_key(r.as_str().unwrap()))
        {
            return fail(format!("required {r} missing"));
        }
        for (k, x) in members {
            let sub = match (props.get(k), s.get("additionalProperties")) {
                (Some(p), _) => p,
                (None, Some(Value::Bool(false))) => return fail(format!("extra key {k:?}")),
                (None, Some(a)) => a,
                (None, None) => continue,
            };
            if let Some(e) = violation(sub, x) {
                return Some(e);
            }
        }
    }
    None
}

/// Schemas refused, each with the keyword and pointer its error must name.
pub fn refused() -> Vec<(Value, &'static str, &'static str)> {
    vec![
        (json!({"type": "string", "pattern": "^a"}), "pattern", "/"),
        (json!({"type": "string", "format": "date"}), "format", "/"),
        (json!({"$ref": "#/$defs/x"}), "$ref", "/"),
        (json!({"allOf": [{}]}), "allOf", "/"),
        (json!({"not": {}}), "not", "/"),
        (json!({"type": "integer", "minimum": 0}), "minimum", "/"),
        (json!({"type": "number", "maximum": 9}), "maximum", "/"),
        (
            json!({"type": "number", "multipleOf": 2}),
            "multipleOf",
            "/",
        ),
        (
            json!({"type": "array", "uniqueItems": true}),
            "uniqueItems",
            "/",
        ),
        (
            json!({"type": "object", "patternProperties": {}}),
            "patternProperties",
            "/",
        ),
        (
            json!({"type": "object", "minProperties": 1}),
            "minProperties",
            "/",
        ),
        (
            json!({"type": "array", "prefixItems": []}),
            "prefixItems",
            "/",
        ),
        (json!({"if": {}, "then": {}}), "if", "/"),
        (
            json!({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string", "pattern": "x"}}}}),
            "pattern",
            "/properties/a/items",
        ),
        (
            json!({"anyOf": [{"type": "integer"}, {"type": "date"}]}),
            "type",
            "/anyOf/1",
        ),
    ]
}
