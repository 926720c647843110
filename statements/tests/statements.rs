//! Statements on real databases (SQLite always, PostgreSQL with `TEST_DATABASE_URL`): a month
//! computed by hand, closing and its ledger posting, the hash chain, late usage, bad requests
//! and isolation between partners.
#![allow(
    clippy::too_many_lines,
    reason = "each test is one scenario read top to bottom; a long one tells a long story"
)]

use accounts::User;
use credits::{Credits, ProgramSpec};
use db::sqlx::Row;
use db::testing::TestDb;
use ledger::{AccountKind, AccountSpec, Nanos};
use statements::{
    AdjustmentKind, NewAgreement, Period, Recoupment, StatementError, Statements, Terms, parse_date,
};
use testkit::Platform;

const M: i64 = 1_000_000; // a milli-dollar in nano-dollars

struct World {
    db: db::Db,
    credits: Credits,
    statements: Statements,
    operator: User,
    partner: String,
    other_partner: String,
    factory: String,
    other_factory: String,
    tenant_a: String,
    tenant_b: String,
}

fn at(date: &str, ms: i64) -> i64 {
    parse_date(date).unwrap() + ms
}

async fn world(db: &db::Db) -> World {
    let p = Platform::new(db).await;
    let mut partners = Vec::new();
    for name in ["Savanna Cloud", "Fjord Compute"] {
        partners.push(p.partner(name).await.org_id);
    }
    let mut factories = Vec::new();
    for (partner, name) in partners.iter().zip(["Nairobi 1", "Oslo 1"]) {
        factories.push(p.factory(partner, name, "m1, m2").await.id);
    }
    let tenant_a = p.tenant("a@startup.example", "startup").await.org_id;
    let tenant_b = p.tenant("b@startup.example", "startup").await.org_id;
    let Platform {
        accounts,
        credits,
        operator,
        ..
    } = p;
    // Credit support sponsored by the partner itself.
    let program = credits
        .create_program(&ProgramSpec {
            name: "Savanna starter".into(),
            sponsor_org_id: Some(partners[0].clone()),
            eligible_kinds: vec![accounts::OrgKind::Startup],
            eligible_regions: vec![],
            grant_amount: Nanos::new(300 * M),
            grant_lifetime_days: 3650,
            budget: Nanos::new(10_000 * M),
            auto_on_signup: false,
            requires_verified_email: false,
        })
        .await
        .unwrap();
    for t in [&tenant_a, &tenant_b] {
        credits
            .credit_paid(t, Nanos::new(100_000 * M), &format!("pay-{t}"), "top-up")
            .await
            .unwrap();
    }
    let org_b = accounts.org(&tenant_b).await.unwrap().unwrap();
    credits
        .grant(&program, &org_b, None, "starter", "grant-b")
        .await
        .unwrap();
    World {
        db: db.clone(),
        statements: Statements::new(db.clone()),
        credits,
        operator,
        partner: partners[0].clone(),
        other_partner: partners[1].clone(),
        factory: factories[0].clone(),
        other_factory: factories[1].clone(),
        tenant_a,
        tenant_b,
    }
}

