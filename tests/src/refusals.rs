//! Assertions on refusals: a call's gRPC code together with the `ErrorReason` its `ErrorInfo`
//! carries (the closed enum of `proto/`), the two things a participant acts on.

use std::time::Duration;

use broker::client::reason_of;
use tonic::{Code, Response, Status};
use tonic_types::StatusExt;
use unefois_proto::v1::ErrorReason;

/// Asserts that a call was refused with this code and reason, and returns the refusal.
#[track_caller]
pub fn refused<T: std::fmt::Debug>(
    result: Result<Response<T>, Status>,
    code: Code,
    reason: ErrorReason,
) -> Status {
    let status = match result {
        Ok(answer) => panic!(
            "expected {code:?} / {reason:?}, the call was answered: {:?}",
            answer.get_ref()
        ),
        Err(status) => status,
    };
    assert_eq!(
        (status.code(), reason_of(&status)),
        (code, Some(reason)),
        "{}",
        status.message()
    );
    status
}

/// Asserts a refusal: its code, its reason, and that its message says `words`.
#[track_caller]
pub fn assert_status(status: &Status, code: Code, reason: ErrorReason, words: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(status), Some(reason), "{status:?}");
    assert!(status.message().contains(words), "{status:?}");
}

/// The delay a refusal's `RetryInfo` asks the caller to wait, if it carries one.
pub fn retry_delay(status: &Status) -> Option<Duration> {
    status.get_details_retry_info().and_then(|r| r.retry_delay)
}
