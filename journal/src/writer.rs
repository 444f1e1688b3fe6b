//! The writer thread: the only owner of the open segment. Group commit: everything pending (and
//! what arrives while the writer yields once) is written in one `write_all` and made durable by
//! one `sync_data`, then the post-sync hook runs, then the callers are answered.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::format::{encode, encoded_len, segment_name, sync_dir};
use super::{CommitHook, CommittedBatch, JournalError, Position};
#[cfg(feature = "fault-injection")]
use super::{FaultInjector, FaultPoint};

/// Counters shared between the writer and the handles.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Number of durable records, i.e. the next sequence number.
    pub(crate) durable: AtomicU64,
    pub(crate) records: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) failed_batches: AtomicU64,
}

/// Payloads of one append request: one record, or several recorded all-or-nothing.
#[derive(Debug)]
pub(crate) enum Payloads {
    One(Vec<u8>),
    Many(Vec<Vec<u8>>),
}

impl Payloads {
    pub(crate) fn as_slice(&self) -> &[Vec<u8>] {
        match self {
            Payloads::One(p) => std::slice::from_ref(p),
            Payloads::Many(ps) => ps,
        }
    }

    pub(crate) fn encoded_len(&self) -> usize {
        self.as_slice()
            .iter()
            .map(|p| encoded_len(p.len()))
            .fold(0, usize::saturating_add)
    }
}

/// A message to the writer.
#[derive(Debug)]
pub(crate) enum Msg {
    /// Record these payloads; answer with the first one's sequence number once durable.
    Append {
        payloads: Payloads,
        reply: oneshot::Sender<Result<u64, JournalError>>,
    },
    /// Finish what was queued before this message, close the file, then answer.
    Close(oneshot::Sender<()>),
    /// Answer once what was queued before this message has its outcome (written, synced and
    /// hooked, or failed).
    Settled(oneshot::Sender<()>),
}

type Pending = (Payloads, oneshot::Sender<Result<u64, JournalError>>);

/// A failed step of a batch: what was being done, and on which file.
#[derive(Debug)]
struct StepError {
    what: &'static str,
    path: PathBuf,
    source: io::Error,
}

impl StepError {
    fn reason(&self) -> String {
        format!("{} {}: {}", self.what, self.path.display(), self.source)
    }
}

