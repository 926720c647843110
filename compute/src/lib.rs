//! Factories and compute requests.
//!
//! A factory is a partner's GPU capacity in one region, serving a set of models. Tenants ask a
//! factory for capacity (a model's throughput or whole GPUs) over a period, optionally applying
//! for credit support from a program. The partner that runs the factory, or an operator,
//! decides; an approval sets the allocation the job scheduler will honour and may attach a
//! grant. Every action lands on the request's timeline.
//!
//! Who may see what is decided here, not in the pages: a request is visible to its tenant, to
//! the partner whose factory it is on, and to operators; to anyone else it does not exist.

mod decisions;
mod factories;
mod prices;
mod requests;
mod types;
mod worker_tokens;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use accounts::{AccountError, Accounts};
use credits::{Credits, CreditsError};
use db::Db;

pub use decisions::Decision;
pub use factories::{Factory, FactorySpec};
pub use prices::ModelPrice;
pub use requests::{Allocation, ComputeRequest, GrantRef, RequestForm, Support, TimelineEvent};
pub use types::{Capacity, Commitment, Day, GpuClass, Status};
pub use worker_tokens::{Enrolled, WorkerToken, factory_of as worker_token_factory};

#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    #[error("{message}")]
    Field {
        field: &'static str,
        message: String,
    },
    #[error("Not found.")]
    NotFound,
    #[error("You do not have permission to do that.")]
    Forbidden,
    /// The request is not in a state that allows this (already decided, cancelled, …).
    #[error("{0}")]
    Conflict(String),
    #[error("The program's budget cannot cover this grant.")]
    BudgetExhausted,
    #[error(transparent)]
    Credits(CreditsError),
    #[error(transparent)]
    Accounts(#[from] AccountError),
    #[error(transparent)]
    Db(#[from] db::DbError),
}

impl From<db::sqlx::Error> for ComputeError {
    fn from(e: db::sqlx::Error) -> Self {
        ComputeError::Db(db::DbError::Sqlx(e))
    }
}

impl From<CreditsError> for ComputeError {
    fn from(e: CreditsError) -> Self {
        match e {
            CreditsError::BudgetExhausted => ComputeError::BudgetExhausted,
            CreditsError::NotEligible => ComputeError::Field {
                field: "program",
                message: "This program is not open to this organisation.".to_string(),
            },
            other => ComputeError::Credits(other),
        }
    }
}

pub(crate) fn field(field: &'static str, message: &str) -> ComputeError {
    ComputeError::Field {
        field,
        message: message.to_string(),
    }
}

#[derive(Clone, Debug)]
pub struct Compute {
    db: Db,
    accounts: Accounts,
    credits: Credits,
    /// Counts changes to prices, factories and requests made through this handle (and its
    /// clones), so that copies of them kept in memory know when to read again.
    changes: Arc<AtomicU64>,
}

impl Compute {
    pub fn new(db: Db, accounts: Accounts, credits: Credits) -> Compute {
        Compute {
            db,
            accounts,
            credits,
            changes: Arc::default(),
        }
    }

    /// How many changes this process made to prices, factories and allocations so far.
    /// Another instance's changes do not show here: caches also expire by time.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }
}
