//! Two-factor sign-in: time-based one-time codes (TOTP, RFC 6238: HMAC-SHA-1, 6 digits, 30 s
//! steps, one step of clock skew either way) and one-time recovery codes.
//!
//! Enrolment stores a new 160-bit secret and shows it as an `otpauth://` link (a QR code on
//! the page); it is switched on only by a code made from it, which proves the authenticator
//! holds it. Switching it on issues [`RECOVERY_CODES`] recovery codes, shown once and stored
//! only as SHA-256 (80 random bits each). Each code is accepted once: a TOTP step at most once
//! (the last accepted step is stored and moves only forward, in the same statement that
//! accepts it), a recovery code once. Wrong codes count against the login limits, exactly
//! like wrong passwords.
//!
//! Every function takes the time, so tests drive it with a fixed clock.

use db::sqlx::Row;
use rand::Rng;
use sha2::{Digest, Sha256};
use totp_rs::{Builder, Secret, Totp};

use crate::{AccountError, Accounts, User, throttle, user_from_row};

/// Recovery codes issued when two-factor sign-in is switched on.
pub const RECOVERY_CODES: usize = 10;
/// The name authenticator apps show beside the account.
const ISSUER: &str = "Tokenmill";

/// A secret being set up: what the page shows to put into an authenticator app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    /// The secret in base32, for typing in by hand.
    pub secret: String,
    /// `otpauth://totp/Tokenmill:{email}?secret=…&issuer=Tokenmill`, for the QR code.
    pub url: String,
}

/// Which second factor was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondFactor {
    Code,
    /// A recovery code, used up; `left` remain.
    RecoveryCode {
        left: i64,
    },
}

fn totp(secret_base32: &str, account: &str) -> Result<Totp, AccountError> {
    let secret = Secret::try_from_base32(secret_base32)
        .map_err(|e| AccountError::Internal(format!("stored TOTP secret: {e}")))?;
    // An email may hold a ':', which the otpauth label cannot: it is only a label.
    let account = account.replace(':', "_");
    Builder::new()
        .with_secret(secret)
        .with_issuer(Some(ISSUER))
        .with_account_name(account)
        .build()
        .map_err(|e| AccountError::Internal(format!("TOTP: {e}")))
}

/// The step a code was made for, if it is right within one step of `now_ms`.
fn code_step(totp: &Totp, code: &str, now_ms: i64) -> Option<i64> {
    let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let time = u64::try_from(now_ms / 1000).ok()?;
    totp.check(&digits, time)
        .and_then(|s| i64::try_from(s).ok())
}

