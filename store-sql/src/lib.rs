//! The SQL store: SQLite (embedded, one process) and PostgreSQL (shared by
//! several server processes), over sqlx, with real tables derived from the
//! schema. A person opening the database with `sqlite3` or `psql` sees one
//! table per entity type with ordinary rows.
//!
//! - Every commit is one SQL transaction: the shared planner
//!   ([`statecast_core::store::plan`]) runs inside it over an async reader,
//!   then the rows, the id counters, the exactly-once record and the change
//!   log entry are written, and the transaction commits.
//! - **SQLite**: one writer connection (`BEGIN IMMEDIATE`), a pool of readers,
//!   WAL mode with `synchronous = NORMAL`: a commit is written to the WAL
//!   without an fsync, and a background flusher fsyncs the WAL file and then
//!   advances the durability watermark, so many commits share one fsync
//!   (group commit). Nothing is confirmed before the watermark passes it.
//!   Seq numbers are reserved in durable blocks, as in the sled store.
//! - **PostgreSQL**: `READ COMMITTED` with `SELECT … FOR UPDATE` on every row
//!   the planner may write (the rows the operations and cascades touch) and
//!   on the type's id counter, and `FOR SHARE` on rows it only checks (the
//!   expected versions of the context's anchor and the actor, say: writes into
//!   one context run side by side), in one canonical order, so the checks
//!   hold until commit, commits don't deadlock, and two
//!   processes never assign the same id. The seq is drawn from a sequence in
//!   the last statement before `COMMIT` (after every row lock), which also
//!   stamps the rows' versions and writes the change log entry and the applied
//!   record. A commit is durable when `COMMIT` returns.

mod codec;
mod db;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
mod tables;

pub use tables::MigrationError;

use async_trait::async_trait;
use db::{Bind, Col, Conn, Dialect, backend, is_database_error, is_retryable, unavailable, violation};
use sqlx::error::ErrorKind;
use statecast_core::store::plan::{self, Plan, PlanReader};
use statecast_core::store::{
    AppliedKey, AppliedRecord, CommitError, Committed, DurableWatermark, LogEntry, LogRead, Store, StoreError, Tail,
    Transaction, new_epoch,
};
use statecast_core::{Id, Row, Schema, Seq};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tables::{APPLIED, IDS, LOG, META, PURGED, RowLock, SEQ, Tables};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

#[cfg(feature = "postgres")]
use postgres::{notify_commit, run_listener};
#[cfg(feature = "sqlite")]
use sqlite::{SqliteDb, reset_writer};
#[cfg(feature = "sqlite")]
use sqlx::Connection as _;
#[cfg(feature = "postgres")]
use sqlx::postgres::PgPool;

/// Settings of a [`SqlStore`].
#[derive(Clone, Debug)]
pub struct SqlOptions {
    /// How many recent commits the change log keeps (at least 1).
    pub log_capacity: u64,
    /// Entries older than this are trimmed from the change log too (checked
    /// at most once a second); `None` trims by count only. The log is what a
    /// `since` resume and the other processes' tailers read, so keep it well
    /// above their lag (the server refuses less than 10 s).
    pub log_max_age: Option<Duration>,
    /// SQLite: how many seq numbers one durable reservation covers (at least 1).
    pub seq_block: u64,
    /// Connections in the pool (PostgreSQL; SQLite readers).
    pub max_connections: u32,
    /// How long a request waits for a connection before the store is reported unavailable.
    pub acquire_timeout: Duration,
    /// PostgreSQL: the schema (namespace) to keep the tables in, created if
    /// missing; the connection's default (`public`) when `None`.
    pub pg_schema: Option<String>,
    /// SQLite: how long the flusher waits after a commit before its fsync,
    /// so more commits share it (as PostgreSQL's `commit_delay`); every
    /// confirmation waits that much longer. Zero (the default) flushes at once.
    pub flush_delay: Duration,
}

impl Default for SqlOptions {
    fn default() -> Self {
        Self {
            log_capacity: 10_000,
            log_max_age: None,
            seq_block: 1_000,
            max_connections: 8,
            acquire_timeout: Duration::from_secs(3),
            pg_schema: None,
            flush_delay: Duration::ZERO,
        }
    }
}

/// Why a SQL store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{0}")]
    Spec(String),
    #[error("can't connect to the database: {0}")]
    Connect(String),
    #[error("the database can't serve this schema: {0}")]
    Migration(#[from] MigrationError),
    #[error("this build has no {0} support (enable the crate feature `{0}`)")]
    NoBackend(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

// One per store, made once and never moved: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Backend {
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteDb),
    #[cfg(feature = "postgres")]
    Postgres(PgPool),
}

