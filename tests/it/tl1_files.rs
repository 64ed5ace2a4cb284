//! bitnetd's TL1 files: written by gen-dummy and convert, marked so that nothing takes
//! them for I2_S, mapped in place by the TL1 kernels, repacked for the others, and the
//! file's copy of repacked weights released from memory.

use std::path::{Path, PathBuf};
use std::process::Command;

use bitnet_kernels::dispatch::{Kernel, KernelChoice, Layout, Packed};
use bitnetd::convert::{ConvertError, convert};
use bitnetd::dummy::{self, DummySpec, ModelSize};
use bitnetd::gguf::{GgmlType, Gguf, GgufWriter, Value};
use bitnetd::model::{Logits, Model, Ternary};
use bitnetd::weight_layout::{LAYOUT_KEY, TL1_V1};

const PROMPT: &[u32] = &[4095, 17, 300, 1234, 9];

fn generate(dir: &Path, name: &str, size: ModelSize, outtype: Layout) -> PathBuf {
    let path = dir.join(name);
    let spec = DummySpec {
        seed: 7,
        outtype,
        ..DummySpec::new(size)
    };
    dummy::generate(&spec, &path).unwrap();
    path
}

fn kernels() -> Vec<Kernel> {
    [KernelChoice::Scalar, KernelChoice::Tl1, KernelChoice::Auto]
        .into_iter()
        .map(|c| Kernel::select(c).unwrap())
        .collect()
}

fn logits(model: &Model) -> Vec<f32> {
    let mut s = model.session(16);
    model.forward(&mut s, PROMPT, Logits::All).unwrap().to_vec()
}

fn ternaries(model: &Model) -> impl Iterator<Item = &Ternary> {
    model
        .weights
        .layers
        .iter()
        .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down])
}

#[test]
fn tl1_and_i2s_files_of_one_seed_give_identical_logits_with_every_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let i2s = generate(dir.path(), "i2s.gguf", ModelSize::Tiny, Layout::I2s);
    let tl1 = generate(dir.path(), "tl1.gguf", ModelSize::Tiny, Layout::Tl1);
    let want = logits(&Model::load(&i2s).unwrap());
    assert!(want.iter().all(|x| x.is_finite()));
    for path in [&i2s, &tl1] {
        let mut model = Model::load(path).unwrap();
        for kernel in kernels() {
            model.set_kernel(kernel);
            assert_eq!(
                logits(&model),
                want,
                "{} on {}",
                kernel.name(),
                path.display()
            );
        }
    }
}

#[test]
fn convert_gives_gen_dummys_tl1_file_and_back_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let i2s = generate(dir.path(), "i2s.gguf", ModelSize::Tiny, Layout::I2s);
    let tl1 = generate(dir.path(), "tl1.gguf", ModelSize::Tiny, Layout::Tl1);
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_bitnetd"))
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), stderr)
    };
    let (ok, err) = run(&["convert", "--to", "tl1", "i2s.gguf", "conv.gguf"]);
    assert!(ok, "{err}");
    let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    assert!(read("conv.gguf") == std::fs::read(&tl1).unwrap());
    let (ok, err) = run(&["convert", "--to", "i2_s", "conv.gguf", "back.gguf"]);
    assert!(ok, "{err}");
    assert!(read("back.gguf") == std::fs::read(&i2s).unwrap());

    // Converting into the layout a file already has is refused, naming it.
    let (ok, err) = run(&["convert", "--to", "tl1", "tl1.gguf", "again.gguf"]);
    assert!(!ok && err.contains("already in the tl1 layout"), "{err}");
    assert!(!dir.path().join("again.gguf").exists());
}

#[test]
fn tl1_kernels_read_a_tl1_file_in_place_and_others_get_a_repacked_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = generate(dir.path(), "tl1.gguf", ModelSize::Tiny, Layout::Tl1);
    let mut model = Model::load(&path).unwrap();
    let tl1 = Kernel::select(KernelChoice::Tl1).unwrap();
    let inside_file =
        |model: &Model, bytes: &[u8]| model.gguf.bytes().as_ptr_range().contains(&bytes.as_ptr());
    for kernel in [tl1, Kernel::Scalar, tl1] {
        model.set_kernel(kernel);
        for t in ternaries(&model) {
            assert_eq!(t.layout, Layout::Tl1);
            match (kernel.layout(), t.packed(model.gguf.bytes())) {
                (Layout::Tl1, Packed::Tl1(m)) => {
                    assert!(t.repacked.is_none());
                    assert!(inside_file(&model, m.bytes()), "zero-copy");
                }
                (Layout::I2s, Packed::I2s(m)) => {
                    assert!(!inside_file(&model, m.codes), "a repacked copy");
                    assert_eq!(m.codes.len(), t.rows * t.cols / 4);
                }
                _ => panic!("{}: weights in the wrong layout", kernel.name()),
            }
        }
    }
}

