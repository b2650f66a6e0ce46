//! End to end: the demo's streams (`tasks`, full rows routed by job;
//! `my-tasks`, ids scoped to the user) against the real binary, over a raw
//! WebSocket client in both codecs.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

/// Sends a stream subscribe and returns the `subscribed`.
async fn subscribe(c: &mut Client, mut sub: Value) -> Value {
    sub["type"] = json!("subscribe");
    c.send(sub.clone()).await;
    let answer = c.recv().await;
    assert_eq!(answer["type"], "subscribed", "{sub} was not subscribed: {answer}");
    answer
}

/// Sends a stream subscribe expecting an error; returns `(code, reason, field)`.
async fn refused(c: &mut Client, mut sub: Value) -> (i64, String, Option<String>) {
    sub["type"] = json!("subscribe");
    c.send(sub.clone()).await;
    let answer = c.recv().await;
    assert_eq!(answer["type"], "error", "{sub} should be refused: {answer}");
    let (code, reason) = error_of(&answer);
    (code, reason, answer["field"].as_str().map(str::to_owned))
}

/// Every message that arrives until the connection is quiet for 300 ms.
async fn drain(c: &mut Client) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(Event::Msg(m)) = c.next_event(Duration::from_millis(300)).await {
        out.push(m);
    }
    out
}

fn ids_of(rows: &Value) -> Vec<i64> {
    rows.as_array().unwrap_or_else(|| panic!("not a list: {rows}")).iter().filter_map(|r| r["id"].as_i64()).collect()
}

/// (action, id) of the events of one subscription.
fn events_of(frames: &[Value], sub: &Value) -> Vec<(String, i64)> {
    frames
        .iter()
        .filter(|f| f["type"] == "event" && f["subscription"] == sub["subscription"])
        .map(|f| (f["action"].as_str().unwrap_or("").to_owned(), f["id"].as_i64().unwrap_or(0)))
        .collect()
}

/// Events of every subscription chain `prev` from the `subscribed` seq.
fn assert_chained(frames: &[Value], subs: &[&Value]) {
    for sub in subs {
        let mut prev = sub["seq"].as_i64().expect("seq");
        for e in frames.iter().filter(|f| f["type"] == "event" && f["subscription"] == sub["subscription"]) {
            assert_eq!(e["prev"].as_i64(), Some(prev), "{e}");
            let seq = e["seq"].as_i64().expect("seq");
            assert!(seq >= prev, "{e}");
            prev = seq;
        }
    }
}

#[tokio::test]
async fn my_tasks_for_bob_never_shows_alices_tasks_whatever_he_sends() {
    let server = TestServer::start();
    let mut bob = server.msgpack().await;
    bob.hello("bob").await;
    // Every attempt to widen the scope: replace it, list alice, ask for nulls, name her ids.
    let attempts = [
        json!({}),
        json!({"assignee": 1}),
        json!({"assignee__exact": 1}),
        json!({"assignee__in": [1, 2, 3]}),
        json!({"assignee__isnull": true}),
        json!({"assignee__lt": 100}),
        json!({"id__in": [1, 2, 3]}),
        json!({"job": 1}),
    ];
    let mut subs = Vec::new();
    for filters in &attempts {
        let s = subscribe(&mut bob, json!({"stream": "my-tasks", "filters": filters, "snapshot": true})).await;
        let ids = ids_of(&s["snapshot"]);
        assert!(ids.is_empty() || ids == vec![2], "{filters}: bob sees only task 2 (his): {s}");
        for row in s["snapshot"].as_array().into_iter().flatten() {
            assert_eq!(row.as_object().map(|o| o.len()), Some(3), "id payload: only _type, id, _version: {row}");
        }
        subs.push(s);
    }
    let plain = subscribe(&mut bob, json!({"stream": "my-tasks", "id": 1})).await;

    // Alice's tasks change, are created, deleted: nothing reaches bob.
    let (mut alice, _) = server.subscribed("alice", 1).await;
    alice.write(save("job/1", "Task", 1, json!({"status": "doing"}))).await.ok();
    let created = alice.write(create_task(1, None, json!({"name": "alice's secret", "assignee": 1}))).await;
    let secret = created.ok()["instanceId"].as_i64().expect("created id");
    let mut carol = server.json().await;
    carol.hello("carol").await;
    carol.subscribe("job", 2).await;
    carol.write(delete("job/2", "Task", 3)).await.ok();
    bob.expect_silence(400).await;

    // Task 1 is reassigned to bob (a create for him), then back to alice (a delete).
    carol.subscribe("job", 1).await;
    carol.write(save("job/1", "Task", 1, json!({"assignee": 2}))).await.ok();
    carol.write(save("job/1", "Task", 1, json!({"assignee": 1}))).await.ok();
    let frames = drain(&mut bob).await;
    assert!(frames.iter().all(|f| f["type"] == "event" && f["id"] == 1), "{frames:?}");
    assert!(frames.iter().all(|f| f.get("data").is_none()), "id payload: {frames:?}");
    for (filters, sub) in attempts.iter().zip(&subs) {
        // Only `assignee__isnull: true` (ANDed with the scope) matches nothing.
        let want: Vec<(String, i64)> = if filters.get("assignee__isnull").is_some() {
            vec![]
        } else {
            vec![("create".into(), 1), ("delete".into(), 1)]
        };
        assert_eq!(events_of(&frames, sub), want, "{filters}");
    }
    assert_eq!(events_of(&frames, &plain), vec![("create".to_owned(), 1), ("delete".to_owned(), 1)]);
    let all: Vec<&Value> = subs.iter().chain([&plain]).collect();
    assert_chained(&frames, &all);

    // `get` is scoped too: bob asks for alice's rows and gets only his.
    bob.send(json!({"type": "get", "stream": "my-tasks", "ids": [1, 2, 3, secret], "rid": "g"})).await;
    let rows = bob.recv().await;
    assert_eq!((rows["type"].as_str(), rows["rid"].as_str()), (Some("rows"), Some("g")), "{rows}");
    assert_eq!(ids_of(&rows["rows"]), vec![2]);
    assert_eq!(rows["rows"][0]["name"], "Fix bug", "get returns full rows");
}

