//! End to end: the write checks (writable, context, the demo policy), ids on
//! create, deletes and batches, against the real binary.

mod common;

use common::*;
use serde_json::{Value, json};

/// Asserts the write was refused with `code`/`reason` and that job/1 is unchanged.
async fn refused(server: &TestServer, c: &mut Client, before: &Value, write: Value, code: i64, reason: &str) {
    let w = c.write(write.clone()).await;
    assert_eq!(w.refused(), (code, reason.to_owned()), "{write} → {}", w.response);
    assert!(w.deltas().is_empty(), "a refused write sent a delta: {:?}", w.before);
    assert_unchanged(server, 1, before).await;
}

#[tokio::test]
async fn a_type_or_op_not_declared_writable_is_403_not_writable() {
    let server = TestServer::start();
    let (mut carol, before) = server.subscribed("carol", 1).await;
    // Job is in the tree but not writable, even for an admin.
    refused(&server, &mut carol, &before, save("job/1", "Job", 1, json!({"name": "Renamed"})), 403, "NOT_WRITABLE")
        .await;
    refused(&server, &mut carol, &before, delete("job/1", "Job", 1), 403, "NOT_WRITABLE").await;
    carol.ping().await;
}

#[tokio::test]
async fn a_target_outside_the_context_is_400_not_in_context() {
    let server = TestServer::start();
    let (mut alice, before) = server.subscribed("alice", 1).await;
    // alice is task 3's assignee (the policy would allow it), but task 3 belongs to job/2.
    let w = save("job/1", "Task", 3, json!({"status": "doing"}));
    refused(&server, &mut alice, &before, w, 400, "NOT_IN_CONTEXT").await;
    let (_bob, job2) = server.subscribed("bob", 2).await;
    assert_eq!(row(&job2, "Task", 3).expect("task 3")["status"], "todo");
}

#[tokio::test]
async fn the_assignee_may_change_status_and_notes_only() {
    let server = TestServer::start();
    let (mut alice, before) = server.subscribed("alice", 1).await;
    refused(&server, &mut alice, &before, save("job/1", "Task", 1, json!({"name": "Mine"})), 403, "DENIED").await;
    let w = save("job/1", "Task", 1, json!({"status": "doing", "name": "Mine"}));
    refused(&server, &mut alice, &before, w, 403, "DENIED").await;
    // bob is not task 1's assignee.
    let (mut bob, _) = server.subscribed("bob", 1).await;
    refused(&server, &mut bob, &before, save("job/1", "Task", 1, json!({"status": "done"})), 403, "DENIED").await;

    let w = alice.write(save("job/1", "Task", 1, json!({"status": "doing", "notes": "on it"}))).await;
    assert!(w.ok()["seq"].as_u64().is_some_and(|s| s > before["seq"].as_u64().unwrap_or(0)), "{}", w.response);
    let (_c, after) = server.subscribed("carol", 1).await;
    let task = row(&after, "Task", 1).expect("task 1");
    assert_eq!((task["status"].clone(), task["notes"].clone()), (json!("doing"), json!("on it")));
    assert_eq!(task["name"], "Write docs");
}

#[tokio::test]
async fn an_admin_may_change_any_writable_field() {
    let server = TestServer::start();
    let (mut carol, _) = server.subscribed("carol", 1).await;
    let data = json!({"name": "Write better docs", "status": "done", "notes": "n", "developer": 4, "assignee": 2});
    carol.write(save("job/1", "Task", 1, data.clone())).await.ok();
    let (_c, after) = server.subscribed("alice", 1).await;
    let task = row(&after, "Task", 1).expect("task 1");
    for (k, v) in data.as_object().expect("object") {
        assert_eq!(&task[k], v, "{k}");
    }
    assert_eq!(task["created_by"], 1, "created_by is read-only and kept");
}

