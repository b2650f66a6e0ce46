//! Streams (django-graphex subscriptions, done better): every change to rows
//! of one type that match a filter. A stream is declared in Rust with a name,
//! a type, a payload mode, a policy (default deny) with a *scope* hook that
//! forces filters per user, and optional index fields for routing at high
//! fan-out.
//!
//! ```
//! # use statecast_core::{Schema, stream::{Stream, Payload, AllowAuthenticated}};
//! let schema = Schema::builder()
//!     .entity("Job", |t| { t.string("name"); })
//!     .entity("Task", |t| { t.reference("job", "Job"); t.string("name"); })
//!     .build()?;
//! let tasks = Stream::builder("tasks", "Task")
//!     .payload(Payload::Full)
//!     .policy(AllowAuthenticated)
//!     .index_fields(["job"])
//!     .build(&schema)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub use statecast_protocol::filter;

use crate::ids::Id;
use crate::policy::{PolicyContext, PolicyError};
use crate::read_rule::ReadRule;
use crate::schema::{FieldKind, Schema, SchemaError};
use async_trait::async_trait;
use serde::Serialize;
use std::fmt;
use std::sync::Arc;

pub use filter::{CompiledFilters, Filter, FilterError, Filters, Lookup};

/// What an event carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Payload {
    /// Only the id (the default); clients fetch rows with `get` when they need them.
    #[default]
    Id,
    /// The row's fields, optionally projected to the fields a subscriber asks for.
    Full,
}

/// What the policy hooks learn of a request.
#[derive(Clone, Copy, Debug)]
pub struct StreamRequest<'a> {
    /// The stream's name.
    pub stream: &'a str,
    /// The stream's entity type.
    pub ty: &'a str,
    /// The client's own filters (before the scope is merged over them).
    pub filters: &'a Filters,
    /// The ids asked for: a subscribe's `id`, or a `get`'s `ids`.
    pub ids: &'a [Id],
}

/// The hooks of a stream. `has_permission` defaults to deny; `scope` to no
/// server-forced filters.
#[async_trait]
pub trait StreamPolicy: Send + Sync + 'static {
    /// May the user subscribe to (or `get` from) the stream?
    async fn has_permission(&self, cx: &PolicyContext<'_>, request: &StreamRequest<'_>) -> Result<bool, PolicyError> {
        let _ = (cx, request);
        Ok(false)
    }

    /// Server-forced filters for this user, merged over the client's with the
    /// server winning: the client can neither widen nor drop them. Decided at
    /// subscribe and enforced on every event, in memory.
    async fn scope(&self, cx: &PolicyContext<'_>, request: &StreamRequest<'_>) -> Result<Filters, PolicyError> {
        let _ = (cx, request);
        Ok(Filters::new())
    }

    /// The entity types [`has_permission`](Self::has_permission),
    /// [`scope`](Self::scope) and [`read_rule`](Self::read_rule) read. A
    /// commit that changes one decides the stream's subscriptions again: one
    /// no longer allowed ends with `unsubscribed` `REVOKED`, one whose scope
    /// or rule changed with `RESCOPED` (the clients subscribe again).
    fn depends_on(&self) -> &[&str] {
        &[]
    }

    /// Which of the stream's rows, and which fields, the user may read (see
    /// [`ReadRule`]): decided at subscribe and on every event, in memory. A
    /// row entering or leaving what the user may read arrives as `create` or
    /// `delete`; hidden fields are absent from events, snapshots and `get`.
    /// Default: every row the filters and scope let through, in full.
    async fn read_rule(&self, cx: &PolicyContext<'_>, request: &StreamRequest<'_>) -> Result<ReadRule, PolicyError> {
        let _ = (cx, request);
        Ok(ReadRule::all())
    }
}

/// Denies every subscription (the default).
#[derive(Debug, Default, Clone, Copy)]
pub struct DenyStream;

impl StreamPolicy for DenyStream {}

/// Lets any authenticated user subscribe, with no scope.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAuthenticated;

#[async_trait]
impl StreamPolicy for AllowAuthenticated {
    async fn has_permission(&self, _: &PolicyContext<'_>, _: &StreamRequest<'_>) -> Result<bool, PolicyError> {
        Ok(true)
    }
}

#[async_trait]
impl<P: StreamPolicy + ?Sized> StreamPolicy for Arc<P> {
    async fn has_permission(&self, cx: &PolicyContext<'_>, request: &StreamRequest<'_>) -> Result<bool, PolicyError> {
        (**self).has_permission(cx, request).await
    }
    async fn scope(&self, cx: &PolicyContext<'_>, request: &StreamRequest<'_>) -> Result<Filters, PolicyError> {
        (**self).scope(cx, request).await
    }
    async fn read_rule(&self, cx: &PolicyContext<'_>, request: &StreamRequest<'_>) -> Result<ReadRule, PolicyError> {
        (**self).read_rule(cx, request).await
    }
    fn depends_on(&self) -> &[&str] {
        (**self).depends_on()
    }
}

