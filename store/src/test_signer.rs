//! A log key for the store's tests: the broker's checkpoint format (a C2SP signed note of
//! `<trust domain>/unefois/audit`, Ed25519), signed with ed25519-dalek, so that the store's tests
//! need none of the broker's key handling.

#![allow(clippy::unwrap_used)]

use ed25519_dalek::{Signer as _, SigningKey};
use signed_note::Note;
use tlog_tiles::Hash;

use crate::CheckpointSigner;

/// A checkpoint signer of a known seed, for the trust domain `unefois.test`.
pub(crate) struct TestSigner {
    key: SigningKey,
    name: String,
    key_id: u32,
    vkey: String,
}

impl TestSigner {
    pub(crate) fn from_seed(seed: &[u8; 32]) -> TestSigner {
        let key = SigningKey::from_bytes(seed);
        let names = unefois_tlog::checkpoint::log_key_names("unefois.test", &key.verifying_key());
        TestSigner {
            key,
            name: names.origin,
            key_id: names.key_id,
            vkey: names.vkey,
        }
    }
}

impl CheckpointSigner for TestSigner {
    fn sign(&self, size: u64, root: [u8; 32]) -> String {
        let body = format!("{}\n{}\n{}\n", self.name, size, Hash(root));
        let mut note = Note::new(body.as_bytes(), &[]).unwrap();
        note.add_sigs(&[self]).unwrap();
        String::from_utf8(note.to_bytes()).unwrap()
    }

    fn vkey(&self) -> &str {
        &self.vkey
    }
}

impl signed_note::Signer for TestSigner {
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
