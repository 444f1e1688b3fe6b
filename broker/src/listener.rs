//! The mTLS listener: every participant connection is mutually authenticated against the
//! federation CA and its CRL before a single byte of gRPC is read.
//!
//! tonic's own TLS has no CRL hook, so the broker builds the rustls configuration itself,
//! runs each handshake in its own task under a timeout, and hands the verified streams to tonic
//! with the peer's certificate already parsed, once per connection.
//!
//! No unauthenticated client can delay an authenticated one: the accept loop never waits for
//! anything but the next connection; pending handshakes are bounded by shedding, in all and per
//! source address ([`crate::shed`]); established connections are capped in all (closed before
//! TLS) and per certificate identity (calls refused, then closed). See [`AcceptLimits`].

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use unefois_certs::PeerCertificate;

use crate::gathered_writes::GatheredWrites;
use crate::shed::{LogThrottle, Shed, ShedTable, Source, Ticket};

/// Why the TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PKI file is missing or unreadable.
    #[error(transparent)]
    Certificate(#[from] unefois_certs::CertError),
    /// The CRL is past its next update: revocation status is unknown, so nobody is admitted.
    #[error(
        "{}: the CRL expired at {next_update}; renew it (unefois certs renew-crl) before serving",
        path.display()
    )]
    CrlExpired {
        /// The CRL file.
        path: PathBuf,
        /// When it stopped being valid.
        next_update: time::OffsetDateTime,
    },
    /// rustls refused the material.
    #[error("TLS configuration: {0}")]
    Rustls(String),
    /// A reload's CRL is older than the one in force (an earlier copy put back): it would give
    /// the certificates revoked since their access back.
    #[error(
        "{}: this CRL (number {number:?}) is older than the one in force (number {in_force:?}); \
         renew it (unefois certs renew-crl)",
        path.display()
    )]
    CrlOlder {
        /// The CRL file.
        path: PathBuf,
        /// Its CRL number.
        number: Option<u64>,
        /// The number of the CRL in force.
        in_force: Option<u64>,
    },
}

/// The TLS configuration the handshakes use, which a reload replaces (a renewed CRL, a renewed
/// server certificate), and the CRL in force.
pub struct TlsInForce {
    /// What each handshake loads.
    pub config: Arc<arc_swap::ArcSwap<rustls::ServerConfig>>,
    crl_issued: Mutex<(Option<u64>, SystemTime)>,
}

impl TlsInForce {
    /// `material` in force.
    pub fn new(material: &TlsMaterial) -> TlsInForce {
        TlsInForce {
            config: Arc::new(arc_swap::ArcSwap::new(material.config.clone())),
            crl_issued: Mutex::new(material.crl_issued),
        }
    }

    /// Refuses `material` when its CRL is older than the one in force (`files`: where it was
    /// read).
    pub fn check(&self, material: &TlsMaterial, files: &TlsFiles) -> Result<(), TlsSetupError> {
        let in_force = *self.crl_issued.lock().unwrap_or_else(|e| e.into_inner());
        if material.crl_issued < in_force {
            return Err(TlsSetupError::CrlOlder {
                path: files.crl.clone(),
                number: material.crl_issued.0,
                in_force: in_force.0,
            });
        }
        Ok(())
    }

    /// Puts `material` in force for the handshakes that follow.
    pub fn replace(&self, material: &TlsMaterial) {
        self.config.store(material.config.clone());
        *self.crl_issued.lock().unwrap_or_else(|e| e.into_inner()) = material.crl_issued;
    }
}

/// The files of the federation PKI the broker serves with.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The federation CA certificate(s), PEM.
    pub ca: PathBuf,
    /// The broker's server certificate chain, PEM.
    pub cert: PathBuf,
    /// The broker's private key, PEM.
    pub key: PathBuf,
    /// The CRL, PEM.
    pub crl: PathBuf,
}

impl TlsFiles {
    /// The conventional file names inside a PKI directory.
    pub fn in_dir(dir: &Path) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join("broker.crt"),
            key: dir.join("broker.key"),
            crl: dir.join("crl.pem"),
        }
    }
}

