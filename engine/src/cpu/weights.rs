//! The CPU backend's weights: f32, or quantized blocks kept as they came (GGUF files), with
//! q/k/v and gate/up fused so that each is one pass over memory.

use crate::checkpoint::Tensor;
use crate::{Checkpoint, EngineError};

use crate::gguf::{Block32, Quant};

use super::quant::{Q4Block, Q8Block, Q80Block, WeightBlock, XBlock, quantize_rows};

/// A weight matrix, rows of `k` values; quantized ones hold `k / 32` blocks a row.
pub enum Matrix {
    F32(Vec<f32>),
    /// Q4_0, Q4_1 and Q4_K.
    Q4(Vec<Q4Block>),
    /// Q8_0, and 4-bit types of one scale and no offset (Q4_0) stacked with it.
    Q80(Vec<Q80Block>),
    /// Q5_K, Q6_K, and the others stacked with them.
    Q8(Vec<Q8Block>),
}

/// Where a 4-bit type's values start (see [`Q4Block::new`]).
fn four_bit_low(q: Quant) -> Option<i8> {
    match q {
        Quant::Q4_0 => Some(-8),
        Quant::Q4_1 | Quant::Q4K => Some(0),
        Quant::Q8_0 | Quant::Q5K | Quant::Q6K => None,
    }
}

impl Matrix {
    /// The matrix of `tensors` stacked by rows: quantized when all of them are and rows are
    /// whole blocks, f32 otherwise.
    fn stack(tensors: &[Tensor<'_>]) -> Matrix {
        let k = tensors[0].shape.get(1).copied().unwrap_or(0);
        let quantized = k % 32 == 0
            && tensors
                .iter()
                .all(|t| t.quant.is_some() && t.shape.len() == 2 && t.shape[1] == k);
        if !quantized {
            return Matrix::F32(tensors.iter().flat_map(Tensor::to_f32).collect());
        }
        let nb = k / 32;
        // Every block, rows in Hugging Face order, with where its type's values start.
        let mut blocks: Vec<(Block32, Option<i8>)> = Vec::new();
        for t in tensors {
            let Some(q) = t.quant else { continue };
            let unpacked = q.unpack(t.data);
            for r in 0..t.shape[0] {
                let at = t.stored_row(r) * nb;
                blocks.extend(unpacked[at..at + nb].iter().map(|b| (*b, four_bit_low(q))));
            }
        }
        let four: Option<Vec<Q4Block>> = blocks
            .iter()
            .map(|(b, low)| Q4Block::new(b, (*low)?))
            .collect();
        if let Some(four) = four {
            return Matrix::Q4(four);
        }
        let one: Option<Vec<Q80Block>> = blocks.iter().map(|(b, _)| Q80Block::new(b)).collect();
        match one {
            Some(one) => Matrix::Q80(one),
            None => Matrix::Q8(blocks.into_iter().map(|(b, _)| Q8Block::from(b)).collect()),
        }
    }

    pub fn bytes(&self) -> usize {
        match self {
            Matrix::F32(v) => v.len() * 4,
            Matrix::Q4(b) => b.len() * size_of::<Q4Block>(),
            Matrix::Q80(b) => b.len() * size_of::<Q80Block>(),
            Matrix::Q8(b) => b.len() * size_of::<Q8Block>(),
        }
    }

    /// Row `r` (of `k` values) as f32, into `out`.
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let k = out.len();
        match self {
            Matrix::F32(v) => out.copy_from_slice(&v[r * k..(r + 1) * k]),
            Matrix::Q4(b) => dequantize_row(&b[r * k / 32..(r + 1) * k / 32], out),
            Matrix::Q80(b) => dequantize_row(&b[r * k / 32..(r + 1) * k / 32], out),
            Matrix::Q8(b) => dequantize_row(&b[r * k / 32..(r + 1) * k / 32], out),
        }
    }

    /// `out[m][n] = x[m] · row n`, for `rows` rows of `x`, each `k` long; `xq` is scratch
    /// space for the quantized activations.
    pub fn matmul(
        &self,
        pool: &rayon::ThreadPool,
        x: &[f32],
        rows: usize,
        k: usize,
        out: &mut [f32],
        xq: &mut Vec<XBlock>,
    ) {
        match self {
            Matrix::F32(w) => super::kernels::matmul(pool, x, rows, w, k, out),
            Matrix::Q4(w) => quantized(pool, x, rows, k, w, out, xq),
            Matrix::Q80(w) => quantized(pool, x, rows, k, w, out, xq),
            Matrix::Q8(w) => quantized(pool, x, rows, k, w, out, xq),
        }
    }
}

fn dequantize_row<W: WeightBlock>(blocks: &[W], out: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(blocks.iter().flat_map(W::values)) {
        *o = v;
    }
}

