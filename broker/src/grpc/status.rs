//! The one place where broker errors become gRPC statuses: a status code, a message for people,
//! and the closed `ErrorReason` in `google.rpc.ErrorInfo` for programs.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use unefois_proto::v1::ErrorReason;

pub use crate::error::ApiError;

/// The gRPC status code DESIGN.md assigns to an error.
pub fn code(e: &ApiError) -> Code {
    use ApiError as E;
    match e {
        E::InvalidArgument { .. }
        | E::InvalidSubject(_)
        | E::UnknownPurpose(_)
        | E::TreeSizeOutOfRange(_)
        | E::LeafIndexOutOfRange(_) => Code::InvalidArgument,
        E::NoClientCertificate(_) | E::UnknownParticipant(_) | E::CertificateRevoked => {
            Code::Unauthenticated
        }
        E::WrongRole { .. }
        | E::NoHabilitation { .. }
        | E::HabilitationExpired(_)
        | E::PurposeNotAllowed { .. }
        | E::ClaimNotAllowed { .. } => Code::PermissionDenied,
        E::NoConsent { .. }
        | E::ConsentRevoked(_)
        | E::ConsentExpired(_)
        | E::NoMandate(_)
        | E::NotAgentOfStructure { .. }
        | E::AgentRequired { .. }
        | E::MandateSubjectMismatch(_)
        | E::MandateRevoked(_)
        | E::MandateExpired(_)
        | E::MandateOutOfScope { .. }
        | E::PrefillClosed(..)
        | E::IdentityEvidenceRequired
        | E::IdentityEvidenceInvalid(_)
        | E::SubjectMismatch
        | E::PreviewSubjectMismatch => Code::FailedPrecondition,
        E::PrefillInProgress(_) => Code::Aborted,
        E::UnknownAttestationType(_)
        | E::UnknownConsent(_)
        | E::UnknownForm(_)
        | E::UnknownMandate(_)
        | E::UnknownPrefill(_)
        | E::SubjectNotFound => Code::NotFound,
        E::ProviderUnavailable { .. }
        | E::ProviderCircuitOpen { .. }
        | E::ProviderAuthFailed { .. }
        | E::ProviderInvalidResponse { .. }
        | E::StoreUnavailable => Code::Unavailable,
        E::ProviderDeadline(_) => Code::DeadlineExceeded,
        E::RequestIdReused(_) => Code::AlreadyExists,
        E::RequestTooLarge { .. }
        | E::RateLimited { .. }
        | E::TooManyPreviews { .. }
        | E::TooManyConnections { .. } => Code::ResourceExhausted,
    }
}

/// The closed reason carried in `ErrorInfo` (also recorded in the journal).
pub fn reason(e: &ApiError) -> ErrorReason {
    ErrorReason::from_str_name(e.reason_code()).unwrap_or(ErrorReason::Unspecified)
}

/// A store failure met in a handler, answered as a status: through the one conversion into an
/// [`ApiError`], which logs it with the handler's line (hence a method, `#[track_caller]`:
/// `StoreError` and `Status` are both other crates', so no `From` can join them here).
pub trait IntoStatus<T> {
    /// The value, or the status the store's failure is answered with.
    fn into_status(self) -> Result<T, Status>;
}

impl<T> IntoStatus<T> for Result<T, crate::store::StoreError> {
    #[track_caller]
    fn into_status(self) -> Result<T, Status> {
        match self {
            Ok(value) => Ok(value),
            Err(e) => Err(status(ApiError::from(e))),
        }
    }
}

/// The status a refusal is answered with: its code, its message, and an `ErrorInfo` with its
/// `ErrorReason` (and `RetryInfo` when the caller may retry after a while). A function, not a
/// `From`: `ApiError` is the domain's and `Status` tonic's.
pub fn status(e: ApiError) -> Status {
    {
        let mut details = ErrorDetails::with_error_info(
            reason(&e).as_str_name(),
            unefois_proto::ERROR_DOMAIN,
            HashMap::new(),
        );
        if let ApiError::ProviderUnavailable {
            retry_after: Some(after),
            ..
        }
        | ApiError::ProviderCircuitOpen {
            retry_after: Some(after),
            ..
        } = &e
        {
            details.set_retry_info(Some(*after));
        }
        if let ApiError::RateLimited { retry_after }
        | ApiError::TooManyPreviews { retry_after, .. } = &e
        {
            details.set_retry_info(Some(*retry_after));
        }
        Status::with_error_details(code(&e), e.to_string(), details)
    }
}

/// The `ErrorReason` a status carries, if any: what clients (and tests) branch on.
pub fn reason_of(status: &Status) -> Option<ErrorReason> {
    let info = status.get_details_error_info()?;
    if info.domain != unefois_proto::ERROR_DOMAIN {
        return None;
    }
    ErrorReason::from_str_name(&info.reason)
}
