//! The playground's chat through real HTTP: streamed as the signed-in user at playground
//! priority, refused without a session or from another origin, and its receipt (cost, balance)
//! visible only to the job's own organisation (T1).

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::completions::{api, sse_data};

#[tokio::test]
async fn the_playground_streams_as_the_user_and_shows_the_receipt_to_its_org_only() {
    let api = api().await;
    let owner = api.app.browser();
    owner
        .login("dev@startup.example", crate::helpers::PASSWORD)
        .await;
    let before = api.available().await;
    let body = json!({
        "model": "tiny-chat",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 7,
        "temperature": 0,
    });
    let r = owner
        .client
        .post(format!("{}/playground/chat", api.app.base))
        .header("origin", &owner.origin)
        .header("sec-fetch-site", "same-origin")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let events = sse_data(&r.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    // The usage chunk comes whether or not the body asked for it.
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    let completion = usage["usage"]["completion_tokens"].as_i64().unwrap();
    assert!((1..=7).contains(&completion));
    let id = usage["id"].as_str().unwrap().to_string();

    let (status, receipt) = owner.json("/api/job_receipt", &[("job_id", &id)]).await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    assert_eq!(receipt["completion_tokens"].as_i64().unwrap(), completion);
    let (_, _, amount, _) = api.usage_event(&id).await;
    assert_eq!(before - api.available().await, amount);
    let balance = ledger::Nanos::new(api.available().await).to_string();
    assert_eq!(receipt["balance"], balance);
    let kind: String = db::sqlx::query_scalar("SELECT kind FROM jobs")
        .fetch_one(api.app.db().pool())
        .await
        .unwrap();
    assert_eq!(kind, "playground");

    // Another organisation cannot read the receipt.
    let other = api.app.owner("eve@other.example", "Other").await;
    let (status, _) = other.json("/api/job_receipt", &[("job_id", &id)]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // No session: 401 in the API's format. Another origin: refused before anything runs.
    let r = reqwest::Client::new()
        .post(format!("{}/playground/chat", api.app.base))
        .header("origin", &owner.origin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = owner
        .client
        .post(format!("{}/playground/chat", api.app.base))
        .header("origin", "https://evil.example")
        .header("sec-fetch-site", "cross-site")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let jobs: i64 = db::sqlx::query_scalar("SELECT COUNT(*) FROM jobs")
        .fetch_one(api.app.db().pool())
        .await
        .unwrap();
    assert_eq!(jobs, 1);
}
