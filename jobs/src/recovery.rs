//! Jobs whose process died. Every instance beats in `instances` every few seconds; one that
//! stops (a crash, a kill, a lost machine) leaves its running jobs behind, and any live
//! instance fails them and voids their holds once the heartbeat is stale, so nothing stays
//! reserved and nothing is charged for work no one delivered. A batch runner that takes over a
//! dead runner's line uses the same `abandon`.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use db::now_ms;
use db::sqlx::Row;
use ledger::Nanos;

use crate::journal::{self, Entry};
use crate::running::JobContext;
use crate::settlement::{Settlement, write_settlement};
use crate::{JobError, JobKind, Jobs, Principal};

/// How often an instance records that it is alive.
pub const HEARTBEAT_MS: i64 = 3_000;
/// An instance silent this long is dead: its running jobs are failed.
pub const INSTANCE_STALE_MS: i64 = 15_000;

impl Jobs {
    /// This process's instance id (written on each of its jobs).
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// Records that this instance is alive at `now`.
    pub async fn heartbeat(&self, now: i64) -> Result<(), JobError> {
        db::sqlx::query(
            "INSERT INTO instances (id, started_at, heartbeat_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
        )
        .bind(&self.inner.instance_id)
        .bind(self.inner.started_at)
        .bind(now)
        .execute(self.inner.db.pool())
        .await
        .map_err(JobError::storage)?;
        Ok(())
    }

    /// Removes this instance's record at a clean shutdown (all its jobs settled).
    pub async fn retire(&self) -> Result<(), JobError> {
        db::sqlx::query("DELETE FROM instances WHERE id = $1")
            .bind(&self.inner.instance_id)
            .execute(self.inner.db.pool())
            .await
            .map_err(JobError::storage)?;
        Ok(())
    }

    /// Fails the running jobs of instances that stopped beating, voiding their holds; returns
    /// how many. An instance counts as stopped when the heartbeat it wrote has not changed for
    /// [`INSTANCE_STALE_MS`] of this instance's own time (`now`, its clock), so clocks that
    /// disagree between machines never make a live instance look dead. Jobs from before
    /// instances beat (no instance id) are left to the hold TTL, after which they are failed.
    /// One job that cannot be failed is logged and the others still are.
    pub async fn recover_dead_instances(&self, now: i64) -> Result<u64, JobError> {
        // Streams of dead instances on this machine are charged for what they delivered first;
        // what is left of theirs is then voided like any other instance's. A journal that
        // cannot be read now is tried again at the next sweep.
        if let Err(e) = self.recover_journals().await {
            tracing::warn!(error = %e, "reading the journals of stopped instances failed");
        }
        let rows = db::sqlx::query(
            "SELECT DISTINCT j.instance_id, i.heartbeat_at FROM jobs j \
             LEFT JOIN instances i ON i.id = j.instance_id \
             WHERE j.status = 'running' AND j.instance_id IS NOT NULL AND j.instance_id <> $1",
        )
        .bind(&self.inner.instance_id)
        .fetch_all(self.inner.db.pool())
        .await
        .map_err(JobError::storage)?;
        let mut dead = Vec::new();
        {
            let mut seen = self
                .inner
                .seen_heartbeats
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for r in &rows {
                let id: String = r.try_get("instance_id").map_err(JobError::storage)?;
                let beat: Option<i64> = r.try_get("heartbeat_at").map_err(JobError::storage)?;
                let entry = seen.entry(id.clone()).or_insert((beat, now));
                if entry.0 != beat {
                    *entry = (beat, now);
                }
                if now - entry.1 >= INSTANCE_STALE_MS {
                    dead.push(id);
                }
            }
        }
        let mut orphans: Vec<String> = Vec::new();
        for instance in &dead {
            let ids: Vec<String> = db::sqlx::query_scalar(
                "SELECT id FROM jobs WHERE status = 'running' AND instance_id = $1",
            )
            .bind(instance)
            .fetch_all(self.inner.db.pool())
            .await
            .map_err(JobError::storage)?;
            orphans.extend(ids);
        }
        let legacy: Vec<String> = db::sqlx::query_scalar(
            "SELECT id FROM jobs WHERE status = 'running' AND instance_id IS NULL \
             AND created_at < $1",
        )
        .bind(now - crate::HOLD_TTL_MS)
        .fetch_all(self.inner.db.pool())
        .await
        .map_err(JobError::storage)?;
        orphans.extend(legacy);
        let mut failed = 0;
        for id in &orphans {
            tracing::warn!(job = id, "job of a stopped instance: failed, hold voided");
            match self
                .abandon(
                    id,
                    "The portal instance running this job stopped; nothing was charged.",
                )
                .await
            {
                Ok(()) => failed += 1,
                Err(e) => tracing::error!(job = id, error = %e, "failing an orphaned job"),
            }
        }
        // Instances gone for a day are of no more use.
        db::sqlx::query("DELETE FROM instances WHERE heartbeat_at < $1")
            .bind(now - 86_400_000)
            .execute(self.inner.db.pool())
            .await
            .map_err(JobError::storage)?;
        Ok(failed)
    }

