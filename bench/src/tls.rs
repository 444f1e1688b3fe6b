//! The mTLS of the bench's own servers and clients, set up as the broker does it: the server
//! takes TLS 1.3 only, requires a client certificate chained to the federation CA and checked
//! against its CRL, and offers ALPN `h2`; each handshake runs in its own task under a timeout
//! and the verified streams are handed to tonic. A bench server thus pays the same TLS and
//! HTTP/2 costs as the broker, and the difference is the broker's own work.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Time a client has to finish its handshake (the broker's default).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The name the PKI's server certificate (`broker.crt`) carries and clients check.
pub const SERVER_NAME: &str = "localhost";

/// The rustls server configuration of a PKI directory: its `broker.crt`/`broker.key` as the
/// server's identity, its CA and CRL for the clients (TLS 1.3, client certificate required).
pub fn server_config(pki: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in unefois_certs::load_certificates(&pki.join("ca.crt"))? {
        roots.add(ca).context("the CA certificate")?;
    }
    let crls = unefois_certs::load_crls(&pki.join("crl.pem"))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        .build()
        .context("client certificate verifier")?;
    let chain = unefois_certs::load_certificates(&pki.join("broker.crt"))?;
    let key = unefois_certs::load_private_key(&pki.join("broker.key"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("the server certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Binds `addr` and returns its real address and the stream of mutually authenticated
/// connections, for `Server::serve_with_incoming`. Failed handshakes are dropped.
pub async fn incoming(
    addr: SocketAddr,
    pki: &Path,
) -> anyhow::Result<(
    SocketAddr,
    ReceiverStream<std::io::Result<TlsStream<TcpStream>>>,
)> {
    let acceptor = TlsAcceptor::from(server_config(pki)?);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(Ok(tls)) =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    let _ = tx.send(Ok(tls)).await;
                }
            });
        }
    });
    Ok((local, ReceiverStream::new(rx)))
}

/// A client endpoint to `addr` (`host:port`) presenting `name`'s certificate from the PKI
/// directory (`mairie-lyon`, `unefois-broker`) and trusting its CA, as a participant does.
pub fn client_endpoint(pki: &Path, name: &str, addr: &str) -> anyhow::Result<Endpoint> {
    let read = |file: String| {
        let path = pki.join(&file);
        std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.crt".into())?))
        .identity(Identity::from_pem(
            read(format!("{name}.crt"))?,
            read(format!("{name}.key"))?,
        ))
        .domain_name(SERVER_NAME);
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5)))
}