/// Writes `src` again with metadata key `key` set to `value` (or removed) and every
/// ternary tensor's type replaced by `ty`, bytes unchanged.
fn rewrite(src: &Path, dst: &Path, key: (&str, Option<Value>), ty: GgmlType) {
    let g = Gguf::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        if k != key.0 {
            w.add_metadata(k, v.clone()).unwrap();
        }
    }
    if let Some(v) = key.1 {
        w.add_metadata(key.0, v).unwrap();
    }
    let ternary = |t: &GgmlType| matches!(t, GgmlType::I2S | GgmlType::Tl1Bitnetd);
    for t in g.tensors() {
        let t_ty = if ternary(&t.ggml_type) {
            ty
        } else {
            t.ggml_type
        };
        w.add_tensor(&t.name, &t.dims, t_ty).unwrap();
    }
    w.write_file(dst, |i, sink| {
        sink.write_all(g.tensor_data(&g.tensors()[i]))
    })
    .unwrap();
}

#[test]
fn marker_and_tensor_types_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    let tl1 = generate(dir.path(), "tl1.gguf", ModelSize::Tiny, Layout::Tl1);
    let bad = dir.path().join("bad.gguf");
    let load_error = |key, ty| {
        rewrite(&tl1, &bad, key, ty);
        Model::load(&bad).err().expect("refused").to_string()
    };
    let marker = || Some(Value::String(TL1_V1.into()));

    let e = load_error((LAYOUT_KEY, None), GgmlType::Tl1Bitnetd);
    assert!(
        e.contains("blk.0.attn_q.weight is TL1_BITNETD") && e.contains(LAYOUT_KEY),
        "{e}"
    );
    let e = load_error((LAYOUT_KEY, marker()), GgmlType::I2S);
    assert!(
        e.contains("blk.0.attn_q.weight is I2_S") && e.contains("tl1-v1"),
        "{e}"
    );
    let e = load_error(
        (LAYOUT_KEY, Some(Value::String("tl1-v9".into()))),
        GgmlType::Tl1Bitnetd,
    );
    assert!(e.contains(LAYOUT_KEY) && e.contains("\"tl1-v9\""), "{e}");

    // bitnet.cpp's own TL1 is refused with what to do instead.
    let e = load_error((LAYOUT_KEY, None), GgmlType::TL1);
    assert!(
        e.contains("blk.0.attn_q.weight is TL1") && e.contains("bitnetd convert --to tl1"),
        "{e}"
    );
    let e = convert(&bad, &dir.path().join("x.gguf"), Layout::Tl1).unwrap_err();
    assert!(matches!(e, ConvertError::Model(_)), "{e}");

    // The marker survives: a correct rewrite loads.
    rewrite(&tl1, &bad, (LAYOUT_KEY, marker()), GgmlType::Tl1Bitnetd);
    Model::load(&bad).unwrap();
}

#[test]
fn a_truncated_tl1_file_is_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let tl1 = generate(dir.path(), "tl1.gguf", ModelSize::Tiny, Layout::Tl1);
    let mut bytes = std::fs::read(&tl1).unwrap();
    bytes.truncate(bytes.len() - 100);
    let e = Gguf::from_bytes(bytes).err().expect("refused").to_string();
    assert!(
        e.contains("blk.3.ffn_down.weight")
            && e.contains("runs past the end")
            && e.contains("at byte"),
        "{e}"
    );
}

/// Resident bytes of this process's mapping of `path` (its `Rss` in /proc/self/smaps).
fn mapped_rss(path: &Path) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let name = format!(" {}", path.display());
    let mut in_file = false;
    let mut kib = 0;
    for line in smaps.lines() {
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            // A mapping's header ("start-end perms offset dev inode path"), then its
            // "Key: value" lines.
            [first, ..] if !first.ends_with(':') => in_file = line.ends_with(&name),
            ["Rss:", n, "kB"] if in_file => kib += n.parse::<u64>().unwrap(),
            _ => {}
        }
    }
    kib * 1024
}

#[test]
fn repacking_at_load_releases_the_files_copy_of_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    let path = generate(dir.path(), "m.gguf", ModelSize::M125, Layout::I2s);
    let mut model = Model::load(&path).unwrap();
    let ternary: u64 = ternaries(&model).map(|t| t.bytes.len() as u64).sum();
    let other = model.gguf.file_len() - ternary;
    assert!(ternary > 3 * other, "the weights dominate the file");

    // Computing in the file's layout reads every weight from the map.
    model.set_kernel(Kernel::Scalar);
    let want = logits(&model);
    assert!(mapped_rss(&path) >= ternary, "the weights are resident");

    // Repacked: the file's weights are released and nothing reads them again.
    model.set_kernel(Kernel::select(KernelChoice::Tl1).unwrap());
    assert_eq!(logits(&model), want);
    let rss = mapped_rss(&path);
    assert!(
        rss <= other + (1 << 20),
        "{rss} bytes of the map resident; the file has {other} bytes besides the weights"
    );

    // Released pages read back from the file unchanged.
    model.set_kernel(Kernel::Scalar);
    assert_eq!(logits(&model), want);
}
