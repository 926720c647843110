//! `POST /playground/chat`: the playground's chat, streamed as the API streams it, but run as
//! the signed-in user (a cookie session, so inside the session and CSRF layers) and at
//! playground priority. The browser reads the usage chunk, then asks for the job's receipt
//! (cost and new balance) through a server function.

use app::ssr::{AppState, user_of_session};
use axum::{
    body::Bytes,
    extract::State,
    response::{IntoResponse, Response},
};
use jobs::{JobKind, Principal};
use tower_sessions::Session;

use crate::openai::{self, ApiError, Endpoint};

pub async fn chat(State(st): State<AppState>, session: Session, body: Bytes) -> Response {
    let user = match user_of_session(&st, &session).await {
        Ok(Some(user)) => user,
        Ok(None) => {
            return ApiError::unauthorized("Your session has ended; log in again.").into_response();
        }
        Err(app::AppError::Suspended) => {
            return crate::openai::ApiError::suspended().into_response();
        }
        Err(e @ app::AppError::TwoFactorRequired) => {
            return ApiError::forbidden(e.to_string(), "two_factor_required").into_response();
        }
        Err(e) => {
            tracing::error!(error = %e, "playground: session");
            return ApiError::internal("The session could not be read; try again.").into_response();
        }
    };
    if !user.email_verified {
        return ApiError::forbidden(app::AppError::Unverified.to_string(), "email_not_verified")
            .into_response();
    }
    let mut parsed = match openai::parse(Endpoint::Chat, &body) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    parsed.stream = true;
    parsed.include_usage = true;
    let who = Principal {
        org_id: user.org_id,
        user_id: Some(user.id),
        api_key_id: None,
        recheck_key: false,
    };
    match openai::generate(&st.jobs, &who, JobKind::Playground, Endpoint::Chat, parsed).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}
