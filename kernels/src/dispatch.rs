//! The one run-time dispatch point: which kernel runs, chosen once from the CPU's
//! features (or forced with `--kernel`), and the calls that route to it.

use std::fmt;

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::q8::Q8Matrix;
use crate::scalar::F16Sum;
use crate::tl1::{Tl1Matrix, tl1_pack};
use crate::{ActsBlock, F16Matrix, I2sMatrix, OutRows, QuantizedActs, scalar};

/// What the user asked for (`--kernel`, config `kernel`); its names are [`KernelChoice::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelChoice {
    /// The fastest kernel this CPU runs.
    #[default]
    Auto,
    /// The scalar reference.
    Scalar,
    /// The lookup-table kernel (NEON on aarch64; its portable form elsewhere).
    Tl1,
    /// The best SIMD I2_S kernel this CPU has.
    I2s,
}

impl KernelChoice {
    /// Every choice, in the order the messages list them.
    pub const ALL: [KernelChoice; 4] = [Self::Auto, Self::Scalar, Self::Tl1, Self::I2s];

    /// The name the user types: the one place the names are written.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Scalar => "scalar",
            Self::Tl1 => "tl1",
            Self::I2s => "i2s",
        }
    }
}

impl fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KernelChoice {
    type Err = UnknownKernel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| UnknownKernel(s.to_owned()))
    }
}

/// A kernel name that is none of [`KernelChoice::ALL`]; holds what was typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKernel(pub String);

impl fmt::Display for UnknownKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = KernelChoice::ALL.map(KernelChoice::name);
        let (last, rest) = names.split_last().expect("choices");
        write!(
            f,
            "unknown kernel {:?}: expected {} or {last}",
            self.0,
            rest.join(", ")
        )
    }
}

impl std::error::Error for UnknownKernel {}

/// Through the names, so that a config file reads as the command line does.
#[cfg(feature = "serde")]
impl serde::Serialize for KernelChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for KernelChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// The kernel that runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Scalar,
    /// TL1 layout computed by portable code (tests the layout off ARM).
    Tl1Portable,
    Tl1Neon,
    I2sDotprod,
    I2sAvx2,
    I2sAvx512Vnni,
}

/// The weight layout a kernel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// bitnet.cpp's I2_S, from the file (or repacked from a TL1 file at load).
    I2s,
    /// Our TL1 layout, from a TL1 file or repacked at load.
    Tl1,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoSuchKernel(pub KernelChoice);

impl fmt::Display for NoSuchKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "--kernel {}: this CPU has no such kernel (I2_S SIMD needs AVX2 on x86-64 or \
             dot-product on aarch64); use auto, scalar or tl1",
            self.0
        )
    }
}

impl std::error::Error for NoSuchKernel {}

impl Kernel {
    /// Resolves a choice against this CPU's features.
    pub fn select(choice: KernelChoice) -> Result<Self, NoSuchKernel> {
        match choice {
            KernelChoice::Scalar => Ok(Kernel::Scalar),
            KernelChoice::Tl1 => Ok(best_tl1()),
            KernelChoice::I2s => best_i2s().ok_or(NoSuchKernel(choice)),
            KernelChoice::Auto => Ok(best_i2s().unwrap_or_else(|| match best_tl1() {
                Kernel::Tl1Portable => Kernel::Scalar,
                fast => fast,
            })),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Tl1Portable => "tl1 (portable)",
            Kernel::Tl1Neon => "tl1 (neon)",
            Kernel::I2sDotprod => "i2_s (neon dotprod)",
            Kernel::I2sAvx2 => "i2_s (avx2)",
            Kernel::I2sAvx512Vnni => "i2_s (avx512 vnni)",
        }
    }

    pub fn layout(self) -> Layout {
        match self {
            Kernel::Tl1Portable | Kernel::Tl1Neon => Layout::Tl1,
            _ => Layout::I2s,
        }
    }

    /// Runs this kernel against the scalar reference on a small random problem: a
    /// kernel that disagrees (a miscompiled or mis-detected path) must never run.
    pub fn self_test(self) -> bool {
        let (rows, cols, tokens) = (37, 384, 3);
        let mut x = 0x9e37_79b9_u32;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let w: Vec<i8> = (0..rows * cols).map(|_| (next() % 3) as i8 - 1).collect();
        let codes = crate::i2s::encode_i2s(&w).expect("ternary");
        let m = I2sMatrix {
            codes: &codes,
            rows,
            cols,
            scale: 0.75,
        };
        let xs: Vec<f32> = (0..tokens * cols)
            .map(|_| next() as f32 / u32::MAX as f32 - 0.5)
            .collect();
        let (mut want_acts, mut acts) = (QuantizedActs::new(), QuantizedActs::new());
        scalar::quantize_acts(&xs, cols, &mut want_acts);
        self.quantize(&xs, cols, &mut acts);
        let mut want = vec![0f32; tokens * rows];
        scalar::i2s_matmul(&m, &want_acts, &mut OutRows::all(&mut want, tokens, rows));
        let packed = match self.layout() {
            Layout::Tl1 => Packed::Tl1(tl1_pack(&m)),
            Layout::I2s => Packed::I2s(m),
        };
        let mut got = vec![f32::NAN; tokens * rows];
        self.matmul(&packed, &acts, &mut OutRows::all(&mut got, tokens, rows));
        got.iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    }

