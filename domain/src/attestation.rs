//! Attestations: the signed statement a consumer receives.
//!
//! The payload is JSON (fields in a fixed order, claims sorted by name): id (UUIDv7), type and
//! version, the pairwise subject pseudonym, the consumer as audience, purpose, legal basis,
//! mandate, the permitted claims only, provider, the provider's proof of origin when it signed
//! its answer (absent otherwise), issue and expiry times, and a 128-bit random nonce so that the
//! payload's hash, which the audit log records, reveals nothing.

use std::collections::BTreeMap;

use base64::Engine;
use rand::Rng;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use unefois_adapters::{ClaimValue, Claims};

use crate::event::RecordedBasis;

/// Version of the attestation payload format.
pub const ATTESTATION_VERSION: u32 = 1;

/// A claim's value as carried in the payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PayloadValue {
    /// Boolean.
    Boolean(bool),
    /// Integer.
    Integer(i64),
    /// Finite number.
    Number(f64),
    /// String, or a date as `YYYY-MM-DD`.
    String(String),
}

impl From<&ClaimValue> for PayloadValue {
    fn from(v: &ClaimValue) -> PayloadValue {
        match v {
            ClaimValue::String(s) => PayloadValue::String(s.clone()),
            ClaimValue::Integer(i) => PayloadValue::Integer(*i),
            ClaimValue::Number(n) => PayloadValue::Number(*n),
            ClaimValue::Boolean(b) => PayloadValue::Boolean(*b),
            ClaimValue::Date(d) => PayloadValue::String(d.to_string()),
        }
    }
}

/// The signed attestation payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attestation {
    /// Payload format version, [`ATTESTATION_VERSION`].
    pub v: u32,
    /// UUIDv7.
    pub id: String,
    /// The attestation type.
    #[serde(rename = "type")]
    pub attestation_type: String,
    /// Its schema version.
    pub type_version: u32,
    /// The subject's pairwise pseudonym for this consumer.
    pub subject: String,
    /// The consumer it is for.
    pub audience: String,
    /// The purpose it was obtained for.
    pub purpose: String,
    /// Law citation or consent id.
    pub legal_basis: RecordedBasis,
    /// The mandate acted under, if any.
    pub mandate_id: Option<String>,
    /// The permitted claims, by name.
    pub claims: BTreeMap<String, PayloadValue>,
    /// For each derived claim, the rule that computed it (`quotient_familial <= 800`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rules: BTreeMap<String, String>,
    /// The provider that attests them.
    pub provider: String,
    /// How the provider's signature over its answer was checked, when it signed (docs/origin.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<ProviderOrigin>,
    /// When the broker issued it.
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    /// Until when it may be relied on.
    #[serde(with = "time::serde::rfc3339")]
    pub valid_until: OffsetDateTime,
    /// 128 random bits, base64url.
    pub nonce: String,
}

/// How the provider's signature over its answer was checked (docs/origin.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderOrigin {
    /// [`PROOF_STATEMENT`] or [`PROOF_VERIFIED_BY_BROKER`].
    pub proof: String,
    /// The provider's key id (JWS `kid`).
    pub kid: String,
    /// The JWS algorithm: `EdDSA`, `ES256` or `RS256`.
    pub alg: String,
    /// The key's RFC 7638 SHA-256 thumbprint, base64url.
    pub jkt: String,
    /// The provider's signed statement (compact JWS), with [`PROOF_STATEMENT`] only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
}

/// [`ProviderOrigin::proof`]: the provider's statement of exactly the released claims is carried,
/// verifiable offline with the provider's keys.
pub const PROOF_STATEMENT: &str = "statement";
/// [`ProviderOrigin::proof`]: the broker verified the provider's signature over an answer that
/// held more than is released (derived claims, a native HTTP body); only the key is recorded.
pub const PROOF_VERIFIED_BY_BROKER: &str = "verified_by_broker";

/// What the broker puts in an attestation, besides id, times and nonce.
pub struct AttestationContent<'a> {
    /// The attestation type.
    pub attestation_type: &'a str,
    /// Its schema version.
    pub type_version: u32,
    /// The pairwise pseudonym.
    pub subject: String,
    /// The consumer.
    pub audience: &'a str,
    /// The purpose.
    pub purpose: &'a str,
    /// The basis.
    pub legal_basis: RecordedBasis,
    /// The mandate.
    pub mandate_id: Option<String>,
    /// The permitted claims.
    pub claims: &'a Claims,
    /// The rules of derived claims.
    pub rules: BTreeMap<String, String>,
    /// The provider.
    pub provider: &'a str,
    /// The provider's proof of origin, if it signed.
    pub origin: Option<ProviderOrigin>,
    /// How long it stays valid.
    pub max_age: time::Duration,
}

impl Attestation {
    /// A new attestation issued now, with a fresh id and nonce. Both come from the thread's
    /// CSPRNG (ChaCha, seeded and reseeded by the operating system), not a system call each.
    pub fn issue(content: AttestationContent<'_>) -> Attestation {
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let issued_at = OffsetDateTime::now_utc();
        Attestation {
            v: ATTESTATION_VERSION,
            id: uuid::Uuid::now_v7().to_string(),
            attestation_type: content.attestation_type.to_string(),
            type_version: content.type_version,
            subject: content.subject,
            audience: content.audience.to_string(),
            purpose: content.purpose.to_string(),
            legal_basis: content.legal_basis,
            mandate_id: content.mandate_id,
            claims: content
                .claims
                .iter()
                .map(|(k, v)| (k.clone(), PayloadValue::from(v)))
                .collect(),
            rules: content.rules,
            provider: content.provider.to_string(),
            origin: content.origin,
            issued_at,
            valid_until: issued_at + content.max_age,
            nonce: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(nonce),
        }
    }

    /// The exact JSON bytes that are signed.
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(claims: &Claims) -> Attestation {
        Attestation::issue(AttestationContent {
            attestation_type: "caf.quotient_familial",
            type_version: 1,
            subject: "pseudonym".into(),
            audience: "mairie-lyon",
            purpose: "tarification_cantine",
            legal_basis: RecordedBasis::Law {
                citation: "L. 114-8".into(),
            },
            mandate_id: None,
            claims,
            rules: BTreeMap::new(),
            provider: "caf",
            origin: None,
            max_age: time::Duration::days(1),
        })
    }

    /// The nonce blinds the payload hash that the audit log records: 128 bits, fresh each time.
    #[test]
    fn each_attestation_has_its_own_128_bit_nonce_and_id() {
        let claims = Claims::from([("quotient_familial".into(), ClaimValue::Integer(700))]);
        let attestations: Vec<_> = (0..64).map(|_| issued(&claims)).collect();
        let mut nonces = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        for a in &attestations {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&a.nonce)
                .expect("base64url nonce");
            assert_eq!(bytes.len(), 16);
            assert_ne!(bytes, [0u8; 16]);
            nonces.insert(a.nonce.clone());
            ids.insert(a.id.clone());
        }
        assert_eq!(nonces.len(), attestations.len(), "a nonce was repeated");
        assert_eq!(ids.len(), attestations.len(), "an id was repeated");
    }
}
