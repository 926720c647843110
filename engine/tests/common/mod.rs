//! What more than one engine test file needs: the real SmolLM2 file and Python packages that
//! the test command installs, each required when its variable says the test command set it up.

#![allow(dead_code)] // Each test file uses some of these.

use std::path::PathBuf;

use engine::{Event, Prompt, Request, SamplingParams, Worker};

/// SmolLM2-135M-Instruct (Q4_1) from TOKENMILL_SMOLLM2_GGUF: required when
/// TOKENMILL_REQUIRE_SMOLLM2 is set (the test command fetches it), skipped otherwise.
pub fn smollm2() -> Option<PathBuf> {
    let path = std::env::var_os("TOKENMILL_SMOLLM2_GGUF").map(PathBuf::from);
    let found = path.filter(|p| p.is_file());
    assert!(
        found.is_some() || std::env::var_os("TOKENMILL_REQUIRE_SMOLLM2").is_none(),
        "TOKENMILL_REQUIRE_SMOLLM2 is set but TOKENMILL_SMOLLM2_GGUF names no file"
    );
    if found.is_none() {
        eprintln!("skipped: TOKENMILL_SMOLLM2_GGUF is not set");
    }
    found
}

/// Whether python3 imports `modules`; required when TOKENMILL_REQUIRE_GGUF_PYTHON is set (the
/// test command installs the `gguf` and `jinja2` packages), skipped with a note otherwise.
pub fn python_has(modules: &str) -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok || std::env::var_os("TOKENMILL_REQUIRE_GGUF_PYTHON").is_none(),
        "TOKENMILL_REQUIRE_GGUF_PYTHON is set but python3 cannot import {modules}"
    );
    if !ok {
        eprintln!("skipped: python3 cannot import {modules}");
    }
    ok
}

/// Runs `script` with `args`, `stdin` as its input, and returns what it printed; panics with
/// its error output if it fails.
pub fn python(script: &str, args: &[&std::ffi::OsStr], stdin: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Greedy tokens for `prompt` and their text, `max_tokens` at most (all of them if
/// `ignore_eos`).
pub async fn generate(
    worker: &Worker,
    prompt: Prompt,
    max_tokens: usize,
    ignore_eos: bool,
) -> (Vec<u32>, String) {
    let mut r = Request::new(prompt);
    r.sampling = SamplingParams::greedy();
    r.max_tokens = Some(max_tokens);
    r.ignore_eos = ignore_eos;
    let (mut tokens, mut text) = (Vec::new(), String::new());
    for e in worker.submit(r).unwrap().collect().await {
        match e {
            Event::Token { token, text: t, .. } => {
                tokens.push(token);
                text.push_str(&t);
            }
            Event::Failed(m) => panic!("failed: {m}"),
            Event::Finished(_) => {}
        }
    }
    (tokens, text)
}
