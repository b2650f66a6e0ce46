#![no_main]
//! See `statecast_fuzz_harness::filter::filter` for the input and the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| statecast_fuzz_harness::filter::filter(data));
