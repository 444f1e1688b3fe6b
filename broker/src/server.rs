//! Starting and stopping the broker: load and check everything, serve, drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::audit::LogSigner;
use crate::event::{Event, Record};
use crate::federation::{Federation, build_adapters};
use crate::grpc::limits::RequestLimitLayer;
use crate::idempotency::{self, RecentAnswers};
use crate::journal::JournalOptions;
use crate::keys::{KeyError, Keys};
use crate::listener::{self, AcceptLimits, TlsFiles, TlsMaterial, TlsSetupError};
use crate::ops::{self, Readiness};
use crate::ratelimit::{self, RateLimits};
use crate::registry::{self, RegistryError};
use crate::signing::AttestationSigner;
use crate::state::{DEFAULT_PROVIDER_TIMEOUT, State};
use crate::store::{Embedded, Postgres, Store, StoreError};

/// How long a share of the limits' counts waits for the store.
const SHARE_TIMEOUT: Duration = Duration::from_secs(2);

/// Streams a participant connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS);
/// more are refused (REFUSED_STREAM; tonic's client queues them instead). A stream whose answer
/// the client does not read stays open with that answer held: this bounds what one connection
/// can pin, to 128 answers (the largest is a page of 100 audit events, some 100 KiB; hyper
/// holds at most 400 KiB of unsent data per stream). The benchmarks drive 64 per connection.
pub const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// Inbound flow-control window per stream: twice the largest request accepted (64 KiB).
pub const HTTP2_STREAM_WINDOW: u32 = 128 * 1024;
/// Inbound flow-control window per connection: request data held unread at most.
pub const HTTP2_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Largest header list accepted (SETTINGS_MAX_HEADER_LIST_SIZE); gRPC metadata is far smaller.
pub const HTTP2_MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

/// What the broker needs to start.
pub struct Config {
    /// The registry file.
    pub registry: PathBuf,
    /// The PKI files the mTLS listener serves with.
    pub tls: TlsFiles,
    /// Where the broker keeps its state (journal, derived store, keys).
    pub data_dir: PathBuf,
    /// The operational listener (health probe), if any.
    pub ops_listener: Option<TcpListener>,
    /// Limits of the TLS accept loop.
    pub accept: AcceptLimits,
    /// How long calls in flight may take to finish after shutdown is asked; connections still
    /// open then are closed.
    pub drain_timeout: Duration,
    /// Largest request message accepted, in bytes (larger: RESOURCE_EXHAUSTED).
    pub max_request_bytes: usize,
    /// Fault injection in the journal's commit path (tests only; `None` in production). The
    /// field is there in every build, so that the `unefois` binary, another crate, builds a
    /// `Config` whether or not the build turned the broker's `fault-injection` feature on.
    pub journal_faults: Option<JournalFaults>,
    /// How long a pre-fill preview waits for the citizen's confirmation.
    pub preview_ttl: Duration,
    /// Reload requests (the binary sends one on SIGHUP): the registry and the CRL are read
    /// again; each request hears whether the reload was applied.
    pub reload: Option<mpsc::Receiver<ReloadRequest>>,
    /// Where the log and the read models live: the embedded backend in the data directory (one
    /// machine), or a PostgreSQL database shared by the brokers of a cluster.
    pub store: StoreLocation,
    /// The people's web pages, if they are served (`--web-listen`).
    pub web: Option<crate::web::WebConfig>,
}

/// Where the broker's log and read models live.
#[derive(Clone, Debug, Default)]
pub enum StoreLocation {
    /// The embedded backend: journal and derived state in the data directory.
    #[default]
    Embedded,
    /// A PostgreSQL database (libpq URL), its schema made by `unefois store init`.
    Postgres {
        /// `postgresql://…`; several hosts and `target_session_attrs=read-write` find the
        /// primary after a failover.
        url: String,
        /// How long an append waits for its commit before the caller is told the store is
        /// unavailable.
        append_timeout: Duration,
        /// This broker brings the cluster a new registry: started with a registry other than
        /// the one the log recorded last, it records its own instead of refusing to start.
        change_registry: bool,
    },
}

