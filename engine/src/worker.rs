//! A worker: one model on one device, driven by its own OS thread. Callers validate and submit
//! on their own threads through a [`Worker`] handle; the thread takes new requests between
//! steps, plans each step with the scheduler, runs it on the backend, samples, detokenizes and
//! sends events. A request whose event receiver is dropped, or that is cancelled, leaves the
//! batch at the next step and its blocks are freed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokenizers::Tokenizer;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::backend::{Backend, Device, DeviceInfo, SeqStep};
use crate::chat::ChatTemplate;
use crate::constraint::{Grammars, SeqConstraint};
use crate::cpu::{CpuBackend, CpuConfig};
use crate::cuda::{self, CudaBackend, CudaConfig};
use crate::detok::{Delta, Detokenizer};
use crate::request::{
    Event, Finish, FinishReason, InvalidRequest, MAX_STOP, MAX_STOP_LEN, Prompt, Request,
    SubmitError,
};
use crate::sampling::{Scratch, SeqSampler};
use crate::scheduler::{Limits, Planned, Scheduler};
use crate::{Checkpoint, EngineError, LoadProgress, ModelConfig};

/// How to start a worker.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The model's name in the API.
    pub model_id: String,
    pub dir: PathBuf,
    pub device: Device,
    /// CPU threads (CPU backend).
    pub threads: usize,
    /// KV cache memory on the CPU.
    pub cpu_kv_bytes: usize,
    /// Share of the GPU memory left after loading that the KV cache takes.
    pub gpu_kv_fraction: f64,
    pub block_size: usize,
    /// Requests accepted but not yet started before `Overloaded`.
    pub max_waiting: usize,
    pub max_running: usize,
    pub step_tokens: usize,
    /// How far the load has got, each time the worker starts.
    pub progress: Arc<LoadProgress>,
}

impl WorkerSpec {
    pub fn new(model_id: impl Into<String>, dir: impl Into<PathBuf>) -> WorkerSpec {
        WorkerSpec {
            model_id: model_id.into(),
            dir: dir.into(),
            device: Device::Auto,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_kv_bytes: 512 << 20,
            gpu_kv_fraction: 0.85,
            block_size: 16,
            max_waiting: 256,
            max_running: 64,
            step_tokens: 512,
            progress: Arc::default(),
        }
    }
}

/// What the pool's page and `/metrics` read, updated by the worker thread.
#[derive(Default)]
pub struct Counters {
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
    pub kv_blocks_used: AtomicUsize,
    pub kv_blocks_total: AtomicUsize,
    pub tokens_generated: AtomicU64,
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens whose KV blocks a sequence took from a sibling instead of computing them.
    pub prompt_tokens_shared: AtomicU64,
    pub steps: AtomicU64,
    pub last_step_micros: AtomicU64,
    pub preemptions: AtomicU64,
    /// Set when the thread has stopped (shutdown or a failed step).
    pub stopped: AtomicBool,
}

/// What callers need to validate requests: the tokenizer, the template, the limits.
pub struct ModelInfo {
    pub model_id: String,
    pub config: ModelConfig,
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: Option<ChatTemplate>,
    pub device: DeviceInfo,
    /// Weight bytes read per decode step.
    pub weight_bytes: u64,
    /// Longest sequence (prompt plus output) this worker runs.
    pub context: usize,
    /// The grammar compiler, built on the first constrained request (it walks the whole
    /// vocabulary once).
    grammars: std::sync::OnceLock<Result<Arc<Grammars>, String>>,
    /// Every token's own bytes (special tokens marked), built at load.
    vocab_bytes: std::sync::OnceLock<Arc<Vec<Vec<u8>>>>,
}

/// A checkpoint's tokenizer and chat template.
fn text_side(ck: &Checkpoint) -> Result<(Arc<Tokenizer>, Option<ChatTemplate>), EngineError> {
    let tokenizer = Arc::new(
        Tokenizer::from_bytes(ck.tokenizer_json.as_bytes())
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?,
    );
    let chat_template = match &ck.chat_template {
        Some(t) => Some(
            ChatTemplate::new(t, ck.bos_token.as_deref(), ck.eos_token.as_deref())
                .map_err(EngineError::Config)?,
        ),
        None => None,
    };
    Ok((tokenizer, chat_template))
}

