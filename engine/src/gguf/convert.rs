//! A Hugging Face checkpoint written as a GGUF file, laid out as llama.cpp's converter lays
//! it out: its tensor names, the Q and K rows of `llama` models permuted into its rotary
//! order, `{arch}.*` settings, and the byte-level BPE tokenizer as `tokenizer.ggml.*`. The
//! fixture model goes through it so that the GGUF loader, the quantized types and the
//! tokenizer rebuilt from metadata are tested end to end without downloads.

use std::path::Path;

use serde_json::Value as Json;

use super::write::{Out, ggml_id, quantize};
use super::{PARTS, Quant, Value, error};
use crate::checkpoint::Checkpoint;
use crate::{Architecture, EngineError, fixture};

/// The GGUF name of a Hugging Face tensor, and whether its rows are permuted on the way.
fn gguf_name(hf: &str, arch: Architecture) -> Option<(String, bool)> {
    match hf {
        "model.embed_tokens.weight" => return Some(("token_embd.weight".into(), false)),
        "model.norm.weight" => return Some(("output_norm.weight".into(), false)),
        "lm_head.weight" => return Some(("output.weight".into(), false)),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let (gguf, _) = PARTS.iter().find(|(_, h)| *h == part)?;
    let permuted = arch != Architecture::Qwen2
        && matches!(part, "self_attn.q_proj.weight" | "self_attn.k_proj.weight");
    Some((format!("blk.{layer}.{gguf}"), permuted))
}

/// Hugging Face rows of a Q or K projection in llama.cpp's rotary order: the inverse of the
/// loader's un-permutation (row `j·d/2 + i` of a head goes to row `2i + j`).
fn permute(values: &[f32], heads: usize, rows: usize) -> Vec<f32> {
    let cols = values.len() / rows;
    let d = rows / heads;
    let mut out = vec![0.0; values.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                let from = (h * d + j * d / 2 + i) * cols;
                let to = (h * d + 2 * i + j) * cols;
                out[to..to + cols].copy_from_slice(&values[from..from + cols]);
            }
        }
    }
    out
}

/// llama.cpp's pre-tokenizer type for a `tokenizer.json` pre-tokenizer, for the kinds the
/// loader rebuilds.
fn pre_type(pre: &Json) -> Option<&'static str> {
    let kind = |v: &Json| v.get("type").and_then(Json::as_str).map(str::to_string);
    match kind(pre)?.as_str() {
        // llama.cpp names GPT-2's split "gpt-2".
        "ByteLevel" if pre.get("use_regex") != Some(&Json::Bool(false)) => Some("gpt-2"),
        "Sequence" => {
            let parts = pre.get("pretokenizers")?.as_array()?;
            let kinds: Vec<String> = parts.iter().filter_map(kind).collect();
            match kinds.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                ["Digits", "ByteLevel"] => Some("smollm"),
                ["Split", "ByteLevel"] => {
                    let regex = parts[0].get("pattern")?.get("Regex")?.as_str()?;
                    if regex == super::vocab::LLAMA3 {
                        Some("llama-bpe")
                    } else if regex == super::vocab::QWEN2 {
                        Some("qwen2")
                    } else {
                        None
                    }
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// `tokenizer.ggml.*` for a byte-level BPE `tokenizer.json`.
fn tokenizer_metadata(json: &str, vocab_size: usize) -> Result<Vec<(String, Value)>, String> {
    let t: Json = serde_json::from_str(json).map_err(|e| format!("tokenizer.json: {e}"))?;
    let model = &t["model"];
    if model["type"] != "BPE" {
        return Err("only byte-level BPE tokenizers are written to GGUF".into());
    }
    let pre = pre_type(&t["pre_tokenizer"])
        .ok_or("the tokenizer's pre-tokenizer has no llama.cpp equivalent that the loader reads")?;
    let mut tokens: Vec<Option<(String, i64)>> = vec![None; vocab_size];
    let mut place = |id: u64, text: &str, kind: i64| {
        if let Some(slot) = tokens.get_mut(id as usize) {
            *slot = Some((text.to_string(), kind));
        }
    };
    for (text, id) in model["vocab"]
        .as_object()
        .ok_or("the vocabulary is missing")?
    {
        place(id.as_u64().ok_or("a token id is not a number")?, text, 1);
    }
    for added in t["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(text)) = (added["id"].as_u64(), added["content"].as_str()) else {
            continue;
        };
        place(id, text, if added["special"] == true { 3 } else { 4 });
    }
    // Ids the vocabulary leaves free get llama.cpp's padding names (type 5: unused).
    let (tokens, types): (Vec<Value>, Vec<Value>) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let (text, kind) = t.unwrap_or_else(|| (format!("[PAD{i}]"), 5));
            (Value::String(text), Value::I64(kind))
        })
        .unzip();
    let merges = model["merges"]
        .as_array()
        .ok_or("the merges are missing")?
        .iter()
        .map(|m| match m {
            Json::String(s) => Some(Value::String(s.clone())),
            Json::Array(pair) => Some(Value::String(format!(
                "{} {}",
                pair.first()?.as_str()?,
                pair.get(1)?.as_str()?
            ))),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or("a merge is neither \"a b\" nor [a, b]")?;
    Ok(vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
    ])
}

/// The metadata of `ck` as GGUF.
fn metadata(ck: &Checkpoint, path: &Path) -> Result<Vec<(String, Value)>, EngineError> {
    let c = &ck.config;
    if c.rope_scaling.is_some() {
        return Err(error(
            path,
            "Llama 3 rope scaling is not written to GGUF by this converter",
        ));
    }
    let arch = match c.architecture {
        Architecture::Qwen2 => "qwen2",
        // llama.cpp files Mistral's dense models under `llama` too.
        Architecture::Llama | Architecture::Mistral => "llama",
    };
    let key = |k: &str| format!("{arch}.{k}");
    let n = |v: usize| Value::U64(v as u64);
    let name = ck
        .dir
        .file_name()
        .map_or("model".into(), |n| n.to_string_lossy().into_owned());
    let mut m = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(name)),
        (key("block_count"), n(c.num_layers)),
        (key("context_length"), n(c.max_position_embeddings)),
        (key("embedding_length"), n(c.hidden_size)),
        (key("feed_forward_length"), n(c.intermediate_size)),
        (key("attention.head_count"), n(c.num_heads)),
        (key("attention.head_count_kv"), n(c.num_kv_heads)),
        (key("attention.key_length"), n(c.head_dim)),
        (key("attention.value_length"), n(c.head_dim)),
        (
            key("attention.layer_norm_rms_epsilon"),
            Value::F64(c.rms_norm_eps),
        ),
        (key("rope.freq_base"), Value::F64(c.rope_theta)),
    ];
    m.extend(tokenizer_metadata(&ck.tokenizer_json, c.vocab_size).map_err(|e| error(path, e))?);
    let ids = [
        ("tokenizer.ggml.bos_token_id", c.bos_token_id),
        (
            "tokenizer.ggml.eos_token_id",
            c.eos_token_ids.first().copied(),
        ),
        (
            "tokenizer.ggml.eot_token_id",
            c.eos_token_ids.get(1).copied(),
        ),
    ];
    for (k, id) in ids {
        if let Some(id) = id {
            m.push((k.into(), Value::U64(id.into())));
        }
    }
    if let Some(t) = &ck.chat_template {
        m.push(("tokenizer.chat_template".into(), Value::String(t.clone())));
    }
    Ok(m)
}

