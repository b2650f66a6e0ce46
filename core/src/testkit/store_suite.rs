//! The store conformance suite: one list of cases that every [`Store`] must
//! pass. A store crate expands it with [`store_conformance_tests!`](crate::store_conformance_tests).
//!
//! ```ignore
//! statecast_core::store_conformance_tests!(MyFactory::new());
//! ```
//!
//! Each case gets a fresh [`StoreFactory`] that stands for one store location:
//! `open` opens it (empty the first time). Cases that need persistence are
//! skipped (with a `tracing` note) when the factory says the store does not persist.

use crate::ids::{Id, MINTED_ID_MIN, Seq};
use crate::row::{Fields, Row, RowKey};
use crate::schema::{OnDelete, Schema};
use crate::store::{
    AppliedKey, AppliedRecord, Change, CommitError, Committed, LogEntry, LogRead, MemoryStore, NewId, Store,
    Transaction, TxOp,
};
use async_trait::async_trait;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

/// Opens the store under test. One factory stands for one store location.
#[async_trait]
pub trait StoreFactory: Send + Sync + 'static {
    /// Opens the store (empty on the first call; on later calls, after the
    /// previous store was closed and dropped, the same data if it persists).
    async fn open(&self, schema: Arc<Schema>) -> Arc<dyn Store>;
    /// True when data survives `close` and a new `open`.
    fn persistent(&self) -> bool;
}

/// The factory for [`MemoryStore`] (which does not persist).
#[derive(Debug, Default)]
pub struct MemoryFactory;

#[async_trait]
impl StoreFactory for MemoryFactory {
    async fn open(&self, schema: Arc<Schema>) -> Arc<dyn Store> {
        Arc::new(MemoryStore::new(schema))
    }
    fn persistent(&self) -> bool {
        false
    }
}

/// Runs one case on a fresh multi-threaded runtime (used by the macro).
pub fn run<F, C, Fut>(make_factory: impl FnOnce() -> F, case: C)
where
    F: StoreFactory,
    C: FnOnce(Arc<dyn StoreFactory>) -> Fut,
    Fut: Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("test runtime");
    rt.block_on(async move {
        let factory: Arc<dyn StoreFactory> = Arc::new(make_factory());
        case(factory).await;
    });
}

/// Expands one `#[test]` per conformance case, given an expression that makes a
/// fresh [`StoreFactory`] (evaluated once per case, inside the test runtime).
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:expr) => {
        $crate::store_conformance_tests!(@cases $factory;
            insert_auto_ids_grow_from_one_per_type,
            temp_ids_resolve_in_later_ops_and_references,
            given_ids_conflict_and_bump_the_counter,
            update_merges_fields_and_bumps_version,
            update_that_changes_nothing_has_no_change,
            expected_version_mismatch_commits_nothing,
            expected_absences_and_reference_sets_are_checked_at_commit,
            missing_rows_and_invalid_transactions_commit_nothing,
            cascade_delete_lists_every_row_with_before_images,
            restrict_refuses_the_delete_and_deletes_nothing,
            set_null_reference_becomes_an_update,
            children_of_several_parents_in_creation_order,
            children_of_interleaved_and_sparse_ids,
            scan_pages_through_a_type_in_id_order,
            applied_record_is_stored_and_duplicates_refused,
            purge_applied_marks_purged_write_ids,
            exactly_once_records_follow_a_model,
            moved_subtrees_read_as_of_their_commit,
            seq_strictly_increases,
            concurrent_commits_get_distinct_seqs,
            durable_watermark_reaches_last_seq,
            change_log_returns_entries_in_order_with_full_rows,
            is_empty_follows_the_rows,
            epoch_is_stable_across_reopen,
            everything_persists_across_reopen,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::testkit::store_suite::run(|| $factory, $crate::testkit::store_suite::$case);
            }
        )*
    };
}

// ---------------------------------------------------------------- helpers

/// The suite's schema: `User`; `Job` (with `lead` → User, set null);
/// `Task` (`job` → Job, cascade; `owner` → User, restrict; `reviewer` → User,
/// set null; an order field `position`); `Comment` (`task` → Task, cascade).
pub fn test_schema() -> Arc<Schema> {
    Schema::builder()
        .entity("User", |t| {
            t.string("name");
        })
        .entity("Job", |t| {
            t.string("name");
            t.reference("lead", "User").nullable().on_delete(OnDelete::SetNull);
        })
        .entity("Task", |t| {
            t.reference("job", "Job").on_delete(OnDelete::Cascade);
            t.string("name");
            t.string("status").default("todo");
            t.int("position").default(0);
            t.reference("owner", "User").nullable().on_delete(OnDelete::Restrict);
            t.reference("reviewer", "User").nullable().on_delete(OnDelete::SetNull);
        })
        .entity("Comment", |t| {
            t.reference("task", "Task").on_delete(OnDelete::Cascade);
            t.string("body");
        })
        .relation_ordered("Job", "tasks", "Task", "job", Some("position"))
        .relation("Task", "comments", "Comment", "task")
        .build()
        .expect("the suite's schema is valid")
}

fn obj(v: Value) -> Fields {
    v.as_object().cloned().expect("a JSON object")
}

fn user(name: &str) -> Fields {
    obj(json!({ "name": name }))
}

fn job(name: &str) -> Fields {
    obj(json!({ "name": name, "lead": null }))
}

fn task(job: Id, name: &str) -> Fields {
    obj(json!({ "job": job, "name": name, "status": "todo", "position": 0, "owner": null, "reviewer": null }))
}

fn comment(task: Id, body: &str) -> Fields {
    obj(json!({ "task": task, "body": body }))
}

fn ins(ty: &str, id: NewId, fields: Fields) -> TxOp {
    TxOp::Insert { ty: ty.into(), id, fields }
}

fn upd(ty: &str, id: Id, fields: Value) -> TxOp {
    TxOp::Update { ty: ty.into(), id, fields: obj(fields) }
}

fn del(ty: &str, id: Id) -> TxOp {
    TxOp::Delete { ty: ty.into(), id }
}

fn tx(ops: Vec<TxOp>) -> Transaction {
    Transaction { ops, applied: None, now_ms: crate::store::now_ms(), ..Transaction::default() }
}

async fn open(f: &Arc<dyn StoreFactory>) -> Arc<dyn Store> {
    f.open(test_schema()).await
}

async fn reopen(f: &Arc<dyn StoreFactory>, store: Arc<dyn Store>) -> Arc<dyn Store> {
    store.close().await.expect("close");
    drop(store);
    open(f).await
}

async fn commit(store: &Arc<dyn Store>, ops: Vec<TxOp>) -> Committed {
    store.commit(tx(ops)).await.expect("commit")
}

/// The id of the single row a commit created.
async fn create(store: &Arc<dyn Store>, ty: &str, fields: Fields) -> Id {
    let c = commit(store, vec![ins(ty, NewId::Auto, fields)]).await;
    assert_eq!(c.created.len(), 1);
    c.created[0].id
}