impl World {
    /// Charges a job the way settlement does (hold over the wallet in burn order, settled into
    /// the factory's usage account) and records its usage event at `created_at`.
    async fn usage(
        &self,
        tenant: &str,
        factory: &str,
        model: &str,
        amount: i64,
        created_at: i64,
    ) -> String {
        let ledger = self.credits.ledger();
        let partner: String =
            db::sqlx::query_scalar("SELECT partner_org_id FROM factories WHERE id = $1")
                .bind(factory)
                .fetch_one(self.db.pool())
                .await
                .unwrap();
        let revenue = ledger
            .open_account(&AccountSpec {
                code: format!("factory:{factory}:usage"),
                org_id: Some(partner.clone()),
                kind: AccountKind::Revenue,
                expires_at: None,
            })
            .await
            .unwrap()
            .id;
        let sources = self.credits.sources(tenant, db::now_ms()).await.unwrap();
        let job = db::new_id();
        let hold = ledger
            .reserve(&job, Some(tenant), &sources, Nanos::new(amount), 60_000)
            .await
            .unwrap();
        let mut tx = self.db.begin_write().await.unwrap();
        db::sqlx::query(
            "INSERT INTO jobs (id, org_id, kind, model, factory_id, partner_org_id, status, hold_id, \
             prompt_tokens, max_tokens, completion_tokens, created_at, finished_at) \
             VALUES ($1, $2, 'production', $3, $4, $5, 'succeeded', $6, 10, 20, 20, $7, $7)",
        )
        .bind(&job)
        .bind(tenant)
        .bind(model)
        .bind(factory)
        .bind(&partner)
        .bind(&hold.id)
        .bind(created_at)
        .execute(&mut *tx)
        .await
        .unwrap();
        let mut writes: ledger::Writes = self.db.batch();
        let settled = ledger
            .settle_into(
                &mut writes,
                &hold.clone().into(),
                Nanos::new(amount),
                &revenue,
                "job",
            )
            .unwrap();
        writes.run(&mut tx).await.unwrap();
        let mut paid = 0;
        let mut grants = Vec::new();
        for (account, part) in &settled.drawn {
            let grant =
                db::sqlx::query("SELECT id, program_id FROM credit_grants WHERE account_id = $1")
                    .bind(account)
                    .fetch_optional(&mut *tx)
                    .await
                    .unwrap();
            match grant {
                Some(g) => grants.push((
                    g.get::<String, _>("id"),
                    g.get::<String, _>("program_id"),
                    *part,
                )),
                None => paid += part,
            }
        }
        let event = db::new_id();
        db::sqlx::query(
            "INSERT INTO usage_events (id, job_id, org_id, kind, model, factory_id, partner_org_id, \
             prompt_tokens, completion_tokens, input_nanos_per_mtok, output_nanos_per_mtok, amount, \
             paid_amount, device_us, queue_ms, duration_ms, partial, finish_reason, transaction_id, \
             created_at) VALUES ($1, $2, $3, 'production', $4, $5, $6, 10, 20, 1000, 2000, $7, $8, \
             1500000, 1, 30, 0, 'length', $9, $10)",
        )
        .bind(&event)
        .bind(&job)
        .bind(tenant)
        .bind(model)
        .bind(factory)
        .bind(&partner)
        .bind(amount)
        .bind(paid)
        .bind(&settled.transaction_id)
        .bind(created_at)
        .execute(&mut *tx)
        .await
        .unwrap();
        for (grant, program, part) in grants {
            db::sqlx::query(
                "INSERT INTO usage_event_grants (usage_event_id, grant_id, program_id, amount) VALUES ($1, $2, $3, $4)",
            )
            .bind(&event)
            .bind(grant)
            .bind(program)
            .bind(part)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        event
    }

    async fn agreement(&self, partner: &str, from: &str, terms: Terms) {
        self.statements
            .add_agreement(
                &self.operator.email,
                &NewAgreement {
                    partner_org_id: partner.into(),
                    from: parse_date(from).unwrap(),
                    to: None,
                    terms,
                    note: String::new(),
                },
                db::now_ms(),
            )
            .await
            .unwrap();
    }

    async fn balance(&self, code: &str) -> i64 {
        self.credits
            .ledger()
            .account_by_code(code)
            .await
            .unwrap()
            .map_or(0, |a| a.balance.get())
    }
}

const TERMS: Terms = Terms {
    partner_share_bps: 7000,
    credit_reimbursement_bps: 5000,
    recoupment: Some(Recoupment {
        cost: 1500 * M,
        vendor_share_bps: 6000,
    }),
};

fn oct() -> Period {
    Period::parse("2026-10").unwrap()
}

/// 2026-11-27, when the tests close October.
fn closing_time() -> i64 {
    at("2026-11-27", 0)
}

db::storage_test!(
    async fn a_hand_computed_month_closes_into_the_ledger_and_verifies(t) {
        let w = world(&t.db).await;
        w.agreement(&w.partner, "2026-10-01", TERMS).await;
        // $1 cash from A: recouping at 60 %: partner 0.40, vendor (recouped) 0.60.
        let e1 = w
            .usage(&w.tenant_a, &w.factory, "m1", 1000 * M, at("2026-10-02", 0))
            .await;
        // $0.50 from B: $0.30 from the partner-sponsored grant (reimbursed at 50 %), $0.20
        // cash at the recouping split (partner 0.08, vendor 0.12 recouped).
        w.usage(&w.tenant_b, &w.factory, "m1", 500 * M, at("2026-10-03", 0))
            .await;
        // $2 cash from A crosses the threshold: 0.78 is left to recoup, reached after
        // 1.299999999 of cash (vendor 0.78, partner 0.519999999); the other 0.700000001 is
        // split 70/30 rounding the partner down (0.49 / 0.210000001).
        let e3 = w
            .usage(&w.tenant_a, &w.factory, "m2", 2000 * M, at("2026-10-04", 0))
            .await;
        // $0.10 cash from B after recoupment: 70/30.
        w.usage(&w.tenant_b, &w.factory, "m1", 100 * M, at("2026-10-05", 0))
            .await;
        // The other partner's usage never shows up here.
        w.agreement(
            &w.other_partner,
            "2026-10-01",
            Terms {
                partner_share_bps: 5000,
                credit_reimbursement_bps: 0,
                recoupment: None,
            },
        )
        .await;
        w.usage(
            &w.tenant_a,
            &w.other_factory,
            "m1",
            777 * M,
            at("2026-10-06", 0),
        )
        .await;
        // A refund of $0.10 of the first job: each side gives back its part of that cash
        // (partner 40 %, vendor 60 %, which no longer counts as recouped); a $0.05 credit.
        w.statements
            .refund_usage(
                &e1,
                Nanos::new(100 * M),
                "slow responses",
                "ops@tokenmill.example",
                at("2026-10-20", 0),
            )
            .await
            .unwrap();
        w.statements
            .adjust(
                &w.partner,
                oct(),
                AdjustmentKind::Credit,
                Nanos::new(50 * M),
                None,
                "launch bonus",
                "ops@tokenmill.example",
                at("2026-10-21", 0),
            )
            .await
            .unwrap();

        let draft = w
            .statements
            .statement(&w.partner, oct(), closing_time())
            .await
            .unwrap();
        assert!(!draft.is_closed());
        let d = &draft.document;
        let lines: Vec<_> = d
            .lines
            .iter()
            .map(|l| {
                (
                    l.tenant_id.as_str(),
                    l.model.as_str(),
                    l.sums.requests,
                    l.sums.gross,
                    l.sums.cash,
                    l.sums.credit_support,
                    l.sums.partner_share,
                    l.sums.vendor_share,
                    l.sums.recouped,
                )
            })
            .collect();
        let (a, b) = (w.tenant_a.as_str(), w.tenant_b.as_str());
        let mut want = vec![
            (a, "m1", 1, 1000 * M, 1000 * M, 0, 400 * M, 600 * M, 600 * M),
            (
                a,
                "m2",
                1,
                2000 * M,
                2000 * M,
                0,
                1_009_999_999,
                990_000_001,
                780 * M,
            ),
            (
                b,
                "m1",
                2,
                600 * M,
                300 * M,
                300 * M,
                300 * M,
                300 * M,
                120 * M,
            ),
        ];
        want.sort();
        assert_eq!(lines, want);
        assert_eq!(d.support.len(), 1);
        assert_eq!(
            (
                d.support[0].sponsor_id.as_str(),
                d.support[0].amount,
                d.support[0].partner_share
            ),
            (w.partner.as_str(), 300 * M, 150 * M)
        );
        assert_eq!(
            (
                d.total.gross,
                d.total.partner_share,
                d.total.vendor_share,
                d.total.recouped
            ),
            (3600 * M, 1_709_999_999, 1_890_000_001, 1500 * M)
        );
        assert_eq!(d.adjustments_total, [-100 * M, 10 * M, -110 * M, -60 * M]);
        assert_eq!(d.recoupment, [1500 * M, 0, 1440 * M, 1440 * M, 60 * M]);
        assert_eq!(d.summary, [3500 * M, 1_719_999_999, 1_780_000_001]);
        assert_eq!(d.payable, 1_719_999_999);
        assert_eq!(d.status, "draft");

        // The factory account holds the month's usage; the refund is pending.
        let factory_code = format!("factory:{}:usage", w.factory);
        assert_eq!(w.balance(&factory_code).await, 3600 * M);
        assert_eq!(w.balance("statements:refunds-pending").await, -100 * M);

        let closed = w
            .statements
            .close(&w.partner, oct(), &w.operator.email, closing_time())
            .await
            .unwrap();
        assert!(closed.is_closed());
        // Same numbers; only the status row differs from the draft.
        assert_eq!(closed.document.summary, d.summary);
        assert_eq!(closed.document.lines, d.lines);
        let statements::StatementStatus::Closed {
            number,
            sha256,
            previous_sha256,
            ..
        } = &closed.status
        else {
            panic!()
        };
        assert_eq!((*number, previous_sha256.as_deref()), (1, None));
        assert_eq!(sha256, &statements::sha256_hex(closed.csv.as_bytes()));
        let verified = statements::verify(closed.csv.as_bytes(), None).unwrap();
        assert_eq!(&verified.sha256, sha256);

        // The ledger: the factory gave up its month, the pending refund is settled, the
        // partner's and the vendor's totals are booked.
        assert_eq!(w.balance(&factory_code).await, 0);
        assert_eq!(w.balance("statements:refunds-pending").await, 0);
        assert_eq!(
            w.balance(&format!("partner:{}:payable", w.partner)).await,
            1_719_999_999
        );
        assert_eq!(w.balance("vendor:revenue").await, 1_780_000_001);
        // Gross equals what the usage events' settlements credited to the factory account.
        let settled: i64 = db::sqlx::query_scalar(
            "SELECT CAST(SUM(le.amount) AS BIGINT) FROM ledger_entries le \
             JOIN ledger_accounts a ON a.id = le.account_id \
             JOIN usage_events e ON e.transaction_id = le.transaction_id \
             JOIN statement_events s ON s.usage_event_id = e.id \
             WHERE a.code = $1",
        )
        .bind(&factory_code)
        .fetch_one(w.db.pool())
        .await
        .unwrap();
        assert_eq!(settled, d.total.gross);
        assert!(w.credits.ledger().verify().await.unwrap().is_ok());

        // The PDF is a real document showing the same totals, the hash and the chain link.
        let pdf = statements::pdf::render(
            &closed.document,
            Some(statements::pdf::Issued {
                sha256,
                date: "2026-11-01",
            }),
        );
        let text = pdf_text(&pdf);
        for shown in [
            "Savanna Cloud - 2026-10",
            "Closed statement no. 1, issued 2026-11-01",
            "Payee: Savanna Cloud",
            "$1.719999999",
            "$3.50",
            "$1.780000001",
            "launch bonus",
            "slow responses",
            sha256.as_str(),
            "none (first in the chain)",
        ] {
            assert!(
                text.contains(shown),
                "{shown:?} not in the PDF text:\n{text}"
            );
        }

        // Closing again, an adjustment into the closed month, and the current month refused.
        let again = w
            .statements
            .close(&w.partner, oct(), &w.operator.email, closing_time())
            .await;
        assert!(
            matches!(again, Err(StatementError::Conflict(ref m)) if m.contains("already closed")),
            "{again:?}"
        );
        let late_adj = w
            .statements
            .adjust(
                &w.partner,
                oct(),
                AdjustmentKind::Correction,
                Nanos::new(1),
                None,
                "typo",
                "ops@tokenmill.example",
                closing_time(),
            )
            .await;
        assert!(
            matches!(late_adj, Err(StatementError::Conflict(ref m)) if m.contains("closed")),
            "{late_adj:?}"
        );
        let current = w
            .statements
            .close(
                &w.partner,
                Period::of_ms(closing_time()),
                &w.operator.email,
                closing_time(),
            )
            .await;
        assert!(
            matches!(current, Err(StatementError::Conflict(ref m)) if m.contains("not over")),
            "{current:?}"
        );

        // Usage that arrives late for October lands in November, on its own line; the closed
        // statement does not change.
        w.usage(
            &w.tenant_a,
            &w.factory,
            "m1",
            10 * M,
            at("2026-10-31", 86_399_000),
        )
        .await;
        let nov = oct().next();
        let draft = w
            .statements
            .statement(&w.partner, nov, at("2026-11-27", 0))
            .await
            .unwrap();
        assert_eq!(draft.document.lines.len(), 1);
        assert_eq!(draft.document.lines[0].usage_period, "2026-10");
        assert_eq!(
            (
                draft.document.lines[0].sums.partner_share,
                draft.document.recoupment[1]
            ),
            (4 * M, 1440 * M)
        );
        assert_eq!(
            draft.document.previous_sha256.as_deref(),
            Some(sha256.as_str())
        );
        let reread = w
            .statements
            .statement(&w.partner, oct(), closing_time())
            .await
            .unwrap();
        assert_eq!(reread.csv, closed.csv);

        // Refunding $0.20 of the closed month's threshold event reverses its own split (from
        // the closed statement): partner 1.009999999 / 2 * 0.1 rounded toward zero, recouped
        // 0.78 * 0.1; it lands in November.
        let refund = w
            .statements
            .refund_usage(
                &e3,
                Nanos::new(200 * M),
                "late refund",
                "ops",
                at("2026-11-27", 0),
            )
            .await
            .unwrap();
        assert_eq!(refund.period, nov);
        assert_eq!(
            (
                refund.partner_amount.get(),
                refund.vendor_amount.get(),
                refund.recouped.get()
            ),
            (-100_999_999, -99_000_001, -78 * M)
        );
        let draft = w
            .statements
            .statement(&w.partner, nov, at("2026-11-27", 0))
            .await
            .unwrap();
        assert_eq!(
            draft.document.adjustments_total,
            [-200 * M, -100_999_999, -99_000_001, -78 * M]
        );
        assert_eq!(draft.document.recoupment[3], 1440 * M + 6 * M - 78 * M);

        // December cannot be closed before November; November closes into the chain.
        let dec = nov.next();
        let skipped = w
            .statements
            .close(&w.partner, dec, &w.operator.email, at("2027-01-02", 0))
            .await;
        assert!(
            matches!(skipped, Err(StatementError::Conflict(ref m)) if m.contains("Close 2026-11 first")),
            "{skipped:?}"
        );
        let closed_nov = w
            .statements
            .close(&w.partner, nov, &w.operator.email, at("2026-12-01", 0))
            .await
            .unwrap();
        assert!(statements::verify(closed_nov.csv.as_bytes(), Some(sha256)).is_ok());
        let chain = w.statements.chain(&w.partner).await.unwrap();
        assert_eq!(chain.len(), 2);
        assert!(chain.iter().all(|l| l.linked && l.intact), "{chain:?}");
        // A month with no usage is a valid zero statement.
        let closed_dec = w
            .statements
            .close(&w.partner, dec, &w.operator.email, at("2027-01-02", 0))
            .await
            .unwrap();
        assert_eq!(
            (closed_dec.document.summary, closed_dec.document.lines.len()),
            ([0, 0, 0], 0)
        );

        // The other partner's statement holds only its own usage.
        let other = w
            .statements
            .statement(&w.other_partner, oct(), closing_time())
            .await
            .unwrap();
        assert_eq!(other.document.total.gross, 777 * M);
        assert_eq!(other.document.payable, 388_500_000);
        // A tenant is not a partner.
        let not_partner = w
            .statements
            .statement(&w.tenant_a, oct(), closing_time())
            .await;
        assert!(matches!(not_partner, Err(StatementError::UnknownPartner)));
        t.finish().await;
    }
);

db::storage_test!(
    async fn agreements_are_versioned_without_overlaps_or_rewriting_closed_months(t) {
        let w = world(&t.db).await;
        let s = &w.statements;
        let new = |from: &str, to: Option<&str>, share: u32| NewAgreement {
            partner_org_id: w.partner.clone(),
            from: parse_date(from).unwrap(),
            to: to.map(|d| parse_date(d).unwrap()),
            terms: Terms {
                partner_share_bps: share,
                credit_reimbursement_bps: 0,
                recoupment: None,
            },
            note: "v".into(),
        };
        let now = db::now_ms();
        s.add_agreement("ops", &new("2026-09-01", None, 6000), now)
            .await
            .unwrap();
        // A later version ends the open-ended one.
        s.add_agreement("ops", &new("2026-10-15", Some("2026-12-01"), 7000), now)
            .await
            .unwrap();
        let versions = s.agreements(&w.partner).await.unwrap();
        assert_eq!(versions[0].to, Some(parse_date("2026-10-15").unwrap()));
        assert_eq!(versions[0].ended_by.as_deref(), Some("ops"));
        // Overlapping a bounded version is refused with the version it overlaps.
        let overlap = s
            .add_agreement("ops", &new("2026-11-01", None, 8000), now)
            .await;
        assert!(
            matches!(overlap, Err(StatementError::Conflict(ref m)) if m.contains("version 2")),
            "{overlap:?}"
        );
        let bad = s
            .add_agreement("ops", &new("2026-12-01", None, 10_001), now)
            .await;
        assert!(matches!(bad, Err(StatementError::Invalid(_))), "{bad:?}");
        s.add_agreement("ops", &new("2026-12-01", None, 8000), now)
            .await
            .unwrap();

        // Usage on both sides of the October change is split by the version in force.
        w.usage(
            &w.tenant_a,
            &w.factory,
            "m1",
            100 * M,
            at("2026-10-14", 86_399_999),
        )
        .await;
        w.usage(&w.tenant_a, &w.factory, "m1", 100 * M, at("2026-10-15", 0))
            .await;
        // September has no usage: the first statement can be September (a zero statement),
        // and then October.
        let sep = oct().prev();
        s.close(&w.partner, sep, "ops", closing_time())
            .await
            .unwrap();
        let closed = s
            .close(&w.partner, oct(), "ops", closing_time())
            .await
            .unwrap();
        assert_eq!(closed.document.payable, 130 * M);
        assert_eq!(closed.document.agreements.len(), 2);
        // No version may start inside a closed month any more.
        let rewrite = s
            .add_agreement("ops", &new("2026-10-20", Some("2026-10-25"), 9000), now)
            .await;
        assert!(
            matches!(rewrite, Err(StatementError::Conflict(ref m)) if m.contains("closed up to 2026-10")),
            "{rewrite:?}"
        );
        t.finish().await;
    }
);

db::storage_test!(
    async fn the_first_statement_waits_for_the_earliest_month_with_usage(t) {
        let w = world(&t.db).await;
        w.agreement(&w.partner, "2026-09-01", TERMS).await;
        w.usage(&w.tenant_a, &w.factory, "m1", 5 * M, at("2026-09-10", 0))
            .await;
        w.usage(&w.tenant_a, &w.factory, "m1", 5 * M, at("2026-10-10", 0))
            .await;
        // Nothing before the first agreement or usage can be closed or adjusted (a slip of the
        // year would otherwise open decades of empty months).
        let slip = w
            .statements
            .close(
                &w.partner,
                Period::parse("2016-09").unwrap(),
                "ops",
                closing_time(),
            )
            .await;
        assert!(
            matches!(slip, Err(StatementError::Conflict(ref m)) if m.contains("Nothing to close before 2026-09")),
            "{slip:?}"
        );
        let slip = w
            .statements
            .adjust(
                &w.partner,
                Period::parse("2016-09").unwrap(),
                AdjustmentKind::Credit,
                Nanos::new(1),
                None,
                "x",
                "ops",
                closing_time(),
            )
            .await;
        assert!(
            matches!(slip, Err(StatementError::Conflict(ref m)) if m.contains("first statement month (2026-09)")),
            "{slip:?}"
        );
        let early = w
            .statements
            .close(&w.partner, oct(), "ops", closing_time())
            .await;
        assert!(
            matches!(early, Err(StatementError::Conflict(ref m)) if m.contains("Close 2026-09 first")),
            "{early:?}"
        );
        // The October draft carries September's recoupment forward.
        let draft = w
            .statements
            .statement(&w.partner, oct(), closing_time())
            .await
            .unwrap();
        assert_eq!(draft.document.recoupment[1], 3 * M);
        assert_eq!(
            w.statements
                .next_closable(&w.partner, closing_time())
                .await
                .unwrap(),
            Some(oct().prev())
        );
        // Nothing was half-done by the refused close: the factory still holds both months.
        let balance = w.balance(&format!("factory:{}:usage", w.factory)).await;
        assert_eq!(balance, 10 * M);
        let listed = w.statements.list(&w.partner, closing_time()).await.unwrap();
        let periods: Vec<String> = listed.iter().map(|s| s.period.to_string()).collect();
        assert_eq!(periods, ["2026-11", "2026-10", "2026-09"]);
        t.finish().await;
    }
);

db::storage_test!(
    async fn refunds_are_limited_to_what_was_charged(t) {
        let w = world(&t.db).await;
        let e = w
            .usage(&w.tenant_a, &w.factory, "m1", 10 * M, at("2026-11-02", 0))
            .await;
        let now = at("2026-11-03", 0);
        w.statements
            .refund_usage(&e, Nanos::new(6 * M), "outage", "ops", now)
            .await
            .unwrap();
        let over = w
            .statements
            .refund_usage(&e, Nanos::new(5 * M), "again", "ops", now)
            .await;
        assert!(
            matches!(over, Err(StatementError::Invalid(ref m)) if m.contains("$0.004")),
            "{over:?}"
        );
        let no_reason = w
            .statements
            .refund_usage(&e, Nanos::new(M), " ", "ops", now)
            .await;
        assert!(matches!(no_reason, Err(StatementError::Invalid(_))));
        let unknown = w
            .statements
            .refund_usage("nope", Nanos::new(M), "x", "ops", now)
            .await;
        assert!(matches!(unknown, Err(StatementError::UnknownUsage)));
        // The tenant got the money back in paid credit.
        let wallet = w.credits.wallet(&w.tenant_a, db::now_ms()).await.unwrap();
        assert_eq!(wallet.available().get(), 100_000 * M - 10 * M + 6 * M);
        t.finish().await;
    }
);

/// The text of every page of a PDF, as a PDF library extracts it.
fn pdf_text(bytes: &[u8]) -> String {
    let doc = lopdf::Document::load_mem(bytes).expect("a PDF that parses");
    let pages: Vec<u32> = doc.get_pages().keys().copied().collect();
    assert!(!pages.is_empty());
    doc.extract_text(&pages).expect("extractable text")
}

#[test]
fn a_long_statement_pdf_spreads_its_lines_over_pages_each_with_the_hash() {
    use statements::compute::{EventIn, compute};
    let period = oct();
    let events: Vec<EventIn> = (0..150)
        .map(|i| EventIn {
            id: format!("e{i}"),
            created_at: period.start_ms() + i,
            tenant_org_id: format!("tenant-{i:03}"),
            model: "m1".into(),
            factory_id: "f".into(),
            prompt_tokens: 1,
            completion_tokens: 1,
            device_us: 1,
            amount: 1000 + i,
            grants: vec![],
        })
        .collect();
    let c = compute(period, &events, &[], &[], 0);
    let names = std::collections::BTreeMap::new();
    let csv = statements::canonical::write(
        &statements::canonical::Header {
            partner_id: "p",
            partner_name: "Partner",
            number: Some(1),
            previous_sha256: None,
            agreements: &[],
            names: &names,
        },
        &c,
    );
    let doc = statements::verify(csv.as_bytes(), None).unwrap();
    let pdf = statements::pdf::render(
        &doc.document,
        Some(statements::pdf::Issued {
            sha256: &doc.sha256,
            date: "2026-11-01",
        }),
    );
    let parsed = lopdf::Document::load_mem(&pdf).unwrap();
    let pages: Vec<u32> = parsed.get_pages().keys().copied().collect();
    assert!(pages.len() >= 3, "{} pages", pages.len());
    for p in &pages {
        let text = parsed.extract_text(&[*p]).unwrap();
        assert!(text.contains(&doc.sha256), "page {p} lacks the hash");
        assert!(!text.contains("DRAFT"), "page {p} of a closed statement");
        assert!(
            text.contains(&format!("Page {p} of {}", pages.len())),
            "page {p}: {text}"
        );
    }
    let all = parsed.extract_text(&pages).unwrap();
    assert!(all.contains("tenant-149") && all.contains("tenant-000"));
    assert!(all.contains(&ledger::Nanos::new(c.totals.gross).to_string()));

    // The same month as a draft: DRAFT on every page, no hash and no issue date.
    let draft = statements::pdf::render(&doc.document, None);
    let parsed = lopdf::Document::load_mem(&draft).unwrap();
    let pages: Vec<u32> = parsed.get_pages().keys().copied().collect();
    assert!(pages.len() >= 3);
    for p in &pages {
        let text = parsed.extract_text(&[*p]).unwrap();
        assert!(text.contains("DRAFT"), "page {p}: {text}");
        assert!(!text.contains(&doc.sha256), "page {p}");
    }
}

/// A small deterministic generator (no extra dependency): the same seed, the same month.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

#[tokio::test]
async fn random_months_reconcile_with_the_ledger_for_every_partner_and_the_vendor() {
    for (round, t) in TestDb::all().await.into_iter().enumerate() {
        let w = world(&t.db).await;
        let mut rng = Lcg(0x5eed + round as u64);
        let partners = [
            (&w.partner, &w.factory),
            (&w.other_partner, &w.other_factory),
        ];
        for (partner, _) in partners {
            let recoupment = (rng.next(2) == 0).then(|| Recoupment {
                cost: (1 + rng.next(3000)) as i64 * M,
                vendor_share_bps: 1 + rng.next(10_000) as u32,
            });
            let terms = Terms {
                partner_share_bps: rng.next(10_001) as u32,
                credit_reimbursement_bps: rng.next(10_001) as u32,
                recoupment,
            };
            w.agreement(partner, "2026-09-01", terms).await;
        }
        let mut charged = 0;
        let mut refunded = 0;
        let mut events = Vec::new();
        for i in 0..24 {
            let (_, factory) = partners[rng.next(2) as usize];
            let tenant = if rng.next(2) == 0 {
                &w.tenant_a
            } else {
                &w.tenant_b
            };
            let model = ["m1", "m2"][rng.next(2) as usize];
            let amount = 1 + rng.next(400 * M as u64) as i64;
            let month = if i % 2 == 0 { "2026-09" } else { "2026-10" };
            let when = at(
                &format!("{month}-{:02}", 1 + rng.next(28)),
                rng.next(86_400_000) as i64,
            );
            events.push((
                w.usage(tenant, factory, model, amount, when).await,
                amount,
                when,
            ));
            charged += amount;
        }
        // Refunds of some September usage, made in September, and credits either way.
        for (event, _, when) in events
            .iter()
            .filter(|(_, _, when)| *when < oct().start_ms())
            .take(3)
        {
            // Only cash is refunded in money.
            let paid: i64 =
                db::sqlx::query_scalar("SELECT paid_amount FROM usage_events WHERE id = $1")
                    .bind(event)
                    .fetch_one(w.db.pool())
                    .await
                    .unwrap();
            if paid == 0 {
                continue;
            }
            let part = 1 + rng.next(paid as u64) as i64;
            w.statements
                .refund_usage(event, Nanos::new(part), "random refund", "ops", when + 1)
                .await
                .unwrap();
            refunded += part;
        }
        for (partner, _) in partners {
            let amount = rng.next(2 * M as u64) as i64 - M;
            if amount != 0 {
                w.statements
                    .adjust(
                        partner,
                        oct(),
                        AdjustmentKind::Correction,
                        Nanos::new(amount),
                        None,
                        "random",
                        "ops",
                        at("2026-10-15", 0),
                    )
                    .await
                    .unwrap();
            }
        }
        let mut payable = 0;
        let mut gross = 0;
        for (partner, factory) in partners {
            for period in [oct().prev(), oct()] {
                let s = w
                    .statements
                    .close(partner, period, "ops", closing_time())
                    .await
                    .unwrap();
                let v = statements::verify(s.csv.as_bytes(), s.document.previous_sha256.as_deref())
                    .unwrap();
                gross += v.document.summary[0];
                payable += v.document.payable;
                // Each closed month equals its ledger posting.
                let posting: Vec<(String, i64)> = db::sqlx::query(
                    "SELECT a.code, le.amount FROM ledger_entries le JOIN ledger_accounts a ON a.id = le.account_id \
                     JOIN statements s ON s.transaction_id = le.transaction_id WHERE s.partner_org_id = $1 AND s.period = $2",
                )
                .bind(partner)
                .bind(period.to_string())
                .fetch_all(w.db.pool())
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get::<String, _>("code"), r.get::<i64, _>("amount")))
                .collect();
                let leg = |code: &str| {
                    posting
                        .iter()
                        .filter(|(c, _)| c == code)
                        .map(|(_, a)| a)
                        .sum::<i64>()
                };
                assert_eq!(
                    leg(&format!("partner:{partner}:payable")),
                    v.document.payable
                );
                assert_eq!(leg("vendor:revenue"), v.document.summary[2]);
                assert_eq!(
                    -leg(&format!("factory:{factory}:usage")),
                    v.document.total.gross
                );
            }
            assert_eq!(w.balance(&format!("factory:{factory}:usage")).await, 0);
            assert!(
                w.statements
                    .chain(partner)
                    .await
                    .unwrap()
                    .iter()
                    .all(|l| l.linked && l.intact)
            );
        }
        // Across partners and the vendor, the shares add up to what was charged less refunds.
        assert_eq!(gross, charged - refunded);
        assert_eq!(
            payable + w.balance("vendor:revenue").await,
            charged - refunded
        );
        assert_eq!(w.balance("statements:refunds-pending").await, 0);
        assert!(w.credits.ledger().verify().await.unwrap().is_ok());
        t.finish().await;
    }
}

