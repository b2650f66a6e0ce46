//! The broadcast hub: one task that receives commits in seq order, delivers
//! them once durable (a durability task reports the watermark; the loop
//! never waits on the store), routes each change to the live contexts
//! holding the row (membership follows the data), encodes each delta once
//! per codec and read class and shares the bytes, then answers the writer.
//! It also owns subscriptions: a context is loaded once, kept in memory
//! while subscribed, and its state is served from that cache.
//!
//! The hub is a state machine: messages in, its state changed, requests out
//! through [`io::HubIo`] (reads, durability waits, the clock). It never
//! awaits or spawns; `driver` runs it on tokio and the simulator in `sim`
//! runs it on a seeded schedule.
//!
//! This file holds the hub's state, its message step and subscriptions; a
//! file per concern holds the rest:
//! - `driver`: the async driver, the durability task, the log tailer, `Settle`;
//! - `io`: what the hub asks of the world;
//! - `delivery`: commits in, durability and the shared log, routing, writers' answers;
//! - `context`: a live context's tree (membership, changes, tree order, incremental states);
//! - `read_classes`: subscribers grouped by read rules;
//! - `answers`: each connection's answer order (a plain state machine);
//! - `presence`: presence in and out (the book itself is `engine/presence.rs`);
//! - `stream_subs`: stream subscriptions and their routing.

mod answers;
mod context;
mod delivery;
mod driver;
mod io;
mod presence;
mod read_classes;
#[cfg(test)]
mod sim;
mod stream_subs;

pub(crate) use driver::{HubHandle, durable_after_reads, spawn};
pub(crate) use io::Moved;
pub(crate) use read_classes::ContextRules;

use io::{HubIo, MoveLoad, StreamRead};

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
use crate::store::{Change, Committed, LogEntry};
use crate::transport::{Frame, Outbox, SendError, close_code};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

/// The hub's hot maps: foldhash, much cheaper than SipHash for the small
/// keys (ids, row keys, context names) hashed on every delivery. The hub
/// never hashes keys an attacker picks freely beyond those names.
type FastMap<K, V> = HashMap<K, V, FastHash>;
type FastSet<T> = HashSet<T, FastHash>;
#[cfg(not(test))]
type FastHash = foldhash::fast::RandomState;
/// Under test, one fixed seed: the simulation's runs repeat exactly.
#[cfg(test)]
type FastHash = foldhash::fast::FixedState;
/// Row → the live contexts holding it (names shared with the contexts).
type RowIndex = FastMap<RowKey, FastSet<Arc<str>>>;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;
use tokio::sync::oneshot;

pub(crate) type ConnId = u64;
/// The contexts a session holds; shared so the hub can drop one (anchor
/// deleted, slow consumer) and the session sees it at once.
pub(crate) type SharedSubs = Arc<parking_lot::Mutex<BTreeSet<String>>>;

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
        /// The subtrees the commit moved, read by its writer under the
        /// commit lock (see [`super::load::moved_subtrees`]); None: not read.
        moved: Option<Moved>,
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
    /// A context was read (see [`io::HubIo::load_context`]); every commit
    /// up to `durable` is durable.
    Loaded {
        context: String,
        result: Result<Vec<Row>, WireError>,
        durable: Seq,
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
        durable: Seq,
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
    /// With `since`: the `view` tag of the state the client holds.
    pub view: Option<String>,
    /// What the user may read, when the channel's policy hides something from them.
    pub read: Option<Arc<ContextRules>>,
}

/// The hub's settings.
pub(crate) struct HubSettings {
    pub snapshot_limit: usize,
    pub limits: super::ConnectionLimits,
    /// Appended to connection ids (see [`super::Inner::conn_suffix`]).
    pub conn_suffix: String,
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
    Loading {
        channel: Arc<Channel>,
        anchor_id: Id,
        waiting: Vec<SubscribeRequest>,
        /// Commits delivered while the load runs, with the subtrees they moved.
        buffered: Vec<(Arc<Committed>, Arc<Moved>)>,
    },
    Live(Box<LiveContext>),
}

/// A local commit waiting for the tailer to reach its seq.
struct Awaiting {
    committed: Committed,
    writer: Option<WriterTag>,
    started: Instant,
    /// The subtrees it moved, when its writer read them (else the hub asks).
    moved: Option<Moved>,
}

