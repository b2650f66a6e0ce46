//! Starts the real server binary on free ports (WebSocket and QUIC) with a
//! fresh store: a sled directory or SQLite file in a temp dir, or a fresh
//! schema in a PostgreSQL database (made with `psql`, dropped afterwards).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::client::Target;

/// Which store the server runs on (`--store`).
#[derive(Clone, Debug)]
pub enum StoreArg {
    Sled,
    Fjall,
    Sqlite,
    /// A PostgreSQL URL; each server gets a fresh schema in that database.
    Postgres(String),
}

impl std::str::FromStr for StoreArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sled" => Ok(StoreArg::Sled),
            "fjall" => Ok(StoreArg::Fjall),
            "sqlite" => Ok(StoreArg::Sqlite),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(StoreArg::Postgres(url.to_owned()))
            }
            other => Err(format!("`{other}`: expected sled, fjall, sqlite or a postgres:// URL")),
        }
    }
}

impl std::fmt::Display for StoreArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreArg::Sled => "sled",
            StoreArg::Fjall => "fjall",
            StoreArg::Sqlite => "SQLite",
            StoreArg::Postgres(_) => "PostgreSQL",
        })
    }
}

fn psql(url: &str, sql: &str) -> Result<(), crate::client::BoxError> {
    let out = Command::new("psql").args([url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql]).output()?;
    if !out.status.success() {
        return Err(format!("psql: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

pub struct Server {
    child: Child,
    pub target: Target,
    _dir: tempfile::TempDir,
    /// PostgreSQL: (database URL, schema) to drop at the end.
    pg: Option<(String, String)>,
}

pub fn default_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    target.join("release").join("statecast-server")
}

impl Server {
    pub fn start(bin: &Path, store: &StoreArg) -> Result<Server, crate::client::BoxError> {
        Self::start_with(bin, store, &[])
    }

    /// Starts the server with extra flags.
    pub fn start_with(bin: &Path, store: &StoreArg, extra: &[&str]) -> Result<Server, crate::client::BoxError> {
        let dir = tempfile::tempdir()?;
        let mut pg = None;
        let spec = match store {
            StoreArg::Sled => format!("sled:{}", dir.path().join("data").display()),
            StoreArg::Fjall => format!("fjall:{}", dir.path().join("data").display()),
            StoreArg::Sqlite => format!("sqlite:{}", dir.path().join("statecast.db").display()),
            StoreArg::Postgres(url) => {
                let (schema, spec) = fresh_pg_schema(url)?;
                pg = Some((url.clone(), schema));
                spec
            }
        };
        // Where the server keeps its self-signed QUIC certificate: beside the data
        // (sled directory, SQLite file), else ./statecast-data in its working directory.
        let cert_dir = match store {
            StoreArg::Sled | StoreArg::Fjall => dir.path().join("data"),
            StoreArg::Sqlite => dir.path().to_owned(),
            StoreArg::Postgres(_) => dir.path().join("statecast-data"),
        };
        Self::spawn(bin, dir, &spec, &cert_dir, extra, &[], pg)
    }

    /// Starts the binary (demo mode, fjall) on a store that `statecast-bench
    /// seed-read-classes` filled first: the demo rows plus `extra_users`
    /// non-admin members of project 1 (user ids 11, 12, …), with JWTs signed by
    /// `jwt_secret` accepted beside the dev tokens.
    pub fn start_fjall_with_members(
        bin: &Path,
        extra_users: usize,
        jwt_secret: &str,
    ) -> Result<Server, crate::client::BoxError> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let spec = format!("fjall:{}", data.display());
        let out = Command::new(std::env::current_exe()?)
            .args(["seed-read-classes", "--store-dir"])
            .arg(&data)
            .args(["--users", &extra_users.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()?;
        if !out.success() {
            return Err(format!("seed-read-classes failed: {out}").into());
        }
        let env = [("STATECAST_JWT_SECRET", jwt_secret)];
        Self::spawn(bin, dir, &spec, &data, &["--mode", "demo"], &env, None)
    }

    /// Starts the binary in `dir` on `--store spec`.
    fn spawn(
        bin: &Path,
        dir: tempfile::TempDir,
        spec: &str,
        cert_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        pg: Option<(String, String)>,
    ) -> Result<Server, crate::client::BoxError> {
        let mut child = Command::new(bin)
            .current_dir(dir.path())
            .args(["--ws-addr", "127.0.0.1:0", "--quic-addr", "127.0.0.1:0", "--store"])
            .arg(spec)
            .args(extra)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                format!(
                    "can't start {}: {e} (build it with `cargo build --release -p statecast-server`)",
                    bin.display()
                )
            })?;
        let (ws_url, quic_url) = read_listening(&mut child, true)?;
        // The server made its self-signed certificate before listening; pin it.
        let fingerprint = statecast_transport_quic::ensure_self_signed(cert_dir)?.fingerprint;
        let target = Target { ws_url, quic_url, quic_fingerprint: Some(fingerprint) };
        Ok(Server { child, target, _dir: dir, pg })
    }

    /// Starts the bare broadcast baseline (`statecast-bench baseline-server`):
    /// WebSocket only, no store.
    pub fn start_baseline() -> Result<Server, crate::client::BoxError> {
        let dir = tempfile::tempdir()?;
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(["baseline-server", "--addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let (ws_url, _) = read_listening(&mut child, false)?;
        let target = Target { ws_url, quic_url: None, quic_fingerprint: None };
        Ok(Server { child, target, _dir: dir, pg: None })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The value of one counter in the server's `/metrics`.
    pub async fn metric(&self, name: &str) -> Result<f64, crate::client::BoxError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.target.ws_url.trim_start_matches("ws://").split('/').next().ok_or("bad url")?.to_owned();
        let mut tcp = tokio::net::TcpStream::connect(&addr).await?;
        tcp.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
        let mut body = String::new();
        tcp.read_to_string(&mut body).await?;
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.parse().ok()))
            .ok_or_else(|| format!("no metric {name} in /metrics").into())
    }
}

/// Creates a fresh schema in the database at `url`; returns it and the
/// store spec that points a server at it.
fn fresh_pg_schema(url: &str) -> Result<(String, String), crate::client::BoxError> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let schema = format!("bench_{}_{}", std::process::id(), nanos % 1_000_000_000_000);
    psql(url, &format!("CREATE SCHEMA {schema}"))?;
    let sep = if url.contains('?') { '&' } else { '?' };
    let spec = format!("{url}{sep}options[search_path]={schema}");
    Ok((schema, spec))
}

/// Several server processes on one PostgreSQL schema (scale-out), each on
/// its own ports; the schema is dropped after every process has stopped.
pub struct Cluster {
    pub servers: Vec<Server>,
    url: String,
    schema: String,
}

impl Cluster {
    pub fn start(bin: &Path, url: &str, processes: usize) -> Result<Cluster, crate::client::BoxError> {
        let (schema, spec) = fresh_pg_schema(url)?;
        let mut cluster = Cluster { servers: Vec::new(), url: url.to_owned(), schema };
        // One at a time: the first creates the tables and the demo rows.
        for _ in 0..processes {
            let dir = tempfile::tempdir()?;
            let cert_dir = dir.path().join("statecast-data");
            cluster.servers.push(Server::spawn(bin, dir, &spec, &cert_dir, &[], &[], None)?);
        }
        Ok(cluster)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().map(Server::pid).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.servers.clear();
        let _ = psql(&self.url, &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some((url, schema)) = &self.pg {
            let _ = psql(url, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        }
    }
}

/// Reads the child's stdout until its `listening ws://…` line (and, when
/// `quic`, its `listening quic://…` line), then keeps draining it on a thread
/// so the child never blocks on a full pipe.
fn read_listening(child: &mut Child, quic: bool) -> Result<(String, Option<String>), crate::client::BoxError> {
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut ws_url, mut quic_url) = (None, None);
    while ws_url.is_none() || (quic && quic_url.is_none()) {
        let line = lines.next().ok_or("the server exited before listening")??;
        if let Some(rest) = line.trim().strip_prefix("listening ") {
            if rest.starts_with("quic://") {
                quic_url = Some(rest.to_owned());
            } else {
                ws_url = Some(rest.to_owned());
            }
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok((ws_url.unwrap_or_default(), quic_url))
}
