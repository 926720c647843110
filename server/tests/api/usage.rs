//! The Usage page's numbers and CSV through HTTP: per day and model, equal to the usage events
//! and the ledger's charges, for the organisation's own jobs only (T1).

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::completions::api;
use crate::helpers::PASSWORD;

#[tokio::test]
async fn usage_per_day_and_model_matches_the_charges_and_stays_in_its_org() {
    let api = api().await;
    let before = api.available().await;
    for n in [2, 3] {
        api.ok(
            "/v1/completions",
            &json!({"model": "tiny-chat", "prompt": "abc", "max_tokens": n, "ignore_eos": true}),
        )
        .await;
    }
    let spent = before - api.available().await;
    let owner = api.app.browser();
    owner.login("dev@startup.example", PASSWORD).await;

    let r = owner.get("/usage.csv?days=7").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("tokenmill-usage-7d.csv")
    );
    let csv = r.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "date_utc,model,requests,prompt_tokens,completion_tokens,amount_usd"
    );
    assert_eq!(lines.len(), 2, "{csv}");
    let f: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(f[1], "tiny-chat");
    assert_eq!(f[2], "2");
    assert_eq!(f[4], "5");
    assert_eq!(f[5], ledger::Nanos::new(spent).decimal());

    let (status, report) = owner.json("/api/usage_report", &[("days", "7")]).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["per_day"].as_array().unwrap().len(), 7);
    assert_eq!(
        report["per_day"][6]["amount_nanos"].as_i64().unwrap(),
        spent
    );
    assert_eq!(report["rows"][0]["requests"], 2);
    let page = owner.get("/usage?days=7").await.text().await.unwrap();
    assert!(page.contains("usage-chart"));
    assert!(page.contains(&ledger::Nanos::new(spent).to_string()));

    // By API key and by source: both requests came through the API with the one key.
    assert_eq!(report["by_source"][0]["label"], "production");
    assert_eq!(report["by_source"][0]["requests"], 2);
    assert!(
        report["by_key"][0]["label"]
            .as_str()
            .unwrap()
            .starts_with("ci · tmk_"),
        "{report}"
    );
    assert_eq!(report["by_key"][0]["tokens"], report["total_tokens"]);

    // The activity log: each request, newest first, and pages that pick up where they ended.
    let (status, activity) = owner.json("/api/usage_activity", &[("after", "")]).await;
    assert_eq!(status, StatusCode::OK, "{activity}");
    let rows = activity["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["completion_tokens"], 3, "the newest first");
    assert_eq!(rows[1]["completion_tokens"], 2);
    assert!(rows[0]["key"].as_str().unwrap().starts_with("ci · tmk_"));
    assert!(rows[0]["latency"].as_str().unwrap().ends_with(" ms"));
    assert_eq!(activity["next"], Value::Null);
    let (first, next) = api.app.jobs.activity(&api.org_id, None, 1).await.unwrap();
    assert_eq!(first.len(), 1);
    let next = next.expect("a second page");
    let (status, second) = owner
        .json("/api/usage_activity", &[("after", &next.encode())])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(second["rows"].as_array().unwrap().len(), 1);
    assert_eq!(second["rows"][0]["completion_tokens"], 2);
    let (status, _) = owner
        .json("/api/usage_activity", &[("after", "not a cursor")])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Another organisation sees none of it; bad windows and anonymous downloads are refused.
    let other = api.app.owner("eve@other.example", "Other").await;
    let (_, theirs) = other.json("/api/usage_activity", &[("after", "")]).await;
    assert_eq!(theirs["rows"], json!([]));
    let csv = other.get("/usage.csv?days=30").await.text().await.unwrap();
    assert_eq!(csv.lines().count(), 1, "{csv}");
    let (_, report) = other.json("/api/usage_report", &[("days", "30")]).await;
    assert_eq!(report["rows"], json!([]));
    assert_eq!(
        other.get("/usage.csv?days=5").await.status(),
        StatusCode::BAD_REQUEST
    );
    let anonymous = api.app.browser();
    assert_eq!(
        anonymous.get("/usage.csv").await.status(),
        StatusCode::UNAUTHORIZED
    );
}
