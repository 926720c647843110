//! Stripe top-ups.
//!
//! A tenant picks an amount; we record a checkout, ask Stripe for a Checkout Session (through
//! the async-stripe client, whose API base is configurable so tests point it at a local
//! stand-in) and send the browser there. The success redirect proves nothing: only a webhook
//! whose signature verifies credits the wallet, in the same database transaction that records
//! the event's id, keyed by the Checkout Session so no payment is ever credited twice.

#[cfg(feature = "test-util")]
pub mod testing;
mod webhook;

use credits::Credits;
use db::{Db, new_id, now_ms, sqlx::Row};
use ledger::Nanos;

pub use webhook::{WebhookError, WebhookOutcome};

/// One US cent in nano-dollars.
pub const NANOS_PER_CENT: i64 = 10_000_000;
pub const MIN_TOP_UP_CENTS: i64 = 500;
pub const MAX_TOP_UP_CENTS: i64 = 1_000_000;
/// The amounts offered as buttons, in dollars.
pub const PRESETS_DOLLARS: [i64; 4] = [25, 100, 500, 1_000];

#[derive(Debug, Clone, Default)]
pub struct StripeConfig {
    pub secret_key: Option<String>,
    pub webhook_secret: Option<String>,
    /// `https://api.stripe.com/` unless set (tests use a local stand-in).
    pub api_base: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PaymentsError {
    #[error("{message}")]
    Field {
        field: &'static str,
        message: String,
    },
    #[error(
        "Top-ups are not configured on this portal. An administrator enables them by setting STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET."
    )]
    NotConfigured,
    #[error("Stripe could not start the payment; nothing was charged. Please try again.")]
    Stripe(String),
    #[error(transparent)]
    Credits(#[from] credits::CreditsError),
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    #[error(transparent)]
    Db(#[from] db::DbError),
}

impl From<db::sqlx::Error> for PaymentsError {
    fn from(e: db::sqlx::Error) -> Self {
        PaymentsError::Db(db::DbError::Sqlx(e))
    }
}

/// An amount a tenant may top up: whole cents between the minimum and the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopUpAmount {
    cents: i64,
}

impl TopUpAmount {
    pub fn parse(text: &str) -> Result<TopUpAmount, PaymentsError> {
        let bad = |m: &str| PaymentsError::Field {
            field: "amount",
            message: m.to_string(),
        };
        let nanos = Nanos::parse_dollars(text).map_err(|e| bad(&e.to_string()))?;
        if nanos.get() % NANOS_PER_CENT != 0 {
            return Err(bad("Use whole cents."));
        }
        let cents = nanos.get() / NANOS_PER_CENT;
        if !(MIN_TOP_UP_CENTS..=MAX_TOP_UP_CENTS).contains(&cents) {
            return Err(bad("Top up between $5.00 and $10,000.00."));
        }
        Ok(TopUpAmount { cents })
    }

    pub fn cents(self) -> i64 {
        self.cents
    }

    pub fn nanos(self) -> Nanos {
        Nanos::new(self.cents * NANOS_PER_CENT)
    }
}

/// Where a top-up stands, as its organisation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    pub id: String,
    pub amount: Nanos,
    /// `open` (at Stripe), `processing` (paid by a delayed method), `paid`, `failed`,
    /// `expired`, or `not_started` (Stripe refused to start it).
    pub status: String,
    pub refunded: Nanos,
    pub created_at: i64,
}

#[derive(Clone)]
pub struct Payments {
    db: Db,
    credits: Credits,
    config: StripeConfig,
    client: Option<stripe::Client>,
}

impl std::fmt::Debug for Payments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payments")
            .field("configured", &self.client.is_some())
            .finish()
    }
}

impl Payments {
    pub fn new(db: Db, credits: Credits, config: StripeConfig) -> Result<Payments, PaymentsError> {
        let client = match &config.secret_key {
            Some(key) => {
                let mut builder = stripe::ClientBuilder::new(key.clone())
                    .timeout(std::time::Duration::from_secs(20));
                if let Some(base) = &config.api_base {
                    builder = builder.url(base.clone());
                }
                Some(
                    builder
                        .build()
                        .map_err(|e| PaymentsError::Stripe(e.to_string()))?,
                )
            }
            None => None,
        };
        Ok(Payments {
            db,
            credits,
            config,
            client,
        })
    }

    /// Whether tenants can top up here (a secret key and a webhook secret are both set: without
    /// the webhook nothing would ever be credited).
    pub fn is_configured(&self) -> bool {
        self.client.is_some() && self.config.webhook_secret.is_some()
    }

