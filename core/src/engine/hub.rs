//! The broadcast hub: one task that receives commits in seq order, waits
//! until they are durable, routes each change to the live contexts holding
//! the row (membership follows the data), encodes each delta once per codec
//! and shares the bytes, then answers the writer. It also owns subscriptions:
//! a context is loaded once, kept in memory while subscribed, and its state
//! is served from that cache.

mod answers;
mod presence;
mod read_classes;

pub(crate) use read_classes::ContextRules;

use super::commit_lock::CommitLock;
use super::load::load_context;
use super::metrics::Metrics;
use super::split::{split_delta, split_state, split_subscribed};
use super::streams::{EventTail, PendingSub, StreamRegistry, StreamSub, SubId};
use crate::auth::User;
use crate::channel::Channel;
use crate::error::{ErrorReason, WireError};
use crate::ids::{Id, Seq};
use crate::protocol::Codec;
use crate::protocol::v1::{
    ChangeOp, Delta, DeltaChange, ErrorMessage, Goaway, Removed, Rid, ServerMessage, State, Subscribed,
    UnsubscribeReason, Unsubscribed, WriteResponse,
};
use crate::row::{Fields, Row, RowKey};
use crate::schema::Schema;
use crate::store::{Change, Committed, LogEntry, LogRead, Store};
use crate::stream::CompiledFilters;
use crate::transport::{Frame, Outbox, SendError, close_code};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

/// The hub's hot maps: foldhash, much cheaper than SipHash for the small
/// keys (ids, row keys, context names) hashed on every delivery. The hub
/// never hashes keys an attacker picks freely beyond those names.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;
/// Row → the live contexts holding it (names shared with the contexts).
type RowIndex = FastMap<RowKey, FastSet<Arc<str>>>;
/// A context holding more rows than this is freed off the hub's task.
const FREE_ELSEWHERE_ROWS: usize = 4096;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

pub(crate) type ConnId = u64;
/// The contexts a session holds; shared so the hub can drop one (anchor
/// deleted, slow consumer) and the session sees it at once.
pub(crate) type SharedSubs = Arc<parking_lot::Mutex<HashSet<String>>>;

/// Where a write's answer goes.
pub(crate) enum ReplyTarget {
    Conn(ConnId),
    Oneshot(oneshot::Sender<Result<WriteResponse, WireError>>),
}

/// The writer of a commit, answered after the commit's deltas.
pub(crate) struct WriterTag {
    pub target: ReplyTarget,
    pub write_id: i64,
    pub rid: Rid,
    pub single_create: bool,
    pub in_flight: Option<Arc<AtomicUsize>>,
}

/// One connection's contexts of some channels, and its user.
pub(crate) struct Holders {
    pub conn: ConnId,
    pub user: Arc<User>,
    /// Each context with the key of the read class it is read in (None: in full).
    pub contexts: Vec<(String, Option<String>)>,
}

/// One stream subscription, as the revalidator decides it again.
pub(crate) struct StreamHolder {
    pub conn: ConnId,
    pub user: Arc<User>,
    pub sub: SubId,
    pub stream: Arc<crate::stream::Stream>,
    pub client: Arc<(crate::stream::Filters, Vec<Id>)>,
    pub decision: String,
}

pub(crate) enum HubMsg {
    /// The contexts each connection of a user holds.
    HeldBy {
        user: Id,
        reply: oneshot::Sender<Vec<(ConnId, Vec<String>)>>,
    },
    /// Who holds contexts of these channels (see [`super::revocation`]).
    Holders {
        channels: BTreeSet<String>,
        reply: oneshot::Sender<Vec<Holders>>,
    },
    /// The stream subscriptions of these streams (see [`super::revocation`]).
    StreamHolders {
        streams: BTreeSet<String>,
        reply: oneshot::Sender<Vec<StreamHolder>>,
    },
    /// A stream subscription its policy no longer allows (`REVOKED`) or now
    /// decides differently (`RESCOPED`).
    StreamEnd {
        conn: ConnId,
        sub: SubId,
        reason: UnsubscribeReason,
    },
    /// A subscription the user may no longer hold.
    Revoke {
        conn: ConnId,
        context: String,
        reason: UnsubscribeReason,
    },
    /// The read rules a subscriber has now (decided again after a commit
    /// changed what its policy reads): a new class gets a fresh state.
    Reclass {
        conn: ConnId,
        context: String,
        read: Option<Arc<ContextRules>>,
    },
    /// The connection's user, after `auth` with a new token.
    Reauth {
        conn: ConnId,
        user: Arc<User>,
    },
    Connect {
        conn: ConnId,
        user: Arc<User>,
        outbox: Outbox,
        codec: Codec,
        subs: SharedSubs,
    },
    Disconnect {
        conn: ConnId,
    },
    /// A commit made through this engine. With a shared log it is only
    /// registered here and delivered when the tailer reaches its seq.
    Commit {
        committed: Committed,
        writer: Option<WriterTag>,
        started: Instant,
    },
    /// One process: every commit up to `through` is durable (or not: the error).
    Durable {
        through: Seq,
        result: Result<(), crate::store::StoreError>,
    },
    /// One process: the subtrees commit `seq` moved were read.
    MovesLoaded {
        seq: Seq,
        moved: Moved,
    },
    /// Shared log: committed entries in seq order (any process's), and the
    /// seq up to which every commit is settled.
    Tailed {
        entries: Vec<LogEntry>,
        through: Seq,
    },
    Subscribe(SubscribeRequest),
    /// The change log read for a `since` subscribe the context's memory did
    /// not reach back to (None: the log doesn't either, or too much changed).
    Backfilled {
        req: SubscribeRequest,
        upto: Seq,
        entries: Option<Vec<LogEntry>>,
    },
    Loaded {
        context: String,
        result: Result<Vec<Row>, WireError>,
    },
    Unsubscribe {
        conn: ConnId,
        context: String,
        rid: Rid,
    },
    /// An answer that must not overtake the answers to earlier writes.
    Reply {
        conn: ConnId,
        msg: Box<ServerMessage>,
    },
    Goaway,
    Barrier(oneshot::Sender<()>),
    /// A checked stream subscribe (policy and filters already decided).
    StreamSubscribe(Box<StreamSubscribeRequest>),
    StreamLoaded {
        sub: SubId,
        result: Result<StreamLoad, WireError>,
    },
    StreamUnsubscribe {
        conn: ConnId,
        subscription: String,
        rid: Rid,
    },
    /// A connection's presence in a context it holds (paced by its session).
    Presence {
        conn: ConnId,
        context: String,
        data: serde_json::Value,
    },
    /// A message from the other processes on the store (see [`crate::store::Bus`]).
    Bus(Arc<str>),
    /// This process (re)joined the bus.
    BusJoined,
    /// Presence's heartbeat on the bus, with the time.
    PresenceTick(Instant),
}

pub(crate) struct StreamSubscribeRequest {
    pub sub: StreamSub,
    pub rid: Rid,
    pub snapshot: bool,
    /// `since` and the epoch it belongs to.
    pub since: Option<(Seq, Option<String>)>,
}

/// What a stream subscribe's loader read.
pub(crate) enum StreamLoad {
    /// The rows matching the filters (at some point after registration).
    Snapshot(Vec<Row>),
    /// The change log after `since` (None: it no longer reaches back).
    Log { since: Seq, entries: Option<Vec<LogEntry>> },
}

/// The most log entries a stream `since` replays.
const MAX_REPLAY: usize = 10_000;
/// Rows per store page when a snapshot scans a whole type.
const SCAN_PAGE: usize = 1000;

pub(crate) struct SubscribeRequest {
    pub conn: ConnId,
    pub channel: Arc<Channel>,
    pub anchor_id: Id,
    pub context: String,
    pub rid: Rid,
    /// `since` and the epoch it belongs to.
    pub since: Option<(Seq, Option<String>)>,
    /// What the user may read, when the channel's policy hides something from them.
    pub read: Option<Arc<ContextRules>>,
}

/// The engine's handle on the hub task.
pub(crate) struct HubHandle {
    tx: mpsc::UnboundedSender<HubMsg>,
    healthy: Arc<AtomicBool>,
    pub settle: Settle,
}

/// How long an answer waits for the hub to deliver a commit it depends on
/// (shared log) before it is sent anyway.
const SETTLE_WAIT: Duration = Duration::from_secs(10);
/// Shared log: how often the tailer reads the log without a notification.
const TAIL_POLL: Duration = Duration::from_millis(100);
/// Shared log: the most entries the tailer reads at once.
const TAIL_BATCH: usize = 1000;
/// Shared log: how far before the head the tailer starts, so a commit still
/// in progress when the process started is not missed.
const TAIL_BACK: Seq = 1000;

/// Puts a message behind every commit that reads made so far may have seen:
/// with one process, commits reach the hub under the commit lock; with a
/// shared log, once the hub has delivered everything up to the log's head.
#[derive(Clone)]
pub(crate) struct Settle {
    store: Arc<dyn Store>,
    lock: CommitLock,
    delivered: watch::Receiver<Seq>,
}

impl Settle {
    /// After reads of the store: waits until what they may have seen is delivered.
    pub async fn reads(&self) {
        if !self.store.shared_log() {
            drop(self.lock.exclusive().await);
            return;
        }
        match self.store.log_head().await {
            Ok(head) => self.seq(head).await,
            Err(e) => tracing::warn!(error = %e, "can't read the log head; answering without waiting"),
        }
    }

    /// Waits until the commit at `seq` is delivered (never under the commit lock).
    pub async fn seq(&self, seq: Seq) {
        if !self.store.shared_log() {
            drop(self.lock.exclusive().await);
            return;
        }
        let mut rx = self.delivered.clone();
        if tokio::time::timeout(SETTLE_WAIT, rx.wait_for(|d| *d >= seq)).await.is_err() {
            tracing::warn!(seq, "the log tailer has not reached this commit yet; answering anyway");
        }
    }
}

impl HubHandle {
    pub fn send(&self, msg: HubMsg) {
        if self.tx.send(msg).is_err() {
            tracing::error!("the hub task has stopped");
        }
    }
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }
}

/// The hub's settings.
pub(crate) struct HubSettings {
    pub snapshot_limit: usize,
    pub limits: super::ConnectionLimits,
    /// Appended to connection ids (see [`super::Inner::conn_suffix`]).
    pub conn_suffix: String,
}

