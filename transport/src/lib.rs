//! Statecast's transport seam: transports move whole frames. A connection is a
//! stream of incoming frames and a bounded outbox of outgoing ones, plus a way
//! to close it with a reason. The same types serve both ends (server
//! connections and client connects); the [`Transport`] trait is the server's.

use async_trait::async_trait;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Poll, Waker};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

pub use statecast_protocol::frame::{Frame, FrameKind};

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
    pub const PROTOCOL_ERROR: u16 = 1002;
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

/// How much an outbox may hold before its peer counts as a slow consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Frames that may wait.
    pub frames: usize,
    /// Bytes that may wait. A message in several parts (a large `state`) is
    /// admitted whole when the queue is within this bound as it starts, so a
    /// connection holds at most this plus one message.
    pub bytes: usize,
}

/// The default byte bound of an outbox: 8 MiB.
pub const DEFAULT_OUTBOX_BYTES: usize = 8 << 20;

impl OutboxLimits {
    /// `frames` frames and the default byte bound.
    pub fn frames(frames: usize) -> Self {
        Self { frames: frames.max(1), bytes: DEFAULT_OUTBOX_BYTES }
    }
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
        self.closed.load(Ordering::Acquire)
    }

    fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
        self.token.cancel();
    }
}

/// What is queued in an outbox, counted by both ends.
#[derive(Debug)]
struct Queued {
    limits: OutboxLimits,
    /// Frames (the high bits, from [`FRAMES_SHIFT`]) and bytes (the low bits)
    /// in one word: both ends change it for every frame, and on two cores
    /// each change of a word the other core wrote last is costly.
    queued: AtomicU64,
    /// Wakes a sender waiting for room (client side).
    room: Notify,
    /// Senders waiting for room: taking a frame wakes them only when there
    /// are some (a wake takes a lock; the server's senders never wait).
    waiting: AtomicUsize,
}

/// What goes through an outbox's queue: frames, then (once) the close, so a
/// writer waiting for the next frame wakes for the close too.
#[derive(Debug)]
enum Item {
    Frame(Frame),
    Close,
}

/// The queue between an outbox's senders and its writer. A sender pushes
/// under a short lock and wakes the writer only when it is parked; the writer
/// takes everything ready in one swap. (A channel costs a push, a count and a
/// wake per frame, on a word both cores write: at a fan-out of a thousand
/// connections that was a fifth of the server's time.)
#[derive(Debug, Default)]
struct Queue {
    state: parking_lot::Mutex<QueueState>,
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Item>,
    /// The writer, parked until an item comes or the last sender goes.
    parked: Option<Waker>,
    /// Live [`Outbox`] handles.
    senders: usize,
    /// The writer's end was dropped: nothing is taken any more.
    receiver_gone: bool,
}

/// A parked writer's capacity above which its emptied buffer is given back
/// (a burst to one connection must not pin its memory for the connection's life).
const KEPT_BUFFER: usize = 256;

impl Queue {
    /// Pushes `items` in order, all or none; false once the writer is gone.
    fn push(&self, items: impl IntoIterator<Item = Item>) -> bool {
        let mut state = self.state.lock();
        if state.receiver_gone {
            return false;
        }
        state.items.extend(items);
        let parked = state.parked.take();
        drop(state);
        if let Some(writer) = parked {
            writer.wake();
        }
        true
    }

    fn sender_joined(&self) {
        self.state.lock().senders += 1;
    }

    fn sender_left(&self) {
        let mut state = self.state.lock();
        state.senders -= 1;
        let parked = if state.senders == 0 { state.parked.take() } else { None };
        drop(state);
        if let Some(writer) = parked {
            writer.wake();
        }
    }

    /// Moves everything queued into `ready` (which is empty); parks `waker`
    /// when nothing is. `None`: nothing is queued and no sender is left.
    fn take_all(&self, ready: &mut VecDeque<Item>, waker: Option<&Waker>) -> Option<()> {
        let mut state = self.state.lock();
        if state.items.is_empty() {
            if state.senders == 0 {
                return None;
            }
            if let Some(waker) = waker {
                match &state.parked {
                    Some(parked) if parked.will_wake(waker) => {}
                    _ => state.parked = Some(waker.clone()),
                }
            }
            return Some(());
        }
        std::mem::swap(&mut state.items, ready);
        Some(())
    }

