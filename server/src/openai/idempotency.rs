//! `Idempotency-Key` on the non-streaming POSTs (RELIABILITY M3), as Stripe keeps them: the
//! first successful response is stored under (organisation, key) and replayed to every repeat
//! with the same body for 24 hours; the same key with a different body is refused; a repeat
//! while the first is still running gets 409. A request that ends in an error stores nothing,
//! so it can be retried under the same key.

use axum::{
    body::{Body, to_bytes},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use db::{Db, now_ms, sqlx::Row};
use sha2::{Digest, Sha256};

use super::error::ApiError;

pub const HEADER: &str = "idempotency-key";
const KEEP_MS: i64 = 24 * 60 * 60 * 1000;
/// A claim still running after this long was abandoned (its process died): no job outlives
/// its hold, so nothing can still be running for it.
const STALE_MS: i64 = jobs::HOLD_TTL_MS + 60 * 1000;
/// Larger responses are returned but not kept (the key is released instead).
const MAX_STORED: usize = 4 * 1024 * 1024;

/// The key from the request's headers, if one was sent.
pub fn key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(HEADER) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 => Ok(Some(k.to_string())),
        _ => Err(ApiError::invalid(
            "Idempotency-Key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters.",
        )),
    }
}

pub fn fingerprint(path: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(path.as_bytes());
    h.update([0]);
    h.update(body);
    hex::encode(h.finalize())
}

/// A claimed key: released (so a retry may run) unless the response is stored.
pub struct Claim {
    db: Db,
    org_id: String,
    key: String,
    /// When this claim was made: a later claim of the same key (after this one was judged
    /// stale) is a different row, which this one must neither fill nor release.
    created_at: i64,
    stored: bool,
}

pub enum Outcome {
    Run(Claim),
    Replay(Response),
}

fn storage(e: impl std::error::Error + 'static) -> ApiError {
    if db::is_pool_timeout(&e) {
        return ApiError::busy("The server is busy; retry shortly.");
    }
    tracing::error!(error = %e, "idempotency storage failed");
    ApiError::internal("The request could not be recorded; try again.")
}

pub async fn claim(db: &Db, org_id: &str, key: &str, hash: &str) -> Result<Outcome, ApiError> {
    let now = now_ms();
    // Forget expired keys and claims whose process went away.
    db::sqlx::query(
        "DELETE FROM api_idempotency WHERE org_id = $1 AND idempotency_key = $2 \
         AND (created_at < $3 OR (status_code IS NULL AND created_at < $4))",
    )
    .bind(org_id)
    .bind(key)
    .bind(now - KEEP_MS)
    .bind(now - STALE_MS)
    .execute(db.pool())
    .await
    .map_err(storage)?;
    let inserted = db::sqlx::query(
        "INSERT INTO api_idempotency (org_id, idempotency_key, request_hash, created_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(org_id)
    .bind(key)
    .bind(hash)
    .bind(now)
    .execute(db.pool())
    .await;
    match inserted {
        Ok(_) => {
            return Ok(Outcome::Run(Claim {
                db: db.clone(),
                org_id: org_id.to_string(),
                key: key.to_string(),
                created_at: now,
                stored: false,
            }));
        }
        Err(e) if db::is_unique_violation(&e) => {}
        Err(e) => return Err(storage(e)),
    }
    let row = db::sqlx::query(
        "SELECT request_hash, status_code, response_body FROM api_idempotency \
         WHERE org_id = $1 AND idempotency_key = $2",
    )
    .bind(org_id)
    .bind(key)
    .fetch_optional(db.pool())
    .await
    .map_err(storage)?
    .ok_or_else(|| {
        ApiError::conflict(
            StatusCode::CONFLICT,
            "A request with this Idempotency-Key was just released; retry.",
            "idempotency_conflict",
        )
    })?;
    let same: String = row.try_get("request_hash").map_err(storage)?;
    if same != hash {
        return Err(ApiError::conflict(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Keys for idempotent requests can only be used with the same parameters they were first used with.",
            "idempotency_key_reused",
        ));
    }
    let status: Option<i64> = row.try_get("status_code").map_err(storage)?;
    let body: Option<String> = row.try_get("response_body").map_err(storage)?;
    match (status, body) {
        (Some(status), Some(body)) => {
            let mut r = Response::new(Body::from(body));
            *r.status_mut() = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(Outcome::Replay(r))
        }
        _ => Err(ApiError::conflict(
            StatusCode::CONFLICT,
            "A request with this Idempotency-Key is still running; retry after it finishes.",
            "idempotency_in_progress",
        )),
    }
}

impl Claim {
    /// Stores a successful response for replay (and passes it on); anything else releases
    /// the key.
    pub async fn finish(mut self, result: Result<Response, ApiError>) -> Response {
        let response = match result {
            Ok(r) if r.status() == StatusCode::OK => r,
            Ok(r) => return r,
            Err(e) => return e.into_response(),
        };
        let (parts, body) = response.into_parts();
        // The job is settled by now: its answer is always returned, whatever its size.
        let Ok(bytes) = to_bytes(body, usize::MAX).await else {
            return ApiError::internal("The response could not be assembled; try again.")
                .into_response();
        };
        if bytes.len() > MAX_STORED {
            return Response::from_parts(parts, Body::from(bytes));
        }
        let saved = db::sqlx::query(
            "UPDATE api_idempotency SET status_code = $1, response_body = $2 \
             WHERE org_id = $3 AND idempotency_key = $4 AND created_at = $5",
        )
        .bind(i64::from(parts.status.as_u16()))
        .bind(String::from_utf8_lossy(&bytes).into_owned())
        .bind(&self.org_id)
        .bind(&self.key)
        .bind(self.created_at)
        .execute(self.db.pool())
        .await;
        match saved {
            Ok(_) => self.stored = true,
            Err(e) => tracing::warn!(error = %e, "storing an idempotent response failed"),
        }
        Response::from_parts(parts, Body::from(bytes))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.stored {
            return;
        }
        let (db, org, key, at) = (
            self.db.clone(),
            self.org_id.clone(),
            self.key.clone(),
            self.created_at,
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let released = db::sqlx::query(
                    "DELETE FROM api_idempotency WHERE org_id = $1 AND idempotency_key = $2 \
                     AND status_code IS NULL AND created_at = $3",
                )
                .bind(&org)
                .bind(&key)
                .bind(at)
                .execute(db.pool())
                .await;
                if let Err(e) = released {
                    tracing::warn!(error = %e, "releasing an idempotency key failed");
                }
            });
        }
    }
}
