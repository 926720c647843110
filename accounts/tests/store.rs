//! Behaviour of the accounts layer against real databases: SQLite always, PostgreSQL too when
//! `TEST_DATABASE_URL` is set. Each story runs once per backend, on a fresh database.

use accounts::{AccountError, Accounts, LoginLimits, OrgRole, SignUpForm, SignUpOutcome};
use db::sqlx::Row;

use testkit::PASSWORD;

fn form(email: &str, org: &str) -> SignUpForm {
    testkit::sign_up_form(email, org)
}

async fn count(db: &db::Db, table: &str) -> i64 {
    db::sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
        .fetch_one(db.pool())
        .await
        .unwrap()
        .get("n")
}

db::storage_test!(
    async fn sign_up_then_log_in(t) {
        async fn story(accounts: &Accounts) {
            let outcome = accounts
                .sign_up(form("Ada@Example.com", "Acme Robotics"), "192.0.2.1")
                .await
                .unwrap();
            assert!(matches!(outcome, SignUpOutcome::Created { .. }));
            let user = accounts
                .login("ada@example.com", PASSWORD, "10.0.0.1")
                .await
                .unwrap();
            assert_eq!(user.email, "ada@example.com");
            assert_eq!(user.org_role, OrgRole::Owner);
            let org = accounts.org(&user.org_id).await.unwrap().unwrap();
            assert_eq!(org.name, "Acme Robotics");
            assert!(matches!(
                accounts
                    .login("ada@example.com", "not the password", "10.0.0.1")
                    .await,
                Err(AccountError::InvalidCredentials)
            ));
            assert!(matches!(
                accounts
                    .login("nobody@example.com", PASSWORD, "10.0.0.1")
                    .await,
                Err(AccountError::InvalidCredentials)
            ));
        }
        let accounts = Accounts::new(t.db.clone(), LoginLimits::default());
        story(&accounts).await;
        t.finish().await;
    }
);

db::storage_test!(
    async fn a_duplicate_sign_up_creates_nothing_and_keeps_the_first_password(t) {
        async fn story(accounts: &Accounts) {
            accounts
                .sign_up(form("ada@example.com", "Acme"), "192.0.2.1")
                .await
                .unwrap();
            let mut again = form("ADA@example.com", "Impostor Ltd");
            again.password = "a different long passphrase".into();
            assert!(matches!(
                accounts.sign_up(again, "192.0.2.1").await.unwrap(),
                SignUpOutcome::AlreadyRegistered { .. }
            ));
            assert_eq!(count(accounts.db(), "users").await, 1);
            assert_eq!(count(accounts.db(), "organizations").await, 1);
            accounts
                .login("ada@example.com", PASSWORD, "ip")
                .await
                .unwrap();
            assert!(
                accounts
                    .login("ada@example.com", "a different long passphrase", "ip")
                    .await
                    .is_err()
            );
        }
        let accounts = Accounts::new(t.db.clone(), LoginLimits::default());
        story(&accounts).await;
        t.finish().await;
    }
);

db::storage_test!(
    async fn concurrent_sign_ups_of_one_email_create_one_account(t) {
        async fn story(accounts: &Accounts) {
            let tasks: Vec<_> = (0..6)
                .map(|i| {
                    let accounts = accounts.clone();
                    tokio::spawn(async move {
                        accounts
                            .sign_up(
                                form("race@example.com", &format!("Org {i}")),
                                &format!("192.0.2.{i}"),
                            )
                            .await
                    })
                })
                .collect();
            let mut created = 0;
            for t in tasks {
                if let SignUpOutcome::Created { .. } = t.await.unwrap().unwrap() {
                    created += 1;
                }
            }
            assert_eq!(created, 1);
            assert_eq!(count(accounts.db(), "users").await, 1);
            assert_eq!(count(accounts.db(), "organizations").await, 1);
        }
        let accounts = Accounts::new(t.db.clone(), LoginLimits::default());
        story(&accounts).await;
        t.finish().await;
    }
);

