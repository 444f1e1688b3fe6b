//! Backup and restore of what cannot be rebuilt: the journal (the source of truth) and the
//! broker's secret keys. sled's derived state is left out: the broker rebuilds it by replaying
//! the journal at its next start.
//!
//! # A backup
//!
//! A directory (0700; every file 0600):
//!
//! | path | what |
//! | --- | --- |
//! | `manifest.json` | the [`Manifest`], written last: a backup without one is incomplete |
//! | `journal/journal-<20 digits>.seg` | the journal's segments, the last one cut at its last record that verifies |
//! | `keys/<name>` | every key file of `DATA/keys` |
//!
//! **It holds the broker's secret keys** (attestation signing key, log key, pseudonym keys):
//! whoever reads it can sign attestations and checkpoints in the broker's name and link
//! pseudonyms to people. Store it like those keys.
//!
//! # Safe while the broker runs
//!
//! Segments are append-only and only the tail of the last one changes. [`backup`] copies each
//! segment, reads the copy back with the journal's own reader ([`JournalReader`]: lengths,
//! CRC32C, contiguous sequence numbers) and cuts the copy of the last segment at its last
//! record that verifies, so a torn or half-written tail never enters a backup. Damage in any
//! other segment fails the backup. One residual case: a record that the writer had written but
//! whose `fdatasync` then failed (the broker truncates it and reuses its sequence number) can be
//! in a backup although it was never acknowledged; restoring it is refused when the journal in
//! place or an auditor's checkpoint (`--trusted-checkpoint`) covers that entry, since the roots
//! then differ.
//!
//! # Restore
//!
//! [`restore`] verifies the whole backup (file hashes, then every record, the record count
//! and the root) before it changes anything in the data directory, refuses to put the log behind a checkpoint already
//! handed out (the journal already in the data directory, the auditors' trusted checkpoints)
//! unless forced, refuses to touch the data directory of a running broker (sled's lock on
//! `DATA/state`, which it holds for the whole restore), then swaps the journal and the keys in
//! and removes the derived state. The journal and keys it replaces are moved to
//! `DATA/replaced-<time>/`, never deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tlog_tiles::Hash;

use unefois_journal::{HEADER_LEN, JournalError, JournalReader};
use unefois_tlog::checkpoint::{VerifiedCheckpoint, log_key_names, origin, verify_checkpoint};

use crate::key_files::{KEYS as KEY_FILES, KEYS_DIR as KEYS, LOG_KEY, Since};

/// The `format` of a manifest.
pub const FORMAT: &str = "unefois-backup";
/// The manifest version this code writes and reads.
pub const VERSION: u32 = 1;
/// The manifest's file name in a backup.
pub const MANIFEST: &str = "manifest.json";

/// Key files without which a backup is useless: every key the broker has had since its first
/// version ([`KEY_FILES`]: the log key, the attestation key, the pseudonym keys; without
/// them, restored consents and mandates could no longer be found by subject, and the broker
/// refuses to start on the restored journal). A backup fails when one is missing.
pub fn required_keys() -> impl Iterator<Item = &'static str> {
    KEY_FILES
        .iter()
        .filter(|k| k.since == Since::FirstVersion)
        .map(|k| k.file)
}

const JOURNAL: &str = "journal";
const STATE: &str = "state";
const STAGING: &str = ".restore-staging";
const SEGMENT_PREFIX: &str = "journal-";
const SEGMENT_SUFFIX: &str = ".seg";
const SEGMENT_DIGITS: usize = 20;
/// Largest manifest read (a manifest lists one line per segment and key).
const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;
/// Largest trusted checkpoint file read (a signed note is a few hundred bytes).
const MAX_CHECKPOINT_BYTES: u64 = 64 * 1024;
/// sled's cache while restore holds the derived state's lock (nothing is read from it).
const LOCK_CACHE_BYTES: u64 = 1024 * 1024;

/// What can go wrong with a backup or a restore.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The journal being backed up (or replaced) is damaged where acknowledged records live.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The directory to back up is not a broker's data directory.
    #[error("{}: not a broker data directory: {reason}", path.display())]
    NotADataDir {
        /// The data directory.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// The backup's output already exists.
    #[error("{} already exists: a backup is written to a new directory", path.display())]
    OutputExists {
        /// The output path.
        path: PathBuf,
    },
    /// The manifest is missing, unreadable or of an unknown version.
    #[error("{}: not a complete backup: {reason}", path.display())]
    BadManifest {
        /// The manifest's path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file of the backup is missing, altered, or does not hold what the manifest says.
    #[error("backup file {file} {reason}; the backup is damaged or was altered, refusing it")]
    Damaged {
        /// The file, relative to the backup's directory (`journal/journal-….seg`, `keys/…`).
        file: String,
        /// What is wrong, as a predicate (`is missing`).
        reason: String,
    },
    /// A trusted checkpoint file is unreadable or not signed by the backed-up log key.
    #[error("trusted checkpoint {}: {reason}", path.display())]
    BadCheckpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The backup's first entries are not those a trusted checkpoint commits to.
    #[error(
        "refusing to restore: the backup's first {size} entries do not have the root of the \
         trusted checkpoint {} ({size} entries): it is not a copy of the log that checkpoint \
         describes",
        path.display()
    )]
    NotThatLog {
        /// The checkpoint file.
        path: PathBuf,
        /// Its tree size.
        size: u64,
    },
    /// The restore would put the log behind a checkpoint already handed out.
    #[error(
        "refusing to restore: it would fork the log: checkpoints up to size {handed_out} were \
         handed out ({evidence}); the backup has {backup_size} entries. A restore is for a data \
         directory lost or damaged: over a live history it would erase entries that auditors \
         and receipts may already hold, and the log would no longer extend their checkpoints"
    )]
    Behind {
        /// The largest tree size known to have been checkpointed.
        handed_out: u64,
        /// The backup's tree size.
        backup_size: u64,
        /// Where that size comes from.
        evidence: String,
    },
    /// The journal in place holds entries that differ from the backup's.
    #[error(
        "refusing to restore: it would fork the log: the {size} entries of the journal in {} \
         are not the backup's first {size} entries",
        path.display()
    )]
    Diverges {
        /// The journal in place.
        path: PathBuf,
        /// Its number of entries.
        size: u64,
    },
    /// A broker holds the data directory.
    #[error(
        "{}: a broker is running on this data directory (its derived state is locked); stop it \
         before restoring",
        path.display()
    )]
    Running {
        /// The data directory.
        path: PathBuf,
    },
    /// The derived state exists but cannot be opened to take its lock.
    #[error(
        "cannot open the derived state {} to check that no broker uses it: {source}; if no \
         broker runs there, remove that directory and retry",
        path.display()
    )]
    State {
        /// The derived state's directory.
        path: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
}

