//! The on-disk encoding of records and segment names (see the module doc of [`super`]).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::JournalError;

/// Bytes before each payload: length (u32 LE), CRC32C (u32 LE), sequence number (u64 LE).
pub const HEADER_LEN: usize = 16;

/// Largest payload accepted on append and on read (1 MiB).
pub const MAX_PAYLOAD_LEN: usize = 1024 * 1024;

const SEGMENT_PREFIX: &str = "journal-";
const SEGMENT_SUFFIX: &str = ".seg";
const SEGMENT_DIGITS: usize = 20;

/// A decoded record header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Header {
    pub(crate) len: u32,
    pub(crate) crc: u32,
    pub(crate) seq: u64,
}

impl Header {
    pub(crate) fn parse(bytes: &[u8; HEADER_LEN]) -> Header {
        let [
            l0,
            l1,
            l2,
            l3,
            c0,
            c1,
            c2,
            c3,
            s0,
            s1,
            s2,
            s3,
            s4,
            s5,
            s6,
            s7,
        ] = *bytes;
        Header {
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            crc: u32::from_le_bytes([c0, c1, c2, c3]),
            seq: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
        }
    }

    /// Whether the length fits the limit (checked before anything is read or allocated).
    pub(crate) fn len_ok(&self) -> bool {
        usize::try_from(self.len).is_ok_and(|len| len <= MAX_PAYLOAD_LEN)
    }
}

/// CRC32C over the sequence number's 8 LE bytes followed by the payload.
pub(crate) fn checksum(seq: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload)
}

/// Appends one encoded record to `buf`. The caller has checked the payload length.
pub(crate) fn encode(buf: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    // Lengths are checked against MAX_PAYLOAD_LEN (< u32::MAX) before they get here.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&checksum(seq, payload).to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Encoded size of a record with this payload length.
pub(crate) fn encoded_len(payload_len: usize) -> usize {
    HEADER_LEN.saturating_add(payload_len)
}

/// `journal-<first seq, 20 digits>.seg`.
pub(crate) fn segment_name(first_seq: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_seq:020}{SEGMENT_SUFFIX}")
}

/// The segments of `dir`, sorted by first sequence number. Files that do not look like segments
/// are ignored; a file named like a segment but with a malformed number is an error (it may be a
/// renamed segment, and skipping it could drop records).
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let io_err = |source| JournalError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(digits) = name
            .strip_prefix(SEGMENT_PREFIX)
            .and_then(|rest| rest.strip_suffix(SEGMENT_SUFFIX))
        else {
            continue;
        };
        let first = (digits.len() == SEGMENT_DIGITS && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| JournalError::Corrupt {
                path: entry.path(),
                offset: 0,
                reason: "segment file name is not journal-<20 digits>.seg".into(),
            })?;
        segments.push((first, entry.path()));
    }
    segments.sort_unstable_by_key(|(first, _)| *first);
    Ok(segments)
}

/// fsyncs a directory, making the creation (or removal) of its entries durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads the record `seq` whose header is at `offset` in the segment `path`: its payload, once
/// its length, sequence number and checksum are checked.
pub(crate) fn read_record_at(path: &Path, seq: u64, offset: u64) -> Result<Vec<u8>, JournalError> {
    use std::os::unix::fs::FileExt;
    let io_err = |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let corrupt = |reason: String| JournalError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    let file = File::open(path).map_err(io_err)?;
    let mut bytes = [0u8; HEADER_LEN];
    file.read_exact_at(&mut bytes, offset).map_err(io_err)?;
    let header = Header::parse(&bytes);
    if !header.len_ok() {
        return Err(corrupt(format!(
            "record length {} exceeds the maximum",
            header.len
        )));
    }
    if header.seq != seq {
        return Err(corrupt(format!(
            "sequence number {} where {seq} was expected",
            header.seq
        )));
    }
    let mut payload = vec![0u8; header.len as usize];
    file.read_exact_at(&mut payload, offset + HEADER_LEN as u64)
        .map_err(io_err)?;
    if checksum(seq, &payload) != header.crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok(payload)
}
