//! Property test against a reference model (RELIABILITY M1): random sequences of top-ups paid
//! through signed webhooks, spends, partial and full refunds (cumulative, possibly stale),
//! second events for a paid session, and replays of any earlier delivery. After every step the
//! wallet's paid balance and what the organisation owes equal the model's, and the ledger's
//! invariants hold. Runs on SQLite, and on PostgreSQL when `TEST_DATABASE_URL` is set.

use std::cell::Cell;

use accounts::{Accounts, SignUpForm, SignUpOutcome};
use credits::Credits;
use db::testing::TestDb;
use ledger::{AccountKind, AccountSpec, LedgerError, Nanos, Posting};
use payments::testing::*;
use payments::{NANOS_PER_CENT, Payments, StripeConfig, TopUpAmount, WebhookOutcome};
use proptest::{prelude::*, test_runner::TestRunner};

#[derive(Debug, Clone)]
enum Op {
    TopUp(i64),
    Spend(i64),
    /// Refund checkout `n` (modulo those so far) up to `permille` of it, cumulatively.
    Refund(usize, u32),
    /// `async_payment_succeeded` for a session already paid.
    SecondEvent(usize),
    Replay(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (500i64..20_000).prop_map(Op::TopUp),
        3 => (1i64..15_000).prop_map(Op::Spend),
        3 => (0usize..16, 0u32..=1000).prop_map(|(i, p)| Op::Refund(i, p)),
        1 => (0usize..16).prop_map(Op::SecondEvent),
        2 => (0usize..32).prop_map(Op::Replay),
    ]
}

#[derive(Default)]
struct Model {
    paid: i64,
    owed: i64,
    /// (our id, session id, cents, refunded cents)
    checkouts: Vec<(String, String, i64, i64)>,
    delivered: Vec<String>,
}

struct Case<'a> {
    payments: &'a Payments,
    credits: &'a Credits,
    stand_in: &'a StandIn,
    org_id: String,
    user_id: String,
    revenue: String,
    name: String,
}

impl Case<'_> {
    async fn deliver(&self, m: &mut Model, payload: String) -> WebhookOutcome {
        let sig = sign(&payload, WEBHOOK_SECRET, now_secs());
        let out = self.payments.handle_webhook(&payload, &sig).await.unwrap();
        m.delivered.push(payload);
        out
    }

    async fn step(&self, m: &mut Model, i: usize, op: &Op) -> Result<(), String> {
        match op {
            Op::TopUp(cents) => {
                let amount =
                    TopUpAmount::parse(&format!("{}.{:02}", cents / 100, cents % 100)).unwrap();
                self.payments
                    .start_checkout(
                        &self.org_id,
                        &self.user_id,
                        "m@x.example",
                        amount,
                        "http://t",
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let ours = self.stand_in.last().form["client_reference_id"].clone();
                // The stand-in names sessions itself; read back the one made for ours.
                let recorded = self.session_of(&ours).await;
                let intent = format!("pi_{}_{i}", self.name);
                let payload = event(
                    &format!("evt_{}_{i}", self.name),
                    "checkout.session.completed",
                    session(&recorded, &ours, *cents, "paid", &intent),
                );
                let out = self.deliver(m, payload).await;
                if !matches!(out, WebhookOutcome::Credited { .. }) {
                    return Err(format!("top-up: {out:?}"));
                }
                m.paid += cents * NANOS_PER_CENT;
                m.checkouts.push((ours, intent, *cents, 0));
            }
            Op::Spend(cents) => {
                let paid = self.credits.paid_account(&self.org_id).await.unwrap();
                let amount = Nanos::new(cents * NANOS_PER_CENT);
                let p = Posting::transfer(
                    format!("{}-spend-{i}", self.name),
                    "usage",
                    "usage",
                    Some(self.org_id.clone()),
                    &paid,
                    &self.revenue,
                    amount,
                )
                .unwrap();
                match self.credits.ledger().post(&p).await {
                    Ok(_) if m.paid >= amount.get() => m.paid -= amount.get(),
                    Err(LedgerError::InsufficientFunds { .. }) if m.paid < amount.get() => {}
                    other => return Err(format!("spend {cents}: {other:?} with model {}", m.paid)),
                }
            }
            Op::Refund(n, permille) => {
                if m.checkouts.is_empty() {
                    return Ok(());
                }
                let k = n % m.checkouts.len();
                let (ours, intent, cents, refunded) = m.checkouts[k].clone();
                // Matched by our id in the charge's metadata, or by the payment intent.
                let tagged = i.is_multiple_of(2).then_some(ours.as_str());
                let total = cents * i64::from(*permille) / 1000;
                let payload = event(
                    &format!("evt_{}_r{i}", self.name),
                    "charge.refunded",
                    charge(&format!("ch_{intent}"), &intent, cents, total, tagged),
                );
                let out = self.deliver(m, payload).await;
                if total <= refunded {
                    if !matches!(out, WebhookOutcome::Recorded(_)) {
                        return Err(format!("stale refund applied: {out:?}"));
                    }
                } else {
                    let delta = (total - refunded) * NANOS_PER_CENT;
                    let covered = delta.min(m.paid);
                    let want = WebhookOutcome::Refunded {
                        org_id: self.org_id.clone(),
                        amount: Nanos::new(delta),
                        owed: Nanos::new(delta - covered),
                    };
                    if out != want {
                        return Err(format!("refund: {out:?}, want {want:?}"));
                    }
                    m.paid -= covered;
                    m.owed += delta - covered;
                    m.checkouts[k].3 = total;
                }
            }
            Op::SecondEvent(n) => {
                if m.checkouts.is_empty() {
                    return Ok(());
                }
                let (ours, intent, cents, _) = m.checkouts[n % m.checkouts.len()].clone();
                let cs = self.session_of(&ours).await;
                let payload = event(
                    &format!("evt_{}_s{i}", self.name),
                    "checkout.session.async_payment_succeeded",
                    session(&cs, &ours, cents, "paid", &intent),
                );
                let out = self.deliver(m, payload).await;
                if !matches!(out, WebhookOutcome::Recorded(_)) {
                    return Err(format!("second event: {out:?}"));
                }
            }
            Op::Replay(n) => {
                if m.delivered.is_empty() {
                    return Ok(());
                }
                let payload = m.delivered[n % m.delivered.len()].clone();
                let out = self.deliver(m, payload).await;
                if out != WebhookOutcome::Duplicate {
                    return Err(format!("replay: {out:?}"));
                }
            }
        }
        Ok(())
    }

    async fn session_of(&self, ours: &str) -> String {
        let seen = self.stand_in.seen.lock().unwrap().clone();
        let n = seen
            .iter()
            .position(|s| s.form.get("client_reference_id").map(String::as_str) == Some(ours))
            .unwrap();
        format!("cs_test_{n}")
    }

    async fn check(&self, m: &Model) -> Result<(), String> {
        let w = self
            .credits
            .wallet(&self.org_id, db::now_ms())
            .await
            .unwrap();
        let paid = w
            .buckets
            .iter()
            .find(|b| b.label == "Paid credit")
            .map_or(0, |b| b.balance.get());
        let owed = self.credits.owed(&self.org_id).await.unwrap().get();
        if (paid, owed) != (m.paid, m.owed) {
            return Err(format!(
                "paid/owed {paid}/{owed}, model {}/{}",
                m.paid, m.owed
            ));
        }
        self.credits.ledger().verify().await.unwrap()
    }
}

