//! Damaged GGUF files, each made from a small valid file written by `GgufWriter`,
//! must be refused with an error that says what is wrong and where.
//!
//! Shapes that disagree with the model's metadata (e.g. `token_embd` vs.
//! `embedding_length`) are model validation, not container validation, and are
//! tested with the model loader.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use bitnetd::gguf::{GgmlType, Gguf, GgufError, GgufWriter, Value, ValueType};

const SEEDS: &str = "fuzz/seeds/gguf_parse";

/// Four tensors whose sizes are multiples of 32, so the file ends exactly where the
/// last tensor ends and every truncation of the data cuts into a tensor.
fn valid_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    let strings = |xs: &[&str]| xs.iter().map(|s| Value::String(s.to_string())).collect();
    let meta = [
        ("general.architecture", Value::String("bitnet-b1.58".into())),
        ("general.alignment", Value::U32(32)),
        ("test.flag", Value::Bool(true)),
        ("test.name", Value::String("hello".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(ValueType::String, strings(&["a", "bc", "def"])),
        ),
        (
            "test.scores",
            Value::Array(ValueType::F32, vec![Value::F32(0.5), Value::F32(-1.0)]),
        ),
    ];
    for (k, v) in meta {
        w.add_metadata(k, v).unwrap();
    }
    w.add_tensor("output_norm.weight", &[8], GgmlType::F32)
        .unwrap();
    w.add_tensor("blk.0.attn_q.weight", &[128, 2], GgmlType::I2S)
        .unwrap();
    w.add_tensor("blk.0.attn_k.weight", &[128, 2], GgmlType::I2S)
        .unwrap();
    w.add_tensor("token_embd.weight", &[8, 4], GgmlType::F16)
        .unwrap();
    let sizes = [32, 96, 96, 64];
    let mut out = Vec::new();
    w.write(&mut out, |i, sink| {
        sink.write_all(&vec![i as u8 + 1; sizes[i]])
    })
    .unwrap();
    out
}

/// Position of the only occurrence of a length-prefixed GGUF string.
fn string_at(buf: &[u8], s: &str) -> usize {
    let mut needle = (s.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(s.as_bytes());
    let hits: Vec<usize> = (0..buf.len())
        .filter(|&i| buf[i..].starts_with(&needle))
        .collect();
    assert_eq!(hits.len(), 1, "{s:?} should occur once");
    hits[0]
}

/// Position of a metadata value's payload (after key and type tag).
fn value_at(buf: &[u8], key: &str) -> usize {
    string_at(buf, key) + 8 + key.len() + 4
}

/// Positions of the fields of a tensor info.
struct InfoPos {
    start: usize,
    n_dims: usize,
    dims: usize,
    ty: usize,
    offset: usize,
}

fn info_at(buf: &[u8], name: &str) -> InfoPos {
    let start = string_at(buf, name);
    let n_dims = start + 8 + name.len();
    let n = u32::from_le_bytes(buf[n_dims..n_dims + 4].try_into().unwrap()) as usize;
    let dims = n_dims + 4;
    let ty = dims + 8 * n;
    InfoPos {
        start,
        n_dims,
        dims,
        ty,
        offset: ty + 4,
    }
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().unwrap())
}

/// A damaged file, the offset its error must report, and text the message must contain.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    at: usize,
    needles: Vec<String>,
}

fn case(
    name: &'static str,
    at: usize,
    needles: &[&str],
    damage: impl FnOnce(&mut Vec<u8>),
) -> Case {
    let mut bytes = valid_file();
    damage(&mut bytes);
    Case {
        name,
        bytes,
        at,
        needles: needles.iter().map(|s| s.to_string()).collect(),
    }
}

