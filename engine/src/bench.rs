//! The engine benchmark behind `tokenmill bench`: time to first token and prefill speed for a
//! long prompt, decode throughput at several batch sizes through the real worker (scheduler,
//! sampling and detokenization included), and the memory bandwidth batch-1 decode achieves
//! against the bandwidth measured on the same device; optionally `n` choices of the long
//! prompt sharing its KV blocks against `n` separate requests.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::backend::Device;
use crate::request::{Event, Priority, Prompt, Request};
use crate::sampling::SamplingParams;
use crate::worker::{Worker, WorkerSpec};
use crate::{Constraint, EngineError, Finish};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub dir: PathBuf,
    pub device: Device,
    pub threads: usize,
    pub batches: Vec<usize>,
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    pub kv_bytes: usize,
    /// When set, each decode run is repeated with every sequence constrained to this grammar,
    /// side by side with the plain run.
    pub constraint: Option<Constraint>,
    /// When set, this many choices of one long prompt, sharing its KV blocks, side by side
    /// with as many separate requests for it.
    pub choices: Option<usize>,
}

/// `n` answers to one long prompt, as the choices of one request and as separate requests.
#[derive(Debug, Clone)]
pub struct ChoicesResult {
    pub n: usize,
    pub shared: ChoicesRun,
    pub separate: ChoicesRun,
}

#[derive(Debug, Clone)]
pub struct ChoicesRun {
    /// Until every answer has its first token.
    pub last_first_token: Duration,
    /// Until every answer is complete.
    pub all_done: Duration,
}

#[derive(Debug, Clone)]
pub struct DecodeResult {
    pub batch: usize,
    pub tokens_per_s: f64,
    /// Median time between a sequence's tokens.
    pub inter_token: Duration,
    /// The same run with the grammar's mask on every sequence.
    pub masked: Option<Masked>,
}

#[derive(Debug, Clone)]
pub struct Masked {
    pub tokens_per_s: f64,
    pub inter_token: Duration,
    /// Tokens generated per sequence on average (a grammar may end an answer early).
    pub mean_tokens: f64,
}

#[derive(Debug, Clone)]
pub struct BenchReport {
    pub device: String,
    pub weight_bytes: u64,
    pub ttft: Duration,
    pub prefill_tokens_per_s: f64,
    pub decode: Vec<DecodeResult>,
    /// Batch-1 decode: weight bytes read per second.
    pub achieved_bandwidth: f64,
    /// The device's bandwidth as measured here (a plain streaming read or copy).
    pub measured_bandwidth: Option<f64>,
    pub choices: Option<ChoicesResult>,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gb = |b: f64| b / 1e9;
        writeln!(f, "device          {}", self.device)?;
        writeln!(
            f,
            "weights         {:.1} MB",
            self.weight_bytes as f64 / 1e6
        )?;
        writeln!(
            f,
            "prefill         {:.0} tok/s (TTFT {:.1} ms)",
            self.prefill_tokens_per_s,
            self.ttft.as_secs_f64() * 1e3
        )?;
        for d in &self.decode {
            writeln!(
                f,
                "decode batch {:<3} {:.1} tok/s ({:.2} ms between tokens)",
                d.batch,
                d.tokens_per_s,
                d.inter_token.as_secs_f64() * 1e3
            )?;
            if let Some(m) = &d.masked {
                writeln!(
                    f,
                    "  with the grammar {:.1} tok/s ({:.2} ms between tokens, {:+.1}%; {:.1} tokens a sequence)",
                    m.tokens_per_s,
                    m.inter_token.as_secs_f64() * 1e3,
                    100.0 * (m.inter_token.as_secs_f64() / d.inter_token.as_secs_f64() - 1.0),
                    m.mean_tokens
                )?;
            }
        }
        write!(
            f,
            "bandwidth       {:.1} GB/s at batch 1",
            gb(self.achieved_bandwidth)
        )?;
        if let Some(m) = self.measured_bandwidth {
            write!(
                f,
                " = {:.0}% of {:.1} GB/s measured",
                100.0 * self.achieved_bandwidth / m,
                gb(m)
            )?;
        }
        writeln!(f)?;
        if let Some(c) = &self.choices {
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            writeln!(
                f,
                "choices {:<8} shared prompt: every first token {:.0} ms, all done {:.0} ms; separate requests: {:.0} ms, {:.0} ms",
                c.n,
                ms(c.shared.last_first_token),
                ms(c.shared.all_done),
                ms(c.separate.last_first_token),
                ms(c.separate.all_done)
            )?;
        }
        Ok(())
    }
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> Request {
    let mut r = Request::new(Prompt::Tokens(prompt));
    r.sampling = SamplingParams::greedy();
    r.max_tokens = Some(max_tokens);
    r.ignore_eos = true;
    r.priority = Priority::Production;
    r.tenant = "bench".into();
    r
}

