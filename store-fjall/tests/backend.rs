//! The store conformance suite and the embedded engine's backend suite
//! (group commit, fatal flush, seq reservation, log trimming, close,
//! kill -9), on fjall.

statecast_store_kv::kv_store_tests!(statecast_store_fjall::FjallBackend);
