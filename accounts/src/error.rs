//! The one error type of the accounts layer.

use db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// Bad input in one form field; the message is shown next to that field.
    #[error("{message}")]
    Field {
        field: &'static str,
        message: String,
    },
    /// Unknown email and wrong password alike (no enumeration).
    #[error("Incorrect email or password.")]
    InvalidCredentials,
    #[error("Too many failed attempts. Try again in {} minutes.", retry_after_secs.div_ceil(60))]
    RateLimited { retry_after_secs: u64 },
    #[error("Not found.")]
    NotFound,
    #[error("You do not have permission to do that.")]
    Forbidden,
    #[error("This invitation link is invalid, has expired or has already been used.")]
    InvitationInvalid,
    #[error("This link is invalid, has expired or has already been used.")]
    LinkInvalid,
    /// A second factor is needed: given wrongly, or not given yet.
    #[error("{0}")]
    SecondFactor(String),
    /// The action needs a verified email address first.
    #[error(
        "Verify your email address first: use the link we sent you (or send a new one from the dashboard)."
    )]
    Unverified,
    #[error("{0}")]
    Conflict(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl AccountError {
    pub fn field(field: &'static str, message: impl Into<String>) -> AccountError {
        AccountError::Field {
            field,
            message: message.into(),
        }
    }
}

impl From<db::sqlx::Error> for AccountError {
    fn from(e: db::sqlx::Error) -> Self {
        AccountError::Db(DbError::Sqlx(e))
    }
}
