//! Test harness for the end-to-end tests: a federation PKI per test in a temp dir, real brokers
//! on 127.0.0.1 port 0 started through the same `broker::run` as the binary, and participant
//! clients over mTLS. Nothing of the broker is mocked.

#![forbid(unsafe_code)]

pub mod canary;
pub mod clients;
pub mod identity_provider;
pub mod journal;
pub mod offline;
pub mod provider_api;
pub mod refusals;
pub mod requests;
pub mod sample;
pub mod web;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use broker::{AcceptLimits, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use unefois_certs::Pki;

/// Installs the ring provider as the process default, as the binary does (idempotent).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The sample registry of examples/.
pub fn sample_registry() -> PathBuf {
    repo_root().join("examples").join("registry.toml")
}

/// A federation PKI in its own temp dir, with a certificate for every participant of the
/// sample registry and the agent `a.martin` of `france-services-lyon`.
pub struct TestPki {
    /// The PKI, to issue or revoke more certificates.
    pub pki: Pki,
    dir: tempfile::TempDir,
}

impl TestPki {
    /// A PKI for the sample registry's participants.
    pub fn for_sample_registry() -> anyhow::Result<TestPki> {
        let registry = broker::registry::load(&sample_registry())?;
        let ids: Vec<&str> = registry.participants().map(|p| p.id.as_str()).collect();
        TestPki::new(registry.trust_domain(), &ids)
    }

    /// A PKI for the given participants.
    pub fn new(trust_domain: &str, participants: &[&str]) -> anyhow::Result<TestPki> {
        let dir = tempfile::tempdir()?;
        let pki = Pki::init(&dir.path().join("pki"), trust_domain, participants)?;
        pki.issue_agent(
            "france-services-lyon",
            "a.martin",
            &unefois_certs::Validity::default(),
        )
        .ok();
        Ok(TestPki { pki, dir })
    }

    /// The PKI folder.
    pub fn dir(&self) -> &Path {
        self.pki.dir()
    }

    /// A scratch folder beside the PKI, removed with it.
    pub fn scratch(&self) -> PathBuf {
        self.dir.path().join("scratch")
    }
}

/// A broker started on 127.0.0.1:0 with `broker::run`, stopped on [`TestBroker::stop`].
pub struct TestBroker {
    /// The mTLS listener's address.
    pub addr: SocketAddr,
    /// The operational listener's address.
    pub ops_addr: SocketAddr,
    /// The web pages' address, if they are served ([`BrokerOptions::web`]).
    pub web_addr: Option<SocketAddr>,
    /// The PKI the broker serves with (clients take their certificates there).
    pub pki_dir: PathBuf,
    /// The broker's data directory (journal, derived state, keys).
    pub data_dir: PathBuf,
    reload: tokio::sync::mpsc::Sender<broker::ReloadRequest>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), broker::BrokerError>>,
    _home: tempfile::TempDir,
}

/// How a test broker is set up.
pub struct BrokerOptions {
    /// The registry file.
    pub registry: PathBuf,
    /// Accept-loop limits.
    pub accept: AcceptLimits,
    /// The data directory, to restart a broker on the state of an earlier one (default: a
    /// fresh temp dir).
    pub data_dir: Option<PathBuf>,
    /// Fault injection in the journal's commit path.
    pub journal_faults: Option<broker::journal::FaultInjector>,
    /// How long a pre-fill preview is held.
    pub preview_ttl: Duration,
    /// Where the log lives (default: the embedded backend in the data directory).
    pub store: broker::StoreLocation,
    /// Serve the web pages on a port of their own, as the citizen pages' guichet
    /// `espace-usager` (default: no pages).
    pub web: bool,
    /// Serve them over HTTPS with this configuration (`broker::web::tls_config`).
    pub web_tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// The reverse proxies in front of the pages (`--web-trusted-proxy`).
    pub web_trusted_proxies: broker::web::TrustedProxies,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            registry: sample_registry(),
            accept: AcceptLimits::default(),
            data_dir: None,
            journal_faults: None,
            preview_ttl: broker::defaults::PREVIEW_TTL,
            store: broker::StoreLocation::Embedded,
            web: false,
            web_tls: None,
            web_trusted_proxies: Default::default(),
        }
    }
}

