//! The Une Fois broker: routes consented attestations between administrations over mTLS and
//! records every flow. The `unefois` binary only parses flags and calls [`run`]; tests bind
//! port 0 and call the same function.

#![forbid(unsafe_code)]

pub mod attestation;
pub mod audit;
pub mod auditor;
pub mod backup;
pub mod caller;
pub mod client;
pub mod consent;
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
pub mod journal;
pub mod keys;
pub mod listener;
pub mod mandate;
pub mod metrics;
pub mod ops;
pub mod origin;
pub mod page;
pub mod prefill;
pub mod preview;
pub mod private;
pub mod provider_client;
pub mod provider_gate;
pub mod pseudonym;
pub mod ratelimit;
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
