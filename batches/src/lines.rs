//! The runner's side: claiming lines, staging and finishing their answers, taking over lines
//! whose runner died, and ending batches with their output and error files.

use db::{now_ms, sqlx::Row};
use serde_json::json;

use crate::{BatchError, Batches, Creator, Endpoint, Purpose, files::FileObject};

/// A line claimed by a runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub batch_id: String,
    pub line_no: i64,
    pub custom_id: String,
    /// The request body (a JSON object, as the endpoint takes it).
    pub body: String,
    pub endpoint: Endpoint,
    pub creator: Creator,
    /// The job that ran (or is running) the line, once admitted.
    pub job_id: Option<String>,
    /// Whether an answer was staged (written before the job was settled).
    pub staged: bool,
}

/// A line's answer: its line in the output file (`succeeded`) or in the error file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    pub succeeded: bool,
    pub response: String,
}

const LINE_SELECT: &str = "SELECT l.batch_id, l.line_no, l.custom_id, l.body, l.job_id, \
     l.response, l.runner_id, b.endpoint, b.org_id, b.user_id, b.api_key_id \
     FROM batch_lines l JOIN batches b ON b.id = l.batch_id";

fn line_from_row(r: &db::sqlx::any::AnyRow) -> Result<Line, BatchError> {
    let s = |c: &str| r.try_get::<String, _>(c).map_err(BatchError::storage);
    let os = |c: &str| {
        r.try_get::<Option<String>, _>(c)
            .map_err(BatchError::storage)
    };
    let endpoint = s("endpoint")?;
    Ok(Line {
        batch_id: s("batch_id")?,
        line_no: r.try_get("line_no").map_err(BatchError::storage)?,
        custom_id: os("custom_id")?.unwrap_or_default(),
        body: s("body")?,
        endpoint: Endpoint::parse(&endpoint)
            .ok_or_else(|| BatchError::Storage(format!("unknown endpoint {endpoint}")))?,
        creator: Creator {
            org_id: s("org_id")?,
            user_id: os("user_id")?,
            api_key_id: os("api_key_id")?,
        },
        job_id: os("job_id")?,
        staged: os("response")?.is_some(),
    })
}

impl Batches {
    /// Says that `runner` is alive; its lines are taken over when this stops for
    /// `stale_ms` (see [`Batches::take_over_orphans`]).
    pub async fn heartbeat(&self, runner: &str) -> Result<(), BatchError> {
        db::sqlx::query(
            "INSERT INTO batch_runners (id, heartbeat_at) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
        )
        .bind(runner)
        .bind(now_ms())
        .execute(self.db.pool())
        .await
        .map_err(BatchError::storage)?;
        Ok(())
    }

    /// Claims up to `limit` pending lines of open, unexpired batches, oldest batch first;
    /// a suspended organisation's lines wait until it is resumed.
    pub async fn claim(&self, runner: &str, limit: usize) -> Result<Vec<Line>, BatchError> {
        let rows = db::sqlx::query(&format!(
            "{LINE_SELECT} WHERE l.status = 'pending' AND b.status = 'in_progress' \
             AND b.expires_at > $1 AND NOT EXISTS (SELECT 1 FROM organizations o \
             WHERE o.id = b.org_id AND o.suspended_at IS NOT NULL) \
             ORDER BY b.created_at, b.id, l.line_no LIMIT $2"
        ))
        .bind(now_ms())
        .bind(limit as i64)
        .fetch_all(self.db.pool())
        .await
        .map_err(BatchError::storage)?;
        let mut claimed = Vec::new();
        for row in &rows {
            let line = line_from_row(row)?;
            // Another runner may have taken it since the read: only one update wins.
            let won = db::sqlx::query(
                "UPDATE batch_lines SET status = 'running', runner_id = $1 \
                 WHERE batch_id = $2 AND line_no = $3 AND status = 'pending'",
            )
            .bind(runner)
            .bind(&line.batch_id)
            .bind(line.line_no)
            .execute(self.db.pool())
            .await
            .map_err(BatchError::storage)?;
            if won.rows_affected() == 1 {
                claimed.push(line);
            }
        }
        Ok(claimed)
    }

    /// Records the job that runs the line (before it is queued, so a crash finds it).
    pub async fn set_job(&self, line: &Line, job_id: &str) -> Result<(), BatchError> {
        self.update_running(line, "job_id = $1", job_id).await
    }

    /// Stages the line's answer before its job is settled.
    pub async fn stage(&self, line: &Line, staged: &Staged) -> Result<(), BatchError> {
        db::sqlx::query(
            "UPDATE batch_lines SET response = $1, succeeded = $2 \
             WHERE batch_id = $3 AND line_no = $4 AND status = 'running'",
        )
        .bind(&staged.response)
        .bind(i32::from(staged.succeeded))
        .bind(&line.batch_id)
        .bind(line.line_no)
        .execute(self.db.pool())
        .await
        .map_err(BatchError::storage)?;
        Ok(())
    }

