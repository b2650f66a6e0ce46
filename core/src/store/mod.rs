//! The `Store` trait: rows by id with versions, children by reference,
//! atomic compare-and-commit transactions with cascades, a durability
//! watermark, a bounded change log and the exactly-once `applied` records.
//!
//! Stores only store; every rule lives in the engine. The shared commit
//! planner ([`plan`]) gives every store the same cascade and id semantics.

pub mod durability;
pub mod memory;
pub mod plan;

use crate::ids::{Id, Seq};
use crate::row::{Fields, Row, RowKey};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub use durability::DurableWatermark;
pub use memory::MemoryStore;

/// A store failure. `Unavailable` means the store can't be reached (503);
/// `Corrupt` and `Backend` are internal failures (500) after which nothing was
/// committed; `OutcomeUnknown` means a commit may or may not have happened
/// (e.g. the connection broke during `COMMIT`), answered 503 `OUTCOME_UNKNOWN`
/// so the client resends with the same writeId.
///
/// Each carries a message and, when a library failed (the database driver,
/// the embedded engine, I/O, a codec), that error as its
/// [`source`](std::error::Error::source). Build one with the lower-case
/// constructors and [`with_source`](StoreError::with_source):
/// `StoreError::unavailable(format!("can't reach the database: {e}")).with_source(e)`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {message}")]
    Unavailable {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    #[error("stored data is corrupt: {message}")]
    Corrupt {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    #[error("store failure: {message}")]
    Backend {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// A flush failed: what was committed since the last flush may be lost.
    #[error("store flush failed: {message}")]
    FlushFailed {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The commit was sent but its fate is unknown: it may have been applied.
    #[error("the outcome of the commit is unknown: {message}")]
    OutcomeUnknown {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
}

/// The library error under a [`StoreError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl StoreError {
    /// The store can't be reached (503 `UNAVAILABLE`).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable { message: message.into(), source: None }
    }

    /// Stored data can't be read (500).
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::Corrupt { message: message.into(), source: None }
    }

    /// Any other failure of the backend (500); nothing was committed.
    pub fn backend(message: impl Into<String>) -> Self {
        Self::Backend { message: message.into(), source: None }
    }

    /// A flush failed (503 `UNAVAILABLE`).
    pub fn flush_failed(message: impl Into<String>) -> Self {
        Self::FlushFailed { message: message.into(), source: None }
    }

    /// A commit's fate is unknown (503 `OUTCOME_UNKNOWN`).
    pub fn outcome_unknown(message: impl Into<String>) -> Self {
        Self::OutcomeUnknown { message: message.into(), source: None }
    }

    /// The same error, caused by `source`.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        let slot = match &mut self {
            Self::Unavailable { source, .. }
            | Self::Corrupt { source, .. }
            | Self::Backend { source, .. }
            | Self::FlushFailed { source, .. }
            | Self::OutcomeUnknown { source, .. } => source,
        };
        *slot = Some(source.into());
        self
    }

    /// The message, without the kind's prefix.
    pub fn message(&self) -> &str {
        match self {
            Self::Unavailable { message, .. }
            | Self::Corrupt { message, .. }
            | Self::Backend { message, .. }
            | Self::FlushFailed { message, .. }
            | Self::OutcomeUnknown { message, .. } => message,
        }
    }
}

/// How a new row gets its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NewId {
    /// The store assigns the next id of the type.
    Auto,
    /// The store assigns an id and maps this temporary (negative) id to it for
    /// the rest of the transaction (later ops and reference fields may use it).
    Temp(Id),
    /// Use this id verbatim (client-minted, or given by system code); a taken id
    /// fails the commit with [`CommitError::IdConflict`].
    Given(Id),
}

/// One operation of a transaction. Ids and reference values may be temp ids
/// introduced by an earlier `Insert` of the same transaction.
#[derive(Clone, Debug, PartialEq)]
pub enum TxOp {
    Insert { ty: Arc<str>, id: NewId, fields: Fields },
    Update { ty: Arc<str>, id: Id, fields: Fields },
    Delete { ty: Arc<str>, id: Id },
}

/// The exactly-once key: (user, clientId, writeId).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AppliedKey {
    pub user: Id,
    pub client_id: String,
    pub write_id: i64,
}

pub use statecast_protocol::applied::{AppliedRecord, CreatedId};

