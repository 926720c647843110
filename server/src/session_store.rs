//! tower-sessions records stored in the portal's database, so sessions survive restarts and are
//! shared by every instance. The signed-in user's id is kept in its own column so that a
//! password change or a removal can end all of that user's sessions at once.

use async_trait::async_trait;
use db::{Db, sqlx::Row};
use time::OffsetDateTime;
use tower_sessions::{
    ExpiredDeletion, SessionStore,
    session::{Id, Record},
    session_store,
};

#[derive(Clone, Debug)]
pub struct DbSessionStore {
    db: Db,
}

impl DbSessionStore {
    pub fn new(db: Db) -> Self {
        DbSessionStore { db }
    }
}

fn backend(e: impl std::fmt::Display) -> session_store::Error {
    session_store::Error::Backend(e.to_string())
}

fn user_id(record: &Record) -> Option<String> {
    record
        .data
        .get(app::ssr::AUTH_KEY)?
        .get("user_id")?
        .as_str()
        .map(str::to_string)
}

fn expires_ms(record: &Record) -> i64 {
    (record.expiry_date.unix_timestamp_nanos() / 1_000_000) as i64
}

#[async_trait]
impl SessionStore for DbSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let data = serde_json::to_string(&record.data).map_err(backend)?;
        // Ids are 128 random bits; on the rare collision, draw again.
        loop {
            let inserted = db::sqlx::query(
                "INSERT INTO sessions (id, user_id, data, expires_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(record.id.to_string())
            .bind(user_id(record))
            .bind(&data)
            .bind(expires_ms(record))
            .execute(self.db.pool())
            .await;
            match inserted {
                Ok(_) => return Ok(()),
                Err(e) if db::is_unique_violation(&e) => record.id = Id::default(),
                Err(e) => return Err(backend(e)),
            }
        }
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let data = serde_json::to_string(&record.data).map_err(backend)?;
        // Update only: a session deleted meanwhile (logout elsewhere, password change) must not
        // come back to life because an old request finished later.
        db::sqlx::query(
            "UPDATE sessions SET user_id = $1, data = $2, expires_at = $3 WHERE id = $4",
        )
        .bind(user_id(record))
        .bind(&data)
        .bind(expires_ms(record))
        .bind(record.id.to_string())
        .execute(self.db.pool())
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let row = db::sqlx::query(
            "SELECT data, expires_at FROM sessions WHERE id = $1 AND expires_at > $2",
        )
        .bind(id.to_string())
        .bind(db::now_ms())
        .fetch_optional(self.db.pool())
        .await
        .map_err(backend)?;
        let Some(row) = row else { return Ok(None) };
        let data: String = row.try_get("data").map_err(backend)?;
        let expires: i64 = row.try_get("expires_at").map_err(backend)?;
        Ok(Some(Record {
            id: *id,
            data: serde_json::from_str(&data).map_err(backend)?,
            expiry_date: OffsetDateTime::from_unix_timestamp_nanos(i128::from(expires) * 1_000_000)
                .map_err(backend)?,
        }))
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        db::sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(id.to_string())
            .execute(self.db.pool())
            .await
            .map_err(backend)?;
        Ok(())
    }
}

#[async_trait]
impl ExpiredDeletion for DbSessionStore {
    async fn delete_expired(&self) -> session_store::Result<()> {
        db::sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(db::now_ms())
            .execute(self.db.pool())
            .await
            .map_err(backend)?;
        Ok(())
    }
}
