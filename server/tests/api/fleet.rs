//! Factories as fleets, end to end: a portal connected to a NATS server of the test's own,
//! and `tokenmill worker` processes of two partners' factories on the CPU. Each tenant's jobs
//! run on its allocation's factory's node (the usage events say which); a worker killed with
//! SIGKILL mid-stream ends the stream with an error, the job is charged only for the tokens
//! delivered and no hold stays open; a restarted worker rejoins; a revoked token's worker is
//! dropped and exits, and its factory's tenants get 503.
//!
//! The model is SmolLM2-135M-shaped with random weights: tens of milliseconds a token on the
//! CPU, so a stream is still running when its worker is killed.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use db::sqlx::Row;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::nats::NatsServer;

use crate::helpers::{TestApp, spawn_app_with};

const MODEL: &str = "smol";

struct Worker {
    child: Child,
    log: std::path::PathBuf,
}

impl Worker {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Fleet {
    app: TestApp,
    nats: NatsServer,
    dir: tempfile::TempDir,
    platform: testkit::Platform,
    http: reqwest::Client,
}

/// A tenant with an API key and an allocation on one factory.
struct Tenant {
    key: String,
    org_id: String,
}

impl Fleet {
    async fn new() -> Fleet {
        Fleet::with_shape(engine::fixture::Shape::SmolLm2_135M).await
    }

    async fn with_shape(shape: engine::fixture::Shape) -> Fleet {
        let nats = NatsServer::start();
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        let m = model.clone();
        tokio::task::spawn_blocking(move || {
            let spec = engine::fixture::FixtureSpec {
                shape,
                dtype: engine::DType::BF16,
                ..Default::default()
            };
            engine::fixture::write_fixture(&m, &spec).unwrap();
        })
        .await
        .unwrap();
        let url = nats.url.clone();
        let app = spawn_app_with(move |c| {
            c.engine.models = vec![(MODEL.into(), model)];
            c.engine.write_fixture = false;
            c.engine.devices = vec![engine::Device::Cpu];
            c.engine.cpu_kv_mib = 64;
            c.nats = Some(fleet::Connect {
                url,
                auth: fleet::Auth::None,
            });
        })
        .await;
        let platform = testkit::Platform::new(app.db()).await;
        Fleet {
            app,
            nats,
            dir,
            platform,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        }
    }

    /// A partner, its factory serving the model, and a worker token for it.
    async fn factory(&self, partner: &str, name: &str) -> (accounts::User, String, String) {
        let owner = self.platform.partner(partner).await;
        let factory = self.platform.factory(&owner.org_id, name, MODEL).await;
        let (_, secret) = self
            .platform
            .compute
            .create_worker_token(&owner, &factory.id, "rack 1")
            .await
            .unwrap();
        (owner, factory.id, secret)
    }

    fn worker(&self, token: &str, node: &str) -> Worker {
        self.worker_with(token, node, &[])
    }

    fn worker_with(&self, token: &str, node: &str, env: &[(&str, &str)]) -> Worker {
        let log = self.dir.path().join(format!("{node}.log"));
        let file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let home = self.dir.path().join(node);
        std::fs::create_dir_all(&home).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tokenmill"))
            .arg("worker")
            .args(["--node", node])
            .current_dir(&home)
            .env("TOKENMILL_NATS_URL", &self.nats.url)
            .env("TOKENMILL_WORKER_TOKEN", token)
            .env(
                "TOKENMILL_MODELS",
                format!("{MODEL}={}", self.dir.path().join("model").display()),
            )
            .env("TOKENMILL_DEVICE", "cpu")
            .env("TOKENMILL_CPU_KV_MIB", "64")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Worker { child, log }
    }

