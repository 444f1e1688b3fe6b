//! The Merkle tree's stored hashes, in one append-only file, and the proofs computed from them.
//! Verification functions are for clients: they need only the proof, the entry and a verified
//! checkpoint.
//!
//! The file is derived state, like sled: hash `i` (tlog's stored-hash index) is at byte `32 i`,
//! so appending a leaf is one write at the end and a proof is a few reads. It is not synced: at
//! start the store cuts it to what it can vouch for and replays the rest from the journal. The
//! tree's right edge (one hash per level) and the newest hashes stay in memory, so a new leaf and
//! its receipt's proof read nothing from disk.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tlog_tiles::{Hash, HashReader};

pub use unefois_tlog::tree::{
    MemoryTree, ProofError, leaf_hash, root_of, verify_consistency, verify_inclusion,
};

const HASH_LEN: u64 = 32;
/// How many of the newest stored hashes stay in memory (512 KiB).
const RECENT: usize = 1 << 14;

/// The Merkle tree of the audit log, in a file of stored hashes; counts what it reads from the
/// file, so tests can show that proofs stay logarithmic.
pub struct TreeFile {
    file: File,
    path: PathBuf,
    edge: RwLock<Edge>,
    reads: AtomicU64,
    reserve: crate::reserve::Reserve,
}

/// What the tree keeps in memory.
struct Edge {
    /// Leaves in the tree.
    leaves: u64,
    /// The roots of the complete subtrees that make up the tree, leftmost (highest) first:
    /// `(level, stored index, hash)`.
    frontier: Vec<(u8, u64, Hash)>,
    /// The newest stored hashes, the first of them at index `recent_first`.
    recent: VecDeque<Hash>,
    recent_first: u64,
}

impl Edge {
    fn stored(&self) -> u64 {
        tlog_tiles::stored_hash_index(0, self.leaves)
    }

    /// A stored hash held in memory.
    fn get(&self, index: u64) -> Option<Hash> {
        if index >= self.stored() {
            return None;
        }
        if let Some(i) = index.checked_sub(self.recent_first)
            && let Some(h) = usize::try_from(i).ok().and_then(|i| self.recent.get(i))
        {
            return Some(*h);
        }
        self.frontier
            .iter()
            .find(|(_, stored, _)| *stored == index)
            .map(|(_, _, h)| *h)
    }

    /// Adds the leaf `n` of `entry` to `frontier` (the right edge of the tree of `n` leaves);
    /// appends the hashes to store to `out`.
    fn push(frontier: &mut Vec<(u8, u64, Hash)>, n: u64, entry: &[u8], out: &mut Vec<Hash>) {
        let mut index = tlog_tiles::stored_hash_index(0, n);
        let mut h = tlog_tiles::record_hash(entry);
        let mut level = 0u8;
        out.push(h);
        // Each trailing one bit of n completes a subtree with its left neighbour.
        for _ in 0..(n + 1).trailing_zeros() {
            let Some((_, _, left)) = frontier.pop() else {
                break;
            };
            h = tlog_tiles::node_hash(left, h);
            index += 1;
            level += 1;
            out.push(h);
        }
        frontier.push((level, index, h));
    }

    /// Takes the next leaves, once their hashes are in the file.
    fn extend(&mut self, leaves: u64, frontier: Vec<(u8, u64, Hash)>, hashes: &[Hash]) {
        self.recent.extend(hashes.iter().copied());
        while self.recent.len() > RECENT {
            self.recent.pop_front();
            self.recent_first += 1;
        }
        self.frontier = frontier;
        self.leaves += leaves;
    }

    /// The root of the whole tree.
    fn root(&self) -> Hash {
        frontier_root(&self.frontier)
    }
}

/// Adds leaf `n` (exact entry bytes) to `frontier`, the right edge of the tree of `n` leaves
/// (`(level, stored index, hash)` of each complete subtree, highest first); appends the hashes
/// it stores, at the stored indices from `tlog_tiles::stored_hash_index(0, n)` on, to `out`.
pub fn push_leaf(frontier: &mut Vec<(u8, u64, Hash)>, n: u64, entry: &[u8], out: &mut Vec<Hash>) {
    Edge::push(frontier, n, entry, out);
}

/// The root of the tree whose right edge is `frontier`: folded from the right.
pub fn frontier_root(frontier: &[(u8, u64, Hash)]) -> Hash {
    let mut nodes = frontier.iter().rev().map(|(_, _, h)| *h);
    match nodes.next() {
        None => tlog_tiles::EMPTY_HASH,
        Some(last) => nodes.fold(last, |right, left| tlog_tiles::node_hash(left, right)),
    }
}

