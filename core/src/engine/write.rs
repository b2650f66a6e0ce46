//! The write pipeline, in the seed's order: writable → in context → load →
//! validate → `can_*` → commit (compare-and-commit on every version read,
//! retried on conflict) → hand to the hub, which broadcasts and replies.

use super::hub::{ContextRules, HubMsg, ReplyTarget, WriterTag};
use super::{Actor, Inner};
use crate::auth::User;
use crate::channel::{Channel, Op};
use crate::error::{ErrorReason, WireError};
use crate::ids::{Id, IdKind, Seq, classify_create_id, is_safe_int};
use crate::policy::PolicyContext;
use crate::protocol::v1::{Operation, Write, WriteOp};
use crate::row::{Fields, Row, RowKey};
use crate::schema::{EntityType, Schema, ServerValue};
use crate::store::{AppliedKey, AppliedRecord, CommitError, NewId, StoreError, Transaction, TxOp, now_ms};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The context a write is checked against.
#[derive(Clone, Debug)]
pub(crate) struct WriteContext {
    pub channel: Arc<Channel>,
    pub anchor_id: Id,
}

/// The connection a write came from (for exactly-once and ordered replies).
pub(crate) struct ClientInfo {
    pub client_id: String,
    pub in_flight: Arc<AtomicUsize>,
}

/// How a write ended, as far as the caller must act.
pub(crate) enum Outcome {
    /// Committed and handed to the hub, which will answer the target.
    Committed,
    /// Applied before (a resend): answer with the recorded outcome.
    Duplicate(AppliedRecord),
    /// Refused: nothing was committed.
    Refused(WireError),
}

/// Runs one `write` message through the pipeline.
pub(crate) async fn run(
    inner: &Inner,
    actor: &Actor,
    client: Option<&ClientInfo>,
    context: Option<WriteContext>,
    write: &Write,
    target: ReplyTarget,
) -> Outcome {
    match run_checked(inner, actor, client, context.as_ref(), write, target).await {
        Ok(outcome) => outcome,
        Err(e) => Outcome::Refused(e),
    }
}

