//! The Tokenmill server: wires storage, sessions, security layers and the Leptos app into one
//! axum router. `main.rs` only reads the command line and calls in here; tests do the same.

mod batch_pages;
mod batch_runner;
mod bootstrap;
pub mod cli;
pub mod config;
mod downloads;
pub mod fleet_link;
pub mod inference;
mod metrics;
pub mod openai;
mod playground;
pub mod security;
pub mod session_store;
mod statement_downloads;

use std::{net::SocketAddr, time::Duration};

use accounts::Accounts;
use anyhow::Context;
use app::{App, shell, ssr::AppState};
use axum::{
    Router,
    body::Body,
    extract::{DefaultBodyLimit, FromRef, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use db::Db;
use leptos::prelude::*;
use leptos_axum::{LeptosRoutes, generate_route_list, handle_server_fns_with_context};
use tokio::net::TcpListener;
use tower_http::{
    compression::CompressionLayer,
    limit::RequestBodyLimitLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    services::ServeDir,
    set_header::SetResponseHeaderLayer,
    trace::{DefaultOnResponse, TraceLayer},
};
use tower_sessions::{Expiry, SessionManagerLayer, cookie::SameSite};

pub use config::Config;
use security::SecurityPolicy;
use session_store::DbSessionStore;

/// Largest request body accepted, in bytes. Forms here are a few hundred bytes.
pub const BODY_LIMIT: usize = 64 * 1024;
/// Largest webhook body accepted: Stripe's events are a few kilobytes.
pub const WEBHOOK_BODY_LIMIT: usize = 512 * 1024;

/// State of the axum router: Leptos' options plus the application state.
#[derive(Clone, FromRef)]
struct ServerState {
    leptos: LeptosOptions,
    app: AppState,
}

/// A built portal: its router, and what a shutdown needs.
pub struct Portal {
    pub router: Router,
    pub db: Db,
    pub jobs: jobs::Jobs,
}

/// Opens the database (creating and migrating it) and builds the full router.
pub async fn build(config: &Config) -> anyhow::Result<Portal> {
    let mut db = Db::connect(&config.database_url)
        .await
        .with_context(|| format!("opening {}", db::redact_url(&config.database_url)))?;
    db.set_durable_metering(config.durable_metering);
    tokio::task::spawn_blocking(accounts::password::warm_up).await?;
    let accounts = Accounts::new(db.clone(), config.login_limits);
    let folded = accounts
        .fold_search_text()
        .await
        .context("folding the search text of earlier rows")?;
    if folded > 0 {
        tracing::info!(rows = folded, "folded the search text of earlier rows");
    }
    let mailer = config
        .mail
        .mailer()
        .context("configuring email (TOKENMILL_SMTP_URL, TOKENMILL_MAIL_FROM)")?;
    match mailer.outbox_dir() {
        Some(dir) => tracing::info!(
            outbox = %dir.display(),
            "no TOKENMILL_SMTP_URL: letters (verification links, password resets, invitations) are written as .eml files to the outbox folder"
        ),
        None => tracing::info!(via = %mailer.describe(), "letters go out by SMTP"),
    }
    let credits = credits::Credits::new(db.clone());
    let payments = payments::Payments::new(db.clone(), credits.clone(), config.stripe.clone())
        .context("configuring Stripe (STRIPE_API_BASE)")?;
    let compute = compute::Compute::new(db.clone(), accounts.clone(), credits.clone());
    let pool = inference::start_pool(&config.engine).await?;
    let jobs = jobs::Jobs::new(db.clone(), credits.clone(), compute.clone(), pool.clone());
    fleet_link::attach(config, &jobs, &compute).await?;
    let batches = batches::Batches::new(db.clone()).with_quota(config.file_quota);
    let app_state = AppState {
        compute,
        payments,
        keys: keys::ApiKeys::new(db.clone()),
        jobs: jobs.clone(),
        batches: batches.clone(),
        statements: statements::Statements::new(db.clone()),
        accounts,
        credits,
        session_absolute_ms: config.session_absolute.as_millis() as i64,
        public_url: config.public_url.clone(),
        mailer,
    };
    if let Some(pool) = &pool
        && config.bootstrap
    {
        let first = pool.workers()[0].info.device.clone();
        bootstrap::first_start(
            &app_state,
            &pool.models(),
            bootstrap::gpu_class(&first.id, &first.name),
        )
        .await
        .context("setting up the first start (TOKENMILL_BOOTSTRAP=0 skips it)")?;
    }
    if let Some(dir) = &config.journal_dir {
        jobs.open_journal(dir)
            .with_context(|| format!("opening the delivery journal in {}", dir.display()))?;
        // A predecessor killed on this machine: its streams are charged for what they
        // delivered before anything else runs.
        let ended = jobs
            .recover_journals()
            .await
            .context("settling the streams of a stopped instance")?;
        if ended > 0 {
            tracing::warn!(
                jobs = ended,
                "ended the jobs of a stopped instance from its journal"
            );
        }
    }
    spawn_instance_heartbeat(jobs.clone()).await?;
    if pool.is_some() {
        batch_runner::spawn(batches.clone(), jobs.clone(), config.batch_concurrency);
    }
    let metrics_state =
        metrics::MetricsState::new(jobs.clone(), db.clone(), config.metrics_token.as_deref());
    let api = openai::ApiState::new(
        app_state.keys.clone(),
        jobs.clone(),
        batches,
        db.clone(),
        config.key_rpm,
    );
    let router = with_request_ids(
        router(config, db.clone(), app_state.clone()).merge(api_routes(
            api,
            inference::Readiness::new(pool, jobs.clone()),
            metrics_state,
        )),
    );
    spawn_session_sweeper(db.clone(), app_state.accounts.clone());
    spawn_money_sweeper(app_state.credits.clone(), app_state.compute.clone());
    Ok(Portal { router, db, jobs })
}

fn router(config: &Config, db: Db, app_state: AppState) -> Router {
    let leptos = LeptosOptions::builder()
        .output_name("tokenmill")
        .site_root(config.site_root.as_str())
        .site_pkg_dir("pkg")
        .site_addr(config.addr)
        .hash_files(hashed_assets())
        .build();
    let state = ServerState {
        leptos: leptos.clone(),
        app: app_state.clone(),
    };
    let policy = SecurityPolicy {
        trust_proxy: config.trust_proxy,
        public_url: config.public_url.clone(),
    };

    let idle = time::Duration::try_from(config.session_idle).unwrap_or(time::Duration::HOUR);
    let sessions = SessionManagerLayer::new(DbSessionStore::new(db))
        .with_name(config.session_cookie_name())
        .with_secure(config.https())
        .with_http_only(true)
        .with_same_site(SameSite::Lax)
        .with_path("/")
        .with_expiry(Expiry::OnInactivity(idle))
        // Save on every request so that activity pushes the idle deadline back; without this
        // the deadline would count from the last change to the session, not the last request.
        .with_always_save(true);

    let routes = route_list();
    let page_state = app_state.clone();
    let upload_state = app_state.clone();
    let fallback_state = app_state;
    // Stripe calls the webhook from its servers: no session, no Origin, and a signature of its
    // own; it stays outside the session and CSRF layers. Its events can exceed a form's size.
    let webhooks = Router::new()
        .route("/webhooks/stripe", post(downloads::stripe_webhook))
        .with_state(fallback_state.payments.clone())
        .layer(RequestBodyLimitLayer::new(WEBHOOK_BODY_LIMIT));
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/api/{*fn_name}", post(server_fn_handler))
        .route("/credits/history.csv", get(downloads::history_csv))
        .route("/usage.csv", get(downloads::usage_csv))
        .route("/audit.csv", get(downloads::audit_csv))
        .route(
            "/statements/{partner}/{period}/{file}",
            get(statement_downloads::download),
        )
        .route("/playground/chat", post(playground::chat))
        .route("/batches/{id}/{file}", get(batch_pages::download))
        .leptos_routes_with_context(
            &state,
            routes,
            move || provide_context(page_state.clone()),
            {
                let leptos = leptos.clone();
                move || shell(leptos.clone())
            },
        )
        .fallback(leptos_axum::file_and_error_handler_with_context::<
            ServerState,
            _,
        >(
            move || provide_context(fallback_state.clone()), shell
        ))
        .with_state(state)
        .layer(middleware::from_fn(request_errors_are_client_errors))
        // Pages and server functions' answers go compressed to clients that take it; event
        // streams (the playground) are left alone, so each token goes out when it is made.
        .layer(CompressionLayer::new())
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            BODY_LIMIT,
            security::clean_input,
        ))
        // The batch upload form carries a file: it gets the API's file limit instead.
        .merge(
            Router::new()
                .route("/batches/upload", post(batch_pages::upload))
                .with_state(upload_state)
                .layer(DefaultBodyLimit::max(batches::MAX_FILE_BYTES + (1 << 20))),
        )
        .layer(sessions)
        .layer(middleware::from_fn_with_state(
            policy.clone(),
            security::csrf,
        ))
        .layer(middleware::from_fn_with_state(policy, security::client_ip))
        .merge(webhooks)
        // Static files need no session (and must not make one be saved on every asset).
        .nest_service("/pkg", assets(&config.site_root))
        .layer(middleware::from_fn(security::headers))
}

