//! A portal's fleet and worker nodes over a real NATS server (started here on a free port),
//! each node running the tiny test model on the CPU.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::fixture::{FixtureSpec, write_fixture};
use engine::{Event, FinishReason, Pool, Prompt, Request, SamplingParams, SubmitError, WorkerSpec};
use fleet::node::Ended;
use fleet::{Auth, Connect, Enrolled, Enrolment, Fleet, Node, RemoteJob};

const MODEL: &str = "tiny";

struct Nats(testkit::nats::NatsServer);

impl Nats {
    async fn start() -> Nats {
        Nats(testkit::nats::NatsServer::start())
    }

    async fn client(&self, name: &str) -> async_nats::Client {
        Connect {
            url: self.0.url.clone(),
            auth: Auth::None,
        }
        .connect(name)
        .await
        .unwrap()
    }
}

/// Tokens known to the portal: token → (token id, factory), those revoked, and the models
/// priced.
#[derive(Default)]
struct Tokens {
    known: Mutex<HashMap<String, (String, String)>>,
    revoked: Mutex<Vec<String>>,
    priced: Mutex<Vec<String>>,
}

impl Tokens {
    /// The tiny model priced, no tokens yet.
    fn new() -> Arc<Tokens> {
        let tokens = Tokens::default();
        tokens.priced.lock().unwrap().push(MODEL.to_string());
        Arc::new(tokens)
    }

    fn issue(&self, id: &str, factory: &str) -> String {
        let token = format!("tmw_{factory}_{:0>32}", id);
        self.known
            .lock()
            .unwrap()
            .insert(token.clone(), (id.to_string(), factory.to_string()));
        token
    }
}

#[async_trait::async_trait]
impl Enrolment for Tokens {
    async fn enrol(&self, token: &str) -> Result<Option<Enrolled>, String> {
        let revoked = self.revoked.lock().unwrap().clone();
        Ok(self
            .known
            .lock()
            .unwrap()
            .get(token)
            .filter(|(id, _)| !revoked.contains(id))
            .map(|(id, f)| Enrolled {
                token_id: id.clone(),
                factory_id: f.clone(),
            }))
    }

    async fn revoked(&self, ids: &[String]) -> Result<Vec<String>, String> {
        let revoked = self.revoked.lock().unwrap();
        Ok(ids
            .iter()
            .filter(|i| revoked.contains(i))
            .cloned()
            .collect())
    }

    async fn priced_models(&self) -> Result<Vec<String>, String> {
        Ok(self.priced.lock().unwrap().clone())
    }
}

/// A node serving in this process until `_stop` fires or is dropped. Its engine pool lives
/// as long as this does, so that aborting `serving` cuts the node off the wire without
/// ending its sequences (as a lost connection does).
struct RunningNode {
    _stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<Ended>,
    client: async_nats::Client,
    _pool: Arc<Pool>,
}

struct World {
    nats: Nats,
    tokens: Arc<Tokens>,
    fleet: Fleet,
    _model: tempfile::TempDir,
    model_dir: std::path::PathBuf,
    /// A pool of this process, to prepare requests as a portal does.
    local: Arc<Pool>,
}

fn spec(dir: &std::path::Path) -> WorkerSpec {
    let mut spec = WorkerSpec::new(MODEL, dir);
    spec.device = engine::Device::Cpu;
    spec.threads = 1;
    spec.cpu_kv_bytes = 4 << 20;
    spec
}

impl World {
    async fn new() -> World {
        let nats = Nats::start().await;
        let model = tempfile::tempdir().unwrap();
        write_fixture(model.path(), &FixtureSpec::default()).unwrap();
        let tokens = Tokens::new();
        let fleet = Fleet::start(nats.client("portal").await, tokens.clone())
            .await
            .unwrap();
        let local = Arc::new(Pool::start(vec![spec(model.path())]).unwrap());
        World {
            nats,
            tokens,
            fleet,
            model_dir: model.path().to_path_buf(),
            _model: model,
            local,
        }
    }

