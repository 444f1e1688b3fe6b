//! Reading durable records back from the segment files.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;

use super::format::{HEADER_LEN, Header, MAX_PAYLOAD_LEN, checksum};
use super::{JournalError, Position, Record};

/// Iterator over the durable records from a given sequence number, in order, read from the
/// segment files (blocking I/O: from async code, run it under `spawn_blocking`).
///
/// It stops at the number of records that were durable when it was created, so it never sees a
/// record that is being written. After an error it yields nothing more.
#[derive(Debug)]
pub struct JournalReader {
    segments: Vec<(u64, PathBuf)>,
    /// Index in `segments` of the segment to open next.
    next_segment: usize,
    current: Option<Open>,
    /// Sequence number of the next record on disk.
    next_seq: u64,
    /// First sequence number to yield.
    from: u64,
    /// One past the last sequence number to yield.
    end: u64,
    done: bool,
    /// Where the record yielded last lies.
    last: Option<Position>,
    /// Where record `from` lies in the first segment opened, when known: reading starts there
    /// instead of at the segment's first record.
    skip_to: Option<u64>,
}

#[derive(Debug)]
struct Open {
    reader: BufReader<File>,
    path: PathBuf,
    /// The segment's first sequence number.
    first: u64,
    offset: u64,
}

impl JournalReader {
    /// Reads the records `from..end` of `segments` (first sequence number and path, in order):
    /// the broker's backup walks a copied segment list with it.
    pub fn new(segments: Vec<(u64, PathBuf)>, from: u64, end: u64) -> JournalReader {
        // The last segment whose first record is at or before `from`.
        let start = segments
            .iter()
            .rposition(|(first, _)| *first <= from)
            .unwrap_or(0);
        let next_seq = segments.get(start).map_or(0, |(first, _)| *first);
        JournalReader {
            done: from >= end || segments.is_empty(),
            last: None,
            skip_to: None,
            segments,
            next_segment: start,
            current: None,
            next_seq,
            from,
            end,
        }
    }

    /// Like [`JournalReader::new`], starting at `at`, where record `from` lies (as a
    /// [`super::CommittedBatch`] gave it): no scan from the segment's first record. A position
    /// that does not hold record `from` is reported as corruption at the first read.
    pub(crate) fn new_at(
        segments: Vec<(u64, PathBuf)>,
        from: u64,
        end: u64,
        at: Position,
    ) -> JournalReader {
        let Some(start) = segments.iter().position(|(first, _)| *first == at.segment) else {
            return JournalReader::new(segments, from, end);
        };
        JournalReader {
            next_segment: start,
            next_seq: from,
            skip_to: Some(at.offset),
            ..JournalReader::new(segments, from, end)
        }
    }

    /// Where the record yielded last lies, for [`super::Journal::read_at`].
    pub fn position(&self) -> Option<Position> {
        self.last
    }

    fn read_one(&mut self) -> Result<Record, JournalError> {
        loop {
            if self.current.is_none() {
                self.open_next()?;
            }
            let Some(open) = self.current.as_mut() else {
                continue;
            };
            let corrupt = |offset: u64, reason: String| JournalError::Corrupt {
                path: open.path.clone(),
                offset,
                reason,
            };
            let mut bytes = [0u8; HEADER_LEN];
            match read_full(&mut open.reader, &mut bytes) {
                Ok(0) => {
                    // End of this segment: the next record is in the next one.
                    self.current = None;
                    continue;
                }
                Ok(n) if n < HEADER_LEN => {
                    return Err(corrupt(
                        open.offset,
                        format!("partial header ({n} bytes) before a durable record"),
                    ));
                }
                Ok(_) => {}
                Err(source) => {
                    return Err(JournalError::Io {
                        path: open.path.clone(),
                        source,
                    });
                }
            }
            let header = Header::parse(&bytes);
            if !header.len_ok() {
                return Err(corrupt(
                    open.offset,
                    format!(
                        "record length {} exceeds the maximum {MAX_PAYLOAD_LEN}",
                        header.len
                    ),
                ));
            }
            if header.seq != self.next_seq {
                return Err(corrupt(
                    open.offset,
                    format!(
                        "sequence number {} where {} was expected",
                        header.seq, self.next_seq
                    ),
                ));
            }
            let len = header.len as usize;
            let record_offset = open.offset;
            open.offset += (HEADER_LEN + len) as u64;
            self.next_seq += 1;
            let io_err = |source| JournalError::Io {
                path: open.path.clone(),
                source,
            };
            if header.seq < self.from {
                open.reader
                    .seek_relative(i64::from(header.len))
                    .map_err(io_err)?;
                continue;
            }
            let mut payload = vec![0u8; len];
            open.reader.read_exact(&mut payload).map_err(io_err)?;
            if checksum(header.seq, &payload) != header.crc {
                return Err(corrupt(record_offset, "checksum mismatch".into()));
            }
            self.last = Some(Position {
                segment: open.first,
                offset: record_offset,
            });
            return Ok(Record {
                seq: header.seq,
                payload,
            });
        }
    }

    fn open_next(&mut self) -> Result<(), JournalError> {
        let Some((first, path)) = self.segments.get(self.next_segment) else {
            return Err(JournalError::Corrupt {
                path: self
                    .segments
                    .last()
                    .map(|(_, p)| p.clone())
                    .unwrap_or_default(),
                offset: 0,
                reason: format!(
                    "durable record {} not found: the journal ends early",
                    self.next_seq
                ),
            });
        };
        let offset = self.skip_to.take().unwrap_or(0);
        if offset == 0 && *first != self.next_seq {
            return Err(JournalError::Corrupt {
                path: path.clone(),
                offset: 0,
                reason: format!(
                    "segment starts at sequence number {first} where {} was expected",
                    self.next_seq
                ),
            });
        }
        let io_err = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        let mut file = File::open(path).map_err(io_err)?;
        if offset > 0 {
            file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
        }
        self.next_segment += 1;
        self.current = Some(Open {
            reader: BufReader::with_capacity(256 * 1024, file),
            path: path.clone(),
            first: *first,
            offset,
        });
        Ok(())
    }
}

/// Reads until `buf` is full or end of file; returns how many bytes were read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let Some(rest) = buf.get_mut(filled..) else {
            break;
        };
        match reader.read(rest) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl Iterator for JournalReader {
    type Item = Result<Record, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.next_seq >= self.end {
            return None;
        }
        let item = self.read_one();
        if item.is_err() {
            self.done = true;
            self.current = None;
        }
        Some(item)
    }
}
