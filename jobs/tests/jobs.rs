//! Jobs on real databases (SQLite always, PostgreSQL with `TEST_DATABASE_URL`) and the real
//! engine (the fixture model on the CPU): admission refusals leave nothing behind, a finished
//! job is charged exactly its tokens at list price and recorded once with its funding split,
//! a cancelled or abandoned one only what was delivered; production overtakes queued batch jobs
//! and tenants share a contended worker in proportion to their allocation weights.

use std::sync::Arc;
use std::time::{Duration, Instant};

use accounts::{OrgKind, User};
use compute::Compute;
use credits::{Credits, ProgramSpec};
use db::sqlx::Row;
use db::testing::TestDb;
use engine::fixture::{FixtureSpec, Shape, write_fixture};
use engine::{Event, Pool, Prompt, Request, SamplingParams, WorkerSpec};
use jobs::{Charged, JobError, JobKind, Jobs, Principal, Rates};
use ledger::Nanos;
use testkit::Platform;

const MODEL: &str = "tiny";
// $2 per million input tokens, $6 per million output tokens.
const INPUT: &str = "2";
const OUTPUT: &str = "6";
const RATES: Rates = Rates {
    input_nanos_per_mtok: 2_000_000_000,
    output_nanos_per_mtok: 6_000_000_000,
};

struct World {
    _model: tempfile::TempDir,
    platform: Platform,
    db: db::Db,
    credits: Credits,
    jobs: Jobs,
    tenant: User,
    operator: User,
    compute: Compute,
    factory_id: String,
}

async fn world(db: &db::Db) -> World {
    world_with(db, Shape::Tiny, |_| {}).await
}

/// A world whose model has `shape`, its worker configured by `configure`.
async fn world_with(db: &db::Db, shape: Shape, configure: impl FnOnce(&mut WorkerSpec)) -> World {
    let model = tempfile::tempdir().unwrap();
    let fixture = FixtureSpec {
        shape,
        ..FixtureSpec::default()
    };
    write_fixture(model.path(), &fixture).unwrap();
    let mut spec = WorkerSpec::new(MODEL, model.path());
    spec.device = engine::Device::Cpu;
    spec.threads = 1;
    spec.cpu_kv_bytes = 4 << 20;
    spec.max_waiting = 4;
    configure(&mut spec);
    let pool = Arc::new(Pool::start(vec![spec]).unwrap());

    let platform = Platform::new(db).await;
    let partner = platform.partner("Savanna Cloud").await;
    let factory = platform.factory(&partner.org_id, "Nairobi 1", MODEL).await;
    let tenant = platform.tenant("dev@startup.example", "startup").await;
    let Platform {
        credits,
        compute,
        operator,
        ..
    } = platform.clone();
    credits.open_wallet(&tenant.org_id).await.unwrap();
    World {
        _model: model,
        db: db.clone(),
        jobs: Jobs::new(db.clone(), credits.clone(), compute.clone(), Some(pool)),
        credits,
        tenant,
        operator,
        compute,
        factory_id: factory.id,
        platform,
    }
}

impl World {
    /// Gives `user`'s organisation an approved, active allocation of the model with this share
    /// weight.
    async fn allocate(&self, user: &User, weight: u32, tokens_per_minute: u32) {
        self.platform
            .allocate(user, &self.factory_id, MODEL, (weight, tokens_per_minute))
            .await;
    }

    /// Another tenant organisation, with $10 of paid credit.
    async fn second_tenant(&self) -> User {
        let user = self.platform.tenant("dev@other.example", "startup").await;
        self.credits.open_wallet(&user.org_id).await.unwrap();
        self.credits
            .credit_paid(
                &user.org_id,
                Nanos::from_dollars(10).unwrap(),
                &format!("topup:{}", db::new_id()),
                "test top-up",
            )
            .await
            .unwrap();
        user
    }

    fn who(&self) -> Principal {
        Principal {
            org_id: self.tenant.org_id.clone(),
            user_id: Some(self.tenant.id.clone()),
            api_key_id: None,
            recheck_key: false,
        }
    }

    async fn price(&self) {
        self.compute
            .set_price(&self.operator, MODEL, INPUT, OUTPUT)
            .await
            .unwrap();
    }

    async fn top_up(&self, dollars: i64) {
        self.credits
            .credit_paid(
                &self.tenant.org_id,
                Nanos::from_dollars(dollars).unwrap(),
                &format!("topup:{}", db::new_id()),
                "test top-up",
            )
            .await
            .unwrap();
    }

    async fn available(&self) -> Nanos {
        self.credits
            .wallet(&self.tenant.org_id, db::now_ms())
            .await
            .unwrap()
            .available()
    }

    async fn count(&self, sql: &str) -> i64 {
        db::sqlx::query(sql)
            .fetch_one(self.db.pool())
            .await
            .unwrap()
            .try_get::<i64, _>(0)
            .unwrap()
    }

