//! A measurement, not a test of speed (run it with `--ignored`): a stream view
//! of 10,000 rows with 100 pending writes; the cost of applying one event and
//! recomputing what changed. Numbers go to docs/BENCHMARKS.md.
//!
//! ```sh
//! cargo test -p statecast-client --release --test bench_stream_view -- --ignored --nocapture
//! ```

use serde_json::{Value, json};
use statecast_client::state::Effect;
use statecast_client::{ClientState, StreamRequest, WriteOptions};
use statecast_core::protocol::v1::{Operation, ServerMessage, Welcome, WriteOp};
use std::time::Instant;

const ROWS: i64 = 10_000;
const PENDING: i64 = 100;
const EVENTS: usize = 5_000;

fn schema() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/client/schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("schema")).expect("json")
}

fn task(id: i64, version: u64) -> Value {
    json!({"_type": "Task", "id": id, "_version": version, "job": 1 + id % 50, "name": format!("Task {id}"),
           "status": "todo", "notes": "", "developer": null, "assignee": 1 + id % 4, "created_by": 1})
}

fn receive(c: &mut ClientState, msg: Value) -> Vec<Effect> {
    c.receive(serde_json::from_value::<ServerMessage>(msg).expect("message"))
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn apply_one_event_to_a_10k_row_stream_view_with_100_pending_writes() {
    let mut c = ClientState::new("bench");
    let welcome: Welcome =
        serde_json::from_value(json!({"type": "welcome", "connectionId": "c", "user": {"id": 1, "name": "alice"},
        "schema": schema(), "epoch": "e", "applied": []}))
        .expect("welcome");
    c.connected(&welcome);
    c.add_context("job/1", "job", 1);
    receive(
        &mut c,
        json!({"type": "state", "context": "job/1", "channel": "job", "anchorId": 1, "epoch": "e", "seq": 10,
        "instances": [{"_type": "Job", "id": 1, "_version": 1, "name": "Launch", "project": 1, "owner": 1}], "rid": 1}),
    );
    let view = c.add_stream(StreamRequest::new("tasks").filter("status__in", json!(["todo", "doing"])).snapshot());
    let snapshot: Vec<Value> = (1..=ROWS).map(|id| task(id, 1)).collect();
    receive(
        &mut c,
        json!({"type": "subscribed", "subscription": "s1", "stream": "tasks", "seq": 10, "snapshot": snapshot, "rid": 2}),
    );
    assert_eq!(c.stream_rows(view).len(), ROWS as usize);
    for i in 0..PENDING {
        let op = WriteOp {
            operation: Operation::Save,
            instance_type: "Task".into(),
            instance_id: Some(1 + i * 97),
            parent_type: None,
            parent_id: None,
            relation_name: None,
            data: json!({"notes": format!("pending {i}")}).as_object().cloned(),
            if_version: None,
        };
        c.write("job/1", vec![op], WriteOptions::default()).expect("write");
    }
    assert_eq!(c.pending_count(), PENDING as usize);
    let mut times = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        let seq = 10 + i as u64;
        let id = 1 + (i as i64 * 7919) % ROWS;
        let status = if i % 10 == 0 { "done" } else { "doing" };
        let mut data = task(id, seq + 1);
        data["status"] = json!(status);
        let action = if i % 10 == 0 { "delete" } else { "update" };
        let event: ServerMessage =
            serde_json::from_value(json!({"type": "event", "subscription": "s1", "seq": seq + 1,
            "prev": seq, "action": action, "id": id, "data": data}))
            .expect("event");
        let start = Instant::now();
        let effects = c.receive(event);
        times.push(start.elapsed());
        assert!(effects.len() <= 1);
    }
    times.sort();
    let median = times[times.len() / 2];
    let p99 = times[times.len() * 99 / 100];
    println!(
        "rust: stream view of {ROWS} rows, {PENDING} pending writes: one event applied and recomputed: median {:.1} µs, p99 {:.1} µs ({EVENTS} events; the view holds {} rows)",
        median.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        c.stream_rows(view).len()
    );
}
