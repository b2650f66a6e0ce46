//! The client's `ClientState`: server messages in any order (states, deltas,
//! answers, unsubscribes and errors, with made-up seqs, ids, parts and
//! epochs), interleaved with local writes, lost connections and sends. The
//! input is a little program: each step's first byte picks what happens and
//! the following bytes pick its details from small sets, so that ids,
//! contexts and write ids collide often.
//!
//! The server's messages for a context name only that context's own rows
//! (job N holds Job N, Tasks 10N..10N+2 and Comments 100N..100N+1, whose
//! references stay inside it): a server never tells `job/1` about a row of
//! `job/2`. Messages out of order, repeated, gapped, split into parts, with
//! other epochs, for writes never made: all of that is fair. Local writes
//! may name any row.
//!
//! After every step: the incremental view of every context equals the view
//! computed from scratch (the specification `state.rs` gives it), each write
//! settles at most once and only writes the client made settle, and the
//! pending count never exceeds the writes made.

use crate::Bytes as Input;
use serde_json::{Map, Value, json};
use statecast_client::state::{ClientState, Effect, ViewRow, WriteOptions};
use statecast_client::tree::{Edge, SchemaInfo, Tree};
use statecast_core::error::{ErrorReason, WireError};
use statecast_core::ids::Id;
use statecast_core::protocol::v1::{
    AppliedOutcome, ChangeOp, Delta, DeltaChange, Operation, Removed, State, UnsubscribeReason, WriteOp, WriteResponse,
};
use statecast_core::row::Row;
use statecast_core::store::CreatedId;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

const CONTEXTS: [&str; 3] = ["job/1", "job/2", "job/3"];
const TYPES: [&str; 4] = ["Job", "Task", "Comment", "User"];
const IDS: [Id; 12] = [1, 2, 3, 10, 11, 12, 100, 101, -1, -2, 4_503_599_627_370_497, 0];
const NAMES: [&str; 4] = ["a", "b", "", "zz"];

fn schema() -> SchemaInfo {
    let edge = |parent: &str, relation: &str, child: &str, field: &str, order_by: Option<&str>| Edge {
        parent: parent.into(),
        relation: relation.into(),
        child: child.into(),
        field: field.into(),
        order_by: order_by.map(Into::into),
    };
    let tree = Tree {
        name: "job".into(),
        anchor: "Job".into(),
        edges: vec![
            edge("Job", "tasks", "Task", "job", Some("name")),
            edge("Task", "comments", "Comment", "task", None),
        ],
    };
    let refs = |pairs: &[(&str, &str)]| pairs.iter().map(|(f, t)| ((*f).to_owned(), (*t).to_owned())).collect();
    SchemaInfo {
        channels: HashMap::from([("job".to_owned(), tree)]),
        references: HashMap::from([
            ("Task".to_owned(), refs(&[("job", "Job"), ("assignee", "User")])),
            ("Comment".to_owned(), refs(&[("task", "Task")])),
            ("Job".to_owned(), HashMap::new()),
            ("User".to_owned(), HashMap::new()),
        ]),
        // No field kinds, streams or defaults: the program drives contexts only.
        entities: HashMap::new(),
        streams: HashMap::new(),
        defaults: HashMap::new(),
    }
}

struct Run<'a> {
    input: Input<'a>,
    state: ClientState,
    made: BTreeSet<i64>,
    settled: BTreeSet<i64>,
}

/// Runs the program in `data`.
pub fn client_state(data: &[u8]) {
    let mut state = ClientState::new("fuzz");
    state.set_schema(schema());
    state.add_context("job/1", "job", 1);
    state.add_context("job/2", "job", 2);
    let mut run = Run { input: Input::new(data), state, made: BTreeSet::new(), settled: BTreeSet::new() };
    let mut steps = 0;
    while !run.input.is_empty() && steps < 256 {
        steps += 1;
        let effects = run.step();
        run.check(&effects);
    }
}

