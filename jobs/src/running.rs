//! A running job: its engine events, and the one settlement that ends it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use engine::{Event, Finish, FinishReason, Generation};
use ledger::Nanos;

use crate::settlement::settle_or_void;
use crate::{JobError, JobKind, Jobs, Principal, Rates};

/// What admission decided, carried to settlement.
#[derive(Debug, Clone)]
pub(crate) struct JobContext {
    pub id: String,
    pub who: Principal,
    pub kind: JobKind,
    pub model: String,
    pub factory_id: String,
    pub partner_org_id: String,
    pub rates: Rates,
    /// The job's hold as admission reserved it (none for a free job).
    pub hold: Option<ledger::Reserved>,
    /// What the hold reserved: the largest possible charge.
    pub max_cost: Nanos,
    pub prompt_tokens: usize,
    /// Whether this job pays for its prompt: not the later choices of an `n` > 1 request,
    /// whose first choice pays for the prompt they share.
    pub pays_prompt: bool,
    pub max_tokens: usize,
    pub created_at: i64,
    /// Tokens taken from the allocation's tokens-per-minute bucket (0: no limit).
    pub tpm_taken: u64,
    /// Whether the unused part was given back (once, whichever way the job ends).
    pub tpm_returned: Arc<AtomicBool>,
    /// The node and device that run it (`None` for a job recovered from a journal).
    pub placement: Option<fleet::Placement>,
}

impl JobContext {
    /// The prompt tokens this job is charged for.
    pub fn paid_prompt(&self) -> usize {
        if self.pays_prompt {
            self.prompt_tokens
        } else {
            0
        }
    }

    /// Whether a node of a fleet ran it (not this process's pool).
    pub fn ran_remotely(&self) -> bool {
        self.placement
            .as_ref()
            .is_some_and(|p| p.node != crate::LOCAL_NODE)
    }

    /// Gives back to the tokens-per-minute bucket what the job took beyond `used`.
    pub fn give_back_tokens(&self, jobs: &Jobs, used: usize) {
        if self.tpm_taken > 0 && !self.tpm_returned.swap(true, Ordering::SeqCst) {
            jobs.inner.limits.give_back(
                &self.who.org_id,
                &self.model,
                self.tpm_taken.saturating_sub(used as u64),
                std::time::Instant::now(),
            );
        }
    }
}

/// How a job ended, as far as charging goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charged {
    /// Ran to its end (a stop or the length limit): every token is charged.
    Complete,
    /// Cancelled or abandoned by the client: the prompt (once it was processed) and only the
    /// tokens delivered are charged; the usage event is marked partial.
    Partial,
    /// The engine failed: the hold was voided, nothing charged, no usage event; or a fleet
    /// node was lost mid-stream, and the prompt and the tokens delivered were charged.
    Failed(String),
}

/// What settling a job recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    pub job_id: String,
    pub charged: Charged,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub amount: Nanos,
    pub finish_reason: Option<FinishReason>,
    pub time_to_first_token: Duration,
    pub decode_time: Duration,
    pub device_seconds: f64,
    /// Cancelled by this instance's shutdown (not by the client): a stream was charged for
    /// what it delivered, anything else nothing.
    pub shut_down: bool,
}

pub struct RunningJob {
    jobs: Jobs,
    ctx: JobContext,
    generation: Option<Generation>,
    /// Tokens handed to the caller (for a stream: sent to the client).
    delivered: usize,
    /// The job's slot in the delivery journal, taken at its first delivered token.
    slot: Option<crate::journal::Slot>,
    /// Whether handing a token out counts as delivering it (false while a non-streaming
    /// response is still being assembled: the client has received nothing yet).
    streaming: bool,
    end: Option<End>,
    /// A fleet job's prompt, to run it once more on another node if its node is lost before
    /// the first token (taken when used).
    rerun: Option<engine::Prepared>,
    /// Whether the engine produced a token yet: a job that has is never run again.
    produced: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum End {
    Finished(Finish),
    Failed(String),
}

impl std::fmt::Debug for RunningJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningJob")
            .field("id", &self.ctx.id)
            .field("model", &self.ctx.model)
            .field("delivered", &self.delivered)
            .finish_non_exhaustive()
    }
}

