//! Wallets and programs on real databases (SQLite always, PostgreSQL with
//! `TEST_DATABASE_URL`).

use accounts::{Org, OrgKind, Region};
use credits::{Credits, CreditsError, ProgramSpec};
use ledger::Nanos;

fn org(id: &str, kind: OrgKind, region: Region) -> Org {
    Org {
        id: id.into(),
        name: id.into(),
        kind,
        region,
        created_at: 0,
    }
}

fn spec(name: &str, grant: i64, budget: i64) -> ProgramSpec {
    ProgramSpec {
        name: name.into(),
        sponsor_org_id: None,
        eligible_kinds: vec![OrgKind::Startup, OrgKind::Research],
        eligible_regions: vec![],
        grant_amount: Nanos::new(grant),
        grant_lifetime_days: 30,
        budget: Nanos::new(budget),
        auto_on_signup: false,
        requires_verified_email: false,
    }
}

db::storage_test!(
    threads = 4;
    async fn a_program_never_grants_beyond_its_budget_even_concurrently(t) {
        let credits = Credits::new(t.db.clone());
        let program = credits
            .create_program(&spec("Startup boost", 100, 250))
            .await
            .unwrap();
        let tasks: Vec<_> = (0..6)
            .map(|i| {
                let credits = credits.clone();
                let program = program.clone();
                tokio::spawn(async move {
                    let o = org(&format!("org-{i}"), OrgKind::Startup, Region::Europe);
                    credits
                        .grant(&program, &o, None, "test", &format!("k-{i}"))
                        .await
                })
            })
            .collect();
        let mut granted = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => granted += 1,
                Err(CreditsError::BudgetExhausted) => {}
                Err(e) => panic!("{:?}: {e}", t.db.backend()),
            }
        }
        assert_eq!(granted, 2, "{:?}", t.db.backend());
        let program = credits.program(&program.id).await.unwrap().unwrap();
        assert_eq!(program.remaining, Nanos::new(50));
        assert_eq!(credits.ledger().verify().await.unwrap(), Ok(()));
        t.finish().await;
    }
);

db::storage_test!(
    async fn grants_go_only_to_eligible_organisations_and_once_per_key(t) {
        let credits = Credits::new(t.db.clone());
        let mut s = spec("African research", 40, 1_000);
        s.eligible_kinds = vec![OrgKind::Research];
        s.eligible_regions = vec![Region::Africa];
        s.auto_on_signup = true;
        let program = credits.create_program(&s).await.unwrap();
        let lab = org("lab", OrgKind::Research, Region::Africa);
        let startup = org("startup", OrgKind::Startup, Region::Africa);
        let elsewhere = org("lab-eu", OrgKind::Research, Region::Europe);
        assert!(matches!(
            credits.grant(&program, &startup, None, "x", "k1").await,
            Err(CreditsError::NotEligible)
        ));
        assert!(matches!(
            credits.grant(&program, &elsewhere, None, "x", "k2").await,
            Err(CreditsError::NotEligible)
        ));
        // Sign-up grants: once, however often asked.
        assert_eq!(credits.grants_on_signup(&lab).await.unwrap().len(), 1);
        assert_eq!(credits.grants_on_signup(&lab).await.unwrap().len(), 1);
        assert!(credits.grants_on_signup(&startup).await.unwrap().is_empty());
        let wallet = credits.wallet("lab", db::now_ms()).await.unwrap();
        assert_eq!(wallet.available(), Nanos::new(40));
        assert_eq!(wallet.buckets[0].label, "African research");
        assert_eq!(
            credits
                .program(&program.id)
                .await
                .unwrap()
                .unwrap()
                .remaining,
            Nanos::new(960)
        );
        let history = credits.ledger().wallet_history("lab", 10).await.unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(
            (history[0].kind.as_str(), history[0].amount),
            ("grant", Nanos::new(40))
        );
        assert!(
            credits
                .ledger()
                .wallet_history("startup", 10)
                .await
                .unwrap()
                .is_empty()
        );
        t.finish().await;
    }
);

