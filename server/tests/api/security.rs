//! RELIABILITY A3, A5–A8 through the HTTP surface: sessions, cookies, CSRF, login limits.

use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::Value;

use crate::helpers::*;

/// A client that sends exactly the cookie given, with no jar.
fn raw_client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn me_with_cookie(app: &TestApp, cookie: &str) -> Value {
    raw_client()
        .post(format!("{}/api/me", app.base))
        .header("origin", &app.base)
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn login_issues_a_new_session_id_and_the_old_one_stops_working() {
    let app = spawn_app().await;
    app.owner("ada@example.com", "Acme").await;
    let b = app.browser();
    let first = b.login("ada@example.com", PASSWORD).await;
    let old = cookie_pair(&session_cookie(&first).expect("session cookie"));
    assert_eq!(me_with_cookie(&app, &old).await["email"], "ada@example.com");

    let second = b.login("ada@example.com", PASSWORD).await;
    let new = cookie_pair(&session_cookie(&second).expect("a new session cookie"));
    assert_ne!(old, new);
    assert_eq!(me_with_cookie(&app, &old).await, Value::Null);
    assert_eq!(me_with_cookie(&app, &new).await["email"], "ada@example.com");
    // The id carries at least 128 bits: 16 bytes, base64 without padding.
    let id = new.split_once('=').unwrap().1;
    assert!(id.len() >= 22, "{id}");
}

#[tokio::test]
async fn logout_deletes_the_session_on_the_server() {
    let app = spawn_app().await;
    app.owner("ada@example.com", "Acme").await;
    let b = app.browser();
    let r = b.login("ada@example.com", PASSWORD).await;
    let cookie = cookie_pair(&session_cookie(&r).unwrap());
    b.post("/api/logout", &[]).await;
    assert_eq!(me_with_cookie(&app, &cookie).await, Value::Null);
}

#[tokio::test]
async fn the_session_cookie_is_http_only_and_same_site_lax() {
    let app = spawn_app().await;
    app.owner("ada@example.com", "Acme").await;
    let r = app.browser().login("ada@example.com", PASSWORD).await;
    let c = session_cookie(&r).unwrap();
    assert!(c.starts_with("tokenmill_session="), "{c}");
    assert!(c.contains("HttpOnly"), "{c}");
    assert!(c.contains("SameSite=Lax"), "{c}");
    assert!(c.contains("Path=/"), "{c}");
    assert!(
        !c.contains("Secure"),
        "plain HTTP cannot carry a Secure cookie: {c}"
    );
}

#[tokio::test]
async fn over_https_the_cookie_is_secure_with_the_host_prefix() {
    let app =
        spawn_app_with(|c| c.public_url = Some("https://console.tokenmill.test".into())).await;
    let b = app.browser();
    assert_eq!(
        b.sign_up("ada@example.com", "Acme").await.status(),
        StatusCode::OK
    );
    let r = b.login("ada@example.com", PASSWORD).await;
    let c = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("__Host-tokenmill_session="))
        .expect("a __Host- cookie");
    assert!(
        c.contains("Secure") && c.contains("HttpOnly") && c.contains("SameSite=Lax"),
        "{c}"
    );
    assert!(!c.contains("Domain="), "{c}");
}