    /// Waits until the portal sees a live node of `factory` serving the model.
    async fn live(&self, factory: &str, worker: &mut Worker) {
        let fleet = self.app.jobs.fleet().expect("the portal is on NATS");
        let until = Instant::now() + Duration::from_secs(60);
        while !fleet.serves(factory, MODEL) {
            if let Some(status) = worker.child.try_wait().unwrap() {
                panic!("the worker exited ({status}):\n{}", worker.log());
            }
            assert!(Instant::now() < until, "no live node:\n{}", worker.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn tenant(&self, email: &str, org: &str, factory: &str) -> Tenant {
        let owner = self.app.owner(email, org).await;
        let (status, created) = owner
            .json(
                "/api/create_api_key",
                &[("name", "ci"), ("expires_in_days", "")],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{created}");
        let key = created["secret"].as_str().unwrap().to_string();
        let identity = keys::ApiKeys::new(self.app.db().clone())
            .authenticate(&key)
            .await
            .unwrap();
        let user = self
            .platform
            .accounts
            .user(&identity.created_by)
            .await
            .unwrap()
            .unwrap();
        self.platform
            .allocate(&user, factory, MODEL, (1, 1_000_000))
            .await;
        Tenant {
            key,
            org_id: identity.org_id,
        }
    }

    async fn complete(&self, t: &Tenant, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/completions", self.app.base))
            .bearer_auth(&t.key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// (node, device, factory, completion tokens, partial) of a job's usage event.
    async fn usage(&self, job_id: &str) -> (String, String, String, i64, i64) {
        self.app.settled().await;
        let r = db::sqlx::query(
            "SELECT node, device, factory_id, completion_tokens, partial FROM usage_events WHERE job_id = $1",
        )
        .bind(job_id)
        .fetch_optional(self.app.db().pool())
        .await
        .unwrap();
        let Some(r) = r else {
            let jobs: Vec<(String, String, Option<String>)> =
                db::sqlx::query_as("SELECT id, status, error FROM jobs")
                    .fetch_all(self.app.db().pool())
                    .await
                    .unwrap();
            panic!("no usage event for {job_id}; jobs: {jobs:?}");
        };
        (
            r.get("node"),
            r.get("device"),
            r.get("factory_id"),
            r.get("completion_tokens"),
            r.get("partial"),
        )
    }

    async fn open_holds(&self, org_id: &str) -> i64 {
        self.app.settled().await;
        db::sqlx::query_scalar(
            "SELECT COUNT(*) FROM ledger_holds WHERE status = 'open' AND org_id = $1",
        )
        .bind(org_id)
        .fetch_one(self.app.db().pool())
        .await
        .unwrap()
    }
}

fn job_of(response_id: &str) -> &str {
    response_id.rsplit('-').next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenants_jobs_run_on_its_factorys_workers_and_survive_their_failures() {
    let f = Fleet::new().await;
    let (owner_a, fa, token_a) = f.factory("Savanna Cloud", "Nairobi 1").await;
    let (owner_b, fb, token_b) = f.factory("Fjord Compute", "Oslo 1").await;
    let mut node_a = f.worker(&token_a, "node-a");
    let mut node_b = f.worker(&token_b, "node-b");
    let ta = f.tenant("dev@a.example", "Tenant A", &fa).await;
    let tb = f.tenant("dev@b.example", "Tenant B", &fb).await;
    f.live(&fa, &mut node_a).await;
    f.live(&fb, &mut node_b).await;
    // What admission read of factories before the tokens existed expires (2 s).
    tokio::time::sleep(Duration::from_millis(2_100)).await;

    for (tenant, factory, node) in [(&ta, &fa, "node-a"), (&tb, &fb, "node-b")] {
        let r = f
            .complete(
                tenant,
                &json!({"model": MODEL, "prompt": "abc", "max_tokens": 3, "ignore_eos": true}),
            )
            .await;
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 3, "{v}");
        let (n, device, fid, completion, partial) =
            f.usage(job_of(v["id"].as_str().unwrap())).await;
        assert_eq!((n.as_str(), device.as_str(), &fid), (node, "cpu", factory));
        assert_eq!((completion, partial), (3, 0));
    }

    // The Fleet page's data: Savanna's owner sees its own factory's node and tokens only,
    // makes a token there but not on Fjord's factory; a tenant sees nothing.
    let savanna = f.app.browser();
    let r = savanna
        .login("owner@savanna-cloud.example", crate::helpers::PASSWORD)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    savanna.enrol_two_factor().await;
    let (status, page) = savanna.json("/api/fleet", &[]).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let nodes = page["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{page}");
    assert_eq!(nodes[0]["node"], "node-a");
    assert_eq!(nodes[0]["factory"], "Nairobi 1");
    assert_eq!(nodes[0]["state"], "ready");
    assert_eq!(nodes[0]["engines"][0]["model"], MODEL);
    let factories = page["factories"].as_array().unwrap();
    assert_eq!(factories.len(), 1);
    assert_eq!(factories[0]["tokens"].as_array().unwrap().len(), 1);
    assert_eq!(factories[0]["manage"], true);
    let (status, made) = savanna
        .json(
            "/api/create_worker_token",
            &[("factory_id", &fa), ("name", "rack 2")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{made}");
    assert!(
        made["secret"]
            .as_str()
            .unwrap()
            .starts_with(&format!("tmw_{fa}_"))
    );
    let (status, _) = savanna
        .json(
            "/api/create_worker_token",
            &[("factory_id", &fb), ("name", "x")],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let tenant = f.app.browser();
    tenant
        .login("dev@a.example", crate::helpers::PASSWORD)
        .await;
    let (status, _) = tenant.json("/api/fleet", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Each partner's statement of the month counts what its own factory's node produced.
    let statements = statements::Statements::new(f.app.db().clone());
    let now = db::now_ms();
    for (partner, factory) in [(&owner_a, &fa), (&owner_b, &fb)] {
        let doc = statements
            .statement(&partner.org_id, statements::Period::of_ms(now), now)
            .await
            .unwrap()
            .document;
        let (requests, gross): (i64, i64) = db::sqlx::query_as(
            "SELECT COUNT(*), CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM usage_events WHERE factory_id = $1",
        )
        .bind(factory)
        .fetch_one(f.app.db().pool())
        .await
        .unwrap();
        assert_eq!((doc.total.requests, doc.total.gross), (requests, gross));
        assert_eq!(requests, 1);
        assert!(gross > 0);
    }

    // SIGKILL of A's worker mid-stream: the stream ends with an error, the job is charged
    // for what was delivered, its hold is closed.
    let r = f
        .complete(
            &ta,
            &json!({"model": MODEL, "prompt": "abc", "max_tokens": 400, "ignore_eos": true, "stream": true}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = r.bytes_stream();
    let mut text = String::new();
    while text.matches("\"text\"").count() < 3 {
        text.push_str(&String::from_utf8_lossy(
            &body.next().await.unwrap().unwrap(),
        ));
    }
    node_a.child.kill().unwrap();
    node_a.child.wait().unwrap();
    let killed = Instant::now();
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(
        killed.elapsed() < Duration::from_secs(8),
        "the error came late"
    );
    assert!(text.contains("\"error\""), "{text}");
    assert!(text.contains("node-a"), "{text}");
    let id = text
        .split("\"id\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let (_, _, _, completion, partial) = f.usage(job_of(&id)).await;
    assert_eq!(partial, 1);
    assert!((3..400).contains(&completion), "{completion}");
    assert_eq!(f.open_holds(&ta.org_id).await, 0);
    let status: String = db::sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1")
        .bind(job_of(&id))
        .fetch_one(f.app.db().pool())
        .await
        .unwrap();
    assert_eq!(status, "failed");
    // No node of A: 503, never B's node.
    let r = f
        .complete(
            &ta,
            &json!({"model": MODEL, "prompt": "abc", "max_tokens": 2}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);

    // A restarted worker rejoins and serves.
    let mut node_a = f.worker(&token_a, "node-a");
    f.live(&fa, &mut node_a).await;
    let r = f
        .complete(
            &ta,
            &json!({"model": MODEL, "prompt": "abc", "max_tokens": 2, "ignore_eos": true}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // B's token revoked: its worker is dropped and exits with an error; B's tenant gets 503.
    let tokens = f
        .platform
        .compute
        .worker_tokens(&owner_b, &fb)
        .await
        .unwrap();
    f.platform
        .compute
        .revoke_worker_token(&owner_b, &tokens[0].id)
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    let exited = loop {
        if let Some(status) = node_b.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < until,
            "the revoked worker still runs:\n{}",
            node_b.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!exited.success());
    assert!(node_b.log().contains("revoked"), "{}", node_b.log());
    let r = f
        .complete(
            &tb,
            &json!({"model": MODEL, "prompt": "abc", "max_tokens": 2}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_joins_while_loading_and_exits_when_no_model_loads() {
    let f = Fleet::with_shape(engine::fixture::Shape::Tiny).await;
    let (_, _, token) = f.factory("Savanna Cloud", "Nairobi 1").await;
    let nowhere = format!("{MODEL}={}", f.dir.path().join("nowhere").display());
    let mut w = f.worker_with(&token, "broken", &[("TOKENMILL_MODELS", &nowhere)]);
    let until = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = w.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < until, "still running:\n{}", w.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = w.log();
    assert!(!status.success(), "{log}");
    // It joined the fleet first (its models load while it is there), then gave up.
    let joined = log.find("worker serving").expect(&log);
    let gave_up = log.find("no model loaded").expect(&log);
    assert!(joined < gave_up, "{log}");
    assert!(log.contains("model smol: "), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_lost_before_its_first_token_runs_again_on_another_node() {
    let f = Fleet::new().await;
    let (_, fa, token) = f.factory("Savanna Cloud", "Nairobi 1").await;
    // One sequence at a time on the first node, so that a second job waits in its queue.
    let mut first = f.worker_with(&token, "first", &[("TOKENMILL_MAX_RUNNING", "1")]);
    let tenant = f.tenant("dev@a.example", "Tenant A", &fa).await;
    f.live(&fa, &mut first).await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;

    let r = f
        .complete(
            &tenant,
            &json!({"model": MODEL, "prompt": "abc", "max_tokens": 400, "ignore_eos": true, "stream": true}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut long = r.bytes_stream();
    long.next().await.unwrap().unwrap();
    let waiting = {
        let http = f.http.clone();
        let (base, key) = (f.app.base.clone(), tenant.key.clone());
        tokio::spawn(async move {
            http.post(format!("{base}/v1/completions"))
                .bearer_auth(key)
                .json(
                    &json!({"model": MODEL, "prompt": "abc", "max_tokens": 5, "ignore_eos": true}),
                )
                .send()
                .await
                .unwrap()
        })
    };
    let fleet = f.app.jobs.fleet().unwrap();
    let queued = |node: &str| {
        fleet
            .list(None)
            .iter()
            .filter(|n| n.node == node)
            .flat_map(|n| n.engines.iter().map(|e| e.waiting))
            .sum::<usize>()
    };
    let until = Instant::now() + Duration::from_secs(20);
    while queued("first") == 0 {
        assert!(
            Instant::now() < until,
            "the second job never queued on the first node"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut second = f.worker(&token, "second");
    let until = Instant::now() + Duration::from_secs(60);
    while fleet
        .list(None)
        .iter()
        .filter(|n| n.state == "ready")
        .count()
        < 2
    {
        if let Some(status) = second.child.try_wait().unwrap() {
            panic!("the second worker exited ({status}):\n{}", second.log());
        }
        assert!(Instant::now() < until, "the second node never joined");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    // The waiting job had produced nothing: it ran again on the second node and succeeded.
    let r = waiting.await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 5, "{v}");
    let (node, _, _, completion, partial) = f.usage(job_of(v["id"].as_str().unwrap())).await;
    assert_eq!((node.as_str(), completion, partial), ("second", 5, 0));
    // The running one had streamed tokens: it ends with an error, not run again.
    let mut text = String::new();
    while let Some(chunk) = long.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(text.contains("\"error\""), "{text}");
    assert_eq!(f.open_holds(&tenant.org_id).await, 0);
}

/// A second portal process's worth of the app on the same database and NATS, with no engine
/// workers (`TOKENMILL_DEVICE=none`): its own instance and journal; returns its base URL.
async fn second_portal(f: &Fleet, journal: &std::path::Path) -> (String, jobs::Jobs) {
    let config = server::Config {
        database_url: f.app.test_db.url.clone(),
        journal_dir: Some(journal.to_path_buf()),
        // No engine workers of its own: it prepares requests with the model's tokenizer and
        // only the fleet runs them.
        engine: server::config::EngineSettings {
            models: vec![(MODEL.into(), f.dir.path().join("model"))],
            write_fixture: false,
            devices: Vec::new(),
            ..server::config::EngineSettings::default()
        },
        nats: Some(fleet::Connect {
            url: f.nats.url.clone(),
            auth: fleet::Auth::None,
        }),
        ..server::Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server::Portal { router, jobs, .. } = server::build(&config).await.unwrap();
    tokio::spawn(server::serve(listener, router, std::future::pending()));
    (base, jobs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_portals_share_one_fleet_and_settle_every_job_once() {
    let f = Fleet::with_shape(engine::fixture::Shape::Tiny).await;
    let journal = tempfile::tempdir().unwrap();
    let (second, second_jobs) = second_portal(&f, journal.path()).await;
    let (_, fa, token) = f.factory("Savanna Cloud", "Nairobi 1").await;
    let mut one = f.worker(&token, "one");
    let mut two = f.worker(&token, "two");
    let tenant = f.tenant("dev@a.example", "Tenant A", &fa).await;
    f.live(&fa, &mut one).await;
    f.live(&fa, &mut two).await;
    let until = Instant::now() + Duration::from_secs(20);
    while !second_jobs.fleet().unwrap().serves(&fa, MODEL) {
        assert!(
            Instant::now() < until,
            "the second portal never saw the fleet"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Without engine workers of its own, the second portal is ready while the fleet serves.
    let ready = f.http.get(format!("{second}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let before = credits::Credits::new(f.app.db().clone())
        .wallet(&tenant.org_id, db::now_ms())
        .await
        .unwrap()
        .available()
        .get();

    // 200 streams at once, every other one through the second portal.
    let mut streams = Vec::new();
    for i in 0..200 {
        let base = if i % 2 == 0 {
            f.app.base.clone()
        } else {
            second.clone()
        };
        let (http, key) = (f.http.clone(), tenant.key.clone());
        streams.push(tokio::spawn(async move {
            let r = http
                .post(format!("{base}/v1/completions"))
                .bearer_auth(key)
                .json(&json!({"model": MODEL, "prompt": "abc", "max_tokens": 8, "ignore_eos": true, "stream": true}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let text = r.text().await.unwrap();
            assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
            assert!(!text.contains("\"error\""), "{text}");
        }));
    }
    for s in streams {
        s.await.unwrap();
    }
    f.app.settled().await;
    for _ in 0..10_000 {
        if second_jobs.unsettled() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(second_jobs.unsettled(), 0);

    let db = f.app.db();
    let count = |sql: &'static str| {
        let org = tenant.org_id.clone();
        async move {
            db::sqlx::query_scalar::<_, i64>(sql)
                .bind(org)
                .fetch_one(db.pool())
                .await
                .unwrap()
        }
    };
    assert_eq!(
        count("SELECT COUNT(*) FROM jobs WHERE org_id = $1 AND status = 'succeeded'").await,
        200
    );
    assert_eq!(
        count("SELECT COUNT(DISTINCT job_id) FROM usage_events WHERE org_id = $1").await,
        200
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM usage_events WHERE org_id = $1 AND node NOT IN ('one', 'two')")
            .await,
        0
    );
    assert!(
        count("SELECT COUNT(*) FROM usage_events WHERE org_id = $1 AND node = 'one'").await > 0
    );
    assert!(
        count("SELECT COUNT(*) FROM usage_events WHERE org_id = $1 AND node = 'two'").await > 0
    );
    assert_eq!(f.open_holds(&tenant.org_id).await, 0);
    let charged = count(
        "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM usage_events WHERE org_id = $1",
    )
    .await;
    let after = credits::Credits::new(db.clone())
        .wallet(&tenant.org_id, db::now_ms())
        .await
        .unwrap()
        .available()
        .get();
    assert_eq!(before - after, charged);
    assert_eq!(
        ledger::Ledger::new(db.clone()).verify().await.unwrap(),
        Ok(())
    );
}
