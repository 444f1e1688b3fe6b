//! Attestation signatures: DSSE envelopes signed with the broker's Ed25519 attestation key.
//!
//! The key is in the data directory (`crate::keys`); its verifier key, in the C2SP
//! `vkey` format (`<name>+<key hash>+<base64(0x01 ‖ public key)>`), is published over the
//! Registry service and written to the PKI directory for distribution out of band. The signed
//! bytes are DSSE's PAE(payload_type, payload), so a signature over an attestation can never be
//! confused with a signature over anything else.

use base64::Engine;
use ed25519_dalek::{Verifier, VerifyingKey};

use crate::keys::{ATTESTATION_KEY, KeyError, Keys, SigningKey};

/// The DSSE payload type of Une Fois attestations.
pub const PAYLOAD_TYPE: &str = "application/vnd.unefois.attestation+json";

/// A DSSE envelope: the payload and its signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The attestation JSON, exactly as signed.
    pub payload: Vec<u8>,
    /// [`PAYLOAD_TYPE`].
    pub payload_type: String,
    /// One signature per signing key.
    pub signatures: Vec<EnvelopeSignature>,
}

/// One DSSE signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvelopeSignature {
    /// The signing key: the `<name>+<hash>` prefix of its vkey.
    pub keyid: String,
    /// Ed25519 signature of PAE(payload_type, payload).
    pub sig: Vec<u8>,
}

/// DSSE's pre-authentication encoding: what is actually signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + payload.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// The broker's attestation key.
pub struct AttestationSigner {
    key: SigningKey,
    keyid: String,
    vkey: String,
}

impl AttestationSigner {
    /// The attestation key of `keys` (`DATA/keys/attestation.ed25519`), named
    /// `<trust domain>/unefois/attestation`.
    pub fn new(keys: &Keys, trust_domain: &str) -> Result<AttestationSigner, KeyError> {
        AttestationSigner::from_seed(keys.secret(ATTESTATION_KEY)?, trust_domain)
    }

    /// Builds from a known seed.
    pub fn from_seed(seed: &[u8; 32], trust_domain: &str) -> Result<AttestationSigner, KeyError> {
        let key = SigningKey::from_seed(seed)?;
        let name = format!("{trust_domain}/unefois/attestation");
        let vkey = signed_note::new_ed25519_verifier_key(&name, &key.verifying_key());
        let keyid = keyid_of(&vkey).unwrap_or(name);
        Ok(AttestationSigner { key, keyid, vkey })
    }

    /// The C2SP verifier key string.
    pub fn vkey(&self) -> &str {
        &self.vkey
    }

    /// Signs an attestation payload.
    pub fn sign(&self, payload: Vec<u8>) -> Envelope {
        let sig = self.key.sign(&pae(PAYLOAD_TYPE, &payload)).to_vec();
        Envelope {
            payload,
            payload_type: PAYLOAD_TYPE.to_string(),
            signatures: vec![EnvelopeSignature {
                keyid: self.keyid.clone(),
                sig,
            }],
        }
    }
}

/// Why an envelope does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// The vkey is not an Ed25519 C2SP verifier key.
    #[error("malformed verifier key")]
    MalformedKey,
    /// No signature by that key, or a wrong one.
    #[error("no valid signature by {0}")]
    BadSignature(String),
}

/// The `<name>+<key hash>` prefix of a C2SP vkey, the key id its signatures carry: names never
/// contain `+`, but the base64 key may, so the split is from the left.
pub fn keyid_of(vkey: &str) -> Option<String> {
    let mut parts = vkey.splitn(3, '+');
    let name = parts.next()?;
    let hash = parts.next()?;
    parts.next()?;
    Some(format!("{name}+{hash}"))
}

/// Checks that `envelope` carries a valid signature by the key of `vkey` (what any holder of the
/// published key can do offline).
pub fn verify(vkey: &str, envelope: &Envelope) -> Result<(), VerifyError> {
    let keyid = keyid_of(vkey).ok_or(VerifyError::MalformedKey)?;
    let encoded = &vkey[keyid.len() + 1..];
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| VerifyError::MalformedKey)?;
    let (alg, public) = raw.split_first().ok_or(VerifyError::MalformedKey)?;
    let public: [u8; 32] = public.try_into().map_err(|_| VerifyError::MalformedKey)?;
    if *alg != 0x01 {
        return Err(VerifyError::MalformedKey);
    }
    let key = VerifyingKey::from_bytes(&public).map_err(|_| VerifyError::MalformedKey)?;
    let signed = pae(&envelope.payload_type, &envelope.payload);
    let ok = envelope.signatures.iter().any(|s| {
        s.keyid == keyid
            && ed25519_dalek::Signature::from_slice(&s.sig)
                .is_ok_and(|sig| key.verify(&signed, &sig).is_ok())
    });
    if ok {
        Ok(())
    } else {
        Err(VerifyError::BadSignature(keyid))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_specification_example() {
        // From the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn an_envelope_verifies_with_the_published_key_and_not_once_altered() {
        let signer = AttestationSigner::from_seed(&[7; 32], "unefois.test").unwrap();
        assert!(
            signer
                .vkey()
                .starts_with("unefois.test/unefois/attestation+")
        );
        let envelope = signer.sign(br#"{"a":1}"#.to_vec());
        assert_eq!(verify(signer.vkey(), &envelope), Ok(()));

        let mut altered = envelope.clone();
        altered.payload = br#"{"a":2}"#.to_vec();
        assert!(verify(signer.vkey(), &altered).is_err());
        let mut retyped = envelope.clone();
        retyped.payload_type = "text/plain".into();
        assert!(verify(signer.vkey(), &retyped).is_err());
        let other = AttestationSigner::from_seed(&[8; 32], "unefois.test").unwrap();
        assert!(verify(other.vkey(), &envelope).is_err());
    }

    #[test]
    fn keys_whose_base64_holds_a_plus_sign_verify() {
        // A bug fixed here: the key id was cut at the last '+', inside the base64 key.
        let mut found = 0;
        for seed in 0..=255u8 {
            let signer = AttestationSigner::from_seed(&[seed; 32], "unefois.test").unwrap();
            let key_part = signer.vkey().splitn(3, '+').nth(2).unwrap();
            if !key_part.contains('+') {
                continue;
            }
            found += 1;
            let envelope = signer.sign(b"{}".to_vec());
            assert_eq!(envelope.signatures[0].keyid.matches('+').count(), 1);
            assert_eq!(verify(signer.vkey(), &envelope), Ok(()), "seed {seed}");
        }
        assert!(found > 0, "no seed gave a '+' in the key");
    }
}