impl BackupError {
    /// Whether this refusal protects the log from a fork, and `force` would override it.
    pub fn is_fork(&self) -> bool {
        matches!(
            self,
            BackupError::Behind { .. } | BackupError::Diverges { .. }
        )
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The description of a backup, `manifest.json`.
///
/// It records the SHA-256 of every file, the tree size (number of journal records) and the RFC
/// 9162 root over those records, and it is not signed. A signature would add nothing: the
/// manifest sits beside the log key, so whoever can alter the backup can also re-sign it. The
/// hashes catch damage and edits that did not also rewrite the manifest; the record checks
/// (CRC32C, contiguous sequence numbers, exact count, root) catch a manifest that describes a
/// journal the backup does not hold. What an attacker holding the backup cannot forge is a
/// checkpoint an auditor kept: the root is the one the broker's checkpoint of `tree_size`
/// signs (checkpoints are deterministic), and restore compares the backup's roots with the
/// trusted checkpoints it is given.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`]; a restore refuses versions it does not know.
    pub version: u32,
    /// When the backup was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    /// Number of journal records (audit entries) in the backup.
    pub tree_size: u64,
    /// Hex RFC 9162 root of the tree of those records (the empty tree's root when none).
    pub root: String,
    /// Every file of the backup but the manifest.
    pub files: Vec<FileEntry>,
}

/// One file of a backup.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileEntry {
    /// Relative path: `journal/journal-<20 digits>.seg` or `keys/<name>`.
    pub path: String,
    /// Its length.
    pub bytes: u64,
    /// Hex SHA-256 of its content.
    pub sha256: String,
    /// For a segment, the number of records it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
}

/// What [`backup`] wrote.
#[derive(Clone, Debug)]
pub struct BackupReport {
    /// Number of journal records backed up.
    pub tree_size: u64,
    /// Their RFC 9162 root.
    pub root: [u8; 32],
    /// Number of segment files.
    pub segments: usize,
    /// Number of key files.
    pub keys: usize,
    /// Bytes left out at the journal's tail: a record being written, or a torn one.
    pub tail_bytes_left_out: u64,
}

/// How [`restore`] decides.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Restore even when it would put the log behind a checkpoint already handed out.
    pub force: bool,
    /// Checkpoint files auditors kept (C2SP signed notes, as `unefois audit verify` saves
    /// them); each must be signed by the backed-up log key.
    pub trusted_checkpoints: Vec<PathBuf>,
}

/// What [`restore`] did.
#[derive(Clone, Debug)]
pub struct RestoreReport {
    /// Number of journal records restored.
    pub tree_size: u64,
    /// Their RFC 9162 root.
    pub root: [u8; 32],
    /// Number of key files restored.
    pub keys: usize,
    /// Where the journal and keys that were in place went, if there were any.
    pub replaced: Option<PathBuf>,
    /// The fork refusals that `force` overrode, to print as warnings.
    pub overridden: Vec<String>,
}

/// Backs up the journal and the keys of the data directory `data_dir` (a broker may be running
/// on it) into the new directory `out`; on failure, `out` is removed.
pub fn backup(data_dir: &Path, out: &Path) -> Result<BackupReport, BackupError> {
    let existed = fs::symlink_metadata(out).is_ok();
    let result = backup_into(data_dir, out);
    if result.is_err() && !existed {
        let _ = fs::remove_dir_all(out);
    }
    result
}

