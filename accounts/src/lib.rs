//! Accounts and organisations: sign-up, login with throttling, members and invitations,
//! partners and operators. No UI code; the portal calls these and maps [`AccountError`] to
//! responses.

pub mod audit;
mod email_links;
mod error;
pub mod password;
mod throttle;
pub mod two_factor;
pub mod types;

use db::{
    Db, new_id, now_ms,
    sqlx::{AnyConnection, FromRow, Row},
};
use rand::RngCore;
use sha2::{Digest, Sha256};

pub use audit::{AuditEvent, Change};
pub use email_links::{RESET_TTL_MS, VERIFY_TTL_MS, Verified};
pub use error::AccountError;
pub use throttle::LoginLimits;
pub use two_factor::{Enrolment, SecondFactor};
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
    /// The address was shown to be theirs; until then no credits are granted, no keys made
    /// and no jobs run for them.
    pub email_verified: bool,
    /// Two-factor sign-in (TOTP) is on.
    pub two_factor: bool,
}

impl User {
    /// Whether this user must sign in with a second factor before doing anything: everyone who
    /// moves money or sees other organisations' data (operators, and owners of partners).
    pub fn two_factor_required(&self, org_kind: OrgKind) -> bool {
        self.is_operator || (org_kind == OrgKind::Partner && self.org_role == OrgRole::Owner)
    }
}

/// Read from rows of `ORG_COLUMNS` by name.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Org {
    pub id: String,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub kind: OrgKind,
    #[sqlx(try_from = "String")]
    pub region: Region,
    pub created_at: i64,
}

/// Read from rows of its table by name.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Invitation {
    pub id: String,
    pub org_id: String,
    pub email: String,
    #[sqlx(try_from = "String")]
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
    /// A new organisation and owner; `verify_token` goes into the verification link mailed to
    /// the address.
    Created {
        user_id: String,
        email: Email,
        verify_token: String,
    },
    /// The address has an account: it is told so by mail, and nothing is created.
    AlreadyRegistered { email: Email },
}

/// A signed-in session's user as every request checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionUser {
    pub user: User,
    pub suspended: bool,
    pub org_kind: OrgKind,
}

impl SessionUser {
    /// Must set up two-factor sign-in before anything else.
    pub fn needs_two_factor_setup(&self) -> bool {
        self.user.two_factor_required(self.org_kind) && !self.user.two_factor
    }
}

/// A member removed from an organisation, and the API keys they made, revoked with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub email: String,
    pub revoked_keys: Vec<String>,
}

/// How long an invitation link stays valid.
pub const INVITATION_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

/// The accounts service over the shared storage handle.
#[derive(Clone, Debug)]
pub struct Accounts {
    db: Db,
    limits: LoginLimits,
}

const USER_COLUMNS: &str =
    "id, email, org_id, org_role, platform_role, created_at, email_verified_at, totp_enabled_at";
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
        email_verified: row
            .try_get::<Option<i64>, _>("email_verified_at")?
            .is_some(),
        two_factor: row.try_get::<Option<i64>, _>("totp_enabled_at")?.is_some(),
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
        "INSERT INTO organizations (id, name, name_folded, kind, region, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&org.id)
    .bind(&org.name)
    .bind(text::fold(&org.name))
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
    /// Verified at creation: operators made from the command line, invitees (the invitation
    /// went to the address).
    verified: bool,
}

