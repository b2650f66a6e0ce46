//! Deterministic simulation of the hub.
//!
//! A seed decides everything: which client does what, when the store
//! flushes (or fails to), how long each read takes, which connections stop
//! reading, when the process is killed. The hub runs as the state machine it
//! is ([`Hub::handle`]); its requests ([`HubIo`]) are answered on the
//! simulated clock from a model store that keeps every version of every
//! row, and real outboxes carry the frames to simulated clients, which
//! decode them (JSON or MessagePack) and apply them to their views.
//!
//! After every step the clients' frames are checked against the model:
//! - a `state` or delta leaves the view equal to the model's context at its seq;
//! - each delta's `prev` is the view's seq, and nothing changed in between;
//! - no frame carries a seq that is not durable;
//! - a writer's `writeResponse` comes after every change its commit made
//!   to the contexts it holds (the tagged delta, or a state that carries it);
//! - a confirmed write is durable (so present after any restart); a refused
//!   one is never shown;
//! - a slow consumer is cut off, never waited for.
//!
//! A failure names its seed; `STATECAST_SIM_SEED=<seed>` runs that one
//! alone, and `STATECAST_SIM_SEEDS=<n>` runs more (see docs/TESTING.md).

use super::io::{HubIo, MoveLoad, Moved, StreamRead};
use super::{
    ConnId, Hub, HubMsg, HubSettings, LiveContext, ReplyTarget, SharedSubs, Start, StreamLoad, SubscribeRequest,
    WriterTag,
};
use crate::auth::User;
use crate::channel::Channel;
use crate::engine::metrics::Metrics;
use crate::engine::revocation::Touched;
use crate::engine::streams::SubId;
use crate::error::{ErrorReason, WireError};
use crate::ids::{Id, Seq};
use crate::protocol::Codec;
use crate::protocol::v1::{ChangeOp, ServerMessage, UnsubscribeReason, Unsubscribed};
use crate::row::{Fields, Row, RowKey};
use crate::schema::{OnDelete, Schema};
use crate::store::{Change, Committed, LogEntry, StoreError};
use crate::transport::{OutboxLimits, OutboxReceiver, outbox_with};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// splitmix64: small, seedable, the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() { None } else { items.get(self.below(items.len() as u64) as usize) }
    }
}

/// A request the hub made, as the simulator's [`HubIo`] recorded it.
enum Request {
    Load { context: String, anchor_id: Id },
    ReadLog { req: SubscribeRequest, since: Seq, upto: Seq },
    Moves { seq: Seq, loads: Vec<MoveLoad> },
    Stream { sub: SubId, read: StreamRead },
    Durable(Seq),
    Delivered(Seq),
}

#[derive(Default)]
struct Outside {
    requests: Vec<Request>,
    clock: Duration,
}

struct SimIo {
    outside: Arc<parking_lot::Mutex<Outside>>,
    base: Instant,
}

impl HubIo for SimIo {
    fn now(&self) -> Instant {
        self.base + self.outside.lock().clock
    }
    fn load_context(&mut self, context: String, _channel: Arc<Channel>, anchor_id: Id) {
        self.outside.lock().requests.push(Request::Load { context, anchor_id });
    }
    fn read_log(&mut self, req: SubscribeRequest, since: Seq, upto: Seq) {
        self.outside.lock().requests.push(Request::ReadLog { req, since, upto });
    }
    fn load_moves(&mut self, seq: Seq, loads: Vec<MoveLoad>) {
        self.outside.lock().requests.push(Request::Moves { seq, loads });
    }
    fn load_stream(&mut self, sub: SubId, read: StreamRead) {
        self.outside.lock().requests.push(Request::Stream { sub, read });
    }
    fn wait_durable(&mut self, seq: Seq) {
        self.outside.lock().requests.push(Request::Durable(seq));
    }
    fn delivered(&mut self, seq: Seq) {
        self.outside.lock().requests.push(Request::Delivered(seq));
    }
    fn revalidate(&mut self, _touched: Touched) {}
    fn publish(&mut self, _text: String) {}
    fn free(&mut self, _ctx: Box<LiveContext>) {}
}

/// Every version of the store: `history[seq]` is the rows after commit `seq`.
struct ModelStore {
    history: Vec<Arc<BTreeMap<RowKey, Row>>>,
    log: Vec<LogEntry>,
    durable: Seq,
    next_id: Id,
}

impl ModelStore {
    fn last_seq(&self) -> Seq {
        self.history.len() as Seq - 1
    }
    fn rows(&self) -> &BTreeMap<RowKey, Row> {
        self.history.last().map(|r| &**r).expect("history starts with the empty store")
    }
    fn at(&self, seq: Seq) -> &BTreeMap<RowKey, Row> {
        &self.history[seq as usize]
    }
    fn of_type(&self, ty: &str) -> Vec<Id> {
        self.rows().keys().filter(|k| &*k.ty == ty).map(|k| k.id).collect()
    }

    /// Commits `changes` (one per row) at the next seq.
    fn commit(&mut self, changes: Vec<Change>) -> Committed {
        let seq = self.last_seq() + 1;
        let mut rows = self.rows().clone();
        let mut stamped = Vec::new();
        for mut change in changes {
            match &mut change.after {
                Some(after) => {
                    after.version = seq;
                    if change.before.is_none() {
                        after.created = seq;
                    }
                    rows.insert(change.key.clone(), after.clone());
                }
                None => {
                    rows.remove(&change.key);
                }
            }
            stamped.push(change);
        }
        self.history.push(Arc::new(rows));
        self.log.push(LogEntry { seq, changes: stamped.clone() });
        Committed { seq, changes: stamped, created: Vec::new() }
    }

    /// A kill -9: what was not durable is gone.
    fn crash(&mut self) {
        self.history.truncate(self.durable as usize + 1);
        self.log.retain(|e| e.seq <= self.durable);
    }

    /// The context `project/{id}` at `seq`, as a client should see it.
    fn context(&self, project: Id, seq: Seq) -> Option<BTreeMap<RowKey, Fields>> {
        let rows = self.at(seq);
        let anchor = rows.get(&RowKey::new("Project", project))?;
        let mut out = BTreeMap::from([(anchor.key(), anchor.fields.clone())]);
        let refers = |row: &Row, field: &str, ids: &BTreeSet<Id>| row.get_i64(field).is_some_and(|p| ids.contains(&p));
        let projects = BTreeSet::from([project]);
        let tasks: BTreeSet<Id> = rows
            .values()
            .filter(|r| &*r.ty == "Task" && refers(r, "project", &projects))
            .map(|r| {
                out.insert(r.key(), r.fields.clone());
                r.id
            })
            .collect();
        for r in rows.values().filter(|r| &*r.ty == "Note" && refers(r, "task", &tasks)) {
            out.insert(r.key(), r.fields.clone());
        }
        Some(out)
    }

    /// `root` and what hangs under it in the channel at `seq`.
    fn subtree(&self, root: &Row, seq: Seq) -> Vec<Row> {
        let mut out = vec![root.clone()];
        if &*root.ty == "Task" {
            let rows = self.at(seq).values();
            out.extend(rows.filter(|r| &*r.ty == "Note" && r.get_i64("task") == Some(root.id)).cloned());
        }
        out
    }
}