async fn get(store: &Arc<dyn Store>, ty: &str, id: Id) -> Option<Row> {
    store.get(ty, id).await.expect("get")
}

async fn must_get(store: &Arc<dyn Store>, ty: &str, id: Id) -> Row {
    get(store, ty, id).await.unwrap_or_else(|| panic!("{ty}#{id} must exist"))
}

async fn entries(store: &Arc<dyn Store>, after: Seq, limit: usize) -> Vec<LogEntry> {
    match store.changes_since(after, limit).await.expect("changes_since") {
        LogRead::Entries(e) => e,
        LogRead::Trimmed => panic!("the change log must reach back to {after}"),
    }
}

fn keys(changes: &[Change]) -> Vec<(String, Id)> {
    changes.iter().map(|c| (c.key.ty.to_string(), c.key.id)).collect()
}

fn created_ids(c: &Committed) -> Vec<(String, Option<Id>, Id)> {
    c.created.iter().map(|c| (c.ty.clone(), c.temp_id, c.id)).collect()
}

/// Asserts that a failed commit left the store as it was.
async fn assert_unchanged(store: &Arc<dyn Store>, seq: Seq, rows: &[Row]) {
    assert_eq!(store.last_seq(), seq, "a refused commit must not take a seq");
    for row in rows {
        assert_eq!(get(store, &row.ty, row.id).await.as_ref(), Some(row), "a refused commit changed {}", row.key());
    }
}

// ---------------------------------------------------------------- cases

/// Auto ids grow from 1, independently per type; rows carry version = created = seq.
pub async fn insert_auto_ids_grow_from_one_per_type(f: Arc<dyn StoreFactory>) {
    let s = open(&f).await;
    let c = commit(
        &s,
        vec![ins("Job", NewId::Auto, job("a")), ins("Job", NewId::Auto, job("b")), ins("User", NewId::Auto, user("u"))],
    )
    .await;
    assert_eq!(created_ids(&c), vec![("Job".into(), None, 1), ("Job".into(), None, 2), ("User".into(), None, 1)]);
    assert_eq!(keys(&c.changes), vec![("Job".into(), 1), ("Job".into(), 2), ("User".into(), 1)]);
    for ch in &c.changes {
        assert!(ch.before.is_none(), "a create has no before image");
        let after = ch.after.as_ref().expect("a create has an after image");
        assert_eq!((after.version, after.created), (c.seq, c.seq));
        assert_eq!(get(&s, &ch.key.ty, ch.key.id).await.as_ref(), Some(after));
    }
    assert_eq!(c.changes[1].after.as_ref().map(|r| r.fields.clone()), Some(job("b")));

    let c2 = commit(&s, vec![ins("Job", NewId::Auto, job("c"))]).await;
    assert!(c2.seq > c.seq);
    assert_eq!(created_ids(&c2), vec![("Job".into(), None, 3)]);
    assert_eq!(get(&s, "Job", 99).await, None);
    assert_eq!(get(&s, "Nope", 1).await, None);
    let many = s.get_many("Job", &[3, 99, 1]).await.expect("get_many");
    assert_eq!(many.iter().map(|r| r.id).collect::<Vec<_>>(), vec![3, 1]);
}

/// Temp ids map to assigned ids, usable by later ops and in reference fields.
pub async fn temp_ids_resolve_in_later_ops_and_references(f: Arc<dyn StoreFactory>) {
    let s = open(&f).await;
    let c = commit(
        &s,
        vec![
            ins("Job", NewId::Temp(-1), job("j")),
            ins("Task", NewId::Temp(-2), task(-1, "t")),
            ins("Comment", NewId::Temp(-3), comment(-2, "c")),
            upd("Task", -2, json!({ "status": "doing" })),
        ],
    )
    .await;
    assert_eq!(
        created_ids(&c),
        vec![("Job".into(), Some(-1), 1), ("Task".into(), Some(-2), 1), ("Comment".into(), Some(-3), 1)]
    );
    // The later update folds into the create: one change per row.
    assert_eq!(keys(&c.changes), vec![("Job".into(), 1), ("Task".into(), 1), ("Comment".into(), 1)]);
    let t = must_get(&s, "Task", 1).await;
    assert_eq!(t.get("job"), &json!(1));
    assert_eq!(t.get("status"), &json!("doing"));
    assert_eq!(must_get(&s, "Comment", 1).await.get("task"), &json!(1));
    assert_eq!(c.changes[1].after.as_ref(), Some(&t));

    let seq = s.last_seq();
    let rows = vec![t];
    let bad = [
        vec![ins("Task", NewId::Auto, task(-7, "unknown temp"))],
        vec![upd("Task", -9, json!({ "name": "x" }))],
        vec![ins("Job", NewId::Temp(-1), job("a")), ins("Job", NewId::Temp(-1), job("b"))],
        vec![ins("Job", NewId::Temp(5), job("a temp id must be negative"))],
        vec![ins("Job", NewId::Temp(0), job("a temp id must be negative"))],
    ];
    for ops in bad {
        let r = s.commit(tx(ops.clone())).await;
        assert!(matches!(r, Err(CommitError::Invalid(_))), "{ops:?} must be invalid, got {r:?}");
        assert_unchanged(&s, seq, &rows).await;
    }
    assert_eq!(get(&s, "Job", 2).await, None);
    assert_eq!(get(&s, "Task", 2).await, None);
    // Nothing refused moved the counters.
    assert_eq!(create(&s, "Job", job("next")).await, 2);
}

/// A given id is used verbatim; a taken one is `IdConflict`; small ones bump the counter.
pub async fn given_ids_conflict_and_bump_the_counter(f: Arc<dyn StoreFactory>) {
    let s = open(&f).await;
    let c = commit(&s, vec![ins("Job", NewId::Given(5), job("five"))]).await;
    assert_eq!(created_ids(&c), vec![("Job".into(), None, 5)]);
    assert_eq!(create(&s, "Job", job("after five")).await, 6, "a given small id bumps the counter");

    let minted = MINTED_ID_MIN + 7;
    commit(&s, vec![ins("Job", NewId::Given(minted), job("minted"))]).await;
    assert_eq!(must_get(&s, "Job", minted).await.get("name"), &json!("minted"));
    assert_eq!(create(&s, "Job", job("after minted")).await, 7, "a minted id does not move the counter");
    assert_eq!(create(&s, "User", user("first user")).await, 1, "counters are per type");

    let seq = s.last_seq();
    let rows = vec![must_get(&s, "Job", 5).await, must_get(&s, "Job", minted).await];
    for id in [5, minted] {
        let r = s.commit(tx(vec![ins("Job", NewId::Auto, job("x")), ins("Job", NewId::Given(id), job("dup"))])).await;
        match r {
            Err(CommitError::IdConflict { ty, id: got }) => assert_eq!((ty.as_str(), got), ("Job", id)),
            other => panic!("a taken id must be IdConflict, got {other:?}"),
        }
        assert_unchanged(&s, seq, &rows).await;
    }
    for id in [0, -3] {
        let r = s.commit(tx(vec![ins("Job", NewId::Given(id), job("bad"))])).await;
        assert!(matches!(r, Err(CommitError::Invalid(_))), "given id {id} must be invalid, got {r:?}");
        assert_unchanged(&s, seq, &rows).await;
    }
    assert_eq!(get(&s, "Job", 8).await, None);
    assert_eq!(create(&s, "Job", job("still eight")).await, 8, "refused commits don't move the counter");
}

