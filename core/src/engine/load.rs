//! Loading a context (or a moved subtree) from the store: the anchor, then
//! each level of the tree with one `children` call per relation.

use super::hub::Moved;
use crate::channel::Channel;
use crate::error::{ErrorReason, WireError};
use crate::ids::Id;
use crate::row::{Row, RowKey};
use crate::store::Store;
use std::collections::HashSet;
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