/// A loaded server configuration and the CRL it enforces.
pub struct TlsMaterial {
    /// rustls configuration: client certificate required, TLS 1.3 only, ALPN h2.
    pub config: Arc<rustls::ServerConfig>,
    /// Serials the CRL revokes (also checked per call, so a reload reaches open connections).
    pub revoked_serials: Vec<Vec<u8>>,
    /// The CRL's number and when it was issued: a reload refuses an older CRL (one taken back
    /// from a backup would give revoked certificates their access back).
    pub crl_issued: (Option<u64>, SystemTime),
}

impl TlsMaterial {
    /// Loads and checks the PKI files; an expired CRL is an error, never "no revocation".
    pub fn load(files: &TlsFiles) -> Result<TlsMaterial, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        let cas = unefois_certs::load_certificates(&files.ca)?;
        let issuers: Vec<Vec<u8>> = cas.iter().map(|c| c.to_vec()).collect();
        for ca in cas {
            roots
                .add(ca)
                .map_err(|e| TlsSetupError::Rustls(format!("{}: {e}", files.ca.display())))?;
        }
        let crls = unefois_certs::load_crls(&files.crl)?;
        if crls.is_empty() {
            return Err(TlsSetupError::Rustls(format!(
                "{}: no CRL in the file",
                files.crl.display()
            )));
        }
        let mut revoked_serials = Vec::new();
        let mut crl_issued = (None, SystemTime::UNIX_EPOCH);
        for der in &crls {
            unefois_certs::crl_signed_by(der, &issuers, &files.crl.display().to_string())?;
            let info = unefois_certs::crl_info(der)?;
            crl_issued = crl_issued.max((info.crl_number, info.this_update));
            // A CRL without a next update never expires: refuse it like an expired one.
            let next = info.next_update.unwrap_or(SystemTime::UNIX_EPOCH);
            if next <= SystemTime::now() {
                return Err(TlsSetupError::CrlExpired {
                    path: files.crl.clone(),
                    next_update: next.into(),
                });
            }
            revoked_serials.extend(info.revoked_serials);
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .with_crls(crls)
                .enforce_revocation_expiration()
                .build()
                .map_err(|e| TlsSetupError::Rustls(format!("client verifier: {e}")))?;
        let chain = unefois_certs::load_certificates(&files.cert)?;
        let key = unefois_certs::load_private_key(&files.key)?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| TlsSetupError::Rustls(format!("{}: {e}", files.cert.display())))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsMaterial {
            config: Arc::new(config),
            revoked_serials,
            crl_issued,
        })
    }
}

/// What the connection proved about its peer, attached to every request it carries.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Remote address, for logs.
    pub remote: Option<SocketAddr>,
    /// The verified client certificate's identity, or why it has none usable.
    pub certificate: Result<Arc<PeerCertificate>, String>,
    /// Set when the connection went over its identity's connection cap: every call is refused,
    /// and the connection closes shortly.
    pub over_cap: Option<ConnectionCap>,
}

/// Why a connection's calls are refused: its identity already held this many connections.
#[derive(Clone, Debug)]
pub struct ConnectionCap {
    /// The certificate's identity (SPIFFE ID).
    pub identity: Arc<str>,
    /// The per-participant cap in force.
    pub limit: usize,
}

