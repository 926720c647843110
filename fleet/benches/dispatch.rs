//! The same model and load run in-process and through one worker node over NATS on loopback,
//! side by side in one run: time to first token (p50, p99), time between tokens (p50), and
//! tokens per second at 1 and 32 concurrent streams. The node runs in this process on its own
//! engine pool and NATS connection, so the difference is the NATS hop (serialisation, the
//! server, two sockets), not the machine.
//!
//! `cargo bench -p fleet --bench dispatch [-- --shape tiny|smollm2-135m --rounds N]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::fixture::{FixtureSpec, Shape, write_fixture};
use engine::{Event, Pool, Prompt, Request, SamplingParams, WorkerSpec};
use fleet::{Auth, Connect, Enrolled, Enrolment, Fleet, Node, RemoteJob};

const MODEL: &str = "bench";
const TOKENS: usize = 64;

struct AnyToken;

#[async_trait::async_trait]
impl Enrolment for AnyToken {
    async fn enrol(&self, _token: &str) -> Result<Option<Enrolled>, String> {
        Ok(Some(Enrolled {
            token_id: "t".into(),
            factory_id: "bench".into(),
        }))
    }
    async fn revoked(&self, _ids: &[String]) -> Result<Vec<String>, String> {
        Ok(Vec::new())
    }
    async fn priced_models(&self) -> Result<Vec<String>, String> {
        Ok(vec![MODEL.to_string()])
    }
}

/// One stream's times: to its first token, and between its tokens.
struct Stream {
    ttft: Duration,
    gaps: Vec<Duration>,
    tokens: usize,
}

async fn drain(mut events: tokio::sync::mpsc::UnboundedReceiver<Event>, start: Instant) -> Stream {
    let mut last = None;
    let mut s = Stream {
        ttft: Duration::ZERO,
        gaps: Vec::new(),
        tokens: 0,
    };
    while let Some(e) = events.recv().await {
        if let Event::Token { .. } = e {
            let now = Instant::now();
            match last {
                None => s.ttft = now - start,
                Some(l) => s.gaps.push(now - l),
            }
            last = Some(now);
            s.tokens += 1;
        }
    }
    s
}

fn prepared(pool: &Pool, i: usize) -> engine::Prepared {
    let words: Vec<String> = (0..48).map(|w| format!("w{}", (w * 7 + i) % 97)).collect();
    let mut r = Request::new(Prompt::Text(words.join(" ")));
    r.sampling = SamplingParams::greedy();
    r.max_tokens = Some(TOKENS);
    r.ignore_eos = true;
    r.tenant = format!("t{i}");
    pool.worker_for(MODEL).unwrap().prepare(r).unwrap()
}

/// One path's measurements over the rounds.
#[derive(Default)]
struct Totals {
    ttft: Vec<Duration>,
    gaps: Vec<Duration>,
    tokens: usize,
    wall: Duration,
}

/// Where a stream runs.
#[derive(Clone)]
enum Path {
    Local(Arc<Pool>),
    Remote(Fleet),
}

/// `concurrency` clients at once, each submitting and reading its own stream (as a portal's
/// request tasks do).
async fn run(
    path: &Path,
    local: &Arc<Pool>,
    concurrency: usize,
    round: usize,
) -> (Vec<Stream>, Duration) {
    let started = Instant::now();
    let mut handles = Vec::new();
    for i in 0..concurrency {
        let (path, local) = (path.clone(), Arc::clone(local));
        handles.push(tokio::spawn(async move {
            let p = prepared(&local, i);
            let start = Instant::now();
            let generation = match &path {
                Path::Local(pool) => pool.worker_for(MODEL).unwrap().enqueue(p).unwrap(),
                Path::Remote(fleet) => {
                    let id = format!("r{round}c{concurrency}i{i}");
                    let job = RemoteJob {
                        factory_id: "bench",
                        job_id: &id,
                        model: MODEL,
                        prepared: &p,
                        avoid: None,
                        prefer: None,
                    };
                    fleet.submit(job).await.unwrap().0
                }
            };
            drain(generation.events, start).await
        }));
    }
    let mut streams = Vec::new();
    for h in handles {
        streams.push(h.await.unwrap());
    }
    (streams, started.elapsed())
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn spec(dir: &std::path::Path) -> WorkerSpec {
    let mut s = WorkerSpec::new(MODEL, dir);
    s.device = engine::Device::Cpu;
    s.cpu_kv_bytes = 256 << 20;
    s
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let shape = arg("--shape").unwrap_or_else(|| "smollm2-135m".into());
    let rounds: usize = arg("--rounds").map_or(3, |r| r.parse().unwrap());
    let model = tempfile::tempdir().unwrap();
    let fixture = FixtureSpec {
        shape: Shape::parse(&shape).expect("a fixture shape"),
        ..FixtureSpec::default()
    };
    write_fixture(model.path(), &fixture).unwrap();

    let nats = testkit::nats::NatsServer::start();
    let connect = Connect {
        url: nats.url.clone(),
        auth: Auth::None,
    };
    let fleet = Fleet::start(connect.connect("portal").await.unwrap(), Arc::new(AnyToken))
        .await
        .unwrap();
    let local = Arc::new(Pool::start(vec![spec(model.path())]).unwrap());
    let remote_pool = Arc::new(Pool::start(vec![spec(model.path())]).unwrap());
    let token = format!("tmw_bench_{}", "0".repeat(32));
    let node = Node::join(
        connect.connect_node("node", "bench").await.unwrap(),
        token,
        "node".into(),
        remote_pool,
    )
    .await
    .unwrap();
    tokio::spawn(async move { node.serve(std::future::pending()).await });
    while !fleet.serves("bench", MODEL) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    println!(
        "model {shape} (random weights), CPU, {TOKENS} tokens a stream, greedy; {rounds} rounds alternating"
    );
    println!("| streams | path | TTFT p50 ms | TTFT p99 ms | between tokens p50 ms | tokens/s |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for concurrency in [1, 32] {
        let mut results = [
            ("in-process", Totals::default()),
            ("NATS node", Totals::default()),
        ];
        // One round of each first, unmeasured, to warm caches and connections.
        for round in 0..=rounds {
            for (k, path) in [Path::Local(Arc::clone(&local)), Path::Remote(fleet.clone())]
                .iter()
                .enumerate()
            {
                let per_round = if concurrency == 1 { 8 } else { 1 };
                for rep in 0..per_round {
                    let (streams, wall) = run(path, &local, concurrency, round * 100 + rep).await;
                    if round == 0 {
                        continue;
                    }
                    let r = &mut results[k].1;
                    for s in streams {
                        r.ttft.push(s.ttft);
                        r.gaps.extend(s.gaps);
                        r.tokens += s.tokens;
                    }
                    r.wall += wall;
                }
            }
        }
        for (name, t) in results {
            println!(
                "| {concurrency} | {name} | {} | {} | {} | {:.1} |",
                ms(percentile(t.ttft.clone(), 0.5)),
                ms(percentile(t.ttft, 0.99)),
                ms(percentile(t.gaps, 0.5)),
                t.tokens as f64 / t.wall.as_secs_f64()
            );
        }
    }
}
