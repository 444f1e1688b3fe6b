//! `unefois backup` and `unefois restore` on a real broker: a backup taken under load restores
//! every acknowledged consent and a log that auditors still verify; a restore that would put
//! the log behind a checkpoint already handed out is refused unless forced; a damaged backup is
//! refused naming its file; a running broker's data directory is never restored over.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Context, ensure};
use tonic::Code;
use tonic::transport::Channel;
use unefois_proto::v1 as pb;
use unefois_proto::v1::audit_client::AuditClient;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_tests::clients::{consents, grant_consent};
use unefois_tests::sample::{CANTINE, LYON, QF, RFR};
use unefois_tests::{BrokerOptions, TestBroker, TestPki, unefois_binary};

const SEGMENT: &str = "journal/journal-00000000000000000000.seg";

/// A broker home under the PKI's scratch folder (`TestBroker::stop` removes only its own temp
/// home): the CLI's `--home`, whose `data` is the broker's data directory.
struct Home {
    dir: PathBuf,
}

impl Home {
    fn new(pki: &TestPki, name: &str) -> Home {
        Home {
            dir: pki.scratch().join(name),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A broker on this home's data, on the sample registry with the federation's default rate
    /// lifted: the tests load it as fast as they can.
    async fn start(&self, pki: &TestPki) -> anyhow::Result<TestBroker> {
        let registry = unefois_tests::sample_registry_with(&self.dir.join("registry"), |s| {
            s.replace(
                "allow_test_subjects = true\n",
                "allow_test_subjects = true\n\
                 default_rate_limit = { per_minute = 6000000, burst = 100000 }\n",
            )
        })?;
        TestBroker::start_with(
            pki.dir(),
            BrokerOptions {
                registry,
                data_dir: Some(self.data()),
                ..Default::default()
            },
        )
        .await
    }
}

/// Runs `unefois` with `args`, without blocking the runtime the broker serves on.
async fn unefois(args: &[&str]) -> anyhow::Result<Output> {
    let binary = tokio::task::spawn_blocking(unefois_binary).await??;
    Ok(tokio::process::Command::new(binary)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .await?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `unefois backup --home HOME --out OUT`, which must succeed.
async fn backup(home: &Home, out: &Path) -> anyhow::Result<()> {
    let output = unefois(&[
        "backup",
        "--home",
        &home.dir.to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
    ])
    .await?;
    ensure!(
        output.status.success(),
        "backup failed: {}",
        text(&output.stderr)
    );
    let said = text(&output.stdout);
    ensure!(said.contains("secret keys"), "the backup warns: {said}");
    Ok(())
}

/// `unefois restore --from FROM --home HOME [extra...]`.
async fn restore(from: &Path, home: &Home, extra: &[&str]) -> anyhow::Result<Output> {
    let from = from.to_string_lossy();
    let home = home.dir.to_string_lossy();
    let mut args = vec!["restore", "--from", &from, "--home", &home];
    args.extend_from_slice(extra);
    unefois(&args).await
}

/// The backup's manifest: its tree size and root.
fn manifest(backup: &Path) -> anyhow::Result<(u64, String)> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backup.join("manifest.json"))?)?;
    Ok((
        manifest["tree_size"].as_u64().context("tree_size")?,
        manifest["root"].as_str().context("root")?.to_string(),
    ))
}

fn log_vkey(pki: &TestPki) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(pki.dir().join("log.vkey"))?
        .trim()
        .to_string())
}

/// The signed checkpoint of `size` entries (0: the latest), verified: (size, root, note).
async fn checkpoint(
    broker: &TestBroker,
    pki: &TestPki,
    size: u64,
) -> anyhow::Result<(u64, [u8; 32], String)> {
    let note = AuditClient::new(broker.channel("mairie-lyon").await?)
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: size })
        .await?
        .into_inner()
        .checkpoint;
    let verified = unefois_tlog::verify_checkpoint(&log_vkey(pki)?, &note)?;
    Ok((verified.size, verified.root, note))
}

/// The person's consent at mairie-lyon for the CAF's family quotient; its id once durable.
async fn grant(broker: &TestBroker, subject: &str) -> anyhow::Result<String> {
    Ok(grant_consent(broker, subject, QF, CANTINE).await?.id)
}