fn backup_into(data_dir: &Path, out: &Path) -> Result<BackupReport, BackupError> {
    let journal_dir = data_dir.join(JOURNAL);
    let keys_dir = data_dir.join(KEYS);
    if !journal_dir.is_dir() {
        return Err(BackupError::NotADataDir {
            path: data_dir.to_path_buf(),
            reason: format!("no journal directory {}", journal_dir.display()),
        });
    }
    for key in required_keys() {
        if !keys_dir.join(key).is_file() {
            return Err(BackupError::NotADataDir {
                path: data_dir.to_path_buf(),
                reason: format!("no key file {}", keys_dir.join(key).display()),
            });
        }
    }
    if fs::symlink_metadata(out).is_ok() {
        return Err(BackupError::OutputExists {
            path: out.to_path_buf(),
        });
    }
    create_private_dir(out)?;
    let out_journal = out.join(JOURNAL);
    let out_keys = out.join(KEYS);
    create_private_dir(&out_journal)?;
    create_private_dir(&out_keys)?;

    // Copy first, then verify the copy: what is checked is exactly what the backup holds.
    let mut copies = Vec::new();
    for (first, path) in list_segments(&journal_dir)? {
        let dest = out_journal.join(segment_name(first));
        copy_private(&path, &dest)?;
        copies.push((first, dest));
    }
    let mut tree = Frontier::default();
    let read =
        read_journal(&copies, Until::LastValid, |_, payload| tree.push(payload)).map_err(|e| {
            match e {
                // Name the damaged segment of the journal, not its copy.
                BackupError::Journal(JournalError::Corrupt {
                    path,
                    offset,
                    reason,
                }) => BackupError::Journal(JournalError::Corrupt {
                    path: path
                        .file_name()
                        .map_or(path.clone(), |name| journal_dir.join(name)),
                    offset,
                    reason,
                }),
                other => other,
            }
        })?;
    let mut files = Vec::new();
    let mut tail_bytes_left_out = 0;
    for segment in &read.segments {
        let len = fs::metadata(&segment.path)
            .map_err(io_err(&segment.path))?
            .len();
        if segment.records == 0 {
            // Only the last segment can be empty (just rolled over, or a torn first record).
            tail_bytes_left_out += len;
            fs::remove_file(&segment.path).map_err(io_err(&segment.path))?;
            continue;
        }
        if segment.bytes < len {
            tail_bytes_left_out += len - segment.bytes;
            let file = OpenOptions::new()
                .write(true)
                .open(&segment.path)
                .map_err(io_err(&segment.path))?;
            file.set_len(segment.bytes)
                .and_then(|()| file.sync_all())
                .map_err(io_err(&segment.path))?;
        }
        let (bytes, sha256) = hash_file(&segment.path)?;
        files.push(FileEntry {
            path: format!("{JOURNAL}/{}", segment_name(segment.first)),
            bytes,
            sha256: hex::encode(sha256),
            records: Some(segment.records),
        });
    }
    let segments = files.len();

    let mut keys = 0;
    for entry in fs::read_dir(&keys_dir).map_err(io_err(&keys_dir))? {
        let entry = entry.map_err(io_err(&keys_dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_file = entry.file_type().map_err(io_err(&keys_dir))?.is_file();
        // A `.tmp` file is a key being created (keys.rs writes, syncs, then renames).
        if !is_file || name.ends_with(".tmp") || !valid_name(name) {
            continue;
        }
        let (bytes, sha256) = copy_private(&entry.path(), &out_keys.join(name))?;
        files.push(FileEntry {
            path: format!("{KEYS}/{name}"),
            bytes,
            sha256: hex::encode(sha256),
            records: None,
        });
        keys += 1;
    }
    sync_dir(&out_journal)?;
    sync_dir(&out_keys)?;

    let root = tree.root();
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        created_at: time::OffsetDateTime::now_utc(),
        tree_size: read.size,
        root: hex::encode(root),
        files,
    };
    write_manifest(out, &manifest)?;
    Ok(BackupReport {
        tree_size: read.size,
        root,
        segments,
        keys,
        tail_bytes_left_out,
    })
}

/// Restores the backup in `from` into the data directory `data_dir`, which no broker may be
/// running on: verifies the whole backup, refuses a fork unless `options.force`, then puts the
/// journal and keys in place and removes the derived state (the broker rebuilds it at start).
pub fn restore(
    from: &Path,
    data_dir: &Path,
    options: &RestoreOptions,
) -> Result<RestoreReport, BackupError> {
    // 1. The backup's files, before anything is written.
    let manifest = read_manifest(from)?;
    let contents = check_files(from, &manifest)?;
    let log_seed = read_log_seed(from)?;
    // 2. The auditors' checkpoints, signed by the backed-up log key.
    let trusted = options
        .trusted_checkpoints
        .iter()
        .map(|path| read_trusted(path, &log_seed).map(|c| (path.clone(), c)))
        .collect::<Result<Vec<_>, _>>()?;
    // 3. No broker there, and none while we work.
    let mut guard = Restoring::lock(data_dir)?;
    // 4. The journal in place, if any, and the newest checkpoint the broker handed out as its
    // derived state keeps it: the one witness left of a journal lost with its volume.
    let existing = read_existing(&data_dir.join(JOURNAL), manifest.tree_size)?;
    let handed_out = guard.handed_out(&log_seed);
    // 5. Every record of the backup, with the roots at the sizes to compare.
    let mut roots: BTreeMap<u64, [u8; 32]> = BTreeMap::new();
    let mut wanted: BTreeSet<u64> = trusted.iter().map(|(_, c)| c.size).collect();
    if let Some(existing) = &existing {
        wanted.insert(existing.size);
    }
    if let Some(checkpoint) = &handed_out {
        wanted.insert(checkpoint.size);
    }
    let root = verify_records(&manifest, &contents.segments, &wanted, &mut roots)?;
    let backup_size = manifest.tree_size;

    // 6. Forks.
    let mut behind: Vec<(u64, String)> = Vec::new();
    let mut refusals = Vec::new();
    for (path, checkpoint) in &trusted {
        if checkpoint.size > backup_size {
            behind.push((
                checkpoint.size,
                format!(
                    "the trusted checkpoint {} is of {} entries",
                    path.display(),
                    checkpoint.size
                ),
            ));
        } else if checkpoint.size > 0 && roots.get(&checkpoint.size) != Some(&checkpoint.root) {
            return Err(BackupError::NotThatLog {
                path: path.clone(),
                size: checkpoint.size,
            });
        }
    }
    if let Some(checkpoint) = &handed_out {
        let state = data_dir.join(STATE);
        if checkpoint.size > backup_size {
            behind.push((
                checkpoint.size,
                format!(
                    "the broker's derived state in {} last handed out a checkpoint of {} \
                     entries",
                    state.display(),
                    checkpoint.size
                ),
            ));
        } else if checkpoint.size > 0 && roots.get(&checkpoint.size) != Some(&checkpoint.root) {
            refusals.push(BackupError::Diverges {
                path: state,
                size: checkpoint.size,
            });
        }
    }
    if let Some(existing) = &existing {
        let journal = data_dir.join(JOURNAL);
        if existing.at_least > backup_size {
            let damage = existing
                .damage
                .as_ref()
                .map(|d| format!(", damaged: {d}"))
                .unwrap_or_default();
            behind.push((
                existing.at_least,
                format!(
                    "the journal in {} holds {} entries{damage}, and {}",
                    journal.display(),
                    existing.at_least,
                    lacking(existing, backup_size)
                ),
            ));
        } else if existing.size > 0 && roots.get(&existing.size) != Some(&existing.root) {
            refusals.push(BackupError::Diverges {
                path: journal,
                size: existing.size,
            });
        }
    }
    if let Some(handed_out) = behind.iter().map(|(size, _)| *size).max() {
        let evidence = behind
            .into_iter()
            .map(|(_, what)| what)
            .collect::<Vec<_>>()
            .join("; ");
        refusals.insert(
            0,
            BackupError::Behind {
                handed_out,
                backup_size,
                evidence,
            },
        );
    }
    if !options.force && !refusals.is_empty() {
        return Err(refusals.remove(0));
    }
    let overridden = refusals.iter().map(ToString::to_string).collect();

    // 7. Stage a verified copy beside the data, then swap it in.
    let staging = guard.staging()?;
    for file in &manifest.files {
        let source = from.join(&file.path);
        let (bytes, sha256) = copy_private(&source, &staging.join(&file.path))?;
        if bytes != file.bytes || hex::encode(sha256) != file.sha256 {
            return Err(BackupError::Damaged {
                file: file.path.clone(),
                reason: "changed while it was being restored".into(),
            });
        }
    }
    sync_dir(&staging.join(JOURNAL))?;
    sync_dir(&staging.join(KEYS))?;
    let replaced = guard.swap_in(&staging)?;
    guard.finish()?;
    Ok(RestoreReport {
        tree_size: backup_size,
        root,
        keys: contents.keys,
        replaced,
        overridden,
    })
}

/// Number of records in the journal of `data_dir`, up to the last one that verifies (a torn
/// tail is not counted, as the broker cuts it at start).
pub fn journal_size(data_dir: &Path) -> Result<u64, BackupError> {
    let dir = data_dir.join(JOURNAL);
    if !dir.is_dir() {
        return Ok(0);
    }
    let segments = list_segments(&dir)?;
    Ok(read_journal(&segments, Until::LastValid, |_, _| {})?.size)
}

// ---------------------------------------------------------------- reading journals

/// How far [`read_journal`] reads.
#[derive(Clone, Copy)]
enum Until {
    /// Exactly this many records; any error fails.
    Exactly(u64),
    /// Up to the last record that verifies: a bad record in the last segment ends the journal
    /// (a torn tail, or a record being written); anywhere else it fails.
    LastValid,
    /// Up to the first bad record anywhere (a damaged journal about to be replaced).
    FirstBad,
}

/// One segment as read.
struct SegmentRead {
    first: u64,
    path: PathBuf,
    records: u64,
    /// Bytes of its valid records.
    bytes: u64,
}

struct JournalRead {
    segments: Vec<SegmentRead>,
    size: u64,
    /// The reader error that ended a lenient read (at a clean end too: the reader then reports
    /// the next record missing).
    stopped: Option<JournalError>,
}

/// Reads the records of `segments` (sorted by first sequence number) with the journal's own
/// reader, which checks lengths, CRC32C and contiguous sequence numbers, and calls `each` on
/// each record in order.
fn read_journal(
    segments: &[(u64, PathBuf)],
    until: Until,
    mut each: impl FnMut(u64, &[u8]),
) -> Result<JournalRead, BackupError> {
    let mut read: Vec<SegmentRead> = segments
        .iter()
        .map(|(first, path)| SegmentRead {
            first: *first,
            path: path.clone(),
            records: 0,
            bytes: 0,
        })
        .collect();
    // The reader starts at the segment holding record 0 only if there is one.
    if let Some(first) = read.first()
        && first.first != 0
    {
        return Err(JournalError::Corrupt {
            path: first.path.clone(),
            offset: 0,
            reason: format!(
                "the first segment starts at sequence number {} (a segment is missing)",
                first.first
            ),
        }
        .into());
    }
    let end = match until {
        Until::Exactly(n) => n,
        Until::LastValid | Until::FirstBad => u64::MAX,
    };
    let last = segments.last().map(|(_, p)| p.as_path());
    let mut current = 0usize;
    let mut size = 0u64;
    let mut stopped = None;
    for item in JournalReader::new(segments.to_vec(), 0, end) {
        match item {
            Ok(record) => {
                while read.get(current + 1).is_some_and(|s| s.first <= record.seq) {
                    current += 1;
                }
                if let Some(segment) = read.get_mut(current) {
                    segment.records += 1;
                    segment.bytes += (HEADER_LEN + record.payload.len()) as u64;
                }
                each(record.seq, &record.payload);
                size = record.seq + 1;
            }
            Err(e) => {
                let ends = match until {
                    Until::Exactly(_) => false,
                    Until::LastValid => is_bad_record(&e) && Some(error_path(&e)) == last,
                    Until::FirstBad => is_bad_record(&e),
                };
                if !ends {
                    return Err(e.into());
                }
                stopped = Some(e);
                break;
            }
        }
    }
    // Segment names must follow on from each other: the reader stops before opening the
    // segments past the end, and at the tail it cannot tell a misnamed segment from a torn one.
    // (A damaged journal read up to its first bad record is only used up to there.)
    if !matches!(until, Until::FirstBad) {
        let mut expected = 0u64;
        for segment in &read {
            if segment.first != expected {
                return Err(JournalError::Corrupt {
                    path: segment.path.clone(),
                    offset: 0,
                    reason: format!(
                        "segment starts at sequence number {} where {expected} was expected",
                        segment.first
                    ),
                }
                .into());
            }
            expected += segment.records;
        }
    }
    Ok(JournalRead {
        segments: read,
        size,
        stopped,
    })
}

/// Whether a reader error is a bad record (what a torn tail looks like), not a failing disk.
fn is_bad_record(e: &JournalError) -> bool {
    match e {
        JournalError::Corrupt { .. } => true,
        JournalError::Io { source, .. } => source.kind() == io::ErrorKind::UnexpectedEof,
        _ => false,
    }
}

fn error_path(e: &JournalError) -> &Path {
    match e {
        JournalError::Corrupt { path, .. } | JournalError::Io { path, .. } => path,
        _ => Path::new(""),
    }
}

/// The first sequence number in a segment's name, `journal-<20 digits>.seg` (the journal's
/// on-disk format, journal/src/lib.rs); `None` for another file.
fn segment_first(name: &str) -> Option<Result<u64, ()>> {
    let digits = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    Some(
        (digits.len() == SEGMENT_DIGITS && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse::<u64>().ok())
            .flatten()
            .ok_or(()),
    )
}

fn segment_name(first: u64) -> String {
    format!("{SEGMENT_PREFIX}{first:0SEGMENT_DIGITS$}{SEGMENT_SUFFIX}")
}

/// The segments of a journal directory, sorted; other files are ignored, as the journal does.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, BackupError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(first) = name.to_str().and_then(segment_first) else {
            continue;
        };
        let first = first.map_err(|()| JournalError::Corrupt {
            path: entry.path(),
            offset: 0,
            reason: "segment file name is not journal-<20 digits>.seg".into(),
        })?;
        segments.push((first, entry.path()));
    }
    segments.sort_unstable_by_key(|(first, _)| *first);
    Ok(segments)
}

