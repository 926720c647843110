//! Files (OpenAI's Files API): batch input uploaded by a tenant, and the output and error
//! files its batches write. Content is UTF-8 JSONL, kept in the database so that every portal
//! instance sees it.
//!
//! Each organisation holds at most [`FileQuota`] at once (uploads and batch results alike);
//! an upload over it is refused before anything is written, counted in the same transaction
//! that inserts it. Deleting a file drops its content at once and gives the space back: on
//! SQLite the freed pages return to the filesystem ([`db::Db::reclaim_space`]); on PostgreSQL
//! autovacuum makes them reusable for the next rows (the file does not shrink, and it does not
//! grow again until that space is used).

use db::{
    new_id, now_ms,
    sqlx::{FromRow, Row},
};
use serde_json::{Value, json};

use crate::{BatchError, Batches};

/// Largest file accepted: 64 MiB (kept whole in the database and read whole to make a batch).
pub const MAX_FILE_BYTES: usize = 64 << 20;

/// What one organisation may hold in files at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileQuota {
    pub max_files: i64,
    pub max_bytes: i64,
}

impl Default for FileQuota {
    fn default() -> Self {
        FileQuota {
            max_files: 200,
            max_bytes: 512 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Input to a batch.
    Batch,
    /// Written by a batch: its answers or its errors.
    BatchOutput,
}

impl Purpose {
    pub fn code(self) -> &'static str {
        match self {
            Purpose::Batch => "batch",
            Purpose::BatchOutput => "batch_output",
        }
    }

    pub fn parse(code: &str) -> Option<Purpose> {
        match code {
            "batch" => Some(Purpose::Batch),
            "batch_output" => Some(Purpose::BatchOutput),
            _ => None,
        }
    }
}

/// A stored purpose this build does not know: a row it cannot read.
#[derive(Debug, thiserror::Error)]
#[error("unknown file purpose {0:?} in storage")]
pub struct UnknownPurpose(String);

impl TryFrom<String> for Purpose {
    type Error = UnknownPurpose;

    fn try_from(code: String) -> Result<Purpose, UnknownPurpose> {
        Purpose::parse(&code).ok_or(UnknownPurpose(code))
    }
}

/// Read from rows of `files` by column name.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FileObject {
    pub id: String,
    #[sqlx(try_from = "String")]
    pub purpose: Purpose,
    pub filename: String,
    pub bytes: i64,
    pub created_at: i64,
}

impl FileObject {
    /// The file object of OpenAI's API.
    pub fn to_openai(&self) -> Value {
        json!({
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at / 1000,
            "filename": self.filename,
            "purpose": self.purpose.code(),
            "status": "processed",
            "status_details": null,
        })
    }
}

/// A file name as shown back: the last path component, without control characters.
fn clean_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base.chars().filter(|c| !c.is_control()).take(255).collect();
    if cleaned.is_empty() {
        "upload.jsonl".into()
    } else {
        cleaned
    }
}

impl Batches {
    /// Stores an uploaded file. Only `batch` files are uploaded; they must be UTF-8 and at most
    /// [`MAX_FILE_BYTES`] (lines are checked when a batch is made, so that one bad line fails
    /// alone).
    pub async fn upload(
        &self,
        org_id: &str,
        purpose: &str,
        filename: &str,
        content: Vec<u8>,
    ) -> Result<FileObject, BatchError> {
        if Purpose::parse(purpose) != Some(Purpose::Batch) {
            return Err(BatchError::invalid(
                "purpose",
                format!("purpose must be \"batch\", not {purpose:?}."),
            ));
        }
        if content.len() > MAX_FILE_BYTES {
            return Err(BatchError::invalid(
                "file",
                format!("The file is larger than {} MiB.", MAX_FILE_BYTES >> 20),
            ));
        }
        let content = String::from_utf8(content).map_err(|e| {
            BatchError::invalid(
                "file",
                format!(
                    "The file is not UTF-8 text (invalid byte at offset {}); upload JSONL.",
                    e.utf8_error().valid_up_to()
                ),
            )
        })?;
        // Raw control bytes are never valid JSONL (JSON escapes them), and PostgreSQL cannot
        // store a NUL: say where the first one is instead of failing in storage.
        let control = content
            .lines()
            .enumerate()
            .find_map(|(n, line)| text::find_control(line, text::Lines::Multi).map(|c| (n + 1, c)));
        if let Some((line, c)) = control {
            return Err(BatchError::invalid(
                "file",
                text::control_message(&format!("Line {line} of the file"), c),
            ));
        }
        if content.trim().is_empty() {
            return Err(BatchError::invalid("file", "The file is empty."));
        }
        let mut tx = self.db.begin_write().await.map_err(BatchError::storage)?;
        self.check_quota(&mut tx, org_id, content.len() as i64)
            .await?;
        let file = self
            .store(
                org_id,
                Purpose::Batch,
                &clean_name(filename),
                &content,
                Some(&mut tx),
            )
            .await?;
        tx.commit().await.map_err(BatchError::storage)?;
        Ok(file)
    }

