//! The mTLS listener: every participant connection is mutually authenticated against the
//! federation CA and its CRL before a single byte of gRPC is read.
//!
//! tonic's own TLS has no CRL hook, so the broker builds the rustls configuration itself,
//! runs each handshake in its own task under a timeout (a silent client never stalls the
//! accept loop), and hands the verified streams to tonic with the peer's certificate already
//! parsed, once per connection.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use unefois_certs::PeerCertificate;

use crate::gathered_writes::GatheredWrites;

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
    /// When the CRL must have been renewed.
    pub crl_next_update: SystemTime,
}

impl TlsMaterial {
    /// Loads and checks the PKI files; an expired CRL is an error, never "no revocation".
    pub fn load(files: &TlsFiles) -> Result<TlsMaterial, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for ca in unefois_certs::load_certificates(&files.ca)? {
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
        let mut crl_next_update = None::<SystemTime>;
        for der in &crls {
            let info = unefois_certs::crl_info(der)?;
            // A CRL without a next update never expires: refuse it like an expired one.
            let next = info.next_update.unwrap_or(SystemTime::UNIX_EPOCH);
            if next <= SystemTime::now() {
                return Err(TlsSetupError::CrlExpired {
                    path: files.crl.clone(),
                    next_update: next.into(),
                });
            }
            crl_next_update = Some(crl_next_update.map_or(next, |n| n.min(next)));
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
            crl_next_update: crl_next_update.unwrap_or(SystemTime::UNIX_EPOCH),
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
}

/// A TLS stream whose peer certificate has been verified and parsed.
pub struct PeerStream {
    inner: TlsStream<GatheredWrites>,
    info: PeerInfo,
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
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
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

/// Limits of the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct AcceptLimits {
    /// A client that has not finished its handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; further connections wait in the kernel's backlog.
    pub max_pending_handshakes: usize,
}

impl Default for AcceptLimits {
    fn default() -> Self {
        AcceptLimits {
            handshake_timeout: Duration::from_secs(10),
            max_pending_handshakes: 1024,
        }
    }
}

/// Accepts TCP connections, runs each handshake in its own task, and sends the verified streams
/// to `out`. Ends when `out` is closed (the server stopped) or the listener fails for good.
pub async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: AcceptLimits,
    out: mpsc::Sender<Result<PeerStream, io::Error>>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_pending_handshakes.max(1)));
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            () = out.closed() => return,
        };
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Per-connection errors (reset before accept, fd exhaustion) must not end
                    // the loop; back off briefly so that fd exhaustion does not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = out.closed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let out = out.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(
                limits.handshake_timeout,
                acceptor.accept(GatheredWrites::passing_through(tcp)),
            )
            .await
            {
                Ok(Ok(mut tls)) => {
                    tls.get_mut().0.start_gathering();
                    let certificate = peer_of(&tls);
                    let info = PeerInfo {
                        remote: Some(remote),
                        certificate,
                    };
                    let _ = out.send(Ok(PeerStream { inner: tls, info })).await;
                }
                Ok(Err(e)) => tracing::info!(%remote, error = %e, "TLS handshake refused"),
                Err(_) => tracing::info!(%remote, "TLS handshake timed out"),
            }
        });
    }
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