/// A read the hub asked for, answered when its time comes.
enum Pending {
    /// A context read at `read_seq`; answered once that is durable.
    Loaded {
        context: String,
        result: Result<Vec<Row>, WireError>,
        read_seq: Seq,
        at: Duration,
    },
    Load {
        context: String,
        anchor_id: Id,
        at: Duration,
    },
    ReadLog {
        req: SubscribeRequest,
        since: Seq,
        upto: Seq,
        at: Duration,
    },
    Moves {
        seq: Seq,
        loads: Vec<MoveLoad>,
        at: Duration,
    },
    Stream {
        sub: SubId,
        read: StreamRead,
        at: Duration,
    },
    /// A stream read done at `read_seq`; answered once that is durable.
    StreamRead {
        sub: SubId,
        result: Result<StreamLoad, WireError>,
        read_seq: Seq,
        at: Duration,
    },
}

impl Pending {
    fn at(&self) -> Duration {
        match self {
            Pending::Loaded { at, .. }
            | Pending::Load { at, .. }
            | Pending::ReadLog { at, .. }
            | Pending::Moves { at, .. }
            | Pending::Stream { at, .. }
            | Pending::StreamRead { at, .. } => *at,
        }
    }
}

/// What a client holds of one context.
#[derive(Clone, Debug, Default)]
struct View {
    seq: Seq,
    rows: BTreeMap<RowKey, Fields>,
    /// The read rules it is read under (see [`RULES`]).
    rules: u8,
    /// The `view` tag its last state carried (sent back to resume).
    tag: Option<String>,
}

/// The read rules a simulated user may have, by number: 0 reads all; 1 reads
/// the tasks whose title starts with "w5" (a hidden task hides its notes);
/// 2 reads every task without its title; 3 the tasks whose title starts
/// with "w", without it. Titles change all the time, so tasks come into
/// view and leave it with their notes.
const RULES: u8 = 4;

struct Conn {
    id: ConnId,
    rx: OutboxReceiver,
    subs: SharedSubs,
    /// Contexts whose state came on this connection (deltas may follow).
    live: BTreeSet<String>,
    /// Writes committed, by write id: their seq.
    writes: BTreeMap<i64, Seq>,
    /// Unsubscribes not answered yet: what comes for these contexts before
    /// the answer belongs to the old subscription, and a client drops it.
    closing: BTreeMap<String, u32>,
    /// Stream subscriptions by wire name: the project their filter fixes.
    streams: BTreeMap<String, Id>,
    /// Stream subscriptions whose `subscribed` came (events may follow).
    streams_live: BTreeSet<String>,
    /// Stream unsubscribes not answered yet.
    streams_closing: BTreeSet<String>,
    /// Contexts whose read rules the server was told changed: the state
    /// without a rid that follows is read under these.
    reclassing: BTreeMap<String, u8>,
    stalled: bool,
}

struct Client {
    user: Arc<User>,
    codec: Codec,
    conn: Option<Conn>,
    /// Kept across connections, as a client's cache is, to resume with `since`.
    views: BTreeMap<String, View>,
    /// The `tasks` stream filtered on a project: the tasks it holds, by project.
    stream_views: BTreeMap<Id, View>,
    next_write: i64,
    /// The read rules this user has now (see [`RULES`]).
    rules: u8,
}

/// One simulated run.
struct Sim {
    seed: u64,
    rng: Rng,
    outside: Arc<parking_lot::Mutex<Outside>>,
    base: Instant,
    schema: Arc<Schema>,
    channel: Arc<Channel>,
    /// `tasks`: Task rows, routed by the `project` index.
    stream: Arc<crate::stream::Stream>,
    next_sub: SubId,
    store: ModelStore,
    hub: Hub,
    /// Several processes on one store: commits come through the shared log.
    shared: bool,
    /// Shared log: the tailer handed the hub every commit up to here.
    tail_sent: Seq,
    /// The last seq the hub reported delivered.
    delivered: Seq,
    pending: Vec<Pending>,
    /// The highest seq the hub asked to be told durable, not told yet.
    durable_wanted: Option<Seq>,
    clients: Vec<Client>,
    next_conn: ConnId,
    /// Seqs refused to their writers since the last restart.
    refused: HashSet<Seq>,
    /// Seqs confirmed to their writers since the last restart.
    confirmed: BTreeSet<Seq>,
    step: usize,
    /// Print every message (`STATECAST_SIM_TRACE=1`).
    trace: bool,
    /// What the run did, for the report.
    stats: Stats,
}

#[derive(Default, Debug)]
struct Stats {
    commits: u64,
    deltas: u64,
    states: u64,
    confirmed: u64,
    refused: u64,
    restarts: u64,
    slow_consumers: u64,
    moves: u64,
    hub_moves: u64,
    events: u64,
}

fn schema() -> Arc<Schema> {
    Schema::builder()
        .entity("Project", |t| {
            t.string("name");
        })
        .entity("Task", |t| {
            t.reference("project", "Project").on_delete(OnDelete::Cascade);
            t.string("title");
        })
        .entity("Note", |t| {
            t.reference("task", "Task").on_delete(OnDelete::Cascade);
            t.string("text");
        })
        .relation("Project", "tasks", "Task", "project")
        .relation("Task", "notes", "Note", "task")
        .build()
        .expect("the simulation's schema")
}

fn row(ty: &str, id: Id, fields: Value) -> Row {
    let Value::Object(fields) = fields else { unreachable!("fields are an object") };
    Row { ty: Arc::from(ty), id, version: 0, created: 0, fields }
}

impl Sim {
    fn new(seed: u64) -> Self {
        let schema = schema();
        let channel =
            Arc::new(Channel::builder("project", "Project").include("tasks.notes").build(&schema).expect("channel"));
        let stream = crate::stream::Stream::builder("tasks", "Task")
            .payload(crate::stream::Payload::Full)
            .index_fields(["project"])
            .build(&schema)
            .expect("the tasks stream");
        let mut store =
            ModelStore { history: vec![Arc::new(BTreeMap::new())], log: Vec::new(), durable: 0, next_id: 1 };
        // Three projects with a task and a note each, durable before the start.
        let mut changes = Vec::new();
        for p in 1..=3 {
            let t = 10 + p;
            let n = 20 + p;
            changes.push(Change {
                key: RowKey::new("Project", p),
                before: None,
                after: Some(row("Project", p, json!({"name": format!("p{p}")}))),
            });
            changes.push(Change {
                key: RowKey::new("Task", t),
                before: None,
                after: Some(row("Task", t, json!({"project": p, "title": "t"}))),
            });
            changes.push(Change {
                key: RowKey::new("Note", n),
                before: None,
                after: Some(row("Note", n, json!({"task": t, "text": "n"}))),
            });
        }
        store.commit(changes);
        store.durable = store.last_seq();
        store.next_id = 100;
        let outside = Arc::new(parking_lot::Mutex::new(Outside::default()));
        let base = Instant::now();
        let mut rng = Rng(seed);
        // A third of the runs: several processes on one database (PostgreSQL):
        // a commit is durable once it returns, and every commit, this
        // process's and the others', reaches the hub from the log's tailer.
        let shared = rng.chance(30);
        let hub = Self::start_hub(&schema, &store, &outside, base, shared);
        let clients = (0..2 + rng.below(4))
            .map(|i| Client {
                user: Arc::new(User { id: i as Id + 1, name: format!("u{i}"), claims: Value::Null, expires_at: None }),
                codec: if rng.chance(50) { Codec::Json } else { Codec::MsgPack },
                conn: None,
                views: BTreeMap::new(),
                stream_views: BTreeMap::new(),
                next_write: 1,
                rules: rng.below(u64::from(RULES)) as u8,
            })
            .collect();
        Sim {
            seed,
            rng,
            outside,
            base,
            schema,
            channel,
            stream: Arc::new(stream),
            next_sub: 1,
            store,
            hub,
            shared,
            tail_sent: 1,
            delivered: 1,
            pending: Vec::new(),
            durable_wanted: None,
            clients,
            next_conn: 1,
            refused: HashSet::new(),
            confirmed: BTreeSet::new(),
            step: 0,
            trace: std::env::var_os("STATECAST_SIM_TRACE").is_some(),
            stats: Stats::default(),
        }
    }

