//! Une Fois's domain, without I/O beyond reading the registry's own files: who a subject and a
//! caller are, what the broker refuses and why, what it records, what an attestation says, and
//! the rules — the policy (`decide`, `release`), consents and mandates — as pure functions over
//! facts and time. The broker orchestrates it; the store keeps its records; it depends on none
//! of them (`.ci/run` checks it).

#![forbid(unsafe_code)]

pub mod agent_identity;
pub mod attestation;
pub mod caller;
pub mod consent;
pub mod derived;
pub mod error;
pub mod event;
pub mod identity;
pub mod idp;
pub mod mandate;
pub mod origin;
pub mod page;
pub mod policy;
pub mod prefill;
pub mod projection;
pub mod provider_config;
pub mod pseudonym;
pub mod registry;
pub mod seal;
pub mod subject;
#[cfg(test)]
mod test_support;
pub mod validate;
