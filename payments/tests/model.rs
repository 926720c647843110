//! Property test against a reference model (RELIABILITY M1, M2, M5) over a whole wallet:
//! random sequences of top-ups paid through signed webhooks, program grants, spends,
//! reservations in burn order, settlements, voids, hold expiry, grant expiry, partial and full
//! refunds (cumulative, possibly stale), second events for a paid session, and replays of any
//! earlier delivery. After every step every bucket's balance and held amount, and what the
//! organisation owes, equal the model's, and the ledger's invariants hold. Runs on SQLite, and
//! on PostgreSQL when `TEST_DATABASE_URL` is set.
#![allow(
    clippy::too_many_lines,
    reason = "each test is one scenario read top to bottom; a long one tells a long story"
)]

use std::cell::Cell;

use accounts::{Accounts, Org};
use credits::{Credits, Program, ProgramSpec};
use db::testing::TestDb;
use ledger::{AccountKind, AccountSpec, HoldStatus, LedgerError, Nanos, Posting};
use payments::testing::*;
use payments::{NANOS_PER_CENT, Payments, StripeConfig, TopUpAmount, WebhookOutcome};
use proptest::{prelude::*, test_runner::TestRunner};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

#[derive(Debug, Clone)]
enum Op {
    TopUp(i64),
    Grant(i64),
    Spend(i64),
    Reserve(i64),
    /// Settle hold `n` (modulo those so far) for `permille` of what it reserved.
    Settle(usize, i64),
    Void(usize),
    ExpireHolds,
    ExpireGrants,
    /// Refund checkout `n` up to `permille` of it, cumulatively.
    Refund(usize, u32),
    /// `async_payment_succeeded` for a session already paid.
    SecondEvent(usize),
    Replay(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (500i64..20_000).prop_map(Op::TopUp),
        2 => (1i64..10_000).prop_map(Op::Grant),
        2 => (1i64..15_000).prop_map(Op::Spend),
        3 => (1i64..20_000).prop_map(Op::Reserve),
        2 => (0usize..16, 0i64..=1000).prop_map(|(h, p)| Op::Settle(h, p)),
        1 => (0usize..16).prop_map(Op::Void),
        1 => Just(Op::ExpireHolds),
        1 => Just(Op::ExpireGrants),
        3 => (0usize..16, 0u32..=1000).prop_map(|(i, p)| Op::Refund(i, p)),
        1 => (0usize..16).prop_map(Op::SecondEvent),
        2 => (0usize..32).prop_map(Op::Replay),
    ]
}

/// A wallet bucket: its ledger account, balance and held amount (nano-dollars).
#[derive(Debug, Clone)]
struct Bucket {
    account: String,
    balance: i64,
    held: i64,
}

impl Bucket {
    fn available(&self) -> i64 {
        self.balance - self.held
    }
}

/// A hold: its id, its parts as (bucket index, amount), whether it is open.
type ModelHold = (String, Vec<(usize, i64)>, bool);

struct Model {
    /// Index 0 is paid credit; then the grants, oldest (so soonest-expiring) first.
    buckets: Vec<Bucket>,
    owed: i64,
    /// (our id, payment intent, cents, refunded cents)
    checkouts: Vec<(String, String, i64, i64)>,
    delivered: Vec<String>,
    holds: Vec<ModelHold>,
}

impl Model {
    /// Burn order: grants that expire soonest, then paid.
    fn burn_order(&self) -> Vec<usize> {
        (1..self.buckets.len()).chain([0]).collect()
    }

    fn release(&mut self, h: usize) {
        for (b, amount) in self.holds[h].1.clone() {
            self.buckets[b].held -= amount;
        }
        self.holds[h].2 = false;
    }
}

