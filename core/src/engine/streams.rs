//! Stream subscriptions inside the hub: the registry with indexed routing,
//! the in-memory decision of each change (before and after images), and the
//! event encoding shared per (subscription shape, action, codec).
//!
//! Routing: every subscription sits in exactly one place — the group of the
//! first routing slot (`id`, then the stream's index fields) whose value its
//! merged filters fix (`exact`, `isnull: true` or `in`, one group per value),
//! or the unindexed set. A change wakes the groups matching its before or
//! after value in every slot, plus the unindexed set. A subscription whose
//! filters fix slot `f` to `v` cannot match a change whose before and after
//! values of `f` both differ from `v`, so the index never changes what is
//! delivered, only how many subscriptions are looked at.

use super::hub::ConnId;
use crate::error::WireError;
use crate::ids::{Id, Seq};
use crate::protocol::Codec;
use crate::protocol::v1::{ChangeOp, Rid};
use crate::read_rule::CompiledReadRule;
use crate::row::{Fields, Row};
use crate::store::Change;
use crate::stream::filter::IndexKey;
use crate::stream::{CompiledFilters, Filters, Payload, Stream};
use crate::transport::{Frame, FrameKind};
use bytes::{Bytes, BytesMut};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

pub(crate) type SubId = u64;

/// The wire name of a subscription id.
pub(crate) fn wire_name(id: SubId) -> String {
    format!("s{id}")
}

/// The subscription id of a wire name.
pub(crate) fn parse_wire_name(name: &str) -> Option<SubId> {
    name.strip_prefix('s')?.parse().ok()
}

/// Which actions a subscription wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Actions(u8);

impl Actions {
    pub const ALL: Actions = Actions(0b111);

    fn bit(op: ChangeOp) -> u8 {
        match op {
            ChangeOp::Create => 1,
            ChangeOp::Update => 2,
            ChangeOp::Delete => 4,
        }
    }

    pub fn of(ops: &[ChangeOp]) -> Actions {
        Actions(ops.iter().fold(0, |acc, op| acc | Self::bit(*op)))
    }

    pub fn wants(self, op: ChangeOp) -> bool {
        self.0 & Self::bit(op) != 0
    }
}

/// One stream subscription.
pub(crate) struct StreamSub {
    pub id: SubId,
    pub wire: Arc<str>,
    pub conn: ConnId,
    pub stream: Arc<Stream>,
    /// The scope merged over the client's filters (and `id`).
    pub filters: CompiledFilters,
    pub actions: Actions,
    /// Full mode: the fields `data` is projected to (`None` = every field).
    pub projection: Option<Arc<[String]>>,
    /// The seq of the last event (or the `subscribed`) sent.
    pub last_seq: Seq,
    /// The routing slot (0 = id, then index fields) and the values it is fixed to.
    pub route: Option<(usize, Vec<IndexKey>)>,
    /// The scope the policy forced, as `subscribed.scope` reports it.
    pub scope: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// What the user may read of the stream's rows (None: everything).
    pub rule: Option<Arc<StreamRule>>,
    /// The key of the policy's decision (scope and rule), to tell a change.
    pub decision: String,
    /// The client's own filters and ids, to decide the subscription again.
    pub client: Arc<(Filters, Vec<Id>)>,
    shape: u32,
}

/// A subscriber's read rule on a stream, with the key of its class: the
/// subscriptions sharing a projection and a rule share every event's encoding.
#[derive(Debug)]
pub(crate) struct StreamRule {
    pub key: Arc<str>,
    pub rule: CompiledReadRule,
}

/// What makes two subscriptions' event payloads equal: the projection and the read rule.
type ShapeKey = (Option<Arc<[String]>>, Option<Arc<str>>);

