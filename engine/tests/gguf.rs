//! GGUF files: the fixture model written as GGUF loads with the same configuration, tensors,
//! tokenizer and greedy output as its Hugging Face directory; quantized copies stay close and
//! serve; broken files fail with a message naming the problem; dequantization and quantization
//! match the `gguf` Python package (llama.cpp's own) bit for bit; and the real SmolLM2 file, when
//! present, answers plain questions in English.

mod common;

use std::path::{Path, PathBuf};

use common::{generate, python_has, smollm2};

use engine::fixture::{FixtureSpec, write_fixture};
use engine::gguf::write::{Out, to_bytes};
use engine::gguf::{Quant, Value, convert};
use engine::{ChatMessage, Checkpoint, Prompt, Request, SamplingParams, Worker, WorkerSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The fixture as a directory and as GGUF in `quant`.
fn both(quant: Option<Quant>) -> (tempfile::TempDir, PathBuf, PathBuf) {
    both_of(&FixtureSpec::default(), quant)
}

/// The fixture of `spec` as a directory and as GGUF in `quant`.
fn both_of(spec: &FixtureSpec, quant: Option<Quant>) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    write_fixture(&dir, spec).unwrap();
    let file = tmp.path().join("tiny.gguf");
    convert(&Checkpoint::open(&dir).unwrap(), quant, &file).unwrap();
    (tmp, dir, file)
}

fn worker(path: &Path) -> Worker {
    let mut s = WorkerSpec::new("tiny", path);
    s.device = engine::Device::Cpu;
    s.threads = 2;
    s.cpu_kv_bytes = 4 << 20;
    Worker::start(s).unwrap()
}

fn chat(text: &str) -> Prompt {
    Prompt::Chat(vec![ChatMessage::new("user", text)])
}

#[tokio::test]
async fn the_fixture_as_f32_gguf_is_the_same_model_as_its_directory() {
    let (_tmp, dir, file) = both(None);
    let (a, b) = (
        Checkpoint::open(&dir).unwrap(),
        Checkpoint::open(&file).unwrap(),
    );
    let (ca, cb) = (&a.config, &b.config);
    assert_eq!(
        (
            ca.architecture,
            ca.vocab_size,
            ca.hidden_size,
            ca.intermediate_size,
            ca.num_layers
        ),
        (
            cb.architecture,
            cb.vocab_size,
            cb.hidden_size,
            cb.intermediate_size,
            cb.num_layers
        )
    );
    assert_eq!(
        (
            ca.num_heads,
            ca.num_kv_heads,
            ca.head_dim,
            ca.tie_word_embeddings
        ),
        (
            cb.num_heads,
            cb.num_kv_heads,
            cb.head_dim,
            cb.tie_word_embeddings
        )
    );
    // GGUF stores them as f32, the precision the forward pass uses.
    assert_eq!(
        (ca.rms_norm_eps as f32, ca.rope_theta as f32),
        (cb.rms_norm_eps as f32, cb.rope_theta as f32)
    );
    assert_eq!(ca.bos_token_id, cb.bos_token_id);
    assert_eq!(ca.eos_token_ids, cb.eos_token_ids);
    assert_eq!(a.chat_template, b.chat_template);
    assert_eq!((&a.bos_token, &a.eos_token), (&b.bos_token, &b.eos_token));
    // Every tensor back exactly, the Q and K rows un-permuted to Hugging Face order.
    for (name, _) in ca.expected_tensors() {
        let (x, y) = (a.tensor(&name).unwrap(), b.tensor(&name).unwrap());
        assert_eq!(x.shape, y.shape, "{name}");
        assert!(x.to_f32() == y.to_f32(), "{name} differs");
    }
    assert!(
        b.tensor("model.layers.0.self_attn.q_proj.weight")
            .unwrap()
            .rope_heads
            .is_some()
    );
    // The tokenizer rebuilt from metadata splits text as tokenizer.json does.
    let ta = tokenizers::Tokenizer::from_bytes(a.tokenizer_json.as_bytes()).unwrap();
    let tb = tokenizers::Tokenizer::from_bytes(b.tokenizer_json.as_bytes()).unwrap();
    for text in [
        "The quick brown fox, 1234 times!",
        "<|im_start|>user\nGrüße 日本語 🎉<|im_end|>",
        "  spaces\tand\nnewlines  ",
    ] {
        let ids = |t: &tokenizers::Tokenizer| t.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids(&ta), ids(&tb), "{text:?}");
        assert_eq!(
            ta.decode(&ids(&ta), false).unwrap(),
            tb.decode(&ids(&tb), false).unwrap()
        );
    }
    // And the same greedy tokens through the whole engine.
    let (wa, wb) = (worker(&dir), worker(&file));
    let prompt = chat("Write a poem about the sea.");
    let out_a = generate(&wa, prompt.clone(), 24, true).await;
    let out_b = generate(&wb, prompt, 24, true).await;
    assert_eq!(out_a.0.len(), 24);
    assert_eq!(out_a, out_b);
}

