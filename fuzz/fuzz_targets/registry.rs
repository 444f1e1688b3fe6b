//! The registry parser: `Registry::parse` on arbitrary bytes (see `oracles::registry`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| unefois_fuzz::oracles::registry(data));
