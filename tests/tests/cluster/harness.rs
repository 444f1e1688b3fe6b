//! A PostgreSQL primary with a synchronous standby, and brokers on it sharing one set of keys.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use unefois_store::postgres::test_server::Server;
use unefois_tests::{BrokerOptions, TestBroker};

/// How long an append waits for its commit in these tests.
pub const APPEND_TIMEOUT: Duration = Duration::from_secs(5);

/// A primary and one synchronous standby (`s1`): a commit is acknowledged once the standby
/// has it.
pub struct Database {
    pub primary: Server,
    pub standby: Server,
}

impl Database {
    pub async fn start() -> anyhow::Result<Database> {
        let (primary, standby) = tokio::task::spawn_blocking(|| {
            let primary = Server::primary("");
            let standby = Server::standby(&primary, "s1");
            synchronous(&primary);
            (primary, standby)
        })
        .await?;
        broker::store::postgres::init(&primary.url(), false).await?;
        Ok(Database { primary, standby })
    }

    /// After the primary's death: the standby promoted, and a new synchronous standby made
    /// from it on the dead primary's port (the brokers' URL names both ports).
    pub fn fail_over(&mut self) {
        self.primary.kill();
        self.standby.promote();
        let port = self.primary.port();
        let standby = Server::standby_on(&self.standby, "s1", port);
        self.primary = std::mem::replace(&mut self.standby, standby);
        synchronous(&self.primary);
    }

    /// The URL brokers use: both servers, the writable one chosen.
    pub fn url(&self) -> String {
        format!(
            "postgresql://unefois@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
            self.primary.port(),
            self.standby.port()
        )
    }
}

/// Makes the standby `s1` of `primary` synchronous, once it streams.
fn synchronous(primary: &Server) {
    primary.wait_for(
        "SELECT count(*) FROM pg_stat_replication WHERE application_name = 's1' \
         AND state = 'streaming'",
        "1",
        Duration::from_secs(30),
    );
    primary.sql("ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (s1)'");
    primary.sql("SELECT pg_reload_conf()");
    primary.wait_for(
        "SELECT sync_state FROM pg_stat_replication WHERE application_name = 's1'",
        "quorum",
        Duration::from_secs(30),
    );
}

/// Brokers of one cluster: one data folder each (its lock, its keys: copies of the first's).
pub struct Cluster {
    pub brokers: Vec<TestBroker>,
    homes: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Starts `n` brokers on `url`: the first creates the keys (the log is empty), the others
    /// start with copies of them.
    pub async fn start(pki: &Path, url: &str, n: usize) -> anyhow::Result<Cluster> {
        Cluster::start_on_registry(pki, url, n, &unefois_tests::sample_registry()).await
    }

    /// As [`Cluster::start`], every broker serving `registry`.
    pub async fn start_on_registry(
        pki: &Path,
        url: &str,
        n: usize,
        registry: &Path,
    ) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster {
            brokers: Vec::new(),
            homes: Vec::new(),
        };
        for _ in 0..n {
            cluster.add_on_registry(pki, url, registry).await?;
        }
        Ok(cluster)
    }

    /// The data folder of broker `i` (its keys, its lock, the newest checkpoint it knew).
    pub fn data(&self, i: usize) -> std::path::PathBuf {
        self.homes[i].path().join("data")
    }

    /// Starts one more broker, with the first one's keys.
    pub async fn add(&mut self, pki: &Path, url: &str) -> anyhow::Result<()> {
        self.add_on_registry(pki, url, &unefois_tests::sample_registry())
            .await
    }

    /// As [`Cluster::add`], the broker serving `registry`.
    async fn add_on_registry(
        &mut self,
        pki: &Path,
        url: &str,
        registry: &Path,
    ) -> anyhow::Result<()> {
        let home = tempfile::tempdir()?;
        let data = home.path().join("data");
        if let Some(first) = self.homes.first() {
            copy_keys(&first.path().join("data"), &data)?;
        }
        let broker = start_on_registry(pki, url, &data, registry.to_path_buf(), false).await?;
        self.brokers.push(broker);
        self.homes.push(home);
        Ok(())
    }
}

