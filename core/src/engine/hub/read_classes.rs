//! Read classes: the subscribers of a live context grouped by equal read
//! rules (see [`crate::read_rule`]). Each class keeps the set of rows its
//! members see and the seq of the last delta they got; a commit is decided
//! once per class and encoded once per class and codec.
//!
//! A row is seen by a class when its rule reads it and its parent is seen
//! (the anchor needs only its rule): a hidden row hides its subtree. A row
//! that becomes readable arrives as `create` (with the rows under it), one
//! that stops being readable as `delete` (with the rows under it). Every
//! class has its own `prev` chain: deltas with nothing it may see are not
//! sent, and its states carry the seq of its last delta. A class remembers
//! what left its view and what came into it, so a member resubscribing with
//! `since` gets an incremental state, as an unrestricted one does.

use super::{FastMap, FastSet, LiveContext};
use crate::ids::Seq;
use crate::protocol::v1::{ChangeOp, DeltaChange};
use crate::read_rule::CompiledReadRule;
use crate::row::{Fields, Row, RowKey};
use crate::transport::Frame;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::ConnId;

/// One user's compiled read rules for a channel's types (only the types
/// whose rule is not "everything"), with the key that names the class.
#[derive(Debug)]
pub(crate) struct ContextRules {
    pub key: String,
    pub by_type: HashMap<String, CompiledReadRule>,
    /// What states built under these rules carry as `view`: a hash of the
    /// key, the same in every process and version (the key would show the
    /// policy's filters to the client).
    pub tag: String,
}

impl ContextRules {
    pub fn new(key: String, by_type: HashMap<String, CompiledReadRule>) -> Self {
        let tag = format!("{:016x}", fnv1a(key.as_bytes()));
        ContextRules { key, by_type, tag }
    }

    fn rule(&self, ty: &str) -> Option<&CompiledReadRule> {
        self.by_type.get(ty)
    }

    /// The row as these rules show it (None: unreadable).
    pub fn view(&self, row: &Row) -> Option<Row> {
        match self.rule(&row.ty) {
            Some(rule) => rule.view(row),
            None => Some(row.clone()),
        }
    }

    pub fn can_read(&self, row: &Row) -> bool {
        self.rule(&row.ty).is_none_or(|r| r.can_read(row))
    }
}

pub(crate) struct ReadClass {
    pub rules: Arc<ContextRules>,
    pub members: FastSet<ConnId>,
    /// The rows the members see.
    pub visible: FastSet<RowKey>,
    /// The seq of the last delta the members got (their states carry it).
    pub last_seq: Seq,
    /// Whole-state frames at `last_seq`, per codec (without rid or presence).
    pub state_cache: [Option<Arc<[Frame]>>; 2],
    /// The seq since which this class has been tracked (incremental states
    /// reach back to here at most).
    pub since: Seq,
    /// Rows that left the members' view, with the seq they left at.
    pub left: VecDeque<(Seq, RowKey)>,
    /// Removals after this seq are all in `left`.
    pub left_from: Seq,
    /// Rows that came into view (with their subtree) and when.
    pub revealed: FastMap<RowKey, Seq>,
}

impl ReadClass {
    fn note_left(&mut self, key: RowKey, seq: Seq) {
        self.revealed.remove(&key);
        self.left.push_back((seq, key));
        if self.left.len() > LEFT_KEPT
            && let Some((s, _)) = self.left.pop_front()
        {
            self.left_from = s;
        }
    }
}

/// FNV-1a, 64 bits: tiny, and stable everywhere (the tag outlives a process).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// How many removals a class remembers for incremental states.
const LEFT_KEPT: usize = 10_000;

/// The classes of one live context. Subscribers in no class read everything.
#[derive(Default)]
pub(crate) struct ReadClasses {
    pub classes: FastMap<u32, ReadClass>,
    pub member_of: FastMap<ConnId, u32>,
    next: u32,
}

