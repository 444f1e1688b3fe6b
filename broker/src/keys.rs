//! The broker's own secrets: the pseudonym keys and the attestation signing key, created at
//! first start in the data directory (files 0600) and never sent anywhere.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a key could not be loaded or created.
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
    /// The operating system's random source failed.
    #[error("random source: {0}")]
    Random(getrandom::Error),
    /// The signing library refused the seed.
    #[error("Ed25519 seed refused: {0}")]
    Rejected(String),
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

/// 32 secret bytes from `path`, created there (0600, written atomically) if missing.
pub fn load_or_create_secret(path: &Path) -> Result<[u8; 32], KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::TooOpen {
                    path: path.to_path_buf(),
                    mode,
                });
            }
            bytes.try_into().map_err(|_| KeyError::Malformed {
                path: path.to_path_buf(),
                expected: 32,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(KeyError::Random)?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
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
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_created_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/k");
        let a = load_or_create_secret(&path).unwrap();
        let b = load_or_create_secret(&path).unwrap();
        assert_eq!(a, b);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create_secret(&path),
            Err(KeyError::TooOpen { .. })
        ));
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
