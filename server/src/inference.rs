//! The engine inside the portal: the worker pool is started at boot with the configured models
//! (the test model is written first when the default directory is empty), and `/ready` answers
//! only while a worker has recently produced a real token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::{extract::State, http::StatusCode};

use crate::config::EngineSettings;

/// Loads every configured model (blocking work, off the async threads). `None` when the
/// configuration names no model.
pub async fn start_pool(settings: &EngineSettings) -> anyhow::Result<Option<Arc<engine::Pool>>> {
    if settings.models.is_empty() {
        tracing::info!("no models configured (TOKENMILL_MODELS=none): the API will answer 503");
        return Ok(None);
    }
    if settings.devices.is_empty() {
        tracing::info!("no engine workers here (TOKENMILL_DEVICE=none): fleets run the models");
        return Ok(None);
    }
    if settings.write_fixture
        && !settings
            .models
            .iter()
            .any(|(id, _)| id == crate::config::SMOLLM2_ID)
    {
        tracing::warn!(
            file = crate::config::SMOLLM2_FILE,
            "SmolLM2-135M-Instruct is not there, so only the test model (random weights) is served: scripts/dev fetches it"
        );
    }
    let specs = worker_specs(settings);
    let progress = tokio::spawn(log_load_progress(progress_of(&specs)));
    let settings = settings.clone();
    let started = tokio::task::spawn_blocking(move || {
        write_test_model(&settings)?;
        let started = Instant::now();
        let pool = engine::Pool::start(specs).context("starting the inference workers")?;
        log_ready(&pool, started);
        Ok(Some(Arc::new(pool)))
    })
    .await;
    progress.abort();
    started?
}

/// A worker node's pool: every model starts loading at once and the pool comes back at once
/// (see `engine::Pool::start_loading`), so that the node joins its fleet and shows its
/// models loading. The task ends when every load has: with an error when none loaded (a
/// model that failed beside others shows as dead, and its engine can be restarted).
pub async fn start_pool_loading(
    settings: &EngineSettings,
) -> anyhow::Result<(
    Arc<engine::Pool>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
)> {
    if settings.models.is_empty() {
        bail!("no models configured (TOKENMILL_MODELS): a worker needs at least one");
    }
    let specs = worker_specs(settings);
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || write_test_model(&settings)).await??;
    let progress = tokio::spawn(log_load_progress(progress_of(&specs)));
    let started = Instant::now();
    let (pool, loading) = engine::Pool::start_loading(specs);
    let watched = Arc::clone(&pool);
    let loaded = tokio::spawn(async move {
        let outcomes = tokio::task::spawn_blocking(move || loading.join()).await?;
        progress.abort();
        let outcomes =
            outcomes.map_err(|_| anyhow::anyhow!("the model loading thread panicked"))?;
        log_ready(&watched, started);
        let failed: Vec<String> = outcomes
            .into_iter()
            .filter_map(Result::err)
            .map(|e| e.to_string())
            .collect();
        for e in &failed {
            tracing::error!(error = %e, "a model did not load; its engine shows as dead until restarted");
        }
        if !failed.is_empty() && watched.workers().is_empty() {
            bail!("no model loaded: {}", failed.join("; "));
        }
        Ok(())
    });
    Ok((pool, loaded))
}

/// One engine worker per configured model and device.
fn worker_specs(settings: &EngineSettings) -> Vec<engine::WorkerSpec> {
    let mut specs = Vec::new();
    for (id, dir) in &settings.models {
        for &device in &settings.devices {
            let mut spec = engine::WorkerSpec::new(id.clone(), dir.clone());
            spec.device = device;
            spec.cpu_kv_bytes = settings.cpu_kv_mib << 20;
            spec.max_running = settings.max_running;
            spec.max_waiting = settings.max_waiting;
            tracing::info!(model = %spec.model_id, dir = %spec.dir.display(), ?device, "loading model");
            specs.push(spec);
        }
    }
    specs
}

/// Writes the test model where the configuration serves it and it is not there yet.
fn write_test_model(settings: &EngineSettings) -> anyhow::Result<()> {
    if settings.write_fixture {
        let (id, dir) = &settings.models[0];
        if !dir.join("config.json").exists() {
            tracing::info!(model = %id, dir = %dir.display(), "writing the test model");
            engine::fixture::write_fixture(dir, &engine::fixture::FixtureSpec::default())
                .with_context(|| format!("writing the test model to {}", dir.display()))?;
        }
    }
    Ok(())
}

