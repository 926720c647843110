//! Test checkpoints: a Llama-family model directory with deterministic random weights (from a
//! seed), a small real byte-level BPE tokenizer and a chat template, written like a Hugging
//! Face export. Tests and the default configuration serve one of these; nothing downloads a
//! model. Real models' shapes (`smollm2-135m`, `tinyllama-1.1b`) give benchmark-sized weights.

use std::collections::HashMap;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::{Architecture, DType, EngineError, ModelConfig, io_error};

mod tokenizer;

pub use tokenizer::{SPECIAL_TOKENS, train_tokenizer};

/// The sizes of a fixture model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A few hundred thousand parameters: fast enough for every test.
    Tiny,
    /// As small, but every matrix row a whole number of 256-value superblocks, so that a
    /// K-quant file of it is all K-quant blocks.
    Tiny256,
    /// SmolLM2-135M's shape (tied embeddings).
    SmolLm2_135M,
    /// TinyLlama-1.1B's shape.
    TinyLlama1_1B,
}

impl Shape {
    pub fn parse(text: &str) -> Option<Shape> {
        match text {
            "tiny" => Some(Shape::Tiny),
            "tiny-256" => Some(Shape::Tiny256),
            "smollm2-135m" => Some(Shape::SmolLm2_135M),
            "tinyllama-1.1b" => Some(Shape::TinyLlama1_1B),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct FixtureSpec {
    pub shape: Shape,
    pub architecture: Architecture,
    /// `None`: the shape's own choice (tied for SmolLM2, untied otherwise).
    pub tie_embeddings: Option<bool>,
    pub llama3_rope: bool,
    pub dtype: DType,
    pub seed: u64,
}

impl Default for FixtureSpec {
    fn default() -> Self {
        FixtureSpec {
            shape: Shape::Tiny,
            architecture: Architecture::Llama,
            tie_embeddings: None,
            llama3_rope: false,
            dtype: DType::F32,
            seed: 0,
        }
    }
}

/// (vocab, hidden, intermediate, layers, heads, kv heads, tied, max positions)
fn dims(shape: Shape) -> (usize, usize, usize, usize, usize, usize, bool, usize) {
    match shape {
        Shape::Tiny => (512, 64, 160, 2, 4, 2, false, 512),
        Shape::Tiny256 => (512, 256, 512, 2, 4, 2, false, 512),
        Shape::SmolLm2_135M => (49_152, 576, 1_536, 30, 9, 3, true, 8_192),
        Shape::TinyLlama1_1B => (32_000, 2_048, 5_632, 22, 32, 4, false, 2_048),
    }
}

/// The `config.json` a spec describes.
pub fn config_json(spec: &FixtureSpec, bos: u32, eos: &[u32]) -> serde_json::Value {
    let (vocab, hidden, inter, layers, heads, kv, tied, positions) = dims(spec.shape);
    let mut config = json!({
        "architectures": [spec.architecture.hf_name()],
        "model_type": match spec.architecture {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Mistral => "mistral",
        },
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "rms_norm_eps": 1e-5,
        "rope_theta": if spec.llama3_rope { 500_000.0 } else { 10_000.0 },
        "max_position_embeddings": positions,
        "tie_word_embeddings": spec.tie_embeddings.unwrap_or(tied),
        "hidden_act": "silu",
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": match spec.dtype {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        },
    });
    if spec.llama3_rope {
        config["rope_scaling"] = json!({
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": positions / 4,
        });
    }
    config
}

/// A chat template in the ChatML style, rendered as Hugging Face renders templates.
pub const CHAT_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' }}\
{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

fn encode(values: &[f32], dtype: DType) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * dtype.size());
    for &v in values {
        match dtype {
            DType::F32 => out.extend_from_slice(&v.to_le_bytes()),
            DType::F16 => out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
        }
    }
    out
}

/// Deterministic weights for every tensor the configuration needs, in a fixed order.
fn weights(config: &ModelConfig, seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    config
        .expected_tensors()
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = if name.ends_with("norm.weight") {
                (0..n)
                    .map(|_| 1.0 + rng.random_range(-0.1f32..0.1))
                    .collect()
            } else if name.ends_with(".bias") {
                (0..n).map(|_| rng.random_range(-0.05f32..0.05)).collect()
            } else {
                // Scaled by fan-in so activations stay of order one through the layers.
                let scale = if name.contains("embed_tokens") {
                    1.0
                } else {
                    1.0 / (shape[1] as f32).sqrt()
                };
                (0..n).map(|_| rng.random_range(-scale..scale)).collect()
            };
            (name, shape, values)
        })
        .collect()
}

fn write(path: &Path, text: &str) -> Result<(), EngineError> {
    std::fs::write(path, text).map_err(|e| io_error(path, e))
}

/// Writes a complete model directory to `dir` (created if need be).
pub fn write_fixture(dir: &Path, spec: &FixtureSpec) -> Result<(), EngineError> {
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let tok = train_tokenizer()?;
    let bos = tok.id("<|begin_of_text|>")?;
    let eos = [tok.id("<|im_end|>")?, tok.id("<|end_of_text|>")?];
    let config = config_json(spec, bos, &eos);
    let text =
        serde_json::to_string_pretty(&config).map_err(|e| EngineError::Config(e.to_string()))?;
    let parsed = ModelConfig::from_json(&text)?;
    write(&dir.join("config.json"), &text)?;
    write(&dir.join("tokenizer.json"), &tok.json)?;
    let tokenizer_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|im_end|>",
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": parsed.max_position_embeddings,
    });
    write(
        &dir.join("tokenizer_config.json"),
        &tokenizer_config.to_string(),
    )?;
    let generation = json!({ "bos_token_id": bos, "eos_token_id": eos });
    write(&dir.join("generation_config.json"), &generation.to_string())?;

    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = weights(&parsed, spec.seed)
        .into_iter()
        .map(|(name, shape, values)| (name, shape, encode(&values, spec.dtype)))
        .collect();
    let dtype = match spec.dtype {
        DType::F32 => safetensors::Dtype::F32,
        DType::F16 => safetensors::Dtype::F16,
        DType::BF16 => safetensors::Dtype::BF16,
    };
    let path = dir.join("model.safetensors");
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            safetensors::tensor::TensorView::new(dtype, shape.clone(), data)
                .map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EngineError::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), &path).map_err(|e| {
        EngineError::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        }
    })?;
    Ok(())
}
