//! The embedded store engine shared by the sled and fjall stores: one ordered
//! key space, one atomic batch per commit, and group commit through a
//! background flusher that advances the durability watermark. The engine
//! underneath is a [`KvBackend`]; `statecast-store-sled` and
//! `statecast-store-fjall` each provide one.
//!
//! - Commits are serialized by a store lock; the shared planner
//!   ([`statecast_core::store::plan`]) runs against the key space while it is
//!   held, and the commit is written as one atomic batch. A commit returns as
//!   soon as it is applied in memory.
//! - The flusher syncs the engine and then advances the watermark to the last
//!   seq committed before that sync started, so commits that arrive during a
//!   sync share the next one. A failed sync is fatal: waits report
//!   [`StoreError::FlushFailed`] and commits are refused from then on.
//! - Seq numbers are reserved in blocks that are synced before use; a store
//!   reopened (even after a crash) starts above the last reservation, so a seq
//!   is never reused.

mod backend;
mod codec;
mod keys;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use backend::{KeyRange, KvBackend, KvIter, KvOp, OpenError};

use async_trait::async_trait;
use statecast_core::store::plan::{self, Plan, PlanReader};
use statecast_core::store::{
    AppliedKey, AppliedRecord, CommitError, Committed, DurableWatermark, LogEntry, LogRead, Store, StoreError,
    Transaction, new_epoch,
};
use statecast_core::{Id, Row, Schema, Seq};
use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How long `open` waits for another handle on the same path to let go.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Settings of a [`KvStore`].
#[derive(Clone, Debug)]
pub struct KvOptions {
    /// How many recent commits the change log keeps (at least 1).
    pub log_capacity: u64,
    /// How many seq numbers one durable reservation covers (at least 1).
    pub seq_block: u64,
    /// How long the flusher waits after a commit before it syncs, so more
    /// commits share one sync (like PostgreSQL's `commit_delay`); every
    /// confirmation waits that much longer. Zero (the default) syncs at once.
    /// Tests use it to widen the window between a commit and its durability.
    pub flush_delay: Duration,
}

impl Default for KvOptions {
    fn default() -> Self {
        Self { log_capacity: 10_000, seq_block: 1_000, flush_delay: Duration::ZERO }
    }
}

/// What the commit lock guards.
struct CommitState {
    /// The seq the next commit takes.
    next: Seq,
    /// The highest seq covered by a durable reservation.
    reserved: Seq,
    /// Change log entries up to this seq have been removed.
    log_trimmed: Seq,
    closed: bool,
}

struct Shared<B> {
    schema: Arc<Schema>,
    /// Each type's name, shared by every row of it that is read.
    type_names: HashMap<String, Arc<str>>,
    kv: B,
    epoch: String,
    options: KvOptions,
    commit: tokio::sync::Mutex<CommitState>,
    /// The seq of the last commit applied to the key space.
    last_seq: AtomicU64,
    durable: DurableWatermark,
    /// Wakes the flusher (a commit happened, or it should stop).
    wake: Notify,
    stopping: AtomicBool,
    flushes: AtomicU64,
    fail_flushes: AtomicBool,
    /// Seqs after the last change log entry found at open, up to the
    /// reservation: numbers of commits an earlier run began but whose log
    /// entry did not survive it. See [`Shared::applied`].
    torn: std::ops::RangeInclusive<Seq>,
}