pub(crate) struct Writer {
    pub(crate) dir: PathBuf,
    pub(crate) seg_path: PathBuf,
    /// Sequence number of the current segment's first record.
    pub(crate) seg_first: u64,
    /// `None` after a failure, until recovery reopens it.
    pub(crate) file: Option<File>,
    /// Synced length of the current segment; the file may hold more only while a batch is in
    /// flight or after a failure (then `needs_recovery`).
    pub(crate) seg_len: u64,
    pub(crate) next_seq: u64,
    pub(crate) needs_recovery: bool,
    pub(crate) segment_size: u64,
    pub(crate) max_batch_records: usize,
    pub(crate) max_batch_bytes: usize,
    pub(crate) hook: Option<CommitHook>,
    #[cfg(feature = "fault-injection")]
    pub(crate) faults: Option<FaultInjector>,
    pub(crate) sync: bool,
    pub(crate) shared: Arc<Shared>,
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    /// Runs until every handle is dropped (after draining the queue) or a `Close` arrives.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut carry: Option<Msg> = None;
        let mut close_reply = None;
        let mut settled = Vec::new();
        while close_reply.is_none() {
            let Some(first) = carry.take().or_else(|| rx.blocking_recv()) else {
                break;
            };
            let mut batch: Vec<Pending> = Vec::new();
            let (mut records, mut bytes) = (0usize, 0usize);
            let mut next = Some(first);
            let mut yielded = false;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Close(reply) => {
                        close_reply = Some(reply);
                        break;
                    }
                    Msg::Settled(reply) => {
                        settled.push(reply);
                        break;
                    }
                    Msg::Append { payloads, reply } => {
                        let n = payloads.as_slice().len();
                        let b = payloads.encoded_len();
                        if !batch.is_empty()
                            && (records + n > self.max_batch_records
                                || bytes.saturating_add(b) > self.max_batch_bytes)
                        {
                            carry = Some(Msg::Append { payloads, reply });
                            break;
                        }
                        records += n;
                        bytes = bytes.saturating_add(b);
                        batch.push((payloads, reply));
                    }
                }
                if records >= self.max_batch_records || bytes >= self.max_batch_bytes {
                    break;
                }
                next = rx.try_recv().ok();
                if next.is_none() && !yielded {
                    // The first append's wake-up can preempt the thread that sent it, on a
                    // shared core, before that thread hands over the records that are ready
                    // behind it. One yield lets them come: at 64 in flight on one core, batches
                    // of about 30 records instead of 5, and a quarter less CPU per fetch
                    // (BENCHMARKS.md, "Run G"). On an idle core it returns at once. The price:
                    // a CPU-bound process on the same core gets a time slice per batch (about
                    // 2.6 ms more per fetch, measured there with the alternatives tried).
                    yielded = true;
                    std::thread::yield_now();
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit(batch);
            }
            for reply in settled.drain(..) {
                let _ = reply.send(());
            }
        }
        // Close the file before telling the closer that we are done.
        self.file = None;
        rx.close();
        if let Some(reply) = close_reply {
            let _ = reply.send(());
        }
    }

    fn commit(&mut self, batch: Vec<Pending>) {
        match self.try_commit(&batch) {
            Ok(first_seq) => {
                let mut seq = first_seq;
                for (payloads, reply) in batch {
                    // A caller that gave up waiting is not an error: its record is durable.
                    let _ = reply.send(Ok(seq));
                    seq += payloads.as_slice().len() as u64;
                }
            }
            Err(err) => {
                self.shared.failed_batches.fetch_add(1, Ordering::Relaxed);
                let reason = err.reason();
                tracing::warn!(
                    %reason,
                    records = batch.iter().map(|(p, _)| p.as_slice().len()).sum::<usize>(),
                    "journal: batch failed, nothing of it is acknowledged"
                );
                // Cut the unsynced bytes now, so that a failed append is (if this succeeds)
                // definitely not recorded; if it fails, the next batch tries again first.
                self.needs_recovery = true;
                if let Err(err) = self.recover() {
                    tracing::warn!(reason = %err.reason(), "journal: recovery failed, will retry on the next batch");
                }
                for (_, reply) in batch {
                    let _ = reply.send(Err(JournalError::Unavailable {
                        reason: reason.clone(),
                    }));
                }
            }
        }
    }

    /// Writes and syncs the batch, runs the hook; returns the first sequence number.
    fn try_commit(&mut self, batch: &[Pending]) -> Result<u64, StepError> {
        if self.needs_recovery {
            self.recover()?;
        }
        if self.seg_len > 0 && self.seg_len >= self.segment_size {
            self.roll()?;
        }
        let first_seq = self.next_seq;
        self.buf.clear();
        let mut seq = first_seq;
        for (payloads, _) in batch {
            for payload in payloads.as_slice() {
                encode(&mut self.buf, seq, payload);
                seq += 1;
            }
        }
        let count = seq - first_seq;

        #[cfg(feature = "fault-injection")]
        self.fault(FaultPoint::BeforeWrite)?;
        let path = &self.seg_path;
        let step = |what: &'static str| {
            move |source| StepError {
                what,
                path: path.clone(),
                source,
            }
        };
        let file = self.file.as_mut().ok_or_else(|| {
            step("no open file for")(io::Error::other("segment not reopened after a failure"))
        })?;
        // From here on the file may hold bytes that are not synced.
        self.needs_recovery = true;
        file.write_all(&self.buf).map_err(step("write to"))?;
        #[cfg(feature = "fault-injection")]
        if let Some(faults) = &self.faults {
            faults(FaultPoint::AfterWrite).map_err(step("injected fault after writing to"))?;
        }
        let mut sync_seconds = None;
        if self.sync {
            let started = std::time::Instant::now();
            file.sync_data().map_err(step("sync_data of"))?;
            sync_seconds = Some(started.elapsed().as_secs_f64());
            self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        }
        self.needs_recovery = false;

        self.seg_len += self.buf.len() as u64;
        self.next_seq = seq;
        self.shared.durable.store(seq, Ordering::Release);
        self.shared.records.fetch_add(count, Ordering::Relaxed);
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        super::metrics::journal_batch(count, sync_seconds);

        // The records are durable: a fault here cannot undo that, it is only observed.
        #[cfg(feature = "fault-injection")]
        if let Err(err) = self.fault(FaultPoint::AfterSync) {
            tracing::warn!(reason = %err.reason(), "journal: fault after sync ignored (records are durable)");
        }
        if let Some(hook) = self.hook.as_mut() {
            let mut records = Vec::with_capacity(count as usize);
            let mut positions = Vec::with_capacity(count as usize);
            let mut seq = first_seq;
            let mut offset = self.seg_len - self.buf.len() as u64;
            for (payloads, _) in batch {
                for payload in payloads.as_slice() {
                    records.push((seq, payload.as_slice()));
                    positions.push(Position {
                        segment: self.seg_first,
                        offset,
                    });
                    seq += 1;
                    offset += encoded_len(payload.len()) as u64;
                }
            }
            hook(&CommittedBatch {
                first_seq,
                records: &records,
                positions: &positions,
            });
        }
        Ok(first_seq)
    }

    #[cfg(feature = "fault-injection")]
    fn fault(&self, point: FaultPoint) -> Result<(), StepError> {
        match &self.faults {
            Some(faults) => faults(point).map_err(|source| StepError {
                what: "injected fault at",
                path: self.seg_path.clone(),
                source,
            }),
            None => Ok(()),
        }
    }

    /// Starts a new segment named after the next sequence number, and makes its directory entry
    /// durable.
    fn roll(&mut self) -> Result<(), StepError> {
        let path = self.dir.join(segment_name(self.next_seq));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(crate::private::FILE_MODE)
            .open(&path)
            .map_err(|source| StepError {
                what: "create",
                path: path.clone(),
                source,
            })?;
        tracing::debug!(file = %path.display(), "journal: new segment");
        self.file = Some(file);
        self.seg_path = path;
        self.seg_first = self.next_seq;
        self.seg_len = 0;
        // Until the directory is synced, the new segment's entry may not survive a crash.
        self.needs_recovery = true;
        self.sync_dir()?;
        self.needs_recovery = false;
        Ok(())
    }

    /// Brings the current segment back to its synced length, durably, and reopens it.
    fn recover(&mut self) -> Result<(), StepError> {
        self.file = None;
        let path = self.seg_path.clone();
        let step = |what: &'static str| {
            let path = path.clone();
            move |source| StepError { what, path, source }
        };
        let mut file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(step("reopen"))?;
        file.set_len(self.seg_len).map_err(step("truncate"))?;
        file.sync_all().map_err(step("sync after truncating"))?;
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        self.sync_dir()?;
        file.seek(SeekFrom::Start(self.seg_len))
            .map_err(step("seek in"))?;
        self.file = Some(file);
        self.needs_recovery = false;
        tracing::info!(file = %path.display(), len = self.seg_len, "journal: recovered after a failed batch");
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), StepError> {
        sync_dir(&self.dir).map_err(|source| StepError {
            what: "fsync of directory",
            path: self.dir.clone(),
            source,
        })?;
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Opens the last segment for appending at `len`.
pub(crate) fn open_for_append(path: &Path, len: u64) -> Result<File, JournalError> {
    let io_err = |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new().write(true).open(path).map_err(io_err)?;
    file.seek(SeekFrom::Start(len)).map_err(io_err)?;
    Ok(file)
}
