//! Claims: their declared types, their typed values, and the check of a provider's
//! answer against an attestation type's schema.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;
use time::{Date, Month};

use crate::error::AdapterError;

/// Longest string claim value accepted, in bytes.
pub const MAX_STRING_BYTES: usize = 4096;

/// Longest excerpt of untrusted text (claim names, subjects) quoted in an error message.
const MAX_QUOTED_CHARS: usize = 64;

/// The type of a claim's value (the registry declares it per claim).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimType {
    /// UTF-8 text, at most [`MAX_STRING_BYTES`] bytes, no control characters.
    String,
    /// A signed 64-bit integer.
    Integer,
    /// A finite double-precision number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// A calendar date, `YYYY-MM-DD` in JSON.
    Date,
}

impl ClaimType {
    /// The type's name as the registry spells it (`"integer"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimType::String => "string",
            ClaimType::Integer => "integer",
            ClaimType::Number => "number",
            ClaimType::Boolean => "boolean",
            ClaimType::Date => "date",
        }
    }
}

impl fmt::Display for ClaimType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A claim's value, type-checked against the schema.
#[derive(Clone, Debug, PartialEq)]
pub enum ClaimValue {
    /// See [`ClaimType::String`].
    String(String),
    /// See [`ClaimType::Integer`].
    Integer(i64),
    /// See [`ClaimType::Number`].
    Number(f64),
    /// See [`ClaimType::Boolean`].
    Boolean(bool),
    /// See [`ClaimType::Date`].
    Date(Date),
}

/// The claims of one answer, by claim name.
pub type Claims = BTreeMap<String, ClaimValue>;

/// One claim of a type's schema.
#[derive(Clone, Debug)]
pub struct ClaimSpec {
    /// The claim's name, e.g. `quotient_familial`.
    pub name: String,
    /// The type its values must have.
    pub claim_type: ClaimType,
}

impl ClaimValue {
    /// The type of this value.
    pub fn claim_type(&self) -> ClaimType {
        match self {
            ClaimValue::String(_) => ClaimType::String,
            ClaimValue::Integer(_) => ClaimType::Integer,
            ClaimValue::Number(_) => ClaimType::Number,
            ClaimValue::Boolean(_) => ClaimType::Boolean,
            ClaimValue::Date(_) => ClaimType::Date,
        }
    }

    /// Reads a JSON value as a claim of type `t`, strictly: no coercion between
    /// types (`"12"` is not an integer, `1.5` and `12.0` are not integers), integers
    /// must fit an `i64`, numbers must be finite, dates are exactly `YYYY-MM-DD` and
    /// exist in the calendar, strings obey [`ClaimValue::validate`].
    ///
    /// The error says why, without quoting the value (claim values stay out of logs).
    pub fn from_json(t: ClaimType, v: &Value) -> Result<ClaimValue, String> {
        let value = match (t, v) {
            (ClaimType::String, Value::String(s)) => ClaimValue::String(s.clone()),
            (ClaimType::Integer, Value::Number(n)) => match n.as_i64() {
                Some(i) => ClaimValue::Integer(i),
                None if n.is_f64() => {
                    return Err(
                        "expected an integer, found a number with a fraction or an exponent".into(),
                    );
                }
                None => {
                    return Err("integer out of range (must fit a signed 64-bit integer)".into());
                }
            },
            (ClaimType::Number, Value::Number(n)) => match n.as_f64() {
                Some(x) => ClaimValue::Number(x),
                None => return Err("number not representable as a double".into()),
            },
            (ClaimType::Boolean, Value::Bool(b)) => ClaimValue::Boolean(*b),
            (ClaimType::Date, Value::String(s)) => ClaimValue::Date(parse_date(s)?),
            (t, other) => {
                return Err(format!(
                    "expected {}, found {}",
                    describe(t),
                    json_kind(other)
                ));
            }
        };
        value.validate()?;
        Ok(value)
    }