#[tokio::test]
async fn members_of_the_project_may_create_and_others_may_not() {
    let server = TestServer::start();
    // dave, in no project, may not even read the job.
    let mut dave = server.json().await;
    dave.hello("dave").await;
    dave.send(json!({"type": "subscribe", "channel": "job", "anchorId": 1})).await;
    assert_eq!(error_of(&dave.recv().await), (403, "DENIED".to_owned()));
    let w = dave.write(create_task(1, Some(-1), json!({"name": "Sneaky"}))).await;
    assert_eq!(w.refused(), (400, "NOT_IN_CONTEXT".to_owned()));
    // carol is an admin but not a member of project 1: she reads, but may not create.
    let (mut carol, before) = server.subscribed("carol", 1).await;
    refused(&server, &mut carol, &before, create_task(1, Some(-1), json!({"name": "Admin"})), 403, "DENIED").await;

    let (mut bob, _) = server.subscribed("bob", 1).await;
    let w = bob.write(create_task(1, None, json!({"name": "Plan launch"}))).await;
    let id = w.ok()["instanceId"].as_i64().expect("instanceId");
    let (_c, after) = server.subscribed("alice", 1).await;
    let task = row(&after, "Task", id).expect("the new task");
    assert_eq!(task["name"], "Plan launch");
    assert_eq!(task["job"], 1);
    assert_eq!(task["status"], "todo", "default");
    assert_eq!(task["notes"], "", "default");
    assert_eq!((task["developer"].clone(), task["assignee"].clone()), (Value::Null, Value::Null));
    assert_eq!(task["created_by"], 2, "created_by is set by the server to the writer");
}

#[tokio::test]
async fn the_creator_or_an_admin_may_delete() {
    let server = TestServer::start();
    let (mut alice, before) = server.subscribed("alice", 1).await;
    // alice did not create task 2 and is no admin.
    refused(&server, &mut alice, &before, delete("job/1", "Task", 2), 403, "DENIED").await;

    // bob created task 2: the delete is a `delete` change, to him (with writeId) and to alice.
    let (mut bob, _) = server.subscribed("bob", 1).await;
    let w = bob.write(delete("job/1", "Task", 2)).await;
    let seq = w.ok()["seq"].clone();
    let deltas = w.deltas();
    assert_eq!(deltas.len(), 1, "{:?}", w.before);
    let ch = changes(deltas[0]);
    assert_eq!(ch.len(), 1, "{ch:?}");
    assert_eq!(
        (ch[0]["op"].clone(), ch[0]["_type"].clone(), ch[0]["id"].clone()),
        (json!("delete"), json!("Task"), json!(2))
    );
    let seen = alice.recv_type("delta").await;
    assert_eq!(seen["seq"], seq);
    assert_eq!(changes(&seen)[0]["op"], "delete");

    // carol is an admin.
    let (mut carol, _) = server.subscribed("carol", 1).await;
    carol.write(delete("job/1", "Task", 1)).await.ok();
    let (_c, after) = server.subscribed("carol", 1).await;
    assert!(row(&after, "Task", 1).is_none() && row(&after, "Task", 2).is_none());
    assert!(row(&after, "Job", 1).is_some());
}

#[tokio::test]
async fn a_create_without_an_id_gets_a_server_id() {
    let server = TestServer::start();
    let (mut alice, _) = server.subscribed("alice", 1).await;
    let w = alice.write(create_task(1, None, json!({"name": "No id"}))).await;
    let r = w.ok();
    let id = r["instanceId"].as_i64().expect("instanceId");
    assert!(id > 3 && id < MINTED_MIN, "server ids grow from 1 past the seeded ones: {id}");
    let created = r["created"].as_array().expect("created");
    assert_eq!(created.len(), 1);
    assert_eq!((created[0]["_type"].clone(), created[0]["id"].clone()), (json!("Task"), json!(id)));
    assert!(created[0].get("tempId").is_none(), "no temp id was sent: {r}");
}

