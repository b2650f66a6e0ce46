//! What the hub asks of the world, and nothing more.
//!
//! The hub is a state machine: a [`HubMsg`](super::HubMsg) comes in, its
//! state changes, and what must happen outside goes out through [`HubIo`].
//! It never awaits, spawns a task or reads the clock. The driver
//! (`driver.rs`) runs these requests on tokio against the store and feeds
//! each answer back as a message; the simulator (`sim/`) schedules them
//! on its own clock, with the delays and failures a seed picks.
//!
//! Frames themselves go straight into each connection's [`Outbox`]
//! (a bounded queue that never blocks: full is an answer, the slow
//! consumer): that is the one hand-off kept synchronous, because the hot
//! fan-out path would otherwise pay for a second queue per delivery.
//!
//! [`Outbox`]: crate::transport::Outbox

use super::{LiveContext, SubscribeRequest};
use crate::channel::Channel;
use crate::engine::revocation::Touched;
use crate::engine::streams::SubId;
use crate::ids::{Id, Seq};
use crate::row::{Row, RowKey};
use crate::schema::EntityType;
use crate::stream::CompiledFilters;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// Subtrees of rows that moved between parents, loaded before routing.
pub(crate) type Moved = HashMap<(String, RowKey), Vec<Row>>;

/// A subtree to read before a commit is routed (see `moves_to_load`).
pub(crate) struct MoveLoad {
    pub channel: Arc<Channel>,
    pub name: String,
    pub row: Row,
}

/// What a stream subscribe needs read.
pub(crate) enum StreamRead {
    /// The change log after this seq.
    Since(Seq),
    /// The rows of the type matching the filters, at most `limit`.
    Snapshot { entity: Option<EntityType>, filters: CompiledFilters, limit: usize },
}

/// The hub's requests to the outside. Each read is answered later with a
/// message; none may be answered from inside the call (the hub is mid-step).
pub(crate) trait HubIo: Send {
    /// The time now: the simulated clock under test.
    fn now(&self) -> Instant;
    /// Read a context; answer `Loaded` once every commit the read may have
    /// seen reached the hub and is durable, with the durable seq then.
    fn load_context(&mut self, context: String, channel: Arc<Channel>, anchor_id: Id);
    /// Read the change log `(since, upto]` for a subscribe; answer `Backfilled`.
    fn read_log(&mut self, req: SubscribeRequest, since: Seq, upto: Seq);
    /// Read the subtrees commit `seq` moved; answer `MovesLoaded`.
    fn load_moves(&mut self, seq: Seq, loads: Vec<MoveLoad>);
    /// Read a stream subscribe's snapshot or replay; answer `StreamLoaded`
    /// under the same rule as `load_context`.
    fn load_stream(&mut self, sub: SubId, read: StreamRead);
    /// One process: answer `Durable` once commit `seq` is durable.
    fn wait_durable(&mut self, seq: Seq);
    /// Every commit up to `seq` was delivered (answers wait on this).
    fn delivered(&mut self, seq: Seq);
    /// A commit touched what policies read: decide subscriptions again.
    fn revalidate(&mut self, touched: Touched);
    /// A message for the other processes on the store's bus.
    fn publish(&mut self, text: String);
    /// A context left memory (a large one is better freed elsewhere).
    fn free(&mut self, ctx: Box<LiveContext>);
}
