//! The static dataset loader: `StaticDataset::load` on arbitrary file contents, then serving
//! (see `oracles::dataset`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| unefois_fuzz::oracles::dataset(data));