    /// `out[t][r] = W[r] · x[t]` for the rows of `out`, with `w` in this kernel's layout.
    pub fn matmul(self, w: &Packed, acts: &QuantizedActs, out: &mut OutRows) {
        match (self, w) {
            (Kernel::Scalar, Packed::I2s(w)) => scalar::i2s_matmul(w, acts, out),
            (Kernel::Tl1Portable, Packed::Tl1(w)) => crate::tl1::tl1_matmul_reference(w, acts, out),
            #[cfg(target_arch = "aarch64")]
            (Kernel::Tl1Neon, Packed::Tl1(w)) => crate::aarch64::tl1_matmul_neon(w, acts, out),
            #[cfg(target_arch = "aarch64")]
            (Kernel::I2sDotprod, Packed::I2s(w)) => {
                crate::aarch64::i2s_matmul_dotprod(w, acts, out)
            }
            #[cfg(target_arch = "x86_64")]
            (Kernel::I2sAvx2, Packed::I2s(w)) => crate::x86_64::i2s_matmul_avx2(w, acts, out),
            #[cfg(target_arch = "x86_64")]
            (Kernel::I2sAvx512Vnni, Packed::I2s(w)) => {
                crate::x86_64::i2s_matmul_avx512(w, acts, out)
            }
            (kernel, _) => panic!(
                "{} was given weights prepared for another kernel",
                kernel.name()
            ),
        }
    }

    /// Per-token int8 quantization of `x` (whole tokens of `k` values) into `acts`.
    pub fn quantize(self, x: &[f32], k: usize, acts: &mut QuantizedActs) {
        let n = x.len() / k;
        for block in acts.token_blocks_mut(k, n, n.max(1)) {
            self.quantize_block(x, block);
        }
    }

    /// Per-token int8 quantization of `x`, the tokens of `out` (a block of
    /// [`QuantizedActs::token_blocks_mut`]); bit-identical on every path.
    pub fn quantize_block(self, x: &[f32], out: ActsBlock) {
        #[cfg(target_arch = "x86_64")]
        if self != Kernel::Scalar && crate::x86_64::i2s_avx2_available() {
            return crate::x86_64::quantize_block_avx2(x, out);
        }
        #[cfg(target_arch = "aarch64")]
        if self != Kernel::Scalar {
            return crate::aarch64::quantize_block_neon(x, out);
        }
        scalar::quantize_block(x, out)
    }

    /// The 8-bit output projection (bit-identical on every path).
    pub fn q8_matmul(self, w: &Q8Matrix, x8: &[u8], out: &mut OutRows) {
        #[cfg(target_arch = "x86_64")]
        if self != Kernel::Scalar && crate::x86_64::i2s_avx2_available() {
            return crate::x86_64::q8_matmul_avx2(w, x8, out);
        }
        scalar::q8_matmul(w, x8, out)
    }

    /// `src` as f32 into `dst` (equal lengths; exact on every path).
    pub fn f16_to_f32(self, src: &[f16], dst: &mut [f32]) {
        #[cfg(target_arch = "aarch64")]
        if self != Kernel::Scalar {
            return crate::aarch64::widen_f16_neon(src, dst);
        }
        // `half` uses F16C where the CPU has it.
        src.convert_to_f32_slice(dst)
    }

    /// `w · x` of f32 rows, summed as `sum` says (bit-identical on every path).
    pub fn dot_f32(self, w: &[f32], x: &[f32], sum: F16Sum) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if self != Kernel::Scalar && crate::x86_64::f16_avx2_available() {
            return crate::x86_64::dot_f32_fma(w, x, sum);
        }
        // aarch64 has fused multiply-add in its base set: the reference is already fast.
        scalar::dot_f32(w, x, sum)
    }

    /// An F16 matrix times f32 activations, summed as `sum` says (bit-identical on every
    /// path).
    pub fn f16_matmul(
        self,
        w: &F16Matrix,
        x: &[f32],
        sum: F16Sum,
        out: &mut OutRows,
        scratch: &mut Vec<f32>,
    ) {
        #[cfg(target_arch = "x86_64")]
        if self != Kernel::Scalar && crate::x86_64::f16_avx2_available() {
            return crate::x86_64::f16_matmul_avx2(w, x, sum, out, scratch);
        }
        #[cfg(target_arch = "aarch64")]
        if self != Kernel::Scalar {
            return crate::aarch64::f16_matmul_neon(w, x, sum, out, scratch);
        }
        scalar::f16_matmul(w, x, sum, out, scratch)
    }
}

