//! Login throttling (OWASP ASVS 5.0 V6.3, RELIABILITY A3).
//!
//! Failures are stored, not kept in memory, so every portal instance sees the same counts.
//! Three sliding windows apply:
//! - per email and IP: a tight limit that stops one client guessing one account;
//! - per IP: stops one client spraying many accounts;
//! - per email over all IPs: stops a distributed guess against one account. To keep this from
//!   becoming a lockout an attacker can aim at a real user, it does not apply to the IP address
//!   the account last logged in from successfully.
//!
//! The limits are applied by email whether or not the account exists, so a limited response
//! reveals nothing about which emails are registered.

use db::{Db, now_ms, sqlx::Row};

use crate::AccountError;

#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    pub per_email_ip: i64,
    pub email_ip_window_ms: i64,
    pub per_ip: i64,
    pub per_email: i64,
    /// Window of the per-IP and per-email limits.
    pub window_ms: i64,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            per_email_ip: 10,
            email_ip_window_ms: 15 * 60 * 1000,
            per_ip: 100,
            per_email: 100,
            window_ms: 60 * 60 * 1000,
        }
    }
}

async fn count_since(
    db: &Db,
    filter: &str,
    binds: &[&str],
    since: i64,
) -> Result<(i64, Option<i64>), AccountError> {
    let sql = format!(
        "SELECT COUNT(*) AS n, MIN(at) AS oldest FROM login_failures WHERE {filter} AND at > ${}",
        binds.len() + 1
    );
    let mut query = db::sqlx::query(&sql);
    for b in binds {
        query = query.bind(*b);
    }
    let row = query.bind(since).fetch_one(db.pool()).await?;
    Ok((row.try_get("n")?, row.try_get("oldest")?))
}

fn limited(oldest: Option<i64>, window_ms: i64, now: i64) -> AccountError {
    let until = oldest.unwrap_or(now) + window_ms;
    AccountError::RateLimited {
        retry_after_secs: ((until - now).max(1000) / 1000) as u64,
    }
}

pub(crate) async fn check(
    db: &Db,
    limits: &LoginLimits,
    email: &str,
    ip: &str,
    last_login_ip: Option<&str>,
) -> Result<(), AccountError> {
    let now = now_ms();
    let (n, oldest) = count_since(
        db,
        "email = $1 AND ip = $2",
        &[email, ip],
        now - limits.email_ip_window_ms,
    )
    .await?;
    if n >= limits.per_email_ip {
        return Err(limited(oldest, limits.email_ip_window_ms, now));
    }
    let (n, oldest) = count_since(db, "ip = $1", &[ip], now - limits.window_ms).await?;
    if n >= limits.per_ip {
        return Err(limited(oldest, limits.window_ms, now));
    }
    if last_login_ip != Some(ip) {
        let (n, oldest) = count_since(db, "email = $1", &[email], now - limits.window_ms).await?;
        if n >= limits.per_email {
            return Err(limited(oldest, limits.window_ms, now));
        }
    }
    Ok(())
}

pub(crate) async fn record_failure(db: &Db, email: &str, ip: &str) -> Result<(), AccountError> {
    let now = now_ms();
    db::sqlx::query("INSERT INTO login_failures (email, ip, at) VALUES ($1, $2, $3)")
        .bind(email)
        .bind(ip)
        .bind(now)
        .execute(db.pool())
        .await?;
    // Keep the table to the longest window (one day covers every configured limit).
    db::sqlx::query("DELETE FROM login_failures WHERE at < $1")
        .bind(now - 24 * 3600 * 1000)
        .execute(db.pool())
        .await?;
    tracing::info!(ip, "login failed");
    Ok(())
}

/// A successful login forgets this client's failures for the account.
pub(crate) async fn clear(db: &Db, email: &str, ip: &str) -> Result<(), AccountError> {
    db::sqlx::query("DELETE FROM login_failures WHERE email = $1 AND ip = $2")
        .bind(email)
        .bind(ip)
        .execute(db.pool())
        .await?;
    Ok(())
}
