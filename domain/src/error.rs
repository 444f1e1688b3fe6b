//! Why a request is refused or fails, in domain terms. Each variant has one gRPC status code
//! and one `ErrorReason` (assigned in `grpc::status`, the only place that knows gRPC).

use std::time::Duration;

use crate::registry::Role;
use crate::subject::SubjectError;

/// A refusal or failure explained to the caller.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A malformed or out-of-bounds field.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The request field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The subject id is malformed or not accepted.
    #[error("subject: {0}")]
    InvalidSubject(#[from] SubjectError),
    /// The purpose is not registered.
    #[error("purpose {0:?} is not registered")]
    UnknownPurpose(String),
    /// The attestation type is not registered.
    #[error("attestation type {0:?} is not registered")]
    UnknownAttestationType(String),
    /// The connection carries no usable client certificate.
    #[error("no usable client certificate: {0}")]
    NoClientCertificate(String),
    /// The certificate's SPIFFE ID names no participant of this federation.
    #[error("{0} is not a participant of this federation")]
    UnknownParticipant(String),
    /// The certificate was revoked (possibly after the connection opened).
    #[error("the client certificate is revoked")]
    CertificateRevoked,
    /// The caller's roles do not allow this call.
    #[error("participant {participant:?} does not have the {role} role")]
    WrongRole {
        /// Who called.
        participant: String,
        /// The role the call needs.
        role: Role,
    },
    /// No habilitation allows this consumer this attestation type.
    #[error("{consumer:?} holds no habilitation for {attestation_type:?}")]
    NoHabilitation {
        /// The consumer.
        consumer: String,
        /// The type asked for.
        attestation_type: String,
    },
    /// The habilitation that would allow it has expired.
    #[error("habilitation {0:?} has expired")]
    HabilitationExpired(String),
    /// The habilitation does not cover this purpose.
    #[error("habilitation {habilitation:?} does not cover purpose {purpose:?}")]
    PurposeNotAllowed {
        /// The habilitation.
        habilitation: String,
        /// The purpose asked for.
        purpose: String,
    },
    /// A requested claim is not allowed by the habilitation.
    #[error("habilitation {habilitation:?} does not allow claim {claim:?}")]
    ClaimNotAllowed {
        /// The habilitation.
        habilitation: String,
        /// The claim asked for.
        claim: String,
    },
    /// No active consent of the subject covers this consumer, type and purpose.
    #[error("no active consent of the subject for {consumer:?}, {attestation_type:?}, {purpose:?}")]
    NoConsent {
        /// The consumer.
        consumer: String,
        /// The type asked for.
        attestation_type: String,
        /// The purpose.
        purpose: String,
    },
    /// The matching consent was revoked.
    #[error("consent {0} was revoked")]
    ConsentRevoked(String),
    /// The matching consent expired.
    #[error("consent {0} has expired")]
    ConsentExpired(String),
    /// A mediator acts for a citizen without naming a mandate.
    #[error("{0}")]
    NoMandate(String),
    /// The mandate does not exist, or the caller may not see it.
    #[error("mandate {0:?} not found")]
    UnknownMandate(String),
    /// The caller is not an agent of the structure that holds the mandate.
    #[error("the caller is not an agent of {structure:?}, which holds mandate {mandate}")]
    NotAgentOfStructure {
        /// The mandate.
        mandate: String,
        /// The structure that holds it.
        structure: String,
    },
    /// A mediation structure's own certificate was used for an act only one of its agents may
    /// do (taking a mandate at the desk): the agent is named in the mandate and the log.
    #[error(
        "taking a mandate needs one of {structure:?}'s agents: connect with the agent's \
         certificate ({structure}/<agent>), not the structure's"
    )]
    AgentRequired {
        /// The structure whose certificate was used.
        structure: String,
    },
    /// The mandate was given by another subject than the request's.
    #[error("mandate {0} was given by another person than the request's subject")]
    MandateSubjectMismatch(String),
    /// The mandate has been revoked.
    #[error("mandate {0} was revoked")]
    MandateRevoked(String),
    /// The mandate has expired.
    #[error("mandate {0} has expired")]
    MandateExpired(String),
    /// The request's purpose is outside the mandate's scope.
    #[error("mandate {mandate} does not cover purpose {purpose:?}")]
    MandateOutOfScope {
        /// The mandate.
        mandate: String,
        /// The purpose asked for.
        purpose: String,
    },
    /// No preview has this id for the caller (never made, expired, or another caller's).
    #[error("no preview {0:?} for this caller; it may have expired")]
    UnknownPrefill(String),
    /// The preview was already confirmed or rejected.
    #[error("preview {0} was already {1}")]
    PrefillClosed(String, &'static str),
    /// Another call is confirming (or rejecting) the preview right now.
    #[error(
        "preview {0} is being confirmed by another call right now; once it ends, a Confirm \
         with the same prefill_id returns what it decided"
    )]
    PrefillInProgress(String),
    /// The preview was made for another person than the Confirm names.
    #[error("preview was made for another person than the request's subject")]
    PreviewSubjectMismatch,
    /// A participant holds as many open previews as it may.
    #[error(
        "participant {participant:?} already holds {limit} previews waiting for the citizen's \
         decision, the most one participant may; confirm or reject some, or let them expire"
    )]
    TooManyPreviews {
        /// The participant.
        participant: String,
        /// Its share of the previews table.
        limit: usize,
        /// When its oldest preview expires and frees a place.
        retry_after: std::time::Duration,
    },
    /// The form is not registered.
    #[error("form {0:?} is not registered")]
    UnknownForm(String),
    /// The consent does not exist or is not visible to the caller.
    #[error("consent {0:?} not found")]
    UnknownConsent(String),
    /// The provider does not know the subject.
    #[error("the provider does not know this subject")]
    SubjectNotFound,
    /// The provider cannot answer now.
    #[error("provider {provider:?} unavailable: {reason}")]
    ProviderUnavailable {
        /// The provider.
        provider: String,
        /// Why.
        reason: String,
        /// When to try again, if the provider said.
        retry_after: Option<Duration>,
    },
    /// The provider's circuit breaker is open after repeated failures.
    #[error("provider {provider:?} is failing; calls are suspended for now")]
    ProviderCircuitOpen {
        /// The provider.
        provider: String,
        /// When to try again.
        retry_after: Option<Duration>,
    },
    /// The provider refused the broker's credentials (an expired or revoked token, a key
    /// without the rights): only an operator can fix it.
    #[error(
        "provider {provider:?} refused the broker's credentials ({reason}); an operator of the \
         broker must renew them"
    )]
    ProviderAuthFailed {
        /// The provider.
        provider: String,
        /// What the provider answered (an HTTP status, an OAuth2 error code; never a secret).
        reason: String,
    },
    /// The provider answered something that does not fit the schema.
    #[error("provider {provider:?} sent an invalid response")]
    ProviderInvalidResponse {
        /// The provider.
        provider: String,
    },
    /// The provider did not answer within the deadline.
    #[error("provider {0:?} did not answer in time")]
    ProviderDeadline(String),
    /// The journal or the derived state cannot record: nothing is answered without its record.
    #[error("the broker cannot record this request now; retry later")]
    StoreUnavailable,
    /// A tree size beyond the log, or zero where a tree is needed.
    #[error("{0}")]
    TreeSizeOutOfRange(String),
    /// A leaf index outside the tree.
    #[error("{0}")]
    LeafIndexOutOfRange(String),
    /// The request message is larger than the broker accepts.
    #[error("request larger than the {limit} bytes accepted")]
    RequestTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The consumer is over its rate limit.
    #[error("rate limit exceeded; retry later")]
    RateLimited {
        /// When a call will be admitted again.
        retry_after: Duration,
    },
    /// A request id was reused for a different request.
    #[error("request id {0:?} was already used for a different request")]
    RequestIdReused(String),
    /// The call needs the citizen's ID token and none was given.
    #[error("the citizen's ID token (id_token) is required as identity evidence")]
    IdentityEvidenceRequired,
    /// The ID token is not valid identity evidence.
    #[error("identity evidence refused: {0}")]
    IdentityEvidenceInvalid(#[from] crate::identity::IdentityError),
    /// The ID token proves another subject than the request's.
    #[error("the ID token's subject is not the request's subject")]
    SubjectMismatch,
    /// The connection went over the per-participant connection cap: its calls are refused and
    /// it is closed shortly after.
    #[error(
        "{identity} already holds {limit} connections to the broker, the most allowed per \
         participant; this connection will be closed: make your calls on an open one"
    )]
    TooManyConnections {
        /// The certificate's identity (SPIFFE ID), as counted.
        identity: String,
        /// The per-participant cap in force.
        limit: usize,
    },
}

