//! The double-entry ledger: every movement of money is a transaction whose entries sum to
//! zero; balances are sums of entries; nothing is updated in place or deleted; each posting
//! carries an idempotency key and applies at most once; an account that may not go negative
//! never does, checked in the same statement that debits it (and by a database `CHECK`).
//!
//! This crate is the core only: accounts and postings. Wallet buckets, holds and grants are
//! built on it by the credits layer.

mod holds;
mod money;
mod posting;

use db::{
    Db, DbError, new_id, now_ms,
    sqlx::{AnyConnection, Row},
};

pub use holds::{Hold, HoldStatus, Reserved, Settled, ToSettle, Writes};
pub use money::{MoneyError, NANOS_PER_DOLLAR, Nanos};
pub use posting::{Leg, Posting};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("the entries of a transaction must sum to zero")]
    Unbalanced,
    #[error("a transaction needs at least two entries, on different accounts, none zero")]
    MalformedPosting,
    #[error("amounts must be positive")]
    NonPositiveAmount,
    #[error("not enough funds in account {account}")]
    InsufficientFunds { account: String },
    #[error("unknown ledger account {0}")]
    UnknownAccount(String),
    #[error("idempotency key {0} was already used for a different posting")]
    IdempotencyConflict(String),
    #[error("unknown hold {0}")]
    UnknownHold(String),
    #[error("hold key {0} is already used")]
    DuplicateKey(String),
    #[error("this hold was already settled, voided or expired")]
    HoldNotOpen,
    #[error("the amount to settle is negative or more than the hold reserved")]
    SettleExceedsHold,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<db::sqlx::Error> for LedgerError {
    fn from(e: db::sqlx::Error) -> Self {
        LedgerError::Db(DbError::Sqlx(e))
    }
}

/// What an account is for. Only external counterparties (a payment processor's clearing
/// account, a sponsor's funding source) may go negative: they represent money outside the
/// platform. Everything else holds money and stays at or above zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    /// A tenant's paid credit (top-ups).
    WalletPaid,
    /// A tenant's credit from one grant.
    WalletGrant,
    /// A credit-support program's remaining budget.
    ProgramFund,
    /// Money outside the platform (payment clearing, sponsors).
    External,
    /// Earned usage revenue (vendor's or a partner's share).
    Revenue,
    /// Grants that expired unused.
    Expired,
    /// What an organisation owes the platform (a refund its wallet could not cover): below
    /// zero while the debt is open.
    Receivable,
    /// A share of usage revenue owed under closed statements: a partner's (less payouts) or
    /// the vendor's. Below zero when a month's refunds and credits took more than it earned.
    SharePayable,
}

impl AccountKind {
    pub fn code(self) -> &'static str {
        match self {
            AccountKind::WalletPaid => "wallet_paid",
            AccountKind::WalletGrant => "wallet_grant",
            AccountKind::ProgramFund => "program_fund",
            AccountKind::External => "external",
            AccountKind::Revenue => "revenue",
            AccountKind::Expired => "expired",
            AccountKind::Receivable => "receivable",
            AccountKind::SharePayable => "share_payable",
        }
    }

    pub fn may_go_negative(self) -> bool {
        matches!(
            self,
            AccountKind::External | AccountKind::Receivable | AccountKind::SharePayable
        )
    }
}

/// A ledger account to open. `code` is its stable name (e.g. `org:<id>:paid`).
#[derive(Debug, Clone)]
pub struct AccountSpec {
    pub code: String,
    pub org_id: Option<String>,
    pub kind: AccountKind,
    pub expires_at: Option<i64>,
}

/// Read from rows of `ACCOUNT_SELECT` by name.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Account {
    pub id: String,
    pub code: String,
    pub org_id: Option<String>,
    #[sqlx(try_from = "i64")]
    pub balance: Nanos,
    #[sqlx(try_from = "i64")]
    pub held: Nanos,
}

/// One transaction as it touched an organisation's wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryLine {
    pub transaction_id: String,
    pub created_at: i64,
    pub kind: String,
    pub memo: String,
    /// Net change to the organisation's wallet buckets.
    pub amount: Nanos,
}

/// The result of a posting: applied now, or applied earlier under the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    Applied { transaction_id: String },
    Replayed { transaction_id: String },
}

