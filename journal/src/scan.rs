//! Recovery at open: verify every segment, cut a torn tail off the last one, refuse anything
//! else.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::JournalError;
use super::format::{
    HEADER_LEN, Header, MAX_PAYLOAD_LEN, checksum, list_segments, segment_name, sync_dir,
};

/// Where the writer resumes after recovery.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// Sequence number of the next record (number of records in the journal).
    pub(crate) next_seq: u64,
    /// The last segment, which the writer appends to.
    pub(crate) last_path: PathBuf,
    /// Its length after any torn tail was cut.
    pub(crate) last_len: u64,
    /// The sequence number of its first record (the number in its name).
    pub(crate) last_first: u64,
    /// How many segments the journal has.
    pub(crate) segments: usize,
}

/// Scans `dir` (which exists), creating the first segment if there is none.
pub(crate) fn recover(dir: &Path) -> Result<Recovered, JournalError> {
    let segments = list_segments(dir)?;
    if segments.is_empty() {
        let path = dir.join(segment_name(0));
        let io_err = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(crate::private::FILE_MODE)
            .open(&path)
            .map_err(io_err)?;
        sync_dir(dir).map_err(|source| JournalError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        return Ok(Recovered {
            next_seq: 0,
            last_path: path,
            last_len: 0,
            last_first: 0,
            segments: 1,
        });
    }

    let mut expected = 0u64;
    let count = segments.len();
    let mut last = None;
    for (index, (first, path)) in segments.into_iter().enumerate() {
        if first != expected {
            return Err(JournalError::Corrupt {
                path,
                offset: 0,
                reason: format!(
                    "segment starts at sequence number {first} where {expected} was expected \
                     (a segment is missing or misnamed)"
                ),
            });
        }
        let is_last = index + 1 == count;
        // Segments of earlier versions were created with the umask's mode.
        crate::private::narrow(&path, crate::private::FILE_MODE).map_err(|source| {
            JournalError::Io {
                path: path.clone(),
                source,
            }
        })?;
        let outcome = scan_segment(&path, first, is_last)?;
        expected = outcome.next_seq;
        if is_last {
            if let Some(torn) = &outcome.torn {
                tracing::warn!(
                    file = %path.display(),
                    offset = outcome.valid_len,
                    dropped_bytes = torn.dropped_bytes,
                    reason = %torn.reason,
                    "journal: cutting a torn tail (records written but never synced, hence never acknowledged)"
                );
                truncate(&path, outcome.valid_len)?;
            }
            last = Some((path, outcome.valid_len, first));
        }
    }
    let (last_path, last_len, last_first) = last.ok_or_else(|| JournalError::Corrupt {
        path: dir.to_path_buf(),
        offset: 0,
        reason: "no segment".into(),
    })?;
    Ok(Recovered {
        next_seq: expected,
        last_path,
        last_len,
        last_first,
        segments: count,
    })
}

struct Torn {
    reason: String,
    dropped_bytes: u64,
}

struct Outcome {
    next_seq: u64,
    valid_len: u64,
    torn: Option<Torn>,
}

/// Verifies one segment. A bad record is a torn tail only in the last segment and only when no
/// valid record follows it; anything else is corruption.
fn scan_segment(path: &Path, first: u64, is_last: bool) -> Result<Outcome, JournalError> {
    let io_err = |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let file_len = file.metadata().map_err(io_err)?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut offset = 0u64;
    let mut expected = first;
    let mut payload = Vec::new();

    let bad: Option<(u64, String)> = loop {
        let remaining = file_len - offset;
        if remaining == 0 {
            break None;
        }
        if remaining < HEADER_LEN as u64 {
            break Some((offset, format!("partial record header ({remaining} bytes)")));
        }
        let mut bytes = [0u8; HEADER_LEN];
        reader.read_exact(&mut bytes).map_err(io_err)?;
        let header = Header::parse(&bytes);
        if !header.len_ok() {
            break Some((
                offset,
                format!(
                    "record length {} exceeds the maximum {MAX_PAYLOAD_LEN}",
                    header.len
                ),
            ));
        }
        let len = u64::from(header.len);
        if remaining - (HEADER_LEN as u64) < len {
            break Some((
                offset,
                format!(
                    "record of {len} bytes extends past the end of the file ({} bytes left)",
                    remaining - HEADER_LEN as u64
                ),
            ));
        }
        payload.resize(header.len as usize, 0);
        reader.read_exact(&mut payload).map_err(io_err)?;
        if checksum(header.seq, &payload) != header.crc {
            break Some((offset, "checksum mismatch".into()));
        }
        if header.seq != expected {
            return Err(JournalError::Corrupt {
                path: path.to_path_buf(),
                offset,
                reason: format!(
                    "sequence number {} where {expected} was expected",
                    header.seq
                ),
            });
        }
        offset += HEADER_LEN as u64 + len;
        expected += 1;
    };

    let Some((bad_offset, reason)) = bad else {
        return Ok(Outcome {
            next_seq: expected,
            valid_len: file_len,
            torn: None,
        });
    };
    if !is_last {
        return Err(JournalError::Corrupt {
            path: path.to_path_buf(),
            offset: bad_offset,
            reason: format!("{reason} (in a segment that is not the last one)"),
        });
    }
    if let Some((at, seq)) = valid_record_after(path, bad_offset + 1, file_len, expected)? {
        return Err(JournalError::Corrupt {
            path: path.to_path_buf(),
            offset: bad_offset,
            reason: format!("{reason}, followed by a valid record (seq {seq}) at offset {at}"),
        });
    }
    Ok(Outcome {
        next_seq: expected,
        valid_len: bad_offset,
        torn: Some(Torn {
            reason,
            dropped_bytes: file_len - bad_offset,
        }),
    })
}

/// Looks for any valid record starting in `[from, file_len)`: its presence means the bad record
/// before it is damage in the middle of the journal, not a torn tail. Candidates must have a
/// sequence number that could have been written there (at most one record per header length),
/// which keeps the scan linear on garbage.
fn valid_record_after(
    path: &Path,
    from: u64,
    file_len: u64,
    expected: u64,
) -> Result<Option<(u64, u64)>, JournalError> {
    if from >= file_len {
        return Ok(None);
    }
    let io_err = |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    file.seek(SeekFrom::Start(from)).map_err(io_err)?;
    let mut tail = Vec::new();
    file.take(file_len - from)
        .read_to_end(&mut tail)
        .map_err(io_err)?;
    let max_seq = expected.saturating_add(tail.len() as u64 / HEADER_LEN as u64);
    for start in 0..tail.len() {
        let Some(bytes) = tail
            .get(start..start + HEADER_LEN)
            .and_then(|b| <&[u8; HEADER_LEN]>::try_from(b).ok())
        else {
            break;
        };
        let header = Header::parse(bytes);
        if header.seq > max_seq || !header.len_ok() {
            continue;
        }
        let body = start + HEADER_LEN;
        let Some(payload) = tail.get(body..body + header.len as usize) else {
            continue;
        };
        if checksum(header.seq, payload) == header.crc {
            return Ok(Some((from + start as u64, header.seq)));
        }
    }
    Ok(None)
}

fn truncate(path: &Path, len: u64) -> Result<(), JournalError> {
    let io_err = |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new().write(true).open(path).map_err(io_err)?;
    file.set_len(len).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}
