//! The optimistic layer's rules, scenario by scenario, without a runtime.

mod common;

use common::*;
use serde_json::json;
use statecast_client::state::{ChangeKind, Effect, WriteOptions};
use statecast_core::error::ErrorReason;
use statecast_core::protocol::v1::{ChangeOp, Operation, WriteOp};
use statecast_core::store::CreatedId;

fn save(ty: &str, id: i64, data: serde_json::Value) -> WriteOp {
    WriteOp {
        operation: Operation::Save,
        instance_type: ty.into(),
        instance_id: Some(id),
        parent_type: None,
        parent_id: None,
        relation_name: None,
        data: Some(fields(data)),
        if_version: None,
    }
}

fn create(ty: &str, parent: (&str, i64, &str), data: serde_json::Value) -> WriteOp {
    WriteOp {
        operation: Operation::Create,
        instance_type: ty.into(),
        instance_id: None,
        parent_type: Some(parent.0.into()),
        parent_id: Some(parent.1),
        relation_name: Some(parent.2.into()),
        data: Some(fields(data)),
        if_version: None,
    }
}

fn delete(ty: &str, id: i64) -> WriteOp {
    WriteOp { operation: Operation::Delete, data: None, ..save(ty, id, json!({})) }
}

fn status(c: &statecast_client::ClientState, id: i64) -> Option<String> {
    c.row("job/1", "Task", id).and_then(|r| r.fields.get("status").and_then(|v| v.as_str()).map(str::to_owned))
}

