//! The fjall store: Statecast's embedded store engine ([`statecast_store_kv`])
//! on one fjall keyspace. fjall is a log-structured merge tree: a commit
//! appends one batch to its journal and inserts into an in-memory table,
//! where a B-tree engine rewrites the pages it touches. That makes a commit
//! several times cheaper in CPU than on sled (docs/BENCHMARKS.md).
//!
//! Journal writes stay in fjall's buffer until the store's flusher persists
//! them, so one fsync covers every commit since the last (group commit); the
//! durability watermark only moves after it. The fsync runs outside fjall's
//! journal lock (see `journal.rs`), so commits go on while it runs.

mod journal;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Slice};
use journal::ActiveJournal;
use statecast_core::store::StoreError;
use statecast_store_kv::{KeyRange, KvBackend, KvIter, KvOp, KvStore, OpenError};
use std::path::Path;

pub use statecast_store_kv::KvOptions as FjallOptions;

/// A [`statecast_core::store::Store`] on fjall. `FjallStore::open(path, schema)`.
pub type FjallStore = KvStore<FjallBackend>;

/// The name of the one keyspace that holds everything.
const KEYSPACE: &str = "statecast";

/// One fjall keyspace, as the embedded store engine's [`KvBackend`].
pub struct FjallBackend {
    db: Database,
    keyspace: Keyspace,
    journal: ActiveJournal,
}

fn backend(e: fjall::Error) -> StoreError {
    match e {
        fjall::Error::Poisoned => StoreError::flush_failed("an earlier journal write failed"),
        // A full disk, a failing device: 503, not 500 (a failed write also
        // fails the store, which then stops the server; see store-kv).
        fjall::Error::Io(_) => StoreError::unavailable(format!("the fjall engine failed I/O: {e}")).with_source(e),
        _ => StoreError::backend(e.to_string()).with_source(e),
    }
}

fn items(iter: fjall::Iter) -> KvIter<'static, Slice> {
    Box::new(iter.map(|guard| guard.into_inner().map_err(backend)))
}

impl KvBackend for FjallBackend {
    const NAME: &'static str = "fjall";
    const SYNC_EXCLUDES_WRITES: bool = false;
    type Bytes = Slice;

    fn open(path: &Path) -> Result<Self, OpenError> {
        if path.join("conf").is_file() && path.join("db").is_file() {
            return Err(OpenError::Failed(StoreError::unavailable(format!(
                "{} holds a sled database, not a fjall one: open it with the sled store",
                path.display()
            ))));
        }
        // The store's flusher persists the journal (group commit); a batch
        // need not reach the OS on its own.
        let db = Database::builder(path).manual_journal_persist(true).open().map_err(|e| match e {
            fjall::Error::Locked => OpenError::Locked("another handle holds its lock".into()),
            fjall::Error::Io(io) => OpenError::Failed(
                StoreError::unavailable(format!("cannot open {}: {io}", path.display())).with_source(io),
            ),
            e => OpenError::Failed(backend(e)),
        })?;
        let keyspace =
            db.keyspace(KEYSPACE, KeyspaceCreateOptions::default).map_err(|e| OpenError::Failed(backend(e)))?;
        Ok(Self { db, keyspace, journal: ActiveJournal::new(path) })
    }

    fn get(&self, key: &[u8]) -> Result<Option<Slice>, StoreError> {
        self.keyspace.get(key).map_err(backend)
    }

    fn range(&self, range: KeyRange) -> KvIter<'_, Slice> {
        items(self.keyspace.range(range))
    }

    fn prefix(&self, prefix: &[u8]) -> KvIter<'_, Slice> {
        items(self.keyspace.prefix(prefix))
    }

    fn apply(&self, ops: Vec<KvOp>) -> Result<(), StoreError> {
        let mut batch = self.db.batch();
        for op in ops {
            match op {
                KvOp::Put(k, v) => batch.insert(&self.keyspace, k, v),
                KvOp::Delete(k) => batch.remove(&self.keyspace, k),
            }
        }
        batch.commit().map_err(backend)
    }

    fn sync(&self) -> Result<(), String> {
        // fjall's own `SyncData` fsyncs while it holds the journal, and every
        // commit waits that long. Under the lock only the journal's buffer
        // goes to the OS; the fsync of the file follows without it.
        self.db.persist(PersistMode::Buffer).map_err(|e| e.to_string())?;
        self.journal.sync().map_err(|e| format!("cannot fsync the fjall journal: {e}"))
    }
}