/// The version [`Transaction::expect`] gives a row that must not exist
/// (real rows have versions from 1: the seq that wrote them).
pub const ABSENT: Seq = 0;

/// The ids of the rows of `ty` whose reference `field` pointed at `parent`
/// when a check read them (sorted, each once).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReferencingSet {
    pub ty: Arc<str>,
    pub field: String,
    pub parent: Id,
    pub ids: Vec<Id>,
}

/// A transaction for [`Store::commit`].
#[derive(Clone, Debug, Default)]
pub struct Transaction {
    pub ops: Vec<TxOp>,
    /// Rows read by the checks, with the versions they had: the commit fails
    /// with [`CommitError::Conflict`] if any now differs (or is gone). Version
    /// [`ABSENT`] expects the row not to exist (a check read it and found none).
    pub expect: Vec<(Arc<str>, Id, Seq)>,
    /// Reference sets read by the checks (a hook's
    /// [`referencing`](crate::PolicyContext::referencing)): the commit fails
    /// with a conflict if a row joined or left one since.
    pub expect_referencing: Vec<ReferencingSet>,
    /// Recorded under a unique key in the same transaction.
    pub applied: Option<AppliedKey>,
    /// Commit time (Unix milliseconds), used for `applied.at_ms`.
    pub now_ms: u64,
}

/// One changed row: its image before and after the commit (a create has no
/// before, a delete no after).
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub key: RowKey,
    pub before: Option<Row>,
    pub after: Option<Row>,
}

/// What a commit did.
#[derive(Clone, Debug, PartialEq)]
pub struct Committed {
    pub seq: Seq,
    /// Every changed row (cascades included), in the order first touched.
    pub changes: Vec<Change>,
    pub created: Vec<CreatedId>,
}

/// One entry of the change log.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEntry {
    pub seq: Seq,
    pub changes: Vec<Change>,
}

/// Why a commit did not happen. Nothing was committed in every case.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// A row read by the checks changed (or vanished) before the commit.
    #[error("{ty}#{id} changed since it was read")]
    Conflict { ty: String, id: Id },
    /// A given id is already taken.
    #[error("{ty}#{id} already exists")]
    IdConflict { ty: String, id: Id },
    /// A delete is blocked by a `restrict` reference.
    #[error("{ty}#{id} is still referenced by {by_ty}#{by_id}")]
    Restricted { ty: String, id: Id, by_ty: String, by_id: Id },
    /// The applied key is already recorded: the write was applied before.
    #[error("write already applied at seq {}", .0.seq)]
    Duplicate(AppliedRecord),
    /// The transaction itself is malformed (an unknown temp id, a missing row).
    #[error("invalid transaction: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a `since` read of the change log found.
#[derive(Clone, Debug, PartialEq)]
pub enum LogRead {
    /// Entries after the given seq (possibly fewer than asked, up to `limit`).
    Entries(Vec<LogEntry>),
    /// The log no longer reaches back that far.
    Trimmed,
}

/// What [`Store::tail_log`] read: committed log entries in seq order with no
/// unresolved hole before any of them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tail {
    pub entries: Vec<LogEntry>,
    /// Every seq up to here is settled: delivered in `entries` (or earlier),
    /// or a hole that no transaction can fill any more (an aborted commit).
    pub through: Seq,
    /// The log no longer reached back to the seq asked for: `entries` start
    /// after a gap of trimmed commits.
    pub trimmed: bool,
}

