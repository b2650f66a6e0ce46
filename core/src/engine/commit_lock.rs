//! The lock that keeps commits and their hand-off to the hub in order.
//!
//! - A store with a process-local log (sled, SQLite): the hub must receive
//!   commits in seq order, so a commit and its hand-off hold the lock
//!   exclusively (the store serializes its commits anyway).
//! - A shared log (PostgreSQL): the hub delivers in log order from the
//!   tailer, so local commits may run side by side (the database orders
//!   them); each holds the lock *shared* from `Store::commit` until its
//!   commit is handed to the hub. The tailer takes it exclusively before
//!   handing over what it read, which waits for every commit that could be in
//!   that read, so a local writer's tag always reaches the hub before its
//!   entry does.

use std::sync::Arc;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

#[derive(Clone)]
pub(crate) struct CommitLock {
    lock: Arc<RwLock<()>>,
    shared_log: bool,
}

/// Held across one commit and its hand-off to the hub (one of the two is set).
pub(crate) struct CommitGuard<'a> {
    _shared: Option<RwLockReadGuard<'a, ()>>,
    _exclusive: Option<RwLockWriteGuard<'a, ()>>,
}

impl CommitLock {
    pub fn new(shared_log: bool) -> Self {
        CommitLock { lock: Arc::new(RwLock::new(())), shared_log }
    }

    /// For one commit and its hand-off.
    pub async fn commit(&self) -> CommitGuard<'_> {
        if self.shared_log {
            CommitGuard { _shared: Some(self.lock.read().await), _exclusive: None }
        } else {
            CommitGuard { _shared: None, _exclusive: Some(self.lock.write().await) }
        }
    }

    /// Waits for every commit in progress to reach the hub, and keeps new ones
    /// out while held.
    pub async fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.lock.write().await
    }
}
