//! Tenant wallets and credit-support programs, on the ledger.
//!
//! A wallet is a set of ledger accounts owned by one organisation: one `paid` bucket (top-ups)
//! and one bucket per grant, each expiring with its grant. Spending draws on them in burn
//! order: grants that expire soonest first, then paid ([`Credits::sources`]).
//!
//! A program's budget is moved from its sponsor's account into the program's fund when the
//! program is created; grants move money out of that fund, which may not go negative, so no
//! program ever grants beyond its budget, even under concurrent approvals.

use accounts::{Org, OrgKind, Region};
use db::{Db, new_id, now_ms, sqlx::Row};
use ledger::{AccountKind, AccountSpec, Ledger, LedgerError, Nanos, Posted, Posting};

#[derive(Debug, thiserror::Error)]
pub enum CreditsError {
    #[error("{message}")]
    Field {
        field: &'static str,
        message: String,
    },
    #[error("This program's budget is used up.")]
    BudgetExhausted,
    #[error("This organisation is not eligible for the program.")]
    NotEligible,
    #[error("Not found.")]
    NotFound,
    #[error("writing the export failed: {0}")]
    Export(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Db(#[from] db::DbError),
}

impl From<db::sqlx::Error> for CreditsError {
    fn from(e: db::sqlx::Error) -> Self {
        CreditsError::Db(db::DbError::Sqlx(e))
    }
}

fn field(field: &'static str, message: &str) -> CreditsError {
    CreditsError::Field {
        field,
        message: message.to_string(),
    }
}

/// Where grants that lapse unused go.
const EXPIRED_ACCOUNT: &str = "credits:expired";
/// The counterpart of paid credit: money that came in through the payment processor.
const PAYMENTS_ACCOUNT: &str = "payments:clearing";
const DAY_MS: i64 = 24 * 3600 * 1000;

fn paid_code(org_id: &str) -> String {
    format!("org:{org_id}:paid")
}

fn sponsor_code(sponsor_org_id: Option<&str>) -> String {
    match sponsor_org_id {
        Some(org) => format!("sponsor:{org}"),
        None => "sponsor:vendor".to_string(),
    }
}

/// What an operator fills in to define a program.
#[derive(Debug, Clone)]
pub struct ProgramSpec {
    pub name: String,
    /// The partner organisation that pays for it, or `None` for the vendor.
    pub sponsor_org_id: Option<String>,
    pub eligible_kinds: Vec<OrgKind>,
    /// Empty: every region.
    pub eligible_regions: Vec<Region>,
    pub grant_amount: Nanos,
    pub grant_lifetime_days: u32,
    pub budget: Nanos,
    pub auto_on_signup: bool,
    /// Grant only once the founding owner's email address is verified, once per address.
    pub requires_verified_email: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub id: String,
    pub name: String,
    pub sponsor_org_id: Option<String>,
    pub eligible_kinds: Vec<OrgKind>,
    pub eligible_regions: Vec<Region>,
    pub grant_amount: Nanos,
    pub grant_lifetime_ms: i64,
    pub budget: Nanos,
    /// What is left of the budget.
    pub remaining: Nanos,
    pub auto_on_signup: bool,
    pub requires_verified_email: bool,
    fund_account_id: String,
}

impl Program {
    pub fn is_eligible(&self, org: &Org) -> bool {
        self.eligible_kinds.contains(&org.kind)
            && (self.eligible_regions.is_empty() || self.eligible_regions.contains(&org.region))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: String,
    pub program_id: String,
    pub org_id: String,
    pub amount: Nanos,
    pub account_id: String,
    pub expires_at: i64,
}

/// One grant of a program, for the page that shows what its budget went to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantLine {
    pub org_id: String,
    pub org_name: String,
    pub amount: Nanos,
    pub reason: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// A digest of an address for sign-up grant keys: lower case, without a `+tag` in the local
/// part (`ana+2@example.com` is `ana@example.com`), SHA-256, so the key names no address.
pub fn address_digest(email: &str) -> String {
    use sha2::{Digest, Sha256};
    let email = email.trim().to_lowercase();
    let normalised = match email.split_once('@') {
        Some((local, domain)) => {
            let local = local.split('+').next().unwrap_or(local);
            format!("{local}@{domain}")
        }
        None => email,
    };
    hex::encode(&Sha256::digest(normalised.as_bytes())[..16])
}

/// One bucket of a wallet, as shown to its organisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub account_id: String,
    /// "Paid credit", or the program's name.
    pub label: String,
    pub balance: Nanos,
    pub held: Nanos,
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wallet {
    /// In burn order.
    pub buckets: Vec<Bucket>,
}

impl Wallet {
    /// What can be spent now: every bucket's balance less what open holds reserve.
    pub fn available(&self) -> Nanos {
        Nanos::new(
            self.buckets
                .iter()
                .map(|b| b.balance.get() - b.held.get())
                .sum(),
        )
    }
}

fn codes<T: Copy>(items: &[T], code: fn(T) -> &'static str) -> String {
    items.iter().map(|i| code(*i)).collect::<Vec<_>>().join(",")
}

fn parse_codes<T>(text: &str, parse: fn(&str) -> Option<T>) -> Vec<T> {
    text.split(',')
        .filter(|c| !c.is_empty())
        .filter_map(parse)
        .collect()
}

#[derive(Clone, Debug)]
pub struct Credits {
    db: Db,
    ledger: Ledger,
}

impl Credits {
    pub fn new(db: Db) -> Credits {
        Credits {
            ledger: Ledger::new(db.clone()),
            db,
        }
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    async fn open(
        &self,
        code: &str,
        org_id: Option<&str>,
        kind: AccountKind,
        expires_at: Option<i64>,
    ) -> Result<String, CreditsError> {
        let spec = AccountSpec {
            code: code.to_string(),
            org_id: org_id.map(str::to_string),
            kind,
            expires_at,
        };
        Ok(self.ledger.open_account(&spec).await?.id)
    }

    /// Defines a program and moves its budget from the sponsor into the program's fund.
    pub async fn create_program(&self, spec: &ProgramSpec) -> Result<Program, CreditsError> {
        let name = spec.name.trim();
        if !(2..=100).contains(&name.chars().count()) {
            return Err(field(
                "name",
                "Use 2 to 100 characters for the program's name.",
            ));
        }
        if spec.eligible_kinds.is_empty() {
            return Err(field(
                "eligible_kinds",
                "Choose at least one kind of organisation.",
            ));
        }
        if spec.grant_amount.get() <= 0 {
            return Err(field("grant_amount", "The grant must be more than zero."));
        }
        if spec.budget < spec.grant_amount {
            return Err(field("budget", "The budget must cover at least one grant."));
        }
        if !(1..=3660).contains(&spec.grant_lifetime_days) {
            return Err(field("grant_lifetime_days", "Grants last 1 to 3660 days."));
        }
        let id = new_id();
        let fund = self
            .open(
                &format!("program:{id}:fund"),
                None,
                AccountKind::ProgramFund,
                None,
            )
            .await?;
        let sponsor = self
            .open(
                &sponsor_code(spec.sponsor_org_id.as_deref()),
                None,
                AccountKind::External,
                None,
            )
            .await?;
        let inserted = db::sqlx::query(
            "INSERT INTO credit_programs (id, name, sponsor_org_id, eligible_kinds, eligible_regions, \
             grant_amount, grant_lifetime_ms, budget, auto_on_signup, fund_account_id, created_at, \
             requires_verified_email) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&id)
        .bind(name)
        .bind(spec.sponsor_org_id.as_deref())
        .bind(codes(&spec.eligible_kinds, OrgKind::code))
        .bind(codes(&spec.eligible_regions, Region::code))
        .bind(spec.grant_amount.get())
        .bind(i64::from(spec.grant_lifetime_days) * DAY_MS)
        .bind(spec.budget.get())
        .bind(i64::from(spec.auto_on_signup))
        .bind(&fund)
        .bind(now_ms())
        .bind(i64::from(spec.requires_verified_email))
        .execute(self.db.pool())
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if db::is_unique_violation(&e) => {
                return Err(field("name", "A program with this name already exists."));
            }
            Err(e) => return Err(e.into()),
        }
        let funding = Posting::transfer(
            format!("program:{id}:budget"),
            "program_budget",
            format!("budget of {name}"),
            None,
            &sponsor,
            &fund,
            spec.budget,
        )?;
        self.ledger.post(&funding).await?;
        tracing::info!(program = id, "credit program created");
        self.program(&id).await?.ok_or(CreditsError::NotFound)
    }

    pub async fn program(&self, id: &str) -> Result<Option<Program>, CreditsError> {
        Ok(self.load_programs(Some(id)).await?.into_iter().next())
    }

    pub async fn programs(&self) -> Result<Vec<Program>, CreditsError> {
        self.load_programs(None).await
    }

    async fn load_programs(&self, id: Option<&str>) -> Result<Vec<Program>, CreditsError> {
        let rows = db::sqlx::query(
            "SELECT p.id, p.name, p.sponsor_org_id, p.eligible_kinds, p.eligible_regions, \
             p.grant_amount, p.grant_lifetime_ms, p.budget, p.auto_on_signup, p.fund_account_id, \
             p.requires_verified_email, a.balance AS remaining FROM credit_programs p \
             JOIN ledger_accounts a ON a.id = p.fund_account_id \
             WHERE $1 = '' OR p.id = $1 ORDER BY p.created_at, p.id",
        )
        .bind(id.unwrap_or(""))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Program {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    sponsor_org_id: r.try_get("sponsor_org_id")?,
                    eligible_kinds: parse_codes(
                        &r.try_get::<String, _>("eligible_kinds")?,
                        OrgKind::from_code,
                    ),
                    eligible_regions: parse_codes(
                        &r.try_get::<String, _>("eligible_regions")?,
                        Region::from_code,
                    ),
                    grant_amount: Nanos::new(r.try_get("grant_amount")?),
                    grant_lifetime_ms: r.try_get("grant_lifetime_ms")?,
                    budget: Nanos::new(r.try_get("budget")?),
                    remaining: Nanos::new(r.try_get("remaining")?),
                    auto_on_signup: r.try_get::<i64, _>("auto_on_signup")? == 1,
                    requires_verified_email: r.try_get::<i64, _>("requires_verified_email")? == 1,
                    fund_account_id: r.try_get("fund_account_id")?,
                })
            })
            .collect::<Result<_, db::sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Grants `amount` (the program's standard grant when `None`) from a program to an eligible
    /// organisation, at most once per `key` (for example one per approved compute request).
    pub async fn grant(
        &self,
        program: &Program,
        org: &Org,
        amount: Option<Nanos>,
        reason: &str,
        key: &str,
    ) -> Result<Grant, CreditsError> {
        if let Some(existing) = self.grant_by_key(key).await? {
            return Ok(existing);
        }
        if !program.is_eligible(org) {
            return Err(CreditsError::NotEligible);
        }
        let amount = amount.unwrap_or(program.grant_amount);
        if amount.get() <= 0 {
            return Err(field("amount", "The grant must be more than zero."));
        }
        let expires_at = now_ms() + program.grant_lifetime_ms;
        // The bucket's code comes from the key, so a retry after a crash finds the same bucket
        // and the same posting (a replay, not a second grant).
        let account = self
            .open(
                &format!("grant:{key}"),
                Some(&org.id),
                AccountKind::WalletGrant,
                Some(expires_at),
            )
            .await?;
        let posting = Posting::transfer(
            format!("grant:{key}"),
            "grant",
            format!("{}: {reason}", program.name),
            Some(org.id.clone()),
            &program.fund_account_id,
            &account,
            amount,
        )?;
        match self.ledger.post(&posting).await {
            Ok(Posted::Applied { .. } | Posted::Replayed { .. }) => {}
            Err(LedgerError::InsufficientFunds { .. }) => {
                return Err(CreditsError::BudgetExhausted);
            }
            Err(e) => return Err(e.into()),
        }
        let id = new_id();
        let inserted = db::sqlx::query(
            "INSERT INTO credit_grants (id, program_id, org_id, amount, account_id, idempotency_key, \
             reason, expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&id)
        .bind(&program.id)
        .bind(&org.id)
        .bind(amount.get())
        .bind(&account)
        .bind(key)
        .bind(reason)
        .bind(expires_at)
        .bind(now_ms())
        .execute(self.db.pool())
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if db::is_unique_violation(&e) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(program = program.id, org_id = org.id, "credit granted");
        self.grant_by_key(key).await?.ok_or(CreditsError::NotFound)
    }

    async fn grant_by_key(&self, key: &str) -> Result<Option<Grant>, CreditsError> {
        let row = db::sqlx::query(
            "SELECT g.id, g.program_id, g.org_id, g.amount, g.account_id, a.expires_at \
             FROM credit_grants g JOIN ledger_accounts a ON a.id = g.account_id \
             WHERE g.idempotency_key = $1",
        )
        .bind(key)
        .fetch_optional(self.db.pool())
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(Grant {
            id: r.try_get("id")?,
            program_id: r.try_get("program_id")?,
            org_id: r.try_get("org_id")?,
            amount: Nanos::new(r.try_get("amount")?),
            account_id: r.try_get("account_id")?,
            expires_at: r
                .try_get::<Option<i64>, _>("expires_at")?
                .unwrap_or_default(),
        }))
    }

    /// The organisation's paid bucket (opened if need be).
    pub async fn paid_account(&self, org_id: &str) -> Result<String, CreditsError> {
        self.open(
            &paid_code(org_id),
            Some(org_id),
            AccountKind::WalletPaid,
            None,
        )
        .await
    }

    /// Money that came in through the payment processor (the counterpart of paid credit).
    pub async fn clearing_account(&self) -> Result<String, CreditsError> {
        self.open(PAYMENTS_ACCOUNT, None, AccountKind::External, None)
            .await
    }

    /// What the organisation owes (refunds its wallet could not cover): negative while owed.
    pub async fn receivable_account(&self, org_id: &str) -> Result<String, CreditsError> {
        self.open(
            &format!("org:{org_id}:owed"),
            Some(org_id),
            AccountKind::Receivable,
            None,
        )
        .await
    }

    /// How much the organisation owes, if anything.
    pub async fn owed(&self, org_id: &str) -> Result<Nanos, CreditsError> {
        let account = self
            .ledger
            .account_by_code(&format!("org:{org_id}:owed"))
            .await?;
        Ok(Nanos::new(account.map_or(0, |a| -a.balance.get()).max(0)))
    }

    /// Opens a new organisation's wallet: its paid bucket, empty until the first top-up.
    pub async fn open_wallet(&self, org_id: &str) -> Result<(), CreditsError> {
        self.open(
            &paid_code(org_id),
            Some(org_id),
            AccountKind::WalletPaid,
            None,
        )
        .await?;
        Ok(())
    }

    /// The grants of every program that grants automatically on sign-up without waiting for
    /// a verified address, and that `org` is eligible for. A program whose budget is used up
    /// is skipped.
    pub async fn grants_on_signup(&self, org: &Org) -> Result<Vec<Grant>, CreditsError> {
        let mut grants = Vec::new();
        for program in self.programs().await? {
            if !program.auto_on_signup
                || program.requires_verified_email
                || !program.is_eligible(org)
            {
                continue;
            }
            let key = format!("signup:{}:{}", org.id, program.id);
            if let Some(g) = self.signup_grant(&program, org, &key).await? {
                grants.push(g);
            }
        }
        Ok(grants)
    }

    /// The grants that waited for the founding owner of `org` to verify `email`: one per
    /// program that grants on sign-up, that `org` is eligible for, and that has granted
    /// neither to this organisation nor to this address before (the grant's key names a
    /// digest of the address with any `+tag` dropped, so it is granted at most once however
    /// many organisations sign up with it). Returns each with its program's name.
    pub async fn grants_on_verification(
        &self,
        org: &Org,
        email: &str,
    ) -> Result<Vec<(String, Grant)>, CreditsError> {
        let mut grants = Vec::new();
        for program in self.programs().await? {
            if !program.auto_on_signup
                || !program.requires_verified_email
                || !program.is_eligible(org)
            {
                continue;
            }
            let already: Option<i64> = db::sqlx::query_scalar(
                "SELECT 1 FROM credit_grants WHERE program_id = $1 AND org_id = $2 \
                 AND idempotency_key LIKE 'signup:%'",
            )
            .bind(&program.id)
            .bind(&org.id)
            .fetch_optional(self.db.pool())
            .await?;
            if already.is_some() {
                continue;
            }
            let key = format!("signup:{}:{}", program.id, address_digest(email));
            match self.signup_grant(&program, org, &key).await? {
                Some(g) if g.org_id == org.id => grants.push((program.name.clone(), g)),
                Some(_) => {
                    tracing::info!(
                        program = program.id,
                        org_id = org.id,
                        "this address had its grant with another organisation"
                    );
                }
                None => {}
            }
        }
        Ok(grants)
    }

    /// A sign-up grant under `key`, or `None` when the program's budget is used up.
    async fn signup_grant(
        &self,
        program: &Program,
        org: &Org,
        key: &str,
    ) -> Result<Option<Grant>, CreditsError> {
        match self.grant(program, org, None, "sign-up", key).await {
            Ok(g) => Ok(Some(g)),
            Err(CreditsError::BudgetExhausted) => {
                tracing::info!(
                    program = program.id,
                    "program budget used up; no sign-up grant"
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// What a program's budget went to, newest first: each grant with its organisation.
    pub async fn program_grants(
        &self,
        program_id: &str,
        limit: i64,
    ) -> Result<Vec<GrantLine>, CreditsError> {
        let rows = db::sqlx::query(
            "SELECT g.org_id, o.name AS org_name, g.amount, g.reason, g.created_at, g.expires_at \
             FROM credit_grants g LEFT JOIN organizations o ON o.id = g.org_id \
             WHERE g.program_id = $1 ORDER BY g.created_at DESC, g.id DESC LIMIT $2",
        )
        .bind(program_id)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(GrantLine {
                    org_id: r.try_get("org_id")?,
                    org_name: r
                        .try_get::<Option<String>, _>("org_name")?
                        .unwrap_or_default(),
                    amount: Nanos::new(r.try_get("amount")?),
                    reason: r.try_get("reason")?,
                    created_at: r.try_get("created_at")?,
                    expires_at: r.try_get("expires_at")?,
                })
            })
            .collect::<Result<_, db::sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Credits paid money to an organisation's wallet (a completed payment), once per `key`.
    pub async fn credit_paid(
        &self,
        org_id: &str,
        amount: Nanos,
        key: &str,
        memo: &str,
    ) -> Result<Posted, CreditsError> {
        let paid = self
            .open(
                &paid_code(org_id),
                Some(org_id),
                AccountKind::WalletPaid,
                None,
            )
            .await?;
        let clearing = self
            .open(PAYMENTS_ACCOUNT, None, AccountKind::External, None)
            .await?;
        let posting = Posting::transfer(
            key,
            "top_up",
            memo,
            Some(org_id.to_string()),
            &clearing,
            &paid,
            amount,
        )?;
        Ok(self.ledger.post(&posting).await?)
    }

    /// The organisation's buckets in burn order: unexpired grants soonest-expiring first,
    /// then paid. A grant's bucket opened for a grant that did not go through (its program ran
    /// out) holds nothing and is not shown.
    pub async fn wallet(&self, org_id: &str, now: i64) -> Result<Wallet, CreditsError> {
        let rows = db::sqlx::query(
            "SELECT a.id, a.kind, a.balance, r.reserved - a.released AS held, a.expires_at, \
             p.name AS program FROM ledger_accounts a \
             JOIN ledger_account_reserves r ON r.account_id = a.id \
             LEFT JOIN credit_grants g ON g.account_id = a.id \
             LEFT JOIN credit_programs p ON p.id = g.program_id \
             WHERE a.org_id = $1 AND a.kind IN ('wallet_grant', 'wallet_paid') \
             AND (a.expires_at IS NULL OR a.expires_at > $2) \
             AND (a.kind = 'wallet_paid' OR g.id IS NOT NULL) \
             ORDER BY CASE a.kind WHEN 'wallet_grant' THEN 0 ELSE 1 END, \
             CASE WHEN a.expires_at IS NULL THEN 1 ELSE 0 END, a.expires_at, a.id",
        )
        .bind(org_id)
        .bind(now)
        .fetch_all(self.db.pool())
        .await?;
        let buckets = rows
            .iter()
            .map(|r| {
                let kind: String = r.try_get("kind")?;
                let program: Option<String> = r.try_get("program")?;
                Ok(Bucket {
                    account_id: r.try_get("id")?,
                    label: if kind == "wallet_paid" {
                        "Paid credit".to_string()
                    } else {
                        program.unwrap_or_else(|| "Granted credit".to_string())
                    },
                    balance: Nanos::new(r.try_get("balance")?),
                    held: Nanos::new(r.try_get("held")?),
                    expires_at: r.try_get("expires_at")?,
                })
            })
            .collect::<Result<_, db::sqlx::Error>>()?;
        Ok(Wallet { buckets })
    }

    /// What each of the wallet's accounts has available (balance − held), in burn order (the
    /// [`Credits::wallet`] order), read through `tx` (see [`db::MeterTx`]: inside its
    /// transaction on SQLite, just before its writes on PostgreSQL): what
    /// `Ledger::reserve_read` draws on, in one query.
    pub async fn sources_in(
        &self,
        tx: &mut db::MeterTx,
        org_id: &str,
        now: i64,
    ) -> Result<Vec<(String, i64)>, CreditsError> {
        let (sql, values) = self.sources_read(org_id, now);
        sources_from(&tx.fetch_all(&sql, values).await?)
    }

    /// The read of [`Credits::sources_in`] (with its `$N` values), for a caller that sends it
    /// with reads of its own ([`db::MeterTx::fetch_each`]); [`sources_from`] reads its rows.
    /// Nothing is locked: on SQLite the metering transaction holds the write lock, and on
    /// PostgreSQL each reservation checks again, as it is written, that the account still
    /// has the funds.
    pub fn sources_read(&self, org_id: &str, now: i64) -> (String, Vec<db::Value>) {
        (
            format!(
                "SELECT a.id, a.kind, a.expires_at, {AVAILABLE} AS available {SOURCES} ORDER BY a.id"
            ),
            vec![org_id.into(), now.into()],
        )
    }

    /// A condition (with its `$N` values) that holds while a hold planned from `sources` (an
    /// earlier [`Credits::sources_read`] of `org_id`'s wallet, in burn order) taking all of its
    /// amount from the account `from` is the plan a read now would give: the wallet has
    /// exactly those accounts, and none that burns before `from` has anything available.
    /// That `from` has the funds its reservation checks itself. For a caller that plans from
    /// what it read before instead of reading again, and makes its writes depend on this.
    pub fn plan_still_holds(
        &self,
        org_id: &str,
        now: i64,
        sources: &[(String, i64)],
        from: &str,
    ) -> (String, Vec<db::Value>) {
        let mut values: Vec<db::Value> = vec![org_id.into(), now.into()];
        let mut list = |ids: &mut dyn Iterator<Item = &String>| {
            let mut placeholders = Vec::new();
            for id in ids {
                values.push(id.into());
                placeholders.push(format!("${}", values.len()));
            }
            placeholders.join(", ")
        };
        let all = list(&mut sources.iter().map(|(id, _)| id));
        let earlier = list(
            &mut sources
                .iter()
                .map(|(id, _)| id)
                .take_while(|id| id.as_str() != from),
        );
        let n = sources.len() as i64;
        values.push(n.into());
        let n = values.len();
        let earlier_funded = if earlier.is_empty() {
            "0".to_string()
        } else {
            format!("CASE WHEN a.id IN ({earlier}) AND {AVAILABLE} > 0 THEN 1 ELSE 0 END")
        };
        (
            format!(
                "(SELECT count(*) = ${n} AND sum(CASE WHEN a.id IN ({all}) THEN 1 ELSE 0 END) = ${n} \
                 AND sum({earlier_funded}) = 0 {SOURCES})"
            ),
            values,
        )
    }

    /// Account ids to reserve from, in burn order.
    pub async fn sources(&self, org_id: &str, now: i64) -> Result<Vec<String>, CreditsError> {
        Ok(self
            .wallet(org_id, now)
            .await?
            .buckets
            .into_iter()
            .map(|b| b.account_id)
            .collect())
    }

    /// Moves what is left of every lapsed grant out of its wallet through a posted expiry
    /// transaction. Returns how many grants had something to move.
    pub async fn expire_grants(&self, now: i64) -> Result<u64, CreditsError> {
        let expired = self
            .open(EXPIRED_ACCOUNT, None, AccountKind::Expired, None)
            .await?;
        let accounts: Vec<String> = db::sqlx::query(
            "SELECT a.id FROM credit_grants g JOIN ledger_accounts a ON a.id = g.account_id \
             JOIN ledger_account_reserves r ON r.account_id = a.id \
             WHERE a.expires_at <= $1 AND a.balance + a.released - r.reserved > 0",
        )
        .bind(now)
        .fetch_all(self.db.pool())
        .await?
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<Result<_, _>>()?;
        let mut moved = 0;
        for account in accounts {
            if self
                .ledger
                .sweep_expired(&account, &expired, now)
                .await?
                .is_some()
            {
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// The wallet's whole history (of `kind`, if given) as CSV, newest first: one row per
    /// transaction with its net effect on the wallet, amounts in exact decimal dollars. The
    /// `amount_usd` column sums to the net the Credits page shows for the same filter.
    pub async fn history_csv(
        &self,
        org_id: &str,
        kind: Option<&str>,
    ) -> Result<String, CreditsError> {
        let lines = self
            .ledger
            .wallet_history_page(org_id, kind, 0, i64::MAX)
            .await?;
        let mut out = text::Csv::new();
        let row = |out: &mut text::Csv, fields: [&str; 5]| {
            out.row(fields)
                .map_err(|e| CreditsError::Export(e.to_string()))
        };
        row(
            &mut out,
            [
                "date_utc",
                "transaction_id",
                "kind",
                "description",
                "amount_usd",
            ],
        )?;
        for l in lines {
            row(
                &mut out,
                [
                    &iso_utc(l.created_at),
                    &l.transaction_id,
                    &l.kind,
                    &l.memo,
                    &l.amount.decimal(),
                ],
            )?;
        }
        out.finish()
            .map_err(|e| CreditsError::Export(e.to_string()))
    }
}

/// `2026-11-26T19:20:05Z` for a Unix time in milliseconds.
fn iso_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let day = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let date = time::Date::from_julian_day(i32::try_from(day + 2_440_588).unwrap_or(2_440_588))
        .unwrap_or(time::Date::MIN);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        date.year(),
        u8::from(date.month()),
        date.day(),
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The accounts a wallet's holds draw on (for `$1` the org at `$2` now): its paid credit and
/// its live grants.
const SOURCES: &str = "FROM ledger_accounts a JOIN ledger_account_reserves r ON r.account_id = a.id \
     LEFT JOIN credit_grants g ON g.account_id = a.id \
     WHERE a.org_id = $1 AND a.kind IN ('wallet_grant', 'wallet_paid') \
     AND a.may_go_negative = 0 AND (a.expires_at IS NULL OR a.expires_at > $2) \
     AND (a.kind = 'wallet_paid' OR g.id IS NOT NULL)";

/// What an account of [`SOURCES`] has available (balance − held).
const AVAILABLE: &str = "a.balance + a.released - r.reserved";

/// The sources of [`Credits::sources_read`]'s rows: (account, available) in burn order.
pub fn sources_from(rows: &[db::sqlx::any::AnyRow]) -> Result<Vec<(String, i64)>, CreditsError> {
    let mut sources = rows
        .iter()
        .map(|r| {
            let kind: String = r.try_get("kind")?;
            let expires_at: Option<i64> = r.try_get("expires_at")?;
            Ok((
                (kind != "wallet_grant", expires_at.is_none(), expires_at),
                (r.try_get("id")?, r.try_get("available")?),
            ))
        })
        .collect::<Result<Vec<_>, db::sqlx::Error>>()?;
    // Stable: equal keys keep the id order, as the wallet's last sort key has it.
    sources.sort_by_key(|(burn, _)| *burn);
    Ok(sources.into_iter().map(|(_, source)| source).collect())
}
