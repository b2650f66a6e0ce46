//! Live stream views: the rows a stream subscription's snapshot held, kept
//! current by its events, with the optimistic layer on top.
//!
//! A view's canonical rows are what the server reported (snapshot and
//! events). What the app sees is decided per row:
//!
//! - no pending write touches it and no context holds a newer copy: it is in
//!   the view iff the server reported it (the server decides, scope included);
//! - otherwise its value is the newest canonical copy (the view's or a
//!   context's, by version) with the pending writes replayed, and it is in
//!   the view iff that value passes the stream's filters — the client's own
//!   merged under the scope `subscribed` reports — decided by the server's
//!   own evaluator (`statecast_protocol::filter::Filters`). A filter on a field
//!   the value does not carry (an id-payload row no context holds) leaves the
//!   server's decision in place.
//!
//! A refusal drops the write and the row is decided again; a confirmation
//! arrives after the row's event (the server sends events before the
//! `writeResponse`) or after the context delta that holds the newer copy, so
//! the row never leaves and comes back.

use super::{ChangeKind, ClientState, Effect, ViewChange, ViewRow};
use crate::streams::StreamRequest;
use crate::tree::SchemaInfo;
use serde_json::Value;
use statecast_protocol::error::WireError;
use statecast_protocol::filter::{CompiledFilters, Filter, Filters, Lookup};
use statecast_protocol::ids::{Id, Seq};
use statecast_protocol::row::{Fields, Row, RowKey};
use statecast_protocol::v1::{ChangeOp, ClientMessage, Event, Subscribed, Unsubscribe, UnsubscribeReason};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// Where a stream view stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamViewStatus {
    /// Waiting for `subscribed` (first time, or after a reconnect).
    Loading,
    Ready,
}

/// What a stream view reports about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamViewInfo {
    pub status: StreamViewStatus,
    /// The server's id for the subscription on this connection.
    pub subscription: Option<String>,
    /// The last seq applied (`subscribed` or an event).
    pub seq: Option<Seq>,
    /// The rows in the view.
    pub len: usize,
}

pub(crate) struct StreamView {
    request: StreamRequest,
    /// The rid of the newest subscribe sent: a `subscribed` naming another is an orphan.
    rid: Option<u64>,
    subscription: Option<String>,
    seq: Option<Seq>,
    /// The `since` the newest subscribe carried.
    since: Option<Seq>,
    status: StreamViewStatus,
    ever_ready: bool,
    parts: Vec<Arc<Row>>,
    /// The rows the server reported, by stable key; `version` = the seq of their last event.
    canonical: HashMap<RowKey, Row>,
    view: BTreeMap<Id, ViewRow>,
    scope: Option<Fields>,
    /// The client's filters (and `id`) merged under the scope, compiled for the stream's type.
    filters: Option<CompiledFilters>,
    /// The fields the filters read (`None` = the id).
    filter_fields: Vec<String>,
    ty: Option<Arc<str>>,
}

impl StreamView {
    pub(super) fn connection_lost(&mut self) {
        self.subscription = None;
        self.parts.clear();
        if self.ever_ready {
            self.status = StreamViewStatus::Loading;
        }
    }

    /// A new store: the next subscribe takes a whole snapshot.
    pub(super) fn reset_position(&mut self) {
        self.seq = None;
    }

    fn decide(&self, value: &Row) -> Option<bool> {
        let filters = self.filters.as_ref()?;
        if self.filter_fields.iter().any(|f| !value.fields.contains_key(f)) {
            return None;
        }
        Some(filters.matches(value))
    }
}

