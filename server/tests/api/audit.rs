//! The audit log: operators' and partners' changes are recorded with who, what, when and the
//! state before and after; operators read and export all of it, a partner only its own
//! organisation's, a tenant nothing.

use reqwest::StatusCode;
use serde_json::Value;

use crate::compute::{nairobi_factory, operator, partner, set_price};
use crate::helpers::*;

fn entry<'a>(log: &'a Value, action: &str) -> &'a Value {
    log.as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == action)
        .unwrap_or_else(|| panic!("no {action} in {log}"))
}

#[tokio::test]
async fn operators_and_partners_changes_are_audited_with_before_and_after() {
    let app = spawn_app().await;
    let ops = operator(&app).await;
    let (savanna, savanna_id) = partner(&app, &ops, "Savanna Cloud", "owner@savanna.example").await;
    let (_other, other_id) = partner(&app, &ops, "Other Cloud", "owner@other.example").await;
    nairobi_factory(&ops, &savanna_id, "tiny/llama").await;
    assert_eq!(
        set_price(&ops, "tiny/llama", "0.15", "0.6").await.0,
        StatusCode::OK
    );
    assert_eq!(
        set_price(&ops, "tiny/llama", "0.2", "0.8").await.0,
        StatusCode::OK
    );
    let tenant = app.owner("founder@audited.example", "Audited").await;
    let org: String = db::sqlx::query_scalar("SELECT id FROM organizations WHERE name = 'Audited'")
        .fetch_one(app.db().pool())
        .await
        .unwrap();
    for suspend in ["1", "0"] {
        let (status, body) = ops
            .json(
                "/api/set_org_suspended",
                &[("org_id", &org), ("suspend", suspend)],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // A refused change is not a change.
    let (status, _) = tenant
        .json(
            "/api/set_org_suspended",
            &[("org_id", &org), ("suspend", "1")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, log) = ops.json("/api/audit_entries", &[("search", "")]).await;
    assert_eq!(status, StatusCode::OK, "{log}");
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    // Newest first, each change once.
    assert_eq!(
        actions,
        [
            "organization.resume",
            "organization.suspend",
            "model_price.set",
            "model_price.set",
            "factory.create",
            "partner.create",
            "partner.create",
        ]
    );
    let suspend = entry(&log, "organization.suspend");
    assert_eq!(suspend["actor"], "ops@tokenmill.example");
    assert_eq!(suspend["target"], format!("organization {org}"));
    assert_eq!(suspend["before"], r#"{"suspended":false}"#);
    assert_eq!(suspend["after"], r#"{"suspended":true}"#);
    let prices: Vec<&Value> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "model_price.set")
        .collect();
    let latest: Value = serde_json::from_str(prices[0]["after"].as_str().unwrap()).unwrap();
    let previous: Value = serde_json::from_str(prices[0]["before"].as_str().unwrap()).unwrap();
    assert_eq!(latest["output_per_mtok"], "$0.80");
    assert_eq!(previous["output_per_mtok"], "$0.60");
    assert_eq!(
        prices[1]["before"], "",
        "the first price had nothing before it"
    );
    let factory: Value =
        serde_json::from_str(entry(&log, "factory.create")["after"].as_str().unwrap()).unwrap();
    assert_eq!(factory["name"], "Nairobi 1");
    assert_eq!(factory["models"][0], "tiny/llama");

    // Search by action, person or target.
    let (_, found) = ops
        .json("/api/audit_entries", &[("search", "SUSPEND")])
        .await;
    assert_eq!(found.as_array().unwrap().len(), 1);
    let (_, found) = ops.json("/api/audit_entries", &[("search", "%")]).await;
    assert_eq!(found, serde_json::json!([]));

    // The export has every entry, oldest first, with the same before and after.
    let r = ops.get("/audit.csv").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("tokenmill-audit-log.csv")
    );
    let csv = r.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 7);
    assert_eq!(&rows[0][3], "partner.create");
    assert_eq!(&rows[5][3], "organization.suspend");
    assert_eq!(&rows[5][5], org.as_str());
    assert_eq!(&rows[5][8], r#"{"suspended":true}"#);
    let r = ops.get("/audit.csv?q=resume").await;
    assert_eq!(r.text().await.unwrap().lines().count(), 2);

    // A partner reads what was done to it and by it, not another partner's.
    let (status, theirs) = savanna.json("/api/audit_entries", &[("search", "")]).await;
    assert_eq!(status, StatusCode::OK, "{theirs}");
    let targets: Vec<&str> = theirs
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["factory.create", "partner.create"], "{theirs}");
    assert!(!theirs.to_string().contains(&other_id));
    let csv = savanna.get("/audit.csv").await.text().await.unwrap();
    assert_eq!(csv.lines().count(), 3);
    // A tenant has no audit log; a stranger is asked to log in.
    let (status, _) = tenant.json("/api/audit_entries", &[("search", "")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        tenant.get("/audit.csv").await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.browser().get("/audit.csv").await.status(),
        StatusCode::UNAUTHORIZED
    );
}