fn settled(effects: &[Effect]) -> Vec<(i64, bool)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Settled { write_id, result } => Some((*write_id, result.is_ok())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_save_shows_at_once_and_is_retired_by_its_delta() {
    let mut c = loaded();
    let (w, _, effects) =
        c.write("job/1", vec![save("Task", 1, json!({"status": "done"}))], WriteOptions::default()).expect("write");
    assert!(
        effects.iter().any(|e| matches!(e, Effect::Changed { changes, .. } if changes[0].kind == ChangeKind::Updated))
    );
    assert_eq!(status(&c, 1).as_deref(), Some("done"));
    assert!(c.row("job/1", "Task", 1).is_some_and(|r| r.pending));
    assert_eq!(c.take_sendable().len(), 1);
    c.apply_delta(delta(
        "job/1",
        10,
        11,
        vec![change(ChangeOp::Update, "Task", 1, 11, json!({"status": "done"}))],
        Some(w),
    ));
    let row = c.row("job/1", "Task", 1).expect("row");
    assert_eq!((row.pending, row.version), (false, 11), "retired in the same step as the canonical result");
    let effects = c.on_response(&ok(w, 11));
    assert_eq!(settled(&effects), vec![(w, true)]);
    assert_eq!(c.pending_count(), 0);
}

#[test]
fn a_refused_save_shows_the_canonical_value_including_another_users_change() {
    let mut c = loaded();
    let (w, _, _) =
        c.write("job/1", vec![save("Task", 1, json!({"status": "done"}))], WriteOptions::default()).expect("write");
    // Someone else changes the same field while ours is pending: ours stays on top.
    c.apply_delta(delta(
        "job/1",
        10,
        11,
        vec![change(ChangeOp::Update, "Task", 1, 11, json!({"status": "doing", "name": "A"}))],
        None,
    ));
    assert_eq!(status(&c, 1).as_deref(), Some("done"));
    assert_eq!(c.row("job/1", "Task", 1).map(|r| r.fields["name"].clone()), Some(json!("A")));
    let effects = c.on_response(&refused(w, ErrorReason::Denied));
    assert_eq!(settled(&effects), vec![(w, false)]);
    assert_eq!(status(&c, 1).as_deref(), Some("doing"), "the other user's value, not a snapshot");
    assert!(!c.row("job/1", "Task", 1).expect("row").pending);
}

#[test]
fn a_refused_create_disappears_and_its_dependents_fail_with_it() {
    let mut c = loaded();
    let (w1, ids, _) = c
        .write("job/1", vec![create("Task", ("Job", 1, "tasks"), json!({"name": "new"}))], WriteOptions::default())
        .expect("create");
    let id = ids[0];
    assert!(id >= 1 << 52, "client-minted by default");
    let (w2, _, _) =
        c.write("job/1", vec![save("Task", id, json!({"status": "done"}))], WriteOptions::default()).expect("save");
    let sent = c.take_sendable();
    assert_eq!(sent[1].after, vec![w1], "the dependent write names its dependency");
    assert_eq!(summary(&c, "job/1").len(), 4);
    let effects = c.on_response(&refused(w1, ErrorReason::Denied));
    assert_eq!(settled(&effects), vec![(w1, false), (w2, false)]);
    assert_eq!(
        summary(&c, "job/1"),
        vec![("Job".into(), 1, false), ("Task".into(), 1, false), ("Task".into(), 2, false)]
    );
}

#[test]
fn a_refused_delete_is_back_at_its_position() {
    let mut c = loaded();
    let (w, _, _) = c.write("job/1", vec![delete("Task", 1)], WriteOptions::default()).expect("delete");
    assert_eq!(summary(&c, "job/1"), vec![("Job".into(), 1, false), ("Task".into(), 2, false)]);
    c.on_response(&refused(w, ErrorReason::Denied));
    assert_eq!(
        summary(&c, "job/1"),
        vec![("Job".into(), 1, false), ("Task".into(), 1, false), ("Task".into(), 2, false)]
    );
}

#[test]
fn a_temp_id_is_swapped_in_place_with_no_duplicate() {
    let mut c = loaded();
    let opts = WriteOptions { temp_ids: true, ..WriteOptions::default() };
    let (w, ids, _) =
        c.write("job/1", vec![create("Task", ("Job", 1, "tasks"), json!({"name": "t"}))], opts).expect("create");
    assert_eq!(ids, vec![-1]);
    let (w2, _, _) =
        c.write("job/1", vec![save("Task", -1, json!({"status": "done"}))], WriteOptions::default()).expect("save");
    let sent = c.take_sendable();
    assert_eq!(sent.len(), 1, "a write on an unconfirmed temp id waits for the real id");
    let before = c.view("job/1");
    let mut d = delta(
        "job/1",
        10,
        11,
        vec![change(ChangeOp::Create, "Task", 7, 11, json!({"job": 1, "name": "t", "status": "todo"}))],
        Some(w),
    );
    d.created = vec![CreatedId { ty: "Task".into(), temp_id: Some(-1), id: 7 }];
    let effects = c.apply_delta(d);
    let after = c.view("job/1");
    assert_eq!(before.len(), after.len(), "never both rows, never neither");
    let swapped = after.iter().find(|r| r.key == -1).expect("the row keeps its key");
    assert_eq!(
        (swapped.id, swapped.fields["status"].clone()),
        (7, json!("done")),
        "the pending save still shows on top"
    );
    assert_eq!(after.iter().position(|r| r.key == -1), before.iter().position(|r| r.key == -1), "same position");
    let kinds: Vec<ChangeKind> = effects
        .iter()
        .flat_map(|e| match e {
            Effect::Changed { changes, .. } => changes.iter().map(|c| c.kind).collect(),
            _ => vec![],
        })
        .collect();
    assert!(!kinds.contains(&ChangeKind::Removed) && !kinds.contains(&ChangeKind::Added), "{kinds:?}");
    c.on_response(&ok(w, 11));
    let sent = c.take_sendable();
    assert_eq!((sent.len(), sent[0].write_id, sent[0].instance_id), (1, w2, Some(7)), "sent with the real id");
}

#[test]
fn a_write_that_skips_the_optimistic_step_shows_only_when_confirmed() {
    let mut c = loaded();
    let opts = WriteOptions { optimistic: false, ..WriteOptions::default() };
    let (w, _, _) = c.write("job/1", vec![save("Task", 1, json!({"status": "done"}))], opts).expect("write");
    assert_eq!(status(&c, 1).as_deref(), Some("todo"));
    c.apply_delta(delta(
        "job/1",
        10,
        11,
        vec![change(ChangeOp::Update, "Task", 1, 11, json!({"status": "done"}))],
        Some(w),
    ));
    assert_eq!(status(&c, 1).as_deref(), Some("done"));
}

#[test]
fn a_pending_save_that_moves_a_row_moves_it_between_views() {
    let mut c = loaded();
    let (w, _, _) = c.write("job/1", vec![save("Task", 1, json!({"job": 2}))], WriteOptions::default()).expect("move");
    assert!(c.row("job/1", "Task", 1).is_none());
    assert!(c.row("job/2", "Task", 1).is_some_and(|r| r.pending));
    c.on_response(&refused(w, ErrorReason::Denied));
    assert!(c.row("job/1", "Task", 1).is_some());
    assert!(c.row("job/2", "Task", 1).is_none());
}

#[test]
fn a_pending_create_whose_parent_is_deleted_is_hidden() {
    let mut c = loaded();
    c.write("job/1", vec![create("Note", ("Task", 2, "notes"), json!({"text": "x"}))], WriteOptions::default())
        .expect("create");
    assert_eq!(c.view("job/1").len(), 4);
    c.apply_delta(delta("job/1", 10, 11, vec![change(ChangeOp::Delete, "Task", 2, 11, json!({}))], None));
    assert_eq!(c.view("job/1").len(), 2, "task 2 and the pending note under it are gone from the view");
    assert_eq!(c.pending_count(), 1, "still pending until answered");
}

#[test]
fn a_gap_asks_for_a_resync_and_stale_changes_are_ignored() {
    let mut c = loaded();
    let effects = c.apply_delta(delta("job/1", 12, 13, vec![], None));
    assert!(matches!(&effects[..], [Effect::Resync { since: 10, .. }]), "{effects:?}");
    let mut inc = state("job/1", 1, 14, vec![row("Task", 2, 14, json!({"job": 1, "name": "b2", "status": "todo"}))]);
    inc.incremental = true;
    inc.removed = vec![statecast_core::protocol::v1::Removed { ty: "Task".into(), id: 1 }];
    c.apply_state(inc);
    assert_eq!(summary(&c, "job/1"), vec![("Job".into(), 1, false), ("Task".into(), 2, false)]);
    assert_eq!(c.row("job/1", "Task", 2).map(|r| r.fields["name"].clone()), Some(json!("b2")));
    // A change older than the row's version does not apply.
    c.apply_delta(delta("job/1", 14, 15, vec![change(ChangeOp::Update, "Task", 2, 13, json!({"name": "old"}))], None));
    assert_eq!(c.row("job/1", "Task", 2).map(|r| r.fields["name"].clone()), Some(json!("b2")));
}

#[test]
fn unsent_writes_fail_when_their_context_closes() {
    let mut c = loaded();
    let (w, _, _) =
        c.write("job/1", vec![save("Task", 1, json!({"status": "done"}))], WriteOptions::default()).expect("write");
    let effects = c.on_unsubscribed("job/1", statecast_core::protocol::v1::UnsubscribeReason::AnchorDeleted);
    assert!(effects.iter().any(|e| matches!(e, Effect::Settled { write_id, result: Err(err) } if *write_id == w && err.reason == ErrorReason::ContextClosed)));
    assert!(c.write("job/1", vec![save("Task", 1, json!({}))], WriteOptions::default()).is_err());
}

#[test]
fn a_reconnect_resends_in_order_and_applied_writes_retire() {
    let mut c = loaded();
    let (w1, _, _) =
        c.write("job/1", vec![save("Task", 1, json!({"status": "done"}))], WriteOptions::default()).expect("w1");
    let (w2, _, _) =
        c.write("job/1", vec![save("Task", 2, json!({"status": "done"}))], WriteOptions::default()).expect("w2");
    assert_eq!(c.take_sendable().len(), 2);
    c.connection_lost();
    assert_eq!(c.pending_write_ids(), vec![w1, w2]);
    let effects =
        c.on_applied(&[statecast_core::protocol::v1::AppliedOutcome { write_id: w1, seq: 11, created: vec![] }]);
    assert_eq!(settled(&effects), vec![(w1, true)]);
    let resend: Vec<i64> = c.take_sendable().iter().map(|w| w.write_id).collect();
    assert_eq!(resend, vec![w2], "only the unanswered write is resent, with its writeId");
    assert_eq!(status(&c, 1).as_deref(), Some("done"), "w1 shows until its context catches up");
    let mut inc = state("job/1", 1, 11, vec![row("Task", 1, 11, json!({"job": 1, "name": "a", "status": "done"}))]);
    inc.incremental = true;
    c.apply_state(inc);
    assert!(!c.row("job/1", "Task", 1).expect("row").pending);
}

#[test]
fn a_resume_sends_back_the_view_its_state_was_read_under() {
    use statecast_core::protocol::v1::{ClientMessage, Welcome};
    let mut c = loaded();
    // A state read under read rules carries their tag; one without rules none.
    let mut restricted = state("job/1", 1, 12, vec![row("Job", 1, 1, json!({"name": "one"}))]);
    restricted.view = Some("4f7c2a91d03b6e58".into());
    c.apply_state(restricted);
    c.connection_lost();
    let welcome: Welcome = serde_json::from_value(json!({"type": "welcome", "connectionId": "c",
        "user": {"id": 1, "name": "ann"}, "schema": {"types": {}}, "epoch": "e", "applied": []}))
    .expect("welcome");
    c.connected(&welcome);
    let resumes: Vec<(Option<i64>, Option<u64>, Option<String>)> = c
        .take_control()
        .into_iter()
        .filter_map(|m| match m {
            ClientMessage::Subscribe(s) => Some((s.anchor_id, s.since, s.view)),
            _ => None,
        })
        .collect();
    assert_eq!(
        resumes,
        vec![(Some(1), Some(12), Some("4f7c2a91d03b6e58".into())), (Some(2), Some(10), None)],
        "each context resumes from its seq, naming the rules its state was read under"
    );
}