#[test]
fn random_payments_and_refunds_match_a_reference_model() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dbs = rt.block_on(TestDb::all());
    for t in &dbs {
        let (stand_in, base) = rt.block_on(StandIn::start());
        let credits = Credits::new(t.db.clone());
        let accounts = Accounts::new(t.db.clone(), Default::default());
        let payments = Payments::new(
            t.db.clone(),
            credits.clone(),
            StripeConfig {
                secret_key: Some(SECRET_KEY.into()),
                webhook_secret: Some(WEBHOOK_SECRET.into()),
                api_base: Some(base),
            },
        )
        .unwrap();
        let revenue = rt
            .block_on(credits.ledger().open_account(&AccountSpec {
                code: "revenue".into(),
                org_id: None,
                kind: AccountKind::Revenue,
                expires_at: None,
            }))
            .unwrap()
            .id;
        let case = Cell::new(0);
        let mut runner = TestRunner::new(ProptestConfig {
            cases: 24,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        runner
            .run(&proptest::collection::vec(op(), 1..16), |ops| {
                case.set(case.get() + 1);
                let name = format!("c{}", case.get());
                rt.block_on(async {
                    let SignUpOutcome::Created { user_id } = accounts
                        .sign_up(SignUpForm {
                            email: format!("{name}@model.example"),
                            password: "correct horse battery staple 42".into(),
                            org_name: format!("Model org {name}"),
                            org_kind: "startup".into(),
                            region: "europe".into(),
                        })
                        .await
                        .unwrap()
                    else {
                        panic!()
                    };
                    let org_id = accounts.user(&user_id).await.unwrap().unwrap().org_id;
                    let c = Case {
                        payments: &payments,
                        credits: &credits,
                        stand_in: &stand_in,
                        org_id,
                        user_id,
                        revenue: revenue.clone(),
                        name,
                    };
                    let mut m = Model::default();
                    for (i, op) in ops.iter().enumerate() {
                        c.step(&mut m, i, op)
                            .await
                            .map_err(|e| TestCaseError::fail(format!("step {i} {op:?}: {e}")))?;
                        c.check(&m).await.map_err(|e| {
                            TestCaseError::fail(format!("after step {i} {op:?}: {e}"))
                        })?;
                    }
                    Ok(())
                })
            })
            .unwrap_or_else(|e| panic!("{:?}: {e}", t.db.backend()));
    }
    for t in dbs {
        rt.block_on(t.finish());
    }
}
