//! The transport conformance suite: the cases every transport must pass.
//! A transport crate implements [`TransportHarness`] and expands
//! [`transport_conformance_tests!`](crate::transport_conformance_tests) in a
//! test file, which makes one `#[tokio::test]` per case:
//!
//! ```ignore
//! statecast_core::transport_conformance_tests!(MyHarness::default());
//! ```
//!
//! Cases use 127.0.0.1 with port 0, bounded counts and a timeout on every wait.

use crate::transport::{
    Connection, ConnectionHandler, Frame, FrameKind, Incoming, SendError, TransportError, close_code, memory_pair,
};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The frame limit the cases run with (small, so limit cases stay fast).
pub const FRAME_LIMIT: usize = 64 * 1024;

/// How long any single wait in a case may take before the case fails.
const WAIT: Duration = Duration::from_secs(20);

/// Queue sizes and the frame limit, the same on both ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuiteLimits {
    pub frame_limit: usize,
    /// Outbox capacity; harnesses use it for incoming queues too.
    pub outbox_capacity: usize,
}

impl Default for SuiteLimits {
    fn default() -> Self {
        Self { frame_limit: FRAME_LIMIT, outbox_capacity: 64 }
    }
}

/// A server started by a harness. Dropping it shuts the server down.
#[derive(Debug)]
pub struct RunningServer {
    /// What [`TransportHarness::connect`] takes to reach this server.
    pub url: String,
    /// Cancelling it stops the server from accepting.
    pub shutdown: CancellationToken,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// What a transport provides to run the suite: start a server, connect to it.
#[async_trait]
pub trait TransportHarness: Send + Sync {
    /// Starts a server on 127.0.0.1 (port 0) that hands every accepted
    /// connection to `handler`.
    async fn start(&self, limits: SuiteLimits, handler: Arc<dyn ConnectionHandler>) -> RunningServer;

    /// Connects a client to `url` with the same limits.
    async fn connect(&self, url: &str, limits: SuiteLimits) -> Result<Connection, TransportError>;

    /// Whether the transport enforces the frame limit (reports `TooLarge`
    /// up to twice the limit, closes with 1009 beyond). Cases about the
    /// limit are skipped when it does not.
    fn enforces_frame_limit(&self) -> bool {
        true
    }

    /// Whether the transport carries text frames. A binary-only transport
    /// (QUIC carries MessagePack only) runs every case with binary frames
    /// where the others mix text and binary.
    fn carries_text_frames(&self) -> bool {
        true
    }
}

/// A handler that passes the server's end of each connection to the case.
#[derive(Debug)]
pub struct Accepted {
    tx: mpsc::UnboundedSender<Connection>,
}

impl Accepted {
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<Connection>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Arc::new(Self { tx }), rx)
    }
}

impl ConnectionHandler for Accepted {
    fn handle(&self, conn: Connection) {
        // The case may be over already; the connection then just drops.
        let _ = self.tx.send(conn);
    }
}

/// A started memory server: its handler and its shutdown.
type MemoryServer = (Arc<dyn ConnectionHandler>, CancellationToken);

/// An in-memory harness over [`memory_pair`]: the reference the transports
/// are compared with. It has no frame limit.
#[derive(Default)]
pub struct MemoryHarness {
    servers: Mutex<HashMap<String, MemoryServer>>,
    next: AtomicU64,
}

impl std::fmt::Debug for MemoryHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryHarness").field("servers", &self.servers.lock().len()).finish()
    }
}

#[async_trait]
impl TransportHarness for MemoryHarness {
    async fn start(&self, _limits: SuiteLimits, handler: Arc<dyn ConnectionHandler>) -> RunningServer {
        let url = format!("memory://{}", self.next.fetch_add(1, Ordering::Relaxed));
        let shutdown = CancellationToken::new();
        self.servers.lock().insert(url.clone(), (handler, shutdown.clone()));
        RunningServer { url, shutdown }
    }

    async fn connect(&self, url: &str, limits: SuiteLimits) -> Result<Connection, TransportError> {
        let server = self.servers.lock().get(url).cloned();
        let Some((handler, shutdown)) = server.filter(|(_, shutdown)| !shutdown.is_cancelled()) else {
            return Err(TransportError::Address(format!("no memory server at {url}")));
        };
        drop(shutdown);
        let (server_end, client_end) = memory_pair(limits.outbox_capacity);
        handler.handle(server_end);
        Ok(client_end)
    }