/// The journal's [`FaultInjector`](crate::journal::FaultInjector), with the `fault-injection`
/// feature.
#[cfg(feature = "fault-injection")]
pub type JournalFaults = crate::journal::FaultInjector;

/// Without the `fault-injection` feature, no fault injector exists: [`Config::journal_faults`]
/// can only be `None`.
#[cfg(not(feature = "fault-injection"))]
pub enum JournalFaults {}

/// A request to reload the registry and the CRL; the answer (the new registry's SHA-256, or why
/// the files were rejected while the old ones keep serving) goes back on the sender, if any.
pub type ReloadRequest = Option<tokio::sync::oneshot::Sender<Result<String, String>>>;

/// Why the broker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The registry is invalid.
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    /// The PKI material is missing or unusable.
    #[error("TLS: {0}")]
    Tls(#[from] TlsSetupError),
    /// The data directory cannot be used.
    #[error("{}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// An adapter the registry declares cannot be built.
    #[error("{0}")]
    Adapter(#[from] crate::federation::AdapterSetupError),
    /// A key of the broker cannot be loaded or created.
    #[error("key: {0}")]
    Key(#[from] crate::keys::KeyError),
    /// Another broker uses the data directory.
    #[error("{0}")]
    DataLock(#[from] crate::data_lock::DataLockError),
    /// The journal or the derived state cannot be opened or written.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not be built from the descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The operational listener failed.
    #[error("operational listener: {0}")]
    Ops(std::io::Error),
    /// The web pages' listener failed.
    #[error("web listener: {0}")]
    Web(std::io::Error),
    /// A cluster broker's registry is not the one the log recorded last (another broker's).
    #[error(
        "this broker's registry ({ours}) is not the cluster's ({recorded}, recorded at entry \
         {entry}): {}. Every broker of a cluster serves the same registry: copy the cluster's \
         files here; to roll out this registry on purpose, start this broker with \
         `--change-registry` (or reload a broker that runs it with SIGHUP), then give the other \
         brokers the same files and reload them",
        changes.join(", ")
    )]
    RegistryDiffers {
        /// This broker's registry hash.
        ours: String,
        /// The hash the log recorded last.
        recorded: String,
        /// The entry that recorded it.
        entry: u64,
        /// Each file that differs ([`crate::registry::manifest_changes`]).
        changes: Vec<String>,
    },
    /// A reload's registry names another trust domain than the one the broker started under:
    /// its keys are named after that domain and its clients' identities are checked against
    /// it, so only a restart (with keys of that domain) can change it.
    #[error(
        "the registry names the trust domain {found:?}, but this broker runs under {running:?}: \
         a trust domain changes only with a restart (its keys and certificates are that \
         domain's)"
    )]
    TrustDomainChanged {
        /// The trust domain in force.
        running: String,
        /// The one the new registry names.
        found: String,
    },
    /// A verifier key published in the PKI folder is not the broker's: it is never overwritten.
    #[error(
        "{}: publishes the {what} {published:?}, but this broker's is {ours:?}: verifiers trust \
         the published key, and the broker never overwrites it. If the broker's key file was \
         replaced, put it back from a backup (`unefois restore`); if this PKI folder serves \
         another broker (or another trust domain), give each broker its own; to retire the \
         published key on purpose, move the file away (its holders will no longer verify new \
         signatures)",
        path.display()
    )]
    PublishedKeyDiffers {
        /// The published file (`attestation.vkey`, `log.vkey`).
        path: PathBuf,
        /// Which key.
        what: &'static str,
        /// The verifier key in the file.
        published: String,
        /// The broker's verifier key.
        ours: String,
    },
}

