//! Compute requests on real databases (SQLite always, PostgreSQL with `TEST_DATABASE_URL`):
//! the state machine with its illegal transitions, grants on approval within a program's
//! budget, and isolation between tenants and between partners.

use accounts::{Accounts, User};
use compute::{Compute, ComputeError, Decision, FactorySpec, RequestForm, Status};
use credits::Credits;
use ledger::Nanos;
use testkit::{PASSWORD, Platform};

const DAY: i64 = 86_400_000;
/// 2026-11-26T12:00:00Z.
const NOW: i64 = 1_795_651_200_000 + DAY / 2;

struct World {
    platform: Platform,
    accounts: Accounts,
    credits: Credits,
    compute: Compute,
    operator: User,
    tenant: User,
    other_tenant: User,
    partner: User,
    other_partner: User,
    factory: String,
    other_factory: String,
    program: String,
    partner_program: String,
}

async fn world(db: &db::Db) -> World {
    let p = Platform::new(db).await;
    let partner = p.partner("Savanna Cloud").await;
    let other_partner = p.partner("Fjord Compute").await;
    let models = "tiny/llama, tiny/qwen";
    let f1 = p.factory(&partner.org_id, "Nairobi 1", models).await;
    let f2 = p.factory(&other_partner.org_id, "Oslo 1", models).await;
    let program = p.program("Startup support", None, (100, 90, 1_000)).await;
    let partner_program = p
        .program("Savanna builders", Some(&partner.org_id), (10, 30, 50))
        .await;
    World {
        tenant: p.tenant("a@startup.example", "startup").await,
        other_tenant: p.tenant("b@startup.example", "startup").await,
        accounts: p.accounts.clone(),
        credits: p.credits.clone(),
        compute: p.compute.clone(),
        operator: p.operator.clone(),
        partner,
        other_partner,
        factory: f1.id,
        other_factory: f2.id,
        program: program.id,
        partner_program: partner_program.id,
        platform: p,
    }
}

fn form(w: &World) -> RequestForm {
    RequestForm {
        factory_id: w.factory.clone(),
        what: "tiny/llama".into(),
        amount: "60000".into(),
        starts_on: "2026-12-01".into(),
        ends_on: "2027-03-01".into(),
        commitment: "reserved".into(),
        program_id: w.program.clone(),
        support_amount: "250".into(),
        justification: "Fine-tuning a Swahili assistant for clinics.".into(),
    }
}

fn decision(grant_program: &str, amount: &str) -> Decision {
    Decision {
        share_weight: "10".into(),
        rate_limit_tpm: "60000".into(),
        starts_on: String::new(),
        ends_on: String::new(),
        grant_program_id: grant_program.into(),
        grant_amount: amount.into(),
    }
}

/// A change to the valid form that makes it invalid.
type Edit = Box<dyn Fn(&mut RequestForm)>;

fn field_of(e: ComputeError) -> &'static str {
    match e {
        ComputeError::Field { field, .. } => field,
        other => panic!("expected a field error, got {other:?}"),
    }
}

