//! The rows a settlement writes, for one job or many in one transaction: each hold settled
//! (the rest goes back), a usage event with its split by funding source, and the job's end.

use db::{new_id, now_ms, sqlx::Row};
use ledger::{AccountKind, AccountSpec, Nanos};

use super::Settlement;
use crate::running::JobContext;
use crate::{JobError, Jobs};

/// In one transaction: settles the hold for the tokens (the rest goes back), records the usage
/// event with its split by funding source, and ends the job. Returns the amount charged.
pub(crate) async fn write_settlement(
    jobs: &Jobs,
    ctx: &JobContext,
    s: &Settlement<'_>,
) -> Result<Nanos, JobError> {
    let mut amounts = write_settlements(jobs, &[(ctx, s)]).await?;
    Ok(amounts.pop().unwrap_or(Nanos::new(0)))
}

/// [`charge`] for several jobs in one transaction, which stands or falls whole: each job's hold
/// settled (the ledger's `settle_many_into`), usage event and end. Returns what each was
/// charged, in order.
///
/// Everything is worked out first and written as one batch (one round trip on SQLite, one
/// statement on PostgreSQL); the writes fail, and roll back whole, if a hold was resolved
/// meanwhile.
pub(crate) async fn write_settlements(
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
    events: db::Rows<25>,
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
                ("node", Text),
                ("device", Text),
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
            ctx.placement.as_ref().map(|p| p.node.as_str()).into(),
            ctx.placement.as_ref().map(|p| p.device.as_str()).into(),
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
