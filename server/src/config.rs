//! Configuration from environment variables, each with a default that works on a laptop.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use accounts::LoginLimits;

#[derive(Clone)]
pub struct Config {
    /// `TOKENMILL_ADDR`, default `127.0.0.1:3000`.
    pub addr: SocketAddr,
    /// `DATABASE_URL`, default a SQLite file under `./data`.
    pub database_url: String,
    /// `TOKENMILL_PUBLIC_URL`: the origin users reach (e.g. `https://console.example.com`).
    /// When it is `https`, cookies get `Secure` and the `__Host-` prefix.
    pub public_url: Option<String>,
    /// `TOKENMILL_SESSION_IDLE_MINUTES`, default 60.
    pub session_idle: Duration,
    /// `TOKENMILL_SESSION_MAX_HOURS`, default 12.
    pub session_absolute: Duration,
    /// `TOKENMILL_TRUST_PROXY=1`: take the client address from `X-Forwarded-For`.
    pub trust_proxy: bool,
    /// `LEPTOS_SITE_ROOT`, default `target/site`: where the compiled assets are.
    pub site_root: String,
    pub login_limits: LoginLimits,
    /// `STRIPE_SECRET_KEY`, `STRIPE_WEBHOOK_SECRET`, and `STRIPE_API_BASE` (default Stripe's
    /// own API; tests point it at a local stand-in). Without both secrets, top-ups are off.
    pub stripe: payments::StripeConfig,
    pub engine: EngineSettings,
    /// `TOKENMILL_KEY_RPM`: requests per minute each API key may make, default 600.
    pub key_rpm: std::num::NonZeroU32,
    /// `TOKENMILL_BOOTSTRAP=0` switches off what a first start on an empty database creates
    /// (a local partner and factory serving the configured models, list prices, a starter
    /// credit program for new startups).
    pub bootstrap: bool,
    /// `TOKENMILL_BATCH_CONCURRENCY`: batch lines this instance runs at once, default 8 (they
    /// queue at batch priority, so more only deepens the engine's queue).
    pub batch_concurrency: usize,
    /// `TOKENMILL_METRICS_TOKEN`: the bearer token `/metrics` asks for; without it the
    /// endpoint is off.
    pub metrics_token: Option<Secret>,
    /// `TOKENMILL_JOURNAL_DIR`, default `data/journal` (`off` for none): where each instance
    /// records what its streams delivered, so a killed process's streams are charged for
    /// exactly that (see `jobs::journal`). Instances on one machine share the directory.
    pub journal_dir: Option<PathBuf>,
    /// `TOKENMILL_SHUTDOWN_GRACE_SECONDS`, default 30: on SIGTERM, how long running jobs may
    /// go on before the rest are cancelled.
    pub shutdown_grace: Duration,
    /// `TOKENMILL_DURABLE_METERING=1`: on PostgreSQL, holds and settlements wait for the WAL
    /// flush like payments do (off by default: see `db::Db::begin_metering`).
    pub durable_metering: bool,
    pub mail: MailSettings,
    /// `TOKENMILL_FILES_MAX_COUNT` (default 200) and `TOKENMILL_FILES_MAX_MIB` (default 512):
    /// each organisation's files (uploads and batch results) at once.
    pub file_quota: batches::FileQuota,
    /// `TOKENMILL_NATS_URL` (`nats://` or `tls://`; a user and password, or a token, in the
    /// URL where the server asks for them) and `TOKENMILL_NATS_CREDS` (a `.creds` file): the
    /// NATS server of the fleet. Unset: no fleet, only the in-process pool.
    pub nats: Option<fleet::Connect>,
}

/// Where the portal's letters go.
#[derive(Clone, Debug)]
pub struct MailSettings {
    /// `TOKENMILL_SMTP_URL`: `smtps://user:pass@host[:465]`, or `smtp://host:587?tls=required`
    /// for STARTTLS (`smtp://host:port` alone sends without TLS: only for a local relay).
    /// Unset: letters are written to the outbox folder.
    pub smtp_url: Option<Secret>,
    /// `TOKENMILL_MAIL_FROM`, default `Tokenmill <no-reply@localhost>`.
    pub from: String,
    /// `TOKENMILL_OUTBOX_DIR`, default `data/outbox`: where letters are written without SMTP.
    pub outbox_dir: PathBuf,
}

