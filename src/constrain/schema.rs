//! JSON Schema, compiled once per request into a small typed grammar ([`Schema`]): an arena of
//! [`Node`]s that the byte matcher walks. Only a subset of JSON Schema is supported; every
//! other keyword is refused by name with its JSON pointer, so that a schema is never silently
//! weakened.

use std::fmt;

use serde_json::{Map, Value};

/// Index of a node in [`Schema::nodes`].
pub type NodeId = u32;

/// Most properties one object may declare (the matcher keeps a 64-bit "seen" mask).
pub const MAX_PROPERTIES: usize = 64;
/// Longest string when the schema gives no `maxLength`: long enough for any sensible field,
/// short enough that a rambling model still closes its strings.
pub const DEFAULT_MAX_STRING_CHARS: u32 = 512;
/// Most alternatives an `anyOf` or `enum` may have (each is followed as its own state).
const MAX_ALTERNATIVES: usize = 256;
/// Nesting of the schema itself.
const MAX_SCHEMA_DEPTH: usize = 32;

/// Keywords that only annotate and do not restrict the output.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "$schema",
    "$id",
    "$comment",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// One value's grammar.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// One of fixed JSON texts (`enum`, `const`, `null`, `boolean`), as indexes in
    /// [`Schema::literals`].
    Literals(Vec<u32>),
    /// A string of `min..=max` characters.
    String {
        min: u32,
        max: u32,
    },
    /// A JSON number; `integer` allows neither fraction nor exponent.
    Number {
        integer: bool,
    },
    Object(Object),
    Array {
        items: NodeId,
        min: u32,
        max: Option<u32>,
    },
    /// Any of the alternatives.
    AnyOf(Vec<NodeId>),
}

/// An object's members.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Declared properties: the key's JSON text without its opening quote (`name"`), and the
    /// value's node.
    pub properties: Vec<(Vec<u8>, NodeId)>,
    /// Bit i: property i is required.
    pub required: u64,
    /// The schema of keys not in `properties`; None: no other keys are generated.
    pub additional: Option<NodeId>,
}

/// A compiled schema: node 0 is the root.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    pub nodes: Vec<Node>,
    /// Fixed JSON texts (compact serialization).
    pub literals: Vec<Vec<u8>>,
    /// The fewest bytes of a complete value of each node.
    pub min_len: Vec<u32>,
}

/// Why a schema was refused, and where (a JSON pointer into the schema).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    pub pointer: String,
    /// The keyword at fault, when one is.
    pub keyword: Option<String>,
    pub reason: String,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.pointer.is_empty() {
            "/"
        } else {
            &self.pointer
        };
        match &self.keyword {
            Some(k) => write!(f, "json_schema keyword {k:?} at {at}: {}", self.reason),
            None => write!(f, "json_schema at {at}: {}", self.reason),
        }
    }
}

impl std::error::Error for SchemaError {}

impl Schema {
    /// Compiles `value` (a JSON Schema: an object, or `true`).
    pub fn compile(value: &Value) -> Result<Schema, SchemaError> {
        let mut c = Compiler {
            schema: Schema {
                nodes: Vec::new(),
                literals: Vec::new(),
                min_len: Vec::new(),
            },
        };
        c.node(value, "", 0)?;
        c.schema.min_len = min_lengths(&c.schema);
        Ok(c.schema)
    }

    /// Any JSON value (`{}`).
    pub fn any() -> Schema {
        Schema::compile(&Value::Object(Map::new())).expect("{} compiles")
    }
}

struct Compiler {
    schema: Schema,
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

impl Compiler {
    fn push(&mut self, node: Node) -> NodeId {
        self.schema.nodes.push(node);
        (self.schema.nodes.len() - 1) as NodeId
    }

    /// Reserves a node to fill in later (children are compiled after their parent's slot, so
    /// the root stays node 0).
    fn reserve(&mut self) -> NodeId {
        self.push(Node::AnyOf(Vec::new()))
    }

    fn literal(&mut self, v: &Value) -> u32 {
        let text = serde_json::to_vec(v).expect("a JSON value serializes");
        if let Some(i) = self.schema.literals.iter().position(|l| *l == text) {
            return i as u32;
        }
        self.schema.literals.push(text);
        (self.schema.literals.len() - 1) as u32
    }

