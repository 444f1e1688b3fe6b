//! The journal: the broker's source of truth, an append-only log of opaque records.
//!
//! Every state change is appended here, and a request is answered only once its record is
//! durable (written and `fdatasync`ed). sled holds only derived state, rebuilt by replaying the
//! journal with [`Journal::read_from`].
//!
//! # On-disk format
//!
//! A journal is a directory of segment files named `journal-<first seq>.seg`, the first
//! sequence number of the segment in 20 decimal digits (`journal-00000000000000000000.seg`,
//! ...). Other files in the directory are ignored. A segment is a plain concatenation of
//! records, with no file header:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | payload length `n`, u32 little-endian, at most [`MAX_PAYLOAD_LEN`] (1 MiB) |
//! | 4 | 4 | CRC32C (Castagnoli), u32 little-endian, over bytes 8..16 then the payload |
//! | 8 | 8 | sequence number, u64 little-endian |
//! | 16 | `n` | payload (opaque: the caller encodes it) |
//!
//! Sequence numbers start at 0 and are contiguous across segments: the first record of a
//! segment carries the number in its name, and each record the previous one's plus one. A new
//! segment is started, before a batch is written, when the current one has reached
//! [`JournalOptions::segment_size`] bytes (so a segment may exceed it by one batch); the
//! directory is fsynced after the new file is created. Segments are never modified except at the
//! tail of the last one.
//!
//! # Durability and recovery
//!
//! One writer thread owns the last segment. Appends queue on a bounded channel; the writer takes
//! everything pending (up to [`JournalOptions::max_batch_records`] records or
//! [`JournalOptions::max_batch_bytes`] bytes), writes it with one `write_all`, calls
//! `sync_data` (`fdatasync`) once, runs the [`CommitHook`], and only then answers the callers:
//! concurrent appends share one sync.
//!
//! If a write or sync fails, no append of that batch is acknowledged (all get
//! [`JournalError::Unavailable`]); the writer truncates the segment back to its last synced
//! length, syncs, and goes on with the same sequence numbers. If that recovery fails, appends
//! keep failing and recovery is retried before each batch, so the journal comes back when the
//! disk does.
//!
//! At [`Journal::open`], every segment is read and checked (checksums, lengths, contiguity). A
//! bad record at the end of the last segment with no valid record after it is a torn tail, bytes
//! written but never synced, hence never acknowledged: it is cut off, with a warning. Any other
//! damage (a bad record followed by a valid one, a bad record in an earlier segment, a gap in
//! sequence numbers, a missing segment) is an error naming the file and offset: the broker must
//! not start and silently drop acknowledged records.
//!
//! One directory must be opened by one [`Journal`] at a time (nothing locks it). The directory
//! is 0700 and the segments 0600 ([`private`]).

#![forbid(unsafe_code)]

mod format;
mod metrics;
pub mod private;
mod reader;
mod scan;
mod writer;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot};

pub use format::{HEADER_LEN, MAX_PAYLOAD_LEN};
pub use metrics::JOURNAL_BATCH_RECORDS;
pub use reader::JournalReader;

use writer::{Msg, Payloads, Shared, Writer};

/// Default size at which a new segment is started (64 MiB).
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 * 1024 * 1024;
/// Default largest number of records written by one sync.
pub const DEFAULT_MAX_BATCH_RECORDS: usize = 1024;
/// Default largest number of encoded bytes written by one sync (4 MiB).
pub const DEFAULT_MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Default capacity of the append queue, in requests.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;

/// What can go wrong with the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// An I/O error while opening or reading the journal.
    #[error("journal I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The journal is damaged where acknowledged records live: refuse to go on.
    #[error("journal corrupt: {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        /// The segment file (or the directory).
        path: PathBuf,
        /// Byte offset in that file.
        offset: u64,
        /// What is wrong, in words.
        reason: String,
    },
    /// A payload larger than [`MAX_PAYLOAD_LEN`].
    #[error("journal record of {len} bytes exceeds the maximum of {max} bytes")]
    PayloadTooLarge {
        /// The payload's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An [`Journal::append_batch`] larger than one batch may be.
    #[error(
        "journal batch of {records} records ({bytes} bytes) exceeds the limits of \
         {max_records} records and {max_bytes} bytes"
    )]
    BatchTooLarge {
        /// Records in the batch.
        records: usize,
        /// Encoded bytes of the batch.
        bytes: usize,
        /// Largest number of records in one batch.
        max_records: usize,
        /// Largest number of encoded bytes in one batch.
        max_bytes: usize,
    },
    /// The write or sync of the batch failed: nothing of it is acknowledged. Retry later.
    #[error("journal unavailable, the record was not recorded: {reason}")]
    Unavailable {
        /// The failed step, in words.
        reason: String,
    },
    /// The journal was closed (or its writer stopped).
    #[error("journal closed")]
    Closed,
    /// [`JournalOptions`] out of range.
    #[error("invalid journal options: {0}")]
    InvalidOptions(String),
}