struct Hub {
    /// Where reads, durability waits and the clock come from (see [`io`]).
    io: Box<dyn HubIo>,
    /// Commits are delivered from the store's shared log (see `driver::run_tailer`).
    shared_log: bool,
    /// Commits by seq until they may be delivered: durable (one process)
    /// or read back from the shared log (several).
    awaiting: BTreeMap<Seq, Awaiting>,
    /// Barriers waiting for the awaited local commits to be delivered.
    barriers: Vec<oneshot::Sender<()>>,
    schema: Arc<Schema>,
    metrics: Arc<Metrics>,
    epoch: String,
    /// The last commit delivered.
    seq: Seq,
    /// The last seq reported delivered (see [`HubIo::delivered`]).
    reported: Seq,
    frame_limit: usize,
    healthy: Arc<AtomicBool>,
    conns: FastMap<ConnId, ConnEntry>,
    contexts: FastMap<String, Slot>,
    /// Row → the live contexts holding it (routing never reads the store).
    index: RowIndex,
    streams: StreamRegistry,
    pending_streams: HashMap<SubId, PendingSub>,
    snapshot_limit: usize,
    limits: super::ConnectionLimits,
    /// What policies read, so commits touching it are reported (none when
    /// no policy declares what it reads).
    watch: Option<super::revocation::Watch>,
    presence: super::presence::PresenceBook,
    /// Other processes share the store and its bus.
    on_bus: bool,
    /// Makes connection ids unique across the processes on a bus (`@…`).
    conn_suffix: String,
    /// One process: every commit up to here is durable.
    durable_through: Seq,
    /// Shared log: the tailer read every commit up to here.
    tail_through: Seq,
    /// The commit whose moved subtrees are being read (the commits after it
    /// wait for it).
    moves_loading: Option<Seq>,
    /// Loads that must wait for a commit still being delivered (see `must_wait`).
    deferred: Vec<HubMsg>,
    /// The read class key each (user, context) last subscribed with: a
    /// resume with `since` under other rules gets a whole state.
    read_keys: FastMap<(Id, String), Option<String>>,
    /// The subscription gauge is behind (see `update_subscription_gauge`).
    gauge_dirty: bool,
    gauge_at: Instant,
}

/// What a hub starts from.
pub(crate) struct Start {
    pub schema: Arc<Schema>,
    pub epoch: String,
    /// The store's last commit.
    pub seq: Seq,
    pub shared_log: bool,
    pub on_bus: bool,
    pub metrics: Arc<Metrics>,
    pub frame_limit: usize,
    pub healthy: Arc<AtomicBool>,
    pub settings: HubSettings,
    pub watch: Option<super::revocation::Watch>,
}

/// The most (user, context) read keys remembered (then forgotten at once:
/// an unknown pair keeps `since`, as before rules existed).
const READ_KEYS_KEPT: usize = 100_000;

/// The revalidator's inbox and what it watches.
pub(crate) struct Revalidate {
    pub watch: super::revocation::Watch,
    pub tx: tokio::sync::mpsc::UnboundedSender<super::revocation::Touched>,
}

impl Hub {
    fn new(start: Start, io: Box<dyn HubIo>) -> Self {
        let origin = start.on_bus.then(|| start.settings.conn_suffix.trim_start_matches('@').to_owned());
        let gauge_at = io.now();
        Hub {
            io,
            shared_log: start.shared_log,
            awaiting: BTreeMap::new(),
            barriers: Vec::new(),
            schema: start.schema,
            metrics: start.metrics,
            epoch: start.epoch,
            seq: start.seq,
            reported: start.seq,
            frame_limit: start.frame_limit,
            healthy: start.healthy,
            conns: FastMap::default(),
            contexts: FastMap::default(),
            index: RowIndex::default(),
            streams: StreamRegistry::default(),
            pending_streams: HashMap::new(),
            snapshot_limit: start.settings.snapshot_limit,
            limits: start.settings.limits,
            watch: start.watch,
            presence: super::presence::PresenceBook::new(origin),
            on_bus: start.on_bus,
            conn_suffix: start.settings.conn_suffix,
            durable_through: start.seq,
            tail_through: start.seq,
            moves_loading: None,
            deferred: Vec::new(),
            read_keys: FastMap::default(),
            gauge_dirty: false,
            gauge_at,
        }
    }

    /// The subscription gauge waits for a recount.
    fn gauge_dirty(&self) -> bool {
        self.gauge_dirty
    }