/// A Fetch of `attestation_type` for `subject` by mairie-lyon, granted.
async fn fetch(channel: Channel, subject: &str, attestation_type: &str) -> anyhow::Result<()> {
    ExchangeClient::new(channel)
        .fetch(pb::FetchRequest {
            subject: subject.into(),
            attestation_type: attestation_type.into(),
            purpose: CANTINE.into(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// Consents.Get of `id`: its status, or the refusal's code.
async fn consent_status(broker: &TestBroker, id: &str) -> anyhow::Result<Result<i32, Code>> {
    let answer = consents(broker, LYON)
        .await?
        .get(pb::GetConsentRequest {
            consent_id: id.into(),
        })
        .await;
    Ok(match answer {
        Ok(answer) => Ok(answer.into_inner().consent.context("no consent")?.status),
        Err(status) => Err(status.code()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_every_acknowledged_consent_and_a_verifiable_log()
-> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let home = Home::new(&pki, "home");
    let broker = home.start(&pki).await?;
    let subjects = ["test:alice", "test:bob", "test:carol"];
    let mut ids = Vec::new();
    for subject in subjects {
        ids.push(grant(&broker, subject).await?);
        fetch(broker.channel("mairie-lyon").await?, subject, QF).await?;
    }
    // The auditor's checkpoint from before the backup.
    let trusted = pki.scratch().join("cnil.checkpoint");
    let audited =
        broker::auditor::verify_log(broker.channel("cnil").await?, &log_vkey(&pki)?, &trusted)
            .await?;
    let (acknowledged, _, _) = checkpoint(&broker, &pki, 0).await?;

    // Exchanges keep coming while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let load = {
        let channel = broker.channel("mairie-lyon").await?;
        let (stop, served) = (stop.clone(), served.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                fetch(channel.clone(), "test:eve", RFR).await?;
                served.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        })
    };
    // The load is running when the backup starts.
    while served.load(Ordering::Relaxed) == 0 && !load.is_finished() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let out = pki.scratch().join("backup");
    backup(&home, &out).await?;
    stop.store(true, Ordering::Relaxed);
    load.await??;

    let (size, root) = manifest(&out)?;
    assert!(
        size >= acknowledged,
        "every entry acknowledged before the backup is in it ({size} < {acknowledged})"
    );
    // The backup's root is the one the broker signed for that size.
    let (_, signed_root, note_at_size) = checkpoint(&broker, &pki, size).await?;
    assert_eq!(root, hex::encode(signed_root));
    for file in ["manifest.json", SEGMENT, "keys/log.ed25519"] {
        let mode = std::fs::metadata(out.join(file))?.permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{file} is private");
    }
    broker.stop().await?;

    // The disk is lost; the backup comes back.
    std::fs::remove_dir_all(home.data())?;
    let trusted_arg = trusted.to_string_lossy().into_owned();
    let restored = restore(&out, &home, &["--trusted-checkpoint", &trusted_arg]).await?;
    assert!(
        restored.status.success(),
        "restore failed: {}",
        text(&restored.stderr)
    );
    assert_eq!(broker::backup::journal_size(&home.data())?, size);
    assert!(!home.data().join("state").exists(), "derived state removed");

    let broker = home.start(&pki).await?;
    for id in &ids {
        assert_eq!(
            consent_status(&broker, id).await?,
            Ok(pb::ConsentStatus::Active as i32),
            "consent {id} restored"
        );
    }
    // Found by subject again: the pseudonym keys came back with the journal.
    fetch(broker.channel("mairie-lyon").await?, "test:alice", QF).await?;
    // The restored log is the one the broker had signed at that size, and auditors' checks
    // carry on from their earlier checkpoint.
    let (_, _, note) = checkpoint(&broker, &pki, size).await?;
    assert_eq!(note, note_at_size);
    let verified =
        broker::auditor::verify_log(broker.channel("cnil").await?, &log_vkey(&pki)?, &trusted)
            .await?;
    assert_eq!(verified.previous_size, Some(audited.checkpoint.size));
    assert!(verified.checkpoint.size > size);
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_a_backup_older_than_the_log_is_refused_unless_forced() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let home = Home::new(&pki, "home");
    let broker = home.start(&pki).await?;
    let before = grant(&broker, "test:alice").await?;
    let out = pki.scratch().join("backup");
    backup(&home, &out).await?;
    let after = grant(&broker, "test:bob").await?;
    broker.stop().await?;
    let (size, _) = manifest(&out)?;
    let current = broker::backup::journal_size(&home.data())?;
    assert!(current > size);

    let refused = restore(&out, &home, &[]).await?;
    assert!(!refused.status.success());
    let said = text(&refused.stderr);
    assert!(
        said.contains(&format!(
            "it would fork the log: checkpoints up to size {current} were handed out"
        )) && said.contains(&format!("the backup has {size} entries"))
            && said.contains("--force"),
        "{said}"
    );
    // It names what the backup lacks, from the entry after it on (kind, time, participant:
    // never a person), down to the broker's own stop, and says why it refuses.
    assert!(
        said.contains(&format!(
            "the backup lacks its entries #{size} to #{}: #{size} ",
            current - 1
        )) && said.contains(" consent_granted (mairie-lyon)")
            && said.contains(" broker_stopped")
            && said.contains("A restore is for a data directory lost or damaged")
            && !said.contains("test:bob"),
        "{said}"
    );
    assert_eq!(
        broker::backup::journal_size(&home.data())?,
        current,
        "nothing was changed"
    );

    let forced = restore(&out, &home, &["--force"]).await?;
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    assert!(
        text(&forced.stderr).contains(
            "warning: restoring anyway (--force): refusing to restore: it would fork the log"
        ),
        "{}",
        text(&forced.stderr)
    );
    assert_eq!(broker::backup::journal_size(&home.data())?, size);
    // The journal it replaced is kept, never deleted.
    let kept: Vec<PathBuf> = std::fs::read_dir(home.data())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains("replaced-"))
        .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(broker::backup::journal_size(&kept[0])?, current);

    let broker = home.start(&pki).await?;
    assert_eq!(
        consent_status(&broker, &before).await?,
        Ok(pb::ConsentStatus::Active as i32)
    );
    assert_eq!(
        consent_status(&broker, &after).await?,
        Err(Code::NotFound),
        "what came after the backup is gone"
    );
    broker.stop().await
}

/// The journal lost with its volume, the derived state kept: the newest checkpoint the broker
/// handed out is there, and a backup behind it is refused. Before the fix, that witness was
/// not read, and then deleted with the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_journal_is_not_restored_behind_what_the_derived_state_handed_out()
-> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let home = Home::new(&pki, "home");
    let broker = home.start(&pki).await?;
    grant(&broker, "test:alice").await?;
    let out = pki.scratch().join("backup");
    backup(&home, &out).await?;
    grant(&broker, "test:bob").await?;
    broker.stop().await?;
    let (size, _) = manifest(&out)?;
    std::fs::remove_dir_all(home.data().join("journal"))?;

    let refused = restore(&out, &home, &[]).await?;
    assert!(!refused.status.success());
    let said = text(&refused.stderr);
    assert!(
        said.contains("it would fork the log")
            && said.contains("derived state")
            && said.contains("last handed out a checkpoint of")
            && said.contains(&format!("the backup has {size} entries")),
        "{said}"
    );
    assert!(home.data().join("state").is_dir(), "nothing was changed");
    let forced = restore(&out, &home, &["--force"]).await?;
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_backup_is_refused_naming_the_file() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let home = Home::new(&pki, "home");
    let broker = home.start(&pki).await?;
    grant(&broker, "test:alice").await?;
    let out = pki.scratch().join("backup");
    backup(&home, &out).await?;
    broker.stop().await?;
    let elsewhere = Home::new(&pki, "elsewhere");

    // One byte of the journal flipped.
    let flipped = pki.scratch().join("flipped");
    unefois_tests::copy_dir(&out, &flipped)?;
    let mut bytes = std::fs::read(flipped.join(SEGMENT))?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(flipped.join(SEGMENT), &bytes)?;
    let refused = restore(&flipped, &elsewhere, &[]).await?;
    assert!(!refused.status.success());
    let said = text(&refused.stderr);
    assert!(
        said.contains(&format!("backup file {SEGMENT}")) && said.contains("refusing"),
        "{said}"
    );

    // A key file removed.
    let missing = pki.scratch().join("missing");
    unefois_tests::copy_dir(&out, &missing)?;
    std::fs::remove_file(missing.join("keys/attestation.ed25519"))?;
    let refused = restore(&missing, &elsewhere, &[]).await?;
    assert!(!refused.status.success());
    let said = text(&refused.stderr);
    assert!(
        said.contains("backup file keys/attestation.ed25519 is missing"),
        "{said}"
    );
    assert!(
        !elsewhere.data().exists(),
        "a refused restore writes nothing"
    );

    // The intact backup restores there.
    let restored = restore(&out, &elsewhere, &[]).await?;
    assert!(restored.status.success(), "{}", text(&restored.stderr));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_checkpoint_larger_than_the_backup_refuses_the_restore() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let home = Home::new(&pki, "home");
    let broker = home.start(&pki).await?;
    grant(&broker, "test:alice").await?;
    let out = pki.scratch().join("backup");
    backup(&home, &out).await?;
    grant(&broker, "test:bob").await?;
    // The auditor keeps a checkpoint past the backup.
    let trusted = pki.scratch().join("cnil.checkpoint");
    let audited =
        broker::auditor::verify_log(broker.channel("cnil").await?, &log_vkey(&pki)?, &trusted)
            .await?;
    broker.stop().await?;
    let (size, _) = manifest(&out)?;
    assert!(audited.checkpoint.size > size);

    // Even into an empty home, where no journal tells it.
    let elsewhere = Home::new(&pki, "elsewhere");
    let trusted_arg = trusted.to_string_lossy().into_owned();
    let refused = restore(&out, &elsewhere, &["--trusted-checkpoint", &trusted_arg]).await?;
    assert!(!refused.status.success());
    let said = text(&refused.stderr);
    assert!(
        said.contains(&format!(
            "it would fork the log: checkpoints up to size {} were handed out",
            audited.checkpoint.size
        )) && said.contains(&format!("the backup has {size} entries")),
        "{said}"
    );
    assert!(!elsewhere.data().exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_brokers_data_directory_is_never_restored_over() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let home = Home::new(&pki, "home");
    let broker = home.start(&pki).await?;
    let out = pki.scratch().join("backup");
    backup(&home, &out).await?;
    let refused = restore(&out, &home, &["--force"]).await?;
    assert!(!refused.status.success());
    let said = text(&refused.stderr);
    assert!(said.contains("a broker is running"), "{said}");
    // The broker goes on serving.
    grant(&broker, "test:alice").await?;
    broker.stop().await
}
