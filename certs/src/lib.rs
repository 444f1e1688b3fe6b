//! Federation PKI of Une Fois.
//!
//! Participants (administrations, guichets, mediation structures) and the agents of mediators
//! authenticate to the broker with X.509 client certificates from the federation CA. The only
//! identity a certificate carries is its URI SAN, a SPIFFE ID
//! `spiffe://<trust-domain>/participant/<id>[/agent/<agent>]`.
//!
//! - [`Pki`] creates and maintains a PKI directory (CA, certificates, CRL);
//! - [`peer_certificate`] turns a client certificate verified by rustls into a [`SpiffeId`];
//! - [`crl_info`] tells the broker when its CRL expires and what it revokes;
//! - [`load_certificates`], [`load_private_key`], [`load_crls`] read PEM files for rustls.
#![forbid(unsafe_code)]

mod crl;
mod error;
mod issued;
mod peer;
mod pem;
mod pki;
mod serial;
mod spiffe;

pub use crl::{CrlInfo, crl_info, crl_signed_by};
pub use error::CertError;
pub use peer::{PeerCertificate, peer_certificate};
pub use pem::{load_certificates, load_crls, load_private_key};
pub use pki::{
    BROKER_NAME, CRL_VALIDITY, DEFAULT_BROKER_NAMES, IssuedCertificate, Pki, ServerCertificate,
    Validity,
};
pub use serial::normalize_serial;
pub use spiffe::{SpiffeId, validate_agent_id, validate_participant_id, validate_trust_domain};

#[cfg(test)]
mod tests;
