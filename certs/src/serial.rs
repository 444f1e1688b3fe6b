//! Certificate serial numbers: generation and the one byte form used everywhere.
//!
//! DER encodes a positive INTEGER with a leading 0x00 byte when its top bit is set, so the same
//! serial can appear with or without it. Every serial this crate returns or compares goes through
//! [`normalize_serial`], so that a serial from a certificate, a CRL or an issuance is the same bytes.

use crate::CertError;

/// The canonical big-endian bytes of a positive serial: leading zero bytes stripped
/// (a zero serial becomes a single 0x00 byte).
pub fn normalize_serial(raw: &[u8]) -> Vec<u8> {
    let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    if start == raw.len() {
        return vec![0];
    }
    raw[start..].to_vec()
}

/// A fresh random 16-byte positive serial whose first byte is in 0x40..=0x7f, so that it is
/// already in normalised form and DER-encodes in exactly 16 bytes (126 random bits).
pub(crate) fn random_serial(what: &str) -> Result<Vec<u8>, CertError> {
    let mut buf = [0u8; 16];
    getrandom::fill(&mut buf).map_err(|source| CertError::Random {
        what: what.to_owned(),
        source,
    })?;
    buf[0] = (buf[0] & 0x3f) | 0x40;
    Ok(buf.to_vec())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn normalize_strips_leading_zeros() {
        assert_eq!(normalize_serial(&[0, 0x80, 1]), vec![0x80, 1]);
        assert_eq!(normalize_serial(&[0x7f, 0]), vec![0x7f, 0]);
        assert_eq!(normalize_serial(&[0, 0]), vec![0]);
        assert_eq!(normalize_serial(&[]), vec![0]);
    }

    #[test]
    fn random_serials_are_positive_and_distinct() {
        let a = random_serial("test").unwrap();
        let b = random_serial("test").unwrap();
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
        assert_eq!(normalize_serial(&a), a);
        assert!(a[0] < 0x80);
    }
}
