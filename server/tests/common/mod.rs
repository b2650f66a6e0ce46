//! End-to-end test support: the real `statecast-server` binary on a fresh
//! store, and a WebSocket client that speaks JSON or MessagePack.
//!
//! The store is fjall (the default) in a temp dir unless `STATECAST_TEST_STORE`
//! says `sled` (also in the temp dir), `sqlite` (a file in the temp dir) or
//! `postgres` (a fresh schema in the database `STATECAST_PG_URL` names,
//! dropped at the end).
#![allow(dead_code)] // each test binary uses a different part of this module

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use statecast_core::Fields;
use statecast_core::protocol::v1::Write;
use statecast_server::{LISTENING_PREFIX, QUIC_FINGERPRINT_PREFIX, QUIC_LISTENING_PREFIX};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for one message before failing.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// 2^52: the smallest client-minted id.
pub const MINTED_MIN: i64 = 1 << 52;
/// 2^53: one past the largest client-minted id.
pub const MINTED_END: i64 = 1 << 53;

enum DataDir {
    Owned(tempfile::TempDir),
    Given(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Owned(d) => d.path(),
            DataDir::Given(p) => p,
        }
    }
}

/// Which store the servers of this test run use (`STATECAST_TEST_STORE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Fjall,
    Sled,
    Sqlite,
    Postgres,
}

impl StoreKind {
    pub fn from_env() -> StoreKind {
        match std::env::var("STATECAST_TEST_STORE").unwrap_or_default().as_str() {
            "" | "fjall" => StoreKind::Fjall,
            "sled" => StoreKind::Sled,
            "sqlite" => StoreKind::Sqlite,
            "postgres" => StoreKind::Postgres,
            other => panic!("STATECAST_TEST_STORE={other}: expected fjall, sled, sqlite or postgres"),
        }
    }

    /// True in the run on the default store: tests that bring their own
    /// store (PostgreSQL) run once, there.
    pub fn is_default_run() -> bool {
        StoreKind::from_env() == StoreKind::Fjall
    }
}

#[allow(unused_imports)] // not every test binary runs SQL
pub use statecast_core::testkit::pg::{PgSchema, pg_url, psql};

/// A fresh PostgreSQL schema for one test on `STATECAST_PG_URL` (dropped on drop).
pub fn pg_schema() -> PgSchema {
    let url = pg_url().expect("STATECAST_PG_URL must be set for PostgreSQL tests");
    PgSchema::create(&url, "e2e")
}

/// A running `statecast-server` process; killed when dropped.
pub struct TestServer {
    child: Option<Child>,
    /// The `--store` flag's value.
    store: String,
    /// Kept for the server's lifetime (dropped after the process is killed).
    pg: Option<Arc<PgSchema>>,
    dir: DataDir,
    extra_args: Vec<String>,
    stderr: Arc<Mutex<String>>,
    /// The thread that reads the stderr pipe to its end.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    /// `ws://127.0.0.1:PORT/ws`, from the listening line.
    pub url: String,
    pub addr: SocketAddr,
    /// `quic://127.0.0.1:PORT`, from the QUIC listening line (`None` with `--quic-addr off`).
    pub quic_url: Option<String>,
}

impl TestServer {
    /// Starts the server on a fresh temp directory (the demo app, seeded).
    pub fn start() -> Self {
        Self::start_args(&[])
    }

    /// Starts the server on a fresh temp directory with extra flags.
    pub fn start_args(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("create a temp data dir");
        Self::spawn(DataDir::Owned(dir), extra.iter().map(|s| (*s).to_owned()).collect())
    }

    /// Starts the server on a directory the caller owns.
    pub fn start_with(data_dir: &Path) -> Self {
        Self::start_with_args(data_dir, &[])
    }

