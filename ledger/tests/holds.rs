//! Holds on real databases: burn order, settle and release, resolve-once, expiry, and
//! concurrent reservations (RELIABILITY M5, M4).

use db::testing::TestDb;
use ledger::{AccountKind, AccountSpec, HoldStatus, Ledger, LedgerError, Nanos, Posting};

struct Wallet {
    ledger: Ledger,
    stripe: String,
    program: String,
    paid: String,
    grant_soon: String,
    grant_later: String,
    revenue: String,
    expired: String,
}

const HOUR: i64 = 3_600_000;

async fn open(ledger: &Ledger, code: &str, kind: AccountKind, expires_at: Option<i64>) -> String {
    ledger
        .open_account(&AccountSpec {
            code: code.into(),
            org_id: Some("org".into()),
            kind,
            expires_at,
        })
        .await
        .unwrap()
        .id
}

/// A wallet: 100 paid, a grant of 30 expiring in 1 h and one of 50 expiring in 2 h (nano-dollars).
async fn wallet(t: &TestDb) -> Wallet {
    let ledger = Ledger::new(t.db.clone());
    let now = db::now_ms();
    let w = Wallet {
        stripe: open(&ledger, "stripe", AccountKind::External, None).await,
        program: open(&ledger, "program", AccountKind::External, None).await,
        paid: open(&ledger, "paid", AccountKind::WalletPaid, None).await,
        grant_soon: open(
            &ledger,
            "grant-soon",
            AccountKind::WalletGrant,
            Some(now + HOUR),
        )
        .await,
        grant_later: open(
            &ledger,
            "grant-later",
            AccountKind::WalletGrant,
            Some(now + 2 * HOUR),
        )
        .await,
        revenue: open(&ledger, "revenue", AccountKind::Revenue, None).await,
        expired: open(&ledger, "expired", AccountKind::Expired, None).await,
        ledger,
    };
    for (key, from, to, amount) in [
        ("topup", &w.stripe, &w.paid, 100),
        ("grant-1", &w.program, &w.grant_soon, 30),
        ("grant-2", &w.program, &w.grant_later, 50),
    ] {
        let p = Posting::transfer(key, "test", "", None, from, to, Nanos::new(amount)).unwrap();
        w.ledger.post(&p).await.unwrap();
    }
    w
}

impl Wallet {
    /// Burn order: grants that expire soonest first, then paid.
    fn sources(&self) -> Vec<String> {
        vec![
            self.grant_soon.clone(),
            self.grant_later.clone(),
            self.paid.clone(),
        ]
    }

    async fn balances(&self) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        for code in ["grant-soon", "grant-later", "paid", "revenue"] {
            let a = self.ledger.account_by_code(code).await.unwrap().unwrap();
            out.push((a.balance.get(), a.held.get()));
        }
        out
    }

    /// What the soonest grant and paid credit have, in burn order: a hold of 40 over them
    /// spans both.
    fn the_grant_and_paid(&self) -> Vec<(String, i64)> {
        vec![(self.grant_soon.clone(), 30), (self.paid.clone(), 100)]
    }

    /// `reserved` is a hold of 40 over [`Wallet::the_grant_and_paid`], written as it should be.
    async fn holds_40_over_the_grant_and_paid(&self, reserved: &ledger::Reserved) {
        assert_eq!(
            reserved.parts,
            vec![(self.grant_soon.clone(), 30), (self.paid.clone(), 10)],
            "the hold keeps its burn order"
        );
        assert_eq!(
            self.balances().await,
            vec![(30, 30), (50, 0), (100, 10), (0, 0)]
        );
        assert_eq!(self.ledger.verify().await.unwrap(), Ok(()));
    }
}

/// Writes a hold of `amount` over `sources` (account, available) as admission does: planned
/// from those reads, then reserved in one metering commit. Owned arguments, so it can run on
/// a task of its own while the test holds locks.
async fn write_hold(
    ledger: Ledger,
    db: db::Db,
    key: &'static str,
    sources: Vec<(String, i64)>,
    amount: i64,
) -> Result<ledger::Reserved, LedgerError> {
    let mut writes = db.batch();
    let reserved = ledger
        .reserve_read(
            &mut writes,
            key,
            Some("org"),
            &sources,
            Nanos::new(amount),
            HOUR,
        )
        .unwrap();
    db.begin_metering()
        .await
        .unwrap()
        .commit_with(writes)
        .await
        .map(|_| reserved)
        .map_err(LedgerError::from)
}