/// A place that stores rows. See the module docs.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A random id made when the store was created.
    fn epoch(&self) -> &str;

    /// The seq of the last commit (which may not be durable yet).
    fn last_seq(&self) -> Seq;

    /// The seq up to which every commit is durable.
    fn durable_seq(&self) -> Seq;

    /// The fatal failure this store met, if any (a failed flush or write):
    /// it then refuses commits, and what it holds in memory may differ from
    /// the disk, so it must be reopened (the server stops; a restart recovers
    /// every durable commit). `None` while healthy.
    fn failure(&self) -> Option<String> {
        None
    }

    /// Waits until every commit up to `seq` is durable.
    async fn wait_durable(&self, seq: Seq) -> Result<(), StoreError>;

    /// One row by id.
    async fn get(&self, ty: &str, id: Id) -> Result<Option<Row>, StoreError>;

    /// Rows by ids (missing ones are skipped), in the order asked.
    async fn get_many(&self, ty: &str, ids: &[Id]) -> Result<Vec<Row>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = self.get(ty, *id).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Every row of `child_ty` whose reference `field` is one of `parent_ids`,
    /// ordered by creation (`created`, then id).
    async fn children(&self, child_ty: &str, field: &str, parent_ids: &[Id]) -> Result<Vec<Row>, StoreError>;

    /// Rows of `ty` with id above `after` (every row when `None`), in id
    /// order, at most `limit`: a page of a whole-type scan (stream snapshots).
    async fn scan(&self, ty: &str, after: Option<Id>, limit: usize) -> Result<Vec<Row>, StoreError>;

    /// Commits a transaction atomically (see [`Transaction`]).
    async fn commit(&self, tx: Transaction) -> Result<Committed, CommitError>;

    /// The recorded outcome of an applied write.
    async fn applied(&self, key: &AppliedKey) -> Result<Option<AppliedRecord>, StoreError>;

    /// The highest writeId whose applied record was purged for this client, if any:
    /// a resend at or below it that has no record is stale.
    async fn purged_write_id(&self, user: Id, client_id: &str) -> Result<Option<i64>, StoreError>;

    /// Removes applied records older than `before_ms`; returns how many.
    async fn purge_applied(&self, before_ms: u64) -> Result<u64, StoreError>;

    /// Change log entries with seq above `after`, at most `limit`.
    async fn changes_since(&self, after: Seq, limit: usize) -> Result<LogRead, StoreError>;

    /// True when several server processes commit to this store (PostgreSQL):
    /// the engine then delivers every commit, its own included, from
    /// [`tail_log`](Self::tail_log) in seq order instead of from its writers.
    fn shared_log(&self) -> bool {
        false
    }

    /// Shared log: the committed entries after `after`, in seq order, stopping
    /// at the first seq that a transaction still in progress may fill.
    async fn tail_log(&self, after: Seq, limit: usize) -> Result<Tail, StoreError> {
        match self.changes_since(after, limit).await? {
            LogRead::Entries(entries) => {
                let through = entries.last().map_or(after, |e| e.seq);
                Ok(Tail { entries, through, trimmed: false })
            }
            LogRead::Trimmed => Ok(Tail { entries: Vec::new(), through: after, trimmed: true }),
        }
    }

    /// Shared log: waits until another commit may have been logged (a
    /// notification), at most `max`.
    async fn wait_log(&self, max: std::time::Duration) {
        tokio::time::sleep(max).await
    }

    /// Shared log: the highest seq drawn so far by any process (committed or
    /// not): every commit visible now has a seq at or below it.
    async fn log_head(&self) -> Result<Seq, StoreError> {
        Ok(self.last_seq())
    }

    /// True when the store holds no rows at all.
    async fn is_empty(&self) -> Result<bool, StoreError>;

    /// Shared log: messages between the processes on this store for what is
    /// never stored (presence). None when this process is alone.
    fn bus(&self) -> Option<Arc<dyn Bus>> {
        None
    }

    /// Flushes everything and stops background work.
    async fn close(&self) -> Result<(), StoreError>;
}

/// Messages between the processes sharing a store (PostgreSQL: `NOTIFY`),
/// for state that lives only in memory (presence). Best effort: a message
/// may be lost (a reconnect), so its users repair by repeating themselves
/// (heartbeats, a sync on start). Payloads are at most [`BUS_MAX_MESSAGE`] bytes.
pub trait Bus: Send + Sync {
    /// Sends to every process on the store (this one too), in the order
    /// published.
    fn publish(&self, message: String);

    /// Messages published by every process on the store from now on, and
    /// [`BusEvent::Joined`] whenever this process (re)joined the bus.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<BusEvent>;
}

/// What a [`Bus`] delivers.
#[derive(Clone, Debug, PartialEq)]
pub enum BusEvent {
    /// A message some process published.
    Message(Arc<str>),
    /// This process (re)joined the bus: messages sent before may have been
    /// missed, so ask the others again.
    Joined,
}

/// The largest message a [`Bus`] carries (PostgreSQL's `NOTIFY` payload
/// limit is 8000 bytes).
pub const BUS_MAX_MESSAGE: usize = 7900;

/// Current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Makes a new random store epoch (128 bits, hex).
pub fn new_epoch() -> String {
    format!("{:032x}", rand::random::<u128>())
}
