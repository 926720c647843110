//! Server functions: the portal's cookie-authenticated API. Each has a fixed endpoint under
//! `/api/` so that tests and scripts can call it. Server-only code lives in `ssr`.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::AppError;

mod account_security;
mod admin;
mod audit;
mod batch_jobs;
mod compute;
mod credits;
mod keys;
mod models;
mod nodes;
mod overview;
mod partner_statements;
mod playground;
mod usage;
#[cfg(feature = "ssr")]
use crate::ssr::*;
pub use account_security::*;
pub use admin::*;
pub use audit::*;
pub use batch_jobs::*;
pub use compute::*;
pub use credits::*;
pub use keys::*;
pub use models::*;
pub use nodes::*;
pub use overview::*;
pub use partner_statements::*;
pub use playground::*;
pub use usage::*;

/// The signed-in user and their organisation, as the pages show them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub email: String,
    pub org_name: String,
    pub org_kind: String,
    pub region: String,
    pub role: String,
    pub is_owner: bool,
    pub is_operator: bool,
    pub is_partner: bool,
    /// The address is verified (credits, keys and jobs wait for it).
    pub email_verified: bool,
    /// Two-factor sign-in is on.
    pub two_factor: bool,
    /// The role requires two-factor sign-in and it is not set up: only Account works.
    pub two_factor_setup_required: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    pub id: String,
    pub email: String,
    pub role: String,
    pub joined: String,
    pub is_you: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvitationView {
    pub id: String,
    pub email: String,
    pub role: String,
    pub expires: String,
}

/// The members page: who is in the organisation, open invitations, and whether the viewer may
/// manage them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeamView {
    pub can_manage: bool,
    pub members: Vec<MemberView>,
    pub invitations: Vec<InvitationView>,
}

