//! The OpenAI-compatible API under `/v1`: bearer API keys (no cookies, so outside the session
//! and CSRF layers) and OpenAI's error body, `{"error": {"message", "type", "param", "code"}}`.
//! This part lists the models; completions build on the same authentication and errors.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{FromRequestParts, State},
    http::{StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use serde_json::json;

/// Largest request body: a long chat with many messages.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// What every `/v1` handler can reach.
#[derive(Clone)]
pub struct ApiState {
    pub keys: keys::ApiKeys,
    pub pool: Option<Arc<engine::Pool>>,
    /// When the pool started (Unix seconds): the models' `created`.
    pub started: i64,
}

/// An error as OpenAI's clients expect it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "invalid_request_error",
            message: message.into(),
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    pub fn unavailable() -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            message: "No inference worker is available; try again shortly.".into(),
            param: None,
            code: Some("service_unavailable"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        });
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

/// The organisation a request's API key acts for.
pub struct Caller(pub keys::KeyIdentity);

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "You didn't provide an API key. Send it as Authorization: Bearer <key>; keys are made on the API keys page.",
                )
            })?;
        match state.keys.authenticate(presented).await {
            Ok(identity) => Ok(Caller(identity)),
            Err(keys::KeyError::Storage(e)) => {
                tracing::error!(error = %e, "API key lookup failed");
                Err(ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    kind: "server_error",
                    message: "The request could not be authenticated; try again.".into(),
                    param: None,
                    code: None,
                })
            }
            Err(e) => Err(ApiError::unauthorized(format!(
                "Incorrect API key provided: {e}."
            ))),
        }
    }
}

async fn models(
    State(s): State<ApiState>,
    _caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let pool = s.pool.as_ref().ok_or_else(ApiError::unavailable)?;
    let data: Vec<_> = pool
        .models()
        .into_iter()
        .map(|id| json!({ "id": id, "object": "model", "created": s.started, "owned_by": "tokenmill" }))
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

async fn unknown_route() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        message: "Unknown request URL. See /v1/models and /v1/chat/completions.".into(),
        param: None,
        code: Some("unknown_url"),
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/{*rest}", any(unknown_route))
        .with_state(state)
}