/// Whether the build names its JS, WASM and CSS by their content's hash (a release build
/// made by `scripts/release`): cargo-leptos says so when it compiles the server.
fn hashed_assets() -> bool {
    option_env!("LEPTOS_HASH_FILES") == Some("true")
}

/// `/pkg`: the compiled JS, WASM and CSS. Files precompressed by the build (`.br`, `.gz`) are
/// sent as such to clients that take them. Hashed names never change content, so a browser
/// keeps them for a year without asking again; unhashed ones (development) are checked on
/// every load.
fn assets(site_root: &str) -> Router {
    let cache = if hashed_assets() {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    Router::new()
        .fallback_service(
            ServeDir::new(std::path::Path::new(site_root).join("pkg"))
                .precompressed_br()
                .precompressed_gzip(),
        )
        .layer(SetResponseHeaderLayer::if_not_present(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static(cache),
        ))
}

/// `/v1` (bearer keys, OpenAI errors), `/ready` and `/metrics` (bearer token): no sessions and no CSRF checks, since no
/// cookie authenticates them.
/// The page routes, generated once per process. Generating them runs the app with a
/// process-wide flag set (leptos_server's `SuppressResourceLoad`), and a resource first polled
/// meanwhile by any page render in the process never resolves (leptos-rs/leptos#4773): with
/// several portals in one process (the tests, the benchmarks), a later portal's build would
/// now and then freeze another's page for good.
fn route_list() -> Vec<leptos_axum::AxumRouteListing> {
    static ROUTES: std::sync::OnceLock<Vec<leptos_axum::AxumRouteListing>> =
        std::sync::OnceLock::new();
    ROUTES.get_or_init(|| generate_route_list(App)).clone()
}

fn api_routes(
    api: openai::ApiState,
    readiness: inference::Readiness,
    metrics_state: metrics::MetricsState,
) -> Router {
    Router::new()
        .route("/ready", get(inference::ready))
        .with_state(readiness)
        .merge(
            Router::new()
                .route("/metrics", get(metrics::metrics))
                .with_state(metrics_state),
        )
        // Bodies are limited by the handlers, which answer in OpenAI's error format.
        .merge(openai::router(api))
        .layer(middleware::from_fn(security::headers))
}

/// Every request gets an id (the caller's `X-Request-Id`, else a new UUID), returned in the
/// response's `X-Request-Id` and carried by the request's log span, so one line per request
/// (method, path, status, latency) and every line logged while handling it can be found by
/// the id a user reports.
fn with_request_ids(router: Router) -> Router {
    let trace = TraceLayer::new_for_http()
        .make_span_with(|req: &Request<Body>| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            // An invitation link's path is its secret token: never logged.
            let path = req.uri().path();
            let path = if path.starts_with("/invite/") {
                "/invite/***"
            } else {
                path
            };
            tracing::info_span!(
                "request",
                request_id = %id,
                method = %req.method(),
                path = %path,
            )
        })
        .on_request(())
        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO));
    router
        .layer(trace)
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(middleware::map_request(drop_odd_request_ids))
}

