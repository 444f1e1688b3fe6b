//! Pseudonyms: the broker never keeps a raw subject id.
//!
//! Two keyed hashes (HMAC-SHA-256) of the normalised subject, each under its own key kept in
//! the data directory:
//! - the **audit pseudonym**, the same for every consumer, is what the journal, the audit log and
//!   the derived state hold (consents by subject, the citizen's access history);
//! - the **pairwise pseudonym** goes into attestations: it differs per consumer, so two
//!   consumers cannot link what they each obtained about one person.
//!
//! Each key has a key id ([`secret_key_id`]); the audit key's is recorded beside every audit
//! pseudonym. The keys themselves are the broker's (`DATA/keys`).

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::subject::Subject;

type HmacSha256 = Hmac<Sha256>;

/// The pseudonym keys (the broker loads them from `DATA/keys/`).
pub struct Pseudonymizer {
    audit: HmacSha256,
    audit_key_id: String,
    pairwise: HmacSha256,
}

fn mac(secret: &[u8; 32]) -> HmacSha256 {
    // HMAC accepts keys of any length: this cannot fail for 32 bytes.
    <HmacSha256 as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!())
}

impl Pseudonymizer {
    /// Builds from the two secrets: the audit key's and the pairwise key's.
    pub fn from_secrets(audit: &[u8; 32], pairwise: &[u8; 32]) -> Pseudonymizer {
        Pseudonymizer {
            audit: mac(audit),
            audit_key_id: secret_key_id(audit),
            pairwise: mac(pairwise),
        }
    }

    /// The subject's pseudonym in the journal and the audit log (hex, 64 characters).
    pub fn audit(&self, subject: &Subject) -> String {
        let mut m = self.audit.clone();
        m.update(b"unefois/audit/v1\0");
        m.update(subject.as_str().as_bytes());
        hex::encode(m.finalize().into_bytes())
    }

    /// The id of the key under which [`Pseudonymizer::audit`] pseudonyms are computed.
    pub fn audit_key_id(&self) -> &str {
        &self.audit_key_id
    }

    /// The subject's pseudonym as `consumer` sees it in attestations (base64url, 43 characters).
    pub fn pairwise(&self, consumer: &str, subject: &Subject) -> String {
        let mut m = self.pairwise.clone();
        m.update(b"unefois/pairwise/v1\0");
        m.update(consumer.as_bytes());
        m.update(b"\0");
        m.update(subject.as_str().as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
    }
}

/// The id of a secret key: the first 8 bytes, hex, of SHA-256(`unefois pseudonym key id` ‖ 0x00
/// ‖ secret). The audit pseudonym key's is the `pseudonym_key` of journal entries.
pub fn secret_key_id(secret: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(b"unefois pseudonym key id\0");
    h.update(secret);
    hex::encode(&h.finalize()[..8])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_pairwise_and_keyed() {
        let p = Pseudonymizer::from_secrets(&[1; 32], &[2; 32]);
        let alice = Subject::parse("test:alice", true).unwrap();
        let bob = Subject::parse("test:bob", true).unwrap();
        assert_eq!(p.audit(&alice), p.audit(&alice));
        assert_ne!(p.audit(&alice), p.audit(&bob));
        assert!(!p.audit(&alice).contains("alice"));
        assert_ne!(p.pairwise("caf", &alice), p.pairwise("dgfip", &alice));
        assert_eq!(p.pairwise("caf", &alice), p.pairwise("caf", &alice));
        let other = Pseudonymizer::from_secrets(&[3; 32], &[4; 32]);
        assert_ne!(p.audit(&alice), other.audit(&alice));
        assert_ne!(p.audit_key_id(), other.audit_key_id());
    }
}
