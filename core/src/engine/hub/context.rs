//! A live context's tree in memory: membership that follows moves and
//! deletes, the changes a commit makes to it, tree order, and what it
//! remembers for incremental states (tombstones, rows that joined).

use super::*;

impl LiveContext {
    /// The member row that `row` hangs under in this context's tree, if any.
    pub(super) fn parent_in_context(&self, row: &Row) -> Option<RowKey> {
        self.channel.edges_into(&row.ty).find_map(|edge| {
            let key = RowKey::new(edge.parent.as_str(), row.get_i64(&edge.field)?);
            self.rows.contains_key(&key).then_some(key)
        })
    }

    pub(super) fn link(
        &mut self,
        index_map: &mut RowIndex,
        key: RowKey,
        parent: RowKey,
        row: Arc<Row>,
        joined: Option<Seq>,
    ) {
        self.children.entry(parent.clone()).or_default().insert(key.clone());
        self.parent.insert(key.clone(), parent);
        if let Some(seq) = joined {
            self.joined.insert(key.clone(), seq);
        }
        index(index_map, &key, &self.name);
        self.rows.insert(key, row);
    }

    /// Removes a row and its subtree, emitting a delete for each (parent first).
    pub(super) fn remove_subtree(
        &mut self,
        index_map: &mut RowIndex,
        key: &RowKey,
        seq: Seq,
        out: &mut Vec<DeltaChange>,
    ) {
        let mut stack = vec![key.clone()];
        while let Some(k) = stack.pop() {
            let Some(row) = self.rows.remove(&k) else { continue };
            if let Some(p) = self.parent.remove(&k)
                && let Some(siblings) = self.children.get_mut(&p)
            {
                siblings.remove(&k);
            }
            if let Some(kids) = self.children.remove(&k) {
                stack.extend(kids);
            }
            self.joined.remove(&k);
            unindex(index_map, &k, &self.name);
            self.tombstones.push_back((seq, k.clone()));
            if self.tombstones.len() > TOMBSTONES
                && let Some((s, _)) = self.tombstones.pop_front()
            {
                self.tombstones_from = s;
            }
            out.push(DeltaChange {
                op: ChangeOp::Delete,
                ty: k.ty.clone(),
                id: k.id,
                version: seq.max(row.version),
                fields: Fields::new(),
            });
        }
    }