#[tokio::test]
async fn tasks_with_filters_fields_and_snapshot() {
    let server = TestServer::start();
    let (mut alice, _) = server.subscribed("alice", 1).await;
    let bugs = subscribe(
        &mut alice,
        json!({"stream": "tasks", "filters": {"job": 1, "name__icontains": "BUG"}, "fields": ["name", "status"], "snapshot": true, "rid": 7}),
    )
    .await;
    assert_eq!(bugs["rid"], 7);
    assert_eq!(bugs["stream"], "tasks");
    let snapshot = bugs["snapshot"].as_array().expect("snapshot");
    assert_eq!(snapshot.len(), 1, "{bugs}");
    assert_eq!((snapshot[0]["id"].as_i64(), snapshot[0]["name"].as_str()), (Some(2), Some("Fix bug")));
    assert_eq!(snapshot[0]["status"], "todo");
    assert!(snapshot[0].get("assignee").is_none(), "projected: {}", snapshot[0]);
    let whole = subscribe(&mut alice, json!({"stream": "tasks", "snapshot": true})).await;
    assert_eq!(ids_of(&whole["snapshot"]), vec![1, 2, 3]);
    assert_eq!(whole["snapshot"][2]["name"], "Rotate keys", "full rows: {whole}");
    let deletes = subscribe(&mut alice, json!({"stream": "tasks", "actions": ["delete"]})).await;
    let job2 = subscribe(&mut alice, json!({"stream": "tasks", "filters": {"job": 2}, "fields": ["job"]})).await;

    // Bob moves his task along: an update, projected.
    let (mut bob, _) = server.subscribed("bob", 1).await;
    bob.write(save("job/1", "Task", 2, json!({"status": "doing"}))).await.ok();
    // Alice files another bug, and a task that is not one.
    // (Events that arrive while alice waits for her own writeResponses are kept.)
    let mut seen = Vec::new();
    let made = alice.write(create_task(1, None, json!({"name": "Another bug"}))).await;
    let another = made.ok()["instanceId"].as_i64().expect("id");
    seen.extend(made.before);
    let plain = alice.write(create_task(1, None, json!({"name": "Plain work"}))).await;
    plain.ok();
    seen.extend(plain.before);
    // Carol (admin) moves task 2 to job 2: it leaves the bug filter and enters job 2.
    let mut carol = server.json().await;
    carol.hello("carol").await;
    carol.subscribe("job", 1).await;
    carol.write(save("job/1", "Task", 2, json!({"job": 2}))).await.ok();
    carol.write(delete("job/1", "Task", another)).await.ok();

    let mut frames = seen;
    frames.extend(drain(&mut alice).await);
    frames.retain(|f| f["type"] == "event");
    assert_eq!(
        events_of(&frames, &bugs),
        vec![("update".into(), 2), ("create".into(), another), ("delete".into(), 2), ("delete".into(), another)]
    );
    let data: Vec<&Value> =
        frames.iter().filter(|f| f["subscription"] == bugs["subscription"]).map(|f| &f["data"]).collect();
    assert_eq!(data[0], &json!({"name": "Fix bug", "status": "doing"}));
    assert_eq!(data[1], &json!({"name": "Another bug", "status": "todo"}));
    assert_eq!(data[2], &json!({"name": "Fix bug", "status": "doing"}), "a move out carries the last matching image");
    assert_eq!(events_of(&frames, &deletes), vec![("delete".into(), another)]);
    assert_eq!(events_of(&frames, &job2), vec![("create".into(), 2)]);
    let moved = frames.iter().find(|f| f["subscription"] == job2["subscription"]).expect("event");
    assert_eq!(moved["data"], json!({"job": 2}));
    let all_events = events_of(&frames, &whole);
    assert_eq!(all_events.len(), 5, "{all_events:?}");
    assert_chained(&frames, &[&bugs, &whole, &deletes, &job2]);
    for f in &frames {
        assert!(f["seq"].as_i64() > bugs["seq"].as_i64(), "{f}");
    }

    // Unsubscribe: no more events for it.
    alice.send(json!({"type": "unsubscribe", "subscription": whole["subscription"]})).await;
    let u = alice.recv().await;
    assert_eq!(
        (u["type"].as_str(), u["subscription"].as_str()),
        (Some("unsubscribed"), whole["subscription"].as_str())
    );
    bob.write(save("job/1", "Task", 1, json!({"name": "still docs"}))).await;
    let frames = drain(&mut alice).await;
    assert!(frames.iter().all(|f| f["subscription"] != whole["subscription"]), "{frames:?}");
}

