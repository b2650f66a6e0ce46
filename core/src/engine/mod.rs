//! The engine: one session per connection, the write pipeline (writable →
//! context → load → validate → `can_*` → commit) and the broadcast hub that
//! delivers canonical changes once they are durable.

mod commit_lock;
mod hub;
pub(crate) mod load;
mod metrics;
mod presence;
mod read;
mod revocation;
mod row_turns;
mod session;
mod split;
mod streams;
mod write;

use crate::auth::{Authenticator, User};
use crate::channel::{Channel, ChannelInfo};
use crate::error::{ErrorReason, WireError};
use crate::protocol::v1::{Write, WriteResponse};
use crate::schema::Schema;
use crate::store::Store;
use crate::stream::{Stream, StreamInfo};
use crate::transport::{Connection, ConnectionHandler};
use hub::{HubHandle, HubMsg};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;

pub use metrics::Metrics;

/// How often [`Engine::store_failed`] looks at the store.
const STORE_FAILURE_POLL: Duration = Duration::from_millis(100);

/// Tunables of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The largest frame accepted or sent (default 1 MiB).
    pub frame_limit: usize,
    /// Frames queued per connection before it counts as a slow consumer.
    pub outbox_capacity: usize,
    /// Check-and-commit attempts before `503 CONTENDED`.
    pub max_commit_attempts: u32,
    /// How long applied-write records are kept for exactly-once resends.
    pub applied_retention: Duration,
    /// Route stream changes through the index-field groups (default on). Off,
    /// every change is decided for every subscription of its stream: the same
    /// events, at a cost that follows all subscribers (for tests and benches).
    pub stream_index: bool,
    /// The most rows a stream `snapshot` may hold (default 10,000).
    pub snapshot_limit: usize,
    /// The most ids one `get` may ask for (default 1,000).
    pub get_limit: usize,
    /// How long a connection may take to say `hello` (default 10 s); one that
    /// doesn't is closed with 4001.
    pub hello_timeout: Duration,
    /// Limits on what one connection may hold or ask at once.
    pub limits: ConnectionLimits,
}

/// What one connection may hold or ask for at once: each beyond is refused
/// with 429 `RATE_LIMITED` and a reason, and changes nothing.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Subscribes to contexts still loading (default 16).
    pub subscribes_in_flight: usize,
    /// Stream subscriptions held (default 100).
    pub stream_subscriptions: usize,
    /// Bytes of one stream subscription's filters, as JSON (default 16 KiB).
    pub filter_bytes: usize,
    /// Subscriptions of one stream whose filters no index routes (each is
    /// decided for every change of the stream's type; default 1,000).
    pub unindexed_per_stream: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            subscribes_in_flight: 16,
            stream_subscriptions: 100,
            filter_bytes: 16 * 1024,
            unindexed_per_stream: 1000,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            frame_limit: 1 << 20,
            outbox_capacity: 1024,
            max_commit_attempts: 3,
            applied_retention: Duration::from_secs(7 * 24 * 3600),
            stream_index: true,
            snapshot_limit: 10_000,
            get_limit: 1000,
            hello_timeout: Duration::from_secs(10),
            limits: ConnectionLimits::default(),
        }
    }
}

/// Who performs a write made through [`Engine::write`].
#[derive(Clone, Debug)]
pub enum Actor {
    /// App code acting for the system: no writable, context or policy checks
    /// (values are still validated), may set read-only fields and give ids.
    System,
    /// App code acting as a user: every check a client's write gets.
    User(User),
}

/// Why an engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("channel `{0}` is declared twice")]
    DuplicateChannel(String),
    #[error("stream `{0}` is declared twice")]
    DuplicateStream(String),
    #[error("no authenticator was given")]
    NoAuthenticator,
}

/// Composes an engine.
pub struct EngineBuilder {
    schema: Arc<Schema>,
    store: Arc<dyn Store>,
    channels: Vec<Channel>,
    streams: Vec<Stream>,
    auth: Option<Arc<dyn Authenticator>>,
    config: EngineConfig,
}

