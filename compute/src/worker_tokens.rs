//! Worker tokens: how a partner's nodes enrol into one of its factories. A token is
//! `tmw_<factory id>_<32 characters drawn uniformly from 62>` (190 random bits); the factory is
//! in the clear so that a node knows which factory's subjects it works on before it has spoken
//! to a portal. Only the SHA-256 is stored, with a display form to recognise it by; the secret
//! is shown once. The factory's partner owner or an operator makes and revokes them; any member
//! of the partner sees them.

use accounts::{OrgRole, User};
use db::{new_id, now_ms};
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::{Compute, ComputeError, Factory, field};

pub const PREFIX: &str = "tmw_";
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const SECRET_LEN: usize = 32;
pub const MAX_NAME_CHARS: usize = 64;
/// `last_used_at` is written at most this often per token.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

/// A token as lists show it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WorkerToken {
    pub id: String,
    pub factory_id: String,
    pub created_by: String,
    pub name: String,
    /// `tmw_…` and the secret's last four characters.
    pub display: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

/// What a valid token enrols a node as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    pub token_id: String,
    pub factory_id: String,
    pub partner_org_id: String,
}

const COLUMNS: &str =
    "id, factory_id, created_by, name, display, created_at, revoked_at, last_used_at";

/// The factory a token names, without a database: `None` for anything not shaped as a token.
pub fn factory_of(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(PREFIX)?;
    let (factory, secret) = rest.split_once('_')?;
    let shaped = !factory.is_empty()
        && factory.len() <= 64
        && factory.bytes().all(|b| b.is_ascii_alphanumeric())
        && secret.len() == SECRET_LEN
        && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    shaped.then_some(factory)
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn generate(factory_id: &str) -> String {
    let mut rng = rand::rng();
    let secret: String = (0..SECRET_LEN)
        .map(|_| ALPHABET[rng.random_range(0..62)] as char)
        .collect();
    format!("{PREFIX}{factory_id}_{secret}")
}

impl Compute {
    /// The factory, when `actor` may manage its worker tokens (`owner_only`) or see them.
    async fn token_factory(
        &self,
        actor: &User,
        factory_id: &str,
        owner_only: bool,
    ) -> Result<Factory, ComputeError> {
        let factory = self
            .factory(factory_id)
            .await?
            .ok_or(ComputeError::NotFound)?;
        let member = actor.org_id == factory.partner_org_id;
        if actor.is_operator || (member && (!owner_only || actor.org_role == OrgRole::Owner)) {
            Ok(factory)
        } else if member {
            Err(ComputeError::Forbidden)
        } else {
            // Another partner's factory does not exist for this actor.
            Err(ComputeError::NotFound)
        }
    }

    /// Makes a worker token for `factory_id`; returns it with the secret, which is not kept.
    pub async fn create_worker_token(
        &self,
        actor: &User,
        factory_id: &str,
        name: &str,
    ) -> Result<(WorkerToken, String), ComputeError> {
        let factory = self.token_factory(actor, factory_id, true).await?;
        let name = name.trim();
        if name.is_empty()
            || name.chars().count() > MAX_NAME_CHARS
            || name.chars().any(char::is_control)
        {
            return Err(field(
                "name",
                &format!("Give the token a name of 1 to {MAX_NAME_CHARS} characters on one line."),
            ));
        }
        let secret = generate(&factory.id);
        let token = WorkerToken {
            id: new_id(),
            factory_id: factory.id.clone(),
            created_by: actor.id.clone(),
            name: name.to_string(),
            display: format!("{PREFIX}…{}", &secret[secret.len() - 4..]),
            created_at: now_ms(),
            revoked_at: None,
            last_used_at: None,
        };
        db::sqlx::query(
            "INSERT INTO worker_tokens (id, factory_id, created_by, name, display, token_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&token.id)
        .bind(&token.factory_id)
        .bind(&token.created_by)
        .bind(&token.name)
        .bind(&token.display)
        .bind(hash(&secret))
        .bind(token.created_at)
        .execute(self.db.pool())
        .await?;
        // The factory is now a fleet: admission reads factories again.
        self.changed();
        tracing::info!(
            factory = factory.id,
            token = token.id,
            "worker token created"
        );
        Ok((token, secret))
    }

    /// The factory's worker tokens, newest first, revoked ones included.
    pub async fn worker_tokens(
        &self,
        actor: &User,
        factory_id: &str,
    ) -> Result<Vec<WorkerToken>, ComputeError> {
        let factory = self.token_factory(actor, factory_id, false).await?;
        Ok(db::sqlx::query_as::<_, WorkerToken>(&format!(
            "SELECT {COLUMNS} FROM worker_tokens WHERE factory_id = $1 \
             ORDER BY created_at DESC, id DESC"
        ))
        .bind(&factory.id)
        .fetch_all(self.db.pool())
        .await?)
    }

    /// Every worker token `actor` may see, newest first: all of them for an operator, its
    /// own factories' for a partner's member, none for anyone else. One query for a page that
    /// lists every factory's tokens (the Fleet page, polled every second).
    pub async fn visible_worker_tokens(
        &self,
        actor: &User,
    ) -> Result<Vec<WorkerToken>, ComputeError> {
        if actor.is_operator {
            return Ok(db::sqlx::query_as::<_, WorkerToken>(&format!(
                "SELECT {COLUMNS} FROM worker_tokens ORDER BY created_at DESC, id DESC"
            ))
            .fetch_all(self.db.pool())
            .await?);
        }
        let columns: Vec<String> = COLUMNS.split(", ").map(|c| format!("t.{c}")).collect();
        Ok(db::sqlx::query_as::<_, WorkerToken>(&format!(
            "SELECT {} FROM worker_tokens t JOIN factories f ON f.id = t.factory_id \
             WHERE f.partner_org_id = $1 ORDER BY t.created_at DESC, t.id DESC",
            columns.join(", ")
        ))
        .bind(&actor.org_id)
        .fetch_all(self.db.pool())
        .await?)
    }

    /// Revokes a token; revoking one already revoked is done. Its nodes are dropped by the
    /// fleet at their next heartbeat.
    pub async fn revoke_worker_token(
        &self,
        actor: &User,
        token_id: &str,
    ) -> Result<WorkerToken, ComputeError> {
        let token = db::sqlx::query_as::<_, WorkerToken>(&format!(
            "SELECT {COLUMNS} FROM worker_tokens WHERE id = $1"
        ))
        .bind(token_id)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or(ComputeError::NotFound)?;
        self.token_factory(actor, &token.factory_id, true).await?;
        let now = now_ms();
        db::sqlx::query(
            "UPDATE worker_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(&token.id)
        .execute(self.db.pool())
        .await?;
        tracing::info!(
            factory = token.factory_id,
            token = token.id,
            "worker token revoked"
        );
        Ok(WorkerToken {
            revoked_at: token.revoked_at.or(Some(now)),
            ..token
        })
    }

    /// The enrolment a presented token gives, or `None` for one that is malformed, unknown or
    /// revoked (one answer for all, so nothing is learnt). Notes its use.
    pub async fn authenticate_worker(
        &self,
        presented: &str,
    ) -> Result<Option<Enrolled>, ComputeError> {
        if factory_of(presented).is_none() {
            return Ok(None);
        }
        let row: Option<(String, String, String, Option<i64>)> = db::sqlx::query_as(
            "SELECT t.id, t.factory_id, f.partner_org_id, t.last_used_at FROM worker_tokens t \
             JOIN factories f ON f.id = t.factory_id \
             WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
        )
        .bind(hash(presented))
        .fetch_optional(self.db.pool())
        .await?;
        let Some((token_id, factory_id, partner_org_id, last_used)) = row else {
            return Ok(None);
        };
        let now = now_ms();
        if last_used.is_none_or(|t| t < now - LAST_USED_RESOLUTION_MS) {
            db::sqlx::query("UPDATE worker_tokens SET last_used_at = $1 WHERE id = $2")
                .bind(now)
                .bind(&token_id)
                .execute(self.db.pool())
                .await?;
        }
        Ok(Some(Enrolled {
            token_id,
            factory_id,
            partner_org_id,
        }))
    }

    /// Of `token_ids`, those revoked (what a fleet drops at the nodes' next heartbeat).
    pub async fn revoked_worker_tokens(
        &self,
        token_ids: &[String],
    ) -> Result<Vec<String>, ComputeError> {
        if token_ids.is_empty() {
            return Ok(Vec::new());
        }
        let marks: Vec<String> = (1..=token_ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT id FROM worker_tokens WHERE revoked_at IS NOT NULL AND id IN ({})",
            marks.join(", ")
        );
        let mut q = db::sqlx::query_scalar::<_, String>(&sql);
        for id in token_ids {
            q = q.bind(id);
        }
        Ok(q.fetch_all(self.db.pool()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_factory_and_nothing_else_passes_for_one() {
        let t = generate("0193abcd");
        assert_eq!(factory_of(&t), Some("0193abcd"));
        assert_eq!(t.len(), PREFIX.len() + 8 + 1 + SECRET_LEN);
        for bad in [
            "",
            "tmw_",
            "tmw_0193abcd",
            "tmk_0193abcd_0123456789abcdefghijABCDEFGHIJ01",
            "tmw__0123456789abcdefghijABCDEFGHIJ01",
            "tmw_0193abcd_0123456789abcdefghijABCDEFGHIJ0",
            "tmw_01.3abcd_0123456789abcdefghijABCDEFGHIJ01",
            "tmw_0193abcd_0123456789abcdefghijABCDEFGHIJ0!",
        ] {
            assert_eq!(factory_of(bad), None, "{bad:?}");
        }
    }
}
