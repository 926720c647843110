//! Closing a month: the month is computed, stored as its canonical CSV with its hash chained
//! to the previous statement, its events and adjustments marked as taken, the chain head
//! moved on, and the split posted to the ledger, all in one transaction, so that a failure
//! leaves the month open and nothing posted.

use db::{Batch, BatchError, Column, Rows, WriteTx, new_id};
use ledger::{AccountKind, AccountSpec, Leg, Nanos, Posting};

use super::open::{Head, Open, compute_open, first_open, load_open, lock_head};
use super::{REFUNDS_PENDING, Statement, Statements, VENDOR_REVENUE, in_period, open_account};
use crate::agreements::{self, AgreementVersion};
use crate::canonical::{self, Header, sha256_hex};
use crate::compute::Computed;
use crate::{Period, StatementError};

/// The ledger accounts a close pays into besides the factories' usage accounts, opened before
/// its transaction (opening is idempotent and commits on its own).
struct Payees {
    /// `partner:<id>:payable`: the partner's total.
    partner: String,
    /// The vendor's total.
    vendor: String,
    /// Refunds paid out during the month, settled against both shares.
    refunds_pending: String,
}

/// A month computed for closing, with everything its statement row records.
struct Closing<'a> {
    id: String,
    partner_org_id: &'a str,
    partner_name: String,
    period: Period,
    number: i64,
    previous_sha256: Option<String>,
    csv: String,
    sha256: String,
    computed: Computed,
    closed_by: &'a str,
    closed_at: i64,
}

impl Statements {
    /// Closes a past month (see the module's comment); `actor` closes it at `now`.
    pub async fn close(
        &self,
        partner_org_id: &str,
        period: Period,
        actor: &str,
        now: i64,
    ) -> Result<Statement, StatementError> {
        let partner_name = self.partner_name(partner_org_id).await?;
        if period.end_ms() > now {
            return Err(StatementError::Conflict(format!(
                "{period} is not over yet: a month can be closed from the first day of the next."
            )));
        }
        let payees = self.payees(partner_org_id).await?;
        let mut tx = self.db.begin_write().await?;
        let head = lock_head(&mut tx, partner_org_id).await?;
        let open_rows = load_open(&mut tx, partner_org_id, period.end_ms()).await?;
        let agreements = agreements::load(&mut tx, partner_org_id).await?;
        check_closable(
            &mut tx,
            &head,
            &open_rows,
            &agreements,
            partner_org_id,
            period,
            now,
        )
        .await?;
        let computed = compute_open(period, period, &open_rows, &agreements, head.recouped_total)?;
        let names = self.names(&mut tx, &computed).await?;
        let mut closing = Closing {
            id: new_id(),
            partner_org_id,
            partner_name,
            period,
            number: head.last_number + 1,
            previous_sha256: head.last_sha256.clone(),
            csv: String::new(),
            sha256: String::new(),
            computed,
            closed_by: actor,
            closed_at: now,
        };
        closing.csv = canonical::write(
            &Header {
                partner_id: partner_org_id,
                partner_name: &closing.partner_name,
                number: Some(closing.number),
                previous_sha256: closing.previous_sha256.as_deref(),
                agreements: &in_period(&agreements, period),
                names: &names,
            },
            &closing.computed,
        );
        closing.sha256 = sha256_hex(closing.csv.as_bytes());
        let legs = self.split(&closing.computed, &payees).await?;
        closing.record(self.db.batch(), &mut tx, &open_rows).await?;
        // The ledger last: if the posting fails, everything above rolls back with it.
        closing.post(self.credits.ledger(), &mut tx, legs).await?;
        tx.commit().await?;
        tracing::info!(
            partner = partner_org_id,
            %period,
            number = closing.number,
            payable = %Nanos::new(closing.computed.payable()),
            "statement closed"
        );
        self.closed(partner_org_id, period)
            .await?
            .ok_or(StatementError::NotFound)
    }

    async fn payees(&self, partner_org_id: &str) -> Result<Payees, StatementError> {
        let ledger = self.credits.ledger();
        let partner = ledger
            .open_account(&AccountSpec {
                code: format!("partner:{partner_org_id}:payable"),
                org_id: Some(partner_org_id.to_string()),
                kind: AccountKind::SharePayable,
                expires_at: None,
            })
            .await?
            .id;
        Ok(Payees {
            partner,
            vendor: open_account(ledger, VENDOR_REVENUE, AccountKind::SharePayable).await?,
            refunds_pending: open_account(ledger, REFUNDS_PENDING, AccountKind::External).await?,
        })
    }

    /// The split's legs: each factory's usage account gives up the month's gross, pending
    /// refunds are settled, and the partner and the vendor receive their totals.
    async fn split(&self, c: &Computed, payees: &Payees) -> Result<Vec<Leg>, StatementError> {
        let ledger = self.credits.ledger();
        let mut legs = Vec::new();
        for (factory, gross) in &c.factory_gross {
            if *gross == 0 {
                continue;
            }
            let code = format!("factory:{factory}:usage");
            let account = ledger
                .account_by_code(&code)
                .await?
                .ok_or(ledger::LedgerError::UnknownAccount(code))?;
            legs.push(Leg {
                account_id: account.id,
                amount: -gross,
            });
        }
        let refunds: i64 = -c
            .adjustments
            .iter()
            .filter(|a| a.kind == "refund")
            .map(|a| a.gross)
            .sum::<i64>();
        for (account, amount) in [
            (&payees.refunds_pending, refunds),
            (&payees.partner, c.payable()),
            (&payees.vendor, c.vendor_total()),
        ] {
            if amount != 0 {
                legs.push(Leg {
                    account_id: account.clone(),
                    amount,
                });
            }
        }
        Ok(legs)
    }
}

