//! What a [`crate::KvStore`] needs of an embedded ordered key-value engine:
//! point reads, ordered range scans in both directions, atomic multi-key
//! batches, and a blocking flush that makes every applied batch durable.

use statecast_core::store::StoreError;
use std::ops::Bound;
use std::path::Path;

/// A key range: `(start, end)` bounds over owned keys.
pub type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// Key-value pairs in key order (the engine's own byte handles, no copy).
pub type KvIter<'a, V> = Box<dyn DoubleEndedIterator<Item = Result<(V, V), StoreError>> + 'a>;

/// Why a [`KvBackend`] did not open.
#[derive(Debug)]
pub enum OpenError {
    /// Another handle holds the path's lock (it may be about to let go).
    Locked(String),
    Failed(StoreError),
}

/// One write of a [`KvBackend::apply`] batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// An embedded, ordered, crash-consistent key-value engine.
///
/// Batches must be atomic and applied in order: after a crash the engine holds
/// a prefix of the applied batches, and at least every batch applied before
/// the last successful [`KvBackend::sync`].
pub trait KvBackend: Send + Sync + Sized + 'static {
    /// The engine's name in logs and errors (`sled`, `fjall`).
    const NAME: &'static str;

    /// True when [`KvBackend::sync`] keeps [`KvBackend::apply`] waiting (an
    /// engine that holds its journal while it fsyncs): the store then holds commits off
    /// on its own lock during a sync, so no runtime thread blocks in `apply`.
    const SYNC_EXCLUDES_WRITES: bool;

    /// A key or value as the engine hands it out.
    type Bytes: AsRef<[u8]> + Send;

    /// Opens (or creates) the engine's files in `path`.
    fn open(path: &Path) -> Result<Self, OpenError>;

    fn get(&self, key: &[u8]) -> Result<Option<Self::Bytes>, StoreError>;

    /// The pairs whose keys fall in `range`, in key order.
    fn range(&self, range: KeyRange) -> KvIter<'_, Self::Bytes>;

    /// The pairs whose keys start with `prefix`, in key order.
    fn prefix(&self, prefix: &[u8]) -> KvIter<'_, Self::Bytes>;

    /// Applies every op atomically, visible to reads once it returns.
    fn apply(&self, ops: Vec<KvOp>) -> Result<(), StoreError>;

    /// Makes every applied batch durable (fsync). Blocking.
    fn sync(&self) -> Result<(), String>;

    /// An error the engine has latched, if any: an engine that refuses every
    /// later operation once one I/O failed (sled) says so here, so the store
    /// fails as after a failed flush instead of answering each call with 503
    /// for ever.
    fn failure(&self) -> Option<String> {
        None
    }
}