    /// Ends the line with its staged answer and counts it in its batch.
    pub async fn finish(&self, line: &Line) -> Result<(), BatchError> {
        let mut tx = self.db.begin_write().await.map_err(BatchError::storage)?;
        let row = db::sqlx::query(
            "SELECT succeeded, response FROM batch_lines \
             WHERE batch_id = $1 AND line_no = $2 AND status = 'running'",
        )
        .bind(&line.batch_id)
        .bind(line.line_no)
        .fetch_optional(&mut *tx)
        .await
        .map_err(BatchError::storage)?;
        let Some(row) = row else {
            return Ok(()); // finished already (by a runner that took it over)
        };
        if row
            .try_get::<Option<String>, _>("response")
            .map_err(BatchError::storage)?
            .is_none()
        {
            return Err(BatchError::Storage(format!(
                "line {} of {} has no staged answer",
                line.line_no, line.batch_id
            )));
        }
        let ok = row
            .try_get::<i32, _>("succeeded")
            .map_err(BatchError::storage)?
            == 1;
        db::sqlx::query("UPDATE batch_lines SET status = $1 WHERE batch_id = $2 AND line_no = $3")
            .bind(if ok { "done" } else { "failed" })
            .bind(&line.batch_id)
            .bind(line.line_no)
            .execute(&mut *tx)
            .await
            .map_err(BatchError::storage)?;
        let counter = if ok { "completed" } else { "failed" };
        db::sqlx::query(&format!(
            "UPDATE batches SET {counter} = {counter} + 1 WHERE id = $1"
        ))
        .bind(&line.batch_id)
        .execute(&mut *tx)
        .await
        .map_err(BatchError::storage)?;
        tx.commit().await.map_err(BatchError::storage)
    }

    /// Stages and finishes at once: for a line that ends without a job (a bad body, a refusal).
    pub async fn finish_with(&self, line: &Line, staged: &Staged) -> Result<(), BatchError> {
        self.stage(line, staged).await?;
        self.finish(line).await
    }

    /// Puts the line back to pending (the server was busy, or its runner died before its job
    /// was settled); another try starts from scratch.
    pub async fn release(&self, line: &Line) -> Result<(), BatchError> {
        db::sqlx::query(
            "UPDATE batch_lines SET status = 'pending', runner_id = NULL, job_id = NULL, \
             response = NULL, succeeded = 0 \
             WHERE batch_id = $1 AND line_no = $2 AND status = 'running'",
        )
        .bind(&line.batch_id)
        .bind(line.line_no)
        .execute(self.db.pool())
        .await
        .map_err(BatchError::storage)?;
        Ok(())
    }

    async fn update_running(&self, line: &Line, set: &str, value: &str) -> Result<(), BatchError> {
        db::sqlx::query(&format!(
            "UPDATE batch_lines SET {set} WHERE batch_id = $2 AND line_no = $3 AND status = 'running'"
        ))
        .bind(value)
        .bind(&line.batch_id)
        .bind(line.line_no)
        .execute(self.db.pool())
        .await
        .map_err(BatchError::storage)?;
        Ok(())
    }

    /// The lines `runner` holds as running (the runner compares them with those it is
    /// actually running, to pick up a line whose task ended in an error).
    pub async fn lines_of(&self, runner: &str) -> Result<Vec<Line>, BatchError> {
        db::sqlx::query(&format!(
            "{LINE_SELECT} WHERE l.status = 'running' AND l.runner_id = $1"
        ))
        .bind(runner)
        .fetch_all(self.db.pool())
        .await
        .map_err(BatchError::storage)?
        .iter()
        .map(line_from_row)
        .collect()
    }

    /// Takes over running lines whose runner's heartbeat is older than `stale_ms` (it died):
    /// they are claimed for `runner` and returned for the caller to finish (their job was
    /// settled: the staged answer stands) or release (it was not: void its hold first).
    pub async fn take_over_orphans(
        &self,
        runner: &str,
        stale_ms: i64,
    ) -> Result<Vec<Line>, BatchError> {
        let rows = db::sqlx::query(&format!(
            "{LINE_SELECT} WHERE l.status = 'running' AND NOT EXISTS \
             (SELECT 1 FROM batch_runners r WHERE r.id = l.runner_id AND r.heartbeat_at > $1)"
        ))
        .bind(now_ms() - stale_ms)
        .fetch_all(self.db.pool())
        .await
        .map_err(BatchError::storage)?;
        let mut taken = Vec::new();
        for row in &rows {
            let line = line_from_row(row)?;
            let old: Option<String> = row.try_get("runner_id").map_err(BatchError::storage)?;
            let won = db::sqlx::query(
                "UPDATE batch_lines SET runner_id = $1 WHERE batch_id = $2 AND line_no = $3 \
                 AND status = 'running' AND runner_id IS NOT DISTINCT FROM $4",
            )
            .bind(runner)
            .bind(&line.batch_id)
            .bind(line.line_no)
            .bind(old)
            .execute(self.db.pool())
            .await
            .map_err(BatchError::storage)?;
            if won.rows_affected() == 1 {
                taken.push(line);
            }
        }
        Ok(taken)
    }

