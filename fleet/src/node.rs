//! A worker node: the engine pool of one machine serving one factory over NATS. It announces
//! itself, then heartbeats its load every [`HEARTBEAT`], takes jobs on its submit subject,
//! streams each job's events to the subject the portal named, and stops a job on cancel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use engine::{Canceller, Pool, Prompt, Request, SubmitError};
use futures_util::StreamExt;

use crate::FleetError;
use crate::protocol::{
    AnnounceReply, Bye, Cancel, Control, ControlReply, DeviceReport, EngineReport, JobEvent,
    JobRequest, NodeReport, Refusal, Subjects, SubmitReply, decode, encode, is_subject_token,
};

/// How often a node reports its load (portals dispatch on reports at most 1 s old).
pub const HEARTBEAT: Duration = Duration::from_millis(250);

/// What usage events call the portal's in-process pool; no node may take the name.
pub const LOCAL: &str = "local";

/// How long a node waits for a portal to answer its announcement.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Node {
    client: async_nats::Client,
    subjects: Subjects,
    name: String,
    boot: String,
    token: String,
    pool: Arc<Pool>,
    /// Jobs running here, by job id, to cancel.
    running: Arc<Mutex<HashMap<String, Canceller>>>,
}

/// How a node's run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Asked to stop (a signal).
    Shutdown,
    /// A portal refused its token (revoked).
    Refused,
}

