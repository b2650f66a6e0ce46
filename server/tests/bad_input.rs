//! End to end: every bad input gets a clear error (code and reason), changes
//! nothing, and leaves the connection usable where that makes sense.

mod common;

use common::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Asserts `write` is refused with 400 INVALID_DATA naming `field`, with no delta.
async fn invalid(c: &mut Client, write: Value, field: &str) {
    let w = c.write(write.clone()).await;
    assert_eq!(w.refused(), (400, "INVALID_DATA".to_owned()), "{write} → {}", w.response);
    assert_eq!(w.response["error"]["field"], field, "{write} → {}", w.response);
    assert!(w.deltas().is_empty(), "{:?}", w.before);
}

#[tokio::test]
async fn malformed_frames_are_400_bad_frame_and_the_connection_goes_on() {
    let server = TestServer::start();
    let (mut alice, before) = server.subscribed("alice", 1).await;
    for bad in ["{not json", "[1, 2, 3]", "42", r#"{"type": "frobnicate"}"#, r#"{"no": "type"}"#, ""] {
        alice.send_raw(Message::text(bad)).await.expect("send");
        let e = alice.recv().await;
        assert_eq!(e["type"], "error", "{bad:?} → {e}");
        assert_eq!(error_of(&e), (400, "BAD_FRAME".to_owned()), "{bad:?} → {e}");
        alice.ping().await;
    }
    // A frame in the other codec than the hello's.
    let ping = rmp_serde::to_vec_named(&json!({"type": "ping"})).expect("encode");
    alice.send_raw(Message::binary(ping)).await.expect("send");
    assert_eq!(error_of(&alice.recv_type("error").await), (400, "BAD_FRAME".to_owned()));
    alice.ping().await;
    // Unknown fields of a frame (not of `data`) are ignored.
    alice.send(json!({"type": "ping", "whatever": [1, 2]})).await;
    assert_eq!(alice.recv().await["type"], "pong");
    assert_unchanged(&server, 1, &before).await;
}

