//! `GET /metrics`: Prometheus (OpenMetrics text) for the people running the factory. The
//! names vLLM users already chart (`vllm:num_requests_running`, `vllm:time_to_first_token_seconds`,
//! …) labelled by model and factory, and Tokenmill's own under `tokenmill_`. Never labelled by
//! tenant. Behind a bearer token (`TOKENMILL_METRICS_TOKEN`); off without one.

use axum::{
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};
use std::sync::atomic::AtomicU64;

#[derive(Clone)]
pub struct MetricsState {
    pub jobs: jobs::Jobs,
    pub db: db::Db,
    /// SHA-256 of the configured token: compared digest to digest, so the comparison takes
    /// the same time however much of a guess is right.
    pub token_sha256: Option<[u8; 32]>,
}

impl MetricsState {
    pub fn new(jobs: jobs::Jobs, db: db::Db, token: Option<&str>) -> MetricsState {
        MetricsState {
            jobs,
            db,
            token_sha256: token.map(|t| Sha256::digest(t.as_bytes()).into()),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Model {
    model_name: String,
}

pub async fn metrics(State(m): State<MetricsState>, headers: HeaderMap) -> Response {
    let Some(want) = m.token_sha256 else {
        return (
            StatusCode::NOT_FOUND,
            "Metrics are off: set TOKENMILL_METRICS_TOKEN to serve them.\n",
        )
            .into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let given: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
    if given != want {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "A valid bearer token is needed (TOKENMILL_METRICS_TOKEN).\n",
        )
            .into_response();
    }
    match render(&m).await {
        Ok(body) => {
            let mut res = body.into_response();
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            res
        }
        Err(e) => {
            tracing::error!(error = %e, "metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn count(db: &db::Db, sql: &str) -> Result<i64, db::sqlx::Error> {
    db::sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(db.pool())
        .await
}

async fn render(m: &MetricsState) -> anyhow::Result<String> {
    let mut registry = Registry::default();
    m.jobs.metrics().register(&mut registry);
    register_pool(&mut registry, m);
    register_money_and_security(&mut registry, m).await?;
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// The worker pool's gauges and counters, read now, under vLLM's names.
fn register_pool(registry: &mut Registry, m: &MetricsState) {
    let running = Family::<Model, Gauge>::default();
    let waiting = Family::<Model, Gauge>::default();
    let cache = Family::<Model, Gauge<f64, AtomicU64>>::default();
    let prompt_tokens = Family::<Model, Counter>::default();
    let generation_tokens = Family::<Model, Counter>::default();
    let preemptions = Family::<Model, Counter>::default();
    if let Some(pool) = m.jobs.pool() {
        let mut kv: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
        for w in pool.status() {
            let model = Model {
                model_name: w.model_id.clone(),
            };
            running.get_or_create(&model).inc_by(w.running as i64);
            waiting.get_or_create(&model).inc_by(w.waiting as i64);
            prompt_tokens.get_or_create(&model).inc_by(w.prompt_tokens);
            generation_tokens
                .get_or_create(&model)
                .inc_by(w.tokens_generated);
            preemptions.get_or_create(&model).inc_by(w.preemptions);
            let e = kv.entry(w.model_id).or_default();
            e.0 += w.kv_blocks_used;
            e.1 += w.kv_blocks_total;
        }
        for (model_name, (used, total)) in kv {
            cache
                .get_or_create(&Model { model_name })
                .set(if total == 0 {
                    0.0
                } else {
                    used as f64 / total as f64
                });
        }
    }
    registry.register(
        "vllm:num_requests_running",
        "Requests running on the workers",
        running,
    );
    registry.register(
        "vllm:num_requests_waiting",
        "Requests waiting for a worker",
        waiting,
    );
    registry.register(
        "vllm:gpu_cache_usage_perc",
        "KV-cache usage, 1 = full (GPU or CPU cache)",
        cache,
    );
    registry.register(
        "vllm:prompt_tokens",
        "Prompt tokens processed",
        prompt_tokens,
    );
    registry.register(
        "vllm:generation_tokens",
        "Tokens generated",
        generation_tokens,
    );
    registry.register("vllm:num_preemptions", "Sequences preempted", preemptions);
}

/// Money and security, from the database shared by every instance.
async fn register_money_and_security(
    registry: &mut Registry,
    m: &MetricsState,
) -> anyhow::Result<()> {
    let holds = Gauge::<i64>::default();
    holds.set(
        count(
            &m.db,
            "SELECT COUNT(*) FROM ledger_holds WHERE status = 'open'",
        )
        .await?,
    );
    registry.register(
        "tokenmill_holds_open",
        "Credit holds not yet settled or voided",
        holds,
    );
    let postings = Counter::<u64>::default();
    postings.inc_by(
        count(&m.db, "SELECT COUNT(*) FROM ledger_transactions")
            .await?
            .max(0) as u64,
    );
    registry.register(
        "tokenmill_ledger_postings",
        "Ledger transactions posted",
        postings,
    );
    let webhooks = Counter::<u64>::default();
    webhooks.inc_by(
        count(&m.db, "SELECT COUNT(*) FROM stripe_events")
            .await?
            .max(0) as u64,
    );
    registry.register(
        "tokenmill_webhook_events",
        "Stripe webhook events applied",
        webhooks,
    );
    let failures = Gauge::<i64>::default();
    failures.set(
        count(
            &m.db,
            "SELECT COUNT(*) FROM rate_events WHERE scope = 'login:ip'",
        )
        .await?,
    );
    registry.register(
        "tokenmill_login_failures_recent",
        "Failed logins inside the login limits' sliding window",
        failures,
    );
    Ok(())
}
