//! The optimistic layer as a plain data structure: canonical rows per
//! context (from `state` and `delta`), one ordered queue of pending writes
//! for the whole client, and per-context views = canonical with the pending
//! writes that touch its rows replayed on top, in order.
//!
//! No runtime, no sockets: messages go in, [`Effect`]s come out. The view is
//! kept incrementally: an event recomputes only the rows it and the pending
//! writes touch (and the subtrees whose membership flips).

use crate::tree::{SchemaInfo, Tree};
use serde_json::Value;
use statecast_protocol::applied::CreatedId;
use statecast_protocol::error::{ErrorReason, WireError};
use statecast_protocol::ids::{Id, Seq, mint_id};
use statecast_protocol::row::{Fields, Row, RowKey};
use statecast_protocol::v1::{
    AppliedOutcome, ChangeOp, ClientMessage, Delta, MAX_PRESENCE_BYTES, Operation, Presence, PresenceEntry,
    ServerMessage, SetPresence, State, Subscribe, Unsubscribe, UnsubscribeReason, Welcome, Write, WriteOp,
    WriteResponse,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

mod stream_views;
pub use stream_views::{StreamViewInfo, StreamViewStatus};

/// How one write is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOptions {
    /// Show the write in the view at once (default). `false` waits for the server (Apollo's `IGNORE`).
    pub optimistic: bool,
    /// Give new rows negative temp ids instead of client-minted ones.
    pub temp_ids: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self { optimistic: true, temp_ids: false }
    }
}

/// A confirmed write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    pub write_id: i64,
    pub seq: Seq,
    pub created: Vec<CreatedId>,
    /// The server had applied it before (a resend).
    pub duplicate: bool,
}

/// What changed for a row of a view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Updated,
    Removed,
}

/// One changed row of a view, named by its stable key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewChange {
    pub ty: Arc<str>,
    pub key: Id,
    pub kind: ChangeKind,
}

/// What the caller must act on after an event.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// A write's handle resolves.
    Settled { write_id: i64, result: Result<WriteOutcome, WireError> },
    /// A context's view changed.
    Changed { context: String, changes: Vec<ViewChange> },
    /// A gap in a context's deltas: subscribe again with `since`.
    Resync { context: String, since: Seq, epoch: Option<String> },
    /// The server ended a subscription.
    Closed { context: String, reason: UnsubscribeReason },
    /// The store behind the server is new: everything held was dropped.
    EpochChanged { context: String },
    /// The server could not say whether a write was applied (503
    /// `OUTCOME_UNKNOWN`, `UNAVAILABLE`, 429): it stays pending; call
    /// [`ClientState::retry_due`] after a backoff and it is resent with its writeId.
    RetryLater { write_id: i64, attempt: u32, error: WireError },
    /// A stream view got its first `subscribed` (Ok) or its subscribe was refused (Err; the view is gone).
    StreamReady { stream: u64, result: Result<(), WireError> },
    /// A stream view's rows changed.
    StreamChanged { stream: u64, changes: Vec<ViewChange> },
    /// The server ended a stream view's subscription (the view is gone).
    StreamClosed { stream: u64, reason: UnsubscribeReason },
    /// Who else is in a context, or what they show, changed.
    PresenceChanged { context: String },
    /// A stream view's subscription was rescoped by the server: its new
    /// subscribe is queued (flush it).
    StreamResubscribe { stream: u64 },
}

/// A row as the app sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewRow {
    /// Stable identity: the row's first id (a temp id stays its key after the swap).
    pub key: Id,
    pub ty: Arc<str>,
    pub id: Id,
    pub version: Seq,
    pub fields: Fields,
    /// A pending write touches this row.
    pub pending: bool,
}

impl ViewRow {
    /// The row as one JSON object `{id, ...fields}` (for typed reads).
    pub fn to_json(&self) -> Value {
        let mut obj = self.fields.clone();
        obj.insert("id".into(), Value::from(self.id));
        Value::Object(obj)
    }
}

struct Pending {
    write_id: i64,
    context: String,
    ops: Vec<WriteOp>,
    optimistic: bool,
    sent: bool,
    /// Sent on some connection (or restored from a saved queue): the server may have it.
    ever_sent: bool,
    /// Answered "not certain yet" (503 `OUTCOME_UNKNOWN`/`UNAVAILABLE`, 429): resent, same writeId, once released.
    retry_wait: bool,
    attempts: u32,
    /// Its effect is in canonical now (the delta carrying its writeId arrived).
    retired: bool,
    /// Confirmed at this seq; retired once its context reaches it.
    confirmed: Option<Seq>,
    settled: bool,
    after: Vec<i64>,
    /// Unconfirmed temp-id creates this write refers to: held until they are confirmed.
    waits_for: Vec<i64>,
    /// Rows (stable keys) this write creates, with their order.
    creates: Vec<(RowKey, u64)>,
    touches: Vec<RowKey>,
}

struct CanonRow {
    row: Row,
    order: u64,
}

#[derive(Default)]
struct Ctx {
    channel: String,
    anchor: Option<RowKey>,
    epoch: Option<String>,
    /// The read rules' tag of the last state (`view`), sent back to resume.
    view_tag: Option<String>,
    seq: Seq,
    loaded: bool,
    resync: bool,
    parts: Vec<State>,
    delta_parts: Vec<Delta>,
    canonical: HashMap<RowKey, CanonRow>,
    /// Computed values of every candidate row (members or not).
    values: HashMap<RowKey, Row>,
    parent_of: HashMap<RowKey, RowKey>,
    kids: HashMap<RowKey, BTreeSet<RowKey>>,
    view: HashMap<RowKey, ViewRow>,
    /// The `rid` of the newest subscribe sent for it: answers naming another rid are stale.
    rid: Option<u64>,
    /// The other connections' presence, in the server's order.
    presence: Vec<PresenceEntry>,
    /// What this client shows here (sent again after a reconnect).
    my_presence: Option<Value>,
}

/// The optimistic state of one client. See the module docs.
pub struct ClientState {
    pub client_id: String,
    next_write_id: i64,
    next_temp_id: i64,
    next_order: u64,
    schema: SchemaInfo,
    contexts: BTreeMap<String, Ctx>,
    pending: Vec<Pending>,
    touching: HashMap<RowKey, BTreeSet<i64>>,
    /// Real id → the temp id that is its stable key.
    aliases: HashMap<RowKey, Id>,
    /// (type, temp id) → real id, for writes sent after the create was applied.
    temp_real: HashMap<(String, Id), Id>,
    /// The last request id used (subscribe, unsubscribe).
    next_rid: u64,
    /// Connected (after `welcome`): subscribes and unsubscribes go out.
    online: bool,
    /// Subscribes and unsubscribes to send, in order.
    outbox: Vec<ClientMessage>,
    /// Live stream views by local id.
    streams: BTreeMap<u64, stream_views::StreamView>,
    next_stream: u64,
    /// The server store's epoch from the last `welcome`.
    epoch: Option<String>,
    /// The signed-in user (from `welcome`), for values a pending create shows.
    user_id: Option<Id>,
}

