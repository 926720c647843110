//! The command line: `tokenmill` (serve), `tokenmill admin create-operator`,
//! `tokenmill model fixture`, `tokenmill bench` and `tokenmill statements verify`.

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
    /// Benchmark the inference engine: prefill, time to first token, decode throughput by
    /// batch size, and the memory bandwidth batch-1 decode achieves.
    Bench(BenchArgs),
    /// Revenue-share statements.
    #[command(subcommand)]
    Statements(StatementsCommand),
    /// Run the engine as a worker node of a factory's fleet (no database, no web portal):
    /// `TOKENMILL_NATS_URL`, `TOKENMILL_WORKER_TOKEN`, and the models and devices as for the
    /// portal.
    Worker(crate::fleet_link::WorkerArgs),
}

#[derive(Debug, Subcommand)]
pub enum StatementsCommand {
    /// Check a statement's canonical CSV: every line re-added into the totals, every split and
    /// balance, and its SHA-256 printed (the same as `sha256sum FILE`). Exits 1 when it does
    /// not add up or does not follow `--previous-hash`.
    Verify {
        file: std::path::PathBuf,
        /// The hash of the partner's statement before this one (the chain link to check).
        #[arg(long)]
        previous_hash: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A Hugging Face model directory. Without it, a model of `--shape` with random weights is
    /// written under ./data/bench-models and used.
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    #[arg(long, default_value = "smollm2-135m", value_parser = ["tiny", "smollm2-135m", "tinyllama-1.1b"])]
    shape: String,
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    dtype: String,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// CPU threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Decode batch sizes, comma-separated.
    #[arg(long, default_value = "1,8,32,64", value_delimiter = ',')]
    batch: Vec<usize>,
    /// Prompt length for time to first token.
    #[arg(long, default_value_t = 512)]
    prompt: usize,
    /// Tokens generated per sequence in the decode runs.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// KV cache memory on the CPU, in MiB.
    #[arg(long, default_value_t = 2048)]
    kv_mib: usize,
    /// A JSON schema file: each decode run is repeated with every sequence constrained to it
    /// (structured outputs), side by side with the plain run.
    #[arg(long)]
    json_schema: Option<std::path::PathBuf>,
    /// Also time this many sampled answers to the long prompt as the choices of one request
    /// (`n`, sharing the prompt's KV blocks) against as many separate requests.
    #[arg(long)]
    choices: Option<usize>,
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
        /// `tiny` for tests (`tiny-256`: rows of whole K-quant superblocks); a real model's
        /// shape for benchmarks.
        #[arg(long, default_value = "tiny", value_parser = ["tiny", "tiny-256", "smollm2-135m", "tinyllama-1.1b"])]
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
        /// Write one GGUF file at `--out` instead, its matrices in this type.
        #[arg(long, value_parser = ["f32", "q8_0", "q4_0", "q4_1", "q4_k"])]
        gguf: Option<String>,
    },
    /// Write a Hugging Face model directory as one GGUF file (byte-level BPE tokenizers; no
    /// Llama 3 rope scaling).
    Convert {
        /// The model directory.
        from: std::path::PathBuf,
        #[arg(long)]
        out: std::path::PathBuf,
        #[arg(long, default_value = "q8_0", value_parser = ["f32", "q8_0", "q4_0", "q4_1", "q4_k"])]
        quant: String,
    },
    /// Open a model (a directory or a `.gguf` file) as the server would, and print what it is.
    Inspect { path: std::path::PathBuf },
}

fn quant_of(name: &str) -> Option<engine::gguf::Quant> {
    use engine::gguf::Quant;
    match name {
        "q8_0" => Some(Quant::Q8_0),
        "q4_0" => Some(Quant::Q4_0),
        "q4_1" => Some(Quant::Q4_1),
        "q4_k" => Some(Quant::Q4K),
        _ => None,
    }
}

