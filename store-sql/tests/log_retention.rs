//! The change log is trimmed by count and by age, on SQLite always and on
//! PostgreSQL when `STATECAST_PG_URL` is set (in a schema of its own, dropped
//! afterwards). Commit times are set on the transactions, so no test sleeps.

mod common;

use common::{PgTestSchema, notes_schema as schema};
use statecast_core::store::{LogRead, Store, Transaction};
use statecast_store_sql::{SqlOptions, SqlStore};
use std::time::Duration;

const AGE: Duration = Duration::from_secs(60);
/// A commit time: minutes since an arbitrary start, in ms since the epoch.
fn at(minutes: u64) -> u64 {
    1_800_000_000_000 + minutes * 60_000
}

/// A note committed at `now_ms`.
fn note(text: &str, now_ms: u64) -> Transaction {
    Transaction { now_ms, ..common::note(text) }
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
    let Some(pg) = PgTestSchema::create("log_retention").await else { return };
    let options = SqlOptions { log_max_age: Some(AGE), ..pg.options() };
    let store = SqlStore::open_postgres(&pg.url, schema(), options).await.expect("open");
    trims_by_age(&store).await;
    store.close().await.expect("close");
    pg.drop_schema().await;
}