impl ClientState {
    /// Opens a live view of a stream; when connected, its subscribe (with a
    /// fresh rid) is queued. Returns the view's local id.
    pub fn add_stream(&mut self, request: StreamRequest) -> u64 {
        self.next_stream += 1;
        let local = self.next_stream;
        let ty = self.schema.streams.get(&request.name).map(|s| Arc::<str>::from(s.ty.as_str()));
        let mut view = StreamView {
            request,
            rid: None,
            subscription: None,
            seq: None,
            since: None,
            status: StreamViewStatus::Loading,
            ever_ready: false,
            parts: Vec::new(),
            canonical: HashMap::new(),
            view: BTreeMap::new(),
            scope: None,
            filters: None,
            filter_fields: Vec::new(),
            ty,
        };
        compile_view_filters(&self.schema, &mut view);
        self.streams.insert(local, view);
        self.queue_stream_subscribe(local);
        local
    }

    /// Closes a stream view at once; the server's subscription (if any) is unsubscribed.
    pub fn remove_stream(&mut self, local: u64) {
        let Some(view) = self.streams.remove(&local) else { return };
        if let Some(subscription) = view.subscription {
            self.queue_stream_unsubscribe(subscription);
        }
    }

    fn queue_stream_unsubscribe(&mut self, subscription: String) {
        if !self.online {
            return;
        }
        let rid = self.next_rid();
        self.outbox.push(ClientMessage::Unsubscribe(Unsubscribe {
            context: None,
            subscription: Some(subscription),
            rid: Some(Value::from(rid)),
        }));
    }

    /// Queues a stream view's subscribe: with `since` once it has a position, else as asked (snapshot).
    pub(super) fn queue_stream_subscribe(&mut self, local: u64) {
        if !self.online {
            return;
        }
        let rid = self.next_rid();
        let epoch = self.epoch.clone();
        let Some(view) = self.streams.get_mut(&local) else { return };
        view.rid = Some(rid);
        view.subscription = None;
        view.parts.clear();
        view.since = view.seq;
        let msg = view.request.message(rid, view.seq.map(|s| (s, epoch)));
        self.outbox.push(ClientMessage::Subscribe(msg));
    }

    /// The local id of the stream view whose newest subscribe used `rid`.
    pub fn stream_for_rid(&self, rid: &Option<Value>) -> Option<u64> {
        let rid = rid.as_ref()?.as_u64()?;
        self.streams.iter().find(|(_, v)| v.rid == Some(rid)).map(|(l, _)| *l)
    }

    /// A `subscribed`: matched to its view by `rid`; one nobody waits for
    /// (its view closed, or a newer subscribe replaced it) is unsubscribed.
    pub fn on_subscribed(&mut self, sub: Subscribed) -> Vec<Effect> {
        let Some(local) = self.stream_for_rid(&sub.rid) else {
            if sub.part.is_none() || sub.last == Some(true) {
                self.queue_stream_unsubscribe(sub.subscription);
            }
            return Vec::new();
        };
        let Some(view) = self.streams.get_mut(&local) else { return Vec::new() };
        if let Some(rows) = &sub.snapshot {
            view.parts.extend(rows.iter().cloned());
        }
        if sub.part.is_some() && sub.last != Some(true) {
            return Vec::new();
        }
        let rows = std::mem::take(&mut view.parts);
        view.rid = None;
        view.subscription = Some(sub.subscription.clone());
        let first = !view.ever_ready;
        if let Some(since) = view.since.take()
            && sub.seq > since
            && view.request.snapshot
        {
            // The log no longer reaches back to `since`: events were missed.
            // Take a fresh snapshot (the rows shown stay until it arrives).
            view.seq = None;
            self.queue_stream_unsubscribe(sub.subscription);
            self.queue_stream_subscribe(local);
            return Vec::new();
        }
        let Some(view) = self.streams.get_mut(&local) else { return Vec::new() };
        if sub.scope != view.scope || view.ty.is_none() {
            view.scope = sub.scope.clone();
            if view.ty.is_none() {
                view.ty = self.schema.streams.get(&sub.stream).map(|s| Arc::<str>::from(s.ty.as_str()));
            }
            compile_view_filters(&self.schema, view);
        }
        let aliases = &self.aliases;
        let stable = |ty: &str, id: Id| {
            let k = RowKey::new(ty, id);
            aliases.get(&k).map_or(k.clone(), |t| RowKey::new(k.ty.clone(), *t))
        };
        let Some(view) = self.streams.get_mut(&local) else { return Vec::new() };
        let mut dirty: Vec<RowKey> = Vec::new();
        if sub.snapshot.is_some() || view.seq.is_none() {
            // A whole snapshot (or a fresh start without one) replaces what the view held.
            dirty.extend(view.canonical.keys().cloned());
            view.canonical.clear();
            let ty = view.ty.clone().unwrap_or_else(|| Arc::from(""));
            for row in rows {
                let mut row = (*row).clone();
                if row.ty.is_empty() {
                    row.ty = ty.clone();
                }
                let key = stable(&row.ty, row.id);
                dirty.push(key.clone());
                view.canonical.insert(key, row);
            }
        }
        view.seq = Some(sub.seq);
        view.status = StreamViewStatus::Ready;
        view.ever_ready = true;
        if let Some(ty) = view.ty.clone() {
            dirty.extend(self.touching.keys().filter(|k| k.ty == ty).cloned());
        }
        dirty.extend(self.confirmed_touches(sub.seq));
        let mut effects = self.recompute_stream(local, &dirty, true);
        if first {
            effects.push(Effect::StreamReady { stream: local, result: Ok(()) });
        }
        effects
    }

