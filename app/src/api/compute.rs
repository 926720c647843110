//! Server functions of the Compute pages: factories, requests, decisions, and the Admin pages
//! for factories and programs.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::AppError;
#[cfg(feature = "ssr")]
use crate::{api::date, ssr::*};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactoryView {
    pub id: String,
    pub name: String,
    pub partner: String,
    pub region: String,
    pub gpu_class: String,
    pub models: Vec<String>,
}

/// A program a form may pick: for tenants those open to them, for deciders those they may
/// grant from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramOption {
    pub id: String,
    pub name: String,
    pub remaining: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRow {
    pub id: String,
    pub org: String,
    pub factory: String,
    pub what: String,
    pub period: String,
    pub status: String,
    pub status_code: String,
    pub created: String,
}

/// The Compute page: what may be asked for, and what this organisation has asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComputeView {
    pub may_request: bool,
    pub factories: Vec<FactoryView>,
    pub programs: Vec<ProgramOption>,
    pub requests: Vec<RequestRow>,
}

/// The terms of a request as its form shows them (to edit after changes were requested).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RequestTerms {
    pub factory_id: String,
    pub what: String,
    pub amount: String,
    pub starts_on: String,
    pub ends_on: String,
    pub commitment: String,
    pub program_id: String,
    pub support_amount: String,
    pub justification: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventView {
    pub when: String,
    pub who: String,
    pub action: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestDetail {
    pub row: RequestRow,
    pub commitment: String,
    pub support: Option<String>,
    pub justification: Option<String>,
    pub reason: Option<String>,
    pub allocation: Option<String>,
    pub grant: Option<String>,
    pub timeline: Vec<EventView>,
    pub can_cancel: bool,
    pub can_resubmit: bool,
    pub can_decide: bool,
    pub can_end: bool,
    /// For the approval form: suggested rate limit and the programs the viewer may grant from.
    pub suggested_tpm: String,
    pub grant_programs: Vec<ProgramOption>,
    pub terms: RequestTerms,
    /// For the resubmit form.
    pub factories: Vec<FactoryView>,
    pub programs: Vec<ProgramOption>,
}

#[cfg(feature = "ssr")]
pub(super) mod convert {
    use super::*;
    use compute::{Capacity, ComputeRequest, Factory, Status};

    pub fn factory(f: Factory) -> FactoryView {
        FactoryView {
            id: f.id,
            name: f.name,
            partner: f.partner_name,
            region: f.region.label().to_string(),
            gpu_class: f.gpu_class.code().to_string(),
            models: f.models,
        }
    }

    pub fn program(p: credits::Program) -> ProgramOption {
        ProgramOption {
            id: p.id,
            name: p.name,
            remaining: p.remaining.to_string(),
        }
    }

    fn with_commas(n: i64) -> String {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    }

    pub fn what(c: &Capacity) -> String {
        match c {
            Capacity::Tokens {
                model,
                tokens_per_minute,
            } => format!("{model} · {} tokens/min", with_commas(*tokens_per_minute)),
            Capacity::Gpus { count } => format!("{count} dedicated GPUs"),
        }
    }

    pub fn row(r: &ComputeRequest) -> RequestRow {
        RequestRow {
            id: r.id.clone(),
            org: r.org_name.clone(),
            factory: r.factory_name.clone(),
            what: what(&r.capacity),
            period: format!("{} → {}", r.starts_at, r.ends_at),
            status: r.status.label().to_string(),
            status_code: r.status.code().to_string(),
            created: date(r.created_at),
        }
    }

    pub fn terms(r: &ComputeRequest) -> RequestTerms {
        let (what, amount) = match &r.capacity {
            Capacity::Tokens {
                model,
                tokens_per_minute,
            } => (model.clone(), tokens_per_minute.to_string()),
            Capacity::Gpus { count } => ("gpus".to_string(), count.to_string()),
        };
        RequestTerms {
            factory_id: r.factory_id.clone(),
            what,
            amount,
            starts_on: r.starts_at.to_string(),
            ends_on: r.ends_at.to_string(),
            commitment: r.commitment.code().to_string(),
            program_id: r
                .support
                .as_ref()
                .map(|s| s.program_id.clone())
                .unwrap_or_default(),
            support_amount: r
                .support
                .as_ref()
                .map(|s| {
                    s.amount
                        .to_string()
                        .trim_start_matches('$')
                        .replace(',', "")
                })
                .unwrap_or_default(),
            justification: r
                .support
                .as_ref()
                .map(|s| s.justification.clone())
                .unwrap_or_default(),
        }
    }

    pub fn is_open(s: Status) -> bool {
        matches!(s, Status::Submitted)
    }
}

/// The programs `org` may apply to.
#[cfg(feature = "ssr")]
async fn programs_open_to(st: &AppState, org_id: &str) -> Result<Vec<ProgramOption>, AppError> {
    let org = st.accounts.org(org_id).await?.ok_or(AppError::NotFound)?;
    Ok(st
        .credits
        .programs()
        .await?
        .into_iter()
        .filter(|p| p.is_eligible(&org) && p.remaining.get() > 0)
        .map(convert::program)
        .collect())
}

#[server(endpoint = "compute")]
pub async fn compute_page() -> Result<ComputeView, AppError> {
    let (app, user) = signed_in().await?;
    let st = app.clone();
    let org = st
        .accounts
        .org(&user.org_id)
        .await
        .map_err(with_status)?
        .ok_or_else(|| with_status(AppError::NotFound))?;
    let factories = st.compute.factories().await.map_err(with_status)?;
    Ok(ComputeView {
        may_request: accounts::OrgKind::TENANT_KINDS.contains(&org.kind),
        factories: factories.into_iter().map(convert::factory).collect(),
        programs: programs_open_to(&st, &user.org_id)
            .await
            .map_err(with_status)?,
        requests: st
            .compute
            .my_requests(&user)
            .await
            .map_err(with_status)?
            .iter()
            .map(convert::row)
            .collect(),
    })
}

#[cfg(feature = "ssr")]
fn form(t: RequestTerms) -> compute::RequestForm {
    compute::RequestForm {
        factory_id: t.factory_id,
        what: t.what,
        amount: t.amount,
        starts_on: t.starts_on,
        ends_on: t.ends_on,
        commitment: t.commitment,
        program_id: t.program_id,
        support_amount: t.support_amount,
        justification: t.justification,
    }
}

#[server(endpoint = "submit_compute")]
pub async fn submit_compute(terms: RequestTerms) -> Result<String, AppError> {
    let (app, user) = signed_in().await?;
    let r = app
        .compute
        .submit(&user, &form(terms), db::now_ms())
        .await
        .map_err(with_status)?;
    leptos_axum::redirect(&format!("/compute/{}", r.id));
    Ok(r.id)
}

#[server(endpoint = "resubmit_compute")]
pub async fn resubmit_compute(id: String, terms: RequestTerms) -> Result<String, AppError> {
    let (app, user) = signed_in().await?;
    let r = app
        .compute
        .resubmit(&user, &id, &form(terms), db::now_ms())
        .await
        .map_err(with_status)?;
    Ok(r.id)
}

#[server(endpoint = "compute_request")]
pub async fn compute_request(id: String) -> Result<RequestDetail, AppError> {
    let (app, user) = signed_in().await?;
    let st = app.clone();
    let r = st.compute.request(&user, &id).await.map_err(with_status)?;
    let timeline = st.compute.timeline(&user, &id).await.map_err(with_status)?;
    let can_decide = r.may_decide(&user) && convert::is_open(r.status);
    let grant_programs = if can_decide {
        let org = st.accounts.org(&r.org_id).await.map_err(with_status)?;
        st.credits
            .programs()
            .await
            .map_err(with_status)?
            .into_iter()
            .filter(|p| user.is_operator || p.sponsor_org_id.as_deref() == Some(&user.org_id))
            .filter(|p| org.as_ref().is_some_and(|o| p.is_eligible(o)))
            .map(convert::program)
            .collect()
    } else {
        Vec::new()
    };
    let requester = r.is_requester(&user);
    let can_resubmit = requester && r.status == compute::Status::ChangesRequested;
    let (factories, programs) = if can_resubmit {
        (
            st.compute
                .factories()
                .await
                .map_err(with_status)?
                .into_iter()
                .map(convert::factory)
                .collect(),
            programs_open_to(&st, &user.org_id)
                .await
                .map_err(with_status)?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    use compute::Status as S;
    Ok(RequestDetail {
        row: convert::row(&r),
        commitment: match r.commitment {
            compute::Commitment::Reserved => "Reserved".into(),
            compute::Commitment::OnDemand => "On demand".into(),
        },
        support: r
            .support
            .as_ref()
            .map(|s| format!("{} from {}", s.amount, s.program_name)),
        justification: r.support.as_ref().map(|s| s.justification.clone()),
        reason: r.reason.clone(),
        allocation: r.allocation.as_ref().map(|a| {
            format!(
                "share weight {}, up to {} tokens/min, {} → {}",
                a.share_weight, a.rate_limit_tpm, a.starts_at, a.ends_at
            )
        }),
        grant: r.grant.as_ref().map(|g| {
            format!(
                "{} from {}{}",
                g.amount,
                g.program_name,
                if g.grant_id.is_some() {
                    ""
                } else {
                    " (being made)"
                }
            )
        }),
        timeline: timeline
            .into_iter()
            .map(|e| EventView {
                when: datetime(e.created_at),
                who: e.actor_email,
                action: e.action,
                detail: e.detail,
            })
            .collect(),
        can_cancel: requester
            && (matches!(r.status, S::Submitted | S::ChangesRequested)
                || (r.status == S::Approved && r.grant.is_none())),
        can_resubmit,
        can_decide,
        can_end: r.may_decide(&user) && matches!(r.status, S::Approved | S::Active),
        suggested_tpm: match &r.capacity {
            compute::Capacity::Tokens {
                tokens_per_minute, ..
            } => tokens_per_minute.to_string(),
            compute::Capacity::Gpus { .. } => String::new(),
        },
        grant_programs,
        terms: convert::terms(&r),
        factories,
        programs,
    })
}

#[cfg(feature = "ssr")]
fn datetime(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{} {:02}:{:02} UTC", date(ms), secs / 3600, secs / 60 % 60)
}

#[server(endpoint = "cancel_compute")]
pub async fn cancel_compute(id: String) -> Result<(), AppError> {
    let (app, user) = signed_in().await?;
    app.clone()
        .compute
        .cancel(&user, &id, db::now_ms())
        .await
        .map_err(with_status)?;
    Ok(())
}

#[server(endpoint = "approvals")]
pub async fn approvals() -> Result<Vec<RequestRow>, AppError> {
    let (app, user) = signed_in().await?;
    Ok(app
        .compute
        .queue(&user)
        .await
        .map_err(with_status)?
        .iter()
        .map(convert::row)
        .collect())
}

#[server(endpoint = "approve_compute")]
pub async fn approve_compute(
    id: String,
    share_weight: String,
    rate_limit_tpm: String,
    starts_on: String,
    ends_on: String,
    grant_program_id: String,
    grant_amount: String,
) -> Result<(), AppError> {
    let (app, user) = signed_in().await?;
    let decision = compute::Decision {
        share_weight,
        rate_limit_tpm,
        starts_on,
        ends_on,
        grant_program_id,
        grant_amount,
    };
    let before = app.compute.request(&user, &id).await.map_err(with_status)?;
    let after = app
        .compute
        .approve(&user, &id, &decision, db::now_ms())
        .await
        .map_err(with_status)?;
    audit_decision(&app, &user, "compute_request.approve", &before, &after).await;
    Ok(())
}

/// A decision on a compute request in the audit log: its status and allocation before and
/// after.
#[cfg(feature = "ssr")]
async fn audit_decision(
    app: &AppState,
    user: &accounts::User,
    action: &str,
    before: &compute::ComputeRequest,
    after: &compute::ComputeRequest,
) {
    let state = |r: &compute::ComputeRequest| {
        serde_json::json!({
            "status": r.status.code(),
            "reason": r.reason,
            "share_weight": r.allocation.as_ref().map(|a| a.share_weight),
            "rate_limit_tpm": r.allocation.as_ref().map(|a| a.rate_limit_tpm),
            "grant": r.grant.is_some(),
        })
    };
    audited(
        app,
        user,
        accounts::Change {
            action,
            target_kind: "compute_request",
            target_id: &after.id,
            target_org_id: Some(&after.org_id),
            before: audit_json(state(before)),
            after: audit_json(state(after)),
        },
    )
    .await;
}

/// Rejects, sends back for changes, or ends early: every decision that carries a reason.
#[server(endpoint = "answer_compute")]
pub async fn answer_compute(id: String, answer: String, reason: String) -> Result<(), AppError> {
    let (app, user) = signed_in().await?;
    let c = &app.compute;
    let now = db::now_ms();
    let before = c.request(&user, &id).await.map_err(with_status)?;
    let (action, after) = match answer.as_str() {
        "reject" => (
            "compute_request.reject",
            c.reject(&user, &id, &reason, now).await,
        ),
        "changes" => (
            "compute_request.request_changes",
            c.request_changes(&user, &id, &reason, now).await,
        ),
        "end" => ("compute_request.end", c.end(&user, &id, &reason, now).await),
        _ => return Err(with_status(AppError::Invalid("Unknown answer.".into()))),
    };
    let after = after.map_err(with_status)?;
    audit_decision(&app, &user, action, &before, &after).await;
    Ok(())
}
