//! Faults, with the real `tokenmill` binary as a process of its own on the suite's backend:
//! killed with SIGKILL mid-stream and restarted (the stream is charged exactly for what its
//! client received, its job failed, no hold stays open, a batch resumes and charges every line
//! once), and stopped with SIGTERM under load (no 500, every accepted request completes or
//! ends with a clear error, every hold resolved, exit status 0).
//!
//! The model is SmolLM2-135M-shaped with random weights: tens of milliseconds a token on the
//! CPU, so streams are still running while the test acts on them, and the test's kill lands
//! between two tokens rather than inside a token's hand-over.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use db::sqlx::Row;
use db::testing::TestDb;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Browser, test_db};

const MODEL: &str = "smol";

/// The list prices a first start sets: $0.20 and $0.60 per million tokens.
fn cost(prompt: i64, completion: i64) -> i64 {
    (prompt * 200_000_000 + completion * 600_000_000 + 999_999) / 1_000_000
}

/// A portal's home: the database, model, journal and log its successive processes share.
struct Site {
    dir: tempfile::TempDir,
    test_db: TestDb,
}

struct Portal {
    child: Child,
    base: String,
}

impl Drop for Portal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Site {
    async fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        tokio::task::spawn_blocking(move || {
            let spec = engine::fixture::FixtureSpec {
                shape: engine::fixture::Shape::SmolLm2_135M,
                dtype: engine::DType::BF16,
                ..Default::default()
            };
            engine::fixture::write_fixture(&model, &spec).unwrap();
        })
        .await
        .unwrap();
        Site {
            dir,
            test_db: test_db().await,
        }
    }

    fn db(&self) -> &db::Db {
        &self.test_db.db
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("portal.log")).unwrap_or_default()
    }

    /// Starts a portal process on a free port and waits until it answers.
    async fn start(&self, env: &[(&str, &str)]) -> Portal {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("portal.log"))
            .unwrap();
        let model: PathBuf = self.dir.path().join("model");
        let child = Command::new(env!("CARGO_BIN_EXE_tokenmill"))
            .current_dir(self.dir.path())
            .env("DATABASE_URL", &self.test_db.url)
            .env("TOKENMILL_ADDR", format!("127.0.0.1:{port}"))
            .env("TOKENMILL_MODELS", format!("{MODEL}={}", model.display()))
            .env("TOKENMILL_DEVICE", "cpu")
            .env("TOKENMILL_CPU_KV_MIB", "64")
            .env("TOKENMILL_JOURNAL_DIR", self.dir.path().join("journal"))
            .env("RUST_LOG", "info,tower_http=warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut portal = Portal {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        for _ in 0..1200 {
            if let Some(status) = portal.child.try_wait().unwrap() {
                panic!("the portal exited ({status}):\n{}", self.log());
            }
            if let Ok(r) = http.get(format!("{}/health", portal.base)).send().await
                && r.status() == StatusCode::OK
            {
                return portal;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the portal did not come up:\n{}", self.log())
    }

    async fn scalar(&self, sql: &str, bind: &str) -> i64 {
        db::sqlx::query(sql)
            .bind(bind)
            .fetch_one(self.db().pool())
            .await
            .unwrap()
            .try_get::<i64, _>(0)
            .unwrap()
    }

    async fn open_holds(&self) -> i64 {
        self.scalar(
            "SELECT COUNT(*) FROM ledger_holds WHERE status = 'open' AND org_id = $1",
            &self.tenant_org().await,
        )
        .await
    }

    async fn tenant_org(&self) -> String {
        db::sqlx::query_scalar("SELECT id FROM organizations WHERE name = 'Faulty'")
            .fetch_one(self.db().pool())
            .await
            .unwrap()
    }
}

/// A startup on the portal (the starter grant gives it $10) with an API key.
struct Tenant {
    key: String,
    org_id: String,
    http: reqwest::Client,
}