/// A pooled connection of either backend.
enum Pooled {
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
}

impl Pooled {
    fn conn(&mut self) -> Conn<'_> {
        match self {
            #[cfg(feature = "sqlite")]
            Pooled::Sqlite(c) => Conn::Sqlite(c),
            #[cfg(feature = "postgres")]
            Pooled::Postgres(c) => Conn::Postgres(c),
        }
    }
}

struct Shared {
    schema: Arc<Schema>,
    tables: Tables,
    epoch: String,
    options: SqlOptions,
    backend: Backend,
    /// The highest seq this process committed (or found at open).
    last_seq: AtomicU64,
    durable: DurableWatermark,
    /// PostgreSQL: seqs drawn by transactions whose `COMMIT` has not returned.
    in_flight: parking_lot::Mutex<BTreeSet<Seq>>,
    /// Wakes the SQLite flusher.
    wake: Notify,
    stopping: AtomicBool,
    flushes: AtomicU64,
    /// Wakes the log tailer: a local commit, or a notification from another process.
    log_wake: Notify,
    /// PostgreSQL: a coalesced `NOTIFY` is on its way.
    notify_pending: AtomicBool,
    /// PostgreSQL: the `NOTIFY` channel of this store (one per schema).
    channel: String,
    /// PostgreSQL: the `NOTIFY` channel of the processes' [`Bus`](statecast_core::store::Bus).
    bus_channel: String,
    /// PostgreSQL: what the bus received, for the engine.
    bus_in: tokio::sync::broadcast::Sender<statecast_core::store::BusEvent>,
    /// PostgreSQL: bus messages published and not yet sent.
    bus_pending: AtomicUsize,
    /// PostgreSQL: the first hole the tailer waits at (see [`Hole`]).
    hole: parking_lot::Mutex<Option<Hole>>,
    /// When the change log was last trimmed by age (ms since the epoch).
    last_age_trim_ms: AtomicU64,
}

/// How often the change log is checked for entries older than `log_max_age`.
const AGE_TRIM_EVERY_MS: u64 = 1_000;

/// Seqs `from..=to` missing from the change log, and a transaction id `xid`
/// assigned after they were seen missing. Each of them was drawn by a
/// transaction that already had its id (rows are written before the seq is
/// drawn), so every drawer's id is below `xid`. Once a log read's snapshot has
/// `xmin >= xid`, every drawer has ended before that snapshot: a seq the read
/// does not show was never committed (an aborted commit) and is skipped.
///
/// The bound must be a freshly assigned id, not a snapshot's `xmax`: that is
/// only the last *completed* id + 1, and a drawer still running can hold an
/// id above it (this skipped commits in flight under load).
#[derive(Clone, Copy, Debug)]
struct Hole {
    from: Seq,
    to: Seq,
    xid: i64,
}