impl Posted {
    pub fn transaction_id(&self) -> &str {
        match self {
            Posted::Applied { transaction_id } | Posted::Replayed { transaction_id } => {
                transaction_id
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Ledger {
    db: Db,
}

/// The entries of an organisation's wallet buckets ($1), of one transaction kind ($2) or all
/// (`NULL`).
const WALLET_MOVES: &str = "FROM ledger_transactions t \
     JOIN ledger_entries e ON e.transaction_id = t.id \
     JOIN ledger_accounts a ON a.id = e.account_id \
     WHERE a.org_id = $1 AND a.kind IN ('wallet_paid', 'wallet_grant') \
     AND (CAST($2 AS TEXT) IS NULL OR t.kind = CAST($2 AS TEXT))";

/// An account with what its open holds reserve (see `ledger_account_reserves`).
const ACCOUNT_SELECT: &str = "SELECT a.id, a.code, a.org_id, a.balance, r.reserved - a.released AS held \
     FROM ledger_accounts a JOIN ledger_account_reserves r ON r.account_id = a.id";

impl Ledger {
    pub fn new(db: Db) -> Ledger {
        Ledger { db }
    }

    /// Opens the account named by `spec.code`, or returns it if it exists.
    pub async fn open_account(&self, spec: &AccountSpec) -> Result<Account, LedgerError> {
        if let Some(account) = self.account_by_code(&spec.code).await? {
            return Ok(account);
        }
        // The account and its reserves row together: every account has both.
        let id = new_id();
        let mut tx = self.db.begin_write().await?;
        let inserted = db::sqlx::query(
            "INSERT INTO ledger_accounts (id, code, org_id, kind, may_go_negative, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(&spec.code)
        .bind(spec.org_id.as_deref())
        .bind(spec.kind.code())
        .bind(i64::from(spec.kind.may_go_negative()))
        .bind(spec.expires_at)
        .bind(now_ms())
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {
                db::sqlx::query("INSERT INTO ledger_account_reserves (account_id) VALUES ($1)")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            // Opened concurrently by someone else: theirs is the account.
            Err(e) if db::is_unique_violation(&e) => drop(tx),
            Err(e) => return Err(e.into()),
        }
        self.account_by_code(&spec.code)
            .await?
            .ok_or_else(|| LedgerError::UnknownAccount(spec.code.clone()))
    }

    pub async fn account_by_code(&self, code: &str) -> Result<Option<Account>, LedgerError> {
        Ok(
            db::sqlx::query_as::<_, Account>(&format!("{ACCOUNT_SELECT} WHERE a.code = $1"))
                .bind(code)
                .fetch_optional(self.db.pool())
                .await?,
        )
    }

    /// Applies a balanced posting at most once. A repeat with the same key and the same legs
    /// returns the first transaction; the same key with different legs is refused.
    pub async fn post(&self, posting: &Posting) -> Result<Posted, LedgerError> {
        let mut tx = self.db.begin_write().await?;
        if let Some(existing) = replay_of(&mut tx, posting).await? {
            return Ok(existing);
        }
        let transaction_id = new_id();
        match insert_transaction(&mut tx, &transaction_id, posting).await {
            Ok(_) => {}
            Err(e) if db::is_unique_violation(&e) => {
                // A concurrent posting with this key committed first (PostgreSQL waits on the
                // unique index for it). Answer as a replay of that one.
                drop(tx);
                let mut tx = self.db.begin_write().await?;
                return replay_of(&mut tx, posting)
                    .await?
                    .ok_or_else(|| LedgerError::IdempotencyConflict(posting.key().to_string()));
            }
            Err(e) => return Err(e.into()),
        }
        apply_legs(&mut tx, &transaction_id, posting.legs()).await?;
        tx.commit().await?;
        Ok(Posted::Applied { transaction_id })
    }

    /// Applies a posting inside the caller's transaction, so that it commits together with the
    /// caller's own rows (a payment event's id, for example). A replay under the same key is
    /// answered as on [`Ledger::post`]. Nothing is committed here; on an error the caller rolls
    /// back.
    pub async fn post_in(
        &self,
        conn: &mut AnyConnection,
        posting: &Posting,
    ) -> Result<Posted, LedgerError> {
        if let Some(existing) = replay_of(conn, posting).await? {
            return Ok(existing);
        }
        let transaction_id = new_id();
        insert_transaction(conn, &transaction_id, posting).await?;
        apply_legs(conn, &transaction_id, posting.legs()).await?;
        Ok(Posted::Applied { transaction_id })
    }

    /// An account's current balance and what open holds reserve of it, read in the caller's
    /// transaction. On PostgreSQL the account's reserves row is locked, so that nothing lowers
    /// what is available until the transaction ends (a settlement may still raise it).
    pub async fn balance_in(
        &self,
        conn: &mut AnyConnection,
        account_id: &str,
    ) -> Result<(Nanos, Nanos), LedgerError> {
        let row = db::sqlx::query(&format!(
            "SELECT a.balance, r.reserved - a.released AS held FROM ledger_account_reserves r \
             JOIN ledger_accounts a ON a.id = r.account_id WHERE r.account_id = $1{}",
            self.db.lock_rows_of("r")
        ))
        .bind(account_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| LedgerError::UnknownAccount(account_id.to_string()))?;
        Ok((
            Nanos::new(row.try_get("balance")?),
            Nanos::new(row.try_get("held")?),
        ))
    }

    /// The latest `limit` transactions that moved money in or out of an organisation's wallet,
    /// newest first, each with its net effect on the wallet.
    pub async fn wallet_history(
        &self,
        org_id: &str,
        limit: i64,
    ) -> Result<Vec<HistoryLine>, LedgerError> {
        self.wallet_history_page(org_id, None, 0, limit).await
    }

    /// One page of the wallet's history, newest first, optionally only transactions of `kind`.
    pub async fn wallet_history_page(
        &self,
        org_id: &str,
        kind: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<HistoryLine>, LedgerError> {
        let rows = db::sqlx::query(&format!(
            "SELECT t.id, t.created_at, t.kind, t.memo, CAST(SUM(e.amount) AS BIGINT) AS net \
             {WALLET_MOVES} GROUP BY t.id, t.created_at, t.kind, t.memo \
             ORDER BY t.created_at DESC, t.id DESC LIMIT $3 OFFSET $4"
        ))
        .bind(org_id)
        .bind(kind)
        .bind(limit)
        .bind(offset)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(HistoryLine {
                    transaction_id: r.try_get("id")?,
                    created_at: r.try_get("created_at")?,
                    kind: r.try_get("kind")?,
                    memo: r.try_get("memo")?,
                    amount: Nanos::new(r.try_get("net")?),
                })
            })
            .collect()
    }

    /// How many transactions the wallet's history has (of `kind`, if given), and their net sum.
    pub async fn wallet_history_total(
        &self,
        org_id: &str,
        kind: Option<&str>,
    ) -> Result<(i64, Nanos), LedgerError> {
        let row = db::sqlx::query(&format!(
            "SELECT COUNT(DISTINCT t.id) AS n, CAST(COALESCE(SUM(e.amount), 0) AS BIGINT) AS net \
             {WALLET_MOVES}"
        ))
        .bind(org_id)
        .bind(kind)
        .fetch_one(self.db.pool())
        .await?;
        Ok((row.try_get("n")?, Nanos::new(row.try_get("net")?)))
    }

    /// The organisation's open holds, newest first: (hold id, amount, created, expires).
    pub async fn open_holds(
        &self,
        org_id: &str,
    ) -> Result<Vec<(String, Nanos, i64, i64)>, LedgerError> {
        let rows = db::sqlx::query(
            "SELECT id, amount, created_at, expires_at FROM ledger_holds \
             WHERE org_id = $1 AND status = 'open' ORDER BY created_at DESC, id DESC",
        )
        .bind(org_id)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    Nanos::new(r.try_get("amount")?),
                    r.try_get("created_at")?,
                    r.try_get("expires_at")?,
                ))
            })
            .collect()
    }