impl ModelInfo {
    /// A model's tokenizer, template and limits without its weights on a device: what a
    /// portal needs to count and pay for prompts that worker nodes run. Its context is the
    /// model's own (a node with a smaller KV cache refuses what does not fit).
    pub fn open(model_id: &str, dir: &std::path::Path) -> Result<ModelInfo, EngineError> {
        let ck = Checkpoint::open(dir)?;
        let (tokenizer, chat_template) = text_side(&ck)?;
        Ok(ModelInfo {
            model_id: model_id.to_string(),
            context: ck.config.max_position_embeddings,
            config: ck.config.clone(),
            tokenizer,
            chat_template,
            device: DeviceInfo {
                id: String::new(),
                name: "none".into(),
                memory_bytes: None,
                bandwidth_bytes_per_s: None,
            },
            weight_bytes: 0,
            grammars: std::sync::OnceLock::new(),
            vocab_bytes: std::sync::OnceLock::new(),
        })
    }

    /// Validates and tokenizes without queueing anything, so that a caller can pay for the
    /// request's largest possible size (its prompt and how many tokens it may generate) before
    /// any work starts.
    pub fn prepare(&self, request: Request) -> Result<Prepared, SubmitError> {
        let tokens = self.tokenize(&request)?;
        let info = self;
        if tokens.is_empty() {
            return Err(InvalidRequest {
                param: "prompt",
                message: "the prompt is empty".into(),
            }
            .into());
        }
        request.sampling.validate()?;
        let vocab = info.config.vocab_size;
        if let Some(&(t, _)) = request
            .sampling
            .logit_bias
            .iter()
            .find(|(t, _)| *t as usize >= vocab)
        {
            return Err(InvalidRequest {
                param: "logit_bias",
                message: format!(
                    "logit_bias names token {t}, but the model's vocabulary has {vocab} tokens"
                ),
            }
            .into());
        }
        if request.stop.len() > MAX_STOP
            || request
                .stop
                .iter()
                .any(|s| s.is_empty() || s.len() > MAX_STOP_LEN)
        {
            return Err(InvalidRequest {
                param: "stop",
                message: format!(
                    "stop takes at most {MAX_STOP} non-empty strings of up to {MAX_STOP_LEN} bytes"
                ),
            }
            .into());
        }
        if request.max_tokens == Some(0) {
            return Err(InvalidRequest {
                param: "max_tokens",
                message: "max_tokens must be at least 1".into(),
            }
            .into());
        }
        let max_len = match request.max_tokens {
            Some(m) if m > info.context.saturating_sub(tokens.len()) => {
                return Err(SubmitError::ContextLength {
                    prompt: tokens.len(),
                    max_tokens: m,
                    context: info.context,
                });
            }
            Some(m) => tokens.len() + m,
            None if tokens.len() >= info.context => {
                return Err(SubmitError::ContextLength {
                    prompt: tokens.len(),
                    max_tokens: 1,
                    context: info.context,
                });
            }
            None => info.context,
        };
        let constraint = self.compile(&request)?;
        Ok(Prepared {
            tokens,
            request,
            max_len,
            constraint,
        })
    }

    /// The request's grammar compiled for one sequence (each sequence has its own matcher).
    fn compile(&self, request: &Request) -> Result<Option<SeqConstraint>, SubmitError> {
        let Some(c) = &request.constraint else {
            return Ok(None);
        };
        let compiled = self.grammars().and_then(|g| g.compile(c));
        compiled.map(Some).map_err(|message| {
            InvalidRequest {
                param: "response_format",
                message,
            }
            .into()
        })
    }

    /// The `n` choices of a prepared request: each the same prompt under one share key
    /// (their prompt's KV blocks are computed once, see [`crate::scheduler`]), choice `i`
    /// seeded with the request's seed plus `i` (as vLLM seeds them), so that each is
    /// reproducible on its own. The prompt is not tokenized again.
    pub fn choices(
        &self,
        prepared: Prepared,
        n: usize,
        key: u64,
    ) -> Result<Vec<Prepared>, SubmitError> {
        let mut first = prepared;
        first.request.share_prompt = Some(key);
        let mut out = Vec::with_capacity(n);
        for i in 1..n {
            let mut request = first.request.clone();
            request.sampling.seed = request.sampling.seed.map(|s| s.wrapping_add(i as u64));
            let constraint = self.compile(&request)?;
            out.push(Prepared {
                tokens: first.tokens.clone(),
                request,
                max_len: first.max_len,
                constraint,
            });
        }
        out.insert(0, first);
        Ok(out)
    }

