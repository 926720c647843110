//! Request-level security: the client address, cross-site request refusal (CSRF) and the
//! response headers every page gets.

use std::net::SocketAddr;

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use app::ssr::ClientIp;

/// Settings the middleware needs, cloned into each request.
#[derive(Clone, Debug)]
pub struct SecurityPolicy {
    pub trust_proxy: bool,
    pub public_url: Option<String>,
}

/// Attaches [`ClientIp`] to the request: the socket peer, or with a trusted proxy the first
/// address in `X-Forwarded-For`.
pub async fn client_ip(
    State(policy): State<SecurityPolicy>,
    mut req: Request,
    next: Next,
) -> Response {
    let forwarded = policy
        .trust_proxy
        .then(|| {
            req.headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        })
        .flatten();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let ip = forwarded.or(peer).unwrap_or_else(|| "unknown".to_string());
    req.extensions_mut().insert(ClientIp(ip));
    next.run(req).await
}

fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Why a state-changing request was refused, or `None` if it may proceed.
///
/// Every unsafe method must show that it comes from our own pages: `Sec-Fetch-Site` (sent by
/// every current browser) must be `same-origin` or `none`, and `Origin`, when sent, must be our
/// origin. A request with neither header is refused too: browsers always send one of them on a
/// POST, so only a non-browser client lacks both, and it can add `Origin` itself. This covers
/// server functions, which have no CSRF protection of their own.
pub fn cross_site_refusal(
    method: &Method,
    headers: &HeaderMap,
    public_url: Option<&str>,
) -> Option<&'static str> {
    if is_safe(method) {
        return None;
    }
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if let Some(site) = fetch_site
        && site != "same-origin"
        && site != "none"
    {
        return Some("cross-site request refused (Sec-Fetch-Site)");
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(origin) => {
            let expected = match public_url {
                Some(url) => url.trim_end_matches('/').to_string(),
                None => {
                    let host = headers
                        .get(header::HOST)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    // Without a configured public URL, the origin's host must be the Host the
                    // request was sent to (either scheme: TLS may end at a proxy).
                    let origin_host = origin
                        .strip_prefix("http://")
                        .or_else(|| origin.strip_prefix("https://"))
                        .unwrap_or("");
                    return (origin_host.is_empty() || origin_host != host)
                        .then_some("cross-origin request refused (Origin)");
                }
            };
            (origin != expected).then_some("cross-origin request refused (Origin)")
        }
        None if fetch_site.is_some() => None,
        None => Some("request refused: no Origin or Sec-Fetch-Site header"),
    }
}

pub async fn csrf(State(policy): State<SecurityPolicy>, req: Request, next: Next) -> Response {
    if let Some(reason) =
        cross_site_refusal(req.method(), req.headers(), policy.public_url.as_deref())
    {
        tracing::warn!(method = %req.method(), path = req.uri().path(), reason, "refused");
        return (StatusCode::FORBIDDEN, reason).into_response();
    }
    next.run(req).await
}

/// Every request of the cookie-authenticated routes, checked before a handler sees it:
/// - a body over `limit` is refused with `413`, whether it announced its length or was sent
///   in chunks (a server function would otherwise report a chunked one as a malformed
///   argument);
/// - a query value or form field holding NUL or another control character (tab and line
///   breaks aside) is refused with `400` naming the field, the same on both databases
///   (PostgreSQL refuses NUL in text, SQLite would store it). Server functions get the
///   refusal as their own error type, so the page shows it next to the field; stricter rules
///   (no line break in a name) belong to the domain types that parse each field.
pub async fn clean_input(State(limit): State<usize>, req: Request, next: Next) -> Response {
    let is_server_fn = req.uri().path().starts_with("/api/");
    if let Some(query) = req.uri().query()
        && let Some((field, c)) = control_in_form(query.as_bytes())
    {
        return refuse_field(is_server_fn, &field, c);
    }
    if is_safe(req.method()) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return if too_large {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("The request body is larger than {} KiB.", limit / 1024),
                )
                    .into_response()
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    "The request body could not be read.",
                )
                    .into_response()
            };
        }
    };
    let is_form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if is_form && let Some((field, c)) = control_in_form(&bytes) {
        return refuse_field(is_server_fn, &field, c);
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// The first field of a URL-encoded form (or query) whose name or value holds a control
/// character other than a tab or a line break.
fn control_in_form(encoded: &[u8]) -> Option<(String, char)> {
    form_urlencoded::parse(encoded).find_map(|(name, value)| {
        text::find_control(&value, text::Lines::Multi)
            .or_else(|| text::find_control(&name, text::Lines::Single))
            .map(|c| (name.into_owned(), c))
    })
}

fn refuse_field(is_server_fn: bool, field: &str, c: char) -> Response {
    let field: String = field.chars().filter(|c| !c.is_control()).take(64).collect();
    let message = text::control_message(&field, c);
    if is_server_fn {
        let body = serde_json::to_string(&app::AppError::Field {
            field: field.clone(),
            message,
        })
        .unwrap_or_default();
        (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    } else {
        (StatusCode::BAD_REQUEST, message).into_response()
    }
}

/// Headers that keep pages from being framed, sniffed or leaking URLs.
pub async fn headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.entry("content-security-policy")
        .or_insert(HeaderValue::from_static("frame-ancestors 'none'"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn same_origin_posts_pass() {
        let h = headers(&[
            ("host", "127.0.0.1:3000"),
            ("origin", "http://127.0.0.1:3000"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(cross_site_refusal(&Method::POST, &h, None), None);
    }

    #[test]
    fn foreign_origins_and_cross_site_fetches_are_refused() {
        let h = headers(&[
            ("host", "127.0.0.1:3000"),
            ("origin", "http://evil.example"),
        ]);
        assert!(cross_site_refusal(&Method::POST, &h, None).is_some());
        let h = headers(&[("host", "127.0.0.1:3000"), ("sec-fetch-site", "cross-site")]);
        assert!(cross_site_refusal(&Method::POST, &h, None).is_some());
        let h = headers(&[("host", "127.0.0.1:3000"), ("origin", "null")]);
        assert!(cross_site_refusal(&Method::POST, &h, None).is_some());
        let h = headers(&[
            ("host", "console.example"),
            ("origin", "https://console.example"),
        ]);
        assert!(cross_site_refusal(&Method::POST, &h, Some("https://other.example")).is_some());
        assert!(cross_site_refusal(&Method::POST, &h, Some("https://console.example")).is_none());
    }

    #[test]
    fn a_post_without_origin_or_fetch_metadata_is_refused_but_a_get_is_not() {
        let h = headers(&[("host", "127.0.0.1:3000")]);
        assert!(cross_site_refusal(&Method::POST, &h, None).is_some());
        assert!(cross_site_refusal(&Method::GET, &h, None).is_none());
    }
}
