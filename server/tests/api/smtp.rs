//! Letters over real SMTP: the portal configured with `TOKENMILL_SMTP_URL` hands a sign-up's
//! verification letter to a local SMTP server (`aiosmtpd` from PyPI, started here on a free
//! port, storing what it receives in a maildir), and the link in the message it received
//! verifies the address. `scripts/test` installs `aiosmtpd` and requires this test to run;
//! elsewhere it is skipped when the package is missing.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use reqwest::StatusCode;

use crate::helpers::*;

fn aiosmtpd_importable() -> bool {
    Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The SMTP server, stopped when dropped.
struct SmtpServer(Child);

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_verification_letter_goes_out_over_smtp_and_its_link_works() {
    if !aiosmtpd_importable() {
        assert!(
            std::env::var("TOKENMILL_REQUIRE_AIOSMTPD").is_err(),
            "the aiosmtpd Python package is required (scripts/test installs it)"
        );
        eprintln!("skipped: the aiosmtpd Python package is not installed");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let maildir = tempfile::tempdir().unwrap();
    let _server = SmtpServer(
        Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir.path().join("mail"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start aiosmtpd"),
    );
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let app = spawn_app_with(|c| {
        c.mail.smtp_url = Some(server::config::Secret(format!("smtp://127.0.0.1:{port}")));
        c.mail.from = "Tokenmill <no-reply@tokenmill.example>".into();
    })
    .await;
    let b = app
        .unverified_owner("smtp@startup.example", "Mail Works")
        .await;
    assert!(
        std::fs::read_dir(app.outbox.path())
            .unwrap()
            .next()
            .is_none(),
        "with SMTP nothing goes to the outbox"
    );

    let new = maildir.path().join("mail").join("new");
    let message = received(&new, 1).await;
    assert!(
        message.contains("From: Tokenmill <no-reply@tokenmill.example>"),
        "{message}"
    );
    assert!(message.contains("To: smtp@startup.example"), "{message}");
    assert!(message.contains("Subject: Verify your email address for Tokenmill"));
    let token = link_in(&message, "/verify/")
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let (status, body) = b.json("/api/verify_email", &[("token", &token)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(b.me().await["email_verified"], true);

    // A password reset over the same server: its link sets the new password.
    let (status, _) = app
        .browser()
        .json("/api/forgot_password", &[("email", "smtp@startup.example")])
        .await;
    assert_eq!(status, StatusCode::OK);
    let reset = received(&new, 2).await;
    assert!(
        reset.contains("Subject: Reset your Tokenmill password"),
        "{reset}"
    );
    let token = link_in(&reset, "/reset/")
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let r = app
        .browser()
        .post(
            "/api/reset_password",
            &[("token", &token), ("password", "a password set by mail")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        app.browser()
            .login("smtp@startup.example", "a password set by mail")
            .await
            .status(),
        StatusCode::OK
    );
}

/// The newest message once `count` have reached the maildir folder `new`.
async fn received(new: &std::path::Path, count: usize) -> String {
    for _ in 0..200 {
        let mut files: Vec<_> = std::fs::read_dir(new)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        if files.len() >= count {
            files.sort_by_key(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok());
            let last = files.last().unwrap();
            return unfold_letter(&std::fs::read_to_string(last).unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {count} messages reached the SMTP server");
}
