//! Signed checkpoints: C2SP `tlog-checkpoint` bodies in C2SP signed notes, Ed25519.

use signed_note::Note;
use tlog_tiles::Hash;

use unefois_tlog::checkpoint::log_key_names;

use crate::keys::{KeyError, Keys, LOG_KEY, SigningKey};

/// The broker's log key, which signs checkpoints.
pub struct LogSigner {
    key: SigningKey,
    name: String,
    key_id: u32,
    vkey: String,
}

impl LogSigner {
    /// The log key of `keys` (`DATA/keys/log.ed25519`); its name is the log's origin,
    /// `<trust domain>/unefois/audit`.
    pub fn new(keys: &Keys, trust_domain: &str) -> Result<LogSigner, KeyError> {
        LogSigner::from_seed(keys.secret(LOG_KEY)?, trust_domain)
    }

    /// Builds from a known seed.
    pub fn from_seed(seed: &[u8; 32], trust_domain: &str) -> Result<LogSigner, KeyError> {
        let key = SigningKey::from_seed(seed)?;
        let names = log_key_names(trust_domain, &key.verifying_key());
        Ok(LogSigner {
            key,
            name: names.origin,
            key_id: names.key_id,
            vkey: names.vkey,
        })
    }

    /// The log's origin line.
    pub fn origin(&self) -> &str {
        &self.name
    }

    /// The C2SP verifier key of the log key.
    pub fn vkey(&self) -> &str {
        &self.vkey
    }

    /// The signed note of the checkpoint for a tree of `size` leaves with root `root`.
    pub fn sign(&self, size: u64, root: [u8; 32]) -> String {
        let body = format!("{}\n{}\n{}\n", self.name, size, Hash(root));
        let Ok(mut note) = Note::new(body.as_bytes(), &[]) else {
            // The body is three well-formed lines: this cannot fail.
            return body;
        };
        if note.add_sigs(&[self]).is_err() {
            return body;
        }
        String::from_utf8(note.to_bytes()).unwrap_or(body)
    }
}

/// The store signs each checkpoint with the log key, through this.
impl unefois_store::CheckpointSigner for LogSigner {
    fn sign(&self, size: u64, root: [u8; 32]) -> String {
        LogSigner::sign(self, size, root)
    }

    fn vkey(&self) -> &str {
        LogSigner::vkey(self)
    }
}

impl signed_note::Signer for LogSigner {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        self.key_id
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, ed25519_dalek::SignatureError> {
        Ok(self.key.sign(msg).to_vec())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use unefois_tlog::checkpoint::verify_checkpoint;

    #[test]
    fn a_signed_checkpoint_verifies_and_a_forged_one_does_not() {
        let log = LogSigner::from_seed(&[5; 32], "unefois.test").unwrap();
        let note = log.sign(42, [7; 32]);
        assert!(note.starts_with("unefois.test/unefois/audit\n42\n"));
        let c = verify_checkpoint(log.vkey(), &note).unwrap();
        assert_eq!((c.size, c.root), (42, [7; 32]));
        assert_eq!(log.sign(42, [7; 32]), note, "deterministic");

        let forged = note.replacen("\n42\n", "\n43\n", 1);
        assert!(verify_checkpoint(log.vkey(), &forged).is_err());
        let other = LogSigner::from_seed(&[6; 32], "unefois.test").unwrap();
        assert!(verify_checkpoint(other.vkey(), &note).is_err());
    }
}
