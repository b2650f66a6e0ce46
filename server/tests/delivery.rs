//! End to end: the demo's seeded state, how changes reach subscribers (order,
//! writeId only to the writer, only changed fields, membership following the
//! data) and both codecs in one context.

mod common;

use common::*;
use serde_json::{Value, json};

/// A row without its `_version` (which depends on commit order).
fn fields_of(row: &Value) -> Value {
    let mut r = row.clone();
    if let Some(o) = r.as_object_mut() {
        o.remove("_version");
    }
    r
}

#[tokio::test]
async fn hello_and_subscribe_show_the_demo_rows() {
    let server = TestServer::start();
    let mut alice = server.json().await;
    let welcome = alice.hello("alice").await;
    assert_eq!(welcome["user"]["id"], 1, "{welcome}");
    assert_eq!(welcome["user"]["name"], "alice");
    assert!(welcome["connectionId"].is_string(), "{welcome}");
    assert!(welcome["epoch"].as_str().is_some_and(|e| !e.is_empty()), "{welcome}");
    assert!(welcome.get("schema").is_some_and(|s| !s.is_null()), "{welcome}");

    let state = alice.subscribe("job", 1).await;
    assert_eq!((state["channel"].clone(), state["anchorId"].clone()), (json!("job"), json!(1)));
    assert_eq!(state["epoch"], welcome["epoch"]);
    let seq = state["seq"].as_u64().expect("seq");
    assert!(seq >= 1, "the seed was committed: {state}");
    let rows = rows(&state);
    assert_eq!(rows.len(), 3, "job 1 and tasks 1 and 2: {state}");
    for r in rows.values() {
        assert!(r["_version"].as_u64().is_some_and(|v| v >= 1 && v <= seq), "{r}");
    }
    assert_eq!(
        fields_of(&rows[&("Job".to_owned(), 1)]),
        json!({"_type": "Job", "id": 1, "name": "Launch", "project": 1, "owner": 1})
    );
    assert_eq!(
        fields_of(&rows[&("Task".to_owned(), 1)]),
        json!({"_type": "Task", "id": 1, "job": 1, "name": "Write docs", "status": "todo", "notes": "",
               "developer": null, "assignee": 1, "created_by": 1, "private": false})
    );
    assert_eq!(
        fields_of(&rows[&("Task".to_owned(), 2)]),
        json!({"_type": "Task", "id": 2, "job": 1, "name": "Fix bug", "status": "todo", "notes": "",
               "developer": null, "assignee": 2, "created_by": 2, "private": false})
    );

    let job2 = alice.subscribe("job", 2).await;
    assert_eq!(
        fields_of(&row(&job2, "Task", 3).expect("task 3")),
        json!({"_type": "Task", "id": 3, "job": 2, "name": "Rotate keys", "status": "todo", "notes": "",
               "developer": null, "assignee": 1, "created_by": 2, "private": false})
    );
    assert_eq!(row(&job2, "Job", 2).expect("job 2")["owner"], 2);
}

#[tokio::test]
async fn unknown_channels_and_anchors_are_404() {
    let server = TestServer::start();
    let mut c = server.json().await;
    c.hello("dave").await;
    c.send(json!({"type": "subscribe", "channel": "nope", "anchorId": 1})).await;
    assert_eq!(error_of(&c.recv_type("error").await), (404, "UNKNOWN_CHANNEL".to_owned()));
    c.send(json!({"type": "subscribe", "channel": "job", "anchorId": 99})).await;
    let e = c.recv_type("error").await;
    assert_eq!(error_of(&e), (404, "ANCHOR_NOT_FOUND".to_owned()));
    assert_eq!(e["context"], "job/99", "{e}");
    c.ping().await;
}

