//! What a call sends besides the URL template's path: the `query` table and the headers whose
//! values hold placeholders, with each value percent-encoded for where it lands.

use std::collections::BTreeMap;

#[cfg(feature = "runtime")]
use http::header::{AUTHORIZATION, PROXY_AUTHORIZATION};
use http::header::{HeaderName, HeaderValue};
use percent_encoding::utf8_percent_encode;
#[cfg(feature = "runtime")]
use url::Url;

#[cfg(feature = "runtime")]
use super::HEADER_VALUE;
#[cfg(feature = "runtime")]
use super::placeholder::Values;
use super::placeholder::{Placeholder, SexCodes, Template, Token, parse_template, placeholders};
use super::{URL_COMPONENT, key_segment};
#[cfg(feature = "runtime")]
use crate::error::AdapterError;

/// Longest query parameter name accepted, in bytes.
const MAX_QUERY_NAME_BYTES: usize = 128;
/// Most entries of the `query` table.
const MAX_QUERY_PARAMETERS: usize = 64;
/// Longest `sex_codes` value, in bytes.
const MAX_SEX_CODE_BYTES: usize = 32;

/// A query parameter's value.
#[derive(Clone, Debug)]
enum QueryValue {
    /// `{given_names[]}`: the parameter once per given name.
    EachGivenName,
    /// A template; omitted when it has placeholders and renders empty.
    Template(Template),
}

/// The request side of an adapter: URL template, query table, templated headers.
#[derive(Clone, Debug)]
pub(crate) struct RequestTemplates {
    url: Template,
    /// Each parameter's name as declared and percent-encoded, in the table's (sorted) order.
    query: Vec<(String, String, QueryValue)>,
    headers: Vec<(HeaderName, Template)>,
    needs_civil_status: bool,
    sex_codes: Option<SexCodes>,
}

/// Where each placeholder is used: the first configuration field (`url`, `query.recipient`,
/// `headers.X-Recipient`) that uses it.
pub type PlaceholderUses = BTreeMap<Placeholder, String>;

impl RequestTemplates {
    /// The URL template (already checked by `validate_url_template`), the `query` table and
    /// `sex_codes`; `(field, reason)` on a refusal.
    pub(crate) fn new(
        url: Template,
        query: &BTreeMap<String, String>,
        sex_codes: Option<&SexCodes>,
    ) -> Result<RequestTemplates, (String, String)> {
        if query.len() > MAX_QUERY_PARAMETERS {
            return Err((
                "query".into(),
                format!("at most {MAX_QUERY_PARAMETERS} parameters"),
            ));
        }
        let mut compiled = Vec::with_capacity(query.len());
        for (name, value) in query {
            let field = format!("query.{}", key_segment(name));
            if name.is_empty() || name.len() > MAX_QUERY_NAME_BYTES {
                return Err((
                    field,
                    format!("a parameter name has 1 to {MAX_QUERY_NAME_BYTES} bytes"),
                ));
            }
            if name.chars().any(|c| c.is_control() || c == '{' || c == '}') {
                return Err((
                    field,
                    "a parameter name is sent as written: no control character, no placeholder"
                        .into(),
                ));
            }
            let template = parse_template(value).map_err(|why| (field.clone(), why))?;
            let each = template.iter().any(|t| {
                matches!(
                    t,
                    Token::Field {
                        name: Placeholder::GivenNamesEach,
                        ..
                    }
                )
            });
            let value = if each {
                if template.len() != 1 {
                    return Err((
                        field,
                        "{given_names[]} must be the whole value: the parameter is repeated, \
                         once per given name"
                            .into(),
                    ));
                }
                QueryValue::EachGivenName
            } else {
                QueryValue::Template(template)
            };
            compiled.push((
                name.clone(),
                utf8_percent_encode(name, URL_COMPONENT).to_string(),
                value,
            ));
        }
        if let Some(codes) = sex_codes {
            for (field, code) in [("sex_codes.M", &codes.male), ("sex_codes.F", &codes.female)] {
                if code.is_empty()
                    || code.len() > MAX_SEX_CODE_BYTES
                    || code.chars().any(char::is_control)
                {
                    return Err((
                        field.into(),
                        format!("1 to {MAX_SEX_CODE_BYTES} bytes, no control character"),
                    ));
                }
            }
        }
        let mut templates = RequestTemplates {
            url,
            query: compiled,
            headers: Vec::new(),
            needs_civil_status: false,
            sex_codes: sex_codes.cloned(),
        };
        templates.needs_civil_status = templates.uses().keys().any(|p| p.needs_civil_status());
        Ok(templates)
    }

