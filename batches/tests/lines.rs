//! The batch line state machine on SQLite and PostgreSQL: a line is claimed by one runner
//! only; a dead runner's lines are taken over once; released lines run again; finished lines
//! are counted once; a batch ends with its output and error files in line order.
#![allow(
    clippy::too_many_lines,
    reason = "each test is one scenario read top to bottom; a long one tells a long story"
)]

use batches::{Batches, Creator, Staged};

async fn org(db: &db::Db, id: &str) -> Creator {
    db::sqlx::query(
        "INSERT INTO organizations (id, name, kind, region, created_at) VALUES ($1, $1, 'startup', 'eu', 0)",
    )
    .bind(id)
    .execute(db.pool())
    .await
    .unwrap();
    Creator {
        org_id: id.into(),
        user_id: None,
        api_key_id: None,
    }
}

fn request(id: &str) -> String {
    format!(
        r#"{{"custom_id": "{id}", "method": "POST", "url": "/v1/completions", "body": {{"model": "m", "prompt": "x"}}}}"#
    )
}

async fn heartbeat_at(db: &db::Db, runner: &str, at: i64) {
    db::sqlx::query("UPDATE batch_runners SET heartbeat_at = $1 WHERE id = $2")
        .bind(at)
        .bind(runner)
        .execute(db.pool())
        .await
        .unwrap();
}

db::storage_test!(
    async fn lines_are_claimed_once_taken_over_once_and_end_in_files(t) {
        let b = Batches::new(t.db.clone());
        let who = org(&t.db, "org-a").await;
        let content = [
            request("one"),
            "oops".into(),
            request("two"),
            request("three"),
        ]
        .join("\n");
        let file = b
            .upload(&who.org_id, "batch", "in.jsonl", content.into_bytes())
            .await
            .unwrap();
        let batch = b
            .create(&who, &file.id, "/v1/completions", "24h", None)
            .await
            .unwrap();
        assert_eq!((batch.total, batch.completed, batch.failed), (4, 0, 1));

        // Two runners: the three good lines go to whichever claims first, never to both.
        b.heartbeat("a").await.unwrap();
        b.heartbeat("b").await.unwrap();
        let got_a = b.claim("a", 2).await.unwrap();
        let got_b = b.claim("b", 5).await.unwrap();
        assert_eq!(got_a.len(), 2);
        assert_eq!(got_b.len(), 1);
        assert!(b.claim("b", 5).await.unwrap().is_empty());
        let ids: Vec<&str> = got_a
            .iter()
            .chain(&got_b)
            .map(|l| l.custom_id.as_str())
            .collect();
        assert_eq!(ids, ["one", "two", "three"]);

        // Runner a answers its first line; then it dies with the second unfinished.
        let staged = Staged {
            succeeded: true,
            response: r#"{"custom_id":"one","ok":1}"#.into(),
        };
        b.stage(&got_a[0], &staged).await.unwrap();
        b.finish(&got_a[0]).await.unwrap();
        b.finish(&got_a[0]).await.unwrap(); // a second finish counts nothing
        heartbeat_at(&t.db, "a", 0).await;
        // Live runners' lines are not orphans; a's is, and is taken over by one runner only.
        let taken = b.take_over_orphans("b", 15_000).await.unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].custom_id, "two");
        assert!(!taken[0].staged);
        assert!(b.take_over_orphans("b", 15_000).await.unwrap().is_empty());
        // Never settled: back to pending, and claimed again.
        b.release(&taken[0]).await.unwrap();
        let again = b.claim("b", 5).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].custom_id, "two");

        // Nothing ends while lines run.
        assert_eq!(b.finalize().await.unwrap(), 0);
        b.finish_with(
            &again[0],
            &Staged {
                succeeded: false,
                response: r#"{"custom_id":"two","error":1}"#.into(),
            },
        )
        .await
        .unwrap();
        b.stage(
            &got_b[0],
            &Staged {
                succeeded: true,
                response: r#"{"custom_id":"three"}"#.into(),
            },
        )
        .await
        .unwrap();
        b.finish(&got_b[0]).await.unwrap();
        assert_eq!(b.finalize().await.unwrap(), 1);
        assert_eq!(b.finalize().await.unwrap(), 0);

        let done = b.get(&who.org_id, &batch.id).await.unwrap().unwrap();
        assert_eq!(done.status, batches::Status::Completed);
        assert_eq!((done.total, done.completed, done.failed), (4, 2, 2));
        let (_, output) = b
            .file_content(&who.org_id, done.output_file_id.as_ref().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            output,
            "{\"custom_id\":\"one\",\"ok\":1}\n{\"custom_id\":\"three\"}\n"
        );
        let (_, errors) = b
            .file_content(&who.org_id, done.error_file_id.as_ref().unwrap())
            .await
            .unwrap()
            .unwrap();
        let lines: Vec<&str> = errors.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("Line 2: not valid JSON"), "{errors}");
        assert_eq!(lines[1], r#"{"custom_id":"two","error":1}"#);

        // Another organisation sees neither the batch nor its files.
        let other = org(&t.db, "org-b").await;
        assert!(b.get(&other.org_id, &batch.id).await.unwrap().is_none());
        assert!(b.file(&other.org_id, &file.id).await.unwrap().is_none());
        assert!(b.list(&other.org_id, None, 10).await.unwrap().0.is_empty());
        assert!(matches!(
            b.cancel(&other.org_id, &batch.id).await,
            Err(batches::BatchError::NotFound(..))
        ));
        t.finish().await;
    }
);