/// Publishes `vkey` at `path` for distribution out of band: written (0644, atomically) when
/// absent, left alone when it holds the same key, never overwritten with another.
fn publish_verifier_key(path: &Path, what: &'static str, vkey: &str) -> Result<(), BrokerError> {
    let io = |source| BrokerError::DataDir {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(published) if published.trim() == vkey => Ok(()),
        Ok(published) => Err(BrokerError::PublishedKeyDiffers {
            path: path.to_path_buf(),
            what,
            published: published.trim().chars().take(200).collect(),
            ours: vkey.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write as _;
            let tmp = path.with_extension("vkey.tmp");
            let mut file = std::fs::File::create(&tmp).map_err(io)?;
            file.write_all(format!("{vkey}\n").as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            // Public: readable by all, whatever the umask.
            std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .map_err(io)?;
            // A link, unlike a rename, never replaces a file another start published meanwhile.
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => {
                    tracing::info!(file = %path.display(), "published the {what}");
                    Ok(())
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    publish_verifier_key(path, what, vkey)
                }
                Err(e) => Err(io(e)),
            }
        }
        Err(e) => Err(io(e)),
    }
}

/// Serves the broker on `listener` until `shutdown` resolves; in-flight calls then finish.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BrokerError> {
    crate::metrics::handle();
    let registry = registry::load(&config.registry)?;
    let mut tls = TlsMaterial::load(&config.tls)?;
    crate::private::private_dir(&config.data_dir).map_err(|source| BrokerError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    // Held until the broker stops: a second broker on this directory is refused by name.
    let _held = crate::data_lock::acquire(&config.data_dir)?;
    tracing::info!(
        registry = %config.registry.display(),
        registry_sha256 = %registry.sha256_hex(),
        participants = registry.participants().count(),
        habilitations = registry.habilitations().len(),
        revoked_certificates = tls.revoked_serials.len(),
        "registry loaded"
    );
    let health = tonic_health::server::health_reporter();
    // Before the adapters: their gates count in it what is sent to each provider.
    let limits = RateLimits::from_registry(&registry);
    let adapters = build_adapters(
        &registry,
        Some(crate::grpc::provider_readiness(health.0.clone())),
        &limits,
    )?;
    let keys = match &config.store {
        StoreLocation::Embedded => load_keys(&config.data_dir)?,
        // Keys are created only for a cluster's first log; a broker joining one uses the keys
        // copied from another broker, or refuses to start naming the missing one.
        StoreLocation::Postgres { url, .. } => {
            let empty = crate::store::postgres::log_size(url).await? == 0;
            Keys::load(&config.data_dir, empty)?
        }
    };
    let pseudonyms = keys.pseudonymizer()?;
    let sealer = Arc::new(keys.sealer()?);
    let signer = AttestationSigner::new(&keys, registry.trust_domain())?;
    let log = LogSigner::new(&keys, registry.trust_domain())?;
    let vkeys = [
        (
            "attestation.vkey",
            "attestation key",
            signer.vkey().to_string(),
        ),
        ("log.vkey", "log key", log.vkey().to_string()),
    ];
    let store: Arc<dyn Store> = match &config.store {
        // Start-up only: reading the journal blocks this task until the state is caught up.
        StoreLocation::Embedded => Arc::new(Embedded::open(
            &config.data_dir,
            JournalOptions {
                #[cfg(feature = "fault-injection")]
                faults: config.journal_faults.clone(),
                ..JournalOptions::default()
            },
            log,
            sealer.clone(),
        )?),
        StoreLocation::Postgres {
            url,
            append_timeout,
            ..
        } => {
            let store = Postgres::open_remembering(
                url,
                log,
                sealer.clone(),
                *append_timeout,
                Some(crate::store::postgres::Remembered::in_data_dir(
                    &config.data_dir,
                )),
            )
            .await?;
            match store.unfinished_import().await {
                Ok(None) => {}
                Ok(Some(import)) => {
                    let copied = store
                        .latest_checkpoint()
                        .await
                        .ok()
                        .flatten()
                        .map_or(0, |(size, _)| size);
                    store.close().await;
                    return Err(StoreError::ImportUnfinished {
                        copied,
                        entries: import.entries,
                    }
                    .into());
                }
                Err(e) => {
                    store.close().await;
                    return Err(e.into());
                }
            }
            tracing::info!(database = %store.location(), "store: PostgreSQL");
            Arc::new(store)
        }
    };
    // The keys are those the journal last recorded, and the published verifier keys theirs.
    let recorded = store.recorded_keys().await;
    // A cluster serves one registry: the one its log recorded last, unless this start brings
    // a new one on purpose.
    let cluster_registry = match &config.store {
        StoreLocation::Postgres {
            change_registry: false,
            ..
        } => store.recorded_registry().await,
        _ => Ok(None),
    };
    let checked = (|| -> Result<(), BrokerError> {
        if let Some(recorded) = recorded? {
            keys.check_recorded(&recorded)?;
        }
        if let Some(cluster) = cluster_registry?
            && cluster.sha256 != registry.sha256_hex()
        {
            let mut recorded_files = cluster.files.clone();
            if recorded_files.is_empty() {
                recorded_files.insert(
                    crate::registry::MANIFEST_REGISTRY_KEY.to_string(),
                    cluster.sha256.clone(),
                );
            }
            return Err(BrokerError::RegistryDiffers {
                ours: registry.sha256_hex(),
                recorded: cluster.sha256,
                entry: cluster.entry,
                changes: crate::registry::manifest_changes(&recorded_files, registry.manifest()),
            });
        }
        if let Some(pki_dir) = config.tls.ca.parent() {
            for (file, what, vkey) in &vkeys {
                publish_verifier_key(&pki_dir.join(file), what, vkey)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = checked {
        store.close().await;
        return Err(e);
    }
    store
        .append(vec![
            Record::now(Event::BrokerStarted {
                version: env!("CARGO_PKG_VERSION").to_string(),
                keys: keys.ids(),
            }),
            Record::now(Event::RegistryLoaded {
                registry_sha256: registry.sha256_hex(),
                files: registry.manifest().clone(),
            }),
        ])
        .await?;
    let federation = Arc::new(Federation::new(
        registry,
        adapters,
        std::mem::take(&mut tls.revoked_serials),
    ));
    let state = Arc::new(State {
        federation: federation.clone(),
        store: store.clone(),
        pseudonyms,
        sealer,
        signer,
        provider_timeout: DEFAULT_PROVIDER_TIMEOUT,
        recent: RecentAnswers::new(
            idempotency::DEFAULT_WINDOW,
            idempotency::DEFAULT_CAPACITY,
            idempotency::DEFAULT_PER_ACTOR,
        ),
        previews: crate::preview::Previews::new(
            config.preview_ttl,
            crate::preview::DEFAULT_CAPACITY,
            crate::preview::DEFAULT_PER_PARTICIPANT,
        ),
        limits,
        grants: crate::act_locks::ActLocks::default(),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    // The connection caps fit under the descriptor limit, with a reserve: a flood on one
    // listener can take neither the other's descriptors nor the journal's.
    let nofile = crate::descriptors::raise_nofile_limit();
    let accept = config.accept.fit_to_descriptors(nofile);
    tracing::info!(
        file_descriptors = nofile,
        reserved_descriptors = listener::RESERVED_DESCRIPTORS.min(nofile as usize / 4),
        max_connections = accept.max_connections,
        max_connections_per_participant = accept.max_connections_per_participant,
        max_pending_handshakes = accept.max_pending_handshakes,
        max_pending_handshakes_per_source = accept.max_pending_handshakes_per_source,
        handshake_timeout = ?accept.handshake_timeout,
        ops_max_connections = accept.ops_max_connections,
        ops_header_timeout = ?accept.ops_header_timeout,
        web_max_connections = accept.web_max_connections,
        web_header_timeout = ?accept.web_header_timeout,
        web_page_timeout = ?accept.web_page_timeout,
        http2_max_concurrent_streams = HTTP2_MAX_CONCURRENT_STREAMS,
        "connection limits in force"
    );
    // The other brokers' counts as they stand before this one serves: what they admit from
    // then on is charged here.
    let mut sharing_failed = false;
    share_limits(&state, &mut sharing_failed).await;
    let readiness = Readiness::default();
    let ops_task = config.ops_listener.map(|l| {
        let addr = l.local_addr().ok();
        tracing::info!(?addr, "operational listener (health probe) ready");
        tokio::spawn(ops::serve(
            l,
            readiness.clone(),
            store.clone(),
            accept,
            stopped(),
        ))
    });
    let web_task = config.web.map(|web| {
        let addr = web.listener.local_addr().ok();
        tracing::info!(?addr, "web pages ready");
        tokio::spawn(crate::web::serve(web, state.clone(), accept, stopped()))
    });

    // Rate-limit denials are recorded once per consumer per window, with their count.
    let flusher = {
        let state = state.clone();
        let stopped = stopped();
        tokio::spawn(async move {
            tokio::pin!(stopped);
            loop {
                let done = tokio::select! {
                    () = tokio::time::sleep(ratelimit::WINDOW) => false,
                    () = &mut stopped => true,
                };
                record_denials(&state).await;
                if done {
                    return;
                }
            }
        })
    };
    // On a cluster the brokers enforce the limits together: each shares its counts, until the
    // store says no other broker can share it (the embedded backend). Whether it still shares
    // when the broker stops (and with what failure state): see the last share below.
    let sharer = {
        let state = state.clone();
        let stopped = stopped();
        tokio::spawn(async move {
            tokio::pin!(stopped);
            let mut failing = sharing_failed;
            while share_limits(&state, &mut failing).await {
                tokio::select! {
                    () = tokio::time::sleep(ratelimit::SHARE_EVERY) => {}
                    () = &mut stopped => return Some(failing),
                }
            }
            None
        })
    };
    let (routes, health) =
        crate::grpc::routes(state.clone(), config.max_request_bytes, health).await?;
    let tls_in_force = Arc::new(listener::TlsInForce::new(&tls));
    // Reloads until shutdown; joined before the store closes (it holds the state).
    let reloader = config.reload.map(|mut requests| {
        let state = state.clone();
        let health = health.clone();
        let registry_path = config.registry.clone();
        let tls_files = config.tls.clone();
        let tls_in_force = tls_in_force.clone();
        let stopped = stopped();
        tokio::spawn(async move {
            tokio::pin!(stopped);
            loop {
                let answer = tokio::select! {
                    request = requests.recv() => match request {
                        Some(answer) => answer,
                        None => return,
                    },
                    () = &mut stopped => return,
                };
                let outcome =
                    reload(&state, &registry_path, (&tls_files, &tls_in_force), &health).await;
                if let Some(answer) = answer {
                    let _ = answer.send(outcome);
                }
            }
        })
    });
    let (conn_tx, conn_rx) = mpsc::channel(256);
    let local: Option<SocketAddr> = listener.local_addr().ok();
    tokio::spawn(listener::accept_loop(
        listener,
        tls_in_force.config.clone(),
        accept,
        conn_tx,
    ));
    tracing::info!(?local, "broker serving participants over mTLS");
    readiness.set(true);

    let drain = {
        let health = health.clone();
        let readiness = readiness.clone();
        let stopped = stopped();
        async move {
            stopped.await;
            readiness.set(false);
            crate::grpc::set_not_serving(&health).await;
            tracing::info!("shutting down: finishing calls in flight");
        }
    };
    let serve = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // Bounds of what one connection can make the broker hold: streams (each with its
        // answer, if the client never reads it), inbound data, headers, resets it provokes.
        .max_concurrent_streams(Some(HTTP2_MAX_CONCURRENT_STREAMS))
        .initial_stream_window_size(Some(HTTP2_STREAM_WINDOW))
        .initial_connection_window_size(Some(HTTP2_CONNECTION_WINDOW))
        .http2_max_header_list_size(Some(HTTP2_MAX_HEADER_LIST_SIZE))
        .http2_max_pending_accept_reset_streams(Some(20))
        .http2_max_local_error_reset_streams(Some(1024))
        .layer(crate::grpc::observe::ObserveLayer)
        .layer(RequestLimitLayer {
            limit: config.max_request_bytes,
        })
        .add_routes(routes)
        .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), drain);
    let drain_deadline = {
        let stopped = stopped();
        async move {
            stopped.await;
            tokio::time::sleep(config.drain_timeout).await;
        }
    };
    let served = tokio::select! {
        served = serve => served,
        () = drain_deadline => {
            tracing::warn!(
                drain_timeout = ?config.drain_timeout,
                "calls still in flight at the drain deadline: closing their connections"
            );
            Ok(())
        }
    };
    if let Some(task) = ops_task
        && let Ok(Err(e)) = task.await
    {
        return Err(BrokerError::Ops(e));
    }
    if let Some(task) = web_task
        && let Ok(Err(e)) = task.await
    {
        return Err(BrokerError::Web(e));
    }
    let _ = flusher.await;
    // The calls admitted since the last share, the drain's included, are shared once more: the
    // other brokers charge them to the participant, as if this broker had kept serving.
    if let Ok(Some(mut failing)) = sharer.await {
        share_limits(&state, &mut failing).await;
    }
    if let Some(task) = reloader {
        let _ = task.await;
    }
    // Calls refused during the drain are recorded too.
    record_denials(&state).await;
    drop(state);
    if let Err(e) = store
        .append(vec![Record::now(Event::BrokerStopped {})])
        .await
    {
        tracing::warn!(error = %e, "cannot record the broker's stop");
    }
    store.close().await;
    served?;
    tracing::info!("broker stopped");
    Ok(())
}

/// Loads the broker's keys ([`Keys::load`]): created only over an empty journal; a key missing
/// over a journal with records refuses the start, naming the key id the journal recorded for it.
fn load_keys(data_dir: &Path) -> Result<Keys, BrokerError> {
    let journal = data_dir.join("journal");
    let empty = !crate::journal::holds_records(&journal).map_err(StoreError::from)?;
    Keys::load(data_dir, empty).map_err(|e| match e {
        KeyError::Missing {
            path,
            what,
            recorded: None,
        } => {
            let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
            let recorded = crate::store::recorded_keys_in_journal(data_dir)
                .and_then(|r| r.ids.get(file.as_deref().unwrap_or_default()).cloned());
            BrokerError::Key(KeyError::Missing {
                path,
                what,
                recorded,
            })
        }
        other => BrokerError::Key(other),
    })
}

/// Reads the registry and the PKI again and publishes them; a registry or PKI that does not
/// load, or a CRL older than the one in force or not signed by the CA, is rejected whole and
/// the ones in force keep serving. The reload is recorded. Revoked serials reach connections
/// already open at their next call (checked per call); the renewed CRL and server certificate,
/// the handshakes that follow.
async fn reload(
    state: &State,
    registry_path: &std::path::Path,
    (tls_files, tls_in_force): (&TlsFiles, &listener::TlsInForce),
    health: &tonic_health::server::HealthReporter,
) -> Result<String, String> {
    let in_force = state.federation.registry();
    let loaded = (|| -> Result<_, BrokerError> {
        let registry = registry::load(registry_path)?;
        if registry.trust_domain() != in_force.trust_domain() {
            return Err(BrokerError::TrustDomainChanged {
                running: in_force.trust_domain().to_string(),
                found: registry.trust_domain().to_string(),
            });
        }
        let tls = TlsMaterial::load(tls_files)?;
        tls_in_force.check(&tls, tls_files)?;
        let adapters = build_adapters(
            &registry,
            Some(crate::grpc::provider_readiness(health.clone())),
            &state.limits,
        )?;
        Ok((registry, tls, adapters))
    })();
    let (registry, mut tls, adapters) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::error!(error = %e, "reload rejected; the registry and CRL in force keep serving");
            return Err(e.to_string());
        }
    };
    let sha = registry.sha256_hex();
    let types: Vec<String> = registry.attestation_types().map(|t| t.id.clone()).collect();
    let removed: Vec<String> = in_force
        .attestation_types()
        .filter(|t| !types.contains(&t.id))
        .map(|t| t.id.clone())
        .collect();
    // On the record before it is in force.
    if let Err(e) = state
        .store
        .append(vec![Record::now(Event::RegistryLoaded {
            registry_sha256: sha.clone(),
            files: registry.manifest().clone(),
        })])
        .await
    {
        tracing::error!(error = %e, "cannot record the reload; the registry in force keeps serving");
        return Err(format!("the reload cannot be recorded: {e}"));
    }
    let revoked = std::mem::take(&mut tls.revoked_serials);
    let revoked_count = revoked.len();
    state.federation.replace(registry, adapters, revoked);
    tls_in_force.replace(&tls);
    state.limits.update(&state.federation.registry());
    // Answers kept for retries were given under the registry that was in force: a retry is
    // decided again under the new one.
    state.recent.clear();
    for ty in types {
        health
            .set_service_status(
                crate::grpc::provider_service_name(&ty),
                tonic_health::ServingStatus::Serving,
            )
            .await;
    }
    // A type no longer declared is no longer served: unknown to health checks, as one never
    // declared (it was still SERVING, and a balancer kept sending its fetches here).
    for ty in removed {
        // A clone shares the statuses (the reporter's `&mut self` is for its own sake).
        health
            .clone()
            .clear_service_status(&crate::grpc::provider_service_name(&ty))
            .await;
    }

    tracing::info!(registry_sha256 = %sha, revoked_certificates = revoked_count, "registry and CRL reloaded");
    Ok(sha)
}

/// Shares the limits' counts with the other brokers once, and records the harvesting alarms
/// that their counts raise here; logs when the store fails (once until it answers again, with
/// `failing`). Whether to go on: `false` when the store has no other broker.
async fn share_limits(state: &State, failing: &mut bool) -> bool {
    let shared = state
        .limits
        .share(&*state.store, || state.federation.gates());
    let failure = match tokio::time::timeout(SHARE_TIMEOUT, shared).await {
        Ok(Ok(None)) => return false,
        Ok(Ok(Some(alarms))) => {
            crate::metrics::limits_shared("shared");
            if std::mem::take(failing) {
                tracing::info!("the limits are shared with the other brokers again");
            }
            for alarm in alarms {
                crate::exchange::raise_harvesting_alarm(state, alarm).await;
            }
            return true;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {SHARE_TIMEOUT:?}"),
    };
    crate::metrics::limits_shared("failed");
    if !std::mem::replace(failing, true) {
        tracing::warn!(error = %failure, "the limits cannot be shared with the other brokers: each counts its own until they can");
    }
    true
}

/// Records the rate-limit denials counted since the last call; kept for the next call when
/// their record cannot be appended (every denial is recorded, DESIGN).
async fn record_denials(state: &State) {
    let taken = state.limits.take_denied();
    let records: Vec<Record> = taken
        .iter()
        .map(|d| {
            Record::now(Event::RateLimited {
                participant: d.participant.clone(),
                count: d.count,
                window_seconds: ratelimit::WINDOW.as_secs(),
            })
        })
        .collect();
    if !records.is_empty()
        && let Err(e) = state.store.append(records).await
    {
        tracing::error!(error = %e, "cannot record rate-limit denials: kept for the next window");
        state.limits.restore_denied(taken);
    }
}