struct Case<'a> {
    payments: &'a Payments,
    credits: &'a Credits,
    stand_in: &'a StandIn,
    program: &'a Program,
    org: Org,
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

    async fn session_of(&self, ours: &str) -> String {
        let seen = self.stand_in.seen.lock().unwrap().clone();
        let n = seen
            .iter()
            .position(|s| s.form.get("client_reference_id").map(String::as_str) == Some(ours))
            .unwrap();
        format!("cs_test_{n}")
    }

    async fn step(&self, m: &mut Model, i: usize, op: &Op) -> Result<(), String> {
        let org_id = self.org.id.clone();
        match *op {
            Op::TopUp(cents) => {
                let amount =
                    TopUpAmount::parse(&format!("{}.{:02}", cents / 100, cents % 100)).unwrap();
                self.payments
                    .start_checkout(&org_id, &self.user_id, "m@x.example", amount, "http://t")
                    .await
                    .map_err(|e| e.to_string())?;
                let ours = self.stand_in.last().form["client_reference_id"].clone();
                // The stand-in names sessions itself; read back the one made for ours.
                let cs = self.session_of(&ours).await;
                let intent = format!("pi_{}_{i}", self.name);
                let payload = event(
                    &format!("evt_{}_{i}", self.name),
                    "checkout.session.completed",
                    session(&cs, &ours, cents, "paid", &intent),
                );
                let out = self.deliver(m, payload).await;
                if !matches!(out, WebhookOutcome::Credited { .. }) {
                    return Err(format!("top-up: {out:?}"));
                }
                m.buckets[0].balance += cents * NANOS_PER_CENT;
                m.checkouts.push((ours, intent, cents, 0));
            }
            Op::Grant(cents) => {
                let amount = Nanos::new(cents * NANOS_PER_CENT);
                let key = format!("{}-grant-{i}", self.name);
                let g = self
                    .credits
                    .grant(self.program, &self.org, Some(amount), "model", &key)
                    .await
                    .map_err(|e| format!("grant: {e}"))?;
                m.buckets.push(Bucket {
                    account: g.account_id,
                    balance: amount.get(),
                    held: 0,
                });
            }
            Op::Spend(cents) => {
                let amount = cents * NANOS_PER_CENT;
                let p = Posting::transfer(
                    format!("{}-spend-{i}", self.name),
                    "usage",
                    "usage",
                    Some(org_id),
                    &m.buckets[0].account,
                    &self.revenue,
                    Nanos::new(amount),
                )
                .unwrap();
                match self.credits.ledger().post(&p).await {
                    Ok(_) if m.buckets[0].available() >= amount => m.buckets[0].balance -= amount,
                    Err(LedgerError::InsufficientFunds { .. })
                        if m.buckets[0].available() < amount => {}
                    other => return Err(format!("spend {cents}: {other:?}")),
                }
            }
            Op::Reserve(cents) => {
                let amount = cents * NANOS_PER_CENT;
                let sources = self
                    .credits
                    .sources(&org_id, db::now_ms())
                    .await
                    .map_err(|e| e.to_string())?;
                let order = m.burn_order();
                let want: Vec<String> = order
                    .iter()
                    .map(|&b| m.buckets[b].account.clone())
                    .collect();
                if sources != want {
                    return Err(format!("burn order {sources:?}, model {want:?}"));
                }
                let total: i64 = order.iter().map(|&b| m.buckets[b].available()).sum();
                let key = format!("{}-hold-{i}", self.name);
                let result = self
                    .credits
                    .ledger()
                    .reserve(&key, Some(&org_id), &sources, Nanos::new(amount), HOUR)
                    .await;
                match result {
                    Ok(hold) if total >= amount => {
                        let mut parts = Vec::new();
                        let mut left = amount;
                        for b in order {
                            let take = m.buckets[b].available().min(left);
                            if take > 0 {
                                parts.push((b, take));
                                m.buckets[b].held += take;
                                left -= take;
                            }
                        }
                        let got: Vec<(usize, i64)> = hold
                            .parts
                            .iter()
                            .map(|(id, a)| {
                                (m.buckets.iter().position(|b| b.account == *id).unwrap(), *a)
                            })
                            .collect();
                        if got != parts {
                            return Err(format!("parts {got:?}, model {parts:?}"));
                        }
                        m.holds.push((hold.id, parts, true));
                    }
                    Err(LedgerError::InsufficientFunds { .. }) if total < amount => {}
                    other => return Err(format!("reserve {amount} of {total}: {other:?}")),
                }
            }
            Op::Settle(h, permille) if !m.holds.is_empty() => {
                let h = h % m.holds.len();
                let (id, parts, open) = m.holds[h].clone();
                let reserved: i64 = parts.iter().map(|p| p.1).sum();
                let actual = reserved * permille / 1000;
                let result = self
                    .credits
                    .ledger()
                    .settle(&id, Nanos::new(actual), &self.revenue, "usage")
                    .await;
                match result {
                    Ok(hold) if open && hold.status == HoldStatus::Settled => {
                        m.release(h);
                        let mut left = actual;
                        for (b, part) in parts {
                            let take = part.min(left);
                            m.buckets[b].balance -= take;
                            left -= take;
                        }
                    }
                    Err(LedgerError::HoldNotOpen) if !open => {}
                    other => return Err(format!("settle: {other:?}")),
                }
            }
            Op::Void(h) if !m.holds.is_empty() => {
                let h = h % m.holds.len();
                let open = m.holds[h].2;
                match self.credits.ledger().void(&m.holds[h].0).await {
                    Ok(_) if open => m.release(h),
                    Err(LedgerError::HoldNotOpen) if !open => {}
                    other => return Err(format!("void: {other:?}")),
                }
            }
            Op::ExpireHolds => {
                self.credits
                    .ledger()
                    .expire_holds(db::now_ms() + 2 * HOUR)
                    .await
                    .map_err(|e| e.to_string())?;
                for h in 0..m.holds.len() {
                    if m.holds[h].2 {
                        m.release(h);
                    }
                }
            }
            Op::ExpireGrants => {
                // Every grant is past its lifetime then: what is not reserved leaves by posting.
                self.credits
                    .expire_grants(db::now_ms() + 400 * DAY)
                    .await
                    .map_err(|e| e.to_string())?;
                for b in m.buckets.iter_mut().skip(1) {
                    b.balance = b.held;
                }
            }
            Op::Refund(n, permille) if !m.checkouts.is_empty() => {
                let k = n % m.checkouts.len();
                let (ours, intent, cents, refunded) = m.checkouts[k].clone();
                // Matched by our id in the charge's metadata, or by the payment intent.
                let tagged = i.is_multiple_of(2).then_some(ours.as_str());
                let total = cents * i64::from(permille) / 1000;
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
                    let covered = delta.min(m.buckets[0].available().max(0));
                    let want = WebhookOutcome::Refunded {
                        org_id,
                        amount: Nanos::new(delta),
                        owed: Nanos::new(delta - covered),
                    };
                    if out != want {
                        return Err(format!("refund: {out:?}, want {want:?}"));
                    }
                    m.buckets[0].balance -= covered;
                    m.owed += delta - covered;
                    m.checkouts[k].3 = total;
                }
            }
            Op::SecondEvent(n) if !m.checkouts.is_empty() => {
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
            Op::Replay(n) if !m.delivered.is_empty() => {
                let payload = m.delivered[n % m.delivered.len()].clone();
                let out = self.deliver(m, payload).await;
                if out != WebhookOutcome::Duplicate {
                    return Err(format!("replay: {out:?}"));
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn check(&self, m: &Model) -> Result<(), String> {
        let wallet = self
            .credits
            .wallet(&self.org.id, db::now_ms())
            .await
            .map_err(|e| e.to_string())?;
        for b in &m.buckets {
            let (balance, held) = wallet
                .buckets
                .iter()
                .find(|w| w.account_id == b.account)
                .map_or((0, 0), |w| (w.balance.get(), w.held.get()));
            if (balance, held) != (b.balance, b.held) {
                return Err(format!(
                    "bucket {}: {balance}/{held}, model {}/{}",
                    b.account, b.balance, b.held
                ));
            }
        }
        let owed = self.credits.owed(&self.org.id).await.unwrap().get();
        if owed != m.owed {
            return Err(format!("owed {owed}, model {}", m.owed));
        }
        self.credits.ledger().verify().await.unwrap()
    }
}

#[test]
fn random_wallet_histories_match_a_reference_model() {
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
        let program = rt
            .block_on(credits.create_program(&ProgramSpec {
                name: "Model support".into(),
                sponsor_org_id: None,
                eligible_kinds: vec![accounts::OrgKind::Startup],
                eligible_regions: vec![],
                grant_amount: Nanos::from_dollars(1).unwrap(),
                grant_lifetime_days: 90,
                budget: Nanos::from_dollars(1_000_000).unwrap(),
                auto_on_signup: false,
                requires_verified_email: false,
            }))
            .unwrap();
        let case = Cell::new(0);
        let mut runner = TestRunner::new(ProptestConfig {
            cases: 24,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        runner
            .run(&proptest::collection::vec(op(), 1..20), |ops| {
                case.set(case.get() + 1);
                let name = format!("c{}", case.get());
                rt.block_on(async {
                    let form = testkit::sign_up_form(
                        &format!("{name}@model.example"),
                        &format!("Model org {name}"),
                    );
                    let user = testkit::signed_up(&accounts, form).await;
                    let org = accounts.org(&user.org_id).await.unwrap().unwrap();
                    let paid = credits.paid_account(&org.id).await.unwrap();
                    let c = Case {
                        payments: &payments,
                        credits: &credits,
                        stand_in: &stand_in,
                        program: &program,
                        org,
                        user_id: user.id.clone(),
                        revenue: revenue.clone(),
                        name,
                    };
                    let mut m = Model {
                        buckets: vec![Bucket {
                            account: paid,
                            balance: 0,
                            held: 0,
                        }],
                        owed: 0,
                        checkouts: Vec::new(),
                        delivered: Vec::new(),
                        holds: Vec::new(),
                    };
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