    /// A node serving the tiny model for the factory `token` names, for as long as the
    /// returned handle lives.
    async fn node(&self, token: &str, name: &str) -> RunningNode {
        let pool = Arc::new(Pool::start(vec![spec(&self.model_dir)]).unwrap());
        let client = self.nats.client(name).await;
        let node = Node::join(
            client.clone(),
            token.to_string(),
            name.to_string(),
            pool.clone(),
        )
        .await
        .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(async move {
            node.serve(async {
                let _ = stopped.await;
            })
            .await
            .unwrap()
        });
        RunningNode {
            _stop: stop,
            serving,
            client,
            _pool: pool,
        }
    }

    fn prepared(&self, max_tokens: usize) -> engine::Prepared {
        let mut r = Request::new(Prompt::Text("the quick brown fox".into()));
        r.sampling = SamplingParams::greedy();
        r.max_tokens = Some(max_tokens);
        r.ignore_eos = true;
        r.tenant = "t1".into();
        self.local.worker_for(MODEL).unwrap().prepare(r).unwrap()
    }

    async fn until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < until, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A job of the tiny model for `factory`'s nodes.
fn job<'a>(factory: &'a str, id: &'a str, prepared: &'a engine::Prepared) -> RemoteJob<'a> {
    RemoteJob {
        factory_id: factory,
        job_id: id,
        model: MODEL,
        prepared,
        avoid: None,
        prefer: None,
    }
}

