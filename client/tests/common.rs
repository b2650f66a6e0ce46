//! Shared test fixtures: the demo-like schema info and message builders.
#![allow(dead_code)]

use serde_json::{Value, json};
use statecast_client::state::ClientState;
use statecast_client::tree::SchemaInfo;
use statecast_core::protocol::v1::{ChangeOp, Delta, DeltaChange, State, WriteResponse};
use statecast_core::row::{Fields, Row};
use std::sync::Arc;

pub fn schema() -> SchemaInfo {
    SchemaInfo::from_welcome(&json!({
        "types": {
            "Job": {"fields": [{"name": "name", "kind": "string"}]},
            "Task": {"fields": [{"name": "job", "kind": "reference", "target": "Job"}, {"name": "name", "kind": "string"}, {"name": "status", "kind": "string"}]},
            "Note": {"fields": [{"name": "task", "kind": "reference", "target": "Task"}, {"name": "text", "kind": "string"}]}
        },
        "channels": [{"name": "job", "anchor": "Job", "tree": [
            {"parent": "Job", "relation": "tasks", "child": "Task", "field": "job"},
            {"parent": "Task", "relation": "notes", "child": "Note", "field": "task"}
        ], "writable": {}}]
    }))
}

pub fn fields(v: Value) -> Fields {
    v.as_object().cloned().unwrap_or_default()
}

pub fn row(ty: &str, id: i64, version: u64, f: Value) -> Arc<Row> {
    Arc::new(Row { ty: ty.into(), id, version, created: 0, fields: fields(f) })
}

pub fn state(context: &str, anchor: i64, seq: u64, rows: Vec<Arc<Row>>) -> State {
    State {
        context: context.into(),
        channel: "job".into(),
        anchor_id: anchor,
        epoch: "e".into(),
        seq,
        instances: rows,
        incremental: false,
        removed: vec![],
        presence: vec![],
        view: None,
        part: None,
        last: None,
        rid: None,
    }
}

pub fn change(op: ChangeOp, ty: &str, id: i64, version: u64, f: Value) -> DeltaChange {
    DeltaChange { op, ty: ty.into(), id, version, fields: fields(f) }
}

pub fn delta(context: &str, prev: u64, seq: u64, changes: Vec<DeltaChange>, write_id: Option<i64>) -> Delta {
    Delta {
        context: context.into(),
        seq,
        prev,
        changes: Arc::new(changes),
        write_id,
        created: vec![],
        part: None,
        last: None,
    }
}

pub fn ok(write_id: i64, seq: u64) -> WriteResponse {
    WriteResponse { write_id, success: true, seq: Some(seq), ..Default::default() }
}

pub fn refused(write_id: i64, reason: statecast_core::error::ErrorReason) -> WriteResponse {
    WriteResponse {
        write_id,
        success: false,
        error: Some(statecast_core::error::WireError::new(reason, "refused")),
        ..Default::default()
    }
}

/// A client holding job/1 with tasks 1 and 2 (and job/2 with task 3).
pub fn loaded() -> ClientState {
    let mut c = ClientState::new("test");
    c.set_schema(schema());
    c.add_context("job/1", "job", 1);
    c.add_context("job/2", "job", 2);
    c.apply_state(state(
        "job/1",
        1,
        10,
        vec![
            row("Job", 1, 1, json!({"name": "one"})),
            row("Task", 1, 2, json!({"job": 1, "name": "a", "status": "todo"})),
            row("Task", 2, 3, json!({"job": 1, "name": "b", "status": "todo"})),
        ],
    ));
    c.apply_state(state(
        "job/2",
        2,
        10,
        vec![
            row("Job", 2, 1, json!({"name": "two"})),
            row("Task", 3, 4, json!({"job": 2, "name": "c", "status": "todo"})),
        ],
    ));
    c
}

/// `(type, id, status-or-name)` of a view, in order.
pub fn summary(c: &ClientState, context: &str) -> Vec<(String, i64, bool)> {
    c.view(context).iter().map(|r| (r.ty.to_string(), r.key, r.pending)).collect()
}