/// A TLS stream whose peer certificate has been verified and parsed.
pub struct PeerStream {
    inner: TlsStream<GatheredWrites>,
    info: PeerInfo,
    /// Given back when the connection closes (the stream is dropped).
    _slot: Slot,
    /// For a connection over its cap: when reads end, so that the server closes it.
    closing: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(closing) = &mut this.closing
            && closing.as_mut().poll(cx).is_ready()
        {
            // End of stream: the server closes the connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Limits of the two listeners, sized so that a flood of one kind of connection can neither
/// delay a participant nor take the descriptors another listener needs
/// ([`AcceptLimits::fit_to_descriptors`]).
#[derive(Clone, Copy, Debug)]
pub struct AcceptLimits {
    /// A client that has not finished its TLS handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// TLS handshakes in progress at once; over it, the oldest is shed (closed) to make room:
    /// the accept loop never waits.
    pub max_pending_handshakes: usize,
    /// TLS handshakes in progress at once from one source (an IPv4 address, an IPv6 /64); over
    /// it, that source's oldest is shed.
    pub max_pending_handshakes_per_source: usize,
    /// Established participant connections (handshake done) at once; over it, a new TCP
    /// connection is closed at once, before TLS.
    pub max_connections: usize,
    /// Established connections of one certificate identity (a participant, or one agent of a
    /// mediation structure: each agent has its own count, as each works from its own
    /// workstation); over it, the connection's calls are refused (RESOURCE_EXHAUSTED,
    /// TOO_MANY_CONNECTIONS) and it is closed [`REFUSED_CONNECTION_GRACE`] later.
    pub max_connections_per_participant: usize,
    /// Connections of the operational listener at once; over it, the oldest that is not being
    /// answered is shed.
    pub ops_max_connections: usize,
    /// An operational-listener client that has not sent its request headers by then is dropped
    /// (slowloris); an idle keep-alive connection too.
    pub ops_header_timeout: Duration,
    /// Connections of the web pages' listener at once; over it, the oldest that is not being
    /// answered is shed.
    pub web_max_connections: usize,
    /// The same, from one source address (an IPv4 address, an IPv6 /64).
    pub web_max_connections_per_source: usize,
    /// A web client that has not sent its request headers by then is dropped.
    pub web_header_timeout: Duration,
    /// How long a page may take before it is answered with an error page; a signed mandate's
    /// upload and the console's exports get more (`web::page_timeout`).
    pub web_page_timeout: Duration,
}

impl Default for AcceptLimits {
    fn default() -> Self {
        AcceptLimits {
            handshake_timeout: Duration::from_secs(3),
            max_pending_handshakes: 1024,
            max_pending_handshakes_per_source: 64,
            max_connections: 8192,
            max_connections_per_participant: 128,
            ops_max_connections: 128,
            ops_header_timeout: Duration::from_secs(5),
            web_max_connections: 1024,
            web_max_connections_per_source: 64,
            web_header_timeout: Duration::from_secs(10),
            web_page_timeout: Duration::from_secs(20),
        }
    }
}

/// Descriptors kept for everything but the listeners' connections: the journal's segments,
/// sled's files, the Merkle tree and positions files, provider connections (up to 8 per `grpc`
/// provider, the `http` adapters' pools), registry and PKI files read on reload, the runtime's
/// own. A quarter of the limit when that is less.
pub const RESERVED_DESCRIPTORS: usize = 512;

/// How long a connection over the per-participant cap stays open after its handshake, so that
/// its first calls hear why they are refused.
pub const REFUSED_CONNECTION_GRACE: Duration = Duration::from_secs(2);

impl AcceptLimits {
    /// These limits, lowered where needed so that the two listeners' connections and
    /// [`RESERVED_DESCRIPTORS`] fit under `nofile` descriptors together: each listener has its
    /// own share, so a flood on one cannot take the other's descriptors, nor the journal's.
    /// The operational listener gets at most a sixteenth of what is left after the reserve, the
    /// web pages' an eighth;
    /// pending handshakes at most a quarter of the mTLS share.
    pub fn fit_to_descriptors(self, nofile: u64) -> AcceptLimits {
        let nofile = usize::try_from(nofile).unwrap_or(usize::MAX);
        let reserve = RESERVED_DESCRIPTORS.min(nofile / 4);
        // Three more: the listening sockets themselves (mTLS, ops, web).
        let available = nofile.saturating_sub(reserve + 3);
        let ops = self.ops_max_connections.min(available / 16).max(1);
        let web = self.web_max_connections.min(available / 8).max(1);
        // One more per listener: a connection accepted before it is shed.
        let mtls = available.saturating_sub(ops + web + 3);
        let pending = self.max_pending_handshakes.min(mtls / 4).max(1);
        let connections = self
            .max_connections
            .min(mtls.saturating_sub(pending))
            .max(1);
        AcceptLimits {
            max_pending_handshakes: pending,
            max_pending_handshakes_per_source: self.max_pending_handshakes_per_source.min(pending),
            max_connections: connections,
            max_connections_per_participant: self.max_connections_per_participant.min(connections),
            ops_max_connections: ops,
            web_max_connections: web,
            web_max_connections_per_source: self.web_max_connections_per_source.min(web),
            ..self
        }
    }
}

/// Log lines about refused or shed connections: a few per window, then a count.
static REFUSALS_LOGGED: LogThrottle = LogThrottle::new(Duration::from_secs(10), 5);

/// Counts a connection refused or shed by `listener` (metric) and logs it, throttled.
pub(crate) fn refused(listener: &'static str, reason: &'static str, remote: Option<SocketAddr>) {
    crate::metrics::connection_refused(listener, reason);
    if let Some(suppressed) = REFUSALS_LOGGED.allow() {
        tracing::warn!(
            listener,
            reason,
            ?remote,
            not_logged_before = suppressed,
            "connection refused or shed (unefois_connections_refused_total counts them all)"
        );
    }
}

/// After a failed `accept`: logs it (throttled) and backs off briefly. Per-connection errors
/// (reset before accept, descriptors exhausted) must not end an accept loop, nor make it spin.
pub(crate) async fn accept_failed(listener: &'static str, e: &io::Error) {
    if let Some(suppressed) = REFUSALS_LOGGED.allow() {
        tracing::warn!(listener, error = %e, not_logged_before = suppressed, "accept failed");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// The established connections of the mTLS listener, in all and per certificate identity.
struct Established {
    max_total: usize,
    max_per_identity: usize,
    total: AtomicUsize,
    per_identity: Mutex<HashMap<Arc<str>, usize>>,
}

/// An established connection's place in [`Established`], given back when it closes.
struct Slot {
    table: Arc<Established>,
    /// `None` for a connection over its identity's cap: counted in the total only.
    identity: Option<Arc<str>>,
}

impl Established {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, usize>> {
        self.per_identity.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_full(&self) -> bool {
        self.total.load(Ordering::Relaxed) >= self.max_total
    }

    /// A slot for a connection of `identity`: `None` over the total cap; with `over_cap` set
    /// when the identity is at its own cap (the connection is then refused, but its
    /// descriptor counts until it closes).
    fn admit(self: &Arc<Self>, identity: Arc<str>) -> Option<(Slot, bool)> {
        let mut per = self.lock();
        let total = self.total.load(Ordering::Relaxed);
        if total >= self.max_total {
            return None;
        }
        self.total.store(total + 1, Ordering::Relaxed);
        crate::metrics::connections_open("mtls", "established", total + 1);
        let count = per.entry(identity.clone()).or_insert(0);
        if *count >= self.max_per_identity {
            return Some((
                Slot {
                    table: self.clone(),
                    identity: None,
                },
                true,
            ));
        }
        *count += 1;
        Some((
            Slot {
                table: self.clone(),
                identity: Some(identity),
            },
            false,
        ))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per = self.table.lock();
        let total = self.table.total.load(Ordering::Relaxed).saturating_sub(1);
        self.table.total.store(total, Ordering::Relaxed);
        crate::metrics::connections_open("mtls", "established", total);
        if let Some(identity) = &self.identity
            && let Some(count) = per.get_mut(identity)
        {
            *count -= 1;
            if *count == 0 {
                per.remove(identity);
            }
        }
    }
}

/// Accepts TCP connections, runs each handshake in its own task, and sends the verified streams
/// to `out`. Ends when `out` is closed (the server stopped) or the listener fails for good.
///
/// It never waits for anything but the next connection: over [`AcceptLimits::max_connections`]
/// a connection is closed at once; otherwise its handshake starts at once, and pending
/// handshakes over their bounds are shed (the source's oldest, then the oldest of all).
pub async fn accept_loop(
    listener: TcpListener,
    acceptor: Arc<arc_swap::ArcSwap<rustls::ServerConfig>>,
    limits: AcceptLimits,
    out: mpsc::Sender<Result<PeerStream, io::Error>>,
) {
    let pending = ShedTable::new(
        limits.max_pending_handshakes,
        limits.max_pending_handshakes_per_source,
        |n| crate::metrics::connections_open("mtls", "handshake", n),
    );
    let established = Arc::new(Established {
        max_total: limits.max_connections.max(1),
        max_per_identity: limits.max_connections_per_participant.max(1),
        total: AtomicUsize::new(0),
        per_identity: Mutex::new(HashMap::new()),
    });
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_failed("mtls", &e).await;
                    continue;
                }
            },
            () = out.closed() => return,
        };
        if established.is_full() {
            drop(tcp);
            refused("mtls", "connections_total", Some(remote));
            continue;
        }
        let admitted = pending.admit(Source::of(remote.ip()), true);
        for shed in admitted.shed {
            let reason = match shed {
                Shed::SameSource => "handshakes_per_source",
                Shed::Oldest => "handshakes_total",
            };
            refused("mtls", reason, None);
        }
        let Some(ticket) = admitted.ticket else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(handshake(
            tcp,
            remote,
            ticket,
            // The configuration in force now: a reload renews the CRL and the broker's
            // certificate for the handshakes that follow.
            TlsAcceptor::from(acceptor.load_full()),
            established.clone(),
            limits.handshake_timeout,
            out.clone(),
        ));
    }
}

/// One connection's handshake, until it is verified and handed to the server, refused, timed
/// out or shed.
async fn handshake(
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    mut ticket: Ticket,
    acceptor: TlsAcceptor,
    established: Arc<Established>,
    timeout: Duration,
    out: mpsc::Sender<Result<PeerStream, io::Error>>,
) {
    let accept = tokio::time::timeout(
        timeout,
        acceptor.accept(GatheredWrites::passing_through(tcp)),
    );
    let outcome = tokio::select! {
        outcome = accept => outcome,
        // Counted where it was shed; dropping the handshake closes the socket.
        () = ticket.shed() => return,
    };
    drop(ticket);
    let mut tls = match outcome {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            crate::metrics::connection_refused("mtls", "handshake_failed");
            if let Some(suppressed) = REFUSALS_LOGGED.allow() {
                tracing::info!(%remote, error = %e, not_logged_before = suppressed, "TLS handshake refused");
            }
            return;
        }
        Err(_) => {
            crate::metrics::connection_refused("mtls", "handshake_timeout");
            if let Some(suppressed) = REFUSALS_LOGGED.allow() {
                tracing::info!(%remote, not_logged_before = suppressed, "TLS handshake timed out");
            }
            return;
        }
    };
    tls.get_mut().0.start_gathering();
    let certificate = peer_of(&tls);
    let identity: Arc<str> = match &certificate {
        Ok(cert) => cert.spiffe_id.to_string().into(),
        // Counted together: the calls of such a connection are refused anyway.
        Err(_) => "(no usable certificate)".into(),
    };
    let Some((slot, over_cap)) = established.admit(identity.clone()) else {
        refused("mtls", "connections_total", Some(remote));
        return;
    };
    let over_cap = over_cap.then(|| {
        crate::metrics::connection_refused("mtls", "connections_per_participant");
        if let Some(suppressed) = REFUSALS_LOGGED.allow() {
            tracing::warn!(
                %remote,
                %identity,
                limit = established.max_per_identity,
                not_logged_before = suppressed,
                "a participant went over its connection cap: this connection's calls are refused"
            );
        }
        ConnectionCap {
            identity,
            limit: established.max_per_identity,
        }
    });
    let closing = over_cap
        .is_some()
        .then(|| Box::pin(tokio::time::sleep(REFUSED_CONNECTION_GRACE)));
    let info = PeerInfo {
        remote: Some(remote),
        certificate,
        over_cap,
    };
    let _ = out
        .send(Ok(PeerStream {
            inner: tls,
            info,
            _slot: slot,
            closing,
        }))
        .await;
}

