//! The OpenAI-compatible API under `/v1`: bearer API keys (no cookies, so outside the session
//! and CSRF layers), OpenAI's request bodies and error body, chat and text completions as one
//! JSON object or a stream of server-sent events, per-key rate limits and `Idempotency-Key`.
//! Every completion is a production job: admitted, paid for by a hold, settled exactly.

mod batch_api;
mod error;
mod idempotency;
mod limits;
mod params;
mod respond;
mod tools;

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::{
    Json, Router,
    body::{Body, to_bytes},
    extract::{DefaultBodyLimit, FromRequestParts, Path, State},
    http::{HeaderMap, StatusCode, Uri, header, request::Parts},
    response::Response,
    routing::{any, get, post},
};
use jobs::{JobError, JobKind, Jobs, Principal};
use serde_json::json;

pub use batch_api::jsonl_download;
pub use error::ApiError;
pub use params::{Endpoint, parse};
pub use respond::{Admitted, admit, failed, generate};

/// Largest request body: a long chat with many messages.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// What every `/v1` handler can reach.
#[derive(Clone)]
pub struct ApiState {
    pub keys: keys::ApiKeys,
    pub jobs: Jobs,
    pub batches: batches::Batches,
    pub db: db::Db,
    pub limits: Arc<limits::KeyLimits>,
    /// When the pool started (Unix seconds): the models' `created`.
    pub started: i64,
    /// Generation requests being admitted or answered at once (see `completion`).
    pub admission: Arc<tokio::sync::Semaphore>,
}

impl ApiState {
    pub fn new(
        keys: keys::ApiKeys,
        jobs: Jobs,
        batches: batches::Batches,
        db: db::Db,
        requests_per_minute: NonZeroU32,
    ) -> ApiState {
        let limits = Arc::new(limits::KeyLimits::per_minute(requests_per_minute));
        let prune = Arc::downgrade(&limits);
        // Forget idle keys once a minute, for as long as the state lives.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                match prune.upgrade() {
                    Some(l) => l.prune(),
                    None => break,
                }
            }
        });
        // With a fleet, the nodes' own queues bound what they take (their refusals are 429
        // `queue_full` too); this only bounds what one portal holds for them at once.
        let fleet = if jobs.fleet().is_some() {
            FLEET_IN_FLIGHT
        } else {
            0
        };
        let capacity = (jobs.pool().map_or(0, |p| p.capacity()) + fleet).max(1);
        ApiState {
            admission: Arc::new(tokio::sync::Semaphore::new(capacity)),
            keys,
            jobs,
            batches,
            db,
            limits,
            started: db::now_ms() / 1000,
        }
    }
}

/// Generation requests one portal admits at once for fleet nodes, beyond its own pool's.
const FLEET_IN_FLIGHT: usize = 1024;

/// The organisation a request's API key acts for.
pub struct Caller {
    pub key: keys::KeyIdentity,
    /// Taken from the keys found valid lately: admission checks it again (see
    /// [`RecentCaller`]).
    recheck: bool,
}

impl Caller {
    fn principal(&self) -> Principal {
        Principal {
            org_id: self.key.org_id.clone(),
            user_id: Some(self.key.created_by.clone()),
            api_key_id: Some(self.key.key_id.clone()),
            recheck_key: self.recheck,
        }
    }
}

/// The bearer key of a request, or 401 saying how to send one.
fn presented(parts: &Parts) -> Result<&str, ApiError> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::unauthorized(
                "You didn't provide an API key. Send it as Authorization: Bearer <key>; keys are made on the API keys page.",
            )
        })
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    /// Every `/v1` route but chat and completions (which count in `completion`, after their
    /// own key check) draws on the key's one rate limit here.
    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let key = state.keys.authenticate(presented(parts)?).await?;
        state.limits.check(&key.key_id)?;
        Ok(Caller {
            key,
            recheck: false,
        })
    }
}

/// [`Caller`] for chat and completions, whose admission reads the key's state again with the
/// hold's wallet read (in the same query on SQLite, beside it on PostgreSQL: no round trip of
/// its own): a key found valid in the last `keys::RECENT_TTL` is not looked up first. A
/// revoked or expired key, or a suspended organisation, is still refused before any work or
/// charge. Not with `Idempotency-Key`, whose claim is written before admission.
pub struct RecentCaller(Caller);

impl FromRequestParts<ApiState> for RecentCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let presented = presented(parts)?;
        if parts.headers.contains_key(idempotency::HEADER) {
            let key = state.keys.authenticate(presented).await?;
            return Ok(RecentCaller(Caller {
                key,
                recheck: false,
            }));
        }
        let (key, checked) = state.keys.authenticate_recent(presented).await?;
        Ok(RecentCaller(Caller {
            key,
            recheck: checked == keys::Checked::Recently,
        }))
    }
}

fn model_object(id: &str, created: i64) -> serde_json::Value {
    json!({ "id": id, "object": "model", "created": created, "owned_by": "tokenmill" })
}

