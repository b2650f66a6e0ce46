//! The commit planner shared by every store: given a consistent reader (the
//! store holds its commit lock, or reads inside its transaction), it checks
//! expected versions and ids, resolves temp ids, expands cascading deletes and
//! produces the before/after images.
//!
//! The reader is async so that stores whose reads are I/O (SQL) can run the
//! planner inside their transaction; in-memory and sled readers never suspend.

use super::{AppliedKey, AppliedRecord, Change, CommitError, CreatedId, NewId, StoreError, Transaction, TxOp};
use crate::ids::{Id, MINTED_ID_MIN, Seq};
use crate::row::{Fields, Row, RowKey};
use crate::schema::{EntityType, OnDelete, Schema};
use async_trait::async_trait;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Consistent reads for the planner (the store's state before the transaction).
///
/// A SQL store reads inside its transaction: `get` of a row the planner will
/// rely on may lock it (`SELECT … FOR UPDATE`), and `last_id` may lock the
/// type's id counter, so the checks hold until commit.
#[async_trait]
pub trait PlanReader: Send {
    async fn get(&mut self, ty: &str, id: Id) -> Result<Option<Row>, StoreError>;
    /// A row the transaction only checks (an expected version it will not
    /// write): a SQL store may lock it shared (`FOR SHARE`), so commits that
    /// check the same row — every write into one context checks its anchor —
    /// run side by side, while a commit changing it waits.
    async fn get_unchanged(&mut self, ty: &str, id: Id) -> Result<Option<Row>, StoreError> {
        self.get(ty, id).await
    }
    /// Ids of rows of `ty` whose reference `field` equals `id`.
    async fn referencing(&mut self, ty: &str, field: &str, id: Id) -> Result<Vec<Id>, StoreError>;
    /// The highest id assigned so far for `ty` (0 if none).
    async fn last_id(&mut self, ty: &str) -> Result<Id, StoreError>;
    async fn applied(&mut self, key: &AppliedKey) -> Result<Option<AppliedRecord>, StoreError>;
}

/// What a store must write to commit a transaction.
#[derive(Debug)]
pub struct Plan {
    pub seq: Seq,
    pub changes: Vec<Change>,
    pub created: Vec<CreatedId>,
    /// New values of the per-type id counters that moved.
    pub last_ids: BTreeMap<String, Id>,
    pub applied: Option<(AppliedKey, AppliedRecord)>,
}

impl Plan {
    pub fn committed(&self) -> super::Committed {
        super::Committed { seq: self.seq, changes: self.changes.clone(), created: self.created.clone() }
    }
}

struct Planner<'a, R> {
    schema: &'a Schema,
    reader: &'a mut R,
    seq: Seq,
    order: Vec<RowKey>,
    /// First-touch image (before) and current image (after) of every touched row.
    touched: HashMap<RowKey, (Option<Row>, Option<Row>)>,
    /// Temp id → (its type, the id it was given).
    temps: HashMap<Id, (Arc<str>, Id)>,
    last_ids: BTreeMap<String, Id>,
    created: Vec<CreatedId>,
}

