//! Reading usage events back, always within one organisation (a foreign job is not found).

use db::sqlx::Row;
use ledger::Nanos;

use crate::{JobError, Jobs};

const DAY_MS: i64 = 86_400_000;

/// One organisation's use of one model on one UTC day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyUsage {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub model: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub amount: Nanos,
}

/// `YYYY-MM-DD` of a UTC day number (days since 1970-01-01).
fn day_label(day: i64) -> String {
    let date = time::Date::from_julian_day(i32::try_from(day + 2_440_588).unwrap_or(2_440_588))
        .unwrap_or(time::Date::MIN);
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

#[derive(Debug, Clone, PartialEq)]
pub struct UsageEvent {
    pub job_id: String,
    pub kind: String,
    pub model: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub amount: Nanos,
    pub paid_amount: Nanos,
    pub partial: bool,
    pub finish_reason: String,
    pub queue_ms: i64,
    pub ttft_ms: Option<i64>,
    pub duration_ms: i64,
    pub device_us: i64,
    pub created_at: i64,
}

const COLUMNS: &str = "job_id, kind, model, prompt_tokens, completion_tokens, amount, paid_amount, \
     partial, finish_reason, queue_ms, ttft_ms, duration_ms, device_us, created_at";

fn from_row(r: &db::sqlx::any::AnyRow) -> Result<UsageEvent, db::sqlx::Error> {
    Ok(UsageEvent {
        job_id: r.try_get("job_id")?,
        kind: r.try_get("kind")?,
        model: r.try_get("model")?,
        prompt_tokens: r.try_get("prompt_tokens")?,
        completion_tokens: r.try_get("completion_tokens")?,
        amount: Nanos::new(r.try_get("amount")?),
        paid_amount: Nanos::new(r.try_get("paid_amount")?),
        partial: r.try_get::<i64, _>("partial")? == 1,
        finish_reason: r.try_get("finish_reason")?,
        queue_ms: r.try_get("queue_ms")?,
        ttft_ms: r.try_get("ttft_ms")?,
        duration_ms: r.try_get("duration_ms")?,
        device_us: r.try_get("device_us")?,
        created_at: r.try_get("created_at")?,
    })
}

impl Jobs {
    /// The usage event of one of the organisation's jobs, once it is settled.
    pub async fn usage_of_job(
        &self,
        org_id: &str,
        job_id: &str,
    ) -> Result<Option<UsageEvent>, JobError> {
        let row = db::sqlx::query(&format!(
            "SELECT {COLUMNS} FROM usage_events WHERE org_id = $1 AND job_id = $2"
        ))
        .bind(org_id)
        .bind(job_id)
        .fetch_optional(self.inner.db.pool())
        .await
        .map_err(JobError::storage)?;
        row.as_ref()
            .map(from_row)
            .transpose()
            .map_err(JobError::storage)
    }

    /// The status of one of the organisation's jobs (`running`, `succeeded`, `cancelled`,
    /// `failed`), or `None` when it has no such job.
    pub async fn job_status(&self, org_id: &str, job_id: &str) -> Result<Option<String>, JobError> {
        db::sqlx::query_scalar("SELECT status FROM jobs WHERE org_id = $1 AND id = $2")
            .bind(org_id)
            .bind(job_id)
            .fetch_optional(self.inner.db.pool())
            .await
            .map_err(JobError::storage)
    }

    /// Usage per UTC day and model over the `days` days up to and including today, oldest
    /// first. Days without usage are absent.
    pub async fn daily_usage(
        &self,
        org_id: &str,
        days: i64,
        now: i64,
    ) -> Result<Vec<DailyUsage>, JobError> {
        let today = now.div_euclid(DAY_MS);
        let since = (today - days.max(1) + 1) * DAY_MS;
        // Integer division of a non-negative BIGINT is the day number on both databases; sums
        // are cast back to BIGINT (PostgreSQL widens SUM(BIGINT) to NUMERIC).
        let rows = db::sqlx::query(
            "SELECT created_at / 86400000 AS day, model, COUNT(*) AS requests, \
             CAST(SUM(prompt_tokens) AS BIGINT) AS prompt_tokens, \
             CAST(SUM(completion_tokens) AS BIGINT) AS completion_tokens, \
             CAST(SUM(amount) AS BIGINT) AS amount FROM usage_events WHERE org_id = $1 AND created_at >= $2 \
             GROUP BY created_at / 86400000, model ORDER BY day, model",
        )
        .bind(org_id)
        .bind(since)
        .fetch_all(self.inner.db.pool())
        .await
        .map_err(JobError::storage)?;
        rows.iter()
            .map(|r| {
                Ok(DailyUsage {
                    day: day_label(r.try_get::<i64, _>("day")?),
                    model: r.try_get("model")?,
                    requests: r.try_get("requests")?,
                    prompt_tokens: r.try_get("prompt_tokens")?,
                    completion_tokens: r.try_get("completion_tokens")?,
                    amount: Nanos::new(r.try_get("amount")?),
                })
            })
            .collect::<Result<_, db::sqlx::Error>>()
            .map_err(JobError::storage)
    }

    /// [`Jobs::daily_usage`] as CSV: `date_utc,model,requests,prompt_tokens,completion_tokens,
    /// amount_usd` (exact decimal dollars, `.` separator), one line per day and model.
    pub async fn daily_usage_csv(
        &self,
        org_id: &str,
        days: i64,
        now: i64,
    ) -> Result<String, JobError> {
        let mut out = text::Csv::new();
        out.row([
            "date_utc",
            "model",
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "amount_usd",
        ])
        .map_err(JobError::storage)?;
        for d in self.daily_usage(org_id, days, now).await? {
            out.row([
                d.day,
                d.model,
                d.requests.to_string(),
                d.prompt_tokens.to_string(),
                d.completion_tokens.to_string(),
                d.amount.decimal(),
            ])
            .map_err(JobError::storage)?;
        }
        out.finish().map_err(JobError::storage)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn day_labels_are_utc_dates() {
        assert_eq!(super::day_label(0), "1970-01-01");
        // 2026-11-27 is day 20_784.
        assert_eq!(super::day_label(20_784), "2026-11-27");
    }
}
