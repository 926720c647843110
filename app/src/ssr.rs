//! Server-side context shared by every server function: the application state, the session,
//! the signed-in user, and how errors become HTTP statuses.

use accounts::{Accounts, User};
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use tower_sessions::Session;

use crate::AppError;

/// Everything a server function needs, provided as Leptos context by the server.
#[derive(Clone, Debug)]
pub struct AppState {
    pub accounts: Accounts,
    pub credits: credits::Credits,
    pub compute: compute::Compute,
    pub payments: payments::Payments,
    pub keys: keys::ApiKeys,
    /// Generation jobs (the playground) and their usage.
    pub jobs: jobs::Jobs,
    /// Batch jobs and their files.
    pub batches: batches::Batches,
    /// Partner agreements and revenue-share statements.
    pub statements: statements::Statements,
    /// A signed-in session ends this long after login, however active (RELIABILITY A7).
    pub session_absolute_ms: i64,
    /// The public origin (`https://console.example.com`), when configured; otherwise links are
    /// built from the request's `Host`.
    pub public_url: Option<String>,
    /// Sends the letters of sign-up, password reset and invitations.
    pub mailer: mail::Mailer,
}

/// The client's address as the server determined it (socket peer, or the first
/// `X-Forwarded-For` hop when a proxy is trusted). Inserted by the server as a request
/// extension.
#[derive(Clone, Debug)]
pub struct ClientIp(pub String);

/// The session key holding who is signed in.
pub const AUTH_KEY: &str = "auth";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthRecord {
    pub user_id: String,
    pub logged_in_at: i64,
}

/// The session key of a login whose password was right and whose second factor is awaited.
pub const SECOND_FACTOR_KEY: &str = "second_factor";
/// How long the second factor may take after the password.
pub const SECOND_FACTOR_TTL_MS: i64 = 5 * 60 * 1000;

/// The application state. A server function takes it before its first `await`: during server
/// rendering, context is only reliable until the future first yields.
pub fn state() -> Result<AppState, AppError> {
    use_context::<AppState>().ok_or_else(|| {
        tracing::error!("AppState missing from context");
        AppError::Internal
    })
}

pub async fn session() -> Result<Session, AppError> {
    leptos_axum::extract::<Session>().await.map_err(|e| {
        tracing::error!(error = %e, "session layer missing");
        AppError::Internal
    })
}

fn store_error(e: tower_sessions::session::Error) -> AppError {
    tracing::error!(error = %e, "session store error");
    AppError::Internal
}

/// The signed-in user, if any. Ends the session when it has passed its absolute lifetime or the
/// user no longer exists. A user whose role requires two-factor sign-in and who has not set
/// it up gets [`AppError::TwoFactorRequired`].
pub async fn current_user() -> Result<Option<User>, AppError> {
    user_of_session(&state()?, &session().await?).await
}

/// The user signed in on `session` (also used by plain axum handlers, such as downloads),
/// refused with [`AppError::TwoFactorRequired`] until a required second factor is set up.
pub async fn user_of_session(st: &AppState, session: &Session) -> Result<Option<User>, AppError> {
    match session_user(st, session).await? {
        Some(s) if s.needs_two_factor_setup() => Err(AppError::TwoFactorRequired),
        other => Ok(other.map(|s| s.user)),
    }
}

/// The signed-in user whatever their second factor: for the pages that set it up, show who is
/// signed in, and log out.
pub async fn current_session_user() -> Result<Option<accounts::SessionUser>, AppError> {
    session_user(&state()?, &session().await?).await
}

async fn session_user(
    st: &AppState,
    session: &Session,
) -> Result<Option<accounts::SessionUser>, AppError> {
    let Some(auth) = session
        .get::<AuthRecord>(AUTH_KEY)
        .await
        .map_err(store_error)?
    else {
        return Ok(None);
    };
    if db::now_ms() - auth.logged_in_at > st.session_absolute_ms {
        session.flush().await.map_err(store_error)?;
        return Ok(None);
    }
    match st.accounts.user_with_state(&auth.user_id).await? {
        Some(s) if s.suspended => Err(AppError::Suspended),
        Some(s) => Ok(Some(s)),
        None => {
            session.flush().await.map_err(store_error)?;
            Ok(None)
        }
    }
}

/// The state and the signed-in user: how a server function begins. (The state is taken first,
/// before any `await`; see [`state`].)
pub async fn signed_in() -> Result<(AppState, User), AppError> {
    let app = state()?;
    let user = require_user().await.map_err(with_status)?;
    Ok((app, user))
}

/// [`signed_in`] for the operators' server functions: anyone else is refused (403).
pub async fn signed_in_operator() -> Result<(AppState, User), AppError> {
    let app = state()?;
    let user = require_operator().await.map_err(with_status)?;
    Ok((app, user))
}

pub async fn require_user() -> Result<User, AppError> {
    current_user().await?.ok_or(AppError::NotSignedIn)
}

