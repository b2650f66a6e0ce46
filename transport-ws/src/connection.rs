//! The per-connection driver both ends share: a reader task that turns
//! WebSocket messages into `Incoming`, and a writer loop that drains the
//! outbox, pings the peer and runs the close handshake.

use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use statecast_transport::{
    CloseReason, Connection, ConnectionInfo, Frame, Incoming, OutboxReceiver, Outgoing, close_code, outbox_with,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use crate::config::{ConnSettings, WRITE_BATCH};

/// A WebSocket message as the driver sees it.
pub(crate) enum Wire {
    Data(Frame),
    Close,
    /// Pings (answered by tungstenite itself), pongs and raw frames.
    Control,
}

/// The two WebSocket message types (axum's and tungstenite's) behind one face.
pub(crate) trait WireMessage: Send + Sized + 'static {
    fn into_wire(self) -> Wire;
    /// `None` when a text frame does not hold UTF-8.
    fn from_frame(frame: Frame) -> Option<Self>;
    fn ping() -> Self;
    fn close(code: u16, reason: String) -> Self;
}

/// The two WebSocket error types behind one face.
pub(crate) trait WireError: std::fmt::Display + Send + 'static {
    /// True when the peer's message or frame exceeded the configured maximum.
    fn is_too_large(&self) -> bool;
    /// True when the peer broke the WebSocket protocol (a bad frame, bad UTF-8
    /// in a text frame): answered with close code 1002 before the socket ends.
    fn is_protocol_violation(&self) -> bool;
}

/// Builds the [`Connection`] for a socket and the future that drives it.
/// The future ends when the connection is closed and must be run (spawned)
/// by the caller.
pub(crate) fn open<S, M, E>(
    socket: S,
    info: ConnectionInfo,
    settings: ConnSettings,
) -> (Connection, impl Future<Output = ()> + Send + 'static)
where
    S: Stream<Item = Result<M, E>> + Sink<M, Error = E> + Send + 'static,
    M: WireMessage,
    E: WireError,
{
    let (outbox, outbox_rx) = outbox_with(settings.outbox);
    let (incoming_tx, incoming) = mpsc::channel(settings.incoming_capacity);
    let conn = Connection { info: info.clone(), incoming, outbox };
    (conn, drive(socket, incoming_tx, outbox_rx, info, settings))
}

/// State the reader and the writer share.
struct Shared {
    start: Instant,
    /// Milliseconds since `start` when the peer last sent anything.
    last_seen_ms: AtomicU64,
    /// The reader waits for room in the incoming queue: the engine is slow,
    /// not the peer, so the idle timeout does not apply.
    reader_blocked: AtomicBool,
    /// The peer sent a close frame.
    peer_closed: CancellationToken,
}

impl Shared {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_seen_ms: AtomicU64::new(0),
            reader_blocked: AtomicBool::new(false),
            peer_closed: CancellationToken::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_seen_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn is_idle(&self, idle_timeout: Duration) -> bool {
        if self.reader_blocked.load(Ordering::Relaxed) {
            return false;
        }
        let quiet = self.now_ms().saturating_sub(self.last_seen_ms.load(Ordering::Relaxed));
        u128::from(quiet) > idle_timeout.as_millis()
    }
}

/// How the reader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadEnd {
    /// The socket ended or failed.
    Gone,
    /// The peer sent a close frame (and the handshake ran to its end).
    PeerClosed,
    /// A message beyond twice the frame limit: the stream cannot go on.
    TooLarge,
    /// The peer broke the WebSocket protocol.
    ProtocolViolation,
}

/// How the writer loop ended.
enum WriteEnd {
    Reader(ReadEnd),
    PeerClosing,
    SentClose,
    Failed,
}