fn log_ready(pool: &engine::Pool, started: Instant) {
    for w in pool.workers() {
        tracing::info!(
            model = %w.info.model_id,
            device = %w.info.device.id,
            name = %w.info.device.name,
            context = w.info.context,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model ready"
        );
    }
}

/// Every second while models load (all at once, one engine worker per model and device):
/// how far each has got.
/// What [`log_load_progress`] watches: each engine's model, device and progress.
fn progress_of(
    specs: &[engine::WorkerSpec],
) -> Vec<(String, engine::Device, Arc<engine::LoadProgress>)> {
    specs
        .iter()
        .map(|s| (s.model_id.clone(), s.device, s.progress.clone()))
        .collect()
}

async fn log_load_progress(engines: Vec<(String, engine::Device, Arc<engine::LoadProgress>)>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        for (model, device, progress) in &engines {
            let permille = progress.permille();
            if permille < 1000 {
                tracing::info!(
                    %model,
                    ?device,
                    percent = format!("{:.1}", f64::from(permille) / 10.0),
                    "loading model"
                );
            }
        }
    }
}

/// The configured models' tokenizers, templates and limits without their weights on a device
/// (`TOKENMILL_DEVICE=none`: a portal whose models only fleets run).
pub async fn open_models(settings: &EngineSettings) -> anyhow::Result<Vec<Arc<engine::ModelInfo>>> {
    let models = settings.models.clone();
    tokio::task::spawn_blocking(move || {
        models
            .iter()
            .map(|(id, dir)| {
                let info = engine::ModelInfo::open(id, dir)
                    .with_context(|| format!("opening model {id} at {}", dir.display()))?;
                tracing::info!(model = %id, context = info.context, "model opened for its tokenizer (no engine worker here)");
                Ok(Arc::new(info))
            })
            .collect()
    })
    .await?
}

/// Readiness: a worker produced a token within the last few seconds. One probe at a time
/// (callers arriving meanwhile wait for its verdict), a success trusted for 10 s and a failure
/// for 2 s, so probes can never crowd out real requests.
#[derive(Clone)]
pub struct Readiness {
    pool: Option<Arc<engine::Pool>>,
    jobs: jobs::Jobs,
    verdict: Arc<tokio::sync::Mutex<Verdict>>,
}

struct Verdict {
    at_ms: i64,
    ok: bool,
}

const FRESH_OK_MS: i64 = 10_000;
const FRESH_FAILURE_MS: i64 = 2_000;

impl Readiness {
    pub fn new(pool: Option<Arc<engine::Pool>>, jobs: jobs::Jobs) -> Readiness {
        Readiness {
            pool,
            jobs,
            verdict: Arc::new(tokio::sync::Mutex::new(Verdict {
                at_ms: i64::MIN,
                ok: false,
            })),
        }
    }
}

pub async fn ready(State(r): State<Readiness>) -> (StatusCode, &'static str) {
    // A load balancer stops sending new work to an instance that is shutting down.
    if r.jobs.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    let Some(pool) = r.pool else {
        // No engine workers here: ready while a fleet node serves a model (its heartbeats,
        // at most 3 s old, show it works).
        return match r.jobs.fleet() {
            Some(fleet) if !fleet.models().is_empty() => (StatusCode::OK, "ready (fleet)\n"),
            Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "no live worker node\n"),
            None => (StatusCode::SERVICE_UNAVAILABLE, "no models configured\n"),
        };
    };
    let mut v = r.verdict.lock().await;
    let now = db::now_ms();
    let fresh = if v.ok { FRESH_OK_MS } else { FRESH_FAILURE_MS };
    if now.saturating_sub(v.at_ms) >= fresh {
        let failures = pool.health(Duration::from_secs(5)).await;
        for (model, error) in &failures {
            tracing::warn!(%model, %error, "readiness probe failed");
        }
        *v = Verdict {
            at_ms: db::now_ms(),
            ok: failures.is_empty(),
        };
    }
    if v.ok {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: a worker did not produce a token\n",
        )
    }
}
