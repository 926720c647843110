//! What a caller submits and what it gets back: a request (prompt, sampling, limits, who asks and
//! how urgently), a stream of events (text deltas, then one final event with counts and times),
//! and the typed reasons a request is refused before anything is queued.

use std::time::Duration;

use crate::chat::ChatMessage;
use crate::sampling::{SamplingParams, TokenLogprob};

/// Scheduling class, most urgent first. Within a class tenants share by weight.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Priority {
    Production = 0,
    Playground = 1,
    Batch = 2,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Production, Priority::Playground, Priority::Batch];
}

#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Text tokenized with the model's special tokens (a BOS where the tokenizer adds one).
    Text(String),
    Tokens(Vec<u32>),
    /// Rendered with the model's chat template, the assistant's turn opened.
    Chat(Vec<ChatMessage>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub prompt: Prompt,
    pub sampling: SamplingParams,
    /// At most this many tokens are generated; `None`: up to the model's context.
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens (benchmarks, as vLLM allows).
    pub ignore_eos: bool,
    pub priority: Priority,
    /// Whose share this request counts against, and that tenant's weight (at least 1).
    pub tenant: String,
    pub weight: u32,
    /// A grammar the output must match.
    pub constraint: Option<crate::Constraint>,
    /// Tools on offer (OpenAI's tool objects), rendered by the chat template.
    pub tools: Vec<serde_json::Value>,
    /// Requests with the same key and the same prompt share the KV-cache blocks of that
    /// prompt on a worker: the prompt is computed once for the choices of an `n` > 1 request.
    pub share_prompt: Option<u64>,
}

impl Request {
    pub fn new(prompt: Prompt) -> Request {
        Request {
            prompt,
            sampling: SamplingParams::default(),
            max_tokens: None,
            stop: Vec::new(),
            ignore_eos: false,
            priority: Priority::Playground,
            tenant: String::new(),
            weight: 1,
            constraint: None,
            tools: Vec::new(),
            share_prompt: None,
        }
    }
}

/// The most stop strings a request may give, and their longest length (OpenAI allows 4).
pub const MAX_STOP: usize = 4;
pub const MAX_STOP_LEN: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the model's context was reached.
    Length,
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// From submission until the first step that worked on the request.
    pub queue_time: Duration,
    /// From submission until the first generated token.
    pub time_to_first_token: Duration,
    /// From the first generated token to the last.
    pub decode_time: Duration,
    /// The request's share of device time: each step's duration split by the tokens it
    /// processed for each sequence.
    pub device_seconds: f64,
    /// Times this request was preempted and recomputed.
    pub preemptions: u32,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Event {
    /// One generated token; `text` is the new final text (empty while a multi-byte character
    /// or a possible stop string is incomplete).
    Token {
        token: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// The last event of every request that was accepted.
    Finished(Finish),
    /// The engine failed while running the request (no more events follow).
    Failed(String),
}

/// A parameter that is out of range, named as the OpenAI API names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidRequest {
    pub param: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    #[error(
        "the prompt has {prompt} tokens and up to {max_tokens} may be generated, more than this model's context of {context} tokens"
    )]
    ContextLength {
        prompt: usize,
        max_tokens: usize,
        context: usize,
    },
    #[error("the model {0} is not served here")]
    UnknownModel(String),
    /// The waiting queue is full; try again shortly.
    #[error("the server is at capacity; retry shortly")]
    Overloaded,
    /// No worker is running (it failed, or the pool is shutting down).
    #[error("no worker is available for this model")]
    Unavailable,
}