#[tokio::test]
async fn demo_jobs_gives_more_contexts_to_write_into() {
    let server = TestServer::start_args(&["--demo-jobs", "5"]);
    let (mut alice, state) = server.subscribed("alice", 5).await;
    assert_eq!(rows(&state).len(), 1, "job 5 and no tasks: {state}");
    assert_eq!(
        fields_of(&row(&state, "Job", 5).expect("job 5")),
        json!({"_type": "Job", "id": 5, "name": "Job 5", "project": 1, "owner": 1})
    );
    let w = alice.write(create_task(5, None, json!({"name": "In job 5"}))).await;
    assert!(w.ok()["instanceId"].as_i64().is_some_and(|id| id > 3), "{}", w.response);

    // The demo's own rows are there as before, and there is no job 6.
    let (_bob, job1) = server.subscribed("bob", 1).await;
    assert_eq!(rows(&job1).len(), 3, "{job1}");
    alice.send(json!({"type": "subscribe", "channel": "job", "anchorId": 6})).await;
    assert_eq!(error_of(&alice.recv_type("error").await), (404, "ANCHOR_NOT_FOUND".to_owned()));
}

#[test]
fn a_demo_jobs_count_out_of_range_stops_the_server_before_it_listens() {
    for (flags, expect) in [
        (["--demo-jobs", "1"], "outside 2..=500"),
        (["--demo-jobs", "501"], "outside 2..=500"),
        (["--mode", "dev"], "mode `dev` inserts no demo rows"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_statecast-server"))
            .args(["--ws-addr", "127.0.0.1:0", "--quic-addr", "off", "--store", "fjall:/nonexistent/never-created"])
            .args(flags)
            .args(if flags[0] == "--mode" { &["--demo-jobs", "8"][..] } else { &[][..] })
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run statecast-server");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} must fail: {stderr}");
        assert!(stderr.contains("--demo-jobs") && stderr.contains(expect), "{flags:?}: {stderr}");
        assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "no listening line: {flags:?}");
        assert!(!std::path::Path::new("/nonexistent/never-created").exists(), "no store was opened");
    }
}

#[tokio::test]
async fn the_writer_gets_its_delta_before_the_response_and_others_get_the_change() {
    let server = TestServer::start();
    let (mut alice, state) = server.subscribed("alice", 1).await;
    let (mut bob, bob_state) = server.subscribed("bob", 1).await;
    let (mut carol, _) = server.subscribed("carol", 2).await;

    let write_id = alice.write_id();
    let mut w = save("job/1", "Task", 1, json!({"status": "doing"}));
    w["writeId"] = json!(write_id);
    alice.send(w).await;

    // The writer: first the delta carrying writeId, then the writeResponse.
    let delta = alice.recv().await;
    assert_eq!(delta["type"], "delta", "the delta comes before the writeResponse: {delta}");
    assert_eq!((delta["context"].clone(), delta["writeId"].clone()), (json!("job/1"), json!(write_id)));
    assert_eq!(delta["prev"], state["seq"], "prev names the state");
    let response = alice.recv().await;
    assert_eq!(response["type"], "writeResponse", "{response}");
    assert_eq!((response["writeId"].clone(), response["success"].clone()), (json!(write_id), json!(true)));
    assert_eq!(response["seq"], delta["seq"]);
    let seq = delta["seq"].as_u64().expect("seq");
    assert!(seq > state["seq"].as_u64().expect("state seq"));
    assert_eq!(
        changes(&delta),
        vec![json!({"op": "update", "_type": "Task", "id": 1, "_version": seq, "status": "doing"})],
        "an update holds only the changed fields"
    );

    // Another subscriber of job/1: the same change, no writeId.
    let other = bob.recv().await;
    assert_eq!(other["type"], "delta", "{other}");
    assert!(other.get("writeId").is_none() && other.get("created").is_none(), "{other}");
    assert_eq!((other["context"].clone(), other["seq"].clone()), (json!("job/1"), json!(seq)));
    assert_eq!(other["prev"], bob_state["seq"]);
    assert_eq!(other["changes"], delta["changes"]);

    // job/2 is not touched.
    carol.expect_silence(300).await;
    bob.expect_silence(100).await;
}

