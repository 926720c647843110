//! Batch jobs, as OpenAI's Files and Batch APIs have them: a JSONL file of requests is uploaded,
//! a batch is made from it, its lines run one by one as batch-priority jobs (each with its own
//! hold, taken when the line starts), and when every line has ended the answers and the errors
//! are written as two JSONL files.
//!
//! Every line is a row with its own state, so a batch resumes where it was after a restart and
//! no line runs or is charged twice: a runner claims pending lines under its id and keeps its
//! heartbeat fresh; the answer is staged on the line before its job is settled, and a line whose
//! runner died is either finished from that staged answer (its job was settled) or put back to
//! pending (its job never was; the caller voids that job's hold). This crate keeps the state;
//! running a line (parsing its body, the job, the answer's shape) is the API layer's.

mod files;
mod lines;

use std::sync::Arc;

use db::{Db, new_id, now_ms, sqlx::Row};
use serde_json::{Map, Value, json};
use tokio::sync::Notify;

pub use files::{FileObject, FileQuota, MAX_FILE_BYTES, Purpose};
pub use lines::{Line, Staged};

/// Most lines in one batch (OpenAI's limit).
pub const MAX_LINES: usize = 50_000;
/// The only completion window offered, as OpenAI offers it.
pub const COMPLETION_WINDOW: &str = "24h";
const WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Bad input, named as the API names it.
    #[error("{message}")]
    Invalid {
        param: &'static str,
        message: String,
    },
    #[error("No {0} found with id '{1}'.")]
    NotFound(&'static str, String),
    /// The request is valid but the object's state does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// The database had no connection free in time: nothing was done; retry shortly.
    #[error("The server is busy; retry shortly.")]
    Busy,
    /// The organisation's files are at their quota.
    #[error("{0}")]
    Quota(String),
    #[error("storage: {0}")]
    Storage(String),
}

impl BatchError {
    fn storage(e: impl std::error::Error + 'static) -> BatchError {
        if db::is_pool_timeout(&e) {
            return BatchError::Busy;
        }
        BatchError::Storage(e.to_string())
    }

    fn invalid(param: &'static str, message: impl Into<String>) -> BatchError {
        BatchError::Invalid {
            param,
            message: message.into(),
        }
    }
}

/// The endpoints a batch may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    pub fn url(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
        }
    }

    pub fn parse(url: &str) -> Option<Endpoint> {
        match url {
            "/v1/chat/completions" => Some(Endpoint::Chat),
            "/v1/completions" => Some(Endpoint::Completions),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    InProgress,
    Completed,
    Cancelling,
    Cancelled,
    Expired,
}

impl Status {
    pub fn code(self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Cancelling => "cancelling",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
        }
    }

    fn parse(code: &str) -> Result<Status, BatchError> {
        Ok(match code {
            "in_progress" => Status::InProgress,
            "completed" => Status::Completed,
            "cancelling" => Status::Cancelling,
            "cancelled" => Status::Cancelled,
            "expired" => Status::Expired,
            other => return Err(BatchError::Storage(format!("unknown batch status {other}"))),
        })
    }

    /// Whether lines may still start or run.
    pub fn is_open(self) -> bool {
        matches!(self, Status::InProgress | Status::Cancelling)
    }
}

/// Who made a batch: its lines run as this organisation, user and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creator {
    pub org_id: String,
    pub user_id: Option<String>,
    pub api_key_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub id: String,
    pub org_id: String,
    pub endpoint: Endpoint,
    pub input_file_id: String,
    pub status: Status,
    pub total: i64,
    pub completed: i64,
    pub failed: i64,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub metadata: Option<Map<String, Value>>,
    /// Milliseconds since the epoch, like every time here.
    pub created_at: i64,
    pub expires_at: i64,
    pub completed_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub expired_at: Option<i64>,
}

impl Batch {
    /// The batch object of OpenAI's API (times in seconds).
    pub fn to_openai(&self) -> Value {
        let s = |ms: Option<i64>| ms.map(|v| v / 1000);
        json!({
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint.url(),
            "errors": null,
            "input_file_id": self.input_file_id,
            "completion_window": COMPLETION_WINDOW,
            "status": self.status.code(),
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at / 1000,
            "in_progress_at": self.created_at / 1000,
            "expires_at": self.expires_at / 1000,
            "finalizing_at": s(self.completed_at),
            "completed_at": s(self.completed_at),
            "failed_at": null,
            "expired_at": s(self.expired_at),
            "cancelling_at": s(self.cancelling_at),
            "cancelled_at": s(self.cancelled_at),
            "request_counts": {
                "total": self.total,
                "completed": self.completed,
                "failed": self.failed,
            },
            "metadata": self.metadata,
        })
    }
}

