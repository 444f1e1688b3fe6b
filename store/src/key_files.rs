//! The key files of a data directory (`DATA/keys`): their names, what each is, and since when
//! the broker has it. The broker loads them (its `keys` module); a backup must carry those the
//! broker has had since its first version ([`crate::backup::required_keys`]).

/// The folder of the keys in the data directory.
pub const KEYS_DIR: &str = "keys";
/// The Ed25519 seed that signs attestations.
pub const ATTESTATION_KEY: &str = "attestation.ed25519";
/// The Ed25519 seed that signs the log's checkpoints.
pub const LOG_KEY: &str = "log.ed25519";
/// The HMAC key of the audit pseudonyms (journal, log, derived state).
pub const AUDIT_PSEUDONYM_KEY: &str = "pseudonym-audit.key";
/// The HMAC key of the pairwise pseudonyms (attestations).
pub const PAIRWISE_PSEUDONYM_KEY: &str = "pseudonym-pairwise.key";
/// The key that seals each entry's audit pseudonym and blinds caller-chosen ids (the
/// domain's `seal`).
pub const AUDIT_SEAL_KEY: &str = "audit-seal.key";

/// What a key is: how its id is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// A secret used as is (an HMAC key): its id is the domain's `pseudonym::secret_key_id`.
    Secret,
    /// An Ed25519 seed: its id is the broker's `ed25519_key_id` of its public key, which anyone holding
    /// the published verifier key can compute.
    Ed25519,
}

/// Since when the broker has a key: what a missing one means over a journal with records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Since {
    /// Since the broker's first version: every journal with records was written with it, so a
    /// missing one is lost, and the start is refused.
    FirstVersion,
    /// Added by a later version: over a journal that never recorded its id, it is created
    /// (logged as a warning); over one that did, it is lost, and the start is refused.
    LaterVersion,
}

/// One key of `DATA/keys`.
#[derive(Clone, Copy, Debug)]
pub struct KeySpec {
    /// Its file name in `DATA/keys`.
    pub file: &'static str,
    /// How its id is computed.
    pub kind: KeyKind,
    /// What it is, for people.
    pub what: &'static str,
    /// Since when the broker has it.
    pub since: Since,
}

/// Every key of the broker: one more key is one more line here, then the broker's `Keys::secret`.
pub const KEYS: &[KeySpec] = &[
    KeySpec {
        file: ATTESTATION_KEY,
        kind: KeyKind::Ed25519,
        what: "attestation signing key",
        since: Since::FirstVersion,
    },
    KeySpec {
        file: LOG_KEY,
        kind: KeyKind::Ed25519,
        what: "log key (checkpoints)",
        since: Since::FirstVersion,
    },
    KeySpec {
        file: AUDIT_PSEUDONYM_KEY,
        kind: KeyKind::Secret,
        what: "audit pseudonym key",
        since: Since::FirstVersion,
    },
    KeySpec {
        file: PAIRWISE_PSEUDONYM_KEY,
        kind: KeyKind::Secret,
        what: "pairwise pseudonym key",
        since: Since::FirstVersion,
    },
    KeySpec {
        file: AUDIT_SEAL_KEY,
        kind: KeyKind::Secret,
        what: "audit seal key",
        since: Since::LaterVersion,
    },
];
