//! Metadata-only GGUF files in memory, for tests.

use crate::gguf::{Gguf, GgufWriter, Value};

pub fn gguf(kvs: &[(&str, Value)]) -> Gguf {
    let mut writer = GgufWriter::new();
    for (key, value) in kvs {
        writer
            .add_metadata(key, value.clone())
            .expect("valid test metadata");
    }
    let mut bytes = Vec::new();
    writer
        .write(&mut bytes, |_, _| Ok(()))
        .expect("in-memory write");
    Gguf::from_bytes(bytes).expect("test GGUF parses")
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