    /// Starts a top-up: records it, creates the Stripe Checkout Session, and returns the URL to
    /// send the browser to. `return_base` is the portal's origin.
    pub async fn start_checkout(
        &self,
        org_id: &str,
        user_id: &str,
        user_email: &str,
        amount: TopUpAmount,
        return_base: &str,
    ) -> Result<String, PaymentsError> {
        let Some(client) = self.client.as_ref().filter(|_| self.is_configured()) else {
            return Err(PaymentsError::NotConfigured);
        };
        let id = new_id();
        let now = now_ms();
        db::sqlx::query(
            "INSERT INTO payment_checkouts (id, org_id, user_id, amount_cents, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'starting', $5, $5)",
        )
        .bind(&id)
        .bind(org_id)
        .bind(user_id)
        .bind(amount.cents())
        .bind(now)
        .execute(self.db.pool())
        .await?;
        let session = create_session(client, &id, org_id, user_email, amount, return_base).await;
        match session {
            Ok((session_id, url)) => {
                db::sqlx::query(
                    "UPDATE payment_checkouts SET stripe_session_id = $1, \
                     status = CASE WHEN status = 'starting' THEN 'open' ELSE status END, \
                     updated_at = $2 WHERE id = $3",
                )
                .bind(&session_id)
                .bind(now_ms())
                .bind(&id)
                .execute(self.db.pool())
                .await?;
                tracing::info!(checkout = id, org_id, "Stripe checkout started");
                Ok(url)
            }
            Err(e) => {
                tracing::warn!(checkout = id, error = %e, "Stripe refused the checkout");
                db::sqlx::query(
                    "UPDATE payment_checkouts SET status = 'not_started', updated_at = $1 WHERE id = $2",
                )
                .bind(now_ms())
                .bind(&id)
                .execute(self.db.pool())
                .await?;
                Err(PaymentsError::Stripe(e))
            }
        }
    }

    /// The organisation's latest top-ups, newest first.
    pub async fn checkouts(
        &self,
        org_id: &str,
        limit: i64,
    ) -> Result<Vec<Checkout>, PaymentsError> {
        let rows = db::sqlx::query(&format!(
            "{CHECKOUT_SELECT} WHERE org_id = $1 AND status <> 'starting' \
             ORDER BY created_at DESC, id DESC LIMIT $2"
        ))
        .bind(org_id)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(checkout_from_row).collect()
    }

    /// The top-up behind a Checkout Session, if it belongs to `org_id` (the success page).
    pub async fn checkout_by_session(
        &self,
        org_id: &str,
        session_id: &str,
    ) -> Result<Option<Checkout>, PaymentsError> {
        let row = db::sqlx::query(&format!(
            "{CHECKOUT_SELECT} WHERE stripe_session_id = $1 AND org_id = $2"
        ))
        .bind(session_id)
        .bind(org_id)
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(checkout_from_row).transpose()
    }
}

const CHECKOUT_SELECT: &str =
    "SELECT id, amount_cents, status, refunded_cents, created_at FROM payment_checkouts";

fn checkout_from_row(r: &db::sqlx::any::AnyRow) -> Result<Checkout, PaymentsError> {
    Ok(Checkout {
        id: r.try_get("id")?,
        amount: Nanos::new(r.try_get::<i64, _>("amount_cents")? * NANOS_PER_CENT),
        status: r.try_get("status")?,
        refunded: Nanos::new(r.try_get::<i64, _>("refunded_cents")? * NANOS_PER_CENT),
        created_at: r.try_get("created_at")?,
    })
}

async fn create_session(
    client: &stripe::Client,
    checkout_id: &str,
    org_id: &str,
    user_email: &str,
    amount: TopUpAmount,
    return_base: &str,
) -> Result<(String, String), String> {
    use stripe::StripeRequest;
    use stripe_checkout::checkout_session::{
        CreateCheckoutSession, CreateCheckoutSessionLineItems,
        CreateCheckoutSessionLineItemsPriceData, CreateCheckoutSessionPaymentIntentData,
        ProductData,
    };
    let mut price = CreateCheckoutSessionLineItemsPriceData::new(stripe_types::Currency::USD);
    price.unit_amount = Some(amount.cents());
    price.product_data = Some(ProductData::new("Tokenmill credits"));
    let mut item = CreateCheckoutSessionLineItems::new();
    item.price_data = Some(price);
    item.quantity = Some(1);
    let metadata = std::collections::HashMap::from([
        ("org_id".to_string(), org_id.to_string()),
        ("checkout_id".to_string(), checkout_id.to_string()),
    ]);
    // The payment (and so its charge, which a refund event carries) names our checkout too:
    // a refund can then be matched even when it arrives before the payment's own event.
    let mut intent = CreateCheckoutSessionPaymentIntentData::new();
    intent.metadata = Some(metadata.clone());
    let base = return_base.trim_end_matches('/');
    let request = CreateCheckoutSession::new()
        .mode(stripe_checkout::CheckoutSessionMode::Payment)
        .line_items(vec![item])
        .success_url(format!(
            "{base}/credits/top-up/success?session_id={{CHECKOUT_SESSION_ID}}"
        ))
        .cancel_url(format!("{base}/credits/top-up/cancelled"))
        .client_reference_id(checkout_id)
        .customer_email(user_email)
        .payment_intent_data(intent)
        .metadata(metadata);
    let key = stripe::IdempotencyKey::new(format!("tokenmill-checkout-{checkout_id}"))
        .map_err(|e| e.to_string())?;
    let session = request
        .customize()
        .request_strategy(stripe::RequestStrategy::Idempotent(key))
        .send(client)
        .await
        .map_err(|e| e.to_string())?;
    let url = session
        .url
        .clone()
        .ok_or_else(|| "Stripe returned a session without a URL".to_string())?;
    Ok((session.id.as_str().to_string(), url))
}
