//! Llama-style GGUF vocabularies (`tokenizer.ggml.model = llama`: SentencePiece BPE, as in Llama
//! 2, Mistral and TinyLlama files) tokenize as SentencePiece itself does. The reference is the
//! `sentencepiece` package: it trains a BPE model with byte fallback on a small corpus of
//! several scripts, the test writes that vocabulary as a GGUF file (pieces, scores, types) as
//! llama.cpp's converter does, and ours must give SentencePiece's ids, and its text back.

mod common;

use engine::gguf::Value;
use engine::gguf::write::to_bytes;
use serde::Deserialize;

const TRAIN: &str = r#"
import io, json, sys
import sentencepiece as spm

job = json.load(sys.stdin)
model = io.BytesIO()
spm.SentencePieceTrainer.train(
    sentence_iterator=iter(job["corpus"]), model_writer=model, vocab_size=600, model_type="bpe",
    byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
    character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
def kind(i):
    # llama.cpp's token types: normal 1, unknown 2, control 3, byte 6.
    return 2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1
n = sp.get_piece_size()
json.dump({
    "pieces": [sp.id_to_piece(i) for i in range(n)],
    "scores": [sp.get_score(i) for i in range(n)],
    "types": [kind(i) for i in range(n)],
    "bos": sp.bos_id(), "eos": sp.eos_id(),
    "encoded": [sp.encode(s) for s in job["texts"]],
}, sys.stdout)
"#;

#[derive(Deserialize)]
struct Trained {
    pieces: Vec<String>,
    scores: Vec<f64>,
    types: Vec<u64>,
    bos: u64,
    eos: u64,
    encoded: Vec<Vec<u32>>,
}

#[test]
fn a_llama_vocabulary_tokenizes_as_sentencepiece_does() {
    if !common::python_has("sentencepiece") {
        return;
    }
    let corpus: Vec<String> = [
        "The quick brown fox jumps over the lazy dog, and the dog sleeps on.",
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
        "Ünïcödé café, naïve façade; Straße and œuvre. 日本語のテキスト。",
        "Привет, мир! Γειά σου κόσμε. 12345 67 890, tabs\tand  two  spaces.",
    ]
    .iter()
    .flat_map(|s| std::iter::repeat_n(s.to_string(), 40))
    .collect();
    let texts = [
        "The lazy fox sleeps.",
        "Hello, world!",
        "  leading spaces and trailing ones  ",
        "new\nlines\n\nand\ttabs",
        "fib(10) == 55",
        "Straße, 日本語 and Привет",
        "emoji 🚀 and symbols ∑ ≠ — none in the training text",
        "",
        // The pieces of text between special tokens below.
        "Hello ",
        " there",
        " world",
    ];
    let job = serde_json::json!({ "corpus": corpus, "texts": texts });
    let out = common::python(TRAIN, &[], job.to_string().as_bytes());
    let t: Trained = serde_json::from_slice(&out).unwrap();
    assert!(t.types.contains(&6), "byte pieces are in the vocabulary");

    let strings = |v: &[String]| Value::Array(v.iter().cloned().map(Value::String).collect());
    let meta = vec![
        (
            "general.architecture".to_string(),
            Value::String("llama".into()),
        ),
        ("tokenizer.ggml.model".into(), Value::String("llama".into())),
        ("tokenizer.ggml.tokens".into(), strings(&t.pieces)),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array(t.scores.iter().map(|s| Value::F64(*s)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(t.types.iter().map(|k| Value::U64(*k)).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U64(t.bos)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U64(t.eos)),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("spm.gguf");
    std::fs::write(&path, to_bytes(&meta, &[])).unwrap();
    let tok = engine::gguf::tokenizer_of(&path).unwrap();

    for (text, theirs) in texts.iter().zip(&t.encoded) {
        let ours = tok.encode(*text, false).unwrap();
        assert_eq!(ours.get_ids(), theirs.as_slice(), "{text:?}");
        assert_eq!(&tok.decode(theirs, false).unwrap(), text);
        // With special tokens added, BOS goes first, as llama.cpp does for these models.
        let with_bos = tok.encode(*text, true).unwrap();
        assert_eq!(with_bos.get_ids()[0] as u64, t.bos, "{text:?}");
        assert_eq!(&with_bos.get_ids()[1..], theirs.as_slice());
    }

    // Special tokens in the text are matched whole, and each piece of text between them is
    // tokenized alone, the space prefix included: llama.cpp's way (checked by hand against
    // llama-cpp-python 0.3.36 on 2026-12-07, ids equal on five such strings).
    let piece = |text: &str| &t.encoded[texts.iter().position(|t| *t == text).unwrap()];
    let (bos, eos) = (t.bos as u32, t.eos as u32);
    let mut expected = vec![bos];
    expected.extend(piece("Hello "));
    expected.push(bos);
    expected.extend(piece(" there"));
    expected.push(eos);
    expected.extend(piece(" world"));
    let ours = tok.encode("Hello <s> there</s> world", true).unwrap();
    assert_eq!(ours.get_ids(), expected);
}
