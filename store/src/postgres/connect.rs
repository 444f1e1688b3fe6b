//! Connections to the database: a libpq-style URL (several hosts and
//! `target_session_attrs=read-write` find the primary after a failover), TLS on rustls with the
//! ring provider when the URL asks for it, and a client that reconnects by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures::StreamExt;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::{DbError, Severity, SqlState};
use tokio_postgres::{AsyncMessage, Client};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::db;
use crate::StoreError;

/// How long to wait for a connection to be set up (per host).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may take to be set up (TCP, TLS, authentication, the read-write
/// check), in connect timeouts per host: a host that accepts and then stops answering does not
/// hold the caller.
const SETUP_TIMEOUTS: u32 = 3;
/// A connection idle this long is probed (TCP keepalive), every `KEEPALIVE_INTERVAL`, and ends
/// after `KEEPALIVE_RETRIES` probes unanswered: a primary whose machine stopped or was cut off
/// sends no reset, and the kernel's default (two hours) would hold the writer's connection, its
/// commit waiting for an answer, for that long after a failover. A live server answers the
/// probes, so a commit waiting for a stopped standby is never cut.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_RETRIES: u32 = 3;
/// Data sent and not acknowledged this long ends the connection (`TCP_USER_TIMEOUT`): a server
/// gone while a statement was being sent.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the database is, and how to reach it.
#[derive(Clone)]
pub struct Connector {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    /// The URL without its password, for messages.
    shown: String,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Connector {
    /// Parses `url` (`postgresql://…` or `postgres://…`). `sslrootcert=PATH` (PEM) names the
    /// certificates the server's is checked against; `sslmode=require` (or stricter) then
    /// encrypts; without TLS settings, plain TCP (loopback or a private network only).
    pub fn parse(url: &str) -> Result<Connector, StoreError> {
        if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
            return Err(StoreError::Database(
                "a store URL starts with postgresql:// (or postgres://)".into(),
            ));
        }
        let (url, root_file) = take_param(url, "sslrootcert");
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Database(format!("store URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // The URL's own settings win (the keepalive's are not otherwise told from the defaults).
        let query = url.split_once('?').map_or("", |(_, q)| q);
        let says = |key: &str| {
            query
                .split('&')
                .any(|pair| pair.split('=').next() == Some(key))
        };
        if !says("keepalives_idle") {
            config.keepalives_idle(KEEPALIVE_IDLE);
        }
        if config.get_keepalives_interval().is_none() {
            config.keepalives_interval(KEEPALIVE_INTERVAL);
        }
        if config.get_keepalives_retries().is_none() {
            config.keepalives_retries(KEEPALIVE_RETRIES);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        // Every connection writes or decides: the primary only, whatever the URL says (a host
        // list without it, a balancer in front of every server, would reach a standby).
        config.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
        if config.get_application_name().is_none() {
            config.application_name("unefois");
        }
        let mut roots = rustls::RootCertStore::empty();
        if let Some(file) = &root_file {
            use rustls::pki_types::pem::PemObject;
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(file)
                .map_err(|e| StoreError::Database(format!("sslrootcert {file}: {e}")))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| StoreError::Database(format!("sslrootcert {file}: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| StoreError::Database(format!("sslrootcert {file}: {e}")))?;
            }
        } else if config.get_ssl_mode() == SslMode::Require {
            return Err(StoreError::Database(
                "sslmode=require needs sslrootcert=PATH: the certificates the database's is \
                 checked against"
                    .into(),
            ));
        }
        if root_file.is_none() {
            // Without roots, no TLS at all rather than a TLS that checks nothing.
            config.ssl_mode(SslMode::Disable);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Database(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let shown = shown(&config);
        Ok(Connector {
            config,
            tls: MakeRustlsConnect::new(tls),
            shown,
        })
    }

    /// The URL as it may be shown (no password).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// A new connection; its driver runs on its own task until the connection ends.
    pub async fn connect(&self) -> Result<Client, StoreError> {
        Ok(self.open().await?.0)
    }

    /// A new connection and the count of the warnings its server sent. The driver logs each
    /// notice and counts the warnings before it passes on the answer that follows them: a
    /// caller that reads the count after an answer sees every warning sent before it.
    async fn open(&self) -> Result<(Client, Warnings), StoreError> {
        // Each host in turn, each within its connect timeout, then the setup.
        let hosts = u32::try_from(self.config.get_hosts().len().max(1)).unwrap_or(u32::MAX);
        let limit = self
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(CONNECT_TIMEOUT)
            .saturating_mul(SETUP_TIMEOUTS.saturating_mul(hosts));
        let (client, mut connection) =
            match tokio::time::timeout(limit, self.config.connect(self.tls.clone())).await {
                Ok(connected) => connected.map_err(db("connect"))?,
                Err(_) => {
                    return Err(StoreError::Database(format!(
                        "connect: no connection set up within {limit:?}"
                    )));
                }
            };
        let warnings = Warnings::default();
        let counted = warnings.clone();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(|cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notice(notice)) => counted.notice(&notice),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "database connection ended");
                        break;
                    }
                }
            }
        });
        Ok((client, warnings))
    }
}

