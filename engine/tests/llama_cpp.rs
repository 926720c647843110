//! SmolLM2-135M-Instruct as llama.cpp runs it. `bench/llama-cpp/run --pin` wrote, from
//! llama.cpp's own tokenizer and forward pass, the ids of fixed strings (English, code, several
//! scripts, special tokens) and the greedy tokens of three chat prompts to
//! `tests/data/smollm2-llama-cpp.json`. Our tokenizer, built from the same GGUF file, must give
//! the same ids, our chat template the same prompt, and our quantized forward pass the same
//! greedy tokens.

mod common;

use engine::chat::ChatTemplate;
use engine::sampling::TokenLogprob;
use engine::{
    ChatMessage, Checkpoint, Event, Prompt, Request, SamplingParams, Tokenizer, Worker, WorkerSpec,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Pins {
    tokenize: Vec<Tokenized>,
    greedy: Vec<Greedy>,
}

#[derive(Deserialize)]
struct Tokenized {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Greedy {
    question: String,
    prompt_ids: Vec<u32>,
    tokens: Vec<u32>,
}

fn pins() -> Pins {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/smollm2-llama-cpp.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Greedy steps from `prompt`, each with the five most likely tokens and their logprobs.
async fn greedy(worker: &Worker, prompt: Vec<u32>, n: usize) -> Vec<TokenLogprob> {
    let mut r = Request::new(Prompt::Tokens(prompt));
    r.sampling = SamplingParams::greedy();
    r.sampling.logprobs = Some(5);
    r.max_tokens = Some(n);
    r.ignore_eos = true;
    let mut steps = Vec::new();
    for e in worker.submit(r).unwrap().collect().await {
        match e {
            Event::Token { logprob, .. } => steps.push(logprob.unwrap()),
            Event::Failed(m) => panic!("failed: {m}"),
            Event::Finished(_) => {}
        }
    }
    steps
}

#[test]
fn the_tokenizer_gives_llama_cpps_ids() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let ck = Checkpoint::open(&path).unwrap();
    let tok = Tokenizer::from_bytes(ck.tokenizer_json.as_bytes()).unwrap();
    let pins = pins();
    assert!(pins.tokenize.len() >= 10);
    for t in pins.tokenize {
        let ours = tok.encode(t.text.as_str(), false).unwrap();
        assert_eq!(ours.get_ids(), t.ids, "{:?}", t.text);
        // And back: byte-level BPE loses nothing.
        assert_eq!(tok.decode(&t.ids, false).unwrap(), t.text);
    }
}

#[tokio::test]
async fn greedy_tokens_are_llama_cpps() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let ck = Checkpoint::open(&path).unwrap();
    let tok = Tokenizer::from_bytes(ck.tokenizer_json.as_bytes()).unwrap();
    let template = ChatTemplate::new(
        ck.chat_template.as_deref().unwrap(),
        ck.bos_token.as_deref(),
        ck.eos_token.as_deref(),
    )
    .unwrap();
    let mut spec = WorkerSpec::new("smollm2", &path);
    spec.device = engine::Device::Cpu;
    spec.threads = 2;
    let worker = Worker::start(spec).unwrap();
    let pins = pins();
    assert_eq!(pins.greedy.len(), 3);
    for g in pins.greedy {
        let prompt = template
            .render(&[ChatMessage::new("user", g.question.clone())])
            .unwrap();
        let ids = tok.encode(prompt.as_str(), false).unwrap();
        assert_eq!(ids.get_ids(), g.prompt_ids, "{}", g.question);
        let steps = greedy(&worker, g.prompt_ids, g.tokens.len()).await;
        let ours: Vec<u32> = steps.iter().map(|s| s.token).collect();
        let same = ours
            .iter()
            .zip(&g.tokens)
            .take_while(|(a, b)| a == b)
            .count();
        eprintln!(
            "{:?}: the first {same} of {} greedy tokens agree with llama.cpp",
            g.question,
            g.tokens.len()
        );
        // Past a point the two disagree: where their top two tokens are nearly tied, and the
        // small differences between the forward passes (llama.cpp keeps the KV cache in f16,
        // sums in another order) pick the other. Measured on 2026-12-07: 43, 22 and 26 tokens
        // agreed, and at each first difference llama.cpp's token was our second choice, 0.127,
        // 0.034 and 0.021 nats below our first.
        assert!(same >= 16, "{}: {same} tokens agree", g.question);
        if let Some(step) = steps.get(same) {
            let theirs = g.tokens[same];
            let lp = step
                .top
                .iter()
                .find(|(t, _)| *t == theirs)
                .map(|(_, lp)| *lp);
            assert!(
                lp.is_some_and(|lp| step.logprob - lp <= 0.25),
                "{}: at token {same} llama.cpp chose {theirs}, not a near-tie for us: {:?}",
                g.question,
                step.top
            );
        }
    }
}