impl ApiError {
    /// The `ErrorReason` name of this error (the closed list of proto/unefois/v1/common.proto),
    /// as callers receive it and as the journal records it.
    pub fn reason_code(&self) -> &'static str {
        use ApiError as E;
        match self {
            E::InvalidArgument { .. } | E::InvalidSubject(_) => "INVALID_ARGUMENT",
            E::UnknownPurpose(_) => "UNKNOWN_PURPOSE",
            E::UnknownAttestationType(_) => "UNKNOWN_ATTESTATION_TYPE",
            E::NoClientCertificate(_) => "NO_CLIENT_CERTIFICATE",
            E::UnknownParticipant(_) => "UNKNOWN_PARTICIPANT",
            E::CertificateRevoked => "CERTIFICATE_REVOKED",
            E::WrongRole { .. } => "WRONG_ROLE",
            E::NoHabilitation { .. } => "NO_HABILITATION",
            E::HabilitationExpired(_) => "HABILITATION_EXPIRED",
            E::PurposeNotAllowed { .. } => "PURPOSE_NOT_ALLOWED",
            E::ClaimNotAllowed { .. } => "CLAIM_NOT_ALLOWED",
            E::NoConsent { .. } => "NO_CONSENT",
            E::ConsentRevoked(_) => "CONSENT_REVOKED",
            E::ConsentExpired(_) => "CONSENT_EXPIRED",
            E::NoMandate(_) => "NO_MANDATE",
            E::UnknownMandate(_) => "UNKNOWN_MANDATE",
            E::NotAgentOfStructure { .. } | E::AgentRequired { .. } => "NOT_AGENT_OF_STRUCTURE",
            E::MandateSubjectMismatch(_) => "MANDATE_SUBJECT_MISMATCH",
            E::MandateRevoked(_) => "MANDATE_REVOKED",
            E::MandateExpired(_) => "MANDATE_EXPIRED",
            E::MandateOutOfScope { .. } => "MANDATE_OUT_OF_SCOPE",
            E::UnknownPrefill(_) => "UNKNOWN_PREFILL",
            E::PrefillClosed(..) => "PREFILL_CLOSED",
            E::PrefillInProgress(_) => "PREFILL_IN_PROGRESS",
            E::PreviewSubjectMismatch => "SUBJECT_MISMATCH",
            E::TooManyPreviews { .. } => "RATE_LIMITED",
            E::UnknownConsent(_) => "UNKNOWN_CONSENT",
            E::UnknownForm(_) => "UNKNOWN_FORM",
            E::SubjectNotFound => "SUBJECT_NOT_FOUND",
            E::ProviderUnavailable { .. } => "PROVIDER_UNAVAILABLE",
            E::ProviderInvalidResponse { .. } => "PROVIDER_INVALID_RESPONSE",
            E::ProviderCircuitOpen { .. } => "PROVIDER_CIRCUIT_OPEN",
            E::ProviderAuthFailed { .. } => "PROVIDER_AUTH_FAILED",
            E::ProviderDeadline(_) => "DEADLINE_EXCEEDED",
            E::StoreUnavailable => "STORE_UNAVAILABLE",
            E::RequestIdReused(_) => "REQUEST_ID_REUSED",
            E::RateLimited { .. } => "RATE_LIMITED",
            E::RequestTooLarge { .. } => "REQUEST_TOO_LARGE",
            E::TreeSizeOutOfRange(_) => "TREE_SIZE_OUT_OF_RANGE",
            E::LeafIndexOutOfRange(_) => "LEAF_INDEX_OUT_OF_RANGE",
            E::IdentityEvidenceRequired => "IDENTITY_EVIDENCE_REQUIRED",
            E::IdentityEvidenceInvalid(_) => "IDENTITY_EVIDENCE_INVALID",
            E::SubjectMismatch => "SUBJECT_MISMATCH",
            E::TooManyConnections { .. } => "TOO_MANY_CONNECTIONS",
        }
    }

    /// Whether the request was allowed but could not be served (as opposed to refused).
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            ApiError::SubjectNotFound
                | ApiError::ProviderUnavailable { .. }
                | ApiError::ProviderCircuitOpen { .. }
                | ApiError::ProviderAuthFailed { .. }
                | ApiError::ProviderInvalidResponse { .. }
                | ApiError::ProviderDeadline(_)
                | ApiError::StoreUnavailable
        )
    }

    /// An invalid field of a request: its name and what is wrong with it.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::InvalidArgument {
            field,
            message: message.into(),
        }
    }
}
