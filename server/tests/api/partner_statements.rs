//! Partner statements over HTTP: an operator sets an agreement, adjusts and closes last month;
//! the partner downloads the statement as CSV and PDF, and the CSV verifies with
//! `tokenmill statements verify` and hashes as the chain says. Another partner, a tenant and
//! a stranger get nothing (404 / 401), and closing twice or closing the current month is
//! refused.

use reqwest::StatusCode;
use sha2::{Digest, Sha256};

use crate::compute::{operator, partner};
use crate::helpers::*;

fn months() -> (String, String) {
    let now = statements::Period::of_ms(db::now_ms());
    (now.prev().to_string(), now.to_string())
}

async fn download(b: &Browser, path: &str) -> (StatusCode, String, Vec<u8>) {
    let r = b.get(path).await;
    let status = r.status();
    let disposition = r
        .headers()
        .get("content-disposition")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, disposition, r.bytes().await.unwrap().to_vec())
}

fn verify_cli(bytes: &[u8], previous: Option<&str>) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("statement.csv");
    std::fs::write(&file, bytes).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tokenmill"));
    cmd.args(["statements", "verify"]).arg(&file);
    if let Some(p) = previous {
        cmd.args(["--previous-hash", p]);
    }
    cmd.output().unwrap()
}

#[tokio::test]
async fn a_partner_downloads_its_closed_statement_and_nobody_else_can() {
    let app = spawn_app().await;
    let ops = operator(&app).await;
    let (savanna, a) = partner(&app, &ops, "Savanna Cloud", "owner@savanna.example").await;
    let (fjord, b) = partner(&app, &ops, "Fjord Compute", "owner@fjord.example").await;
    let tenant = app.owner("founder@startup.example", "Startup").await;
    let (last, current) = months();

    // The agreement, from the first of last month; then a bad one that overlaps it.
    let from = format!("{last}-01");
    let (status, body) = ops
        .json(
            "/api/create_agreement",
            &[
                ("form[partner_id]", &a),
                ("form[from]", &from),
                ("form[to]", ""),
                ("form[partner_share]", "70"),
                ("form[credit_reimbursement]", "50"),
                ("form[recoup_cost]", ""),
                ("form[recoup_vendor_share]", ""),
                ("form[note]", "first"),
            ],
        )
        .await;
    assert_eq!(
        (status, body.clone()),
        (StatusCode::OK, serde_json::json!(1)),
        "{body}"
    );
    let (status, body) = ops
        .json(
            "/api/create_agreement",
            &[
                ("form[partner_id]", &a),
                ("form[from]", &from),
                ("form[to]", ""),
                ("form[partner_share]", "170"),
                ("form[credit_reimbursement]", "50"),
                ("form[recoup_cost]", ""),
                ("form[recoup_vendor_share]", ""),
                ("form[note]", ""),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("percentage"), "{body}");
    // Only operators manage agreements and close months.
    let (status, _) = savanna
        .json(
            "/api/close_statement",
            &[("partner_id", &a), ("period", &last)],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A credit for last month makes its statement non-zero.
    let (status, body) = ops
        .json(
            "/api/create_adjustment",
            &[
                ("partner_id", &a),
                ("period", &last),
                ("kind", "credit"),
                ("amount", "1.25"),
                ("reason", "launch bonus"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The partner sees a draft; the overview lists last month as the one to close.
    let (status, overview) = ops
        .json("/api/statements_overview", &[("partner", &a)])
        .await;
    assert_eq!(status, StatusCode::OK, "{overview}");
    assert_eq!(overview["next_closable"], serde_json::json!(last));
    let base = format!("/statements/{a}/{last}");
    let (status, _, draft) = download(&savanna, &format!("{base}/statement.csv")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&draft).contains("\nstatus,draft,\n"));

    // Closing: once; the current month never.
    let (status, number) = ops
        .json(
            "/api/close_statement",
            &[("partner_id", &a), ("period", &last)],
        )
        .await;
    assert_eq!((status, number), (StatusCode::OK, serde_json::json!(1)));
    let (status, again) = ops
        .json(
            "/api/close_statement",
            &[("partner_id", &a), ("period", &last)],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    let (status, now_body) = ops
        .json(
            "/api/close_statement",
            &[("partner_id", &a), ("period", &current)],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{now_body}");
    assert!(now_body.to_string().contains("not over"), "{now_body}");

    // The partner's downloads: canonical CSV, PDF, usage events.
    let (status, disposition, csv) = download(&savanna, &format!("{base}/statement.csv")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        disposition,
        format!("attachment; filename=\"tokenmill-statement-savanna-cloud-{last}.csv\"")
    );
    let text = String::from_utf8(csv.clone()).unwrap();
    assert!(
        text.contains("\nstatus,closed,1\n") && text.contains("\npayable,1.250000000\n"),
        "{text}"
    );
    let (status, disposition, pdf) = download(&savanna, &format!("{base}/statement.pdf")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(pdf.starts_with(b"%PDF-"));
    assert_eq!(
        disposition,
        format!("attachment; filename=\"tokenmill-statement-savanna-cloud-{last}.pdf\"")
    );
    let (status, _, usage) = download(&savanna, &format!("{base}/usage.csv")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        String::from_utf8(usage)
            .unwrap()
            .starts_with("usage_event_id,")
    );

    // The hash the chain shows is the CSV's SHA-256, and the CLI verifies it.
    let sha = hex::encode(Sha256::digest(&csv));
    let (_, overview) = savanna.json("/api/statements_overview", &[]).await;
    assert_eq!(overview["chain"][0]["sha256"], serde_json::json!(sha));
    assert_eq!(overview["chain"][0]["ok"], serde_json::json!(true));
    // `sha256sum` of the downloaded file prints the same hash.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("statement.csv");
    std::fs::write(&file, &csv).unwrap();
    let sum = std::process::Command::new("sha256sum")
        .arg(&file)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&sum.stdout).starts_with(&format!("{sha}  ")));
    let out = verify_cli(&csv, None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("OK  {sha}"))
            && stdout.contains("payable to the partner 1.250000000"),
        "{stdout}"
    );
    // A tampered copy, or the wrong predecessor, does not verify.
    let tampered = text.replace("\npayable,1.250000000\n", "\npayable,2.250000000\n");
    let out = verify_cli(tampered.as_bytes(), None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("payable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!verify_cli(&csv, Some("00ff")).status.success());

    // Isolation: the other partner gets 404 for everything of Savanna's; so does a tenant;
    // a stranger is asked to log in.
    for file in ["statement.csv", "statement.pdf", "usage.csv"] {
        let path = format!("{base}/{file}");
        assert_eq!(
            download(&fjord, &path).await.0,
            StatusCode::NOT_FOUND,
            "{path}"
        );
        assert_eq!(
            download(&tenant, &path).await.0,
            StatusCode::NOT_FOUND,
            "{path}"
        );
        assert_eq!(
            download(&app.browser(), &path).await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    let (status, _) = fjord
        .json("/api/statements_overview", &[("partner", &a)])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = fjord
        .json(
            "/api/statement_detail",
            &[("partner", &a), ("period", &last)],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = tenant.json("/api/statements_overview", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Fjord's own view is its own (an empty chain).
    let (status, own) = fjord.json("/api/statements_overview", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            own["partner_id"].as_str(),
            own["chain"].as_array().map(Vec::len)
        ),
        (Some(b.as_str()), Some(0))
    );
    // The statement page itself renders for the partner.
    let page = savanna.get(&base).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("statement-payable"));
}
