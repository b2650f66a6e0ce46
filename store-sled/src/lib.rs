//! The embedded default store: one sled tree, one atomic batch per commit,
//! and group commit through a background flusher that advances the
//! durability watermark.
//!
//! - Commits are serialized by a store lock; the shared planner
//!   ([`statecast_core::store::plan`]) runs against the tree while it is held,
//!   and the commit is written with one `apply_batch`. A commit returns as soon
//!   as it is applied in memory.
//! - The flusher calls `flush_async` and then advances the watermark to the
//!   last seq committed before that flush started, so commits that arrive
//!   during a flush share the next one. A failed flush is fatal: waits report
//!   [`StoreError::FlushFailed`] and commits are refused from then on.
//! - Seq numbers are reserved in blocks that are flushed before use; a store
//!   reopened (even after a crash) starts above the last reservation, so a seq
//!   is never reused.

mod codec;
mod keys;

use async_trait::async_trait;
use statecast_core::store::plan::{self, Plan, PlanReader};
use statecast_core::store::{
    AppliedKey, AppliedRecord, CommitError, Committed, DurableWatermark, LogEntry, LogRead, Store, StoreError,
    Transaction, new_epoch,
};
use statecast_core::{Id, Row, Schema, Seq};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The name of the one tree that holds everything.
const TREE: &str = "statecast";
/// How long `open` waits for another handle on the same path to let go.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Settings of a [`SledStore`].
#[derive(Clone, Debug)]
pub struct SledOptions {
    /// How many recent commits the change log keeps (at least 1).
    pub log_capacity: u64,
    /// How many seq numbers one durable reservation covers (at least 1).
    pub seq_block: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        Self { log_capacity: 10_000, seq_block: 1_000 }
    }
}

/// What the commit lock guards.
struct CommitState {
    /// The seq the next commit takes.
    next: Seq,
    /// The highest seq covered by a durable reservation.
    reserved: Seq,
    closed: bool,
}

struct Shared {
    schema: Arc<Schema>,
    /// Each type's name, shared by every row of it that is read.
    type_names: HashMap<String, Arc<str>>,
    tree: sled::Tree,
    epoch: String,
    options: SledOptions,
    commit: tokio::sync::Mutex<CommitState>,
    /// The seq of the last commit applied to the tree.
    last_seq: AtomicU64,
    durable: DurableWatermark,
    /// Wakes the flusher (a commit happened, or it should stop).
    wake: Notify,
    stopping: AtomicBool,
    flushes: AtomicU64,
    fail_flushes: AtomicBool,
    // Dropped last: the tree above belongs to it.
    _db: sled::Db,
}

/// A [`Store`] on sled. See the crate docs.
pub struct SledStore {
    shared: Arc<Shared>,
    flusher: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

fn backend(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Corruption { .. } => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Backend(e.to_string()),
    }
}

fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
    // The store flushes itself (group commit); `HighThroughput` consolidates
    // pages less eagerly than the default `LowSpace`: ~10% more durable
    // writes for some disk space (docs/BENCHMARKS.md).
    let config = sled::Config::new().path(path).flush_every_ms(None).mode(sled::Mode::HighThroughput);
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            // A previous handle on this path (in this process) may still be
            // releasing its file lock on sled's thread pool.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(sled::Error::Io(e)) => {
                return Err(StoreError::Unavailable(format!("cannot open {}: {e}", path.display())));
            }
            Err(e) => return Err(backend(e)),
        }
    }
}

fn meta_u64(tree: &sled::Tree, key: &[u8]) -> Result<u64, StoreError> {
    match tree.get(key).map_err(backend)? {
        Some(v) => keys::u64_value(key, &v),
        None => Ok(0),
    }
}

/// The seq of the last commit: its change log entry, which trimming never
/// removes (the log keeps at least one entry). Stores written before the log
/// carried it alone also kept it under `m/last_seq`.
fn last_committed_seq(tree: &sled::Tree) -> Result<u64, StoreError> {
    let in_log = match tree.range(keys::log(0)..=keys::log(u64::MAX)).next_back() {
        Some(item) => {
            let (k, _) = item.map_err(backend)?;
            keys::u64_value(&k, &k[keys::LOG.len()..])?
        }
        None => 0,
    };
    Ok(in_log.max(meta_u64(tree, keys::META_LAST_SEQ)?))
}

