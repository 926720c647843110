//! GGUF files (llama.cpp's format, version 3): one memory-mapped file with the model's
//! settings, tokenizer and chat template as metadata, and its tensors, often quantized.
//!
//! [`GgufFile::open`] reads the header, the metadata and the tensor table and checks every
//! tensor's type, shape and bounds, naming what is wrong (not a GGUF file, an unsupported
//! version or tensor type, a truncated file). [`open_checkpoint`] turns a file of a supported
//! architecture into the engine's [`Checkpoint`]: the configuration from `{arch}.*` keys, the
//! tensors under their Hugging Face names, the tokenizer rebuilt from `tokenizer.ggml.*`.

mod convert;
mod quant;
mod read;
mod vocab;
pub mod write;

use std::collections::BTreeMap;
use std::path::Path;

use memmap2::Mmap;

pub use convert::{convert, write_fixture};
pub use quant::{Block32, Quant};
pub use read::Value;
pub use write::quantize;

use crate::checkpoint::{self, Checkpoint, DType};
use crate::{Architecture, EngineError, ModelConfig};

/// One tensor's entry in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml's order: the first dimension is a row's length (the fastest-moving).
    pub dims: Vec<u64>,
    pub kind: Kind,
    /// Byte range inside the file.
    pub range: std::ops::Range<usize>,
}

/// How a tensor's values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Float(DType),
    Quant(Quant),
}

impl Kind {
    fn from_ggml(id: u32) -> Option<Kind> {
        Some(match id {
            0 => Kind::Float(DType::F32),
            1 => Kind::Float(DType::F16),
            30 => Kind::Float(DType::BF16),
            other => Kind::Quant(Quant::from_ggml(other)?),
        })
    }

    /// Bytes that `n` values take (a whole number of blocks).
    fn bytes(self, n: u64) -> Option<u64> {
        match self {
            Kind::Float(d) => n.checked_mul(d.size() as u64),
            Kind::Quant(q) => {
                let (values, bytes) = q.block();
                n.is_multiple_of(values as u64)
                    .then(|| n / values as u64 * bytes as u64)
            }
        }
    }
}

/// An open GGUF file.
pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub(crate) mmap: Mmap,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