fn rms(v: impl Iterator<Item = f32>) -> f64 {
    let (mut sum, mut n) = (0f64, 0usize);
    for x in v {
        sum += f64::from(x) * f64::from(x);
        n += 1;
    }
    (sum / n as f64).sqrt()
}

#[tokio::test]
async fn quantized_fixtures_stay_close_to_the_weights_and_serve() {
    // Relative RMS error of every quantized matrix: 8 bits per weight, then 4.
    for (quant, bound) in [
        (Quant::Q8_0, 0.01),
        (Quant::Q4_0, 0.15),
        (Quant::Q4_1, 0.12),
    ] {
        let (_tmp, dir, file) = both(Some(quant));
        let (a, b) = (
            Checkpoint::open(&dir).unwrap(),
            Checkpoint::open(&file).unwrap(),
        );
        let mut quantized = 0;
        for (name, shape) in a.config.expected_tensors() {
            let t = b.tensor(&name).unwrap();
            assert_eq!(t.quant.is_some(), shape.len() == 2, "{name}");
            quantized += usize::from(t.quant.is_some());
            let (x, y) = (a.tensor(&name).unwrap().to_f32(), t.to_f32());
            let err = rms(x.iter().zip(&y).map(|(p, q)| p - q)) / rms(x.iter().copied());
            assert!(err < bound, "{quant:?} {name}: relative error {err:.4}");
            if t.quant.is_some() {
                assert!(err > 0.0, "{quant:?} {name}: quantization changed nothing");
            }
        }
        assert!(quantized >= 2 + 7 * a.config.num_layers);
        let (tokens, _) = generate(&worker(&file), chat("Hello"), 16, true).await;
        assert_eq!(tokens.len(), 16, "{quant:?}");
    }
    // Q8_0 is close enough that it picks the same next tokens as full precision at first.
    let (_tmp, dir, file) = both(Some(Quant::Q8_0));
    let full = generate(&worker(&dir), chat("The sea"), 4, true).await.0;
    let q8 = generate(&worker(&file), chat("The sea"), 4, true).await.0;
    assert_eq!(full[..2], q8[..2]);
}

#[tokio::test]
async fn q4_k_fixtures_are_q4_k_where_rows_are_whole_superblocks() {
    // Every row of the 256-wide shape is whole superblocks: every matrix is Q4_K.
    let spec = FixtureSpec {
        shape: engine::fixture::Shape::Tiny256,
        ..FixtureSpec::default()
    };
    let (_tmp, dir, file) = both_of(&spec, Some(Quant::Q4K));
    let (a, b) = (
        Checkpoint::open(&dir).unwrap(),
        Checkpoint::open(&file).unwrap(),
    );
    let mut matrices = 0;
    for (name, shape) in a.config.expected_tensors() {
        let t = b.tensor(&name).unwrap();
        if shape.len() != 2 {
            assert_eq!(t.quant, None, "{name}");
            continue;
        }
        matrices += 1;
        assert_eq!(t.quant, Some(Quant::Q4K), "{name}");
        let (x, y) = (a.tensor(&name).unwrap().to_f32(), t.to_f32());
        let err = rms(x.iter().zip(&y).map(|(p, q)| p - q)) / rms(x.iter().copied());
        assert!(err > 0.0 && err < 0.15, "{name}: relative error {err:.4}");
    }
    assert_eq!(matrices, 2 + 7 * a.config.num_layers);
    let (tokens, _) = generate(&worker(&file), chat("Hello"), 16, true).await;
    assert_eq!(tokens.len(), 16);
    // The 64- and 160-wide rows of the small shape are not: they fall back to Q8_0.
    let (_tmp, _dir, file) = both(Some(Quant::Q4K));
    let b = Checkpoint::open(&file).unwrap();
    for (name, shape) in b.config.expected_tensors() {
        let expected = (shape.len() == 2).then_some(Quant::Q8_0);
        assert_eq!(b.tensor(&name).unwrap().quant, expected, "{name}");
    }
}

