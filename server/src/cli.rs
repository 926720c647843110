//! The command line: `tokenmill` (serve) and `tokenmill admin create-operator`.

use std::io::BufRead;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::Config;

#[derive(Debug, Parser)]
#[command(
    name = "tokenmill",
    version,
    about = "Tokenmill: the self-service portal of a multi-tenant AI factory"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the portal (the default).
    Serve,
    /// Platform administration.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create an operator account. The password is read from TOKENMILL_OPERATOR_PASSWORD or,
    /// when that is unset, from the first line of standard input (never from the arguments).
    CreateOperator {
        #[arg(long)]
        email: String,
    },
}

pub async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Admin(AdminCommand::CreateOperator { email }) => {
            create_operator(config, &email).await
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    tracing::info!(?config, "starting");
    let (router, db) = crate::build(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?;
    tracing::info!("Tokenmill listening on http://{}", listener.local_addr()?);
    crate::serve(listener, router, crate::shutdown_signal()).await?;
    db.close().await;
    Ok(())
}

async fn create_operator(config: Config, email: &str) -> anyhow::Result<()> {
    let password = match std::env::var("TOKENMILL_OPERATOR_PASSWORD") {
        Ok(p) if !p.is_empty() => p,
        _ => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from stdin")?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    if password.is_empty() {
        bail!("no password given: set TOKENMILL_OPERATOR_PASSWORD or pipe it on standard input");
    }
    let db = db::Db::connect(&config.database_url).await?;
    let accounts = accounts::Accounts::new(db.clone(), config.login_limits);
    let user = accounts
        .create_operator(email, &password)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("Operator {} created.", user.email);
    db.close().await;
    Ok(())
}