#[tokio::test]
async fn malformed_messagepack_is_400_bad_frame() {
    let server = TestServer::start();
    let mut bob = server.msgpack().await;
    bob.hello("bob").await;
    let before = bob.subscribe("job", 1).await;
    let not_a_map = rmp_serde::to_vec_named(&json!(42)).expect("encode");
    let truncated = rmp_serde::to_vec_named(&json!({"type": "ping", "rid": "abcdef"})).expect("encode");
    let truncated = truncated[..truncated.len() - 3].to_vec();
    for bad in [vec![0xc1], not_a_map, truncated, Vec::new()] {
        bob.send_raw(Message::binary(bad.clone())).await.expect("send");
        let e = bob.recv().await;
        assert_eq!(error_of(&e), (400, "BAD_FRAME".to_owned()), "{bad:?} → {e}");
        bob.ping().await;
    }
    bob.send_raw(Message::text(r#"{"type": "ping"}"#)).await.expect("send");
    assert_eq!(error_of(&bob.recv_type("error").await), (400, "BAD_FRAME".to_owned()));
    bob.ping().await;
    assert_unchanged(&server, 1, &before).await;
}

#[tokio::test]
async fn bad_write_data_is_400_invalid_data_naming_the_field() {
    let server = TestServer::start();
    // carol is an admin, so the policy would allow every one of these saves.
    let (mut carol, before) = server.subscribed("carol", 1).await;
    let cases = [
        (json!({"color": "red"}), "color"),
        (json!({"status": "doing", "color": "red"}), "color"),
        (json!({"status": 5}), "status"),
        (json!({"status": "blocked"}), "status"),
        (json!({"name": "x".repeat(201)}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": null}), "name"),
        (json!({"notes": ["a"]}), "notes"),
        (json!({"developer": "bob"}), "developer"),
        (json!({"developer": 9_007_199_254_740_993_i64}), "developer"),
        (json!({"created_by": 3}), "created_by"),
    ];
    for (data, field) in cases {
        invalid(&mut carol, save("job/1", "Task", 1, data), field).await;
    }
    carol.ping().await;

    // alice is a member of the project, so the policy would allow these creates.
    let (mut alice, _) = server.subscribed("alice", 1).await;
    let cases = [
        (json!({}), "name"),
        (json!({"status": "done"}), "name"),
        (json!({"name": "x".repeat(201)}), "name"),
        (json!({"name": "ok", "created_by": 2}), "created_by"),
        (json!({"name": "ok", "status": "blocked"}), "status"),
        (json!({"name": "ok", "priority": 1}), "priority"),
    ];
    for (data, field) in cases {
        invalid(&mut alice, create_task(1, Some(-1), data), field).await;
    }
    alice.ping().await;
    assert_unchanged(&server, 1, &before).await;
}

#[tokio::test]
async fn names_of_one_to_two_hundred_characters_are_accepted() {
    let server = TestServer::start();
    let (mut alice, _) = server.subscribed("alice", 1).await;
    for name in ["x".to_owned(), "é".repeat(200)] {
        let w = alice.write(create_task(1, None, json!({"name": name}))).await;
        let id = w.ok()["instanceId"].as_i64().expect("id");
        let (_c, state) = server.subscribed("bob", 1).await;
        assert_eq!(row(&state, "Task", id).expect("created")["name"], name.as_str());
    }
}

#[tokio::test]
async fn an_oversize_frame_is_413_or_closed_with_1009() {
    let server = TestServer::start();
    let (mut alice, before) = server.subscribed("alice", 1).await;
    // alice is task 1's assignee: only the size is wrong.
    let notes = "n".repeat((1 << 20) + 1024);
    let mut w = save("job/1", "Task", 1, json!({"notes": notes}));
    w["writeId"] = json!(1);
    let sent = alice.send_raw(Message::text(w.to_string())).await;
    match alice.next_event(RECV_TIMEOUT).await {
        Some(Event::Msg(m)) => {
            assert_eq!(error_of(&m), (413, "FRAME_TOO_LARGE".to_owned()), "{m}");
            alice.ping().await;
        }
        Some(Event::Closed(code)) => {
            assert!(code == Some(1009) || sent.is_err(), "closed with {code:?} (send: {sent:?})");
        }
        None => panic!("no answer to an oversize frame"),
    }
    assert_unchanged(&server, 1, &before).await;
}

#[tokio::test]
async fn requests_before_hello_are_401_unauthenticated() {
    let server = TestServer::start();
    let (_alice, before) = server.subscribed("alice", 1).await;
    let mut anon = server.json().await;
    let mut w = save("job/1", "Task", 1, json!({"status": "done"}));
    w["writeId"] = json!(1);
    anon.send(w).await;
    let answer = anon.recv().await;
    assert_eq!(error_of(&answer), (401, "UNAUTHENTICATED".to_owned()), "{answer}");
    assert_unchanged(&server, 1, &before).await;

    let mut anon = server.json().await;
    anon.send(json!({"type": "subscribe", "channel": "job", "anchorId": 1})).await;
    let answer = anon.recv().await;
    assert_eq!(error_of(&answer), (401, "UNAUTHENTICATED".to_owned()), "{answer}");
    assert_ne!(answer["type"], "state");
}

#[tokio::test]
async fn a_bad_token_is_401_and_closes_the_connection() {
    let server = TestServer::start();
    for token in ["mallory", "", "eyJhbGciOiJIUzI1NiJ9.e30.bad"] {
        let mut c = server.json().await;
        c.send(json!({"type": "hello", "protocol": 1, "token": token, "clientId": "x"})).await;
        let e = c.recv().await;
        assert_eq!(e["type"], "error", "{token:?} → {e}");
        assert_eq!(error_of(&e), (401, "UNAUTHENTICATED".to_owned()), "{token:?} → {e}");
        c.expect_closed().await;
    }
}

#[tokio::test]
async fn an_unsupported_protocol_is_400_and_closes_the_connection() {
    let server = TestServer::start();
    let mut c = server.json().await;
    c.send(json!({"type": "hello", "protocol": 2, "token": "alice"})).await;
    let e = c.recv().await;
    assert_eq!(error_of(&e), (400, "UNSUPPORTED_PROTOCOL".to_owned()), "{e}");
    assert!(e["supported"].as_array().is_some_and(|v| v.contains(&json!(1))), "{e}");
    c.expect_closed().await;
}

#[tokio::test]
async fn a_temp_id_stands_only_for_an_earlier_row_of_its_own_type() {
    let server = TestServer::start();
    let (mut alice, before) = server.subscribed("alice", 1).await;
    // A Task's temp id used where a User is expected.
    let w = batch(
        "job/1",
        vec![
            json!({"operation": "create", "instanceType": "Task", "instanceId": -1, "parentType": "Job", "parentId": 1,
                   "relationName": "tasks", "data": {"name": "first"}}),
            json!({"operation": "create", "instanceType": "Task", "instanceId": -2, "parentType": "Job", "parentId": 1,
                   "relationName": "tasks", "data": {"name": "second", "assignee": -1, "developer": -1}}),
        ],
    );
    let r = alice.write(w).await;
    assert_eq!(r.refused(), (400, "INVALID_ID".to_owned()), "{}", r.response);
    assert_eq!(r.response["error"]["op"], 1, "{}", r.response);
    assert!(["assignee", "developer"].contains(&r.response["error"]["field"].as_str().unwrap_or("")), "{}", r.response);
    // A create naming its own temp id in a reference.
    let r = alice.write(create_task(1, Some(-5), json!({"name": "self", "assignee": -5}))).await;
    assert_eq!(r.refused(), (400, "INVALID_ID".to_owned()), "{}", r.response);
    assert_eq!(r.response["error"]["field"], "assignee", "{}", r.response);
    assert_unchanged(&server, 1, &before).await;
}

#[tokio::test]
async fn a_row_that_could_not_fit_a_frame_is_refused_in_either_codec() {
    let server = TestServer::start_args(&["--frame-limit", "65536"]);
    let (mut alice, before) = server.subscribed("alice", 1).await;
    // 20,000 control characters: 20 KB as MessagePack, 120 KB as JSON (`\u0001`).
    let controls = "\u{1}".repeat(20_000);
    let mut mp = server.msgpack().await;
    mp.hello("alice").await;
    mp.subscribe("job", 1).await;
    // Sent in MessagePack, where it fits; a JSON subscriber could never get it.
    let r = mp.write(save("job/1", "Task", 1, json!({"notes": controls}))).await;
    assert_eq!(r.refused(), (413, "FRAME_TOO_LARGE".to_owned()), "{}", r.response);
    assert!(r.deltas().is_empty());
    // A frame just under the limit whose row leaves no room for the message around it.
    for c in [&mut alice, &mut mp] {
        let r = c.write(create_task(1, Some(-1), json!({"name": "huge", "notes": "a".repeat(65_000)}))).await;
        assert_eq!(r.refused(), (413, "FRAME_TOO_LARGE".to_owned()), "{}", r.response);
    }
    assert_unchanged(&server, 1, &before).await;
    // What fits goes through, and reaches a JSON subscriber whole.
    let fits = "\u{1}".repeat(9_000);
    alice.write(save("job/1", "Task", 1, json!({"notes": fits}))).await.ok();
    let (_bob, state) = server.subscribed("bob", 1).await;
    assert_eq!(row(&state, "Task", 1).expect("task 1")["notes"], json!(fits));
}
