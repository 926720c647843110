//! How a job's end becomes money. [`what_is_charged`] says what the tokens come to; the
//! charge, its usage event and the job's end are written in one transaction ([`writes`]),
//! gathered with other jobs' when nobody waits for the commit ([`gather`]); a settlement that
//! cannot be written voids the hold, so nothing stays reserved ([`void_unsettled`]).

mod gather;
mod writes;

use std::time::Duration;

use db::now_ms;
use engine::{Finish, FinishReason};
use ledger::Nanos;

use crate::running::{Charged, End, JobContext, Receipt};
use crate::{JobError, Jobs};

pub(crate) use gather::{Finished, Settler};
pub(crate) use writes::write_settlement;

/// Settles the job; when that fails (storage trouble, or the hold expired meanwhile) the hold
/// is voided and the job marked failed, so nothing stays reserved and the caller's "not
/// charged" is true. The journal slot is freed only after, so a crash before the settlement
/// committed still finds the delivered count.
pub(crate) async fn settle_or_void(
    jobs: &Jobs,
    ctx: &JobContext,
    end: End,
    delivered: usize,
    slot: Option<crate::journal::Slot>,
) -> Result<Receipt, JobError> {
    let result = match charge_end(jobs, ctx, end, delivered).await {
        Ok(r) => Ok(r),
        Err(e) => Err(void_unsettled(jobs, ctx, e).await),
    };
    after_settlement(jobs, ctx, &result, slot, now_ms());
    result
}

/// A settlement that failed (`e`): the hold is voided and the job marked failed, so nothing
/// stays reserved and the job is not charged. Returns `e`.
pub(crate) async fn void_unsettled(jobs: &Jobs, ctx: &JobContext, e: JobError) -> JobError {
    tracing::error!(job = ctx.id, error = %e, "settlement failed; voiding the hold");
    if let Err(again) = void_and_fail(jobs, ctx, format!("settlement failed: {e}")).await {
        tracing::error!(job = ctx.id, error = %again, "marking the job failed also failed");
    }
    e
}

/// After a job's settlement committed (or failed for good): its metrics (the job having
/// ended at `ended_at`, milliseconds), its journal slot (freed only now, so a crash before
/// the commit still finds the delivered count) and the shutdown's count of unsettled jobs.
pub(crate) fn after_settlement(
    jobs: &Jobs,
    ctx: &JobContext,
    result: &Result<Receipt, JobError>,
    slot: Option<crate::journal::Slot>,
    ended_at: i64,
) {
    let (status, receipt) = match result {
        Ok(
            r @ Receipt {
                charged: Charged::Complete,
                ..
            },
        ) => ("succeeded", Some(r)),
        Ok(
            r @ Receipt {
                charged: Charged::Partial,
                ..
            },
        ) => ("cancelled", Some(r)),
        Ok(r) => ("failed", Some(r)),
        Err(_) => ("failed", None),
    };
    jobs.inner.metrics.observe(&crate::metrics::Observed {
        model: &ctx.model,
        factory: &ctx.factory_id,
        kind: ctx.kind.code(),
        status,
        completion_tokens: receipt.map_or(0, |r| r.completion_tokens),
        time_to_first_token: receipt.map_or(Duration::ZERO, |r| r.time_to_first_token),
        decode_time: receipt.map_or(Duration::ZERO, |r| r.decode_time),
        e2e_seconds: (ended_at - ctx.created_at).max(0) as f64 / 1000.0,
    });
    if let (Some(slot), Some(journal)) = (slot, jobs.journal()) {
        journal.release(slot);
    }
    jobs.untrack(&ctx.id);
}

async fn charge_end(
    jobs: &Jobs,
    ctx: &JobContext,
    end: End,
    delivered: usize,
) -> Result<Receipt, JobError> {
    let f = match end {
        // A node of the fleet lost after tokens reached the client: those are charged (the
        // node's work cannot be undone, and the client has it); otherwise nothing is.
        End::Failed(message) if delivered > 0 && ctx.ran_remotely() => {
            return charge_lost(jobs, ctx, message, delivered).await;
        }
        End::Failed(message) => return void_and_fail(jobs, ctx, message).await,
        // Cancelled by a shutdown before anything reached the client: the client gets an
        // error and pays nothing (a batch line runs again elsewhere).
        End::Finished(f)
            if f.reason == FinishReason::Cancelled
                && delivered == 0
                && jobs.cancelled_for_shutdown() =>
        {
            let mut receipt = void_and_fail(
                jobs,
                ctx,
                "The server shut down before this request finished; nothing was charged.".into(),
            )
            .await?;
            receipt.shut_down = true;
            return Ok(receipt);
        }
        End::Finished(f) => f,
    };
    let s = what_is_charged(&f, ctx.paid_prompt(), delivered, now_ms());
    ctx.give_back_tokens(jobs, s.prompt_tokens + s.completion_tokens);
    let amount = write_settlement(jobs, ctx, &s).await?;
    Ok(receipt(jobs, ctx, &f, &s, amount))
}

