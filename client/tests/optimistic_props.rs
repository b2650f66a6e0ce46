//! Property: for random interleavings of local writes, other users' changes,
//! confirmations and refusals, the (incremental) view always equals canonical
//! with the remaining pending writes replayed in order — computed here by an
//! independent model — and once every write settles it equals the server's.

mod common;

use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};
use statecast_client::state::{ClientState, Effect, WriteOptions};
use statecast_core::error::{ErrorReason, WireError};
use statecast_core::protocol::v1::{ChangeOp, DeltaChange, Operation, Write, WriteOp, WriteResponse};
use statecast_core::store::CreatedId;
use std::collections::{BTreeMap, HashSet, VecDeque};

#[derive(Clone, Debug)]
enum Action {
    Save {
        pick: usize,
        status: u8,
    },
    Create {
        temp: bool,
    },
    Delete {
        pick: usize,
    },
    /// The server takes the next sent write.
    Deliver {
        accept: bool,
    },
    /// Another user changes the server's rows.
    Other {
        kind: u8,
        pick: usize,
        status: u8,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (any::<usize>(), 0u8..3).prop_map(|(pick, status)| Action::Save { pick, status }),
        2 => any::<bool>().prop_map(|temp| Action::Create { temp }),
        1 => any::<usize>().prop_map(|pick| Action::Delete { pick }),
        4 => any::<bool>().prop_map(|accept| Action::Deliver { accept }),
        2 => (0u8..3, any::<usize>(), 0u8..3).prop_map(|(kind, pick, status)| Action::Other { kind, pick, status }),
    ]
}

const STATUSES: [&str; 3] = ["todo", "doing", "done"];

/// The server: task rows under job 1, a seq, the writes it applied.
struct Server {
    tasks: BTreeMap<i64, Value>,
    seq: u64,
    next_id: i64,
    applied: HashSet<i64>,
    inbox: VecDeque<Write>,
}

/// The test's own model of what the view must be.
struct Model {
    /// Server rows as delivered to the client, by real id.
    known: BTreeMap<i64, Value>,
    /// Unsettled client writes, in order: (writeId, op kind, stable key, data).
    pending: Vec<(i64, Operation, i64, Value)>,
    /// Real id → temp key.
    alias: BTreeMap<i64, i64>,
}

impl Model {
    fn expected(&self) -> BTreeMap<i64, Value> {
        let mut view: BTreeMap<i64, Value> =
            self.known.iter().map(|(id, v)| (*self.alias.get(id).unwrap_or(id), v.clone())).collect();
        for (_, op, key, data) in &self.pending {
            match op {
                Operation::Save => {
                    if let Some(Value::Object(row)) = view.get_mut(key)
                        && let Value::Object(d) = data
                    {
                        row.extend(d.clone());
                    }
                }
                Operation::Delete => {
                    view.remove(key);
                }
                Operation::Create => {
                    view.entry(*key).or_insert_with(|| data.clone());
                }
                Operation::Batch => {}
            }
        }
        view
    }
}

fn op(operation: Operation, id: Option<i64>, data: Option<Value>) -> WriteOp {
    let create = operation == Operation::Create;
    WriteOp {
        operation,
        instance_type: "Task".into(),
        instance_id: id,
        parent_type: create.then(|| "Job".into()),
        parent_id: create.then_some(1),
        relation_name: create.then(|| "tasks".into()),
        data: data.and_then(|d| d.as_object().cloned()),
        if_version: None,
    }
}

fn view_tasks(c: &ClientState) -> BTreeMap<i64, Value> {
    c.view("job/1").into_iter().filter(|r| &*r.ty == "Task").map(|r| (r.key, Value::Object(r.fields))).collect()
}

fn apply(c: &mut ClientState, model: &mut Model, effects: Vec<Effect>) {
    for e in effects {
        if let Effect::Settled { write_id, .. } = e {
            model.pending.retain(|(w, ..)| *w != write_id);
        }
    }
    let _ = c;
}

/// The server handles one write: applies it or refuses it, then answers like the engine does.
fn deliver(server: &mut Server, c: &mut ClientState, model: &mut Model, accept: bool) {
    let Some(w) = server.inbox.pop_front() else { return };
    let ops = w.row_ops().expect("ops");
    let deps_ok = w.after.iter().all(|a| server.applied.contains(a));
    let mut reason = (!accept).then_some(ErrorReason::Denied);
    if !deps_ok {
        reason = Some(ErrorReason::DependencyFailed);
    }
    let o = &ops[0];
    let target = o.instance_id.unwrap_or(0);
    if reason.is_none() && o.operation != Operation::Create && !server.tasks.contains_key(&target) {
        reason = Some(ErrorReason::NotFound);
    }
    if let Some(reason) = reason {
        let resp = WriteResponse {
            write_id: w.write_id,
            success: false,
            error: Some(WireError::new(reason, "no")),
            ..Default::default()
        };
        let effects = c.on_response(&resp);
        apply(c, model, effects);
        return;
    }
    let prev = server.seq;
    server.seq += 1;
    let seq = server.seq;
    let (change, created) = match o.operation {
        Operation::Save => {
            let row = server.tasks.get_mut(&target).expect("exists");
            let data = o.data.clone().unwrap_or_default();
            if let Value::Object(r) = row {
                r.extend(data.clone());
            }
            (DeltaChange { op: ChangeOp::Update, ty: "Task".into(), id: target, version: seq, fields: data }, vec![])
        }
        Operation::Delete => {
            server.tasks.remove(&target);
            (change(ChangeOp::Delete, "Task", target, seq, json!({})), vec![])
        }
        _ => {
            let (id, temp) = if target < 0 {
                server.next_id += 1;
                (server.next_id, Some(target))
            } else {
                (target, None)
            };
            let mut data = o.data.clone().unwrap_or_default();
            data.insert("job".into(), json!(1));
            server.tasks.insert(id, Value::Object(data.clone()));
            if let Some(t) = temp {
                model.alias.insert(id, t);
            }
            let created = vec![CreatedId { ty: "Task".into(), temp_id: temp, id }];
            (DeltaChange { op: ChangeOp::Create, ty: "Task".into(), id, version: seq, fields: data }, created)
        }
    };
    server.applied.insert(w.write_id);
    // The server's copy to this client carries the writeId, then the response.
    model.known = server.tasks.clone();
    let mut d = delta("job/1", prev, seq, vec![change], Some(w.write_id));
    d.created = created.clone();
    let effects = c.apply_delta(d);
    apply(c, model, effects);
    let effects = c.on_response(&WriteResponse {
        write_id: w.write_id,
        success: true,
        seq: Some(seq),
        created,
        ..Default::default()
    });
    apply(c, model, effects);
}

