//! The storage handle itself: SQLite settings and write transactions that queue.
#![allow(
    clippy::too_many_lines,
    reason = "each test is one scenario read top to bottom; a long one tells a long story"
)]

use db::{Backend, sqlx::Row, testing::TestDb};

#[tokio::test]
async fn sqlite_runs_with_wal_foreign_keys_and_a_busy_timeout() {
    let t = TestDb::sqlite().await;
    assert_eq!(t.db.backend(), Backend::Sqlite);
    let mut conn = t.db.pool().acquire().await.unwrap();
    let mode: String = db::sqlx::query("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    let fk: i64 = db::sqlx::query("PRAGMA foreign_keys")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    let busy: i64 = db::sqlx::query("PRAGMA busy_timeout")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    let autocheckpoint: i64 = db::sqlx::query("PRAGMA wal_autocheckpoint")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(mode, "wal");
    assert_eq!(fk, 1);
    assert!(busy >= 5000, "{busy}");
    // SQLite's own checkpoint (1 000 pages by default) is only a backstop here.
    assert!(autocheckpoint > 1000, "{autocheckpoint}");
    drop(conn);
    t.finish().await;
}

/// How many times the WAL has been started over: its header's checkpoint sequence number
/// (big-endian, bytes 12..16). SQLite starts the log over at the first write after a
/// checkpoint copied all of it back, and never before.
fn wal_restarts(t: &TestDb) -> u32 {
    let db_path = t
        .url
        .trim_start_matches("sqlite://")
        .split('?')
        .next()
        .unwrap();
    let header = std::fs::read(format!("{db_path}-wal")).unwrap();
    u32::from_be_bytes(header[12..16].try_into().unwrap())
}

/// Nothing a request commits reaches SQLite's own checkpoint (whose fsyncs the committing
/// request would wait for): the log is copied back by the pool's task, beside the commits.
#[tokio::test]
async fn sqlite_copies_the_wal_back_beside_the_commits() {
    let t = TestDb::sqlite().await;
    let pool = t.db.pool();
    db::sqlx::query("CREATE TABLE filler (b BLOB)")
        .execute(pool)
        .await
        .unwrap();
    // About 500 pages in the log: half of SQLite's default threshold, a twentieth of the
    // backstop, so only the task can copy them back.
    db::sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) \
         INSERT INTO filler SELECT randomblob(3000) FROM n",
    )
    .execute(pool)
    .await
    .unwrap();
    let before = wal_restarts(&t);
    // One small write per 100 ms for 10 s adds some 200 frames: not even SQLite's default
    // threshold would be reached, so the log starts over only if the task copied it back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // The write that finds the log copied back starts it over.
        db::sqlx::query("INSERT INTO filler VALUES (x'00')")
            .execute(pool)
            .await
            .unwrap();
        if wal_restarts(&t) > before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the log was never copied back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    t.finish().await;
}

db::storage_test!(
    async fn foreign_keys_are_enforced_on_every_backend(t) {
        let orphan = db::sqlx::query(
            "INSERT INTO users (id, email, password_hash, org_id, org_role, created_at) \
             VALUES ('u1', 'a@b.co', 'x', 'no-such-org', 'owner', 0)",
        )
        .execute(t.db.pool())
        .await;
        assert!(
            orphan.is_err(),
            "{:?}: a user without an organisation was stored",
            t.db.backend()
        );
        t.finish().await;
    }
);

