//! The Une Fois broker: routes consented attestations between administrations over mTLS and
//! records every flow. The `unefois` binary (crate `unefois-cli`) only parses flags and calls
//! [`run`]; tests bind port 0 and call the same function.

#![forbid(unsafe_code)]

/// The domain (crate `unefois-domain`, no I/O): what the CLI and the tests name through the
/// broker.
pub use unefois_domain::{event, idp, pseudonym, registry, seal, subject};
/// The journal, the broker's source of truth: its own crate (`unefois-journal`), which depends
/// on none of ours.
pub use unefois_journal as journal;
/// What only the broker's user may read (0700 folders, 0600 files), shared with the journal.
pub(crate) use unefois_journal::private;
// The rest of the domain, under the paths the orchestration names it by.
pub(crate) use unefois_domain::{
    attestation, caller, consent, error, identity, mandate, origin, page, policy, provider_config,
    validate,
};

pub(crate) mod accesses;
pub mod audit;
pub mod auditor;
pub mod client;
pub(crate) mod consents;
pub mod data_lock;
pub mod descriptors;
pub(crate) mod evidence;
pub mod exchange;
pub(crate) mod federation;
pub(crate) mod gathered_writes;
pub mod grpc;
pub(crate) mod idempotency;
pub mod keys;
pub mod listener;
pub(crate) mod mandates;
pub mod metrics;
pub(crate) mod ops;
pub(crate) mod prefill;
pub mod preview;
pub mod provider_client;
pub(crate) mod provider_gate;
pub(crate) mod ratelimit;
pub mod receipt;
pub(crate) mod resilience;
pub mod server;
pub(crate) mod shed;
pub mod signing;
pub(crate) mod state;
/// Storage (crate `unefois-store`): the `Store` trait and its backends.
pub use unefois_store as store;
/// Backup and restore of a data directory (the store's).
pub use unefois_store::backup;

pub use server::{BrokerError, Config, run};
