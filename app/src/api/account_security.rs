//! Server functions of account security: verifying an email address, resetting a forgotten
//! password, and two-factor sign-in (the second step of a login, setting it up, switching it
//! off, new recovery codes).

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::AppError;
#[cfg(feature = "ssr")]
use crate::ssr::*;

/// Two-factor sign-in as the Account page shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TwoFactorView {
    pub enabled: bool,
    /// The role requires it (it cannot be switched off).
    pub required: bool,
    pub recovery_codes_left: i64,
}

/// A secret being set up: the QR code (SVG) and the same secret to type in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TwoFactorSetup {
    pub qr_svg: String,
    pub secret: String,
}

/// Recovery codes, shown once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryCodes {
    pub codes: Vec<String>,
}

/// What a verification link did, for the page that opens it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifiedView {
    pub email: String,
    /// Credits granted now that the address is verified, as "$10.00 from Starter credits".
    pub grants: Vec<String>,
}

#[server(endpoint = "verify_email")]
pub async fn verify_email(token: String) -> Result<VerifiedView, AppError> {
    let st = state()?;
    let verified = st
        .accounts
        .verify_email(&token)
        .await
        .map_err(with_status)?;
    let mut grants = Vec::new();
    if verified.newly {
        grants = grant_on_verification(&st, &verified.user).await;
    }
    Ok(VerifiedView {
        email: verified.user.email,
        grants,
    })
}

/// The grants that waited for the founding owner's verified address. A failure is logged:
/// the address is verified either way.
#[cfg(feature = "ssr")]
async fn grant_on_verification(st: &AppState, user: &accounts::User) -> Vec<String> {
    let Ok(Some(org)) = st.accounts.org(&user.org_id).await else {
        return Vec::new();
    };
    match st.credits.grants_on_verification(&org, &user.email).await {
        Ok(grants) => grants
            .into_iter()
            .map(|(program, g)| format!("{} from {program}", g.amount))
            .collect(),
        Err(e) => {
            tracing::error!(error = %e, org_id = org.id, "grants on verification failed");
            Vec::new()
        }
    }
}

#[server(endpoint = "resend_verification")]
pub async fn resend_verification() -> Result<String, AppError> {
    let st = state()?;
    let origin = origin();
    let user = require_user().await.map_err(with_status)?;
    let token = st
        .accounts
        .resend_verification(&user)
        .await
        .map_err(with_status)?;
    let org_name = org_name(&st, &user.org_id).await.map_err(with_status)?;
    st.mailer.send_later(mail::letters::verify_email(
        &user.email,
        &org_name,
        &format!("{origin}/verify/{token}"),
        accounts::VERIFY_TTL_MS / 3_600_000,
    ));
    Ok(format!("We sent a new link to {}.", user.email))
}

/// The same answer whether or not the address has an account (RELIABILITY A4).
#[server(endpoint = "forgot_password")]
pub async fn forgot_password(email: String) -> Result<String, AppError> {
    let st = state()?;
    let origin = origin();
    if let Some((user, token)) = st
        .accounts
        .request_password_reset(&email, &client_ip())
        .await
        .map_err(with_status)?
    {
        st.mailer.send_later(mail::letters::reset_password(
            &user.email,
            &format!("{origin}/reset/{token}"),
            accounts::RESET_TTL_MS / 60_000,
        ));
    }
    Ok(
        "If an account uses that address, we sent it a link to set a new password. \
        It works for 30 minutes."
            .to_string(),
    )
}

/// The address a reset link is for, while the link works.
#[server(endpoint = "reset_link")]
pub async fn reset_link(token: String) -> Result<String, AppError> {
    state()?
        .accounts
        .reset_link_email(&token)
        .await
        .map_err(with_status)
}

#[server(endpoint = "reset_password")]
pub async fn reset_password(token: String, password: String) -> Result<(), AppError> {
    state()?
        .accounts
        .reset_password(&token, &password)
        .await
        .map_err(with_status)?;
    // Every session of the user ended, this browser's included: log in with the new password.
    log_out().await?;
    leptos_axum::redirect("/login?reset=1");
    Ok(())
}

