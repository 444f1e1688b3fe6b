//! Sealing what would link a person across participants before it enters the log.
//!
//! The audit pseudonym is the same for every consumer: written in clear in the entries that
//! consumers receive as receipts, or that guichets receive in a citizen's access history, it
//! would let any two of them join their records about one person (issue 19, finding 1). Each
//! entry therefore holds the audit pseudonym **sealed**: XChaCha20-Poly1305 under the broker's
//! seal key, with a fresh 192-bit random nonce, so that two entries about one person share no
//! byte. Only the broker (and whoever holds its seal key: auditors through the broker) opens
//! it; entries stay verifiable offline, since a leaf is hashed as the bytes it is.
//!
//! The same key blinds caller-chosen ids (request ids, unknown mandate ids) per participant:
//! a keyed digest, so that two participants that choose the same id (a case number, a
//! careless subject id) record unlinkable digests.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chacha20::cipher::generic_array::GenericArray;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::event::RecordedSubject;

/// Bound to every sealed value: a value sealed for another purpose never opens as a subject.
const SUBJECT_AAD: &[u8] = b"unefois/audit-seal/subject/v1";
const NONCE_BYTES: usize = 24;
/// A nonce's base64 digits (24 bytes, 32 digits, no padding): how a sealed value starts after
/// its key id and the dot.
const NONCE_DIGITS: usize = 32;

/// Most values the broker seals are opened again moments later, by the store's commit hook
/// indexing the record they are in: [`Sealer::seal`] keeps each one's pseudonym here until
/// [`Sealer::reveal`] takes it, so that the hook does not decrypt what was just encrypted
/// (9,700 instructions per fetch; BENCHMARKS.md, run L). Values never revealed
/// (their append failed) are dropped with the rest once this many are waiting.
const MAX_RECENT: usize = 4096;

/// Why a sealed value does not open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// Not `<key id>.<base64url>` of a nonce and a ciphertext.
    #[error("not a sealed value")]
    Malformed,
    /// Sealed under another key than this broker's.
    #[error("sealed under key {0:?}, not this broker's seal key")]
    OtherKey(String),
    /// The ciphertext does not authenticate (altered, or another key with the same id).
    #[error("the sealed value does not open")]
    Tampered,
}

/// A value sealed and not yet revealed.
struct Recent {
    sealed: String,
    pseudonym: String,
}

/// A sealed value's nonce digits, when it has them.
fn nonce_digits(sealed: &str) -> Option<[u8; NONCE_DIGITS]> {
    let (_, body) = sealed.split_once('.')?;
    body.as_bytes().get(..NONCE_DIGITS)?.try_into().ok()
}

/// The broker's seal key: seals and opens audit pseudonyms, blinds caller-chosen ids.
pub struct Sealer {
    /// Opens (and, in tests, checks the seal against) the reference XChaCha20-Poly1305.
    cipher: XChaCha20Poly1305,
    /// The secret, for sealing: HChaCha20 of it and the nonce's first 16 bytes is the subkey.
    secret: [u8; 32],
    blind: Hmac<Sha256>,
    key_id: String,
    /// Values not yet revealed ([`MAX_RECENT`]), by their nonce's 32 base64 digits (random:
    /// a short key to hash), with the pseudonym each holds.
    recent: Mutex<HashMap<[u8; NONCE_DIGITS], Recent>>,
}

