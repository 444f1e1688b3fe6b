//! The broker's own secrets, in `DATA/keys` (a folder 0700, files 0600, never sent anywhere):
//! the attestation and log signing keys and the pseudonym keys, each 32 bytes, listed in
//! [`KEYS`] and loaded together by [`Keys::load`] under one policy.
//!
//! A key is created only over an empty journal (logged as a warning, naming the file). Over a
//! journal that holds records, a missing key stops the start: a new key would silently break
//! what the journal holds (consents and mandates no longer found by subject, a person's history
//! cut in two, checkpoints under another key). Each start records the key ids in its
//! `broker_started` entry, and a start whose key differs from the one the journal last
//! recorded is refused ([`Keys::check_recorded`]). There is no key rotation command.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::pseudonym::Pseudonymizer;
/// The id of a secret key (the domain computes it: pseudonyms carry it).
pub use crate::pseudonym::secret_key_id;
use crate::seal::Sealer;
/// The key ids a journal recorded (the domain's: the store keeps them).
pub use unefois_domain::event::RecordedKeys;

pub use unefois_store::key_files::{
    ATTESTATION_KEY, AUDIT_PSEUDONYM_KEY, AUDIT_SEAL_KEY, KEYS, KEYS_DIR, KeyKind, KeySpec,
    LOG_KEY, PAIRWISE_PSEUDONYM_KEY, Since,
};

/// What to do: put the key file back.
const RESTORE: &str = "put the key file back from a backup (`unefois restore --from BACKUP \
                       --home HOME` restores the journal and its keys together); the broker \
                       never replaces a key over a journal that holds records";

/// Why the keys cannot be loaded, created or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The key file does not hold a key of the right size.
    #[error("{}: not a {expected}-byte key", path.display())]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// The size expected.
        expected: usize,
    },
    /// The key file can be read by others than the broker's user.
    #[error("{}: readable by group or others (mode {mode:o}); chmod 600 it", path.display())]
    TooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file is missing while the journal holds records made with it.
    #[error(
        "{}: the {what} is missing, but the journal holds records made with it{}: a new key \
         would silently break them; {RESTORE}",
        path.display(),
        recorded.as_ref().map(|id| format!(" (key id {id})")).unwrap_or_default()
    )]
    Missing {
        /// The key file.
        path: PathBuf,
        /// What the key is.
        what: &'static str,
        /// The key id the journal last recorded for it, if it recorded one.
        recorded: Option<String>,
    },
    /// A key file holds another key than the one the journal last recorded.
    #[error(
        "{}: holds the {what} with key id {found}, but the journal last recorded key id \
         {recorded} for it (entry {entry}): the key was replaced; {RESTORE}",
        path.display()
    )]
    Changed {
        /// The key file.
        path: PathBuf,
        /// What the key is.
        what: &'static str,
        /// The id of the key in the file.
        found: String,
        /// The id the journal last recorded.
        recorded: String,
        /// The `broker_started` entry that recorded it.
        entry: u64,
    },
    /// A key that is not in [`KEYS`] was asked for (a programming error).
    #[error("no key {0} in DATA/keys")]
    Unknown(String),
    /// The operating system's random source failed.
    #[error("random source: {0}")]
    Random(getrandom::Error),
    /// The signing library refused the seed.
    #[error("Ed25519 seed refused: {0}")]
    Rejected(String),
}

/// The id of an Ed25519 key: the first 8 bytes, hex, of SHA-256(`unefois ed25519 key id` ‖
/// 0x00 ‖ the 32-byte public key), the key a published `.vkey` carries after its 0x01 byte.
pub fn ed25519_key_id(public: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(b"unefois ed25519 key id\0");
    h.update(public);
    hex::encode(&h.finalize()[..8])
}

struct Loaded {
    spec: KeySpec,
    secret: [u8; 32],
    id: String,
    /// Created by this start (a [`Since::LaterVersion`] key over a journal with records).
    created: bool,
}

/// Every key of [`KEYS`], loaded from `DATA/keys`.
pub struct Keys {
    dir: PathBuf,
    loaded: BTreeMap<&'static str, Loaded>,
}

impl Keys {
    /// The seal key ([`AUDIT_SEAL_KEY`]).
    pub fn sealer(&self) -> Result<Sealer, KeyError> {
        Ok(Sealer::from_secret(self.secret(AUDIT_SEAL_KEY)?))
    }

    /// The pseudonym keys ([`AUDIT_PSEUDONYM_KEY`], [`PAIRWISE_PSEUDONYM_KEY`]).
    pub fn pseudonymizer(&self) -> Result<Pseudonymizer, KeyError> {
        Ok(Pseudonymizer::from_secrets(
            self.secret(AUDIT_PSEUDONYM_KEY)?,
            self.secret(PAIRWISE_PSEUDONYM_KEY)?,
        ))
    }

