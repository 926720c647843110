//! Settlements of jobs that ran to their end, gathered for a moment and written together.
//!
//! Each settlement writes the same few rows as every other of its tenant and factory (the
//! wallet's account, the factory's revenue account) and, alone, is one commit of its own. The
//! answer never waits for it ([`crate::RunningJob::settle_without_waiting`]), so it can wait a
//! little for others: the first of a batch waits [`GATHER`] for more to come, and whatever
//! arrived meanwhile is settled in one transaction (`write_settlements`), each account's row
//! updated once. While one batch is written the next one gathers. On a busy portal that is
//! one commit for many jobs; on a quiet one, a settlement that commits [`GATHER`] later.
//!
//! A job waiting here is still counted as unsettled (a shutdown waits for it) and its
//! delivered tokens are already in the journal, so a process killed meanwhile still charges
//! it on the next start. A batch whose writes fail is settled again job by job, each as it
//! would have been alone (charged, or its hold voided when it cannot be); a batch of one that
//! fails has its hold voided at once.

use std::sync::OnceLock;
use std::time::Duration;

use engine::Finish;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::writes::write_settlements;
use super::{after_settlement, receipt, settle_or_void, void_unsettled, what_is_charged};
use crate::Jobs;
use crate::journal::Slot;
use crate::running::{End, JobContext};

/// How long the first settlement of a batch waits for others.
const GATHER: Duration = Duration::from_millis(5);

/// The most settlements written in one transaction.
const MOST: usize = 64;

/// A job that ran to its end, to be settled.
pub(crate) struct Finished {
    jobs: Jobs,
    ctx: JobContext,
    finish: Finish,
    delivered: usize,
    slot: Option<Slot>,
    queued: Instant,
    /// When the job ended (milliseconds), which its records say, not when they are written.
    ended_at: i64,
}

impl Finished {
    pub(crate) fn new(
        jobs: Jobs,
        ctx: JobContext,
        finish: Finish,
        delivered: usize,
        slot: Option<Slot>,
    ) -> Finished {
        Finished {
            jobs,
            ctx,
            finish,
            delivered,
            slot,
            queued: Instant::now(),
            ended_at: db::now_ms(),
        }
    }
}

/// The queue of finished jobs and the task that settles them, started with the first one.
#[derive(Default)]
pub(crate) struct Settler {
    queue: OnceLock<mpsc::UnboundedSender<Finished>>,
}

impl Settler {
    /// Queues `job` for settlement. Must be called inside the runtime.
    pub(crate) fn send(&self, job: Finished) {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            // The task holds no `Jobs` between batches: when the last handle is dropped the
            // queue closes and the task ends.
            tokio::spawn(run(rx));
            tx
        });
        if let Err(mpsc::error::SendError(job)) = queue.send(job) {
            // The task is gone (its runtime shut down): settled alone, as far as it can be.
            tokio::spawn(settle_alone(job));
        }
    }
}

async fn run(mut queue: mpsc::UnboundedReceiver<Finished>) {
    while let Some(first) = queue.recv().await {
        let until = first.queued + GATHER;
        let draining = first.jobs.is_draining();
        let mut batch = vec![first];
        while batch.len() < MOST {
            let next = if draining {
                queue.try_recv().ok()
            } else {
                tokio::time::timeout_at(until, queue.recv())
                    .await
                    .ok()
                    .flatten()
            };
            match next {
                Some(job) => batch.push(job),
                None => break,
            }
        }
        settle_batch(batch).await;
    }
}

async fn settle_batch(batch: Vec<Finished>) {
    let Some(jobs) = batch.first().map(|f| f.jobs.clone()) else {
        return;
    };
    let settlements: Vec<_> = batch
        .iter()
        .map(|f| what_is_charged(&f.finish, f.ctx.paid_prompt(), f.delivered, f.ended_at))
        .collect();
    for (f, s) in batch.iter().zip(&settlements) {
        f.ctx
            .give_back_tokens(&f.jobs, s.prompt_tokens + s.completion_tokens);
    }
    let items: Vec<_> = batch.iter().map(|f| &f.ctx).zip(&settlements).collect();
    match write_settlements(&jobs, &items).await {
        Ok(amounts) => {
            for ((f, s), amount) in batch.into_iter().zip(&settlements).zip(amounts) {
                let receipt = receipt(&f.jobs, &f.ctx, &f.finish, s, amount);
                after_settlement(&f.jobs, &f.ctx, &Ok(receipt), f.slot, f.ended_at);
            }
        }
        // Alone already: written again it would fail the same way.
        Err(e) if batch.len() == 1 => {
            if let Some(f) = batch.into_iter().next() {
                let e = void_unsettled(&f.jobs, &f.ctx, e).await;
                after_settlement(&f.jobs, &f.ctx, &Err(e), f.slot, f.ended_at);
            }
        }
        Err(e) => {
            tracing::warn!(jobs = batch.len(), error = %e, "a batch of settlements failed; settling each alone");
            for f in batch {
                settle_alone(f).await;
            }
        }
    }
}

/// Settles one job on its own, as a job is settled outside a batch.
async fn settle_alone(f: Finished) {
    let span = tracing::info_span!("job", job = %f.ctx.id);
    let settled = tracing::Instrument::instrument(
        settle_or_void(
            &f.jobs,
            &f.ctx,
            End::Finished(f.finish.clone()),
            f.delivered,
            f.slot,
        ),
        span,
    )
    .await;
    if let Err(e) = settled {
        tracing::error!(job = f.ctx.id, error = %e, "settling a finished job failed; not charged");
    }
}
