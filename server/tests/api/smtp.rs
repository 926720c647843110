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
    let mut message = None;
    for _ in 0..200 {
        if let Some(file) = std::fs::read_dir(&new).ok().and_then(|mut d| d.next()) {
            message = Some(std::fs::read_to_string(file.unwrap().path()).unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let message = unfold_letter(&message.expect("a message reached the SMTP server"));
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
}