async fn run_checked(
    inner: &Inner,
    actor: &Actor,
    client: Option<&ClientInfo>,
    context: Option<&WriteContext>,
    write: &Write,
    target: ReplyTarget,
) -> Result<Outcome, WireError> {
    if !inner.accepting.load(Ordering::SeqCst) {
        return Err(WireError::new(ErrorReason::Unavailable, "the server is draining; reconnect elsewhere"));
    }
    if !is_safe_int(write.write_id) {
        return Err(WireError::invalid_data("writeId", "`writeId` must lie within ±(2^53−1)"));
    }
    let ops = write.row_ops()?;
    let batch = ops.len() > 1 || write.operation == crate::protocol::v1::Operation::Batch;
    let key = match (actor, client) {
        (Actor::User(u), Some(c)) => {
            Some(AppliedKey { user: u.id, client_id: c.client_id.clone(), write_id: write.write_id })
        }
        _ => None,
    };
    check_writable(inner, actor, context, &ops, batch)?;
    if let Some(key) = &key {
        if let Some(rec) = inner.store.applied(key).await.map_err(WireError::from)? {
            // The original may still be on its way to the hub: let it get there first.
            inner.hub.settle.seq(rec.seq).await;
            return duplicate(inner, rec).await;
        }
        check_not_stale(inner, key).await?;
        check_dependencies(inner, key, &write.after).await?;
    }
    let mut target = Some(target);
    // Held until the commit is handed on: the next write to these rows checks what this one leaves.
    let _turns = inner.row_turns.take(changed_rows(&ops)).await;
    for _ in 0..inner.config.max_commit_attempts.max(1) {
        let mut tx = check(inner, actor, context, &ops, batch).await?;
        tx.applied = key.clone();
        tx.now_ms = now_ms();
        let started = std::time::Instant::now();
        let guard = inner.commit_lock.commit().await;
        let result = inner.store.commit(tx).await;
        note_store_trouble(inner, &result);
        match result {
            Ok(committed) => {
                let in_flight = client.map(|c| c.in_flight.clone());
                if let Some(n) = &in_flight {
                    n.fetch_add(1, Ordering::SeqCst);
                }
                let writer = target.take().map(|target| WriterTag {
                    target,
                    write_id: write.write_id,
                    rid: write.rid.clone(),
                    single_create: !batch && write.operation == crate::protocol::v1::Operation::Create,
                    in_flight,
                });
                // One process: the store is at this commit's seq until the lock goes.
                let moved = match inner.store.shared_log() {
                    false => super::load::moved_subtrees(&*inner.store, inner.channels.values(), &committed).await,
                    true => None,
                };
                inner.hub.send(HubMsg::Commit { committed, writer, started, moved });
                drop(guard);
                return Ok(Outcome::Committed);
            }
            Err(CommitError::Conflict { ty, id }) => {
                drop(guard);
                tracing::debug!(%ty, id, "row changed between check and commit; checking again");
                inner.metrics.commit_retries.fetch_add(1, Ordering::Relaxed);
            }
            Err(CommitError::Duplicate(rec)) => {
                drop(guard);
                if inner.store.shared_log() {
                    // Recorded by another process meanwhile: answer after its delivery here.
                    inner.hub.settle.seq(rec.seq).await;
                }
                return duplicate(inner, rec).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(WireError::new(ErrorReason::Contended, "the rows kept changing under this write; try again"))
}

/// A resend of an applied write is answered as applied only once that write
/// is durable: a record read from memory before a failed flush would
/// otherwise confirm a write that a restart loses.
async fn duplicate(inner: &Inner, rec: AppliedRecord) -> Result<Outcome, WireError> {
    inner.store.wait_durable(rec.seq).await.map_err(crate::error::not_durable)?;
    Ok(Outcome::Duplicate(rec))
}

/// Waits until every commit that reads made so far may have seen is durable:
/// an answer built from those reads may go out only then. Call it after
/// `Settle::reads` (in the hub's driver), which lets commits in
/// progress finish.
pub(crate) async fn reads_durable(inner: &Inner) -> Result<(), WireError> {
    super::hub::durable_after_reads(&*inner.store).await
}

/// Remembers a commit that failed for want of the store (for `/readyz`)
/// until one succeeds.
fn note_store_trouble<T>(inner: &Inner, result: &Result<T, CommitError>) {
    match result {
        Ok(_) => {
            if inner.store_trouble.lock().is_some() {
                *inner.store_trouble.lock() = None;
            }
        }
        Err(CommitError::Store(e @ (StoreError::Unavailable { .. } | StoreError::OutcomeUnknown { .. }))) => {
            *inner.store_trouble.lock() = Some(e.to_string());
        }
        Err(_) => {}
    }
}

/// Bytes of a frame kept for the message around a row (type, context, seq,
/// the change's op, type and id, a writeId).
const FRAME_ENVELOPE: usize = 1024;

/// An upper bound of a value's JSON size: every string byte may escape to six.
fn json_size_bound(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len() * 6 + 2,
        Value::Array(items) => items.iter().map(|i| json_size_bound(i) + 1).sum::<usize>() + 2,
        Value::Object(map) => map.iter().map(|(k, v)| k.len() * 6 + 4 + json_size_bound(v)).sum::<usize>() + 2,
        _ => 24,
    }
}

/// The existing rows a write saves or deletes (creates make new rows).
fn changed_rows(ops: &[WriteOp]) -> impl Iterator<Item = (String, Id)> + '_ {
    ops.iter()
        .filter(|op| op.operation != Operation::Create)
        .filter_map(|op| Some((op.instance_type.clone(), op.instance_id?)))
}

async fn check_not_stale(inner: &Inner, key: &AppliedKey) -> Result<(), WireError> {
    let purged = inner.store.purged_write_id(key.user, &key.client_id).await.map_err(WireError::from)?;
    match purged {
        Some(p) if key.write_id <= p => Err(WireError::new(
            ErrorReason::StaleWrite,
            format!("writeId {} is older than the exactly-once records kept for this client", key.write_id),
        )),
        _ => Ok(()),
    }
}

/// Every writeId in `after` must have been applied (refused writes record nothing).
async fn check_dependencies(inner: &Inner, key: &AppliedKey, after: &[i64]) -> Result<(), WireError> {
    for &write_id in after {
        let dep = AppliedKey { write_id, ..key.clone() };
        if inner.store.applied(&dep).await.map_err(WireError::from)?.is_none() {
            return Err(WireError::new(
                ErrorReason::DependencyFailed,
                format!("this write depends on write {write_id}, which was not applied"),
            ));
        }
    }
    Ok(())
}

static SYSTEM_USER: std::sync::LazyLock<User> = std::sync::LazyLock::new(|| User::new(0, "system"));

/// Checks every op and builds the transaction (with the versions it relied on).
/// The op's type and kind, once the channel allows it: checks that read
/// nothing from the store.
fn writable_op<'s>(
    schema: &'s Schema,
    system: bool,
    context: Option<&WriteContext>,
    op: &WriteOp,
) -> Result<(&'s EntityType, Op), WireError> {
    let entity = schema
        .entity(&op.instance_type)
        .ok_or_else(|| WireError::new(ErrorReason::UnknownType, format!("unknown type `{}`", op.instance_type)))?;
    let kind = op.operation.op().ok_or_else(|| WireError::invalid_data("operation", "a batch may not nest"))?;
    if !system {
        let ctx = context.ok_or_else(|| WireError::new(ErrorReason::NotInContext, "the write names no context"))?;
        if !ctx.channel.is_writable(&entity.name, kind) {
            return Err(WireError::new(
                ErrorReason::NotWritable,
                format!("`{kind}` on {} is not writable in channel `{}`", entity.name, ctx.channel.name),
            ));
        }
    }
    Ok((entity, kind))
}

