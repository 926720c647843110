//! Property test against a reference model (RELIABILITY M1, M5): random sequences of top-ups,
//! grants, spends, reservations, settlements, voids, expiries and replays. After every step
//! every balance and every held amount equals the model's, and the ledger's own invariants
//! hold (transactions sum to zero, balances equal their entries, nothing below zero). Runs on
//! SQLite, and on PostgreSQL when `TEST_DATABASE_URL` is set.
#![allow(
    clippy::too_many_lines,
    reason = "each test is one scenario read top to bottom; a long one tells a long story"
)]

use std::cell::Cell;

use db::testing::TestDb;
use ledger::{AccountKind, AccountSpec, HoldStatus, Ledger, LedgerError, Nanos, Posted, Posting};
use proptest::{prelude::*, test_runner::TestRunner};

const EXT: usize = 0;
const PAID: usize = 1;
const GRANT: usize = 2;
const REV: usize = 3;
const ACCOUNTS: [(&str, AccountKind); 4] = [
    ("ext", AccountKind::External),
    ("paid", AccountKind::WalletPaid),
    ("grant", AccountKind::WalletGrant),
    ("rev", AccountKind::Revenue),
];
/// Burn order: the grant, then paid.
const SOURCES: [usize; 2] = [GRANT, PAID];
const HOUR: i64 = 3_600_000;

#[derive(Debug, Clone)]
enum Op {
    TopUp(i64),
    Grant(i64),
    Spend(i64),
    Reserve(i64),
    /// Settle hold `n` (modulo the holds so far) for `permille` of what it reserved.
    Settle(usize, i64),
    Void(usize),
    ExpireAll,
    /// Post again an earlier top-up, grant or spend (same key, same legs).
    Replay(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1i64..300).prop_map(Op::TopUp),
        2 => (1i64..200).prop_map(Op::Grant),
        2 => (1i64..250).prop_map(Op::Spend),
        4 => (1i64..300).prop_map(Op::Reserve),
        3 => (0usize..32, 0i64..=1000).prop_map(|(h, p)| Op::Settle(h, p)),
        1 => (0usize..32).prop_map(Op::Void),
        1 => Just(Op::ExpireAll),
        2 => (0usize..32).prop_map(Op::Replay),
    ]
}

/// A hold as the model sees it: its id, its parts (account index, amount), whether it is open.
type ModelHold = (String, Vec<(usize, i64)>, bool);

#[derive(Default)]
struct Model {
    balance: [i64; 4],
    held: [i64; 4],
    holds: Vec<ModelHold>,
    /// Postings tried so far and whether each applied.
    postings: Vec<(Posting, bool)>,
}

impl Model {
    fn available(&self, i: usize) -> i64 {
        self.balance[i] - self.held[i]
    }

    fn release(&mut self, h: usize) {
        for (i, amount) in self.holds[h].1.clone() {
            self.held[i] -= amount;
        }
        self.holds[h].2 = false;
    }
}

struct Case<'a> {
    ledger: &'a Ledger,
    name: String,
    ids: Vec<String>,
}