    fn enforces_frame_limit(&self) -> bool {
        false
    }
}

// ---------------------------------------------------------------- helpers

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?}: {what}"),
    }
}

/// A server, a connected client, and the server's end of that connection.
struct Pair {
    server: RunningServer,
    accepted: mpsc::UnboundedReceiver<Connection>,
    client: Connection,
    remote: Connection,
}

async fn start<H: TransportHarness>(
    harness: &H,
    limits: SuiteLimits,
) -> (RunningServer, mpsc::UnboundedReceiver<Connection>) {
    let (handler, accepted) = Accepted::new();
    let server = harness.start(limits, handler).await;
    (server, accepted)
}

async fn connect_pair<H: TransportHarness>(
    harness: &H,
    server: &RunningServer,
    accepted: &mut mpsc::UnboundedReceiver<Connection>,
    limits: SuiteLimits,
) -> (Connection, Connection) {
    let client = within("connect", harness.connect(&server.url, limits)).await;
    let client = match client {
        Ok(client) => client,
        Err(err) => panic!("connect to {} failed: {err}", server.url),
    };
    let remote = within("server accepts", accepted.recv()).await;
    let Some(remote) = remote else { panic!("the server stopped accepting") };
    (client, remote)
}

async fn pair<H: TransportHarness>(harness: &H, limits: SuiteLimits) -> Pair {
    let (server, mut accepted) = start(harness, limits).await;
    let (client, remote) = connect_pair(harness, &server, &mut accepted, limits).await;
    Pair { server, accepted, client, remote }
}

async fn recv(conn: &mut Connection, what: &str) -> Option<Incoming> {
    within(what, conn.incoming.recv()).await
}

async fn recv_frame(conn: &mut Connection, what: &str) -> Frame {
    match recv(conn, what).await {
        Some(Incoming::Frame(frame)) => frame,
        other => panic!("{what}: expected a frame, got {other:?}"),
    }
}

async fn send(conn: &Connection, frame: Frame) {
    if let Err(err) = within("send", conn.outbox.send(frame)).await {
        panic!("send failed: {err}");
    }
}

/// Waits until the incoming queue ends, skipping frames still in flight.
async fn expect_end(conn: &mut Connection, what: &str) {
    within(what, async { while conn.incoming.recv().await.is_some() {} }).await;
}

/// Makes the frames of a case: text where the transport carries text, else
/// the same bytes as binary.
#[derive(Clone, Copy, Debug)]
struct Frames {
    text: bool,
}

impl Frames {
    fn of<H: TransportHarness>(harness: &H) -> Self {
        Self { text: harness.carries_text_frames() }
    }

    fn text(self, s: impl Into<String>) -> Frame {
        let frame = Frame::text(s);
        if self.text { frame } else { Frame::binary(frame.data) }
    }

    /// Frame `i` of a numbered sequence: even numbers text, odd numbers binary.
    fn numbered(self, i: u32) -> Frame {
        if i.is_multiple_of(2) {
            self.text(format!("frame {i}"))
        } else {
            Frame::binary(Bytes::from(i.to_be_bytes().to_vec()))
        }
    }