db::storage_test!(
    async fn bad_sign_up_input_names_the_field_and_creates_nothing(t) {
        async fn story(accounts: &Accounts) {
            let cases = [
                (
                    SignUpForm {
                        email: "not-an-email".into(),
                        ..form("", "Acme")
                    },
                    "email",
                ),
                (
                    SignUpForm {
                        password: "short".into(),
                        ..form("a@example.com", "Acme")
                    },
                    "password",
                ),
                (
                    SignUpForm {
                        password: "password123".into(),
                        ..form("a@example.com", "Acme")
                    },
                    "password",
                ),
                (
                    SignUpForm {
                        org_name: " ".into(),
                        ..form("a@example.com", "")
                    },
                    "org_name",
                ),
                (
                    SignUpForm {
                        org_kind: "partner".into(),
                        ..form("a@example.com", "Acme")
                    },
                    "org_kind",
                ),
                (
                    SignUpForm {
                        region: "mars".into(),
                        ..form("a@example.com", "Acme")
                    },
                    "region",
                ),
            ];
            for (input, expected) in cases {
                match accounts.sign_up(input, "192.0.2.1").await {
                    Err(AccountError::Field { field, .. }) => assert_eq!(field, expected),
                    other => panic!("expected a {expected} error, got {other:?}"),
                }
            }
            assert_eq!(count(accounts.db(), "users").await, 0);
            assert_eq!(count(accounts.db(), "organizations").await, 0);
        }
        let accounts = Accounts::new(t.db.clone(), LoginLimits::default());
        story(&accounts).await;
        t.finish().await;
    }
);

db::storage_test!(
    async fn failed_logins_are_limited_per_account_and_ip_without_locking_out_the_owner(t) {
        async fn story(accounts: &Accounts) {
            accounts
                .sign_up(form("ada@example.com", "Acme"), "192.0.2.1")
                .await
                .unwrap();
            accounts
                .login("ada@example.com", PASSWORD, "home")
                .await
                .unwrap();
            // One client guessing: limited after 10 failures, even with the right password.
            for _ in 0..10 {
                assert!(matches!(
                    accounts
                        .login("ada@example.com", "wrong guess", "attacker")
                        .await,
                    Err(AccountError::InvalidCredentials)
                ));
            }
            assert!(matches!(
                accounts
                    .login("ada@example.com", PASSWORD, "attacker")
                    .await,
                Err(AccountError::RateLimited { .. })
            ));
            // Unknown emails are limited the same way (no enumeration through the limit).
            for _ in 0..10 {
                let _ = accounts
                    .login("ghost@example.com", "wrong guess", "attacker")
                    .await;
            }
            assert!(matches!(
                accounts
                    .login("ghost@example.com", "wrong guess", "attacker")
                    .await,
                Err(AccountError::RateLimited { .. })
            ));
            // The owner, from the address they last logged in from, still gets in.
            accounts
                .login("ada@example.com", PASSWORD, "home")
                .await
                .unwrap();
        }
        let accounts = Accounts::new(t.db.clone(), LoginLimits::default());
        story(&accounts).await;
        t.finish().await;
    }
);

db::storage_test!(
    async fn a_distributed_guess_is_limited_per_account_but_the_owner_still_logs_in(t) {
        async fn story(db: &db::Db) {
            let limits = LoginLimits {
                per_email: 5,
                ..LoginLimits::default()
            };
            let accounts = Accounts::new(db.clone(), limits);
            accounts
                .sign_up(form("ada@example.com", "Acme"), "192.0.2.1")
                .await
                .unwrap();
            accounts
                .login("ada@example.com", PASSWORD, "home")
                .await
                .unwrap();
            for i in 0..5 {
                let _ = accounts
                    .login("ada@example.com", "wrong", &format!("bot-{i}"))
                    .await;
            }
            assert!(matches!(
                accounts.login("ada@example.com", PASSWORD, "bot-99").await,
                Err(AccountError::RateLimited { .. })
            ));
            accounts
                .login("ada@example.com", PASSWORD, "home")
                .await
                .unwrap();
        }
        story(&t.db).await;
        t.finish().await;
    }
);

