//! The I2_S weight layout.
//!
//! I2_S, bit-compatible with bitnet.cpp's x86 ("ACT_PARALLEL") layout, which is the
//! layout of the GGUF files in the wild: the tensor is flattened row-major and cut into
//! blocks of 128 weights stored in 32 bytes. Byte `j` of a block holds weights `j`,
//! `32 + j`, `64 + j` and `96 + j` of the block in bits 7:6, 5:4, 3:2 and 1:0. Each
//! 2-bit code is the ternary value plus one (0 = -1, 1 = 0, 2 = +1; 3 never occurs
//! and reads as 0, as in bitnet.cpp).

/// Weights per I2_S block.
pub const I2S_BLOCK: usize = 128;
/// Bytes per I2_S block.
pub const I2S_BLOCK_BYTES: usize = I2S_BLOCK / 4;

/// Bytes of 2-bit codes for `n` weights (the f32 scale and padding follow in a file).
pub const fn i2s_code_bytes(n: usize) -> usize {
    n / 4
}

/// Byte index and right shift of weight `i` in an I2_S code array.
#[inline(always)]
pub const fn i2s_position(i: usize) -> (usize, u32) {
    let within = i % I2S_BLOCK;
    let byte = (i / I2S_BLOCK) * I2S_BLOCK_BYTES + within % I2S_BLOCK_BYTES;
    let shift = 6 - 2 * (within / I2S_BLOCK_BYTES) as u32;
    (byte, shift)
}

/// Ternary value of a 2-bit code (code 3 is invalid and reads as 0, like bitnet.cpp).
#[inline(always)]
pub const fn ternary_of_code(code: u8) -> i8 {
    match code {
        0 => -1,
        2 => 1,
        _ => 0,
    }
}

/// Ternary value of weight `i`.
#[inline(always)]
pub fn i2s_get(codes: &[u8], i: usize) -> i8 {
    let (byte, shift) = i2s_position(i);
    ternary_of_code((codes[byte] >> shift) & 3)
}

/// Error from encoding ternary weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutError {
    /// The weight count is not a whole number of 128-weight I2_S blocks.
    NotBlockMultiple { n: usize },
    /// A weight outside {-1, 0, +1}, at this flat index.
    NotTernary { index: usize, value: i8 },
}

impl std::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayoutError::NotBlockMultiple { n } => {
                write!(
                    f,
                    "{n} weights are not a multiple of the I2_S block of {I2S_BLOCK}"
                )
            }
            LayoutError::NotTernary { index, value } => {
                write!(f, "weight {index} is {value}, not -1, 0 or +1")
            }
        }
    }
}

impl std::error::Error for LayoutError {}

/// Packs ternary weights (row-major, flattened) into I2_S codes.
pub fn encode_i2s(weights: &[i8]) -> Result<Vec<u8>, LayoutError> {
    let mut out = vec![0u8; i2s_code_bytes(weights.len())];
    encode_i2s_into(weights, &mut out)?;
    Ok(out)
}

/// Packs ternary weights into `out`, which must hold `weights.len() / 4` bytes.
/// Lets a writer stream a huge tensor chunk by chunk (chunks of whole blocks).
pub fn encode_i2s_into(weights: &[i8], out: &mut [u8]) -> Result<(), LayoutError> {
    if !weights.len().is_multiple_of(I2S_BLOCK) {
        return Err(LayoutError::NotBlockMultiple { n: weights.len() });
    }
    assert_eq!(out.len(), i2s_code_bytes(weights.len()), "output size");
    out.fill(0);
    for (i, &w) in weights.iter().enumerate() {
        if !(-1..=1).contains(&w) {
            return Err(LayoutError::NotTernary { index: i, value: w });
        }
        let (byte, shift) = i2s_position(i);
        out[byte] |= ((w + 1) as u8) << shift;
    }
    Ok(())
}

/// Unpacks I2_S codes for `n` weights into ternary values.
pub fn decode_i2s(codes: &[u8], n: usize) -> Vec<i8> {
    (0..n).map(|i| i2s_get(codes, i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_matches_the_documented_interleave() {
        assert_eq!(i2s_position(0), (0, 6));
        assert_eq!(i2s_position(31), (31, 6));
        assert_eq!(i2s_position(32), (0, 4));
        assert_eq!(i2s_position(64), (0, 2));
        assert_eq!(i2s_position(96 + 5), (5, 0));
        assert_eq!(i2s_position(128), (32, 6));
    }

    #[test]
    fn round_trips_every_value_in_every_slot() {
        let w: Vec<i8> = (0..1024).map(|i| ((i * 7 + i / 3) % 3) as i8 - 1).collect();
        let codes = encode_i2s(&w).unwrap();
        assert_eq!(codes.len(), 256);
        assert_eq!(decode_i2s(&codes, w.len()), w);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            encode_i2s(&[0; 100]),
            Err(LayoutError::NotBlockMultiple { n: 100 })
        );
        let mut w = vec![0i8; 128];
        w[77] = 2;
        assert_eq!(
            encode_i2s(&w),
            Err(LayoutError::NotTernary {
                index: 77,
                value: 2
            })
        );
    }

    #[test]
    fn code_three_reads_as_zero() {
        assert_eq!(i2s_get(&[0xff; 32], 0), 0);
    }
}