    /// An `event`: applied to its view (by subscription id) when it follows
    /// the last one seen (`prev`); a replay of one already applied is
    /// ignored; a gap resubscribes with `since`.
    pub fn on_event(&mut self, event: Event) -> Vec<Effect> {
        let Some(local) = self
            .streams
            .iter()
            .find(|(_, v)| v.subscription.as_deref() == Some(event.subscription.as_str()))
            .map(|(l, _)| *l)
        else {
            return Vec::new();
        };
        let key = self.stable(self.streams.get(&local).and_then(|v| v.ty.as_deref()).unwrap_or(""), event.id);
        let Some(view) = self.streams.get_mut(&local) else { return Vec::new() };
        let Some(seq) = view.seq else { return Vec::new() };
        if event.prev != seq {
            if event.seq <= seq {
                return Vec::new(); // already applied
            }
            if let Some(old) = view.subscription.take() {
                self.queue_stream_unsubscribe(old);
            }
            self.queue_stream_subscribe(local);
            return Vec::new();
        }
        view.seq = Some(event.seq);
        let mut dirty = self.confirmed_touches(event.seq);
        let Some(view) = self.streams.get_mut(&local) else { return Vec::new() };
        let current = view.canonical.get(&key).map(|r| r.version);
        if current.is_some_and(|v| v > event.seq) {
            return self.recompute_stream(local, &dirty, false);
        }
        match event.action {
            ChangeOp::Create | ChangeOp::Update => {
                let row = view.canonical.entry(key.clone()).or_insert_with(|| Row {
                    ty: key.ty.clone(),
                    id: event.id,
                    version: event.seq,
                    created: event.seq,
                    fields: Fields::new(),
                });
                row.version = event.seq;
                row.fields.extend(event.data.unwrap_or_default());
            }
            ChangeOp::Delete => {
                view.canonical.remove(&key);
            }
        }
        dirty.push(key);
        self.recompute_stream(local, &dirty, false)
    }

    /// The rows touched by confirmed writes not yet retired whose seq is at most `seq`.
    fn confirmed_touches(&self, seq: Seq) -> Vec<RowKey> {
        self.pending
            .iter()
            .filter(|p| !p.retired && p.confirmed.is_some_and(|s| s <= seq))
            .flat_map(|p| p.touches.iter().cloned())
            .collect()
    }

    /// A stream subscribe refused (`error` with its rid). `None` if no view waits for that rid.
    pub fn on_stream_error(&mut self, rid: &Option<Value>, error: WireError) -> Option<Vec<Effect>> {
        let local = self.stream_for_rid(rid)?;
        let view = self.streams.remove(&local)?;
        Some(if view.ever_ready {
            vec![Effect::StreamClosed { stream: local, reason: UnsubscribeReason::PermissionLost }]
        } else {
            vec![Effect::StreamReady { stream: local, result: Err(error) }]
        })
    }