/// A [`Store`] on an embedded key-value engine. See the crate docs.
pub struct KvStore<B: KvBackend> {
    shared: Arc<Shared<B>>,
    flusher: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

/// Opens the engine, waiting a little for another handle on the same path
/// (in this process) that is still letting go of its file lock.
fn open_backend<B: KvBackend>(path: &Path) -> Result<B, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match B::open(path) {
            Ok(kv) => return Ok(kv),
            Err(OpenError::Locked(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(OpenError::Locked(why)) => {
                return Err(StoreError::unavailable(format!("cannot open {}: {why}", path.display())));
            }
            Err(OpenError::Failed(e)) => return Err(e),
        }
    }
}

fn meta_u64<B: KvBackend>(kv: &B, key: &[u8]) -> Result<u64, StoreError> {
    match kv.get(key)? {
        Some(v) => keys::u64_value(key, v.as_ref()),
        None => Ok(0),
    }
}

fn between(lo: Vec<u8>, hi: Vec<u8>) -> KeyRange {
    (Bound::Included(lo), Bound::Excluded(hi))
}

/// The seq of the last commit: its change log entry, which trimming never
/// removes (the log keeps at least one entry). Stores written before the log
/// carried it alone also kept it under `m/last_seq`.
fn last_committed_seq<B: KvBackend>(kv: &B) -> Result<u64, StoreError> {
    let all = (Bound::Included(keys::log(0)), Bound::Included(keys::log(u64::MAX)));
    let in_log = match kv.range(all).next_back() {
        Some(item) => {
            let (k, _) = item?;
            let k = k.as_ref();
            keys::u64_value(k, &k[keys::LOG.len()..])?
        }
        None => 0,
    };
    Ok(in_log.max(meta_u64(kv, keys::META_LAST_SEQ)?))
}

impl<B: KvBackend> KvStore<B> {
    /// Opens (or creates) the store at `path` with default options.
    /// Must be called within a tokio runtime (the flusher runs on it).
    pub fn open(path: impl AsRef<Path>, schema: Arc<Schema>) -> Result<Self, StoreError> {
        Self::open_with(path, schema, KvOptions::default())
    }

    /// Opens (or creates) the store at `path`.
    pub fn open_with(path: impl AsRef<Path>, schema: Arc<Schema>, options: KvOptions) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            StoreError::unavailable(format!("the {} store must be opened within a tokio runtime", B::NAME))
        })?;
        let options = KvOptions {
            log_capacity: options.log_capacity.max(1),
            seq_block: options.seq_block.max(1),
            flush_delay: options.flush_delay,
        };
        let path = path.as_ref();
        let kv: B = open_backend(path)?;
        let epoch = match kv.get(keys::META_EPOCH)? {
            Some(v) => String::from_utf8(v.as_ref().to_vec()).map_err(|_| StoreError::corrupt("epoch is not UTF-8"))?,
            None => {
                let epoch = new_epoch();
                kv.apply(vec![KvOp::Put(keys::META_EPOCH.to_vec(), epoch.as_bytes().to_vec())])?;
                kv.sync().map_err(StoreError::backend)?;
                epoch
            }
        };
        let last = last_committed_seq(&kv)?;
        // Numbers up to the reservation may have been used by commits lost in a
        // crash: start above it.
        let reserved = meta_u64(&kv, keys::META_RESERVED)?.max(last);
        let log_trimmed = meta_u64(&kv, keys::META_LOG_TRIMMED)?;
        tracing::info!(engine = B::NAME, path = %path.display(), %epoch, last_seq = last, reserved, "opened store");
        let type_names = schema.types.keys().map(|t| (t.clone(), Arc::from(t.as_str()))).collect();
        let shared = Arc::new(Shared {
            type_names,
            schema,
            kv,
            epoch,
            options,
            commit: tokio::sync::Mutex::new(CommitState { next: reserved + 1, reserved, log_trimmed, closed: false }),
            last_seq: AtomicU64::new(last),
            durable: DurableWatermark::new(last),
            wake: Notify::new(),
            stopping: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
            fail_flushes: AtomicBool::new(false),
            torn: last + 1..=reserved,
        });
        let flusher = runtime.spawn(run_flusher(shared.clone()));
        Ok(KvStore { shared, flusher: parking_lot::Mutex::new(Some(flusher)) })
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

impl<B: KvBackend> Drop for KvStore<B> {
    fn drop(&mut self) {
        // The flusher makes a last flush of what is pending and exits.
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }
}

