//! SQLite-specific behaviour: ordinary tables a person can read, migrations
//! that add types and fields or refuse unsafe changes, and group commit.

use serde_json::json;
use sqlx::{Connection as _, Row as _};
use statecast_core::Schema;
use statecast_core::schema::OnDelete;
use statecast_core::store::{NewId, Store, Transaction, TxOp};
use statecast_store_sql::{MigrationError, SqlError, SqlOptions, SqlStore};
use std::path::Path;
use std::sync::Arc;

fn v1() -> Arc<Schema> {
    Schema::builder()
        .entity("Job", |t| {
            t.string("name");
        })
        .entity("Task", |t| {
            t.reference("job", "Job").on_delete(OnDelete::Cascade);
            t.string("name");
            t.bool("done").default(false);
            t.float("hours").nullable();
            t.json("meta").nullable();
            t.timestamp("due").nullable();
        })
        .build()
        .expect("schema")
}

fn insert(ty: &str, fields: serde_json::Value) -> Transaction {
    let fields = fields.as_object().cloned().expect("object");
    Transaction { ops: vec![TxOp::Insert { ty: ty.into(), id: NewId::Auto, fields }], ..Default::default() }
}

async fn open(path: &Path, schema: Arc<Schema>) -> Result<SqlStore, SqlError> {
    SqlStore::open_sqlite(path, schema, SqlOptions::default()).await
}

#[tokio::test]
async fn rows_are_ordinary_typed_rows_in_a_table_per_type() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("s.db");
    let store = open(&path, v1()).await.expect("open");
    store.commit(insert("Job", json!({"name": "Launch"}))).await.expect("commit");
    let due = "2026-11-23T16:00:00.120Z";
    let c = store
        .commit(insert(
            "Task",
            json!({"job": 1, "name": "O'Brien \"quoted\"", "done": true, "hours": 1.5, "meta": {"k": [1, 2]}, "due": due}),
        ))
        .await
        .expect("commit");
    store.wait_durable(c.seq).await.expect("durable");
    let row = store.get("Task", 1).await.expect("get").expect("row");
    assert_eq!(row.get("due"), &json!(due), "timestamps come back byte for byte");
    assert_eq!(row.get("meta"), &json!({"k": [1, 2]}));

    let url = format!("sqlite://{}", path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("connect");
    let r = sqlx::query("SELECT id, _version, job, name, done, hours, meta, due FROM \"Task\"")
        .fetch_one(&mut conn)
        .await
        .expect("select");
    assert_eq!(r.get::<i64, _>("id"), 1);
    assert_eq!(r.get::<i64, _>("_version"), c.seq as i64);
    assert_eq!(r.get::<i64, _>("job"), 1);
    assert_eq!(r.get::<String, _>("name"), "O'Brien \"quoted\"");
    assert!(r.get::<bool, _>("done"));
    assert_eq!(r.get::<f64, _>("hours"), 1.5);
    assert_eq!(r.get::<String, _>("meta"), r#"{"k":[1,2]}"#);
    assert_eq!(r.get::<String, _>("due"), due);
    // The declared foreign key is a real one.
    let fk = sqlx::query("SELECT \"table\", on_delete FROM pragma_foreign_key_list('Task')")
        .fetch_one(&mut conn)
        .await
        .expect("fk");
    assert_eq!((fk.get::<String, _>(0), fk.get::<String, _>(1)), ("Job".to_owned(), "CASCADE".to_owned()));
    conn.close().await.expect("close");
    store.close().await.expect("close");
}

#[tokio::test]
async fn migrations_add_types_and_fields_and_refuse_unsafe_changes() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("m.db");
    let store = open(&path, v1()).await.expect("open");
    store.commit(insert("Job", json!({"name": "Launch"}))).await.expect("commit");
    store.close().await.expect("close");
    drop(store);

    // A new type, a new nullable field and a new field with a default: applied.
    let v2 = Schema::builder()
        .entity("Job", |t| {
            t.string("name");
            t.string("owner").nullable();
            t.int("priority").default(3);
        })
        .entity("Task", |t| {
            t.reference("job", "Job").on_delete(OnDelete::Cascade);
            t.string("name");
            t.bool("done").default(false);
            t.float("hours").nullable();
            t.json("meta").nullable();
            t.timestamp("due").nullable();
        })
        .entity("Note", |t| {
            t.string("text");
        })
        .build()
        .expect("schema");
    let store = open(&path, v2).await.expect("the additive migration applies");
    let job = store.get("Job", 1).await.expect("get").expect("row");
    assert_eq!((job.get("owner"), job.get("priority")), (&json!(null), &json!(3)));
    store.commit(insert("Note", json!({"text": "new table"}))).await.expect("commit");
    store.close().await.expect("close");
    drop(store);

    let changed_type = Schema::builder()
        .entity("Job", |t| {
            t.int("name");
        })
        .build()
        .expect("schema");
    match open(&path, changed_type).await {
        Err(SqlError::Migration(MigrationError::TypeChanged { ty, field, .. })) => {
            assert_eq!((ty.as_str(), field.as_str()), ("Job", "name"));
        }
        other => panic!("a changed type must be refused, got {:?}", other.err()),
    }
    let required = Schema::builder()
        .entity("Job", |t| {
            t.string("name");
            t.string("owner").nullable();
            t.int("priority").default(3);
            t.string("code");
        })
        .build()
        .expect("schema");
    let err = open(&path, required).await.err().expect("a new required field without default is refused");
    assert!(err.to_string().contains("Job.code"), "{err}");
    // Nothing was changed by the refused migrations.
    let store = open(&path, v1()).await.expect("the original schema still opens");
    assert_eq!(store.get("Job", 1).await.expect("get").expect("row").get("name"), &json!("Launch"));
}

#[tokio::test]
async fn concurrent_commits_share_wal_fsyncs() {
    let dir = tempfile::tempdir().expect("dir");
    // With no delay the sharing depends on timing (an fsync faster than a
    // commit covers one commit); a delay much longer than 64 commits take
    // makes it certain short of a stall of seconds.
    let options = SqlOptions { flush_delay: std::time::Duration::from_millis(50), ..SqlOptions::default() };
    let store = Arc::new(SqlStore::open_sqlite(dir.path().join("g.db"), v1(), options).await.expect("open"));
    let before = store.flush_count();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let c = s.commit(insert("Job", json!({"name": format!("j{i}")}))).await.expect("commit");
            s.wait_durable(c.seq).await.expect("durable");
            c.seq
        }));
    }
    let mut last = 0;
    for t in tasks {
        last = last.max(t.await.expect("task"));
    }
    assert!(store.durable_seq() >= last);
    let flushes = store.flush_count() - before;
    assert!(flushes < 32, "64 commits took {flushes} fsyncs: group commit must share them");
}
