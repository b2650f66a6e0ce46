//! End to end: the demo's streams (`tasks`, full rows routed by job, for
//! project members and admins; `my-tasks`, ids scoped to the user) against the real binary, over a raw
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
        assert_eq!(s["scope"], json!({"assignee": 2}), "the server reports the scope it forces: {s}");
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
    assert!(bugs.get("scope").is_none(), "no scope on an unscoped stream: {bugs}");
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

/// `tasks` is the team's feed: dave, in no project and no admin, is refused
/// it (subscribe and `get` alike) and gets nothing of it, while `my-tasks`,
/// open to anyone signed in, still works on the same connection.
#[tokio::test]
async fn a_stream_the_policy_refuses_answers_403_and_delivers_nothing() {
    let server = TestServer::start();
    for mut dave in [server.json().await, server.msgpack().await] {
        dave.hello("dave").await;
        for sub in [json!({"stream": "tasks"}), json!({"stream": "tasks", "filters": {"job": 1}, "snapshot": true})] {
            assert_eq!(refused(&mut dave, sub.clone()).await, (403, "DENIED".to_owned(), None), "{sub}");
        }
        dave.send(json!({"type": "get", "stream": "tasks", "ids": [1, 2], "rid": "g"})).await;
        let answer = dave.recv().await;
        assert_eq!(error_of(&answer), (403, "DENIED".to_owned()), "{answer}");
        let mine = subscribe(&mut dave, json!({"stream": "my-tasks", "snapshot": true})).await;
        assert_eq!(mine["snapshot"], json!([]), "dave has no tasks: {mine}");
        // A write the refused subscription would have matched reaches him through nothing.
        let (mut bob, _) = server.subscribed("bob", 1).await;
        bob.write(save("job/1", "Task", 2, json!({"notes": "not for dave"}))).await.ok();
        dave.expect_silence(300).await;
    }
    // Members and admins are let in.
    for user in ["alice", "carol"] {
        let mut c = server.json().await;
        c.hello(user).await;
        subscribe(&mut c, json!({"stream": "tasks", "filters": {"job": 1}})).await;
    }
}

/// Reads messages until `sub` has had `n` events (failing after `RECV_TIMEOUT`
/// per message), then everything else until the connection is quiet.
async fn collect(c: &mut Client, sub: &Value, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while events_of(&out, sub).len() < n {
        out.push(c.recv().await);
    }
    out.extend(drain(c).await);
    out
}

/// `(action, id)` pairs from literals.
fn evs(list: &[(&str, i64)]) -> Vec<(String, i64)> {
    list.iter().map(|(a, id)| ((*a).to_owned(), *id)).collect()
}

/// The `data` of `sub`'s events, in order.
fn data_of<'a>(frames: &'a [Value], sub: &Value) -> Vec<&'a Value> {
    frames
        .iter()
        .filter(|f| f["type"] == "event" && f["subscription"] == sub["subscription"])
        .map(|f| &f["data"])
        .collect()
}

