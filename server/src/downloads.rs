//! Plain HTTP endpoints next to the pages: the Credits history as CSV (a download, so not a
//! server function), and Stripe's webhook.

use app::ssr::{AppState, user_of_session};
use axum::{
    Json,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use payments::{Payments, WebhookError};
use serde::Deserialize;
use tower_sessions::Session;

#[derive(Deserialize)]
pub struct HistoryQuery {
    #[serde(default)]
    kind: String,
}

/// `GET /credits/history.csv[?kind=usage]`: the signed-in organisation's wallet history.
pub async fn history_csv(
    State(st): State<AppState>,
    session: Session,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let user = match signed_in(&st, &session, "Log in to download your history.").await {
        Ok(user) => user,
        Err(refused) => return refused,
    };
    let kind = app::api::HISTORY_KINDS
        .iter()
        .map(|(code, _)| *code)
        .find(|code| !code.is_empty() && *code == q.kind.trim());
    match st.credits.history_csv(&user.org_id, kind).await {
        Ok(csv) => csv_download(
            csv,
            &format!("tokenmill-credits-{}.csv", kind.unwrap_or("all")),
        ),
        Err(e) => {
            tracing::error!(error = %e, "history export");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[derive(Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    q: String,
}

/// `GET /audit.csv[?q=…]`: the audit log entries the signed-in operator or partner may read
/// (all of them, or those matching the page's search), oldest first.
pub async fn audit_csv(
    State(st): State<AppState>,
    session: Session,
    Query(q): Query<AuditQuery>,
) -> Response {
    let user = match signed_in(&st, &session, "Log in to download the audit log.").await {
        Ok(user) => user,
        Err(refused) => return refused,
    };
    let mut events = match st.accounts.audit_log(&user, &q.q, i64::MAX).await {
        Ok(events) => events,
        Err(accounts::AccountError::Forbidden) => {
            return (
                StatusCode::FORBIDDEN,
                "Only operators and partners have an audit log.",
            )
                .into_response();
        }
        Err(e) => {
            tracing::error!(error = %e, "audit export");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    events.reverse();
    let mut out = text::Csv::new();
    let header = [
        "at_utc",
        "actor",
        "actor_org_id",
        "action",
        "target_kind",
        "target_id",
        "target_org_id",
        "before",
        "after",
    ];
    let mut written = out.row(header);
    for e in events {
        if written.is_err() {
            break;
        }
        written = out.row([
            app::api::timestamp(e.at),
            e.actor_email,
            e.actor_org_id,
            e.action,
            e.target_kind,
            e.target_id,
            e.target_org_id.unwrap_or_default(),
            e.before.unwrap_or_default(),
            e.after.unwrap_or_default(),
        ]);
    }
    match written.and_then(|()| out.finish()) {
        Ok(csv) => csv_download(csv, "tokenmill-audit-log.csv"),
        Err(e) => {
            tracing::error!(error = %e, "audit export: writing CSV");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[derive(Deserialize)]
pub struct UsageQuery {
    days: Option<i64>,
}

/// `GET /usage.csv?days=7|30|90`: the signed-in organisation's usage per day and model.
pub async fn usage_csv(
    State(st): State<AppState>,
    session: Session,
    Query(q): Query<UsageQuery>,
) -> Response {
    let user = match signed_in(&st, &session, "Log in to download your usage.").await {
        Ok(user) => user,
        Err(refused) => return refused,
    };
    let days = q.days.unwrap_or(30);
    if !app::api::USAGE_WINDOWS.contains(&days) {
        return (StatusCode::BAD_REQUEST, "days must be 7, 30 or 90.").into_response();
    }
    match st
        .jobs
        .daily_usage_csv(&user.org_id, days, db::now_ms())
        .await
    {
        Ok(csv) => csv_download(csv, &format!("tokenmill-usage-{days}d.csv")),
        Err(e) => {
            tracing::error!(error = %e, "usage export");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The signed-in user of a plain (non-server-function) endpoint, or the response refusing the
/// request: 401 saying `log_in` when no one is signed in, 403 for a suspended organisation,
/// 500 when the session cannot be read.
pub async fn signed_in(
    st: &AppState,
    session: &Session,
    log_in: &'static str,
) -> Result<accounts::User, Response> {
    match user_of_session(st, session).await {
        Ok(Some(user)) => Ok(user),
        Ok(None) => Err((StatusCode::UNAUTHORIZED, log_in).into_response()),
        Err(app::AppError::Suspended) => Err(suspended_response()),
        Err(e @ app::AppError::TwoFactorRequired) => {
            Err((StatusCode::FORBIDDEN, e.to_string()).into_response())
        }
        Err(e) => {
            tracing::error!(error = %e, "reading the session");
            Err(StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
    }
}

/// What a signed-in user of a suspended organisation gets from the plain HTTP endpoints.
pub fn suspended_response() -> Response {
    (
        StatusCode::FORBIDDEN,
        "Your organisation is suspended. Contact the platform operator.",
    )
        .into_response()
}

fn csv_download(csv: String, filename: &str) -> Response {
    attachment(csv, "text/csv; charset=utf-8", filename)
}

/// A text file as a download that is never cached.
pub fn attachment(body: String, content_type: &'static str, filename: &str) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `POST /webhooks/stripe`: verified against `Stripe-Signature`, applied once, answered fast.
/// A 409 makes Stripe retry an event that arrived before the payment it refers to.
pub async fn stripe_webhook(
    State(payments): State<Payments>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match payments.handle_webhook(&body, signature).await {
        Ok(outcome) => (
            StatusCode::OK,
            Json(serde_json::json!({ "received": true, "outcome": format!("{outcome:?}") })),
        )
            .into_response(),
        Err(e) => {
            let status = match &e {
                WebhookError::BadSignature | WebhookError::Stale | WebhookError::Malformed(_) => {
                    StatusCode::BAD_REQUEST
                }
                WebhookError::NotYet => StatusCode::CONFLICT,
                WebhookError::NotConfigured => StatusCode::SERVICE_UNAVAILABLE,
                WebhookError::Internal(detail) => {
                    tracing::error!(error = detail, "Stripe webhook failed");
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            };
            if status != StatusCode::INTERNAL_SERVER_ERROR {
                tracing::warn!(error = %e, "Stripe webhook refused");
            }
            let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
                "internal error".to_string()
            } else {
                e.to_string()
            };
            (
                status,
                Json(serde_json::json!({ "error": { "message": message } })),
            )
                .into_response()
        }
    }
}
