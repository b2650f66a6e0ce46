//! Tests every backend of the embedded store engine must pass: the store
//! conformance suite of `statecast-core`, and group commit, the fatal flush,
//! seq reservation, log trimming, close, and durability under `kill -9`. A
//! backend crate runs them all with [`crate::kv_store_tests`].

pub mod crash;
pub mod durability;

/// For the macro: `statecast_core::store_conformance_tests!` by a path that
/// works from the backend crate.
pub use statecast_core as core_crate;

use crate::{KvBackend, KvStore};
use async_trait::async_trait;
use statecast_core::Schema;
use statecast_core::store::Store;
use statecast_core::testkit::store_suite::StoreFactory;
use std::marker::PhantomData;
use std::sync::Arc;

/// One store location in a temp dir (removed when the factory is dropped),
/// for the conformance suite.
pub struct KvFactory<B> {
    dir: tempfile::TempDir,
    backend: PhantomData<fn() -> B>,
}

impl<B: KvBackend> KvFactory<B> {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temp dir"), backend: PhantomData }
    }
}

impl<B: KvBackend> Default for KvFactory<B> {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl<B: KvBackend> StoreFactory for KvFactory<B> {
    async fn open(&self, schema: Arc<Schema>) -> Arc<dyn Store> {
        Arc::new(KvStore::<B>::open(self.dir.path().join("db"), schema).expect("open the store"))
    }
    fn persistent(&self) -> bool {
        true
    }
}

/// Expands one `#[test]` per case for the backend type given: the store
/// conformance suite and the backend suite. The crash test re-runs the test
/// binary as its writer child, through the `crash_child` test this expands at
/// the root of the test file.
#[macro_export]
macro_rules! kv_store_tests {
    ($backend:ty) => {
        $crate::testkit::core_crate::store_conformance_tests!($crate::testkit::KvFactory::<$backend>::new());
        $crate::kv_store_tests!(@cases $backend;
            durability::concurrent_commits_share_flushes,
            durability::a_failed_flush_is_fatal,
            durability::seq_continues_above_the_reservation_after_reopen,
            durability::the_change_log_is_trimmed_to_its_capacity,
            durability::a_smaller_log_capacity_trims_the_backlog_at_the_next_commit,
            durability::the_applied_record_of_a_torn_commit_is_not_reported,
            durability::a_closed_store_refuses_commits,
            durability::open_needs_a_tokio_runtime,
            crash::crash_child,
            crash::commits_reported_durable_survive_kill_9,
        );
    };
    (@cases $backend:ty; $($module:ident :: $case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::testkit::$module::$case::<$backend>();
            }
        )*
    };
}
