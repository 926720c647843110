//! Metering transactions: a job's hold with its row, and its settlement with its usage event.
//! Both run on every request, so on SQLite their `BEGIN` and `COMMIT` travel with the
//! statements next to them instead of as round trips of their own (each about 0.1 ms through
//! sqlx, docs/perf.md): a hold is its read (with `BEGIN IMMEDIATE`) and then its writes (with
//! `COMMIT`), a settlement one query. sqlx does not know of a transaction begun this way, so
//! one that is dropped while open closes its connection (which rolls it back) instead of
//! returning it to the pool. On PostgreSQL a metering transaction is an ordinary one.

use sqlx::{Any, AnyConnection, any::AnyRow, pool::PoolConnection};

use crate::batch::{Batch, BatchError, Value, bind, join, run_committing};
use crate::{Db, DbError, WriteTx};

/// A write transaction for metering; see the module. Begun by [`Db::begin_metering`]; ends
/// with [`MeterTx::commit_with`] or [`MeterTx::rollback`] (or by being dropped, which rolls
/// it back).
pub struct MeterTx {
    inner: Inner,
}

enum Inner {
    Sqlite(SqliteTx),
    Postgres(WriteTx),
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
    /// from here (as [`Db::begin_write`] does) but sends nothing yet. On PostgreSQL its commit
    /// does not wait for the WAL flush (`synchronous_commit = off` for this transaction only),
    /// which is most of a request's time on an ordinary disk: the same durability SQLite has
    /// here in WAL mode with `synchronous = NORMAL`. A crash of the portal loses nothing; a
    /// crash of the database server (or of its machine) can lose the last fraction of a
    /// second of committed metering, always a suffix, so the ledger stays balanced and
    /// consistent (a lost hold with its job row; a lost settlement leaves its hold to expire,
    /// which charges nobody). Money coming in (payments, credits, statements) keeps the full
    /// commit. [`Db::set_durable_metering`] restores it for metering too.
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
            crate::Backend::Postgres if !self.durable_metering => Inner::Postgres(WriteTx {
                tx: self
                    .pool
                    .begin_with("BEGIN; SET LOCAL synchronous_commit = off")
                    .await?,
                _writer: None,
            }),
            crate::Backend::Postgres => Inner::Postgres(self.begin_write().await?),
        };
        Ok(MeterTx { inner })
    }
}

impl MeterTx {
    /// The rows of one read inside the transaction (`sql` with `$N` placeholders for
    /// `values`). On SQLite the first statement sent carries the `BEGIN`.
    pub async fn fetch_all(
        &mut self,
        sql: &str,
        values: Vec<Value>,
    ) -> Result<Vec<AnyRow>, sqlx::Error> {
        let mut each = self.fetch_each(vec![(sql.to_string(), values)]).await?;
        Ok(each.pop().unwrap_or_default())
    }

    /// The rows of each read, in order, inside the transaction: on SQLite one query (with
    /// the `BEGIN` when nothing was sent yet), on PostgreSQL one after another. Each read is
    /// written with its own placeholders, `$1` up.
    pub async fn fetch_each(
        &mut self,
        reads: Vec<(String, Vec<Value>)>,
    ) -> Result<Vec<Vec<AnyRow>>, sqlx::Error> {
        let s = match &mut self.inner {
            Inner::Postgres(tx) => {
                let mut each = Vec::with_capacity(reads.len());
                for (sql, values) in &reads {
                    let mut args = sqlx::any::AnyArguments::default();
                    for v in values {
                        bind(&mut args, v)?;
                    }
                    each.push(
                        sqlx::query_with::<Any, _>(sql, args)
                            .fetch_all(&mut **tx)
                            .await?,
                    );
                }
                return Ok(each);
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

    /// The connection, for reads that [`MeterTx::fetch_all`] does not cover. On SQLite this
    /// sends the `BEGIN` now, a round trip of its own.
    pub async fn connection(&mut self) -> Result<&mut AnyConnection, sqlx::Error> {
        match &mut self.inner {
            Inner::Postgres(tx) => Ok(&mut **tx),
            Inner::Sqlite(s) => {
                if !s.begun {
                    s.begun = true;
                    s.clean = false;
                    sqlx::Executor::execute(&mut *s.conn, "BEGIN IMMEDIATE").await?;
                }
                Ok(&mut *s.conn)
            }
        }
    }

    /// Runs `writes` and commits: on SQLite in one query that ends in `COMMIT` (and begins
    /// with `BEGIN IMMEDIATE` if nothing was sent yet). When a statement fails or changes
    /// the wrong number of rows the transaction is rolled back, so nothing of it stays.
    pub async fn commit_with<R>(self, writes: Batch<R>) -> Result<Vec<u64>, BatchError<R>> {
        match self.inner {
            Inner::Postgres(mut tx) => {
                let counts = writes.run(&mut tx).await?;
                tx.commit().await?;
                Ok(counts)
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

    /// Ends the transaction without keeping anything. On SQLite, when nothing was sent this
    /// sends nothing either.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self.inner {
            Inner::Postgres(tx) => tx.rollback().await,
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
