//! Accounts and organisations: sign-up, login with throttling, members and invitations,
//! partners and operators. No UI code; the portal calls these and maps [`AccountError`] to
//! responses.

pub mod audit;
mod error;
pub mod password;
mod throttle;
pub mod types;

use db::{
    Db, new_id, now_ms,
    sqlx::{AnyConnection, Row},
};
use rand::RngCore;
use sha2::{Digest, Sha256};

pub use audit::{AuditEvent, Change};
pub use error::AccountError;
pub use throttle::LoginLimits;
pub use types::{Email, NewPassword, OrgKind, OrgName, OrgRole, Region};

/// A signed-in person as the portal sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub email: String,
    pub org_id: String,
    pub org_role: OrgRole,
    pub is_operator: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Org {
    pub id: String,
    pub name: String,
    pub kind: OrgKind,
    pub region: Region,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    pub id: String,
    pub org_id: String,
    pub email: String,
    pub role: OrgRole,
    pub created_at: i64,
    pub expires_at: i64,
}

/// What the invitee sees before accepting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvitationPreview {
    pub org_name: String,
    pub email: String,
    pub role: OrgRole,
}

/// The raw sign-up form; parsed by [`Accounts::sign_up`].
#[derive(Debug, Clone, Default)]
pub struct SignUpForm {
    pub email: String,
    pub password: String,
    pub org_name: String,
    pub org_kind: String,
    pub region: String,
}

/// Whether a sign-up created an account. Callers answer both the same way, so that sign-up
/// does not reveal which emails are registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignUpOutcome {
    Created { user_id: String },
    AlreadyRegistered,
}

/// How long an invitation link stays valid.
pub const INVITATION_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

/// The accounts service over the shared storage handle.
#[derive(Clone, Debug)]
pub struct Accounts {
    db: Db,
    limits: LoginLimits,
}

const USER_COLUMNS: &str = "id, email, org_id, org_role, platform_role, created_at";
const ORG_COLUMNS: &str = "id, name, kind, region, created_at";

fn user_from_row(row: &db::sqlx::any::AnyRow) -> Result<User, AccountError> {
    let role: String = row.try_get("org_role")?;
    let platform: Option<String> = row.try_get("platform_role")?;
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        org_id: row.try_get("org_id")?,
        org_role: OrgRole::from_code(&role)
            .ok_or_else(|| AccountError::Internal(format!("unknown role {role}")))?,
        is_operator: platform.as_deref() == Some("operator"),
        created_at: row.try_get("created_at")?,
    })
}

fn org_from_row(row: &db::sqlx::any::AnyRow) -> Result<Org, AccountError> {
    let kind: String = row.try_get("kind")?;
    let region: String = row.try_get("region")?;
    Ok(Org {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        kind: OrgKind::from_code(&kind)
            .ok_or_else(|| AccountError::Internal(format!("unknown org kind {kind}")))?,
        region: Region::from_code(&region)
            .ok_or_else(|| AccountError::Internal(format!("unknown region {region}")))?,
        created_at: row.try_get("created_at")?,
    })
}