impl Sealer {
    /// A sealer of its secret (the broker loads it from `DATA/keys`).
    pub fn from_secret(secret: &[u8; 32]) -> Sealer {
        let mut id = Sha256::new();
        id.update(b"unefois seal key id\0");
        id.update(secret);
        // The blinding key is derived, so that one secret serves both jobs without mixing them.
        let mut derive = Sha256::new();
        derive.update(b"unefois/seal/blinding-key/v1\0");
        derive.update(secret);
        Sealer {
            cipher: XChaCha20Poly1305::new(secret.into()),
            secret: *secret,
            // HMAC accepts keys of any length: this cannot fail for 32 bytes.
            blind: <Hmac<Sha256> as Mac>::new_from_slice(&derive.finalize())
                .unwrap_or_else(|_| unreachable!()),
            key_id: hex::encode(&id.finalize()[..8]),
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// The seal key's id (16 hex digits), written before every sealed value.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// `pseudonym` sealed with a fresh nonce: `<key id>.<base64url(nonce ‖ ciphertext)>`.
    pub fn seal(&self, pseudonym: &str) -> String {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let bytes = self.seal_with(&nonce, pseudonym.as_bytes());
        let mut sealed = String::with_capacity(self.key_id.len() + 1 + bytes.len().div_ceil(3) * 4);
        sealed.push_str(&self.key_id);
        sealed.push('.');
        B64.encode_string(bytes, &mut sealed);
        if let Some(nonce) = nonce_digits(&sealed)
            && let Ok(mut recent) = self.recent.lock()
        {
            if recent.len() >= MAX_RECENT {
                recent.clear();
            }
            let (sealed, pseudonym) = (sealed.clone(), pseudonym.to_string());
            recent.insert(nonce, Recent { sealed, pseudonym });
        }
        sealed
    }

    /// `nonce ‖ XChaCha20-Poly1305(plaintext)`, composed as draft-irtf-cfrg-xchacha defines it:
    /// the subkey is HChaCha20 of the key and the nonce's first 16 bytes, then ChaCha20-Poly1305
    /// (RFC 8439, ring's) under it with the nonce `0⁴ ‖ nonce[16..24]`. The same bytes as
    /// chacha20poly1305's `XChaCha20Poly1305` (checked by a test), a third of the instructions.
    fn seal_with(&self, nonce: &[u8; NONCE_BYTES], plaintext: &[u8]) -> Vec<u8> {
        use chacha20::cipher::consts::U10;
        use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

        let subkey = chacha20::hchacha::<U10>(
            GenericArray::from_slice(&self.secret),
            GenericArray::from_slice(&nonce[..16]),
        );
        let mut ietf_nonce = [0u8; 12];
        ietf_nonce[4..].copy_from_slice(&nonce[16..]);
        let mut bytes = Vec::with_capacity(NONCE_BYTES + plaintext.len() + 16);
        bytes.extend_from_slice(nonce);
        let mut sealed = plaintext.to_vec();
        // A 32-byte key always makes a ChaCha20-Poly1305 key; sealing fails only beyond 256 GiB.
        if let Ok(key) = UnboundKey::new(&CHACHA20_POLY1305, subkey.as_slice()) {
            let key = LessSafeKey::new(key);
            if key
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(ietf_nonce),
                    Aad::from(SUBJECT_AAD),
                    &mut sealed,
                )
                .is_ok()
            {
                bytes.extend_from_slice(&sealed);
            }
        }
        bytes
    }

    /// The pseudonym a [`Sealer::seal`] value holds.
    pub fn open(&self, sealed: &str) -> Result<String, SealError> {
        let (key_id, body) = sealed.split_once('.').ok_or(SealError::Malformed)?;
        if key_id != self.key_id {
            return Err(SealError::OtherKey(key_id.chars().take(16).collect()));
        }
        let bytes = B64.decode(body).map_err(|_| SealError::Malformed)?;
        if bytes.len() <= NONCE_BYTES {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let opened = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: SUBJECT_AAD,
                },
            )
            .map_err(|_| SealError::Tampered)?;
        String::from_utf8(opened).map_err(|_| SealError::Tampered)
    }

    /// The audit pseudonym of a record's person: as written in a version 1 entry, opened from
    /// a version 2 one; `None` when a sealed value does not open (logged: damage, or another
    /// broker's key).
    pub fn reveal(&self, subject: RecordedSubject<'_>) -> Option<String> {
        match subject {
            RecordedSubject::Clear(pseudonym) => Some(pseudonym.to_string()),
            RecordedSubject::Sealed(sealed) => match self
                .take_recent(sealed)
                .map_or_else(|| self.open(sealed), Ok)
            {
                Ok(pseudonym) => Some(pseudonym),
                Err(e) => {
                    tracing::warn!(error = %e, "a sealed subject does not open");
                    None
                }
            },
        }
    }

    /// The pseudonym of a value this broker sealed and nobody revealed yet.
    fn take_recent(&self, sealed: &str) -> Option<String> {
        let nonce = nonce_digits(sealed)?;
        let mut recent = self.recent.lock().ok()?;
        // A value with this nonce that differs from the one sealed (altered): `open` says so.
        if recent.get(&nonce)?.sealed != sealed {
            return None;
        }
        recent.remove(&nonce).map(|r| r.pseudonym)
    }

    /// A caller-chosen id as recorded: `hmac:` and 32 hex digits of a keyed digest over the
    /// actor (participant, and agent) and the id. Stable for one actor, so that retries match;
    /// unlinkable across actors, and nobody without the key can test a guess.
    pub fn blind_id(&self, actor: &str, id: &str) -> String {
        let mut m = self.blind.clone();
        m.update(b"unefois/caller-id/v1\0");
        m.update(actor.as_bytes());
        m.update(b"\0");
        m.update(id.as_bytes());
        format!("hmac:{}", hex::encode(&m.finalize().into_bytes()[..16]))
    }