fn quantized<W: WeightBlock>(
    pool: &rayon::ThreadPool,
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[W],
    out: &mut [f32],
    xq: &mut Vec<XBlock>,
) {
    let nb = k / 32;
    if xq.len() < rows * nb {
        xq.resize(rows * nb, XBlock::default());
    }
    quantize_rows(&x[..rows * k], &mut xq[..rows * nb]);
    super::quant::matmul(pool, xq, rows, w, nb, out);
}

pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub mlp_norm: Vec<f32>,
    /// `[q | k | v]` rows, each `hidden` long.
    pub wqkv: Matrix,
    pub bqkv: Option<Vec<f32>>,
    pub wo: Matrix,
    /// `[gate | up]` rows.
    pub wgu: Matrix,
    pub wdown: Matrix,
}

pub struct Weights {
    pub embed: Matrix,
    pub norm: Vec<f32>,
    /// `None` when the embeddings are tied.
    pub lm_head: Option<Matrix>,
    pub layers: Vec<Layer>,
}

impl Weights {
    /// Bytes read from memory for one token's pass through every layer and the head.
    pub fn bytes_per_token(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                (l.attn_norm.len() + l.mlp_norm.len() + l.bqkv.as_ref().map_or(0, Vec::len)) * 4
                    + l.wqkv.bytes()
                    + l.wo.bytes()
                    + l.wgu.bytes()
                    + l.wdown.bytes()
            })
            .sum();
        let head = self.lm_head.as_ref().unwrap_or(&self.embed).bytes();
        layers + head + self.norm.len() * 4
    }
}

pub fn load(ck: &Checkpoint) -> Result<Weights, EngineError> {
    let t = |name: &str| ck.tensor(name).map(|t| t.to_f32());
    let matrix = |names: &[String]| -> Result<Matrix, EngineError> {
        let tensors = names
            .iter()
            .map(|n| ck.tensor(n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Matrix::stack(&tensors))
    };
    let cat = |names: &[String]| -> Result<Vec<f32>, EngineError> {
        let mut out = Vec::new();
        for n in names {
            out.extend(t(n)?);
        }
        Ok(out)
    };
    let c = &ck.config;
    let mut layers = Vec::with_capacity(c.num_layers);
    for l in 0..c.num_layers {
        let p = format!("model.layers.{l}");
        let proj = |w: &str, kind: &str| format!("{p}.self_attn.{w}_proj.{kind}");
        layers.push(Layer {
            attn_norm: t(&format!("{p}.input_layernorm.weight"))?,
            mlp_norm: t(&format!("{p}.post_attention_layernorm.weight"))?,
            wqkv: matrix(&["q", "k", "v"].map(|w| proj(w, "weight")))?,
            bqkv: if c.architecture.qkv_bias() {
                Some(cat(&["q", "k", "v"].map(|w| proj(w, "bias")))?)
            } else {
                None
            },
            wo: matrix(&[proj("o", "weight")])?,
            wgu: matrix(&[
                format!("{p}.mlp.gate_proj.weight"),
                format!("{p}.mlp.up_proj.weight"),
            ])?,
            wdown: matrix(&[format!("{p}.mlp.down_proj.weight")])?,
        });
    }
    Ok(Weights {
        embed: matrix(&["model.embed_tokens.weight".to_string()])?,
        norm: t("model.norm.weight")?,
        lm_head: if c.tie_word_embeddings {
            None
        } else {
            Some(matrix(&["lm_head.weight".to_string()])?)
        },
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::FixtureSpec;
    use crate::gguf::Quant;

    /// Every quantized matrix holds, row for row, the values the checkpoint dequantizes (the Q
    /// and K rows of a `llama` file put back in Hugging Face order as well).
    #[test]
    fn quantized_matrices_hold_the_checkpoints_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("tiny.gguf");
        crate::gguf::write_fixture(&file, &FixtureSpec::default(), Some(Quant::Q4_1)).unwrap();
        let ck = Checkpoint::open(&file).unwrap();
        let w = load(&ck).unwrap();
        let h = ck.config.hidden_size;
        let l = &w.layers[1];
        let Matrix::Q4(_) = &l.wqkv else {
            panic!("q/k/v are in four bits")
        };
        let mut expect = Vec::new();
        for p in ["q", "k", "v"] {
            let name = format!("model.layers.1.self_attn.{p}_proj.weight");
            expect.extend(ck.tensor(&name).unwrap().to_f32());
        }
        let mut row = vec![0.0; h];
        for r in 0..expect.len() / h {
            l.wqkv.row(r, &mut row);
            // Q4_1's `q·d + m` computed from the 4-bit block: the same to f32 rounding.
            for (a, e) in row.iter().zip(&expect[r * h..(r + 1) * h]) {
                assert!(
                    (a - e).abs() <= 1e-6 * e.abs().max(1.0),
                    "row {r}: {a} vs {e}"
                );
            }
        }
    }
}
