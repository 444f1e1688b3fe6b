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
        "subject must be `scheme:value` (siren, siret, pivot or test), at most {MAX_SUBJECT_BYTES} ASCII bytes"
    )]
    Malformed,
    /// A scheme this broker does not know. Not quoted: the text before a `:` may be anything,
    /// a person's number or name too, and a refusal's message ends up in the caller's logs.
    #[error("unknown subject scheme (the text before `:`); expected siren, siret, pivot or test")]
    UnknownScheme,
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
    /// A `pivot:` subject not in the canonical form of docs/subjects.md.
    #[error("invalid pivot identity: {0}")]
    InvalidPivot(&'static str),
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
            "pivot" => {
                check_pivot(value)?;
                Ok(Subject(format!("pivot:{value}")))
            }
            _ => Err(SubjectError::UnknownScheme),
        }
    }

    /// The `pivot:` subject of an *identité pivot* as an identity provider asserts it
    /// (FranceConnect's claims), normalised as docs/subjects.md documents.
    pub fn pivot(identity: &PivotIdentity<'_>) -> Result<Subject, SubjectError> {
        let family = normalise_name(identity.family_name)?;
        if family.is_empty() {
            return Err(SubjectError::InvalidPivot("family name is empty"));
        }
        let given = normalise_name(identity.given_names)?;
        let sex = match identity.gender {
            "male" => "M",
            "female" => "F",
            _ => return Err(SubjectError::InvalidPivot("gender must be male or female")),
        };
        let place = identity.birthplace.trim().to_ascii_uppercase();
        let country = identity.birthcountry.trim();
        let value = format!(
            "{family}|{given}|{}|{sex}|{place}|{country}",
            identity.birthdate.trim()
        );
        if value.len() + "pivot:".len() > MAX_SUBJECT_BYTES {
            return Err(SubjectError::InvalidPivot("longer than 256 bytes"));
        }
        check_pivot(&value)?;
        Ok(Subject(format!("pivot:{value}")))
    }

    /// The normalised id, for pseudonymisation and for adapters only.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The civil-status fields of a `pivot:` subject, for providers asked by identity (None for
    /// another scheme). Read back from the canonical form, which [`Subject::parse`] checked.
    pub fn civil_status(&self) -> Option<unefois_adapters::CivilStatus> {
        let [family, given, date, sex, place, country] =
            pivot_fields(self.0.strip_prefix("pivot:")?)?;
        Some(unefois_adapters::CivilStatus {
            family_name: family.to_string(),
            given_names: given
                .split(' ')
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect(),
            birth_date: birth_date(date)?,
            sex: match sex {
                "M" => unefois_adapters::Sex::Male,
                "F" => unefois_adapters::Sex::Female,
                _ => return None,
            },
            birth_place: place.to_string(),
            birth_country: country.to_string(),
        })
    }
}

/// A SIRET as the registry declares an organisation's (`participants[i].siret`): 14 digits,
/// spaces allowed and removed, checked as a `siret:` subject is.
pub fn siret(value: &str) -> Result<String, SubjectError> {
    digits("siret", value, 14)
}

/// The six fields of a `pivot:` value, split on `|`.
fn pivot_fields(value: &str) -> Option<[&str; 6]> {
    let fields: Vec<&str> = value.split('|').collect();
    fields.try_into().ok()
}

/// A birth date of a `pivot:` value: exactly `YYYY-MM-DD`, in the calendar.
fn birth_date(date: &str) -> Option<time::Date> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    if date.len() != 10 {
        return None;
    }
    time::Date::parse(date, &format).ok()
}

/// Never prints the subject: logs and traces must not carry raw subject ids.
impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Subject(<redacted>)")
    }
}

/// The identity claims a `pivot:` subject is derived from (FranceConnect's names).
#[derive(Clone, Copy)]
pub struct PivotIdentity<'a> {
    /// `family_name`: birth family name.
    pub family_name: &'a str,
    /// `given_name`: given names, space-separated.
    pub given_names: &'a str,
    /// `birthdate`: `YYYY-MM-DD`.
    pub birthdate: &'a str,
    /// `gender`: `male` or `female`.
    pub gender: &'a str,
    /// `birthplace`: INSEE commune code, empty when born abroad.
    pub birthplace: &'a str,
    /// `birthcountry`: INSEE country code, `99100` for France.
    pub birthcountry: &'a str,
}