db::storage_test!(
    async fn an_invitation_works_once_and_only_for_its_organisation(t) {
        async fn story(accounts: &Accounts) {
            accounts
                .sign_up(form("owner@a.example", "Org A"), "192.0.2.1")
                .await
                .unwrap();
            accounts
                .sign_up(form("owner@b.example", "Org B"), "192.0.2.1")
                .await
                .unwrap();
            let a = accounts
                .login("owner@a.example", PASSWORD, "ip")
                .await
                .unwrap();
            let b = accounts
                .login("owner@b.example", PASSWORD, "ip")
                .await
                .unwrap();

            let (invitation, token) = accounts
                .invite(&a, "new@a.example", OrgRole::Member)
                .await
                .unwrap();
            assert_eq!(
                accounts.invitations(&a).await.unwrap(),
                vec![invitation.clone()]
            );
            assert!(accounts.invitations(&b).await.unwrap().is_empty());
            // B can neither revoke A's invitation nor see it.
            assert!(matches!(
                accounts.revoke_invitation(&b, &invitation.id).await,
                Err(AccountError::NotFound)
            ));

            let preview = accounts.preview_invitation(&token).await.unwrap();
            assert_eq!(preview.org_name, "Org A");
            let member = accounts
                .accept_invitation(&token, "a member's long passphrase")
                .await
                .unwrap();
            assert_eq!(member.org_id, a.org_id);
            assert_eq!(member.org_role, OrgRole::Member);
            assert!(matches!(
                accounts
                    .accept_invitation(&token, "another long passphrase")
                    .await,
                Err(AccountError::InvitationInvalid)
            ));
            assert!(matches!(
                accounts.preview_invitation("0".repeat(64).as_str()).await,
                Err(AccountError::InvitationInvalid)
            ));

            // Members: each owner sees only their own; B cannot remove A's member.
            let a_members: Vec<_> = accounts
                .members(&a)
                .await
                .unwrap()
                .into_iter()
                .map(|u| u.email)
                .collect();
            assert_eq!(a_members, ["owner@a.example", "new@a.example"]);
            assert_eq!(accounts.members(&b).await.unwrap().len(), 1);
            assert!(matches!(
                accounts.remove_member(&b, &member.id).await,
                Err(AccountError::NotFound)
            ));
            // A member cannot invite or remove.
            assert!(matches!(
                accounts
                    .invite(&member, "x@a.example", OrgRole::Member)
                    .await,
                Err(AccountError::Forbidden)
            ));
            assert!(matches!(
                accounts.remove_member(&member, &a.id).await,
                Err(AccountError::Forbidden)
            ));
            accounts.remove_member(&a, &member.id).await.unwrap();
            assert_eq!(accounts.members(&a).await.unwrap().len(), 1);
            assert!(
                accounts
                    .login("new@a.example", "a member's long passphrase", "ip")
                    .await
                    .is_err()
            );
        }
        let accounts = Accounts::new(t.db.clone(), LoginLimits::default());
        story(&accounts).await;
        t.finish().await;
    }
);

db::storage_test!(
    async fn an_expired_or_revoked_invitation_is_refused(t) {
        async fn story(accounts: &Accounts) {
            accounts
                .sign_up(form("owner@a.example", "Org A"), "192.0.2.1")
                .await
                .unwrap();
            let a = accounts
                .login("owner@a.example", PASSWORD, "ip")
                .await
                .unwrap();
            let (expired, expired_token) = accounts
                .invite(&a, "late@a.example", OrgRole::Member)
                .await
                .unwrap();
            db::sqlx::query("UPDATE invitations SET expires_at = $1 WHERE id = $2")
                .bind(db::now_ms() - 1)
                .bind(&expired.id)
                .execute(accounts.db().pool())
                .await
                .unwrap();
            assert!(matches!(
                accounts
                    .accept_invitation(&expired_token, "a member's long passphrase")
                    .await,
                Err(AccountError::InvitationInvalid)
            ));
            let (revoked, revoked_token) = accounts
                .invite(&a, "gone@a.example", OrgRole::Member)
                .await
                .unwrap();
            accounts.revoke_invitation(&a, &revoked.id).await.unwrap();
            assert!(matches!(
                accounts
                    .accept_invitation(&revoked_token, "a member's long passphrase")
                    .await,
                Err(AccountError::InvitationInvalid)
            ));
            assert_eq!(count(accounts.db(), "users").await, 1);
        }
        let accounts = Accounts::new(t.db.clone(), LoginLimits::default());
        story(&accounts).await;
        t.finish().await;
    }
);