#[tokio::test]
async fn a_temp_id_is_mapped_to_a_real_one() {
    let server = TestServer::start();
    let (mut alice, _) = server.subscribed("alice", 1).await;
    let (mut bob, _) = server.subscribed("bob", 1).await;
    let w = alice.write(create_task(1, Some(-1), json!({"name": "Temp", "assignee": 2}))).await;
    let r = w.ok().clone();
    let id = r["instanceId"].as_i64().expect("instanceId");
    assert!(id > 0, "{r}");
    assert_eq!(r["created"], json!([{"_type": "Task", "tempId": -1, "id": id}]));

    // The writer's delta carries writeId and the mapping; the create change is the full row.
    let deltas = w.deltas();
    assert_eq!(deltas.len(), 1, "{:?}", w.before);
    assert_eq!(deltas[0]["writeId"], r["writeId"]);
    assert_eq!(deltas[0]["created"], r["created"]);
    let ch = changes(deltas[0]);
    assert_eq!((ch[0]["op"].clone(), ch[0]["id"].clone()), (json!("create"), json!(id)));
    for (k, v) in [("name", json!("Temp")), ("job", json!(1)), ("status", json!("todo")), ("notes", json!(""))] {
        assert_eq!(ch[0][k], v, "{k} in {}", ch[0]);
    }
    assert_eq!((ch[0]["assignee"].clone(), ch[0]["created_by"].clone()), (json!(2), json!(1)));
    assert!(ch[0]["developer"].is_null() && ch[0].get("developer").is_some(), "a create holds every field");

    let other = bob.recv_type("delta").await;
    assert!(other.get("writeId").is_none() && other.get("created").is_none(), "{other}");
    assert_eq!(changes(&other), ch);
}

#[tokio::test]
async fn a_client_minted_id_is_used_verbatim_and_a_taken_one_is_409() {
    let server = TestServer::start();
    let (mut alice, _) = server.subscribed("alice", 1).await;
    let minted = MINTED_MIN + 123_456_789;
    let w = alice.write(create_task(1, Some(minted), json!({"name": "Minted"}))).await;
    let r = w.ok();
    assert_eq!(r["instanceId"], minted);
    assert_eq!(r["created"][0]["id"], minted);
    assert!(r["created"][0].get("tempId").is_none(), "{r}");
    let largest = MINTED_END - 1;
    alice.write(create_task(1, Some(largest), json!({"name": "Largest"}))).await.ok();

    let (_c, before) = server.subscribed("alice", 1).await;
    assert_eq!(row(&before, "Task", minted).expect("minted row")["name"], "Minted");
    let w = create_task(1, Some(minted), json!({"name": "Again"}));
    refused(&server, &mut alice, &before, w, 409, "ID_CONFLICT").await;
}

#[tokio::test]
async fn an_id_outside_the_allowed_ranges_is_400_invalid_id() {
    let server = TestServer::start();
    let (mut alice, before) = server.subscribed("alice", 1).await;
    for id in [5, 0, 1, MINTED_MIN - 1, MINTED_END] {
        let w = create_task(1, Some(id), json!({"name": "Bad id"}));
        refused(&server, &mut alice, &before, w, 400, "INVALID_ID").await;
    }
}

#[tokio::test]
async fn a_batch_is_all_or_nothing_and_names_the_failing_op() {
    let server = TestServer::start();
    let (mut alice, before) = server.subscribed("alice", 1).await;
    let ops = vec![
        save("job/1", "Task", 1, json!({"status": "done"})),
        create_task(1, Some(-1), json!({"name": "Also"})),
        save("job/1", "Task", 1, json!({"name": "Not allowed"})),
    ];
    let w = alice.write(batch("job/1", ops)).await;
    assert_eq!(w.refused(), (403, "DENIED".to_owned()));
    assert_eq!(w.response["error"]["op"], 2, "{}", w.response);
    assert!(w.deltas().is_empty());
    assert_unchanged(&server, 1, &before).await;

    let ops = vec![save("job/1", "Task", 1, json!({"status": "done"})), create_task(1, None, json!({"name": ""}))];
    let w = alice.write(batch("job/1", ops)).await;
    assert_eq!(w.refused(), (400, "INVALID_DATA".to_owned()));
    assert_eq!((w.response["error"]["op"].clone(), w.response["error"]["field"].clone()), (json!(1), json!("name")));
    assert_unchanged(&server, 1, &before).await;
}

