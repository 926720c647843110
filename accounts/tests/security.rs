//! Limits under concurrent bursts, email links and two-factor sign-in, against real databases:
//! SQLite always, PostgreSQL too when `TEST_DATABASE_URL` is set.

use accounts::{
    AccountError, Accounts, LoginLimits, SecondFactor, SignUpForm, SignUpOutcome,
    two_factor::code_at,
};

use testkit::PASSWORD;

fn form(email: &str, org: &str) -> SignUpForm {
    testkit::sign_up_form(email, org)
}

async fn signed_up(accounts: &Accounts, email: &str) -> (String, String) {
    match accounts
        .sign_up(form(email, "Acme"), &db::new_id())
        .await
        .unwrap()
    {
        SignUpOutcome::Created {
            user_id,
            verify_token,
            ..
        } => (user_id, verify_token),
        other => panic!("{other:?}"),
    }
}

/// What a burst of concurrent attempts got: (checked and refused, over the limit, let in).
async fn burst(
    accounts: &Accounts,
    attempts: Vec<(String, String, String)>,
) -> (usize, usize, usize) {
    let tasks: Vec<_> = attempts
        .into_iter()
        .map(|(email, password, ip)| {
            let accounts = accounts.clone();
            tokio::spawn(async move { accounts.login(&email, &password, &ip).await })
        })
        .collect();
    let (mut wrong, mut limited, mut ok) = (0, 0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Err(AccountError::InvalidCredentials) => wrong += 1,
            Err(AccountError::RateLimited { .. }) => limited += 1,
            Ok(_) => ok += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    (wrong, limited, ok)
}

db::storage_test!(
    async fn a_burst_of_guesses_at_one_account_gets_no_more_checks_than_the_limit(t) {
        let accounts = Accounts::new(t.db.clone(), LoginLimits::default());
        signed_up(&accounts, "ada@example.com").await;
        let guesses = (0..40)
            .map(|i| {
                (
                    "ada@example.com".to_string(),
                    format!("guess {i}"),
                    "203.0.113.9".to_string(),
                )
            })
            .collect();
        let (wrong, limited, ok) = burst(&accounts, guesses).await;
        assert_eq!(
            (wrong, limited, ok),
            (10, 30, 0),
            "{:?}: 10 per email and address",
            t.db.backend()
        );
        t.finish().await;
    }
);

db::storage_test!(
    async fn a_burst_from_one_address_over_many_accounts_gets_no_more_checks_than_the_limit(t) {
        let limits = LoginLimits {
            per_ip: 30,
            ..LoginLimits::default()
        };
        let accounts = Accounts::new(t.db.clone(), limits);
        let guesses = (0..45)
            .map(|i| {
                (
                    format!("user{i}@example.com"),
                    "guess".to_string(),
                    "203.0.113.9".to_string(),
                )
            })
            .collect();
        let (wrong, limited, _) = burst(&accounts, guesses).await;
        assert_eq!((wrong, limited), (30, 15), "{:?}", t.db.backend());
        t.finish().await;
    }
);

db::storage_test!(
    async fn after_nine_failures_a_burst_with_the_right_password_gets_one_check(t) {
        let accounts = Accounts::new(t.db.clone(), LoginLimits::default());
        signed_up(&accounts, "ada@example.com").await;
        let ip = "203.0.113.9";
        for _ in 0..9 {
            assert!(matches!(
                accounts.login("ada@example.com", "wrong", ip).await,
                Err(AccountError::InvalidCredentials)
            ));
        }
        let mut attempts: Vec<_> = (0..19)
            .map(|i| ("ada@example.com".into(), format!("guess {i}"), ip.into()))
            .collect();
        attempts.insert(7, ("ada@example.com".into(), PASSWORD.into(), ip.into()));
        let (wrong, limited, ok) = burst(&accounts, attempts).await;
        assert_eq!(wrong + ok, 1, "{:?}: one slot was left", t.db.backend());
        assert_eq!(limited, 19);
        t.finish().await;
    }
);

db::storage_test!(
    async fn a_burst_of_password_changes_checks_the_current_password_no_more_than_the_limit(t) {
        let accounts = Accounts::new(t.db.clone(), LoginLimits::default());
        let (user_id, _) = signed_up(&accounts, "ada@example.com").await;
        let user = accounts.user(&user_id).await.unwrap().unwrap();
        let tasks: Vec<_> = (0..30)
            .map(|i| {
                let (accounts, user) = (accounts.clone(), user.clone());
                tokio::spawn(async move {
                    accounts
                        .change_password(
                            &user,
                            &format!("guess {i}"),
                            "a new long passphrase",
                            "203.0.113.9",
                        )
                        .await
                })
            })
            .collect();
        let (mut wrong, mut limited) = (0, 0);
        for task in tasks {
            match task.await.unwrap() {
                Err(AccountError::Field {
                    field: "current_password",
                    ..
                }) => wrong += 1,
                Err(AccountError::RateLimited { .. }) => limited += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((wrong, limited), (10, 20), "{:?}", t.db.backend());
        t.finish().await;
    }
);

db::storage_test!(
    async fn sign_ups_from_one_address_are_limited_per_hour_registered_emails_included(t) {
        let limits = LoginLimits {
            signups_per_ip_hour: 3,
            ..LoginLimits::default()
        };
        let accounts = Accounts::new(t.db.clone(), limits);
        let ip = "198.51.100.7";
        for i in 0..2 {
            accounts
                .sign_up(form(&format!("f{i}@example.com"), "Farm"), ip)
                .await
                .unwrap();
        }
        // A registered email counts too: its answer must look like any other.
        assert!(matches!(
            accounts.sign_up(form("f0@example.com", "Farm"), ip).await,
            Ok(SignUpOutcome::AlreadyRegistered { .. })
        ));
        assert!(matches!(
            accounts.sign_up(form("f9@example.com", "Farm"), ip).await,
            Err(AccountError::RateLimited { .. })
        ));
        // Another address is not held back.
        accounts
            .sign_up(form("f9@example.com", "Farm"), "198.51.100.8")
            .await
            .unwrap();
        t.finish().await;
    }
);

db::storage_test!(
    async fn a_verification_link_works_once_and_verifies_only_its_user(t) {
        let accounts = Accounts::new(t.db.clone(), LoginLimits::default());
        let (user_id, token) = signed_up(&accounts, "ada@example.com").await;
        let (other, _) = signed_up(&accounts, "bob@example.com").await;
        assert!(
            !accounts
                .user(&user_id)
                .await
                .unwrap()
                .unwrap()
                .email_verified
        );
        let v = accounts.verify_email(&token).await.unwrap();
        assert!(v.newly && v.user.email_verified && v.user.id == user_id);
        assert!(matches!(
            accounts.verify_email(&token).await,
            Err(AccountError::LinkInvalid)
        ));
        assert!(matches!(
            accounts.verify_email("0".repeat(64).as_str()).await,
            Err(AccountError::LinkInvalid)
        ));
        assert!(!accounts.user(&other).await.unwrap().unwrap().email_verified);
        // A second link for a verified address is refused; a new one for the other works.
        let ada = accounts.user(&user_id).await.unwrap().unwrap();
        assert!(accounts.resend_verification(&ada).await.is_err());
        let bob = accounts.user(&other).await.unwrap().unwrap();
        let again = accounts.resend_verification(&bob).await.unwrap();
        assert!(accounts.verify_email(&again).await.unwrap().newly);
        t.finish().await;
    }
);

db::storage_test!(
    async fn a_password_reset_link_works_once_ends_every_session_and_retires_older_links(t) {
        let accounts = Accounts::new(t.db.clone(), LoginLimits::default());
        let (user_id, _) = signed_up(&accounts, "ada@example.com").await;
        db::sqlx::query(
            "INSERT INTO sessions (id, user_id, data, expires_at) VALUES ('s1', $1, '{}', $2)",
        )
        .bind(&user_id)
        .bind(db::now_ms() + 3_600_000)
        .execute(t.db.pool())
        .await
        .unwrap();
        // Unknown addresses get nothing, and say nothing.
        assert!(
            accounts
                .request_password_reset("ghost@example.com", "ip")
                .await
                .unwrap()
                .is_none()
        );
        let (_, first) = accounts
            .request_password_reset("Ada@Example.com", "ip")
            .await
            .unwrap()
            .unwrap();
        let (_, second) = accounts
            .request_password_reset("ada@example.com", "ip")
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(
            accounts
                .reset_password(&first, "a brand new passphrase")
                .await,
            Err(AccountError::LinkInvalid)
        ));
        assert_eq!(
            accounts.reset_link_email(&second).await.unwrap(),
            "ada@example.com"
        );
        // The policy applies to the new password.
        assert!(matches!(
            accounts.reset_password(&second, "password").await,
            Err(AccountError::Field { .. })
        ));
        accounts
            .reset_password(&second, "a brand new passphrase")
            .await
            .unwrap();
        assert!(matches!(
            accounts
                .reset_password(&second, "another new passphrase")
                .await,
            Err(AccountError::LinkInvalid)
        ));
        let sessions: i64 = db::sqlx::query_scalar("SELECT COUNT(*) FROM sessions")
            .fetch_one(t.db.pool())
            .await
            .unwrap();
        assert_eq!(sessions, 0);
        assert!(matches!(
            accounts.login("ada@example.com", PASSWORD, "ip").await,
            Err(AccountError::InvalidCredentials)
        ));
        let user = accounts
            .login("ada@example.com", "a brand new passphrase", "ip")
            .await
            .unwrap();
        // The link came to the address: it is verified now.
        assert!(user.email_verified);
        // Reset requests are limited per address: three an hour.
        assert!(
            accounts
                .request_password_reset("ada@example.com", "ip")
                .await
                .is_ok()
        );
        assert!(matches!(
            accounts
                .request_password_reset("ada@example.com", "ip")
                .await,
            Err(AccountError::RateLimited { .. })
        ));
        t.finish().await;
    }
);

db::storage_test!(
    async fn totp_codes_work_once_within_one_step_and_recovery_codes_once_each(t) {
        let accounts = Accounts::new(t.db.clone(), LoginLimits::default());
        let (user_id, _) = signed_up(&accounts, "ops@example.com").await;
        let user = accounts.user(&user_id).await.unwrap().unwrap();
        let setup = accounts.begin_two_factor(&user).await.unwrap();
        assert!(
            setup
                .url
                .starts_with("otpauth://totp/Tokenmill:ops%40example.com?secret=")
        );
        // A fixed clock: the middle of a 30 s step.
        let t0: i64 = 1_796_000_015_000;
        assert!(matches!(
            accounts.enable_two_factor(&user, "000000", "ip", t0).await,
            Err(AccountError::Field { .. })
        ));
        let codes = accounts
            .enable_two_factor(&user, &code_at(&setup.secret, t0).unwrap(), "ip", t0)
            .await
            .unwrap();
        assert_eq!(codes.len(), 10);
        // The code that switched it on does not sign in: each step is accepted once.
        let same = code_at(&setup.secret, t0).unwrap();
        assert!(matches!(
            accounts
                .second_factor(&user_id, &same, "ip", t0 + 1_000)
                .await,
            Err(AccountError::SecondFactor(_))
        ));
        // The next step's code does, once; a code two steps old does not.
        let next = code_at(&setup.secret, t0 + 30_000).unwrap();
        let (u, how) = accounts
            .second_factor(&user_id, &next, "ip", t0 + 30_000)
            .await
            .unwrap();
        assert_eq!((u.id.as_str(), how), (user_id.as_str(), SecondFactor::Code));
        assert!(
            accounts
                .second_factor(&user_id, &next, "ip", t0 + 31_000)
                .await
                .is_err()
        );
        let late = code_at(&setup.secret, t0 + 120_000).unwrap();
        assert!(
            accounts
                .second_factor(&user_id, &late, "ip", t0 + 200_000)
                .await
                .is_err()
        );
        // A recovery code, typed in capitals without dashes, works once.
        let typed = codes[3].to_uppercase().replace('-', "");
        let (_, how) = accounts
            .second_factor(&user_id, &typed, "ip", t0 + 300_000)
            .await
            .unwrap();
        assert_eq!(how, SecondFactor::RecoveryCode { left: 9 });
        assert!(
            accounts
                .second_factor(&user_id, &codes[3], "ip", t0 + 301_000)
                .await
                .is_err()
        );
        // Wrong codes count against the login limits like wrong passwords.
        for _ in 0..20 {
            let _ = accounts
                .second_factor(&user_id, "123456", "guesser", t0 + 302_000)
                .await;
        }
        assert!(matches!(
            accounts
                .second_factor(&user_id, &codes[4], "guesser", t0 + 303_000)
                .await,
            Err(AccountError::RateLimited { .. })
        ));
        // An operator at the command line switches it off; the user can set it up again.
        let reset = accounts.reset_two_factor("ops@example.com").await.unwrap();
        assert!(!accounts.user(&reset.id).await.unwrap().unwrap().two_factor);
        assert_eq!(accounts.recovery_codes_left(&user_id).await.unwrap(), 0);
        t.finish().await;
    }
);
