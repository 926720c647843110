//! Batch-1 CPU decode speed of the engine against candle's Llama, on the same model directory,
//! the same prompt and the same number of threads, in one process. Each round prefills the
//! prompt, then greedily decodes `--tokens` tokens one at a time; only the decode loop is timed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama::{Cache, Config as CandleConfig, Llama, LlamaConfig};
use engine::backend::{Backend, SeqStep};
use engine::cpu::{CpuBackend, CpuConfig};
use engine::fixture::{write_fixture, FixtureSpec, Shape};

const BLOCK: usize = 16;

struct Args {
    model: Option<PathBuf>,
    /// The fixture shape written and used when there is no `--model`.
    shape: String,
    threads: usize,
    prompt: usize,
    tokens: usize,
    rounds: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        model: None,
        shape: "smollm2-135m".into(),
        threads: 2,
        prompt: 32,
        tokens: 128,
        rounds: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let n = || {
            value
                .parse::<usize>()
                .with_context(|| format!("{flag} {value}"))
        };
        match flag.as_str() {
            "--model" => a.model = Some(PathBuf::from(&value)),
            "--shape" => a.shape = value,
            "--threads" => a.threads = n()?.max(1),
            "--prompt" => a.prompt = n()?.max(1),
            "--tokens" => a.tokens = n()?.max(1),
            "--rounds" => a.rounds = n()?.max(1),
            _ => bail!(
                "unknown flag {flag} (--model DIR | --shape S, --threads --prompt --tokens --rounds N)"
            ),
        }
    }
    Ok(a)
}