/// `tokenmill model inspect`: the configuration and, for GGUF files, the tensor types.
fn inspect(path: &std::path::Path) -> anyhow::Result<()> {
    let ck = engine::Checkpoint::open(path)?;
    let c = &ck.config;
    println!("{}", path.display());
    println!(
        "{:?}: {} layers, hidden {}, {} heads ({} key/value) of {}, vocabulary {}, context {}",
        c.architecture,
        c.num_layers,
        c.hidden_size,
        c.num_heads,
        c.num_kv_heads,
        c.head_dim,
        c.vocab_size,
        c.max_position_embeddings
    );
    println!(
        "end of sequence: {:?}; chat template: {}",
        c.eos_token_ids,
        if ck.chat_template.is_some() {
            "yes"
        } else {
            "no"
        }
    );
    if path.is_file() {
        let file = engine::gguf::GgufFile::open(path)?;
        let mut kinds = std::collections::BTreeMap::<String, (usize, u64)>::new();
        for t in &file.tensors {
            let kind = match t.kind {
                engine::gguf::Kind::Float(d) => format!("{d:?}"),
                engine::gguf::Kind::Quant(q) => q.name().to_string(),
            };
            let e = kinds.entry(kind).or_default();
            e.0 += 1;
            e.1 += t.dims.iter().product::<u64>();
        }
        for (kind, (n, values)) in kinds {
            println!("{n:>5} tensors in {kind} ({values} values)");
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create an operator account. The password is read from TOKENMILL_OPERATOR_PASSWORD or,
    /// when that is unset, from the first line of standard input (never from the arguments).
    CreateOperator {
        #[arg(long)]
        email: String,
    },
    /// Switch off a user's two-factor sign-in (a lost device and lost recovery codes) and end
    /// their sessions; recorded in the audit log as done by the operator named. A user whose
    /// role requires it sets it up again at the next login.
    ResetTwoFactor {
        #[arg(long)]
        email: String,
        /// The operator doing it (their email), who is recorded as its actor.
        #[arg(long)]
        operator: String,
        /// Why, for the audit log (who asked, how they proved who they are).
        #[arg(long)]
        reason: String,
    },
    /// Make a worker token for a factory (its nodes join its fleet with it; from then on the
    /// factory's jobs run only on its own nodes) and print it: it is shown once, and only its
    /// hash is kept. Recorded in the audit log as done by the operator named.
    CreateWorkerToken {
        /// The factory's name.
        #[arg(long)]
        factory: String,
        /// A name for the token (a rack, a site).
        #[arg(long)]
        name: String,
        /// The operator doing it (their email).
        #[arg(long)]
        operator: String,
    },
}

pub async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Admin(AdminCommand::CreateOperator { email }) => {
            create_operator(config, &email).await
        }
        Command::Admin(AdminCommand::ResetTwoFactor {
            email,
            operator,
            reason,
        }) => reset_two_factor(config, &email, &operator, &reason).await,
        Command::Admin(AdminCommand::CreateWorkerToken {
            factory,
            name,
            operator,
        }) => create_worker_token(config, &factory, &name, &operator).await,
        Command::Bench(args) => bench(args).await,
        Command::Worker(args) => {
            crate::fleet_link::run_worker(args, &config.engine, config.nats.as_ref()).await
        }
        Command::Statements(StatementsCommand::Verify {
            file,
            previous_hash,
        }) => verify_statement(&file, previous_hash.as_deref()),
        Command::Model(ModelCommand::Fixture {
            out,
            seed,
            shape,
            arch,
            dtype,
            tied,
            llama3_rope,
            gguf,
        }) => {
            use engine::{Architecture, fixture};
            let spec = fixture::FixtureSpec {
                shape: fixture::Shape::parse(&shape).context("unknown shape")?,
                architecture: match arch.as_str() {
                    "qwen2" => Architecture::Qwen2,
                    "mistral" => Architecture::Mistral,
                    _ => Architecture::Llama,
                },
                tie_embeddings: tied.then_some(true),
                llama3_rope,
                dtype: dtype_of(&dtype),
                seed,
            };
            let dir = out.clone();
            tokio::task::spawn_blocking(move || match gguf {
                Some(q) => engine::gguf::write_fixture(&dir, &spec, quant_of(&q)),
                None => fixture::write_fixture(&dir, &spec),
            })
            .await??;
            println!("Model written to {}", out.display());
            Ok(())
        }
        Command::Model(ModelCommand::Convert { from, out, quant }) => {
            let to = out.clone();
            tokio::task::spawn_blocking(move || {
                let ck = engine::Checkpoint::open(&from)?;
                engine::gguf::convert(&ck, quant_of(&quant), &to)
            })
            .await??;
            println!("Model written to {}", out.display());
            Ok(())
        }
        Command::Model(ModelCommand::Inspect { path }) => inspect(&path),
    }
}

fn verify_statement(file: &std::path::Path, previous: Option<&str>) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let v = statements::verify(&bytes, previous.map(str::trim))
        .map_err(|e| anyhow::anyhow!("{} does not verify: {e}", file.display()))?;
    let d = &v.document;
    println!("OK  {}  {}", v.sha256, file.display());
    println!(
        "partner {} ({}), period {}, {}{}",
        d.partner_name,
        d.partner_id,
        d.period,
        d.status,
        d.number.map(|n| format!(" no. {n}")).unwrap_or_default()
    );
    println!(
        "{} lines; gross {}, payable to the partner {}, vendor {}",
        d.lines.len(),
        statements::usd(d.summary[0]),
        statements::usd(d.payable),
        statements::usd(d.summary[2])
    );
    println!(
        "previous statement: {}",
        d.previous_sha256.as_deref().unwrap_or("none")
    );
    Ok(())
}

