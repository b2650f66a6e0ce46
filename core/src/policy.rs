//! Policy hooks: who may subscribe to a context and who may save, create or
//! delete. Every hook denies unless a channel's policy says otherwise.

use crate::auth::User;
use crate::ids::{Id, Seq};
use crate::read_rule::ReadRule;
use crate::row::{Fields, Row, RowKey};
use crate::schema::EntityType;
use crate::store::{ABSENT, ReferencingSet, Store, StoreError};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::sync::Arc;

/// A hook could not decide (its read failed); the write answers 500/503.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

/// Read access for hooks. What a write's hooks read is checked again when it
/// commits, and the write runs its checks again if any of it changed:
///
/// - a row read through [`get`](Self::get) (with its version), or its
///   absence: a row created meanwhile counts as a change;
/// - the set of rows [`referencing`](Self::referencing) returned, and each of
///   their versions: a row joining or leaving the set counts.
///
/// So a hook that grants on a row's presence (a membership) and one that
/// denies on it (a ban) both hold at the commit. On PostgreSQL the commit
/// re-reads these inside its transaction; a row another process creates
/// while that transaction runs is not seen (no predicate locks).
pub struct PolicyContext<'a> {
    pub(crate) store: &'a dyn Store,
    pub(crate) user: &'a User,
    pub(crate) noted: Mutex<Vec<(RowKey, Seq)>>,
    pub(crate) noted_sets: Mutex<Vec<ReferencingSet>>,
}

impl<'a> PolicyContext<'a> {
    pub fn new(store: &'a dyn Store, user: &'a User) -> Self {
        Self { store, user, noted: Mutex::new(Vec::new()), noted_sets: Mutex::new(Vec::new()) }
    }

    /// The user making the request.
    pub fn user(&self) -> &User {
        self.user
    }

    /// Reads one row (noted for the commit's check: its version, or that it
    /// does not exist).
    pub async fn get(&self, ty: &str, id: Id) -> Result<Option<Row>, PolicyError> {
        let row = self.store.get(ty, id).await?;
        let key = match &row {
            Some(r) => (r.key(), r.version),
            None => (RowKey::new(ty, id), ABSENT),
        };
        self.noted.lock().push(key);
        Ok(row)
    }

    /// The rows of `child_ty` whose reference `field` points at `parent_id`
    /// (noted for the commit's check: the set, and each row's version — a
    /// membership added, removed or changed before the commit makes the
    /// write check again).
    pub async fn referencing(&self, child_ty: &str, field: &str, parent_id: Id) -> Result<Vec<Row>, PolicyError> {
        let rows = self.store.children(child_ty, field, &[parent_id]).await?;
        self.noted.lock().extend(rows.iter().map(|r| (r.key(), r.version)));
        let mut ids: Vec<Id> = rows.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        ids.dedup();
        let set = ReferencingSet { ty: child_ty.into(), field: field.to_owned(), parent: parent_id, ids };
        self.noted_sets.lock().push(set);
        Ok(rows)
    }

    pub(crate) fn take_noted(&self) -> Vec<(RowKey, Seq)> {
        std::mem::take(&mut *self.noted.lock())
    }

    pub(crate) fn take_noted_sets(&self) -> Vec<ReferencingSet> {
        std::mem::take(&mut *self.noted_sets.lock())
    }
}