impl ClientState {
    pub fn new(client_id: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            next_write_id: 1,
            next_temp_id: -1,
            next_order: 1,
            schema: SchemaInfo::default(),
            contexts: BTreeMap::new(),
            pending: Vec::new(),
            touching: HashMap::new(),
            aliases: HashMap::new(),
            temp_real: HashMap::new(),
            next_rid: 0,
            online: false,
            outbox: Vec::new(),
            streams: BTreeMap::new(),
            next_stream: 0,
            epoch: None,
            user_id: None,
        }
    }

    /// Continues a saved write-id counter (a restored queue).
    pub fn set_next_write_id(&mut self, next: i64) {
        self.next_write_id = self.next_write_id.max(next);
    }

    pub fn next_write_id(&self) -> i64 {
        self.next_write_id
    }

    pub fn set_schema(&mut self, schema: SchemaInfo) {
        self.schema = schema;
    }

    pub fn schema(&self) -> &SchemaInfo {
        &self.schema
    }

    fn tree(&self, channel: &str) -> Option<&Tree> {
        self.schema.channels.get(channel)
    }

    /// Starts holding a context (its state arrives later); when connected,
    /// queues its `subscribe` (with a fresh `rid`). Holding it already changes nothing.
    pub fn add_context(&mut self, context: &str, channel: &str, anchor_id: Id) {
        if self.contexts.contains_key(context) {
            return;
        }
        let anchor_ty = self.tree(channel).map_or_else(|| channel.to_owned(), |t| t.anchor.clone());
        self.contexts.insert(
            context.to_owned(),
            Ctx { channel: channel.to_owned(), anchor: Some(RowKey::new(anchor_ty, anchor_id)), ..Ctx::default() },
        );
        self.queue_subscribe(context);
    }

    fn next_rid(&mut self) -> u64 {
        self.next_rid += 1;
        self.next_rid
    }

    /// Queues a `subscribe` for a held context (with `since` once loaded) under a new rid.
    fn queue_subscribe(&mut self, context: &str) {
        if !self.online {
            return;
        }
        let Some((channel, anchor)) = statecast_protocol::context::parse_context(context) else { return };
        let (channel, resume) = (channel.to_owned(), self.resume_point(context));
        let rid = self.next_rid();
        let Some(ctx) = self.contexts.get_mut(context) else { return };
        ctx.rid = Some(rid);
        ctx.parts.clear();
        ctx.delta_parts.clear();
        self.outbox.push(ClientMessage::Subscribe(Subscribe {
            channel: Some(channel),
            anchor_id: Some(anchor),
            since: resume.as_ref().map(|(s, _)| *s),
            view: resume.as_ref().and_then(|_| self.contexts.get(context)).and_then(|c| c.view_tag.clone()),
            epoch: resume.and_then(|(_, e)| e),
            rid: Some(Value::from(rid)),
            ..Subscribe::default()
        }));
        // The server forgot it with the old connection (or subscription).
        if let Some(data) = self.contexts.get(context).and_then(|c| c.my_presence.clone()) {
            self.queue_presence(context, data);
        }
    }

    /// Shows `data` to the context's other subscribers (`null` clears). Kept
    /// and shown again after a reconnect. Refused when the context is not
    /// held or `data` exceeds the protocol's limit; an update not yet sent
    /// is replaced, not queued behind.
    pub fn set_presence(&mut self, context: &str, data: Value) -> Result<(), WireError> {
        let size = serde_json::to_vec(&data).map_or(usize::MAX, |v| v.len());
        if size > MAX_PRESENCE_BYTES {
            return Err(WireError::invalid_data(
                "data",
                format!("presence `data` is at most {MAX_PRESENCE_BYTES} bytes as JSON, got {size}"),
            ));
        }
        let Some(ctx) = self.contexts.get_mut(context) else {
            return Err(WireError::new(ErrorReason::NotSubscribed, format!("`{context}` is not held")));
        };
        ctx.my_presence = (!data.is_null()).then(|| data.clone());
        self.queue_presence(context, data);
        Ok(())
    }

    fn queue_presence(&mut self, context: &str, data: Value) {
        if !self.online {
            return;
        }
        let unsent = self.outbox.iter_mut().find_map(|m| match m {
            ClientMessage::Presence(p) if p.context == context => Some(p),
            _ => None,
        });
        if let Some(p) = unsent {
            p.data = data;
            return;
        }
        // A rid of its own: a refusal (`error` naming the context) must not
        // read as the subscription's.
        let rid = self.next_rid();
        let msg = SetPresence { context: context.to_owned(), data, rid: Some(Value::from(rid)) };
        self.outbox.push(ClientMessage::Presence(msg));
    }

    /// The other connections' presence in a context (none when not held).
    pub fn presence(&self, context: &str) -> &[PresenceEntry] {
        self.contexts.get(context).map_or(&[], |c| &c.presence)
    }

    /// What this client shows in a context.
    pub fn my_presence(&self, context: &str) -> Option<&Value> {
        self.contexts.get(context).and_then(|c| c.my_presence.as_ref())
    }

    fn on_presence(&mut self, p: Presence) -> Vec<Effect> {
        let Some(ctx) = self.contexts.get_mut(&p.context) else { return Vec::new() };
        let at = ctx.presence.iter().position(|e| e.connection_id == p.connection_id);
        match (at, p.data.is_null()) {
            (Some(i), true) => {
                ctx.presence.remove(i);
            }
            (None, true) => return Vec::new(),
            (Some(i), false) => ctx.presence[i].data = p.data,
            (None, false) => {
                ctx.presence.push(PresenceEntry { connection_id: p.connection_id, user: p.user, data: p.data })
            }
        }
        vec![Effect::PresenceChanged { context: p.context }]
    }

    /// Stops holding a context at once: its view empties, its unsent writes
    /// fail (`CONTEXT_CLOSED`), and an `unsubscribe` with a rid of its own is
    /// queued. The server's late answers to the old subscription name older
    /// rids, so they never touch a newer subscription to the same context.
    pub fn unsubscribe(&mut self, context: &str) -> Vec<Effect> {
        if !self.contexts.contains_key(context) {
            return Vec::new();
        }
        if self.online {
            let rid = self.next_rid();
            self.outbox.push(ClientMessage::Unsubscribe(Unsubscribe {
                context: Some(context.to_owned()),
                subscription: None,
                rid: Some(Value::from(rid)),
            }));
        }
        self.drop_context(context, UnsubscribeReason::ClientRequest)
    }

    /// Connected (after `welcome`): retires what `applied` reports, then
    /// queues a subscribe for every context (with `since`) and stream view.
    /// A new `epoch` (the server's store is new) makes stream views take a
    /// fresh snapshot.
    pub fn connected(&mut self, welcome: &Welcome) -> Vec<Effect> {
        self.set_schema(SchemaInfo::from_welcome(&welcome.schema));
        self.user_id = Some(welcome.user.id);
        let (epoch, applied) = (welcome.epoch.as_str(), &welcome.applied);
        self.online = true;
        self.outbox.clear();
        if self.epoch.as_deref().is_some_and(|e| e != epoch) {
            for sv in self.streams.values_mut() {
                sv.reset_position();
            }
        }
        self.epoch = Some(epoch.to_owned());
        let effects = self.on_applied(applied);
        let names: Vec<String> = self.contexts.keys().cloned().collect();
        for name in names {
            self.queue_subscribe(&name);
        }
        let locals: Vec<u64> = self.streams.keys().copied().collect();
        for local in locals {
            self.queue_stream_subscribe(local);
        }
        effects
    }

    /// Connected (between `connected` and `connection_lost`).
    pub fn is_online(&self) -> bool {
        self.online
    }

    /// Subscribes and unsubscribes to send now, in order (then `take_sendable` for the writes).
    pub fn take_control(&mut self) -> Vec<ClientMessage> {
        std::mem::take(&mut self.outbox)
    }

    /// Does an answer naming `rid` concern the newest subscription to `context` (or no rid: the server's own)?
    pub fn is_current_answer(&self, context: &str, rid: &Option<Value>) -> bool {
        !self.stale(context, rid)
    }

    /// Is this a stale answer for `context` (it names a rid other than the newest subscribe's)?
    fn stale(&self, context: &str, rid: &Option<Value>) -> bool {
        let Some(rid) = rid.as_ref() else { return false };
        self.contexts.get(context).is_none_or(|c| c.rid.is_some_and(|mine| rid.as_u64() != Some(mine)))
    }

    pub fn has_context(&self, context: &str) -> bool {
        self.contexts.contains_key(context)
    }

    pub fn contexts(&self) -> impl Iterator<Item = &str> {
        self.contexts.keys().map(String::as_str)
    }

    /// `(since, epoch)` to resubscribe with, when the context was loaded.
    pub fn resume_point(&self, context: &str) -> Option<(Seq, Option<String>)> {
        let ctx = self.contexts.get(context)?;
        // A new store (the welcome's epoch is not the context's): ask for a whole state.
        let same_store = self.epoch.is_none() || ctx.epoch == self.epoch;
        (same_store && (ctx.loaded || ctx.resync)).then(|| (ctx.seq, ctx.epoch.clone()))
    }

    pub fn is_loaded(&self, context: &str) -> bool {
        self.contexts.get(context).is_some_and(|c| c.loaded)
    }

    pub fn context_seq(&self, context: &str) -> Option<Seq> {
        self.contexts.get(context).map(|c| c.seq)
    }

    // ---- stable keys ------------------------------------------------------

    fn stable(&self, ty: &str, id: Id) -> RowKey {
        let key = RowKey::new(ty, id);
        match self.aliases.get(&key) {
            Some(temp) => RowKey::new(key.ty, *temp),
            None => key,
        }
    }

    /// The parent (stable key) of a row value in a tree, by the first edge whose field is set.
    fn parent_key(&self, tree: &Tree, row: &Row) -> Option<RowKey> {
        tree.edges_into(&row.ty).find_map(|(_, e)| Some(self.stable(&e.parent, row.get_i64(&e.field)?)))
    }

    // ---- local writes -----------------------------------------------------

    /// Queues a write: it shows in the view at once (unless not optimistic).
    /// Returns its writeId and the ids of the rows it creates.
    pub fn write(
        &mut self,
        context: &str,
        mut ops: Vec<WriteOp>,
        opts: WriteOptions,
    ) -> Result<(i64, Vec<Id>, Vec<Effect>), WireError> {
        if !self.contexts.contains_key(context) {
            return Err(WireError::new(ErrorReason::NotInContext, format!("not subscribed to `{context}`")));
        }
        if ops.is_empty() {
            return Err(WireError::new(ErrorReason::InvalidData, "a write needs at least one op"));
        }
        let write_id = self.next_write_id;
        self.next_write_id += 1;
        let mut created_ids = Vec::new();
        let mut creates = Vec::new();
        for op in &mut ops {
            if op.operation == Operation::Create {
                let id = match op.instance_id {
                    Some(id) => id,
                    None if opts.temp_ids => {
                        let t = self.next_temp_id;
                        self.next_temp_id -= 1;
                        t
                    }
                    None => mint_id(),
                };
                op.instance_id = Some(id);
                created_ids.push(id);
                creates.push((RowKey::new(op.instance_type.as_str(), id), self.bump_order()));
            }
        }
        let touches = self.touched_keys(&ops);
        let (after, waits_for) = self.dependencies(&ops, &creates);
        let pending = Pending {
            write_id,
            context: context.to_owned(),
            ops,
            optimistic: opts.optimistic,
            sent: false,
            ever_sent: false,
            retry_wait: false,
            attempts: 0,
            retired: false,
            confirmed: None,
            settled: false,
            after,
            waits_for,
            creates,
            touches: touches.clone(),
        };
        for key in &touches {
            self.touching.entry(key.clone()).or_default().insert(write_id);
        }
        self.pending.push(pending);
        let effects = self.recompute_all(&touches);
        Ok((write_id, created_ids, effects))
    }

    fn bump_order(&mut self) -> u64 {
        self.next_order += 1;
        self.next_order
    }

    /// Stable keys of the rows each op targets or creates.
    fn touched_keys(&self, ops: &[WriteOp]) -> Vec<RowKey> {
        let mut out = Vec::new();
        for op in ops {
            if let Some(id) = op.instance_id {
                let key = if op.operation == Operation::Create {
                    RowKey::new(op.instance_type.as_str(), id)
                } else {
                    self.stable(&op.instance_type, id)
                };
                if !out.contains(&key) {
                    out.push(key);
                }
            }
        }
        out
    }

    /// Pending writes this one depends on (it refers to rows they create).
    fn dependencies(&self, ops: &[WriteOp], own: &[(RowKey, u64)]) -> (Vec<i64>, Vec<i64>) {
        let mut refs: Vec<RowKey> = Vec::new();
        for op in ops {
            if let (Some(id), true) = (op.instance_id, op.operation != Operation::Create) {
                refs.push(self.stable(&op.instance_type, id));
            }
            if let (Some(pt), Some(pid)) = (&op.parent_type, op.parent_id) {
                refs.push(self.stable(pt, pid));
            }
            for (field, value) in op.data.iter().flatten() {
                if let (Some(target), Some(id)) =
                    (self.schema.reference_target(&op.instance_type, field), value.as_i64())
                {
                    refs.push(self.stable(target, id));
                }
            }
        }
        let (mut after, mut waits) = (Vec::new(), Vec::new());
        for key in refs.iter().filter(|k| !own.iter().any(|(o, _)| o == *k)) {
            for p in self.pending.iter().filter(|p| !p.settled && !p.retired) {
                if p.creates.iter().any(|(k, _)| k == key) {
                    if !after.contains(&p.write_id) {
                        after.push(p.write_id);
                    }
                    // The server learns a temp id's real id only from this create: wait for it.
                    if key.id < 0 && !waits.contains(&p.write_id) {
                        waits.push(p.write_id);
                    }
                }
            }
        }
        (after, waits)
    }

    /// Writes ready to send, in order, up to the first that must wait (marks them sent).
    pub fn take_sendable(&mut self) -> Vec<Write> {
        let mut out = Vec::new();
        for i in 0..self.pending.len() {
            let p = &self.pending[i];
            if p.sent || p.retired || p.settled || !self.contexts.contains_key(&p.context) {
                continue;
            }
            if p.retry_wait || !p.waits_for.is_empty() {
                break; // in order: nothing after a write that must wait goes out before it
            }
            out.push(self.to_wire(p));
            self.pending[i].sent = true;
            self.pending[i].ever_sent = true;
        }
        out
    }

    fn to_wire(&self, p: &Pending) -> Write {
        let mut ops = p.ops.clone();
        for op in &mut ops {
            rewrite_temp_ids(op, &self.temp_real, &self.schema);
        }
        let mut w = Write {
            write_id: p.write_id,
            operation: Operation::Batch,
            context: Some(p.context.clone()),
            instance_type: None,
            instance_id: None,
            parent_type: None,
            parent_id: None,
            relation_name: None,
            data: None,
            if_version: None,
            after: p.after.clone(),
            ops: Vec::new(),
            rid: None,
        };
        match ops.as_slice() {
            [op] => {
                w.operation = op.operation;
                w.instance_type = Some(op.instance_type.clone());
                w.instance_id = op.instance_id;
                w.parent_type = op.parent_type.clone();
                w.parent_id = op.parent_id;
                w.relation_name = op.relation_name.clone();
                w.data = op.data.clone();
                w.if_version = op.if_version;
            }
            ops => w.ops = ops.to_vec(),
        }
        w
    }

    /// The writeIds of the unanswered writes that may have reached the server (for `hello.pending`).
    pub fn pending_write_ids(&self) -> Vec<i64> {
        self.pending.iter().filter(|p| !p.settled && p.ever_sent).map(|p| p.write_id).collect()
    }

    /// The writeIds of every write not answered yet (sent or not).
    pub fn unanswered_write_ids(&self) -> Vec<i64> {
        self.pending.iter().filter(|p| !p.settled).map(|p| p.write_id).collect()
    }

    /// A write answered "not certain yet" may be sent again (its backoff passed).
    pub fn retry_due(&mut self, write_id: i64) {
        if let Some(p) = self.pending.iter_mut().find(|p| p.write_id == write_id) {
            p.retry_wait = false;
        }
    }

    /// How many writes are not yet settled.
    pub fn pending_count(&self) -> usize {
        self.pending.iter().filter(|p| !p.settled).count()
    }

    /// The connection dropped: every unanswered write will be sent again.
    pub fn connection_lost(&mut self) {
        self.online = false;
        self.outbox.clear();
        for sv in self.streams.values_mut() {
            sv.connection_lost();
        }
        for p in &mut self.pending {
            if !p.settled {
                p.sent = false;
            }
        }
        for ctx in self.contexts.values_mut() {
            ctx.parts.clear();
            ctx.delta_parts.clear();
            // Stale until the next state lists it again.
            ctx.presence.clear();
        }
    }

    /// Unsettled writes as they would be sent (for persisting the queue).
    pub fn unsettled_writes(&self) -> Vec<Write> {
        self.pending.iter().filter(|p| !p.settled).map(|p| self.to_wire(p)).collect()
    }

    /// Restores a persisted write (it shows in the view once its context is held).
    pub fn restore(&mut self, w: &Write) -> Result<Vec<Effect>, WireError> {
        let context = w.context.clone().unwrap_or_default();
        let ops = w.row_ops()?;
        let creates: Vec<(RowKey, u64)> = ops
            .iter()
            .filter(|o| o.operation == Operation::Create)
            .filter_map(|o| Some(RowKey::new(o.instance_type.as_str(), o.instance_id?)))
            .map(|k| (k, self.bump_order()))
            .collect();
        let touches = self.touched_keys(&ops);
        for key in &touches {
            self.touching.entry(key.clone()).or_default().insert(w.write_id);
        }
        self.pending.push(Pending {
            write_id: w.write_id,
            context,
            ops,
            optimistic: true,
            sent: false,
            ever_sent: true,
            retry_wait: false,
            attempts: 0,
            retired: false,
            confirmed: None,
            settled: false,
            after: w.after.clone(),
            waits_for: Vec::new(),
            creates,
            touches: touches.clone(),
        });
        self.next_write_id = self.next_write_id.max(w.write_id + 1);
        Ok(self.recompute_all(&touches))
    }

    // ---- answers ----------------------------------------------------------

    /// The outcomes `welcome.applied` reports for resent writes.
    pub fn on_applied(&mut self, applied: &[AppliedOutcome]) -> Vec<Effect> {
        let mut effects = Vec::new();
        for a in applied {
            let resp = WriteResponse {
                write_id: a.write_id,
                success: true,
                seq: Some(a.seq),
                created: a.created.clone(),
                duplicate: true,
                ..Default::default()
            };
            effects.extend(self.on_response(&resp));
        }
        effects
    }

    /// A `writeResponse`.
    pub fn on_response(&mut self, resp: &WriteResponse) -> Vec<Effect> {
        let Some(i) = self.pending.iter().position(|p| p.write_id == resp.write_id && !p.settled) else {
            return Vec::new();
        };
        if !resp.success {
            let error =
                resp.error.clone().unwrap_or_else(|| WireError::new(ErrorReason::Internal, "refused without a reason"));
            if matches!(error.reason, ErrorReason::OutcomeUnknown | ErrorReason::Unavailable | ErrorReason::RateLimited)
            {
                // Nothing certain happened yet: keep the write (pending in the views) and send it again, same writeId.
                let p = &mut self.pending[i];
                p.sent = false;
                p.retry_wait = true;
                p.attempts += 1;
                return vec![Effect::RetryLater { write_id: p.write_id, attempt: p.attempts, error }];
            }
            return self.refuse(resp.write_id, error);
        }
        let seq = resp.seq.unwrap_or(0);
        let moved = self.alias_created(Some(resp.write_id), &resp.created);
        let outcome =
            WriteOutcome { write_id: resp.write_id, seq, created: resp.created.clone(), duplicate: resp.duplicate };
        let p = &mut self.pending[i];
        p.settled = true;
        p.confirmed = Some(seq);
        let mut effects = vec![Effect::Settled { write_id: resp.write_id, result: Ok(outcome) }];
        effects.extend(self.recompute_all(&moved));
        let p = &mut self.pending[i];
        let wait = !p.retired
            && self.contexts.get(&p.context).is_some_and(|c| c.loaded && c.seq < seq && !p.touches.is_empty());
        let write_id = p.write_id;
        self.release(write_id);
        if !wait {
            effects.extend(self.remove_write(write_id));
        }
        effects
    }

    /// A write was refused (or failed locally): drop it and every write depending on it.
    pub fn refuse(&mut self, write_id: i64, error: WireError) -> Vec<Effect> {
        let mut effects = Vec::new();
        let mut queue = VecDeque::from([(write_id, error)]);
        while let Some((id, err)) = queue.pop_front() {
            let Some(p) = self.pending.iter_mut().find(|p| p.write_id == id && !p.settled) else { continue };
            p.settled = true;
            effects.push(Effect::Settled { write_id: id, result: Err(err) });
            for d in self.pending.iter().filter(|d| !d.settled && (d.after.contains(&id) || d.waits_for.contains(&id)))
            {
                let e = WireError::new(
                    ErrorReason::DependencyFailed,
                    format!("write {} depends on write {id}, which was refused", d.write_id),
                );
                queue.push_back((d.write_id, e));
            }
            effects.extend(self.remove_write(id));
        }
        effects
    }

    /// A create's real ids are known (confirmed or retired): writes waiting on it may go.
    fn release(&mut self, write_id: i64) {
        for p in self.pending.iter_mut().filter(|p| p.waits_for.contains(&write_id)) {
            p.waits_for.retain(|w| *w != write_id);
        }
    }

    /// Records the real ids of the rows `write_id` created under temp ids,
    /// and returns the keys whose rows moved (to recompute).
    ///
    /// Only temp ids that write minted are taken: an answer naming another
    /// would re-key an unrelated row. A row a context already holds under its
    /// real id (a state that listed it before the answer came) moves to the
    /// temp key, so that children naming either id find it.
    fn alias_created(&mut self, write_id: Option<i64>, created: &[CreatedId]) -> Vec<RowKey> {
        let mut moved = Vec::new();
        for c in created {
            let Some(temp) = c.temp_id else { continue };
            let temp_key = RowKey::new(c.ty.as_str(), temp);
            let minted = self
                .pending
                .iter()
                .any(|p| Some(p.write_id) == write_id && p.creates.iter().any(|(k, _)| *k == temp_key));
            if !minted || temp == c.id {
                continue;
            }
            let real_key = RowKey::new(c.ty.as_str(), c.id);
            self.aliases.insert(real_key.clone(), temp);
            self.temp_real.insert((c.ty.clone(), temp), c.id);
            for ctx in self.contexts.values_mut() {
                if let Some(row) = ctx.canonical.remove(&real_key) {
                    ctx.canonical.entry(temp_key.clone()).or_insert(row);
                }
            }
            moved.push(real_key);
            moved.push(temp_key);
        }
        moved
    }

    fn remove_write(&mut self, write_id: i64) -> Vec<Effect> {
        let Some(i) = self.pending.iter().position(|p| p.write_id == write_id) else { return Vec::new() };
        let p = self.pending.remove(i);
        for key in &p.touches {
            if let Some(set) = self.touching.get_mut(key) {
                set.remove(&write_id);
                if set.is_empty() {
                    self.touching.remove(key);
                }
            }
        }
        if p.retired {
            // Its effect already left the view when it was retired.
            return Vec::new();
        }
        self.recompute_all(&p.touches)
    }

    /// Marks a write retired (its canonical result arrived) without recomputing.
    fn retire(&mut self, write_id: i64) -> Vec<RowKey> {
        match self.pending.iter_mut().find(|p| p.write_id == write_id) {
            Some(p) if !p.retired => {
                p.retired = true;
                let touches = p.touches.clone();
                self.release(write_id);
                touches
            }
            _ => Vec::new(),
        }
    }

    /// Retires confirmed writes whose context has reached their seq.
    fn retire_reached(&mut self, context: &str) -> (Vec<RowKey>, Vec<i64>) {
        let seq = self.contexts.get(context).map_or(0, |c| c.seq);
        let done: Vec<i64> = self
            .pending
            .iter()
            .filter(|p| p.context == context && p.confirmed.is_some_and(|s| s <= seq))
            .map(|p| p.write_id)
            .collect();
        let mut keys = Vec::new();
        for id in &done {
            keys.extend(self.retire(*id));
        }
        (keys, done)
    }

    // ---- server messages --------------------------------------------------

    /// One message from the server (after `welcome`, which goes to
    /// [`connected`](Self::connected)): states, deltas, answers, stream
    /// `subscribed` and events, `unsubscribed` and errors, each matched to its
    /// subscription by `rid` or subscription id. Messages it has no use for
    /// (`pong`, `goaway`, …) change nothing.
    pub fn receive(&mut self, msg: ServerMessage) -> Vec<Effect> {
        match msg {
            ServerMessage::State(s) => self.apply_state(s),
            ServerMessage::Delta(d) => self.apply_delta(d),
            ServerMessage::WriteResponse(r) => self.on_response(&r),
            ServerMessage::Subscribed(s) => self.on_subscribed(s),
            ServerMessage::Event(e) => self.on_event(e),
            ServerMessage::Unsubscribed(u) => match (u.context, u.subscription) {
                (Some(c), _) => self.on_context_ended(&c, &u.rid, u.reason),
                (None, Some(s)) => self.on_stream_unsubscribed(&s, u.reason),
                (None, None) => Vec::new(),
            },
            ServerMessage::Error(e) => match self.on_stream_error(&e.rid, e.error.clone()) {
                Some(effects) => effects,
                None => match e.context {
                    Some(c) => self.on_context_ended(&c, &e.rid, UnsubscribeReason::PermissionLost),
                    None => Vec::new(),
                },
            },
            ServerMessage::Welcome(w) => self.connected(&w),
            ServerMessage::Presence(p) => self.on_presence(p),
            ServerMessage::Authenticated(_)
            | ServerMessage::Pong(_)
            | ServerMessage::Goaway(_)
            | ServerMessage::Rows(_) => Vec::new(),
        }
    }

    /// A `state` (whole or incremental; parts are held until the last).
    pub fn apply_state(&mut self, state: State) -> Vec<Effect> {
        let name = state.context.clone();
        if self.stale(&name, &state.rid) {
            return Vec::new();
        }
        let Some(ctx) = self.contexts.get_mut(&name) else { return Vec::new() };
        if state.part.is_some() && state.last != Some(true) {
            ctx.parts.push(state);
            return Vec::new();
        }
        let mut parts = std::mem::take(&mut ctx.parts);
        parts.push(state);
        let mut effects = Vec::new();
        let epoch_changed = ctx.epoch.as_ref().is_some_and(|e| Some(e) != parts.first().map(|p| &p.epoch));
        let incremental = parts.iter().any(|p| p.incremental) && !epoch_changed;
        if epoch_changed {
            effects.push(Effect::EpochChanged { context: name.clone() });
        }
        let mut dirty: Vec<RowKey> = Vec::new();
        if !incremental {
            let old: Vec<RowKey> = ctx.canonical.keys().cloned().collect();
            dirty.extend(old);
            ctx.canonical.clear();
        }
        let last = parts.last().map(|p| (p.seq, p.epoch.clone())).unwrap_or_default();
        let view = parts.first().and_then(|p| p.view.clone());
        let mut order = self.next_order;
        let mut rows = Vec::new();
        let mut removed = Vec::new();
        let mut presence = Vec::new();
        for part in parts {
            presence.extend(part.presence);
            rows.extend(part.instances.into_iter().map(|r| (*r).clone()));
            removed.extend(part.removed);
        }
        let aliases = &self.aliases;
        let stable = |ty: &str, id: Id| {
            let k = RowKey::new(ty, id);
            aliases.get(&k).map_or(k.clone(), |t| RowKey::new(k.ty.clone(), *t))
        };
        let Some(ctx) = self.contexts.get_mut(&name) else { return effects };
        for r in removed {
            let key = stable(&r.ty, r.id);
            ctx.canonical.remove(&key);
            dirty.push(key);
        }
        for row in rows {
            let key = stable(&row.ty, row.id);
            order += 1;
            let keep = ctx.canonical.get(&key).map(|c| c.order);
            ctx.canonical.insert(key.clone(), CanonRow { row, order: keep.unwrap_or(order) });
            dirty.push(key);
        }
        self.next_order = order;
        ctx.seq = last.0;
        ctx.epoch = Some(last.1);
        ctx.view_tag = view;
        ctx.loaded = true;
        ctx.resync = false;
        // Every state lists the presence in full.
        if ctx.presence != presence {
            ctx.presence = presence;
            effects.push(Effect::PresenceChanged { context: name.clone() });
        }
        let (retired_keys, _) = self.retire_reached(&name);
        dirty.extend(retired_keys);
        dirty.extend(self.touching.keys().cloned());
        effects.extend(self.recompute_all(&dirty));
        effects.extend(self.drop_finished());
        effects
    }

    /// A `delta`. A gap (its `prev` is not the last seq seen) asks for a resync.
    pub fn apply_delta(&mut self, delta: Delta) -> Vec<Effect> {
        let name = delta.context.clone();
        let Some(ctx) = self.contexts.get_mut(&name) else { return Vec::new() };
        if !ctx.loaded || ctx.resync || delta.seq <= ctx.seq {
            return Vec::new();
        }
        if delta.prev != ctx.seq {
            ctx.resync = true;
            ctx.delta_parts.clear();
            let effect = Effect::Resync { context: name.clone(), since: ctx.seq, epoch: ctx.epoch.clone() };
            self.queue_subscribe(&name);
            return vec![effect];
        }
        if delta.part.is_some() && delta.last != Some(true) {
            ctx.delta_parts.push(delta);
            return Vec::new();
        }
        let mut parts = std::mem::take(&mut ctx.delta_parts);
        parts.push(delta);
        let seq = parts.last().map_or(0, |d| d.seq);
        let write_id = parts.iter().find_map(|d| d.write_id);
        let created: Vec<CreatedId> = parts.iter().flat_map(|d| d.created.clone()).collect();
        // A temp id is replaced in place: the real row takes the temp key and its position.
        let mut dirty = self.alias_created(write_id, &created);
        for change in parts.iter().flat_map(|d| d.changes.iter()) {
            let key = self.stable(&change.ty, change.id);
            let pending_order =
                self.pending.iter().flat_map(|p| p.creates.iter()).find(|(k, _)| *k == key).map(|(_, o)| *o);
            let order = pending_order.unwrap_or_else(|| self.bump_order());
            let Some(ctx) = self.contexts.get_mut(&name) else { break };
            let current = ctx.canonical.get(&key).map(|c| c.row.version);
            if current.is_some_and(|v| v >= change.version) {
                continue;
            }
            match change.op {
                ChangeOp::Create => {
                    let row = Row {
                        ty: change.ty.clone(),
                        id: change.id,
                        version: change.version,
                        created: seq,
                        fields: change.fields.clone(),
                    };
                    let order = ctx.canonical.get(&key).map_or(order, |c| c.order);
                    ctx.canonical.insert(key.clone(), CanonRow { row, order });
                }
                ChangeOp::Update => {
                    if let Some(c) = ctx.canonical.get_mut(&key) {
                        c.row.fields.extend(change.fields.clone());
                        c.row.version = change.version;
                    }
                }
                ChangeOp::Delete => {
                    ctx.canonical.remove(&key);
                }
            }
            dirty.push(key);
        }
        if let Some(ctx) = self.contexts.get_mut(&name) {
            ctx.seq = seq;
        }
        if let Some(w) = write_id {
            dirty.extend(self.retire(w));
        }
        let (keys, _) = self.retire_reached(&name);
        dirty.extend(keys);
        let mut effects = self.recompute_all(&dirty);
        effects.extend(self.drop_finished());
        effects
    }

    /// Confirmed writes whose context now holds their result leave the queue.
    fn drop_finished(&mut self) -> Vec<Effect> {
        let done: Vec<i64> = self.pending.iter().filter(|p| p.retired && p.settled).map(|p| p.write_id).collect();
        done.into_iter().flat_map(|id| self.remove_write(id)).collect()
    }

    /// The server ended a subscription: its state is dropped; unsent writes for it fail.
    pub fn on_unsubscribed(&mut self, context: &str, reason: UnsubscribeReason) -> Vec<Effect> {
        self.drop_context(context, reason)
    }

    /// An `unsubscribed` or a subscribe `error` for a context, matched by its
    /// `rid`: one naming an older request (a close before a reopen) is ignored.
    pub fn on_context_ended(&mut self, context: &str, rid: &Option<Value>, reason: UnsubscribeReason) -> Vec<Effect> {
        if self.stale(context, rid) {
            return Vec::new();
        }
        self.drop_context(context, reason)
    }

    fn drop_context(&mut self, context: &str, reason: UnsubscribeReason) -> Vec<Effect> {
        let Some(ctx) = self.contexts.remove(context) else { return Vec::new() };
        let mut effects = vec![Effect::Closed { context: context.to_owned(), reason }];
        if !ctx.presence.is_empty() {
            effects.push(Effect::PresenceChanged { context: context.to_owned() });
        }
        let removed: Vec<ViewChange> =
            ctx.view.values().map(|v| ViewChange { ty: v.ty.clone(), key: v.key, kind: ChangeKind::Removed }).collect();
        if !removed.is_empty() {
            effects.push(Effect::Changed { context: context.to_owned(), changes: removed });
        }
        let unsent: Vec<i64> =
            self.pending.iter().filter(|p| p.context == context && !p.sent && !p.settled).map(|p| p.write_id).collect();
        for id in unsent {
            let e =
                WireError::new(ErrorReason::ContextClosed, format!("`{context}` was closed before the write was sent"));
            effects.extend(self.refuse(id, e));
        }
        effects
    }

    // ---- views --------------------------------------------------------------

    /// The rows of a context's view in tree order (anchor, then children by relation order).
    pub fn view(&self, context: &str) -> Vec<ViewRow> {
        let Some(ctx) = self.contexts.get(context) else { return Vec::new() };
        let (Some(anchor), Some(tree)) = (&ctx.anchor, self.tree(&ctx.channel)) else { return Vec::new() };
        let mut out = Vec::with_capacity(ctx.view.len());
        let mut stack = vec![anchor.clone()];
        while let Some(k) = stack.pop() {
            let Some(row) = ctx.view.get(&k) else { continue };
            out.push(row.clone());
            let mut kids: Vec<&RowKey> =
                ctx.kids.get(&k).into_iter().flatten().filter(|c| ctx.view.contains_key(*c)).collect();
            kids.sort_by(|a, b| self.sibling_cmp(ctx, tree, a, b));
            stack.extend(kids.into_iter().rev().cloned());
        }
        out
    }

    fn order_of(&self, ctx: &Ctx, key: &RowKey) -> u64 {
        ctx.canonical.get(key).map(|c| c.order).unwrap_or_else(|| {
            self.pending.iter().flat_map(|p| p.creates.iter()).find(|(k, _)| k == key).map_or(u64::MAX, |(_, o)| *o)
        })
    }

    fn sibling_cmp(&self, ctx: &Ctx, tree: &Tree, a: &RowKey, b: &RowKey) -> std::cmp::Ordering {
        let edge = |k: &RowKey| {
            tree.edges.iter().enumerate().find(|(_, e)| *e.child == *k.ty).map(|(i, e)| (i, e.order_by.clone()))
        };
        let pos = |k: &RowKey| edge(k).map_or(usize::MAX, |(i, _)| i);
        let value = |k: &RowKey| {
            let field = edge(k).and_then(|(_, o)| o)?;
            ctx.view.get(k).and_then(|r| r.fields.get(&field).cloned())
        };
        pos(a)
            .cmp(&pos(b))
            .then_with(|| compare_values(value(a).as_ref(), value(b).as_ref()))
            .then_with(|| self.order_of(ctx, a).cmp(&self.order_of(ctx, b)))
            .then_with(|| a.id.cmp(&b.id))
    }

    /// One row of a context's view by type and stable key (or id).
    pub fn row(&self, context: &str, ty: &str, id: Id) -> Option<ViewRow> {
        let ctx = self.contexts.get(context)?;
        ctx.view.get(&self.stable(ty, id)).cloned()
    }

    // ---- recomputing ---------------------------------------------------------

    fn recompute_all(&mut self, dirty: &[RowKey]) -> Vec<Effect> {
        let names: Vec<String> = self.contexts.keys().cloned().collect();
        let mut effects = Vec::new();
        for name in names {
            let changes = self.recompute(&name, dirty);
            if !changes.is_empty() {
                effects.push(Effect::Changed { context: name, changes });
            }
        }
        effects.extend(self.recompute_streams(dirty));
        effects
    }

    /// The value of a row after replaying the pending writes that touch it.
    fn compute_value(&self, ctx: &Ctx, key: &RowKey) -> (Option<Row>, bool) {
        let row = ctx
            .canonical
            .get(key)
            .or_else(|| self.contexts.values().find_map(|c| c.canonical.get(key)))
            .map(|c| c.row.clone());
        self.replay_pending(key, row)
    }

    /// `row` (canonical, or None) with the pending writes that touch it replayed, and whether any do.
    fn replay_pending(&self, key: &RowKey, row: Option<Row>) -> (Option<Row>, bool) {
        self.replay_pending_until(key, row, None)
    }

    /// Like [`replay_pending`](Self::replay_pending), skipping writes confirmed
    /// at or below `reached` (a stream view that has their result already).
    fn replay_pending_until(&self, key: &RowKey, mut row: Option<Row>, reached: Option<Seq>) -> (Option<Row>, bool) {
        let mut pending = false;
        let Some(writes) = self.touching.get(key) else { return (row, false) };
        let done = |p: &Pending| reached.is_some_and(|r| p.confirmed.is_some_and(|s| s <= r));
        for p in self.pending.iter().filter(|p| writes.contains(&p.write_id) && !p.retired && p.optimistic && !done(p))
        {
            pending = true;
            for op in &p.ops {
                let Some(id) = op.instance_id else { continue };
                let target = if op.operation == Operation::Create {
                    RowKey::new(op.instance_type.as_str(), id)
                } else {
                    self.stable(&op.instance_type, id)
                };
                if target != *key {
                    continue;
                }
                match op.operation {
                    Operation::Save => {
                        if let Some(r) = row.as_mut() {
                            r.fields.extend(op.data.clone().unwrap_or_default());
                        }
                    }
                    Operation::Delete => row = None,
                    Operation::Create => {
                        if row.is_none() {
                            row = Some(self.created_row(op, id));
                        }
                    }
                    Operation::Batch => {}
                }
            }
        }
        (row, pending)
    }

    fn created_row(&self, op: &WriteOp, id: Id) -> Row {
        let mut fields = Fields::new();
        for (name, shown) in self.schema.defaults.get(&op.instance_type).into_iter().flatten() {
            let value = match shown {
                crate::tree::Shown::Value(v) => v.clone(),
                crate::tree::Shown::UserId => self.user_id.map_or(Value::Null, Value::from),
            };
            fields.insert(name.clone(), value);
        }
        fields.extend(op.data.clone().unwrap_or_default());
        if let (Some(pt), Some(pid), Some(rel)) = (&op.parent_type, op.parent_id, &op.relation_name)
            && let Some(edge) = self
                .schema
                .channels
                .values()
                .flat_map(|t| t.edges.iter())
                .find(|e| &e.parent == pt && &e.relation == rel)
        {
            fields.insert(edge.field.clone(), Value::from(pid));
        }
        Row { ty: op.instance_type.as_str().into(), id, version: 0, created: 0, fields }
    }

    /// Recomputes `dirty` rows of one context, following membership changes down the tree.
    fn recompute(&mut self, name: &str, dirty: &[RowKey]) -> Vec<ViewChange> {
        let Some(mut ctx) = self.contexts.remove(name) else { return Vec::new() };
        let Some(tree) = self.tree(&ctx.channel).cloned() else {
            self.contexts.insert(name.to_owned(), ctx);
            return Vec::new();
        };
        let mut changes: Vec<ViewChange> = Vec::new();
        let mut work: VecDeque<RowKey> = dirty.iter().cloned().collect();
        let mut seen_updates: HashSet<RowKey> = HashSet::new();
        let mut steps = 0usize;
        let limit = 16 * (dirty.len() + ctx.values.len() + 16);
        while let Some(key) = work.pop_front() {
            steps += 1;
            if steps > limit {
                tracing::error!(context = name, "view recompute did not settle; stopping");
                break;
            }
            let (value, pending) = if ctx.loaded { self.compute_value(&ctx, &key) } else { (None, false) };
            let new_parent = value.as_ref().and_then(|v| self.parent_key(&tree, v));
            let old_parent = ctx.parent_of.get(&key).cloned();
            if old_parent != new_parent {
                if let Some(p) = &old_parent
                    && let Some(set) = ctx.kids.get_mut(p)
                {
                    set.remove(&key);
                }
                match &new_parent {
                    Some(p) => {
                        ctx.kids.entry(p.clone()).or_default().insert(key.clone());
                        ctx.parent_of.insert(key.clone(), p.clone());
                    }
                    None => {
                        ctx.parent_of.remove(&key);
                    }
                }
            }
            let is_anchor = ctx.anchor.as_ref() == Some(&key);
            let member =
                value.is_some() && (is_anchor || new_parent.as_ref().is_some_and(|p| ctx.view.contains_key(p)));
            let was_member = ctx.view.contains_key(&key);
            match &value {
                Some(v) => ctx.values.insert(key.clone(), v.clone()),
                None => ctx.values.remove(&key),
            };
            let new_row = if member {
                value.map(|v| ViewRow {
                    key: key.id,
                    ty: key.ty.clone(),
                    id: v.id,
                    version: v.version,
                    fields: v.fields,
                    pending,
                })
            } else {
                None
            };
            let kind = match (ctx.view.get(&key), &new_row) {
                (None, Some(_)) => Some(ChangeKind::Added),
                (Some(_), None) => Some(ChangeKind::Removed),
                (Some(a), Some(b)) if a != b => Some(ChangeKind::Updated),
                _ => None,
            };
            match new_row {
                Some(r) => ctx.view.insert(key.clone(), r),
                None => ctx.view.remove(&key),
            };
            if let Some(kind) = kind {
                merge_change(&mut changes, &key, kind, &mut seen_updates);
            }
            if was_member != member {
                work.extend(ctx.kids.get(&key).into_iter().flatten().cloned());
            }
        }
        self.contexts.insert(name.to_owned(), ctx);
        changes
    }

    /// The view computed from scratch: the specification the incremental view must equal.
    pub fn view_from_scratch(&self, context: &str) -> Vec<ViewRow> {
        let Some(ctx) = self.contexts.get(context) else { return Vec::new() };
        let Some(tree) = self.tree(&ctx.channel) else { return Vec::new() };
        if !ctx.loaded {
            return Vec::new();
        }
        let mut candidates: BTreeSet<RowKey> = ctx.canonical.keys().cloned().collect();
        candidates.extend(self.touching.keys().cloned());
        let values: BTreeMap<RowKey, (Row, bool)> = candidates
            .iter()
            .filter_map(|k| {
                let (v, p) = self.compute_value(ctx, k);
                Some((k.clone(), (v?, p)))
            })
            .collect();
        let mut members: BTreeSet<RowKey> = BTreeSet::new();
        loop {
            let before = members.len();
            for (k, (v, _)) in &values {
                let is_anchor = ctx.anchor.as_ref() == Some(k);
                if is_anchor || self.parent_key(tree, v).is_some_and(|p| members.contains(&p)) {
                    members.insert(k.clone());
                }
            }
            if members.len() == before {
                break;
            }
        }
        let mut out: Vec<ViewRow> = members
            .iter()
            .filter_map(|k| {
                let (v, p) = values.get(k)?;
                Some(ViewRow {
                    key: k.id,
                    ty: k.ty.clone(),
                    id: v.id,
                    version: v.version,
                    fields: v.fields.clone(),
                    pending: *p,
                })
            })
            .collect();
        out.sort_by(|a, b| (&*a.ty, a.key).cmp(&(&*b.ty, b.key)));
        out
    }
}

