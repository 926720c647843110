//! One storage handle for every domain crate.
//!
//! The backend is chosen once, from the URL scheme: `sqlite:` (the embedded default) or
//! `postgres:`. Everything after that is generic: queries are written once in a portable dialect
//! (`$N` placeholders, `BIGINT`/`TEXT` columns, ids made by the application, times as Unix
//! milliseconds) and run through `sqlx::Any`. The dialects differ in behaviour in three places,
//! each hidden behind one call: how a read-then-write transaction starts ([`Db::begin_write`]),
//! how a batch of writes is sent ([`Batch`]: one query on SQLite, one per statement on
//! PostgreSQL), and how a metering transaction travels ([`MeterTx`]: on SQLite its `BEGIN` and
//! `COMMIT` go inside its queries; on PostgreSQL its writes are one statement).

use std::{str::FromStr, sync::Arc, time::Duration};

use sqlx::{
    Any, AnyConnection, AnyPool, Transaction,
    any::{AnyConnectOptions, AnyPoolOptions},
};

mod batch;
mod checkpoint;
mod metering;

pub use batch::{Batch, BatchError, Column, Rows, Value, renumber};
pub use metering::MeterTx;
pub use sqlx;

/// Errors of the storage layer. Domain crates map these into their own error type.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database URL (expected sqlite: or postgres:): {0}")]
    UnsupportedUrl(String),
    #[error(
        "an in-memory SQLite database cannot be used: each pooled connection would open a \
         database of its own; give a file instead (sqlite://data/tokenmill.db?mode=rwc)"
    )]
    InMemory,
    #[error("could not create the database directory {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
}

/// Which engine sits behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn from_url(url: &str) -> Result<Self, DbError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Backend::Postgres)
        } else {
            Err(DbError::UnsupportedUrl(redact_url(url)))
        }
    }
}

/// The storage handle: a pool plus the knowledge of which backend it talks to.
#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// Whether metering transactions wait for the WAL flush on PostgreSQL (see
    /// [`Db::begin_metering`]).
    durable_metering: bool,
    /// Held by this process's SQLite write transaction, if one is open (see
    /// [`Db::begin_write`]).
    writer: Arc<tokio::sync::Mutex<()>>,
    /// SQLite's WAL checkpoints, run beside the commits rather than inside one (see
    /// [`checkpoint`]); stopped with the last clone of this handle.
    _checkpointer: Option<Arc<checkpoint::Checkpointer>>,
}

/// A write transaction: a sqlx transaction (dereferences to its connection) that on SQLite
/// also holds the process's writer lock until it commits, rolls back or is dropped.
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    _writer: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.backend)
            .finish()
    }
}

/// Per-connection settings for SQLite. `journal_mode` is persistent, the others are not, so all
/// run on every new connection.
fn sqlite_pragmas() -> String {
    format!(
        "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
         PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = {};",
        checkpoint::BACKSTOP_PAGES
    )
}

/// How long a PostgreSQL connection may sit idle in the pool before it is pinged when handed
/// out again.
const PING_AFTER_IDLE: Duration = Duration::from_secs(30);

/// The `busy_timeout` above.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

