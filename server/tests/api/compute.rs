//! Compute requests over HTTP: a startup asks a partner's factory for capacity with credit
//! support, the operator approves with a grant, the tenant sees it in Credits and its CSV;
//! other tenants and other partners cannot reach the request; tenants cannot use Admin.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

const OPS: (&str, &str) = ("ops@tokenmill.example", "operator long passphrase");

pub async fn operator(app: &TestApp) -> Browser {
    accounts::Accounts::new(app.db().clone(), accounts::LoginLimits::default())
        .create_operator(OPS.0, OPS.1)
        .await
        .unwrap();
    let ops = app.browser();
    assert_eq!(ops.login(OPS.0, OPS.1).await.status(), StatusCode::OK);
    // Operators must sign in with a second factor: set it up as a new operator would.
    ops.enrol_two_factor().await;
    ops
}

/// A partner organisation created by `ops`, with its first user signed in; returns the browser
/// and the partner's organisation id.
pub async fn partner(app: &TestApp, ops: &Browser, name: &str, email: &str) -> (Browser, String) {
    let (status, created) = ops
        .json(
            "/api/create_partner",
            &[("name", name), ("region", "africa"), ("owner_email", email)],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let b = app.browser();
    b.accept(&token_of(&created), "partner long passphrase")
        .await;
    // A partner's owner must sign in with a second factor.
    b.enrol_two_factor().await;
    let (_, list) = ops.json("/api/partners", &[]).await;
    let id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    (b, id)
}

/// Savanna Cloud's factory in Nairobi (H100) serving `models`, made by the operator.
pub async fn nairobi_factory(ops: &Browser, partner_id: &str, models: &str) {
    let (status, body) = ops
        .json(
            "/api/create_factory",
            &[
                ("partner_org_id", partner_id),
                ("name", "Nairobi 1"),
                ("region", "africa"),
                ("gpu_class", "H100"),
                ("models", models),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

pub async fn set_price(
    who: &Browser,
    model: &str,
    input: &str,
    output: &str,
) -> (StatusCode, Value) {
    who.json(
        "/api/set_model_price",
        &[
            ("model_id", model),
            ("input_per_mtok", input),
            ("output_per_mtok", output),
        ],
    )
    .await
}

fn terms<'a>(factory: &'a str, program: &'a str, ends_on: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("terms[factory_id]", factory),
        ("terms[what]", "tiny/llama"),
        ("terms[amount]", "60000"),
        ("terms[starts_on]", "2099-01-01"),
        ("terms[ends_on]", ends_on),
        ("terms[commitment]", "reserved"),
        ("terms[program_id]", program),
        ("terms[support_amount]", "250"),
        (
            "terms[justification]",
            "Fine-tuning a Swahili assistant for clinics.",
        ),
    ]
}

fn approval(id: &str, program: &str, amount: &str) -> Vec<(&'static str, String)> {
    vec![
        ("id", id.to_string()),
        ("share_weight", "10".into()),
        ("rate_limit_tpm", "60000".into()),
        ("starts_on", String::new()),
        ("ends_on", String::new()),
        ("grant_program_id", program.to_string()),
        ("grant_amount", amount.to_string()),
    ]
}

fn pairs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(a, b)| (*a, b.as_str())).collect()
}

fn by_name<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {list}"))
}

