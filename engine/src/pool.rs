//! The worker pool: one worker per device and model, each on its own thread, started together
//! (a model that fails to load is reported at start). Requests go to the least-loaded worker
//! serving their model; health is a real one-token generation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::EngineError;
use crate::request::{Event, Priority, Prompt, Request, SubmitError};
use crate::sampling::SamplingParams;
use crate::worker::{Generation, Worker, WorkerSpec};

pub struct Pool {
    slots: Vec<Slot>,
}

/// One configured worker: its spec (to start it again), the running worker (none while it
/// loads), and whether it is drained (no new requests).
struct Slot {
    spec: WorkerSpec,
    worker: RwLock<Option<Arc<Worker>>>,
    draining: AtomicBool,
    /// A restart is under way (one at a time per slot).
    restarting: AtomicBool,
    /// The last restart could not load the model: the slot has no worker and is dead.
    failed: AtomicBool,
}

/// Where a worker is in its life, as the pool's page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    Loading,
    Ready,
    /// Takes no new requests; those it has run to their end.
    Draining,
    /// Its thread stopped (a failed step, or a shutdown).
    Dead,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Loading => "loading",
            WorkerState::Ready => "ready",
            WorkerState::Draining => "draining",
            WorkerState::Dead => "dead",
        }
    }
}

/// A snapshot of one worker, for pages and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerStatus {
    /// The worker's place in the pool (what drain and restart take).
    pub index: usize,
    pub state: WorkerState,
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
    /// How far the load has got, in thousandths (1000 once loaded).
    pub loaded_permille: u32,
}

/// Why a drain or restart was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("there is no worker {0}")]
    NoSuchWorker(usize),
    #[error("worker {0} is already restarting")]
    Restarting(usize),
    #[error("worker {index} did not start again: {message}")]
    Failed { index: usize, message: String },
}

/// How long a restart waits for the worker's requests to finish before it stops the worker
/// (those left end as cancelled).
pub const RESTART_DRAIN: Duration = Duration::from_secs(60);

impl Pool {
    /// Starts every worker, all loading at once (each on its own device and thread); one that
    /// fails to load fails the pool (the others stop).
    pub fn start(specs: Vec<WorkerSpec>) -> Result<Pool, EngineError> {
        let (pool, loading) = Pool::start_loading(specs);
        let outcomes = loading
            .join()
            .map_err(|_| EngineError::Device("the loading thread panicked".into()))?;
        if let Some(e) = outcomes.into_iter().find_map(Result::err) {
            for w in pool.workers() {
                w.stop();
            }
            return Err(e);
        }
        // The loading thread, the only other holder, has ended.
        Arc::try_unwrap(pool)
            .map_err(|_| EngineError::Device("the pool is still shared after loading".into()))
    }

