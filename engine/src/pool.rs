//! The worker pool: one worker per device and model, each on its own thread, started together
//! (a model that fails to load is reported at start). Requests go to the least-loaded worker
//! serving their model; health is a real one-token generation.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::EngineError;
use crate::request::{Event, Priority, Prompt, Request, SubmitError};
use crate::sampling::SamplingParams;
use crate::worker::{Generation, Worker, WorkerSpec};

pub struct Pool {
    workers: Vec<Arc<Worker>>,
}

/// A snapshot of one worker, for pages and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerStatus {
    pub model_id: String,
    pub device: String,
    pub device_name: String,
    /// The device's memory, where known.
    pub device_memory_bytes: Option<u64>,
    pub alive: bool,
    pub waiting: usize,
    pub running: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    pub tokens_generated: u64,
    pub prompt_tokens: u64,
    pub steps: u64,
    pub last_step: Duration,
    pub preemptions: u64,
}

impl Pool {
    /// Starts every worker; the first that fails to load fails the pool (the others stop).
    pub fn start(specs: Vec<WorkerSpec>) -> Result<Pool, EngineError> {
        let mut workers = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = spec.model_id.clone();
            let w =
                Worker::start(spec).map_err(|e| EngineError::Device(format!("model {id}: {e}")))?;
            workers.push(Arc::new(w));
        }
        Ok(Pool { workers })
    }

    pub fn workers(&self) -> &[Arc<Worker>] {
        &self.workers
    }

    /// The models served, each once, in the order they were configured.
    pub fn models(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for w in &self.workers {
            if !out.contains(&w.info.model_id) {
                out.push(w.info.model_id.clone());
            }
        }
        out
    }

    pub fn worker_for(&self, model: &str) -> Result<&Arc<Worker>, SubmitError> {
        let mut serving = self
            .workers
            .iter()
            .filter(|w| w.info.model_id == model)
            .peekable();
        if serving.peek().is_none() {
            return Err(SubmitError::UnknownModel(model.to_string()));
        }
        serving
            .filter(|w| !w.counters.stopped.load(Ordering::Relaxed))
            .min_by_key(|w| {
                w.counters.waiting.load(Ordering::Relaxed)
                    + w.counters.running.load(Ordering::Relaxed)
            })
            .ok_or(SubmitError::Unavailable)
    }

    pub fn submit(&self, model: &str, request: Request) -> Result<Generation, SubmitError> {
        self.worker_for(model)?.submit(request)
    }

    pub fn status(&self) -> Vec<WorkerStatus> {
        self.workers
            .iter()
            .map(|w| {
                let c = &w.counters;
                WorkerStatus {
                    model_id: w.info.model_id.clone(),
                    device: w.info.device.id.clone(),
                    device_name: w.info.device.name.clone(),
                    device_memory_bytes: w.info.device.memory_bytes,
                    alive: !c.stopped.load(Ordering::Relaxed),
                    waiting: c.waiting.load(Ordering::Relaxed),
                    running: c.running.load(Ordering::Relaxed),
                    kv_blocks_used: c.kv_blocks_used.load(Ordering::Relaxed),
                    kv_blocks_total: c.kv_blocks_total.load(Ordering::Relaxed),
                    tokens_generated: c.tokens_generated.load(Ordering::Relaxed),
                    prompt_tokens: c.prompt_tokens.load(Ordering::Relaxed),
                    steps: c.steps.load(Ordering::Relaxed),
                    last_step: Duration::from_micros(c.last_step_micros.load(Ordering::Relaxed)),
                    preemptions: c.preemptions.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Health: every worker generates one real token within `timeout`. Returns the failures.
    pub async fn health(&self, timeout: Duration) -> Vec<(String, String)> {
        let mut failures = Vec::new();
        for w in &self.workers {
            let mut probe = Request::new(Prompt::Tokens(vec![0]));
            probe.sampling = SamplingParams::greedy();
            probe.max_tokens = Some(1);
            probe.priority = Priority::Production;
            probe.ignore_eos = true;
            probe.tenant = "health".into();
            let outcome = match w.submit(probe) {
                Err(e) => Err(e.to_string()),
                Ok(generation) => match tokio::time::timeout(timeout, generation.collect()).await {
                    Err(_) => Err(format!("no token within {timeout:?}")),
                    Ok(events) => match events.last() {
                        Some(Event::Finished(f)) if f.completion_tokens == 1 => Ok(()),
                        Some(Event::Failed(m)) => Err(m.clone()),
                        other => Err(format!("unexpected end: {other:?}")),
                    },
                },
            };
            if let Err(e) = outcome {
                failures.push((w.info.model_id.clone(), e));
            }
        }
        failures
    }
}