/// The RFC 9162 tree of a stream of entries, keeping only the roots of its complete subtrees
/// (O(log n) memory, where the audit module's `MemoryTree` keeps every stored hash): a journal
/// can be far larger than memory.
#[derive(Default)]
struct Frontier {
    /// Complete subtrees, left to right, by decreasing height: `(height, hash)`.
    subtrees: Vec<(u32, Hash)>,
    size: u64,
}

impl Frontier {
    fn push(&mut self, entry: &[u8]) {
        let mut hash = tlog_tiles::record_hash(entry);
        let mut height = 0u32;
        while let Some(&(h, left)) = self.subtrees.last()
            && h == height
        {
            self.subtrees.pop();
            hash = tlog_tiles::node_hash(left, hash);
            height += 1;
        }
        self.subtrees.push((height, hash));
        self.size += 1;
    }

    /// The root of the tree of the entries pushed so far: RFC 9162 splits at the largest power
    /// of two, so the root folds the complete subtrees from the right.
    fn root(&self) -> [u8; 32] {
        let mut from_right = self.subtrees.iter().rev();
        let Some(&(_, mut root)) = from_right.next() else {
            return tlog_tiles::EMPTY_HASH.0;
        };
        for &(_, left) in from_right {
            root = tlog_tiles::node_hash(left, root);
        }
        root.0
    }
}

// ---------------------------------------------------------------- verifying a backup

/// What the manifest lists, checked against the files.
struct Contents {
    /// `(first sequence number, path in the backup)`, sorted.
    segments: Vec<(u64, PathBuf)>,
    keys: usize,
}

fn read_manifest(from: &Path) -> Result<Manifest, BackupError> {
    let path = from.join(MANIFEST);
    let bad = |reason: String| BackupError::BadManifest {
        path: path.clone(),
        reason,
    };
    let file = File::open(&path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => bad("no manifest (an interrupted backup has none)".into()),
        _ => bad(e.to_string()),
    })?;
    let mut text = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| bad(e.to_string()))?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(bad(format!("larger than {MAX_MANIFEST_BYTES} bytes")));
    }
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    if manifest.format != FORMAT || manifest.version != VERSION {
        return Err(bad(format!(
            "format {:?} version {}, this broker reads {FORMAT:?} version {VERSION}",
            manifest.format, manifest.version
        )));
    }
    Ok(manifest)
}

