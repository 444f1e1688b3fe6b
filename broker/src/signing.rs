//! Attestation signatures: DSSE envelopes signed with the broker's Ed25519 attestation key.
//!
//! The key is in the data directory (`crate::keys`); its verifier key, in the C2SP
//! `vkey` format (`<name>+<key hash>+<base64(0x01 ‖ public key)>`), is published over the
//! Registry service and written to the PKI directory for distribution out of band. The signed
//! bytes are DSSE's PAE(payload_type, payload), so a signature over an attestation can never be
//! confused with a signature over anything else.

use crate::keys::{ATTESTATION_KEY, KeyError, Keys, SigningKey};

pub use unefois_tlog::dsse::{
    Envelope, EnvelopeSignature, PAYLOAD_TYPE, VerifyError, keyid_of, pae, verify,
};

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