/// INSEE code of France as a birth country.
pub const FRANCE: &str = "99100";

/// Longest normalised name, in bytes.
const MAX_NAME_BYTES: usize = 100;

/// A name in canonical form: diacritics removed (NFKD, combining marks dropped), ligatures
/// spelt out, uppercase ASCII letters; apostrophes, spaces and other separators become one
/// space; hyphens stay, without spaces around them; nothing else is accepted.
pub fn normalise_name(raw: &str) -> Result<String, SubjectError> {
    use unicode_normalization::UnicodeNormalization;
    use unicode_normalization::char::is_combining_mark;
    let mut letters = String::new();
    for c in raw.nfkd().filter(|c| !is_combining_mark(*c)) {
        match c {
            'a'..='z' | 'A'..='Z' => letters.push(c.to_ascii_uppercase()),
            'œ' | 'Œ' => letters.push_str("OE"),
            'æ' | 'Æ' => letters.push_str("AE"),
            'ß' => letters.push_str("SS"),
            'ø' | 'Ø' => letters.push('O'),
            'đ' | 'Đ' => letters.push('D'),
            'ł' | 'Ł' => letters.push('L'),
            '-' | '\u{2010}' | '\u{2011}' => letters.push('-'),
            '\'' | '\u{2019}' | '\u{2018}' | '`' | '.' | ',' => letters.push(' '),
            c if c.is_whitespace() => letters.push(' '),
            _ => {
                return Err(SubjectError::InvalidPivot(
                    "a name holds a character that is not a letter",
                ));
            }
        }
    }
    // Collapse: runs of spaces to one, spaces around a hyphen dropped, runs of hyphens to one.
    let mut out = String::with_capacity(letters.len());
    for c in letters.chars() {
        match c {
            ' ' if out.is_empty() || out.ends_with(' ') || out.ends_with('-') => {}
            '-' => {
                if out.ends_with(' ') {
                    out.pop();
                }
                if !out.is_empty() && !out.ends_with('-') {
                    out.push('-');
                }
            }
            c => out.push(c),
        }
    }
    while out.ends_with(' ') || out.ends_with('-') {
        out.pop();
    }
    if out.len() > MAX_NAME_BYTES {
        return Err(SubjectError::InvalidPivot(
            "a name is longer than 100 bytes",
        ));
    }
    Ok(out)
}

/// Whether `name` is a canonical name (what [`normalise_name`] yields).
fn canonical_name(name: &str) -> bool {
    name.len() <= MAX_NAME_BYTES
        && name
            .split([' ', '-'])
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_uppercase()))
}

