//! The boundary between the Une Fois broker and the provider administrations.
//!
//! A provider plugs its existing system in through an [`Adapter`]: the broker asks it
//! for some claims about a subject ([`AdapterRequest`]) and gets typed values back
//! ([`Claims`]), which every adapter checks against the attestation type's schema
//! ([`check_claims`]) before the broker signs anything. This crate holds the trait,
//! the claim types and the built-in adapters (`static`, `http`); apart from the
//! `http` adapter's client (rustls with the ring provider), it knows nothing of TLS,
//! storage, gRPC or protobuf. Without its default feature `runtime`, it is only what a
//! registry names (claim types, adapters' configurations and their checks, the origin policy):
//! what the domain depends on, with no async runtime or HTTP client.

#![forbid(unsafe_code)]
// Without `runtime`, what only an adapter at work reads (answers' mappings, error codes, the
// reserved headers) is compiled but unused: the configuration types keep their whole shape.
#![cfg_attr(not(feature = "runtime"), allow(dead_code))]

pub mod adapter;
pub mod civil_status;
pub mod claims;
pub mod error;
pub mod http;
pub mod origin;
pub mod rate_limit;
#[cfg(feature = "runtime")]
pub mod static_dataset;

#[cfg(feature = "runtime")]
pub use adapter::{Adapter, AdapterRequest, Attempt, check_request};
pub use adapter::{Answer, LegalBasis};
pub use civil_status::{CivilStatus, Sex};
pub use claims::{ClaimSpec, ClaimType, ClaimValue, Claims, MAX_STRING_BYTES, check_claims, quote};
pub use error::AdapterError;
pub use http::{
    ClaimMapping, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_RETRIES, DEFAULT_TIMEOUT_MS, HttpConfig,
    HttpConfigError, HttpMethod, MAX_JSON_DEPTH, Placeholder, SexCodes,
};
#[cfg(feature = "runtime")]
pub use http::{HttpAdapter, TokenCaches};
pub use origin::{Origin, OriginPolicy, Proof};
pub use rate_limit::ProviderRateLimit;
#[cfg(feature = "runtime")]
pub use static_dataset::{
    DatasetError, MAX_DATASET_BYTES, MAX_SUBJECT_BYTES, RecordAt, StaticDataset,
};
