//! Holds (RELIABILITY M5): reserve the maximum cost before work runs, spread over the given
//! accounts in burn order; settle the actual cost (the rest is released); void on failure;
//! expire by TTL so a crash never leaves money stuck. A hold resolves exactly once.

use db::{
    BatchError, Column, Rows, Value, new_id, now_ms,
    sqlx::{AnyConnection, Row},
};

use crate::{Ledger, LedgerError, Leg, Nanos, Posted, Posting, apply_legs, insert_transaction};

/// Writes queued for one transaction (sent in one round trip where the backend allows, see
/// `db::Batch`); a write that finds the ledger other than the reads before it did (a hold no
/// longer open, an account without the funds) reports the ledger's error.
pub type Writes = db::Batch<LedgerError>;

impl From<BatchError<LedgerError>> for LedgerError {
    fn from(e: BatchError<LedgerError>) -> LedgerError {
        match e {
            BatchError::Refused { refusal, .. } => refusal,
            BatchError::Db(e) => e.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldStatus {
    Open,
    Settled,
    Voided,
    Expired,
}

impl HoldStatus {
    fn code(self) -> &'static str {
        match self {
            HoldStatus::Open => "open",
            HoldStatus::Settled => "settled",
            HoldStatus::Voided => "voided",
            HoldStatus::Expired => "expired",
        }
    }

    fn from_code(code: &str) -> Option<HoldStatus> {
        [
            HoldStatus::Open,
            HoldStatus::Settled,
            HoldStatus::Voided,
            HoldStatus::Expired,
        ]
        .into_iter()
        .find(|s| s.code() == code)
    }
}

/// What settling a hold charged: the posting (none for a zero charge) and the amount drawn
/// from each account, in burn order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub transaction_id: Option<String>,
    pub drawn: Vec<(String, i64)>,
}

/// One hold to settle in [`Ledger::settle_many_into`]: `actual` of it charged to `to`.
#[derive(Debug, Clone, Copy)]
pub struct ToSettle<'a> {
    pub hold: &'a Reserved,
    pub actual: Nanos,
    pub to: &'a str,
    pub memo: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub id: String,
    pub amount: Nanos,
    pub status: HoldStatus,
    pub expires_at: i64,
    /// (account id, amount reserved there), in burn order.
    pub parts: Vec<(String, i64)>,
    pub settled_amount: Option<Nanos>,
}

/// An open hold as its reservation made it: what settling it needs, so that settling does not
/// read it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    pub id: String,
    pub amount: Nanos,
    /// (account id, amount reserved there), in burn order.
    pub parts: Vec<(String, i64)>,
}

impl From<Hold> for Reserved {
    fn from(h: Hold) -> Reserved {
        Reserved {
            id: h.id,
            amount: h.amount,
            parts: h.parts,
        }
    }
}

async fn load_hold(
    conn: &mut AnyConnection,
    filter: &str,
    value: &str,
    lock: &str,
) -> Result<Option<Hold>, LedgerError> {
    let Some(row) = db::sqlx::query(&format!(
        "SELECT id, amount, status, expires_at, settled_amount FROM ledger_holds WHERE {filter} = $1{lock}"
    ))
    .bind(value)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let id: String = row.try_get("id")?;
    let status: String = row.try_get("status")?;
    let parts = db::sqlx::query(
        "SELECT account_id, amount FROM ledger_hold_parts WHERE hold_id = $1 ORDER BY position",
    )
    .bind(&id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| Ok((r.try_get("account_id")?, r.try_get("amount")?)))
    .collect::<Result<Vec<(String, i64)>, db::sqlx::Error>>()?;
    Ok(Some(Hold {
        id,
        amount: Nanos::new(row.try_get("amount")?),
        status: HoldStatus::from_code(&status)
            .ok_or_else(|| LedgerError::UnknownHold(format!("status {status}")))?,
        expires_at: row.try_get("expires_at")?,
        parts,
        settled_amount: row
            .try_get::<Option<i64>, _>("settled_amount")?
            .map(Nanos::new),
    }))
}

impl Ledger {
    pub async fn hold(&self, id: &str) -> Result<Option<Hold>, LedgerError> {
        let mut conn = self.db.pool().acquire().await?;
        load_hold(&mut conn, "id", id, "").await
    }

