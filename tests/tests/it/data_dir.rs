//! The broker's data directory on a real broker: its keys are never silently replaced (a key
//! lost or changed over a journal with records stops the start, naming the key, its recorded
//! id and `unefois restore`), the published verifier keys are never overwritten, keys are
//! created only over an empty journal and that is logged, and everything in it is private
//! (folders 0700, files 0600).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use broker::keys::{AUDIT_PSEUDONYM_KEY, KEYS, LOG_KEY};
use unefois_proto::v1 as pb;
use unefois_proto::v1::consents_client::ConsentsClient;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_tests::requests::{consent, rfr};
use unefois_tests::sample::LYON;
use unefois_tests::{TestBroker, TestPki, audit_entry};

fn qf(subject: &str) -> pb::FetchRequest {
    pb::FetchRequest {
        subject: subject.into(),
        attestation_type: "caf.quotient_familial".into(),
        purpose: "tarification_cantine".into(),
        ..Default::default()
    }
}

/// The start-up error of a broker on `data`, as text; the broker must refuse.
async fn refused_on(pki: &TestPki, data: &Path) -> anyhow::Result<String> {
    match TestBroker::start_on(pki.dir(), data).await {
        Ok(broker) => {
            broker.stop().await?;
            anyhow::bail!("the broker started on {}", data.display())
        }
        Err(e) => Ok(format!("{e:#}")),
    }
}

/// Consents for test:alice and test:bob to mairie-lyon, and a fetch under each.
async fn consents_and_fetches(broker: &TestBroker) -> anyhow::Result<()> {
    let mut consents = ConsentsClient::new(broker.channel(LYON).await?);
    let mut lyon = ExchangeClient::new(broker.channel(LYON).await?);
    for subject in ["test:alice", "test:bob"] {
        consents
            .grant(consent(
                subject,
                "caf.quotient_familial",
                "tarification_cantine",
            ))
            .await?;
        lyon.fetch(qf(subject)).await?;
    }
    Ok(())
}

fn key_path(data: &Path, file: &str) -> PathBuf {
    data.join("keys").join(file)
}

fn write_key(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// The key ids the first `broker_started` entry recorded (the log's first entry).
async fn recorded_ids(broker: &TestBroker) -> anyhow::Result<serde_json::Value> {
    let started = audit_entry(broker, "cnil", 0).await?;
    anyhow::ensure!(started["kind"] == "broker_started", "{started}");
    Ok(started["keys"].clone())
}

#[tokio::test]
async fn a_lost_or_replaced_pseudonym_key_refuses_the_start() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let data = pki.scratch().join("data");
    let broker = TestBroker::start_on(pki.dir(), &data).await?;
    consents_and_fetches(&broker).await?;
    let ids = recorded_ids(&broker).await?;
    broker.stop().await?;
    let path = key_path(&data, AUDIT_PSEUDONYM_KEY);
    let kept = std::fs::read(&path)?;
    // The recorded id is the key file's, as docs/audit-log.md says to compute it.
    let id = broker::keys::secret_key_id(kept.as_slice().try_into().context("a 32-byte key file")?);
    assert_eq!(ids[AUDIT_PSEUDONYM_KEY], id.as_str(), "{ids}");

    // Lost: the broker refuses, names the file, its key id and the way back; creates nothing.
    std::fs::remove_file(&path)?;
    let refused = refused_on(&pki, &data).await?;
    assert!(
        refused.contains(&path.display().to_string())
            && refused.contains(&id)
            && refused.contains("missing")
            && refused.contains("unefois restore"),
        "{refused}"
    );
    assert!(!path.exists(), "a new key was created");

    // Replaced by another key: refused too, naming both ids.
    write_key(&path, &[0x5a; 32])?;
    let other = broker::keys::secret_key_id(&[0x5a; 32]);
    let refused = refused_on(&pki, &data).await?;
    assert!(
        refused.contains(&path.display().to_string())
            && refused.contains(&id)
            && refused.contains(&other)
            && refused.contains("replaced")
            && refused.contains("unefois restore"),
        "{refused}"
    );

    // Put back: the broker starts and the consents recorded under it still hold.
    write_key(&path, &kept)?;
    let broker = TestBroker::start_on(pki.dir(), &data).await?;
    let mut lyon = ExchangeClient::new(broker.channel(LYON).await?);
    for subject in ["test:alice", "test:bob"] {
        lyon.fetch(qf(subject)).await?;
    }
    broker.stop().await
}

