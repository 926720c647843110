//! What a partner can take away and check: the chain of closed statements, each verified
//! against its stored CSV and its predecessor's hash, and the usage events behind a month.

use std::collections::HashMap;

use db::sqlx::Row;

use super::open::{first_open, load_open, read_head};
use super::{ChainLink, StatementStatus, Statements};
use crate::agreements;
use crate::canonical::{self, sha256_hex};
use crate::{Period, StatementError};

impl Statements {
    /// The partner's closed statements in order, each checked against its stored CSV and its
    /// predecessor's hash.
    pub async fn chain(&self, partner_org_id: &str) -> Result<Vec<ChainLink>, StatementError> {
        self.partner_name(partner_org_id).await?;
        let rows = db::sqlx::query(
            "SELECT period, number, csv, sha256, previous_sha256 FROM statements \
             WHERE partner_org_id = $1 ORDER BY number",
        )
        .bind(partner_org_id)
        .fetch_all(self.db.pool())
        .await?;
        let mut out: Vec<ChainLink> = Vec::with_capacity(rows.len());
        for r in &rows {
            let csv: String = r.try_get("csv")?;
            let sha256: String = r.try_get("sha256")?;
            let previous: Option<String> = r.try_get("previous_sha256")?;
            let expected = out.last().map(|l| l.sha256.clone());
            let intact = sha256_hex(csv.as_bytes()) == sha256
                && canonical::verify(csv.as_bytes(), previous.as_deref()).is_ok();
            out.push(ChainLink {
                period: Period::parse(&r.try_get::<String, _>("period")?)?,
                number: r.try_get("number")?,
                linked: previous == expected,
                sha256,
                previous_sha256: previous,
                intact,
            });
        }
        Ok(out)
    }

    /// The usage events of a statement as CSV, one per line, with everything needed to
    /// recompute its lines: closed months list the events they took, drafts the events they
    /// would take now.
    pub async fn usage_csv(
        &self,
        partner_org_id: &str,
        period: Period,
        now: i64,
    ) -> Result<String, StatementError> {
        let statement = self.statement(partner_org_id, period, now).await?;
        let (filter, bind_period) = match &statement.status {
            StatementStatus::Closed { .. } => (
                "JOIN statement_events s ON s.usage_event_id = e.id \
                 JOIN statements st ON st.id = s.statement_id \
                 WHERE e.partner_org_id = $1 AND st.period = $2",
                true,
            ),
            StatementStatus::Draft => (
                "LEFT JOIN statement_events s ON s.usage_event_id = e.id \
                 WHERE e.partner_org_id = $1 AND s.usage_event_id IS NULL AND e.created_at < $2 \
                 AND e.created_at >= $3",
                false,
            ),
        };
        // A draft takes what is not yet in a closed statement up to its end; only the first
        // open month also takes older (late) usage.
        let mut conn = self.db.pool().acquire().await?;
        let head = read_head(&mut conn, partner_org_id).await?;
        let open_rows = load_open(&mut conn, partner_org_id, period.end_ms()).await?;
        let agreements = agreements::load(&mut conn, partner_org_id).await?;
        let is_first = first_open(&head, &open_rows, &agreements, now) >= period;
        let from = if is_first {
            i64::MIN
        } else {
            period.start_ms()
        };
        let sql = format!(
            "SELECT e.id, e.created_at, e.org_id, e.model, e.factory_id, e.prompt_tokens, \
             e.completion_tokens, e.input_nanos_per_mtok, e.output_nanos_per_mtok, e.amount, \
             e.paid_amount, e.device_us, e.partial FROM usage_events e {filter} \
             ORDER BY e.created_at, e.id"
        );
        let q = db::sqlx::query(&sql).bind(partner_org_id);
        let q = if bind_period {
            q.bind(period.to_string())
        } else {
            q.bind(period.end_ms()).bind(from)
        };
        let rows = q.fetch_all(self.db.pool()).await?;
        let grants = self.support_by_event(partner_org_id).await?;
        let mut w = text::Csv::with({
            let mut b = csv::WriterBuilder::new();
            b.terminator(csv::Terminator::Any(b'\n'));
            b
        });
        let write_err = |e: csv::Error| StatementError::Invalid(e.to_string());
        w.row([
            "usage_event_id",
            "created_at_ms",
            "usage_period",
            "tenant_id",
            "model",
            "factory_id",
            "input_tokens",
            "output_tokens",
            "input_usd_per_mtok",
            "output_usd_per_mtok",
            "gross_usd",
            "cash_usd",
            "credit_support",
            "device_seconds",
            "partial",
        ])
        .map_err(write_err)?;
        for r in &rows {
            let id: String = r.try_get("id")?;
            let created_at: i64 = r.try_get("created_at")?;
            let support = grants.get(&id).map(|g| g.join(";")).unwrap_or_default();
            w.row([
                id,
                created_at.to_string(),
                Period::of_ms(created_at).to_string(),
                r.try_get("org_id")?,
                r.try_get("model")?,
                r.try_get("factory_id")?,
                r.try_get::<i64, _>("prompt_tokens")?.to_string(),
                r.try_get::<i64, _>("completion_tokens")?.to_string(),
                canonical::usd(r.try_get("input_nanos_per_mtok")?),
                canonical::usd(r.try_get("output_nanos_per_mtok")?),
                canonical::usd(r.try_get("amount")?),
                canonical::usd(r.try_get("paid_amount")?),
                support,
                canonical::seconds(r.try_get("device_us")?),
                r.try_get::<i64, _>("partial")?.to_string(),
            ])
            .map_err(write_err)?;
        }
        w.finish().map_err(write_err)
    }

    /// Each usage event's credit support, as `sponsor=amount` cells.
    async fn support_by_event(
        &self,
        partner_org_id: &str,
    ) -> Result<HashMap<String, Vec<String>>, StatementError> {
        let mut grants: HashMap<String, Vec<String>> = HashMap::new();
        let grant_rows = db::sqlx::query(
            "SELECT g.usage_event_id, g.amount, p.sponsor_org_id FROM usage_event_grants g \
             JOIN usage_events e ON e.id = g.usage_event_id \
             JOIN credit_programs p ON p.id = g.program_id \
             WHERE e.partner_org_id = $1 ORDER BY g.usage_event_id, g.grant_id",
        )
        .bind(partner_org_id)
        .fetch_all(self.db.pool())
        .await?;
        for g in &grant_rows {
            let sponsor: Option<String> = g.try_get("sponsor_org_id")?;
            grants
                .entry(g.try_get("usage_event_id")?)
                .or_default()
                .push(format!(
                    "{}={}",
                    sponsor.unwrap_or_else(|| "vendor".into()),
                    canonical::usd(g.try_get("amount")?)
                ));
        }
        Ok(grants)
    }
}