/// One record read back from the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number (0-based, contiguous).
    pub seq: u64,
    /// The opaque bytes given to [`Journal::append`].
    pub payload: Vec<u8>,
}

/// Where a record lies in the journal, so that it can be read back alone with
/// [`Journal::read_at`] instead of being copied elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// The first sequence number of its segment (the number in the segment's name).
    pub segment: u64,
    /// The byte offset of its header in that segment.
    pub offset: u64,
}

/// A batch that has just been synced, as shown to the [`CommitHook`].
#[derive(Debug)]
pub struct CommittedBatch<'a> {
    /// Sequence number of the first record.
    pub first_seq: u64,
    /// The records, in order: `(seq, payload)`.
    pub records: &'a [(u64, &'a [u8])],
    /// Where each record lies, in the same order.
    pub positions: &'a [Position],
}

/// Called by the writer after each batch is durable and before its appends are answered; sees
/// every record exactly once, in order (e.g. the audit log extends its Merkle tree and signs a
/// checkpoint here). It runs on the writer thread: it delays every append, so keep it short, and
/// never call the journal from it.
pub type CommitHook = Box<dyn FnMut(&CommittedBatch<'_>) + Send>;

/// Where the writer calls the [`FaultInjector`].
#[cfg(feature = "fault-injection")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// Before the batch's `write_all`. An `Err` fails the batch.
    BeforeWrite,
    /// After the write, before `sync_data`. An `Err` fails the batch.
    AfterWrite,
    /// After `sync_data`, before the hook and the answers. An `Err` is only logged: the records
    /// are durable by then.
    AfterSync,
}

/// Test hook called at each [`FaultPoint`], to simulate I/O errors or slow disks and to prove
/// that nothing is answered before its sync. Only with the `fault-injection` feature.
#[cfg(feature = "fault-injection")]
pub type FaultInjector = Arc<dyn Fn(FaultPoint) -> io::Result<()> + Send + Sync>;

/// How a journal is opened.
pub struct JournalOptions {
    /// A new segment starts once the current one reaches this many bytes.
    pub segment_size: u64,
    /// Largest number of records written by one sync (and in one `append_batch`).
    pub max_batch_records: usize,
    /// Largest number of encoded bytes written by one sync (and in one `append_batch`); at
    /// least one maximal record.
    pub max_batch_bytes: usize,
    /// Capacity of the append queue, in requests: appends wait when it is full.
    pub queue_capacity: usize,
    /// Post-sync hook, see [`CommitHook`].
    pub hook: Option<CommitHook>,
    /// Fault injection, for tests, see [`FaultInjector`].
    #[cfg(feature = "fault-injection")]
    pub faults: Option<FaultInjector>,
    /// Whether each batch is `fdatasync`ed before it is answered. Always true in the broker;
    /// false only to measure what durability costs (benchmarks).
    pub sync: bool,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            segment_size: DEFAULT_SEGMENT_SIZE,
            max_batch_records: DEFAULT_MAX_BATCH_RECORDS,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            hook: None,
            #[cfg(feature = "fault-injection")]
            faults: None,
            sync: true,
        }
    }
}

impl fmt::Debug for JournalOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JournalOptions")
            .field("segment_size", &self.segment_size)
            .field("max_batch_records", &self.max_batch_records)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("queue_capacity", &self.queue_capacity)
            .field("hook", &self.hook.is_some())
            .field("sync", &self.sync)
            .finish()
    }
}

/// Counters since the journal was opened, to see how many records shared a sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Records made durable.
    pub records: u64,
    /// Batches made durable (one `sync_data` each).
    pub batches: u64,
    /// Successful `fdatasync`/`fsync` calls by the writer: one per batch, plus directory syncs
    /// at segment rollover and syncs during recovery from a failure.
    pub syncs: u64,
    /// Batches that failed (write, sync or injected fault), none of whose records was
    /// acknowledged.
    pub failed_batches: u64,
}