impl SledStore {
    /// Opens (or creates) the store at `path` with default options.
    /// Must be called within a tokio runtime (the flusher runs on it).
    pub fn open(path: impl AsRef<Path>, schema: Arc<Schema>) -> Result<SledStore, StoreError> {
        Self::open_with(path, schema, SledOptions::default())
    }

    /// Opens (or creates) the store at `path`.
    pub fn open_with(
        path: impl AsRef<Path>,
        schema: Arc<Schema>,
        options: SledOptions,
    ) -> Result<SledStore, StoreError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Unavailable("SledStore::open must be called within a tokio runtime".into()))?;
        let options = SledOptions { log_capacity: options.log_capacity.max(1), seq_block: options.seq_block.max(1) };
        let path = path.as_ref();
        let db = open_db(path)?;
        let tree = db.open_tree(TREE).map_err(backend)?;
        let epoch = match tree.get(keys::META_EPOCH).map_err(backend)? {
            Some(v) => String::from_utf8(v.to_vec()).map_err(|_| StoreError::Corrupt("epoch is not UTF-8".into()))?,
            None => {
                let epoch = new_epoch();
                tree.insert(keys::META_EPOCH, epoch.as_bytes()).map_err(backend)?;
                tree.flush().map_err(backend)?;
                epoch
            }
        };
        let last = last_committed_seq(&tree)?;
        // Numbers up to the reservation may have been used by commits lost in a
        // crash: start above it.
        let reserved = meta_u64(&tree, keys::META_RESERVED)?.max(last);
        tracing::info!(path = %path.display(), %epoch, last_seq = last, reserved, "opened sled store");
        let type_names = schema.types.keys().map(|t| (t.clone(), Arc::from(t.as_str()))).collect();
        let shared = Arc::new(Shared {
            type_names,
            schema,
            tree,
            epoch,
            options,
            commit: tokio::sync::Mutex::new(CommitState { next: reserved + 1, reserved, closed: false }),
            last_seq: AtomicU64::new(last),
            durable: DurableWatermark::new(last),
            wake: Notify::new(),
            stopping: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
            fail_flushes: AtomicBool::new(false),
            _db: db,
        });
        let flusher = runtime.spawn(run_flusher(shared.clone()));
        Ok(SledStore { shared, flusher: parking_lot::Mutex::new(Some(flusher)) })
    }

    /// How many flushes have completed since open (group commit makes this
    /// lower than the number of commits under concurrency).
    pub fn flush_count(&self) -> u64 {
        self.shared.flushes.load(Ordering::SeqCst)
    }

    /// Makes every later flush fail, as a failing disk would (for tests of the
    /// fatal-flush path).
    #[doc(hidden)]
    pub fn inject_flush_failure(&self) {
        self.shared.fail_flushes.store(true, Ordering::SeqCst);
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        // The flusher makes a last flush of what is pending and exits.
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }
}

