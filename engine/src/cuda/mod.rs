//! The CUDA backend, through cudarc with dynamic loading (the binary runs, and says so, where
//! there is no driver). Weights and the paged KV cache are bf16 on the device; the residual
//! stream is f32; the projections are cuBLAS GEMMs with bf16 inputs, f32 accumulation and f32
//! output; the other operations are the CUDA C kernels of `kernels/llama.cu`, compiled by NVRTC
//! for the device at start. Logits come back to the host, where the same sampler as the CPU
//! backend's picks tokens.

// Device pointers handed to cuBLAS are raw; each call says why it is sound.
#![allow(unsafe_code)]

use std::sync::Arc;
use std::time::Instant;

use cudarc::cublas::CudaBlas;
use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig,
    PushKernelArg,
};

use crate::backend::{Backend, DeviceInfo, SeqStep};
use crate::rope::RopeTables;
use crate::{Checkpoint, EngineError, ModelConfig};

/// The kernels' source, compiled at start (and compile-checked in CI without a GPU).
pub const KERNELS: &str = include_str!("../../kernels/llama.cu");

/// The kernels each backend launches, by name.
pub const KERNEL_NAMES: [&str; 6] = [
    "embedding",
    "rms_norm",
    "add_rms_norm",
    "qkv_rope_cache",
    "paged_attention",
    "silu_mul",
];

fn err(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Device(format!("CUDA {what}: {e}"))
}

/// Whether the CUDA driver library can be loaded (never panics, unlike a first cudarc call).
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library by its known names; nothing is called.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether NVRTC can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: as above, for libnvrtc.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// How many CUDA devices there are (0 without a driver).
pub fn device_count() -> usize {
    if !driver_present() {
        return 0;
    }
    CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
}

/// Compiles the kernels to PTX for `arch` (e.g. "compute_90").
pub fn compile(arch: &str) -> Result<cudarc::nvrtc::Ptx, EngineError> {
    if !nvrtc_present() {
        return Err(EngineError::Device(
            "NVRTC (libnvrtc) was not found; add its directory to LD_LIBRARY_PATH".into(),
        ));
    }
    let opts = cudarc::nvrtc::CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        name: Some("llama.cu".into()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(KERNELS, opts).map_err(|e| err("kernel compilation", e))
}

struct Layer {
    attn_norm: CudaSlice<u16>,
    mlp_norm: CudaSlice<u16>,
    wqkv: CudaSlice<u16>,
    bqkv: Option<CudaSlice<f32>>,
    wo: CudaSlice<u16>,
    wgu: CudaSlice<u16>,
    wdown: CudaSlice<u16>,
}

struct Kernels {
    embedding: CudaFunction,
    rms_norm: CudaFunction,
    add_rms_norm: CudaFunction,
    qkv_rope_cache: CudaFunction,
    paged_attention: CudaFunction,
    silu_mul: CudaFunction,
}

/// Device buffers for a step of up to `tokens` tokens and `seqs` sequences.
struct Scratch {
    tokens: usize,
    seqs: usize,
    max_blocks: usize,
    ids: CudaSlice<i32>,
    positions: CudaSlice<i32>,
    slots: CudaSlice<i32>,
    token_seq: CudaSlice<i32>,
    block_tables: CudaSlice<i32>,
    x: CudaSlice<f32>,
    xn: CudaSlice<u16>,
    qkv: CudaSlice<f32>,
    q: CudaSlice<f32>,
    attn: CudaSlice<u16>,
    proj: CudaSlice<f32>,
    gu: CudaSlice<f32>,
    act: CudaSlice<u16>,
    last: CudaSlice<u16>,
    logits: CudaSlice<f32>,
}

pub struct CudaConfig {
    pub ordinal: usize,
    pub block_size: usize,
    /// Share of the memory free after loading that the KV cache takes.
    pub kv_fraction: f64,
    pub max_step_tokens: usize,
    pub max_seqs: usize,
}

pub struct CudaBackend {
    config: ModelConfig,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    k: Kernels,
    embed: CudaSlice<u16>,
    norm: CudaSlice<u16>,
    lm_head: Option<CudaSlice<u16>>,
    layers: Vec<Layer>,
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    positions: usize,
    k_cache: Vec<CudaSlice<u16>>,
    v_cache: Vec<CudaSlice<u16>>,
    block_size: usize,
    num_blocks: usize,
    s: Scratch,
    // Host staging, reused every step.
    h_ids: Vec<i32>,
    h_pos: Vec<i32>,
    h_slots: Vec<i32>,
    h_seq: Vec<i32>,
    h_tables: Vec<i32>,
    h_logits: Vec<f32>,
    info: DeviceInfo,
    weight_bytes: u64,
}

fn bf16_bits(values: &[f32]) -> Vec<u16> {
    values
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_bits())
        .collect()
}