impl Default for MailSettings {
    fn default() -> Self {
        MailSettings {
            smtp_url: None,
            from: "Tokenmill <no-reply@localhost>".into(),
            // Programs building a `Config` by hand (tests, benchmarks) write their letters
            // into a folder of this process, never into the working directory;
            // `from_env` sets `data/outbox`.
            outbox_dir: std::env::temp_dir()
                .join(format!("tokenmill-outbox-{}", std::process::id())),
        }
    }
}

impl MailSettings {
    fn from_env() -> MailSettings {
        let d = MailSettings::default();
        MailSettings {
            smtp_url: var("TOKENMILL_SMTP_URL").map(|u| Secret(u.trim().to_string())),
            from: var("TOKENMILL_MAIL_FROM").unwrap_or(d.from),
            outbox_dir: var("TOKENMILL_OUTBOX_DIR")
                .map_or_else(|| PathBuf::from("data/outbox"), |v| PathBuf::from(v.trim())),
        }
    }

    /// The mailer these settings describe.
    pub fn mailer(&self) -> Result<mail::Mailer, mail::MailError> {
        match &self.smtp_url {
            Some(url) => mail::Mailer::smtp(url, &self.from),
            None => mail::Mailer::outbox(&self.outbox_dir, &self.from),
        }
    }
}

/// A setting that must not reach the logs (`Config` is logged at start).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::ops::Deref for Secret {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// The models the worker pool serves.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSettings {
    /// `TOKENMILL_MODELS`: `id=PATH` pairs separated by commas (a Hugging Face directory or a
    /// `.gguf` file), or `none`. Default: the project's test model, written to
    /// `data/models/tokenmill-tiny` on first start, and SmolLM2-135M-Instruct when
    /// `data/models/SmolLM2-135M-Instruct.Q4_1.gguf` is there (`scripts/dev` fetches it).
    pub models: Vec<(String, PathBuf)>,
    /// Write the test model into the first directory if it holds no model yet.
    pub write_fixture: bool,
    /// `TOKENMILL_DEVICE`: `auto` (default), `cpu`, `cuda`, `cuda:N`, a comma-separated list
    /// (`cuda:0,cuda:1`), or `all` (every GPU, else the CPU). One engine worker per model and
    /// device, each on its own thread and CUDA context. `none` (an empty list): no engine
    /// workers here; the models are opened for their tokenizers only and fleets run them.
    pub devices: Vec<engine::Device>,
    /// `TOKENMILL_CPU_KV_MIB`: KV cache memory per model on the CPU, default 256.
    pub cpu_kv_mib: usize,
    /// `TOKENMILL_MAX_RUNNING`: sequences a worker runs in one step, default 64.
    pub max_running: usize,
    /// `TOKENMILL_MAX_WAITING`: requests a worker queues before it answers 429, default 256.
    pub max_waiting: usize,
}

pub const DEFAULT_MODEL_ID: &str = "tokenmill-tiny";
pub const DEFAULT_MODEL_DIR: &str = "data/models/tokenmill-tiny";
/// The real model served by default beside the test model, when its file is there
/// (`scripts/dev` fetches it).
pub const SMOLLM2_ID: &str = "smollm2-135m-instruct";
pub const SMOLLM2_FILE: &str = "data/models/SmolLM2-135M-Instruct.Q4_1.gguf";

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            models: vec![(DEFAULT_MODEL_ID.into(), PathBuf::from(DEFAULT_MODEL_DIR))],
            write_fixture: true,
            devices: vec![engine::Device::Auto],
            cpu_kv_mib: 256,
            max_running: 64,
            max_waiting: 256,
        }
    }
}

impl EngineSettings {
    /// No engine: the API answers 503 and readiness fails.
    pub fn off() -> Self {
        EngineSettings {
            models: Vec::new(),
            write_fixture: false,
            ..EngineSettings::default()
        }
    }

