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
//! The clients also hold `tasks` stream subscriptions (checked event by
//! event) and read rules that hide rows and fields (changed while
//! subscribed and while away); a third of the runs are the shared-log case
//! (several processes on one database).
//!
//! A failure names its seed; `STATECAST_SIM_SEED=<seed>` runs that one
//! alone, and `STATECAST_SIM_SEEDS=<n>` runs more (see TESTING.md).
//!
//! Files: `model` (the store and the seeded randomness), `outside` (the
//! hub's requests answered on the simulated clock), `clients` (what the
//! clients hold and do), `checks` (what they receive, checked).

mod checks;
mod clients;
mod model;
mod outside;

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

use clients::{Client, RULES};
use model::{ModelStore, Rng, project_of, row, schema};
use outside::{Outside, Pending, Request, SimIo};

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
    /// Who shows what presence in each context (the truth clients must see).
    presence: BTreeMap<String, BTreeMap<ConnId, Value>>,
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
    presence: u64,
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
            presence: BTreeMap::new(),
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
                75..=77 => self.set_presence(),
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
        total.presence += s.presence;
    }
    eprintln!("hub simulation: {} seeds, {total:?}", seeds.len());
    // The workload reached every path it is meant to exercise.
    if seeds.len() >= 100 {
        assert!(total.deltas > 0 && total.states > 0 && total.confirmed > 0, "{total:?}");
        assert!(total.refused > 0 && total.restarts > 0 && total.slow_consumers > 0, "{total:?}");
        assert!(total.moves > 0 && total.hub_moves > 0 && total.events > 0 && total.presence > 0, "{total:?}");
    }
}
