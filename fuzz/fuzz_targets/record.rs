//! Journal records: `Record::decode` on arbitrary bytes, and the encode/decode round trip of
//! what decodes (see `oracles::record`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| unefois_fuzz::oracles::record(data));
