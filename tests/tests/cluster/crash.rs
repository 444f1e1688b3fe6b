//! Nodes die under load: a broker (SIGKILL), or the database's primary (SIGKILL, then the
//! standby promoted). The other brokers keep serving, the brokers find the new primary by
//! themselves, and every receipt a participant was given is in the final log at its index;
//! every checkpoint handed out meanwhile — each receipt's, each one an auditor polling every
//! broker was served through the death and the promotion — is a prefix of the final log.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use unefois_proto::v1 as pb;
use unefois_proto::v1::audit_client::AuditClient;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_tests::requests::rfr;
use unefois_tlog::{MemoryTree, VerifiedCheckpoint, verify_checkpoint};

use crate::harness::{Database, Process, load_registry, log_entries, processes_on, receipt_holds};

/// Load tasks per broker.
const TASKS: usize = 3;
/// No call may hang on a dead node.
const CALL_TIMEOUT: Duration = Duration::from_secs(8);

/// What the load was answered: each receipt, with the broker that gave it and when; and each
/// checkpoint an auditor polling the brokers meanwhile was served, with the broker and when.
#[derive(Default)]
pub(crate) struct Acked {
    pub(crate) receipts: Vec<(usize, Instant, pb::Receipt)>,
    pub(crate) checkpoints: Vec<(usize, Instant, String)>,
}

impl Acked {
    /// Adds what `other` was answered.
    pub(crate) fn extend(&mut self, other: Acked) {
        self.receipts.extend(other.receipts);
        self.checkpoints.extend(other.checkpoints);
    }
}

/// Fetches under law through every broker until `stop`: each acknowledged receipt is kept.
pub(crate) fn load(
    brokers: &[Process],
    stop: &Arc<AtomicBool>,
    acked: &Arc<Mutex<Acked>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for (b, broker) in brokers.iter().enumerate() {
        for t in 0..TASKS {
            let (stop, acked) = (stop.clone(), acked.clone());
            let (pki, addr) = (broker.home.join("pki"), broker.addr.to_string());
            tasks.push(tokio::spawn(async move {
                let subject = ["test:alice", "test:bob", "test:carol"][(b + t) % 3];
                while !stop.load(Ordering::Acquire) {
                    let call = async {
                        let channel = broker::client::connect(&pki, "mairie-lyon", &addr).await?;
                        let mut client = ExchangeClient::new(channel);
                        for _ in 0..20 {
                            if stop.load(Ordering::Acquire) {
                                break;
                            }
                            if let Ok(answer) = client.fetch(rfr(subject)).await
                                && let Some(receipt) = answer.into_inner().receipt
                            {
                                let mut acked = acked.lock().unwrap_or_else(|e| e.into_inner());
                                acked.receipts.push((b, Instant::now(), receipt));
                            }
                        }
                        anyhow::Ok(())
                    };
                    if !matches!(tokio::time::timeout(CALL_TIMEOUT, call).await, Ok(Ok(()))) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }));
        }
        let at = (broker.home.join("pki"), broker.addr.to_string());
        tasks.push(tokio::spawn(checkpoints(
            b,
            at,
            stop.clone(),
            acked.clone(),
        )));
    }
    tasks
}

/// How often the auditor asks each broker for its checkpoint.
const CHECKPOINT_POLL: Duration = Duration::from_millis(50);

/// An auditor asking broker `b` (at `addr`, its PKI in `pki`) for its latest checkpoint
/// (`Audit.GetCheckpoint`) until `stop`, through deaths and fail-overs: each note served is
/// kept, to be checked against the final log (a head served that a fail-over then loses would
/// be a fork in the auditor's hands).
async fn checkpoints(
    b: usize,
    (pki, addr): (PathBuf, String),
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
) {
    while !stop.load(Ordering::Acquire) {
        let connect = broker::client::connect(&pki, "cnil", &addr);
        let Ok(Ok(channel)) = tokio::time::timeout(CALL_TIMEOUT, connect).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut audit = AuditClient::new(channel);
        while !stop.load(Ordering::Acquire) {
            let ask = audit.get_checkpoint(pb::GetCheckpointRequest { tree_size: 0 });
            match tokio::time::timeout(CALL_TIMEOUT, ask).await {
                Ok(Ok(answer)) => {
                    let note = answer.into_inner().checkpoint;
                    let mut acked = acked.lock().unwrap_or_else(|e| e.into_inner());
                    acked.checkpoints.push((b, Instant::now(), note));
                }
                // Refused (a database away): asked again.
                Ok(Err(_)) => {}
                // Hung: a new connection.
                Err(_) => break,
            }
            tokio::time::sleep(CHECKPOINT_POLL).await;
        }
    }
}

/// Every acknowledged receipt is in the log read through `auditor`, at its index, and every
/// checkpoint handed out (each receipt's, each one the auditor was served) is a prefix of the
/// final log: its root is the one recomputed from the final log's first `size` entries. Every
/// one: two checkpoints of one size with two roots are a fork, whichever is checked alone
/// passes. Returns the final size.
pub(crate) async fn all_in_the_log(auditor: &Process, acked: &Acked) -> anyhow::Result<u64> {
    let log_vkey = std::fs::read_to_string(auditor.home.join("pki").join("log.vkey"))?;
    let log_vkey = log_vkey.trim();
    let mut audit = AuditClient::new(auditor.channel("cnil").await?);
    let note = audit
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: 0 })
        .await?
        .into_inner()
        .checkpoint;
    let last = verify_checkpoint(log_vkey, &note)?;
    let entries = log_entries(&mut audit, last.size).await?;
    let mut tree = MemoryTree::default();
    for entry in &entries {
        tree.push(entry);
    }
    ensure!(
        tree.root(last.size) == last.root,
        "the entries give another root"
    );
    let is_a_prefix =
        |given: &VerifiedCheckpoint| given.size <= last.size && tree.root(given.size) == given.root;
    for (b, _, receipt) in &acked.receipts {
        let at = entries.get(receipt.leaf_index as usize).with_context(|| {
            format!(
                "broker {b}'s receipt at {} is past the log",
                receipt.leaf_index
            )
        })?;
        ensure!(
            at == &receipt.entry,
            "broker {b}'s receipt {} is not the log's entry",
            receipt.leaf_index
        );
        let given = receipt_holds(log_vkey, receipt)?;
        ensure!(
            is_a_prefix(&given),
            "broker {b}'s receipt {} came with a checkpoint of {} entries that is not the final \
             log's first {}",
            receipt.leaf_index,
            given.size,
            given.size
        );
    }
    for (b, _, note) in &acked.checkpoints {
        let given = verify_checkpoint(log_vkey, note)?;
        ensure!(
            is_a_prefix(&given),
            "broker {b} served a checkpoint of {} entries that is not the final log's first {}",
            given.size,
            given.size
        );
    }
    let mut leaves: Vec<u64> = acked.receipts.iter().map(|r| r.2.leaf_index).collect();
    leaves.sort_unstable();
    leaves.dedup();
    ensure!(
        leaves.len() == acked.receipts.len(),
        "two receipts share a leaf"
    );
    Ok(last.size)
}

