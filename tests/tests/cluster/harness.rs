//! A PostgreSQL primary with a synchronous standby, and brokers on it sharing one set of keys.

use std::path::Path;
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
            (primary, standby)
        })
        .await?;
        broker::store::postgres::init(&primary.url()).await?;
        Ok(Database { primary, standby })
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

/// Brokers of one cluster: one data folder each (its lock, its keys: copies of the first's).
pub struct Cluster {
    pub brokers: Vec<TestBroker>,
    homes: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Starts `n` brokers on `url`: the first creates the keys (the log is empty), the others
    /// start with copies of them.
    pub async fn start(pki: &Path, url: &str, n: usize) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster {
            brokers: Vec::new(),
            homes: Vec::new(),
        };
        for _ in 0..n {
            cluster.add(pki, url).await?;
        }
        Ok(cluster)
    }

    /// Starts one more broker, with the first one's keys.
    pub async fn add(&mut self, pki: &Path, url: &str) -> anyhow::Result<()> {
        let home = tempfile::tempdir()?;
        let data = home.path().join("data");
        if let Some(first) = self.homes.first() {
            copy_keys(&first.path().join("data"), &data)?;
        }
        let broker = start(pki, url, &data).await?;
        self.brokers.push(broker);
        self.homes.push(home);
        Ok(())
    }
}

/// A broker on `url` with its data (keys) in `data`.
pub async fn start(pki: &Path, url: &str, data: &Path) -> anyhow::Result<TestBroker> {
    TestBroker::start_with(
        pki,
        BrokerOptions {
            data_dir: Some(data.to_path_buf()),
            store: broker::StoreLocation::Postgres {
                url: url.to_string(),
                append_timeout: APPEND_TIMEOUT,
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
