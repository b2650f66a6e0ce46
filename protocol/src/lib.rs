//! Statecast's wire vocabulary: ids, rows, the schema and the stream filters
//! they are checked against, wire errors (code and reason), frames, and
//! protocol v1's messages with both codecs (JSON and MessagePack).
//!
//! It has no runtime, no store and no engine: the client and the transports'
//! client sides depend on it alone; `statecast-core` re-exports it.

pub mod applied;
pub mod codec;
pub mod context;
pub mod error;
pub mod filter;
pub mod frame;
pub mod ids;
pub mod row;
pub mod schema;
pub mod user;
pub mod v1;

pub use applied::{AppliedRecord, CreatedId};
pub use codec::{Codec, DecodeError};
pub use context::{Op, parse_context};
pub use error::{ErrorReason, WireError};
pub use filter::{CompiledFilters, Filter, FilterError, Filters, Lookup};
pub use frame::{Frame, FrameKind};
pub use ids::{Id, Seq};
pub use row::{Fields, Row, RowKey};
pub use schema::{EntityType, Field, FieldKind, OnDelete, Schema, SchemaBuilder, SchemaError, ServerValue};
pub use user::User;
