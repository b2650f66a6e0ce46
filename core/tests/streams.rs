//! Streams through the engine's public interface: an in-memory store and
//! transport, frames as a client would send them.

use serde_json::{Value, json};
use statecast_core::policy::{PolicyContext, PolicyError};
use statecast_core::protocol::v1::Write;
use statecast_core::store::MemoryStore;
use statecast_core::stream::{AllowAuthenticated, Filters, Payload, Stream, StreamPolicy, StreamRequest};
use statecast_core::transport::{Connection, Frame, Incoming, memory_pair};
use statecast_core::{Actor, ConnectionLimits, DevTokens, Engine, EngineConfig, OnDelete, Schema, User};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// `assignee = the user`.
struct Mine;

#[async_trait::async_trait]
impl StreamPolicy for Mine {
    async fn has_permission(&self, _: &PolicyContext<'_>, _: &StreamRequest<'_>) -> Result<bool, PolicyError> {
        Ok(true)
    }
    async fn scope(&self, cx: &PolicyContext<'_>, _: &StreamRequest<'_>) -> Result<Filters, PolicyError> {
        Ok(Filters::new().eq("assignee", cx.user().id))
    }
}

fn schema() -> Arc<Schema> {
    Schema::builder()
        .entity("User", |t| {
            t.string("name");
        })
        .entity("Job", |t| {
            t.string("name");
        })
        .entity("Task", |t| {
            t.reference("job", "Job").on_delete(OnDelete::Cascade);
            t.string("name").len(1, 100);
            t.string("status").one_of(["todo", "doing", "done"]).default("todo");
            t.int("points").nullable();
            t.float("weight").default(1.0);
            t.bool("urgent").default(false);
            t.timestamp("due").nullable();
            t.reference("assignee", "User").nullable();
        })
        .relation("Job", "tasks", "Task", "job")
        .build()
        .expect("schema")
}

async fn engine_with(config: EngineConfig) -> Engine {
    let schema = schema();
    let tasks = Stream::builder("tasks", "Task")
        .payload(Payload::Full)
        .policy(AllowAuthenticated)
        .index_fields(["job"])
        .build(&schema)
        .expect("tasks");
    let ids = Stream::builder("task-ids", "Task").policy(AllowAuthenticated).build(&schema).expect("task-ids");
    let mine = Stream::builder("mine", "Task")
        .payload(Payload::Full)
        .policy(Mine)
        .index_fields(["assignee"])
        .build(&schema)
        .expect("mine");
    let closed = Stream::builder("closed", "Task").build(&schema).expect("closed");
    let store = Arc::new(MemoryStore::new(schema.clone()));
    let tokens = DevTokens::new().with("ann", User::new(1, "ann")).with("ben", User::new(2, "ben"));
    let engine = Engine::builder(schema, store)
        .stream(tasks)
        .stream(ids)
        .stream(mine)
        .stream(closed)
        .authenticator(tokens)
        .config(config)
        .build()
        .expect("engine");
    let seed = json!({"writeId": 1, "operation": "batch", "ops": [
        {"operation": "create", "instanceType": "User", "instanceId": 1, "data": {"name": "ann"}},
        {"operation": "create", "instanceType": "User", "instanceId": 2, "data": {"name": "ben"}},
        {"operation": "create", "instanceType": "Job", "instanceId": 1, "data": {"name": "one"}},
        {"operation": "create", "instanceType": "Job", "instanceId": 2, "data": {"name": "two"}},
        {"operation": "create", "instanceType": "Task", "instanceId": 1, "data": {"job": 1, "name": "Write docs", "points": 3, "assignee": 1, "due": "2026-03-01T00:00:00Z"}},
        {"operation": "create", "instanceType": "Task", "instanceId": 2, "data": {"job": 1, "name": "Fix bug", "points": 5, "assignee": 2, "urgent": true}},
        {"operation": "create", "instanceType": "Task", "instanceId": 3, "data": {"job": 2, "name": "Rotate keys", "assignee": 1, "status": "doing"}}
    ]});
    write(&engine, seed).await;
    engine
}

async fn engine() -> Engine {
    engine_with(EngineConfig::default()).await
}

async fn write(engine: &Engine, w: Value) {
    let w: Write = serde_json::from_value(w).expect("write");
    engine.write(Actor::System, w).await.expect("system write");
}

static NEXT_WRITE: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(100);

fn wid() -> i64 {
    NEXT_WRITE.fetch_add(1, Ordering::Relaxed)
}

async fn create(engine: &Engine, id: i64, data: Value) {
    let w = json!({"writeId": wid(), "operation": "create", "instanceType": "Task", "instanceId": id, "data": data});
    write(engine, w).await;
}

async fn save(engine: &Engine, id: i64, data: Value) {
    let w = json!({"writeId": wid(), "operation": "save", "instanceType": "Task", "instanceId": id, "data": data});
    write(engine, w).await;
}

