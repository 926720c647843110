//! First start on an empty database: so that a newcomer can sign up and use the playground at
//! once, the platform sets up a local partner ("Local AI cloud") with one factory serving the
//! configured models, list prices for them, an agreement for its revenue share, and a starter
//! credit program that grants every new startup credit at sign-up. Everything is made through the same domain calls an operator's
//! pages use, by the `system` actor, and can be changed there afterwards. It runs once: not
//! when any partner exists already, and not with `TOKENMILL_BOOTSTRAP=0`.

use accounts::{OrgKind, User};
use anyhow::Context;
use app::ssr::AppState;
use compute::{FactorySpec, GpuClass};
use credits::ProgramSpec;
use db::sqlx::Row;
use ledger::Nanos;

const MARKER: &str = "local-factory";
pub const PARTNER_NAME: &str = "Local AI cloud";
const FACTORY_NAME: &str = "Local factory";
const PROGRAM_NAME: &str = "Starter credits";
const REGION: &str = "europe";
/// List prices of the served models, dollars per million input and output tokens.
const INPUT_PRICE: &str = "0.20";
const OUTPUT_PRICE: &str = "0.60";
const STARTER_GRANT_DOLLARS: i64 = 10;
const STARTER_BUDGET_DOLLARS: i64 = 10_000;
const STARTER_LIFETIME_DAYS: u32 = 90;
/// The local partner's agreement from the month of the first start: 70 % of cash usage, and
/// credit-supported usage reimbursed at 50 %.
const PARTNER_SHARE_BPS: u32 = 7000;
const CREDIT_REIMBURSEMENT_BPS: u32 = 5000;

/// The factory's accelerator class from the device the first worker runs on.
pub fn gpu_class(device_id: &str, device_name: &str) -> GpuClass {
    if device_id == "cpu" {
        return GpuClass::Cpu;
    }
    let name = device_name.to_uppercase();
    // Longest names first: "GB200" contains "B200".
    for class in [
        GpuClass::GB200,
        GpuClass::B200,
        GpuClass::H200,
        GpuClass::H100,
        GpuClass::A100,
        GpuClass::L40S,
    ] {
        if name.contains(class.code()) {
            return class;
        }
    }
    tracing::warn!(
        device = device_name,
        "unknown GPU; the local factory is listed as H100"
    );
    GpuClass::H100
}

/// Sets up the local partner, factory, prices and starter program; `false` when there was
/// nothing to do.
pub async fn first_start(app: &AppState, models: &[String], gpu: GpuClass) -> anyhow::Result<bool> {
    let db = app.accounts.db();
    // Partners other than our own local one: an operator set the platform up. (The local one
    // alone is what a first start that failed half-way leaves; this start finishes it.)
    let partners: i64 = db::sqlx::query(
        "SELECT COUNT(*) AS n FROM organizations WHERE kind = 'partner' AND name <> $1",
    )
    .bind(PARTNER_NAME)
    .fetch_one(db.pool())
    .await?
    .try_get("n")?;
    if partners > 0 || models.is_empty() {
        return Ok(false);
    }
    let claimed = db::sqlx::query("INSERT INTO first_start (name, created_at) VALUES ($1, $2)")
        .bind(MARKER)
        .bind(db::now_ms())
        .execute(db.pool())
        .await;
    match claimed {
        Ok(_) => {}
        Err(e) if db::is_unique_violation(&e) => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    let system = app.accounts.system_actor().await?;
    if let Err(e) = set_up(app, &system, models, gpu).await {
        // Leave the database as a retry can use: the next start tries again.
        db::sqlx::query("DELETE FROM first_start WHERE name = $1")
            .bind(MARKER)
            .execute(db.pool())
            .await
            .ok();
        return Err(e);
    }
    Ok(true)
}

/// Each step first looks for what an earlier, interrupted first start made, so a retry
/// completes the set-up instead of stopping at the partner it finds.
async fn set_up(
    app: &AppState,
    system: &User,
    models: &[String],
    gpu: GpuClass,
) -> anyhow::Result<()> {
    let existing = app
        .accounts
        .partners(system)
        .await?
        .into_iter()
        .find(|p| p.name == PARTNER_NAME);
    let partner = match existing {
        Some(p) => p,
        None => app
            .accounts
            .create_partner_org(system, PARTNER_NAME, REGION)
            .await
            .context("creating the local partner")?,
    };
    let existing = app
        .compute
        .factories()
        .await?
        .into_iter()
        .find(|f| f.partner_org_id == partner.id && f.name == FACTORY_NAME);
    let factory = match existing {
        Some(f) => f,
        None => app
            .compute
            .create_factory(
                system,
                &FactorySpec {
                    partner_org_id: partner.id.clone(),
                    name: FACTORY_NAME.into(),
                    region: REGION.into(),
                    gpu_class: gpu.code().into(),
                    models: models.join(","),
                },
            )
            .await
            .context("creating the local factory")?,
    };
    for model in models {
        app.compute
            .set_price(system, model, INPUT_PRICE, OUTPUT_PRICE)
            .await
            .with_context(|| format!("pricing {model}"))?;
    }
    let existing = app
        .credits
        .programs()
        .await?
        .into_iter()
        .find(|p| p.name == PROGRAM_NAME);
    let program = match existing {
        Some(p) => p,
        None => app
            .credits
            .create_program(&ProgramSpec {
                name: PROGRAM_NAME.into(),
                sponsor_org_id: None,
                eligible_kinds: vec![OrgKind::Startup],
                eligible_regions: Vec::new(),
                grant_amount: Nanos::from_dollars(STARTER_GRANT_DOLLARS).expect("small"),
                grant_lifetime_days: STARTER_LIFETIME_DAYS,
                budget: Nanos::from_dollars(STARTER_BUDGET_DOLLARS).expect("small"),
                auto_on_signup: true,
                requires_verified_email: true,
            })
            .await
            .context("creating the starter credit program")?,
    };
    if app.statements.agreements(&partner.id).await?.is_empty() {
        let now = db::now_ms();
        app.statements
            .add_agreement(
                &system.email,
                &statements::NewAgreement {
                    partner_org_id: partner.id.clone(),
                    from: statements::Period::of_ms(now).start_ms(),
                    to: None,
                    terms: statements::Terms {
                        partner_share_bps: PARTNER_SHARE_BPS,
                        credit_reimbursement_bps: CREDIT_REIMBURSEMENT_BPS,
                        recoupment: None,
                    },
                    note: "Set up at first start".into(),
                },
                now,
            )
            .await
            .context("creating the local partner's agreement")?;
    }
    tracing::info!(
        partner = partner.name,
        factory = factory.name,
        models = models.join(","),
        program = program.name,
        "first start: local partner, factory, prices and starter credits set up"
    );
    Ok(())
}