/// Handle on an open journal; cheap to clone, and many tasks may append at once. The writer
/// stops when [`Journal::close`] is called or the last handle is dropped, after recording what
/// was queued.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    dir: PathBuf,
    max_batch_records: usize,
    max_batch_bytes: usize,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.inner.dir)
            .field("next_seq", &self.next_seq())
            .finish()
    }
}

impl Journal {
    /// Opens (or creates) the journal in `dir`: verifies every segment, cuts a torn tail off the
    /// last one, and starts the writer thread. Corruption anywhere an acknowledged record may
    /// live is an error naming the file and offset. Blocking: it reads the whole journal.
    pub fn open(dir: &Path, options: JournalOptions) -> Result<Journal, JournalError> {
        let JournalOptions {
            segment_size,
            max_batch_records,
            max_batch_bytes,
            queue_capacity,
            hook,
            #[cfg(feature = "fault-injection")]
            faults,
            sync,
        } = options;
        if segment_size == 0 {
            return Err(JournalError::InvalidOptions(
                "segment_size must be positive".into(),
            ));
        }
        if max_batch_records == 0 || queue_capacity == 0 {
            return Err(JournalError::InvalidOptions(
                "max_batch_records and queue_capacity must be positive".into(),
            ));
        }
        if max_batch_bytes < HEADER_LEN + MAX_PAYLOAD_LEN {
            return Err(JournalError::InvalidOptions(format!(
                "max_batch_bytes must hold one maximal record ({} bytes)",
                HEADER_LEN + MAX_PAYLOAD_LEN
            )));
        }

        crate::private::private_dir(dir).map_err(|source| JournalError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        // At every open, not only when the folder is new: a run killed between creating it and
        // syncing its parent leaves an entry that a power loss may still take, with every
        // record acknowledged since.
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
        let parent = parent.unwrap_or(Path::new("."));
        format::sync_dir(parent).map_err(|source| JournalError::Io {
            path: parent.to_path_buf(),
            source,
        })?;

        let recovered = scan::recover(dir)?;
        tracing::info!(
            dir = %dir.display(),
            segments = recovered.segments,
            next_seq = recovered.next_seq,
            "journal: opened"
        );
        let file = writer::open_for_append(&recovered.last_path, recovered.last_len)?;
        let shared = Arc::new(Shared::default());
        shared.durable.store(recovered.next_seq, Ordering::Release);
        let writer = Writer {
            dir: dir.to_path_buf(),
            seg_path: recovered.last_path,
            seg_first: recovered.last_first,
            file: Some(file),
            seg_len: recovered.last_len,
            next_seq: recovered.next_seq,
            needs_recovery: false,
            segment_size,
            max_batch_records,
            max_batch_bytes,
            hook,
            #[cfg(feature = "fault-injection")]
            faults,
            sync,
            shared: Arc::clone(&shared),
            buf: Vec::new(),
        };
        let (tx, rx) = mpsc::channel(queue_capacity);
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| JournalError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Journal {
            inner: Arc::new(Inner {
                tx,
                shared,
                dir: dir.to_path_buf(),
                max_batch_records,
                max_batch_bytes,
            }),
        })
    }

    /// Appends one record and returns its sequence number once it is written and synced.
    /// If the future is dropped before that, the record may or may not be recorded.
    pub async fn append(&self, payload: Vec<u8>) -> Result<u64, JournalError> {
        check_len(&payload)?;
        self.submit(Payloads::One(payload)).await
    }

    /// Appends several records all-or-nothing, in one batch, and returns their (contiguous)
    /// sequence numbers once they are synced. Bounded by the batch limits of
    /// [`JournalOptions`].
    pub async fn append_batch(&self, payloads: Vec<Vec<u8>>) -> Result<Vec<u64>, JournalError> {
        if payloads.is_empty() {
            return Ok(Vec::new());
        }
        for payload in &payloads {
            check_len(payload)?;
        }
        let payloads = Payloads::Many(payloads);
        let records = payloads.as_slice().len();
        let bytes = payloads.encoded_len();
        if records > self.inner.max_batch_records || bytes > self.inner.max_batch_bytes {
            return Err(JournalError::BatchTooLarge {
                records,
                bytes,
                max_records: self.inner.max_batch_records,
                max_bytes: self.inner.max_batch_bytes,
            });
        }
        let first = self.submit(payloads).await?;
        Ok((first..first + records as u64).collect())
    }

