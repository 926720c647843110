//! Server function of the Usage page: tokens and spend per UTC day and model over a window,
//! with each day's total for the chart. The CSV of the same rows is `/usage.csv?days=N`.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::AppError;
#[cfg(feature = "ssr")]
use crate::ssr::*;

/// The windows the page offers, in days.
pub const USAGE_WINDOWS: [i64; 3] = [7, 30, 90];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    pub day: String,
    pub model: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// Exact, in dollars ("$0.0004").
    pub amount: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageDay {
    pub day: String,
    pub tokens: i64,
    pub amount_nanos: i64,
    pub amount: String,
}

/// What one API key, or one source, used in the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShareRow {
    pub label: String,
    pub requests: i64,
    pub tokens: i64,
    pub amount: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageSummary {
    pub days: i64,
    pub rows: Vec<UsageRow>,
    pub by_key: Vec<ShareRow>,
    /// The API (`production`), the playground, batches.
    pub by_source: Vec<ShareRow>,
    /// Every day of the window, oldest first, zero where nothing ran (the chart's bars).
    pub per_day: Vec<UsageDay>,
    pub total_tokens: i64,
    pub total_amount: String,
}

#[server(endpoint = "usage_report")]
pub async fn usage_report(days: i64) -> Result<UsageSummary, AppError> {
    let (app, user) = signed_in().await?;
    if !USAGE_WINDOWS.contains(&days) {
        return Err(with_status(AppError::Invalid(
            "Choose a window of 7, 30 or 90 days.".into(),
        )));
    }
    let now = db::now_ms();
    let usage = app
        .jobs
        .daily_usage(&user.org_id, days, now)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "usage report");
            with_status(AppError::Internal)
        })?;
    let per_day = per_day(&usage, days, now);
    let total_nanos: i64 = usage.iter().map(|u| u.amount.get()).sum();
    let since = (now.div_euclid(86_400_000) - days + 1) * 86_400_000;
    let shares = |list: Vec<jobs::UsageShare>| {
        list.into_iter()
            .map(|s| ShareRow {
                label: s.label,
                requests: s.requests,
                tokens: s.tokens,
                amount: s.amount.to_string(),
            })
            .collect()
    };
    let storage = |e: jobs::JobError| {
        tracing::error!(error = %e, "usage report");
        with_status(AppError::Internal)
    };
    let by_key = shares(
        app.jobs
            .usage_by_key(&user.org_id, since)
            .await
            .map_err(storage)?,
    );
    let by_source = shares(
        app.jobs
            .usage_by_source(&user.org_id, since)
            .await
            .map_err(storage)?,
    );
    Ok(UsageSummary {
        days,
        by_key,
        by_source,
        total_tokens: usage
            .iter()
            .map(|u| u.prompt_tokens + u.completion_tokens)
            .sum(),
        total_amount: ledger::Nanos::new(total_nanos).to_string(),
        per_day,
        rows: usage
            .into_iter()
            .map(|u| UsageRow {
                day: u.day,
                model: u.model,
                requests: u.requests,
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                amount: u.amount.to_string(),
            })
            .collect(),
    })
}

/// Every day of the window up to today, oldest first, zero where nothing ran.
#[cfg(feature = "ssr")]
fn per_day(usage: &[jobs::DailyUsage], days: i64, now: i64) -> Vec<UsageDay> {
    const DAY_MS: i64 = 86_400_000;
    let today = now.div_euclid(DAY_MS);
    (today - days + 1..=today)
        .map(|d| {
            let day = crate::api::date(d * DAY_MS);
            let (tokens, nanos) =
                usage
                    .iter()
                    .filter(|u| u.day == day)
                    .fold((0, 0), |(t, a), u| {
                        (
                            t + u.prompt_tokens + u.completion_tokens,
                            a + u.amount.get(),
                        )
                    });
            UsageDay {
                amount: ledger::Nanos::new(nanos).to_string(),
                day,
                tokens,
                amount_nanos: nanos,
            }
        })
        .collect()
}

