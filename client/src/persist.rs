//! The persisted pending queue: the clientId, the writeId counter and every
//! unanswered write, in a fjall database, so writes survive an app restart.
//!
//! The queue is small (only unanswered writes) and always replaced whole, so
//! it is one record, overwritten and synced on each change: no per-write keys
//! whose deletions an LSM tree would carry until compaction.

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use serde::{Deserialize, Serialize};
use statecast_core::protocol::v1::Write;
use std::path::Path;

const CLIENT_ID: &str = "client_id";
const QUEUE: &str = "queue";

pub(crate) struct Queue {
    db: Database,
    keyspace: Keyspace,
}

/// What [`QUEUE`] holds.
#[derive(Serialize, Deserialize)]
struct Saved {
    next_write_id: i64,
    writes: Vec<Write>,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Queue {
    pub fn open(path: &Path) -> Result<Queue, String> {
        let cant_open = |e: fjall::Error| format!("can't open {}: {e}", path.display());
        // A client's queue needs no parallel compaction: one worker thread.
        let db = Database::builder(path).worker_threads(1).open().map_err(cant_open)?;
        let keyspace = db.keyspace("pending", KeyspaceCreateOptions::default).map_err(cant_open)?;
        Ok(Queue { db, keyspace })
    }

    fn put_synced(&self, key: &str, value: Vec<u8>) -> Result<(), String> {
        self.keyspace.insert(key, value).map_err(err)?;
        self.db.persist(PersistMode::SyncAll).map_err(err)
    }

    /// The saved clientId, or a new one (saved).
    pub fn client_id(&self) -> Result<String, String> {
        if let Some(v) = self.keyspace.get(CLIENT_ID).map_err(err)? {
            return String::from_utf8(v.to_vec()).map_err(err);
        }
        let id = format!("{:032x}", rand::random::<u128>());
        self.put_synced(CLIENT_ID, id.as_bytes().to_vec())?;
        Ok(id)
    }

    /// The next writeId and the saved writes, in writeId order.
    pub fn load(&self) -> Result<(i64, Vec<Write>), String> {
        let Some(v) = self.keyspace.get(QUEUE).map_err(err)? else {
            return Ok((1, Vec::new()));
        };
        let mut saved: Saved = serde_json::from_slice(&v).map_err(|e| format!("the saved queue is unreadable: {e}"))?;
        saved.writes.sort_by_key(|w| w.write_id);
        Ok((saved.next_write_id, saved.writes))
    }

    /// Replaces the saved queue and syncs it.
    pub fn save_all(&self, next_write_id: i64, writes: &[Write]) -> Result<(), String> {
        let saved = Saved { next_write_id, writes: writes.to_vec() };
        self.put_synced(QUEUE, serde_json::to_vec(&saved).map_err(err)?)
    }
}