#[tokio::test]
async fn deltas_chain_with_prev_in_commit_order() {
    let server = TestServer::start();
    let (mut alice, _) = server.subscribed("alice", 1).await;
    let (mut bob, state) = server.subscribed("bob", 1).await;
    let mut seqs = Vec::new();
    for status in ["doing", "done", "todo"] {
        let w = alice.write(save("job/1", "Task", 1, json!({"status": status}))).await;
        seqs.push(w.ok()["seq"].as_u64().expect("seq"));
    }
    let w = bob.write(save("job/1", "Task", 2, json!({"notes": "bob's"}))).await;
    seqs.push(w.ok()["seq"].as_u64().expect("seq"));
    assert!(seqs.windows(2).all(|p| p[0] < p[1]), "{seqs:?}");

    // bob saw alice's three deltas before his own write's response, then his own delta, chained by prev.
    let mut prev = state["seq"].clone();
    let mut seen = Vec::new();
    for d in w.deltas() {
        assert_eq!(d["prev"], prev, "{d}");
        prev = d["seq"].clone();
        seen.push(d["seq"].as_u64().expect("seq"));
    }
    assert!(w.deltas().last().is_some_and(|d| d["writeId"] == w.response["writeId"]), "{:?}", w.before);
    assert_eq!(seen, seqs, "bob saw every commit of job/1 in order");
    alice.recv_type("delta").await;
    alice.expect_silence(100).await;
}

#[tokio::test]
async fn re_parenting_moves_the_row_between_contexts() {
    let server = TestServer::start();
    let (mut alice, _) = server.subscribed("alice", 1).await;
    let (mut bob, _) = server.subscribed("bob", 2).await;
    let (mut carol, _) = server.subscribed("carol", 1).await;

    let w = carol.write(save("job/1", "Task", 1, json!({"job": 2}))).await;
    let seq = w.ok()["seq"].clone();

    let left = alice.recv_type("delta").await;
    assert_eq!((left["context"].clone(), left["seq"].clone()), (json!("job/1"), seq.clone()));
    let ch = changes(&left);
    assert_eq!(ch.len(), 1, "{left}");
    assert_eq!(
        (ch[0]["op"].clone(), ch[0]["_type"].clone(), ch[0]["id"].clone()),
        (json!("delete"), json!("Task"), json!(1))
    );

    let joined = bob.recv_type("delta").await;
    assert_eq!((joined["context"].clone(), joined["seq"].clone()), (json!("job/2"), seq.clone()));
    let ch = changes(&joined);
    assert_eq!(ch.len(), 1, "{joined}");
    assert_eq!(ch[0]["op"], "create", "the row joins job/2 as a create: {joined}");
    assert_eq!(
        fields_of(&ch[0]),
        json!({"op": "create", "_type": "Task", "id": 1, "job": 2, "name": "Write docs", "status": "todo",
               "notes": "", "developer": null, "assignee": 1, "created_by": 1, "private": false}),
        "with the full row"
    );

    let (_c, job1) = server.subscribed("carol", 1).await;
    assert!(row(&job1, "Task", 1).is_none());
    let (_c, job2) = server.subscribed("carol", 2).await;
    assert_eq!(row(&job2, "Task", 1).expect("task 1 in job 2")["job"], 2);
}

#[tokio::test]
async fn a_write_that_changes_nothing_has_no_delta() {
    let server = TestServer::start();
    let (mut alice, _) = server.subscribed("alice", 1).await;
    let (mut bob, _) = server.subscribed("bob", 1).await;
    let w = alice.write(save("job/1", "Task", 1, json!({"status": "todo"}))).await;
    w.ok();
    assert!(w.deltas().is_empty(), "{:?}", w.before);
    bob.expect_silence(300).await;
}