    fn from_env() -> Result<EngineSettings, ConfigError> {
        let mut s = EngineSettings::default();
        if Path::new(SMOLLM2_FILE).is_file() {
            s.models
                .push((SMOLLM2_ID.into(), PathBuf::from(SMOLLM2_FILE)));
        }
        if let Some(list) = var("TOKENMILL_MODELS") {
            let bad = |message: String| ConfigError {
                name: "TOKENMILL_MODELS",
                message,
            };
            s.write_fixture = false;
            s.models = if list.trim() == "none" {
                Vec::new()
            } else {
                list.split(',')
                    .map(|pair| {
                        let (id, dir) = pair.split_once('=').ok_or_else(|| {
                            bad(format!(
                                "expected id=PATH pairs separated by commas, got {pair:?}"
                            ))
                        })?;
                        let id = id.trim();
                        if id.is_empty()
                            || !id
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
                        {
                            return Err(bad(format!("{id:?} is not a usable model id")));
                        }
                        Ok((id.to_string(), PathBuf::from(dir.trim())))
                    })
                    .collect::<Result<_, _>>()?
            };
        }
        if let Some(d) = var("TOKENMILL_DEVICE") {
            s.devices = parse_devices(&d).map_err(|message| ConfigError {
                name: "TOKENMILL_DEVICE",
                message,
            })?;
        }
        s.cpu_kv_mib = number("TOKENMILL_CPU_KV_MIB", s.cpu_kv_mib as u64)? as usize;
        for (name, value) in [
            ("TOKENMILL_MAX_RUNNING", &mut s.max_running),
            ("TOKENMILL_MAX_WAITING", &mut s.max_waiting),
        ] {
            *value = number(name, *value as u64)? as usize;
            if *value == 0 {
                return Err(ConfigError {
                    name,
                    message: "expected at least 1".into(),
                });
            }
        }
        Ok(s)
    }
}

/// The fleet's NATS connection, when `TOKENMILL_NATS_URL` is set.
pub fn nats_from_env() -> Option<fleet::Connect> {
    let url = var("TOKENMILL_NATS_URL")?.trim().to_string();
    let auth = match var("TOKENMILL_NATS_CREDS") {
        Some(path) => fleet::Auth::CredsFile(PathBuf::from(path.trim())),
        None => fleet::Auth::None,
    };
    Some(fleet::Connect { url, auth })
}

/// `all`, `none`, or devices separated by commas, each once.
pub fn parse_devices(text: &str) -> Result<Vec<engine::Device>, String> {
    if text.trim() == "none" {
        return Ok(Vec::new());
    }
    if text.trim() == "all" {
        let gpus = engine::cuda::device_count();
        return Ok(if gpus == 0 {
            vec![engine::Device::Cpu]
        } else {
            (0..gpus).map(engine::Device::Cuda).collect()
        });
    }
    let mut out: Vec<engine::Device> = Vec::new();
    for part in text.split(',').map(str::trim) {
        let d: engine::Device = part
            .parse()
            .map_err(|e: engine::EngineError| e.to_string())?;
        if out.contains(&d) {
            return Err(format!("{part} is named twice"));
        }
        out.push(d);
    }
    Ok(out)
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("database_url", &db::redact_url(&self.database_url))
            .field("public_url", &self.public_url)
            .field("session_idle", &self.session_idle)
            .field("session_absolute", &self.session_absolute)
            .field("trust_proxy", &self.trust_proxy)
            .field("site_root", &self.site_root)
            .field("stripe_configured", &self.stripe.secret_key.is_some())
            .field("stripe_api_base", &self.stripe.api_base)
            .field("engine", &self.engine)
            .field("journal_dir", &self.journal_dir)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("durable_metering", &self.durable_metering)
            .field("mail", &self.mail)
            .field("file_quota", &self.file_quota)
            .field("nats", &self.nats.as_ref().map(|n| db::redact_url(&n.url)))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{name}: {message}")]
pub struct ConfigError {
    name: &'static str,
    message: String,
}

pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/tokenmill.db?mode=rwc";

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
            database_url: DEFAULT_DATABASE_URL.to_string(),
            public_url: None,
            session_idle: Duration::from_secs(60 * 60),
            session_absolute: Duration::from_secs(12 * 3600),
            trust_proxy: false,
            site_root: "target/site".to_string(),
            login_limits: LoginLimits::default(),
            stripe: payments::StripeConfig::default(),
            engine: EngineSettings::default(),
            key_rpm: std::num::NonZeroU32::new(600).expect("non-zero"),
            bootstrap: true,
            batch_concurrency: 8,
            metrics_token: None,
            // Not by default here, so that programs building a `Config` by hand (tests,
            // benchmarks) write nowhere they did not choose; `from_env` sets it.
            journal_dir: None,
            shutdown_grace: Duration::from_secs(30),
            durable_metering: false,
            mail: MailSettings::default(),
            file_quota: batches::FileQuota::default(),
            nats: None,
        }
    }
}