    fn sized(self, kind: FrameKind, size: usize) -> Frame {
        match kind {
            FrameKind::Text => self.text("t".repeat(size)),
            FrameKind::Binary => Frame::binary((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>()),
        }
    }
}

/// Echoes every frame back; a `TooLarge` is answered with a text frame
/// `too-large <size> <limit>`.
fn spawn_echo(mut conn: Connection) {
    tokio::spawn(async move {
        while let Some(item) = conn.incoming.recv().await {
            let reply = match item {
                Incoming::Frame(frame) => frame,
                Incoming::TooLarge { size, limit } => Frame::text(format!("too-large {size} {limit}")),
            };
            if conn.outbox.send(reply).await.is_err() {
                break;
            }
        }
    });
}

fn skip(case: &str) {
    tracing::warn!(case, "skipped: the transport does not enforce a frame limit");
}

// ---------------------------------------------------------------- cases

/// 1,000 numbered frames each way, text and binary interleaved, arrive in
/// order with their kinds.
pub async fn frames_arrive_in_order_both_ways<H: TransportHarness>(harness: &H) {
    let f = Frames::of(harness);
    const N: u32 = 1_000;
    let Pair { server: _server, accepted: _accepted, mut client, mut remote } =
        pair(harness, SuiteLimits::default()).await;
    let client_out = client.outbox.clone();
    let remote_out = remote.outbox.clone();
    let up = tokio::spawn(async move {
        for i in 0..N {
            client_out.send(f.numbered(i)).await.map_err(|e| format!("client send {i}: {e}"))?;
        }
        Ok::<(), String>(())
    });
    let down = tokio::spawn(async move {
        for i in 0..N {
            remote_out.send(f.numbered(i)).await.map_err(|e| format!("server send {i}: {e}"))?;
        }
        Ok::<(), String>(())
    });
    for i in 0..N {
        assert_eq!(recv_frame(&mut remote, "server receives").await, f.numbered(i), "server: frame {i}");
    }
    for i in 0..N {
        assert_eq!(recv_frame(&mut client, "client receives").await, f.numbered(i), "client: frame {i}");
    }
    for task in [up, down] {
        match within("senders finish", task).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => panic!("{err}"),
            Err(err) => panic!("sender task failed: {err}"),
        }
    }
}

/// A frame of exactly the limit passes both ways, text and binary.
pub async fn frame_at_the_limit_passes_both_ways<H: TransportHarness>(harness: &H) {
    let f = Frames::of(harness);
    let limits = SuiteLimits::default();
    let Pair { server: _server, accepted: _accepted, mut client, mut remote } = pair(harness, limits).await;
    for kind in [FrameKind::Text, FrameKind::Binary] {
        let frame = f.sized(kind, limits.frame_limit);
        send(&client, frame.clone()).await;
        assert_eq!(recv_frame(&mut remote, "server receives a frame at the limit").await, frame);
        send(&remote, frame.clone()).await;
        assert_eq!(recv_frame(&mut client, "client receives a frame at the limit").await, frame);
    }
}

/// A frame over the limit (up to twice it) is reported `TooLarge` on either
/// end, and the connection goes on working.
pub async fn oversize_frame_is_reported_too_large<H: TransportHarness>(harness: &H) {
    let f = Frames::of(harness);
    if !harness.enforces_frame_limit() {
        return skip("oversize_frame_is_reported_too_large");
    }
    let limits = SuiteLimits::default();
    let limit = limits.frame_limit;
    let Pair { server: _server, accepted: _accepted, mut client, mut remote } = pair(harness, limits).await;
    for (kind, size) in [(FrameKind::Binary, limit + 1), (FrameKind::Text, 2 * limit)] {
        send(&client, f.sized(kind, size)).await;
        assert_eq!(recv(&mut remote, "server gets TooLarge").await, Some(Incoming::TooLarge { size, limit }));
        send(&remote, f.sized(kind, size)).await;
        assert_eq!(recv(&mut client, "client gets TooLarge").await, Some(Incoming::TooLarge { size, limit }));
    }
    send(&client, f.text("still here")).await;
    assert_eq!(recv_frame(&mut remote, "server receives after TooLarge").await, f.text("still here"));
    send(&remote, Frame::binary(&b"and here"[..])).await;
    assert_eq!(recv_frame(&mut client, "client receives after TooLarge").await, Frame::binary(&b"and here"[..]));
}

