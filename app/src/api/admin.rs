//! Server functions of the operators' Admin pages for factories and credit-support programs.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::AppError;
use crate::api::FactoryView;
#[cfg(feature = "ssr")]
use crate::ssr::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramView {
    pub id: String,
    pub name: String,
    pub sponsor: String,
    pub eligible: String,
    pub grant: String,
    pub lifetime_days: i64,
    pub budget: String,
    pub remaining: String,
    pub auto_on_signup: bool,
    pub requires_verified_email: bool,
    /// What the budget went to: the latest grants, newest first.
    pub grants: Vec<ProgramGrantView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramGrantView {
    pub org_name: String,
    pub amount: String,
    pub reason: String,
    pub granted: String,
}

/// Grants listed under each program.
pub const PROGRAM_GRANTS_SHOWN: i64 = 50;

/// The program form: one optional field per kind of organisation (a ticked checkbox sends it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgramForm {
    pub name: String,
    /// A partner organisation's id, or `vendor`.
    pub sponsor: String,
    pub startup: Option<String>,
    pub model_builder: Option<String>,
    pub enterprise: Option<String>,
    pub research: Option<String>,
    pub regional: Option<String>,
    /// One optional field per region (a ticked checkbox sends it); none ticked: every region.
    pub north_america: Option<String>,
    pub latin_america: Option<String>,
    pub europe: Option<String>,
    pub middle_east: Option<String>,
    pub africa: Option<String>,
    pub south_asia: Option<String>,
    pub east_asia: Option<String>,
    pub southeast_asia: Option<String>,
    pub oceania: Option<String>,
    pub grant_amount: String,
    pub grant_lifetime_days: String,
    pub budget: String,
    pub auto_on_signup: Option<String>,
    pub requires_verified_email: Option<String>,
}

#[server(endpoint = "factories")]
pub async fn factories() -> Result<Vec<FactoryView>, AppError> {
    let app = state()?;
    require_user().await.map_err(with_status)?;
    Ok(app
        .compute
        .factories()
        .await
        .map_err(with_status)?
        .into_iter()
        .map(super::compute::convert::factory)
        .collect())
}

#[server(endpoint = "create_factory")]
pub async fn create_factory(
    partner_org_id: String,
    name: String,
    region: String,
    gpu_class: String,
    models: String,
) -> Result<(), AppError> {
    let (app, user) = signed_in().await?;
    let spec = compute::FactorySpec {
        partner_org_id,
        name,
        region,
        gpu_class,
        models,
    };
    let factory = app
        .compute
        .create_factory(&user, &spec)
        .await
        .map_err(with_status)?;
    let after = serde_json::json!({
        "name": factory.name, "partner": factory.partner_name, "region": factory.region.label(),
        "gpu_class": spec.gpu_class, "models": factory.models,
    });
    audited(
        &app,
        &user,
        accounts::Change {
            action: "factory.create",
            target_kind: "factory",
            target_id: &factory.id,
            target_org_id: Some(&factory.partner_org_id),
            before: None,
            after: audit_json(after),
        },
    )
    .await;
    Ok(())
}

#[server(endpoint = "programs")]
pub async fn programs() -> Result<Vec<ProgramView>, AppError> {
    let app = state()?;
    require_operator().await.map_err(with_status)?;
    let st = app.clone();
    let mut out = Vec::new();
    for p in st.credits.programs().await.map_err(with_status)? {
        let sponsor = match &p.sponsor_org_id {
            Some(org) => st
                .accounts
                .org(org)
                .await
                .map_err(with_status)?
                .map(|o| o.name)
                .unwrap_or_else(|| "unknown partner".into()),
            None => "Vendor".into(),
        };
        let grants = st
            .credits
            .program_grants(&p.id, PROGRAM_GRANTS_SHOWN)
            .await
            .map_err(with_status)?
            .into_iter()
            .map(|g| ProgramGrantView {
                org_name: g.org_name,
                amount: g.amount.to_string(),
                reason: g.reason,
                granted: crate::api::date_time(g.created_at),
            })
            .collect();
        let kinds: Vec<_> = p.eligible_kinds.iter().map(|k| k.label()).collect();
        let regions: Vec<_> = p.eligible_regions.iter().map(|r| r.label()).collect();
        out.push(ProgramView {
            id: p.id,
            name: p.name,
            sponsor,
            eligible: format!(
                "{} in {}",
                kinds.join(", "),
                if regions.is_empty() {
                    "every region".to_string()
                } else {
                    regions.join(", ")
                }
            ),
            grant: p.grant_amount.to_string(),
            lifetime_days: p.grant_lifetime_ms / 86_400_000,
            budget: p.budget.to_string(),
            remaining: p.remaining.to_string(),
            auto_on_signup: p.auto_on_signup,
            requires_verified_email: p.requires_verified_email,
            grants,
        });
    }
    Ok(out)
}

