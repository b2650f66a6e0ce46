//! The store conformance suite from `statecast-core`, on a fjall store in a temp dir.

use async_trait::async_trait;
use statecast_core::Schema;
use statecast_core::store::Store;
use statecast_core::testkit::store_suite::StoreFactory;
use statecast_store_fjall::FjallStore;
use std::sync::Arc;

/// One fjall store location in a temp dir (removed when the factory is dropped).
struct FjallFactory {
    dir: tempfile::TempDir,
}

impl FjallFactory {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temp dir") }
    }
}

#[async_trait]
impl StoreFactory for FjallFactory {
    async fn open(&self, schema: Arc<Schema>) -> Arc<dyn Store> {
        Arc::new(FjallStore::open(self.dir.path().join("db"), schema).expect("open fjall store"))
    }
    fn persistent(&self) -> bool {
        true
    }
}

statecast_core::store_conformance_tests!(FjallFactory::new());
