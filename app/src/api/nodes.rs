//! Server functions of the Fleet page: the worker nodes of the factories a user may see
//! (operators every factory's; a partner's members their own factories'; tenants none), the
//! factories' worker tokens (made and revoked by the partner's owner or an operator, shown
//! once), and drain, put back and restart of a node's engine, each in the audit log.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::AppError;
#[cfg(feature = "ssr")]
use crate::ssr::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineRow {
    pub index: usize,
    pub model: String,
    pub device: String,
    pub state: String,
    pub running: usize,
    pub waiting: usize,
    pub kv: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRow {
    pub factory_id: String,
    pub factory: String,
    pub node: String,
    pub version: String,
    pub devices: String,
    pub state: String,
    pub tokens_per_s: f64,
    /// Seconds since its last heartbeat.
    pub seen_secs_ago: f64,
    pub engines: Vec<EngineRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub display: String,
    pub created: String,
    pub last_used: Option<String>,
    pub revoked: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetFactory {
    pub id: String,
    pub name: String,
    pub partner: String,
    /// Whether this user makes and revokes its tokens and commands its nodes.
    pub manage: bool,
    pub tokens: Vec<TokenRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetPage {
    /// Whether this portal is connected to a fleet's NATS at all.
    pub connected: bool,
    pub nodes: Vec<NodeRow>,
    pub factories: Vec<FleetFactory>,
}

/// The factories `user` may see, and whether they manage each.
#[cfg(feature = "ssr")]
async fn visible_factories(
    app: &AppState,
    user: &accounts::User,
) -> Result<Vec<(compute::Factory, bool)>, AppError> {
    let owner = user.org_role == accounts::OrgRole::Owner;
    Ok(app
        .compute
        .factories()
        .await?
        .into_iter()
        .filter(|f| user.is_operator || f.partner_org_id == user.org_id)
        .map(|f| {
            let manage = user.is_operator || owner;
            (f, manage)
        })
        .collect())
}

#[cfg(feature = "ssr")]
fn node_row(n: fleet::NodeView, factory: &str, now_ms: i64) -> NodeRow {
    NodeRow {
        factory: factory.to_string(),
        devices: n
            .devices
            .iter()
            .map(|d| match d.memory_bytes {
                Some(b) => format!(
                    "{} {} ({:.0} GiB)",
                    d.id,
                    d.name,
                    b as f64 / (1u64 << 30) as f64
                ),
                None => format!("{} {}", d.id, d.name),
            })
            .collect::<Vec<_>>()
            .join(", "),
        state: n.state.to_string(),
        tokens_per_s: n.tokens_per_second,
        seen_secs_ago: (now_ms - n.last_heartbeat_ms).max(0) as f64 / 1000.0,
        engines: n
            .engines
            .into_iter()
            .map(|e| EngineRow {
                index: e.index,
                model: e.model,
                device: e.device,
                state: if e.state == "loading" {
                    format!("loading {}%", e.loaded_percent)
                } else {
                    e.state
                },
                running: e.running,
                waiting: e.waiting,
                kv: format!("{} / {}", e.kv_blocks_used, e.kv_blocks_total),
            })
            .collect(),
        factory_id: n.factory_id,
        node: n.node,
        version: n.version,
    }
}

/// The nodes and tokens of the factories the signed-in user may see (the page polls it).
#[server(endpoint = "fleet")]
pub async fn fleet_view() -> Result<FleetPage, AppError> {
    let (app, user) = signed_in().await?;
    let visible = visible_factories(&app, &user).await?;
    // A partner without factories sees an empty page; a tenant has no fleet to see.
    if !user.is_operator && visible.is_empty() {
        let partner = app
            .accounts
            .org(&user.org_id)
            .await?
            .is_some_and(|o| o.kind == accounts::OrgKind::Partner);
        if !partner {
            return Err(with_status(AppError::Forbidden));
        }
    }
    let now = db::now_ms();
    let ids: Vec<String> = visible.iter().map(|(f, _)| f.id.clone()).collect();
    let nodes = app.jobs.fleet().map_or_else(Vec::new, |fleet| {
        fleet
            .list(Some(&ids))
            .into_iter()
            .map(|n| {
                let name = visible
                    .iter()
                    .find(|(f, _)| f.id == n.factory_id)
                    .map_or("", |(f, _)| f.name.as_str())
                    .to_string();
                node_row(n, &name, now)
            })
            .collect()
    });
    // Every visible factory's tokens in one query, not one per factory: the page polls.
    let mut all_tokens = app.compute.visible_worker_tokens(&user).await?;
    let mut factories = Vec::new();
    for (f, manage) in visible {
        let (own, rest): (Vec<_>, Vec<_>) =
            all_tokens.into_iter().partition(|t| t.factory_id == f.id);
        all_tokens = rest;
        let tokens = own
            .into_iter()
            .map(|t| TokenRow {
                id: t.id,
                name: t.name,
                display: t.display,
                created: crate::api::date_time(t.created_at),
                last_used: t.last_used_at.map(crate::api::date_time),
                revoked: t.revoked_at.map(crate::api::date_time),
            })
            .collect();
        factories.push(FleetFactory {
            id: f.id,
            name: f.name,
            partner: f.partner_name,
            manage,
            tokens,
        });
    }
    Ok(FleetPage {
        connected: app.jobs.fleet().is_some(),
        nodes,
        factories,
    })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewWorkerToken {
    pub factory: String,
    pub secret: String,
}

/// A worker token's making or revocation in the audit log, under its factory (which its
/// partner sees there); returns the factory.
#[cfg(feature = "ssr")]
async fn audit_token(
    app: &AppState,
    user: &accounts::User,
    action: &str,
    token: &compute::WorkerToken,
    revoked: bool,
) -> Result<compute::Factory, AppError> {
    let factory = app
        .compute
        .factory(&token.factory_id)
        .await?
        .ok_or(AppError::NotFound)?;
    let named = serde_json::json!({ "name": token.name, "display": token.display });
    let (before, after) = if revoked {
        (Some(named), serde_json::json!({ "revoked": true }))
    } else {
        (None, named)
    };
    audited(
        app,
        user,
        accounts::Change {
            action,
            target_kind: "factory",
            target_id: &factory.id,
            target_org_id: Some(&factory.partner_org_id),
            before: before.and_then(audit_json),
            after: audit_json(after),
        },
    )
    .await;
    Ok(factory)
}

/// Makes a worker token for a factory; the secret is in the answer and nowhere else.
#[server(endpoint = "create_worker_token")]
pub async fn create_worker_token(
    factory_id: String,
    name: String,
) -> Result<NewWorkerToken, AppError> {
    let (app, user) = signed_in().await?;
    let (token, secret) = app
        .compute
        .create_worker_token(&user, &factory_id, &name)
        .await
        .map_err(with_status)?;
    let factory = audit_token(&app, &user, "worker_token.create", &token, false).await?;
    Ok(NewWorkerToken {
        factory: factory.name,
        secret,
    })
}

/// Revokes a worker token: its nodes get no new jobs from now and are told to stop.
#[server(endpoint = "revoke_worker_token")]
pub async fn revoke_worker_token(token_id: String) -> Result<(), AppError> {
    let (app, user) = signed_in().await?;
    let token = app
        .compute
        .revoke_worker_token(&user, &token_id)
        .await
        .map_err(with_status)?;
    if let Some(fleet) = app.jobs.fleet() {
        fleet.revoked(&token.id).await;
    }
    audit_token(&app, &user, "worker_token.revoke", &token, true).await?;
    Ok(())
}

/// Drains (`drain`), puts back (`resume`) or restarts (`restart`) engine `index` of a node.
#[server(endpoint = "control_node")]
pub async fn control_node(
    factory_id: String,
    node: String,
    index: usize,
    command: String,
) -> Result<(), AppError> {
    let (app, user) = signed_in().await?;
    let visible = visible_factories(&app, &user).await?;
    let Some((factory, manage)) = visible.into_iter().find(|(f, _)| f.id == factory_id) else {
        return Err(with_status(AppError::NotFound));
    };
    if !manage {
        return Err(with_status(AppError::Forbidden));
    }
    let fleet = app
        .jobs
        .fleet()
        .ok_or_else(|| with_status(AppError::NotFound))?;
    let control = match command.as_str() {
        "drain" => fleet::protocol::Control::Drain { index },
        "resume" => fleet::protocol::Control::Resume { index },
        "restart" => fleet::protocol::Control::Restart { index },
        _ => return Err(with_status(AppError::Invalid("Unknown command.".into()))),
    };
    if !fleet
        .list(Some(std::slice::from_ref(&factory.id)))
        .iter()
        .any(|n| n.node == node)
    {
        return Err(with_status(AppError::NotFound));
    }
    audited(
        &app,
        &user,
        accounts::Change {
            action: &format!("node.{command}"),
            target_kind: "node",
            target_id: &format!("{node} {index}"),
            target_org_id: Some(&factory.partner_org_id),
            before: None,
            after: audit_json(serde_json::json!({ "factory": factory.name })),
        },
    )
    .await;
    // A restart waits for the engine's jobs and reloads its model: the page follows it in
    // the node's heartbeats rather than waiting here.
    let fleet = fleet.clone();
    tokio::spawn(async move {
        if let Err(e) = fleet.control(&factory.id, &node, control).await {
            tracing::warn!(node, index, error = %e, "node command failed");
        }
    });
    Ok(())
}