/// Refuses a write the channel never allows (403 `NOT_WRITABLE`), an unknown
/// type or a write without a context before anything is read from the store:
/// not even the exactly-once records.
fn check_writable(
    inner: &Inner,
    actor: &Actor,
    context: Option<&WriteContext>,
    ops: &[WriteOp],
    batch: bool,
) -> Result<(), WireError> {
    let system = matches!(actor, Actor::System);
    for (i, op) in ops.iter().enumerate() {
        writable_op(&inner.schema, system, context, op).map_err(|e| if batch { e.with_op(i) } else { e })?;
    }
    Ok(())
}

async fn check(
    inner: &Inner,
    actor: &Actor,
    context: Option<&WriteContext>,
    ops: &[WriteOp],
    batch: bool,
) -> Result<Transaction, WireError> {
    let user = match actor {
        Actor::User(u) => u,
        Actor::System => &SYSTEM_USER,
    };
    let mut checker = Checker {
        inner,
        system: matches!(actor, Actor::System),
        cx: PolicyContext::new(&*inner.store, user),
        context,
        overlay: HashMap::new(),
        noted: HashMap::new(),
        temps: HashMap::new(),
        read: None,
    };
    let mut tx = Transaction::default();
    for (i, op) in ops.iter().enumerate() {
        let checked = checker.check_op(op).await;
        tx.ops.push(checked.map_err(|e| if batch { e.with_op(i) } else { e })?);
    }
    for (key, version) in checker.cx.take_noted() {
        checker.noted.entry(key).or_insert(version);
    }
    tx.expect = checker.noted.into_iter().map(|(k, v)| (k.ty, k.id, v)).collect();
    tx.expect_referencing = checker.cx.take_noted_sets();
    tx.expect_referencing.sort_unstable_by(|a, b| (&a.ty, &a.field, a.parent).cmp(&(&b.ty, &b.field, b.parent)));
    tx.expect_referencing.dedup();
    Ok(tx)
}

struct Checker<'a> {
    inner: &'a Inner,
    system: bool,
    cx: PolicyContext<'a>,
    context: Option<&'a WriteContext>,
    /// Rows as the earlier ops of this batch leave them (None = deleted).
    overlay: HashMap<RowKey, Option<Row>>,
    /// Stored rows read, with their versions.
    noted: HashMap<RowKey, Seq>,
    /// Temp ids of earlier creates in this write, with their types.
    temps: HashMap<Id, String>,
    /// The writer's read rules in the context (asked once, at the first row named).
    read: Option<Option<Arc<ContextRules>>>,
}

fn not_found(ty: &str, id: Id) -> WireError {
    WireError::new(ErrorReason::NotFound, format!("{ty}#{id} does not exist"))
}