/// A broker on `url` with its data (keys) in `data`.
pub async fn start(pki: &Path, url: &str, data: &Path) -> anyhow::Result<TestBroker> {
    start_on_registry(pki, url, data, unefois_tests::sample_registry(), false).await
}

/// A broker on `url` with its data (keys) in `data`, serving `registry`; with
/// `change_registry`, as `unefois serve --change-registry` starts it.
pub async fn start_on_registry(
    pki: &Path,
    url: &str,
    data: &Path,
    registry: std::path::PathBuf,
    change_registry: bool,
) -> anyhow::Result<TestBroker> {
    TestBroker::start_with(
        pki,
        BrokerOptions {
            registry,
            data_dir: Some(data.to_path_buf()),
            store: broker::StoreLocation::Postgres {
                url: url.to_string(),
                append_timeout: APPEND_TIMEOUT,
                change_registry,
            },
            ..BrokerOptions::default()
        },
    )
    .await
}

/// What the operator does for each new broker: the keys of `from` copied into `to`.
pub fn copy_keys(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    unefois_tests::copy_dir(&from.join("keys"), &to.join("keys"))
        .with_context(|| format!("copying the keys of {}", from.display()))
}

/// A `unefois serve --store …` process, killed (SIGKILL) and reaped when dropped.
pub struct Process {
    child: std::process::Child,
    pub addr: std::net::SocketAddr,
    pub ops_addr: std::net::SocketAddr,
    pub home: PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Process {
    /// Starts a broker process of the `unefois` binary at `binary` (this version's, or another's)
    /// on `url` with its home in `home` (the development PKI made there if missing), serving the
    /// sample registry, and waits until it is ready.
    pub async fn start_binary(binary: &Path, home: &Path, url: &str) -> anyhow::Result<Process> {
        Process::start_on(binary, home, url, &unefois_tests::sample_registry()).await
    }

    /// As [`Process::start_binary`], serving `registry`.
    pub async fn start_on(
        binary: &Path,
        home: &Path,
        url: &str,
        registry: &Path,
    ) -> anyhow::Result<Process> {
        let root = unefois_tests::repo_root();
        let child = std::process::Command::new(binary)
            .current_dir(&root)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--ops-listen",
                "127.0.0.1:0",
            ])
            .args(["--dev", "--append-timeout-secs", "5", "--store", url])
            .arg("--home")
            .arg(home)
            .arg("--registry")
            .arg(registry)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .context("cannot start unefois serve")?;
        let mut child = child;
        let stdout = child.stdout.take().context("no stdout")?;
        let printed = tokio::task::spawn_blocking(move || unefois_tests::served_addresses(stdout));
        let mut process = Process {
            child,
            addr: ([0, 0, 0, 0], 0).into(),
            ops_addr: ([0, 0, 0, 0], 0).into(),
            home: home.to_path_buf(),
        };
        (process.addr, process.ops_addr) = printed.await??;
        unefois_tests::wait_until_ready(&mut process.child, process.ops_addr).await?;
        Ok(process)
    }

    /// SIGKILL, then reap: no drain, no flush.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// An mTLS channel as `name`.
    pub async fn channel(&self, name: &str) -> anyhow::Result<tonic::transport::Channel> {
        Ok(broker::client::connect(&self.home.join("pki"), name, &self.addr.to_string()).await?)
    }
}

/// Three broker processes on `url`: the first makes the PKI and keys, the others get copies,
/// as an operator would distribute them.
pub async fn processes(
    url: &str,
    n: usize,
) -> anyhow::Result<(Vec<tempfile::TempDir>, Vec<Process>)> {
    processes_on(url, n, &unefois_tests::sample_registry()).await
}