    fn node(&mut self, value: &Value, at: &str, depth: usize) -> Result<NodeId, SchemaError> {
        let err = |keyword: Option<&str>, reason: String| SchemaError {
            pointer: at.to_owned(),
            keyword: keyword.map(str::to_owned),
            reason,
        };
        if depth > MAX_SCHEMA_DEPTH {
            return Err(err(
                None,
                format!("nested deeper than {MAX_SCHEMA_DEPTH} levels"),
            ));
        }
        let map = match value {
            Value::Bool(true) => return Ok(self.any_value()),
            Value::Object(map) => map,
            Value::Bool(false) => {
                return Err(err(None, "the schema false matches nothing".into()));
            }
            _ => return Err(err(None, "a schema must be an object or true".into())),
        };
        let id = self.reserve();
        let node = self.object_schema(map, at, depth)?;
        self.schema.nodes[id as usize] = node;
        Ok(id)
    }

    /// `{}` and `true`: an anyOf of every kind, objects and arrays of any values.
    fn any_value(&mut self) -> NodeId {
        let id = self.reserve();
        let scalars =
            [Value::Null, Value::Bool(true), Value::Bool(false)].map(|v| self.literal(&v));
        let lit = self.push(Node::Literals(scalars.to_vec()));
        let num = self.push(Node::Number { integer: false });
        let string = self.push(Node::String {
            min: 0,
            max: DEFAULT_MAX_STRING_CHARS,
        });
        let obj = self.push(Node::Object(Object {
            properties: Vec::new(),
            required: 0,
            additional: Some(id),
        }));
        let arr = self.push(Node::Array {
            items: id,
            min: 0,
            max: None,
        });
        self.schema.nodes[id as usize] = Node::AnyOf(vec![lit, num, string, obj, arr]);
        id
    }

