//! Journal recovery: `Journal::open` on a segment file of arbitrary bytes, then reading back
//! (see `oracles::journal_segment`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = unefois_fuzz::oracles::journal_segment(data);
});