/// Twenty concurrent read-then-write transactions on one row: with `BEGIN IMMEDIATE` each
/// waits for the write lock instead of failing to upgrade a read lock, and none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_read_then_write_transactions_queue_on_sqlite() {
    let t = TestDb::sqlite().await;
    db::sqlx::query("INSERT INTO organizations (id, name, kind, region, created_at) VALUES ('o', 'n', 'startup', 'europe', 0)")
        .execute(t.db.pool())
        .await
        .unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let db = t.db.clone();
            tokio::spawn(async move {
                let mut tx = db.begin_write().await?;
                let n: i64 = db::sqlx::query("SELECT created_at FROM organizations WHERE id = 'o'")
                    .fetch_one(&mut *tx)
                    .await?
                    .get(0);
                tokio::task::yield_now().await;
                db::sqlx::query("UPDATE organizations SET created_at = $1 WHERE id = 'o'")
                    .bind(n + 1)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok::<_, db::DbError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let n: i64 = db::sqlx::query("SELECT created_at FROM organizations WHERE id = 'o'")
        .fetch_one(t.db.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 20);
    t.finish().await;
}

db::storage_test!(
    async fn migrations_are_idempotent_across_restarts(t) {
        let again = db::Db::connect(&t.url)
            .await
            .expect("reopen and migrate again");
        again.close().await;
        t.finish().await;
    }
);

/// Metering commits skip the WAL flush on PostgreSQL for their own statement only, unless
/// durable metering is asked for; other transactions keep the server's setting.
#[tokio::test]
async fn metering_transactions_commit_without_the_flush_only_on_postgresql() {
    /// The setting as a metering batch's statement saw it while it ran (it records it).
    async fn seen_by_metering(db: &db::Db, id: &str) -> String {
        let tx = db.begin_metering().await.unwrap();
        let mut batch = db.batch::<&str>();
        batch.push(
            "INSERT INTO organizations (id, name, kind, region, created_at) \
             VALUES ($1, current_setting('synchronous_commit'), 'startup', 'europe', 1)",
            vec![id.into()],
        );
        tx.commit_with(batch).await.unwrap();
        db::sqlx::query_scalar("SELECT name FROM organizations WHERE id = $1")
            .bind(id)
            .fetch_one(db.pool())
            .await
            .unwrap()
    }
    async fn setting(conn: &mut db::sqlx::AnyConnection) -> String {
        db::sqlx::query("SHOW synchronous_commit")
            .fetch_one(conn)
            .await
            .unwrap()
            .get(0)
    }
    let Some(mut t) = TestDb::postgres().await else {
        return;
    };
    assert_eq!(seen_by_metering(&t.db, "o1").await, "off");
    // The connection it ran on (the pool's only one so far) is back to the server's setting.
    let mut conn = t.db.pool().acquire().await.unwrap();
    assert_eq!(setting(&mut conn).await, "on");
    drop(conn);
    let mut tx = t.db.begin_write().await.unwrap();
    assert_eq!(setting(&mut tx).await, "on");
    tx.rollback().await.unwrap();
    t.db.set_durable_metering(true);
    assert_eq!(seen_by_metering(&t.db, "o2").await, "on");
    t.finish().await;
}

db::storage_test!(
    /// A batch runs its statements in order inside the caller's transaction, numbering each
    /// statement's placeholders on from the last, reports what each changed, and stops at a
    /// statement that changed the wrong number of rows; rolling back then undoes the whole batch.
    async fn batches_run_in_order_report_each_statement_and_roll_back_whole(t) {
        use db::Value;
        let backend = t.db.backend();
        let org = "INSERT INTO organizations (id, name, kind, region, created_at) \
                   VALUES ($1, $2, 'startup', 'europe', $3)";
        let mut tx = t.db.begin_write().await.unwrap();
        let mut batch = t.db.batch::<&str>();
        batch.push(org, vec!["o1".into(), "First".into(), 1.into()]);
        batch.push(org, vec!["o2".into(), "Second".into(), 2.into()]);
        batch.push_expecting(
            "UPDATE organizations SET name = $1, suspended_at = $2 WHERE id = $3",
            vec!["Renamed".into(), Value::Int(None), "o1".into()],
            1,
            "o1 is missing",
        );
        batch.push(
            "UPDATE organizations SET created_at = created_at + $1",
            vec![10.into()],
        );
        let counts = batch.run(&mut tx).await.unwrap();
        assert_eq!(counts, vec![1, 1, 1, 2], "{backend:?}");
        tx.commit().await.unwrap();
        let rows: Vec<(String, String, i64)> =
            db::sqlx::query("SELECT id, name, created_at FROM organizations ORDER BY id")
                .fetch_all(t.db.pool())
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get("id"), r.get("name"), r.get("created_at")))
                .collect();
        assert_eq!(
            rows,
            vec![
                ("o1".into(), "Renamed".into(), 11),
                ("o2".into(), "Second".into(), 12)
            ],
            "{backend:?}"
        );

        // A check that fails names its refusal; the rollback keeps the rows inserted before it.
        let mut tx = t.db.begin_write().await.unwrap();
        let mut batch = t.db.batch::<&str>();
        insert_then_miss(&mut batch, org);
        let err = batch.run(&mut tx).await.unwrap_err();
        assert_eq!(err.refusal(), Some(&"no such organisation"), "{backend:?}");
        drop(tx);
        let n: i64 = db::sqlx::query_scalar("SELECT COUNT(*) FROM organizations")
            .fetch_one(t.db.pool())
            .await
            .unwrap();
        assert_eq!(n, 2, "{backend:?}: the failed batch left a row");

        // A database error (a duplicate key) is the database's, not a refusal.
        let mut tx = t.db.begin_write().await.unwrap();
        let mut batch = t.db.batch::<&str>();
        batch.push(org, vec!["o1".into(), "Again".into(), 4.into()]);
        let err = batch.run(&mut tx).await.unwrap_err();
        assert!(
            err.sqlx().is_some_and(db::is_unique_violation),
            "{backend:?}: {err}"
        );
        drop(tx);
        t.finish().await;
    }
);

