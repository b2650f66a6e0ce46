//! Protocol v1 messages (names in camelCase as in the seed protocol). Clients
//! and servers share these types; both codecs encode them as maps.

use crate::applied::{AppliedRecord, CreatedId};
use crate::context::Op;
use crate::error::WireError;
use crate::ids::{Id, Seq};
use crate::row::{Fields, Row};
use crate::user::User;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

pub const PROTOCOL_VERSION: i64 = 1;

/// A request id, echoed in the answer.
pub type Rid = Option<Value>;

/// Client → server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ClientMessage {
    Hello(Hello),
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    Write(Write),
    Get(Get),
    Auth(Auth),
    Ping(Ping),
    Presence(SetPresence),
}

impl ClientMessage {
    /// The message's `type` names (for the decoder's error messages).
    pub const TYPES: &'static [&'static str] =
        &["hello", "subscribe", "unsubscribe", "write", "get", "auth", "ping", "presence"];

    pub fn rid(&self) -> Rid {
        match self {
            ClientMessage::Hello(m) => m.rid.clone(),
            ClientMessage::Subscribe(m) => m.rid.clone(),
            ClientMessage::Unsubscribe(m) => m.rid.clone(),
            ClientMessage::Write(m) => m.rid.clone(),
            ClientMessage::Get(m) => m.rid.clone(),
            ClientMessage::Auth(m) => m.rid.clone(),
            ClientMessage::Ping(m) => m.rid.clone(),
            ClientMessage::Presence(m) => m.rid.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    pub protocol: i64,
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Rid,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscribe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor_id: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Seq>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// With `since`: the `view` of the state the client holds (see
    /// [`State::view`]); a resume under other read rules gets a whole state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
    /// A stream subscription: the stream's name (the fields below are for streams only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The actions wanted (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<ChangeOp>>,
    /// Only the row with this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    /// `{"job": 1, "name__icontains": "bug"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<serde_json::Map<String, Value>>,
    /// Project `data` to these fields (full-payload streams only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<String>>,
    /// Answer with the matching rows now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snapshot: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Rid,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unsubscribe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Rid,
}

/// `save`, `create`, `delete` or `batch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Save,
    Create,
    Delete,
    Batch,
}

impl Operation {
    pub fn op(self) -> Option<Op> {
        match self {
            Operation::Save => Some(Op::Save),
            Operation::Create => Some(Op::Create),
            Operation::Delete => Some(Op::Delete),
            Operation::Batch => None,
        }
    }
}

/// One row operation: the body of a single write, or one op of a batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteOp {
    pub operation: Operation,
    pub instance_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Fields>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_version: Option<Seq>,
}

/// A `write` message: one op (fields inline) or a batch (`ops`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Write {
    pub write_id: i64,
    pub operation: Operation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Fields>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_version: Option<Seq>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ops: Vec<WriteOp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Rid,
}

impl Write {
    /// The row operations of this write (one, or the batch's).
    pub fn row_ops(&self) -> Result<Vec<WriteOp>, WireError> {
        use crate::error::ErrorReason;
        if self.operation == Operation::Batch {
            if self.ops.is_empty() || self.ops.len() > MAX_BATCH_OPS {
                return Err(WireError::new(
                    ErrorReason::InvalidData,
                    format!("a batch holds 1 to {MAX_BATCH_OPS} ops, got {}", self.ops.len()),
                ));
            }
            if let Some(i) = self.ops.iter().position(|o| o.operation == Operation::Batch) {
                return Err(WireError::new(ErrorReason::InvalidData, "a batch may not nest batches").with_op(i));
            }
            return Ok(self.ops.clone());
        }
        let instance_type = self
            .instance_type
            .clone()
            .ok_or_else(|| WireError::invalid_data("instanceType", "`instanceType` is required"))?;
        Ok(vec![WriteOp {
            operation: self.operation,
            instance_type,
            instance_id: self.instance_id,
            parent_type: self.parent_type.clone(),
            parent_id: self.parent_id,
            relation_name: self.relation_name.clone(),
            data: self.data.clone(),
            if_version: self.if_version,
        }])
    }
}