const BATCH_COLUMNS: &str = "id, org_id, endpoint, input_file_id, status, total, completed, \
     failed, output_file_id, error_file_id, metadata, created_at, expires_at, \
     completed_at, cancelling_at, cancelled_at, expired_at";

fn batch_from_row(r: &db::sqlx::any::AnyRow) -> Result<Batch, BatchError> {
    let get_s = |c: &str| r.try_get::<String, _>(c).map_err(BatchError::storage);
    let get_os = |c: &str| {
        r.try_get::<Option<String>, _>(c)
            .map_err(BatchError::storage)
    };
    let get_i = |c: &str| r.try_get::<i64, _>(c).map_err(BatchError::storage);
    let get_oi = |c: &str| r.try_get::<Option<i64>, _>(c).map_err(BatchError::storage);
    let endpoint = get_s("endpoint")?;
    Ok(Batch {
        id: get_s("id")?,
        org_id: get_s("org_id")?,
        endpoint: Endpoint::parse(&endpoint)
            .ok_or_else(|| BatchError::Storage(format!("unknown endpoint {endpoint}")))?,
        input_file_id: get_s("input_file_id")?,
        status: Status::parse(&get_s("status")?)?,
        total: get_i("total")?,
        completed: get_i("completed")?,
        failed: get_i("failed")?,
        output_file_id: get_os("output_file_id")?,
        error_file_id: get_os("error_file_id")?,
        metadata: get_os("metadata")?
            .map(|m| serde_json::from_str(&m))
            .transpose()
            .map_err(BatchError::storage)?,
        created_at: get_i("created_at")?,
        expires_at: get_i("expires_at")?,
        completed_at: get_oi("completed_at")?,
        cancelling_at: get_oi("cancelling_at")?,
        cancelled_at: get_oi("cancelled_at")?,
        expired_at: get_oi("expired_at")?,
    })
}

/// One input line, checked: what the runner will send, or why the line fails at once.
enum Checked {
    Request {
        custom_id: String,
        body: String,
    },
    Malformed {
        custom_id: Option<String>,
        message: String,
    },
}

fn check_line(text: &str, n: usize, endpoint: Endpoint) -> Checked {
    let bad = |custom_id: Option<String>, why: String| Checked::Malformed {
        custom_id,
        message: format!("Line {n}: {why}"),
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return bad(None, format!("not valid JSON ({e}).")),
    };
    let Some(obj) = value.as_object() else {
        return bad(None, "a line must be a JSON object.".into());
    };
    let custom_id = match obj.get("custom_id") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 512 => {
            // A control character (`\u0000` in the JSON) cannot be stored or matched up
            // reliably: the line fails alone, like any other malformed one.
            if let Err(message) = text::check("custom_id", s, text::Lines::Single) {
                return bad(None, message);
            }
            s.clone()
        }
        _ => {
            return bad(
                None,
                "custom_id must be a non-empty string of at most 512 characters.".into(),
            );
        }
    };
    let some = Some(custom_id.clone());
    if obj.get("method").and_then(Value::as_str) != Some("POST") {
        return bad(some, "method must be \"POST\".".into());
    }
    if obj.get("url").and_then(Value::as_str) != Some(endpoint.url()) {
        return bad(
            some,
            format!("url must be \"{}\", the batch's endpoint.", endpoint.url()),
        );
    }
    match obj.get("body") {
        Some(b @ Value::Object(_)) => Checked::Request {
            custom_id,
            body: b.to_string(),
        },
        _ => bad(some, "body must be a JSON object.".into()),
    }
}

/// A line of the error file for a line that never ran.
fn malformed_entry(custom_id: Option<&str>, message: &str) -> String {
    json!({
        "id": format!("batch_req_{}", new_id()),
        "custom_id": custom_id,
        "response": null,
        "error": { "code": "invalid_request", "message": message },
    })
    .to_string()
}

#[derive(Clone, Debug)]
pub struct Batches {
    db: Db,
    quota: FileQuota,
    /// Wakes this instance's runner when there is new work (a batch made or cancelled, a line
    /// ended).
    work: Arc<Notify>,
}

impl Batches {
    pub fn new(db: Db) -> Batches {
        Batches {
            db,
            quota: FileQuota::default(),
            work: Arc::new(Notify::new()),
        }
    }

    /// The same, with `quota` on each organisation's files.
    pub fn with_quota(self, quota: FileQuota) -> Batches {
        Batches { quota, ..self }
    }

    /// Tells the runner to look for work now.
    pub fn wake(&self) {
        self.work.notify_one();
    }

