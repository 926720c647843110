//! Server functions of the Batches page: the organisation's batches with their progress, and
//! cancelling one. Uploading (a multipart form) and the result downloads are plain HTTP routes
//! (`POST /batches/upload`, `GET /batches/{id}/output.jsonl` and `/errors.jsonl`).

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::AppError;
#[cfg(feature = "ssr")]
use crate::{api::date_time, ssr::*};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchView {
    pub id: String,
    pub endpoint: String,
    /// OpenAI's status word ("in_progress", "completed", "cancelling", …).
    pub status: String,
    pub total: i64,
    pub completed: i64,
    pub failed: i64,
    pub created: String,
    pub has_output: bool,
    pub has_errors: bool,
    /// Lines may still start or run (the page keeps polling while any batch is open).
    pub open: bool,
}

#[server(endpoint = "batch_views")]
pub async fn batch_views() -> Result<Vec<BatchView>, AppError> {
    let (app, user) = signed_in().await?;
    let (list, _) = app
        .batches
        .list(&user.org_id, None, 100)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "batch list");
            with_status(AppError::Internal)
        })?;
    Ok(list
        .into_iter()
        .map(|b| BatchView {
            endpoint: b.endpoint.url().to_string(),
            status: b.status.code().to_string(),
            total: b.total,
            completed: b.completed,
            failed: b.failed,
            created: date_time(b.created_at),
            has_output: b.output_file_id.is_some(),
            has_errors: b.error_file_id.is_some(),
            open: b.status.is_open(),
            id: b.id,
        })
        .collect())
}

#[server(endpoint = "batch_cancel")]
pub async fn cancel_batch(id: String) -> Result<(), AppError> {
    let app = state()?;
    let user = require_user().await.map_err(with_status)?;
    match app.batches.cancel(&user.org_id, &id).await {
        Ok(_) => Ok(()),
        Err(batches::BatchError::NotFound(..)) => Err(with_status(AppError::NotFound)),
        Err(batches::BatchError::Conflict(m)) => Err(with_status(AppError::Invalid(m))),
        Err(e) => {
            tracing::error!(error = %e, "batch cancel");
            Err(with_status(AppError::Internal))
        }
    }
}