/// [`write_hold`] on a task of its own, given 300 ms to reach the lock the test holds and wait.
async fn waiting_hold(
    w: &Wallet,
    t: &TestDb,
    key: &'static str,
    sources: Vec<(String, i64)>,
    amount: i64,
) -> tokio::task::JoinHandle<Result<ledger::Reserved, LedgerError>> {
    let hold = tokio::spawn(write_hold(
        w.ledger.clone(),
        t.db.clone(),
        key,
        sources,
        amount,
    ));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    hold
}

db::storage_test!(
    async fn a_hold_burns_soonest_expiring_grants_first_and_releases_the_rest(t) {
        let w = wallet(&t).await;
        let hold = w
            .ledger
            .reserve("job-1", Some("org"), &w.sources(), Nanos::new(90), HOUR)
            .await
            .unwrap();
        assert_eq!(
            hold.parts,
            vec![
                (w.grant_soon.clone(), 30),
                (w.grant_later.clone(), 50),
                (w.paid.clone(), 10)
            ]
        );
        assert_eq!(
            w.balances().await,
            vec![(30, 30), (50, 50), (100, 10), (0, 0)]
        );

        let settled = w
            .ledger
            .settle(&hold.id, Nanos::new(45), &w.revenue, "job 1")
            .await
            .unwrap();
        assert_eq!(settled.status, HoldStatus::Settled);
        assert_eq!(settled.settled_amount, Some(Nanos::new(45)));
        // 30 from the first grant, 15 from the second; the paid part released.
        assert_eq!(w.balances().await, vec![(0, 0), (35, 0), (100, 0), (45, 0)]);
        assert_eq!(w.ledger.verify().await.unwrap(), Ok(()));
        t.finish().await;
    }
);

db::storage_test!(
    async fn a_hold_resolves_exactly_once(t) {
        let w = wallet(&t).await;
        let hold = w
            .ledger
            .reserve("job-1", None, &w.sources(), Nanos::new(20), HOUR)
            .await
            .unwrap();
        // The same key returns the same hold, reserving nothing more.
        let again = w
            .ledger
            .reserve("job-1", None, &w.sources(), Nanos::new(20), HOUR)
            .await
            .unwrap();
        assert_eq!(again.id, hold.id);
        w.ledger
            .settle(&hold.id, Nanos::new(5), &w.revenue, "")
            .await
            .unwrap();
        for result in [
            w.ledger
                .settle(&hold.id, Nanos::new(5), &w.revenue, "")
                .await,
            w.ledger.void(&hold.id).await,
        ] {
            assert!(
                matches!(result, Err(LedgerError::HoldNotOpen)),
                "{result:?}"
            );
        }
        assert_eq!(
            w.ledger
                .expire_holds(db::now_ms() + 10 * HOUR)
                .await
                .unwrap(),
            0
        );
        assert_eq!(w.balances().await[3], (5, 0));
        let over = w
            .ledger
            .reserve("job-2", None, &w.sources(), Nanos::new(10), HOUR)
            .await
            .unwrap();
        let too_much = w
            .ledger
            .settle(&over.id, Nanos::new(11), &w.revenue, "")
            .await;
        assert!(matches!(too_much, Err(LedgerError::SettleExceedsHold)));
        w.ledger.void(&over.id).await.unwrap();
        assert_eq!(
            w.ledger.hold(&over.id).await.unwrap().unwrap().status,
            HoldStatus::Voided
        );
        assert_eq!(w.ledger.verify().await.unwrap(), Ok(()));
        t.finish().await;
    }
);

db::storage_test!(
    async fn a_hold_beyond_the_balance_reserves_nothing(t) {
        let w = wallet(&t).await;
        let r = w
            .ledger
            .reserve("big", None, &w.sources(), Nanos::new(181), HOUR)
            .await;
        assert!(
            matches!(r, Err(LedgerError::InsufficientFunds { .. })),
            "{r:?}"
        );
        assert_eq!(w.balances().await, vec![(30, 0), (50, 0), (100, 0), (0, 0)]);
        // Held money cannot be spent by a plain posting either.
        w.ledger
            .reserve(
                "most",
                None,
                std::slice::from_ref(&w.paid),
                Nanos::new(95),
                HOUR,
            )
            .await
            .unwrap();
        let spend = Posting::transfer(
            "spend",
            "test",
            "",
            None,
            &w.paid,
            &w.revenue,
            Nanos::new(6),
        )
        .unwrap();
        assert!(matches!(
            w.ledger.post(&spend).await,
            Err(LedgerError::InsufficientFunds { .. })
        ));
        t.finish().await;
    }
);

