//! `unefois serve`: the broker, with the development PKI when asked, until SIGTERM or Ctrl-C;
//! SIGHUP reloads the registry and the CRL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use broker::registry::Role;
use broker::{AcceptLimits, TlsFiles};
use clap::ValueEnum;
use unefois_certs::{Pki, Validity};

use crate::client::{DEFAULT_ADDR, DEFAULT_HOME};

/// The agent that the development PKI issues for every mediation structure.
const DEV_AGENT: &str = "a.martin";

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// Address of the mTLS listener for participants.
    #[arg(long, default_value = DEFAULT_ADDR)]
    listen: SocketAddr,
    /// Address of the operational listener (health probe); keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:9451")]
    ops_listen: SocketAddr,
    /// The broker's home: PKI in HOME/pki, state in HOME/data.
    #[arg(long, default_value = DEFAULT_HOME)]
    home: PathBuf,
    /// The registry file.
    #[arg(long, default_value = "examples/registry.toml")]
    registry: PathBuf,
    /// Log output format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Create a development PKI in HOME/pki when it is missing (implied by the default home).
    #[arg(long)]
    dev: bool,
    /// Seconds a client has to finish its TLS handshake.
    #[arg(long, default_value_t = AcceptLimits::default().handshake_timeout.as_secs())]
    handshake_timeout_secs: u64,
    /// Participant connections open at once, in all (more are closed before TLS); lowered at
    /// start to fit under the file-descriptor limit.
    #[arg(long, default_value_t = AcceptLimits::default().max_connections)]
    max_connections: usize,
    /// Connections open at once per participant certificate (each agent has its own count);
    /// over it, calls are refused with RESOURCE_EXHAUSTED / TOO_MANY_CONNECTIONS.
    #[arg(long, default_value_t = AcceptLimits::default().max_connections_per_participant)]
    max_connections_per_participant: usize,
    /// Largest request message accepted, in bytes.
    #[arg(long, default_value_t = broker::defaults::MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// Seconds calls in flight have to finish after SIGTERM or Ctrl-C.
    #[arg(long, default_value_t = 20)]
    drain_timeout_secs: u64,
    /// Seconds a pre-fill preview waits for the citizen's confirmation before it is forgotten.
    #[arg(long, default_value_t = broker::defaults::PREVIEW_TTL.as_secs())]
    preview_ttl_secs: u64,
    /// The log and read models in PostgreSQL (a cluster of brokers), e.g.
    /// `postgresql://unefois@db1,db2/unefois?target_session_attrs=read-write`; its schema made
    /// by `unefois store init`. Without it, the embedded backend in HOME/data. The keys stay in
    /// HOME/data/keys: every broker of a cluster has the same. Also read from the environment
    /// (`UNEFOIS_STORE`), which, unlike the command line, other users of the host cannot read:
    /// the way to give a URL with a password.
    #[arg(
        long,
        value_name = "URL",
        env = "UNEFOIS_STORE",
        hide_env_values = true
    )]
    store: Option<String>,
    /// Seconds an append waits for the database's commit (with its synchronous standby) before
    /// the caller is told the store is unavailable.
    #[arg(long, default_value_t = broker::store::postgres::DEFAULT_APPEND_TIMEOUT.as_secs())]
    append_timeout_secs: u64,
    /// With `--store`: this broker brings the cluster a new registry. Without it, a broker whose
    /// registry is not the one the cluster's log recorded last refuses to start, naming the
    /// files that differ.
    #[arg(long, requires = "store")]
    change_registry: bool,
    /// Address of the people's web pages (plain HTTP, unless `--web-tls-cert`; or HTTPS in
    /// front, docs/web.md). On by default at 127.0.0.1:8080 with the default home.
    #[arg(long, value_name = "ADDR")]
    web_listen: Option<SocketAddr>,
    /// Serve no web pages, even with the default home.
    #[arg(long, conflicts_with = "web_listen")]
    no_web: bool,
    /// The address people reach the pages at (`https://…` behind a reverse proxy): the OpenID
    /// Connect redirect goes there, and cookies are `Secure` under HTTPS.
    #[arg(long, value_name = "URL")]
    web_url: Option<String>,
    /// The registry participant (a guichet) the citizen pages act as.
    #[arg(long, default_value = broker::web::DEFAULT_GUICHET)]
    web_guichet: String,
    /// Serve the pages over HTTPS with this PEM certificate chain (with `--web-tls-key`).
    #[arg(long, value_name = "PEM", requires = "web_tls_key")]
    web_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--web-tls-cert`.
    #[arg(long, value_name = "PEM", requires = "web_tls_cert")]
    web_tls_key: Option<PathBuf>,
    /// A reverse proxy in front of the pages (an address or a CIDR block; repeat for each):
    /// the client address it sends in `X-Forwarded-For` is the one the limits per source count,
    /// and the per-source connection cap does not apply to it (docs/web.md).
    #[arg(long, value_name = "CIDR", value_parser = broker::web::trusted_proxy)]
    web_trusted_proxy: Vec<ipnet::IpNet>,
}

/// Where the development setup serves its web pages.
const DEV_WEB_ADDR: &str = "127.0.0.1:8080";

/// Libraries whose own logs, at their debug or trace levels, hold what the broker never logs:
/// tokio-postgres a statement's parameters (audit pseudonyms beside leaf indices, consents'
/// scopes), sled its keys (pseudonyms). Never logged below `info`, whatever `RUST_LOG` asks.
const QUIET_BELOW_INFO: [&str; 2] = ["tokio_postgres", "sled"];

/// The operator's filter: `RUST_LOG`, or `info`.
fn log_filter(rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    rust_log
        .and_then(|directives| tracing_subscriber::EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"))
}

/// Whether an event may be logged at all: nothing below `info` from [`QUIET_BELOW_INFO`]. A
/// filter of its own beside `RUST_LOG`'s, both required: a directive added to the operator's
/// would lose to one of theirs for a narrower target (`tokio_postgres::query=debug`) or a span.
fn not_a_database_secret(meta: &tracing::Metadata<'_>) -> bool {
    *meta.level() <= tracing::Level::INFO
        || !QUIET_BELOW_INFO.iter().any(|quiet| {
            meta.target()
                .strip_prefix(quiet)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let quiet = tracing_subscriber::filter::filter_fn(not_a_database_secret);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(log_filter(std::env::var("RUST_LOG").ok().as_deref()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.finish().with(quiet).init(),
        LogFormat::Json => builder.json().finish().with(quiet).init(),
    }
}

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let pki_dir = args.home.join("pki");
    let dev = args.dev || args.home == Path::new(DEFAULT_HOME);
    if dev {
        dev_pki(&pki_dir, &args.registry)?;
    } else if !pki_dir.join("ca.crt").is_file() {
        bail!(
            "no PKI in {}: create one with `unefois certs init --dir {}` or pass --dev",
            pki_dir.display(),
            pki_dir.display()
        );
    }
    // What the broker creates from here on (its data directory; sled's files) is for its user
    // only; the files it publishes (verifier keys) are made readable explicitly.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    // Before anything is said: a second broker on this home is refused by name, not after it
    // printed that it listens.
    broker::data_dir_holder(&args.home.join("data")).map_err(|e| match e {
        broker::DataLockError::InUse { pid, .. } => anyhow::anyhow!(
            "another broker is using {} (pid {}); stop it first, or give this one another --home",
            args.home.display(),
            pid.map_or_else(|| "unknown".to_string(), |p| p.to_string())
        ),
        other => other.into(),
    })?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let ops = tokio::net::TcpListener::bind(args.ops_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.ops_listen))?;
    let web = match (args.web_listen, args.no_web) {
        (Some(addr), _) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?,
        ),
        (None, false) if args.home == Path::new(DEFAULT_HOME) => {
            // The development default: pages if the port is free, a warning otherwise.
            match tokio::net::TcpListener::bind(DEV_WEB_ADDR).await {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(addr = DEV_WEB_ADDR, error = %e, "web pages not served");
                    None
                }
            }
        }
        _ => None,
    };
    if let Some(url) = &args.web_url {
        broker::web::public_url(url)
            .map_err(|e| anyhow::anyhow!(e))
            .context("--web-url")?;
    }
    let web_tls = match (&args.web_tls_cert, &args.web_tls_key) {
        (Some(cert), Some(key)) => Some(
            broker::web::tls_config(cert, key)
                .context("the web pages' certificate (--web-tls-cert, --web-tls-key)")?,
        ),
        _ => None,
    };
    // Behind an address that is not one (0.0.0.0, ::), or over HTTPS, the pages cannot guess
    // the address people reach them at: the login's redirect and every form's origin check
    // need it.
    if let Some(web) = &web
        && args.web_url.is_none()
        && (web_tls.is_some() || web.local_addr().is_ok_and(|a| a.ip().is_unspecified()))
    {
        bail!(
            "--web-url is required when the web pages listen on every address or serve HTTPS: \
             give the address people reach them at (https://name[:port])"
        );
    }
    let addr = listener.local_addr()?;
    let ops_addr = ops.local_addr()?;
    outln!("Une Fois broker listening on {addr} (mTLS)");
    outln!("Health probe on http://{ops_addr}/healthz");
    outln!("Try, in another terminal:");
    let home = args.home.display();
    outln!("  cargo run -q -- registry show --home {home} --addr {addr} --as mairie-lyon");
    outln!("  cargo run -q -- registry show --home {home} --addr {addr} --as mairie-test");
    outln!("  curl http://{ops_addr}/readyz");
    if let Some(web) = &web {
        let shown = args.web_url.clone().unwrap_or_else(|| {
            format!(
                "{}://{}",
                if web_tls.is_some() { "https" } else { "http" },
                web.local_addr()
                    .map_or_else(|_| String::new(), |a| a.to_string())
            )
        });
        outln!("Web pages on {shown}/");
    }
    let config = broker::Config {
        registry: args.registry,
        tls: TlsFiles::in_dir(&pki_dir),
        data_dir: args.home.join("data"),
        ops_listener: Some(ops),
        accept: AcceptLimits {
            handshake_timeout: std::time::Duration::from_secs(args.handshake_timeout_secs.max(1)),
            max_connections: args.max_connections.max(1),
            max_connections_per_participant: args.max_connections_per_participant.max(1),
            ..AcceptLimits::default()
        },
        drain_timeout: std::time::Duration::from_secs(args.drain_timeout_secs),
        max_request_bytes: args.max_request_bytes,
        journal_faults: None,
        preview_ttl: std::time::Duration::from_secs(args.preview_ttl_secs.max(1)),
        reload: Some(reload_on_sighup()?),
        store: match args.store {
            None => broker::StoreLocation::Embedded,
            Some(url) => broker::StoreLocation::Postgres {
                url,
                append_timeout: std::time::Duration::from_secs(args.append_timeout_secs.max(1)),
                change_registry: args.change_registry,
            },
        },
        web: web.map(|listener| broker::web::WebConfig {
            listener,
            public_url: args.web_url,
            guichet: args.web_guichet,
            tls: web_tls,
            trusted_proxies: broker::web::TrustedProxies::new(args.web_trusted_proxy),
        }),
    };
    broker::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

/// Creates (or completes) the development PKI: a certificate for every participant of the
/// registry and one agent per mediation structure.
fn dev_pki(pki_dir: &Path, registry: &Path) -> anyhow::Result<()> {
    let registry = broker::registry::load(registry)?;
    let created = !pki_dir.join("ca.crt").exists();
    let ids: Vec<&str> = registry.participants().map(|p| p.id.as_str()).collect();
    let pki = Pki::init(pki_dir, registry.trust_domain(), &ids)?;
    for p in registry
        .participants()
        .filter(|p| p.has_role(Role::Mediator))
    {
        if !pki.cert_path(&format!("{}/{DEV_AGENT}", p.id)).exists() {
            pki.issue_agent(&p.id, DEV_AGENT, &Validity::default())?;
        }
    }
    if created {
        outln!(
            "Created a development PKI in {} (trust domain {}): not for production.",
            pki_dir.display(),
            registry.trust_domain()
        );
    }
    Ok(())
}

/// SIGHUP asks the broker to read its registry and CRL again (the outcome is logged).
fn reload_on_sighup() -> anyhow::Result<tokio::sync::mpsc::Receiver<broker::ReloadRequest>> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            if tx.send(None).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the broker");
            let _ = ctrl_c.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt as _;

    /// Whether the broker's filters let an event from `target` through (at debug, or trace for
    /// sled's) under `RUST_LOG=rust_log`.
    fn enabled(rust_log: &str, target: &str) -> bool {
        let subscriber = tracing_subscriber::registry()
            .with(super::log_filter(Some(rust_log)))
            .with(tracing_subscriber::filter::filter_fn(
                super::not_a_database_secret,
            ));
        tracing::subscriber::with_default(subscriber, || match target {
            "tokio_postgres::query" => {
                tracing::enabled!(target: "tokio_postgres::query", tracing::Level::DEBUG)
            }
            "sled::tree" => tracing::enabled!(target: "sled::tree", tracing::Level::TRACE),
            _ => tracing::enabled!(target: "broker::store", tracing::Level::DEBUG),
        })
    }

    /// `RUST_LOG=debug` (or naming the library) never lets tokio-postgres log a statement's
    /// parameters, nor sled its keys; the broker's own debug logs still come. Fails without
    /// the cap.
    #[test]
    fn debug_logs_never_include_the_databases_parameters() {
        for rust_log in [
            "debug",
            "trace",
            "tokio_postgres=debug,sled=trace",
            "tokio_postgres::query=debug,sled::tree=trace",
            "[connect]=trace",
            "info",
        ] {
            assert!(!enabled(rust_log, "tokio_postgres::query"), "{rust_log}");
            assert!(!enabled(rust_log, "sled::tree"), "{rust_log}");
        }
        assert!(enabled("debug", "broker::store"));
        assert!(!enabled("info", "broker::store"));
    }
}