db::storage_test!(
    async fn a_close_that_fails_leaves_the_month_open_and_nothing_posted(t) {
        let w = world(&t.db).await;
        w.agreement(&w.partner, "2026-10-01", TERMS).await;
        w.usage(&w.tenant_a, &w.factory, "m1", 5 * M, at("2026-10-02", 0))
            .await;
        w.statements
            .adjust(
                &w.partner,
                oct(),
                AdjustmentKind::Credit,
                Nanos::new(M),
                None,
                "bonus",
                "ops",
                at("2026-10-03", 0),
            )
            .await
            .unwrap();
        // A usage event whose charge never reached the factory's account (as if the ledger
        // lost it): the statement is written, then the posting fails and takes it all back.
        let job = db::new_id();
        for sql in [
            "INSERT INTO jobs (id, org_id, kind, model, factory_id, partner_org_id, status, \
             prompt_tokens, max_tokens, created_at) VALUES ($1, $2, 'production', 'm1', $3, $4, \
             'succeeded', 1, 1, $5)",
            "INSERT INTO usage_events (id, job_id, org_id, kind, model, factory_id, partner_org_id, \
             prompt_tokens, completion_tokens, input_nanos_per_mtok, output_nanos_per_mtok, amount, \
             paid_amount, device_us, queue_ms, duration_ms, partial, finish_reason, created_at) \
             VALUES ($1 || '-e', $1, $2, 'production', 'm1', $3, $4, 1, 1, 0, 0, 7000000, 7000000, \
             0, 0, 0, 0, 'length', $5)",
        ] {
            db::sqlx::query(sql)
                .bind(&job)
                .bind(&w.tenant_a)
                .bind(&w.factory)
                .bind(&w.partner)
                .bind(at("2026-10-04", 0))
                .execute(w.db.pool())
                .await
                .unwrap();
        }
        let failed = w
            .statements
            .close(&w.partner, oct(), "ops", closing_time())
            .await;
        assert!(
            matches!(
                failed,
                Err(StatementError::Ledger(
                    ledger::LedgerError::InsufficientFunds { .. }
                ))
            ),
            "{failed:?}"
        );
        let count = |sql: &'static str| {
            let db = w.db.clone();
            async move {
                db::sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(db.pool())
                    .await
                    .unwrap()
            }
        };
        assert_eq!(count("SELECT COUNT(*) FROM statements").await, 0);
        assert_eq!(count("SELECT COUNT(*) FROM statement_events").await, 0);
        assert_eq!(
            count("SELECT COUNT(*) FROM statement_adjustments WHERE statement_id IS NOT NULL")
                .await,
            0
        );
        assert_eq!(
            count("SELECT COUNT(*) FROM statement_heads WHERE last_period IS NOT NULL").await,
            0
        );
        assert_eq!(
            count("SELECT COUNT(*) FROM ledger_transactions WHERE kind = 'statement_close'").await,
            0
        );
        assert_eq!(
            w.balance(&format!("factory:{}:usage", w.factory)).await,
            5 * M
        );
        let still = w
            .statements
            .statement(&w.partner, oct(), closing_time())
            .await
            .unwrap();
        assert!(!still.is_closed());
        assert_eq!(still.document.total.gross, 12 * M);
        assert!(w.credits.ledger().verify().await.unwrap().is_ok());
        t.finish().await;
    }
);
