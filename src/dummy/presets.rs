//! Model shapes for `--model-size`: bitnet.cpp's dummy-model presets plus the shapes
//! of the reference tiny model, bitnet_b1_58-large and BitNet-b1.58-2B-4T.

use crate::model::Arch;

/// A `--model-size` preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelSize {
    /// The reference tiny model's shape (../shared/reference/tiny-config.json).
    #[value(name = "tiny")]
    Tiny,
    #[value(name = "125M")]
    M125,
    #[value(name = "350M")]
    M350,
    /// bitnet_b1_58-large.
    #[value(name = "700M")]
    M700,
    #[value(name = "1B")]
    B1,
    #[value(name = "1.5B")]
    B1_5,
    /// BitNet-b1.58-2B-4T.
    #[value(name = "2B-4T")]
    B2_4T,
    #[value(name = "2.7B")]
    B2_7,
    #[value(name = "3.8B")]
    B3_8,
    #[value(name = "7B")]
    B7,
}

/// Everything about a model's shape that the metadata records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub n_embd: u32,
    pub n_ff: u32,
    pub n_layer: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub n_ctx: u32,
    pub rope_base: f32,
    /// The arch the original model (or bitnet.cpp's generator) uses.
    pub default_arch: Arch,
}

impl Shape {
    pub fn head_dim(&self) -> u32 {
        self.n_embd / self.n_head
    }
}

/// bitnet.cpp's generator writes the old `bitnet` arch with one KV head per head; its
/// base config (bitnet_b1_58-large) has a 2048 context and RoPE base 10000.
const fn script(n_embd: u32, n_ff: u32, n_layer: u32, n_head: u32) -> Shape {
    Shape {
        n_embd,
        n_ff,
        n_layer,
        n_head,
        n_head_kv: n_head,
        n_ctx: 2048,
        rope_base: 10000.0,
        default_arch: Arch::Bitnet,
    }
}

impl ModelSize {
    pub fn shape(self) -> Shape {
        match self {
            ModelSize::Tiny => Shape {
                n_embd: 256,
                n_ff: 768,
                n_layer: 4,
                n_head: 4,
                n_head_kv: 2,
                n_ctx: 2048,
                rope_base: 500000.0,
                default_arch: Arch::BitnetB158,
            },
            ModelSize::M125 => script(768, 3072, 11, 12),
            ModelSize::M350 => script(1024, 3072, 24, 16),
            ModelSize::M700 => script(1536, 4096, 24, 16),
            ModelSize::B1 => script(2048, 3584, 24, 32),
            ModelSize::B1_5 => script(1536, 9216, 28, 32),
            ModelSize::B2_4T => Shape {
                n_embd: 2560,
                n_ff: 6912,
                n_layer: 30,
                n_head: 20,
                n_head_kv: 5,
                n_ctx: 4096,
                rope_base: 500000.0,
                default_arch: Arch::BitnetB158,
            },
            ModelSize::B2_7 => script(3072, 7680, 24, 32),
            ModelSize::B3_8 => script(3840, 8192, 24, 32),
            ModelSize::B7 => script(4096, 12032, 32, 32),
        }
    }

    /// The name as given on the command line ("tiny", "2B-4T", ...).
    pub fn name(self) -> &'static str {
        match self {
            ModelSize::Tiny => "tiny",
            ModelSize::M125 => "125M",
            ModelSize::M350 => "350M",
            ModelSize::M700 => "700M",
            ModelSize::B1 => "1B",
            ModelSize::B1_5 => "1.5B",
            ModelSize::B2_4T => "2B-4T",
            ModelSize::B2_7 => "2.7B",
            ModelSize::B3_8 => "3.8B",
            ModelSize::B7 => "7B",
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;

    #[test]
    fn every_preset_fits_i2s_blocks_and_rope() {
        for size in ModelSize::value_variants() {
            let s = size.shape();
            // I2_S packs rows of 128 weights; RoPE rotates pairs.
            for k in [s.n_embd, s.n_ff, s.n_head_kv * s.head_dim()] {
                assert_eq!(k % 128, 0, "{}: {k}", size.name());
            }
            assert_eq!(s.n_embd % s.n_head, 0, "{}", size.name());
            assert_eq!(s.head_dim() % 2, 0, "{}", size.name());
            assert_eq!(s.n_head % s.n_head_kv, 0, "{}", size.name());
            assert_eq!(
                size.to_possible_value().unwrap().get_name(),
                size.name(),
                "clap name"
            );
        }
    }
}
