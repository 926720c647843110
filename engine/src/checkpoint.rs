//! A model on disk: a Hugging Face directory (`config.json`, `model.safetensors` or shards
//! listed in `model.safetensors.index.json`, memory-mapped and never copied whole,
//! `tokenizer.json`, `tokenizer_config.json` with its chat template and
//! `generation_config.json` with end-of-sequence ids), or one GGUF file (see `crate::gguf`).
//! Every tensor the architecture needs is checked for presence, shape and type at load, so a
//! bad checkpoint fails with a clear error before anything runs.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::Mmap;
use safetensors::SafeTensors;
use serde::Deserialize;

use crate::gguf::Quant;
use crate::{EngineError, ModelConfig, io_error};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

/// A tensor's raw little-endian bytes inside a mapped file.
#[derive(Debug, Clone, Copy)]
pub struct Tensor<'a> {
    pub dtype: DType,
    /// Blocks of a ggml quantized type (GGUF files); `dtype` is then the type they decode to.
    pub quant: Option<Quant>,
    pub shape: &'a [usize],
    pub data: &'a [u8],
    /// Rows stored in llama.cpp's rotary order, `heads` heads of them (the Q and K projections
    /// of a GGUF `llama` model): [`Tensor::to_f32`] puts them back in Hugging Face order.
    pub rope_heads: Option<usize>,
}

impl Tensor<'_> {
    /// The values as f32 (converted from f16 / bf16, or dequantized), rows in Hugging Face
    /// order.
    pub fn to_f32(&self) -> Vec<f32> {
        let values = match self.quant {
            Some(q) => q.dequantize(self.data),
            None => self.floats(),
        };
        if self.rope_heads.is_none() {
            return values;
        }
        let cols = self.shape.iter().skip(1).product::<usize>().max(1);
        let mut out = vec![0.0; values.len()];
        for (r, row) in out.chunks_exact_mut(cols).enumerate() {
            let from = self.stored_row(r) * cols;
            row.copy_from_slice(&values[from..from + cols]);
        }
        out
    }

    /// Where Hugging Face's row `r` is stored. The Q and K projections of a GGUF `llama` model
    /// are in llama.cpp's rotary order: within each head of `d` rows its converter interleaved
    /// the two halves, so Hugging Face's row `j·d/2 + i` is stored at `2i + j`.
    pub fn stored_row(&self, r: usize) -> usize {
        let rows = self.shape.first().copied().unwrap_or(1);
        match self.rope_heads {
            Some(heads) if heads > 0 && rows % heads == 0 && (rows / heads) % 2 == 0 => {
                let d = rows / heads;
                let (head, within) = (r / d, r % d);
                let (j, i) = (within / (d / 2), within % (d / 2));
                head * d + 2 * i + j
            }
            _ => r,
        }
    }

    fn floats(&self) -> Vec<f32> {
        match self.dtype {
            DType::F32 => self
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            DType::F16 => self
                .data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            DType::BF16 => self
                .data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        }
    }
}

/// What a tensor is, and where its bytes are.
pub(crate) struct Entry {
    pub file: usize,
    pub dtype: DType,
    pub quant: Option<Quant>,
    pub shape: Vec<usize>,
    pub range: std::ops::Range<usize>,
    pub rope_heads: Option<usize>,
}

/// Everything of a checkpoint but its tensors.
pub(crate) struct Parts {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub tokenizer_json: String,
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: ModelConfig,
    /// `tokenizer.json`, as text (the tokenizer crate parses it).
    pub tokenizer_json: String,
    /// The chat template from `tokenizer_config.json`, if the model has one.
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    files: Vec<Mmap>,
    tensors: HashMap<String, Entry>,
    tracking: Option<Tracking>,
}

/// How far a model's load has got, in thousandths of its tensors' bytes taken from the
/// checkpoint; shared with whoever shows it (a worker's log, the Workers page).
#[derive(Debug, Default)]
pub struct LoadProgress(AtomicU32);