#[tokio::test]
async fn json_and_messagepack_clients_see_the_same_changes() {
    let server = TestServer::start();
    let mut alice = server.json().await;
    alice.hello("alice").await;
    let json_state = alice.subscribe("job", 1).await;
    let mut bob = server.msgpack().await;
    let welcome = bob.hello("bob").await;
    assert_eq!(welcome["user"]["id"], 2);
    let mp_state = bob.subscribe("job", 1).await;
    assert_eq!(rows(&mp_state), rows(&json_state));
    assert_eq!(mp_state["seq"], json_state["seq"]);

    // alice (JSON) writes; bob (MessagePack) sees the same delta.
    let w = alice.write(create_task(1, Some(-7), json!({"name": "From JSON", "assignee": 2}))).await;
    let mine = w.deltas()[0].clone();
    let theirs = bob.recv_type("delta").await;
    assert_eq!((theirs["seq"].clone(), theirs["changes"].clone()), (mine["seq"].clone(), mine["changes"].clone()));
    let id = w.ok()["instanceId"].as_i64().expect("id");

    // bob (MessagePack) writes; alice (JSON) sees it.
    let w = bob.write(save("job/1", "Task", id, json!({"status": "done", "notes": "from msgpack"}))).await;
    let mine = w.deltas()[0].clone();
    assert!(mine["writeId"].is_i64(), "{mine}");
    let theirs = alice.recv_type("delta").await;
    assert_eq!((theirs["seq"].clone(), theirs["changes"].clone()), (mine["seq"].clone(), mine["changes"].clone()));
    assert_eq!(changes(&theirs)[0]["notes"], "from msgpack");

    let (_c, after) = server.subscribed("carol", 1).await;
    let mut mp = server.msgpack().await;
    mp.hello("carol").await;
    let mp_after = mp.subscribe("job", 1).await;
    assert_eq!(rows(&mp_after), rows(&after));
}

/// Each part of a split message: numbered from 0, `last` only on the final
/// one, every frame within `limit` (compact JSON, as the server sends it).
fn assert_parts(parts: &[&Value], limit: usize) {
    assert!(parts.len() > 1, "expected several parts, got {}", parts.len());
    for (i, part) in parts.iter().enumerate() {
        assert_eq!(part["part"], json!(i), "{part}");
        assert_eq!(part["last"], json!(i + 1 == parts.len()), "{part}");
        let size = part.to_string().len();
        assert!(size <= limit, "part {i} is {size} bytes, over the {limit}-byte frame limit");
    }
}

/// The frame limit applies to what a client sends too, so the tasks go in
/// small batches; a delta over the limit is split the same way (unit-tested
/// in `statecast-core`'s `engine::split`).
#[tokio::test]
async fn a_state_over_the_frame_limit_arrives_in_parts_within_it() {
    const LIMIT: usize = 4096;
    let server = TestServer::start_args(&["--frame-limit", &LIMIT.to_string()]);
    let (mut alice, _) = server.subscribed("alice", 1).await;
    // 40 tasks with long names, about 8 KB of rows.
    let names: Vec<String> = (0..40).map(|i| format!("{i:03} {}", "n".repeat(150))).collect();
    for chunk in names.chunks(10) {
        let ops =
            chunk.iter().enumerate().map(|(i, name)| create_task(1, Some(-(i as i64) - 1), json!({"name": name})));
        alice.write(batch("job/1", ops.collect())).await.ok();
    }

    let mut bob = server.json().await;
    bob.hello("bob").await;
    bob.send(json!({"type": "subscribe", "channel": "job", "anchorId": 1})).await;
    let mut states = Vec::new();
    loop {
        let state = bob.recv_type("state").await;
        let last = state["last"] != false;
        states.push(state);
        if last {
            break;
        }
    }
    let states: Vec<&Value> = states.iter().collect();
    assert_parts(&states, LIMIT);
    let in_state: Vec<&str> = states
        .iter()
        .flat_map(|s| s["instances"].as_array().expect("instances"))
        .filter_map(|r| r["name"].as_str())
        .filter(|n| n.len() > 150)
        .collect();
    assert_eq!(in_state.len(), names.len(), "every task is in exactly one part");
    assert!(names.iter().all(|n| in_state.contains(&n.as_str())));
    // The parts make one state: the subscription is live afterwards.
    let w = alice.write(save("job/1", "Task", 1, json!({"status": "doing"}))).await;
    w.ok();
    let delta = bob.recv_type("delta").await;
    assert_eq!(delta["changes"][0]["status"], "doing", "{delta}");
}