    /// An `unsubscribed` for a stream subscription: the server ended it
    /// (anything but our own request), so its view closes.
    pub fn on_stream_unsubscribed(&mut self, subscription: &str, reason: UnsubscribeReason) -> Vec<Effect> {
        if reason == UnsubscribeReason::ClientRequest {
            return Vec::new();
        }
        let Some(local) =
            self.streams.iter().find(|(_, v)| v.subscription.as_deref() == Some(subscription)).map(|(l, _)| *l)
        else {
            return Vec::new();
        };
        if reason == UnsubscribeReason::Rescoped {
            // What the user may read of the stream changed: a fresh snapshot
            // under the new decision replaces the rows (shown until it arrives).
            if let Some(view) = self.streams.get_mut(&local) {
                view.seq = None;
                view.subscription = None;
            }
            self.queue_stream_subscribe(local);
            return vec![Effect::StreamResubscribe { stream: local }];
        }
        self.streams.remove(&local);
        vec![Effect::StreamClosed { stream: local, reason }]
    }

    /// A stream view's rows, in key order.
    pub fn stream_rows(&self, local: u64) -> Vec<ViewRow> {
        self.streams.get(&local).map(|v| v.view.values().cloned().collect()).unwrap_or_default()
    }

    /// One row of a stream view by id (or stable key).
    pub fn stream_row(&self, local: u64, id: Id) -> Option<ViewRow> {
        let view = self.streams.get(&local)?;
        let ty = view.ty.as_deref()?;
        view.view.get(&self.stable(ty, id).id).cloned()
    }

    /// A stream view's rows decided from scratch (every row it or a context
    /// holds, or a pending write names): what the incremental view must equal.
    pub fn stream_rows_from_scratch(&self, local: u64) -> Vec<ViewRow> {
        let Some(view) = self.streams.get(&local) else { return Vec::new() };
        let Some(ty) = view.ty.clone() else { return Vec::new() };
        if view.status != StreamViewStatus::Ready && !view.ever_ready {
            return Vec::new();
        }
        let mut keys: std::collections::BTreeSet<RowKey> = view.canonical.keys().cloned().collect();
        keys.extend(self.touching.keys().filter(|k| k.ty == ty).cloned());
        for c in self.contexts.values() {
            keys.extend(c.canonical.keys().filter(|k| k.ty == ty).cloned());
        }
        keys.iter().filter_map(|k| self.decide_stream_row(view, k)).collect()
    }

    pub fn stream_info(&self, local: u64) -> Option<StreamViewInfo> {
        self.streams.get(&local).map(|v| StreamViewInfo {
            status: v.status,
            subscription: v.subscription.clone(),
            seq: v.seq,
            len: v.view.len(),
        })
    }

    pub(super) fn recompute_streams(&mut self, dirty: &[RowKey]) -> Vec<Effect> {
        if self.streams.is_empty() {
            return Vec::new();
        }
        let locals: Vec<u64> = self.streams.keys().copied().collect();
        locals.into_iter().flat_map(|l| self.recompute_stream(l, dirty, false)).collect()
    }