/// What a job that ended with `f` is charged for, `delivered` tokens having reached its
/// client: every token when it ran to its end; when it was cut short, the prompt (once it was
/// processed) and only the delivered output. `prompt` is what the job pays for its prompt, as
/// the portal counted it at admission (none for the later choices of an `n` > 1 request,
/// whose first choice pays for it). It ended at `ended_at` (milliseconds).
pub(crate) fn what_is_charged(
    f: &Finish,
    prompt: usize,
    delivered: usize,
    ended_at: i64,
) -> Settlement<'static> {
    let complete = f.reason != FinishReason::Cancelled;
    let (prompt_tokens, completion_tokens) = if complete {
        (prompt, f.completion_tokens)
    } else {
        // The prompt was processed when the first token came out.
        let prompt = if f.completion_tokens > 0 { prompt } else { 0 };
        (prompt, delivered.min(f.completion_tokens))
    };
    Settlement {
        prompt_tokens,
        completion_tokens,
        partial: !complete,
        finish_reason: f.reason.as_str(),
        device_us: (f.device_seconds * 1e6).round() as i64,
        queue_ms: f.queue_time.as_millis() as i64,
        ttft_ms: (f.completion_tokens > 0).then_some(f.time_to_first_token.as_millis() as i64),
        status: if complete { "succeeded" } else { "cancelled" },
        error: None,
        ended_at,
    }
}

/// The receipt of a job that ended with `f`, charged `amount` for `s`.
pub(crate) fn receipt(
    jobs: &Jobs,
    ctx: &JobContext,
    f: &Finish,
    s: &Settlement<'_>,
    amount: Nanos,
) -> Receipt {
    Receipt {
        job_id: ctx.id.clone(),
        charged: if s.partial {
            Charged::Partial
        } else {
            Charged::Complete
        },
        prompt_tokens: s.prompt_tokens,
        completion_tokens: s.completion_tokens,
        amount,
        finish_reason: Some(f.reason),
        time_to_first_token: f.time_to_first_token,
        decode_time: f.decode_time,
        device_seconds: f.device_seconds,
        shut_down: s.partial && jobs.cancelled_for_shutdown(),
    }
}

/// What a job is charged for and how it ended, as recorded.
pub(crate) struct Settlement<'a> {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub partial: bool,
    pub finish_reason: &'a str,
    pub device_us: i64,
    pub queue_ms: i64,
    pub ttft_ms: Option<i64>,
    /// The job's final status.
    pub status: &'static str,
    pub error: Option<String>,
    /// When the job ended (milliseconds): its row's `finished_at`, and where its usage
    /// event's duration ends. Not when the settlement is written, which may be later.
    pub ended_at: i64,
}

/// A job whose node was lost after `delivered` tokens reached its client: charged as one the
/// client left (the prompt and what it received), recorded as failed with why.
async fn charge_lost(
    jobs: &Jobs,
    ctx: &JobContext,
    message: String,
    delivered: usize,
) -> Result<Receipt, JobError> {
    tracing::warn!(job = ctx.id, error = %message, delivered, "job's node lost; charged for what was delivered");
    let f = Finish {
        reason: FinishReason::Cancelled,
        prompt_tokens: ctx.prompt_tokens,
        completion_tokens: delivered,
        queue_time: Duration::ZERO,
        time_to_first_token: Duration::ZERO,
        decode_time: Duration::ZERO,
        device_seconds: 0.0,
        preemptions: 0,
    };
    let mut s = what_is_charged(&f, ctx.paid_prompt(), delivered, now_ms());
    s.status = "failed";
    s.error = Some(message.clone());
    ctx.give_back_tokens(jobs, s.prompt_tokens + s.completion_tokens);
    let amount = write_settlement(jobs, ctx, &s).await?;
    let mut r = receipt(jobs, ctx, &f, &s, amount);
    r.charged = Charged::Failed(message);
    Ok(r)
}

async fn void_and_fail(
    jobs: &Jobs,
    ctx: &JobContext,
    message: String,
) -> Result<Receipt, JobError> {
    tracing::warn!(job = ctx.id, error = %message, "job failed in the engine; hold voided");
    ctx.give_back_tokens(jobs, 0);
    jobs.release(ctx).await;
    db::sqlx::query(
        "UPDATE jobs SET status = 'failed', error = $1, finished_at = $2 WHERE id = $3 AND status = 'running'",
    )
    .bind(&message)
    .bind(now_ms())
    .bind(&ctx.id)
    .execute(jobs.inner.db.pool())
    .await
    .map_err(JobError::storage)?;
    Ok(Receipt {
        job_id: ctx.id.clone(),
        charged: Charged::Failed(message),
        prompt_tokens: 0,
        completion_tokens: 0,
        amount: Nanos::new(0),
        finish_reason: None,
        time_to_first_token: Duration::ZERO,
        decode_time: Duration::ZERO,
        device_seconds: 0.0,
        shut_down: false,
    })
}