impl CudaBackend {
    pub fn new(ck: &Checkpoint, opts: CudaConfig) -> Result<CudaBackend, EngineError> {
        let count = device_count();
        if opts.ordinal >= count {
            return Err(EngineError::Device(if count == 0 {
                format!(
                    "cuda:{} was asked for, but no CUDA driver or GPU was found",
                    opts.ordinal
                )
            } else {
                format!(
                    "cuda:{} was asked for, but there are {count} CUDA devices",
                    opts.ordinal
                )
            }));
        }
        let config = ck.config.clone();
        if config.head_dim > 256 {
            return Err(EngineError::Config(format!(
                "head_dim {} is larger than the 256 the kernels support",
                config.head_dim
            )));
        }
        let ctx = CudaContext::new(opts.ordinal).map_err(|e| err("context", e))?;
        let stream = ctx.default_stream();
        let (major, minor) = ctx.compute_capability().map_err(|e| err("device", e))?;
        let ptx = compile(&format!("compute_{major}{minor}"))?;
        let module = ctx.load_module(ptx).map_err(|e| err("module", e))?;
        let f = |name: &str| module.load_function(name).map_err(|e| err(name, e));
        let k = Kernels {
            embedding: f("embedding")?,
            rms_norm: f("rms_norm")?,
            add_rms_norm: f("add_rms_norm")?,
            qkv_rope_cache: f("qkv_rope_cache")?,
            paged_attention: f("paged_attention")?,
            silu_mul: f("silu_mul")?,
        };
        let blas = CudaBlas::new(stream.clone()).map_err(|e| err("cuBLAS", e))?;

        let w = upload_weights(ck, &stream)?;
        let rope = RopeTables::new(&config, config.max_position_embeddings);
        let cos = stream.clone_htod(&rope.cos).map_err(|e| err("upload", e))?;
        let sin = stream.clone_htod(&rope.sin).map_err(|e| err("upload", e))?;

        let s = Scratch::new(&stream, &config, opts.max_step_tokens, opts.max_seqs, 1)?;
        let (free, total) = ctx.mem_get_info().map_err(|e| err("memory", e))?;
        let kv = alloc_kv_cache(&stream, &config, &opts, free)?;
        let info = DeviceInfo {
            id: format!("cuda:{}", opts.ordinal),
            name: ctx.name().map_err(|e| err("device", e))?,
            memory_bytes: Some(total as u64),
            bandwidth_bytes_per_s: measure_bandwidth(&stream).ok(),
        };
        Ok(CudaBackend {
            positions: rope.positions,
            config,
            stream,
            blas,
            k,
            embed: w.embed,
            norm: w.norm,
            lm_head: w.lm_head,
            layers: w.layers,
            cos,
            sin,
            k_cache: kv.k,
            v_cache: kv.v,
            block_size: opts.block_size,
            num_blocks: kv.blocks,
            s,
            h_ids: Vec::new(),
            h_pos: Vec::new(),
            h_slots: Vec::new(),
            h_seq: Vec::new(),
            h_tables: Vec::new(),
            h_logits: Vec::new(),
            info,
            weight_bytes: w.bytes,
        })
    }
}

/// The model's weights on the device, in bf16, with q/k/v and gate/up fused.
struct DeviceWeights {
    layers: Vec<Layer>,
    embed: CudaSlice<u16>,
    norm: CudaSlice<u16>,
    lm_head: Option<CudaSlice<u16>>,
    /// Bytes read per token (the embedding only when it is also the head).
    bytes: u64,
}

