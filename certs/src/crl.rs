//! Reading certificate revocation lists.

use std::time::SystemTime;

use time::OffsetDateTime;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::CertError;
use crate::serial::normalize_serial;

/// What the broker needs to know about a CRL: when it stops being valid, which serials it revokes.
#[derive(Clone, Debug)]
pub struct CrlInfo {
    /// When the CRL was issued.
    pub this_update: SystemTime,
    /// When the CRL expires (a CRL past this date must not be trusted to be complete).
    pub next_update: Option<SystemTime>,
    /// Revoked serials, normalised (see [`crate::normalize_serial`]).
    pub revoked_serials: Vec<Vec<u8>>,
    /// The CRL number extension, if present and at most 64 bits.
    pub crl_number: Option<u64>,
}

/// Reads a DER CRL. Its signature is not checked here: rustls checks it against the CA.
pub fn crl_info(der: &[u8]) -> Result<CrlInfo, CertError> {
    let parsed = parse_crl(der, "CRL")?;
    Ok(CrlInfo {
        this_update: SystemTime::from(parsed.this_update),
        next_update: parsed.next_update.map(SystemTime::from),
        revoked_serials: parsed.revoked.into_iter().map(|r| r.serial).collect(),
        crl_number: parsed.crl_number,
    })
}

/// Checks that the DER CRL `der` (named `what` in errors) is signed by one of the CA
/// certificates `issuers` (DER): a reload must not put in force a CRL anyone wrote, which would
/// give revoked certificates back their access on the connections already open.
pub fn crl_signed_by(der: &[u8], issuers: &[Vec<u8>], what: &str) -> Result<(), CertError> {
    let (_, crl) = CertificateRevocationList::from_der(der)
        .map_err(|e| CertError::invalid(what, e.to_string()))?;
    for issuer in issuers {
        let Ok((_, ca)) = x509_parser::certificate::X509Certificate::from_der(issuer) else {
            continue;
        };
        if ca.subject().as_raw() == crl.issuer().as_raw()
            && crl.verify_signature(ca.public_key()).is_ok()
        {
            return Ok(());
        }
    }
    Err(CertError::invalid(
        what,
        "not signed by the federation's CA (ca.pem)",
    ))
}

/// One revoked entry, with what re-signing the CRL needs to keep.
#[derive(Clone, Debug)]
pub(crate) struct RevokedEntry {
    pub serial: Vec<u8>,
    pub revocation_time: OffsetDateTime,
    pub reason: Option<rcgen::RevocationReason>,
}

/// A parsed CRL, in the crate's own terms.
#[derive(Clone, Debug)]
pub(crate) struct ParsedCrl {
    pub this_update: OffsetDateTime,
    pub next_update: Option<OffsetDateTime>,
    pub revoked: Vec<RevokedEntry>,
    pub crl_number: Option<u64>,
}

/// Parses a whole DER CRL; `what` names it (usually its file) in errors.
pub(crate) fn parse_crl(der: &[u8], what: &str) -> Result<ParsedCrl, CertError> {
    let (rest, crl) = CertificateRevocationList::from_der(der)
        .map_err(|e| CertError::invalid(what, e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError::invalid(what, "trailing bytes after the CRL"));
    }
    let crl_number = match crl.crl_number() {
        None => None,
        Some(n) => {
            let bytes = normalize_serial(&n.to_bytes_be());
            if bytes.len() > 8 {
                return Err(CertError::invalid(what, "CRL number larger than 64 bits"));
            }
            Some(bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
        }
    };
    let revoked = crl
        .iter_revoked_certificates()
        .map(|r| RevokedEntry {
            serial: normalize_serial(r.raw_serial()),
            revocation_time: r.revocation_date.to_datetime(),
            reason: r
                .reason_code()
                .and_then(|(_, code)| reason_from_code(code.0)),
        })
        .collect();
    Ok(ParsedCrl {
        this_update: crl.last_update().to_datetime(),
        next_update: crl.next_update().map(|t| t.to_datetime()),
        revoked,
        crl_number,
    })
}

fn reason_from_code(code: u8) -> Option<rcgen::RevocationReason> {
    use rcgen::RevocationReason as R;
    Some(match code {
        0 => R::Unspecified,
        1 => R::KeyCompromise,
        2 => R::CaCompromise,
        3 => R::AffiliationChanged,
        4 => R::Superseded,
        5 => R::CessationOfOperation,
        6 => R::CertificateHold,
        8 => R::RemoveFromCrl,
        9 => R::PrivilegeWithdrawn,
        10 => R::AaCompromise,
        _ => return None,
    })
}
