//! `POST /webhooks/stripe`: verify, record, apply, answer.
//!
//! The signature is checked by async-stripe over the raw body (HMAC-SHA256, 300 s tolerance).
//! The event is then read with serde_json for the few fields used here, so a field Stripe adds
//! or reshapes in a later API version cannot make a paid event unreadable.
//!
//! Each event is applied in one transaction that also inserts its id into `stripe_events`: a
//! replay finds the id and changes nothing; concurrent replays race on that primary key and
//! one wins. Credits are keyed by the Checkout Session, so `completed` and
//! `async_payment_succeeded` for one payment credit it once between them.

use db::{now_ms, sqlx::Row};
use ledger::{Leg, Nanos, Posting};
use serde::Deserialize;
use serde_json::Value;

use crate::{NANOS_PER_CENT, Payments};

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("Stripe webhooks are not configured on this portal.")]
    NotConfigured,
    #[error("The Stripe-Signature header is missing or does not match the payload.")]
    BadSignature,
    #[error("The Stripe-Signature timestamp is more than 300 seconds from now.")]
    Stale,
    #[error("The event could not be read: {0}")]
    Malformed(String),
    /// The event refers to a payment not seen yet (events can arrive out of order): Stripe
    /// retries on a non-2xx answer, by which time the payment will be known.
    #[error("This event refers to a payment not recorded yet; retry later.")]
    NotYet,
    #[error("internal error")]
    Internal(String),
}

impl From<db::sqlx::Error> for WebhookError {
    fn from(e: db::sqlx::Error) -> Self {
        WebhookError::Internal(e.to_string())
    }
}

impl From<ledger::LedgerError> for WebhookError {
    fn from(e: ledger::LedgerError) -> Self {
        WebhookError::Internal(e.to_string())
    }
}

impl From<credits::CreditsError> for WebhookError {
    fn from(e: credits::CreditsError) -> Self {
        WebhookError::Internal(e.to_string())
    }
}

impl From<db::DbError> for WebhookError {
    fn from(e: db::DbError) -> Self {
        WebhookError::Internal(e.to_string())
    }
}

/// What a verified event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Seen before: nothing done again.
    Duplicate,
    Credited {
        org_id: String,
        amount: Nanos,
    },
    Refunded {
        org_id: String,
        amount: Nanos,
        owed: Nanos,
    },
    /// Recorded; nothing to move (an unknown type, a payment not ours, an unpaid session, …).
    Recorded(String),
}

#[derive(Deserialize)]
struct Envelope {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: Data,
}