/// A [`Store`] on SQLite or PostgreSQL. See the crate docs.
pub struct SqlStore {
    shared: Arc<Shared>,
    flusher: parking_lot::Mutex<Option<JoinHandle<()>>>,
    /// PostgreSQL: the task that `LISTEN`s for commits of other processes.
    listener: parking_lot::Mutex<Option<JoinHandle<()>>>,
    /// PostgreSQL: messages between the processes (presence).
    bus: Option<Arc<dyn statecast_core::store::Bus>>,
    /// PostgreSQL: the task sending the bus's messages.
    bus_sender: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

/// Bus messages a slow engine may fall behind by before it misses some.
const BUS_BACKLOG: usize = 4096;

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u64_of(v: &serde_json::Value) -> u64 {
    v.as_i64().map_or(0, |n| n.max(0) as u64)
}

impl SqlStore {
    /// Opens a store from a spec: `sqlite:PATH` or `postgres://…` (`postgresql://…`).
    pub async fn open(spec: &str, schema: Arc<Schema>, options: SqlOptions) -> Result<SqlStore, SqlError> {
        if let Some(path) = spec.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err(SqlError::Spec("`sqlite:` needs a file path, e.g. `sqlite:./statecast.db`".into()));
            }
            return Self::open_sqlite(path, schema, options).await;
        }
        if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            return Self::open_postgres(spec, schema, options).await;
        }
        Err(SqlError::Spec(format!("unknown SQL store `{spec}`: expected `sqlite:PATH` or `postgres://…`")))
    }

    /// Opens (or creates) a SQLite database file.
    #[cfg(not(feature = "sqlite"))]
    pub async fn open_sqlite(
        _path: impl AsRef<Path>,
        _schema: Arc<Schema>,
        _options: SqlOptions,
    ) -> Result<SqlStore, SqlError> {
        Err(SqlError::NoBackend("sqlite"))
    }

    /// Connects to a PostgreSQL database.
    #[cfg(not(feature = "postgres"))]
    pub async fn open_postgres(_url: &str, _schema: Arc<Schema>, _options: SqlOptions) -> Result<SqlStore, SqlError> {
        Err(SqlError::NoBackend("postgres"))
    }

    fn start(
        schema: Arc<Schema>,
        tables: Tables,
        epoch: String,
        options: SqlOptions,
        backend: Backend,
        last: Seq,
        channel: String,
    ) -> SqlStore {
        let options =
            SqlOptions { log_capacity: options.log_capacity.max(1), seq_block: options.seq_block.max(1), ..options };
        let sqlite = !matches!(tables.dialect, Dialect::Postgres);
        let shared = Arc::new(Shared {
            schema,
            tables,
            epoch,
            options,
            backend,
            last_seq: AtomicU64::new(last),
            durable: DurableWatermark::new(last),
            in_flight: parking_lot::Mutex::new(BTreeSet::new()),
            wake: Notify::new(),
            stopping: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
            log_wake: Notify::new(),
            notify_pending: AtomicBool::new(false),
            bus_channel: channel.replacen("statecast_log_", "statecast_bus_", 1),
            bus_in: tokio::sync::broadcast::channel(BUS_BACKLOG).0,
            bus_pending: AtomicUsize::new(0),
            channel,
            hole: parking_lot::Mutex::new(None),
            last_age_trim_ms: AtomicU64::new(0),
        });
        let flusher = sqlite.then(|| tokio::spawn(run_flusher(shared.clone())));
        #[cfg(feature = "postgres")]
        let listener = (!sqlite).then(|| tokio::spawn(run_listener(shared.clone())));
        #[cfg(not(feature = "postgres"))]
        let listener = None;
        #[cfg(feature = "postgres")]
        let (bus, bus_sender) = match sqlite {
            false => {
                let (bus, sender) = postgres::PgBus::start(shared.clone());
                (Some(bus as Arc<dyn statecast_core::store::Bus>), Some(sender))
            }
            true => (None, None),
        };
        #[cfg(not(feature = "postgres"))]
        let (bus, bus_sender) = (None, None);
        SqlStore {
            shared,
            flusher: parking_lot::Mutex::new(flusher),
            listener: parking_lot::Mutex::new(listener),
            bus,
            bus_sender: parking_lot::Mutex::new(bus_sender),
        }
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        match self.shared.tables.dialect {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    /// How many WAL fsyncs the SQLite flusher made since open (group commit
    /// makes this lower than the number of commits under concurrency).
    pub fn flush_count(&self) -> u64 {
        self.shared.flushes.load(Ordering::SeqCst)
    }
}

impl Drop for SqlStore {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        if let Some(listener) = self.listener.lock().take() {
            listener.abort();
        }
        if let Some(sender) = self.bus_sender.lock().take() {
            sender.abort();
        }
    }
}

async fn meta_get(c: &mut Conn<'_>, key: &str) -> Result<Option<String>, StoreError> {
    let sql = format!("SELECT value FROM {META} WHERE key = {}", c.dialect().ph(1));
    let rows = c.fetch(&sql, vec![Bind::Text(Some(key.to_owned()))], &[Col::Text]).await.map_err(backend)?;
    Ok(rows.into_iter().next().and_then(|r| r[0].as_str().map(str::to_owned)))
}

async fn meta_set(c: &mut Conn<'_>, key: &str, value: String) -> Result<(), sqlx::Error> {
    let d = c.dialect();
    let sql = format!(
        "INSERT INTO {META} (key, value) VALUES ({}, {}) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        d.ph(1),
        d.ph(2)
    );
    c.exec(&sql, vec![Bind::Text(Some(key.to_owned())), Bind::Text(Some(value))]).await.map(|_| ())
}

async fn meta_u64(c: &mut Conn<'_>, key: &str) -> Result<u64, StoreError> {
    match meta_get(c, key).await? {
        None => Ok(0),
        Some(v) => v.parse().map_err(|_| StoreError::corrupt(format!("meta `{key}` is not a number: {v:?}"))),
    }
}

/// The store's epoch, made on first open.
async fn meta_epoch(c: &mut Conn<'_>) -> Result<String, StoreError> {
    let sql =
        format!("INSERT INTO {META} (key, value) VALUES ('epoch', {}) ON CONFLICT (key) DO NOTHING", c.dialect().ph(1));
    c.exec(&sql, vec![Bind::Text(Some(new_epoch()))]).await.map_err(backend)?;
    meta_get(c, "epoch").await?.ok_or_else(|| StoreError::corrupt("the store has no epoch"))
}

