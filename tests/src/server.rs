//! A real `featmux serve` process for tests: a temp data dir, a config
//! file, ephemeral ports (read back from its JSON "listening" log line),
//! and graceful stop by SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use featmux_client::{Client, ClientOptions};

/// The `featmux` binary cargo built next to this test executable
/// (`cargo test --workspace` builds featmux-cli's binary for its own
/// integration test, `cli/tests/one_binary.rs`, before any test runs).
pub fn featmux_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let binary = dir.join(format!("featmux{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} not found: run the tests with `cargo test --workspace`",
        binary.display()
    );
    binary
}

/// A client of the server's gRPC Unix socket at `socket` (its
/// `grpc_unix_socket`), with `token` (if any).
pub async fn unix_client(socket: &Path, token: Option<&str>) -> Client {
    connect(format!("unix://{}", socket.display()), token).await
}

async fn connect(addr: String, token: Option<&str>) -> Client {
    let mut options = ClientOptions::new(addr);
    options.token = token.map(str::to_owned);
    Client::connect(options).await.expect("connect")
}

/// A running server process.
pub struct TestServer {
    child: Option<Child>,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    /// Whether the listeners speak TLS.
    pub tls: bool,
    logs: mpsc::Receiver<String>,
}

/// Everything the config file gets besides the data dir and ports.
#[derive(Debug, Clone, Default)]
pub struct ServerSettings {
    /// Extra TOML appended to the generated config (sections allowed).
    pub extra_toml: String,
}

impl TestServer {
    /// Starts a server on `data_dir` on ephemeral ports and waits until it
    /// is ready.
    pub fn start(data_dir: &Path, settings: &ServerSettings) -> TestServer {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        Self::start_at(data_dir, settings, any, any)
    }

    /// Starts a server on ports it can be started again on once stopped
    /// (see [`crate::ports`]) and waits until it is ready.
    pub fn start_restartable(data_dir: &Path, settings: &ServerSettings) -> TestServer {
        let at = || SocketAddr::from(([127, 0, 0, 1], crate::ports::restartable_port()));
        Self::start_at(data_dir, settings, at(), at())
    }

    /// Starts a server listening on the given addresses and waits until
    /// it is ready.
    pub fn start_at(
        data_dir: &Path,
        settings: &ServerSettings,
        grpc: SocketAddr,
        http: SocketAddr,
    ) -> TestServer {
        let mut server = Self::spawn(data_dir, settings, grpc, http);
        server.wait_for_log("ready");
        server
    }

    /// Starts a server and returns as soon as it listens (recovery may
    /// still be running).
    pub fn spawn(
        data_dir: &Path,
        settings: &ServerSettings,
        grpc: SocketAddr,
        http: SocketAddr,
    ) -> TestServer {
        let config = data_dir.with_extension("toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {data_dir:?}\ngrpc_addr = \"{grpc}\"\nhttp_addr = \"{http}\"\n\
                 log_format = \"json\"\n{}\n",
                settings.extra_toml
            ),
        )
        .expect("write config");
        let mut child = Command::new(featmux_binary())
            .args(["serve", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn featmux serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, logs) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = TestServer {
            child: Some(child),
            grpc: "0.0.0.0:0".parse().expect("addr"),
            http: "0.0.0.0:0".parse().expect("addr"),
            data_dir: data_dir.to_owned(),
            tls: settings.extra_toml.contains("[tls]"),
            logs,
        };
        let listening = server.wait_for_log("listening");
        let addr = |key: &str| -> SocketAddr {
            listening[key]
                .as_str()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {key} address in {listening}"))
        };
        server.grpc = addr("grpc");
        server.http = addr("http");
        server
    }

    /// Waits for the JSON log line whose message is `message`.
    pub fn wait_for_log(&mut self, message: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.logs.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => panic!("featmux never logged `{message}`"),
            };
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if event["message"] == message {
                return event;
            }
        }
    }

    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// `http(s)://127.0.0.1:<grpc port>`.
    pub fn grpc_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.grpc)
    }

    /// `http(s)://127.0.0.1:<http port>`.
    pub fn http_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.http)
    }

    /// A client with `token` (if any).
    pub async fn client(&self, token: Option<&str>) -> Client {
        connect(self.grpc_url(), token).await
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn stop(self) -> ExitStatus {
        self.stop_with_logs().0
    }

    /// Sends SIGTERM, waits for the process to exit, and returns its exit
    /// status with every line it wrote to stderr not read yet.
    pub fn stop_with_logs(mut self) -> (ExitStatus, Vec<String>) {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM");
        let status = child.wait().expect("wait for featmux");
        // The reader thread ends at the pipe's EOF, closing the channel.
        (status, self.logs.iter().collect())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
