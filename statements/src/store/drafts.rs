//! Statements as read: closed ones as stored, the open months as drafts computed now.

use db::sqlx::Row;

use super::open::{compute_open, first_open, load_open, read_head};
use super::{FactoryActivity, Statement, StatementStatus, Statements, in_period};
use crate::agreements;
use crate::canonical::{self, Header};
use crate::{Period, StatementError};

impl Statements {
    /// The statement of `period`: the stored document once closed, otherwise a draft computed
    /// now. Future months and months before the partner's first statement are `NotFound`.
    pub async fn statement(
        &self,
        partner_org_id: &str,
        period: Period,
        now: i64,
    ) -> Result<Statement, StatementError> {
        let partner_name = self.partner_name(partner_org_id).await?;
        if let Some(s) = self.closed(partner_org_id, period).await? {
            return Ok(s);
        }
        if period > Period::of_ms(now) {
            return Err(StatementError::NotFound);
        }
        let mut conn = self.db.pool().acquire().await?;
        let head = read_head(&mut conn, partner_org_id).await?;
        if head.last_period.is_some_and(|last| period <= last) {
            return Err(StatementError::NotFound);
        }
        let open = load_open(&mut conn, partner_org_id, period.end_ms()).await?;
        let agreements = agreements::load(&mut conn, partner_org_id).await?;
        let first = first_open(&head, &open, &agreements, now);
        if period < first {
            return Err(StatementError::NotFound);
        }
        let c = compute_open(first, period, &open, &agreements, head.recouped_total)?;
        let names = self.names(&mut conn, &c).await?;
        let in_force = in_period(&agreements, period);
        let csv = canonical::write(
            &Header {
                partner_id: partner_org_id,
                partner_name: &partner_name,
                number: None,
                previous_sha256: head.last_sha256.as_deref(),
                agreements: &in_force,
                names: &names,
            },
            &c,
        );
        let document = canonical::parse(csv.as_bytes())
            .map_err(|e| StatementError::Invalid(format!("draft statement: {e}")))?;
        Ok(Statement {
            partner_org_id: partner_org_id.to_string(),
            period,
            status: StatementStatus::Draft,
            csv,
            document,
        })
    }

    pub(super) async fn closed(
        &self,
        partner_org_id: &str,
        period: Period,
    ) -> Result<Option<Statement>, StatementError> {
        let row = db::sqlx::query(
            "SELECT number, csv, sha256, previous_sha256, closed_by, closed_at, transaction_id \
             FROM statements WHERE partner_org_id = $1 AND period = $2",
        )
        .bind(partner_org_id)
        .bind(period.to_string())
        .fetch_optional(self.db.pool())
        .await?;
        let Some(r) = row else { return Ok(None) };
        let csv: String = r.try_get("csv")?;
        let document = canonical::parse(csv.as_bytes())
            .map_err(|e| StatementError::Invalid(format!("stored statement: {e}")))?;
        Ok(Some(Statement {
            partner_org_id: partner_org_id.to_string(),
            period,
            status: StatementStatus::Closed {
                number: r.try_get("number")?,
                sha256: r.try_get("sha256")?,
                previous_sha256: r.try_get("previous_sha256")?,
                closed_by: r.try_get("closed_by")?,
                closed_at: r.try_get("closed_at")?,
                transaction_id: r.try_get("transaction_id")?,
            },
            csv,
            document,
        }))
    }

    /// The partner's statements, newest first: every closed one and the drafts of the open
    /// months up to the current one.
    pub async fn list(
        &self,
        partner_org_id: &str,
        now: i64,
    ) -> Result<Vec<Statement>, StatementError> {
        self.partner_name(partner_org_id).await?;
        let periods: Vec<String> = db::sqlx::query_scalar(
            "SELECT period FROM statements WHERE partner_org_id = $1 ORDER BY period",
        )
        .bind(partner_org_id)
        .fetch_all(self.db.pool())
        .await?;
        let mut out = Vec::new();
        for p in periods {
            if let Some(s) = self.closed(partner_org_id, Period::parse(&p)?).await? {
                out.push(s);
            }
        }
        let current = Period::of_ms(now);
        let mut conn = self.db.pool().acquire().await?;
        let head = read_head(&mut conn, partner_org_id).await?;
        let open = load_open(&mut conn, partner_org_id, current.end_ms()).await?;
        let agreements = agreements::load(&mut conn, partner_org_id).await?;
        let first = first_open(&head, &open, &agreements, now).min(current);
        drop(conn);
        let mut month = first;
        while month <= current && out.len() < 240 {
            out.push(self.statement(partner_org_id, month, now).await?);
            month = month.next();
        }
        out.reverse();
        Ok(out)
    }

    /// What each of the partner's factories produced since `since` (Unix ms): requests,
    /// tokens and device time, for the partner's dashboard. Factories with no usage are left out.
    pub async fn factory_activity(
        &self,
        partner_org_id: &str,
        since: i64,
    ) -> Result<Vec<FactoryActivity>, StatementError> {
        let rows = db::sqlx::query(
            "SELECT factory_id, COUNT(*) AS requests, \
             CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT) AS tokens, \
             CAST(COALESCE(SUM(device_us), 0) AS BIGINT) AS device_us \
             FROM usage_events WHERE partner_org_id = $1 AND created_at > $2 \
             GROUP BY factory_id",
        )
        .bind(partner_org_id)
        .bind(since)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FactoryActivity {
                    factory_id: r.try_get("factory_id")?,
                    requests: r.try_get("requests")?,
                    tokens: r.try_get("tokens")?,
                    device_us: r.try_get("device_us")?,
                })
            })
            .collect::<Result<_, db::sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Every partner organisation, by name: (id, name).
    pub async fn partners(&self) -> Result<Vec<(String, String)>, StatementError> {
        let rows = db::sqlx::query(
            "SELECT id, name FROM organizations WHERE kind = 'partner' ORDER BY name, id",
        )
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("name")?)))
            .collect()
    }

    /// The month an operator may close next for this partner, if one is over.
    pub async fn next_closable(
        &self,
        partner_org_id: &str,
        now: i64,
    ) -> Result<Option<Period>, StatementError> {
        let mut conn = self.db.pool().acquire().await?;
        let head = read_head(&mut conn, partner_org_id).await?;
        let current = Period::of_ms(now);
        let open = load_open(&mut conn, partner_org_id, current.end_ms()).await?;
        let agreements = agreements::load(&mut conn, partner_org_id).await?;
        let next = first_open(&head, &open, &agreements, now);
        Ok((next < current).then_some(next))
    }
}