impl RunningJob {
    pub(crate) fn new(jobs: Jobs, ctx: JobContext, generation: Generation) -> RunningJob {
        RunningJob {
            jobs,
            ctx,
            generation: Some(generation),
            delivered: 0,
            slot: None,
            streaming: true,
            end: None,
            rerun: None,
            produced: false,
        }
    }

    /// Lets a fleet job run once more on another node of its factory if its node is lost
    /// before the first token.
    pub(crate) fn with_rerun(mut self, prepared: engine::Prepared) -> RunningJob {
        self.rerun = Some(prepared);
        self
    }

    /// Withdraws a job that was queued with the other choices of its request when not all of
    /// them could be: it is cancelled before anything was delivered, its hold voided and the
    /// job marked failed with `why`; nothing is charged.
    pub(crate) async fn withdraw(mut self, why: &str) {
        if let Some(g) = self.generation.take() {
            g.cancel();
        }
        let (jobs, ctx, slot) = (self.jobs.clone(), self.ctx.clone(), self.slot.take());
        let end = End::Failed(why.to_string());
        if let Err(e) = settle_or_void(&jobs, &ctx, end, 0, slot).await {
            tracing::warn!(job = ctx.id, error = %e, "withdrawing a job failed");
        }
    }

    /// The node the job was placed on.
    pub(crate) fn node(&self) -> Option<&str> {
        self.ctx.placement.as_ref().map(|p| p.node.as_str())
    }

    /// Sends the job to another live node of its factory (not the one lost); `None` when
    /// there is none or it refuses.
    async fn run_again(&mut self, prepared: engine::Prepared, why: &str) -> Option<Generation> {
        let fleet = self.jobs.fleet()?;
        let lost = self.ctx.placement.as_ref().map(|p| p.node.clone());
        let id = format!("{}r", self.ctx.id);
        let job = fleet::RemoteJob {
            factory_id: &self.ctx.factory_id,
            job_id: &id,
            model: &self.ctx.model,
            prepared: &prepared,
            avoid: lost.as_deref(),
            prefer: None,
        };
        match fleet.submit(job).await {
            Ok((generation, placement)) => {
                tracing::warn!(
                    job = self.ctx.id,
                    lost = lost.as_deref().unwrap_or(""),
                    node = placement.node,
                    why,
                    "node lost before the first token: the job runs again on another node"
                );
                self.ctx.placement = Some(placement);
                self.jobs.track(&self.ctx.id, generation.canceller());
                Some(generation)
            }
            Err(e) => {
                tracing::warn!(job = self.ctx.id, why, error = %e, "node lost and no other node took the job");
                None
            }
        }
    }

    pub fn id(&self) -> &str {
        &self.ctx.id
    }

    pub fn model(&self) -> &str {
        &self.ctx.model
    }

    pub fn prompt_tokens(&self) -> usize {
        self.ctx.prompt_tokens
    }

    /// When the job was admitted (milliseconds since the epoch).
    pub fn created_at(&self) -> i64 {
        self.ctx.created_at
    }