impl TestBroker {
    /// Starts a broker on the sample registry and waits until it is ready.
    pub async fn start(pki_dir: &Path) -> anyhow::Result<TestBroker> {
        TestBroker::start_with(pki_dir, BrokerOptions::default()).await
    }

    /// Starts a broker and waits until it is ready; a start-up error is returned as is.
    pub async fn start_with(pki_dir: &Path, options: BrokerOptions) -> anyhow::Result<TestBroker> {
        install_crypto();
        let home = tempfile::tempdir()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let ops_addr = ops.local_addr()?;
        let data_dir = options.data_dir.unwrap_or_else(|| home.path().join("data"));
        let web = match options.web {
            true => Some(tokio::net::TcpListener::bind("127.0.0.1:0").await?),
            false => None,
        };
        let web_addr = web.as_ref().map(|w| w.local_addr()).transpose()?;
        let (reload, reload_rx) = tokio::sync::mpsc::channel(4);
        let config = broker::Config {
            registry: options.registry,
            tls: TlsFiles::in_dir(pki_dir),
            data_dir: data_dir.clone(),
            ops_listener: Some(ops),
            accept: options.accept,
            drain_timeout: Duration::from_secs(5),
            max_request_bytes: broker::defaults::MAX_REQUEST_BYTES,
            journal_faults: options.journal_faults,
            preview_ttl: options.preview_ttl,
            reload: Some(reload_rx),
            store: options.store,
            web: web.map(|listener| broker::web::WebConfig {
                listener,
                public_url: None,
                guichet: broker::web::DEFAULT_GUICHET.to_string(),
                tls: options.web_tls,
                trusted_proxies: options.web_trusted_proxies,
            }),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(broker::run(listener, config, async move {
            let _ = stopped.await;
        }));
        let broker = TestBroker {
            addr,
            ops_addr,
            web_addr,
            pki_dir: pki_dir.to_path_buf(),
            data_dir,
            reload,
            stop: Some(stop),
            task,
            _home: home,
        };
        broker.wait_ready().await
    }

    /// Starts a broker on the sample registry that also serves the web pages
    /// ([`TestBroker::web_addr`]).
    pub async fn start_with_pages(pki_dir: &Path) -> anyhow::Result<TestBroker> {
        TestBroker::start_with(
            pki_dir,
            BrokerOptions {
                web: true,
                ..BrokerOptions::default()
            },
        )
        .await
    }

    /// Starts a broker on `registry` (the sample one edited, for instance), everything else as
    /// [`BrokerOptions::default`].
    pub async fn start_with_registry(
        pki_dir: &Path,
        registry: PathBuf,
    ) -> anyhow::Result<TestBroker> {
        TestBroker::start_with(
            pki_dir,
            BrokerOptions {
                registry,
                ..BrokerOptions::default()
            },
        )
        .await
    }

    /// Starts a broker on the data directory `data_dir` (an earlier broker's, to restart on its
    /// state), everything else as [`BrokerOptions::default`].
    pub async fn start_on(pki_dir: &Path, data_dir: &Path) -> anyhow::Result<TestBroker> {
        TestBroker::start_with(
            pki_dir,
            BrokerOptions {
                data_dir: Some(data_dir.to_path_buf()),
                ..BrokerOptions::default()
            },
        )
        .await
    }

    async fn wait_ready(mut self) -> anyhow::Result<TestBroker> {
        for _ in 0..200 {
            if self.task.is_finished() {
                let result = (&mut self.task).await?;
                result?;
                bail!("the broker stopped before it was ready");
            }
            if http_get(self.ops_addr, "/readyz")
                .await
                .is_ok_and(|(status, _)| status == 200)
            {
                return Ok(self);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("the broker was not ready after 5 s")
    }

    /// An mTLS channel as `name` (`caf`, or `france-services-lyon/a.martin`).
    pub async fn channel(&self, name: &str) -> anyhow::Result<Channel> {
        Ok(broker::client::connect(&self.pki_dir, name, &self.addr.to_string()).await?)
    }

    /// Asks the broker to reload its registry and CRL (what SIGHUP does to the binary): the new
    /// registry's SHA-256, or why it was rejected.
    pub async fn reload(&self) -> anyhow::Result<Result<String, String>> {
        let (answer, answered) = oneshot::channel();
        self.reload
            .send(Some(answer))
            .await
            .map_err(|_| anyhow::anyhow!("the broker no longer takes reloads"))?;
        Ok(answered.await?)
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .context("the broker did not stop within 10 s")???;
        Ok(())
    }
}

/// The addresses a `unefois serve` process prints on its standard output, its mTLS listener's
/// and its health probe's, read until it says how to try it; the rest of its output is drained
/// on a thread, so that the broker never blocks on a full pipe. Blocking (call it from
/// `spawn_blocking` in async code).
pub fn served_addresses(
    stdout: std::process::ChildStdout,
) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let (mut addr, mut ops_addr) = (None, None);
    for line in lines.by_ref() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("Une Fois broker listening on ") {
            addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        }
        if let Some(rest) = line.strip_prefix("Health probe on http://") {
            ops_addr = rest.strip_suffix("/healthz").and_then(|a| a.parse().ok());
        }
        if line.contains("registry show") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok((
        addr.context("the broker printed no address")?,
        ops_addr.context("the broker printed no health probe")?,
    ))
}

/// Waits (10 s at most) until the `unefois serve` process `child`, its health probe at
/// `ops_addr`, says it is ready; fails at once if it exits.
pub async fn wait_until_ready(
    child: &mut std::process::Child,
    ops_addr: SocketAddr,
) -> anyhow::Result<()> {
    for _ in 0..400 {
        if let Some(status) = child.try_wait()? {
            bail!("the broker exited before it was ready: {status}");
        }
        if http_get(ops_addr, "/readyz")
            .await
            .is_ok_and(|(status, _)| status == 200)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("the broker (health probe {ops_addr}) was not ready after 10 s")
}

/// A plain HTTP/1.0 GET on loopback: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response)).await??;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn bin_target(profile_dir: &Path) -> PathBuf {
    profile_dir
        .parent()
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join("unefois-bin")
}

/// The `unefois` binary, built by cargo if needed (the tests crate cannot depend on a binary).
pub fn unefois_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>/unefois
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("unexpected test executable location")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build.current_dir(repo_root()).args([
        "build",
        "--quiet",
        "-p",
        "unefois-cli",
        "--bin",
        "unefois",
    ]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    // A target dir of its own: building the binary alone resolves features differently from
    // the test build, and sharing one dir would make each rebuild the other's crates.
    build.env("CARGO_TARGET_DIR", bin_target(profile_dir));
    let status = build.status().context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo build of the unefois binary failed");
    }
    let profile = profile_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "debug".into());
    Ok(bin_target(profile_dir).join(profile).join("unefois"))
}