impl<'a> Checker<'a> {
    async fn load(&mut self, ty: &str, id: Id) -> Result<Option<Row>, WireError> {
        let key = RowKey::new(ty, id);
        if let Some(row) = self.overlay.get(&key) {
            return Ok(row.clone());
        }
        if id <= 0 {
            return Ok(None);
        }
        let row = self.inner.store.get(ty, id).await.map_err(WireError::from)?;
        if let Some(r) = &row {
            self.noted.entry(key).or_insert(r.version);
        }
        Ok(row)
    }

    fn context(&self) -> Result<&'a WriteContext, WireError> {
        self.context.ok_or_else(|| WireError::new(ErrorReason::NotInContext, "the write names no context"))
    }

    async fn check_op(&mut self, op: &WriteOp) -> Result<TxOp, WireError> {
        let schema = self.inner.schema.clone();
        let (entity, kind) = writable_op(&schema, self.system, self.context, op)?;
        match kind {
            Op::Save => self.check_save(entity, op).await,
            Op::Create => self.check_create(entity, op).await,
            Op::Delete => self.check_delete(entity, op).await,
        }
    }

    async fn target(&mut self, entity: &EntityType, op: &WriteOp) -> Result<Row, WireError> {
        let id = op.instance_id.ok_or_else(|| WireError::invalid_data("instanceId", "`instanceId` is required"))?;
        if !is_safe_int(id) || id == 0 {
            return Err(WireError::new(ErrorReason::InvalidId, format!("{id} is not a valid id")));
        }
        let row = self.load(&entity.name, id).await?.ok_or_else(|| not_found(&entity.name, id))?;
        self.require_readable(&row).await?;
        self.require_in_context(&row).await?;
        if let Some(v) = op.if_version
            && row.version != v
        {
            return Err(WireError::new(
                ErrorReason::VersionConflict,
                format!("{}#{id} is at version {}, not {v}", entity.name, row.version),
            ));
        }
        Ok(row)
    }

    async fn check_save(&mut self, entity: &EntityType, op: &WriteOp) -> Result<TxOp, WireError> {
        let row = self.target(entity, op).await?;
        let data = op.data.clone().unwrap_or_default();
        entity.check_save_data_as(&data, self.system)?;
        self.check_references(entity, &data).await?;
        if !self.system {
            let policy = self.context()?.channel.policy.clone();
            if !policy.can_save(&self.cx, &row, &data).await.map_err(WireError::from)? {
                return Err(denied(Op::Save, &row.ty, row.id));
            }
        }
        let mut after = row.clone();
        after.fields.extend(data.clone());
        self.check_fits_frame(&after.ty, &after.fields)?;
        self.overlay.insert(row.key(), Some(after));
        Ok(TxOp::Update { ty: row.ty.clone(), id: row.id, fields: data })
    }

    async fn check_delete(&mut self, entity: &EntityType, op: &WriteOp) -> Result<TxOp, WireError> {
        let row = self.target(entity, op).await?;
        if !self.system {
            let policy = self.context()?.channel.policy.clone();
            if !policy.can_delete(&self.cx, &row).await.map_err(WireError::from)? {
                return Err(denied(Op::Delete, &row.ty, row.id));
            }
        }
        self.overlay.insert(row.key(), None);
        Ok(TxOp::Delete { ty: row.ty.clone(), id: row.id })
    }

    async fn check_create(&mut self, entity: &EntityType, op: &WriteOp) -> Result<TxOp, WireError> {
        let parent = self.create_parent(entity, op).await?;
        let new_id = self.create_id(entity, op.instance_id).await?;
        let mut data = op.data.clone().unwrap_or_default();
        if let Some((parent, field)) = &parent {
            match data.get(field) {
                Some(v) if v.as_i64() != Some(parent.id) => {
                    return Err(WireError::invalid_data(
                        field,
                        format!("`{field}` must be the parent's id {}", parent.id),
                    ));
                }
                _ => data.insert(field.clone(), Value::from(parent.id)),
            };
        }
        let mut fields = entity.check_create_data_as(&data, self.system)?;
        self.set_server_values(entity, &data, &mut fields);
        self.check_fits_frame(&entity.name, &fields)?;
        // Before this create's own temp id counts: a reference resolves only
        // to an earlier op.
        self.check_references(entity, &fields).await?;
        if let NewId::Temp(id) = new_id {
            self.temps.insert(id, entity.name.clone());
        }
        if let (false, Some((parent, _))) = (self.system, &parent) {
            let policy = self.context()?.channel.policy.clone();
            if !policy.can_create(&self.cx, entity, parent, &data).await.map_err(WireError::from)? {
                return Err(WireError::new(
                    ErrorReason::Denied,
                    format!("you may not create a {} under {}#{}", entity.name, parent.ty, parent.id),
                ));
            }
        }
        let ty: Arc<str> = entity.name.as_str().into();
        let overlay_id = match new_id {
            NewId::Temp(id) | NewId::Given(id) => Some(id),
            NewId::Auto => None,
        };
        if let Some(id) = overlay_id {
            let row = Row { ty: ty.clone(), id, version: 0, created: 0, fields: fields.clone() };
            self.overlay.insert(RowKey::new(ty.clone(), id), Some(row));
        }
        Ok(TxOp::Insert { ty, id: new_id, fields })
    }

    /// The parent row and the child's reference field, checked against the context.
    async fn create_parent(&mut self, entity: &EntityType, op: &WriteOp) -> Result<Option<(Row, String)>, WireError> {
        let (pt, pid, rn) = match (&op.parent_type, op.parent_id, &op.relation_name) {
            (Some(pt), Some(pid), Some(rn)) => (pt, pid, rn),
            (None, None, None) if self.system => return Ok(None),
            _ => {
                return Err(WireError::invalid_data(
                    "parentType",
                    "a create needs `parentType`, `parentId` and `relationName`",
                ));
            }
        };
        let schema = self.inner.schema.clone();
        let rel = schema.relation(pt, rn).filter(|r| r.child == entity.name).ok_or_else(|| {
            WireError::new(ErrorReason::UnknownRelation, format!("{pt} has no relation `{rn}` holding {}", entity.name))
        })?;
        if !self.system && self.context()?.channel.edge(pt, rn).is_none() {
            return Err(WireError::new(
                ErrorReason::UnknownRelation,
                format!("relation `{pt}.{rn}` is not part of this channel"),
            ));
        }
        let parent = self.load(pt, pid).await?.ok_or_else(|| not_found(pt, pid))?;
        self.require_readable(&parent).await?;
        self.require_in_context(&parent).await?;
        Ok(Some((parent, rel.field.clone())))
    }

    async fn create_id(&mut self, entity: &EntityType, id: Option<Id>) -> Result<NewId, WireError> {
        let Some(id) = id else { return Ok(NewId::Auto) };
        if self.system && id > 0 && is_safe_int(id) {
            return Ok(NewId::Given(id));
        }
        match classify_create_id(id) {
            IdKind::Temp => {
                if self.temps.contains_key(&id) {
                    return Err(WireError::new(ErrorReason::InvalidId, format!("temp id {id} is used twice"))
                        .with_field("instanceId"));
                }
                Ok(NewId::Temp(id))
            }
            IdKind::Minted => {
                if self.load(&entity.name, id).await?.is_some() {
                    return Err(WireError::new(
                        ErrorReason::IdConflict,
                        format!("{} id {id} is already taken", entity.name),
                    )
                    .with_field("instanceId"));
                }
                Ok(NewId::Given(id))
            }
            IdKind::Invalid => Err(WireError::new(
                ErrorReason::InvalidId,
                format!("{id} is neither a temp id (negative) nor a client-minted id in [2^52, 2^53)"),
            )
            .with_field("instanceId")),
        }
    }

    /// Fills the fields the server sets. A client's write (or app code
    /// acting as a user) always gets them; a system write gets them too,
    /// except where it gave a (non-null) value of its own: defaults filled in
    /// for fields it left out never count as given.
    fn set_server_values(&self, entity: &EntityType, given: &Fields, fields: &mut Fields) {
        for field in &entity.fields {
            let given_by_system = self.system && given.get(&field.name).is_some_and(|v| !v.is_null());
            let value = match field.server_value {
                Some(ServerValue::UserId) if !self.system => Value::from(self.cx.user().id),
                Some(ServerValue::Now) if !given_by_system => {
                    Value::from(humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string())
                }
                _ => continue,
            };
            fields.insert(field.name.clone(), value);
        }
    }

    /// A row must fit one frame in either codec, or no subscriber could be
    /// sent it: JSON is the larger (a control character escapes to six
    /// bytes), so its size decides, with room for the message around it.
    fn check_fits_frame(&self, ty: &str, fields: &Fields) -> Result<(), WireError> {
        let room = self.inner.config.frame_limit.saturating_sub(FRAME_ENVELOPE);
        // Cheap bound first: most rows are far below the limit.
        let at_most: usize = fields.iter().map(|(k, v)| k.len() + 8 + json_size_bound(v)).sum();
        if at_most <= room {
            return Ok(());
        }
        let size = serde_json::to_vec(fields).map_or(usize::MAX, |v| v.len());
        if size <= room {
            return Ok(());
        }
        Err(WireError::new(
            ErrorReason::FrameTooLarge,
            format!(
                "this {ty} would take {size} bytes as JSON; a row must fit in a frame ({} bytes, {FRAME_ENVELOPE} kept for the message around it)",
                self.inner.config.frame_limit
            ),
        ))
    }

    /// Reference values must name existing rows (or temp ids of this batch).
    async fn check_references(&mut self, entity: &EntityType, data: &Fields) -> Result<(), WireError> {
        for (name, value) in data {
            let (Some(target), Some(id)) = (entity.field(name).and_then(|f| f.target()), value.as_i64()) else {
                continue;
            };
            if id < 0 {
                match self.temps.get(&id) {
                    Some(ty) if ty == target => continue,
                    Some(ty) => {
                        return Err(WireError::new(
                            ErrorReason::InvalidId,
                            format!("`{name}` names temp id {id}, a {ty}: it must be a {target}"),
                        )
                        .with_field(name));
                    }
                    None => {
                        return Err(WireError::new(
                            ErrorReason::InvalidId,
                            format!("`{name}` names temp id {id}, which no earlier create of this write made"),
                        )
                        .with_field(name));
                    }
                }
            }
            if self.load(target, id).await?.is_none() {
                return Err(WireError::invalid_data(
                    name,
                    format!("`{name}` names {target}#{id}, which does not exist"),
                ));
            }
        }
        Ok(())
    }

    /// A row the writer may not read is answered as if it did not exist, so
    /// a write can't probe for it (the same NOT_FOUND, the same message).
    async fn require_readable(&mut self, row: &Row) -> Result<(), WireError> {
        let (Some(ctx), false) = (self.context, self.system) else { return Ok(()) };
        if self.read.is_none() {
            let rules = super::read::context_rules(self.inner, self.cx.user(), &ctx.channel).await?;
            self.read = Some(rules);
        }
        match self.read.as_ref().and_then(Option::as_ref) {
            Some(rules) if !rules.can_read(row) => Err(not_found(&row.ty, row.id)),
            _ => Ok(()),
        }
    }

    /// The row must belong to the write's context: walk up the tree to the anchor.
    async fn require_in_context(&mut self, row: &Row) -> Result<(), WireError> {
        if self.system {
            return Ok(());
        }
        let ctx = self.context()?;
        let mut current = row.clone();
        for _ in 0..64 {
            if *current.ty == ctx.channel.anchor && current.id == ctx.anchor_id {
                return Ok(());
            }
            let mut parent = None;
            for edge in ctx.channel.edges_into(&current.ty) {
                if let Some(pid) = current.get_i64(&edge.field)
                    && let Some(p) = self.load(&edge.parent, pid).await?
                {
                    parent = Some(p);
                    break;
                }
            }
            match parent {
                Some(p) => current = p,
                None => break,
            }
        }
        Err(WireError::new(
            ErrorReason::NotInContext,
            format!("{}#{} is not in context {}", row.ty, row.id, ctx.channel.context_name(ctx.anchor_id)),
        ))
    }
}

fn denied(op: Op, ty: &str, id: Id) -> WireError {
    WireError::new(ErrorReason::Denied, format!("you may not {op} {ty}#{id}"))
}
