//! The command line: `tokenmill` (serve), `tokenmill admin create-operator` and
//! `tokenmill model fixture`.

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
    /// Model directories.
    #[command(subcommand)]
    Model(ModelCommand),
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Write a Llama-family test model with deterministic random weights, a byte-level BPE
    /// tokenizer and a chat template, as a Hugging Face directory.
    Fixture {
        #[arg(long)]
        out: std::path::PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// `tiny` for tests; a real model's shape for benchmarks.
        #[arg(long, default_value = "tiny", value_parser = ["tiny", "smollm2-135m", "tinyllama-1.1b"])]
        shape: String,
        #[arg(long, default_value = "llama", value_parser = ["llama", "qwen2", "mistral"])]
        arch: String,
        #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
        dtype: String,
        /// Share the embedding matrix with the output layer (default: as the shape has it).
        #[arg(long)]
        tied: bool,
        /// Llama 3 RoPE frequency scaling.
        #[arg(long)]
        llama3_rope: bool,
    },
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
        Command::Model(ModelCommand::Fixture {
            out,
            seed,
            shape,
            arch,
            dtype,
            tied,
            llama3_rope,
        }) => {
            use engine::{Architecture, DType, fixture};
            let spec = fixture::FixtureSpec {
                shape: fixture::Shape::parse(&shape).context("unknown shape")?,
                architecture: match arch.as_str() {
                    "qwen2" => Architecture::Qwen2,
                    "mistral" => Architecture::Mistral,
                    _ => Architecture::Llama,
                },
                tie_embeddings: tied.then_some(true),
                llama3_rope,
                dtype: match dtype.as_str() {
                    "bf16" => DType::BF16,
                    "f16" => DType::F16,
                    _ => DType::F32,
                },
                seed,
            };
            let dir = out.clone();
            tokio::task::spawn_blocking(move || fixture::write_fixture(&dir, &spec)).await??;
            println!("Model written to {}", out.display());
            Ok(())
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
