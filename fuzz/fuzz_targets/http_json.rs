//! The http adapter's JSON mapping: an arbitrary 200 answer body, read through JSON pointers
//! (see `oracles::http`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| unefois_fuzz::oracles::http(data));
