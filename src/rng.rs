//! A small deterministic PRNG for generated models and tests: xoshiro256** seeded
//! through splitmix64.
//!
//! Stability: the integer stream, [`Rng::uniform_f32`] and [`Rng::uniform_f64`] use only
//! integer arithmetic and exact conversions, so they are bit-identical on every platform
//! and Rust version. [`Rng::normal`] (Box-Muller) also calls `ln`, `sin` and `cos`, whose
//! last bit may differ between libm implementations; it computes in f64 and callers
//! round to f32/f16, so a difference would need an f64 result within 1 ulp of a rounding
//! boundary (about 2^-29 per value for f32) to show in a file.

/// xoshiro256** (Blackman and Vigna), period 2^256 - 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Rng {
    s: [u64; 4],
    /// Box-Muller makes normals in pairs; the second one waits here.
    spare_normal: Option<f64>,
}

/// One splitmix64 step: the recommended way to expand a 64-bit seed into xoshiro state.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a over the bytes: a stable (unlike `std`'s hasher) way to name a stream.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        // splitmix64 is a bijection of its counter, so four consecutive outputs are
        // never all zero (the one state xoshiro cannot leave).
        Rng {
            s,
            spare_normal: None,
        }
    }

    /// An independent stream for `name` under `seed`, so that one tensor's values do
    /// not depend on which tensors were generated before it.
    pub fn for_stream(seed: u64, name: &str) -> Self {
        let mut sm = seed;
        Self::new(splitmix64(&mut sm) ^ fnv1a(name.as_bytes()))
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1), on a grid of 2^-24 (every value exactly representable).
    pub fn uniform_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in [0, 1), on a grid of 2^-53.
    pub fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal N(0, 1) by the Box-Muller transform.
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        // 1 - u is in (0, 1], so ln never sees 0.
        let r = (-2.0 * (1.0 - self.uniform_f64()).ln()).sqrt();
        let theta = std::f64::consts::TAU * self.uniform_f64();
        self.spare_normal = Some(r * theta.sin());
        r * theta.cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_published_xoshiro_and_splitmix_outputs() {
        // splitmix64 from 0: first output of the reference implementation.
        let mut sm = 0u64;
        assert_eq!(splitmix64(&mut sm), 0xe220_a839_7b1d_cdaf);
        // xoshiro256** with state {1, 2, 3, 4}: the reference C code gives 11520, 0, 1509978240.
        let mut r = Rng {
            s: [1, 2, 3, 4],
            spare_normal: None,
        };
        assert_eq!(
            [r.next_u64(), r.next_u64(), r.next_u64()],
            [11520, 0, 1509978240]
        );
    }

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::for_stream(1, "x");
                move |_| r.next_u64()
            })
            .collect();
        let mut again = Rng::for_stream(1, "x");
        assert_eq!(a, (0..4).map(|_| again.next_u64()).collect::<Vec<_>>());
        assert_ne!(a[0], Rng::for_stream(1, "y").next_u64());
        assert_ne!(a[0], Rng::for_stream(2, "x").next_u64());
    }

    #[test]
    fn distributions_have_the_right_moments() {
        let mut r = Rng::new(7);
        let n = 200_000;
        let u: Vec<f32> = (0..n).map(|_| r.uniform_f32()).collect();
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean_u = u.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
        assert!((mean_u - 0.5).abs() < 0.005, "uniform mean {mean_u}");
        let z: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = z.iter().sum::<f64>() / n as f64;
        let var = z.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "normal mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "normal variance {var}");
    }
}