/// Plans `tx` as commit number `seq`.
pub async fn plan<R: PlanReader>(
    schema: &Schema,
    reader: &mut R,
    tx: &Transaction,
    seq: Seq,
) -> Result<Plan, CommitError> {
    if let Some(key) = &tx.applied
        && let Some(rec) = reader.applied(key).await?
    {
        return Err(CommitError::Duplicate(rec));
    }
    // Read (and, on PostgreSQL, lock) the expected rows in one canonical
    // order: two processes locking the same rows in different orders
    // deadlock, and PostgreSQL only notices after `deadlock_timeout` (1 s).
    let mut expect: Vec<_> = tx.expect.iter().collect();
    expect.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let written = written_rows(tx);
    for (ty, id, version) in expect {
        let row = if written.contains(&(&**ty, *id)) {
            reader.get(ty, *id).await?
        } else {
            reader.get_unchanged(ty, *id).await?
        };
        match row {
            Some(row) if row.version == *version => {}
            None if *version == super::ABSENT => {}
            _ => {
                return Err(CommitError::Conflict { ty: ty.to_string(), id: *id });
            }
        }
    }
    for set in &tx.expect_referencing {
        let mut ids = reader.referencing(&set.ty, &set.field, set.parent).await?;
        ids.sort_unstable();
        ids.dedup();
        if ids != set.ids {
            return Err(CommitError::Conflict { ty: set.ty.to_string(), id: set.parent });
        }
    }
    let mut p = Planner {
        schema,
        reader,
        seq,
        order: Vec::new(),
        touched: HashMap::new(),
        temps: HashMap::new(),
        last_ids: BTreeMap::new(),
        created: Vec::new(),
    };
    for op in &tx.ops {
        match op {
            TxOp::Insert { ty, id, fields } => p.insert(ty, *id, fields).await?,
            TxOp::Update { ty, id, fields } => p.update(ty, *id, fields).await?,
            TxOp::Delete { ty, id } => {
                let id = p.resolve(ty, *id)?;
                if p.current(ty, id).await?.is_none() {
                    return Err(CommitError::Conflict { ty: ty.to_string(), id });
                }
                p.delete_cascade(ty, id).await?;
            }
        }
    }
    let changes = p
        .order
        .iter()
        .filter_map(|k| {
            let (before, after) = p.touched.remove(k)?;
            (before != after).then(|| Change { key: k.clone(), before, after })
        })
        .collect();
    let applied = tx.applied.clone().map(|k| (k, AppliedRecord { seq, created: p.created.clone(), at_ms: tx.now_ms }));
    Ok(Plan { seq, changes, created: p.created, last_ids: p.last_ids, applied })
}

/// Existing rows the operations update or delete (temp ids are new rows).
fn written_rows(tx: &Transaction) -> BTreeSet<(&str, Id)> {
    tx.ops
        .iter()
        .filter_map(|op| match op {
            TxOp::Update { ty, id, .. } | TxOp::Delete { ty, id } if *id > 0 => Some((&**ty, *id)),
            _ => None,
        })
        .collect()
}

