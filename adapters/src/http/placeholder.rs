//! Templates with `{placeholders}`: the request's (URL, query parameters, headers) and the
//! `format` transform's. One syntax for both: `{name}`, or `{name:0N}` to left-pad a value made
//! of digits with zeros to N characters (N from 1 to 9); braces are reserved for placeholders.

use std::fmt;

#[cfg(feature = "runtime")]
use crate::adapter::{AdapterRequest, LegalBasis};
#[cfg(feature = "runtime")]
use crate::civil_status::CivilStatus;
#[cfg(feature = "runtime")]
use crate::error::AdapterError;

/// A piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Token<N> {
    /// Text sent as written.
    Literal(String),
    /// A value substituted, left-padded with zeros to `pad` characters when it is all digits.
    Field {
        /// What is substituted.
        name: N,
        /// Width of the zero padding (`{x:02}`: 2).
        pad: Option<usize>,
    },
}

/// Splits `text` into literals and `{fields}`, each field name checked by `name` (which
/// explains a refusal).
pub(crate) fn tokenize<N>(
    text: &str,
    mut name: impl FnMut(&str) -> Result<N, String>,
) -> Result<Vec<Token<N>>, String> {
    let mut tokens = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err("a '}' without its '{' (braces are reserved for placeholders)".into());
        }
        if open > 0 {
            tokens.push(Token::Literal(rest[..open].to_string()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find(['{', '}'])
            .filter(|&i| after[i..].starts_with('}'))
            .ok_or("a '{' without its '}' (braces are reserved for placeholders)")?;
        let inner = &after[..close];
        let (field, pad) = match inner.split_once(':') {
            None => (inner, None),
            Some((field, spec)) => {
                let width = spec
                    .strip_prefix('0')
                    .filter(|w| w.len() == 1)
                    .and_then(|w| w.parse::<usize>().ok())
                    .filter(|w| *w >= 1)
                    .ok_or_else(|| {
                        format!(
                            "{{{inner}}}: the only format is :0N, zero-padding to N digits (1-9)"
                        )
                    })?;
                (field, Some(width))
            }
        };
        tokens.push(Token::Field {
            name: name(field)?,
            pad,
        });
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        tokens.push(Token::Literal(rest.to_string()));
    }
    Ok(tokens)
}

/// Left-pads `value` with zeros to `pad` characters when it is all ASCII digits.
pub(crate) fn padded(value: &str, pad: Option<usize>) -> String {
    match pad {
        Some(width)
            if value.len() < width
                && !value.is_empty()
                && value.bytes().all(|b| b.is_ascii_digit()) =>
        {
            format!("{value:0>width$}")
        }
        _ => value.to_string(),
    }
}

/// What a request template may substitute: the request's context, and the subject's
/// civil-status fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Placeholder {
    /// `{subject}`: the normalised subject id (`pivot:DUPONT|...`, `siret:...`).
    Subject,
    /// `{claims}`: the requested claims, joined with `,`.
    Claims,
    /// `{consumer}`: the consumer's participant id.
    Consumer,
    /// `{consumer_siret}`: the consumer's SIRET (`participants[i].siret`).
    ConsumerSiret,
    /// `{purpose}`: the purpose's code.
    Purpose,
    /// `{purpose_label}`: the purpose's label.
    PurposeLabel,
    /// `{legal_basis}`: the law citation, or `consent:<id>`.
    LegalBasis,
    /// `{request_id}`: the request id as the broker records it (a keyed digest), or empty.
    RequestId,
    /// `{family_name}`: birth family name (civil status).
    FamilyName,
    /// `{given_names}`: given names, space-joined (civil status).
    GivenNames,
    /// `{given_names[]}`: one query parameter per given name (civil status).
    GivenNamesEach,
    /// `{birth_date}`: `YYYY-MM-DD` (civil status).
    BirthDate,
    /// `{birth_year}`: the year of birth, 4 digits (civil status).
    BirthYear,
    /// `{birth_month}`: the month of birth, 1 to 12, without a leading zero (civil status).
    BirthMonth,
    /// `{birth_day}`: the day of birth, 1 to 31, without a leading zero (civil status).
    BirthDay,
    /// `{sex}`: `M` or `F`, or the adapter's `sex_codes` (civil status).
    Sex,
    /// `{birth_place}`: INSEE commune code, empty for people born abroad (civil status).
    BirthPlace,
    /// `{birth_country}`: INSEE country code, `99100` for France (civil status).
    BirthCountry,
}

impl Placeholder {
    /// Every placeholder, in the order the documentation lists them.
    pub const ALL: [Placeholder; 18] = [
        Placeholder::Subject,
        Placeholder::Claims,
        Placeholder::Consumer,
        Placeholder::ConsumerSiret,
        Placeholder::Purpose,
        Placeholder::PurposeLabel,
        Placeholder::LegalBasis,
        Placeholder::RequestId,
        Placeholder::FamilyName,
        Placeholder::GivenNames,
        Placeholder::GivenNamesEach,
        Placeholder::BirthDate,
        Placeholder::BirthYear,
        Placeholder::BirthMonth,
        Placeholder::BirthDay,
        Placeholder::Sex,
        Placeholder::BirthPlace,
        Placeholder::BirthCountry,
    ];

