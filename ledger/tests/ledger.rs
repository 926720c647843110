//! The ledger on real databases (SQLite always, PostgreSQL with `TEST_DATABASE_URL`):
//! balanced postings, no overdraft, idempotency under replay and concurrency
//! (RELIABILITY M1, M4). The reference-model property test is in `model.rs`.

use ledger::{AccountKind, AccountSpec, Ledger, LedgerError, Nanos, Posted, Posting};

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

db::storage_test!(
    async fn transfers_move_money_exactly_and_overdrafts_change_nothing(t) {
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
);

db::storage_test!(
    async fn a_replayed_key_applies_once_and_a_reused_key_is_refused(t) {
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
);

db::storage_test!(
    threads = 4;
    /// M4: N concurrent debits of x against balance B: exactly ⌊B/x⌋ succeed.
    async fn concurrent_debits_never_overdraw(t) {
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
);

db::storage_test!(
    threads = 4;
    /// K concurrent replays of one posting (a webhook delivered many times): one credit.
    async fn concurrent_replays_credit_once(t) {
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
);

db::storage_test!(
    async fn wallet_history_filters_pages_and_totals(t) {
        let ledger = Ledger::new(t.db.clone());
        let open = |code: &str, org: Option<&str>, kind| AccountSpec {
            code: code.into(),
            org_id: org.map(str::to_string),
            kind,
            expires_at: None,
        };
        let ext = ledger
            .open_account(&open("ext", None, AccountKind::External))
            .await
            .unwrap();
        let paid = ledger
            .open_account(&open("paid", Some("o1"), AccountKind::WalletPaid))
            .await
            .unwrap();
        let rev = ledger
            .open_account(&open("rev", None, AccountKind::Revenue))
            .await
            .unwrap();
        for i in 0..5 {
            let p = Posting::transfer(
                format!("t{i}"),
                "top_up",
                "in",
                Some("o1".into()),
                &ext.id,
                &paid.id,
                Nanos::new(100),
            )
            .unwrap();
            ledger.post(&p).await.unwrap();
        }
        for i in 0..3 {
            let p = Posting::transfer(
                format!("u{i}"),
                "usage",
                "out",
                Some("o1".into()),
                &paid.id,
                &rev.id,
                Nanos::new(30),
            )
            .unwrap();
            ledger.post(&p).await.unwrap();
        }
        assert_eq!(
            ledger.wallet_history_total("o1", None).await.unwrap(),
            (8, Nanos::new(410))
        );
        assert_eq!(
            ledger
                .wallet_history_total("o1", Some("usage"))
                .await
                .unwrap(),
            (3, Nanos::new(-90))
        );
        assert_eq!(
            ledger.wallet_history_total("o2", None).await.unwrap(),
            (0, Nanos::ZERO)
        );
        let page1 = ledger.wallet_history_page("o1", None, 0, 5).await.unwrap();
        let page2 = ledger.wallet_history_page("o1", None, 5, 5).await.unwrap();
        assert_eq!((page1.len(), page2.len()), (5, 3));
        let all: i64 = page1.iter().chain(&page2).map(|h| h.amount.get()).sum();
        assert_eq!(all, 410);
        let usage = ledger
            .wallet_history_page("o1", Some("usage"), 0, 10)
            .await
            .unwrap();
        assert!(
            usage
                .iter()
                .all(|h| h.kind == "usage" && h.amount == Nanos::new(-30))
        );
        t.finish().await;
    }
);