/// Checks every file the manifest lists (a safe relative path, present, a plain file, of its
/// length and SHA-256), that nothing else is in `journal/` and `keys/`, and that the required
/// keys are there.
fn check_files(from: &Path, manifest: &Manifest) -> Result<Contents, BackupError> {
    let mut listed = BTreeSet::new();
    let mut segments = Vec::new();
    let mut keys = 0;
    for file in &manifest.files {
        let damaged = |reason: &str| BackupError::Damaged {
            file: file.path.clone(),
            reason: reason.into(),
        };
        let (dir, name) = file
            .path
            .split_once('/')
            .filter(|(_, name)| valid_name(name))
            .ok_or_else(|| damaged("is not a path a backup holds"))?;
        match (dir, segment_first(name)) {
            (JOURNAL, Some(Ok(first))) => segments.push((first, from.join(&file.path))),
            (KEYS, _) => keys += 1,
            _ => return Err(damaged("is not a path a backup holds")),
        }
        if !listed.insert(file.path.clone()) {
            return Err(damaged("is listed twice in the manifest"));
        }
        let path = from.join(&file.path);
        let kind = match fs::symlink_metadata(&path) {
            Ok(meta) => meta.file_type(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(damaged("is missing")),
            Err(e) => return Err(BackupError::Io { path, source: e }),
        };
        if !kind.is_file() {
            return Err(damaged("is not a plain file"));
        }
        let (bytes, sha256) = hash_file(&path)?;
        if bytes != file.bytes {
            return Err(damaged(&format!(
                "has {bytes} bytes where the manifest says {}",
                file.bytes
            )));
        }
        if hex::encode(sha256) != file.sha256 {
            return Err(damaged("does not have the SHA-256 the manifest records"));
        }
    }
    for dir in [JOURNAL, KEYS] {
        let path = from.join(dir);
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(BackupError::Io { path, source: e }),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&path))?;
            let name = format!("{dir}/{}", entry.file_name().to_string_lossy());
            if !listed.contains(&name) {
                return Err(BackupError::Damaged {
                    file: name,
                    reason: "is not in the manifest".into(),
                });
            }
        }
    }
    for key in required_keys() {
        let name = format!("{KEYS}/{key}");
        if !listed.contains(&name) {
            return Err(BackupError::Damaged {
                file: name,
                reason: "is missing (the manifest does not list it)".into(),
            });
        }
    }
    segments.sort_unstable_by_key(|(first, _)| *first);
    Ok(Contents { segments, keys })
}

/// Reads every record (exactly `tree_size`), checks each segment holds nothing else and the
/// count and root the manifest records; keeps the roots at the sizes in `wanted`.
fn verify_records(
    manifest: &Manifest,
    segments: &[(u64, PathBuf)],
    wanted: &BTreeSet<u64>,
    roots: &mut BTreeMap<u64, [u8; 32]>,
) -> Result<[u8; 32], BackupError> {
    let entry_of = |path: &Path| {
        path.file_name()
            .map(|n| format!("{JOURNAL}/{}", n.to_string_lossy()))
            .unwrap_or_default()
    };
    let mut tree = Frontier::default();
    let read = read_journal(
        segments,
        Until::Exactly(manifest.tree_size),
        |_, payload| {
            tree.push(payload);
            if wanted.contains(&tree.size) {
                roots.insert(tree.size, tree.root());
            }
        },
    )
    .map_err(|e| match e {
        BackupError::Journal(e) => BackupError::Damaged {
            file: entry_of(error_path(&e)),
            reason: format!("has records that do not verify: {e}"),
        },
        other => other,
    })?;
    if read.size != manifest.tree_size {
        return Err(BackupError::Damaged {
            file: MANIFEST.into(),
            reason: format!(
                "records {} entries, the journal holds {}",
                manifest.tree_size, read.size
            ),
        });
    }
    for segment in &read.segments {
        let file = entry_of(&segment.path);
        let listed = manifest.files.iter().find(|f| f.path == file);
        let bytes = listed.map_or(0, |f| f.bytes);
        if segment.bytes != bytes {
            return Err(BackupError::Damaged {
                file,
                reason: format!(
                    "holds {} bytes past its last record of the backup's {} entries",
                    bytes.saturating_sub(segment.bytes),
                    manifest.tree_size
                ),
            });
        }
        if listed
            .and_then(|f| f.records)
            .is_some_and(|n| n != segment.records)
        {
            return Err(BackupError::Damaged {
                file,
                reason: "does not hold the number of records the manifest says".into(),
            });
        }
    }
    let root = tree.root();
    if hex::encode(root) != manifest.root {
        return Err(BackupError::Damaged {
            file: MANIFEST.into(),
            reason: "records a root that is not the root of the backed-up records".into(),
        });
    }
    Ok(root)
}

fn read_log_seed(from: &Path) -> Result<[u8; 32], BackupError> {
    let path = from.join(KEYS).join(LOG_KEY);
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    bytes.try_into().map_err(|_| BackupError::Damaged {
        file: format!("{KEYS}/{LOG_KEY}"),
        reason: "is not a 32-byte key".into(),
    })
}