impl EngineBuilder {
    pub fn channel(mut self, channel: Channel) -> Self {
        self.channels.push(channel);
        self
    }
    /// Declares a stream (see [`Stream::builder`]).
    pub fn stream(mut self, stream: Stream) -> Self {
        self.streams.push(stream);
        self
    }
    pub fn authenticator(mut self, auth: impl Authenticator) -> Self {
        self.auth = Some(Arc::new(auth));
        self
    }
    /// Like [`authenticator`](Self::authenticator), for one already shared.
    pub fn shared_authenticator(mut self, auth: Arc<dyn Authenticator>) -> Self {
        self.auth = Some(auth);
        self
    }
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// Builds the engine and starts its hub task (needs a tokio runtime).
    pub fn build(self) -> Result<Engine, EngineError> {
        let auth = self.auth.ok_or(EngineError::NoAuthenticator)?;
        let mut channels = BTreeMap::new();
        for ch in self.channels {
            let name = ch.name.clone();
            if channels.insert(name.clone(), Arc::new(ch)).is_some() {
                return Err(EngineError::DuplicateChannel(name));
            }
        }
        let mut streams = BTreeMap::new();
        for st in self.streams {
            let name = st.name.clone();
            if streams.insert(name.clone(), Arc::new(st)).is_some() {
                return Err(EngineError::DuplicateStream(name));
            }
        }
        let schema_info = schema_info(&self.schema, &channels, &streams);
        let metrics = Arc::new(Metrics::default());
        let commit_lock = commit_lock::CommitLock::new(self.store.shared_log());
        let watch = revocation::Watch::new(&channels, &streams);
        let (revalidate_tx, revalidate_rx) = tokio::sync::mpsc::unbounded_channel();
        let revalidate = (!watch.is_empty()).then(|| hub::Revalidate { watch, tx: revalidate_tx });
        // With other processes on the store, connection ids name this process too.
        let conn_suffix =
            if self.store.bus().is_some() { format!("@{:08x}", rand::random::<u32>()) } else { String::new() };
        let hub = hub::spawn(
            self.schema.clone(),
            self.store.clone(),
            metrics.clone(),
            self.config.frame_limit,
            commit_lock.clone(),
            hub::HubSettings {
                snapshot_limit: self.config.snapshot_limit,
                limits: self.config.limits.clone(),
                conn_suffix: conn_suffix.clone(),
            },
            revalidate,
        );
        let inner = Arc::new(Inner {
            schema: self.schema,
            store: self.store,
            channels,
            streams,
            auth,
            config: self.config,
            schema_info,
            hub,
            commit_lock,
            row_turns: row_turns::RowTurns::default(),
            metrics,
            next_conn: AtomicU64::new(1),
            next_sub: AtomicU64::new(1),
            accepting: AtomicBool::new(true),
            store_trouble: parking_lot::Mutex::new(None),
            conn_suffix,
        });
        spawn_purger(&inner);
        revocation::spawn(Arc::downgrade(&inner), revalidate_rx);
        Ok(Engine { inner })
    }
}

pub(crate) struct Inner {
    pub schema: Arc<Schema>,
    pub store: Arc<dyn Store>,
    pub channels: BTreeMap<String, Arc<Channel>>,
    pub streams: BTreeMap<String, Arc<Stream>>,
    pub auth: Arc<dyn Authenticator>,
    pub config: EngineConfig,
    /// What `welcome.schema` carries.
    pub schema_info: serde_json::Value,
    pub hub: HubHandle,
    /// Held across `Store::commit` and handing the commit to the hub, so the hub
    /// receives commits in order (see [`commit_lock`]). Never held across hooks
    /// or durability waits.
    pub commit_lock: commit_lock::CommitLock,
    /// Writes changing the same row check and commit in turn (see [`row_turns`]).
    pub row_turns: row_turns::RowTurns,
    pub metrics: Arc<Metrics>,
    pub next_conn: AtomicU64,
    /// Stream subscription ids (`s1`, `s2`, …), unique per engine.
    pub next_sub: AtomicU64,
    pub accepting: AtomicBool,
    /// Why the last commit failed for want of the store (a full disk, a lost
    /// database), until a commit succeeds again: `/readyz` reports it.
    pub store_trouble: parking_lot::Mutex<Option<String>>,
    /// Appended to connection ids (`c7@3fa2b1c0`) when other processes share
    /// the store, so presence tells their connections apart; empty alone.
    pub conn_suffix: String,
}

