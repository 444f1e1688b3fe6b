//! "Nothing lost", for every call that writes: a SIGKILL cannot catch a missing sync (the page
//! cache survives it), so the journal's fault-injection points stand in for the disk. For each
//! writing call: held before its sync, it is not answered; failing at each step of the commit
//! path (disk full before the write, an I/O error after it), it is refused with
//! UNAVAILABLE / STORE_UNAVAILABLE and nothing of it is visible; once the disk is back, the broker
//! serves again without a restart. The last test does it for real, on a full tmpfs.

use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use broker::client::reason_of;
use broker::journal::{FaultInjector, FaultPoint};
use tonic::Code;
use tonic::transport::Channel;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::audit_client::AuditClient;
use unefois_proto::v1::consents_client::ConsentsClient;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_proto::v1::guichet_client::GuichetClient;
use unefois_proto::v1::mandates_client::MandatesClient;
use unefois_tests::sample::AGENT;
use unefois_tests::{BrokerOptions, TestBroker, TestPki, id_token};

/// What the disk does at the next commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Disk {
    Healthy,
    /// Blocks after the write, before the sync, until set back to healthy.
    SlowSync,
    /// ENOSPC before the write.
    Full,
    /// An I/O error after the write, before the sync.
    FailingWrite,
}

fn injector(disk: &Arc<Mutex<Disk>>) -> FaultInjector {
    let disk = disk.clone();
    Arc::new(move |point| {
        loop {
            let now = *disk.lock().unwrap_or_else(|p| p.into_inner());
            match (now, point) {
                (Disk::SlowSync, FaultPoint::AfterWrite) => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                (Disk::Full, FaultPoint::BeforeWrite) => {
                    return Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        "no space left on device",
                    ));
                }
                (Disk::FailingWrite, FaultPoint::AfterWrite) => {
                    return Err(io::Error::other("input/output error"));
                }
                _ => return Ok(()),
            }
        }
    })
}

fn set(disk: &Arc<Mutex<Disk>>, to: Disk) {
    *disk.lock().unwrap_or_else(|p| p.into_inner()) = to;
}

/// The clients a scenario needs.
#[derive(Clone)]
struct Clients {
    lyon: Channel,
    agent: Channel,
    cnil: Channel,
}

impl Clients {
    async fn of(broker: &TestBroker) -> anyhow::Result<Clients> {
        Ok(Clients {
            lyon: broker.channel("mairie-lyon").await?,
            agent: broker.channel(AGENT).await?,
            cnil: broker.channel("cnil").await?,
        })
    }
}