fn upload_weights(ck: &Checkpoint, stream: &Arc<CudaStream>) -> Result<DeviceWeights, EngineError> {
    let config = &ck.config;
    let mut weight_bytes = 0u64;
    let mut up = |values: Vec<f32>, counted: bool| -> Result<CudaSlice<u16>, EngineError> {
        if counted {
            weight_bytes += 2 * values.len() as u64;
        }
        stream
            .clone_htod(&bf16_bits(&values))
            .map_err(|e| err("upload", e))
    };
    let t = |name: &str| ck.tensor(name).map(|t| t.to_f32());
    let cat = |names: [String; 3]| -> Result<Vec<f32>, EngineError> {
        let mut out = Vec::new();
        for n in names {
            out.extend(t(&n)?);
        }
        Ok(out)
    };
    let mut layers = Vec::with_capacity(config.num_layers);
    for l in 0..config.num_layers {
        let p = format!("model.layers.{l}");
        let proj = |w: &str, kind: &str| format!("{p}.self_attn.{w}_proj.{kind}");
        let bqkv = if config.architecture.qkv_bias() {
            let b = cat(["q", "k", "v"].map(|w| proj(w, "bias")))?;
            Some(stream.clone_htod(&b).map_err(|e| err("upload", e))?)
        } else {
            None
        };
        let mut gate = t(&format!("{p}.mlp.gate_proj.weight"))?;
        gate.extend(t(&format!("{p}.mlp.up_proj.weight"))?);
        layers.push(Layer {
            attn_norm: up(t(&format!("{p}.input_layernorm.weight"))?, true)?,
            mlp_norm: up(t(&format!("{p}.post_attention_layernorm.weight"))?, true)?,
            wqkv: up(cat(["q", "k", "v"].map(|w| proj(w, "weight")))?, true)?,
            bqkv,
            wo: up(t(&proj("o", "weight"))?, true)?,
            wgu: up(gate, true)?,
            wdown: up(t(&format!("{p}.mlp.down_proj.weight"))?, true)?,
        });
    }
    let tied = config.tie_word_embeddings;
    let embed = up(t("model.embed_tokens.weight")?, tied)?;
    let norm = up(t("model.norm.weight")?, true)?;
    let lm_head = if tied {
        None
    } else {
        Some(up(t("lm_head.weight")?, true)?)
    };
    Ok(DeviceWeights {
        layers,
        embed,
        norm,
        lm_head,
        bytes: weight_bytes,
    })
}

/// The KV cache: its share (`kv_fraction`) of the `free` device memory left after the
/// weights and scratch, as whole blocks. Returns the key and value caches per layer and the
/// number of blocks.
fn alloc_kv_cache(
    stream: &Arc<CudaStream>,
    config: &ModelConfig,
    opts: &CudaConfig,
    free: usize,
) -> Result<KvCache, EngineError> {
    // The KV cache takes its share of what is left.
    let per_slot = config.num_kv_heads * config.head_dim;
    let per_block = 2 * config.num_layers * opts.block_size * per_slot * 2;
    let num_blocks = ((free as f64 * opts.kv_fraction) as usize / per_block).max(1);
    let slots = num_blocks * opts.block_size;
    let alloc = || {
        stream
            .alloc_zeros::<u16>(slots * per_slot)
            .map_err(|e| err("KV cache", e))
    };
    let k_cache = (0..config.num_layers)
        .map(|_| alloc())
        .collect::<Result<_, _>>()?;
    let v_cache = (0..config.num_layers)
        .map(|_| alloc())
        .collect::<Result<_, _>>()?;
    Ok(KvCache {
        k: k_cache,
        v: v_cache,
        blocks: num_blocks,
    })
}

/// The paged key and value caches, one buffer per layer each, of `blocks` blocks.
struct KvCache {
    k: Vec<CudaSlice<u16>>,
    v: Vec<CudaSlice<u16>>,
    blocks: usize,
}

