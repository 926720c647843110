//! OpenAI's error body, `{"error": {"message", "type", "param", "code"}}`, with the status and
//! `Retry-After` each kind of refusal gets.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use jobs::JobError;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
    /// Seconds after which a retry may succeed (429 and 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// A bad parameter (`"body"`: the body as a whole, reported without a parameter).
    pub fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            param: (param != "body").then_some(param),
            code: Some("invalid_value"),
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// The key is valid but its organisation is suspended by the platform.
    pub fn suspended() -> ApiError {
        ApiError {
            code: Some("organization_suspended"),
            ..ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                "Your organization is suspended; contact the platform operator.",
            )
        }
    }

    /// The caller may not do this yet (a session whose user must first verify their email
    /// or set up two-factor sign-in).
    pub fn forbidden(message: impl Into<String>, code: &'static str) -> ApiError {
        ApiError {
            code: Some(code),
            ..ApiError::new(StatusCode::FORBIDDEN, "permission_error", message)
        }
    }

    /// Whether this refuses the request's API key (invalid, revoked or expired, or its
    /// organisation suspended).
    pub fn refuses_key(&self) -> bool {
        self.status == StatusCode::UNAUTHORIZED || self.code == Some("organization_suspended")
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError {
            code: Some("invalid_api_key"),
            ..ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
        }
    }

    pub fn unavailable() -> ApiError {
        ApiError {
            code: Some("service_unavailable"),
            retry_after: Some(5),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "No inference worker is available; try again shortly.",
            )
        }
    }

    /// The database had no connection free for the whole of the pool's wait: nothing was
    /// done, and the same request may succeed in a moment.
    pub fn busy(message: impl Into<String>) -> ApiError {
        ApiError {
            code: Some("server_busy"),
            retry_after: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
        }
    }

    pub fn rate_limited(
        message: impl Into<String>,
        code: &'static str,
        retry_after: u64,
    ) -> ApiError {
        ApiError {
            code: Some(code),
            retry_after: Some(retry_after.max(1)),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn not_found(message: impl Into<String>, code: &'static str) -> ApiError {
        ApiError {
            code: Some(code),
            ..ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
        }
    }

    pub fn conflict(
        status: StatusCode,
        message: impl Into<String>,
        code: &'static str,
    ) -> ApiError {
        ApiError {
            code: Some(code),
            ..ApiError::new(status, "invalid_request_error", message)
        }
    }

    /// Whether the same request may succeed later unchanged (a full queue, no worker).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        )
    }

    /// The body alone (a streamed response reports a late failure as one more event).
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> ApiError {
        let message = e.to_string();
        match e {
            JobError::Invalid { param, .. } => ApiError::invalid(param, message),
            JobError::ContextLength { .. } => ApiError {
                param: Some("messages"),
                code: Some("context_length_exceeded"),
                ..ApiError::invalid("messages", message)
            },
            JobError::UnknownModel(_) => ApiError {
                param: Some("model"),
                ..ApiError::not_found(message, "model_not_found")
            },
            // What to do about it belongs to the answer, not to the jobs layer.
            JobError::InsufficientCredits { .. } => ApiError {
                code: Some("insufficient_quota"),
                ..ApiError::new(
                    StatusCode::PAYMENT_REQUIRED,
                    "insufficient_quota",
                    format!("{message} Add credits on the Credits page or lower max_tokens."),
                )
            },
            JobError::Overloaded => ApiError::rate_limited(message, "queue_full", 1),
            JobError::TokensPerMinute { retry_after, .. } => {
                ApiError::rate_limited(message, "rate_limit_exceeded", retry_after)
            }
            JobError::LargerThanTokensPerMinute { .. } => ApiError {
                code: Some("request_too_large"),
                ..ApiError::invalid("max_tokens", message)
            },
            JobError::Unavailable => ApiError {
                message,
                ..ApiError::unavailable()
            },
            JobError::ShuttingDown => ApiError {
                message,
                code: Some("shutting_down"),
                ..ApiError::unavailable()
            },
            JobError::Key(e) => ApiError::from(e),
            JobError::Busy => ApiError::busy(message),
            JobError::Storage(detail) => {
                tracing::error!(error = %detail, "job storage failed");
                ApiError::internal(
                    "The request could not be recorded; you were not charged. Try again.",
                )
            }
        }
    }
}

/// Why a presented API key is refused: 401, or 403 when its organisation is suspended.
impl From<keys::KeyError> for ApiError {
    fn from(e: keys::KeyError) -> ApiError {
        match e {
            keys::KeyError::Storage(e) => {
                tracing::error!(error = %e, "API key lookup failed");
                ApiError::internal("The request could not be authenticated; try again.")
            }
            keys::KeyError::Busy => ApiError::busy(e.to_string()),
            keys::KeyError::Suspended => ApiError::suspended(),
            e => ApiError::unauthorized(format!("Incorrect API key provided: {e}.")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body())).into_response();
        let h = r.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(s) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_used_up_allocation_is_a_429_with_retry_after_and_an_oversized_request_a_400() {
        let r = ApiError::from(JobError::TokensPerMinute {
            limit: 1_000,
            requested: 600,
            retry_after: 7,
        })
        .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
        let e = ApiError::from(JobError::LargerThanTokensPerMinute {
            limit: 1_000,
            requested: 5_000,
        });
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param, Some("max_tokens"));
        assert!(e.message.contains("5000 tokens"), "{}", e.message);
    }

    #[test]
    fn a_database_with_no_connection_free_is_a_503_with_retry_after_not_a_500() {
        let r = ApiError::from(JobError::Busy).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let key = keys::KeyError::from(db::sqlx::Error::PoolTimedOut);
        let r = ApiError::from(key).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let other = keys::KeyError::from(db::sqlx::Error::RowNotFound);
        let e = ApiError::from(other);
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        let r = ApiError::from(batches::BatchError::Busy).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
