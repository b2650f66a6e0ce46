//! End-to-end support: the real `statecast-server` binary on a temp fjall dir.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The directory cargo puts binaries in: the test binary lives in its `deps`.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("the test binary's directory");
    deps.parent().expect("cargo's binary directory").to_owned()
}

/// A binary of the workspace in [`bin_dir`], built once with `cargo build ARGS` if missing.
fn built(name: &str, args: &[&str]) -> PathBuf {
    let bin = bin_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo).arg("build").args(args).status().expect("run cargo build");
        assert!(status.success(), "building {name} failed");
    }
    bin
}

/// The server binary (built once if missing).
pub fn server_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| built("statecast-server", &["-p", "statecast-server", "--bin", "statecast-server"])).clone()
}

/// The `statecast` CLI: this build's when the `cli` feature is on, else built once if missing.
pub fn cli_binary() -> PathBuf {
    #[cfg(feature = "cli")]
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_statecast"));
    #[cfg(not(feature = "cli"))]
    let bin = built("statecast", &["-p", "statecast-client", "--features", "cli", "--bin", "statecast"]);
    bin
}

pub struct Server {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub url: String,
    pub port: u16,
    /// `quic://127.0.0.1:PORT` and the certificate's SHA-256 fingerprint.
    pub quic_url: String,
    pub quic_fingerprint: String,
    /// `--store`: `fjall:` (the default store) in the temp dir unless started with [`Server::start_on`].
    store: Option<String>,
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(None)
    }

    /// A server on the given store (`postgres://…`, `sqlite:…`).
    pub fn start_on(store: &str) -> Server {
        Self::start_with(Some(store.to_owned()))
    }

    fn start_with(store: Option<String>) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Server {
            child: None,
            dir,
            url: String::new(),
            port: 0,
            quic_url: String::new(),
            quic_fingerprint: String::new(),
            store,
        };
        s.spawn("127.0.0.1:0");
        s
    }

    fn spawn(&mut self, addr: &str) {
        let data = self.dir.path().join("data");
        let store = self.store.clone().unwrap_or_else(|| format!("fjall:{}", data.display()));
        let mut child = Command::new(server_binary())
            .current_dir(self.dir.path())
            .args(["--ws-addr", addr, "--quic-addr", "127.0.0.1:0", "--store", &store])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start statecast-server");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let quic_tx = tx.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(url) = line.strip_prefix("listening ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stderr).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(fp) = line.trim().strip_prefix("quic fingerprint (sha-256): ") {
                    let _ = quic_tx.send(format!("fingerprint {fp}"));
                }
            }
        });
        let (mut url, mut quic, mut fingerprint) = (String::new(), String::new(), String::new());
        while url.is_empty() || quic.is_empty() || fingerprint.is_empty() {
            let line = rx.recv_timeout(Duration::from_secs(30)).expect("the server printed its listening lines");
            if line.starts_with("ws://") {
                url = line;
            } else if line.starts_with("quic://") {
                quic = line;
            } else if let Some(fp) = line.strip_prefix("fingerprint ") {
                fingerprint = fp.to_owned();
            }
        }
        self.quic_url = quic;
        self.quic_fingerprint = fingerprint;
        self.port =
            url.rsplit(':').next().and_then(|p| p.split('/').next()).and_then(|p| p.parse().ok()).expect("port");
        self.url = url;
        self.child = Some(child);
    }

    /// SIGKILL, then start again on the same data and the same port.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart_same_port(&mut self) {
        let addr = format!("127.0.0.1:{}", self.port);
        self.spawn(&addr);
    }

    pub fn data(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[allow(unused_imports)] // each test binary uses a part of this module
pub use statecast_core::testkit::pg::{PgSchema, pg_url, psql};
