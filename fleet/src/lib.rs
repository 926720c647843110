//! Factories as fleets of worker nodes over NATS.
//!
//! A node (`tokenmill worker`) runs the engine for one factory: it announces itself with the
//! factory's worker token, reports its load in heartbeats, takes jobs on its own subject and
//! streams their events back ([`node`]). A portal keeps the live nodes of every factory from
//! their heartbeats and sends each admitted job to the least-loaded node of the job's factory
//! that serves the model ([`dispatch`]). NATS carries everything; the wire format is
//! [`protocol`]. Nothing here touches the database: the portal checks tokens through
//! [`Enrolment`].

pub mod connect;
pub mod dispatch;
pub mod node;
pub mod protocol;

pub use connect::{Auth, Connect};
pub use dispatch::{Fleet, NodeView, Placement, RemoteJob};
pub use node::Node;

/// What a presented worker token enrols a node as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    pub token_id: String,
    pub factory_id: String,
}

/// The portal's check of worker tokens (the database, in the portal).
#[async_trait::async_trait]
pub trait Enrolment: Send + Sync + 'static {
    /// The enrolment `token` gives, or `None` when it is unknown or revoked.
    async fn enrol(&self, token: &str) -> Result<Option<Enrolled>, String>;
    /// Of `token_ids`, those revoked since.
    async fn revoked(&self, token_ids: &[String]) -> Result<Vec<String>, String>;
    /// The models that have a price: a node serves only these (the portal admits no other).
    async fn priced_models(&self) -> Result<Vec<String>, String>;
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot connect to NATS at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("NATS: {0}")]
    Nats(String),
    #[error("the portal refused this node: {0}")]
    Refused(String),
    #[error("{0}")]
    Config(String),
}

impl FleetError {
    pub(crate) fn nats(e: impl std::fmt::Display) -> FleetError {
        FleetError::Nats(e.to_string())
    }
}
