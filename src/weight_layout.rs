//! How a GGUF file stores its ternary weights: bitnet.cpp's I2_S (the default), or
//! bitnetd's own TL1 layout, which the TL1 kernels read straight from the file map.
//!
//! A TL1 file is marked twice, so that no reader can take it for something else:
//! - every ternary tensor has the type [`GgmlType::Tl1Bitnetd`], whose id lies far
//!   outside ggml's range (ggml-based readers, bitnet.cpp included, refuse the file
//!   instead of reading TL1 bytes as I2_S or as bitnet.cpp's TL1);
//! - the metadata key `bitnetd.weight_layout` is `"tl1-v1"` (for people and tools
//!   that list the metadata).
//!
//! The loader requires both to agree. Everything else (metadata, other tensors,
//! `general.file_type`, which names the ternary quantization, not its byte order) is
//! as in the I2_S file.

use bitnet_kernels::dispatch::Layout;

use crate::gguf::{GgmlType, Gguf, Value};

/// The metadata key naming the layout of a file's ternary weights (absent: I2_S).
pub const LAYOUT_KEY: &str = "bitnetd.weight_layout";
/// Its value in a TL1 file: version 1 of the layout of `kernels/src/tl1.rs`.
pub const TL1_V1: &str = "tl1-v1";
/// Bytes after a ternary tensor's weights, in both layouts: the f32 scale, then
/// zeros (copied as they are from an I2_S tensor).
pub const TERNARY_TAIL: usize = 32;

/// A layout's name on the command line (`--outtype`, `convert --to`).
pub fn layout_name(layout: Layout) -> &'static str {
    match layout {
        Layout::I2s => "i2_s",
        Layout::Tl1 => "tl1",
    }
}

/// Parses `i2_s` or `tl1` (any case).
pub fn parse_layout(name: &str) -> Result<Layout, String> {
    match name.to_ascii_lowercase().as_str() {
        "i2_s" => Ok(Layout::I2s),
        "tl1" => Ok(Layout::Tl1),
        _ => Err(format!("{name:?} is not a weight layout: i2_s or tl1")),
    }
}

/// The tensor type of ternary weights in `layout`.
pub fn tensor_type(layout: Layout) -> GgmlType {
    match layout {
        Layout::I2s => GgmlType::I2S,
        Layout::Tl1 => GgmlType::Tl1Bitnetd,
    }
}

/// The metadata entry that marks a file in `layout` (none for I2_S).
pub fn marker(layout: Layout) -> Option<(&'static str, Value)> {
    match layout {
        Layout::I2s => None,
        Layout::Tl1 => Some((LAYOUT_KEY, Value::String(TL1_V1.into()))),
    }
}

/// The layout a file declares for its ternary weights, or what is wrong with its key.
pub fn declared_layout(g: &Gguf) -> Result<Layout, String> {
    match g.get(LAYOUT_KEY) {
        None => Ok(Layout::I2s),
        Some(Value::String(s)) if s == TL1_V1 => Ok(Layout::Tl1),
        Some(other) => Err(format!(
            "{} is not a layout this bitnetd reads ({TL1_V1:?}); the file was written by \
             another version of bitnetd: convert it again from its I2_S file",
            other.describe()
        )),
    }
}

/// Checks a ternary tensor's type against the file's declared layout: a tensor in
/// bitnetd's TL1 layout in a file without the marker, or the reverse, is refused.
pub fn check_tensor(name: &str, ty: GgmlType, declared: Layout) -> Result<(), String> {
    let want = tensor_type(declared);
    if ty == want {
        return Ok(());
    }
    Err(match declared {
        Layout::I2s => format!(
            "tensor {name} is {ty} but the file has no {LAYOUT_KEY} = {TL1_V1:?} key \
             (a damaged or hand-made file)"
        ),
        Layout::Tl1 => format!(
            "tensor {name} is {ty} but the file's {LAYOUT_KEY} says {TL1_V1:?}, whose ternary \
             tensors are {want} (a damaged or hand-made file)"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufWriter;

    fn file_with(layout: Option<Value>) -> Gguf {
        let mut w = GgufWriter::new();
        if let Some(v) = layout {
            w.add_metadata(LAYOUT_KEY, v).unwrap();
        }
        let mut out = Vec::new();
        w.write(&mut out, |_, _| Ok(())).unwrap();
        Gguf::from_bytes(out).unwrap()
    }

    #[test]
    fn the_key_declares_the_layout() {
        assert_eq!(declared_layout(&file_with(None)), Ok(Layout::I2s));
        let (key, value) = marker(Layout::Tl1).unwrap();
        assert_eq!(key, LAYOUT_KEY);
        assert_eq!(declared_layout(&file_with(Some(value))), Ok(Layout::Tl1));
        let err = declared_layout(&file_with(Some(Value::String("tl1-v2".into())))).unwrap_err();
        assert!(
            err.contains("\"tl1-v2\"") && err.contains("tl1-v1"),
            "{err}"
        );
        assert!(declared_layout(&file_with(Some(Value::U32(1)))).is_err());
        assert!(marker(Layout::I2s).is_none());
    }

    #[test]
    fn tensor_types_must_agree_with_the_key() {
        assert!(check_tensor("a", GgmlType::I2S, Layout::I2s).is_ok());
        assert!(check_tensor("a", GgmlType::Tl1Bitnetd, Layout::Tl1).is_ok());
        let e = check_tensor("blk.0.attn_q.weight", GgmlType::Tl1Bitnetd, Layout::I2s);
        assert!(
            e.unwrap_err()
                .contains("blk.0.attn_q.weight is TL1_BITNETD")
        );
        let e = check_tensor("b", GgmlType::I2S, Layout::Tl1).unwrap_err();
        assert!(e.contains("b is I2_S") && e.contains("TL1_BITNETD"), "{e}");
    }

    #[test]
    fn names_round_trip() {
        for layout in [Layout::I2s, Layout::Tl1] {
            assert_eq!(parse_layout(layout_name(layout)), Ok(layout));
        }
        assert_eq!(parse_layout("TL1"), Ok(Layout::Tl1));
        assert!(parse_layout("tl2").unwrap_err().contains("i2_s or tl1"));
    }
}