    /// Starts every worker loading at once, each on its own thread, and returns without
    /// waiting: a worker shows as `loading` (with its progress) until its model is ready, and
    /// as `dead` if it fails to load. The returned thread ends with each worker's outcome, in
    /// order, once every load has ended. A node joins its fleet at once this way, so that its
    /// models' loading shows on the Workers page.
    pub fn start_loading(
        specs: Vec<WorkerSpec>,
    ) -> (
        Arc<Pool>,
        std::thread::JoinHandle<Vec<Result<(), EngineError>>>,
    ) {
        let slots = specs
            .into_iter()
            .map(|spec| Slot {
                spec,
                worker: RwLock::new(None),
                draining: AtomicBool::new(false),
                // Neither put back nor restarted while it loads.
                restarting: AtomicBool::new(true),
                failed: AtomicBool::new(false),
            })
            .collect();
        let pool = Arc::new(Pool { slots });
        let loading = Arc::clone(&pool);
        let outcomes = std::thread::spawn(move || {
            std::thread::scope(|scope| {
                let loads: Vec<_> = loading
                    .slots
                    .iter()
                    .map(|slot| scope.spawn(move || slot.load()))
                    .collect();
                loads
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(EngineError::Device(
                                "a worker panicked while loading".into(),
                            ))
                        })
                    })
                    .collect()
            })
        });
        (pool, outcomes)
    }

    /// The workers running now (a restarting one is left out while it loads).
    pub fn workers(&self) -> Vec<Arc<Worker>> {
        self.slots.iter().filter_map(Slot::current).collect()
    }

    /// How many requests the pool runs and queues at once, all workers together.
    pub fn capacity(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.spec.max_running + s.spec.max_waiting)
            .sum()
    }

    /// The models served, each once, in the order they were configured.
    pub fn models(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in &self.slots {
            if !out.contains(&s.spec.model_id) {
                out.push(s.spec.model_id.clone());
            }
        }
        out
    }

    /// The tokenizer, template and limits of `model`, from any of its workers (draining or
    /// not): what a caller needs to prepare a request that runs elsewhere.
    pub fn info(&self, model: &str) -> Option<Arc<crate::ModelInfo>> {
        self.slots
            .iter()
            .filter(|s| s.spec.model_id == model)
            .find_map(Slot::current)
            .map(|w| Arc::clone(&w.info))
    }

    /// The least-loaded worker that takes requests for `model`.
    pub fn worker_for(&self, model: &str) -> Result<Arc<Worker>, SubmitError> {
        let mut serving = self
            .slots
            .iter()
            .filter(|s| s.spec.model_id == model)
            .peekable();
        if serving.peek().is_none() {
            return Err(SubmitError::UnknownModel(model.to_string()));
        }
        serving
            .filter(|s| !s.draining.load(Ordering::Relaxed))
            .filter_map(Slot::current)
            .filter(|w| !w.counters.stopped.load(Ordering::Relaxed))
            .min_by_key(|w| {
                w.counters.waiting.load(Ordering::Relaxed)
                    + w.counters.running.load(Ordering::Relaxed)
            })
            .ok_or(SubmitError::Unavailable)
    }

    /// Takes worker `index` out of rotation (`true`) or back in (`false`): a drained worker
    /// gets no new requests and runs those it has to their end.
    pub fn set_draining(&self, index: usize, draining: bool) -> Result<(), ControlError> {
        let slot = self
            .slots
            .get(index)
            .ok_or(ControlError::NoSuchWorker(index))?;
        if !draining && slot.restarting.load(Ordering::SeqCst) {
            return Err(ControlError::Restarting(index));
        }
        slot.draining.store(draining, Ordering::SeqCst);
        Ok(())
    }

    /// Restarts worker `index`: drains it, waits up to [`RESTART_DRAIN`] for its requests to
    /// end, stops it, loads the model again from its directory and puts it back in rotation.
    /// The pool's other workers serve meanwhile.
    pub async fn restart(&self, index: usize) -> Result<(), ControlError> {
        let slot = self
            .slots
            .get(index)
            .ok_or(ControlError::NoSuchWorker(index))?;
        if slot.restarting.swap(true, Ordering::SeqCst) {
            return Err(ControlError::Restarting(index));
        }
        slot.draining.store(true, Ordering::SeqCst);
        slot.failed.store(false, Ordering::SeqCst);
        let result = async {
            if let Some(old) = slot.current() {
                let until = tokio::time::Instant::now() + RESTART_DRAIN;
                while old.counters.waiting.load(Ordering::Relaxed)
                    + old.counters.running.load(Ordering::Relaxed)
                    > 0
                    && tokio::time::Instant::now() < until
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let old = slot
                .worker
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            let spec = slot.spec.clone();
            let started = tokio::task::spawn_blocking(move || {
                if let Some(old) = old {
                    old.stop();
                }
                Worker::start(spec)
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
            match started {
                Ok(w) => {
                    *slot.worker.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(w));
                    Ok(())
                }
                Err(message) => Err(ControlError::Failed { index, message }),
            }
        }
        .await;
        match &result {
            Ok(()) => slot.draining.store(false, Ordering::SeqCst),
            Err(_) => slot.failed.store(true, Ordering::SeqCst),
        }
        slot.restarting.store(false, Ordering::SeqCst);
        result
    }

    pub fn submit(&self, model: &str, request: Request) -> Result<Generation, SubmitError> {
        self.worker_for(model)?.submit(request)
    }

    pub fn status(&self) -> Vec<WorkerStatus> {
        self.slots
            .iter()
            .enumerate()
            .map(|(index, slot)| {
                let Some(w) = slot.current() else {
                    return WorkerStatus {
                        index,
                        state: if slot.failed.load(Ordering::SeqCst) {
                            WorkerState::Dead
                        } else {
                            WorkerState::Loading
                        },
                        model_id: slot.spec.model_id.clone(),
                        device: String::new(),
                        device_name: String::new(),
                        device_memory_bytes: None,
                        alive: false,
                        waiting: 0,
                        running: 0,
                        kv_blocks_used: 0,
                        kv_blocks_total: 0,
                        tokens_generated: 0,
                        prompt_tokens: 0,
                        steps: 0,
                        last_step: Duration::ZERO,
                        preemptions: 0,
                        loaded_permille: slot.spec.progress.permille(),
                    };
                };
                let c = &w.counters;
                let alive = !c.stopped.load(Ordering::Relaxed);
                let state = if !alive {
                    WorkerState::Dead
                } else if slot.draining.load(Ordering::Relaxed) {
                    WorkerState::Draining
                } else {
                    WorkerState::Ready
                };
                WorkerStatus {
                    index,
                    state,
                    model_id: w.info.model_id.clone(),
                    device: w.info.device.id.clone(),
                    device_name: w.info.device.name.clone(),
                    device_memory_bytes: w.info.device.memory_bytes,
                    alive,
                    waiting: c.waiting.load(Ordering::Relaxed),
                    running: c.running.load(Ordering::Relaxed),
                    kv_blocks_used: c.kv_blocks_used.load(Ordering::Relaxed),
                    kv_blocks_total: c.kv_blocks_total.load(Ordering::Relaxed),
                    tokens_generated: c.tokens_generated.load(Ordering::Relaxed),
                    prompt_tokens: c.prompt_tokens.load(Ordering::Relaxed),
                    steps: c.steps.load(Ordering::Relaxed),
                    last_step: Duration::from_micros(c.last_step_micros.load(Ordering::Relaxed)),
                    preemptions: c.preemptions.load(Ordering::Relaxed),
                    loaded_permille: 1000,
                }
            })
            .collect()
    }

    /// Health: every worker generates one real token within `timeout`. Returns the failures.
    /// A model is healthy when one of its workers is (a worker that is restarting leaves its
    /// model to the others); each failing model is reported once, with its last failure.
    pub async fn health(&self, timeout: Duration) -> Vec<(String, String)> {
        let mut failures: Vec<(String, String)> = Vec::new();
        let mut healthy: Vec<String> = Vec::new();
        for slot in &self.slots {
            let model = &slot.spec.model_id;
            if healthy.contains(model) {
                continue;
            }
            let Some(w) = slot.current() else {
                failures.push((model.clone(), "loading".into()));
                continue;
            };
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
            match outcome {
                Ok(()) => healthy.push(model.clone()),
                Err(e) => failures.push((model.clone(), e)),
            }
        }
        failures.retain(|(m, _)| !healthy.contains(m));
        let mut reported: Vec<(String, String)> = Vec::new();
        for (m, e) in failures.into_iter().rev() {
            if !reported.iter().any(|(r, _)| *r == m) {
                reported.push((m, e));
            }
        }
        reported
    }
}

impl Slot {
    /// Loads the slot's worker (a slot made by [`Pool::start_loading`]); a failure leaves it
    /// dead.
    fn load(&self) -> Result<(), EngineError> {
        let started = Worker::start(self.spec.clone());
        let outcome = match started {
            Ok(w) => {
                *self.worker.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(w));
                Ok(())
            }
            Err(e) => {
                self.failed.store(true, Ordering::SeqCst);
                Err(EngineError::Device(format!(
                    "model {}: {e}",
                    self.spec.model_id
                )))
            }
        };
        self.restarting.store(false, Ordering::SeqCst);
        outcome
    }

    fn current(&self) -> Option<Arc<Worker>> {
        self.worker
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
