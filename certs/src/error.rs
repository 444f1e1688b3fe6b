//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while building, reading or checking the federation PKI.
///
/// Messages name the file (or the input) involved so that an operator can act on them.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Reading, writing or creating a file or directory failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("cannot read", "cannot write", ...).
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file could not be read or decoded.
    #[error("cannot load PEM from {path}: {source}")]
    Pem {
        /// The PEM file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A PEM file holds none of the expected items.
    #[error("no {what} found in {path}")]
    Empty {
        /// What was expected ("certificate", "CRL").
        what: &'static str,
        /// The PEM file.
        path: PathBuf,
    },
    /// A certificate, key or CRL could not be parsed or does not have the expected content.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The input, usually a file path ("/pki/caf.crt") or a description ("peer certificate").
        what: String,
        /// Why it was rejected.
        reason: String,
    },
    /// rcgen could not generate a key, certificate or CRL.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// The file (or item) being generated.
        what: String,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },
    /// A participant id does not match `^[a-z0-9][a-z0-9-]{1,62}$`.
    #[error("invalid participant id {0:?}: expected [a-z0-9][a-z0-9-]{{1,62}}")]
    InvalidParticipantId(String),
    /// An agent id does not match `^[a-z0-9][a-z0-9._-]{0,62}$` or contains "..", or ends with '.'.
    #[error(
        "invalid agent id {0:?}: expected [a-z0-9][a-z0-9._-]{{0,62}}, without \"..\", not ending with '.'"
    )]
    InvalidAgentId(String),
    /// A trust domain is not a lowercase DNS-like name.
    #[error("invalid trust domain {0:?}: expected a lowercase DNS name such as \"unefois.test\"")]
    InvalidTrustDomain(String),
    /// A URI is not a SPIFFE ID of the federation.
    #[error("invalid SPIFFE ID {uri:?}: {reason}")]
    InvalidSpiffeId {
        /// The rejected URI.
        uri: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A certificate name given to the PKI is neither "broker", a participant id nor "<participant>/<agent>".
    #[error(
        "invalid certificate name {0:?}: expected \"broker\", \"<participant>\" or \"<participant>/<agent>\""
    )]
    InvalidName(String),
    /// A participant id collides with a file the PKI itself uses ("ca", "broker").
    #[error("participant id {0:?} is reserved by the PKI directory")]
    ReservedParticipantId(String),
    /// An existing CA belongs to another trust domain than the one requested.
    #[error("{path} is the CA of trust domain {found:?}, not {expected:?}")]
    TrustDomainMismatch {
        /// The CA certificate file.
        path: PathBuf,
        /// The trust domain in the CA certificate.
        found: String,
        /// The trust domain that was asked for.
        expected: String,
    },
    /// A validity window ends before it starts.
    #[error(
        "invalid validity for {what}: not_after {not_after} is not after not_before {not_before}"
    )]
    InvalidValidity {
        /// The certificate being issued.
        what: String,
        /// Requested start.
        not_before: time::OffsetDateTime,
        /// Requested end.
        not_after: time::OffsetDateTime,
    },
    /// The operating system's random number generator failed.
    #[error("cannot draw a random serial for {what}: {source}")]
    Random {
        /// The certificate being issued.
        what: String,
        /// The underlying error.
        #[source]
        source: getrandom::Error,
    },
}

impl CertError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        CertError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        CertError::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn generate(what: impl Into<String>, source: rcgen::Error) -> Self {
        CertError::Generate {
            what: what.into(),
            source,
        }
    }
}
