//! End to end: presence per context. A connection shows JSON to the other
//! subscribers of a context it holds; newcomers find it in their `state`;
//! it leaves with the connection (unsubscribe, disconnect, a peer that
//! stopped answering pings, a revoked subscription); bad updates are
//! refused and change nothing; a flood is paced to 20 a second, the latest
//! winning. On PostgreSQL it crosses processes.

#![allow(clippy::print_stderr)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

fn presence(context: &str, data: Value) -> Value {
    json!({"type": "presence", "context": context, "data": data})
}

/// A signed-in client subscribed to `job/1`; returns it with its connection id.
async fn in_job1(server: &TestServer, token: &str, msgpack: bool) -> (Client, String) {
    let mut c = if msgpack { server.msgpack().await } else { server.json().await };
    let welcome = c.hello(token).await;
    c.subscribe("job", 1).await;
    (c, welcome["connectionId"].as_str().expect("connectionId").to_owned())
}

#[tokio::test]
async fn presence_reaches_the_others_and_newcomers_and_leaves_with_the_connection() {
    let server = TestServer::start();
    let (mut alice, alice_id) = in_job1(&server, "alice", false).await;
    let (mut bob, bob_id) = in_job1(&server, "bob", true).await;

    alice.send(presence("job/1", json!({"editing": 1}))).await;
    let seen = bob.recv_type("presence").await;
    assert_eq!(
        seen,
        json!({"type": "presence", "context": "job/1", "connectionId": alice_id,
               "user": {"id": 1, "name": "alice"}, "data": {"editing": 1}}),
        "the user is shown by id and name only, never the token's claims"
    );
    // Nobody is told their own presence: the pong comes first.
    alice.ping().await;

    // A newcomer finds it in its state (and only the others').
    bob.send(presence("job/1", json!({"editing": 2}))).await;
    assert_eq!(alice.recv_type("presence").await["connectionId"], bob_id);
    let mut carol = server.json().await;
    carol.hello("carol").await;
    let state = carol.subscribe("job", 1).await;
    let listed: Vec<(Value, Value)> = state["presence"]
        .as_array()
        .expect("presence in the state")
        .iter()
        .map(|e| (e["connectionId"].clone(), e["data"].clone()))
        .collect();
    assert_eq!(listed, vec![(json!(alice_id), json!({"editing": 1})), (json!(bob_id), json!({"editing": 2}))]);

    // Clearing removes it: the others hear `data: null`, and a newcomer no longer sees it.
    alice.send(presence("job/1", Value::Null)).await;
    for c in [&mut bob, &mut carol] {
        let cleared = c.recv_type("presence").await;
        assert_eq!((cleared["connectionId"].clone(), cleared["data"].clone()), (json!(alice_id), Value::Null));
        assert!(cleared.get("left").is_none(), "cleared, not left: {cleared}");
    }
    let mut carol_tab2 = server.json().await;
    carol_tab2.hello("carol").await;
    let state = carol_tab2.subscribe("job", 1).await;
    assert_eq!(state["presence"].as_array().map(Vec::len), Some(1), "only bob's is left: {state}");

    // Unsubscribing leaves.
    bob.send(json!({"type": "unsubscribe", "context": "job/1"})).await;
    let left = carol.recv_type("presence").await;
    assert_eq!((left["connectionId"].clone(), left["left"].clone()), (json!(bob_id), json!(true)));
    assert_eq!(left["data"], Value::Null);

    // Closing the connection leaves too.
    alice.send(presence("job/1", json!({"editing": 3}))).await;
    assert_eq!(carol.recv_type("presence").await["data"], json!({"editing": 3}));
    drop(alice);
    let left = carol.recv_type("presence").await;
    assert_eq!((left["connectionId"].clone(), left["left"].clone()), (json!(alice_id), json!(true)));
    // A connection that showed nothing leaves without a word.
    drop(carol_tab2);
    carol.ping().await;
}

#[tokio::test]
async fn bad_presence_is_refused_and_changes_nothing() {
    let server = TestServer::start();
    let (mut alice, _) = in_job1(&server, "alice", false).await;
    let (mut bob, _) = in_job1(&server, "bob", false).await;

    // A context not subscribed (job/2 exists and alice may read it).
    alice.send(json!({"type": "presence", "context": "job/2", "data": {"x": 1}, "rid": "p1"})).await;
    let refused = alice.recv().await;
    assert_eq!(error_of(&refused), (400, "NOT_SUBSCRIBED".to_owned()), "{refused}");
    assert_eq!((refused["context"].clone(), refused["rid"].clone()), (json!("job/2"), json!("p1")));

    // More than 1 KiB of JSON.
    alice.send(presence("job/1", json!({"blob": "x".repeat(1100)}))).await;
    let refused = alice.recv().await;
    assert_eq!(error_of(&refused), (400, "INVALID_DATA".to_owned()), "{refused}");
    assert_eq!(refused["field"], "data");
    assert!(refused["message"].as_str().unwrap_or("").contains("1024"), "{refused}");

    // No context at all: the frame is refused.
    alice.send(json!({"type": "presence", "data": {}})).await;
    assert_eq!(alice.recv().await["type"], "error");

    // Nothing reached bob, and alice's subscription goes on: her next presence arrives.
    alice.send(presence("job/1", json!({"ok": true}))).await;
    let seen = bob.recv().await;
    assert_eq!((seen["type"].clone(), seen["data"].clone()), (json!("presence"), json!({"ok": true})), "{seen}");
    let state = server.subscribed("carol", 1).await.1;
    assert_eq!(state["presence"].as_array().map(Vec::len), Some(1), "{state}");
}

