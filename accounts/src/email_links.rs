//! Links sent by email: verifying an address, and resetting a forgotten password.
//!
//! Each link carries a 256-bit random token; only its SHA-256 is stored. A token works once and
//! expires: a verification link after [`VERIFY_TTL_MS`], a reset link after [`RESET_TTL_MS`].
//! Asking for a new reset link makes the earlier ones useless. A reset ends every session of
//! the user. Asking for a reset answers the same whether or not the address has an account.

use db::{now_ms, sqlx::AnyConnection};

use crate::{
    AccountError, Accounts, Email, NewPassword, User, new_token, password, throttle, token_hash,
    user_from_row,
};

/// How long a verification link works.
pub const VERIFY_TTL_MS: i64 = 48 * 3600 * 1000;
/// How long a password reset link works.
pub const RESET_TTL_MS: i64 = 30 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    Verify,
    Reset,
}

impl Purpose {
    fn code(self) -> &'static str {
        match self {
            Purpose::Verify => "verify",
            Purpose::Reset => "reset",
        }
    }

    fn ttl_ms(self) -> i64 {
        match self {
            Purpose::Verify => VERIFY_TTL_MS,
            Purpose::Reset => RESET_TTL_MS,
        }
    }
}

/// Writes a new link token for `user_id` (inside the caller's transaction) and returns it.
/// A new reset link retires the user's earlier ones.
pub(crate) async fn issue(
    conn: &mut AnyConnection,
    user_id: &str,
    purpose: Purpose,
) -> Result<String, AccountError> {
    let now = now_ms();
    if purpose == Purpose::Reset {
        retire(conn, user_id, purpose, now).await?;
    }
    let (token, hash) = new_token();
    db::sqlx::query(
        "INSERT INTO email_tokens (token_hash, user_id, purpose, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(hash)
    .bind(user_id)
    .bind(purpose.code())
    .bind(now)
    .bind(now + purpose.ttl_ms())
    .execute(conn)
    .await?;
    Ok(token)
}

/// Marks every open token of `purpose` of the user as used.
async fn retire(
    conn: &mut AnyConnection,
    user_id: &str,
    purpose: Purpose,
    now: i64,
) -> Result<(), AccountError> {
    db::sqlx::query(
        "UPDATE email_tokens SET used_at = $1 \
         WHERE user_id = $2 AND purpose = $3 AND used_at IS NULL",
    )
    .bind(now)
    .bind(user_id)
    .bind(purpose.code())
    .execute(conn)
    .await?;
    Ok(())
}

/// Uses up `token` (of `purpose`, unexpired, unused) inside the caller's transaction and
/// returns its user's id; a second use finds nothing.
async fn consume(
    conn: &mut AnyConnection,
    token: &str,
    purpose: Purpose,
    now: i64,
) -> Result<Option<String>, AccountError> {
    let user_id: Option<String> = db::sqlx::query_scalar(
        "UPDATE email_tokens SET used_at = $1 \
         WHERE token_hash = $2 AND purpose = $3 AND used_at IS NULL AND expires_at > $1 \
         RETURNING user_id",
    )
    .bind(now)
    .bind(token_hash(token))
    .bind(purpose.code())
    .fetch_optional(conn)
    .await?;
    Ok(user_id)
}

/// What a verification link did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user: User,
    /// The address became verified now (not by an earlier link): what starts the grants
    /// that wait for it.
    pub newly: bool,
}

impl Accounts {
    /// Verifies the address a verification link was sent to.
    pub async fn verify_email(&self, token: &str) -> Result<Verified, AccountError> {
        let now = now_ms();
        let mut tx = self.db.begin_write().await?;
        let Some(user_id) = consume(&mut tx, token, Purpose::Verify, now).await? else {
            return Err(AccountError::LinkInvalid);
        };
        let newly = mark_verified(&mut tx, &user_id, now).await?;
        tx.commit().await?;
        let user = self
            .user(&user_id)
            .await?
            .ok_or(AccountError::LinkInvalid)?;
        tracing::info!(user_id, newly, "email verified");
        Ok(Verified { user, newly })
    }