db::storage_test!(
    /// A metering transaction: its reads see the database (inside the transaction on SQLite),
    /// its batch commits with the writes (checked row counts included), a refused or failed batch
    /// keeps nothing, and one dropped half way keeps nothing and leaves the pool usable. On SQLite
    /// the `BEGIN` and `COMMIT` travel inside those queries, so these are the checks that they do.
    async fn metering_transactions_commit_with_their_batch_or_keep_nothing(t) {
        use db::Value;
        async fn names(db: &db::Db) -> Vec<String> {
            db::sqlx::query_scalar("SELECT name FROM organizations ORDER BY id")
                .fetch_all(db.pool())
                .await
                .unwrap()
        }
        let backend = t.db.backend();
        let org = "INSERT INTO organizations (id, name, kind, region, created_at) \
                   VALUES ($1, $2, 'startup', 'europe', $3)";
        // A batch alone (a settlement): begins, writes, commits.
        let tx = t.db.begin_metering().await.unwrap();
        let mut batch = t.db.batch::<&str>();
        batch.push(org, vec!["o1".into(), "First".into(), 1.into()]);
        batch.push(org, vec!["o2".into(), "Second".into(), 2.into()]);
        let counts = tx.commit_with(batch).await.unwrap();
        assert_eq!(counts, vec![1, 1], "{backend:?}");

        // Reads (the first carries the BEGIN on SQLite), each with its own rows, an empty
        // answer included; then writes whose checks hold (two rows where two are expected).
        let mut tx = t.db.begin_metering().await.unwrap();
        let each = tx
            .fetch_each(vec![
                (
                    "SELECT id FROM organizations WHERE created_at >= $1 ORDER BY id".into(),
                    vec![1.into()],
                ),
                (
                    "SELECT id FROM organizations WHERE name = $1".into(),
                    vec!["nobody".into()],
                ),
                (
                    "SELECT name FROM organizations WHERE id = $1 AND created_at = $2".into(),
                    vec!["o2".into(), 2.into()],
                ),
            ])
            .await
            .unwrap();
        let sizes: Vec<usize> = each.iter().map(Vec::len).collect();
        assert_eq!(sizes, [2, 0, 1], "{backend:?}");
        assert_eq!(each[2][0].get::<String, _>("name"), "Second");
        let rows = tx
            .fetch_all(
                "SELECT id FROM organizations WHERE id = $1",
                vec!["o1".into()],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "{backend:?}");
        let mut batch = t.db.batch::<&str>();
        batch.push_expecting(
            "UPDATE organizations SET name = name || $1",
            vec!["!".into()],
            2,
            "not two",
        );
        // (No row is changed twice: on PostgreSQL the batch is one statement.)
        batch.push_expecting(
            "DELETE FROM organizations WHERE id = $1 AND suspended_at = $2",
            vec!["o1".into(), Value::Int(None)],
            0,
            "o1 was suspended",
        );
        assert_eq!(tx.commit_with(batch).await.unwrap(), vec![2, 0]);
        assert_eq!(names(&t.db).await, ["First!", "Second!"], "{backend:?}");

        // A check that fails: its refusal, and the statements before it are undone.
        let mut tx = t.db.begin_metering().await.unwrap();
        tx.fetch_all("SELECT id FROM organizations", vec![])
            .await
            .unwrap();
        // A check that holds comes first: the refusal is the failing statement's own.
        let mut batch = t.db.batch::<&str>();
        batch.push_expecting(
            "UPDATE organizations SET created_at = created_at WHERE id = $1",
            vec!["o2".into()],
            1,
            "no o2",
        );
        insert_then_miss(&mut batch, org);
        batch.push(org, vec!["o4".into(), "Fourth".into(), 4.into()]);
        let err = tx.commit_with(batch).await.unwrap_err();
        assert_eq!(err.refusal(), Some(&"no such organisation"), "{backend:?}");
        assert!(
            matches!(
                err,
                db::BatchError::Refused {
                    changed: 0,
                    expected: 1,
                    ..
                }
            ),
            "{backend:?}: {err}"
        );
        assert_eq!(names(&t.db).await, ["First!", "Second!"], "{backend:?}");

        // A database error (a duplicate key), without a read first: the database's own.
        let tx = t.db.begin_metering().await.unwrap();
        let mut batch = t.db.batch::<&str>();
        batch.push(org, vec!["o5".into(), "Fifth".into(), 5.into()]);
        batch.push(org, vec!["o1".into(), "Again".into(), 6.into()]);
        let err = tx.commit_with(batch).await.unwrap_err();
        assert!(
            err.sqlx().is_some_and(db::is_unique_violation),
            "{backend:?}: {err}"
        );
        assert_eq!(names(&t.db).await, ["First!", "Second!"], "{backend:?}");

        // Dropped after its read (on SQLite, inside its transaction): every connection the
        // pool hands out afterwards is outside a transaction.
        let mut tx = t.db.begin_metering().await.unwrap();
        tx.fetch_all("SELECT id FROM organizations", vec![])
            .await
            .unwrap();
        drop(tx);
        // An explicit rollback after a read, too.
        let mut tx = t.db.begin_metering().await.unwrap();
        tx.fetch_all("SELECT id FROM organizations", vec![])
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        for i in 0..12 {
            let mut tx = t.db.begin_write().await.unwrap();
            db::sqlx::query("UPDATE organizations SET created_at = created_at + 1")
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            let tx = t.db.begin_metering().await.unwrap();
            let mut batch = t.db.batch::<&str>();
            batch.push(
                "UPDATE organizations SET created_at = created_at + $1",
                vec![1.into()],
            );
            tx.commit_with(batch)
                .await
                .unwrap_or_else(|e| panic!("{backend:?}, round {i}: {e}"));
        }
        assert_eq!(names(&t.db).await, ["First!", "Second!"], "{backend:?}");
        t.finish().await;
    }
);