    /// The writer's end is gone: what is queued is dropped, and later pushes fail.
    fn close_receiver(&self) -> VecDeque<Item> {
        let mut state = self.state.lock();
        state.receiver_gone = true;
        state.parked = None;
        std::mem::take(&mut state.items)
    }
}

impl Queued {
    /// Counts `frames` in when the bounds allow them (see [`OutboxLimits`]).
    fn admit(&self, frames: &[Frame]) -> bool {
        let size: usize = frames.iter().map(Frame::len).sum();
        let (queued_frames, queued_bytes) = unpack(self.queued.load(Ordering::Acquire));
        let fits_bytes = queued_bytes == 0 || queued_bytes.saturating_add(size) <= self.limits.bytes;
        // A message in parts starts only while the queue is within its bound.
        let fits_parts = frames.len() > 1 && queued_bytes <= self.limits.bytes;
        let fits_frames = queued_frames == 0 || queued_frames + frames.len() <= self.limits.frames;
        if !(fits_bytes || fits_parts) || !fits_frames {
            return false;
        }
        self.queued.fetch_add(pack(frames.len(), size), Ordering::SeqCst);
        true
    }

    fn taken(&self, frame: &Frame) {
        self.queued.fetch_sub(pack(1, frame.len()), Ordering::SeqCst);
        // A sender counts itself in before it checks for room (see `Outbox::send`):
        // one that finds no room after these decrements is counted here.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.room.notify_waiters();
        }
    }
}

/// Where the frame count starts in [`Queued::queued`]: bytes get 40 bits
/// (a terabyte), frames 24 (16 million), far above any bound an outbox has.
const FRAMES_SHIFT: u32 = 40;

fn pack(frames: usize, bytes: usize) -> u64 {
    ((frames as u64) << FRAMES_SHIFT) + bytes as u64
}

fn unpack(word: u64) -> (usize, usize) {
    ((word >> FRAMES_SHIFT) as usize, (word & ((1 << FRAMES_SHIFT) - 1)) as usize)
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the peer is not keeping up: its outgoing queue is full")]
    Full,
    #[error("the connection is closed")]
    Closed,
}

/// The sending half of a connection: a queue of frames bounded in frames and
/// in bytes ([`OutboxLimits`]).
#[derive(Debug)]
pub struct Outbox {
    queue: Arc<Queue>,
    queued: Arc<Queued>,
    close: Arc<CloseSignal>,
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.queue.sender_joined();
        Self { queue: self.queue.clone(), queued: self.queued.clone(), close: self.close.clone() }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.queue.sender_left();
    }
}

impl Outbox {
    /// Queues a frame without waiting; a full queue is an error (slow consumer).
    pub fn try_send(&self, frame: Frame) -> Result<(), SendError> {
        self.try_send_all(std::slice::from_ref(&frame))
    }

    /// Queues the parts of one message without waiting, all or none; a full
    /// queue is an error (slow consumer).
    pub fn try_send_all(&self, frames: &[Frame]) -> Result<(), SendError> {
        // The queue's own closed state is left to `send` below: reading it
        // here would touch a word the writer changes with every frame.
        if self.close.is_closed() {
            return Err(SendError::Closed);
        }
        if !self.queued.admit(frames) {
            return Err(SendError::Full);
        }
        if !self.queue.push(frames.iter().map(|f| Item::Frame(f.clone()))) {
            // Never taken: uncount them (the writer is gone, nobody waits).
            let size: usize = frames.iter().map(Frame::len).sum();
            self.queued.queued.fetch_sub(pack(frames.len(), size), Ordering::SeqCst);
            return Err(SendError::Closed);
        }
        Ok(())
    }

    /// Queues a frame, waiting for room (client side, where waiting is right).
    pub async fn send(&self, frame: Frame) -> Result<(), SendError> {
        match self.try_send_all(std::slice::from_ref(&frame)) {
            Err(SendError::Full) => {}
            done => return done,
        }
        self.queued.waiting.fetch_add(1, Ordering::SeqCst);
        let sent = async {
            loop {
                let room = self.queued.room.notified();
                match self.try_send_all(std::slice::from_ref(&frame)) {
                    Err(SendError::Full) => {}
                    done => return done,
                }
                tokio::select! {
                    _ = room => {}
                    _ = self.closed() => return Err(SendError::Closed),
                }
            }
        }
        .await;
        self.queued.waiting.fetch_sub(1, Ordering::SeqCst);
        sent
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        unpack(self.queued.queued.load(Ordering::Acquire)).1
    }