/// Device-to-device copy bandwidth (bytes read plus bytes written per second) over 1 GiB.
fn measure_bandwidth(stream: &Arc<CudaStream>) -> Result<f64, EngineError> {
    let n = 256 << 20; // f32 elements: 1 GiB
    let a = stream.alloc_zeros::<f32>(n).map_err(|e| err("alloc", e))?;
    let mut b = stream.alloc_zeros::<f32>(n).map_err(|e| err("alloc", e))?;
    let mut best = f64::MAX;
    for _ in 0..5 {
        stream.synchronize().map_err(|e| err("sync", e))?;
        let t = Instant::now();
        stream.memcpy_dtod(&a, &mut b).map_err(|e| err("copy", e))?;
        stream.synchronize().map_err(|e| err("sync", e))?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n * 4) as f64 / best)
}

impl Scratch {
    fn new(
        stream: &Arc<CudaStream>,
        c: &ModelConfig,
        tokens: usize,
        seqs: usize,
        max_blocks: usize,
    ) -> Result<Scratch, EngineError> {
        let q = c.num_heads * c.head_dim;
        let qkv = q + 2 * c.num_kv_heads * c.head_dim;
        let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        macro_rules! z {
            ($t:ty, $n:expr) => {
                stream
                    .alloc_zeros::<$t>(($n).max(1))
                    .map_err(|e| err("scratch", e))?
            };
        }
        Ok(Scratch {
            tokens,
            seqs,
            max_blocks,
            ids: z!(i32, tokens),
            positions: z!(i32, tokens),
            slots: z!(i32, tokens),
            token_seq: z!(i32, tokens),
            block_tables: z!(i32, seqs * max_blocks),
            x: z!(f32, tokens * h),
            xn: z!(u16, tokens * h),
            qkv: z!(f32, tokens * qkv),
            q: z!(f32, tokens * q),
            attn: z!(u16, tokens * q),
            proj: z!(f32, tokens * h),
            gu: z!(f32, tokens * 2 * i),
            act: z!(u16, tokens * i),
            last: z!(u16, seqs * h),
            logits: z!(f32, seqs * v),
        })
    }
}

fn cfg(grid: (u32, u32), block: u32, shared: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0, grid.1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: shared,
    }
}

