//! Group commit, the fatal flush, seq reservation, log trimming and close,
//! for any backend. Each case runs on its own runtime.

use crate::{KvBackend, KvOp, KvOptions, KvStore, keys};
use statecast_core::store::{AppliedKey, CommitError, LogRead, NewId, Store, StoreError, Transaction, TxOp};
use statecast_core::testkit::store_suite::test_schema;
use std::future::Future;
use std::sync::Arc;

fn block_on(case: impl Future<Output = ()>) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(case);
}

fn new_user(name: &str) -> Transaction {
    let fields = serde_json::json!({ "name": name }).as_object().cloned().expect("object");
    Transaction { ops: vec![TxOp::Insert { ty: "User".into(), id: NewId::Auto, fields }], ..Transaction::default() }
}

fn open<B: KvBackend>(dir: &tempfile::TempDir, options: KvOptions) -> KvStore<B> {
    KvStore::open_with(dir.path().join("db"), test_schema(), options).expect("open")
}

pub fn concurrent_commits_share_flushes<B: KvBackend>() {
    block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(open::<B>(&dir, KvOptions::default()));
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
    });
}

pub fn a_failed_flush_is_fatal<B: KvBackend>() {
    block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open::<B>(&dir, KvOptions::default());
        let c = store.commit(new_user("a")).await.expect("commit");
        store.wait_durable(c.seq).await.expect("durable");
        store.inject_flush_failure();
        let c2 = store.commit(new_user("b")).await.expect("applied in memory");
        assert!(matches!(store.wait_durable(c2.seq).await, Err(StoreError::FlushFailed { .. })));
        assert!(store.durable_seq() < c2.seq);
        // From then on: waits fail, even for seqs that were durable, and commits are refused.
        assert!(matches!(store.wait_durable(c.seq).await, Err(StoreError::FlushFailed { .. })));
        let r = store.commit(new_user("c")).await;
        assert!(matches!(r, Err(CommitError::Store(StoreError::FlushFailed { .. }))), "{r:?}");
        assert_eq!(store.last_seq(), c2.seq);
        assert!(matches!(store.purge_applied(u64::MAX).await, Err(StoreError::FlushFailed { .. })));
        assert!(matches!(store.close().await, Err(StoreError::FlushFailed { .. })));
    });
}

pub fn seq_continues_above_the_reservation_after_reopen<B: KvBackend>() {
    block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = KvOptions { seq_block: 4, ..KvOptions::default() };
        let store = open::<B>(&dir, options.clone());
        let mut last = 0;
        // Blocks of 4 reserved at seq 1 (through 5) and 6 (through 10): stop inside the second.
        for i in 0..9 {
            let c = store.commit(new_user(&format!("u{i}"))).await.expect("commit");
            assert!(c.seq > last);
            last = c.seq;
        }
        store.close().await.expect("close");
        drop(store);
        let store = open::<B>(&dir, options);
        assert_eq!(store.last_seq(), last, "last_seq reports the last commit");
        let c = store.commit(new_user("after")).await.expect("commit");
        // Numbers up to the reservation may have been handed out before a crash.
        assert!(c.seq > last + 1, "seq {} must skip the rest of the reserved block after {last}", c.seq);
        assert_eq!(store.get("User", 10).await.expect("get").map(|r| r.version), Some(c.seq));
        store.close().await.expect("close");
    });
}

pub fn the_change_log_is_trimmed_to_its_capacity<B: KvBackend>() {
    block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = KvOptions { log_capacity: 5, ..KvOptions::default() };
        let store = open::<B>(&dir, options.clone());
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
        let store = open::<B>(&dir, options);
        assert_eq!(store.changes_since(last - 6, 100).await.expect("log"), LogRead::Trimmed);
        assert_eq!(store.changes_since(last - 5, 100).await.expect("log"), LogRead::Entries(entries));
        store.close().await.expect("close");
    });
}