    /// Decides `dirty` rows (of the view's type) again; `all` also drops view rows no longer canonical nor touched.
    fn recompute_stream(&mut self, local: u64, dirty: &[RowKey], all: bool) -> Vec<Effect> {
        let Some(view) = self.streams.get(&local) else { return Vec::new() };
        let Some(ty) = view.ty.clone() else { return Vec::new() };
        let mut keys: Vec<RowKey> = dirty.iter().filter(|k| k.ty == ty).cloned().collect();
        if all {
            keys.extend(view.view.keys().map(|id| RowKey::new(ty.clone(), *id)));
        }
        let mut seen = HashSet::new();
        let mut decided = Vec::new();
        for key in keys {
            if seen.insert(key.clone()) {
                let row = self.decide_stream_row(view, &key);
                decided.push((key, row));
            }
        }
        let Some(view) = self.streams.get_mut(&local) else { return Vec::new() };
        let mut changes = Vec::new();
        for (key, row) in decided {
            let kind = match (view.view.get(&key.id), &row) {
                (None, Some(_)) => Some(ChangeKind::Added),
                (Some(_), None) => Some(ChangeKind::Removed),
                (Some(a), Some(b)) if a != b => Some(ChangeKind::Updated),
                _ => None,
            };
            match row {
                Some(r) => view.view.insert(key.id, r),
                None => view.view.remove(&key.id),
            };
            if let Some(kind) = kind {
                changes.push(ViewChange { ty: key.ty.clone(), key: key.id, kind });
            }
        }
        if changes.is_empty() { Vec::new() } else { vec![Effect::StreamChanged { stream: local, changes }] }
    }

    /// One row of a stream view as the app sees it, or None when it is not in the view.
    fn decide_stream_row(&self, view: &StreamView, key: &RowKey) -> Option<ViewRow> {
        let reported = view.canonical.get(key);
        let copy = self
            .contexts
            .values()
            .filter(|c| c.loaded)
            .filter_map(|c| c.canonical.get(key))
            .map(|c| &c.row)
            .max_by_key(|r| r.version);
        let known = reported.map_or_else(|| view.seq.unwrap_or(0), |r| r.version);
        let newer = copy.is_some_and(|c| c.version > known);
        let base = match (reported, copy) {
            (Some(s), Some(c)) if c.version > s.version => {
                let mut row = c.clone();
                for (k, v) in &s.fields {
                    row.fields.entry(k.clone()).or_insert_with(|| v.clone());
                }
                Some(row)
            }
            (Some(s), Some(c)) => {
                let mut row = s.clone();
                for (k, v) in &c.fields {
                    row.fields.entry(k.clone()).or_insert_with(|| v.clone());
                }
                Some(row)
            }
            (Some(s), None) => Some(s.clone()),
            (None, Some(c)) => Some(c.clone()),
            (None, None) => None,
        };
        // A write confirmed at or below the view's seq is in its canonical rows already.
        let (value, pending) = self.replay_pending_until(key, base, view.seq);
        let member = if pending || newer {
            match &value {
                None => false,
                Some(v) => view.decide(v).unwrap_or(reported.is_some()),
            }
        } else {
            reported.is_some()
        };
        if !member {
            return None;
        }
        let v = value?;
        let fields = match &view.request.fields {
            Some(names) => v.fields.into_iter().filter(|(k, _)| names.iter().any(|n| n == k)).collect(),
            None => v.fields,
        };
        Some(ViewRow { key: key.id, ty: key.ty.clone(), id: v.id, version: v.version, fields, pending })
    }
}

/// Compiles a view's filters (the client's and `id`, merged under the scope)
/// with the server's evaluator, for the stream's type as `welcome` described it.
fn compile_view_filters(schema: &SchemaInfo, view: &mut StreamView) {
    view.filters = None;
    view.filter_fields.clear();
    let Some(ty) = view.ty.as_ref().and_then(|t| schema.entities.get(&**t)) else { return };
    let Ok(mut client) = Filters::parse(&view.request.filters) else { return };
    if let Some(id) = view.request.id {
        client.push(Filter { field: "id".into(), lookup: Lookup::Exact, value: Value::from(id) });
    }
    let scope = match view.scope.as_ref().map(Filters::parse) {
        Some(Ok(f)) => f,
        Some(Err(_)) => return,
        None => Filters::new(),
    };
    let merged = scope.merged_over(&client);
    if let Ok(compiled) = merged.compile(ty) {
        view.filter_fields = merged.iter().filter(|f| f.field != "id").map(|f| f.field.clone()).collect();
        view.filters = Some(compiled);
    }
}