pub(crate) fn spawn(
    schema: Arc<Schema>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    frame_limit: usize,
    commit_lock: CommitLock,
    settings: HubSettings,
    revalidate: Option<Revalidate>,
) -> HubHandle {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let healthy = Arc::new(AtomicBool::new(true));
    let (delivered, delivered_rx) = watch::channel(store.last_seq());
    let settle = Settle { store: store.clone(), lock: commit_lock.clone(), delivered: delivered_rx };
    if store.shared_log() {
        tokio::spawn(run_tailer(store.clone(), tx.downgrade(), commit_lock.clone(), store.last_seq()));
    }
    let bus = store.bus();
    let mut hub = Hub {
        shared_log: store.shared_log(),
        delivered,
        awaiting: BTreeMap::new(),
        barriers: Vec::new(),
        settle: settle.clone(),
        schema,
        epoch: store.epoch().to_owned(),
        seq: store.last_seq(),
        store,
        metrics,
        frame_limit,
        me: tx.downgrade(),
        healthy: healthy.clone(),
        conns: FastMap::default(),
        contexts: FastMap::default(),
        index: RowIndex::default(),
        streams: StreamRegistry::default(),
        pending_streams: HashMap::new(),
        snapshot_limit: settings.snapshot_limit,
        limits: settings.limits,
        revalidate,
        presence: super::presence::PresenceBook::new(store_bus_origin(&bus, &settings.conn_suffix)),
        bus: bus.clone(),
        conn_suffix: settings.conn_suffix,
        durability: None,
        read_keys: FastMap::default(),
        durable_through: 0,
        moves_loading: None,
        gauge_dirty: false,
        gauge_at: Instant::now(),
    };
    if !hub.shared_log {
        let (durable_tx, durable_rx) = mpsc::unbounded_channel();
        tokio::spawn(run_durability(hub.store.clone(), durable_rx, tx.downgrade()));
        hub.durability = Some(durable_tx);
    }
    if let Some(bus) = bus {
        presence::spawn_bus_reader(bus, tx.downgrade());
        hub.bus_joined();
    }
    tokio::spawn(async move {
        loop {
            let msg = if hub.gauge_dirty {
                tokio::select! {
                    msg = rx.recv() => msg,
                    _ = tokio::time::sleep(GAUGE_EVERY) => {
                        hub.recount_subscriptions();
                        continue;
                    }
                }
            } else {
                rx.recv().await
            };
            let Some(msg) = msg else { break };
            hub.handle(msg).await;
        }
    });
    HubHandle { tx, healthy, settle }
}

/// This process's name on the bus: its connection ids' suffix (without `@`).
fn store_bus_origin(bus: &Option<Arc<dyn crate::store::Bus>>, conn_suffix: &str) -> Option<String> {
    bus.as_ref().map(|_| conn_suffix.trim_start_matches('@').to_owned())
}

/// One process: waits for the commits' durability in seq order, off the
/// hub's loop, and tells the hub (`Durable`). Commits queued meanwhile are
/// waited for at once: durability is a watermark.
async fn run_durability(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<Seq>,
    hub: mpsc::WeakUnboundedSender<HubMsg>,
) {
    while let Some(mut through) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            through = through.max(more);
        }
        let result = store.wait_durable(through).await;
        let Some(tx) = hub.upgrade() else { return };
        if tx.send(HubMsg::Durable { through, result }).is_err() {
            return;
        }
    }
}

