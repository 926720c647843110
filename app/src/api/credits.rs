//! Server functions of the Credits page: wallet, holds, history, top-ups. The CSV export is a
//! plain download route on the server (`/credits/history.csv`).

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
    /// Expires within the next 14 days.
    pub expiring_soon: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldView {
    pub created: String,
    pub expires: String,
    pub amount: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryView {
    pub date: String,
    pub kind: String,
    pub memo: String,
    pub amount: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckoutView {
    pub date: String,
    pub amount: String,
    pub status: String,
    pub refunded: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopUpView {
    pub configured: bool,
    pub presets: Vec<String>,
    pub recent: Vec<CheckoutView>,
}

/// The Credits page: what the organisation holds, bucket by bucket, what is reserved, and one
/// page of what moved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreditsView {
    pub available: String,
    pub owed: Option<String>,
    pub buckets: Vec<BucketView>,
    pub holds: Vec<HoldView>,
    pub history: Vec<HistoryView>,
    /// The filter applied (`""` for all).
    pub kind: String,
    pub page: i64,
    pub pages: i64,
    pub history_count: i64,
    /// Net of every movement matching the filter (all pages).
    pub history_total: String,
    pub top_up: TopUpView,
}

/// History filters as (code, label); the codes are ledger transaction kinds.
pub const HISTORY_KINDS: [(&str, &str); 6] = [
    ("", "All movements"),
    ("top_up", "Top-ups"),
    ("grant", "Credit grants"),
    ("usage", "Usage"),
    ("expiry", "Expired credit"),
    ("refund", "Refunds"),
];

pub const HISTORY_PAGE_SIZE: i64 = 25;

pub fn kind_label(kind: &str) -> &'static str {
    HISTORY_KINDS
        .iter()
        .find(|(code, _)| !code.is_empty() && *code == kind)
        .map_or("Adjustment", |(_, label)| label)
}

#[cfg(feature = "ssr")]
fn checkout_status(status: &str) -> &'static str {
    match status {
        "open" => "Waiting for payment",
        "processing" => "Payment processing",
        "paid" => "Credited",
        "failed" => "Payment failed",
        "expired" => "Abandoned",
        "not_started" => "Could not start",
        _ => "Unknown",
    }
}

#[cfg(feature = "ssr")]
fn checkout_view(c: payments::Checkout) -> CheckoutView {
    CheckoutView {
        date: date(c.created_at),
        amount: c.amount.to_string(),
        status: checkout_status(&c.status).to_string(),
        refunded: (c.refunded.get() > 0).then(|| c.refunded.to_string()),
    }
}

#[server(endpoint = "credits")]
pub async fn credits_overview(
    #[server(default)] kind: String,
    #[server(default)] page: i64,
) -> Result<CreditsView, AppError> {
    let (app, user) = signed_in().await?;
    let st = app.clone();
    let kind = HISTORY_KINDS
        .iter()
        .find(|(code, _)| *code == kind.trim())
        .map_or("", |(code, _)| code);
    let filter = (!kind.is_empty()).then_some(kind);
    let now = db::now_ms();
    let wallet = st
        .credits
        .wallet(&user.org_id, now)
        .await
        .map_err(with_status)?;
    let ledger = st.credits.ledger();
    let internal =
        |e: ledger::LedgerError| with_status(AppError::from(credits::CreditsError::from(e)));
    let (count, total) = ledger
        .wallet_history_total(&user.org_id, filter)
        .await
        .map_err(internal)?;
    let pages = ((count + HISTORY_PAGE_SIZE - 1) / HISTORY_PAGE_SIZE).max(1);
    let page = page.clamp(1, pages);
    let history = ledger
        .wallet_history_page(
            &user.org_id,
            filter,
            (page - 1) * HISTORY_PAGE_SIZE,
            HISTORY_PAGE_SIZE,
        )
        .await
        .map_err(internal)?;
    let holds = ledger.open_holds(&user.org_id).await.map_err(internal)?;
    let owed = st.credits.owed(&user.org_id).await.map_err(with_status)?;
    let recent = st
        .payments
        .checkouts(&user.org_id, 10)
        .await
        .map_err(with_status)?;
    const SOON_MS: i64 = 14 * 86_400_000;
    Ok(CreditsView {
        available: wallet.available().to_string(),
        owed: (owed.get() > 0).then(|| owed.to_string()),
        buckets: wallet
            .buckets
            .into_iter()
            .map(|b| BucketView {
                label: b.label,
                balance: b.balance.to_string(),
                held: b.held.to_string(),
                expiring_soon: b.expires_at.is_some_and(|e| e - now < SOON_MS),
                expires: b.expires_at.map(date),
            })
            .collect(),
        holds: holds
            .into_iter()
            .map(|(_, amount, created, expires)| HoldView {
                created: date(created),
                expires: date(expires),
                amount: amount.to_string(),
            })
            .collect(),
        history: history
            .into_iter()
            .map(|h| HistoryView {
                date: date(h.created_at),
                kind: kind_label(&h.kind).to_string(),
                memo: h.memo,
                amount: h.amount.to_string(),
            })
            .collect(),
        kind: kind.to_string(),
        page,
        pages,
        history_count: count,
        history_total: total.to_string(),
        top_up: TopUpView {
            configured: st.payments.is_configured(),
            presets: payments::PRESETS_DOLLARS
                .iter()
                .map(|d| d.to_string())
                .collect(),
            recent: recent.into_iter().map(checkout_view).collect(),
        },
    })
}

/// Starts a Stripe Checkout for `amount` dollars and sends the browser there.
#[server(endpoint = "top_up")]
pub async fn start_top_up(amount: String) -> Result<String, AppError> {
    let app = state()?;
    let user = require_verified_user().await.map_err(with_status)?;
    if user.is_operator {
        return Err(with_status(AppError::Forbidden));
    }
    let amount = payments::TopUpAmount::parse(&amount).map_err(with_status)?;
    let url = app
        .payments
        .start_checkout(&user.org_id, &user.id, &user.email, amount, &origin())
        .await
        .map_err(with_status)?;
    leptos_axum::redirect(&url);
    Ok(url)
}

/// Where a top-up stands, for the page Stripe returns to.
#[server(endpoint = "top_up_status")]
pub async fn top_up_status(session_id: String) -> Result<Option<CheckoutView>, AppError> {
    let (app, user) = signed_in().await?;
    Ok(app
        .payments
        .checkout_by_session(&user.org_id, &session_id)
        .await
        .map_err(with_status)?
        .map(checkout_view))
}