/// A checked stream declaration: every change to rows of one type that
/// match a subscriber's filters (merged under the policy's scope).
///
/// ```
/// use statecast_core::stream::AllowAuthenticated;
/// use statecast_core::{Payload, Schema, Stream};
///
/// let schema = Schema::builder()
///     .entity("Job", |t| { t.string("name"); })
///     .entity("Task", |t| { t.reference("job", "Job"); t.string("name"); })
///     .build()?;
/// let tasks = Stream::builder("tasks", "Task")
///     .payload(Payload::Full) // whole rows in events (the default: ids only)
///     .policy(AllowAuthenticated) // without a policy, every subscribe is denied
///     .index_fields(["job"]) // route changes by job: cost follows the matching subscribers
///     .build(&schema)?;
/// assert_eq!(tasks.name, "tasks");
/// # Ok::<(), statecast_core::SchemaError>(())
/// ```
#[derive(Clone)]
pub struct Stream {
    pub name: String,
    pub ty: Arc<str>,
    pub payload: Payload,
    pub policy: Arc<dyn StreamPolicy>,
    /// Fields whose equality values route changes to subscriber groups.
    pub index_fields: Vec<String>,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("name", &self.name)
            .field("ty", &self.ty)
            .field("payload", &self.payload)
            .field("index_fields", &self.index_fields)
            .finish_non_exhaustive()
    }
}

impl Stream {
    /// Starts declaring a stream named `name` over rows of type `ty`.
    pub fn builder(name: &str, ty: &str) -> StreamBuilder {
        StreamBuilder {
            name: name.to_owned(),
            ty: ty.to_owned(),
            payload: Payload::Id,
            policy: Arc::new(DenyStream),
            index_fields: Vec::new(),
        }
    }
}

/// Declares a stream; checked against the schema by [`build`](Self::build).
pub struct StreamBuilder {
    name: String,
    ty: String,
    payload: Payload,
    policy: Arc<dyn StreamPolicy>,
    index_fields: Vec<String>,
}

impl StreamBuilder {
    /// What events carry (default [`Payload::Id`]).
    pub fn payload(mut self, payload: Payload) -> Self {
        self.payload = payload;
        self
    }

    /// The policy deciding who subscribes and their scope (default: deny).
    pub fn policy(mut self, policy: impl StreamPolicy) -> Self {
        self.policy = Arc::new(policy);
        self
    }

    /// Fields (string, int, bool or reference) whose equality values group
    /// subscribers, so a change wakes only the groups matching its values.
    pub fn index_fields<I, S>(mut self, fields: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.index_fields.extend(fields.into_iter().map(Into::into));
        self
    }

    pub fn build(self, schema: &Schema) -> Result<Stream, SchemaError> {
        let bad = |message: String| SchemaError::BadStream { stream: self.name.clone(), message };
        if self.name.is_empty() || self.name.chars().any(|c| c.is_control() || c == '/') {
            return Err(bad("a stream name must be non-empty, with no `/` or control characters".into()));
        }
        let ty = schema.entity(&self.ty).ok_or_else(|| bad(format!("unknown type `{}`", self.ty)))?;
        let mut seen = Vec::new();
        for name in &self.index_fields {
            let field = ty.field(name).ok_or_else(|| bad(format!("`{}` has no index field `{name}`", ty.name)))?;
            match field.kind {
                FieldKind::String | FieldKind::Int | FieldKind::Bool | FieldKind::Reference { .. } => {}
                _ => return Err(bad(format!("index field `{name}` must be a string, int, bool or reference"))),
            }
            if seen.contains(name) {
                return Err(bad(format!("index field `{name}` is listed twice")));
            }
            seen.push(name.clone());
        }
        Ok(Stream {
            name: self.name,
            ty: Arc::from(ty.name.as_str()),
            payload: self.payload,
            policy: self.policy,
            index_fields: seen,
        })
    }
}

/// What a client learns of a stream in `welcome.schema`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub payload: Payload,
    pub index_fields: Vec<String>,
}

impl From<&Stream> for StreamInfo {
    fn from(s: &Stream) -> Self {
        Self { name: s.name.clone(), ty: s.ty.to_string(), payload: s.payload, index_fields: s.index_fields.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_declarations_are_checked() {
        let schema = Schema::builder()
            .entity("Task", |t| {
                t.string("name");
                t.float("weight");
            })
            .build()
            .expect("schema");
        let s = Stream::builder("tasks", "Task").index_fields(["name"]).build(&schema).expect("stream");
        assert_eq!(s.payload, Payload::Id);
        assert!(Stream::builder("tasks", "Nope").build(&schema).is_err());
        assert!(Stream::builder("", "Task").build(&schema).is_err());
        assert!(Stream::builder("t", "Task").index_fields(["nope"]).build(&schema).is_err());
        assert!(Stream::builder("t", "Task").index_fields(["weight"]).build(&schema).is_err());
        assert!(Stream::builder("t", "Task").index_fields(["name", "name"]).build(&schema).is_err());
    }
}