/// Shared log: reads the log in seq order (woken by notifications, else every
/// [`TAIL_POLL`]) and hands the entries to the hub. Store failures (a database
/// restart) are retried with a backoff; it resumes after the last seq handed over.
async fn run_tailer(store: Arc<dyn Store>, hub: mpsc::WeakUnboundedSender<HubMsg>, lock: CommitLock, head: Seq) {
    let mut after = head.saturating_sub(TAIL_BACK);
    let mut backoff = TAIL_POLL;
    let mut failing = false;
    loop {
        if hub.strong_count() == 0 {
            return;
        }
        match store.tail_log(after, TAIL_BATCH).await {
            Ok(tail) => {
                if failing {
                    tracing::info!(after, "reading the change log again");
                    failing = false;
                }
                backoff = TAIL_POLL;
                if tail.trimmed {
                    tracing::error!(
                        after,
                        through = tail.through,
                        "the change log was trimmed past this process's position: commits in between are not \
                         broadcast here (raise the log capacity)"
                    );
                }
                let full = tail.entries.len() >= TAIL_BATCH;
                if tail.through > after || !tail.entries.is_empty() {
                    after = tail.through;
                    // Local writers hand their commit to the hub under this lock
                    // before it becomes visible here; taking it exclusively puts
                    // this behind every one of them that this read could hold.
                    let _guard = lock.exclusive().await;
                    let Some(tx) = hub.upgrade() else { return };
                    if tx.send(HubMsg::Tailed { entries: tail.entries, through: tail.through }).is_err() {
                        return;
                    }
                }
                if !full {
                    store.wait_log(TAIL_POLL).await;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, after, "reading the change log failed; retrying");
                    failing = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

struct ConnEntry {
    user: Arc<User>,
    outbox: Outbox,
    codec: Codec,
    subs: SharedSubs,
    /// The order of this connection's answers: behind writes whose commits
    /// are not delivered yet, and behind `state`s not sent yet (a write's
    /// `writeResponse` must not overtake the state that carries its effect;
    /// the state stands in for the write's tagged delta there).
    answers: answers::AnswerQueue,
}

/// How many removals a live context remembers for incremental states.
const TOMBSTONES: usize = 10_000;
/// The most commits a context's `since` is backfilled over from the change log.
const BACKFILL_MAX: Seq = 10_000;

/// The change log `(since, upto]`, or None when it no longer reaches back
/// (trimmed) or can't be read (the subscriber then gets the whole state).
async fn read_log(store: &dyn Store, since: Seq, upto: Seq) -> Option<Vec<LogEntry>> {
    let mut entries: Vec<LogEntry> = Vec::new();
    let mut after = since;
    while after < upto {
        match store.changes_since(after, SCAN_PAGE).await {
            Ok(LogRead::Entries(page)) => {
                let Some(last) = page.last().map(|e| e.seq) else { break };
                let short = page.len() < SCAN_PAGE;
                entries.extend(page.into_iter().filter(|e| e.seq <= upto));
                after = last;
                if short {
                    break;
                }
            }
            Ok(LogRead::Trimmed) => return None,
            Err(e) => {
                tracing::warn!(error = %e, since, "can't read the change log for a `since` subscribe");
                return None;
            }
        }
    }
    Some(entries)
}

struct LiveContext {
    name: Arc<str>,
    channel: Arc<Channel>,
    anchor: RowKey,
    rows: FastMap<RowKey, Arc<Row>>,
    parent: FastMap<RowKey, RowKey>,
    children: FastMap<RowKey, FastSet<RowKey>>,
    /// When a row joined after the initial load (re-parented in).
    joined: FastMap<RowKey, Seq>,
    tombstones: VecDeque<(Seq, RowKey)>,
    /// Removals after this seq are all in `tombstones`.
    tombstones_from: Seq,
    loaded_at: Seq,
    last_seq: Seq,
    subscribers: BTreeSet<ConnId>,
    /// Whole-state frames for `last_seq`, per codec (without rid).
    state_cache: [Option<Arc<[Frame]>>; 2],
    /// Subscribers whose read rules hide rows or fields, by class.
    read: read_classes::ReadClasses,
}

enum Slot {
    Loading { channel: Arc<Channel>, anchor_id: Id, waiting: Vec<SubscribeRequest>, buffered: Vec<Arc<Committed>> },
    Live(Box<LiveContext>),
}

/// A local commit waiting for the tailer to reach its seq.
type Awaiting = (Committed, Option<WriterTag>, Instant);

struct Hub {
    /// Commits are delivered from the store's shared log (see [`run_tailer`]).
    shared_log: bool,
    /// The last seq delivered (or settled), for [`Settle`].
    delivered: watch::Sender<Seq>,
    /// Shared log: local commits by seq, until the tailer delivers them.
    awaiting: BTreeMap<Seq, Awaiting>,
    /// Barriers waiting for the awaited local commits to be delivered.
    barriers: Vec<oneshot::Sender<()>>,
    settle: Settle,
    schema: Arc<Schema>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    epoch: String,
    /// The last commit delivered.
    seq: Seq,
    frame_limit: usize,
    me: mpsc::WeakUnboundedSender<HubMsg>,
    healthy: Arc<AtomicBool>,
    conns: FastMap<ConnId, ConnEntry>,
    contexts: FastMap<String, Slot>,
    /// Row → the live contexts holding it (routing never reads the store).
    index: RowIndex,
    streams: StreamRegistry,
    pending_streams: HashMap<SubId, PendingSub>,
    snapshot_limit: usize,
    limits: super::ConnectionLimits,
    /// Where commits that touch what a policy reads are reported (none when
    /// no policy declares what it reads).
    revalidate: Option<Revalidate>,
    presence: super::presence::PresenceBook,
    /// The other processes on the store (None: alone).
    bus: Option<Arc<dyn crate::store::Bus>>,
    /// Makes connection ids unique across the processes on a bus (`@…`).
    conn_suffix: String,
    /// One process: where commits go to wait for durability (see [`run_durability`]).
    durability: Option<mpsc::UnboundedSender<Seq>>,
    /// One process: every commit up to here is durable.
    durable_through: Seq,
    /// One process: the commit whose moved subtrees are being read (the
    /// commits after it wait for it).
    moves_loading: Option<Seq>,
    /// The read class key each (user, context) last subscribed with: a
    /// resume with `since` under other rules gets a whole state.
    read_keys: FastMap<(Id, String), Option<String>>,
    /// The subscription gauge is behind (see `update_subscription_gauge`).
    gauge_dirty: bool,
    gauge_at: Instant,
}

/// The most (user, context) read keys remembered (then forgotten at once:
/// an unknown pair keeps `since`, as before rules existed).
const READ_KEYS_KEPT: usize = 100_000;

/// How often the subscription gauge is recounted at most.
const GAUGE_EVERY: Duration = Duration::from_millis(50);

/// The revalidator's inbox and what it watches.
pub(crate) struct Revalidate {
    pub watch: super::revocation::Watch,
    pub tx: mpsc::UnboundedSender<super::revocation::Touched>,
}

/// Subtrees of rows that moved between parents, loaded before routing.
type Moved = HashMap<(String, RowKey), Vec<Row>>;

/// A subtree to read before a commit is routed (see `moves_to_load`).
struct MoveLoad {
    channel: Arc<Channel>,
    name: String,
    row: Row,
}

/// Reads the subtrees a commit moved (off the hub's loop with one process).
async fn load_moves(store: &dyn Store, loads: Vec<MoveLoad>) -> Moved {
    let mut moved = Moved::new();
    for MoveLoad { channel, name, row } in loads {
        match super::load::load_subtree(store, &channel, &row).await {
            Ok(rows) => {
                moved.insert((name, row.key()), rows);
            }
            Err(e) => tracing::error!(error = %e, "loading a moved subtree failed"),
        }
    }
    moved
}

impl Hub {
    async fn handle(&mut self, msg: HubMsg) {
        match msg {
            HubMsg::Connect { conn, user, outbox, codec, subs } => {
                let entry = ConnEntry { user, outbox, codec, subs, answers: answers::AnswerQueue::default() };
                self.conns.insert(conn, entry);
                self.metrics.connections.store(self.conns.len() as u64, Ordering::Relaxed);
            }
            HubMsg::HeldBy { user, reply } => {
                let held = self
                    .conns
                    .iter()
                    .filter(|(_, e)| e.user.id == user)
                    .map(|(id, e)| (*id, e.subs.lock().iter().cloned().collect()))
                    .collect();
                let _ = reply.send(held);
            }
            HubMsg::Holders { channels, reply } => {
                let _ = reply.send(self.holders(&channels));
            }
            HubMsg::StreamHolders { streams, reply } => {
                let _ = reply.send(self.stream_holders(&streams));
            }
            HubMsg::StreamEnd { conn, sub, reason } => self.stream_end(conn, sub, reason),
            HubMsg::Revoke { conn, context, reason } => self.revoke(conn, context, reason),
            HubMsg::Reclass { conn, context, read } => self.reclass(conn, context, read),
            HubMsg::Reauth { conn, user } => {
                if let Some(entry) = self.conns.get_mut(&conn) {
                    entry.user = user;
                }
            }
            HubMsg::Disconnect { conn } => self.disconnect(conn),
            HubMsg::Commit { committed, writer, started } => {
                self.note_commit(&writer);
                if self.shared_log {
                    self.await_tail(committed, writer, started)
                } else {
                    self.await_durable(committed, writer, started)
                }
            }
            HubMsg::Durable { through, result } => self.durable(through, result),
            HubMsg::MovesLoaded { seq, moved } => self.moves_loaded(seq, moved),
            HubMsg::Tailed { entries, through } => self.tailed(entries, through).await,
            HubMsg::Subscribe(req) => self.subscribe(req),
            HubMsg::Loaded { context, result } => {
                self.deliver_durable().await;
                self.loaded(context, result)
            }
            HubMsg::Backfilled { req, upto, entries } => self.backfilled(req, upto, entries),
            HubMsg::Unsubscribe { conn, context, rid } => self.unsubscribe(conn, context, rid),
            HubMsg::Reply { conn, msg } => self.answer(conn, *msg, None),
            HubMsg::Goaway => {
                self.presence_bye();
                let ids: Vec<ConnId> = self.conns.keys().copied().collect();
                for conn in ids {
                    self.send_msg(conn, &ServerMessage::Goaway(Goaway { reason: Some("SERVER_DRAINING".into()) }));
                }
            }
            HubMsg::Barrier(done) if !self.awaiting.is_empty() => self.barriers.push(done),
            HubMsg::Barrier(done) => {
                let _ = done.send(());
            }
            HubMsg::StreamSubscribe(req) => self.stream_subscribe(*req),
            HubMsg::StreamLoaded { sub, result } => {
                self.deliver_durable().await;
                self.stream_loaded(sub, result)
            }
            HubMsg::StreamUnsubscribe { conn, subscription, rid } => self.stream_unsubscribe(conn, subscription, rid),
            HubMsg::Presence { conn, context, data } => self.set_presence(conn, context, data),
            HubMsg::Bus(raw) => self.bus_message(&raw),
            HubMsg::BusJoined => self.bus_joined(),
            HubMsg::PresenceTick(now) => self.presence_tick(now),
        }
    }

    // ---- sending -------------------------------------------------------

    fn send_frames(&mut self, conn: ConnId, frames: &[Frame]) {
        let Some(entry) = self.conns.get(&conn) else { return };
        if let Err(e) = offer(&entry.outbox, frames) {
            self.send_failed(conn, e);
        }
    }

    /// A connection whose outbox refused a frame: a slow consumer is aborted;
    /// either way it is gone from the hub.
    fn send_failed(&mut self, conn: ConnId, e: SendError) {
        if e == SendError::Full {
            tracing::warn!(conn, "closing a slow consumer: its outgoing queue is full");
            self.metrics.slow_consumers.fetch_add(1, Ordering::Relaxed);
            if let Some(entry) = self.conns.get(&conn) {
                entry.outbox.abort(close_code::SLOW_CONSUMER, "SLOW_CONSUMER");
            }
        }
        self.disconnect(conn);
    }

    fn encode(&self, codec: Codec, msg: &ServerMessage) -> Option<Frame> {
        match codec.encode(msg) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::error!(error = %e, "encoding a message failed");
                None
            }
        }
    }

    fn send_msg(&mut self, conn: ConnId, msg: &ServerMessage) {
        let Some(codec) = self.conns.get(&conn).map(|c| c.codec) else {
            return;
        };
        if let Some(frame) = self.encode(codec, msg) {
            self.send_frames(conn, &[frame]);
        }
    }

    /// Sends an answer in its turn (see [`answers`]).
    fn answer(&mut self, conn: ConnId, msg: ServerMessage, in_flight: answers::InFlight) {
        match self.conns.get_mut(&conn) {
            Some(entry) => {
                let ready = entry.answers.answer(msg, in_flight);
                self.send_answers(conn, ready);
            }
            None => release(in_flight),
        }
    }

    /// Sends answers whose turn came, releasing their writes' in-flight counts.
    fn send_answers(&mut self, conn: ConnId, ready: Vec<(ServerMessage, answers::InFlight)>) {
        for (msg, in_flight) in ready {
            self.send_msg(conn, &msg);
            release(in_flight);
        }
    }

    /// A subscribe of `conn` now waits for its state.
    fn park(&mut self, conn: ConnId) {
        if let Some(entry) = self.conns.get_mut(&conn) {
            entry.answers.park();
        }
    }

    /// A subscribe of `conn` was answered (its state or error sent) or
    /// withdrawn: the answers held behind it go out in order.
    fn unpark(&mut self, conn: ConnId) {
        let Some(entry) = self.conns.get_mut(&conn) else { return };
        let ready = entry.answers.unpark();
        self.send_answers(conn, ready);
    }

    /// A commit reached the hub: its writer's answer has a place in line.
    fn note_commit(&mut self, writer: &Option<WriterTag>) {
        if let Some(WriterTag { target: ReplyTarget::Conn(conn), write_id, .. }) = writer
            && let Some(entry) = self.conns.get_mut(conn)
        {
            entry.answers.write_committed(*write_id);
        }
    }

    fn disconnect(&mut self, conn: ConnId) {
        let Some(entry) = self.conns.remove(&conn) else { return };
        let held: Vec<String> = entry.subs.lock().drain().collect();
        for context in held {
            self.drop_subscriber(conn, &context);
        }
        self.streams.remove_conn(conn);
        self.pending_streams.retain(|_, p| p.sub.conn != conn);
        self.update_stream_gauge();
        self.metrics.connections.store(self.conns.len() as u64, Ordering::Relaxed);
    }

    fn drop_subscriber(&mut self, conn: ConnId, context: &str) {
        let (empty, withdrawn) = match self.contexts.get_mut(context) {
            Some(Slot::Live(ctx)) => {
                ctx.subscribers.remove(&conn);
                ctx.read.remove(conn);
                (ctx.subscribers.is_empty(), 0)
            }
            Some(Slot::Loading { waiting, .. }) => {
                let before = waiting.len();
                waiting.retain(|r| r.conn != conn);
                (false, before - waiting.len())
            }
            None => (false, 0),
        };
        self.leave_presence(conn, context);
        for _ in 0..withdrawn {
            self.unpark(conn);
        }
        if empty {
            self.drop_context(context);
        }
        self.update_subscription_gauge();
    }

    fn drop_context(&mut self, context: &str) {
        if let Some(Slot::Live(ctx)) = self.contexts.remove(context) {
            for key in ctx.rows.keys() {
                unindex(&mut self.index, key, context);
            }
            free(ctx);
        }
    }

    /// Recounted at most every [`GAUGE_EVERY`]: a recount walks every live
    /// context, and a mass revocation or disconnect would do it per removal.
    fn update_subscription_gauge(&mut self) {
        if self.gauge_at.elapsed() < GAUGE_EVERY {
            self.gauge_dirty = true;
            return;
        }
        self.recount_subscriptions();
    }

    fn recount_subscriptions(&mut self) {
        self.gauge_dirty = false;
        self.gauge_at = Instant::now();
        let n: usize = self
            .contexts
            .values()
            .map(|s| match s {
                Slot::Live(c) => c.subscribers.len(),
                Slot::Loading { waiting, .. } => waiting.len(),
            })
            .sum();
        self.metrics.subscriptions.store(n as u64, Ordering::Relaxed);
        self.metrics.live_contexts.store(self.contexts.len() as u64, Ordering::Relaxed);
    }

    // ---- subscriptions -------------------------------------------------

    fn subscribe(&mut self, req: SubscribeRequest) {
        if !self.conns.contains_key(&req.conn) {
            return;
        }
        let at_limit = self.loading_subscribes_of(req.conn) >= self.limits.subscribes_in_flight;
        match self.contexts.get_mut(&req.context) {
            Some(Slot::Live(_)) => self.answer_subscribe(req),
            // The connection may wait for this context already: it keeps holding it.
            Some(Slot::Loading { .. }) if at_limit => return self.refuse_busy_subscribe(req, false),
            // Every subscribe is answered, a second one to the same context
            // included (each with its own rid).
            Some(Slot::Loading { waiting, .. }) => {
                let conn = req.conn;
                waiting.push(req);
                self.park(conn);
            }
            None if at_limit => return self.refuse_busy_subscribe(req, true),
            None => {
                let (channel, anchor_id, context) = (req.channel.clone(), req.anchor_id, req.context.clone());
                self.park(req.conn);
                self.contexts.insert(
                    context.clone(),
                    Slot::Loading { channel: channel.clone(), anchor_id, waiting: vec![req], buffered: Vec::new() },
                );
                self.spawn_loader(context, channel, anchor_id);
            }
        }
        self.update_subscription_gauge();
    }

    /// Refuses a subscribe beyond the connection's subscribes in flight (429);
    /// `forget`: the connection held nothing of the context before it.
    fn refuse_busy_subscribe(&mut self, req: SubscribeRequest, forget: bool) {
        let max = self.limits.subscribes_in_flight;
        let e = WireError::new(
            ErrorReason::RateLimited,
            format!("this connection has {max} subscribes waiting for their state already; wait for one"),
        );
        if forget && let Some(entry) = self.conns.get(&req.conn) {
            entry.subs.lock().remove(&req.context);
        }
        let mut msg = ErrorMessage::new(e, req.rid);
        msg.context = Some(req.context);
        self.send_msg(req.conn, &ServerMessage::Error(msg));
    }

    /// Subscribes of `conn` waiting for a context to load.
    fn loading_subscribes_of(&self, conn: ConnId) -> usize {
        self.contexts
            .values()
            .map(|slot| match slot {
                Slot::Loading { waiting, .. } => waiting.iter().filter(|r| r.conn == conn).count(),
                Slot::Live(_) => 0,
            })
            .sum()
    }

    fn spawn_loader(&self, context: String, channel: Arc<Channel>, anchor_id: Id) {
        let (store, me, settle) = (self.store.clone(), self.me.clone(), self.settle.clone());
        tokio::spawn(async move {
            let result = load_context(&*store, &channel, anchor_id).await;
            // `Loaded` goes behind every commit whose rows the load may have
            // read, and only once they are durable.
            settle.reads().await;
            let result = match durable_after_reads(&*store).await {
                Ok(()) => result,
                Err(e) => Err(e),
            };
            if let Some(tx) = me.upgrade() {
                let _ = tx.send(HubMsg::Loaded { context, result });
            }
        });
    }

    fn loaded(&mut self, context: String, result: Result<Vec<Row>, WireError>) {
        let Some(Slot::Loading { channel, anchor_id, waiting, buffered }) = self.contexts.remove(&context) else {
            return;
        };
        let rows = match result {
            Ok(rows) => rows,
            Err(e) => return self.refuse_waiting(&context, waiting, e),
        };
        let anchor = RowKey::new(channel.anchor.as_str(), anchor_id);
        let mut ctx = Box::new(LiveContext {
            name: Arc::from(context.as_str()),
            channel,
            anchor: anchor.clone(),
            rows: FastMap::with_capacity_and_hasher(rows.len(), Default::default()),
            parent: FastMap::with_capacity_and_hasher(rows.len(), Default::default()),
            children: FastMap::default(),
            joined: FastMap::default(),
            tombstones: VecDeque::new(),
            tombstones_from: self.seq,
            loaded_at: self.seq,
            last_seq: self.seq,
            subscribers: BTreeSet::new(),
            state_cache: [None, None],
            read: read_classes::ReadClasses::default(),
        });
        for row in rows {
            let key = row.key();
            if key == anchor {
                ctx.rows.insert(key.clone(), Arc::new(row));
                index(&mut self.index, &key, &ctx.name);
            } else if let Some(parent) = ctx.parent_in_context(&row) {
                ctx.link(&mut self.index, key, parent, Arc::new(row), None);
            }
        }
        let empty = Moved::new();
        let mut anchor_gone = false;
        for commit in &buffered {
            for change in &commit.changes {
                let mut sink = Vec::new();
                if ctx.apply(&mut self.index, commit.seq, change, &empty, &mut sink) {
                    anchor_gone = true;
                }
            }
        }
        if anchor_gone {
            for key in ctx.rows.keys() {
                unindex(&mut self.index, key, &context);
            }
            free(ctx);
            let e = WireError::new(ErrorReason::AnchorNotFound, format!("{anchor} was deleted"));
            return self.refuse_waiting(&context, waiting, e);
        }
        ctx.tombstones_from = self.seq;
        ctx.tombstones.clear();
        ctx.joined.clear();
        self.contexts.insert(context.clone(), Slot::Live(ctx));
        let mut backfilling = false;
        for req in waiting {
            backfilling |= req.since.is_some();
            let conn = req.conn;
            self.answer_subscribe(req);
            self.unpark(conn);
        }
        self.update_subscription_gauge();
        if let Some(Slot::Live(ctx)) = self.contexts.get(&context)
            && ctx.subscribers.is_empty()
            && !backfilling
        {
            self.drop_context(&context);
        }
    }

    /// Answers a subscribe to a live context: from memory, or after reading
    /// the change log when `since` lies before what the context remembers.
    fn answer_subscribe(&mut self, req: SubscribeRequest) {
        if let Some(upto) = self.backfill_needed(&req) {
            return self.spawn_backfill(req, upto);
        }
        self.register_subscriber(req);
    }

    fn register_subscriber(&mut self, mut req: SubscribeRequest) {
        // A connection already over its outbox bound would refuse the state:
        // close it as a slow consumer before spending the encoding on it.
        let over = self.conns.get(&req.conn).is_some_and(|e| e.outbox.queued_bytes() > e.outbox.limits().bytes);
        if over {
            return self.send_failed(req.conn, SendError::Full);
        }
        // What the user read here before decides whether `since` can be trusted.
        if let Some(user) = self.conns.get(&req.conn).map(|e| e.user.id) {
            let now = req.read.as_ref().map(|r| r.key.clone());
            if self.read_keys.len() >= READ_KEYS_KEPT {
                self.read_keys.clear();
            }
            let before = self.read_keys.insert((user, req.context.clone()), now.clone());
            if before.is_some_and(|b| b != now) {
                // The user's read rules changed since: an incremental state
                // would leave rows no longer readable (or miss rows now
                // readable) on the client. Whole, then.
                req.since = None;
            }
        }
        if let Some(Slot::Live(ctx)) = self.contexts.get_mut(&req.context) {
            ctx.subscribers.insert(req.conn);
            match &req.read {
                Some(rules) => ctx.join_class(req.conn, rules.clone()),
                None => ctx.read.remove(req.conn),
            }
        }
        let frames = self.state_frames(&req);
        self.send_frames(req.conn, &frames);
    }

    /// The seq the log must be read up to, when `since` (of this store's
    /// epoch) lies before the context was loaded here: a process that just
    /// loaded it, or a client resuming on another process after a failover.
    fn backfill_needed(&self, req: &SubscribeRequest) -> Option<Seq> {
        let (since, epoch) = req.since.as_ref()?;
        let Some(Slot::Live(ctx)) = self.contexts.get(&req.context) else { return None };
        let answerable = epoch.as_deref() == Some(self.epoch.as_str())
            && *since < ctx.loaded_at
            && *since >= ctx.loaded_at.saturating_sub(BACKFILL_MAX);
        answerable.then_some(ctx.loaded_at)
    }

    /// Reads the change log `(since, upto]` off the hub's task.
    fn spawn_backfill(&mut self, req: SubscribeRequest, upto: Seq) {
        let (store, me) = (self.store.clone(), self.me.clone());
        let Some((since, _)) = req.since.clone() else { return };
        self.park(req.conn);
        tokio::spawn(async move {
            let entries = read_log(&*store, since, upto).await;
            if let Some(tx) = me.upgrade() {
                let _ = tx.send(HubMsg::Backfilled { req, upto, entries });
            }
        });
    }

    fn backfilled(&mut self, req: SubscribeRequest, upto: Seq, entries: Option<Vec<LogEntry>>) {
        // Gone, or unsubscribed while the log was read: registering it now
        // would leave a subscriber nobody removes.
        let still_held = self.conns.get(&req.conn).is_some_and(|e| e.subs.lock().contains(&req.context));
        if !still_held {
            self.unpark(req.conn);
            return self.drop_if_unused(&req.context);
        }
        let conn = req.conn;
        let Some(Slot::Live(ctx)) = self.contexts.get_mut(&req.context) else {
            // Dropped meanwhile: load it again.
            self.subscribe(req);
            return self.unpark(conn);
        };
        if let (Some(entries), Some((since, _))) = (entries, &req.since)
            && ctx.loaded_at == upto
            && !ctx.backfill(*since, &entries)
        {
            tracing::debug!(context = %req.context, since, "the log can't say what left the context: whole state");
        }
        // Answered from memory now if the backfill reached `since`, else whole.
        self.register_subscriber(req);
        self.unpark(conn);
        self.update_subscription_gauge();
    }

    fn drop_if_unused(&mut self, context: &str) {
        if let Some(Slot::Live(ctx)) = self.contexts.get(context)
            && ctx.subscribers.is_empty()
        {
            self.drop_context(context);
        }
    }

    fn refuse_waiting(&mut self, context: &str, waiting: Vec<SubscribeRequest>, e: WireError) {
        for req in waiting {
            if let Some(entry) = self.conns.get(&req.conn) {
                entry.subs.lock().remove(context);
            }
            let mut msg = ErrorMessage::new(e.clone(), req.rid.clone());
            msg.context = Some(context.to_owned());
            self.send_msg(req.conn, &ServerMessage::Error(msg));
            self.unpark(req.conn);
        }
        self.update_subscription_gauge();
    }

    fn stream_holders(&self, streams: &BTreeSet<String>) -> Vec<StreamHolder> {
        self.streams
            .subs
            .values()
            .filter(|s| streams.contains(&s.stream.name))
            .filter_map(|s| {
                let user = self.conns.get(&s.conn)?.user.clone();
                let (stream, client, decision) = (s.stream.clone(), s.client.clone(), s.decision.clone());
                Some(StreamHolder { conn: s.conn, user, sub: s.id, stream, client, decision })
            })
            .collect()
    }

    /// Ends a stream subscription the server decided again (still held by `conn`).
    fn stream_end(&mut self, conn: ConnId, sub: SubId, reason: UnsubscribeReason) {
        if self.streams.subs.get(&sub).is_none_or(|s| s.conn != conn) {
            return;
        }
        let Some(sub) = self.streams.remove(sub) else { return };
        self.update_stream_gauge();
        let msg = Unsubscribed { context: None, subscription: Some(sub.wire.to_string()), reason, rid: None };
        self.send_msg(conn, &ServerMessage::Unsubscribed(msg));
    }

    fn holders(&self, channels: &BTreeSet<String>) -> Vec<Holders> {
        let in_channels =
            |context: &String| context.split_once('/').is_some_and(|(channel, _)| channels.contains(channel));
        self.conns
            .iter()
            .filter_map(|(conn, e)| {
                let names: Vec<String> = e.subs.lock().iter().filter(|c| in_channels(c)).cloned().collect();
                let contexts: Vec<(String, Option<String>)> = names
                    .into_iter()
                    .map(|name| {
                        let class = match self.contexts.get(&name) {
                            Some(Slot::Live(ctx)) => ctx.read.class_of(*conn).map(|c| c.rules.key.clone()),
                            _ => None,
                        };
                        (name, class)
                    })
                    .collect();
                (!contexts.is_empty()).then(|| Holders { conn: *conn, user: e.user.clone(), contexts })
            })
            .collect()
    }

    fn revoke(&mut self, conn: ConnId, context: String, reason: UnsubscribeReason) {
        let held = self.conns.get(&conn).is_some_and(|e| e.subs.lock().remove(&context));
        if !held {
            return;
        }
        self.drop_subscriber(conn, &context);
        let msg = Unsubscribed { context: Some(context), subscription: None, reason, rid: None };
        self.send_msg(conn, &ServerMessage::Unsubscribed(msg));
    }

    /// A subscriber whose read rules changed moves to its new class and
    /// gets a whole state of what it reads now (no rid: the server's own).
    fn reclass(&mut self, conn: ConnId, context: String, read: Option<Arc<ContextRules>>) {
        let Some(Slot::Live(ctx)) = self.contexts.get_mut(&context) else { return };
        if !ctx.subscribers.contains(&conn) {
            return;
        }
        let now = ctx.read.class_of(conn).map(|c| c.rules.key.as_str());
        if now == read.as_ref().map(|r| r.key.as_str()) {
            return;
        }
        match &read {
            Some(rules) => ctx.join_class(conn, rules.clone()),
            None => ctx.read.remove(conn),
        }
        let (channel, anchor_id) = (ctx.channel.clone(), ctx.anchor.id);
        if let Some(user) = self.conns.get(&conn).map(|e| e.user.id) {
            self.read_keys.insert((user, context.clone()), read.as_ref().map(|r| r.key.clone()));
        }
        let req = SubscribeRequest { conn, channel, anchor_id, context, rid: None, since: None, read };
        let frames = self.state_frames(&req);
        self.send_frames(conn, &frames);
    }

    fn unsubscribe(&mut self, conn: ConnId, context: String, rid: Rid) {
        self.drop_subscriber(conn, &context);
        let msg =
            Unsubscribed { context: Some(context), subscription: None, reason: UnsubscribeReason::ClientRequest, rid };
        self.send_msg(conn, &ServerMessage::Unsubscribed(msg));
    }

    /// The state frames for a subscribe to a live context (whole or incremental).
    /// Whole states without a rid are encoded once per (context, seq, codec)
    /// and the same frames shared by everyone subscribing meanwhile.
    fn state_frames(&mut self, req: &SubscribeRequest) -> Arc<[Frame]> {
        let Some(codec) = self.conns.get(&req.conn).map(|c| c.codec) else {
            return Arc::from([]);
        };
        // Everyone else's presence rides on the state; only a state without
        // any is the same for every subscriber, and cached.
        let presence = self.presence.entries(&req.context, req.conn);
        let (epoch, limit) = (self.epoch.as_str(), self.frame_limit);
        let Some(Slot::Live(ctx)) = self.contexts.get_mut(&req.context) else {
            return Arc::from([]);
        };
        if ctx.read.is_restricted(req.conn) {
            return class_state_frames(ctx, req, codec, epoch, limit, presence);
        }
        if let Some((since, ep)) = &req.since
            && ep.as_deref() == Some(epoch)
            && let Some((instances, removed)) = ctx.changes_since(*since)
        {
            let state = State { presence, ..ctx.state_message(epoch, instances, removed, true, req.rid.clone()) };
            return split_state(codec, state, limit).into();
        }
        let shared = req.rid.is_none() && presence.is_empty();
        if shared && let Some(cached) = &ctx.state_cache[codec.index()] {
            return cached.clone();
        }
        let instances = ctx.ordered_rows();
        let state = State { presence, ..ctx.state_message(epoch, instances, Vec::new(), false, req.rid.clone()) };
        let frames: Arc<[Frame]> = split_state(codec, state, limit).into();
        if shared {
            ctx.state_cache[codec.index()] = Some(frames.clone());
        }
        frames
    }

    // ---- commits ---------------------------------------------------------

    /// Shared log: a local commit waits for the tailer to deliver its seq.
    fn await_tail(&mut self, committed: Committed, writer: Option<WriterTag>, started: Instant) {
        if committed.seq <= *self.delivered.borrow() {
            // Delivered already (never expected: the tailer hands entries over
            // under the commit lock): only the writer is left to answer.
            self.answer_writer(writer, Ok(()), &committed);
            return;
        }
        self.awaiting.insert(committed.seq, (committed, writer, started));
    }

    /// Shared log: delivers entries read by the tailer, in seq order, each once.
    async fn tailed(&mut self, entries: Vec<LogEntry>, through: Seq) {
        for entry in entries {
            let (committed, writer, started) = match self.awaiting.remove(&entry.seq) {
                Some(local) => local,
                None => {
                    (Committed { seq: entry.seq, changes: entry.changes, created: Vec::new() }, None, Instant::now())
                }
            };
            self.deliver(committed, writer, started).await;
        }
        // Local commits the log no longer shows (trimmed past): answer their writers.
        while let Some(entry) = self.awaiting.first_entry() {
            if *entry.key() > through {
                break;
            }
            let (committed, writer, started) = entry.remove();
            self.deliver(committed, writer, started).await;
        }
        if self.awaiting.is_empty() {
            for done in self.barriers.drain(..) {
                let _ = done.send(());
            }
        }
        self.seq = self.seq.max(through);
        self.delivered.send_if_modified(|d| {
            let advance = through > *d;
            if advance {
                *d = through;
            }
            advance
        });
    }

    /// One process: a commit waits, off the hub's loop, until it is durable
    /// (see [`run_durability`]); meanwhile subscribes, answers and other
    /// connections go on.
    fn await_durable(&mut self, committed: Committed, writer: Option<WriterTag>, started: Instant) {
        let seq = committed.seq;
        self.awaiting.insert(seq, (committed, writer, started));
        if let Some(tx) = &self.durability {
            let _ = tx.send(seq);
        }
    }

    /// One process: delivers the commits already durable whose `Durable`
    /// has not come yet. A load waited for the durability of everything it
    /// read: delivering those first lets the load's rows and the commits
    /// delivered after it meet at one seq (no event twice, none lost). A
    /// commit whose moved subtree is still loading is read here instead.
    async fn deliver_durable(&mut self) {
        if self.shared_log {
            return;
        }
        self.durable_through = self.durable_through.max(self.store.durable_seq());
        loop {
            self.pump();
            let next = self.awaiting.first_key_value().map(|(seq, _)| *seq);
            match next {
                Some(seq) if seq <= self.durable_through && self.moves_loading.is_some() => {
                    let Some((committed, writer, started)) = self.awaiting.remove(&seq) else { break };
                    self.moves_loading = None; // its load's answer will find nothing to do
                    let moved = load_moves(&*self.store, self.moves_to_load(&committed)).await;
                    self.deliver_with(committed, writer, started, moved);
                }
                _ => break,
            }
        }
        self.pump();
    }

    /// Every commit up to `through` is durable (or the store failed to make
    /// it so): delivered in seq order, or its writer told.
    fn durable(&mut self, through: Seq, result: Result<(), crate::store::StoreError>) {
        match result {
            Ok(()) => self.durable_through = self.durable_through.max(through),
            Err(e) => {
                while let Some(entry) = self.awaiting.first_entry() {
                    if *entry.key() > through {
                        break;
                    }
                    let (committed, writer, _) = entry.remove();
                    tracing::error!(error = %e, seq = committed.seq, "the store could not make a commit durable");
                    self.healthy.store(false, Ordering::SeqCst);
                    self.answer_writer(writer, Err(crate::error::commit_not_durable(&e)), &committed);
                }
                self.moves_loading = None;
            }
        }
        self.pump();
    }

    /// Delivers the durable commits in seq order, until one needs a moved
    /// subtree read: that read runs off the loop and the commit (and those
    /// after it) waits for `MovesLoaded`.
    fn pump(&mut self) {
        while self.moves_loading.is_none() {
            let Some((&seq, next)) = self.awaiting.first_key_value() else { break };
            if seq > self.durable_through {
                break;
            }
            let loads = self.moves_to_load(&next.0);
            if !loads.is_empty() {
                self.moves_loading = Some(seq);
                let (store, me) = (self.store.clone(), self.me.clone());
                tokio::spawn(async move {
                    let moved = load_moves(&*store, loads).await;
                    if let Some(tx) = me.upgrade() {
                        let _ = tx.send(HubMsg::MovesLoaded { seq, moved });
                    }
                });
                break;
            }
            let Some((committed, writer, started)) = self.awaiting.remove(&seq) else { break };
            self.deliver_with(committed, writer, started, Moved::new());
        }
        let seq = self.seq;
        self.delivered.send_if_modified(|d| {
            let advance = seq > *d;
            if advance {
                *d = seq;
            }
            advance
        });
        if self.awaiting.is_empty() {
            for done in self.barriers.drain(..) {
                let _ = done.send(());
            }
        }
    }

    /// The moved subtrees of commit `seq` were read: it goes, then the rest.
    fn moves_loaded(&mut self, seq: Seq, moved: Moved) {
        if self.moves_loading != Some(seq) {
            return; // delivered meanwhile (see `deliver_durable`)
        }
        self.moves_loading = None;
        if let Some((committed, writer, started)) = self.awaiting.remove(&seq) {
            self.deliver_with(committed, writer, started, moved);
        }
        self.pump();
    }

    /// Shared log: loads what the commit moved, then delivers it.
    async fn deliver(&mut self, committed: Committed, writer: Option<WriterTag>, started: Instant) {
        let moved = load_moves(&*self.store, self.moves_to_load(&committed)).await;
        self.deliver_with(committed, writer, started, moved);
    }

    /// Routes a durable commit to contexts and streams, then answers its writer.
    fn deliver_with(&mut self, committed: Committed, writer: Option<WriterTag>, started: Instant, moved: Moved) {
        self.metrics.observe_commit(started.elapsed());
        let delivered = Instant::now();
        let committed = Arc::new(committed);
        self.seq = self.seq.max(committed.seq);
        for slot in self.contexts.values_mut() {
            if let Slot::Loading { buffered, .. } = slot {
                buffered.push(committed.clone());
            }
        }
        if let Some(revalidate) = &self.revalidate {
            let touched = revalidate.watch.touched(&committed);
            if !touched.is_empty() {
                let _ = revalidate.tx.send(touched);
            }
        }
        let writer_conn = match &writer {
            Some(WriterTag { target: ReplyTarget::Conn(c), write_id, .. }) => Some((*c, *write_id)),
            _ => None,
        };
        for context in self.candidate_contexts(&committed) {
            self.route(&context, &committed, &moved, writer_conn);
        }
        for pending in self.pending_streams.values_mut() {
            pending.buffered.push(committed.clone());
        }
        self.route_streams(&committed);
        self.answer_writer(writer, Ok(()), &committed);
        self.metrics.observe_delivery(delivered.elapsed());
    }

    fn answer_writer(&mut self, writer: Option<WriterTag>, result: Result<(), WireError>, c: &Committed) {
        let Some(w) = writer else { return };
        let resp = match result {
            Ok(()) => WriteResponse {
                write_id: w.write_id,
                success: true,
                seq: Some(c.seq),
                created: c.created.clone(),
                instance_id: if w.single_create { c.created.first().map(|c| c.id) } else { None },
                rid: w.rid.clone(),
                ..Default::default()
            },
            Err(e) => WriteResponse {
                write_id: w.write_id,
                success: false,
                error: Some(e),
                rid: w.rid.clone(),
                ..Default::default()
            },
        };
        self.metrics.count_write(resp.error.as_ref());
        match w.target {
            // In its turn: behind earlier answers and a state that may carry this write.
            ReplyTarget::Conn(conn) => match self.conns.get_mut(&conn) {
                Some(entry) => {
                    let ready =
                        entry.answers.write_answered(w.write_id, ServerMessage::WriteResponse(resp), w.in_flight);
                    self.send_answers(conn, ready);
                }
                None => release(w.in_flight),
            },
            ReplyTarget::Oneshot(tx) => {
                let _ = tx.send(match resp.error.clone() {
                    Some(e) => Err(e),
                    None => Ok(resp),
                });
                if let Some(n) = w.in_flight {
                    n.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
    }

    /// Live contexts that hold a changed row or the row a changed row now references.
    fn candidate_contexts(&self, c: &Committed) -> Vec<Arc<str>> {
        let mut out = BTreeSet::new();
        for change in &c.changes {
            if let Some(set) = self.index.get(&change.key) {
                out.extend(set.iter().cloned());
            }
            let Some(after) = &change.after else { continue };
            let Some(entity) = self.schema.entity(&after.ty) else {
                continue;
            };
            for field in &entity.fields {
                if let (Some(target), Some(id)) = (field.target(), after.get_i64(&field.name))
                    && let Some(set) = self.index.get(&RowKey::new(target, id))
                {
                    out.extend(set.iter().cloned());
                }
            }
        }
        out.into_iter().collect()
    }

    /// Rows whose fields changed and that hang rows under them in a live
    /// channel: their subtrees must be read before the commit is routed
    /// (a row that moved to a new parent brings its subtree along).
    fn moves_to_load(&self, c: &Committed) -> Vec<MoveLoad> {
        let mut out = Vec::new();
        for change in &c.changes {
            let (Some(before), Some(after)) = (&change.before, &change.after) else {
                continue;
            };
            if before.fields == after.fields {
                continue;
            }
            let channels: HashMap<&str, &Arc<Channel>> = self
                .contexts
                .values()
                .filter_map(|s| match s {
                    Slot::Live(ctx) => Some((ctx.channel.name.as_str(), &ctx.channel)),
                    Slot::Loading { .. } => None,
                })
                .filter(|(_, ch)| ch.edges_from(&after.ty).next().is_some())
                .collect();
            for (name, channel) in channels {
                out.push(MoveLoad { channel: channel.clone(), name: name.to_owned(), row: after.clone() });
            }
        }
        out
    }

    fn route(&mut self, context: &str, c: &Committed, moved: &Moved, writer: Option<(ConnId, i64)>) {
        let Some(Slot::Live(ctx)) = self.contexts.get_mut(context) else {
            return;
        };
        let mut changes = Vec::new();
        let mut anchor_gone = false;
        for change in &c.changes {
            if ctx.apply(&mut self.index, c.seq, change, moved, &mut changes) {
                anchor_gone = true;
                break;
            }
        }
        if anchor_gone {
            return self.end_context(context);
        }
        if changes.is_empty() {
            return;
        }
        let changes = Arc::new(changes);
        let delta = Delta {
            context: ctx.name.to_string(),
            seq: c.seq,
            prev: ctx.last_seq,
            changes: changes.clone(),
            write_id: None,
            created: Vec::new(),
            part: None,
            last: None,
        };
        ctx.last_seq = c.seq;
        ctx.state_cache = [None, None];
        let limit = self.frame_limit;
        let own = writer.map(|(conn, write_id)| (conn, write_id, c.created.clone()));
        let mut failed: Vec<(ConnId, SendError)> = Vec::new();
        let everyone = ctx.subscribers.iter().copied().filter(|conn| !ctx.read.is_restricted(*conn));
        let mut delivered = fan_out(&self.conns, everyone, &delta, own.as_ref(), limit, &mut failed);
        // Each read class: decided once, encoded once per codec, its own `prev` chain.
        let mut ids: Vec<u32> = ctx.read.classes.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(mut class) = ctx.read.classes.remove(&id) else { continue };
            let seen = ctx.class_changes(&mut class, c.seq, &changes);
            if !seen.is_empty() {
                let delta = Delta { prev: class.last_seq, changes: Arc::new(seen), ..delta.clone() };
                class.last_seq = c.seq;
                class.state_cache = [None, None];
                let members = class.members.iter().copied();
                delivered += fan_out(&self.conns, members, &delta, own.as_ref(), limit, &mut failed);
            }
            ctx.read.classes.insert(id, class);
        }
        self.metrics.deliveries.fetch_add(delivered, Ordering::Relaxed);
        for (conn, e) in failed {
            self.send_failed(conn, e);
        }
    }

    /// The anchor was deleted: every subscriber is told and the context ends.
    fn end_context(&mut self, context: &str) {
        let Some(Slot::Live(ctx)) = self.contexts.get(context) else {
            return;
        };
        let subscribers: Vec<ConnId> = ctx.subscribers.iter().copied().collect();
        self.drop_context(context);
        self.end_presence(context);
        for conn in subscribers {
            if let Some(entry) = self.conns.get(&conn) {
                entry.subs.lock().remove(context);
            }
            let msg = Unsubscribed {
                context: Some(context.to_owned()),
                subscription: None,
                reason: UnsubscribeReason::AnchorDeleted,
                rid: None,
            };
            self.send_msg(conn, &ServerMessage::Unsubscribed(msg));
        }
        self.update_subscription_gauge();
    }
}

// ---- streams -------------------------------------------------------------

impl Hub {
    fn update_stream_gauge(&self) {
        let n = self.streams.len() + self.pending_streams.len();
        self.metrics.stream_subscriptions.store(n as u64, Ordering::Relaxed);
    }

    /// Registers a checked stream subscribe: at once, or after its snapshot
    /// (or `since` replay) is read, buffering the commits delivered meanwhile.
    fn stream_subscribe(&mut self, req: StreamSubscribeRequest) {
        if !self.conns.contains_key(&req.sub.conn) {
            return;
        }
        if let Err(e) = self.stream_within_limits(&req.sub) {
            let conn = req.sub.conn;
            return self.send_msg(conn, &ServerMessage::Error(ErrorMessage::new(e, req.rid)));
        }
        let since = req.since.and_then(|(since, ep)| (ep.as_deref() == Some(self.epoch.as_str())).then_some(since));
        let load = match (req.snapshot, since) {
            (true, _) => Some(None),
            (false, Some(since)) if since <= self.seq => Some(Some(since)),
            (false, _) => None,
        };
        let Some(since) = load else {
            return self.register_stream(req.sub, req.rid, self.seq, None);
        };
        let id = req.sub.id;
        let (store, me, settle, limit) =
            (self.store.clone(), self.me.clone(), self.settle.clone(), self.snapshot_limit);
        let entity = self.schema.entity(&req.sub.stream.ty).cloned();
        let filters = req.sub.filters.clone();
        self.pending_streams
            .insert(id, PendingSub { sub: req.sub, rid: req.rid, buffered: Vec::new(), registered_at: self.seq });
        self.update_stream_gauge();
        tokio::spawn(async move {
            let result = match (since, entity) {
                (Some(since), _) => match store.changes_since(since, MAX_REPLAY).await {
                    Ok(LogRead::Entries(entries)) => Ok(StreamLoad::Log { since, entries: Some(entries) }),
                    Ok(LogRead::Trimmed) => Ok(StreamLoad::Log { since, entries: None }),
                    Err(e) => Err(e.into()),
                },
                (None, Some(entity)) => {
                    load_snapshot(&*store, &entity, &filters, limit).await.map(StreamLoad::Snapshot)
                }
                (None, None) => Err(WireError::internal("the stream's type is not in the schema")),
            };
            // `StreamLoaded` goes behind every commit the read may have seen,
            // and only once what it read is durable.
            settle.reads().await;
            let result = match durable_after_reads(&*store).await {
                Ok(()) => result,
                Err(e) => Err(e),
            };
            if let Some(tx) = me.upgrade() {
                let _ = tx.send(HubMsg::StreamLoaded { sub: id, result });
            }
        });
    }

    /// The per-connection and per-stream limits a new stream subscription must fit.
    fn stream_within_limits(&self, sub: &StreamSub) -> Result<(), WireError> {
        let limits = &self.limits;
        let pending = self.pending_streams.values().filter(|p| p.sub.conn == sub.conn).count();
        if self.streams.count_of_conn(sub.conn) + pending >= limits.stream_subscriptions {
            return Err(WireError::new(
                ErrorReason::RateLimited,
                format!(
                    "this connection holds {} stream subscriptions already, the most allowed; unsubscribe one first",
                    limits.stream_subscriptions
                ),
            ));
        }
        if sub.route.is_none() && self.streams.unindexed_of(&sub.stream.name) >= limits.unindexed_per_stream {
            return Err(WireError::new(
                ErrorReason::RateLimited,
                format!(
                    "stream `{}` has {} subscriptions whose filters fix no indexed field, the most allowed; \
                     filter on the id or an index field",
                    sub.stream.name, limits.unindexed_per_stream
                ),
            ));
        }
        Ok(())
    }

    fn stream_loaded(&mut self, id: SubId, result: Result<StreamLoad, WireError>) {
        let Some(pending) = self.pending_streams.remove(&id) else { return };
        self.update_stream_gauge();
        let PendingSub { sub, rid, buffered, registered_at } = pending;
        if !self.conns.contains_key(&sub.conn) {
            return;
        }
        match result {
            Err(e) => self.send_msg(sub.conn, &ServerMessage::Error(ErrorMessage::new(e, rid))),
            Ok(StreamLoad::Snapshot(rows)) => {
                // The rows were read at some point after registration; the commits
                // delivered since then decide every row they touched.
                let mut rows: BTreeMap<Id, Row> =
                    rows.into_iter().filter(|r| sub.matches(r)).map(|r| (r.id, r)).collect();
                for commit in &buffered {
                    for change in commit.changes.iter().filter(|c| *c.key.ty == *sub.stream.ty) {
                        match change.after.as_ref().filter(|r| sub.matches(r)) {
                            Some(after) => rows.insert(after.id, after.clone()),
                            None => rows.remove(&change.key.id),
                        };
                    }
                }
                if rows.len() > self.snapshot_limit {
                    let e = snapshot_too_large(self.snapshot_limit);
                    return self.send_msg(sub.conn, &ServerMessage::Error(ErrorMessage::new(e, rid)));
                }
                let snapshot: Vec<Arc<Row>> = rows.values().map(|r| sub.snapshot_row(r)).collect();
                self.register_stream(sub, rid, self.seq, Some(snapshot));
            }
            Ok(StreamLoad::Log { since, entries }) => {
                let resumable = entries.as_ref().is_some_and(|es| {
                    since <= self.seq && (es.len() < MAX_REPLAY || es.last().is_some_and(|e| e.seq >= registered_at))
                });
                let Some(entries) = entries.filter(|_| resumable) else {
                    return self.register_stream(sub, rid, self.seq, None);
                };
                // The log up to the hub's seq, then what it had not reached yet.
                let mut commits: Vec<(Seq, &[Change])> =
                    entries.iter().filter(|e| e.seq <= self.seq).map(|e| (e.seq, &e.changes[..])).collect();
                let from = commits.last().map_or(since, |c| c.0);
                commits.extend(buffered.iter().filter(|c| c.seq > from).map(|c| (c.seq, &c.changes[..])));
                let mut sub = sub;
                sub.last_seq = since;
                let mut frames = Vec::new();
                for (seq, changes) in commits {
                    for change in changes.iter().filter(|c| *c.key.ty == *sub.stream.ty) {
                        let Some((action, image)) = sub.decide(change) else { continue };
                        let codec = self.conns.get(&sub.conn).map_or(Codec::Json, |c| c.codec);
                        let data = sub.data(image);
                        match EventTail::encode(codec, action, change.key.id, data.as_ref())
                            .and_then(|t| t.frame(&sub.wire, seq, sub.last_seq))
                        {
                            Ok(f) => frames.push(f),
                            Err(e) => tracing::error!(error = %e, "encoding an event failed"),
                        }
                        sub.last_seq = seq;
                    }
                }
                let (conn, last) = (sub.conn, sub.last_seq);
                sub.last_seq = since;
                self.register_stream(sub, rid, since, None);
                self.metrics.stream_events.fetch_add(frames.len() as u64, Ordering::Relaxed);
                self.send_frames(conn, &frames);
                if let Some(s) = self.streams.subs.get_mut(&id) {
                    s.last_seq = last;
                }
            }
        }
    }

    /// Makes a subscription live at `seq` and answers `subscribed`.
    fn register_stream(&mut self, mut sub: StreamSub, rid: Rid, seq: Seq, snapshot: Option<Vec<Arc<Row>>>) {
        let Some(codec) = self.conns.get(&sub.conn).map(|c| c.codec) else { return };
        sub.last_seq = seq;
        let conn = sub.conn;
        let msg = Subscribed {
            subscription: sub.wire.to_string(),
            stream: sub.stream.name.clone(),
            seq,
            scope: sub.scope.as_deref().cloned(),
            snapshot,
            part: None,
            last: None,
            rid,
        };
        self.streams.insert(sub);
        self.update_stream_gauge();
        let frames = split_subscribed(codec, msg, self.frame_limit);
        self.send_frames(conn, &frames);
    }

    fn stream_unsubscribe(&mut self, conn: ConnId, subscription: String, rid: Rid) {
        let id = super::streams::parse_wire_name(&subscription);
        let held = id.is_some_and(|id| self.streams.subs.get(&id).is_some_and(|s| s.conn == conn));
        let pending = id.is_some_and(|id| self.pending_streams.get(&id).is_some_and(|p| p.sub.conn == conn));
        match id {
            Some(id) if held => drop(self.streams.remove(id)),
            Some(id) if pending => drop(self.pending_streams.remove(&id)),
            // Not this connection's (or no longer held): nothing to do, and it says so.
            _ => {
                let e = WireError::new(
                    ErrorReason::UnknownStream,
                    format!("this connection holds no stream subscription `{subscription}`"),
                );
                let mut msg = ErrorMessage::new(e, rid);
                msg.subscription = Some(subscription);
                return self.send_msg(conn, &ServerMessage::Error(msg));
            }
        }
        self.update_stream_gauge();
        let msg = Unsubscribed {
            context: None,
            subscription: Some(subscription),
            reason: UnsubscribeReason::ClientRequest,
            rid,
        };
        self.send_msg(conn, &ServerMessage::Unsubscribed(msg));
    }

    /// Decides every change for the stream subscriptions it may concern and
    /// queues their events; each (shape, action, codec) is encoded once.
    fn route_streams(&mut self, c: &Committed) {
        if self.streams.is_empty() {
            return;
        }
        let mut out: Vec<(ConnId, Frame)> = Vec::new();
        for change in &c.changes {
            for stream in self.streams.streams_of(&change.key.ty) {
                let candidates = self.streams.candidates(&stream, change);
                self.metrics.stream_evaluations.fetch_add(candidates.len() as u64, Ordering::Relaxed);
                let mut tails: HashMap<(u32, ChangeOp, usize), Option<Arc<EventTail>>> = HashMap::new();
                for id in candidates {
                    let shape = match self.streams.subs.get(&id) {
                        Some(sub) => self.streams.shape(sub),
                        None => continue,
                    };
                    let Some(sub) = self.streams.subs.get_mut(&id) else { continue };
                    let Some((action, image)) = sub.decide(change) else { continue };
                    let Some(codec) = self.conns.get(&sub.conn).map(|e| e.codec) else { continue };
                    let tail = tails.entry((shape, action, codec.index())).or_insert_with(|| {
                        let data = sub.data(image);
                        match EventTail::encode(codec, action, change.key.id, data.as_ref()) {
                            Ok(t) => Some(Arc::new(t)),
                            Err(e) => {
                                tracing::error!(error = %e, "encoding an event failed");
                                None
                            }
                        }
                    });
                    let Some(tail) = tail else { continue };
                    match tail.frame(&sub.wire, c.seq, sub.last_seq) {
                        Ok(frame) => {
                            sub.last_seq = c.seq;
                            out.push((sub.conn, frame));
                        }
                        Err(e) => tracing::error!(error = %e, "encoding an event failed"),
                    }
                }
            }
        }
        self.metrics.stream_events.fetch_add(out.len() as u64, Ordering::Relaxed);
        for (conn, frame) in out {
            self.send_frames(conn, std::slice::from_ref(&frame));
        }
    }
}

fn snapshot_too_large(limit: usize) -> WireError {
    WireError::new(
        ErrorReason::SnapshotTooLarge,
        format!("more than {limit} rows match; narrow the filters or subscribe without `snapshot`"),
    )
}

/// The rows of `ty` that match `filters` now, at most `limit` (else 400
/// `SNAPSHOT_TOO_LARGE`): by id when the filters fix ids, by reference when
/// they fix a reference field, else a paged scan of the type.
pub(crate) async fn load_snapshot(
    store: &dyn Store,
    ty: &crate::schema::EntityType,
    filters: &CompiledFilters,
    limit: usize,
) -> Result<Vec<Row>, WireError> {
    let mut out = Vec::new();
    let keep = |rows: Vec<Row>, out: &mut Vec<Row>| -> Result<(), WireError> {
        out.extend(rows.into_iter().filter(|r| filters.matches(r)));
        if out.len() > limit { Err(snapshot_too_large(limit)) } else { Ok(()) }
    };
    if let Some(mut ids) = filters.fixed_ids() {
        ids.sort_unstable();
        ids.dedup();
        keep(store.get_many(&ty.name, &ids).await.map_err(WireError::from)?, &mut out)?;
    } else if let Some((field, ids)) = filters.fixed_reference(ty) {
        keep(store.children(&ty.name, field, &ids).await.map_err(WireError::from)?, &mut out)?;
    } else {
        let mut after = None;
        loop {
            let page = store.scan(&ty.name, after, SCAN_PAGE).await.map_err(WireError::from)?;
            let done = page.len() < SCAN_PAGE;
            after = page.last().map(|r| r.id);
            keep(page, &mut out)?;
            if done {
                break;
            }
        }
    }
    Ok(out)
}

/// Queues frames in an outbox, stopping at the first refusal.
/// Waits until every commit that reads made so far may have seen is durable
/// (call it after [`Settle::reads`]).
pub(crate) async fn durable_after_reads(store: &dyn Store) -> Result<(), WireError> {
    store.wait_durable(store.last_seq()).await.map_err(crate::error::reads_not_durable)
}

/// A write's answer was sent (or its connection is gone): one less in flight.
fn release(in_flight: answers::InFlight) {
    if let Some(n) = in_flight {
        n.fetch_sub(1, Ordering::SeqCst);
    }
}

fn offer(outbox: &Outbox, frames: &[Frame]) -> Result<(), SendError> {
    outbox.try_send_all(frames)
}

/// Frees a context: a large one on a blocking thread, so dropping its maps
/// (one deallocation per row) does not hold up the hub.
fn free(ctx: Box<LiveContext>) {
    if ctx.rows.len() > FREE_ELSEWHERE_ROWS && tokio::runtime::Handle::try_current().is_ok() {
        tokio::task::spawn_blocking(move || drop(ctx));
    }
}

fn index(index: &mut RowIndex, key: &RowKey, context: &Arc<str>) {
    match index.get_mut(key) {
        Some(set) => {
            if !set.contains(&**context) {
                set.insert(context.clone());
            }
        }
        None => {
            let mut set = FastSet::default();
            set.insert(context.clone());
            index.insert(key.clone(), set);
        }
    }
}

fn unindex(index: &mut RowIndex, key: &RowKey, context: &str) {
    if let Some(set) = index.get_mut(key) {
        set.remove(context);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

impl LiveContext {
    /// The member row that `row` hangs under in this context's tree, if any.
    fn parent_in_context(&self, row: &Row) -> Option<RowKey> {
        self.channel.edges_into(&row.ty).find_map(|edge| {
            let key = RowKey::new(edge.parent.as_str(), row.get_i64(&edge.field)?);
            self.rows.contains_key(&key).then_some(key)
        })
    }

    fn link(&mut self, index_map: &mut RowIndex, key: RowKey, parent: RowKey, row: Arc<Row>, joined: Option<Seq>) {
        self.children.entry(parent.clone()).or_default().insert(key.clone());
        self.parent.insert(key.clone(), parent);
        if let Some(seq) = joined {
            self.joined.insert(key.clone(), seq);
        }
        index(index_map, &key, &self.name);
        self.rows.insert(key, row);
    }

    /// Removes a row and its subtree, emitting a delete for each (parent first).
    fn remove_subtree(&mut self, index_map: &mut RowIndex, key: &RowKey, seq: Seq, out: &mut Vec<DeltaChange>) {
        let mut stack = vec![key.clone()];
        while let Some(k) = stack.pop() {
            let Some(row) = self.rows.remove(&k) else { continue };
            if let Some(p) = self.parent.remove(&k)
                && let Some(siblings) = self.children.get_mut(&p)
            {
                siblings.remove(&k);
            }
            if let Some(kids) = self.children.remove(&k) {
                stack.extend(kids);
            }
            self.joined.remove(&k);
            unindex(index_map, &k, &self.name);
            self.tombstones.push_back((seq, k.clone()));
            if self.tombstones.len() > TOMBSTONES
                && let Some((s, _)) = self.tombstones.pop_front()
            {
                self.tombstones_from = s;
            }
            out.push(DeltaChange {
                op: ChangeOp::Delete,
                ty: k.ty.clone(),
                id: k.id,
                version: seq.max(row.version),
                fields: Fields::new(),
            });
        }
    }

    /// Applies one committed change; returns true when the anchor was deleted.
    fn apply(
        &mut self,
        index_map: &mut RowIndex,
        seq: Seq,
        change: &crate::store::Change,
        moved: &Moved,
        out: &mut Vec<DeltaChange>,
    ) -> bool {
        let key = &change.key;
        let cached = self.rows.get(key).cloned();
        if cached.as_ref().is_some_and(|r| r.version >= seq) {
            return false; // already reflected (loaded after this commit)
        }
        let Some(after) = &change.after else {
            if cached.is_some() {
                if *key == self.anchor {
                    return true;
                }
                self.remove_subtree(index_map, key, seq, out);
            }
            return false;
        };
        let parent = self.parent_in_context(after);
        let member = *key == self.anchor || parent.is_some();
        match (cached, member) {
            (Some(old), true) => {
                let fields: Fields = after
                    .fields
                    .iter()
                    .filter(|(k, v)| old.fields.get(*k) != Some(*v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if let Some(p) = parent
                    && self.parent.get(key) != Some(&p)
                {
                    if let Some(old_p) = self.parent.insert(key.clone(), p.clone())
                        && let Some(s) = self.children.get_mut(&old_p)
                    {
                        s.remove(key);
                    }
                    self.children.entry(p).or_default().insert(key.clone());
                }
                self.rows.insert(key.clone(), Arc::new(after.clone()));
                if !fields.is_empty() {
                    out.push(DeltaChange {
                        op: ChangeOp::Update,
                        ty: key.ty.clone(),
                        id: key.id,
                        version: after.version,
                        fields,
                    });
                }
            }
            (None, true) => {
                let Some(p) = parent else { return false };
                self.link(index_map, key.clone(), p, Arc::new(after.clone()), Some(seq));
                out.push(create_change(after));
                if let Some(subtree) = moved.get(&(self.channel.name.clone(), key.clone())) {
                    for row in subtree {
                        let k = row.key();
                        if self.rows.contains_key(&k) {
                            continue;
                        }
                        if let Some(p) = self.parent_in_context(row) {
                            self.link(index_map, k, p, Arc::new(row.clone()), Some(seq));
                            out.push(create_change(row));
                        }
                    }
                }
            }
            (Some(_), false) => self.remove_subtree(index_map, key, seq, out),
            (None, false) => {}
        }
        false
    }

    /// Rows in tree order: the anchor, then each parent's children by relation order.
    fn ordered_rows(&self) -> Vec<Arc<Row>> {
        // Each type's relation position and order field, looked up once.
        let mut relation: FastMap<&str, (usize, Option<&str>)> = FastMap::default();
        for (pos, edge) in self.channel.edges.iter().enumerate() {
            relation.entry(edge.child.as_str()).or_insert((pos, edge.order_by.as_deref()));
        }
        let mut out = Vec::with_capacity(self.rows.len());
        let mut stack = vec![&self.anchor];
        let mut kids: Vec<SortKey<'_>> = Vec::new();
        while let Some(k) = stack.pop() {
            let Some(row) = self.rows.get(k) else { continue };
            out.push(row.clone());
            let Some(children) = self.children.get(k) else { continue };
            kids.clear();
            kids.extend(children.iter().filter_map(|c| {
                let (key, row) = self.rows.get_key_value(c)?;
                let (pos, order_by) = relation.get(&*row.ty).copied().unwrap_or((usize::MAX, None));
                let order = order_by.map(|f| row.get(f));
                Some(SortKey { pos, order, created: row.created, id: row.id, key })
            }));
            kids.sort_by(SortKey::cmp);
            stack.extend(kids.iter().rev().map(|s| s.key));
        }
        out
    }

    /// Extends what the context remembers back to `since` with the change log
    /// `(since, loaded_at]`: the rows that left it then (tombstones) and the
    /// rows that joined it with a moved ancestor. A removed row is one whose
    /// previous parent was in the context (or left it too). False, with
    /// nothing changed, when the log can't tell: a row with children moved
    /// out (its untouched descendants left with it, unseen in the log).
    fn backfill(&mut self, since: Seq, entries: &[LogEntry]) -> bool {
        let upto = self.loaded_at;
        let changes: Vec<(Seq, &Change)> = entries
            .iter()
            .filter(|e| e.seq > since && e.seq <= upto)
            .flat_map(|e| e.changes.iter().map(move |c| (e.seq, c)))
            .filter(|(_, c)| *c.key.ty == *self.channel.anchor || self.channel.edges_into(&c.key.ty).next().is_some())
            .collect();
        let mut removed: HashMap<RowKey, (Seq, bool)> = HashMap::new();
        loop {
            let mut grew = false;
            for (seq, change) in &changes {
                let (Some(before), false) = (&change.before, self.rows.contains_key(&change.key)) else { continue };
                if removed.contains_key(&change.key) {
                    continue;
                }
                let was_here = self.channel.edges_into(&before.ty).any(|edge| {
                    before.get_i64(&edge.field).is_some_and(|id| {
                        let parent = RowKey::new(edge.parent.as_str(), id);
                        self.rows.contains_key(&parent) || removed.contains_key(&parent)
                    })
                });
                if was_here {
                    removed.insert(change.key.clone(), (*seq, change.after.is_some()));
                    grew = true;
                }
            }
            if !grew {
                break;
            }
        }
        let moved_out_with_children =
            removed.iter().any(|(key, (_, moved))| *moved && self.channel.edges.iter().any(|e| *e.parent == *key.ty));
        if moved_out_with_children || removed.len() + self.tombstones.len() > TOMBSTONES {
            return false;
        }
        // Rows that joined with an ancestor moved in: the whole current subtree.
        for (seq, change) in &changes {
            let (Some(before), Some(after)) = (&change.before, &change.after) else { continue };
            if !self.rows.contains_key(&change.key) || self.parent_in_context(before) == self.parent_in_context(after) {
                continue;
            }
            let mut stack = vec![change.key.clone()];
            while let Some(k) = stack.pop() {
                let joined = self.joined.entry(k.clone()).or_insert(*seq);
                *joined = (*joined).max(*seq);
                stack.extend(self.children.get(&k).into_iter().flatten().cloned());
            }
        }
        let mut earlier: Vec<(Seq, RowKey)> = removed.into_iter().map(|(k, (s, _))| (s, k)).collect();
        earlier.sort();
        for t in earlier.into_iter().rev() {
            self.tombstones.push_front(t);
        }
        self.loaded_at = since;
        self.tombstones_from = since;
        true
    }

    /// Rows changed or joined after `since`, and rows that left; None when the
    /// cache can't tell (it was loaded later, or forgot old removals).
    fn changes_since(&self, since: Seq) -> Option<(Vec<Arc<Row>>, Vec<Removed>)> {
        if since < self.loaded_at || since < self.tombstones_from || since > self.last_seq {
            return None;
        }
        let instances = self
            .ordered_rows()
            .into_iter()
            .filter(|r| r.version > since || self.joined.get(&r.key()).is_some_and(|j| *j > since))
            .collect();
        let removed = self
            .tombstones
            .iter()
            .filter(|(s, k)| *s > since && !self.rows.contains_key(k))
            .map(|(_, k)| Removed { ty: k.ty.to_string(), id: k.id })
            .collect();
        Some((instances, removed))
    }

    fn state_message(
        &self,
        epoch: &str,
        instances: Vec<Arc<Row>>,
        removed: Vec<Removed>,
        incremental: bool,
        rid: Rid,
    ) -> State {
        State {
            context: self.name.to_string(),
            channel: self.channel.name.clone(),
            anchor_id: self.anchor.id,
            epoch: epoch.to_owned(),
            seq: self.last_seq,
            instances,
            incremental,
            removed,
            presence: Vec::new(),
            part: None,
            last: None,
            rid,
        }
    }
}

/// Sends a delta to `targets`: the same frames (encoded once per codec) to
/// all but the writer, who gets its own copy tagged with its write id and
/// the ids it created. Returns the frames sent.
fn fan_out(
    conns: &FastMap<ConnId, ConnEntry>,
    targets: impl Iterator<Item = ConnId>,
    delta: &Delta,
    writer: Option<&(ConnId, i64, Vec<crate::protocol::CreatedId>)>,
    limit: usize,
    failed: &mut Vec<(ConnId, SendError)>,
) -> u64 {
    let mut shared: [Option<Vec<Frame>>; 2] = [None, None];
    let mut delivered = 0u64;
    for conn in targets {
        let Some(entry) = conns.get(&conn) else { continue };
        let codec = entry.codec;
        let own;
        let frames: &[Frame] = match writer {
            Some((w, write_id, created)) if *w == conn => {
                let mine = Delta { write_id: Some(*write_id), created: created.clone(), ..delta.clone() };
                own = split_delta(codec, mine, limit);
                &own
            }
            _ => shared[codec.index()].get_or_insert_with(|| split_delta(codec, delta.clone(), limit)),
        };
        delivered += frames.len() as u64;
        if let Err(e) = offer(&entry.outbox, frames) {
            failed.push((conn, e));
        }
    }
    delivered
}

/// A restricted subscriber's state, at its class's seq: incremental when
/// `since` (of this epoch) lies within what the class remembers, else whole
/// (shared by the class when it carries no rid and no presence).
fn class_state_frames(
    ctx: &mut LiveContext,
    req: &SubscribeRequest,
    codec: Codec,
    epoch: &str,
    limit: usize,
    presence: Vec<crate::protocol::v1::PresenceEntry>,
) -> Arc<[Frame]> {
    if let (Some((since, ep)), Some(class)) = (&req.since, ctx.read.class_of(req.conn))
        && ep.as_deref() == Some(epoch)
        && let Some((instances, removed)) = ctx.class_changes_since(class, *since)
    {
        let seq = class.last_seq;
        let state = ctx.state_message(epoch, instances, removed, true, req.rid.clone());
        return split_state(codec, State { presence, seq, ..state }, limit).into();
    }
    let shared = req.rid.is_none() && presence.is_empty();
    if shared && let Some(cached) = ctx.read.class_of(req.conn).and_then(|c| c.state_cache[codec.index()].clone()) {
        return cached;
    }
    let Some(class) = ctx.read.class_of(req.conn) else { return Arc::from([]) };
    let (instances, seq) = (ctx.class_rows(class), class.last_seq);
    let state = State { presence, seq, ..ctx.state_message(epoch, instances, Vec::new(), false, req.rid.clone()) };
    let frames: Arc<[Frame]> = split_state(codec, state, limit).into();
    if shared && let Some(class) = ctx.read.class_of_mut(req.conn) {
        class.state_cache[codec.index()] = Some(frames.clone());
    }
    frames
}

/// A sibling's place among its siblings, computed once per row before sorting.
struct SortKey<'a> {
    /// The position of its relation in the channel.
    pos: usize,
    /// The relation's order field, if it has one.
    order: Option<&'a serde_json::Value>,
    created: Seq,
    id: Id,
    key: &'a RowKey,
}

impl SortKey<'_> {
    fn cmp(a: &Self, b: &Self) -> std::cmp::Ordering {
        a.pos
            .cmp(&b.pos)
            .then_with(|| compare_values(a.order, b.order))
            .then(a.created.cmp(&b.created))
            .then(a.id.cmp(&b.id))
    }
}

fn create_change(row: &Row) -> DeltaChange {
    DeltaChange {
        op: ChangeOp::Create,
        ty: row.ty.clone(),
        id: row.id,
        version: row.version,
        fields: row.fields.clone(),
    }
}

fn compare_values(a: Option<&serde_json::Value>, b: Option<&serde_json::Value>) -> std::cmp::Ordering {
    use serde_json::Value;
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            x.as_f64().partial_cmp(&y.as_f64()).unwrap_or(std::cmp::Ordering::Equal)
        }
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::Null) | None, Some(Value::Null) | None) => std::cmp::Ordering::Equal,
        (Some(Value::Null) | None, _) => std::cmp::Ordering::Less,
        (_, Some(Value::Null) | None) => std::cmp::Ordering::Greater,
        _ => std::cmp::Ordering::Equal,
    }
}
