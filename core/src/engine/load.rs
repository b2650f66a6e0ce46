//! Loading a context (or a moved subtree) from the store: the anchor, then
//! each level of the tree with one `children` call per relation.

use super::hub::Moved;
use crate::channel::Channel;
use crate::error::{ErrorReason, WireError};
use crate::ids::{Id, Seq};
use crate::row::{Row, RowKey};
use crate::store::{LogRead, Store, StoreError};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The anchor and every row under it, parents before children.
pub(crate) async fn load_context(store: &dyn Store, channel: &Channel, anchor_id: Id) -> Result<Vec<Row>, WireError> {
    let anchor = store.get(&channel.anchor, anchor_id).await.map_err(WireError::from)?.ok_or_else(|| {
        WireError::new(ErrorReason::AnchorNotFound, format!("{}#{anchor_id} does not exist", channel.anchor))
    })?;
    load_subtree(store, channel, &anchor).await.map_err(WireError::from)
}

/// True when `after` hangs under another parent in `channel` than `before`
/// did and has rows under it there: the subtree moves with it.
pub(crate) fn moves_subtree(channel: &Channel, before: &Row, after: &Row) -> bool {
    channel.edges_into(&after.ty).any(|e| before.fields.get(&e.field) != after.fields.get(&e.field))
        && channel.edges_from(&after.ty).next().is_some()
}

/// The subtrees a commit moved, in every channel, each keyed by (channel,
/// moved row). The writer reads them right after its commit, still holding
/// the commit lock: with one process the store is then exactly at the
/// commit's seq, so the subtree is the one the commit moved (read later,
/// it would show later commits, even ones not yet durable). None when a
/// read failed (the hub then reads it itself).
pub(crate) async fn moved_subtrees<'a>(
    store: &dyn Store,
    channels: impl Iterator<Item = &'a Arc<Channel>>,
    committed: &crate::store::Committed,
) -> Option<Moved> {
    let mut moved = Moved::new();
    let channels: Vec<&Arc<Channel>> = channels.collect();
    for change in &committed.changes {
        let (Some(before), Some(after)) = (&change.before, &change.after) else { continue };
        for channel in channels.iter().filter(|c| moves_subtree(c, before, after)) {
            match load_subtree(store, channel, after).await {
                Ok(rows) => {
                    moved.insert((channel.name.clone(), after.key()), rows);
                }
                Err(e) => {
                    tracing::warn!(error = %e, row = %after.key(), "reading a moved subtree failed; the hub reads it");
                    return None;
                }
            }
        }
    }
    Some(moved)
}

/// `root` and its descendants in the channel's tree, breadth first.
pub(crate) async fn load_subtree(
    store: &dyn Store,
    channel: &Channel,
    root: &Row,
) -> Result<Vec<Row>, crate::store::StoreError> {
    let mut seen: HashSet<RowKey> = HashSet::from([root.key()]);
    let mut out = vec![root.clone()];
    let mut level: Vec<(String, Vec<Id>)> = vec![(root.ty.to_string(), vec![root.id])];
    while !level.is_empty() {
        let mut next: Vec<(String, Vec<Id>)> = Vec::new();
        for (ty, ids) in &level {
            for edge in channel.edges_from(ty) {
                let rows = store.children(&edge.child, &edge.field, ids).await?;
                let mut new_ids = Vec::new();
                for row in rows {
                    if seen.insert(row.key()) {
                        new_ids.push(row.id);
                        out.push(row);
                    }
                }
                if !new_ids.is_empty() {
                    next.push((edge.child.clone(), new_ids));
                }
            }
        }
        level = next;
    }
    Ok(out)
}

/// `root`'s subtree as it stood right after commit `at`, read from a store
/// that may be past it: another process's commit that the log tailer reached
/// (PostgreSQL), or a move whose writer could not read it. Rows changed since
/// are rewound to their state at `at` with the change log's before-images,
/// so the subtree never shows a later commit (which may not even be durable
/// yet, and which the context would then skip as already held).
///
/// When the log no longer reaches back to `at`, or the subtree keeps moving
/// under the read, the subtree as it is now is the best answer left (and is
/// logged): it is complete, only ahead.
pub(crate) async fn load_subtree_at(
    store: &dyn Store,
    channel: &Channel,
    root: &Row,
    at: Seq,
) -> Result<Vec<Row>, StoreError> {
    if let Some(rows) = subtree_as_of(store, channel, root, at).await? {
        return Ok(rows);
    }
    tracing::warn!(row = %root.key(), at, "a moved subtree could not be read as of its commit; reading it as it is now");
    load_subtree(store, channel, root).await
}

/// Rounds of (log read, children reads) before giving up on an as-of read.
const AS_OF_ROUNDS: usize = 8;
/// Log entries read per call, and at most in all, for an as-of read.
const AS_OF_LOG_PAGE: usize = 1_024;
const AS_OF_LOG_MAX: usize = 64 * AS_OF_LOG_PAGE;