impl Tenant {
    async fn sign_up(portal: &Portal, site: &Site) -> Tenant {
        let db = site.db();
        let owner = Browser::at(&portal.base);
        let r = owner.sign_up("ops@faulty.example", "Faulty").await;
        assert_eq!(r.status(), StatusCode::OK);
        let r = owner
            .login("ops@faulty.example", crate::helpers::PASSWORD)
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        // The portal runs in the site's folder: its letters are in data/outbox there.
        owner
            .verify_from_letter(&site.dir.path().join("data/outbox"), "ops@faulty.example")
            .await;
        let (status, created) = owner
            .json(
                "/api/create_api_key",
                &[("name", "load"), ("expires_in_days", "")],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{created}");
        let key = created["secret"].as_str().unwrap().to_string();
        let org_id = keys::ApiKeys::new(db.clone())
            .authenticate(&key)
            .await
            .unwrap()
            .org_id;
        Tenant {
            key,
            org_id,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        }
    }

    async fn available(&self, db: &db::Db) -> i64 {
        credits::Credits::new(db.clone())
            .wallet(&self.org_id, db::now_ms())
            .await
            .unwrap()
            .available()
            .get()
    }

    async fn post(
        &self,
        base: &str,
        path: &str,
        body: &Value,
    ) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(format!("{base}{path}"))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await
    }

    async fn get(&self, base: &str, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{base}{path}"))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let text = r.text().await.unwrap();
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }
}

impl Tenant {
    /// Uploads `n` completion lines of `max_tokens` each as a batch; returns its id.
    async fn batch(&self, base: &str, n: usize, max_tokens: u32) -> String {
        let lines: Vec<String> = (0..n)
            .map(|i| {
                json!({"custom_id": format!("line-{i}"), "method": "POST", "url": "/v1/completions",
                       "body": {"model": MODEL, "prompt": format!("Count to {i}"), "max_tokens": max_tokens,
                                "ignore_eos": true, "temperature": 0}})
                .to_string()
            })
            .collect();
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part(
                "file",
                reqwest::multipart::Part::text(lines.join("\n")).file_name("requests.jsonl"),
            );
        let file: Value = self
            .http
            .post(format!("{base}/v1/files"))
            .bearer_auth(&self.key)
            .multipart(form)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let batch: Value = self
            .post(
                base,
                "/v1/batches",
                &json!({"input_file_id": file["id"], "endpoint": "/v1/completions", "completion_window": "24h"}),
            )
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        batch["id"].as_str().unwrap().to_string()
    }
}

/// A server-sent event stream, read event by event.
struct Events {
    response: reqwest::Response,
    buffer: String,
    /// Completion tokens received (each chunk's logprobs name its tokens).
    tokens: usize,
    /// Whether `[DONE]` came.
    done: bool,
}

impl Events {
    fn new(response: reqwest::Response) -> Events {
        Events {
            response,
            buffer: String::new(),
            tokens: 0,
            done: false,
        }
    }

    /// The next event's JSON; `None` at `[DONE]`, at the end of the body, or when the
    /// connection broke.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(at) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..at + 2).collect();
                let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
                    continue; // a keep-alive comment
                };
                if data == "[DONE]" {
                    self.done = true;
                    return None;
                }
                let v: Value = serde_json::from_str(data).unwrap();
                if let Some(tokens) = v["choices"][0]["logprobs"]["tokens"].as_array() {
                    self.tokens += tokens.len();
                }
                return Some(v);
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

fn stream_body(prompt: &str, max_tokens: u32) -> Value {
    json!({
        "model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": true,
        "stream_options": {"include_usage": true},
        "ignore_eos": true, "temperature": 0, "logprobs": 1,
    })
}

fn job_of(response_id: &str) -> String {
    response_id.rsplit('-').next().unwrap().to_string()
}

