//! The ways a provider can fail, as every adapter reports them.

use std::time::Duration;

/// Why a provider gave no claims.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The provider does not know the subject.
    #[error("subject unknown to the provider")]
    NotFound,
    /// The provider cannot answer now (down, overloaded, misconfigured).
    #[error("provider unavailable: {reason}")]
    Unavailable {
        /// What went wrong, for the operator (never a claim value or subject id).
        reason: String,
        /// When the provider said to try again, if it did (HTTP 429 or 503 with `Retry-After`,
        /// gRPC `RetryInfo`): only then, since the broker holds every call to that provider
        /// until it has passed.
        retry_after: Option<Duration>,
    },
    /// The provider refused the broker's credentials (HTTP 401 or 403, or an OAuth2 token
    /// endpoint refusing the client): an expired or revoked token, a key without the rights.
    /// Told apart from a broken answer because only an operator can fix it.
    #[error("provider refused the broker's credentials: {0}")]
    AuthFailed(String),
    /// The provider answered something the schema or the request does not allow.
    #[error("invalid provider response: {0}")]
    InvalidResponse(String),
    /// The request's deadline passed before the provider answered.
    #[error("provider deadline exceeded")]
    DeadlineExceeded,
    /// The request's subject cannot be sent to this provider (e.g. its route matches on
    /// civil-status fields and the subject is not a `pivot:` identity). Decided from the request
    /// alone, before any call: the caller's error, never the provider's (INVALID_ARGUMENT).
    #[error("{0}")]
    SubjectNotAccepted(String),
}
