//! Subjects: the person or company an attestation is about, as `scheme:value`.
//!
//! A subject id is validated and normalised once, at the edge, so that the same person or
//! company always yields the same pseudonym. Raw subject ids never leave the request path:
//! they are not stored, logged or recorded (see [`crate::pseudonym`]).

use std::fmt;

/// Longest subject id accepted, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 256;

/// Why a subject id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubjectError {
    /// Not `scheme:value`, too long, or not ASCII.
    #[error(
        "subject must be `scheme:value` (siren, siret or test), at most {MAX_SUBJECT_BYTES} ASCII bytes"
    )]
    Malformed,
    /// A scheme this broker does not know.
    #[error("unknown subject scheme {0:?}; expected siren, siret or test")]
    UnknownScheme(String),
    /// The value does not fit its scheme.
    #[error("invalid {scheme} number: {why}")]
    InvalidValue {
        /// The scheme.
        scheme: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// `test:` subjects are refused outside development federations.
    #[error("test: subjects are not accepted by this federation")]
    TestNotAllowed,
    /// `pivot:` subjects need identity evidence, which this broker does not verify yet.
    #[error("pivot: subjects require identity evidence, not yet supported")]
    PivotUnsupported,
}

/// A validated subject in its normalised form.
#[derive(Clone, PartialEq, Eq)]
pub struct Subject(String);

impl Subject {
    /// Validates and normalises a subject id. `allow_test` admits `test:` subjects
    /// (development federations only).
    pub fn parse(raw: &str, allow_test: bool) -> Result<Subject, SubjectError> {
        if raw.len() > MAX_SUBJECT_BYTES || !raw.is_ascii() {
            return Err(SubjectError::Malformed);
        }
        let (scheme, value) = raw.split_once(':').ok_or(SubjectError::Malformed)?;
        match scheme {
            "siren" => Ok(Subject(format!("siren:{}", digits("siren", value, 9)?))),
            "siret" => {
                let d = digits("siret", value, 14)?;
                Ok(Subject(format!("siret:{d}")))
            }
            "test" => {
                if !allow_test {
                    return Err(SubjectError::TestNotAllowed);
                }
                let ok = (1..=64).contains(&value.len())
                    && value.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    });
                if !ok {
                    return Err(SubjectError::InvalidValue {
                        scheme: "test",
                        why: "expected [a-z0-9._-]{1,64}",
                    });
                }
                Ok(Subject(format!("test:{value}")))
            }
            "pivot" => Err(SubjectError::PivotUnsupported),
            other => Err(SubjectError::UnknownScheme(
                other.chars().take(16).collect(),
            )),
        }
    }

    /// The normalised id, for pseudonymisation and for adapters only.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Never prints the subject: logs and traces must not carry raw subject ids.
impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Subject(<redacted>)")
    }
}

/// A SIREN or SIRET number: digits with optional spaces, the right length, Luhn-valid
/// (La Poste's SIRETs, under SIREN 356000000, use a sum-of-digits rule instead).
fn digits(scheme: &'static str, value: &str, len: usize) -> Result<String, SubjectError> {
    let compact: String = value.chars().filter(|c| *c != ' ').collect();
    if compact.len() != len || !compact.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SubjectError::InvalidValue {
            scheme,
            why: if len == 9 {
                "expected 9 digits"
            } else {
                "expected 14 digits"
            },
        });
    }
    let la_poste = scheme == "siret" && compact.starts_with("356000000");
    let valid = if la_poste {
        compact
            .bytes()
            .map(|b| u32::from(b - b'0'))
            .sum::<u32>()
            .is_multiple_of(5)
    } else {
        luhn(&compact)
    };
    if !valid {
        return Err(SubjectError::InvalidValue {
            scheme,
            why: "check digit mismatch",
        });
    }
    Ok(compact)
}

fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 { d2 - 9 } else { d2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn companies_are_normalised_and_checked() {
        // SIREN of the DINUM's parent (Services du Premier ministre): 110 002 011, Luhn-valid.
        assert_eq!(
            Subject::parse("siren:110 002 011", false).map(|s| s.0),
            Ok("siren:110002011".into())
        );
        assert!(matches!(
            Subject::parse("siren:110002012", false),
            Err(SubjectError::InvalidValue { .. })
        ));
        assert_eq!(
            Subject::parse("siret:11000201100044", false).map(|s| s.0),
            Ok("siret:11000201100044".into())
        );
        // La Poste: sum of digits divisible by 5 (3+5+6+4+7 = 25), though not Luhn-valid.
        assert!(Subject::parse("siret:35600000000047", false).is_ok());
    }

    #[test]
    fn test_subjects_only_when_allowed() {
        assert_eq!(
            Subject::parse("test:alice", false),
            Err(SubjectError::TestNotAllowed)
        );
        assert!(Subject::parse("test:alice", true).is_ok());
        assert!(Subject::parse("test:Alice", true).is_err());
    }

    #[test]
    fn confusables_and_garbage_are_refused() {
        for raw in [
            "",
            "alice",
            "test:",
            "tеst:alice", // Cyrillic е
            "siren:１１０００２０１１",
            "SIREN:110002011",
            "siren:11000201",
            "test:a/../b",
            "test:alice\n",
        ] {
            assert!(Subject::parse(raw, true).is_err(), "{raw:?} accepted");
        }
        assert_eq!(
            Subject::parse(&"t".repeat(300), true),
            Err(SubjectError::Malformed)
        );
    }

    #[test]
    fn debug_never_shows_the_subject() {
        let s = Subject::parse("test:alice", true).map(|s| format!("{s:?}"));
        assert_eq!(s, Ok("Subject(<redacted>)".into()));
    }
}