    /// Checks the ledger's invariants over all rows: every transaction sums to zero, every
    /// cached balance equals the sum of its entries, what every account holds equals what its
    /// open holds reserve there, and no account that may not go negative is below zero.
    /// Returns the first violation found.
    pub async fn verify(&self) -> Result<Result<(), String>, LedgerError> {
        let unbalanced = db::sqlx::query(
            "SELECT transaction_id FROM ledger_entries GROUP BY transaction_id HAVING SUM(amount) <> 0",
        )
        .fetch_optional(self.db.pool())
        .await?;
        if let Some(row) = unbalanced {
            let id: String = row.try_get("transaction_id")?;
            return Ok(Err(format!("transaction {id} does not sum to zero")));
        }
        let drift = db::sqlx::query(
            "SELECT a.code FROM ledger_accounts a \
             WHERE a.balance <> COALESCE((SELECT SUM(e.amount) FROM ledger_entries e WHERE e.account_id = a.id), 0)",
        )
        .fetch_optional(self.db.pool())
        .await?;
        if let Some(row) = drift {
            let code: String = row.try_get("code")?;
            return Ok(Err(format!(
                "account {code}: balance differs from its entries"
            )));
        }
        let held = db::sqlx::query(
            "SELECT a.code FROM ledger_accounts a JOIN ledger_account_reserves r ON r.account_id = a.id \
             WHERE r.reserved - a.released <> COALESCE((SELECT SUM(p.amount) FROM ledger_hold_parts p \
             JOIN ledger_holds h ON h.id = p.hold_id WHERE p.account_id = a.id AND h.status = 'open'), 0)",
        )
        .fetch_optional(self.db.pool())
        .await?;
        if let Some(row) = held {
            let code: String = row.try_get("code")?;
            return Ok(Err(format!(
                "account {code}: what it holds differs from its open holds"
            )));
        }
        let negative = db::sqlx::query(
            "SELECT a.code FROM ledger_accounts a JOIN ledger_account_reserves r ON r.account_id = a.id \
             WHERE a.may_go_negative = 0 AND a.balance - (r.reserved - a.released) < 0",
        )
        .fetch_optional(self.db.pool())
        .await?;
        if let Some(row) = negative {
            let code: String = row.try_get("code")?;
            return Ok(Err(format!("account {code} is below zero")));
        }
        Ok(Ok(()))
    }
}