async fn run_flusher<B: KvBackend>(shared: Arc<Shared<B>>) {
    loop {
        if shared.last_seq.load(Ordering::SeqCst) > shared.durable.seq() {
            // Let commits that are in progress join this flush.
            match shared.options.flush_delay {
                delay if delay.is_zero() => tokio::task::yield_now().await,
                delay => tokio::time::sleep(delay).await,
            }
            // An engine whose sync holds its writers off would block a runtime
            // thread in each commit meanwhile: let commits wait on the lock instead.
            let _writers_held = match B::SYNC_EXCLUDES_WRITES {
                true => Some(shared.commit.lock().await),
                false => None,
            };
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

impl<B: KvBackend> Shared<B> {
    fn failure(&self) -> Option<Arc<str>> {
        if let Some(failure) = self.durable.failure() {
            return Some(failure);
        }
        let latched = self.kv.failure()?;
        tracing::error!(engine = B::NAME, error = %latched, "the engine failed; the store refuses further commits");
        self.durable.fail(&format!("the {} engine failed: {latched}", B::NAME));
        self.durable.failure()
    }

    /// Syncs the engine and advances the watermark to the last seq committed
    /// before the sync started. A failure is recorded and is fatal.
    async fn flush(self: &Arc<Self>) -> Result<(), StoreError> {
        if let Some(msg) = self.failure() {
            return Err(StoreError::flush_failed(msg.to_string()));
        }
        let target = self.last_seq.load(Ordering::SeqCst);
        let result = if self.fail_flushes.load(Ordering::SeqCst) {
            Err("injected flush failure".to_owned())
        } else {
            let shared = self.clone();
            match tokio::task::spawn_blocking(move || shared.kv.sync()).await {
                Ok(synced) => synced,
                Err(e) => Err(format!("the sync task failed: {e}")),
            }
        };
        match result {
            Ok(_) => {
                self.flushes.fetch_add(1, Ordering::SeqCst);
                self.durable.advance(target);
                Ok(())
            }
            Err(msg) => {
                tracing::error!(engine = B::NAME, error = %msg, "sync failed; the store refuses further commits");
                Err(self.durable.fail(&msg))
            }
        }
    }

    /// Applies a commit's batch. An engine that fails a write (a full disk,
    /// an I/O error) may hold part of it in memory or in its journal: the
    /// store fails as after a failed flush, and the commit's fate is unknown
    /// until a restart recovers what reached the disk.
    fn apply_or_fail(&self, batch: Vec<KvOp>) -> Result<(), StoreError> {
        self.kv.apply(batch).map_err(|e| {
            let msg = format!("a write to the {} engine failed: {e}", B::NAME);
            tracing::error!(engine = B::NAME, error = %e, "a write failed; the store refuses further commits");
            self.durable.fail(&msg);
            StoreError::outcome_unknown(msg).with_source(e)
        })
    }

    fn check_open(&self, state: &CommitState) -> Result<(), StoreError> {
        if let Some(msg) = self.failure() {
            return Err(StoreError::flush_failed(msg.to_string()));
        }
        if state.closed {
            return Err(StoreError::unavailable("the store is closed"));
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
        match self.kv.get(&keys::row(ty, id))? {
            Some(v) => codec::decode_row(ty, id, v.as_ref()).map(Some),
            None => Ok(None),
        }
    }

    fn purge_mark(&self, user: Id, client_id: &str) -> Result<Option<i64>, StoreError> {
        let key = keys::purge_mark(user, client_id);
        match self.kv.get(&key)? {
            Some(v) => Ok(Some(keys::u64_value(&key, v.as_ref())? as i64)),
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
            for item in self.kv.prefix(&keys::rows_of(ty)) {
                let (k, v) = item?;
                let id = keys::trailing_id(k.as_ref())?;
                if codec::decode_row(&name, id, v.as_ref())?.get_i64(field) == Some(target) {
                    ids.push(id);
                }
            }
            return Ok(ids);
        }
        self.kv.prefix(&keys::referencing(ty, field, target)).map(|item| keys::trailing_id(item?.0.as_ref())).collect()
    }

    /// The batch that writes a plan: rows, reference index, id counters,
    /// applied record, the log entry and the log trim (from the entries
    /// after `log_trimmed`; the new trim point is left in it).
    fn batch(&self, plan: &Plan, log_trimmed: &mut Seq) -> Result<Vec<KvOp>, StoreError> {
        let mut batch = Vec::with_capacity(plan.changes.len() * 3 + 4);
        for change in &plan.changes {
            let (ty, id) = (&*change.key.ty, change.key.id);
            match &change.after {
                Some(row) => batch.push(KvOp::Put(keys::row(ty, id), codec::encode_row(row)?)),
                None => batch.push(KvOp::Delete(keys::row(ty, id))),
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
                    batch.push(KvOp::Delete(keys::reference(ty, &field.name, target, id)));
                }
                if let Some(target) = new {
                    batch.push(KvOp::Put(keys::reference(ty, &field.name, target, id), Vec::new()));
                }
            }
        }
        for (ty, id) in &plan.last_ids {
            batch.push(KvOp::Put(keys::last_id(ty), id.to_be_bytes().to_vec()));
        }
        if let Some((key, record)) = &plan.applied {
            batch.push(KvOp::Put(keys::applied(key), codec::encode(record)?));
            batch.push(KvOp::Put(keys::applied_by_time(record.at_ms, key), Vec::new()));
        }
        batch.push(KvOp::Put(keys::log(plan.seq), codec::encode_changes(&plan.changes)?));
        if let Some(floor) = plan.seq.checked_sub(self.options.log_capacity)
            && floor > *log_trimmed
        {
            self.trim_log(&mut batch, *log_trimmed, floor)?;
            batch.push(KvOp::Put(keys::META_LOG_TRIMMED.to_vec(), floor.to_be_bytes().to_vec()));
            *log_trimmed = floor;
        }
        Ok(batch)
    }

    /// Deletes the log entries after `trimmed` up to `floor`. Usually one
    /// entry: deleted by key, without a scan, because in an LSM engine a scan
    /// from the start of the log would step over every earlier deletion.
    fn trim_log(&self, batch: &mut Vec<KvOp>, trimmed: Seq, floor: Seq) -> Result<(), StoreError> {
        const BY_KEY: u64 = 64;
        if floor - trimmed <= BY_KEY {
            batch.extend((trimmed + 1..=floor).map(|seq| KvOp::Delete(keys::log(seq))));
            return Ok(());
        }
        // A first trim, or a smaller capacity than before: a range of entries.
        for item in self.kv.range(between(keys::log(trimmed + 1), keys::log(floor + 1))) {
            batch.push(KvOp::Delete(item?.0.as_ref().to_vec()));
        }
        Ok(())
    }
}

/// True when `count` distinct ids between `lo` and `hi` fill at least half
/// of that range: a range scan then reads at most twice the rows wanted.
fn is_dense(lo: Id, hi: Id, count: usize) -> bool {
    let span = i128::from(hi) - i128::from(lo) + 1;
    span <= 2 * count as i128
}

/// The planner's view of the key space (consistent while the commit lock is held).
struct Reader<'a, B>(&'a Shared<B>);

#[async_trait]
impl<B: KvBackend> PlanReader for Reader<'_, B> {
    async fn get(&mut self, ty: &str, id: Id) -> Result<Option<Row>, StoreError> {
        self.0.get_row(ty, id)
    }
    async fn referencing(&mut self, ty: &str, field: &str, id: Id) -> Result<Vec<Id>, StoreError> {
        self.0.referencing(ty, field, id)
    }
    async fn last_id(&mut self, ty: &str) -> Result<Id, StoreError> {
        let key = keys::last_id(ty);
        match self.0.kv.get(&key)? {
            Some(v) => Ok(keys::u64_value(&key, v.as_ref())? as Id),
            None => Ok(0),
        }
    }
    async fn applied(&mut self, key: &AppliedKey) -> Result<Option<AppliedRecord>, StoreError> {
        self.0.applied(key)
    }
}

impl<B: KvBackend> Shared<B> {
    fn applied(&self, key: &AppliedKey) -> Result<Option<AppliedRecord>, StoreError> {
        // After a failed flush the key space may hold records that never
        // reached the disk: none is reported as applied any more.
        if let Some(msg) = self.failure() {
            return Err(StoreError::flush_failed(msg.to_string()));
        }
        let Some(v) = self.kv.get(&keys::applied(key))? else {
            return Ok(None);
        };
        let record: AppliedRecord = codec::decode("applied record", v.as_ref())?;
        // A commit's keys go in one batch, but an engine may recover only
        // part of a batch that an I/O error interrupted (sled after a full
        // disk: seen keeping the small applied record and losing the row).
        // A record whose commit left no log entry is such a part: the write
        // was never confirmed (its fate was unknown), so it is not applied,
        // and its resend runs again and replaces this record.
        if self.torn.contains(&record.seq) {
            tracing::warn!(engine = B::NAME, seq = record.seq, "ignoring the applied record of a torn commit");
            return Ok(None);
        }
        Ok(Some(record))
    }
}

#[async_trait]
impl<B: KvBackend> Store for KvStore<B> {
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
                let range = (Bound::Included(keys::row(&name, lo)), Bound::Included(keys::row(&name, hi)));
                for item in shared.kv.range(range) {
                    let (k, v) = item?;
                    let id = keys::trailing_id(k.as_ref())?;
                    while wanted.next_if(|w| *w < id).is_some() {}
                    if wanted.next_if_eq(&id).is_none() {
                        continue;
                    }
                    let row = codec::decode_row(&name, id, v.as_ref())?;
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
        for item in self.shared.kv.range((Bound::Included(start), Bound::Unbounded)).take(limit) {
            let (k, v) = item?;
            let k = k.as_ref();
            if !k.starts_with(&prefix) {
                break;
            }
            rows.push(codec::decode_row(&name, keys::trailing_id(k)?, v.as_ref())?);
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
            shared.apply_or_fail(vec![KvOp::Put(keys::META_RESERVED.to_vec(), reserved.to_be_bytes().to_vec())])?;
            self.shared.flush().await?;
            state.reserved = reserved;
        }
        let plan = plan::plan(&shared.schema, &mut Reader(shared), &tx, seq).await?;
        let mut log_trimmed = state.log_trimmed;
        shared.apply_or_fail(shared.batch(&plan, &mut log_trimmed)?)?;
        state.log_trimmed = log_trimmed;
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
        let mut batch = Vec::new();
        let mut marks: HashMap<(Id, String), i64> = HashMap::new();
        let mut count = 0;
        for item in shared.kv.range(between(keys::applied_time_bound(0), keys::applied_time_bound(before_ms))) {
            let (k, _) = item?;
            let key = keys::parse_applied_by_time(k.as_ref())?;
            batch.push(KvOp::Delete(k.as_ref().to_vec()));
            batch.push(KvOp::Delete(keys::applied(&key)));
            let mark = match marks.get(&(key.user, key.client_id.clone())) {
                Some(m) => *m,
                None => shared.purge_mark(key.user, &key.client_id)?.unwrap_or(i64::MIN),
            };
            marks.insert((key.user, key.client_id), mark.max(key.write_id));
            count += 1;
        }
        for ((user, client_id), write_id) in &marks {
            batch.push(KvOp::Put(keys::purge_mark(*user, client_id), write_id.to_be_bytes().to_vec()));
        }
        shared.kv.apply(batch)?;
        drop(state);
        if count > 0 {
            tracing::debug!(count, before_ms, "purged applied records");
        }
        Ok(count)
    }

    async fn changes_since(&self, after: Seq, limit: usize) -> Result<LogRead, StoreError> {
        let kv = &self.shared.kv;
        if after < meta_u64(kv, keys::META_LOG_TRIMMED)? {
            return Ok(LogRead::Trimmed);
        }
        let Some(from) = after.checked_add(1) else {
            return Ok(LogRead::Entries(Vec::new()));
        };
        let mut entries = Vec::new();
        for item in kv.range((Bound::Included(keys::log(from)), Bound::Unbounded)).take(limit) {
            let (k, v) = item?;
            let k = k.as_ref();
            if !k.starts_with(keys::LOG) {
                break;
            }
            let seq = keys::u64_value(k, &k[keys::LOG.len()..])?;
            entries.push(LogEntry { seq, changes: codec::decode_changes(seq, v.as_ref())? });
        }
        Ok(LogRead::Entries(entries))
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.shared.kv.prefix(keys::ROWS).next().transpose()?.is_none())
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.shared.commit.lock().await.closed = true;
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        let flusher = self.flusher.lock().take();
        if let Some(handle) = flusher
            && let Err(e) = handle.await
        {
            tracing::error!(engine = B::NAME, error = %e, "the flusher ended abnormally");
        }
        // Covers what no commit woke the flusher for (e.g. purges).
        self.shared.flush().await?;
        tracing::info!(engine = B::NAME, last_seq = self.last_seq(), "closed store");
        Ok(())
    }
}
