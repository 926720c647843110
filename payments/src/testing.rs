//! Test support (feature `test-util`): a local stand-in for Stripe's API (what the real
//! async-stripe client talks to in tests), webhook payloads shaped as Stripe sends them, and
//! signatures made here with HMAC-SHA256, not with the crate that verifies them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::{Form, Json, Router, extract::State, http::HeaderMap, routing::post};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};

pub const WEBHOOK_SECRET: &str = "whsec_test_secret";
pub const SECRET_KEY: &str = "sk_test_tokenmill";

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub authorization: String,
    pub idempotency_key: Option<String>,
    pub form: HashMap<String, String>,
}

#[derive(Clone, Default)]
pub struct StandIn {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Session ids by idempotency key: a retried create returns the same session, as Stripe's does.
    sessions: Arc<Mutex<HashMap<String, String>>>,
    pub fail: Arc<Mutex<bool>>,
}

async fn create_session(
    State(s): State<StandIn>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> (axum::http::StatusCode, Json<Value>) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let key = header("idempotency-key");
    s.seen.lock().unwrap().push(Seen {
        path: "/v1/checkout/sessions".into(),
        authorization: header("authorization").unwrap_or_default(),
        idempotency_key: key.clone(),
        form: form.clone(),
    });
    if *s.fail.lock().unwrap() {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            Json(json!({"error": {"type": "invalid_request_error", "message": "card_declined"}})),
        );
    }
    let id = {
        let mut sessions = s.sessions.lock().unwrap();
        let n = sessions.len();
        sessions
            .entry(key.unwrap_or_else(|| format!("none-{n}")))
            .or_insert_with(|| format!("cs_test_{n}"))
            .clone()
    };
    (
        axum::http::StatusCode::OK,
        Json(json!({
            "id": id, "object": "checkout.session", "created": 1_790_000_000, "expires_at": 1_790_086_400,
            "livemode": false, "mode": "payment", "payment_status": "unpaid", "status": "open",
            "automatic_tax": {"enabled": false}, "custom_fields": [], "custom_text": {},
            "payment_method_types": ["card"], "shipping_options": [],
            "client_reference_id": form.get("client_reference_id"),
            "amount_total": form.get("line_items[0][price_data][unit_amount]").and_then(|a| a.parse::<i64>().ok()),
            "url": format!("https://checkout.stripe.test/c/pay/{id}")
        })),
    )
}

impl StandIn {
    /// Serves the stand-in on a free local port; returns it and its base URL.
    pub async fn start() -> (StandIn, String) {
        let s = StandIn::default();
        let app = Router::new()
            .route("/v1/checkout/sessions", post(create_session))
            .with_state(s.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (s, format!("http://{addr}/"))
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no request")
    }
}

/// `Stripe-Signature` for `payload` at unix time `t`.
pub fn sign(payload: &str, secret: &str, t: i64) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{payload}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn event(id: &str, kind: &str, object: Value) -> String {
    json!({
        "id": id, "object": "event", "api_version": "2026-09-30.endive", "created": now_secs(),
        "livemode": false, "pending_webhooks": 1, "type": kind,
        "data": {"object": object}
    })
    .to_string()
}

/// A Checkout Session object as Stripe sends it in events.
pub fn session(
    session_id: &str,
    ours: &str,
    cents: i64,
    payment_status: &str,
    intent: &str,
) -> Value {
    json!({
        "id": session_id, "object": "checkout.session", "created": 1_790_000_000, "expires_at": 1_790_086_400,
        "livemode": false, "mode": "payment", "payment_status": payment_status, "status": "complete",
        "automatic_tax": {"enabled": false}, "custom_fields": [], "custom_text": {},
        "payment_method_types": ["card"], "shipping_options": [],
        "client_reference_id": ours, "amount_total": cents, "currency": "usd",
        "metadata": {"checkout_id": ours}, "payment_intent": intent
    })
}

/// A Charge object after a refund (`amount_refunded` is cumulative). `ours` is the checkout id
/// the payment carried in its metadata, if any.
pub fn charge(
    charge_id: &str,
    intent: &str,
    cents: i64,
    refunded: i64,
    ours: Option<&str>,
) -> Value {
    let metadata = match ours {
        Some(id) => json!({"checkout_id": id}),
        None => json!({}),
    };
    json!({
        "id": charge_id, "object": "charge", "amount": cents, "amount_captured": cents,
        "amount_refunded": refunded, "billing_details": {}, "captured": true, "created": 1_790_000_000,
        "currency": "usd", "disputed": false, "livemode": false, "metadata": metadata, "paid": true,
        "refunded": refunded == cents, "status": "succeeded", "payment_intent": intent
    })
}
