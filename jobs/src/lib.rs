//! Jobs: every generation, from admission to its settled usage event.
//!
//! Admission ([`Jobs::start`]) validates the request against the model (through the engine's
//! `prepare`, which tokenizes without queueing), finds what the organisation may use (the list
//! price, its allocation or the on-demand defaults, the factory that serves it), reserves the
//! largest possible cost as a hold, records the job, and only then queues it at the job kind's
//! priority with the tenant's share weight. The [`RunningJob`] handed back streams the
//! engine's events and settles exactly once: the tokens produced when the job ends, only the
//! tokens delivered when the client goes away (a partial usage event), nothing when the engine
//! fails (the hold is voided). Settlement, the usage event and the job's final state are one
//! database transaction.

mod activity;
mod admit;
mod drain;
pub mod journal;
mod limits;
mod lookups;
pub mod metrics;
mod pricing;
pub mod recovery;
mod running;
mod settlement;
mod usage;
mod wallets;

use std::sync::Arc;

use credits::Credits;
use db::Db;

pub use activity::{Activity, Cursor, UsageShare};
pub use drain::{Busy, Drained};
pub use engine::Pool as WorkerPool;

/// The node name usage events carry for jobs this process's own pool ran.
pub const LOCAL_NODE: &str = fleet::node::LOCAL;
pub use pricing::Rates;
pub use running::{Charged, Receipt, RunningJob};
pub use usage::{DailyUsage, UsageEvent};

/// How a job came in; decides its scheduling class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Playground,
    Production,
    Batch,
}

impl JobKind {
    pub fn code(self) -> &'static str {
        match self {
            JobKind::Playground => "playground",
            JobKind::Production => "production",
            JobKind::Batch => "batch",
        }
    }

    pub fn from_code(code: &str) -> Option<JobKind> {
        match code {
            "playground" => Some(JobKind::Playground),
            "production" => Some(JobKind::Production),
            "batch" => Some(JobKind::Batch),
            _ => None,
        }
    }

    pub fn priority(self) -> engine::Priority {
        match self {
            JobKind::Production => engine::Priority::Production,
            JobKind::Playground => engine::Priority::Playground,
            JobKind::Batch => engine::Priority::Batch,
        }
    }
}

/// Who a job acts for: always an organisation; a signed-in user (the playground) or an API key
/// (and the user who made it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub org_id: String,
    pub user_id: Option<String>,
    pub api_key_id: Option<String>,
    /// The API key was taken from those found valid lately (`keys::Checked::Recently`):
    /// admission checks it again with the hold's wallet read, before anything is written.
    pub recheck_key: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A parameter is out of range or the prompt is unusable (named as the API names it).
    #[error("{message}")]
    Invalid {
        param: &'static str,
        message: String,
    },
    #[error(
        "This model's maximum context length is {context} tokens. However, you requested {} tokens ({prompt} in the messages, {max_tokens} in the completion). Please reduce the length of the messages or completion.",
        prompt.saturating_add(*max_tokens)
    )]
    ContextLength {
        prompt: usize,
        max_tokens: usize,
        context: usize,
    },
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    UnknownModel(String),
    #[error(
        "Not enough credits: this request may cost up to ${} and ${} is available.",
        needed.decimal(),
        available.decimal()
    )]
    InsufficientCredits {
        needed: ledger::Nanos,
        available: ledger::Nanos,
    },
    #[error("The server is at capacity; retry shortly.")]
    Overloaded,
    /// The allocation's tokens-per-minute limit is used up for now.
    #[error(
        "Rate limit reached: your allocation allows {limit} tokens per minute for this model and this request may use {requested}; retry in {retry_after} s."
    )]
    TokensPerMinute {
        limit: u64,
        requested: u64,
        retry_after: u64,
    },
    /// Larger than the allocation's whole minute: it can never run under that limit.
    #[error(
        "This request may use {requested} tokens (prompt + max_tokens), more than the {limit} tokens per minute your allocation allows for this model. Lower max_tokens or shorten the prompt."
    )]
    LargerThanTokensPerMinute { limit: u64, requested: u64 },
    #[error("No inference worker is available for this model; try again shortly.")]
    Unavailable,
    /// This instance is shutting down and takes no new work.
    #[error("This server is shutting down and takes no new requests; retry in a few seconds.")]
    ShuttingDown,
    /// The API key was revoked, expired or its organisation suspended since it was last
    /// looked up (see [`Principal::recheck_key`]).
    #[error("{0}")]
    Key(keys::KeyError),
    /// The database gave no connection in time: every one was busy for the pool's whole
    /// wait. Nothing was recorded; the same request may succeed shortly.
    #[error("The server is busy; retry shortly. You were not charged.")]
    Busy,
    #[error("storage: {0}")]
    Storage(String),
}

