//! The boundary between the Une Fois broker and the provider administrations.
//!
//! A provider plugs its existing system in through an [`Adapter`]: the broker asks it
//! for some claims about a subject ([`AdapterRequest`]) and gets typed values back
//! ([`Claims`]), which every adapter checks against the attestation type's schema
//! ([`check_claims`]) before the broker signs anything. This crate holds the trait,
//! the claim types and the built-in adapters (`static`, `http`); apart from the
//! `http` adapter's client (rustls with the ring provider), it knows nothing of TLS,
//! storage, gRPC or protobuf.

#![forbid(unsafe_code)]

pub mod adapter;
pub mod civil_status;
pub mod claims;
pub mod http;
pub mod origin;
pub mod rate_limit;
pub mod static_dataset;

pub use adapter::{
    Adapter, AdapterError, AdapterRequest, Answer, Attempt, LegalBasis, check_request,
};
pub use civil_status::{CivilStatus, Sex};
pub use claims::{ClaimSpec, ClaimType, ClaimValue, Claims, MAX_STRING_BYTES, check_claims, quote};
pub use http::{
    ClaimMapping, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_RETRIES, DEFAULT_TIMEOUT_MS, HttpAdapter,
    HttpConfig, HttpConfigError, HttpMethod, MAX_JSON_DEPTH, Placeholder, SexCodes,
};
pub use origin::{Origin, OriginPolicy, Proof};
pub use rate_limit::ProviderRateLimit;
pub use static_dataset::{DatasetError, MAX_DATASET_BYTES, MAX_SUBJECT_BYTES, StaticDataset};
