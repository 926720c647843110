//! The official `openai` Python package, unmodified, against the running portal: models list
//! and retrieve, chat (whole and streamed with usage), completions with logprobs, and errors
//! raised as the client's own exception types. `scripts/test` installs the package from PyPI
//! and requires this test to run; elsewhere it is skipped when the package is missing.

use std::process::Command;

use crate::completions::api_long_context;

fn openai_importable() -> bool {
    Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn the_official_python_client_works_unmodified() {
    if !openai_importable() {
        assert!(
            std::env::var("TOKENMILL_REQUIRE_OPENAI_PYTHON").is_err(),
            "the openai Python package is required (scripts/test installs it)"
        );
        eprintln!("skipped: the openai Python package is not installed");
        return;
    }
    let (api, _model) = api_long_context().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_client.py");
    let (base, key) = (api.app.base.clone(), api.key.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .env("TOKENMILL_BASE_URL", base)
            .env("TOKENMILL_API_KEY", key)
            .env("TOKENMILL_MODEL", "tiny-chat")
            .output()
            .expect("run python3")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("openai client: ok"), "{stdout}");
}
