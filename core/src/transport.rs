//! Transports move whole frames: a connection is a stream of incoming frames
//! and a bounded outbox of outgoing ones, plus a way to close it with a reason.
//! The same types serve both ends (server connections and client connects).

use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// Whether a frame is text (JSON) or binary (MessagePack).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    Text,
    Binary,
}

/// One whole message. Text frames hold UTF-8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub data: Bytes,
}

impl Frame {
    pub fn text(s: impl Into<String>) -> Self {
        Self { kind: FrameKind::Text, data: Bytes::from(s.into()) }
    }
    pub fn binary(b: impl Into<Bytes>) -> Self {
        Self { kind: FrameKind::Binary, data: b.into() }
    }
    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// What a connection's reader reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    Frame(Frame),
    /// A frame over the limit arrived and was discarded (the peer is told 413).
    TooLarge {
        size: usize,
        limit: usize,
    },
}

/// Close codes (WebSocket numbering; QUIC maps them to application codes).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const SLOW_CONSUMER: u16 = 4008;
    pub const UNAUTHENTICATED: u16 = 4001;
}

/// Why a connection was closed by this side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: String,
}

#[derive(Debug, Default)]
struct CloseSignal {
    /// Set once the connection is closing (mirrors `token`, which takes a
    /// mutex to read: this is what the hot send path checks).
    closed: std::sync::atomic::AtomicBool,
    reason: parking_lot::Mutex<Option<CloseReason>>,
    /// Close without sending what is queued (a slow consumer would never drain it).
    abort: std::sync::atomic::AtomicBool,
    notify: Notify,
    token: CancellationToken,
}

impl CloseSignal {
    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    fn mark_closed(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        self.token.cancel();
    }
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the peer is not keeping up: its outgoing queue is full")]
    Full,
    #[error("the connection is closed")]
    Closed,
}

/// The sending half of a connection: a bounded queue of frames.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Frame>,
    close: Arc<CloseSignal>,
}

impl Outbox {
    /// Queues a frame without waiting; a full queue is an error (slow consumer).
    pub fn try_send(&self, frame: Frame) -> Result<(), SendError> {
        if self.close.is_closed() {
            return Err(SendError::Closed);
        }
        self.tx.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Closed,
        })
    }

    /// Queues a frame, waiting for room (client side, where waiting is right).
    pub async fn send(&self, frame: Frame) -> Result<(), SendError> {
        if self.close.is_closed() {
            return Err(SendError::Closed);
        }
        self.tx.send(frame).await.map_err(|_| SendError::Closed)
    }

    /// Closes the connection: frames already queued are sent, then the close.
    pub fn close(&self, code: u16, reason: &str) {
        let mut slot = self.close.reason.lock();
        if slot.is_none() {
            *slot = Some(CloseReason { code, reason: reason.to_owned() });
        }
        drop(slot);
        self.close.mark_closed();
        self.close.notify.notify_waiters();
    }

    /// Closes at once, dropping queued frames: for a peer that is not reading.
    pub fn abort(&self, code: u16, reason: &str) {
        self.close.abort.store(true, std::sync::atomic::Ordering::SeqCst);
        self.close(code, reason);
    }

    /// True once [`close`](Self::close) was called or the transport ended.
    pub fn is_closed(&self) -> bool {
        self.close.is_closed() || self.tx.is_closed()
    }

    /// Resolves when the connection is closed by either side.
    pub async fn closed(&self) {
        tokio::select! {
            _ = self.close.token.cancelled() => {}
            _ = self.tx.closed() => {}
        }
    }
}

/// What the transport's writer takes from an outbox.
#[derive(Debug, PartialEq, Eq)]
pub enum Outgoing {
    Frame(Frame),
    Close(CloseReason),
}

/// The transport's end of an outbox.
#[derive(Debug)]
pub struct OutboxReceiver {
    rx: mpsc::Receiver<Frame>,
    close: Arc<CloseSignal>,
}

impl OutboxReceiver {
    /// The next frame to write, or the close (after every queued frame was
    /// taken). `None` when every `Outbox` is gone.
    pub async fn next(&mut self) -> Option<Outgoing> {
        if self.close.abort.load(std::sync::atomic::Ordering::SeqCst) {
            let reason = self.close.reason.lock().clone();
            return reason.map(Outgoing::Close);
        }
        if let Ok(frame) = self.rx.try_recv() {
            return Some(Outgoing::Frame(frame));
        }
        tokio::select! {
            biased;
            frame = self.rx.recv() => match frame {
                Some(f) => Some(Outgoing::Frame(f)),
                None => self.close.reason.lock().clone().map(Outgoing::Close),
            },
            _ = self.close.token.cancelled() => {
                if let Ok(frame) = self.rx.try_recv() {
                    return Some(Outgoing::Frame(frame));
                }
                let reason = self.close.reason.lock().clone();
                Some(Outgoing::Close(reason.unwrap_or(CloseReason { code: close_code::NORMAL, reason: String::new() })))
            }
        }
    }

    /// The next queued frame if one is ready now, without waiting: `None`
    /// when the queue is empty or the connection was aborted. Lets a writer
    /// batch every ready frame into one flush; the close itself still comes
    /// from [`next`](Self::next).
    pub fn try_next_frame(&mut self) -> Option<Frame> {
        if self.is_aborted() {
            return None;
        }
        self.rx.try_recv().ok()
    }

