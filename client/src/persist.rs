//! The persisted pending queue: the clientId, the writeId counter and every
//! unanswered write, in a sled database, so writes survive an app restart.

use statecast_core::protocol::v1::Write;
use std::path::Path;

pub(crate) struct Queue {
    db: sled::Db,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Queue {
    pub fn open(path: &Path) -> Result<Queue, String> {
        let db = sled::open(path).map_err(|e| format!("can't open {}: {e}", path.display()))?;
        Ok(Queue { db })
    }

    /// The saved clientId, or a new one (saved).
    pub fn client_id(&self) -> Result<String, String> {
        if let Some(v) = self.db.get("client_id").map_err(err)? {
            return String::from_utf8(v.to_vec()).map_err(err);
        }
        let id = format!("{:032x}", rand::random::<u128>());
        self.db.insert("client_id", id.as_bytes()).map_err(err)?;
        self.db.flush().map_err(err)?;
        Ok(id)
    }

    /// The next writeId and the saved writes, in writeId order.
    pub fn load(&self) -> Result<(i64, Vec<Write>), String> {
        let next = match self.db.get("next_write_id").map_err(err)? {
            Some(v) => String::from_utf8_lossy(&v).parse().map_err(err)?,
            None => 1,
        };
        let mut writes = Vec::new();
        for item in self.db.scan_prefix("w/") {
            let (_, v) = item.map_err(err)?;
            writes.push(serde_json::from_slice::<Write>(&v).map_err(err)?);
        }
        writes.sort_by_key(|w| w.write_id);
        Ok((next, writes))
    }

    /// Replaces the saved queue (small: only unanswered writes) and flushes it.
    pub fn save_all(&self, next_write_id: i64, writes: &[Write]) -> Result<(), String> {
        let mut batch = sled::Batch::default();
        for item in self.db.scan_prefix("w/") {
            let (k, _) = item.map_err(err)?;
            batch.remove(k);
        }
        for w in writes {
            let key = format!("w/{:020}", w.write_id);
            batch.insert(key.as_bytes(), serde_json::to_vec(w).map_err(err)?);
        }
        batch.insert("next_write_id", next_write_id.to_string().as_bytes());
        self.db.apply_batch(batch).map_err(err)?;
        self.db.flush().map_err(err)?;
        Ok(())
    }
}