    /// Waits until [`Batches::wake`] is called (the runner also polls, for other instances'
    /// work).
    pub async fn woken(&self) {
        self.work.notified().await;
    }

    /// Makes a batch from an uploaded `batch` file. Malformed lines (bad JSON, missing or
    /// repeated custom_id, another URL) fail at once with their reason; the rest wait to run.
    pub async fn create(
        &self,
        creator: &Creator,
        input_file_id: &str,
        endpoint: &str,
        completion_window: &str,
        metadata: Option<Map<String, Value>>,
    ) -> Result<Batch, BatchError> {
        let endpoint = Endpoint::parse(endpoint).ok_or_else(|| {
            BatchError::invalid(
                "endpoint",
                format!(
                    "endpoint must be /v1/chat/completions or /v1/completions, not {endpoint:?}."
                ),
            )
        })?;
        if completion_window != COMPLETION_WINDOW {
            return Err(BatchError::invalid(
                "completion_window",
                format!("completion_window must be \"{COMPLETION_WINDOW}\"."),
            ));
        }
        if let Some(m) = &metadata
            && (m.len() > 16 || m.values().any(|v| !v.is_string()))
        {
            return Err(BatchError::invalid(
                "metadata",
                "metadata takes at most 16 string values.",
            ));
        }
        let (file, content) = self
            .file_content(&creator.org_id, input_file_id)
            .await?
            .ok_or_else(|| BatchError::NotFound("file", input_file_id.to_string()))?;
        if file.purpose != Purpose::Batch {
            return Err(BatchError::invalid(
                "input_file_id",
                format!("File {input_file_id} was not uploaded with purpose \"batch\"."),
            ));
        }
        let checked = check_lines(&content, endpoint)?;
        let malformed = checked
            .iter()
            .filter(|c| matches!(c, Checked::Malformed { .. }))
            .count() as i64;
        let id = format!("batch_{}", new_id());
        let now = now_ms();
        let mut tx = self.db.begin_write().await.map_err(BatchError::storage)?;
        db::sqlx::query(
            "INSERT INTO batches (id, org_id, user_id, api_key_id, endpoint, input_file_id, \
             status, total, completed, failed, metadata, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'in_progress', $7, 0, $8, $9, $10, $11)",
        )
        .bind(&id)
        .bind(&creator.org_id)
        .bind(&creator.user_id)
        .bind(&creator.api_key_id)
        .bind(endpoint.url())
        .bind(input_file_id)
        .bind(checked.len() as i64)
        .bind(malformed)
        .bind(
            metadata
                .as_ref()
                .map(|m| Value::Object(m.clone()).to_string()),
        )
        .bind(now)
        .bind(now + WINDOW_MS)
        .execute(&mut *tx)
        .await
        .map_err(BatchError::storage)?;
        let mut lines = db::Rows::new(&LINE_COLUMNS);
        for (n, c) in checked.iter().enumerate() {
            let (custom_id, body, status, response) = match c {
                Checked::Request { custom_id, body } => {
                    (Some(custom_id.as_str()), body.as_str(), "pending", None)
                }
                Checked::Malformed { custom_id, message } => (
                    custom_id.as_deref(),
                    "",
                    "failed",
                    Some(malformed_entry(custom_id.as_deref(), message)),
                ),
            };
            lines.push([
                id.as_str().into(),
                (n as i64).into(),
                custom_id.into(),
                body.into(),
                status.into(),
                response.into(),
                0i64.into(),
            ]);
        }
        let mut writes: db::Batch<()> = self.db.batch();
        writes.insert_rows("batch_lines", lines);
        writes
            .run(&mut tx)
            .await
            .map_err(|e| BatchError::Storage(e.to_string()))?;
        tx.commit().await.map_err(BatchError::storage)?;
        self.wake();
        self.get(&creator.org_id, &id)
            .await?
            .ok_or_else(|| BatchError::Storage("the new batch vanished".into()))
    }

