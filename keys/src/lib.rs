//! API keys for the OpenAI-compatible API. A key is `tmk_`, 32 characters drawn uniformly from
//! 62 (190 random bits) and a 6-character CRC-32 of those, so a mistyped or truncated key is
//! refused without a database lookup and leaked keys are easy to scan for. Only the key's
//! SHA-256 is stored, with a display form (`tmk_AbCd…wxyz`) to recognise it by; the secret is
//! returned once, at creation. Revocation and expiry take effect on the next request: a key
//! taken from those found valid lately ([`ApiKeys::authenticate_recent`]) is checked again
//! where the request acts ([`recheck`]).

use db::{
    Db, new_id, now_ms,
    sqlx::{FromRow, Row, any::AnyRow},
};
use rand::Rng;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub const PREFIX: &str = "tmk_";
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const BODY: usize = 32;
const CHECK: usize = 6;
/// A key's full length.
pub const KEY_LEN: usize = PREFIX.len() + BODY + CHECK;
/// last_used_at is rewritten at most this often per key, so busy keys do not turn every API
/// call into a database write.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;
pub const MAX_NAME_CHARS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Malformed, unknown, or failing its checksum: one answer for all, so nothing is learnt.
    #[error("the API key is not valid")]
    Invalid,
    #[error("the API key has been revoked")]
    Revoked,
    #[error("the API key has expired")]
    Expired,
    /// The key is fine but its organisation is suspended.
    #[error("the organisation that owns this key is suspended")]
    Suspended,
    #[error("no such API key")]
    NotFound,
    #[error("{0}")]
    BadInput(String),
    /// The database gave no connection in time (every one busy for the pool's whole wait).
    #[error("the server is busy; retry shortly")]
    Busy,
    #[error("storage: {0}")]
    Storage(String),
}

impl From<db::sqlx::Error> for KeyError {
    fn from(e: db::sqlx::Error) -> Self {
        match e {
            db::sqlx::Error::PoolTimedOut => KeyError::Busy,
            e => KeyError::Storage(e.to_string()),
        }
    }
}

/// Read from rows of `COLUMNS` (or `KEY_COLUMNS`) by name.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ApiKey {
    pub id: String,
    pub org_id: String,
    pub created_by: String,
    pub name: String,
    /// `tmk_` and the first and last characters, for lists and logs.
    pub display: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// Why it was revoked when not by hand (`member_removed`: its maker left the
    /// organisation).
    pub revoked_reason: Option<String>,
    pub last_used_at: Option<i64>,
}

/// Who a valid key acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIdentity {
    pub key_id: String,
    pub org_id: String,
    pub created_by: String,
}

fn base62(mut n: u64, width: usize) -> String {
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out).unwrap_or_default()
}

fn checksum(body: &str) -> String {
    base62(crc32fast::hash(body.as_bytes()) as u64, CHECK)
}

/// Whether `key` has the shape and checksum of a Tokenmill key (no database needed).
pub fn well_formed(key: &str) -> bool {
    key.len() == KEY_LEN
        && key.starts_with(PREFIX)
        && key
            .bytes()
            .skip(PREFIX.len())
            .all(|b| b.is_ascii_alphanumeric())
        && checksum(&key[PREFIX.len()..PREFIX.len() + BODY]) == key[PREFIX.len() + BODY..]
}

fn generate() -> String {
    let mut rng = rand::rng();
    let body: String = (0..BODY)
        .map(|_| ALPHABET[rng.random_range(0..62)] as char)
        .collect();
    format!("{PREFIX}{body}{}", checksum(&body))
}

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn display(key: &str) -> String {
    format!("{}…{}", &key[..PREFIX.len() + 4], &key[KEY_LEN - 4..])
}

const COLUMNS: &str = "id, org_id, created_by, name, display, created_at, expires_at, revoked_at, \
     revoked_reason, last_used_at";
/// [`COLUMNS`] of `api_keys k` in a join.
const KEY_COLUMNS: &str = "k.id, k.org_id, k.created_by, k.name, k.display, k.created_at, \
     k.expires_at, k.revoked_at, k.revoked_reason, k.last_used_at";

#[derive(Clone, Debug)]
pub struct ApiKeys {
    db: Db,
    recent: Arc<Recent>,
}

/// How long a key found valid is taken as known (see [`ApiKeys::authenticate_recent`]).
pub const RECENT_TTL: Duration = Duration::from_secs(30);

