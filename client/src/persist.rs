//! The persisted pending queue: the clientId, the writeId counter and every
//! unanswered write, in a directory of its own, so writes survive an app restart.
//!
//! The queue is small (only unanswered writes) and always replaced whole, so
//! it is one JSON file, rewritten on each change: written to a temporary file,
//! synced, renamed over the old one and the directory synced, so a crash leaves
//! either the old queue or the new one. A lock file held while the queue is
//! open lets one client at a time use the directory.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use statecast_protocol::v1::Write;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The queue's file in the directory.
const QUEUE_FILE: &str = "queue.json";
/// Where the next queue is written before it replaces [`QUEUE_FILE`].
const NEXT_FILE: &str = "queue.json.next";
/// Held (locked) while a client has the queue open.
const LOCK_FILE: &str = "lock";

pub(crate) struct Queue {
    dir: PathBuf,
    /// The saved clientId, kept across rewrites of the queue.
    client_id: Mutex<Option<String>>,
    /// Holds the directory's lock until the queue is dropped.
    _lock: File,
}

/// What [`QUEUE_FILE`] holds.
#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Saved {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    next_write_id: i64,
    writes: Vec<Write>,
}

impl Queue {
    /// Opens (creating it if needed) the queue directory at `path` and locks it.
    pub fn open(path: &Path) -> Result<Queue, String> {
        let cant_open = |e: std::io::Error| format!("can't open the queue {}: {e}", path.display());
        fs::create_dir_all(path).map_err(cant_open)?;
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(path.join(LOCK_FILE));
        let lock = lock.map_err(cant_open)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(format!("the queue {} is in use by another client", path.display()));
            }
            Err(TryLockError::Error(e)) => return Err(cant_open(e)),
        }
        let mut queue = Queue { dir: path.to_owned(), client_id: Mutex::new(None), _lock: lock };
        // An unreadable queue is reported by `load`.
        queue.client_id = Mutex::new(queue.read().ok().and_then(|s| s.client_id));
        Ok(queue)
    }

    fn read(&self) -> Result<Saved, String> {
        let path = self.dir.join(QUEUE_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("the saved queue is unreadable: {e}")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Saved { next_write_id: 1, ..Saved::default() }),
            Err(e) => Err(format!("can't read {}: {e}", path.display())),
        }
    }

    /// Replaces the queue's file with `saved`, durably.
    fn write(&self, saved: &Saved) -> Result<(), String> {
        let next = self.dir.join(NEXT_FILE);
        let failed = |e: std::io::Error| format!("can't write the queue {}: {e}", self.dir.display());
        let bytes = serde_json::to_vec(saved).map_err(|e| e.to_string())?;
        let mut file = File::create(&next).map_err(failed)?;
        file.write_all(&bytes).map_err(failed)?;
        file.sync_all().map_err(failed)?;
        fs::rename(&next, self.dir.join(QUEUE_FILE)).map_err(failed)?;
        // The rename is durable once the directory is synced (where a
        // directory can be opened and synced).
        if let Ok(dir) = File::open(&self.dir) {
            dir.sync_all().map_err(failed)?;
        }
        Ok(())
    }

    /// The saved clientId, or a new one (saved).
    pub fn client_id(&self) -> Result<String, String> {
        if let Some(id) = self.client_id.lock().clone() {
            return Ok(id);
        }
        let mut saved = self.read()?;
        let id = format!("{:032x}", rand::random::<u128>());
        saved.client_id = Some(id.clone());
        self.write(&saved)?;
        *self.client_id.lock() = Some(id.clone());
        Ok(id)
    }

    /// The next writeId and the saved writes, in writeId order.
    pub fn load(&self) -> Result<(i64, Vec<Write>), String> {
        let mut saved = self.read()?;
        saved.writes.sort_by_key(|w| w.write_id);
        Ok((saved.next_write_id, saved.writes))
    }

    /// Replaces the saved queue (keeping the clientId) and syncs it.
    pub fn save_all(&self, next_write_id: i64, writes: &[Write]) -> Result<(), String> {
        let client_id = self.client_id.lock().clone();
        self.write(&Saved { client_id, next_write_id, writes: writes.to_vec() })
    }
}
