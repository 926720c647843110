//! Constrained decoding on the CPU with the fixture models, whose random weights would never
//! write JSON by themselves: the grammar's mask alone makes every answer match. A masked
//! sequence leaves its batch neighbours' outputs bit-identical.

use std::path::Path;

use engine::fixture::{FixtureSpec, write_fixture};
use engine::{
    Constraint, Event, FinishReason, Prompt, Request, SamplingParams, SubmitError, Worker,
    WorkerSpec,
};
use serde_json::{Value, json};

fn spec(dir: &Path) -> WorkerSpec {
    let mut s = WorkerSpec::new("tiny", dir);
    s.device = engine::Device::Cpu;
    s.threads = 2;
    s.cpu_kv_bytes = 4 << 20;
    s
}

/// The safetensors fixture and the same model as a 4-bit GGUF file.
fn fixtures() -> (tempfile::TempDir, Vec<Worker>) {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("st");
    write_fixture(&st, &FixtureSpec::default()).unwrap();
    let gguf = dir.path().join("tiny.gguf");
    engine::gguf::write_fixture(
        &gguf,
        &FixtureSpec::default(),
        Some(engine::gguf::Quant::Q4_1),
    )
    .unwrap();
    let workers = [st, gguf]
        .iter()
        .map(|p| Worker::start(spec(p)).unwrap())
        .collect();
    (dir, workers)
}

fn request(prompt: &str, constraint: Option<Constraint>, seed: Option<u64>) -> Request {
    let mut r = Request::new(Prompt::Text(prompt.into()));
    r.sampling = match seed {
        None => SamplingParams::greedy(),
        Some(seed) => SamplingParams {
            seed: Some(seed),
            ..SamplingParams::default()
        },
    };
    r.max_tokens = Some(300);
    r.ignore_eos = true;
    r.constraint = constraint;
    r
}

/// The text, the tokens and how the generation ended.
async fn run(worker: &Worker, r: Request) -> (String, Vec<u32>, FinishReason) {
    let mut text = String::new();
    let mut tokens = Vec::new();
    for e in worker.submit(r).unwrap().collect().await {
        match e {
            Event::Token { token, text: t, .. } => {
                tokens.push(token);
                text.push_str(&t);
            }
            Event::Finished(f) => return (text, tokens, f.reason),
            Event::Failed(m) => panic!("failed: {m}"),
        }
    }
    panic!("no end")
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "member": {"type": "boolean"},
            "colour": {"enum": ["red", "green", "blue"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3}
        },
        "required": ["name", "age", "member", "colour", "tags"],
        "additionalProperties": false
    })
}

/// The answer is a person as the schema says (checked field by field).
fn assert_person(text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    let o = v.as_object().unwrap();
    assert_eq!(o.len(), 5, "{text}");
    assert!(o["name"].as_str().unwrap().chars().count() <= 8, "{text}");
    assert!((0..=120).contains(&o["age"].as_i64().unwrap()), "{text}");
    assert!(o["member"].is_boolean(), "{text}");
    assert!(
        ["red", "green", "blue"].contains(&o["colour"].as_str().unwrap()),
        "{text}"
    );
    let tags = o["tags"].as_array().unwrap();
    assert!(tags.len() <= 3, "{text}");
    assert!(
        tags.iter()
            .all(|t| t.as_str().unwrap().chars().count() <= 4),
        "{text}"
    );
}

#[tokio::test]
async fn a_schema_makes_random_weights_answer_valid_json() {
    let (_dir, workers) = fixtures();
    let schema = Constraint::JsonSchema {
        schema: person_schema(),
        strict: true,
    };
    for w in &workers {
        for seed in [None, Some(1), Some(2), Some(3)] {
            let (text, _, reason) = run(w, request("Who?", Some(schema.clone()), seed)).await;
            assert_eq!(reason, FinishReason::Stop, "{text}");
            assert_person(&text);
        }
        let (text, _, _) = run(w, request("Any", Some(Constraint::JsonObject), Some(4))).await;
        // Without bounds an object may run to max_tokens; what came must still be its start.
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            assert!(v.is_object(), "{text}");
        } else {
            assert!(text.starts_with('{'), "{text}");
        }
    }
}

#[tokio::test]
async fn regexes_and_choices_hold_and_a_bad_grammar_is_refused() {
    let (_dir, workers) = fixtures();
    let regex = Constraint::Regex {
        pattern: "[a-z]{3}-[0-9]{2}".into(),
    };
    let choice = Constraint::Choice {
        choices: vec!["yes".into(), "no".into(), "mañana".into()],
    };
    for w in &workers {
        for seed in [None, Some(7), Some(8)] {
            let (text, _, reason) = run(w, request("Code:", Some(regex.clone()), seed)).await;
            assert_eq!(reason, FinishReason::Stop);
            let b = text.as_bytes();
            assert!(
                b.len() == 6
                    && b[..3].iter().all(u8::is_ascii_lowercase)
                    && b[3] == b'-'
                    && b[4..].iter().all(u8::is_ascii_digit),
                "{text:?}"
            );
            let (text, _, _) = run(w, request("Well?", Some(choice.clone()), seed)).await;
            assert!(["yes", "no", "mañana"].contains(&text.as_str()), "{text:?}");
        }
        for bad in [
            Constraint::JsonSchema {
                schema: json!({"type": "wibble"}),
                strict: true,
            },
            Constraint::Regex {
                pattern: "(?=x)".into(),
            },
            Constraint::Choice { choices: vec![] },
        ] {
            match w.submit(request("x", Some(bad.clone()), None)) {
                Err(SubmitError::Invalid(e)) => {
                    assert_eq!(e.param, "response_format");
                    assert!(!e.message.is_empty());
                }
                other => panic!("{bad:?}: {:?}", other.err()),
            }
        }
    }
}

#[tokio::test]
async fn a_masked_neighbour_leaves_a_sequence_bit_identical() {
    let (_dir, workers) = fixtures();
    let w = &workers[0];
    let plain = || request("The mill by the river", None, Some(11));
    let (alone_text, alone, _) = run(w, plain()).await;
    let schema = Constraint::JsonSchema {
        schema: person_schema(),
        strict: true,
    };
    let neighbours: Vec<_> = (0..3)
        .map(|i| {
            w.submit(request("Who?", Some(schema.clone()), Some(i)))
                .unwrap()
        })
        .collect();
    let (text, batched, _) = run(w, plain()).await;
    assert_eq!(batched, alone);
    assert_eq!(text, alone_text);
    for n in neighbours {
        let events = n.collect().await;
        assert!(matches!(events.last(), Some(Event::Finished(_))));
    }
}