impl Case<'_> {
    fn transfer(&self, step: usize, from: usize, to: usize, amount: i64) -> Posting {
        let key = format!("{}:{step}", self.name);
        Posting::transfer(
            key,
            "test",
            "",
            None,
            &self.ids[from],
            &self.ids[to],
            Nanos::new(amount),
        )
        .unwrap()
    }

    /// Posts and updates the model, checking the outcome the model predicts.
    async fn post(
        &self,
        m: &mut Model,
        posting: Posting,
        earlier: Option<usize>,
    ) -> Result<(), String> {
        let leg = |sign: i64| {
            posting
                .legs()
                .iter()
                .find(|l| l.amount.signum() == sign)
                .unwrap()
        };
        let from = self
            .ids
            .iter()
            .position(|id| *id == leg(-1).account_id)
            .unwrap();
        let to = self
            .ids
            .iter()
            .position(|id| *id == leg(1).account_id)
            .unwrap();
        let amount = leg(1).amount;
        let already = earlier.is_some_and(|i| m.postings[i].1);
        let affordable = from == EXT || m.available(from) >= amount;
        let result = self.ledger.post(&posting).await;
        match (&result, already, affordable) {
            (Ok(Posted::Replayed { .. }), true, _) => {}
            (Ok(Posted::Applied { .. }), false, true) => {
                m.balance[from] -= amount;
                m.balance[to] += amount;
            }
            (Err(LedgerError::InsufficientFunds { .. }), false, false) => {}
            other => return Err(format!("{other:?}")),
        }
        match earlier {
            Some(i) => m.postings[i].1 |= result.is_ok(),
            None => m.postings.push((posting, result.is_ok())),
        }
        Ok(())
    }

    async fn step(&self, m: &mut Model, step: usize, op: &Op) -> Result<(), String> {
        let sources: Vec<String> = SOURCES.iter().map(|&i| self.ids[i].clone()).collect();
        match *op {
            Op::TopUp(a) => {
                self.post(m, self.transfer(step, EXT, PAID, a), None)
                    .await?
            }
            Op::Grant(a) => {
                self.post(m, self.transfer(step, EXT, GRANT, a), None)
                    .await?
            }
            Op::Spend(a) => {
                self.post(m, self.transfer(step, PAID, REV, a), None)
                    .await?
            }
            Op::Replay(i) if !m.postings.is_empty() => {
                let i = i % m.postings.len();
                self.post(m, m.postings[i].0.clone(), Some(i)).await?
            }
            Op::Reserve(a) => {
                let key = format!("{}:{step}", self.name);
                let result = self
                    .ledger
                    .reserve(&key, None, &sources, Nanos::new(a), HOUR)
                    .await;
                let total: i64 = SOURCES.iter().map(|&i| m.available(i)).sum();
                match result {
                    Ok(hold) if total >= a => {
                        let mut parts = Vec::new();
                        let mut left = a;
                        for &i in &SOURCES {
                            let take = m.available(i).min(left);
                            if take > 0 {
                                parts.push((i, take));
                                m.held[i] += take;
                                left -= take;
                            }
                        }
                        let got: Vec<(usize, i64)> = hold
                            .parts
                            .iter()
                            .map(|(id, amt)| (self.ids.iter().position(|x| x == id).unwrap(), *amt))
                            .collect();
                        if got != parts {
                            return Err(format!("parts {got:?}, model {parts:?}"));
                        }
                        m.holds.push((hold.id, parts, true));
                    }
                    Err(LedgerError::InsufficientFunds { .. }) if total < a => {}
                    other => return Err(format!("reserve {a} with {total} available: {other:?}")),
                }
            }
            Op::Settle(h, permille) if !m.holds.is_empty() => {
                let h = h % m.holds.len();
                let (id, parts, open) = m.holds[h].clone();
                let reserved: i64 = parts.iter().map(|p| p.1).sum();
                let actual = reserved * permille / 1000;
                let result = self
                    .ledger
                    .settle(&id, Nanos::new(actual), &self.ids[REV], "")
                    .await;
                match result {
                    Ok(hold) if open && hold.status == HoldStatus::Settled => {
                        m.release(h);
                        let mut left = actual;
                        for (i, part) in parts {
                            let take = part.min(left);
                            m.balance[i] -= take;
                            left -= take;
                        }
                        m.balance[REV] += actual;
                    }
                    Err(LedgerError::HoldNotOpen) if !open => {}
                    other => return Err(format!("settle: {other:?}")),
                }
            }
            Op::Void(h) if !m.holds.is_empty() => {
                let h = h % m.holds.len();
                let open = m.holds[h].2;
                match self.ledger.void(&m.holds[h].0).await {
                    Ok(_) if open => m.release(h),
                    Err(LedgerError::HoldNotOpen) if !open => {}
                    other => return Err(format!("void: {other:?}")),
                }
            }
            Op::ExpireAll => {
                // Only this case's holds are open in the model; other cases' were resolved.
                let open: Vec<usize> = (0..m.holds.len()).filter(|&h| m.holds[h].2).collect();
                let n = self
                    .ledger
                    .expire_holds(db::now_ms() + 2 * HOUR)
                    .await
                    .map_err(|e| e.to_string())?;
                if n != open.len() as u64 {
                    return Err(format!("expired {n}, model {}", open.len()));
                }
                for h in open {
                    m.release(h);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

async fn run_case(ledger: &Ledger, name: String, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut ids = Vec::new();
    for (n, kind) in ACCOUNTS {
        let spec = AccountSpec {
            code: format!("{name}:{n}"),
            org_id: None,
            kind,
            expires_at: None,
        };
        ids.push(ledger.open_account(&spec).await.unwrap().id);
    }
    let case = Case { ledger, name, ids };
    let mut m = Model::default();
    let mut result = Ok(());
    for (step, op) in ops.iter().enumerate() {
        if let Err(e) = case.step(&mut m, step, op).await {
            result = Err(TestCaseError::fail(format!("step {step} {op:?}: {e}")));
            break;
        }
        for (i, (n, _)) in ACCOUNTS.iter().enumerate() {
            let a = ledger
                .account_by_code(&format!("{}:{n}", case.name))
                .await
                .unwrap()
                .unwrap();
            if (a.balance.get(), a.held.get()) != (m.balance[i], m.held[i]) {
                result = Err(TestCaseError::fail(format!(
                    "step {step} {op:?}: {n} is {}/{} held, model {}/{}",
                    a.balance.get(),
                    a.held.get(),
                    m.balance[i],
                    m.held[i]
                )));
                break;
            }
        }
        if let Err(v) = ledger.verify().await.unwrap() {
            result = Err(TestCaseError::fail(format!("step {step} {op:?}: {v}")));
        }
        if result.is_err() {
            break;
        }
    }
    // Leave no hold open for the next case's expiry step to find.
    ledger.expire_holds(db::now_ms() + 2 * HOUR).await.unwrap();
    result
}

#[test]
fn random_money_movements_match_a_reference_model() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dbs = rt.block_on(TestDb::all());
    for t in &dbs {
        let ledger = Ledger::new(t.db.clone());
        let mut runner = TestRunner::new(ProptestConfig {
            cases: 40,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        // Each run (shrinking included) gets accounts of its own.
        let case = Cell::new(0u32);
        runner
            .run(&prop::collection::vec(op(), 1..40), |ops| {
                case.set(case.get() + 1);
                rt.block_on(run_case(&ledger, format!("case{}", case.get()), &ops))
            })
            .unwrap_or_else(|e| panic!("{:?}: {e}", t.db.backend()));
    }
    for t in dbs {
        rt.block_on(t.finish());
    }
}
