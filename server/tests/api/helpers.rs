use std::time::Duration;

use db::testing::TestDb;
use reqwest::{Client, Response, StatusCode, redirect::Policy};
use serde_json::Value;
use server::Config;

pub use testkit::PASSWORD;

pub struct TestApp {
    pub base: String,
    /// The origin browsers send: the configured public URL, else `base`.
    pub origin: String,
    pub test_db: TestDb,
    pub jobs: jobs::Jobs,
    /// The instance's delivery journal directory (removed with the app).
    pub _journal: tempfile::TempDir,
    /// Where the portal writes its letters (no SMTP server configured).
    pub outbox: tempfile::TempDir,
}

/// One browser: its own cookie jar, sending `Origin` like a browser does on a POST.
pub struct Browser {
    pub client: Client,
    pub base: String,
    pub origin: String,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// The database behind the app: SQLite, or PostgreSQL (on `TEST_DATABASE_URL`) when
/// `TEST_HARNESS_BACKEND=postgres`, so the whole HTTP suite can run on either backend.
pub async fn test_db() -> TestDb {
    match std::env::var("TEST_HARNESS_BACKEND").as_deref() {
        Ok("postgres") => TestDb::postgres()
            .await
            .expect("TEST_HARNESS_BACKEND=postgres needs TEST_DATABASE_URL"),
        _ => TestDb::sqlite().await,
    }
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    let test_db = test_db().await;
    let journal = tempfile::tempdir().unwrap();
    let outbox = tempfile::tempdir().unwrap();
    // No models unless a test asks: most tests never generate a token.
    let mut config = Config {
        database_url: test_db.url.clone(),
        journal_dir: Some(journal.path().to_path_buf()),
        trust_proxy: true,
        engine: server::config::EngineSettings::off(),
        mail: server::config::MailSettings {
            outbox_dir: outbox.path().to_path_buf(),
            ..Default::default()
        },
        // Every test signs up from 127.0.0.1; the sign-up limit has a test of its own.
        login_limits: accounts::LoginLimits {
            signups_per_ip_hour: 10_000,
            ..Default::default()
        },
        ..Config::default()
    };
    configure(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    config.addr = addr;
    let server::Portal { router, jobs, .. } = server::build(&config).await.expect("build app");
    tokio::spawn(server::serve(listener, router, std::future::pending()));
    let base = format!("http://{addr}");
    TestApp {
        origin: config.public_url.clone().unwrap_or_else(|| base.clone()),
        base,
        test_db,
        jobs,
        _journal: journal,
        outbox,
    }
}

impl Browser {
    /// A browser of the portal at `base` (its own origin).
    pub fn at(base: &str) -> Browser {
        Browser {
            client: Client::builder()
                .cookie_store(true)
                .redirect(Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base: base.to_string(),
            origin: base.to_string(),
        }
    }
}

impl TestApp {
    pub fn browser(&self) -> Browser {
        Browser {
            origin: self.origin.clone(),
            ..Browser::at(&self.base)
        }
    }

    pub fn db(&self) -> &db::Db {
        &self.test_db.db
    }

    /// Waits until every job admitted here is settled: an answer that ran to its end goes out
    /// while its settlement commits, so a test reads the ledger only after this.
    pub async fn settled(&self) {
        for _ in 0..10_000 {
            if self.jobs.unsettled() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("{} jobs still unsettled after 10 s", self.jobs.unsettled());
    }

    /// Signs up an organisation, verifies its owner's address from the letter in the outbox
    /// and logs the owner in on a new browser.
    pub async fn owner(&self, email: &str, org: &str) -> Browser {
        let b = self.unverified_owner(email, org).await;
        self.verify_from_letter(&b, email).await;
        b
    }

    /// Signs up an organisation and logs its owner in, without verifying the address.
    pub async fn unverified_owner(&self, email: &str, org: &str) -> Browser {
        let b = self.browser();
        let r = b.sign_up(email, org).await;
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
        let r = b.login(email, PASSWORD).await;
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
        b
    }

    /// Opens the verification link of the newest letter to `email` on `b`.
    pub async fn verify_from_letter(&self, b: &Browser, email: &str) -> Value {
        b.verify_from_letter(self.outbox.path(), email).await
    }

    /// The letters written to the outbox for `to`, oldest first.
    pub fn letters_to(&self, to: &str) -> Vec<String> {
        letters_in(self.outbox.path(), to)
    }

    /// The newest letter to `to` whose subject contains `subject`, waiting for it.
    pub async fn letter_to(&self, to: &str, subject: &str) -> String {
        letter_in(self.outbox.path(), to, subject).await
    }
}

/// The letters written to the outbox folder `dir` for `to` (unfolded `.eml` text), oldest
/// first.
pub fn letters_in(dir: &std::path::Path, to: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut letters: Vec<(std::time::SystemTime, String)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let text = std::fs::read_to_string(e.path()).ok()?;
            let modified = e.metadata().ok()?.modified().ok()?;
            let unfolded = unfold_letter(&text);
            unfolded
                .lines()
                .any(|l| l.eq_ignore_ascii_case(&format!("To: {to}")))
                .then_some((modified, unfolded))
        })
        .collect();
    letters.sort_by_key(|(at, _)| *at);
    letters.into_iter().map(|(_, l)| l).collect()
}

/// The newest letter in `dir` to `to` whose subject contains `subject`, waiting up to 10 s for
/// it (letters are sent from a task of their own).
pub async fn letter_in(dir: &std::path::Path, to: &str, subject: &str) -> String {
    for _ in 0..1000 {
        if let Some(l) = letters_in(dir, to).into_iter().rev().find(|l| {
            l.lines()
                .any(|h| h.starts_with("Subject:") && h.contains(subject))
        }) {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no letter {subject:?} to {to} in {}", dir.display());
}

/// A letter's text with quoted-printable soft line breaks joined and `=3D` decoded, so links
/// read as written.
pub fn unfold_letter(raw: &str) -> String {
    raw.replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=")
        .replace("\r\n", "\n")
}

/// The first link in `letter` containing `path` (a link stands on a line of its own).
pub fn link_in(letter: &str, path: &str) -> String {
    letter
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("http") && l.contains(path))
        .unwrap_or_else(|| panic!("no {path} link in {letter}"))
        .to_string()
}

impl Browser {
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Response {
        self.client
            .post(format!("{}{path}", self.base))
            .header("origin", &self.origin)
            .header("sec-fetch-site", "same-origin")
            .form(form)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.base))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap()
    }

    pub async fn sign_up(&self, email: &str, org: &str) -> Response {
        self.post(
            "/api/sign_up",
            &[
                ("email", email),
                ("password", PASSWORD),
                ("org_name", org),
                ("org_kind", "startup"),
                ("region", "europe"),
            ],
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post("/api/login", &[("email", email), ("password", password)])
            .await
    }

    /// Creates an invitation as this (owner) browser and returns the token from its link.
    pub async fn invite(&self, email: &str, role: &str) -> String {
        let (status, body) = self
            .json("/api/invite", &[("email", email), ("role", role)])
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        token_of(&body)
    }

    /// Accepts an invitation on this browser (which is then signed in).
    pub async fn accept(&self, token: &str, password: &str) -> Response {
        self.post(
            "/api/accept_invitation",
            &[("token", token), ("password", password)],
        )
        .await
    }

    /// Opens, on this browser, the verification link of the newest letter to `email` in the
    /// outbox folder `dir`.
    pub async fn verify_from_letter(&self, dir: &std::path::Path, email: &str) -> Value {
        let letter = letter_in(dir, email, "Verify your email").await;
        let token = link_in(&letter, "/verify/")
            .rsplit('/')
            .next()
            .unwrap()
            .to_string();
        let (status, body) = self.json("/api/verify_email", &[("token", &token)]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Sets up two-factor sign-in for the signed-in user as the Account page does; returns
    /// the secret (for codes at later logins).
    pub async fn enrol_two_factor(&self) -> String {
        let (status, setup) = self.json("/api/begin_two_factor", &[]).await;
        assert_eq!(status, StatusCode::OK, "{setup}");
        let secret = setup["secret"].as_str().unwrap().to_string();
        assert!(setup["qr_svg"].as_str().unwrap().starts_with("<?xml"));
        let code = accounts::two_factor::code_at(&secret, db::now_ms()).unwrap();
        let (status, codes) = self
            .json("/api/enable_two_factor", &[("code", &code)])
            .await;
        assert_eq!(status, StatusCode::OK, "{codes}");
        assert_eq!(codes["codes"].as_array().unwrap().len(), 10);
        secret
    }

    /// The signed-in profile, or `Value::Null` when not signed in.
    pub async fn me(&self) -> Value {
        let r = self.post("/api/me", &[]).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    pub async fn json(&self, path: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let r = self.post(path, form).await;
        let status = r.status();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

pub fn location(r: &Response) -> String {
    r.headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

pub fn session_cookie(r: &Response) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.contains("tokenmill_session="))
}

/// The `name=value` part of a Set-Cookie header.
pub fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

/// The token at the end of an invitation link in a JSON answer.
pub fn token_of(body: &Value) -> String {
    body["link"]
        .as_str()
        .expect("a link")
        .rsplit('/')
        .next()
        .unwrap()
        .to_string()
}