    /// Starts the server on a directory the caller owns, with extra flags.
    pub fn start_with_args(data_dir: &Path, extra: &[&str]) -> Self {
        Self::spawn(DataDir::Given(data_dir.to_owned()), extra.iter().map(|s| (*s).to_owned()).collect())
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the server keeps its self-signed QUIC certificate: the fjall or
    /// sled directory, the SQLite file's directory, or `./statecast-data` in its
    /// working directory (this data dir) for PostgreSQL.
    pub fn cert_dir(&self) -> PathBuf {
        match StoreKind::from_env() {
            StoreKind::Fjall | StoreKind::Sled | StoreKind::Sqlite => self.dir.path().to_owned(),
            StoreKind::Postgres => self.dir.path().join("statecast-data"),
        }
    }

    /// Starts the server on the store `spec` (the caller owns the data).
    pub fn start_on(store: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("create a temp data dir");
        let mut server = TestServer {
            child: None,
            store: store.to_owned(),
            pg: None,
            dir: DataDir::Owned(dir),
            extra_args: extra.iter().map(|s| (*s).to_owned()).collect(),
            stderr: Arc::default(),
            stderr_reader: None,
            url: String::new(),
            quic_url: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        server.launch();
        server
    }

    /// The `--store` value this server runs on.
    pub fn store_spec(&self) -> &str {
        &self.store
    }

    fn spawn(dir: DataDir, extra_args: Vec<String>) -> Self {
        let (store, pg) = match StoreKind::from_env() {
            StoreKind::Fjall => (format!("fjall:{}", dir.path().display()), None),
            StoreKind::Sled => (format!("sled:{}", dir.path().display()), None),
            StoreKind::Sqlite => (format!("sqlite:{}", dir.path().join("statecast.db").display()), None),
            StoreKind::Postgres => {
                let pg = pg_schema();
                (pg.store_url(), Some(Arc::new(pg)))
            }
        };
        let mut server = TestServer {
            child: None,
            store,
            pg,
            dir,
            extra_args,
            stderr: Arc::default(),
            stderr_reader: None,
            url: String::new(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            quic_url: None,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        // QUIC on a free port too (unless the test says otherwise), so tests never share UDP 7101.
        let quic_given = self.extra_args.iter().any(|a| a == "--quic-addr");
        let quic_args: &[&str] = if quic_given { &[] } else { &["--quic-addr", "127.0.0.1:0"] };
        let quic_off = self.extra_args.windows(2).any(|w| w[0] == "--quic-addr" && w[1] == "off");
        let mut child = Command::new(env!("CARGO_BIN_EXE_statecast-server"))
            .current_dir(self.dir.path())
            .args(["--ws-addr", "127.0.0.1:0", "--store", &self.store])
            .args(quic_args)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn statecast-server");

        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        self.stderr_reader = Some(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("stderr buffer").push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }));

        // Stdout is read to the end on its own thread, so the server never blocks on a full pipe.
        let (lines_tx, lines_rx) = mpsc::channel::<String>();
        let out_pipe = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out_pipe).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    // Nobody listens any more; keep draining.
                }
            }
        });

        self.child = Some(child);
        self.stderr = stderr;
        let deadline = Instant::now() + START_TIMEOUT;
        self.url.clear();
        self.quic_url = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.trim().strip_prefix(LISTENING_PREFIX) {
                        let host_port = rest.split('/').next().unwrap_or_default();
                        self.addr = host_port.parse().unwrap_or_else(|e| panic!("bad listening line `{line}`: {e}"));
                        self.url = format!("ws://{rest}");
                    } else if let Some(rest) = line.trim().strip_prefix(QUIC_LISTENING_PREFIX) {
                        let _: SocketAddr = rest.parse().unwrap_or_else(|e| panic!("bad listening line `{line}`: {e}"));
                        self.quic_url = Some(format!("quic://{rest}"));
                    }
                    // The QUIC line follows the WebSocket line.
                    if !self.url.is_empty() && (quic_off || self.quic_url.is_some()) {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let why = format!("no `{LISTENING_PREFIX}…` line within {START_TIMEOUT:?}");
                    self.fail_start(&why);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => self.fail_start("stdout closed before the listening line"),
            }
        }
    }

    fn fail_start(&mut self, why: &str) -> ! {
        let status = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        self.kill9();
        std::thread::sleep(Duration::from_millis(100));
        let stderr = self.stderr();
        panic!("statecast-server did not start: {why} (exit status {status:?})\n--- stderr ---\n{stderr}");
    }

    /// The QUIC certificate's SHA-256 fingerprint, as the server printed it on stderr.
    pub fn quic_fingerprint(&self) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let stderr = self.stderr();
            let found = stderr.lines().find_map(|l| l.trim().strip_prefix(QUIC_FINGERPRINT_PREFIX).map(str::to_owned));
            if let Some(fingerprint) = found {
                return fingerprint;
            }
            assert!(Instant::now() < deadline, "no `{QUIC_FINGERPRINT_PREFIX}…` line on stderr:\n{stderr}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// SIGKILL: the process dies at once, with no chance to flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process (SIGKILL) if it runs and starts a new one on the same data dir.
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
    }

    /// Starts the process again on the same data dir (after it exited or was killed).
    pub fn relaunch(&mut self) {
        self.kill9();
        self.launch();
    }

    /// Waits up to `within` for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                // Everything it wrote before exiting is in `stderr()` once this returns.
                if let Some(reader) = self.stderr_reader.take() {
                    let _ = reader.join();
                }
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM and waits up to `within` for the process to exit.
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                // Everything it wrote before exiting is in `stderr()` once this returns.
                if let Some(reader) = self.stderr_reader.take() {
                    let _ = reader.join();
                }
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Like [`Self::http_get`], or `None` when nothing listens or answers
    /// (the server is stopping).
    pub async fn try_http_get(&self, path: &str) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(self.addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.addr);
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        tokio::time::timeout(RECV_TIMEOUT, s.read_to_end(&mut out)).await.ok()?.ok()?;
        (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned())
    }

    /// `GET path` on the server's port (HTTP/1.1, connection closed): the whole response.
    pub async fn http_get(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(self.addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.addr);
        s.write_all(req.as_bytes()).await.expect("send request");
        let mut out = Vec::new();
        tokio::time::timeout(RECV_TIMEOUT, s.read_to_end(&mut out)).await.expect("response in time").expect("read");
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A JSON client connected to this server (no hello yet).
    pub async fn json(&self) -> Client {
        Client::connect(&self.url, Codec::Json).await
    }

    /// A MessagePack client connected to this server (no hello yet).
    pub async fn msgpack(&self) -> Client {
        Client::connect(&self.url, Codec::MsgPack).await
    }

    /// A JSON client that said hello with `token` and subscribed to `job/<job>`.
    pub async fn subscribed(&self, token: &str, job: i64) -> (Client, Value) {
        let mut c = self.json().await;
        c.hello(token).await;
        let state = c.subscribe("job", job).await;
        (c, state)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Which codec a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// Text frames carrying JSON.
    Json,
    /// Binary frames carrying MessagePack maps.
    MsgPack,
}

/// What arrived on a connection.
#[derive(Debug)]
pub enum Event {
    Msg(Value),
    /// A close frame (its code), or the stream ended (no code).
    Closed(Option<u16>),
}

/// A WebSocket client speaking protocol v1 frames as `serde_json::Value`s.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub codec: Codec,
    pub client_id: String,
    next_write_id: i64,
    said_hello: bool,
}

