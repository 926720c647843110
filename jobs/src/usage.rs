//! Reading usage events back, always within one organisation (a foreign job is not found).

use db::sqlx::Row;
use ledger::Nanos;

use crate::{JobError, Jobs};

#[derive(Debug, Clone, PartialEq)]
pub struct UsageEvent {
    pub job_id: String,
    pub kind: String,
    pub model: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub amount: Nanos,
    pub paid_amount: Nanos,
    pub partial: bool,
    pub finish_reason: String,
    pub queue_ms: i64,
    pub ttft_ms: Option<i64>,
    pub duration_ms: i64,
    pub device_us: i64,
    pub created_at: i64,
}

const COLUMNS: &str = "job_id, kind, model, prompt_tokens, completion_tokens, amount, paid_amount, \
     partial, finish_reason, queue_ms, ttft_ms, duration_ms, device_us, created_at";

fn from_row(r: &db::sqlx::any::AnyRow) -> Result<UsageEvent, db::sqlx::Error> {
    Ok(UsageEvent {
        job_id: r.try_get("job_id")?,
        kind: r.try_get("kind")?,
        model: r.try_get("model")?,
        prompt_tokens: r.try_get("prompt_tokens")?,
        completion_tokens: r.try_get("completion_tokens")?,
        amount: Nanos::new(r.try_get("amount")?),
        paid_amount: Nanos::new(r.try_get("paid_amount")?),
        partial: r.try_get::<i64, _>("partial")? == 1,
        finish_reason: r.try_get("finish_reason")?,
        queue_ms: r.try_get("queue_ms")?,
        ttft_ms: r.try_get("ttft_ms")?,
        duration_ms: r.try_get("duration_ms")?,
        device_us: r.try_get("device_us")?,
        created_at: r.try_get("created_at")?,
    })
}

impl Jobs {
    /// The usage event of one of the organisation's jobs, once it is settled.
    pub async fn usage_of_job(
        &self,
        org_id: &str,
        job_id: &str,
    ) -> Result<Option<UsageEvent>, JobError> {
        let row = db::sqlx::query(&format!(
            "SELECT {COLUMNS} FROM usage_events WHERE org_id = $1 AND job_id = $2"
        ))
        .bind(org_id)
        .bind(job_id)
        .fetch_optional(self.inner.db.pool())
        .await
        .map_err(JobError::storage)?;
        row.as_ref()
            .map(from_row)
            .transpose()
            .map_err(JobError::storage)
    }

    /// The status of one of the organisation's jobs (`running`, `succeeded`, `cancelled`,
    /// `failed`), or `None` when it has no such job.
    pub async fn job_status(&self, org_id: &str, job_id: &str) -> Result<Option<String>, JobError> {
        db::sqlx::query_scalar("SELECT status FROM jobs WHERE org_id = $1 AND id = $2")
            .bind(org_id)
            .bind(job_id)
            .fetch_optional(self.inner.db.pool())
            .await
            .map_err(JobError::storage)
    }
}
