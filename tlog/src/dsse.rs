//! DSSE envelopes of attestations: the payload, its type and Ed25519 signatures over DSSE's
//! PAE(payload_type, payload), so that a signature over an attestation can never be confused
//! with a signature over anything else. Verified against the attestation key's C2SP verifier
//! key (`<name>+<key hash>+<base64(0x01 ‖ public key)>`), which the broker publishes.

use signed_note::StandardVerifier;

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

/// Why an envelope does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// The vkey is not an Ed25519 C2SP verifier key.
    #[error("malformed verifier key")]
    MalformedKey,
    /// No signature by that key, or a wrong one.
    #[error("no valid signature by {0}")]
    BadSignature(String),
    /// Signed, but not as an attestation: the signature covers another payload type.
    #[error("payload type {0:?}, not an attestation ({PAYLOAD_TYPE})")]
    NotAnAttestation(String),
}

/// The `<name>+<key hash>` prefix of a C2SP vkey, the key id its signatures carry, once the vkey
/// is a well-formed Ed25519 verifier key whose hash is the C2SP key id of its name and key (as
/// [`crate::checkpoint::verify_checkpoint`] requires): `None` otherwise. Names never contain
/// `+`, but the base64 key may, so the split is from the left.
pub fn keyid_of(vkey: &str) -> Option<String> {
    checked_key(vkey).ok().map(|(keyid, _)| keyid)
}

/// The vkey parsed by the same code as a checkpoint's key ([`StandardVerifier::new`]: the
/// name, 8 hex digits that are the C2SP key id of the name and `0x01 ‖ public key`, the key),
/// with its `<name>+<key hash>` prefix.
fn checked_key(vkey: &str) -> Result<(String, StandardVerifier), VerifyError> {
    let verifier = StandardVerifier::new(vkey).map_err(|_| VerifyError::MalformedKey)?;
    let mut parts = vkey.splitn(3, '+');
    let (Some(name), Some(hash)) = (parts.next(), parts.next()) else {
        return Err(VerifyError::MalformedKey);
    };
    Ok((format!("{name}+{hash}"), verifier))
}

/// Checks that `envelope` is an attestation ([`PAYLOAD_TYPE`]) and carries a valid signature by
/// the key of `vkey` (what any holder of the published key can do offline). The type is
/// checked too: the day the key signs another kind of payload, its envelopes must not pass for
/// attestations. A vkey whose key hash is not its key's C2SP key id is refused
/// ([`VerifyError::MalformedKey`]), as for checkpoints: the key id names one key only.
pub fn verify(vkey: &str, envelope: &Envelope) -> Result<(), VerifyError> {
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(VerifyError::NotAnAttestation(envelope.payload_type.clone()));
    }
    let (keyid, key) = checked_key(vkey)?;
    let signed = pae(&envelope.payload_type, &envelope.payload);
    let ok = envelope
        .signatures
        .iter()
        .any(|s| s.keyid == keyid && signed_note::Verifier::verify(&key, &signed, &s.sig));
    if ok {
        Ok(())
    } else {
        Err(VerifyError::BadSignature(keyid))
    }
}

/// The hex SHA-256 of a signed attestation payload: what an exchange's audit entry records as
/// `payload_sha256`, so that a receipt holder ties the entry to the attestation (the payload's
/// nonce keeps the hash from revealing anything to others).
pub fn payload_sha256(payload: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(payload))
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
    fn an_envelope_signed_by_any_ed25519_signer_verifies_with_its_vkey_only() {
        use ed25519_dalek::Signer;
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let vkey =
            signed_note::new_ed25519_verifier_key("example.org/attestation", &key.verifying_key());
        let payload = br#"{"id":"a"}"#.to_vec();
        let sig = key.sign(&pae(PAYLOAD_TYPE, &payload)).to_bytes().to_vec();
        let envelope = Envelope {
            payload,
            payload_type: PAYLOAD_TYPE.into(),
            signatures: vec![EnvelopeSignature {
                keyid: keyid_of(&vkey).unwrap(),
                sig,
            }],
        };
        assert_eq!(verify(&vkey, &envelope), Ok(()));
        let mut altered = envelope.clone();
        altered.payload = br#"{"id":"b"}"#.to_vec();
        assert!(matches!(
            verify(&vkey, &altered),
            Err(VerifyError::BadSignature(_))
        ));
        assert_eq!(verify("garbage", &envelope), Err(VerifyError::MalformedKey));
        // The same key's valid signature over another payload type is no attestation.
        let other = Envelope {
            payload_type: "text/plain".into(),
            signatures: vec![EnvelopeSignature {
                keyid: keyid_of(&vkey).unwrap(),
                sig: key
                    .sign(&pae("text/plain", &envelope.payload))
                    .to_bytes()
                    .to_vec(),
            }],
            ..envelope.clone()
        };
        assert_eq!(
            verify(&vkey, &other),
            Err(VerifyError::NotAnAttestation("text/plain".into()))
        );
    }

    #[test]
    fn a_vkey_whose_hash_names_another_key_is_refused() {
        use ed25519_dalek::Signer;
        let name = "example.org/attestation";
        let real = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let other = ed25519_dalek::SigningKey::from_bytes(&[4; 32]);
        let vkey = signed_note::new_ed25519_verifier_key(name, &real.verifying_key());
        let other_vkey = signed_note::new_ed25519_verifier_key(name, &other.verifying_key());
        // The real name and hash, another public key: `<name>+<real hash>+<other key>`.
        let keyid = keyid_of(&vkey).unwrap();
        let other_key = other_vkey.splitn(3, '+').nth(2).unwrap();
        let swapped = format!("{keyid}+{other_key}");
        let payload = br#"{"id":"a"}"#.to_vec();
        let envelope = Envelope {
            signatures: vec![EnvelopeSignature {
                keyid: keyid.clone(),
                sig: other.sign(&pae(PAYLOAD_TYPE, &payload)).to_bytes().to_vec(),
            }],
            payload,
            payload_type: PAYLOAD_TYPE.into(),
        };
        assert_eq!(verify(&swapped, &envelope), Err(VerifyError::MalformedKey));
        assert_eq!(keyid_of(&swapped), None);
        // A hash that is not 8 hex digits is refused too.
        let long = format!("{name}+0{}", &vkey[name.len() + 1..]);
        assert_eq!(verify(&long, &envelope), Err(VerifyError::MalformedKey));
        // The other key under its own id verifies its own signature.
        let mut own = envelope.clone();
        own.signatures[0].keyid = keyid_of(&other_vkey).unwrap();
        assert_eq!(verify(&other_vkey, &own), Ok(()));
    }

    #[test]
    fn the_payload_hash_is_the_hex_sha256() {
        assert_eq!(
            payload_sha256(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