/// A caller's `X-Request-Id` is kept only when it is a short token (letters, digits, `-`, `_`,
/// `.`, up to 64); anything else is replaced by a fresh id, so logs stay clean.
async fn drop_odd_request_ids(mut req: Request<Body>) -> Request<Body> {
    let odd = req.headers().get("x-request-id").is_some_and(|v| {
        v.len() > 64
            || !v
                .as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    });
    if odd {
        req.headers_mut().remove("x-request-id");
    }
    req
}

async fn server_fn_handler(State(state): State<ServerState>, req: Request<Body>) -> Response {
    let app = state.app.clone();
    handle_server_fns_with_context(move || provide_context(app.clone()), req)
        .await
        .into_response()
}

/// Server functions answer 500 for every error raised before our code runs (a missing or
/// malformed argument). Those are the client's mistakes: answer 400 with the same body.
async fn request_errors_are_client_errors(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    if res.status() != StatusCode::INTERNAL_SERVER_ERROR
        || !res.headers().contains_key("serverfnerror")
    {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
    };
    if let Ok(app::AppError::Request(_)) = serde_json::from_slice::<app::AppError>(&bytes) {
        parts.status = StatusCode::BAD_REQUEST;
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// Deletes expired sessions, and attempts counted against limits whose windows have all
/// passed, once a minute.
fn spawn_session_sweeper(db: Db, accounts: Accounts) {
    use tower_sessions::ExpiredDeletion;
    let store = DbSessionStore::new(db);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            if let Err(e) = store.delete_expired().await {
                tracing::warn!(error = %e, "sweeping expired sessions failed");
            }
            if let Err(e) = accounts.prune_attempts(db::now_ms()).await {
                tracing::warn!(error = %e, "pruning counted attempts failed");
            }
        }
    });
}

