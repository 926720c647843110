//! Batches through HTTP (`/v1/files`, `/v1/batches`) with the fixture model on the CPU: a file
//! with good and bad lines gives a results file and an errors file, every answer is charged
//! once and exactly, no hold stays open; cancelling stops the lines not yet started; another
//! organisation sees none of it (T1); the page's upload and downloads.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::completions::{Api, api, api_with};
use crate::helpers::{PASSWORD, location};

const MODEL: &str = "tiny-chat";

fn cost(prompt: i64, completion: i64) -> i64 {
    (prompt * 200_000_000 + completion * 600_000_000 + 999_999) / 1_000_000
}

fn line(custom_id: &str, body: Value) -> String {
    json!({"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": body})
        .to_string()
}

impl Api {
    pub async fn upload(&self, content: String) -> Value {
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part(
                "file",
                reqwest::multipart::Part::text(content).file_name("requests.jsonl"),
            );
        let r = self
            .http
            .post(format!("{}/v1/files", self.app.base))
            .bearer_auth(&self.key)
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{v}");
        v
    }

    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.app.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    /// Polls the batch until it has ended.
    pub async fn ended_batch(&self, id: &str) -> Value {
        for _ in 0..600 {
            let (status, text) = self.get(&format!("/v1/batches/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{text}");
            let b: Value = serde_json::from_str(&text).unwrap();
            if ["completed", "cancelled", "expired"].contains(&b["status"].as_str().unwrap()) {
                return b;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("batch {id} did not end")
    }

    async fn jsonl(&self, file_id: &Value) -> Vec<Value> {
        let (status, text) = self
            .get(&format!("/v1/files/{}/content", file_id.as_str().unwrap()))
            .await;
        assert_eq!(status, StatusCode::OK, "{text}");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A key of another organisation, on the same portal.
struct Stranger {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Stranger {
    async fn get(&self, path: &str) -> (StatusCode, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await
            .unwrap()
    }
}

impl Api {
    async fn stranger(&self, email: &str) -> Stranger {
        let owner = self.app.owner(email, "Other").await;
        let (status, created) = owner
            .json(
                "/api/create_api_key",
                &[("name", "x"), ("expires_in_days", "")],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{created}");
        Stranger {
            base: self.app.base.clone(),
            key: created["secret"].as_str().unwrap().to_string(),
            http: self.http.clone(),
        }
    }
}

#[tokio::test]
async fn a_batch_answers_good_lines_fails_bad_ones_and_charges_each_answer_once() {
    let api = api().await;
    let before = api.available().await;
    let content = [
        line(
            "a",
            json!({"model": MODEL, "prompt": "abc", "max_tokens": 3, "ignore_eos": true}),
        ),
        "{not json".to_string(),
        line(
            "b",
            json!({"model": MODEL, "prompt": "hello there", "max_tokens": 2, "ignore_eos": true}),
        ),
        line("c", json!({"model": "no-such-model", "prompt": "x"})),
        line("a", json!({"model": MODEL, "prompt": "again"})),
        json!({"custom_id": "d", "method": "GET", "url": "/v1/completions", "body": {}})
            .to_string(),
        line(
            "e",
            json!({"model": MODEL, "prompt": "x", "temperature": 9}),
        ),
        String::new(),
    ]
    .join("\n");
    let file = api.upload(content).await;
    assert_eq!(file["purpose"], "batch");
    assert_eq!(file["filename"], "requests.jsonl");
    let batch = api
        .ok(
            "/v1/batches",
            &json!({"input_file_id": file["id"], "endpoint": "/v1/completions",
                    "completion_window": "24h", "metadata": {"run": "ci"}}),
        )
        .await;
    assert_eq!(batch["object"], "batch");
    assert_eq!(batch["request_counts"]["total"], 7);
    assert_eq!(batch["metadata"]["run"], "ci");

    let done = api.ended_batch(batch["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["request_counts"],
        json!({"total": 7, "completed": 2, "failed": 5})
    );

    let output = api.jsonl(&done["output_file_id"]).await;
    let ids: Vec<&str> = output
        .iter()
        .map(|o| o["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    let mut charged = 0;
    for o in &output {
        assert_eq!(o["response"]["status_code"], 200, "{o}");
        let body = &o["response"]["body"];
        assert_eq!(body["object"], "text_completion");
        let (p, c) = (
            body["usage"]["prompt_tokens"].as_i64().unwrap(),
            body["usage"]["completion_tokens"].as_i64().unwrap(),
        );
        // Each answer's usage event is of kind batch and charged exactly its tokens.
        let (ep, ec, amount, partial) = api.usage_event(body["id"].as_str().unwrap()).await;
        assert_eq!((ep, ec, amount, partial), (p, c, cost(p, c), 0));
        charged += amount;
    }
    assert_eq!(
        output[0]["response"]["body"]["usage"]["completion_tokens"],
        3
    );
    assert_eq!(before - api.available().await, charged);
    assert_eq!(
        api.scalar("SELECT COUNT(*) FROM usage_events WHERE kind = 'batch'")
            .await,
        2
    );
    assert_eq!(api.open_holds().await, 0);

    let errors = api.jsonl(&done["error_file_id"]).await;
    let ids: Vec<Value> = errors.iter().map(|e| e["custom_id"].clone()).collect();
    assert_eq!(
        ids,
        [json!(null), json!("c"), json!("a"), json!("d"), json!("e")]
    );
    assert_eq!(errors[0]["error"]["code"], "invalid_request");
    assert!(
        errors[0]["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Line 2:")
    );
    assert_eq!(errors[1]["response"]["status_code"], 404);
    assert_eq!(
        errors[1]["response"]["body"]["error"]["code"],
        "model_not_found"
    );
    assert!(
        errors[2]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unique")
    );
    assert!(
        errors[3]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("POST")
    );
    assert_eq!(errors[4]["response"]["status_code"], 400);
    assert_eq!(
        errors[4]["response"]["body"]["error"]["param"],
        "temperature"
    );

    // A finished batch cannot be cancelled; listing finds it.
    let r = api
        .post(
            &format!("/v1/batches/{}/cancel", done["id"].as_str().unwrap()),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let (_, list) = api.get("/v1/batches?limit=5").await;
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["data"][0]["id"], done["id"]);
    assert_eq!(list["has_more"], false);

    // Tenant isolation (T1): another organisation's key finds none of it.
    let other = api.stranger("mallory@other.example").await;
    for path in [
        format!("/v1/batches/{}", done["id"].as_str().unwrap()),
        format!("/v1/files/{}", file["id"].as_str().unwrap()),
        format!(
            "/v1/files/{}/content",
            done["output_file_id"].as_str().unwrap()
        ),
    ] {
        let (status, body) = other.get(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let r = other
        .post(
            &format!("/v1/batches/{}/cancel", done["id"].as_str().unwrap()),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let (_, list) = other.get("/v1/batches").await;
    assert_eq!(
        serde_json::from_str::<Value>(&list).unwrap()["data"],
        json!([])
    );
    let (_, files) = other.get("/v1/files").await;
    assert_eq!(
        serde_json::from_str::<Value>(&files).unwrap()["data"],
        json!([])
    );
    let r = other
        .post("/v1/batches", &json!({"input_file_id": file["id"], "endpoint": "/v1/completions", "completion_window": "24h"}))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_uploads_and_batch_requests_are_refused_clearly() {
    let api = api().await;
    let form = reqwest::multipart::Form::new()
        .text("purpose", "fine-tune")
        .part(
            "file",
            reqwest::multipart::Part::text("{}").file_name("x.jsonl"),
        );
    let r = api
        .http
        .post(format!("{}/v1/files", api.app.base))
        .bearer_auth(&api.key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["param"], "purpose");
    let file = api
        .upload(line("a", json!({"model": MODEL, "prompt": "x"})))
        .await;
    for (body, param) in [
        (
            json!({"input_file_id": file["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"}),
            "endpoint",
        ),
        (
            json!({"input_file_id": file["id"], "endpoint": "/v1/completions", "completion_window": "1h"}),
            "completion_window",
        ),
        (
            json!({"endpoint": "/v1/completions", "completion_window": "24h"}),
            "input_file_id",
        ),
    ] {
        let e = api
            .refused("/v1/batches", &body, StatusCode::BAD_REQUEST)
            .await;
        assert_eq!(e["param"], param, "{e}");
    }
    let e = api
        .refused(
            "/v1/batches",
            &json!({"input_file_id": "file-nope", "endpoint": "/v1/completions", "completion_window": "24h"}),
            StatusCode::NOT_FOUND,
        )
        .await;
    assert!(e["message"].as_str().unwrap().contains("file-nope"));
    // A file in which no line could run is refused as a whole, saying why, rather than
    // making a batch that only "completes" with errors.
    let useless = api
        .upload("not json\n{\"custom_id\": \"x\"}\n".to_string())
        .await;
    let e = api
        .refused(
            "/v1/batches",
            &json!({"input_file_id": useless["id"], "endpoint": "/v1/completions", "completion_window": "24h"}),
            StatusCode::BAD_REQUEST,
        )
        .await;
    let message = e["message"].as_str().unwrap();
    assert!(
        message.starts_with("No line of the input file is a valid request."),
        "{e}"
    );
    assert!(message.contains("Line 1: not valid JSON"), "{e}");
    assert!(message.contains("Line 2: method must be"), "{e}");
    // Deleted files are gone.
    let r = api
        .http
        .delete(format!(
            "{}/v1/files/{}",
            api.app.base,
            file["id"].as_str().unwrap()
        ))
        .bearer_auth(&api.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (status, _) = api
        .get(&format!("/v1/files/{}", file["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cancelling_a_batch_stops_the_lines_not_yet_started() {
    // One line at a time, each a few hundred tokens, so the cancel lands mid-batch.
    let api = api_with(|c| c.batch_concurrency = 1).await;
    let before = api.available().await;
    let content: Vec<String> = (0..20)
        .map(|i| {
            line(
                &format!("q{i}"),
                json!({"model": MODEL, "prompt": "count", "max_tokens": 200, "ignore_eos": true}),
            )
        })
        .collect();
    let file = api.upload(content.join("\n")).await;
    let batch = api
        .ok(
            "/v1/batches",
            &json!({"input_file_id": file["id"], "endpoint": "/v1/completions", "completion_window": "24h"}),
        )
        .await;
    let id = batch["id"].as_str().unwrap();
    // Wait for the first answer, then cancel.
    for _ in 0..600 {
        let (_, b) = api.get(&format!("/v1/batches/{id}")).await;
        let b: Value = serde_json::from_str(&b).unwrap();
        if b["request_counts"]["completed"].as_i64().unwrap() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelling = api
        .ok(&format!("/v1/batches/{id}/cancel"), &json!({}))
        .await;
    assert!(["cancelling", "cancelled"].contains(&cancelling["status"].as_str().unwrap()));
    let done = api.ended_batch(id).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    let completed = done["request_counts"]["completed"].as_i64().unwrap();
    assert!((1..20).contains(&completed), "{done}");
    assert_eq!(done["request_counts"]["failed"], 0);
    // Only the lines that ran were charged; their answers are in the output file.
    let output = api.jsonl(&done["output_file_id"]).await;
    assert_eq!(output.len() as i64, completed);
    let charged = api
        .scalar("SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM usage_events WHERE kind = 'batch'")
        .await;
    assert_eq!(before - api.available().await, charged);
    assert_eq!(
        api.scalar("SELECT COUNT(*) FROM jobs WHERE kind = 'batch'")
            .await,
        completed
    );
    assert_eq!(api.open_holds().await, 0);
}

#[tokio::test]
async fn the_batches_page_uploads_a_file_shows_progress_and_serves_the_results() {
    let api = api().await;
    let owner = api.app.browser();
    owner.login("dev@startup.example", PASSWORD).await;
    let upload = |b: &crate::helpers::Browser, origin: &str, content: &str| {
        let form = reqwest::multipart::Form::new()
            .text("endpoint", "/v1/completions")
            .part(
                "file",
                reqwest::multipart::Part::text(content.to_string()).file_name("page.jsonl"),
            );
        b.client
            .post(format!("{}/batches/upload", b.base))
            .header("origin", origin)
            .multipart(form)
            .send()
    };
    let content = line(
        "p1",
        json!({"model": MODEL, "prompt": "hi", "max_tokens": 2, "ignore_eos": true}),
    );
    let r = upload(&owner, &owner.origin, &content).await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let to = location(&r);
    let id = to.strip_prefix("/batches?created=").expect(&to).to_string();
    let done = api.ended_batch(&id).await;
    assert_eq!(done["request_counts"]["completed"], 1, "{done}");

    let page = owner.get("/batches").await.text().await.unwrap();
    assert!(page.contains(&id), "{page}");
    assert!(page.contains("1 done / 0 failed / 1 total"), "{page}");
    let r = owner.get(&format!("/batches/{id}/output.jsonl")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let out: Value = serde_json::from_str(r.text().await.unwrap().trim()).unwrap();
    assert_eq!(out["custom_id"], "p1");
    assert_eq!(out["response"]["status_code"], 200);
    // No errors file; other organisations and anonymous visitors get nothing.
    assert_eq!(
        owner
            .get(&format!("/batches/{id}/errors.jsonl"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    let other = api.app.owner("eve@other.example", "Other").await;
    assert_eq!(
        other
            .get(&format!("/batches/{id}/output.jsonl"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.app
            .browser()
            .get(&format!("/batches/{id}/output.jsonl"))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    // An empty file comes back as an error for the page; another site cannot upload.
    let r = upload(&owner, &owner.origin, " \n").await.unwrap();
    assert_eq!(location(&r), "/batches?error=The+file+is+empty.");
    let r = upload(&owner, "https://evil.example", &content)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}