async fn drive<S, M, E>(
    socket: S,
    incoming: mpsc::Sender<Incoming>,
    mut outbox_rx: OutboxReceiver,
    info: ConnectionInfo,
    settings: ConnSettings,
) where
    S: Stream<Item = Result<M, E>> + Sink<M, Error = E> + Send + 'static,
    M: WireMessage,
    E: WireError,
{
    let (mut sink, stream) = socket.split();
    let shared = Arc::new(Shared::new());
    let mut reader = tokio::spawn(read_loop(stream, incoming, settings.frame_limit, shared.clone()));
    let end = write_loop(&mut sink, &mut outbox_rx, &mut reader, &shared, &settings).await;
    // From here on nothing more is written: senders see a closed outbox.
    outbox_rx.mark_closed();
    drop(outbox_rx);
    match end {
        WriteEnd::Reader(ReadEnd::TooLarge) => {
            let limit = settings.wire_limit();
            tracing::debug!(peer = %info.peer, limit, "closing: frame beyond the hard limit");
            let close = M::close(close_code::TOO_BIG, format!("frame larger than {limit} bytes"));
            send_within(&mut sink, close, settings.close_timeout).await;
        }
        WriteEnd::Reader(ReadEnd::ProtocolViolation) => {
            let close = M::close(close_code::PROTOCOL_ERROR, "websocket protocol violation".to_owned());
            send_within(&mut sink, close, settings.close_timeout).await;
        }
        WriteEnd::Reader(_) | WriteEnd::Failed => {}
        WriteEnd::PeerClosing | WriteEnd::SentClose => {
            // Let the reader finish the close handshake (it flushes our reply
            // or reads the peer's).
            if timeout(settings.close_timeout, &mut reader).await.is_err() {
                tracing::debug!(peer = %info.peer, "close handshake timed out");
            }
        }
    }
    reader.abort();
    tracing::debug!(peer = %info.peer, transport = info.transport, "connection ended");
}

