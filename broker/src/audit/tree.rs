//! The Merkle tree's stored hashes, in a sled tree keyed by stored-hash index, and the proofs
//! computed from them. Verification functions are for clients: they need only the proof, the
//! entry and a verified checkpoint.

use std::sync::atomic::{AtomicU64, Ordering};

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

/// Reads the stored hashes of the tree; counts what it reads, so tests can show that proofs
/// stay logarithmic.
pub struct TreeReader<'a> {
    hashes: &'a sled::Tree,
    reads: AtomicU64,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl<'a> TreeReader<'a> {
    /// A reader over the sled tree of stored hashes.
    pub fn new(hashes: &'a sled::Tree) -> TreeReader<'a> {
        TreeReader {
            hashes,
            reads: AtomicU64::new(0),
        }
    }

    /// How many hashes were read so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Adds leaf `n` (the `n`-th entry, exact bytes) to the tree: O(log n) writes.
    pub fn append(&self, n: u64, entry: &[u8]) -> Result<(), ProofError> {
        let stored = tlog_tiles::stored_hashes(n, entry, self)
            .map_err(|e| ProofError::Storage(e.to_string()))?;
        let first = tlog_tiles::stored_hash_index(0, n);
        for (i, hash) in stored.iter().enumerate() {
            self.hashes
                .insert(index_key(first + i as u64), &hash.0)
                .map_err(|e| ProofError::Storage(e.to_string()))?;
        }
        Ok(())
    }

    /// The root of the tree of the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<[u8; 32], ProofError> {
        tlog_tiles::tree_hash(size, self)
            .map(|h| h.0)
            .map_err(|e| ProofError::Storage(e.to_string()))
    }

    /// The inclusion proof of leaf `leaf` in the tree of `size` leaves (RFC 9162 §2.1.3).
    pub fn inclusion_proof(&self, leaf: u64, size: u64) -> Result<Vec<[u8; 32]>, ProofError> {
        if leaf >= size {
            return Err(ProofError::OutOfRange(format!(
                "leaf {leaf} is not in a tree of {size} entries"
            )));
        }
        tlog_tiles::prove_record(size, leaf, self)
            .map(|p| p.into_iter().map(|h| h.0).collect())
            .map_err(|e| ProofError::Storage(e.to_string()))
    }

    /// The consistency proof between the trees of `first` and `second` leaves (RFC 9162
    /// §2.1.4): the smaller is a prefix of the larger.
    pub fn consistency_proof(&self, first: u64, second: u64) -> Result<Vec<[u8; 32]>, ProofError> {
        if first == 0 || first > second {
            return Err(ProofError::OutOfRange(format!(
                "no consistency proof from {first} to {second} entries"
            )));
        }
        tlog_tiles::prove_tree(second, first, self)
            .map(|p| p.into_iter().map(|h| h.0).collect())
            .map_err(|e| ProofError::Storage(e.to_string()))
    }
}

impl HashReader for TreeReader<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        self.reads
            .fetch_add(indexes.len() as u64, Ordering::Relaxed);
        indexes
            .iter()
            .map(|i| match self.hashes.get(index_key(*i)) {
                Ok(Some(v)) => <[u8; 32]>::try_from(v.as_ref())
                    .map(Hash)
                    .map_err(|_| tlog_tiles::Error::MalformedHash),
                _ => Err(tlog_tiles::Error::IndexesNotInTree),
            })
            .collect()
    }
}

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

    fn tree() -> (tempfile::TempDir, sled::Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        (dir, db)
    }

    #[test]
    fn roots_and_proofs_match_the_rfc_6962_reference_vectors() {
        let (_dir, db) = tree();
        let hashes = db.open_tree("h").unwrap();
        let reader = TreeReader::new(&hashes);
        let leaves: Vec<Vec<u8>> = LEAVES.iter().map(|l| hex::decode(l).unwrap()).collect();
        for (n, leaf) in leaves.iter().enumerate() {
            reader.append(n as u64, leaf).unwrap();
            let size = n as u64 + 1;
            let root = reader.root(size).unwrap();
            assert_eq!(hex::encode(root), ROOTS[n], "root of {size}");
            assert_eq!(root, root_of(&leaves[..=n]));
        }
        for size in 1..=8u64 {
            let root = reader.root(size).unwrap();
            for leaf in 0..size {
                let proof = reader.inclusion_proof(leaf, size).unwrap();
                let entry = &leaves[leaf as usize];
                verify_inclusion(&proof, size, root, leaf, entry).unwrap();
                assert!(verify_inclusion(&proof, size, root, leaf, b"altered").is_err());
            }
            for first in 1..=size {
                let proof = reader.consistency_proof(first, size).unwrap();
                let first_root = reader.root(first).unwrap();
                verify_consistency(&proof, first, first_root, size, root).unwrap();
                if first < size {
                    assert!(verify_consistency(&proof, first, [0; 32], size, root).is_err());
                }
            }
        }
    }

    #[test]
    fn proofs_read_a_logarithmic_number_of_hashes() {
        let (_dir, db) = tree();
        let hashes = db.open_tree("h").unwrap();
        let reader = TreeReader::new(&hashes);
        let n = 1 << 14;
        for i in 0..n {
            reader.append(i, &i.to_be_bytes()).unwrap();
        }
        let before = reader.reads();
        let proof = reader.inclusion_proof(12_345, n).unwrap();
        let inclusion_reads = reader.reads() - before;
        assert_eq!(proof.len(), 14);
        assert!(inclusion_reads <= 2 * 14, "{inclusion_reads} reads");

        let before = reader.reads();
        reader.consistency_proof(10_001, n).unwrap();
        let consistency_reads = reader.reads() - before;
        assert!(consistency_reads <= 4 * 14, "{consistency_reads} reads");

        let before = reader.reads();
        reader.root(n - 3).unwrap();
        assert!(
            reader.reads() - before <= 14,
            "root of a tree reads O(log n)"
        );
    }
}
