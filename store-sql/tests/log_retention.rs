//! The change log is trimmed by count and by age, on SQLite always and on
//! PostgreSQL when `STATECAST_PG_URL` is set (in a schema of its own, dropped
//! afterwards). Commit times are set on the transactions, so no test sleeps.

use statecast_core::Schema;
use statecast_core::store::{LogRead, NewId, Store, Transaction, TxOp};
use statecast_store_sql::{SqlOptions, SqlStore};
use std::sync::Arc;
use std::time::Duration;

const AGE: Duration = Duration::from_secs(60);
/// A commit time: minutes since an arbitrary start, in ms since the epoch.
fn at(minutes: u64) -> u64 {
    1_800_000_000_000 + minutes * 60_000
}

fn schema() -> Arc<Schema> {
    Schema::builder()
        .entity("Note", |t| {
            t.string("text");
        })
        .build()
        .expect("schema")
}

fn note(text: &str, now_ms: u64) -> Transaction {
    let fields = serde_json::json!({ "text": text }).as_object().cloned().expect("object");
    Transaction { ops: vec![TxOp::Insert { ty: "Note".into(), id: NewId::Auto, fields }], now_ms, ..Default::default() }
}

fn seqs(read: LogRead) -> Vec<u64> {
    match read {
        LogRead::Entries(entries) => entries.iter().map(|e| e.seq).collect(),
        other => panic!("expected entries, got {other:?}"),
    }
}

/// Five commits at minute 0, then three at minute 2: the first five are now
/// older than the 60 s limit and leave the log.
async fn trims_by_age(store: &SqlStore) {
    let start = store.last_seq();
    let mut old = Vec::new();
    for i in 0..5 {
        old.push(store.commit(note(&format!("old {i}"), at(0))).await.expect("commit").seq);
    }
    assert_eq!(seqs(store.changes_since(start, 100).await.expect("log")), old, "young entries stay");

    let mut new = Vec::new();
    for i in 0..3 {
        new.push(store.commit(note(&format!("new {i}"), at(2))).await.expect("commit").seq);
    }
    assert_eq!(store.changes_since(start, 100).await.expect("log"), LogRead::Trimmed, "old entries are gone");
    let last_old = *old.last().expect("old");
    assert_eq!(
        seqs(store.changes_since(last_old, 100).await.expect("log")),
        new,
        "entries younger than the limit stay"
    );
    // The rows themselves stay: only the log is trimmed.
    assert_eq!(store.get("Note", 1).await.expect("get").map(|r| r.get("text").clone()), Some("old 0".into()));
}

#[tokio::test]
async fn sqlite_trims_the_log_by_age() {
    let dir = tempfile::tempdir().expect("dir");
    let options = SqlOptions { log_max_age: Some(AGE), ..SqlOptions::default() };
    let store = SqlStore::open_sqlite(dir.path().join("s.db"), schema(), options).await.expect("open");
    trims_by_age(&store).await;
    store.close().await.expect("close");
}

#[tokio::test]
async fn sqlite_trims_by_count_when_no_age_is_set() {
    let dir = tempfile::tempdir().expect("dir");
    let options = SqlOptions { log_capacity: 3, ..SqlOptions::default() };
    let store = SqlStore::open_sqlite(dir.path().join("s.db"), schema(), options).await.expect("open");
    let start = store.last_seq();
    let mut all = Vec::new();
    for i in 0..6 {
        // Years apart: without `log_max_age`, age never trims.
        all.push(store.commit(note(&format!("n{i}"), at(i * 600_000))).await.expect("commit").seq);
    }
    assert_eq!(store.changes_since(start, 100).await.expect("log"), LogRead::Trimmed);
    assert_eq!(seqs(store.changes_since(all[2], 100).await.expect("log")), all[3..].to_vec(), "the last 3 stay");
    store.close().await.expect("close");
}

#[tokio::test]
async fn postgres_trims_the_log_by_age() {
    let Some(url) = std::env::var("STATECAST_PG_URL").ok().filter(|u| !u.is_empty()) else {
        eprintln!("STATECAST_PG_URL is not set: skipped");
        return;
    };
    let pg_schema = format!("log_retention_{}", std::process::id());
    let options = SqlOptions { log_max_age: Some(AGE), pg_schema: Some(pg_schema.clone()), ..SqlOptions::default() };
    use sqlx::Connection as _;
    let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
    let drop = format!("DROP SCHEMA IF EXISTS \"{pg_schema}\" CASCADE");
    sqlx::query(sqlx::AssertSqlSafe(drop.clone())).execute(&mut c).await.expect("drop a stale schema");
    let store = SqlStore::open_postgres(&url, schema(), options).await.expect("open");
    trims_by_age(&store).await;
    store.close().await.expect("close");
    sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut c).await.expect("drop schema");
}