/// The hooks of a channel. Every one defaults to deny. A hook reads the
/// store through its [`PolicyContext`]; the rows it reads are checked again
/// at commit (a concurrent change makes the write run its checks again).
///
/// ```
/// use statecast_core::{EntityType, Fields, Policy, PolicyContext, PolicyError, Row};
///
/// /// Anyone signed in reads and adds tasks; the assignee moves `status`.
/// struct Tasks;
///
/// #[async_trait::async_trait]
/// impl Policy for Tasks {
///     async fn has_permission(&self, _: &PolicyContext<'_>, _anchor: &Row) -> Result<bool, PolicyError> {
///         Ok(true)
///     }
///     async fn can_create(&self, _: &PolicyContext<'_>, _: &EntityType, _: &Row, _: &Fields) -> Result<bool, PolicyError> {
///         Ok(true)
///     }
///     async fn can_save(&self, cx: &PolicyContext<'_>, task: &Row, data: &Fields) -> Result<bool, PolicyError> {
///         let mine = task.get_i64("assignee") == Some(cx.user().id);
///         Ok(mine && data.keys().all(|k| k == "status"))
///     }
///     // can_delete is not written: nobody deletes.
/// }
/// ```
#[async_trait]
pub trait Policy: Send + Sync + 'static {
    /// May the user subscribe to the context anchored on `anchor`?
    async fn has_permission(&self, cx: &PolicyContext<'_>, anchor: &Row) -> Result<bool, PolicyError> {
        let _ = (cx, anchor);
        Ok(false)
    }

    /// The entity types whose rows [`has_permission`](Self::has_permission)
    /// reads besides the anchor (a membership table, the users' roles).
    ///
    /// A commit that changes a row of one of them, or an anchor of the
    /// channel, decides every subscription of the channel again (once per
    /// user and context, off the delivery path); a subscription no longer
    /// allowed ends with `unsubscribed` `REVOKED`. Empty, the default: the
    /// answer given at subscribe stands until the user resubscribes.
    fn depends_on(&self) -> &[&str] {
        &[]
    }

    /// What the user may read of `ty`'s rows in this channel's contexts:
    /// which rows, and which of their fields (see [`ReadRule`]). Decided at
    /// subscribe, per user and type; users with equal rules share one
    /// decision of every change. A row the user may not read never reaches
    /// them, and a write naming it is answered as if it did not exist.
    /// Default: everything (the context reads in full once
    /// [`has_permission`](Self::has_permission) allows it).
    async fn read_rule(&self, cx: &PolicyContext<'_>, ty: &EntityType) -> Result<ReadRule, PolicyError> {
        let _ = (cx, ty);
        Ok(ReadRule::all())
    }

    /// May the user change `data` (only the changed fields) on `instance` (the stored row)?
    async fn can_save(&self, cx: &PolicyContext<'_>, instance: &Row, data: &Fields) -> Result<bool, PolicyError> {
        let _ = (cx, instance, data);
        Ok(false)
    }

    /// May the user create a row of `ty` under `parent` with `data`?
    async fn can_create(
        &self,
        cx: &PolicyContext<'_>,
        ty: &EntityType,
        parent: &Row,
        data: &Fields,
    ) -> Result<bool, PolicyError> {
        let _ = (cx, ty, parent, data);
        Ok(false)
    }

    /// May the user delete `instance`?
    async fn can_delete(&self, cx: &PolicyContext<'_>, instance: &Row) -> Result<bool, PolicyError> {
        let _ = (cx, instance);
        Ok(false)
    }
}

/// The default policy: denies everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct DenyAll;

impl Policy for DenyAll {}

/// Lets any authenticated user subscribe; denies every write.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReadOnly;

#[async_trait]
impl Policy for ReadOnly {
    async fn has_permission(&self, _: &PolicyContext<'_>, _: &Row) -> Result<bool, PolicyError> {
        Ok(true)
    }
}

/// A policy shared behind an `Arc`.
#[async_trait]
impl<P: Policy + ?Sized> Policy for Arc<P> {
    async fn has_permission(&self, cx: &PolicyContext<'_>, anchor: &Row) -> Result<bool, PolicyError> {
        (**self).has_permission(cx, anchor).await
    }
    fn depends_on(&self) -> &[&str] {
        (**self).depends_on()
    }
    async fn read_rule(&self, cx: &PolicyContext<'_>, ty: &EntityType) -> Result<ReadRule, PolicyError> {
        (**self).read_rule(cx, ty).await
    }
    async fn can_save(&self, cx: &PolicyContext<'_>, instance: &Row, data: &Fields) -> Result<bool, PolicyError> {
        (**self).can_save(cx, instance, data).await
    }
    async fn can_create(
        &self,
        cx: &PolicyContext<'_>,
        ty: &EntityType,
        parent: &Row,
        data: &Fields,
    ) -> Result<bool, PolicyError> {
        (**self).can_create(cx, ty, parent, data).await
    }
    async fn can_delete(&self, cx: &PolicyContext<'_>, instance: &Row) -> Result<bool, PolicyError> {
        (**self).can_delete(cx, instance).await
    }
}