/// An update merges the given fields into the row and sets version to the commit's seq.
pub async fn update_merges_fields_and_bumps_version(f: Arc<dyn StoreFactory>) {
    let s = open(&f).await;
    let j = create(&s, "Job", job("j")).await;
    let c1 = commit(&s, vec![ins("Task", NewId::Auto, task(j, "t"))]).await;
    let before = must_get(&s, "Task", 1).await;
    let c2 = commit(&s, vec![upd("Task", 1, json!({ "status": "done", "position": 3 }))]).await;
    let after = must_get(&s, "Task", 1).await;
    assert_eq!((after.version, after.created), (c2.seq, c1.seq));
    let mut expected = task(j, "t");
    expected.insert("status".into(), json!("done"));
    expected.insert("position".into(), json!(3));
    assert_eq!(after.fields, expected);
    assert_eq!(c2.changes, vec![Change { key: RowKey::new("Task", 1), before: Some(before), after: Some(after) }]);
    assert!(c2.created.is_empty());
}

/// An update that sets every field to its current value changes nothing.
pub async fn update_that_changes_nothing_has_no_change(f: Arc<dyn StoreFactory>) {
    let s = open(&f).await;
    let j = create(&s, "Job", job("j")).await;
    let row = must_get(&s, "Job", j).await;
    let c = commit(&s, vec![upd("Job", j, json!({ "name": "j" }))]).await;
    assert!(c.changes.is_empty(), "no change expected, got {:?}", c.changes);
    assert!(c.seq > row.version);
    assert_eq!(must_get(&s, "Job", j).await, row, "the version must not move");
}

/// A stale or missing expected row is `Conflict`, and nothing of the transaction is committed.
pub async fn expected_version_mismatch_commits_nothing(f: Arc<dyn StoreFactory>) {
    let s = open(&f).await;
    let c1 = commit(&s, vec![ins("Job", NewId::Auto, job("j"))]).await;
    let c2 = commit(&s, vec![upd("Job", 1, json!({ "name": "j2" }))]).await;
    let row = must_get(&s, "Job", 1).await;
    assert_eq!(row.version, c2.seq);

    for (ty, id, version) in [("Job", 1, c1.seq), ("Job", 99, c1.seq), ("Nope", 1, c1.seq)] {
        let mut t = tx(vec![
            upd("Job", 1, json!({ "name": "lost" })),
            ins("User", NewId::Auto, user("lost")),
            ins("Job", NewId::Auto, job("lost")),
        ]);
        t.expect = vec![(ty.into(), id, version)];
        t.applied = Some(AppliedKey { user: 1, client_id: "c".into(), write_id: 1 });
        match s.commit(t).await {
            Err(CommitError::Conflict { ty: got_ty, id: got_id }) => assert_eq!((got_ty.as_str(), got_id), (ty, id)),
            other => panic!("expected Conflict on {ty}#{id}, got {other:?}"),
        }
        assert_unchanged(&s, c2.seq, std::slice::from_ref(&row)).await;
        assert_eq!(get(&s, "User", 1).await, None);
        assert_eq!(get(&s, "Job", 2).await, None);
        let key = AppliedKey { user: 1, client_id: "c".into(), write_id: 1 };
        assert_eq!(s.applied(&key).await.expect("applied"), None, "a refused write records nothing");
    }

    let mut t = tx(vec![upd("Job", 1, json!({ "name": "j3" }))]);
    t.expect = vec![("Job".into(), 1, c2.seq)];
    let c3 = s.commit(t).await.expect("the expected version matches");
    assert_eq!(must_get(&s, "Job", 1).await.version, c3.seq);
    assert_eq!(create(&s, "User", user("u")).await, 1, "refused commits don't move counters");
}

/// A row expected absent ([`ABSENT`](crate::store::ABSENT)) must still be
/// absent, and a reference set must still hold exactly its ids (a row joined
/// or left it: conflict); a refused commit changes nothing.
pub async fn expected_absences_and_reference_sets_are_checked_at_commit(f: Arc<dyn StoreFactory>) {
    use crate::store::{ABSENT, ReferencingSet};
    let s = open(&f).await;
    let [j1, j2, _] = three_jobs(&s).await;
    let t1 = create(&s, "Task", task(j1, "t1")).await;
    let set = |ids: Vec<Id>| ReferencingSet { ty: "Task".into(), field: "job".into(), parent: j1, ids };
    let attempt = |expect: Vec<(Arc<str>, Id, Seq)>, sets: Vec<ReferencingSet>| {
        let mut t = tx(vec![upd("Job", j2, json!({ "name": "renamed" }))]);
        t.expect = expect;
        t.expect_referencing = sets;
        t
    };

    // Absent and still absent; the set as it is: both commit.
    s.commit(attempt(vec![("Task".into(), 999, ABSENT)], vec![set(vec![t1])])).await.expect("nothing changed");
    let t2 = create(&s, "Task", task(j1, "t2")).await;
    let job2 = must_get(&s, "Job", j2).await;
    let seq = s.last_seq();
    let refused = [
        (attempt(vec![("Task".into(), t2, ABSENT)], vec![]), ("Task", t2)),
        (attempt(vec![], vec![set(vec![t1])]), ("Task", j1)),
        (attempt(vec![], vec![set(vec![])]), ("Task", j1)),
    ];
    for (t, (ty, id)) in refused {
        match s.commit(t).await {
            Err(CommitError::Conflict { ty: got_ty, id: got_id }) => assert_eq!((got_ty.as_str(), got_id), (ty, id)),
            other => panic!("expected a conflict on {ty}#{id}, got {other:?}"),
        }
        assert_unchanged(&s, seq, std::slice::from_ref(&job2)).await;
    }
    s.commit(attempt(vec![], vec![set(vec![t1, t2])])).await.expect("the set as it is now");
    // A row leaving the set (moved to another job) is a change too.
    commit(&s, vec![upd("Task", t2, json!({ "job": j2 }))]).await;
    assert!(matches!(s.commit(attempt(vec![], vec![set(vec![t1, t2])])).await, Err(CommitError::Conflict { .. })));
    s.commit(attempt(vec![], vec![set(vec![t1])])).await.expect("the set after the move");
}