    /// A keyed digest of `parts` (length-prefixed), 32 hex digits: a request's fingerprint as
    /// recorded, which nobody without the key can compare with another participant's.
    pub fn fingerprint<'a>(&self, parts: impl IntoIterator<Item = &'a str>) -> String {
        let mut m = self.blind.clone();
        m.update(b"unefois/fingerprint/v1\0");
        for part in parts {
            m.update(&(part.len() as u64).to_be_bytes());
            m.update(part.as_bytes());
        }
        hex::encode(&m.finalize().into_bytes()[..16])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_pseudonym_opens_and_two_seals_of_one_pseudonym_share_nothing() {
        let sealer = Sealer::from_secret(&[7; 32]);
        let pseudonym = "a3".repeat(32);
        let (a, b) = (sealer.seal(&pseudonym), sealer.seal(&pseudonym));
        assert_ne!(a, b);
        assert_eq!(sealer.open(&a).unwrap(), pseudonym);
        assert_eq!(sealer.open(&b).unwrap(), pseudonym);
        let (body_a, body_b) = (a.split_once('.').unwrap().1, b.split_once('.').unwrap().1);
        // No run of 4 bytes in common beyond chance: compare the decoded bodies byte by byte.
        let (x, y) = (B64.decode(body_a).unwrap(), B64.decode(body_b).unwrap());
        let same = x.iter().zip(&y).filter(|(p, q)| p == q).count();
        assert!(same < x.len() / 8, "{same} of {} bytes in common", x.len());
        assert!(!a.contains(&pseudonym));
    }

    #[test]
    fn the_seal_is_the_reference_xchacha20_poly1305() {
        for (secret, message) in [
            ([7u8; 32], &b"a3"[..]),
            ([0x5e; 32], &[0xab; 64][..]),
            ([1; 32], &b""[..]),
        ] {
            let sealer = Sealer::from_secret(&secret);
            for n in 0..8u8 {
                let nonce: [u8; NONCE_BYTES] =
                    std::array::from_fn(|i| (i as u8).wrapping_mul(31) ^ n);
                let reference = XChaCha20Poly1305::new(&secret.into())
                    .encrypt(
                        XNonce::from_slice(&nonce),
                        Payload {
                            msg: message,
                            aad: SUBJECT_AAD,
                        },
                    )
                    .unwrap();
                let ours = sealer.seal_with(&nonce, message);
                assert_eq!(&ours[..NONCE_BYTES], &nonce);
                assert_eq!(&ours[NONCE_BYTES..], reference.as_slice());
            }
        }
    }

    #[test]
    fn a_value_sealed_here_is_revealed_without_decrypting_and_alike_once_taken() {
        let sealer = Sealer::from_secret(&[7; 32]);
        let sealed = sealer.seal("p1");
        assert_eq!(sealer.recent.lock().unwrap().len(), 1);
        assert_eq!(
            sealer.reveal(RecordedSubject::Sealed(&sealed)).as_deref(),
            Some("p1")
        );
        assert!(sealer.recent.lock().unwrap().is_empty());
        // Revealed again (an auditor's read, a replay): opened, with the same result.
        assert_eq!(
            sealer.reveal(RecordedSubject::Sealed(&sealed)).as_deref(),
            Some("p1")
        );
        // A value altered while it waits is not taken for the one sealed: it does not open.
        let waiting = sealer.seal("p2");
        let mut altered = waiting.clone().into_bytes();
        let middle = altered.len() - 30;
        altered[middle] = if altered[middle] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        assert_eq!(sealer.reveal(RecordedSubject::Sealed(&altered)), None);
        assert_eq!(
            sealer.reveal(RecordedSubject::Sealed(&waiting)).as_deref(),
            Some("p2")
        );
        // Values never revealed do not accumulate.
        for i in 0..MAX_RECENT + 10 {
            sealer.seal(&format!("q{i}"));
        }
        assert!(sealer.recent.lock().unwrap().len() <= MAX_RECENT);
    }

    #[test]
    fn altered_foreign_and_malformed_seals_do_not_open() {
        let sealer = Sealer::from_secret(&[7; 32]);
        let other = Sealer::from_secret(&[8; 32]);
        let sealed = sealer.seal("p");
        assert!(matches!(other.open(&sealed), Err(SealError::OtherKey(_))));
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            sealer.open(&String::from_utf8(altered).unwrap()),
            Err(SealError::Tampered)
        );
        for bad in ["", "nodot", "x.y", &format!("{}.AAAA", sealer.key_id())] {
            assert!(sealer.open(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn blinded_ids_are_stable_per_actor_and_differ_across_actors_and_keys() {
        let sealer = Sealer::from_secret(&[7; 32]);
        let id = "dossier-42";
        assert_eq!(sealer.blind_id("lyon", id), sealer.blind_id("lyon", id));
        assert_ne!(sealer.blind_id("lyon", id), sealer.blind_id("ccas", id));
        assert_ne!(
            sealer.blind_id("lyon", id),
            Sealer::from_secret(&[8; 32]).blind_id("lyon", id)
        );
        assert!(!sealer.blind_id("lyon", id).contains("42"));
        assert_ne!(
            sealer.fingerprint(["ab", "c"]),
            sealer.fingerprint(["a", "bc"]),
            "length-prefixed"
        );
    }
}
