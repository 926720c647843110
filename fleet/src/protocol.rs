//! What portals and worker nodes say to each other, as JSON on NATS subjects. Every subject of
//! a factory starts with `tokenmill.<factory id>.`, so that a NATS account or user per partner
//! can be permitted exactly its own factories' subjects (docs/fleet.md).

use engine::{Event, Priority, SamplingParams};
use serde::{Deserialize, Serialize};

/// The root of every subject.
pub const ROOT: &str = "tokenmill";

/// Subjects of one factory.
#[derive(Debug, Clone)]
pub struct Subjects {
    factory: String,
}

impl Subjects {
    pub fn new(factory_id: &str) -> Subjects {
        Subjects {
            factory: factory_id.to_string(),
        }
    }

    /// Node → portals, request and reply: may this node join?
    pub fn announce(&self) -> String {
        format!("{ROOT}.{}.announce", self.factory)
    }

    /// Node → portals, several times a second: what the node runs and how loaded it is.
    pub fn heartbeat(&self) -> String {
        format!("{ROOT}.{}.heartbeat", self.factory)
    }

    /// Node → portals, once, when it stops on purpose.
    pub fn bye(&self) -> String {
        format!("{ROOT}.{}.bye", self.factory)
    }

    /// Portal → node, request and reply: run a job.
    pub fn submit(&self, node: &str) -> String {
        format!("{ROOT}.{}.node.{node}.submit", self.factory)
    }

    /// Portal → node: stop a job.
    pub fn cancel(&self, node: &str) -> String {
        format!("{ROOT}.{}.node.{node}.cancel", self.factory)
    }

    /// Portal → node, request and reply: drain, put back, restart an engine.
    pub fn control(&self, node: &str) -> String {
        format!("{ROOT}.{}.node.{node}.control", self.factory)
    }

    /// Portal → node: the node's token was refused (revoked); it stops.
    pub fn refused(&self, node: &str) -> String {
        format!("{ROOT}.{}.node.{node}.refused", self.factory)
    }

    /// Where a node's requests get their replies (its NATS inbox prefix).
    pub fn inbox(&self) -> String {
        format!("{ROOT}.{}.inbox", self.factory)
    }

    /// Node → the portal that submitted the job: its events, in order.
    pub fn events(&self, job_id: &str) -> String {
        format!("{ROOT}.{}.events.{job_id}", self.factory)
    }
}

/// The factory id of a subject `tokenmill.<factory>.…`.
pub fn factory_of_subject(subject: &str) -> Option<&str> {
    let mut parts = subject.split('.');
    (parts.next() == Some(ROOT)).then(|| parts.next()).flatten()
}

/// Whether `name` can stand in a subject as one token (node names, factory ids, job ids).
pub fn is_subject_token(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A device of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceReport {
    /// `cpu`, `cuda:0`, …
    pub id: String,
    pub name: String,
    pub memory_bytes: Option<u64>,
}

/// One engine worker of a node (a model on a device) and its load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineReport {
    /// Its place on the node (what drain and restart name).
    pub index: usize,
    pub model: String,
    pub device: String,
    /// `loading`, `ready`, `draining` or `dead`.
    pub state: String,
    pub waiting: usize,
    pub running: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    pub tokens_generated: u64,
    /// How far a loading engine has got, in percent.
    #[serde(default)]
    pub loaded_percent: u32,
}

/// What a node says of itself: in its announcement and in every heartbeat, so that a portal
/// that starts later learns the fleet from the heartbeats alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The worker token (checked by the portal against its hash).
    pub token: String,
    pub node: String,
    /// Changes with every start of the node's process.
    pub boot: String,
    pub version: String,
    pub devices: Vec<DeviceReport>,
    pub engines: Vec<EngineReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AnnounceReply {
    Accepted,
    Refused(String),
}

/// A job for a node: the prompt as the portal tokenized and paid for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    pub job_id: String,
    pub model: String,
    pub tokens: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub priority: Priority,
    pub tenant: String,
    pub weight: u32,
    /// The grammar the output must match (the node compiles it again).
    #[serde(default)]
    pub constraint: Option<engine::Constraint>,
    /// The choices of one request share their prompt's KV blocks under this key.
    #[serde(default)]
    pub share_prompt: Option<u64>,
}

/// Why a node would not take a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Refusal {
    QueueFull,
    UnknownModel,
    Unavailable,
    Invalid { param: String, message: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SubmitReply {
    /// Queued on the engine on `device`.
    Accepted {
        device: String,
    },
    Refused(Refusal),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancel {
    pub job_id: String,
}

/// One event of a job, numbered from 0 so that a lost one is seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub seq: u64,
    pub event: Event,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    Drain { index: usize },
    Resume { index: usize },
    Restart { index: usize },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlReply {
    Done,
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bye {
    pub node: String,
    pub boot: String,
}

pub fn encode<T: Serialize>(message: &T) -> bytes::Bytes {
    // Serializing these types cannot fail: no maps with non-string keys, no custom impls.
    serde_json::to_vec(message).unwrap_or_default().into()
}

pub fn decode<T: for<'a> Deserialize<'a>>(payload: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subject_of_a_factory_is_under_its_root() {
        let s = Subjects::new("f1");
        for subject in [
            s.announce(),
            s.heartbeat(),
            s.bye(),
            s.submit("n"),
            s.cancel("n"),
            s.control("n"),
            s.refused("n"),
            s.events("j"),
            s.inbox(),
        ] {
            assert!(subject.starts_with("tokenmill.f1."), "{subject}");
            assert_eq!(factory_of_subject(&subject), Some("f1"));
        }
        assert_eq!(factory_of_subject("other.f1.announce"), None);
    }

    #[test]
    fn names_that_would_split_a_subject_are_refused() {
        assert!(is_subject_token("gpu-node_07"));
        for bad in ["", "a.b", "a b", "a*", "a>", &"x".repeat(65)] {
            assert!(!is_subject_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn events_round_trip() {
        let e = JobEvent {
            seq: 3,
            event: Event::Token {
                token: 7,
                text: "hé".into(),
                logprob: None,
            },
        };
        assert_eq!(decode::<JobEvent>(&encode(&e)).unwrap(), e);
    }
}