/// How long credits last at the recent burn rate.
pub const BURN_WINDOW_DAYS: i64 = 7;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocationUse {
    pub what: String,
    pub factory: String,
    pub period: String,
    pub share_weight: i64,
    pub tokens_per_minute: i64,
    /// Tokens of this model used today (UTC).
    pub tokens_today: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantSummary {
    pub available: String,
    /// Average spend per day over the last [`BURN_WINDOW_DAYS`] days.
    pub burn_per_day: String,
    pub burn_per_day_nanos: i64,
    /// When the credits run out at that rate (`None`: nothing is being spent).
    pub runs_out: Option<String>,
    pub days_left: Option<i64>,
    /// Tokens per day over the last 14 days (the chart).
    pub per_day: Vec<UsageDay>,
    pub allocations: Vec<AllocationUse>,
}

/// The tenant dashboard: balance, burn rate and when the credits run out, tokens per day, and
/// the active allocations with today's use.
#[server(endpoint = "tenant_overview")]
pub async fn tenant_overview() -> Result<TenantSummary, AppError> {
    let app = state()?;
    let user = require_user().await.map_err(with_status)?;
    tenant_summary(&app, &user).await
}

/// [`tenant_overview`] of `user`'s organisation (also part of the dashboard's one read).
#[cfg(feature = "ssr")]
pub(crate) async fn tenant_summary(
    app: &AppState,
    user: &accounts::User,
) -> Result<TenantSummary, AppError> {
    let now = db::now_ms();
    let internal = |e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, "tenant overview");
        with_status(AppError::Internal)
    };
    let available = app
        .credits
        .wallet(&user.org_id, now)
        .await
        .map_err(with_status)?
        .available()
        .get();
    let usage = app
        .jobs
        .daily_usage(&user.org_id, 14, now)
        .await
        .map_err(|e| internal(&e))?;
    let days = per_day(&usage, 14, now);
    let burned: i64 = days
        .iter()
        .rev()
        .take(BURN_WINDOW_DAYS as usize)
        .map(|d| d.amount_nanos)
        .sum();
    let burn = burned / BURN_WINDOW_DAYS;
    let days_left = (burn > 0).then(|| available.max(0) / burn);
    let today = crate::api::date(now);
    let allocations = app
        .compute
        .my_requests(user)
        .await
        .map_err(with_status)?
        .into_iter()
        .filter(|r| r.status == compute::Status::Active)
        .filter_map(|r| {
            let a = r.allocation.clone()?;
            let (what, model) = match &r.capacity {
                compute::Capacity::Tokens { model, .. } => (model.clone(), Some(model.clone())),
                compute::Capacity::Gpus { count } => (format!("{count} GPUs"), None),
            };
            let tokens_today = model.map_or(0, |m| {
                usage
                    .iter()
                    .filter(|u| u.day == today && u.model == m)
                    .map(|u| u.prompt_tokens + u.completion_tokens)
                    .sum()
            });
            Some(AllocationUse {
                what,
                factory: r.factory_name.clone(),
                period: format!("{} to {}", a.starts_at, a.ends_at),
                share_weight: a.share_weight,
                tokens_per_minute: a.rate_limit_tpm,
                tokens_today,
            })
        })
        .collect();
    Ok(TenantSummary {
        available: ledger::Nanos::new(available).to_string(),
        burn_per_day: ledger::Nanos::new(burn).to_string(),
        burn_per_day_nanos: burn,
        runs_out: days_left.map(|d| crate::api::date(now + d.min(36_500) * 86_400_000)),
        days_left,
        per_day: days,
        allocations,
    })
}

/// One request in the activity log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityRow {
    pub at: String,
    pub model: String,
    pub source: String,
    pub key: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost: String,
    /// Time to first token and the whole request, as the server measured them.
    pub latency: String,
    pub partial: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityPage {
    pub rows: Vec<ActivityRow>,
    /// Where the next (older) page starts, if there is one.
    pub next: Option<String>,
}

/// Requests shown on one page of the activity log.
pub const ACTIVITY_PAGE: i64 = 50;

/// The organisation's requests, newest first, a page at a time (`after`: where the previous
/// page ended, empty for the newest).
#[server(endpoint = "usage_activity")]
pub async fn usage_activity(#[server(default)] after: String) -> Result<ActivityPage, AppError> {
    let app = state()?;
    let user = require_user().await.map_err(with_status)?;
    let after = match after.trim() {
        "" => None,
        text => Some(jobs::Cursor::decode(text).ok_or_else(|| {
            with_status(AppError::Invalid(
                "That page of the activity log does not exist.".into(),
            ))
        })?),
    };
    let (rows, next) = app
        .jobs
        .activity(&user.org_id, after.as_ref(), ACTIVITY_PAGE)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "activity log");
            with_status(AppError::Internal)
        })?;
    Ok(ActivityPage {
        rows: rows
            .into_iter()
            .map(|a| ActivityRow {
                at: crate::api::timestamp(a.at),
                model: a.model,
                source: a.source,
                key: a.key.unwrap_or_else(|| "—".into()),
                prompt_tokens: a.prompt_tokens,
                completion_tokens: a.completion_tokens,
                cost: a.amount.to_string(),
                latency: match a.ttft_ms {
                    Some(t) => format!("{t} ms / {} ms", a.duration_ms),
                    None => format!("— / {} ms", a.duration_ms),
                },
                partial: a.partial,
            })
            .collect(),
        next: next.map(|c| c.encode()),
    })
}