/// Checks the value of a `pivot:` subject:
/// `FAMILY|GIVEN NAMES|YYYY-MM-DD|M or F|birthplace|birthcountry`.
fn check_pivot(value: &str) -> Result<(), SubjectError> {
    let Some([family, given, date, sex, place, country]) = pivot_fields(value) else {
        return Err(SubjectError::InvalidPivot(
            "expected six fields separated by |",
        ));
    };
    if family.is_empty() || !canonical_name(family) {
        return Err(SubjectError::InvalidPivot(
            "family name not in canonical form",
        ));
    }
    if !given.is_empty() && !canonical_name(given) {
        return Err(SubjectError::InvalidPivot(
            "given names not in canonical form",
        ));
    }
    if birth_date(date).is_none() {
        return Err(SubjectError::InvalidPivot("birth date must be YYYY-MM-DD"));
    }
    if sex != "M" && sex != "F" {
        return Err(SubjectError::InvalidPivot("sex must be M or F"));
    }
    if country.len() != 5
        || !country.bytes().all(|b| b.is_ascii_digit())
        || !country.starts_with("99")
    {
        return Err(SubjectError::InvalidPivot(
            "birth country must be a 5-digit INSEE code (99xxx)",
        ));
    }
    let commune = place.len() == 5
        && place
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'A' || b == b'B');
    if country == FRANCE {
        if !commune {
            return Err(SubjectError::InvalidPivot(
                "birth place must be a 5-character INSEE commune code",
            ));
        }
    } else if !place.is_empty() {
        return Err(SubjectError::InvalidPivot(
            "birth place must be empty for people born abroad",
        ));
    }
    Ok(())
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
    fn pivot_identities_are_normalised() {
        let s = Subject::pivot(&PivotIdentity {
            family_name: "  Dupont-- de  l’Île ",
            given_names: "Marie  Clàire Œnone",
            birthdate: "1985-07-14",
            gender: "female",
            birthplace: "69123",
            birthcountry: "99100",
        })
        .map(|s| s.0);
        assert_eq!(
            s,
            Ok("pivot:DUPONT-DE L ILE|MARIE CLAIRE OENONE|1985-07-14|F|69123|99100".into())
        );
        let canonical = "pivot:DUPONT|MARIE CLAIRE|1985-07-14|F|69123|99100";
        assert_eq!(
            Subject::parse(canonical, false).map(|s| s.0),
            Ok(canonical.into())
        );
        for bad in [
            "pivot:Dupont|MARIE|1985-07-14|F|69123|99100",
            "pivot:DUPONT|MARIE|1985-13-14|F|69123|99100",
            "pivot:DUPONT|MARIE|1985-07-14|X|69123|99100",
            "pivot:DUPONT|MARIE|1985-07-14|F||99100",
            "pivot:DUPONT|MARIE|1985-07-14|F|69123|99134",
            "pivot:DUPONT|MARIE  CLAIRE|1985-07-14|F|69123|99100",
            "pivot:DUPONT|MARIE|1985-07-14|F|69123",
        ] {
            assert!(Subject::parse(bad, true).is_err(), "{bad:?} accepted");
        }
        assert!(Subject::parse("pivot:NGUYEN|AN|1990-01-02|M||99243", false).is_ok());
    }

    #[test]
    fn a_pivot_subject_gives_its_civil_status() {
        let s = Subject::parse(
            "pivot:DUPONT-DE L ILE|MARIE CLAIRE JEAN-PIERRE|1985-07-04|F|2A004|99100",
            false,
        )
        .map(|s| s.civil_status());
        let Ok(Some(c)) = s else {
            panic!("no civil status");
        };
        assert_eq!(c.family_name, "DUPONT-DE L ILE");
        assert_eq!(c.given_names, ["MARIE", "CLAIRE", "JEAN-PIERRE"]);
        assert_eq!(c.birth_date, time::macros::date!(1985 - 07 - 04));
        assert_eq!(c.sex, unefois_adapters::Sex::Female);
        assert_eq!(
            (c.birth_place.as_str(), c.birth_country.as_str()),
            ("2A004", "99100")
        );
        assert_eq!(format!("{c:?}"), "CivilStatus(<redacted>)");
        let abroad =
            Subject::parse("pivot:NGUYEN||1990-01-02|M||99243", false).map(|s| s.civil_status());
        let Ok(Some(c)) = abroad else {
            panic!("no civil status");
        };
        assert!(c.given_names.is_empty() && c.birth_place.is_empty());
        assert_eq!(c.sex, unefois_adapters::Sex::Male);
        for other in ["siret:11000201100044", "test:alice"] {
            assert_eq!(
                Subject::parse(other, true).map(|s| s.civil_status()),
                Ok(None)
            );
        }
    }

    #[test]
    fn registry_sirets_are_checked_as_subjects_are() {
        assert_eq!(siret("130 025 265 00013"), Ok("13002526500013".into()));
        assert!(siret("13002526500014").is_err());
        assert!(siret("1300252650001").is_err());
        assert!(siret("1300252650001a").is_err());
    }

    #[test]
    fn debug_never_shows_the_subject() {
        let s = Subject::parse("test:alice", true).map(|s| format!("{s:?}"));
        assert_eq!(s, Ok("Subject(<redacted>)".into()));
    }
}
