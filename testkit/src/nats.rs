//! A `nats-server` of a test's own on a free port (Debian's package; `scripts/test` installs
//! it), optionally with a configuration file, stopped when dropped. Tests never use a NATS
//! server they did not start.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    config: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// A server with no authorization.
    pub fn start() -> NatsServer {
        NatsServer::with_config(None)
    }

    /// A server reading `config` (the text of a NATS configuration file).
    pub fn with_config(config: Option<&str>) -> NatsServer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = config.map(|text| {
            let path = dir.path().join("nats.conf");
            std::fs::write(&path, text).expect("write the NATS configuration");
            path
        });
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = NatsServer {
            child: None,
            port,
            url: format!("nats://127.0.0.1:{port}"),
            config,
            _dir: dir,
        };
        server.resume();
        server
    }

    /// Stops the server (as a crash would: SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, and waits until it takes connections.
    pub fn resume(&mut self) {
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(c) = &self.config {
            cmd.arg("-c").arg(c);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (scripts/test installs Debian's package)");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < until,
                "nats-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