    /// Checks the bounds that a value built outside [`ClaimValue::from_json`] (by an
    /// adapter decoding another format) must also respect: strings at most
    /// [`MAX_STRING_BYTES`] bytes without control characters, finite numbers,
    /// dates with a year from 0 to 9999.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            ClaimValue::String(s) if s.len() > MAX_STRING_BYTES => {
                Err(format!("string longer than {MAX_STRING_BYTES} bytes"))
            }
            ClaimValue::String(s) if s.chars().any(char::is_control) => {
                Err("string contains a control character".into())
            }
            ClaimValue::Number(x) if !x.is_finite() => Err("number is not finite".into()),
            ClaimValue::Date(d) if !(0..=9999).contains(&d.year()) => {
                Err("date year outside 0000-9999".into())
            }
            _ => Ok(()),
        }
    }

    /// The value as JSON, in the form [`ClaimValue::from_json`] reads back (dates as
    /// `YYYY-MM-DD`). A non-finite number, which [`ClaimValue::validate`] refuses
    /// and JSON cannot hold, becomes `null`.
    pub fn to_json(&self) -> Value {
        match self {
            ClaimValue::String(s) => Value::String(s.clone()),
            ClaimValue::Integer(i) => Value::from(*i),
            ClaimValue::Number(x) => {
                serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number)
            }
            ClaimValue::Boolean(b) => Value::Bool(*b),
            ClaimValue::Date(d) => Value::String(format!(
                "{:04}-{:02}-{:02}",
                d.year(),
                u8::from(d.month()),
                d.day()
            )),
        }
    }
}

/// Checks a provider's answer against the schema and the request: every returned claim is in the schema with the right type and was requested. Shared by all adapters.
///
/// Values are also checked with [`ClaimValue::validate`]. Error messages name the
/// claim, never its value.
pub fn check_claims(
    schema: &[ClaimSpec],
    requested: &[String],
    claims: &Claims,
) -> Result<(), AdapterError> {
    for (name, value) in claims {
        let Some(spec) = schema.iter().find(|spec| spec.name == *name) else {
            return Err(AdapterError::InvalidResponse(format!(
                "claim {} is not in the schema",
                quote(name)
            )));
        };
        if !requested.iter().any(|r| r == name) {
            return Err(AdapterError::InvalidResponse(format!(
                "claim {} was not requested",
                quote(name)
            )));
        }
        if value.claim_type() != spec.claim_type {
            return Err(AdapterError::InvalidResponse(format!(
                "claim {}: expected {}, found {}",
                quote(name),
                describe(spec.claim_type),
                describe(value.claim_type())
            )));
        }
        value.validate().map_err(|why| {
            AdapterError::InvalidResponse(format!("claim {}: {why}", quote(name)))
        })?;
    }
    Ok(())
}

/// Quotes untrusted text for an error message: escaped, and cut after a few dozen characters.
pub fn quote(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{:?}...", &s[..cut]),
        None => format!("{s:?}"),
    }
}

/// Parses exactly `YYYY-MM-DD` into a date that exists in the calendar.
fn parse_date(s: &str) -> Result<Date, String> {
    const SHAPE: &str = "expected a date as YYYY-MM-DD";
    let bytes = s.as_bytes();
    let well_formed = bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                *b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if !well_formed {
        return Err(SHAPE.into());
    }
    let (Ok(year), Ok(month), Ok(day)) = (
        s[0..4].parse::<i32>(),
        s[5..7].parse::<u8>(),
        s[8..10].parse::<u8>(),
    ) else {
        return Err(SHAPE.into());
    };
    let month = Month::try_from(month).map_err(|_| "no such month".to_string())?;
    Date::from_calendar_date(year, month, day).map_err(|_| "no such calendar date".to_string())
}

/// A claim type with its article, for messages.
fn describe(t: ClaimType) -> &'static str {
    match t {
        ClaimType::String => "a string",
        ClaimType::Integer => "an integer",
        ClaimType::Number => "a number",
        ClaimType::Boolean => "a boolean",
        ClaimType::Date => "a date",
    }
}

