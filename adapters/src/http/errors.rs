//! What a provider's error answer means: its HTTP status, and the error code in its body.
//!
//! API Particulier answers 404 both for "dossier allocataire absent" (code `37003`: the person is
//! unknown) and for a wrong route. Judged on the status alone, a misconfigured URL would read as
//! "nobody is known" and never open the breaker. With an error-code table declared, a 404 is "not
//! found" only when its code says so; any other 404 is a provider failure.

use std::collections::BTreeMap;

#[cfg(feature = "runtime")]
use http::StatusCode;
use serde_json::Value;

use super::answer::{check_depth, validate_pointer};
#[cfg(feature = "runtime")]
use crate::adapter::Attempt;
use crate::claims::quote;
#[cfg(feature = "runtime")]
use crate::error::AdapterError;

/// Largest error body read for its code: error documents are small, and a provider's fault
/// must not cost more memory than its answer would.
pub(crate) const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Longest error code quoted in a message; longer or stranger values are not quoted.
const MAX_QUOTED_CODE: usize = 32;

/// Where a provider puts its error code, and what each code means (the `errors` setting).
///
/// E.g. for API Particulier / API Entreprise (`{"errors": [{"code": "37003", ...}]}`):
/// `errors = { code_pointer = "/errors/0/code", codes = { "37003" = "not_found" } }`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorCodes {
    /// RFC 6901 JSON Pointer to the code in an error answer's JSON body. A string is taken as
    /// it is, a number as its decimal text.
    pub code_pointer: String,
    /// Code → what it means. Codes not listed fall back on the HTTP status (see
    /// [`ErrorOutcome`]); an empty table makes every 404 a provider failure.
    #[serde(default)]
    pub codes: BTreeMap<String, ErrorOutcome>,
}

/// What an error code means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorOutcome {
    /// The provider does not know the subject: an answer, not a failure.
    NotFound,
    /// The provider cannot answer now: a failure (feeds the breaker), retried for a `GET`
    /// when the status is 5xx.
    Unavailable,
    /// The request or the answer is wrong (a missing parameter, an unsupported case): a
    /// failure, never retried.
    Invalid,
}

