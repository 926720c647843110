//! Changes of state: the decider's approve / reject / request changes / end, the tenant's
//! cancel, and the dates arriving (approved → active → ended).
//!
//! Every change is a conditional update on the version the actor saw, so two decisions racing
//! on one request cannot both apply: the second finds the version moved and changes nothing.
//! An approval with a grant commits the decision first and then makes the grant under the
//! request's own idempotency key; if the process stops in between, [`Compute::advance`] makes
//! it later, and if the program's budget ran out meanwhile the approval is undone.

use accounts::User;
use db::now_ms;
use ledger::Nanos;

use crate::requests::{Actor, SYSTEM, record_event};
use crate::types::{DAY_MS, Day, Status, parse_reason};
use crate::{Compute, ComputeError, ComputeRequest, field};

/// What a partner or operator fills in to approve. Text as submitted.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    pub share_weight: String,
    pub rate_limit_tpm: String,
    /// Empty: the requested dates.
    pub starts_on: String,
    pub ends_on: String,
    /// Empty: no grant.
    pub grant_program_id: String,
    pub grant_amount: String,
}

const MAX_WEIGHT: i64 = 1000;

fn whole(text: &str, name: &'static str, lo: i64, hi: i64, msg: &str) -> Result<i64, ComputeError> {
    match text.trim().replace([',', '_'], "").parse::<i64>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(field(name, msg)),
    }
}

fn conflict(req: &ComputeRequest, doing: &str) -> ComputeError {
    ComputeError::Conflict(format!(
        "This request is {}; it cannot be {doing}.",
        req.status.label().to_lowercase()
    ))
}