async fn run_flusher(shared: Arc<Shared>) {
    loop {
        if shared.last_seq.load(Ordering::SeqCst) > shared.durable.seq() {
            // Let commits that are in progress join this flush.
            tokio::task::yield_now().await;
            if !shared.options.flush_delay.is_zero() {
                tokio::time::sleep(shared.options.flush_delay).await;
            }
            if shared.flush().await.is_err() {
                return;
            }
            continue;
        }
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        shared.wake.notified().await;
    }
}

/// The planner's reads, inside the commit's transaction.
struct Reader<'a, 'c> {
    tables: &'a Tables,
    conn: &'a mut Conn<'c>,
    /// PostgreSQL: lock what is read until commit.
    lock: bool,
    /// A read failed with a serialization failure or deadlock: retrying can help.
    retry: bool,
}

impl Reader<'_, '_> {
    fn fail(&mut self, e: sqlx::Error) -> StoreError {
        self.retry |= is_retryable(&e);
        backend(e)
    }

    async fn read_row(&mut self, ty: &str, id: Id, lock: RowLock) -> Result<Option<Row>, StoreError> {
        let Some(t) = self.tables.get(ty) else { return Ok(None) };
        let sql = self.tables.get_sql(t, lock);
        match self.conn.fetch(&sql, vec![Bind::Int(Some(id))], &t.cols).await {
            Ok(rows) => rows.into_iter().next().map(|r| t.row(r).map_err(StoreError::corrupt)).transpose(),
            Err(e) => Err(self.fail(e)),
        }
    }
}

#[async_trait]
impl PlanReader for Reader<'_, '_> {
    async fn get(&mut self, ty: &str, id: Id) -> Result<Option<Row>, StoreError> {
        let lock = if self.lock { RowLock::Update } else { RowLock::None };
        self.read_row(ty, id, lock).await
    }

    async fn get_unchanged(&mut self, ty: &str, id: Id) -> Result<Option<Row>, StoreError> {
        let lock = if self.lock { RowLock::Share } else { RowLock::None };
        self.read_row(ty, id, lock).await
    }

