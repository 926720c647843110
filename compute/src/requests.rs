//! Compute requests as tenants make them, and what each viewer may see of them.

use accounts::{OrgKind, User};
use db::{new_id, now_ms, sqlx::Row};
use ledger::Nanos;

use crate::types::{Capacity, Commitment, DAY_MS, Day, Status};
use crate::{Compute, ComputeError, field};

/// What a tenant fills in. Text as submitted; parsed by [`Compute::submit`].
#[derive(Debug, Clone, Default)]
pub struct RequestForm {
    pub factory_id: String,
    /// A model id the factory serves, or `gpus`.
    pub what: String,
    /// Tokens per minute, or a GPU count.
    pub amount: String,
    pub starts_on: String,
    pub ends_on: String,
    pub commitment: String,
    /// Empty: no credit-support application.
    pub program_id: String,
    pub support_amount: String,
    pub justification: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Support {
    pub program_id: String,
    pub program_name: String,
    pub amount: Nanos,
    pub justification: String,
}

/// What an approval set: the scheduler's share weight and rate limit, over these days (both
/// inclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The factory whose capacity was allocated (jobs under this allocation run there).
    pub factory_id: String,
    pub share_weight: i64,
    pub rate_limit_tpm: i64,
    pub starts_at: Day,
    pub ends_at: Day,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRef {
    pub program_id: String,
    pub program_name: String,
    pub amount: Nanos,
    /// `None` while the grant is still being made (it is retried until it is).
    pub grant_id: Option<String>,
    pub(crate) key: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputeRequest {
    pub id: String,
    pub org_id: String,
    pub org_name: String,
    pub factory_id: String,
    pub factory_name: String,
    pub partner_org_id: String,
    pub capacity: Capacity,
    pub starts_at: Day,
    pub ends_at: Day,
    pub commitment: Commitment,
    pub support: Option<Support>,
    pub status: Status,
    /// Why it was rejected or sent back.
    pub reason: Option<String>,
    pub allocation: Option<Allocation>,
    pub grant: Option<GrantRef>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEvent {
    pub actor_email: String,
    pub action: String,
    pub detail: String,
    pub created_at: i64,
}

impl ComputeRequest {
    pub fn may_view(&self, user: &User) -> bool {
        user.is_operator || user.org_id == self.org_id || user.org_id == self.partner_org_id
    }

    /// An owner of the partner running the factory (decisions spend the partner's capacity and
    /// its programs' budgets; members see the queue but do not decide), or an operator.
    pub fn may_decide(&self, user: &User) -> bool {
        user.is_operator
            || (user.org_id == self.partner_org_id && user.org_role == accounts::OrgRole::Owner)
    }

    pub fn is_requester(&self, user: &User) -> bool {
        user.org_id == self.org_id
    }
}

pub(crate) const REQUEST_SELECT: &str = "SELECT r.*, o.name AS org_name, f.name AS factory_name, \
     f.partner_org_id, sp.name AS support_program_name, gp.name AS grant_program_name \
     FROM compute_requests r \
     JOIN organizations o ON o.id = r.org_id \
     JOIN factories f ON f.id = r.factory_id \
     LEFT JOIN credit_programs sp ON sp.id = r.support_program_id \
     LEFT JOIN credit_programs gp ON gp.id = r.grant_program_id";

pub(crate) fn request_from_row(r: &db::sqlx::any::AnyRow) -> Result<ComputeRequest, ComputeError> {
    let model: Option<String> = r.try_get("model")?;
    let capacity = match model {
        Some(model) => Capacity::Tokens {
            model,
            tokens_per_minute: r
                .try_get::<Option<i64>, _>("tokens_per_minute")?
                .unwrap_or(0),
        },
        None => Capacity::Gpus {
            count: r.try_get::<Option<i64>, _>("gpus")?.unwrap_or(0),
        },
    };
    let status: String = r.try_get("status")?;
    let support = match r.try_get::<Option<String>, _>("support_program_id")? {
        Some(program_id) => Some(Support {
            program_id,
            program_name: r
                .try_get::<Option<String>, _>("support_program_name")?
                .unwrap_or_default(),
            amount: Nanos::new(r.try_get::<Option<i64>, _>("support_amount")?.unwrap_or(0)),
            justification: r
                .try_get::<Option<String>, _>("justification")?
                .unwrap_or_default(),
        }),
        None => None,
    };
    let allocation = match (
        r.try_get::<Option<i64>, _>("share_weight")?,
        r.try_get::<Option<i64>, _>("rate_limit_tpm")?,
        r.try_get::<Option<i64>, _>("alloc_starts_at")?,
        r.try_get::<Option<i64>, _>("alloc_ends_at")?,
    ) {
        (Some(w), Some(tpm), Some(s), Some(e)) => Some(Allocation {
            factory_id: r.try_get("factory_id")?,
            share_weight: w,
            rate_limit_tpm: tpm,
            starts_at: Day::from_ms(s),
            ends_at: Day::from_ms(e),
        }),
        _ => None,
    };
    let grant = match r.try_get::<Option<String>, _>("grant_program_id")? {
        Some(program_id) => Some(GrantRef {
            program_id,
            program_name: r
                .try_get::<Option<String>, _>("grant_program_name")?
                .unwrap_or_default(),
            amount: Nanos::new(r.try_get::<Option<i64>, _>("grant_amount")?.unwrap_or(0)),
            grant_id: r.try_get("grant_id")?,
            key: r
                .try_get::<Option<String>, _>("grant_key")?
                .unwrap_or_default(),
        }),
        None => None,
    };
    Ok(ComputeRequest {
        id: r.try_get("id")?,
        org_id: r.try_get("org_id")?,
        org_name: r.try_get("org_name")?,
        factory_id: r.try_get("factory_id")?,
        factory_name: r.try_get("factory_name")?,
        partner_org_id: r.try_get("partner_org_id")?,
        capacity,
        starts_at: Day::from_ms(r.try_get("starts_at")?),
        ends_at: Day::from_ms(r.try_get("ends_at")?),
        commitment: Commitment::parse(&r.try_get::<String, _>("commitment")?)?,
        support,
        status: Status::from_code(&status)
            .ok_or_else(|| ComputeError::Conflict(format!("unknown status {status}")))?,
        reason: r.try_get("reason")?,
        allocation,
        grant,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// A request's parsed terms, ready to store.
pub(crate) struct Terms {
    pub factory_id: String,
    pub capacity: Capacity,
    pub starts_at: Day,
    pub ends_at: Day,
    pub commitment: Commitment,
    pub support: Option<(String, Nanos, String)>,
}

/// The longest period one request may cover.
const MAX_DAYS: i64 = 3 * 366;
const MAX_SUPPORT_DOLLARS: i64 = 10_000_000;

/// Who did something to a request: a user, or Tokenmill itself (dates arriving).
#[derive(Clone, Copy)]
pub(crate) struct Actor<'a> {
    pub id: Option<&'a str>,
    pub email: &'a str,
}

impl<'a> From<&'a User> for Actor<'a> {
    fn from(u: &'a User) -> Actor<'a> {
        Actor {
            id: Some(&u.id),
            email: &u.email,
        }
    }
}

pub(crate) const SYSTEM: Actor<'static> = Actor {
    id: None,
    email: "Tokenmill",
};

pub(crate) async fn record_event(
    tx: &mut db::WriteTx,
    request_id: &str,
    actor: Actor<'_>,
    action: &str,
    detail: &str,
) -> Result<(), ComputeError> {
    db::sqlx::query(
        "INSERT INTO compute_request_events (id, request_id, actor_id, actor_email, action, detail, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(new_id())
    .bind(request_id)
    .bind(actor.id)
    .bind(actor.email)
    .bind(action)
    .bind(detail)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Compute {
    /// Parses and checks a tenant's form against the factory and the programs.
    async fn terms(
        &self,
        user: &User,
        form: &RequestForm,
        now: i64,
    ) -> Result<Terms, ComputeError> {
        let factory = self
            .factory(form.factory_id.trim())
            .await?
            .ok_or_else(|| field("factory", "Choose a factory."))?;
        let capacity = Capacity::parse(&form.what, &form.amount)?;
        if let Capacity::Tokens { model, .. } = &capacity
            && !factory.serves(model)
        {
            return Err(field("what", "This factory does not serve that model."));
        }
        let starts_at = Day::parse(&form.starts_on, "starts_on")?;
        let ends_at = Day::parse(&form.ends_on, "ends_on")?;
        if starts_at < Day::containing(now) {
            return Err(field("starts_on", "The start cannot be in the past."));
        }
        if ends_at < starts_at {
            return Err(field("ends_on", "The end cannot be before the start."));
        }
        if starts_at.days_until(ends_at) > MAX_DAYS {
            return Err(field("ends_on", "One request covers at most three years."));
        }
        let commitment = Commitment::parse(&form.commitment)?;
        let support = self.support(user, form).await?;
        Ok(Terms {
            factory_id: factory.id,
            capacity,
            starts_at,
            ends_at,
            commitment,
            support,
        })
    }

    async fn support(
        &self,
        user: &User,
        form: &RequestForm,
    ) -> Result<Option<(String, Nanos, String)>, ComputeError> {
        let program_id = form.program_id.trim();
        if program_id.is_empty() {
            if !form.support_amount.trim().is_empty() {
                return Err(field(
                    "program",
                    "Choose a program to apply for credit support, or leave the amount empty.",
                ));
            }
            return Ok(None);
        }
        let program = self
            .credits
            .program(program_id)
            .await?
            .ok_or_else(|| field("program", "Unknown program."))?;
        let org = self
            .accounts
            .org(&user.org_id)
            .await?
            .ok_or(ComputeError::NotFound)?;
        if !program.is_eligible(&org) {
            return Err(field(
                "program",
                "This program is not open to your organisation.",
            ));
        }
        let amount = Nanos::parse_dollars(&form.support_amount)
            .map_err(|e| field("support_amount", &e.to_string()))?;
        if amount.get() <= 0 || amount > Nanos::from_dollars(MAX_SUPPORT_DOLLARS).unwrap_or(amount)
        {
            return Err(field(
                "support_amount",
                "Ask for more than $0 and at most $10,000,000.",
            ));
        }
        let justification = form.justification.trim();
        if !(20..=4000).contains(&justification.chars().count()) {
            return Err(field(
                "justification",
                "Explain in 20 to 4,000 characters what the credits will be used for.",
            ));
        }
        Ok(Some((program.id, amount, justification.to_string())))
    }

    /// A tenant asks for capacity.
    pub async fn submit(
        &self,
        user: &User,
        form: &RequestForm,
        now: i64,
    ) -> Result<ComputeRequest, ComputeError> {
        let org = self
            .accounts
            .org(&user.org_id)
            .await?
            .ok_or(ComputeError::NotFound)?;
        if !OrgKind::TENANT_KINDS.contains(&org.kind) {
            return Err(ComputeError::Forbidden);
        }
        let t = self.terms(user, form, now).await?;
        let id = new_id();
        let (model, tpm, gpus) = capacity_columns(&t.capacity);
        let (program, amount, why) = support_columns(&t.support);
        let mut tx = self.db.begin_write().await?;
        db::sqlx::query(
            "INSERT INTO compute_requests (id, org_id, requested_by, factory_id, model, \
             tokens_per_minute, gpus, starts_at, ends_at, commitment, support_program_id, \
             support_amount, justification, status, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'submitted', 1, $14, $14)",
        )
        .bind(&id)
        .bind(&user.org_id)
        .bind(&user.id)
        .bind(&t.factory_id)
        .bind(model)
        .bind(tpm)
        .bind(gpus)
        .bind(t.starts_at.ms())
        .bind(t.ends_at.ms())
        .bind(t.commitment.code())
        .bind(program)
        .bind(amount)
        .bind(why)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        record_event(&mut tx, &id, user.into(), "submitted", &describe(&t)).await?;
        tx.commit().await?;
        tracing::info!(
            request = id,
            org_id = user.org_id,
            "compute request submitted"
        );
        self.load(&id).await
    }

    /// The tenant answers a request for changes with new terms; the request is submitted again.
    pub async fn resubmit(
        &self,
        user: &User,
        id: &str,
        form: &RequestForm,
        now: i64,
    ) -> Result<ComputeRequest, ComputeError> {
        let current = self.request(user, id).await?;
        if !current.is_requester(user) {
            return Err(ComputeError::Forbidden);
        }
        if current.status != Status::ChangesRequested {
            return Err(not_sent_back());
        }
        let t = self.terms(user, form, now).await?;
        let (model, tpm, gpus) = capacity_columns(&t.capacity);
        let (program, amount, why) = support_columns(&t.support);
        let mut tx = self.db.begin_write().await?;
        let updated = db::sqlx::query(
            "UPDATE compute_requests SET factory_id = $1, model = $2, tokens_per_minute = $3, \
             gpus = $4, starts_at = $5, ends_at = $6, commitment = $7, support_program_id = $8, \
             support_amount = $9, justification = $10, status = 'submitted', reason = NULL, \
             version = version + 1, updated_at = $11 \
             WHERE id = $12 AND status = 'changes_requested'",
        )
        .bind(&t.factory_id)
        .bind(model)
        .bind(tpm)
        .bind(gpus)
        .bind(t.starts_at.ms())
        .bind(t.ends_at.ms())
        .bind(t.commitment.code())
        .bind(program)
        .bind(amount)
        .bind(why)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            // Changed since it was read (cancelled meanwhile).
            let _ = tx.rollback().await;
            return Err(not_sent_back());
        }
        record_event(&mut tx, id, user.into(), "resubmitted", &describe(&t)).await?;
        tx.commit().await?;
        self.load(id).await
    }

    pub(crate) async fn load(&self, id: &str) -> Result<ComputeRequest, ComputeError> {
        let row = db::sqlx::query(&format!("{REQUEST_SELECT} WHERE r.id = $1"))
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(ComputeError::NotFound)?;
        request_from_row(&row)
    }

    /// One request, if `user` may see it; otherwise it does not exist for them.
    pub async fn request(&self, user: &User, id: &str) -> Result<ComputeRequest, ComputeError> {
        match self.load(id).await {
            Ok(r) if r.may_view(user) => Ok(r),
            Ok(_) | Err(ComputeError::NotFound) => Err(ComputeError::NotFound),
            Err(e) => Err(e),
        }
    }

    /// The user's organisation's requests, newest first.
    pub async fn my_requests(&self, user: &User) -> Result<Vec<ComputeRequest>, ComputeError> {
        let rows = db::sqlx::query(&format!(
            "{REQUEST_SELECT} WHERE r.org_id = $1 ORDER BY r.created_at DESC, r.id DESC"
        ))
        .bind(&user.org_id)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(request_from_row).collect()
    }

    /// What `user` decides on: requests on their partner's factories, or every request for an
    /// operator; those waiting for a decision first, then the rest, newest first.
    pub async fn queue(&self, user: &User) -> Result<Vec<ComputeRequest>, ComputeError> {
        let order = "ORDER BY CASE r.status WHEN 'submitted' THEN 0 ELSE 1 END, r.created_at DESC, r.id DESC";
        let rows = if user.is_operator {
            db::sqlx::query(&format!("{REQUEST_SELECT} {order}"))
                .fetch_all(self.db.pool())
                .await?
        } else {
            db::sqlx::query(&format!(
                "{REQUEST_SELECT} WHERE f.partner_org_id = $1 {order}"
            ))
            .bind(&user.org_id)
            .fetch_all(self.db.pool())
            .await?
        };
        rows.iter().map(request_from_row).collect()
    }

    pub async fn timeline(
        &self,
        user: &User,
        id: &str,
    ) -> Result<Vec<TimelineEvent>, ComputeError> {
        self.request(user, id).await?;
        let rows = db::sqlx::query(
            "SELECT actor_email, action, detail, created_at FROM compute_request_events \
             WHERE request_id = $1 ORDER BY created_at, id",
        )
        .bind(id)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TimelineEvent {
                    actor_email: r.try_get("actor_email")?,
                    action: r.try_get("action")?,
                    detail: r.try_get("detail")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// The allocation an organisation holds for `model` at `now`: its active approved request
    /// for that model (the largest share weight when several overlap).
    pub async fn allocation(
        &self,
        org_id: &str,
        model: &str,
        now: i64,
    ) -> Result<Option<Allocation>, ComputeError> {
        let rows = db::sqlx::query(&format!(
            "{REQUEST_SELECT} WHERE r.org_id = $1 AND r.model = $2 AND r.status = 'active' \
             AND r.alloc_starts_at <= $3 AND r.alloc_ends_at + {DAY_MS} > $3 ORDER BY r.share_weight DESC"
        ))
        .bind(org_id)
        .bind(model)
        .bind(now)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .first()
            .map(request_from_row)
            .transpose()?
            .and_then(|r| r.allocation))
    }
}

fn not_sent_back() -> ComputeError {
    ComputeError::Conflict("Only a request sent back for changes can be submitted again.".into())
}

fn capacity_columns(c: &Capacity) -> (Option<&str>, Option<i64>, Option<i64>) {
    match c {
        Capacity::Tokens {
            model,
            tokens_per_minute,
        } => (Some(model.as_str()), Some(*tokens_per_minute), None),
        Capacity::Gpus { count } => (None, None, Some(*count)),
    }
}

fn support_columns(
    s: &Option<(String, Nanos, String)>,
) -> (Option<&str>, Option<i64>, Option<&str>) {
    match s {
        Some((p, a, j)) => (Some(p.as_str()), Some(a.get()), Some(j.as_str())),
        None => (None, None, None),
    }
}

fn describe(t: &Terms) -> String {
    let what = match &t.capacity {
        Capacity::Tokens {
            model,
            tokens_per_minute,
        } => format!("{model}, {tokens_per_minute} tokens/min"),
        Capacity::Gpus { count } => format!("{count} GPUs"),
    };
    let support = match &t.support {
        Some((_, amount, _)) => format!(", credit support {amount}"),
        None => String::new(),
    };
    format!(
        "{what}, {} to {}, {}{support}",
        t.starts_at,
        t.ends_at,
        match t.commitment {
            Commitment::Reserved => "reserved",
            Commitment::OnDemand => "on demand",
        }
    )
}
