//! The Batches page's plain HTTP routes, under the signed-in session: the upload form
//! (multipart, so not a server function) and the downloads of a batch's results and errors.

use app::ssr::{AppState, user_of_session};
use axum::{
    extract::{FromRequest, Multipart, Path, Request, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use batches::{BatchError, COMPLETION_WINDOW, Creator};
use tower_sessions::Session;

use crate::openai::jsonl_download;

/// Where the form goes back to, with a notice or an error for the page to show.
fn back(key: &str, value: &str) -> Response {
    let query = serde_urlencoded::to_string([(key, value)]).unwrap_or_default();
    Redirect::to(&format!("/batches?{query}")).into_response()
}

/// `POST /batches/upload` (multipart: `endpoint`, `file`): stores the file and starts a batch
/// from it as the signed-in user, then returns to the page.
pub async fn upload(State(st): State<AppState>, session: Session, req: Request) -> Response {
    let user = match user_of_session(&st, &session).await {
        Ok(Some(user)) => user,
        Ok(None) => return Redirect::to("/login").into_response(),
        Err(app::AppError::Suspended) => return crate::downloads::suspended_response(),
        Err(e @ app::AppError::TwoFactorRequired) => {
            return (StatusCode::FORBIDDEN, e.to_string()).into_response();
        }
        Err(e) => {
            tracing::error!(error = %e, "batch upload: session");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    if !user.email_verified {
        return back("error", &app::AppError::Unverified.to_string());
    }
    let mut form = match Multipart::from_request(req, &()).await {
        Ok(f) => f,
        Err(e) => return back("error", &format!("The upload could not be read: {e}.")),
    };
    let (mut endpoint, mut file) = (None, None);
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return back(
                    "error",
                    &format!("The upload could not be read: {}.", e.body_text()),
                );
            }
        };
        match field.name() {
            Some("endpoint") => endpoint = field.text().await.ok(),
            Some("file") => {
                let name = field.file_name().unwrap_or("upload.jsonl").to_string();
                match field.bytes().await {
                    Ok(b) => file = Some((name, b)),
                    Err(e) => {
                        return back(
                            "error",
                            &format!("The file could not be read: {}.", e.body_text()),
                        );
                    }
                }
            }
            _ => {}
        }
    }
    let (Some(endpoint), Some((name, bytes))) = (endpoint, file) else {
        return back("error", "Choose an endpoint and a JSONL file.");
    };
    let creator = Creator {
        org_id: user.org_id.clone(),
        user_id: Some(user.id.clone()),
        api_key_id: None,
    };
    let made = async {
        let f = st
            .batches
            .upload(&user.org_id, "batch", &name, bytes.to_vec())
            .await?;
        st.batches
            .create(&creator, &f.id, &endpoint, COMPLETION_WINDOW, None)
            .await
    };
    match made.await {
        Ok(b) => back("created", &b.id),
        Err(BatchError::Storage(e)) => {
            tracing::error!(error = %e, "batch upload");
            back("error", "The batch could not be stored; try again.")
        }
        Err(e) => back("error", &e.to_string()),
    }
}

/// `GET /batches/{id}/output.jsonl` or `/errors.jsonl`: the organisation's batch's file.
pub async fn download(
    State(st): State<AppState>,
    session: Session,
    Path((id, which)): Path<(String, String)>,
) -> Response {
    let user = match crate::downloads::signed_in(&st, &session, "Log in to download batch results.")
        .await
    {
        Ok(user) => user,
        Err(refused) => return refused,
    };
    let found = async {
        let Some(batch) = st.batches.get(&user.org_id, &id).await? else {
            return Ok(None);
        };
        let file_id = match which.as_str() {
            "output.jsonl" => batch.output_file_id,
            "errors.jsonl" => batch.error_file_id,
            _ => None,
        };
        match file_id {
            Some(f) => st.batches.file_content(&user.org_id, &f).await,
            None => Ok(None),
        }
    };
    match found.await {
        Ok(Some((file, content))) => jsonl_download(content, &file.filename),
        Ok(None) => (StatusCode::NOT_FOUND, "No such batch file.").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "batch download");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