/// The sample registry, in `dir`, with mairie-lyon's rate limit far above what the crash
/// tests' load asks (its default, 100 calls a second for the whole cluster, would refuse most
/// of it, and not evenly between brokers): the load then keeps several fetches in every batch,
/// the case a kill must not lose.
pub fn load_registry(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    unefois_tests::sample_registry_with(dir, |s| {
        s.replacen(
            "id = \"mairie-lyon\"\nname = \"Ville de Lyon\"\n",
            "id = \"mairie-lyon\"\nname = \"Ville de Lyon\"\n\
             rate_limit = { per_minute = 6000000, burst = 100000 }\n",
            1,
        )
    })
}

/// As [`processes`], serving `registry`.
pub async fn processes_on(
    url: &str,
    n: usize,
    registry: &Path,
) -> anyhow::Result<(Vec<tempfile::TempDir>, Vec<Process>)> {
    let mut homes = Vec::new();
    let mut brokers = Vec::new();
    for i in 0..n {
        let home = tempfile::tempdir()?;
        if i > 0 {
            let first = homes
                .first()
                .map(|h: &tempfile::TempDir| h.path().to_path_buf());
            let first = first.context("the first home")?;
            unefois_tests::copy_dir(&first.join("pki"), &home.path().join("pki"))?;
            copy_keys(&first.join("data"), &home.path().join("data"))?;
        }
        let binary = unefois_tests::unefois_binary()?;
        brokers.push(Process::start_on(&binary, home.path(), url, registry).await?);
        homes.push(home);
    }
    Ok((homes, brokers))
}

/// The first `size` entries of the log, as the auditor `audit` lists them (each listing is
/// itself recorded: the log grows as it is read), their leaf indices checked gap-free.
pub async fn log_entries(
    audit: &mut unefois_proto::v1::audit_client::AuditClient<tonic::transport::Channel>,
    size: u64,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut entries: Vec<Vec<u8>> = Vec::new();
    while (entries.len() as u64) < size {
        let events = audit
            .list_events(unefois_proto::v1::ListEventsRequest {
                start_index: entries.len() as u64,
                limit: 1000,
                ..Default::default()
            })
            .await?
            .into_inner()
            .events;
        anyhow::ensure!(
            !events.is_empty(),
            "the log ends at {} entries, before {size}",
            entries.len()
        );
        for event in events {
            anyhow::ensure!(
                event.index == entries.len() as u64,
                "gap at {}",
                entries.len()
            );
            entries.push(event.entry);
        }
    }
    entries.truncate(size as usize);
    Ok(entries)
}

/// The receipt of one fetch through `broker`.
pub async fn receipt_of_a_fetch(broker: &TestBroker) -> anyhow::Result<unefois_proto::v1::Receipt> {
    unefois_tests::clients::exchange(broker, "mairie-lyon")
        .await?
        .fetch(unefois_tests::requests::rfr("test:bob"))
        .await?
        .into_inner()
        .receipt
        .ok_or_else(|| anyhow::anyhow!("no receipt"))
}

/// One fetch through `broker`, refused as UNAVAILABLE / STORE_UNAVAILABLE.
pub async fn fetch_refused_as_unavailable(broker: &TestBroker) -> anyhow::Result<()> {
    unefois_tests::refusals::refused(
        unefois_tests::clients::exchange(broker, "mairie-lyon")
            .await?
            .fetch(unefois_tests::requests::rfr("test:bob"))
            .await,
        tonic::Code::Unavailable,
        unefois_proto::v1::ErrorReason::StoreUnavailable,
    );
    Ok(())
}

/// The checkpoint `receipt` was given, signed by the log key `log_vkey`, once the receipt's
/// inclusion proof of its entry holds in it.
pub fn receipt_holds(
    log_vkey: &str,
    receipt: &unefois_proto::v1::Receipt,
) -> anyhow::Result<unefois_tlog::VerifiedCheckpoint> {
    let given = unefois_tlog::verify_checkpoint(log_vkey, &receipt.checkpoint)?;
    let proof = unefois_tlog::tree::hashes(&receipt.inclusion_proof).context("a proof hash")?;
    unefois_tlog::verify_inclusion(
        &proof,
        given.size,
        given.root,
        receipt.leaf_index,
        &receipt.entry,
    )?;
    Ok(given)
}