impl Run<'_> {
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[usize::from(self.input.byte()) % from.len()]
    }

    /// A context and its anchor's id.
    fn context(&mut self) -> (String, Id) {
        let i = self.input.below(3);
        (CONTEXTS[usize::from(i)].to_owned(), Id::from(i) + 1)
    }

    fn seq(&mut self) -> u64 {
        u64::from(self.input.below(12))
    }

    fn opt_seq(&mut self) -> Option<u64> {
        if self.input.bool() { Some(self.seq()) } else { None }
    }

    fn part(&mut self) -> (Option<u32>, Option<bool>) {
        match self.input.below(4) {
            0 => (Some(0), None),
            1 => (Some(1), Some(true)),
            2 => (Some(0), Some(false)),
            _ => (None, None),
        }
    }

    /// An id of a context's own rows (`n` = its anchor's id), or any id.
    fn id_in(&mut self, n: Option<Id>, ty: &str) -> Id {
        let Some(n) = n else { return self.pick(&IDS) };
        match ty {
            "Job" => n,
            "Task" => 10 * n + Id::from(self.input.below(3)),
            "Comment" => 100 * n + Id::from(self.input.below(2)),
            _ => 1000 + Id::from(self.input.below(2)),
        }
    }

    fn fields(&mut self, ty: &str, n: Option<Id>) -> Map<String, Value> {
        let mut f = Map::new();
        let count = self.input.below(3);
        for _ in 0..count {
            match self.input.below(4) {
                0 => {
                    f.insert("name".into(), json!(self.pick(&NAMES)));
                }
                1 if ty == "Task" => {
                    f.insert("job".into(), json!(self.id_in(n, "Job")));
                }
                1 if ty == "Comment" => {
                    f.insert("task".into(), json!(self.id_in(n, "Task")));
                }
                2 => {
                    f.insert("assignee".into(), json!(self.id_in(n, "User")));
                }
                _ => {
                    let parent = if ty == "Comment" { "task" } else { "job" };
                    f.insert(parent.into(), Value::Null);
                }
            }
        }
        f
    }

    fn created(&mut self, n: Option<Id>) -> Vec<CreatedId> {
        (0..self.input.below(3))
            .map(|_| {
                let ty = self.pick(&["Task", "Comment"]);
                CreatedId {
                    ty: ty.to_owned(),
                    temp_id: if self.input.bool() { Some(self.pick(&[-1, -2, -3])) } else { None },
                    id: self.id_in(n, ty),
                }
            })
            .collect()
    }

    fn error(&mut self) -> WireError {
        let reason = self.pick(&[ErrorReason::Denied, ErrorReason::InvalidData, ErrorReason::VersionConflict]);
        WireError::new(reason, "refused")
    }

    fn step(&mut self) -> Vec<Effect> {
        match self.input.below(10) {
            0 => {
                let (context, n) = self.context();
                let seq = self.seq();
                let epoch = self.pick(&["e1", "e2"]).to_owned();
                let incremental = self.input.bool();
                let (part, last) = self.part();
                let instances = (0..self.input.below(5))
                    .map(|_| {
                        let ty = self.pick(&TYPES);
                        let id = self.id_in(Some(n), ty);
                        let version = self.seq();
                        Arc::new(Row { ty: ty.into(), id, version, created: version, fields: self.fields(ty, Some(n)) })
                    })
                    .collect();
                let removed = (0..self.input.below(3))
                    .map(|_| {
                        let ty = self.pick(&TYPES);
                        Removed { ty: ty.to_owned(), id: self.id_in(Some(n), ty) }
                    })
                    .collect();
                let state = State {
                    context,
                    channel: "job".into(),
                    anchor_id: n,
                    epoch,
                    seq,
                    instances,
                    incremental,
                    removed,
                    presence: Vec::new(),
                    view: None,
                    part,
                    last,
                    rid: None,
                };
                self.state.apply_state(state)
            }
            1 => {
                let (context, n) = self.context();
                let seq = self.seq();
                let prev = if self.input.bool() { self.state.context_seq(&context).unwrap_or(0) } else { self.seq() };
                let seq = seq.max(prev + u64::from(self.input.below(2)));
                let write_id = if self.input.bool() { Some(i64::from(self.input.below(8))) } else { None };
                let created = self.created(Some(n));
                let (part, last) = self.part();
                let changes = (0..self.input.below(4))
                    .map(|_| {
                        let ty = self.pick(&TYPES);
                        DeltaChange {
                            op: self.pick(&[ChangeOp::Create, ChangeOp::Update, ChangeOp::Delete]),
                            ty: ty.into(),
                            id: self.id_in(Some(n), ty),
                            version: self.seq(),
                            fields: self.fields(ty, Some(n)),
                        }
                    })
                    .collect();
                let delta = Delta { context, seq, prev, changes: Arc::new(changes), write_id, created, part, last };
                self.state.apply_delta(delta)
            }
            2 => {
                let success = self.input.below(4) != 0;
                let resp = WriteResponse {
                    write_id: i64::from(self.input.below(8)),
                    success,
                    seq: self.opt_seq(),
                    created: {
                        let n = self.context().1;
                        self.created(Some(n))
                    },
                    instance_id: None,
                    duplicate: self.input.bool(),
                    error: if !success && self.input.bool() { Some(self.error()) } else { None },
                    rid: None,
                };
                self.state.on_response(&resp)
            }
            3 => {
                let context = self.pick(&CONTEXTS);
                let reason = self.pick(&[
                    UnsubscribeReason::ClientRequest,
                    UnsubscribeReason::AnchorDeleted,
                    UnsubscribeReason::PermissionLost,
                ]);
                self.state.on_unsubscribed(context, reason)
            }
            4 => {
                // An `error` naming a context: the subscription was refused (as the driver does).
                let context = self.pick(&CONTEXTS);
                self.state.on_unsubscribed(context, UnsubscribeReason::PermissionLost)
            }
            5 => self.local_write(),
            6 => {
                self.state.connection_lost();
                Vec::new()
            }
            7 => {
                for w in self.state.take_sendable() {
                    assert!(self.made.contains(&w.write_id), "sent a write never made: {w:?}");
                    assert!(!self.settled.contains(&w.write_id), "sent a settled write: {w:?}");
                }
                Vec::new()
            }
            8 => {
                let applied: Vec<AppliedOutcome> = (0..self.input.below(3))
                    .map(|_| AppliedOutcome {
                        write_id: i64::from(self.input.below(8)),
                        seq: self.seq(),
                        created: {
                            let n = self.context().1;
                            self.created(Some(n))
                        },
                    })
                    .collect();
                self.state.on_applied(&applied)
            }
            _ => {
                let (context, n) = self.context();
                self.state.add_context(&context, "job", n);
                Vec::new()
            }
        }
    }

    fn local_write(&mut self) -> Vec<Effect> {
        let context = self.pick(&CONTEXTS);
        let ops: Vec<WriteOp> = (0..=self.input.below(3))
            .map(|_| {
                let operation = self.pick(&[Operation::Save, Operation::Create, Operation::Delete]);
                let ty = self.pick(&["Task", "Comment"]);
                let (parent_type, relation) = if ty == "Task" { ("Job", "tasks") } else { ("Task", "comments") };
                let create = operation == Operation::Create;
                WriteOp {
                    operation,
                    instance_type: ty.into(),
                    instance_id: if create && self.input.bool() { None } else { Some(self.pick(&IDS)) },
                    parent_type: create.then(|| parent_type.to_owned()),
                    parent_id: create.then(|| self.pick(&IDS)),
                    relation_name: create.then(|| relation.to_owned()),
                    data: Some(self.fields(ty, None)),
                    if_version: None,
                }
            })
            .collect();
        let opts = WriteOptions { optimistic: self.input.below(4) != 0, temp_ids: self.input.bool() };
        match self.state.write(context, ops, opts) {
            Ok((write_id, _, effects)) => {
                assert!(self.made.insert(write_id), "write id {write_id} given twice");
                effects
            }
            Err(_) => Vec::new(),
        }
    }

    fn check(&mut self, effects: &[Effect]) {
        for e in effects {
            if let Effect::Settled { write_id, .. } = e {
                assert!(self.made.contains(write_id), "settled write {write_id}, which was never made");
                assert!(self.settled.insert(*write_id), "write {write_id} settled twice");
            }
        }
        assert!(self.state.pending_count() <= self.made.len() - self.settled.len());
        let contexts: Vec<String> = self.state.contexts().map(str::to_owned).collect();
        for context in contexts {
            let mut view = self.state.view(&context);
            let keys: BTreeSet<(String, Id)> = view.iter().map(|r| (r.ty.to_string(), r.key)).collect();
            assert_eq!(keys.len(), view.len(), "a row shows twice in {context}");
            view.sort_by(|a, b| (&*a.ty, a.key).cmp(&(&*b.ty, b.key)));
            let scratch = self.state.view_from_scratch(&context);
            if view != scratch {
                panic!("{context}: the incremental view differs from the view from scratch\n{}", diff(&view, &scratch));
            }
        }
    }
}

fn diff(view: &[ViewRow], scratch: &[ViewRow]) -> String {
    let show = |rows: &[ViewRow]| rows.iter().map(|r| format!("  {r:?}")).collect::<Vec<_>>().join("\n");
    format!("incremental:\n{}\nfrom scratch:\n{}", show(view), show(scratch))
}