fn invitation_from_row(row: &db::sqlx::any::AnyRow) -> Result<Invitation, AccountError> {
    let role: String = row.try_get("role")?;
    Ok(Invitation {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        email: row.try_get("email")?,
        role: OrgRole::from_code(&role)
            .ok_or_else(|| AccountError::Internal(format!("unknown role {role}")))?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

/// A secret token for a link: 256 random bits, hex. Only its SHA-256 is stored.
fn new_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    let hash = token_hash(&token);
    (token, hash)
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The platform organisation's id (operators belong to it), created on first use.
async fn platform_org(conn: &mut AnyConnection) -> Result<String, AccountError> {
    let existing = db::sqlx::query("SELECT id FROM organizations WHERE kind = 'platform'")
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(row) = existing {
        return Ok(row.try_get::<String, _>("id")?);
    }
    let org = Org {
        id: new_id(),
        name: "Tokenmill platform".to_string(),
        kind: OrgKind::Platform,
        region: Region::Europe,
        created_at: now_ms(),
    };
    insert_org(conn, &org).await?;
    Ok(org.id)
}

async fn insert_org(conn: &mut AnyConnection, org: &Org) -> Result<(), AccountError> {
    db::sqlx::query(
        "INSERT INTO organizations (id, name, kind, region, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&org.id)
    .bind(&org.name)
    .bind(org.kind.code())
    .bind(org.region.code())
    .bind(org.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A user row about to be written.
struct NewUser<'a> {
    email: &'a str,
    hash: &'a password::PasswordHashString,
    org_id: &'a str,
    role: OrgRole,
    operator: bool,
}

/// Inserts a user and returns its id, or `None` when the email is already registered.
async fn insert_user(
    conn: &mut AnyConnection,
    new: NewUser<'_>,
) -> Result<Option<String>, AccountError> {
    let id = new_id();
    let inserted = db::sqlx::query(
        "INSERT INTO users (id, email, password_hash, org_id, org_role, platform_role, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(new.email)
    .bind(new.hash.as_str())
    .bind(new.org_id)
    .bind(new.role.code())
    .bind(new.operator.then_some("operator"))
    .bind(now_ms())
    .execute(conn)
    .await;
    match inserted {
        Ok(_) => Ok(Some(id)),
        Err(e) if db::is_unique_violation(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl Accounts {
    pub fn new(db: Db, limits: LoginLimits) -> Accounts {
        Accounts { db, limits }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Creates a tenant organisation and its owner.
    pub async fn sign_up(&self, form: SignUpForm) -> Result<SignUpOutcome, AccountError> {
        let email = Email::parse(&form.email)?;
        let org_name = OrgName::parse(&form.org_name)?;
        let kind = OrgKind::parse_tenant(&form.org_kind)?;
        let region = Region::parse(&form.region)?;
        let password = NewPassword::parse(&form.password, &[email.as_str(), org_name.as_str()])?;
        // Hash before looking at the database: a registered email costs the same time.
        let hash = password::hash(password.expose().to_string()).await?;

        let org = Org {
            id: new_id(),
            name: org_name.as_str().to_string(),
            kind,
            region,
            created_at: now_ms(),
        };
        let mut tx = self.db.begin_write().await?;
        insert_org(&mut tx, &org).await?;
        let new = NewUser {
            email: email.as_str(),
            hash: &hash,
            org_id: &org.id,
            role: OrgRole::Owner,
            operator: false,
        };
        match insert_user(&mut tx, new).await? {
            Some(user_id) => {
                tx.commit().await?;
                tracing::info!(
                    user_id,
                    org_id = org.id,
                    kind = kind.code(),
                    "organisation signed up"
                );
                Ok(SignUpOutcome::Created { user_id })
            }
            None => {
                // Roll back the organisation too: nothing half-created.
                tx.rollback().await?;
                tracing::info!("sign-up for an email that is already registered");
                Ok(SignUpOutcome::AlreadyRegistered)
            }
        }
    }

    /// Checks a password, under the login limits. `ip` is the client address.
    pub async fn login(&self, email: &str, password: &str, ip: &str) -> Result<User, AccountError> {
        let email = Email::parse(email).map_err(|_| AccountError::InvalidCredentials)?;
        let row = db::sqlx::query(&format!(
            "SELECT {USER_COLUMNS}, password_hash, last_login_ip FROM users WHERE email = $1"
        ))
        .bind(email.as_str())
        .fetch_optional(self.db.pool())
        .await?;
        let last_ip: Option<String> = match &row {
            Some(r) => r.try_get("last_login_ip")?,
            None => None,
        };
        throttle::check(
            &self.db,
            &self.limits,
            email.as_str(),
            ip,
            last_ip.as_deref(),
        )
        .await?;

        let stored = match &row {
            Some(r) => Some(password::PasswordHashString(r.try_get("password_hash")?)),
            None => None,
        };
        if !password::verify(password.to_string(), stored).await? {
            throttle::record_failure(&self.db, email.as_str(), ip).await?;
            return Err(AccountError::InvalidCredentials);
        }
        let row = row.ok_or(AccountError::InvalidCredentials)?;
        let user = user_from_row(&row)?;
        db::sqlx::query("UPDATE users SET last_login_ip = $1 WHERE id = $2")
            .bind(ip)
            .bind(&user.id)
            .execute(self.db.pool())
            .await?;
        throttle::clear(&self.db, email.as_str(), ip).await?;
        Ok(user)
    }

    pub async fn user(&self, user_id: &str) -> Result<Option<User>, AccountError> {
        let row = db::sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(user_id)
            .fetch_optional(self.db.pool())
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// A user and whether their organisation is suspended, in one query (checked on every
    /// session request).
    pub async fn user_with_state(
        &self,
        user_id: &str,
    ) -> Result<Option<(User, bool)>, AccountError> {
        let row = db::sqlx::query(
            "SELECT u.id, u.email, u.org_id, u.org_role, u.platform_role, u.created_at, \
             o.suspended_at FROM users u JOIN organizations o ON o.id = u.org_id WHERE u.id = $1",
        )
        .bind(user_id)
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref()
            .map(|r| {
                let suspended: Option<i64> = r.try_get("suspended_at")?;
                Ok((user_from_row(r)?, suspended.is_some()))
            })
            .transpose()
    }

    pub async fn org(&self, org_id: &str) -> Result<Option<Org>, AccountError> {
        let row = db::sqlx::query(&format!(
            "SELECT {ORG_COLUMNS} FROM organizations WHERE id = $1"
        ))
        .bind(org_id)
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(org_from_row).transpose()
    }

    /// Whether the organisation is suspended (its sessions and API keys are refused).
    pub async fn is_suspended(&self, org_id: &str) -> Result<bool, AccountError> {
        let at: Option<Option<i64>> =
            db::sqlx::query_scalar("SELECT suspended_at FROM organizations WHERE id = $1")
                .bind(org_id)
                .fetch_optional(self.db.pool())
                .await?;
        Ok(at.flatten().is_some())
    }

    /// Suspends or resumes an organisation: operators only, and never the platform's own.
    /// Suspends or resumes an organisation; returns whether it was suspended before.
    pub async fn set_suspended(
        &self,
        actor: &User,
        org_id: &str,
        suspended: bool,
    ) -> Result<bool, AccountError> {
        if !actor.is_operator {
            return Err(AccountError::Forbidden);
        }
        let mut tx = self.db.begin_write().await?;
        let before: Option<Option<i64>> = db::sqlx::query_scalar(
            "SELECT suspended_at FROM organizations WHERE id = $1 AND kind <> 'platform'",
        )
        .bind(org_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(before) = before else {
            return Err(AccountError::NotFound);
        };
        // A suspension keeps its first date.
        db::sqlx::query("UPDATE organizations SET suspended_at = $1 WHERE id = $2")
            .bind(if suspended {
                before.or(Some(now_ms()))
            } else {
                None
            })
            .bind(org_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(
            actor = actor.id,
            org_id,
            suspended,
            "organisation suspension changed"
        );
        Ok(before.is_some())
    }

    /// Organisations for the operators' console, by name: each with when it was suspended.
    /// `search` matches a part of the name, any case.
    pub async fn organizations(
        &self,
        actor: &User,
        search: &str,
    ) -> Result<Vec<(Org, Option<i64>)>, AccountError> {
        if !actor.is_operator {
            return Err(AccountError::Forbidden);
        }
        // `%` and `_` in the search are literal characters, not wildcards.
        let escaped = search
            .trim()
            .to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        let pattern = format!("%{escaped}%");
        let rows = db::sqlx::query(&format!(
            "SELECT {ORG_COLUMNS}, suspended_at FROM organizations \
             WHERE kind <> 'platform' AND LOWER(name) LIKE $1 ESCAPE '\\' ORDER BY name, id LIMIT 200"
        ))
        .bind(pattern)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((org_from_row(r)?, r.try_get("suspended_at")?)))
            .collect()
    }

    /// Changes the user's password after checking the current one. Wrong guesses of the
    /// current password count against the same limits as failed logins, so a stolen session
    /// cannot be used to guess it.
    pub async fn change_password(
        &self,
        user: &User,
        current: &str,
        new: &str,
        ip: &str,
    ) -> Result<(), AccountError> {
        let row = db::sqlx::query("SELECT password_hash, last_login_ip FROM users WHERE id = $1")
            .bind(&user.id)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(AccountError::NotFound)?;
        let stored: String = row.try_get("password_hash")?;
        let last_ip: Option<String> = row.try_get("last_login_ip")?;
        throttle::check(&self.db, &self.limits, &user.email, ip, last_ip.as_deref()).await?;
        let ok = password::verify(
            current.to_string(),
            Some(password::PasswordHashString(stored)),
        )
        .await?;
        if !ok {
            throttle::record_failure(&self.db, &user.email, ip).await?;
            return Err(AccountError::field(
                "current_password",
                "That is not your current password.",
            ));
        }
        let new = NewPassword::parse(new, &[user.email.as_str()]).map_err(|e| match e {
            AccountError::Field { message, .. } => AccountError::field("new_password", message),
            other => other,
        })?;
        let hash = password::hash(new.expose().to_string()).await?;
        db::sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(hash.as_str())
            .bind(&user.id)
            .execute(self.db.pool())
            .await?;
        tracing::info!(user_id = user.id, "password changed");
        Ok(())
    }

    /// Ends every stored session of a user except `keep` (a session id), e.g. after a password
    /// change or when the user is removed.
    pub async fn end_sessions(
        &self,
        user_id: &str,
        keep: Option<&str>,
    ) -> Result<u64, AccountError> {
        let done = db::sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id <> $2")
            .bind(user_id)
            .bind(keep.unwrap_or(""))
            .execute(self.db.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// The members of the actor's own organisation.
    pub async fn members(&self, actor: &User) -> Result<Vec<User>, AccountError> {
        let rows = db::sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE org_id = $1 ORDER BY created_at, id"
        ))
        .bind(&actor.org_id)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    /// Removes a member from the actor's organisation. Owners only; a user id from another
    /// organisation is reported as not found.
    pub async fn remove_member(&self, actor: &User, user_id: &str) -> Result<(), AccountError> {
        if actor.org_role != OrgRole::Owner {
            return Err(AccountError::Forbidden);
        }
        if actor.id == user_id {
            return Err(AccountError::field("member", "You cannot remove yourself."));
        }
        let mut tx = self.db.begin_write().await?;
        let deleted = db::sqlx::query("DELETE FROM users WHERE id = $1 AND org_id = $2")
            .bind(user_id)
            .bind(&actor.org_id)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(AccountError::NotFound);
        }
        db::sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(actor = actor.id, removed = user_id, "member removed");
        Ok(())
    }

    /// Invites `email` into the actor's organisation. Returns the invitation and the secret
    /// token for the link, which is shown once and stored only as a hash.
    pub async fn invite(
        &self,
        actor: &User,
        email: &str,
        role: OrgRole,
    ) -> Result<(Invitation, String), AccountError> {
        if actor.org_role != OrgRole::Owner {
            return Err(AccountError::Forbidden);
        }
        let email = Email::parse(email)?;
        self.create_invitation(&actor.org_id, Some(&actor.id), &email, role)
            .await
    }

    async fn create_invitation(
        &self,
        org_id: &str,
        invited_by: Option<&str>,
        email: &Email,
        role: OrgRole,
    ) -> Result<(Invitation, String), AccountError> {
        let (token, hash) = new_token();
        let now = now_ms();
        let invitation = Invitation {
            id: new_id(),
            org_id: org_id.to_string(),
            email: email.as_str().to_string(),
            role,
            created_at: now,
            expires_at: now + INVITATION_TTL_MS,
        };
        db::sqlx::query(
            "INSERT INTO invitations (id, org_id, email, role, token_hash, invited_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&invitation.id)
        .bind(&invitation.org_id)
        .bind(&invitation.email)
        .bind(role.code())
        .bind(&hash)
        .bind(invited_by)
        .bind(invitation.created_at)
        .bind(invitation.expires_at)
        .execute(self.db.pool())
        .await?;
        Ok((invitation, token))
    }

    /// Open (not accepted, revoked or expired) invitations of the actor's organisation.
    pub async fn invitations(&self, actor: &User) -> Result<Vec<Invitation>, AccountError> {
        let rows = db::sqlx::query(
            "SELECT id, org_id, email, role, created_at, expires_at FROM invitations \
             WHERE org_id = $1 AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > $2 \
             ORDER BY created_at, id",
        )
        .bind(&actor.org_id)
        .bind(now_ms())
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(invitation_from_row).collect()
    }

    /// Revokes an open invitation of the actor's organisation.
    pub async fn revoke_invitation(&self, actor: &User, id: &str) -> Result<(), AccountError> {
        if actor.org_role != OrgRole::Owner {
            return Err(AccountError::Forbidden);
        }
        let done = db::sqlx::query(
            "UPDATE invitations SET revoked_at = $1 \
             WHERE id = $2 AND org_id = $3 AND accepted_at IS NULL AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(id)
        .bind(&actor.org_id)
        .execute(self.db.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(AccountError::NotFound);
        }
        Ok(())
    }

    /// What an invitation link leads to, if it is still usable.
    pub async fn preview_invitation(&self, token: &str) -> Result<InvitationPreview, AccountError> {
        let row = db::sqlx::query(
            "SELECT i.email, i.role, o.name FROM invitations i JOIN organizations o ON o.id = i.org_id \
             WHERE i.token_hash = $1 AND i.accepted_at IS NULL AND i.revoked_at IS NULL AND i.expires_at > $2",
        )
        .bind(token_hash(token))
        .bind(now_ms())
        .fetch_optional(self.db.pool())
        .await?
        .ok_or(AccountError::InvitationInvalid)?;
        let role: String = row.try_get("role")?;
        Ok(InvitationPreview {
            org_name: row.try_get("name")?,
            email: row.try_get("email")?,
            role: OrgRole::from_code(&role).ok_or(AccountError::InvitationInvalid)?,
        })
    }

    /// Creates the invited user in the inviting organisation. The invitation is consumed in the
    /// same transaction, so a link works exactly once.
    pub async fn accept_invitation(
        &self,
        token: &str,
        password: &str,
    ) -> Result<User, AccountError> {
        let preview = self.preview_invitation(token).await?;
        let password = NewPassword::parse(
            password,
            &[preview.email.as_str(), preview.org_name.as_str()],
        )?;
        let hash = password::hash(password.expose().to_string()).await?;

        let mut tx = self.db.begin_write().await?;
        let now = now_ms();
        let row = db::sqlx::query(
            "SELECT id, org_id, email, role FROM invitations \
             WHERE token_hash = $1 AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > $2",
        )
        .bind(token_hash(token))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(AccountError::InvitationInvalid)?;
        let invitation_id: String = row.try_get("id")?;
        let org_id: String = row.try_get("org_id")?;
        let email: String = row.try_get("email")?;
        let role: String = row.try_get("role")?;
        let consumed = db::sqlx::query(
            "UPDATE invitations SET accepted_at = $1 WHERE id = $2 AND accepted_at IS NULL",
        )
        .bind(now)
        .bind(&invitation_id)
        .execute(&mut *tx)
        .await?;
        if consumed.rows_affected() != 1 {
            return Err(AccountError::InvitationInvalid);
        }
        let new = NewUser {
            email: &email,
            hash: &hash,
            org_id: &org_id,
            role: OrgRole::from_code(&role).ok_or(AccountError::InvitationInvalid)?,
            operator: false,
        };
        let Some(user_id) = insert_user(&mut tx, new).await? else {
            return Err(AccountError::field(
                "password",
                "An account with this email already exists. Log in instead, or ask for an invitation to another email.",
            ));
        };
        tx.commit().await?;
        tracing::info!(user_id, org_id, "invitation accepted");
        self.user(&user_id).await?.ok_or(AccountError::NotFound)
    }

    /// Operators create an AI-cloud partner organisation and an invitation for its first user,
    /// who becomes its owner.
    pub async fn create_partner(
        &self,
        actor: &User,
        name: &str,
        region: &str,
        owner_email: &str,
    ) -> Result<(Org, Invitation, String), AccountError> {
        let email = Email::parse(owner_email)?;
        let org = self.create_partner_org(actor, name, region).await?;
        let (invitation, token) = self
            .create_invitation(&org.id, Some(&actor.id), &email, OrgRole::Owner)
            .await?;
        Ok((org, invitation, token))
    }

    /// A partner organisation without users yet (an operator invites them later).
    pub async fn create_partner_org(
        &self,
        actor: &User,
        name: &str,
        region: &str,
    ) -> Result<Org, AccountError> {
        if !actor.is_operator {
            return Err(AccountError::Forbidden);
        }
        let name = OrgName::parse(name)?;
        let region = Region::parse(region)?;
        let org = Org {
            id: new_id(),
            name: name.as_str().to_string(),
            kind: OrgKind::Partner,
            region,
            created_at: now_ms(),
        };
        insert_org(&mut *self.db.pool().acquire().await?, &org).await?;
        tracing::info!(
            actor = actor.id,
            org_id = org.id,
            "partner organisation created"
        );
        Ok(org)
    }

    /// Partner organisations, for operators.
    pub async fn partners(&self, actor: &User) -> Result<Vec<Org>, AccountError> {
        if !actor.is_operator {
            return Err(AccountError::Forbidden);
        }
        let rows = db::sqlx::query(&format!(
            "SELECT {ORG_COLUMNS} FROM organizations WHERE kind = 'partner' ORDER BY created_at, id"
        ))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(org_from_row).collect()
    }

    /// The platform acting on its own (what a first start sets up): an operator that is not
    /// a person and cannot sign in, recorded as `system`. Creates the platform organisation if
    /// need be.
    pub async fn system_actor(&self) -> Result<User, AccountError> {
        let mut tx = self.db.begin_write().await?;
        let org_id = platform_org(&mut tx).await?;
        tx.commit().await?;
        Ok(User {
            id: "system".into(),
            email: "system".into(),
            org_id,
            org_role: OrgRole::Owner,
            is_operator: true,
            created_at: 0,
        })
    }

    /// Bootstraps an operator (the platform side). Operators belong to the platform
    /// organisation, created on first use.
    pub async fn create_operator(&self, email: &str, password: &str) -> Result<User, AccountError> {
        let email = Email::parse(email)?;
        let password = NewPassword::parse(password, &[email.as_str()])?;
        let hash = password::hash(password.expose().to_string()).await?;
        let mut tx = self.db.begin_write().await?;
        let org_id = platform_org(&mut tx).await?;
        let new = NewUser {
            email: email.as_str(),
            hash: &hash,
            org_id: &org_id,
            role: OrgRole::Owner,
            operator: true,
        };
        let Some(user_id) = insert_user(&mut tx, new).await? else {
            return Err(AccountError::field(
                "email",
                "An account with this email already exists.",
            ));
        };
        tx.commit().await?;
        self.user(&user_id).await?.ok_or(AccountError::NotFound)
    }
}
