//! The auditor's side: verifying the broker's log from outside, trusting only the pinned log
//! key and the checkpoint kept by the previous run (trust on first use, then append-only).

use std::path::Path;

use tonic::transport::Channel;
use unefois_proto::v1 as pb;
use unefois_proto::v1::audit_client::AuditClient;

use unefois_tlog::log::{FirstBadEntry, Fork, extends, needs_proof};
use unefois_tlog::{CheckpointError, MemoryTree, VerifiedCheckpoint, verify_checkpoint};

/// Entries asked for per ListEvents page.
const PAGE: u32 = 1_000;

/// Why the log does not verify (or could not be checked).
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A call to the broker failed.
    #[error("broker: {0}")]
    Rpc(#[from] tonic::Status),
    /// A checkpoint's signature or format is wrong.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The log is not an extension of the trusted checkpoint.
    #[error(transparent)]
    Fork(#[from] Fork),
    /// The broker served a checkpoint smaller than the trusted one: a broker of a cluster
    /// behind the one that served the trusted checkpoint (its standby lagging), or a log rolled
    /// back. Not a proof of a fork (nothing shows the two trees differ), not a success either:
    /// the trusted checkpoint is kept, and a later run, once the broker has caught up, checks
    /// that the log extends it.
    #[error(
        "the broker served a checkpoint of {served} entries, fewer than the {trusted} already \
         trusted: the broker is behind (try again later, or through another broker) or the log \
         was rolled back; the trusted checkpoint is kept"
    )]
    Behind {
        /// The trusted checkpoint's size.
        trusted: u64,
        /// The size of the one served.
        served: u64,
    },
    /// An entry was not served.
    #[error("entry {0} is missing from the download")]
    MissingEntry(u64),
    /// The entries do not hash to the signed root; the first bad one is named.
    #[error(
        "entry {index} does not match the signed log (the entries from {index} on do not hash to the checkpoint's root)"
    )]
    BadEntry {
        /// Index of the first entry that does not match.
        index: u64,
    },
    /// The trusted checkpoint file cannot be read or written.
    #[error("{path}: {source}")]
    Trusted {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
}

/// What a successful verification established.
#[derive(Debug)]
pub struct Verified {
    /// The verified checkpoint, now trusted.
    pub checkpoint: VerifiedCheckpoint,
    /// The size of the previously trusted checkpoint, if there was one.
    pub previous_size: Option<u64>,
}

/// Verifies the whole log: the latest checkpoint's signature, its consistency with the
/// checkpoint trusted in `trusted` (if any), and every entry against the signed root. On
/// success the new checkpoint is saved in `trusted`.
pub async fn verify_log(
    channel: Channel,
    log_vkey: &str,
    trusted: &Path,
) -> Result<Verified, LogError> {
    let mut audit = AuditClient::new(channel);
    let note = audit
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: 0 })
        .await?
        .into_inner()
        .checkpoint;
    let latest = verify_checkpoint(log_vkey, &note)?;

    let io = |source| LogError::Trusted {
        path: trusted.display().to_string(),
        source,
    };
    let previous = match std::fs::read_to_string(trusted) {
        Ok(text) => Some(verify_checkpoint(log_vkey, &text)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    if let Some(old) = &previous {
        if latest.size < old.size {
            return Err(LogError::Behind {
                trusted: old.size,
                served: latest.size,
            });
        }
        let proof = if needs_proof(old, &latest) {
            audit
                .get_consistency_proof(pb::GetConsistencyProofRequest {
                    first_size: old.size,
                    second_size: latest.size,
                })
                .await?
                .into_inner()
                .hashes
        } else {
            Vec::new()
        };
        extends(old, &latest, &proof)?;
    }

    // Download every entry of the checkpointed tree and rebuild it.
    let mut tree = MemoryTree::default();
    while tree.len() < latest.size {
        let page = audit
            .list_events(pb::ListEventsRequest {
                start_index: tree.len(),
                limit: PAGE,
                ..Default::default()
            })
            .await?
            .into_inner();
        if page.events.is_empty() {
            return Err(LogError::MissingEntry(tree.len()));
        }
        for event in page.events {
            if tree.len() >= latest.size {
                break;
            }
            // Before the end of the checkpointed tree: a page that skips its last entries
            // would otherwise be asked for again, for ever.
            if event.index != tree.len() {
                return Err(LogError::MissingEntry(tree.len()));
            }
            tree.push(&event.entry);
        }
    }
    if latest.size == 0 {
        // An empty log has no entry to check; a signed empty checkpoint must carry the
        // empty root.
        if latest.root != tree.root(0) {
            return Err(LogError::BadEntry { index: 0 });
        }
    } else if tree.root(latest.size) != latest.root {
        let index = first_bad_entry(&mut audit, log_vkey, &tree, latest.size).await?;
        return Err(LogError::BadEntry { index });
    }

    replace_durably(trusted, note.as_bytes()).map_err(io)?;
    Ok(Verified {
        checkpoint: latest,
        previous_size: previous.map(|p| p.size),
    })
}

/// Replaces `path` with `bytes` so that a crash leaves the old file or the new one, never a
/// torn one: an empty trusted checkpoint would have the next run start trusting afresh, which
/// is when a fork goes unseen. A temporary file of this process's own, synced, renamed, and
/// the folder synced.
fn replace_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(folder)?.sync_all()
}

/// The first entry whose prefix no longer matches the broker's signed roots: a binary search
/// over sizes, comparing the local root of the first `m` entries with the signed checkpoint
/// of size `m` (O(log n) checkpoints).
async fn first_bad_entry(
    audit: &mut AuditClient<Channel>,
    log_vkey: &str,
    tree: &MemoryTree,
    size: u64,
) -> Result<u64, LogError> {
    let mut search = FirstBadEntry::new(size);
    while let Some(mid) = search.next_size() {
        let note = audit
            .get_checkpoint(pb::GetCheckpointRequest { tree_size: mid })
            .await?
            .into_inner()
            .checkpoint;
        let signed = verify_checkpoint(log_vkey, &note)?;
        search.record(mid, signed.size == mid && signed.root == tree.root(mid));
    }
    Ok(search.found())
}
