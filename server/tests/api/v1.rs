//! The OpenAI-compatible API's first routes: `/v1/models` behind API keys with OpenAI's error
//! body, an unknown route as JSON, and `/ready` following the worker pool.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{spawn_app, spawn_app_with};

async fn key_for(app: &crate::helpers::TestApp, email: &str, org: &str) -> String {
    let owner = app.owner(email, org).await;
    let (status, created) = owner
        .json(
            "/api/create_api_key",
            &[("name", "api"), ("expires_in_days", "")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    created["secret"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn models_are_listed_for_a_valid_key_and_refused_otherwise() {
    let models = tempfile::tempdir().unwrap();
    engine::fixture::write_fixture(models.path(), &engine::fixture::FixtureSpec::default())
        .unwrap();
    let dir = models.path().to_path_buf();
    let app = spawn_app_with(move |c| {
        c.engine.models = vec![("tiny-chat".into(), dir)];
        c.engine.write_fixture = false;
        c.engine.devices = vec![engine::Device::Cpu];
        c.engine.cpu_kv_mib = 8;
    })
    .await;
    let key = key_for(&app, "owner@a.example", "Org A").await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/models", app.base);

    let r = http.get(&url).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], "tiny-chat");
    assert_eq!(body["data"][0]["object"], "model");

    // Missing, malformed and revoked keys: 401 with OpenAI's error body.
    for auth in [None, Some("tmk_nonsense"), Some(&key[..key.len() - 1])] {
        let mut req = http.get(&url);
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert!(body["error"]["message"].as_str().unwrap().len() > 10);
    }
    let keys = keys::ApiKeys::new(app.db().clone());
    let who = keys.authenticate(&key).await.unwrap();
    keys.revoke(&who.org_id, &who.key_id).await.unwrap();
    let r = http.get(&url).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );

    // Unknown routes under /v1 answer in the API's own format.
    let r = http
        .get(format!("{}/v1/engines", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_url");

    // Ready: the worker produced a token.
    let r = http
        .get(format!("{}/ready", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn without_models_the_api_is_unavailable_and_not_ready() {
    let app = spawn_app().await;
    let key = key_for(&app, "owner@b.example", "Org B").await;
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/v1/models", app.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_error");
    let r = http
        .get(format!("{}/v1/models/tiny-chat", app.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    let r = http
        .get(format!("{}/ready", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The process itself is up.
    let r = http
        .get(format!("{}/health", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