/// Entries kept before the stale ones are dropped.
const RECENT_PRUNE_AT: usize = 10_000;

/// Keys found valid lately, by hash: what [`ApiKeys::authenticate_recent`] trusts.
#[derive(Debug, Default)]
struct Recent {
    keys: Mutex<HashMap<String, (Instant, KeyIdentity)>>,
}

impl Recent {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, KeyIdentity)>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether a key was read from the database for this request, or taken from those found valid
/// lately (and must be checked again where the request acts: [`recheck`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    Now,
    Recently,
}

impl ApiKeys {
    pub fn new(db: Db) -> ApiKeys {
        ApiKeys {
            db,
            recent: Arc::default(),
        }
    }

    /// Creates a key for `org_id`; returns it with the secret, which is not kept.
    pub async fn create(
        &self,
        org_id: &str,
        user_id: &str,
        name: &str,
        expires_at: Option<i64>,
    ) -> Result<(ApiKey, String), KeyError> {
        let name = name.trim();
        text::check("The key's name", name, text::Lines::Single).map_err(KeyError::BadInput)?;
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
            return Err(KeyError::BadInput(format!(
                "Give the key a name of 1 to {MAX_NAME_CHARS} characters."
            )));
        }
        let now = now_ms();
        if expires_at.is_some_and(|e| e <= now) {
            return Err(KeyError::BadInput(
                "The expiry date must be in the future.".into(),
            ));
        }
        let secret = generate();
        let key = ApiKey {
            id: new_id(),
            org_id: org_id.to_string(),
            created_by: user_id.to_string(),
            name: name.to_string(),
            display: display(&secret),
            created_at: now,
            expires_at,
            revoked_at: None,
            revoked_reason: None,
            last_used_at: None,
        };
        db::sqlx::query(
            "INSERT INTO api_keys (id, org_id, created_by, name, display, key_hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&key.id)
        .bind(&key.org_id)
        .bind(&key.created_by)
        .bind(&key.name)
        .bind(&key.display)
        .bind(hash(&secret))
        .bind(key.created_at)
        .bind(key.expires_at)
        .execute(self.db.pool())
        .await?;
        Ok((key, secret))
    }

    /// The organisation's keys, newest first, revoked ones included (marked).
    pub async fn list(&self, org_id: &str) -> Result<Vec<ApiKey>, KeyError> {
        Ok(db::sqlx::query_as::<_, ApiKey>(&format!(
            "SELECT {COLUMNS} FROM api_keys WHERE org_id = $1 ORDER BY created_at DESC, id DESC"
        ))
        .bind(org_id)
        .fetch_all(self.db.pool())
        .await?)
    }

    /// Revokes one of the organisation's keys; another organisation's key is `NotFound`.
    pub async fn revoke(&self, org_id: &str, key_id: &str) -> Result<(), KeyError> {
        let done = db::sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND org_id = $3 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(key_id)
        .bind(org_id)
        .execute(self.db.pool())
        .await?;
        self.forget(key_id);
        if done.rows_affected() == 1 {
            return Ok(());
        }
        // Already revoked is done; anything else is not this organisation's key.
        let exists = db::sqlx::query("SELECT 1 AS one FROM api_keys WHERE id = $1 AND org_id = $2")
            .bind(key_id)
            .bind(org_id)
            .fetch_optional(self.db.pool())
            .await?;
        exists.map(|_| ()).ok_or(KeyError::NotFound)
    }

    /// The identity behind a presented key, or why it is refused.
    pub async fn authenticate(&self, presented: &str) -> Result<KeyIdentity, KeyError> {
        if !well_formed(presented) {
            return Err(KeyError::Invalid);
        }
        let hash = hash(presented);
        // The organisation's state comes in the same query: a suspension bites on the next
        // request without a second round trip.
        let row = db::sqlx::query(&format!(
            "SELECT {KEY_COLUMNS}, o.suspended_at AS org_suspended_at FROM api_keys k \
             JOIN organizations o ON o.id = k.org_id WHERE k.key_hash = $1"
        ))
        .bind(&hash)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or(KeyError::Invalid)?;
        let key = ApiKey::from_row(&row)?;
        let suspended: Option<i64> = row.try_get("org_suspended_at")?;
        let now = now_ms();
        verdict(key.revoked_at, key.expires_at, suspended, now)?;
        if key
            .last_used_at
            .is_none_or(|t| t < now - LAST_USED_RESOLUTION_MS)
        {
            db::sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
                .bind(now)
                .bind(&key.id)
                .execute(self.db.pool())
                .await?;
        }
        let identity = KeyIdentity {
            key_id: key.id,
            org_id: key.org_id,
            created_by: key.created_by,
        };
        let mut recent = self.recent.lock();
        if recent.len() >= RECENT_PRUNE_AT {
            recent.retain(|_, (at, _)| at.elapsed() < RECENT_TTL);
        }
        recent.insert(hash, (Instant::now(), identity.clone()));
        Ok(identity)
    }