fn other_user(server: &mut Server, c: &mut ClientState, model: &mut Model, kind: u8, pick: usize, status: u8) {
    let ids: Vec<i64> = server.tasks.keys().copied().collect();
    let prev = server.seq;
    let seq = prev + 1;
    let change = match (kind, ids.is_empty()) {
        (0, false) => {
            let id = ids[pick % ids.len()];
            let data = json!({"status": STATUSES[status as usize]});
            if let Some(Value::Object(r)) = server.tasks.get_mut(&id) {
                r.extend(data.as_object().cloned().unwrap_or_default());
            }
            change(ChangeOp::Update, "Task", id, seq, data)
        }
        (1, false) => {
            let id = ids[pick % ids.len()];
            server.tasks.remove(&id);
            change(ChangeOp::Delete, "Task", id, seq, json!({}))
        }
        _ => {
            server.next_id += 1;
            let data = json!({"job": 1, "name": "other", "status": "todo"});
            server.tasks.insert(server.next_id, data.clone());
            change(ChangeOp::Create, "Task", server.next_id, seq, data)
        }
    };
    server.seq = seq;
    model.known = server.tasks.clone();
    let effects = c.apply_delta(delta("job/1", prev, seq, vec![change], None));
    apply(c, model, effects);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_view_is_canonical_with_pending_writes_replayed(actions in prop::collection::vec(action(), 1..60), settle in prop::collection::vec(any::<bool>(), 64)) {
        let mut c = loaded();
        let mut server = Server {
            tasks: [(1, json!({"job": 1, "name": "a", "status": "todo"})), (2, json!({"job": 1, "name": "b", "status": "todo"}))].into_iter().collect(),
            seq: 10,
            next_id: 100,
            applied: HashSet::new(),
            inbox: VecDeque::new(),
        };
        let mut model = Model { known: server.tasks.clone(), pending: Vec::new(), alias: BTreeMap::new() };
        for a in actions {
            let keys: Vec<i64> = view_tasks(&c).keys().copied().collect();
            match a {
                Action::Save { pick, status } if !keys.is_empty() => {
                    let key = keys[pick % keys.len()];
                    let data = json!({"status": STATUSES[status as usize]});
                    if let Ok((w, _, effects)) = c.write("job/1", vec![op(Operation::Save, Some(key), Some(data.clone()))], WriteOptions::default()) {
                        model.pending.push((w, Operation::Save, key, data));
                        apply(&mut c, &mut model, effects);
                    }
                }
                Action::Delete { pick } if !keys.is_empty() => {
                    let key = keys[pick % keys.len()];
                    if let Ok((w, _, effects)) = c.write("job/1", vec![op(Operation::Delete, Some(key), None)], WriteOptions::default()) {
                        model.pending.push((w, Operation::Delete, key, Value::Null));
                        apply(&mut c, &mut model, effects);
                    }
                }
                Action::Create { temp } => {
                    let data = json!({"name": "mine", "status": "todo"});
                    let opts = WriteOptions { temp_ids: temp, ..WriteOptions::default() };
                    let (w, ids, effects) = c.write("job/1", vec![op(Operation::Create, None, Some(data))], opts).expect("create");
                    model.pending.push((w, Operation::Create, ids[0], json!({"job": 1, "name": "mine", "status": "todo"})));
                    apply(&mut c, &mut model, effects);
                }
                Action::Deliver { accept } => deliver(&mut server, &mut c, &mut model, accept),
                Action::Other { kind, pick, status } => other_user(&mut server, &mut c, &mut model, kind, pick, status),
                _ => {}
            }
            server.inbox.extend(c.take_sendable());
            prop_assert_eq!(view_tasks(&c), model.expected(), "view vs model");
            let scratch: BTreeMap<i64, Value> = c.view_from_scratch("job/1").into_iter().filter(|r| &*r.ty == "Task").map(|r| (r.key, Value::Object(r.fields))).collect();
            prop_assert_eq!(view_tasks(&c), scratch, "incremental vs from scratch");
        }
        // Settle everything.
        let mut i = 0;
        while !server.inbox.is_empty() || c.pending_count() > 0 {
            server.inbox.extend(c.take_sendable());
            if server.inbox.is_empty() {
                break;
            }
            deliver(&mut server, &mut c, &mut model, settle[i % settle.len()]);
            i += 1;
            prop_assert!(i < 1000, "settling did not finish");
        }
        prop_assert_eq!(c.pending_count(), 0);
        let truth: BTreeMap<i64, Value> = server.tasks.iter().map(|(id, v)| (*model.alias.get(id).unwrap_or(id), v.clone())).collect();
        prop_assert_eq!(view_tasks(&c), truth, "settled view equals the server");
        prop_assert!(c.view("job/1").iter().all(|r| !r.pending));
    }
}
