//! Where each audit entry lies in the journal: one fixed-size slot per sequence number in an
//! append-only file, so that an entry is read from the journal rather than kept twice.
//!
//! Derived state, like sled: it is not synced; at start the store keeps only the slots it can
//! vouch for and replays the rest from the journal.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::journal::Position;

const SLOT: u64 = 16;

/// The positions file: slot `seq` holds the segment and offset of record `seq`.
pub struct Positions {
    file: File,
    path: PathBuf,
    /// Slots written (the next sequence number to record).
    len: AtomicU64,
}

impl Positions {
    /// Opens (or creates) the file and keeps at most `len` slots: fewer when the file holds
    /// fewer, see [`Positions::len`].
    pub fn open(path: &Path, len: u64) -> std::io::Result<Positions> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let on_file = file.metadata()?.len() / SLOT;
        let positions = Positions {
            file,
            path: path.to_path_buf(),
            len: AtomicU64::new(0),
        };
        positions.truncate(len.min(on_file))?;
        Ok(positions)
    }

    /// Keeps only the first `len` slots.
    pub fn truncate(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len * SLOT)?;
        self.len.store(len, Ordering::Release);
        Ok(())
    }

    /// Number of slots: records whose position is known.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// Whether no position is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records the positions of the records `len()..`, in order, with one write. Only the
    /// journal's writer thread appends.
    pub fn append(&self, positions: &[Position]) -> std::io::Result<()> {
        let len = self.len();
        let mut bytes = Vec::with_capacity(positions.len() * SLOT as usize);
        for p in positions {
            bytes.extend_from_slice(&p.segment.to_le_bytes());
            bytes.extend_from_slice(&p.offset.to_le_bytes());
        }
        self.file.write_all_at(&bytes, len * SLOT)?;
        self.len
            .store(len + positions.len() as u64, Ordering::Release);
        Ok(())
    }

    /// The position of record `seq`, if recorded.
    pub fn get(&self, seq: u64) -> std::io::Result<Option<Position>> {
        if seq >= self.len() {
            return Ok(None);
        }
        let mut slot = [0u8; SLOT as usize];
        self.file
            .read_exact_at(&mut slot, seq * SLOT)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))?;
        let (segment, offset) = slot.split_at(8);
        let word = |b: &[u8]| <[u8; 8]>::try_from(b).map_or(u64::MAX, u64::from_le_bytes);
        Ok(Some(Position {
            segment: word(segment),
            offset: word(offset),
        }))
    }
}
