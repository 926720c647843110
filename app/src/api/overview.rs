//! The operators' console at a glance: every partner with its factories and where its
//! statements stand, the approvals waiting, each credit program's budget used, organisations
//! and suspensions, priced models, and this instance's workers and queues.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::AppError;
#[cfg(feature = "ssr")]
use crate::ssr::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartnerGlance {
    pub id: String,
    pub name: String,
    pub factories: usize,
    pub models: Vec<String>,
    /// The next month to close (`YYYY-MM`), or none when every past month is closed.
    pub next_to_close: Option<String>,
    pub closed: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramGlance {
    pub name: String,
    pub budget: String,
    pub used: String,
    /// Budget used, percent (0 for a zero budget).
    pub used_pct: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleView {
    pub partners: Vec<PartnerGlance>,
    pub pending_approvals: usize,
    pub programs: Vec<ProgramGlance>,
    pub organizations: usize,
    pub suspended: usize,
    pub priced_models: usize,
    pub workers_ready: usize,
    pub workers: usize,
    pub running: usize,
    pub waiting: usize,
}

#[server(endpoint = "console_glance")]
pub async fn console_glance() -> Result<ConsoleView, AppError> {
    let app = state()?;
    let user = require_operator().await.map_err(with_status)?;
    console_view(&app, &user).await
}

/// [`console_glance`] for the operator `user` (also part of the dashboard's one read).
#[cfg(feature = "ssr")]
pub(crate) async fn console_view(
    app: &AppState,
    user: &accounts::User,
) -> Result<ConsoleView, AppError> {
    let now = db::now_ms();
    let factories = app.compute.factories().await.map_err(with_status)?;
    let mut partners = Vec::new();
    for p in app.accounts.partners(user).await.map_err(with_status)? {
        let own: Vec<_> = factories
            .iter()
            .filter(|f| f.partner_org_id == p.id)
            .collect();
        let mut models: Vec<String> = own.iter().flat_map(|f| f.models.clone()).collect();
        models.sort();
        models.dedup();
        let statements = app.statements.list(&p.id, now).await.map_err(with_status)?;
        let next = app
            .statements
            .next_closable(&p.id, now)
            .await
            .map_err(with_status)?;
        partners.push(PartnerGlance {
            factories: own.len(),
            models,
            next_to_close: next.map(|m| m.to_string()),
            closed: statements.iter().filter(|s| s.is_closed()).count(),
            id: p.id,
            name: p.name,
        });
    }
    let pending_approvals = app
        .compute
        .queue(user)
        .await
        .map_err(with_status)?
        .iter()
        .filter(|r| r.status == compute::Status::Submitted)
        .count();
    let programs = app
        .credits
        .programs()
        .await
        .map_err(with_status)?
        .into_iter()
        .map(|p| {
            let used = p.budget.get() - p.remaining.get();
            ProgramGlance {
                name: p.name,
                budget: p.budget.to_string(),
                used: ledger::Nanos::new(used).to_string(),
                used_pct: if p.budget.get() > 0 {
                    used as f64 * 100.0 / p.budget.get() as f64
                } else {
                    0.0
                },
            }
        })
        .collect();
    let orgs = app
        .accounts
        .organizations(user, "")
        .await
        .map_err(with_status)?;
    let workers = app.jobs.pool().map(|p| p.status()).unwrap_or_default();
    Ok(ConsoleView {
        partners,
        pending_approvals,
        programs,
        organizations: orgs.len(),
        suspended: orgs.iter().filter(|(_, s)| s.is_some()).count(),
        priced_models: app.compute.prices().await.map_err(with_status)?.len(),
        workers_ready: workers
            .iter()
            .filter(|w| w.state.as_str() == "ready")
            .count(),
        workers: workers.len(),
        running: workers.iter().map(|w| w.running).sum(),
        waiting: workers.iter().map(|w| w.waiting).sum(),
    })
}

/// A tenant's first steps, shown on the dashboard until it has both an API key and usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GettingStarted {
    /// Each credit bucket with a balance: "$10.00 of Starter credits, until 2027-03-07".
    pub credits: Vec<String>,
    /// The OpenAI-compatible base URL (`https://…/v1`).
    pub base_url: String,
    /// A model the organisation can call now, for the sample request.
    pub model: Option<String>,
    pub has_key: bool,
    pub email_verified: bool,
    /// Approved compute requests that have not started: "tiny/llama on Nairobi 1 from 2026-12-14".
    pub upcoming: Vec<String>,
}

/// A partner's month so far, its factories' work, and its latest statements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartnerPanel {
    pub partner_id: String,
    /// `YYYY-MM`, the month to date.
    pub month: String,
    /// Gross usage on the partner's factories this month, at list price.
    pub gross: String,
    /// What the month's statement would pay the partner if it closed now.
    pub payable: String,
    pub factories: Vec<FactoryBusy>,
    /// The latest closed statements, newest first.
    pub statements: Vec<RecentStatement>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactoryBusy {
    pub name: String,
    pub region: String,
    pub gpu_class: String,
    pub models: String,
    /// Over the last 24 hours.
    pub requests: i64,
    pub tokens: i64,
    pub device_seconds: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentStatement {
    pub period: String,
    pub number: i64,
    pub payable: String,
    /// When it was closed (UTC date).
    pub issued: String,
}

/// Everything the dashboard shows, read at once: one resource, so the page hydrates the same
/// way however the reads finish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DashboardView {
    pub me: super::Profile,
    pub team: super::TeamView,
    /// A tenant's money and use.
    pub tenant: Option<super::TenantSummary>,
    pub start: Option<GettingStarted>,
    /// An operator's console.
    pub console: Option<ConsoleView>,
    /// A partner's month, factories and statements.
    pub partner: Option<PartnerPanel>,
}

#[server(endpoint = "dashboard")]
pub async fn dashboard() -> Result<DashboardView, AppError> {
    let app = state()?;
    let origin = origin();
    let signed_in = current_session_user()
        .await
        .map_err(with_status)?
        .ok_or_else(|| with_status(AppError::NotSignedIn))?;
    let user = signed_in.user.clone();
    let setup_required = signed_in.needs_two_factor_setup();
    let me = super::profile_of(&app, signed_in).await?;
    let mut view = DashboardView {
        me,
        team: super::TeamView {
            can_manage: false,
            members: Vec::new(),
            invitations: Vec::new(),
        },
        tenant: None,
        start: None,
        console: None,
        partner: None,
    };
    // Until a required second factor is set up, the page shows who is signed in and the
    // banner that says what to do, nothing else.
    if setup_required {
        return Ok(view);
    }
    view.team = super::team_of(&app, &user).await?;
    if view.me.is_operator {
        view.console = Some(console_view(&app, &user).await?);
    } else if view.me.is_partner {
        view.partner = Some(partner_panel(&app, &user.org_id).await?);
    } else {
        let summary = super::tenant_summary(&app, &user).await?;
        let used = summary.per_day.iter().any(|d| d.tokens > 0);
        let first = getting_started(&app, &user, &origin).await?;
        if !(used && first.has_key) {
            view.start = Some(first);
        }
        view.tenant = Some(summary);
    }
    Ok(view)
}

#[cfg(feature = "ssr")]
async fn getting_started(
    app: &AppState,
    user: &accounts::User,
    origin: &str,
) -> Result<GettingStarted, AppError> {
    let now = db::now_ms();
    let credits = app
        .credits
        .wallet(&user.org_id, now)
        .await
        .map_err(with_status)?
        .buckets
        .into_iter()
        .filter(|b| b.balance.get() > 0)
        .map(|b| match b.expires_at {
            Some(at) => format!("{} of {}, until {}", b.balance, b.label, super::date(at)),
            None => format!("{} of {}", b.balance, b.label),
        })
        .collect();
    let has_key = app
        .keys
        .list(&user.org_id)
        .await
        .map_err(with_status)?
        .iter()
        .any(|k| k.revoked_at.is_none() && k.expires_at.is_none_or(|e| e > now));
    let model = app
        .jobs
        .available_models()
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "models for the dashboard");
            with_status(AppError::Internal)
        })?
        .into_iter()
        .next();
    let upcoming = app
        .compute
        .my_requests(user)
        .await
        .map_err(with_status)?
        .into_iter()
        .filter(|r| r.status == compute::Status::Approved)
        .filter_map(|r| {
            let a = r.allocation.as_ref()?;
            let what = match &r.capacity {
                compute::Capacity::Tokens { model, .. } => model.clone(),
                compute::Capacity::Gpus { count } => format!("{count} GPUs"),
            };
            Some(format!("{what} on {} from {}", r.factory_name, a.starts_at))
        })
        .collect();
    Ok(GettingStarted {
        credits,
        base_url: format!("{origin}/v1"),
        model,
        has_key,
        email_verified: user.email_verified,
        upcoming,
    })
}