impl Client {
    pub async fn connect(url: &str, codec: Codec) -> Self {
        let (ws, _) = tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .unwrap_or_else(|_| panic!("connecting to {url} timed out"))
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        let client_id = format!("test-{:032x}", rand_u128());
        Client { ws, codec, client_id, next_write_id: 1, said_hello: false }
    }

    /// Connects, or `None` when nothing listens (the server is restarting).
    pub async fn try_connect(url: &str, codec: Codec) -> Option<Self> {
        let (ws, _) = tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(url)).await.ok()?.ok()?;
        let client_id = format!("test-{:032x}", rand_u128());
        Some(Client { ws, codec, client_id, next_write_id: 1, said_hello: false })
    }

    /// Sends one message; the next message (or `None` when the connection
    /// ends or nothing comes within `within`).
    pub async fn try_request(&mut self, msg: Value, within: Duration) -> Option<Value> {
        self.send_raw(Message::text(msg.to_string())).await.ok()?;
        match self.next_event(within).await? {
            Event::Msg(m) => Some(m),
            Event::Closed(_) => None,
        }
    }

    /// Sends one message in this client's codec.
    pub async fn send(&mut self, msg: Value) {
        let frame = match self.codec {
            Codec::Json => Message::text(msg.to_string()),
            Codec::MsgPack => Message::binary(rmp_serde::to_vec_named(&msg).expect("encode MessagePack")),
        };
        self.ws.send(frame).await.expect("send a frame");
    }

    /// Sends a raw frame; returns the send error instead of failing (the server may close first).
    pub async fn send_raw(&mut self, frame: Message) -> Result<(), String> {
        self.ws.send(frame).await.map_err(|e| e.to_string())
    }

    /// The next message or close within `within`; `None` on timeout.
    pub async fn next_event(&mut self, within: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()?;
            let msg = match next {
                None | Some(Err(_)) => return Some(Event::Closed(None)),
                Some(Ok(m)) => m,
            };
            let value = match msg {
                Message::Text(t) => {
                    self.check_codec(Codec::Json);
                    serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("the server sent a text frame that is not JSON ({e}): {t}"))
                }
                Message::Binary(b) => {
                    self.check_codec(Codec::MsgPack);
                    rmp_serde::from_slice(&b)
                        .unwrap_or_else(|e| panic!("the server sent a binary frame that is not MessagePack: {e}"))
                }
                Message::Close(frame) => return Some(Event::Closed(frame.map(|f| u16::from(f.code)))),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            return Some(Event::Msg(value));
        }
    }

    fn check_codec(&self, got: Codec) {
        assert!(!self.said_hello || got == self.codec, "the server answered a {:?} client in {got:?}", self.codec);
    }

    /// The next message; fails the test on timeout or close.
    pub async fn recv(&mut self) -> Value {
        match self.next_event(RECV_TIMEOUT).await {
            Some(Event::Msg(v)) => v,
            Some(Event::Closed(code)) => panic!("the connection closed (code {code:?}) while a message was expected"),
            None => panic!("no message within {RECV_TIMEOUT:?}"),
        }
    }

    /// The next message of type `ty`, skipping others; an unexpected `error` fails the test.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        let mut skipped = Vec::new();
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(Event::Msg(v)) if v["type"] == ty => return v,
                Some(Event::Msg(v)) if v["type"] == "error" => panic!("waiting for `{ty}`, got an error: {v}"),
                Some(Event::Msg(v)) => skipped.push(v),
                Some(Event::Closed(code)) => panic!("closed (code {code:?}) while waiting for `{ty}`; got {skipped:?}"),
                None => panic!("no `{ty}` within {RECV_TIMEOUT:?}; got {skipped:?}"),
            }
        }
    }

    /// Fails the test if anything arrives within `ms` milliseconds.
    pub async fn expect_silence(&mut self, ms: u64) {
        if let Some(e) = self.next_event(Duration::from_millis(ms)).await {
            panic!("expected silence for {ms} ms, got {e:?}");
        }
    }

    /// Waits for the connection to close, skipping messages; returns the close code, if any.
    pub async fn expect_closed(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(Event::Msg(_)) => continue,
                Some(Event::Closed(code)) => return code,
                None => panic!("the connection did not close within {RECV_TIMEOUT:?}"),
            }
        }
    }

    /// Says hello with `token` and this client's id; returns the `welcome`.
    pub async fn hello(&mut self, token: &str) -> Value {
        self.hello_with(json!({"type": "hello", "protocol": 1, "token": token, "clientId": self.client_id})).await
    }

    /// Sends a hello message as given; returns the `welcome`.
    pub async fn hello_with(&mut self, hello: Value) -> Value {
        self.send(hello).await;
        let welcome = self.recv().await;
        assert_eq!(welcome["type"], "welcome", "hello was not welcomed: {welcome}");
        self.said_hello = true;
        welcome
    }

    /// Subscribes to `channel/anchor`; returns the `state`.
    pub async fn subscribe(&mut self, channel: &str, anchor: i64) -> Value {
        self.send(json!({"type": "subscribe", "channel": channel, "anchorId": anchor})).await;
        let mut state = self.recv().await;
        assert_eq!(state["type"], "state", "subscribe {channel}/{anchor}: {state}");
        assert_eq!(state["context"], format!("{channel}/{anchor}"));
        // A state over the frame limit comes in parts: gather them into one.
        let mut part = 0;
        while state["last"] == false {
            let next = self.recv().await;
            part += 1;
            assert_eq!(next["type"], "state", "part {part} of {channel}/{anchor}: {next}");
            assert_eq!(next["part"], part, "parts arrive in order: {next}");
            let more = next["instances"].as_array().cloned().unwrap_or_default();
            if let Some(rows) = state["instances"].as_array_mut() {
                rows.extend(more);
            }
            state["last"] = next["last"].clone();
        }
        state
    }

    /// `ping` → `pong`: the connection is alive and in order.
    pub async fn ping(&mut self) {
        self.send(json!({"type": "ping", "rid": "p"})).await;
        let pong = self.recv().await;
        assert_eq!(pong["type"], "pong", "ping was not answered with pong: {pong}");
    }

    /// A fresh writeId for this client.
    pub fn write_id(&mut self) -> i64 {
        let id = self.next_write_id;
        self.next_write_id += 1;
        id
    }

    /// Sends a write and reads up to its `writeResponse`; `None` when the
    /// connection closes or nothing answers within `within` (the server may
    /// be stopping).
    pub async fn try_write(&mut self, msg: Value, within: Duration) -> Option<Value> {
        let write_id = msg["writeId"].clone();
        self.send_raw(match self.codec {
            Codec::Json => Message::text(msg.to_string()),
            Codec::MsgPack => Message::binary(rmp_serde::to_vec_named(&msg).expect("encode MessagePack")),
        })
        .await
        .ok()?;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await? {
                Event::Msg(m) if m["type"] == "writeResponse" && m["writeId"] == write_id => return Some(m),
                Event::Msg(_) => continue,
                Event::Closed(_) => return None,
            }
        }
    }

    /// Sends a write (adding a fresh `writeId` if it has none) and reads up to
    /// its `writeResponse`, keeping what arrived before it.
    pub async fn write(&mut self, mut msg: Value) -> Written {
        if msg.get("writeId").is_none() {
            msg["writeId"] = json!(self.write_id());
        }
        let write_id = msg["writeId"].clone();
        self.send(msg).await;
        let mut before = Vec::new();
        loop {
            let m = self.recv().await;
            if m["type"] == "writeResponse" && m["writeId"] == write_id {
                return Written { before, response: m };
            }
            before.push(m);
        }
    }
}