    /// The next engine event; `None` after the last (`Finished` or `Failed`). Tokens count as
    /// delivered when handed out, unless the response is buffered (see [`RunningJob::collect`]).
    pub async fn next(&mut self) -> Option<Event> {
        if self.end.is_some() {
            return None;
        }
        let event = loop {
            let generation = self.generation.as_mut()?;
            let event = match generation.events.recv().await {
                Some(e) => e,
                // The worker went away without a last event (it stopped).
                None => Event::Failed("the worker stopped".into()),
            };
            if let Event::Failed(why) = &event
                && !self.produced
                && let Some(prepared) = self.rerun.take()
                && let Some(again) = self.run_again(prepared, why).await
            {
                self.generation = Some(again);
                continue;
            }
            break event;
        };
        if matches!(event, Event::Token { .. }) {
            self.produced = true;
        }
        match &event {
            Event::Token { .. } if self.streaming => {
                self.delivered += 1;
                self.journal_delivery();
            }
            Event::Token { .. } => {}
            Event::Finished(f) => self.end = Some(End::Finished(f.clone())),
            Event::Failed(m) => self.end = Some(End::Failed(m.clone())),
        }
        Some(event)
    }

    /// Writes the delivered count to the journal before the token goes out, so that a killed
    /// process's stream is still charged for what its client got. Without a journal (or when
    /// writing it fails) a killed stream is not charged at all.
    fn journal_delivery(&mut self) {
        let Some(journal) = self.jobs.journal() else {
            return;
        };
        if self.slot.is_none() {
            match journal.claim(&self.ctx.id, self.ctx.rates) {
                Ok(slot) => self.slot = Some(slot),
                Err(e) => {
                    tracing::warn!(job = self.ctx.id, error = %e, "journal slot unavailable");
                    return;
                }
            }
        }
        if let Some(slot) = self.slot
            && let Err(e) = journal.record(slot, self.delivered as u32)
        {
            tracing::warn!(job = self.ctx.id, error = %e, "journal write failed");
        }
    }

    /// Whether this instance's shutdown is cancelling running jobs (a cancelled job then was
    /// cut by it, not by its client).
    pub fn shutting_down(&self) -> bool {
        self.jobs.cancelled_for_shutdown()
    }

    /// Stops generating; the job then finishes as cancelled at the engine's next step.
    pub fn cancel(&self) {
        if let Some(g) = &self.generation {
            g.cancel();
        }
    }

    /// Marks the answer as assembled before anything is sent (a batch line): tokens handed
    /// out are not delivered, so a job cut short is charged for none of them.
    pub fn buffer(&mut self) {
        self.streaming = false;
    }

    /// Runs the job to its end with its answer assembled before anything is sent
    /// ([`RunningJob::buffer`]): every event, the last included; settling is left to the
    /// caller.
    pub async fn run_buffered(&mut self) -> Vec<Event> {
        self.buffer();
        let mut events = Vec::new();
        while let Some(e) = self.next().await {
            events.push(e);
        }
        events
    }

    /// Runs the job to its end without streaming and settles it. If the caller goes away
    /// before this returns, the job is cancelled and charged as delivered nothing.
    pub async fn collect(mut self) -> Result<(Vec<Event>, Receipt), JobError> {
        let events = self.run_buffered().await;
        // Nothing was delivered: a job that ran to its end is charged from the engine's own
        // counts, and one cut short (a shutdown) reached its client with none of its text.
        let receipt = self.settle().await?;
        Ok((events, receipt))
    }

    /// The engine's last word when the job ran to its end (a stop or the length limit), once
    /// its last event was handed out: what [`RunningJob::settle_without_waiting`] charges.
    pub fn completed(&self) -> Option<&Finish> {
        match &self.end {
            Some(End::Finished(f)) if f.reason != FinishReason::Cancelled => Some(f),
            _ => None,
        }
    }