/// Refuses a month that is closed already, or is not the partner's next to close: statements
/// close month by month, in order, from the first with anything in it.
async fn check_closable(
    tx: &mut WriteTx,
    head: &Head,
    open_rows: &Open,
    agreements: &[AgreementVersion],
    partner_org_id: &str,
    period: Period,
    now: i64,
) -> Result<(), StatementError> {
    let number: Option<i64> = db::sqlx::query_scalar(
        "SELECT number FROM statements WHERE partner_org_id = $1 AND period = $2",
    )
    .bind(partner_org_id)
    .bind(period.to_string())
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(n) = number {
        return Err(StatementError::Conflict(format!(
            "{period} is already closed (statement {n})."
        )));
    }
    let first = first_open(head, open_rows, agreements, now);
    if period < first {
        return Err(StatementError::Conflict(match head.last_period {
            Some(_) => {
                format!("{period} is before this partner's first statement and cannot be closed.")
            }
            None => format!(
                "Nothing to close before {first}: this partner had no agreement, usage or adjustment earlier."
            ),
        }));
    }
    if period > first {
        return Err(StatementError::Conflict(format!(
            "Close {first} first: statements are closed month by month, in order."
        )));
    }
    Ok(())
}

impl Closing<'_> {
    /// The statement's row, the events and adjustments it takes, and the chain head moved on
    /// to it: one batch of writes (one round trip on SQLite).
    async fn record(
        &self,
        mut writes: Batch<()>,
        tx: &mut WriteTx,
        open_rows: &Open,
    ) -> Result<(), StatementError> {
        let c = &self.computed;
        let mut row = Rows::new(&STATEMENT_COLUMNS);
        row.push([
            self.id.as_str().into(),
            self.partner_org_id.into(),
            self.period.to_string().into(),
            self.number.into(),
            self.csv.as_str().into(),
            self.sha256.as_str().into(),
            (&self.previous_sha256).into(),
            c.gross().into(),
            c.totals.cash.into(),
            c.totals.credit_support.into(),
            c.payable().into(),
            c.vendor_total().into(),
            c.recouped_before.into(),
            c.recouped_after.into(),
            self.closed_by.into(),
            self.closed_at.into(),
        ]);
        writes.insert_rows("statements", row);
        let mut taken = Rows::new(&[
            ("usage_event_id", Column::Text),
            ("statement_id", Column::Text),
        ]);
        for e in &open_rows.events {
            if e.created_at < self.period.end_ms() {
                taken.push([e.id.as_str().into(), self.id.as_str().into()]);
            }
        }
        if !taken.is_empty() {
            writes.insert_rows("statement_events", taken);
        }
        // One statement per adjustment, by its key (see `db::Batch::push_rows`).
        for a in &c.adjustments {
            writes.push(
                "UPDATE statement_adjustments SET statement_id = $1 WHERE id = $2",
                vec![self.id.as_str().into(), a.id.as_str().into()],
            );
        }
        writes.push(
            "UPDATE statement_heads SET last_period = $1, last_number = $2, last_sha256 = $3, \
             recouped_total = $4 WHERE partner_org_id = $5",
            vec![
                self.period.to_string().into(),
                self.number.into(),
                self.sha256.as_str().into(),
                c.recouped_after.into(),
                self.partner_org_id.into(),
            ],
        );
        match writes.run(tx).await {
            Ok(_) => Ok(()),
            Err(BatchError::Db(e)) => Err(e.into()),
            // Only a statement given an expected row count is refused, and none here is.
            Err(e @ BatchError::Refused { .. }) => Err(StatementError::Conflict(e.to_string())),
        }
    }

    /// Posts the split (when anything moves) and records its transaction on the statement.
    async fn post(
        &self,
        ledger: &ledger::Ledger,
        tx: &mut WriteTx,
        legs: Vec<Leg>,
    ) -> Result<(), StatementError> {
        if legs.is_empty() {
            return Ok(());
        }
        let (partner, period) = (self.partner_org_id, self.period);
        let posting = Posting::new(
            format!("statement:{partner}:{period}"),
            "statement_close",
            format!(
                "{} statement {} for {period}",
                self.partner_name, self.number
            ),
            Some(partner.to_string()),
            legs,
        )?;
        let posted = ledger.post_in(tx, &posting).await?;
        db::sqlx::query("UPDATE statements SET transaction_id = $1 WHERE id = $2")
            .bind(posted.transaction_id())
            .bind(&self.id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// The columns of a statement's row as [`Closing::record`] writes them (its
/// `transaction_id` follows the posting).
const STATEMENT_COLUMNS: [(&str, Column); 16] = [
    ("id", Column::Text),
    ("partner_org_id", Column::Text),
    ("period", Column::Text),
    ("number", Column::Int),
    ("csv", Column::Text),
    ("sha256", Column::Text),
    ("previous_sha256", Column::Text),
    ("gross", Column::Int),
    ("cash", Column::Int),
    ("credit_support", Column::Int),
    ("partner_total", Column::Int),
    ("vendor_total", Column::Int),
    ("recouped_before", Column::Int),
    ("recouped_after", Column::Int),
    ("closed_by", Column::Text),
    ("closed_at", Column::Int),
];
