//! Server functions of the API keys page. Any member of an organisation may create and revoke
//! its keys; the secret is returned once, by `create_api_key`, and never again.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::AppError;
#[cfg(feature = "ssr")]
use crate::{api::date, ssr::*};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyView {
    pub id: String,
    pub name: String,
    pub display: String,
    pub created: String,
    pub expires: Option<String>,
    pub last_used: Option<String>,
    /// "active", "revoked", "revoked: member removed" or "expired".
    pub status: String,
}

/// A key just created: the only time its secret is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewApiKey {
    pub name: String,
    pub secret: String,
}

/// The longest expiry a key may be given, in days.
pub const MAX_KEY_DAYS: i64 = 3650;

#[server(endpoint = "api_keys")]
pub async fn api_keys() -> Result<Vec<ApiKeyView>, AppError> {
    let (app, user) = signed_in().await?;
    let now = db::now_ms();
    let keys = app.keys.list(&user.org_id).await.map_err(with_status)?;
    Ok(keys
        .into_iter()
        .map(|k| ApiKeyView {
            status: if k.revoked_reason.as_deref() == Some("member_removed") {
                "revoked: member removed"
            } else if k.revoked_at.is_some() {
                "revoked"
            } else if k.expires_at.is_some_and(|e| e <= now) {
                "expired"
            } else {
                "active"
            }
            .to_string(),
            id: k.id,
            name: k.name,
            display: k.display,
            created: date(k.created_at),
            expires: k.expires_at.map(date),
            last_used: k.last_used_at.map(date),
        })
        .collect())
}

/// `expires_in_days`: empty for a key that does not expire.
#[server(endpoint = "create_api_key")]
pub async fn create_api_key(name: String, expires_in_days: String) -> Result<NewApiKey, AppError> {
    let app = state()?;
    let user = require_verified_user().await.map_err(with_status)?;
    let days = expires_in_days.trim();
    let expires_at = if days.is_empty() {
        None
    } else {
        match days.parse::<i64>() {
            Ok(d) if (1..=MAX_KEY_DAYS).contains(&d) => Some(db::now_ms() + d * 86_400_000),
            _ => {
                return Err(with_status(AppError::Field {
                    field: "expires_in_days".into(),
                    message: format!(
                        "Enter a whole number of days from 1 to {MAX_KEY_DAYS}, or leave it empty."
                    ),
                }));
            }
        }
    };
    let (key, secret) = app
        .keys
        .create(&user.org_id, &user.id, &name, expires_at)
        .await
        .map_err(with_status)?;
    Ok(NewApiKey {
        name: key.name,
        secret,
    })
}

#[server(endpoint = "revoke_api_key")]
pub async fn revoke_api_key(id: String) -> Result<(), AppError> {
    let (app, user) = signed_in().await?;
    app.clone()
        .keys
        .revoke(&user.org_id, &id)
        .await
        .map_err(with_status)
}