#[tokio::test]
async fn a_flood_is_paced_and_the_latest_wins() {
    let server = TestServer::start();
    let (mut alice, _) = in_job1(&server, "alice", false).await;
    let (mut bob, _) = in_job1(&server, "bob", false).await;
    for n in 0..200 {
        alice.send(presence("job/1", json!({"n": n}))).await;
    }
    let mut seen = Vec::new();
    loop {
        let m = bob.recv_type("presence").await;
        let n = m["data"]["n"].as_i64().expect("n");
        seen.push(n);
        if n == 199 {
            break;
        }
    }
    // 20 a second: a burst sent in well under a second is mostly replaced.
    assert!(seen.len() < 50, "{} of 200 updates were relayed: {seen:?}", seen.len());
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order: {seen:?}");
    bob.expect_silence(300).await;
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_leaves_within_two_intervals() {
    let server = TestServer::start_args(&["--ping-interval", "1"]);
    let (mut alice, alice_id) = in_job1(&server, "alice", false).await;
    let (mut bob, _) = in_job1(&server, "bob", false).await;
    alice.send(presence("job/1", json!({"here": true}))).await;
    assert_eq!(bob.recv_type("presence").await["data"], json!({"here": true}));
    // alice's socket stays open but is never read again: no pong goes back.
    let started = std::time::Instant::now();
    let left = loop {
        match bob.next_event(Duration::from_secs(10)).await {
            Some(Event::Msg(m)) if m["type"] == "presence" => break m,
            Some(Event::Msg(_)) => {}
            other => panic!("bob heard no leave: {other:?}"),
        }
    };
    assert_eq!((left["connectionId"].clone(), left["left"].clone()), (json!(alice_id), json!(true)));
    eprintln!("left after {:?} (ping interval 1 s)", started.elapsed());
    drop(alice);
}

#[tokio::test]
async fn a_revoked_subscriber_leaves_the_others_presence() {
    let server = TestServer::start();
    let (mut alice, _) = in_job1(&server, "alice", false).await;
    let (mut bob, bob_id) = in_job1(&server, "bob", false).await;
    bob.send(presence("job/1", json!({"editing": 2}))).await;
    assert_eq!(alice.recv_type("presence").await["connectionId"], bob_id);
    let mut carol = server.json().await;
    carol.hello("carol").await;
    carol.subscribe("project", 1).await;
    let remove = json!({"type": "write", "writeId": 1, "context": "project/1", "operation": "delete",
                        "instanceType": "ProjectMember", "instanceId": 2});
    carol.write(remove).await.ok();
    let left = alice.recv_type("presence").await;
    assert_eq!((left["connectionId"].clone(), left["left"].clone()), (json!(bob_id), json!(true)));
    // bob, no longer a reader, is told nothing more about job/1's presence.
    alice.send(presence("job/1", json!({"editing": 1}))).await;
    let ended = bob.recv_type("unsubscribed").await;
    assert_eq!(ended["reason"], "REVOKED");
    bob.ping().await;
}

#[tokio::test]
async fn presence_crosses_processes_on_postgresql() {
    if !StoreKind::is_default_run() || pg_url().is_none() {
        eprintln!("runs once, in the default pass, with STATECAST_PG_URL: skipped");
        return;
    }
    let pg = pg_schema();
    let one = TestServer::start_on(&pg.store_url(), &[]);
    let mut two = TestServer::start_on(&pg.store_url(), &[]);
    let (mut alice, alice_id) = in_job1(&one, "alice", false).await;
    let (mut bob, bob_id) = in_job1(&two, "bob", true).await;
    assert_ne!(alice_id, bob_id, "connection ids name their process");

    alice.send(presence("job/1", json!({"editing": 1}))).await;
    let seen = bob.recv_type("presence").await;
    assert_eq!((seen["connectionId"].clone(), seen["user"]["name"].clone()), (json!(alice_id), json!("alice")));
    bob.send(presence("job/1", json!({"editing": 2}))).await;
    assert_eq!(alice.recv_type("presence").await["connectionId"], bob_id);

    // A newcomer on either process lists both.
    let state = two.subscribed("carol", 1).await.1;
    let mut ids: Vec<String> = state["presence"]
        .as_array()
        .expect("presence")
        .iter()
        .filter_map(|e| e["connectionId"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    let mut want = vec![alice_id.clone(), bob_id.clone()];
    want.sort();
    assert_eq!(ids, want, "{state}");

    // A third process started later learns what is shown already.
    let three = TestServer::start_on(&pg.store_url(), &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = three.subscribed("carol", 1).await.1;
        if state["presence"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the new process never learned the presence: {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Leaving on one process is heard on the other.
    drop(alice);
    let left = bob.recv_type("presence").await;
    assert_eq!((left["connectionId"].clone(), left["left"].clone()), (json!(alice_id), json!(true)));

    // A process that stops says so: its connections' presence leaves at once.
    let mut carol = one.json().await;
    carol.hello("carol").await;
    carol.subscribe("job", 1).await;
    two.terminate(Duration::from_secs(10));
    let left = loop {
        let m = carol.recv_type("presence").await;
        if m["left"] == true {
            break m;
        }
    };
    assert_eq!(left["connectionId"], bob_id);
    drop(three);
}