    /// Loads every key of [`KEYS`] from `data_dir/keys` (created 0700). A missing key is
    /// created (random, 0600, written atomically and synced; a warning names the file) when
    /// `journal_is_empty`, or when it is a [`Since::LaterVersion`] key; otherwise
    /// [`KeyError::Missing`]. A file that is malformed or readable by group or others is an
    /// error. Call [`Keys::check_recorded`] once the journal's recorded ids are known.
    pub fn load(data_dir: &Path, journal_is_empty: bool) -> Result<Keys, KeyError> {
        let dir = data_dir.join(KEYS_DIR);
        crate::private::private_dir(&dir).map_err(|source| KeyError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut loaded = BTreeMap::new();
        for spec in KEYS {
            let path = dir.join(spec.file);
            let (secret, created) = match read_secret(&path)? {
                Some(secret) => (secret, false),
                None if journal_is_empty || spec.since == Since::LaterVersion => {
                    (create_secret(&path)?, true)
                }
                None => {
                    return Err(KeyError::Missing {
                        path,
                        what: spec.what,
                        recorded: None,
                    });
                }
            };
            let id = key_id(spec.kind, &secret)?;
            if created {
                tracing::warn!(
                    file = %path.display(),
                    key_id = %id,
                    journal_is_empty,
                    "created a new {}: back it up with the journal (`unefois backup`), a lost key is not created again",
                    spec.what
                );
            }
            loaded.insert(
                spec.file,
                Loaded {
                    spec: *spec,
                    secret,
                    id,
                    created: created && !journal_is_empty,
                },
            );
        }
        Ok(Keys { dir, loaded })
    }

    /// The 32 secret bytes of the key file `file` (one of [`KEYS`]).
    pub fn secret(&self, file: &str) -> Result<&[u8; 32], KeyError> {
        self.loaded
            .get(file)
            .map(|k| &k.secret)
            .ok_or_else(|| KeyError::Unknown(file.to_string()))
    }

    /// Every key's id, by file name: what `broker_started` records.
    pub fn ids(&self) -> BTreeMap<String, String> {
        self.loaded
            .iter()
            .map(|(file, k)| ((*file).to_string(), k.id.clone()))
            .collect()
    }

    /// Checks each key against the id the journal last recorded for it: another id is
    /// [`KeyError::Changed`]; a key this start created where the journal recorded one is
    /// [`KeyError::Missing`] (and the file just created is removed). A key the journal never
    /// recorded passes.
    pub fn check_recorded(&self, recorded: &RecordedKeys) -> Result<(), KeyError> {
        for (file, key) in &self.loaded {
            let Some(expected) = recorded.ids.get(*file) else {
                continue;
            };
            if *expected == key.id {
                continue;
            }
            let path = self.dir.join(file);
            if key.created {
                let _ = std::fs::remove_file(&path);
                return Err(KeyError::Missing {
                    path,
                    what: key.spec.what,
                    recorded: Some(expected.clone()),
                });
            }
            return Err(KeyError::Changed {
                path,
                what: key.spec.what,
                found: key.id.clone(),
                recorded: expected.clone(),
                entry: recorded.entry,
            });
        }
        Ok(())
    }
}

/// The id of a key of `kind` with these secret bytes.
fn key_id(kind: KeyKind, secret: &[u8; 32]) -> Result<String, KeyError> {
    Ok(match kind {
        KeyKind::Secret => secret_key_id(secret),
        KeyKind::Ed25519 => {
            ed25519_key_id(SigningKey::from_seed(secret)?.verifying_key().as_bytes())
        }
    })
}

/// The 32 secret bytes of `path`; `None` when there is no such file.
fn read_secret(path: &Path) -> Result<Option<[u8; 32]>, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    bytes.try_into().map(Some).map_err(|_| KeyError::Malformed {
        path: path.to_path_buf(),
        expected: 32,
    })
}

/// 32 random bytes written to the new file `path` (0600, written atomically and synced).
fn create_secret(path: &Path) -> Result<[u8; 32], KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(KeyError::Random)?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(&secret).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(secret)
}

/// An Ed25519 key that signs the broker's attestations or its log's checkpoints.
///
/// It signs with aws-lc-rs, which takes half the time of ed25519-dalek on the measured CPUs
/// (BENCHMARKS.md, "Run G"), and gives its public half as ed25519-dalek's type, which the
/// C2SP verifier-key formats take. Ed25519 is deterministic: both libraries give the same bytes.
pub struct SigningKey {
    pair: aws_lc_rs::signature::Ed25519KeyPair,
    public: ed25519_dalek::VerifyingKey,
}