#[tokio::test]
async fn a_quantized_sequence_is_the_same_alone_and_batched() {
    let (_tmp, _dir, file) = both(Some(Quant::Q4_1));
    let w = worker(&file);
    let target = chat("Tell me about quantization.");
    let alone = generate(&w, target.clone(), 30, true).await;
    // The same request among others of different lengths, all submitted at once.
    let others: Vec<_> = (0..6)
        .map(|i| {
            let mut r = Request::new(chat(&"more words ".repeat(i + 1)));
            r.sampling = SamplingParams::greedy();
            r.max_tokens = Some(20 + i);
            r.ignore_eos = true;
            w.submit(r).unwrap()
        })
        .collect();
    let batched = generate(&w, target, 30, true).await;
    for g in others {
        g.collect().await;
    }
    assert_eq!(alone, batched);
}

/// The error opening `bytes` as `broken.gguf` gives.
fn open_error(bytes: &[u8]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("broken.gguf");
    std::fs::write(&path, bytes).unwrap();
    Checkpoint::open(&path)
        .expect_err("a broken file")
        .to_string()
}

fn expect_error(bytes: &[u8], needle: &str) {
    let err = open_error(bytes);
    assert!(err.contains(needle), "{err:?} should say {needle:?}");
    assert!(err.contains("broken.gguf"), "{err:?} should name the file");
}

fn meta(arch: &str) -> Vec<(String, Value)> {
    let n = |v: u64| Value::U64(v);
    vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (format!("{arch}.block_count"), n(1)),
        (format!("{arch}.embedding_length"), n(32)),
        (format!("{arch}.feed_forward_length"), n(64)),
        (format!("{arch}.attention.head_count"), n(2)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F64(1e-5),
        ),
    ]
}

fn tensor(name: &str, dims: &[u64], ggml_type: u32, bytes: usize) -> Out {
    Out {
        name: name.into(),
        dims: dims.to_vec(),
        ggml_type,
        data: vec![0; bytes],
    }
}

#[test]
fn broken_gguf_files_fail_with_what_is_wrong() {
    let (_tmp, _dir, file) = both(Some(Quant::Q8_0));
    let good = std::fs::read(&file).unwrap();
    expect_error(b"GGML\x03\0\0\0", "not a GGUF file");
    let mut v4 = good.clone();
    v4[4] = 4;
    expect_error(&v4, "GGUF version 4 is not supported");
    expect_error(&good[..good.len() / 2], "truncated");
    expect_error(&good[..100], "truncated");
    // A type this engine does not decode (IQ2_XXS), named by its ggml name.
    let iq = to_bytes(
        &meta("llama"),
        &[tensor("token_embd.weight", &[256, 4], 16, 4 * 66)],
    );
    expect_error(&iq, "IQ2_XXS");
    // Values that are not whole blocks of their type.
    let ragged = to_bytes(
        &meta("llama"),
        &[tensor("token_embd.weight", &[40, 4], 8, 4 * 34)],
    );
    expect_error(&ragged, "not whole blocks");
    let gpt2 = to_bytes(
        &meta("gpt2"),
        &[tensor("token_embd.weight", &[32, 4], 0, 512)],
    );
    let err = open_error(&gpt2);
    assert!(err.contains("gpt2") && err.contains("supported"), "{err}");
    let mut no_eps = meta("llama");
    no_eps.pop();
    expect_error(
        &to_bytes(&no_eps, &[tensor("token_embd.weight", &[32, 4], 0, 512)]),
        "llama.attention.layer_norm_rms_epsilon is missing",
    );
    let mut freqs = meta("llama");
    freqs.push(("llama.rope.freq_base".into(), Value::F64(5e5)));
    let freqs = to_bytes(
        &freqs,
        &[
            tensor("token_embd.weight", &[32, 4], 0, 512),
            tensor("rope_freqs.weight", &[8], 0, 32),
        ],
    );
    expect_error(&freqs, "rope_freqs.weight");
}

const QUANTS: &str = r#"
import sys, numpy as np
from gguf.quants import dequantize, quantize
from gguf import GGMLQuantizationType as T
op, kind = sys.argv[1:]
t = getattr(T, kind)
src = sys.stdin.buffer.read()
if op == "dequantize":
    out = dequantize(np.frombuffer(src, dtype=np.uint8), t).astype(np.float32)
