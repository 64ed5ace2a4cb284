//! Encodes metadata-only GGUF v3 files in memory for tests.

use crate::gguf::{Gguf, Value};

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s),
        Value::Array(ty, items) => {
            out.extend_from_slice(&(*ty as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            items.iter().for_each(|item| put_value(out, item));
        }
        other => panic!("test GGUF writer does not encode {other:?}"),
    }
}

pub fn gguf(kvs: &[(&str, Value)]) -> Gguf {
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (key, value) in kvs {
        put_str(&mut out, key);
        out.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
        put_value(&mut out, value);
    }
    // The (empty) tensor data section starts at the next 32-byte boundary.
    out.resize(out.len().next_multiple_of(32), 0);
    Gguf::from_bytes(out).expect("test GGUF parses")
}

pub fn str(s: &str) -> Value {
    Value::String(s.to_owned())
}

pub fn strs(items: &[&str]) -> Value {
    Value::Array(
        crate::gguf::ValueType::String,
        items.iter().map(|s| str(s)).collect(),
    )
}

pub fn i32s(items: &[i32]) -> Value {
    Value::Array(
        crate::gguf::ValueType::I32,
        items.iter().map(|&x| Value::I32(x)).collect(),
    )
}

pub fn f32s(items: &[f32]) -> Value {
    Value::Array(
        crate::gguf::ValueType::F32,
        items.iter().map(|&x| Value::F32(x)).collect(),
    )
}