#[tokio::test]
async fn a_lost_log_key_refuses_the_start_and_its_published_key_stays() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let data = pki.scratch().join("data");
    let broker = TestBroker::start_on(pki.dir(), &data).await?;
    ExchangeClient::new(broker.channel(LYON).await?)
        .fetch(rfr("test:alice"))
        .await?;
    let ids = recorded_ids(&broker).await?;
    broker.stop().await?;
    let vkey_path = pki.dir().join("log.vkey");
    let published = std::fs::read(&vkey_path)?;
    let path = key_path(&data, LOG_KEY);
    let kept = std::fs::read(&path)?;
    let id = ids[LOG_KEY]
        .as_str()
        .context("the log key's id")?
        .to_string();

    std::fs::remove_file(&path)?;
    let refused = refused_on(&pki, &data).await?;
    assert!(
        refused.contains(&path.display().to_string())
            && refused.contains(&id)
            && refused.contains("unefois restore"),
        "{refused}"
    );
    assert!(!path.exists(), "a new log key was created");
    assert_eq!(
        std::fs::read(&vkey_path)?,
        published,
        "log.vkey was rewritten"
    );

    // Another log key: refused, log.vkey untouched.
    write_key(&path, &[0x42; 32])?;
    let refused = refused_on(&pki, &data).await?;
    assert!(
        refused.contains(&id) && refused.contains("replaced"),
        "{refused}"
    );
    assert_eq!(
        std::fs::read(&vkey_path)?,
        published,
        "log.vkey was rewritten"
    );

    write_key(&path, &kept)?;
    let broker = TestBroker::start_on(pki.dir(), &data).await?;
    broker.stop().await
}

#[tokio::test]
async fn published_verifier_keys_are_never_overwritten() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let first = pki.scratch().join("first");
    let broker = TestBroker::start_on(pki.dir(), &first).await?;
    broker.stop().await?;
    let attestation = std::fs::read(pki.dir().join("attestation.vkey"))?;
    let log = std::fs::read(pki.dir().join("log.vkey"))?;
    let mode = std::fs::metadata(pki.dir().join("log.vkey"))?
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644, "published keys are public");

    // Another broker (fresh keys) on the same PKI folder: refused, the published keys stay.
    let refused = refused_on(&pki, &pki.scratch().join("second")).await?;
    assert!(
        refused.contains("attestation.vkey")
            && refused.contains("never overwrites")
            && refused.contains(std::str::from_utf8(&attestation)?.trim()),
        "{refused}"
    );
    assert_eq!(
        std::fs::read(pki.dir().join("attestation.vkey"))?,
        attestation
    );
    assert_eq!(std::fs::read(pki.dir().join("log.vkey"))?, log);

    // The broker whose keys they are starts again, leaving them alone.
    let modified = std::fs::metadata(pki.dir().join("log.vkey"))?.modified()?;
    let broker = TestBroker::start_on(pki.dir(), &first).await?;
    broker.stop().await?;
    assert_eq!(
        std::fs::metadata(pki.dir().join("log.vkey"))?.modified()?,
        modified
    );
    Ok(())
}

/// `path`'s permission bits.
fn mode(path: &Path) -> anyhow::Result<u32> {
    Ok(std::fs::symlink_metadata(path)?.permissions().mode() & 0o777)
}

