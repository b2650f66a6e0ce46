//! Engine behaviour through its public interface: an in-memory store and an
//! in-memory transport, JSON frames as a client would send them.

use serde_json::{Value, json};
use statecast_core::channel::Op;
use statecast_core::policy::{PolicyContext, PolicyError};
use statecast_core::protocol::v1::Write;
use statecast_core::store::{AppliedKey, AppliedRecord, CommitError, Committed, LogRead, MemoryStore, Transaction};
use statecast_core::transport::{Connection, Frame, Incoming, memory_pair};
use statecast_core::{
    Actor, Channel, DevTokens, Engine, EngineConfig, EntityType, Fields, OnDelete, Policy, Row, Schema, User,
};
use std::sync::Arc;
use std::time::Duration;

struct TestPolicy;

#[async_trait::async_trait]
impl Policy for TestPolicy {
    async fn has_permission(&self, _: &PolicyContext<'_>, _: &Row) -> Result<bool, PolicyError> {
        Ok(true)
    }
    async fn can_save(&self, cx: &PolicyContext<'_>, _: &Row, data: &Fields) -> Result<bool, PolicyError> {
        Ok(cx.user().id == 1 || !data.contains_key("name"))
    }
    async fn can_create(
        &self,
        cx: &PolicyContext<'_>,
        _: &EntityType,
        _: &Row,
        _: &Fields,
    ) -> Result<bool, PolicyError> {
        Ok(cx.user().id != 4)
    }
    async fn can_delete(&self, cx: &PolicyContext<'_>, _: &Row) -> Result<bool, PolicyError> {
        Ok(cx.user().id == 1)
    }
}

async fn engine() -> Engine {
    engine_with(EngineConfig::default()).await
}

async fn engine_with(config: EngineConfig) -> Engine {
    let schema = Schema::builder()
        .entity("Job", |t| {
            t.string("name");
        })
        .entity("Task", |t| {
            t.reference("job", "Job").on_delete(OnDelete::Cascade);
            t.string("name").len(1, 50);
            t.string("status").one_of(["todo", "done"]).default("todo");
            t.reference("created_by", "Job").nullable().read_only();
        })
        .entity("Note", |t| {
            t.reference("task", "Task").on_delete(OnDelete::Cascade);
            t.string("text").default("");
        })
        .relation("Job", "tasks", "Task", "job")
        .relation("Task", "notes", "Note", "task")
        .build()
        .expect("schema");
    let channel = Channel::builder("job", "Job")
        .include("tasks.notes")
        .writable("Task", [Op::Save, Op::Create, Op::Delete])
        .writable("Note", [Op::Create])
        .policy(TestPolicy)
        .build(&schema)
        .expect("channel");
    let locked = Channel::builder("locked", "Job").include("tasks").writable("Task", [Op::Save]).build(&schema);
    let store = Arc::new(MemoryStore::new(schema.clone()));
    let tokens = DevTokens::new()
        .with("ann", User::new(1, "ann"))
        .with("ben", User::new(2, "ben"))
        .with("dee", User::new(4, "dee"));
    let engine = Engine::builder(schema, store)
        .channel(channel)
        .channel(locked.expect("locked channel"))
        .authenticator(tokens)
        .config(config)
        .build()
        .expect("engine");
    let task = |id, job, name| Write::create("Task").id(id).under("Job", job, "tasks").set("name", name);
    let seed = Write::batch([
        Write::create("Job").id(1).set("name", "one"),
        Write::create("Job").id(2).set("name", "two"),
        task(1, 1, "a"),
        task(2, 1, "b"),
        task(3, 2, "c"),
        Write::create("Note").id(1).under("Task", 3, "notes").set("text", "n"),
    ])
    .write_id(1);
    engine.write(Actor::System, seed).await.expect("seed write");
    engine
}

struct Client {
    conn: Connection,
}

impl Client {
    async fn connect(engine: &Engine, token: &str) -> Client {
        let (server, client) = memory_pair(256);
        engine.accept(server);
        let mut c = Client { conn: client };
        c.send(json!({"type": "hello", "protocol": 1, "token": token, "clientId": format!("client-{}", token.chars().rev().take(24).collect::<String>())})).await;
        let welcome = c.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        c
    }
    async fn send(&mut self, v: Value) {
        self.conn.outbox.send(Frame::text(v.to_string())).await.expect("send");
    }
    async fn recv(&mut self) -> Value {
        match tokio::time::timeout(Duration::from_secs(5), self.conn.incoming.recv()).await {
            Ok(Some(Incoming::Frame(f))) => serde_json::from_slice(&f.data).expect("json"),
            other => panic!("expected a frame, got {other:?}"),
        }
    }
    async fn silent(&mut self) {
        if let Ok(Some(Incoming::Frame(f))) =
            tokio::time::timeout(Duration::from_millis(150), self.conn.incoming.recv()).await
        {
            panic!("expected silence, got {}", String::from_utf8_lossy(&f.data));
        }
    }
    async fn subscribe(&mut self, anchor: i64) -> Value {
        self.send(json!({"type": "subscribe", "channel": "job", "anchorId": anchor})).await;
        let state = self.recv().await;
        assert_eq!(state["type"], "state", "{state}");
        state
    }
    async fn write(&mut self, w: Value) -> Value {
        self.send(w).await;
        self.recv().await
    }
}