    fn start_hub(
        schema: &Arc<Schema>,
        store: &ModelStore,
        outside: &Arc<parking_lot::Mutex<Outside>>,
        base: Instant,
        shared: bool,
    ) -> Hub {
        let start = Start {
            schema: schema.clone(),
            epoch: "sim".into(),
            seq: store.durable,
            shared_log: shared,
            on_bus: false,
            metrics: Arc::new(Metrics::default()),
            frame_limit: 1 << 20,
            healthy: Arc::new(AtomicBool::new(true)),
            settings: HubSettings { snapshot_limit: 1000, limits: Default::default(), conn_suffix: String::new() },
            watch: None,
        };
        Hub::new(start, Box::new(SimIo { outside: outside.clone(), base }))
    }

    fn now(&self) -> Duration {
        self.outside.lock().clock
    }

    /// A read takes 0–30 ms.
    fn later(&mut self) -> Duration {
        self.now() + Duration::from_millis(self.rng.below(30))
    }

    fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!(
            "hub simulation seed {} failed at step {}: {what}\n  rerun it alone: STATECAST_SIM_SEED={} cargo test -p statecast-core hub::sim",
            self.seed, self.step, self.seed
        )
    }

    /// Hands the hub a message, then takes the requests it made.
    fn send(&mut self, msg: HubMsg) {
        if self.trace {
            eprintln!("step {} hub <- {}", self.step, describe(&msg));
        }
        self.hub.handle(msg);
        let requests = std::mem::take(&mut self.outside.lock().requests);
        for request in requests {
            match request {
                Request::Load { context, anchor_id } => {
                    let at = self.later();
                    self.pending.push(Pending::Load { context, anchor_id, at });
                }
                Request::ReadLog { req, since, upto } => {
                    let at = self.later();
                    self.pending.push(Pending::ReadLog { req, since, upto, at });
                }
                Request::Stream { sub, read } => {
                    let at = self.later();
                    self.pending.push(Pending::Stream { sub, read, at });
                }
                Request::Moves { seq, loads } => {
                    let at = self.later();
                    self.pending.push(Pending::Moves { seq, loads, at });
                }
                Request::Durable(seq) => {
                    self.durable_wanted = Some(self.durable_wanted.unwrap_or(0).max(seq));
                }
                Request::Delivered(seq) => {
                    self.delivered = self.delivered.max(seq);
                    if seq > self.store.durable {
                        self.fail(format_args!(
                            "the hub reports seq {seq} delivered; durable is {}",
                            self.store.durable
                        ));
                    }
                }
            }
        }
    }

    fn run(&mut self, steps: usize) {
        for step in 0..steps {
            self.step = step;
            match self.rng.below(100) {
                0..=19 => self.write(),
                20..=34 => self.subscribe(),
                35..=36 => self.unsubscribe(),
                37..=38 => self.stream_subscribe(),
                39 => self.stream_unsubscribe(),
                40..=44 => self.disconnect(),
                45..=54 => self.connect(),
                55..=59 => self.toggle_stall(),
                60..=71 if self.shared => self.tail(),
                60..=71 => {
                    let fails = self.rng.chance(2);
                    self.flush(fails)
                }
                72 => self.restart(),
                73..=74 => self.reclass(),
                _ => self.advance(),
            }
            self.answer_durable();
            self.drain_all();
        }
        // Settle: every read answered, everything flushed, everyone reading.
        for client in &mut self.clients {
            if let Some(conn) = &mut client.conn {
                conn.stalled = false;
            }
        }
        for _ in 0..50 {
            self.flush(false);
            self.tail();
            self.answer_durable();
            self.outside.lock().clock += Duration::from_millis(50);
            self.complete_due();
            self.drain_all();
        }
        if let Some(p) = self.pending.first() {
            self.fail(format_args!("a read is still pending after the run settled (due at {:?})", p.at()));
        }
        self.check_settled();
    }

    // ---- the clients' moves ----------------------------------------------

    fn connected(&mut self) -> Option<usize> {
        let ids: Vec<usize> = (0..self.clients.len()).filter(|i| self.clients[*i].conn.is_some()).collect();
        self.rng.pick(&ids).copied()
    }

    fn connect(&mut self) {
        let ids: Vec<usize> = (0..self.clients.len()).filter(|i| self.clients[*i].conn.is_none()).collect();
        let Some(&c) = self.rng.pick(&ids) else { return self.advance() };
        if self.rng.chance(20) {
            // Its role changed meanwhile: resuming with `since` must not
            // keep what the old rules showed.
            self.clients[c].rules = self.rng.below(u64::from(RULES)) as u8;
        }
        let frames = 8 + self.rng.below(56) as usize;
        let (outbox, rx) = outbox_with(OutboxLimits::frames(frames));
        let id = self.next_conn;
        self.next_conn += 1;
        let subs: SharedSubs = Arc::default();
        let client = &mut self.clients[c];
        let (user, codec) = (client.user.clone(), client.codec);
        client.conn = Some(Conn {
            id,
            rx,
            subs: subs.clone(),
            live: BTreeSet::new(),
            writes: BTreeMap::new(),
            closing: BTreeMap::new(),
            streams: BTreeMap::new(),
            streams_live: BTreeSet::new(),
            streams_closing: BTreeSet::new(),
            reclassing: BTreeMap::new(),
            stalled: false,
        });
        self.send(HubMsg::Connect { conn: id, user, outbox, codec, subs });
        // A returning client resumes what it held, from its seq.
        let held: Vec<String> = self.clients[c].views.keys().cloned().collect();
        for context in held {
            self.subscribe_to(c, context);
        }
        let streams: Vec<Id> = self.clients[c].stream_views.keys().copied().collect();
        for project in streams {
            self.stream_subscribe_to(c, project);
        }
    }

    fn disconnect(&mut self) {
        let Some(c) = self.connected() else { return self.advance() };
        if let Some(conn) = self.clients[c].conn.take() {
            self.send(HubMsg::Disconnect { conn: conn.id });
        }
    }

    fn toggle_stall(&mut self) {
        let Some(c) = self.connected() else { return self.advance() };
        if let Some(conn) = &mut self.clients[c].conn {
            conn.stalled = !conn.stalled;
        }
    }

    fn subscribe(&mut self) {
        let Some(c) = self.connected() else { return self.advance() };
        let projects: Vec<Id> = (1..=4).chain(self.store.of_type("Project")).collect();
        let Some(&p) = self.rng.pick(&projects) else { return };
        self.subscribe_to(c, format!("project/{p}"));
    }

    fn subscribe_to(&mut self, c: usize, context: String) {
        let read = self.read_rules(self.clients[c].rules);
        let client = &mut self.clients[c];
        let rules = client.rules;
        let Some(conn) = &mut client.conn else { return };
        let since = client.views.get(&context).map(|v| (v.seq, Some("sim".to_owned())));
        let view = client.views.get(&context).and_then(|v| v.tag.clone());
        conn.subs.lock().insert(context.clone());
        let anchor_id = context.trim_start_matches("project/").parse().expect("a project context");
        let req = SubscribeRequest {
            conn: conn.id,
            channel: self.channel.clone(),
            anchor_id,
            context,
            // The rid names the rules the state is read under.
            rid: Some(json!(rules)),
            since,
            view,
            read,
        };
        self.send(HubMsg::Subscribe(req));
    }

    fn unsubscribe(&mut self) {
        let Some(c) = self.connected() else { return self.advance() };
        let client = &mut self.clients[c];
        let Some(conn) = &mut client.conn else { return };
        let held: Vec<String> = conn.subs.lock().iter().cloned().collect();
        let Some(context) = self.rng.pick(&held).cloned() else { return };
        conn.subs.lock().remove(&context);
        conn.live.remove(&context);
        *conn.closing.entry(context.clone()).or_default() += 1;
        client.views.remove(&context);
        let id = conn.id;
        self.send(HubMsg::Unsubscribe { conn: id, context, rid: None });
    }

    fn stream_subscribe(&mut self) {
        let Some(c) = self.connected() else { return self.advance() };
        let projects: Vec<Id> = (1..=4).chain(self.store.of_type("Project")).collect();
        let Some(&p) = self.rng.pick(&projects) else { return };
        self.stream_subscribe_to(c, p);
    }

    /// Subscribes `tasks` filtered on `project`: resuming from the client's
    /// seq when it holds that view, else with a snapshot.
    fn stream_subscribe_to(&mut self, c: usize, project: Id) {
        let id = self.next_sub;
        self.next_sub += 1;
        let client = &mut self.clients[c];
        let Some(conn) = &mut client.conn else { return };
        if conn.streams.values().any(|p| *p == project) {
            return; // one subscription per filter keeps the views simple
        }
        let since = client.stream_views.get(&project).map(|v| (v.seq, Some("sim".to_owned())));
        let filters = crate::stream::Filters::new().eq("project", json!(project));
        let Some(entity) = self.schema.entity("Task") else { return };
        let compiled = filters.compile(entity).expect("the filter compiles");
        let route = crate::engine::streams::route_of(&self.stream, &compiled, true);
        let all = crate::engine::streams::Actions::ALL;
        let sub = crate::engine::streams::StreamSub::new(id, conn.id, self.stream.clone(), compiled, all, None, route);
        let wire = sub.wire.to_string();
        conn.streams.insert(wire.clone(), project);
        let req = super::StreamSubscribeRequest { sub, rid: Some(json!(wire)), snapshot: since.is_none(), since };
        self.send(HubMsg::StreamSubscribe(Box::new(req)));
    }

    fn stream_unsubscribe(&mut self) {
        let Some(c) = self.connected() else { return self.advance() };
        let client = &mut self.clients[c];
        let Some(conn) = &mut client.conn else { return };
        let held: Vec<String> = conn.streams.keys().cloned().collect();
        let Some(wire) = self.rng.pick(&held).cloned() else { return };
        if let Some(project) = conn.streams.remove(&wire) {
            client.stream_views.remove(&project);
        }
        conn.streams_live.remove(&wire);
        conn.streams_closing.insert(wire.clone());
        let id = conn.id;
        self.send(HubMsg::StreamUnsubscribe { conn: id, subscription: wire, rid: None });
    }

    // ---- writes ----------------------------------------------------------

    fn write(&mut self) {
        let n = if self.rng.chance(20) { 2 + self.rng.below(2) } else { 1 };
        let mut changes: Vec<Change> = Vec::new();
        for _ in 0..n {
            for change in self.random_changes(&changes) {
                match changes.iter_mut().find(|c| c.key == change.key) {
                    Some(earlier) => earlier.after = change.after,
                    None => changes.push(change),
                }
            }
        }
        changes.retain(|c| c.before.is_some() || c.after.is_some());
        if changes.is_empty() {
            return self.advance();
        }
        let committed = self.store.commit(changes);
        self.stats.commits += 1;
        if self.shared {
            // The database's commit is durable when it returns.
            self.store.durable = committed.seq;
            if self.rng.chance(40) {
                return; // another process's commit: only the tailer brings it
            }
        }
        let writer = match self.connected() {
            Some(c) if self.rng.chance(85) => {
                let client = &mut self.clients[c];
                let write_id = client.next_write;
                client.next_write += 1;
                let conn = client.conn.as_mut().expect("connected");
                conn.writes.insert(write_id, committed.seq);
                Some(WriterTag {
                    target: ReplyTarget::Conn(conn.id),
                    write_id,
                    rid: None,
                    single_create: false,
                    in_flight: None,
                })
            }
            _ => None,
        };
        let started = self.base + self.now();
        // The writer reads the subtrees its commit moved while the store is
        // still at its seq; now and then that read "fails" and the hub reads
        // them itself (the path another process's commits take).
        let moved = if !self.shared && self.rng.chance(80) { Some(self.moved_by(&committed)) } else { None };
        self.send(HubMsg::Commit { committed, writer, started, moved });
    }

    /// One operation's changes against the store as `earlier` in the batch left it.
    fn random_changes(&mut self, earlier: &[Change]) -> Vec<Change> {
        let mut rows = self.store.rows().clone();
        for c in earlier {
            match &c.after {
                Some(a) => rows.insert(c.key.clone(), a.clone()),
                None => rows.remove(&c.key),
            };
        }
        let ids = |ty: &str| -> Vec<Id> { rows.keys().filter(|k| &*k.ty == ty).map(|k| k.id).collect() };
        let (projects, tasks, notes) = (ids("Project"), ids("Task"), ids("Note"));
        let get = |ty: &str, id: Id| rows.get(&RowKey::new(ty, id)).cloned();
        let update = |r: Row, field: &str, value: Value| {
            let mut after = r.clone();
            after.fields.insert(field.into(), value);
            Change { key: r.key(), before: Some(r), after: Some(after) }
        };
        let delete = |r: &Row| Change { key: r.key(), before: Some(r.clone()), after: None };
        let word = format!("w{}", self.rng.below(1000));
        match self.rng.below(10) {
            0 if projects.len() < 5 => {
                let id = self.fresh_id();
                vec![Change {
                    key: RowKey::new("Project", id),
                    before: None,
                    after: Some(row("Project", id, json!({"name": word}))),
                }]
            }
            1 if projects.len() > 1 && self.rng.chance(40) => {
                let Some(&p) = self.rng.pick(&projects) else { return vec![] };
                let Some(project) = get("Project", p) else { return vec![] };
                let mut out = vec![delete(&project)];
                for t in rows.values().filter(|r| &*r.ty == "Task" && r.get_i64("project") == Some(p)) {
                    out.push(delete(t));
                    for n in rows.values().filter(|r| &*r.ty == "Note" && r.get_i64("task") == Some(t.id)) {
                        out.push(delete(n));
                    }
                }
                out
            }
            2 => {
                let Some(&p) = self.rng.pick(&projects) else { return vec![] };
                let id = self.fresh_id();
                vec![Change {
                    key: RowKey::new("Task", id),
                    before: None,
                    after: Some(row("Task", id, json!({"project": p, "title": word}))),
                }]
            }
            3 => {
                let Some(&t) = self.rng.pick(&tasks) else { return vec![] };
                let id = self.fresh_id();
                vec![Change {
                    key: RowKey::new("Note", id),
                    before: None,
                    after: Some(row("Note", id, json!({"task": t, "text": word}))),
                }]
            }
            4 => {
                // A task moves to another project, its notes with it.
                let (Some(&t), Some(&p)) = (self.rng.pick(&tasks), self.rng.pick(&projects)) else { return vec![] };
                let Some(task) = get("Task", t) else { return vec![] };
                if task.get_i64("project") == Some(p) {
                    return vec![];
                }
                vec![update(task, "project", json!(p))]
            }
            5 => {
                let (Some(&n), Some(&t)) = (self.rng.pick(&notes), self.rng.pick(&tasks)) else { return vec![] };
                let Some(note) = get("Note", n) else { return vec![] };
                if note.get_i64("task") == Some(t) {
                    return vec![];
                }
                vec![update(note, "task", json!(t))]
            }
            6 => {
                let Some(&t) = self.rng.pick(&tasks) else { return vec![] };
                let Some(task) = get("Task", t) else { return vec![] };
                let mut out = vec![delete(&task)];
                for n in rows.values().filter(|r| &*r.ty == "Note" && r.get_i64("task") == Some(t)) {
                    out.push(delete(n));
                }
                out
            }
            7 => {
                let Some(&n) = self.rng.pick(&notes) else { return vec![] };
                get("Note", n).map(|r| vec![delete(&r)]).unwrap_or_default()
            }
            8 => {
                let Some(&n) = self.rng.pick(&notes) else { return vec![] };
                get("Note", n).map(|r| vec![update(r, "text", json!(word))]).unwrap_or_default()
            }
            _ => {
                let Some(&t) = self.rng.pick(&tasks) else { return vec![] };
                get("Task", t).map(|r| vec![update(r, "title", json!(word))]).unwrap_or_default()
            }
        }
    }

    /// What `load::moved_subtrees` reads for `committed`, from the store at its seq.
    fn moved_by(&mut self, committed: &Committed) -> Moved {
        let mut moved = Moved::new();
        for change in &committed.changes {
            let (Some(before), Some(after)) = (&change.before, &change.after) else { continue };
            if crate::engine::load::moves_subtree(&self.channel, before, after) {
                self.stats.moves += 1;
                moved.insert((self.channel.name.clone(), after.key()), self.store.subtree(after, committed.seq));
            }
        }
        moved
    }

    fn fresh_id(&mut self) -> Id {
        self.store.next_id += 1;
        self.store.next_id
    }

    // ---- the store's side ------------------------------------------------

    /// The store flushes: everything committed becomes durable, or the
    /// flush fails and the process goes down (restarting from what is durable).
    fn flush(&mut self, fails: bool) {
        if fails && self.store.durable < self.store.last_seq() {
            if let Some(through) = self.durable_wanted.take() {
                let e = StoreError::unavailable("the simulated disk is full");
                self.send(HubMsg::Durable { through, result: Err(e) });
            }
            self.drain_all();
            return self.restart();
        }
        self.store.durable = self.store.last_seq();
    }

    /// Shared log: the tailer hands the hub what was committed since its last read.
    fn tail(&mut self) {
        if !self.shared || self.tail_sent >= self.store.last_seq() {
            return;
        }
        let through = self.store.last_seq();
        let entries = self.store.log.iter().filter(|e| e.seq > self.tail_sent).cloned().collect();
        self.tail_sent = through;
        self.send(HubMsg::Tailed { entries, through });
    }

    /// A load's answer goes behind every commit its read may have seen:
    /// durable ones (one process), delivered ones (a shared log).
    fn settled(&self, read_seq: Seq) -> bool {
        if self.shared { self.delivered >= read_seq } else { self.store.durable >= read_seq }
    }

    /// Tells the hub the durability it waits for, once the store has it.
    fn answer_durable(&mut self) {
        if let Some(through) = self.durable_wanted
            && through <= self.store.durable
        {
            self.durable_wanted = None;
            self.send(HubMsg::Durable { through, result: Ok(()) });
        }
    }

    fn advance(&mut self) {
        self.outside.lock().clock += Duration::from_millis(1 + self.rng.below(20));
        self.complete_due();
    }

    /// Answers the reads whose time came, in a seeded order.
    fn complete_due(&mut self) {
        let now = self.now();
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].at() <= now {
                due.push(self.pending.swap_remove(i));
            } else {
                i += 1;
            }
        }
        while !due.is_empty() {
            let p = due.swap_remove(self.rng.below(due.len() as u64) as usize);
            self.complete(p);
        }
    }

    fn complete(&mut self, p: Pending) {
        match p {
            Pending::Load { context, anchor_id, .. } => {
                // The read happens now; its answer waits until what it read is durable.
                let read_seq = self.store.last_seq();
                let result = match self.store.context(anchor_id, read_seq) {
                    Some(_) => Ok(self.read_context(anchor_id)),
                    None => {
                        Err(WireError::new(ErrorReason::AnchorNotFound, format!("Project#{anchor_id} does not exist")))
                    }
                };
                let at = self.later();
                self.pending.push(Pending::Loaded { context, result, read_seq, at });
            }
            Pending::Loaded { context, result, read_seq, at } => {
                if !self.settled(read_seq) {
                    let at = at + Duration::from_millis(5);
                    return self.pending.push(Pending::Loaded { context, result, read_seq, at });
                }
                let durable = self.store.durable;
                self.send(HubMsg::Loaded { context, result, durable });
            }
            Pending::Stream { sub, read, .. } => {
                let read_seq = self.store.last_seq();
                let result = Ok(match read {
                    StreamRead::Since(since) => StreamLoad::Log {
                        since,
                        entries: Some(self.store.log.iter().filter(|e| e.seq > since).cloned().collect()),
                    },
                    StreamRead::Snapshot { filters, .. } => StreamLoad::Snapshot(
                        self.store
                            .rows()
                            .values()
                            .filter(|r| &*r.ty == "Task" && filters.matches(r))
                            .cloned()
                            .collect(),
                    ),
                });
                let at = self.later();
                self.pending.push(Pending::StreamRead { sub, result, read_seq, at });
            }
            Pending::StreamRead { sub, result, read_seq, at } => {
                if !self.settled(read_seq) {
                    let at = at + Duration::from_millis(5);
                    return self.pending.push(Pending::StreamRead { sub, result, read_seq, at });
                }
                let durable = self.store.durable;
                self.send(HubMsg::StreamLoaded { sub, result, durable });
            }
            Pending::ReadLog { req, since, upto, .. } => {
                let entries = self.store.log.iter().filter(|e| e.seq > since && e.seq <= upto).cloned().collect();
                self.send(HubMsg::Backfilled { req, upto, entries: Some(entries) });
            }
            Pending::Moves { seq, loads, .. } => {
                // Read as of the commit: this checks the hub's side of the
                // read (commits and loads wait for it, in order). A real
                // store reads later and may show later commits: why writers
                // read the subtrees themselves whenever they can.
                self.stats.hub_moves += 1;
                let mut moved = Moved::new();
                for MoveLoad { name, row, .. } in loads {
                    moved.insert((name, row.key()), self.store.subtree(&row, seq));
                }
                self.send(HubMsg::MovesLoaded { seq, moved });
            }
        }
    }

    /// The anchor and its tree as the store reads it now, parents first.
    fn read_context(&self, project: Id) -> Vec<Row> {
        let rows = self.store.rows();
        let mut out: Vec<Row> = rows.get(&RowKey::new("Project", project)).cloned().into_iter().collect();
        let tasks: Vec<Row> =
            rows.values().filter(|r| &*r.ty == "Task" && r.get_i64("project") == Some(project)).cloned().collect();
        for t in &tasks {
            out.extend(rows.values().filter(|r| &*r.ty == "Note" && r.get_i64("task") == Some(t.id)).cloned());
        }
        tasks.into_iter().rev().for_each(|t| out.insert(1, t));
        out
    }

    /// kill -9 and start again from what is durable.
    fn restart(&mut self) {
        self.stats.restarts += 1;
        if let Some(lost) = self.confirmed.iter().find(|s| **s > self.store.durable) {
            self.fail(format_args!(
                "write at seq {lost} was confirmed but is not durable (durable {})",
                self.store.durable
            ));
        }
        self.store.crash();
        self.store.next_id += 1000; // ids are never reused here (a store may; not this check's concern)
        self.pending.clear();
        self.durable_wanted = None;
        self.outside.lock().requests.clear();
        for client in &mut self.clients {
            client.conn = None;
        }
        self.refused.clear();
        self.confirmed.clear();
        self.hub = Self::start_hub(&self.schema, &self.store, &self.outside, self.base, self.shared);
        self.tail_sent = self.store.durable;
        self.delivered = self.store.durable;
    }

    // ---- what the clients receive ----------------------------------------

    fn drain_all(&mut self) {
        for c in 0..self.clients.len() {
            self.drain(c);
        }
    }

    fn drain(&mut self, c: usize) {
        loop {
            let Some(conn) = &mut self.clients[c].conn else { return };
            if conn.rx.is_aborted() {
                // Cut off as a slow consumer: the client reconnects later.
                self.stats.slow_consumers += 1;
                let id = conn.id;
                self.clients[c].conn = None;
                return self.send(HubMsg::Disconnect { conn: id });
            }
            if conn.stalled {
                return;
            }
            let Some(frame) = conn.rx.try_next_frame() else { return };
            let msg = match self.clients[c].codec.decode_server(&frame) {
                Ok(Some(msg)) => msg,
                Ok(None) => continue,
                Err(e) => self.fail(format_args!("a frame does not decode: {e}")),
            };
            self.receive(c, msg);
        }
    }

    fn receive(&mut self, c: usize, msg: ServerMessage) {
        if self.trace {
            eprintln!("  client {c} <- {}", serde_json::to_string(&msg).unwrap_or_default());
        }
        let closing = |context: &str| self.clients[c].conn.as_ref().is_some_and(|k| k.closing.contains_key(context));
        match &msg {
            ServerMessage::State(s) if closing(&s.context) => return,
            ServerMessage::Delta(d) if closing(&d.context) => return,
            ServerMessage::Event(e) if self.stream_closing(c, &e.subscription) => return,
            ServerMessage::Subscribed(s) if self.stream_closing(c, &s.subscription) => return,
            _ => {}
        }
        match msg {
            ServerMessage::State(state) => {
                self.stats.states += 1;
                self.check_durable(state.seq, "state");
                let rules = match state.rid.as_ref().and_then(Value::as_u64) {
                    Some(rules) => rules as u8,
                    None => match self.clients[c].conn.as_mut().and_then(|k| k.reclassing.remove(&state.context)) {
                        Some(rules) => rules,
                        None => self.fail(format_args!("a state of {} with no rid, and no reclass", state.context)),
                    },
                };
                let before = self.clients[c].views.get(&state.context).map(|v| v.rules);
                if state.incremental && before.is_some_and(|b| b != rules) {
                    self.fail(format_args!(
                        "an incremental state of {} under rules {rules} onto a view read under {before:?}",
                        state.context
                    ));
                }
                let tag = self.read_rules(rules).map(|r| r.tag.clone());
                if state.view != tag {
                    self.fail(format_args!("a state under rules {rules} carries view {:?}, not {tag:?}", state.view));
                }
                let client = &mut self.clients[c];
                let view = client.views.entry(state.context.clone()).or_default();
                view.rules = rules;
                view.tag = tag;
                if !state.incremental {
                    view.rows.clear();
                }
                for r in &state.instances {
                    view.rows.insert(r.key(), r.fields.clone());
                }
                for r in &state.removed {
                    view.rows.remove(&RowKey::new(r.ty.as_str(), r.id));
                }
                view.seq = state.seq;
                if let Some(conn) = &mut client.conn {
                    conn.live.insert(state.context.clone());
                }
                self.check_view(c, &state.context, "after a state");
            }
            ServerMessage::Delta(delta) => {
                self.stats.deltas += 1;
                self.check_durable(delta.seq, "delta");
                let live = self.clients[c].conn.as_ref().is_some_and(|k| k.live.contains(&delta.context));
                if !live {
                    self.fail(format_args!("a delta for {} before its state on this connection", delta.context));
                }
                let view = self.clients[c].views.get(&delta.context).cloned().unwrap_or_default();
                if delta.prev != view.seq {
                    self.fail(format_args!(
                        "delta {} of {} has prev {}, the view is at {}",
                        delta.seq, delta.context, delta.prev, view.seq
                    ));
                }
                let project = project_of(&delta.context);
                if self.model_view(project, delta.seq - 1, view.rules).as_ref() != Some(&view.rows) {
                    self.fail(format_args!(
                        "{} changed between seq {} and {} without a delta",
                        delta.context, view.seq, delta.seq
                    ));
                }
                if let Some(w) = delta.write_id {
                    let ours = self.clients[c].conn.as_ref().and_then(|k| k.writes.get(&w)) == Some(&delta.seq);
                    if !ours {
                        self.fail(format_args!(
                            "delta {} is tagged with write {w}, not this client's commit",
                            delta.seq
                        ));
                    }
                }
                let view = self.clients[c].views.get_mut(&delta.context).expect("held");
                let mut bad = None;
                for ch in delta.changes.iter() {
                    let key = RowKey::new(ch.ty.clone(), ch.id);
                    match ch.op {
                        ChangeOp::Create => {
                            if view.rows.insert(key.clone(), ch.fields.clone()).is_some() {
                                bad = Some(format!("create of {key}, which the view holds"));
                            }
                        }
                        ChangeOp::Update => match view.rows.get_mut(&key) {
                            Some(fields) => fields.extend(ch.fields.clone()),
                            None => bad = Some(format!("update of {key}, which the view lacks")),
                        },
                        ChangeOp::Delete => {
                            if view.rows.remove(&key).is_none() {
                                bad = Some(format!("delete of {key}, which the view lacks"));
                            }
                        }
                    }
                }
                view.seq = delta.seq;
                if let Some(bad) = bad {
                    self.fail(format_args!("delta {} of {}: {bad}", delta.seq, delta.context));
                }
                self.check_view(c, &delta.context, "after a delta");
            }
            ServerMessage::WriteResponse(resp) => {
                let Some(conn) = &mut self.clients[c].conn else { return };
                let (seq, live) = (conn.writes.remove(&resp.write_id), conn.live.clone());
                let Some(seq) = seq else {
                    self.fail(format_args!("an answer to write {} nobody is waiting for", resp.write_id))
                };
                if !resp.success {
                    self.stats.refused += 1;
                    self.refused.insert(seq);
                    return;
                }
                self.stats.confirmed += 1;
                if resp.seq != Some(seq) {
                    self.fail(format_args!(
                        "write {} answered with seq {:?}, committed at {seq}",
                        resp.write_id, resp.seq
                    ));
                }
                self.check_durable(seq, "writeResponse");
                self.confirmed.insert(seq);
                // Every change the commit made to a context held here came first.
                for context in live {
                    let p = project_of(&context);
                    let (at, rules) = self.clients[c].views.get(&context).map_or((0, 0), |v| (v.seq, v.rules));
                    let changed = self.model_view(p, seq, rules) != self.model_view(p, seq - 1, rules);
                    if changed && at < seq {
                        self.fail(format_args!(
                            "the answer to write {} (seq {seq}) came before its change to {context} (view at {at})",
                            resp.write_id
                        ));
                    }
                }
            }
            ServerMessage::Subscribed(sub) => self.stream_subscribed(c, sub),
            ServerMessage::Event(event) => self.stream_event(c, event),
            ServerMessage::Unsubscribed(Unsubscribed { subscription: Some(wire), .. }) => {
                let Some(conn) = &mut self.clients[c].conn else { return };
                if !conn.streams_closing.remove(&wire) {
                    self.fail(format_args!("stream {wire} unsubscribed, but the client did not ask"));
                }
            }
            ServerMessage::Unsubscribed(u) => {
                let Some(context) = u.context else { return };
                let client = &mut self.clients[c];
                if let Some(conn) = &mut client.conn {
                    if u.reason == UnsubscribeReason::ClientRequest {
                        match conn.closing.get_mut(&context) {
                            Some(n) if *n > 1 => *n -= 1,
                            Some(_) => drop(conn.closing.remove(&context)),
                            None => self.fail(format_args!("{context} unsubscribed, but the client did not ask")),
                        }
                        return;
                    }
                    conn.live.remove(&context);
                }
                if u.reason == UnsubscribeReason::AnchorDeleted {
                    client.views.remove(&context);
                    if self.store.rows().contains_key(&RowKey::new("Project", project_of(&context))) {
                        self.fail(format_args!("{context} ended as deleted, but its anchor exists"));
                    }
                }
            }
            ServerMessage::Error(e) if e.context.is_none() && e.rid.is_some() => {
                self.fail(format_args!("a stream subscribe refused: {:?}", e.error));
            }
            ServerMessage::Error(e) => {
                let Some(context) = e.context else {
                    self.fail(format_args!("an error with no context: {:?}", e.error));
                };
                let client = &mut self.clients[c];
                if let Some(conn) = &mut client.conn {
                    conn.live.remove(&context);
                }
                match e.error.reason {
                    ErrorReason::AnchorNotFound => {
                        client.views.remove(&context);
                    }
                    ErrorReason::RateLimited => {}
                    other => self.fail(format_args!("an unexpected error for {context}: {other:?}")),
                }
            }
            other => self.fail(format_args!("an unexpected message: {other:?}")),
        }
    }

    /// The engine's form of read rules `n` (see [`RULES`]).
    fn read_rules(&self, n: u8) -> Option<Arc<super::ContextRules>> {
        use crate::read_rule::ReadRule;
        use crate::stream::{Filters, Lookup};
        let title_starts = |prefix: &str| Filters::new().with("title", Lookup::StartsWith, prefix);
        let rule = match n {
            1 => ReadRule::rows_where(title_starts("w5")),
            2 => ReadRule::all().hide("title"),
            3 => ReadRule::rows_where(title_starts("w")).hide("title"),
            _ => return None,
        };
        let task = self.schema.entity("Task").expect("Task");
        let compiled = rule.compile(task).expect("the rule compiles");
        let key = format!("Task:{};", rule.key());
        Some(Arc::new(super::ContextRules::new(key, [("Task".to_owned(), compiled)].into())))
    }

    /// The context as a user under rules `n` reads it at `seq`, worked out
    /// here on its own (not with the engine's rule code).
    fn model_view(&self, project: Id, seq: Seq, n: u8) -> Option<BTreeMap<RowKey, Fields>> {
        let mut rows = self.store.context(project, seq)?;
        let title = |f: &Fields| f.get("title").and_then(Value::as_str).unwrap_or("").to_owned();
        let reads = |f: &Fields| match n {
            1 => title(f).starts_with("w5"),
            3 => title(f).starts_with('w'),
            _ => true,
        };
        let hidden: BTreeSet<Id> =
            rows.iter().filter(|(k, f)| &*k.ty == "Task" && !reads(f)).map(|(k, _)| k.id).collect();
        rows.retain(|k, f| match &*k.ty {
            "Task" => !hidden.contains(&k.id),
            "Note" => f.get("task").and_then(Value::as_i64).is_none_or(|t| !hidden.contains(&t)),
            _ => true,
        });
        if n >= 2 {
            for (k, f) in rows.iter_mut() {
                if &*k.ty == "Task" {
                    f.remove("title");
                }
            }
        }
        Some(rows)
    }

    /// A subscriber's rules change (what its policy reads changed): the
    /// server gives it a whole state under the new rules.
    fn reclass(&mut self) {
        let Some(c) = self.connected() else { return self.advance() };
        let Some(conn) = &self.clients[c].conn else { return };
        let live: Vec<String> = conn
            .live
            .iter()
            .filter(|x| !conn.reclassing.contains_key(*x) && !conn.closing.contains_key(*x))
            .cloned()
            .collect();
        let Some(context) = self.rng.pick(&live).cloned() else { return };
        let now = self.clients[c].views.get(&context).map_or(0, |v| v.rules);
        let rules = (now + 1 + self.rng.below(u64::from(RULES) - 1) as u8) % RULES;
        let read = self.read_rules(rules);
        self.clients[c].rules = rules;
        let Some(conn) = &mut self.clients[c].conn else { return };
        conn.reclassing.insert(context.clone(), rules);
        let id = conn.id;
        self.send(HubMsg::Reclass { conn: id, context, read });
    }

    fn stream_closing(&self, c: usize, wire: &str) -> bool {
        self.clients[c].conn.as_ref().is_some_and(|k| k.streams_closing.contains(wire))
    }

    fn stream_subscribed(&mut self, c: usize, sub: crate::protocol::v1::Subscribed) {
        self.stats.states += 1;
        self.check_durable(sub.seq, "subscribed");
        let client = &mut self.clients[c];
        let Some(conn) = &mut client.conn else { return };
        let Some(&project) = conn.streams.get(&sub.subscription) else {
            self.fail(format_args!("subscribed to {}, which the client did not ask for", sub.subscription))
        };
        conn.streams_live.insert(sub.subscription.clone());
        let view = client.stream_views.entry(project).or_default();
        let resumed_at = view.seq;
        match sub.snapshot {
            Some(rows) => view.rows = rows.iter().map(|r| (r.key(), r.fields.clone())).collect(),
            // A resume: the events after `since` follow.
            None if resumed_at == sub.seq => {}
            None => self.fail(format_args!(
                "a resume of {} at {resumed_at} answered without a snapshot at {}",
                sub.subscription, sub.seq
            )),
        }
        if let Some(view) = self.clients[c].stream_views.get_mut(&project) {
            view.seq = sub.seq;
        }
        self.check_stream_view(c, project, "after subscribed");
    }

    fn stream_event(&mut self, c: usize, event: crate::protocol::v1::Event) {
        self.stats.events += 1;
        self.check_durable(event.seq, "event");
        let Some(conn) = &self.clients[c].conn else { return };
        let Some(&project) = conn.streams.get(&event.subscription) else {
            self.fail(format_args!("an event for {}, which the client does not hold", event.subscription))
        };
        if !conn.streams_live.contains(&event.subscription) {
            self.fail(format_args!("an event for {} before its subscribed", event.subscription));
        }
        let view = self.clients[c].stream_views.get(&project).cloned().unwrap_or_default();
        if event.prev != view.seq {
            self.fail(format_args!(
                "event {} of {} has prev {}, the view is at {}",
                event.seq, event.subscription, event.prev, view.seq
            ));
        }
        // A new commit: the one before it is complete, and nothing changed in between.
        if event.seq > view.seq
            && (self.stream_rows(project, view.seq) != view.rows
                || self.stream_rows(project, event.seq - 1) != view.rows)
        {
            self.fail(format_args!(
                "stream {} changed between seq {} and {} without an event",
                event.subscription, view.seq, event.seq
            ));
        }
        let key = RowKey::new("Task", event.id);
        let fields = event.data.unwrap_or_default();
        let Some(view) = self.clients[c].stream_views.get_mut(&project) else { return };
        let fits = match event.action {
            ChangeOp::Create => view.rows.insert(key, fields).is_none(),
            ChangeOp::Update => view.rows.insert(key, fields).is_some(),
            ChangeOp::Delete => view.rows.remove(&key).is_some(),
        };
        view.seq = event.seq;
        if !fits {
            self.fail(format_args!("event {:?} of Task#{} does not fit the view", event.action, event.id));
        }
    }

    /// The tasks of `project` at `seq`, as the stream shows them.
    fn stream_rows(&self, project: Id, seq: Seq) -> BTreeMap<RowKey, Fields> {
        let rows = self.store.at(seq).values();
        let of_project = |r: &&Row| &*r.ty == "Task" && r.get_i64("project") == Some(project);
        rows.filter(of_project).map(|r| (r.key(), r.fields.clone())).collect()
    }

    fn check_stream_view(&self, c: usize, project: Id, when: &str) {
        let view = &self.clients[c].stream_views[&project];
        if self.stream_rows(project, view.seq) != view.rows {
            self.fail(format_args!(
                "{when}, client {c}'s tasks of project {project} at seq {} differ from the store",
                view.seq
            ));
        }
    }

    fn check_durable(&self, seq: Seq, what: &str) {
        if seq > self.store.durable {
            self.fail(format_args!(
                "a {what} at seq {seq} shows a commit not yet durable (durable {})",
                self.store.durable
            ));
        }
        if self.refused.contains(&seq) {
            self.fail(format_args!("a {what} shows the refused commit {seq}"));
        }
    }

    fn check_view(&self, c: usize, context: &str, when: &str) {
        let view = &self.clients[c].views[context];
        let model = self.model_view(project_of(context), view.seq, view.rules);
        if model.as_ref() != Some(&view.rows) {
            self.fail(format_args!(
                "{when}, client {c}'s view of {context} at seq {} differs from the store:\n  view:  {:?}\n  store: {:?}",
                view.seq,
                view.rows.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
                model.map(|m| m.keys().map(|k| k.to_string()).collect::<Vec<_>>())
            ));
        }
    }

    /// Once all is quiet, every subscriber holds the context as it is now.
    fn check_settled(&self) {
        for (c, client) in self.clients.iter().enumerate() {
            let Some(conn) = &client.conn else { continue };
            let held = conn.subs.lock().clone();
            for context in held {
                if !conn.live.contains(&context) {
                    self.fail(format_args!("client {c} holds {context} but never got its state"));
                }
                let view = &client.views[&context];
                let now = self.model_view(project_of(&context), self.store.last_seq(), view.rules);
                if now.as_ref() != Some(&view.rows) {
                    self.fail(format_args!("client {c}'s view of {context} is behind the store once settled"));
                }
            }
            for (wire, project) in &conn.streams {
                if !conn.streams_live.contains(wire) {
                    self.fail(format_args!("client {c} holds stream {wire} but never got its subscribed"));
                }
                let view = &client.stream_views[project];
                if self.stream_rows(*project, self.store.last_seq()) != view.rows {
                    self.fail(format_args!(
                        "client {c}'s tasks of project {project} are behind the store once settled"
                    ));
                }
            }
            if let Some((w, seq)) = conn.writes.first_key_value() {
                self.fail(format_args!("client {c}'s write {w} (seq {seq}) was never answered"));
            }
        }
    }
}

