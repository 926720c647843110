//! `tokenmill`: configuration from the environment, then the command.

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs go to standard error: standard output is for what a command prints (a worker
    // token, a statement's hash), so that it can be piped.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,tower_http=info")),
        )
        .init();
    let config = server::Config::from_env()?;
    server::cli::run(server::cli::Cli::parse(), config).await
}
