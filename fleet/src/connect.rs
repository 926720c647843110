//! Connecting to NATS as a portal or a node: the URL (`nats://`, `tls://`, with or without
//! `user:password@`), and a token, a user and password, or a `.creds` file.

use std::path::PathBuf;
use std::time::Duration;

use crate::FleetError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// None, or what the URL carries (`nats://user:password@host`).
    None,
    Token(String),
    UserPassword {
        user: String,
        password: String,
    },
    /// A NATS credentials file (JWT and NKey seed).
    CredsFile(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub url: String,
    pub auth: Auth,
}

/// `url` without the password or token it may carry (for messages and logs).
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// How long the first connection may take before start-up fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Connect {
    /// Connects once; a server that cannot be reached now is an error (a later disconnect is
    /// retried by the client, with backoff, for as long as the process runs).
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, FleetError> {
        self.connect_with(name, None).await
    }

    /// Connects as a node of `factory_id`: its reply subjects are under the factory's own
    /// subjects too, so a partner's NATS user needs nothing outside `tokenmill.<factory>.>`.
    pub async fn connect_node(
        &self,
        name: &str,
        factory_id: &str,
    ) -> Result<async_nats::Client, FleetError> {
        let inbox = crate::protocol::Subjects::new(factory_id).inbox();
        self.connect_with(name, Some(inbox)).await
    }

    async fn connect_with(
        &self,
        name: &str,
        inbox: Option<String>,
    ) -> Result<async_nats::Client, FleetError> {
        let mut options = match &self.auth {
            // The client does not read credentials from the URL itself: `user:password@` is a
            // user and password, a lone `token@` a token, as other NATS clients take them.
            Auth::None => {
                let addr: async_nats::ServerAddr =
                    self.url.parse().map_err(|e| FleetError::Connect {
                        url: redacted(&self.url),
                        message: format!("not a NATS URL: {e}"),
                    })?;
                match (addr.username(), addr.password()) {
                    (Some(user), Some(password)) => {
                        async_nats::ConnectOptions::with_user_and_password(
                            user.to_string(),
                            password.to_string(),
                        )
                    }
                    (Some(token), None) => {
                        async_nats::ConnectOptions::with_token(token.to_string())
                    }
                    _ => async_nats::ConnectOptions::new(),
                }
            }
            Auth::Token(t) => async_nats::ConnectOptions::with_token(t.clone()),
            Auth::UserPassword { user, password } => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            Auth::CredsFile(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| FleetError::Connect {
                    url: redacted(&self.url),
                    message: format!("cannot read the credentials file {}: {e}", path.display()),
                })?,
        };
        let url = redacted(&self.url);
        options = options
            .name(name)
            .connection_timeout(CONNECT_TIMEOUT)
            // Reconnects back off from 10 ms up to 2 s: a restarted server is found again
            // within a few seconds.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((10u64 << attempts.min(8)).min(2_000))
            })
            .event_callback(move |event| {
                let url = url.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => tracing::info!(url, "NATS connected"),
                        async_nats::Event::Disconnected => {
                            tracing::warn!(url, "NATS disconnected; reconnecting")
                        }
                        other => tracing::warn!(url, "NATS: {other}"),
                    }
                }
            });
        if let Some(prefix) = inbox {
            options = options.custom_inbox_prefix(prefix);
        }
        if self.url.starts_with("tls://") {
            options = options.require_tls(true);
        }
        options
            .connect(self.url.as_str())
            .await
            .map_err(|e| FleetError::Connect {
                url: redacted(&self.url),
                message: e.to_string(),
            })
    }
}