/// Updates and deletes of missing rows, and malformed transactions, commit nothing.
pub async fn missing_rows_and_invalid_transactions_commit_nothing(f: Arc<dyn StoreFactory>) {
    let s = open(&f).await;
    let j = create(&s, "Job", job("j")).await;
    let row = must_get(&s, "Job", j).await;
    let seq = s.last_seq();
    for ops in [
        vec![upd("Job", j, json!({ "name": "x" })), upd("Job", 42, json!({ "name": "x" }))],
        vec![upd("Job", j, json!({ "name": "x" })), del("Job", 42)],
        vec![del("Job", j), upd("Job", j, json!({ "name": "after delete" }))],
    ] {
        let r = s.commit(tx(ops)).await;
        assert!(matches!(r, Err(CommitError::Conflict { .. })), "expected Conflict, got {r:?}");
        assert_unchanged(&s, seq, std::slice::from_ref(&row)).await;
    }
    let r = s.commit(tx(vec![upd("Job", j, json!({ "name": "x" })), ins("Nope", NewId::Auto, Fields::new())])).await;
    assert!(matches!(r, Err(CommitError::Invalid(_))), "an unknown type is invalid, got {r:?}");
    assert_unchanged(&s, seq, std::slice::from_ref(&row)).await;
}

/// Deleting a row deletes what references it through cascade fields, to any depth,
/// and lists every deleted row with its full before image.
pub async fn cascade_delete_lists_every_row_with_before_images(f: Arc<dyn StoreFactory>) {
    let s = open(&f).await;
    let c = commit(
        &s,
        vec![
            ins("Job", NewId::Temp(-1), job("j1")),
            ins("Job", NewId::Temp(-2), job("j2")),
            ins("Task", NewId::Temp(-11), task(-1, "t1")),
            ins("Task", NewId::Temp(-12), task(-1, "t2")),
            ins("Task", NewId::Temp(-13), task(-2, "t3")),
            ins("Comment", NewId::Auto, comment(-11, "c1")),
            ins("Comment", NewId::Auto, comment(-11, "c2")),
            ins("Comment", NewId::Auto, comment(-12, "c3")),
            ins("Comment", NewId::Auto, comment(-13, "c4")),
        ],
    )
    .await;
    assert_eq!(c.created.len(), 9);
    commit(&s, vec![upd("Task", 2, json!({ "status": "doing" }))]).await;
    let doomed = [("Job", 1), ("Task", 1), ("Task", 2), ("Comment", 1), ("Comment", 2), ("Comment", 3)];
    let mut before = Vec::new();
    for (ty, id) in doomed {
        before.push(must_get(&s, ty, id).await);
    }
    let d = commit(&s, vec![del("Job", 1)]).await;
    assert_eq!(keys(&d.changes)[0], ("Job".to_string(), 1), "the deleted row comes first");
    let got: BTreeSet<(String, Id)> = keys(&d.changes).into_iter().collect();
    let want: BTreeSet<(String, Id)> = doomed.iter().map(|(t, i)| (t.to_string(), *i)).collect();
    assert_eq!(got, want);
    assert_eq!(d.changes.len(), doomed.len(), "each row is listed once");
    for row in &before {
        let ch = d.changes.iter().find(|c| c.key == row.key()).expect("listed");
        assert_eq!(ch.before.as_ref(), Some(row), "full before image of {}", row.key());
        assert_eq!(ch.after, None);
        assert_eq!(get(&s, &row.ty, row.id).await, None, "{} must be gone", row.key());
    }
    for (ty, id) in [("Job", 2), ("Task", 3), ("Comment", 4)] {
        assert!(get(&s, ty, id).await.is_some(), "{ty}#{id} must survive");
    }
    assert!(s.children("Task", "job", &[1]).await.expect("children").is_empty());
    assert!(s.children("Comment", "task", &[1, 2]).await.expect("children").is_empty());
}

/// A `restrict` reference blocks the delete; nothing at all is deleted.
pub async fn restrict_refuses_the_delete_and_deletes_nothing(f: Arc<dyn StoreFactory>) {
    let s = open(&f).await;
    let u = create(&s, "User", user("owner")).await;
    let j = create(&s, "Job", job("j")).await;
    let mut fields = task(j, "owned");
    fields.insert("owner".into(), json!(u));
    let t = create(&s, "Task", fields).await;
    let c = create(&s, "Comment", comment(t, "c")).await;
    let rows = vec![
        must_get(&s, "User", u).await,
        must_get(&s, "Job", j).await,
        must_get(&s, "Task", t).await,
        must_get(&s, "Comment", c).await,
    ];
    let seq = s.last_seq();
    for ops in [vec![del("User", u)], vec![del("Comment", c), del("User", u)]] {
        match s.commit(tx(ops)).await {
            Err(CommitError::Restricted { ty, id, by_ty, by_id }) => {
                assert_eq!((ty.as_str(), id, by_ty.as_str(), by_id), ("User", u, "Task", t));
            }
            other => panic!("expected Restricted, got {other:?}"),
        }
        assert_unchanged(&s, seq, &rows).await;
    }
    // Once the referencing row is gone (earlier in the same transaction), the delete goes through.
    let d = commit(&s, vec![del("Task", t), del("User", u)]).await;
    let got: BTreeSet<(String, Id)> = keys(&d.changes).into_iter().collect();
    let want: BTreeSet<(String, Id)> =
        [("Task".to_string(), t), ("Comment".to_string(), c), ("User".to_string(), u)].into_iter().collect();
    assert_eq!(got, want);
    assert_eq!(get(&s, "User", u).await, None);
}

/// A `set null` reference to a deleted row becomes an update of the referencing row.
pub async fn set_null_reference_becomes_an_update(f: Arc<dyn StoreFactory>) {
    let s = open(&f).await;
    let u = create(&s, "User", user("reviewer")).await;
    let keep = create(&s, "User", user("keep")).await;
    let c = commit(
        &s,
        vec![
            ins("Job", NewId::Auto, obj(json!({ "name": "led", "lead": u }))),
            ins("Job", NewId::Auto, obj(json!({ "name": "other", "lead": keep }))),
        ],
    )
    .await;
    let j = c.created[0].id;
    let mut fields = task(j, "reviewed");
    fields.insert("reviewer".into(), json!(u));
    let t = create(&s, "Task", fields).await;
    let (job_before, task_before) = (must_get(&s, "Job", j).await, must_get(&s, "Task", t).await);

    let d = commit(&s, vec![del("User", u)]).await;
    assert_eq!(keys(&d.changes)[0], ("User".to_string(), u));
    assert_eq!(d.changes.len(), 3, "{:?}", keys(&d.changes));
    for before in [job_before, task_before] {
        let field = if &*before.ty == "Job" { "lead" } else { "reviewer" };
        let ch = d.changes.iter().find(|c| c.key == before.key()).expect("the referencing row is updated");
        let after = ch.after.clone().expect("an update keeps the row");
        assert_eq!(ch.before.as_ref(), Some(&before));
        assert_eq!(after.get(field), &Value::Null);
        assert_eq!(after.version, d.seq);
        assert_eq!(after.created, before.created);
        let mut expected = before.fields.clone();
        expected.insert(field.into(), Value::Null);
        assert_eq!(after.fields, expected);
        assert_eq!(get(&s, &before.ty, before.id).await, Some(after));
    }
    assert_eq!(must_get(&s, "Job", c.created[1].id).await.get("lead"), &json!(keep));
}