    async fn referencing(&mut self, ty: &str, field: &str, id: Id) -> Result<Vec<Id>, StoreError> {
        let Some(t) = self.tables.get(ty) else { return Ok(Vec::new()) };
        if t.field(field).is_none() {
            return Ok(Vec::new());
        }
        let sql = format!("SELECT id FROM {} WHERE {} = {}", t.quoted, db::quote(field), self.tables.dialect.ph(1));
        match self.conn.fetch(&sql, vec![Bind::Int(Some(id))], &[Col::Int]).await {
            Ok(rows) => Ok(rows.iter().filter_map(|r| r[0].as_i64()).collect()),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn last_id(&mut self, ty: &str) -> Result<Id, StoreError> {
        let d = self.tables.dialect;
        let lock = if self.lock && d == Dialect::Postgres { " FOR UPDATE" } else { "" };
        let sql = format!("SELECT last_id FROM {IDS} WHERE type = {}{lock}", d.ph(1));
        match self.conn.fetch(&sql, vec![Bind::Text(Some(ty.to_owned()))], &[Col::Int]).await {
            Ok(rows) => Ok(rows.first().and_then(|r| r[0].as_i64()).unwrap_or(0)),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn applied(&mut self, key: &AppliedKey) -> Result<Option<AppliedRecord>, StoreError> {
        match applied_record(self.conn, key).await {
            Ok(r) => Ok(r),
            Err(e) => Err(self.fail(e)),
        }
    }
}

async fn applied_record(c: &mut Conn<'_>, key: &AppliedKey) -> Result<Option<AppliedRecord>, sqlx::Error> {
    let d = c.dialect();
    let sql = format!(
        "SELECT seq, created, at_ms FROM {APPLIED} WHERE user_id = {} AND client_id = {} AND write_id = {}",
        d.ph(1),
        d.ph(2),
        d.ph(3)
    );
    let binds = vec![Bind::Int(Some(key.user)), Bind::Text(Some(key.client_id.clone())), Bind::Int(Some(key.write_id))];
    let rows = c.fetch(&sql, binds, &[Col::Int, Col::Text, Col::Int]).await?;
    let Some(r) = rows.into_iter().next() else { return Ok(None) };
    let created = codec::decode_created(r[1].as_str().unwrap_or("[]")).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(Some(AppliedRecord { seq: u64_of(&r[0]), created, at_ms: u64_of(&r[2]) }))
}

/// Maps a failed write statement of a commit.
fn write_error(e: sqlx::Error, ty: &str, id: Id, inserting: bool) -> CommitError {
    if is_retryable(&e) {
        return CommitError::Conflict { ty: ty.to_owned(), id };
    }
    match violation(&e) {
        Some(ErrorKind::UniqueViolation) if inserting => CommitError::IdConflict { ty: ty.to_owned(), id },
        Some(ErrorKind::UniqueViolation) => CommitError::Conflict { ty: ty.to_owned(), id },
        Some(_) => CommitError::Invalid(format!("{ty}#{id}: {e}")),
        None => CommitError::Store(backend(e)),
    }
}

impl Shared {
    fn failure(&self) -> Option<Arc<str>> {
        self.durable.failure()
    }

    async fn reader(&self) -> Result<Pooled, StoreError> {
        match &self.backend {
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(db) => db.readers.acquire().await.map(Pooled::Sqlite).map_err(unavailable),
            #[cfg(feature = "postgres")]
            Backend::Postgres(pool) => pool.acquire().await.map(Pooled::Postgres).map_err(unavailable),
        }
    }

    /// SQLite: fsyncs the WAL file and advances the watermark to the last seq
    /// committed before the fsync started. A failure is recorded and is fatal.
    async fn flush(&self) -> Result<(), StoreError> {
        #[cfg(feature = "sqlite")]
        if let Backend::Sqlite(db) = &self.backend {
            if let Some(msg) = self.failure() {
                return Err(StoreError::flush_failed(msg.to_string()));
            }
            let target = self.last_seq.load(Ordering::SeqCst);
            let file = {
                let mut slot = db.wal_file.lock();
                if slot.is_none() {
                    match std::fs::File::open(&db.wal) {
                        Ok(f) => *slot = Some(Arc::new(f)),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(self.flush_failed(format!("can't open {}: {e}", db.wal.display()))),
                    }
                }
                slot.clone()
            };
            if let Some(file) = file {
                let synced = tokio::task::spawn_blocking(move || file.sync_data()).await;
                match synced {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(self.flush_failed(format!("fsync of {} failed: {e}", db.wal.display()))),
                    Err(e) => return Err(self.flush_failed(format!("the fsync task failed: {e}"))),
                }
            }
            self.flushes.fetch_add(1, Ordering::SeqCst);
            self.advance(target);
        }
        Ok(())
    }

    fn flush_failed(&self, msg: String) -> StoreError {
        tracing::error!(error = %msg, "SQLite WAL flush failed; the store refuses further commits");
        self.durable.fail(&msg)
    }

    fn advance(&self, target: Seq) {
        self.durable.advance(target);
    }

    /// PostgreSQL: after a `COMMIT` returned (either way), every seq below the
    /// lowest one still in flight is durable.
    fn settle(&self, seq: Seq, committed: bool) {
        let mut in_flight = self.in_flight.lock();
        in_flight.remove(&seq);
        if committed {
            self.last_seq.fetch_max(seq, Ordering::SeqCst);
        }
        let last = self.last_seq.load(Ordering::SeqCst);
        let durable = in_flight.first().map_or(last, |lowest| last.min(lowest - 1));
        drop(in_flight);
        self.advance(durable);
    }

    /// Writes the plan's rows and id counters (in the order the foreign keys
    /// need: inserts, then updates, then deletes in first-touch order, so a
    /// cascade in the database only ever finds rows the plan deletes anyway).
    async fn write_rows(&self, c: &mut Conn<'_>, plan: &Plan) -> Result<(), CommitError> {
        let t = &self.tables;
        for phase in 0..3 {
            for change in &plan.changes {
                let (ty, id) = (&*change.key.ty, change.key.id);
                let table = t.get(ty).ok_or_else(|| CommitError::Invalid(format!("unknown type `{ty}`")))?;
                let (sql, binds) = match (phase, &change.before, &change.after) {
                    (0, None, Some(row)) => (&table.insert, table.binds(row).map_err(CommitError::Invalid)?),
                    (1, Some(_), Some(row)) => (&table.update, table.binds(row).map_err(CommitError::Invalid)?),
                    (2, Some(_), None) => (&table.delete, vec![Bind::Int(Some(id))]),
                    _ => continue,
                };
                c.exec(sql, binds).await.map_err(|e| write_error(e, ty, id, phase == 0))?;
            }
        }
        let d = t.dialect;
        let sql = format!("UPDATE {IDS} SET last_id = {} WHERE type = {}", d.ph(1), d.ph(2));
        for (ty, last) in &plan.last_ids {
            c.exec(&sql, vec![Bind::Int(Some(*last)), Bind::Text(Some(ty.clone()))])
                .await
                .map_err(|e| write_error(e, ty, *last, false))?;
        }
        Ok(())
    }

    fn applied_binds(plan: &Plan) -> Option<[Bind; 5]> {
        plan.applied.as_ref().map(|(key, rec)| {
            [
                Bind::Int(Some(key.user)),
                Bind::Text(Some(key.client_id.clone())),
                Bind::Int(Some(key.write_id)),
                Bind::Text(Some(codec::encode_created(&rec.created))),
                Bind::Int(Some(i64_of(rec.at_ms))),
            ]
        })
    }

    /// Is an age trim of the change log due? True for one caller a second.
    fn age_trim_due(&self, now_ms: u64) -> bool {
        if self.options.log_max_age.is_none() {
            return false;
        }
        let last = self.last_age_trim_ms.load(Ordering::Relaxed);
        now_ms >= last.saturating_add(AGE_TRIM_EVERY_MS)
            && self.last_age_trim_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// The highest seq the change log may drop once `seq` is in it: the count
    /// floor, raised (when `by_age`) to the newest entry older than
    /// `log_max_age`. The newest entry always stays. `None`: nothing to drop.
    async fn log_floor(
        &self,
        c: &mut Conn<'_>,
        seq: Seq,
        now_ms: u64,
        by_age: bool,
    ) -> Result<Option<Seq>, sqlx::Error> {
        let mut floor = seq.saturating_sub(self.options.log_capacity);
        if let (true, Some(age)) = (by_age, self.options.log_max_age) {
            let cutoff = now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
            let sql = format!("SELECT MAX(seq) FROM {LOG} WHERE at_ms < {}", self.tables.dialect.ph(1));
            let rows = c.fetch(&sql, vec![Bind::Int(Some(i64_of(cutoff)))], &[Col::Int]).await?;
            if let Some(newest_expired) = rows.first().and_then(|r| r[0].as_u64()) {
                floor = floor.max(newest_expired);
            }
        }
        let floor = floor.min(seq.saturating_sub(1));
        Ok((floor > 0).then_some(floor))
    }
}

/// Stamps the drawn seq on the plan's after images and applied record.
fn stamp(plan: &mut Plan, seq: Seq) {
    plan.seq = seq;
    for change in &mut plan.changes {
        if let Some(row) = &mut change.after {
            row.version = seq;
            if row.created == 0 {
                row.created = seq;
            }
        }
    }
    if let Some((_, rec)) = &mut plan.applied {
        rec.seq = seq;
    }
}

#[async_trait]
impl Store for SqlStore {
    fn epoch(&self) -> &str {
        &self.shared.epoch
    }

    fn last_seq(&self) -> Seq {
        self.shared.last_seq.load(Ordering::SeqCst)
    }

    fn durable_seq(&self) -> Seq {
        self.shared.durable.seq()
    }

    fn failure(&self) -> Option<String> {
        self.shared.failure().map(|m| m.to_string())
    }

    async fn wait_durable(&self, seq: Seq) -> Result<(), StoreError> {
        // A seq not committed yet can't become durable by waiting for it alone.
        self.shared.durable.wait(seq.min(self.last_seq())).await
    }

    async fn get(&self, ty: &str, id: Id) -> Result<Option<Row>, StoreError> {
        let t = &self.shared.tables;
        let Some(table) = t.get(ty) else { return Ok(None) };
        let mut pooled = self.shared.reader().await?;
        let rows = pooled
            .conn()
            .fetch(&t.get_sql(table, RowLock::None), vec![Bind::Int(Some(id))], &table.cols)
            .await
            .map_err(backend)?;
        rows.into_iter().next().map(|r| table.row(r).map_err(StoreError::corrupt)).transpose()
    }

    async fn get_many(&self, ty: &str, ids: &[Id]) -> Result<Vec<Row>, StoreError> {
        let t = &self.shared.tables;
        let Some(table) = t.get(ty) else { return Ok(Vec::new()) };
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!("{} WHERE {}", table.select, t.dialect.in_ids("id", 1));
        let mut pooled = self.shared.reader().await?;
        let rows = pooled.conn().fetch(&sql, vec![t.dialect.ids(ids)], &table.cols).await.map_err(backend)?;
        let mut found: HashMap<Id, Row> = HashMap::new();
        for r in rows {
            let row = table.row(r).map_err(StoreError::corrupt)?;
            found.insert(row.id, row);
        }
        Ok(ids.iter().filter_map(|id| found.get(id).cloned()).collect())
    }

    async fn children(&self, child_ty: &str, field: &str, parent_ids: &[Id]) -> Result<Vec<Row>, StoreError> {
        let t = &self.shared.tables;
        let Some(table) = t.get(child_ty) else { return Ok(Vec::new()) };
        if table.field(field).is_none() || parent_ids.is_empty() {
            return Ok(Vec::new());
        }
        let parents: Vec<Id> = parent_ids.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
        let sql = format!("{} WHERE {} ORDER BY _created, id", table.select, t.dialect.in_ids(&db::quote(field), 1));
        let mut pooled = self.shared.reader().await?;
        let rows = pooled.conn().fetch(&sql, vec![t.dialect.ids(&parents)], &table.cols).await.map_err(backend)?;
        rows.into_iter().map(|r| table.row(r).map_err(StoreError::corrupt)).collect()
    }

    async fn scan(&self, ty: &str, after: Option<Id>, limit: usize) -> Result<Vec<Row>, StoreError> {
        let t = &self.shared.tables;
        let Some(table) = t.get(ty) else { return Ok(Vec::new()) };
        let d = t.dialect;
        let sql = format!("{} WHERE id > {} ORDER BY id LIMIT {}", table.select, d.ph(1), d.ph(2));
        let binds =
            vec![Bind::Int(Some(after.unwrap_or(i64::MIN))), Bind::Int(Some(i64::try_from(limit).unwrap_or(i64::MAX)))];
        let mut pooled = self.shared.reader().await?;
        let rows = pooled.conn().fetch(&sql, binds, &table.cols).await.map_err(backend)?;
        rows.into_iter().map(|r| table.row(r).map_err(StoreError::corrupt)).collect()
    }

    async fn commit(&self, tx: Transaction) -> Result<Committed, CommitError> {
        match &self.shared.backend {
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(db) => self.shared.commit_sqlite(db, &tx).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(pool) => {
                let result = self.shared.commit_postgres(pool, &tx).await;
                notify_commit(&self.shared);
                result
            }
        }
    }

    async fn applied(&self, key: &AppliedKey) -> Result<Option<AppliedRecord>, StoreError> {
        let mut pooled = self.shared.reader().await?;
        applied_record(&mut pooled.conn(), key).await.map_err(backend)
    }

    async fn purged_write_id(&self, user: Id, client_id: &str) -> Result<Option<i64>, StoreError> {
        let d = self.shared.tables.dialect;
        let sql = format!("SELECT write_id FROM {PURGED} WHERE user_id = {} AND client_id = {}", d.ph(1), d.ph(2));
        let mut pooled = self.shared.reader().await?;
        let rows = pooled
            .conn()
            .fetch(&sql, vec![Bind::Int(Some(user)), Bind::Text(Some(client_id.to_owned()))], &[Col::Int])
            .await
            .map_err(backend)?;
        Ok(rows.first().and_then(|r| r[0].as_i64()))
    }

    async fn purge_applied(&self, before_ms: u64) -> Result<u64, StoreError> {
        let d = self.shared.tables.dialect;
        let mark = format!(
            "INSERT INTO {PURGED} (user_id, client_id, write_id) SELECT user_id, client_id, MAX(write_id) \
             FROM {APPLIED} WHERE at_ms < {p} GROUP BY user_id, client_id \
             ON CONFLICT (user_id, client_id) DO UPDATE SET write_id = {g}({PURGED}.write_id, excluded.write_id)",
            p = d.ph(1),
            g = d.greatest()
        );
        let delete = format!("DELETE FROM {APPLIED} WHERE at_ms < {}", d.ph(1));
        let before = Bind::Int(Some(i64_of(before_ms)));
        let count = match &self.shared.backend {
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(db) => {
                let mut w = db.writer.lock().await;
                let purged = async {
                    let mut tx = w.conn.begin_with("BEGIN IMMEDIATE").await?;
                    let mut c = Conn::Sqlite(&mut tx);
                    c.exec(&mark, vec![before.clone()]).await?;
                    let n = c.exec(&delete, vec![before]).await?;
                    tx.commit().await?;
                    Ok::<u64, sqlx::Error>(n)
                }
                .await;
                let n = match purged {
                    Ok(n) => n,
                    Err(e) => {
                        reset_writer(db, &mut w.conn).await;
                        return Err(backend(e));
                    }
                };
                drop(w);
                // Make the purge durable with the next flush.
                self.shared.wake.notify_one();
                n
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(unavailable)?;
                let mut c = Conn::Postgres(&mut tx);
                c.exec(&mark, vec![before.clone()]).await.map_err(backend)?;
                let n = c.exec(&delete, vec![before]).await.map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                n
            }
        };
        if count > 0 {
            tracing::debug!(count, before_ms, "purged applied records");
        }
        Ok(count)
    }

    async fn changes_since(&self, after: Seq, limit: usize) -> Result<LogRead, StoreError> {
        let d = self.shared.tables.dialect;
        let mut pooled = self.shared.reader().await?;
        let mut c = pooled.conn();
        if after < meta_u64(&mut c, "log_trimmed").await? {
            return Ok(LogRead::Trimmed);
        }
        let changes = if d == Dialect::Postgres { "changes::text" } else { "changes" };
        let sql = format!("SELECT seq, {changes} FROM {LOG} WHERE seq > {} ORDER BY seq LIMIT {}", d.ph(1), d.ph(2));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = c
            .fetch(&sql, vec![Bind::Int(Some(i64_of(after))), Bind::Int(Some(limit))], &[Col::Int, Col::Text])
            .await
            .map_err(backend)?;
        let mut entries = Vec::with_capacity(rows.len());
        for r in rows {
            let seq = u64_of(&r[0]);
            entries.push(LogEntry { seq, changes: codec::decode_changes(seq, r[1].as_str().unwrap_or("[]"))? });
        }
        Ok(LogRead::Entries(entries))
    }

    fn shared_log(&self) -> bool {
        self.shared.tables.dialect == Dialect::Postgres
    }

    async fn tail_log(&self, after: Seq, limit: usize) -> Result<Tail, StoreError> {
        #[cfg(feature = "postgres")]
        if let Backend::Postgres(pool) = &self.shared.backend {
            return self.shared.tail_postgres(pool, after, limit).await;
        }
        match self.changes_since(after, limit).await? {
            LogRead::Entries(entries) => {
                let through = entries.last().map_or(after, |e| e.seq);
                Ok(Tail { entries, through, trimmed: false })
            }
            LogRead::Trimmed => Ok(Tail { entries: Vec::new(), through: after, trimmed: true }),
        }
    }

    fn bus(&self) -> Option<Arc<dyn statecast_core::store::Bus>> {
        self.bus.clone()
    }

    async fn wait_log(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.shared.log_wake.notified()).await;
    }

    async fn log_head(&self) -> Result<Seq, StoreError> {
        #[cfg(feature = "postgres")]
        if let Backend::Postgres(pool) = &self.shared.backend {
            let mut conn = pool.acquire().await.map_err(unavailable)?;
            let sql = format!("SELECT CASE WHEN is_called THEN last_value ELSE 0 END::int8 FROM {SEQ}");
            let rows = Conn::Postgres(&mut conn).fetch(&sql, vec![], &[Col::Int]).await.map_err(backend)?;
            return Ok(rows.first().map_or(0, |r| u64_of(&r[0])));
        }
        Ok(self.last_seq())
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        let t = &self.shared.tables;
        if t.by_name.is_empty() {
            return Ok(true);
        }
        let parts: Vec<String> = t.by_name.values().map(|table| format!("SELECT id FROM {}", table.quoted)).collect();
        let sql = format!("{} LIMIT 1", parts.join(" UNION ALL "));
        let mut pooled = self.shared.reader().await?;
        let rows = pooled.conn().fetch(&sql, vec![], &[Col::Int]).await.map_err(backend)?;
        Ok(rows.is_empty())
    }

    async fn close(&self) -> Result<(), StoreError> {
        let shared = &*self.shared;
        #[cfg(feature = "sqlite")]
        if let Backend::Sqlite(db) = &shared.backend {
            db.writer.lock().await.closed = true;
        }
        shared.stopping.store(true, Ordering::SeqCst);
        shared.wake.notify_one();
        if let Some(listener) = self.listener.lock().take() {
            listener.abort();
        }
        let sender = self.bus_sender.lock().take();
        if let Some(sender) = sender {
            // What the engine said last (its `bye`) goes out first.
            #[cfg(feature = "postgres")]
            postgres::drain_bus(shared).await;
            sender.abort();
        }
        let flusher = self.flusher.lock().take();
        if let Some(handle) = flusher
            && let Err(e) = handle.await
        {
            tracing::error!(error = %e, "the SQLite flusher ended abnormally");
        }
        shared.flush().await?;
        match &shared.backend {
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(db) => db.readers.close().await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(pool) => pool.close().await,
        }
        tracing::info!(last_seq = self.last_seq(), backend = self.backend_name(), "closed SQL store");
        Ok(())
    }
}