#[tokio::test]
async fn a_later_batch_op_may_use_an_earlier_ops_temp_id() {
    let server = TestServer::start();
    let (mut alice, before) = server.subscribed("alice", 1).await;
    let ops = vec![
        create_task(1, Some(-1), json!({"name": "Chained", "assignee": 1})),
        save("job/1", "Task", -1, json!({"status": "doing"})),
        save("job/1", "Task", 1, json!({"notes": "see the new task"})),
    ];
    let w = alice.write(batch("job/1", ops)).await;
    let r = w.ok().clone();
    let created = r["created"].as_array().expect("created").clone();
    assert_eq!(created.len(), 1, "{r}");
    assert_eq!((created[0]["_type"].clone(), created[0]["tempId"].clone()), (json!("Task"), json!(-1)));
    let id = created[0]["id"].as_i64().expect("id");
    assert!(id > 0);
    // One commit: every delta of the writer carries the batch's seq.
    for d in w.deltas() {
        assert_eq!((d["seq"].clone(), d["writeId"].clone()), (r["seq"].clone(), r["writeId"].clone()), "{d}");
    }
    let (_c, after) = server.subscribed("bob", 1).await;
    let task = row(&after, "Task", id).expect("the chained task");
    assert_eq!((task["name"].clone(), task["status"].clone()), (json!("Chained"), json!("doing")));
    assert_eq!(row(&after, "Task", 1).expect("task 1")["notes"], "see the new task");
    assert_eq!(rows(&after).len(), rows(&before).len() + 1);
}

/// Eight connections save one row back to back. Writes to one row take turns
/// (check, then commit, then the next one checks), so however hot the row,
/// every save commits (no 503 CONTENDED) and the row ends as the last commit
/// left it. (Before turns, 85 of these 320 saves were refused.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saves_racing_on_one_row_all_commit() {
    const WRITERS: usize = 8;
    const SAVES: usize = 40;
    let server = TestServer::start();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (mut alice, _) = server.subscribed("alice", 1).await;
        writers.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for i in 0..SAVES {
                let r = alice.write(save("job/1", "Task", 1, json!({"notes": format!("w{w}-{i}")}))).await;
                answers.push(r.response);
            }
            answers
        }));
    }
    let (mut contended, mut committed) = (0, Vec::new());
    for w in writers {
        for answer in w.await.expect("writer task") {
            if answer["success"] == true {
                committed.push(answer["seq"].as_u64().expect("seq"));
            } else {
                assert_eq!(error_of(&answer), (503, "CONTENDED".to_owned()), "{answer}");
                contended += 1;
            }
        }
    }
    assert_eq!(contended, 0, "{contended} of {} saves refused as CONTENDED", WRITERS * SAVES);
    let (_c, state) = server.subscribed("bob", 1).await;
    let task = row(&state, "Task", 1).expect("task 1");
    assert_eq!(task["_version"].as_u64(), committed.iter().max().copied(), "the last commit's version: {task}");
    assert!(task["notes"].as_str().is_some_and(|n| n.starts_with('w')), "{task}");
}

/// Answers keep the order of the requests: a refusal (decided at once) sent
/// right behind a write still waiting for durability (or, on PostgreSQL, for
/// the shared log to deliver it) comes after that write's answer.
#[tokio::test]
async fn answers_keep_the_order_of_the_requests_behind_a_write_in_flight() {
    let server = TestServer::start();
    let (mut alice, _) = server.subscribed("alice", 1).await;
    for round in 0..20 {
        let ok_id = 1000 + round * 3;
        let mut good = save("job/1", "Task", 1, json!({"notes": format!("round {round}")}));
        good["writeId"] = json!(ok_id);
        let mut bad = save("job/1", "Task", 1, json!({"status": "blocked"}));
        bad["writeId"] = json!(ok_id + 1);
        alice.send(good).await;
        alice.send(bad).await;
        alice.send(json!({"type": "ping", "rid": round})).await;
        let mut answers = Vec::new();
        while answers.len() < 3 {
            let m = alice.recv().await;
            match m["type"].as_str() {
                Some("writeResponse") => answers.push(m["writeId"].clone()),
                Some("pong") => answers.push(json!("pong")),
                _ => {}
            }
        }
        assert_eq!(answers, vec![json!(ok_id), json!(ok_id + 1), json!("pong")], "round {round}");
    }
}
