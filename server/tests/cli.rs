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
fn model_commands_write_convert_and_inspect_gguf_files() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str], path: &std::path::Path| {
        let out = tokenmill().args(args).arg(path).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    // The fixture straight to a Q4_1 file; a directory converted to Q8_0.
    let q4 = tmp.path().join("tiny-q4_1.gguf");
    run(&["model", "fixture", "--gguf", "q4_1", "--out"], &q4);
    let dir = tmp.path().join("tiny");
    run(&["model", "fixture", "--arch", "qwen2", "--out"], &dir);
    let q8 = tmp.path().join("tiny-q8_0.gguf");
    let out = tokenmill()
        .args(["model", "convert", "--quant", "q8_0", "--out"])
        .arg(&q8)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let text = run(&["model", "inspect"], &q4);
    assert!(
        text.contains("Llama: 2 layers, hidden 64, 4 heads (2 key/value)"),
        "{text}"
    );
    assert!(text.contains("tensors in Q4_1"), "{text}");
    assert!(text.contains("chat template: yes"), "{text}");
    // Rows of whole 256-value superblocks in Q4_K.
    let q4k = tmp.path().join("tiny-q4_k.gguf");
    run(
        &[
            "model", "fixture", "--shape", "tiny-256", "--gguf", "q4_k", "--out",
        ],
        &q4k,
    );
    let text = run(&["model", "inspect"], &q4k);
    assert!(text.contains("hidden 256"), "{text}");
    assert!(
        text.contains("tensors in Q4_K") && !text.contains("tensors in Q8_0"),
        "{text}"
    );
    let text = run(&["model", "inspect"], &q8);
    assert!(text.contains("Qwen2: 2 layers"), "{text}");
    assert!(
        text.contains("tensors in Q8_0") && text.contains("tensors in F32"),
        "{text}"
    );
    let text = run(&["model", "inspect"], &dir);
    assert!(
        text.contains("Qwen2: 2 layers") && !text.contains("tensors in"),
        "{text}"
    );

    // A file that is not GGUF is named with what is wrong.
    let junk = tmp.path().join("junk.gguf");
    std::fs::write(&junk, b"not a model").unwrap();
    let bad = tokenmill()
        .args(["model", "inspect"])
        .arg(&junk)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("junk.gguf") && err.contains("not a GGUF file"),
        "{err}"
    );
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

#[tokio::test]
async fn create_worker_token_prints_a_token_that_enrols_into_the_factory() {
    let t = TestDb::sqlite().await;
    let p = testkit::Platform::new(&t.db).await;
    let partner = p.partner("Savanna Cloud").await;
    let factory = p.factory(&partner.org_id, "Nairobi 1", "tiny/llama").await;
    let run = |factory: &str, operator: &str| {
        tokenmill()
            .args(["admin", "create-worker-token", "--factory", factory])
            .args(["--name", "rack 1", "--operator", operator])
            .env("DATABASE_URL", &t.url)
            .output()
            .unwrap()
    };
    let out = run("Nairobi 1", "ops@tokenmill.example");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let enrolled = p
        .compute
        .authenticate_worker(&token)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(enrolled.factory_id, factory.id);
    assert!(p.compute.factory(&factory.id).await.unwrap().unwrap().fleet);

    // Not an operator, or no such factory: an error, no token.
    for (factory, operator, says) in [
        (
            "Nairobi 1",
            "owner@savanna-cloud.example",
            "is not an operator",
        ),
        ("Nairobi 9", "ops@tokenmill.example", "no factory is named"),
    ] {
        let out = run(factory, operator);
        assert!(!out.status.success());
        assert!(out.stdout.is_empty());
        assert!(String::from_utf8_lossy(&out.stderr).contains(says));
    }
    let tokens = p
        .compute
        .worker_tokens(&partner, &factory.id)
        .await
        .unwrap();
    assert_eq!(tokens.len(), 1);
}
