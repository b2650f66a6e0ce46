//! The write validator: a client's `write` frame (JSON) run through the
//! engine's real write pipeline (`Engine::write`: writable → in context →
//! load → validate → policy → commit) on a fresh in-memory store holding a
//! few seeded rows, once as a user and once as the system.
//!
//! Beyond "no panic": a refused write changes nothing; an accepted one leaves
//! every stored row valid for its type (exactly the declared fields, each
//! value passing its field's check, ids within ±(2^53−1), every reference
//! naming an existing row).

use async_trait::async_trait;
use serde_json::{Value, json};
use statecast_core::auth::{DevTokens, User};
use statecast_core::channel::{Channel, Op};
use statecast_core::ids::is_safe_int;
use statecast_core::policy::{Policy, PolicyContext, PolicyError};
use statecast_core::protocol::Codec;
use statecast_core::protocol::v1::{ClientMessage, Operation, Write, WriteOp};
use statecast_core::row::{Fields, Row};
use statecast_core::schema::{EntityType, OnDelete, Schema, ServerValue};
use statecast_core::store::Store;
use statecast_core::store::memory::MemoryStore;
use statecast_core::{Actor, Engine};
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

const TYPES: [&str; 4] = ["User", "Job", "Task", "Comment"];

static SCHEMA: LazyLock<Arc<Schema>> = LazyLock::new(|| {
    Schema::builder()
        .entity("User", |t| {
            t.string("name").len(1, 20);
            t.bool("is_admin").default(false).read_only();
        })
        .entity("Job", |t| {
            t.string("name").len(1, 50);
            t.reference("owner", "User").nullable();
        })
        .entity("Task", |t| {
            t.reference("job", "Job").on_delete(OnDelete::Cascade);
            t.string("name").len(1, 20);
            t.string("status").one_of(["todo", "doing", "done"]).default("todo");
            t.int("points").nullable().range(0.0, 100.0);
            t.float("weight").default(1.0).range(-10.0, 10.0);
            t.bool("done").default(false);
            t.timestamp("due").nullable();
            t.json("meta").nullable();
            t.reference("assignee", "User").nullable();
            t.reference("created_by", "User").nullable().server_value(ServerValue::UserId);
            t.string("secret").default("").read_only();
        })
        .entity("Comment", |t| {
            t.reference("task", "Task").on_delete(OnDelete::Cascade);
            t.string("body").max_len(100);
            t.reference("author", "User").nullable().on_delete(OnDelete::Restrict);
        })
        .relation("Job", "tasks", "Task", "job")
        .relation("Task", "comments", "Comment", "task")
        .build()
        .expect("the write target's schema is valid")
});

/// Lets every user do everything the channel allows, except save a task's
/// `done` to true or delete job 2's tasks (so refusals by policy happen too).
struct FuzzPolicy;