/// Every folder and file under `dir` (itself included) whose mode is not 0700 / 0600.
fn open_modes(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut open = Vec::new();
    if mode(dir)? != 0o700 {
        open.push(format!("{} {:o}", dir.display(), mode(dir)?));
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            open.extend(open_modes(&entry.path())?);
        } else if kind.is_file() && mode(&entry.path())? != 0o600 {
            open.push(format!(
                "{} {:o}",
                entry.path().display(),
                mode(&entry.path())?
            ));
        }
    }
    Ok(open)
}

/// Opens every folder and file under `dir` to 0755 / 0644, as earlier versions left them.
fn open_up(dir: &Path) -> anyhow::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            open_up(&entry.path())?;
        } else if entry.path().parent().is_some_and(|p| !p.ends_with("keys")) {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644))?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_data_directory_is_private() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let data = pki.scratch().join("data");
    let broker = TestBroker::start_on(pki.dir(), &data).await?;
    consents_and_fetches(&broker).await?;
    for dir in ["", "journal", "state", "keys"] {
        assert_eq!(mode(&data.join(dir))?, 0o700, "DATA/{dir}");
    }
    let segment = data.join("journal/journal-00000000000000000000.seg");
    assert_eq!(mode(&segment)?, 0o600);
    assert_eq!(mode(&data.join("state/tree.hashes"))?, 0o600);
    assert_eq!(open_modes(&data)?, Vec::<String>::new(), "while serving");
    broker.stop().await?;
    assert_eq!(open_modes(&data)?, Vec::<String>::new(), "once stopped");

    // A data directory an earlier version left open is narrowed at the next start.
    open_up(&data)?;
    assert_eq!(mode(&segment)?, 0o644);
    let broker = TestBroker::start_on(pki.dir(), &data).await?;
    assert_eq!(
        open_modes(&data)?,
        Vec::<String>::new(),
        "narrowed at start"
    );
    broker.stop().await
}

/// `unefois serve --dev --home HOME` until it is ready, then SIGTERM: what it logged.
async fn serve_once(home: &Path) -> anyhow::Result<String> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let binary = tokio::task::spawn_blocking(unefois_tests::unefois_binary).await??;
    let mut child = Command::new(binary)
        .current_dir(unefois_tests::repo_root())
        .args([
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
        ])
        .arg("--home")
        .arg(home)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (found, address) = std::sync::mpsc::channel();
    // Reads stdout to its end: the broker never writes to a closed pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line
                .strip_prefix("Health probe on http://")
                .and_then(|rest| rest.strip_suffix("/healthz"))
                .and_then(|addr| addr.parse::<std::net::SocketAddr>().ok())
            {
                let _ = found.send(addr);
            }
        }
    });
    let ops = tokio::task::spawn_blocking(move || address.recv_timeout(Duration::from_secs(30)))
        .await?
        .ok();
    let mut ready = false;
    if let Some(ops) = ops {
        for _ in 0..600 {
            if unefois_tests::http_get(ops, "/readyz")
                .await
                .is_ok_and(|(status, _)| status == 200)
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() > deadline {
            child.kill()?;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().context("stderr")?, &mut stderr)?;
    anyhow::ensure!(ready, "the broker was not ready: {stderr}");
    Ok(stderr)
}

/// `unefois serve` on a fresh home: every key is created, and each creation is a warning that
/// names its file; a second start creates none.
#[tokio::test(flavor = "multi_thread")]
async fn keys_are_created_over_an_empty_journal_only_and_loudly() -> anyhow::Result<()> {
    let home = tempfile::tempdir()?;
    let first = serve_once(home.path()).await?;
    for spec in KEYS {
        let line = first
            .lines()
            .find(|l| l.contains("WARN") && l.contains(spec.file))
            .with_context(|| format!("no warning names {}: {first}", spec.file))?;
        assert!(line.contains("created a new"), "{line}");
    }
    let second = serve_once(home.path()).await?;
    assert!(!second.contains("created a new"), "{second}");
    // The binary's data directory is private too.
    let keys = home.path().join("data/keys");
    assert_eq!(
        std::fs::metadata(&keys)?.permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(open_modes(&home.path().join("data"))?, Vec::<String>::new());
    Ok(())
}
