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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageSummary {
    pub days: i64,
    pub rows: Vec<UsageRow>,
    /// Every day of the window, oldest first, zero where nothing ran (the chart's bars).
    pub per_day: Vec<UsageDay>,
    pub total_tokens: i64,
    pub total_amount: String,
}

#[server(endpoint = "usage_report")]
pub async fn usage_report(days: i64) -> Result<UsageSummary, AppError> {
    // Taken before the first await: during server rendering, context is only reliable
    // until the future first yields.
    let app = state()?;
    let user = require_user().await.map_err(fail)?;
    if !USAGE_WINDOWS.contains(&days) {
        return Err(fail(AppError::Invalid(
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
            fail(AppError::Internal)
        })?;
    const DAY_MS: i64 = 86_400_000;
    let today = now.div_euclid(DAY_MS);
    let per_day = (today - days + 1..=today)
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
        .collect::<Vec<_>>();
    let total_nanos: i64 = usage.iter().map(|u| u.amount.get()).sum();
    Ok(UsageSummary {
        days,
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
