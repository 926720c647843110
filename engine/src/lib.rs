//! Tokenmill's inference engine. It does not depend on the portal: it loads Hugging Face
//! Llama-family checkpoints (`checkpoint`, `config`), runs them on a backend (`cpu`; the
//! `Backend` trait), schedules many tenants' sequences with continuous batching over a paged KV
//! cache (`scheduler`), samples (`sampling`), streams text (`detok`), and serves them from
//! worker threads (`worker`, `pool`). `fixture` writes small deterministic test models.

pub mod backend;
pub mod bench;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod constraint;
pub mod cpu;
pub mod cuda;
pub mod detok;
pub mod fixture;
pub mod gguf;
pub mod pool;
pub mod request;
pub mod rope;
pub mod sampling;
pub mod scheduler;
pub mod worker;

pub use backend::Device;
pub use chat::{ChatMessage, FunctionCall, ToolCall, ToolFormat};
pub use checkpoint::{Checkpoint, DType, LoadProgress, Tensor};
pub use config::{Architecture, Llama3Scaling, ModelConfig};
pub use constraint::Constraint;
pub use pool::{ControlError, Pool, WorkerState, WorkerStatus};
pub use request::{Event, Finish, FinishReason, Priority, Prompt, Request, SubmitError};
pub use sampling::SamplingParams;
/// The tokenizer type models load (callers render token ids with it).
pub use tokenizers::Tokenizer;
pub use worker::{Canceller, Generation, ModelInfo, Prepared, Worker, WorkerSpec};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{}: missing from the model directory", .0.display())]
    MissingFile(PathBuf),
    #[error("{path}: {message}", path = .path.display())]
    Io { path: PathBuf, message: String },
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("unsupported architecture {0}")]
    UnsupportedArchitecture(String),
    #[error("tensor {0} is missing from the checkpoint")]
    MissingTensor(String),
    #[error("tensor {name} has shape {found:?}; this configuration needs {expected:?}")]
    WrongShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor {name} is stored as {dtype}; only F32, F16 and BF16 are supported")]
    UnsupportedDtype { name: String, dtype: String },
    #[error("invalid safetensors file {path}: {message}", path = .path.display())]
    Safetensors { path: PathBuf, message: String },
    #[error("GGUF file {path}: {message}", path = .path.display())]
    Gguf { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("device: {0}")]
    Device(String),
}

pub(crate) fn io_error(path: &std::path::Path, e: std::io::Error) -> EngineError {
    if e.kind() == std::io::ErrorKind::NotFound {
        EngineError::MissingFile(path.to_path_buf())
    } else {
        EngineError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }
}