    /// Resolves once the owner asked to close or abort (queued frames may
    /// still be waiting). Lets a writer blocked on a slow peer notice an
    /// [`Outbox::abort`] without taking frames from the queue.
    pub async fn close_requested(&self) {
        self.close.token.cancelled().await;
    }

    /// True once the owner asked to close at once, dropping queued frames.
    pub fn is_aborted(&self) -> bool {
        self.close.abort.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Marks the connection closed from the transport's side (the peer left).
    pub fn mark_closed(&self) {
        self.close.mark_closed();
    }
}

/// Makes a bounded outbox of `capacity` frames.
pub fn outbox(capacity: usize) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let close = Arc::new(CloseSignal::default());
    (Outbox { tx, close: close.clone() }, OutboxReceiver { rx, close })
}

/// Facts about a connection, for logs.
#[derive(Clone, Debug, Default)]
pub struct ConnectionInfo {
    pub transport: &'static str,
    pub peer: String,
}

/// One connection as the engine (or a client) sees it.
#[derive(Debug)]
pub struct Connection {
    pub info: ConnectionInfo,
    /// Frames from the peer in order; ends when the peer is gone.
    pub incoming: mpsc::Receiver<Incoming>,
    pub outbox: Outbox,
}

/// Receives accepted connections (the engine implements it).
pub trait ConnectionHandler: Send + Sync + 'static {
    fn handle(&self, conn: Connection);
}

/// Transport-level failures.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(String),
    #[error("invalid address or URL: {0}")]
    Address(String),
}

/// A server-side transport: accepts connections and hands them to the engine
/// until `shutdown` is cancelled.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// A short name for logs (`"ws"`, `"quic"`).
    fn name(&self) -> &'static str;
    /// The address it listens on.
    fn local_addr(&self) -> std::net::SocketAddr;
    /// Serves until `shutdown` is cancelled.
    async fn serve(
        self: Box<Self>,
        handler: Arc<dyn ConnectionHandler>,
        shutdown: CancellationToken,
    ) -> Result<(), TransportError>;
}

/// Builds the two ends of an in-memory connection with the given queue sizes.
/// Returns (the engine's end, the client's end).
///
/// Like a socket, the connection ends as a whole: when either side closes its
/// outbox or drops its `Connection`, both incoming queues end (after the
/// frames already sent) and both outboxes report closed.
pub fn memory_pair(capacity: usize) -> (Connection, Connection) {
    let (a_out, a_rx) = outbox(capacity);
    let (b_out, b_rx) = outbox(capacity);
    let (a_in_tx, a_in) = mpsc::channel(capacity.max(1));
    let (b_in_tx, b_in) = mpsc::channel(capacity.max(1));
    let ended = CancellationToken::new();
    // Pump each outbox into the other side's incoming queue.
    tokio::spawn(pump(a_rx, b_in_tx, ended.clone()));
    tokio::spawn(pump(b_rx, a_in_tx, ended));
    let info = ConnectionInfo { transport: "memory", peer: "memory".into() };
    (
        Connection { info: info.clone(), incoming: a_in, outbox: a_out },
        Connection { info, incoming: b_in, outbox: b_out },
    )
}

/// Moves one direction of a memory connection. Its own side ending (a close,
/// or every `Outbox` dropped) delivers what was queued and then ends the
/// whole connection; the other side ending stops it at once.
async fn pump(mut rx: OutboxReceiver, tx: mpsc::Sender<Incoming>, ended: CancellationToken) {
    loop {
        let next = tokio::select! {
            next = rx.next() => next,
            // The peer dropped its incoming queue: nothing can be delivered.
            () = tx.closed() => break,
            () = ended.cancelled() => break,
        };
        let Some(Outgoing::Frame(frame)) = next else {
            ended.cancel();
            break;
        };
        let sent = tokio::select! {
            sent = tx.send(Incoming::Frame(frame)) => sent.is_ok(),
            () = ended.cancelled() => false,
        };
        if !sent {
            break;
        }
    }
    rx.mark_closed();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_writer_sees_an_abort_without_taking_frames() {
        let (out, rx) = outbox(4);
        out.try_send(Frame::text("queued")).expect("room");
        assert!(!rx.is_aborted());
        out.abort(close_code::SLOW_CONSUMER, "SLOW_CONSUMER");
        tokio::time::timeout(std::time::Duration::from_secs(1), rx.close_requested()).await.expect("requested");
        assert!(rx.is_aborted());
    }

    #[tokio::test]
    async fn a_close_is_requested_but_not_an_abort() {
        let (out, mut rx) = outbox(4);
        out.try_send(Frame::text("queued")).expect("room");
        out.close(close_code::NORMAL, "bye");
        rx.close_requested().await;
        assert!(!rx.is_aborted());
        assert_eq!(rx.next().await, Some(Outgoing::Frame(Frame::text("queued"))));
        assert_eq!(
            rx.next().await,
            Some(Outgoing::Close(CloseReason { code: close_code::NORMAL, reason: "bye".into() }))
        );
    }
}
