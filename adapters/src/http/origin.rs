//! Proof of origin over HTTP: the challenge in two request headers, the provider's detached JWS
//! over its body in a response header (crate::origin has the formats and the checks).

use reqwest::RequestBuilder;
use reqwest::header::{HeaderMap, HeaderValue};

use crate::adapter::AdapterRequest;
use crate::error::AdapterError;
use crate::origin::{
    Challenge, Expected, NONCE_HEADER, Origin, OriginPolicy, SIGNATURE_HEADER, SUBJECT_KEY_HEADER,
    missing, verify_detached,
};

/// Adds the challenge's headers to a request.
pub(super) fn challenge(builder: RequestBuilder, challenge: &Challenge) -> RequestBuilder {
    builder
        .header(NONCE_HEADER, &challenge.nonce)
        .header(SUBJECT_KEY_HEADER, challenge.subject_key_text())
}

/// The values of the signature header of an answer (usually none or one).
pub(super) fn signature(headers: &HeaderMap) -> Vec<HeaderValue> {
    headers.get_all(SIGNATURE_HEADER).iter().cloned().collect()
}

/// Checks the detached signature (`signature`, the header's values) of a 200 answer's `body`:
/// its absence is refused when the provider must sign, and a signature, when present, must
/// verify and state this call.
pub(super) fn verify(
    policy: &OriginPolicy,
    challenge: &Challenge,
    signature: &[HeaderValue],
    body: &[u8],
    request: &AdapterRequest,
) -> Result<Option<Origin>, AdapterError> {
    let mut values = signature.iter();
    let jws = match (values.next(), values.next()) {
        (None, _) if policy.required() => return Err(missing()),
        (None, _) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(AdapterError::InvalidResponse(format!(
                "provider signature: {SIGNATURE_HEADER} is repeated"
            )));
        }
        (Some(value), None) => value.to_str().map_err(|_| {
            AdapterError::InvalidResponse(format!(
                "provider signature: {SIGNATURE_HEADER} is not ASCII"
            ))
        })?,
    };
    let expected = Expected {
        attestation_type: &request.attestation_type,
        subject: &request.subject,
        challenge,
        now: time::OffsetDateTime::now_utc().unix_timestamp(),
    };
    verify_detached(policy, jws.trim(), body, &expected).map(Some)
}