/// Commits jobs `j1`, `j2` and `j3` in one transaction; their ids.
async fn three_jobs(s: &Arc<dyn Store>) -> [Id; 3] {
    let ops = ["j1", "j2", "j3"].map(|name| ins("Job", NewId::Auto, job(name))).to_vec();
    let c = commit(s, ops).await;
    [c.created[0].id, c.created[1].id, c.created[2].id]
}

/// `children` returns the rows under several parents, ordered by (created, id),
/// following reference changes and deletes.
pub async fn children_of_several_parents_in_creation_order(f: Arc<dyn StoreFactory>) {
    let s = open(&f).await;
    let [j1, j2, j3] = three_jobs(&s).await;
    let big = MINTED_ID_MIN + 1;
    commit(&s, vec![ins("Task", NewId::Given(big), task(j2, "a"))]).await; // oldest, highest id
    let b = create(&s, "Task", task(j1, "b")).await;
    let same =
        commit(&s, vec![ins("Task", NewId::Given(50), task(j1, "d")), ins("Task", NewId::Given(40), task(j2, "c"))])
            .await;
    assert_eq!(same.created.len(), 2);
    let e = create(&s, "Task", task(j3, "e")).await;
    let moved = create(&s, "Task", task(j2, "moves to j3")).await;
    let gone = create(&s, "Task", task(j1, "deleted")).await;
    commit(&s, vec![upd("Task", moved, json!({ "job": j3 })), del("Task", gone)]).await;

    let ids = |rows: Vec<Row>| rows.iter().map(|r| r.id).collect::<Vec<_>>();
    let got = s.children("Task", "job", &[j1, j2]).await.expect("children");
    for row in &got {
        assert_eq!(Some(row), get(&s, "Task", row.id).await.as_ref(), "children returns full rows");
    }
    assert_eq!(ids(got), vec![big, b, 40, 50]);
    assert_eq!(ids(s.children("Task", "job", &[j3]).await.expect("children")), vec![e, moved]);
    assert_eq!(ids(s.children("Task", "job", &[j2, j2]).await.expect("children")), vec![big, 40]);
    assert!(s.children("Task", "job", &[]).await.expect("children").is_empty());
    assert!(s.children("Task", "job", &[999]).await.expect("children").is_empty());
    assert!(s.children("Comment", "task", &[b]).await.expect("children").is_empty());

    // Deleting j2 cascades to the rows that reference it now, not to the one that moved away.
    let d = commit(&s, vec![del("Job", j2)]).await;
    let got: BTreeSet<(String, Id)> = keys(&d.changes).into_iter().collect();
    let want: BTreeSet<(String, Id)> =
        [("Job".to_string(), j2), ("Task".to_string(), big), ("Task".to_string(), 40)].into_iter().collect();
    assert_eq!(got, want);
    assert!(get(&s, "Task", moved).await.is_some());
    assert_eq!(ids(s.children("Task", "job", &[j1, j2, j3]).await.expect("children")), vec![b, 50, e, moved]);
}

/// `children` over many rows whose ids interleave between parents (dense id
/// ranges a store may read in one scan) and far-apart ids: exactly the rows
/// referencing one of the parents now, whole, in (created, id) order — rows of
/// other parents, moved and deleted rows in between left out.
pub async fn children_of_interleaved_and_sparse_ids(f: Arc<dyn StoreFactory>) {
    let s = open(&f).await;
    let jobs = three_jobs(&s).await;
    // Three commits, highest ids first, so creation order is not id order.
    let mut all = Vec::new();
    for block in [140, 120, 100] {
        let ops = (block..block + 20)
            .map(|id: Id| {
                all.push(id);
                ins("Task", NewId::Given(id), task(jobs[(id % 3) as usize], &format!("t{id}")))
            })
            .collect();
        commit(&s, ops).await;
    }
    // Far apart from the rest and from each other.
    for id in [MINTED_ID_MIN + 7, MINTED_ID_MIN + 100_000] {
        all.push(id);
        commit(&s, vec![ins("Task", NewId::Given(id), task(jobs[0], "far"))]).await;
    }
    commit(&s, vec![upd("Task", 103, json!({ "job": jobs[2] })), del("Task", 104), del("Task", 150)]).await;

    for parents in [vec![jobs[0]], vec![jobs[1]], vec![jobs[0], jobs[2]], vec![jobs[2], jobs[1], jobs[0], jobs[1]]] {
        let mut want = Vec::new();
        for id in &all {
            if let Some(row) = get(&s, "Task", *id).await
                && row.get_i64("job").is_some_and(|j| parents.contains(&j))
            {
                want.push(row);
            }
        }
        want.sort_by_key(|r| (r.created, r.id));
        let got = s.children("Task", "job", &parents).await.expect("children");
        assert!(!got.is_empty());
        assert_eq!(got, want, "children of {parents:?}");
    }
    let got = s.children("Task", "job", &[jobs[2]]).await.expect("children");
    assert!(got.iter().any(|r| r.id == 103), "a moved row is under its new parent");
    assert!(got.iter().all(|r| r.id != 104 && r.id != 150));
}

/// `scan` pages through the rows of one type in id order, following deletes.
pub async fn scan_pages_through_a_type_in_id_order(f: Arc<dyn StoreFactory>) {
    let s = open(&f).await;
    assert!(s.scan("Job", None, 10).await.expect("scan").is_empty());
    let c = commit(&s, vec![ins("Job", NewId::Given(45), job("j50")), ins("Job", NewId::Auto, job("j"))]).await;
    let auto = c.created[1].id;
    let big = MINTED_ID_MIN + 7;
    commit(&s, vec![ins("Job", NewId::Given(big), job("big")), ins("Job", NewId::Given(3), job("j3"))]).await;
    let gone = create(&s, "Job", job("gone")).await;
    commit(&s, vec![del("Job", gone)]).await;
    commit(&s, vec![ins("Task", NewId::Auto, task(3, "t"))]).await;

    let ids = |rows: Vec<Row>| rows.iter().map(|r| r.id).collect::<Vec<_>>();
    let mut want = vec![45, auto, 3, big];
    want.sort_unstable();
    let all = s.scan("Job", None, 100).await.expect("scan");
    for row in &all {
        assert_eq!(Some(row), get(&s, "Job", row.id).await.as_ref(), "scan returns full rows");
    }
    assert_eq!(ids(all), want);
    assert_eq!(ids(s.scan("Job", None, 2).await.expect("scan")), want[..2].to_vec());
    assert_eq!(ids(s.scan("Job", Some(want[1]), 2).await.expect("scan")), want[2..4].to_vec());
    assert!(s.scan("Job", Some(big), 10).await.expect("scan").is_empty());
    assert_eq!(s.scan("Task", None, 10).await.expect("scan").len(), 1);
    assert!(s.scan("Comment", None, 10).await.expect("scan").is_empty());
}

