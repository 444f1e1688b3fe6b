//! Pivot identities: `Subject::pivot` and `normalise_name`, on six lines (family name, given
//! names, birth date, gender, birth place, birth country; see `oracles::pivot`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        unefois_fuzz::oracles::pivot(unefois_fuzz::oracles::pivot_fields(text));
    }
});