/// The kind of a JSON value, for messages.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::date;

    fn parse(t: ClaimType, text: &str) -> Result<ClaimValue, String> {
        ClaimValue::from_json(t, &serde_json::from_str(text).unwrap())
    }

    #[test]
    fn integers_are_strict() {
        assert_eq!(
            parse(ClaimType::Integer, "612").unwrap(),
            ClaimValue::Integer(612)
        );
        assert_eq!(
            parse(ClaimType::Integer, "-7").unwrap(),
            ClaimValue::Integer(-7)
        );
        assert_eq!(
            parse(ClaimType::Integer, "9223372036854775807").unwrap(),
            ClaimValue::Integer(i64::MAX)
        );
        assert_eq!(
            parse(ClaimType::Integer, "-9223372036854775808").unwrap(),
            ClaimValue::Integer(i64::MIN)
        );
        // 2^63 does not fit.
        let err = parse(ClaimType::Integer, "9223372036854775808").unwrap_err();
        assert!(err.contains("out of range"), "{err}");
        assert!(parse(ClaimType::Integer, "18446744073709551616").is_err());
        assert!(parse(ClaimType::Integer, "-9223372036854775809").is_err());
        let err = parse(ClaimType::Integer, "1.5").unwrap_err();
        assert!(err.contains("fraction"), "{err}");
        assert!(parse(ClaimType::Integer, "12.0").is_err());
        assert!(parse(ClaimType::Integer, "1e3").is_err());
        let err = parse(ClaimType::Integer, "\"12\"").unwrap_err();
        assert_eq!(err, "expected an integer, found a string");
        assert!(parse(ClaimType::Integer, "true").is_err());
        assert!(parse(ClaimType::Integer, "null").is_err());
    }

    #[test]
    fn numbers_are_finite() {
        assert_eq!(
            parse(ClaimType::Number, "1.5").unwrap(),
            ClaimValue::Number(1.5)
        );
        assert_eq!(
            parse(ClaimType::Number, "3").unwrap(),
            ClaimValue::Number(3.0)
        );
        assert_eq!(
            parse(ClaimType::Number, "1e308").unwrap(),
            ClaimValue::Number(1e308)
        );
        // A huge integer is still a (rounded) finite number.
        assert_eq!(
            parse(ClaimType::Number, "18446744073709551615").unwrap(),
            ClaimValue::Number(18_446_744_073_709_551_615.0)
        );
        // JSON cannot hold NaN or infinity: serde_json refuses to parse out-of-range numbers,
        // and a non-finite f64 turned into a Value becomes null.
        assert!(serde_json::from_str::<Value>("1e400").is_err());
        assert!(ClaimValue::from_json(ClaimType::Number, &json!(f64::INFINITY)).is_err());
        assert!(ClaimValue::from_json(ClaimType::Number, &json!(f64::NAN)).is_err());
        assert!(parse(ClaimType::Number, "\"1.5\"").is_err());
        // Built by hand, a non-finite number fails validation and serialises as null.
        assert!(ClaimValue::Number(f64::NAN).validate().is_err());
        assert_eq!(ClaimValue::Number(f64::INFINITY).to_json(), Value::Null);
    }

    #[test]
    fn dates_are_strict() {
        assert_eq!(
            parse(ClaimType::Date, "\"2019-04-01\"").unwrap(),
            ClaimValue::Date(date!(2019 - 04 - 01))
        );
        assert_eq!(
            parse(ClaimType::Date, "\"2024-02-29\"").unwrap(),
            ClaimValue::Date(date!(2024 - 02 - 29))
        );
        let err = parse(ClaimType::Date, "\"2026-02-30\"").unwrap_err();
        assert_eq!(err, "no such calendar date");
        assert!(parse(ClaimType::Date, "\"2025-02-29\"").is_err());
        assert_eq!(
            parse(ClaimType::Date, "\"2026-13-01\"").unwrap_err(),
            "no such month"
        );
        assert!(parse(ClaimType::Date, "\"2026-00-10\"").is_err());
        assert!(parse(ClaimType::Date, "\"2026-01-00\"").is_err());
        for bad in [
            "\"2026-1-01\"",
            "\"26-01-01\"",
            "\"2026/01/01\"",
            "\"2026-01-01T00:00:00Z\"",
            "\" 2026-01-01\"",
            "\"+2026-01-1\"",
            "\"2026-01-+1\"",
            "\"２０２６-01-01\"",
            "\"\"",
            "20260101",
        ] {
            assert!(parse(ClaimType::Date, bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn strings_are_bounded() {
        assert_eq!(
            parse(ClaimType::String, "\"Université Lumière Lyon 2\"").unwrap(),
            ClaimValue::String("Université Lumière Lyon 2".into())
        );
        assert_eq!(
            parse(ClaimType::String, "\"\"").unwrap(),
            ClaimValue::String(String::new())
        );
        let max = "é".repeat(MAX_STRING_BYTES / 2);
        assert!(ClaimValue::from_json(ClaimType::String, &json!(max)).is_ok());
        let too_long = format!("{max}a");
        let err = ClaimValue::from_json(ClaimType::String, &json!(too_long)).unwrap_err();
        assert!(err.contains("longer than 4096 bytes"), "{err}");
        for control in ["a\nb", "tab\t", "nul\u{0}", "del\u{7f}", "c1\u{85}"] {
            assert!(
                ClaimValue::from_json(ClaimType::String, &json!(control)).is_err(),
                "{control:?}"
            );
        }
        assert!(parse(ClaimType::String, "12").is_err());
        assert!(parse(ClaimType::String, "[\"a\"]").is_err());
        assert!(parse(ClaimType::String, "{}").is_err());
    }

    #[test]
    fn booleans_are_strict() {
        assert_eq!(
            parse(ClaimType::Boolean, "true").unwrap(),
            ClaimValue::Boolean(true)
        );
        assert_eq!(
            parse(ClaimType::Boolean, "false").unwrap(),
            ClaimValue::Boolean(false)
        );
        assert!(parse(ClaimType::Boolean, "0").is_err());
        assert!(parse(ClaimType::Boolean, "\"true\"").is_err());
    }

    #[test]
    fn errors_do_not_quote_values() {
        let err = parse(ClaimType::Integer, "\"secret-value\"").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
        let err = parse(ClaimType::Date, "\"secret-val\"").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn json_round_trip() {
        for (t, v) in [
            (ClaimType::String, json!("2026-10")),
            (ClaimType::Integer, json!(-42)),
            (ClaimType::Number, json!(1.5)),
            (ClaimType::Boolean, json!(true)),
            (ClaimType::Date, json!("0999-01-31")),
        ] {
            let value = ClaimValue::from_json(t, &v).unwrap();
            assert_eq!(value.claim_type(), t);
            assert_eq!(value.to_json(), v);
        }
    }

    #[test]
    fn claim_type_reads_registry_spelling() {
        let types: Vec<ClaimType> =
            serde_json::from_str(r#"["string","integer","number","boolean","date"]"#).unwrap();
        assert_eq!(
            types,
            [
                ClaimType::String,
                ClaimType::Integer,
                ClaimType::Number,
                ClaimType::Boolean,
                ClaimType::Date
            ]
        );
        assert!(serde_json::from_str::<ClaimType>("\"Integer\"").is_err());
        assert_eq!(ClaimType::Date.to_string(), "date");
    }

    fn schema() -> Vec<ClaimSpec> {
        vec![
            ClaimSpec {
                name: "quotient_familial".into(),
                claim_type: ClaimType::Integer,
            },
            ClaimSpec {
                name: "mois_reference".into(),
                claim_type: ClaimType::String,
            },
        ]
    }

    #[test]
    fn check_claims_accepts_requested_typed_claims() {
        let requested = vec![
            "quotient_familial".to_string(),
            "mois_reference".to_string(),
        ];
        let mut claims = Claims::new();
        claims.insert("quotient_familial".into(), ClaimValue::Integer(612));
        check_claims(&schema(), &requested, &claims).unwrap();
        check_claims(&schema(), &requested, &Claims::new()).unwrap();
    }

    #[test]
    fn check_claims_refuses_unrequested_claim() {
        let requested = vec!["quotient_familial".to_string()];
        let mut claims = Claims::new();
        claims.insert("quotient_familial".into(), ClaimValue::Integer(612));
        claims.insert(
            "mois_reference".into(),
            ClaimValue::String("2026-10".into()),
        );
        let err = check_claims(&schema(), &requested, &claims).unwrap_err();
        assert!(matches!(err, AdapterError::InvalidResponse(_)));
        assert_eq!(
            err.to_string(),
            "invalid provider response: claim \"mois_reference\" was not requested"
        );
    }

    #[test]
    fn check_claims_refuses_wrong_type() {
        let requested = vec!["quotient_familial".to_string()];
        let mut claims = Claims::new();
        claims.insert("quotient_familial".into(), ClaimValue::String("612".into()));
        let err = check_claims(&schema(), &requested, &claims).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid provider response: claim \"quotient_familial\": expected an integer, found a string"
        );
    }

    #[test]
    fn check_claims_refuses_claim_outside_schema_and_bad_values() {
        let requested = vec!["nir".to_string(), "mois_reference".to_string()];
        let mut claims = Claims::new();
        claims.insert("nir".into(), ClaimValue::String("x".into()));
        let err = check_claims(&schema(), &requested, &claims).unwrap_err();
        assert!(
            err.to_string().contains("\"nir\" is not in the schema"),
            "{err}"
        );

        let mut claims = Claims::new();
        claims.insert(
            "mois_reference".into(),
            ClaimValue::String("a\u{1b}[31m".into()),
        );
        let err = check_claims(&schema(), &requested, &claims).unwrap_err();
        assert!(err.to_string().contains("control character"), "{err}");
    }

    #[test]
    fn quote_escapes_and_truncates() {
        assert_eq!(quote("a\"b\n"), "\"a\\\"b\\n\"");
        let long = "é".repeat(100);
        let quoted = quote(&long);
        assert_eq!(quoted, format!("{:?}...", "é".repeat(MAX_QUOTED_CHARS)));
    }
}
