//! Random interleavings of local saves, other users' changes, confirmations
//! and refusals against a small simulated server, with a stream view open:
//! after every step the incremental view equals the view decided from
//! scratch, and once everything settles it equals the server's matching rows.

use proptest::prelude::*;
use serde_json::{Value, json};
use statecast_client::{ClientState, StreamRequest, WriteOptions};
use statecast_core::protocol::v1::{Operation, ServerMessage, Welcome, WriteOp};
use std::collections::BTreeMap;

const STATUSES: [&str; 3] = ["todo", "doing", "done"];

#[derive(Clone, Debug)]
enum Step {
    /// Alice saves a task's status (pending until answered).
    Save { task: i64, status: usize },
    /// Someone else changes a task's status.
    Other { task: i64, status: usize },
    /// The server answers the oldest write: applied, or refused.
    Answer { ok: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1..=6i64, 0..3usize).prop_map(|(task, status)| Step::Save { task, status }),
        (1..=6i64, 0..3usize).prop_map(|(task, status)| Step::Other { task, status }),
        any::<bool>().prop_map(|ok| Step::Answer { ok }),
    ]
}

struct Sim {
    seq: u64,
    /// id → (job, status, version)
    rows: BTreeMap<i64, (i64, String, u64)>,
    prev: BTreeMap<String, u64>,
    stream_prev: u64,
    queue: Vec<(i64, i64, String)>,
}

fn schema() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/client/schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("schema")).expect("json")
}

fn row(id: i64, job: i64, status: &str, version: u64) -> Value {
    json!({"_type": "Task", "id": id, "_version": version, "job": job, "name": format!("Task {id}"), "status": status,
           "notes": "", "developer": null, "assignee": 1, "created_by": 1})
}

fn recv(c: &mut ClientState, msg: Value) {
    c.receive(serde_json::from_value::<ServerMessage>(msg).expect("message"));
}

impl Sim {
    /// Commits a status change; sends the delta (with `write_id` to the writer), the stream event and the answer.
    fn commit(&mut self, c: &mut ClientState, id: i64, status: &str, write_id: Option<i64>) {
        self.seq += 1;
        let seq = self.seq;
        let (job, old, _) = self.rows.get(&id).cloned().expect("row");
        self.rows.insert(id, (job, status.to_owned(), seq));
        let context = format!("job/{job}");
        let prev = self.prev.insert(context.clone(), seq).unwrap_or(10);
        let mut delta = json!({"type": "delta", "context": context, "seq": seq, "prev": prev,
            "changes": [{"op": "update", "_type": "Task", "id": id, "_version": seq, "status": status}]});
        if let Some(w) = write_id {
            delta["writeId"] = json!(w);
        }
        recv(c, delta);
        let (before, after) = (old == "todo", status == "todo");
        let action = match (before, after) {
            (true, true) => Some("update"),
            (false, true) => Some("create"),
            (true, false) => Some("delete"),
            (false, false) => None,
        };
        if let Some(action) = action {
            let mut data = row(id, job, status, seq);
            if let Some(o) = data.as_object_mut() {
                o.remove("_type");
                o.remove("id");
                o.remove("_version");
            }
            recv(
                c,
                json!({"type": "event", "subscription": "s1", "seq": seq, "prev": self.stream_prev,
                "action": action, "id": id, "data": data}),
            );
            self.stream_prev = seq;
        }
        if let Some(w) = write_id {
            recv(c, json!({"type": "writeResponse", "writeId": w, "success": true, "seq": seq}));
        }
    }
}

fn check(c: &ClientState, view: u64) -> Result<(), TestCaseError> {
    let incremental = c.stream_rows(view);
    let scratch = c.stream_rows_from_scratch(view);
    prop_assert_eq!(incremental, scratch);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_incremental_stream_view_equals_the_view_decided_from_scratch(steps in prop::collection::vec(step(), 1..40)) {
        let mut c = ClientState::new("props");
        let welcome: Welcome = serde_json::from_value(json!({"type": "welcome", "connectionId": "c",
            "user": {"id": 1, "name": "alice"}, "schema": schema(), "epoch": "e", "applied": []})).expect("welcome");
        c.connected(&welcome);
        let mut sim = Sim { seq: 10, rows: BTreeMap::new(), prev: BTreeMap::new(), stream_prev: 10, queue: Vec::new() };
        for id in 1..=6i64 {
            sim.rows.insert(id, (1 + id % 2, STATUSES[(id % 3) as usize].to_owned(), 1));
        }
        let mut rid = 0;
        for job in 1..=2i64 {
            let context = format!("job/{job}");
            c.add_context(&context, "job", job);
            rid += 1;
            let mut instances = vec![json!({"_type": "Job", "id": job, "_version": 1, "name": "J", "project": 1, "owner": 1})];
            instances.extend(sim.rows.iter().filter(|(_, r)| r.0 == job).map(|(id, r)| row(*id, r.0, &r.1, r.2)));
            recv(&mut c, json!({"type": "state", "context": context, "channel": "job", "anchorId": job, "epoch": "e",
                "seq": 10, "instances": instances, "rid": rid}));
            sim.prev.insert(context, 10);
        }
        let view = c.add_stream(StreamRequest::new("tasks").filter("status", "todo").snapshot());
        let snapshot: Vec<Value> =
            sim.rows.iter().filter(|(_, r)| r.1 == "todo").map(|(id, r)| row(*id, r.0, &r.1, r.2)).collect();
        recv(&mut c, json!({"type": "subscribed", "subscription": "s1", "stream": "tasks", "seq": 10,
            "snapshot": snapshot, "rid": rid + 1}));
        let _ = c.take_control();
        check(&c, view)?;
        for s in steps {
            match s {
                Step::Save { task, status } => {
                    let job = sim.rows[&task].0;
                    let op = WriteOp {
                        operation: Operation::Save,
                        instance_type: "Task".into(),
                        instance_id: Some(task),
                        parent_type: None,
                        parent_id: None,
                        relation_name: None,
                        data: json!({"status": STATUSES[status]}).as_object().cloned(),
                        if_version: None,
                    };
                    let (w, _, _) = c.write(&format!("job/{job}"), vec![op], WriteOptions::default()).expect("write");
                    let _ = c.take_sendable();
                    sim.queue.push((w, task, STATUSES[status].to_owned()));
                }
                Step::Other { task, status } => sim.commit(&mut c, task, STATUSES[status], None),
                Step::Answer { ok } => {
                    if sim.queue.is_empty() {
                        continue;
                    }
                    let (w, task, status) = sim.queue.remove(0);
                    if ok {
                        sim.commit(&mut c, task, &status, Some(w));
                    } else {
                        recv(&mut c, json!({"type": "writeResponse", "writeId": w, "success": false,
                            "error": {"code": 403, "reason": "DENIED", "message": "no"}}));
                    }
                }
            }
            check(&c, view)?;
        }
        while !sim.queue.is_empty() {
            let (w, task, status) = sim.queue.remove(0);
            sim.commit(&mut c, task, &status, Some(w));
            check(&c, view)?;
        }
        let shown: Vec<(i64, String, bool)> = c
            .stream_rows(view)
            .iter()
            .map(|r| (r.id, r.fields["status"].as_str().unwrap_or("").to_owned(), r.pending))
            .collect();
        let server: Vec<(i64, String, bool)> =
            sim.rows.iter().filter(|(_, r)| r.1 == "todo").map(|(id, r)| (*id, r.1.clone(), false)).collect();
        prop_assert_eq!(shown, server);
    }
}
