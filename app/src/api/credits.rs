//! Server functions of the Credits page: wallet, holds, history, export and top-ups.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::AppError;
#[cfg(feature = "ssr")]
use crate::{api::date, ssr::*};

/// One wallet bucket, amounts as money.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketView {
    pub label: String,
    pub balance: String,
    pub held: String,
    pub expires: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryView {
    pub date: String,
    pub kind: String,
    pub memo: String,
    pub amount: String,
}

/// The Credits page: what the organisation holds, bucket by bucket, and what moved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreditsView {
    pub available: String,
    pub buckets: Vec<BucketView>,
    pub history: Vec<HistoryView>,
}

#[server(endpoint = "credits")]
pub async fn credits_overview() -> Result<CreditsView, AppError> {
    let user = require_user().await.map_err(fail)?;
    let st = state()?;
    let internal = |e: credits::CreditsError| {
        tracing::error!(error = %e, "credits");
        fail(AppError::Internal)
    };
    let wallet = st
        .credits
        .wallet(&user.org_id, db::now_ms())
        .await
        .map_err(internal)?;
    let history = st
        .credits
        .ledger()
        .wallet_history(&user.org_id, 50)
        .await
        .map_err(|e| internal(e.into()))?;
    Ok(CreditsView {
        available: wallet.available().to_string(),
        buckets: wallet
            .buckets
            .into_iter()
            .map(|b| BucketView {
                label: b.label,
                balance: b.balance.to_string(),
                held: b.held.to_string(),
                expires: b.expires_at.map(date),
            })
            .collect(),
        history: history
            .into_iter()
            .map(|h| HistoryView {
                date: date(h.created_at),
                kind: match h.kind.as_str() {
                    "grant" => "Credit grant",
                    "top_up" => "Top-up",
                    "usage" => "Usage",
                    "expiry" => "Expired credit",
                    _ => "Adjustment",
                }
                .to_string(),
                memo: h.memo,
                amount: h.amount.to_string(),
            })
            .collect(),
    })
}