db::storage_test!(
    async fn bad_requests_are_refused_field_by_field(t) {
        let w = world(&t.db).await;
        let c = &w.compute;
        let cases: Vec<(&str, Edit)> = vec![
            ("factory", Box::new(|f| f.factory_id = "nope".into())),
            ("what", Box::new(|f| f.what = "other/model".into())),
            ("amount", Box::new(|f| f.amount = "-5".into())),
            ("amount", Box::new(|f| f.amount = "999999999999".into())),
            ("starts_on", Box::new(|f| f.starts_on = "2026-11-25".into())),
            ("starts_on", Box::new(|f| f.starts_on = "tomorrow".into())),
            ("ends_on", Box::new(|f| f.ends_on = "2026-11-30".into())),
            ("ends_on", Box::new(|f| f.ends_on = "2031-01-01".into())),
            ("commitment", Box::new(|f| f.commitment = "maybe".into())),
            ("program", Box::new(|f| f.program_id = "nope".into())),
            (
                "support_amount",
                Box::new(|f| f.support_amount = "-1".into()),
            ),
            (
                "support_amount",
                Box::new(|f| f.support_amount = "1e9".into()),
            ),
            (
                "support_amount",
                Box::new(|f| f.support_amount = "20000000".into()),
            ),
            (
                "justification",
                Box::new(|f| f.justification = "pls".into()),
            ),
            (
                "program",
                Box::new(|f| {
                    f.program_id = String::new();
                    f.support_amount = "5".into();
                }),
            ),
        ];
        for (want, edit) in cases {
            let mut f = form(&w);
            edit(&mut f);
            let err = c.submit(&w.tenant, &f, NOW).await.unwrap_err();
            assert_eq!(field_of(err), want, "{f:?}");
        }
        // A research lab is not eligible for a startup program.
        let lab = w.platform.tenant("lab@research.example", "research").await;
        assert_eq!(
            field_of(c.submit(&lab, &form(&w), NOW).await.unwrap_err()),
            "program"
        );
        // Partners run factories; they do not request capacity.
        assert!(matches!(
            c.submit(&w.partner, &form(&w), NOW).await,
            Err(ComputeError::Forbidden)
        ));
        assert!(c.my_requests(&w.tenant).await.unwrap().is_empty());
        // Whole GPUs need no model.
        let mut gpus = form(&w);
        gpus.what = "gpus".into();
        gpus.amount = "8".into();
        gpus.program_id = String::new();
        gpus.support_amount = String::new();
        let r = c.submit(&w.tenant, &gpus, NOW).await.unwrap();
        assert_eq!(r.capacity, compute::Capacity::Gpus { count: 8 });
        t.finish().await;
    }
);