/// A frame beyond twice the limit ends that connection (close 1009) on
/// either end; other connections to the same server are unaffected.
pub async fn frame_beyond_twice_the_limit_closes_the_connection<H: TransportHarness>(harness: &H) {
    let f = Frames::of(harness);
    if !harness.enforces_frame_limit() {
        return skip("frame_beyond_twice_the_limit_closes_the_connection");
    }
    let limits = SuiteLimits::default();
    let huge = 2 * limits.frame_limit + 1;
    let (server, mut accepted) = start(harness, limits).await;
    let (bystander, bystander_remote) = connect_pair(harness, &server, &mut accepted, limits).await;
    spawn_echo(bystander_remote);

    // Client to server.
    let (mut client, mut remote) = connect_pair(harness, &server, &mut accepted, limits).await;
    // The send itself may fail once the close raced ahead; the ends matter.
    let _ = within("send a huge frame", client.outbox.send(f.sized(FrameKind::Binary, huge))).await;
    expect_end(&mut remote, "server incoming ends after a huge frame").await;
    within("server outbox closes", remote.outbox.closed()).await;
    expect_end(&mut client, "client incoming ends after the 1009 close").await;
    within("client outbox closes", client.outbox.closed()).await;

    // Server to client.
    let (mut client, mut remote) = connect_pair(harness, &server, &mut accepted, limits).await;
    let _ = within("send a huge frame", remote.outbox.send(f.sized(FrameKind::Text, huge))).await;
    expect_end(&mut client, "client incoming ends after a huge frame").await;
    within("client outbox closes", client.outbox.closed()).await;
    expect_end(&mut remote, "server incoming ends after the 1009 close").await;

    let mut bystander = bystander;
    send(&bystander, f.text("unaffected")).await;
    assert_eq!(recv_frame(&mut bystander, "the other connection still echoes").await, f.text("unaffected"));
    assert_eq!(close_code::TOO_BIG, 1009);
}

/// A close from the server (code and reason) delivers the frames queued
/// before it, then ends the client's incoming and closes both outboxes.
pub async fn server_close_ends_the_client<H: TransportHarness>(harness: &H) {
    let f = Frames::of(harness);
    let Pair { server: _server, accepted: _accepted, mut client, remote } = pair(harness, SuiteLimits::default()).await;
    for i in 0..3 {
        send(&remote, f.numbered(i)).await;
    }
    remote.outbox.close(close_code::UNAUTHENTICATED, "token expired");
    assert!(remote.outbox.is_closed());
    assert_eq!(remote.outbox.try_send(Frame::text("late")), Err(SendError::Closed));
    for i in 0..3 {
        assert_eq!(recv_frame(&mut client, "frames sent before the close").await, f.numbered(i));
    }
    assert_eq!(recv(&mut client, "client incoming ends after the close").await, None);
    within("client outbox closes", client.outbox.closed()).await;
    assert_eq!(client.outbox.try_send(Frame::text("late")), Err(SendError::Closed));
}

/// A client that drops its connection ends the server's incoming and
/// closes the server's outbox.
pub async fn client_drop_ends_the_server_side<H: TransportHarness>(harness: &H) {
    let f = Frames::of(harness);
    let Pair { server: _server, accepted: _accepted, client, mut remote } = pair(harness, SuiteLimits::default()).await;
    send(&client, f.text("bye")).await;
    drop(client);
    assert_eq!(recv_frame(&mut remote, "the last frame arrives").await, f.text("bye"));
    assert_eq!(recv(&mut remote, "server incoming ends").await, None);
    within("server outbox closes", remote.outbox.closed()).await;
    assert!(remote.outbox.is_closed());
    assert_eq!(remote.outbox.try_send(Frame::text("late")), Err(SendError::Closed));
}

/// A client that closes its outbox (keeping the connection) ends both sides.
pub async fn client_close_ends_both_sides<H: TransportHarness>(harness: &H) {
    let Pair { server: _server, accepted: _accepted, mut client, mut remote } =
        pair(harness, SuiteLimits::default()).await;
    client.outbox.close(close_code::NORMAL, "done");
    assert_eq!(recv(&mut remote, "server incoming ends").await, None);
    within("server outbox closes", remote.outbox.closed()).await;
    assert_eq!(recv(&mut client, "client incoming ends").await, None);
}