    /// Settles the jobs of dead instances whose journals are in this instance's journal
    /// directory (a restart after a kill finds its predecessor's at once: the kernel freed its
    /// lock): a stream is charged for the prompt and the tokens it delivered, its usage event
    /// partial, the job failed; a job that delivered nothing has its hold voided. Returns how
    /// many jobs were ended. A journal whose jobs could not all be ended stays for the next
    /// sweep.
    pub async fn recover_journals(&self) -> Result<u64, JobError> {
        let Some((_, dir)) = self.inner.journal.get() else {
            return Ok(0);
        };
        let dead = journal::dead_journals(dir, &self.inner.instance_id)
            .map_err(|e| JobError::Storage(format!("reading journals: {e}")))?;
        let mut ended = 0;
        for j in dead {
            let mut all = true;
            for entry in &j.entries {
                match self.settle_interrupted(entry).await {
                    Ok(true) => ended += 1,
                    Ok(false) => {}
                    Err(e) => {
                        all = false;
                        tracing::error!(job = entry.job_id, error = %e, "settling an interrupted stream");
                    }
                }
            }
            if all {
                j.finish();
            }
        }
        Ok(ended)
    }

    /// Ends one job of a dead instance from its journal entry; false when it had already ended.
    async fn settle_interrupted(&self, entry: &Entry) -> Result<bool, JobError> {
        let row = db::sqlx::query(
            "SELECT org_id, user_id, api_key_id, kind, model, factory_id, partner_org_id, \
             hold_id, prompt_tokens, pays_prompt, max_tokens, created_at FROM jobs \
             WHERE id = $1 AND status = 'running'",
        )
        .bind(&entry.job_id)
        .fetch_optional(self.inner.db.pool())
        .await
        .map_err(JobError::storage)?;
        let Some(row) = row else {
            return Ok(false);
        };
        let get_s = |c: &str| row.try_get::<String, _>(c).map_err(JobError::storage);
        let get_o = |c: &str| {
            row.try_get::<Option<String>, _>(c)
                .map_err(JobError::storage)
        };
        let get_i = |c: &str| row.try_get::<i64, _>(c).map_err(JobError::storage);
        let hold = match get_o("hold_id")? {
            Some(id) => Some(
                self.inner
                    .credits
                    .ledger()
                    .hold(&id)
                    .await
                    .map_err(JobError::storage)?
                    .filter(|h| h.status == ledger::HoldStatus::Open),
            ),
            None => None,
        };
        if entry.delivered == 0 || hold.as_ref().is_some_and(Option::is_none) {
            // Nothing reached the client, or the hold already lapsed: nothing to charge.
            self.abandon(
                &entry.job_id,
                "The portal instance running this job stopped before it delivered a token; nothing was charged.",
            )
            .await?;
            return Ok(true);
        }
        let kind = get_s("kind")?;
        let max_tokens = get_i("max_tokens")?;
        let ctx = JobContext {
            id: entry.job_id.clone(),
            who: Principal {
                org_id: get_s("org_id")?,
                user_id: get_o("user_id")?,
                api_key_id: get_o("api_key_id")?,
                recheck_key: false,
            },
            kind: JobKind::from_code(&kind)
                .ok_or_else(|| JobError::Storage(format!("job kind {kind:?}")))?,
            model: get_s("model")?,
            factory_id: get_s("factory_id")?,
            partner_org_id: get_s("partner_org_id")?,
            rates: entry.rates,
            max_cost: hold
                .as_ref()
                .and_then(|h| h.as_ref().map(|h| h.amount))
                .unwrap_or(Nanos::new(0)),
            hold: hold.flatten().map(ledger::Reserved::from),
            prompt_tokens: get_i("prompt_tokens")? as usize,
            pays_prompt: get_i("pays_prompt")? != 0,
            max_tokens: max_tokens as usize,
            created_at: get_i("created_at")?,
            tpm_taken: 0,
            tpm_returned: Arc::new(AtomicBool::new(true)),
            placement: None,
        };
        let delivered = (entry.delivered as usize).min(ctx.max_tokens);
        tracing::warn!(
            job = ctx.id,
            delivered,
            "stream of a stopped instance: delivered tokens charged, job failed"
        );
        write_settlement(
            self,
            &ctx,
            &Settlement {
                prompt_tokens: ctx.paid_prompt(),
                completion_tokens: delivered,
                partial: true,
                finish_reason: "abort",
                device_us: 0,
                queue_ms: 0,
                ttft_ms: None,
                status: "failed",
                error: Some(format!(
                    "The portal instance running this job stopped mid-stream; the {delivered} tokens delivered were charged."
                )),
                ended_at: db::now_ms(),
            },
        )
        .await?;
        Ok(true)
    }

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
