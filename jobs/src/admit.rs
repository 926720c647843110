//! Admission: everything that must hold before a job may use the device.

use std::sync::Arc;

use db::{new_id, now_ms};
use ledger::LedgerError;

use crate::limits::Refusal;
use crate::running::{JobContext, RunningJob};
use crate::{HOLD_TTL_MS, JobError, JobKind, Jobs, LOCAL_NODE, ON_DEMAND_WEIGHT, Principal, Rates};

/// Prompts longer than this are tokenized (and their template rendered) on a blocking thread:
/// a megabyte of text takes milliseconds, which would stall every other request sharing the
/// async thread. Shorter ones cost less than the hop.
const INLINE_PROMPT_BYTES: usize = 16 * 1024;

async fn prepare(
    info: &Arc<engine::ModelInfo>,
    request: engine::Request,
) -> Result<engine::Prepared, JobError> {
    let bytes = match &request.prompt {
        engine::Prompt::Text(t) => t.len(),
        engine::Prompt::Tokens(_) => 0,
        engine::Prompt::Chat(messages) => messages.iter().map(|m| m.content.len()).sum(),
    };
    if bytes <= INLINE_PROMPT_BYTES {
        return Ok(info.prepare(request)?);
    }
    let info = Arc::clone(info);
    tokio::task::spawn_blocking(move || info.prepare(request))
        .await
        .map_err(JobError::storage)?
        .map_err(JobError::from)
}

/// Where an admitted job runs: this process's pool, or a node of its factory's fleet (the
/// model's tokenizer and limits here, to count and pay for the prompt before it leaves).
enum Route {
    Local(Arc<engine::Worker>),
    Remote(Arc<engine::ModelInfo>),
}

impl Route {
    fn info(&self) -> &Arc<engine::ModelInfo> {
        match self {
            Route::Local(w) => &w.info,
            Route::Remote(info) => info,
        }
    }
}

impl Jobs {
    /// Admits and queues one generation for `who`. On success the job is running and its
    /// hold is open; every refusal leaves nothing behind (no job row, no hold).
    pub async fn start(
        &self,
        who: &Principal,
        kind: JobKind,
        model: &str,
        request: engine::Request,
    ) -> Result<RunningJob, JobError> {
        let mut jobs = self.start_choices(who, kind, model, request, 1).await?;
        jobs.pop()
            .ok_or_else(|| JobError::Storage("no job was started".into()))
    }

