//! A fresh, migrated database per test, on SQLite always and on PostgreSQL when
//! `TEST_DATABASE_URL` names a server. Each PostgreSQL test gets its own database, dropped when
//! the [`TestDb`] is dropped, so tests never see each other's rows.

use sqlx::{Connection, Executor};

use crate::{Backend, Db};

pub struct TestDb {
    pub db: Db,
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

impl TestDb {
    /// A fresh SQLite database in a temporary directory.
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/test.db?mode=rwc", dir.path().display());
        let db = Db::connect(&url).await.expect("open sqlite");
        TestDb {
            db,
            url,
            cleanup: Cleanup::Sqlite(dir),
        }
    }

    /// A fresh PostgreSQL database on the server named by `TEST_DATABASE_URL`, or `None` when the
    /// variable is unset.
    pub async fn postgres() -> Option<TestDb> {
        let admin_url = std::env::var("TEST_DATABASE_URL").ok()?;
        assert_eq!(Backend::from_url(&admin_url).ok(), Some(Backend::Postgres));
        let name = format!("tokenmill_test_{}", crate::new_id());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("connect to TEST_DATABASE_URL");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        admin.close().await.ok();
        let url = replace_database(&admin_url, &name);
        let db = Db::connect(&url).await.expect("open postgres");
        Some(TestDb {
            db,
            url,
            cleanup: Cleanup::Postgres { admin_url, name },
        })
    }

    /// Every backend available to this run: SQLite, then PostgreSQL if configured.
    pub async fn all() -> Vec<TestDb> {
        let mut dbs = vec![TestDb::sqlite().await];
        dbs.extend(TestDb::postgres().await);
        dbs
    }

    /// Closes the pool, then removes the database (on drop).
    pub async fn finish(self) {
        self.db.close().await;
    }
}

/// Removes a PostgreSQL test database when the test is done with it, also when the test
/// panicked or never called [`TestDb::finish`]. Drop cannot await, so a short-lived thread with
/// its own runtime does the work and is waited for.
impl Drop for TestDb {
    fn drop(&mut self) {
        if let Cleanup::Postgres { admin_url, name } = &self.cleanup {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async {
                    if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                        let _ = admin
                            .execute(
                                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str(),
                            )
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{name}?{q}"),
        None => format!("{host_part}/{name}"),
    }
}

/// A storage test run on each backend as a test of its own: `name::sqlite`, and
/// `name::postgres` on the server `TEST_DATABASE_URL` names (without it, that test says so on
/// stderr and passes). A failure names its backend, and the two run in parallel.
///
/// ```ignore
/// db::storage_test!(async fn a_hold_is_exact(t) {
///     let ledger = Ledger::new(t.db.clone());
///     // …
/// });
/// // On a runtime of 4 threads, for a test of concurrent writers:
/// db::storage_test!(threads = 4; async fn debits_never_overdraw(t) { … });
/// ```
///
/// Without `threads`, each runs on tokio's single-threaded test runtime. The test's module
/// sees everything of the file it is in (`use super::*`). The caller depends on tokio (with
/// its test macro), as every async test does.
#[macro_export]
macro_rules! storage_test {
    (threads = $n:literal; $(#[$attr:meta])* async fn $name:ident($t:ident) $body:block) => {
        $crate::storage_test!(@on [flavor = "multi_thread", worker_threads = $n]
            $(#[$attr])* async fn $name($t) $body);
    };
    ($(#[$attr:meta])* async fn $name:ident($t:ident) $body:block) => {
        $crate::storage_test!(@on [flavor = "current_thread"] $(#[$attr])* async fn $name($t) $body);
    };
    (@on [$($runtime:tt)*] $(#[$attr:meta])* async fn $name:ident($t:ident) $body:block) => {
        $(#[$attr])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[::tokio::test($($runtime)*)]
            async fn sqlite() {
                let $t = $crate::testing::TestDb::sqlite().await;
                $body
            }

            #[::tokio::test($($runtime)*)]
            async fn postgres() {
                let Some($t) = $crate::testing::TestDb::postgres().await else {
                    eprintln!("TEST_DATABASE_URL is not set: not run on PostgreSQL");
                    return;
                };
                $body
            }
        }
    };
}