/// The applied record is stored with the commit; the same key again is `Duplicate`.
pub async fn applied_record_is_stored_and_duplicates_refused(f: Arc<dyn StoreFactory>) {
    let s = open(&f).await;
    let key = AppliedKey { user: 7, client_id: "client-a".into(), write_id: 3 };
    let mut t = tx(vec![ins("Job", NewId::Temp(-1), job("j")), ins("Task", NewId::Temp(-2), task(-1, "t"))]);
    t.applied = Some(key.clone());
    t.now_ms = 1_000;
    let c = s.commit(t).await.expect("commit");
    let rec = AppliedRecord { seq: c.seq, created: c.created.clone(), at_ms: 1_000 };
    assert_eq!(s.applied(&key).await.expect("applied"), Some(rec.clone()));

    let mut again = tx(vec![ins("Job", NewId::Auto, job("again"))]);
    again.applied = Some(key.clone());
    match s.commit(again).await {
        Err(CommitError::Duplicate(got)) => assert_eq!(got, rec),
        other => panic!("expected Duplicate, got {other:?}"),
    }
    assert_eq!(s.last_seq(), c.seq);
    assert_eq!(get(&s, "Job", 2).await, None);

    for other in [
        AppliedKey { user: 7, client_id: "client-a".into(), write_id: 4 },
        AppliedKey { user: 7, client_id: "client-b".into(), write_id: 3 },
        AppliedKey { user: 8, client_id: "client-a".into(), write_id: 3 },
    ] {
        assert_eq!(s.applied(&other).await.expect("applied"), None);
        let mut t = tx(vec![upd("Job", 1, json!({ "name": format!("{other:?}") }))]);
        t.applied = Some(other.clone());
        let c = s.commit(t).await.expect("another key is another write");
        let got = s.applied(&other).await.expect("applied").expect("recorded");
        assert_eq!((got.seq, got.created.len()), (c.seq, 0));
    }
}

/// `purge_applied` removes old records and remembers the highest purged writeId per client.
pub async fn purge_applied_marks_purged_write_ids(f: Arc<dyn StoreFactory>) {
    let s = open(&f).await;
    let j = create(&s, "Job", job("j")).await;
    let keys = [(7, "c1", 1, 1_000), (7, "c1", 2, 2_000), (7, "c1", 3, 5_000), (8, "c2", 1, 1_500)];
    for (i, (user, client, write_id, at)) in keys.iter().enumerate() {
        let mut t = tx(vec![upd("Job", j, json!({ "name": format!("n{i}") }))]);
        t.applied = Some(AppliedKey { user: *user, client_id: (*client).into(), write_id: *write_id });
        t.now_ms = *at;
        s.commit(t).await.expect("commit");
    }
    let key = |user: Id, client: &str, write_id: i64| AppliedKey { user, client_id: client.into(), write_id };
    assert_eq!(s.purged_write_id(7, "c1").await.expect("purged"), None);
    assert_eq!(s.purge_applied(2_500).await.expect("purge"), 3);
    assert_eq!(s.applied(&key(7, "c1", 1)).await.expect("applied"), None);
    assert_eq!(s.applied(&key(7, "c1", 2)).await.expect("applied"), None);
    assert_eq!(s.applied(&key(8, "c2", 1)).await.expect("applied"), None);
    assert!(s.applied(&key(7, "c1", 3)).await.expect("applied").is_some());
    assert_eq!(s.purged_write_id(7, "c1").await.expect("purged"), Some(2));
    assert_eq!(s.purged_write_id(8, "c2").await.expect("purged"), Some(1));
    assert_eq!(s.purged_write_id(8, "c1").await.expect("purged"), None);
    assert_eq!(s.purged_write_id(9, "c2").await.expect("purged"), None);
    assert_eq!(s.purge_applied(2_500).await.expect("purge"), 0);
    assert_eq!(s.purge_applied(10_000).await.expect("purge"), 1);
    assert_eq!(s.purged_write_id(7, "c1").await.expect("purged"), Some(3));
    assert_eq!(s.applied(&key(7, "c1", 3)).await.expect("applied"), None);
}

/// Random commits with exactly-once keys (resends, writeIds out of order,
/// several clients and users), purges and reopens, against a model: a commit
/// of a recorded key is `Duplicate` with the first outcome, `applied` and
/// `purged_write_id` answer as the model does, and a purged key commits again.
pub async fn exactly_once_records_follow_a_model(f: Arc<dyn StoreFactory>) {
    use crate::testkit::rng::SplitMix;
    use std::collections::HashMap;
    let mut s = open(&f).await;
    let j = create(&s, "Job", job("j")).await;
    let mut rng = SplitMix(0x0005_eed0_fa99_11ed);
    let mut applied: HashMap<AppliedKey, AppliedRecord> = HashMap::new();
    let mut marks: HashMap<(Id, String), i64> = HashMap::new();
    let mut now = 1_000u64;
    let mut next_id: HashMap<(Id, String), i64> = HashMap::new();
    let mut random_key = |rng: &mut SplitMix| {
        let user = 1 + rng.below(3) as Id;
        let client = ["tab-a", "tab-b", "c/ü"][rng.below(3) as usize].to_owned();
        let next = next_id.entry((user, client.clone())).or_insert(1);
        let write_id = match rng.below(10) {
            // Mostly the client's next writeId, as a client sends them.
            0..=5 => {
                *next += 1;
                *next - 1
            }
            // A resend or an older id, and now and then one far out or below zero.
            6..=8 => rng.below(*next as u64 + 1) as i64,
            _ => rng.below(1_000) as i64 - 500,
        };
        AppliedKey { user, client_id: client, write_id }
    };
    for step in 0..600 {
        now += 1 + rng.below(20);
        match rng.below(100) {
            0..=59 => {
                let key = random_key(&mut rng);
                let mut t = tx(vec![upd("Job", j, json!({ "name": format!("step {step}") }))]);
                t.applied = Some(key.clone());
                t.now_ms = now;
                match (s.commit(t).await, applied.get(&key)) {
                    (Err(CommitError::Duplicate(got)), Some(rec)) => assert_eq!(&got, rec, "step {step}: {key:?}"),
                    (Ok(c), None) => {
                        applied.insert(key, AppliedRecord { seq: c.seq, created: c.created, at_ms: now });
                    }
                    (got, want) => panic!("step {step}: {key:?}: got {got:?}, the model has {want:?}"),
                }
            }
            60..=79 => {
                let key = random_key(&mut rng);
                assert_eq!(s.applied(&key).await.expect("applied").as_ref(), applied.get(&key), "step {step}: {key:?}");
                let mark = s.purged_write_id(key.user, &key.client_id).await.expect("purge mark");
                assert_eq!(mark, marks.get(&(key.user, key.client_id.clone())).copied(), "step {step}: {key:?}");
            }
            80..=85 => {
                let before = now.saturating_sub(500 + rng.below(3_000));
                let gone: Vec<AppliedKey> =
                    applied.iter().filter(|(_, r)| r.at_ms < before).map(|(k, _)| k.clone()).collect();
                for key in &gone {
                    applied.remove(key);
                    let mark = marks.entry((key.user, key.client_id.clone())).or_insert(i64::MIN);
                    *mark = (*mark).max(key.write_id);
                }
                assert_eq!(s.purge_applied(before).await.expect("purge"), gone.len() as u64, "step {step}");
            }
            _ if f.persistent() => s = reopen(&f, s).await,
            _ => {}
        }
    }
    assert!(applied.len() > 20, "the walk keeps records: {}", applied.len());
    assert!(!marks.is_empty(), "the walk purges");
}

