//! Subject ids: `Subject::parse`, with and without `test:` subjects (see `oracles::subject`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = std::str::from_utf8(data) {
        unefois_fuzz::oracles::subject(raw, false);
        unefois_fuzz::oracles::subject(raw, true);
    }
});