/// Once a minute: releases holds whose TTL has passed (a crashed job never keeps money
/// reserved), moves lapsed grants out of wallets through expiry postings, and moves compute
/// requests whose dates have come (making any grant an approval still owes).
/// Beats for this instance (the first beat before anything here can admit a job, so no job
/// of ours is ever taken for an orphan's), and, in a task of its own so that a long sweep never
/// delays a beat, fails the jobs of instances that stopped beating.
async fn spawn_instance_heartbeat(jobs: jobs::Jobs) -> anyhow::Result<()> {
    jobs.heartbeat(db::now_ms())
        .await
        .context("recording this instance")?;
    let beating = jobs.clone();
    tokio::spawn(async move {
        let mut tick =
            tokio::time::interval(Duration::from_millis(jobs::recovery::HEARTBEAT_MS as u64));
        loop {
            tick.tick().await;
            if let Err(e) = beating.heartbeat(db::now_ms()).await {
                tracing::warn!(error = %e, "instance heartbeat failed");
            }
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(
            jobs::recovery::HEARTBEAT_MS as u64 * 5,
        ));
        loop {
            tick.tick().await;
            if let Err(e) = jobs.recover_dead_instances(db::now_ms()).await {
                tracing::warn!(error = %e, "recovering jobs of stopped instances failed");
            }
        }
    });
    Ok(())
}

fn spawn_money_sweeper(credits: credits::Credits, compute: compute::Compute) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let now = db::now_ms();
            if let Err(e) = credits.ledger().expire_holds(now).await {
                tracing::warn!(error = %e, "expiring holds failed");
            }
            if let Err(e) = credits.expire_grants(now).await {
                tracing::warn!(error = %e, "expiring grants failed");
            }
            if let Err(e) = compute.advance(now).await {
                tracing::warn!(error = %e, "advancing compute requests failed");
            }
        }
    });
}

/// Serves `router` on `listener` until `shutdown` resolves. Sockets send each write at once
/// (`TCP_NODELAY`): a stream's small event chunks must not wait for the peer's delayed ACK
/// (Nagle's algorithm held each streamed token back by about 40 ms).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Serves until Ctrl-C or SIGTERM, then shuts down gracefully (RELIABILITY S5): new jobs get
/// 503 with `Retry-After` (and `/ready` 503) while the listener stays open, running jobs get
/// `grace` to finish, the rest are cancelled and every hold settled or voided; then the
/// server stops accepting, lets open responses end, and the journal and instance record go.
pub async fn serve_until_stopped(
    listener: TcpListener,
    portal: Portal,
    grace: Duration,
) -> anyhow::Result<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, portal.router, async move {
        let _ = stopped.await;
    }));
    shutdown_signal().await;
    let jobs = portal.jobs;
    let running = jobs.unsettled();
    tracing::info!(running, grace_s = grace.as_secs(), "draining: no new jobs");
    let drained = jobs.drain(grace).await;
    tracing::info!(
        cancelled = drained.cancelled,
        unsettled = drained.unsettled,
        "jobs drained"
    );
    let _ = stop.send(());
    // Responses already written (a cancelled stream's last events) get a moment to go out.
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "serving ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the server task failed"),
        Err(_) => tracing::warn!("connections still open after 5 s; closing them"),
    }
    if drained.unsettled == 0 {
        jobs.remove_journal();
        if let Err(e) = jobs.retire().await {
            tracing::warn!(error = %e, "removing this instance's record failed");
        }
    }
    portal.db.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
