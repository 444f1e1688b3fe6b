//! The pure steps of verifying a whole log (`unefois audit verify`): that the latest checkpoint
//! extends the one the auditor trusts, and, when the downloaded entries do not hash to the
//! signed root, which entry is the first bad one. Fetching checkpoints, proofs and entries is
//! the caller's business.

use crate::checkpoint::VerifiedCheckpoint;
use crate::tree::verify_consistency;

/// The latest checkpoint does not extend the trusted one: a fork (or a rollback).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "fork: the log of {new_size} entries does not extend the trusted checkpoint of \
     {trusted_size} entries"
)]
pub struct Fork {
    /// Size of the trusted checkpoint.
    pub trusted_size: u64,
    /// Size of the latest checkpoint.
    pub new_size: u64,
}

/// Whether a consistency proof (its raw hashes) is needed to go from `trusted` to `latest`:
/// none when they have the same size.
pub fn needs_proof(trusted: &VerifiedCheckpoint, latest: &VerifiedCheckpoint) -> bool {
    // The empty tree is a prefix of every tree (RFC 9162 2.1.4): no proof to ask for.
    trusted.size > 0 && trusted.size < latest.size
}

/// Checks that `latest` extends `trusted` with the consistency proof `proof` (raw hashes, as
/// served; empty when [`needs_proof`] says none is needed).
pub fn extends<T: AsRef<[u8]>>(
    trusted: &VerifiedCheckpoint,
    latest: &VerifiedCheckpoint,
    proof: &[T],
) -> Result<(), Fork> {
    let fork = Fork {
        trusted_size: trusted.size,
        new_size: latest.size,
    };
    if trusted.size > latest.size {
        return Err(fork);
    }
    let proof = crate::tree::hashes(proof).ok_or(fork)?;
    verify_consistency(&proof, trusted.size, trusted.root, latest.size, latest.root)
        .map_err(|_| fork)
}

/// A binary search for the first entry whose prefix no longer has the broker's signed root:
/// O(log n) checkpoints asked for, one per [`FirstBadEntry::next_size`].
#[derive(Clone, Copy, Debug)]
pub struct FirstBadEntry {
    good: u64,
    bad: u64,
}

impl FirstBadEntry {
    /// A search over a log of `size` entries whose root does not match.
    pub fn new(size: u64) -> FirstBadEntry {
        FirstBadEntry { good: 0, bad: size }
    }

    /// The size of the next checkpoint to compare with the local root, or `None` when found.
    pub fn next_size(&self) -> Option<u64> {
        (self.bad - self.good > 1).then(|| self.good + (self.bad - self.good) / 2)
    }

    /// Records whether the signed checkpoint of `size` entries has the local root of that size.
    pub fn record(&mut self, size: u64, matches: bool) {
        if matches {
            self.good = size;
        } else {
            self.bad = size;
        }
    }

    /// The index of the first bad entry, once [`FirstBadEntry::next_size`] is `None`.
    pub fn found(&self) -> u64 {
        self.bad.saturating_sub(1)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tree::MemoryTree;

    fn checkpoint(tree: &MemoryTree, size: u64) -> VerifiedCheckpoint {
        VerifiedCheckpoint {
            origin: "example.org/log".into(),
            size,
            root: tree.root(size),
        }
    }

    fn proof(tree: &MemoryTree, first: u64, second: u64) -> Vec<[u8; 32]> {
        tlog_tiles::prove_tree(second, first, tree)
            .unwrap()
            .into_iter()
            .map(|h| h.0)
            .collect()
    }

    #[test]
    fn a_log_extends_its_prefixes_and_nothing_else() {
        let mut tree = MemoryTree::default();
        for i in 0..20u8 {
            tree.push(&[i]);
        }
        let (at5, at20) = (checkpoint(&tree, 5), checkpoint(&tree, 20));
        assert!(needs_proof(&at5, &at20));
        assert_eq!(extends(&at5, &at20, &proof(&tree, 5, 20)), Ok(()));
        assert_eq!(extends::<[u8; 32]>(&at20, &at20, &[]), Ok(()));
        let fork = Fork {
            trusted_size: 20,
            new_size: 5,
        };
        assert_eq!(
            extends::<[u8; 32]>(&at20, &at5, &[]),
            Err(fork),
            "a rollback"
        );
        let mut other = at5.clone();
        other.root = [9; 32];
        assert!(
            extends(&other, &at20, &proof(&tree, 5, 20)).is_err(),
            "a fork"
        );
        assert!(
            extends(&at5, &at20, &[vec![1u8; 31]]).is_err(),
            "a short hash"
        );
    }

    #[test]
    fn the_empty_tree_is_extended_by_every_tree_without_a_proof() {
        let mut tree = MemoryTree::default();
        for i in 0..5u8 {
            tree.push(&[i]);
        }
        let (empty, at5) = (checkpoint(&tree, 0), checkpoint(&tree, 5));
        assert!(!needs_proof(&empty, &at5), "no proof from size 0 is served");
        assert_eq!(extends::<[u8; 32]>(&empty, &at5, &[]), Ok(()));
        let mut not_empty = empty.clone();
        not_empty.root = [7; 32];
        assert!(extends::<[u8; 32]>(&not_empty, &at5, &[]).is_err());
    }

    #[test]
    fn a_proof_longer_than_any_tree_needs_is_refused_unread() {
        let mut tree = MemoryTree::default();
        for i in 0..20u8 {
            tree.push(&[i]);
        }
        let (at5, at20) = (checkpoint(&tree, 5), checkpoint(&tree, 20));
        let mut long = proof(&tree, 5, 20);
        long.resize(crate::tree::MAX_PROOF_HASHES + 1, [0; 32]);
        assert!(extends(&at5, &at20, &long).is_err());
        assert!(
            crate::tree::verify_inclusion(&long, 20, at20.root, 3, &[3]).is_err(),
            "inclusion"
        );
    }

    #[test]
    fn the_search_names_the_first_entry_that_differs() {
        for size in 1..40u64 {
            for bad in 0..size {
                let mut search = FirstBadEntry::new(size);
                let mut asked = 0;
                while let Some(mid) = search.next_size() {
                    asked += 1;
                    search.record(mid, mid <= bad);
                }
                assert_eq!(search.found(), bad, "size {size}");
                assert!(asked <= 6, "logarithmic");
            }
        }
    }
}