/// A subtree moved by a commit, read later from a store that went on, comes
/// back as it stood at that commit (what the hub needs when another process
/// moved it): a random walk of renames, comments created, deleted and moved
/// between tasks, and tasks moved, created and deleted. After every step,
/// each of the last moves must read as it did right after its commit.
pub async fn moved_subtrees_read_as_of_their_commit(f: Arc<dyn StoreFactory>) {
    use crate::engine::load::{load_subtree, load_subtree_at};
    use crate::testkit::rng::SplitMix;
    let s = open(&f).await;
    let channel = crate::channel::Channel::builder("job", "Job")
        .include("tasks.comments")
        .build(&test_schema())
        .expect("the suite's channel is valid");
    let [j1, j2, j3] = three_jobs(&s).await;
    let mut tasks = Vec::new();
    let mut comments = Vec::new();
    for (i, j) in [j1, j1, j2, j2, j3].into_iter().enumerate() {
        let t = create(&s, "Task", task(j, &format!("t{i}"))).await;
        tasks.push(t);
        for k in 0..2 {
            comments.push(create(&s, "Comment", comment(t, &format!("c{i}.{k}"))).await);
        }
    }
    let mut rng = SplitMix(0x5eed_0fa5_0f5e_ed00);
    // (seq of the move, the moved task as it committed, its subtree right then)
    let mut moves: Vec<(Seq, Row, Vec<Row>)> = Vec::new();
    for step in 0..120 {
        let ops = match rng.below(10) {
            0..=2 => {
                let (t, j) = (tasks[rng.below(tasks.len() as u64) as usize], [j1, j2, j3][rng.below(3) as usize]);
                vec![upd("Task", t, json!({ "job": j, "name": format!("moved at {step}") }))]
            }
            3 => {
                vec![upd("Task", tasks[rng.below(tasks.len() as u64) as usize], json!({ "name": format!("s{step}") }))]
            }
            4 | 5 if !comments.is_empty() => {
                let c = comments[rng.below(comments.len() as u64) as usize];
                vec![upd("Comment", c, json!({ "body": format!("edited at {step}") }))]
            }
            6 if !comments.is_empty() => {
                let (c, t) = (
                    comments[rng.below(comments.len() as u64) as usize],
                    tasks[rng.below(tasks.len() as u64) as usize],
                );
                vec![upd("Comment", c, json!({ "task": t }))]
            }
            7 if comments.len() > 3 => {
                vec![del("Comment", comments.swap_remove(rng.below(comments.len() as u64) as usize))]
            }
            8 if tasks.len() > 3 && rng.chance(30) => {
                vec![del("Task", tasks.swap_remove(rng.below(tasks.len() as u64) as usize))]
            }
            8 => {
                let t = create(&s, "Task", task([j1, j2][rng.below(2) as usize], &format!("new at {step}"))).await;
                tasks.push(t);
                continue;
            }
            _ => {
                let t = tasks[rng.below(tasks.len() as u64) as usize];
                comments.push(create(&s, "Comment", comment(t, &format!("new at {step}"))).await);
                continue;
            }
        };
        let committed = commit(&s, ops).await;
        // A task deleted with its comments: forget the comments too.
        for change in committed.changes.iter().filter(|c| c.after.is_none() && &*c.key.ty == "Comment") {
            comments.retain(|&c| c != change.key.id);
        }
        let moved = committed.changes.iter().filter_map(|c| Some((c.before.as_ref()?, c.after.as_ref()?)));
        for (_, after) in moved.filter(|(b, a)| &*a.ty == "Task" && b.get_i64("job") != a.get_i64("job")) {
            let now = load_subtree(&*s, &channel, after).await.expect("subtree");
            moves.push((committed.seq, after.clone(), now));
        }
        let first = moves.len().saturating_sub(8);
        for (at, root, then) in &moves[first..] {
            let got = load_subtree_at(&*s, &channel, root, *at).await.expect("subtree as of");
            assert_eq!(&got, then, "step {step}: the subtree {} moved at seq {at} reads differently", root.key());
        }
    }
    // The walk did change moved subtrees after their moves (else it proved nothing).
    let mut differ = 0;
    for (_, root, then) in &moves {
        if load_subtree(&*s, &channel, root).await.expect("subtree") != *then {
            differ += 1;
        }
    }
    assert!(moves.len() >= 10 && differ >= 5, "{} moves, {differ} changed since", moves.len());
}

/// Every commit takes a seq above the previous one; `last_seq` follows.
pub async fn seq_strictly_increases(f: Arc<dyn StoreFactory>) {
    let s = open(&f).await;
    let start = s.last_seq();
    let mut prev = start;
    for i in 0..20 {
        let c = commit(&s, vec![ins("User", NewId::Auto, user(&format!("u{i}")))]).await;
        assert!(c.seq > prev, "seq {} after {prev}", c.seq);
        assert_eq!(s.last_seq(), c.seq);
        prev = c.seq;
    }
    // A commit that changes nothing still takes its own seq.
    let c = commit(&s, vec![upd("User", 1, json!({ "name": "u0" }))]).await;
    assert!(c.seq > prev);
}

/// Concurrent commits are serialized: distinct seqs, distinct ids, nothing lost.
pub async fn concurrent_commits_get_distinct_seqs(f: Arc<dyn StoreFactory>) {
    let s = open(&f).await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.commit(tx(vec![ins("User", NewId::Auto, user(&format!("u{i}")))])).await.expect("commit")
        }));
    }
    let mut seqs = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for t in tasks {
        let c = t.await.expect("task");
        seqs.insert(c.seq);
        ids.insert(c.created[0].id);
    }
    assert_eq!(seqs.len(), 24);
    assert_eq!(ids, (1..=24).collect());
    assert_eq!(s.last_seq(), *seqs.last().expect("seqs"));
    for id in 1..=24 {
        assert!(get(&s, "User", id).await.is_some());
    }
}

