//! Sign-up, login, logout, members and invitations through the real HTTP surface.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn sign_up_log_in_see_the_organisation_log_out() {
    let app = spawn_app().await;
    let b = app.browser();
    let r = b.sign_up("ada@example.com", "Acme Robotics").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(location(&r), "/login?signed_up=1&email=ada%40example.com");

    let r = b.login("ada@example.com", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(location(&r), "/dashboard");
    let me = b.me().await;
    assert_eq!(me["org_name"], "Acme Robotics");
    assert_eq!(me["role"], "owner");

    let page = b.get("/dashboard").await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("Acme Robotics"));

    let r = b.post("/api/logout", &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(b.me().await, Value::Null);
    let page = b.get("/dashboard").await;
    assert_eq!(page.status(), StatusCode::FOUND);
    assert_eq!(location(&page), "/login");
}

#[tokio::test]
async fn signing_up_an_existing_email_answers_exactly_like_a_new_one() {
    let app = spawn_app().await;
    let first = app.browser().sign_up("ada@example.com", "Acme").await;
    let (status, loc, body) = (
        first.status(),
        location(&first),
        first.text().await.unwrap(),
    );
    let again = app.browser().sign_up("ada@example.com", "Impostor").await;
    assert_eq!(again.status(), status);
    assert_eq!(location(&again), loc);
    assert_eq!(again.text().await.unwrap(), body);
    let b = app.browser();
    assert_eq!(
        b.login("ada@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
    assert_eq!(b.me().await["org_name"], "Acme");
}

#[tokio::test]
async fn unknown_email_and_wrong_password_get_the_same_answer() {
    let app = spawn_app().await;
    app.owner("ada@example.com", "Acme").await;
    let b = app.browser();
    let wrong = b.login("ada@example.com", "not the right password").await;
    let unknown = b
        .login("nobody@example.com", "not the right password")
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status(), wrong.status());
    assert_eq!(unknown.text().await.unwrap(), wrong.text().await.unwrap());
}

#[tokio::test]
async fn bad_sign_up_input_is_reported_per_field_and_creates_nothing() {
    let app = spawn_app().await;
    let b = app.browser();
    let cases = [
        ("email", "not-an-email", "email"),
        ("password", "short", "password"),
        ("password", "password1", "password"),
        ("org_name", "", "org_name"),
        ("org_kind", "partner", "org_kind"),
        ("region", "", "region"),
    ];
    for (key, bad, field) in cases {
        let mut form = vec![
            ("email", "ada@example.com"),
            ("password", PASSWORD),
            ("org_name", "Acme"),
            ("org_kind", "startup"),
            ("region", "europe"),
        ];
        for f in form.iter_mut() {
            if f.0 == key {
                f.1 = bad;
            }
        }
        let (status, body) = b.json("/api/sign_up", &form).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{key}={bad}: {body}");
        assert_eq!(body["Field"]["field"], field, "{body}");
    }
    // A missing field is a clear 400, not a 500.
    let (status, body) = b
        .json("/api/sign_up", &[("email", "ada@example.com")])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let users: i64 = db::sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(app.db().pool())
        .await
        .unwrap();
    assert_eq!(users, 0);
}

#[tokio::test]
async fn an_owner_invites_a_member_who_joins_through_the_link_once() {
    let app = spawn_app().await;
    let owner = app.owner("owner@a.example", "Org A").await;
    let (status, invite) = owner
        .json(
            "/api/invite",
            &[("email", "new@a.example"), ("role", "member")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{invite}");
    let link = invite["link"].as_str().unwrap();
    let token = link.rsplit('/').next().unwrap();
    assert!(link.starts_with(&format!("{}/invite/", app.base)));

    let page = app.browser().get(&format!("/invite/{token}")).await;
    let page = page.text().await.unwrap();
    assert!(
        page.contains("Join") && page.contains("Org A") && page.contains("new@a.example"),
        "{page}"
    );

    let member = app.browser();
    let r = member.accept(token, "a member's long passphrase").await;
    assert_eq!(r.status(), StatusCode::OK);
    let me = member.me().await;
    assert_eq!(me["org_name"], "Org A");
    assert_eq!(me["role"], "member");

    // The link works once.
    let (status, body) = app
        .browser()
        .json(
            "/api/accept_invitation",
            &[("token", token), ("password", "another long passphrase")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["Invalid"].as_str().unwrap().contains("invalid"),
        "{body}"
    );

    // A member cannot invite; the owner sees both members and can remove the new one.
    let (status, _) = member
        .json(
            "/api/invite",
            &[("email", "x@a.example"), ("role", "member")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, team) = owner.json("/api/team", &[]).await;
    let members = team["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    let member_id = members
        .iter()
        .find(|m| m["email"] == "new@a.example")
        .unwrap()["id"]
        .as_str()
        .unwrap();
    let (status, _) = owner.json("/api/remove_member", &[("id", member_id)]).await;
    assert_eq!(status, StatusCode::OK);
    // Removal ends the member's session at once.
    assert_eq!(member.me().await, Value::Null);
}

#[tokio::test]
async fn an_expired_invitation_is_refused() {
    let app = spawn_app().await;
    let owner = app.owner("owner@a.example", "Org A").await;
    let token = owner.invite("late@a.example", "member").await;
    db::sqlx::query("UPDATE invitations SET expires_at = $1")
        .bind(db::now_ms() - 1)
        .execute(app.db().pool())
        .await
        .unwrap();
    let (status, _) = app
        .browser()
        .json(
            "/api/accept_invitation",
            &[
                ("token", &token),
                ("password", "a member's long passphrase"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let page = app.browser().get(&format!("/invite/{token}")).await;
    assert!(page.text().await.unwrap().contains("Invitation not valid"));
}

#[tokio::test]
async fn another_organisation_cannot_see_or_change_members_or_invitations() {
    let app = spawn_app().await;
    let a = app.owner("owner@a.example", "Org A").await;
    let b = app.owner("owner@b.example", "Org B").await;
    let token = a.invite("new@a.example", "member").await;
    let (_, a_team) = a.json("/api/team", &[]).await;
    let invitation_id = a_team["invitations"][0]["id"].as_str().unwrap().to_string();
    let a_owner_id = a_team["members"][0]["id"].as_str().unwrap().to_string();

    let (_, b_team) = b.json("/api/team", &[]).await;
    let b_text = b_team.to_string();
    assert!(
        !b_text.contains("owner@a.example") && !b_text.contains("new@a.example"),
        "{b_text}"
    );
    assert_eq!(
        b.json("/api/revoke_invitation", &[("id", &invitation_id)])
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        b.json("/api/remove_member", &[("id", &a_owner_id)]).await.0,
        StatusCode::NOT_FOUND
    );

    // A's invitation and owner are untouched.
    let member = app.browser();
    let r = member.accept(&token, "a member's long passphrase").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(member.me().await["org_name"], "Org A");
    assert_eq!(a.me().await["org_name"], "Org A");
}

#[tokio::test]
async fn operators_create_partners_from_admin_and_tenants_cannot() {
    let app = spawn_app().await;
    let ops = crate::compute::operator(&app).await;
    assert_eq!(ops.me().await["is_operator"], true);
    let (status, created) = ops
        .json(
            "/api/create_partner",
            &[
                ("name", "Nimbus Cloud"),
                ("region", "europe"),
                ("owner_email", "first@nimbus.example"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let token = token_of(&created);
    let partner = app.browser();
    partner.accept(&token, "partner long passphrase").await;
    let me = partner.me().await;
    assert_eq!(me["org_name"], "Nimbus Cloud");
    assert_eq!(me["is_partner"], true);

    let tenant = app.owner("owner@a.example", "Org A").await;
    let (status, _) = tenant
        .json(
            "/api/create_partner",
            &[
                ("name", "Rogue"),
                ("region", "europe"),
                ("owner_email", "r@rogue.example"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        tenant.json("/api/partners", &[]).await.0,
        StatusCode::FORBIDDEN
    );
    let page = tenant.get("/admin").await.text().await.unwrap();
    assert!(!page.contains("Nimbus Cloud"));
}

#[tokio::test]
async fn an_unknown_page_is_a_404_page() {
    let app = spawn_app().await;
    let r = app.browser().get("/no/such/page").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.text().await.unwrap().contains("Page not found"));
}

#[tokio::test]
async fn sign_up_grants_show_on_the_credits_page_of_their_own_organisation_only() {
    let app = spawn_app().await;
    let credits = credits::Credits::new(app.db().clone());
    credits
        .create_program(&credits::ProgramSpec {
            name: "Startup launch credit".into(),
            sponsor_org_id: None,
            eligible_kinds: vec![accounts::OrgKind::Startup],
            eligible_regions: vec![],
            grant_amount: ledger::Nanos::parse_dollars("25").unwrap(),
            grant_lifetime_days: 90,
            budget: ledger::Nanos::parse_dollars("30").unwrap(),
            auto_on_signup: true,
            requires_verified_email: false,
        })
        .await
        .unwrap();
    let a = app.owner("owner@a.example", "Org A").await;
    let b = app.owner("owner@b.example", "Org B").await;

    let (status, view) = a.json("/api/credits", &[]).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["available"], "$25.00");
    assert_eq!(view["buckets"][0]["label"], "Startup launch credit");
    assert_eq!(view["history"].as_array().unwrap().len(), 1);
    assert_eq!(view["history"][0]["amount"], "$25.00");

    // The budget had room for one grant: B signed up, but got nothing, and sees nothing of A's.
    let (_, view) = b.json("/api/credits", &[]).await;
    assert_eq!(view["available"], "$0.00");
    assert_eq!(view["history"], Value::Array(vec![]));
    let page = b.get("/credits").await.text().await.unwrap();
    assert!(page.contains("No credit movements yet"), "{page}");
    assert!(!page.contains("Startup launch credit"));

    // Not signed in: no credits.
    let (status, _) = app.browser().json("/api/credits", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
