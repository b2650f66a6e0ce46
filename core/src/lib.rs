//! Statecast core: the data model, schema, channels, the wire protocol and the
//! sync engine, over the [`Store`] and [`Transport`] traits.
//!
//! `core` owns every rule; stores only store and transports only move frames.
//! The wire vocabulary (ids, rows, the schema, filters, wire errors, protocol
//! v1) lives in `statecast-protocol` and the transport seam in
//! `statecast-transport`; both are re-exported here under their old paths.

pub mod auth;
pub mod channel;
pub mod engine;
pub mod error;
pub mod policy;
pub mod read_rule;
pub mod store;
pub mod stream;

pub use statecast_protocol as protocol;
pub use statecast_protocol::{ids, row, schema};
pub use statecast_transport as transport;

#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

pub use auth::{Authenticator, BadSecret, DevTokens, JwtHs256, User};
pub use channel::{Channel, ChannelBuilder, Op};
pub use engine::{Actor, ConnectionLimits, Engine, EngineBuilder, EngineConfig};
pub use error::{ErrorReason, WireError};
pub use ids::{Id, Seq};
pub use policy::{Policy, PolicyContext, PolicyError};
pub use read_rule::ReadRule;
pub use row::{Fields, Row, RowKey};
pub use schema::{EntityType, Field, FieldKind, OnDelete, Schema, SchemaBuilder, SchemaError, ServerValue};
pub use store::{Store, StoreError};
pub use stream::{Filters, Lookup, Payload, Stream, StreamBuilder, StreamPolicy, StreamRequest};
pub use transport::{Connection, Frame, FrameKind, Transport};