impl ReadClasses {
    pub fn is_restricted(&self, conn: ConnId) -> bool {
        self.member_of.contains_key(&conn)
    }

    pub fn class_of(&self, conn: ConnId) -> Option<&ReadClass> {
        self.member_of.get(&conn).and_then(|id| self.classes.get(id))
    }

    pub fn class_of_mut(&mut self, conn: ConnId) -> Option<&mut ReadClass> {
        let id = *self.member_of.get(&conn)?;
        self.classes.get_mut(&id)
    }

    pub fn remove(&mut self, conn: ConnId) {
        let Some(id) = self.member_of.remove(&conn) else { return };
        if let Some(class) = self.classes.get_mut(&id) {
            class.members.remove(&conn);
            if class.members.is_empty() {
                self.classes.remove(&id);
            }
        }
    }
}

impl LiveContext {
    /// Puts `conn` in the class of `rules` (made now, from the context's rows, if new).
    pub(super) fn join_class(&mut self, conn: ConnId, rules: Arc<ContextRules>) {
        self.read.remove(conn);
        let found = self.read.classes.iter().find(|(_, c)| c.rules.key == rules.key).map(|(id, _)| *id);
        let id = match found {
            Some(id) => id,
            None => {
                let visible = self.visible_rows(&rules);
                let id = self.read.next;
                self.read.next += 1;
                let class = ReadClass {
                    rules,
                    members: FastSet::default(),
                    visible,
                    last_seq: self.last_seq,
                    state_cache: [None, None],
                    since: self.last_seq,
                    left: VecDeque::new(),
                    left_from: self.last_seq,
                    revealed: FastMap::default(),
                };
                self.read.classes.insert(id, class);
                id
            }
        };
        if let Some(class) = self.read.classes.get_mut(&id) {
            class.members.insert(conn);
        }
        self.read.member_of.insert(conn, id);
    }

    /// The rows `rules` let a member see, parents before children.
    fn visible_rows(&self, rules: &ContextRules) -> FastSet<RowKey> {
        let mut visible = FastSet::default();
        for row in self.ordered_rows() {
            let key = row.key();
            let parent_seen = key == self.anchor || self.parent.get(&key).is_some_and(|p| visible.contains(p));
            if parent_seen && rules.can_read(&row) {
                visible.insert(key);
            }
        }
        visible
    }

    /// A class's whole state: the rows it sees, in tree order, as its rules show them.
    pub(super) fn class_rows(&self, class: &ReadClass) -> Vec<Arc<Row>> {
        self.ordered_rows()
            .into_iter()
            .filter(|r| class.visible.contains(&r.key()))
            .filter_map(|r| class.rules.view(&r).map(Arc::new))
            .collect()
    }

    /// A class's incremental state since `since` (rows that changed or came
    /// into view since, and rows that left it), when it reaches back there.
    pub(super) fn class_changes_since(
        &self,
        class: &ReadClass,
        since: Seq,
    ) -> Option<(Vec<Arc<Row>>, Vec<crate::protocol::v1::Removed>)> {
        let reaches =
            since >= class.since && since >= class.left_from && since >= self.loaded_at && since <= class.last_seq;
        if !reaches {
            return None;
        }
        let fresh = |r: &Row| {
            let key = r.key();
            r.version > since
                || self.joined.get(&key).is_some_and(|j| *j > since)
                || class.revealed.get(&key).is_some_and(|s| *s > since)
        };
        let instances = self
            .ordered_rows()
            .into_iter()
            .filter(|r| class.visible.contains(&r.key()) && fresh(r))
            .filter_map(|r| class.rules.view(&r).map(Arc::new))
            .collect();
        let removed = class
            .left
            .iter()
            .filter(|(s, k)| *s > since && !class.visible.contains(k))
            .map(|(_, k)| crate::protocol::v1::Removed { ty: k.ty.to_string(), id: k.id })
            .collect();
        Some((instances, removed))
    }

