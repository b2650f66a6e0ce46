//! Loading a context (or a moved subtree) from the store: the anchor, then
//! each level of the tree with one `children` call per relation.

use crate::channel::Channel;
use crate::error::{ErrorReason, WireError};
use crate::ids::Id;
use crate::row::{Row, RowKey};
use crate::store::Store;
use std::collections::HashSet;

/// The anchor and every row under it, parents before children.
pub(crate) async fn load_context(store: &dyn Store, channel: &Channel, anchor_id: Id) -> Result<Vec<Row>, WireError> {
    let anchor = store.get(&channel.anchor, anchor_id).await.map_err(WireError::from)?.ok_or_else(|| {
        WireError::new(ErrorReason::AnchorNotFound, format!("{}#{anchor_id} does not exist", channel.anchor))
    })?;
    load_subtree(store, channel, &anchor).await.map_err(WireError::from)
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
