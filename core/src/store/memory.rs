//! The in-memory reference store: every commit is "durable" at once. For
//! tests, examples and the engine's own unit tests.

use super::plan::{PlanReader, plan};
use super::*;
use crate::schema::Schema;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Mutex;

/// How many commits the in-memory change log keeps.
const LOG_CAPACITY: usize = 10_000;

#[derive(Default)]
struct Inner {
    rows: HashMap<String, BTreeMap<Id, Row>>,
    last_ids: HashMap<String, Id>,
    applied: HashMap<AppliedKey, AppliedRecord>,
    purged: HashMap<(Id, String), i64>,
    log: VecDeque<LogEntry>,
    trimmed_through: Seq,
}

impl Inner {
    fn row(&self, ty: &str, id: Id) -> Option<Row> {
        self.rows.get(ty).and_then(|t| t.get(&id)).cloned()
    }
}

#[async_trait]
impl PlanReader for Inner {
    async fn get(&mut self, ty: &str, id: Id) -> Result<Option<Row>, StoreError> {
        Ok(self.row(ty, id))
    }
    async fn referencing(&mut self, ty: &str, field: &str, id: Id) -> Result<Vec<Id>, StoreError> {
        let Some(table) = self.rows.get(ty) else {
            return Ok(Vec::new());
        };
        Ok(table.values().filter(|r| r.get_i64(field) == Some(id)).map(|r| r.id).collect())
    }
    async fn last_id(&mut self, ty: &str) -> Result<Id, StoreError> {
        Ok(self.last_ids.get(ty).copied().unwrap_or(0))
    }
    async fn applied(&mut self, key: &AppliedKey) -> Result<Option<AppliedRecord>, StoreError> {
        Ok(self.applied.get(key).cloned())
    }
}

/// A store that keeps everything in memory.
pub struct MemoryStore {
    schema: Arc<Schema>,
    epoch: String,
    seq: AtomicU64,
    inner: Mutex<Inner>,
}

impl MemoryStore {
    pub fn new(schema: Arc<Schema>) -> Self {
        Self { schema, epoch: new_epoch(), seq: AtomicU64::new(0), inner: Mutex::new(Inner::default()) }
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn epoch(&self) -> &str {
        &self.epoch
    }
    fn last_seq(&self) -> Seq {
        self.seq.load(Ordering::SeqCst)
    }
    fn durable_seq(&self) -> Seq {
        self.last_seq()
    }
    async fn wait_durable(&self, _seq: Seq) -> Result<(), StoreError> {
        Ok(())
    }
    async fn get(&self, ty: &str, id: Id) -> Result<Option<Row>, StoreError> {
        Ok(self.inner.lock().await.row(ty, id))
    }
    async fn children(&self, child_ty: &str, field: &str, parent_ids: &[Id]) -> Result<Vec<Row>, StoreError> {
        let inner = self.inner.lock().await;
        let Some(table) = inner.rows.get(child_ty) else {
            return Ok(Vec::new());
        };
        let mut rows: Vec<Row> =
            table.values().filter(|r| r.get_i64(field).is_some_and(|p| parent_ids.contains(&p))).cloned().collect();
        rows.sort_by_key(|r| (r.created, r.id));
        Ok(rows)
    }
    async fn scan(&self, ty: &str, after: Option<Id>, limit: usize) -> Result<Vec<Row>, StoreError> {
        let inner = self.inner.lock().await;
        let Some(table) = inner.rows.get(ty) else {
            return Ok(Vec::new());
        };
        let from = match after {
            Some(a) => std::ops::Bound::Excluded(a),
            None => std::ops::Bound::Unbounded,
        };
        Ok(table.range((from, std::ops::Bound::Unbounded)).take(limit).map(|(_, r)| r.clone()).collect())
    }
    async fn commit(&self, tx: Transaction) -> Result<Committed, CommitError> {
        let mut inner = self.inner.lock().await;
        let seq = self.seq.load(Ordering::SeqCst) + 1;
        let plan = plan(&self.schema, &mut *inner, &tx, seq).await?;
        for change in &plan.changes {
            let table = inner.rows.entry(change.key.ty.to_string()).or_default();
            match &change.after {
                Some(row) => table.insert(row.id, row.clone()),
                None => table.remove(&change.key.id),
            };
        }
        for (ty, id) in &plan.last_ids {
            inner.last_ids.insert(ty.clone(), *id);
        }
        if let Some((key, rec)) = &plan.applied {
            inner.applied.insert(key.clone(), rec.clone());
        }
        inner.log.push_back(LogEntry { seq, changes: plan.changes.clone() });
        while inner.log.len() > LOG_CAPACITY {
            if let Some(e) = inner.log.pop_front() {
                inner.trimmed_through = e.seq;
            }
        }
        self.seq.store(seq, Ordering::SeqCst);
        Ok(plan.committed())
    }
    async fn applied(&self, key: &AppliedKey) -> Result<Option<AppliedRecord>, StoreError> {
        Ok(self.inner.lock().await.applied.get(key).cloned())
    }
    async fn purged_write_id(&self, user: Id, client_id: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.inner.lock().await.purged.get(&(user, client_id.to_owned())).copied())
    }
    async fn purge_applied(&self, before_ms: u64) -> Result<u64, StoreError> {
        let mut inner = self.inner.lock().await;
        let old: Vec<AppliedKey> =
            inner.applied.iter().filter(|(_, r)| r.at_ms < before_ms).map(|(k, _)| k.clone()).collect();
        for key in &old {
            inner.applied.remove(key);
            let mark = inner.purged.entry((key.user, key.client_id.clone())).or_insert(key.write_id);
            *mark = (*mark).max(key.write_id);
        }
        Ok(old.len() as u64)
    }
    async fn changes_since(&self, after: Seq, limit: usize) -> Result<LogRead, StoreError> {
        let inner = self.inner.lock().await;
        if after < inner.trimmed_through {
            return Ok(LogRead::Trimmed);
        }
        Ok(LogRead::Entries(inner.log.iter().filter(|e| e.seq > after).take(limit).cloned().collect()))
    }
    async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.inner.lock().await.rows.values().all(BTreeMap::is_empty))
    }
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
