//! Bounds and shapes of request fields shared by several services.

use crate::error::ApiError;

/// Most claims a request may name.
pub const MAX_CLAIMS: usize = 64;
/// Most attestation types a consent may cover.
pub const MAX_CONSENT_TYPES: usize = 16;

/// A registry identifier given in a request (type, purpose, participant, claim): printable
/// ASCII without spaces, at most `max` bytes.
pub fn identifier(field: &'static str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::invalid(field, "is required"));
    }
    if value.len() > max || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {max} printable ASCII characters"),
        ));
    }
    Ok(())
}

/// An idempotency key: empty, or `[A-Za-z0-9._:-]{1,128}`.
pub fn request_id(value: &str) -> Result<Option<String>, ApiError> {
    if value.is_empty() {
        return Ok(None);
    }
    let ok = value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if !ok {
        return Err(ApiError::invalid(
            "request_id",
            "must be at most 128 characters of [A-Za-z0-9._:-]",
        ));
    }
    Ok(Some(value.to_string()))
}

/// A list of distinct identifiers, at most `max` of them.
pub fn identifiers(field: &'static str, values: &[String], max: usize) -> Result<(), ApiError> {
    if values.len() > max {
        return Err(ApiError::invalid(field, format!("at most {max} entries")));
    }
    for (i, v) in values.iter().enumerate() {
        identifier(field, v, 64)?;
        if values[..i].contains(v) {
            return Err(ApiError::invalid(field, format!("{v:?} is listed twice")));
        }
    }
    Ok(())
}