/// Inserts a user and returns its id, or `None` when the email is already registered.
async fn insert_user(
    conn: &mut AnyConnection,
    new: NewUser<'_>,
) -> Result<Option<String>, AccountError> {
    let id = new_id();
    let now = now_ms();
    let inserted = db::sqlx::query(
        "INSERT INTO users (id, email, password_hash, org_id, org_role, platform_role, created_at, \
         email_verified_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&id)
    .bind(new.email)
    .bind(new.hash.as_str())
    .bind(new.org_id)
    .bind(new.role.code())
    .bind(new.operator.then_some("operator"))
    .bind(now)
    .bind(new.verified.then_some(now))
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

    /// Folds the search text of rows written before it was stored (see [`text::fold`]); run
    /// at start. Returns how many rows it filled.
    pub async fn fold_search_text(&self) -> Result<u64, AccountError> {
        let mut filled = 0;
        let orgs = db::sqlx::query("SELECT id, name FROM organizations WHERE name_folded IS NULL")
            .fetch_all(self.db.pool())
            .await?;
        for r in &orgs {
            let name: String = r.try_get("name")?;
            db::sqlx::query("UPDATE organizations SET name_folded = $1 WHERE id = $2")
                .bind(text::fold(&name))
                .bind(r.try_get::<String, _>("id")?)
                .execute(self.db.pool())
                .await?;
            filled += 1;
        }
        let events = db::sqlx::query(
            "SELECT id, actor_email, action, target_id FROM audit_events \
             WHERE search_folded IS NULL",
        )
        .fetch_all(self.db.pool())
        .await?;
        for r in &events {
            let folded = audit::search_text(
                &r.try_get::<String, _>("actor_email")?,
                &r.try_get::<String, _>("action")?,
                &r.try_get::<String, _>("target_id")?,
            );
            db::sqlx::query("UPDATE audit_events SET search_folded = $1 WHERE id = $2")
                .bind(folded)
                .bind(r.try_get::<String, _>("id")?)
                .execute(self.db.pool())
                .await?;
            filled += 1;
        }
        Ok(filled)
    }

    /// Drops counted attempts older than every limit's window (run every minute).
    pub async fn prune_attempts(&self, now: i64) -> Result<u64, AccountError> {
        throttle::prune(&self.db, now).await
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Creates a tenant organisation and its owner, whose address is still to be verified.
    /// At most [`LoginLimits::signups_per_ip_hour`] sign-ups are taken from one client
    /// address an hour, registered emails included (their answer is the same).
    pub async fn sign_up(&self, form: SignUpForm, ip: &str) -> Result<SignUpOutcome, AccountError> {
        let email = Email::parse(&form.email)?;
        let org_name = OrgName::parse(&form.org_name)?;
        let kind = OrgKind::parse_tenant(&form.org_kind)?;
        let region = Region::parse(&form.region)?;
        let password = NewPassword::parse(&form.password, &[email.as_str(), org_name.as_str()])?;
        let windows = [throttle::Window::new(
            "signup:ip",
            ip,
            self.limits.signups_per_ip_hour,
            3600 * 1000,
        )];
        throttle::take(&self.db, &windows, now_ms()).await?;
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
            verified: false,
        };
        match insert_user(&mut tx, new).await? {
            Some(user_id) => {
                let verify_token =
                    email_links::issue(&mut tx, &user_id, email_links::Purpose::Verify).await?;
                tx.commit().await?;
                tracing::info!(
                    user_id,
                    org_id = org.id,
                    kind = kind.code(),
                    "organisation signed up"
                );
                Ok(SignUpOutcome::Created {
                    user_id,
                    email,
                    verify_token,
                })
            }
            None => {
                // Roll back the organisation too: nothing half-created.
                tx.rollback().await?;
                tracing::info!("sign-up for an email that is already registered");
                Ok(SignUpOutcome::AlreadyRegistered { email })
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
        // Counted before the hash is checked, in the step that allows it: a burst of
        // concurrent guesses gets no more checks than the limit.
        let windows = throttle::login_windows(&self.limits, email.as_str(), ip, last_ip.as_deref());
        let attempt = throttle::take(&self.db, &windows, now_ms()).await?;

        let stored = match &row {
            Some(r) => Some(password::PasswordHashString(r.try_get("password_hash")?)),
            None => None,
        };
        if !password::verify(password.to_string(), stored).await? {
            tracing::info!(ip, "login failed");
            return Err(AccountError::InvalidCredentials);
        }
        let row = row.ok_or(AccountError::InvalidCredentials)?;
        let user = user_from_row(&row)?;
        // A second factor still to come: the address is remembered only once it is given.
        if !user.two_factor {
            self.remember_login_ip(&user.id, ip).await?;
        }
        throttle::forget(&self.db, &attempt, email.as_str(), ip).await?;
        Ok(user)
    }

    /// The address the user last signed in from completely: the per-account login limit does
    /// not apply there (see [`throttle`]).
    async fn remember_login_ip(&self, user_id: &str, ip: &str) -> Result<(), AccountError> {
        db::sqlx::query("UPDATE users SET last_login_ip = $1 WHERE id = $2")
            .bind(ip)
            .bind(user_id)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, AccountError> {
        let email = Email::parse(email)?;
        let row = db::sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email = $1"
        ))
        .bind(email.as_str())
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn user(&self, user_id: &str) -> Result<Option<User>, AccountError> {
        let row = db::sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(user_id)
            .fetch_optional(self.db.pool())
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// A user with their organisation's kind and whether it is suspended, in one query
    /// (checked on every session request).
    pub async fn user_with_state(
        &self,
        user_id: &str,
    ) -> Result<Option<SessionUser>, AccountError> {
        let row = db::sqlx::query(
            "SELECT u.id, u.email, u.org_id, u.org_role, u.platform_role, u.created_at, \
             u.email_verified_at, u.totp_enabled_at, o.suspended_at, o.kind \
             FROM users u JOIN organizations o ON o.id = u.org_id WHERE u.id = $1",
        )
        .bind(user_id)
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref()
            .map(|r| {
                let suspended: Option<i64> = r.try_get("suspended_at")?;
                let kind: String = r.try_get("kind")?;
                Ok(SessionUser {
                    user: user_from_row(r)?,
                    suspended: suspended.is_some(),
                    org_kind: OrgKind::from_code(&kind).ok_or_else(|| {
                        AccountError::Internal(format!("unknown org kind {kind}"))
                    })?,
                })
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
        Ok(row.as_ref().map(Org::from_row).transpose()?)
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
        let rows = db::sqlx::query(&format!(
            "SELECT {ORG_COLUMNS}, suspended_at FROM organizations \
             WHERE kind <> 'platform' AND name_folded LIKE $1 ESCAPE '\\' \
             ORDER BY name, id LIMIT 200"
        ))
        .bind(text::contains_pattern(search))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((Org::from_row(r)?, r.try_get("suspended_at")?)))
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
        let windows = throttle::login_windows(&self.limits, &user.email, ip, last_ip.as_deref());
        let attempt = throttle::take(&self.db, &windows, now_ms()).await?;
        let ok = password::verify(
            current.to_string(),
            Some(password::PasswordHashString(stored)),
        )
        .await?;
        if !ok {
            return Err(AccountError::field(
                "current_password",
                "That is not your current password.",
            ));
        }
        let new = NewPassword::parse(new, &[user.email.as_str()]).map_err(|e| match e {
            AccountError::Field { message, .. } => AccountError::field("new_password", message),
            other => other,
        })?;
        throttle::forget(&self.db, &attempt, &user.email, ip).await?;
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

    /// Removes a member from the actor's organisation, ending their sessions and revoking
    /// every API key they made, in one transaction: a removed member's keys never bill the
    /// organisation again. Owners only; a user id from another organisation is reported as
    /// not found.
    pub async fn remove_member(
        &self,
        actor: &User,
        user_id: &str,
    ) -> Result<Removed, AccountError> {
        if actor.org_role != OrgRole::Owner {
            return Err(AccountError::Forbidden);
        }
        if actor.id == user_id {
            return Err(AccountError::field("member", "You cannot remove yourself."));
        }
        let mut tx = self.db.begin_write().await?;
        let email: Option<String> = db::sqlx::query_scalar(&format!(
            "SELECT email FROM users WHERE id = $1 AND org_id = $2{}",
            self.db.lock_rows()
        ))
        .bind(user_id)
        .bind(&actor.org_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(email) = email else {
            return Err(AccountError::NotFound);
        };
        let revoked_keys: Vec<String> = db::sqlx::query_scalar(
            "UPDATE api_keys SET revoked_at = $1, revoked_reason = 'member_removed' \
             WHERE created_by = $2 AND org_id = $3 AND revoked_at IS NULL RETURNING id",
        )
        .bind(now_ms())
        .bind(user_id)
        .bind(&actor.org_id)
        .fetch_all(&mut *tx)
        .await?;
        db::sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        db::sqlx::query("DELETE FROM users WHERE id = $1 AND org_id = $2")
            .bind(user_id)
            .bind(&actor.org_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(
            actor = actor.id,
            removed = user_id,
            keys_revoked = revoked_keys.len(),
            "member removed"
        );
        Ok(Removed {
            email,
            revoked_keys,
        })
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
        // Each invitation is mailed: an organisation sends a bounded number an hour.
        let windows = throttle::mail_windows("invite:org", &actor.org_id, 30);
        throttle::take(&self.db, &windows, now_ms()).await?;
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
        Ok(rows
            .iter()
            .map(Invitation::from_row)
            .collect::<Result<_, _>>()?)
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
            // The invitation went to this address, and its link is what proves it.
            verified: true,
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
        Ok(rows.iter().map(Org::from_row).collect::<Result<_, _>>()?)
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
            email_verified: true,
            two_factor: true,
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
            verified: true,
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