/// The second step of a login with two-factor sign-in: a code from the authenticator app or
/// a recovery code.
#[server(endpoint = "login_code")]
pub async fn login_code(code: String) -> Result<(), AppError> {
    let st = state()?;
    let Some(user_id) = awaiting_second_factor().await? else {
        return Err(with_status(AppError::Invalid(
            "The login has expired. Log in again with your password.".into(),
        )));
    };
    let (user, _) = st
        .accounts
        .second_factor(&user_id, &code, &client_ip(), db::now_ms())
        .await
        .map_err(with_status)?;
    log_in(&user).await?;
    leptos_axum::redirect("/dashboard");
    Ok(())
}

#[server(endpoint = "two_factor")]
pub async fn two_factor() -> Result<TwoFactorView, AppError> {
    let st = state()?;
    let signed_in = current_session_user()
        .await
        .map_err(with_status)?
        .ok_or_else(|| with_status(AppError::NotSignedIn))?;
    let user = &signed_in.user;
    Ok(TwoFactorView {
        enabled: user.two_factor,
        required: user.two_factor_required(signed_in.org_kind),
        recovery_codes_left: st
            .accounts
            .recovery_codes_left(&user.id)
            .await
            .map_err(with_status)?,
    })
}

#[server(endpoint = "begin_two_factor")]
pub async fn begin_two_factor() -> Result<TwoFactorSetup, AppError> {
    let st = state()?;
    let user = signed_in_any().await?;
    let enrolment = st
        .accounts
        .begin_two_factor(&user)
        .await
        .map_err(with_status)?;
    let qr = qrcode::QrCode::new(enrolment.url.as_bytes()).map_err(|e| {
        tracing::error!(error = %e, "QR code");
        with_status(AppError::Internal)
    })?;
    let qr_svg = qr
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build();
    Ok(TwoFactorSetup {
        qr_svg,
        secret: enrolment.secret,
    })
}

#[server(endpoint = "enable_two_factor")]
pub async fn enable_two_factor(code: String) -> Result<RecoveryCodes, AppError> {
    let st = state()?;
    let user = signed_in_any().await?;
    let codes = st
        .accounts
        .enable_two_factor(&user, &code, &client_ip(), db::now_ms())
        .await
        .map_err(with_status)?;
    // The session continues under a new id: a stolen one from before does not gain it.
    log_in(&user).await?;
    Ok(RecoveryCodes { codes })
}

#[server(endpoint = "disable_two_factor")]
pub async fn disable_two_factor(code: String) -> Result<String, AppError> {
    let st = state()?;
    let signed_in = current_session_user()
        .await
        .map_err(with_status)?
        .ok_or_else(|| with_status(AppError::NotSignedIn))?;
    let required = signed_in.user.two_factor_required(signed_in.org_kind);
    st.accounts
        .disable_two_factor(&signed_in.user, required, &code, &client_ip(), db::now_ms())
        .await
        .map_err(|e| match e {
            accounts::AccountError::Forbidden => with_status(AppError::Invalid(
                "Your role requires two-factor sign-in; it cannot be switched off.".into(),
            )),
            other => with_status(other),
        })?;
    Ok("Two-factor sign-in is off.".to_string())
}

#[server(endpoint = "new_recovery_codes")]
pub async fn new_recovery_codes(code: String) -> Result<RecoveryCodes, AppError> {
    let st = state()?;
    let user = signed_in_any().await?;
    let codes = st
        .accounts
        .new_recovery_codes(&user, &code, &client_ip(), db::now_ms())
        .await
        .map_err(with_status)?;
    Ok(RecoveryCodes { codes })
}

/// The signed-in user, also one who still has to set up a required second factor.
#[cfg(feature = "ssr")]
async fn signed_in_any() -> Result<accounts::User, AppError> {
    current_session_user()
        .await
        .map_err(with_status)?
        .map(|s| s.user)
        .ok_or_else(|| with_status(AppError::NotSignedIn))
}