    /// Refuses an upload of `bytes` that would take the organisation past its quota. Run in
    /// the upload's transaction after locking the organisation's row (on PostgreSQL), so that
    /// concurrent uploads are counted one after the other.
    async fn check_quota(
        &self,
        tx: &mut db::WriteTx,
        org_id: &str,
        bytes: i64,
    ) -> Result<(), BatchError> {
        db::sqlx::query(&format!(
            "SELECT id FROM organizations WHERE id = $1{}",
            self.db.lock_rows()
        ))
        .bind(org_id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(BatchError::storage)?;
        let row = db::sqlx::query(
            "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(bytes), 0) AS BIGINT) AS total FROM files \
             WHERE org_id = $1 AND deleted_at IS NULL",
        )
        .bind(org_id)
        .fetch_one(&mut **tx)
        .await
        .map_err(BatchError::storage)?;
        let n: i64 = row.try_get("n").map_err(BatchError::storage)?;
        let total: i64 = row.try_get("total").map_err(BatchError::storage)?;
        let q = self.quota;
        if n + 1 > q.max_files {
            return Err(BatchError::Quota(format!(
                "Your organisation has {n} files, the most it may keep ({}). Delete files you no longer need (DELETE /v1/files/{{id}}) and upload again.",
                q.max_files
            )));
        }
        if total + bytes > q.max_bytes {
            return Err(BatchError::Quota(format!(
                "This file ({} bytes) would take your organisation's files to {} bytes, over its quota of {} MiB. Delete files you no longer need (DELETE /v1/files/{{id}}) and upload again.",
                bytes,
                total + bytes,
                q.max_bytes >> 20
            )));
        }
        Ok(())
    }

    /// Writes a file (inside `tx` when given, so a batch's result files appear with its end).
    pub(crate) async fn store(
        &self,
        org_id: &str,
        purpose: Purpose,
        filename: &str,
        content: &str,
        tx: Option<&mut db::WriteTx>,
    ) -> Result<FileObject, BatchError> {
        let file = FileObject {
            id: format!("file-{}", new_id()),
            purpose,
            filename: filename.to_string(),
            bytes: content.len() as i64,
            created_at: now_ms(),
        };
        let q = db::sqlx::query(
            "INSERT INTO files (id, org_id, purpose, filename, bytes, content, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&file.id)
        .bind(org_id)
        .bind(purpose.code())
        .bind(&file.filename)
        .bind(file.bytes)
        .bind(content)
        .bind(file.created_at);
        match tx {
            Some(tx) => q.execute(&mut **tx).await,
            None => q.execute(self.db.pool()).await,
        }
        .map_err(BatchError::storage)?;
        Ok(file)
    }

    /// A file of this organisation (deleted ones and other organisations' are not found).
    pub async fn file(&self, org_id: &str, id: &str) -> Result<Option<FileObject>, BatchError> {
        db::sqlx::query(
            "SELECT id, purpose, filename, bytes, created_at FROM files \
             WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL",
        )
        .bind(id)
        .bind(org_id)
        .fetch_optional(self.db.pool())
        .await
        .map_err(BatchError::storage)?
        .map(|r| FileObject::from_row(&r).map_err(BatchError::storage))
        .transpose()
    }

    pub async fn file_content(
        &self,
        org_id: &str,
        id: &str,
    ) -> Result<Option<(FileObject, String)>, BatchError> {
        let Some(row) = db::sqlx::query(
            "SELECT id, purpose, filename, bytes, created_at, content FROM files \
             WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL",
        )
        .bind(id)
        .bind(org_id)
        .fetch_optional(self.db.pool())
        .await
        .map_err(BatchError::storage)?
        else {
            return Ok(None);
        };
        let content = row.try_get("content").map_err(BatchError::storage)?;
        let file = FileObject::from_row(&row).map_err(BatchError::storage)?;
        Ok(Some((file, content)))
    }

    /// The organisation's files, newest first.
    pub async fn files(
        &self,
        org_id: &str,
        purpose: Option<Purpose>,
        limit: usize,
    ) -> Result<Vec<FileObject>, BatchError> {
        let rows = db::sqlx::query(
            "SELECT id, purpose, filename, bytes, created_at FROM files \
             WHERE org_id = $1 AND deleted_at IS NULL AND ($2 = '' OR purpose = $2) \
             ORDER BY created_at DESC, id DESC LIMIT $3",
        )
        .bind(org_id)
        .bind(purpose.map_or("", Purpose::code))
        .bind(limit as i64)
        .fetch_all(self.db.pool())
        .await
        .map_err(BatchError::storage)?;
        rows.iter()
            .map(|r| FileObject::from_row(r).map_err(BatchError::storage))
            .collect()
    }

    /// Deletes a file (its content is dropped; a batch made from it keeps its lines).
    pub async fn delete_file(&self, org_id: &str, id: &str) -> Result<bool, BatchError> {
        let done = db::sqlx::query(
            "UPDATE files SET deleted_at = $1, content = '' \
             WHERE id = $2 AND org_id = $3 AND deleted_at IS NULL",
        )
        .bind(now_ms())
        .bind(id)
        .bind(org_id)
        .execute(self.db.pool())
        .await
        .map_err(BatchError::storage)?;
        if done.rows_affected() == 1
            && let Err(e) = self.db.reclaim_space().await
        {
            // The file is gone either way; the space comes back at the next deletion.
            tracing::warn!(error = %e, "giving back the space of a deleted file failed");
        }
        Ok(done.rows_affected() == 1)
    }
}