fn peer_of(tls: &TlsStream<GatheredWrites>) -> Result<Arc<PeerCertificate>, String> {
    let (_, conn) = tls.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| "no client certificate".to_string())?;
    unefois_certs::peer_certificate(leaf.as_ref())
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caps_and_a_reserve_fit_under_the_descriptor_limit() {
        for nofile in [64, 256, 1024, 4096, 20_000, 1 << 20] {
            let fitted = AcceptLimits::default().fit_to_descriptors(nofile);
            let reserve = RESERVED_DESCRIPTORS.min(nofile as usize / 4);
            // Each listener's socket, and one connection each accepted before it is shed.
            let used = reserve
                + 6
                + fitted.ops_max_connections
                + fitted.web_max_connections
                + fitted.max_pending_handshakes
                + fitted.max_connections;
            assert!(used <= nofile as usize, "{nofile}: {fitted:?} uses {used}");
            assert!(fitted.max_connections_per_participant <= fitted.max_connections);
            assert!(fitted.max_pending_handshakes_per_source <= fitted.max_pending_handshakes);
        }
        // A usual hard limit leaves the defaults as they are.
        let roomy = AcceptLimits::default().fit_to_descriptors(20_000);
        assert_eq!(
            roomy.max_connections,
            AcceptLimits::default().max_connections
        );
        assert_eq!(
            roomy.ops_max_connections,
            AcceptLimits::default().ops_max_connections
        );
    }
}
