//! Group commit, the fatal flush, seq reservation, log trimming and close.

use statecast_core::store::{CommitError, LogRead, NewId, Store, StoreError, Transaction, TxOp};
use statecast_core::testkit::store_suite::test_schema;
use statecast_store_sled::{SledOptions, SledStore};
use std::sync::Arc;

fn new_user(name: &str) -> Transaction {
    let fields = serde_json::json!({ "name": name }).as_object().cloned().expect("object");
    Transaction { ops: vec![TxOp::Insert { ty: "User".into(), id: NewId::Auto, fields }], ..Transaction::default() }
}

fn open(dir: &tempfile::TempDir, options: SledOptions) -> SledStore {
    SledStore::open_with(dir.path().join("db"), test_schema(), options).expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_share_flushes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(open(&dir, SledOptions::default()));
    let first = store.commit(new_user("warm-up")).await.expect("commit");
    store.wait_durable(first.seq).await.expect("durable");
    let before = store.flush_count();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let c = store.commit(new_user(&format!("u{i}"))).await.expect("commit");
            store.wait_durable(c.seq).await.expect("durable");
            c.seq
        }));
    }
    let mut max = 0;
    for t in tasks {
        max = max.max(t.await.expect("task"));
    }
    let flushes = store.flush_count() - before;
    assert!(flushes >= 1);
    assert!(flushes < 64, "64 concurrent commits took {flushes} flushes: no group commit");
    assert!(store.durable_seq() >= max);
    store.close().await.expect("close");
}

#[tokio::test]
async fn a_failed_flush_is_fatal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir, SledOptions::default());
    let c = store.commit(new_user("a")).await.expect("commit");
    store.wait_durable(c.seq).await.expect("durable");
    store.inject_flush_failure();
    let c2 = store.commit(new_user("b")).await.expect("applied in memory");
    assert!(matches!(store.wait_durable(c2.seq).await, Err(StoreError::FlushFailed(_))));
    assert!(store.durable_seq() < c2.seq);
    // From then on: waits fail, even for seqs that were durable, and commits are refused.
    assert!(matches!(store.wait_durable(c.seq).await, Err(StoreError::FlushFailed(_))));
    let r = store.commit(new_user("c")).await;
    assert!(matches!(r, Err(CommitError::Store(StoreError::FlushFailed(_)))), "{r:?}");
    assert_eq!(store.last_seq(), c2.seq);
    assert!(matches!(store.purge_applied(u64::MAX).await, Err(StoreError::FlushFailed(_))));
    assert!(matches!(store.close().await, Err(StoreError::FlushFailed(_))));
}

#[tokio::test]
async fn seq_continues_above_the_reservation_after_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = SledOptions { seq_block: 4, ..SledOptions::default() };
    let store = open(&dir, options.clone());
    let mut last = 0;
    // Blocks of 4 reserved at seq 1 (through 5) and 6 (through 10): stop inside the second.
    for i in 0..9 {
        let c = store.commit(new_user(&format!("u{i}"))).await.expect("commit");
        assert!(c.seq > last);
        last = c.seq;
    }
    store.close().await.expect("close");
    drop(store);
    let store = open(&dir, options);
    assert_eq!(store.last_seq(), last, "last_seq reports the last commit");
    let c = store.commit(new_user("after")).await.expect("commit");
    // Numbers up to the reservation may have been handed out before a crash.
    assert!(c.seq > last + 1, "seq {} must skip the rest of the reserved block after {last}", c.seq);
    assert_eq!(store.get("User", 10).await.expect("get").map(|r| r.version), Some(c.seq));
    store.close().await.expect("close");
}

#[tokio::test]
async fn the_change_log_is_trimmed_to_its_capacity() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = SledOptions { log_capacity: 5, ..SledOptions::default() };
    let store = open(&dir, options.clone());
    let start = store.last_seq();
    let mut seqs = Vec::new();
    for i in 0..12 {
        seqs.push(store.commit(new_user(&format!("u{i}"))).await.expect("commit").seq);
    }
    let last = *seqs.last().expect("seqs");
    assert_eq!(store.changes_since(start, 100).await.expect("log"), LogRead::Trimmed);
    assert_eq!(store.changes_since(last - 6, 100).await.expect("log"), LogRead::Trimmed);
    let LogRead::Entries(entries) = store.changes_since(last - 5, 100).await.expect("log") else {
        panic!("the last 5 commits are kept")
    };
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), seqs[7..].to_vec());
    store.close().await.expect("close");
    drop(store);
    let store = open(&dir, options);
    assert_eq!(store.changes_since(last - 6, 100).await.expect("log"), LogRead::Trimmed);
    assert_eq!(store.changes_since(last - 5, 100).await.expect("log"), LogRead::Entries(entries));
    store.close().await.expect("close");
}

#[tokio::test]
async fn a_closed_store_refuses_commits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir, SledOptions::default());
    let c = store.commit(new_user("a")).await.expect("commit");
    store.close().await.expect("close");
    assert!(store.durable_seq() >= c.seq, "close flushes");
    let r = store.commit(new_user("b")).await;
    assert!(matches!(r, Err(CommitError::Store(StoreError::Unavailable(_)))), "{r:?}");
}

#[test]
fn open_needs_a_tokio_runtime() {
    let dir = tempfile::tempdir().expect("temp dir");
    let r = SledStore::open(dir.path().join("db"), test_schema());
    assert!(matches!(r, Err(StoreError::Unavailable(_))));
}
