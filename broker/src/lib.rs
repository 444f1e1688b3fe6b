//! The Une Fois broker: routes consented attestations between administrations over mTLS and
//! records every flow. The `unefois` binary (crate `unefois-cli`) only parses flags and calls
//! [`run`]; tests bind port 0 and call the same function.

#![forbid(unsafe_code)]

/// The domain (crate `unefois-domain`, no I/O): what the CLI and the tests name through the
/// broker.
pub use unefois_domain::{event, idp, seal, subject};
/// The registry: the domain's model and its validation, and its reading from disk
/// ([`registry::load`]).
pub mod registry {
    pub use crate::registry_folder::{Folder, load};
    pub use unefois_domain::registry::*;
}
/// The journal, the broker's source of truth: its own crate (`unefois-journal`), which depends
/// on none of ours.
pub use unefois_journal as journal;
/// What only the broker's user may read (0700 folders, 0600 files), shared with the journal.
pub(crate) use unefois_journal::private;
// The rest of the domain, under the paths the orchestration names it by.
pub(crate) use unefois_domain::{
    agent_identity, attestation, caller, consent, error, identity, mandate, origin, page, policy,
    provider_config, pseudonym, validate,
};

// Public whole: the participant's side that the CLI drives (`client`, `receipt`: the files a
// consumer and a citizen verify offline, `auditor`: `audit verify`), the keys the tests and
// benches read and sign with (`keys`, `signing`), the metrics recorder a test measures.
pub mod auditor;
pub mod client;
pub mod keys;
pub mod metrics;
pub mod receipt;
pub mod signing;

// The crate's own: orchestration, providers, network, the gRPC edge.
pub(crate) mod accesses;
pub(crate) mod act_locks;
pub(crate) mod audit;
pub(crate) mod consents;
pub(crate) mod contests;
pub(crate) mod data_lock;
pub(crate) mod descriptors;
pub(crate) mod evidence;
pub(crate) mod exchange;
pub(crate) mod federation;
pub(crate) mod fetched;
pub(crate) mod forwarded;
pub(crate) mod gathered_writes;
pub(crate) mod gcra;
pub(crate) mod grpc;
pub(crate) mod http_listener;
pub(crate) mod idempotency;
pub(crate) mod listener;
pub(crate) mod mandates;
pub(crate) mod ops;
pub(crate) mod prefill;
pub(crate) mod preview;
pub(crate) mod provider_client;
pub(crate) mod provider_gate;
pub(crate) mod ratelimit;
pub(crate) mod registry_folder;
pub(crate) mod resilience;
pub(crate) mod server;
pub(crate) mod shed;
pub(crate) mod state;
pub mod web;
/// Storage (crate `unefois-store`): the `Store` trait and its backends.
pub use unefois_store as store;
/// Backup and restore of a data directory (the store's).
pub use unefois_store::backup;

// What the CLI, the tests and the fuzz targets name; the rest is the crate's own.
pub use audit::LogSigner;
pub use data_lock::{DataLockError, LOCK_FILE as DATA_LOCK_FILE, holder as data_dir_holder};
pub use descriptors::raise_nofile_limit;
pub use listener::{AcceptLimits, TlsFiles};
pub use provider_client::provider_connections;
pub use server::{BrokerError, Config, ReloadRequest, StoreLocation, run};

/// The defaults of [`Config`]'s bounds (the CLI's flags show them).
pub mod defaults {
    pub use crate::grpc::limits::DEFAULT_MAX_REQUEST_BYTES as MAX_REQUEST_BYTES;
    pub use crate::preview::{
        DEFAULT_PER_PARTICIPANT as PREVIEWS_PER_PARTICIPANT, DEFAULT_TTL as PREVIEW_TTL,
    };
}