    /// Reserves `amount` over `sources` (account ids in burn order: the first is drawn on
    /// first), for `ttl_ms`. All or nothing: when the sources cannot cover the amount together,
    /// nothing is reserved. Idempotent by `key`.
    pub async fn reserve(
        &self,
        key: &str,
        org_id: Option<&str>,
        sources: &[String],
        amount: Nanos,
        ttl_ms: i64,
    ) -> Result<Hold, LedgerError> {
        if amount.get() <= 0 {
            return Err(LedgerError::NonPositiveAmount);
        }
        let mut tx = self.db.begin_write().await?;
        if let Some(existing) = load_hold(&mut tx, "idempotency_key", key, "").await? {
            return Ok(existing);
        }
        let available = self.available(&mut tx, sources).await?;
        let mut writes = self.db.batch();
        let reserved = self.reserve_read(&mut writes, key, org_id, &available, amount, ttl_ms)?;
        match writes.run(&mut tx).await {
            Ok(_) => commit_with(tx, &reserved.id).await,
            // Reserved under this key meanwhile: a replay.
            Err(BatchError::Db(e)) if db::is_unique_violation(&e) => {
                drop(tx);
                let mut conn = self.db.pool().acquire().await?;
                load_hold(&mut conn, "idempotency_key", key, "")
                    .await?
                    .ok_or_else(|| LedgerError::UnknownHold(key.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// [`Ledger::reserve`] inside the caller's transaction, for a caller that has read what
    /// each source has available (balance − held), in burn order: spares the ledger reading
    /// it again. An account that may go negative or has expired must not be among them.
    /// Takes `amount` from the sources in that order into a new open hold, queued on
    /// `writes`, which the caller runs with what the hold pays for, so that both are recorded
    /// or neither. Each account's reservation checks, when it runs, that the account still
    /// has the funds and has not expired (the read may be older than the writes: see
    /// `db::MeterTx`); when one does not, the writes fail with `InsufficientFunds`. `key` must
    /// be new: a key used before makes the writes fail (a unique violation), it is not a
    /// replay.
    pub fn reserve_read(
        &self,
        writes: &mut Writes,
        key: &str,
        org_id: Option<&str>,
        available: &[(String, i64)],
        amount: Nanos,
        ttl_ms: i64,
    ) -> Result<Reserved, LedgerError> {
        if amount.get() <= 0 {
            return Err(LedgerError::NonPositiveAmount);
        }
        let now = now_ms();
        let mut remaining = amount.get();
        let mut parts: Vec<(String, i64)> = Vec::new();
        for (source, has) in available {
            let take = (*has).min(remaining);
            if take > 0 && !parts.iter().any(|(id, _)| id == source) {
                parts.push((source.clone(), take));
                remaining -= take;
            }
            if remaining == 0 {
                break;
            }
        }
        if remaining > 0 {
            return Err(LedgerError::InsufficientFunds {
                account: available
                    .first()
                    .map(|(a, _)| a.clone())
                    .unwrap_or_default(),
            });
        }
        let hold_id = new_id();
        writes.push(
            "INSERT INTO ledger_holds (id, idempotency_key, org_id, amount, status, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, 'open', $5, $6)",
            vec![
                hold_id.as_str().into(),
                key.into(),
                org_id.into(),
                amount.get().into(),
                (now + ttl_ms).into(),
                now.into(),
            ],
        );
        // The reservations in account id order, the order every posting locks accounts in
        // (PostgreSQL): in burn order a hold could take a grant's reserves row and then wait
        // for paid credit's while a refund holds paid credit's and waits for the grant's, a
        // deadlock. The parts keep their burn order.
        //
        // Each updates only the account's reserves row, never the account row that
        // settlements update, and checks the funds as it writes: against the latest reserves
        // row (PostgreSQL waits for another reservation and checks again) and an account row
        // that may be older, which only ever errs on the safe side (see the migration that
        // made `ledger_account_reserves`).
        let mut by_id: Vec<&(String, i64)> = parts.iter().collect();
        by_id.sort_by(|a, b| a.0.cmp(&b.0));
        for (account, part) in by_id {
            writes.push_expecting(
                "UPDATE ledger_account_reserves SET reserved = reserved + $1 WHERE account_id = $2 \
                 AND (SELECT balance + released FROM ledger_accounts WHERE id = $2 \
                 AND (expires_at IS NULL OR expires_at > $3)) - reserved >= $1",
                vec![(*part).into(), account.into(), now.into()],
                1,
                LedgerError::InsufficientFunds {
                    account: account.clone(),
                },
            );
        }
        let mut rows = Rows::new(&[
            ("hold_id", Column::Text),
            ("account_id", Column::Text),
            ("position", Column::Int),
            ("amount", Column::Int),
        ]);
        for (position, (account, part)) in parts.iter().enumerate() {
            rows.push([
                hold_id.as_str().into(),
                account.into(),
                (position as i64).into(),
                (*part).into(),
            ]);
        }
        writes.insert_rows("ledger_hold_parts", rows);
        Ok(Reserved {
            id: hold_id,
            amount,
            parts,
        })
    }

    /// What each of `sources` has available (balance − held), in their order, read with their
    /// reserves rows locked (PostgreSQL) in id order; an expired account, one that may go
    /// negative or an unknown one has nothing.
    async fn available(
        &self,
        tx: &mut AnyConnection,
        sources: &[String],
    ) -> Result<Vec<(String, i64)>, LedgerError> {
        let now = now_ms();
        // Lock the sources (PostgreSQL) in id order, then draw on them in burn order.
        let placeholders: Vec<String> = (0..sources.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT a.id, a.balance + a.released - r.reserved AS available \
             FROM ledger_account_reserves r JOIN ledger_accounts a ON a.id = r.account_id \
             WHERE a.may_go_negative = 0 AND (a.expires_at IS NULL OR a.expires_at > $1) \
             AND r.account_id IN ({}) ORDER BY r.account_id{}",
            if placeholders.is_empty() {
                "NULL".to_string()
            } else {
                placeholders.join(", ")
            },
            self.db.lock_rows_of("r")
        );
        let mut query = db::sqlx::query(&sql).bind(now);
        for s in sources {
            query = query.bind(s);
        }
        let mut read = std::collections::HashMap::new();
        for row in query.fetch_all(&mut *tx).await? {
            read.insert(
                row.try_get::<String, _>("id")?,
                row.try_get::<i64, _>("available")?,
            );
        }
        Ok(sources
            .iter()
            .map(|s| (s.clone(), read.get(s).copied().unwrap_or(0)))
            .collect())
    }

    /// Charges `actual` (at most the reserved amount; zero when nothing was delivered) from the
    /// hold's accounts in burn order to `to`, and releases the rest.
    pub async fn settle(
        &self,
        hold_id: &str,
        actual: Nanos,
        to: &str,
        memo: &str,
    ) -> Result<Hold, LedgerError> {
        let mut tx = self.db.begin_write().await?;
        let hold = self.open_hold(&mut tx, hold_id).await?;
        let mut writes = self.db.batch();
        self.settle_into(&mut writes, &hold.into(), actual, to, memo)?;
        writes.run(&mut tx).await?;
        commit_with(tx, hold_id).await
    }

    /// [`Ledger::settle`] queued on `writes`, for the caller to run in its write transaction
    /// with what the charge pays for (a usage event), so that both are recorded or neither.
    /// Nothing is read: the hold is as `hold` says, and the writes fail (`HoldNotOpen`) if it
    /// was resolved meanwhile. Says which accounts pay what.
    pub fn settle_into(
        &self,
        writes: &mut Writes,
        hold: &Reserved,
        actual: Nanos,
        to: &str,
        memo: &str,
    ) -> Result<Settled, LedgerError> {
        let one = ToSettle {
            hold,
            actual,
            to,
            memo,
        };
        let mut settled = self.settle_many_into(writes, std::slice::from_ref(&one))?;
        Ok(settled.pop().unwrap_or(Settled {
            transaction_id: None,
            drawn: Vec::new(),
        }))
    }

    /// Several holds settled as [`Ledger::settle_into`] settles one, in one set of writes that
    /// stand or fall together: a transaction and its entries for each charge, each hold
    /// marked settled, but each account's row updated once for all of them (what they release
    /// and draw there added up). Every hold charges its own transaction, so statements and
    /// balances read the same as when each was settled alone; the account rows, which every
    /// settlement of a tenant (its wallet) or of a factory (its revenue) updates, take one
    /// new version per batch instead of one per job, and on PostgreSQL a batch can be one
    /// statement, which may change a row only once. The [`Settled`]s are in `items`' order.
    pub fn settle_many_into(
        &self,
        writes: &mut Writes,
        items: &[ToSettle<'_>],
    ) -> Result<Vec<Settled>, LedgerError> {
        let now = now_ms();
        // Per account: what the holds release there and what they draw (a negative draw is
        // money coming in, to a revenue account).
        let mut moves: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
        let mut postings = Vec::new();
        let mut settled = Vec::with_capacity(items.len());
        for item in items {
            let (hold, actual) = (item.hold, item.actual);
            if actual.get() < 0 || actual > hold.amount {
                return Err(LedgerError::SettleExceedsHold);
            }
            let mut remaining = actual.get();
            let mut drawn = Vec::new();
            for (account, part) in &hold.parts {
                let take = (*part).min(remaining);
                remaining -= take;
                let m = moves.entry(account.clone()).or_default();
                m.0 += part;
                m.1 += take;
                if take > 0 {
                    drawn.push((account.clone(), take));
                }
            }
            let posting = if actual.get() > 0 {
                let mut legs = vec![Leg {
                    account_id: item.to.to_string(),
                    amount: actual.get(),
                }];
                legs.extend(drawn.iter().map(|(account, take)| Leg {
                    account_id: account.clone(),
                    amount: -take,
                }));
                moves.entry(item.to.to_string()).or_default().1 -= actual.get();
                let posting = Posting::new(
                    format!("hold:{}:settle", hold.id),
                    "usage",
                    item.memo,
                    None,
                    legs,
                )?;
                Some((new_id(), posting))
            } else {
                None
            };
            settled.push(Settled {
                transaction_id: posting.as_ref().map(|(id, _)| id.clone()),
                drawn,
            });
            postings.push(posting);
        }
        // The transactions first: the holds and the entries refer to them.
        let charged: Vec<(&str, &Posting)> = postings
            .iter()
            .flatten()
            .map(|(id, p)| (id.as_str(), p))
            .collect();
        queue_transactions(writes, &charged, now);
        // One statement per hold, found by its key. One statement over all of them (their
        // rows joined to the table) would keep one text for any number, but PostgreSQL plans
        // such a join from the table's size when the connection first meets it: planned on
        // a small table, a connection kept scanning the whole table on every settlement.
        for (item, posting) in items.iter().zip(&postings) {
            writes.push_expecting(
                "UPDATE ledger_holds SET status = 'settled', resolved_at = $1, settled_amount = $2, \
                 settle_transaction_id = $3 WHERE id = $4 AND status = 'open'",
                vec![
                    now.into(),
                    item.actual.get().into(),
                    posting.as_ref().map(|(id, _)| id.as_str()).into(),
                    item.hold.id.as_str().into(),
                ],
                1,
                LedgerError::HoldNotOpen,
            );
        }
        // Accounts in id order, as postings lock them (PostgreSQL): no two writers wait on
        // each other. Releasing and drawing are one statement per account, on the account row
        // only: the holds' reservations cover the draws, so what the account has available can
        // only grow, and no reservation waits for it. The guard is the ledger's own check that
        // it did not fall below what its other holds reserve; the draws only ever lower the
        // balance, so checking their sum checks each of them.
        let receiving: std::collections::HashSet<&str> = items.iter().map(|i| i.to).collect();
        for (account, (release, take)) in moves {
            let refusal = if receiving.contains(account.as_str()) {
                LedgerError::UnknownAccount(account.clone())
            } else {
                LedgerError::InsufficientFunds {
                    account: account.clone(),
                }
            };
            writes.push_expecting(
                "UPDATE ledger_accounts SET released = released + $1, balance = balance - $2 \
                 WHERE id = $3 AND (may_go_negative = 1 OR balance - $2 >= 0)",
                vec![release.into(), take.into(), account.into()],
                1,
                refusal,
            );
        }
        queue_entries_of(writes, &charged);
        Ok(settled)
    }

    /// Releases a hold without charging (the work failed before producing anything).
    pub async fn void(&self, hold_id: &str) -> Result<Hold, LedgerError> {
        self.resolve_without_charge(hold_id, HoldStatus::Voided)
            .await
    }

    /// Releases every open hold whose TTL has passed by `now`. Returns how many.
    pub async fn expire_holds(&self, now: i64) -> Result<u64, LedgerError> {
        let ids: Vec<String> = db::sqlx::query(
            "SELECT id FROM ledger_holds WHERE status = 'open' AND expires_at <= $1",
        )
        .bind(now)
        .fetch_all(self.db.pool())
        .await?
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<Result<_, _>>()?;
        let mut expired = 0;
        for id in ids {
            match self.resolve_without_charge(&id, HoldStatus::Expired).await {
                Ok(_) => expired += 1,
                // Settled or voided meanwhile: nothing to do.
                Err(LedgerError::HoldNotOpen) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(expired)
    }

    async fn resolve_without_charge(
        &self,
        hold_id: &str,
        status: HoldStatus,
    ) -> Result<Hold, LedgerError> {
        let mut tx = self.db.begin_write().await?;
        let hold = self.open_hold(&mut tx, hold_id).await?;
        release(&mut tx, &hold).await?;
        db::sqlx::query(
            "UPDATE ledger_holds SET status = $1, resolved_at = $2 WHERE id = $3 AND status = 'open'",
        )
        .bind(status.code())
        .bind(now_ms())
        .bind(hold_id)
        .execute(&mut *tx)
        .await?;
        commit_with(tx, hold_id).await
    }

    /// The hold, locked for this transaction, if it is still open.
    async fn open_hold(&self, tx: &mut AnyConnection, hold_id: &str) -> Result<Hold, LedgerError> {
        let hold = load_hold(tx, "id", hold_id, self.db.lock_rows())
            .await?
            .ok_or_else(|| LedgerError::UnknownHold(hold_id.to_string()))?;
        if hold.status != HoldStatus::Open {
            return Err(LedgerError::HoldNotOpen);
        }
        Ok(hold)
    }

    /// Moves what is left on an expired account (a lapsed grant) to `to`, through a posted
    /// transaction. Money reserved by open holds stays until they resolve; a later sweep takes
    /// what they release. Returns the posting, or `None` when there was nothing to move.
    pub async fn sweep_expired(
        &self,
        account_id: &str,
        to: &str,
        now: i64,
    ) -> Result<Option<Posted>, LedgerError> {
        let mut tx = self.db.begin_write().await?;
        // The reserves row locked (PostgreSQL): nothing lowers what is available meanwhile.
        let Some(row) = db::sqlx::query(&format!(
            "SELECT a.balance + a.released - r.reserved AS available, a.expires_at \
             FROM ledger_account_reserves r JOIN ledger_accounts a ON a.id = r.account_id \
             WHERE r.account_id = $1{}",
            self.db.lock_rows_of("r")
        ))
        .bind(account_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Err(LedgerError::UnknownAccount(account_id.to_string()));
        };
        let available: i64 = row.try_get("available")?;
        let expires_at: Option<i64> = row.try_get("expires_at")?;
        if available <= 0 || expires_at.is_none_or(|e| e > now) {
            return Ok(None);
        }
        let sweeps: i64 = db::sqlx::query(
            "SELECT COUNT(*) AS n FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id \
             WHERE e.account_id = $1 AND t.kind = 'expiry'",
        )
        .bind(account_id)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        let posting = Posting::transfer(
            format!("expire:{account_id}:{sweeps}"),
            "expiry",
            "credit expired unused",
            None,
            account_id,
            to,
            Nanos::new(available),
        )?;
        let id = new_id();
        insert_transaction(&mut tx, &id, &posting).await?;
        apply_legs(&mut tx, &id, posting.legs()).await?;
        tx.commit().await?;
        Ok(Some(Posted::Applied { transaction_id: id }))
    }
}

/// Reads the hold back as this transaction left it, then commits.
async fn commit_with(mut tx: db::WriteTx, hold_id: &str) -> Result<Hold, LedgerError> {
    let hold = load_hold(&mut tx, "id", hold_id, "")
        .await?
        .ok_or_else(|| LedgerError::UnknownHold(hold_id.to_string()))?;
    tx.commit().await?;
    Ok(hold)
}

/// Gives back what a hold reserved on each of its accounts, in account id order: the order in
/// which settlements and postings lock them (PostgreSQL), so that none of them waits on
/// another in a cycle.
async fn release(tx: &mut AnyConnection, hold: &Hold) -> Result<(), LedgerError> {
    let mut parts: Vec<&(String, i64)> = hold.parts.iter().collect();
    parts.sort_by(|a, b| a.0.cmp(&b.0));
    for (account, part) in parts {
        db::sqlx::query("UPDATE ledger_accounts SET released = released + $1 WHERE id = $2")
            .bind(part)
            .bind(account)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Queues the transactions (id, posting), one statement for all of them (of one text for any
/// number).
fn queue_transactions(writes: &mut Writes, postings: &[(&str, &Posting)], now: i64) {
    let mut rows = Rows::new(&[
        ("id", Column::Text),
        ("idempotency_key", Column::Text),
        ("kind", Column::Text),
        ("memo", Column::Text),
        ("org_id", Column::Text),
        ("created_at", Column::Int),
    ]);
    for (id, posting) in postings {
        rows.push([
            Value::from(*id),
            posting.key().into(),
            posting.kind().into(),
            posting.memo().into(),
            posting.org_id().into(),
            now.into(),
        ]);
    }
    writes.insert_rows("ledger_transactions", rows);
}

/// Queues the entries of every transaction (id, posting), one statement for all of them (of
/// one text for any number).
fn queue_entries_of(writes: &mut Writes, postings: &[(&str, &Posting)]) {
    let mut rows = Rows::new(&[
        ("transaction_id", Column::Text),
        ("account_id", Column::Text),
        ("amount", Column::Int),
    ]);
    for (id, posting) in postings {
        for leg in posting.legs() {
            rows.push([
                Value::from(*id),
                leg.account_id.as_str().into(),
                leg.amount.into(),
            ]);
        }
    }
    writes.insert_rows("ledger_entries", rows);
}