fn finish_of(events: Vec<Event>) -> Result<Finish, EngineError> {
    match events.into_iter().last() {
        Some(Event::Finished(f)) => Ok(f),
        Some(Event::Failed(m)) => Err(EngineError::Device(m)),
        other => Err(EngineError::Device(format!("no final event: {other:?}"))),
    }
}

fn wait(worker: &Worker, r: Request) -> Result<Finish, EngineError> {
    let g = worker
        .submit(r)
        .map_err(|e| EngineError::Device(e.to_string()))?;
    let mut events = g.events;
    let mut all = Vec::new();
    while let Some(e) = events.blocking_recv() {
        all.push(e);
    }
    finish_of(all)
}

fn prompt(len: usize, vocab: usize, salt: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((i * 7919 + salt * 104_729 + 13) % vocab) as u32)
        .collect()
}

/// One decode run of `batch` sequences: tokens/s after each sequence's first token, the
/// median time between a sequence's tokens, and the mean tokens a sequence.
fn decode_run(
    worker: &Worker,
    opts: &BenchOptions,
    batch: usize,
    constraint: Option<&Constraint>,
) -> Result<(f64, Duration, f64), EngineError> {
    let vocab = worker.info.config.vocab_size;
    let gens = (0..batch)
        .map(|i| {
            let mut r = request(prompt(16, vocab, 100 + i), opts.decode_tokens);
            r.constraint = constraint.cloned();
            worker.submit(r)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EngineError::Device(e.to_string()))?;
    let start = Instant::now();
    let mut finishes = Vec::new();
    let mut first = None::<Instant>;
    for g in gens {
        let mut events = g.events;
        let mut all = Vec::new();
        while let Some(e) = events.blocking_recv() {
            if first.is_none() && matches!(e, Event::Token { .. }) {
                first = Some(Instant::now());
            }
            all.push(e);
        }
        finishes.push(finish_of(all)?);
    }
    let end = Instant::now();
    // Tokens after each sequence's first, over the time from the first token to the end.
    let tokens: usize = finishes
        .iter()
        .map(|f| f.completion_tokens.saturating_sub(1))
        .sum();
    let span = end - first.unwrap_or(start);
    let mut gaps: Vec<Duration> = finishes
        .iter()
        .map(|f| f.decode_time / (f.completion_tokens as u32).saturating_sub(1).max(1))
        .collect();
    gaps.sort();
    let mean = finishes.iter().map(|f| f.completion_tokens).sum::<usize>() as f64
        / finishes.len().max(1) as f64;
    Ok((
        tokens as f64 / span.as_secs_f64(),
        gaps[gaps.len() / 2],
        mean,
    ))
}

/// `n` sampled answers to one long prompt, all queued at once: as the choices of one request
/// (sharing the prompt's blocks) or as `n` requests that each compute the prompt.
fn choices_run(
    worker: &Worker,
    opts: &BenchOptions,
    n: usize,
    shared: bool,
) -> Result<ChoicesRun, EngineError> {
    let refused = |e: crate::SubmitError| EngineError::Device(e.to_string());
    let long = prompt(opts.prompt_tokens, worker.info.config.vocab_size, 99);
    let sampled = |seed: u64| {
        let mut r = request(long.clone(), opts.decode_tokens);
        r.sampling = SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..SamplingParams::default()
        };
        r
    };
    let prepared = if shared {
        let first = worker.prepare(sampled(0)).map_err(refused)?;
        worker.info.choices(first, n, 1).map_err(refused)?
    } else {
        (0..n as u64)
            .map(|i| worker.prepare(sampled(i)))
            .collect::<Result<_, _>>()
            .map_err(refused)?
    };
    let start = Instant::now();
    let gens = prepared
        .into_iter()
        .map(|p| worker.enqueue(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(refused)?;
    let mut last_first_token = Duration::ZERO;
    for g in gens {
        let mut events = g.events;
        let mut all = Vec::new();
        while let Some(e) = events.blocking_recv() {
            all.push(e);
        }
        // Timed by the worker from the answer's submission.
        last_first_token = last_first_token.max(finish_of(all)?.time_to_first_token);
    }
    Ok(ChoicesRun {
        last_first_token,
        all_done: start.elapsed(),
    })
}

/// Runs the benchmark (blocking; minutes for real model shapes).
pub fn run(opts: &BenchOptions) -> Result<BenchReport, EngineError> {
    let max_batch = opts
        .batches
        .iter()
        .copied()
        .chain(opts.choices)
        .max()
        .unwrap_or(1);
    let mut spec = WorkerSpec::new("bench", &opts.dir);
    spec.device = opts.device;
    spec.threads = opts.threads;
    spec.cpu_kv_bytes = opts.kv_bytes;
    spec.max_running = max_batch;
    spec.max_waiting = max_batch + 1;
    // The whole prompt in one step, as a lone request would be prefilled.
    spec.step_tokens = opts.prompt_tokens.max(max_batch);
    let worker = Worker::start(spec)?;
    let vocab = worker.info.config.vocab_size;

    wait(&worker, request(prompt(16, vocab, 0), 4))?; // warm-up
    let mut ttfts: Vec<Duration> = (0..3)
        .map(|i| {
            wait(
                &worker,
                request(prompt(opts.prompt_tokens, vocab, i + 1), 1),
            )
        })
        .map(|f| f.map(|f| f.time_to_first_token))
        .collect::<Result<_, _>>()?;
    ttfts.sort();
    let ttft = ttfts[1];

    let mut decode = Vec::new();
    for &batch in &opts.batches {
        let (tokens_per_s, inter_token, _) = decode_run(&worker, opts, batch, None)?;
        let masked = match &opts.constraint {
            None => None,
            Some(c) => {
                let (tokens_per_s, inter_token, mean_tokens) =
                    decode_run(&worker, opts, batch, Some(c))?;
                Some(Masked {
                    tokens_per_s,
                    inter_token,
                    mean_tokens,
                })
            }
        };
        decode.push(DecodeResult {
            batch,
            tokens_per_s,
            inter_token,
            masked,
        });
    }
    let choices = match opts.choices {
        None => None,
        Some(n) => Some(ChoicesResult {
            n,
            shared: choices_run(&worker, opts, n, true)?,
            separate: choices_run(&worker, opts, n, false)?,
        }),
    };
    let weight_bytes = worker.info.weight_bytes;
    let b1 = decode
        .iter()
        .find(|d| d.batch == 1)
        .map_or(0.0, |d| 1.0 / d.inter_token.as_secs_f64());
    Ok(BenchReport {
        device: format!("{} ({})", worker.info.device.id, worker.info.device.name),
        weight_bytes,
        ttft,
        prefill_tokens_per_s: opts.prompt_tokens as f64 / ttft.as_secs_f64(),
        decode,
        achieved_bandwidth: weight_bytes as f64 * b1,
        measured_bandwidth: worker
            .info
            .device
            .bandwidth_bytes_per_s
            .or_else(|| (worker.info.device.id == "cpu").then(|| cpu_read_bandwidth(opts.threads))),
        choices,
    })
}

/// Read bandwidth of this machine's memory with `threads` threads: each sums its share of a
/// buffer far larger than the caches; the best of a few passes.
pub fn cpu_read_bandwidth(threads: usize) -> f64 {
    use rayon::prelude::*;
    let len = 256 << 20; // 1 GiB of f32
    let buf = vec![1.0f32; len];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build();
    let Ok(pool) = pool else { return 0.0 };
    let mut best = f64::MAX;
    for _ in 0..4 {
        let t = Instant::now();
        let sum: f32 = pool.install(|| {
            buf.par_chunks(len / (threads.max(1) * 8))
                .map(|c| {
                    let mut acc = [0.0f32; 16];
                    for block in c.chunks_exact(16) {
                        for (a, v) in acc.iter_mut().zip(block) {
                            *a += v;
                        }
                    }
                    acc.iter().sum::<f32>()
                })
                .sum()
        });
        std::hint::black_box(sum);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (len * 4) as f64 / best
}
