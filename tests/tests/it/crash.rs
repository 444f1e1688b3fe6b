//! Crash safety of the real `unefois serve` process. Under concurrent load, the broker is killed
//! with SIGKILL at a random moment and restarted on the same home; everything a participant was
//! answered before the crash (a FetchResponse with its receipt, a granted consent) must still
//! hold against the restarted broker, checked as the participants and an auditor would: with the
//! published verifier keys, inclusion and consistency proofs, and the whole log re-hashed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail, ensure};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use unefois_proto::v1 as pb;
use unefois_proto::v1::audit_client::AuditClient;
use unefois_proto::v1::consents_client::ConsentsClient;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_proto::v1::mandates_client::MandatesClient;
use unefois_tests::sample::{AGENT, QF, RFR};
use unefois_tests::{install_crypto, repo_root, unefois_binary};
use unefois_tlog::{VerifiedCheckpoint, verify_checkpoint};
use unefois_tlog::{root_of, verify_consistency, verify_inclusion};

/// Kill rounds in CI; `UNEFOIS_CRASH_ROUNDS=20` for a soak.
const ROUNDS: usize = 3;
const CLIENTS: usize = 8;
const CONSUMER: &str = "mairie-lyon";
const SUBJECTS: [&str; 3] = ["test:alice", "test:bob", "test:carol"];
const PURPOSE: &str = "tarification_cantine";
/// Threads checking signatures offline.
const OFFLINE_WORKERS: usize = 4;
/// Proof requests in flight at once.
const RPC_CONCURRENCY: usize = 8;
/// No call of the load may hang: the crash resets its connection.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A child process that is killed (SIGKILL) and reaped when dropped, so that no broker outlives
/// a failing test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A running `unefois serve` and the addresses it printed.
struct Served {
    child: KillOnDrop,
    addr: SocketAddr,
}

/// Where the test lives: a copy of the checkout's examples and the broker's home beside it.
struct Site {
    binary: PathBuf,
    checkout: PathBuf,
    home: PathBuf,
}

impl Site {
    fn pki(&self) -> PathBuf {
        self.home.join("pki")
    }

    /// Starts `unefois serve --dev` on the home, on ephemeral ports, and waits until it is
    /// ready.
    async fn serve(&self) -> anyhow::Result<Served> {
        let child = Command::new(&self.binary)
            .current_dir(&self.checkout)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--ops-listen",
                "127.0.0.1:0",
                "--dev",
            ])
            .arg("--home")
            .arg(&self.home)
            .arg("--registry")
            .arg(self.checkout.join("examples").join("registry.toml"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start unefois serve")?;
        let mut child = KillOnDrop(child);
        let stdout = child.0.stdout.take().context("no stdout")?;
        let (addr, ops_addr) =
            tokio::task::spawn_blocking(move || unefois_tests::served_addresses(stdout)).await??;
        unefois_tests::wait_until_ready(&mut child.0, ops_addr).await?;
        Ok(Served { child, addr })
    }

    async fn channel(&self, served: &Served, name: &str) -> anyhow::Result<Channel> {
        broker::client::connect(&self.pki(), name, &served.addr.to_string())
            .await
            .with_context(|| format!("connecting as {name}"))
    }

    /// The two verifier keys the broker published in the PKI folder: (attestation, log).
    fn published_keys(&self) -> anyhow::Result<(String, String)> {
        let read = |name: &str| -> anyhow::Result<String> {
            let path = self.pki().join(name);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(text.trim().to_string())
        };
        Ok((read("attestation.vkey")?, read("log.vkey")?))
    }
}

/// SIGKILL, then reap: the broker gets no chance to flush or drain anything.
fn sigkill(served: &mut Served) -> anyhow::Result<ExitStatus> {
    served.child.0.kill().context("SIGKILL")?;
    Ok(served.child.0.wait()?)
}