db::storage_test!(
    async fn expired_holds_release_their_money_and_lapsed_grants_leave_through_a_posting(t) {
        let w = wallet(&t).await;
        let hold = w
            .ledger
            .reserve("crashed-job", None, &w.sources(), Nanos::new(40), HOUR)
            .await
            .unwrap();
        // Before its TTL nothing happens; after it, the hold expires once.
        assert_eq!(w.ledger.expire_holds(db::now_ms()).await.unwrap(), 0);
        assert_eq!(
            w.ledger
                .expire_holds(db::now_ms() + 2 * HOUR)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            w.ledger.hold(&hold.id).await.unwrap().unwrap().status,
            HoldStatus::Expired
        );
        assert_eq!(w.balances().await, vec![(30, 0), (50, 0), (100, 0), (0, 0)]);

        // The soon grant lapses: its balance moves to the expired account, once.
        let later = db::now_ms() + HOUR + 1;
        assert!(
            w.ledger
                .sweep_expired(&w.grant_soon, &w.expired, db::now_ms())
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            w.ledger
                .sweep_expired(&w.grant_soon, &w.expired, later)
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            w.ledger
                .sweep_expired(&w.grant_soon, &w.expired, later)
                .await
                .unwrap()
                .is_none()
        );
        let expired = w.ledger.account_by_code("expired").await.unwrap().unwrap();
        assert_eq!(expired.balance.get(), 30);
        assert_eq!(w.ledger.verify().await.unwrap(), Ok(()));
        t.finish().await;
    }
);

db::storage_test!(
    threads = 4;
    /// N concurrent reservations of x against a balance B: exactly ⌊B/x⌋ succeed.
    async fn concurrent_reservations_never_overcommit(t) {
        let w = wallet(&t).await;
        let (total, x, n) = (180, 25, 16);
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let ledger = w.ledger.clone();
                let sources = w.sources();
                tokio::spawn(async move {
                    ledger
                        .reserve(&format!("job-{i}"), None, &sources, Nanos::new(x), HOUR)
                        .await
                })
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
        assert_eq!(ok, total / x, "{:?}", t.db.backend());
        let held: i64 = w.balances().await.iter().map(|(_, h)| h).sum();
        assert_eq!(held, (total / x) * x);
        assert_eq!(w.ledger.verify().await.unwrap(), Ok(()));
        t.finish().await;
    }
);

db::storage_test!(
    threads = 4;
    /// Settlements and voids of holds that span the same two accounts, all at once, where burn
    /// order is the reverse of id order: each locks the accounts in id order (PostgreSQL), so none
    /// waits on another in a cycle and every one resolves; what was settled is charged once.
    async fn concurrent_settlements_and_voids_on_shared_accounts_all_resolve(t) {
        const HOLDS: i64 = 24;
        let w = wallet(&t).await;
        // `grant_soon` was opened after `paid`: it has the larger id, and burns first.
        assert!(w.grant_soon > w.paid);
        let sources = vec![w.grant_soon.clone(), w.paid.clone()];
        // The first takes the grant's 30 and 1 of paid; each later one 1 of a fresh top-up of
        // the grant and 1 of paid.
        let mut holds = vec![
            w.ledger
                .reserve("span-0", None, &sources, Nanos::new(31), HOUR)
                .await
                .unwrap(),
        ];
        for i in 1..HOLDS {
            let top_up = Posting::transfer(
                format!("top-up-{i}"),
                "test",
                "",
                None,
                &w.program,
                &w.grant_soon,
                Nanos::new(1),
            )
            .unwrap();
            w.ledger.post(&top_up).await.unwrap();
            let hold = w
                .ledger
                .reserve(&format!("span-{i}"), None, &sources, Nanos::new(2), HOUR)
                .await
                .unwrap();
            assert_eq!(hold.parts.len(), 2, "{:?}", hold.parts);
            holds.push(hold);
        }
        let tasks: Vec<_> = holds
            .iter()
            .enumerate()
            .map(|(i, hold)| {
                let (ledger, id, revenue) = (w.ledger.clone(), hold.id.clone(), w.revenue.clone());
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        ledger.settle(&id, Nanos::new(1), &revenue, "job").await
                    } else {
                        ledger.void(&id).await
                    }
                })
            })
            .collect();
        for task in tasks {
            let resolved = task.await.unwrap();
            assert!(resolved.is_ok(), "{:?}: {resolved:?}", t.db.backend());
        }
        let settled = HOLDS / 2;
        // Every settlement drew its 1 from the grant (first in burn order); nothing stays held.
        let grant = w
            .ledger
            .account_by_code("grant-soon")
            .await
            .unwrap()
            .unwrap();
        let paid = w.ledger.account_by_code("paid").await.unwrap().unwrap();
        let revenue = w.ledger.account_by_code("revenue").await.unwrap().unwrap();
        assert_eq!((grant.held.get(), paid.held.get()), (0, 0));
        assert_eq!(grant.balance.get(), 30 + (HOLDS - 1) - settled);
        assert_eq!(paid.balance.get(), 100);
        assert_eq!(revenue.balance.get(), settled);
        t.finish().await;
    }
);