    /// Its name between the braces.
    pub fn name(self) -> &'static str {
        match self {
            Placeholder::Subject => "subject",
            Placeholder::Claims => "claims",
            Placeholder::Consumer => "consumer",
            Placeholder::ConsumerSiret => "consumer_siret",
            Placeholder::Purpose => "purpose",
            Placeholder::PurposeLabel => "purpose_label",
            Placeholder::LegalBasis => "legal_basis",
            Placeholder::RequestId => "request_id",
            Placeholder::FamilyName => "family_name",
            Placeholder::GivenNames => "given_names",
            Placeholder::GivenNamesEach => "given_names[]",
            Placeholder::BirthDate => "birth_date",
            Placeholder::BirthYear => "birth_year",
            Placeholder::BirthMonth => "birth_month",
            Placeholder::BirthDay => "birth_day",
            Placeholder::Sex => "sex",
            Placeholder::BirthPlace => "birth_place",
            Placeholder::BirthCountry => "birth_country",
        }
    }

    /// Whether the value comes from the subject's civil status (a `pivot:` subject only).
    pub fn needs_civil_status(self) -> bool {
        matches!(
            self,
            Placeholder::FamilyName
                | Placeholder::GivenNames
                | Placeholder::GivenNamesEach
                | Placeholder::BirthDate
                | Placeholder::BirthYear
                | Placeholder::BirthMonth
                | Placeholder::BirthDay
                | Placeholder::Sex
                | Placeholder::BirthPlace
                | Placeholder::BirthCountry
        )
    }

    /// The placeholder called `name`, or why there is none.
    pub(crate) fn parse(name: &str) -> Result<Placeholder, String> {
        Placeholder::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                let known: Vec<String> = Placeholder::ALL
                    .iter()
                    .map(|p| format!("{{{}}}", p.name()))
                    .collect();
                format!(
                    "unknown placeholder {{{}}}; the known ones are {}",
                    crate::claims::quote(name).trim_matches('"'),
                    known.join(", ")
                )
            })
    }
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{}}}", self.name())
    }
}

/// A request template, parsed.
pub(crate) type Template = Vec<Token<Placeholder>>;

/// Parses a request template.
pub(crate) fn parse_template(text: &str) -> Result<Template, String> {
    tokenize(text, Placeholder::parse)
}

/// The placeholders a template uses.
pub(crate) fn placeholders(template: &Template) -> impl Iterator<Item = Placeholder> + '_ {
    template.iter().filter_map(|t| match t {
        Token::Field { name, .. } => Some(*name),
        Token::Literal(_) => None,
    })
}

#[cfg(feature = "runtime")]
/// The values of one request, computed once for all its templates.
pub(crate) struct Values<'a> {
    request: &'a AdapterRequest,
    civil: Option<&'a CivilStatus>,
    legal_basis: String,
    sex: Option<&'a str>,
}

/// How `{sex}` is written: `M`/`F`, or the adapter's codes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SexCodes {
    /// Sent for `M` (male).
    #[serde(rename = "M")]
    pub male: String,
    /// Sent for `F` (female).
    #[serde(rename = "F")]
    pub female: String,
}

