//! ggml tensor types that bitnetd knows, with their storage sizes.

use std::fmt;

use bitnet_kernels::formats::{Q6_K_BLOCK, Q6_K_BYTES, Q8_0_BLOCK, Q8_0_BYTES};

/// A ggml tensor type id as stored in GGUF tensor infos.
///
/// Only the types a BitNet file can carry are listed; anything else is refused
/// at load time with the tensor's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q8_0,
    Q6K,
    BF16,
    /// bitnet.cpp's 2-bit ternary type: `n/4` bytes of codes, then a 32-byte tail
    /// whose first 4 bytes are the tensor's f32 scale.
    I2S,
    /// bitnet.cpp's ARM lookup-table layout (code-generated per shape).
    TL1,
    /// bitnet.cpp's x86 lookup-table layout (code-generated per shape).
    TL2,
    /// bitnetd's own TL1 layout (`kernels/src/tl1.rs`), not a ggml type: rows padded
    /// to groups of 16, `cols / 4` bytes each, then the 32-byte I2_S tail (f32 scale
    /// first). Its id is far outside ggml's range, so ggml-based readers refuse such
    /// a tensor instead of misreading it.
    Tl1Bitnetd,
}

/// The id of [`GgmlType::Tl1Bitnetd`]: the bytes "TL1" and the layout version 1, so
/// that a hex dump of the tensor info shows `54 4c 31 01`.
const TL1_BITNETD_ID: u32 = u32::from_le_bytes(*b"TL1\x01");

impl GgmlType {
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            8 => Self::Q8_0,
            14 => Self::Q6K,
            30 => Self::BF16,
            36 => Self::I2S,
            38 => Self::TL1,
            39 => Self::TL2,
            TL1_BITNETD_ID => Self::Tl1Bitnetd,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 8,
            Self::Q6K => 14,
            Self::BF16 => 30,
            Self::I2S => 36,
            Self::TL1 => 38,
            Self::TL2 => 39,
            Self::Tl1Bitnetd => TL1_BITNETD_ID,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q8_0 => "Q8_0",
            Self::Q6K => "Q6_K",
            Self::BF16 => "BF16",
            Self::I2S => "I2_S",
            Self::TL1 => "TL1",
            Self::TL2 => "TL2",
            Self::Tl1Bitnetd => "TL1_BITNETD",
        }
    }

    /// Elements per quantization block along `ne0`.
    pub fn block_len(self) -> u64 {
        match self {
            Self::Q8_0 => Q8_0_BLOCK as u64,
            Self::Q6K => Q6_K_BLOCK as u64,
            _ => 1,
        }
    }

    /// Bytes taken by a tensor of this type with shape `dims` (ggml order, `ne0` first),
    /// or `None` when the shape does not fit the type or the size overflows.
    pub fn tensor_bytes(self, dims: &[u64]) -> Option<u64> {
        let n = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
        let ne0 = dims.first().copied().unwrap_or(1);
        match self {
            Self::F32 => n.checked_mul(4),
            Self::F16 | Self::BF16 => n.checked_mul(2),
            Self::Q8_0 | Self::Q6K => {
                if ne0 % self.block_len() != 0 {
                    return None;
                }
                let block_bytes = if self == Self::Q8_0 {
                    Q8_0_BYTES
                } else {
                    Q6_K_BYTES
                };
                (n / self.block_len()).checked_mul(block_bytes as u64)
            }
            // ggml_nbytes for the BitNet types (bitnet.cpp's llama.cpp fork).
            Self::I2S | Self::TL1 => (n / 4).checked_add(32),
            Self::Tl1Bitnetd => {
                if ne0 % 4 != 0 {
                    return None;
                }
                let rows = (n / ne0).checked_next_multiple_of(16)?;
                rows.checked_mul(ne0 / 4)?.checked_add(32)
            }
            Self::TL2 => {
                let (k, m) = (ne0, n / ne0.max(1));
                let three = k.checked_sub(256)?.checked_mul(m)? / 3 * 5 / 8;
                let two = 256u64.checked_mul(m)? / 2 * 4 / 8;
                three
                    .checked_add(two)?
                    .checked_next_multiple_of(32)?
                    .checked_add(32)
            }
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for id in (0..64).chain([TL1_BITNETD_ID]) {
            if let Some(t) = GgmlType::from_id(id) {
                assert_eq!(t.id(), id);
            }
        }
        assert_eq!(TL1_BITNETD_ID, 0x0131_4c54);
    }

    #[test]
    fn bitnet_sizes_match_ggml_nbytes() {
        assert_eq!(
            GgmlType::I2S.tensor_bytes(&[2560, 2560]),
            Some(2560 * 2560 / 4 + 32)
        );
        assert_eq!(
            GgmlType::F16.tensor_bytes(&[256, 50257]),
            Some(256 * 50257 * 2)
        );
        assert_eq!(GgmlType::Q8_0.tensor_bytes(&[64, 3]), Some(2 * 3 * 34));
        assert_eq!(GgmlType::Q8_0.tensor_bytes(&[65, 3]), None);
        assert_eq!(GgmlType::F32.tensor_bytes(&[u64::MAX, 2]), None);
        // Ours: rows rounded up to 16, then the I2_S tail.
        let tl1 = GgmlType::Tl1Bitnetd;
        assert_eq!(tl1.tensor_bytes(&[2560, 640]), Some(2560 * 640 / 4 + 32));
        assert_eq!(tl1.tensor_bytes(&[128, 17]), Some(32 * 32 + 32));
        assert_eq!(tl1.tensor_bytes(&[130, 16]), None);
    }
}