    /// A token's own bytes: a byte token's one byte (where its text alone would be U+FFFD),
    /// a special token's text.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        match self.vocab_bytes().get(id as usize) {
            Some(b) if crate::constraint::is_special(b) => b[1..].to_vec(),
            Some(b) if !b.is_empty() => b.clone(),
            _ => self
                .tokenizer
                .decode(&[id], false)
                .unwrap_or_default()
                .into_bytes(),
        }
    }

    fn vocab_bytes(&self) -> &Arc<Vec<Vec<u8>>> {
        self.vocab_bytes.get_or_init(|| {
            Arc::new(crate::constraint::vocabulary(&self.tokenizer).unwrap_or_default())
        })
    }

    /// The vocabulary's bytes when the tokenizer decodes byte-level (GPT-2 style: the text is
    /// the lossy UTF-8 of the tokens' bytes), so that streamed text can be decoded from bytes.
    pub fn byte_level_vocab(&self) -> Option<Arc<Vec<Vec<u8>>>> {
        let byte_level = matches!(
            self.tokenizer.get_decoder(),
            Some(tokenizers::DecoderWrapper::ByteLevel(_))
        );
        let vocab = self.vocab_bytes();
        (byte_level && !vocab.is_empty()).then(|| vocab.clone())
    }

    fn grammars(&self) -> Result<Arc<Grammars>, String> {
        self.grammars
            .get_or_init(|| {
                Grammars::new(
                    &self.tokenizer,
                    self.config.vocab_size,
                    &self.config.eos_token_ids,
                )
                .map(Arc::new)
            })
            .clone()
    }

    /// The prompt's token ids, each checked against the model's vocabulary (a tokenizer with
    /// added tokens beyond the embedding table must not reach the forward pass).
    fn tokenize(&self, request: &Request) -> Result<Vec<u32>, SubmitError> {
        let ids = self.encode(request)?;
        let vocab = self.config.vocab_size;
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(InvalidRequest {
                param: "prompt",
                message: format!("token id {bad} is outside the model's vocabulary of {vocab}"),
            }
            .into());
        }
        Ok(ids)
    }

    fn encode(&self, request: &Request) -> Result<Vec<u32>, SubmitError> {
        let tok = &self.tokenizer;
        let encode = |text: &str, special: bool| {
            tok.encode(text, special)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| InvalidRequest {
                    param: "prompt",
                    message: format!("the prompt cannot be tokenized: {e}"),
                })
        };
        Ok(match &request.prompt {
            Prompt::Text(t) => encode(t, true)?,
            Prompt::Tokens(ids) => ids.clone(),
            Prompt::Chat(messages) => {
                let template = self.chat_template.as_ref().ok_or(InvalidRequest {
                    param: "messages",
                    message: "this model has no chat template; use completions".into(),
                })?;
                if messages.is_empty() {
                    return Err(InvalidRequest {
                        param: "messages",
                        message: "messages must not be empty".into(),
                    }
                    .into());
                }
                // The template writes the special tokens itself.
                encode(
                    &template.render_with_tools(messages, &request.tools)?,
                    false,
                )?
            }
        })
    }
}

/// Cancels a request without holding its event stream (a shutdown cancels every running job).
#[derive(Debug, Clone)]
pub struct Canceller(Arc<AtomicBool>);

impl Canceller {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A request's event stream and a way to cancel it.
pub struct Generation {
    pub id: u64,
    pub prompt_tokens: usize,
    pub events: UnboundedReceiver<Event>,
    cancel: Arc<AtomicBool>,
}

impl Generation {
    /// A generation whose events come from elsewhere (a remote worker): whoever sends them
    /// watches the returned canceller and the channel's closing.
    pub fn new(
        id: u64,
        prompt_tokens: usize,
        events: UnboundedReceiver<Event>,
    ) -> (Generation, Canceller) {
        let cancel = Arc::new(AtomicBool::new(false));
        let canceller = Canceller(Arc::clone(&cancel));
        let generation = Generation {
            id,
            prompt_tokens,
            events,
            cancel,
        };
        (generation, canceller)
    }

    /// Stops the request; it finishes with `Cancelled` at the next step.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// A handle that cancels this request from elsewhere.
    pub fn canceller(&self) -> Canceller {
        Canceller(Arc::clone(&self.cancel))
    }