fn cases() -> Vec<Case> {
    let f = valid_file();
    let max = u64::MAX.to_string();
    let max = max.as_str();
    let name_v = value_at(&f, "test.name");
    let flag_v = value_at(&f, "test.flag");
    let tokens_v = value_at(&f, "tokenizer.ggml.tokens");
    let align_v = value_at(&f, "general.alignment");
    let norm = info_at(&f, "output_norm.weight");
    let q = info_at(&f, "blk.0.attn_q.weight");
    let k = info_at(&f, "blk.0.attn_k.weight");
    let emb = info_at(&f, "token_embd.weight");
    let data_offset = Gguf::from_bytes(f.clone()).unwrap().data_offset as usize;
    let q_rel = get_u64(&f, q.offset);
    let emb_rel = get_u64(&f, emb.offset);
    vec![
        case("bad_magic", 0, &["magic", "not a GGUF file"], |b| {
            b[0] = b'g'
        }),
        case("version_1", 4, &["version 1 is not supported"], |b| {
            put_u32(b, 4, 1)
        }),
        case("version_4", 4, &["unsupported GGUF version 4"], |b| {
            put_u32(b, 4, 4)
        }),
        case("big_endian", 4, &["big-endian"], |b| {
            put_u32(b, 4, 3u32.swap_bytes())
        }),
        case("huge_tensor_count", 8, &["tensor count", max], |b| {
            put_u64(b, 8, u64::MAX)
        }),
        case("huge_metadata_count", 16, &["metadata count", max], |b| {
            put_u64(b, 16, u64::MAX)
        }),
        case(
            "huge_key_length",
            string_at(&f, "test.flag"),
            &["key of metadata entry 2", max],
            |b| put_u64(b, string_at(&f, "test.flag"), u64::MAX),
        ),
        case(
            "huge_string_length",
            name_v,
            &["value of key \"test.name\"", max],
            |b| put_u64(b, name_v, u64::MAX),
        ),
        case(
            "huge_array_count",
            tokens_v + 4,
            &["\"tokenizer.ggml.tokens\"", max, "cannot fit"],
            |b| put_u64(b, tokens_v + 4, u64::MAX),
        ),
        case(
            "unknown_value_type",
            name_v - 4,
            &["\"test.name\"", "unknown value type 13"],
            |b| put_u32(b, name_v - 4, 13),
        ),
        case(
            "unknown_array_type",
            tokens_v,
            &["\"tokenizer.ggml.tokens\"", "unknown array element type 99"],
            |b| put_u32(b, tokens_v, 99),
        ),
        case(
            "bad_bool",
            flag_v,
            &["\"test.flag\"", "bool byte is 2"],
            |b| b[flag_v] = 2,
        ),
        case(
            "utf8_key",
            string_at(&f, "test.name") + 8 + 5,
            &["key of metadata entry 3", "UTF-8"],
            |b| b[string_at(&f, "test.name") + 8 + 5] = 0xff,
        ),
        case(
            "utf8_string",
            name_v + 8 + 1,
            &["value of key \"test.name\"", "UTF-8"],
            |b| b[name_v + 8 + 1] = 0xc3,
        ),
        case(
            "utf8_tensor_name",
            k.start + 8,
            &["name of tensor 2", "UTF-8"],
            |b| b[k.start + 8] = 0x80,
        ),
        case(
            "duplicate_key",
            string_at(&f, "test.name"),
            &["duplicate metadata key \"test.name\""],
            |b| {
                let flag = string_at(&f, "test.flag") + 8;
                b[flag..flag + 9].copy_from_slice(b"test.name");
            },
        ),
        case(
            "zero_dims",
            norm.n_dims,
            &["\"output_norm.weight\"", "0 dimensions"],
            |b| put_u32(b, norm.n_dims, 0),
        ),
        case(
            "five_dims",
            norm.n_dims,
            &["\"output_norm.weight\"", "5 dimensions"],
            |b| put_u32(b, norm.n_dims, 5),
        ),
        case(
            "zero_dim",
            q.dims + 8,
            &["\"blk.0.attn_q.weight\"", "dimension 1 is 0"],
            |b| put_u64(b, q.dims + 8, 0),
        ),
        case(
            "dims_overflow",
            q.start,
            &["\"blk.0.attn_q.weight\"", "overflows"],
            |b| {
                put_u64(b, q.dims, 1 << 40);
                put_u64(b, q.dims + 8, 1 << 40);
            },
        ),
        case(
            "unknown_ggml_type",
            norm.ty,
            &["\"output_norm.weight\"", "ggml type 2,"],
            |b| put_u32(b, norm.ty, 2),
        ),
        case(
            "duplicate_tensor",
            k.start,
            &["duplicate tensor name \"blk.0.attn_q.weight\""],
            |b| b[k.start + 8 + 11] = b'q',
        ),
        case(
            "unaligned_offset",
            k.start,
            &[
                "\"blk.0.attn_k.weight\"",
                "not a multiple of the alignment 32",
            ],
            |b| put_u64(b, k.offset, get_u64(&f, k.offset) + 4),
        ),
        case(
            "tensor_past_end",
            emb.start,
            &["\"token_embd.weight\"", "runs past the end"],
            |b| put_u64(b, emb.offset, emb_rel + 32),
        ),
        case(
            "tensor_offset_wraps",
            emb.start,
            &["\"token_embd.weight\"", "runs past the end"],
            |b| put_u64(b, emb.offset, u64::MAX - 31),
        ),
        case(
            "tensors_overlap",
            data_offset + q_rel as usize + 32,
            &[
                "\"blk.0.attn_q.weight\"",
                "\"blk.0.attn_k.weight\"",
                "overlap",
            ],
            |b| put_u64(b, k.offset, q_rel + 32),
        ),
        case(
            "alignment_0",
            align_v,
            &["general.alignment is u32 0"],
            |b| put_u32(b, align_v, 0),
        ),
        case(
            "alignment_3",
            align_v,
            &["general.alignment is u32 3"],
            |b| put_u32(b, align_v, 3),
        ),
        case(
            "alignment_huge",
            align_v,
            &["general.alignment is u32 131072"],
            |b| put_u32(b, align_v, 1 << 17),
        ),
        case(
            "alignment_f32",
            align_v,
            &["general.alignment is f32"],
            |b| put_u32(b, align_v - 4, 6),
        ),
        case(
            "alignment_string",
            align_v,
            &["general.alignment is str"],
            |b| {
                // A string of length 0 takes 8 bytes where the u32 took 4: splice.
                put_u32(b, align_v - 4, 8);
                b.splice(align_v..align_v + 4, [0u8; 8]);
            },
        ),
    ]
}