async fn delete(engine: &Engine, ty: &str, id: i64) {
    let w = json!({"writeId": wid(), "operation": "delete", "instanceType": ty, "instanceId": id});
    write(engine, w).await;
}

struct Client {
    conn: Connection,
}

impl Client {
    async fn connect(engine: &Engine, token: &str) -> Client {
        let (server, client) = memory_pair(4096);
        engine.accept(server);
        let mut c = Client { conn: client };
        c.send(json!({"type": "hello", "protocol": 1, "token": token})).await;
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
    /// Every frame that arrives until the connection goes quiet.
    async fn drain(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(Some(Incoming::Frame(f))) =
            tokio::time::timeout(Duration::from_millis(150), self.conn.incoming.recv()).await
        {
            out.push(serde_json::from_slice(&f.data).expect("json"));
        }
        out
    }
    async fn silent(&mut self) {
        let got = self.drain().await;
        assert!(got.is_empty(), "expected silence, got {got:?}");
    }
    /// Subscribes and returns the `subscribed` answer.
    async fn subscribe(&mut self, mut sub: Value) -> Value {
        sub["type"] = json!("subscribe");
        self.send(sub).await;
        let answer = self.recv().await;
        assert_eq!(answer["type"], "subscribed", "{answer}");
        answer
    }
    /// Subscribes expecting an error; returns it.
    async fn refused(&mut self, mut sub: Value) -> Value {
        sub["type"] = json!("subscribe");
        self.send(sub).await;
        let answer = self.recv().await;
        assert_eq!(answer["type"], "error", "{answer}");
        answer
    }
}

/// The events among `frames`, as (subscription, action, id).
fn events(frames: &[Value]) -> Vec<(String, String, i64)> {
    frames
        .iter()
        .filter(|f| f["type"] == "event")
        .map(|f| {
            (
                f["subscription"].as_str().unwrap_or("").to_owned(),
                f["action"].as_str().unwrap_or("").to_owned(),
                f["id"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

fn sub_id(subscribed: &Value) -> String {
    subscribed["subscription"].as_str().expect("subscription id").to_owned()
}

#[tokio::test]
async fn every_lookup_decides_in_memory() {
    let engine = engine().await;
    let mut c = Client::connect(&engine, "ann").await;
    // (filters, does the new task match?)
    let cases = [
        (json!({"job": 1}), true),
        (json!({"job__exact": 2}), false),
        (json!({"name__iexact": "ship IT"}), true),
        (json!({"name__contains": "It"}), true),
        (json!({"name__contains": "it"}), false),
        (json!({"name__icontains": "IT"}), true),
        (json!({"name__startswith": "Ship"}), true),
        (json!({"name__startswith": "ship"}), false),
        (json!({"status__in": ["todo", "doing"]}), true),
        (json!({"status__in": ["done"]}), false),
        (json!({"points__gt": 7}), true),
        (json!({"points__gt": 8}), false),
        (json!({"points__gte": 8}), true),
        (json!({"points__lt": 8}), false),
        (json!({"points__lte": 8}), true),
        (json!({"weight__lt": 2.5}), true),
        (json!({"urgent": false}), true),
        (json!({"due__gte": "2026-05-01T00:00:00Z"}), true),
        (json!({"due__lt": "2026-05-01T00:00:00Z"}), false),
        (json!({"assignee__isnull": true}), true),
        (json!({"assignee__isnull": false}), false),
        (json!({"assignee": null}), true),
        (json!({"id__in": [50, 51]}), true),
        (json!({"id__gt": 50}), false),
    ];
    let mut subs = Vec::new();
    for (filters, matches) in &cases {
        let s = c.subscribe(json!({"stream": "tasks", "filters": filters})).await;
        subs.push((sub_id(&s), filters.clone(), *matches));
    }
    create(
        &engine,
        50,
        json!({"job": 1, "name": "Ship It", "points": 8, "weight": 1.5, "due": "2026-05-01T00:00:00Z"}),
    )
    .await;
    let got = events(&c.drain().await);
    for (sub, filters, matches) in &subs {
        let hit = got.iter().any(|(s, action, id)| s == sub && action == "create" && *id == 50);
        assert_eq!(hit, *matches, "filters {filters}");
    }
    assert_eq!(got.len(), subs.iter().filter(|s| s.2).count(), "{got:?}");
}

#[tokio::test]
async fn combined_filters_all_hold() {
    let engine = engine().await;
    let mut c = Client::connect(&engine, "ann").await;
    let s = sub_id(&c.subscribe(json!({"stream": "tasks", "filters": {"job": 1, "name__icontains": "bug"}})).await);
    create(&engine, 60, json!({"job": 1, "name": "Another BUG"})).await;
    create(&engine, 61, json!({"job": 2, "name": "bug elsewhere"})).await;
    create(&engine, 62, json!({"job": 1, "name": "no match"})).await;
    assert_eq!(events(&c.drain().await), vec![(s, "create".into(), 60)]);
}

#[tokio::test]
async fn actions_and_id_filter() {
    let engine = engine().await;
    let mut c = Client::connect(&engine, "ann").await;
    let deletes = sub_id(&c.subscribe(json!({"stream": "task-ids", "actions": ["delete"]})).await);
    let two = sub_id(&c.subscribe(json!({"stream": "task-ids", "id": 2})).await);
    let creates = sub_id(&c.subscribe(json!({"stream": "task-ids", "actions": ["create", "update"]})).await);
    create(&engine, 70, json!({"job": 1, "name": "new"})).await;
    save(&engine, 2, json!({"status": "done"})).await;
    save(&engine, 1, json!({"status": "done"})).await;
    delete(&engine, "Task", 2).await;
    let got = events(&c.drain().await);
    assert_eq!(
        got,
        vec![
            (creates.clone(), "create".into(), 70),
            (two.clone(), "update".into(), 2),
            (creates.clone(), "update".into(), 2),
            (creates, "update".into(), 1),
            (deletes, "delete".into(), 2),
            (two, "delete".into(), 2),
        ]
    );
}

#[tokio::test]
async fn payload_modes_and_projection() {
    let engine = engine().await;
    let mut c = Client::connect(&engine, "ann").await;
    c.subscribe(json!({"stream": "task-ids", "id": 1})).await;
    c.subscribe(json!({"stream": "tasks", "id": 1})).await;
    c.subscribe(json!({"stream": "tasks", "id": 1, "fields": ["status", "name", "status", "id"]})).await;
    save(&engine, 1, json!({"status": "doing"})).await;
    let frames = c.drain().await;
    assert_eq!(frames.len(), 3, "{frames:?}");
    assert!(frames[0].get("data").is_none(), "id mode carries no data: {}", frames[0]);
    assert_eq!(frames[1]["data"]["status"], "doing");
    assert_eq!(frames[1]["data"]["points"], 3);
    assert_eq!(frames[1]["data"].as_object().map(|m| m.len()), Some(8), "every field: {}", frames[1]);
    assert_eq!(frames[2]["data"], json!({"name": "Write docs", "status": "doing"}));
    for f in &frames {
        assert_eq!(f["action"], "update");
        assert_eq!(f["id"], 1);
    }

    // `fields` in id mode, or naming an unknown field, is refused.
    let e = c.refused(json!({"stream": "task-ids", "fields": ["name"]})).await;
    assert_eq!((e["code"].as_i64(), e["field"].as_str()), (Some(400), Some("fields")));
    let e = c.refused(json!({"stream": "tasks", "fields": ["nope"]})).await;
    assert_eq!((e["code"].as_i64(), e["field"].as_str()), (Some(400), Some("fields")));
}

#[tokio::test]
async fn deletes_and_moves_out_arrive_as_deletes_moves_in_as_creates() {
    let engine = engine().await;
    let mut c = Client::connect(&engine, "ann").await;
    let job1 = sub_id(&c.subscribe(json!({"stream": "tasks", "filters": {"job": 1}, "fields": ["name"]})).await);
    let todo = sub_id(&c.subscribe(json!({"stream": "task-ids", "filters": {"status": "todo"}})).await);
    // Out of the filter: task 1 goes to job 2 (a delete for job1), still todo (an update there).
    save(&engine, 1, json!({"job": 2})).await;
    let frames = c.drain().await;
    assert_eq!(events(&frames), vec![(job1.clone(), "delete".into(), 1), (todo.clone(), "update".into(), 1)]);
    assert_eq!(frames[0]["data"], json!({"name": "Write docs"}), "a delete carries the last matching image");
    // Into the filter: task 3 (doing, job 2) → todo and job 1.
    save(&engine, 3, json!({"status": "todo", "job": 1})).await;
    let frames = c.drain().await;
    assert_eq!(events(&frames), vec![(job1.clone(), "create".into(), 3), (todo.clone(), "create".into(), 3)]);
    assert_eq!(frames[0]["data"], json!({"name": "Rotate keys"}));
    // Deleting job 1 cascades to tasks 2 and 3 (both todo): deletes everywhere.
    delete(&engine, "Job", 1).await;
    let mut got = events(&c.drain().await);
    got.sort();
    assert_eq!(
        got,
        vec![
            (job1.clone(), "delete".into(), 2),
            (job1, "delete".into(), 3),
            (todo.clone(), "delete".into(), 2),
            (todo, "delete".into(), 3),
        ]
    );
}

#[tokio::test]
async fn events_chain_seq_and_prev_per_subscription() {
    let engine = engine().await;
    let mut c = Client::connect(&engine, "ann").await;
    let a = c.subscribe(json!({"stream": "task-ids"})).await;
    let b = c.subscribe(json!({"stream": "task-ids", "filters": {"job": 2}})).await;
    let batch = json!({"writeId": wid(), "operation": "batch", "ops": [
        {"operation": "create", "instanceType": "Task", "instanceId": 80, "data": {"job": 1, "name": "x"}},
        {"operation": "create", "instanceType": "Task", "instanceId": 81, "data": {"job": 2, "name": "y"}}
    ]});
    write(&engine, batch).await;
    save(&engine, 81, json!({"name": "z"})).await;
    let frames = c.drain().await;
    for sub in [&a, &b] {
        let mine: Vec<&Value> = frames.iter().filter(|f| f["subscription"] == sub["subscription"]).collect();
        let mut prev = sub["seq"].as_i64().expect("seq");
        for e in &mine {
            assert_eq!(e["prev"].as_i64(), Some(prev), "{e}");
            assert!(e["seq"].as_i64() >= Some(prev));
            prev = e["seq"].as_i64().expect("seq");
        }
    }
    assert_eq!(frames.iter().filter(|f| f["subscription"] == a["subscription"]).count(), 3);
    assert_eq!(frames.iter().filter(|f| f["subscription"] == b["subscription"]).count(), 2);
    assert!(frames.iter().all(|f| f["seq"].as_i64() > a["seq"].as_i64()));
}

#[tokio::test]
async fn snapshot_holds_the_matching_rows_and_is_capped() {
    let engine = engine_with(EngineConfig { snapshot_limit: 2, ..EngineConfig::default() }).await;
    let mut c = Client::connect(&engine, "ann").await;
    let s = c.subscribe(json!({"stream": "tasks", "filters": {"job": 1}, "fields": ["name"], "snapshot": true})).await;
    assert_eq!(
        s["snapshot"],
        json!([
            {"_type": "Task", "id": 1, "_version": 1, "name": "Write docs"},
            {"_type": "Task", "id": 2, "_version": 1, "name": "Fix bug"}
        ])
    );
    let s = c.subscribe(json!({"stream": "task-ids", "filters": {"name__icontains": "KEYS"}, "snapshot": true})).await;
    assert_eq!(s["snapshot"], json!([{"_type": "Task", "id": 3, "_version": 1}]));
    let s = c.subscribe(json!({"stream": "task-ids", "id": 2, "snapshot": true})).await;
    assert_eq!(s["snapshot"], json!([{"_type": "Task", "id": 2, "_version": 1}]));
    let s = c.subscribe(json!({"stream": "task-ids", "filters": {"job": 9}, "snapshot": true})).await;
    assert_eq!(s["snapshot"], json!([]));

    // Three tasks match: over the cap of 2. Nothing is subscribed.
    let before = engine.metrics().stream_subscriptions.load(Ordering::Relaxed);
    let e = c.refused(json!({"stream": "task-ids", "snapshot": true, "rid": 5})).await;
    assert_eq!(
        (e["code"].as_i64(), e["reason"].as_str(), e["rid"].as_i64()),
        (Some(400), Some("SNAPSHOT_TOO_LARGE"), Some(5))
    );
    assert_eq!(engine.metrics().stream_subscriptions.load(Ordering::Relaxed), before);
    c.drain().await;
    save(&engine, 3, json!({"name": "still keys"})).await;
    // Only the KEYS subscription sees task 3.
    assert_eq!(events(&c.drain().await).len(), 1);
}

#[tokio::test]
async fn a_snapshot_taken_under_concurrent_writes_is_consistent_with_its_events() {
    let engine = engine().await;
    let writer = {
        let engine = engine.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                create(&engine, 1000 + i, json!({"job": 2, "name": format!("t{i}")})).await;
            }
        })
    };
    let mut c = Client::connect(&engine, "ann").await;
    let s = c.subscribe(json!({"stream": "task-ids", "filters": {"job": 2}, "snapshot": true})).await;
    writer.await.expect("writer");
    let mut ids: Vec<i64> =
        s["snapshot"].as_array().expect("snapshot").iter().filter_map(|r| r["id"].as_i64()).collect();
    let seq = s["seq"].as_i64().expect("seq");
    for e in c.drain().await {
        assert!(e["seq"].as_i64() > Some(seq), "{e}");
        assert_eq!(e["action"], "create");
        ids.push(e["id"].as_i64().expect("id"));
    }
    ids.sort_unstable();
    let mut want: Vec<i64> = std::iter::once(3).chain(1000..1040).collect();
    want.sort_unstable();
    assert_eq!(ids, want, "every row once: in the snapshot or as an event");
}

#[tokio::test]
async fn the_scope_is_forced_and_cannot_be_widened() {
    let engine = engine().await;
    let mut ben = Client::connect(&engine, "ben").await;
    let attempts = [
        json!({}),
        json!({"assignee": 1}),
        json!({"assignee__exact": 1}),
        json!({"assignee__in": [1, 2]}),
        json!({"assignee__isnull": true}),
        json!({"assignee__gte": 0}),
        json!({"id__in": [1, 2, 3]}),
    ];
    let mut subs = Vec::new();
    for filters in &attempts {
        let s = ben.subscribe(json!({"stream": "mine", "filters": filters, "snapshot": true})).await;
        for row in s["snapshot"].as_array().expect("snapshot") {
            assert_eq!(row["assignee"], 2, "ben sees only his tasks: {filters} gave {row}");
        }
        subs.push(sub_id(&s));
    }
    // Ann's tasks change, move, are created and deleted: ben hears nothing of them.
    create(&engine, 90, json!({"job": 1, "name": "ann's", "assignee": 1})).await;
    save(&engine, 1, json!({"name": "renamed"})).await;
    delete(&engine, "Task", 3).await;
    ben.silent().await;
    // A task moving to ben arrives as a create; moving back to ann, as a delete.
    save(&engine, 90, json!({"assignee": 2})).await;
    save(&engine, 90, json!({"assignee": 1})).await;
    let got = events(&ben.drain().await);
    assert!(got.iter().all(|(_, _, id)| *id == 90), "{got:?}");
    let first = &subs[0];
    assert_eq!(
        got.iter().filter(|(s, _, _)| s == first).map(|(_, a, _)| a.as_str()).collect::<Vec<_>>(),
        vec!["create", "delete"]
    );
    // `get` applies the scope too.
    ben.send(json!({"type": "get", "stream": "mine", "ids": [1, 2, 3, 90, 404], "rid": 1})).await;
    let rows = ben.recv().await;
    assert_eq!(rows["type"], "rows", "{rows}");
    let ids: Vec<i64> = rows["rows"].as_array().expect("rows").iter().filter_map(|r| r["id"].as_i64()).collect();
    assert_eq!(ids, vec![2]);
}

#[tokio::test]
async fn get_returns_full_rows_even_for_id_streams() {
    let engine = engine().await;
    let mut c = Client::connect(&engine, "ann").await;
    c.send(json!({"type": "get", "stream": "task-ids", "ids": [3, 1, 1, 77]})).await;
    let rows = c.recv().await;
    assert_eq!(rows["stream"], "task-ids");
    let rows = rows["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["name"], "Write docs");
    c.send(json!({"type": "get", "stream": "nope", "ids": [1]})).await;
    assert_eq!(c.recv().await["reason"], "UNKNOWN_STREAM");
    c.send(json!({"type": "get", "stream": "closed", "ids": [1]})).await;
    assert_eq!(c.recv().await["reason"], "DENIED");
}

#[tokio::test]
async fn a_denied_stream_answers_403_and_sends_nothing() {
    let engine = engine().await;
    let mut c = Client::connect(&engine, "ann").await;
    let e = c.refused(json!({"stream": "closed", "rid": "r"})).await;
    assert_eq!((e["code"].as_i64(), e["reason"].as_str(), e["rid"].as_str()), (Some(403), Some("DENIED"), Some("r")));
    save(&engine, 1, json!({"status": "done"})).await;
    c.silent().await;
    assert_eq!(engine.metrics().stream_subscriptions.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_subscribed() {
    let engine = engine().await;
    let mut c = Client::connect(&engine, "ann").await;
    let cases = [
        (json!({"stream": "nope"}), 404, "UNKNOWN_STREAM", None),
        (json!({"stream": "tasks", "filters": {"nope": 1}}), 400, "INVALID_DATA", Some("nope")),
        (json!({"stream": "tasks", "filters": {"name__like": "x"}}), 400, "INVALID_DATA", Some("name__like")),
        (json!({"stream": "tasks", "filters": {"job": "one"}}), 400, "INVALID_DATA", Some("job")),
        (json!({"stream": "tasks", "filters": {"points__in": [1, "2"]}}), 400, "INVALID_DATA", Some("points__in")),
        (json!({"stream": "tasks", "filters": {"urgent__gt": true}}), 400, "INVALID_DATA", Some("urgent__gt")),
        (json!({"stream": "tasks", "filters": {"name": null}}), 400, "INVALID_DATA", Some("name")),
        (json!({"stream": "tasks", "id": 9007199254740992_i64}), 400, "INVALID_DATA", Some("id")),
        (json!({"stream": "tasks", "actions": []}), 400, "INVALID_DATA", Some("actions")),
        (json!({"stream": "tasks", "actions": ["explode"]}), 400, "BAD_FRAME", None),
        (json!({"stream": "tasks", "filters": [1]}), 400, "BAD_FRAME", None),
        (json!({"stream": "tasks", "channel": "job"}), 400, "BAD_FRAME", None),
        // The scope replaces `assignee`, but the client's own value must still be valid.
        (json!({"stream": "mine", "filters": {"assignee": "me"}}), 400, "INVALID_DATA", Some("assignee")),
    ];
    for (sub, code, reason, field) in cases {
        let e = c.refused(sub.clone()).await;
        assert_eq!(e["code"].as_i64(), Some(code), "{sub}: {e}");
        assert_eq!(e["reason"], reason, "{sub}: {e}");
        assert_eq!(e["field"].as_str(), field, "{sub}: {e}");
    }
    assert_eq!(engine.metrics().stream_subscriptions.load(Ordering::Relaxed), 0);
    create(&engine, 95, json!({"job": 1, "name": "x"})).await;
    c.silent().await;
}

#[tokio::test]
async fn unsubscribe_stops_events() {
    let engine = engine().await;
    let mut c = Client::connect(&engine, "ann").await;
    let s = sub_id(&c.subscribe(json!({"stream": "task-ids"})).await);
    c.send(json!({"type": "unsubscribe", "subscription": s, "rid": 2})).await;
    let u = c.recv().await;
    assert_eq!((u["type"].as_str(), u["subscription"].as_str()), (Some("unsubscribed"), Some(s.as_str())));
    save(&engine, 1, json!({"status": "done"})).await;
    c.silent().await;
    // One not held (unknown, or already gone) is answered 404 and changes nothing.
    c.send(json!({"type": "unsubscribe", "subscription": "s999999", "rid": 3})).await;
    let refused = c.recv().await;
    assert_eq!((refused["type"].as_str(), refused["rid"].as_i64()), (Some("error"), Some(3)), "{refused}");
    assert_eq!((refused["code"].as_i64(), refused["reason"].as_str()), (Some(404), Some("UNKNOWN_STREAM")));
    assert_eq!(engine.metrics().stream_subscriptions.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn another_connections_subscription_cant_be_unsubscribed() {
    let engine = engine().await;
    let mut owner = Client::connect(&engine, "ann").await;
    let s = sub_id(&owner.subscribe(json!({"stream": "task-ids"})).await);
    let mut other = Client::connect(&engine, "ann").await;
    other.send(json!({"type": "unsubscribe", "subscription": s, "rid": 9})).await;
    let refused = other.recv().await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_i64()), (Some("error"), Some(404)), "{refused}");
    // The owner's subscription still delivers.
    save(&engine, 1, json!({"status": "done"})).await;
    let event = owner.recv().await;
    assert_eq!(event["subscription"].as_str(), Some(s.as_str()), "{event}");
    assert_eq!(engine.metrics().stream_subscriptions.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn since_replays_what_was_missed() {
    let engine = engine().await;
    let mut c = Client::connect(&engine, "ann").await;
    let epoch = engine.store().epoch().to_owned();
    let first = c.subscribe(json!({"stream": "task-ids", "filters": {"job": 1}})).await;
    let seq = first["seq"].as_i64().expect("seq");
    c.send(json!({"type": "unsubscribe", "subscription": first["subscription"]})).await;
    c.recv().await;
    save(&engine, 1, json!({"job": 2})).await; // leaves: a delete
    save(&engine, 3, json!({"name": "elsewhere"})).await; // never in: nothing
    create(&engine, 96, json!({"job": 1, "name": "new"})).await;
    let again = c.subscribe(json!({"stream": "task-ids", "filters": {"job": 1}, "since": seq, "epoch": epoch})).await;
    assert_eq!(again["seq"].as_i64(), Some(seq), "resumed where it left off");
    let frames = c.drain().await;
    let got: Vec<(String, i64, i64)> = frames
        .iter()
        .map(|f| {
            (
                f["action"].as_str().unwrap_or("").to_owned(),
                f["id"].as_i64().unwrap_or(0),
                f["prev"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(got, vec![("delete".into(), 1, seq), ("create".into(), 96, seq + 1)]);
    // Another epoch is not resumed: the current seq, and nothing replayed.
    let other = c.subscribe(json!({"stream": "task-ids", "since": seq, "epoch": "other"})).await;
    assert!(other["seq"].as_i64() > Some(seq));
    c.silent().await;
}

/// Subscribes `ann` to `tasks` over 10 jobs (3 subscriptions each, in different
/// shapes) plus 2 unindexed ones, runs the same writes, and returns the frames
/// and how many subscriptions each write woke.
async fn routing_run(stream_index: bool) -> (Vec<Value>, Vec<u64>) {
    let engine = engine_with(EngineConfig { stream_index, ..EngineConfig::default() }).await;
    for job in 3..=10 {
        let w = json!({"writeId": wid(), "operation": "create", "instanceType": "Job", "instanceId": job, "data": {"name": "j"}});
        write(&engine, w).await;
    }
    let mut c = Client::connect(&engine, "ann").await;
    for job in 1..=10 {
        c.subscribe(json!({"stream": "tasks", "filters": {"job": job}})).await;
        c.subscribe(json!({"stream": "tasks", "filters": {"job": job, "status": "todo"}, "fields": ["name"]})).await;
        c.subscribe(json!({"stream": "tasks", "filters": {"job__in": [job, 10]}, "actions": ["delete"]})).await;
    }
    c.subscribe(json!({"stream": "tasks", "filters": {"name__icontains": "o"}})).await;
    c.subscribe(json!({"stream": "tasks", "filters": {"job__gt": 5}})).await;
    let evals = || engine.metrics().stream_evaluations.load(Ordering::Relaxed);
    let mut woken = Vec::new();
    let mut frames = Vec::new();
    let mut step = |before: u64, after: u64| woken.push(after - before);
    let n = evals();
    create(&engine, 200, json!({"job": 3, "name": "three"})).await;
    step(n, evals());
    let n = evals();
    save(&engine, 200, json!({"job": 7, "status": "done"})).await;
    step(n, evals());
    let n = evals();
    save(&engine, 2, json!({"name": "Fix more"})).await;
    step(n, evals());
    let n = evals();
    delete(&engine, "Task", 200).await;
    step(n, evals());
    frames.extend(c.drain().await);
    (frames, woken)
}

#[tokio::test]
async fn indexed_routing_wakes_only_the_matching_group_and_changes_nothing() {
    let (indexed, woken) = routing_run(true).await;
    let (scanned, woken_all) = routing_run(false).await;
    assert_eq!(indexed, scanned, "the index changes who is looked at, never what is delivered");
    assert!(!indexed.is_empty());
    // Each group has 2 subscriptions fixed to its job plus the `in` one; job 10's `in`
    // lists hold 10 more; 2 are unindexed.
    // create in job 3: group 3 (3) + unindexed (2).
    // job 3 → 7: groups 3 and 7 (6) + 2.
    // update in job 1: group 1 (3) + 2.
    // delete in job 7: group 7 (3) + 2.
    assert_eq!(woken, vec![5, 8, 5, 5]);
    assert_eq!(woken_all, vec![32; 4], "without the index every subscription of the stream is decided");
}

fn limits(f: impl FnOnce(&mut ConnectionLimits)) -> EngineConfig {
    let mut config = EngineConfig::default();
    f(&mut config.limits);
    config
}

#[tokio::test]
async fn stream_subscriptions_per_connection_are_capped() {
    let engine = engine_with(limits(|l| l.stream_subscriptions = 2)).await;
    let mut c = Client::connect(&engine, "ann").await;
    c.subscribe(json!({"stream": "tasks", "filters": {"job": 1}})).await;
    let second = c.subscribe(json!({"stream": "tasks", "filters": {"job": 2}})).await;
    let e = c.refused(json!({"stream": "tasks", "filters": {"job": 3}, "rid": "third"})).await;
    assert_eq!(
        (e["code"].as_i64(), e["reason"].as_str(), e["rid"].as_str()),
        (Some(429), Some("RATE_LIMITED"), Some("third"))
    );
    assert_eq!(engine.metrics().stream_subscriptions.load(Ordering::Relaxed), 2, "nothing was added");
    // Another connection has its own allowance; one given back makes room.
    let mut other = Client::connect(&engine, "ann").await;
    other.subscribe(json!({"stream": "tasks"})).await;
    c.send(json!({"type": "unsubscribe", "subscription": second["subscription"]})).await;
    assert_eq!(c.recv().await["type"], "unsubscribed");
    c.subscribe(json!({"stream": "tasks", "filters": {"job": 3}})).await;
}

#[tokio::test]
async fn filters_beyond_the_size_limit_are_refused() {
    let engine = engine_with(limits(|l| l.filter_bytes = 256)).await;
    let mut c = Client::connect(&engine, "ann").await;
    let many: Vec<i64> = (1..200).collect();
    let e = c.refused(json!({"stream": "tasks", "filters": {"id__in": many}})).await;
    assert_eq!((e["code"].as_i64(), e["field"].as_str()), (Some(400), Some("filters")), "{e}");
    assert!(e["message"].as_str().is_some_and(|m| m.contains("256")), "{e}");
    assert_eq!(engine.metrics().stream_subscriptions.load(Ordering::Relaxed), 0);
    c.subscribe(json!({"stream": "tasks", "filters": {"id__in": [1, 2]}})).await;
}

#[tokio::test]
async fn unindexed_subscriptions_per_stream_are_capped() {
    let engine = engine_with(limits(|l| l.unindexed_per_stream = 2)).await;
    let mut ann = Client::connect(&engine, "ann").await;
    let mut ben = Client::connect(&engine, "ben").await;
    ann.subscribe(json!({"stream": "tasks", "filters": {"name__icontains": "a"}})).await;
    ben.subscribe(json!({"stream": "tasks", "filters": {"status": "todo"}})).await;
    let e = ann.refused(json!({"stream": "tasks", "filters": {"points__gt": 1}})).await;
    assert_eq!((e["code"].as_i64(), e["reason"].as_str()), (Some(429), Some("RATE_LIMITED")), "{e}");
    // Filters an index routes are not capped by it.
    ann.subscribe(json!({"stream": "tasks", "filters": {"job": 1, "points__gt": 1}})).await;
    ann.subscribe(json!({"stream": "tasks", "id": 2})).await;
}

/// Docs up to the user's clearance `level` (a `Team` row per user, by id);
/// no `Team` row, no stream.
struct Cleared;

#[async_trait::async_trait]
impl StreamPolicy for Cleared {
    async fn has_permission(&self, cx: &PolicyContext<'_>, _: &StreamRequest<'_>) -> Result<bool, PolicyError> {
        Ok(cx.get("Team", cx.user().id).await?.is_some())
    }
    fn depends_on(&self) -> &[&str] {
        &["Team"]
    }
    async fn read_rule(
        &self,
        cx: &PolicyContext<'_>,
        _: &StreamRequest<'_>,
    ) -> Result<statecast_core::ReadRule, PolicyError> {
        let level = cx.get("Team", cx.user().id).await?.and_then(|t| t.get_i64("level")).unwrap_or(0);
        Ok(statecast_core::ReadRule::rows_where(Filters::new().with(
            "level",
            statecast_core::stream::Lookup::Lte,
            level,
        )))
    }
}

#[tokio::test]
async fn a_stream_is_decided_again_when_what_its_policy_reads_changes() {
    let schema = Schema::builder()
        .entity("Team", |t| {
            t.int("level").default(0);
        })
        .entity("Doc", |t| {
            t.int("level").default(0);
        })
        .build()
        .expect("schema");
    let docs = Stream::builder("docs", "Doc").payload(Payload::Full).policy(Cleared).build(&schema).expect("docs");
    let tokens = DevTokens::new().with("ann", User::new(1, "ann")).with("ben", User::new(2, "ben"));
    let engine = Engine::builder(schema.clone(), Arc::new(MemoryStore::new(schema)))
        .stream(docs)
        .authenticator(tokens)
        .build()
        .expect("engine");
    let doc = |id: i64, level: i64| Write::create("Doc").id(id).set("level", level);
    let team = |id: i64, level: i64| Write::create("Team").id(id).set("level", level);
    let seed = Write::batch([doc(1, 1), doc(2, 2), doc(3, 3), team(1, 1), team(2, 3)]).write_id(1);
    engine.write(Actor::System, seed).await.expect("seed");
    let ids = |subscribed: &Value| -> Vec<i64> {
        subscribed["snapshot"].as_array().expect("snapshot").iter().filter_map(|r| r["id"].as_i64()).collect()
    };
    let mut ann = Client::connect(&engine, "ann").await;
    let mut ben = Client::connect(&engine, "ben").await;
    let sub = ann.subscribe(json!({"stream": "docs", "snapshot": true, "rid": 1})).await;
    assert_eq!(ids(&sub), vec![1]);
    ben.subscribe(json!({"stream": "docs", "snapshot": true, "rid": 1})).await;

    // ann's clearance rises: her subscription is rescoped; subscribing again shows more.
    engine.write(Actor::System, Write::save("Team", 1).set("level", 2).write_id(2)).await.expect("raise");
    let ended = ann.recv().await;
    assert_eq!(
        (ended["type"].as_str(), ended["reason"].as_str(), ended["subscription"].clone()),
        (Some("unsubscribed"), Some("RESCOPED"), sub["subscription"].clone()),
        "{ended}"
    );
    let again = ann.subscribe(json!({"stream": "docs", "snapshot": true, "rid": 2})).await;
    assert_eq!(ids(&again), vec![1, 2]);
    ben.silent().await;

    // ann's team row goes: the stream is revoked.
    engine.write(Actor::System, Write::delete("Team", 1).write_id(3)).await.expect("remove");
    let ended = ann.recv().await;
    assert_eq!(
        (ended["reason"].as_str(), ended["subscription"].clone()),
        (Some("REVOKED"), again["subscription"].clone())
    );
    // ben's goes on: a change still reaches him.
    engine.write(Actor::System, Write::save("Doc", 3).set("level", 3).write_id(4)).await.expect("touch");
    engine.write(Actor::System, Write::create("Doc").id(4).set("level", 2).write_id(5)).await.expect("new doc");
    let event = ben.recv().await;
    assert_eq!((event["action"].as_str(), event["id"].as_i64()), (Some("create"), Some(4)), "{event}");
    ann.silent().await;
}
