//! The engine inside the portal: the worker pool is started at boot with the configured models
//! (the test model is written first when the default directory is empty), and `/ready` answers
//! only while a worker has recently produced a real token.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::{extract::State, http::StatusCode};

use crate::config::EngineSettings;

/// Loads every configured model (blocking work, off the async threads). `None` when the
/// configuration names no model.
pub async fn start_pool(settings: &EngineSettings) -> anyhow::Result<Option<Arc<engine::Pool>>> {
    if settings.models.is_empty() {
        tracing::info!("no models configured (TOKENMILL_MODELS=none): the API will answer 503");
        return Ok(None);
    }
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || {
        if settings.write_fixture {
            let (id, dir) = &settings.models[0];
            if !dir.join("config.json").exists() {
                tracing::info!(model = %id, dir = %dir.display(), "writing the test model");
                engine::fixture::write_fixture(dir, &engine::fixture::FixtureSpec::default())
                    .with_context(|| format!("writing the test model to {}", dir.display()))?;
            }
        }
        let specs = settings
            .models
            .iter()
            .map(|(id, dir)| {
                tracing::info!(model = %id, dir = %dir.display(), device = ?settings.device, "loading model");
                let mut spec = engine::WorkerSpec::new(id.clone(), dir.clone());
                spec.device = settings.device;
                spec.cpu_kv_bytes = settings.cpu_kv_mib << 20;
                spec
            })
            .collect();
        let started = Instant::now();
        let pool = engine::Pool::start(specs).context("starting the inference workers")?;
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
        Ok(Some(Arc::new(pool)))
    })
    .await?
}

/// Readiness: a worker produced a token within the last few seconds, checked again (one real
/// token per model) when the last success is older than that.
#[derive(Clone)]
pub struct Readiness {
    pool: Option<Arc<engine::Pool>>,
    last_ok_ms: Arc<AtomicI64>,
}

const FRESH_MS: i64 = 10_000;

impl Readiness {
    pub fn new(pool: Option<Arc<engine::Pool>>) -> Readiness {
        Readiness {
            pool,
            last_ok_ms: Arc::new(AtomicI64::new(i64::MIN)),
        }
    }
}

pub async fn ready(State(r): State<Readiness>) -> (StatusCode, String) {
    let Some(pool) = r.pool else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no models configured\n".into(),
        );
    };
    let now = db::now_ms();
    if now.saturating_sub(r.last_ok_ms.load(Ordering::Relaxed)) < FRESH_MS {
        return (StatusCode::OK, "ready\n".into());
    }
    let failures = pool.health(Duration::from_secs(5)).await;
    if failures.is_empty() {
        r.last_ok_ms.store(now, Ordering::Relaxed);
        (StatusCode::OK, "ready\n".into())
    } else {
        let detail: Vec<String> = failures.iter().map(|(m, e)| format!("{m}: {e}")).collect();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", detail.join("; ")),
        )
    }
}
