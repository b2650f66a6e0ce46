//! The store conformance suite on the in-memory reference store.

use statecast_core::testkit::store_suite::MemoryFactory;

statecast_core::store_conformance_tests!(MemoryFactory);
