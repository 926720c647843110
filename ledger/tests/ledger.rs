//! The ledger on real databases (SQLite always, PostgreSQL with `TEST_DATABASE_URL`):
//! balanced postings, no overdraft, idempotency under replay and concurrency, and a property
//! test against a reference model (RELIABILITY M1, M4).

use std::cell::Cell;

use db::testing::TestDb;
use ledger::{AccountKind, AccountSpec, Ledger, LedgerError, Nanos, Posted, Posting};
use proptest::{prelude::*, test_runner::TestRunner};

async fn open(ledger: &Ledger, code: &str, kind: AccountKind) -> String {
    ledger
        .open_account(&AccountSpec {
            code: code.into(),
            org_id: None,
            kind,
            expires_at: None,
        })
        .await
        .unwrap()
        .id
}

async fn balance(ledger: &Ledger, code: &str) -> i64 {
    ledger
        .account_by_code(code)
        .await
        .unwrap()
        .unwrap()
        .balance
        .get()
}

fn transfer(key: &str, from: &str, to: &str, amount: i64) -> Posting {
    Posting::transfer(key, "test", "test", None, from, to, Nanos::new(amount)).unwrap()
}

#[tokio::test]
async fn transfers_move_money_exactly_and_overdrafts_change_nothing() {
    for t in TestDb::all().await {
        let ledger = Ledger::new(t.db.clone());
        let stripe = open(&ledger, "stripe", AccountKind::External).await;
        let wallet = open(&ledger, "wallet", AccountKind::WalletPaid).await;
        let revenue = open(&ledger, "revenue", AccountKind::Revenue).await;
        // Opening again returns the same account.
        assert_eq!(
            open(&ledger, "wallet", AccountKind::WalletPaid).await,
            wallet
        );

        ledger
            .post(&transfer("topup", &stripe, &wallet, 100))
            .await
            .unwrap();
        ledger
            .post(&transfer("use-1", &wallet, &revenue, 60))
            .await
            .unwrap();
        let over = ledger.post(&transfer("use-2", &wallet, &revenue, 41)).await;
        assert!(
            matches!(over, Err(LedgerError::InsufficientFunds { .. })),
            "{over:?}"
        );
        assert_eq!(balance(&ledger, "stripe").await, -100);
        assert_eq!(balance(&ledger, "wallet").await, 40);
        assert_eq!(balance(&ledger, "revenue").await, 60);
        // The refused posting left no trace: its key is still free.
        ledger
            .post(&transfer("use-2", &wallet, &revenue, 40))
            .await
            .unwrap();
        assert_eq!(balance(&ledger, "wallet").await, 0);

        let unknown = ledger
            .post(&transfer("x", &stripe, "no-such-account", 1))
            .await;
        assert!(
            matches!(unknown, Err(LedgerError::UnknownAccount(_))),
            "{unknown:?}"
        );
        assert_eq!(ledger.verify().await.unwrap(), Ok(()));
        t.finish().await;
    }
}

#[tokio::test]
async fn a_replayed_key_applies_once_and_a_reused_key_is_refused() {
    for t in TestDb::all().await {
        let ledger = Ledger::new(t.db.clone());
        let stripe = open(&ledger, "stripe", AccountKind::External).await;
        let wallet = open(&ledger, "wallet", AccountKind::WalletPaid).await;
        let first = ledger
            .post(&transfer("evt_1", &stripe, &wallet, 500))
            .await
            .unwrap();
        let again = ledger
            .post(&transfer("evt_1", &stripe, &wallet, 500))
            .await
            .unwrap();
        assert!(matches!(first, Posted::Applied { .. }));
        assert_eq!(
            again,
            Posted::Replayed {
                transaction_id: first.transaction_id().to_string()
            }
        );
        let different = ledger.post(&transfer("evt_1", &stripe, &wallet, 501)).await;
        assert!(matches!(
            different,
            Err(LedgerError::IdempotencyConflict(_))
        ));
        assert_eq!(balance(&ledger, "wallet").await, 500);
        t.finish().await;
    }
}

/// M4: N concurrent debits of x against balance B: exactly ⌊B/x⌋ succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_debits_never_overdraw() {
    for t in TestDb::all().await {
        let ledger = Ledger::new(t.db.clone());
        let stripe = open(&ledger, "stripe", AccountKind::External).await;
        let wallet = open(&ledger, "wallet", AccountKind::WalletPaid).await;
        let revenue = open(&ledger, "revenue", AccountKind::Revenue).await;
        let (b, x, n) = (1_000, 70, 24);
        ledger
            .post(&transfer("topup", &stripe, &wallet, b))
            .await
            .unwrap();
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let ledger = ledger.clone();
                let p = transfer(&format!("debit-{i}"), &wallet, &revenue, x);
                tokio::spawn(async move { ledger.post(&p).await })
            })
            .collect();
        let mut ok = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => ok += 1,
                Err(LedgerError::InsufficientFunds { .. }) => {}
                Err(e) => panic!("{:?}: {e}", t.db.backend()),
            }
        }
        assert_eq!(ok, b / x, "{:?}", t.db.backend());
        assert_eq!(balance(&ledger, "wallet").await, b - (b / x) * x);
        assert_eq!(ledger.verify().await.unwrap(), Ok(()));
        t.finish().await;
    }
}

