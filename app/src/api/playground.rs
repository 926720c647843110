//! Server functions of the Playground page: the models the organisation may use (with prices
//! and context), and a finished job's receipt (tokens, cost, the balance after it). The chat
//! itself streams from `POST /playground/chat`.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::AppError;
#[cfg(feature = "ssr")]
use crate::ssr::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlaygroundModel {
    pub id: String,
    /// Dollars per million input (prompt) tokens, exact.
    pub input_per_mtok: String,
    pub output_per_mtok: String,
    /// The longest prompt plus answer, in tokens, this portal's worker runs.
    pub context: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerReceipt {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// The charge, exact, in dollars ("$0.000012").
    pub cost: String,
    /// Cut short (stopped): only delivered tokens were charged.
    pub partial: bool,
    /// Measured on the server: from admission to the first token.
    pub ttft_ms: Option<i64>,
    pub duration_ms: i64,
    /// What the organisation can spend now.
    pub balance: String,
}

#[cfg(feature = "ssr")]
fn job_error(e: jobs::JobError) -> AppError {
    match e {
        jobs::JobError::Storage(detail) => {
            tracing::error!(error = %detail, "playground storage");
            AppError::Internal
        }
        other => AppError::Invalid(other.to_string()),
    }
}

#[server(endpoint = "playground_models")]
pub async fn playground_models() -> Result<Vec<PlaygroundModel>, AppError> {
    let app = state()?;
    require_user().await.map_err(with_status)?;
    let available = app.jobs.available_models().await.map_err(job_error)?;
    let prices = app.compute.prices().await.map_err(with_status)?;
    let context = |model: &str| {
        let worker = app.jobs.pool()?.worker_for(model).ok()?;
        Some(worker.info.context as u64)
    };
    Ok(prices
        .into_iter()
        .filter(|p| available.contains(&p.model_id))
        .map(|p| PlaygroundModel {
            context: context(&p.model_id),
            id: p.model_id,
            input_per_mtok: p.input_per_mtok.to_string(),
            output_per_mtok: p.output_per_mtok.to_string(),
        })
        .collect())
}

/// The receipt of one of the organisation's jobs. A stopped job settles in the background, so
/// this waits a little while it is still running; a job of another organisation is not found.
#[server(endpoint = "job_receipt")]
pub async fn job_receipt(job_id: String) -> Result<AnswerReceipt, AppError> {
    let (app, user) = signed_in().await?;
    let job_id = job_id
        .trim()
        .trim_start_matches("chatcmpl-")
        .trim_start_matches("cmpl-")
        .to_string();
    for _ in 0..50 {
        match app
            .jobs
            .job_status(&user.org_id, &job_id)
            .await
            .map_err(job_error)?
            .as_deref()
        {
            None => return Err(with_status(AppError::NotFound)),
            Some("failed") => {
                return Err(with_status(AppError::Conflict(
                    "The model failed while answering; nothing was charged.".into(),
                )));
            }
            _ => {}
        }
        if let Some(e) = app
            .jobs
            .usage_of_job(&user.org_id, &job_id)
            .await
            .map_err(job_error)?
        {
            let balance = app
                .credits
                .wallet(&user.org_id, db::now_ms())
                .await
                .map_err(with_status)?
                .available();
            return Ok(AnswerReceipt {
                prompt_tokens: e.prompt_tokens,
                completion_tokens: e.completion_tokens,
                cost: e.amount.to_string(),
                partial: e.partial,
                ttft_ms: e.ttft_ms,
                duration_ms: e.duration_ms,
                balance: balance.to_string(),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(with_status(AppError::NotFound))
}