#[async_trait]
impl Policy for FuzzPolicy {
    async fn has_permission(&self, _: &PolicyContext<'_>, _: &Row) -> Result<bool, PolicyError> {
        Ok(true)
    }
    async fn can_save(&self, _: &PolicyContext<'_>, _: &Row, data: &Fields) -> Result<bool, PolicyError> {
        Ok(data.get("done") != Some(&Value::Bool(true)))
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
    async fn can_delete(&self, _: &PolicyContext<'_>, row: &Row) -> Result<bool, PolicyError> {
        Ok(row.get_i64("job") != Some(2))
    }
}

fn seed() -> Write {
    let op = |ty: &str, id: i64, data: Value| WriteOp {
        operation: Operation::Create,
        instance_type: ty.into(),
        instance_id: Some(id),
        parent_type: None,
        parent_id: None,
        relation_name: None,
        data: data.as_object().cloned(),
        if_version: None,
    };
    let ops = vec![
        op("User", 1, json!({"name": "alice"})),
        op("User", 2, json!({"name": "bob", "is_admin": true})),
        op("Job", 1, json!({"name": "one", "owner": 1})),
        op("Job", 2, json!({"name": "two"})),
        op("Task", 10, json!({"job": 1, "name": "a", "points": 3, "assignee": 2})),
        op("Task", 11, json!({"job": 1, "name": "b", "status": "done", "due": "2026-01-02T00:00:00Z"})),
        op("Task", 20, json!({"job": 2, "name": "c", "meta": {"x": [1]}})),
        op("Comment", 100, json!({"task": 10, "body": "hi", "author": 2})),
        op("Comment", 101, json!({"task": 20, "body": "yo"})),
    ];
    Write {
        write_id: 1,
        operation: Operation::Batch,
        context: None,
        instance_type: None,
        instance_id: None,
        parent_type: None,
        parent_id: None,
        relation_name: None,
        data: None,
        if_version: None,
        after: Vec::new(),
        ops,
        rid: None,
    }
}

/// The input is a client's `write` frame in JSON.
pub fn write_validator(data: &[u8]) {
    let Some(ClientMessage::Write(write)) = crate::codec::client_message(Codec::Json, data) else { return };
    for actor in [Actor::User(User::new(1, "alice")), Actor::System] {
        run(actor, write.clone());
    }
}

type Dump = BTreeMap<(String, i64), Row>;

fn run(actor: Actor, write: Write) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    rt.block_on(async {
        let schema = SCHEMA.clone();
        let store = Arc::new(MemoryStore::new(schema.clone()));
        let channel = Channel::builder("job", "Job")
            .include("tasks")
            .include("tasks.comments")
            .writable("Task", [Op::Save, Op::Create, Op::Delete])
            .writable("Comment", [Op::Save, Op::Create, Op::Delete])
            .policy(FuzzPolicy)
            .build(&schema)
            .expect("the channel is valid");
        let engine = Engine::builder(schema.clone(), store.clone())
            .channel(channel)
            .authenticator(DevTokens::new())
            .build()
            .expect("the engine builds");
        engine.write(Actor::System, seed()).await.expect("the seed rows are valid");
        let before = dump(&*store).await;
        let answer = tokio::time::timeout(Duration::from_secs(10), engine.write(actor.clone(), write.clone()))
            .await
            .unwrap_or_else(|_| panic!("the write never answered: {write:?}"));
        let after = dump(&*store).await;
        match answer {
            Ok(resp) => {
                assert!(resp.success, "an Ok answer is a success: {resp:?}");
                check_rows(&schema, &after, &write);
                for c in &resp.created {
                    assert!(after.contains_key(&(c.ty.clone(), c.id)), "created {c:?} is not stored");
                }
            }
            Err(e) => {
                assert!(e.code >= 400, "{e:?}");
                assert_eq!(before, after, "a refused write ({e:?}) changed rows: {write:?} as {actor:?}");
            }
        }
        engine.shutdown().await;
    });
}

async fn dump(store: &dyn Store) -> Dump {
    let mut out = Dump::new();
    for ty in TYPES {
        for row in store.scan(ty, None, 100_000).await.expect("the memory store scans") {
            out.insert((ty.to_owned(), row.id), row);
        }
    }
    out
}

fn check_rows(schema: &Schema, rows: &Dump, write: &Write) {
    for ((ty, id), row) in rows {
        let entity = schema.entity(ty).expect("a stored row has a known type");
        assert!(is_safe_int(*id) && *id > 0, "{ty}#{id} has an invalid id after {write:?}");
        for name in row.fields.keys() {
            assert!(entity.field(name).is_some(), "{ty}#{id} holds unknown field `{name}` after {write:?}");
        }
        for field in &entity.fields {
            let value = row
                .fields
                .get(&field.name)
                .unwrap_or_else(|| panic!("{ty}#{id} lacks `{}` after {write:?}", field.name));
            if let Err(e) = field.check(value) {
                panic!("{ty}#{id} holds an invalid value: {e} after {write:?}");
            }
            if let (Some(target), Some(r)) = (field.target(), value.as_i64()) {
                assert!(
                    rows.contains_key(&(target.to_owned(), r)),
                    "{ty}#{id}.{} names {target}#{r}, which does not exist, after {write:?}",
                    field.name
                );
            }
        }
    }
}