/// A hold takes its accounts' reserves rows in id order, as postings do (PostgreSQL). A hold
/// that spans a grant (first in burn order, but the larger id) and paid credit, written while
/// another transaction (a debit) holds the paid account's reserves row and then wants the
/// grant's, waits for it; taking the grant first, in burn order, would deadlock with it, and
/// PostgreSQL would fail one of the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_locks_its_accounts_in_id_order_and_never_deadlocks_with_another_writer() {
    // Row locks between writers: SQLite has one writer at a time.
    let Some(t) = TestDb::postgres().await else {
        return;
    };
    let w = wallet(&t).await;
    assert!(
        w.paid < w.grant_soon,
        "account ids follow the order they opened in"
    );
    let lock = "UPDATE ledger_account_reserves SET reserved = reserved WHERE account_id = $1";
    let mut other = t.db.pool().begin().await.unwrap();
    db::sqlx::query(lock)
        .bind(&w.paid)
        .execute(&mut *other)
        .await
        .unwrap();

    // The hold's statement waits for the paid account.
    let hold = waiting_hold(&w, &t, "spans-both", w.the_grant_and_paid(), 40).await;
    db::sqlx::query(lock)
        .bind(&w.grant_soon)
        .execute(&mut *other)
        .await
        .expect("the other writer takes the grant's reserves: the hold does not hold them");
    other.commit().await.unwrap();

    let reserved = hold
        .await
        .unwrap()
        .expect("the hold is written once the row is free");
    w.holds_40_over_the_grant_and_paid(&reserved).await;
    t.finish().await;
}

/// A hold never waits for a settlement (PostgreSQL): a settlement updates its accounts' rows
/// and keeps them locked until it commits, and a hold reserves on the reserves rows only. So
/// with another transaction holding both of the wallet's account rows, a hold is written at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_does_not_wait_for_a_settlement_of_its_accounts() {
    // Row locks between writers: SQLite has one writer at a time.
    let Some(t) = TestDb::postgres().await else {
        return;
    };
    let w = wallet(&t).await;
    let mut settling = t.db.pool().begin().await.unwrap();
    for account in [&w.grant_soon, &w.paid] {
        db::sqlx::query("UPDATE ledger_accounts SET balance = balance WHERE id = $1")
            .bind(account)
            .execute(&mut *settling)
            .await
            .unwrap();
    }
    let sources = w.the_grant_and_paid();
    let reserved = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        write_hold(
            w.ledger.clone(),
            t.db.clone(),
            "beside-a-settlement",
            sources,
            40,
        ),
    )
    .await
    .expect("the hold does not wait for the locked account rows")
    .unwrap();
    settling.rollback().await.unwrap();
    w.holds_40_over_the_grant_and_paid(&reserved).await;
    t.finish().await;
}

