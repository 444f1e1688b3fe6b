//! The [`Adapter`] trait and what flows through it: the broker's request to a
//! provider and what the provider answers ([`AdapterError`] when it fails).

#[cfg(feature = "runtime")]
use std::fmt;

#[cfg(feature = "runtime")]
use crate::civil_status::CivilStatus;
use crate::claims::Claims;
pub use crate::error::AdapterError;

/// Why the exchange is lawful, passed to the provider so it can log and enforce it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LegalBasis {
    /// The subject consented; the id of the recorded consent.
    Consent {
        /// Identifier of the consent record in the broker.
        consent_id: String,
    },
    /// A text of law authorises the exchange without consent.
    Law {
        /// The legal reference, e.g. "CRPA, art. L. 114-8".
        citation: String,
    },
}

#[cfg(feature = "runtime")]
/// What the broker asks a provider.
///
/// `Debug` does not print the subject: a raw subject id must never reach logs.
#[derive(Clone)]
pub struct AdapterRequest {
    /// Normalised subject id, e.g. `test:alice`.
    pub subject: String,
    /// The attestation type asked for, e.g. `caf.quotient_familial`.
    pub attestation_type: String,
    /// Requested claims, already restricted to the ones the consumer is allowed.
    pub claims: Vec<String>,
    /// The consumer participant the attestation is for.
    pub consumer: String,
    /// The registered purpose code of the exchange.
    pub purpose: String,
    /// The legal basis of the exchange.
    pub legal_basis: LegalBasis,
    /// The request id as the broker records it in its audit log (`hmac:` and 32 hex digits, a
    /// keyed digest of the caller and its id), empty when the caller gave none: it lets a
    /// provider's logs be matched with the audit log, and reveals nothing of the caller's own
    /// id (which a careless client could fill with a subject id).
    pub request_id: String,
    /// The consumer's SIRET as the registry declares it (`participants[i].siret`), if any.
    pub consumer_siret: Option<String>,
    /// The purpose's label as the registry declares it.
    pub purpose_label: String,
    /// The subject's civil-status fields, for a `pivot:` subject (None for any other scheme).
    pub civil_status: Option<CivilStatus>,
    /// When the broker stops waiting for the answer.
    pub deadline: tokio::time::Instant,
}

#[cfg(feature = "runtime")]
impl fmt::Debug for AdapterRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdapterRequest")
            .field("subject", &"<redacted>")
            .field("attestation_type", &self.attestation_type)
            .field("claims", &self.claims)
            .field("consumer", &self.consumer)
            .field("purpose", &self.purpose)
            .field("legal_basis", &self.legal_basis)
            .field("request_id", &self.request_id)
            .field("consumer_siret", &self.consumer_siret)
            .field("purpose_label", &self.purpose_label)
            .field(
                "civil_status",
                &self.civil_status.as_ref().map(|_| "<redacted>"),
            )
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// What a provider answered: the claims, and its verified signature when it signed them.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The requested claims the provider holds.
    pub claims: Claims,
    /// The provider's signature, verified with its registered keys (crate::origin).
    pub origin: Option<crate::origin::Origin>,
}

#[cfg(feature = "runtime")]
/// A provider administration's system, as the broker sees it.
#[async_trait::async_trait]
pub trait Adapter: Send + Sync + fmt::Debug {
    /// Returns the requested claims the provider holds for the subject (claims it does not hold are absent).
    async fn fetch(&self, request: &AdapterRequest) -> Result<Claims, AdapterError>;

    /// The claims with the provider's verified signature, if it signed them. Adapters that
    /// check signatures override it (and implement `fetch` with it); the others answer unsigned.
    async fn answer(&self, request: &AdapterRequest) -> Result<Answer, AdapterError> {
        Ok(Answer {
            claims: self.fetch(request).await?,
            origin: None,
        })
    }

    /// The adapter's kind, for logs and metrics ("static", "http", "grpc").
    fn kind(&self) -> &'static str;

    /// Refusals that depend on the request alone ([`AdapterError::SubjectNotAccepted`]): the
    /// broker asks before the provider's breaker and concurrency limit, which such a refusal
    /// must not touch. `fetch` refuses the same requests.
    fn precheck(&self, _request: &AdapterRequest) -> Result<(), AdapterError> {
        Ok(())
    }
}

#[cfg(feature = "runtime")]
/// What one attempt at a provider gave, for adapters that retry.
#[derive(Debug)]
pub enum Attempt {
    /// The claims, with the provider's verified signature if any.
    Done(Answer),
    /// A failure worth another try (idempotent call, transport or transient failure).
    Retryable(AdapterError),
    /// A failure to return as it is.
    Final(AdapterError),
}

#[cfg(feature = "runtime")]
/// The checks every adapter makes before calling its provider: the deadline has not passed,
/// and the request is for the type the adapter serves (another type is a routing error in the
/// broker, answered `Unavailable` rather than with another type's data).
pub fn check_request(
    kind: &str,
    serves: &str,
    request: &AdapterRequest,
) -> Result<(), AdapterError> {
    if tokio::time::Instant::now() >= request.deadline {
        return Err(AdapterError::DeadlineExceeded);
    }
    if request.attestation_type != serves {
        return Err(AdapterError::Unavailable {
            reason: format!(
                "{kind} adapter serves {}, not {}",
                crate::claims::quote(serves),
                crate::claims::quote(&request.attestation_type)
            ),
            retry_after: None,
        });
    }
    Ok(())
}