/// SIGTERM, then wait (10 s at most) for a clean exit.
async fn terminate(served: &mut Served) -> anyhow::Result<ExitStatus> {
    let child = &mut served.child.0;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    ensure!(status.success(), "kill -TERM failed");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!("the broker did not stop within 10 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Everything the participants were answered, over all rounds.
#[derive(Default)]
struct Acked {
    fetches: Vec<pb::FetchResponse>,
    consents: Vec<pb::Consent>,
    /// The request id of each acknowledged grant, by consent id.
    grant_ids: HashMap<String, String>,
    /// Consents whose revocation was acknowledged.
    revoked: HashSet<String>,
    /// Consents whose revocation was asked (the crash may catch one durable but unanswered).
    revoking: HashSet<String>,
    mandates: Vec<pb::Mandate>,
    /// The request id and subject of each acknowledged fetch, by leaf index.
    fetch_ids: BTreeMap<u64, (String, String)>,
    /// The request id of each acknowledged mandate, by mandate id.
    mandate_ids: HashMap<String, String>,
}

fn rounds() -> usize {
    std::env::var("UNEFOIS_CRASH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(ROUNDS)
}

/// A grant of its own scope (one person per request id): a grant of a scope in force would
/// renew it, and a revocation end every one of its scope.
fn grant_request(request_id: &str) -> pb::GrantConsentRequest {
    let subject = format!("test:{request_id}");
    pb::GrantConsentRequest {
        id_token: unefois_tests::id_token(&subject, CONSUMER),
        subject,
        consumer: CONSUMER.into(),
        attestation_types: vec![QF.into()],
        purpose: PURPOSE.into(),
        valid_days: 30,
        request_id: request_id.into(),
        ..Default::default()
    }
}

fn mandate_request(request_id: &str) -> pb::CreateMandateRequest {
    pb::CreateMandateRequest {
        subject: "test:bob".into(),
        purposes: vec!["aide_energie".into()],
        duration_days: 31,
        document_sha256: Sha256::digest(request_id.as_bytes()).to_vec(),
        id_token: unefois_tests::id_token("test:bob", "france-services-lyon"),
        request_id: request_id.into(),
        ..Default::default()
    }
}

fn lock(acked: &Mutex<Acked>) -> MutexGuard<'_, Acked> {
    acked
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn fetch_request(subject: &str) -> pb::FetchRequest {
    pb::FetchRequest {
        subject: subject.into(),
        attestation_type: RFR.into(),
        purpose: PURPOSE.into(),
        ..Default::default()
    }
}

/// One participant's load: Fetch under law in a loop, a consent grant every 5th iteration, the
/// revocation of the task's last consent every 11th, a mandate taken by a mediator's agent every
/// 7th, until the broker is killed. Returns the failures seen before the kill (none are
/// expected).
async fn load(
    (channel, agent): (Channel, Channel),
    round: usize,
    task: usize,
    killed: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
) -> Vec<String> {
    let mut exchange = ExchangeClient::new(channel.clone());
    let mut consents = ConsentsClient::new(channel);
    let mut mandates = MandatesClient::new(agent);
    let mut unexpected = Vec::new();
    let mut last_consent: Option<String> = None;
    for i in 0usize.. {
        if killed.load(Ordering::SeqCst) {
            break;
        }
        let failure = if i % 5 == 4 {
            let request_id = format!("crash-round{round}-task{task}-{i}");
            let request = grant_request(&request_id);
            match tokio::time::timeout(CALL_TIMEOUT, consents.grant(request)).await {
                Ok(Ok(answer)) => match answer.into_inner().consent {
                    Some(consent) => {
                        last_consent = Some(consent.id.clone());
                        let mut acked = lock(&acked);
                        acked.grant_ids.insert(consent.id.clone(), request_id);
                        acked.consents.push(consent);
                        None
                    }
                    None => Some("Grant answered without its consent".to_string()),
                },
                Ok(Err(status)) => Some(format!("Grant: {status:?}")),
                Err(_) => Some(format!("Grant: no answer within {CALL_TIMEOUT:?}")),
            }
        } else if i % 11 == 10
            && let Some(consent_id) = last_consent.take()
        {
            let request = pb::RevokeConsentRequest {
                consent_id: consent_id.clone(),
                ..Default::default()
            };
            lock(&acked).revoking.insert(consent_id.clone());
            match tokio::time::timeout(CALL_TIMEOUT, consents.revoke(request)).await {
                Ok(Ok(_)) => {
                    lock(&acked).revoked.insert(consent_id);
                    None
                }
                Ok(Err(status)) => Some(format!("Revoke: {status:?}")),
                Err(_) => Some(format!("Revoke: no answer within {CALL_TIMEOUT:?}")),
            }
        } else if i % 7 == 6 {
            let request_id = format!("crash-mandate-round{round}-task{task}-{i}");
            let request = mandate_request(&request_id);
            match tokio::time::timeout(CALL_TIMEOUT, mandates.create(request)).await {
                Ok(Ok(answer)) => match answer.into_inner().mandate {
                    Some(mandate) => {
                        let mut acked = lock(&acked);
                        acked.mandate_ids.insert(mandate.id.clone(), request_id);
                        acked.mandates.push(mandate);
                        None
                    }
                    None => Some("Create answered without its mandate".to_string()),
                },
                Ok(Err(status)) => Some(format!("Mandate: {status:?}")),
                Err(_) => Some(format!("Mandate: no answer within {CALL_TIMEOUT:?}")),
            }
        } else {
            let subject = SUBJECTS[(task + i) % SUBJECTS.len()];
            let request_id = format!("fetch-round{round}-task{task}-{i}");
            let request = pb::FetchRequest {
                request_id: request_id.clone(),
                ..fetch_request(subject)
            };
            match tokio::time::timeout(CALL_TIMEOUT, exchange.fetch(request)).await {
                Ok(Ok(answer)) => {
                    let answer = answer.into_inner();
                    let mut acked = lock(&acked);
                    if let Some(receipt) = &answer.receipt {
                        acked
                            .fetch_ids
                            .insert(receipt.leaf_index, (request_id, subject.to_string()));
                    }
                    acked.fetches.push(answer);
                    None
                }
                Ok(Err(status)) => Some(format!("Fetch: {status:?}")),
                Err(_) => Some(format!("Fetch: no answer within {CALL_TIMEOUT:?}")),
            }
        };
        if let Some(failure) = failure {
            // After the kill, failures are the crash itself; before it, they are a bug.
            if !killed.load(Ordering::SeqCst) {
                unexpected.push(format!(
                    "round {round}, task {task}, iteration {i}: {failure}"
                ));
            }
            break;
        }
    }
    unexpected
}

/// A delay in [150, 600] ms, different from run to run.
fn random_delay() -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    Duration::from_millis(150 + u64::from(nanos / 1_000) % 451)
}

fn hashes(proof: &[Vec<u8>]) -> anyhow::Result<Vec<[u8; 32]>> {
    proof
        .iter()
        .map(|h| {
            <[u8; 32]>::try_from(h.as_slice())
                .map_err(|_| anyhow!("a proof hash of {} bytes", h.len()))
        })
        .collect()
}

fn json(entry: &[u8]) -> anyhow::Result<serde_json::Value> {
    serde_json::from_slice(entry).context("an audit entry is not JSON")
}

/// What a participant checked offline on an acknowledged FetchResponse: what its receipt
/// proves.
#[derive(Clone)]
struct Receipted {
    /// The answer's rank among all acknowledged answers, for messages.
    n: usize,
    leaf: u64,
    entry: Vec<u8>,
    /// The receipt's signed checkpoint, as received.
    note: String,
    at: VerifiedCheckpoint,
}

/// What a participant checks offline on a FetchResponse, with the two published keys only:
/// the envelope's signature, the receipt's checkpoint, the inclusion proof, and that the entry
/// is the one of this attestation. `notes` caches the checkpoints already verified (many
/// receipts share one group commit's checkpoint).
fn verify_offline(
    n: usize,
    answer: &pb::FetchResponse,
    (attestation_vkey, log_vkey): &(String, String),
    notes: &mut HashMap<String, VerifiedCheckpoint>,
) -> anyhow::Result<Receipted> {
    let envelope = unefois_tests::envelope_of(answer.envelope.as_ref().context("no envelope")?);
    unefois_tlog::dsse::verify(attestation_vkey, &envelope)
        .context("the envelope does not verify with attestation.vkey")?;
    let attestation = answer.attestation.as_ref().context("no attestation")?;
    let receipt = answer.receipt.as_ref().context("no receipt")?;
    let checkpoint = match notes.get(&receipt.checkpoint) {
        Some(checkpoint) => checkpoint.clone(),
        None => {
            let checkpoint = verify_checkpoint(log_vkey, &receipt.checkpoint)
                .context("the receipt's checkpoint does not verify with log.vkey")?;
            notes.insert(receipt.checkpoint.clone(), checkpoint.clone());
            checkpoint
        }
    };
    ensure!(
        receipt.leaf_index < checkpoint.size,
        "leaf {} outside the receipt's checkpoint of {} entries",
        receipt.leaf_index,
        checkpoint.size
    );
    verify_inclusion(
        &hashes(&receipt.inclusion_proof)?,
        checkpoint.size,
        checkpoint.root,
        receipt.leaf_index,
        &receipt.entry,
    )
    .context("the receipt's inclusion proof does not verify")?;
    let entry = json(&receipt.entry)?;
    ensure!(entry["kind"] == "exchange", "{entry}");
    ensure!(entry["outcome"] == "granted", "{entry}");
    ensure!(
        entry["attestation_id"] == attestation.id.as_str(),
        "the entry is not the attestation's: {entry}"
    );
    ensure!(
        entry["payload_sha256"] == hex::encode(Sha256::digest(&envelope.payload)).as_str(),
        "the entry's payload hash is not the envelope's: {entry}"
    );
    Ok(Receipted {
        n,
        leaf: receipt.leaf_index,
        entry: receipt.entry.clone(),
        note: receipt.checkpoint.clone(),
        at: checkpoint,
    })
}

/// [`verify_offline`] on answers `first..` of the acknowledged ones, on the blocking pool
/// (signature checks are slow in a debug build).
async fn verify_all_offline(
    answers: &[pb::FetchResponse],
    first: usize,
    keys: &(String, String),
) -> anyhow::Result<Vec<Receipted>> {
    let chunk = answers.len().div_ceil(OFFLINE_WORKERS).max(1);
    let mut workers = Vec::new();
    for (c, part) in answers.chunks(chunk).enumerate() {
        let part = part.to_vec();
        let keys = keys.clone();
        workers.push(tokio::task::spawn_blocking(move || {
            let mut notes = HashMap::new();
            part.iter()
                .enumerate()
                .map(|(i, answer)| {
                    let n = first + c * chunk + i;
                    verify_offline(n, answer, &keys, &mut notes)
                        .with_context(|| format!("acknowledged fetch #{n}, offline"))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        }));
    }
    let mut checked = Vec::with_capacity(answers.len());
    for worker in workers {
        checked.extend(worker.await??);
    }
    Ok(checked)
}

/// Every acknowledged receipt against the restarted log: its entry is included in the latest
/// checkpoint, and the log is consistent with (and re-signs the very same note for) every
/// checkpoint handed out in a receipt.
async fn verify_receipts_in_log(
    audit: &AuditClient<Channel>,
    receipts: &[Receipted],
    now: &VerifiedCheckpoint,
) -> anyhow::Result<()> {
    let mut leaves = HashSet::new();
    let mut sizes: BTreeMap<u64, &Receipted> = BTreeMap::new();
    for r in receipts {
        ensure!(
            leaves.insert(r.leaf),
            "acknowledged fetch #{}: another acknowledged answer has leaf {} too",
            r.n,
            r.leaf
        );
        ensure!(
            r.at.size <= now.size,
            "acknowledged fetch #{}: its checkpoint has {} entries, the log after the crash only {}",
            r.n,
            r.at.size,
            now.size
        );
        let first = sizes.entry(r.at.size).or_insert(r);
        ensure!(
            first.at.root == r.at.root,
            "acknowledged fetches #{} and #{} hold checkpoints of {} entries with different \
             roots: a fork",
            first.n,
            r.n,
            r.at.size
        );
    }

    let limit = Arc::new(Semaphore::new(RPC_CONCURRENCY));
    let mut calls: JoinSet<anyhow::Result<()>> = JoinSet::new();
    for r in receipts {
        let permit = limit.clone().acquire_owned().await?;
        let (mut audit, r, now) = (audit.clone(), r.clone(), now.clone());
        calls.spawn(async move {
            let _permit = permit;
            let what = format!("acknowledged fetch #{} (leaf {})", r.n, r.leaf);
            let proof = audit
                .get_inclusion_proof(pb::GetInclusionProofRequest {
                    leaf_index: r.leaf,
                    tree_size: now.size,
                })
                .await
                .with_context(|| format!("{what}: GetInclusionProof"))?
                .into_inner()
                .hashes;
            verify_inclusion(&hashes(&proof)?, now.size, now.root, r.leaf, &r.entry).with_context(
                || {
                    format!(
                        "{what}: not in the log after the crash (checkpoint of {} entries)",
                        now.size
                    )
                },
            )
        });
    }
    for r in sizes.into_values() {
        let permit = limit.clone().acquire_owned().await?;
        let (mut audit, r, now) = (audit.clone(), r.clone(), now.clone());
        calls.spawn(async move {
            let _permit = permit;
            let at = &r.at;
            let proof = audit
                .get_consistency_proof(pb::GetConsistencyProofRequest {
                    first_size: at.size,
                    second_size: now.size,
                })
                .await
                .with_context(|| format!("GetConsistencyProof({}, {})", at.size, now.size))?
                .into_inner()
                .hashes;
            verify_consistency(&hashes(&proof)?, at.size, at.root, now.size, now.root)
                .with_context(|| {
                    format!(
                        "the log after the crash ({} entries) is not consistent with the \
                         checkpoint of {} entries of acknowledged fetch #{}",
                        now.size, at.size, r.n
                    )
                })?;
            // Checkpoints are deterministic: the same size yields the same signed note.
            let note = audit
                .get_checkpoint(pb::GetCheckpointRequest { tree_size: at.size })
                .await
                .with_context(|| format!("GetCheckpoint({})", at.size))?
                .into_inner()
                .checkpoint;
            ensure!(
                note == r.note,
                "the checkpoint of {} entries changed across the crash:\nin a receipt:\n{}\n\
                 now:\n{note}",
                at.size,
                r.note
            );
            Ok(())
        });
    }
    while let Some(done) = calls.join_next().await {
        done??;
    }
    Ok(())
}

/// The checks of the participants and of an auditor against a restarted broker, over every
/// answer of every round so far. Returns the latest checkpoint's size.
async fn verify_after_restart(
    site: &Site,
    served: &Served,
    log_vkey: &str,
    receipts: &[Receipted],
    acked: &Arc<Mutex<Acked>>,
) -> anyhow::Result<u64> {
    let last_fetch = lock(acked)
        .fetch_ids
        .iter()
        .next_back()
        .map(|(leaf, id)| (*leaf, id.clone()));
    let (granted, revoked, revoking, mandates, grant_ids, mandate_ids) = {
        let acked = lock(acked);
        (
            acked.consents.clone(),
            acked.revoked.clone(),
            acked.revoking.clone(),
            acked.mandates.clone(),
            acked.grant_ids.clone(),
            acked.mandate_ids.clone(),
        )
    };
    let audit = AuditClient::new(site.channel(served, "dgfip").await?);
    let latest = audit
        .clone()
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: 0 })
        .await
        .context("GetCheckpoint after the restart")?
        .into_inner();
    ensure!(
        latest.verifier_key == log_vkey,
        "the restarted broker serves another log key: {} (published before: {log_vkey})",
        latest.verifier_key
    );
    let now = verify_checkpoint(log_vkey, &latest.checkpoint)
        .context("the latest checkpoint after the restart")?;

    // a. Every acknowledged FetchResponse (checked offline before) is in the restarted log.
    verify_receipts_in_log(&audit, receipts, &now).await?;

    // b. Every acknowledged consent is there, active unless its revocation was acknowledged.
    let mut consents = ConsentsClient::new(site.channel(served, CONSUMER).await?);
    for acked in &granted {
        let consent = consents
            .get(pb::GetConsentRequest {
                consent_id: acked.id.clone(),
            })
            .await
            .with_context(|| format!("acknowledged consent {}: Get", acked.id))?
            .into_inner()
            .consent
            .with_context(|| format!("acknowledged consent {}: Get without it", acked.id))?;
        let status_ok = match consent.status() {
            pb::ConsentStatus::Revoked => revoking.contains(&acked.id),
            pb::ConsentStatus::Active => !revoked.contains(&acked.id),
            _ => false,
        };
        ensure!(
            consent.id == acked.id
                && status_ok
                && consent.consumer == CONSUMER
                && consent.purpose == PURPOSE
                && consent.attestation_types == [QF],
            "acknowledged consent {} after the crash: {consent:?}",
            acked.id
        );
    }

    // b'. Every acknowledged mandate is there, active.
    let mut agent = MandatesClient::new(site.channel(served, AGENT).await?);
    let mut held = HashMap::new();
    let mut page_token = String::new();
    loop {
        let page = agent
            .list(pb::ListMandatesRequest {
                page_size: 100,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .context("Mandates.List after the restart")?
            .into_inner();
        held.extend(page.mandates.into_iter().map(|m| (m.id.clone(), m)));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    for acked in &mandates {
        let found = held
            .get(&acked.id)
            .with_context(|| format!("acknowledged mandate {} lost in the crash", acked.id))?;
        ensure!(
            found.status() == pb::MandateStatus::Active && found.purposes == acked.purposes,
            "acknowledged mandate {} after the crash: {found:?}",
            acked.id
        );
    }

    // b''. Retries after the crash create nothing new: the same request id gives the same
    // consent or mandate (the latest of each, which the crash may have caught in flight).
    if let Some(last) = granted.last() {
        let request_id = &grant_ids[&last.id];
        let again = consents
            .grant(grant_request(request_id))
            .await
            .context("retrying an acknowledged grant after the restart")?
            .into_inner()
            .consent
            .context("no consent")?;
        ensure!(
            again.id == last.id,
            "a retried grant after the crash created consent {} instead of returning {}",
            again.id,
            last.id
        );
        // The same request id from another participant never returns this answer.
        let other = ConsentsClient::new(site.channel(served, AGENT).await?)
            .grant(pb::GrantConsentRequest {
                consumer: "france-services-lyon".into(),
                ..grant_request(request_id)
            })
            .await;
        if let Ok(answer) = &other {
            ensure!(
                answer.get_ref().consent.as_ref().map(|c| &c.id) != Some(&last.id),
                "another participant's request id returned mairie-lyon's consent"
            );
        }
    }
    if let Some((leaf, (request_id, subject))) = last_fetch {
        // Its answer died with the process: served again, and recorded as a retry of it.
        let again = ExchangeClient::new(site.channel(served, CONSUMER).await?)
            .fetch(pb::FetchRequest {
                request_id: request_id.clone(),
                ..fetch_request(&subject)
            })
            .await
            .context("retrying an acknowledged fetch after the restart")?
            .into_inner();
        let entry = json(&again.receipt.unwrap_or_default().entry)?;
        ensure!(
            entry["retry_of"] == leaf,
            "the retry of fetch {request_id} (leaf {leaf}) is not recorded as one: {entry}"
        );
    }
    if let Some(last) = mandates.last() {
        let again = agent
            .create(mandate_request(&mandate_ids[&last.id]))
            .await
            .context("retrying an acknowledged mandate after the restart")?
            .into_inner()
            .mandate
            .context("no mandate")?;
        ensure!(
            again.id == last.id,
            "a retried mandate after the crash created {} instead of returning {}",
            again.id,
            last.id
        );
    }

    // c. The whole log, downloaded by an auditor, hashes to the latest checkpoint.
    let mut auditor = AuditClient::new(site.channel(served, "cnil").await?);
    let mut events: Vec<pb::AuditEvent> = Vec::new();
    let mut next = 0;
    while next < now.size {
        let page = auditor
            .list_events(pb::ListEventsRequest {
                start_index: next,
                limit: 1000,
                ..Default::default()
            })
            .await
            .with_context(|| format!("ListEvents from {next}"))?
            .into_inner();
        ensure!(
            page.next_index > next,
            "ListEvents from {next} does not advance (next_index {})",
            page.next_index
        );
        events.extend(page.events);
        next = page.next_index;
    }
    for (i, event) in events.iter().enumerate() {
        ensure!(
            event.index == i as u64,
            "event {i} listed as {}",
            event.index
        );
    }
    let size = usize::try_from(now.size)?;
    ensure!(events.len() >= size, "{} events listed", events.len());
    ensure!(
        root_of(events[..size].iter().map(|e| &e.entry)) == now.root,
        "the {} entries listed do not hash to the latest checkpoint's root",
        now.size
    );
    for r in receipts {
        ensure!(
            events[usize::try_from(r.leaf)?].entry == r.entry,
            "leaf {} is listed with other bytes than its receipt's",
            r.leaf
        );
    }
    let logged: HashSet<String> = events[..size]
        .iter()
        .filter(|e| e.kind == "consent_granted")
        .map(|e| json(&e.entry).map(|v| v["consent_id"].as_str().unwrap_or("").to_string()))
        .collect::<anyhow::Result<_>>()?;
    for acked in &granted {
        ensure!(
            logged.contains(&acked.id),
            "acknowledged consent {} has no consent_granted entry in the log",
            acked.id
        );
    }
    Ok(now.size)
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_records_survive_sigkill() -> anyhow::Result<()> {
    install_crypto();
    let started = Instant::now();
    let tmp = tempfile::tempdir()?;
    unefois_tests::copy_dir(&repo_root().join("examples"), &tmp.path().join("examples"))?;
    let binary = unefois_binary()?;
    let built = started.elapsed();
    let site = Site {
        binary,
        checkout: tmp.path().to_path_buf(),
        home: tmp.path().join("home"),
    };
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut pinned: Option<(String, String)> = None;
    // The acknowledged fetches checked offline so far, in the order of `acked.fetches`.
    let mut receipts: Vec<Receipted> = Vec::new();

    for round in 1..=rounds() {
        let round_started = Instant::now();
        let mut served = site
            .serve()
            .await
            .with_context(|| format!("round {round}"))?;
        // The participants pin the keys the broker published on its first start.
        let keys = site.published_keys()?;
        let keys = pinned.get_or_insert(keys).clone();

        let (fetches_before, consents_before) = {
            let acked = lock(&acked);
            (acked.fetches.len(), acked.consents.len())
        };
        let killed = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for task in 0..CLIENTS {
            let channel = site.channel(&served, CONSUMER).await?;
            let agent = site.channel(&served, AGENT).await?;
            tasks.push(tokio::spawn(load(
                (channel, agent),
                round,
                task,
                killed.clone(),
                acked.clone(),
            )));
        }
        // Arm the kill once the load is answered, so that the crash lands in the middle of it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&acked).fetches.len() == fetches_before {
            ensure!(
                Instant::now() < deadline,
                "round {round}: no fetch answered within 10 s"
            );
            ensure!(
                !tasks.iter().all(|t| t.is_finished()),
                "round {round}: every client stopped before any fetch was answered"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let delay = random_delay();
        tokio::time::sleep(delay).await;
        let (fetches_at_kill, consents_at_kill) = {
            let acked = lock(&acked);
            (
                acked.fetches.len() - fetches_before,
                acked.consents.len() - consents_before,
            )
        };
        killed.store(true, Ordering::SeqCst);
        let status = sigkill(&mut served)?;
        let mut unexpected = Vec::new();
        for task in tasks {
            unexpected.extend(
                tokio::time::timeout(Duration::from_secs(10), task)
                    .await
                    .context("a client did not stop within 10 s of the kill")??,
            );
        }
        ensure!(
            unexpected.is_empty(),
            "failures before the kill:\n{}",
            unexpected.join("\n")
        );
        ensure!(
            fetches_at_kill >= 1,
            "round {round}: no fetch acknowledged before the kill"
        );
        let (fetches, consents) = {
            let acked = lock(&acked);
            (
                acked.fetches.len() - fetches_before,
                acked.consents.len() - consents_before,
            )
        };
        drop(served);

        let restart = Instant::now();
        let mut served = site
            .serve()
            .await
            .with_context(|| format!("round {round}: restart after SIGKILL"))?;
        ensure!(
            site.published_keys()? == keys,
            "round {round}: the restarted broker published other verifier keys"
        );
        let restarted = restart.elapsed();
        let verification = Instant::now();
        let answers = lock(&acked).fetches[receipts.len()..].to_vec();
        let first = receipts.len();
        receipts.extend(verify_all_offline(&answers, first, &keys).await?);
        let size = verify_after_restart(&site, &served, &keys.1, &receipts, &acked)
            .await
            .with_context(|| format!("round {round}, after the restart"))?;

        // d. The broker still serves, and its new answers verify too.
        let answer = ExchangeClient::new(site.channel(&served, CONSUMER).await?)
            .fetch(fetch_request("test:alice"))
            .await
            .with_context(|| format!("round {round}: a fetch after the restart"))?
            .into_inner();
        let n = receipts.len();
        let receipt = verify_offline(n, &answer, &keys, &mut HashMap::new())
            .with_context(|| format!("round {round}: the fetch after the restart"))?;
        ensure!(
            receipt.leaf >= size,
            "round {round}: the fetch after the restart is logged at leaf {} of a log of {size}",
            receipt.leaf
        );
        receipts.push(receipt);
        lock(&acked).fetches.push(answer);

        let verified = verification.elapsed();
        let exit = terminate(&mut served).await?;
        ensure!(
            exit.success(),
            "round {round}: SIGTERM ends the broker: {exit}"
        );
        eprintln!(
            "round {round}: killed ({status}) after {delay:?} of load with {fetches_at_kill} \
             fetches and {consents_at_kill} consents acknowledged ({fetches} and {consents} in \
             all); restarted in {restarted:?}, {size} entries verified in {verified:?}; round \
             in {:?}",
            round_started.elapsed()
        );
    }
    let (fetches, consents, revoked, mandates) = {
        let acked = lock(&acked);
        (
            acked.fetches.len(),
            acked.consents.len(),
            acked.revoked.len(),
            acked.mandates.len(),
        )
    };
    eprintln!(
        "{} rounds: {fetches} fetches, {consents} consents ({revoked} revoked) and {mandates} \
         mandates verified, in {:?} ({built:?} of it building the binary)",
        rounds(),
        started.elapsed()
    );
    Ok(())
}