    /// The bounds this outbox was made with.
    pub fn limits(&self) -> OutboxLimits {
        self.queued.limits
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
        // Behind every frame queued so far; wakes a writer waiting for one.
        self.queue.push([Item::Close]);
    }

    /// Closes at once, dropping queued frames: for a peer that is not reading.
    pub fn abort(&self, code: u16, reason: &str) {
        self.close.abort.store(true, Ordering::SeqCst);
        self.close(code, reason);
    }

    /// True once [`close`](Self::close) was called or the transport ended.
    pub fn is_closed(&self) -> bool {
        // The writer's end going marks the connection closed (see its `Drop`).
        self.close.is_closed()
    }

    /// Resolves when the connection is closed by either side.
    pub async fn closed(&self) {
        self.close.token.cancelled().await;
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
    queue: Arc<Queue>,
    /// Items taken from the queue in one swap, not handed out yet.
    ready: VecDeque<Item>,
    queued: Arc<Queued>,
    close: Arc<CloseSignal>,
    /// The close came out of the queue (in `try_next_frame`): `next` says it.
    close_taken: bool,
}

impl OutboxReceiver {
    /// The next frame to write, or the close (after every queued frame was
    /// taken). `None` when every `Outbox` is gone.
    pub async fn next(&mut self) -> Option<Outgoing> {
        if !self.is_aborted() && !self.close_taken {
            // One wait for either: frames come before the close in the queue.
            match self.recv().await {
                Some(Item::Frame(frame)) => {
                    self.queued.taken(&frame);
                    if !self.is_aborted() {
                        return Some(Outgoing::Frame(frame));
                    }
                }
                Some(Item::Close) => self.close_taken = true,
                // Every `Outbox` is gone without a close.
                None => return self.close.reason.lock().clone().map(Outgoing::Close),
            }
        }
        self.discard();
        let reason = self.close.reason.lock().clone();
        Some(Outgoing::Close(reason.unwrap_or(CloseReason { code: close_code::NORMAL, reason: String::new() })))
    }

    /// The next item, waiting for one; `None` once every sender is gone.
    async fn recv(&mut self) -> Option<Item> {
        std::future::poll_fn(|cx| match self.ready.pop_front() {
            Some(item) => Poll::Ready(Some(item)),
            None => self.refill(Some(cx.waker())).map_or(Poll::Ready(None), |()| match self.ready.pop_front() {
                Some(item) => Poll::Ready(Some(item)),
                None => Poll::Pending,
            }),
        })
        .await
    }

    /// The next item if one is queued now.
    fn try_recv(&mut self) -> Option<Item> {
        if self.ready.is_empty() {
            self.refill(None)?;
        }
        self.ready.pop_front()
    }

    /// Takes everything queued into the empty `ready` buffer.
    fn refill(&mut self, waker: Option<&Waker>) -> Option<()> {
        if self.ready.capacity() > KEPT_BUFFER {
            self.ready = VecDeque::new();
        }
        self.queue.take_all(&mut self.ready, waker)
    }

    /// The next queued frame, if one is ready (a close taken is remembered).
    fn take_ready(&mut self) -> Option<Frame> {
        if self.close_taken {
            return None;
        }
        match self.try_recv()? {
            Item::Frame(frame) => {
                self.queued.taken(&frame);
                Some(frame)
            }
            Item::Close => {
                self.close_taken = true;
                None
            }
        }
    }

