//! The fsync of fjall's active journal, outside fjall's journal lock.
//!
//! fjall writes its journal as `<N>.jnl` files in the database folder; the
//! highest `N` is the one it appends to. Rotating to `N + 1` fsyncs `N` first
//! (`SyncAll`) while it holds the journal, so a journal that is no longer the
//! active one is already durable. The flusher therefore:
//!
//! 1. hands fjall's journal buffer to the OS (`PersistMode::Buffer`, under
//!    fjall's lock, a write call);
//! 2. then finds the active journal and `fdatasync`s it through its own
//!    descriptor, while commits go on appending.
//!
//! An fsync makes the *file's* written data durable, whichever descriptor
//! wrote it. If a rotation happens between the two steps, the data of step 1
//! sits in the journal the rotation synced, and the fsync of the new one only
//! costs a little. Commits that append during the fsync are not counted as
//! durable: the store's watermark moves to the last seq applied before step 1.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The active journal's number and a descriptor of it, kept between syncs.
pub(crate) struct ActiveJournal {
    folder: PathBuf,
    open: Mutex<Option<(u64, File)>>,
}

impl ActiveJournal {
    pub(crate) fn new(folder: &Path) -> Self {
        // Absolute, as fjall keeps it: a later change of directory must not move it.
        let folder = std::path::absolute(folder).unwrap_or_else(|_| folder.to_path_buf());
        Self { folder, open: Mutex::new(None) }
    }

    /// `fdatasync`s the journal fjall appends to now.
    pub(crate) fn sync(&self) -> io::Result<()> {
        let active = self.active_number()?;
        // Only the flusher syncs; a poisoned lock means an earlier sync panicked.
        let mut open = self.open.lock().map_err(|_| io::Error::other("an earlier journal sync panicked"))?;
        if open.as_ref().map(|(n, _)| *n) != Some(active) {
            *open = Some((active, File::open(self.path_of(active))?));
        }
        match open.as_ref() {
            Some((_, file)) => file.sync_data(),
            None => Err(io::Error::other("no journal is open")),
        }
    }

    /// The path of the journal that [`ActiveJournal::sync`] syncs now.
    #[cfg(test)]
    pub(crate) fn active_path(&self) -> io::Result<PathBuf> {
        Ok(self.path_of(self.active_number()?))
    }

    fn path_of(&self, number: u64) -> PathBuf {
        self.folder.join(format!("{number}.jnl"))
    }

    /// The highest journal number in the folder.
    fn active_number(&self) -> io::Result<u64> {
        let mut highest = None;
        for entry in std::fs::read_dir(&self.folder)? {
            let name = entry?.file_name();
            let number = name.to_str().and_then(|n| n.strip_suffix(".jnl")).and_then(|n| n.parse::<u64>().ok());
            highest = highest.max(number);
        }
        highest.ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no fjall journal in {}", self.folder.display()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FjallBackend;
    use statecast_store_kv::{KvBackend, KvOp};

    fn journal_holds(path: &Path, needle: &[u8]) -> bool {
        let bytes = std::fs::read(path).expect("read the journal");
        bytes.windows(needle.len()).any(|w| w == needle)
    }

    /// The file the flusher fsyncs is the one fjall appended the batch to.
    #[test]
    fn the_synced_journal_holds_the_last_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = FjallBackend::open(dir.path()).map_err(|_| "open").expect("open fjall");
        for round in 0..3u8 {
            let key = format!("journal-probe-key-{round}").into_bytes();
            kv.apply(vec![KvOp::Put(key.clone(), b"journal-probe-value".to_vec())]).expect("apply");
            kv.sync().expect("sync");
            let active = kv.journal.active_path().expect("active journal");
            assert!(journal_holds(&active, &key), "{} lacks round {round}'s batch", active.display());
        }
    }

    /// Without the OS hand-over the batch stays in fjall's buffer: the probe
    /// above would not see it, so it tests the file, not the buffer.
    #[test]
    fn an_unsynced_batch_is_not_in_the_file_yet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = FjallBackend::open(dir.path()).map_err(|_| "open").expect("open fjall");
        let key = b"journal-buffered-key".to_vec();
        kv.apply(vec![KvOp::Put(key.clone(), b"v".to_vec())]).expect("apply");
        let active = kv.journal.active_path().expect("active journal");
        assert!(!journal_holds(&active, &key));
        kv.sync().expect("sync");
        assert!(journal_holds(&active, &key));
    }

    /// fjall rotates its journal at a memtable flush once it passed 64 MB:
    /// the flusher must follow to the new file, or later commits would be
    /// counted durable without an fsync of the journal that holds them.
    #[test]
    fn the_sync_follows_a_rotated_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = FjallBackend::open(dir.path()).map_err(|_| "open").expect("open fjall");
        kv.apply(vec![KvOp::Put(b"before-rotation".to_vec(), b"v".to_vec())]).expect("apply");
        kv.sync().expect("sync");
        let first = kv.journal.active_path().expect("active journal");
        let big = vec![7u8; 1 << 20];
        for i in 0..66u32 {
            kv.apply(vec![KvOp::Put(format!("filler-{i}").into_bytes(), big.clone())]).expect("apply");
        }
        kv.keyspace.rotate_memtable_and_wait().expect("flush the memtable");
        let key = b"after-rotation".to_vec();
        kv.apply(vec![KvOp::Put(key.clone(), b"v".to_vec())]).expect("apply");
        kv.sync().expect("sync");
        let active = kv.journal.active_path().expect("active journal");
        assert_ne!(active, first, "fjall rotated its journal");
        assert!(journal_holds(&active, &key), "{} lacks the batch after the rotation", active.display());
        let synced = kv.journal.open.lock().expect("lock").as_ref().map(|(n, _)| *n);
        assert_eq!(synced.map(|n| kv.journal.path_of(n)), Some(active), "the flusher synced the new journal");
    }

    #[test]
    fn a_folder_without_a_journal_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = ActiveJournal::new(dir.path()).sync().expect_err("no journal");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