impl JobError {
    /// A storage failure as the caller is told it: [`JobError::Busy`] when what failed, or
    /// anything it failed from, was a wait for a pooled connection that ran out.
    fn storage(e: impl std::error::Error + 'static) -> JobError {
        if db::is_pool_timeout(&e) {
            return JobError::Busy;
        }
        JobError::Storage(e.to_string())
    }
}

impl From<engine::SubmitError> for JobError {
    fn from(e: engine::SubmitError) -> JobError {
        use engine::SubmitError as S;
        match e {
            S::Invalid(i) => JobError::Invalid {
                param: i.param,
                message: i.message,
            },
            S::ContextLength {
                prompt,
                max_tokens,
                context,
            } => JobError::ContextLength {
                prompt,
                max_tokens,
                context,
            },
            S::UnknownModel(m) => JobError::UnknownModel(m),
            S::Overloaded => JobError::Overloaded,
            S::Unavailable => JobError::Unavailable,
        }
    }
}

/// How long a hold may stay open: longer than any job runs, short enough that a crash returns
/// the money within the hour (the sweeper releases expired holds).
pub const HOLD_TTL_MS: i64 = 60 * 60 * 1000;

/// The share weight of an organisation without an allocation for the model.
pub const ON_DEMAND_WEIGHT: u32 = 1;

#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("pool", &self.inner.pool.as_ref().map(|p| p.models()))
            .finish_non_exhaustive()
    }
}

struct Inner {
    db: Db,
    credits: Credits,
    compute: compute::Compute,
    pool: Option<Arc<engine::Pool>>,
    limits: limits::TokenLimits,
    lookups: lookups::Lookups,
    metrics: metrics::JobMetrics,
    /// This process's id in `instances`, written on its jobs.
    instance_id: String,
    started_at: i64,
    /// Other instances' heartbeats as last read here, with when (this clock) they last moved.
    seen_heartbeats: std::sync::Mutex<std::collections::HashMap<String, (Option<i64>, i64)>>,
    /// The delivery journal and its directory, once opened (see [`journal`]).
    journal: std::sync::OnceLock<(journal::Journal, std::path::PathBuf)>,
    /// Admission, tracking and cancellation of the jobs a shutdown waits for.
    drain: drain::DrainState,
    /// What admission last read of each wallet (see [`wallets`]).
    wallets: wallets::Wallets,
    /// Finished jobs waiting to be settled together (see [`settlement`]).
    settler: settlement::Settler,
    /// The worker nodes of fleet factories, when this portal is connected to NATS.
    fleet: std::sync::OnceLock<fleet::Fleet>,
    /// Models opened for their tokenizer only (a portal without engine workers of its own,
    /// whose models only fleets run).
    catalog: std::sync::OnceLock<Vec<Arc<engine::ModelInfo>>>,
}