/// Typed constructors for app code, tests and clients: a write reads as what
/// it does instead of a hand-built JSON object.
///
/// ```
/// use statecast_protocol::v1::{Operation, Write};
///
/// // Save: change fields of an existing row, within a context.
/// let save = Write::save("Task", 1).set("status", "done").context("job/1").write_id(7);
/// assert_eq!((save.operation, save.instance_id, save.write_id), (Operation::Save, Some(1), 7));
///
/// // Create under a parent through a relation, with a temp id (or `.id(n)`
/// // for a client-minted one in [2^52, 2^53); none: the server picks it).
/// let create = Write::create("Task").under("Job", 1, "tasks").temp_id(-1).set("name", "Ship it");
/// assert_eq!(create.parent_id, Some(1));
///
/// // Delete, guarded by the version the app last saw.
/// let delete = Write::delete("Task", 3).if_version(12).context("job/1");
///
/// // All or nothing: later ops may name an earlier op's temp id.
/// let batch = Write::batch([
///     Write::create("Task").under("Job", 1, "tasks").temp_id(-1).set("name", "a"),
///     Write::save("Task", 2).set("status", "doing"),
/// ])
/// .context("job/1")
/// .after([5]);
/// assert_eq!(batch.ops.len(), 2);
///
/// // The same JSON a client sends:
/// assert_eq!(
///     serde_json::to_value(&save).unwrap(),
///     serde_json::json!({"writeId": 7, "operation": "save", "context": "job/1",
///                        "instanceType": "Task", "instanceId": 1, "data": {"status": "done"}}),
/// );
/// # let _ = delete;
/// ```
impl Write {
    fn op(operation: Operation, ty: Option<String>, id: Option<Id>) -> Self {
        Write {
            write_id: 0,
            operation,
            context: None,
            instance_type: ty,
            instance_id: id,
            parent_type: None,
            parent_id: None,
            relation_name: None,
            data: None,
            if_version: None,
            after: Vec::new(),
            ops: Vec::new(),
            rid: None,
        }
    }

    /// Changes fields of the row `ty#id` (give them with [`set`](Self::set)).
    pub fn save(ty: impl Into<String>, id: Id) -> Self {
        Self::op(Operation::Save, Some(ty.into()), Some(id))
    }

    /// Creates a row of `ty`; a client's create also names its parent with
    /// [`under`](Self::under). The server assigns the id unless
    /// [`temp_id`](Self::temp_id) or [`id`](Self::id) is given.
    pub fn create(ty: impl Into<String>) -> Self {
        Self::op(Operation::Create, Some(ty.into()), None)
    }

    /// Deletes the row `ty#id` (and what cascades from it).
    pub fn delete(ty: impl Into<String>, id: Id) -> Self {
        Self::op(Operation::Delete, Some(ty.into()), Some(id))
    }

    /// One all-or-nothing write of several ops (each a save, create or
    /// delete made with the constructors above; their `writeId`, `context`,
    /// `after` and `rid` are not used: give those on the batch).
    pub fn batch(ops: impl IntoIterator<Item = impl Into<WriteOp>>) -> Self {
        Write { ops: ops.into_iter().map(Into::into).collect(), ..Self::op(Operation::Batch, None, None) }
    }

    /// Sets one field's value in `data`.
    pub fn set(mut self, field: impl Into<String>, value: impl Into<Value>) -> Self {
        self.data.get_or_insert_with(Fields::new).insert(field.into(), value.into());
        self
    }

    /// Sets several fields at once (added to those already set).
    pub fn fields(mut self, fields: Fields) -> Self {
        self.data.get_or_insert_with(Fields::new).extend(fields);
        self
    }

    /// A create's parent: the row `parent_type#parent_id` and the relation
    /// (`Job.tasks`) that holds the new row.
    pub fn under(mut self, parent_type: impl Into<String>, parent_id: Id, relation: impl Into<String>) -> Self {
        self.parent_type = Some(parent_type.into());
        self.parent_id = Some(parent_id);
        self.relation_name = Some(relation.into());
        self
    }

    /// A create's temporary id (negative): the answer maps it to the real
    /// one, and later ops of a batch may name it.
    pub fn temp_id(mut self, id: Id) -> Self {
        self.instance_id = Some(id);
        self
    }

    /// A create's own id: client-minted in `[2^52, 2^53)` (used verbatim,
    /// 409 `ID_CONFLICT` when taken), or any positive id for a system write.
    pub fn id(mut self, id: Id) -> Self {
        self.instance_id = Some(id);
        self
    }

