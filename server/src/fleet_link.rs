//! The portal's link to its fleet, and `tokenmill worker`. With `TOKENMILL_NATS_URL` set the
//! portal hears every factory's nodes and sends fleet factories' jobs to them; worker tokens
//! are checked against the database here. `tokenmill worker` is the engine alone: it loads
//! the configured models on the configured devices and serves one factory's jobs over NATS.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::config::EngineSettings;

/// Worker tokens as the database holds them.
struct ComputeEnrolment(compute::Compute);

#[async_trait::async_trait]
impl fleet::Enrolment for ComputeEnrolment {
    async fn enrol(&self, token: &str) -> Result<Option<fleet::Enrolled>, String> {
        let found = self
            .0
            .authenticate_worker(token)
            .await
            .map_err(|e| e.to_string())?;
        Ok(found.map(|e| fleet::Enrolled {
            token_id: e.token_id,
            factory_id: e.factory_id,
        }))
    }

    async fn revoked(&self, token_ids: &[String]) -> Result<Vec<String>, String> {
        self.0
            .revoked_worker_tokens(token_ids)
            .await
            .map_err(|e| e.to_string())
    }

    async fn priced_models(&self) -> Result<Vec<String>, String> {
        let prices = self.0.prices().await.map_err(|e| e.to_string())?;
        Ok(prices.into_iter().map(|p| p.model_id).collect())
    }
}

/// Connects the portal to the fleet's NATS when `TOKENMILL_NATS_URL` is set (an unreachable
/// server fails the start) and lets `jobs` dispatch to the nodes; without engine workers here
/// (`TOKENMILL_DEVICE=none`), opens the models for their tokenizers so that it can.
pub async fn attach(
    config: &crate::Config,
    jobs: &jobs::Jobs,
    compute: &compute::Compute,
) -> anyhow::Result<()> {
    if config.engine.devices.is_empty() {
        jobs.attach_catalog(crate::inference::open_models(&config.engine).await?);
    }
    let Some(connect) = &config.nats else {
        return Ok(());
    };
    let client = connect.connect("tokenmill-portal").await?;
    let fleet = fleet::Fleet::start(client, Arc::new(ComputeEnrolment(compute.clone()))).await?;
    jobs.attach_fleet(fleet);
    tracing::info!(url = %db::redact_url(&connect.url), "fleet: listening for worker nodes");
    Ok(())
}

/// `tokenmill worker`'s settings besides the engine's.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// This node's name in the fleet (letters, digits, '-', '_'); default the host name.
    #[arg(long, env = "TOKENMILL_NODE_NAME")]
    pub node: Option<String>,
    /// A file holding the worker token (else `TOKENMILL_WORKER_TOKEN`; never a flag, so that
    /// it does not show in `ps`).
    #[arg(long, env = "TOKENMILL_WORKER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

fn worker_token(args: &WorkerArgs) -> anyhow::Result<String> {
    let token = match &args.token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the worker token from {}", path.display()))?,
        None => std::env::var("TOKENMILL_WORKER_TOKEN").unwrap_or_default(),
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!(
            "no worker token: set TOKENMILL_WORKER_TOKEN or --token-file (a partner's owner makes one on the factory's page)"
        );
    }
    Ok(token)
}

fn node_name(args: &WorkerArgs) -> String {
    args.node.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().replace('.', "-"))
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "worker".to_string())
    })
}

/// `tokenmill worker`: serves until SIGTERM or Ctrl-C; a refused token is an error.
pub async fn run_worker(
    args: WorkerArgs,
    engine: &EngineSettings,
    nats: Option<&fleet::Connect>,
) -> anyhow::Result<()> {
    let token = worker_token(&args)?;
    if engine.devices.is_empty() {
        bail!("TOKENMILL_DEVICE=none: a worker needs a device to run its models on");
    }
    let name = node_name(&args);
    let nats = nats.context("TOKENMILL_NATS_URL is not set: a worker needs the fleet's NATS")?;
    let factory = fleet::node::token_factory(&token)
        .context("the worker token is not one a portal makes (tmw_…)")?;
    let client = nats
        .connect_node(&format!("tokenmill-worker-{name}"), factory)
        .await?;
    // The node joins while its models load: the Workers page shows their progress.
    let (pool, loaded) = crate::inference::start_pool_loading(engine).await?;
    let node = fleet::Node::join(client, token, name, pool).await?;
    tracing::info!(node = node.name(), "worker serving");
    let ended = tokio::select! {
        ended = node.serve(crate::shutdown_signal()) => ended?,
        // No model loaded: nothing to serve.
        Ok(Err(e)) = loaded => return Err(e),
    };
    match ended {
        fleet::node::Ended::Shutdown => Ok(()),
        fleet::node::Ended::Refused => {
            bail!("the portal refused this node: its worker token was revoked")
        }
    }
}
