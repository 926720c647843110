//! Partner revenue-share statements.
//!
//! A partner's usage revenue collects in its factories' usage accounts as jobs settle. Each
//! calendar month (UTC) gets a statement: lines per tenant × model computed from the usage
//! events under the agreement in force when each happened, adjustments, totals, recoupment
//! progress, the amount payable. The current month is a draft that changes as usage arrives;
//! an operator closes a past month, which makes it immutable, numbers it, chains it to the
//! previous statement by hash and posts the split to the ledger, all in one transaction.

mod agreements;
pub mod canonical;
pub mod compute;
pub mod pdf;
mod period;
mod store;

pub use agreements::{AgreementVersion, NewAgreement};
pub use canonical::{Document, Verified, VerifyError, sha256_hex, usd, verify};
pub use compute::{Recoupment, Terms};
pub use period::{Period, date_label, parse_date};
pub use store::{
    Adjustment, AdjustmentKind, ChainLink, FactoryActivity, Statement, StatementStatus, Statements,
};

use db::DbError;
use ledger::LedgerError;

#[derive(Debug, thiserror::Error)]
pub enum StatementError {
    #[error("{0:?} is not a month; write it as YYYY-MM.")]
    BadPeriod(String),
    #[error("{0:?} is not a date; write it as YYYY-MM-DD.")]
    BadDate(String),
    #[error("No such partner.")]
    UnknownPartner,
    #[error("No such statement.")]
    NotFound,
    #[error("No such usage event.")]
    UnknownUsage,
    /// Input that can never be right (a rate above 100 %, an empty reason).
    #[error("{0}")]
    Invalid(String),
    /// Right in itself but not now (closing twice, an overlap, a closed month).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Credits(#[from] credits::CreditsError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<db::sqlx::Error> for StatementError {
    fn from(e: db::sqlx::Error) -> Self {
        StatementError::Db(DbError::Sqlx(e))
    }
}