#[tokio::test]
async fn lookups_end_to_end_in_messagepack() {
    let server = TestServer::start();
    let mut c = server.msgpack().await;
    c.hello("alice").await;
    // Demo rows: 1 "Write docs" (job 1, alice), 2 "Fix bug" (job 1, bob), 3 "Rotate keys" (job 2, alice).
    let cases = [
        (json!({"name": "Fix bug"}), vec![2]),
        (json!({"name__iexact": "FIX BUG"}), vec![2]),
        (json!({"name__contains": "o"}), vec![1, 3]),
        (json!({"name__icontains": "W"}), vec![1]),
        (json!({"name__startswith": "R"}), vec![3]),
        (json!({"id__in": [1, 3, 99]}), vec![1, 3]),
        (json!({"id__gt": 1}), vec![2, 3]),
        (json!({"id__gte": 2, "id__lt": 3}), vec![2]),
        (json!({"id__lte": 1}), vec![1]),
        (json!({"developer__isnull": false}), vec![]),
        (json!({"assignee": 1, "job": 2}), vec![3]),
        (json!({"status__in": ["todo"], "job__in": [2]}), vec![3]),
    ];
    for (filters, want) in cases {
        let s = subscribe(&mut c, json!({"stream": "tasks", "filters": filters, "snapshot": true, "fields": []})).await;
        assert_eq!(ids_of(&s["snapshot"]), want, "{filters}");
    }
}

#[tokio::test]
async fn bad_stream_subscribes_are_refused_and_subscribe_nothing() {
    let server = TestServer::start();
    for mut c in [server.json().await, server.msgpack().await] {
        c.hello("alice").await;
        let cases = [
            (json!({"stream": "nope"}), 404, "UNKNOWN_STREAM", None),
            (json!({"stream": "tasks", "filters": {"colour": "red"}}), 400, "INVALID_DATA", Some("colour")),
            (json!({"stream": "tasks", "filters": {"name__regex": "x"}}), 400, "INVALID_DATA", Some("name__regex")),
            (json!({"stream": "tasks", "filters": {"job": "one"}}), 400, "INVALID_DATA", Some("job")),
            (json!({"stream": "tasks", "filters": {"job__gt": true}}), 400, "INVALID_DATA", Some("job__gt")),
            (json!({"stream": "my-tasks", "fields": ["name"]}), 400, "INVALID_DATA", Some("fields")),
            (json!({"stream": "tasks", "fields": ["colour"]}), 400, "INVALID_DATA", Some("fields")),
        ];
        for (sub, code, reason, field) in cases {
            let got = refused(&mut c, sub.clone()).await;
            assert_eq!(got, (code, reason.to_owned(), field.map(str::to_owned)), "{sub}");
        }
        c.send(json!({"type": "get", "stream": "nope", "ids": [1]})).await;
        assert_eq!(error_of(&c.recv().await), (404, "UNKNOWN_STREAM".to_owned()));
        let (mut bob, _) = server.subscribed("bob", 1).await;
        bob.write(save("job/1", "Task", 2, json!({"notes": "nobody is listening"}))).await.ok();
        c.expect_silence(300).await;
    }
}
