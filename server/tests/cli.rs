//! The `tokenmill` binary's admin command, run as a person would.

use std::{io::Write, process::Command, process::Stdio};

use accounts::{Accounts, LoginLimits};
use db::testing::TestDb;

fn tokenmill() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tokenmill"))
}

#[tokio::test]
async fn create_operator_reads_the_password_from_the_environment_or_stdin() {
    let t = TestDb::sqlite().await;
    let out = tokenmill()
        .args([
            "admin",
            "create-operator",
            "--email",
            "ops@tokenmill.example",
        ])
        .env("DATABASE_URL", &t.url)
        .env("TOKENMILL_OPERATOR_PASSWORD", "operator long passphrase")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Operator ops@tokenmill.example created")
    );

    let mut child = tokenmill()
        .args([
            "admin",
            "create-operator",
            "--email",
            "ops2@tokenmill.example",
        ])
        .env("DATABASE_URL", &t.url)
        .env_remove("TOKENMILL_OPERATOR_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"second operator passphrase\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let accounts = Accounts::new(t.db.clone(), LoginLimits::default());
    let ops = accounts
        .login("ops@tokenmill.example", "operator long passphrase", "ip")
        .await
        .unwrap();
    assert!(ops.is_operator);
    let ops2 = accounts
        .login("ops2@tokenmill.example", "second operator passphrase", "ip")
        .await
        .unwrap();
    assert!(ops2.is_operator);
    assert_eq!(
        ops.org_id, ops2.org_id,
        "operators share the platform organisation"
    );
    t.finish().await;
}

#[tokio::test]
async fn create_operator_refuses_a_weak_password_and_a_duplicate_email() {
    let t = TestDb::sqlite().await;
    let run = |password: &str| {
        tokenmill()
            .args([
                "admin",
                "create-operator",
                "--email",
                "ops@tokenmill.example",
            ])
            .env("DATABASE_URL", &t.url)
            .env("TOKENMILL_OPERATOR_PASSWORD", password)
            .output()
            .unwrap()
    };
    let weak = run("password1");
    assert!(!weak.status.success());
    assert!(String::from_utf8_lossy(&weak.stderr).contains("too common"));
    assert!(run("operator long passphrase").status.success());
    let again = run("operator long passphrase");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    t.finish().await;
}

#[test]
fn model_fixture_writes_a_directory_the_engine_loads() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokenmill()
        .args([
            "model", "fixture", "--seed", "3", "--arch", "qwen2", "--dtype", "bf16", "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ck = engine::Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.config.architecture, engine::Architecture::Qwen2);
    assert_eq!(ck.dtype().unwrap(), engine::DType::BF16);
    let bad = tokenmill()
        .args(["model", "fixture", "--shape", "gpt-5", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("gpt-5"));
}

#[test]
fn bench_reports_prefill_decode_by_batch_and_bandwidth() {
    let dir = tempfile::tempdir().unwrap();
    engine::fixture::write_fixture(dir.path(), &engine::fixture::FixtureSpec::default()).unwrap();
    let out = tokenmill()
        .args([
            "bench",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--batch",
            "1,3",
            "--prompt",
            "20",
            "--tokens",
            "5",
            "--kv-mib",
            "8",
            "--model",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in ["prefill ", "decode batch 1 ", "decode batch 3 ", "% of "] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
    let bad = tokenmill()
        .args(["bench", "--device", "cuda:7", "--model"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cuda:7"));
}
