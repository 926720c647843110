//! Bounded load: the portal at twice its capacity. First the capacity: closed-loop clients,
//! as many as the worker runs and queues, for a fixed time (requests per second, latency).
//! Then arrivals at twice that rate, open loop (each request sent on schedule whether or not
//! earlier ones were answered), for a fixed time: how many are accepted, how fast the rest get
//! 429 with `Retry-After`, the latency of the accepted ones against the capacity run, and the
//! process's resident memory throughout. Loopback only; the test model on the CPU; SQLite, and
//! PostgreSQL too when `TEST_DATABASE_URL` is set.
//!
//! `cargo bench -p server --bench load` (add `TEST_DATABASE_URL=postgres://…` for both).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::Portal;
use db::testing::TestDb;
use engine::fixture::{FixtureSpec, write_fixture};
use serde_json::json;

const MODEL: &str = "tiny";
const MAX_TOKENS: usize = 32;
const MAX_RUNNING: usize = 16;
const MAX_WAITING: usize = 32;
const PHASE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Ok(Duration),
    /// 429 with `Retry-After`.
    Refused(Duration),
    /// Anything else (counted; there should be none).
    Other(u16),
}

async fn one(http: &reqwest::Client, p: &Portal) -> Outcome {
    let t = Instant::now();
    let r = http
        .post(format!("{}/v1/completions", p.base))
        .bearer_auth(&p.key)
        .json(
            &json!({"model": MODEL, "prompt": "The mill turns", "max_tokens": MAX_TOKENS,
                      "temperature": 0, "ignore_eos": true}),
        )
        .send()
        .await;
    let Ok(r) = r else {
        return Outcome::Other(0);
    };
    let status = r.status().as_u16();
    let retry_after = r.headers().contains_key("retry-after");
    let _ = r.bytes().await;
    match status {
        200 => Outcome::Ok(t.elapsed()),
        429 if retry_after => Outcome::Refused(t.elapsed()),
        s => Outcome::Other(s),
    }
}

/// Resident memory of this process (server and clients), in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Samples the resident memory every 100 ms while `f` runs; returns its result and the peak.
async fn with_peak_rss<T>(f: impl std::future::Future<Output = T>) -> (T, f64) {
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max((rss_mib() * 1024.0) as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let out = f.await;
    sampler.abort();
    (out, peak.load(Ordering::Relaxed) as f64 / 1024.0)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

struct Summary {
    ok: Vec<Duration>,
    refused: Vec<Duration>,
    /// Statuses of anything else (0: no answer).
    other: Vec<u16>,
}

fn summarise(outcomes: &[Outcome]) -> Summary {
    let mut s = Summary {
        ok: Vec::new(),
        refused: Vec::new(),
        other: Vec::new(),
    };
    for o in outcomes {
        match *o {
            Outcome::Ok(d) => s.ok.push(d),
            Outcome::Refused(d) => s.refused.push(d),
            Outcome::Other(status) => s.other.push(status),
        }
    }
    s.ok.sort();
    s.refused.sort();
    s
}

/// Closed loop: as many clients as the worker runs and queues, for `PHASE`.
async fn capacity(p: Arc<Portal>) -> (Summary, f64) {
    let http = reqwest::Client::new();
    let start = Instant::now();
    let tasks: Vec<_> = (0..MAX_RUNNING + MAX_WAITING)
        .map(|_| {
            let (http, p) = (http.clone(), p.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while start.elapsed() < PHASE {
                    seen.push(one(&http, &p).await);
                }
                seen
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let s = summarise(&all);
    let rate = s.ok.len() as f64 / start.elapsed().as_secs_f64();
    (s, rate)
}

/// Open loop: arrivals every `1 / rate` seconds for `PHASE`, each on its own task.
async fn open_loop(p: Arc<Portal>, rate: f64) -> (Summary, f64) {
    let http = reqwest::Client::new();
    let gap = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    let mut n = 0u32;
    while start.elapsed() < PHASE {
        let (http, p) = (http.clone(), p.clone());
        tasks.push(tokio::spawn(async move { one(&http, &p).await }));
        n += 1;
        tokio::time::sleep_until(start + gap * n).await;
    }
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await.unwrap());
    }
    let s = summarise(&all);
    let accepted_rate = s.ok.len() as f64 / start.elapsed().as_secs_f64();
    (s, accepted_rate)
}

#[tokio::main]
async fn main() {
    let model = tempfile::tempdir().unwrap();
    write_fixture(model.path(), &FixtureSpec::default()).unwrap();
    println!(
        "bounded load: {MAX_TOKENS}-token completions of the test model on the CPU; worker runs {MAX_RUNNING} and queues {MAX_WAITING}; {} s per phase",
        PHASE.as_secs()
    );
    let mut dbs = vec![("sqlite", TestDb::sqlite().await)];
    if let Some(pg) = TestDb::postgres().await {
        dbs.push(("postgres", pg));
    }
    for (name, test_db) in dbs {
        let p = Arc::new(
            common::portal(
                test_db,
                MODEL,
                model.path(),
                |e| {
                    e.max_running = MAX_RUNNING;
                    e.max_waiting = MAX_WAITING;
                },
                100_000,
            )
            .await,
        );
        let idle = rss_mib();
        let ((cap, rate), cap_peak) = with_peak_rss(capacity(p.clone())).await;
        println!(
            "{name:8} capacity: {rate:.1} req/s ({} clients closed loop), latency p50 {:.1} ms p99 {:.1} ms, other answers {:?}; RSS idle {idle:.0} MiB, peak {cap_peak:.0} MiB",
            MAX_RUNNING + MAX_WAITING,
            pct(&cap.ok, 0.5),
            pct(&cap.ok, 0.99),
            cap.other,
        );
        let offered = 2.0 * rate;
        let ((over, accepted), over_peak) = with_peak_rss(open_loop(p.clone(), offered)).await;
        let total = over.ok.len() + over.refused.len() + over.other.len();
        println!(
            "{name:8} 2x offered {offered:.1} req/s: {total} sent, {} accepted ({accepted:.1} req/s, latency p50 {:.1} ms p99 {:.1} ms), {} refused 429 + Retry-After ({:.1} %, answered in p50 {:.2} ms p99 {:.2} ms), other {:?}; RSS peak {over_peak:.0} MiB, after {:.0} MiB",
            over.ok.len(),
            pct(&over.ok, 0.5),
            pct(&over.ok, 0.99),
            over.refused.len(),
            100.0 * over.refused.len() as f64 / total.max(1) as f64,
            pct(&over.refused, 0.5),
            pct(&over.refused, 0.99),
            over.other,
            rss_mib(),
        );
    }
}