/// A write's `writeResponse` and the messages that came before it.
#[derive(Debug)]
pub struct Written {
    pub before: Vec<Value>,
    pub response: Value,
}

impl Written {
    /// The response, asserting success.
    pub fn ok(&self) -> &Value {
        assert_eq!(self.response["success"], true, "the write failed: {}", self.response);
        &self.response
    }

    /// The response's error `(code, reason)`, asserting failure.
    pub fn refused(&self) -> (i64, String) {
        assert_eq!(self.response["success"], false, "the write should have failed: {}", self.response);
        error_of(&self.response)
    }

    /// The deltas that came before the response.
    pub fn deltas(&self) -> Vec<&Value> {
        self.before.iter().filter(|m| m["type"] == "delta").collect()
    }
}

/// `(code, reason)` of an `error` message or a failed `writeResponse`.
pub fn error_of(msg: &Value) -> (i64, String) {
    let e = if msg["type"] == "error" { msg } else { &msg["error"] };
    let code = e["code"].as_i64().unwrap_or_else(|| panic!("no error code in {msg}"));
    let reason = e["reason"].as_str().unwrap_or_else(|| panic!("no error reason in {msg}"));
    assert!(e["message"].is_string(), "an error carries a message: {msg}");
    (code, reason.to_owned())
}