db::storage_test!(
    async fn cancelled_and_expired_batches_end_without_their_pending_lines(t) {
        let b = Batches::new(t.db.clone());
        let who = org(&t.db, "org-a").await;
        let content = [request("one"), request("two")].join("\n");
        let file = b
            .upload(&who.org_id, "batch", "in.jsonl", content.into_bytes())
            .await
            .unwrap();
        let cancelled = b
            .create(&who, &file.id, "/v1/completions", "24h", None)
            .await
            .unwrap();
        let expiring = b
            .create(&who, &file.id, "/v1/completions", "24h", None)
            .await
            .unwrap();
        b.heartbeat("r").await.unwrap();
        let running = b.claim("r", 1).await.unwrap();
        assert_eq!(running[0].batch_id, cancelled.id);
        assert_eq!(
            b.cancel(&who.org_id, &cancelled.id).await.unwrap().status,
            batches::Status::Cancelling
        );
        // Cancelling stops claims; the running line finishes first.
        db::sqlx::query("UPDATE batches SET expires_at = 0 WHERE id = $1")
            .bind(&expiring.id)
            .execute(t.db.pool())
            .await
            .unwrap();
        assert!(b.claim("r", 5).await.unwrap().is_empty());
        assert_eq!(b.finalize().await.unwrap(), 1); // the expired one
        b.finish_with(
            &running[0],
            &Staged {
                succeeded: true,
                response: "{}".into(),
            },
        )
        .await
        .unwrap();
        assert_eq!(b.finalize().await.unwrap(), 1);
        let c = b.get(&who.org_id, &cancelled.id).await.unwrap().unwrap();
        assert_eq!(c.status, batches::Status::Cancelled);
        assert_eq!((c.completed, c.failed), (1, 0));
        assert!(c.output_file_id.is_some() && c.error_file_id.is_none());
        let e = b.get(&who.org_id, &expiring.id).await.unwrap().unwrap();
        assert_eq!(e.status, batches::Status::Expired);
        assert_eq!((e.completed, e.failed), (0, 2));
        let (_, errors) = b
            .file_content(&who.org_id, e.error_file_id.as_ref().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(errors.matches("batch_expired").count(), 2);
        assert!(matches!(
            b.cancel(&who.org_id, &expiring.id).await,
            Err(batches::BatchError::Conflict(_))
        ));
        t.finish().await;
    }
);

db::storage_test!(
    async fn a_suspended_organisations_lines_wait_until_it_is_resumed(t) {
        let b = Batches::new(t.db.clone());
        let who = org(&t.db, "org-s").await;
        let file = b
            .upload(
                &who.org_id,
                "batch",
                "in.jsonl",
                request("one").into_bytes(),
            )
            .await
            .unwrap();
        b.create(&who, &file.id, "/v1/completions", "24h", None)
            .await
            .unwrap();
        b.heartbeat("r").await.unwrap();
        let suspend = |at: Option<i64>| {
            db::sqlx::query("UPDATE organizations SET suspended_at = $1 WHERE id = 'org-s'")
                .bind(at)
                .execute(t.db.pool())
        };
        suspend(Some(1)).await.unwrap();
        assert!(b.claim("r", 5).await.unwrap().is_empty());
        suspend(None).await.unwrap();
        assert_eq!(b.claim("r", 5).await.unwrap().len(), 1);
        t.finish().await;
    }
);
