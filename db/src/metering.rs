//! Metering transactions: a job's hold with its row, and its settlement with its usage event.
//! Both run on every request, so their `BEGIN` and `COMMIT` are not round trips of their own
//! (each about 0.1 ms through sqlx on SQLite and more on PostgreSQL; docs/perf.md, "Gateway
//! overhead").
//!
//! On SQLite a hold is its read (with `BEGIN IMMEDIATE`) and then its writes (with `COMMIT`),
//! a settlement one query. sqlx does not know of a transaction begun this way, so one that is
//! dropped while open closes its connection (which rolls it back) instead of returning it to
//! the pool.
//!
//! On PostgreSQL there is no transaction around the reads: they run side by side, each on a
//! pooled connection, and the writes are one statement, atomic on its own
//! ([`crate::batch::run_as_one_statement`]). So what was read may have changed by the time the
//! writes run; every write that depends on it must check it again (a reservation that the
//! account still has the funds, a settlement that the hold is still open), with a row count
//! the batch checks. A hold is then two round trips, a settlement one; a hold planned from an
//! earlier read, with its writes checking that plan, is one.

use sqlx::{Any, AnyPool, any::AnyRow, pool::PoolConnection};

use crate::batch::{Batch, BatchError, Value, bind, join, run_as_one_statement, run_committing};
use crate::{Db, DbError};

/// A write transaction for metering; see the module. Begun by [`Db::begin_metering`]; ends
/// with [`MeterTx::commit_with`] or [`MeterTx::rollback`] (or by being dropped, which rolls
/// it back).
pub struct MeterTx {
    inner: Inner,
}

enum Inner {
    Sqlite(SqliteTx),
    Postgres {
        pool: AnyPool,
        /// The commit waits for the WAL flush.
        durable: bool,
    },
}

struct SqliteTx {
    conn: PoolConnection<Any>,
    /// `BEGIN IMMEDIATE` was sent.
    begun: bool,
    /// The connection is known to be outside a transaction: it may go back to the pool.
    clean: bool,
    _writer: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if !self.clean {
            self.conn.close_on_drop();
        }
    }
}

impl Db {
    /// A metering transaction (see [`MeterTx`]). On SQLite it holds the process's writer lock
    /// from here (as [`Db::begin_write`] does) but sends nothing yet. On PostgreSQL it holds
    /// nothing, and its commit does not wait for the WAL flush (`synchronous_commit = off`
    /// for that commit only), which is most of a request's time on an ordinary disk: the same
    /// durability SQLite has here in WAL mode with `synchronous = NORMAL`. A crash of the
    /// portal loses nothing; a crash of the database server (or of its machine) can lose the
    /// last fraction of a second of committed metering, always a suffix, so the ledger stays
    /// balanced and consistent (a lost hold with its job row; a lost settlement leaves its
    /// hold to expire, which charges nobody). Money coming in (payments, credits, statements)
    /// keeps the full commit. [`Db::set_durable_metering`] restores it for metering too.
    pub async fn begin_metering(&self) -> Result<MeterTx, DbError> {
        let inner = match self.backend {
            crate::Backend::Sqlite => {
                let writer = self.writer_lock().await?;
                Inner::Sqlite(SqliteTx {
                    conn: self.pool.acquire().await?,
                    begun: false,
                    clean: true,
                    _writer: writer,
                })
            }
            crate::Backend::Postgres => Inner::Postgres {
                pool: self.pool.clone(),
                durable: self.durable_metering,
            },
        };
        Ok(MeterTx { inner })
    }
}

impl MeterTx {
    /// The rows of one read (`sql` with `$N` placeholders for `values`); see
    /// [`MeterTx::fetch_each`]. On SQLite the first statement sent carries the `BEGIN`.
    pub async fn fetch_all(
        &mut self,
        sql: &str,
        values: Vec<Value>,
    ) -> Result<Vec<AnyRow>, sqlx::Error> {
        let mut each = self.fetch_each(vec![(sql.to_string(), values)]).await?;
        Ok(each.pop().unwrap_or_default())
    }