#[tokio::test]
async fn a_cross_origin_post_to_a_server_function_is_refused() {
    let app = spawn_app().await;
    let owner = app.owner("ada@example.com", "Acme").await;
    for (origin, fetch_site) in [
        (Some("http://evil.example"), None),
        (None, Some("cross-site")),
        (Some("http://evil.example"), Some("same-site")),
        (None, None),
    ] {
        let mut req = owner
            .client
            .post(format!("{}/api/invite", app.base))
            .form(&[("email", "mallory@evil.example"), ("role", "owner")]);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        if let Some(s) = fetch_site {
            req = req.header("sec-fetch-site", s);
        }
        let r = req.send().await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::FORBIDDEN,
            "{origin:?} {fetch_site:?}"
        );
    }
    let (_, team) = owner.json("/api/team", &[]).await;
    assert_eq!(team["invitations"], Value::Array(vec![]));
    // Logging in from another site is refused too (login CSRF).
    let r = app
        .browser()
        .client
        .post(format!("{}/api/login", app.base))
        .header("origin", "http://evil.example")
        .form(&[("email", "ada@example.com"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn repeated_failures_are_limited_with_retry_after() {
    let app = spawn_app().await;
    app.owner("ada@example.com", "Acme").await;
    let attacker = app.browser();
    for _ in 0..10 {
        let r = attacker.login("ada@example.com", "wrong guess here").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = attacker.login("ada@example.com", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 15 * 60, "{retry}");
    // Another client (another address) is not locked out by it.
    let other = app.browser();
    let r = other
        .client
        .post(format!("{}/api/login", app.base))
        .header("origin", &app.base)
        .header("x-forwarded-for", "203.0.113.9")
        .form(&[("email", "ada@example.com"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn changing_the_password_cycles_this_session_and_ends_the_others() {
    let app = spawn_app().await;
    let here = app.owner("ada@example.com", "Acme").await;
    let elsewhere = app.browser();
    elsewhere.login("ada@example.com", PASSWORD).await;
    assert_eq!(elsewhere.me().await["email"], "ada@example.com");

    let (status, body) = here
        .json(
            "/api/change_password",
            &[
                ("current_password", "wrong"),
                ("new_password", "a brand new passphrase"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["Field"]["field"], "current_password");

    let r = here
        .post(
            "/api/change_password",
            &[
                ("current_password", PASSWORD),
                ("new_password", "a brand new passphrase"),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(session_cookie(&r).is_some(), "the session id is cycled");
    assert_eq!(here.me().await["email"], "ada@example.com");
    assert_eq!(elsewhere.me().await, Value::Null);
    assert_eq!(
        app.browser()
            .login("ada@example.com", PASSWORD)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn sessions_end_after_the_absolute_lifetime_even_when_active() {
    let app = spawn_app_with(|c| c.session_absolute = Duration::from_millis(1500)).await;
    let b = app.owner("ada@example.com", "Acme").await;
    assert_eq!(b.me().await["email"], "ada@example.com");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(b.me().await["email"], "ada@example.com");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(b.me().await, Value::Null);
}

#[tokio::test]
async fn activity_keeps_a_session_alive_and_idleness_ends_it() {
    let app = spawn_app_with(|c| c.session_idle = Duration::from_secs(3)).await;
    let b = app.owner("ada@example.com", "Acme").await;
    // Active for longer than the idle timeout (with room for slow responses on a loaded
    // machine between requests): still signed in.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(b.me().await["email"], "ada@example.com");
    }
    tokio::time::sleep(Duration::from_millis(3600)).await;
    assert_eq!(b.me().await, Value::Null);
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413() {
    let app = spawn_app().await;
    let big = "x".repeat(server::BODY_LIMIT + 1);
    let r = app
        .browser()
        .post(
            "/api/login",
            &[("email", "ada@example.com"), ("password", &big)],
        )
        .await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn pages_forbid_framing_and_sniffing() {
    let app = spawn_app().await;
    let r = app.browser().get("/login").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = spawn_app().await;
    let http = reqwest::Client::new();
    let mut seen = std::collections::HashSet::new();
    for path in ["/health", "/login", "/no-such-page", "/v1/models"] {
        let r = http
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(id.len(), 36, "{path}: {id}");
        assert!(seen.insert(id), "ids repeat");
    }
    // A caller's own id (a proxy's, say) is kept, so logs on both sides line up.
    let r = http
        .get(format!("{}/health", app.base))
        .header("x-request-id", "edge-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "edge-42");
    // Anything but a short token is replaced, so it cannot smuggle text into the logs.
    let r = http
        .get(format!("{}/health", app.base))
        .header("x-request-id", "two words\tand a tab")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"].len(), 36);
}

#[tokio::test]
async fn suspending_an_organisation_stops_its_sessions_and_keys_at_once() {
    let app = spawn_app().await;
    let ops = crate::compute::operator(&app).await;
    let tenant = app.owner("founder@suspend.example", "Suspend Me Ltd").await;
    let (status, created) = tenant
        .json(
            "/api/create_api_key",
            &[("name", "ci"), ("expires_in_days", "")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let key = created["secret"].as_str().unwrap().to_string();
    let http = Client::new();
    let models = || {
        http.get(format!("{}/v1/models", app.base))
            .bearer_auth(&key)
            .send()
    };
    // Authenticated (no models are loaded in this portal, hence 503 after the key check).
    assert_eq!(
        models().await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(tenant.json("/api/me", &[]).await.0, StatusCode::OK);

    // Only operators suspend; they find the organisation by a part of its name.
    let (_, found) = ops
        .json("/api/organizations", &[("search", "suspend me")])
        .await;
    let org = found[0]["id"].as_str().unwrap().to_string();
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    // `%` is a character to search for, not a wildcard.
    let (_, none) = ops.json("/api/organizations", &[("search", "%")]).await;
    assert_eq!(none, serde_json::json!([]));
    let (status, _) = tenant
        .json(
            "/api/set_org_suspended",
            &[("org_id", &org), ("suspend", "1")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = ops
        .json(
            "/api/set_org_suspended",
            &[("org_id", &org), ("suspend", "1")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The very next requests are refused: the key with OpenAI's error body, the session too.
    let r = models().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "organization_suspended");
    let (status, body) = tenant.json("/api/me", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body.to_string().to_lowercase().contains("suspended"),
        "{body}"
    );
    // Logging in again does not get around it.
    let again = app.browser();
    let r = again.login("founder@suspend.example", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Resumed: both work again.
    let (status, _) = ops
        .json(
            "/api/set_org_suspended",
            &[("org_id", &org), ("suspend", "0")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        models().await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(tenant.json("/api/me", &[]).await.0, StatusCode::OK);
}

#[tokio::test]
async fn assets_go_precompressed_to_browsers_that_take_it_and_pages_compressed() {
    let site = tempfile::tempdir().unwrap();
    let pkg = site.path().join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("tokenmill.wasm"), vec![7u8; 4096]).unwrap();
    std::fs::write(pkg.join("tokenmill.wasm.br"), b"brotli bytes").unwrap();
    let root = site.path().display().to_string();
    let app = spawn_app_with(move |c| c.site_root = root).await;
    let http = reqwest::Client::new();
    let url = format!("{}/pkg/tokenmill.wasm", app.base);
    let r = http
        .get(&url)
        .header("accept-encoding", "br, gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-encoding"], "br");
    assert_eq!(r.headers()["content-type"], "application/wasm");
    // A development build's names carry no hash: the browser checks them on every load.
    assert_eq!(r.headers()["cache-control"], "no-cache");
    assert!(
        r.headers().get("set-cookie").is_none(),
        "no session for assets"
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"brotli bytes");
    let plain = http.get(&url).send().await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    assert_eq!(plain.bytes().await.unwrap().len(), 4096);
    // Pages are compressed on the fly.
    let page = http
        .get(format!("{}/login", app.base))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(page.headers()["content-encoding"], "gzip");
}