fn storage(e: impl std::fmt::Display) -> ProofError {
    ProofError::Storage(e.to_string())
}

impl TreeFile {
    /// Opens (or creates) the file at `path` and keeps the tree of at most `leaves` leaves: fewer
    /// when the file holds fewer (it is not synced), see [`TreeFile::leaves`].
    pub fn open(path: &Path, leaves: u64) -> Result<TreeFile, ProofError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| storage(format!("{}: {e}", path.display())))?;
        let on_file = file.metadata().map_err(storage)?.len() / HASH_LEN;
        // The largest tree whose hashes are all in the file.
        let (mut lo, mut hi) = (0u64, leaves.min(on_file));
        while lo < hi {
            let mid = hi - (hi - lo) / 2;
            if tlog_tiles::stored_hash_index(0, mid) <= on_file {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let tree = TreeFile {
            file,
            path: path.to_path_buf(),
            edge: RwLock::new(Edge {
                leaves: 0,
                frontier: Vec::new(),
                recent: VecDeque::new(),
                recent_first: 0,
            }),
            reads: AtomicU64::new(0),
            reserve: crate::reserve::Reserve::default(),
        };
        tree.truncate(lo)?;
        Ok(tree)
    }

    /// Cuts the tree back to its first `leaves` leaves (at most its current size).
    pub fn truncate(&self, leaves: u64) -> Result<(), ProofError> {
        let stored = tlog_tiles::stored_hash_index(0, leaves);
        self.file
            .set_len(stored * HASH_LEN)
            .map_err(|e| storage(format!("{}: {e}", self.path.display())))?;
        // The right edge: one complete subtree per one bit of `leaves`, highest first.
        let mut frontier = Vec::new();
        let mut start = 0u64;
        for level in (0..64u8).rev() {
            if leaves & (1u64 << level) != 0 {
                let index = tlog_tiles::stored_hash_index(level, start >> level);
                let h = self.read_file(index)?;
                frontier.push((level, index, h));
                start += 1u64 << level;
            }
        }
        *self.edge.write().map_err(storage)? = Edge {
            leaves,
            frontier,
            recent: VecDeque::new(),
            recent_first: stored,
        };
        Ok(())
    }

    /// Number of leaves.
    pub fn leaves(&self) -> u64 {
        self.edge.read().map_or(0, |e| e.leaves)
    }

    /// How many hashes were read from the file so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Adds the entries (exact bytes) as the next leaves, with one write to the file.
    pub fn append<'e>(
        &self,
        entries: impl IntoIterator<Item = &'e [u8]>,
    ) -> Result<(), ProofError> {
        let mut edge = self.edge.write().map_err(storage)?;
        let mut frontier = edge.frontier.clone();
        let (mut hashes, mut n) = (Vec::new(), edge.leaves);
        for entry in entries {
            Edge::push(&mut frontier, n, entry, &mut hashes);
            n += 1;
        }
        let bytes: Vec<u8> = hashes.iter().flat_map(|h| h.0).collect();
        let at = edge.stored() * HASH_LEN;
        self.reserve
            .before_writing(&self.file, at + bytes.len() as u64);
        self.file
            .write_all_at(&bytes, at)
            .map_err(|e| storage(format!("{}: {e}", self.path.display())))?;
        let leaves = n - edge.leaves;
        edge.extend(leaves, frontier, &hashes);
        Ok(())
    }

    fn read_file(&self, index: u64) -> Result<Hash, ProofError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let mut h = [0u8; 32];
        self.file
            .read_exact_at(&mut h, index * HASH_LEN)
            .map_err(|e| storage(format!("{} hash {index}: {e}", self.path.display())))?;
        Ok(Hash(h))
    }

    /// The root of the tree of the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<[u8; 32], ProofError> {
        {
            let edge = self.edge.read().map_err(storage)?;
            if size == edge.leaves {
                return Ok(edge.root().0);
            }
            if size > edge.leaves {
                return Err(ProofError::OutOfRange(format!(
                    "no tree of {size} entries; the log has {}",
                    edge.leaves
                )));
            }
        }
        tlog_tiles::tree_hash(size, self)
            .map(|h| h.0)
            .map_err(storage)
    }

    /// The inclusion proof of leaf `leaf` in the tree of `size` leaves (RFC 9162 §2.1.3).
    pub fn inclusion_proof(&self, leaf: u64, size: u64) -> Result<Vec<[u8; 32]>, ProofError> {
        if leaf >= size || size > self.leaves() {
            return Err(ProofError::OutOfRange(format!(
                "leaf {leaf} is not in a tree of {size} entries"
            )));
        }
        tlog_tiles::prove_record(size, leaf, self)
            .map(|p| p.into_iter().map(|h| h.0).collect())
            .map_err(storage)
    }

    /// The consistency proof between the trees of `first` and `second` leaves (RFC 9162
    /// §2.1.4): the smaller is a prefix of the larger.
    pub fn consistency_proof(&self, first: u64, second: u64) -> Result<Vec<[u8; 32]>, ProofError> {
        if first == 0 || first > second || second > self.leaves() {
            return Err(ProofError::OutOfRange(format!(
                "no consistency proof from {first} to {second} entries"
            )));
        }
        tlog_tiles::prove_tree(second, first, self)
            .map(|p| p.into_iter().map(|h| h.0).collect())
            .map_err(storage)
    }
}

