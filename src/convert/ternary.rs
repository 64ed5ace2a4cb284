//! A checkpoint's linear layer as ternary weights {-1, 0, +1} and one scale: unpacked from
//! transformers' 2-bit packing, or ternarized from master weights with absmean.

use safetensors::Dtype;

use super::CheckpointError;
use super::checkpoint::{Checkpoint, TensorRef};
use super::hf_config::ScaleDirection;

/// Values per byte in transformers' packing.
const PER_BYTE: usize = 4;
/// absmean's floor (transformers' `WeightQuant`, bitnet.cpp's `weight_quant`).
const MEAN_FLOOR: f32 = 1e-5;

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// uint8 `[rows / 4, cols]`: output row `r + j * rows / 4` is bits `2j..2j+1` of packed
    /// row `r`, value = code - 1 (`pack_weights` / `unpack_weights`).
    Packed,
    /// Full precision `[rows, cols]`: t = clamp(round(w / mean|w|), -1, 1).
    Master { inv_scale: f32 },
}

/// One linear layer: `rows` outputs over `cols` inputs, y = scale * (t · x).
#[derive(Debug, Clone)]
pub struct TernaryTensor {
    pub weight: TensorRef,
    pub rows: usize,
    pub cols: usize,
    pub scale: f32,
    kind: Kind,
}

impl TernaryTensor {
    /// `<prefix>.weight` (and `<prefix>.weight_scale` when packed) as `rows` x `cols`.
    pub fn prepare(
        ck: &Checkpoint,
        prefix: &str,
        rows: usize,
        cols: usize,
        direction: Option<ScaleDirection>,
    ) -> Result<Self, CheckpointError> {
        let name = format!("{prefix}.weight");
        let weight = ck
            .get(&name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                dir: ck.dir.clone(),
                name: name.clone(),
                expected: vec![rows, cols],
            })?
            .clone();
        let scale_name = format!("{prefix}.weight_scale");
        match weight.dtype {
            Dtype::U8 => {
                let direction = direction.ok_or_else(|| {
                    ck.tensor_error(
                        &weight,
                        "packed uint8 weights, but config.json has no BitNet quantization_config"
                            .into(),
                    )
                })?;
                if !rows.is_multiple_of(PER_BYTE) {
                    return Err(
                        ck.tensor_error(&weight, format!("{rows} rows do not pack 4 to a byte"))
                    );
                }
                ck.check_shape(&weight, &[rows / PER_BYTE, cols])?;
                let st = ck
                    .get(&scale_name)
                    .ok_or_else(|| CheckpointError::MissingTensor {
                        dir: ck.dir.clone(),
                        name: scale_name.clone(),
                        expected: vec![1],
                    })?;
                let ws = ck.scalar(st)?;
                if !(ws.is_finite() && ws > 0.0) {
                    return Err(ck.tensor_error(st, format!("weight_scale is {ws}")));
                }
                let scale = match direction {
                    ScaleDirection::Divide => 1.0 / ws,
                    ScaleDirection::Multiply => ws,
                };
                Ok(TernaryTensor {
                    weight,
                    rows,
                    cols,
                    scale,
                    kind: Kind::Packed,
                })
            }
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => {
                if ck.get(&scale_name).is_some() {
                    return Err(ck.tensor_error(
                        &weight,
                        format!(
                            "{:?} weights with a {scale_name}: unpacked pre-quantized weights \
                             are not read (expected uint8 packed, or master weights without a \
                             scale)",
                            weight.dtype
                        ),
                    ));
                }
                ck.check_shape(&weight, &[rows, cols])?;
                let mean = abs_mean(ck, &weight)?;
                let inv_scale = 1.0 / mean.max(MEAN_FLOOR);
                Ok(TernaryTensor {
                    weight,
                    rows,
                    cols,
                    scale: 1.0 / inv_scale,
                    kind: Kind::Master { inv_scale },
                })
            }
            other => Err(ck.tensor_error(
                &weight,
                format!("dtype {other:?}, expected U8 (packed), BF16, F16 or F32"),
            )),
        }
    }

    /// Rows `start..start + out.len() / cols` as -1/0/+1.
    pub fn rows(
        &self,
        ck: &Checkpoint,
        start: usize,
        out: &mut [i8],
        scratch: &mut Vec<f32>,
    ) -> Result<(), CheckpointError> {
        let cols = self.cols;
        let n = out.len() / cols;
        match self.kind {
            Kind::Packed => {
                let bytes = ck.bytes(&self.weight);
                let packed_rows = self.rows / PER_BYTE;
                for (i, row) in out.chunks_exact_mut(cols).enumerate() {
                    let r = start + i;
                    let (p, shift) = (r % packed_rows, 2 * (r / packed_rows));
                    for (w, &b) in row.iter_mut().zip(&bytes[p * cols..(p + 1) * cols]) {
                        let code = (b >> shift) & 3;
                        if code == 3 {
                            return Err(ck.tensor_error(
                                &self.weight,
                                format!("code 3 (not ternary) in packed row {p}"),
                            ));
                        }
                        *w = code as i8 - 1;
                    }
                }
            }
            Kind::Master { inv_scale } => {
                ck.floats(&self.weight, start * cols..(start + n) * cols, scratch)?;
                for (w, &x) in out.iter_mut().zip(scratch.iter()) {
                    *w = (x * inv_scale).round_ties_even().clamp(-1.0, 1.0) as i8;
                }
            }
        }
        Ok(())
    }
}

impl TernaryTensor {
    /// Gives back the pages of rows already converted. Packed rows share bytes across the
    /// whole tensor (row r + j * rows/4 sits in packed row r), so those go only at the end.
    pub fn release_rows(&self, ck: &Checkpoint, rows: std::ops::Range<usize>) {
        if let Kind::Master { .. } = self.kind {
            ck.release_elements(&self.weight, rows.start * self.cols..rows.end * self.cols);
        }
    }
}

/// mean |w| over the whole tensor, read in chunks (summed in f64).
fn abs_mean(ck: &Checkpoint, t: &TensorRef) -> Result<f32, CheckpointError> {
    const CHUNK: usize = 1 << 20;
    let n = t.n_elements();
    let mut buf = Vec::with_capacity(CHUNK.min(n));
    let mut sum = 0f64;
    for start in (0..n).step_by(CHUNK) {
        ck.floats(t, start..(start + CHUNK).min(n), &mut buf)?;
        sum += buf.iter().map(|v| f64::from(v.abs())).sum::<f64>();
        ck.release_elements(t, start..(start + CHUNK).min(n));
    }
    Ok((sum / n as f64) as f32)
}