impl Jobs {
    pub fn new(
        db: Db,
        credits: Credits,
        compute: compute::Compute,
        pool: Option<Arc<engine::Pool>>,
    ) -> Jobs {
        Jobs {
            inner: Arc::new(Inner {
                db,
                credits,
                compute,
                pool,
                limits: limits::TokenLimits::default(),
                lookups: lookups::Lookups::default(),
                metrics: metrics::JobMetrics::default(),
                instance_id: db::new_id(),
                started_at: db::now_ms(),
                seen_heartbeats: Default::default(),
                journal: std::sync::OnceLock::new(),
                drain: drain::DrainState::default(),
                wallets: wallets::Wallets::default(),
                settler: settlement::Settler::default(),
                fleet: std::sync::OnceLock::new(),
                catalog: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Opens this instance's delivery journal in `dir` (once; streams are then charged for
    /// what they delivered even if the process is killed). Journals there of instances that
    /// are gone are settled by [`Jobs::recover_journals`].
    pub fn open_journal(&self, dir: &std::path::Path) -> std::io::Result<()> {
        let journal = journal::Journal::open(dir, &self.inner.instance_id)?;
        self.inner
            .journal
            .set((journal, dir.to_path_buf()))
            .map_err(|_| std::io::Error::other("the journal is already open"))
    }

    pub(crate) fn journal(&self) -> Option<&journal::Journal> {
        self.inner.journal.get().map(|(j, _)| j)
    }

    /// Deletes this instance's journal file: a clean shutdown, every job settled.
    pub fn remove_journal(&self) {
        if let Some((j, _)) = self.inner.journal.get() {
            j.remove();
        }
    }

    pub fn pool(&self) -> Option<&Arc<engine::Pool>> {
        self.inner.pool.as_ref()
    }

    /// Sends fleet factories' jobs to their nodes through `fleet` (once, at start).
    pub fn attach_fleet(&self, fleet: fleet::Fleet) {
        let _ = self.inner.fleet.set(fleet);
    }

    pub fn fleet(&self) -> Option<&fleet::Fleet> {
        self.inner.fleet.get()
    }

    /// Models this portal prepares requests for without running them (once, at start).
    pub fn attach_catalog(&self, models: Vec<Arc<engine::ModelInfo>>) {
        let _ = self.inner.catalog.set(models);
    }

    /// The tokenizer, template and limits of `model`: from a worker here, else the catalog.
    pub fn model_info(&self, model: &str) -> Option<Arc<engine::ModelInfo>> {
        self.inner
            .pool
            .as_ref()
            .and_then(|p| p.info(model))
            .or_else(|| {
                self.inner
                    .catalog
                    .get()?
                    .iter()
                    .find(|m| m.model_id == model)
                    .cloned()
            })
    }

    /// This process's job metrics (latency histograms, jobs by outcome).
    pub fn metrics(&self) -> &metrics::JobMetrics {
        &self.inner.metrics
    }

    /// Models a tenant may use: priced, served by a factory, and loaded by a worker here or
    /// on a live node of a fleet.
    pub async fn available_models(&self) -> Result<Vec<String>, JobError> {
        let mut served = self
            .inner
            .pool
            .as_ref()
            .map(|p| p.models())
            .unwrap_or_default();
        if let Some(fleet) = self.fleet() {
            for m in fleet.models() {
                if !served.contains(&m) {
                    served.push(m);
                }
            }
        }
        let prices = self.prices_cached().await?;
        let factories = self.factories_cached().await?;
        Ok(served
            .into_iter()
            .filter(|m| prices.iter().any(|p| &p.model_id == m))
            .filter(|m| factories.iter().any(|f| f.serves(m)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::JobError;
    use db::{DbError, sqlx};

    #[test]
    fn a_pool_that_ran_out_of_time_is_busy_however_deep_it_is_wrapped() {
        let wrapped = ledger::LedgerError::Db(DbError::Sqlx(sqlx::Error::PoolTimedOut));
        assert!(matches!(JobError::storage(wrapped), JobError::Busy));
        assert!(matches!(
            JobError::storage(sqlx::Error::PoolTimedOut),
            JobError::Busy
        ));
        let other = ledger::LedgerError::Db(DbError::Sqlx(sqlx::Error::RowNotFound));
        assert!(matches!(JobError::storage(other), JobError::Storage(_)));
    }
}
