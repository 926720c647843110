//! The one error type that crosses the wire from server functions to the pages.

use leptos::server_fn::{
    codec::JsonEncoding,
    error::{FromServerFnError, ServerFnErrorErr},
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AppError {
    /// Bad input in one form field: shown next to that field.
    #[error("{message}")]
    Field { field: String, message: String },
    /// Wrong credentials (no hint which part was wrong).
    #[error("{0}")]
    Unauthorized(String),
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    #[error("You need to log in to do that.")]
    NotSignedIn,
    #[error("You do not have permission to do that.")]
    Forbidden,
    #[error("Your organisation is suspended. Contact the platform operator.")]
    Suspended,
    /// The signed-in user's role requires two-factor sign-in, which is not set up yet.
    #[error("Your role requires two-factor sign-in. Set it up under Account before you go on.")]
    TwoFactorRequired,
    /// The email address is not verified yet.
    #[error(
        "Verify your email address first: open the link we sent you, or send a new one from the dashboard."
    )]
    Unverified,
    #[error("Not found.")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
    /// The thing changed state first (decided already, cancelled, …).
    #[error("{0}")]
    Conflict(String),
    /// The database had no connection free in time: nothing was done.
    #[error("The server is busy right now. Please try again in a moment.")]
    Busy,
    /// Details are logged on the server, never sent.
    #[error("Something went wrong on our side. Please try again.")]
    Internal,
    /// Transport or encoding failures reported by the server-function machinery.
    #[error("The request could not be completed: {0}")]
    Request(String),
}

impl AppError {
    /// The message to show next to `field`, if this error is about it.
    pub fn for_field(&self, name: &str) -> Option<String> {
        match self {
            AppError::Field { field, message } if field == name => Some(message.clone()),
            _ => None,
        }
    }

    /// The message to show at the top of a form, for errors not about one field.
    pub fn general(&self) -> Option<String> {
        match self {
            AppError::Field { .. } => None,
            other => Some(other.to_string()),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            AppError::Field { .. } | AppError::Invalid(_) | AppError::Request(_) => 400,
            AppError::Unauthorized(_) | AppError::NotSignedIn => 401,
            AppError::Forbidden
            | AppError::Suspended
            | AppError::TwoFactorRequired
            | AppError::Unverified => 403,
            AppError::NotFound => 404,
            AppError::Conflict(_) => 409,
            AppError::RateLimited { .. } => 429,
            AppError::Busy => 503,
            AppError::Internal => 500,
        }
    }
}

impl FromServerFnError for AppError {
    type Encoder = JsonEncoding;

    fn from_server_fn_error(value: ServerFnErrorErr) -> Self {
        AppError::Request(value.to_string())
    }
}