impl<R: PlanReader> Planner<'_, R> {
    fn entity(&self, ty: &str) -> Result<&EntityType, CommitError> {
        self.schema.entity(ty).ok_or_else(|| CommitError::Invalid(format!("unknown type `{ty}`")))
    }

    /// The id a temp id of type `ty` was given by an earlier insert: a temp id
    /// never stands for a row of another type (or a later one).
    fn resolve(&self, ty: &str, id: Id) -> Result<Id, CommitError> {
        if id >= 0 {
            return Ok(id);
        }
        match self.temps.get(&id) {
            Some((temp_ty, given)) if **temp_ty == *ty => Ok(*given),
            Some((temp_ty, _)) => Err(CommitError::Invalid(format!("temp id {id} is a {temp_ty}, not a {ty}"))),
            None => Err(CommitError::Invalid(format!("unknown temp id {id}"))),
        }
    }

    async fn current(&mut self, ty: &str, id: Id) -> Result<Option<Row>, CommitError> {
        let key = RowKey::new(ty, id);
        match self.touched.get(&key) {
            Some((_, after)) => Ok(after.clone()),
            None => Ok(self.reader.get(ty, id).await?),
        }
    }

    async fn set(&mut self, key: RowKey, after: Option<Row>) -> Result<(), CommitError> {
        if let Some(entry) = self.touched.get_mut(&key) {
            entry.1 = after;
            return Ok(());
        }
        let before = self.reader.get(&key.ty, key.id).await?;
        self.order.push(key.clone());
        self.touched.insert(key, (before, after));
        Ok(())
    }

    async fn next_id(&mut self, ty: &str) -> Result<Id, CommitError> {
        let last = match self.last_ids.get(ty) {
            Some(v) => *v,
            None => self.reader.last_id(ty).await?,
        };
        let id = last + 1;
        self.last_ids.insert(ty.to_owned(), id);
        Ok(id)
    }

    /// Replaces temp ids in reference fields by the ids they were given.
    fn resolve_refs(&self, ty: &str, fields: &Fields) -> Result<Fields, CommitError> {
        let entity = self.entity(ty)?;
        let mut out = fields.clone();
        for (name, value) in out.iter_mut() {
            let target = entity.field(name).and_then(|f| f.target());
            if let (Some(target), Some(v)) = (target, value.as_i64())
                && v < 0
            {
                *value = Value::from(self.resolve(target, v)?);
            }
        }
        Ok(out)
    }

    async fn insert(&mut self, ty: &Arc<str>, new_id: NewId, fields: &Fields) -> Result<(), CommitError> {
        let id = match new_id {
            NewId::Temp(t) if t >= 0 => {
                return Err(CommitError::Invalid(format!("temp id {t} is not negative")));
            }
            NewId::Auto | NewId::Temp(_) => self.next_id(ty).await?,
            NewId::Given(id) => {
                if id <= 0 {
                    return Err(CommitError::Invalid(format!("given id {id} is not positive")));
                }
                if self.current(ty, id).await?.is_some() {
                    return Err(CommitError::IdConflict { ty: ty.to_string(), id });
                }
                if id < MINTED_ID_MIN {
                    let last = match self.last_ids.get(&**ty) {
                        Some(v) => *v,
                        None => self.reader.last_id(ty).await?,
                    };
                    self.last_ids.insert(ty.to_string(), last.max(id));
                }
                id
            }
        };
        // References resolve before this row's own temp id is known: a row
        // can't name itself, nor an op after it.
        let fields = self.resolve_refs(ty, fields)?;
        let temp_id = match new_id {
            NewId::Temp(t) => {
                if self.temps.insert(t, (ty.clone(), id)).is_some() {
                    return Err(CommitError::Invalid(format!("temp id {t} used twice")));
                }
                Some(t)
            }
            _ => None,
        };
        let row = Row { ty: ty.clone(), id, version: self.seq, created: self.seq, fields };
        self.created.push(CreatedId { ty: ty.to_string(), temp_id, id });
        self.set(RowKey::new(ty.clone(), id), Some(row)).await
    }

    async fn update(&mut self, ty: &Arc<str>, id: Id, fields: &Fields) -> Result<(), CommitError> {
        let id = self.resolve(ty, id)?;
        let mut row = self.current(ty, id).await?.ok_or_else(|| CommitError::Conflict { ty: ty.to_string(), id })?;
        let fields = self.resolve_refs(ty, fields)?;
        let changed = fields.iter().any(|(k, v)| row.fields.get(k) != Some(v));
        if !changed {
            return Ok(());
        }
        row.fields.extend(fields);
        row.version = self.seq;
        self.set(RowKey::new(ty.clone(), id), Some(row)).await
    }

    /// Ids of rows of `ty` whose `field` references `id`, as of the transaction so far.
    async fn referencing(&mut self, ty: &str, field: &str, id: Id) -> Result<BTreeSet<Id>, CommitError> {
        let mut ids: BTreeSet<Id> = self.reader.referencing(ty, field, id).await?.into_iter().collect();
        for (key, (_, after)) in &self.touched {
            if &*key.ty != ty {
                continue;
            }
            match after {
                Some(row) if row.get_i64(field) == Some(id) => ids.insert(key.id),
                _ => ids.remove(&key.id),
            };
        }
        Ok(ids)
    }

    /// Boxed: it recurses down the cascade.
    fn delete_cascade<'s>(
        &'s mut self,
        ty: &'s str,
        id: Id,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), CommitError>> + Send + 's>> {
        Box::pin(async move { self.delete_cascade_inner(ty, id).await })
    }

    async fn delete_cascade_inner(&mut self, ty: &str, id: Id) -> Result<(), CommitError> {
        let key = RowKey::new(ty, id);
        if self.current(ty, id).await?.is_none() {
            return Ok(());
        }
        self.set(key, None).await?;
        let refs: Vec<(String, String, OnDelete)> =
            self.schema.references_to(ty).map(|(t, f)| (t.name.clone(), f.name.clone(), f.delete_action())).collect();
        for (ref_ty, field, action) in refs {
            for child in self.referencing(&ref_ty, &field, id).await? {
                match action {
                    OnDelete::Cascade => self.delete_cascade(&ref_ty, child).await?,
                    OnDelete::Restrict => {
                        return Err(CommitError::Restricted { ty: ty.to_owned(), id, by_ty: ref_ty, by_id: child });
                    }
                    OnDelete::SetNull => {
                        let fields: Fields = [(field.clone(), Value::Null)].into_iter().collect();
                        self.update(&Arc::from(ref_ty.as_str()), child, &fields).await?;
                    }
                }
            }
        }
        Ok(())
    }
}
