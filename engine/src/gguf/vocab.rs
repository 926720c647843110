//! The tokenizer a GGUF file describes (`tokenizer.ggml.*`), built as a `tokenizers` tokenizer
//! so that encoding, decoding and stop strings work as for a `tokenizer.json`.
//!
//! `gpt2` vocabularies are byte-level BPE: the tokens and merges from the file, and the
//! pre-tokenizer that `tokenizer.ggml.pre` names (llama.cpp's pre-tokenizer types: which
//! regular expressions split the text before BPE). Control and user-defined tokens
//! (`token_type` 3 and 4) are special tokens, matched whole. SentencePiece (`llama`)
//! vocabularies are refused by name for now.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::{GgufFile, Value};

/// Llama 3's split.
pub(super) const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen 2's split.
pub(super) const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn strings(file: &GgufFile, key: &str) -> Result<Vec<String>, String> {
    match file.get(key) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{key} holds a value that is not text"))
            })
            .collect(),
        _ => Err(format!("{key} is missing")),
    }
}

fn split(regex: &str) -> Result<PreTokenizerWrapper, String> {
    Split::new(
        SplitPattern::Regex(regex.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map(PreTokenizerWrapper::Split)
    .map_err(|e| e.to_string())
}

/// The pre-tokenizer for llama.cpp's pre-tokenizer type `pre`.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, String> {
    let byte_level =
        |regex: bool| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, regex));
    Ok(match pre {
        // GPT-2's split is what the byte-level pre-tokenizer's own regex does.
        "gpt2" | "default" | "olmo" | "mpt" | "jais" => byte_level(true),
        // Each digit alone, then GPT-2's split.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                byte_level(true),
            ]))
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![split(LLAMA3)?, byte_level(false)]))
        }
        "qwen2" | "deepseek-r1-qwen" => {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![split(QWEN2)?, byte_level(false)]))
        }
        other => {
            return Err(format!(
                "tokenizer.ggml.pre {other:?} is not supported (gpt2, smollm, starcoder, llama-bpe, qwen2 and their kin are)"
            ));
        }
    })
}

/// The tokenizer of `file`.
pub(super) fn tokenizer(file: &GgufFile) -> Result<Tokenizer, String> {
    let model = file
        .get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .ok_or("tokenizer.ggml.model is missing")?;
    if model != "gpt2" {
        return Err(format!(
            "tokenizer.ggml.model {model:?} is not supported yet (gpt2 byte-level BPE is)"
        ));
    }
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let merges: Merges = strings(file, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| format!("merge {m:?} is not two tokens"))
        })
        .collect::<Result<_, _>>()?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| format!("the BPE vocabulary: {e}"))?;
    let mut t = Tokenizer::new(bpe);
    let pre = file
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    t.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
    t.with_decoder(Some(ByteLevelDecoder::default()));
    let types: Vec<i64> = match file.get("tokenizer.ggml.token_type") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_f64().map_or(1, |n| n as i64))
            .collect(),
        _ => Vec::new(),
    };
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(types.iter())
        .filter(|(_, kind)| matches!(kind, 3 | 4))
        .map(|(text, _)| AddedToken::from(text.clone(), true))
        .collect();
    t.add_special_tokens(special)
        .map_err(|e| format!("the special tokens: {e}"))?;
    Ok(t)
}