/// Storage trouble as the pages show it: busy when the database had no connection free in
/// time (the same action may work in a moment), else an internal error whose details stay in
/// the log.
#[cfg(feature = "ssr")]
fn storage(e: &(dyn std::error::Error + 'static), area: &str) -> AppError {
    if db::is_pool_timeout(e) {
        tracing::warn!(error = %e, area, "database busy");
        return AppError::Busy;
    }
    tracing::error!(error = %e, area, "storage error");
    AppError::Internal
}

#[cfg(feature = "ssr")]
impl From<accounts::AccountError> for AppError {
    fn from(e: accounts::AccountError) -> Self {
        use accounts::AccountError as E;
        match e {
            E::Field { field, message } => AppError::Field {
                field: field.to_string(),
                message,
            },
            E::InvalidCredentials => AppError::Unauthorized(e.to_string()),
            E::RateLimited { retry_after_secs } => AppError::RateLimited {
                message: e.to_string(),
                retry_after_secs,
            },
            E::NotFound => AppError::NotFound,
            E::Forbidden => AppError::Forbidden,
            E::InvitationInvalid | E::LinkInvalid => AppError::Invalid(e.to_string()),
            E::SecondFactor(message) => AppError::Unauthorized(message),
            E::Unverified => AppError::Unverified,
            E::Conflict(message) => AppError::Conflict(message),
            E::Internal(_) | E::Db(_) => storage(&e, "accounts"),
        }
    }
}

#[cfg(feature = "ssr")]
impl From<credits::CreditsError> for AppError {
    fn from(e: credits::CreditsError) -> Self {
        use credits::CreditsError as E;
        match e {
            E::Field { field, message } => AppError::Field {
                field: field.to_string(),
                message,
            },
            E::BudgetExhausted | E::NotEligible => AppError::Invalid(e.to_string()),
            E::NotFound => AppError::NotFound,
            E::Ledger(_) | E::Db(_) | E::Export(_) => storage(&e, "credits"),
        }
    }
}

#[cfg(feature = "ssr")]
impl From<compute::ComputeError> for AppError {
    fn from(e: compute::ComputeError) -> Self {
        use compute::ComputeError as E;
        match e {
            E::Field { field, message } => AppError::Field {
                field: field.to_string(),
                message,
            },
            E::NotFound => AppError::NotFound,
            E::Forbidden => AppError::Forbidden,
            E::Conflict(m) => AppError::Conflict(m),
            E::BudgetExhausted => AppError::Conflict(e.to_string()),
            E::Credits(c) => c.into(),
            E::Accounts(a) => a.into(),
            E::Db(_) => storage(&e, "compute"),
        }
    }
}

#[cfg(feature = "ssr")]
impl From<keys::KeyError> for AppError {
    fn from(e: keys::KeyError) -> Self {
        use keys::KeyError as E;
        match e {
            E::BadInput(message) => AppError::Invalid(message),
            E::NotFound => AppError::NotFound,
            E::Invalid | E::Revoked | E::Expired => AppError::Unauthorized(e.to_string()),
            E::Suspended => AppError::Suspended,
            E::Busy => AppError::Busy,
            E::Storage(_) => storage(&e, "API keys"),
        }
    }
}

#[cfg(feature = "ssr")]
impl From<payments::PaymentsError> for AppError {
    fn from(e: payments::PaymentsError) -> Self {
        use payments::PaymentsError as E;
        match e {
            E::Field { field, message } => AppError::Field {
                field: field.to_string(),
                message,
            },
            // The settings are the operator's business (the log names them); a tenant is told
            // what it means for them.
            E::NotConfigured => {
                tracing::warn!(error = ?e, "top-up not started");
                AppError::Invalid(
                    "Paying by card is not available on this portal yet. Ask the platform's operator for credit."
                        .into(),
                )
            }
            E::Stripe(_) => {
                tracing::warn!(error = ?e, "top-up not started");
                AppError::Invalid(e.to_string())
            }
            E::Credits(c) => c.into(),
            E::Ledger(_) | E::Db(_) => storage(&e, "payments"),
        }
    }
}

#[cfg(feature = "ssr")]
impl From<statements::StatementError> for AppError {
    fn from(e: statements::StatementError) -> Self {
        use statements::StatementError as E;
        match e {
            E::BadPeriod(_) | E::BadDate(_) | E::Invalid(_) => AppError::Invalid(e.to_string()),
            E::UnknownPartner | E::NotFound | E::UnknownUsage => AppError::NotFound,
            E::Conflict(message) => AppError::Conflict(message),
            E::Credits(c) => c.into(),
            E::Ledger(_) | E::Db(_) => storage(&e, "statements"),
        }
    }
}

#[cfg(all(test, feature = "ssr"))]
mod tests {
    use super::*;
    use db::{DbError, sqlx};

    #[test]
    fn a_database_with_no_connection_free_is_busy_on_the_pages_not_an_internal_error() {
        let busy = AppError::from(credits::CreditsError::Db(DbError::Sqlx(
            sqlx::Error::PoolTimedOut,
        )));
        assert_eq!(busy, AppError::Busy);
        assert_eq!(busy.status(), 503);
        assert_eq!(AppError::from(keys::KeyError::Busy).status(), 503);
        let broken = AppError::from(compute::ComputeError::Db(DbError::Sqlx(
            sqlx::Error::RowNotFound,
        )));
        assert_eq!(broken, AppError::Internal);
        assert_eq!(broken.status(), 500);
    }
}