/// A freshly made invitation link, shown once to pass on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InviteLink {
    pub email: String,
    pub link: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvitationPreviewView {
    pub org_name: String,
    pub email: String,
    pub role: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartnerView {
    pub id: String,
    pub name: String,
    pub region: String,
    pub created: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewPartner {
    pub name: String,
    pub link: String,
}

/// A UTC date and time to the minute ("2026-11-27 14:05").
#[cfg(feature = "ssr")]
pub(crate) fn date_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{} {:02}:{:02}", date(ms), secs / 3600, secs % 3600 / 60)
}

#[cfg(feature = "ssr")]
pub(crate) fn date(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[server(endpoint = "me")]
pub async fn me() -> Result<Option<Profile>, AppError> {
    let app = state()?;
    let Some(signed_in) = current_session_user().await.map_err(with_status)? else {
        return Ok(None);
    };
    profile_of(&app, signed_in).await.map(Some)
}

/// The profile of a signed-in user.
#[cfg(feature = "ssr")]
pub(crate) async fn profile_of(
    app: &AppState,
    signed_in: accounts::SessionUser,
) -> Result<Profile, AppError> {
    let setup_required = signed_in.needs_two_factor_setup();
    let user = signed_in.user;
    let org = app
        .accounts
        .org(&user.org_id)
        .await
        .map_err(with_status)?
        .ok_or_else(|| with_status(AppError::NotFound))?;
    Ok(Profile {
        email: user.email,
        org_name: org.name,
        org_kind: org.kind.label().to_string(),
        region: org.region.label().to_string(),
        role: user.org_role.code().to_string(),
        is_owner: user.org_role == accounts::OrgRole::Owner,
        is_operator: user.is_operator,
        is_partner: org.kind == accounts::OrgKind::Partner,
        email_verified: user.email_verified,
        two_factor: user.two_factor,
        two_factor_setup_required: setup_required,
    })
}

#[server(endpoint = "sign_up")]
pub async fn sign_up(
    email: String,
    password: String,
    org_name: String,
    org_kind: String,
    region: String,
) -> Result<(), AppError> {
    let email_typed = email.trim().to_string();
    let form = accounts::SignUpForm {
        email,
        password,
        org_name,
        org_kind,
        region,
    };
    // A new and an already registered email get the same answer (RELIABILITY A4): each is
    // sent a letter, from a task of its own, and the page says to look for it.
    let st = state()?;
    let origin = origin();
    let outcome = st
        .accounts
        .sign_up(form, &client_ip())
        .await
        .map_err(with_status)?;
    match outcome {
        accounts::SignUpOutcome::Created {
            user_id,
            email,
            verify_token,
        } => {
            let org_name = open_wallet_on_sign_up(&st, &user_id).await;
            st.mailer.send_later(mail::letters::verify_email(
                email.as_str(),
                &org_name,
                &format!("{origin}/verify/{verify_token}"),
                accounts::VERIFY_TTL_MS / 3_600_000,
            ));
        }
        accounts::SignUpOutcome::AlreadyRegistered { email } => {
            st.mailer.send_later(mail::letters::already_registered(
                email.as_str(),
                &format!("{origin}/login"),
                &format!("{origin}/forgot"),
            ));
        }
    }
    // The login form comes back holding the address just signed up (the same for a new and a
    // registered one: it is what the person typed).
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("email", &email_typed)
        .finish();
    leptos_axum::redirect(&format!("/login?signed_up=1&{query}"));
    Ok(())
}

/// A new organisation's wallet, and the grants of programs that grant at sign-up without
/// waiting for a verified address. A failure here is logged, not shown: the account exists
/// either way. Returns the organisation's name, for the letter.
#[cfg(feature = "ssr")]
async fn open_wallet_on_sign_up(st: &AppState, user_id: &str) -> String {
    let org = match st.accounts.user(user_id).await {
        Ok(Some(user)) => st.accounts.org(&user.org_id).await.ok().flatten(),
        _ => None,
    };
    let Some(org) = org else {
        return String::new();
    };
    if let Err(e) = st.credits.open_wallet(&org.id).await {
        tracing::error!(error = %e, org_id = org.id, "opening the wallet failed");
    }
    if let Err(e) = st.credits.grants_on_signup(&org).await {
        tracing::error!(error = %e, org_id = org.id, "sign-up grants failed");
    }
    org.name
}

#[server(endpoint = "login")]
pub async fn login(email: String, password: String) -> Result<(), AppError> {
    let app = state()?;
    let user = app
        .accounts
        .login(&email, &password, &client_ip())
        .await
        .map_err(with_status)?;
    if app
        .accounts
        .is_suspended(&user.org_id)
        .await
        .map_err(with_status)?
    {
        return Err(with_status(AppError::Suspended));
    }
    if user.two_factor {
        await_second_factor(&user).await?;
        leptos_axum::redirect("/login/code");
    } else {
        log_in(&user).await?;
        leptos_axum::redirect("/dashboard");
    }
    Ok(())
}

#[server(endpoint = "logout")]
pub async fn logout() -> Result<(), AppError> {
    log_out().await?;
    leptos_axum::redirect("/login");
    Ok(())
}

#[server(endpoint = "change_password")]
pub async fn change_password(
    current_password: String,
    new_password: String,
) -> Result<String, AppError> {
    let (app, user) = signed_in().await?;
    let st = app.clone();
    st.accounts
        .change_password(&user, &current_password, &new_password, &client_ip())
        .await
        .map_err(with_status)?;
    // End every session of this user, then continue this one under a new id.
    st.accounts
        .end_sessions(&user.id, None)
        .await
        .map_err(with_status)?;
    log_in(&user).await?;
    Ok("Password changed. You have been logged out everywhere else.".to_string())
}

#[server(endpoint = "team")]
pub async fn team() -> Result<TeamView, AppError> {
    let (app, user) = signed_in().await?;
    team_of(&app, &user).await
}

/// The members page's view of `user`'s organisation.
#[cfg(feature = "ssr")]
pub(crate) async fn team_of(app: &AppState, user: &accounts::User) -> Result<TeamView, AppError> {
    let accounts = &app.accounts;
    let can_manage = user.org_role == accounts::OrgRole::Owner;
    let members = accounts
        .members(user)
        .await
        .map_err(with_status)?
        .into_iter()
        .map(|m| MemberView {
            is_you: m.id == user.id,
            id: m.id,
            email: m.email,
            role: m.org_role.code().to_string(),
            joined: date(m.created_at),
        })
        .collect();
    let invitations = if can_manage {
        accounts
            .invitations(user)
            .await
            .map_err(with_status)?
            .into_iter()
            .map(|i| InvitationView {
                id: i.id,
                email: i.email,
                role: i.role.code().to_string(),
                expires: date(i.expires_at),
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(TeamView {
        can_manage,
        members,
        invitations,
    })
}

#[server(endpoint = "invite")]
pub async fn invite(email: String, role: String) -> Result<InviteLink, AppError> {
    let (app, user) = signed_in().await?;
    let role = accounts::OrgRole::from_code(role.trim()).ok_or_else(|| {
        with_status(AppError::Field {
            field: "role".into(),
            message: "Choose owner or member.".into(),
        })
    })?;
    let origin = origin();
    let (invitation, token) = app
        .accounts
        .invite(&user, &email, role)
        .await
        .map_err(with_status)?;
    let link = format!("{origin}/invite/{token}");
    let org_name = org_name(&app, &user.org_id).await.map_err(with_status)?;
    app.mailer.send_later(mail::letters::invitation(
        &invitation.email,
        &org_name,
        invitation.role.code(),
        &user.email,
        &link,
    ));
    Ok(InviteLink {
        email: invitation.email,
        link,
    })
}

#[server(endpoint = "revoke_invitation")]
pub async fn revoke_invitation(id: String) -> Result<(), AppError> {
    let (app, user) = signed_in().await?;
    app.clone()
        .accounts
        .revoke_invitation(&user, &id)
        .await
        .map_err(with_status)
}

#[server(endpoint = "remove_member")]
pub async fn remove_member(id: String) -> Result<(), AppError> {
    let (app, user) = signed_in().await?;
    let removed = app
        .accounts
        .remove_member(&user, &id)
        .await
        .map_err(with_status)?;
    // Their keys were revoked with them; none may be taken as valid from memory either.
    for key in &removed.revoked_keys {
        app.keys.forget(key);
    }
    let after = serde_json::json!({
        "email": removed.email, "api_keys_revoked": removed.revoked_keys.len(),
    });
    audited(
        &app,
        &user,
        accounts::Change {
            action: "member.remove",
            target_kind: "user",
            target_id: &id,
            target_org_id: Some(&user.org_id),
            before: None,
            after: audit_json(after),
        },
    )
    .await;
    Ok(())
}

#[server(endpoint = "invitation")]
pub async fn invitation(token: String) -> Result<InvitationPreviewView, AppError> {
    let preview = state()?
        .accounts
        .preview_invitation(&token)
        .await
        .map_err(with_status)?;
    Ok(InvitationPreviewView {
        org_name: preview.org_name,
        email: preview.email,
        role: preview.role.code().to_string(),
    })
}

#[server(endpoint = "accept_invitation")]
pub async fn accept_invitation(token: String, password: String) -> Result<(), AppError> {
    let user = state()?
        .accounts
        .accept_invitation(&token, &password)
        .await
        .map_err(with_status)?;
    log_in(&user).await?;
    leptos_axum::redirect("/dashboard");
    Ok(())
}

#[server(endpoint = "partners")]
pub async fn partners() -> Result<Vec<PartnerView>, AppError> {
    let (app, user) = signed_in().await?;
    let list = app.accounts.partners(&user).await.map_err(with_status)?;
    Ok(list
        .into_iter()
        .map(|o| PartnerView {
            id: o.id,
            name: o.name,
            region: o.region.label().to_string(),
            created: date(o.created_at),
        })
        .collect())
}

#[server(endpoint = "create_partner")]
pub async fn create_partner(
    name: String,
    region: String,
    owner_email: String,
) -> Result<NewPartner, AppError> {
    let app = state()?;
    let origin = origin();
    let user = require_user().await.map_err(with_status)?;
    let (org, invitation, token) = app
        .accounts
        .create_partner(&user, &name, &region, &owner_email)
        .await
        .map_err(with_status)?;
    let link = format!("{origin}/invite/{token}");
    app.mailer.send_later(mail::letters::invitation(
        &invitation.email,
        &org.name,
        invitation.role.code(),
        &user.email,
        &link,
    ));
    let after = serde_json::json!({
        "name": org.name, "region": org.region.label(), "owner_invited": owner_email.trim(),
    });
    audited(
        &app,
        &user,
        accounts::Change {
            action: "partner.create",
            target_kind: "organization",
            target_id: &org.id,
            target_org_id: Some(&org.id),
            before: None,
            after: audit_json(after),
        },
    )
    .await;
    Ok(NewPartner {
        name: org.name,
        link,
    })
}

#[cfg(all(test, feature = "ssr"))]
mod tests {
    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(super::date(0), "1970-01-01");
        assert_eq!(super::date(1_795_651_200_000), "2026-11-26");
        assert_eq!(super::date(951_782_400_000), "2000-02-29");
    }
}