/// The durable watermark reaches `last_seq` once `wait_durable` returns.
pub async fn durable_watermark_reaches_last_seq(f: Arc<dyn StoreFactory>) {
    let s = open(&f).await;
    s.wait_durable(0).await.expect("nothing to wait for");
    let mut last = 0;
    for i in 0..5 {
        last = commit(&s, vec![ins("User", NewId::Auto, user(&format!("u{i}")))]).await.seq;
    }
    assert!(s.durable_seq() <= s.last_seq());
    s.wait_durable(last).await.expect("wait_durable");
    assert!(s.durable_seq() >= last);
    assert_eq!(s.last_seq(), last);
    s.wait_durable(last).await.expect("waiting again returns at once");
}

/// `changes_since` returns the log entries after a seq, in order, with full rows.
pub async fn change_log_returns_entries_in_order_with_full_rows(f: Arc<dyn StoreFactory>) {
    let s = open(&f).await;
    let start = s.last_seq();
    assert!(entries(&s, start, 100).await.is_empty());
    let c1 = commit(&s, vec![ins("Job", NewId::Auto, job("j")), ins("Task", NewId::Auto, task(1, "t"))]).await;
    let c2 = commit(&s, vec![upd("Task", 1, json!({ "status": "done" }))]).await;
    let c3 = commit(&s, vec![ins("Comment", NewId::Auto, comment(1, "c"))]).await;
    let c4 = commit(&s, vec![del("Job", 1)]).await;
    let all = entries(&s, start, 100).await;
    let want: Vec<LogEntry> =
        [&c1, &c2, &c3, &c4].iter().map(|c| LogEntry { seq: c.seq, changes: c.changes.clone() }).collect();
    assert_eq!(all, want);
    assert_eq!(all[3].changes.len(), 3, "the log lists cascaded rows");
    let task_before = all[3].changes.iter().find(|c| c.key == RowKey::new("Task", 1)).and_then(|c| c.before.clone());
    assert_eq!(task_before.map(|r| r.get("status").clone()), Some(json!("done")), "full before rows");
    assert_eq!(entries(&s, c2.seq, 100).await, want[2..].to_vec());
    assert_eq!(entries(&s, c1.seq, 1).await, want[1..2].to_vec());
    assert!(entries(&s, c4.seq, 10).await.is_empty());
}

/// `is_empty` is true exactly when no row is stored.
pub async fn is_empty_follows_the_rows(f: Arc<dyn StoreFactory>) {
    let s = open(&f).await;
    assert!(s.is_empty().await.expect("is_empty"));
    let j = create(&s, "Job", job("j")).await;
    assert!(!s.is_empty().await.expect("is_empty"));
    let t = create(&s, "Task", task(j, "t")).await;
    commit(&s, vec![del("Task", t)]).await;
    assert!(!s.is_empty().await.expect("is_empty"));
    commit(&s, vec![del("Job", j)]).await;
    assert!(s.is_empty().await.expect("is_empty"), "a store whose rows were all deleted is empty");
}

/// The epoch is made once, when the store is created, and survives reopening.
pub async fn epoch_is_stable_across_reopen(f: Arc<dyn StoreFactory>) {
    let s = open(&f).await;
    let epoch = s.epoch().to_owned();
    assert!(!epoch.is_empty());
    if !f.persistent() {
        tracing::info!("skipped the reopen part: the store does not persist");
        return;
    }
    create(&s, "Job", job("j")).await;
    let s = reopen(&f, s).await;
    assert_eq!(s.epoch(), epoch);
    let s = reopen(&f, s).await;
    assert_eq!(s.epoch(), epoch);
}

/// Rows, seq, id counters, applied records, purge marks and the log survive close + open.
pub async fn everything_persists_across_reopen(f: Arc<dyn StoreFactory>) {
    if !f.persistent() {
        tracing::info!("skipped: the store does not persist");
        return;
    }
    let s = open(&f).await;
    let c = commit(&s, vec![ins("Job", NewId::Given(10), job("j")), ins("Task", NewId::Temp(-1), task(10, "t"))]).await;
    commit(&s, vec![ins("Task", NewId::Given(MINTED_ID_MIN + 3), task(10, "minted"))]).await;
    commit(&s, vec![upd("Task", 1, json!({ "status": "doing" }))]).await;
    let old = AppliedKey { user: 1, client_id: "c".into(), write_id: 1 };
    let kept = AppliedKey { user: 1, client_id: "c".into(), write_id: 2 };
    for (key, at) in [(&old, 1_000), (&kept, u64::MAX / 2)] {
        let mut t = tx(vec![ins("User", NewId::Auto, user("u"))]);
        t.applied = Some(key.clone());
        t.now_ms = at;
        s.commit(t).await.expect("commit");
    }
    assert_eq!(s.purge_applied(2_000).await.expect("purge"), 1);
    let kept_rec = s.applied(&kept).await.expect("applied").expect("kept");
    let last = s.last_seq();
    s.wait_durable(last).await.expect("durable");
    let log = entries(&s, 0, 1_000).await;
    let children = s.children("Task", "job", &[10]).await.expect("children");
    assert_eq!(children.len(), 2);
    let users = s.get_many("User", &[1, 2]).await.expect("get_many");

    let s = reopen(&f, s).await;
    assert!(s.last_seq() >= last);
    assert!(s.durable_seq() >= last, "what was on disk at open is durable");
    assert_eq!(s.children("Task", "job", &[10]).await.expect("children"), children);
    assert_eq!(s.get_many("User", &[1, 2]).await.expect("get_many"), users);
    assert_eq!(s.applied(&kept).await.expect("applied"), Some(kept_rec.clone()));
    assert_eq!(s.applied(&old).await.expect("applied"), None);
    assert_eq!(s.purged_write_id(1, "c").await.expect("purged"), Some(1));
    assert_eq!(entries(&s, 0, 1_000).await, log);
    assert!(!s.is_empty().await.expect("is_empty"));

    let mut dup = tx(vec![ins("User", NewId::Auto, user("dup"))]);
    dup.applied = Some(kept.clone());
    assert!(matches!(s.commit(dup).await, Err(CommitError::Duplicate(r)) if r == kept_rec));
    let n = commit(&s, vec![ins("Job", NewId::Auto, job("next")), ins("Task", NewId::Auto, task(10, "next"))]).await;
    assert!(n.seq > last, "seq {} must continue above {last}", n.seq);
    assert!(n.seq > c.seq);
    assert_eq!(created_ids(&n), vec![("Job".into(), None, 11), ("Task".into(), None, 2)]);
    assert_eq!(create(&s, "User", user("u3")).await, 3);
    let after = entries(&s, last, 10).await;
    assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![n.seq, n.seq + 1]);
    s.close().await.expect("close");
}
