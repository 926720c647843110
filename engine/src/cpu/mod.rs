//! The CPU backend: f32 or quantized weights (`weights`), a paged f32 KV cache, and the
//! kernels of `kernels` and `quant` spread over a private thread pool. Buffers are sized once
//! for the largest step seen, so a decode step allocates nothing.

pub mod kernels;
pub mod quant;
mod weights;

use rayon::prelude::*;

use crate::backend::{Backend, DeviceInfo, SeqStep};
use crate::rope::RopeTables;
use crate::{Checkpoint, EngineError, ModelConfig};

use kernels::{add_in_place, dot, rms_norm, rope, silu_mul};
use quant::XBlock;
use weights::{Weights, load};

/// The largest head dimension the attention kernels handle (their accumulator is on the stack).
pub const MAX_HEAD_DIM: usize = 256;

/// Step buffers, grown to the largest step and then reused.
#[derive(Default)]
struct Scratch {
    tokens: usize,
    x: Vec<f32>,
    xn: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gu: Vec<f32>,
    act: Vec<f32>,
    /// Per token: (sequence index, position).
    token_at: Vec<(usize, usize)>,
    last: Vec<f32>,
    logits: Vec<f32>,
    /// Activations quantized for quantized weights.
    xq: Vec<XBlock>,
}

pub struct CpuConfig {
    pub threads: usize,
    /// Memory for the KV cache.
    pub kv_bytes: usize,
    pub block_size: usize,
}

pub struct CpuBackend {
    config: ModelConfig,
    weights: Weights,
    rope: RopeTables,
    pool: rayon::ThreadPool,
    threads: usize,
    block_size: usize,
    num_blocks: usize,
    /// Per layer: keys and values, `[slot][kv_head][head_dim]`.
    k_cache: Vec<Vec<f32>>,
    v_cache: Vec<Vec<f32>>,
    s: Scratch,
}

impl CpuBackend {
    pub fn new(ck: &Checkpoint, opts: CpuConfig) -> Result<CpuBackend, EngineError> {
        let config = ck.config.clone();
        if config.head_dim > MAX_HEAD_DIM {
            return Err(EngineError::Config(format!(
                "head_dim {} is larger than the {MAX_HEAD_DIM} the kernels support",
                config.head_dim
            )));
        }
        let weights = load(ck)?;
        let per_slot = config.num_kv_heads * config.head_dim;
        let per_block = 2 * config.num_layers * opts.block_size * per_slot * 4;
        let num_blocks = opts.kv_bytes / per_block;
        if num_blocks == 0 {
            return Err(EngineError::Config(format!(
                "a KV cache of {} bytes holds no block of {} tokens ({per_block} bytes each)",
                opts.kv_bytes, opts.block_size
            )));
        }
        let slots = num_blocks * opts.block_size;
        let threads = opts.threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("tokenmill-cpu-{i}"))
            .build()
            .map_err(|e| EngineError::Device(format!("CPU thread pool: {e}")))?;
        Ok(CpuBackend {
            rope: RopeTables::new(&config, config.max_position_embeddings),
            k_cache: (0..config.num_layers)
                .map(|_| vec![0.0; slots * per_slot])
                .collect(),
            v_cache: (0..config.num_layers)
                .map(|_| vec![0.0; slots * per_slot])
                .collect(),
            config,
            weights,
            pool,
            threads,
            block_size: opts.block_size,
            num_blocks,
            s: Scratch::default(),
        })
    }

    fn reserve(&mut self, tokens: usize, outputs: usize) {
        let c = &self.config;
        let q = c.num_heads * c.head_dim;
        let kv = c.num_kv_heads * c.head_dim;
        let s = &mut self.s;
        if tokens > s.tokens {
            s.tokens = tokens;
            s.x.resize(tokens * c.hidden_size, 0.0);
            s.xn.resize(tokens * c.hidden_size, 0.0);
            s.qkv.resize(tokens * (q + 2 * kv), 0.0);
            s.attn.resize(tokens * q, 0.0);
            s.proj.resize(tokens * c.hidden_size, 0.0);
            s.gu.resize(tokens * 2 * c.intermediate_size, 0.0);
            s.act.resize(tokens * c.intermediate_size, 0.0);
        }
        if s.last.len() < outputs * c.hidden_size {
            s.last.resize(outputs * c.hidden_size, 0.0);
            s.logits.resize(outputs * c.vocab_size, 0.0);
        }
        s.token_at.clear();
    }
}

