//! The engine serving requests on the CPU with the tiny fixture model: pinned greedy output,
//! batch invariance (alone, batched with others, recomputed after preemption), cancellation
//! freeing KV blocks, a full queue answering Overloaded, stop strings, seeds, validation.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use engine::fixture::{FixtureSpec, write_fixture};
use engine::request::InvalidRequest;
use engine::{
    ChatMessage, Event, Finish, FinishReason, Pool, Priority, Prompt, Request, SamplingParams,
    SubmitError, Worker, WorkerSpec, WorkerState,
};

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path(), &FixtureSpec::default()).unwrap();
    dir
}

fn spec(dir: &Path) -> WorkerSpec {
    let mut s = WorkerSpec::new("tiny", dir);
    s.device = engine::Device::Cpu;
    s.threads = 2;
    s.cpu_kv_bytes = 4 << 20;
    s
}

fn greedy(prompt: Prompt, max_tokens: usize) -> Request {
    let mut r = Request::new(prompt);
    r.sampling = SamplingParams::greedy();
    r.max_tokens = Some(max_tokens);
    r.ignore_eos = true;
    r
}

/// Tokens, text and the final event of a finished generation.
struct Outcome {
    tokens: Vec<u32>,
    text: String,
    finish: Finish,
}

async fn run(worker: &Worker, request: Request) -> Outcome {
    outcome(worker.submit(request).unwrap().collect().await)
}

fn outcome(events: Vec<Event>) -> Outcome {
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut finish = None;
    for e in events {
        match e {
            Event::Token { token, text: t, .. } => {
                tokens.push(token);
                text.push_str(&t);
            }
            Event::Finished(f) => finish = Some(f),
            Event::Failed(m) => panic!("failed: {m}"),
        }
    }
    Outcome {
        tokens,
        text,
        finish: finish.expect("a final event"),
    }
}

fn prompt_of(len: usize, salt: u32) -> Prompt {
    Prompt::Tokens(
        (0..len as u32)
            .map(|i| (i * 31 + salt * 7 + 5) % 500)
            .collect(),
    )
}

#[tokio::test]
async fn the_fixture_greedy_output_is_pinned() {
    let dir = fixture();
    let w = Worker::start(spec(dir.path())).unwrap();
    let out = run(&w, greedy(Prompt::Text("The quick brown fox".into()), 12)).await;
    // Pinned from this engine's first run; a change in the forward pass, the kernels' order of
    // summation, the fixture's weights or its tokenizer shows up here.
    assert_eq!(
        out.tokens,
        [158, 77, 404, 104, 98, 7, 403, 266, 126, 71, 67, 320]
    );
    // Random weights make invalid byte sequences too; they decode to replacement characters.
    assert_eq!(out.text, "\u{FFFD}jju\u{FFFD}\u{FFFD}$jiin\u{FFFD}d`sw");
    assert_eq!(out.finish.reason, FinishReason::Length);
    assert_eq!(out.finish.completion_tokens, 12);
    assert!(out.finish.device_seconds > 0.0);
}

#[tokio::test]
async fn a_sequence_is_the_same_alone_batched_and_after_preemption() {
    let dir = fixture();
    let target = greedy(prompt_of(37, 1), 40);
    let alone = {
        let w = Worker::start(spec(dir.path())).unwrap();
        run(&w, target.clone()).await.tokens
    };
    // Batched with 8 others of different lengths, submitted at once; then again with a cache
    // so small that sequences must be preempted and recomputed.
    for (kv_bytes, expect_preemption) in [(4 << 20, false), (160 << 10, true)] {
        let mut s = spec(dir.path());
        s.cpu_kv_bytes = kv_bytes;
        s.step_tokens = 64;
        let w = Worker::start(s).unwrap();
        let mut gens = vec![w.submit(target.clone()).unwrap()];
        for i in 0..8 {
            gens.push(
                w.submit(greedy(prompt_of(5 + 9 * i, i as u32 + 2), 30 + 3 * i))
                    .unwrap(),
            );
        }
        let mut outs = Vec::new();
        for g in gens {
            outs.push(outcome(g.collect().await));
        }
        assert_eq!(outs[0].tokens, alone, "kv {kv_bytes}");
        let preempted: u32 = outs.iter().map(|o| o.finish.preemptions).sum();
        assert_eq!(preempted > 0, expect_preemption, "preemptions: {preempted}");
        assert_eq!(w.counters.kv_blocks_used.load(Ordering::Relaxed), 0);
    }
}