    /// [`ApiKeys::authenticate`] for a request that checks the key again just before it acts
    /// (with [`recheck`], which goes with reads it makes anyway):
    /// a key found valid in the last [`RECENT_TTL`] is not read again. Revocation, expiry and
    /// suspension still stop such a request before it does anything; what the recent key
    /// skips is the lookup's round trip and its `last_used_at` update, which the next lookup
    /// (within [`RECENT_TTL`]) makes.
    pub async fn authenticate_recent(
        &self,
        presented: &str,
    ) -> Result<(KeyIdentity, Checked), KeyError> {
        if !well_formed(presented) {
            return Err(KeyError::Invalid);
        }
        if let Some((at, identity)) = self.recent.lock().get(&hash(presented))
            && at.elapsed() < RECENT_TTL
        {
            return Ok((identity.clone(), Checked::Recently));
        }
        Ok((self.authenticate(presented).await?, Checked::Now))
    }

    /// Drops `key_id` from the keys found valid lately: after its revocation, or when a
    /// [`recheck`] refused it.
    pub fn forget(&self, key_id: &str) {
        self.recent.lock().retain(|_, (_, k)| k.key_id != key_id);
    }
}

/// The statement that reads again what decides whether the key `key_id` may act (with its
/// `$N` values), for a caller to send with its own reads; [`recheck_rows`] reads its answer.
pub fn recheck(key_id: &str) -> (String, Vec<db::Value>) {
    (
        "SELECT k.revoked_at, k.expires_at, o.suspended_at AS org_suspended_at FROM api_keys k \
         JOIN organizations o ON o.id = k.org_id WHERE k.id = $1"
            .to_string(),
        vec![key_id.into()],
    )
}

/// [`recheck`] as a condition (with its `$N` values) that holds when the key may act at `now`,
/// for a caller that makes its writes depend on it instead of reading first: the same rules
/// as [`recheck_rows`], which a caller refused by it runs to learn why.
pub fn still_valid(key_id: &str, now: i64) -> (String, Vec<db::Value>) {
    (
        "EXISTS (SELECT 1 FROM api_keys k JOIN organizations o ON o.id = k.org_id \
         WHERE k.id = $1 AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $2) \
         AND o.suspended_at IS NULL)"
            .to_string(),
        vec![key_id.into(), now.into()],
    )
}

/// Whether the key may act, from the rows of [`recheck`].
pub fn recheck_rows(rows: &[AnyRow], now: i64) -> Result<(), KeyError> {
    let row = rows.first().ok_or(KeyError::Invalid)?;
    verdict(
        row.try_get("revoked_at")?,
        row.try_get("expires_at")?,
        row.try_get("org_suspended_at")?,
        now,
    )
}

fn verdict(
    revoked_at: Option<i64>,
    expires_at: Option<i64>,
    org_suspended_at: Option<i64>,
    now: i64,
) -> Result<(), KeyError> {
    if revoked_at.is_some() {
        return Err(KeyError::Revoked);
    }
    if expires_at.is_some_and(|e| e <= now) {
        return Err(KeyError::Expired);
    }
    if org_suspended_at.is_some() {
        return Err(KeyError::Suspended);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_well_formed_and_a_changed_character_is_caught() {
        let k = generate();
        assert_eq!(k.len(), KEY_LEN);
        assert!(well_formed(&k));
        let mut bytes = k.clone().into_bytes();
        bytes[10] = if bytes[10] == b'a' { b'b' } else { b'a' };
        assert!(!well_formed(&String::from_utf8(bytes).unwrap()));
        assert!(!well_formed(&k[..KEY_LEN - 1]));
        assert!(!well_formed(&k.replacen("tmk_", "sk-_", 1)));
        assert_ne!(generate(), k);
        assert_eq!(display(&k).chars().count(), 4 + 4 + 1 + 4);
    }
}
