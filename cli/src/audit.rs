//! `unefois audit`: verify, follow, checkpoint and export the audit log (auditors).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use unefois_proto::v1 as pb;
use unefois_proto::v1::audit_client::AuditClient;

use crate::client::{ClientArgs, connect, rpc_error};
use crate::print::{stdout_error, write_json};

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the log against the pinned log key and the last trusted checkpoint, download every
    /// entry and recompute the root; exits non-zero naming the first bad entry or the fork.
    Verify {
        #[command(flatten)]
        client: ClientArgs,
        /// Where the last verified checkpoint is kept (default HOME/audit/<participant>.checkpoint).
        #[arg(long)]
        trusted: Option<PathBuf>,
        /// The log's verifier key file (default HOME/pki/log.vkey).
        #[arg(long)]
        log_key: Option<PathBuf>,
    },
    /// Print the latest events, one line each; with --follow, then the new ones as they land.
    Tail {
        #[command(flatten)]
        client: ClientArgs,
        /// How many of the latest events.
        #[arg(long, short = 'n', default_value_t = 20)]
        lines: u64,
        /// Keep following the log (every second) until Ctrl-C. Each read is itself an
        /// `audit_read` entry, so these show too.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Save a signed checkpoint (any participant), with the consistency proofs from the
    /// checkpoints of a receipt or access history file: `unefois verify FILE --checkpoint OUT`
    /// then checks, offline, that the log only grew since.
    Checkpoint {
        #[command(flatten)]
        client: ClientArgs,
        /// The tree size of the checkpoint wanted (default: the latest).
        #[arg(long, default_value_t = 0)]
        size: u64,
        /// A file of `unefois fetch --out` or `unefois accesses --out`: proofs from its
        /// checkpoints' sizes are included.
        #[arg(long = "for", value_name = "FILE")]
        for_file: Option<PathBuf>,
        /// Where to write it (JSON); standard output when omitted.
        #[arg(long, value_name = "OUT")]
        out: Option<PathBuf>,
    },
    /// Export events as JSON lines: {"index":N,"entry":<the exact entry>}.
    Export {
        #[command(flatten)]
        client: ClientArgs,
        /// Output format (only jsonl).
        #[arg(long, default_value = "jsonl")]
        format: String,
        /// First entry index.
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
}

/// Runs an `audit` subcommand.
pub(crate) async fn audit(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify {
            client,
            trusted,
            log_key,
        } => audit_verify(client, trusted, log_key).await,
        AuditCommand::Tail {
            client,
            lines,
            follow,
        } => audit_tail(client, lines, follow).await,
        AuditCommand::Checkpoint {
            client,
            size,
            for_file,
            out,
        } => audit_checkpoint(client, size, for_file, out).await,
        AuditCommand::Export {
            client,
            format,
            from,
        } => audit_export(client, &format, from).await,
    }
}

async fn audit_verify(
    client: ClientArgs,
    trusted: Option<PathBuf>,
    log_key: Option<PathBuf>,
) -> anyhow::Result<()> {
    let key_path = log_key.unwrap_or_else(|| client.home.join("pki").join("log.vkey"));
    let vkey = std::fs::read_to_string(&key_path).with_context(|| {
        format!(
            "cannot read the log verifier key {} (distribute it out of band)",
            key_path.display()
        )
    })?;
    let trusted = trusted.unwrap_or_else(|| {
        client.home.join("audit").join(format!(
            "{}.checkpoint",
            client.as_participant.replace('/', "_")
        ))
    });
    if let Some(dir) = trusted.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let channel = connect(&client).await?;
    let verified = broker::auditor::verify_log(channel, vkey.trim(), &trusted)
        .await
        .map_err(|e| match e {
            broker::auditor::LogError::Rpc(status) => rpc_error(status),
            other => anyhow::anyhow!("{other}"),
        })?;
    match verified.previous_size {
        Some(previous) => outln!(
            "log verified: {} entries, consistent with the trusted checkpoint of {previous} entries",
            verified.checkpoint.size
        ),
        None => outln!(
            "log verified: {} entries (first run: checkpoint trusted from now on)",
            verified.checkpoint.size
        ),
    }
    outln!("root {}", hex::encode(verified.checkpoint.root));
    outln!("trusted checkpoint saved in {}", trusted.display());
    Ok(())
}

/// How often `audit tail --follow` asks for the latest checkpoint.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The latest checkpoint's tree size (a call any participant may make, not itself recorded).
async fn latest_size(audit: &mut AuditClient<tonic::transport::Channel>) -> anyhow::Result<u64> {
    let note = audit
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: 0 })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .checkpoint;
    broker::receipt::checkpoint_size(&note).context("malformed checkpoint")
}