    /// A new verification link for a signed-in user whose address is not verified yet (the
    /// first mail was lost or expired): a few an hour.
    pub async fn resend_verification(&self, user: &User) -> Result<String, AccountError> {
        if user.email_verified {
            return Err(AccountError::field(
                "email",
                "Your email address is already verified.",
            ));
        }
        let windows = throttle::mail_windows("verify:user", &user.id, 5);
        throttle::take(&self.db, &windows, now_ms()).await?;
        let mut tx = self.db.begin_write().await?;
        let token = issue(&mut tx, &user.id, Purpose::Verify).await?;
        tx.commit().await?;
        Ok(token)
    }

    /// A reset link for `email`, if it has an account. The caller answers both cases the
    /// same way; the limits (a few per address and more per client address an hour) apply
    /// whether or not the account exists.
    pub async fn request_password_reset(
        &self,
        email: &str,
        ip: &str,
    ) -> Result<Option<(User, String)>, AccountError> {
        let email = Email::parse(email)?;
        let windows = throttle::reset_windows(email.as_str(), ip);
        throttle::take(&self.db, &windows, now_ms()).await?;
        let row = db::sqlx::query(&format!(
            "SELECT {} FROM users WHERE email = $1",
            crate::USER_COLUMNS
        ))
        .bind(email.as_str())
        .fetch_optional(self.db.pool())
        .await?;
        let Some(row) = row else {
            tracing::info!("password reset asked for an unknown email");
            return Ok(None);
        };
        let user = user_from_row(&row)?;
        let mut tx = self.db.begin_write().await?;
        let token = issue(&mut tx, &user.id, Purpose::Reset).await?;
        tx.commit().await?;
        tracing::info!(user_id = user.id, "password reset link issued");
        Ok(Some((user, token)))
    }

    /// The address a reset link is for, while it still works (the page shows it).
    pub async fn reset_link_email(&self, token: &str) -> Result<String, AccountError> {
        db::sqlx::query_scalar(
            "SELECT u.email FROM email_tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.token_hash = $1 AND t.purpose = 'reset' AND t.used_at IS NULL \
             AND t.expires_at > $2",
        )
        .bind(token_hash(token))
        .bind(now_ms())
        .fetch_optional(self.db.pool())
        .await?
        .ok_or(AccountError::LinkInvalid)
    }

    /// Sets a new password through a reset link: the link is used up, every other reset link
    /// of the user retired, and every session of the user ended, in one transaction. The link
    /// came to the address, so it is verified too. A second factor, if on, is still asked for
    /// at the next login.
    pub async fn reset_password(&self, token: &str, new: &str) -> Result<User, AccountError> {
        let email = self.reset_link_email(token).await?;
        let new = NewPassword::parse(new, &[email.as_str()])?;
        let hash = password::hash(new.expose().to_string()).await?;
        let now = now_ms();
        let mut tx = self.db.begin_write().await?;
        let Some(user_id) = consume(&mut tx, token, Purpose::Reset, now).await? else {
            return Err(AccountError::LinkInvalid);
        };
        retire(&mut tx, &user_id, Purpose::Reset, now).await?;
        db::sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(hash.as_str())
            .bind(&user_id)
            .execute(&mut *tx)
            .await?;
        mark_verified(&mut tx, &user_id, now).await?;
        let ended = db::sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(&user_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(
            user_id,
            sessions_ended = ended.rows_affected(),
            "password reset"
        );
        self.user(&user_id).await?.ok_or(AccountError::LinkInvalid)
    }
}

/// Sets the user's address as verified unless it already was; whether it changed.
async fn mark_verified(
    conn: &mut AnyConnection,
    user_id: &str,
    now: i64,
) -> Result<bool, AccountError> {
    let done = db::sqlx::query(
        "UPDATE users SET email_verified_at = $1 WHERE id = $2 AND email_verified_at IS NULL",
    )
    .bind(now)
    .bind(user_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
