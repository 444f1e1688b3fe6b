//! The Une Fois broker: routes consented attestations between administrations over mTLS and
//! records every flow. The `unefois` binary only parses flags and calls [`run`]; tests bind
//! port 0 and call the same function.

#![forbid(unsafe_code)]

pub mod caller;
pub mod client;
pub mod federation;
pub mod grpc;
pub mod listener;
pub mod ops;
pub mod registry;
pub mod server;

pub use server::{BrokerError, Config, run};
