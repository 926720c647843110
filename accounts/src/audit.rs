//! The audit log of operators' and partners' actions: who, what, on which target, when, and
//! the state before and after (JSON, as the caller describes it). Entries are only added.
//! Operators read all of it; a partner's users read what their organisation did and what was
//! done to it.

use db::{new_id, now_ms, sqlx::Row};

use crate::{AccountError, Accounts, OrgKind, User};

/// One change, as the code that made it describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change<'a> {
    /// What was done, `noun.verb` (e.g. `organization.suspend`).
    pub action: &'a str,
    pub target_kind: &'a str,
    pub target_id: &'a str,
    /// The organisation the target belongs to, if any (its partner then sees the entry).
    pub target_org_id: Option<&'a str>,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// A recorded entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: String,
    pub at: i64,
    pub actor_email: String,
    pub actor_org_id: String,
    pub action: String,
    pub target_kind: String,
    pub target_id: String,
    pub target_org_id: Option<String>,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// Most entries one read returns.
pub const AUDIT_PAGE: i64 = 500;

impl Accounts {
    /// Records `change` made by `actor`.
    pub async fn audit(&self, actor: &User, change: Change<'_>) -> Result<(), AccountError> {
        db::sqlx::query(
            "INSERT INTO audit_events (id, at, actor_user_id, actor_email, actor_org_id, action, \
             target_kind, target_id, target_org_id, before_json, after_json, search_folded) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(new_id())
        .bind(now_ms())
        .bind(&actor.id)
        .bind(&actor.email)
        .bind(&actor.org_id)
        .bind(change.action)
        .bind(change.target_kind)
        .bind(change.target_id)
        .bind(change.target_org_id)
        .bind(&change.before)
        .bind(&change.after)
        .bind(search_text(&actor.email, change.action, change.target_id))
        .execute(self.db.pool())
        .await?;
        tracing::info!(
            actor = actor.id,
            action = change.action,
            target = change.target_id,
            "audited"
        );
        Ok(())
    }

    /// The newest entries `viewer` may read (at most `limit`, newest first; the page asks for
    /// [`AUDIT_PAGE`], an export for all), those whose
    /// action, actor e-mail or target id contain `search` (any case) when it is not empty.
    pub async fn audit_log(
        &self,
        viewer: &User,
        search: &str,
        limit: i64,
    ) -> Result<Vec<AuditEvent>, AccountError> {
        let org_scope = if viewer.is_operator {
            None
        } else {
            let org = self
                .org(&viewer.org_id)
                .await?
                .ok_or(AccountError::NotFound)?;
            if org.kind != OrgKind::Partner {
                return Err(AccountError::Forbidden);
            }
            Some(org.id)
        };
        let rows = db::sqlx::query(
            "SELECT id, at, actor_email, actor_org_id, action, target_kind, target_id, \
             target_org_id, before_json, after_json FROM audit_events \
             WHERE (CAST($1 AS TEXT) IS NULL OR actor_org_id = $1 OR target_org_id = $1) \
             AND search_folded LIKE $2 ESCAPE '\\' \
             ORDER BY at DESC, id DESC LIMIT $3",
        )
        .bind(org_scope)
        .bind(text::contains_pattern(search))
        .bind(limit.max(1))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEvent {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    actor_email: r.try_get("actor_email")?,
                    actor_org_id: r.try_get("actor_org_id")?,
                    action: r.try_get("action")?,
                    target_kind: r.try_get("target_kind")?,
                    target_id: r.try_get("target_id")?,
                    target_org_id: r.try_get("target_org_id")?,
                    before: r.try_get("before_json")?,
                    after: r.try_get("after_json")?,
                })
            })
            .collect::<Result<_, db::sqlx::Error>>()
            .map_err(AccountError::from)
    }
}

/// What an entry's search matches: its action, actor email and target id, case-folded, one
/// per line (a search holds no line break, so it never matches across two).
pub(crate) fn search_text(actor_email: &str, action: &str, target_id: &str) -> String {
    text::fold(&format!("{action}\n{actor_email}\n{target_id}"))
}