/// A trusted checkpoint, verified against the backed-up log key under the origin it names.
fn read_trusted(path: &Path, log_seed: &[u8; 32]) -> Result<VerifiedCheckpoint, BackupError> {
    let bad = |reason: String| BackupError::BadCheckpoint {
        path: path.to_path_buf(),
        reason,
    };
    let mut text = String::new();
    File::open(path)
        .and_then(|f| f.take(MAX_CHECKPOINT_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| bad(e.to_string()))?;
    if text.len() as u64 > MAX_CHECKPOINT_BYTES {
        return Err(bad(format!("larger than {MAX_CHECKPOINT_BYTES} bytes")));
    }
    signed_by_log_key(&text, log_seed).map_err(bad)
}

/// The checkpoint `text`, when signed by the log key of seed `log_seed`.
fn signed_by_log_key(text: &str, log_seed: &[u8; 32]) -> Result<VerifiedCheckpoint, String> {
    // The origin is `<trust domain>/unefois/audit`: the key's name under that trust domain.
    let trust_domain = text
        .lines()
        .next()
        .and_then(|origin_line| origin_line.strip_suffix(origin("").as_str()))
        .ok_or_else(|| "not a checkpoint of an Une Fois audit log".to_string())?;
    let public = ed25519_dalek::SigningKey::from_bytes(log_seed).verifying_key();
    verify_checkpoint(&log_key_names(trust_domain, &public).vkey, text)
        .map_err(|e| format!("not a checkpoint of the backed-up log key: {e}"))
}

// ---------------------------------------------------------------- the data directory

/// The journal already in the data directory.
struct Existing {
    /// Records up to the first bad one.
    size: u64,
    /// The root of those records.
    root: [u8; 32],
    /// The number of records it once held, at least: past damage, the last segment's name
    /// still tells where it started.
    at_least: u64,
    damage: Option<String>,
    /// The records from the backup's size on, named (what a restore would take away).
    past_backup: Vec<String>,
}

/// How many of the entries a backup lacks a refusal names one by one.
const NAMED_ENTRIES: usize = 8;

/// One entry named for an operator: `#12 2026-12-03T10:00:00Z consent_granted (mairie-lyon)`.
/// Kind, time and participant only: never a subject or a claim.
fn name_entry(seq: u64, payload: &[u8]) -> String {
    match unefois_domain::event::Record::decode(payload) {
        Ok(record) => {
            let time = unefois_tlog::entry::time_to_the_second(record.time);
            let kind = record.event.kind();
            match record.event.participant() {
                Some(who) => format!("#{seq} {time} {kind} ({who})"),
                None => format!("#{seq} {time} {kind}"),
            }
        }
        Err(_) => format!("#{seq} (not a record this broker reads)"),
    }
}

/// The entries a backup of `backup_size` lacks, named: the first few, then how many more.
fn lacking(existing: &Existing, backup_size: u64) -> String {
    let count = existing.at_least - backup_size;
    let mut named = existing.past_backup.join("; ");
    let unnamed = count.saturating_sub(existing.past_backup.len() as u64);
    if unnamed > 0 {
        if !named.is_empty() {
            named.push_str("; ");
        }
        named.push_str(&format!("and {unnamed} more"));
    }
    if count == 1 {
        format!("the backup lacks its entry #{backup_size}: {named}")
    } else {
        format!(
            "the backup lacks its entries #{backup_size} to #{}: {named}",
            existing.at_least - 1
        )
    }
}

fn read_existing(dir: &Path, backup_size: u64) -> Result<Option<Existing>, BackupError> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let segments = list_segments(dir)?;
    let mut tree = Frontier::default();
    let mut past_backup = Vec::new();
    let read = read_journal(&segments, Until::FirstBad, |seq, payload| {
        tree.push(payload);
        if seq >= backup_size && past_backup.len() < NAMED_ENTRIES {
            past_backup.push(name_entry(seq, payload));
        }
    })?;
    let named = segments.last().map_or(0, |(first, _)| *first);
    let last = segments.last().map(|(_, p)| p.as_path());
    // A bad record at the tail of the last segment is a torn tail, never acknowledged.
    let damage = read
        .stopped
        .filter(|e| Some(error_path(e)) != last)
        .map(|e| e.to_string());
    Ok(Some(Existing {
        size: read.size,
        root: tree.root(),
        at_least: read.size.max(named),
        damage,
        past_backup,
    }))
}

/// A restore in progress: holds sled's lock on `DATA/state` (as a broker does while it runs,
/// so none can start), and on failure removes what it created.
struct Restoring {
    data_dir: PathBuf,
    state: PathBuf,
    db: Option<sled::Db>,
    created_data_dir: bool,
    created_state: bool,
    staging: Option<PathBuf>,
    done: bool,
}

impl Restoring {
    fn lock(data_dir: &Path) -> Result<Restoring, BackupError> {
        let created_data_dir = !data_dir.exists();
        if created_data_dir {
            create_private_dir(data_dir)?;
        }
        let state = data_dir.join(STATE);
        let created_state = !state.exists();
        let mut guard = Restoring {
            data_dir: data_dir.to_path_buf(),
            state: state.clone(),
            db: None,
            created_data_dir,
            created_state,
            staging: None,
            done: false,
        };
        match sled::Config::new()
            .path(&state)
            .cache_capacity(LOCK_CACHE_BYTES)
            .open()
        {
            Ok(db) => guard.db = Some(db),
            // sled reports a held lock as an `Other` I/O error with this message (store.rs).
            Err(sled::Error::Io(e))
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.to_string().contains("could not acquire lock") =>
            {
                guard.created_state = false;
                return Err(BackupError::Running {
                    path: data_dir.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(BackupError::State {
                    path: state,
                    source,
                });
            }
        }
        Ok(guard)
    }

    /// The newest checkpoint the derived state (held locked) says was handed out, when it is
    /// one of the backed-up log key: another key's is not this log's.
    fn handed_out(&self, log_seed: &[u8; 32]) -> Option<VerifiedCheckpoint> {
        let meta = self.db.as_ref()?.open_tree("meta").ok()?;
        let (_, note) =
            crate::embedded::decode_checkpoint(&meta.get(crate::embedded::LATEST).ok()??)?;
        signed_by_log_key(&note, log_seed).ok()
    }

    /// A fresh `DATA/.restore-staging` with `journal/` and `keys/`.
    fn staging(&mut self) -> Result<PathBuf, BackupError> {
        let staging = self.data_dir.join(STAGING);
        if staging.exists() {
            // Left by an interrupted restore (we hold the lock: no other restore runs).
            fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
        }
        self.staging = Some(staging.clone());
        create_private_dir(&staging)?;
        create_private_dir(&staging.join(JOURNAL))?;
        create_private_dir(&staging.join(KEYS))?;
        Ok(staging)
    }

    /// Moves the journal and keys in place to `DATA/replaced-<time>/`, the staged ones in, and
    /// the derived state out (renamed while locked, so a broker starting now builds a fresh
    /// one from the restored journal).
    fn swap_in(&mut self, staging: &Path) -> Result<Option<PathBuf>, BackupError> {
        let in_place: Vec<&str> = [JOURNAL, KEYS]
            .into_iter()
            .filter(|name| fs::symlink_metadata(self.data_dir.join(name)).is_ok())
            .collect();
        let replaced = if in_place.is_empty() {
            None
        } else {
            let dir = self.replaced_dir()?;
            create_private_dir(&dir)?;
            for name in in_place {
                rename(&self.data_dir.join(name), &dir.join(name))?;
            }
            sync_dir(&dir)?;
            Some(dir)
        };
        for name in [JOURNAL, KEYS] {
            rename(&staging.join(name), &self.data_dir.join(name))?;
        }
        rename(&self.state, &staging.join("old-state"))?;
        sync_dir(&self.data_dir)?;
        Ok(replaced)
    }

    fn replaced_dir(&self) -> Result<PathBuf, BackupError> {
        let now = time::OffsetDateTime::now_utc();
        let stamp = now
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .unwrap_or_else(|_| now.unix_timestamp().to_string());
        let mut dir = self.data_dir.join(format!("replaced-{stamp}"));
        let mut n = 1;
        while fs::symlink_metadata(&dir).is_ok() {
            n += 1;
            dir = self.data_dir.join(format!("replaced-{stamp}-{n}"));
        }
        Ok(dir)
    }

    /// Releases the lock and removes the staging directory (with the old derived state).
    fn finish(mut self) -> Result<(), BackupError> {
        self.done = true;
        drop(self.db.take());
        if let Some(staging) = self.staging.take() {
            fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
        }
        sync_dir(&self.data_dir)
    }
}

impl Drop for Restoring {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        drop(self.db.take());
        if let Some(staging) = self.staging.take() {
            let _ = fs::remove_dir_all(staging);
        }
        if self.created_data_dir {
            let _ = fs::remove_dir_all(&self.data_dir);
        } else if self.created_state {
            let _ = fs::remove_dir_all(&self.state);
        }
    }
}

// ---------------------------------------------------------------- files

/// A file or directory name a backup may hold: no path separator, not hidden.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Creates `path` and its missing parents 0700, syncing the parent of each folder it creates:
/// a backup reported written, or a restored data folder, must not lose its own entry at a
/// power loss.
fn create_private_dir(path: &Path) -> Result<(), BackupError> {
    unefois_journal::private::private_dir(path).map_err(io_err(path))
}

/// Copies `from` to the new file `to` (0600, synced); its length and SHA-256.
fn copy_private(from: &Path, to: &Path) -> Result<(u64, [u8; 32]), BackupError> {
    let mut source = File::open(from).map_err(io_err(from))?;
    let mut dest = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(io_err(to))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(from)(e)),
        };
        let chunk = buf.get(..n).unwrap_or_default();
        hasher.update(chunk);
        dest.write_all(chunk).map_err(io_err(to))?;
        total += n as u64;
    }
    dest.sync_all().map_err(io_err(to))?;
    Ok((total, hasher.finalize().into()))
}

