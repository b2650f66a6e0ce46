//! The Statecast native client: subscribe to contexts, see them live, and
//! write with `save` / `create` / `delete` / `batch`. A write shows in the
//! view at once and settles when the server confirms or refuses it; refused
//! writes vanish from the view with nothing else disturbed.
//!
//! The optimistic layer is [`state::ClientState`], a plain data structure;
//! [`Client`] is the async shell that moves frames, reconnects with backoff,
//! resends unanswered writes with their original writeIds (exactly once),
//! and optionally persists the pending queue.
//!
//! ```no_run
//! # async fn demo() -> Result<(), statecast_client::ClientError> {
//! use statecast_client::{Client, ClientConfig};
//! use serde_json::json;
//! let client = Client::connect(ClientConfig::new("ws://127.0.0.1:7100/ws", "alice")).await?;
//! let job = client.subscribe("job", 1).await?;
//! let write = job.save("Task", 1, json!({"status": "done"}))?; // in the view already
//! write.await?;                                                  // confirmed by the server
//! # Ok(()) }
//! ```

mod driver;
mod persist;
pub mod state;
pub mod streams;
pub mod tree;

use serde::de::DeserializeOwned;
use serde_json::Value;
use statecast_protocol::Codec;
use statecast_protocol::error::{ErrorReason, WireError};
use statecast_protocol::ids::Id;
use statecast_protocol::row::Fields;
use statecast_protocol::v1::{Operation, WriteOp};
pub use statecast_protocol::v1::{PresenceEntry, PresenceUser};
use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};

pub use state::{
    ChangeKind, ClientState, StreamViewInfo, StreamViewStatus, ViewChange, ViewRow, WriteOptions, WriteOutcome,
};
pub use statecast_transport_quic::Trust as QuicTrust;
pub use streams::{StreamRequest, StreamView, StreamViewEvent};

/// How a client connects and behaves.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `ws://host:port/ws`, `wss://host:port/ws`, or `quic://host:port` (QUIC always speaks MessagePack).
    pub url: String,
    pub token: String,
    /// JSON text frames (default) or MessagePack binary frames.
    pub codec: Codec,
    /// How long a write's handle waits before resolving with `TIMEOUT` (the write stays queued).
    pub write_timeout: Duration,
    /// How long connecting and the `hello` exchange may take.
    pub connect_timeout: Duration,
    /// Reconnect backoff: the first delay and the cap (with jitter).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Persist the pending queue (and the clientId) in a fjall database in this directory.
    pub queue_path: Option<PathBuf>,
    /// The client's identity for exactly-once writes (default: persisted or random).
    pub client_id: Option<String>,
    pub frame_limit: usize,
    /// For `quic://`: which server certificates to trust (a CA file, a pinned
    /// SHA-256 fingerprint, or — for local demos only — anything).
    pub quic_trust: Option<QuicTrust>,
    /// For `wss://`: trust certificates issued by the CA(s) in this PEM file
    /// (default: the system's root certificates).
    pub tls_ca_file: Option<PathBuf>,
}

impl ClientConfig {
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: token.into(),
            codec: Codec::Json,
            write_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            queue_path: None,
            client_id: None,
            frame_limit: 1 << 20,
            quic_trust: None,
            tls_ca_file: None,
        }
    }

    /// Is this a QUIC URL?
    pub fn is_quic(&self) -> bool {
        self.url.starts_with("quic://")
    }
}

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The server (or the optimistic layer, for dependents) refused: nothing was applied.
    #[error("refused: {0}")]
    Refused(WireError),
    /// No answer in time; the write stays queued and may still be applied.
    #[error("write {write_id} was not answered within {timeout:?}; it stays queued")]
    Timeout { write_id: i64, timeout: Duration },
    #[error("can't connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the server refused the token: {0}")]
    Unauthenticated(WireError),
    #[error("the client was closed")]
    Closed,
    #[error("the persisted queue failed: {0}")]
    Queue(String),
}

impl ClientError {
    /// The protocol error behind a refusal, with its code and reason.
    pub fn wire(&self) -> Option<&WireError> {
        match self {
            ClientError::Refused(e) | ClientError::Unauthenticated(e) => Some(e),
            _ => None,
        }
    }
}

