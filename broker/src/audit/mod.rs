//! The tamper-evident audit log: an RFC 9162 Merkle tree over the journal's records, one leaf
//! per record in journal order, and C2SP `tlog-checkpoint` signed notes over its roots.
//!
//! - Leaf `i` is journal record `i`, its exact bytes: leaf hash = SHA-256(0x00 ‖ entry), node
//!   hash = SHA-256(0x01 ‖ left ‖ right) (RFC 9162 §2.1).
//! - The tree is stored as the hashes of its complete subtrees (the layout of Go's
//!   `golang.org/x/mod/sumdb/tlog`, through the `tlog_tiles` crate): an append writes O(log n)
//!   hashes, a proof reads O(log n) of them; nothing ever walks all leaves.
//! - After every group commit, the writer signs a checkpoint (origin
//!   `<trust domain>/unefois/audit`, size, root) with the **log key** — not the attestation
//!   key — and keeps it. Checkpoints are deterministic: the same size always yields the same
//!   signed note.

pub mod checkpoint;
pub mod events;

pub use checkpoint::LogSigner;
