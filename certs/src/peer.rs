//! From a verified client certificate to the participant (or agent) it authenticates.

use std::time::SystemTime;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::serial::normalize_serial;
use crate::{CertError, SpiffeId};

/// What the broker learns from a client certificate that rustls already verified against the CA.
#[derive(Clone, Debug)]
pub struct PeerCertificate {
    /// The identity the certificate asserts (its only URI SAN).
    pub spiffe_id: SpiffeId,
    /// The serial, normalised (see [`crate::normalize_serial`]), as [`crate::crl_info`] reports it.
    pub serial: Vec<u8>,
    /// End of the certificate's validity.
    pub not_after: SystemTime,
}

/// Reads the identity of a DER client certificate. Exactly one URI SAN is allowed and it must
/// parse as a [`SpiffeId`]; anything else is an error. The signature, chain, validity dates and
/// trust domain are not checked here: the TLS layer (and the caller, for the trust domain) does it.
pub fn peer_certificate(der: &[u8]) -> Result<PeerCertificate, CertError> {
    let what = "peer certificate";
    let cert = parse_certificate(der, what)?;
    let uris = uri_sans(&cert, what)?;
    let uri = match uris.as_slice() {
        [uri] => *uri,
        [] => return Err(CertError::invalid(what, "no URI SAN (SPIFFE ID)")),
        _ => {
            return Err(CertError::invalid(
                what,
                format!("{} URI SANs, exactly one SPIFFE ID expected", uris.len()),
            ));
        }
    };
    let spiffe_id = SpiffeId::parse(uri)?;
    Ok(PeerCertificate {
        spiffe_id,
        serial: normalize_serial(cert.raw_serial()),
        not_after: SystemTime::from(cert.validity().not_after.to_datetime()),
    })
}

/// Parses a whole DER certificate (no trailing bytes); `what` names it in errors.
pub(crate) fn parse_certificate<'a>(
    der: &'a [u8],
    what: &str,
) -> Result<X509Certificate<'a>, CertError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| CertError::invalid(what, e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError::invalid(
            what,
            "trailing bytes after the certificate",
        ));
    }
    Ok(cert)
}

/// The URI SANs of a certificate.
pub(crate) fn uri_sans<'a>(
    cert: &'a X509Certificate<'_>,
    what: &str,
) -> Result<Vec<&'a str>, CertError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertError::invalid(what, format!("subject alternative name: {e}")))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}