/// A message to the hub, in a line (for traces).
fn describe(msg: &HubMsg) -> String {
    match msg {
        HubMsg::Connect { conn, .. } => format!("connect c{conn}"),
        HubMsg::Disconnect { conn } => format!("disconnect c{conn}"),
        HubMsg::Subscribe(r) => {
            format!("subscribe c{} {} since {:?}", r.conn, r.context, r.since.as_ref().map(|s| s.0))
        }
        HubMsg::Unsubscribe { conn, context, .. } => format!("unsubscribe c{conn} {context}"),
        HubMsg::Commit { committed, writer, .. } => format!(
            "commit {} by {:?}: {:?}",
            committed.seq,
            writer.as_ref().map(|w| w.write_id),
            committed
                .changes
                .iter()
                .map(|c| (c.key.to_string(), c.after.as_ref().map(|a| a.fields.clone())))
                .collect::<Vec<_>>()
        ),
        HubMsg::Durable { through, result } => format!("durable {through} {:?}", result.is_ok()),
        HubMsg::MovesLoaded { seq, moved } => format!(
            "moves loaded {seq}: {:?}",
            moved.values().map(|v| v.iter().map(|r| r.key().to_string()).collect::<Vec<_>>()).collect::<Vec<_>>()
        ),
        HubMsg::Loaded { context, result, durable } => format!(
            "loaded {context} durable {durable}: {:?}",
            result.as_ref().map(|rows| rows.iter().map(|r| r.key().to_string()).collect::<Vec<_>>())
        ),
        HubMsg::Backfilled { req, upto, entries } => {
            format!("backfilled c{} {} upto {upto}: {:?}", req.conn, req.context, entries.as_ref().map(|e| e.len()))
        }
        _ => "other".into(),
    }
}