    /// Returns once every append submitted before has its outcome (synced and passed to the
    /// hook, or failed), whether or not its caller still waits for it: what a caller that gave
    /// up on an append waits for before letting another act read what it may have recorded.
    pub async fn settled(&self) {
        let (reply, answer) = oneshot::channel();
        if self.inner.tx.send(Msg::Settled(reply)).await.is_ok() {
            let _ = answer.await;
        }
    }

    async fn submit(&self, payloads: Payloads) -> Result<u64, JournalError> {
        let started = std::time::Instant::now();
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(Msg::Append { payloads, reply })
            .await
            .map_err(|_| JournalError::Closed)?;
        let outcome = answer.await.map_err(|_| JournalError::Closed)?;
        metrics::journal_append(started.elapsed().as_secs_f64());
        outcome
    }

    /// Reads the durable records with sequence number `>= seq`, in order, from the segment
    /// files. Records appended after this call are not included. Blocking I/O.
    pub fn read_from(&self, seq: u64) -> Result<JournalReader, JournalError> {
        // Snapshot the durable count before listing: every record below it is in a segment
        // that already exists.
        let end = self.next_seq();
        let segments = format::list_segments(&self.inner.dir)?;
        Ok(JournalReader::new(segments, seq, end))
    }

    /// [`Journal::read_from`], starting at `at`, where record `seq` lies (as a
    /// [`CommittedBatch`] or [`JournalReader::position`] gave it): no scan of the segment up to
    /// it. Blocking I/O.
    pub fn read_from_at(&self, seq: u64, at: Position) -> Result<JournalReader, JournalError> {
        let end = self.next_seq();
        let segments = format::list_segments(&self.inner.dir)?;
        Ok(JournalReader::new_at(segments, seq, end, at))
    }

    /// Reads back the durable record `seq` at `position` (as a [`CommittedBatch`] or
    /// [`JournalReader::position`] gave it), checking its header and checksum. Blocking I/O.
    pub fn read_at(&self, seq: u64, position: Position) -> Result<Vec<u8>, JournalError> {
        if seq >= self.next_seq() {
            return Err(JournalError::Corrupt {
                path: self.inner.dir.clone(),
                offset: 0,
                reason: format!("record {seq} is not durable yet"),
            });
        }
        let path = self.inner.dir.join(format::segment_name(position.segment));
        format::read_record_at(&path, seq, position.offset)
    }

    /// Number of durable records, which is the sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.inner.shared.durable.load(Ordering::Acquire)
    }

    /// Counters since open.
    pub fn stats(&self) -> JournalStats {
        let shared = &self.inner.shared;
        JournalStats {
            records: shared.records.load(Ordering::Relaxed),
            batches: shared.batches.load(Ordering::Relaxed),
            syncs: shared.syncs.load(Ordering::Relaxed),
            failed_batches: shared.failed_batches.load(Ordering::Relaxed),
        }
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Stops the writer once the appends queued before this call are recorded and answered,
    /// and waits until the segment file is closed. Appends through other handles then fail
    /// with [`JournalError::Closed`].
    pub async fn close(self) {
        let (reply, done) = oneshot::channel();
        if self.inner.tx.send(Msg::Close(reply)).await.is_ok() {
            let _ = done.await;
        }
    }
}

/// Whether the journal in `dir` holds anything: a segment file that is not empty (a torn tail
/// counts). `false` when there is no such folder. Reads no record.
pub fn holds_records(dir: &Path) -> Result<bool, JournalError> {
    if !dir.exists() {
        return Ok(false);
    }
    for (_, path) in format::list_segments(dir)? {
        let len = std::fs::metadata(&path)
            .map_err(|source| JournalError::Io {
                path: path.clone(),
                source,
            })?
            .len();
        if len > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Reads the records of the journal in `dir` from the first, as its segment files are, without
/// opening it (no writer, no recovery): for a journal no broker has open. Blocking I/O.
pub fn read_dir(dir: &Path) -> Result<JournalReader, JournalError> {
    Ok(JournalReader::new(format::list_segments(dir)?, 0, u64::MAX))
}

fn check_len(payload: &[u8]) -> Result<(), JournalError> {
    if payload.len() > MAX_PAYLOAD_LEN {
        return Err(JournalError::PayloadTooLarge {
            len: payload.len(),
            max: MAX_PAYLOAD_LEN,
        });
    }
    Ok(())
}
