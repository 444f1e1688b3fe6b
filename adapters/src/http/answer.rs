//! Reading a provider's answer: bounded JSON, and where each claim lies in it.

use crate::claims::quote;
use crate::error::AdapterError;

/// Refuses a JSON text nesting arrays and objects deeper than `max`, scanning the raw
/// bytes (brackets inside strings do not count).
pub(crate) fn check_depth(body: &[u8], max: usize) -> Result<(), AdapterError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(AdapterError::InvalidResponse(format!(
                        "response JSON nested deeper than {max} levels"
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Checks an RFC 6901 JSON Pointer: empty, or `/`-separated tokens where `~` is only
/// followed by `0` or `1`.
pub(crate) fn validate_pointer(pointer: &str) -> Result<(), String> {
    if pointer.is_empty() {
        return Ok(());
    }
    if !pointer.starts_with('/') {
        return Err(format!(
            "JSON pointer {} must be empty or start with '/'",
            quote(pointer)
        ));
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "JSON pointer {}: '~' must be followed by '0' or '1'",
                quote(pointer)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn depth_scan_ignores_strings() {
        let nested = format!("{}{}", "[".repeat(64), "]".repeat(64));
        check_depth(nested.as_bytes(), 64).unwrap();
        let deeper = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(check_depth(deeper.as_bytes(), 64).is_err());
        let in_string = format!("{{\"a\": \"{}\\\"{}\"}}", "[".repeat(100), "{".repeat(100));
        check_depth(in_string.as_bytes(), 2).unwrap();
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        for ok in ["", "/", "/a/b", "/a~0b/~1c", "/0"] {
            validate_pointer(ok).unwrap();
        }
        for bad in ["a", "/a~", "/a~2", "#/a"] {
            assert!(validate_pointer(bad).is_err(), "{bad}");
        }
    }
}