impl ErrorCodes {
    /// Checks the pointer and the codes (non-empty visible ASCII, at most 64 bytes).
    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        validate_pointer(&self.code_pointer).map_err(|why| ("errors.code_pointer".into(), why))?;
        for code in self.codes.keys() {
            if code.is_empty() || code.len() > 64 || !code.bytes().all(|b| b.is_ascii_graphic()) {
                return Err((
                    format!("errors.codes.{}", quote(code)),
                    "a code is 1 to 64 visible ASCII characters".into(),
                ));
            }
        }
        Ok(())
    }

    /// The error code of an error body, if it is JSON and holds one at the pointer.
    pub(crate) fn code_of(&self, body: &[u8]) -> Option<String> {
        check_depth(body, super::MAX_JSON_DEPTH).ok()?;
        let document: Value = serde_json::from_slice(body).ok()?;
        match document.pointer(&self.code_pointer)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

#[cfg(feature = "runtime")]
/// What a non-200 answer means, once 401/403 (credentials) and a 429 or 503 with a
/// `Retry-After` (throttling) have been dealt with: the code table first, if declared and the
/// code is listed, then the status.
///
/// - 404: "not found" without a table (today's behaviour: a wrong route then reads as an
///   unknown person); with a table, a provider failure unless its code is a `not_found` one.
/// - 429 and 5xx: unavailable, retried for a `GET`.
/// - any other status: an invalid answer.
pub(crate) fn judge(status: StatusCode, table: Option<&ErrorCodes>, code: Option<&str>) -> Attempt {
    let code_text = code.map(quotable).unwrap_or_else(|| "no error code".into());
    let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
    if let (Some(table), Some(code)) = (table, code)
        && let Some(outcome) = table.codes.get(code)
    {
        return match outcome {
            ErrorOutcome::NotFound => Attempt::Final(AdapterError::NotFound),
            ErrorOutcome::Unavailable => {
                let error = AdapterError::Unavailable {
                    reason: format!(
                        "provider answered HTTP {} with error code {code_text}",
                        status.as_u16()
                    ),
                    retry_after: None,
                };
                if retryable {
                    Attempt::Retryable(error)
                } else {
                    Attempt::Final(error)
                }
            }
            ErrorOutcome::Invalid => Attempt::Final(AdapterError::InvalidResponse(format!(
                "provider answered HTTP {} with error code {code_text}",
                status.as_u16()
            ))),
        };
    }
    if status == StatusCode::NOT_FOUND {
        return match table {
            None => Attempt::Final(AdapterError::NotFound),
            Some(_) => Attempt::Final(AdapterError::Unavailable {
                reason: format!(
                    "provider answered HTTP 404 with {code_text}, which is not one of its \
                     not-found codes: a wrong route or a provider fault"
                ),
                retry_after: None,
            }),
        };
    }
    if retryable {
        return Attempt::Retryable(AdapterError::Unavailable {
            reason: match code {
                Some(_) => format!(
                    "provider answered HTTP {} with error code {code_text}",
                    status.as_u16()
                ),
                None => format!("provider answered HTTP {}", status.as_u16()),
            },
            retry_after: None,
        });
    }
    Attempt::Final(AdapterError::InvalidResponse(match code {
        Some(_) => format!(
            "unexpected HTTP status {} with error code {code_text}",
            status.as_u16()
        ),
        None => format!("unexpected HTTP status {}", status.as_u16()),
    }))
}

/// An error code as messages quote it: short codes of letters, digits, `-`, `_`, `.` and `:`
/// only (a provider's free text may hold personal data, and messages reach the consumer).
fn quotable(code: &str) -> String {
    if !code.is_empty()
        && code.len() <= MAX_QUOTED_CODE
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        format!("\"{code}\"")
    } else {
        "an error code not quoted here".into()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn particulier() -> ErrorCodes {
        ErrorCodes {
            code_pointer: "/errors/0/code".into(),
            codes: [
                ("37003".to_string(), ErrorOutcome::NotFound),
                ("37999".to_string(), ErrorOutcome::Unavailable),
                ("36001".to_string(), ErrorOutcome::Invalid),
            ]
            .into(),
        }
    }

    #[test]
    fn codes_are_read_as_strings_or_numbers() {
        let table = particulier();
        let body = br#"{"errors":[{"code":"37003","title":"Entite non trouvee"}]}"#;
        assert_eq!(table.code_of(body).as_deref(), Some("37003"));
        assert_eq!(
            table.code_of(br#"{"errors":[{"code":37003}]}"#).as_deref(),
            Some("37003")
        );
        for none in [&b"<html>not found</html>"[..], b"", br#"{"errors":[]}"#] {
            assert_eq!(table.code_of(none), None);
        }
    }

    #[test]
    fn a_404_is_not_found_only_when_its_code_says_so() {
        let table = particulier();
        let not_found = StatusCode::NOT_FOUND;
        assert!(matches!(
            judge(not_found, Some(&table), Some("37003")),
            Attempt::Final(AdapterError::NotFound)
        ));
        // A wrong route: no code, or another one.
        for code in [None, Some("00404"), Some("36001x")] {
            let Attempt::Final(AdapterError::Unavailable { reason, .. }) =
                judge(not_found, Some(&table), code)
            else {
                panic!("{code:?}");
            };
            assert!(
                reason.contains("not one of its not-found codes"),
                "{reason}"
            );
        }
        // Without a table, today's behaviour.
        assert!(matches!(
            judge(not_found, None, None),
            Attempt::Final(AdapterError::NotFound)
        ));
    }

    #[test]
    fn listed_codes_decide_and_statuses_decide_the_rest() {
        let table = particulier();
        let bad_gateway = StatusCode::BAD_GATEWAY;
        assert!(matches!(
            judge(bad_gateway, Some(&table), Some("37999")),
            Attempt::Retryable(AdapterError::Unavailable { .. })
        ));
        assert!(matches!(
            judge(
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(&table),
                Some("37999")
            ),
            Attempt::Final(AdapterError::Unavailable { .. })
        ));
        assert!(matches!(
            judge(StatusCode::BAD_REQUEST, Some(&table), Some("36001")),
            Attempt::Final(AdapterError::InvalidResponse(_))
        ));
        assert!(matches!(
            judge(bad_gateway, Some(&table), Some("unknown")),
            Attempt::Retryable(AdapterError::Unavailable { .. })
        ));
        let Attempt::Final(AdapterError::InvalidResponse(why)) = judge(
            StatusCode::BAD_REQUEST,
            Some(&table),
            Some("jean.dupont@example.fr x"),
        ) else {
            panic!()
        };
        assert!(!why.contains("dupont"), "{why}");
    }

    #[test]
    fn tables_are_validated() {
        let mut table = particulier();
        table.validate().unwrap();
        table.code_pointer = "errors/0/code".into();
        assert_eq!(table.validate().unwrap_err().0, "errors.code_pointer");
        let mut table = particulier();
        table
            .codes
            .insert("with space".into(), ErrorOutcome::Invalid);
        assert_eq!(
            table.validate().unwrap_err().0,
            "errors.codes.\"with space\""
        );
    }
}
