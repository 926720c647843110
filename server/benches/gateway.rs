//! Gateway overhead: what the portal adds to a generation (API key check, admission with the
//! price and allocation lookups, the hold, the job row, dispatch, settlement with its usage
//! event, JSON or SSE over real HTTP) against calling the engine directly with the same
//! request, median and p99 of sequential requests; then the requests per second the portal
//! sustains with concurrent clients. The HTTP floor (a request the server answers without
//! work) shows how much of the overhead is HTTP on both ends. The test model on the CPU, a
//! fresh database (SQLite, or PostgreSQL when `TEST_DATABASE_URL` is set: both run, side by
//! side).
//!
//! `cargo bench -p server --bench gateway` (add `TEST_DATABASE_URL=postgres://…` for both).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Portal;
use db::testing::TestDb;
use engine::fixture::{FixtureSpec, write_fixture};
use engine::{Pool, Prompt, Request, SamplingParams, WorkerSpec};
use serde_json::json;

const SEQUENTIAL: usize = 300;
const CLIENTS: usize = 8;
const SUSTAINED: Duration = Duration::from_secs(10);
const MAX_TOKENS: usize = 4;
const MODEL: &str = "tiny";

fn request() -> Request {
    let mut r = Request::new(Prompt::Text("The mill turns".into()));
    r.sampling = SamplingParams::greedy();
    r.max_tokens = Some(MAX_TOKENS);
    r.ignore_eos = true;
    r
}

fn spec(dir: &std::path::Path) -> WorkerSpec {
    let mut s = WorkerSpec::new(MODEL, dir);
    s.device = engine::Device::Cpu;
    s.cpu_kv_bytes = 64 << 20;
    s
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Stats {
    median: Duration,
    p99: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    Stats {
        median: percentile(&samples, 0.5),
        p99: percentile(&samples, 0.99),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

async fn engine_direct(dir: &std::path::Path) -> Stats {
    let pool = Pool::start(vec![spec(dir)]).unwrap();
    for _ in 0..20 {
        pool.submit(MODEL, request()).unwrap().collect().await;
    }
    let mut samples = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        let t = Instant::now();
        pool.submit(MODEL, request()).unwrap().collect().await;
        samples.push(t.elapsed());
    }
    for w in pool.workers() {
        w.stop();
    }
    stats(samples)
}

fn body(stream: bool) -> serde_json::Value {
    json!({"model": MODEL, "prompt": "The mill turns", "max_tokens": MAX_TOKENS, "temperature": 0,
           "ignore_eos": true, "stream": stream})
}

async fn one(http: &reqwest::Client, p: &Portal, stream: bool) {
    let r = http
        .post(format!("{}/v1/completions", p.base))
        .bearer_auth(&p.key)
        .json(&body(stream))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(!stream || text.ends_with("data: [DONE]\n\n"));
}

/// The HTTP floor: a request through the same server and middleware that does no work (an
/// unknown `/v1` route, answered 404 with OpenAI's error body), to tell HTTP on both ends
/// from the portal's own work in the overhead.
async fn floor(p: &Portal) -> Stats {
    let http = reqwest::Client::new();
    let url = format!("{}/v1/nothing-here", p.base);
    let once = || async {
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 404);
        r.text().await.unwrap();
    };
    for _ in 0..20 {
        once().await;
    }
    let mut samples = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        let t = Instant::now();
        once().await;
        samples.push(t.elapsed());
    }
    stats(samples)
}

async fn sequential(p: &Portal, stream: bool) -> Stats {
    let http = reqwest::Client::new();
    for _ in 0..20 {
        one(&http, p, stream).await;
    }
    let mut samples = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        let t = Instant::now();
        one(&http, p, stream).await;
        samples.push(t.elapsed());
    }
    stats(samples)
}

async fn sustained(p: Arc<Portal>) -> f64 {
    let http = reqwest::Client::new();
    let start = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, p) = (http.clone(), p.clone());
            tokio::spawn(async move {
                let mut n = 0usize;
                while start.elapsed() < SUSTAINED {
                    one(&http, &p, false).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let model = tempfile::tempdir().unwrap();
    write_fixture(model.path(), &FixtureSpec::default()).unwrap();
    println!(
        "gateway overhead, {MAX_TOKENS}-token completions of the test model on the CPU, {SEQUENTIAL} sequential requests"
    );
    let direct = engine_direct(model.path()).await;
    println!(
        "engine direct:            median {}  p99 {}",
        ms(direct.median),
        ms(direct.p99)
    );
    let mut dbs = vec![("sqlite", TestDb::sqlite().await)];
    if let Some(pg) = TestDb::postgres().await {
        dbs.push(("postgres", pg));
    }
    for (name, test_db) in dbs {
        let p = Arc::new(common::portal(test_db, MODEL, model.path(), |_| {}, 10_000).await);
        let f = floor(&p).await;
        println!(
            "{name:8} HTTP floor (404, no work) median {}  p99 {}",
            ms(f.median),
            ms(f.p99)
        );
        for stream in [false, true] {
            let s = sequential(&p, stream).await;
            println!(
                "{name:8} portal {:10} median {}  p99 {}  overhead median {}  p99 {}",
                if stream { "streaming" } else { "whole" },
                ms(s.median),
                ms(s.p99),
                ms(s.median.saturating_sub(direct.median)),
                ms(s.p99.saturating_sub(direct.p99)),
            );
        }
        let rps = sustained(p.clone()).await;
        println!("{name:8} portal sustained, {CLIENTS} clients: {rps:.0} requests/s");
    }
}
