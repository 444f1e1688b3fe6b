//! RFC 9162 hashing over Une Fois entries: leaf hash = SHA-256(0x00 ‖ entry), node hash =
//! SHA-256(0x01 ‖ left ‖ right); inclusion and consistency proofs checked against a root; the
//! tree held in memory, as an auditor rebuilds it from downloaded entries. The broker's
//! stored tree (a file of tlog's stored hashes) computes the same roots.

use tlog_tiles::{Hash, HashReader};

/// Why a proof could not be produced or does not verify.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    /// The requested sizes or index are outside the tree.
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// A stored hash is missing or the store failed.
    #[error("tree storage: {0}")]
    Storage(String),
    /// The proof does not verify.
    #[error("the proof does not verify")]
    Invalid,
}

/// The most hashes a proof may hold: an inclusion proof in a tree of 2^64 leaves has 64, a
/// consistency proof fewer than twice that. A longer one is refused before it is read: a
/// crafted receipt of a million hashes would otherwise cost hundreds of MB to check.
pub const MAX_PROOF_HASHES: usize = 128;

/// The leaf hash of an entry: SHA-256(0x00 ‖ entry).
pub fn leaf_hash(entry: &[u8]) -> [u8; 32] {
    tlog_tiles::record_hash(entry).0
}

/// Checks that `entry` is leaf `leaf` of the tree of `size` leaves with root `root`.
pub fn verify_inclusion(
    proof: &[[u8; 32]],
    size: u64,
    root: [u8; 32],
    leaf: u64,
    entry: &[u8],
) -> Result<(), ProofError> {
    if proof.len() > MAX_PROOF_HASHES {
        return Err(ProofError::Invalid);
    }
    let proof: Vec<Hash> = proof.iter().copied().map(Hash).collect();
    tlog_tiles::check_record(
        &proof,
        size,
        Hash(root),
        leaf,
        tlog_tiles::record_hash(entry),
    )
    .map_err(|_| ProofError::Invalid)
}

/// Checks that the tree of `first` leaves with root `first_root` is a prefix of the tree of
/// `second` leaves with root `second_root`.
pub fn verify_consistency(
    proof: &[[u8; 32]],
    first: u64,
    first_root: [u8; 32],
    second: u64,
    second_root: [u8; 32],
) -> Result<(), ProofError> {
    if first == second {
        return if first_root == second_root && proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::Invalid)
        };
    }
    // The empty tree is consistent with every tree, with an empty proof (RFC 9162 2.1.4).
    if first == 0 {
        return if first_root == tlog_tiles::EMPTY_HASH.0 && proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::Invalid)
        };
    }
    if proof.len() > MAX_PROOF_HASHES {
        return Err(ProofError::Invalid);
    }
    let proof: Vec<Hash> = proof.iter().copied().map(Hash).collect();
    tlog_tiles::check_tree(&proof, second, Hash(second_root), first, Hash(first_root))
        .map_err(|_| ProofError::Invalid)
}

/// A Merkle tree held in memory: what an auditor rebuilds from downloaded entries, to compare
/// its roots at any size with the broker's signed checkpoints.
#[derive(Default)]
pub struct MemoryTree {
    stored: Vec<Hash>,
    leaves: u64,
}

impl HashReader for MemoryTree {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|i| {
                usize::try_from(*i)
                    .ok()
                    .and_then(|i| self.stored.get(i).copied())
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

impl MemoryTree {
    /// Appends the next entry (exact bytes).
    pub fn push(&mut self, entry: &[u8]) {
        if let Ok(stored) = tlog_tiles::stored_hashes(self.leaves, entry, self) {
            self.stored.extend(stored);
            self.leaves += 1;
        }
    }

    /// Number of leaves.
    pub fn len(&self) -> u64 {
        self.leaves
    }

    /// Whether it has no leaf.
    pub fn is_empty(&self) -> bool {
        self.leaves == 0
    }

    /// The root of the tree of its first `size` leaves.
    pub fn root(&self, size: u64) -> [u8; 32] {
        if size == 0 || size > self.leaves {
            return tlog_tiles::EMPTY_HASH.0;
        }
        tlog_tiles::tree_hash(size, self).map_or(tlog_tiles::EMPTY_HASH.0, |h| h.0)
    }
}

/// The root of a list of entries, computed in memory.
pub fn root_of(entries: impl IntoIterator<Item = impl AsRef<[u8]>>) -> [u8; 32] {
    let mut tree = MemoryTree::default();
    for entry in entries {
        tree.push(entry.as_ref());
    }
    tree.root(tree.len())
}

/// Proof hashes as served (raw bytes), each checked to be 32 bytes long.
pub fn hashes<T: AsRef<[u8]>>(raw: &[T]) -> Option<Vec<[u8; 32]>> {
    if raw.len() > MAX_PROOF_HASHES {
        return None;
    }
    raw.iter()
        .map(|h| <[u8; 32]>::try_from(h.as_ref()).ok())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The leaves and roots of the RFC 6962 reference test data (certificate-transparency's
    /// merkle tree tests).
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn the_memory_tree_has_the_rfc_6962_reference_roots_and_checks_proofs() {
        let leaves: Vec<Vec<u8>> = LEAVES.iter().map(|l| hex::decode(l).unwrap()).collect();
        let mut tree = MemoryTree::default();
        assert!(tree.is_empty());
        for (n, leaf) in leaves.iter().enumerate() {
            tree.push(leaf);
            assert_eq!(hex::encode(tree.root(n as u64 + 1)), ROOTS[n]);
            assert_eq!(tree.root(n as u64 + 1), root_of(&leaves[..=n]));
        }
        assert_eq!(tree.len(), 8);
        assert_eq!(
            tree.root(9),
            tlog_tiles::EMPTY_HASH.0,
            "no root past the tree"
        );
        // The proofs tlog computes over the tree in memory verify, and fail on a changed entry.
        for size in 1..=8u64 {
            let root = tree.root(size);
            for leaf in 0..size {
                let proof: Vec<[u8; 32]> = tlog_tiles::prove_record(size, leaf, &tree)
                    .unwrap()
                    .into_iter()
                    .map(|h| h.0)
                    .collect();
                verify_inclusion(&proof, size, root, leaf, &leaves[leaf as usize]).unwrap();
                assert!(verify_inclusion(&proof, size, root, leaf, b"altered").is_err());
            }
            for first in 1..size {
                let proof: Vec<[u8; 32]> = tlog_tiles::prove_tree(size, first, &tree)
                    .unwrap()
                    .into_iter()
                    .map(|h| h.0)
                    .collect();
                verify_consistency(&proof, first, tree.root(first), size, root).unwrap();
                assert!(verify_consistency(&proof, first, [0; 32], size, root).is_err());
            }
            verify_consistency(&[], size, root, size, root).unwrap();
            assert!(verify_consistency(&[], size, [1; 32], size, root).is_err());
        }
    }
}