db::storage_test!(
    async fn operators_create_partners_and_others_cannot(t) {
        async fn story(accounts: &Accounts) {
            let operator = accounts
                .create_operator("ops@tokenmill.example", "operator long passphrase")
                .await
                .unwrap();
            assert!(operator.is_operator);
            accounts
                .sign_up(form("owner@a.example", "Org A"), "192.0.2.1")
                .await
                .unwrap();
            let tenant = accounts
                .login("owner@a.example", PASSWORD, "ip")
                .await
                .unwrap();
            assert!(matches!(
                accounts
                    .create_partner(&tenant, "Cloud", "europe", "p@cloud.example")
                    .await,
                Err(AccountError::Forbidden)
            ));
            let (org, _, token) = accounts
                .create_partner(&operator, "Nimbus Cloud", "europe", "first@nimbus.example")
                .await
                .unwrap();
            let partner_owner = accounts
                .accept_invitation(&token, "partner long passphrase")
                .await
                .unwrap();
            assert_eq!(partner_owner.org_id, org.id);
            assert_eq!(partner_owner.org_role, OrgRole::Owner);
            assert_eq!(accounts.partners(&operator).await.unwrap(), vec![org]);
            assert!(matches!(
                accounts.partners(&tenant).await,
                Err(AccountError::Forbidden)
            ));
        }
        let accounts = Accounts::new(t.db.clone(), LoginLimits::default());
        story(&accounts).await;
        t.finish().await;
    }
);

db::storage_test!(
    async fn changing_the_password_needs_the_current_one(t) {
        async fn story(accounts: &Accounts) {
            accounts
                .sign_up(form("ada@example.com", "Acme"), "192.0.2.1")
                .await
                .unwrap();
            let user = accounts
                .login("ada@example.com", PASSWORD, "ip")
                .await
                .unwrap();
            assert!(matches!(
                accounts
                    .change_password(&user, "wrong", "brand new long passphrase", "ip")
                    .await,
                Err(AccountError::Field {
                    field: "current_password",
                    ..
                })
            ));
            assert!(matches!(
                accounts
                    .change_password(&user, PASSWORD, "short", "ip")
                    .await,
                Err(AccountError::Field {
                    field: "new_password",
                    ..
                })
            ));
            accounts
                .change_password(&user, PASSWORD, "brand new long passphrase", "ip")
                .await
                .unwrap();
            assert!(
                accounts
                    .login("ada@example.com", PASSWORD, "ip")
                    .await
                    .is_err()
            );
            accounts
                .login("ada@example.com", "brand new long passphrase", "ip")
                .await
                .unwrap();
        }
        let accounts = Accounts::new(t.db.clone(), LoginLimits::default());
        story(&accounts).await;
        t.finish().await;
    }
);

db::storage_test!(
    async fn guessing_the_current_password_on_the_account_page_is_limited_like_logins(t) {
        async fn story(accounts: &Accounts) {
            accounts
                .sign_up(form("ada@example.com", "Acme"), "192.0.2.1")
                .await
                .unwrap();
            let user = accounts
                .login("ada@example.com", PASSWORD, "thief")
                .await
                .unwrap();
            for _ in 0..10 {
                assert!(matches!(
                    accounts
                        .change_password(&user, "a guess", "brand new long passphrase", "thief")
                        .await,
                    Err(AccountError::Field {
                        field: "current_password",
                        ..
                    })
                ));
            }
            assert!(matches!(
                accounts
                    .change_password(&user, PASSWORD, "brand new long passphrase", "thief")
                    .await,
                Err(AccountError::RateLimited { .. })
            ));
        }
        let accounts = Accounts::new(t.db.clone(), LoginLimits::default());
        story(&accounts).await;
        t.finish().await;
    }
);
