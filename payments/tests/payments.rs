//! Top-ups end to end below HTTP, on real databases (SQLite always, PostgreSQL with
//! `TEST_DATABASE_URL`): Checkout creation through the real async-stripe client against a
//! local stand-in, and signed webhook payloads: valid, bad signature, stale, replayed,
//! concurrent, out of order, refunded.
#![allow(
    clippy::too_many_lines,
    reason = "each test is one scenario read top to bottom; a long one tells a long story"
)]

use accounts::Accounts;
use credits::Credits;
use ledger::Nanos;
use payments::testing::*;
use payments::{Payments, PaymentsError, StripeConfig, TopUpAmount, WebhookError, WebhookOutcome};

struct Setup {
    payments: Payments,
    credits: Credits,
    org_id: String,
    user_id: String,
    stand_in: StandIn,
}

async fn setup(db: &db::Db) -> Setup {
    let accounts = Accounts::new(db.clone(), Default::default());
    let user = testkit::signed_up(
        &accounts,
        testkit::sign_up_form("pay@startup.example", "Paying startup"),
    )
    .await;
    let user_id = user.id.clone();
    let org_id = user.org_id;
    let (stand_in, base) = StandIn::start().await;
    let credits = Credits::new(db.clone());
    let payments = Payments::new(
        db.clone(),
        credits.clone(),
        StripeConfig {
            secret_key: Some(SECRET_KEY.into()),
            webhook_secret: Some(WEBHOOK_SECRET.into()),
            api_base: Some(base),
        },
    )
    .unwrap();
    Setup {
        payments,
        credits,
        org_id,
        user_id,
        stand_in,
    }
}

impl Setup {
    /// Starts a checkout; returns (our id, Stripe's session id).
    async fn checkout(&self, dollars: &str) -> (String, String) {
        self.payments
            .start_checkout(
                &self.org_id,
                &self.user_id,
                "pay@startup.example",
                TopUpAmount::parse(dollars).unwrap(),
                "http://portal.test",
            )
            .await
            .unwrap();
        let seen = self.stand_in.last();
        let ours = seen.form["client_reference_id"].clone();
        let session = self
            .payments
            .checkouts(&self.org_id, 100)
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.id == ours)
            .map(|_| ours.clone())
            .unwrap();
        let n = self.stand_in.seen.lock().unwrap().len() - 1;
        (session, format!("cs_test_{n}"))
    }

    async fn deliver(&self, payload: &str) -> Result<WebhookOutcome, WebhookError> {
        self.payments
            .handle_webhook(payload, &sign(payload, WEBHOOK_SECRET, now_secs()))
            .await
    }

    async fn paid_balance(&self) -> Nanos {
        let w = self
            .credits
            .wallet(&self.org_id, db::now_ms())
            .await
            .unwrap();
        w.buckets
            .iter()
            .find(|b| b.label == "Paid credit")
            .map_or(Nanos::ZERO, |b| b.balance)
    }
}

fn dollars(d: i64) -> Nanos {
    Nanos::from_dollars(d).unwrap()
}

db::storage_test!(
    async fn checkout_sessions_are_created_through_the_real_client(t) {
        let s = setup(&t.db).await;
        let url = s
            .payments
            .start_checkout(
                &s.org_id,
                &s.user_id,
                "pay@startup.example",
                TopUpAmount::parse("25").unwrap(),
                "http://portal.test/",
            )
            .await
            .unwrap();
        assert!(
            url.starts_with("https://checkout.stripe.test/c/pay/cs_test_"),
            "{url}"
        );
        let seen = s.stand_in.last();
        assert_eq!(seen.authorization, format!("Bearer {SECRET_KEY}"));
        let f = &seen.form;
        assert_eq!(f["mode"], "payment");
        assert_eq!(f["line_items[0][price_data][unit_amount]"], "2500");
        assert_eq!(f["line_items[0][price_data][currency]"], "usd");
        assert_eq!(f["line_items[0][quantity]"], "1");
        assert_eq!(f["metadata[org_id]"], s.org_id);
        assert_eq!(
            f["success_url"],
            "http://portal.test/credits/top-up/success?session_id={CHECKOUT_SESSION_ID}"
        );
        assert_eq!(
            f["cancel_url"],
            "http://portal.test/credits/top-up/cancelled"
        );
        let ours = &f["client_reference_id"];
        assert_eq!(&f["payment_intent_data[metadata][checkout_id]"], ours);
        assert_eq!(
            seen.idempotency_key.as_deref(),
            Some(format!("tokenmill-checkout-{ours}").as_str())
        );
        // Starting a checkout moves no money.
        assert_eq!(s.paid_balance().await, Nanos::ZERO);
        let listed = s.payments.checkouts(&s.org_id, 10).await.unwrap();
        assert_eq!((listed.len(), listed[0].status.as_str()), (1, "open"));
        // Amounts outside the limits never reach Stripe.
        for bad in ["4.99", "10000.01", "12.345", "-5", "abc", ""] {
            assert!(
                matches!(TopUpAmount::parse(bad), Err(PaymentsError::Field { .. })),
                "{bad}"
            );
        }
        // Stripe refusing: a clear error, and the attempt is kept as not started.
        *s.stand_in.fail.lock().unwrap() = true;
        let refused = s
            .payments
            .start_checkout(
                &s.org_id,
                &s.user_id,
                "pay@startup.example",
                TopUpAmount::parse("100").unwrap(),
                "http://portal.test",
            )
            .await;
        assert!(
            matches!(refused, Err(PaymentsError::Stripe(_))),
            "{refused:?}"
        );
        let listed = s.payments.checkouts(&s.org_id, 10).await.unwrap();
        assert_eq!(listed[0].status, "not_started");
        // Without a key, top-ups say they are not configured.
        let off = Payments::new(t.db.clone(), s.credits.clone(), StripeConfig::default()).unwrap();
        assert!(!off.is_configured());
        assert!(matches!(
            off.start_checkout(
                &s.org_id,
                &s.user_id,
                "a@b.example",
                TopUpAmount::parse("25").unwrap(),
                "http://x"
            )
            .await,
            Err(PaymentsError::NotConfigured)
        ));
        assert!(matches!(
            off.handle_webhook("{}", "t=1,v1=00").await,
            Err(WebhookError::NotConfigured)
        ));
        t.finish().await;
    }
);