async fn write_loop<K, M>(
    sink: &mut K,
    outbox_rx: &mut OutboxReceiver,
    reader: &mut JoinHandle<ReadEnd>,
    shared: &Shared,
    settings: &ConnSettings,
) -> WriteEnd
where
    K: Sink<M> + Unpin,
    M: WireMessage,
{
    let mut ping = settings.ping_interval.map(|every| {
        let mut ping = tokio::time::interval_at(Instant::now() + every, every);
        // After a long write, one ping is enough: no burst of missed ticks.
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping
    });
    // A write that cannot finish within the idle timeout means the peer stopped reading.
    let write_timeout = settings.idle_timeout;
    // Reused for every batch of ready frames.
    let mut batch: Vec<M> = Vec::new();
    // Made once: a future per turn of the loop registers and drops a waiter
    // each time, and the loop turns once per delivery.
    let peer_closed = shared.peer_closed.cancelled();
    tokio::pin!(peer_closed);
    loop {
        let tick = async {
            match ping.as_mut() {
                Some(ping) => ping.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            end = &mut *reader => return WriteEnd::Reader(end.unwrap_or(ReadEnd::Gone)),
            _ = &mut peer_closed => return WriteEnd::PeerClosing,
            _ = tick => {
                if shared.is_idle(settings.idle_timeout) {
                    tracing::debug!("dropping a peer that stopped answering pings");
                    return WriteEnd::Failed;
                }
                if !send_within(sink, M::ping(), write_timeout).await {
                    return WriteEnd::Failed;
                }
            }
            out = outbox_rx.next() => match out {
                Some(Outgoing::Frame(frame)) => {
                    // Every frame ready now goes out with this one: one flush
                    // (about one socket write per write buffer) for the batch.
                    batch.extend(to_message::<M>(frame, settings.frame_limit));
                    for _ in 1..WRITE_BATCH {
                        let Some(more) = outbox_rx.try_next_frame() else { break };
                        batch.extend(to_message::<M>(more, settings.frame_limit));
                    }
                    if batch.is_empty() {
                        continue;
                    }
                    // A slow consumer aborted meanwhile: stop writing to it now,
                    // not when the write times out.
                    let sent = tokio::select! {
                        sent = send_batch_within(sink, &mut batch, write_timeout) => sent,
                        () = outbox_rx.aborted() => false,
                    };
                    batch.clear();
                    if !sent {
                        if outbox_rx.is_aborted() {
                            return abort_close(sink, outbox_rx).await;
                        }
                        return WriteEnd::Failed;
                    }
                }
                Some(Outgoing::Close(_)) if outbox_rx.is_aborted() => return abort_close(sink, outbox_rx).await,
                Some(Outgoing::Close(reason)) => {
                    send_within(sink, M::close(reason.code, reason.reason), settings.close_timeout).await;
                    return WriteEnd::SentClose;
                }
                None => {
                    // Every outbox handle is gone: the owner left without a word.
                    let close = M::close(close_code::NORMAL, String::new());
                    send_within(sink, close, settings.close_timeout).await;
                    return WriteEnd::SentClose;
                }
            },
        }
    }
}

/// How long an aborted connection's close frame may take: the peer is not
/// reading, so it rarely goes at all, and the socket closes right after.
const ABORT_CLOSE_WAIT: Duration = Duration::from_millis(200);

/// Ends an aborted connection (a slow consumer): the close frame if the socket
/// takes it at once, then no close handshake, so the socket closes now.
async fn abort_close<K, M>(sink: &mut K, outbox_rx: &OutboxReceiver) -> WriteEnd
where
    K: Sink<M> + Unpin,
    M: WireMessage,
{
    let reason =
        outbox_rx.close_reason().unwrap_or(CloseReason { code: close_code::SLOW_CONSUMER, reason: String::new() });
    send_within(sink, M::close(reason.code, reason.reason), ABORT_CLOSE_WAIT).await;
    WriteEnd::Failed
}

/// An outgoing frame as a message (`None`, logged, for a text frame that is not UTF-8).
fn to_message<M: WireMessage>(frame: Frame, limit: usize) -> Option<M> {
    if frame.len() > limit {
        tracing::warn!(size = frame.len(), limit, "sending a frame over the frame limit");
    }
    let message = M::from_frame(frame);
    if message.is_none() {
        tracing::error!("dropping an outgoing text frame that is not UTF-8");
    }
    message
}

/// Queues every message of a batch and flushes once; false when it failed or
/// the whole batch took longer than `limit`.
async fn send_batch_within<K, M>(sink: &mut K, batch: &mut Vec<M>, limit: Duration) -> bool
where
    K: Sink<M> + Unpin,
{
    let send = async {
        for message in batch.drain(..) {
            sink.feed(message).await?;
        }
        sink.flush().await
    };
    within(send, limit).await
}

/// Runs a socket write, failing it after `limit`. The timer (a clock read and
/// a timer entry) is only set up when the write does not finish at once, as
/// most do while the socket has room.
async fn within<F, E>(send: F, limit: Duration) -> bool
where
    F: Future<Output = Result<(), E>>,
{
    let mut send = std::pin::pin!(send);
    if let Some(done) = (&mut send).now_or_never() {
        return done.is_ok();
    }
    matches!(timeout(limit, send).await, Ok(Ok(())))
}

/// Sends one message; false when it failed or took longer than `limit`.
async fn send_within<K, M>(sink: &mut K, message: M, limit: Duration) -> bool
where
    K: Sink<M> + Unpin,
{
    within(sink.send(message), limit).await
}

async fn read_loop<St, M, E>(
    mut stream: St,
    incoming: mpsc::Sender<Incoming>,
    limit: usize,
    shared: Arc<Shared>,
) -> ReadEnd
where
    St: Stream<Item = Result<M, E>> + Unpin,
    M: WireMessage,
    E: WireError,
{
    // `None` once the engine dropped its receiver: frames are then discarded,
    // but reading goes on so pings and the close handshake still work.
    let mut incoming = Some(incoming);
    while let Some(item) = stream.next().await {
        shared.touch();
        let message = match item {
            Ok(message) => message,
            Err(err) if err.is_too_large() => return ReadEnd::TooLarge,
            Err(err) if err.is_protocol_violation() => {
                tracing::debug!(error = %err, "the peer broke the websocket protocol");
                return ReadEnd::ProtocolViolation;
            }
            Err(err) => {
                tracing::debug!(error = %err, "websocket read failed");
                return ReadEnd::Gone;
            }
        };
        match message.into_wire() {
            Wire::Data(frame) => {
                let Some(tx) = incoming.as_ref() else {
                    continue;
                };
                let item = if frame.len() > limit {
                    Incoming::TooLarge { size: frame.len(), limit }
                } else {
                    Incoming::Frame(frame)
                };
                shared.reader_blocked.store(true, Ordering::Relaxed);
                if tx.send(item).await.is_err() {
                    incoming = None;
                }
                shared.reader_blocked.store(false, Ordering::Relaxed);
                shared.touch();
            }
            Wire::Close => {
                shared.peer_closed.cancel();
                drop(incoming.take());
                // Keep reading: tungstenite flushes its close reply on the next
                // read and ends the stream once the handshake is complete.
                while stream.next().await.is_some() {}
                return ReadEnd::PeerClosed;
            }
            Wire::Control => {}
        }
    }
    ReadEnd::Gone
}

/// Cuts a close reason to the 123 bytes a close frame can carry.
pub(crate) fn close_reason_text(mut reason: String) -> String {
    const MAX: usize = 123;
    if reason.len() > MAX {
        let mut end = MAX;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reason_is_cut_at_a_char_boundary() {
        let long = "é".repeat(100);
        let cut = close_reason_text(long);
        assert!(cut.len() <= 123);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(close_reason_text("bye".into()), "bye");
    }

    #[test]
    fn idle_is_suspended_while_the_reader_waits_for_the_engine() {
        let shared = Shared::new();
        shared.last_seen_ms.store(0, Ordering::Relaxed);
        let far = Duration::from_millis(0);
        std::thread::sleep(Duration::from_millis(5));
        assert!(shared.is_idle(far));
        shared.reader_blocked.store(true, Ordering::Relaxed);
        assert!(!shared.is_idle(far));
    }
}