    /// Settles a job that ran to its end, whose charge is already fixed (the engine's counts,
    /// [`RunningJob::completed`]), just before its answer goes out: from here every token
    /// counts as delivered (journaled first, so that if the process dies before the commit,
    /// the next start charges them). A failed settlement is logged and voids the hold, as
    /// always; the answer still goes out.
    ///
    /// The answer does not wait for the commit: the settlement waits a moment for others and
    /// is written with them in one transaction (see `settlement::gather`), beside the caller's next
    /// requests (docs/perf.md, "Gateway overhead"). The job stays unsettled for a shutdown
    /// until the commit.
    ///
    /// # Panics
    /// In debug builds, when the job did not run to its end (settle those with
    /// [`RunningJob::settle`], whose receipt says what happened).
    pub fn settle_without_waiting(mut self) {
        debug_assert!(
            self.completed().is_some(),
            "settle_without_waiting on an unfinished job"
        );
        if !self.streaming {
            self.streaming = true;
            self.delivered = self.completed().map_or(0, |f| f.completion_tokens);
            if self.delivered > 0 {
                self.journal_delivery();
            }
        }
        let (jobs, ctx, delivered, slot) = (
            self.jobs.clone(),
            self.ctx.clone(),
            self.delivered,
            self.slot.take(),
        );
        let end = self.end.take();
        self.generation = None;
        match end {
            Some(End::Finished(finish)) if finish.reason != FinishReason::Cancelled => {
                let settler = &self.jobs.inner.settler;
                settler.send(crate::settlement::Finished::new(
                    jobs, ctx, finish, delivered, slot,
                ));
            }
            end => {
                let span = tracing::info_span!("job", job = %ctx.id);
                // Its own task: a caller that goes away cannot cut it in half.
                tokio::spawn(tracing::Instrument::instrument(
                    async move {
                        let end = end.unwrap_or_else(|| End::Failed("no end".into()));
                        if let Err(e) = settle_or_void(&jobs, &ctx, end, delivered, slot).await {
                            tracing::error!(error = %e, "settling a finished job failed; not charged");
                        }
                    },
                    span,
                ));
            }
        }
    }

    /// Settles after the last event (cancelling and waiting for it first if need be). The
    /// settlement runs as a task of its own: a caller that goes away meanwhile (a dropped
    /// response) cannot cut it in half.
    pub async fn settle(mut self) -> Result<Receipt, JobError> {
        let generation = self.generation.take();
        let end = self.end.take();
        let (jobs, ctx, delivered) = (self.jobs.clone(), self.ctx.clone(), self.delivered);
        let slot = self.slot.take();
        let span = tracing::info_span!("job", job = %ctx.id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let end = match end {
                    Some(end) => end,
                    None => drain(generation).await,
                };
                settle_or_void(&jobs, &ctx, end, delivered, slot).await
            },
            span,
        ))
        .await
        .map_err(JobError::storage)?
    }
}

/// Cancels and waits for the engine's last event (it comes within a step).
async fn drain(generation: Option<Generation>) -> End {
    let Some(mut g) = generation else {
        return End::Failed("no generation".into());
    };
    g.cancel();
    let wait = async {
        while let Some(e) = g.events.recv().await {
            match e {
                Event::Finished(f) => return End::Finished(f),
                Event::Failed(m) => return End::Failed(m),
                Event::Token { .. } => {}
            }
        }
        End::Failed("the worker stopped".into())
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| End::Failed("the engine did not confirm the cancellation".into()))
}

impl Drop for RunningJob {
    /// A job dropped before it was settled was abandoned (the client went away): cancel it at
    /// once and settle what was delivered in the background.
    fn drop(&mut self) {
        let Some(generation) = self.generation.take() else {
            return;
        };
        generation.cancel();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                job = self.ctx.id,
                "job dropped outside a runtime; its hold expires by TTL"
            );
            return;
        };
        let jobs = self.jobs.clone();
        let ctx = self.ctx.clone();
        let delivered = self.delivered;
        let end = self.end.take();
        let slot = self.slot.take();
        let span = tracing::info_span!("job", job = %ctx.id);
        runtime.spawn(tracing::Instrument::instrument(
            async move {
                let end = match end {
                    Some(end) => end,
                    None => drain(Some(generation)).await,
                };
                if let Err(e) = settle_or_void(&jobs, &ctx, end, delivered, slot).await {
                    tracing::error!(error = %e, "settling an abandoned job failed; its hold expires by TTL");
                }
            },
            span,
        ));
    }
}
