//! Jobs whose process died: a batch runner that takes over a dead runner's line asks whether
//! its job was settled, and if not voids the job's hold and marks it failed.

use db::now_ms;

use crate::{JobError, Jobs};

impl Jobs {
    /// The job's status (`running`, `succeeded`, `cancelled`, `failed`), whoever it belongs to.
    pub async fn status_of(&self, job_id: &str) -> Result<Option<String>, JobError> {
        db::sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_optional(self.inner.db.pool())
            .await
            .map_err(JobError::storage)
    }

    /// Whether the job was settled (it has its usage event).
    pub async fn is_settled(&self, job_id: &str) -> Result<bool, JobError> {
        let n: i64 = db::sqlx::query_scalar("SELECT COUNT(*) FROM usage_events WHERE job_id = $1")
            .bind(job_id)
            .fetch_one(self.inner.db.pool())
            .await
            .map_err(JobError::storage)?;
        Ok(n > 0)
    }

    /// Ends a job that no process runs any more: if it is still marked running, its hold is
    /// voided and it is marked failed with `reason`. Only for jobs known to be dead (their
    /// process stopped): a live job would then run unpaid.
    pub async fn abandon(&self, job_id: &str, reason: &str) -> Result<(), JobError> {
        let hold: Option<Option<String>> =
            db::sqlx::query_scalar("SELECT hold_id FROM jobs WHERE id = $1 AND status = 'running'")
                .bind(job_id)
                .fetch_optional(self.inner.db.pool())
                .await
                .map_err(JobError::storage)?;
        let Some(hold) = hold else {
            return Ok(());
        };
        if let Some(hold) = hold {
            match self.inner.credits.ledger().void(&hold).await {
                // Expired by its TTL meanwhile: nothing is reserved any more either way.
                Ok(_) | Err(ledger::LedgerError::HoldNotOpen) => {}
                Err(e) => return Err(JobError::storage(e)),
            }
        }
        db::sqlx::query(
            "UPDATE jobs SET status = 'failed', error = $1, finished_at = $2 \
             WHERE id = $3 AND status = 'running'",
        )
        .bind(reason)
        .bind(now_ms())
        .bind(job_id)
        .execute(self.inner.db.pool())
        .await
        .map_err(JobError::storage)?;
        Ok(())
    }
}
