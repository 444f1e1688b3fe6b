//! A participant's side of the federation: an mTLS channel to the broker with that
//! participant's certificate, as the `unefois` client commands and the tests use it.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Why a client could not connect.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A certificate or key file is missing.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The endpoint or the TLS setup is invalid, or the broker is unreachable.
    #[error("cannot reach the broker at {addr}: {source}")]
    Transport {
        /// The broker's address.
        addr: String,
        /// What failed.
        source: tonic::transport::Error,
    },
}

/// Where a participant's (or an agent's) certificate lives in a PKI directory: `caf` or
/// `france-services-lyon/a.martin`.
pub fn credential_paths(pki_dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    match name.split_once('/') {
        Some((participant, agent)) => {
            let dir = pki_dir.join("agents").join(participant);
            (
                dir.join(format!("{agent}.crt")),
                dir.join(format!("{agent}.key")),
            )
        }
        None => (
            pki_dir.join(format!("{name}.crt")),
            pki_dir.join(format!("{name}.key")),
        ),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Connects to the broker at `addr` (`host:port`) as `name`, with the certificate and key
/// found in `pki_dir`, verifying the broker against the federation CA there.
pub async fn connect(pki_dir: &Path, name: &str, addr: &str) -> Result<Channel, ClientError> {
    let (cert, key) = credential_paths(pki_dir, name);
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&pki_dir.join("ca.crt"))?))
        .identity(Identity::from_pem(read(&cert)?, read(&key)?))
        .domain_name("localhost");
    let transport = |source| ClientError::Transport {
        addr: addr.to_string(),
        source,
    };
    Endpoint::from_shared(format!("https://{addr}"))
        .map_err(transport)?
        .tls_config(tls)
        .map_err(transport)?
        .connect()
        .await
        .map_err(transport)
}