impl Db {
    /// Opens (creating if needed) the database at `url` and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
        if backend == Backend::Sqlite {
            if sqlite_in_memory(url) {
                return Err(DbError::InMemory);
            }
            ensure_sqlite_dir(url)?;
        }
        let options = AnyConnectOptions::from_str(url)?;
        // sqlx pings every connection it hands out by default: a round trip before every
        // statement run on the pool, measured on 2026-11-28 at about a tenth of a millisecond
        // each on SQLite. An embedded SQLite file has no other end that could hang up;
        // a PostgreSQL connection is pinged only after it sat idle long enough for a server
        // restart or a dropped link to have gone unnoticed.
        let pool_options = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 8 } else { 16 })
            .acquire_timeout(Duration::from_secs(15))
            .test_before_acquire(false);
        let pool_options = match backend {
            Backend::Sqlite => pool_options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    sqlx::Executor::execute(&mut *conn, sqlite_pragmas().as_str()).await?;
                    sqlx::Executor::execute(&mut *conn, batch::SQLITE_GUARD_TABLE).await?;
                    Ok(())
                })
            }),
            Backend::Postgres => pool_options
                .after_connect(|conn, _meta| {
                    Box::pin(async move {
                        sqlx::Executor::execute(&mut *conn, batch::POSTGRES_GUARD_FUNCTION).await?;
                        Ok(())
                    })
                })
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for >= PING_AFTER_IDLE {
                            sqlx::Connection::ping(conn).await?;
                        }
                        Ok(true)
                    })
                }),
        };
        let pool = pool_options.connect_with(options).await?;
        let checkpointer = (backend == Backend::Sqlite).then(|| {
            Arc::new(checkpoint::Checkpointer::start(
                pool.clone(),
                checkpoint::CHECKPOINT_EVERY,
            ))
        });
        let db = Db {
            pool,
            backend,
            durable_metering: false,
            writer: Arc::default(),
            _checkpointer: checkpointer,
        };
        if backend == Backend::Sqlite {
            db.incremental_vacuum_on().await?;
        }
        db.migrate().await?;
        tracing::info!(backend = ?backend, "database ready");
        Ok(db)
    }

    /// Makes a SQLite file give freed pages back to the filesystem on request
    /// ([`Db::reclaim_space`]) instead of keeping them inside it for reuse. A new database
    /// takes the mode before its first table; one made before this setting existed is
    /// rewritten once (`VACUUM`), which the log reports.
    async fn incremental_vacuum_on(&self) -> Result<(), DbError> {
        let mut conn = self.pool.acquire().await?;
        let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
            .fetch_one(&mut *conn)
            .await?;
        if mode == 2 {
            return Ok(());
        }
        sqlx::Executor::execute(&mut *conn, "PRAGMA auto_vacuum = INCREMENTAL").await?;
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&mut *conn)
            .await?;
        if pages > 0 {
            tracing::warn!(
                pages,
                "rewriting the SQLite file once so that deleted data gives its space back"
            );
            sqlx::Executor::execute(&mut *conn, "VACUUM").await?;
        }
        Ok(())
    }

    /// Gives the space of deleted rows back: on SQLite, the file's free pages return to the
    /// filesystem; on PostgreSQL autovacuum makes them reusable on its own, so nothing is done.
    pub async fn reclaim_space(&self) -> Result<(), DbError> {
        if self.backend == Backend::Sqlite {
            let _writer = self.writer_lock().await?;
            sqlx::query("PRAGMA incremental_vacuum")
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    async fn migrate(&self) -> Result<(), DbError> {
        sqlx::migrate!("../migrations").run(&self.pool).await?;
        Ok(())
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// An empty [`Batch`] of writes for this backend.
    pub fn batch<R>(&self) -> Batch<R> {
        Batch::new(self.backend)
    }

    /// Starts a transaction that reads and then writes.
    ///
    /// SQLite's default `BEGIN` is deferred: two such transactions can both read, then one
    /// fails to upgrade its lock (`SQLITE_BUSY`) without the busy handler helping. `BEGIN
    /// IMMEDIATE` takes the write lock up front, so concurrent writers queue instead. They
    /// queue here first, in process, on [`Db`]'s writer lock: SQLite's busy handler waits by
    /// sleeping (1 ms, then longer), which a writer that arrives while another commits would
    /// otherwise pay in full. On PostgreSQL callers lock rows (`FOR UPDATE`) or write
    /// conditionally.
    pub async fn begin_write(&self) -> Result<WriteTx, DbError> {
        match self.backend {
            Backend::Sqlite => self.begin_sqlite().await,
            Backend::Postgres => Ok(WriteTx {
                tx: self.pool.begin().await?,
                _writer: None,
            }),
        }
    }

    async fn begin_sqlite(&self) -> Result<WriteTx, DbError> {
        let writer = self.writer_lock().await?;
        Ok(WriteTx {
            tx: self.pool.begin_with("BEGIN IMMEDIATE").await?,
            _writer: Some(writer),
        })
    }

    /// The process's SQLite writer lock; as long as SQLite itself would wait for its own
    /// lock, then the same error.
    async fn writer_lock(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, DbError> {
        tokio::time::timeout(SQLITE_BUSY_TIMEOUT, Arc::clone(&self.writer).lock_owned())
            .await
            .map_err(|_| DbError::Sqlx(sqlx::Error::PoolTimedOut))
    }

    /// Makes metering commits wait for the WAL flush like every other (PostgreSQL).
    pub fn set_durable_metering(&mut self, durable: bool) {
        self.durable_metering = durable;
    }

    /// What to append to a `SELECT` inside [`Db::begin_write`] to lock the rows it reads until
    /// the transaction ends: `FOR UPDATE` on PostgreSQL; nothing on SQLite, where `BEGIN
    /// IMMEDIATE` already holds the database's write lock.
    pub fn lock_rows(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }

    /// [`Db::lock_rows`] for a `SELECT` that joins tables: locks only the rows read from
    /// `alias`.
    pub fn lock_rows_of(&self, alias: &str) -> String {
        match self.backend {
            Backend::Sqlite => String::new(),
            Backend::Postgres => format!(" FOR UPDATE OF {alias}"),
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The file a `sqlite:` URL names (empty or `:memory:` for none).
fn sqlite_path(url: &str) -> &str {
    url.trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default()
}

/// Whether a `sqlite:` URL names a database that lives in one connection's memory.
fn sqlite_in_memory(url: &str) -> bool {
    let path = sqlite_path(url);
    let query = url.split_once('?').map_or("", |(_, q)| q);
    path.is_empty() || path == ":memory:" || query.split('&').any(|p| p == "mode=memory")
}

fn ensure_sqlite_dir(url: &str) -> Result<(), DbError> {
    let path = sqlite_path(url);
    if let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|source| DbError::CreateDir {
            path: parent.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// A URL with any password replaced, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Whether an error is a unique-constraint violation (on either backend).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

/// Whether `err`, or anything it failed from, is a wait for a pooled connection that ran out:
/// the database is busy rather than broken, nothing was done, and the same request may
/// succeed in a moment (callers answer 503 with a retry hint, not 500).
pub fn is_pool_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(c) = cause {
        if let Some(sqlx::Error::PoolTimedOut) = c.downcast_ref::<sqlx::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// A new primary key: a UUIDv7 (time-ordered, so indexes stay compact), as text.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Wall-clock time as Unix milliseconds, the one time representation stored.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_timeout_is_found_however_deep_it_is_wrapped() {
        assert!(is_pool_timeout(&sqlx::Error::PoolTimedOut));
        assert!(is_pool_timeout(&DbError::Sqlx(sqlx::Error::PoolTimedOut)));
        assert!(!is_pool_timeout(&DbError::Sqlx(sqlx::Error::RowNotFound)));
        assert!(!is_pool_timeout(&sqlx::Error::PoolClosed));
    }

    #[test]
    fn redacts_passwords_in_urls() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
    }

    #[test]
    fn backend_is_chosen_by_scheme() {
        assert_eq!(
            Backend::from_url("sqlite://data/x.db").unwrap(),
            Backend::Sqlite
        );
        assert_eq!(
            Backend::from_url("postgres://h/db").unwrap(),
            Backend::Postgres
        );
        assert!(Backend::from_url("mysql://h/db").is_err());
    }
}

#[cfg(feature = "test-util")]
pub mod testing;