/// A change to a context's view.
#[derive(Clone, Debug, PartialEq)]
pub enum ViewEvent {
    Changed(Vec<ViewChange>),
    /// The server ended the subscription (e.g. `ANCHOR_DELETED`).
    Closed(statecast_protocol::v1::UnsubscribeReason),
    /// The server's store changed (new epoch): the context was loaded afresh.
    Reset,
    /// Who else is here, or what they show, changed: read [`Context::presence`].
    Presence,
}

pub(crate) enum Command {
    /// Send what is ready to send: the subscribes and unsubscribes the state
    /// queued (each once per connection), then the writes.
    Flush,
    Close(oneshot::Sender<()>),
}

/// Who waits for a write's answer.
type WriteWaiter = oneshot::Sender<Result<WriteOutcome, ClientError>>;
/// Who waits for a context's first state.
type LoadWaiter = oneshot::Sender<Result<(), ClientError>>;

pub(crate) struct Shared {
    pub state: parking_lot::Mutex<ClientState>,
    pub commands: mpsc::UnboundedSender<Command>,
    pub waiters: parking_lot::Mutex<HashMap<i64, WriteWaiter>>,
    pub loading: parking_lot::Mutex<HashMap<String, Vec<LoadWaiter>>>,
    pub watchers: parking_lot::Mutex<HashMap<String, broadcast::Sender<ViewEvent>>>,
    pub queue: Option<persist::Queue>,
    /// Who waits for a stream view's first `subscribed`, by local id.
    pub stream_waiters: parking_lot::Mutex<HashMap<u64, LoadWaiter>>,
    /// Where a stream view's changes go, by local id.
    pub stream_events: parking_lot::Mutex<HashMap<u64, mpsc::UnboundedSender<StreamViewEvent>>>,
    /// The server store's epoch (from `welcome`).
    pub epoch: parking_lot::Mutex<Option<String>>,
    pub config: ClientConfig,
}

/// A connected client (cheap to clone).
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl Client {
    /// Connects, says hello and starts the background driver. Fails if the
    /// first connection can't be made or the token is refused; later drops
    /// reconnect by themselves.
    pub async fn connect(mut config: ClientConfig) -> Result<Client, ClientError> {
        if config.is_quic() {
            config.codec = Codec::MsgPack;
        }
        let queue = match &config.queue_path {
            Some(path) => Some(persist::Queue::open(path).map_err(ClientError::Queue)?),
            None => None,
        };
        let client_id = match (&config.client_id, &queue) {
            (Some(id), _) => id.clone(),
            (None, Some(q)) => q.client_id().map_err(ClientError::Queue)?,
            (None, None) => format!("{:032x}", rand::random::<u128>()),
        };
        let mut state = ClientState::new(client_id);
        if let Some(q) = &queue {
            let (next, writes) = q.load().map_err(ClientError::Queue)?;
            state.set_next_write_id(next);
            for w in &writes {
                if let Err(e) = state.restore(w) {
                    tracing::warn!(write_id = w.write_id, error = %e, "dropping an unreadable persisted write");
                }
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: parking_lot::Mutex::new(state),
            commands: tx,
            waiters: Default::default(),
            loading: Default::default(),
            watchers: Default::default(),
            queue,
            stream_waiters: Default::default(),
            stream_events: Default::default(),
            epoch: Default::default(),
            config,
        });
        let first = driver::connect_once(&shared).await?;
        tokio::spawn(driver::run(shared.clone(), first, rx));
        Ok(Client { shared })
    }

    /// This client's identity for exactly-once writes.
    pub fn client_id(&self) -> String {
        self.shared.state.lock().client_id.clone()
    }

    /// Subscribes to `channel/anchor_id` and waits for its first state.
    pub async fn subscribe(&self, channel: &str, anchor_id: Id) -> Result<Context, ClientError> {
        let context = format!("{channel}/{anchor_id}");
        let (tx, rx) = oneshot::channel();
        let loaded = {
            let mut state = self.shared.state.lock();
            state.add_context(&context, channel, anchor_id);
            state.is_loaded(&context)
        };
        if !loaded {
            self.shared.loading.lock().entry(context.clone()).or_default().push(tx);
        }
        self.command(Command::Flush)?;
        if !loaded {
            match tokio::time::timeout(self.shared.config.connect_timeout.max(Duration::from_secs(30)), rx).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => return Err(e),
                Ok(Err(_)) => return Err(ClientError::Closed),
                Err(_) => {
                    return Err(ClientError::Refused(WireError::new(
                        ErrorReason::Timeout,
                        format!("no state for `{context}` in time"),
                    )));
                }
            }
        }
        Ok(Context { client: self.clone(), name: context })
    }

    /// Opens a live view of a stream and waits for its first `subscribed`
    /// (with the snapshot, if asked). The view keeps itself current.
    pub async fn stream(&self, request: StreamRequest) -> Result<StreamView, ClientError> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (tx, rx) = oneshot::channel();
        let local = {
            let mut state = self.shared.state.lock();
            let local = state.add_stream(request);
            self.shared.stream_waiters.lock().insert(local, tx);
            self.shared.stream_events.lock().insert(local, events_tx);
            local
        };
        let view = StreamView { local, events, client: self.clone() };
        self.command(Command::Flush)?;
        match tokio::time::timeout(self.shared.config.connect_timeout.max(Duration::from_secs(30)), rx).await {
            Ok(Ok(Ok(()))) => Ok(view),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => {
                Err(ClientError::Refused(WireError::new(ErrorReason::Timeout, "no answer to the stream subscribe")))
            }
        }
    }

    pub(crate) fn command(&self, c: Command) -> Result<(), ClientError> {
        self.shared.commands.send(c).map_err(|_| ClientError::Closed)
    }

    /// Closes the connection (pending writes stay in the persisted queue, if any).
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.command(Command::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Writes not yet answered by the server.
    pub fn pending_count(&self) -> usize {
        self.shared.state.lock().pending_count()
    }
}