impl Compute {
    /// Runs a conditional update (its SQL ends with `WHERE id = … AND version = …`), records
    /// the event, and commits; a moved version means someone else acted first.
    async fn change<'q>(
        &self,
        id: &str,
        query: db::sqlx::query::Query<'q, db::sqlx::Any, db::sqlx::any::AnyArguments<'q>>,
        actor: Actor<'_>,
        action: &str,
        detail: &str,
    ) -> Result<ComputeRequest, ComputeError> {
        let mut tx = self.db.begin_write().await?;
        let done = query.execute(&mut *tx).await?;
        if done.rows_affected() != 1 {
            let _ = tx.rollback().await;
            return Err(ComputeError::Conflict(
                "The request changed meanwhile; reload it and try again.".into(),
            ));
        }
        record_event(&mut tx, id, actor, action, detail).await?;
        tx.commit().await?;
        self.changed();
        self.load(id).await
    }

    async fn decidable(
        &self,
        user: &User,
        id: &str,
        doing: &str,
    ) -> Result<ComputeRequest, ComputeError> {
        let req = self.request(user, id).await?;
        if !req.may_decide(user) {
            return Err(ComputeError::Forbidden);
        }
        if req.status != Status::Submitted {
            return Err(conflict(&req, doing));
        }
        Ok(req)
    }

    pub async fn approve(
        &self,
        user: &User,
        id: &str,
        d: &Decision,
        now: i64,
    ) -> Result<ComputeRequest, ComputeError> {
        let req = self.decidable(user, id, "approved").await?;
        let weight = whole(
            &d.share_weight,
            "share_weight",
            1,
            MAX_WEIGHT,
            "Use a share weight from 1 to 1,000.",
        )?;
        let tpm = whole(
            &d.rate_limit_tpm,
            "rate_limit_tpm",
            1_000,
            crate::types::MAX_TOKENS_PER_MINUTE,
            "Set a rate limit from 1,000 to 1,000,000,000 tokens per minute.",
        )?;
        let starts = match d.starts_on.trim() {
            "" => req.starts_at,
            s => Day::parse(s, "starts_on")?,
        };
        let ends = match d.ends_on.trim() {
            "" => req.ends_at,
            s => Day::parse(s, "ends_on")?,
        };
        if ends < starts {
            return Err(field("ends_on", "The end cannot be before the start."));
        }
        if ends < Day::containing(now) {
            return Err(field("ends_on", "The allocation would already be over."));
        }
        let grant = self.checked_grant(user, &req, d).await?;
        let detail = format!(
            "share weight {weight}, {tpm} tokens/min, {starts} to {ends}{}",
            match &grant {
                Some((_, name, amount)) => format!(", grant {amount} from {name}"),
                None => String::new(),
            }
        );
        let (program, amount) = match &grant {
            Some((p, _, a)) => (Some(p.as_str()), Some(a.get())),
            None => (None, None),
        };
        // One key per approval: the version this approval creates.
        let grant_key = grant
            .as_ref()
            .map(|_| format!("compute:{id}:{}", req.version + 1));
        let approved = self
            .change(
                id,
                db::sqlx::query(
                    "UPDATE compute_requests SET status = 'approved', reason = NULL, share_weight = $1, \
                     rate_limit_tpm = $2, alloc_starts_at = $3, alloc_ends_at = $4, \
                     grant_program_id = $5, grant_amount = $6, grant_key = $7, grant_id = NULL, \
                     version = version + 1, updated_at = $8 WHERE id = $9 AND version = $10",
                )
                .bind(weight)
                .bind(tpm)
                .bind(starts.ms())
                .bind(ends.ms())
                .bind(program)
                .bind(amount)
                .bind(grant_key)
                .bind(now)
                .bind(id)
                .bind(req.version),
                user.into(),
                "approved",
                &detail,
            )
            .await?;
        tracing::info!(request = id, "compute request approved");
        // The decision is made. What follows (the grant, the dates) may race the background
        // sweep doing the same; whoever does it, the result is the request as it now stands.
        let after = match self.make_grant(approved, user.into()).await {
            Ok(r) => self.activate(r, now).await,
            Err(e) => Err(e),
        };
        match after {
            Ok(r) => Ok(r),
            Err(ComputeError::Conflict(_)) => self.load(id).await,
            Err(e) => Err(e),
        }
    }

    /// The grant an approval asks for, checked before anything is decided.
    async fn checked_grant(
        &self,
        user: &User,
        req: &ComputeRequest,
        d: &Decision,
    ) -> Result<Option<(String, String, Nanos)>, ComputeError> {
        let program_id = d.grant_program_id.trim();
        if program_id.is_empty() {
            if !d.grant_amount.trim().is_empty() {
                return Err(field(
                    "grant_program",
                    "Choose the program the grant comes from.",
                ));
            }
            return Ok(None);
        }
        let program = self
            .credits
            .program(program_id)
            .await?
            .ok_or_else(|| field("grant_program", "Unknown program."))?;
        // A partner spends only the budgets it sponsors; operators any.
        if !user.is_operator && program.sponsor_org_id.as_deref() != Some(user.org_id.as_str()) {
            return Err(field(
                "grant_program",
                "Partners can grant only from programs they sponsor.",
            ));
        }
        let org = self
            .accounts
            .org(&req.org_id)
            .await?
            .ok_or(ComputeError::NotFound)?;
        if !program.is_eligible(&org) {
            return Err(field(
                "grant_program",
                "This program is not open to this organisation.",
            ));
        }
        let amount = Nanos::parse_dollars(&d.grant_amount)
            .map_err(|e| field("grant_amount", &e.to_string()))?;
        if amount.get() <= 0 {
            return Err(field("grant_amount", "The grant must be more than $0."));
        }
        if amount > program.remaining {
            return Err(field(
                "grant_amount",
                &format!("The program has {} left.", program.remaining),
            ));
        }
        Ok(Some((program.id, program.name, amount)))
    }

    /// Makes the grant an approval carries, once (keyed by the approval). If the program can no
    /// longer cover it, an approval not yet running is undone and waits for a new decision; a
    /// running one keeps its allocation without the grant. Errors that a retry cannot mend
    /// (the organisation no longer eligible, …) drop the grant too, on the timeline; anything
    /// else is left for [`Compute::advance`] to retry.
    async fn make_grant(
        &self,
        req: ComputeRequest,
        actor: Actor<'_>,
    ) -> Result<ComputeRequest, ComputeError> {
        let Some(g) = req.grant.as_ref().filter(|g| g.grant_id.is_none()) else {
            return Ok(req);
        };
        let program = self
            .credits
            .program(&g.program_id)
            .await?
            .ok_or(ComputeError::NotFound)?;
        let org = self
            .accounts
            .org(&req.org_id)
            .await?
            .ok_or(ComputeError::NotFound)?;
        let reason = format!("compute request at {}", req.factory_name);
        let made = self
            .credits
            .grant(&program, &org, Some(g.amount), &reason, &g.key)
            .await;
        use credits::CreditsError as E;
        match made {
            Ok(grant) => {
                // Linked once, whatever state the request has reached meanwhile.
                let mut tx = self.db.begin_write().await?;
                let linked = db::sqlx::query(
                    "UPDATE compute_requests SET grant_id = $1, version = version + 1 \
                     WHERE id = $2 AND grant_id IS NULL",
                )
                .bind(&grant.id)
                .bind(&req.id)
                .execute(&mut *tx)
                .await?;
                if linked.rows_affected() == 1 {
                    let detail = format!("{} from {}", g.amount, program.name);
                    record_event(&mut tx, &req.id, actor, "credit granted", &detail).await?;
                }
                tx.commit().await?;
                self.load(&req.id).await
            }
            Err(E::BudgetExhausted) if req.status == Status::Approved => {
                self.change(
                    &req.id,
                    db::sqlx::query(
                        "UPDATE compute_requests SET status = 'submitted', share_weight = NULL, \
                         rate_limit_tpm = NULL, alloc_starts_at = NULL, alloc_ends_at = NULL, \
                         grant_program_id = NULL, grant_amount = NULL, grant_key = NULL, \
                         version = version + 1, updated_at = $1 \
                         WHERE id = $2 AND version = $3 AND status = 'approved' AND grant_id IS NULL",
                    )
                    .bind(now_ms())
                    .bind(&req.id)
                    .bind(req.version),
                    actor,
                    "approval undone",
                    "the program's budget could not cover the grant",
                )
                .await?;
                Err(ComputeError::BudgetExhausted)
            }
            Err(e @ (E::Db(_) | E::Ledger(ledger::LedgerError::Db(_)))) => {
                tracing::error!(error = %e, request = req.id, "grant failed; will retry");
                Ok(req)
            }
            Err(e) => {
                let why = match e {
                    E::BudgetExhausted => "the program's budget could not cover it".to_string(),
                    other => other.to_string(),
                };
                self.drop_grant(&req, actor, &why).await
            }
        }
    }

    async fn drop_grant(
        &self,
        req: &ComputeRequest,
        actor: Actor<'_>,
        why: &str,
    ) -> Result<ComputeRequest, ComputeError> {
        let mut tx = self.db.begin_write().await?;
        let dropped = db::sqlx::query(
            "UPDATE compute_requests SET grant_program_id = NULL, grant_amount = NULL, \
             grant_key = NULL, version = version + 1 WHERE id = $1 AND grant_id IS NULL \
             AND grant_program_id IS NOT NULL",
        )
        .bind(&req.id)
        .execute(&mut *tx)
        .await?;
        if dropped.rows_affected() == 1 {
            record_event(&mut tx, &req.id, actor, "grant not made", why).await?;
            tracing::warn!(request = req.id, why, "approval's grant dropped");
        }
        tx.commit().await?;
        self.load(&req.id).await
    }

    /// Approved → active once the allocation's first day has come; → ended once it is over.
    async fn activate(
        &self,
        req: ComputeRequest,
        now: i64,
    ) -> Result<ComputeRequest, ComputeError> {
        let Some(alloc) = req.allocation.clone() else {
            return Ok(req);
        };
        let (to, action) = match req.status {
            Status::Approved if alloc.ends_at.ms() + DAY_MS <= now => (Status::Ended, "ended"),
            Status::Approved if alloc.starts_at.ms() <= now => (Status::Active, "activated"),
            Status::Active if alloc.ends_at.ms() + DAY_MS <= now => (Status::Ended, "ended"),
            _ => return Ok(req),
        };
        let moved = self
            .change(
                &req.id,
                db::sqlx::query(
                    "UPDATE compute_requests SET status = $1, version = version + 1, updated_at = $2 \
                     WHERE id = $3 AND version = $4",
                )
                .bind(to.code())
                .bind(now)
                .bind(&req.id)
                .bind(req.version),
                SYSTEM,
                action,
                "the allocation's dates",
            )
            .await?;
        // Approved and already over: through active to ended in one sweep.
        Box::pin(self.activate(moved, now)).await
    }

    pub async fn reject(
        &self,
        user: &User,
        id: &str,
        reason: &str,
        now: i64,
    ) -> Result<ComputeRequest, ComputeError> {
        self.send_back(user, id, reason, now, Status::Rejected, "rejected")
            .await
    }

    pub async fn request_changes(
        &self,
        user: &User,
        id: &str,
        reason: &str,
        now: i64,
    ) -> Result<ComputeRequest, ComputeError> {
        self.send_back(
            user,
            id,
            reason,
            now,
            Status::ChangesRequested,
            "changes requested",
        )
        .await
    }

    async fn send_back(
        &self,
        user: &User,
        id: &str,
        reason: &str,
        now: i64,
        to: Status,
        action: &str,
    ) -> Result<ComputeRequest, ComputeError> {
        let req = self.decidable(user, id, action).await?;
        let reason = parse_reason(reason)?;
        self.change(
            id,
            db::sqlx::query(
                "UPDATE compute_requests SET status = $1, reason = $2, version = version + 1, \
                 updated_at = $3 WHERE id = $4 AND version = $5",
            )
            .bind(to.code())
            .bind(&reason)
            .bind(now)
            .bind(id)
            .bind(req.version),
            user.into(),
            action,
            &reason,
        )
        .await
    }

    /// The tenant withdraws a request not yet running. An approved request that carries a grant
    /// stays: the grant is (being) made, and ending it is the decider's call.
    pub async fn cancel(
        &self,
        user: &User,
        id: &str,
        now: i64,
    ) -> Result<ComputeRequest, ComputeError> {
        let req = self.request(user, id).await?;
        if !req.is_requester(user) {
            return Err(ComputeError::Forbidden);
        }
        let cancellable = match req.status {
            Status::Submitted | Status::ChangesRequested => true,
            Status::Approved => req.grant.is_none(),
            _ => false,
        };
        if !cancellable {
            return Err(if req.status == Status::Approved {
                ComputeError::Conflict(
                    "This approval came with a credit grant; ask the factory's partner to end it."
                        .into(),
                )
            } else {
                conflict(&req, "cancelled")
            });
        }
        self.change(
            id,
            db::sqlx::query(
                "UPDATE compute_requests SET status = 'cancelled', version = version + 1, \
                 updated_at = $1 WHERE id = $2 AND version = $3",
            )
            .bind(now)
            .bind(id)
            .bind(req.version),
            user.into(),
            "cancelled",
            "by the requester",
        )
        .await
    }

    /// The decider ends an approved or running allocation early.
    pub async fn end(
        &self,
        user: &User,
        id: &str,
        reason: &str,
        now: i64,
    ) -> Result<ComputeRequest, ComputeError> {
        let req = self.request(user, id).await?;
        if !req.may_decide(user) {
            return Err(ComputeError::Forbidden);
        }
        if !matches!(req.status, Status::Approved | Status::Active) {
            return Err(conflict(&req, "ended"));
        }
        let reason = parse_reason(reason)?;
        self.change(
            id,
            db::sqlx::query(
                "UPDATE compute_requests SET status = 'ended', reason = $1, version = version + 1, \
                 updated_at = $2 WHERE id = $3 AND version = $4",
            )
            .bind(&reason)
            .bind(now)
            .bind(id)
            .bind(req.version),
            user.into(),
            "ended",
            &reason,
        )
        .await
    }

    /// Background step: makes grants still owed by approvals, and moves requests whose dates
    /// have come. Returns how many requests changed.
    pub async fn advance(&self, now: i64) -> Result<u64, ComputeError> {
        let ids: Vec<String> = db::sqlx::query(
            "SELECT id FROM compute_requests WHERE \
             (status IN ('approved', 'active') AND grant_program_id IS NOT NULL AND grant_id IS NULL) \
             OR (status = 'approved' AND alloc_starts_at <= $1) \
             OR (status = 'active' AND alloc_ends_at + 86400000 <= $1)",
        )
        .bind(now)
        .fetch_all(self.db.pool())
        .await?
        .iter()
        .map(|r| db::sqlx::Row::try_get(r, "id"))
        .collect::<Result<_, _>>()?;
        let mut changed = 0;
        for id in ids {
            let result = match self.load(&id).await {
                Ok(req) => {
                    let before = req.version;
                    match self.make_grant(req, SYSTEM).await {
                        Ok(req) => self.activate(req, now).await.map(|r| r.version != before),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(true) | Err(ComputeError::BudgetExhausted) => changed += 1,
                Ok(false) | Err(ComputeError::Conflict(_)) => {}
                // One request's trouble does not hold up the others.
                Err(e) => tracing::error!(error = %e, request = id, "advancing a request failed"),
            }
        }
        Ok(changed)
    }
}