#[tokio::test]
async fn a_portal_killed_mid_stream_charges_what_was_delivered_and_resumes_its_batch() {
    let site = Site::new().await;
    let mut portal = site.start(&[("TOKENMILL_BATCH_CONCURRENCY", "2")]).await;
    let db = site.db();
    let tenant = Tenant::sign_up(&portal, &site).await;
    let before = tenant.available(db).await;
    assert_eq!(before, 10_000_000_000);

    // A batch of six lines, two running at a time.
    let batch_id = tenant.batch(&portal.base, 6, 12).await;
    // Once a line is done (others are running or waiting), a long stream starts.
    for _ in 0..600 {
        let b = tenant
            .get(&portal.base, &format!("/v1/batches/{batch_id}"))
            .await;
        if b["request_counts"]["completed"].as_i64().unwrap() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = tenant
        .post(
            &portal.base,
            "/v1/completions",
            &stream_body("Once upon a time", 1000),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
    let mut events = Events::new(r);
    let first = events.next().await.expect("a first chunk");
    let job = job_of(first["id"].as_str().unwrap());
    while events.tokens < 10 {
        events.next().await.expect("the stream goes on");
    }
    // Killed right after a token arrived: between two tokens of the model.
    portal.child.kill().unwrap();
    portal.child.wait().unwrap();
    // What the kernel had already sent still arrives; then the connection ends, unfinished.
    while events.next().await.is_some() {}
    assert!(!events.done, "a killed portal cannot finish the stream");
    let delivered = events.tokens as i64;
    assert!(delivered >= 10);
    let running = "SELECT COUNT(*) FROM jobs WHERE status = 'running' AND org_id = $1";
    assert!(site.scalar(running, &tenant.org_id).await >= 1);
    assert!(
        site.open_holds().await >= 1,
        "the dead process left its holds"
    );

    // The restart reads its predecessor's journal before it listens.
    let portal = site.start(&[]).await;
    let row = db::sqlx::query(
        "SELECT j.status, j.error, j.prompt_tokens, u.completion_tokens, u.prompt_tokens AS charged_prompt, \
         u.amount, u.partial FROM jobs j JOIN usage_events u ON u.job_id = j.id WHERE j.id = $1",
    )
    .bind(&job)
    .fetch_one(db.pool())
    .await
    .unwrap();
    let prompt: i64 = row.try_get("prompt_tokens").unwrap();
    assert_eq!(row.try_get::<String, _>("status").unwrap(), "failed");
    let error: String = row.try_get("error").unwrap();
    assert!(
        error.contains(&format!("the {delivered} tokens delivered")),
        "{error}"
    );
    assert_eq!(
        row.try_get::<i64, _>("completion_tokens").unwrap(),
        delivered
    );
    assert_eq!(row.try_get::<i64, _>("charged_prompt").unwrap(), prompt);
    assert_eq!(row.try_get::<i64, _>("partial").unwrap(), 1);
    let stream_charge: i64 = row.try_get("amount").unwrap();
    assert_eq!(stream_charge, cost(prompt, delivered));

    // The batch's lines of the dead runner are taken over once it is stale, and every line
    // completes.
    let mut ended = Value::Null;
    for _ in 0..1200 {
        let b = tenant
            .get(&portal.base, &format!("/v1/batches/{batch_id}"))
            .await;
        if b["status"] == "completed" {
            ended = b;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ended["status"], "completed", "{}", site.log());
    assert_eq!(ended["request_counts"]["completed"], 6, "{ended}");
    assert_eq!(ended["request_counts"]["failed"], 0, "{ended}");
    let output = tenant
        .get(
            &portal.base,
            &format!(
                "/v1/files/{}/content",
                ended["output_file_id"].as_str().unwrap()
            ),
        )
        .await;
    let output = output.as_str().unwrap();
    let mut ids: Vec<String> = output
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["custom_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, (0..6).map(|i| format!("line-{i}")).collect::<Vec<_>>());
    // Each line charged once: one usage event per line, whatever was abandoned by the kill.
    let batch_events = site
        .scalar(
            "SELECT COUNT(*) FROM usage_events WHERE kind = 'batch' AND org_id = $1",
            &tenant.org_id,
        )
        .await;
    assert_eq!(batch_events, 6);
    let rows = db::sqlx::query(
        "SELECT prompt_tokens, completion_tokens, amount FROM usage_events \
         WHERE kind = 'batch' AND org_id = $1",
    )
    .bind(&tenant.org_id)
    .fetch_all(db.pool())
    .await
    .unwrap();
    let mut batch_charge = 0;
    for r in rows {
        let (p, c, a): (i64, i64, i64) = (
            r.try_get("prompt_tokens").unwrap(),
            r.try_get("completion_tokens").unwrap(),
            r.try_get("amount").unwrap(),
        );
        assert_eq!(c, 12);
        assert_eq!(a, cost(p, c));
        batch_charge += a;
    }
    assert_eq!(site.scalar(running, &tenant.org_id).await, 0);
    assert_eq!(site.open_holds().await, 0);
    assert_eq!(
        before - tenant.available(db).await,
        stream_charge + batch_charge,
        "the balance is what it was minus the delivered stream and each batch line once"
    );
}

/// What a load client saw of one request.
#[derive(Debug)]
enum Seen {
    /// A stream that ended with its finish chunk.
    Completed { tokens: usize },
    /// A stream cut by the shutdown, with its error event.
    Cut {
        job: String,
        tokens: usize,
        error: Value,
    },
    /// A whole answer.
    Answered,
    /// Refused with this status, `Retry-After` and error body.
    Refused {
        status: StatusCode,
        retry_after: Option<String>,
        error: Value,
    },
    /// No HTTP answer: the listener had closed.
    NoConnection,
}

async fn one_stream(tenant: &Tenant, base: &str, max_tokens: u32) -> Seen {
    let r = match tenant
        .post(
            base,
            "/v1/completions",
            &stream_body("The weather", max_tokens),
        )
        .await
    {
        Ok(r) => r,
        Err(_) => return Seen::NoConnection,
    };
    if r.status() != StatusCode::OK {
        return refused(r).await;
    }
    let mut events = Events::new(r);
    let mut job = String::new();
    let mut finished = false;
    let mut error = Value::Null;
    while let Some(v) = events.next().await {
        if let Some(id) = v["id"].as_str() {
            job = job_of(id);
        }
        if v["choices"][0]["finish_reason"].is_string() {
            finished = true;
        }
        if v["error"].is_object() {
            error = v["error"].clone();
        }
    }
    assert!(events.done, "every accepted stream ends with [DONE]");
    if finished && error.is_null() {
        Seen::Completed {
            tokens: events.tokens,
        }
    } else {
        Seen::Cut {
            job,
            tokens: events.tokens,
            error,
        }
    }
}

async fn refused(r: reqwest::Response) -> Seen {
    let status = r.status();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Value = r.json().await.unwrap_or(Value::Null);
    Seen::Refused {
        status,
        retry_after,
        error: body["error"].clone(),
    }
}

async fn one_answer(tenant: &Tenant, base: &str, max_tokens: u32) -> Seen {
    let body = json!({"model": MODEL, "prompt": "Hi", "max_tokens": max_tokens, "ignore_eos": true, "temperature": 0});
    match tenant.post(base, "/v1/completions", &body).await {
        Err(_) => Seen::NoConnection,
        Ok(r) if r.status() == StatusCode::OK => {
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["usage"]["completion_tokens"], max_tokens);
            Seen::Answered
        }
        Ok(r) => refused(r).await,
    }
}

#[tokio::test]
async fn sigterm_under_load_refuses_new_work_ends_the_rest_cleanly_and_exits_zero() {
    let site = Site::new().await;
    let mut portal = site
        .start(&[("TOKENMILL_SHUTDOWN_GRACE_SECONDS", "3")])
        .await;
    let db = site.db();
    let tenant = Arc::new(Tenant::sign_up(&portal, &site).await);
    let before = tenant.available(db).await;
    let base: Arc<str> = portal.base.clone().into();

    // A batch whose lines outlast the grace.
    let batch_id = tenant.batch(&portal.base, 4, 400).await;
    // Clients with long streams and long whole answers (longer than the grace), with short
    // answers and with short streams, each sending again until the portal refuses or is gone.
    let mut clients = Vec::new();
    for (i, kind) in ["long", "long", "whole", "short", "short", "brief"]
        .into_iter()
        .enumerate()
    {
        let (tenant, base) = (tenant.clone(), base.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let s = match kind {
                    "long" => one_stream(&tenant, &base, 600).await,
                    "brief" => one_stream(&tenant, &base, 4).await,
                    "whole" => one_answer(&tenant, &base, 600).await,
                    _ => one_answer(&tenant, &base, 3).await,
                };
                let last = matches!(s, Seen::NoConnection);
                seen.push(s);
                if last || seen.len() > 2_000 {
                    return seen;
                }
                tokio::time::sleep(Duration::from_millis(10 * i as u64)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let term = Command::new("kill")
        .args(["-TERM", &portal.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let mut seen = Vec::new();
    for c in clients {
        seen.extend(c.await.unwrap());
    }
    let exit = portal.child.wait().unwrap();
    assert!(exit.success(), "exit {exit}:\n{}", site.log());

    let mut refusals = 0;
    let mut cut = Vec::new();
    let mut completed = 0;
    for s in &seen {
        match s {
            Seen::Refused {
                status,
                retry_after,
                error,
            } => {
                assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
                assert_eq!(error["code"], "shutting_down", "{error}");
                assert!(retry_after.is_some(), "503 without Retry-After");
                refusals += 1;
            }
            Seen::Cut { job, tokens, error } => {
                assert_eq!(error["code"], "shutting_down", "{error}");
                let message = error["message"].as_str().unwrap();
                assert!(message.contains("shut down"), "{message}");
                cut.push((job.clone(), *tokens));
            }
            Seen::Completed { tokens } => {
                assert!(
                    [4, 600].contains(tokens),
                    "a finished stream has all its tokens"
                );
                completed += 1;
            }
            Seen::Answered => completed += 1,
            Seen::NoConnection => {}
        }
    }
    assert!(refusals >= 1, "requests during the drain get 503: {seen:?}");
    assert!(
        !cut.is_empty(),
        "the long streams outlive the grace: {seen:?}"
    );
    assert!(completed >= 1, "{seen:?}");
    // Each cut stream was charged for exactly the tokens its client received.
    for (job, tokens) in &cut {
        let row = db::sqlx::query(
            "SELECT u.prompt_tokens, u.completion_tokens, u.amount, u.partial, j.status \
             FROM usage_events u JOIN jobs j ON j.id = u.job_id WHERE u.job_id = $1",
        )
        .bind(job)
        .fetch_optional(db.pool())
        .await
        .unwrap();
        match row {
            Some(r) => {
                let (p, c): (i64, i64) = (
                    r.try_get("prompt_tokens").unwrap(),
                    r.try_get("completion_tokens").unwrap(),
                );
                assert_eq!(c, *tokens as i64, "job {job}");
                assert_eq!(r.try_get::<i64, _>("amount").unwrap(), cost(p, c));
                assert_eq!(r.try_get::<i64, _>("partial").unwrap(), 1);
                assert_eq!(r.try_get::<String, _>("status").unwrap(), "cancelled");
            }
            // Cut before its first token: nothing charged.
            None => assert_eq!(*tokens, 0, "job {job}"),
        }
    }
    // Only the cut streams are partial: a whole answer cut short reached its client with none
    // of its text and was not charged.
    let partial = site
        .scalar(
            "SELECT COUNT(*) FROM usage_events WHERE partial = 1 AND org_id = $1",
            &tenant.org_id,
        )
        .await;
    assert_eq!(partial, cut.iter().filter(|(_, t)| *t > 0).count() as i64);
    // Batch lines cut by the shutdown went back to pending, uncharged; none failed, none is
    // left running, and a finished one has its whole answer.
    let lines = db::sqlx::query("SELECT status, job_id FROM batch_lines WHERE batch_id = $1")
        .bind(&batch_id)
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(lines.len(), 4);
    let mut pending = 0;
    for line in &lines {
        let status: String = line.try_get("status").unwrap();
        match status.as_str() {
            "pending" => pending += 1,
            "done" => {
                let job: String = line.try_get("job_id").unwrap();
                let c = site
                    .scalar(
                        "SELECT completion_tokens FROM usage_events WHERE partial = 0 AND job_id = $1",
                        &job,
                    )
                    .await;
                assert_eq!(c, 400);
            }
            other => panic!("a batch line {other} after the shutdown"),
        }
    }
    assert!(pending >= 1, "the long lines outlive the grace");
    let running = "SELECT COUNT(*) FROM jobs WHERE status = 'running' AND org_id = $1";
    assert_eq!(site.scalar(running, &tenant.org_id).await, 0);
    assert_eq!(site.open_holds().await, 0);
    let charged = site
        .scalar(
            "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM usage_events WHERE org_id = $1",
            &tenant.org_id,
        )
        .await;
    assert!(charged > 0);
    assert_eq!(before - tenant.available(db).await, charged);
    // A clean stop leaves no journal behind.
    let journals = std::fs::read_dir(site.dir.path().join("journal"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(journals, 0);
}