/// 200 connections at once each get their own frames echoed.
pub async fn concurrent_connections_echo<H: TransportHarness>(harness: &H) {
    let f = Frames::of(harness);
    const CONNECTIONS: usize = 200;
    const FRAMES: usize = 10;
    let limits = SuiteLimits::default();
    let (server, mut accepted) = start(harness, limits).await;
    let acceptor = tokio::spawn(async move {
        while let Some(conn) = accepted.recv().await {
            spawn_echo(conn);
        }
    });
    let clients = (0..CONNECTIONS).map(|c| {
        let url = server.url.clone();
        async move {
            let mut conn = harness.connect(&url, limits).await.map_err(|e| format!("connect {c}: {e}"))?;
            for i in 0..FRAMES {
                let frame = if i.is_multiple_of(2) {
                    f.text(format!("{c}/{i}"))
                } else {
                    Frame::binary(format!("{c}/{i}").into_bytes())
                };
                conn.outbox.send(frame.clone()).await.map_err(|e| format!("send {c}/{i}: {e}"))?;
                match conn.incoming.recv().await {
                    Some(Incoming::Frame(echo)) if echo == frame => {}
                    other => return Err(format!("connection {c} frame {i}: got {other:?}")),
                }
            }
            Ok::<Connection, String>(conn)
        }
    });
    let results = within("200 connections echo", futures_util::future::join_all(clients)).await;
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failures.is_empty(), "{} of {CONNECTIONS} connections failed: {:?}", failures.len(), failures.first());
    drop(results);
    drop(server);
    acceptor.abort();
}

/// A client that never reads: the server pushing with `try_send` gets
/// `SendError::Full` within a bounded number of frames (everything between
/// the outbox and the reader is bounded), and nothing queued is lost.
pub async fn slow_consumer_fills_the_outbox<H: TransportHarness>(harness: &H) {
    let f = Frames::of(harness);
    const FRAME_SIZE: usize = 16 * 1024;
    // Generous room for socket buffers in the kernel on both ends.
    const BUFFER_BUDGET: usize = 64 << 20;
    let limits = SuiteLimits { frame_limit: FRAME_LIMIT, outbox_capacity: 16 };
    let max_frames = limits.outbox_capacity * 2 + BUFFER_BUDGET / FRAME_SIZE;
    let Pair { server: _server, accepted: _accepted, mut client, remote } = pair(harness, limits).await;

    let payload = |i: usize| {
        let mut data = vec![0u8; FRAME_SIZE];
        data[..8].copy_from_slice(&(i as u64).to_be_bytes());
        Frame::binary(data)
    };
    let mut pushed = 0usize;
    let full = within("push until full", async {
        loop {
            if pushed >= max_frames {
                return false;
            }
            match remote.outbox.try_send(payload(pushed)) {
                Ok(()) => pushed += 1,
                Err(SendError::Full) => return true,
                Err(SendError::Closed) => panic!("the connection closed after {pushed} frames"),
            }
            // Give the writer time to drain into the socket, as a real
            // engine between deliveries would.
            if pushed.is_multiple_of(8) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            } else {
                tokio::task::yield_now().await;
            }
        }
    })
    .await;
    assert!(full, "try_send never reported Full within {max_frames} frames: buffering is unbounded");
    assert!(pushed >= limits.outbox_capacity, "Full after only {pushed} frames, below the capacity");

    // The consumer wakes up: everything accepted arrives, in order.
    for i in 0..pushed {
        let frame = recv_frame(&mut client, "queued frames arrive").await;
        assert_eq!(frame.len(), FRAME_SIZE);
        assert_eq!(frame.data[..8], (i as u64).to_be_bytes(), "frame {i}");
    }
    send(&remote, f.text("after")).await;
    assert_eq!(recv_frame(&mut client, "the connection still works").await, f.text("after"));
}

/// Expands one `#[tokio::test]` per conformance case, each running with the
/// harness the expression builds (evaluated once per case).
#[macro_export]
macro_rules! transport_conformance_tests {
    ($harness:expr) => {
        $crate::transport_conformance_tests!(@cases $harness;
            frames_arrive_in_order_both_ways,
            frame_at_the_limit_passes_both_ways,
            oversize_frame_is_reported_too_large,
            frame_beyond_twice_the_limit_closes_the_connection,
            server_close_ends_the_client,
            client_drop_ends_the_server_side,
            client_close_ends_both_sides,
            concurrent_connections_echo,
            slow_consumer_fills_the_outbox,
        );
    };
    (@cases $harness:expr; $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $harness;
                $crate::testkit::transport_suite::$case(&harness).await;
            }
        )+
    };
}

#[cfg(test)]
mod memory {
    crate::transport_conformance_tests!(super::MemoryHarness::default());
}