    /// What one class sees of a delta's changes (the context already applied them).
    pub(super) fn class_changes(&self, class: &mut ReadClass, seq: Seq, changes: &[DeltaChange]) -> Vec<DeltaChange> {
        let mut out = Vec::new();
        for change in changes {
            let key = RowKey::new(change.ty.clone(), change.id);
            match change.op {
                ChangeOp::Delete => {
                    if class.visible.remove(&key) {
                        class.note_left(key, seq);
                        out.push(change.clone());
                    }
                }
                ChangeOp::Create | ChangeOp::Update => self.class_upsert(class, &key, change, seq, &mut out),
            }
        }
        out
    }

    fn class_upsert(
        &self,
        class: &mut ReadClass,
        key: &RowKey,
        change: &DeltaChange,
        seq: Seq,
        out: &mut Vec<DeltaChange>,
    ) {
        let Some(row) = self.rows.get(key) else { return };
        let parent_seen = *key == self.anchor || self.parent.get(key).is_some_and(|p| class.visible.contains(p));
        let readable = parent_seen && class.rules.can_read(row);
        let seen = class.visible.contains(key);
        match (readable, seen) {
            // Revealed by an earlier change of this commit (a row that came
            // into view brings the rows under it): already shown.
            (true, true) if change.op == ChangeOp::Create && class.revealed.get(key) == Some(&seq) => {}
            (true, true) if change.op == ChangeOp::Create => out.push(self.shown_create(class, row)),
            (true, true) => {
                let mut fields = change.fields.clone();
                if let Some(rule) = class.rules.rule(&row.ty) {
                    rule.strip(row, &mut fields);
                }
                // Even with every changed field hidden, the version moves on:
                // a later `ifVersion` names the version the member saw.
                out.push(DeltaChange { fields, ..change.clone() });
            }
            (true, false) => self.reveal(class, key, seq, out),
            (false, true) => self.conceal(class, key, seq, out),
            (false, false) => {}
        }
    }

    fn shown_create(&self, class: &ReadClass, row: &Row) -> DeltaChange {
        let mut fields: Fields = row.fields.clone();
        if let Some(rule) = class.rules.rule(&row.ty) {
            rule.strip(row, &mut fields);
        }
        DeltaChange { op: ChangeOp::Create, ty: row.ty.clone(), id: row.id, version: row.version, fields }
    }

    /// The row became visible: it and the readable rows under it arrive.
    fn reveal(&self, class: &mut ReadClass, key: &RowKey, seq: Seq, out: &mut Vec<DeltaChange>) {
        let mut stack = vec![key.clone()];
        while let Some(k) = stack.pop() {
            let Some(row) = self.rows.get(&k) else { continue };
            if !class.rules.can_read(row) || !class.visible.insert(k.clone()) {
                continue;
            }
            class.revealed.insert(k.clone(), seq);
            out.push(self.shown_create(class, row));
            stack.extend(self.children.get(&k).into_iter().flatten().cloned());
        }
    }