#[tokio::test]
async fn a_startup_requests_compute_and_the_operator_approves_with_a_grant() {
    let app = spawn_app().await;
    let ops = operator(&app).await;
    let (savanna, savanna_id) = partner(&app, &ops, "Savanna Cloud", "owner@savanna.example").await;
    let (fjord, _) = partner(&app, &ops, "Fjord Compute", "owner@fjord.example").await;
    nairobi_factory(&ops, &savanna_id, "tiny/llama\ntiny/qwen").await;
    let (status, body) = ops
        .json(
            "/api/create_program",
            &[
                ("form[name]", "Startup support"),
                ("form[sponsor]", "vendor"),
                ("form[startup]", "on"),
                ("form[europe]", "on"),
                ("form[north_america]", "on"),
                ("form[grant_amount]", "100"),
                ("form[grant_lifetime_days]", "90"),
                ("form[budget]", "1000"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A program for African startups only: not offered to a European one.
    let (status, body) = ops
        .json(
            "/api/create_program",
            &[
                ("form[name]", "Africa first"),
                ("form[sponsor]", &savanna_id),
                ("form[startup]", "on"),
                ("form[africa]", "on"),
                ("form[grant_amount]", "10"),
                ("form[grant_lifetime_days]", "30"),
                ("form[budget]", "100"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, programs) = ops.json("/api/programs", &[]).await;
    assert_eq!(
        by_name(&programs, "Africa first")["sponsor"],
        "Savanna Cloud"
    );
    let program = by_name(&programs, "Startup support");
    assert_eq!(program["eligible"], "Startup in North America, Europe");
    assert_eq!(program["remaining"], "$1000.00");
    assert_eq!(program["auto_on_signup"], false);
    let program_id = program["id"].as_str().unwrap().to_string();

    let tenant = app.owner("founder@startup.example", "Clinic AI").await;
    let (status, page) = tenant.json("/api/compute", &[]).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["may_request"], true);
    let factory_id = page["factories"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(page["factories"][0]["models"][1], "tiny/qwen");
    assert_eq!(
        by_name(&page["programs"], "Startup support")["id"],
        program_id
    );
    assert_eq!(page["programs"].as_array().unwrap().len(), 1, "{page}");

    // Bad input: a clear field error and nothing stored.
    let (status, err) = tenant
        .json(
            "/api/submit_compute",
            &terms(&factory_id, &program_id, "2098-12-31"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["Field"]["field"], "ends_on", "{err}");
    let (status, id) = tenant
        .json(
            "/api/submit_compute",
            &terms(&factory_id, &program_id, "2099-04-01"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{id}");
    let id = id.as_str().unwrap().to_string();
    let (_, page) = tenant.json("/api/compute", &[]).await;
    assert_eq!(page["requests"].as_array().unwrap().len(), 1);

    // The operators' console counts it as waiting, with each partner's factories and models
    // and each program's budget; tenants have no console.
    let (status, glance) = ops.json("/api/console_glance", &[]).await;
    assert_eq!(status, StatusCode::OK, "{glance}");
    assert_eq!(glance["pending_approvals"], 1, "{glance}");
    let savanna_row = by_name(&glance["partners"], "Savanna Cloud");
    assert_eq!(savanna_row["factories"], 1);
    assert_eq!(
        savanna_row["models"],
        serde_json::json!(["tiny/llama", "tiny/qwen"])
    );
    assert_eq!(savanna_row["closed"], 0);
    assert_eq!(
        by_name(&glance["partners"], "Fjord Compute")["factories"],
        0
    );
    let support = by_name(&glance["programs"], "Startup support");
    assert_eq!(
        (support["budget"].as_str(), support["used"].as_str()),
        (Some("$1000.00"), Some("$0.00"))
    );
    assert_eq!(glance["suspended"], 0);
    assert_eq!(
        tenant.json("/api/console_glance", &[]).await.0,
        StatusCode::FORBIDDEN
    );

    // Another tenant and another partner do not see it; the right partner does.
    let other = app.owner("other@startup.example", "Other AI").await;
    for path in ["/api/compute_request", "/api/cancel_compute"] {
        assert_eq!(
            other.json(path, &[("id", &id)]).await.0,
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(
        fjord.json("/api/compute_request", &[("id", &id)]).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, fjord_queue) = fjord.json("/api/approvals", &[]).await;
    assert_eq!(fjord_queue, serde_json::json!([]));
    let (_, queue) = savanna.json("/api/approvals", &[]).await;
    assert_eq!(queue[0]["id"], id);
    // A partner cannot spend the vendor's program; another partner cannot approve at all.
    let form = approval(&id, &program_id, "250");
    let (status, err) = savanna.json("/api/approve_compute", &pairs(&form)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["Field"]["field"], "grant_program");
    assert_eq!(
        fjord.json("/api/approve_compute", &pairs(&form)).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        tenant.json("/api/approve_compute", &pairs(&form)).await.0,
        StatusCode::FORBIDDEN
    );
    // The operator approves with a grant; approving again is a conflict.
    let (status, body) = ops.json("/api/approve_compute", &pairs(&form)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        ops.json("/api/approve_compute", &pairs(&form)).await.0,
        StatusCode::CONFLICT
    );

    let (_, detail) = tenant.json("/api/compute_request", &[("id", &id)]).await;
    assert_eq!(detail["row"]["status_code"], "approved", "{detail}");
    assert_eq!(detail["grant"], "$250.00 from Startup support");
    let actions: Vec<_> = detail["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actions, ["submitted", "approved", "credit granted"]);
    let (_, glance) = ops.json("/api/console_glance", &[]).await;
    assert_eq!(glance["pending_approvals"], 0);
    let support = by_name(&glance["programs"], "Startup support");
    assert_eq!(
        support["used"], "$250.00",
        "the grant came out of the budget"
    );
    assert_eq!(support["used_pct"], 25.0);
    // The approval is in the audit log with the request's state before and after.
    let (_, log) = ops
        .json("/api/audit_entries", &[("search", "approve")])
        .await;
    let approval = &log[0];
    assert_eq!(approval["action"], "compute_request.approve");
    assert!(
        approval["before"]
            .as_str()
            .unwrap()
            .contains(r#""status":"submitted""#),
        "{approval}"
    );
    assert!(
        approval["after"]
            .as_str()
            .unwrap()
            .contains(r#""status":"approved""#),
        "{approval}"
    );
    let (_, credits) = tenant
        .json("/api/credits", &[("kind", ""), ("page", "1")])
        .await;
    assert_eq!(credits["available"], "$250.00", "{credits}");
    assert_eq!(credits["buckets"][0]["label"], "Startup support");
    assert_eq!(credits["history_total"], "$250.00");
    let (_, credits) = other
        .json("/api/credits", &[("kind", ""), ("page", "1")])
        .await;
    assert_eq!(credits["available"], "$0.00");

    // The CSV export: the tenant's rows only, summing to the page's net.
    let csv = tenant.get("/credits/history.csv").await;
    assert_eq!(csv.status(), StatusCode::OK);
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = csv.text().await.unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("date_utc,transaction_id,kind,description,amount_usd")
    );
    let rows: Vec<_> = lines.collect();
    assert_eq!(rows.len(), 1, "{text}");
    assert!(
        rows[0].ends_with(",grant,Startup support: compute request at Nairobi 1,250.00"),
        "{text}"
    );
    let other_csv = other
        .get("/credits/history.csv")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(other_csv.lines().count(), 1, "{other_csv}");
    assert_eq!(
        app.browser().get("/credits/history.csv").await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn tenants_cannot_use_the_admin_endpoints() {
    let app = spawn_app().await;
    let tenant = app.owner("founder@startup.example", "Clinic AI").await;
    let (status, _) = tenant
        .json(
            "/api/create_factory",
            &[
                ("partner_org_id", "x"),
                ("name", "Mine"),
                ("region", "africa"),
                ("gpu_class", "H100"),
                ("models", "m"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = tenant
        .json(
            "/api/create_program",
            &[
                ("form[name]", "Free money"),
                ("form[sponsor]", "vendor"),
                ("form[startup]", "on"),
                ("form[grant_amount]", "1000"),
                ("form[grant_lifetime_days]", "90"),
                ("form[budget]", "100000"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        tenant.json("/api/programs", &[]).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        tenant.json("/api/approvals", &[]).await.1,
        serde_json::json!([])
    );
}

#[tokio::test]
async fn operators_price_models_and_everyone_signed_in_sees_the_catalog() {
    let app = spawn_app().await;
    let ops = operator(&app).await;
    let (_, savanna_id) = partner(&app, &ops, "Savanna Cloud", "owner@savanna.example").await;
    nairobi_factory(&ops, &savanna_id, "tiny/llama").await;
    let (status, body) = set_price(&ops, "tiny/llama", "0.15", "0.6").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = set_price(&ops, "tiny/llama", "cheap", "0.6").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["Field"]["field"], "input_per_mtok");

    let tenant = app.owner("founder@startup.example", "Startup").await;
    let (status, catalog) = tenant.json("/api/model_catalog", &[]).await;
    assert_eq!(status, StatusCode::OK, "{catalog}");
    assert_eq!(catalog[0]["model_id"], "tiny/llama");
    assert_eq!(catalog[0]["input_per_mtok"], "$0.15");
    assert_eq!(catalog[0]["output_per_mtok"], "$0.60");
    assert!(
        catalog[0]["factories"][0]
            .as_str()
            .unwrap()
            .starts_with("Nairobi 1 (Savanna Cloud"),
        "{catalog}"
    );
    let page = tenant.get("/models").await.text().await.unwrap();
    assert!(page.contains("tiny/llama") && page.contains("$0.60"));
    assert!(!page.contains("Set a price"));
    // Only operators set prices.
    let (status, _) = set_price(&tenant, "tiny/llama", "0", "0").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, catalog) = tenant.json("/api/model_catalog", &[]).await;
    assert_eq!(catalog[0]["output_per_mtok"], "$0.60");
}
