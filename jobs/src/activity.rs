//! An organisation's usage broken down (by API key, by source) and request by request, newest
//! first, one page at a time: what the Usage page's tables and activity log show.

use db::sqlx::Row;
use ledger::Nanos;

use crate::{JobError, Jobs};

/// What one API key (or one source) used over a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageShare {
    /// The key's name and display form ("ci · tmk_AbCd…wxYz"), or the source
    /// (`production`, `playground`, `batch`); requests made without a key are "no key".
    pub label: String,
    pub requests: i64,
    pub tokens: i64,
    pub amount: Nanos,
}

/// One settled request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    pub id: String,
    pub at: i64,
    pub model: String,
    /// `production` (the API), `playground` or `batch`.
    pub source: String,
    /// The API key's name and display form, if a key made the request.
    pub key: Option<String>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub amount: Nanos,
    pub ttft_ms: Option<i64>,
    pub duration_ms: i64,
    pub partial: bool,
}

/// Where a page of the activity log ends: the next page starts after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub at: i64,
    pub id: String,
}

impl Cursor {
    /// `at.id`, as a page link carries it.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.at, self.id)
    }

    pub fn decode(text: &str) -> Option<Cursor> {
        let (at, id) = text.split_once('.')?;
        let id_ok =
            !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric());
        let at = at.parse().ok()?;
        id_ok.then(|| Cursor {
            at,
            id: id.to_string(),
        })
    }
}

fn key_label(name: Option<String>, display: Option<String>) -> Option<String> {
    match (name, display) {
        (Some(n), Some(d)) => Some(format!("{n} · {d}")),
        _ => None,
    }
}

impl Jobs {
    /// The organisation's usage since `since` by API key, most spent first.
    pub async fn usage_by_key(
        &self,
        org_id: &str,
        since: i64,
    ) -> Result<Vec<UsageShare>, JobError> {
        let rows = db::sqlx::query(
            "SELECT k.name, k.display, COUNT(*) AS requests, \
             CAST(SUM(e.prompt_tokens + e.completion_tokens) AS BIGINT) AS tokens, \
             CAST(SUM(e.amount) AS BIGINT) AS amount \
             FROM usage_events e LEFT JOIN api_keys k ON k.id = e.api_key_id \
             WHERE e.org_id = $1 AND e.created_at >= $2 \
             GROUP BY e.api_key_id, k.name, k.display ORDER BY amount DESC, k.name",
        )
        .bind(org_id)
        .bind(since)
        .fetch_all(self.inner.db.pool())
        .await
        .map_err(JobError::storage)?;
        rows.iter()
            .map(|r| {
                Ok(UsageShare {
                    label: key_label(r.try_get("name")?, r.try_get("display")?)
                        .unwrap_or_else(|| "no key (playground or batch page)".into()),
                    requests: r.try_get("requests")?,
                    tokens: r.try_get("tokens")?,
                    amount: Nanos::new(r.try_get("amount")?),
                })
            })
            .collect::<Result<_, db::sqlx::Error>>()
            .map_err(JobError::storage)
    }

    /// The organisation's usage since `since` by source: the API, the playground, batches.
    pub async fn usage_by_source(
        &self,
        org_id: &str,
        since: i64,
    ) -> Result<Vec<UsageShare>, JobError> {
        let rows = db::sqlx::query(
            "SELECT kind, COUNT(*) AS requests, \
             CAST(SUM(prompt_tokens + completion_tokens) AS BIGINT) AS tokens, \
             CAST(SUM(amount) AS BIGINT) AS amount \
             FROM usage_events WHERE org_id = $1 AND created_at >= $2 \
             GROUP BY kind ORDER BY amount DESC, kind",
        )
        .bind(org_id)
        .bind(since)
        .fetch_all(self.inner.db.pool())
        .await
        .map_err(JobError::storage)?;
        rows.iter()
            .map(|r| {
                Ok(UsageShare {
                    label: r.try_get("kind")?,
                    requests: r.try_get("requests")?,
                    tokens: r.try_get("tokens")?,
                    amount: Nanos::new(r.try_get("amount")?),
                })
            })
            .collect::<Result<_, db::sqlx::Error>>()
            .map_err(JobError::storage)
    }

    /// Up to `limit` of the organisation's settled requests, newest first, after `after` (the
    /// end of the previous page), and where the next page starts when there is one.
    pub async fn activity(
        &self,
        org_id: &str,
        after: Option<&Cursor>,
        limit: i64,
    ) -> Result<(Vec<Activity>, Option<Cursor>), JobError> {
        let (at, id) = after.map_or((i64::MAX, String::new()), |c| (c.at, c.id.clone()));
        let rows = db::sqlx::query(
            "SELECT e.id, e.created_at, e.model, e.kind, e.prompt_tokens, e.completion_tokens, \
             e.amount, e.ttft_ms, e.duration_ms, e.partial, k.name, k.display \
             FROM usage_events e LEFT JOIN api_keys k ON k.id = e.api_key_id \
             WHERE e.org_id = $1 AND (e.created_at < $2 OR (e.created_at = $2 AND e.id < $3)) \
             ORDER BY e.created_at DESC, e.id DESC LIMIT $4",
        )
        .bind(org_id)
        .bind(at)
        .bind(if after.is_some() { id } else { "~".to_string() })
        .bind(limit + 1)
        .fetch_all(self.inner.db.pool())
        .await
        .map_err(JobError::storage)?;
        let mut page = rows
            .iter()
            .map(|r| {
                Ok(Activity {
                    id: r.try_get("id")?,
                    at: r.try_get("created_at")?,
                    model: r.try_get("model")?,
                    source: r.try_get("kind")?,
                    key: key_label(r.try_get("name")?, r.try_get("display")?),
                    prompt_tokens: r.try_get("prompt_tokens")?,
                    completion_tokens: r.try_get("completion_tokens")?,
                    amount: Nanos::new(r.try_get("amount")?),
                    ttft_ms: r.try_get("ttft_ms")?,
                    duration_ms: r.try_get("duration_ms")?,
                    partial: r.try_get::<i64, _>("partial")? == 1,
                })
            })
            .collect::<Result<Vec<_>, db::sqlx::Error>>()
            .map_err(JobError::storage)?;
        let more = page.len() as i64 > limit;
        page.truncate(limit.max(0) as usize);
        let next = more.then(|| page.last()).flatten().map(|a| Cursor {
            at: a.at,
            id: a.id.clone(),
        });
        Ok((page, next))
    }
}
