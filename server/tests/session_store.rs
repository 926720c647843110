//! The database session store on every backend: what tower-sessions relies on, plus the
//! user index that lets a password change end a user's other sessions.

use std::collections::HashMap;

use server::session_store::DbSessionStore;
use time::{Duration, OffsetDateTime};
use tower_sessions::{
    ExpiredDeletion, SessionStore,
    session::{Id, Record},
};

fn record(user: Option<&str>, expires_in: Duration) -> Record {
    let mut data = HashMap::new();
    if let Some(user) = user {
        data.insert(
            "auth".to_string(),
            serde_json::json!({ "user_id": user, "logged_in_at": 0 }),
        );
    }
    Record {
        id: Id::default(),
        data,
        expiry_date: OffsetDateTime::now_utc() + expires_in,
    }
}

db::storage_test!(
    async fn sessions_are_created_loaded_saved_and_deleted(t) {
        let store = DbSessionStore::new(t.db.clone());
        let mut r = record(Some("u1"), Duration::hours(1));
        store.create(&mut r).await.unwrap();
        let loaded = store.load(&r.id).await.unwrap().expect("stored");
        assert_eq!(loaded.data, r.data);

        r.data.insert("k".into(), serde_json::json!(1));
        store.save(&r).await.unwrap();
        assert_eq!(store.load(&r.id).await.unwrap().unwrap().data["k"], 1);

        store.delete(&r.id).await.unwrap();
        assert!(store.load(&r.id).await.unwrap().is_none());
        // Saving a deleted session does not bring it back.
        store.save(&r).await.unwrap();
        assert!(store.load(&r.id).await.unwrap().is_none());
        t.finish().await;
    }
);

db::storage_test!(
    async fn expired_sessions_are_not_loaded_and_are_swept(t) {
        let store = DbSessionStore::new(t.db.clone());
        let mut old = record(None, Duration::seconds(-1));
        let mut live = record(None, Duration::hours(1));
        store.create(&mut old).await.unwrap();
        store.create(&mut live).await.unwrap();
        assert!(store.load(&old.id).await.unwrap().is_none());
        store.delete_expired().await.unwrap();
        let left: i64 = db::sqlx::query_scalar("SELECT COUNT(*) FROM sessions")
            .fetch_one(t.db.pool())
            .await
            .unwrap();
        assert_eq!(left, 1);
        t.finish().await;
    }
);

db::storage_test!(
    async fn a_users_sessions_can_be_ended_except_one(t) {
        let store = DbSessionStore::new(t.db.clone());
        let mut keep = record(Some("u1"), Duration::hours(1));
        let mut other = record(Some("u1"), Duration::hours(1));
        let mut someone_else = record(Some("u2"), Duration::hours(1));
        for r in [&mut keep, &mut other, &mut someone_else] {
            store.create(r).await.unwrap();
        }
        let accounts = accounts::Accounts::new(t.db.clone(), accounts::LoginLimits::default());
        let ended = accounts
            .end_sessions("u1", Some(&keep.id.to_string()))
            .await
            .unwrap();
        assert_eq!(ended, 1);
        assert!(store.load(&keep.id).await.unwrap().is_some());
        assert!(store.load(&other.id).await.unwrap().is_none());
        assert!(store.load(&someone_else.id).await.unwrap().is_some());
        t.finish().await;
    }
);
