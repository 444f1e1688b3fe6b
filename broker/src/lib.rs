//! The Une Fois broker: routes consented attestations between administrations over mTLS and
//! records every flow. The `unefois` binary (crate `unefois-cli`) only parses flags and calls
//! [`run`]; tests bind port 0 and call the same function.

#![forbid(unsafe_code)]

/// The journal, the broker's source of truth: its own crate (`unefois-journal`), which depends
/// on none of ours.
pub use unefois_journal as journal;
/// What only the broker's user may read (0700 folders, 0600 files), shared with the journal.
pub use unefois_journal::private;

pub mod attestation;
pub mod audit;
pub mod auditor;
pub mod backup;
pub mod caller;
pub mod client;
pub mod consent;
pub mod data_lock;
pub mod derived;
pub mod descriptors;
pub mod error;
pub mod event;
pub mod evidence;
pub mod exchange;
pub mod federation;
pub mod gathered_writes;
pub mod grpc;
pub mod idempotency;
pub mod identity;
pub mod keys;
pub mod listener;
pub mod mandate;
pub mod metrics;
pub mod ops;
pub mod origin;
pub mod page;
pub mod policy;
pub mod prefill;
pub mod preview;
pub mod provider_client;
pub mod provider_gate;
pub mod pseudonym;
pub mod ratelimit;
pub mod receipt;
pub mod registry;
pub mod reserve;
pub mod resilience;
pub mod seal;
pub mod server;
pub mod shed;
pub mod signing;
pub mod state;
pub mod store;
pub mod subject;
pub mod validate;

pub use server::{BrokerError, Config, run};