/// Copies a folder recursively (a checkout's examples, a broker's data dir), leaving out
/// hidden entries and links (a provider's virtual environment, caches), as a fresh clone has
/// none of them.
pub fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_symlink() || entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if kind.is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()))?;
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// The audit entry at `index`, decoded (JSON), read through Audit.ListEvents as `auditor`.
pub async fn audit_entry(
    broker: &TestBroker,
    auditor: &str,
    index: u64,
) -> anyhow::Result<serde_json::Value> {
    let mut audit =
        unefois_proto::v1::audit_client::AuditClient::new(broker.channel(auditor).await?);
    let page = audit
        .list_events(unefois_proto::v1::ListEventsRequest {
            start_index: index,
            limit: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    let event = page
        .events
        .first()
        .filter(|e| e.index == index)
        .context("no event at this index")?;
    Ok(serde_json::from_slice(&event.entry)?)
}

/// The committed development identity provider's key (public, examples/dev-idp/).
pub fn dev_idp_key() -> broker::idp::dev::DevKey {
    let path = repo_root()
        .join("examples")
        .join("dev-idp")
        .join("dev-signing-key.json");
    let bytes = std::fs::read(&path).expect("the committed development identity provider key");
    broker::idp::dev::DevKey::parse(&path, &bytes)
        .expect("the committed development identity provider key loads")
}

/// A fresh ID token of the development identity provider for `subject` (`test:` or canonical
/// `pivot:`), for the guichet audience `audience`: the identity evidence Consents.Grant and
/// Guichet.ListAccesses require.
pub fn id_token(subject: &str, audience: &str) -> String {
    let claims = broker::idp::dev::claims(subject, audience, time::OffsetDateTime::now_utc())
        .expect("claims for a test or pivot subject");
    dev_idp_key()
        .sign(&claims)
        .expect("signing with the dev key")
}

/// The files the sample registry names, copied into `dir` at the same relative paths: the
/// datasets (`data/`), the development identity provider (`dev-idp/`), and the example
/// providers' public files ([`copy_example_provider_files`]).
pub fn copy_sample_files(dir: &Path) -> anyhow::Result<()> {
    let examples = repo_root().join("examples");
    copy_dir(&examples.join("data"), &dir.join("data"))?;
    copy_dir(&examples.join("dev-idp"), &dir.join("dev-idp"))?;
    copy_example_provider_files(dir)
}

/// The example providers' public files that the sample registry names, copied into
/// `dir/providers/`: the gRPC provider's origin JWKS, the HTTP provider's CA and token.
pub fn copy_example_provider_files(dir: &Path) -> anyhow::Result<()> {
    let examples = repo_root().join("examples");
    for file in [
        "providers/python/origin-jwks.json",
        "providers/http/dev-tls/ca.crt",
        "providers/http/token.txt",
    ] {
        let to = dir.join(file);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(examples.join(file), &to)?;
    }
    Ok(())
}

/// Serialises the Python provider's set-up between the tests of one binary (bootstrap.py also
/// takes a file lock, for other processes).
static PYTHON_SETUP: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The example gRPC provider's Python (examples/providers/python/.venv), after running its
/// bootstrap.py (idempotent: a few hashes when done).
pub fn example_python() -> anyhow::Result<PathBuf> {
    let _guard = PYTHON_SETUP.lock().unwrap_or_else(|e| e.into_inner());
    let dir = repo_root().join("examples/providers/python");
    let status = std::process::Command::new("python3")
        .arg(dir.join("bootstrap.py"))
        .status()
        .context("running python3 examples/providers/python/bootstrap.py")?;
    anyhow::ensure!(status.success(), "bootstrap.py failed: {status}");
    let python = dir.join(".venv/bin/python");
    anyhow::ensure!(python.exists(), "{} is missing", python.display());
    Ok(python)
}

/// Writes `dir/registry.toml`, the sample registry with `edit` applied (which must change
/// something), beside a copy of the sample datasets in `dir/data`.
pub fn sample_registry_with(dir: &Path, edit: impl Fn(&str) -> String) -> anyhow::Result<PathBuf> {
    copy_sample_files(dir)?;
    let sample = std::fs::read_to_string(sample_registry())?;
    let edited = edit(&sample);
    anyhow::ensure!(
        edited != sample,
        "the edit changed nothing in the sample registry"
    );
    let path = dir.join("registry.toml");
    std::fs::write(&path, edited)?;
    Ok(path)
}

/// The domain form of an envelope received over gRPC, to verify it.
pub fn envelope_of(e: &unefois_proto::v1::Envelope) -> unefois_tlog::dsse::Envelope {
    broker::receipt::envelope_file(e).to_envelope()
}

/// Lowercase hex SHA-256, as entries record payload hashes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