impl StreamSub {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: SubId,
        conn: ConnId,
        stream: Arc<Stream>,
        filters: CompiledFilters,
        actions: Actions,
        projection: Option<Arc<[String]>>,
        route: Option<(usize, Vec<IndexKey>)>,
    ) -> Self {
        Self {
            id,
            wire: Arc::from(wire_name(id)),
            conn,
            stream,
            filters,
            actions,
            projection,
            last_seq: 0,
            route,
            scope: None,
            rule: None,
            decision: String::new(),
            client: Arc::new((Filters::new(), Vec::new())),
            shape: 0,
        }
    }

    /// Does the row pass the filters and the read rule?
    pub fn matches(&self, row: &Row) -> bool {
        self.filters.matches(row) && self.rule.as_ref().is_none_or(|r| r.rule.can_read(row))
    }

    fn shape_key(&self) -> ShapeKey {
        (self.projection.clone(), self.rule.as_ref().map(|r| r.key.clone()))
    }

    /// What the change means to this subscription: the action, and the image
    /// its `data` comes from (after for create/update, the last matching image
    /// for delete). Decided in memory on the before and after images.
    pub fn decide<'a>(&self, change: &'a Change) -> Option<(ChangeOp, &'a Row)> {
        let before = change.before.as_ref().filter(|r| self.matches(r));
        let after = change.after.as_ref().filter(|r| self.matches(r));
        let decided = match (before, after) {
            (None, Some(a)) => (ChangeOp::Create, a),
            (Some(_), Some(a)) => (ChangeOp::Update, a),
            (Some(b), None) => (ChangeOp::Delete, b),
            (None, None) => return None,
        };
        self.actions.wants(decided.0).then_some(decided)
    }

    /// The event's `data` for an image: the (projected) fields in full mode.
    pub fn data(&self, row: &Row) -> Option<Fields> {
        if self.stream.payload == Payload::Id {
            return None;
        }
        let mut fields = project(row, self.projection.as_deref());
        if let Some(rule) = &self.rule {
            rule.rule.strip(row, &mut fields);
        }
        Some(fields)
    }

    /// A row as a snapshot carries it: projected in full mode, ids only in id mode.
    pub fn snapshot_row(&self, row: &Row) -> Arc<Row> {
        let fields = self.data(row).unwrap_or_default();
        Arc::new(Row { fields, ..row.clone() })
    }
}

fn project(row: &Row, projection: Option<&[String]>) -> Fields {
    match projection {
        None => row.fields.clone(),
        Some(names) => names.iter().filter_map(|n| Some((n.clone(), row.fields.get(n)?.clone()))).collect(),
    }
}

/// Subscriptions of one stream, grouped for routing.
#[derive(Default)]
struct Routes {
    /// Per slot (0 = id, then index fields): value → subscriptions.
    groups: Vec<HashMap<IndexKey, HashSet<SubId>>>,
    unindexed: HashSet<SubId>,
    /// Interned projections: shape id and how many subscriptions use it.
    shapes: HashMap<ShapeKey, (u32, usize)>,
    next_shape: u32,
    count: usize,
}

/// Every stream subscription the hub holds.
#[derive(Default)]
pub(crate) struct StreamRegistry {
    pub subs: HashMap<SubId, StreamSub>,
    routes: HashMap<String, Routes>,
    /// Entity type → the streams over it that have subscriptions.
    by_type: HashMap<Arc<str>, Vec<Arc<Stream>>>,
    by_conn: HashMap<ConnId, HashSet<SubId>>,
}

