//! What anyone needs to check Une Fois's audit log and receipts offline, with the published
//! verifier keys only: the crate a third-party verifier depends on, and nothing more (no async
//! runtime, no storage, no gRPC, none of the broker's crates; `.ci/run` checks it).
//!
//! - [`tree`]: RFC 9162 leaf hashes, inclusion and consistency proofs, the tree in memory;
//! - [`checkpoint`]: C2SP `tlog-checkpoint` signed notes, verified against the log key;
//! - [`dsse`]: DSSE envelopes (attestations), verified against the attestation key;
//! - [`entry`]: the public fields of an exchange's entry that a receipt ties to;
//! - [`receipt`]: the receipt, access-history and later-checkpoint files, and their checks;
//! - [`log`]: the pure steps of verifying a whole log against a trusted checkpoint.

#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod dsse;
pub mod entry;
pub mod log;
pub mod receipt;
pub mod tree;

pub use checkpoint::{CheckpointError, VerifiedCheckpoint, verify_checkpoint};
pub use tree::{MemoryTree, ProofError, leaf_hash, root_of, verify_consistency, verify_inclusion};