/// The type a matrix of `shape` is written in when `quant` is asked for: `quant` when its
/// rows are whole blocks of it; Q8_0 when they are not whole 256-value superblocks of a
/// K-quant but are whole 32-value blocks (llama.cpp's converter falls back the same way, to
/// a type of 32-value blocks); none (F32) for vectors and rows of no whole blocks.
fn type_of_matrix(quant: Quant, shape: &[usize]) -> Option<Quant> {
    let [_, k] = shape else { return None };
    if k % quant.block().0 == 0 {
        Some(quant)
    } else if k % 32 == 0 {
        Some(Quant::Q8_0)
    } else {
        None
    }
}

/// Writes `ck` to `out` as GGUF: matrices in `quant` where their rows allow it (see
/// [`type_of_matrix`]; F32 when `None`), everything else (norms, biases) in F32.
pub fn convert(ck: &Checkpoint, quant: Option<Quant>, out: &Path) -> Result<(), EngineError> {
    let metadata = metadata(ck, out)?;
    let c = &ck.config;
    let mut tensors = Vec::new();
    for (hf, shape) in c.expected_tensors() {
        let (name, permuted) = gguf_name(&hf, c.architecture)
            .ok_or_else(|| error(out, format!("{hf} has no GGUF name")))?;
        let mut values = ck.tensor(&hf)?.to_f32();
        if permuted {
            let heads = if hf.ends_with("q_proj.weight") {
                c.num_heads
            } else {
                c.num_kv_heads
            };
            values = permute(&values, heads, shape[0]);
        }
        let (ggml_type, data) = match quant.and_then(|q| type_of_matrix(q, &shape)) {
            Some(q) => {
                let data = quantize(q, &values).ok_or_else(|| {
                    error(out, format!("{q:?} is not a type this converter writes"))
                })?;
                (ggml_id(q), data)
            }
            None => (0, values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        };
        tensors.push(Out {
            name,
            dims: shape.iter().rev().map(|d| *d as u64).collect(),
            ggml_type,
            data,
        });
    }
    super::write::write(out, &metadata, &tensors).map_err(|e| crate::io_error(out, e))
}

/// Writes the fixture model of `spec` as one GGUF file at `out` (through a scratch
/// directory beside it).
pub fn write_fixture(
    out: &Path,
    spec: &fixture::FixtureSpec,
    quant: Option<Quant>,
) -> Result<(), EngineError> {
    let scratch = out.with_extension("hf");
    fixture::write_fixture(&scratch, spec)?;
    let result = Checkpoint::open(&scratch).and_then(|ck| convert(&ck, quant, out));
    std::fs::remove_dir_all(&scratch).map_err(|e| crate::io_error(&scratch, e))?;
    result
}
