//! A participant's side of the federation: an mTLS channel to the broker with that
//! participant's certificate, as the `unefois` client commands and the tests use it.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The `ErrorReason` a refusal carries: what a client branches on.
pub use crate::grpc::status::reason_of;

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
    /// No certificate for this name in the PKI directory.
    #[error(
        "no certificate for {name:?} in {}: the participants with one are {}",
        pki_dir.display(),
        if known.is_empty() { "none (is this the federation's PKI directory?)".to_string() } else { known.join(", ") }
    )]
    UnknownName {
        /// The name asked for (`participant` or `structure/agent`).
        name: String,
        /// The PKI directory.
        pki_dir: PathBuf,
        /// The names that have a certificate and a key there, sorted.
        known: Vec<String>,
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

/// The names (`participant`, `structure/agent`) that have a certificate and a key in
/// `pki_dir`, sorted: what `--as` may name.
pub fn known_names(pki_dir: &Path) -> Vec<String> {
    let with_key = |dir: &Path, prefix: &str| -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let stem = name.strip_suffix(".crt")?;
                // The CA has no key here to act with; a key makes a participant.
                dir.join(format!("{stem}.key"))
                    .is_file()
                    .then(|| format!("{prefix}{stem}"))
            })
            .collect()
    };
    let mut names = with_key(pki_dir, "");
    if let Ok(structures) = std::fs::read_dir(pki_dir.join("agents")) {
        for s in structures.filter_map(Result::ok) {
            if let Ok(structure) = s.file_name().into_string() {
                names.extend(with_key(&s.path(), &format!("{structure}/")));
            }
        }
    }
    names.sort();
    names
}

/// Connects to the broker at `addr` (`host:port`) as `name`, with the certificate and key
/// found in `pki_dir`, verifying the broker against the federation CA there.
pub async fn connect(pki_dir: &Path, name: &str, addr: &str) -> Result<Channel, ClientError> {
    let (cert, key) = credential_paths(pki_dir, name);
    if !cert.is_file() || !key.is_file() {
        return Err(ClientError::UnknownName {
            name: name.to_string(),
            pki_dir: pki_dir.to_path_buf(),
            known: known_names(pki_dir),
        });
    }
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