/// Weights in a kernel's layout, mapped from the file or repacked at load.
pub enum Packed<'a> {
    I2s(I2sMatrix<'a>),
    Tl1(Tl1Matrix<'a>),
}

fn best_tl1() -> Kernel {
    #[cfg(target_arch = "aarch64")]
    return Kernel::Tl1Neon;
    #[cfg(not(target_arch = "aarch64"))]
    Kernel::Tl1Portable
}

fn best_i2s() -> Option<Kernel> {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::x86_64::i2s_avx512_available() {
            return Some(Kernel::I2sAvx512Vnni);
        }
        if crate::x86_64::i2s_avx2_available() {
            return Some(Kernel::I2sAvx2);
        }
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        return Some(Kernel::I2sDotprod);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_resolve_to_kernels_this_cpu_runs() {
        assert_eq!(Kernel::select(KernelChoice::Scalar), Ok(Kernel::Scalar));
        assert_eq!(
            Kernel::select(KernelChoice::Tl1).unwrap().layout(),
            Layout::Tl1
        );
        let auto = Kernel::select(KernelChoice::Auto).unwrap();
        match Kernel::select(KernelChoice::I2s) {
            Ok(i2s) => assert_eq!(auto, i2s),
            Err(e) => assert!(e.to_string().contains("no such kernel")),
        }
    }

    #[test]
    fn choices_parse_from_the_names_they_print() {
        for choice in KernelChoice::ALL {
            assert_eq!(choice.to_string().parse(), Ok(choice));
        }
        assert_eq!("tl1".parse(), Ok(KernelChoice::Tl1));
        assert_eq!(KernelChoice::default().to_string(), "auto");
        let e = "fast".parse::<KernelChoice>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown kernel \"fast\": expected auto, scalar, tl1 or i2s"
        );
        // Names are exact, as the config and the command line have always read them.
        assert!("I2S".parse::<KernelChoice>().is_err());
    }

    #[test]
    fn no_such_kernel_names_the_choice_as_typed() {
        let e = NoSuchKernel(KernelChoice::I2s).to_string();
        assert!(e.starts_with("--kernel i2s: "), "{e}");
    }

    #[test]
    fn every_available_kernel_passes_its_self_test() {
        for choice in [KernelChoice::Scalar, KernelChoice::Tl1, KernelChoice::I2s] {
            if let Ok(kernel) = Kernel::select(choice) {
                assert!(kernel.self_test(), "{}", kernel.name());
            }
        }
    }

    #[test]
    fn quantizing_in_blocks_equals_quantizing_at_once() {
        let (k, n) = (96, 7);
        let x: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37) % 101) as f32 / 7.0 - 6.5)
            .collect();
        for choice in [KernelChoice::Scalar, KernelChoice::Auto] {
            let kernel = Kernel::select(choice).unwrap();
            let mut whole = QuantizedActs::new();
            kernel.quantize(&x, k, &mut whole);
            let mut blocks = QuantizedActs::new();
            for (x, block) in x.chunks(3 * k).zip(blocks.token_blocks_mut(k, n, 3)) {
                kernel.quantize_block(x, block);
            }
            assert_eq!(blocks.n_tokens(), n);
            for t in 0..n {
                let ((bq, bs, bsum), (wq, ws, wsum)) = (blocks.token(t), whole.token(t));
                assert_eq!((bq, bs.to_bits(), bsum), (wq, ws.to_bits(), wsum));
            }
        }
    }

    #[test]
    fn every_kernel_agrees_with_scalar_through_dispatch() {
        let (rows, cols) = (37, 256);
        let w: Vec<i8> = (0..rows * cols)
            .map(|i| ((i * 7 + i / 5) % 3) as i8 - 1)
            .collect();
        let codes = crate::i2s::encode_i2s(&w).unwrap();
        let m = I2sMatrix {
            codes: &codes,
            rows,
            cols,
            scale: 0.5,
        };
        let x: Vec<f32> = (0..3 * cols)
            .map(|i| ((i * 13) % 29) as f32 - 14.0)
            .collect();
        let mut want = vec![0f32; 3 * rows];
        let mut acts = QuantizedActs::new();
        scalar::quantize_acts(&x, cols, &mut acts);
        scalar::i2s_matmul(&m, &acts, &mut OutRows::all(&mut want, 3, rows));
        for choice in [KernelChoice::Auto, KernelChoice::Tl1, KernelChoice::I2s] {
            let Ok(kernel) = Kernel::select(choice) else {
                continue;
            };
            let mut acts = QuantizedActs::new();
            kernel.quantize(&x, cols, &mut acts);
            let mut got = vec![0f32; 3 * rows];
            let packed = match kernel.layout() {
                Layout::Tl1 => Packed::Tl1(tl1_pack(&m)),
                Layout::I2s => Packed::I2s(m),
            };
            kernel.matmul(&packed, &acts, &mut OutRows::all(&mut got, 3, rows));
            assert_eq!(got, want, "{}", kernel.name());
        }
    }
}