fn error(path: &Path, message: impl Into<String>) -> EngineError {
    EngineError::Gguf {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile, EngineError> {
        let mmap = checkpoint::map(path)?;
        let read::Header {
            version,
            metadata,
            tensors: table,
            data_start,
        } = read::header(&mmap).map_err(|m| error(path, m))?;
        let mut tensors = Vec::with_capacity(table.len());
        for t in table {
            let kind = Kind::from_ggml(t.ggml_type).ok_or_else(|| {
                error(
                    path,
                    format!(
                        "tensor {} has ggml type {}, which is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K are)",
                        t.name,
                        quant::ggml_type_name(t.ggml_type)
                    ),
                )
            })?;
            let count = t
                .dims
                .iter()
                .try_fold(1u64, |n, d| n.checked_mul(*d))
                .ok_or_else(|| error(path, format!("tensor {}: its size overflows", t.name)))?;
            // Blocks never straddle rows: a row's length is a whole number of them.
            let row = t.dims.first().copied().unwrap_or(1);
            let bytes = kind
                .bytes(count)
                .filter(|_| kind.bytes(row).is_some())
                .ok_or_else(|| {
                    error(
                        path,
                        format!(
                            "tensor {}: rows of {row} values are not whole blocks of its type",
                            t.name
                        ),
                    )
                })?;
            let start = data_start
                .checked_add(t.offset)
                .filter(|s| s.checked_add(bytes).is_some_and(|e| e <= mmap.len() as u64))
                .ok_or_else(|| {
                    error(
                        path,
                        format!("the file is truncated: tensor {} ends past its end", t.name),
                    )
                })?;
            tensors.push(TensorInfo {
                name: t.name,
                dims: t.dims,
                kind,
                range: start as usize..(start + bytes) as usize,
            });
        }
        Ok(GgufFile {
            version,
            metadata,
            tensors,
            mmap,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn string(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    fn number(&self, key: &str) -> Option<f64> {
        self.get(key)?.as_f64()
    }

    pub fn architecture(&self) -> Option<&str> {
        self.string("general.architecture")
    }
}

/// The configuration a GGUF file's metadata describes.
fn config(file: &GgufFile, path: &Path) -> Result<ModelConfig, EngineError> {
    let arch_name = file
        .architecture()
        .ok_or_else(|| error(path, "general.architecture is missing"))?
        .to_string();
    let architecture = match arch_name.as_str() {
        "llama" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        "mistral" => Architecture::Mistral,
        other => {
            return Err(EngineError::UnsupportedArchitecture(format!(
                "{other} in {} (supported: llama, qwen2, mistral)",
                path.display()
            )));
        }
    };
    let need = |key: &str| {
        file.number(&format!("{arch_name}.{key}"))
            .ok_or_else(|| error(path, format!("{arch_name}.{key} is missing")))
    };
    let heads = need("attention.head_count")? as usize;
    let kv_heads = file
        .number(&format!("{arch_name}.attention.head_count_kv"))
        .map_or(heads, |n| n as usize);
    let hidden = need("embedding_length")? as usize;
    let embed = file
        .tensors
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .ok_or_else(|| EngineError::MissingTensor("token_embd.weight".into()))?;
    let vocab = embed.dims.get(1).copied().unwrap_or_default() as usize;
    let head_dim = match file.number(&format!("{arch_name}.attention.key_length")) {
        Some(d) => d as usize,
        None if heads > 0 && hidden.is_multiple_of(heads) => hidden / heads,
        None => return Err(error(path, "the head size cannot be derived")),
    };
    // End of sequence, and llama.cpp's end of turn where it is another token.
    let mut eos: Vec<u32> = Vec::new();
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        if let Some(id) = file.number(key).map(|n| n as u32)
            && !eos.contains(&id)
        {
            eos.push(id);
        }
    }
    if file.tensors.iter().any(|t| t.name == "rope_freqs.weight") {
        return Err(error(
            path,
            "per-dimension rope frequencies (rope_freqs.weight, Llama 3.1 and later) are not supported yet",
        ));
    }
    let json = serde_json::json!({
        "architectures": [architecture.hf_name()],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": need("feed_forward_length")? as usize,
        "num_hidden_layers": need("block_count")? as usize,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": need("attention.layer_norm_rms_epsilon")?,
        "rope_theta": file.number(&format!("{arch_name}.rope.freq_base")).unwrap_or(10_000.0),
        "max_position_embeddings": file
            .number(&format!("{arch_name}.context_length"))
            .map_or(2048, |n| n as usize),
        "tie_word_embeddings": !file.tensors.iter().any(|t| t.name == "output.weight"),
        "bos_token_id": file.number("tokenizer.ggml.bos_token_id").map(|n| n as u32),
    });
    let mut config = ModelConfig::from_json(&json.to_string())?;
    config.eos_token_ids = eos;
    Ok(config)
}

/// A layer's tensors: (GGUF name, Hugging Face name) after `blk.N.` / `model.layers.N.`.
const PARTS: [(&str, &str); 12] = [
    ("attn_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

/// The Hugging Face name of a GGUF tensor, and whether its rows were permuted for llama.cpp's
/// rotary layout (the Q and K projections of `llama` models, which the converter interleaves
/// per head; the engine uses the Hugging Face layout).
fn hf_name(gguf: &str, arch: Architecture) -> Option<(String, bool)> {
    let plain = |s: &str| Some((s.to_string(), false));
    match gguf {
        "token_embd.weight" => return plain("model.embed_tokens.weight"),
        "output_norm.weight" => return plain("model.norm.weight"),
        "output.weight" => return plain("lm_head.weight"),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (_, hf) = PARTS.iter().find(|(g, _)| *g == part)?;
    let permuted = arch != Architecture::Qwen2 && matches!(part, "attn_q.weight" | "attn_k.weight");
    Some((format!("model.layers.{layer}.{hf}"), permuted))
}

/// The tokenizer a GGUF file describes, without reading its tensors.
pub fn tokenizer_of(path: &Path) -> Result<tokenizers::Tokenizer, EngineError> {
    let file = GgufFile::open(path)?;
    vocab::tokenizer(&file).map_err(|m| error(path, m))
}

/// A GGUF model as the engine's checkpoint: its tensors stay in the mapped file, quantized or
/// not, and are turned into f32 (and their rows put back in Hugging Face order) only when a
/// backend loads them.
pub fn open_checkpoint(path: &Path) -> Result<Checkpoint, EngineError> {
    let file = GgufFile::open(path)?;
    let config = config(&file, path)?;
    let arch = config.architecture;
    let mut tensors = std::collections::HashMap::new();
    for t in &file.tensors {
        let Some((name, permuted)) = hf_name(&t.name, arch) else {
            continue;
        };
        let heads = if name.ends_with("q_proj.weight") {
            config.num_heads
        } else {
            config.num_kv_heads
        };
        let shape: Vec<usize> = t.dims.iter().rev().map(|d| *d as usize).collect();
        let (dtype, quant) = match t.kind {
            Kind::Float(d) => (d, None),
            Kind::Quant(q) => (DType::F32, Some(q)),
        };
        tensors.insert(
            name,
            checkpoint::Entry {
                file: 0,
                dtype,
                quant,
                shape,
                range: t.range.clone(),
                rope_heads: permuted.then_some(heads),
            },
        );
    }
    let vocab = vocab::tokenizer(&file).map_err(|m| error(path, m))?;
    let tokenizer_json = vocab
        .to_string(false)
        .map_err(|e| error(path, format!("the tokenizer: {e}")))?;
    let token = |key: &str| {
        let id = file.number(key)? as usize;
        match file.get("tokenizer.ggml.tokens")? {
            Value::Array(tokens) => tokens.get(id)?.as_str().map(str::to_string),
            _ => None,
        }
    };
    let parts = checkpoint::Parts {
        dir: path.to_path_buf(),
        config,
        tokenizer_json,
        chat_template: file.string("tokenizer.chat_template").map(str::to_string),
        bos_token: token("tokenizer.ggml.bos_token_id"),
        eos_token: token("tokenizer.ggml.eos_token_id"),
    };
    Checkpoint::from_parts(parts, vec![file.mmap], tensors)
}