/// One writing call, made afresh each time (new request ids), answered Ok or a status.
async fn call(kind: &str, c: Clients, mandate_id: String) -> Result<(), tonic::Status> {
    let unique = uuid_like();
    match kind {
        "fetch" => ExchangeClient::new(c.lyon)
            .fetch(pb::FetchRequest {
                subject: "test:alice".into(),
                attestation_type: "dgfip.revenu_fiscal_reference".into(),
                purpose: "tarification_cantine".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "consent grant" => ConsentsClient::new(c.lyon)
            .grant(pb::GrantConsentRequest {
                subject: "test:alice".into(),
                consumer: "mairie-lyon".into(),
                attestation_types: vec!["caf.quotient_familial".into()],
                purpose: "tarification_cantine".into(),
                valid_days: 30,
                id_token: id_token("test:alice", "mairie-lyon"),
                request_id: unique,
                ..Default::default()
            })
            .await
            .map(drop),
        "mandate create" => MandatesClient::new(c.agent)
            .create(pb::CreateMandateRequest {
                subject: "test:bob".into(),
                purposes: vec!["aide_energie".into()],
                duration_days: 1,
                signed_document: unique.into_bytes(),
                id_token: id_token("test:bob", "france-services-lyon"),
                ..Default::default()
            })
            .await
            .map(drop),
        "prefill" => GuichetClient::new(c.agent)
            .prefill(pb::PrefillRequest {
                subject: "test:alice".into(),
                form: "aide_energie".into(),
                mandate_id,
                ..Default::default()
            })
            .await
            .and_then(|answer| {
                // A pre-fill never answers fields it could not record.
                let answer = answer.into_inner();
                if answer.fields.is_empty() {
                    Err(tonic::Status::internal(format!(
                        "nothing filled: {answer:?}"
                    )))
                } else {
                    Ok(())
                }
            }),
        "access history" => GuichetClient::new(c.lyon)
            .list_accesses(pb::ListAccessesRequest {
                subject: "test:alice".into(),
                id_token: id_token("test:alice", "mairie-lyon"),
                ..Default::default()
            })
            .await
            .map(drop),
        "audit read" => AuditClient::new(c.cnil)
            .list_events(pb::ListEventsRequest {
                limit: 1,
                ..Default::default()
            })
            .await
            .map(drop),
        other => Err(tonic::Status::invalid_argument(format!("no call {other}"))),
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("durability-{}", NEXT.fetch_add(1, Ordering::SeqCst))
}

const CALLS: [&str; 6] = [
    "fetch",
    "consent grant",
    "mandate create",
    "prefill",
    "access history",
    "audit read",
];

#[tokio::test(flavor = "multi_thread")]
async fn every_writing_call_waits_for_its_sync_and_refuses_when_the_disk_fails()
-> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let disk = Arc::new(Mutex::new(Disk::Healthy));
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            journal_faults: Some(injector(&disk)),
            ..BrokerOptions::default()
        },
    )
    .await?;
    let clients = Clients::of(&broker).await?;
    let mandate = MandatesClient::new(clients.agent.clone())
        .create(pb::CreateMandateRequest {
            subject: "test:alice".into(),
            purposes: vec!["aide_energie".into()],
            duration_days: 31,
            signed_document: b"mandat".to_vec(),
            id_token: id_token("test:alice", "france-services-lyon"),
            ..Default::default()
        })
        .await?
        .into_inner()
        .mandate
        .unwrap_or_default();

    for kind in CALLS {
        // Held between the write and the sync: no answer.
        set(&disk, Disk::SlowSync);
        let pending = tokio::spawn(call(kind, clients.clone(), mandate.id.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !pending.is_finished(),
            "{kind}: answered before its record was synced"
        );
        set(&disk, Disk::Healthy);
        tokio::time::timeout(Duration::from_secs(10), pending)
            .await
            .map_err(|_| anyhow::anyhow!("{kind}: no answer once the sync was released"))??
            .map_err(|s| anyhow::anyhow!("{kind}: {s:?}"))?;

        // The disk full, then a failing write: refused, with the reason.
        for failure in [Disk::Full, Disk::FailingWrite] {
            set(&disk, failure);
            let refused = call(kind, clients.clone(), mandate.id.clone())
                .await
                .expect_err(&format!("{kind} answered with {failure:?}"));
            assert_eq!(
                (refused.code(), reason_of(&refused)),
                (Code::Unavailable, Some(ErrorReason::StoreUnavailable)),
                "{kind} with {failure:?}: {}",
                refused.message()
            );
        }
        // Space is back: served again, without a restart.
        set(&disk, Disk::Healthy);
        call(kind, clients.clone(), mandate.id.clone())
            .await
            .map_err(|s| anyhow::anyhow!("{kind} after recovery: {s:?}"))?;
    }

    // What was refused left nothing behind: only acknowledged mandates exist, and the log
    // still verifies end to end.
    let own = MandatesClient::new(clients.agent.clone())
        .list(pb::ListMandatesRequest::default())
        .await?
        .into_inner()
        .mandates;
    // The set-up mandate, then one held and one after recovery.
    assert_eq!(own.len(), 3, "{own:?}");
    let checkpoint = AuditClient::new(clients.cnil.clone())
        .get_checkpoint(pb::GetCheckpointRequest::default())
        .await?
        .into_inner();
    let verified =
        unefois_tlog::verify_checkpoint(&checkpoint.verifier_key, &checkpoint.checkpoint)?;
    let mut audit = AuditClient::new(clients.cnil.clone());
    let mut entries = Vec::new();
    let mut next = 0;
    while next < verified.size {
        let page = audit
            .list_events(pb::ListEventsRequest {
                start_index: next,
                limit: 1000,
                ..Default::default()
            })
            .await?
            .into_inner();
        entries.extend(page.events.into_iter().map(|e| e.entry));
        next = page.next_index;
    }
    let size = usize::try_from(verified.size)?;
    assert_eq!(unefois_tlog::root_of(entries[..size].iter()), verified.root);
    drop(clients);
    broker.stop().await
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `mib` MiB, or says why it cannot (mounting needs root).
    fn mount(mib: u32) -> anyhow::Result<SmallDisk> {
        let dir = tempfile::tempdir()?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(SmallDisk { dir })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes a file until the filesystem is full (ENOSPC); returns its path.
fn fill(disk: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    use std::io::Write;
    let path = disk.join("ballast");
    let mut file = std::fs::File::create(&path)?;
    let chunk = vec![0u8; 4096];
    loop {
        match file.write_all(&chunk).and_then(|()| file.flush()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => return Ok(path),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The real thing behind the injected `Disk::Full`: the data directory on a small tmpfs filled
/// to the last byte. Needs root to mount; `.ci/run` sets `UNEFOIS_REQUIRE_TMPFS=1` so that CI
/// fails rather than skips when it cannot.
#[tokio::test(flavor = "multi_thread")]
async fn a_really_full_disk_refuses_writes_then_recovers_without_a_restart() -> anyhow::Result<()> {
    let disk = match SmallDisk::mount(16) {
        Ok(disk) => disk,
        Err(e) if std::env::var_os("UNEFOIS_REQUIRE_TMPFS").is_none() => {
            eprintln!("skipped: cannot mount a tmpfs ({e}); set UNEFOIS_REQUIRE_TMPFS=1 to fail");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start_on(pki.dir(), &disk.path().join("data")).await?;
    let clients = Clients::of(&broker).await?;
    call("fetch", clients.clone(), String::new()).await?;

    let ballast = fill(disk.path())?;
    // On a full disk a record may still fit in a page the journal already holds, and a failed
    // batch gives back what it took: some calls are answered, the others are refused with
    // UNAVAILABLE / STORE_UNAVAILABLE; none is answered without its record.
    let mut granted = 1;
    let mut refusals = 0;
    for i in 0..40 {
        let kind = if i % 4 == 3 { "consent grant" } else { "fetch" };
        match call(kind, clients.clone(), String::new()).await {
            Ok(()) => granted += usize::from(kind == "fetch"),
            Err(refused) => {
                refusals += 1;
                assert_eq!(refused.code(), Code::Unavailable, "{kind}: {refused:?}");
                assert_eq!(
                    reason_of(&refused),
                    Some(ErrorReason::StoreUnavailable),
                    "{kind}"
                );
            }
        }
    }
    assert!(refusals > 0, "a full disk refuses writes");

    // Space returns: served again, by the same process.
    std::fs::remove_file(&ballast)?;
    for kind in ["fetch", "consent grant", "audit read"] {
        call(kind, clients.clone(), String::new())
            .await
            .map_err(|s| anyhow::anyhow!("{kind} after space returned: {s:?}"))?;
    }
    granted += 1;
    let logged = AuditClient::new(clients.cnil.clone())
        .list_events(pb::ListEventsRequest {
            limit: 1000,
            ..Default::default()
        })
        .await?
        .into_inner();
    let granted_fetches = logged
        .events
        .iter()
        .filter(|e| {
            let entry: serde_json::Value =
                serde_json::from_slice(&e.entry).unwrap_or(serde_json::Value::Null);
            e.kind == "exchange" && entry["outcome"] == "granted"
        })
        .count();
    assert_eq!(
        granted_fetches, granted,
        "every answered fetch is logged, no refused one"
    );
    broker.stop().await?;
    drop(disk);
    Ok(())
}
