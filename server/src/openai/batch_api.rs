//! OpenAI's Files and Batch APIs: `/v1/files` (multipart upload, list, get, content, delete)
//! and `/v1/batches` (create, get, list, cancel). The lines run in the batch runner.

use axum::{
    Json,
    extract::{FromRequest, Multipart, Path, Query, Request, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use batches::{BatchError, Creator, MAX_FILE_BYTES, Purpose};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{ApiError, ApiState, Caller};

impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> ApiError {
        let message = e.to_string();
        match e {
            BatchError::Invalid { param, .. } => ApiError::invalid(param, message),
            BatchError::NotFound(..) => ApiError::not_found(message, "not_found"),
            BatchError::Conflict(_) => {
                ApiError::conflict(StatusCode::CONFLICT, message, "invalid_state")
            }
            BatchError::Busy => ApiError::busy(message),
            BatchError::Quota(_) => {
                ApiError::conflict(StatusCode::FORBIDDEN, message, "file_quota_exceeded")
            }
            BatchError::Storage(detail) => {
                tracing::error!(error = %detail, "batch storage failed");
                ApiError::internal("The request could not be completed; try again.")
            }
        }
    }
}

fn creator(caller: &Caller) -> Creator {
    let p = caller.principal();
    Creator {
        org_id: p.org_id,
        user_id: p.user_id,
        api_key_id: p.api_key_id,
    }
}

/// `POST /v1/files`: multipart with `purpose` ("batch") and `file`.
pub async fn upload(State(s): State<ApiState>, caller: Caller, req: Request) -> Response {
    let run = async {
        let mut form = Multipart::from_request(req, &()).await.map_err(|e| {
            ApiError::invalid(
                "file",
                format!("Send the file as multipart/form-data with fields purpose and file ({e})."),
            )
        })?;
        let (mut purpose, mut file) = (None, None);
        loop {
            let field = form.next_field().await.map_err(multipart_error)?;
            let Some(field) = field else { break };
            match field.name() {
                Some("purpose") => purpose = Some(field.text().await.map_err(multipart_error)?),
                Some("file") => {
                    let name = field.file_name().unwrap_or("upload.jsonl").to_string();
                    file = Some((name, field.bytes().await.map_err(multipart_error)?));
                }
                _ => {}
            }
        }
        let purpose =
            purpose.ok_or_else(|| ApiError::invalid("purpose", "The purpose field is missing."))?;
        let (name, bytes) =
            file.ok_or_else(|| ApiError::invalid("file", "The file field is missing."))?;
        let org = caller.key.org_id.clone();
        let f = s
            .batches
            .upload(&org, &purpose, &name, bytes.to_vec())
            .await?;
        Ok::<_, ApiError>(Json(f.to_openai()))
    };
    match run.await {
        Ok(r) => r.into_response(),
        Err(e) => e.into_response(),
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    let status = e.status();
    ApiError {
        status: if status == StatusCode::PAYLOAD_TOO_LARGE {
            status
        } else {
            StatusCode::BAD_REQUEST
        },
        ..ApiError::invalid(
            "file",
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("The file is larger than {} MiB.", MAX_FILE_BYTES >> 20)
            } else {
                format!("The multipart body could not be read: {}.", e.body_text())
            },
        )
    }
}

#[derive(Deserialize)]
pub struct FileQuery {
    purpose: Option<String>,
    limit: Option<usize>,
}

pub async fn list_files(
    State(s): State<ApiState>,
    caller: Caller,
    Query(q): Query<FileQuery>,
) -> Result<Json<Value>, ApiError> {
    let purpose = match q.purpose.as_deref() {
        None | Some("") => None,
        Some(p) => Some(Purpose::parse(p).ok_or_else(|| {
            ApiError::invalid("purpose", "purpose must be batch or batch_output.")
        })?),
    };
    let limit = q.limit.unwrap_or(10_000).clamp(1, 10_000);
    let files = s.batches.files(&caller.key.org_id, purpose, limit).await?;
    let data: Vec<Value> = files.iter().map(|f| f.to_openai()).collect();
    Ok(Json(
        json!({ "object": "list", "data": data, "has_more": false }),
    ))
}

fn no_file(id: &str) -> ApiError {
    ApiError {
        param: Some("file_id"),
        ..ApiError::not_found(format!("No such File object: {id}"), "not_found")
    }
}

pub async fn get_file(
    State(s): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let f = s.batches.file(&caller.key.org_id, &id).await?;
    Ok(Json(f.ok_or_else(|| no_file(&id))?.to_openai()))
}

pub async fn file_content(
    State(s): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (file, content) = s
        .batches
        .file_content(&caller.key.org_id, &id)
        .await?
        .ok_or_else(|| no_file(&id))?;
    Ok(jsonl_download(content, &file.filename))
}

/// A JSONL file as a download.
pub fn jsonl_download(content: String, filename: &str) -> Response {
    crate::downloads::attachment(content, "application/jsonl; charset=utf-8", filename)
}

pub async fn delete_file(
    State(s): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if s.batches.delete_file(&caller.key.org_id, &id).await? {
        Ok(Json(json!({ "id": id, "object": "file", "deleted": true })))
    } else {
        Err(no_file(&id))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBatch {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    metadata: Option<Map<String, Value>>,
}

pub async fn create_batch(
    State(s): State<ApiState>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(&body);
    let req: CreateBatch = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        const FIELDS: [&str; 4] = ["input_file_id", "endpoint", "completion_window", "metadata"];
        let inner = e.inner().to_string();
        // A missing field has an empty path: its name is in serde's message.
        let missing = FIELDS
            .into_iter()
            .find(|f| inner.starts_with(&format!("missing field `{f}`")));
        let path = e.path().to_string();
        match missing {
            Some(field) => ApiError::invalid(field, format!("{field} is required.")),
            None => ApiError::invalid(
                FIELDS.into_iter().find(|f| *f == path).unwrap_or("body"),
                format!("Invalid batch request: {inner}."),
            ),
        }
    })?;
    let batch = s
        .batches
        .create(
            &creator(&caller),
            &req.input_file_id,
            &req.endpoint,
            &req.completion_window,
            req.metadata,
        )
        .await?;
    Ok(Json(batch.to_openai()))
}

pub async fn get_batch(
    State(s): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let b = s.batches.get(&caller.key.org_id, &id).await?;
    Ok(Json(
        b.ok_or(BatchError::NotFound("batch", id))?.to_openai(),
    ))
}

#[derive(Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
}

pub async fn list_batches(
    State(s): State<ApiState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(20).clamp(1, 100);
    let (list, more) = s
        .batches
        .list(&caller.key.org_id, q.after.as_deref(), limit)
        .await?;
    let data: Vec<Value> = list.iter().map(|b| b.to_openai()).collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "first_id": list.first().map(|b| &b.id),
        "last_id": list.last().map(|b| &b.id),
        "has_more": more,
    })))
}

pub async fn cancel_batch(
    State(s): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        s.batches.cancel(&caller.key.org_id, &id).await?.to_openai(),
    ))
}
