//! Everything a running broker serves from, shared by all services.

use std::sync::Arc;
use std::time::Duration;

use crate::federation::Federation;
use crate::idempotency::RecentAnswers;
use crate::pseudonym::Pseudonymizer;
use crate::signing::AttestationSigner;
use crate::store::Store;

/// Longest a provider may take when the caller sets no shorter deadline.
pub const DEFAULT_PROVIDER_TIMEOUT: Duration = Duration::from_secs(5);

/// The shared state of a running broker.
pub struct State {
    /// Registry, adapters, revocations in force.
    pub federation: Arc<Federation>,
    /// Journal and derived state.
    pub store: Arc<dyn Store>,
    /// Pseudonym keys.
    pub pseudonyms: Pseudonymizer,
    /// The seal key: the person of each entry sealed, caller-chosen ids blinded.
    pub sealer: Arc<crate::seal::Sealer>,
    /// Attestation signing key.
    pub signer: AttestationSigner,
    /// Upper bound of a provider call.
    pub provider_timeout: Duration,
    /// Serialises this broker's consent grants, mandate creations and revocations about one
    /// person or under one request id, so that two concurrent retries cannot both create
    /// (across brokers, the store holds the same keys: `Store::serialise`).
    pub grants: crate::act_locks::ActLocks,
    /// Rate limits and the harvesting alarm.
    pub limits: crate::ratelimit::RateLimits,
    /// Recent Fetch answers, for idempotent retries (memory only).
    pub recent: RecentAnswers,
    /// Previews waiting for the citizen's confirmation (memory only).
    pub previews: crate::preview::Previews,
}