/// The rows of a `state`, by `(type, id)`.
pub fn rows(state: &Value) -> BTreeMap<(String, i64), Value> {
    let instances = state["instances"].as_array().unwrap_or_else(|| panic!("no instances in {state}"));
    instances
        .iter()
        .map(|r| {
            let ty = r["_type"].as_str().unwrap_or_else(|| panic!("row without _type: {r}")).to_owned();
            let id = r["id"].as_i64().unwrap_or_else(|| panic!("row without id: {r}"));
            ((ty, id), r.clone())
        })
        .collect()
}

/// One row of a `state`, if present.
pub fn row(state: &Value, ty: &str, id: i64) -> Option<Value> {
    rows(state).remove(&(ty.to_owned(), id))
}

/// The changes of a `delta`.
pub fn changes(delta: &Value) -> Vec<Value> {
    delta["changes"].as_array().unwrap_or_else(|| panic!("no changes in {delta}")).clone()
}

/// A write as the JSON a client sends, without a `writeId` (the client adds a fresh one).
pub fn write_msg(w: Write) -> Value {
    let mut msg = serde_json::to_value(w.into_message()).expect("a write encodes");
    if let Some(o) = msg.as_object_mut() {
        o.remove("writeId");
    }
    msg
}

fn data_of(data: Value) -> Fields {
    data.as_object().cloned().unwrap_or_else(|| panic!("write data must be an object: {data}"))
}