/// The signed-in user, whose email address must be verified: for what spends or grants
/// credits (keys, jobs, top-ups).
pub async fn require_verified_user() -> Result<User, AppError> {
    let user = require_user().await?;
    if user.email_verified {
        Ok(user)
    } else {
        Err(AppError::Unverified)
    }
}

/// Signs `user` in on this session under a fresh session id (no fixation).
/// The signed-in user, who must be an operator.
/// Records an operator's or partner's change in the audit log. The change is made by then: a
/// failed write is logged at error level rather than reported as the change failing.
pub async fn audited(app: &AppState, actor: &User, change: accounts::Change<'_>) {
    if let Err(e) = app.accounts.audit(actor, change.clone()).await {
        tracing::error!(error = %e, action = change.action, target = change.target_id, "writing the audit log failed");
    }
}

/// The name of an organisation, for a letter ("" if it is gone).
pub async fn org_name(app: &AppState, org_id: &str) -> Result<String, AppError> {
    Ok(app
        .accounts
        .org(org_id)
        .await?
        .map(|o| o.name)
        .unwrap_or_default())
}

/// A before/after state for the audit log.
pub fn audit_json(v: serde_json::Value) -> Option<String> {
    Some(v.to_string())
}

pub async fn require_operator() -> Result<User, AppError> {
    let user = require_user().await?;
    if user.is_operator {
        Ok(user)
    } else {
        Err(AppError::Forbidden)
    }
}

pub async fn log_in(user: &User) -> Result<(), AppError> {
    let session = session().await?;
    session.cycle_id().await.map_err(store_error)?;
    session
        .remove_value(SECOND_FACTOR_KEY)
        .await
        .map_err(store_error)?;
    session
        .insert(
            AUTH_KEY,
            AuthRecord {
                user_id: user.id.clone(),
                logged_in_at: db::now_ms(),
            },
        )
        .await
        .map_err(store_error)?;
    Ok(())
}

/// Remembers, under a fresh session id, a login whose password was right and that waits for
/// its second factor; nothing else is reachable meanwhile.
pub async fn await_second_factor(user: &User) -> Result<(), AppError> {
    let session = session().await?;
    session.cycle_id().await.map_err(store_error)?;
    session.remove_value(AUTH_KEY).await.map_err(store_error)?;
    session
        .insert(
            SECOND_FACTOR_KEY,
            AuthRecord {
                user_id: user.id.clone(),
                logged_in_at: db::now_ms(),
            },
        )
        .await
        .map_err(store_error)
}

/// The user whose second factor this session waits for, if it still does.
pub async fn awaiting_second_factor() -> Result<Option<String>, AppError> {
    let session = session().await?;
    let pending = session
        .get::<AuthRecord>(SECOND_FACTOR_KEY)
        .await
        .map_err(store_error)?;
    Ok(pending
        .filter(|p| db::now_ms() - p.logged_in_at <= SECOND_FACTOR_TTL_MS)
        .map(|p| p.user_id))
}

pub async fn log_out() -> Result<(), AppError> {
    session().await?.flush().await.map_err(store_error)
}

pub fn client_ip() -> String {
    use_context::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<ClientIp>().cloned())
        .map(|ip| ip.0)
        .unwrap_or_else(|| "unknown".to_string())
}

/// The origin links are built with.
pub fn origin() -> String {
    if let Ok(st) = state()
        && let Some(url) = st.public_url
    {
        return url.trim_end_matches('/').to_string();
    }
    let host = use_context::<http::request::Parts>()
        .and_then(|p| p.headers.get(http::header::HOST).cloned())
        .and_then(|h| h.to_str().ok().map(str::to_string))
        .unwrap_or_else(|| "127.0.0.1:3000".to_string());
    format!("http://{host}")
}

/// Whether the request came from a plain HTML form (no JavaScript): those are answered with a
/// redirect that carries the error, so the status must not be overridden.
fn is_form_post() -> bool {
    use_context::<http::request::Parts>()
        .and_then(|p| p.headers.get(http::header::ACCEPT).cloned())
        .and_then(|v| v.to_str().ok().map(|s| s.contains("text/html")))
        .unwrap_or(false)
}

/// The server function's answer for `err`: sets the HTTP status (and `Retry-After`)
/// for API clients, and returns it.
pub fn with_status(err: impl Into<AppError>) -> AppError {
    let err = err.into();
    if !is_form_post()
        && let Some(opts) = use_context::<leptos_axum::ResponseOptions>()
    {
        let status = http::StatusCode::from_u16(err.status())
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        opts.set_status(status);
        if let AppError::RateLimited {
            retry_after_secs, ..
        } = &err
            && let Ok(v) = http::HeaderValue::from_str(&retry_after_secs.to_string())
        {
            opts.insert_header(http::header::RETRY_AFTER, v);
        }
    }
    err
}
