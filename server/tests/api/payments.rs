//! Top-ups over HTTP: the top-up server function creates a Checkout Session through the real
//! async-stripe client against a local stand-in; Stripe's webhook is posted to the real
//! endpoint with payloads signed here: valid, replayed, bad signature, stale, refund, early.

use payments::testing::*;
use reqwest::StatusCode;

use crate::helpers::*;

async fn stripe_app() -> (TestApp, StandIn) {
    let (stand_in, base) = StandIn::start().await;
    let app = spawn_app_with(|c| {
        c.stripe = payments::StripeConfig {
            secret_key: Some(SECRET_KEY.into()),
            webhook_secret: Some(WEBHOOK_SECRET.into()),
            api_base: Some(base),
        }
    })
    .await;
    (app, stand_in)
}

async fn webhook(app: &TestApp, payload: &str, signature: Option<String>) -> StatusCode {
    let mut req = reqwest::Client::new()
        .post(format!("{}/webhooks/stripe", app.base))
        .header("content-type", "application/json")
        .body(payload.to_string());
    if let Some(sig) = signature {
        req = req.header("stripe-signature", sig);
    }
    req.send().await.unwrap().status()
}

async fn available(b: &Browser) -> String {
    let (_, c) = b.json("/api/credits", &[("kind", ""), ("page", "1")]).await;
    c["available"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_top_up_is_credited_by_the_signed_webhook_only_and_once() {
    let (app, stand_in) = stripe_app().await;
    let tenant = app.owner("pay@startup.example", "Paying AI").await;
    let (_, c) = tenant
        .json("/api/credits", &[("kind", ""), ("page", "1")])
        .await;
    assert_eq!(c["top_up"]["configured"], true);
    let (status, err) = tenant.json("/api/top_up", &[("amount", "4.99")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["Field"]["field"], "amount");
    let r = tenant.post("/api/top_up", &[("amount", "25")]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        location(&r).starts_with("https://checkout.stripe.test/c/pay/cs_test_0"),
        "{}",
        location(&r)
    );
    let seen = stand_in.last();
    assert_eq!(seen.form["line_items[0][price_data][unit_amount]"], "2500");
    assert_eq!(seen.form["customer_email"], "pay@startup.example");
    assert!(
        seen.form["success_url"].starts_with(&format!("{}/credits/top-up/success", app.origin))
    );
    let ours = seen.form["client_reference_id"].clone();

    // Coming back to the success page credits nothing.
    let page = tenant
        .get("/credits/top-up/success?session_id=cs_test_0")
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("waiting for payment"), "{page}");
    assert_eq!(available(&tenant).await, "$0.00");

    let paid = event(
        "evt_1",
        "checkout.session.completed",
        session("cs_test_0", &ours, 2_500, "paid", "pi_1"),
    );
    let now = now_secs();
    assert_eq!(webhook(&app, &paid, None).await, StatusCode::BAD_REQUEST);
    assert_eq!(
        webhook(&app, &paid, Some(sign(&paid, "whsec_wrong", now))).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        webhook(&app, &paid, Some(sign(&paid, WEBHOOK_SECRET, now - 400))).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(available(&tenant).await, "$0.00");
    // A refund that overtakes its payment is answered 409, so Stripe delivers it again later.
    let refund = event(
        "evt_2",
        "charge.refunded",
        charge("ch_1", "pi_1", 2_500, 1_000, Some(&ours)),
    );
    assert_eq!(
        webhook(&app, &refund, Some(sign(&refund, WEBHOOK_SECRET, now))).await,
        StatusCode::CONFLICT
    );
    assert_eq!(
        webhook(&app, &paid, Some(sign(&paid, WEBHOOK_SECRET, now))).await,
        StatusCode::OK
    );
    assert_eq!(
        webhook(&app, &paid, Some(sign(&paid, WEBHOOK_SECRET, now))).await,
        StatusCode::OK
    );
    assert_eq!(available(&tenant).await, "$25.00");
    let page = tenant
        .get("/credits/top-up/success?session_id=cs_test_0")
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("credited"), "{page}");
    assert_eq!(
        webhook(&app, &refund, Some(sign(&refund, WEBHOOK_SECRET, now))).await,
        StatusCode::OK
    );
    assert_eq!(available(&tenant).await, "$15.00");
    let (_, c) = tenant
        .json("/api/credits", &[("kind", "refund"), ("page", "1")])
        .await;
    assert_eq!(c["history_total"], "-$10.00", "{c}");
    assert_eq!(c["top_up"]["recent"][0]["refunded"], "$10.00");
    // Another organisation's session id shows nothing.
    let other = app.owner("other@startup.example", "Other AI").await;
    let page = other
        .get("/credits/top-up/success?session_id=cs_test_0")
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("no top-up with that reference"), "{page}");
}

#[tokio::test]
async fn without_stripe_keys_top_ups_are_refused_in_a_tenants_words() {
    let app = spawn_app().await;
    let tenant = app.owner("pay@startup.example", "Paying AI").await;
    let (_, c) = tenant
        .json("/api/credits", &[("kind", ""), ("page", "1")])
        .await;
    assert_eq!(c["top_up"]["configured"], false);
    let (status, err) = tenant.json("/api/top_up", &[("amount", "25")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        err.to_string().contains("not available on this portal"),
        "{err}"
    );
    // Server settings are the operator's business: a tenant is not shown their names.
    assert!(!err.to_string().contains("STRIPE"), "{err}");
    let page = tenant.get("/credits").await.text().await.unwrap();
    assert!(page.contains("Paying by card is not available"), "{page}");
    assert!(!page.contains("STRIPE_SECRET_KEY"), "{page}");
    let payload = event("evt_1", "customer.created", serde_json::json!({}));
    assert_eq!(
        webhook(
            &app,
            &payload,
            Some(sign(&payload, WEBHOOK_SECRET, now_secs()))
        )
        .await,
        StatusCode::SERVICE_UNAVAILABLE
    );
}