/// Adds to `batch` the insert of organisation `o3` and then a rename of one that does not
/// exist, whose check fails with "no such organisation".
fn insert_then_miss(batch: &mut db::Batch<&'static str>, insert: &'static str) {
    batch.push(insert, vec!["o3".into(), "Third".into(), 3.into()]);
    batch.push_expecting(
        "UPDATE organizations SET name = $1 WHERE id = $2",
        vec!["x".into(), "nobody".into()],
        1,
        "no such organisation",
    );
}

db::storage_test!(
    /// Rows sent as one parameter arrive exactly as given (the extremes of a 64-bit amount,
    /// NULLs, text that JSON escapes), none at all is a statement that changes nothing, and a
    /// statement over rows that must each change a row is refused, with everything else in the
    /// batch, when one of them changes none.
    async fn rows_sent_as_one_parameter_arrive_whole_and_are_checked_one_by_one(t) {
        use db::{Column, Rows, Value};
        const ORG: &[(&str, Column); 4] = &[
            ("id", Column::Text),
            ("name", Column::Text),
            ("created_at", Column::Int),
            ("suspended_at", Column::Int),
        ];
        const INSERT: &str = "INSERT INTO organizations (id, name, kind, region, created_at, \
                              suspended_at) SELECT r.id, r.name, 'startup', 'europe', r.created_at, \
                              r.suspended_at FROM {rows}";
        async fn orgs(db: &db::Db) -> Vec<(String, String, i64, Option<i64>)> {
            db::sqlx::query("SELECT id, name, created_at, suspended_at FROM organizations ORDER BY id")
                .fetch_all(db.pool())
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r.get("id"),
                        r.get("name"),
                        r.get("created_at"),
                        r.get("suspended_at"),
                    )
                })
                .collect()
        }
        async fn commit(
            db: &db::Db,
            batch: db::Batch<&'static str>,
        ) -> Result<Vec<u64>, db::BatchError<&'static str>> {
            db.begin_metering().await.unwrap().commit_with(batch).await
        }
        let backend = t.db.backend();
        let mut rows = Rows::new(ORG);
        rows.push([
            "a".into(),
            "Ünïcode \"quoted\" $1 \\ ' end".into(),
            i64::MAX.into(),
            Value::Int(None),
        ]);
        rows.push(["b".into(), "Plain".into(), i64::MIN.into(), 7.into()]);
        let mut batch = t.db.batch::<&str>();
        batch.push_rows(INSERT, rows, Some("not inserted"));
        batch.push_rows(INSERT, Rows::new(ORG), None);
        let counts = commit(&t.db, batch).await.unwrap();
        assert_eq!(counts, vec![2, 0], "{backend:?}");
        let expected = vec![
            (
                "a".to_string(),
                "Ünïcode \"quoted\" $1 \\ ' end".to_string(),
                i64::MAX,
                None,
            ),
            ("b".to_string(), "Plain".to_string(), i64::MIN, Some(7)),
        ];
        assert_eq!(orgs(&t.db).await, expected, "{backend:?}");

        // Three more, one of them already there, where each must be new: refused, and the
        // insert before it undone too.
        let mut more = Rows::new(ORG);
        more.push(["c".into(), "Third".into(), 3.into(), Value::Int(None)]);
        let mut again = Rows::new(ORG);
        for id in ["d", "a", "e"] {
            again.push([id.into(), "Again".into(), 4.into(), Value::Int(None)]);
        }
        let mut batch = t.db.batch::<&str>();
        batch.push_rows(INSERT, more, None);
        batch.push_rows(
            &format!("{INSERT} WHERE true ON CONFLICT DO NOTHING"),
            again,
            Some("an organisation is there already"),
        );
        let err = commit(&t.db, batch).await.unwrap_err();
        assert_eq!(
            err.refusal(),
            Some(&"an organisation is there already"),
            "{backend:?}"
        );
        assert!(
            matches!(
                err,
                db::BatchError::Refused {
                    changed: 2,
                    expected: 3,
                    ..
                }
            ),
            "{backend:?}: {err}"
        );
        assert_eq!(orgs(&t.db).await, expected, "{backend:?}");
        t.finish().await;
    }
);

/// An in-memory SQLite database would be one per pooled connection, the migrated one among
/// them: refused when opened, with a message that says what to give instead.
#[tokio::test]
async fn an_in_memory_sqlite_url_is_refused_with_a_reason() {
    for url in [
        "sqlite::memory:",
        "sqlite://:memory:",
        "sqlite:",
        "sqlite://shared?mode=memory&cache=shared",
    ] {
        let refused = db::Db::connect(url).await;
        assert!(
            matches!(refused, Err(db::DbError::InMemory)),
            "{url}: {refused:?}"
        );
    }
    let message = db::DbError::InMemory.to_string();
    assert!(message.contains("give a file instead"), "{message}");
    // A file is still fine.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
    db::Db::connect(&url).await.unwrap();
}
