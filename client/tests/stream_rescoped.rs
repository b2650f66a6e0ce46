//! The server rescopes a stream subscription (what the user may read of the
//! stream changed): the view subscribes again on its own for a fresh
//! snapshot, keeping its rows until it comes; `REVOKED` closes the view.

use serde_json::{Value, json};
use statecast_client::state::Effect;
use statecast_client::{ClientState, StreamRequest};
use statecast_core::protocol::v1::{ClientMessage, ServerMessage, UnsubscribeReason, Welcome};

fn schema() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/client/schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("schema")).expect("json")
}

fn task(id: i64) -> Value {
    json!({"_type": "Task", "id": id, "_version": 1, "job": 1, "name": format!("Task {id}"), "status": "todo",
           "notes": "", "developer": null, "assignee": 2, "created_by": 1})
}

fn receive(c: &mut ClientState, msg: Value) -> Vec<Effect> {
    c.receive(serde_json::from_value::<ServerMessage>(msg).expect("message"))
}

fn connected() -> ClientState {
    let mut c = ClientState::new("t");
    let welcome: Welcome = serde_json::from_value(json!({"type": "welcome", "connectionId": "c",
        "user": {"id": 2, "name": "bob"}, "schema": schema(), "epoch": "e", "applied": []}))
    .expect("welcome");
    c.connected(&welcome);
    c
}

fn ids(c: &ClientState, view: u64) -> Vec<i64> {
    c.stream_rows(view).iter().map(|r| r.id).collect()
}

#[test]
fn a_rescoped_stream_view_subscribes_again_and_takes_the_fresh_snapshot() {
    let mut c = connected();
    let view = c.add_stream(StreamRequest::new("tasks").snapshot());
    let rid = |msgs: &[ClientMessage]| match msgs.last() {
        Some(ClientMessage::Subscribe(s)) => (s.rid.clone(), s.since, s.snapshot),
        other => panic!("expected a subscribe, got {other:?}"),
    };
    let (first, _, _) = rid(&c.take_control());
    receive(
        &mut c,
        json!({"type": "subscribed", "subscription": "s1", "stream": "tasks", "seq": 5,
        "snapshot": [task(1), task(2)], "rid": first}),
    );
    assert_eq!(ids(&c, view), vec![1, 2]);

    let effects = receive(&mut c, json!({"type": "unsubscribed", "subscription": "s1", "reason": "RESCOPED"}));
    assert_eq!(effects, vec![Effect::StreamResubscribe { stream: view }], "the driver flushes the new subscribe");
    assert_eq!(ids(&c, view), vec![1, 2], "the rows stay until the snapshot comes");
    let sent = c.take_control();
    assert!(!sent.iter().any(|m| matches!(m, ClientMessage::Unsubscribe(_))), "the server already ended it");
    let (again, since, snapshot) = rid(&sent);
    assert_eq!((since, snapshot), (None, true), "a fresh snapshot, not a resume");

    receive(
        &mut c,
        json!({"type": "subscribed", "subscription": "s2", "stream": "tasks", "seq": 9,
        "snapshot": [task(2)], "rid": again}),
    );
    assert_eq!(ids(&c, view), vec![2], "what the user may read now");
}

#[test]
fn a_revoked_stream_view_closes() {
    let mut c = connected();
    let view = c.add_stream(StreamRequest::new("tasks").snapshot());
    let Some(ClientMessage::Subscribe(s)) = c.take_control().pop() else { panic!("a subscribe") };
    receive(
        &mut c,
        json!({"type": "subscribed", "subscription": "s1", "stream": "tasks", "seq": 5,
        "snapshot": [task(1)], "rid": s.rid}),
    );
    let effects = receive(&mut c, json!({"type": "unsubscribed", "subscription": "s1", "reason": "REVOKED"}));
    assert_eq!(effects, vec![Effect::StreamClosed { stream: view, reason: UnsubscribeReason::Revoked }]);
}