fn dtype_of(name: &str) -> engine::DType {
    match name {
        "bf16" => engine::DType::BF16,
        "f16" => engine::DType::F16,
        _ => engine::DType::F32,
    }
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use engine::fixture;
    let dir = match args.model {
        Some(dir) => dir,
        None => {
            let dir = std::path::PathBuf::from(format!(
                "data/bench-models/{}-{}",
                args.shape, args.dtype
            ));
            if !dir.join("model.safetensors").exists() {
                println!(
                    "Writing a {} model ({}) to {}",
                    args.shape,
                    args.dtype,
                    dir.display()
                );
                let spec = fixture::FixtureSpec {
                    shape: fixture::Shape::parse(&args.shape).context("unknown shape")?,
                    dtype: dtype_of(&args.dtype),
                    ..fixture::FixtureSpec::default()
                };
                let d = dir.clone();
                tokio::task::spawn_blocking(move || fixture::write_fixture(&d, &spec)).await??;
            }
            dir
        }
    };
    let opts = engine::bench::BenchOptions {
        dir,
        device: args.device.parse()?,
        threads: args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        batches: args.batch,
        prompt_tokens: args.prompt,
        decode_tokens: args.tokens.max(2),
        kv_bytes: args.kv_mib << 20,
        constraint: match &args.json_schema {
            None => None,
            Some(path) => Some(engine::Constraint::JsonSchema {
                schema: serde_json::from_str(
                    &std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?,
                )
                .with_context(|| format!("{} is not JSON", path.display()))?,
                strict: false,
            }),
        },
        choices: args.choices.filter(|&n| n > 1),
    };
    println!("Benchmarking {} ...", opts.dir.display());
    let report = tokio::task::spawn_blocking(move || engine::bench::run(&opts)).await??;
    print!("{report}");
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    tracing::info!(?config, "starting");
    let portal = crate::build(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?;
    tracing::info!("Tokenmill listening on http://{}", listener.local_addr()?);
    crate::serve_until_stopped(listener, portal, config.shutdown_grace).await
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

/// The operator whose email is `email`, who does what the command records.
async fn operator_by_email(
    accounts: &accounts::Accounts,
    email: &str,
) -> anyhow::Result<accounts::User> {
    accounts
        .user_by_email(email)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .filter(|u| u.is_operator)
        .with_context(|| format!("{email} is not an operator"))
}

async fn create_worker_token(
    config: Config,
    factory: &str,
    name: &str,
    operator: &str,
) -> anyhow::Result<()> {
    let db = db::Db::connect(&config.database_url).await?;
    let accounts = accounts::Accounts::new(db.clone(), config.login_limits);
    let actor = operator_by_email(&accounts, operator).await?;
    let compute = compute::Compute::new(
        db.clone(),
        accounts.clone(),
        credits::Credits::new(db.clone()),
    );
    let found = compute
        .factories()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .into_iter()
        .find(|f| f.name == factory.trim())
        .with_context(|| format!("no factory is named {factory:?}"))?;
    let (token, secret) = compute
        .create_worker_token(&actor, &found.id, name)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let after =
        serde_json::json!({ "factory": found.name, "name": token.name, "display": token.display });
    accounts
        .audit(
            &actor,
            accounts::Change {
                action: "worker_token.create",
                target_kind: "factory",
                target_id: &found.id,
                target_org_id: Some(&found.partner_org_id),
                before: None,
                after: Some(after.to_string()),
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!(
        "Worker token {:?} for factory {:?}; give it to the node as TOKENMILL_WORKER_TOKEN (it is not shown again):",
        token.name, found.name
    );
    println!("{secret}");
    db.close().await;
    Ok(())
}

async fn reset_two_factor(
    config: Config,
    email: &str,
    operator: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let reason = reason.trim();
    if reason.is_empty() {
        bail!("give a --reason for the audit log");
    }
    let db = db::Db::connect(&config.database_url).await?;
    let accounts = accounts::Accounts::new(db.clone(), config.login_limits);
    let actor = operator_by_email(&accounts, operator).await?;
    let user = accounts
        .reset_two_factor(email)
        .await
        .map_err(|e| match e {
            accounts::AccountError::NotFound => anyhow::anyhow!("no user has the email {email}"),
            e => anyhow::anyhow!("{e}"),
        })?;
    let after = serde_json::json!({ "email": user.email, "reason": reason }).to_string();
    accounts
        .audit(
            &actor,
            accounts::Change {
                action: "user.two_factor_reset",
                target_kind: "user",
                target_id: &user.id,
                target_org_id: Some(&user.org_id),
                before: Some(serde_json::json!({ "two_factor": user.two_factor }).to_string()),
                after: Some(after),
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "Two-factor sign-in of {} is off and their sessions ended; recorded in the audit log.",
        user.email
    );
    db.close().await;
    Ok(())
}