    /// Waits for every event (for callers that do not stream).
    pub async fn collect(mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(e) = self.events.recv().await {
            out.push(e);
        }
        out
    }
}

/// A request that passed validation and was tokenized, not yet queued.
#[derive(Debug)]
pub struct Prepared {
    tokens: Vec<u32>,
    request: Request,
    max_len: usize,
    constraint: Option<SeqConstraint>,
}

impl Prepared {
    pub fn prompt_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// The prompt's token ids.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The request as submitted (its prompt as given, before tokenization).
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The most tokens this request can generate (its `max_tokens`, or what the context
    /// leaves after the prompt).
    pub fn max_new_tokens(&self) -> usize {
        self.max_len - self.tokens.len()
    }
}

struct Submission {
    id: u64,
    tokens: Vec<u32>,
    request: Request,
    max_len: usize,
    constraint: Option<SeqConstraint>,
    events: UnboundedSender<Event>,
    cancel: Arc<AtomicBool>,
    submitted: Instant,
}

enum Command {
    Submit(Box<Submission>),
    Stop,
}

pub struct Worker {
    pub info: Arc<ModelInfo>,
    pub counters: Arc<Counters>,
    tx: Mutex<mpsc::Sender<Command>>,
    next_id: AtomicU64,
    max_waiting: usize,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn open_backend(ck: &Checkpoint, spec: &WorkerSpec) -> Result<Box<dyn Backend>, EngineError> {
    let cuda = |ordinal| -> Result<Box<dyn Backend>, EngineError> {
        Ok(Box::new(CudaBackend::new(
            ck,
            CudaConfig {
                ordinal,
                block_size: spec.block_size,
                kv_fraction: spec.gpu_kv_fraction,
                max_step_tokens: spec.step_tokens,
                max_seqs: spec.max_running,
            },
        )?))
    };
    match spec.device {
        Device::Cuda(n) => cuda(n),
        Device::Auto if cuda::device_count() > 0 => cuda(0),
        Device::Cpu | Device::Auto => Ok(Box::new(CpuBackend::new(
            ck,
            CpuConfig {
                threads: spec.threads,
                kv_bytes: spec.cpu_kv_bytes,
                block_size: spec.block_size,
            },
        )?)),
    }
}

impl Worker {
    /// Loads the model on its device on a new thread and waits until it is ready; a load
    /// failure is returned here.
    pub fn start(spec: WorkerSpec) -> Result<Worker, EngineError> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let thread_counters = counters.clone();
        let max_waiting = spec.max_waiting;
        let thread = std::thread::Builder::new()
            .name(format!("tokenmill-worker-{}", spec.model_id))
            .spawn(move || {
                // Marks the worker stopped however the thread ends, a panic included, so the
                // pool stops routing to it.
                struct Stopped(Arc<Counters>);
                impl Drop for Stopped {
                    fn drop(&mut self) {
                        self.0.stopped.store(true, Ordering::Relaxed);
                    }
                }
                let _stopped = Stopped(thread_counters.clone());
                let loaded = (|| {
                    spec.progress.set(0);
                    let mut ck = Checkpoint::open(&spec.dir)?;
                    ck.track(spec.progress.clone());
                    let (tokenizer, chat_template) = text_side(&ck)?;
                    let backend = open_backend(&ck, &spec)?;
                    let capacity = backend.kv_blocks() * backend.block_size();
                    let info = ModelInfo {
                        model_id: spec.model_id.clone(),
                        context: ck.config.max_position_embeddings.min(capacity),
                        config: ck.config.clone(),
                        tokenizer,
                        chat_template,
                        device: backend.device(),
                        weight_bytes: backend.weight_bytes_per_token(),
                        grammars: std::sync::OnceLock::new(),
                        vocab_bytes: std::sync::OnceLock::new(),
                    };
                    Ok::<_, EngineError>((backend, Arc::new(info)))
                })();
                match loaded {
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                    Ok((backend, info)) => {
                        // Read the vocabulary's bytes now, not on the first request.
                        let _ = info.byte_level_vocab();
                        spec.progress.set(1000);
                        let _ = ready_tx.send(Ok(info.clone()));
                        run(backend, &info, &spec, rx, &thread_counters);
                    }
                }
            })
            .map_err(|e| EngineError::Device(format!("cannot start a worker thread: {e}")))?;
        let info = ready_rx
            .recv()
            .map_err(|_| EngineError::Device("the worker thread died while loading".into()))??;
        Ok(Worker {
            info,
            counters,
            tx: Mutex::new(tx),
            next_id: AtomicU64::new(1),
            max_waiting,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Validates and tokenizes on the caller's thread, then queues the request.
    pub fn submit(&self, request: Request) -> Result<Generation, SubmitError> {
        self.enqueue(self.prepare(request)?)
    }

    /// Validates and tokenizes without queueing anything (see [`ModelInfo::prepare`]).
    pub fn prepare(&self, request: Request) -> Result<Prepared, SubmitError> {
        self.info.prepare(request)
    }

    /// Queues a prepared request, or refuses it when the queue is full or the worker stopped.
    pub fn enqueue(&self, prepared: Prepared) -> Result<Generation, SubmitError> {
        let Prepared {
            tokens,
            request,
            max_len,
            constraint,
        } = prepared;
        if self.counters.stopped.load(Ordering::Relaxed) {
            return Err(SubmitError::Unavailable);
        }
        // Reserve a place in the waiting queue, or refuse.
        self.counters
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w < self.max_waiting).then_some(w + 1)
            })
            .map_err(|_| SubmitError::Overloaded)?;
        let (events, rx) = unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let prompt_tokens = tokens.len();
        let sub = Submission {
            id,
            tokens,
            request,
            max_len,
            constraint,
            events,
            cancel: cancel.clone(),
            submitted: Instant::now(),
        };
        let sent = match self.tx.lock() {
            Ok(tx) => tx.send(Command::Submit(Box::new(sub))).is_ok(),
            Err(_) => false,
        };
        if !sent {
            self.counters.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::Unavailable);
        }
        Ok(Generation {
            id,
            prompt_tokens,
            events: rx,
            cancel,
        })
    }

