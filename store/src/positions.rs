//! Where each audit entry lies in the journal, and the previous exchange about the same subject:
//! one fixed-size slot per sequence number in an append-only file, so that an entry is read from
//! the journal rather than kept twice, and a subject's history is a chain of slots.
//!
//! Derived state, like sled: it is not synced; at start the store keeps only the slots it can
//! vouch for and replays the rest from the journal.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::journal::Position;

const SLOT: u64 = 24;

/// What the file holds of one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Where the record lies in the journal.
    pub at: Position,
    /// For an exchange about a subject, the previous exchange about that subject.
    pub previous: Option<u64>,
}

/// The positions file: slot `seq` holds the segment and offset of record `seq`, and the previous
/// exchange about its subject plus one (0: none).
pub struct Positions {
    file: File,
    path: PathBuf,
    /// Slots written (the next sequence number to record).
    len: AtomicU64,
    reserve: crate::reserve::Reserve,
}

impl Positions {
    /// Opens (or creates) the file, keeping its whole slots (a torn last one is cut); the store
    /// then cuts it to what it can vouch for.
    pub fn open(path: &Path) -> std::io::Result<Positions> {
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
            reserve: crate::reserve::Reserve::default(),
        };
        positions.truncate(on_file)?;
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
    pub fn append(&self, slots: &[Slot]) -> std::io::Result<()> {
        let len = self.len();
        let mut bytes = Vec::with_capacity(slots.len() * SLOT as usize);
        for slot in slots {
            bytes.extend_from_slice(&slot.at.segment.to_le_bytes());
            bytes.extend_from_slice(&slot.at.offset.to_le_bytes());
            let previous = slot.previous.map_or(0, |p| p.saturating_add(1));
            bytes.extend_from_slice(&previous.to_le_bytes());
        }
        self.reserve
            .before_writing(&self.file, (len + slots.len() as u64) * SLOT);
        self.file.write_all_at(&bytes, len * SLOT)?;
        self.len.store(len + slots.len() as u64, Ordering::Release);
        Ok(())
    }

    /// The slot of record `seq`, if recorded.
    pub fn get(&self, seq: u64) -> std::io::Result<Option<Slot>> {
        if seq >= self.len() {
            return Ok(None);
        }
        let mut slot = [0u8; SLOT as usize];
        self.file
            .read_exact_at(&mut slot, seq * SLOT)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))?;
        let word = |i: usize| {
            slot.get(i * 8..i * 8 + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(u64::MAX, u64::from_le_bytes)
        };
        Ok(Some(Slot {
            at: Position {
                segment: word(0),
                offset: word(1),
            },
            previous: word(2).checked_sub(1),
        }))
    }
}