/// Causal attention of one query head over its sequence's paged keys and values, with the
/// softmax computed block by block (running maximum), so no buffer grows with the context.
#[allow(clippy::too_many_arguments)]
fn attend(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    blocks: &[u32],
    block_size: usize,
    position: usize,
    kv_head: usize,
    kv_heads: usize,
    scale: f32,
    out: &mut [f32],
) {
    let d = q.len();
    let mut acc = [0.0f32; MAX_HEAD_DIM];
    let acc = &mut acc[..d];
    let mut scores = [0.0f32; 64];
    let (mut max, mut sum) = (f32::NEG_INFINITY, 0.0f32);
    let context = position + 1;
    let mut base = 0;
    while base < context {
        let n = block_size.min(64).min(context - base);
        let mut block_max = f32::NEG_INFINITY;
        for (j, s) in scores.iter_mut().enumerate().take(n) {
            let p = base + j;
            let slot = blocks[p / block_size] as usize * block_size + p % block_size;
            let off = (slot * kv_heads + kv_head) * d;
            *s = dot(q, &k_cache[off..off + d]) * scale;
            block_max = block_max.max(*s);
        }
        let new_max = max.max(block_max);
        let rescale = (max - new_max).exp();
        sum *= rescale;
        for a in acc.iter_mut() {
            *a *= rescale;
        }
        for (j, s) in scores.iter().enumerate().take(n) {
            let p = base + j;
            let slot = blocks[p / block_size] as usize * block_size + p % block_size;
            let off = (slot * kv_heads + kv_head) * d;
            let e = (s - new_max).exp();
            sum += e;
            for (a, v) in acc.iter_mut().zip(&v_cache[off..off + d]) {
                *a += e * v;
            }
        }
        max = new_max;
        base += n;
    }
    let inv = 1.0 / sum;
    for (o, a) in out.iter_mut().zip(acc.iter()) {
        *o = a * inv;
    }
}

