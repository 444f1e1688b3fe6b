//! Disk space reserved ahead for the derived files (the Merkle tree's hashes, the entries'
//! positions), so that when the disk fills up the journal is refused first: a record the
//! journal managed to write must not then fail to be applied (that would stop the broker until
//! a restart). The reservation keeps the file's size (`FALLOC_FL_KEEP_SIZE`).

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes reserved past the end at each renewal.
const AHEAD: u64 = 1024 * 1024;

/// How far a file's blocks are reserved.
#[derive(Debug, Default)]
pub struct Reserve {
    until: AtomicU64,
}

impl Reserve {
    /// Before writing up to `end`: renews the reservation once less than half of [`AHEAD`] is
    /// left. A failed renewal (a full disk) is not an error: the reserve left covers the few
    /// records the journal can still write, and the next write tries again.
    pub fn before_writing(&self, file: &File, end: u64) {
        let until = self.until.load(Ordering::Relaxed);
        if end + AHEAD / 2 <= until {
            return;
        }
        let want = end + AHEAD;
        match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, want) {
            Ok(()) => self.until.store(want, Ordering::Relaxed),
            Err(e) => tracing::debug!(error = %e, "no disk space reserved ahead (full disk?)"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn space_is_reserved_ahead_without_changing_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        let reserve = Reserve::default();
        reserve.before_writing(&file, 100);
        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), 0, "the size is the data's");
        assert!(
            meta.blocks() * 512 >= AHEAD,
            "{} bytes reserved",
            meta.blocks() * 512
        );
        // Renewed only once half of it is used.
        reserve.before_writing(&file, AHEAD / 4);
        assert_eq!(file.metadata().unwrap().blocks(), meta.blocks());
        reserve.before_writing(&file, AHEAD);
        assert!(file.metadata().unwrap().blocks() * 512 >= 2 * AHEAD);
    }
}
