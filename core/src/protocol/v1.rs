//! Protocol v1 messages (names in camelCase as in the seed protocol). Clients
//! and servers share these types; both codecs encode them as maps.

use crate::auth::User;
use crate::channel::Op;
use crate::error::WireError;
use crate::ids::{Id, Seq};
use crate::row::{Fields, Row};
use crate::store::{AppliedRecord, CreatedId};
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
}

impl ClientMessage {
    /// The message's `type` names (for the decoder's error messages).
    pub const TYPES: &'static [&'static str] = &["hello", "subscribe", "unsubscribe", "write", "get", "auth", "ping"];

    pub fn rid(&self) -> Rid {
        match self {
            ClientMessage::Hello(m) => m.rid.clone(),
            ClientMessage::Subscribe(m) => m.rid.clone(),
            ClientMessage::Unsubscribe(m) => m.rid.clone(),
            ClientMessage::Write(m) => m.rid.clone(),
            ClientMessage::Get(m) => m.rid.clone(),
            ClientMessage::Auth(m) => m.rid.clone(),
            ClientMessage::Ping(m) => m.rid.clone(),
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
    PermissionLost,
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