/// A hold checks the funds against an account row that may be older than the reserves row it
/// writes (PostgreSQL). A debit outside a hold therefore goes through the reserves row too: a
/// hold that waited for a refund taking most of the paid credit sees what the refund took,
/// and is refused rather than reserving money that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_that_waited_for_a_debit_sees_what_it_took() {
    // Row locks between writers: SQLite has one writer at a time.
    let Some(t) = TestDb::postgres().await else {
        return;
    };
    let w = wallet(&t).await;
    let mut refund = t.db.pool().begin().await.unwrap();
    let taken = Posting::transfer(
        "refund",
        "test",
        "",
        None,
        &w.paid,
        &w.stripe,
        Nanos::new(95),
    )
    .unwrap();
    w.ledger.post_in(&mut refund, &taken).await.unwrap();

    // The hold's statement reads the paid account as it was and waits for its reserves.
    let sources = vec![(w.paid.clone(), 100)];
    let hold = waiting_hold(&w, &t, "after-the-refund", sources, 10).await;
    refund.commit().await.unwrap();

    let refused = hold.await.unwrap();
    assert!(
        matches!(refused, Err(LedgerError::InsufficientFunds { ref account }) if *account == w.paid),
        "{refused:?}"
    );
    assert_eq!(w.balances().await, vec![(30, 0), (50, 0), (5, 0), (0, 0)]);
    assert_eq!(w.ledger.verify().await.unwrap(), Ok(()));
    t.finish().await;
}

db::storage_test!(
    async fn holds_settled_together_each_charge_their_own_and_fall_together(t) {
        let w = wallet(&t).await;
        let mut holds = Vec::new();
        for (key, amount) in [("job-1", 40), ("job-2", 20), ("job-3", 30)] {
            let h = w
                .ledger
                .reserve(key, Some("org"), &w.sources(), Nanos::new(amount), HOUR)
                .await
                .unwrap();
            holds.push(ledger::Reserved::from(h));
        }
        // 40 = 30 of the first grant and 10 of the second; 20 of the second; 20 of the second
        // and 10 paid. Every hold draws on the second grant, whose row is updated once.
        let charge = |i: usize, actual: i64| ledger::ToSettle {
            hold: &holds[i],
            actual: Nanos::new(actual),
            to: &w.revenue,
            memo: "together",
        };
        let mut writes = t.db.batch();
        let settled = w
            .ledger
            .settle_many_into(&mut writes, &[charge(0, 35), charge(1, 0), charge(2, 25)])
            .unwrap();
        t.db.begin_metering()
            .await
            .unwrap()
            .commit_with(writes)
            .await
            .unwrap();
        assert_eq!(
            settled[0].drawn,
            vec![(w.grant_soon.clone(), 30), (w.grant_later.clone(), 5)]
        );
        assert!(settled[1].drawn.is_empty() && settled[1].transaction_id.is_none());
        assert_eq!(
            settled[2].drawn,
            vec![(w.grant_later.clone(), 20), (w.paid.clone(), 5)]
        );
        assert_ne!(settled[0].transaction_id, settled[2].transaction_id);
        // As if settled one by one: each account's draws and releases added up.
        assert_eq!(w.balances().await, vec![(0, 0), (25, 0), (95, 0), (60, 0)]);
        for (hold, amount) in holds.iter().zip([35, 0, 25]) {
            let h = w.ledger.hold(&hold.id).await.unwrap().unwrap();
            assert_eq!(h.status, HoldStatus::Settled);
            assert_eq!(h.settled_amount, Some(Nanos::new(amount)));
        }
        assert_eq!(w.ledger.verify().await.unwrap(), Ok(()));

        // One hold of a batch no longer open: nothing of the batch stays.
        let mut next = Vec::new();
        for key in ["job-4", "job-5"] {
            let h = w
                .ledger
                .reserve(key, Some("org"), &w.sources(), Nanos::new(10), HOUR)
                .await
                .unwrap();
            next.push(ledger::Reserved::from(h));
        }
        w.ledger.void(&next[1].id).await.unwrap();
        let before = w.balances().await;
        let mut writes = t.db.batch();
        w.ledger
            .settle_many_into(
                &mut writes,
                &[
                    ledger::ToSettle {
                        hold: &next[0],
                        actual: Nanos::new(10),
                        to: &w.revenue,
                        memo: "",
                    },
                    ledger::ToSettle {
                        hold: &next[1],
                        actual: Nanos::new(10),
                        to: &w.revenue,
                        memo: "",
                    },
                ],
            )
            .unwrap();
        let refused =
            t.db.begin_metering()
                .await
                .unwrap()
                .commit_with(writes)
                .await
                .map_err(LedgerError::from);
        assert!(
            matches!(refused, Err(LedgerError::HoldNotOpen)),
            "{refused:?}"
        );
        assert_eq!(w.balances().await, before);
        assert_eq!(
            w.ledger.hold(&next[0].id).await.unwrap().unwrap().status,
            HoldStatus::Open
        );
        assert_eq!(w.ledger.verify().await.unwrap(), Ok(()));
        t.finish().await;
    }
);