fn tokens_of(events: &[Event]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Token { token, .. } => Some(*token),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_factorys_jobs_run_on_its_own_nodes_and_match_a_local_run() {
    let w = World::new().await;
    let (ta, tb) = (w.tokens.issue("a", "fa"), w.tokens.issue("b", "fb"));
    let _a = w.node(&ta, "node-a").await;
    let _b = w.node(&tb, "node-b").await;
    w.until("both nodes are live", || {
        w.fleet.serves("fa", MODEL) && w.fleet.serves("fb", MODEL)
    })
    .await;

    let prepared = w.prepared(12);
    let local = w
        .local
        .worker_for(MODEL)
        .unwrap()
        .enqueue(w.prepared(12))
        .unwrap()
        .collect()
        .await;
    for (factory, node) in [("fa", "node-a"), ("fb", "node-b")] {
        let (generation, placement) = w
            .fleet
            .submit(job(factory, &format!("job-{factory}"), &prepared))
            .await
            .unwrap();
        assert_eq!(placement.node, node);
        assert_eq!(placement.device, "cpu");
        let events = generation.collect().await;
        assert_eq!(
            tokens_of(&events),
            tokens_of(&local),
            "greedy output as run here"
        );
        match events.last() {
            Some(Event::Finished(f)) => {
                assert_eq!(f.completion_tokens, 12);
                assert_eq!(f.reason, FinishReason::Length);
            }
            other => panic!("ended with {other:?}"),
        }
    }
    // A factory with no node of its own gets nothing, whatever other factories have.
    assert!(matches!(
        w.fleet.submit(job("fc", "job-fc", &prepared)).await,
        Err(SubmitError::Unavailable)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_of_one_factory_share_its_jobs() {
    let w = World::new().await;
    let t = w.tokens.issue("a", "fa");
    let _one = w.node(&t, "one").await;
    let _two = w.node(&t, "two").await;
    w.until("both nodes are live", || w.fleet.list(None).len() == 2)
        .await;
    let prepared = w.prepared(40);
    let mut running = Vec::new();
    for i in 0..6 {
        running.push(
            w.fleet
                .submit(job("fa", &format!("job{i}"), &prepared))
                .await
                .unwrap(),
        );
    }
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for (g, p) in running {
        *per_node.entry(p.node).or_default() += 1;
        assert!(matches!(g.collect().await.last(), Some(Event::Finished(_))));
    }
    assert_eq!(per_node.len(), 2, "{per_node:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_do_not_enrol_into_the_subjects_factory_are_refused() {
    let w = World::new().await;
    let tb = w.tokens.issue("b", "fb");
    // Unknown token: the node is refused at its announcement.
    let pool = Arc::new(Pool::start(vec![spec(&w.model_dir)]).unwrap());
    let unknown = format!("tmw_fa_{}", "x".repeat(32));
    let joined = Node::join(w.nats.client("n").await, unknown, "n".into(), pool).await;
    assert!(
        matches!(joined, Err(fleet::FleetError::Refused(_))),
        "{:?}",
        joined.err()
    );

    // Factory B's token announced on factory A's subject.
    let client = w.nats.client("intruder").await;
    let report = fleet::protocol::NodeReport {
        token: tb,
        node: "intruder".into(),
        boot: "1".into(),
        version: "0".into(),
        devices: vec![],
        engines: vec![fleet::protocol::EngineReport {
            index: 0,
            model: MODEL.into(),
            device: "cpu".into(),
            state: "ready".into(),
            waiting: 0,
            running: 0,
            kv_blocks_used: 0,
            kv_blocks_total: 1,
            tokens_generated: 0,
            loaded_percent: 100,
        }],
    };
    let reply = client
        .request(
            fleet::protocol::Subjects::new("fa").announce(),
            fleet::protocol::encode(&report),
        )
        .await
        .unwrap();
    let answer: fleet::protocol::AnnounceReply = fleet::protocol::decode(&reply.payload).unwrap();
    assert_eq!(
        answer,
        fleet::protocol::AnnounceReply::Refused(
            "the worker token belongs to another factory".into()
        )
    );
    assert!(!w.fleet.serves("fa", MODEL));
    assert!(w.fleet.list(None).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_tokens_node_is_dropped_and_stops() {
    let w = World::new().await;
    let t = w.tokens.issue("a", "fa");
    let node = w.node(&t, "node-a").await;
    w.until("the node is live", || w.fleet.serves("fa", MODEL))
        .await;
    w.tokens.revoked.lock().unwrap().push("a".into());
    let ended = tokio::time::timeout(Duration::from_secs(5), node.serving)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended, Ended::Refused);
    assert!(!w.fleet.serves("fa", MODEL));
    assert!(matches!(
        w.fleet.submit(job("fa", "late", &w.prepared(4))).await,
        Err(SubmitError::Unavailable)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_frees_its_sequence_on_the_node() {
    let w = World::new().await;
    let t = w.tokens.issue("a", "fa");
    let _node = w.node(&t, "node-a").await;
    w.until("the node is live", || w.fleet.serves("fa", MODEL))
        .await;
    let (mut generation, _) = w
        .fleet
        .submit(job("fa", "long", &w.prepared(400)))
        .await
        .unwrap();
    // A few tokens, then the client goes away.
    for _ in 0..3 {
        assert!(matches!(
            generation.events.recv().await,
            Some(Event::Token { .. })
        ));
    }
    drop(generation);
    // (running, KV blocks in use, tokens generated) as the node reports them.
    let engine_load = |w: &World| {
        w.fleet.list(None)[0]
            .engines
            .iter()
            .map(|e| (e.running, e.kv_blocks_used, e.tokens_generated))
            .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
    };
    w.until("the node's report shows its blocks freed", || {
        let (running, blocks, generated) = engine_load(&w);
        running == 0 && blocks == 0 && generated > 0
    })
    .await;
    let generated = engine_load(&w).2;
    assert!(
        generated < 400,
        "the sequence ran to its end ({generated} tokens): not cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_goes_silent_ends_its_jobs_with_an_error() {
    let w = World::new().await;
    let t = w.tokens.issue("a", "fa");
    let node = w.node(&t, "node-a").await;
    w.until("the node is live", || w.fleet.serves("fa", MODEL))
        .await;
    let (mut generation, _) = w
        .fleet
        .submit(job("fa", "cut", &w.prepared(400)))
        .await
        .unwrap();
    assert!(matches!(
        generation.events.recv().await,
        Some(Event::Token { .. })
    ));
    // Cut off: no goodbye, no more heartbeats, nothing more on the wire.
    node.serving.abort();
    node.client.drain().await.unwrap();
    let cut_at = Instant::now();
    let last = loop {
        match generation.events.recv().await {
            Some(Event::Token { .. }) => continue,
            other => break other,
        }
    };
    match last {
        Some(Event::Failed(m)) => assert!(m.contains("node-a"), "{m}"),
        other => panic!("ended with {other:?}"),
    }
    assert!(cut_at.elapsed() < fleet::dispatch::DEAD_AFTER + Duration::from_secs(2));
}

/// The documented NATS configuration (docs/nats-fleet.conf) with factories `fa` and `fb`.
fn documented_config() -> String {
    let conf = include_str!("../../docs/nats-fleet.conf");
    conf.replace("FACTORY_A", "fa")
        .replace("FACTORY_B", "fb")
        .replace("PORTAL_PASSWORD", "p0rtal")
        .replace("SAVANNA_PASSWORD", "s4vanna")
        .replace("FJORD_PASSWORD", "fj0rd")
}

fn as_user(nats: &testkit::nats::NatsServer, user: &str, password: &str) -> Connect {
    Connect {
        url: format!("nats://{user}:{password}@127.0.0.1:{}", nats.port),
        auth: Auth::None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partners_nats_user_reaches_only_its_own_factorys_subjects() {
    let nats = testkit::nats::NatsServer::with_config(Some(&documented_config()));
    let tokens = Tokens::new();
    let portal = as_user(&nats, "portal", "p0rtal")
        .connect("portal")
        .await
        .unwrap();
    let fleet = Fleet::start(portal, tokens.clone()).await.unwrap();
    let model = tempfile::tempdir().unwrap();
    write_fixture(model.path(), &FixtureSpec::default()).unwrap();

    // Savanna's node, on Savanna's user, works end to end.
    let ta = tokens.issue("a", "fa");
    let client = as_user(&nats, "savanna", "s4vanna")
        .connect_node("node-a", "fa")
        .await
        .unwrap();
    let pool = Arc::new(Pool::start(vec![spec(model.path())]).unwrap());
    let node = Node::join(client, ta, "node-a".into(), pool.clone())
        .await
        .unwrap();
    let _serving = tokio::spawn(async move { node.serve(std::future::pending()).await });
    let until = Instant::now() + Duration::from_secs(10);
    while !fleet.serves("fa", MODEL) {
        assert!(Instant::now() < until, "Savanna's node never joined");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut r = Request::new(Prompt::Tokens(vec![1, 2, 3]));
    r.sampling = SamplingParams::greedy();
    r.max_tokens = Some(4);
    let prepared = pool.worker_for(MODEL).unwrap().prepare(r).unwrap();
    let (generation, _) = fleet.submit(job("fa", "j1", &prepared)).await.unwrap();
    assert!(matches!(
        generation.collect().await.last(),
        Some(Event::Finished(_))
    ));

    // Fjord's user hears nothing of Savanna's factory, though its node heartbeats four
    // times a second, and cannot announce into it.
    let fjord = as_user(&nats, "fjord", "fj0rd")
        .connect("fjord")
        .await
        .unwrap();
    let mut snoop = fjord.subscribe("tokenmill.fa.>").await.unwrap();
    let heard = tokio::time::timeout(
        Duration::from_secs(1),
        futures_util::StreamExt::next(&mut snoop),
    )
    .await;
    assert!(heard.is_err(), "Fjord's user received {heard:?}");
    let tb = tokens.issue("b", "fb");
    let report = fleet::protocol::NodeReport {
        token: tb,
        node: "intruder".into(),
        boot: "1".into(),
        version: "0".into(),
        devices: vec![],
        engines: vec![],
    };
    let asked = fjord.request(
        fleet::protocol::Subjects::new("fa").announce(),
        fleet::protocol::encode(&report),
    );
    let answered = tokio::time::timeout(Duration::from_secs(1), asked).await;
    assert!(
        !matches!(answered, Ok(Ok(_))),
        "Fjord's user announced into Savanna's factory"
    );
    assert_eq!(fleet.list(None).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_resumes_by_itself_after_the_nats_server_restarts() {
    let mut w = World::new().await;
    let t = w.tokens.issue("a", "fa");
    let _node = w.node(&t, "node-a").await;
    w.until("the node is live", || w.fleet.serves("fa", MODEL))
        .await;
    w.nats.0.stop();
    w.until("the node is seen gone", || !w.fleet.serves("fa", MODEL))
        .await;
    w.nats.0.resume();
    let restarted = Instant::now();
    let prepared = w.prepared(4);
    let finished = loop {
        if let Ok((g, _)) = w
            .fleet
            .submit(job(
                "fa",
                &format!("after{}", restarted.elapsed().as_millis()),
                &prepared,
            ))
            .await
            && let Some(Event::Finished(f)) = g.collect().await.last()
        {
            break f.clone();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "no job served within 10 s of the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(finished.completion_tokens, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_full_queue_is_overloaded_not_unavailable() {
    let w = World::new().await;
    let t = w.tokens.issue("a", "fa");
    // One running and one waiting at most.
    let mut s = spec(&w.model_dir);
    s.max_running = 1;
    s.max_waiting = 1;
    let pool = Arc::new(Pool::start(vec![s]).unwrap());
    let client = w.nats.client("small").await;
    let node = Node::join(client, t, "small".into(), pool).await.unwrap();
    let _serving = tokio::spawn(async move { node.serve(std::future::pending()).await });
    w.until("the node is live", || w.fleet.serves("fa", MODEL))
        .await;
    let prepared = w.prepared(400);
    let mut held = Vec::new();
    let mut refused = None;
    for i in 0..4 {
        match w.fleet.submit(job("fa", &format!("q{i}"), &prepared)).await {
            Ok(g) => held.push(g),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert_eq!(
        refused,
        Some(SubmitError::Overloaded),
        "after {} accepted",
        held.len()
    );
    assert!(held.len() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_only_models_with_a_price() {
    let w = World::new().await;
    let t = w.tokens.issue("a", "fa");
    let other = || {
        let mut s = spec(&w.model_dir);
        s.model_id = "other".into();
        s
    };
    // A node with no priced model is refused at its announcement, saying why.
    let pool = Arc::new(Pool::start(vec![other()]).unwrap());
    let joined = Node::join(w.nats.client("n").await, t.clone(), "n".into(), pool).await;
    match joined {
        Err(fleet::FleetError::Refused(why)) => {
            assert!(why.contains("(other)") && why.contains("price"), "{why}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a node of unpriced models joined"),
    }

    // With one priced model it joins; the unpriced engine gets no jobs until it is priced.
    let pool = Arc::new(Pool::start(vec![spec(&w.model_dir), other()]).unwrap());
    let node = Node::join(w.nats.client("m").await, t, "m".into(), pool)
        .await
        .unwrap();
    let _serving = tokio::spawn(async move { node.serve(std::future::pending()).await });
    w.until("the node is live", || w.fleet.serves("fa", MODEL))
        .await;
    assert!(!w.fleet.serves("fa", "other"));
    let states: Vec<(String, String)> = w.fleet.list(None)[0]
        .engines
        .iter()
        .map(|e| (e.model.clone(), e.state.clone()))
        .collect();
    assert_eq!(
        states,
        [
            (MODEL.to_string(), "ready".to_string()),
            ("other".to_string(), "unpriced".to_string())
        ]
    );
    let prepared = w.prepared(2);
    let mut unpriced = job("fa", "u1", &prepared);
    unpriced.model = "other";
    assert!(matches!(
        w.fleet.submit(unpriced).await,
        Err(SubmitError::Unavailable)
    ));
    w.tokens.priced.lock().unwrap().push("other".into());
    w.until("the other model is served", || {
        w.fleet.serves("fa", "other")
    })
    .await;
}
