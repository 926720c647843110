//! What the scheduler asks of a device: run one forward step over a batch of sequences whose
//! keys and values live in the device's paged KV cache, and hand back next-token logits.

use crate::EngineError;

/// One sequence's share of a step: its new tokens (a prefill chunk or one decode token), where
/// they start, and the block table that covers every position up to the last new one.
#[derive(Debug, Clone, Copy)]
pub struct SeqStep<'a> {
    pub tokens: &'a [u32],
    pub start: usize,
    pub blocks: &'a [u32],
    /// Whether the logits after the last new token are wanted (decode, or the end of a prefill).
    pub want_logits: bool,
}

/// The device a backend runs on, for the worker pool's page and the benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    /// "cpu" or "cuda:N".
    pub id: String,
    /// The processor's or GPU's name.
    pub name: String,
    pub memory_bytes: Option<u64>,
    /// Peak memory bandwidth in bytes per second, where known (the benchmark reports its share).
    pub bandwidth_bytes_per_s: Option<f64>,
}

pub trait Backend: Send {
    /// Runs the step and returns the logits, one row of `vocab` per sequence that wanted them,
    /// in the order of `seqs`. Each sequence's tokens are written to its KV blocks first.
    fn forward(&mut self, seqs: &[SeqStep<'_>]) -> Result<&[f32], EngineError>;
    fn vocab(&self) -> usize;
    fn block_size(&self) -> usize;
    fn kv_blocks(&self) -> usize;
    fn device(&self) -> DeviceInfo;
    /// Weight bytes one decode step reads (every layer and the output head; the embedding
    /// table only when it is the head).
    fn weight_bytes_per_token(&self) -> u64;
}

/// Where a model runs: `auto` (a GPU if one is found, else the CPU), `cuda:N` or `cpu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Device, EngineError> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| {
                    EngineError::Device(format!(
                        "unknown device {s:?} (use auto, cpu, cuda or cuda:N)"
                    ))
                }),
        }
    }
}
