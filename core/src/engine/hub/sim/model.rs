//! The model store the simulation checks against, and its seeded randomness.

use super::*;

/// The simulation's seeded randomness.
pub(super) use crate::testkit::rng::SplitMix as Rng;

/// Every version of the store: `history[seq]` is the rows after commit `seq`.
pub(super) struct ModelStore {
    pub(super) history: Vec<Arc<BTreeMap<RowKey, Row>>>,
    pub(super) log: Vec<LogEntry>,
    pub(super) durable: Seq,
    pub(super) next_id: Id,
}

impl ModelStore {
    pub(super) fn last_seq(&self) -> Seq {
        self.history.len() as Seq - 1
    }
    pub(super) fn rows(&self) -> &BTreeMap<RowKey, Row> {
        self.history.last().map(|r| &**r).expect("history starts with the empty store")
    }
    pub(super) fn at(&self, seq: Seq) -> &BTreeMap<RowKey, Row> {
        &self.history[seq as usize]
    }
    pub(super) fn of_type(&self, ty: &str) -> Vec<Id> {
        self.rows().keys().filter(|k| &*k.ty == ty).map(|k| k.id).collect()
    }

    /// Commits `changes` (one per row) at the next seq.
    pub(super) fn commit(&mut self, changes: Vec<Change>) -> Committed {
        let seq = self.last_seq() + 1;
        let mut rows = self.rows().clone();
        let mut stamped = Vec::new();
        for mut change in changes {
            match &mut change.after {
                Some(after) => {
                    after.version = seq;
                    if change.before.is_none() {
                        after.created = seq;
                    }
                    rows.insert(change.key.clone(), after.clone());
                }
                None => {
                    rows.remove(&change.key);
                }
            }
            stamped.push(change);
        }
        self.history.push(Arc::new(rows));
        self.log.push(LogEntry { seq, changes: stamped.clone() });
        Committed { seq, changes: stamped, created: Vec::new() }
    }

    /// A kill -9: what was not durable is gone.
    pub(super) fn crash(&mut self) {
        self.history.truncate(self.durable as usize + 1);
        self.log.retain(|e| e.seq <= self.durable);
    }

    /// The context `project/{id}` at `seq`, as a client should see it.
    pub(super) fn context(&self, project: Id, seq: Seq) -> Option<BTreeMap<RowKey, Fields>> {
        let rows = self.at(seq);
        let anchor = rows.get(&RowKey::new("Project", project))?;
        let mut out = BTreeMap::from([(anchor.key(), anchor.fields.clone())]);
        let refers = |row: &Row, field: &str, ids: &BTreeSet<Id>| row.get_i64(field).is_some_and(|p| ids.contains(&p));
        let projects = BTreeSet::from([project]);
        let tasks: BTreeSet<Id> = rows
            .values()
            .filter(|r| &*r.ty == "Task" && refers(r, "project", &projects))
            .map(|r| {
                out.insert(r.key(), r.fields.clone());
                r.id
            })
            .collect();
        for r in rows.values().filter(|r| &*r.ty == "Note" && refers(r, "task", &tasks)) {
            out.insert(r.key(), r.fields.clone());
        }
        Some(out)
    }

    /// `root` and what hangs under it in the channel at `seq`.
    pub(super) fn subtree(&self, root: &Row, seq: Seq) -> Vec<Row> {
        let mut out = vec![root.clone()];
        if &*root.ty == "Task" {
            let rows = self.at(seq).values();
            out.extend(rows.filter(|r| &*r.ty == "Note" && r.get_i64("task") == Some(root.id)).cloned());
        }
        out
    }
}

pub(super) fn schema() -> Arc<Schema> {
    Schema::builder()
        .entity("Project", |t| {
            t.string("name");
        })
        .entity("Task", |t| {
            t.reference("project", "Project").on_delete(OnDelete::Cascade);
            t.string("title");
        })
        .entity("Note", |t| {
            t.reference("task", "Task").on_delete(OnDelete::Cascade);
            t.string("text");
        })
        .relation("Project", "tasks", "Task", "project")
        .relation("Task", "notes", "Note", "task")
        .build()
        .expect("the simulation's schema")
}

pub(super) fn row(ty: &str, id: Id, fields: Value) -> Row {
    let Value::Object(fields) = fields else { unreachable!("fields are an object") };
    Row { ty: Arc::from(ty), id, version: 0, created: 0, fields }
}

pub(super) fn project_of(context: &str) -> Id {
    context.trim_start_matches("project/").parse().expect("a project context")
}
