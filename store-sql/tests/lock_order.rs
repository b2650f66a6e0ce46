//! Two PostgreSQL stores on one database (as two server processes are)
//! committing at once, each naming the rows it expects in the opposite order:
//! the planner locks them in one canonical order, so no commit deadlocks (a
//! deadlock would surface as a conflict after PostgreSQL's `deadlock_timeout`).
//! Runs when `STATECAST_PG_URL` is set, in a schema of its own.

use sqlx::Connection as _;
use statecast_core::Schema;
use statecast_core::store::{NewId, Store, Transaction, TxOp};
use statecast_store_sql::{SqlOptions, SqlStore};
use std::sync::Arc;

const COMMITS_EACH: usize = 40;

fn schema() -> Arc<Schema> {
    Schema::builder()
        .entity("Note", |t| {
            t.string("text");
        })
        .build()
        .expect("schema")
}

fn note(text: &str) -> Transaction {
    let fields = serde_json::json!({ "text": text }).as_object().cloned().expect("object");
    Transaction { ops: vec![TxOp::Insert { ty: "Note".into(), id: NewId::Auto, fields }], ..Default::default() }
}

/// Inserts notes, each commit expecting `expect` (rows it reads but leaves alone).
async fn insert_expecting(store: Arc<SqlStore>, name: &'static str, expect: Vec<(Arc<str>, i64, u64)>) -> Vec<String> {
    let mut refused = Vec::new();
    for i in 0..COMMITS_EACH {
        let tx = Transaction { expect: expect.clone(), ..note(&format!("{name} {i}")) };
        if let Err(e) = store.commit(tx).await {
            refused.push(format!("{name} #{i}: {e}"));
        }
    }
    refused
}

#[tokio::test]
async fn commits_naming_rows_in_opposite_orders_never_deadlock() {
    let Some(url) = std::env::var("STATECAST_PG_URL").ok().filter(|u| !u.is_empty()) else {
        eprintln!("STATECAST_PG_URL is not set: skipped");
        return;
    };
    let pg_schema = format!("lock_order_{}", std::process::id());
    let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
    let drop = format!("DROP SCHEMA IF EXISTS \"{pg_schema}\" CASCADE");
    sqlx::query(sqlx::AssertSqlSafe(drop.clone())).execute(&mut c).await.expect("drop a stale schema");
    let options = SqlOptions { pg_schema: Some(pg_schema.clone()), ..SqlOptions::default() };
    let first = Arc::new(SqlStore::open_postgres(&url, schema(), options.clone()).await.expect("open"));
    let second = Arc::new(SqlStore::open_postgres(&url, schema(), options).await.expect("open"));

    let a = first.commit(note("a")).await.expect("commit a");
    let b = first.commit(note("b")).await.expect("commit b");
    let (a_id, b_id) = (a.created[0].id, b.created[0].id);
    let forward: Vec<(Arc<str>, i64, u64)> = vec![("Note".into(), a_id, a.seq), ("Note".into(), b_id, b.seq)];
    let backward: Vec<_> = forward.iter().rev().cloned().collect();

    let x = tokio::spawn(insert_expecting(first.clone(), "first", forward));
    let y = tokio::spawn(insert_expecting(second.clone(), "second", backward));
    let refused: Vec<String> = [x.await.expect("first"), y.await.expect("second")].concat();
    assert!(refused.is_empty(), "commits refused (a deadlock shows as a conflict): {refused:#?}");

    let notes = first.changes_since(b.seq, 1000).await.expect("log");
    match notes {
        statecast_core::store::LogRead::Entries(entries) => {
            assert_eq!(entries.len(), 2 * COMMITS_EACH, "every commit is in the log once")
        }
        other => panic!("expected log entries, got {other:?}"),
    }
    for store in [first, second] {
        Arc::into_inner(store).expect("sole owner").close().await.expect("close");
    }
    sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut c).await.expect("drop schema");
}

/// A row a commit only checks is locked shared: another transaction holding
/// it `FOR SHARE` (as a concurrent commit checking it does) doesn't hold the
/// commit up, while one holding it `FOR UPDATE` (a writer of it) does.
#[tokio::test]
async fn a_row_only_checked_is_locked_shared() {
    let Some(url) = std::env::var("STATECAST_PG_URL").ok().filter(|u| !u.is_empty()) else {
        eprintln!("STATECAST_PG_URL is not set: skipped");
        return;
    };
    let pg_schema = format!("lock_share_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("connect");
    let drop = format!("DROP SCHEMA IF EXISTS \"{pg_schema}\" CASCADE");
    sqlx::query(sqlx::AssertSqlSafe(drop.clone())).execute(&mut admin).await.expect("drop a stale schema");
    let options = SqlOptions { pg_schema: Some(pg_schema.clone()), ..SqlOptions::default() };
    let store = SqlStore::open_postgres(&url, schema(), options).await.expect("open");
    let anchor = store.commit(note("anchor")).await.expect("commit");
    let (id, version) = (anchor.created[0].id, anchor.seq);
    let checking = move |text: &str| Transaction { expect: vec![("Note".into(), id, version)], ..note(text) };

    let mut holder = sqlx::PgConnection::connect(&url).await.expect("connect");
    let hold = |mode: &str| format!("SELECT id FROM \"{pg_schema}\".\"Note\" WHERE id = {id} FOR {mode}");
    sqlx::query("BEGIN").execute(&mut holder).await.expect("begin");
    sqlx::query(sqlx::AssertSqlSafe(hold("SHARE"))).execute(&mut holder).await.expect("lock shared");
    // Bounded only so a regression fails instead of hanging: it is not a timing check.
    let done = tokio::time::timeout(std::time::Duration::from_secs(30), store.commit(checking("beside a share")))
        .await
        .expect("a commit checking a row another transaction holds FOR SHARE must not wait for it");
    done.expect("commit");
    sqlx::query("ROLLBACK").execute(&mut holder).await.expect("rollback");

    sqlx::query("BEGIN").execute(&mut holder).await.expect("begin");
    sqlx::query(sqlx::AssertSqlSafe(hold("UPDATE"))).execute(&mut holder).await.expect("lock for update");
    let store = Arc::new(store);
    let waiting = tokio::spawn({
        let (store, tx) = (store.clone(), checking("after the writer"));
        async move { store.commit(tx).await.map(|c| c.seq) }
    });
    // The commit is parked on the row lock: its transaction shows as waiting for a lock.
    let waits = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND query LIKE '%\"Note\" WHERE id = %FOR SHARE%' AND datname = current_database()";
    let mut seen = 0i64;
    for _ in 0..300 {
        seen = sqlx::query_scalar(waits).fetch_one(&mut admin).await.expect("activity");
        if seen > 0 || waiting.is_finished() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 1, "the checking commit waits for the row's writer");
    sqlx::query("ROLLBACK").execute(&mut holder).await.expect("rollback");
    waiting.await.expect("join").expect("the commit goes through once the writer is gone");

    Arc::into_inner(store).expect("sole owner").close().await.expect("close");
    sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut admin).await.expect("drop schema");
}
