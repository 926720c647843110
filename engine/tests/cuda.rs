//! The CUDA backend. The kernels are compiled by NVRTC here whether or not there is a GPU
//! (CI installs NVRTC from PyPI and sets TOKENMILL_REQUIRE_NVRTC, so a broken kernel fails the
//! build). The parity and batch-invariance tests need a GPU and report "skipped: no GPU"
//! without one.

use std::path::Path;

use engine::backend::{Backend, SeqStep};
use engine::cpu::{CpuBackend, CpuConfig};
use engine::cuda::{self, CudaBackend, CudaConfig, KERNEL_NAMES};
use engine::fixture::{FixtureSpec, write_fixture};
use engine::{
    Checkpoint, DType, Device, Event, Prompt, Request, SamplingParams, Worker, WorkerSpec,
};

#[test]
fn every_kernel_compiles_with_nvrtc() {
    if !cuda::nvrtc_present() {
        assert!(
            std::env::var_os("TOKENMILL_REQUIRE_NVRTC").is_none(),
            "TOKENMILL_REQUIRE_NVRTC is set but libnvrtc cannot be loaded (LD_LIBRARY_PATH?)"
        );
        eprintln!("skipped: NVRTC not found");
        return;
    }
    // Ampere, Ada and Hopper.
    for arch in ["compute_80", "compute_89", "compute_90"] {
        let ptx = cuda::compile(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        let text = ptx.to_src();
        for name in KERNEL_NAMES {
            assert!(
                text.contains(&format!(".entry {name}(")),
                "{arch}: no entry point {name}"
            );
        }
    }
}

#[test]
fn asking_for_a_missing_gpu_is_a_clear_error() {
    if cuda::device_count() > 0 {
        eprintln!("skipped: a GPU is present");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path(), &FixtureSpec::default()).unwrap();
    let mut spec = WorkerSpec::new("tiny", dir.path());
    spec.device = Device::Cuda(0);
    let e = Worker::start(spec).err().expect("no GPU here").to_string();
    assert!(
        e.contains("cuda:0") && e.contains("no CUDA driver or GPU"),
        "{e}"
    );
    // auto falls back to the CPU.
    let mut spec = WorkerSpec::new("tiny", dir.path());
    spec.device = Device::Auto;
    spec.threads = 1;
    spec.cpu_kv_bytes = 1 << 20;
    assert_eq!(Worker::start(spec).unwrap().info.device.id, "cpu");
}

fn gpu() -> bool {
    if cuda::device_count() == 0 {
        eprintln!("skipped: no GPU");
        return false;
    }
    true
}

fn logits(b: &mut dyn Backend, tokens: &[u32]) -> Vec<Vec<f32>> {
    let blocks: Vec<u32> = (0..4).collect();
    let mut out = vec![
        b.forward(&[SeqStep {
            tokens: &tokens[..27],
            start: 0,
            blocks: &blocks,
            want_logits: true,
        }])
        .unwrap()
        .to_vec(),
    ];
    for p in 27..tokens.len() {
        out.push(
            b.forward(&[SeqStep {
                tokens: &tokens[p..p + 1],
                start: p,
                blocks: &blocks,
                want_logits: true,
            }])
            .unwrap()
            .to_vec(),
        );
    }
    out
}

#[test]
fn cuda_logits_match_the_cpu_within_bf16_tolerance() {
    if !gpu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_fixture(
        dir.path(),
        &FixtureSpec {
            dtype: DType::BF16,
            ..FixtureSpec::default()
        },
    )
    .unwrap();
    let ck = Checkpoint::open(dir.path()).unwrap();
    let tokens: Vec<u32> = (0..40u32).map(|i| (i * 37 + 11) % 512).collect();
    let mut cpu = CpuBackend::new(
        &ck,
        CpuConfig {
            threads: 2,
            kv_bytes: 1 << 22,
            block_size: 16,
        },
    )
    .unwrap();
    let mut gpu = CudaBackend::new(
        &ck,
        CudaConfig {
            ordinal: 0,
            block_size: 16,
            kv_fraction: 0.05,
            max_step_tokens: 64,
            max_seqs: 8,
        },
    )
    .unwrap();
    let (a, b) = (logits(&mut cpu, &tokens), logits(&mut gpu, &tokens));
    let mut worst = 0.0f32;
    for (x, y) in a.iter().zip(&b) {
        let scale = x.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (p, q) in x.iter().zip(y) {
            worst = worst.max((p - q).abs() / scale);
        }
    }
    eprintln!("largest CPU/GPU logit difference: {worst:e} of the largest logit");
    // bf16 activations carry 8 bits of mantissa: a few parts in a hundred after two layers.
    assert!(worst < 3e-2, "{worst}");
}

async fn greedy_run(w: &Worker, prompt: Vec<u32>, n: usize) -> Vec<u32> {
    let mut r = Request::new(Prompt::Tokens(prompt));
    r.sampling = SamplingParams::greedy();
    r.max_tokens = Some(n);
    r.ignore_eos = true;
    w.submit(r)
        .unwrap()
        .collect()
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::Token { token, .. } => Some(token),
            _ => None,
        })
        .collect()
}

fn gpu_worker(dir: &Path) -> Worker {
    let mut spec = WorkerSpec::new("tiny", dir);
    spec.device = Device::Cuda(0);
    spec.gpu_kv_fraction = 0.05;
    Worker::start(spec).unwrap()
}

#[tokio::test]
async fn cuda_greedy_output_is_the_same_alone_and_batched() {
    if !gpu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path(), &FixtureSpec::default()).unwrap();
    let w = gpu_worker(dir.path());
    let target: Vec<u32> = (0..37u32).map(|i| (i * 31 + 12) % 500).collect();
    let alone = greedy_run(&w, target.clone(), 40).await;
    let mut handles = Vec::new();
    let batch = std::sync::Arc::new(w);
    for i in 0..8u32 {
        let w = batch.clone();
        let prompt: Vec<u32> = (0..(5 + 9 * i)).map(|j| (j * 17 + i) % 500).collect();
        handles.push(tokio::spawn(
            async move { greedy_run(&w, prompt, 30).await },
        ));
    }
    let together = greedy_run(&batch, target, 40).await;
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(together, alone);
}