    /// Ends every batch that has nothing left to run: all lines ended (completed), cancelled
    /// with no line running (cancelled), or past its window with no line running (expired;
    /// lines that never ran go to the error file). Writes the output and error files with the
    /// new status, in one transaction. Returns how many batches ended.
    pub async fn finalize(&self) -> Result<usize, BatchError> {
        let now = now_ms();
        let rows = db::sqlx::query(
            "SELECT b.id, b.org_id, b.status, b.expires_at, \
             (SELECT COUNT(*) FROM batch_lines l WHERE l.batch_id = b.id AND l.status = 'running') AS running, \
             (SELECT COUNT(*) FROM batch_lines l WHERE l.batch_id = b.id AND l.status = 'pending') AS pending \
             FROM batches b WHERE b.status IN ('in_progress', 'cancelling')",
        )
        .fetch_all(self.db.pool())
        .await
        .map_err(BatchError::storage)?;
        let mut ended = 0;
        for r in rows {
            let get_s = |c: &str| r.try_get::<String, _>(c).map_err(BatchError::storage);
            let get_i = |c: &str| r.try_get::<i64, _>(c).map_err(BatchError::storage);
            let (id, org_id, status) = (get_s("id")?, get_s("org_id")?, get_s("status")?);
            if get_i("running")? > 0 {
                continue;
            }
            let pending = get_i("pending")?;
            let target = match status.as_str() {
                "cancelling" => "cancelled",
                _ if pending == 0 => "completed",
                _ if get_i("expires_at")? <= now => "expired",
                _ => continue,
            };
            if self.end(&id, &org_id, &status, target, now).await? {
                ended += 1;
            }
        }
        Ok(ended)
    }

    async fn end(
        &self,
        id: &str,
        org_id: &str,
        from: &str,
        to: &str,
        now: i64,
    ) -> Result<bool, BatchError> {
        let mut tx = self.db.begin_write().await.map_err(BatchError::storage)?;
        let moved = db::sqlx::query(&format!(
            "UPDATE batches SET status = $1, {to}_at = $2 WHERE id = $3 AND status = $4"
        ))
        .bind(to)
        .bind(now)
        .bind(id)
        .bind(from)
        .execute(&mut *tx)
        .await
        .map_err(BatchError::storage)?;
        if moved.rows_affected() != 1 {
            return Ok(false); // another instance ended it
        }
        if to == "expired" {
            // Lines that never ran fail with OpenAI's code for them.
            let rows = db::sqlx::query(
                "SELECT line_no, custom_id FROM batch_lines WHERE batch_id = $1 AND status = 'pending'",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await
            .map_err(BatchError::storage)?;
            for r in &rows {
                let line_no: i64 = r.try_get("line_no").map_err(BatchError::storage)?;
                let custom_id: Option<String> =
                    r.try_get("custom_id").map_err(BatchError::storage)?;
                let entry = json!({
                    "id": format!("batch_req_{}", db::new_id()),
                    "custom_id": custom_id,
                    "response": null,
                    "error": {
                        "code": "batch_expired",
                        "message": "This request could not be executed before the completion window expired.",
                    },
                });
                db::sqlx::query(
                    "UPDATE batch_lines SET status = 'failed', response = $1, succeeded = 0 \
                     WHERE batch_id = $2 AND line_no = $3",
                )
                .bind(entry.to_string())
                .bind(id)
                .bind(line_no)
                .execute(&mut *tx)
                .await
                .map_err(BatchError::storage)?;
            }
            db::sqlx::query("UPDATE batches SET failed = failed + $1 WHERE id = $2")
                .bind(rows.len() as i64)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(BatchError::storage)?;
        }
        let mut file_ids = Vec::new();
        for (status, column, name) in [
            ("done", "output_file_id", "output"),
            ("failed", "error_file_id", "errors"),
        ] {
            let rows = db::sqlx::query(
                "SELECT response FROM batch_lines WHERE batch_id = $1 AND status = $2 \
                 ORDER BY line_no",
            )
            .bind(id)
            .bind(status)
            .fetch_all(&mut *tx)
            .await
            .map_err(BatchError::storage)?;
            if rows.is_empty() {
                continue;
            }
            let mut content = String::new();
            for r in &rows {
                let line: String = r.try_get("response").map_err(BatchError::storage)?;
                content.push_str(&line);
                content.push('\n');
            }
            let file: FileObject = self
                .store(
                    org_id,
                    Purpose::BatchOutput,
                    &format!("{id}_{name}.jsonl"),
                    &content,
                    Some(&mut tx),
                )
                .await?;
            file_ids.push((column, file.id));
        }
        for (column, file_id) in file_ids {
            db::sqlx::query(&format!("UPDATE batches SET {column} = $1 WHERE id = $2"))
                .bind(file_id)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(BatchError::storage)?;
        }
        tx.commit().await.map_err(BatchError::storage)?;
        Ok(true)
    }
}
