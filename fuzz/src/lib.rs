//! Fuzz targets for the Une Fois broker's parsers (see docs/fuzzing.md). The oracles live in
//! [`oracles`], shared with the property tests of `tests/tests/properties.rs`.

pub mod oracles;