impl SigningKey {
    /// The key of a 32-byte secret seed (RFC 8032).
    pub fn from_seed(seed: &[u8; 32]) -> Result<SigningKey, KeyError> {
        use aws_lc_rs::signature::KeyPair as _;
        let pair = aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|e| KeyError::Rejected(e.to_string()))?;
        // The public half of the pair that signs, not a second derivation from the seed.
        let public = <[u8; 32]>::try_from(pair.public_key().as_ref())
            .ok()
            .and_then(|bytes| ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok())
            .ok_or_else(|| KeyError::Rejected("public key is not a 32-byte point".into()))?;
        Ok(SigningKey { pair, public })
    }

    /// The public key, for verifier keys and verification.
    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.public
    }

    /// The Ed25519 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut signature = [0u8; 64];
        signature.copy_from_slice(self.pair.sign(message).as_ref());
        signature
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_once_over_an_empty_journal_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = Keys::load(dir.path(), true).unwrap();
        let b = Keys::load(dir.path(), false).unwrap();
        assert_eq!(a.ids(), b.ids());
        assert_eq!(a.ids().len(), KEYS.len());
        let keys = dir.path().join(KEYS_DIR);
        assert_eq!(
            std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for spec in KEYS {
            let path = keys.join(spec.file);
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", spec.file);
            assert_eq!(a.secret(spec.file).unwrap(), b.secret(spec.file).unwrap());
        }
        let log = keys.join(LOG_KEY);
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Keys::load(dir.path(), false),
            Err(KeyError::TooOpen { .. })
        ));
        // Lost over a journal with records: refused, never created again.
        std::fs::remove_file(&log).unwrap();
        let e = Keys::load(dir.path(), false).err().unwrap();
        assert!(matches!(e, KeyError::Missing { .. }), "{e}");
        assert!(e.to_string().contains("log.ed25519") && e.to_string().contains("unefois restore"));
        assert!(!log.exists());
    }

    #[test]
    fn a_key_other_than_the_recorded_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::load(dir.path(), true).unwrap();
        let mut recorded = RecordedKeys {
            entry: 7,
            ids: keys.ids(),
        };
        keys.check_recorded(&recorded).unwrap();
        recorded
            .ids
            .insert(AUDIT_PSEUDONYM_KEY.into(), "0011223344556677".into());
        let e = keys.check_recorded(&recorded).unwrap_err().to_string();
        assert!(
            e.contains(AUDIT_PSEUDONYM_KEY)
                && e.contains("0011223344556677")
                && e.contains("entry 7"),
            "{e}"
        );
        // A key the journal never recorded passes.
        recorded.ids.clear();
        keys.check_recorded(&recorded).unwrap();
    }

    #[test]
    fn key_ids_are_those_of_the_pseudonyms_and_of_the_public_keys() {
        let secret = [9u8; 32];
        assert_eq!(
            crate::pseudonym::Pseudonymizer::from_secrets(&secret, &[1; 32]).audit_key_id(),
            secret_key_id(&secret)
        );
        let public = SigningKey::from_seed(&secret).unwrap().verifying_key();
        assert_eq!(
            key_id(KeyKind::Ed25519, &secret).unwrap(),
            ed25519_key_id(public.as_bytes())
        );
        assert_ne!(secret_key_id(&secret), ed25519_key_id(&secret));
    }

    #[test]
    fn signatures_are_those_of_rfc_8032_and_verify_with_ed25519_dalek() {
        use ed25519_dalek::{Signer as _, Verifier as _};
        // RFC 8032, section 7.1, TEST 2: one-byte message.
        let seed: [u8; 32] =
            hex::decode("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
                .unwrap()
                .try_into()
                .unwrap();
        let key = SigningKey::from_seed(&seed).unwrap();
        assert_eq!(
            hex::encode(key.verifying_key().as_bytes()),
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
        );
        assert_eq!(
            hex::encode(key.sign(&[0x72])),
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da\
             085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
        );
        // Any seed and message: the same bytes as ed25519-dalek, which verifies them.
        for i in 0..32u8 {
            let seed = [i.wrapping_mul(37); 32];
            let message = vec![i; usize::from(i) * 41];
            let dalek = ed25519_dalek::SigningKey::from_bytes(&seed);
            let key = SigningKey::from_seed(&seed).unwrap();
            let signature = key.sign(&message);
            assert_eq!(signature, dalek.sign(&message).to_bytes());
            assert_eq!(key.verifying_key(), dalek.verifying_key());
            let parsed = ed25519_dalek::Signature::from_bytes(&signature);
            assert!(key.verifying_key().verify(&message, &parsed).is_ok());
        }
    }
}