/// A `save` of `ty#id` in context `ctx`.
pub fn save(ctx: &str, ty: &str, id: i64, data: Value) -> Value {
    write_msg(Write::save(ty, id).fields(data_of(data)).context(ctx))
}

/// A `create` of a Task under Job `job` (context `job/<job>`), with an optional instanceId.
pub fn create_task(job: i64, instance_id: Option<i64>, data: Value) -> Value {
    let w = Write::create("Task").under("Job", job, "tasks").fields(data_of(data)).context(format!("job/{job}"));
    write_msg(match instance_id {
        Some(id) => w.id(id),
        None => w,
    })
}

/// A `delete` of `ty#id` in context `ctx`.
pub fn delete(ctx: &str, ty: &str, id: i64) -> Value {
    write_msg(Write::delete(ty, id).context(ctx))
}

/// A `batch` write of `ops` in context `ctx`.
pub fn batch(ctx: &str, ops: Vec<Value>) -> Value {
    let ops: Vec<Value> = ops
        .into_iter()
        .map(|mut op| {
            if let Some(o) = op.as_object_mut() {
                o.remove("type");
                o.remove("context");
                o.remove("writeId");
            }
            op
        })
        .collect();
    json!({"type": "write", "operation": "batch", "ops": ops, "context": ctx})
}

/// Asserts that the context's rows are what they were: re-subscribes on a
/// fresh connection and compares the whole state.
pub async fn assert_unchanged(server: &TestServer, job: i64, before: &Value) {
    let (_c, now) = server.subscribed("alice", job).await;
    assert_eq!(rows(&now), rows(before), "the context changed");
    assert_eq!(now["seq"], before["seq"], "something was committed");
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    let a = h.finish();
    let b = std::collections::hash_map::RandomState::new().build_hasher().finish();
    (u128::from(a) << 64) | u128::from(b)
}