else:
    out = quantize(np.frombuffer(src, dtype=np.float32).reshape(-1, 32), t)
sys.stdout.buffer.write(out.tobytes())
"#;

/// `op` ("quantize" or "dequantize") of `input` as the gguf package does it for `kind`.
fn gguf_quants(op: &str, kind: &str, input: &[u8]) -> Vec<u8> {
    common::python(QUANTS, &[op.as_ref(), kind.as_ref()], input)
}

/// Random blocks of `q` whose f16 scales are finite: random, zero, negative, subnormal.
fn random_blocks(q: Quant, blocks: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let (_, size) = q.block();
    let scales: &[usize] = match q {
        Quant::Q4_0 | Quant::Q8_0 => &[0],
        Quant::Q4_1 | Quant::Q4K | Quant::Q5K => &[0, 2],
        Quant::Q6K => &[208],
    };
    let mut out = vec![0u8; blocks * size];
    rng.fill(&mut out[..]);
    for (i, block) in out.chunks_mut(size).enumerate() {
        for &at in scales {
            let v = match i % 8 {
                0 => 0.0,
                1 => 6.0e-8, // an f16 subnormal
                2 => -rng.random_range(0.0..4.0f32),
                _ => rng.random_range(-2.0..2.0f32),
            };
            block[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
    }
    out
}

#[test]
fn dequantization_matches_llama_cpp_bit_for_bit() {
    if !python_has("gguf.quants") {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (q, kind) in [
        (Quant::Q4_0, "Q4_0"),
        (Quant::Q4_1, "Q4_1"),
        (Quant::Q8_0, "Q8_0"),
        (Quant::Q4K, "Q4_K"),
        (Quant::Q5K, "Q5_K"),
        (Quant::Q6K, "Q6_K"),
    ] {
        let blocks = random_blocks(q, 64, &mut rng);
        let ours = q.dequantize(&blocks);
        let theirs: Vec<f32> = gguf_quants("dequantize", kind, &blocks)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(ours.len(), theirs.len(), "{kind}");
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{kind} value {i}: {a} vs {b}");
        }
    }
}

#[test]
fn quantization_matches_llama_cpp_byte_for_byte() {
    if !python_has("gguf.quants") {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut values: Vec<f32> = (0..32 * 64).map(|_| rng.random_range(-1.0..1.0)).collect();
    values[..32].fill(0.0); // an all-zero block
    values[32..64].fill(0.25); // a constant block
    values[64] = 100.0; // an outlier
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    for (q, kind) in [
        (Quant::Q8_0, "Q8_0"),
        (Quant::Q4_0, "Q4_0"),
        (Quant::Q4_1, "Q4_1"),
    ] {
        let ours = engine::gguf::quantize(q, &values).unwrap();
        assert_eq!(ours, gguf_quants("quantize", kind, &bytes), "{kind}");
    }
}

#[test]
fn q4_k_quantization_error_stays_within_its_bound() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut values: Vec<f32> = (0..256 * 16).map(|_| rng.random_range(-1.0..1.0)).collect();
    values[..256].fill(0.0); // an all-zero superblock
    values[256..288].fill(0.25); // a constant sub-block
    values[512] = 100.0; // an outlier
    for v in &mut values[768..1024] {
        *v = v.abs() + 0.5; // all positive: the min stays at 0
    }
    let bytes = engine::gguf::quantize(Quant::Q4K, &values).unwrap();
    assert_eq!(bytes.len(), 16 * 144);
    let back = Quant::Q4K.dequantize(&bytes);
    assert!(back[..256].iter().all(|v| *v == 0.0));
    for (j, (x, b)) in values.chunks(32).zip(Quant::Q4K.unpack(&bytes)).enumerate() {
        // Each value is `-offset + t·scale` for some t in [0, 15]; the sub-block stores
        // `-m + q·s`. The nearest stored value is no farther than q = round(t)'s.
        let min = x.iter().copied().fold(0f32, f32::min);
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let (scale, offset) = ((max - min) / 15.0, -min);
        let (s, m) = (b.scale[0], -b.min.unwrap());
        let bound = (m - offset).abs() + 15.0 * (s - scale).abs() + s / 2.0;
        let slack = 1e-6 * (max.abs() + offset);
        for (l, (v, w)) in x.iter().zip(&back[32 * j..32 * j + 32]).enumerate() {
            assert!(
                (v - w).abs() <= bound + slack,
                "sub-block {j} value {l}: {v} came back as {w}, bound {bound}"
            );
        }
    }
    // Where no outlier stretches the scales, 4 bits keep the error small.
    let ordinary = 1024..;
    let err = rms(values[ordinary.clone()]
        .iter()
        .zip(&back[ordinary.clone()])
        .map(|(p, q)| p - q))
        / rms(values[ordinary].iter().copied());
    assert!(err < 0.08, "relative error {err:.4}");
}

#[tokio::test]
async fn smollm2_answers_plain_questions_in_english() {
    let Some(path) = smollm2() else { return };
    let ck = Checkpoint::open(&path).unwrap();
    assert_eq!(
        (
            ck.config.num_layers,
            ck.config.hidden_size,
            ck.config.vocab_size
        ),
        (30, 576, 49_152)
    );
    let mut s = WorkerSpec::new("smollm2", &path);
    s.device = engine::Device::Cpu;
    s.threads = 2;
    let w = Worker::start(s).unwrap();
    // Greedy answers, pinned: a change in the quantized kernels, the tokenizer, the chat
    // template or the forward pass shows up as different words. Each must also be on topic. The
    // words are those of the AVX2 kernels (the portable ones round differently).
    let cases = [
        (
            "Explain what a CPU does in one sentence.",
            "executes instructions",
            "A CPU (Central Processing Unit) is the brain of a computer that executes instructions and performs calculations.",
        ),
        (
            "What color is the sky?",
            "blue",
            "The sky is a beautiful shade of blue. It's a reflection of the Earth's atmosphere, composed of a mix of gases, including water vapor, nitrogen, and oxygen. The sky is a canvas of light, with the sky above representing the Earth's atmosphere.",
        ),
        (
            "Who wrote Hamlet?",
            "William Shakespeare",
            "The Bard's own son, William Shakespeare, penned the iconic play \"Hamlet\" in 1603. He was a 17th-century English playwright and actor who wrote the story of a prince's tragic downfall. His work has been widely acclaimed for its innovative use of language",
        ),
    ];
    let pinned = engine::cpu::kernels::isa_name() == "avx2+fma";
    for (question, topic, answer) in cases {
        let (_, text) = generate(&w, chat(question), 60, false).await;
        assert!(text.contains(topic), "{question}: {text:?}");
        if pinned {
            assert_eq!(text, answer, "{question}");
        }
    }
}

const FIELD_TYPES: &str = r#"
import json, sys
from gguf import GGUFReader
r = GGUFReader(sys.argv[1])
out = {}
for name, f in r.fields.items():
    kinds = [t.name for t in f.types]
    value = bytes(f.parts[f.data[0]]).decode() if kinds == ["STRING"] else None
    out[name] = {"types": kinds, "string": value}
json.dump(out, sys.stdout)
"#;

/// llama.cpp refuses a hyperparameter stored at another width ("key llama.context_length has
/// wrong type u64 but expected type u32") and a pre-tokenizer name it does not know, so the
/// files we write use its types and names: read back by the gguf package.
#[test]
fn written_files_use_the_types_and_names_llama_cpp_requires() {
    if !python_has("gguf") {
        return;
    }
    let (_tmp, _dir, file) = both(Some(Quant::Q8_0));
    let out = common::python(FIELD_TYPES, &[file.as_os_str()], b"");
    let fields: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let types = |key: &str| fields[key]["types"].to_string();
    for key in [
        "block_count",
        "context_length",
        "embedding_length",
        "feed_forward_length",
        "attention.head_count",
        "attention.head_count_kv",
    ] {
        assert_eq!(types(&format!("llama.{key}")), r#"["UINT32"]"#, "{key}");
    }
    for key in [
        "llama.attention.layer_norm_rms_epsilon",
        "llama.rope.freq_base",
    ] {
        assert_eq!(types(key), r#"["FLOAT32"]"#, "{key}");
    }
    for key in ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"] {
        assert_eq!(types(key), r#"["UINT32"]"#, "{key}");
    }
    assert_eq!(types("tokenizer.ggml.token_type"), r#"["ARRAY","INT32"]"#);
    assert_eq!(fields["tokenizer.ggml.pre"]["string"], "gpt-2");
}
