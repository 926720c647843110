//! Tokenmill's inference engine. It does not depend on the portal: it loads Hugging Face
//! Llama-family checkpoints and (in later steps) runs them on CPU or CUDA with continuous
//! batching. This first part is the model directory: its configuration, its memory-mapped
//! weights checked against the architecture, and a writer of small deterministic test models.

pub mod backend;
pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod fixture;
pub mod rope;

pub use checkpoint::{Checkpoint, DType, Tensor};
pub use config::{Architecture, Llama3Scaling, ModelConfig};

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