impl LoadProgress {
    pub fn permille(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn set(&self, permille: u32) {
        self.0.store(permille.min(1000), Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Tracking {
    progress: Arc<LoadProgress>,
    read: AtomicU64,
    total: u64,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

fn read(path: &Path) -> Result<String, EngineError> {
    std::fs::read_to_string(path).map_err(|e| io_error(path, e))
}

pub(crate) fn map(path: &Path) -> Result<Mmap, EngineError> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    // SAFETY: the map is read-only and private to this process. A model directory is not
    // modified while it is being served; if another process truncated the file anyway,
    // reads could fault, which is the documented limit of memory-mapped weights.
    #[allow(unsafe_code)]
    let mmap = unsafe { Mmap::map(&file) };
    mmap.map_err(|e| io_error(path, e))
}

#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

/// A token in `tokenizer_config.json`: a string, or an object with `content`.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenText {
    Text(String),
    Added { content: String },
}

impl TokenText {
    fn text(self) -> String {
        match self {
            TokenText::Text(t) | TokenText::Added { content: t } => t,
        }
    }
}

#[derive(Deserialize)]
struct TokenizerConfig {
    chat_template: Option<ChatTemplate>,
    bos_token: Option<TokenText>,
    eos_token: Option<TokenText>,
}

/// A single template, or named templates (the `default` one is used).
#[derive(Deserialize)]
#[serde(untagged)]
enum ChatTemplate {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

#[derive(Deserialize)]
struct GenerationConfig {
    eos_token_id: Option<serde_json::Value>,
}

fn dtype_of(name: &str, d: safetensors::Dtype) -> Result<DType, EngineError> {
    match d {
        safetensors::Dtype::F32 => Ok(DType::F32),
        safetensors::Dtype::F16 => Ok(DType::F16),
        safetensors::Dtype::BF16 => Ok(DType::BF16),
        other => Err(EngineError::UnsupportedDtype {
            name: name.to_string(),
            dtype: format!("{other:?}"),
        }),
    }
}

impl Checkpoint {
    /// Opens and checks a model: a Hugging Face directory, or a `.gguf` file.
    pub fn open(dir: impl AsRef<Path>) -> Result<Checkpoint, EngineError> {
        let dir = dir.as_ref().to_path_buf();
        if dir.is_file() && dir.extension().is_some_and(|e| e == "gguf") {
            return crate::gguf::open_checkpoint(&dir);
        }
        let mut config = ModelConfig::from_json(&read(&dir.join("config.json"))?)?;
        let tokenizer_json = read(&dir.join("tokenizer.json"))?;

        let (mut chat_template, mut bos_token, mut eos_token) = (None, None, None);
        let tc_path = dir.join("tokenizer_config.json");
        if tc_path.exists() {
            let tc: TokenizerConfig = serde_json::from_str(&read(&tc_path)?)
                .map_err(|e| EngineError::Config(format!("tokenizer_config.json: {e}")))?;
            chat_template = tc.chat_template.and_then(|t| match t {
                ChatTemplate::One(t) => Some(t),
                ChatTemplate::Named(list) => list
                    .into_iter()
                    .find(|n| n.name == "default")
                    .map(|n| n.template),
            });
            bos_token = tc.bos_token.map(TokenText::text);
            eos_token = tc.eos_token.map(TokenText::text);
        }
        let gc_path = dir.join("generation_config.json");
        if gc_path.exists() {
            let gc: GenerationConfig = serde_json::from_str(&read(&gc_path)?)
                .map_err(|e| EngineError::Config(format!("generation_config.json: {e}")))?;
            let ids: Vec<u32> = match gc.eos_token_id {
                Some(serde_json::Value::Number(n)) => {
                    n.as_u64().map(|n| n as u32).into_iter().collect()
                }
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| v.as_u64())
                    .map(|n| n as u32)
                    .collect(),
                _ => Vec::new(),
            };
            for id in ids {
                if !config.eos_token_ids.contains(&id) {
                    config.eos_token_ids.push(id);
                }
            }
        }

        // One file, or shards named by the index.
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let names: Vec<String> = if single.exists() {
            vec!["model.safetensors".to_string()]
        } else if index_path.exists() {
            let index: Index = serde_json::from_str(&read(&index_path)?)
                .map_err(|e| EngineError::Config(format!("model.safetensors.index.json: {e}")))?;
            let mut shards: Vec<String> = index.weight_map.into_values().collect();
            shards.sort();
            shards.dedup();
            shards
        } else {
            return Err(EngineError::MissingFile(single));
        };
        let mut files = Vec::new();
        let mut tensors = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            let path = dir.join(name);
            let mmap = map(&path)?;
            let bad = |e: safetensors::SafeTensorError| EngineError::Safetensors {
                path: path.clone(),
                message: e.to_string(),
            };
            let st = SafeTensors::deserialize(&mmap).map_err(bad)?;
            let base = mmap.as_ptr() as usize;
            for (tname, view) in st.tensors() {
                let data = view.data();
                let start = data.as_ptr() as usize - base;
                tensors.insert(
                    tname.clone(),
                    Entry {
                        file: i,
                        dtype: dtype_of(&tname, view.dtype())?,
                        quant: None,
                        shape: view.shape().to_vec(),
                        range: start..start + data.len(),
                        rope_heads: None,
                    },
                );
            }
            files.push(mmap);
        }
        let parts = Parts {
            dir,
            config,
            tokenizer_json,
            chat_template,
            bos_token,
            eos_token,
        };
        Checkpoint::from_parts(parts, files, tensors)
    }

    /// A checkpoint of `files` holding `tensors`, each checked against the configuration.
    pub(crate) fn from_parts(
        parts: Parts,
        files: Vec<Mmap>,
        tensors: HashMap<String, Entry>,
    ) -> Result<Checkpoint, EngineError> {
        let Parts {
            dir,
            config,
            tokenizer_json,
            chat_template,
            bos_token,
            eos_token,
        } = parts;
        for (name, shape) in config.expected_tensors() {
            let entry = tensors
                .get(&name)
                .ok_or_else(|| EngineError::MissingTensor(name.clone()))?;
            if entry.shape != shape {
                return Err(EngineError::WrongShape {
                    name,
                    expected: shape,
                    found: entry.shape.clone(),
                });
            }
        }
        Ok(Checkpoint {
            dir,
            config,
            tokenizer_json,
            chat_template,
            bos_token,
            eos_token,
            files,
            tensors,
            tracking: None,
        })
    }

    /// Counts the tensors taken from here on into `progress` (up to 99.9 %: the backend's
    /// own set-up comes after the last tensor).
    pub fn track(&mut self, progress: Arc<LoadProgress>) {
        progress.set(0);
        let total = self.tensors.values().map(|e| e.range.len() as u64).sum();
        self.tracking = Some(Tracking {
            progress,
            read: AtomicU64::new(0),
            total,
        });
    }

    pub fn tensor(&self, name: &str) -> Result<Tensor<'_>, EngineError> {
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| EngineError::MissingTensor(name.to_string()))?;
        if let Some(t) = &self.tracking {
            let len = e.range.len() as u64;
            let read = t.read.fetch_add(len, Ordering::Relaxed) + len;
            t.progress
                .set((read.saturating_mul(1000) / t.total.max(1)).min(999) as u32);
        }
        Ok(Tensor {
            dtype: e.dtype,
            quant: e.quant,
            shape: &e.shape,
            data: &self.files[e.file][e.range.clone()],
            rope_heads: e.rope_heads,
        })
    }

    /// The dtype most of the weights are stored in.
    pub fn dtype(&self) -> Result<DType, EngineError> {
        Ok(self.tensor("model.embed_tokens.weight")?.dtype)
    }
}
