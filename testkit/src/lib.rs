//! What the storage tests of several crates build alike, built one way: a platform on one
//! database (its operator, partners with their owners, factories, tenants of each kind,
//! credit-support programs) and the one password every test account signs in with.
//!
//! A dev-dependency only. It depends on the crates whose tests use it; Cargo allows that
//! cycle because it runs through dev-dependencies, and integration tests link the same
//! library the kit does.

pub mod nats;

use accounts::{Accounts, SignUpForm, SignUpOutcome, User};
use compute::{Compute, Factory, FactorySpec};
use credits::{Credits, Program, ProgramSpec};
use db::Db;
use ledger::Nanos;

/// The password of every account the tests make (long enough for the password policy).
pub const PASSWORD: &str = "correct horse battery staple 42";

/// Where the platform's organisations and factories are, unless a test says otherwise.
pub const REGION: &str = "africa";

/// A startup's sign-up by `email` for the organisation `org_name`, with [`PASSWORD`].
pub fn sign_up_form(email: &str, org_name: &str) -> SignUpForm {
    SignUpForm {
        email: email.into(),
        password: PASSWORD.into(),
        org_name: org_name.into(),
        org_kind: "startup".into(),
        region: REGION.into(),
    }
}

/// Signs `form` up and returns the new owner; panics when the address had an account.
pub async fn signed_up(accounts: &Accounts, form: SignUpForm) -> User {
    let email = form.email.clone();
    let SignUpOutcome::Created { user_id, .. } = accounts
        .sign_up(form, &db::new_id())
        .await
        .expect("sign up")
    else {
        panic!("{email} was not created: it has an account already")
    };
    accounts
        .user(&user_id)
        .await
        .expect("read the new user")
        .expect("the new user exists")
}

/// The services of one database, and its operator (`ops@tokenmill.example`).
#[derive(Clone)]
pub struct Platform {
    pub db: Db,
    pub accounts: Accounts,
    pub credits: Credits,
    pub compute: Compute,
    pub operator: User,
}

impl Platform {
    pub async fn new(db: &Db) -> Platform {
        let accounts = Accounts::new(db.clone(), Default::default());
        let credits = Credits::new(db.clone());
        let compute = Compute::new(db.clone(), accounts.clone(), credits.clone());
        let operator = accounts
            .create_operator("ops@tokenmill.example", PASSWORD)
            .await
            .expect("create the operator");
        Platform {
            db: db.clone(),
            accounts,
            credits,
            compute,
            operator,
        }
    }

    /// A partner organisation called `name`, created by the operator, and its owner, who
    /// accepted the invitation (`owner@<name with dashes>.example`).
    pub async fn partner(&self, name: &str) -> User {
        let email = format!("owner@{}.example", name.replace(' ', "-").to_lowercase());
        let (_, _, token) = self
            .accounts
            .create_partner(&self.operator, name, REGION, &email)
            .await
            .expect("create the partner");
        self.accounts
            .accept_invitation(&token, PASSWORD)
            .await
            .expect("accept the partner's invitation")
    }

    /// A factory of the partner organisation `partner_org_id`, with H100s, serving `models`
    /// (comma-separated).
    pub async fn factory(&self, partner_org_id: &str, name: &str, models: &str) -> Factory {
        self.compute
            .create_factory(
                &self.operator,
                &FactorySpec {
                    partner_org_id: partner_org_id.to_string(),
                    name: name.into(),
                    region: REGION.into(),
                    gpu_class: "H100".into(),
                    models: models.into(),
                },
            )
            .await
            .expect("create the factory")
    }

    /// An active allocation of `model` on `factory_id` for `tenant`'s organisation, from
    /// today for 30 days, with this share weight and tokens-per-minute limit, approved by the
    /// operator.
    pub async fn allocate(
        &self,
        tenant: &User,
        factory_id: &str,
        model: &str,
        (weight, tokens_per_minute): (u32, u32),
    ) {
        let now = db::now_ms();
        let request = self
            .compute
            .submit(
                tenant,
                &compute::RequestForm {
                    factory_id: factory_id.to_string(),
                    what: model.into(),
                    amount: "60000".into(),
                    starts_on: compute::Day::containing(now).to_string(),
                    ends_on: compute::Day::containing(now + 30 * 86_400_000).to_string(),
                    commitment: "reserved".into(),
                    program_id: String::new(),
                    support_amount: String::new(),
                    justification: String::new(),
                },
                now,
            )
            .await
            .expect("submit the compute request");
        let decision = compute::Decision {
            share_weight: weight.to_string(),
            rate_limit_tpm: tokens_per_minute.to_string(),
            ..Default::default()
        };
        self.compute
            .approve(&self.operator, &request.id, &decision, now)
            .await
            .expect("approve the compute request");
        self.compute
            .advance(now)
            .await
            .expect("activate the allocation");
    }

    /// A tenant organisation of `kind` (`startup`, `enterprise`, …) signed up by `email`,
    /// named `<email> org`: its owner.
    pub async fn tenant(&self, email: &str, kind: &str) -> User {
        let form = SignUpForm {
            org_kind: kind.into(),
            ..sign_up_form(email, &format!("{email} org"))
        };
        signed_up(&self.accounts, form).await
    }

    /// A program for startups, sponsored by `sponsor_org_id` (the vendor when `None`), granting
    /// `grant` dollars that last `days`, out of `budget` dollars.
    pub async fn program(
        &self,
        name: &str,
        sponsor_org_id: Option<&str>,
        (grant, days, budget): (i64, u32, i64),
    ) -> Program {
        self.credits
            .create_program(&ProgramSpec {
                name: name.into(),
                sponsor_org_id: sponsor_org_id.map(str::to_string),
                eligible_kinds: vec![accounts::OrgKind::Startup],
                eligible_regions: vec![],
                grant_amount: Nanos::from_dollars(grant).expect("a grant in range"),
                grant_lifetime_days: days,
                budget: Nanos::from_dollars(budget).expect("a budget in range"),
                auto_on_signup: false,
                requires_verified_email: false,
            })
            .await
            .expect("create the program")
    }
}