    /// Applies one committed change; returns true when the anchor was deleted.
    pub(super) fn apply(
        &mut self,
        index_map: &mut RowIndex,
        seq: Seq,
        change: &crate::store::Change,
        moved: &Moved,
        out: &mut Vec<DeltaChange>,
    ) -> bool {
        let key = &change.key;
        let cached = self.rows.get(key).cloned();
        if cached.as_ref().is_some_and(|r| r.version >= seq) {
            return false; // already reflected (loaded after this commit)
        }
        let Some(after) = &change.after else {
            if cached.is_some() {
                if *key == self.anchor {
                    return true;
                }
                self.remove_subtree(index_map, key, seq, out);
            }
            return false;
        };
        let parent = self.parent_in_context(after);
        let member = *key == self.anchor || parent.is_some();
        match (cached, member) {
            (Some(old), true) => {
                let fields: Fields = after
                    .fields
                    .iter()
                    .filter(|(k, v)| old.fields.get(*k) != Some(*v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if let Some(p) = parent
                    && self.parent.get(key) != Some(&p)
                {
                    if let Some(old_p) = self.parent.insert(key.clone(), p.clone())
                        && let Some(s) = self.children.get_mut(&old_p)
                    {
                        s.remove(key);
                    }
                    self.children.entry(p).or_default().insert(key.clone());
                }
                self.rows.insert(key.clone(), Arc::new(after.clone()));
                if !fields.is_empty() {
                    out.push(DeltaChange {
                        op: ChangeOp::Update,
                        ty: key.ty.clone(),
                        id: key.id,
                        version: after.version,
                        fields,
                    });
                }
            }
            (None, true) => {
                let Some(p) = parent else { return false };
                self.link(index_map, key.clone(), p, Arc::new(after.clone()), Some(seq));
                out.push(create_change(after));
                if let Some(subtree) = moved.get(&(self.channel.name.clone(), key.clone())) {
                    for row in subtree {
                        let k = row.key();
                        if self.rows.contains_key(&k) {
                            continue;
                        }
                        if let Some(p) = self.parent_in_context(row) {
                            self.link(index_map, k, p, Arc::new(row.clone()), Some(seq));
                            out.push(create_change(row));
                        }
                    }
                }
            }
            (Some(_), false) => self.remove_subtree(index_map, key, seq, out),
            (None, false) => {}
        }
        false
    }

    /// Rows in tree order: the anchor, then each parent's children by relation order.
    pub(super) fn ordered_rows(&self) -> Vec<Arc<Row>> {
        // Each type's relation position and order field, looked up once.
        let mut relation: FastMap<&str, (usize, Option<&str>)> = FastMap::default();
        for (pos, edge) in self.channel.edges.iter().enumerate() {
            relation.entry(edge.child.as_str()).or_insert((pos, edge.order_by.as_deref()));
        }
        let mut out = Vec::with_capacity(self.rows.len());
        let mut stack = vec![&self.anchor];
        let mut kids: Vec<SortKey<'_>> = Vec::new();
        while let Some(k) = stack.pop() {
            let Some(row) = self.rows.get(k) else { continue };
            out.push(row.clone());
            let Some(children) = self.children.get(k) else { continue };
            kids.clear();
            kids.extend(children.iter().filter_map(|c| {
                let (key, row) = self.rows.get_key_value(c)?;
                let (pos, order_by) = relation.get(&*row.ty).copied().unwrap_or((usize::MAX, None));
                let order = order_by.map(|f| row.get(f));
                Some(SortKey { pos, order, created: row.created, id: row.id, key })
            }));
            kids.sort_by(SortKey::cmp);
            stack.extend(kids.iter().rev().map(|s| s.key));
        }
        out
    }

    /// Extends what the context remembers back to `since` with the change log
    /// `(since, loaded_at]`: the rows that left it then (tombstones) and the
    /// rows that joined it with a moved ancestor. A removed row is one whose
    /// previous parent was in the context (or left it too). False, with
    /// nothing changed, when the log can't tell: a row with children moved
    /// out (its untouched descendants left with it, unseen in the log), or
    /// the context changed since it was loaded (its rows are no longer the
    /// ones the log leads up to).
    pub(super) fn backfill(&mut self, since: Seq, entries: &[LogEntry]) -> bool {
        let upto = self.loaded_at;
        if self.last_seq != upto {
            // Changed since the load: the rows are no longer those the log
            // leads up to (a row that left before the load may be back).
            return false;
        }
        let changes: Vec<(Seq, &Change)> = entries
            .iter()
            .filter(|e| e.seq > since && e.seq <= upto)
            .flat_map(|e| e.changes.iter().map(move |c| (e.seq, c)))
            .filter(|(_, c)| *c.key.ty == *self.channel.anchor || self.channel.edges_into(&c.key.ty).next().is_some())
            .collect();
        let mut removed: HashMap<RowKey, (Seq, bool)> = HashMap::new();
        loop {
            let mut grew = false;
            for (seq, change) in &changes {
                let (Some(before), false) = (&change.before, self.rows.contains_key(&change.key)) else { continue };
                if removed.get(&change.key).is_some_and(|(at, _)| at >= seq) {
                    continue;
                }
                let was_here = self.channel.edges_into(&before.ty).any(|edge| {
                    before.get_i64(&edge.field).is_some_and(|id| {
                        let parent = RowKey::new(edge.parent.as_str(), id);
                        self.rows.contains_key(&parent) || removed.contains_key(&parent)
                    })
                });
                // A row changed more than once here left with its last change.
                if was_here {
                    removed.insert(change.key.clone(), (*seq, change.after.is_some()));
                    grew = true;
                }
            }
            if !grew {
                break;
            }
        }
        let moved_out_with_children =
            removed.iter().any(|(key, (_, moved))| *moved && self.channel.edges.iter().any(|e| *e.parent == *key.ty));
        if moved_out_with_children || removed.len() + self.tombstones.len() > TOMBSTONES {
            return false;
        }
        // Rows that joined with an ancestor moved in: the whole current subtree.
        for (seq, change) in &changes {
            let (Some(before), Some(after)) = (&change.before, &change.after) else { continue };
            if !self.rows.contains_key(&change.key) || self.parent_in_context(before) == self.parent_in_context(after) {
                continue;
            }
            let mut stack = vec![change.key.clone()];
            while let Some(k) = stack.pop() {
                let joined = self.joined.entry(k.clone()).or_insert(*seq);
                *joined = (*joined).max(*seq);
                stack.extend(self.children.get(&k).into_iter().flatten().cloned());
            }
        }
        let mut earlier: Vec<(Seq, RowKey)> = removed.into_iter().map(|(k, (s, _))| (s, k)).collect();
        earlier.sort();
        for t in earlier.into_iter().rev() {
            self.tombstones.push_front(t);
        }
        self.loaded_at = since;
        self.tombstones_from = since;
        true
    }

    /// Rows changed or joined after `since`, and rows that left; None when the
    /// cache can't tell (it was loaded later, or forgot old removals).
    pub(super) fn changes_since(&self, since: Seq) -> Option<(Vec<Arc<Row>>, Vec<Removed>)> {
        if since < self.loaded_at || since < self.tombstones_from || since > self.last_seq {
            return None;
        }
        let instances = self
            .ordered_rows()
            .into_iter()
            .filter(|r| r.version > since || self.joined.get(&r.key()).is_some_and(|j| *j > since))
            .collect();
        let removed = self
            .tombstones
            .iter()
            .filter(|(s, k)| *s > since && !self.rows.contains_key(k))
            .map(|(_, k)| Removed { ty: k.ty.to_string(), id: k.id })
            .collect();
        Some((instances, removed))
    }

    pub(super) fn state_message(
        &self,
        epoch: &str,
        instances: Vec<Arc<Row>>,
        removed: Vec<Removed>,
        incremental: bool,
        rid: Rid,
    ) -> State {
        State {
            context: self.name.to_string(),
            channel: self.channel.name.clone(),
            anchor_id: self.anchor.id,
            epoch: epoch.to_owned(),
            seq: self.last_seq,
            instances,
            incremental,
            removed,
            presence: Vec::new(),
            view: None,
            part: None,
            last: None,
            rid,
        }
    }
}

/// A sibling's place among its siblings, computed once per row before sorting.
struct SortKey<'a> {
    /// The position of its relation in the channel.
    pos: usize,
    /// The relation's order field, if it has one.
    order: Option<&'a serde_json::Value>,
    created: Seq,
    id: Id,
    key: &'a RowKey,
}

impl SortKey<'_> {
    fn cmp(a: &Self, b: &Self) -> std::cmp::Ordering {
        a.pos
            .cmp(&b.pos)
            .then_with(|| compare_values(a.order, b.order))
            .then(a.created.cmp(&b.created))
            .then(a.id.cmp(&b.id))
    }
}

fn create_change(row: &Row) -> DeltaChange {
    DeltaChange {
        op: ChangeOp::Create,
        ty: row.ty.clone(),
        id: row.id,
        version: row.version,
        fields: row.fields.clone(),
    }
}

fn compare_values(a: Option<&serde_json::Value>, b: Option<&serde_json::Value>) -> std::cmp::Ordering {
    use serde_json::Value;
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            x.as_f64().partial_cmp(&y.as_f64()).unwrap_or(std::cmp::Ordering::Equal)
        }
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::Null) | None, Some(Value::Null) | None) => std::cmp::Ordering::Equal,
        (Some(Value::Null) | None, _) => std::cmp::Ordering::Less,
        (_, Some(Value::Null) | None) => std::cmp::Ordering::Greater,
        _ => std::cmp::Ordering::Equal,
    }
}