fn schema_info(
    schema: &Schema,
    channels: &BTreeMap<String, Arc<Channel>>,
    streams: &BTreeMap<String, Arc<Stream>>,
) -> serde_json::Value {
    let channels: Vec<ChannelInfo> = channels.values().map(|c| ChannelInfo::from(&**c)).collect();
    let streams: Vec<StreamInfo> = streams.values().map(|s| StreamInfo::from(&**s)).collect();
    serde_json::json!({ "types": schema.types, "channels": channels, "streams": streams })
}

/// Removes applied records past the retention window, hourly.
fn spawn_purger(inner: &Arc<Inner>) {
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            let cutoff = crate::store::now_ms().saturating_sub(inner.config.applied_retention.as_millis() as u64);
            match inner.store.purge_applied(cutoff).await {
                Ok(n) if n > 0 => tracing::info!(purged = n, "purged expired applied-write records"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "purging applied-write records failed"),
            }
        }
    });
}

/// The engine handle (cheap to clone): it serves connections handed to it
/// by transports ([`Engine::accept`]) and writes for app code ([`Engine::write`]).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use statecast_core::protocol::v1::Write;
/// use statecast_core::store::MemoryStore;
/// use statecast_core::{Actor, DevTokens, Engine, Schema, User};
/// use std::sync::Arc;
///
/// let schema = Schema::builder()
///     .entity("Job", |t| { t.string("name"); })
///     .build()?;
/// let store = Arc::new(MemoryStore::new(schema.clone()));
/// let engine = Engine::builder(schema, store)
///     .authenticator(DevTokens::new().with("alice", User::new(1, "alice")))
///     .build()?;
/// // App code writes through the engine: validated, committed, broadcast.
/// let done = engine.write(Actor::System, Write::create("Job").id(1).set("name", "Launch")).await?;
/// assert!(done.success);
/// assert!(engine.store().get("Job", 1).await?.is_some());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    pub fn builder(schema: Arc<Schema>, store: Arc<dyn Store>) -> EngineBuilder {
        EngineBuilder {
            schema,
            store,
            channels: Vec::new(),
            streams: Vec::new(),
            auth: None,
            config: EngineConfig::default(),
        }
    }

    pub fn schema(&self) -> &Arc<Schema> {
        &self.inner.schema
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Serves one connection until it closes (spawns its session task).
    pub fn accept(&self, conn: Connection) {
        if !self.inner.accepting.load(Ordering::SeqCst) {
            conn.outbox.close(crate::transport::close_code::GOING_AWAY, "SERVER_DRAINING");
            return;
        }
        tokio::spawn(session::run(self.inner.clone(), conn));
    }

    /// Writes as app code (a job, an admin tool): validated, committed and
    /// broadcast like a client's write. Resolves once durable and delivered.
    pub async fn write(&self, actor: Actor, write: Write) -> Result<WriteResponse, WireError> {
        let (tx, rx) = oneshot::channel();
        let context = match &actor {
            Actor::System => None,
            Actor::User(user) => Some(self.context_for_app_write(user, &write).await?),
        };
        let target = hub::ReplyTarget::Oneshot(tx);
        match write::run(&self.inner, &actor, None, context, &write, target).await {
            write::Outcome::Committed => {}
            write::Outcome::Refused(e) => {
                self.inner.metrics.count_write(Some(&e));
                return Err(e);
            }
            write::Outcome::Duplicate(rec) => {
                return Ok(WriteResponse {
                    write_id: write.write_id,
                    success: true,
                    seq: Some(rec.seq),
                    created: rec.created,
                    duplicate: true,
                    ..Default::default()
                });
            }
        }
        rx.await.map_err(|_| WireError::new(ErrorReason::OutcomeUnknown, "the engine stopped before answering"))?
    }

    async fn context_for_app_write(&self, user: &User, write: &Write) -> Result<write::WriteContext, WireError> {
        let name = write
            .context
            .as_deref()
            .ok_or_else(|| WireError::new(ErrorReason::NotInContext, "a write as a user needs `context`"))?;
        session::resolve_context(&self.inner, user, name).await
    }

    /// Checks `has_permission` again for every context the user's connections
    /// hold (after a role change, say); those no longer allowed end with
    /// `unsubscribed` `PERMISSION_LOST`. Returns how many were revoked.
    pub async fn revalidate(&self, user: &User) -> usize {
        let (tx, rx) = oneshot::channel();
        self.inner.hub.send(HubMsg::HeldBy { user: user.id, reply: tx });
        let Ok(held) = rx.await else { return 0 };
        let mut revoked = 0;
        for (conn, contexts) in held {
            for context in contexts {
                match session::resolve_context(&self.inner, user, &context).await {
                    Ok(_) => {}
                    Err(e) if e.code >= 500 => {
                        tracing::warn!(error = %e, %context, "can't revalidate a subscription now; it stays");
                    }
                    Err(_) => {
                        revoked += 1;
                        let reason = crate::protocol::v1::UnsubscribeReason::PermissionLost;
                        self.inner.hub.send(HubMsg::Revoke { conn, context, reason });
                    }
                }
            }
        }
        revoked
    }

    /// True while the store is healthy and the engine accepts work.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why the engine is not ready (draining, or the store failing), or
    /// `None` when it is.
    pub fn not_ready_reason(&self) -> Option<String> {
        if !self.inner.accepting.load(Ordering::SeqCst) {
            return Some("the server is draining".into());
        }
        if let Some(failure) = self.store_failure() {
            return Some(format!("the store failed and the server is stopping: {failure}"));
        }
        if !self.inner.hub.is_healthy() {
            return Some("a commit could not be made durable".into());
        }
        self.inner.store_trouble.lock().as_ref().map(|why| format!("the last commit failed: {why}"))
    }

    /// The store's fatal failure, if it met one (see [`Store::failure`]): the
    /// engine then answers 503 to writes and should be stopped; a restart
    /// recovers every durable commit.
    pub fn store_failure(&self) -> Option<String> {
        self.inner.store.failure()
    }

    /// Resolves once the store has failed fatally, with the failure.
    pub async fn store_failed(&self) -> String {
        let mut every = tokio::time::interval(STORE_FAILURE_POLL);
        loop {
            every.tick().await;
            if let Some(failure) = self.store_failure() {
                return failure;
            }
        }
    }

    /// The engine's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Metrics in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        self.inner.metrics.render()
    }

    /// Waits until every commit handed to the hub so far has been delivered.
    pub async fn flush_deliveries(&self) {
        let (tx, rx) = oneshot::channel();
        self.inner.hub.send(HubMsg::Barrier(tx));
        let _ = rx.await;
    }

    /// Stops taking work: sends `goaway`, drains in-flight writes, flushes the store.
    pub async fn shutdown(&self) {
        self.inner.accepting.store(false, Ordering::SeqCst);
        self.inner.hub.send(HubMsg::Goaway);
        // Writes that hold the commit lock finish handing their commit to the hub.
        drop(self.inner.commit_lock.exclusive().await);
        self.flush_deliveries().await;
        if let Err(e) = self.inner.store.close().await {
            tracing::error!(error = %e, "closing the store failed");
        }
    }
}

impl ConnectionHandler for Engine {
    fn handle(&self, conn: Connection) {
        self.accept(conn)
    }
}
