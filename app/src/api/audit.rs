//! The audit log for operators (everything) and partners (their organisation's own actions and
//! those done to it).

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::AppError;
#[cfg(feature = "ssr")]
use crate::ssr::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntryView {
    pub id: String,
    /// UTC, to the second.
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub before: String,
    pub after: String,
}

/// The newest entries (up to 500) whose action, actor or target contains `search`.
#[server(endpoint = "audit_entries")]
pub async fn audit_entries(search: String) -> Result<Vec<AuditEntryView>, AppError> {
    let app = state()?;
    let user = require_user().await.map_err(with_status)?;
    let events = app
        .accounts
        .audit_log(&user, &search, accounts::audit::AUDIT_PAGE)
        .await
        .map_err(with_status)?;
    Ok(events.into_iter().map(view).collect())
}

#[cfg(feature = "ssr")]
pub fn view(e: accounts::AuditEvent) -> AuditEntryView {
    AuditEntryView {
        at: timestamp(e.at),
        id: e.id,
        actor: e.actor_email,
        action: e.action,
        target: format!("{} {}", e.target_kind, e.target_id),
        before: e.before.unwrap_or_default(),
        after: e.after.unwrap_or_default(),
    }
}

/// `YYYY-MM-DD HH:MM:SS` UTC.
#[cfg(feature = "ssr")]
pub fn timestamp(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(60);
    format!("{}:{secs:02}", super::date_time(ms))
}
