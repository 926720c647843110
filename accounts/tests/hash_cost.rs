//! RELIABILITY A1: a login for an unknown email runs one argon2 verification, exactly like a
//! wrong password for a real account, so response time does not reveal which accounts exist.
//! Its own test binary: nothing else verifies passwords while the counter is read.

use accounts::{Accounts, LoginLimits, SignUpForm, password::verifications};
use db::testing::TestDb;

#[tokio::test]
async fn an_unknown_email_costs_one_password_verification_like_a_known_one() {
    let test_db = TestDb::sqlite().await;
    let accounts = Accounts::new(test_db.db.clone(), LoginLimits::default());
    accounts
        .sign_up(
            SignUpForm {
                email: "ada@example.com".into(),
                password: testkit::PASSWORD.into(),
                org_name: "Acme".into(),
                org_kind: "startup".into(),
                region: "europe".into(),
            },
            "192.0.2.1",
        )
        .await
        .unwrap();

    let before = verifications();
    assert!(
        accounts
            .login("nobody@example.com", "some password", "ip")
            .await
            .is_err()
    );
    assert_eq!(verifications() - before, 1, "unknown email");

    let before = verifications();
    assert!(
        accounts
            .login("ada@example.com", "some password", "ip")
            .await
            .is_err()
    );
    assert_eq!(verifications() - before, 1, "wrong password");
    test_db.finish().await;
}