fn hash_file(path: &Path) -> Result<(u64, [u8; 32]), BackupError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let bytes = io::copy(&mut file, &mut hasher).map_err(io_err(path))?;
    Ok((bytes, hasher.finalize().into()))
}

fn write_manifest(out: &Path, manifest: &Manifest) -> Result<(), BackupError> {
    let path = out.join(MANIFEST);
    let tmp = out.join(format!("{MANIFEST}.tmp"));
    let mut text = serde_json::to_vec_pretty(manifest).map_err(|e| BackupError::Io {
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    text.push(b'\n');
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(&text)
        .and_then(|()| file.sync_all())
        .map_err(io_err(&tmp))?;
    rename(&tmp, &path)?;
    sync_dir(out)
}

fn rename(from: &Path, to: &Path) -> Result<(), BackupError> {
    fs::rename(from, to).map_err(|source| BackupError::Io {
        path: from.to_path_buf(),
        source: io::Error::new(
            source.kind(),
            format!("rename to {}: {source}", to.display()),
        ),
    })
}

fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::CheckpointSigner as _;
    use crate::test_signer::TestSigner;
    use unefois_journal::{Journal, JournalOptions};

    /// A data directory with the four keys and a journal of `n` records over `segment_size`
    /// byte segments; the records' payloads.
    async fn data_dir(dir: &Path, n: usize, segment_size: u64) -> Vec<Vec<u8>> {
        write_keys(dir);
        let journal = Journal::open(
            &dir.join(JOURNAL),
            JournalOptions {
                segment_size,
                ..JournalOptions::default()
            },
        )
        .unwrap();
        let payloads: Vec<Vec<u8>> = (0..n).map(|i| format!("record {i}").into_bytes()).collect();
        for p in &payloads {
            journal.append(p.clone()).await.unwrap();
        }
        journal.close().await;
        payloads
    }

    /// Every key file of [`KEY_FILES`], 0600 in a 0700 folder, each of its own bytes.
    fn write_keys(dir: &Path) {
        let keys = dir.join(KEYS);
        create_private_dir(&keys).unwrap();
        for (i, spec) in KEY_FILES.iter().enumerate() {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(keys.join(spec.file))
                .unwrap()
                .write_all(&[i as u8 + 1; 32])
                .unwrap();
        }
    }

    /// The log key of a data directory written by [`write_keys`].
    fn log_signer(dir: &Path) -> TestSigner {
        let seed: [u8; 32] = fs::read(dir.join(KEYS).join(LOG_KEY))
            .unwrap()
            .try_into()
            .unwrap();
        TestSigner::from_seed(&seed)
    }

    fn records(data_dir: &Path) -> Vec<Vec<u8>> {
        let segments = list_segments(&data_dir.join(JOURNAL)).unwrap();
        let mut out = Vec::new();
        read_journal(&segments, Until::LastValid, |_, p| out.push(p.to_vec())).unwrap();
        out
    }

    fn last_segment(data_dir: &Path) -> PathBuf {
        list_segments(&data_dir.join(JOURNAL))
            .unwrap()
            .pop()
            .unwrap()
            .1
    }

    fn append_bytes(path: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn the_frontier_root_is_the_audit_trees_root() {
        let entries: Vec<Vec<u8>> = (0..70u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let mut frontier = Frontier::default();
        assert_eq!(frontier.root(), crate::tree::root_of(Vec::<Vec<u8>>::new()));
        for (i, entry) in entries.iter().enumerate() {
            frontier.push(entry);
            assert_eq!(
                frontier.root(),
                crate::tree::root_of(&entries[..=i]),
                "size {}",
                i + 1
            );
        }
    }

    #[tokio::test]
    async fn a_backup_leaves_a_torn_tail_out_and_restores_every_record() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        // Small segments: several of them.
        let payloads = data_dir(&data, 40, 200).await;
        // A record being written: a header and half a payload.
        let mut torn = 300u32.to_le_bytes().to_vec();
        torn.extend_from_slice(&[0; 4]);
        torn.extend_from_slice(&40u64.to_le_bytes());
        torn.extend_from_slice(b"half");
        append_bytes(&last_segment(&data), &torn);

        let out = tmp.path().join("backup");
        let report = backup(&data, &out).unwrap();
        assert_eq!(report.tree_size, 40);
        assert_eq!(report.tail_bytes_left_out, torn.len() as u64);
        assert!(report.segments > 1);
        assert_eq!(report.root, crate::tree::root_of(&payloads));
        assert!(matches!(
            backup(&data, &out),
            Err(BackupError::OutputExists { .. })
        ));
        use std::os::unix::fs::PermissionsExt;
        for file in ["manifest.json", "keys/log.ed25519"] {
            let mode = fs::metadata(out.join(file)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }

        let target = tmp.path().join("restored");
        let restored = restore(&out, &target, &RestoreOptions::default()).unwrap();
        assert_eq!(restored.tree_size, 40);
        assert!(restored.replaced.is_none());
        assert_eq!(records(&target), payloads);
        assert!(!target.join(STATE).exists());
        assert!(!target.join(STAGING).exists());
        assert_eq!(
            fs::read(target.join(KEYS).join(LOG_KEY)).unwrap(),
            fs::read(data.join(KEYS).join(LOG_KEY)).unwrap()
        );
        // The journal opens as the broker would open it.
        let journal = Journal::open(&target.join(JOURNAL), JournalOptions::default()).unwrap();
        assert_eq!(journal.next_seq(), 40);
        journal.close().await;
    }

    #[tokio::test]
    async fn damage_before_the_tail_fails_the_backup() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        data_dir(&data, 40, 200).await;
        let first = list_segments(&data.join(JOURNAL)).unwrap()[0].1.clone();
        let mut bytes = fs::read(&first).unwrap();
        bytes[20] ^= 1;
        fs::write(&first, bytes).unwrap();
        let err = backup(&data, &tmp.path().join("backup")).unwrap_err();
        assert!(
            err.to_string().contains("journal-00000000000000000000.seg"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn restore_refuses_a_fork_unless_forced_and_keeps_what_it_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        data_dir(&data, 5, 1 << 20).await;
        let out = tmp.path().join("backup");
        backup(&data, &out).unwrap();
        // The log goes on after the backup.
        let journal = Journal::open(&data.join(JOURNAL), JournalOptions::default()).unwrap();
        journal.append(b"later".to_vec()).await.unwrap();
        journal.close().await;

        let err = restore(&out, &data, &RestoreOptions::default()).unwrap_err();
        assert!(err.is_fork());
        assert!(
            err.to_string()
                .contains("it would fork the log: checkpoints up to size 6 were handed out")
                && err.to_string().contains("the backup has 5 entries"),
            "{err}"
        );
        assert_eq!(journal_size(&data).unwrap(), 6, "nothing changed");
        assert!(!data.join(STAGING).exists());

        let forced = RestoreOptions {
            force: true,
            ..RestoreOptions::default()
        };
        let report = restore(&out, &data, &forced).unwrap();
        assert_eq!(report.overridden.len(), 1);
        assert_eq!(journal_size(&data).unwrap(), 5);
        let replaced = report.replaced.unwrap();
        assert_eq!(journal_size(&replaced).unwrap(), 6);
        assert!(replaced.join(KEYS).join(LOG_KEY).is_file());

        // The same backup again over its own copy: nothing to refuse.
        restore(&out, &data, &RestoreOptions::default()).unwrap();
    }

    #[tokio::test]
    async fn restore_refuses_a_journal_in_place_that_differs() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        data_dir(&data, 5, 1 << 20).await;
        let out = tmp.path().join("backup");
        backup(&data, &out).unwrap();
        let other = tmp.path().join("other");
        data_dir(&other, 0, 1 << 20).await;
        let journal = Journal::open(&other.join(JOURNAL), JournalOptions::default()).unwrap();
        journal.append(b"something else".to_vec()).await.unwrap();
        journal.close().await;
        let err = restore(&out, &other, &RestoreOptions::default()).unwrap_err();
        assert!(
            matches!(err, BackupError::Diverges { size: 1, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn restore_names_a_damaged_or_missing_file_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        data_dir(&data, 10, 1 << 20).await;
        let out = tmp.path().join("backup");
        backup(&data, &out).unwrap();
        let segment = "journal/journal-00000000000000000000.seg";
        let target = tmp.path().join("target");

        // A byte flipped: the hash names the file.
        let flipped = tmp.path().join("flipped");
        copy_tree(&out, &flipped);
        let mut bytes = fs::read(flipped.join(segment)).unwrap();
        bytes[30] ^= 0x40;
        fs::write(flipped.join(segment), &bytes).unwrap();
        let err = restore(&flipped, &target, &RestoreOptions::default()).unwrap_err();
        assert!(
            matches!(&err, BackupError::Damaged { file, .. } if file == segment),
            "{err}"
        );
        assert!(!target.exists());

        // The manifest rewritten to match: the records' checksums still name the file.
        let mut manifest = read_manifest(&flipped).unwrap();
        for f in &mut manifest.files {
            if f.path == segment {
                f.sha256 = hex::encode(hash_file(&flipped.join(segment)).unwrap().1);
            }
        }
        fs::remove_file(flipped.join(MANIFEST)).unwrap();
        write_manifest(&flipped, &manifest).unwrap();
        let err = restore(&flipped, &target, &RestoreOptions::default()).unwrap_err();
        assert!(
            matches!(&err, BackupError::Damaged { file, .. } if file == segment),
            "{err}"
        );
        assert!(!target.exists(), "what the restore created is removed");

        // A key removed.
        let missing = tmp.path().join("missing");
        copy_tree(&out, &missing);
        fs::remove_file(missing.join("keys/pseudonym-audit.key")).unwrap();
        let err = restore(&missing, &target, &RestoreOptions::default()).unwrap_err();
        assert!(
            matches!(&err, BackupError::Damaged { file, .. } if file == "keys/pseudonym-audit.key"),
            "{err}"
        );

        // An interrupted backup: no manifest.
        fs::remove_file(missing.join(MANIFEST)).unwrap();
        let err = restore(&missing, &target, &RestoreOptions::default()).unwrap_err();
        assert!(matches!(err, BackupError::BadManifest { .. }), "{err}");
    }

    #[tokio::test]
    async fn restore_checks_trusted_checkpoints_against_the_backed_up_log_key() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let payloads = data_dir(&data, 6, 1 << 20).await;
        let out = tmp.path().join("backup");
        backup(&data, &out).unwrap();
        let log = log_signer(&data);
        let write = |name: &str, note: String| {
            let path = tmp.path().join(name);
            fs::write(&path, note).unwrap();
            path
        };
        let target = tmp.path().join("target");
        let with = |paths: Vec<PathBuf>| RestoreOptions {
            force: false,
            trusted_checkpoints: paths,
        };

        let older = write("older", log.sign(4, crate::tree::root_of(&payloads[..4])));
        restore(&out, &target, &with(vec![older.clone()])).unwrap();
        fs::remove_dir_all(&target).unwrap();

        let larger = write("larger", log.sign(9, [7; 32]));
        let err = restore(&out, &target, &with(vec![older.clone(), larger])).unwrap_err();
        assert!(
            err.to_string()
                .contains("checkpoints up to size 9 were handed out")
                && err.to_string().contains("the backup has 6 entries"),
            "{err}"
        );
        assert!(!target.exists());

        let other_root = write("other", log.sign(4, [1; 32]));
        let err = restore(&out, &target, &with(vec![other_root])).unwrap_err();
        assert!(
            matches!(err, BackupError::NotThatLog { size: 4, .. }),
            "{err}"
        );

        let stranger = TestSigner::from_seed(&[9; 32]);
        let foreign = write("foreign", stranger.sign(2, [0; 32]));
        let err = restore(&out, &target, &with(vec![foreign])).unwrap_err();
        assert!(matches!(err, BackupError::BadCheckpoint { .. }), "{err}");
    }

    #[tokio::test]
    async fn restore_refuses_a_data_dir_whose_state_is_locked() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        data_dir(&data, 3, 1 << 20).await;
        let out = tmp.path().join("backup");
        backup(&data, &out).unwrap();
        let running = sled::Config::new().path(data.join(STATE)).open().unwrap();
        let err = restore(&out, &data, &RestoreOptions::default()).unwrap_err();
        assert!(matches!(err, BackupError::Running { .. }), "{err}");
        assert!(
            data.join(STATE).exists(),
            "a running broker's state is left alone"
        );
        drop(running);
    }

    fn copy_tree(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                copy_tree(&entry.path(), &to.join(entry.file_name()));
            } else {
                fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }
}