async fn audit_tail(client: ClientArgs, lines: u64, follow: bool) -> anyhow::Result<()> {
    let mut audit = AuditClient::new(connect(&client).await?);
    let size = latest_size(&mut audit).await?;
    let page = audit
        .list_events(pb::ListEventsRequest {
            start_index: size.saturating_sub(lines.min(1_000)),
            limit: 1_000,
            ..Default::default()
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    // Without --follow, the log as of its latest checkpoint; following, everything listed,
    // this read's own entry included, so that the next poll does not list it again.
    for e in page.events.iter().filter(|e| follow || e.index < size) {
        print_event(e)?;
    }
    if !follow {
        return Ok(());
    }
    let mut next = page.next_index;
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        tokio::select! {
            _ = &mut interrupted => return Ok(()),
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
        let size = latest_size(&mut audit).await?;
        while next < size {
            let page = audit
                .list_events(pb::ListEventsRequest {
                    start_index: next,
                    limit: 1_000,
                    ..Default::default()
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            for e in &page.events {
                print_event(e)?;
            }
            if page.next_index <= next {
                break;
            }
            next = page.next_index;
        }
    }
}

/// One line per event: index, RFC 3339 UTC time, kind, and what happened.
fn print_event(e: &pb::AuditEvent) -> anyhow::Result<()> {
    let time = e
        .time
        .as_ref()
        .map(|t| prost_types::Timestamp {
            seconds: t.seconds,
            nanos: 0,
        })
        .map(|t| broker::receipt::rfc3339(Some(&t)))
        .unwrap_or_default();
    let what = match e.kind.as_str() {
        "exchange" => format!(
            "{} {} {} for {}{}",
            e.outcome,
            e.attestation_type,
            e.participant,
            e.purpose,
            match pb::ErrorReason::try_from(e.reason) {
                Ok(r) if r != pb::ErrorReason::Unspecified => format!(" ({})", r.as_str_name()),
                _ => String::new(),
            }
        ),
        _ => e.participant.clone(),
    };
    outln!("{:>8} {time} {:<16} {what}", e.index, e.kind);
    Ok(())
}

/// The checkpoint `note` with the consistency proofs to it from the `earlier` sizes below it,
/// asked of the broker (any participant may).
pub(crate) async fn later_checkpoint(
    audit: &mut AuditClient<tonic::transport::Channel>,
    note: String,
    earlier: &[u64],
) -> anyhow::Result<broker::receipt::LaterCheckpoint> {
    use broker::receipt::{
        Base64, CHECKPOINT_FORMAT, ConsistencyProof, LaterCheckpoint, checkpoint_size,
    };
    let newer = checkpoint_size(&note).context("malformed checkpoint")?;
    let mut consistency = Vec::new();
    for &first in earlier.iter().filter(|&&s| s > 0 && s < newer) {
        let hashes = audit
            .get_consistency_proof(pb::GetConsistencyProofRequest {
                first_size: first,
                second_size: newer,
            })
            .await
            .map_err(rpc_error)?
            .into_inner()
            .hashes;
        consistency.push(ConsistencyProof {
            first_size: first,
            proof: hashes.into_iter().map(Base64).collect(),
        });
    }
    Ok(LaterCheckpoint {
        format: CHECKPOINT_FORMAT.to_string(),
        checkpoint: note,
        consistency,
    })
}

/// Saves a signed checkpoint with the consistency proofs from the checkpoints of `for_file`.
async fn audit_checkpoint(
    client: ClientArgs,
    size: u64,
    for_file: Option<PathBuf>,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    use broker::receipt::{VerifiableFile, checkpoint_size};
    let earlier = match &for_file {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            VerifiableFile::parse(&bytes)
                .with_context(|| path.display().to_string())?
                .checkpoint_sizes()?
        }
        None => Vec::new(),
    };
    let mut audit = AuditClient::new(connect(&client).await?);
    let note = audit
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: size })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .checkpoint;
    let newer = checkpoint_size(&note).context("malformed checkpoint")?;
    let later = later_checkpoint(&mut audit, note, &earlier).await?;
    let proofs = later.consistency.len();
    match &out {
        Some(path) => {
            write_json(path, &later)?;
            outln!(
                "checkpoint of {newer} entries saved in {} with {proofs} consistency proof(s)",
                path.display()
            );
        }
        None => outln!("{}", serde_json::to_string_pretty(&later)?),
    }
    Ok(())
}

async fn audit_export(client: ClientArgs, format: &str, from: u64) -> anyhow::Result<()> {
    anyhow::ensure!(format == "jsonl", "unknown format {format:?}: only jsonl");
    let mut audit = AuditClient::new(connect(&client).await?);
    let mut stream = audit
        .export_events(pb::ListEventsRequest {
            start_index: from,
            ..Default::default()
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while let Some(event) = stream.message().await.map_err(rpc_error)? {
        // The entry is JSON already: written verbatim, so its exact bytes (and hash) survive.
        let entry = std::str::from_utf8(&event.entry).context("an entry is not UTF-8")?;
        writeln!(out, "{{\"index\":{},\"entry\":{entry}}}", event.index).map_err(stdout_error)?;
    }
    out.flush().map_err(stdout_error)?;
    Ok(())
}
