#![no_main]
//! See `statecast_fuzz_harness::client::client_state` for the input and the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| statecast_fuzz_harness::client::client_state(data));