    /// The rows of each read, in order: on SQLite inside the transaction, in one query (with
    /// the `BEGIN` when nothing was sent yet); on PostgreSQL side by side, each on a pooled
    /// connection. Each read is written with its own placeholders, `$1` up.
    pub async fn fetch_each(
        &mut self,
        reads: Vec<(String, Vec<Value>)>,
    ) -> Result<Vec<Vec<AnyRow>>, sqlx::Error> {
        let s = match &mut self.inner {
            Inner::Postgres { pool, .. } => {
                let pool = &*pool;
                return futures_util::future::try_join_all(reads.into_iter().map(
                    |(sql, values)| async move {
                        let mut args = sqlx::any::AnyArguments::default();
                        for v in &values {
                            bind(&mut args, v)?;
                        }
                        sqlx::query_with::<Any, _>(&sql, args).fetch_all(pool).await
                    },
                ))
                .await;
            }
            Inner::Sqlite(s) => s,
        };
        use futures_util::TryStreamExt;
        let begin = !s.begun;
        let statements = begin
            .then_some(("BEGIN IMMEDIATE", &[][..]))
            .into_iter()
            .chain(
                reads
                    .iter()
                    .map(|(sql, values)| (sql.as_str(), &values[..])),
            );
        let (sql, args) = join(statements)?;
        s.begun = true;
        s.clean = false;
        let query = sqlx::query_with::<Any, _>(&sql, args);
        let mut results = sqlx::Executor::fetch_many(&mut *s.conn, query);
        // Each statement ends with its result (`Left`), after the rows it returned.
        let mut each: Vec<Vec<AnyRow>> = Vec::with_capacity(reads.len());
        let mut rows = Vec::new();
        let mut ended = 0;
        while let Some(step) = results.try_next().await? {
            match step {
                sqlx::Either::Right(row) => rows.push(row),
                sqlx::Either::Left(_) => {
                    if !(begin && ended == 0) {
                        each.push(std::mem::take(&mut rows));
                    }
                    ended += 1;
                }
            }
        }
        if each.len() != reads.len() {
            return Err(sqlx::Error::Protocol(format!(
                "{} reads reported {} results",
                reads.len(),
                each.len()
            )));
        }
        Ok(each)
    }

    /// Runs `writes` and commits: on SQLite in one query that ends in `COMMIT` (and begins
    /// with `BEGIN IMMEDIATE` if nothing was sent yet), on PostgreSQL as one statement. When a
    /// statement fails or changes the wrong number of rows nothing of the writes stays.
    pub async fn commit_with<R>(self, writes: Batch<R>) -> Result<Vec<u64>, BatchError<R>> {
        match self.inner {
            Inner::Postgres { pool, durable } => {
                run_as_one_statement(writes, &pool, !durable).await
            }
            Inner::Sqlite(mut s) => {
                let begin = !s.begun;
                s.clean = false;
                match run_committing(writes, &mut s.conn, begin).await {
                    Ok(counts) => {
                        s.clean = true;
                        Ok(counts)
                    }
                    Err(e) => {
                        rollback_sqlite(&mut s).await;
                        Err(e)
                    }
                }
            }
        }
    }

    /// Ends the transaction without keeping anything. When nothing was sent (and always on
    /// PostgreSQL, where nothing was written yet) this sends nothing either.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self.inner {
            Inner::Postgres { .. } => Ok(()),
            Inner::Sqlite(mut s) => {
                if s.begun {
                    rollback_sqlite(&mut s).await;
                }
                Ok(())
            }
        }
    }
}

/// Rolls back a transaction that may be open. Whatever goes wrong, the connection is not
/// returned to the pool unless it is known to be outside a transaction.
async fn rollback_sqlite(s: &mut SqliteTx) {
    match sqlx::Executor::execute(&mut *s.conn, "ROLLBACK").await {
        Ok(_) => s.clean = true,
        Err(e) => tracing::debug!(error = %e, "rollback failed; closing the connection"),
    }
}
