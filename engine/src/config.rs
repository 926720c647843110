//! `config.json` of a Hugging Face model directory, parsed into a configuration that cannot be
//! inconsistent: head counts divide the widths, the architecture is one we run.

use serde::Deserialize;

use crate::EngineError;

/// The model families the engine runs. SmolLM2 and TinyLlama are Llama-architecture models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    /// Llama with biases on the q, k and v projections.
    Qwen2,
    Mistral,
}

impl Architecture {
    fn from_hf(name: &str) -> Option<Architecture> {
        match name {
            "LlamaForCausalLM" => Some(Architecture::Llama),
            "Qwen2ForCausalLM" => Some(Architecture::Qwen2),
            "MistralForCausalLM" => Some(Architecture::Mistral),
            _ => None,
        }
    }

    pub fn hf_name(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
        }
    }

    pub fn qkv_bias(self) -> bool {
        self == Architecture::Qwen2
    }
}

/// Llama 3's frequency-dependent RoPE scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3Scaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct RawScaling {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
}

/// `eos_token_id` is a number or a list in Hugging Face configs.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<u32> {
        match self {
            OneOrMany::One(id) => vec![id],
            OneOrMany::Many(ids) => ids,
        }
    }
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Vec<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    rope_theta: f64,
    rope_scaling: Option<RawScaling>,
    #[serde(default = "default_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_positions() -> usize {
    2048
}

fn bad(message: String) -> EngineError {
    EngineError::Config(message)
}

impl ModelConfig {
    pub fn from_json(text: &str) -> Result<ModelConfig, EngineError> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| bad(format!("config.json: {e}")))?;
        let name = raw
            .architectures
            .first()
            .ok_or_else(|| bad("config.json names no architecture".into()))?;
        let architecture = Architecture::from_hf(name).ok_or_else(|| {
            EngineError::UnsupportedArchitecture(format!(
                "{name} (supported: LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM)"
            ))
        })?;
        let heads = raw.num_attention_heads;
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(bad(format!(
                "num_attention_heads ({heads}) must be a positive multiple of num_key_value_heads ({kv_heads})"
            )));
        }
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if raw.hidden_size.is_multiple_of(heads) => raw.hidden_size / heads,
            None => {
                return Err(bad(format!(
                    "hidden_size ({}) is not a multiple of num_attention_heads ({heads})",
                    raw.hidden_size
                )));
            }
        };
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(bad(format!("head_dim ({head_dim}) must be even for RoPE")));
        }
        for (what, n) in [
            ("vocab_size", raw.vocab_size),
            ("hidden_size", raw.hidden_size),
            ("intermediate_size", raw.intermediate_size),
            ("num_hidden_layers", raw.num_hidden_layers),
        ] {
            if n == 0 {
                return Err(bad(format!("{what} must be positive")));
            }
        }
        let rope_scaling = match raw.rope_scaling {
            None => None,
            Some(s) => {
                let kind = s.rope_type.or(s.kind).unwrap_or_default();
                if kind != "llama3" {
                    return Err(bad(format!(
                        "rope_scaling type {kind:?} is not supported (only llama3)"
                    )));
                }
                let need = |v: Option<f64>, name: &str| {
                    v.ok_or_else(|| bad(format!("rope_scaling.{name} is missing")))
                };
                Some(Llama3Scaling {
                    factor: need(s.factor, "factor")?,
                    low_freq_factor: need(s.low_freq_factor, "low_freq_factor")?,
                    high_freq_factor: need(s.high_freq_factor, "high_freq_factor")?,
                    original_max_position_embeddings: s
                        .original_max_position_embeddings
                        .ok_or_else(|| {
                            bad("rope_scaling.original_max_position_embeddings is missing".into())
                        })?,
                })
            }
        };
        Ok(ModelConfig {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta: raw.rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings,
            bos_token_id: raw.bos_token_id,
            eos_token_ids: raw
                .eos_token_id
                .map(OneOrMany::into_vec)
                .unwrap_or_default(),
        })
    }

    /// The tensors a checkpoint of this configuration holds, with their shapes.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let mut out = vec![
            ("model.embed_tokens.weight".to_string(), vec![v, h]),
            ("model.norm.weight".to_string(), vec![h]),
        ];
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![v, h]));
        }
        for l in 0..self.num_layers {
            let p = format!("model.layers.{l}");
            out.extend([
                (format!("{p}.input_layernorm.weight"), vec![h]),
                (format!("{p}.post_attention_layernorm.weight"), vec![h]),
                (format!("{p}.self_attn.q_proj.weight"), vec![q, h]),
                (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
                (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
                (format!("{p}.self_attn.o_proj.weight"), vec![h, q]),
                (format!("{p}.mlp.gate_proj.weight"), vec![i, h]),
                (format!("{p}.mlp.up_proj.weight"), vec![i, h]),
                (format!("{p}.mlp.down_proj.weight"), vec![h, i]),
            ]);
            if self.architecture.qkv_bias() {
                out.extend([
                    (format!("{p}.self_attn.q_proj.bias"), vec![q]),
                    (format!("{p}.self_attn.k_proj.bias"), vec![kv]),
                    (format!("{p}.self_attn.v_proj.bias"), vec![kv]),
                ]);
            }
        }
        out
    }
}
