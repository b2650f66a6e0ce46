//! The sled store: Statecast's embedded store engine ([`statecast_store_kv`])
//! on one sled tree. sled's `flush` is the group commit's sync.

use statecast_core::store::StoreError;
use statecast_store_kv::{KeyRange, KvBackend, KvIter, KvOp, KvStore, OpenError};
use std::path::Path;
use std::sync::{Arc, OnceLock};

pub use statecast_store_kv::KvOptions as SledOptions;

/// A [`statecast_core::store::Store`] on sled. `SledStore::open(path, schema)`.
pub type SledStore = KvStore<SledBackend>;

/// The name of the one tree that holds everything.
const TREE: &str = "statecast";

/// One sled tree, as the embedded store engine's [`KvBackend`].
pub struct SledBackend {
    tree: sled::Tree,
    /// The first I/O error any call met. sled latches it (its own flusher
    /// may meet it first): every later call fails with it, reads included.
    io_failure: Arc<OnceLock<String>>,
    // Dropped last: the tree above belongs to it.
    _db: sled::Db,
}

fn backend(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Corruption { .. } => StoreError::corrupt(e.to_string()).with_source(e),
        // A full disk, a failing device: 503, not 500 (it also fails the
        // store, which then stops the server; see store-kv).
        sled::Error::Io(_) => StoreError::unavailable(format!("the sled engine failed I/O: {e}")).with_source(e),
        _ => StoreError::backend(e.to_string()).with_source(e),
    }
}

/// Maps an error, latching it first when it is an I/O error.
fn latching(io_failure: &OnceLock<String>, e: sled::Error) -> StoreError {
    if matches!(e, sled::Error::Io(_)) {
        let _ = io_failure.set(e.to_string());
    }
    backend(e)
}

fn items(iter: sled::Iter, io_failure: Arc<OnceLock<String>>) -> KvIter<'static, sled::IVec> {
    Box::new(iter.map(move |item| item.map_err(|e| latching(&io_failure, e))))
}

impl KvBackend for SledBackend {
    const NAME: &'static str = "sled";
    const SYNC_EXCLUDES_WRITES: bool = false;
    type Bytes = sled::IVec;

    fn open(path: &Path) -> Result<Self, OpenError> {
        if path.join("version").is_file() && path.join("keyspaces").is_dir() {
            return Err(OpenError::Failed(StoreError::unavailable(format!(
                "{} holds a fjall database, not a sled one: open it with the fjall store",
                path.display()
            ))));
        }
        // The store syncs itself (group commit); `HighThroughput` consolidates
        // pages less eagerly than the default `LowSpace`: ~10% more durable
        // writes for some disk space (docs/BENCHMARKS.md).
        let config = sled::Config::new().path(path).flush_every_ms(None).mode(sled::Mode::HighThroughput);
        let db = config.open().map_err(|e| match e {
            // Another handle holds the path (perhaps one in this process still
            // releasing its file lock on sled's thread pool).
            sled::Error::Io(e) if e.to_string().contains("could not acquire lock") => OpenError::Locked(e.to_string()),
            sled::Error::Io(e) => OpenError::Failed(
                StoreError::unavailable(format!("cannot open {}: {e}", path.display())).with_source(e),
            ),
            e => OpenError::Failed(backend(e)),
        })?;
        let tree = db.open_tree(TREE).map_err(|e| OpenError::Failed(backend(e)))?;
        Ok(Self { tree, io_failure: Arc::default(), _db: db })
    }

    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        self.tree.get(key).map_err(|e| latching(&self.io_failure, e))
    }

    fn range(&self, range: KeyRange) -> KvIter<'_, sled::IVec> {
        items(self.tree.range(range), self.io_failure.clone())
    }

    fn prefix(&self, prefix: &[u8]) -> KvIter<'_, sled::IVec> {
        items(self.tree.scan_prefix(prefix), self.io_failure.clone())
    }

    fn apply(&self, ops: Vec<KvOp>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                KvOp::Put(k, v) => batch.insert(k, v),
                KvOp::Delete(k) => batch.remove(k),
            }
        }
        self.tree.apply_batch(batch).map_err(|e| latching(&self.io_failure, e))
    }

    fn sync(&self) -> Result<(), String> {
        self.tree.flush().map(drop).map_err(|e| {
            let _ = self.io_failure.set(e.to_string());
            e.to_string()
        })
    }

    fn failure(&self) -> Option<String> {
        self.io_failure.get().cloned()
    }
}