/// A recovery code as stored: lower case, without separators.
fn normalise_recovery(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn recovery_hash(code: &str) -> String {
    hex::encode(Sha256::digest(normalise_recovery(code).as_bytes()))
}

/// `abcd-efgh-ijkl-mnop`: 16 base32 characters, 80 random bits.
fn new_recovery_code() -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut rng = rand::rng();
    let chars: Vec<char> = (0..16)
        .map(|_| char::from(ALPHABET[rng.random_range(0..32)]))
        .collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// A code for `secret_base32` at `now_ms`: for tests and for the command line's checks.
pub fn code_at(secret_base32: &str, now_ms: i64) -> Result<String, AccountError> {
    let t = totp(secret_base32, "x")?;
    Ok(t.generate(u64::try_from(now_ms / 1000).unwrap_or_default())
        .to_string())
}

impl Accounts {
    /// Starts setting up two-factor sign-in: a new secret, kept until a code from it switches
    /// it on. Starting again replaces a secret that was never confirmed.
    pub async fn begin_two_factor(&self, user: &User) -> Result<Enrolment, AccountError> {
        if user.two_factor {
            return Err(AccountError::Conflict(
                "Two-factor sign-in is already on.".into(),
            ));
        }
        let mut bytes = [0u8; 20];
        rand::rng().fill(&mut bytes);
        let secret = Secret::from(bytes.to_vec()).to_base32();
        let url = totp(&secret, &user.email)?
            .to_url()
            .map_err(|e| AccountError::Internal(format!("otpauth URL: {e}")))?;
        db::sqlx::query(
            "UPDATE users SET totp_secret = $1, totp_last_step = NULL \
             WHERE id = $2 AND totp_enabled_at IS NULL",
        )
        .bind(&secret)
        .bind(&user.id)
        .execute(self.db.pool())
        .await?;
        Ok(Enrolment { secret, url })
    }

    /// Switches two-factor sign-in on with a code from the secret being set up; returns the
    /// recovery codes, which are shown once.
    pub async fn enable_two_factor(
        &self,
        user: &User,
        code: &str,
        ip: &str,
        now: i64,
    ) -> Result<Vec<String>, AccountError> {
        let row = db::sqlx::query(
            "SELECT totp_secret, totp_enabled_at, last_login_ip FROM users WHERE id = $1",
        )
        .bind(&user.id)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or(AccountError::NotFound)?;
        if row.try_get::<Option<i64>, _>("totp_enabled_at")?.is_some() {
            return Err(AccountError::Conflict(
                "Two-factor sign-in is already on.".into(),
            ));
        }
        let Some(secret) = row.try_get::<Option<String>, _>("totp_secret")? else {
            return Err(AccountError::field(
                "code",
                "Start the set-up again: no secret is waiting for a code.",
            ));
        };
        let last_ip: Option<String> = row.try_get("last_login_ip")?;
        let windows = throttle::login_windows(&self.limits, &user.email, ip, last_ip.as_deref());
        let attempt = throttle::take(&self.db, &windows, now).await?;
        let Some(step) = code_step(&totp(&secret, &user.email)?, code, now) else {
            return Err(AccountError::field(
                "code",
                "That code is not right. Check the time on your device and use the newest code.",
            ));
        };
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| new_recovery_code()).collect();
        let mut tx = self.db.begin_write().await?;
        let done = db::sqlx::query(
            "UPDATE users SET totp_enabled_at = $1, totp_last_step = $2 \
             WHERE id = $3 AND totp_enabled_at IS NULL AND totp_secret = $4",
        )
        .bind(now)
        .bind(step)
        .bind(&user.id)
        .bind(&secret)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(AccountError::Conflict(
                "Two-factor sign-in changed meanwhile; start again.".into(),
            ));
        }
        insert_recovery_codes(&mut tx, &user.id, &codes, now).await?;
        tx.commit().await?;
        throttle::forget(&self.db, &attempt, &user.email, ip).await?;
        tracing::info!(user_id = user.id, "two-factor sign-in switched on");
        Ok(codes)
    }

    /// Checks the second factor of a login whose password was right: a code from the
    /// authenticator or a recovery code. Returns the user, now signed in completely.
    pub async fn second_factor(
        &self,
        user_id: &str,
        code: &str,
        ip: &str,
        now: i64,
    ) -> Result<(User, SecondFactor), AccountError> {
        let row = db::sqlx::query(&format!(
            "SELECT {}, totp_secret, last_login_ip FROM users WHERE id = $1",
            crate::USER_COLUMNS
        ))
        .bind(user_id)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or(AccountError::NotFound)?;
        let user = user_from_row(&row)?;
        let secret: Option<String> = row.try_get("totp_secret")?;
        let (true, Some(secret)) = (user.two_factor, secret) else {
            return Err(AccountError::NotFound);
        };
        let last_ip: Option<String> = row.try_get("last_login_ip")?;
        let windows = throttle::login_windows(&self.limits, &user.email, ip, last_ip.as_deref());
        let attempt = throttle::take(&self.db, &windows, now).await?;
        let accepted = if code.trim().chars().all(|c| c.is_ascii_digit() || c == ' ') {
            self.accept_step(&user, &secret, code, now).await?
        } else {
            self.use_recovery_code(&user, code, now).await?
        };
        let Some(factor) = accepted else {
            tracing::info!(ip, "second factor refused");
            return Err(AccountError::SecondFactor(
                "That code is not right. Use the newest code from your authenticator app, or a recovery code.".into(),
            ));
        };
        self.remember_login_ip(&user.id, ip).await?;
        throttle::forget(&self.db, &attempt, &user.email, ip).await?;
        Ok((user, factor))
    }

    /// A TOTP code, accepted when it is right and its step is later than the last accepted.
    async fn accept_step(
        &self,
        user: &User,
        secret: &str,
        code: &str,
        now: i64,
    ) -> Result<Option<SecondFactor>, AccountError> {
        let Some(step) = code_step(&totp(secret, &user.email)?, code, now) else {
            return Ok(None);
        };
        // Moving the last step forward is what accepts the code: two logins with the same
        // code cannot both move it.
        let done = db::sqlx::query(
            "UPDATE users SET totp_last_step = $1 \
             WHERE id = $2 AND (totp_last_step IS NULL OR totp_last_step < $1)",
        )
        .bind(step)
        .bind(&user.id)
        .execute(self.db.pool())
        .await?;
        Ok((done.rows_affected() == 1).then_some(SecondFactor::Code))
    }

    async fn use_recovery_code(
        &self,
        user: &User,
        code: &str,
        now: i64,
    ) -> Result<Option<SecondFactor>, AccountError> {
        let done = db::sqlx::query(
            "UPDATE recovery_codes SET used_at = $1 \
             WHERE code_hash = $2 AND user_id = $3 AND used_at IS NULL",
        )
        .bind(now)
        .bind(recovery_hash(code))
        .bind(&user.id)
        .execute(self.db.pool())
        .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        let left = self.recovery_codes_left(&user.id).await?;
        tracing::info!(user_id = user.id, left, "recovery code used");
        Ok(Some(SecondFactor::RecoveryCode { left }))
    }

    /// Recovery codes not used yet.
    pub async fn recovery_codes_left(&self, user_id: &str) -> Result<i64, AccountError> {
        Ok(db::sqlx::query(
            "SELECT COUNT(*) AS n FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL",
        )
        .bind(user_id)
        .fetch_one(self.db.pool())
        .await?
        .try_get("n")?)
    }

    /// New recovery codes for a signed-in user with two-factor sign-in on, replacing the old
    /// ones; a current code is asked for, as for switching it off.
    pub async fn new_recovery_codes(
        &self,
        user: &User,
        code: &str,
        ip: &str,
        now: i64,
    ) -> Result<Vec<String>, AccountError> {
        self.second_factor(&user.id, code, ip, now)
            .await
            .map_err(code_field)?;
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| new_recovery_code()).collect();
        let mut tx = self.db.begin_write().await?;
        insert_recovery_codes(&mut tx, &user.id, &codes, now).await?;
        tx.commit().await?;
        Ok(codes)
    }

    /// Switches two-factor sign-in off, with a current code. Not for those who must have it.
    pub async fn disable_two_factor(
        &self,
        user: &User,
        required: bool,
        code: &str,
        ip: &str,
        now: i64,
    ) -> Result<(), AccountError> {
        if required {
            return Err(AccountError::Forbidden);
        }
        self.second_factor(&user.id, code, ip, now)
            .await
            .map_err(code_field)?;
        self.clear_two_factor(&user.id).await?;
        tracing::info!(user_id = user.id, "two-factor sign-in switched off");
        Ok(())
    }

    /// Switches two-factor sign-in off for the user with `email`, for an operator at the
    /// command line (a lost device and lost recovery codes); the caller records it in the
    /// audit log. The user sets it up again at the next login if their role requires it.
    pub async fn reset_two_factor(&self, email: &str) -> Result<User, AccountError> {
        let email = crate::Email::parse(email)?;
        let row = db::sqlx::query(&format!(
            "SELECT {} FROM users WHERE email = $1",
            crate::USER_COLUMNS
        ))
        .bind(email.as_str())
        .fetch_optional(self.db.pool())
        .await?
        .ok_or(AccountError::NotFound)?;
        let user = user_from_row(&row)?;
        self.clear_two_factor(&user.id).await?;
        // Signed-in sessions of the user end too: whoever holds the device no longer counts.
        self.end_sessions(&user.id, None).await?;
        tracing::warn!(user_id = user.id, "two-factor sign-in reset");
        Ok(user)
    }

    async fn clear_two_factor(&self, user_id: &str) -> Result<(), AccountError> {
        let mut tx = self.db.begin_write().await?;
        db::sqlx::query(
            "UPDATE users SET totp_secret = NULL, totp_enabled_at = NULL, totp_last_step = NULL \
             WHERE id = $1",
        )
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        db::sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// A refused second factor as an error on the form's `code` field.
fn code_field(e: AccountError) -> AccountError {
    match e {
        AccountError::SecondFactor(message) => AccountError::field("code", message),
        other => other,
    }
}

async fn insert_recovery_codes(
    tx: &mut db::WriteTx,
    user_id: &str,
    codes: &[String],
    now: i64,
) -> Result<(), AccountError> {
    db::sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    for code in codes {
        db::sqlx::query(
            "INSERT INTO recovery_codes (code_hash, user_id, created_at) VALUES ($1, $2, $3)",
        )
        .bind(recovery_hash(code))
        .bind(user_id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_accepted_within_one_step_and_name_their_step() {
        let secret = Secret::from(b"12345678901234567890".to_vec()).to_base32();
        let t = totp(&secret, "ops@example.com").unwrap();
        // RFC 6238 appendix B, SHA-1: 59 s gives 94287082 in 8 digits, so 287082 in 6.
        assert_eq!(code_at(&secret, 59_000).unwrap(), "287082");
        assert_eq!(code_step(&t, "287082", 59_000), Some(1));
        assert_eq!(code_step(&t, "287 082", 59_000 + 30_000), Some(1));
        assert_eq!(code_step(&t, "287082", 59_000 + 61_000), None);
        assert_eq!(code_step(&t, "000000", 59_000), None);
        assert!(
            t.to_url()
                .unwrap()
                .starts_with("otpauth://totp/Tokenmill:ops%40example.com?secret=")
        );
    }

    #[test]
    fn recovery_codes_are_long_random_and_forgiving_to_type() {
        let code = new_recovery_code();
        assert_eq!(code.len(), 19);
        assert_ne!(code, new_recovery_code());
        assert_eq!(
            recovery_hash(&code),
            recovery_hash(&code.to_uppercase().replace('-', " "))
        );
    }
}
