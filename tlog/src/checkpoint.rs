//! Signed checkpoints: C2SP `tlog-checkpoint` bodies (origin, size, root) in C2SP signed
//! notes, Ed25519, verified against the log's published verifier key. The broker signs them
//! (its log key never leaves it); anyone verifies them here.

use signed_note::{Note, StandardVerifier, VerifierList};
use tlog_tiles::Checkpoint;

/// The log's origin for a trust domain.
pub fn origin(trust_domain: &str) -> String {
    format!("{trust_domain}/unefois/audit")
}

/// How a log key of a trust domain is named in C2SP signed notes: the log's origin (the key's
/// name), the note key id and the verifier key published as `log.vkey`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogKeyNames {
    /// The log's origin, `<trust domain>/unefois/audit`.
    pub origin: String,
    /// The signed note's key id of the key under that name.
    pub key_id: u32,
    /// The C2SP verifier key.
    pub vkey: String,
}

/// The names of the Ed25519 log key `public` of `trust_domain`.
pub fn log_key_names(trust_domain: &str, public: &ed25519_dalek::VerifyingKey) -> LogKeyNames {
    let origin = origin(trust_domain);
    let mut encoded = vec![0x01];
    encoded.extend_from_slice(public.as_bytes());
    LogKeyNames {
        key_id: signed_note::key_id(&origin, &encoded),
        vkey: signed_note::new_ed25519_verifier_key(&origin, public),
        origin,
    }
}

/// A checkpoint whose signature was verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedCheckpoint {
    /// The log's origin.
    pub origin: String,
    /// Number of leaves.
    pub size: u64,
    /// Root hash.
    pub root: [u8; 32],
}

/// Why a checkpoint was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckpointError {
    /// The verifier key is malformed.
    #[error("malformed log verifier key")]
    BadKey,
    /// The note is malformed or not signed by the key.
    #[error("checkpoint signature does not verify: {0}")]
    BadSignature(String),
    /// The note's body is not a checkpoint.
    #[error("malformed checkpoint body")]
    Malformed,
    /// The checkpoint is for another log.
    #[error("checkpoint origin {found:?}, expected {expected:?}")]
    WrongOrigin {
        /// The origin found.
        found: String,
        /// The key's name.
        expected: String,
    },
}

/// Verifies a signed checkpoint against the log's verifier key (as any participant or auditor
/// does offline with the published key).
pub fn verify_checkpoint(vkey: &str, note: &str) -> Result<VerifiedCheckpoint, CheckpointError> {
    let verifier = StandardVerifier::new(vkey).map_err(|_| CheckpointError::BadKey)?;
    let expected = signed_note::Verifier::name(&verifier).to_string();
    let note = Note::from_bytes(note.as_bytes())
        .map_err(|e| CheckpointError::BadSignature(e.to_string()))?;
    note.verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|e| CheckpointError::BadSignature(e.to_string()))?;
    let checkpoint = Checkpoint::from_bytes(note.text()).map_err(|_| CheckpointError::Malformed)?;
    if checkpoint.origin() != expected {
        return Err(CheckpointError::WrongOrigin {
            found: checkpoint.origin().to_string(),
            expected,
        });
    }
    Ok(VerifiedCheckpoint {
        origin: checkpoint.origin().to_string(),
        size: checkpoint.size(),
        root: checkpoint.hash().0,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn go_sumdb_note_example_verifies() {
        // The example of golang.org/x/mod/sumdb/note's documentation.
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let msg = "If you think cryptography is the answer to your problem,\n\
                   then you don't know what your problem is.\n\
                   \n\
                   — PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let verifier = StandardVerifier::new(vkey).unwrap();
        let note = Note::from_bytes(msg.as_bytes()).unwrap();
        assert!(
            note.verify(&VerifierList::new(vec![Box::new(verifier)]))
                .is_ok()
        );
        let tampered = msg.replace("cryptography", "cryptographie");
        let verifier = StandardVerifier::new(vkey).unwrap();
        let note = Note::from_bytes(tampered.as_bytes()).unwrap();
        assert!(
            note.verify(&VerifierList::new(vec![Box::new(verifier)]))
                .is_err()
        );
    }

    #[test]
    fn a_malformed_key_or_note_is_refused_with_its_reason() {
        assert_eq!(
            verify_checkpoint("not a key", "x"),
            Err(CheckpointError::BadKey)
        );
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        assert!(matches!(
            verify_checkpoint(vkey, "no signature"),
            Err(CheckpointError::BadSignature(_))
        ));
        assert_eq!(origin("unefois.test"), "unefois.test/unefois/audit");
    }
}