    /// The row stopped being visible: it and the visible rows under it leave.
    fn conceal(&self, class: &mut ReadClass, key: &RowKey, seq: Seq, out: &mut Vec<DeltaChange>) {
        let mut stack = vec![key.clone()];
        while let Some(k) = stack.pop() {
            if !class.visible.remove(&k) {
                continue;
            }
            class.note_left(k.clone(), seq);
            out.push(DeltaChange {
                op: ChangeOp::Delete,
                ty: k.ty.clone(),
                id: k.id,
                version: seq,
                fields: Fields::new(),
            });
            stack.extend(self.children.get(&k).into_iter().flatten().cloned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Moved, RowIndex};
    use super::*;
    use crate::channel::Channel;
    use crate::read_rule::ReadRule;
    use crate::schema::{OnDelete, Schema};
    use crate::store::Change;
    use crate::stream::Filters;
    use serde_json::json;
    use std::collections::{BTreeSet, VecDeque};

    fn schema() -> Arc<Schema> {
        Schema::builder()
            .entity("Job", |t| {
                t.string("name").default("");
            })
            .entity("Task", |t| {
                t.reference("job", "Job").on_delete(OnDelete::Cascade);
                t.bool("private").default(false);
                t.string("notes").default("");
            })
            .entity("Step", |t| {
                t.reference("task", "Task").on_delete(OnDelete::Cascade);
            })
            .relation("Job", "tasks", "Task", "job")
            .relation("Task", "steps", "Step", "task")
            .build()
            .expect("schema")
    }

    fn row(ty: &str, id: i64, version: Seq, fields: serde_json::Value) -> Row {
        let fields = fields.as_object().cloned().unwrap_or_default();
        Row { ty: ty.into(), id, version, created: version, fields }
    }

    /// job/1 with public task 1 (steps 10, 11) and private task 2 (step 20).
    fn context(schema: &Schema) -> (LiveContext, RowIndex) {
        let channel = Arc::new(Channel::builder("job", "Job").include("tasks.steps").build(schema).expect("channel"));
        let anchor = RowKey::new("Job", 1);
        let mut ctx = LiveContext {
            name: Arc::from("job/1"),
            channel,
            anchor: anchor.clone(),
            rows: FastMap::default(),
            parent: FastMap::default(),
            children: FastMap::default(),
            joined: FastMap::default(),
            tombstones: VecDeque::new(),
            tombstones_from: 1,
            loaded_at: 1,
            last_seq: 1,
            subscribers: BTreeSet::new(),
            state_cache: [None, None],
            read: ReadClasses::default(),
        };
        let mut index = RowIndex::default();
        ctx.rows.insert(anchor, Arc::new(row("Job", 1, 1, json!({"name": "j"}))));
        let rows = [
            row("Task", 1, 1, json!({"job": 1, "private": false, "notes": "a"})),
            row("Task", 2, 1, json!({"job": 1, "private": true, "notes": "b"})),
            row("Step", 10, 1, json!({"task": 1})),
            row("Step", 11, 1, json!({"task": 1})),
            row("Step", 20, 1, json!({"task": 2})),
        ];
        for r in rows {
            let parent = ctx.parent_in_context(&r).expect("parent");
            ctx.link(&mut index, r.key(), parent, Arc::new(r), None);
        }
        (ctx, index)
    }

    fn public_only(schema: &Schema) -> Arc<ContextRules> {
        let task = schema.entity("Task").expect("Task");
        let rule = ReadRule::rows_where(Filters::new().eq("private", false)).hide("notes");
        let by_type = HashMap::from([("Task".to_owned(), rule.compile(task).expect("rule"))]);
        Arc::new(ContextRules::new(format!("Task:{}", rule.key()), by_type))
    }

    fn keys(changes: &[DeltaChange]) -> Vec<(String, i64, ChangeOp)> {
        changes.iter().map(|c| (c.ty.to_string(), c.id, c.op)).collect()
    }

    /// Applies a change to the context and returns what the class sees of it.
    fn commit(ctx: &mut LiveContext, index: &mut RowIndex, seq: Seq, change: Change) -> Vec<DeltaChange> {
        let mut changes = Vec::new();
        assert!(!ctx.apply(index, seq, &change, &Moved::new(), &mut changes));
        ctx.last_seq = seq;
        let id = *ctx.read.classes.keys().next().expect("a class");
        let mut class = ctx.read.classes.remove(&id).expect("class");
        let seen = ctx.class_changes(&mut class, seq, &changes);
        class.last_seq = seq;
        ctx.read.classes.insert(id, class);
        seen
    }

    fn saved(before: &Row, after: serde_json::Value, seq: Seq) -> Change {
        let mut next = before.clone();
        next.version = seq;
        next.fields.extend(after.as_object().cloned().unwrap_or_default());
        Change { key: before.key(), before: Some(before.clone()), after: Some(next) }
    }

    #[test]
    fn a_class_sees_readable_rows_under_seen_parents_without_hidden_fields() {
        let schema = schema();
        let (mut ctx, _) = context(&schema);
        ctx.join_class(7, public_only(&schema));
        let class = ctx.read.class_of(7).expect("class");
        let shown: Vec<(String, i64)> = ctx.class_rows(class).iter().map(|r| (r.ty.to_string(), r.id)).collect();
        let want = [("Job", 1), ("Task", 1), ("Step", 10), ("Step", 11)].map(|(t, i)| (t.to_owned(), i)).to_vec();
        assert_eq!(shown, want, "the private task hides its step too");
        assert!(ctx.class_rows(class).iter().all(|r| !r.fields.contains_key("notes")), "notes are hidden");
        // A second subscriber with equal rules joins the same class.
        ctx.join_class(8, public_only(&schema));
        assert_eq!(ctx.read.classes.len(), 1);
        ctx.read.remove(7);
        ctx.read.remove(8);
        assert!(ctx.read.classes.is_empty(), "an empty class is dropped");
    }

    #[test]
    fn flips_arrive_as_subtree_creates_and_deletes_and_hidden_changes_as_version_bumps() {
        let schema = schema();
        let (mut ctx, mut index) = context(&schema);
        ctx.join_class(7, public_only(&schema));
        let task2 = (*ctx.rows[&RowKey::new("Task", 2)]).clone();
        let seen = commit(&mut ctx, &mut index, 2, saved(&task2, json!({"private": false}), 2));
        assert_eq!(
            keys(&seen),
            vec![("Task".into(), 2, ChangeOp::Create), ("Step".into(), 20, ChangeOp::Create)],
            "revealed with its subtree"
        );
        assert!(!seen[0].fields.contains_key("notes"), "{seen:?}");

        let task1 = (*ctx.rows[&RowKey::new("Task", 1)]).clone();
        let seen = commit(&mut ctx, &mut index, 3, saved(&task1, json!({"notes": "secret"}), 3));
        assert_eq!(keys(&seen), vec![("Task".into(), 1, ChangeOp::Update)]);
        assert!(seen[0].fields.is_empty() && seen[0].version == 3, "a version-only update: {seen:?}");

        let task1 = (*ctx.rows[&RowKey::new("Task", 1)]).clone();
        let seen = commit(&mut ctx, &mut index, 4, saved(&task1, json!({"private": true}), 4));
        let mut got = keys(&seen);
        got.sort_by_key(|(ty, id, _)| (ty.clone(), *id));
        assert_eq!(
            got,
            vec![
                ("Step".into(), 10, ChangeOp::Delete),
                ("Step".into(), 11, ChangeOp::Delete),
                ("Task".into(), 1, ChangeOp::Delete)
            ],
            "concealed with its subtree"
        );
        // The class remembers: an incremental state since 1 shows task 2 and
        // step 20 (revealed), drops task 1 and its steps, and names nothing it never saw.
        let class = ctx.read.class_of(7).expect("class");
        let (rows, removed) = ctx.class_changes_since(class, 1).expect("reaches back");
        let rows: Vec<(String, i64)> = rows.iter().map(|r| (r.ty.to_string(), r.id)).collect();
        assert_eq!(rows, vec![("Task".to_owned(), 2), ("Step".to_owned(), 20)]);
        let mut removed: Vec<(String, i64)> = removed.into_iter().map(|r| (r.ty, r.id)).collect();
        removed.sort();
        assert_eq!(removed, vec![("Step".into(), 10), ("Step".into(), 11), ("Task".into(), 1)]);
        assert!(ctx.class_changes_since(class, 0).is_none(), "not before the class existed");

        // A change to a row the class can't see is not its business.
        let task1 = (*ctx.rows[&RowKey::new("Task", 1)]).clone();
        assert!(commit(&mut ctx, &mut index, 5, saved(&task1, json!({"notes": "x"}), 5)).is_empty());
    }
}