impl CpuBackend {
    /// Checks the step against the context, the block pool and the vocabulary, and notes
    /// each token's (sequence, position).
    fn check(&mut self, seqs: &[SeqStep<'_>]) -> Result<(), EngineError> {
        let bs = self.block_size;
        for (i, seq) in seqs.iter().enumerate() {
            let end = seq.start + seq.tokens.len();
            if end > self.rope.positions || end.div_ceil(bs) > seq.blocks.len() {
                return Err(EngineError::Device(format!(
                    "step for positions up to {end} exceeds the context or its block table"
                )));
            }
            for (j, &tok) in seq.tokens.iter().enumerate() {
                if tok as usize >= self.config.vocab_size {
                    return Err(EngineError::Device(format!("token id {tok} out of range")));
                }
                self.s.token_at.push((i, seq.start + j));
            }
            if seq.blocks.iter().any(|&b| b as usize >= self.num_blocks) {
                return Err(EngineError::Device("block id out of range".into()));
            }
        }
        Ok(())
    }

    /// Layer `l`'s attention: norm, the fused q/k/v product (with its bias), RoPE, the new
    /// keys and values written to the paged cache, causal attention of every query head
    /// (on the pool once there is enough work), the output projection added to the residual.
    fn attention_layer(&mut self, l: usize, seqs: &[SeqStep<'_>], tokens: usize) {
        let c = &self.config;
        let (h, d) = (c.hidden_size, c.head_dim);
        let (heads, kv_heads) = (c.num_heads, c.num_kv_heads);
        let (q_w, kv_w) = (heads * d, kv_heads * d);
        let qkv_w = q_w + 2 * kv_w;
        let eps = c.rms_norm_eps as f32;
        let scale = 1.0 / (d as f32).sqrt();
        let bs = self.block_size;
        let s = &mut self.s;
        let layer = &self.weights.layers[l];
        let x = &mut s.x[..tokens * h];
        let xn = &mut s.xn[..tokens * h];
        rms_norm(x, &layer.attn_norm, eps, xn);
        let qkv = &mut s.qkv[..tokens * qkv_w];
        layer.wqkv.matmul(&self.pool, xn, tokens, h, qkv, &mut s.xq);
        let (kc, vc) = (&mut self.k_cache[l], &mut self.v_cache[l]);
        debug_assert_eq!(kc.len(), self.num_blocks * bs * kv_w);
        for (row, &(si, pos)) in qkv.chunks_exact_mut(qkv_w).zip(&s.token_at) {
            if let Some(b) = &layer.bqkv {
                add_in_place(row, b);
            }
            let (cos, sin) = self.rope.at(pos);
            for head in row[..q_w + kv_w].chunks_exact_mut(d) {
                rope(head, cos, sin);
            }
            let blocks = seqs[si].blocks;
            let slot = blocks[pos / bs] as usize * bs + pos % bs;
            kc[slot * kv_w..(slot + 1) * kv_w].copy_from_slice(&row[q_w..q_w + kv_w]);
            vc[slot * kv_w..(slot + 1) * kv_w].copy_from_slice(&row[q_w + kv_w..]);
        }
        let attn = &mut s.attn[..tokens * q_w];
        let (qkv, kc, vc, token_at) = (&*qkv, &*kc, &*vc, &s.token_at);
        let group = heads / kv_heads;
        let task = |(i, out): (usize, &mut [f32])| {
            let (t, head) = (i / heads, i % heads);
            let (si, pos) = token_at[t];
            let q = &qkv[t * qkv_w + head * d..t * qkv_w + (head + 1) * d];
            let blocks = seqs[si].blocks;
            attend(
                q,
                kc,
                vc,
                blocks,
                bs,
                pos,
                head / group,
                kv_heads,
                scale,
                out,
            );
        };
        // Threads pay off once there is real work: many heads or long contexts.
        let work = tokens * heads * (s.token_at.last().map_or(0, |t| t.1) + 1) * d;
        if self.threads > 1 && work >= 1 << 15 {
            self.pool
                .install(|| attn.par_chunks_mut(d).enumerate().for_each(task));
        } else {
            attn.chunks_mut(d).enumerate().for_each(task);
        }
        let proj = &mut s.proj[..tokens * h];
        layer
            .wo
            .matmul(&self.pool, attn, tokens, q_w, proj, &mut s.xq);
        add_in_place(x, proj);
    }

    /// Layer `l`'s MLP: norm, the fused gate/up product, SiLU(gate) × up, the down
    /// projection added to the residual.
    fn mlp_layer(&mut self, l: usize, tokens: usize) {
        let c = &self.config;
        let (h, inter, eps) = (c.hidden_size, c.intermediate_size, c.rms_norm_eps as f32);
        let s = &mut self.s;
        let layer = &self.weights.layers[l];
        let x = &mut s.x[..tokens * h];
        let xn = &mut s.xn[..tokens * h];
        rms_norm(x, &layer.mlp_norm, eps, xn);
        let gu = &mut s.gu[..tokens * 2 * inter];
        layer.wgu.matmul(&self.pool, xn, tokens, h, gu, &mut s.xq);
        let act = &mut s.act[..tokens * inter];
        silu_mul(gu, inter, act);
        let proj = &mut s.proj[..tokens * h];
        layer
            .wdown
            .matmul(&self.pool, act, tokens, inter, proj, &mut s.xq);
        add_in_place(x, proj);
    }

    /// The final norm and the head, only on the last token of each sequence that wants
    /// logits: the logits, `outputs` rows of the vocabulary.
    fn head(&mut self, seqs: &[SeqStep<'_>], tokens: usize, outputs: usize) -> &[f32] {
        let c = &self.config;
        let (h, eps) = (c.hidden_size, c.rms_norm_eps as f32);
        let (s, w) = (&mut self.s, &self.weights);
        let x = &s.x[..tokens * h];
        let mut t = 0;
        let mut o = 0;
        for seq in seqs {
            t += seq.tokens.len();
            if seq.want_logits {
                let last = &mut s.last[o * h..(o + 1) * h];
                rms_norm(&x[(t - 1) * h..t * h], &w.norm, eps, last);
                o += 1;
            }
        }
        let head = w.lm_head.as_ref().unwrap_or(&w.embed);
        let logits = &mut s.logits[..outputs * c.vocab_size];
        head.matmul(
            &self.pool,
            &s.last[..outputs * h],
            outputs,
            h,
            logits,
            &mut s.xq,
        );
        logits
    }
}

impl Backend for CpuBackend {
    /// One forward step: the batch checked, then the embedding, each layer's attention and
    /// MLP, and the head on the last token of each sequence that wants logits.
    fn forward(&mut self, seqs: &[SeqStep<'_>]) -> Result<&[f32], EngineError> {
        let tokens: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        let outputs = seqs.iter().filter(|s| s.want_logits).count();
        self.reserve(tokens, outputs);
        self.check(seqs)?;
        let h = self.config.hidden_size;
        let x = &mut self.s.x[..tokens * h];
        let mut t = 0;
        for seq in seqs {
            for &tok in seq.tokens {
                self.weights
                    .embed
                    .row(tok as usize, &mut x[t * h..(t + 1) * h]);
                t += 1;
            }
        }
        for l in 0..self.weights.layers.len() {
            self.attention_layer(l, seqs, tokens);
            self.mlp_layer(l, tokens);
        }
        Ok(self.head(seqs, tokens, outputs))
    }

    fn vocab(&self) -> usize {
        self.config.vocab_size
    }
    fn block_size(&self) -> usize {
        self.block_size
    }
    fn kv_blocks(&self) -> usize {
        self.num_blocks
    }
    fn weight_bytes_per_token(&self) -> u64 {
        self.weights.bytes_per_token() as u64
    }

    fn device(&self) -> DeviceInfo {
        DeviceInfo {
            id: "cpu".into(),
            name: format!(
                "CPU, {} threads ({}; quantized {})",
                self.threads,
                kernels::isa_name(),
                quant::isa_name()
            ),
            memory_bytes: None,
            bandwidth_bytes_per_s: None,
        }
    }
}