    /// A batch of this organisation (another organisation's is not found).
    pub async fn get(&self, org_id: &str, id: &str) -> Result<Option<Batch>, BatchError> {
        db::sqlx::query(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1 AND org_id = $2"
        ))
        .bind(id)
        .bind(org_id)
        .fetch_optional(self.db.pool())
        .await
        .map_err(BatchError::storage)?
        .map(|r| batch_from_row(&r))
        .transpose()
    }

    /// The organisation's batches, newest first, after the batch `after` (OpenAI's cursor);
    /// the flag says whether more follow.
    pub async fn list(
        &self,
        org_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Batch>, bool), BatchError> {
        let cursor = match after {
            Some(a) => Some(
                self.get(org_id, a)
                    .await?
                    .ok_or_else(|| BatchError::NotFound("batch", a.to_string()))?,
            ),
            None => None,
        };
        let (before_at, before_id) = cursor
            .map(|b| (b.created_at, b.id))
            .unwrap_or((i64::MAX, String::new()));
        let rows = db::sqlx::query(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE org_id = $1 \
             AND (created_at < $2 OR (created_at = $2 AND id < $3)) \
             ORDER BY created_at DESC, id DESC LIMIT $4"
        ))
        .bind(org_id)
        .bind(before_at)
        .bind(if before_at == i64::MAX {
            "\u{10ffff}".to_string()
        } else {
            before_id
        })
        .bind(limit as i64 + 1)
        .fetch_all(self.db.pool())
        .await
        .map_err(BatchError::storage)?;
        let mut batches = rows
            .iter()
            .map(batch_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let more = batches.len() > limit;
        batches.truncate(limit);
        Ok((batches, more))
    }

    /// Stops starting lines; lines already running finish, then the batch is cancelled with
    /// files for what ran. Cancelling a finished batch is a conflict; twice is harmless.
    pub async fn cancel(&self, org_id: &str, id: &str) -> Result<Batch, BatchError> {
        let batch = self
            .get(org_id, id)
            .await?
            .ok_or_else(|| BatchError::NotFound("batch", id.to_string()))?;
        match batch.status {
            Status::InProgress => {
                db::sqlx::query(
                    "UPDATE batches SET status = 'cancelling', cancelling_at = $1 \
                     WHERE id = $2 AND status = 'in_progress'",
                )
                .bind(now_ms())
                .bind(id)
                .execute(self.db.pool())
                .await
                .map_err(BatchError::storage)?;
                self.wake();
            }
            Status::Cancelling | Status::Cancelled => {}
            other => {
                return Err(BatchError::Conflict(format!(
                    "Batch {id} is {} and cannot be cancelled.",
                    other.code()
                )));
            }
        }
        self.get(org_id, id)
            .await?
            .ok_or_else(|| BatchError::NotFound("batch", id.to_string()))
    }
}

/// The columns of a batch's lines as [`Batches::create`] writes them.
const LINE_COLUMNS: [(&str, db::Column); 7] = [
    ("batch_id", db::Column::Text),
    ("line_no", db::Column::Int),
    ("custom_id", db::Column::Text),
    ("body", db::Column::Text),
    ("status", db::Column::Text),
    ("response", db::Column::Text),
    ("succeeded", db::Column::Int),
];

/// Every non-blank line of an input file checked (a repeated custom_id makes its line
/// malformed). Refuses a file with no request line, with no valid one (saying why for the
/// first few), or with more than [`MAX_LINES`].
fn check_lines(content: &str, endpoint: Endpoint) -> Result<Vec<Checked>, BatchError> {
    let mut seen = std::collections::HashSet::new();
    let mut checked = Vec::new();
    for (i, text) in content.lines().enumerate() {
        if text.trim().is_empty() {
            continue;
        }
        let mut c = check_line(text, i + 1, endpoint);
        if let Checked::Request { custom_id, .. } = &c
            && !seen.insert(custom_id.clone())
        {
            c = Checked::Malformed {
                custom_id: Some(custom_id.clone()),
                message: format!(
                    "Line {}: custom_id {custom_id:?} is used by an earlier line; each must be unique.",
                    i + 1
                ),
            };
        }
        checked.push(c);
    }
    if checked.is_empty() {
        return Err(BatchError::invalid(
            "input_file_id",
            "The input file has no request lines.",
        ));
    }
    // A batch in which nothing could run would only "complete" with errors: refuse it and
    // say why, as a validation failure.
    if checked
        .iter()
        .all(|c| matches!(c, Checked::Malformed { .. }))
    {
        let reasons: Vec<&str> = checked
            .iter()
            .take(3)
            .filter_map(|c| match c {
                Checked::Malformed { message, .. } => Some(message.as_str()),
                Checked::Request { .. } => None,
            })
            .collect();
        return Err(BatchError::invalid(
            "input_file_id",
            format!(
                "No line of the input file is a valid request. {}",
                reasons.join(" ")
            ),
        ));
    }
    if checked.len() > MAX_LINES {
        return Err(BatchError::invalid(
            "input_file_id",
            format!(
                "The input file has {} lines; a batch takes at most {MAX_LINES}.",
                checked.len()
            ),
        ));
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_with_no_connection_free_is_busy_not_a_storage_failure() {
        let busy = BatchError::storage(db::sqlx::Error::PoolTimedOut);
        assert!(matches!(busy, BatchError::Busy));
        let broken = BatchError::storage(db::sqlx::Error::RowNotFound);
        assert!(matches!(broken, BatchError::Storage(_)));
    }
}
