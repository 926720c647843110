//! Chat and text completions through real HTTP with the fixture model on the CPU, on a portal
//! set up by its first start (local factory, list prices, starter credits): usage equals the
//! engine's counts and the ledger's charge; streams; logprobs; stop; seeds; every refusal with
//! its status and OpenAI's error body, leaving no hold; a client that vanishes mid-stream pays
//! only for what it was sent; Idempotency-Key; per-key rate limits.

use std::time::Duration;

use db::sqlx::Row;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, spawn_app_with};

/// The list prices a first start sets: $0.20 and $0.60 per million tokens.
const INPUT_NANOS_PER_MTOK: i64 = 200_000_000;
const OUTPUT_NANOS_PER_MTOK: i64 = 600_000_000;
const MODEL: &str = "tiny-chat";

fn cost(prompt: i64, completion: i64) -> i64 {
    (prompt * INPUT_NANOS_PER_MTOK + completion * OUTPUT_NANOS_PER_MTOK + 999_999) / 1_000_000
}

pub struct Api {
    pub app: TestApp,
    pub http: reqwest::Client,
    pub key: String,
    pub org_id: String,
    _model: tempfile::TempDir,
}

pub async fn api_with(configure: impl FnOnce(&mut server::Config)) -> Api {
    let model = tempfile::tempdir().unwrap();
    engine::fixture::write_fixture(model.path(), &engine::fixture::FixtureSpec::default()).unwrap();
    let dir = model.path().to_path_buf();
    let app = spawn_app_with(move |c| {
        c.engine.models = vec![(MODEL.into(), dir)];
        c.engine.write_fixture = false;
        c.engine.devices = vec![engine::Device::Cpu];
        c.engine.cpu_kv_mib = 8;
        configure(c);
    })
    .await;
    // A startup: the starter program grants it credit at sign-up.
    let owner = app.owner("dev@startup.example", "Startup").await;
    let (status, created) = owner
        .json(
            "/api/create_api_key",
            &[("name", "ci"), ("expires_in_days", "")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let key = created["secret"].as_str().unwrap().to_string();
    let org_id = keys::ApiKeys::new(app.db().clone())
        .authenticate(&key)
        .await
        .unwrap()
        .org_id;
    Api {
        app,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        key,
        org_id,
        _model: model,
    }
}

pub async fn api() -> Api {
    api_with(|_| {}).await
}

/// The API on the fixture model with a 2 048-token context, for prompts that carry tool
/// definitions (the tiny fixture's own is 512); the directory lives as long as the tuple.
pub async fn api_long_context() -> (Api, tempfile::TempDir) {
    let model = tempfile::tempdir().unwrap();
    engine::fixture::write_fixture(model.path(), &engine::fixture::FixtureSpec::default()).unwrap();
    let config = model.path().join("config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    c["max_position_embeddings"] = json!(2048);
    std::fs::write(&config, c.to_string()).unwrap();
    let dir = model.path().to_path_buf();
    let api = api_with(move |c| c.engine.models = vec![(MODEL.into(), dir)]).await;
    (api, model)
}

impl Api {
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.app.base))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// `GET /v1/models` with this key.
    pub async fn models(&self) -> Value {
        self.http
            .get(format!("{}/v1/models", self.app.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn ok(&self, path: &str, body: &Value) -> Value {
        let r = self.post(path, body).await;
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{v}");
        self.app.settled().await;
        v
    }

    /// The error body of a refusal with `status`.
    pub async fn refused(&self, path: &str, body: &Value, status: StatusCode) -> Value {
        let r = self.post(path, body).await;
        assert_eq!(r.status(), status);
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["message"].as_str().unwrap().len() > 10, "{v}");
        assert!(v["error"]["type"].is_string(), "{v}");
        v["error"].clone()
    }

    pub async fn available(&self) -> i64 {
        self.app.settled().await;
        credits::Credits::new(self.app.db().clone())
            .wallet(&self.org_id, db::now_ms())
            .await
            .unwrap()
            .available()
            .get()
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        self.app.settled().await;
        db::sqlx::query(sql)
            .fetch_one(self.app.db().pool())
            .await
            .unwrap()
            .try_get::<i64, _>(0)
            .unwrap()
    }

    pub async fn open_holds(&self) -> i64 {
        self.scalar("SELECT COUNT(*) FROM ledger_holds WHERE status = 'open'")
            .await
    }

    /// The usage event of a job (`chatcmpl-<job>` / `cmpl-<job>`), once it is written.
    pub async fn usage_event(&self, response_id: &str) -> (i64, i64, i64, i64) {
        let job = response_id.rsplit('-').next().unwrap();
        for _ in 0..400 {
            let row = db::sqlx::query(
                "SELECT prompt_tokens, completion_tokens, amount, partial FROM usage_events WHERE job_id = $1",
            )
            .bind(job)
            .fetch_optional(self.app.db().pool())
            .await
            .unwrap();
            if let Some(r) = row {
                return (
                    r.try_get("prompt_tokens").unwrap(),
                    r.try_get("completion_tokens").unwrap(),
                    r.try_get("amount").unwrap(),
                    r.try_get("partial").unwrap(),
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no usage event for {response_id}")
    }
}

/// The `data:` payloads of a server-sent event stream.
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(str::to_string)
        .collect()
}

/// The JSON chunks of a stream's `data:` payloads, which must end with `[DONE]`.
fn chunks_before_done(events: &[String]) -> Vec<Value> {
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": content}],
        "temperature": 0,
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

#[tokio::test]
async fn chat_and_completions_are_charged_exactly_what_the_usage_says() {
    let api = api().await;
    let granted = api.available().await;
    assert_eq!(granted, 10_000_000_000, "the starter grant is $10");

    let v = api
        .ok(
            "/v1/chat/completions",
            &chat("Hello", json!({"max_tokens": 9, "ignore_eos": true})),
        )
        .await;
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let (p, c) = (
        v["usage"]["prompt_tokens"].as_i64().unwrap(),
        v["usage"]["completion_tokens"].as_i64().unwrap(),
    );
    assert_eq!(c, 9);
    assert_eq!(v["usage"]["total_tokens"].as_i64().unwrap(), p + c);
    assert_eq!(
        api.usage_event(v["id"].as_str().unwrap()).await,
        (p, c, cost(p, c), 0)
    );
    let after_chat = api.available().await;
    assert_eq!(granted - after_chat, cost(p, c));

    // Text completions: the prompt's count is the tokenizer's own.
    let prompt = "The mill turns slowly";
    let tokenizer = engine::Tokenizer::from_file(api._model.path().join("tokenizer.json")).unwrap();
    let expected_prompt = tokenizer.encode(prompt, true).unwrap().get_ids().len() as i64;
    let v = api
        .ok(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": prompt, "max_tokens": 5, "temperature": 0, "ignore_eos": true}),
        )
        .await;
    assert_eq!(v["object"], "text_completion");
    assert_eq!(
        v["usage"]["prompt_tokens"].as_i64().unwrap(),
        expected_prompt
    );
    assert_eq!(v["usage"]["completion_tokens"].as_i64().unwrap(), 5);
    assert!(v["choices"][0]["text"].is_string());
    assert_eq!(after_chat - api.available().await, cost(expected_prompt, 5));
    assert_eq!(api.open_holds().await, 0);
    assert_eq!(
        ledger::Ledger::new(api.app.db().clone())
            .verify()
            .await
            .unwrap(),
        Ok(())
    );
}

#[tokio::test]
async fn streams_match_the_whole_answer_and_end_with_usage_and_done() {
    let api = api().await;
    let whole = api
        .ok(
            "/v1/chat/completions",
            &chat("Stream me", json!({"max_tokens": 12, "ignore_eos": true})),
        )
        .await;
    let r = api
        .post(
            "/v1/chat/completions",
            &chat(
                "Stream me",
                json!({"max_tokens": 12, "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}}),
            ),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = sse_data(&r.text().await.unwrap());
    let chunks = chunks_before_done(&events);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let n = chunks.len();
    assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[n - 1]["choices"], json!([]));
    assert_eq!(chunks[n - 1]["usage"], whole["usage"]);
    assert!(chunks[..n - 1].iter().all(|c| c["usage"].is_null()));
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let (p, c, amount, partial) = api.usage_event(chunks[0]["id"].as_str().unwrap()).await;
    assert_eq!((c, partial), (12, 0));
    assert_eq!(amount, cost(p, c));

    // Completions stream too; without include_usage no usage key at all.
    let r = api
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "abc", "max_tokens": 4, "stream": true, "ignore_eos": true}),
        )
        .await;
    let events = sse_data(&r.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "text_completion");
    assert!(first.get("usage").is_none());
}

#[tokio::test]
async fn logprobs_stop_strings_and_seeds() {
    let api = api().await;
    let v = api
        .ok(
            "/v1/chat/completions",
            &chat(
                "Score me",
                json!({"max_tokens": 6, "ignore_eos": true, "logprobs": true, "top_logprobs": 3}),
            ),
        )
        .await;
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 6);
    for entry in content {
        assert!(entry["logprob"].as_f64().unwrap() <= 0.0);
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(top[0]["logprob"], entry["logprob"]);
    }
    let v = api
        .ok(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "abc", "max_tokens": 4, "temperature": 0, "ignore_eos": true, "logprobs": 2}),
        )
        .await;
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 4);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 4);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
    assert_eq!(lp["text_offset"][0], 0);

    // A stop string from the middle of the greedy answer cuts it there.
    let body = |extra: Value| {
        let mut b = json!({"model": MODEL, "prompt": "Once upon", "max_tokens": 40, "temperature": 0, "ignore_eos": true});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let full = api.ok("/v1/completions", &body(json!({}))).await;
    let text = full["choices"][0]["text"].as_str().unwrap().to_string();
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() > 10, "{text:?}");
    let stop: String = chars[6..9].iter().collect();
    let cut = text.find(&stop).unwrap();
    let v = api
        .ok("/v1/completions", &body(json!({"stop": [stop]})))
        .await;
    assert_eq!(v["choices"][0]["text"].as_str().unwrap(), &text[..cut]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    // The same seed samples the same tokens; seeds differ somewhere.
    let sampled = |seed: i64| body(json!({"temperature": 1.0, "seed": seed, "max_tokens": 16}));
    let a = api.ok("/v1/completions", &sampled(7)).await;
    let b = api.ok("/v1/completions", &sampled(7)).await;
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    let mut differs = false;
    for seed in 8..12 {
        let c = api.ok("/v1/completions", &sampled(seed)).await;
        differs |= c["choices"][0]["text"] != a["choices"][0]["text"];
    }
    assert!(differs);
}

#[tokio::test]
async fn logit_bias_forces_and_bans_tokens() {
    let api = api().await;
    let tokenizer = engine::Tokenizer::from_file(api._model.path().join("tokenizer.json")).unwrap();
    let decode = |ids: &[u32]| tokenizer.decode(ids, false).unwrap();
    let vocab = tokenizer.get_vocab_size(false) as u32;
    // The ids that decode, alone, to `text`.
    let ids_of =
        |text: &str| -> Vec<u32> { (0..vocab).filter(|&i| decode(&[i]) == text).collect() };
    let body = |bias: Value| {
        json!({"model": MODEL, "prompt": "The mill", "max_tokens": 4, "temperature": 0,
               "ignore_eos": true, "logit_bias": bias})
    };
    let text = |v: &Value| v["choices"][0]["text"].as_str().unwrap().to_string();

    // +100 on a plain word: every token is that one.
    let forced = (0..vocab)
        .find(|&i| {
            let t = decode(&[i]);
            t.len() > 2 && t.chars().all(|c| c.is_ascii_alphabetic()) && ids_of(&t).len() == 1
        })
        .unwrap();
    let v = api
        .ok("/v1/completions", &body(json!({forced.to_string(): 100})))
        .await;
    assert_eq!(text(&v), decode(&[forced; 4]));

    // −100 on what greedy decoding picks first: another token comes first.
    let one = |bias: Value| {
        let mut b = body(bias);
        b["max_tokens"] = json!(1);
        b
    };
    let first = text(&api.ok("/v1/completions", &one(json!({}))).await);
    let banned = ids_of(&first);
    assert!(!banned.is_empty(), "{first:?}");
    let bans: serde_json::Map<String, Value> = banned
        .iter()
        .map(|i| (i.to_string(), json!(-100)))
        .collect();
    let other = text(&api.ok("/v1/completions", &one(Value::Object(bans))).await);
    assert_ne!(other, first);
    assert_eq!(api.open_holds().await, 0);
}

#[tokio::test]
async fn byte_tokens_have_their_own_bytes_and_streams_keep_the_offsets() {
    let api = api().await;
    let info = engine::ModelInfo::open(MODEL, api._model.path()).unwrap();
    // Tokens that are one byte of a multi-byte character: alone, each decodes to U+FFFD.
    let bytes: Vec<(u32, u8)> = (0..info.config.vocab_size as u32)
        .filter_map(|i| match info.token_bytes(i).as_slice() {
            [b] if *b >= 0x80 => Some((i, *b)),
            _ => None,
        })
        .collect();
    assert!(bytes.len() >= 2, "{bytes:?}");
    let (id, byte) = bytes[0];
    let forced = json!({id.to_string(): 100});

    let v = api
        .ok(
            "/v1/chat/completions",
            &chat("x", json!({"max_tokens": 3, "ignore_eos": true, "logprobs": true, "logit_bias": forced})),
        )
        .await;
    for entry in v["choices"][0]["logprobs"]["content"].as_array().unwrap() {
        assert_eq!(entry["bytes"], json!([byte]), "{entry}");
    }

    let body = |stream: bool| {
        json!({"model": MODEL, "prompt": "abc", "max_tokens": 5, "temperature": 0, "ignore_eos": true,
               "logprobs": 5, "logit_bias": forced, "stream": stream})
    };
    let whole = api.ok("/v1/completions", &body(false)).await;
    let lp = &whole["choices"][0]["logprobs"];
    let r = api.post("/v1/completions", &body(true)).await;
    let mut offsets = Vec::new();
    for e in sse_data(&r.text().await.unwrap()) {
        if let Ok(c) = serde_json::from_str::<Value>(&e)
            && let Some(o) = c["choices"][0]["logprobs"]["text_offset"].as_array()
        {
            offsets.extend(o.iter().cloned());
        }
    }
    assert_eq!(Value::Array(offsets), lp["text_offset"]);
    assert_eq!(lp["text_offset"], json!([0, 1, 2, 3, 4]));
    // Five alternatives at every position, however many share a text.
    for top in lp["top_logprobs"].as_array().unwrap() {
        assert_eq!(top.as_object().unwrap().len(), 5, "{top}");
    }
}

#[tokio::test]
async fn several_prompts_are_each_their_own_choice_job_and_charge() {
    let api = api().await;
    let one = |prompt: Value| json!({"model": MODEL, "prompt": prompt, "max_tokens": 6, "temperature": 0, "ignore_eos": true});
    let a = api.ok("/v1/completions", &one(json!("The mill"))).await;
    let b = api.ok("/v1/completions", &one(json!([5, 6, 7]))).await;
    let before = api.available().await;
    let both = api
        .ok(
            "/v1/completions",
            &one(json!(["The mill", "The mill", "A river"])),
        )
        .await;
    let choices = both["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
    }
    assert_eq!(choices[0]["text"], a["choices"][0]["text"]);
    assert_eq!(choices[1]["text"], a["choices"][0]["text"]);
    let tokens = api
        .ok("/v1/completions", &one(json!([[5, 6, 7], [5, 6, 7]])))
        .await;
    assert_eq!(tokens["choices"][1]["text"], b["choices"][0]["text"]);

    // Each prompt is its own job and charge; the usage is their sum.
    let p = both["usage"]["prompt_tokens"].as_i64().unwrap();
    let c = both["usage"]["completion_tokens"].as_i64().unwrap();
    assert_eq!(c, 18);
    assert_eq!(
        p,
        2 * a["usage"]["prompt_tokens"].as_i64().unwrap()
            + api.ok("/v1/completions", &one(json!("A river"))).await["usage"]["prompt_tokens"]
                .as_i64()
                .unwrap()
    );
    let jobs = api
        .scalar("SELECT COUNT(*) FROM usage_events WHERE completion_tokens = 6")
        .await;
    assert_eq!(jobs, 2 + 3 + 2 + 1);
    assert!(before - api.available().await >= cost(p, c));
    assert_eq!(api.open_holds().await, 0);

    // Streamed: each prompt's chunks under its own index, one usage chunk with the sum.
    let mut streamed = one(json!(["The mill", "A river"]));
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let events = sse_data(
        &api.post("/v1/completions", &streamed)
            .await
            .text()
            .await
            .unwrap(),
    );
    let chunks = chunks_before_done(&events);
    let text_of = |i: usize| -> String {
        chunks
            .iter()
            .filter(|c| c["choices"][0]["index"] == i)
            .filter_map(|c| c["choices"][0]["text"].as_str())
            .collect()
    };
    assert_eq!(text_of(0), a["choices"][0]["text"].as_str().unwrap());
    assert_eq!(text_of(1), choices[2]["text"].as_str().unwrap());
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 12);
    // `p` counted "The mill" twice and "A river" once.
    let mill = a["usage"]["prompt_tokens"].as_i64().unwrap();
    assert_eq!(usage["prompt_tokens"].as_i64().unwrap(), p - mill);

    // One prompt too long refuses the whole request before anything is held.
    let before = api.available().await;
    let e = api
        .refused(
            "/v1/completions",
            &one(json!(["fine", "word ".repeat(2_000)])),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert_eq!(e["param"], "prompt");
    assert_eq!(api.available().await, before);
    assert_eq!(api.open_holds().await, 0);
}

#[tokio::test]
async fn n_choices_match_their_seeds_alone_and_pay_for_the_prompt_once() {
    let api = api().await;
    let body = |n: u64, seed: u64, extra: Value| {
        let question = "Tell me about the mill by the river and the wheel that turns all day.";
        chat(
            question,
            json!({"n": n, "seed": seed, "temperature": 1.0, "max_tokens": 8, "ignore_eos": true}),
        )
        .as_object()
        .unwrap()
        .clone()
        .into_iter()
        .chain(extra.as_object().unwrap().clone())
        .collect::<serde_json::Map<_, _>>()
        .into()
    };
    let mut alone = Vec::new();
    for seed in 40..43 {
        let v = api
            .ok("/v1/chat/completions", &body(1, seed, json!({})))
            .await;
        alone.push(v["choices"][0]["message"]["content"].clone());
    }
    assert_ne!(alone[0], alone[1], "different seeds, different answers");
    let p = api
        .ok("/v1/chat/completions", &body(1, 40, json!({})))
        .await["usage"]["prompt_tokens"]
        .as_i64()
        .unwrap();

    let sum = "SELECT CAST(COALESCE(SUM(prompt_tokens), 0) * 1000000000000 \
               + COALESCE(SUM(completion_tokens), 0) * 1000000 + COUNT(*) AS BIGINT) \
               FROM usage_events";
    let (before, events_before) = (api.available().await, api.scalar(sum).await);
    let three = api
        .ok("/v1/chat/completions", &body(3, 40, json!({})))
        .await;
    let choices = three["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(
            c["message"]["content"],
            alone[i],
            "choice {i} is seed {} alone",
            40 + i
        );
        assert_eq!(c["finish_reason"], "length");
    }
    assert_eq!(
        three["usage"],
        json!({"prompt_tokens": p, "completion_tokens": 24, "total_tokens": p + 24})
    );
    // Three jobs: the prompt paid once, by the first; each pays for its own output.
    assert_eq!(
        api.scalar(sum).await - events_before,
        p * 1_000_000_000_000 + 24 * 1_000_000 + 3
    );
    assert_eq!(before - api.available().await, cost(p, 8) + 2 * cost(0, 8));

    // Streamed: each choice's chunks carry its index; one usage chunk for all.
    let r = api
        .post(
            "/v1/chat/completions",
            &body(
                3,
                40,
                json!({"stream": true, "stream_options": {"include_usage": true}}),
            ),
        )
        .await;
    let events = sse_data(&r.text().await.unwrap());
    let chunks = chunks_before_done(&events);
    for (i, want) in alone.iter().enumerate() {
        let of_choice: Vec<&Value> = chunks
            .iter()
            .filter(|c| c["choices"][0]["index"] == i)
            .collect();
        assert_eq!(of_choice[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = of_choice
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(&Value::from(text), want, "streamed choice {i}");
        let last = of_choice.last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "length");
    }
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], three["usage"]);
    assert_eq!(api.open_holds().await, 0);

    // Completions with two prompts and n = 2: choice prompt × n + j.
    let v = api
        .ok(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": ["The mill", "A river"], "n": 2, "seed": 7,
                    "temperature": 1.0, "max_tokens": 4, "ignore_eos": true}),
        )
        .await;
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
    }
    let seed8 = api
        .ok(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "A river", "seed": 8,
                    "temperature": 1.0, "max_tokens": 4, "ignore_eos": true}),
        )
        .await;
    assert_eq!(choices[3]["text"], seed8["choices"][0]["text"]);
    assert_eq!(v["usage"]["completion_tokens"], 16);
    assert_eq!(api.open_holds().await, 0);
    assert_eq!(
        ledger::Ledger::new(api.app.db().clone())
            .verify()
            .await
            .unwrap(),
        Ok(())
    );
}