/// `url` without the query parameter `name`, and its value.
fn take_param(url: &str, name: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut value = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some((key, v)) if key == name => {
                value = Some(v.to_string());
                false
            }
            _ => true,
        })
        .collect();
    match kept.is_empty() {
        true => (base.to_string(), value),
        false => (format!("{base}?{}", kept.join("&")), value),
    }
}

/// The hosts, ports, user and database of `config`, never its password.
fn shown(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(host, port)| match host {
            tokio_postgres::config::Host::Tcp(h) => format!("{h}:{port}"),
            tokio_postgres::config::Host::Unix(p) => format!("{}:{port}", p.display()),
        })
        .collect();
    format!(
        "postgresql://{}@{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// The warnings a connection's server sent, counted. PostgreSQL answers a COMMIT whose wait
/// for a synchronous standby was cancelled (`pg_cancel_backend`, a `statement_timeout`) with
/// success and a WARNING: committed on the primary alone. The writer reads this count around
/// each transaction, so that such a commit is not acknowledged.
#[derive(Clone, Default)]
pub struct Warnings(Arc<AtomicU64>);

impl Warnings {
    /// The warnings received so far.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    fn notice(&self, notice: &DbError) {
        // A server too old to send the severity untranslated counts as warning.
        let warning = matches!(notice.parsed_severity(), Some(Severity::Warning) | None);
        if warning {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        let code = notice.code().code();
        // The writer's ROLLBACK after a batch its COMMIT already ended is expected.
        if warning && *notice.code() != SqlState::NO_ACTIVE_SQL_TRANSACTION {
            tracing::warn!(code, "database: {}", notice.message());
        } else {
            tracing::debug!(code, "database: {}", notice.message());
        }
    }
}

/// A connection that prepares each statement once (its parse and plan are the server's work,
/// per query otherwise): `query_typed` and `query_typed_opt` shadow the client's, by the same
/// signature; everything else is the client's.
pub struct Conn {
    client: Client,
    statements: std::sync::Mutex<std::collections::HashMap<String, tokio_postgres::Statement>>,
    warnings: Warnings,
}

pub type Params<'a> = &'a [(
    &'a (dyn tokio_postgres::types::ToSql + Sync),
    tokio_postgres::types::Type,
)];

impl std::ops::Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Conn {
    /// Wraps a connection (its warnings are logged, not counted).
    pub fn new(client: Client) -> Conn {
        Conn::counting(client, Warnings::default())
    }

    /// A new connection to `connector`'s database, its warnings counted ([`Conn::warnings`]).
    pub async fn connect(connector: &Connector) -> Result<Conn, StoreError> {
        let (client, warnings) = connector.open().await?;
        Ok(Conn::counting(client, warnings))
    }

    fn counting(client: Client, warnings: Warnings) -> Conn {
        Conn {
            client,
            statements: std::sync::Mutex::new(std::collections::HashMap::new()),
            warnings,
        }
    }

    /// The warnings this connection's server sent so far, when made by [`Conn::connect`].
    pub fn warnings(&self) -> u64 {
        self.warnings.count()
    }

    async fn prepared(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
        let known = self
            .statements
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sql)
            .cloned();
        if let Some(statement) = known {
            return Ok(statement);
        }
        let types: Vec<_> = params.iter().map(|(_, t)| t.clone()).collect();
        let statement = self.client.prepare_typed(sql, &types).await?;
        self.statements
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    /// Prepares `statements` (SQL and parameter types) on this connection.
    pub async fn prepare_all(
        &self,
        statements: &[(&str, &[tokio_postgres::types::Type])],
    ) -> Result<(), tokio_postgres::Error> {
        for (sql, types) in statements {
            let statement = self.client.prepare_typed(sql, types).await?;
            self.statements
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((*sql).to_string(), statement);
        }
        Ok(())
    }

    fn cached(&self, sql: &str) -> Result<tokio_postgres::Statement, String> {
        self.statements
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sql)
            .cloned()
            .ok_or_else(|| format!("statement not prepared on this connection: {sql}"))
    }

    /// The rows `sql` changed, `sql` prepared beforehand ([`Conn::prepare_all`]): sent at
    /// once, in the order of the calls (pipelined), or refused.
    pub async fn execute_prepared(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<u64, crate::StoreError> {
        let statement = self.cached(sql).map_err(crate::StoreError::Database)?;
        let values: Vec<_> = params.iter().map(|(v, _)| *v).collect();
        self.client
            .execute(&statement, &values)
            .await
            .map_err(super::db("write the batch"))
    }

    /// The rows of `sql`, prepared beforehand ([`Conn::prepare_all`]); an error says it was
    /// `what`.
    pub async fn query_prepared(
        &self,
        sql: &str,
        params: Params<'_>,
        what: &'static str,
    ) -> Result<Vec<tokio_postgres::Row>, crate::StoreError> {
        let statement = self.cached(sql).map_err(crate::StoreError::Database)?;
        let values: Vec<_> = params.iter().map(|(v, _)| *v).collect();
        self.client
            .query(&statement, &values)
            .await
            .map_err(super::db(what))
    }

    /// The rows of `sql`, prepared once per connection.
    pub async fn query_typed(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        let statement = self.prepared(sql, params).await?;
        let values: Vec<_> = params.iter().map(|(v, _)| *v).collect();
        self.client.query(&statement, &values).await
    }

    /// The row of `sql`, if any, prepared once per connection.
    pub async fn query_typed_opt(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
        let statement = self.prepared(sql, params).await?;
        let values: Vec<_> = params.iter().map(|(v, _)| *v).collect();
        self.client.query_opt(&statement, &values).await
    }
}

/// One shared connection for reads (tokio-postgres pipelines concurrent queries on it),
/// replaced when it ends: after a failover, the next read connects to the new primary.
pub struct Shared {
    connector: Connector,
    /// Statements run on each new connection before its first use.
    setup: Option<&'static str>,
    client: ArcSwapOption<Conn>,
    reconnecting: tokio::sync::Mutex<()>,
}

impl Shared {
    /// No connection yet: the first read makes it.
    pub fn new(connector: Connector) -> Shared {
        Shared {
            connector,
            setup: None,
            client: ArcSwapOption::empty(),
            reconnecting: tokio::sync::Mutex::new(()),
        }
    }

    /// As [`Shared::new`], each connection first running `setup` (its session's settings).
    pub fn with_setup(connector: Connector, setup: &'static str) -> Shared {
        Shared {
            setup: Some(setup),
            ..Shared::new(connector)
        }
    }

    /// The connection, made again if it ended.
    pub async fn client(&self) -> Result<Arc<Conn>, StoreError> {
        if let Some(client) = self.client.load_full()
            && !client.is_closed()
        {
            return Ok(client);
        }
        let _one = self.reconnecting.lock().await;
        if let Some(client) = self.client.load_full()
            && !client.is_closed()
        {
            return Ok(client);
        }
        let client = Conn::connect(&self.connector).await?;
        if let Some(setup) = self.setup {
            client
                .batch_execute(setup)
                .await
                .map_err(super::db("set up a connection"))?;
        }
        let client = Arc::new(client);
        self.client.store(Some(client.clone()));
        Ok(client)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_url_keeps_its_hosts_and_loses_what_tokio_postgres_does_not_know() {
        let (url, root) = take_param(
            "postgresql://u@h1:5432,h2:5433/db?sslrootcert=/ca.pem&target_session_attrs=read-write",
            "sslrootcert",
        );
        assert_eq!(
            url,
            "postgresql://u@h1:5432,h2:5433/db?target_session_attrs=read-write"
        );
        assert_eq!(root.as_deref(), Some("/ca.pem"));
        let c = Connector::parse(
            "postgresql://u:secret@h1:5432,h2:5433/db?target_session_attrs=read-write",
        );
        let c = c.map_err(|e| e.to_string());
        assert_eq!(
            c.as_ref().map(Connector::shown),
            Ok("postgresql://u@h1:5432,h2:5433/db")
        );
        let plain = Connector::parse("mysql://h/db")
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert!(plain.is_err_and(|e| e.contains("postgresql://")));
        let unchecked = Connector::parse("postgresql://h/db?sslmode=require")
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert!(unchecked.is_err_and(|e| e.contains("sslrootcert")));
    }

    #[test]
    fn a_connection_finds_a_dead_server_in_seconds_and_only_a_primary() {
        use tokio_postgres::config::TargetSessionAttrs;
        let config = |url: &str| Connector::parse(url).map(|c| c.config).ok();
        let plain = config("postgresql://u@h1,h2/db").unwrap();
        assert!(plain.get_keepalives());
        assert_eq!(plain.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(plain.get_keepalives_interval(), Some(KEEPALIVE_INTERVAL));
        assert_eq!(plain.get_keepalives_retries(), Some(KEEPALIVE_RETRIES));
        assert_eq!(plain.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
        assert_eq!(
            plain.get_target_session_attrs(),
            TargetSessionAttrs::ReadWrite
        );
        // What the URL says stays, but for a standby.
        let told = config(
            "postgresql://u@h/db?keepalives_idle=60&keepalives_interval=10&keepalives_retries=9\
             &tcp_user_timeout=30&target_session_attrs=any",
        )
        .unwrap();
        assert_eq!(told.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(
            told.get_keepalives_interval(),
            Some(Duration::from_secs(10))
        );
        assert_eq!(told.get_keepalives_retries(), Some(9));
        assert_eq!(told.get_tcp_user_timeout(), Some(&Duration::from_secs(30)));
        assert_eq!(
            told.get_target_session_attrs(),
            TargetSessionAttrs::ReadWrite
        );
    }

    /// A server that accepts the connection and then says nothing: the connection gives up.
    #[tokio::test]
    async fn a_server_that_accepts_and_never_answers_is_given_up() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let connector = Connector::parse(&format!(
            "postgresql://u@127.0.0.1:{port}/db?connect_timeout=1"
        ))
        .unwrap();
        let started = std::time::Instant::now();
        let outcome = connector.connect().await.map(|_| ());
        assert!(outcome.is_err_and(|e| e.to_string().contains("no connection set up")));
        assert!(started.elapsed() < Duration::from_secs(5));
        held.abort();
    }
}