fn project_of(context: &str) -> Id {
    context.trim_start_matches("project/").parse().expect("a project context")
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("STATECAST_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let n = std::env::var("STATECAST_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000u64);
    let first = std::env::var("STATECAST_SIM_FIRST").ok().and_then(|s| s.parse().ok()).unwrap_or(0u64);
    (first..first + n).collect()
}

#[test]
fn hub_simulation_keeps_every_guarantee() {
    let mut total = Stats::default();
    let seeds = seeds();
    for &seed in &seeds {
        let mut sim = Sim::new(seed);
        sim.run(300);
        let s = &sim.stats;
        total.commits += s.commits;
        total.deltas += s.deltas;
        total.states += s.states;
        total.confirmed += s.confirmed;
        total.refused += s.refused;
        total.restarts += s.restarts;
        total.slow_consumers += s.slow_consumers;
        total.moves += s.moves;
        total.hub_moves += s.hub_moves;
        total.events += s.events;
    }
    eprintln!("hub simulation: {} seeds, {total:?}", seeds.len());
    // The workload reached every path it is meant to exercise.
    if seeds.len() >= 100 {
        assert!(total.deltas > 0 && total.states > 0 && total.confirmed > 0, "{total:?}");
        assert!(total.refused > 0 && total.restarts > 0 && total.slow_consumers > 0, "{total:?}");
        assert!(total.moves > 0 && total.hub_moves > 0 && total.events > 0, "{total:?}");
    }
}
