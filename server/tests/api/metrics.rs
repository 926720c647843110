//! `/metrics`: refused without the bearer token; after a known set of requests, the job
//! counters and latency histograms hold exactly those requests, the pool's token counters
//! cover them, nothing is left running or held, and no tenant id appears. The operators'
//! worker-pool view shows the same workers.

use reqwest::StatusCode;
use serde_json::json;

use crate::completions::api_with;

const TOKEN: &str = "scrape-me-please";

/// The value of the sample whose name is `name` and whose labels include every `label`.
fn sample(body: &str, name: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap();
            (series == name || series.starts_with(&format!("{name}{{")))
                && labels.iter().all(|want| series.contains(want))
        })
        .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{body}"))
        .rsplit_once(' ')
        .unwrap()
        .1
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_count_what_happened_and_need_the_token() {
    let api = api_with(|c| c.metrics_token = Some(server::config::Secret(TOKEN.into()))).await;
    let url = format!("{}/metrics", api.app.base);
    let http = reqwest::Client::new();
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = http.get(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    for _ in 0..3 {
        api.ok(
            "/v1/chat/completions",
            &json!({"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 4, "ignore_eos": true}),
        )
        .await;
    }
    // Refused before it became a job: not counted.
    api.refused(
        "/v1/chat/completions",
        &json!({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}),
        StatusCode::NOT_FOUND,
    )
    .await;

    let r = http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let body = r.text().await.unwrap();
    let model = r#"model_name="tiny-chat""#;
    assert_eq!(
        sample(
            &body,
            "tokenmill_jobs_total",
            &[model, r#"kind="production""#, r#"status="succeeded""#]
        ),
        3.0
    );
    for histogram in [
        "vllm:time_to_first_token_seconds_count",
        "vllm:time_per_output_token_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
    ] {
        assert_eq!(sample(&body, histogram, &[model]), 3.0, "{histogram}");
    }
    let ttft = sample(&body, "vllm:time_to_first_token_seconds_sum", &[model]);
    let e2e = sample(&body, "vllm:e2e_request_latency_seconds_sum", &[model]);
    assert!(ttft > 0.0 && ttft <= e2e, "ttft {ttft} e2e {e2e}");
    // The workers' counters include these requests (and any health probe).
    let prompt = api
        .scalar("SELECT CAST(SUM(prompt_tokens) AS BIGINT) FROM usage_events")
        .await;
    assert_eq!(
        api.scalar("SELECT CAST(SUM(completion_tokens) AS BIGINT) FROM usage_events")
            .await,
        12
    );
    assert!(sample(&body, "vllm:generation_tokens_total", &[model]) >= 12.0);
    assert!(sample(&body, "vllm:prompt_tokens_total", &[model]) >= prompt as f64);
    assert_eq!(sample(&body, "vllm:num_requests_running", &[model]), 0.0);
    assert_eq!(sample(&body, "vllm:num_requests_waiting", &[model]), 0.0);
    let cache = sample(&body, "vllm:gpu_cache_usage_perc", &[model]);
    assert!((0.0..=1.0).contains(&cache));
    assert_eq!(sample(&body, "tokenmill_holds_open", &[]), 0.0);
    assert!(sample(&body, "tokenmill_ledger_postings_total", &[]) >= 4.0);
    assert_eq!(sample(&body, "tokenmill_login_failures_recent", &[]), 0.0);
    assert!(
        !body.contains(&api.org_id),
        "a tenant id leaked into the metrics"
    );

    // The operators' worker-pool view reads the same workers; tenants may not.
    let ops = crate::compute::operator(&api.app).await;
    let (status, workers) = ops.json("/api/worker_pool", &[]).await;
    assert_eq!(status, StatusCode::OK, "{workers}");
    let w = &workers[0];
    assert_eq!(
        (w["model"].as_str(), w["state"].as_str()),
        (Some("tiny-chat"), Some("ready"))
    );
    assert!(w["device"].as_str().unwrap().ends_with("(cpu)"), "{w}");
    assert!(
        w["kv_total"].as_u64().unwrap() > 0 && w["running"] == 0,
        "{w}"
    );
    assert_eq!(
        w["tokens_generated"].as_f64().unwrap(),
        sample(&body, "vllm:generation_tokens_total", &[model])
    );
    let tenant = api.app.owner("curious@startup.example", "Curious").await;
    assert_eq!(
        tenant.json("/api/worker_pool", &[]).await.0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn without_a_token_setting_metrics_are_off() {
    let app = crate::helpers::spawn_app().await;
    let r = reqwest::get(format!("{}/metrics", app.base)).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.text().await.unwrap().contains("TOKENMILL_METRICS_TOKEN"));
}

#[tokio::test]
async fn the_tenant_dashboard_forecasts_from_the_last_week_of_spend() {
    let api = api_with(|_| {}).await;
    for _ in 0..2 {
        api.ok(
            "/v1/completions",
            &json!({"model": "tiny-chat", "prompt": "count", "max_tokens": 5, "ignore_eos": true}),
        )
        .await;
    }
    let owner = api.app.browser();
    assert_eq!(
        owner
            .login("dev@startup.example", crate::helpers::PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );
    let (status, o) = owner.json("/api/tenant_overview", &[]).await;
    assert_eq!(status, StatusCode::OK, "{o}");
    let spent = api
        .scalar("SELECT CAST(SUM(amount) AS BIGINT) FROM usage_events")
        .await;
    let tokens = api
        .scalar("SELECT CAST(SUM(prompt_tokens + completion_tokens) AS BIGINT) FROM usage_events")
        .await;
    let burn = spent / 7;
    assert!(burn > 0);
    assert_eq!(o["burn_per_day_nanos"], json!(burn));
    let available = api.available().await;
    assert_eq!(o["days_left"], json!(available / burn));
    let days = o["per_day"].as_array().unwrap();
    assert_eq!(days.len(), 14);
    // Today's bar (and yesterday's, should the test straddle midnight UTC) holds the tokens.
    let recent = days[12]["tokens"].as_i64().unwrap() + days[13]["tokens"].as_i64().unwrap();
    assert_eq!(recent, tokens);
    assert_eq!(o["allocations"], json!([]));
}

#[tokio::test]
async fn operators_drain_resume_and_restart_a_worker_and_tenants_cannot() {
    let api = api_with(|_| {}).await;
    let ops = crate::compute::operator(&api.app).await;
    let body = json!({"model": "tiny-chat", "prompt": "abc", "max_tokens": 2});
    let state = || async {
        let (_, workers) = ops.json("/api/worker_pool", &[]).await;
        workers[0]["state"].as_str().unwrap().to_string()
    };
    let tenant = api.app.owner("curious@startup.example", "Curious").await;
    let (status, _) = tenant
        .json("/api/drain_worker", &[("index", "0"), ("drain", "1")])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        tenant
            .json("/api/restart_worker", &[("index", "0")])
            .await
            .0,
        StatusCode::FORBIDDEN
    );

    // Drained: the only worker takes nothing new, so the model is unavailable (503).
    let (status, b) = ops
        .json("/api/drain_worker", &[("index", "0"), ("drain", "1")])
        .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(state().await, "draining");
    let r = api.post("/v1/completions", &body).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    // Back in rotation.
    ops.json("/api/drain_worker", &[("index", "0"), ("drain", "0")])
        .await;
    assert_eq!(state().await, "ready");
    api.ok("/v1/completions", &body).await;
    let (status, _) = ops
        .json("/api/drain_worker", &[("index", "7"), ("drain", "1")])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Restarted: loading (or draining) for a moment, then ready with fresh counters, and it
    // serves again.
    let (_, before) = ops.json("/api/worker_pool", &[]).await;
    assert!(before[0]["tokens_generated"].as_u64().unwrap() >= 2);
    let (status, b) = ops.json("/api/restart_worker", &[("index", "0")]).await;
    assert_eq!(status, StatusCode::OK, "{b}");
    let mut seen = Vec::new();
    for _ in 0..600 {
        let s = state().await;
        if seen.last() != Some(&s) {
            seen.push(s.clone());
        }
        if s == "ready" && seen.len() > 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(seen.last().map(String::as_str), Some("ready"), "{seen:?}");
    let (_, after) = ops.json("/api/worker_pool", &[]).await;
    assert_eq!(after[0]["tokens_generated"], 0, "a new worker: {after}");
    api.ok("/v1/completions", &body).await;
    // Each control is in the audit log.
    let (_, log) = ops
        .json("/api/audit_entries", &[("search", "worker")])
        .await;
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["worker.restart", "worker.resume", "worker.drain"]);
}