    /// The context (`"job/1"`) the write is made in.
    pub fn context(mut self, context: impl Into<String>) -> Self {
        self.context = Some(context.into());
        self
    }

    /// The client's write id (the exactly-once key with the user and client id).
    pub fn write_id(mut self, write_id: i64) -> Self {
        self.write_id = write_id;
        self
    }

    /// Applies only if the target row is at this version (else 409
    /// `VERSION_CONFLICT`); for a save or a delete.
    pub fn if_version(mut self, version: Seq) -> Self {
        self.if_version = Some(version);
        self
    }

    /// Write ids of the same client this write depends on: refused with 400
    /// `DEPENDENCY_FAILED` unless they were applied.
    pub fn after(mut self, write_ids: impl IntoIterator<Item = i64>) -> Self {
        self.after.extend(write_ids);
        self
    }

    /// A request id, echoed in the answer.
    pub fn rid(mut self, rid: impl Into<Value>) -> Self {
        self.rid = Some(rid.into());
        self
    }

    /// This write as a `{"type": "write", …}` client message.
    pub fn into_message(self) -> ClientMessage {
        ClientMessage::Write(self)
    }
}

/// One op of a batch from a single write (its `writeId`, `context`, `after`
/// and `rid` are dropped). A batch given as an op stays a batch, which the
/// engine refuses (batches do not nest).
impl From<Write> for WriteOp {
    fn from(w: Write) -> Self {
        WriteOp {
            operation: w.operation,
            instance_type: w.instance_type.unwrap_or_default(),
            instance_id: w.instance_id,
            parent_type: w.parent_type,
            parent_id: w.parent_id,
            relation_name: w.relation_name,
            data: w.data,
            if_version: w.if_version,
        }
    }
}

/// The most ops one batch may hold.
pub const MAX_BATCH_OPS: usize = 1000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Get {
    pub stream: String,
    #[serde(default)]
    pub ids: Vec<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Rid,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Rid,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ping {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Rid,
}

/// The most bytes a presence's `data` may take, encoded as JSON.
pub const MAX_PRESENCE_BYTES: usize = 1024;

/// The most presence updates per second one connection has relayed; beyond
/// that the latest per context waits for its turn (nothing queues).
pub const PRESENCE_UPDATES_PER_SECOND: u32 = 20;

/// Client → server: what this connection shows the other subscribers of a
/// context it subscribes to (`data: null` clears it). Never stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetPresence {
    pub context: String,
    /// At most [`MAX_PRESENCE_BYTES`] as JSON; `null` clears.
    #[serde(default)]
    pub data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Rid,
}

/// Who a presence belongs to: the user's id and name, never the token's claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceUser {
    pub id: Id,
    pub name: String,
}

impl From<&User> for PresenceUser {
    fn from(u: &User) -> Self {
        Self { id: u.id, name: u.name.clone() }
    }
}

/// One connection's presence in a context, as a `state` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceEntry {
    pub connection_id: String,
    pub user: PresenceUser,
    pub data: Value,
}

/// Server → client: another connection's presence in a context changed.
/// `data: null` means it cleared it; with `left: true`, the connection left
/// the context (unsubscribed, disconnected or lost the right to read it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Presence {
    pub context: String,
    pub connection_id: String,
    pub user: PresenceUser,
    pub data: Value,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub left: bool,
}

/// Server → client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ServerMessage {
    Welcome(Welcome),
    State(State),
    Delta(Delta),
    WriteResponse(WriteResponse),
    Error(ErrorMessage),
    Unsubscribed(Unsubscribed),
    Authenticated(Authenticated),
    Pong(Ping),
    Goaway(Goaway),
    Subscribed(Subscribed),
    Event(Event),
    Rows(Rows),
    Presence(Presence),
}

