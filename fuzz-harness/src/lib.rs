//! The checks behind the fuzz targets in `fuzz/`, one function per target:
//! each takes the raw input, runs it through the code the server or client
//! runs on it, and panics when an invariant breaks (an `Err` from the code
//! under test is a fine outcome; a panic, an `unreachable!` or a broken
//! invariant is a finding).
//!
//! The same functions run on stable in `cargo test` (`tests/corpus.rs`):
//! every file of the kept corpus (`fuzz/corpus/<target>/`) and a short
//! random run.

pub mod client;
pub mod codec;
pub mod filter;
pub mod quic;
pub mod write;

/// A target's check: panics on a finding.
pub type Check = fn(&[u8]);

/// The targets, by the names of their corpus folders.
pub const TARGETS: &[(&str, Check)] = &[
    ("json_decode", codec::json_decode),
    ("msgpack_decode", codec::msgpack_decode),
    ("quic_framing", quic::quic_framing),
    ("filter", filter::filter),
    ("write_validator", write::write_validator),
    ("client_state", client::client_state),
];

/// Reads bytes as small numbers, padding with zeros past the end.
pub(crate) struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data }
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub(crate) fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    /// A number in `0..n` (n ≥ 1).
    pub(crate) fn below(&mut self, n: u8) -> u8 {
        self.byte() % n.max(1)
    }
    pub(crate) fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }
}