impl StreamRegistry {
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.subs.len()
    }

    /// Adds a subscription (its `last_seq` already set).
    pub fn insert(&mut self, mut sub: StreamSub) {
        let routes = self.routes.entry(sub.stream.name.clone()).or_default();
        if routes.count == 0 {
            self.by_type.entry(sub.stream.ty.clone()).or_default().push(sub.stream.clone());
        }
        routes.count += 1;
        let next = routes.next_shape;
        let entry = routes.shapes.entry(sub.shape_key()).or_insert((next, 0));
        entry.1 += 1;
        sub.shape = entry.0;
        if entry.0 == next {
            routes.next_shape += 1;
        }
        match &sub.route {
            Some((slot, keys)) => {
                if routes.groups.len() <= *slot {
                    routes.groups.resize_with(slot + 1, HashMap::new);
                }
                for key in keys {
                    routes.groups[*slot].entry(key.clone()).or_default().insert(sub.id);
                }
            }
            None => {
                routes.unindexed.insert(sub.id);
            }
        }
        self.by_conn.entry(sub.conn).or_default().insert(sub.id);
        self.subs.insert(sub.id, sub);
    }

    /// How many subscriptions `conn` holds.
    pub fn count_of_conn(&self, conn: ConnId) -> usize {
        self.by_conn.get(&conn).map_or(0, HashSet::len)
    }

    /// How many subscriptions of `stream` no index routes.
    pub fn unindexed_of(&self, stream: &str) -> usize {
        self.routes.get(stream).map_or(0, |r| r.unindexed.len())
    }

    /// Removes a subscription; returns it if it was held.
    pub fn remove(&mut self, id: SubId) -> Option<StreamSub> {
        let sub = self.subs.remove(&id)?;
        if let Some(set) = self.by_conn.get_mut(&sub.conn) {
            set.remove(&id);
            if set.is_empty() {
                self.by_conn.remove(&sub.conn);
            }
        }
        if let Some(routes) = self.routes.get_mut(&sub.stream.name) {
            match &sub.route {
                Some((slot, keys)) => {
                    for key in keys {
                        if let Some(group) = routes.groups.get_mut(*slot)
                            && let Some(set) = group.get_mut(key)
                        {
                            set.remove(&id);
                            if set.is_empty() {
                                group.remove(key);
                            }
                        }
                    }
                }
                None => {
                    routes.unindexed.remove(&id);
                }
            }
            let shape = sub.shape_key();
            if let Some(entry) = routes.shapes.get_mut(&shape) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    routes.shapes.remove(&shape);
                }
            }
            routes.count -= 1;
            if routes.count == 0 {
                self.routes.remove(&sub.stream.name);
                if let Some(list) = self.by_type.get_mut(&sub.stream.ty) {
                    list.retain(|s| s.name != sub.stream.name);
                    if list.is_empty() {
                        self.by_type.remove(&sub.stream.ty);
                    }
                }
            }
        }
        Some(sub)
    }

    /// Removes every subscription of a connection.
    pub fn remove_conn(&mut self, conn: ConnId) {
        let ids: Vec<SubId> = self.by_conn.get(&conn).map(|s| s.iter().copied().collect()).unwrap_or_default();
        for id in ids {
            self.remove(id);
        }
    }

    /// The streams with subscriptions over rows of `ty`.
    pub fn streams_of(&self, ty: &str) -> Vec<Arc<Stream>> {
        self.by_type.get(ty).cloned().unwrap_or_default()
    }

    /// The subscriptions of `stream` a change must be decided for, in id order:
    /// the groups matching the change's before or after value in each slot, and
    /// the unindexed ones.
    pub fn candidates(&self, stream: &Stream, change: &Change) -> Vec<SubId> {
        let Some(routes) = self.routes.get(&stream.name) else {
            return Vec::new();
        };
        let mut out: Vec<SubId> = routes.unindexed.iter().copied().collect();
        for (slot, group) in routes.groups.iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let field = if slot == 0 { None } else { stream.index_fields.get(slot - 1).map(String::as_str) };
            if slot > 0 && field.is_none() {
                continue;
            }
            let mut seen: Option<IndexKey> = None;
            for image in [change.before.as_ref(), change.after.as_ref()].into_iter().flatten() {
                let Some(key) = IndexKey::of_row(image, field) else { continue };
                if seen.as_ref() == Some(&key) {
                    continue;
                }
                if let Some(set) = group.get(&key) {
                    out.extend(set.iter().copied());
                }
                seen = Some(key);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The shape id of a subscription (for sharing encoded events).
    pub fn shape(&self, sub: &StreamSub) -> u32 {
        sub.shape
    }
}

/// The routing of a subscription: the first slot (0 = id, then the stream's
/// index fields) whose values its filters fix. None when the index is off.
pub(crate) fn route_of(
    stream: &Stream,
    filters: &CompiledFilters,
    index_enabled: bool,
) -> Option<(usize, Vec<IndexKey>)> {
    if !index_enabled {
        return None;
    }
    let slots = std::iter::once(None).chain(stream.index_fields.iter().map(|f| Some(f.as_str())));
    slots.enumerate().find_map(|(i, field)| Some((i, filters.fixed_values(field)?)))
}

// ---- encoding ----------------------------------------------------------

#[derive(Serialize)]
struct Head<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    subscription: &'a str,
    seq: Seq,
    prev: Seq,
}