/// `out[rows][n] = x[rows][k] · w[n][k]ᵀ` with bf16 inputs and f32 accumulation and output.
/// cuBLAS is column-major: the row-major product is computed as outᵀ = w · xᵀ.
#[allow(clippy::too_many_arguments)]
fn gemm(
    blas: &CudaBlas,
    stream: &CudaStream,
    x: &CudaSlice<u16>,
    w: &CudaSlice<u16>,
    out: &mut CudaSlice<f32>,
    rows: usize,
    n: usize,
    k: usize,
) -> Result<(), EngineError> {
    let (alpha, beta) = (1.0f32, 0.0f32);
    let (xp, _x) = x.device_ptr(stream);
    let (wp, _w) = w.device_ptr(stream);
    let (op, _o) = out.device_ptr_mut(stream);
    // SAFETY: the three buffers are live device allocations on this stream's context, sized
    // for at least rows×k, n×k and rows×n elements (the callers pass their scratch and weight
    // shapes); alpha and beta are host f32s as CUBLAS_COMPUTE_32F requires; the guards keep
    // the buffers' stream ordering until the call is enqueued.
    unsafe {
        cudarc::cublas::result::gemm_ex(
            *blas.handle(),
            cublasOperation_t::CUBLAS_OP_T,
            cublasOperation_t::CUBLAS_OP_N,
            n as i32,
            rows as i32,
            k as i32,
            (&alpha) as *const f32 as *const _,
            wp as *const _,
            cudaDataType_t::CUDA_R_16BF,
            k as i32,
            xp as *const _,
            cudaDataType_t::CUDA_R_16BF,
            k as i32,
            (&beta) as *const f32 as *const _,
            op as *mut _,
            cudaDataType_t::CUDA_R_32F,
            n as i32,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| err("GEMM", e))
}

/// `x += proj`, then `xn = RMSNorm(x) · weight`, one block per token.
fn add_norm(
    st: &CudaStream,
    f: &CudaFunction,
    s: &mut Scratch,
    weight: &CudaSlice<u16>,
    tokens: usize,
    hidden: usize,
    eps: f32,
) -> Result<(), EngineError> {
    let (t32, h32) = (tokens as i32, hidden as i32);
    // SAFETY: add_rms_norm(float*, const float*, const bf16*, bf16*, int, float) gets exactly
    // those types; x, proj and xn hold at least tokens × hidden elements (ensure_scratch) and
    // the weight `hidden`; the grid has one block per token.
    unsafe {
        st.launch_builder(f)
            .arg(&mut s.x)
            .arg(&s.proj)
            .arg(weight)
            .arg(&mut s.xn)
            .arg(&h32)
            .arg(&eps)
            .launch(cfg((t32 as u32, 1), 256, 0))
    }
    .map(|_| ())
    .map_err(|e| err("add_rms_norm", e))
}

impl CudaBackend {
    fn ensure_scratch(
        &mut self,
        tokens: usize,
        seqs: usize,
        max_blocks: usize,
    ) -> Result<(), EngineError> {
        let s = &self.s;
        if tokens > s.tokens || seqs > s.seqs || max_blocks > s.max_blocks {
            self.s = Scratch::new(
                &self.stream,
                &self.config,
                tokens.max(s.tokens),
                seqs.max(s.seqs),
                max_blocks.max(s.max_blocks),
            )?;
        }
        Ok(())
    }

    /// One forward step: the batch's inputs uploaded, then the embedding, each layer's
    /// attention and MLP, and the head on the rows that want logits, whose logits are read
    /// back into `h_logits`.
    fn run(&mut self, seqs: &[SeqStep<'_>]) -> Result<(), EngineError> {
        let step = self.upload(seqs)?;
        self.embed(&step)?;
        for l in 0..self.layers.len() {
            self.attention_layer(l, &step)?;
            self.mlp_layer(l, &step)?;
        }
        self.head(seqs, &step)?;
        self.stream.synchronize().map_err(|e| err("step", e))
    }

    /// Checks the step against the context, the block pool and the vocabulary, packs its
    /// token ids, positions, cache slots, sequence of each token and block tables, and
    /// uploads them into scratch sized for the step.
    fn upload(&mut self, seqs: &[SeqStep<'_>]) -> Result<Step, EngineError> {
        let bs = self.block_size;
        let vocab = self.config.vocab_size;
        self.h_ids.clear();
        self.h_pos.clear();
        self.h_slots.clear();
        self.h_seq.clear();
        let max_blocks = seqs
            .iter()
            .map(|s| s.blocks.len())
            .max()
            .unwrap_or(1)
            .max(1);
        self.h_tables.clear();
        self.h_tables.resize(seqs.len() * max_blocks, 0);
        for (i, seq) in seqs.iter().enumerate() {
            let end = seq.start + seq.tokens.len();
            if end > self.positions || end.div_ceil(bs) > seq.blocks.len() {
                return Err(EngineError::Device(format!(
                    "step for positions up to {end} exceeds the context or its block table"
                )));
            }
            for (j, &b) in seq.blocks.iter().enumerate() {
                if b as usize >= self.num_blocks {
                    return Err(EngineError::Device("block id out of range".into()));
                }
                self.h_tables[i * max_blocks + j] = b as i32;
            }
            for (j, &tok) in seq.tokens.iter().enumerate() {
                if tok as usize >= vocab {
                    return Err(EngineError::Device(format!("token id {tok} out of range")));
                }
                let pos = seq.start + j;
                self.h_ids.push(tok as i32);
                self.h_pos.push(pos as i32);
                self.h_slots
                    .push((seq.blocks[pos / bs] as usize * bs + pos % bs) as i32);
                self.h_seq.push(i as i32);
            }
        }
        let step = Step {
            tokens: self.h_ids.len(),
            max_blocks,
            outputs: seqs.iter().filter(|s| s.want_logits).count(),
        };
        // Block tables are uploaded for every sequence of the step, not only those that want
        // logits (a chunked prefill's middle chunk wants none).
        self.ensure_scratch(step.tokens, seqs.len().max(1), max_blocks)?;
        let st = &self.stream;
        let s = &mut self.s;
        let copy = |host: &[i32], dev: &mut CudaSlice<i32>| {
            st.memcpy_htod(host, &mut dev.slice_mut(0..host.len()))
                .map_err(|e| err("upload", e))
        };
        copy(&self.h_ids, &mut s.ids)?;
        copy(&self.h_pos, &mut s.positions)?;
        copy(&self.h_slots, &mut s.slots)?;
        copy(&self.h_seq, &mut s.token_seq)?;
        copy(&self.h_tables, &mut s.block_tables)?;
        Ok(step)
    }

    // SAFETY (every launch in the stages below): each kernel's arguments match its signature
    // in llama.cu in order and type; every buffer was sized for at least `step.tokens` rows of
    // its width (`ensure_scratch`, from `upload`), the caches for num_blocks × block_size
    // slots (block ids and positions were range-checked in `upload`), and the grids cover
    // exactly those rows.

    /// The token embeddings into the residual stream `x`.
    fn embed(&mut self, step: &Step) -> Result<(), EngineError> {
        let (st, s, k) = (&self.stream, &mut self.s, &self.k);
        let (t32, h32) = (step.tokens as i32, self.config.hidden_size as i32);
        launched(
            // SAFETY: as stated before `embed`.
            unsafe {
                st.launch_builder(&k.embedding)
                    .arg(&self.embed)
                    .arg(&s.ids)
                    .arg(&mut s.x)
                    .arg(&h32)
                    .arg(&t32)
                    .launch(cfg((t32 as u32, 1), 256, 0))
            },
            "embedding",
        )
    }

    /// Layer `l`'s attention: its norm (after adding the previous layer's MLP output to the
    /// residual), the fused q/k/v product, RoPE with the K/V cache write, paged attention
    /// over the cache, and the output projection into `proj`.
    fn attention_layer(&mut self, l: usize, step: &Step) -> Result<(), EngineError> {
        let c = &self.config;
        let (h, d) = (c.hidden_size, c.head_dim);
        let (heads, kv_heads) = (c.num_heads, c.num_kv_heads);
        let q_w = heads * d;
        let qkv_w = q_w + 2 * kv_heads * d;
        let eps = c.rms_norm_eps as f32;
        let tokens = step.tokens;
        let (st, s, k) = (&self.stream, &mut self.s, &self.k);
        let layer = &self.layers[l];
        let (t32, h32) = (tokens as i32, h as i32);
        if l == 0 {
            launched(
                // SAFETY: as stated before `embed`.
                unsafe {
                    st.launch_builder(&k.rms_norm)
                        .arg(&s.x)
                        .arg(&layer.attn_norm)
                        .arg(&mut s.xn)
                        .arg(&h32)
                        .arg(&eps)
                        .launch(cfg((t32 as u32, 1), 256, 0))
                },
                "rms_norm",
            )?;
        } else {
            // The previous layer's MLP output joins the residual here.
            add_norm(st, &k.add_rms_norm, s, &layer.attn_norm, tokens, h, eps)?;
        }
        gemm(
            &self.blas,
            st,
            &s.xn,
            &layer.wqkv,
            &mut s.qkv,
            tokens,
            qkv_w,
            h,
        )?;
        let (hn, kvn, dn) = (heads as i32, kv_heads as i32, d as i32);
        let null: u64 = 0;
        let mut b = st.launch_builder(&k.qkv_rope_cache);
        b.arg(&s.qkv);
        match &layer.bqkv {
            Some(bias) => b.arg(bias),
            None => b.arg(&null),
        };
        launched(
            // SAFETY: as stated before `embed`.
            unsafe {
                b.arg(&self.cos)
                    .arg(&self.sin)
                    .arg(&s.positions)
                    .arg(&s.slots)
                    .arg(&mut s.q)
                    .arg(&self.k_cache[l])
                    .arg(&self.v_cache[l])
                    .arg(&hn)
                    .arg(&kvn)
                    .arg(&dn)
                    .launch(cfg((t32 as u32, 1), 128, 0))
            },
            "qkv_rope_cache",
        )?;
        let scale = 1.0 / (d as f32).sqrt();
        let (mb, bs32) = (step.max_blocks as i32, self.block_size as i32);
        launched(
            // SAFETY: as stated before `embed`.
            unsafe {
                st.launch_builder(&k.paged_attention)
                    .arg(&s.q)
                    .arg(&self.k_cache[l])
                    .arg(&self.v_cache[l])
                    .arg(&s.block_tables)
                    .arg(&mb)
                    .arg(&s.token_seq)
                    .arg(&s.positions)
                    .arg(&mut s.attn)
                    .arg(&hn)
                    .arg(&kvn)
                    .arg(&dn)
                    .arg(&bs32)
                    .arg(&scale)
                    .launch(cfg((t32 as u32, heads as u32), 128, 0))
            },
            "paged_attention",
        )?;
        gemm(
            &self.blas,
            st,
            &s.attn,
            &layer.wo,
            &mut s.proj,
            tokens,
            h,
            q_w,
        )
    }

    /// Layer `l`'s MLP: the attention output joins the residual and is normed, then the
    /// fused gate/up product, SiLU(gate) × up, and the down projection into `proj`.
    fn mlp_layer(&mut self, l: usize, step: &Step) -> Result<(), EngineError> {
        let c = &self.config;
        let (h, inter, eps) = (c.hidden_size, c.intermediate_size, c.rms_norm_eps as f32);
        let tokens = step.tokens;
        let (st, s, k) = (&self.stream, &mut self.s, &self.k);
        let layer = &self.layers[l];
        add_norm(st, &k.add_rms_norm, s, &layer.mlp_norm, tokens, h, eps)?;
        gemm(
            &self.blas,
            st,
            &s.xn,
            &layer.wgu,
            &mut s.gu,
            tokens,
            2 * inter,
            h,
        )?;
        let (t32, i32n) = (tokens as i32, inter as i32);
        launched(
            // SAFETY: as stated before `embed`.
            unsafe {
                st.launch_builder(&k.silu_mul)
                    .arg(&s.gu)
                    .arg(&mut s.act)
                    .arg(&i32n)
                    .arg(&t32)
                    .launch(cfg((t32 as u32, 1), 256, 0))
            },
            "silu_mul",
        )?;
        gemm(
            &self.blas,
            st,
            &s.act,
            &layer.wdown,
            &mut s.proj,
            tokens,
            h,
            inter,
        )
    }

    /// The last MLP output joins the residual and every row is normed; the rows that want
    /// logits are gathered, multiplied by the head, and their logits read back.
    fn head(&mut self, seqs: &[SeqStep<'_>], step: &Step) -> Result<(), EngineError> {
        let c = &self.config;
        let (h, vocab, eps) = (c.hidden_size, c.vocab_size, c.rms_norm_eps as f32);
        let (st, s, k) = (&self.stream, &mut self.s, &self.k);
        add_norm(st, &k.add_rms_norm, s, &self.norm, step.tokens, h, eps)?;
        let mut row = 0;
        let mut o = 0;
        for seq in seqs {
            row += seq.tokens.len();
            if seq.want_logits {
                let src = s.xn.slice((row - 1) * h..row * h);
                let mut dst = s.last.slice_mut(o * h..(o + 1) * h);
                st.memcpy_dtod(&src, &mut dst).map_err(|e| err("copy", e))?;
                o += 1;
            }
        }
        let outputs = step.outputs;
        if outputs == 0 {
            self.h_logits.clear();
            return Ok(());
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        gemm(
            &self.blas,
            st,
            &s.last,
            head,
            &mut s.logits,
            outputs,
            vocab,
            h,
        )?;
        self.h_logits.resize(outputs * vocab, 0.0);
        st.memcpy_dtoh(&s.logits.slice(0..outputs * vocab), &mut self.h_logits[..])
            .map_err(|e| err("download", e))
    }
}

/// The shape of one step, as [`CudaBackend::upload`] laid it out.
struct Step {
    /// Rows: the tokens of every sequence of the step.
    tokens: usize,
    /// The longest block table; each sequence's is padded to it.
    max_blocks: usize,
    /// Sequences that want logits.
    outputs: usize,
}

/// A launch's result as the engine's error, naming the kernel.
fn launched<T>(r: Result<T, cudarc::driver::DriverError>, what: &str) -> Result<(), EngineError> {
    r.map(|_| ()).map_err(|e| err(what, e))
}

impl Backend for CudaBackend {
    fn forward(&mut self, seqs: &[SeqStep<'_>]) -> Result<&[f32], EngineError> {
        self.run(seqs)?;
        Ok(&self.h_logits)
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
    fn device(&self) -> DeviceInfo {
        self.info.clone()
    }
    fn weight_bytes_per_token(&self) -> u64 {
        self.weight_bytes
    }
}
