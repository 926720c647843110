//! Sliding-window limits on attempts (OWASP ASVS 5.0 V6.3): failed logins and password
//! checks, two-factor codes, sign-ups, reset requests and verification mails.
//!
//! Attempts are stored, not kept in memory, so every portal instance sees the same counts. An
//! attempt is *taken* before the work it limits (a password hash, a mail): one transaction
//! counts each of its windows and, when all are under their limits, records the attempt in
//! them, so concurrent attempts cannot all pass a check that none has yet been counted in. A
//! login that succeeds gives its attempt back ([`forget`]); a failure keeps it.
//!
//! On SQLite the transaction holds the database's write lock. On PostgreSQL it takes an
//! advisory lock per window subject, always in sorted order (so two attempts never wait on
//! each other in a cycle); attempts on other accounts and addresses do not wait.
//!
//! The login windows:
//! - per email and IP: a tight limit that stops one client guessing one account;
//! - per IP: stops one client spraying many accounts;
//! - per email over all IPs: stops a distributed guess against one account. To keep this from
//!   becoming a lockout an attacker can aim at a real user, it is not enforced on the address
//!   the account last logged in from successfully (the attempt still counts in it).
//!
//! The limits apply by email whether or not the account exists, so a limited response reveals
//! nothing about which emails are registered.

use db::{Backend, Db, new_id, sqlx::Row};

use crate::AccountError;

const MINUTE_MS: i64 = 60 * 1000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
/// Rows older than this are pruned: it covers every window below.
const KEPT_MS: i64 = 24 * HOUR_MS;

#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    pub per_email_ip: i64,
    pub email_ip_window_ms: i64,
    pub per_ip: i64,
    pub per_email: i64,
    /// Window of the per-IP and per-email limits.
    pub window_ms: i64,
    /// Sign-ups (organisations created) from one client address per hour.
    pub signups_per_ip_hour: i64,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            per_email_ip: 10,
            email_ip_window_ms: 15 * MINUTE_MS,
            per_ip: 100,
            per_email: 100,
            window_ms: HOUR_MS,
            signups_per_ip_hour: 5,
        }
    }
}

/// One sliding window an attempt counts in.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    pub scope: &'static str,
    pub subject: String,
    pub limit: i64,
    pub window_ms: i64,
    /// Counted in but not checked (the per-email login window from the last good address).
    pub enforce: bool,
}

impl Window {
    pub fn new(
        scope: &'static str,
        subject: impl Into<String>,
        limit: i64,
        window_ms: i64,
    ) -> Self {
        Window {
            scope,
            subject: subject.into(),
            limit,
            window_ms,
            enforce: true,
        }
    }
}

/// The windows of a password or two-factor check for `email` from `ip`.
pub(crate) fn login_windows(
    limits: &LoginLimits,
    email: &str,
    ip: &str,
    last_login_ip: Option<&str>,
) -> Vec<Window> {
    vec![
        Window::new(
            "login:email_ip",
            format!("{email}|{ip}"),
            limits.per_email_ip,
            limits.email_ip_window_ms,
        ),
        Window::new("login:ip", ip, limits.per_ip, limits.window_ms),
        Window {
            enforce: last_login_ip != Some(ip),
            ..Window::new("login:email", email, limits.per_email, limits.window_ms)
        },
    ]
}

/// Reset requests: a few per address an hour (each sends a mail), more per client address.
pub(crate) fn reset_windows(email: &str, ip: &str) -> Vec<Window> {
    vec![
        Window::new("reset:email", email, 3, HOUR_MS),
        Window::new("reset:ip", ip, 20, HOUR_MS),
    ]
}

/// Mails a signed-in user or organisation can cause (verification again, invitations).
pub(crate) fn mail_windows(scope: &'static str, subject: &str, per_hour: i64) -> Vec<Window> {
    vec![Window::new(scope, subject, per_hour, HOUR_MS)]
}

/// An attempt counted in its windows.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    pub id: String,
}

/// Counts an attempt in `windows` at `now`, or refuses it when an enforced window is full.
pub(crate) async fn take(db: &Db, windows: &[Window], now: i64) -> Result<Attempt, AccountError> {
    let mut tx = db.begin_write().await?;
    if db.backend() == Backend::Postgres {
        let mut subjects: Vec<String> = windows
            .iter()
            .map(|w| format!("{}\n{}", w.scope, w.subject))
            .collect();
        subjects.sort();
        subjects.dedup();
        for s in subjects {
            db::sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(s)
                .execute(&mut *tx)
                .await?;
        }
    }
    for w in windows.iter().filter(|w| w.enforce) {
        let row = db::sqlx::query(
            "SELECT COUNT(*) AS n, MIN(at) AS oldest FROM rate_events \
             WHERE scope = $1 AND subject = $2 AND at > $3",
        )
        .bind(w.scope)
        .bind(&w.subject)
        .bind(now - w.window_ms)
        .fetch_one(&mut *tx)
        .await?;
        let n: i64 = row.try_get("n")?;
        if n >= w.limit {
            let oldest: Option<i64> = row.try_get("oldest")?;
            tx.rollback().await?;
            let until = oldest.unwrap_or(now) + w.window_ms;
            tracing::info!(scope = w.scope, "attempt over its limit");
            return Err(AccountError::RateLimited {
                retry_after_secs: ((until - now).max(1000) / 1000) as u64,
            });
        }
    }
    let id = new_id();
    for w in windows {
        db::sqlx::query("INSERT INTO rate_events (id, scope, subject, at) VALUES ($1, $2, $3, $4)")
            .bind(&id)
            .bind(w.scope)
            .bind(&w.subject)
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(Attempt { id })
}

/// Gives an attempt back (a login that succeeded), together with the earlier failures of
/// the same email from the same client, which the right password ends.
pub(crate) async fn forget(
    db: &Db,
    attempt: &Attempt,
    email: &str,
    ip: &str,
) -> Result<(), AccountError> {
    db::sqlx::query(
        "DELETE FROM rate_events WHERE id = $1 OR (scope = 'login:email_ip' AND subject = $2)",
    )
    .bind(&attempt.id)
    .bind(format!("{email}|{ip}"))
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Drops attempts older than every window.
pub(crate) async fn prune(db: &Db, now: i64) -> Result<u64, AccountError> {
    let done = db::sqlx::query("DELETE FROM rate_events WHERE at < $1")
        .bind(now - KEPT_MS)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected())
}