#[derive(Deserialize)]
struct Data {
    object: Value,
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

/// Our checkout id, carried in the metadata of the payment (and so of its charges).
fn metadata_checkout(v: &Value) -> Option<String> {
    v.get("metadata")
        .and_then(|m| m.get("checkout_id"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// `payment_intent` is an id, or an expanded object with one.
fn intent_of(v: &Value) -> Option<String> {
    match v.get("payment_intent") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => o.get("id").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

type Tx = db::WriteTx;

/// The ledger accounts of the organisation an event concerns.
struct Books {
    org_id: String,
    paid: String,
    owed: String,
    clearing: String,
}

impl Payments {
    /// Verifies and applies one webhook delivery.
    pub async fn handle_webhook(
        &self,
        payload: &str,
        signature: &str,
    ) -> Result<WebhookOutcome, WebhookError> {
        let secret = self
            .config
            .webhook_secret
            .as_deref()
            .ok_or(WebhookError::NotConfigured)?;
        use stripe_webhook::{Webhook, WebhookError as E};
        match Webhook::construct_event(payload, signature, secret) {
            // The crate checks the signature and the timestamp before it parses, so a body it
            // cannot parse into its own types has still been verified.
            Ok(_) | Err(E::BadParse(_)) => {}
            Err(E::BadTimestamp(_)) => return Err(WebhookError::Stale),
            Err(_) => return Err(WebhookError::BadSignature),
        }
        let event: Envelope =
            serde_json::from_str(payload).map_err(|e| WebhookError::Malformed(e.to_string()))?;
        // Ledger accounts are opened before the transaction: on SQLite, opening one inside it
        // would wait on the write lock this transaction holds.
        let books = self.books_for(&event.data.object).await?;
        let mut tx = self.db.begin_write().await?;
        // Rolled back explicitly on every path that does not commit, so the connection goes
        // back to the pool with no write lock held.
        let outcome = match self.apply(&mut tx, &event, books.as_ref()).await {
            Ok(Some(outcome)) => outcome,
            Ok(None) => {
                let _ = tx.rollback().await;
                return Ok(WebhookOutcome::Duplicate);
            }
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        let label = match &outcome {
            WebhookOutcome::Credited { .. } => "credited".to_string(),
            WebhookOutcome::Refunded { .. } => "refunded".to_string(),
            WebhookOutcome::Recorded(what) => what.clone(),
            WebhookOutcome::Duplicate => "duplicate".to_string(),
        };
        db::sqlx::query("UPDATE stripe_events SET outcome = $1 WHERE id = $2")
            .bind(&label)
            .bind(&event.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(
            event = event.id,
            kind = event.kind,
            outcome = label,
            "Stripe event"
        );
        Ok(outcome)
    }

    /// Records the event and applies it inside `tx`; `None` when it was recorded before.
    async fn apply(
        &self,
        tx: &mut Tx,
        event: &Envelope,
        books: Option<&Books>,
    ) -> Result<Option<WebhookOutcome>, WebhookError> {
        let recorded = db::sqlx::query(
            "INSERT INTO stripe_events (id, type, outcome, received_at) VALUES ($1, $2, 'applying', $3)",
        )
        .bind(&event.id)
        .bind(&event.kind)
        .bind(now_ms())
        .execute(&mut **tx)
        .await;
        match recorded {
            Ok(_) => {}
            Err(e) if db::is_unique_violation(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let obj = &event.data.object;
        let outcome = match event.kind.as_str() {
            "checkout.session.completed" => {
                if text(obj, "payment_status").as_deref() == Some("paid") {
                    self.credit(tx, obj, books).await?
                } else {
                    self.mark(tx, obj, "processing").await?
                }
            }
            "checkout.session.async_payment_succeeded" => self.credit(tx, obj, books).await?,
            "checkout.session.async_payment_failed" => self.mark(tx, obj, "failed").await?,
            "checkout.session.expired" => self.mark(tx, obj, "expired").await?,
            "charge.refunded" => self.refund(tx, obj, books).await?,
            other => WebhookOutcome::Recorded(format!("ignored {other}")),
        };
        Ok(Some(outcome))
    }

    /// The ledger accounts an event may touch, found from the organisation it concerns (by our
    /// checkout id on a session, by the payment intent on a charge).
    async fn books_for(&self, obj: &Value) -> Result<Option<Books>, WebhookError> {
        let ours = text(obj, "client_reference_id").or_else(|| metadata_checkout(obj));
        let row = if let Some(ours) = ours {
            db::sqlx::query("SELECT org_id FROM payment_checkouts WHERE id = $1")
                .bind(ours)
                .fetch_optional(self.db.pool())
                .await?
        } else if let Some(intent) = intent_of(obj) {
            db::sqlx::query("SELECT org_id FROM payment_checkouts WHERE payment_intent = $1")
                .bind(intent)
                .fetch_optional(self.db.pool())
                .await?
        } else {
            None
        };
        let Some(row) = row else { return Ok(None) };
        let org_id: String = row.try_get("org_id")?;
        Ok(Some(Books {
            paid: self.credits.paid_account(&org_id).await?,
            owed: self.credits.receivable_account(&org_id).await?,
            clearing: self.credits.clearing_account().await?,
            org_id,
        }))
    }

    /// Our checkout behind a session object: by our id (client_reference_id), checked against
    /// the session id recorded when it was created.
    async fn checkout_of(
        &self,
        tx: &mut Tx,
        session: &Value,
    ) -> Result<Option<(String, String, String)>, WebhookError> {
        let (Some(ours), Some(session_id)) =
            (text(session, "client_reference_id"), text(session, "id"))
        else {
            return Ok(None);
        };
        let row = db::sqlx::query(&format!(
            "SELECT id, org_id, status FROM payment_checkouts WHERE id = $1 AND stripe_session_id = $2{}",
            self.db.lock_rows()
        ))
        .bind(&ours)
        .bind(&session_id)
        .fetch_optional(&mut **tx)
        .await?;
        row.map(|r| Ok((r.try_get("id")?, r.try_get("org_id")?, r.try_get("status")?)))
            .transpose()
    }

    async fn credit(
        &self,
        tx: &mut Tx,
        session: &Value,
        books: Option<&Books>,
    ) -> Result<WebhookOutcome, WebhookError> {
        let Some((checkout, org_id, _)) = self.checkout_of(tx, session).await? else {
            return Ok(WebhookOutcome::Recorded("not one of ours".into()));
        };
        let books = books
            .filter(|b| b.org_id == org_id)
            .ok_or(WebhookError::NotYet)?;
        if text(session, "currency").as_deref() != Some("usd") {
            return Ok(WebhookOutcome::Recorded("not in USD".into()));
        }
        let cents = session
            .get("amount_total")
            .and_then(Value::as_i64)
            .filter(|c| *c > 0)
            .ok_or_else(|| WebhookError::Malformed("amount_total missing".into()))?;
        let amount = Nanos::new(cents * NANOS_PER_CENT);
        let session_id = text(session, "id").unwrap_or_default();
        let posting = Posting::transfer(
            format!("stripe:checkout:{session_id}"),
            "top_up",
            "Top-up by card (Stripe)",
            Some(org_id.clone()),
            &books.clearing,
            &books.paid,
            amount,
        )?;
        if let ledger::Posted::Replayed { .. } = self.credits.ledger().post_in(tx, &posting).await?
        {
            return Ok(WebhookOutcome::Recorded("already credited".into()));
        }
        db::sqlx::query(
            "UPDATE payment_checkouts SET status = 'paid', paid_cents = $1, \
             payment_intent = COALESCE($2, payment_intent), updated_at = $3 WHERE id = $4",
        )
        .bind(cents)
        .bind(intent_of(session))
        .bind(now_ms())
        .bind(&checkout)
        .execute(&mut **tx)
        .await?;
        Ok(WebhookOutcome::Credited { org_id, amount })
    }

    /// A state without money: processing, failed or expired. States only move forward, so a late
    /// event never undoes a later one (and nothing moves a paid checkout).
    async fn mark(
        &self,
        tx: &mut Tx,
        session: &Value,
        status: &str,
    ) -> Result<WebhookOutcome, WebhookError> {
        let Some((checkout, _, current)) = self.checkout_of(tx, session).await? else {
            return Ok(WebhookOutcome::Recorded("not one of ours".into()));
        };
        let from: &[&str] = match status {
            "processing" | "expired" => &["starting", "open"],
            _ => &["starting", "open", "processing"],
        };
        if !from.contains(&current.as_str()) {
            return Ok(WebhookOutcome::Recorded(format!(
                "{status} ignored: the checkout is {current}"
            )));
        }
        db::sqlx::query(
            "UPDATE payment_checkouts SET status = $1, payment_intent = COALESCE($2, payment_intent), \
             updated_at = $3 WHERE id = $4",
        )
        .bind(status)
        .bind(intent_of(session))
        .bind(now_ms())
        .bind(&checkout)
        .execute(&mut **tx)
        .await?;
        Ok(WebhookOutcome::Recorded(status.to_string()))
    }

    /// Takes back what was refunded since the last refund event. What the wallet cannot cover
    /// (it was spent) is recorded as owed, on the organisation's receivable account.
    async fn refund(
        &self,
        tx: &mut Tx,
        charge: &Value,
        books: Option<&Books>,
    ) -> Result<WebhookOutcome, WebhookError> {
        let Some(intent) = intent_of(charge) else {
            return Ok(WebhookOutcome::Recorded(
                "refund without a payment intent".into(),
            ));
        };
        let total = charge
            .get("amount_refunded")
            .and_then(Value::as_i64)
            .ok_or_else(|| WebhookError::Malformed("amount_refunded missing".into()))?;
        // By our checkout id in the charge's metadata, else by the payment intent recorded when
        // the payment was credited.
        let (column, value) = match metadata_checkout(charge) {
            Some(ours) => ("id", ours),
            None => ("payment_intent", intent),
        };
        let row = db::sqlx::query(&format!(
            "SELECT id, org_id, status, refunded_cents, paid_cents FROM payment_checkouts \
             WHERE {column} = $1{}",
            self.db.lock_rows()
        ))
        .bind(&value)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else {
            return Ok(WebhookOutcome::Recorded("not one of ours".into()));
        };
        let checkout: String = row.try_get("id")?;
        let org_id: String = row.try_get("org_id")?;
        let status: String = row.try_get("status")?;
        let before: i64 = row.try_get("refunded_cents")?;
        let paid_cents: i64 = row.try_get("paid_cents")?;
        match status.as_str() {
            "paid" => {}
            // Ours, with the payment's own event still on the way.
            "starting" | "open" | "processing" => return Err(WebhookError::NotYet),
            _ => {
                return Ok(WebhookOutcome::Recorded(
                    "refund of an unpaid checkout".into(),
                ));
            }
        }
        let total = total.min(paid_cents);
        if total <= before {
            return Ok(WebhookOutcome::Recorded("refund already applied".into()));
        }
        let amount = Nanos::new((total - before) * NANOS_PER_CENT);
        let books = books
            .filter(|b| b.org_id == org_id)
            .ok_or(WebhookError::NotYet)?;
        let (legs, owed) = self.refund_legs(tx, books, amount).await?;
        let charge_id = text(charge, "id").unwrap_or_default();
        let posting = Posting::new(
            format!("stripe:refund:{charge_id}:{total}"),
            "refund",
            if owed > 0 {
                format!("Card payment refunded; {} owed", Nanos::new(owed))
            } else {
                "Card payment refunded".to_string()
            },
            Some(org_id.clone()),
            legs,
        )?;
        self.credits.ledger().post_in(tx, &posting).await?;
        db::sqlx::query(
            "UPDATE payment_checkouts SET refunded_cents = $1, updated_at = $2 WHERE id = $3",
        )
        .bind(total)
        .bind(now_ms())
        .bind(&checkout)
        .execute(&mut **tx)
        .await?;
        Ok(WebhookOutcome::Refunded {
            org_id,
            amount,
            owed: Nanos::new(owed),
        })
    }

    /// The legs that take `amount` back from a refunded payment: into the clearing account,
    /// from the paid wallet as far as its available balance covers it, the rest owed.
    /// Returns them with the owed part.
    async fn refund_legs(
        &self,
        tx: &mut Tx,
        books: &Books,
        amount: Nanos,
    ) -> Result<(Vec<Leg>, i64), WebhookError> {
        let (paid, owed_account, clearing) = (
            books.paid.clone(),
            books.owed.clone(),
            books.clearing.clone(),
        );
        // Lock the three accounts in id order (the order postings lock them in), then read.
        let mut ids = [paid.clone(), owed_account.clone(), clearing.clone()];
        ids.sort();
        let ledger = self.credits.ledger();
        let mut balance = (Nanos::ZERO, Nanos::ZERO);
        for id in &ids {
            let read = ledger.balance_in(tx, id).await?;
            if *id == paid {
                balance = read;
            }
        }
        let (balance, held) = balance;
        let covered = amount.get().min((balance.get() - held.get()).max(0));
        let owed = amount.get() - covered;
        let mut legs = vec![Leg {
            account_id: clearing,
            amount: amount.get(),
        }];
        if covered > 0 {
            legs.push(Leg {
                account_id: paid,
                amount: -covered,
            });
        }
        if owed > 0 {
            legs.push(Leg {
                account_id: owed_account,
                amount: -owed,
            });
        }
        Ok((legs, owed))
    }
}
