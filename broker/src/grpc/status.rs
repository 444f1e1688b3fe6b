//! The one place where broker errors become gRPC statuses: a status code, a message for people,
//! and the closed `ErrorReason` in `google.rpc.ErrorInfo` for programs.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use unefois_proto::v1::ErrorReason;

use crate::registry::Role;

/// Why a request was refused or failed, as the caller is told.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
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
}

impl ApiError {
    /// The gRPC status code DESIGN.md assigns to this error.
    pub fn code(&self) -> Code {
        match self {
            ApiError::NoClientCertificate(_)
            | ApiError::UnknownParticipant(_)
            | ApiError::CertificateRevoked => Code::Unauthenticated,
            ApiError::WrongRole { .. } => Code::PermissionDenied,
        }
    }

    /// The closed reason carried in `ErrorInfo`.
    pub fn reason(&self) -> ErrorReason {
        match self {
            ApiError::NoClientCertificate(_) => ErrorReason::NoClientCertificate,
            ApiError::UnknownParticipant(_) => ErrorReason::UnknownParticipant,
            ApiError::CertificateRevoked => ErrorReason::CertificateRevoked,
            ApiError::WrongRole { .. } => ErrorReason::WrongRole,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let details = ErrorDetails::with_error_info(
            e.reason().as_str_name(),
            unefois_proto::ERROR_DOMAIN,
            HashMap::new(),
        );
        Status::with_error_details(e.code(), e.to_string(), details)
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
