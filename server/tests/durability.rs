//! End to end: exactly-once writes across reconnects and restarts, durability
//! through SIGKILL, graceful shutdown and the HTTP health endpoints.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

/// Connects as `token` with a fixed clientId and subscribes to job/1.
async fn session(server: &TestServer, token: &str, client_id: &str) -> (Client, Value) {
    let mut c = server.json().await;
    c.client_id = client_id.to_owned();
    c.hello(token).await;
    let state = c.subscribe("job", 1).await;
    (c, state)
}

fn named<'a>(state: &'a Value, name: &str) -> Vec<&'a Value> {
    state["instances"].as_array().expect("instances").iter().filter(|r| r["name"] == name).collect()
}

#[tokio::test]
async fn a_resend_on_a_new_connection_is_answered_as_a_duplicate() {
    let server = TestServer::start();
    let write = || {
        let mut w = create_task(1, Some(-1), json!({"name": "Exactly once"}));
        w["writeId"] = json!(41);
        w
    };
    let (mut first, _) = session(&server, "alice", "client-eo").await;
    let original = first.write(write()).await;
    let original = original.ok().clone();
    drop(first);

    let (mut again, _) = session(&server, "alice", "client-eo").await;
    let w = again.write(write()).await;
    let r = w.ok();
    assert_eq!(r["duplicate"], true, "{r}");
    assert_eq!((r["seq"].clone(), r["created"].clone()), (original["seq"].clone(), original["created"].clone()));
    assert!(w.deltas().is_empty(), "a duplicate is not applied again: {:?}", w.before);

    let (_c, state) = server.subscribed("bob", 1).await;
    assert_eq!(named(&state, "Exactly once").len(), 1, "{state}");

    // The same writeId from another client is a different write.
    let (mut other, _) = session(&server, "alice", "client-other").await;
    let w = other.write(write()).await;
    assert_ne!(w.ok().get("duplicate"), Some(&json!(true)));
    let (_c, state) = server.subscribed("bob", 1).await;
    assert_eq!(named(&state, "Exactly once").len(), 2);
}

#[tokio::test]
async fn a_refused_write_is_evaluated_afresh_when_resent() {
    let server = TestServer::start();
    let mut w = save("job/1", "Task", 2, json!({"status": "done"}));
    w["writeId"] = json!(5);
    let (mut alice, _) = session(&server, "alice", "client-refused").await;
    assert_eq!(alice.write(w.clone()).await.refused(), (403, "DENIED".to_owned()));
    let (mut again, _) = session(&server, "alice", "client-refused").await;
    let r = again.write(w).await;
    assert_eq!(r.refused(), (403, "DENIED".to_owned()), "never reported as a success that did not happen");
}

#[tokio::test]
async fn exactly_once_holds_across_a_restart() {
    let mut server = TestServer::start();
    let write = || {
        let mut w = create_task(1, Some(-3), json!({"name": "Survives restarts"}));
        w["writeId"] = json!(7);
        w
    };
    let (mut alice, _) = session(&server, "alice", "client-restart").await;
    let original = alice.write(write()).await.ok().clone();
    drop(alice);
    server.restart();

    // hello.pending reports what was applied.
    let mut c = server.json().await;
    c.client_id = "client-restart".into();
    let welcome = c
        .hello_with(
            json!({"type": "hello", "protocol": 1, "token": "alice", "clientId": "client-restart", "pending": [7, 8]}),
        )
        .await;
    let applied = welcome["applied"].as_array().expect("applied").clone();
    assert_eq!(applied.len(), 1, "only writeId 7 was applied: {welcome}");
    assert_eq!((applied[0]["writeId"].clone(), applied[0]["seq"].clone()), (json!(7), original["seq"].clone()));
    assert_eq!(applied[0]["created"], original["created"]);

    c.subscribe("job", 1).await;
    let r = c.write(write()).await;
    assert_eq!(r.ok()["duplicate"], true, "{}", r.response);
    assert_eq!(r.response["seq"], original["seq"]);
    let (_c, state) = server.subscribed("bob", 1).await;
    assert_eq!(named(&state, "Survives restarts").len(), 1, "{state}");
}

#[tokio::test]
async fn a_confirmed_write_survives_sigkill() {
    let mut server = TestServer::start();
    let (mut alice, before) = server.subscribed("alice", 1).await;
    let w = alice.write(create_task(1, None, json!({"name": "Durable"}))).await;
    let id = w.ok()["instanceId"].as_i64().expect("id");
    let w2 = alice.write(save("job/1", "Task", 1, json!({"status": "done"}))).await;
    let seq = w2.ok()["seq"].as_u64().expect("seq");
    server.kill9();
    drop(alice);

    server.restart();
    let (_c, after) = server.subscribed("bob", 1).await;
    assert_eq!(row(&after, "Task", id).expect("the confirmed create is there")["name"], "Durable");
    assert_eq!(row(&after, "Task", 1).expect("task 1")["status"], "done");
    assert_eq!(after["epoch"], before["epoch"], "same store, same epoch");
    assert!(after["seq"].as_u64().is_some_and(|s| s >= seq), "seqs are never reused: {after}");
    assert_eq!(rows(&after).len(), rows(&before).len() + 1, "the demo rows are not inserted twice");

    // New commits after the restart get higher seqs than any before it.
    let (mut alice, _) = server.subscribed("alice", 1).await;
    let w = alice.write(save("job/1", "Task", 1, json!({"status": "doing"}))).await;
    assert!(w.ok()["seq"].as_u64().is_some_and(|s| s > seq), "{}", w.response);
}

#[tokio::test]
async fn a_restart_keeps_what_was_written_and_does_not_reseed() {
    let mut server = TestServer::start();
    let (mut bob, _) = server.subscribed("bob", 1).await;
    bob.write(delete("job/1", "Task", 2)).await.ok();
    drop(bob);
    server.restart();
    let (_c, state) = server.subscribed("alice", 1).await;
    assert!(row(&state, "Task", 2).is_none(), "the seed was not inserted again: {state}");
    assert!(row(&state, "Task", 1).is_some());
}

#[tokio::test]
async fn sigterm_sends_goaway_and_exits_cleanly() {
    let mut server = TestServer::start();
    let (mut alice, _) = server.subscribed("alice", 1).await;
    let w = alice.write(create_task(1, None, json!({"name": "Before shutdown"}))).await;
    let id = w.ok()["instanceId"].as_i64().expect("id");

    let status = server.terminate(Duration::from_secs(10)).expect("the server exits within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{}", server.stderr());
    let mut got_goaway = false;
    while let Some(Event::Msg(m)) = alice.next_event(Duration::from_secs(1)).await {
        got_goaway |= m["type"] == "goaway";
    }
    assert!(got_goaway, "clients are told to go away");

    server.restart();
    let (_c, state) = server.subscribed("bob", 1).await;
    assert!(row(&state, "Task", id).is_some());
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served_on_the_websocket_port() {
    let server = TestServer::start();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let resp = server.http_get(path).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "GET {path}: {resp}");
    }
}

#[tokio::test]
async fn the_inspector_and_metrics_can_be_turned_off() {
    let server = TestServer::start_args(&["--inspector", "false", "--metrics", "false"]);
    for path in ["/", "/metrics"] {
        let r = server.http_get(path).await;
        assert!(r.starts_with("HTTP/1.1 404"), "{path}: {r}");
    }
    let ready = server.http_get("/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let on = TestServer::start();
    assert!(on.http_get("/metrics").await.starts_with("HTTP/1.1 200"));
    assert!(on.http_get("/").await.starts_with("HTTP/1.1 200"));
}
