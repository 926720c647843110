//! What the benchmarks share: a portal on loopback serving the test model on the CPU, with a
//! tenant that has plenty of paid credit and an API key.

use db::testing::TestDb;

pub struct Portal {
    pub base: String,
    pub key: String,
    _db: TestDb,
}

/// Starts the portal on `test_db` with the model in `dir` (as `model`), `engine` adjusting
/// the worker's settings, and signs up a tenant with $`dollars` of paid credit and a key.
pub async fn portal(
    test_db: TestDb,
    model: &str,
    dir: &std::path::Path,
    engine: impl FnOnce(&mut server::config::EngineSettings),
    dollars: i64,
) -> Portal {
    let mut settings = server::config::EngineSettings {
        models: vec![(model.into(), dir.to_path_buf())],
        write_fixture: false,
        devices: vec![engine::Device::Cpu],
        cpu_kv_mib: 64,
        ..server::config::EngineSettings::default()
    };
    engine(&mut settings);
    let config = server::Config {
        database_url: test_db.url.clone(),
        engine: settings,
        key_rpm: std::num::NonZeroU32::new(1_000_000).unwrap(),
        ..server::Config::default()
    };
    let server::Portal { router, db, .. } = server::build(&config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::serve(listener, router, std::future::pending()));
    let accounts = accounts::Accounts::new(db.clone(), Default::default());
    let form = accounts::SignUpForm {
        email: "bench@example.com".into(),
        password: "a long benchmark passphrase".into(),
        org_name: "Bench".into(),
        org_kind: "enterprise".into(),
        region: "europe".into(),
    };
    let accounts::SignUpOutcome::Created { user_id, .. } =
        accounts.sign_up(form, &db::new_id()).await.unwrap()
    else {
        panic!("sign-up")
    };
    let user = accounts.user(&user_id).await.unwrap().unwrap();
    credits::Credits::new(db.clone())
        .credit_paid(
            &user.org_id,
            ledger::Nanos::from_dollars(dollars).unwrap(),
            "bench",
            "bench",
        )
        .await
        .unwrap();
    let (_, key) = keys::ApiKeys::new(db.clone())
        .create(&user.org_id, &user.id, "bench", None)
        .await
        .unwrap();
    Portal {
        base,
        key,
        _db: test_db,
    }
}
