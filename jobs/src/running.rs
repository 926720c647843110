//! A running job: its engine events, and the one settlement that ends it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use db::{new_id, now_ms, sqlx::Row};
use engine::{Event, Finish, FinishReason, Generation};
use ledger::{AccountKind, AccountSpec, Nanos};

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
    pub max_tokens: usize,
    pub created_at: i64,
    /// Tokens taken from the allocation's tokens-per-minute bucket (0: no limit).
    pub tpm_taken: u64,
    /// Whether the unused part was given back (once, whichever way the job ends).
    pub tpm_returned: Arc<AtomicBool>,
}

impl JobContext {
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
    /// The engine failed: the hold was voided, nothing charged, no usage event.
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
        let generation = self.generation.as_mut()?;
        let event = match generation.events.recv().await {
            Some(e) => e,
            // The worker went away without a last event (it stopped).
            None => Event::Failed("the worker stopped".into()),
        };
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
    /// its last event was handed out: what [`RunningJob::settle_completed`] charges.
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
    /// is written with them in one transaction (see `settler`), beside the caller's next
    /// requests (docs/perf.md, "Gateway overhead"). The job stays unsettled for a shutdown
    /// until the commit.
    ///
    /// # Panics
    /// In debug builds, when the job did not run to its end (settle those with
    /// [`RunningJob::settle`], whose receipt says what happened).
    pub fn settle_completed(mut self) {
        debug_assert!(
            self.completed().is_some(),
            "settle_completed on an unfinished job"
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
                settler.send(crate::settler::Finished::new(
                    jobs, ctx, finish, delivered, slot,
                ));
            }
            end => {
                let span = tracing::info_span!("job", job = %ctx.id);
                // Its own task: a caller that goes away cannot cut it in half.
                tokio::spawn(tracing::Instrument::instrument(
                    async move {
                        let end = end.unwrap_or_else(|| End::Failed("no end".into()));
                        if let Err(e) = settle(&jobs, &ctx, end, delivered, slot).await {
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
                settle(&jobs, &ctx, end, delivered, slot).await
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
                if let Err(e) = settle(&jobs, &ctx, end, delivered, slot).await {
                    tracing::error!(error = %e, "settling an abandoned job failed; its hold expires by TTL");
                }
            },
            span,
        ));
    }
}

/// Settles the job; when that fails (storage trouble, or the hold expired meanwhile) the hold
/// is voided and the job marked failed, so nothing stays reserved and the caller's "not
/// charged" is true. The journal slot is freed only after, so a crash before the settlement
/// committed still finds the delivered count.
pub(crate) async fn settle(
    jobs: &Jobs,
    ctx: &JobContext,
    end: End,
    delivered: usize,
    slot: Option<crate::journal::Slot>,
) -> Result<Receipt, JobError> {
    let result = match settle_once(jobs, ctx, end, delivered).await {
        Ok(r) => Ok(r),
        Err(e) => Err(not_settled(jobs, ctx, e).await),
    };
    settled(jobs, ctx, &result, slot, now_ms());
    result
}

/// A settlement that failed (`e`): the hold is voided and the job marked failed, so nothing
/// stays reserved and the job is not charged. Returns `e`.
pub(crate) async fn not_settled(jobs: &Jobs, ctx: &JobContext, e: JobError) -> JobError {
    tracing::error!(job = ctx.id, error = %e, "settlement failed; voiding the hold");
    if let Err(again) = fail(jobs, ctx, format!("settlement failed: {e}")).await {
        tracing::error!(job = ctx.id, error = %again, "marking the job failed also failed");
    }
    e
}

/// After a job's settlement committed (or failed for good): its metrics (the job having
/// ended at `ended_at`, milliseconds), its journal slot (freed only now, so a crash before
/// the commit still finds the delivered count) and the shutdown's count of unsettled jobs.
pub(crate) fn settled(
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

async fn settle_once(
    jobs: &Jobs,
    ctx: &JobContext,
    end: End,
    delivered: usize,
) -> Result<Receipt, JobError> {
    let f = match end {
        End::Failed(message) => return fail(jobs, ctx, message).await,
        // Cancelled by a shutdown before anything reached the client: the client gets an
        // error and pays nothing (a batch line runs again elsewhere).
        End::Finished(f)
            if f.reason == FinishReason::Cancelled
                && delivered == 0
                && jobs.cancelled_for_shutdown() =>
        {
            let mut receipt = fail(
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
    let s = settlement_of(&f, delivered, now_ms());
    ctx.give_back_tokens(jobs, s.prompt_tokens + s.completion_tokens);
    let amount = charge(jobs, ctx, &s).await?;
    Ok(receipt_of(jobs, ctx, &f, &s, amount))
}

/// What a job that ended with `f` is charged for, `delivered` tokens having reached its
/// client: every token when it ran to its end; when it was cut short, the prompt (once it was
/// processed) and only the delivered output. It ended at `ended_at` (milliseconds).
pub(crate) fn settlement_of(f: &Finish, delivered: usize, ended_at: i64) -> Settlement<'static> {
    let complete = f.reason != FinishReason::Cancelled;
    let (prompt_tokens, completion_tokens) = if complete {
        (f.prompt_tokens, f.completion_tokens)
    } else {
        // The prompt was processed when the first token came out.
        let prompt = if f.completion_tokens > 0 {
            f.prompt_tokens
        } else {
            0
        };
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
pub(crate) fn receipt_of(
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

/// In one transaction: settles the hold for the tokens (the rest goes back), records the usage
/// event with its split by funding source, and ends the job. Returns the amount charged.
pub(crate) async fn charge(
    jobs: &Jobs,
    ctx: &JobContext,
    s: &Settlement<'_>,
) -> Result<Nanos, JobError> {
    let mut amounts = charge_many(jobs, &[(ctx, s)]).await?;
    Ok(amounts.pop().unwrap_or(Nanos::new(0)))
}

/// [`charge`] for several jobs in one transaction, which stands or falls whole: each job's hold
/// settled (the ledger's `settle_many_into`), usage event and end. Returns what each was
/// charged, in order.
///
/// Everything is worked out first and written as one batch (one round trip on SQLite, one
/// statement on PostgreSQL); the writes fail, and roll back whole, if a hold was resolved
/// meanwhile.
pub(crate) async fn charge_many(
    jobs: &Jobs,
    items: &[(&JobContext, &Settlement<'_>)],
) -> Result<Vec<Nanos>, JobError> {
    let inner = &jobs.inner;
    let mut amounts = Vec::with_capacity(items.len());
    // Per job: where its charge goes and the memo of its transaction (none without a hold).
    let mut receivers = Vec::with_capacity(items.len());
    for (ctx, s) in items {
        let mut amount = ctx
            .rates
            .cost(s.prompt_tokens as u64, s.completion_tokens as u64)
            .unwrap_or(Nanos::new(i64::MAX));
        if amount > ctx.max_cost {
            // Cannot happen while the engine keeps to the prepared limits; charge the hold.
            tracing::error!(job = ctx.id, %amount, held = %ctx.max_cost, "charge above the hold");
            amount = ctx.max_cost;
        }
        match &ctx.hold {
            Some(_) => receivers.push(Some((
                revenue_account(jobs, ctx).await?,
                format!("{} {} job {}", ctx.kind.code(), ctx.model, ctx.id),
            ))),
            None => {
                amount = Nanos::new(0);
                receivers.push(None);
            }
        }
        amounts.push(amount);
    }
    let to_settle: Vec<ledger::ToSettle<'_>> = items
        .iter()
        .zip(&receivers)
        .zip(&amounts)
        .filter_map(|(((ctx, _), to), amount)| {
            let (hold, (to, memo)) = (ctx.hold.as_ref()?, to.as_ref()?);
            Some(ledger::ToSettle {
                hold,
                actual: *amount,
                to,
                memo,
            })
        })
        .collect();
    let mut writes: ledger::Writes = inner.db.batch();
    let mut settled = inner
        .credits
        .ledger()
        .settle_many_into(&mut writes, &to_settle)
        .map_err(JobError::storage)?
        .into_iter();
    let now = now_ms();
    let mut usage = UsageRows::new();
    for (((ctx, s), amount), to) in items.iter().zip(&amounts).zip(&receivers) {
        let (drawn, transaction_id) = match to.as_ref().and_then(|_| settled.next()) {
            Some(settled) => (settled.drawn, settled.transaction_id),
            None => (Vec::new(), None),
        };
        // Which grants paid: every drawn account that is not a grant's is paid credit.
        let mut grants = Vec::new();
        let mut paid = 0i64;
        for (account, part) in &drawn {
            match grant_of_account(jobs, account).await? {
                Some((grant_id, program_id)) => grants.push((grant_id, program_id, *part)),
                None => paid += part,
            }
        }
        usage.add(
            ctx,
            s,
            &Charge {
                amount: *amount,
                paid,
                grants,
                transaction_id,
                now,
            },
        );
        queue_end(&mut writes, ctx, s);
    }
    usage.queue(&mut writes);
    // Only now the write lock (SQLite) or the rows (PostgreSQL). The whole settlement is one
    // query on SQLite (with its BEGIN and COMMIT) and one statement on PostgreSQL.
    let tx = inner.db.begin_metering().await.map_err(JobError::storage)?;
    tx.commit_with(writes)
        .await
        .map_err(|e| JobError::storage(ledger::LedgerError::from(e)))?;
    Ok(amounts)
}

/// What one job's settlement charged, as its usage event records it.
struct Charge {
    amount: Nanos,
    /// The part paid from paid credit; the rest came from `grants` (grant, program, amount).
    paid: i64,
    grants: Vec<(String, String, i64)>,
    transaction_id: Option<String>,
    now: i64,
}

/// The usage events of a settlement, each with its split by grant, queued as two statements
/// of one text whatever the number of jobs (see `db::Rows`).
struct UsageRows {
    events: db::Rows<23>,
    grants: db::Rows<4>,
}

impl UsageRows {
    fn new() -> UsageRows {
        use db::Column::{Int, Text};
        UsageRows {
            events: db::Rows::new(&[
                ("id", Text),
                ("job_id", Text),
                ("org_id", Text),
                ("user_id", Text),
                ("api_key_id", Text),
                ("kind", Text),
                ("model", Text),
                ("factory_id", Text),
                ("partner_org_id", Text),
                ("prompt_tokens", Int),
                ("completion_tokens", Int),
                ("input_nanos_per_mtok", Int),
                ("output_nanos_per_mtok", Int),
                ("amount", Int),
                ("paid_amount", Int),
                ("device_us", Int),
                ("queue_ms", Int),
                ("ttft_ms", Int),
                ("duration_ms", Int),
                ("partial", Int),
                ("finish_reason", Text),
                ("transaction_id", Text),
                ("created_at", Int),
            ]),
            grants: db::Rows::new(&[
                ("usage_event_id", Text),
                ("grant_id", Text),
                ("program_id", Text),
                ("amount", Int),
            ]),
        }
    }

    /// The job's usage event, with its split by grant.
    fn add(&mut self, ctx: &JobContext, s: &Settlement<'_>, c: &Charge) {
        let event_id = new_id();
        self.events.push([
            event_id.as_str().into(),
            ctx.id.as_str().into(),
            ctx.who.org_id.as_str().into(),
            (&ctx.who.user_id).into(),
            (&ctx.who.api_key_id).into(),
            ctx.kind.code().into(),
            ctx.model.as_str().into(),
            ctx.factory_id.as_str().into(),
            ctx.partner_org_id.as_str().into(),
            (s.prompt_tokens as i64).into(),
            (s.completion_tokens as i64).into(),
            ctx.rates.input_nanos_per_mtok.into(),
            ctx.rates.output_nanos_per_mtok.into(),
            c.amount.get().into(),
            c.paid.into(),
            s.device_us.into(),
            s.queue_ms.into(),
            s.ttft_ms.into(),
            (s.ended_at - ctx.created_at).into(),
            i64::from(s.partial).into(),
            s.finish_reason.into(),
            (&c.transaction_id).into(),
            c.now.into(),
        ]);
        for (grant_id, program_id, part) in &c.grants {
            self.grants.push([
                event_id.as_str().into(),
                grant_id.as_str().into(),
                program_id.as_str().into(),
                (*part).into(),
            ]);
        }
    }

    /// The events first: their grants refer to them.
    fn queue(self, writes: &mut ledger::Writes) {
        writes.insert_rows("usage_events", self.events);
        writes.insert_rows("usage_event_grants", self.grants);
    }
}

/// Queues the job's end: one statement per job, found by its key (see `db::Batch::push_rows`).
fn queue_end(writes: &mut ledger::Writes, ctx: &JobContext, s: &Settlement<'_>) {
    writes.push(
        "UPDATE jobs SET status = $1, completion_tokens = $2, finish_reason = $3, finished_at = $4, \
         error = $6 WHERE id = $5 AND status = 'running'",
        vec![
            s.status.into(),
            (s.completion_tokens as i64).into(),
            s.finish_reason.into(),
            s.ended_at.into(),
            ctx.id.as_str().into(),
            (&s.error).into(),
        ],
    );
}

/// The grant (id, program) a wallet account holds, or `None` for paid credit. Which grant an
/// account holds never changes: looked up once per process.
async fn grant_of_account(
    jobs: &Jobs,
    account: &str,
) -> Result<Option<(String, String)>, JobError> {
    if let Some(known) = jobs.grant_of_account(account) {
        return Ok(known);
    }
    let row = db::sqlx::query("SELECT id, program_id FROM credit_grants WHERE account_id = $1")
        .bind(account)
        .fetch_optional(jobs.inner.db.pool())
        .await
        .map_err(JobError::storage)?;
    let grant = match row {
        Some(r) => Some((
            r.try_get::<String, _>("id").map_err(JobError::storage)?,
            r.try_get::<String, _>("program_id")
                .map_err(JobError::storage)?,
        )),
        None => None,
    };
    jobs.remember_grant_of_account(account, grant.clone());
    Ok(grant)
}

async fn fail(jobs: &Jobs, ctx: &JobContext, message: String) -> Result<Receipt, JobError> {
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

/// The factory's usage revenue account, where settled charges go (statements split it between
/// the partner and the vendor).
async fn revenue_account(jobs: &Jobs, ctx: &JobContext) -> Result<String, JobError> {
    if let Some(id) = jobs.revenue_account_cached(&ctx.factory_id) {
        return Ok(id);
    }
    let spec = AccountSpec {
        code: format!("factory:{}:usage", ctx.factory_id),
        org_id: Some(ctx.partner_org_id.clone()),
        kind: AccountKind::Revenue,
        expires_at: None,
    };
    let id = jobs
        .inner
        .credits
        .ledger()
        .open_account(&spec)
        .await
        .map_err(JobError::storage)?
        .id;
    jobs.remember_revenue_account(&ctx.factory_id, &id);
    Ok(id)
}