async fn run_flusher(shared: Arc<Shared>) {
    loop {
        if shared.last_seq.load(Ordering::SeqCst) > shared.durable.seq() {
            // Let commits that are in progress join this flush.
            tokio::task::yield_now().await;
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

impl Shared {
    fn failure(&self) -> Option<Arc<str>> {
        self.durable.failure()
    }

    /// Flushes the tree and advances the watermark to the last seq committed
    /// before the flush started. A failure is recorded and is fatal.
    async fn flush(&self) -> Result<(), StoreError> {
        if let Some(msg) = self.failure() {
            return Err(StoreError::FlushFailed(msg.to_string()));
        }
        let target = self.last_seq.load(Ordering::SeqCst);
        let result = if self.fail_flushes.load(Ordering::SeqCst) {
            Err("injected flush failure".to_owned())
        } else {
            self.tree.flush_async().await.map_err(|e| e.to_string())
        };
        match result {
            Ok(_) => {
                self.flushes.fetch_add(1, Ordering::SeqCst);
                self.durable.advance(target);
                Ok(())
            }
            Err(msg) => {
                tracing::error!(error = %msg, "sled flush failed; the store refuses further commits");
                Err(self.durable.fail(&msg))
            }
        }
    }

    fn check_open(&self, state: &CommitState) -> Result<(), StoreError> {
        if let Some(msg) = self.failure() {
            return Err(StoreError::FlushFailed(msg.to_string()));
        }
        if state.closed {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        Ok(())
    }

    /// The shared name of a type (allocated only for a type the schema lacks).
    fn type_name(&self, ty: &str) -> Arc<str> {
        self.type_names.get(ty).cloned().unwrap_or_else(|| Arc::from(ty))
    }

    fn get_row(&self, ty: &str, id: Id) -> Result<Option<Row>, StoreError> {
        self.get_row_named(&self.type_name(ty), id)
    }

    fn get_row_named(&self, ty: &Arc<str>, id: Id) -> Result<Option<Row>, StoreError> {
        match self.tree.get(keys::row(ty, id)).map_err(backend)? {
            Some(v) => codec::decode_row(ty, id, &v).map(Some),
            None => Ok(None),
        }
    }

    fn purge_mark(&self, user: Id, client_id: &str) -> Result<Option<i64>, StoreError> {
        let key = keys::purge_mark(user, client_id);
        match self.tree.get(&key).map_err(backend)? {
            Some(v) => Ok(Some(keys::u64_value(&key, &v)? as i64)),
            None => Ok(None),
        }
    }

    fn is_reference(&self, ty: &str, field: &str) -> bool {
        self.schema.entity(ty).and_then(|e| e.field(field)).and_then(|f| f.target()).is_some()
    }

    /// Ids of rows of `ty` whose `field` is `target`, from the reference index.
    fn referencing(&self, ty: &str, field: &str, target: Id) -> Result<Vec<Id>, StoreError> {
        if !self.is_reference(ty, field) {
            let name = self.type_name(ty);
            let mut ids = Vec::new();
            for item in self.tree.scan_prefix(keys::rows_of(ty)) {
                let (k, v) = item.map_err(backend)?;
                let id = keys::trailing_id(&k)?;
                if codec::decode_row(&name, id, &v)?.get_i64(field) == Some(target) {
                    ids.push(id);
                }
            }
            return Ok(ids);
        }
        self.tree
            .scan_prefix(keys::referencing(ty, field, target))
            .map(|item| keys::trailing_id(&item.map_err(backend)?.0))
            .collect()
    }

    /// The batch that writes a plan: rows, reference index, id counters,
    /// applied record, last seq, the log entry and the log trim.
    fn batch(&self, plan: &Plan) -> Result<sled::Batch, StoreError> {
        let mut batch = sled::Batch::default();
        for change in &plan.changes {
            let (ty, id) = (&*change.key.ty, change.key.id);
            match &change.after {
                Some(row) => batch.insert(keys::row(ty, id), codec::encode_row(row)?),
                None => batch.remove(keys::row(ty, id)),
            }
            let Some(entity) = self.schema.entity(ty) else {
                continue;
            };
            for field in entity.fields.iter().filter(|f| f.target().is_some()) {
                let old = change.before.as_ref().and_then(|r| r.get_i64(&field.name));
                let new = change.after.as_ref().and_then(|r| r.get_i64(&field.name));
                if old == new {
                    continue;
                }
                if let Some(target) = old {
                    batch.remove(keys::reference(ty, &field.name, target, id));
                }
                if let Some(target) = new {
                    batch.insert(keys::reference(ty, &field.name, target, id), &[]);
                }
            }
        }
        for (ty, id) in &plan.last_ids {
            batch.insert(keys::last_id(ty), &id.to_be_bytes());
        }
        if let Some((key, record)) = &plan.applied {
            batch.insert(keys::applied(key), codec::encode(record)?);
            batch.insert(keys::applied_by_time(record.at_ms, key), &[]);
        }
        batch.insert(keys::log(plan.seq), codec::encode_changes(&plan.changes)?);
        if let Some(floor) = plan.seq.checked_sub(self.options.log_capacity)
            && floor > 0
        {
            for item in self.tree.range(keys::log(0)..keys::log(floor + 1)) {
                batch.remove(item.map_err(backend)?.0);
            }
            batch.insert(keys::META_LOG_TRIMMED, &floor.to_be_bytes());
        }
        Ok(batch)
    }
}

/// True when `count` distinct ids between `lo` and `hi` fill at least half
/// of that range: a range scan then reads at most twice the rows wanted.
fn is_dense(lo: Id, hi: Id, count: usize) -> bool {
    let span = i128::from(hi) - i128::from(lo) + 1;
    span <= 2 * count as i128
}

/// The planner's view of the tree (consistent while the commit lock is held).
struct Reader<'a>(&'a Shared);

#[async_trait]
impl PlanReader for Reader<'_> {
    async fn get(&mut self, ty: &str, id: Id) -> Result<Option<Row>, StoreError> {
        self.0.get_row(ty, id)
    }
    async fn referencing(&mut self, ty: &str, field: &str, id: Id) -> Result<Vec<Id>, StoreError> {
        self.0.referencing(ty, field, id)
    }
    async fn last_id(&mut self, ty: &str) -> Result<Id, StoreError> {
        let key = keys::last_id(ty);
        match self.0.tree.get(&key).map_err(backend)? {
            Some(v) => Ok(keys::u64_value(&key, &v)? as Id),
            None => Ok(0),
        }
    }
    async fn applied(&mut self, key: &AppliedKey) -> Result<Option<AppliedRecord>, StoreError> {
        self.0.applied(key)
    }
}

impl Shared {
    fn applied(&self, key: &AppliedKey) -> Result<Option<AppliedRecord>, StoreError> {
        match self.tree.get(keys::applied(key)).map_err(backend)? {
            Some(v) => codec::decode("applied record", &v).map(Some),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl Store for SledStore {
    fn epoch(&self) -> &str {
        &self.shared.epoch
    }

    fn last_seq(&self) -> Seq {
        self.shared.last_seq.load(Ordering::SeqCst)
    }

    fn durable_seq(&self) -> Seq {
        self.shared.durable.seq()
    }

    async fn wait_durable(&self, seq: Seq) -> Result<(), StoreError> {
        // A seq not committed yet can't become durable by waiting for it alone.
        self.shared.durable.wait(seq.min(self.last_seq())).await
    }

    async fn get(&self, ty: &str, id: Id) -> Result<Option<Row>, StoreError> {
        self.shared.get_row(ty, id)
    }

    async fn children(&self, child_ty: &str, field: &str, parent_ids: &[Id]) -> Result<Vec<Row>, StoreError> {
        let shared = &*self.shared;
        let parents: BTreeSet<Id> = parent_ids.iter().copied().collect();
        let mut ids = Vec::new();
        for &parent in &parents {
            ids.extend(shared.referencing(child_ty, field, parent)?);
        }
        ids.sort_unstable();
        ids.dedup();
        let name = shared.type_name(child_ty);
        // Reads are not under the commit lock: recheck each row's reference.
        let belongs = |row: &Row| row.get_i64(field).is_some_and(|p| parents.contains(&p));
        let mut rows = Vec::with_capacity(ids.len());
        match (ids.first(), ids.last()) {
            (Some(&lo), Some(&hi)) if ids.len() > 1 && is_dense(lo, hi, ids.len()) => {
                // The ids fill most of their range: one range scan of the rows
                // instead of a lookup per child (rows in between are skipped
                // undecoded).
                let mut wanted = ids.iter().copied().peekable();
                for item in shared.tree.range(keys::row(&name, lo)..=keys::row(&name, hi)) {
                    let (k, v) = item.map_err(backend)?;
                    let id = keys::trailing_id(&k)?;
                    while wanted.next_if(|w| *w < id).is_some() {}
                    if wanted.next_if_eq(&id).is_none() {
                        continue;
                    }
                    let row = codec::decode_row(&name, id, &v)?;
                    if belongs(&row) {
                        rows.push(row);
                    }
                }
            }
            _ => {
                for id in ids {
                    if let Some(row) = shared.get_row_named(&name, id)?
                        && belongs(&row)
                    {
                        rows.push(row);
                    }
                }
            }
        }
        rows.sort_by_key(|r| (r.created, r.id));
        Ok(rows)
    }

    async fn scan(&self, ty: &str, after: Option<Id>, limit: usize) -> Result<Vec<Row>, StoreError> {
        let prefix = keys::rows_of(ty);
        let start = match after {
            Some(a) => {
                let mut k = keys::row(ty, a);
                k.push(0); // just past `a`
                k
            }
            None => prefix.clone(),
        };
        let name = self.shared.type_name(ty);
        let mut rows = Vec::new();
        for item in self.shared.tree.range(start..).take(limit) {
            let (k, v) = item.map_err(backend)?;
            if !k.starts_with(&prefix) {
                break;
            }
            rows.push(codec::decode_row(&name, keys::trailing_id(&k)?, &v)?);
        }
        Ok(rows)
    }

    async fn commit(&self, tx: Transaction) -> Result<Committed, CommitError> {
        let shared = &*self.shared;
        let mut state = shared.commit.lock().await;
        shared.check_open(&state)?;
        let seq = state.next;
        if seq > state.reserved {
            let reserved = seq.saturating_add(shared.options.seq_block);
            shared.tree.insert(keys::META_RESERVED, &reserved.to_be_bytes()).map_err(backend)?;
            shared.flush().await?;
            state.reserved = reserved;
        }
        let plan = plan::plan(&shared.schema, &mut Reader(shared), &tx, seq).await?;
        shared.tree.apply_batch(shared.batch(&plan)?).map_err(backend)?;
        state.next = seq + 1;
        shared.last_seq.store(seq, Ordering::SeqCst);
        drop(state);
        shared.wake.notify_one();
        Ok(plan.committed())
    }

    async fn applied(&self, key: &AppliedKey) -> Result<Option<AppliedRecord>, StoreError> {
        self.shared.applied(key)
    }

    async fn purged_write_id(&self, user: Id, client_id: &str) -> Result<Option<i64>, StoreError> {
        self.shared.purge_mark(user, client_id)
    }

    async fn purge_applied(&self, before_ms: u64) -> Result<u64, StoreError> {
        let shared = &*self.shared;
        let state = shared.commit.lock().await;
        shared.check_open(&state)?;
        let mut batch = sled::Batch::default();
        let mut marks: HashMap<(Id, String), i64> = HashMap::new();
        let mut count = 0;
        for item in shared.tree.range(keys::applied_time_bound(0)..keys::applied_time_bound(before_ms)) {
            let (k, _) = item.map_err(backend)?;
            let key = keys::parse_applied_by_time(&k)?;
            batch.remove(k);
            batch.remove(keys::applied(&key));
            let mark = match marks.get(&(key.user, key.client_id.clone())) {
                Some(m) => *m,
                None => shared.purge_mark(key.user, &key.client_id)?.unwrap_or(i64::MIN),
            };
            marks.insert((key.user, key.client_id), mark.max(key.write_id));
            count += 1;
        }
        for ((user, client_id), write_id) in &marks {
            batch.insert(keys::purge_mark(*user, client_id), &write_id.to_be_bytes());
        }
        shared.tree.apply_batch(batch).map_err(backend)?;
        drop(state);
        if count > 0 {
            tracing::debug!(count, before_ms, "purged applied records");
        }
        Ok(count)
    }

    async fn changes_since(&self, after: Seq, limit: usize) -> Result<LogRead, StoreError> {
        let tree = &self.shared.tree;
        if after < meta_u64(tree, keys::META_LOG_TRIMMED)? {
            return Ok(LogRead::Trimmed);
        }
        let Some(from) = after.checked_add(1) else {
            return Ok(LogRead::Entries(Vec::new()));
        };
        let mut entries = Vec::new();
        for item in tree.range(keys::log(from)..).take(limit) {
            let (k, v) = item.map_err(backend)?;
            if !k.starts_with(keys::LOG) {
                break;
            }
            let seq = keys::u64_value(&k, &k[keys::LOG.len()..])?;
            entries.push(LogEntry { seq, changes: codec::decode_changes(seq, &v)? });
        }
        Ok(LogRead::Entries(entries))
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.shared.tree.scan_prefix(keys::ROWS).next().transpose().map_err(backend)?.is_none())
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.shared.commit.lock().await.closed = true;
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        let flusher = self.flusher.lock().take();
        if let Some(handle) = flusher
            && let Err(e) = handle.await
        {
            tracing::error!(error = %e, "the sled flusher ended abnormally");
        }
        // Covers what no commit woke the flusher for (e.g. purges).
        self.shared.flush().await?;
        tracing::info!(last_seq = self.last_seq(), "closed sled store");
        Ok(())
    }
}