/// One subscribed context: its view, its changes, and writes against it.
#[derive(Clone)]
pub struct Context {
    client: Client,
    name: String,
}

/// Where a new row goes: `parent_type#parent_id`'s relation.
#[derive(Clone, Debug)]
pub struct Parent<'a> {
    pub ty: &'a str,
    pub id: Id,
    pub relation: &'a str,
}

impl Context {
    /// The context name (`"job/1"`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The view: canonical rows with the pending writes replayed, in tree order.
    pub fn view(&self) -> Vec<ViewRow> {
        self.client.shared.state.lock().view(&self.name)
    }

    /// One row of the view by type and id (or stable key).
    pub fn row(&self, ty: &str, id: Id) -> Option<ViewRow> {
        self.client.shared.state.lock().row(&self.name, ty, id)
    }

    /// The view's rows of one type, deserialized into the app's own struct (`id` + fields).
    pub fn rows<T: DeserializeOwned>(&self, ty: &str) -> Result<Vec<T>, serde_json::Error> {
        self.view().iter().filter(|r| &*r.ty == ty).map(|r| serde_json::from_value(r.to_json())).collect()
    }

    /// The last seq this context has applied.
    pub fn seq(&self) -> u64 {
        self.client.shared.state.lock().context_seq(&self.name).unwrap_or(0)
    }

    /// Change notifications for this context.
    pub fn watch(&self) -> broadcast::Receiver<ViewEvent> {
        let mut watchers = self.client.shared.watchers.lock();
        watchers.entry(self.name.clone()).or_insert_with(|| broadcast::channel(1024).0).subscribe()
    }

    /// Saves fields of a row.
    pub fn save(&self, ty: &str, id: Id, data: Value) -> Result<WriteHandle, ClientError> {
        self.write(vec![op(Operation::Save, ty, Some(id), None, data)?], WriteOptions::default())
    }

    /// Creates a row under `parent`; its id is in the handle at once (client-minted by default).
    pub fn create(&self, ty: &str, parent: Parent<'_>, data: Value) -> Result<WriteHandle, ClientError> {
        self.write(vec![op(Operation::Create, ty, None, Some(parent), data)?], WriteOptions::default())
    }

