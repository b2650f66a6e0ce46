//! Two PostgreSQL stores on one database (as two server processes are)
//! committing at once, each naming the rows it expects in the opposite order:
//! the planner locks them in one canonical order, so no commit deadlocks (a
//! deadlock would surface as a conflict after PostgreSQL's `deadlock_timeout`).
//! Runs when `STATECAST_PG_URL` is set, in a schema of its own.

mod common;

use common::{PgTestSchema, note, notes_schema as schema};
use sqlx::Connection as _;
use statecast_core::store::{Store, Transaction};
use statecast_store_sql::SqlStore;
use std::sync::Arc;

const COMMITS_EACH: usize = 40;

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
    let Some(pg) = PgTestSchema::create("lock_order").await else { return };
    let first = Arc::new(SqlStore::open_postgres(&pg.url, schema(), pg.options()).await.expect("open"));
    let second = Arc::new(SqlStore::open_postgres(&pg.url, schema(), pg.options()).await.expect("open"));

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
    pg.drop_schema().await;
}

/// A row a commit only checks is locked shared: another transaction holding
/// it `FOR SHARE` (as a concurrent commit checking it does) doesn't hold the
/// commit up, while one holding it `FOR UPDATE` (a writer of it) does.
#[tokio::test]
async fn a_row_only_checked_is_locked_shared() {
    let Some(mut pg) = PgTestSchema::create("lock_share").await else { return };
    let (url, pg_schema) = (pg.url.clone(), pg.name.clone());
    let store = SqlStore::open_postgres(&url, schema(), pg.options()).await.expect("open");
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
    // The commit is parked on the row lock: its transaction waits for the
    // holder (counted by the holder's pid: other tests run beside this one).
    let holder_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut holder).await.expect("pid");
    let waits = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
         AND query LIKE '%\"Note\" WHERE id = %FOR SHARE%' AND {holder_pid} = ANY(pg_blocking_pids(pid))"
    );
    let mut seen = 0i64;
    for _ in 0..300 {
        seen = sqlx::query_scalar(sqlx::AssertSqlSafe(waits.clone())).fetch_one(&mut pg.admin).await.expect("activity");
        if seen > 0 || waiting.is_finished() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 1, "the checking commit waits for the row's writer");
    sqlx::query("ROLLBACK").execute(&mut holder).await.expect("rollback");
    waiting.await.expect("join").expect("the commit goes through once the writer is gone");

    Arc::into_inner(store).expect("sole owner").close().await.expect("close");
    pg.drop_schema().await;
}
