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
    let user = require_operator().await.map_err(fail)?;
    let now = db::now_ms();
    let factories = app.compute.factories().await.map_err(fail)?;
    let mut partners = Vec::new();
    for p in app.accounts.partners(&user).await.map_err(fail)? {
        let own: Vec<_> = factories
            .iter()
            .filter(|f| f.partner_org_id == p.id)
            .collect();
        let mut models: Vec<String> = own.iter().flat_map(|f| f.models.clone()).collect();
        models.sort();
        models.dedup();
        let statements = app.statements.list(&p.id, now).await.map_err(fail)?;
        let next = app
            .statements
            .next_closable(&p.id, now)
            .await
            .map_err(fail)?;
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
        .queue(&user)
        .await
        .map_err(fail)?
        .iter()
        .filter(|r| r.status == compute::Status::Submitted)
        .count();
    let programs = app
        .credits
        .programs()
        .await
        .map_err(fail)?
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
    let orgs = app.accounts.organizations(&user, "").await.map_err(fail)?;
    let workers = app.jobs.pool().map(|p| p.status()).unwrap_or_default();
    Ok(ConsoleView {
        partners,
        pending_approvals,
        programs,
        organizations: orgs.len(),
        suspended: orgs.iter().filter(|(_, s)| s.is_some()).count(),
        priced_models: app.compute.prices().await.map_err(fail)?.len(),
        workers_ready: workers
            .iter()
            .filter(|w| w.state.as_str() == "ready")
            .count(),
        workers: workers.len(),
        running: workers.iter().map(|w| w.running).sum(),
        waiting: workers.iter().map(|w| w.waiting).sum(),
    })
}