/// A counter or gauge from the server's `/metrics` (plain HTTP on the WebSocket port).
async fn metric(server: &TestServer, name: &str) -> u64 {
    let page = server.http_get("/metrics").await;
    assert!(page.starts_with("HTTP/1.1 200"), "GET /metrics: {page}");
    page.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{name}` in /metrics:\n{page}"))
}

/// Each action filter, `id`, live lookups (`in`, `gt`, `lte`, `isnull` both
/// ways, `startswith`, `icontains`), a combined filter with a snapshot, full
/// rows vs projection vs id payload: all decided on the events of real writes
/// through the binary.
#[tokio::test]
async fn actions_id_lookups_and_payloads_decide_live_events() {
    let server = TestServer::start();
    // Demo rows: 1 "Write docs" (job 1, alice), 2 "Fix bug" (job 1, bob), 3 "Rotate keys" (job 2, alice);
    // all todo, no developer.
    let mut watch = server.json().await;
    watch.hello("carol").await;
    let full = subscribe(&mut watch, json!({"stream": "tasks"})).await;
    let creates = subscribe(&mut watch, json!({"stream": "tasks", "actions": ["create"]})).await;
    let updates = subscribe(&mut watch, json!({"stream": "tasks", "actions": ["update"]})).await;
    let deletes = subscribe(&mut watch, json!({"stream": "tasks", "actions": ["delete"]})).await;
    // The action is the subscription's: a row entering the filter is a create.
    let entering =
        subscribe(&mut watch, json!({"stream": "tasks", "actions": ["create"], "filters": {"status": "doing"}})).await;
    let one = subscribe(&mut watch, json!({"stream": "tasks", "id": 2})).await;
    let status_in =
        subscribe(&mut watch, json!({"stream": "tasks", "filters": {"status__in": ["doing", "done"]}})).await;
    let id_gt = subscribe(&mut watch, json!({"stream": "tasks", "filters": {"id__gt": 2}})).await;
    let job_lte = subscribe(&mut watch, json!({"stream": "tasks", "filters": {"job__lte": 1}})).await;
    let has_dev = subscribe(&mut watch, json!({"stream": "tasks", "filters": {"developer__isnull": false}})).await;
    let no_dev = subscribe(&mut watch, json!({"stream": "tasks", "filters": {"developer__isnull": true}})).await;
    let starts = subscribe(&mut watch, json!({"stream": "tasks", "filters": {"name__startswith": "Fix"}})).await;
    let named = subscribe(
        &mut watch,
        json!({"stream": "tasks", "filters": {"name__icontains": "DEPLOY"}, "fields": ["name", "developer"]}),
    )
    .await;
    // Every part of this filter excludes some of the events below.
    let combined = subscribe(
        &mut watch,
        json!({"stream": "tasks", "filters": {"job": 1, "status": "todo", "developer__isnull": true},
               "fields": ["status"], "snapshot": true}),
    )
    .await;
    assert_eq!(ids_of(&combined["snapshot"]), vec![1, 2], "{combined}");
    for row in combined["snapshot"].as_array().into_iter().flatten() {
        assert_eq!(row["status"], "todo");
        assert!(row.get("name").is_none() && row.get("job").is_none(), "projected: {row}");
    }
    let mut bob_watch = server.json().await;
    bob_watch.hello("bob").await;
    let mine = subscribe(&mut bob_watch, json!({"stream": "my-tasks"})).await;

    let (mut alice, _) = server.subscribed("alice", 1).await;
    let (mut bob, _) = server.subscribed("bob", 1).await;
    let mut carol = server.json().await;
    carol.hello("carol").await;
    carol.subscribe("job", 1).await;
    carol.subscribe("job", 2).await;
    // W1: a new task in job 1 for bob, with a developer.
    let made = alice.write(create_task(1, None, json!({"name": "Deploy", "assignee": 2, "developer": 4}))).await;
    let n = made.ok()["instanceId"].as_i64().expect("created id");
    assert!(n > 3, "a new id: {n}");
    // W2: bob starts task 2; W3: task 3 gets a developer; W4: alice finishes task 1; W5: the new task goes.
    bob.write(save("job/1", "Task", 2, json!({"status": "doing"}))).await.ok();
    carol.write(save("job/2", "Task", 3, json!({"developer": 4}))).await.ok();
    alice.write(save("job/1", "Task", 1, json!({"status": "done"}))).await.ok();
    carol.write(delete("job/1", "Task", n)).await.ok();

    let frames = collect(&mut watch, &full, 5).await;
    assert!(frames.iter().all(|f| f["type"] == "event"), "{frames:?}");
    let want = [
        (&full, evs(&[("create", n), ("update", 2), ("update", 3), ("update", 1), ("delete", n)])),
        (&creates, evs(&[("create", n)])),
        (&updates, evs(&[("update", 2), ("update", 3), ("update", 1)])),
        (&deletes, evs(&[("delete", n)])),
        (&entering, evs(&[("create", 2)])),
        (&one, evs(&[("update", 2)])),
        (&status_in, evs(&[("create", 2), ("create", 1)])),
        (&id_gt, evs(&[("create", n), ("update", 3), ("delete", n)])),
        (&job_lte, evs(&[("create", n), ("update", 2), ("update", 1), ("delete", n)])),
        (&has_dev, evs(&[("create", n), ("create", 3), ("delete", n)])),
        (&no_dev, evs(&[("update", 2), ("delete", 3), ("update", 1)])),
        (&starts, evs(&[("update", 2)])),
        (&named, evs(&[("create", n), ("delete", n)])),
        (&combined, evs(&[("delete", 2), ("delete", 1)])),
    ];
    for (sub, events) in &want {
        assert_eq!(events_of(&frames, sub), *events, "{sub}");
    }
    let total: usize = want.iter().map(|(_, e)| e.len()).sum();
    assert_eq!(frames.len(), total, "no other events: {frames:?}");
    let subs: Vec<&Value> = want.iter().map(|(s, _)| *s).collect();
    assert_chained(&frames, &subs);

    // Full rows without `fields`: every field of the type, the read-only server value included.
    let full_data = data_of(&frames, &full);
    let deploy = json!({"job": 1, "name": "Deploy", "status": "todo", "notes": "", "developer": 4, "assignee": 2, "created_by": 1, "private": false});
    assert_eq!(full_data[0], &deploy, "a create carries the whole row");
    assert_eq!(full_data[1]["status"], "doing");
    assert_eq!(full_data[1].as_object().map(|o| o.len()), Some(8), "{}", full_data[1]);
    assert_eq!(full_data[2]["developer"], 4);
    assert_eq!(full_data[4], &deploy, "a delete carries the last image");
    // Projection: only the fields asked for.
    assert_eq!(data_of(&frames, &named), vec![&json!({"name": "Deploy", "developer": 4}); 2]);
    assert_eq!(data_of(&frames, &combined), vec![&json!({"status": "todo"}); 2], "the last matching image");

    // The id payload: the same changes, ids only.
    let bob_frames = collect(&mut bob_watch, &mine, 3).await;
    assert_eq!(events_of(&bob_frames, &mine), evs(&[("create", n), ("update", 2), ("delete", n)]));
    assert_eq!(bob_frames.len(), 3, "{bob_frames:?}");
    assert!(bob_frames.iter().all(|f| f.get("data").is_none()), "id payload: {bob_frames:?}");
    assert_chained(&bob_frames, &[&mine]);
}

/// Subscribes the same set of `tasks` and `my-tasks` subscriptions on a fresh
/// server (`--stream-index false` when `index` is false), runs the same five
/// writes, and returns every event frame received and how many subscriptions
/// each write woke (`statecast_stream_evaluations_total`).
async fn routing_run(index: bool) -> (Vec<Value>, Vec<u64>) {
    let server = if index { TestServer::start() } else { TestServer::start_args(&["--stream-index", "false"]) };
    let mut watch = server.json().await;
    watch.hello("alice").await;
    let subs = [
        json!({"stream": "tasks", "filters": {"job": 1}}),
        json!({"stream": "tasks", "filters": {"job": 1, "status": "todo"}, "fields": ["name"]}),
        json!({"stream": "tasks", "filters": {"job__in": [1]}, "actions": ["delete"]}),
        json!({"stream": "tasks", "filters": {"job": 2}}),
        json!({"stream": "tasks", "filters": {"job": 2, "status": "todo"}, "fields": ["name"]}),
        json!({"stream": "tasks", "filters": {"job__in": [2]}, "actions": ["create", "delete"]}),
        json!({"stream": "tasks", "id": 3}),
        json!({"stream": "tasks", "filters": {"name__icontains": "o"}}),
        json!({"stream": "my-tasks"}),
    ];
    for sub in subs {
        subscribe(&mut watch, sub).await;
    }
    let mut bob_watch = server.msgpack().await;
    bob_watch.hello("bob").await;
    subscribe(&mut bob_watch, json!({"stream": "my-tasks", "filters": {"status__in": ["todo", "doing"]}})).await;
    // The pacer: unindexed, sees every write; once its event is here the write is routed.
    let mut pacer = server.json().await;
    pacer.hello("carol").await;
    let every = subscribe(&mut pacer, json!({"stream": "tasks", "fields": []})).await;
    assert_eq!(metric(&server, "statecast_stream_subscriptions").await, 11);

    let (mut alice, _) = server.subscribed("alice", 1).await;
    let mut carol = server.json().await;
    carol.hello("carol").await;
    carol.subscribe("job", 1).await;
    carol.subscribe("job", 2).await;
    let mut woken = Vec::new();
    let mut paced = Vec::new();
    let mut created = None;
    for step in 0..5 {
        let before = metric(&server, "statecast_stream_evaluations_total").await;
        match step {
            // Task 2 (job 1, bob's) moves on; task 3 (job 2, alice's) is done; task 1 moves to job 2.
            0 => {
                carol.write(save("job/1", "Task", 2, json!({"status": "doing"}))).await.ok();
            }
            1 => {
                carol.write(save("job/2", "Task", 3, json!({"status": "done"}))).await.ok();
            }
            2 => {
                carol.write(save("job/1", "Task", 1, json!({"job": 2}))).await.ok();
            }
            // A new task in job 1 for bob (a client-minted id, the same in both runs), then gone.
            3 => {
                let w =
                    alice.write(create_task(1, Some(MINTED_MIN + 7), json!({"name": "Backup", "assignee": 2}))).await;
                created = w.ok()["instanceId"].as_i64();
            }
            _ => {
                carol.write(delete("job/1", "Task", created.expect("created"))).await.ok();
            }
        }
        paced.push(pacer.recv_type("event").await);
        woken.push(metric(&server, "statecast_stream_evaluations_total").await - before);
    }
    assert_eq!(created, Some(MINTED_MIN + 7));
    let mut frames = drain(&mut watch).await;
    frames.extend(drain(&mut bob_watch).await);
    frames.extend(paced);
    frames.extend(drain(&mut pacer).await);
    assert!(frames.iter().all(|f| f["type"] == "event"), "{frames:?}");
    assert_chained(&frames, &[&every]);
    (frames, woken)
}

/// The index changes who is looked at, never what is delivered: the same
/// subscriptions and writes against a server with the default index and one
/// with `--stream-index false` deliver identical events, and the index wakes
/// only the matching groups.
#[tokio::test]
async fn indexed_routing_wakes_only_the_matching_group_and_delivers_the_same() {
    let (indexed, woken) = routing_run(true).await;
    let (scanned, woken_all) = routing_run(false).await;
    assert_eq!(indexed, scanned, "the same events with and without the index");
    // s1 `job: 1` sees the three job-1 writes that keep it in job 1, the move out, the create and the delete.
    let s1: Vec<(String, i64)> = indexed
        .iter()
        .filter(|f| f["subscription"] == "s1")
        .map(|f| (f["action"].as_str().unwrap_or("").to_owned(), f["id"].as_i64().unwrap_or(0)))
        .collect();
    let n = MINTED_MIN + 7;
    assert_eq!(s1, evs(&[("update", 2), ("delete", 1), ("create", n), ("delete", n)]), "{indexed:?}");
    // Every event, by (seq, subscription): seq 2 is task 2, 3 task 3, 4 the move of task 1, 5 and 6 the new task.
    let mut all: Vec<(i64, String, String, i64)> = indexed
        .iter()
        .map(|f| {
            let sub = f["subscription"].as_str().unwrap_or("").to_owned();
            (
                f["seq"].as_i64().unwrap_or(0),
                sub,
                f["action"].as_str().unwrap_or("").to_owned(),
                f["id"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    all.sort();
    let want: Vec<(i64, String, String, i64)> = [
        (2, "s1", "update", 2),
        (2, "s10", "update", 2),
        (2, "s11", "update", 2),
        (2, "s2", "delete", 2),
        (3, "s11", "update", 3),
        (3, "s4", "update", 3),
        (3, "s5", "delete", 3),
        (3, "s7", "update", 3),
        (3, "s8", "update", 3),
        (3, "s9", "update", 3),
        (4, "s1", "delete", 1),
        (4, "s11", "update", 1),
        (4, "s2", "delete", 1),
        (4, "s3", "delete", 1),
        (4, "s4", "create", 1),
        (4, "s5", "create", 1),
        (4, "s6", "create", 1),
        (4, "s8", "update", 1),
        (4, "s9", "update", 1),
        (5, "s1", "create", n),
        (5, "s10", "create", n),
        (5, "s11", "create", n),
        (5, "s2", "create", n),
        (6, "s1", "delete", n),
        (6, "s10", "delete", n),
        (6, "s11", "delete", n),
        (6, "s2", "delete", n),
        (6, "s3", "delete", n),
    ]
    .into_iter()
    .map(|(seq, sub, action, id)| (seq, sub.to_owned(), action.to_owned(), id))
    .collect();
    assert_eq!(all, want);
    // Tasks: job 1 and job 2 have 3 subscriptions each, `id: 3` is grouped by id, 2 are unindexed
    // (`icontains` and the pacer); my-tasks has one per assignee (alice, bob).
    // Task 2 (job 1, bob): job 1 + 2 unindexed + bob = 6.
    // Task 3 (job 2, alice): job 2 + id 3 + 2 + alice = 7.
    // Task 1 job 1 → 2 (alice): both jobs + 2 + alice = 9.
    // Create and delete in job 1 for bob: job 1 + 2 + bob = 6 each.
    assert_eq!(woken, vec![6, 7, 9, 6, 6], "with the index only the matching groups are decided");
    assert_eq!(woken_all, vec![11; 5], "without it every subscription of both streams is decided");
}