    /// Stops the thread after the current step; running requests end as cancelled.
    pub fn stop(&self) {
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send(Command::Stop);
        }
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A sequence's generation state on the worker thread.
struct Gen {
    sampler: SeqSampler,
    detok: Detokenizer,
    events: UnboundedSender<Event>,
    cancel: Arc<AtomicBool>,
    max_len: usize,
    ignore_eos: bool,
    submitted: Instant,
    started: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    device_seconds: f64,
    finished: Option<FinishReason>,
    /// The grammar failed: the sequence ends with this error instead.
    failed: Option<String>,
}

impl Gen {
    fn gone(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.events.is_closed()
    }
}

fn finish(s: &crate::scheduler::Seq<Gen>, reason: FinishReason) -> Event {
    let g = &s.state;
    let now = Instant::now();
    Event::Finished(Finish {
        reason,
        prompt_tokens: s.prompt_len,
        completion_tokens: s.tokens.len() - s.prompt_len,
        queue_time: g.started.unwrap_or(now) - g.submitted,
        time_to_first_token: g.first_token.map_or(Duration::ZERO, |t| t - g.submitted),
        decode_time: match (g.first_token, g.last_token) {
            (Some(a), Some(b)) => b - a,
            _ => Duration::ZERO,
        },
        device_seconds: g.device_seconds,
        preemptions: s.preemptions,
    })
}

fn publish(counters: &Counters, sched: &Scheduler<Gen>) {
    counters
        .running
        .store(sched.running.len(), Ordering::Relaxed);
    counters
        .kv_blocks_used
        .store(sched.blocks.used(), Ordering::Relaxed);
    counters
        .preemptions
        .store(sched.preemptions, Ordering::Relaxed);
}

/// The worker thread's loop: take requests, retire finished sequences, plan a step, run it
/// on the backend, and sample each sequence's next token. Returns when told to stop (once
/// every sequence has its answer), when every sender is gone, or after a failed step.
fn run(
    mut backend: Box<dyn Backend>,
    info: &ModelInfo,
    spec: &WorkerSpec,
    rx: mpsc::Receiver<Command>,
    counters: &Counters,
) {
    let mut sched: Scheduler<Gen> = Scheduler::new(
        Limits {
            max_running: spec.max_running,
            step_tokens: spec.step_tokens,
        },
        backend.block_size(),
        backend.kv_blocks(),
    );
    counters
        .kv_blocks_total
        .store(backend.kv_blocks(), Ordering::Relaxed);
    let mut plan: Vec<Planned> = Vec::new();
    let mut sampling = Sampling {
        eos: &info.config.eos_token_ids,
        vocab: backend.vocab(),
        scratch: Scratch::default(),
        row: Vec::with_capacity(backend.vocab()),
    };
    let mut stopping = false;
    loop {
        if !take_commands(&rx, &mut sched, info, &mut stopping) {
            return;
        }
        retire(&mut sched, counters, stopping);
        if stopping && sched.is_idle() {
            return;
        }
        sched.plan(&mut plan);
        start_planned(&mut sched, &plan, counters);
        if plan.is_empty() {
            if sched.is_idle() {
                continue;
            }
            // Waiting sequences that cannot be admitted yet and nothing running: should not
            // happen (validation bounds a sequence by the cache), but never spin.
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let steps: Vec<SeqStep<'_>> = plan
            .iter()
            .map(|p| {
                let s = &sched.running[p.index];
                SeqStep {
                    tokens: &s.tokens[s.computed..s.computed + p.tokens],
                    start: s.computed,
                    blocks: &s.blocks,
                    want_logits: s.computed + p.tokens == s.tokens.len(),
                }
            })
            .collect();
        let wants: Vec<bool> = steps.iter().map(|s| s.want_logits).collect();
        let started = Instant::now();
        let logits = match backend.forward(&steps) {
            Ok(l) => l,
            Err(e) => {
                drop(steps);
                fail_everything(
                    &mut sched,
                    &rx,
                    counters,
                    &format!("the engine failed: {e}"),
                );
                return;
            }
        };
        let elapsed = started.elapsed();
        counters.steps.fetch_add(1, Ordering::Relaxed);
        counters
            .last_step_micros
            .store(elapsed.as_micros() as u64, Ordering::Relaxed);
        sample_step(
            &mut sched,
            &plan,
            &wants,
            logits,
            elapsed,
            &mut sampling,
            counters,
        );
        sched.account(&plan);
    }
}

/// Takes the requests that have arrived, waiting for one when there is nothing to do. False
/// when every sender is gone and nothing is left to finish.
fn take_commands(
    rx: &mpsc::Receiver<Command>,
    sched: &mut Scheduler<Gen>,
    info: &ModelInfo,
    stopping: &mut bool,
) -> bool {
    loop {
        let cmd = if sched.is_idle() && !*stopping {
            match rx.recv() {
                Ok(c) => c,
                Err(_) => return false,
            }
        } else {
            match rx.try_recv() {
                Ok(c) => c,
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => {
                    *stopping = true;
                    return true;
                }
            }
        };
        match cmd {
            Command::Stop => *stopping = true,
            Command::Submit(sub) => {
                let sub = *sub;
                let r = sub.request;
                let state = Gen {
                    sampler: SeqSampler::new(r.sampling, &sub.tokens)
                        .with_constraint(sub.constraint),
                    detok: Detokenizer::new(info.tokenizer.clone(), &sub.tokens, r.stop)
                        .with_bytes(info.byte_level_vocab()),
                    events: sub.events,
                    cancel: sub.cancel,
                    max_len: sub.max_len,
                    ignore_eos: r.ignore_eos,
                    submitted: sub.submitted,
                    started: None,
                    first_token: None,
                    last_token: None,
                    device_seconds: 0.0,
                    finished: None,
                    failed: None,
                };
                sched.add(
                    sub.id,
                    r.priority,
                    r.tenant,
                    r.weight,
                    r.share_prompt,
                    sub.tokens,
                    state,
                );
            }
        }
    }
}

/// Sequences leave: finished, cancelled (all of them when stopping), or nobody listening.
/// The counters show the freed blocks before the final events go out.
fn retire(sched: &mut Scheduler<Gen>, counters: &Counters, stopping: bool) {
    if stopping {
        for s in sched.running.iter_mut().chain(sched.waiting.iter_mut()) {
            s.state.finished.get_or_insert(FinishReason::Cancelled);
        }
    }
    let gone = sched.remove_where(|s| s.state.finished.is_some() || s.state.gone());
    for s in &gone {
        if !s.started {
            counters.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
    publish(counters, sched);
    for s in gone {
        let reason = s.state.finished.unwrap_or(FinishReason::Cancelled);
        let event = match &s.state.failed {
            Some(why) => Event::Failed(format!("constrained decoding failed: {why}")),
            None => finish(&s, reason),
        };
        let _ = s.state.events.send(event);
    }
}

/// Marks the planned sequences that run for the first time as started, and counts them.
fn start_planned(sched: &mut Scheduler<Gen>, plan: &[Planned], counters: &Counters) {
    let now = Instant::now();
    for p in plan {
        let s = &mut sched.running[p.index];
        if !s.started {
            s.started = true;
            s.state.started = Some(now);
            counters.waiting.fetch_sub(1, Ordering::AcqRel);
            counters
                .prompt_tokens
                .fetch_add(s.prompt_len as u64, Ordering::Relaxed);
            // Admitted with a sibling's blocks: it starts past the shared part of the prompt.
            counters
                .prompt_tokens_shared
                .fetch_add(s.computed as u64, Ordering::Relaxed);
        }
    }
    publish(counters, sched);
}

/// A failed step leaves the cache in an unknown state: every sequence fails with `message`,
/// and so does every request still in the channel (those were accepted too).
fn fail_everything(
    sched: &mut Scheduler<Gen>,
    rx: &mpsc::Receiver<Command>,
    counters: &Counters,
    message: &str,
) {
    counters.stopped.store(true, Ordering::Relaxed);
    for s in sched.remove_where(|_| true) {
        let _ = s.state.events.send(Event::Failed(message.to_string()));
    }
    for cmd in rx.try_iter() {
        if let Command::Submit(sub) = cmd {
            let _ = sub.events.send(Event::Failed(message.to_string()));
        }
    }
    publish(counters, sched);
}

/// What sampling a step needs besides the sequences: the end-of-sequence ids, and buffers
/// kept from step to step.
struct Sampling<'a> {
    eos: &'a [u32],
    vocab: usize,
    scratch: Scratch,
    /// One sequence's logits, which sampling modifies in place.
    row: Vec<f32>,
}

/// After a step: each planned sequence has its tokens computed and its share of the step's
/// device time; those that wanted logits sample their next token, which is sent with its
/// text, and end on an end-of-sequence token, a stop string or their length.
fn sample_step(
    sched: &mut Scheduler<Gen>,
    plan: &[Planned],
    wants: &[bool],
    logits: &[f32],
    elapsed: Duration,
    sampling: &mut Sampling<'_>,
    counters: &Counters,
) {
    let vocab = sampling.vocab;
    let step_tokens: usize = plan.iter().map(|p| p.tokens).sum();
    let done = Instant::now();
    let mut out = 0;
    for (p, want) in plan.iter().zip(wants) {
        let s = &mut sched.running[p.index];
        s.computed += p.tokens;
        s.state.device_seconds += elapsed.as_secs_f64() * p.tokens as f64 / step_tokens as f64;
        if !want {
            continue;
        }
        let row = &mut sampling.row;
        row.clear();
        row.extend_from_slice(&logits[out * vocab..(out + 1) * vocab]);
        out += 1;
        let g = &mut s.state;
        let (token, logprob) = match g.sampler.sample(row, &mut sampling.scratch) {
            Ok(sampled) => sampled,
            Err(why) => {
                g.failed = Some(why);
                g.finished = Some(FinishReason::Stop);
                continue;
            }
        };
        // The grammar is complete: nothing may follow this token.
        let complete = match g.sampler.record(token) {
            Ok(complete) => complete,
            Err(why) => {
                g.failed = Some(why);
                false
            }
        };
        s.tokens.push(token);
        counters.tokens_generated.fetch_add(1, Ordering::Relaxed);
        g.first_token.get_or_insert(done);
        g.last_token = Some(done);
        let is_eos = !g.ignore_eos && sampling.eos.contains(&token);
        let mut text = String::new();
        if is_eos {
            g.finished = Some(FinishReason::Stop);
        } else {
            match g.detok.push(token) {
                Delta::Text(t) => text = t,
                Delta::Stopped(t) => {
                    text = t;
                    g.finished = Some(FinishReason::Stop);
                }
            }
        }
        if g.finished.is_none() && (complete || g.failed.is_some()) {
            g.finished = Some(FinishReason::Stop);
        }
        if g.finished.is_none() && s.tokens.len() >= g.max_len {
            g.finished = Some(FinishReason::Length);
        }
        if matches!(g.finished, Some(FinishReason::Length)) || is_eos || complete {
            text.push_str(&g.detok.finish());
        }
        let _ = g.events.send(Event::Token {
            token,
            text,
            logprob,
        });
    }
}
