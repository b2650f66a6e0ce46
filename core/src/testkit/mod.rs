//! The test kit: conformance suites that every store and every transport
//! crate runs (behind the `testkit` feature), the in-memory parts, and
//! PostgreSQL helpers for the crates' end-to-end tests.

pub mod pg;
pub mod rng;
pub mod store_suite;
pub mod transport_suite;