db::storage_test!(
    async fn spending_burns_soonest_expiring_grants_then_paid_and_lapsed_grants_leave_by_posting(t) {
        let credits = Credits::new(t.db.clone());
        let mut short = spec("Short", 30, 100);
        short.grant_lifetime_days = 7;
        let short = credits.create_program(&short).await.unwrap();
        let long = credits
            .create_program(&spec("Long", 50, 100))
            .await
            .unwrap();
        let o = org("o", OrgKind::Startup, Region::Oceania);
        credits
            .grant(&long, &o, None, "test", "g-long")
            .await
            .unwrap();
        credits
            .grant(&short, &o, None, "test", "g-short")
            .await
            .unwrap();
        credits
            .credit_paid("o", Nanos::new(100), "pay-1", "top-up")
            .await
            .unwrap();
        // The same payment event again credits nothing.
        credits
            .credit_paid("o", Nanos::new(100), "pay-1", "top-up")
            .await
            .unwrap();

        let now = db::now_ms();
        let wallet = credits.wallet("o", now).await.unwrap();
        let labels: Vec<_> = wallet.buckets.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(labels, ["Short", "Long", "Paid credit"]);
        assert_eq!(wallet.available(), Nanos::new(180));
        // Read under lock for a hold: the same accounts in the same burn order.
        let mut tx = t.db.begin_metering().await.unwrap();
        let locked = credits.sources_in(&mut tx, "o", now).await.unwrap();
        tx.rollback().await.unwrap();
        let expected: Vec<(String, i64)> = wallet
            .buckets
            .iter()
            .map(|b| (b.account_id.clone(), b.balance.get() - b.held.get()))
            .collect();
        assert_eq!(locked, expected);

        let revenue = credits
            .ledger()
            .open_account(&ledger::AccountSpec {
                code: "revenue".into(),
                org_id: None,
                kind: ledger::AccountKind::Revenue,
                expires_at: None,
            })
            .await
            .unwrap();
        let sources = credits.sources("o", now).await.unwrap();
        let hold = credits
            .ledger()
            .reserve("job", Some("o"), &sources, Nanos::new(40), 60_000)
            .await
            .unwrap();
        credits
            .ledger()
            .settle(&hold.id, Nanos::new(40), &revenue.id, "job")
            .await
            .unwrap();
        let balances: Vec<i64> = credits
            .wallet("o", now)
            .await
            .unwrap()
            .buckets
            .iter()
            .map(|b| b.balance.get())
            .collect();
        assert_eq!(balances, [0, 40, 100]);

        // Eight days on, the short grant (already spent) and nothing else has lapsed; forty
        // days on, the long one has, and its 40 leave through an expiry posting.
        let day = 24 * 3600 * 1000;
        assert_eq!(credits.expire_grants(now + 8 * day).await.unwrap(), 0);
        assert_eq!(credits.expire_grants(now + 40 * day).await.unwrap(), 1);
        assert_eq!(credits.expire_grants(now + 40 * day).await.unwrap(), 0);
        let later = credits.wallet("o", now + 40 * day).await.unwrap();
        assert_eq!(later.available(), Nanos::new(100));
        assert_eq!(credits.ledger().verify().await.unwrap(), Ok(()));
        t.finish().await;
    }
);

db::storage_test!(
    async fn bad_programs_are_refused_with_the_field_named(t) {
        let credits = Credits::new(t.db.clone());
        let cases = [
            (
                ProgramSpec {
                    name: " ".into(),
                    ..spec("", 1, 1)
                },
                "name",
            ),
            (
                ProgramSpec {
                    eligible_kinds: vec![],
                    ..spec("Alpha", 1, 1)
                },
                "eligible_kinds",
            ),
            (spec("Bravo", 0, 10), "grant_amount"),
            (spec("Charlie", 10, 5), "budget"),
            (
                ProgramSpec {
                    grant_lifetime_days: 0,
                    ..spec("Delta", 1, 1)
                },
                "grant_lifetime_days",
            ),
        ];
        for (s, expected) in cases {
            match credits.create_program(&s).await {
                Err(CreditsError::Field { field, .. }) => assert_eq!(field, expected),
                other => panic!("{expected}: {other:?}"),
            }
        }
        credits.create_program(&spec("Same", 1, 1)).await.unwrap();
        assert!(matches!(
            credits.create_program(&spec("Same", 1, 1)).await,
            Err(CreditsError::Field { field: "name", .. })
        ));
        t.finish().await;
    }
);