pub fn a_smaller_log_capacity_trims_the_backlog_at_the_next_commit<B: KvBackend>() {
    block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        // Small seq blocks: the seq after the reopen stays close to the last one.
        let options = KvOptions { seq_block: 2, ..KvOptions::default() };
        let store = open::<B>(&dir, options.clone());
        let mut seqs = Vec::new();
        for i in 0..100 {
            seqs.push(store.commit(new_user(&format!("u{i}"))).await.expect("commit").seq);
        }
        store.close().await.expect("close");
        drop(store);
        // 100 entries kept, 5 wanted now: more than a commit deletes by key.
        let options = KvOptions { log_capacity: 5, ..options };
        let store = open::<B>(&dir, options.clone());
        let LogRead::Entries(all) = store.changes_since(0, 1_000).await.expect("log") else {
            panic!("nothing trimmed before the next commit")
        };
        assert_eq!(all.len(), 100);
        let last = store.commit(new_user("trims")).await.expect("commit").seq;
        assert_eq!(store.changes_since(last - 6, 100).await.expect("log"), LogRead::Trimmed);
        let LogRead::Entries(kept) = store.changes_since(last - 5, 1_000).await.expect("log") else {
            panic!("the last 5 commits are kept")
        };
        // The log keeps the commits whose seq is within 5 of the last.
        let mut expected: Vec<u64> = seqs.iter().copied().filter(|s| *s > last - 5).collect();
        assert!(!expected.is_empty(), "the test should keep some of the old entries (last {last})");
        expected.push(last);
        assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), expected);
        // Nothing older is left behind the trim point, even after a reopen.
        store.close().await.expect("close");
        drop(store);
        let store = open::<B>(&dir, options);
        let LogRead::Entries(after) = store.changes_since(last - 5, 1_000).await.expect("log") else {
            panic!("kept across reopen")
        };
        assert_eq!(after, kept);
        store.close().await.expect("close");
    });
}

/// An engine may recover part of a batch that an I/O error interrupted (sled
/// after a full disk kept a commit's applied record and lost its row and log
/// entry). Such a record is not reported as applied: the write's resend runs.
pub fn the_applied_record_of_a_torn_commit_is_not_reported<B: KvBackend>() {
    block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = |write_id| AppliedKey { user: 7, client_id: "tab".into(), write_id };
        let with_key = |name: &str, write_id| Transaction { applied: Some(key(write_id)), ..new_user(name) };
        let store = open::<B>(&dir, KvOptions::default());
        let kept = store.commit(with_key("kept", 1)).await.expect("commit");
        let torn = store.commit(with_key("torn", 2)).await.expect("commit");
        let torn_id = torn.created[0].id;
        store.close().await.expect("close");
        drop(store);
        {
            // What the engine recovered: the applied record, without the row or the log entry.
            let kv = B::open(&dir.path().join("db")).map_err(|e| format!("{e:?}")).expect("open the engine");
            kv.apply(vec![KvOp::Delete(keys::log(torn.seq)), KvOp::Delete(keys::row("User", torn_id))]).expect("tear");
            kv.sync().expect("sync");
        }
        let store = open::<B>(&dir, KvOptions::default());
        assert_eq!(store.applied(&key(1)).await.expect("applied").map(|r| r.seq), Some(kept.seq));
        assert_eq!(store.applied(&key(2)).await.expect("applied"), None, "the torn commit is not applied");
        let resent = store.commit(with_key("torn", 2)).await.expect("the resend commits");
        assert!(resent.seq > torn.seq);
        assert_eq!(store.applied(&key(2)).await.expect("applied").map(|r| r.seq), Some(resent.seq));
        assert!(store.get("User", resent.created[0].id).await.expect("get").is_some());
        store.close().await.expect("close");
    });
}

pub fn a_closed_store_refuses_commits<B: KvBackend>() {
    block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open::<B>(&dir, KvOptions::default());
        let c = store.commit(new_user("a")).await.expect("commit");
        store.close().await.expect("close");
        assert!(store.durable_seq() >= c.seq, "close flushes");
        let r = store.commit(new_user("b")).await;
        assert!(matches!(r, Err(CommitError::Store(StoreError::Unavailable { .. }))), "{r:?}");
    });
}

pub fn open_needs_a_tokio_runtime<B: KvBackend>() {
    let dir = tempfile::tempdir().expect("temp dir");
    let r = KvStore::<B>::open(dir.path().join("db"), test_schema());
    assert!(matches!(r, Err(StoreError::Unavailable { .. })));
}