impl HashReader for TreeFile {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        let edge = self
            .edge
            .read()
            .map_err(|_| tlog_tiles::Error::IndexesNotInTree)?;
        let stored = edge.stored();
        indexes
            .iter()
            .map(|&i| match edge.get(i) {
                Some(h) => Ok(h),
                None if i < stored => self
                    .read_file(i)
                    .map_err(|_| tlog_tiles::Error::IndexesNotInTree),
                None => Err(tlog_tiles::Error::IndexesNotInTree),
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The leaves of the RFC 6962 reference test data (certificate-transparency's merkle tree
    /// tests); `unefois_tlog::tree` checks `root_of` against their roots.
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

    fn tree() -> (tempfile::TempDir, TreeFile) {
        let dir = tempfile::tempdir().unwrap();
        let tree = TreeFile::open(&dir.path().join("tree"), 0).unwrap();
        (dir, tree)
    }

    #[test]
    fn roots_and_proofs_match_the_rfc_6962_reference_vectors() {
        let (_dir, reader) = tree();
        let leaves: Vec<Vec<u8>> = LEAVES.iter().map(|l| hex::decode(l).unwrap()).collect();
        for (n, leaf) in leaves.iter().enumerate() {
            reader.append([leaf.as_slice()]).unwrap();
            let size = n as u64 + 1;
            let root = reader.root(size).unwrap();
            assert_eq!(root, root_of(&leaves[..=n]), "root of {size}");
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
        let (dir, reader) = tree();
        let n = 1u64 << 14;
        let entries: Vec<[u8; 8]> = (0..n).map(u64::to_be_bytes).collect();
        reader.append(entries.iter().map(|e| e.as_slice())).unwrap();
        // Reopened, so that every hash but the right edge comes from the file.
        drop(reader);
        let reader = TreeFile::open(&dir.path().join("tree"), n).unwrap();
        assert_eq!(reader.leaves(), n);
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

    #[test]
    fn the_file_holds_tlogs_stored_hashes_and_reopens_at_any_size() {
        let (dir, file) = tree();
        let mut memory = MemoryTree::default();
        let entries: Vec<Vec<u8>> = (0..1000u32).map(|i| i.to_be_bytes().to_vec()).collect();
        // Batches of uneven sizes, as group commit makes them.
        for chunk in entries.chunks(7) {
            file.append(chunk.iter().map(Vec::as_slice)).unwrap();
            for entry in chunk {
                memory.push(entry);
            }
            let size = memory.len();
            assert_eq!(file.root(size).unwrap(), memory.root(size));
        }
        drop(file);
        let bytes = std::fs::read(dir.path().join("tree")).unwrap();
        let indexes: Vec<u64> = (0..tlog_tiles::stored_hash_count(1000)).collect();
        let expected: Vec<u8> = memory
            .read_hashes(&indexes)
            .unwrap()
            .iter()
            .flat_map(|h| h.0)
            .collect();
        assert_eq!(bytes, expected, "hash i at byte 32 i, in tlog's order");

        // A torn tail (half a hash) and a shorter wish both cut the tree cleanly.
        let path = dir.path().join("tree");
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(bytes.len() as u64 - 48).unwrap();
        let reopened = TreeFile::open(&path, 1000).unwrap();
        assert_eq!(reopened.leaves(), 999, "the last leaf lost its hashes");
        assert_eq!(reopened.root(999).unwrap(), memory.root(999));
        reopened.append([entries[999].as_slice()]).unwrap();
        assert_eq!(reopened.root(1000).unwrap(), memory.root(1000));
        drop(reopened);
        let cut = TreeFile::open(&path, 500).unwrap();
        assert_eq!(cut.leaves(), 500);
        assert_eq!(cut.root(500).unwrap(), memory.root(500));
        let proof = cut.inclusion_proof(123, 500).unwrap();
        verify_inclusion(&proof, 500, memory.root(500), 123, &entries[123]).unwrap();
        assert!(matches!(
            cut.inclusion_proof(10, 501),
            Err(ProofError::OutOfRange(_))
        ));
    }
}