db::storage_test!(
    async fn approval_with_a_grant_activates_on_its_start_and_ends_on_its_end(t) {
        let w = world(&t.db).await;
        let c = &w.compute;
        let r = c.submit(&w.tenant, &form(&w), NOW).await.unwrap();
        assert_eq!(r.status, Status::Submitted);
        assert_eq!(
            r.support.as_ref().unwrap().amount,
            Nanos::from_dollars(250).unwrap()
        );
        let r = c
            .approve(&w.partner, &r.id, &decision(&w.partner_program, "30"), NOW)
            .await
            .unwrap();
        assert_eq!(r.status, Status::Approved);
        let grant = r.grant.clone().unwrap();
        assert!(grant.grant_id.is_some());
        assert_eq!(grant.amount, Nanos::from_dollars(30).unwrap());
        let wallet = w.credits.wallet(&w.tenant.org_id, NOW).await.unwrap();
        assert_eq!(wallet.available(), Nanos::from_dollars(30).unwrap());
        assert_eq!(wallet.buckets[0].label, "Savanna builders");
        // Approving twice changes nothing.
        assert!(matches!(
            c.approve(&w.partner, &r.id, &decision(&w.partner_program, "30"), NOW)
                .await,
            Err(ComputeError::Conflict(_))
        ));
        assert_eq!(
            w.credits
                .wallet(&w.tenant.org_id, NOW)
                .await
                .unwrap()
                .available(),
            Nanos::from_dollars(30).unwrap()
        );
        // Not before the start; active from its first day; ended after its last.
        assert_eq!(c.advance(NOW).await.unwrap(), 0);
        assert_eq!(
            c.allocation(&w.tenant.org_id, "tiny/llama", NOW)
                .await
                .unwrap(),
            None
        );
        let start = compute::Day::parse("2026-12-01", "d").unwrap().ms();
        assert_eq!(c.advance(start).await.unwrap(), 1);
        let r = c.request(&w.tenant, &r.id).await.unwrap();
        assert_eq!(r.status, Status::Active);
        let alloc = c
            .allocation(&w.tenant.org_id, "tiny/llama", start + 1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((alloc.share_weight, alloc.rate_limit_tpm), (10, 60_000));
        assert_eq!(
            c.allocation(&w.other_tenant.org_id, "tiny/llama", start)
                .await
                .unwrap(),
            None
        );
        // The tenant cannot cancel what runs.
        assert!(matches!(
            c.cancel(&w.tenant, &r.id, start).await,
            Err(ComputeError::Conflict(_))
        ));
        // The last day is included: still active through it, ended after it.
        let last = compute::Day::parse("2027-03-01", "d").unwrap().ms();
        assert_eq!(c.advance(last + DAY - 1).await.unwrap(), 0);
        assert!(
            c.allocation(&w.tenant.org_id, "tiny/llama", last + DAY - 1)
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(c.advance(last + DAY).await.unwrap(), 1);
        assert_eq!(
            c.request(&w.tenant, &r.id).await.unwrap().status,
            Status::Ended
        );
        let actions: Vec<String> = c
            .timeline(&w.tenant, &r.id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(
            actions,
            [
                "submitted",
                "approved",
                "credit granted",
                "activated",
                "ended"
            ]
        );
        assert_eq!(w.credits.ledger().verify().await.unwrap(), Ok(()));
        t.finish().await;
    }
);

db::storage_test!(
    async fn changes_rejections_and_cancellations_follow_the_state_machine(t) {
        let w = world(&t.db).await;
        let c = &w.compute;
        let r = c.submit(&w.tenant, &form(&w), NOW).await.unwrap();
        // The tenant cannot decide its own request; a reason is required.
        assert!(matches!(
            c.approve(&w.tenant, &r.id, &decision("", ""), NOW).await,
            Err(ComputeError::Forbidden)
        ));
        assert_eq!(
            field_of(
                c.request_changes(&w.partner, &r.id, " ", NOW)
                    .await
                    .unwrap_err()
            ),
            "reason"
        );
        let r = c
            .request_changes(&w.partner, &r.id, "Start in January please", NOW)
            .await
            .unwrap();
        assert_eq!(r.status, Status::ChangesRequested);
        assert_eq!(r.reason.as_deref(), Some("Start in January please"));
        // Cannot approve or resubmit from the wrong state; the tenant resubmits new terms.
        assert!(matches!(
            c.approve(&w.partner, &r.id, &decision("", ""), NOW).await,
            Err(ComputeError::Conflict(_))
        ));
        let mut f = form(&w);
        f.starts_on = "2027-01-04".into();
        let r = c.resubmit(&w.tenant, &r.id, &f, NOW).await.unwrap();
        assert_eq!(r.status, Status::Submitted);
        assert_eq!(r.starts_at.to_string(), "2027-01-04");
        assert!(matches!(
            c.resubmit(&w.tenant, &r.id, &f, NOW).await,
            Err(ComputeError::Conflict(_))
        ));
        let r = c
            .reject(&w.operator, &r.id, "No capacity in that window", NOW)
            .await
            .unwrap();
        assert_eq!(r.status, Status::Rejected);
        for res in [
            c.cancel(&w.tenant, &r.id, NOW).await,
            c.approve(&w.operator, &r.id, &decision("", ""), NOW).await,
            c.reject(&w.operator, &r.id, "again", NOW).await,
            c.end(&w.operator, &r.id, "stop it", NOW).await,
        ] {
            assert!(matches!(res, Err(ComputeError::Conflict(_))), "{res:?}");
        }
        // Cancelled by the tenant while submitted, and while approved without a grant.
        let r2 = c.submit(&w.tenant, &form(&w), NOW).await.unwrap();
        assert_eq!(
            c.cancel(&w.tenant, &r2.id, NOW).await.unwrap().status,
            Status::Cancelled
        );
        let r3 = c.submit(&w.tenant, &form(&w), NOW).await.unwrap();
        c.approve(&w.operator, &r3.id, &decision("", ""), NOW)
            .await
            .unwrap();
        assert_eq!(
            c.cancel(&w.tenant, &r3.id, NOW).await.unwrap().status,
            Status::Cancelled
        );
        // The decider ends an active allocation early.
        let r4 = c.submit(&w.tenant, &form(&w), NOW).await.unwrap();
        let mut d = decision("", "");
        d.starts_on = "2026-11-26".into();
        let r4 = c.approve(&w.operator, &r4.id, &d, NOW).await.unwrap();
        assert_eq!(r4.status, Status::Active);
        assert!(matches!(
            c.end(&w.tenant, &r4.id, "enough", NOW).await,
            Err(ComputeError::Forbidden)
        ));
        assert_eq!(
            c.end(&w.partner, &r4.id, "Maintenance window", NOW)
                .await
                .unwrap()
                .status,
            Status::Ended
        );
        t.finish().await;
    }
);

db::storage_test!(
    async fn grants_on_approval_stay_within_the_program_budget(t) {
        let w = world(&t.db).await;
        let c = &w.compute;
        let a = c.submit(&w.tenant, &form(&w), NOW).await.unwrap();
        let b = c.submit(&w.other_tenant, &form(&w), NOW).await.unwrap();
        // The partner may not spend the vendor's program, nor more than its own has left.
        assert_eq!(
            field_of(
                c.approve(&w.partner, &a.id, &decision(&w.program, "10"), NOW)
                    .await
                    .unwrap_err()
            ),
            "grant_program"
        );
        assert_eq!(
            field_of(
                c.approve(&w.partner, &a.id, &decision(&w.partner_program, "51"), NOW)
                    .await
                    .unwrap_err()
            ),
            "grant_amount"
        );
        assert_eq!(
            field_of(
                c.approve(&w.partner, &a.id, &decision(&w.partner_program, "-3"), NOW)
                    .await
                    .unwrap_err()
            ),
            "grant_amount"
        );
        assert_eq!(
            c.request(&w.tenant, &a.id).await.unwrap().status,
            Status::Submitted
        );
        c.approve(&w.partner, &a.id, &decision(&w.partner_program, "40"), NOW)
            .await
            .unwrap();
        // $10 left: a $20 grant is refused before anything is decided.
        assert_eq!(
            field_of(
                c.approve(&w.partner, &b.id, &decision(&w.partner_program, "20"), NOW)
                    .await
                    .unwrap_err()
            ),
            "grant_amount"
        );
        assert_eq!(
            c.request(&w.other_tenant, &b.id).await.unwrap().status,
            Status::Submitted
        );
        let b = c
            .approve(&w.partner, &b.id, &decision(&w.partner_program, "10"), NOW)
            .await
            .unwrap();
        assert!(b.grant.unwrap().grant_id.is_some());
        let program = w
            .credits
            .program(&w.partner_program)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(program.remaining, Nanos::ZERO);
        assert_eq!(w.credits.ledger().verify().await.unwrap(), Ok(()));
        t.finish().await;
    }
);

db::storage_test!(
    async fn tenants_and_partners_cannot_cross_into_each_others_requests(t) {
        let w = world(&t.db).await;
        let c = &w.compute;
        let a = c.submit(&w.tenant, &form(&w), NOW).await.unwrap();
        let mut elsewhere = form(&w);
        elsewhere.factory_id = w.other_factory.clone();
        let on_other = c.submit(&w.tenant, &elsewhere, NOW).await.unwrap();
        // Another tenant: the request does not exist for them (T1).
        for res in [
            c.request(&w.other_tenant, &a.id).await,
            c.cancel(&w.other_tenant, &a.id, NOW).await,
            c.resubmit(&w.other_tenant, &a.id, &form(&w), NOW).await,
            c.approve(&w.other_tenant, &a.id, &decision("", ""), NOW)
                .await,
        ] {
            assert!(matches!(res, Err(ComputeError::NotFound)), "{res:?}");
        }
        assert!(c.timeline(&w.other_tenant, &a.id).await.is_err());
        assert!(c.my_requests(&w.other_tenant).await.unwrap().is_empty());
        // Another partner: neither sees nor decides requests on factories not its own (T2).
        for res in [
            c.request(&w.other_partner, &a.id).await,
            c.approve(&w.other_partner, &a.id, &decision("", ""), NOW)
                .await,
            c.reject(&w.other_partner, &a.id, "not mine", NOW).await,
        ] {
            assert!(matches!(res, Err(ComputeError::NotFound)), "{res:?}");
        }
        // A member of the right partner sees the request but does not decide it.
        let (_, token) = w
            .accounts
            .invite(
                &w.partner,
                "member@savanna-cloud.example",
                accounts::OrgRole::Member,
            )
            .await
            .unwrap();
        let member = w
            .accounts
            .accept_invitation(&token, PASSWORD)
            .await
            .unwrap();
        assert_eq!(c.request(&member, &a.id).await.unwrap().id, a.id);
        assert!(matches!(
            c.approve(&member, &a.id, &decision("", ""), NOW).await,
            Err(ComputeError::Forbidden)
        ));
        let ids = |v: Vec<compute::ComputeRequest>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(c.queue(&w.partner).await.unwrap()), vec![a.id.clone()]);
        assert_eq!(
            ids(c.queue(&w.other_partner).await.unwrap()),
            vec![on_other.id.clone()]
        );
        assert_eq!(c.queue(&w.operator).await.unwrap().len(), 2);
        // The tenant's queue is its requests' deciders only: a tenant decides nothing.
        assert!(c.queue(&w.tenant).await.unwrap().is_empty());
        // The grant lands in the right wallet and nowhere else.
        c.approve(&w.operator, &a.id, &decision(&w.program, "25"), NOW)
            .await
            .unwrap();
        assert_eq!(
            w.credits
                .wallet(&w.other_tenant.org_id, NOW)
                .await
                .unwrap()
                .available(),
            Nanos::ZERO
        );
        let history = w
            .credits
            .ledger()
            .wallet_history(&w.other_tenant.org_id, 10)
            .await
            .unwrap();
        assert!(history.is_empty());
        t.finish().await;
    }
);

db::storage_test!(
    async fn only_operators_create_factories_and_only_for_partners(t) {
        let w = world(&t.db).await;
        let spec = FactorySpec {
            partner_org_id: w.partner.org_id.clone(),
            name: "Lagos 2".into(),
            region: "africa".into(),
            gpu_class: "H200".into(),
            models: "tiny/llama".into(),
        };
        assert!(matches!(
            w.compute.create_factory(&w.partner, &spec).await,
            Err(ComputeError::Forbidden)
        ));
        let mut bad = spec.clone();
        bad.partner_org_id = w.tenant.org_id.clone();
        assert_eq!(
            field_of(
                w.compute
                    .create_factory(&w.operator, &bad)
                    .await
                    .unwrap_err()
            ),
            "partner"
        );
        let mut bad = spec.clone();
        bad.gpu_class = "TPU".into();
        assert_eq!(
            field_of(
                w.compute
                    .create_factory(&w.operator, &bad)
                    .await
                    .unwrap_err()
            ),
            "gpu_class"
        );
        let mut bad = spec.clone();
        bad.models = " , ".into();
        assert_eq!(
            field_of(
                w.compute
                    .create_factory(&w.operator, &bad)
                    .await
                    .unwrap_err()
            ),
            "models"
        );
        let f = w.compute.create_factory(&w.operator, &spec).await.unwrap();
        assert_eq!(f.partner_name, "Savanna Cloud");
        assert_eq!(
            field_of(
                w.compute
                    .create_factory(&w.operator, &spec)
                    .await
                    .unwrap_err()
            ),
            "name"
        );
        assert_eq!(w.compute.factories().await.unwrap().len(), 3);
        t.finish().await;
    }
);

db::storage_test!(
    threads = 4;
    async fn concurrent_approvals_decide_once_and_grant_once(t) {
        let w = world(&t.db).await;
        let r = w.compute.submit(&w.tenant, &form(&w), NOW).await.unwrap();
        let tasks: Vec<_> = (0..4)
            .map(|i| {
                let (c, op, id) = (w.compute.clone(), w.operator.clone(), r.id.clone());
                let program = w.program.clone();
                tokio::spawn(async move {
                    c.approve(&op, &id, &decision(&program, &format!("{}", 10 + i)), NOW)
                        .await
                })
            })
            .collect();
        let mut approved = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => approved += 1,
                Err(ComputeError::Conflict(_)) => {}
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!(approved, 1);
        let r = w.compute.request(&w.tenant, &r.id).await.unwrap();
        let wallet = w.credits.wallet(&w.tenant.org_id, NOW).await.unwrap();
        assert_eq!(wallet.available(), r.grant.unwrap().amount);
        assert_eq!(wallet.buckets.len(), 1, "one grant bucket");
        assert_eq!(w.credits.ledger().verify().await.unwrap(), Ok(()));
        t.finish().await;
    }
);

db::storage_test!(
    async fn operators_price_models_exactly_and_no_one_else_can(t) {
        let w = world(&t.db).await;
        let c = &w.compute;
        let p = c
            .set_price(&w.operator, "meta/llama-3.1-8b", "0.15", "$0.6")
            .await
            .unwrap();
        assert_eq!(p.input_per_mtok, Nanos::new(150_000_000));
        assert_eq!(p.output_per_mtok, Nanos::new(600_000_000));
        // A change replaces the price; a second model keeps its own.
        c.set_price(&w.operator, "meta/llama-3.1-8b", "0.2", "0.8")
            .await
            .unwrap();
        c.set_price(&w.operator, "tokenmill-tiny", "0", "0.000000001")
            .await
            .unwrap();
        let all = c.prices().await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].model_id, "meta/llama-3.1-8b");
        assert_eq!(all[0].output_per_mtok, Nanos::new(800_000_000));
        assert_eq!(all[1].output_per_mtok, Nanos::new(1));
        assert_eq!(
            c.price("tokenmill-tiny")
                .await
                .unwrap()
                .unwrap()
                .input_per_mtok,
            Nanos::new(0)
        );
        assert!(c.price("unpriced").await.unwrap().is_none());

        for (model, input, output, bad) in [
            ("", "1", "1", "model_id"),
            ("bad model", "1", "1", "model_id"),
            ("m", "-1", "1", "input_per_mtok"),
            ("m", "1", "abc", "output_per_mtok"),
            ("m", "1", "0.0000000001", "output_per_mtok"),
            ("m", "1001", "1", "input_per_mtok"),
        ] {
            match c.set_price(&w.operator, model, input, output).await {
                Err(ComputeError::Field { field, .. }) => {
                    assert_eq!(field, bad, "{model} {input} {output}")
                }
                other => panic!("{model} {input} {output}: {other:?}"),
            }
        }
        for someone in [&w.tenant, &w.partner] {
            assert!(matches!(
                c.set_price(someone, "meta/llama-3.1-8b", "0", "0").await,
                Err(ComputeError::Forbidden)
            ));
        }
        assert_eq!(c.prices().await.unwrap().len(), 2);
        t.finish().await;
    }
);

db::storage_test!(
    /// A stored factory whose region or GPU class this build does not know is an error that
    /// names the value, not a factory in some default place.
    async fn an_unknown_stored_region_or_gpu_class_is_an_error(t) {
        let w = world(&t.db).await;
        let c = &w.compute;
        assert_eq!(c.factories().await.unwrap().len(), 2);
        for (column, value) in [("region", "atlantis"), ("gpu_class", "Z9000")] {
            let sql = format!("UPDATE factories SET {column} = $1 WHERE id = $2");
            db::sqlx::query(&sql)
                .bind(value)
                .bind(&w.factory)
                .execute(t.db.pool())
                .await
                .unwrap();
            let e = c.factory(&w.factory).await.unwrap_err().to_string();
            assert!(e.contains(value), "{column}: {e}");
            assert!(c.factories().await.is_err(), "{column}");
            db::sqlx::query(&sql)
                .bind(if column == "region" { "africa" } else { "H100" })
                .bind(&w.factory)
                .execute(t.db.pool())
                .await
                .unwrap();
        }
        assert_eq!(c.factories().await.unwrap().len(), 2);
        t.finish().await;
    }
);