#[tokio::test]
async fn cancelling_or_dropping_frees_the_blocks_at_once() {
    let dir = fixture();
    let w = Worker::start(spec(dir.path())).unwrap();
    let mut g = w.submit(greedy(prompt_of(40, 3), 400)).unwrap();
    // Wait for three tokens, then cancel.
    for _ in 0..3 {
        assert!(matches!(g.events.recv().await, Some(Event::Token { .. })));
    }
    assert!(w.counters.kv_blocks_used.load(Ordering::Relaxed) > 0);
    g.cancel();
    let rest = g.collect().await;
    let Some(Event::Finished(f)) = rest.last() else {
        panic!("{rest:?}")
    };
    assert_eq!(f.reason, FinishReason::Cancelled);
    assert!(f.completion_tokens < 400);
    assert_eq!(w.counters.kv_blocks_used.load(Ordering::Relaxed), 0);

    // A caller that goes away (drops the receiver) cancels too.
    let mut g = w.submit(greedy(prompt_of(40, 4), 400)).unwrap();
    assert!(matches!(g.events.recv().await, Some(Event::Token { .. })));
    drop(g);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while w.counters.running.load(Ordering::Relaxed) > 0
        || w.counters.kv_blocks_used.load(Ordering::Relaxed) > 0
    {
        assert!(std::time::Instant::now() < deadline, "blocks still held");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_full_queue_answers_overloaded() {
    let dir = fixture();
    let mut s = spec(dir.path());
    s.max_running = 1;
    s.max_waiting = 2;
    let w = Worker::start(s).unwrap();
    let mut first = w.submit(greedy(prompt_of(10, 1), 400)).unwrap();
    assert!(matches!(
        first.events.recv().await,
        Some(Event::Token { .. })
    ));
    let b = w.submit(greedy(prompt_of(10, 2), 2)).unwrap();
    let c = w.submit(greedy(prompt_of(10, 3), 2)).unwrap();
    assert_eq!(
        w.submit(greedy(prompt_of(10, 4), 2)).err(),
        Some(SubmitError::Overloaded)
    );
    first.cancel();
    // Once the running one ends, the waiting ones run and the queue has room again.
    assert_eq!(outcome(b.collect().await).finish.completion_tokens, 2);
    assert_eq!(outcome(c.collect().await).finish.completion_tokens, 2);
    assert!(w.submit(greedy(prompt_of(10, 5), 1)).is_ok());
}

#[tokio::test]
async fn stop_strings_end_the_output_before_them() {
    let dir = fixture();
    let w = Worker::start(spec(dir.path())).unwrap();
    let full = run(&w, greedy(Prompt::Text("Hello".into()), 30)).await;
    let chars: Vec<char> = full.text.chars().collect();
    assert!(chars.len() > 8, "{:?}", full.text);
    // A stop string from the middle of the greedy text (two characters, possibly across tokens).
    let stop: String = chars[5..7].iter().collect();
    let before = &full.text[..full.text.find(&stop).unwrap()];
    let mut r = greedy(Prompt::Text("Hello".into()), 30);
    r.stop = vec![stop.clone(), "never appears \u{1F600}".into()];
    let out = run(&w, r).await;
    assert_eq!(out.text, before, "stop {stop:?}");
    assert_eq!(out.finish.reason, FinishReason::Stop);
    assert!(out.finish.completion_tokens < 30);
}

#[tokio::test]
async fn the_same_seed_gives_the_same_tokens() {
    let dir = fixture();
    let w = Worker::start(spec(dir.path())).unwrap();
    let sampled = |seed: u64| {
        let mut r = Request::new(Prompt::Text("Once upon a time".into()));
        r.sampling = SamplingParams {
            temperature: 1.0,
            top_p: 0.9,
            top_k: 50,
            seed: Some(seed),
            ..SamplingParams::default()
        };
        r.max_tokens = Some(24);
        r.ignore_eos = true;
        r
    };
    let a = run(&w, sampled(7)).await.tokens;
    let b = run(&w, sampled(7)).await.tokens;
    let c = run(&w, sampled(8)).await.tokens;
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[tokio::test]
async fn choices_share_the_prompts_blocks_and_each_matches_its_seed_alone() {
    let dir = fixture();
    let w = Worker::start(spec(dir.path())).unwrap();
    let sampled = |seed: u64| {
        let mut r = greedy(prompt_of(100, 3), 32);
        r.sampling = SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..SamplingParams::default()
        };
        r
    };
    let mut alone = Vec::new();
    for seed in 5..9 {
        alone.push(run(&w, sampled(seed)).await.tokens);
    }
    let shared_before = w.counters.prompt_tokens_shared.load(Ordering::Relaxed);
    assert_eq!(shared_before, 0);
    let choices = w
        .info
        .choices(w.prepare(sampled(5)).unwrap(), 4, 77)
        .unwrap();
    let gens: Vec<_> = choices.into_iter().map(|c| w.enqueue(c).unwrap()).collect();
    let mut together = Vec::new();
    for g in gens {
        together.push(outcome(g.collect().await));
    }
    for (i, (t, a)) in together.iter().zip(&alone).enumerate() {
        assert_eq!(&t.tokens, a, "choice {i}");
        assert_eq!(t.finish.prompt_tokens, 100);
    }
    // Blocks of 16: the three later choices took the first 96 prompt tokens' blocks.
    assert_eq!(
        w.counters.prompt_tokens_shared.load(Ordering::Relaxed),
        3 * 96
    );
    assert_eq!(w.counters.kv_blocks_used.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_pool_started_loading_serves_once_loaded_and_names_what_failed() {
    let dir = fixture();
    let mut missing = spec(&dir.path().join("nowhere"));
    missing.model_id = "missing".into();
    let (pool, loading) = Pool::start_loading(vec![spec(dir.path()), missing]);
    let outcomes = tokio::task::spawn_blocking(move || loading.join().unwrap())
        .await
        .unwrap();
    assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
    let e = outcomes[1].as_ref().unwrap_err().to_string();
    assert!(e.contains("model missing: "), "{e}");
    let states: Vec<WorkerState> = pool.status().iter().map(|s| s.state).collect();
    assert_eq!(states, [WorkerState::Ready, WorkerState::Dead]);
    let out = outcome(
        pool.submit("tiny", greedy(prompt_of(5, 1), 3))
            .unwrap()
            .collect()
            .await,
    );
    assert_eq!(out.tokens.len(), 3);
    assert!(matches!(
        pool.worker_for("missing"),
        Err(SubmitError::Unavailable)
    ));
}

#[tokio::test]
async fn logprobs_are_a_distribution_and_name_the_chosen_token() {
    let dir = fixture();
    let w = Worker::start(spec(dir.path())).unwrap();
    let mut r = greedy(Prompt::Text("Hello".into()), 3);
    r.sampling.logprobs = Some(5);
    let events = w.submit(r).unwrap().collect().await;
    for e in &events {
        if let Event::Token { token, logprob, .. } = e {
            let lp = logprob.as_ref().unwrap();
            assert_eq!(lp.token, *token);
            assert_eq!(lp.top.len(), 5);
            // Greedy: the chosen token is the most likely one.
            assert_eq!(lp.top[0].0, *token);
            assert!((lp.top[0].1 - lp.logprob).abs() < 1e-6);
            assert!(lp.top.windows(2).all(|p| p[0].1 >= p[1].1));
            let mass: f32 = lp.top.iter().map(|t| t.1.exp()).sum();
            assert!(lp.logprob <= 0.0 && mass <= 1.0 + 1e-5);
        }
    }
}

#[tokio::test]
async fn bad_requests_are_refused_before_queueing() {
    let dir = fixture();
    let pool = Pool::start(vec![spec(dir.path())]).unwrap();
    let mut r = greedy(Prompt::Text("hi".into()), 4);
    r.sampling.temperature = 3.0;
    assert!(matches!(
        pool.submit("tiny", r),
        Err(SubmitError::Invalid(InvalidRequest {
            param: "temperature",
            ..
        }))
    ));
    assert!(matches!(
        pool.submit("tiny", greedy(prompt_of(500, 1), 100)),
        Err(SubmitError::ContextLength {
            prompt: 500,
            max_tokens: 100,
            context: 512
        })
    ));
    assert!(matches!(
        pool.submit("tiny", greedy(prompt_of(5, 1), usize::MAX)),
        Err(SubmitError::ContextLength { prompt: 5, .. })
    ));
    assert_eq!(
        pool.submit("other", greedy(prompt_of(5, 1), 1)).err(),
        Some(SubmitError::UnknownModel("other".into()))
    );
    assert!(matches!(
        pool.submit("tiny", greedy(Prompt::Tokens(vec![9999]), 1)),
        Err(SubmitError::Invalid(InvalidRequest {
            param: "prompt",
            ..
        }))
    ));
    assert!(matches!(
        pool.submit("tiny", greedy(Prompt::Chat(vec![]), 1)),
        Err(SubmitError::Invalid(InvalidRequest {
            param: "messages",
            ..
        }))
    ));
    assert_eq!(
        pool.workers()[0].counters.waiting.load(Ordering::Relaxed),
        0
    );
    assert!(pool.health(Duration::from_secs(30)).await.is_empty());
}

#[tokio::test]
async fn chat_requests_render_the_template_and_count_its_tokens() {
    let dir = fixture();
    let w = Worker::start(spec(dir.path())).unwrap();
    let messages = vec![
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", " What is 2 + 2? "),
    ];
    let rendered = w
        .info
        .chat_template
        .as_ref()
        .unwrap()
        .render(&messages)
        .unwrap();
    assert_eq!(
        rendered,
        "<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    );
    let g = w.submit(greedy(Prompt::Chat(messages), 2)).unwrap();
    let expected = w
        .info
        .tokenizer
        .encode(rendered.as_str(), false)
        .unwrap()
        .len();
    assert_eq!(g.prompt_tokens, expected);
    assert_eq!(outcome(g.collect().await).finish.prompt_tokens, expected);
}

#[tokio::test]
async fn production_runs_before_batch_when_the_batch_is_full() {
    let dir = fixture();
    let mut s = spec(dir.path());
    s.max_running = 1;
    let w = Worker::start(s).unwrap();
    let mut blocker = w.submit(greedy(prompt_of(10, 1), 400)).unwrap();
    assert!(matches!(
        blocker.events.recv().await,
        Some(Event::Token { .. })
    ));
    let mut batch = greedy(prompt_of(10, 2), 1);
    batch.priority = Priority::Batch;
    let mut prod = greedy(prompt_of(10, 3), 1);
    prod.priority = Priority::Production;
    let b = w.submit(batch).unwrap();
    let p = w.submit(prod).unwrap();
    blocker.cancel();
    let (b, p) = (outcome(b.collect().await), outcome(p.collect().await));
    // The production request, though submitted second, waited less.
    assert!(p.finish.queue_time < b.finish.queue_time);
}
