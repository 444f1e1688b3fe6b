//! What a Fetch gives: a signed attestation with the receipt of its audit entry ([`Fetched`]),
//! or, in a preview, the values held for the citizen to check ([`Previewed`]). Apart from the
//! exchange that makes them, so that the tables that keep them (recent answers, previews) need
//! nothing of it.

use time::OffsetDateTime;
use unefois_adapters::Claims;

use crate::attestation::Attestation;
use crate::policy::{Decision, FetchInput};
use crate::signing::Envelope;

/// A granted Fetch.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The attestation, decoded.
    pub attestation: Attestation,
    /// The signed envelope.
    pub envelope: Envelope,
    /// The claims with their declared types (dates stay dates).
    pub claims: Claims,
    /// Where its record stands in the audit log, verifiable offline.
    pub receipt: Receipt,
    /// The key of the subject digest of the provider's statement the attestation carries, for
    /// the consumer (beside the attestation, never inside it); None without a statement.
    pub origin_subject_key: Option<[u8; 32]>,
}

/// Beside the attestation, never inside it: the exchange's audit entry, the checkpoint that
/// includes it, and the inclusion proof (DESIGN.md "Receipt").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The entry's index in the log (its journal sequence number).
    pub leaf_index: u64,
    /// The exact entry bytes.
    pub entry: Vec<u8>,
    /// The signed checkpoint (C2SP signed note).
    pub checkpoint: String,
    /// The tree size that checkpoint states.
    pub tree_size: u64,
    /// The inclusion proof of the entry in that tree.
    pub inclusion_proof: Vec<[u8; 32]>,
}

/// Values retrieved for the citizen to check (preview): held in memory only, released to the
/// consumer as a signed attestation only at confirmation.
#[derive(Clone, Debug)]
pub struct Previewed {
    /// The request, replayed through the policy at confirmation.
    pub input: FetchInput,
    /// What the policy decided at preview, replayed at confirmation.
    pub(crate) decision: Decision,
    /// The claims the consumer would receive.
    pub claims: Claims,
    /// The provider's proof of origin for those claims, if it signed.
    pub origin: Option<crate::origin::Recorded>,
    /// The provider that answered.
    pub provider: String,
    /// When the provider answered.
    pub retrieved_at: OffsetDateTime,
}