fn refusal(bytes: Vec<u8>) -> Result<(u64, String, String), String> {
    match catch_unwind(AssertUnwindSafe(|| Gguf::from_bytes(bytes))) {
        Err(_) => Err("panicked".into()),
        Ok(Ok(_)) => Err("was accepted".into()),
        Ok(Err(e)) => match &e {
            GgufError::Corrupt { offset, message } => Ok((*offset, message.clone(), e.to_string())),
            other => Err(format!("gave an unexpected error: {other}")),
        },
    }
}

#[test]
fn the_valid_file_is_accepted() {
    let g = Gguf::from_bytes(valid_file()).unwrap();
    assert_eq!((g.metadata().len(), g.tensors().len()), (6, 4));
    let last = g.tensors().last().unwrap();
    assert_eq!(last.offset + last.size, g.file_len());
}

#[test]
fn every_damaged_file_is_refused_with_what_and_where() {
    let mut failures = Vec::new();
    for c in cases() {
        match refusal(c.bytes) {
            Err(why) => failures.push(format!("{}: {why}", c.name)),
            Ok((offset, message, shown)) => {
                let missing: Vec<&String> = c
                    .needles
                    .iter()
                    .filter(|n| !message.contains(n.as_str()))
                    .collect();
                if offset != c.at as u64
                    || !missing.is_empty()
                    || !shown.contains(&format!("byte {}", c.at))
                {
                    failures.push(format!(
                        "{}: want byte {} and {missing:?}, got {shown:?}",
                        c.name, c.at
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_truncation_is_refused() {
    let f = valid_file();
    let data_offset = Gguf::from_bytes(f.clone()).unwrap().data_offset as usize;
    // Every cut in the header (including its padding), and a sampling of the data.
    let cuts = (0..=data_offset).chain((data_offset..f.len()).step_by(5));
    let mut failures = Vec::new();
    for cut in cuts {
        match refusal(f[..cut].to_vec()) {
            Err(why) => failures.push(format!("cut at {cut}: {why}")),
            Ok((offset, message, _)) => {
                let says_short = [
                    "the file ends",
                    "cannot fit",
                    "past the end of the file",
                    "file ends before",
                ]
                .iter()
                .any(|s| message.contains(s));
                if offset > cut as u64 || !says_short {
                    failures.push(format!("cut at {cut}: byte {offset}: {message}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Replays the fuzz seeds (and any crash inputs added there) on stable, without cargo-fuzz.
#[test]
fn fuzz_seeds_do_not_panic() {
    let mut files: Vec<_> = std::fs::read_dir(SEEDS)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 5, "seed corpus missing from {SEEDS}");
    let panicked: Vec<_> = files
        .iter()
        .filter(|p| {
            let bytes = std::fs::read(p).unwrap();
            catch_unwind(|| touch_everything(bytes)).is_err()
        })
        .collect();
    assert!(panicked.is_empty(), "parsing panicked on {panicked:?}");
}

/// What the fuzz target does with a parsed file.
fn touch_everything(bytes: Vec<u8>) {
    if let Ok(g) = Gguf::from_bytes(bytes) {
        let data: usize = g
            .tensors()
            .iter()
            .map(|t| g.tensor_data(t).iter().map(|&b| b as usize).sum::<usize>())
            .sum();
        let meta: usize = g
            .metadata()
            .iter()
            .map(|(k, v)| k.len() + v.describe().len())
            .sum();
        std::hint::black_box((data, meta));
    }
}

/// Rewrites the seed corpus: the valid file and every damaged case.
/// Run with `cargo test --test it gguf_damaged::write_fuzz_seeds -- --ignored`.
#[test]
#[ignore = "rewrites fuzz/seeds; run by hand"]
fn write_fuzz_seeds() {
    let dir = Path::new(SEEDS);
    std::fs::create_dir_all(dir).unwrap();
    let mut seeds = vec![("valid".to_string(), valid_file())];
    seeds.extend(cases().into_iter().map(|c| (c.name.to_string(), c.bytes)));
    for (name, bytes) in seeds {
        assert!(bytes.len() < 4096, "{name} is too big for a seed");
        std::fs::write(dir.join(format!("{name}.gguf")), bytes).unwrap();
    }
}