#[cfg(feature = "runtime")]
impl<'a> Values<'a> {
    /// The values of `request`; `needs_civil_status` refuses a request without civil status
    /// (a subject that is not `pivot:`), before anything is sent.
    pub(crate) fn of(
        request: &'a AdapterRequest,
        needs_civil_status: bool,
        sex_codes: Option<&'a SexCodes>,
    ) -> Result<Values<'a>, AdapterError> {
        let civil = request.civil_status.as_ref();
        if needs_civil_status && civil.is_none() {
            return Err(not_a_pivot(request));
        }
        let sex = civil.map(|c| match (sex_codes, c.sex) {
            (Some(codes), crate::civil_status::Sex::Male) => codes.male.as_str(),
            (Some(codes), crate::civil_status::Sex::Female) => codes.female.as_str(),
            (None, sex) => sex.code(),
        });
        Ok(Values {
            request,
            civil,
            legal_basis: legal_basis_text(&request.legal_basis),
            sex,
        })
    }

    /// The value of `p` (for `{given_names[]}`, the names space-joined: see
    /// [`Values::each`]).
    pub(crate) fn get(&self, p: Placeholder) -> String {
        let r = self.request;
        let civil = |f: fn(&CivilStatus) -> String| self.civil.map(f).unwrap_or_default();
        match p {
            Placeholder::Subject => r.subject.clone(),
            Placeholder::Claims => r.claims.join(","),
            Placeholder::Consumer => r.consumer.clone(),
            Placeholder::ConsumerSiret => r.consumer_siret.clone().unwrap_or_default(),
            Placeholder::Purpose => r.purpose.clone(),
            Placeholder::PurposeLabel => r.purpose_label.clone(),
            Placeholder::LegalBasis => self.legal_basis.clone(),
            Placeholder::RequestId => r.request_id.clone(),
            Placeholder::FamilyName => civil(|c| c.family_name.clone()),
            Placeholder::GivenNames | Placeholder::GivenNamesEach => {
                civil(|c| c.given_names.join(" "))
            }
            Placeholder::BirthDate => civil(|c| {
                let d = c.birth_date;
                format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
            }),
            Placeholder::BirthYear => civil(|c| format!("{:04}", c.birth_date.year())),
            Placeholder::BirthMonth => civil(|c| u8::from(c.birth_date.month()).to_string()),
            Placeholder::BirthDay => civil(|c| c.birth_date.day().to_string()),
            Placeholder::Sex => self.sex.unwrap_or_default().to_string(),
            Placeholder::BirthPlace => civil(|c| c.birth_place.clone()),
            Placeholder::BirthCountry => civil(|c| c.birth_country.clone()),
        }
    }

    /// The given names, one by one (`{given_names[]}`).
    pub(crate) fn each_given_name(&self) -> &[String] {
        self.civil.map_or(&[], |c| c.given_names.as_slice())
    }

    /// `template` with each placeholder replaced by its value passed through `encode`
    /// (`{claims}`: each claim encoded, then joined with `,`), literals passed through
    /// `literal`.
    pub(crate) fn render(
        &self,
        template: &Template,
        literal: impl Fn(&str) -> String,
        encode: impl Fn(&str) -> String,
    ) -> String {
        let mut out = String::new();
        for token in template {
            match token {
                Token::Literal(text) => out.push_str(&literal(text)),
                Token::Field {
                    name: Placeholder::Claims,
                    ..
                } => {
                    let claims: Vec<String> =
                        self.request.claims.iter().map(|c| encode(c)).collect();
                    out.push_str(&claims.join(","));
                }
                Token::Field { name, pad } => {
                    out.push_str(&encode(&padded(&self.get(*name), *pad)));
                }
            }
        }
        out
    }
}

#[cfg(feature = "runtime")]
/// The legal basis as forwarded: the law citation, or `consent:<id>`.
pub(crate) fn legal_basis_text(basis: &LegalBasis) -> String {
    match basis {
        LegalBasis::Law { citation } => citation.clone(),
        LegalBasis::Consent { consent_id } => format!("consent:{consent_id}"),
    }
}

#[cfg(feature = "runtime")]
/// The refusal of a request whose subject has no civil status, for a route that needs it.
pub(crate) fn not_a_pivot(request: &AdapterRequest) -> AdapterError {
    let scheme = request
        .subject
        .split_once(':')
        .map_or("", |(scheme, _)| scheme);
    AdapterError::SubjectNotAccepted(format!(
        "the provider of {} is asked by civil status (family name, given names, birth date, \
         ...): the subject must be a pivot: identity (docs/subjects.md), not a {}: subject",
        crate::claims::quote(&request.attestation_type),
        crate::claims::quote(scheme).trim_matches('"'),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_into_literals_and_placeholders() {
        let t = parse_template("/v1/{subject}?x={birth_month:02}&n={given_names[]}").unwrap();
        assert_eq!(
            t,
            vec![
                Token::Literal("/v1/".into()),
                Token::Field {
                    name: Placeholder::Subject,
                    pad: None
                },
                Token::Literal("?x=".into()),
                Token::Field {
                    name: Placeholder::BirthMonth,
                    pad: Some(2)
                },
                Token::Literal("&n=".into()),
                Token::Field {
                    name: Placeholder::GivenNamesEach,
                    pad: None
                },
            ]
        );
        for (bad, why) in [
            ("{recipient}", "unknown placeholder {recipient}"),
            ("{Subject}", "unknown placeholder"),
            ("{subject", "without its '}'"),
            ("subject}", "without its '{'"),
            ("{{subject}}", "without its '}'"),
            ("{a{b}", "without its '}'"),
            ("{birth_month:2}", ":0N"),
            ("{birth_month:010}", ":0N"),
            ("{birth_month:00}", ":0N"),
        ] {
            let err = parse_template(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(
            parse_template("{nope}")
                .unwrap_err()
                .contains("{consumer_siret}"),
            "the error lists the known placeholders"
        );
    }

    #[test]
    fn padding_applies_to_digits_only() {
        assert_eq!(padded("7", Some(2)), "07");
        assert_eq!(padded("12", Some(2)), "12");
        assert_eq!(padded("123", Some(2)), "123");
        assert_eq!(padded("M", Some(2)), "M");
        assert_eq!(padded("", Some(2)), "");
        assert_eq!(padded("7", None), "7");
    }
}
