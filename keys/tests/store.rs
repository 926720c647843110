//! API keys against real databases (SQLite always, PostgreSQL when TEST_DATABASE_URL is set):
//! shown once and stored only as a hash, revocation and expiry effective on the next request,
//! last use recorded, and one organisation unable to see or revoke another's keys.

use db::{Db, sqlx::Row};
use keys::{ApiKeys, KeyError, well_formed};

async fn org(db: &Db, name: &str) -> String {
    let id = db::new_id();
    db::sqlx::query(
        "INSERT INTO organizations (id, name, kind, region, created_at) VALUES ($1, $2, 'startup', 'europe', $3)",
    )
    .bind(&id)
    .bind(name)
    .bind(db::now_ms())
    .execute(db.pool())
    .await
    .unwrap();
    id
}

db::storage_test!(
    async fn a_key_is_shown_once_stored_as_a_hash_and_authenticates(t) {
        async fn story(db: &Db) {
            let keys = ApiKeys::new(db.clone());
            let acme = org(db, "Acme").await;
            let (key, secret) = keys
                .create(&acme, "user-1", "  ci deploys ", None)
                .await
                .unwrap();
            assert!(well_formed(&secret));
            assert_eq!(key.name, "ci deploys");
            assert!(secret.starts_with(&key.display[..8]));
            assert!(secret.ends_with(&key.display[key.display.len() - 4..]));
            // Nothing stored contains the secret or its random part.
            let row = db::sqlx::query("SELECT * FROM api_keys WHERE id = $1")
                .bind(&key.id)
                .fetch_one(db.pool())
                .await
                .unwrap();
            for col in ["name", "display", "key_hash"] {
                let v: String = row.get(col);
                assert!(!v.contains(&secret[4..20]), "{col} holds the secret");
            }
            let who = keys.authenticate(&secret).await.unwrap();
            assert_eq!(
                (who.org_id.as_str(), who.created_by.as_str()),
                (acme.as_str(), "user-1")
            );
            let listed = keys.list(&acme).await.unwrap();
            assert_eq!(listed.len(), 1);
            assert!(listed[0].last_used_at.is_some());
            // A well-formed key that was never issued, and a mistyped one.
            let (other, other_secret) = keys.create(&acme, "user-1", "b", None).await.unwrap();
            db::sqlx::query("DELETE FROM api_keys WHERE id = $1")
                .bind(&other.id)
                .execute(db.pool())
                .await
                .unwrap();
            assert_eq!(
                keys.authenticate(&other_secret).await,
                Err(KeyError::Invalid)
            );
            let typo = secret.replacen(
                &secret[5..6],
                if &secret[5..6] == "x" { "y" } else { "x" },
                1,
            );
            assert_eq!(keys.authenticate(&typo).await, Err(KeyError::Invalid));
            assert_eq!(
                keys.authenticate("Bearer nonsense").await,
                Err(KeyError::Invalid)
            );
        }
        story(&t.db).await;
        t.finish().await;
    }
);

db::storage_test!(
    async fn revoked_and_expired_keys_stop_at_once(t) {
        async fn story(db: &Db) {
            let keys = ApiKeys::new(db.clone());
            let acme = org(db, "Acme").await;
            let (key, secret) = keys.create(&acme, "u", "k", None).await.unwrap();
            assert!(keys.authenticate(&secret).await.is_ok());
            keys.revoke(&acme, &key.id).await.unwrap();
            assert_eq!(keys.authenticate(&secret).await, Err(KeyError::Revoked));
            // Revoking again is fine; the list shows when.
            keys.revoke(&acme, &key.id).await.unwrap();
            assert!(keys.list(&acme).await.unwrap()[0].revoked_at.is_some());

            let soon = db::now_ms() + 60_000;
            let (key, secret) = keys
                .create(&acme, "u", "short-lived", Some(soon))
                .await
                .unwrap();
            assert!(keys.authenticate(&secret).await.is_ok());
            db::sqlx::query("UPDATE api_keys SET expires_at = $1 WHERE id = $2")
                .bind(db::now_ms() - 1)
                .bind(&key.id)
                .execute(db.pool())
                .await
                .unwrap();
            assert_eq!(keys.authenticate(&secret).await, Err(KeyError::Expired));
        }
        story(&t.db).await;
        t.finish().await;
    }
);

db::storage_test!(
    async fn bad_names_and_past_expiry_are_refused(t) {
        async fn story(db: &Db) {
            let keys = ApiKeys::new(db.clone());
            let acme = org(db, "Acme").await;
            for name in ["", "   ", &"x".repeat(65)] {
                assert!(matches!(
                    keys.create(&acme, "u", name, None).await,
                    Err(KeyError::BadInput(_))
                ));
            }
            assert!(matches!(
                keys.create(&acme, "u", "k", Some(db::now_ms() - 1000)).await,
                Err(KeyError::BadInput(m)) if m.contains("future")
            ));
            assert!(keys.list(&acme).await.unwrap().is_empty());
        }
        story(&t.db).await;
        t.finish().await;
    }
);

db::storage_test!(
    async fn one_organisation_cannot_see_or_revoke_anothers_keys(t) {
        async fn story(db: &Db) {
            let keys = ApiKeys::new(db.clone());
            let (acme, rival) = (org(db, "Acme").await, org(db, "Rival").await);
            let (key, secret) = keys.create(&acme, "u", "prod", None).await.unwrap();
            assert!(keys.list(&rival).await.unwrap().is_empty());
            assert_eq!(keys.revoke(&rival, &key.id).await, Err(KeyError::NotFound));
            assert_eq!(
                keys.revoke(&acme, "no-such-key").await,
                Err(KeyError::NotFound)
            );
            // Still valid for its owner.
            assert_eq!(keys.authenticate(&secret).await.unwrap().org_id, acme);
        }
        story(&t.db).await;
        t.finish().await;
    }
);