#[cfg(feature = "ssr")]
async fn partner_panel(app: &AppState, partner_id: &str) -> Result<PartnerPanel, AppError> {
    const DAY_MS: i64 = 86_400_000;
    let now = db::now_ms();
    let month = statements::Period::of_ms(now);
    let listed = app
        .statements
        .list(partner_id, now)
        .await
        .map_err(with_status)?;
    let (gross, payable) = listed
        .iter()
        .find(|s| s.period == month)
        .map(|s| (s.document.summary[0], s.document.payable))
        .unwrap_or_default();
    let statements = listed
        .iter()
        .filter_map(|s| match &s.status {
            statements::StatementStatus::Closed {
                number, closed_at, ..
            } => Some(RecentStatement {
                period: s.period.to_string(),
                number: *number,
                payable: ledger::Nanos::new(s.document.payable).to_string(),
                issued: super::date(*closed_at),
            }),
            statements::StatementStatus::Draft => None,
        })
        .take(3)
        .collect();
    let activity = app
        .statements
        .factory_activity(partner_id, now - DAY_MS)
        .await
        .map_err(with_status)?;
    let factories = app
        .compute
        .factories()
        .await
        .map_err(with_status)?
        .into_iter()
        .filter(|f| f.partner_org_id == partner_id)
        .map(|f| {
            let a = activity.iter().find(|a| a.factory_id == f.id);
            FactoryBusy {
                name: f.name,
                region: f.region.label().to_string(),
                gpu_class: f.gpu_class.code().to_string(),
                models: f.models.join(", "),
                requests: a.map_or(0, |a| a.requests),
                tokens: a.map_or(0, |a| a.tokens),
                device_seconds: format!("{:.1}", a.map_or(0, |a| a.device_us) as f64 / 1e6),
            }
        })
        .collect();
    Ok(PartnerPanel {
        partner_id: partner_id.to_string(),
        month: month.to_string(),
        gross: ledger::Nanos::new(gross).to_string(),
        payable: ledger::Nanos::new(payable).to_string(),
        factories,
        statements,
    })
}