    /// One step: a message in, the hub's state changed, its requests out.
    fn handle(&mut self, msg: HubMsg) {
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
            HubMsg::Commit { committed, writer, started, moved } => {
                self.note_commit(&writer);
                let awaiting = Awaiting { committed, writer, started, moved };
                if self.shared_log { self.await_tail(awaiting) } else { self.await_durable(awaiting) }
            }
            HubMsg::Durable { through, result } => self.durable(through, result),
            HubMsg::MovesLoaded { seq, moved } => self.moves_loaded(seq, moved),
            HubMsg::Tailed { entries, through } => self.tailed(entries, through),
            HubMsg::Subscribe(req) => self.subscribe(req),
            HubMsg::Loaded { context, result, durable } => {
                if self.must_wait(durable) {
                    return self.deferred.push(HubMsg::Loaded { context, result, durable });
                }
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
            HubMsg::StreamLoaded { sub, result, durable } => {
                if self.must_wait(durable) {
                    return self.deferred.push(HubMsg::StreamLoaded { sub, result, durable });
                }
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
        let held = std::mem::take(&mut *entry.subs.lock());
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
            self.io.free(ctx);
        }
    }

    /// Recounted at most every [`GAUGE_EVERY`]: a recount walks every live
    /// context, and a mass revocation or disconnect would do it per removal.
    fn update_subscription_gauge(&mut self) {
        if self.io.now().saturating_duration_since(self.gauge_at) < driver::GAUGE_EVERY {
            self.gauge_dirty = true;
            return;
        }
        self.recount_subscriptions();
    }

    fn recount_subscriptions(&mut self) {
        self.gauge_dirty = false;
        self.gauge_at = self.io.now();
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
                self.io.load_context(context, channel, anchor_id);
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
        let mut anchor_gone = false;
        for (commit, moved) in &buffered {
            for change in &commit.changes {
                let mut sink = Vec::new();
                if ctx.apply(&mut self.index, commit.seq, change, moved, &mut sink) {
                    anchor_gone = true;
                }
            }
        }
        if anchor_gone {
            for key in ctx.rows.keys() {
                unindex(&mut self.index, key, &context);
            }
            self.io.free(ctx);
            let e = WireError::new(ErrorReason::AnchorNotFound, format!("{anchor} was deleted"));
            return self.refuse_waiting(&context, waiting, e);
        }
        ctx.tombstones_from = self.seq;
        ctx.tombstones.clear();
        ctx.joined.clear();
        self.contexts.insert(context.clone(), Slot::Live(ctx));
        let mut backfilling = false;
        for req in waiting {
            let conn = req.conn;
            if matches!(self.contexts.get(&context), Some(Slot::Live(_))) {
                backfilling |= req.since.is_some();
                self.answer_subscribe(req);
            } else {
                // An earlier subscriber here was cut off as a slow consumer
                // and took the context with it: this one loads it again.
                self.subscribe(req);
            }
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
            let Some((since, _)) = req.since else { return };
            self.park(req.conn);
            return self.io.read_log(req, since, upto);
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
            // The client names the rules its state was read under (`view`),
            // which survives restarts and other processes; this process's
            // memory covers a client that does not say.
            let tag = req.read.as_ref().map(|r| r.tag.clone());
            if before.is_some_and(|b| b != now) || (req.since.is_some() && req.view != tag) {
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
        let req = SubscribeRequest { conn, channel, anchor_id, context, rid: None, since: None, view: None, read };
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
        let view = Some(class.rules.tag.clone());
        return split_state(codec, State { presence, seq, view, ..state }, limit).into();
    }
    let shared = req.rid.is_none() && presence.is_empty();
    if shared && let Some(cached) = ctx.read.class_of(req.conn).and_then(|c| c.state_cache[codec.index()].clone()) {
        return cached;
    }
    let Some(class) = ctx.read.class_of(req.conn) else { return Arc::from([]) };
    let (instances, seq) = (ctx.class_rows(class), class.last_seq);
    let view = Some(class.rules.tag.clone());
    let state =
        State { presence, seq, view, ..ctx.state_message(epoch, instances, Vec::new(), false, req.rid.clone()) };
    let frames: Arc<[Frame]> = split_state(codec, state, limit).into();
    if shared && let Some(class) = ctx.read.class_of_mut(req.conn) {
        class.state_cache[codec.index()] = Some(frames.clone());
    }
    frames
}