async fn insert_transaction(
    conn: &mut AnyConnection,
    transaction_id: &str,
    posting: &Posting,
) -> Result<(), db::sqlx::Error> {
    db::sqlx::query(
        "INSERT INTO ledger_transactions (id, idempotency_key, kind, memo, org_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(transaction_id)
    .bind(posting.key())
    .bind(posting.kind())
    .bind(posting.memo())
    .bind(posting.org_id())
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes a transaction's entries and moves the balances, refusing any debit that would take
/// an account that may not go negative below zero (what it holds for open holds counts as
/// spoken for).
async fn apply_legs(
    tx: &mut AnyConnection,
    transaction_id: &str,
    legs: &[Leg],
) -> Result<(), LedgerError> {
    let transaction_id = transaction_id.to_string();
    // Legs are sorted by account id, so concurrent postings lock rows in one order (for each
    // account its reserves row first, as reservations lock only that one).
    for leg in legs {
        let moved = if leg.amount < 0 {
            debit(tx, &leg.account_id, leg.amount).await?
        } else {
            db::sqlx::query("UPDATE ledger_accounts SET balance = balance + $1 WHERE id = $2")
                .bind(leg.amount)
                .bind(&leg.account_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1
        };
        if !moved {
            let exists = db::sqlx::query("SELECT 1 AS one FROM ledger_accounts WHERE id = $1")
                .bind(&leg.account_id)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            return Err(if exists {
                LedgerError::InsufficientFunds {
                    account: leg.account_id.clone(),
                }
            } else {
                LedgerError::UnknownAccount(leg.account_id.clone())
            });
        }
        db::sqlx::query(
            "INSERT INTO ledger_entries (transaction_id, account_id, amount) VALUES ($1, $2, $3)",
        )
        .bind(&transaction_id)
        .bind(&leg.account_id)
        .bind(leg.amount)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Takes `amount` (negative) off an account: reserved and released at once, so that a
/// reservation running beside it sees the debit on the reserves row it waits for (it may read
/// the account row as it was before; see the `ledger_account_reserves` migration). Whether it
/// was taken: not when the account may not go negative and lacks the funds.
async fn debit(tx: &mut AnyConnection, account_id: &str, amount: i64) -> Result<bool, LedgerError> {
    let reserved = db::sqlx::query(
        "UPDATE ledger_account_reserves SET reserved = reserved - $1 WHERE account_id = $2",
    )
    .bind(amount)
    .bind(account_id)
    .execute(&mut *tx)
    .await?;
    if reserved.rows_affected() != 1 {
        return Ok(false);
    }
    // The reserves row is this transaction's now, so the check reads it exactly: with the
    // debit reserved, the account has enough when balance + released still covers it.
    let taken = db::sqlx::query(
        "UPDATE ledger_accounts SET balance = balance + $1, released = released - $1 \
         WHERE id = $2 AND (may_go_negative = 1 OR balance + released \
         - (SELECT reserved FROM ledger_account_reserves WHERE account_id = $2) >= 0)",
    )
    .bind(amount)
    .bind(account_id)
    .execute(&mut *tx)
    .await?;
    Ok(taken.rows_affected() == 1)
}

/// The transaction already posted under this posting's key, if any; an error if that
/// transaction moved different amounts.
async fn replay_of(
    conn: &mut AnyConnection,
    posting: &Posting,
) -> Result<Option<Posted>, LedgerError> {
    let Some(row) =
        db::sqlx::query("SELECT id FROM ledger_transactions WHERE idempotency_key = $1")
            .bind(posting.key())
            .fetch_optional(&mut *conn)
            .await?
    else {
        return Ok(None);
    };
    let transaction_id: String = row.try_get("id")?;
    let rows = db::sqlx::query(
        "SELECT account_id, amount FROM ledger_entries WHERE transaction_id = $1 ORDER BY account_id",
    )
    .bind(&transaction_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut stored = Vec::with_capacity(rows.len());
    for r in &rows {
        stored.push(Leg {
            account_id: r.try_get("account_id")?,
            amount: r.try_get("amount")?,
        });
    }
    if stored != posting.legs() {
        return Err(LedgerError::IdempotencyConflict(posting.key().to_string()));
    }
    Ok(Some(Posted::Replayed { transaction_id }))
}
