//! Signed checkpoints: `verify_checkpoint` on `<verifier key>\n<signed note>` (see
//! `oracles::checkpoint`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        unefois_fuzz::oracles::checkpoint(text);
    }
});