fn ids(state: &Value) -> Vec<(String, i64)> {
    state["instances"]
        .as_array()
        .map(|a| {
            a.iter().map(|r| (r["_type"].as_str().unwrap_or("").to_owned(), r["id"].as_i64().unwrap_or(0))).collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn state_holds_the_tree_in_order() {
    let engine = engine().await;
    let mut c = Client::connect(&engine, "ann").await;
    let s = c.subscribe(2).await;
    assert_eq!(ids(&s), vec![("Job".into(), 2), ("Task".into(), 3), ("Note".into(), 1)]);
    assert_eq!(s["context"], "job/2");
    assert!(s["seq"].as_u64().unwrap_or(0) >= 1);
}

#[tokio::test]
async fn writer_gets_its_delta_before_the_response_and_others_only_the_change() {
    let engine = engine().await;
    let (mut a, mut b, mut other) = (
        Client::connect(&engine, "ann").await,
        Client::connect(&engine, "ben").await,
        Client::connect(&engine, "ben").await,
    );
    a.subscribe(1).await;
    b.subscribe(1).await;
    other.subscribe(2).await;
    let d = a
        .write(json!({"type": "write", "writeId": 5, "operation": "save", "instanceType": "Task", "instanceId": 1, "context": "job/1", "data": {"status": "done"}}))
        .await;
    assert_eq!(d["type"], "delta", "{d}");
    assert_eq!(d["writeId"], 5);
    assert_eq!(
        d["changes"],
        json!([{"op": "update", "_type": "Task", "id": 1, "_version": d["seq"], "status": "done"}])
    );
    let r = a.recv().await;
    assert_eq!(
        (r["type"].as_str(), r["success"].as_bool(), r["seq"].clone()),
        (Some("writeResponse"), Some(true), d["seq"].clone())
    );
    let bd = b.recv().await;
    assert_eq!(bd["changes"], d["changes"]);
    assert!(bd.get("writeId").is_none());
    other.silent().await;
}

#[tokio::test]
async fn refusals_change_nothing() {
    let engine = engine().await;
    let mut b = Client::connect(&engine, "ben").await;
    let before = b.subscribe(1).await;
    let cases = [
        (
            json!({"operation": "save", "instanceType": "Job", "instanceId": 1, "data": {"name": "x"}}),
            403,
            "NOT_WRITABLE",
        ),
        (
            json!({"operation": "save", "instanceType": "Task", "instanceId": 3, "data": {"status": "done"}}),
            400,
            "NOT_IN_CONTEXT",
        ),
        (json!({"operation": "save", "instanceType": "Task", "instanceId": 1, "data": {"name": "x"}}), 403, "DENIED"),
        (json!({"operation": "delete", "instanceType": "Task", "instanceId": 1}), 403, "DENIED"),
        (json!({"operation": "save", "instanceType": "Task", "instanceId": 99, "data": {}}), 400, "NOT_FOUND"),
        (
            json!({"operation": "save", "instanceType": "Task", "instanceId": 1, "data": {"status": "gone"}}),
            400,
            "INVALID_DATA",
        ),
        (
            json!({"operation": "save", "instanceType": "Task", "instanceId": 1, "data": {"nope": 1}}),
            400,
            "INVALID_DATA",
        ),
        (
            json!({"operation": "save", "instanceType": "Task", "instanceId": 1, "data": {"created_by": 1}}),
            400,
            "INVALID_DATA",
        ),
        (
            json!({"operation": "save", "instanceType": "Task", "instanceId": 1, "ifVersion": 999, "data": {"status": "done"}}),
            409,
            "VERSION_CONFLICT",
        ),
        (json!({"operation": "save", "instanceType": "Ghost", "instanceId": 1, "data": {}}), 400, "UNKNOWN_TYPE"),
        (
            json!({"operation": "create", "instanceType": "Task", "instanceId": 5, "parentType": "Job", "parentId": 1, "relationName": "tasks", "data": {"name": "x"}}),
            400,
            "INVALID_ID",
        ),
        (
            json!({"operation": "create", "instanceType": "Task", "parentType": "Job", "parentId": 1, "relationName": "nope", "data": {"name": "x"}}),
            400,
            "UNKNOWN_RELATION",
        ),
        (
            json!({"operation": "create", "instanceType": "Task", "parentType": "Job", "parentId": 1, "relationName": "tasks", "data": {}}),
            400,
            "INVALID_DATA",
        ),
        (
            json!({"operation": "create", "instanceType": "Task", "parentType": "Job", "parentId": 2, "relationName": "tasks", "data": {"name": "x"}}),
            400,
            "NOT_IN_CONTEXT",
        ),
    ];
    for (i, (mut w, code, reason)) in cases.into_iter().enumerate() {
        w["type"] = json!("write");
        w["writeId"] = json!(100 + i);
        w["context"] = json!("job/1");
        let r = b.write(w.clone()).await;
        assert_eq!(r["type"], "writeResponse", "{w} → {r}");
        assert_eq!(r["success"], false, "{w} → {r}");
        assert_eq!(
            (r["error"]["code"].as_u64(), r["error"]["reason"].as_str()),
            (Some(code), Some(reason)),
            "{w} → {r}"
        );
    }
    let after = b.subscribe(1).await;
    assert_eq!(before["instances"], after["instances"]);
}

#[tokio::test]
async fn a_channel_without_hooks_denies_every_write() {
    let engine = engine().await;
    let mut c = Client::connect(&engine, "ann").await;
    c.send(json!({"type": "subscribe", "channel": "locked", "anchorId": 1})).await;
    let e = c.recv().await;
    assert_eq!((e["code"].as_u64(), e["reason"].as_str()), (Some(403), Some("DENIED")), "{e}");
    let r = c.write(json!({"type": "write", "writeId": 1, "operation": "save", "instanceType": "Task", "instanceId": 1, "context": "locked/1", "data": {"status": "done"}})).await;
    assert_eq!(r["error"]["reason"], "NOT_IN_CONTEXT", "{r}");
    let sys = engine.write(
        Actor::User(User::new(1, "ann")),
        serde_json::from_value(json!({"writeId": 9, "operation": "save", "instanceType": "Task", "instanceId": 1, "context": "locked/1", "data": {"status": "done"}})).expect("write"),
    ).await;
    assert_eq!(sys.map_err(|e| e.reason.as_str()), Err("DENIED"));
}

#[tokio::test]
async fn batches_are_all_or_nothing_and_temp_ids_chain() {
    let engine = engine().await;
    let mut a = Client::connect(&engine, "ann").await;
    let before = a.subscribe(1).await;
    let bad = a.write(json!({"type": "write", "writeId": 1, "operation": "batch", "context": "job/1", "ops": [
        {"operation": "create", "instanceType": "Task", "instanceId": -1, "parentType": "Job", "parentId": 1, "relationName": "tasks", "data": {"name": "new"}},
        {"operation": "save", "instanceType": "Task", "instanceId": -1, "data": {"status": "nope"}}
    ]})).await;
    assert_eq!((bad["success"].as_bool(), bad["error"]["op"].as_u64()), (Some(false), Some(1)), "{bad}");
    a.silent().await;
    assert_eq!(a.subscribe(1).await["instances"], before["instances"]);

    let d = a.write(json!({"type": "write", "writeId": 2, "operation": "batch", "context": "job/1", "ops": [
        {"operation": "create", "instanceType": "Task", "instanceId": -1, "parentType": "Job", "parentId": 1, "relationName": "tasks", "data": {"name": "new"}},
        {"operation": "save", "instanceType": "Task", "instanceId": -1, "data": {"status": "done"}},
        {"operation": "create", "instanceType": "Note", "instanceId": -2, "parentType": "Task", "parentId": -1, "relationName": "notes", "data": {"text": "hi"}}
    ]})).await;
    assert_eq!(d["type"], "delta", "{d}");
    let changes = d["changes"].as_array().cloned().unwrap_or_default();
    assert_eq!(changes.len(), 2, "{d}");
    assert_eq!(changes[0]["status"], "done");
    let task_id = changes[0]["id"].as_i64().unwrap_or(0);
    assert_eq!(changes[1]["task"], task_id);
    assert_eq!(
        d["created"],
        json!([{"_type": "Task", "tempId": -1, "id": task_id}, {"_type": "Note", "tempId": -2, "id": changes[1]["id"]}])
    );
    let r = a.recv().await;
    assert_eq!(r["success"], true, "{r}");
}

#[tokio::test]
async fn creates_with_minted_and_taken_ids() {
    let engine = engine().await;
    let mut a = Client::connect(&engine, "ann").await;
    a.subscribe(1).await;
    let minted: i64 = (1 << 52) + 12345;
    let create = |write_id: i64, id: Option<i64>| {
        let mut w = json!({"type": "write", "writeId": write_id, "operation": "create", "instanceType": "Task", "parentType": "Job", "parentId": 1, "relationName": "tasks", "context": "job/1", "data": {"name": "m"}});
        if let Some(id) = id {
            w["instanceId"] = json!(id);
        }
        w
    };
    let d = a.write(create(1, Some(minted))).await;
    assert_eq!(d["changes"][0]["id"], minted, "{d}");
    let r = a.recv().await;
    assert_eq!((r["success"].as_bool(), r["instanceId"].as_i64()), (Some(true), Some(minted)), "{r}");
    let taken = a.write(create(2, Some(minted))).await;
    assert_eq!(taken["error"]["reason"], "ID_CONFLICT", "{taken}");
    assert_eq!(taken["error"]["code"], 409);
    let d = a.write(create(3, None)).await;
    assert_eq!(d["changes"][0]["id"], 4, "server ids continue after the seeded ones: {d}");
    a.recv().await;
    let out_of_range = a.write(create(4, Some(1 << 53))).await;
    assert_eq!(out_of_range["error"]["reason"], "INVALID_ID", "{out_of_range}");
}

#[tokio::test]
async fn reparenting_moves_a_subtree_between_contexts() {
    let engine = engine().await;
    let (mut one, mut two) = (Client::connect(&engine, "ben").await, Client::connect(&engine, "ben").await);
    one.subscribe(1).await;
    two.subscribe(2).await;
    let moved = engine.write(Actor::System, Write::save("Task", 3).set("job", 1).write_id(2)).await.expect("move");
    let gone = two.recv().await;
    assert_eq!(
        gone["changes"],
        json!([
            {"op": "delete", "_type": "Task", "id": 3, "_version": moved.seq},
            {"op": "delete", "_type": "Note", "id": 1, "_version": moved.seq}
        ]),
        "{gone}"
    );
    let came = one.recv().await;
    let ops: Vec<(String, String, i64)> = came["changes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| {
            (
                c["op"].as_str().unwrap_or("").into(),
                c["_type"].as_str().unwrap_or("").into(),
                c["id"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(ops, vec![("create".into(), "Task".into(), 3), ("create".into(), "Note".into(), 1)], "{came}");
    assert_eq!(came["changes"][0]["name"], "c");
    assert_eq!(came["prev"].as_u64().map(|p| p < moved.seq.unwrap_or(0)), Some(true));
}

#[tokio::test]
async fn deleting_the_anchor_ends_the_context_and_cascades() {
    let engine = engine().await;
    let mut c = Client::connect(&engine, "ann").await;
    c.subscribe(2).await;
    engine.write(Actor::System, Write::delete("Job", 2).write_id(3)).await.expect("delete");
    let u = c.recv().await;
    assert_eq!((u["type"].as_str(), u["reason"].as_str()), (Some("unsubscribed"), Some("ANCHOR_DELETED")), "{u}");
    assert!(engine.store().get("Note", 1).await.expect("get").is_none(), "cascade removed the note");
    let r = c.write(json!({"type": "write", "writeId": 1, "operation": "save", "instanceType": "Task", "instanceId": 3, "context": "job/2", "data": {}})).await;
    assert_eq!(r["error"]["reason"], "NOT_IN_CONTEXT");
}

#[tokio::test]
async fn a_resent_write_is_applied_once() {
    let engine = engine().await;
    let w = json!({"type": "write", "writeId": 42, "operation": "create", "instanceType": "Task", "parentType": "Job", "parentId": 1, "relationName": "tasks", "context": "job/1", "instanceId": -7, "data": {"name": "once"}});
    let mut a = Client::connect(&engine, "ann").await;
    a.subscribe(1).await;
    a.write(w.clone()).await;
    let first = a.recv().await;
    assert_eq!(first["success"], true);
    drop(a);
    let mut again = Client::connect(&engine, "ann").await;
    let state = again.subscribe(1).await;
    again.send(w).await;
    let second = again.recv().await;
    assert_eq!(
        (second["duplicate"].as_bool(), second["seq"].clone(), second["created"].clone()),
        (Some(true), first["seq"].clone(), first["created"].clone()),
        "{second}"
    );
    again.silent().await;
    let count = ids(&state).iter().filter(|(t, _)| t == "Task").count();
    assert_eq!(count, 3, "the task exists once");
}

#[tokio::test]
async fn resubscribe_with_since_is_incremental() {
    let engine = engine().await;
    let (mut watcher, mut a) = (Client::connect(&engine, "ann").await, Client::connect(&engine, "ann").await);
    watcher.subscribe(1).await;
    let s = a.subscribe(1).await;
    let since = s["seq"].clone();
    a.write(json!({"type": "write", "writeId": 1, "operation": "delete", "instanceType": "Task", "instanceId": 2, "context": "job/1"})).await;
    a.recv().await;
    a.write(json!({"type": "write", "writeId": 2, "operation": "save", "instanceType": "Task", "instanceId": 1, "context": "job/1", "data": {"status": "done"}})).await;
    a.recv().await;
    a.send(json!({"type": "subscribe", "channel": "job", "anchorId": 1, "since": since, "epoch": s["epoch"]})).await;
    let inc = a.recv().await;
    assert_eq!(inc["incremental"], true, "{inc}");
    assert_eq!(ids(&inc), vec![("Task".into(), 1)]);
    assert_eq!(inc["removed"], json!([{"_type": "Task", "id": 2}]));
    a.send(json!({"type": "subscribe", "channel": "job", "anchorId": 1, "since": since, "epoch": "other"})).await;
    let whole = a.recv().await;
    assert!(whole.get("incremental").is_none(), "a new epoch gets a whole state");
}

#[tokio::test]
async fn protocol_errors_are_answered_and_the_connection_stays() {
    let engine = engine().await;
    let (server, mut conn) = memory_pair(64);
    engine.accept(server);
    let mut c = Client { conn: { std::mem::replace(&mut conn, memory_pair(1).1) } };
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await["reason"], "UNAUTHENTICATED");
    c.conn.outbox.send(Frame::text("{not json")).await.expect("send");
    assert_eq!(c.recv().await["reason"], "BAD_FRAME");
    c.send(json!({"type": "launch"})).await;
    let e = c.recv().await;
    assert_eq!((e["code"].as_u64(), e["reason"].as_str()), (Some(400), Some("BAD_FRAME")), "{e}");
    c.send(json!({"type": "hello", "protocol": 1, "token": "ann"})).await;
    assert_eq!(c.recv().await["type"], "welcome");
    c.send(json!({"type": "subscribe", "channel": "job", "stream": "x"})).await;
    assert_eq!(c.recv().await["reason"], "BAD_FRAME");
    c.send(json!({"type": "subscribe", "channel": "nope", "anchorId": 1})).await;
    assert_eq!(c.recv().await["reason"], "UNKNOWN_CHANNEL");
    c.send(json!({"type": "subscribe", "channel": "job", "anchorId": 77})).await;
    assert_eq!(c.recv().await["reason"], "ANCHOR_NOT_FOUND");
    c.conn
        .outbox
        .send(Frame::binary(vec![0x81u8, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'i', b'n', b'g']))
        .await
        .expect("send");
    assert_eq!(c.recv().await["reason"], "BAD_FRAME", "a binary frame on a JSON connection is refused");
    c.send(json!({"type": "ping", "rid": "r1"})).await;
    assert_eq!(c.recv().await, json!({"type": "pong", "rid": "r1"}));
}

#[tokio::test]
async fn a_bad_token_is_refused_and_closed() {
    let engine = engine().await;
    let (server, mut c) = memory_pair(64);
    engine.accept(server);
    c.outbox
        .send(Frame::text(json!({"type": "hello", "protocol": 1, "token": "mallory"}).to_string()))
        .await
        .expect("send");
    let Some(Incoming::Frame(f)) = c.incoming.recv().await else { panic!("no answer") };
    let e: Value = serde_json::from_slice(&f.data).expect("json");
    assert_eq!((e["code"].as_u64(), e["reason"].as_str()), (Some(401), Some("UNAUTHENTICATED")));
    let end = tokio::time::timeout(Duration::from_secs(2), c.incoming.recv()).await.expect("closed in time");
    assert!(end.is_none(), "the connection is closed");
}

#[tokio::test]
async fn concurrent_writers_converge_with_every_subscriber() {
    let engine = engine().await;
    let mut watchers = Vec::new();
    for _ in 0..3 {
        let mut w = Client::connect(&engine, "ben").await;
        w.subscribe(1).await;
        watchers.push(w);
    }
    let mut writers = Vec::new();
    for n in 0..4 {
        let engine = engine.clone();
        writers.push(tokio::spawn(async move {
            let mut c = Client::connect(&engine, "ann").await;
            c.subscribe(1).await;
            for i in 0..25 {
                c.send(json!({"type": "write", "writeId": i, "operation": "save", "instanceType": "Task", "instanceId": 1 + (i % 2), "context": "job/1", "data": {"name": format!("w{n}-{i}")}})).await;
            }
            let mut ok = 0;
            while ok < 25 {
                let m = c.recv().await;
                if m["type"] == "writeResponse" {
                    assert_eq!(m["success"], true, "{m}");
                    ok += 1;
                }
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    engine.flush_deliveries().await;
    let mut fresh = Client::connect(&engine, "ben").await;
    let truth = fresh.subscribe(1).await;
    let final_seq = truth["seq"].as_u64().unwrap_or(0);
    for w in &mut watchers {
        let mut last = None;
        let mut names = std::collections::HashMap::new();
        loop {
            let d = w.recv().await;
            if let Some(prev) = last {
                assert_eq!(d["prev"], json!(prev), "deltas chain without gaps");
            }
            for c in d["changes"].as_array().cloned().unwrap_or_default() {
                names.insert(c["id"].as_i64().unwrap_or(0), c["name"].clone());
            }
            last = d["seq"].as_u64();
            if last == Some(final_seq) {
                break;
            }
        }
        for row in truth["instances"].as_array().cloned().unwrap_or_default() {
            if row["_type"] == "Task" && row["id"].as_i64().unwrap_or(0) <= 2 {
                assert_eq!(names.get(&row["id"].as_i64().unwrap_or(0)), Some(&row["name"]));
            }
        }
    }
}

// On tokio's paused clock: the session's expiry is a timer, and time jumps
// to it as soon as everything waits, so the test takes no real seconds.
#[tokio::test(start_paused = true)]
async fn an_expiring_token_ends_the_session_unless_renewed() {
    let schema = Schema::builder().entity("Job", |t| {
        t.string("name");
    });
    let schema = schema.build().expect("schema");
    let channel = Channel::builder("job", "Job").policy(TestPolicy).build(&schema).expect("channel");
    let jwt = statecast_core::JwtHs256::new(b"0123456789abcdef0123456789abcdef").expect("secret");
    // `exp` has whole seconds: 2 s of life is at least 1 s from now.
    let short = jwt.issue(1, "ann", Duration::from_secs(2)).expect("token");
    let long = jwt.issue(1, "ann", Duration::from_secs(600)).expect("token");
    let other = jwt.issue(2, "ben", Duration::from_secs(600)).expect("token");
    let engine = Engine::builder(schema.clone(), Arc::new(MemoryStore::new(schema)))
        .channel(channel)
        .authenticator(statecast_core::JwtHs256::new(b"0123456789abcdef0123456789abcdef").expect("secret"))
        .build()
        .expect("engine");

    // Not renewed: 401 TOKEN_EXPIRED, then the connection closes.
    let mut c = Client::connect(&engine, &short).await;
    let e = tokio::time::timeout(Duration::from_secs(5), c.recv()).await.expect("expiry in time");
    assert_eq!((e["code"].as_u64(), e["reason"].as_str()), (Some(401), Some("TOKEN_EXPIRED")), "{e}");
    let end = tokio::time::timeout(Duration::from_secs(2), c.conn.incoming.recv()).await.expect("closed in time");
    assert!(end.is_none());

    // Renewed in time: the session goes on; a token for another user is refused.
    let short = jwt.issue(1, "ann", Duration::from_secs(3)).expect("token");
    let mut c = Client::connect(&engine, &short).await;
    c.send(json!({"type": "auth", "token": other, "rid": 1})).await;
    let refused = c.recv().await;
    assert_eq!((refused["reason"].as_str(), refused["rid"].as_i64()), (Some("UNAUTHENTICATED"), Some(1)), "{refused}");
    c.send(json!({"type": "auth", "token": long, "rid": 2})).await;
    let ok = c.recv().await;
    assert_eq!((ok["type"].as_str(), ok["rid"].as_i64()), (Some("authenticated"), Some(2)), "{ok}");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    c.send(json!({"type": "ping", "rid": 3})).await;
    assert_eq!(c.recv().await, json!({"type": "pong", "rid": 3}), "still connected after the first token's expiry");
}

struct Switch(Arc<std::sync::atomic::AtomicBool>);

#[async_trait::async_trait]
impl Policy for Switch {
    async fn has_permission(&self, _: &PolicyContext<'_>, _: &Row) -> Result<bool, PolicyError> {
        Ok(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
    async fn can_save(&self, _: &PolicyContext<'_>, _: &Row, _: &Fields) -> Result<bool, PolicyError> {
        Ok(true)
    }
}

#[tokio::test]
async fn revalidation_ends_subscriptions_the_user_lost() {
    let schema = Schema::builder()
        .entity("Job", |t| {
            t.string("name");
        })
        .build()
        .expect("schema");
    let allowed = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let channel = Channel::builder("job", "Job")
        .writable("Job", [Op::Save])
        .policy(Switch(allowed.clone()))
        .build(&schema)
        .expect("channel");
    let engine = Engine::builder(schema.clone(), Arc::new(MemoryStore::new(schema)))
        .channel(channel)
        .authenticator(DevTokens::new().with("ann", User::new(1, "ann")))
        .build()
        .expect("engine");
    let seed = serde_json::from_value(
        json!({"writeId": 1, "operation": "create", "instanceType": "Job", "instanceId": 1, "data": {"name": "j"}}),
    )
    .expect("w");
    engine.write(Actor::System, seed).await.expect("seed");
    let mut c = Client::connect(&engine, "ann").await;
    c.subscribe(1).await;
    assert_eq!(engine.revalidate(&User::new(1, "ann")).await, 0, "still allowed");
    allowed.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(engine.revalidate(&User::new(1, "ann")).await, 1);
    let u = c.recv().await;
    assert_eq!(
        (u["type"].as_str(), u["reason"].as_str(), u["context"].as_str()),
        (Some("unsubscribed"), Some("PERMISSION_LOST"), Some("job/1")),
        "{u}"
    );
    let r = c.write(json!({"type": "write", "writeId": 2, "operation": "save", "instanceType": "Job", "instanceId": 1, "context": "job/1", "data": {"name": "x"}})).await;
    assert_eq!(r["error"]["reason"], "NOT_IN_CONTEXT", "{r}");
}

/// Members of a job (its `Member` rows) may read it; a commit to `Member`
/// decides its subscriptions again.
struct MembersOnly;

#[async_trait::async_trait]
impl Policy for MembersOnly {
    async fn has_permission(&self, cx: &PolicyContext<'_>, anchor: &Row) -> Result<bool, PolicyError> {
        let me = cx.user().id;
        let members = cx.referencing("Member", "job", anchor.id).await?;
        Ok(members.iter().any(|m| m.get_i64("user") == Some(me)))
    }
    fn depends_on(&self) -> &[&str] {
        &["Member"]
    }
}

/// Jobs and their members (a user id per member).
fn members_schema() -> Arc<Schema> {
    Schema::builder()
        .entity("Job", |t| {
            t.string("name");
        })
        .entity("Member", |t| {
            t.reference("job", "Job").on_delete(OnDelete::Cascade);
            t.int("user");
        })
        .build()
        .expect("schema")
}

#[tokio::test]
async fn a_commit_that_removes_a_membership_revokes_its_subscriptions_live() {
    let schema = members_schema();
    let channel = Channel::builder("job", "Job").policy(MembersOnly).build(&schema).expect("channel");
    let engine = Engine::builder(schema.clone(), Arc::new(MemoryStore::new(schema)))
        .channel(channel)
        .authenticator(DevTokens::new().with("ann", User::new(1, "ann")).with("ben", User::new(2, "ben")))
        .build()
        .expect("engine");
    let member = |id, job, user| Write::create("Member").id(id).set("job", job).set("user", user);
    let seed = Write::batch([
        Write::create("Job").id(1).set("name", "one"),
        Write::create("Job").id(2).set("name", "two"),
        member(1, 1, 1),
        member(2, 1, 2),
        member(3, 2, 1),
    ])
    .write_id(1);
    engine.write(Actor::System, seed).await.expect("seed");
    // ann in two tabs on job/1 and on job/2; ben on job/1.
    let mut ann = Client::connect(&engine, "ann").await;
    let mut ann_too = Client::connect(&engine, "ann").await;
    let mut ben = Client::connect(&engine, "ben").await;
    ann.subscribe(1).await;
    ann.subscribe(2).await;
    ann_too.subscribe(1).await;
    ben.subscribe(1).await;

    // A commit to an anchor decides its subscriptions again: all still allowed.
    engine.write(Actor::System, Write::save("Job", 1).set("name", "uno").write_id(2)).await.expect("rename");
    for tab in [&mut ann, &mut ann_too, &mut ben] {
        let d = tab.recv().await;
        assert_eq!((d["type"].as_str(), d["context"].as_str()), (Some("delta"), Some("job/1")), "{d}");
        tab.silent().await;
    }

    engine.write(Actor::System, Write::delete("Member", 1).write_id(3)).await.expect("remove ann from job 1");
    for tab in [&mut ann, &mut ann_too] {
        let u = tab.recv().await;
        assert_eq!(
            (u["type"].as_str(), u["reason"].as_str(), u["context"].as_str()),
            (Some("unsubscribed"), Some("REVOKED"), Some("job/1")),
            "{u}"
        );
        tab.silent().await;
    }
    // ann keeps job/2, ben keeps job/1: both still get its changes.
    engine.write(Actor::System, Write::save("Job", 2).set("name", "dos").write_id(4)).await.expect("save");
    let d = ann.recv().await;
    assert_eq!((d["type"].as_str(), d["context"].as_str()), (Some("delta"), Some("job/2")), "{d}");
    engine.write(Actor::System, Write::save("Job", 1).set("name", "one again").write_id(5)).await.expect("save");
    let d = ben.recv().await;
    assert_eq!((d["type"].as_str(), d["context"].as_str()), (Some("delta"), Some("job/1")), "{d}");
    ben.silent().await;
    // Subscribing again is refused like any subscribe the policy denies.
    ann.send(json!({"type": "subscribe", "channel": "job", "anchorId": 1})).await;
    let e = ann.recv().await;
    assert_eq!((e["type"].as_str(), e["reason"].as_str()), (Some("error"), Some("DENIED")), "{e}");
}

/// Anyone reads a job; a `Note` marked secret only users with a `Clearance` row.
struct Cleared;

#[async_trait::async_trait]
impl Policy for Cleared {
    async fn has_permission(&self, _: &PolicyContext<'_>, _: &Row) -> Result<bool, PolicyError> {
        Ok(true)
    }
    fn depends_on(&self) -> &[&str] {
        &["Clearance"]
    }
    async fn read_rule(
        &self,
        cx: &PolicyContext<'_>,
        ty: &statecast_core::schema::EntityType,
    ) -> Result<statecast_core::ReadRule, PolicyError> {
        use statecast_core::{ReadRule, stream::Filters};
        let cleared = cx.get("Clearance", cx.user().id).await?.is_some();
        Ok(match ty.name.as_str() {
            "Note" if !cleared => ReadRule::rows_where(Filters::new().eq("secret", false)).hide("author"),
            _ => ReadRule::all(),
        })
    }
}

/// Jobs with notes (some secret) under the [`Cleared`] policy: an engine
/// still to be given its authenticator.
fn cleared_engine() -> statecast_core::EngineBuilder {
    let schema = Schema::builder()
        .entity("Job", |t| {
            t.string("name");
        })
        .entity("Note", |t| {
            t.reference("job", "Job").on_delete(OnDelete::Cascade);
            t.bool("secret").default(false);
            t.string("author").default("");
        })
        .entity("Clearance", |t| {
            t.string("why").default("");
        })
        .relation("Job", "notes", "Note", "job")
        .build()
        .expect("schema");
    let channel = Channel::builder("job", "Job").include("notes").policy(Cleared).build(&schema).expect("channel");
    Engine::builder(schema.clone(), Arc::new(MemoryStore::new(schema))).channel(channel)
}

#[tokio::test]
async fn read_rules_follow_the_data_they_read_with_a_fresh_state() {
    let engine = cleared_engine()
        .authenticator(DevTokens::new().with("ann", User::new(1, "ann")).with("ben", User::new(2, "ben")))
        .build()
        .expect("engine");
    let note = |id, secret| Write::create("Note").id(id).set("job", 1).set("secret", secret).set("author", "ann");
    let seed = Write::batch([
        Write::create("Job").id(1).set("name", "one"),
        note(1, false),
        note(2, true),
        Write::create("Clearance").id(1),
    ])
    .write_id(1);
    engine.write(Actor::System, seed).await.expect("seed");
    let notes = |state: &Value| -> Vec<(i64, bool)> {
        state["instances"]
            .as_array()
            .expect("instances")
            .iter()
            .filter(|r| r["_type"] == "Note")
            .map(|r| (r["id"].as_i64().unwrap_or(0), r.get("author").is_some()))
            .collect()
    };
    let mut ann = Client::connect(&engine, "ann").await;
    let mut ben = Client::connect(&engine, "ben").await;
    assert_eq!(notes(&ann.subscribe(1).await), vec![(1, true), (2, true)], "ann is cleared");
    let ben_state = ben.subscribe(1).await;
    assert_eq!(notes(&ben_state), vec![(1, false)], "ben: no secret note, no author");

    // ben is cleared: his subscription is decided again and he gets a whole state.
    engine.write(Actor::System, Write::create("Clearance").id(2).write_id(2)).await.expect("clear ben");
    let fresh = ben.recv().await;
    assert_eq!(fresh["type"], "state", "{fresh}");
    assert!(fresh.get("rid").is_none(), "the server's own state: {fresh}");
    assert_eq!(notes(&fresh), vec![(1, true), (2, true)], "{fresh}");
    ben.silent().await;
    ann.silent().await;
    // And taken back: the secret note and the authors leave.
    engine.write(Actor::System, Write::delete("Clearance", 2).write_id(3)).await.expect("unclear ben");
    let fresh = ben.recv().await;
    assert_eq!(notes(&fresh), vec![(1, false)], "{fresh}");
    // Deltas go on from the new state's seq.
    engine
        .write(Actor::System, Write::save("Note", 1).set("author", "ben").set("secret", false).write_id(4))
        .await
        .expect("save");
    let d = ben.recv().await;
    assert_eq!(d["prev"], fresh["seq"], "{d}");
    assert!(d["changes"][0].get("author").is_none(), "the author stays hidden: {d}");
}

#[tokio::test]
async fn a_resume_under_rules_that_changed_while_away_gets_a_whole_state() {
    let engine = cleared_engine()
        .authenticator(DevTokens::new().with("ben", User::new(2, "ben")).with("cy", User::new(3, "cy")))
        .build()
        .expect("engine");
    let seed = Write::batch([
        Write::create("Job").id(1).set("name", "one"),
        Write::create("Note").id(1).set("job", 1),
        Write::create("Note").id(2).set("job", 1).set("secret", true),
    ])
    .write_id(1);
    engine.write(Actor::System, seed).await.expect("seed");
    // cy (uncleared too) keeps the context live while ben is away.
    let mut cy = Client::connect(&engine, "cy").await;
    cy.subscribe(1).await;
    let mut ben = Client::connect(&engine, "ben").await;
    let state = ben.subscribe(1).await;
    let (seq, epoch) = (state["seq"].clone(), state["epoch"].clone());
    drop(ben);
    engine.write(Actor::System, Write::create("Clearance").id(2).write_id(2)).await.expect("clear ben");
    let mut ben = Client::connect(&engine, "ben").await;
    ben.send(json!({"type": "subscribe", "channel": "job", "anchorId": 1, "since": seq, "epoch": epoch})).await;
    let back = ben.recv().await;
    assert_eq!(back["type"], "state", "{back}");
    assert!(back.get("incremental").is_none(), "a whole state: {back}");
    let ids: Vec<i64> = back["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter(|r| r["_type"] == "Note")
        .filter_map(|r| r["id"].as_i64())
        .collect();
    assert_eq!(ids, vec![1, 2], "the secret note, now readable, though it did not change: {back}");
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_dropped_not_buffered() {
    let engine = engine().await;
    let (server, mut slow) = memory_pair(8);
    engine.accept(server);
    slow.outbox
        .send(Frame::text(json!({"type": "hello", "protocol": 1, "token": "ben"}).to_string()))
        .await
        .expect("hello");
    slow.outbox
        .send(Frame::text(json!({"type": "subscribe", "channel": "job", "anchorId": 1}).to_string()))
        .await
        .expect("sub");
    let mut writer = Client::connect(&engine, "ann").await;
    writer.subscribe(1).await;
    for i in 0..200 {
        writer.send(json!({"type": "write", "writeId": i, "operation": "save", "instanceType": "Task", "instanceId": 1, "context": "job/1", "data": {"name": format!("n{i}")}})).await;
    }
    let mut answered = 0;
    while answered < 200 {
        if writer.recv().await["type"] == "writeResponse" {
            answered += 1;
        }
    }
    engine.flush_deliveries().await;
    assert_eq!(engine.metrics().slow_consumers.load(std::sync::atomic::Ordering::Relaxed), 1);
    // What was queued before the close drains, then the connection ends.
    let mut frames = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), slow.incoming.recv()).await {
        frames += 1;
    }
    assert!(frames < 60, "bounded: {frames} frames reached the slow client");
    assert!(slow.outbox.is_closed() || slow.incoming.recv().await.is_none());
}

// On tokio's paused clock (see the token expiry test).
#[tokio::test(start_paused = true)]
async fn a_connection_that_never_says_hello_is_closed() {
    let config = EngineConfig { hello_timeout: Duration::from_millis(200), ..EngineConfig::default() };
    let engine = engine_with(config).await;
    let (server, mut client) = memory_pair(16);
    engine.accept(server);
    let started = tokio::time::Instant::now();
    let answer = match tokio::time::timeout(Duration::from_secs(5), client.incoming.recv()).await {
        Ok(Some(Incoming::Frame(f))) => serde_json::from_slice::<Value>(&f.data).expect("json"),
        other => panic!("expected an error frame, got {other:?}"),
    };
    assert_eq!((answer["type"].as_str(), answer["code"].as_i64()), (Some("error"), Some(401)), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    let ended = tokio::time::timeout(Duration::from_secs(5), client.incoming.recv()).await.expect("closed in time");
    assert!(ended.is_none(), "the connection ends after the error: {ended:?}");
    // Saying hello in time keeps the connection past the deadline.
    let mut ann = Client::connect(&engine, "ann").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ann.subscribe(1).await;
}

#[tokio::test]
async fn two_subscribes_to_a_loading_context_are_both_answered() {
    let engine = engine().await;
    for _ in 0..20 {
        let mut c = Client::connect(&engine, "ann").await;
        c.send(json!({"type": "subscribe", "channel": "job", "anchorId": 1, "rid": "first"})).await;
        c.send(json!({"type": "subscribe", "channel": "job", "anchorId": 1, "rid": "second"})).await;
        let mut rids = vec![c.recv().await, c.recv().await]
            .into_iter()
            .map(|m| {
                assert_eq!(m["type"], "state", "{m}");
                m["rid"].as_str().expect("rid").to_owned()
            })
            .collect::<Vec<_>>();
        rids.sort();
        assert_eq!(rids, ["first", "second"]);
        c.silent().await;
    }
}

#[tokio::test]
async fn subscribes_waiting_for_their_state_are_capped() {
    let mut config = EngineConfig::default();
    config.limits.subscribes_in_flight = 1;
    let engine = engine_with(config).await;
    let mut c = Client::connect(&engine, "ann").await;
    // Sent together: the second arrives while the first context still loads
    // (or after: then it is answered from memory).
    c.send(json!({"type": "subscribe", "channel": "job", "anchorId": 1, "rid": "a"})).await;
    c.send(json!({"type": "subscribe", "channel": "job", "anchorId": 2, "rid": "b"})).await;
    let answers = [c.recv().await, c.recv().await];
    let states = answers.iter().filter(|m| m["type"] == "state").count();
    let refused: Vec<&Value> = answers.iter().filter(|m| m["type"] == "error").collect();
    assert!(states >= 1, "{answers:?}");
    for e in &refused {
        assert_eq!(
            (e["code"].as_i64(), e["reason"].as_str(), e["rid"].as_str()),
            (Some(429), Some("RATE_LIMITED"), Some("b"))
        );
    }
    // Once answered, the next subscribe goes through.
    c.subscribe(2).await;
}

/// A store whose context loads are slow (`children` waits), so a write can
/// commit while a context it touches is still loading.
struct SlowLoads(MemoryStore);

#[async_trait::async_trait]
impl statecast_core::Store for SlowLoads {
    fn epoch(&self) -> &str {
        self.0.epoch()
    }
    fn last_seq(&self) -> statecast_core::Seq {
        self.0.last_seq()
    }
    fn durable_seq(&self) -> statecast_core::Seq {
        self.0.durable_seq()
    }
    async fn wait_durable(&self, seq: statecast_core::Seq) -> Result<(), statecast_core::StoreError> {
        self.0.wait_durable(seq).await
    }
    async fn get(&self, ty: &str, id: i64) -> Result<Option<Row>, statecast_core::StoreError> {
        self.0.get(ty, id).await
    }
    async fn children(&self, ty: &str, field: &str, parents: &[i64]) -> Result<Vec<Row>, statecast_core::StoreError> {
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.0.children(ty, field, parents).await
    }
    async fn scan(&self, ty: &str, after: Option<i64>, limit: usize) -> Result<Vec<Row>, statecast_core::StoreError> {
        self.0.scan(ty, after, limit).await
    }
    async fn commit(&self, tx: Transaction) -> Result<Committed, CommitError> {
        self.0.commit(tx).await
    }
    async fn applied(&self, key: &AppliedKey) -> Result<Option<AppliedRecord>, statecast_core::StoreError> {
        self.0.applied(key).await
    }
    async fn purged_write_id(&self, user: i64, client_id: &str) -> Result<Option<i64>, statecast_core::StoreError> {
        self.0.purged_write_id(user, client_id).await
    }
    async fn purge_applied(&self, before_ms: u64) -> Result<u64, statecast_core::StoreError> {
        self.0.purge_applied(before_ms).await
    }
    async fn changes_since(
        &self,
        after: statecast_core::Seq,
        limit: usize,
    ) -> Result<LogRead, statecast_core::StoreError> {
        self.0.changes_since(after, limit).await
    }
    async fn is_empty(&self) -> Result<bool, statecast_core::StoreError> {
        self.0.is_empty().await
    }
    async fn close(&self) -> Result<(), statecast_core::StoreError> {
        self.0.close().await
    }
}

#[tokio::test]
async fn a_write_right_after_subscribe_is_answered_after_the_state_that_carries_it() {
    let schema = Schema::builder()
        .entity("Job", |t| {
            t.string("name");
        })
        .entity("Task", |t| {
            t.reference("job", "Job").on_delete(OnDelete::Cascade);
            t.string("name").len(1, 50);
        })
        .relation("Job", "tasks", "Task", "job")
        .build()
        .expect("schema");
    let channel = Channel::builder("job", "Job")
        .include("tasks")
        .writable("Task", [Op::Save, Op::Create])
        .policy(TestPolicy)
        .build(&schema)
        .expect("channel");
    let store = Arc::new(SlowLoads(MemoryStore::new(schema.clone())));
    let engine = Engine::builder(schema, store)
        .channel(channel)
        .authenticator(DevTokens::new().with("ann", User::new(1, "ann")))
        .build()
        .expect("engine");
    let seed: Write = serde_json::from_value(json!({"writeId": 1, "operation": "batch", "ops": [
        {"operation": "create", "instanceType": "Job", "instanceId": 1, "data": {"name": "one"}},
        {"operation": "create", "instanceType": "Task", "instanceId": 1, "data": {"job": 1, "name": "a"}}
    ]}))
    .expect("seed");
    engine.write(Actor::System, seed).await.expect("seed write");
    for round in 0..3 {
        let mut c = Client::connect(&engine, "ann").await;
        c.send(json!({"type": "subscribe", "channel": "job", "anchorId": 1})).await;
        c.send(json!({"type": "write", "writeId": 100 + round, "operation": "save", "instanceType": "Task",
                      "instanceId": 1, "context": "job/1", "data": {"name": format!("round {round}")}}))
            .await;
        c.send(json!({"type": "ping", "rid": "after"})).await;
        let first = c.recv().await;
        assert_eq!(first["type"], "state", "the state comes first: {first}");
        let second = c.recv().await;
        let state_seq = first["seq"].as_i64().expect("state seq");
        let response = match second["type"].as_str() {
            // The write committed after the load: its tagged delta, then the answer.
            Some("delta") => {
                assert_eq!(second["writeId"], 100 + round, "{second}");
                let response = c.recv().await;
                assert_eq!(response["seq"], second["seq"], "{response}");
                assert!(response["seq"].as_i64() > Some(state_seq));
                response
            }
            // The write committed while the context loaded: the state carries it.
            _ => {
                let name = first["instances"]
                    .as_array()
                    .and_then(|rows| rows.iter().find(|r| r["_type"] == "Task").map(|r| r["name"].clone()));
                assert_eq!(name, Some(json!(format!("round {round}"))), "the state holds the write: {first}");
                assert!(second["seq"].as_i64() <= Some(state_seq), "{second} after a state at {state_seq}");
                second
            }
        };
        assert_eq!(response["type"], "writeResponse", "{response}");
        assert_eq!(response["success"], true, "{response}");
        assert_eq!(c.recv().await["type"], "pong", "answers stay in order");
    }
}

/// Fields the server sets (`ServerValue::Now`, `UserId`) are filled for a
/// system write as for a user's, unless the system write gives a value.
#[tokio::test]
async fn server_values_are_set_for_system_writes_too() {
    use statecast_core::ServerValue;
    let schema = Schema::builder()
        .entity("User", |t| {
            t.string("name");
        })
        .entity("Board", |t| {
            t.string("title");
        })
        .entity("Card", |t| {
            t.reference("board", "Board").on_delete(OnDelete::Cascade);
            t.string("text");
            t.timestamp("created_at").nullable().server_value(ServerValue::Now);
            t.reference("created_by", "User").nullable().server_value(ServerValue::UserId);
        })
        .relation("Board", "cards", "Card", "board")
        .build()
        .expect("schema");
    struct Open;
    #[async_trait::async_trait]
    impl Policy for Open {
        async fn has_permission(&self, _: &PolicyContext<'_>, _: &Row) -> Result<bool, PolicyError> {
            Ok(true)
        }
        async fn can_create(
            &self,
            _: &PolicyContext<'_>,
            _: &EntityType,
            _: &Row,
            _: &Fields,
        ) -> Result<bool, PolicyError> {
            Ok(true)
        }
    }
    let channel = Channel::builder("board", "Board")
        .include("cards")
        .writable("Card", [Op::Create])
        .policy(Open)
        .build(&schema)
        .expect("channel");
    let store = Arc::new(MemoryStore::new(schema.clone()));
    let engine =
        Engine::builder(schema, store).channel(channel).authenticator(DevTokens::new()).build().expect("engine");
    let given = "2020-01-02T03:04:05.000Z";
    engine
        .write(
            Actor::System,
            Write::batch([
                Write::create("User").id(1).set("name", "ann"),
                Write::create("Board").id(1).set("title", "b"),
                Write::create("Card").id(1).under("Board", 1, "cards").set("text", "seeded"),
                Write::create("Card").id(2).set("board", 1).set("text", "dated").set("created_at", given),
            ]),
        )
        .await
        .expect("system write");
    let seeded = engine.store().get("Card", 1).await.expect("get").expect("card 1");
    let at = seeded.get("created_at").as_str().expect("a system create gets created_at, not null").to_owned();
    assert!(humantime::parse_rfc3339(&at).is_ok(), "an RFC 3339 time: {at}");
    assert_eq!(seeded.get("created_by"), &Value::Null, "no user made a system write");
    let dated = engine.store().get("Card", 2).await.expect("get").expect("card 2");
    assert_eq!(dated.get("created_at"), &json!(given), "a system write may give its own value");
    let ann = User::new(1, "ann");
    let r = engine
        .write(
            Actor::User(ann),
            Write::create("Card").under("Board", 1, "cards").set("text", "mine").context("board/1").write_id(1),
        )
        .await
        .expect("user write");
    let id = r.instance_id.expect("created id");
    let mine = engine.store().get("Card", id).await.expect("get").expect("card");
    assert!(mine.get("created_at").is_string(), "{mine:?}");
    assert_eq!(mine.get("created_by"), &json!(1));
}

/// Holds a write's first check at a gate the test opens, after the check's
/// reads: the test changes the store between the check and the commit.
#[derive(Clone)]
struct CheckGate {
    reached: Arc<tokio::sync::Notify>,
    gate: Arc<tokio::sync::Semaphore>,
    gated: Arc<std::sync::atomic::AtomicBool>,
}

impl CheckGate {
    fn new() -> Self {
        Self {
            reached: Arc::new(tokio::sync::Notify::new()),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            gated: Arc::default(),
        }
    }

    /// Called by the policy after its reads: the first check waits here.
    async fn hold_first_check(&self) {
        if !self.gated.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.reached.notify_one();
            self.gate.acquire().await.expect("gate").forget();
        }
    }
}

/// A job's members may rename it.
struct GatedMembers(CheckGate);

#[async_trait::async_trait]
impl Policy for GatedMembers {
    async fn has_permission(&self, _: &PolicyContext<'_>, _: &Row) -> Result<bool, PolicyError> {
        Ok(true)
    }
    async fn can_save(&self, cx: &PolicyContext<'_>, job: &Row, _: &Fields) -> Result<bool, PolicyError> {
        let members = cx.referencing("Member", "job", job.id).await?;
        self.0.hold_first_check().await;
        Ok(members.iter().any(|m| m.get_i64("user") == Some(cx.user().id)))
    }
}

/// How [`GatedBans`] looks a ban up.
#[derive(Clone, Copy, Debug)]
enum BanLookup {
    /// `get("Member", 100 + user)`: a ban has a known id.
    ById,
    /// `referencing("Member", "job", job)`: any ban row of the job naming the user.
    InJob,
}

/// Denies a save to a user with a ban (a `Member` row, in this schema).
struct GatedBans(BanLookup, CheckGate);

#[async_trait::async_trait]
impl Policy for GatedBans {
    async fn has_permission(&self, _: &PolicyContext<'_>, _: &Row) -> Result<bool, PolicyError> {
        Ok(true)
    }
    async fn can_save(&self, cx: &PolicyContext<'_>, job: &Row, _: &Fields) -> Result<bool, PolicyError> {
        let me = cx.user().id;
        let banned = match self.0 {
            BanLookup::ById => cx.get("Member", 100 + me).await?.is_some(),
            BanLookup::InJob => {
                cx.referencing("Member", "job", job.id).await?.iter().any(|m| m.get_i64("user") == Some(me))
            }
        };
        self.1.hold_first_check().await;
        Ok(!banned)
    }
}

/// ann (user 1) saves job 1 under `policy` (which holds her check at
/// `gate`), after `seed`; `between` commits after her check and before her
/// commit. Returns ann's answer and the job's name afterwards.
async fn save_with_a_commit_between(
    policy: impl Policy,
    gate: CheckGate,
    seed: Write,
    between: Write,
) -> (serde_json::Value, serde_json::Value) {
    let schema = members_schema();
    let channel =
        Channel::builder("job", "Job").writable("Job", [Op::Save]).policy(policy).build(&schema).expect("channel");
    let engine = Engine::builder(schema.clone(), Arc::new(MemoryStore::new(schema)))
        .channel(channel)
        .authenticator(DevTokens::new().with("ann", User::new(1, "ann")))
        .build()
        .expect("engine");
    engine.write(Actor::System, seed.write_id(1)).await.expect("seed");
    let mut ann = Client::connect(&engine, "ann").await;
    ann.subscribe(1).await;

    ann.send(json!({"type": "write", "writeId": 1, "context": "job/1", "operation": "save",
        "instanceType": "Job", "instanceId": 1, "data": {"name": "renamed"}}))
        .await;
    tokio::time::timeout(Duration::from_secs(5), gate.reached.notified()).await.expect("the check ran");
    engine.write(Actor::System, between.write_id(2)).await.expect("the commit between");
    gate.gate.add_permits(1);

    // A committed write's own delta comes first.
    let mut answer = ann.recv().await;
    if answer["type"] == "delta" {
        answer = ann.recv().await;
    }
    assert_eq!(answer["type"], "writeResponse", "{answer}");
    let state = Client::connect(&engine, "ann").await.subscribe(1).await;
    (answer, state["instances"][0]["name"].clone())
}

fn assert_denied(answer: &serde_json::Value, why: &str) {
    assert_eq!(answer["success"], false, "{why}: {answer}");
    let error = (answer["error"]["code"].as_u64(), answer["error"]["reason"].as_str());
    assert_eq!(error, (Some(403), Some("DENIED")), "{why}: {answer}");
}

#[tokio::test]
async fn a_membership_removed_between_check_and_commit_refuses_the_write() {
    let gate = CheckGate::new();
    let seed = Write::batch([
        Write::create("Job").id(1).set("name", "one"),
        Write::create("Member").id(1).set("job", 1).set("user", 1),
    ]);
    let (answer, name) =
        save_with_a_commit_between(GatedMembers(gate.clone()), gate, seed, Write::delete("Member", 1)).await;
    assert_denied(&answer, "a write allowed only by a removed membership must not commit");
    assert_eq!(name, "one");
}

/// ann saves job 1 while a ban row for `banned` is created between her
/// check and her commit.
async fn save_while_a_ban_is_created(lookup: BanLookup, banned: i64) -> (serde_json::Value, serde_json::Value) {
    let gate = CheckGate::new();
    let seed = Write::create("Job").id(1).set("name", "one");
    let ban = Write::create("Member").id(100 + banned).set("job", 1).set("user", banned);
    save_with_a_commit_between(GatedBans(lookup, gate.clone()), gate, seed, ban).await
}

#[tokio::test]
async fn a_ban_created_between_check_and_commit_refuses_the_write() {
    for lookup in [BanLookup::ById, BanLookup::InJob] {
        let (answer, name) = save_while_a_ban_is_created(lookup, 1).await;
        assert_denied(&answer, &format!("{lookup:?}: a banned user's write must not commit"));
        assert_eq!(name, "one", "{lookup:?}");
    }
}

#[tokio::test]
async fn another_users_ban_created_meanwhile_lets_the_write_commit_after_a_second_check() {
    for lookup in [BanLookup::ById, BanLookup::InJob] {
        let (answer, name) = save_while_a_ban_is_created(lookup, 2).await;
        assert_eq!(answer["success"], true, "{lookup:?}: {answer}");
        assert_eq!(name, "renamed", "{lookup:?}");
    }
}
