//! Email: the letters the portal sends (address verification, password reset, invitations,
//! "you already have an account") and how they leave.
//!
//! With an SMTP URL (`smtps://user:pass@host`, or `smtp://host:587?tls=required` for
//! STARTTLS) letters go to that server; without one (the embedded default) each letter is
//! written as an `.eml` file into a local outbox folder, so a laptop needs no mail server and
//! the log says where to look. Letters are plain text: every link in them is on a line of its
//! own.

use std::path::{Path, PathBuf};

use lettre::{
    AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{
        Body, Mailbox,
        header::{ContentTransferEncoding, ContentType},
    },
};

pub mod letters;

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid email address {0:?}")]
    Address(String),
    #[error("the SMTP URL is not usable: {0}")]
    SmtpUrl(String),
    #[error("could not create the outbox folder {path}: {source}")]
    Outbox {
        path: String,
        source: std::io::Error,
    },
    #[error("building the message failed: {0}")]
    Build(String),
    #[error("sending failed: {0}")]
    Send(String),
}

/// One letter to one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    pub to: String,
    pub subject: String,
    pub body: String,
}

#[derive(Clone)]
enum Transport {
    Smtp {
        relay: String,
        transport: AsyncSmtpTransport<Tokio1Executor>,
    },
    Outbox {
        dir: PathBuf,
        files: AsyncFileTransport<Tokio1Executor>,
    },
}

/// Sends letters from one sender address.
#[derive(Clone)]
pub struct Mailer {
    transport: Transport,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn mailbox(address: &str) -> Result<Mailbox, MailError> {
    address
        .parse()
        .map_err(|_| MailError::Address(address.to_string()))
}

impl Mailer {
    /// Letters go to the SMTP server at `url` (credentials, if any, in the URL).
    pub fn smtp(url: &str, from: &str) -> Result<Mailer, MailError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| MailError::SmtpUrl(e.to_string()))?
            .build();
        let relay = url
            .rsplit('@')
            .next()
            .unwrap_or(url)
            .trim_start_matches("smtp://")
            .trim_start_matches("smtps://")
            .to_string();
        Ok(Mailer {
            transport: Transport::Smtp { relay, transport },
            from: mailbox(from)?,
        })
    }

    /// Letters are written as `.eml` files into `dir` (created if need be).
    pub fn outbox(dir: &Path, from: &str) -> Result<Mailer, MailError> {
        std::fs::create_dir_all(dir).map_err(|source| MailError::Outbox {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(Mailer {
            transport: Transport::Outbox {
                dir: dir.to_path_buf(),
                files: AsyncFileTransport::new(dir),
            },
            from: mailbox(from)?,
        })
    }

    /// Where letters go, for the log (no credentials).
    pub fn describe(&self) -> String {
        match &self.transport {
            Transport::Smtp { relay, .. } => format!("SMTP server {relay}"),
            Transport::Outbox { dir, .. } => format!("outbox folder {}", dir.display()),
        }
    }

    /// The outbox folder, when letters are written there.
    pub fn outbox_dir(&self) -> Option<&Path> {
        match &self.transport {
            Transport::Outbox { dir, .. } => Some(dir),
            Transport::Smtp { .. } => None,
        }
    }

    /// Sends a letter and waits until the server took it (or the file is written).
    pub async fn send(&self, letter: &Letter) -> Result<(), MailError> {
        let message = Message::builder()
            .from(self.from.clone())
            .to(mailbox(&letter.to)?)
            .subject(&letter.subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body(&letter.body))
            .map_err(|e| MailError::Build(e.to_string()))?;
        match &self.transport {
            Transport::Smtp { transport, .. } => transport
                .send(message)
                .await
                .map(drop)
                .map_err(|e| MailError::Send(e.to_string())),
            Transport::Outbox { files, .. } => files
                .send(message)
                .await
                .map(drop)
                .map_err(|e| MailError::Send(e.to_string())),
        }
    }

    /// Sends a letter from a task of its own: the request that caused it answers at once
    /// (and in the same time whichever letter it caused), and a failure is logged.
    pub fn send_later(&self, letter: Letter) {
        let mailer = self.clone();
        tokio::spawn(async move {
            match mailer.send(&letter).await {
                Ok(()) => {
                    tracing::info!(subject = letter.subject, via = %mailer.describe(), "mail sent")
                }
                Err(e) => tracing::error!(error = %e, subject = letter.subject, "mail not sent"),
            }
        });
    }
}

/// The letter's body as sent. Plain ASCII (every letter but those naming an organisation in
/// another script) goes as 7bit text, which RFC 5322 allows in lines of up to 998 characters:
/// a link longer than the 76 characters after which lettre would choose quoted-printable then
/// stays whole on its line, also for whoever reads the `.eml` file in the outbox as text.
/// Anything else is encoded as lettre chooses.
fn body(text: &str) -> Body {
    let plain = text.is_ascii()
        && !text.contains(['\0', '\r'])
        && text.lines().all(|line| line.len() <= 998);
    if plain {
        Body::dangerous_pre_encoded(
            text.replace('\n', "\r\n").into_bytes(),
            ContentTransferEncoding::SevenBit,
        )
    } else {
        Body::new(text.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_outbox_letter_is_a_readable_eml_file() {
        let dir = tempfile::tempdir().unwrap();
        let mailer = Mailer::outbox(dir.path(), "Tokenmill <no-reply@example.com>").unwrap();
        assert!(mailer.describe().starts_with("outbox folder "));
        mailer
            .send(&Letter {
                to: "ana@example.com".into(),
                subject: "Hello".into(),
                body: "Open\nhttp://127.0.0.1:3000/verify/abc\n".into(),
            })
            .await
            .unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1);
        let path = files[0].as_ref().unwrap().path();
        assert_eq!(path.extension().unwrap(), "eml");
        let raw = std::fs::read_to_string(path).unwrap();
        assert!(raw.contains("To: ana@example.com"), "{raw}");
        assert!(raw.contains("Subject: Hello"), "{raw}");
        assert!(raw.contains("http://127.0.0.1:3000/verify/abc"), "{raw}");
    }

    #[test]
    fn a_long_link_stays_whole_and_other_scripts_are_encoded() {
        let link = format!("https://console.example.com/verify/{}", "a".repeat(64));
        let plain = body(&format!("Open\n{link}\n"));
        assert_eq!(plain.encoding(), ContentTransferEncoding::SevenBit);
        let raw = String::from_utf8(plain.into_vec()).unwrap();
        assert!(raw.contains(&format!("\r\n{link}\r\n")), "{raw}");
        let other = body("Velkommen til Ærø\n");
        assert_ne!(other.encoding(), ContentTransferEncoding::SevenBit);
    }

    /// In the runtime, as at start: lettre's connection pool lives in it.
    #[tokio::test]
    async fn a_bad_smtp_url_or_sender_is_refused_at_start() {
        assert!(matches!(
            Mailer::smtp("ftp://mail.example.com", "a@example.com"),
            Err(MailError::SmtpUrl(_))
        ));
        assert!(matches!(
            Mailer::smtp("smtp://127.0.0.1:2525", "not an address"),
            Err(MailError::Address(_))
        ));
    }
}
