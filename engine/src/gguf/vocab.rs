//! The tokenizer a GGUF file describes (`tokenizer.ggml.*`), built as a `tokenizers` tokenizer
//! so that encoding, decoding and stop strings work as for a `tokenizer.json`.
//!
//! `gpt2` vocabularies are byte-level BPE: the tokens and merges from the file, and the
//! pre-tokenizer that `tokenizer.ggml.pre` names (llama.cpp's pre-tokenizer types: which
//! regular expressions split the text before BPE). Control and user-defined tokens
//! (`token_type` 3 and 4) are special tokens, matched whole.
//!
//! `llama` vocabularies are SentencePiece BPE (Llama 2, Mistral, TinyLlama …): pieces with
//! scores, spaces written `▁` and one put before the text, `<0xNN>` pieces for bytes no piece
//! holds. SentencePiece merges the adjacent pair whose joined piece scores highest; as a
//! `tokenizers` BPE that is one merge per way of splitting each piece in two, ranked by the
//! piece's score (as Hugging Face's own conversion of these vocabularies does).

use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::{NormalizerWrapper, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
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
        "gpt-2" | "gpt2" | "default" | "olmo" | "mpt" | "jais" => byte_level(true),
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

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const NORMAL: i64 = 1;
const UNKNOWN: i64 = 2;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// The tokenizer of `file`.
pub(super) fn tokenizer(file: &GgufFile) -> Result<Tokenizer, String> {
    let model = file
        .get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .ok_or("tokenizer.ggml.model is missing")?;
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let types: Vec<i64> = match file.get("tokenizer.ggml.token_type") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_f64().map_or(NORMAL, |n| n as i64))
            .collect(),
        _ => Vec::new(),
    };
    let mut t = match model {
        "gpt2" => byte_level_bpe(file, &tokens)?,
        "llama" => sentencepiece_bpe(file, &tokens, &types)?,
        other => {
            return Err(format!(
                "tokenizer.ggml.model {other:?} is not supported (gpt2 byte-level BPE and llama SentencePiece BPE are)"
            ));
        }
    };
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(types.iter())
        .filter(|(_, kind)| matches!(**kind, CONTROL | USER_DEFINED))
        .map(|(text, _)| AddedToken::from(text.clone(), true))
        .collect();
    t.add_special_tokens(special)
        .map_err(|e| format!("the special tokens: {e}"))?;
    Ok(t)
}

fn vocab(tokens: &[String]) -> Vocab {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect()
}

fn byte_level_bpe(file: &GgufFile, tokens: &[String]) -> Result<Tokenizer, String> {
    let merges: Merges = strings(file, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| format!("merge {m:?} is not two tokens"))
        })
        .collect::<Result<_, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab(tokens), merges)
        .build()
        .map_err(|e| format!("the BPE vocabulary: {e}"))?;
    let mut t = Tokenizer::new(bpe);
    let pre = file
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    t.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
    t.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(t)
}

fn sentencepiece_bpe(
    file: &GgufFile,
    tokens: &[String],
    types: &[i64],
) -> Result<Tokenizer, String> {
    let scores: Vec<f32> = match file.get("tokenizer.ggml.scores") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_f64().map(|f| f as f32))
            .collect::<Option<_>>()
            .ok_or("tokenizer.ggml.scores holds a value that is not a number")?,
        _ => return Err("tokenizer.ggml.scores is missing (a llama vocabulary needs it)".into()),
    };
    if scores.len() != tokens.len() {
        return Err(format!(
            "tokenizer.ggml.scores has {} values for {} tokens",
            scores.len(),
            tokens.len()
        ));
    }
    let vocab = vocab(tokens);
    let kind = |i: usize| types.get(i).copied().unwrap_or(NORMAL);
    // Every way of writing a normal piece as two pieces, the highest-scoring pieces first
    // (ties: the order of the two halves' ids; the sort is stable).
    let mut merges: Vec<(f32, String, String)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        if kind(i) != NORMAL {
            continue;
        }
        let start = merges.len();
        for (at, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(at);
            if vocab.contains_key(l) && vocab.contains_key(r) {
                merges.push((scores[i], l.to_string(), r.to_string()));
            }
        }
        merges[start..].sort_by_key(|(_, l, r)| (vocab[l], vocab[r]));
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges.into_iter().map(|(_, l, r)| (l, r)).collect())
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(i) = (0..tokens.len()).find(|&i| kind(i) == UNKNOWN) {
        builder = builder.unk_token(tokens[i].clone());
    }
    let bpe = builder
        .build()
        .map_err(|e| format!("the SentencePiece vocabulary: {e}"))?;
    let mut t = Tokenizer::new(bpe);
    // Spaces become `▁`, and one goes before the text (SentencePiece's dummy prefix) and, as
    // llama.cpp does, before the text after each special token: normalizers run on each piece
    // of text between special tokens.
    let prefix = file
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let spaces = Replace::new(" ", "▁").map_err(|e| e.to_string())?;
    t.with_normalizer(Some(if prefix {
        NormalizerWrapper::Sequence(NormalizerSequence::new(vec![
            NormalizerWrapper::Prepend(Prepend::new("▁".into())),
            NormalizerWrapper::Replace(spaces),
        ]))
    } else {
        NormalizerWrapper::Replace(spaces)
    }))
    .map_err(|e| format!("the normalizer: {e}"))?;
    let replace = Replace::new("▁", " ").map_err(|e| e.to_string())?;
    let mut decoders = vec![
        DecoderWrapper::Replace(replace),
        DecoderWrapper::ByteFallback(ByteFallback::default()),
        DecoderWrapper::Fuse(Fuse::default()),
    ];
    if prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    t.with_decoder(Some(DecoderSequence::new(decoders)));
    // BOS (and EOS) as the file asks, when special tokens are added.
    let flag = |key: &str, default: bool| file.get(key).and_then(Value::as_bool).unwrap_or(default);
    let token = |key: &str| {
        file.get(key)
            .and_then(Value::as_f64)
            .map(|id| id as usize)
            .and_then(|id| tokens.get(id).map(|t| (t.clone(), id as u32)))
    };
    let bos =
        token("tokenizer.ggml.bos_token_id").filter(|_| flag("tokenizer.ggml.add_bos_token", true));
    let eos = token("tokenizer.ggml.eos_token_id")
        .filter(|_| flag("tokenizer.ggml.add_eos_token", false));
    if bos.is_some() || eos.is_some() {
        let mut single = Vec::new();
        single.extend(bos.iter().map(|(t, _)| t.clone()));
        single.push("$A".to_string());
        single.extend(eos.iter().map(|(t, _)| t.clone()));
        let processor = TemplateProcessing::builder()
            .try_single(single.join(" "))
            .map_err(|e| e.to_string())?
            .special_tokens(bos.into_iter().chain(eos).collect::<Vec<_>>())
            .build()
            .map_err(|e| e.to_string())?;
        t.with_post_processor(Some(processor));
    }
    Ok(t)
}