    /// Admits and queues the `n` choices of one request (OpenAI's `n`), each a job with its
    /// own hold, charged for its own output; they share the prompt's KV blocks on the worker
    /// (see `engine::scheduler`), so the first choice alone pays for the prompt. Every choice
    /// is held for and recorded before any is queued; a refusal leaves nothing behind.
    pub async fn start_choices(
        &self,
        who: &Principal,
        kind: JobKind,
        model: &str,
        mut request: engine::Request,
        n: usize,
    ) -> Result<Vec<RunningJob>, JobError> {
        let admitting = self.busy()?;
        let unknown = || JobError::UnknownModel(model.to_string());
        // A model without a list price is not sold, whatever the pool has loaded.
        let prices = self.prices_cached().await?;
        let price = prices
            .iter()
            .find(|p| p.model_id == model)
            .ok_or_else(unknown)?;
        let rates = Rates::from(price);
        let now = now_ms();
        let allocation = self.allocation_cached(&who.org_id, model, now).await?;
        let factory = self.factory_for(allocation.as_ref(), model).await?;
        let route = self.route(&factory, model)?;

        request.priority = kind.priority();
        request.tenant = who.org_id.clone();
        request.weight = allocation
            .as_ref()
            .map_or(ON_DEMAND_WEIGHT, |a| a.share_weight.clamp(1, 1_000) as u32);
        let prepared = prepare(route.info(), request).await?;
        let prompt_tokens = prepared.prompt_tokens();
        let max_tokens = prepared.max_new_tokens();
        let ids: Vec<String> = (0..n.max(1)).map(|_| new_id()).collect();
        let choices = if ids.len() > 1 {
            route
                .info()
                .choices(prepared, ids.len(), share_key(&ids[0]))?
        } else {
            vec![prepared]
        };
        // The first choice pays for the prompt; each pays for its own output.
        let paid_prompt = |i: usize| if i == 0 { prompt_tokens } else { 0 };
        let max_costs = (0..ids.len())
            .map(|i| rates.cost(paid_prompt(i) as u64, max_tokens as u64))
            .collect::<Option<Vec<_>>>()
            .ok_or(JobError::Invalid {
                param: "max_tokens",
                message: "max_tokens is too large".into(),
            })?;

        // The allocation's tokens-per-minute limit counts the largest size; settlement gives
        // back what was not used.
        let requested = (prompt_tokens + max_tokens * ids.len()) as u64;
        let tpm_limited = self.take_tokens(who, model, allocation.as_ref(), requested)?;

        let mut ctxs = Vec::with_capacity(ids.len());
        for (i, (id, max_cost)) in ids.into_iter().zip(max_costs).enumerate() {
            let prompt = paid_prompt(i);
            ctxs.push(JobContext {
                id,
                who: who.clone(),
                kind,
                model: model.to_string(),
                factory_id: factory.id.clone(),
                partner_org_id: factory.partner_org_id.clone(),
                rates,
                hold: None,
                max_cost,
                prompt_tokens,
                pays_prompt: i == 0,
                max_tokens,
                created_at: now,
                tpm_taken: if tpm_limited {
                    (prompt + max_tokens) as u64
                } else {
                    0
                },
                tpm_returned: Arc::default(),
                placement: None,
            });
        }
        // From the holds on, admission runs as a task of its own: a caller that goes away
        // meanwhile cannot leave a hold or a job row half made (a job it never receives is
        // dropped, which cancels and settles it).
        let jobs = self.clone();
        // Every line logged for the job carries its id (and, as a child of the request's
        // span, the request id).
        let span = tracing::info_span!("job", job = %ctxs[0].id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let _admitting = admitting; // a shutdown waits for this admission to end
                let refunds = ctxs.clone();
                let admitted = jobs.commit(ctxs, route, choices).await;
                if admitted.is_err() {
                    for ctx in refunds {
                        ctx.give_back_tokens(&jobs, 0);
                    }
                }
                admitted
            },
            span,
        ))
        .await
        .map_err(JobError::storage)?
    }

    /// Takes `requested` tokens from the allocation's tokens-per-minute bucket; false when the
    /// allocation sets no limit.
    fn take_tokens(
        &self,
        who: &Principal,
        model: &str,
        allocation: Option<&compute::Allocation>,
        requested: u64,
    ) -> Result<bool, JobError> {
        let Some(limit) = allocation.map(|a| a.rate_limit_tpm).filter(|&l| l > 0) else {
            return Ok(false);
        };
        let limit = limit as u64;
        self.inner
            .limits
            .take(
                &who.org_id,
                model,
                limit,
                requested,
                std::time::Instant::now(),
            )
            .map_err(|r| match r {
                Refusal::Wait(retry_after) => JobError::TokensPerMinute {
                    limit,
                    requested,
                    retry_after,
                },
                Refusal::TooLarge => JobError::LargerThanTokensPerMinute { limit, requested },
            })?;
        Ok(true)
    }

    /// Reserves each choice's hold and records its job (one transaction each), then queues
    /// them; undoes all if any is refused.
    async fn commit(
        &self,
        mut ctxs: Vec<JobContext>,
        route: Route,
        choices: Vec<engine::Prepared>,
    ) -> Result<Vec<RunningJob>, JobError> {
        for i in 0..ctxs.len() {
            if let Err(e) = self.record(&mut ctxs[i]).await {
                for recorded in &ctxs[..i] {
                    self.refused(recorded, &e).await;
                }
                return Err(e);
            }
        }
        let mut running: Vec<RunningJob> = Vec::with_capacity(ctxs.len());
        let mut waiting = ctxs.into_iter().zip(choices);
        while let Some((ctx, prepared)) = waiting.next() {
            // The later choices go where the first runs, to share its prompt's blocks.
            let prefer = running.first().and_then(|j| j.node()).map(str::to_string);
            match self.queue(ctx, &route, prepared, prefer.as_deref()).await {
                Ok(job) => running.push(job),
                Err((ctx, e)) => {
                    self.refused(&ctx, &e).await;
                    for (ctx, _) in waiting {
                        self.refused(&ctx, &e).await;
                    }
                    for job in running {
                        let why = format!("another choice of the request was refused: {e}");
                        job.withdraw(&why).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(running)
    }

    /// Queues one recorded job on its route.
    async fn queue(
        &self,
        mut ctx: JobContext,
        route: &Route,
        prepared: engine::Prepared,
        prefer: Option<&str>,
    ) -> Result<RunningJob, (JobContext, JobError)> {
        let queued = match route {
            Route::Local(worker) => worker.enqueue(prepared).map(|g| {
                let placement = fleet::Placement {
                    node: LOCAL_NODE.to_string(),
                    device: worker.info.device.id.clone(),
                };
                (g, placement, None)
            }),
            Route::Remote(_) => match self.fleet() {
                None => Err(engine::SubmitError::Unavailable),
                Some(fleet) => {
                    let job = fleet::RemoteJob {
                        factory_id: &ctx.factory_id,
                        job_id: &ctx.id,
                        model: &ctx.model,
                        prepared: &prepared,
                        avoid: None,
                        prefer,
                    };
                    fleet.submit(job).await.map(|(g, p)| (g, p, Some(prepared)))
                }
            },
        };
        match queued {
            Ok((generation, placement, rerun)) => {
                ctx.placement = Some(placement);
                self.track(&ctx.id, generation.canceller());
                let job = RunningJob::new(self.clone(), ctx, generation);
                // A fleet job may run once more elsewhere if its node is lost early.
                Ok(match rerun {
                    Some(prepared) => job.with_rerun(prepared),
                    None => job,
                })
            }
            Err(e) => Err((ctx, JobError::from(e))),
        }
    }

    /// The allocation's factory while it still serves the model; else the first that can run
    /// it now; else the first that lists it (whose route then says why it cannot).
    async fn factory_for(
        &self,
        allocation: Option<&compute::Allocation>,
        model: &str,
    ) -> Result<compute::Factory, JobError> {
        let factories = self.factories_cached().await?;
        let allocated = allocation.and_then(|a| {
            factories
                .iter()
                .find(|f| f.id == a.factory_id && f.serves(model))
        });
        allocated
            .or_else(|| {
                factories
                    .iter()
                    .find(|f| f.serves(model) && self.route(f, model).is_ok())
            })
            .or_else(|| factories.iter().find(|f| f.serves(model)))
            .cloned()
            .ok_or_else(|| JobError::UnknownModel(model.to_string()))
    }

    /// Where a job of `factory` for `model` can run now: a fleet factory only on its own
    /// live nodes, any other on this process's pool.
    fn route(&self, factory: &compute::Factory, model: &str) -> Result<Route, JobError> {
        if !factory.fleet {
            let pool = self.inner.pool.as_ref().ok_or(JobError::Unavailable)?;
            return Ok(Route::Local(pool.worker_for(model)?));
        }
        let fleet = self.fleet().ok_or(JobError::Unavailable)?;
        if !fleet.serves(&factory.id, model) {
            return Err(JobError::Unavailable);
        }
        // The prompt is tokenized here with the model's own tokenizer, so that what is paid
        // for is counted by the portal, never taken from a node.
        let info = self
            .model_info(model)
            .ok_or_else(|| JobError::UnknownModel(model.to_string()))?;
        Ok(Route::Remote(info))
    }

    /// The hold for the job's largest cost, in burn order, and the job row, together.
    async fn record(&self, ctx: &mut JobContext) -> Result<(), JobError> {
        // First without reading: from what was read of the wallet before, when that plan takes
        // the hold from one account, and with the key's state checked by the writes. When
        // either no longer holds, the writes refuse and the hold is planned from a read.
        let charged = ctx.max_cost.get() > 0;
        let unread = if charged {
            self.inner
                .wallets
                .plan(&ctx.who.org_id, ctx.max_cost.get())
                .map(Some)
        } else {
            ctx.who.recheck_key.then_some(None)
        };
        if let Some(sources) = unread {
            match self.record_once(ctx, Planned::Unread(sources)).await {
                Ok(()) => return Ok(()),
                Err(NotRecorded::Refused(e)) => return Err(e),
                Err(NotRecorded::Raced) => self.inner.wallets.forget(&ctx.who.org_id),
            }
        }
        // On PostgreSQL the wallet is read before the writes, not locked (see `db::MeterTx`):
        // a hold made by another job in between can leave an account without the funds this
        // one planned to take from it. The writes then refuse, and the hold is planned again
        // from a new read, which spreads it over the other accounts or finds too little.
        let mut tries = 1;
        loop {
            match self.record_once(ctx, Planned::FromReads).await {
                Ok(()) => return Ok(()),
                Err(NotRecorded::Refused(e)) => return Err(e),
                Err(NotRecorded::Raced) if tries < RECORD_TRIES => tries += 1,
                Err(NotRecorded::Raced) => {
                    let short = LedgerError::InsufficientFunds {
                        account: String::new(),
                    };
                    return Err(self.not_reserved(ctx, short).await);
                }
            }
        }
    }

    /// One try of [`Jobs::record`], planned as `planned` says: the hold and the job row are
    /// written together, or nothing is.
    async fn record_once(&self, ctx: &mut JobContext, planned: Planned) -> Result<(), NotRecorded> {
        let mut tx = self
            .inner
            .db
            .begin_metering()
            .await
            .map_err(JobError::storage)?;
        let (writes, sources) = match self.plan_writes(&mut tx, ctx, planned).await {
            Ok(planned) => planned,
            Err(e) => {
                ctx.hold = None;
                abandon(tx).await;
                return Err(e);
            }
        };
        let committed = tx.commit_with(writes).await;
        if committed.is_err() {
            ctx.hold = None;
        }
        match committed.map_err(LedgerError::from) {
            Ok(_) => {
                if let Some(hold) = &ctx.hold {
                    self.inner
                        .wallets
                        .read(&ctx.who.org_id, sources, &hold.parts);
                }
                Ok(())
            }
            Err(LedgerError::InsufficientFunds { .. }) => Err(NotRecorded::Raced),
            Err(e) => Err(self.not_reserved(ctx, e).await.into()),
        }
    }

    /// The writes of one try of [`Jobs::record`] (the hold, set on `ctx`, and the job row),
    /// with the wallet's sources the hold was planned from.
    ///
    /// Planned from reads, the reads go first and together (one query with the BEGIN on
    /// SQLite, side by side on PostgreSQL): the API key's state when the key came from those
    /// found valid lately, and the wallet's sources. The writes then go as one statement
    /// (PostgreSQL) or in one batch with the COMMIT (SQLite): two round trips in all. Planned
    /// without a read, the writes carry those checks as conditions: one round trip.
    async fn plan_writes(
        &self,
        tx: &mut db::MeterTx,
        ctx: &mut JobContext,
        planned: Planned,
    ) -> Result<(ledger::Writes, Vec<(String, i64)>), NotRecorded> {
        let credits = &self.inner.credits;
        let who = &ctx.who;
        let now = now_ms();
        let charged = ctx.max_cost.get() > 0;
        let (unread, known) = match planned {
            Planned::FromReads => (false, None),
            Planned::Unread(known) => (true, known),
        };
        let mut reads = Vec::new();
        let mut conditions = Vec::new();
        let recheck = match &who.api_key_id {
            Some(key_id) if who.recheck_key && unread => {
                conditions.push(keys::still_valid(key_id, ctx.created_at));
                false
            }
            Some(key_id) if who.recheck_key => {
                reads.push(keys::recheck(key_id));
                true
            }
            _ => false,
        };
        if charged && !unread {
            reads.push(credits.sources_read(&who.org_id, now));
        }
        let mut read = if reads.is_empty() {
            Vec::new()
        } else {
            tx.fetch_each(reads).await.map_err(JobError::storage)?
        }
        .into_iter();
        if recheck {
            keys::recheck_rows(&read.next().unwrap_or_default(), ctx.created_at).map_err(|e| {
                match e {
                    keys::KeyError::Storage(e) => JobError::Storage(e),
                    keys::KeyError::Busy => JobError::Busy,
                    refused => JobError::Key(refused),
                }
            })?;
        }
        let mut writes: ledger::Writes = self.inner.db.batch();
        ctx.hold = None;
        let mut sources = Vec::new();
        if charged {
            sources = match known {
                Some(sources) => sources,
                None => credits::sources_from(&read.next().unwrap_or_default())
                    .map_err(JobError::storage)?,
            };
            let reserved = credits.ledger().reserve_read(
                &mut writes,
                &format!("job:{}", ctx.id),
                Some(who.org_id.as_str()),
                &sources,
                ctx.max_cost,
                HOLD_TTL_MS,
            );
            let hold = match reserved {
                Ok(hold) => hold,
                Err(e) if unread => {
                    tracing::debug!(error = %e, "a hold planned without a read did not fit");
                    return Err(NotRecorded::Raced);
                }
                Err(e) => return Err(self.not_reserved(ctx, e).await.into()),
            };
            if unread {
                let from = hold.parts.first().map_or("", |(a, _)| a.as_str());
                conditions.push(credits.plan_still_holds(&who.org_id, now, &sources, from));
            }
            ctx.hold = Some(hold);
        }
        let (sql, values) = job_row(ctx, &self.inner.instance_id, conditions);
        match values {
            JobRow::Unchecked(values) => writes.push(sql, values),
            // Refused (no row) when a condition no longer holds: planned again from a read.
            JobRow::Checked(values) => writes.push_expecting(
                sql,
                values,
                1,
                LedgerError::InsufficientFunds {
                    account: String::new(),
                },
            ),
        }
        Ok((writes, sources))
    }

    /// What the caller is told when the hold could not be made: how much the wallet has, when
    /// it had too little.
    async fn not_reserved(&self, ctx: &JobContext, e: LedgerError) -> JobError {
        if !matches!(e, LedgerError::InsufficientFunds { .. }) {
            return JobError::storage(e);
        }
        match self
            .inner
            .credits
            .wallet(&ctx.who.org_id, ctx.created_at)
            .await
        {
            Ok(wallet) => JobError::InsufficientCredits {
                needed: ctx.max_cost,
                available: wallet.available(),
            },
            Err(e) => JobError::storage(e),
        }
    }

    /// The queue refused the job after it was recorded: no work was done, so the hold is voided
    /// and the job row removed (a refusal is not a job).
    async fn refused(&self, ctx: &JobContext, why: &JobError) {
        tracing::debug!(job = ctx.id, error = %why, "job refused by the queue");
        self.release(ctx).await;
        if let Err(e) = db::sqlx::query("DELETE FROM jobs WHERE id = $1")
            .bind(&ctx.id)
            .execute(self.inner.db.pool())
            .await
        {
            tracing::warn!(job = ctx.id, error = %e, "removing a refused job failed");
        }
    }

    /// Voids the job's hold (when it has one); a failure is logged and left to the TTL.
    pub(crate) async fn release(&self, ctx: &JobContext) {
        if let Some(hold) = &ctx.hold
            && let Err(e) = self.inner.credits.ledger().void(&hold.id).await
        {
            tracing::warn!(job = ctx.id, hold = hold.id, error = %e, "voiding a hold failed; it expires by its TTL");
        }
    }
}

/// How one try of recording a job plans its hold.
enum Planned {
    /// From the wallet's sources and the key's state, read first.
    FromReads,
    /// Without a read: from these sources of the wallet (account, available, in burn order;
    /// none when nothing is charged), the writes checking that plan and the key's state.
    Unread(Option<Vec<(String, i64)>>),
}

/// The values of a job's row, and whether its insert depends on conditions (then it must
/// insert exactly one row).
enum JobRow {
    Unchecked(Vec<db::Value>),
    Checked(Vec<db::Value>),
}

/// The insert of the job's row (as `running`), made only when every one of `conditions` (each
/// with its own `$1`-up values) holds.
fn job_row(
    ctx: &JobContext,
    instance_id: &str,
    conditions: Vec<(String, Vec<db::Value>)>,
) -> (String, JobRow) {
    let who = &ctx.who;
    let mut values: Vec<db::Value> = vec![
        ctx.id.as_str().into(),
        who.org_id.as_str().into(),
        (&who.user_id).into(),
        (&who.api_key_id).into(),
        ctx.kind.code().into(),
        ctx.model.as_str().into(),
        ctx.factory_id.as_str().into(),
        ctx.partner_org_id.as_str().into(),
        ctx.hold.as_ref().map(|h| h.id.as_str()).into(),
        (ctx.prompt_tokens as i64).into(),
        i64::from(ctx.pays_prompt).into(),
        (ctx.max_tokens as i64).into(),
        ctx.created_at.into(),
        instance_id.into(),
    ];
    let columns = "INSERT INTO jobs (id, org_id, user_id, api_key_id, kind, model, factory_id, \
                   partner_org_id, status, hold_id, prompt_tokens, pays_prompt, max_tokens, \
                   created_at, instance_id) ";
    let row = "$1, $2, $3, $4, $5, $6, $7, $8, 'running', $9, $10, $11, $12, $13, $14";
    if conditions.is_empty() {
        return (
            format!("{columns}VALUES ({row})"),
            JobRow::Unchecked(values),
        );
    }
    let mut sql = format!("{columns}SELECT {row} WHERE ");
    for (i, (condition, condition_values)) in conditions.into_iter().enumerate() {
        if i > 0 {
            sql.push_str(" AND ");
        }
        sql.push_str(&db::renumber(&condition, values.len()));
        values.extend(condition_values);
    }
    (sql, JobRow::Checked(values))
}

/// How many times admission plans a hold when the wallet keeps changing under it (only on
/// PostgreSQL, where the wallet is not locked while the hold is planned).
const RECORD_TRIES: u32 = 3;

/// Why one try of recording a job kept nothing.
enum NotRecorded {
    /// The wallet changed between the hold's read and its writes: plan it again.
    Raced,
    /// Refused for good (or storage trouble): what the caller is told.
    Refused(JobError),
}

impl From<JobError> for NotRecorded {
    fn from(e: JobError) -> NotRecorded {
        NotRecorded::Refused(e)
    }
}

/// The key under which the choices of one request share their prompt's KV blocks, from the
/// first choice's job id (unique; the engine compares the prompts' tokens as well).
fn share_key(job_id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    job_id.hash(&mut h);
    h.finish()
}

/// Ends a metering transaction that admission refused; a failure is logged (the connection
/// is then closed, which rolls it back).
async fn abandon(tx: db::MeterTx) {
    if let Err(e) = tx.rollback().await {
        tracing::warn!(error = %e, "rolling back a refused admission failed");
    }
}