async fn models(
    State(s): State<ApiState>,
    _caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    if s.jobs.pool().is_none() {
        return Err(ApiError::unavailable());
    }
    let data: Vec<_> = s
        .jobs
        .available_models()
        .await?
        .iter()
        .map(|id| model_object(id, s.started))
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

async fn model(
    State(s): State<ApiState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if s.jobs.pool().is_none() {
        return Err(ApiError::unavailable());
    }
    if s.jobs.available_models().await?.contains(&id) {
        Ok(Json(model_object(&id, s.started)))
    } else {
        Err(ApiError {
            param: Some("model"),
            ..ApiError::not_found(
                format!("The model `{id}` does not exist or you do not have access to it."),
                "model_not_found",
            )
        })
    }
}

async fn chat_completions(
    State(s): State<ApiState>,
    RecentCaller(caller): RecentCaller,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    completion(s, caller, uri, headers, body, Endpoint::Chat).await
}

async fn completions(
    State(s): State<ApiState>,
    RecentCaller(caller): RecentCaller,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    completion(s, caller, uri, headers, body, Endpoint::Completions).await
}

async fn completion(
    s: ApiState,
    caller: Caller,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
    endpoint: Endpoint,
) -> Response {
    use axum::response::IntoResponse;
    let run = async {
        s.limits.check(&caller.key.key_id)?;
        let bytes = to_bytes(body, BODY_LIMIT).await.map_err(body_error)?;
        let parsed = params::parse(endpoint, &bytes)?;
        // Load shedding: at most as many generation requests are in the portal at once as
        // the pool runs and queues; the excess gets 429 `queue_full` with `Retry-After` at
        // once, before the hold or any write, so an overloaded portal refuses fast and keeps
        // its latency for what it accepted. Taken only for a caller with a valid key and a
        // whole, valid body (nobody can hold one with a body that never ends), and held until
        // the response starts: a whole answer's full run, a stream's admission (once queued,
        // the worker's own queue bound applies).
        let _permit = s
            .admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::from(JobError::Overloaded))?;
        let who = caller.principal();
        let key = if parsed.stream {
            None
        } else {
            idempotency::key(&headers)?
        };
        let Some(key) = key else {
            return respond::generate(&s.jobs, &who, JobKind::Production, endpoint, parsed).await;
        };
        let hash = idempotency::fingerprint(uri.path(), &bytes);
        match idempotency::claim(&s.db, &who.org_id, &key, &hash).await? {
            idempotency::Outcome::Replay(r) => Ok(r),
            idempotency::Outcome::Run(claim) => {
                let result =
                    respond::generate(&s.jobs, &who, JobKind::Production, endpoint, parsed).await;
                Ok(claim.finish(result).await)
            }
        }
    };
    match run.await {
        Ok(r) => r,
        Err(e) => {
            if caller.recheck && e.refuses_key() {
                s.keys.forget(&caller.key.key_id);
            }
            e.into_response()
        }
    }
}

/// Too large (413), or the body broke off while it was read (400).
fn body_error(e: axum::Error) -> ApiError {
    use std::error::Error;
    let mut source: Option<&(dyn Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                ..ApiError::invalid(
                    "body",
                    format!("The request body is larger than {} MiB.", BODY_LIMIT >> 20),
                )
            };
        }
        source = s.source();
    }
    ApiError::invalid(
        "body",
        format!("The request body could not be read ({e}); send it again."),
    )
}

async fn unknown_route() -> ApiError {
    ApiError::not_found(
        "Unknown request URL. See /v1/models, /v1/chat/completions, /v1/completions, /v1/files and /v1/batches.",
        "unknown_url",
    )
}

async fn wrong_method() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        ..ApiError::not_found("This endpoint takes POST.", "method_not_allowed")
    }
}

/// While every admission permit is taken (see `completion`), a generation request is refused
/// before its key is even looked up: under overload the refusal costs no database work. This
/// only looks; the permit itself is taken after the key and the body, so no one can hold one
/// without a valid key and a whole request.
async fn refuse_when_full(
    State(s): State<ApiState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if s.admission.available_permits() == 0 {
        return axum::response::IntoResponse::into_response(ApiError::from(JobError::Overloaded));
    }
    next.run(req).await
}

pub fn router(state: ApiState) -> Router {
    let full = axum::middleware::from_fn_with_state(state.clone(), refuse_when_full);
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route(
            "/v1/chat/completions",
            post(chat_completions)
                .layer(full.clone())
                .fallback(wrong_method),
        )
        .route(
            "/v1/completions",
            post(completions).layer(full).fallback(wrong_method),
        )
        .route(
            "/v1/files",
            post(batch_api::upload)
                .layer(DefaultBodyLimit::max(batches::MAX_FILE_BYTES + (1 << 20)))
                .get(batch_api::list_files),
        )
        .route(
            "/v1/files/{id}",
            get(batch_api::get_file).delete(batch_api::delete_file),
        )
        .route("/v1/files/{id}/content", get(batch_api::file_content))
        .route(
            "/v1/batches",
            post(batch_api::create_batch).get(batch_api::list_batches),
        )
        .route("/v1/batches/{id}", get(batch_api::get_batch))
        .route("/v1/batches/{id}/cancel", post(batch_api::cancel_batch))
        .route("/v1/{*rest}", any(unknown_route))
        .with_state(state)
}
