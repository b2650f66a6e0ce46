#![no_main]
//! See `statecast_fuzz_harness::codec::json_decode` for the input and the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| statecast_fuzz_harness::codec::json_decode(data));
