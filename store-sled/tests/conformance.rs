//! The store conformance suite from `statecast-core`, on a sled store in a temp dir.

use async_trait::async_trait;
use statecast_core::Schema;
use statecast_core::store::Store;
use statecast_core::testkit::store_suite::StoreFactory;
use statecast_store_sled::SledStore;
use std::sync::Arc;

/// One sled store location in a temp dir (removed when the factory is dropped).
struct SledFactory {
    dir: tempfile::TempDir,
}

impl SledFactory {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temp dir") }
    }
}

#[async_trait]
impl StoreFactory for SledFactory {
    async fn open(&self, schema: Arc<Schema>) -> Arc<dyn Store> {
        Arc::new(SledStore::open(self.dir.path().join("db"), schema).expect("open sled store"))
    }
    fn persistent(&self) -> bool {
        true
    }
}

statecast_core::store_conformance_tests!(SledFactory::new());
