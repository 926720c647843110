//! `GET /statements/{partner}/{period}/{file}`: a statement as its canonical CSV or as a PDF,
//! and the usage events behind it as CSV. Served to the partner's own users and to operators;
//! anyone else, and any partner asking for another's, gets 404.

use app::ssr::AppState;
use axum::{
    extract::{Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use tower_sessions::Session;

use crate::downloads::attachment;

pub async fn download(
    State(st): State<AppState>,
    session: Session,
    Path((partner, period, file)): Path<(String, String, String)>,
) -> Response {
    let user =
        match crate::downloads::signed_in(&st, &session, "Log in to download statements.").await {
            Ok(user) => user,
            Err(refused) => return refused,
        };
    let partner_id = match app::api::access::statement_partner(&st, &user, Some(&partner)).await {
        Ok(id) => id,
        Err(app::AppError::NotFound | app::AppError::Forbidden) => return not_found(),
        Err(e) => return error(e),
    };
    let Ok(period) = statements::Period::parse(&period) else {
        return not_found();
    };
    let now = db::now_ms();
    let statement = match st.statements.statement(&partner_id, period, now).await {
        Ok(s) => s,
        Err(e) => return error(e.into()),
    };
    let slug = slug(&statement.document.partner_name);
    match file.as_str() {
        "statement.csv" => attachment(
            statement.csv,
            "text/csv; charset=utf-8",
            &format!("tokenmill-statement-{slug}-{period}.csv"),
        ),
        "statement.pdf" => {
            let issued_on = match &statement.status {
                statements::StatementStatus::Closed {
                    sha256, closed_at, ..
                } => Some((sha256.as_str(), statements::date_label(*closed_at))),
                statements::StatementStatus::Draft => None,
            };
            let issued = issued_on
                .as_ref()
                .map(|(sha256, date)| statements::pdf::Issued { sha256, date });
            let pdf = statements::pdf::render(&statement.document, issued);
            let mut res = pdf.into_response();
            let h = res.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/pdf"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!(
                "attachment; filename=\"tokenmill-statement-{slug}-{period}.pdf\""
            )) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res
        }
        "usage.csv" => match st.statements.usage_csv(&partner_id, period, now).await {
            Ok(csv) => attachment(
                csv,
                "text/csv; charset=utf-8",
                &format!("tokenmill-usage-{slug}-{period}.csv"),
            ),
            Err(e) => error(e.into()),
        },
        _ => not_found(),
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "No such statement.").into_response()
}

fn error(e: app::AppError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status == StatusCode::NOT_FOUND {
        return not_found();
    }
    (status, e.to_string()).into_response()
}

/// A partner name for a file name: lowercase ASCII letters and digits joined by dashes.
fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        "partner".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn file_names_use_a_plain_slug_of_the_partner() {
        assert_eq!(super::slug("Savanna Cloud, Ltd."), "savanna-cloud-ltd");
        assert_eq!(super::slug("Ærø"), "r");
        assert_eq!(super::slug("—"), "partner");
    }
}