/// K concurrent replays of one posting (a webhook delivered many times): one credit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_replays_credit_once() {
    for t in TestDb::all().await {
        let ledger = Ledger::new(t.db.clone());
        let stripe = open(&ledger, "stripe", AccountKind::External).await;
        let wallet = open(&ledger, "wallet", AccountKind::WalletPaid).await;
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let ledger = ledger.clone();
                let p = transfer("evt_same", &stripe, &wallet, 2_500);
                tokio::spawn(async move { ledger.post(&p).await })
            })
            .collect();
        let mut applied = 0;
        for task in tasks {
            if let Posted::Applied { .. } = task.await.unwrap().unwrap() {
                applied += 1;
            }
        }
        assert_eq!(applied, 1, "{:?}", t.db.backend());
        assert_eq!(balance(&ledger, "wallet").await, 2_500);
        t.finish().await;
    }
}

/// One step of the property test: a transfer between two of the accounts, or a replay of an
/// earlier step.
#[derive(Debug, Clone)]
enum Op {
    Transfer { from: usize, to: usize, amount: i64 },
    Replay(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..ACCOUNTS.len(), 0..ACCOUNTS.len(), 1i64..400)
            .prop_filter("two accounts", |(f, t, _)| f != t)
            .prop_map(|(from, to, amount)| Op::Transfer { from, to, amount }),
        1 => (0usize..64).prop_map(Op::Replay),
    ]
}

/// Account 0 is external (may go negative); the others may not.
const ACCOUNTS: [(&str, AccountKind); 4] = [
    ("ext", AccountKind::External),
    ("paid", AccountKind::WalletPaid),
    ("grant", AccountKind::WalletGrant),
    ("rev", AccountKind::Revenue),
];

async fn run_case(ledger: &Ledger, case: &str, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut ids = Vec::new();
    for (name, kind) in ACCOUNTS {
        ids.push(open(ledger, &format!("{case}:{name}"), kind).await);
    }
    let mut model = [0i64; 4];
    // Every posting tried so far, and whether it applied.
    let mut history: Vec<(Posting, bool)> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        let (posting, replay_of) = match op {
            Op::Transfer { from, to, amount } => {
                let key = format!("{case}:{step}");
                (transfer(&key, &ids[*from], &ids[*to], *amount), None)
            }
            Op::Replay(i) if !history.is_empty() => {
                let i = i % history.len();
                (history[i].0.clone(), Some(history[i].1))
            }
            Op::Replay(_) => continue,
        };
        let result = ledger.post(&posting).await;
        let legs = posting.legs();
        let from = ids
            .iter()
            .position(|id| *id == legs.iter().find(|l| l.amount < 0).unwrap().account_id)
            .unwrap();
        let to = ids
            .iter()
            .position(|id| *id == legs.iter().find(|l| l.amount > 0).unwrap().account_id)
            .unwrap();
        let amount = legs.iter().find(|l| l.amount > 0).unwrap().amount;
        let affordable = from == 0 || model[from] >= amount;
        match (replay_of, &result) {
            // A replay of an applied posting: nothing moves again.
            (Some(true), Ok(Posted::Replayed { .. })) => {}
            // A replay of a refused one is a fresh attempt under the same key.
            (Some(false) | None, Ok(Posted::Applied { .. })) if affordable => {
                model[from] -= amount;
                model[to] += amount;
            }
            (Some(false) | None, Err(LedgerError::InsufficientFunds { .. })) if !affordable => {}
            other => {
                return Err(TestCaseError::fail(format!(
                    "step {step} {op:?}: {other:?}"
                )));
            }
        }
        let applied = result.is_ok();
        match replay_of {
            Some(_) => {
                if let Some(h) = history.iter_mut().find(|(p, _)| p.key() == posting.key()) {
                    h.1 |= applied;
                }
            }
            None => history.push((posting, applied)),
        }
        for (i, (name, _)) in ACCOUNTS.iter().enumerate() {
            prop_assert_eq!(balance(ledger, &format!("{case}:{name}")).await, model[i]);
        }
        prop_assert_eq!(ledger.verify().await.unwrap(), Ok(()));
    }
    Ok(())
}

#[test]
fn random_postings_and_replays_match_a_reference_model() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dbs = rt.block_on(TestDb::all());
    for t in &dbs {
        let ledger = Ledger::new(t.db.clone());
        let mut runner = TestRunner::new(ProptestConfig {
            cases: 32,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        // Each run (shrinking included) gets accounts of its own.
        let case = Cell::new(0u32);
        runner
            .run(&prop::collection::vec(op(), 1..40), |ops| {
                case.set(case.get() + 1);
                rt.block_on(run_case(&ledger, &format!("case{}", case.get()), &ops))
            })
            .unwrap_or_else(|e| panic!("{:?}: {e}", t.db.backend()));
    }
    for t in dbs {
        rt.block_on(t.finish());
    }
}