/// Receipts given, and checkpoints served, by broker `b` after `since`.
fn served_since(acked: &Mutex<Acked>, b: usize, since: Instant) -> (usize, usize) {
    let acked = acked.lock().unwrap_or_else(|e| e.into_inner());
    let after = |i: usize, at: Instant| i == b && at > since;
    (
        acked.receipts.iter().filter(|r| after(r.0, r.1)).count(),
        acked.checkpoints.iter().filter(|c| after(c.0, c.1)).count(),
    )
}

/// Waits until each of `brokers` has given receipts and served a checkpoint after `since`.
pub(crate) async fn wait_served(
    acked: &Mutex<Acked>,
    brokers: &[usize],
    since: Instant,
) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(40);
    while brokers.iter().any(|b| {
        let (receipts, checkpoints) = served_since(acked, *b, since);
        receipts < 5 || checkpoints < 1
    }) {
        ensure!(
            Instant::now() < until,
            "brokers {brokers:?} did not serve again after 40 s (receipts, checkpoints: {:?})",
            brokers
                .iter()
                .map(|b| served_since(acked, *b, since))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_killed_under_load_loses_no_acknowledged_record() -> anyhow::Result<()> {
    unefois_tests::install_crypto();
    let db = Database::start().await?;
    let registry = tempfile::tempdir()?;
    let registry = load_registry(registry.path())?;
    let (_homes, mut brokers) = processes_on(&db.url(), 3, &registry).await?;
    let (stop, acked) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Mutex::new(Acked::default())),
    );
    let tasks = load(&brokers, &stop, &acked);
    wait_served(&acked, &[0, 1, 2], Instant::now()).await?;
    brokers[1].kill();
    let killed = Instant::now();
    // The two others keep serving.
    wait_served(&acked, &[0, 2], killed).await?;
    stop.store(true, Ordering::Release);
    for task in tasks {
        task.await?;
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap_or_else(|e| e.into_inner()));
    ensure!(
        acked.receipts.iter().any(|r| r.0 == 1),
        "broker 1 served before its death"
    );
    all_in_the_log(&brokers[2], &acked).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_primary_killed_under_load_then_the_standby_promoted_loses_nothing()
-> anyhow::Result<()> {
    unefois_tests::install_crypto();
    let mut db = Database::start().await?;
    let registry = tempfile::tempdir()?;
    let registry = load_registry(registry.path())?;
    let (_homes, brokers) = processes_on(&db.url(), 3, &registry).await?;
    let (stop, acked) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Mutex::new(Acked::default())),
    );
    let tasks = load(&brokers, &stop, &acked);
    wait_served(&acked, &[0, 1, 2], Instant::now()).await?;
    tokio::task::block_in_place(|| {
        db.primary.kill();
        db.standby.promote();
    });
    let promoted = Instant::now();
    // Every broker finds the new primary by itself (the URL names both servers).
    wait_served(&acked, &[0, 1, 2], promoted).await?;
    stop.store(true, Ordering::Release);
    for task in tasks {
        task.await?;
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap_or_else(|e| e.into_inner()));
    let size = all_in_the_log(&brokers[0], &acked).await?;
    ensure!(size as usize >= acked.receipts.len(), "{size} entries");
    Ok(())
}