fn argmax(logits: &[f32]) -> u32 {
    // The first maximum wins, so an exact tie is broken the same way on both sides.
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// One greedy run: the prefill's argmax, then one token per decode step, each fed back; only
/// the decode loop is timed. Returns the tokens and the decode tokens per second.
fn greedy(
    prompt: &[u32],
    n: usize,
    mut forward: impl FnMut(&[u32], usize) -> Result<u32>,
) -> Result<(Vec<u32>, f64)> {
    let mut out = vec![forward(prompt, 0)?];
    let t0 = Instant::now();
    for i in 0..n {
        let next = forward(&out[i..=i], prompt.len() + i)?;
        out.push(next);
    }
    Ok((out, n as f64 / t0.elapsed().as_secs_f64()))
}

fn run_engine(backend: &mut CpuBackend, prompt: &[u32], n: usize) -> Result<(Vec<u32>, f64)> {
    let blocks: Vec<u32> = (0..(prompt.len() + n).div_ceil(BLOCK) as u32).collect();
    greedy(prompt, n, |tokens, start| {
        let step = SeqStep {
            tokens,
            start,
            blocks: &blocks,
            want_logits: true,
        };
        Ok(argmax(backend.forward(&[step])?))
    })
}

fn run_candle(
    model: &Llama,
    cfg: &CandleConfig,
    prompt: &[u32],
    n: usize,
) -> Result<(Vec<u32>, f64)> {
    // A fresh cache per round: candle's KV cache only grows (it concatenates each step).
    let mut cache = Cache::new(true, DType::F32, cfg, &Device::Cpu)?;
    greedy(prompt, n, |tokens, pos| {
        let input = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
        let logits = model.forward(&input, pos, &mut cache)?.squeeze(0)?;
        Ok(argmax(&logits.to_vec1::<f32>()?))
    })
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0
}

/// `--model`, or the fixture `tokenmill bench` uses by default (written if missing), at the
/// same path relative to the working directory: data/bench-models/<shape>-f32.
fn model_dir(model: Option<PathBuf>, shape: &str) -> Result<PathBuf> {
    if let Some(dir) = model {
        return Ok(dir);
    }
    let dir = PathBuf::from(format!("data/bench-models/{shape}-f32"));
    if !dir.join("model.safetensors").exists() {
        println!("Writing a {shape} f32 fixture to {}", dir.display());
        let spec = FixtureSpec {
            shape: Shape::parse(shape).context("unknown shape")?,
            ..FixtureSpec::default()
        };
        write_fixture(&dir, &spec)?;
    }
    Ok(dir)
}

fn load_candle(dir: &Path) -> Result<(Llama, CandleConfig)> {
    let text = std::fs::read_to_string(dir.join("config.json"))?;
    let raw: LlamaConfig = serde_json::from_str(&text)?;
    let config = raw.into_config(false);
    // SAFETY: the model file is mapped read-only and not modified while this process runs.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )?
    };
    Ok((Llama::load(vb, &config)?, config))
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let n = args.threads.to_string();
    // Before anything touches rayon or candle: candle sizes gemm's parallelism and its
    // elementwise barrier pool from these variables itself, not from the rayon pool it runs on.
    std::env::set_var("RAYON_NUM_THREADS", &n);
    std::env::set_var("CANDLE_NUM_THREADS", &n);
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global()?;

    let dir = model_dir(args.model, &args.shape)?;
    let ck = engine::Checkpoint::open(&dir)?;
    let c = &ck.config;
    let per_block = 2 * c.num_layers * BLOCK * c.num_kv_heads * c.head_dim * 4;
    let blocks = (args.prompt + args.tokens).div_ceil(BLOCK);
    let mut eng = CpuBackend::new(
        &ck,
        CpuConfig {
            threads: args.threads,
            kv_bytes: blocks * per_block,
            block_size: BLOCK,
        },
    )?;
    let (cmodel, cconfig) = load_candle(&dir)?;
    if cconfig.tie_word_embeddings != c.tie_word_embeddings {
        bail!("candle and the engine disagree on tie_word_embeddings");
    }
    // A fixed pseudo-random prompt, the same ids for both.
    let vocab = c.vocab_size as u64;
    let prompt: Vec<u32> = (0..args.prompt as u64)
        .map(|i| ((i * 7919 + 13) % vocab) as u32)
        .collect();

    println!(
        "model {} (tie_word_embeddings {})",
        dir.display(),
        c.tie_word_embeddings
    );
    println!(
        "engine threads: CpuConfig.threads = {} (its own rayon pool); {}",
        args.threads,
        eng.device().name
    );
    println!(
        "candle threads: RAYON_NUM_THREADS = CANDLE_NUM_THREADS = {n}; global rayon pool (gemm) of {}, candle get_num_threads() = {}",
        rayon::current_num_threads(),
        candle_core::utils::get_num_threads()
    );
    println!(
        "prompt {} tokens, decode {} tokens, {} rounds\n",
        args.prompt, args.tokens, args.rounds
    );

    let names = ["engine", "candle"];
    let (mut rates, mut last) = ([vec![], vec![]], [vec![], vec![]]);
    for round in 0..args.rounds {
        // Alternate who goes first, so neither always runs on the other's warm caches.
        for k in [round % 2, 1 - round % 2] {
            let (tokens, rate) = match k {
                0 => run_engine(&mut eng, &prompt, args.tokens)?,
                _ => run_candle(&cmodel, &cconfig, &prompt, args.tokens)?,
            };
            println!("round {}  {:<6} {rate:8.2} tok/s", round + 1, names[k]);
            rates[k].push(rate);
            last[k] = tokens;
        }
    }
    let (em, cm) = (median(&rates[0]), median(&rates[1]));
    println!(
        "\nmedian  engine {em:8.2} tok/s   candle {cm:8.2} tok/s   engine/candle {:.2}x",
        em / cm
    );
    let agree = last[0]
        .iter()
        .zip(&last[1])
        .take_while(|(a, b)| a == b)
        .count();
    let total = last[0].len();
    println!(
        "greedy tokens: first 8 agree: {}; {agree} of {total} agree before the first difference",
        agree >= 8.min(total)
    );
    for (name, tokens) in names.iter().zip(&last) {
        println!("{name} first 8: {:?}", &tokens[..8.min(total)]);
    }
    Ok(())
}