db::storage_test!(
    async fn webhooks_are_verified_applied_once_and_in_any_order(t) {
        let s = setup(&t.db).await;
        let (ours, cs) = s.checkout("100").await;
        let completed = event(
            "evt_1",
            "checkout.session.completed",
            session(&cs, &ours, 10_000, "paid", "pi_1"),
        );
        // Bad signatures and stale or future timestamps are refused before anything is read.
        let now = now_secs();
        for (sig, want_stale) in [
            (sign(&completed, "whsec_other", now), false),
            (format!("t={now},v1=deadbeef"), false),
            ("garbage".to_string(), false),
            (String::new(), false),
            (sign(&completed, WEBHOOK_SECRET, now - 301), true),
            (sign(&completed, WEBHOOK_SECRET, now + 301), true),
        ] {
            let r = s.payments.handle_webhook(&completed, &sig).await;
            match (want_stale, r) {
                (true, Err(WebhookError::Stale)) | (false, Err(WebhookError::BadSignature)) => {}
                (_, other) => panic!("{sig}: {other:?}"),
            }
        }
        let tampered = completed.replace("10000", "99999");
        assert!(matches!(
            s.payments
                .handle_webhook(&tampered, &sign(&completed, WEBHOOK_SECRET, now))
                .await,
            Err(WebhookError::BadSignature)
        ));
        assert_eq!(s.paid_balance().await, Nanos::ZERO);
        // A refund whose payment has not been seen yet: not recorded, so Stripe's retry applies it.
        let early_refund = event(
            "evt_r0",
            "charge.refunded",
            charge("ch_1", "pi_1", 10_000, 2_500, Some(&ours)),
        );
        assert!(matches!(
            s.deliver(&early_refund).await,
            Err(WebhookError::NotYet)
        ));
        // Valid: credited once; the replay and the async success of the same session are no-ops.
        assert_eq!(
            s.deliver(&completed).await.unwrap(),
            WebhookOutcome::Credited {
                org_id: s.org_id.clone(),
                amount: dollars(100)
            }
        );
        assert_eq!(
            s.deliver(&completed).await.unwrap(),
            WebhookOutcome::Duplicate
        );
        let succeeded = event(
            "evt_2",
            "checkout.session.async_payment_succeeded",
            session(&cs, &ours, 10_000, "paid", "pi_1"),
        );
        assert!(matches!(
            s.deliver(&succeeded).await.unwrap(),
            WebhookOutcome::Recorded(_)
        ));
        let failed_late = event(
            "evt_3",
            "checkout.session.async_payment_failed",
            session(&cs, &ours, 10_000, "unpaid", "pi_1"),
        );
        assert!(matches!(
            s.deliver(&failed_late).await.unwrap(),
            WebhookOutcome::Recorded(_)
        ));
        assert_eq!(s.paid_balance().await, dollars(100));
        assert_eq!(
            s.payments.checkouts(&s.org_id, 10).await.unwrap()[0].status,
            "paid"
        );
        // Unknown event types are recorded and ignored; sessions not ours change nothing.
        let unknown = event(
            "evt_4",
            "customer.created",
            serde_json::json!({"id": "cus_1"}),
        );
        assert!(matches!(
            s.deliver(&unknown).await.unwrap(),
            WebhookOutcome::Recorded(_)
        ));
        let foreign = event(
            "evt_5",
            "checkout.session.completed",
            session("cs_foreign", "someone-else", 5_000, "paid", "pi_9"),
        );
        assert!(matches!(
            s.deliver(&foreign).await.unwrap(),
            WebhookOutcome::Recorded(_)
        ));
        // The early refund, retried, now applies; an older cumulative amount arriving late does not.
        assert!(matches!(
            s.deliver(&early_refund).await.unwrap(),
            WebhookOutcome::Refunded { .. }
        ));
        assert_eq!(s.paid_balance().await, dollars(75));
        let stale_refund = event(
            "evt_r_old",
            "charge.refunded",
            charge("ch_1", "pi_1", 10_000, 1_000, None),
        );
        assert!(matches!(
            s.deliver(&stale_refund).await.unwrap(),
            WebhookOutcome::Recorded(_)
        ));
        assert_eq!(s.paid_balance().await, dollars(75));
        // Spend $60 of the $75; the rest of the payment is refunded: $15 comes back, $60 is owed.
        let rev = s
            .credits
            .ledger()
            .open_account(&ledger::AccountSpec {
                code: "rev".into(),
                org_id: None,
                kind: ledger::AccountKind::Revenue,
                expires_at: None,
            })
            .await
            .unwrap();
        let paid = s.credits.paid_account(&s.org_id).await.unwrap();
        let spend = ledger::Posting::transfer(
            "spend-1",
            "usage",
            "usage",
            Some(s.org_id.clone()),
            &paid,
            &rev.id,
            dollars(60),
        )
        .unwrap();
        s.credits.ledger().post(&spend).await.unwrap();
        let full = event(
            "evt_r1",
            "charge.refunded",
            charge("ch_1", "pi_1", 10_000, 10_000, Some(&ours)),
        );
        assert_eq!(
            s.deliver(&full).await.unwrap(),
            WebhookOutcome::Refunded {
                org_id: s.org_id.clone(),
                amount: dollars(75),
                owed: dollars(60)
            }
        );
        assert_eq!(s.paid_balance().await, Nanos::ZERO);
        assert_eq!(s.credits.owed(&s.org_id).await.unwrap(), dollars(60));
        assert_eq!(s.deliver(&full).await.unwrap(), WebhookOutcome::Duplicate);
        // A delayed payment method that fails, its events in reverse order: it stays failed.
        let (ours2, cs2) = s.checkout("50").await;
        let failed = event(
            "evt_f1",
            "checkout.session.async_payment_failed",
            session(&cs2, &ours2, 5_000, "unpaid", "pi_2"),
        );
        let pending = event(
            "evt_f0",
            "checkout.session.completed",
            session(&cs2, &ours2, 5_000, "unpaid", "pi_2"),
        );
        s.deliver(&failed).await.unwrap();
        s.deliver(&pending).await.unwrap();
        let listed = s.payments.checkouts(&s.org_id, 10).await.unwrap();
        assert_eq!(listed[0].status, "failed");
        assert_eq!(s.paid_balance().await, Nanos::ZERO);
        // A refund of a charge that is not ours, while one of ours is open, changes nothing.
        s.checkout("30").await;
        let foreign = event(
            "evt_r9",
            "charge.refunded",
            charge("ch_9", "pi_9", 5_000, 5_000, None),
        );
        assert!(matches!(
            s.deliver(&foreign).await.unwrap(),
            WebhookOutcome::Recorded(_)
        ));
        assert_eq!(s.credits.ledger().verify().await.unwrap(), Ok(()));
        t.finish().await;
    }
);

db::storage_test!(
    threads = 4;
    async fn concurrent_replays_of_one_webhook_credit_once(t) {
        let s = setup(&t.db).await;
        let (ours, cs) = s.checkout("40").await;
        let payload = event(
            "evt_c",
            "checkout.session.completed",
            session(&cs, &ours, 4_000, "paid", "pi_c"),
        );
        let sig = sign(&payload, WEBHOOK_SECRET, now_secs());
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (p, payload, sig) = (s.payments.clone(), payload.clone(), sig.clone());
                tokio::spawn(async move { p.handle_webhook(&payload, &sig).await })
            })
            .collect();
        let mut credited = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(WebhookOutcome::Credited { .. }) => credited += 1,
                Ok(WebhookOutcome::Duplicate) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(credited, 1);
        assert_eq!(s.paid_balance().await, dollars(40));
        assert_eq!(s.credits.ledger().verify().await.unwrap(), Ok(()));
        t.finish().await;
    }
);