    async fn open_holds(&self) -> i64 {
        self.count("SELECT COUNT(*) FROM ledger_holds WHERE status = 'open'")
            .await
    }
}

fn request(max_tokens: usize) -> Request {
    let mut r = Request::new(Prompt::Text("The mill turns".into()));
    r.sampling = SamplingParams::greedy();
    r.max_tokens = Some(max_tokens);
    r.ignore_eos = true;
    r
}

async fn each_db(test: impl AsyncFn(&World)) {
    each_db_with(Shape::Tiny, |_| {}, test).await
}

/// `test` on every backend, in a world whose model has `shape` (see [`world_with`]).
async fn each_db_with(
    shape: Shape,
    configure: impl Fn(&mut WorkerSpec),
    test: impl AsyncFn(&World),
) {
    for t in TestDb::all().await {
        let w = world_with(&t.db, shape, &configure).await;
        test(&w).await;
        w.jobs.pool().unwrap().workers()[0].stop();
        t.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_leave_no_job_and_no_hold() {
    each_db(async |w: &World| {
        // Not priced: not sold, whatever the pool serves.
        let e = w
            .jobs
            .start(&w.who(), JobKind::Production, MODEL, request(4))
            .await;
        assert!(matches!(e, Err(JobError::UnknownModel(_))), "{e:?}");
        w.price().await;
        let e = w
            .jobs
            .start(&w.who(), JobKind::Production, "nope", request(4))
            .await;
        assert!(matches!(e, Err(JobError::UnknownModel(_))), "{e:?}");
        // No credit at all.
        let e = w
            .jobs
            .start(&w.who(), JobKind::Production, MODEL, request(4))
            .await;
        let Err(JobError::InsufficientCredits { needed, available }) = e else {
            panic!("{e:?}")
        };
        assert_eq!(available, Nanos::new(0));
        assert!(needed.get() > 0);
        // Bad parameters and a request beyond the context are refused before any hold.
        w.top_up(5).await;
        let mut bad = request(4);
        bad.sampling.temperature = -1.0;
        let e = w
            .jobs
            .start(&w.who(), JobKind::Production, MODEL, bad)
            .await;
        assert!(
            matches!(
                e,
                Err(JobError::Invalid {
                    param: "temperature",
                    ..
                })
            ),
            "{e:?}"
        );
        let e = w
            .jobs
            .start(&w.who(), JobKind::Production, MODEL, request(1 << 20))
            .await;
        assert!(matches!(e, Err(JobError::ContextLength { .. })), "{e:?}");
        assert_eq!(w.count("SELECT COUNT(*) FROM jobs").await, 0);
        assert_eq!(w.count("SELECT COUNT(*) FROM ledger_holds").await, 0);
        assert_eq!(w.available().await, Nanos::from_dollars(5).unwrap());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_is_charged_exactly_once_with_its_funding_split() {
    each_db(async |w: &World| {
        w.price().await;
        // A $0.0001 grant burns first, then paid credit.
        let grant = w.grant("Tiny support", Nanos::new(100_000)).await;
        w.top_up(1).await;
        let before = w.available().await;
        let job = w
            .jobs
            .start(&w.who(), JobKind::Production, MODEL, request(12))
            .await
            .unwrap();
        let prompt = job.prompt_tokens();
        // While it runs, the hold reserves its largest cost.
        assert_eq!(
            before.get() - w.available().await.get(),
            RATES.cost(prompt as u64, 12).unwrap().get()
        );
        let (events, receipt) = job.collect().await.unwrap();
        let Some(Event::Finished(f)) = events.last() else {
            panic!("no finish")
        };
        assert_eq!(receipt.charged, Charged::Complete);
        assert_eq!((receipt.prompt_tokens, receipt.completion_tokens), (f.prompt_tokens, 12));
        let cost = RATES.cost(prompt as u64, 12).unwrap();
        assert_eq!(receipt.amount, cost);
        assert_eq!(before.get() - w.available().await.get(), cost.get());
        assert_eq!(w.open_holds().await, 0);
        let e = db::sqlx::query(
            "SELECT prompt_tokens, completion_tokens, amount, paid_amount, partial, factory_id, device_us \
             FROM usage_events WHERE job_id = $1",
        )
        .bind(&receipt.job_id)
        .fetch_one(w.db.pool())
        .await
        .unwrap();
        assert_eq!(e.try_get::<i64, _>("prompt_tokens").unwrap(), prompt as i64);
        assert_eq!(e.try_get::<i64, _>("completion_tokens").unwrap(), 12);
        assert_eq!(e.try_get::<i64, _>("amount").unwrap(), cost.get());
        assert_eq!(e.try_get::<i64, _>("partial").unwrap(), 0);
        assert_eq!(e.try_get::<String, _>("factory_id").unwrap(), w.factory_id);
        assert!(e.try_get::<i64, _>("device_us").unwrap() > 0);
        // The grant paid what it could, paid credit the rest.
        let from_grant = cost.get().min(100_000);
        assert_eq!(e.try_get::<i64, _>("paid_amount").unwrap(), cost.get() - from_grant);
        let g = db::sqlx::query("SELECT grant_id, amount FROM usage_event_grants")
            .fetch_all(w.db.pool())
            .await
            .unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].try_get::<String, _>("grant_id").unwrap(), grant.id);
        assert_eq!(g[0].try_get::<i64, _>("amount").unwrap(), from_grant);
        let status = db::sqlx::query("SELECT status FROM jobs WHERE id = $1")
            .bind(&receipt.job_id)
            .fetch_one(w.db.pool())
            .await
            .unwrap()
            .try_get::<String, _>("status")
            .unwrap();
        assert_eq!(status, "succeeded");
        assert_eq!(w.credits.ledger().verify().await.unwrap(), Ok(()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn choices_are_held_for_together_and_pay_for_the_prompt_once() {
    each_db(async |w: &World| {
        w.price().await;
        let info = w.jobs.model_info(MODEL).unwrap();
        let prompt = info.prepare(request(12)).unwrap().prompt_tokens() as u64;
        let first = RATES.cost(prompt, 12).unwrap().get();
        let later = RATES.cost(0, 12).unwrap().get();
        let sampled = || {
            let mut r = request(12);
            r.sampling = SamplingParams {
                temperature: 1.0,
                seed: Some(3),
                ..SamplingParams::default()
            };
            r
        };
        // Enough for two choices' holds, not three: none is held, recorded or run.
        let funded = Nanos::new(first + later + 1_000);
        w.credits
            .credit_paid(&w.tenant.org_id, funded, "topup:choices", "test top-up")
            .await
            .unwrap();
        let e = w
            .jobs
            .start_choices(&w.who(), JobKind::Production, MODEL, sampled(), 3)
            .await;
        assert!(
            matches!(e, Err(JobError::InsufficientCredits { .. })),
            "{e:?}"
        );
        assert_eq!(w.count("SELECT COUNT(*) FROM jobs").await, 0);
        assert_eq!(w.open_holds().await, 0);
        assert_eq!(w.available().await, funded);

        w.top_up(1).await;
        let before = w.available().await;
        let choices = w
            .jobs
            .start_choices(&w.who(), JobKind::Production, MODEL, sampled(), 3)
            .await
            .unwrap();
        // Held for together: the prompt once, each choice's output.
        assert_eq!(before.get() - w.available().await.get(), first + 2 * later);
        let mut receipts = Vec::new();
        for job in choices {
            receipts.push(job.collect().await.unwrap().1);
        }
        let charged: Vec<_> = receipts
            .iter()
            .map(|r| (r.charged.clone(), r.prompt_tokens, r.completion_tokens))
            .collect();
        assert_eq!(
            charged,
            [
                (Charged::Complete, prompt as usize, 12),
                (Charged::Complete, 0, 12),
                (Charged::Complete, 0, 12)
            ]
        );
        assert_eq!(before.get() - w.available().await.get(), first + 2 * later);
        assert_eq!(
            w.count("SELECT CAST(SUM(prompt_tokens) AS BIGINT) FROM usage_events")
                .await,
            prompt as i64
        );
        assert_eq!(w.open_holds().await, 0);
        assert_eq!(w.credits.ledger().verify().await.unwrap(), Ok(()));

        // More choices than the worker's queue takes (4 waiting; the later choices wait for
        // the first to compute their long prompt): those queued are withdrawn, nothing is
        // charged, nothing stays held.
        let before = w.available().await;
        let mut long = sampled();
        long.prompt =
            Prompt::Text("The mill turns the wheel by the river all day long. ".repeat(4));
        let e = w
            .jobs
            .start_choices(&w.who(), JobKind::Production, MODEL, long, 8)
            .await;
        assert!(matches!(e, Err(JobError::Overloaded)), "{e:?}");
        assert_eq!(w.open_holds().await, 0);
        assert_eq!(w.available().await, before);
        assert_eq!(
            w.count("SELECT COUNT(*) FROM jobs WHERE status = 'running'")
                .await,
            0
        );
        assert_eq!(w.count("SELECT COUNT(*) FROM usage_events").await, 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_and_abandoned_jobs_pay_for_what_was_delivered() {
    // A model slow enough that a job of 200 tokens is still running when the test cancels it:
    // the tiny one can finish them all while the test's task waits for a core.
    let configure = |s: &mut WorkerSpec| s.cpu_kv_bytes = 64 << 20;
    each_db_with(Shape::SmolLm2_135M, configure, async |w: &World| {
        w.price().await;
        w.top_up(1).await;
        let before = w.available().await;
        // Cancelled after three delivered tokens.
        let mut job = w
            .jobs
            .start(&w.who(), JobKind::Playground, MODEL, request(200))
            .await
            .unwrap();
        let prompt = job.prompt_tokens() as u64;
        let mut seen = 0;
        while seen < 3 {
            if let Some(Event::Token { .. }) = job.next().await {
                seen += 1;
            }
        }
        job.cancel();
        let receipt = job.settle().await.unwrap();
        assert_eq!(receipt.charged, Charged::Partial);
        assert_eq!(receipt.completion_tokens, 3);
        assert_eq!(receipt.amount, RATES.cost(prompt, 3).unwrap());
        // Abandoned (dropped, as when a client disconnects) after two tokens.
        let mut job = w
            .jobs
            .start(&w.who(), JobKind::Playground, MODEL, request(200))
            .await
            .unwrap();
        let id = job.id().to_string();
        let mut seen = 0;
        while seen < 2 {
            if let Some(Event::Token { .. }) = job.next().await {
                seen += 1;
            }
        }
        drop(job);
        let mut charged = None;
        for _ in 0..200 {
            let row = db::sqlx::query(
                "SELECT completion_tokens, amount, partial FROM usage_events WHERE job_id = $1",
            )
            .bind(&id)
            .fetch_optional(w.db.pool())
            .await
            .unwrap();
            if let Some(r) = row {
                charged = Some((
                    r.try_get::<i64, _>("completion_tokens").unwrap(),
                    r.try_get::<i64, _>("amount").unwrap(),
                    r.try_get::<i64, _>("partial").unwrap(),
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let expected = RATES.cost(prompt, 2).unwrap();
        assert_eq!(charged, Some((2, expected.get(), 1)));
        assert_eq!(w.open_holds().await, 0);
        assert_eq!(
            before.get() - w.available().await.get(),
            RATES.cost(prompt, 3).unwrap().get() + expected.get()
        );
        assert_eq!(
            w.count("SELECT COUNT(*) FROM jobs WHERE status = 'cancelled'")
                .await,
            2
        );
        assert_eq!(w.credits.ledger().verify().await.unwrap(), Ok(()));
    })
    .await;
}

impl World {
    /// A grant of `amount` to the tenant, from a new program of that name (30 days).
    async fn grant(&self, program: &str, amount: Nanos) -> credits::Grant {
        let program = self
            .credits
            .create_program(&ProgramSpec {
                name: program.into(),
                sponsor_org_id: None,
                eligible_kinds: vec![OrgKind::Startup],
                eligible_regions: vec![],
                grant_amount: amount,
                grant_lifetime_days: 30,
                budget: Nanos::from_dollars(1).unwrap(),
                auto_on_signup: false,
                requires_verified_email: false,
            })
            .await
            .unwrap();
        let org = self.credits_org().await;
        self.credits
            .grant(&program, &org, None, "test", &program.id)
            .await
            .unwrap()
    }

    async fn credits_org(&self) -> accounts::Org {
        self.platform
            .accounts
            .org(&self.tenant.org_id)
            .await
            .unwrap()
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_reads_the_active_allocation() {
    let t = TestDb::sqlite().await;
    let w = world(&t.db).await;
    w.price().await;
    w.top_up(5).await;
    // The tenant holds an active allocation with share weight 3.
    w.allocate(&w.tenant, 3, 60_000).await;
    assert_eq!(
        w.compute
            .allocation(&w.tenant.org_id, MODEL, db::now_ms())
            .await
            .unwrap()
            .map(|a| a.share_weight),
        Some(3)
    );

    // A job under the allocation runs on its factory and is charged as any other.
    let job = w
        .jobs
        .start(&w.who(), JobKind::Production, MODEL, request(4))
        .await
        .unwrap();
    let (_, receipt) = job.collect().await.unwrap();
    let factory: String =
        db::sqlx::query_scalar("SELECT factory_id FROM usage_events WHERE job_id = $1")
            .bind(&receipt.job_id)
            .fetch_one(w.db.pool())
            .await
            .unwrap();
    assert_eq!(factory, w.factory_id);
    assert_eq!(w.open_holds().await, 0);
    w.jobs.pool().unwrap().workers()[0].stop();
    t.finish().await;
}

fn principal(user: &User) -> Principal {
    Principal {
        org_id: user.org_id.clone(),
        user_id: Some(user.id.clone()),
        api_key_id: None,
        recheck_key: false,
    }
}

/// Runs every job to its end concurrently; for each, the instants of its tokens and of its
/// engine-side finish (before settlement, whose database time would blur the order).
async fn run_all(jobs: Vec<jobs::RunningJob>) -> Vec<(Vec<Instant>, Instant)> {
    let tasks: Vec<_> = jobs
        .into_iter()
        .map(|mut job| {
            tokio::spawn(async move {
                let mut tokens = Vec::new();
                let mut finished = None;
                while let Some(e) = job.next().await {
                    match e {
                        Event::Token { .. } => tokens.push(Instant::now()),
                        Event::Finished(_) => finished = Some(Instant::now()),
                        Event::Failed(m) => panic!("job failed: {m}"),
                    }
                }
                job.settle().await.unwrap();
                (tokens, finished.expect("finished"))
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

// A SmolLM2-shaped model on one thread makes tokens take milliseconds, so every job is queued
// long before the first ones end; one sequence runs at a time, so the queue order decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_overtakes_queued_batch_jobs() {
    let t = TestDb::sqlite().await;
    let w = world_with(&t.db, Shape::SmolLm2_135M, |s| {
        s.max_running = 1;
        s.max_waiting = 16;
        s.cpu_kv_bytes = 64 << 20;
    })
    .await;
    w.price().await;
    w.top_up(5).await;
    let mut queued = Vec::new();
    for _ in 0..4 {
        queued.push(
            w.jobs
                .start(&w.who(), JobKind::Batch, MODEL, request(12))
                .await
                .unwrap(),
        );
    }
    queued.push(
        w.jobs
            .start(&w.who(), JobKind::Production, MODEL, request(2))
            .await
            .unwrap(),
    );
    let ends: Vec<Instant> = run_all(queued)
        .await
        .into_iter()
        .map(|(_, end)| end)
        .collect();
    let production = ends[4];
    let batch_before = ends[..4].iter().filter(|e| **e < production).count();
    // At most the batch job already running when production arrived ends before it.
    assert!(
        batch_before <= 1,
        "{batch_before} batch jobs ended before production"
    );
    assert_eq!(w.open_holds().await, 0);
    w.jobs.pool().unwrap().workers()[0].stop();
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_get_throughput_in_proportion_to_their_allocation_weights() {
    let t = TestDb::sqlite().await;
    let w = world_with(&t.db, Shape::SmolLm2_135M, |s| {
        s.max_running = 1;
        s.max_waiting = 32;
        s.cpu_kv_bytes = 64 << 20;
    })
    .await;
    w.price().await;
    w.top_up(5).await;
    // The first tenant runs on demand (weight 1); the second holds an allocation of weight 3.
    let light = w.tenant.clone();
    let heavy = w.second_tenant().await;
    w.allocate(&heavy, 3, 1_000_000).await;
    let mut all = Vec::new();
    for _ in 0..8 {
        for who in [&light, &heavy] {
            all.push(
                w.jobs
                    .start(&principal(who), JobKind::Production, MODEL, request(6))
                    .await
                    .unwrap(),
            );
        }
    }
    let admitted = Instant::now();
    let runs = run_all(all).await;
    // The window in which both tenants were waiting: from the last admission until the heavy
    // tenant's last job ended.
    let heavy_end = runs
        .iter()
        .skip(1)
        .step_by(2)
        .map(|(_, end)| *end)
        .max()
        .unwrap();
    let count = |first: usize| -> usize {
        runs.iter()
            .skip(first)
            .step_by(2)
            .flat_map(|(tokens, _)| tokens)
            .filter(|t| **t > admitted && **t <= heavy_end)
            .count()
    };
    let (light_tokens, heavy_tokens) = (count(0), count(1));
    let ratio = heavy_tokens as f64 / light_tokens.max(1) as f64;
    eprintln!("tokens in the contended window: weight 3 {heavy_tokens}, weight 1 {light_tokens}");
    assert!((2.0..=4.5).contains(&ratio), "ratio {ratio}");
    assert_eq!(w.open_holds().await, 0);
    w.jobs.pool().unwrap().workers()[0].stop();
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocation_limits_tokens_per_minute_and_gets_unused_tokens_back() {
    let t = TestDb::sqlite().await;
    let w = world(&t.db).await;
    w.price().await;
    w.top_up(5).await;
    // The smallest limit an allocation may have; the fixture's context is 512 tokens.
    w.allocate(&w.tenant, 1, 1_000).await;
    let who = w.who();
    let start = |n| w.jobs.start(&who, JobKind::Production, MODEL, request(n));
    // Two jobs of prompt + 400 fit in the minute; a third must wait.
    // The first is cancelled at once (it cannot have produced its 400 tokens yet) but holds
    // its share of the minute until it is settled.
    let first = start(400).await.unwrap();
    first.cancel();
    let second = start(400).await.unwrap();
    match start(400).await {
        Err(JobError::TokensPerMinute {
            limit: 1_000,
            retry_after,
            ..
        }) => assert!((1..=60).contains(&retry_after), "{retry_after}"),
        other => panic!("{other:?}"),
    }
    // Settled, it gives back what it did not use, and a third fits.
    let receipt = first.settle().await.unwrap();
    assert_eq!(receipt.charged, Charged::Partial, "{receipt:?}");
    let third = start(400).await.unwrap();
    second.collect().await.unwrap();
    third.collect().await.unwrap();
    assert_eq!(w.open_holds().await, 0);
    w.jobs.pool().unwrap().workers()[0].stop();
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_of_a_stopped_instance_are_failed_and_their_holds_voided() {
    each_db(async |w: &World| {
        w.price().await;
        w.top_up(1).await;
        let before = w.available().await;
        let now = db::now_ms();
        // Instance A (w.jobs) runs a job, then stops beating; B is another portal instance.
        w.jobs.heartbeat(now).await.unwrap();
        let mut job = w
            .jobs
            .start(&w.who(), JobKind::Production, MODEL, request(200))
            .await
            .unwrap();
        while !matches!(job.next().await, Some(Event::Token { .. })) {}
        let id = job.id().to_string();
        assert!(w.available().await < before, "the hold reserves");
        let b = Jobs::new(w.db.clone(), w.credits.clone(), w.compute.clone(), None);
        b.heartbeat(now).await.unwrap();
        // A is alive: nothing to recover; B never takes its own jobs either.
        assert_eq!(b.recover_dead_instances(now).await.unwrap(), 0);
        assert_eq!(
            w.jobs.recover_dead_instances(now + 60_000).await.unwrap(),
            0
        );
        // A keeps beating, its clock an hour behind B's: what counts is that its heartbeat
        // moves, not what time it says, so it stays alive.
        let stale = jobs::recovery::INSTANCE_STALE_MS;
        w.jobs.heartbeat(now - 3_600_000).await.unwrap();
        assert_eq!(b.recover_dead_instances(now + stale + 1).await.unwrap(), 0);
        // A silent for longer than the limit: its job is failed, its hold voided, once.
        let later = now + 2 * stale + 2;
        assert_eq!(b.recover_dead_instances(later).await.unwrap(), 1);
        assert_eq!(b.recover_dead_instances(later).await.unwrap(), 0);
        assert_eq!(b.status_of(&id).await.unwrap().as_deref(), Some("failed"));
        assert_eq!(w.available().await, before);
        // Had A been only frozen, its late settlement changes nothing: the hold is gone.
        job.cancel();
        assert!(job.settle().await.is_err());
        assert_eq!(w.available().await, before);
        assert!(!b.is_settled(&id).await.unwrap());
        let open: i64 =
            db::sqlx::query_scalar("SELECT COUNT(*) FROM ledger_holds WHERE status = 'open'")
                .fetch_one(w.db.pool())
                .await
                .unwrap();
        assert_eq!(open, 0);
    })
    .await;
}

db::storage_test!(
    threads = 2;
    /// Holds started at once for one wallet never reserve more than it has, however its accounts
    /// share them. On PostgreSQL each hold reads the wallet unlocked and its writes check every
    /// account again: a hold that lost a race for an account is planned again or refused, never
    /// made from money another hold took.
    async fn holds_started_at_once_never_reserve_more_than_the_wallet_has(t) {
        let backend = t.db.backend();
        let w = world_with(&t.db, Shape::Tiny, |s| s.max_waiting = 64).await;
        w.price().await;
        // What one job holds, from another tenant's job of the same size.
        let probe = w.second_tenant().await;
        let job = w
            .jobs
            .start(&principal(&probe), JobKind::Production, MODEL, request(8))
            .await
            .unwrap();
        let cost = RATES.cost(job.prompt_tokens() as u64, 8).unwrap().get();
        drop(job);
        // A grant for two and a half holds, paid credit for as much: five holds, the third
        // taken from both.
        w.grant("Race support", Nanos::new(cost * 5 / 2)).await;
        w.credits
            .credit_paid(
                &w.tenant.org_id,
                Nanos::new(cost * 5 / 2),
                "topup:race",
                "test top-up",
            )
            .await
            .unwrap();
        let funds = w.available().await.get();
        assert!(funds >= 5 * cost && funds < 6 * cost, "{backend:?}");

        let mut starts = tokio::task::JoinSet::new();
        for _ in 0..12 {
            let (jobs, who) = (w.jobs.clone(), w.who());
            starts.spawn(async move {
                jobs.start(&who, JobKind::Production, MODEL, request(8))
                    .await
            });
        }
        let mut admitted = Vec::new();
        while let Some(started) = starts.join_next().await {
            match started.unwrap() {
                Ok(job) => admitted.push(job),
                Err(JobError::InsufficientCredits { .. }) => {}
                Err(e) => panic!("{backend:?}: {e:?}"),
            }
        }
        assert!(
            (1..=5).contains(&admitted.len()),
            "{backend:?}: {} admitted",
            admitted.len()
        );
        let overdrawn = w
            .count(
                "SELECT COUNT(*) FROM ledger_accounts a JOIN ledger_account_reserves r \
                 ON r.account_id = a.id WHERE a.may_go_negative = 0 \
                 AND r.reserved - a.released > a.balance",
            )
            .await;
        assert_eq!(overdrawn, 0, "{backend:?}");
        // What the tenant's accounts hold, and its open holds.
        let (held, open): (i64, i64) = db::sqlx::query_as(
            "SELECT (SELECT CAST(COALESCE(SUM(r.reserved - a.released), 0) AS BIGINT) \
             FROM ledger_accounts a JOIN ledger_account_reserves r ON r.account_id = a.id \
             WHERE a.org_id = $1), \
             (SELECT COUNT(*) FROM ledger_holds WHERE status = 'open' AND org_id = $1)",
        )
        .bind(&w.tenant.org_id)
        .fetch_one(w.db.pool())
        .await
        .unwrap();
        assert_eq!(held, admitted.len() as i64 * cost, "{backend:?}");
        assert_eq!(open, admitted.len() as i64, "{backend:?}");
        assert_eq!(w.credits.ledger().verify().await.unwrap(), Ok(()));
        drop(admitted);
        w.jobs.pool().unwrap().workers()[0].stop();
        t.finish().await;
    }
);

/// Runs a 4-token production job to its end: the accounts its hold drew on, in burn order.
async fn drawn_on(w: &World) -> Vec<String> {
    let job = w
        .jobs
        .start(&w.who(), JobKind::Production, MODEL, request(4))
        .await
        .unwrap();
    let accounts = db::sqlx::query(
        "SELECT p.account_id FROM ledger_hold_parts p JOIN jobs j ON j.hold_id = p.hold_id \
         WHERE j.id = $1 ORDER BY p.position",
    )
    .bind(job.id())
    .fetch_all(w.db.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| r.try_get::<String, _>("account_id").unwrap())
    .collect();
    job.collect().await.unwrap();
    accounts
}

/// Admission plans a hold from what it last read of the wallet, without reading it again;
/// the writes refuse that plan when a read would give another, and it is planned again. Each
/// case below is one a plan from the earlier read would get wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_planned_without_a_read_keeps_the_burn_order() {
    each_db(async |w: &World| {
        w.price().await;
        w.top_up(1).await;
        let paid = drawn_on(w).await;
        assert_eq!(paid.len(), 1);
        let paid = &paid[0];

        // A grant given since the last read burns first.
        let grant = w.grant("Later support", Nanos::new(1_000_000)).await;
        assert_eq!(drawn_on(w).await, [grant.account_id.as_str()]);

        // The grant held whole elsewhere: this job's hold comes from paid credit...
        let on_grant = || async {
            let wallet = w
                .credits
                .wallet(&w.tenant.org_id, db::now_ms())
                .await
                .unwrap();
            let b = wallet
                .buckets
                .iter()
                .find(|b| b.account_id == grant.account_id);
            b.map(|b| b.balance.get() - b.held.get()).unwrap()
        };
        let elsewhere = w
            .credits
            .ledger()
            .reserve(
                "elsewhere",
                Some(&w.tenant.org_id),
                std::slice::from_ref(&grant.account_id),
                Nanos::new(on_grant().await),
                60_000,
            )
            .await
            .unwrap();
        assert_eq!(on_grant().await, 0);
        assert_eq!(drawn_on(w).await, [paid.as_str()]);
        // ...and once that hold is voided, from the grant again.
        w.credits.ledger().void(&elsewhere.id).await.unwrap();
        assert_eq!(drawn_on(w).await, [grant.account_id.as_str()]);
        assert_eq!(w.open_holds().await, 0);
        assert_eq!(w.credits.ledger().verify().await.unwrap(), Ok(()));
    })
    .await;
}

/// Each job run to its end (its answer assembled), not yet settled.
async fn finished_jobs(w: &World, n: usize) -> Vec<jobs::RunningJob> {
    let mut done = Vec::new();
    for _ in 0..n {
        let mut job = w
            .jobs
            .start(&w.who(), JobKind::Production, MODEL, request(4))
            .await
            .unwrap();
        job.run_buffered().await;
        assert!(job.completed().is_some());
        done.push(job);
    }
    done
}

/// Voids the hold of job `id` behind its back, as an expiry or another instance might.
async fn void_hold_of(w: &World, id: &str) {
    let hold: String = db::sqlx::query("SELECT hold_id FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(w.db.pool())
        .await
        .unwrap()
        .try_get("hold_id")
        .unwrap();
    w.credits.ledger().void(&hold).await.unwrap();
}

async fn all_settled(w: &World) {
    for _ in 0..10_000 {
        if w.jobs.unsettled() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("{} jobs still unsettled after 10 s", w.jobs.unsettled());
}

/// (status, amount charged, paid part, the grants' part) of each job, in `ids`' order.
async fn charges(w: &World, ids: &[String]) -> Vec<(String, Option<(i64, i64, i64)>)> {
    let mut out = Vec::new();
    for id in ids {
        let status = db::sqlx::query("SELECT status FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(w.db.pool())
            .await
            .unwrap()
            .try_get::<String, _>("status")
            .unwrap();
        let event = db::sqlx::query(
            "SELECT e.amount, e.paid_amount, \
             CAST((SELECT COALESCE(SUM(g.amount), 0) FROM usage_event_grants g WHERE g.usage_event_id = e.id) AS BIGINT) AS granted \
             FROM usage_events e WHERE e.job_id = $1",
        )
        .bind(id)
        .fetch_optional(w.db.pool())
        .await
        .unwrap()
        .map(|r| {
            (
                r.try_get::<i64, _>("amount").unwrap(),
                r.try_get::<i64, _>("paid_amount").unwrap(),
                r.try_get::<i64, _>("granted").unwrap(),
            )
        });
        out.push((status, event));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_settled_together_are_each_charged_and_a_bad_one_fails_alone() {
    each_db(async |w: &World| {
        w.price().await;
        w.top_up(1).await;
        let start = w.available().await.get();
        let done = finished_jobs(w, 3).await;
        let cost = RATES.cost(done[0].prompt_tokens() as u64, 4).unwrap().get();
        // A grant that pays for the first job whole and part of the second: it burns first,
        // so each job's split depends on what the one before it drew, in the same batch.
        w.grant("Tiny support", Nanos::new(cost + cost / 2)).await;
        let ids: Vec<String> = done.iter().map(|j| j.id().to_string()).collect();
        // Settled one right after another: together, in one transaction.
        for job in done {
            job.settle_without_waiting();
        }
        let handed_over = db::now_ms();
        all_settled(w).await;
        // The records say when each job ended, not when its batch was written (later).
        for id in &ids {
            let r = db::sqlx::query(
                "SELECT j.finished_at - j.created_at AS took, e.duration_ms, j.finished_at \
                 FROM jobs j JOIN usage_events e ON e.job_id = j.id WHERE j.id = $1",
            )
            .bind(id)
            .fetch_one(w.db.pool())
            .await
            .unwrap();
            let finished_at: i64 = r.try_get("finished_at").unwrap();
            assert!(finished_at <= handed_over, "{finished_at} > {handed_over}");
            let took: i64 = r.try_get("took").unwrap();
            assert_eq!(took, r.try_get::<i64, _>("duration_ms").unwrap());
        }
        // The holds were taken before the grant came, so paid credit pays every job.
        let charged = charges(w, &ids).await;
        for (status, event) in &charged {
            assert_eq!(status, "succeeded");
            assert_eq!(*event, Some((cost, cost, 0)));
        }
        let granted = cost + cost / 2;
        assert_eq!(start + granted - w.available().await.get(), 3 * cost);
        assert_eq!(w.open_holds().await, 0);
        assert_eq!(w.credits.ledger().verify().await.unwrap(), Ok(()));

        // Now the grant burns first: the first job from it whole, the second half from it.
        // The second job's hold is voided before the batch is written: the batch fails,
        // and each job is settled alone: the others charged, that one failed, not charged.
        let start = w.available().await.get();
        let done = finished_jobs(w, 3).await;
        let ids: Vec<String> = done.iter().map(|j| j.id().to_string()).collect();
        void_hold_of(w, &ids[1]).await;
        for job in done {
            job.settle_without_waiting();
        }
        all_settled(w).await;
        let charged = charges(w, &ids).await;
        assert_eq!(charged[0], ("succeeded".into(), Some((cost, 0, cost))));
        assert_eq!(charged[1], ("failed".into(), None));
        assert_eq!(charged[2], ("succeeded".into(), Some((cost, cost, 0))));
        assert_eq!(start - w.available().await.get(), 2 * cost);
        assert_eq!(w.open_holds().await, 0);
        assert_eq!(w.credits.ledger().verify().await.unwrap(), Ok(()));

        // A batch of one whose hold was voided: failed, not charged.
        let start = w.available().await.get();
        let mut done = finished_jobs(w, 1).await;
        let job = done.remove(0);
        let id = job.id().to_string();
        void_hold_of(w, &id).await;
        job.settle_without_waiting();
        all_settled(w).await;
        assert_eq!(charges(w, &[id]).await[0], ("failed".into(), None));
        assert_eq!(w.available().await.get(), start);
        assert_eq!(w.credits.ledger().verify().await.unwrap(), Ok(()));
    })
    .await;
}