    fn object_schema(
        &mut self,
        map: &Map<String, Value>,
        at: &str,
        depth: usize,
    ) -> Result<Node, SchemaError> {
        let err = |keyword: &str, reason: String| SchemaError {
            pointer: at.to_owned(),
            keyword: Some(keyword.to_owned()),
            reason,
        };
        const KNOWN: &[&str] = &[
            "type",
            "enum",
            "const",
            "anyOf",
            "oneOf",
            "properties",
            "required",
            "additionalProperties",
            "items",
            "minItems",
            "maxItems",
            "minLength",
            "maxLength",
        ];
        if let Some(k) = map
            .keys()
            .find(|k| !KNOWN.contains(&k.as_str()) && !ANNOTATIONS.contains(&k.as_str()))
        {
            return Err(err(k, "this keyword is not supported".into()));
        }
        let restricting: Vec<&str> = map
            .keys()
            .map(String::as_str)
            .filter(|k| KNOWN.contains(k))
            .collect();
        // Exclusive forms: each must stand alone (besides annotations), since combining them
        // would need the intersection of two languages.
        for alone in ["enum", "const", "anyOf", "oneOf"] {
            if map.contains_key(alone)
                && let Some(other) = restricting.iter().find(|k| **k != alone)
            {
                return Err(err(
                    other,
                    format!("cannot be combined with {alone:?} (give {alone:?} alone)"),
                ));
            }
        }
        if let Some(v) = map.get("const") {
            return Ok(Node::Literals(vec![self.literal(v)]));
        }
        if let Some(v) = map.get("enum") {
            let Value::Array(values) = v else {
                return Err(err("enum", "must be an array".into()));
            };
            if values.is_empty() || values.len() > MAX_ALTERNATIVES {
                return Err(err(
                    "enum",
                    format!("must have 1 to {MAX_ALTERNATIVES} values"),
                ));
            }
            let mut ids: Vec<u32> = values.iter().map(|v| self.literal(v)).collect();
            ids.dedup();
            return Ok(Node::Literals(ids));
        }
        for keyword in ["anyOf", "oneOf"] {
            if let Some(v) = map.get(keyword) {
                let Value::Array(alts) = v else {
                    return Err(err(keyword, "must be an array of schemas".into()));
                };
                if alts.is_empty() || alts.len() > MAX_ALTERNATIVES {
                    return Err(err(
                        keyword,
                        format!("must have 1 to {MAX_ALTERNATIVES} schemas"),
                    ));
                }
                let ids = alts
                    .iter()
                    .enumerate()
                    .map(|(i, a)| self.node(a, &format!("{at}/{keyword}/{i}"), depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok(Node::AnyOf(ids));
            }
        }
        let types: Vec<&str> = match map.get("type") {
            None => match infer_type(map) {
                Some(t) => vec![t],
                None => return Ok(Node::AnyOf(vec![self.any_value()])),
            },
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) if !ts.is_empty() => ts
                .iter()
                .map(|t| {
                    t.as_str().ok_or_else(|| {
                        err("type", "must be a string or an array of strings".into())
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(err(
                    "type",
                    "must be a string or a non-empty array of strings".into(),
                ));
            }
        };
        let mut alts = Vec::with_capacity(types.len());
        for t in types {
            let node = match t {
                "null" => Node::Literals(vec![self.literal(&Value::Null)]),
                "boolean" => Node::Literals(vec![
                    self.literal(&Value::Bool(true)),
                    self.literal(&Value::Bool(false)),
                ]),
                "integer" => Node::Number { integer: true },
                "number" => Node::Number { integer: false },
                "string" => {
                    let min = count(map, "minLength", at)?.unwrap_or(0);
                    let max = count(map, "maxLength", at)?.unwrap_or(DEFAULT_MAX_STRING_CHARS);
                    if min > max {
                        return Err(err("minLength", format!("{min} is above maxLength {max}")));
                    }
                    Node::String { min, max }
                }
                "array" => {
                    let items = match map.get("items") {
                        Some(v) => self.node(v, &format!("{at}/items"), depth + 1)?,
                        None => self.any_value(),
                    };
                    let min = count(map, "minItems", at)?.unwrap_or(0);
                    let max = count(map, "maxItems", at)?;
                    if max.is_some_and(|max| min > max) {
                        return Err(err("minItems", format!("{min} is above maxItems")));
                    }
                    Node::Array { items, min, max }
                }
                "object" => Node::Object(self.object(map, at, depth)?),
                other => {
                    return Err(err(
                        "type",
                        format!(
                            "{other:?} is not a JSON Schema type (null, boolean, integer, \
                             number, string, array, object)"
                        ),
                    ));
                }
            };
            alts.push(node);
        }
        if alts.len() == 1 {
            return Ok(alts.pop().expect("one"));
        }
        let ids = alts.into_iter().map(|n| self.push(n)).collect();
        Ok(Node::AnyOf(ids))
    }

    fn object(
        &mut self,
        map: &Map<String, Value>,
        at: &str,
        depth: usize,
    ) -> Result<Object, SchemaError> {
        let err = |keyword: &str, reason: String| SchemaError {
            pointer: at.to_owned(),
            keyword: Some(keyword.to_owned()),
            reason,
        };
        let mut properties = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        if let Some(v) = map.get("properties") {
            let Value::Object(props) = v else {
                return Err(err("properties", "must be an object".into()));
            };
            if props.len() > MAX_PROPERTIES {
                return Err(err(
                    "properties",
                    format!("has {} properties; at most {MAX_PROPERTIES}", props.len()),
                ));
            }
            for (name, sub) in props {
                let here = format!("{at}/properties/{}", escape_pointer(name));
                let node = self.node(sub, &here, depth + 1)?;
                let mut key = serde_json::to_vec(name).expect("a string serializes");
                key.remove(0);
                properties.push((key, node));
                names.push(name);
            }
        }
        let mut required = 0u64;
        if let Some(v) = map.get("required") {
            let Value::Array(req) = v else {
                return Err(err("required", "must be an array of property names".into()));
            };
            for (i, r) in req.iter().enumerate() {
                let Some(name) = r.as_str() else {
                    return Err(err("required", format!("item {i} is not a string")));
                };
                let Some(p) = names.iter().position(|n| *n == name) else {
                    return Err(err(
                        "required",
                        format!("{name:?} is not in properties (give its schema there)"),
                    ));
                };
                required |= 1 << p;
            }
        }
        let additional = match map.get("additionalProperties") {
            Some(Value::Bool(false)) => None,
            // Absent with properties: only the listed properties are generated (still valid,
            // since extra keys are merely allowed). Absent without: any object.
            None if map.contains_key("properties") => None,
            None | Some(Value::Bool(true)) => Some(self.any_value()),
            Some(v) => Some(self.node(v, &format!("{at}/additionalProperties"), depth + 1)?),
        };
        Ok(Object {
            properties,
            required,
            additional,
        })
    }
}

/// The type a schema without `type` implies from its keywords (None: any value).
fn infer_type(map: &Map<String, Value>) -> Option<&'static str> {
    let has = |keys: &[&str]| keys.iter().any(|k| map.contains_key(*k));
    if has(&["properties", "required", "additionalProperties"]) {
        Some("object")
    } else if has(&["items", "minItems", "maxItems"]) {
        Some("array")
    } else if has(&["minLength", "maxLength"]) {
        Some("string")
    } else {
        None
    }
}

/// A non-negative integer keyword.
fn count(map: &Map<String, Value>, keyword: &str, at: &str) -> Result<Option<u32>, SchemaError> {
    let Some(v) = map.get(keyword) else {
        return Ok(None);
    };
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| SchemaError {
            pointer: at.to_owned(),
            keyword: Some(keyword.to_owned()),
            reason: format!("must be a non-negative integer, not {v}"),
        })
}

/// Fewest bytes of a complete value of each node: a fixpoint, since `{}` refers to itself.
fn min_lengths(s: &Schema) -> Vec<u32> {
    const UNKNOWN: u32 = u32::MAX / 4;
    let mut len = vec![UNKNOWN; s.nodes.len()];
    loop {
        let mut changed = false;
        for (i, node) in s.nodes.iter().enumerate() {
            let l = match node {
                Node::Literals(ids) => ids
                    .iter()
                    .map(|&l| s.literals[l as usize].len() as u32)
                    .min()
                    .unwrap_or(UNKNOWN),
                Node::String { min, .. } => 2 + min,
                Node::Number { .. } => 1,
                Node::Object(o) => 2 + required_cost(o, &len, o.required, false).min(UNKNOWN),
                Node::Array { items, min, .. } => {
                    let item = len[*items as usize];
                    2 + (*min * item.saturating_add(1))
                        .saturating_sub(1)
                        .min(UNKNOWN)
                }
                Node::AnyOf(alts) => alts
                    .iter()
                    .map(|&a| len[a as usize])
                    .min()
                    .unwrap_or(UNKNOWN),
            };
            let l = l.min(UNKNOWN);
            if l < len[i] {
                len[i] = l;
                changed = true;
            }
        }
        if !changed {
            return len;
        }
    }
}

/// Bytes of the members in `missing` (a mask of properties), `"key":value` each with commas
/// between them, and a leading comma when `after_member`.
pub fn required_cost(o: &Object, min_len: &[u32], missing: u64, after_member: bool) -> u32 {
    let mut total = 0u32;
    let mut n = 0u32;
    for (i, (key, node)) in o.properties.iter().enumerate() {
        if missing & (1 << i) != 0 {
            // Opening quote, key and closing quote, colon, value.
            total = total
                .saturating_add(1 + key.len() as u32 + 1)
                .saturating_add(min_len[*node as usize]);
            n += 1;
        }
    }
    let commas = if after_member { n } else { n.saturating_sub(1) };
    total.saturating_add(commas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(v: Value) -> SchemaError {
        Schema::compile(&v).expect_err("refused")
    }

    #[test]
    fn unsupported_keywords_are_named_with_their_pointer() {
        let e = refused(
            json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}}),
        );
        assert_eq!(e.keyword.as_deref(), Some("pattern"));
        assert_eq!(e.pointer, "/properties/a");
        assert!(
            e.to_string().contains("\"pattern\" at /properties/a"),
            "{e}"
        );
        for k in [
            "format",
            "$ref",
            "allOf",
            "not",
            "minimum",
            "maximum",
            "multipleOf",
            "patternProperties",
            "uniqueItems",
            "prefixItems",
            "if",
            "$defs",
        ] {
            let e = refused(json!({ k: 1 }));
            assert_eq!(e.keyword.as_deref(), Some(k), "{e}");
        }
        let e = refused(json!({"anyOf": [{"type": "string"}, {"type": "x"}]}));
        assert_eq!(
            (e.keyword.as_deref(), e.pointer.as_str()),
            (Some("type"), "/anyOf/1")
        );
        let e = refused(json!({"type": "string", "enum": ["a"]}));
        assert_eq!(e.keyword.as_deref(), Some("type"), "{e}");
        let e = refused(json!({"properties": {"a": {}}, "required": ["b"]}));
        assert_eq!(e.keyword.as_deref(), Some("required"), "{e}");
        let e = refused(json!(false));
        assert!(e.to_string().contains("matches nothing"), "{e}");
        let e = refused(json!({"properties": {"a/b": {"format": "date"}}}));
        assert_eq!(e.pointer, "/properties/a~1b");
    }

    #[test]
    fn minimum_lengths() {
        let s = Schema::compile(&json!({})).unwrap();
        assert_eq!(s.min_len[0], 1);
        let s = Schema::compile(&json!({
            "type": "object",
            "properties": {"ab": {"type": "string"}, "c": {"enum": [true, null]}},
            "required": ["ab"]
        }))
        .unwrap();
        // {"ab":""}
        assert_eq!(s.min_len[0], 9);
        let s = Schema::compile(&json!({"type": "array", "items": {"const": 10}, "minItems": 3}))
            .unwrap();
        // [10,10,10]
        assert_eq!(s.min_len[0], 10);
    }
}