#[server(endpoint = "create_program")]
pub async fn create_program(form: ProgramForm) -> Result<(), AppError> {
    let app = state()?;
    use accounts::{OrgKind, Region};
    use ledger::Nanos;
    let user = require_operator().await.map_err(with_status)?;
    let st = app.clone();
    let money = |text: &str, field: &str| {
        Nanos::parse_dollars(text).map_err(|e| AppError::Field {
            field: field.into(),
            message: e.to_string(),
        })
    };
    let sponsor_org_id = match form.sponsor.trim() {
        "vendor" => None,
        id => {
            let org = st.accounts.org(id).await.map_err(with_status)?;
            match org {
                Some(o) if o.kind == OrgKind::Partner => Some(o.id),
                _ => {
                    return Err(with_status(AppError::Field {
                        field: "sponsor".into(),
                        message: "Choose the vendor or a partner.".into(),
                    }));
                }
            }
        }
    };
    let ticked = [
        (&form.startup, OrgKind::Startup),
        (&form.model_builder, OrgKind::ModelBuilder),
        (&form.enterprise, OrgKind::Enterprise),
        (&form.research, OrgKind::Research),
        (&form.regional, OrgKind::Regional),
    ];
    let regions = [
        (&form.north_america, Region::NorthAmerica),
        (&form.latin_america, Region::LatinAmerica),
        (&form.europe, Region::Europe),
        (&form.middle_east, Region::MiddleEast),
        (&form.africa, Region::Africa),
        (&form.south_asia, Region::SouthAsia),
        (&form.east_asia, Region::EastAsia),
        (&form.southeast_asia, Region::SoutheastAsia),
        (&form.oceania, Region::Oceania),
    ];
    let eligible_regions = regions
        .iter()
        .filter(|(on, _)| on.is_some())
        .map(|(_, r)| *r)
        .collect();
    let spec = credits::ProgramSpec {
        name: form.name,
        sponsor_org_id,
        eligible_kinds: ticked
            .iter()
            .filter(|(on, _)| on.is_some())
            .map(|(_, k)| *k)
            .collect(),
        eligible_regions,
        grant_amount: money(&form.grant_amount, "grant_amount").map_err(with_status)?,
        grant_lifetime_days: form.grant_lifetime_days.trim().parse().map_err(|_| {
            with_status(AppError::Field {
                field: "grant_lifetime_days".into(),
                message: "Enter a whole number of days.".into(),
            })
        })?,
        budget: money(&form.budget, "budget").map_err(with_status)?,
        auto_on_signup: form.auto_on_signup.is_some(),
        requires_verified_email: form.requires_verified_email.is_some(),
    };
    let program = st
        .credits
        .create_program(&spec)
        .await
        .map_err(with_status)?;
    let after = serde_json::json!({
        "name": program.name, "sponsor": program.sponsor_org_id.as_deref().unwrap_or("vendor"),
        "grant": program.grant_amount.to_string(), "budget": form.budget.trim(),
        "grant_lifetime_days": form.grant_lifetime_days.trim(),
        "auto_on_signup": form.auto_on_signup.is_some(),
        "requires_verified_email": form.requires_verified_email.is_some(),
    });
    audited(
        &st,
        &user,
        accounts::Change {
            action: "program.create",
            target_kind: "program",
            target_id: &program.id,
            target_org_id: program.sponsor_org_id.as_deref(),
            before: None,
            after: audit_json(after),
        },
    )
    .await;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrgView {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub region: String,
    pub balance: String,
    pub suspended: Option<String>,
}

/// Organisations for the operators' console, searched by name.
#[server(endpoint = "organizations")]
pub async fn organizations(search: String) -> Result<Vec<OrgView>, AppError> {
    let app = state()?;
    let user = require_operator().await.map_err(with_status)?;
    let now = db::now_ms();
    let mut out = Vec::new();
    for (org, suspended_at) in app
        .accounts
        .organizations(&user, &search)
        .await
        .map_err(with_status)?
    {
        let balance = app
            .credits
            .wallet(&org.id, now)
            .await
            .map_err(with_status)?
            .available();
        out.push(OrgView {
            id: org.id,
            name: org.name,
            kind: org.kind.label().to_string(),
            region: org.region.label().to_string(),
            balance: balance.to_string(),
            suspended: suspended_at.map(super::date),
        });
    }
    Ok(out)
}

/// Suspends (`suspend` = "1") or resumes an organisation: its sessions and API keys are refused
/// from their next request.
#[server(endpoint = "set_org_suspended")]
pub async fn set_org_suspended(org_id: String, suspend: String) -> Result<(), AppError> {
    let app = state()?;
    let user = require_operator().await.map_err(with_status)?;
    let suspend = suspend == "1";
    let was = app
        .accounts
        .set_suspended(&user, &org_id, suspend)
        .await
        .map_err(with_status)?;
    audited(
        &app,
        &user,
        accounts::Change {
            action: if suspend {
                "organization.suspend"
            } else {
                "organization.resume"
            },
            target_kind: "organization",
            target_id: &org_id,
            target_org_id: Some(&org_id),
            before: audit_json(serde_json::json!({ "suspended": was })),
            after: audit_json(serde_json::json!({ "suspended": suspend })),
        },
    )
    .await;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    /// The worker's place in the pool (what drain and restart name).
    pub index: usize,
    pub model: String,
    pub device: String,
    pub memory: String,
    pub state: String,
    pub running: usize,
    pub waiting: usize,
    pub kv_used: usize,
    pub kv_total: usize,
    /// Decode throughput of the latest step: sequences in it over its duration.
    pub tokens_per_s: f64,
    pub last_step_ms: f64,
    pub tokens_generated: u64,
    pub preemptions: u64,
}

/// The worker pool of this portal instance, read now (the page polls it).
#[server(endpoint = "worker_pool")]
pub async fn worker_pool() -> Result<Vec<WorkerView>, AppError> {
    let app = state()?;
    require_operator().await.map_err(with_status)?;
    let Some(pool) = app.jobs.pool() else {
        return Ok(Vec::new());
    };
    Ok(pool
        .status()
        .into_iter()
        .map(|w| {
            let step = w.last_step.as_secs_f64();
            WorkerView {
                device: format!("{} ({})", w.device_name, w.device),
                memory: w.device_memory_bytes.map_or("unknown".into(), |b| {
                    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
                }),
                state: w.state.as_str().into(),
                index: w.index,
                tokens_per_s: if w.running > 0 && step > 0.0 {
                    w.running as f64 / step
                } else {
                    0.0
                },
                last_step_ms: step * 1000.0,
                model: w.model_id,
                running: w.running,
                waiting: w.waiting,
                kv_used: w.kv_blocks_used,
                kv_total: w.kv_blocks_total,
                tokens_generated: w.tokens_generated,
                preemptions: w.preemptions,
            }
        })
        .collect())
}

/// Worker `index` of this instance's pool: the pool, the worker's model and its state now.
#[cfg(feature = "ssr")]
fn worker_of(
    app: &AppState,
    index: usize,
) -> Result<(std::sync::Arc<jobs::WorkerPool>, String, &'static str), AppError> {
    let pool = app
        .jobs
        .pool()
        .ok_or_else(|| with_status(AppError::NotFound))?
        .clone();
    let (model, state) = pool
        .status()
        .get(index)
        .map(|w| (w.model_id.clone(), w.state.as_str()))
        .ok_or_else(|| with_status(AppError::NotFound))?;
    Ok((pool, model, state))
}

/// A drain, resume or restart in the audit log, with the worker's state before and after.
#[cfg(feature = "ssr")]
async fn audit_worker(
    app: &AppState,
    user: &accounts::User,
    action: &str,
    (index, model): (usize, &str),
    before: &str,
    after: &str,
) {
    audited(
        app,
        user,
        accounts::Change {
            action,
            target_kind: "worker",
            target_id: &format!("{index} {model}"),
            target_org_id: None,
            before: audit_json(serde_json::json!({ "state": before })),
            after: audit_json(serde_json::json!({ "state": after })),
        },
    )
    .await;
}

/// Takes a worker out of rotation (`drain` = "1": it finishes what it runs and takes nothing
/// new) or puts it back ("0").
#[server(endpoint = "drain_worker")]
pub async fn drain_worker(index: usize, drain: String) -> Result<(), AppError> {
    let app = state()?;
    let user = require_operator().await.map_err(with_status)?;
    let (pool, model, was) = worker_of(&app, index)?;
    let drain = drain == "1";
    pool.set_draining(index, drain)
        .map_err(|e| with_status(AppError::Invalid(e.to_string())))?;
    let (action, now) = if drain {
        ("worker.drain", "draining")
    } else {
        ("worker.resume", "ready")
    };
    audit_worker(&app, &user, action, (index, &model), was, now).await;
    Ok(())
}

/// Restarts a worker in the background: drained, stopped once its requests end (at most a
/// minute), its model loaded again; the page shows it loading, then ready.
#[server(endpoint = "restart_worker")]
pub async fn restart_worker(index: usize) -> Result<(), AppError> {
    let app = state()?;
    let user = require_operator().await.map_err(with_status)?;
    let (pool, model, was) = worker_of(&app, index)?;
    // Out of rotation at once (the restart itself runs in the background).
    pool.set_draining(index, true)
        .map_err(|e| with_status(AppError::Invalid(e.to_string())))?;
    audit_worker(
        &app,
        &user,
        "worker.restart",
        (index, &model),
        was,
        "restarting",
    )
    .await;
    tokio::spawn(async move {
        match pool.restart(index).await {
            Ok(()) => tracing::info!(worker = index, model, "worker restarted"),
            Err(e) => tracing::error!(worker = index, model, error = %e, "worker restart failed"),
        }
    });
    Ok(())
}