    /// Adds a header whose value holds placeholders.
    pub(crate) fn add_header(&mut self, name: HeaderName, template: Template) {
        self.needs_civil_status |= placeholders(&template).any(Placeholder::needs_civil_status);
        self.headers.push((name, template));
    }

    /// Where each placeholder is used (the headers added so far included).
    pub(crate) fn uses(&self) -> PlaceholderUses {
        let mut uses = PlaceholderUses::new();
        let mut note = |template: &Template, field: String| {
            for p in placeholders(template) {
                uses.entry(p).or_insert_with(|| field.clone());
            }
        };
        note(&self.url, "url".into());
        for (name, _, value) in &self.query {
            let field = format!("query.{}", key_segment(name));
            match value {
                QueryValue::EachGivenName => note(
                    &vec![Token::Field {
                        name: Placeholder::GivenNamesEach,
                        pad: None,
                    }],
                    field,
                ),
                QueryValue::Template(t) => note(t, field),
            }
        }
        for (name, template) in &self.headers {
            note(template, format!("headers.{}", key_segment(name.as_str())));
        }
        uses
    }

    #[cfg(feature = "runtime")]
    /// The values of a request, or its refusal (no civil status where one is needed).
    pub(crate) fn values<'a>(
        &'a self,
        request: &'a crate::adapter::AdapterRequest,
    ) -> Result<Values<'a>, AdapterError> {
        Values::of(request, self.needs_civil_status, self.sex_codes.as_ref())
    }

    #[cfg(feature = "runtime")]
    /// The URL of a call: the template with its values percent-encoded (only
    /// `A-Z a-z 0-9 - . _ ~` stay as they are), then the query table appended, names and values
    /// percent-encoded the same way.
    pub(crate) fn url(&self, values: &Values<'_>) -> Result<Url, AdapterError> {
        let unbuildable = || AdapterError::Unavailable {
            reason: "cannot build the provider URL".into(),
            retry_after: None,
        };
        let component = |v: &str| utf8_percent_encode(v, URL_COMPONENT).to_string();
        let base = values.render(&self.url, str::to_string, component);
        let mut url = Url::parse(&base).map_err(|_| unbuildable())?;
        if self.query.is_empty() {
            return Ok(url);
        }
        let mut query = url.query().unwrap_or_default().to_string();
        let mut push = |name: &str, value: &str| {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str(name);
            query.push('=');
            query.push_str(&component(value));
        };
        for (_, name, value) in &self.query {
            match value {
                QueryValue::EachGivenName => {
                    for given in values.each_given_name() {
                        push(name, given);
                    }
                }
                QueryValue::Template(template) => {
                    let raw = values.render(template, str::to_string, str::to_string);
                    if raw.is_empty() && placeholders(template).next().is_some() {
                        continue;
                    }
                    push(name, &raw);
                }
            }
        }
        url.set_query((!query.is_empty()).then_some(query.as_str()));
        Ok(url)
    }

    #[cfg(feature = "runtime")]
    /// The templated headers of a call: literals as written, values percent-encoded where they
    /// hold a control character, `%` or a non-ASCII byte. A header that renders empty is left
    /// out.
    pub(crate) fn headers(
        &self,
        values: &Values<'_>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, AdapterError> {
        let mut out = Vec::with_capacity(self.headers.len());
        for (name, template) in &self.headers {
            let text = values.render(template, str::to_string, |v| {
                utf8_percent_encode(v, HEADER_VALUE).to_string()
            });
            if text.is_empty() {
                continue;
            }
            let mut value =
                HeaderValue::from_str(&text).map_err(|_| AdapterError::Unavailable {
                    reason: format!("cannot encode header {name}"),
                    retry_after: None,
                })?;
            if *name == AUTHORIZATION || *name == PROXY_AUTHORIZATION {
                value.set_sensitive(true);
            }
            out.push((name.clone(), value));
        }
        Ok(out)
    }
}

/// A header value as a template: `None` when it holds no placeholder (a static header). The
/// literal parts must already be a valid header value.
pub(crate) fn header_template(value: &str) -> Result<Option<Template>, String> {
    let template = parse_template(value)?;
    if placeholders(&template).next().is_none() {
        return Ok(None);
    }
    if placeholders(&template).any(|p| p == Placeholder::GivenNamesEach) {
        return Err("{given_names[]} repeats a query parameter; use {given_names} here".into());
    }
    let sample: String = template
        .iter()
        .map(|t| match t {
            Token::Literal(text) => text.as_str(),
            Token::Field { .. } => "x",
        })
        .collect();
    HeaderValue::from_str(&sample)
        .map_err(|_| "invalid header value (visible ASCII and spaces only)".to_string())?;
    Ok(Some(template))
}
