//! Adjustments of open months: credits and corrections an operator makes, and refunds of
//! usage, which give the tenant's cash back now and take the partner's share back in the
//! current month's statement.

use db::{
    new_id,
    sqlx::{AnyConnection, Row},
};
use ledger::{AccountKind, Nanos, Posting};

use super::open::{EventSet, Head, compute_open, first_open, load_events, load_open, lock_head};
use super::{REFUNDS_PENDING, Statements, open_account};
use crate::agreements::{self, AgreementVersion};
use crate::compute;
use crate::{Period, StatementError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdjustmentKind {
    Refund,
    Credit,
    Correction,
}

impl AdjustmentKind {
    pub fn code(self) -> &'static str {
        match self {
            AdjustmentKind::Refund => "refund",
            AdjustmentKind::Credit => "credit",
            AdjustmentKind::Correction => "correction",
        }
    }

    pub fn parse(code: &str) -> Result<AdjustmentKind, StatementError> {
        match code {
            "refund" => Ok(AdjustmentKind::Refund),
            "credit" => Ok(AdjustmentKind::Credit),
            "correction" => Ok(AdjustmentKind::Correction),
            other => Err(StatementError::Invalid(format!(
                "{other:?} is not an adjustment kind (refund, credit, correction)."
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjustment {
    pub id: String,
    pub partner_org_id: String,
    pub period: Period,
    pub kind: AdjustmentKind,
    pub tenant_org_id: Option<String>,
    pub usage_event_id: Option<String>,
    pub gross: Nanos,
    pub partner_amount: Nanos,
    pub vendor_amount: Nanos,
    /// Recoupment given back (a refund of cash the vendor had recouped): zero or negative.
    pub recouped: Nanos,
    pub reason: String,
    pub created_by: String,
    pub created_at: i64,
    pub statement_id: Option<String>,
}

impl Statements {
    /// A credit or correction for the partner in an open month (not after the current one):
    /// `amount` is what the partner gains (negative: loses); the vendor's part is the opposite.
    #[allow(clippy::too_many_arguments)]
    pub async fn adjust(
        &self,
        partner_org_id: &str,
        period: Period,
        kind: AdjustmentKind,
        amount: Nanos,
        tenant_org_id: Option<&str>,
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<Adjustment, StatementError> {
        self.partner_name(partner_org_id).await?;
        if kind == AdjustmentKind::Refund {
            return Err(StatementError::Invalid(
                "Refunds are made against a usage event.".into(),
            ));
        }
        if amount.get() == 0 {
            return Err(StatementError::Invalid(
                "An adjustment needs an amount other than zero.".into(),
            ));
        }
        let reason = check_reason(reason)?;
        if period > Period::of_ms(now) {
            return Err(StatementError::Invalid(format!(
                "{period} has not started; adjustments go into the current month or an earlier open one."
            )));
        }
        let mut tx = self.db.begin_write().await?;
        let head = lock_head(&mut tx, partner_org_id).await?;
        let open_rows = load_open(&mut tx, partner_org_id, period.end_ms()).await?;
        let agreements = agreements::load(&mut tx, partner_org_id).await?;
        let first = first_open(&head, &open_rows, &agreements, now);
        if period < first {
            return Err(StatementError::Conflict(match head.last_period {
                Some(last) if period <= last => format!(
                    "{period} is closed; adjustments go into an open month ({first} or later)."
                ),
                _ => format!(
                    "{period} is before this partner's first statement month ({first}); choose {first} or later."
                ),
            }));
        }
        let a = Adjustment {
            id: new_id(),
            partner_org_id: partner_org_id.to_string(),
            period,
            kind,
            tenant_org_id: tenant_org_id.map(str::to_string),
            usage_event_id: None,
            gross: Nanos::ZERO,
            partner_amount: amount,
            vendor_amount: Nanos::new(-amount.get()),
            recouped: Nanos::ZERO,
            reason,
            created_by: actor.to_string(),
            created_at: now,
            statement_id: None,
        };
        insert_adjustment(&mut tx, &a, None, None).await?;
        tx.commit().await?;
        Ok(a)
    }

    /// Refunds `amount` of a usage event to the tenant's paid credit now. The partner gives
    /// back its normal share of it (agreement in force when the usage happened), in the
    /// current month's statement.
    pub async fn refund_usage(
        &self,
        usage_event_id: &str,
        amount: Nanos,
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<Adjustment, StatementError> {
        let reason = check_reason(reason)?;
        if amount.get() <= 0 {
            return Err(StatementError::Invalid(
                "A refund needs an amount above zero.".into(),
            ));
        }
        let row = db::sqlx::query(
            "SELECT partner_org_id, org_id, factory_id, paid_amount, created_at FROM usage_events \
             WHERE id = $1",
        )
        .bind(usage_event_id)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or(StatementError::UnknownUsage)?;
        let partner: String = row.try_get("partner_org_id")?;
        let tenant: String = row.try_get("org_id")?;
        let factory: String = row.try_get("factory_id")?;
        let paid: i64 = row.try_get("paid_amount")?;
        let used_at: i64 = row.try_get("created_at")?;
        let wallet = self.credits.paid_account(&tenant).await?;
        let pending = open_account(
            self.credits.ledger(),
            REFUNDS_PENDING,
            AccountKind::External,
        )
        .await?;

        let mut tx = self.db.begin_write().await?;
        let head = lock_head(&mut tx, &partner).await?;
        // The current month, unless a close of it committed while this waited for the lock.
        let period = match head.last_period {
            Some(last) if Period::of_ms(now) <= last => last.next(),
            _ => Period::of_ms(now),
        };
        let refunded: Option<i64> = db::sqlx::query_scalar(
            "SELECT CAST(SUM(-gross) AS BIGINT) FROM statement_adjustments \
             WHERE usage_event_id = $1 AND kind = 'refund'",
        )
        .bind(usage_event_id)
        .fetch_one(&mut *tx)
        .await?;
        let left = paid - refunded.unwrap_or(0);
        if amount.get() > left {
            return Err(StatementError::Invalid(format!(
                "At most {} of this usage is left to refund: {} was paid in cash (credit-supported \
                 usage is not refunded in money).",
                Nanos::new(left),
                Nanos::new(paid)
            )));
        }
        let split = self
            .cash_split(&mut tx, &head, &partner, usage_event_id, used_at, now)
            .await?;
        let (partner_part, vendor_part, recouped_part) =
            compute::refund_split(amount.get(), &split);
        let id = new_id();
        let posting = Posting::transfer(
            format!("refund:{id}"),
            "usage_refund",
            format!("Refund of usage {usage_event_id}: {reason}"),
            Some(tenant.clone()),
            &pending,
            &wallet,
            amount,
        )?;
        let transaction_id = self
            .credits
            .ledger()
            .post_in(&mut tx, &posting)
            .await?
            .transaction_id()
            .to_string();
        let a = Adjustment {
            id,
            partner_org_id: partner.clone(),
            period,
            kind: AdjustmentKind::Refund,
            tenant_org_id: Some(tenant),
            usage_event_id: Some(usage_event_id.to_string()),
            gross: Nanos::new(-amount.get()),
            partner_amount: Nanos::new(partner_part),
            vendor_amount: Nanos::new(vendor_part),
            recouped: Nanos::new(recouped_part),
            reason,
            created_by: actor.to_string(),
            created_at: now,
            statement_id: None,
        };
        insert_adjustment(&mut tx, &a, Some(&factory), Some(&transaction_id)).await?;
        tx.commit().await?;
        Ok(a)
    }

    /// How an event's cash was split: recomputed from its closed statement's own inputs, or
    /// from the open month that holds it.
    async fn cash_split(
        &self,
        conn: &mut AnyConnection,
        head: &Head,
        partner_org_id: &str,
        event_id: &str,
        used_at: i64,
        now: i64,
    ) -> Result<compute::CashSplit, StatementError> {
        let agreements = agreements::load(conn, partner_org_id).await?;
        let closed = db::sqlx::query(
            "SELECT st.id, st.period, st.recouped_before FROM statement_events se \
             JOIN statements st ON st.id = se.statement_id WHERE se.usage_event_id = $1",
        )
        .bind(event_id)
        .fetch_optional(&mut *conn)
        .await?;
        let c = match closed {
            Some(r) => {
                let statement_id: String = r.try_get("id")?;
                let period = Period::parse(&r.try_get::<String, _>("period")?)?;
                let events =
                    load_events(conn, partner_org_id, EventSet::Statement(&statement_id)).await?;
                let spans: Vec<_> = agreements.iter().map(AgreementVersion::span).collect();
                compute::compute(period, &events, &spans, &[], r.try_get("recouped_before")?)
            }
            None => {
                let month = Period::of_ms(used_at);
                let open = load_open(conn, partner_org_id, month.end_ms().max(now)).await?;
                let first = first_open(head, &open, &agreements, now);
                compute_open(
                    first,
                    month.max(first),
                    &open,
                    &agreements,
                    head.recouped_total,
                )?
            }
        };
        c.cash_splits
            .into_iter()
            .find(|s| s.event_id == event_id)
            .ok_or(StatementError::UnknownUsage)
    }

    /// The partner's adjustments, newest first.
    pub async fn adjustments(
        &self,
        partner_org_id: &str,
    ) -> Result<Vec<Adjustment>, StatementError> {
        let rows = db::sqlx::query(
            "SELECT id, partner_org_id, period, kind, tenant_org_id, usage_event_id, gross, \
             partner_amount, vendor_amount, recouped, reason, created_by, created_at, \
             statement_id \
             FROM statement_adjustments WHERE partner_org_id = $1 ORDER BY created_at DESC, id",
        )
        .bind(partner_org_id)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Adjustment {
                    id: r.try_get("id")?,
                    partner_org_id: r.try_get("partner_org_id")?,
                    period: Period::parse(&r.try_get::<String, _>("period")?)?,
                    kind: AdjustmentKind::parse(&r.try_get::<String, _>("kind")?)?,
                    tenant_org_id: r.try_get("tenant_org_id")?,
                    usage_event_id: r.try_get("usage_event_id")?,
                    gross: Nanos::new(r.try_get("gross")?),
                    partner_amount: Nanos::new(r.try_get("partner_amount")?),
                    vendor_amount: Nanos::new(r.try_get("vendor_amount")?),
                    recouped: Nanos::new(r.try_get("recouped")?),
                    reason: r.try_get("reason")?,
                    created_by: r.try_get("created_by")?,
                    created_at: r.try_get("created_at")?,
                    statement_id: r.try_get("statement_id")?,
                })
            })
            .collect()
    }
}

fn check_reason(reason: &str) -> Result<String, StatementError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(StatementError::Invalid(
            "Give a reason: it is printed on the statement.".into(),
        ));
    }
    if reason.chars().count() > 500 {
        return Err(StatementError::Invalid(
            "Keep the reason under 500 characters.".into(),
        ));
    }
    Ok(reason.to_string())
}

async fn insert_adjustment(
    conn: &mut AnyConnection,
    a: &Adjustment,
    factory_id: Option<&str>,
    transaction_id: Option<&str>,
) -> Result<(), StatementError> {
    db::sqlx::query(
        "INSERT INTO statement_adjustments (id, partner_org_id, period, kind, tenant_org_id, \
         usage_event_id, factory_id, gross, partner_amount, vendor_amount, recouped, reason, \
         created_by, created_at, transaction_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(&a.id)
    .bind(&a.partner_org_id)
    .bind(a.period.to_string())
    .bind(a.kind.code())
    .bind(&a.tenant_org_id)
    .bind(&a.usage_event_id)
    .bind(factory_id)
    .bind(a.gross.get())
    .bind(a.partner_amount.get())
    .bind(a.vendor_amount.get())
    .bind(a.recouped.get())
    .bind(&a.reason)
    .bind(&a.created_by)
    .bind(a.created_at)
    .bind(transaction_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