fn var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn number(name: &'static str, default: u64) -> Result<u64, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| ConfigError {
            name,
            message: format!("expected a whole number, got {v:?}"),
        }),
    }
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        let d = Config::default();
        let addr = match var("TOKENMILL_ADDR") {
            None => d.addr,
            Some(v) => v.parse().map_err(|_| ConfigError {
                name: "TOKENMILL_ADDR",
                message: format!("expected host:port such as 127.0.0.1:3000, got {v:?}"),
            })?,
        };
        let database_url = var("DATABASE_URL").unwrap_or(d.database_url);
        db::Backend::from_url(&database_url).map_err(|e| ConfigError {
            name: "DATABASE_URL",
            message: e.to_string(),
        })?;
        let public_url = var("TOKENMILL_PUBLIC_URL");
        if let Some(url) = &public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError {
                name: "TOKENMILL_PUBLIC_URL",
                message: format!("expected an http:// or https:// origin, got {url:?}"),
            });
        }
        Ok(Config {
            addr,
            database_url,
            public_url,
            session_idle: Duration::from_secs(60 * number("TOKENMILL_SESSION_IDLE_MINUTES", 60)?),
            session_absolute: Duration::from_secs(
                3600 * number("TOKENMILL_SESSION_MAX_HOURS", 12)?,
            ),
            trust_proxy: var("TOKENMILL_TRUST_PROXY").is_some_and(|v| v == "1" || v == "true"),
            site_root: var("LEPTOS_SITE_ROOT").unwrap_or(d.site_root),
            login_limits: LoginLimits {
                signups_per_ip_hour: match number(
                    "TOKENMILL_SIGNUPS_PER_IP_HOUR",
                    d.login_limits.signups_per_ip_hour as u64,
                )? {
                    0 => {
                        return Err(ConfigError {
                            name: "TOKENMILL_SIGNUPS_PER_IP_HOUR",
                            message: "expected at least 1".into(),
                        });
                    }
                    n => n as i64,
                },
                ..d.login_limits
            },
            stripe: payments::StripeConfig {
                secret_key: var("STRIPE_SECRET_KEY"),
                webhook_secret: var("STRIPE_WEBHOOK_SECRET"),
                api_base: var("STRIPE_API_BASE"),
            },
            engine: EngineSettings::from_env()?,
            key_rpm: std::num::NonZeroU32::new(number("TOKENMILL_KEY_RPM", 600)? as u32).ok_or(
                ConfigError {
                    name: "TOKENMILL_KEY_RPM",
                    message: "expected at least 1".into(),
                },
            )?,
            bootstrap: var("TOKENMILL_BOOTSTRAP")
                .is_none_or(|v| !matches!(v.trim(), "0" | "false" | "off" | "no")),
            batch_concurrency: match number("TOKENMILL_BATCH_CONCURRENCY", 8)? {
                0 => {
                    return Err(ConfigError {
                        name: "TOKENMILL_BATCH_CONCURRENCY",
                        message: "expected at least 1".into(),
                    });
                }
                n => n as usize,
            },
            metrics_token: var("TOKENMILL_METRICS_TOKEN").map(|t| Secret(t.trim().to_string())),
            journal_dir: match var("TOKENMILL_JOURNAL_DIR") {
                None => Some(PathBuf::from("data/journal")),
                Some(v) if v.trim() == "off" => None,
                Some(v) => Some(PathBuf::from(v.trim())),
            },
            shutdown_grace: Duration::from_secs(number("TOKENMILL_SHUTDOWN_GRACE_SECONDS", 30)?),
            durable_metering: var("TOKENMILL_DURABLE_METERING")
                .is_some_and(|v| v == "1" || v == "true"),
            mail: MailSettings::from_env(),
            file_quota: batches::FileQuota {
                max_files: number("TOKENMILL_FILES_MAX_COUNT", d.file_quota.max_files as u64)?
                    as i64,
                max_bytes: number(
                    "TOKENMILL_FILES_MAX_MIB",
                    (d.file_quota.max_bytes >> 20) as u64,
                )? as i64
                    * (1 << 20),
            },
            nats: nats_from_env(),
        })
    }

    /// Whether users reach the portal over HTTPS (cookies then get `Secure` and `__Host-`).
    pub fn https(&self) -> bool {
        self.public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
    }

    pub fn session_cookie_name(&self) -> &'static str {
        if self.https() {
            "__Host-tokenmill_session"
        } else {
            "tokenmill_session"
        }
    }
}