impl ServerMessage {
    /// The message's `type` names (clients ignore others).
    pub const TYPES: &'static [&'static str] = &[
        "welcome",
        "state",
        "delta",
        "writeResponse",
        "error",
        "unsubscribed",
        "authenticated",
        "pong",
        "goaway",
        "subscribed",
        "event",
        "rows",
        "presence",
    ];
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Welcome {
    pub connection_id: String,
    pub user: User,
    pub schema: Value,
    pub epoch: String,
    /// Outcomes of the hello's `pending` writeIds that were already applied.
    #[serde(default)]
    pub applied: Vec<AppliedOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Rid,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedOutcome {
    pub write_id: i64,
    pub seq: Seq,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created: Vec<CreatedId>,
}

impl AppliedOutcome {
    pub fn new(write_id: i64, rec: &AppliedRecord) -> Self {
        Self { write_id, seq: rec.seq, created: rec.created.clone() }
    }
}

/// A removed row in an incremental state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Removed {
    #[serde(rename = "_type")]
    pub ty: String,
    pub id: Id,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub context: String,
    pub channel: String,
    pub anchor_id: Id,
    pub epoch: String,
    pub seq: Seq,
    pub instances: Vec<Arc<Row>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incremental: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<Removed>,
    /// The other connections' presence in this context (absent when none;
    /// in the first part of a state sent in parts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub presence: Vec<PresenceEntry>,
    /// An opaque tag of the read rules the state was built under (absent
    /// when the subscriber reads the context in full). A client resuming
    /// with `since` sends it back in `subscribe.view`: rules that changed
    /// meanwhile, on any server process, then get a whole state, never an
    /// incremental one that would keep rows no longer readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Rid,
}

/// `create`, `update` or `delete`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    Create,
    Update,
    Delete,
}

/// One change in a delta: `{"op", "_type", "id", "_version", ...fields}`.
/// An update holds only the changed fields; a delete holds none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeltaChange {
    pub op: ChangeOp,
    #[serde(rename = "_type")]
    pub ty: Arc<str>,
    pub id: Id,
    #[serde(rename = "_version")]
    pub version: Seq,
    #[serde(flatten)]
    pub fields: Fields,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delta {
    pub context: String,
    pub seq: Seq,
    pub prev: Seq,
    pub changes: Arc<Vec<DeltaChange>>,
    /// Only in the writer's copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created: Vec<CreatedId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteResponse {
    pub write_id: i64,
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<Seq>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created: Vec<CreatedId>,
    /// A single create also names its id here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<Id>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Rid,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorMessage {
    #[serde(flatten)]
    pub error: WireError,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
    /// For `UNSUPPORTED_PROTOCOL`: the versions this server speaks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supported: Option<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Rid,
}

impl ErrorMessage {
    pub fn new(error: WireError, rid: Rid) -> Self {
        Self { error, context: None, subscription: None, supported: None, rid }
    }
}

/// Why a subscription ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnsubscribeReason {
    ClientRequest,
    AnchorDeleted,
    /// The user's new token (`auth`) no longer allows it.
    PermissionLost,
    /// A commit changed what the channel's policy reads (a membership
    /// deleted, a role changed), and the policy no longer allows it.
    Revoked,
    /// A stream subscription whose scope or read rule changed (what its
    /// policy reads changed): subscribe again for a fresh snapshot (the
    /// clients do it on their own, keeping the view until it arrives).
    Rescoped,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unsubscribed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
    pub reason: UnsubscribeReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Rid,
}

/// The answer to `auth`: the connection now runs on the new token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authenticated {
    pub user: User,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Rid,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Goaway {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The answer to a stream `subscribe`. With `snapshot`, `snapshot` holds the
/// matching rows at `seq` (projected in full mode, ids only in id mode); a
/// snapshot larger than the frame limit is sent in parts (`part`, `last`) like
/// a state. Events that follow have seq above `seq`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscribed {
    pub subscription: String,
    pub stream: String,
    pub seq: Seq,
    /// The filters the server forces for this user (the stream's scope, in
    /// the wire form of `filters`), so a client deciding rows for its view
    /// never shows one the scope excludes. Absent when the stream has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<serde_json::Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Vec<Arc<Row>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Rid,
}

/// One change seen by one stream subscription. `prev` is the seq of the
/// previous event (or the `subscribed`) of this subscription; events of one
/// commit share its seq. A row that leaves the filter arrives as `delete`,
/// one that enters it as `create`. `data` (full mode) is the row's fields,
/// projected: after the change for create/update, the last matching image
/// for delete.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub subscription: String,
    pub seq: Seq,
    pub prev: Seq,
    pub action: ChangeOp,
    pub id: Id,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Fields>,
}

/// The answer to `get`: the rows asked for that exist and that the stream's
/// scope lets the user see (the others are left out), as full rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rows {
    pub stream: String,
    pub rows: Vec<Arc<Row>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Rid,
}