#[tokio::test]
async fn refusals_have_the_right_status_and_leave_no_hold() {
    let api = api().await;
    let before = api.available().await;
    // (path, body, status, a field of the error, its value)
    let cases = [
        (
            "/v1/chat/completions",
            chat("x", json!({"model": "no-such-model"})),
            StatusCode::NOT_FOUND,
            "code",
            "model_not_found",
        ),
        (
            "/v1/chat/completions",
            chat("x", json!({"model": "no-such-model"})),
            StatusCode::NOT_FOUND,
            "param",
            "model",
        ),
        (
            "/v1/chat/completions",
            chat("x", json!({"max_tokens": 100_000})),
            StatusCode::BAD_REQUEST,
            "code",
            "context_length_exceeded",
        ),
        (
            "/v1/chat/completions",
            chat("x", json!({"max_tokens": 100_000})),
            StatusCode::BAD_REQUEST,
            "param",
            "messages",
        ),
        // Over the context on the legacy endpoint names the prompt (a 25 kB prompt, which is
        // tokenized off the async threads).
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "word ".repeat(5_000), "max_tokens": 1}),
            StatusCode::BAD_REQUEST,
            "param",
            "prompt",
        ),
        (
            "/v1/chat/completions",
            chat("x", json!({"temperature": 5})),
            StatusCode::BAD_REQUEST,
            "param",
            "temperature",
        ),
        (
            "/v1/chat/completions",
            chat("x", json!({"top_p": "high"})),
            StatusCode::BAD_REQUEST,
            "param",
            "top_p",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "n": 9}),
            StatusCode::BAD_REQUEST,
            "param",
            "n",
        ),
        // A grammar the compiler refuses names the field it came in; so do two constraints.
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "guided_regex": "(?=look-ahead)"}),
            StatusCode::BAD_REQUEST,
            "param",
            "guided_regex",
        ),
        (
            "/v1/chat/completions",
            chat(
                "x",
                json!({"response_format": {"type": "json_object"}, "guided_choice": ["a"]}),
            ),
            StatusCode::BAD_REQUEST,
            "param",
            "guided_choice",
        ),
        (
            "/v1/chat/completions",
            chat(
                "x",
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 5, "maximum": 1}}, "required": ["a"]}}}}),
            ),
            StatusCode::BAD_REQUEST,
            "param",
            "response_format",
        ),
        // A token beyond the model's vocabulary.
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "logit_bias": {"99999999": 5}}),
            StatusCode::BAD_REQUEST,
            "param",
            "logit_bias",
        ),
    ];
    for (path, body, status, field, value) in cases {
        let e = api.refused(path, &body, status).await;
        assert_eq!(e[field], value, "{path} {body}: {e}");
    }
    // Malformed JSON and a body over the limit.
    let r = api
        .http
        .post(format!("{}/v1/chat/completions", api.app.base))
        .bearer_auth(&api.key)
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let huge = "word ".repeat(300_000);
    let e = api
        .refused(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": huge}),
            StatusCode::PAYLOAD_TOO_LARGE,
        )
        .await;
    assert_eq!(e["type"], "invalid_request_error");
    // A revoked key, then no key.
    let r = api
        .http
        .post(format!("{}/v1/completions", api.app.base))
        .json(&json!({"model": MODEL, "prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // GET on a POST endpoint.
    let r = api
        .http
        .get(format!("{}/v1/chat/completions", api.app.base))
        .bearer_auth(&api.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(api.available().await, before);
    assert_eq!(api.scalar("SELECT COUNT(*) FROM ledger_holds").await, 0);
    assert_eq!(api.scalar("SELECT COUNT(*) FROM jobs").await, 0);

    // An organisation without credit (an enterprise gets no starter grant): 402.
    let b = api.app.browser();
    let r = b
        .post(
            "/api/sign_up",
            &[
                ("email", "cfo@enterprise.example"),
                ("password", PASSWORD),
                ("org_name", "Enterprise"),
                ("org_kind", "enterprise"),
                ("region", "europe"),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    b.login("cfo@enterprise.example", PASSWORD).await;
    api.app
        .verify_from_letter(&b, "cfo@enterprise.example")
        .await;
    let (_, created) = b
        .json(
            "/api/create_api_key",
            &[("name", "x"), ("expires_in_days", "")],
        )
        .await;
    let r = api
        .http
        .post(format!("{}/v1/chat/completions", api.app.base))
        .bearer_auth(created["secret"].as_str().unwrap())
        .json(&chat("x", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYMENT_REQUIRED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "insufficient_quota");
    assert_eq!(api.scalar("SELECT COUNT(*) FROM ledger_holds").await, 0);
}

#[tokio::test]
async fn a_client_that_vanishes_mid_stream_pays_only_for_what_it_was_sent() {
    let api = api().await;
    let before = api.available().await;
    let r = api
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "abc", "max_tokens": 500, "stream": true, "ignore_eos": true, "temperature": 0}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut r = r;
    let mut first = String::new();
    while !first.contains("\n\n") {
        first.push_str(&String::from_utf8_lossy(&r.chunk().await.unwrap().unwrap()));
    }
    let id = serde_json::from_str::<Value>(&sse_data(&first)[0]).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    drop(r);
    let (p, c, amount, partial) = api.usage_event(&id).await;
    assert_eq!(partial, 1, "the usage event says it was cut short");
    assert!((1..500).contains(&c), "charged {c} tokens");
    assert_eq!(amount, cost(p, c));
    assert_eq!(before - api.available().await, amount);
    assert_eq!(api.open_holds().await, 0);
    let status: String = db::sqlx::query("SELECT status FROM jobs")
        .fetch_one(api.app.db().pool())
        .await
        .unwrap()
        .try_get("status")
        .unwrap();
    assert_eq!(status, "cancelled");
}

#[tokio::test]
async fn idempotency_keys_replay_the_first_answer_and_charge_once() {
    let api = api().await;
    let body = chat("Once", json!({"max_tokens": 3, "ignore_eos": true}));
    let send = |body: Value, key: &'static str| {
        api.http
            .post(format!("{}/v1/chat/completions", api.app.base))
            .bearer_auth(&api.key)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let first = send(body.clone(), "k-1").await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let first: Value = first.json().await.unwrap();
    let again = send(body.clone(), "k-1").await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(first, again);
    assert_eq!(api.scalar("SELECT COUNT(*) FROM usage_events").await, 1);
    // The same key with another body is refused.
    let other = send(chat("Twice", json!({"max_tokens": 3})), "k-1")
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Another key runs again.
    let third: Value = send(body, "k-2").await.unwrap().json().await.unwrap();
    assert_ne!(third["id"], first["id"]);
    assert_eq!(api.scalar("SELECT COUNT(*) FROM usage_events").await, 2);
}

#[tokio::test]
async fn each_key_is_rate_limited_with_retry_after() {
    let api = api_with(|c| c.key_rpm = std::num::NonZeroU32::new(2).unwrap()).await;
    let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 1});
    for _ in 0..2 {
        api.ok("/v1/completions", &body).await;
    }
    let r = api.post("/v1/completions", &body).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
}

#[tokio::test]
async fn the_first_start_sets_up_once_and_can_be_switched_off() {
    let api = api().await;
    assert_eq!(
        api.scalar("SELECT COUNT(*) FROM organizations WHERE kind = 'partner'")
            .await,
        1
    );
    assert_eq!(api.scalar("SELECT COUNT(*) FROM factories").await, 1);
    assert_eq!(api.scalar("SELECT COUNT(*) FROM model_prices").await, 1);
    assert_eq!(api.models().await["data"][0]["id"], MODEL);
    // A second start on the same database sets up nothing more.
    let config = server::Config {
        database_url: api.app.test_db.url.clone(),
        engine: server::config::EngineSettings {
            models: vec![(MODEL.into(), api._model.path().to_path_buf())],
            write_fixture: false,
            devices: vec![engine::Device::Cpu],
            cpu_kv_mib: 8,
            ..server::config::EngineSettings::default()
        },
        ..server::Config::default()
    };
    let _second = server::build(&config).await.unwrap();
    assert_eq!(api.scalar("SELECT COUNT(*) FROM factories").await, 1);
    assert_eq!(api.scalar("SELECT COUNT(*) FROM credit_programs").await, 1);

    // Switched off: nothing is set up, so nothing is sold.
    let off = api_with(|c| c.bootstrap = false).await;
    assert_eq!(off.scalar("SELECT COUNT(*) FROM factories").await, 0);
    assert_eq!(off.models().await["data"], json!([]));
    off.refused(
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "x"}),
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn a_full_queue_is_a_429_with_retry_after_and_leaves_no_hold() {
    // A SmolLM2-shaped model makes tokens take milliseconds: one request runs for seconds
    // while a second waits in a queue of one.
    let slow = tempfile::tempdir().unwrap();
    let spec = engine::fixture::FixtureSpec {
        shape: engine::fixture::Shape::SmolLm2_135M,
        ..Default::default()
    };
    engine::fixture::write_fixture(slow.path(), &spec).unwrap();
    let dir = slow.path().to_path_buf();
    let api = api_with(move |c| {
        c.engine.models = vec![(MODEL.into(), dir)];
        c.engine.cpu_kv_mib = 64;
        c.engine.max_running = 1;
        c.engine.max_waiting = 1;
    })
    .await;
    let long = json!({"model": MODEL, "prompt": "count", "max_tokens": 60, "ignore_eos": true, "stream": true});
    let running = api.post("/v1/completions", &long).await;
    assert_eq!(running.status(), StatusCode::OK);
    // Let the worker take it from the queue, then fill the queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = api.post("/v1/completions", &long).await;
    assert_eq!(waiting.status(), StatusCode::OK);
    let r = api
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "x", "max_tokens": 2}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "queue_full");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    // The refused request left nothing; the two streams, dropped, settle their holds.
    drop(running);
    drop(waiting);
    for _ in 0..400 {
        if api.open_holds().await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(api.open_holds().await, 0);
    assert_eq!(api.scalar("SELECT COUNT(*) FROM jobs").await, 2);
}

#[tokio::test]
async fn a_first_start_that_stopped_half_way_is_finished_by_the_next() {
    // An earlier first start made the local partner, then failed before anything else.
    let test_db = db::testing::TestDb::sqlite().await;
    let accounts = accounts::Accounts::new(test_db.db.clone(), Default::default());
    let system = accounts.system_actor().await.unwrap();
    accounts
        .create_partner_org(&system, "Local AI cloud", "europe")
        .await
        .unwrap();
    let model = tempfile::tempdir().unwrap();
    engine::fixture::write_fixture(model.path(), &engine::fixture::FixtureSpec::default()).unwrap();
    let config = server::Config {
        database_url: test_db.url.clone(),
        engine: server::config::EngineSettings {
            models: vec![(MODEL.into(), model.path().to_path_buf())],
            write_fixture: false,
            devices: vec![engine::Device::Cpu],
            cpu_kv_mib: 8,
            ..server::config::EngineSettings::default()
        },
        ..server::Config::default()
    };
    let _started = server::build(&config).await.unwrap();
    for (table, rows) in [
        ("organizations WHERE kind = 'partner'", 1),
        ("factories", 1),
        ("model_prices", 1),
        ("credit_programs", 1),
        ("first_start", 1),
    ] {
        let n: i64 = db::sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(test_db.db.pool())
            .await
            .unwrap();
        assert_eq!(n, rows, "{table}");
    }
}

/// A burst far beyond what the worker runs and queues: the excess is refused at once with 429
/// `queue_full` and `Retry-After`, every accepted request completes and is charged exactly, and
/// nothing is left held. (How fast, and at what memory, is measured by `benches/load.rs`.)
#[tokio::test]
async fn a_burst_beyond_capacity_is_refused_with_retry_after_and_the_rest_complete() {
    let slow = tempfile::tempdir().unwrap();
    let spec = engine::fixture::FixtureSpec {
        shape: engine::fixture::Shape::SmolLm2_135M,
        dtype: engine::DType::BF16,
        ..Default::default()
    };
    engine::fixture::write_fixture(slow.path(), &spec).unwrap();
    let dir = slow.path().to_path_buf();
    let api = std::sync::Arc::new(
        api_with(move |c| {
            c.engine.models = vec![(MODEL.into(), dir)];
            c.engine.cpu_kv_mib = 64;
            c.engine.max_running = 2;
            c.engine.max_waiting = 2;
        })
        .await,
    );
    let before = api.available().await;
    let body = json!({"model": MODEL, "prompt": "count", "max_tokens": 16, "ignore_eos": true});
    let sent: Vec<_> = (0..24)
        .map(|_| {
            let (api, body) = (api.clone(), body.clone());
            tokio::spawn(async move {
                let r = api.post("/v1/completions", &body).await;
                let status = r.status();
                let retry_after = r.headers().get("retry-after").cloned();
                (status, retry_after, r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let (mut accepted, mut refused, mut charged) = (0, 0, 0);
    for t in sent {
        let (status, retry_after, v) = t.await.unwrap();
        match status {
            StatusCode::OK => {
                assert_eq!(v["usage"]["completion_tokens"], 16);
                let (p, c, amount, partial) = api.usage_event(v["id"].as_str().unwrap()).await;
                assert_eq!((c, partial), (16, 0));
                assert_eq!(amount, cost(p, c));
                charged += amount;
                accepted += 1;
            }
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(v["error"]["code"], "queue_full", "{v}");
                assert_eq!(retry_after.unwrap(), "1");
                refused += 1;
            }
            other => panic!("{other}: {v}"),
        }
    }
    assert!(
        accepted >= 2,
        "what the worker queues completes: {accepted}"
    );
    assert!(refused >= 1, "the excess is refused: {accepted} accepted");
    assert_eq!(api.open_holds().await, 0);
    assert_eq!(api.scalar("SELECT COUNT(*) FROM jobs").await, accepted);
    assert_eq!(before - api.available().await, charged);
}

/// A key used a moment ago is taken from those found valid lately, without a lookup, so
/// admission reads its state again with the hold's wallet read. Revoked through another
/// handle on the database (as another portal instance would), expired, or its organisation
/// suspended: the next completion, whole or streamed, is refused before any hold, job or
/// charge.
#[tokio::test]
async fn a_key_revoked_or_expired_elsewhere_is_refused_on_its_next_completion() {
    let api = api().await;
    let elsewhere = keys::ApiKeys::new(api.app.db().clone());
    let me = elsewhere.authenticate(&api.key).await.unwrap();
    let (second, second_secret) = elsewhere
        .create(&api.org_id, &me.created_by, "second", None)
        .await
        .unwrap();
    let send = |key: String, path: &'static str, body: Value| {
        let r = api
            .http
            .post(format!("{}{path}", api.app.base))
            .bearer_auth(key)
            .json(&body)
            .send();
        async move {
            let r = r.await.unwrap();
            let status = r.status();
            (status, r.text().await.unwrap())
        }
    };
    let whole = json!({"model": MODEL, "prompt": "x", "max_tokens": 2});
    let streamed = chat("x", json!({"max_tokens": 2, "stream": true}));
    for key in [&api.key, &second_secret] {
        let (status, text) = send(key.clone(), "/v1/completions", whole.clone()).await;
        assert_eq!(status, StatusCode::OK, "{text}");
    }
    let before = api.available().await;
    let jobs = api.scalar("SELECT COUNT(*) FROM jobs").await;
    let holds = api.scalar("SELECT COUNT(*) FROM ledger_holds").await;

    elsewhere.revoke(&api.org_id, &me.key_id).await.unwrap();
    for (path, body) in [
        ("/v1/completions", whole.clone()),
        ("/v1/chat/completions", streamed.clone()),
    ] {
        let (status, text) = send(api.key.clone(), path, body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], "invalid_api_key", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("revoked"),
            "{v}"
        );
    }

    let set = |sql: &'static str, value: Option<i64>, id: String| {
        let db = api.app.db().clone();
        async move {
            db::sqlx::query(sql)
                .bind(value)
                .bind(id)
                .execute(db.pool())
                .await
                .unwrap();
        }
    };
    let expire = "UPDATE api_keys SET expires_at = $1 WHERE id = $2";
    set(expire, Some(db::now_ms() - 1), second.id.clone()).await;
    let (status, text) = send(second_secret.clone(), "/v1/completions", whole.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    assert!(text.contains("expired"), "{text}");

    assert_eq!(api.available().await, before);
    assert_eq!(api.scalar("SELECT COUNT(*) FROM jobs").await, jobs);
    assert_eq!(api.scalar("SELECT COUNT(*) FROM ledger_holds").await, holds);

    // Valid again (and found so by a lookup), then the organisation is suspended.
    set(expire, None, second.id.clone()).await;
    let (status, text) = send(second_secret.clone(), "/v1/completions", whole.clone()).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(api.scalar("SELECT COUNT(*) FROM jobs").await, jobs + 1);
    let before = api.available().await;
    let (jobs, holds) = (jobs + 1, holds + 1);
    let suspend = "UPDATE organizations SET suspended_at = $1 WHERE id = $2";
    set(suspend, Some(db::now_ms()), api.org_id.clone()).await;
    let (status, text) = send(second_secret.clone(), "/v1/chat/completions", streamed).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(text.contains("organization_suspended"), "{text}");

    assert_eq!(api.available().await, before);
    assert_eq!(api.scalar("SELECT COUNT(*) FROM jobs").await, jobs);
    assert_eq!(api.scalar("SELECT COUNT(*) FROM ledger_holds").await, holds);
    assert_eq!(api.open_holds().await, 0);
}

/// The real SmolLM2-135M-Instruct file (TOKENMILL_SMOLLM2_GGUF), served beside the fixture:
/// a plain question gets a right answer in English through `/v1/chat/completions`, charged
/// what its usage says. Required where TOKENMILL_REQUIRE_SMOLLM2 is set (the test command
/// fetches the file); skipped otherwise.
#[tokio::test]
async fn the_real_smollm2_file_answers_through_the_api() {
    let path = std::env::var_os("TOKENMILL_SMOLLM2_GGUF").map(std::path::PathBuf::from);
    let Some(path) = path.filter(|p| p.is_file()) else {
        assert!(
            std::env::var_os("TOKENMILL_REQUIRE_SMOLLM2").is_none(),
            "TOKENMILL_REQUIRE_SMOLLM2 is set but TOKENMILL_SMOLLM2_GGUF names no file"
        );
        eprintln!("skipped: TOKENMILL_SMOLLM2_GGUF is not set");
        return;
    };
    let api = api_with(|c| {
        c.engine.models.push(("smollm2-135m-instruct".into(), path));
        c.engine.cpu_kv_mib = 16;
    })
    .await;
    let listed = api.models().await;
    assert!(
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "smollm2-135m-instruct"),
        "{listed}"
    );
    let before = api.available().await;
    let v = api
        .ok(
            "/v1/chat/completions",
            &json!({
                "model": "smollm2-135m-instruct",
                "messages": [{"role": "user", "content": "Explain what a CPU does in one sentence."}],
                "temperature": 0,
                "max_tokens": 40,
            }),
        )
        .await;
    let answer = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(
        answer,
        "A CPU (Central Processing Unit) is the brain of a computer that executes instructions and performs calculations."
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let (prompt, completion) = (
        v["usage"]["prompt_tokens"].as_i64().unwrap(),
        v["usage"]["completion_tokens"].as_i64().unwrap(),
    );
    assert!(prompt > 10 && completion >= 7, "{v}");
    assert_eq!(api.available().await, before - cost(prompt, completion));
}