impl Node {
    /// A node for the factory its token names, announced to the portals: a refusal is an
    /// error; no portal answering is not (they learn of the node from its heartbeats).
    pub async fn join(
        client: async_nats::Client,
        token: String,
        name: String,
        pool: Arc<Pool>,
    ) -> Result<Node, FleetError> {
        let factory = token_factory(&token)
            .ok_or_else(|| {
                FleetError::Config("the worker token is not one a portal makes (tmw_…)".into())
            })?
            .to_string();
        if !is_subject_token(&name) {
            return Err(FleetError::Config(format!(
                "the node name {name:?} must be 1 to 64 letters, digits, '-' or '_'"
            )));
        }
        if name == LOCAL {
            return Err(FleetError::Config(format!(
                "the node name {LOCAL:?} is taken by the portal's own pool; choose another"
            )));
        }
        let node = Node {
            client,
            subjects: Subjects::new(&factory),
            name,
            boot: uuid::Uuid::now_v7().simple().to_string(),
            token,
            pool,
            running: Arc::default(),
        };
        let announce = node
            .client
            .request(node.subjects.announce(), encode(&node.report()));
        match tokio::time::timeout(ANNOUNCE_TIMEOUT, announce).await {
            Ok(Ok(reply)) => match decode::<AnnounceReply>(&reply.payload) {
                Ok(AnnounceReply::Accepted) => {
                    tracing::info!(node = node.name, factory, "accepted into the factory")
                }
                Ok(AnnounceReply::Refused(why)) => return Err(FleetError::Refused(why)),
                Err(e) => {
                    return Err(FleetError::Nats(format!(
                        "unreadable answer to the announcement: {e}"
                    )));
                }
            },
            Ok(Err(e)) => tracing::warn!(
                node = node.name,
                "no portal answered the announcement ({e}); heartbeats will introduce this node"
            ),
            Err(_) => tracing::warn!(
                node = node.name,
                "no portal answered the announcement within {ANNOUNCE_TIMEOUT:?}; heartbeats will introduce this node"
            ),
        }
        Ok(node)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the node runs now, as heartbeats carry it.
    pub fn report(&self) -> NodeReport {
        let status = self.pool.status();
        let mut devices: Vec<DeviceReport> = Vec::new();
        for s in &status {
            if !s.device.is_empty() && !devices.iter().any(|d| d.id == s.device) {
                devices.push(DeviceReport {
                    id: s.device.clone(),
                    name: s.device_name.clone(),
                    memory_bytes: s.device_memory_bytes,
                });
            }
        }
        NodeReport {
            token: self.token.clone(),
            node: self.name.clone(),
            boot: self.boot.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            devices,
            engines: status
                .into_iter()
                .map(|s| EngineReport {
                    index: s.index,
                    model: s.model_id,
                    device: s.device,
                    state: s.state.as_str().to_string(),
                    waiting: s.waiting,
                    running: s.running,
                    kv_blocks_used: s.kv_blocks_used,
                    kv_blocks_total: s.kv_blocks_total,
                    tokens_generated: s.tokens_generated,
                    loaded_percent: s.loaded_permille / 10,
                })
                .collect(),
        }
    }

    /// Serves until `shutdown` resolves or a portal refuses the node; then says goodbye and
    /// cancels what still runs.
    pub async fn serve(
        &self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<Ended, FleetError> {
        let sub = |s: String| self.client.subscribe(s);
        let mut submits = sub(self.subjects.submit(&self.name))
            .await
            .map_err(FleetError::nats)?;
        let mut cancels = sub(self.subjects.cancel(&self.name))
            .await
            .map_err(FleetError::nats)?;
        let mut controls = sub(self.subjects.control(&self.name))
            .await
            .map_err(FleetError::nats)?;
        let mut refusals = sub(self.subjects.refused(&self.name))
            .await
            .map_err(FleetError::nats)?;
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        let ended = loop {
            tokio::select! {
                () = &mut shutdown => break Ended::Shutdown,
                _ = beat.tick() => self.heartbeat().await,
                Some(m) = submits.next() => self.submit(m).await,
                Some(m) = cancels.next() => {
                    if let Ok(c) = decode::<Cancel>(&m.payload) {
                        self.cancel(&c.job_id);
                    }
                }
                Some(m) = controls.next() => self.control(m),
                Some(m) = refusals.next() => {
                    let why = String::from_utf8_lossy(&m.payload).into_owned();
                    tracing::error!(node = self.name, "a portal refused this node: {why}");
                    break Ended::Refused;
                }
            }
        };
        let bye = Bye {
            node: self.name.clone(),
            boot: self.boot.clone(),
        };
        let _ = self.client.publish(self.subjects.bye(), encode(&bye)).await;
        for c in self.lock_running().values() {
            c.cancel();
        }
        let _ = self.client.flush().await;
        Ok(ended)
    }

    async fn heartbeat(&self) {
        let report = encode(&self.report());
        if let Err(e) = self.client.publish(self.subjects.heartbeat(), report).await {
            tracing::warn!(node = self.name, "heartbeat not sent: {e}");
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Canceller>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cancel(&self, job_id: &str) {
        if let Some(c) = self.lock_running().get(job_id) {
            c.cancel();
        }
    }

    async fn submit(&self, message: async_nats::Message) {
        let Some(reply_to) = message.reply.clone() else {
            return;
        };
        let answer = match decode::<JobRequest>(&message.payload) {
            Err(e) => SubmitReply::Refused(Refusal::Invalid {
                param: "request".into(),
                message: format!("unreadable job: {e}"),
            }),
            Ok(job) => self.start(job),
        };
        if let Err(e) = self.client.publish(reply_to, encode(&answer)).await {
            tracing::warn!(node = self.name, "submit answer not sent: {e}");
        }
    }

    /// Queues `job` on the least-loaded engine serving its model and streams its events.
    fn start(&self, job: JobRequest) -> SubmitReply {
        if !is_subject_token(&job.job_id) {
            return SubmitReply::Refused(Refusal::Invalid {
                param: "job_id".into(),
                message: "the job id cannot stand in a subject".into(),
            });
        }
        let mut request = Request::new(Prompt::Tokens(job.tokens));
        request.sampling = job.sampling;
        request.max_tokens = Some(job.max_new_tokens);
        request.stop = job.stop;
        request.ignore_eos = job.ignore_eos;
        request.priority = job.priority;
        request.tenant = job.tenant;
        request.weight = job.weight;
        request.constraint = job.constraint;
        request.share_prompt = job.share_prompt;
        let worker = match self.pool.worker_for(&job.model) {
            Ok(w) => w,
            Err(e) => return SubmitReply::Refused(refusal(e)),
        };
        let generation = match worker.submit(request) {
            Ok(g) => g,
            Err(e) => return SubmitReply::Refused(refusal(e)),
        };
        self.lock_running()
            .insert(job.job_id.clone(), generation.canceller());
        let (client, subject) = (self.client.clone(), self.subjects.events(&job.job_id));
        let running = Arc::clone(&self.running);
        tokio::spawn(async move {
            let mut events = generation.events;
            let mut seq = 0;
            while let Some(event) = events.recv().await {
                let _ = client
                    .publish(subject.clone(), encode(&JobEvent { seq, event }))
                    .await;
                seq += 1;
            }
            running
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&job.job_id);
        });
        SubmitReply::Accepted {
            device: worker.info.device.id.clone(),
        }
    }

    /// Runs a portal's command on a task of its own: a restart waits for the engine's jobs
    /// to end, and heartbeats must go on meanwhile.
    fn control(&self, message: async_nats::Message) {
        let Some(reply_to) = message.reply.clone() else {
            return;
        };
        let (client, pool, name) = (
            self.client.clone(),
            Arc::clone(&self.pool),
            self.name.clone(),
        );
        tokio::spawn(async move {
            let answer = match decode::<Control>(&message.payload) {
                Err(e) => ControlReply::Failed(format!("unreadable command: {e}")),
                Ok(command) => {
                    tracing::info!(node = name, ?command, "command from a portal");
                    let done = match command {
                        Control::Drain { index } => pool.set_draining(index, true),
                        Control::Resume { index } => pool.set_draining(index, false),
                        Control::Restart { index } => pool.restart(index).await,
                    };
                    match done {
                        Ok(()) => ControlReply::Done,
                        Err(e) => ControlReply::Failed(e.to_string()),
                    }
                }
            };
            let _ = client.publish(reply_to, encode(&answer)).await;
        });
    }
}

fn refusal(e: SubmitError) -> Refusal {
    match e {
        SubmitError::Overloaded => Refusal::QueueFull,
        SubmitError::UnknownModel(_) => Refusal::UnknownModel,
        SubmitError::Unavailable => Refusal::Unavailable,
        other @ SubmitError::ContextLength { .. } => Refusal::Invalid {
            param: "max_tokens".into(),
            message: other.to_string(),
        },
        SubmitError::Invalid(i) => Refusal::Invalid {
            param: i.param.into(),
            message: i.message,
        },
    }
}

/// The factory a worker token names.
pub fn token_factory(token: &str) -> Option<&str> {
    let rest = token.strip_prefix("tmw_")?;
    let (factory, _) = rest.split_once('_')?;
    is_subject_token(factory).then_some(factory)
}