#[derive(Serialize)]
struct Tail<'a> {
    action: ChangeOp,
    id: Id,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Fields>,
}

/// The part of an event that is the same for every subscription of one shape:
/// `action`, `id` and `data`, encoded once per codec.
pub(crate) struct EventTail {
    codec: Codec,
    /// The encoded map without its opening (`{` or the MessagePack map header).
    body: Bytes,
    entries: u8,
}

impl EventTail {
    pub fn encode(codec: Codec, action: ChangeOp, id: Id, data: Option<&Fields>) -> Result<EventTail, WireError> {
        let tail = Tail { action, id, data };
        let entries = if data.is_some() { 3 } else { 2 };
        let frame = codec.encode(&tail)?;
        // JSON: `{"action":…}` → `"action":…}`; MessagePack: a fixmap header byte (≤ 15 entries).
        let body = frame.data.slice(1..);
        Ok(EventTail { codec, body, entries })
    }

    /// The whole event frame for one subscription.
    pub fn frame(&self, subscription: &str, seq: Seq, prev: Seq) -> Result<Frame, WireError> {
        let head = Head { ty: "event", subscription, seq, prev };
        let encoded = self.codec.encode(&head)?;
        let head = &encoded.data;
        let mut out = BytesMut::with_capacity(head.len() + self.body.len() + 1);
        match self.codec {
            Codec::Json => {
                // `{"type":"event",…,"prev":n}` → `{"type":"event",…,"prev":n,` + tail body.
                out.extend_from_slice(&head[..head.len() - 1]);
                out.extend_from_slice(b",");
                out.extend_from_slice(&self.body);
                Ok(Frame { kind: FrameKind::Text, data: out.freeze() })
            }
            Codec::MsgPack => {
                // One fixmap of 4 + tail entries.
                out.extend_from_slice(&[0x80 | (4 + self.entries)]);
                out.extend_from_slice(&head[1..]);
                out.extend_from_slice(&self.body);
                Ok(Frame { kind: FrameKind::Binary, data: out.freeze() })
            }
        }
    }
}

/// Subscribe requests waiting for their snapshot or replay, with the
/// commits delivered meanwhile.
pub(crate) struct PendingSub {
    pub sub: StreamSub,
    pub rid: Rid,
    pub buffered: Vec<Arc<crate::store::Committed>>,
    /// The hub's seq when the request was registered.
    pub registered_at: Seq,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::v1::{Event, ServerMessage};
    use serde_json::json;

    #[test]
    fn spliced_events_equal_whole_encodings() {
        let data: Fields = json!({"name": "x\"y", "job": 1}).as_object().cloned().unwrap_or_default();
        for codec in [Codec::Json, Codec::MsgPack] {
            for data in [None, Some(&data)] {
                let tail = EventTail::encode(codec, ChangeOp::Update, 7, data).expect("tail");
                let spliced = tail.frame("s\"12", 9, 4).expect("frame");
                let whole = codec
                    .encode(&ServerMessage::Event(Event {
                        subscription: "s\"12".into(),
                        seq: 9,
                        prev: 4,
                        action: ChangeOp::Update,
                        id: 7,
                        data: data.cloned(),
                    }))
                    .expect("whole");
                assert_eq!(spliced, whole, "{codec:?}");
            }
        }
    }

    #[test]
    fn actions_mask() {
        let a = Actions::of(&[ChangeOp::Create, ChangeOp::Delete]);
        assert!(a.wants(ChangeOp::Create) && a.wants(ChangeOp::Delete) && !a.wants(ChangeOp::Update));
        assert!(Actions::ALL.wants(ChangeOp::Update));
        assert_eq!(parse_wire_name(&wire_name(42)), Some(42));
        assert_eq!(parse_wire_name("x42"), None);
    }
}