    /// Deletes a row (and, on the server, what cascades from it).
    pub fn delete(&self, ty: &str, id: Id) -> Result<WriteHandle, ClientError> {
        self.write(vec![op(Operation::Delete, ty, Some(id), None, Value::Null)?], WriteOptions::default())
    }

    /// Several ops, all or nothing.
    pub fn batch(&self, ops: Vec<WriteOp>) -> Result<WriteHandle, ClientError> {
        self.write(ops, WriteOptions::default())
    }

    /// Any write, with options (skip the optimistic step, temp ids).
    pub fn write(&self, ops: Vec<WriteOp>, opts: WriteOptions) -> Result<WriteHandle, ClientError> {
        let shared = &self.client.shared;
        let (tx, rx) = oneshot::channel();
        let (write_id, created) = {
            let mut state = shared.state.lock();
            let (write_id, created, effects) = state.write(&self.name, ops, opts).map_err(ClientError::Refused)?;
            shared.waiters.lock().insert(write_id, tx);
            if let Some(q) = &shared.queue
                && let Err(e) = q.save_all(state.next_write_id(), &state.unsettled_writes())
            {
                tracing::error!(error = %e, "persisting the pending queue failed");
            }
            driver::dispatch(shared, effects);
            (write_id, created)
        };
        self.client.command(Command::Flush)?;
        Ok(WriteHandle { write_id, created, rx, timeout: shared.config.write_timeout })
    }

    /// The other connections' presence here: who (`user`), on which
    /// connection, showing what (`data`), in the order they arrived.
    pub fn presence(&self) -> Vec<PresenceEntry> {
        self.client.shared.state.lock().presence(&self.name).to_vec()
    }

    /// Shows `data` (any JSON of at most 1 KiB; `null` clears) to the
    /// context's other subscribers. Never stored; shown again after a
    /// reconnect. The server relays at most 20 updates a second per
    /// connection, the latest winning, so calling this on every keystroke
    /// or mouse move is fine.
    pub fn set_presence(&self, data: Value) -> Result<(), ClientError> {
        let shared = &self.client.shared;
        shared.state.lock().set_presence(&self.name, data).map_err(ClientError::Refused)?;
        self.client.command(Command::Flush)
    }

    /// Stops holding the context at once (its view empties, its unsent
    /// writes fail with `CONTEXT_CLOSED`). Subscribing to it again at any
    /// time gives a fresh subscription that the old one's late answers never touch.
    pub fn unsubscribe(&self) -> Result<(), ClientError> {
        let shared = &self.client.shared;
        let effects = shared.state.lock().unsubscribe(&self.name);
        driver::dispatch(shared, effects);
        self.client.command(Command::Flush)
    }
}

fn op(
    operation: Operation,
    ty: &str,
    id: Option<Id>,
    parent: Option<Parent<'_>>,
    data: Value,
) -> Result<WriteOp, ClientError> {
    let data: Option<Fields> = match data {
        Value::Null => None,
        Value::Object(m) => Some(m),
        other => {
            return Err(ClientError::Refused(WireError::invalid_data(
                "data",
                format!("data must be an object, got {other}"),
            )));
        }
    };
    Ok(WriteOp {
        operation,
        instance_type: ty.to_owned(),
        instance_id: id,
        parent_type: parent.as_ref().map(|p| p.ty.to_owned()),
        parent_id: parent.as_ref().map(|p| p.id),
        relation_name: parent.as_ref().map(|p| p.relation.to_owned()),
        data,
        if_version: None,
    })
}

/// A queued write. Await it for the server's answer (or `TIMEOUT`).
pub struct WriteHandle {
    pub write_id: i64,
    /// Ids of the rows the write creates (usable at once).
    pub created: Vec<Id>,
    rx: oneshot::Receiver<Result<WriteOutcome, ClientError>>,
    timeout: Duration,
}

impl WriteHandle {
    /// The id of the (first) created row.
    pub fn id(&self) -> Option<Id> {
        self.created.first().copied()
    }
}

impl IntoFuture for WriteHandle {
    type Output = Result<WriteOutcome, ClientError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, self.rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(ClientError::Closed),
                Err(_) => Err(ClientError::Timeout { write_id: self.write_id, timeout: self.timeout }),
            }
        })
    }
}
