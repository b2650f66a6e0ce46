//! The test kit: conformance suites that every store and every transport
//! crate runs (behind the `testkit` feature), and the in-memory parts.

pub mod store_suite;
pub mod transport_suite;
