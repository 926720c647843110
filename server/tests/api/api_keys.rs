//! API keys through the portal: created from a signed-in session, the secret shown once and
//! then only its display form, bad input refused with the field named, revocation effective at
//! once, and no organisation able to list or revoke another's keys.

use reqwest::StatusCode;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_member_creates_lists_and_revokes_keys_of_their_organisation_only() {
    let app = spawn_app().await;
    let owner = app.owner("owner@a.example", "Org A").await;
    let (status, created) = owner
        .json(
            "/api/create_api_key",
            &[("name", "production"), ("expires_in_days", "30")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(keys::well_formed(&secret), "{secret}");

    let (_, list) = owner.json("/api/api_keys", &[]).await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "production");
    assert_eq!(list[0]["status"], "active");
    assert!(list[0]["expires"].is_string());
    assert!(!list.iter().any(|k| k.to_string().contains(&secret[4..20])));
    let id = list[0]["id"].as_str().unwrap().to_string();
    // The page shows the key by its display form only.
    let page = owner.get("/keys").await.text().await.unwrap();
    assert!(page.contains(list[0]["display"].as_str().unwrap()));
    assert!(!page.contains(&secret));

    // Bad input: the field is named; nothing is created.
    let (status, body) = owner
        .json(
            "/api/create_api_key",
            &[("name", "x"), ("expires_in_days", "-3")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["Field"]["field"], "expires_in_days");
    let (status, _) = owner
        .json(
            "/api/create_api_key",
            &[("name", " "), ("expires_in_days", "")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Another organisation sees none of it and cannot revoke it.
    let rival = app.owner("owner@b.example", "Org B").await;
    let (_, theirs) = rival.json("/api/api_keys", &[]).await;
    assert_eq!(theirs.as_array().unwrap().len(), 0);
    let (status, _) = rival.json("/api/revoke_api_key", &[("id", &id)]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let keys = keys::ApiKeys::new(app.db().clone());
    assert!(keys.authenticate(&secret).await.is_ok());

    // Revoked by its owner: refused on the next use.
    let (status, _) = owner.json("/api/revoke_api_key", &[("id", &id)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        keys.authenticate(&secret).await,
        Err(keys::KeyError::Revoked)
    );
    let (_, list) = owner.json("/api/api_keys", &[]).await;
    assert_eq!(list[0]["status"], "revoked");

    // Signed out: no keys.
    let (status, _) = app.browser().json("/api/api_keys", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