/// The as-of read, or None when the log can't say.
///
/// Why it is exact: a row no log entry after `at` names was unchanged from
/// `at` until the log was read, so any `children` read made before that log
/// read shows it as it stood at `at`; a row the log names is taken from its
/// first before-image instead. The walk is repeated after each log read until
/// it needs no `children` read made after the last log read.
async fn subtree_as_of(
    store: &dyn Store,
    channel: &Channel,
    root: &Row,
    at: Seq,
) -> Result<Option<Vec<Row>>, StoreError> {
    let mut reads = ChildReads::default();
    for _ in 0..AS_OF_ROUNDS {
        // Read from `at` each time: on a shared log a lower seq can commit
        // after a higher one was read.
        let Some(past) = rows_at(store, at).await? else { return Ok(None) };
        let mut read_any = false;
        loop {
            let (rows, missing) = walk_as_of(channel, root, &past, &reads);
            if missing.is_empty() {
                if !read_any {
                    return Ok(Some(rows));
                }
                break;
            }
            for (child, field, ids) in missing {
                let rows = store.children(&child, &field, &ids).await?;
                reads.record(&child, &field, &ids, rows);
            }
            read_any = true;
        }
    }
    Ok(None)
}

/// The state at `at` of every row the log changed after it: its first
/// before-image (None: created since). None when the log no longer reaches
/// back to `at`, or holds more than an as-of read should replay.
async fn rows_at(store: &dyn Store, at: Seq) -> Result<Option<HashMap<RowKey, Option<Row>>>, StoreError> {
    let mut past = HashMap::new();
    let (mut after, mut read) = (at, 0);
    loop {
        let entries = match store.changes_since(after, AS_OF_LOG_PAGE).await? {
            LogRead::Trimmed => return Ok(None),
            LogRead::Entries(entries) => entries,
        };
        let Some(last) = entries.last().map(|e| e.seq) else { return Ok(Some(past)) };
        read += entries.len();
        if read > AS_OF_LOG_MAX {
            return Ok(None);
        }
        after = last;
        for change in entries.into_iter().flat_map(|e| e.changes) {
            past.entry(change.key).or_insert(change.before);
        }
    }
}

/// A `children` read the walk still needs: child type, reference field, parent ids.
type MissingRead = (String, String, Vec<Id>);

/// What `children` calls answered, per (child type, reference field), by parent id.
#[derive(Default)]
struct ChildReads {
    by_parent: HashMap<(String, String), HashMap<Id, Vec<Row>>>,
}

impl ChildReads {
    fn record(&mut self, child: &str, field: &str, parents: &[Id], rows: Vec<Row>) {
        let read = self.by_parent.entry((child.to_owned(), field.to_owned())).or_default();
        for id in parents {
            read.entry(*id).or_default();
        }
        for row in rows {
            if let Some(parent) = row.get_i64(field) {
                read.entry(parent).or_default().push(row);
            }
        }
    }

    fn get(&self, child: &str, field: &str, parent: Id) -> Option<&[Row]> {
        self.by_parent.get(&(child.to_owned(), field.to_owned()))?.get(&parent).map(Vec::as_slice)
    }
}

/// Walks the subtree as of the past: children come from the reads made, less
/// the rows the log changed, plus those rows as they were. Returns the rows
/// (parents first, each parent's children in creation order) and the
/// `children` reads still missing.
fn walk_as_of(
    channel: &Channel,
    root: &Row,
    past: &HashMap<RowKey, Option<Row>>,
    reads: &ChildReads,
) -> (Vec<Row>, Vec<MissingRead>) {
    let mut seen: HashSet<RowKey> = HashSet::from([root.key()]);
    let mut out = vec![root.clone()];
    let mut missing = Vec::new();
    let mut level: Vec<(String, Vec<Id>)> = vec![(root.ty.to_string(), vec![root.id])];
    while !level.is_empty() {
        let mut next: Vec<(String, Vec<Id>)> = Vec::new();
        for (ty, ids) in &level {
            for edge in channel.edges_from(ty) {
                let mut unread = Vec::new();
                let mut found: Vec<&Row> = Vec::new();
                for &id in ids {
                    match reads.get(&edge.child, &edge.field, id) {
                        Some(rows) => found.extend(rows.iter().filter(|r| !past.contains_key(&r.key()))),
                        None => unread.push(id),
                    }
                }
                if !unread.is_empty() {
                    missing.push((edge.child.clone(), edge.field.clone(), unread));
                    continue;
                }
                let parents: HashSet<Id> = ids.iter().copied().collect();
                found.extend(
                    past.values().flatten().filter(|r| {
                        *r.ty == *edge.child && r.get_i64(&edge.field).is_some_and(|p| parents.contains(&p))
                    }),
                );
                found.sort_by_key(|r| (r.created, r.id));
                let mut new_ids = Vec::new();
                for row in found {
                    if seen.insert(row.key()) {
                        new_ids.push(row.id);
                        out.push(row.clone());
                    }
                }
                if !new_ids.is_empty() {
                    next.push((edge.child.clone(), new_ids));
                }
            }
        }
        level = next;
    }
    (out, missing)
}