    /// Drops what an aborted connection still queued, so its memory returns now.
    fn discard(&mut self) {
        while let Some(item) = self.try_recv() {
            match item {
                Item::Frame(frame) => self.queued.taken(&frame),
                Item::Close => self.close_taken = true,
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
        self.take_ready()
    }

    /// Resolves once the owner asked to close or abort (queued frames may
    /// still be waiting). Lets a writer blocked on a slow peer notice an
    /// [`Outbox::abort`] without taking frames from the queue.
    pub async fn close_requested(&self) {
        self.close.token.cancelled().await;
    }

    /// Resolves once the owner aborted the connection (a slow consumer).
    pub async fn aborted(&self) {
        self.close.token.cancelled().await;
        if !self.is_aborted() {
            std::future::pending::<()>().await;
        }
    }

    /// Why the owner closed the connection, once it did.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close.reason.lock().clone()
    }

    /// True once the owner asked to close at once, dropping queued frames.
    pub fn is_aborted(&self) -> bool {
        self.close.abort.load(Ordering::SeqCst)
    }

    /// Marks the connection closed from the transport's side (the peer left).
    pub fn mark_closed(&self) {
        self.close.mark_closed();
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        let left = self.queue.close_receiver();
        for item in std::mem::take(&mut self.ready).into_iter().chain(left) {
            if let Item::Frame(frame) = item {
                self.queued.taken(&frame);
            }
        }
        // Senders see the connection closed, and `Outbox::closed` resolves.
        self.close.mark_closed();
    }
}

/// Makes an outbox of `capacity` frames and the default byte bound.
pub fn outbox(capacity: usize) -> (Outbox, OutboxReceiver) {
    outbox_with(OutboxLimits::frames(capacity))
}

/// Makes an outbox with the given bounds.
pub fn outbox_with(limits: OutboxLimits) -> (Outbox, OutboxReceiver) {
    // Within what `Queued::queued` counts (see `FRAMES_SHIFT`).
    let limits = OutboxLimits { frames: limits.frames.clamp(1, 1 << 20), bytes: limits.bytes.clamp(1, 1 << 38) };
    let queue = Arc::new(Queue::default());
    queue.sender_joined();
    let close = Arc::new(CloseSignal::default());
    let queued =
        Arc::new(Queued { limits, queued: AtomicU64::new(0), room: Notify::new(), waiting: AtomicUsize::new(0) });
    (
        Outbox { queue: queue.clone(), queued: queued.clone(), close: close.clone() },
        OutboxReceiver { queue, ready: VecDeque::new(), queued, close, close_taken: false },
    )
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
    async fn the_bound_counts_bytes_and_frees_them_as_frames_leave() {
        let (out, mut rx) = outbox_with(OutboxLimits { frames: 100, bytes: 10 });
        out.try_send(Frame::text("123456")).expect("room");
        assert_eq!(out.try_send(Frame::text("12345")), Err(SendError::Full), "6 + 5 bytes exceed 10");
        out.try_send(Frame::text("1234")).expect("6 + 4 bytes fit");
        assert_eq!(out.queued_bytes(), 10);
        assert_eq!(rx.next().await, Some(Outgoing::Frame(Frame::text("123456"))));
        assert_eq!(out.queued_bytes(), 4);
        out.try_send(Frame::text("123456")).expect("room again");
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_bound_goes_alone() {
        let (out, _rx) = outbox_with(OutboxLimits { frames: 100, bytes: 4 });
        out.try_send(Frame::text("a long frame")).expect("an empty queue takes one frame of any size");
        assert_eq!(out.try_send(Frame::text("x")), Err(SendError::Full));
    }

    #[tokio::test]
    async fn a_message_in_parts_is_admitted_whole_only_within_the_bound() {
        let (out, mut rx) = outbox_with(OutboxLimits { frames: 100, bytes: 8 });
        let parts = [Frame::text("part-one"), Frame::text("part-two"), Frame::text("part-3")];
        out.try_send_all(&parts).expect("the queue was empty");
        assert_eq!(out.queued_bytes(), 22);
        assert_eq!(out.try_send_all(&parts), Err(SendError::Full), "over the bound: no new message starts");
        assert_eq!(out.try_send(Frame::text("x")), Err(SendError::Full));
        for _ in 0..3 {
            assert!(matches!(rx.next().await, Some(Outgoing::Frame(_))));
        }
        assert_eq!(out.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn the_frame_count_still_bounds() {
        let (out, _rx) = outbox_with(OutboxLimits { frames: 2, bytes: 1 << 20 });
        out.try_send(Frame::text("a")).expect("room");
        out.try_send(Frame::text("b")).expect("room");
        assert_eq!(out.try_send(Frame::text("c")), Err(SendError::Full));
    }

    #[tokio::test]
    async fn an_abort_drops_what_was_queued_at_once() {
        let (out, mut rx) = outbox_with(OutboxLimits { frames: 100, bytes: 1 << 20 });
        out.try_send(Frame::binary(vec![0u8; 1000])).expect("room");
        out.abort(close_code::SLOW_CONSUMER, "SLOW_CONSUMER");
        assert!(matches!(rx.next().await, Some(Outgoing::Close(CloseReason { code: close_code::SLOW_CONSUMER, .. }))));
        assert_eq!(out.queued_bytes(), 0, "the queued frame's memory is released");
    }

    #[tokio::test]
    async fn send_waits_for_room_then_goes() {
        let (out, mut rx) = outbox_with(OutboxLimits { frames: 1, bytes: 1 << 20 });
        out.try_send(Frame::text("first")).expect("room");
        let sender = tokio::spawn({
            let out = out.clone();
            async move { out.send(Frame::text("second")).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!sender.is_finished(), "no room yet");
        assert_eq!(rx.next().await, Some(Outgoing::Frame(Frame::text("first"))));
        sender.await.expect("joined").expect("sent once there was room");
        assert_eq!(rx.next().await, Some(Outgoing::Frame(Frame::text("second"))));
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

    #[tokio::test]
    async fn frames_come_out_in_order_across_tasks_and_the_close_last() {
        let (out, mut rx) = outbox_with(OutboxLimits { frames: 10_000, bytes: 1 << 24 });
        let senders: Vec<_> = (0..4)
            .map(|t| {
                let out = out.clone();
                tokio::spawn(async move {
                    for i in 0..500 {
                        out.try_send(Frame::text(format!("{t}:{i}"))).expect("room");
                        if i % 50 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        let reader = tokio::spawn(async move {
            let mut next = [0usize; 4];
            let mut frames = 0;
            loop {
                match rx.next().await {
                    Some(Outgoing::Frame(frame)) => {
                        let text = String::from_utf8(frame.data.to_vec()).expect("utf-8");
                        let (t, i) = text.split_once(':').expect("t:i");
                        let (t, i): (usize, usize) = (t.parse().expect("t"), i.parse().expect("i"));
                        assert_eq!(i, next[t], "sender {t}'s frames in order");
                        next[t] += 1;
                        frames += 1;
                    }
                    Some(Outgoing::Close(reason)) => return (frames, reason),
                    None => panic!("the close comes before the end"),
                }
            }
        });
        for sender in senders {
            sender.await.expect("sender");
        }
        out.close(close_code::NORMAL, "done");
        let (frames, reason) = reader.await.expect("reader");
        assert_eq!(frames, 2000);
        assert_eq!(reason.reason, "done");
        assert_eq!(out.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn the_writer_ends_when_every_outbox_is_gone() {
        let (out, mut rx) = outbox(4);
        let copy = out.clone();
        out.try_send(Frame::text("last")).expect("room");
        drop(out);
        let waiting = tokio::spawn(async move {
            assert_eq!(rx.next().await, Some(Outgoing::Frame(Frame::text("last"))));
            rx.next().await
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "one outbox is still there");
        drop(copy);
        let end = tokio::time::timeout(std::time::Duration::from_secs(1), waiting).await.expect("woken").expect("task");
        assert_eq!(end, None);
    }

    #[tokio::test]
    async fn a_gone_writer_closes_the_outbox_and_frees_its_queue() {
        let (out, rx) = outbox(4);
        out.try_send(Frame::text("never written")).expect("room");
        drop(rx);
        assert!(out.is_closed());
        tokio::time::timeout(std::time::Duration::from_secs(1), out.closed()).await.expect("closed resolves");
        assert_eq!(out.queued_bytes(), 0, "the dropped frame is uncounted");
        assert_eq!(out.try_send(Frame::text("x")), Err(SendError::Closed));
        assert_eq!(out.queued_bytes(), 0, "a refused frame is not counted");
    }

    #[tokio::test]
    async fn a_burst_does_not_keep_its_buffer() {
        let (out, mut rx) = outbox_with(OutboxLimits { frames: 10_000, bytes: 1 << 24 });
        for i in 0..2000 {
            out.try_send(Frame::text(format!("{i}"))).expect("room");
        }
        for _ in 0..2000 {
            assert!(matches!(rx.next().await, Some(Outgoing::Frame(_))));
        }
        out.try_send(Frame::text("after")).expect("room");
        assert!(matches!(rx.next().await, Some(Outgoing::Frame(_))));
        assert!(rx.ready.capacity() <= KEPT_BUFFER, "capacity {}", rx.ready.capacity());
    }
}