fn merge_change(changes: &mut Vec<ViewChange>, key: &RowKey, kind: ChangeKind, seen: &mut HashSet<RowKey>) {
    if let Some(existing) = changes.iter_mut().find(|c| c.ty == key.ty && c.key == key.id) {
        existing.kind = match (existing.kind, kind) {
            (ChangeKind::Added, ChangeKind::Removed) | (ChangeKind::Removed, ChangeKind::Added) => ChangeKind::Updated,
            (ChangeKind::Added, _) => ChangeKind::Added,
            (_, k) => k,
        };
        return;
    }
    seen.insert(key.clone());
    changes.push(ViewChange { ty: key.ty.clone(), key: key.id, kind });
}

/// Replaces confirmed temp ids in an op (target, parent, reference values).
fn rewrite_temp_ids(op: &mut WriteOp, map: &HashMap<(String, Id), Id>, schema: &SchemaInfo) {
    let real = |ty: &str, id: Id| map.get(&(ty.to_owned(), id)).copied();
    if op.operation != Operation::Create
        && let Some(id) = op.instance_id
        && let Some(r) = real(&op.instance_type, id)
    {
        op.instance_id = Some(r);
    }
    if let (Some(pt), Some(pid)) = (&op.parent_type, op.parent_id)
        && let Some(r) = real(pt, pid)
    {
        op.parent_id = Some(r);
    }
    let ty = op.instance_type.clone();
    for (field, value) in op.data.iter_mut().flatten() {
        if let (Some(target), Some(id)) = (schema.reference_target(&ty, field), value.as_i64())
            && let Some(r) = real(target, id)
        {
            *value = Value::from(r);
        }
    }
}

fn compare_values(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x.as_f64().partial_cmp(&y.as_f64()).unwrap_or(Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (None | Some(Value::Null), None | Some(Value::Null)) => Equal,
        (None | Some(Value::Null), _) => Less,
        (_, None | Some(Value::Null)) => Greater,
        _ => Equal,
    }
}
