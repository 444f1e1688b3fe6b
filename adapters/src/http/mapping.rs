//! Where each claim lies in a provider's answer: a JSON pointer (RFC 6901), a JSONPath
//! (RFC 9535, the `serde_json_path` crate), or a table naming one transform of a small closed
//! set, each type-checked against the claim's declared type when the registry is loaded.
//!
//! What is absent stays absent: a path that selects nothing, or `null`, means that the provider
//! holds no value for the claim. A path that selects several values for one claim is an invalid
//! answer, unless a transform (`count`) says what to do with them.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_json::Value;
use serde_json_path::JsonPath;
use time::Date;
use time::format_description::OwnedFormatItem;

use super::answer::validate_pointer;
use super::key_segment;
use super::placeholder::{Token, padded, tokenize};
use crate::claims::{ClaimSpec, ClaimType, ClaimValue, Claims, quote};
use crate::error::AdapterError;

/// Longest JSON pointer or JSONPath accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 512;
/// Most entries of a `map` table, and most paths of a `format`.
const MAX_ENTRIES: usize = 256;
/// Longest `format` template or date `pattern`, in bytes.
const MAX_TEMPLATE_BYTES: usize = 256;

/// How one claim is read from the answer (the registry's `claims.<name>`): a path string, or a
/// transform table.
#[derive(Clone, Debug, PartialEq)]
pub enum ClaimMapping {
    /// `"/data/x"` (a JSON pointer) or `"$.data.x"` (a JSONPath): the value itself, of the
    /// claim's type exactly (no conversion).
    Path(String),
    /// A transform table, as written (checked when the mapping is compiled, so that a refusal
    /// names its key): `{ count = ... }`, `{ format = ..., paths = ... }`,
    /// `{ date = ..., pattern = ... }`, `{ map = ..., path = ... }`, `{ integer = ... }`,
    /// `{ decimal = ... }`, `{ boolean = ... }`.
    Transform(BTreeMap<String, Value>),
}

impl From<&str> for ClaimMapping {
    fn from(path: &str) -> Self {
        ClaimMapping::Path(path.to_string())
    }
}

impl From<String> for ClaimMapping {
    fn from(path: String) -> Self {
        ClaimMapping::Path(path)
    }
}

impl<'de> Deserialize<'de> for ClaimMapping {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MappingVisitor;
        impl<'de> Visitor<'de> for MappingVisitor {
            type Value = ClaimMapping;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a JSON pointer (\"/a/b\"), a JSONPath (\"$.a.b\") or a transform table \
                     ({ count = \"$.a[*]\" }, ...)",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ClaimMapping, E> {
                Ok(ClaimMapping::Path(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ClaimMapping, A::Error> {
                BTreeMap::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(ClaimMapping::Transform)
            }
        }
        deserializer.deserialize_any(MappingVisitor)
    }
}

/// A transform table: exactly one of `count`, `format`, `date`, `map`, `integer`, `decimal`,
/// `boolean`, with the keys that transform takes.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Transform {
    /// Integer claim: the length of the array a singular path selects, or the number of nodes
    /// any other JSONPath selects.
    pub count: Option<String>,
    /// String (or date) claim: a template of `{name}` / `{name:0N}` fields, each the value one
    /// path of `paths` selects.
    pub format: Option<String>,
    /// The paths of `format`, by field name.
    #[serde(default)]
    pub paths: BTreeMap<String, String>,
    /// Date claim: a string in `pattern` (`[day]/[month]/[year]`, the `time` crate's format
    /// description, version 2).
    pub date: Option<String>,
    /// The pattern of `date`.
    pub pattern: Option<String>,
    /// Any claim: the provider's value (a string, an integer or a boolean, as text) → the
    /// claim's value; a value not in the table is an invalid answer.
    pub map: Option<BTreeMap<String, Value>>,
    /// The path of `map`.
    pub path: Option<String>,
    /// Integer claim, from an integer, a number without a fraction or a string of digits.
    pub integer: Option<String>,
    /// Number claim, from a number or a decimal string (`"12.5"`).
    pub decimal: Option<String>,
    /// Boolean claim, from a boolean, `"true"`/`"false"` (any case), `"1"`/`"0"`, `1`/`0`.
    pub boolean: Option<String>,
}

/// The keys a transform table may hold.
const TRANSFORM_KEYS: [&str; 10] = [
    "count", "format", "paths", "date", "pattern", "map", "path", "integer", "decimal", "boolean",
];

/// Where values are taken from.
#[derive(Clone, Debug)]
enum Selector {
    /// An RFC 6901 pointer: at most one node.
    Pointer(String),
    /// A JSONPath; `singular` when it can select one node at most (RFC 9535, 2.3.5.1).
    Path { path: JsonPath, singular: bool },
}

/// What a selector found for a scalar.
enum One<'a> {
    Absent,
    Value(&'a Value),
    Several(usize),
}

impl Selector {
    fn parse(text: &str) -> Result<Selector, String> {
        if text.len() > MAX_PATH_BYTES {
            return Err(format!("a path has at most {MAX_PATH_BYTES} bytes"));
        }
        if text.starts_with('$') {
            let path =
                JsonPath::parse(text).map_err(|e| format!("JSONPath {}: {e}", quote(text)))?;
            // RFC 9535 allows only singular queries beside a comparison: the grammar says
            // whether this one is.
            let singular = JsonPath::parse(&format!("$[?{text} == 0]")).is_ok();
            Ok(Selector::Path { path, singular })
        } else if text.is_empty() || text.starts_with('/') {
            validate_pointer(text)?;
            Ok(Selector::Pointer(text.to_string()))
        } else {
            Err(format!(
                "{} is neither a JSON pointer (starting with '/') nor a JSONPath (starting with \
                 '$')",
                quote(text)
            ))
        }
    }

    fn nodes<'a>(&self, document: &'a Value) -> Vec<&'a Value> {
        match self {
            Selector::Pointer(pointer) => document.pointer(pointer).into_iter().collect(),
            Selector::Path { path, .. } => path.query(document).all(),
        }
    }

    fn one<'a>(&self, document: &'a Value) -> One<'a> {
        let nodes = self.nodes(document);
        match nodes[..] {
            [] | [Value::Null] => One::Absent,
            [value] => One::Value(value),
            _ => One::Several(nodes.len()),
        }
    }

    fn singular(&self) -> bool {
        match self {
            Selector::Pointer(_) => true,
            Selector::Path { singular, .. } => *singular,
        }
    }
}

/// A compiled claim mapping.
#[derive(Clone, Debug)]
enum Rule {
    Value(Selector),
    Count(Selector),
    Format {
        template: Vec<Token<String>>,
        paths: BTreeMap<String, Selector>,
    },
    Date(Selector, OwnedFormatItem),
    Map(Selector, BTreeMap<String, ClaimValue>),
    Integer(Selector),
    Decimal(Selector),
    Boolean(Selector),
}

/// How every mapped claim is read.
#[derive(Clone, Debug)]
pub(crate) struct Mapping {
    claims: BTreeMap<String, (Rule, ClaimType)>,
}

/// A refusal at load: the field (`claims.<name>...`) and why.
type Refusal = (String, String);

impl Mapping {
    /// Compiles and type-checks the mappings of `config` against `schema`.
    pub(crate) fn new(
        attestation_type: &str,
        schema: &[ClaimSpec],
        config: &BTreeMap<String, ClaimMapping>,
    ) -> Result<Mapping, Refusal> {
        if config.is_empty() {
            return Err(("claims".into(), "at least one claim is needed".into()));
        }
        let mut claims = BTreeMap::new();
        for (name, mapping) in config {
            let field = format!("claims.{}", key_segment(name));
            let Some(spec) = schema.iter().find(|s| s.name == *name) else {
                return Err((
                    field,
                    format!(
                        "claim {} is not in the schema of {}",
                        quote(name),
                        quote(attestation_type)
                    ),
                ));
            };
            let rule = compile(&field, spec.claim_type, mapping)?;
            claims.insert(name.clone(), (rule, spec.claim_type));
        }
        Ok(Mapping { claims })
    }

    /// The mapped claims' names.
    pub(crate) fn names(&self) -> impl Iterator<Item = &String> {
        self.claims.keys()
    }

    /// Reads the requested claims that are mapped out of `document`.
    pub(crate) fn extract(
        &self,
        document: &Value,
        requested: &[String],
    ) -> Result<Claims, AdapterError> {
        let mut claims = Claims::new();
        for name in requested {
            let Some((rule, claim_type)) = self.claims.get(name) else {
                continue;
            };
            let value = read(rule, *claim_type, document).map_err(|why| {
                AdapterError::InvalidResponse(format!("claim {}: {why}", quote(name)))
            })?;
            if let Some(value) = value {
                claims.insert(name.clone(), value);
            }
        }
        Ok(claims)
    }
}

/// Compiles one mapping, checking its transform against the claim's type.
fn compile(field: &str, claim_type: ClaimType, mapping: &ClaimMapping) -> Result<Rule, Refusal> {
    let at = |key: &str| format!("{field}.{key}");
    let selector = |key: &str, text: &str| Selector::parse(text).map_err(|why| (at(key), why));
    let table = match mapping {
        ClaimMapping::Path(text) => {
            return Selector::parse(text)
                .map(Rule::Value)
                .map_err(|why| (field.to_string(), why));
        }
        ClaimMapping::Transform(table) => table,
    };
    if let Some(key) = table.keys().find(|k| !TRANSFORM_KEYS.contains(&k.as_str())) {
        return Err((
            at(&key_segment(key)),
            "not a key of a transform table; the transforms are count, format (with paths), \
             date (with pattern), map (with path), integer, decimal, boolean"
                .into(),
        ));
    }
    let t: Transform = serde_json::from_value(Value::Object(
        table.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    ))
    .map_err(|e| (field.to_string(), e.to_string()))?;
    let chosen: Vec<&str> = [
        ("count", t.count.is_some()),
        ("format", t.format.is_some()),
        ("date", t.date.is_some()),
        ("map", t.map.is_some()),
        ("integer", t.integer.is_some()),
        ("decimal", t.decimal.is_some()),
        ("boolean", t.boolean.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect();
    let transform = match chosen[..] {
        [one] => one,
        [] => {
            return Err((
                field.to_string(),
                "a transform table names one of count, format, date, map, integer, decimal, \
                 boolean"
                    .into(),
            ));
        }
        _ => {
            return Err((
                field.to_string(),
                format!("one transform per claim, not {}", chosen.join(" and ")),
            ));
        }
    };
    // Keys that belong to another transform.
    for (key, set, owner) in [
        ("paths", !t.paths.is_empty(), "format"),
        ("pattern", t.pattern.is_some(), "date"),
        ("path", t.path.is_some(), "map"),
    ] {
        if set && transform != owner {
            return Err((at(key), format!("{key} goes with {owner}, not {transform}")));
        }
    }
    let expects = |types: &[ClaimType]| {
        if types.contains(&claim_type) {
            Ok(())
        } else {
            let names: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
            Err((
                at(transform),
                format!(
                    "{transform} gives {}, and the claim is declared {claim_type}",
                    names.join(" or ")
                ),
            ))
        }
    };
    let path_of = |value: &Option<String>| value.clone().unwrap_or_default();
    match transform {
        "count" => {
            expects(&[ClaimType::Integer])?;
            Ok(Rule::Count(selector("count", &path_of(&t.count))?))
        }
        "integer" => {
            expects(&[ClaimType::Integer])?;
            Ok(Rule::Integer(selector("integer", &path_of(&t.integer))?))
        }
        "decimal" => {
            expects(&[ClaimType::Number])?;
            Ok(Rule::Decimal(selector("decimal", &path_of(&t.decimal))?))
        }
        "boolean" => {
            expects(&[ClaimType::Boolean])?;
            Ok(Rule::Boolean(selector("boolean", &path_of(&t.boolean))?))
        }
        "date" => {
            expects(&[ClaimType::Date])?;
            let source = selector("date", &path_of(&t.date))?;
            let pattern = t.pattern.as_deref().ok_or_else(|| {
                (
                    at("pattern"),
                    "required with date, e.g. \"[day]/[month]/[year]\"".to_string(),
                )
            })?;
            Ok(Rule::Date(
                source,
                date_pattern(pattern).map_err(|why| (at("pattern"), why))?,
            ))
        }
        "format" => {
            expects(&[ClaimType::String, ClaimType::Date])?;
            let text = path_of(&t.format);
            if text.len() > MAX_TEMPLATE_BYTES {
                return Err((at("format"), format!("at most {MAX_TEMPLATE_BYTES} bytes")));
            }
            if t.paths.len() > MAX_ENTRIES {
                return Err((at("paths"), format!("at most {MAX_ENTRIES} paths")));
            }
            let template = tokenize(&text, |name| {
                if t.paths.contains_key(name) {
                    Ok(name.to_string())
                } else {
                    Err(format!(
                        "{{{}}} names no entry of paths",
                        quote(name).trim_matches('"')
                    ))
                }
            })
            .map_err(|why| (at("format"), why))?;
            let mut paths = BTreeMap::new();
            for (name, path) in &t.paths {
                let used = template
                    .iter()
                    .any(|tok| matches!(tok, Token::Field { name: n, .. } if n == name));
                let key = format!("paths.{}", key_segment(name));
                if !used {
                    return Err((at(&key), "not used by the format".into()));
                }
                paths.insert(name.clone(), selector(&key, path)?);
            }
            Ok(Rule::Format { template, paths })
        }
        _ => {
            // map
            let table = t.map.as_ref().map_or_else(BTreeMap::new, Clone::clone);
            if table.is_empty() || table.len() > MAX_ENTRIES {
                return Err((at("map"), format!("1 to {MAX_ENTRIES} entries")));
            }
            let source = t
                .path
                .as_deref()
                .ok_or_else(|| (at("path"), "required with map".to_string()))?;
            let source = selector("path", source)?;
            let mut values = BTreeMap::new();
            for (key, json) in table {
                let value = ClaimValue::from_json(claim_type, &json).map_err(|why| {
                    (
                        at(&format!("map.{}", key_segment(&key))),
                        format!("the claim is declared {claim_type}: {why}"),
                    )
                })?;
                values.insert(key, value);
            }
            Ok(Rule::Map(source, values))
        }
    }
}

/// A date pattern that determines a whole date: formatting a date and parsing it back must
/// give the same date.
fn date_pattern(pattern: &str) -> Result<OwnedFormatItem, String> {
    if pattern.len() > MAX_TEMPLATE_BYTES {
        return Err(format!("at most {MAX_TEMPLATE_BYTES} bytes"));
    }
    let format = time::format_description::parse_owned::<2>(pattern)
        .map_err(|e| format!("not a date pattern: {e}"))?;
    let sample = time::macros::date!(2024 - 11 - 29);
    let round_trip = sample
        .format(&format)
        .ok()
        .and_then(|text| Date::parse(&text, &format).ok());
    if round_trip != Some(sample) {
        return Err(
            "the pattern must give a whole date, e.g. \"[day]/[month]/[year]\" or \
             \"[year][month][day]\""
                .into(),
        );
    }
    Ok(format)
}

/// The claim a rule reads from `document`: `None` when the provider holds no value, `Err` (a
/// reason that never quotes a value) when the answer does not fit.
fn read(
    rule: &Rule,
    claim_type: ClaimType,
    document: &Value,
) -> Result<Option<ClaimValue>, String> {
    let several = |n: usize| format!("the path selects {n} values where one is expected");
    let one = |selector: &Selector| -> Result<Option<&Value>, String> {
        match selector.one(document) {
            One::Absent => Ok(None),
            One::Value(v) => Ok(Some(v)),
            One::Several(n) => Err(several(n)),
        }
    };
    let value = match rule {
        Rule::Value(selector) => match one(selector)? {
            None => None,
            Some(v) => Some(ClaimValue::from_json(claim_type, v)?),
        },
        Rule::Count(selector) if selector.singular() => match one(selector)? {
            None => None,
            Some(Value::Array(items)) => Some(ClaimValue::Integer(len(items.len())?)),
            Some(other) => {
                return Err(format!("count: expected an array, found {}", kind(other)));
            }
        },
        Rule::Count(selector) => Some(ClaimValue::Integer(len(selector.nodes(document).len())?)),
        Rule::Format { template, paths } => {
            let mut text = String::new();
            for token in template {
                match token {
                    Token::Literal(literal) => text.push_str(literal),
                    Token::Field { name, pad } => {
                        let Some(selector) = paths.get(name) else {
                            return Err("format: a field without its path".into());
                        };
                        let Some(value) = one(selector)? else {
                            return Ok(None);
                        };
                        let part = match value {
                            Value::String(s) => s.clone(),
                            Value::Number(n) => n.to_string(),
                            Value::Bool(b) => b.to_string(),
                            other => {
                                return Err(format!(
                                    "format: {{{name}}} is {}, not a string, number or boolean",
                                    kind(other)
                                ));
                            }
                        };
                        text.push_str(&padded(&part, *pad));
                    }
                }
            }
            Some(ClaimValue::from_json(claim_type, &Value::String(text))?)
        }
        Rule::Date(selector, pattern) => match one(selector)? {
            None => None,
            Some(Value::String(s)) => {
                Some(ClaimValue::Date(Date::parse(s, pattern).map_err(|_| {
                    "date: not a date in the declared pattern".to_string()
                })?))
            }
            Some(other) => return Err(format!("date: expected a string, found {}", kind(other))),
        },
        Rule::Map(selector, table) => {
            match one(selector)? {
                None => None,
                Some(v) => {
                    let key = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        other => {
                            return Err(format!(
                                "map: expected a string, an integer or a boolean, found {}",
                                kind(other)
                            ));
                        }
                    };
                    Some(table.get(&key).cloned().ok_or_else(|| {
                        "map: the provider's value is not in the table".to_string()
                    })?)
                }
            }
        }
        Rule::Integer(selector) => match one(selector)? {
            None => None,
            Some(v) => Some(ClaimValue::Integer(to_integer(v)?)),
        },
        Rule::Decimal(selector) => match one(selector)? {
            None => None,
            Some(v) => Some(ClaimValue::Number(to_decimal(v)?)),
        },
        Rule::Boolean(selector) => match one(selector)? {
            None => None,
            Some(v) => Some(ClaimValue::Boolean(to_boolean(v)?)),
        },
    };
    if let Some(value) = &value {
        value.validate()?;
    }
    Ok(value)
}

fn len(n: usize) -> Result<i64, String> {
    i64::try_from(n).map_err(|_| "count out of range".to_string())
}

/// `integer`: an integer, a number without a fraction, or an optionally signed string of digits.
fn to_integer(v: &Value) -> Result<i64, String> {
    const RANGE: &str = "integer: out of range (must fit a signed 64-bit integer)";
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Ok(i);
            }
            if n.is_u64() {
                return Err(RANGE.into());
            }
            let x = n.as_f64().unwrap_or(f64::NAN);
            // i64::MIN and 2^63 are exact doubles: within them, a whole number converts exactly.
            if x.fract() == 0.0
                && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&x)
            {
                Ok(x as i64)
            } else if x.fract() != 0.0 {
                Err("integer: the number has a fraction".into())
            } else {
                Err(RANGE.into())
            }
        }
        Value::String(s) => {
            let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err("integer: the string is not an integer".into());
            }
            s.parse::<i64>().map_err(|_| RANGE.into())
        }
        other => Err(format!(
            "integer: expected a number or a string, found {}",
            kind(other)
        )),
    }
}

/// `decimal`: a number, or a string such as `12.5`, `-3`, `1e3` (no `NaN`, no infinity).
fn to_decimal(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| "decimal: number not representable as a double".to_string()),
        Value::String(s) => {
            let shaped = s.bytes().any(|b| b.is_ascii_digit())
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
            let x = if shaped { s.parse::<f64>().ok() } else { None };
            x.filter(|x| x.is_finite())
                .ok_or_else(|| "decimal: the string is not a decimal number".to_string())
        }
        other => Err(format!(
            "decimal: expected a number or a string, found {}",
            kind(other)
        )),
    }
}

/// `boolean`: `true`/`false`, the strings `true`/`false` (any case), `1`/`0`, the numbers 1/0.
fn to_boolean(v: &Value) -> Result<bool, String> {
    let unknown = || "boolean: not one of true, false, 1, 0".to_string();
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) => match n.as_u64() {
            Some(1) => Ok(true),
            Some(0) => Ok(false),
            _ => Err(unknown()),
        },
        Value::String(s) if s.eq_ignore_ascii_case("true") || s == "1" => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") || s == "0" => Ok(false),
        Value::String(_) => Err(unknown()),
        other => Err(format!(
            "boolean: expected a boolean, a number or a string, found {}",
            kind(other)
        )),
    }
}

/// The kind of a JSON value, for messages.
fn kind(v: &Value) -> &'static str {
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

    fn schema() -> Vec<ClaimSpec> {
        [
            ("qf", ClaimType::Integer),
            ("mois", ClaimType::String),
            ("depuis", ClaimType::Date),
            ("boursier", ClaimType::Boolean),
            ("montant", ClaimType::Number),
        ]
        .into_iter()
        .map(|(name, claim_type)| ClaimSpec {
            name: name.into(),
            claim_type,
        })
        .collect()
    }

    fn mapping(config: Value) -> Result<Mapping, Refusal> {
        let config: BTreeMap<String, ClaimMapping> = serde_json::from_value(config).unwrap();
        Mapping::new("caf.qf", &schema(), &config)
    }

    fn extract(config: Value, document: Value) -> Result<Claims, AdapterError> {
        let m = mapping(config).unwrap();
        let all: Vec<String> = schema().into_iter().map(|s| s.name).collect();
        m.extract(&document, &all)
    }

    #[test]
    fn singular_paths_are_told_apart() {
        for (path, singular) in [
            ("$", true),
            ("$.a.b", true),
            ("$['a'][0]", true),
            ("$.a[-1]", true),
            ("$.a[*]", false),
            ("$.a[0,1]", false),
            ("$.a[0:2]", false),
            ("$..a", false),
            ("$.a[?@.b == 1]", false),
            ("$.a[?@.b == 1].c", false),
        ] {
            assert_eq!(
                Selector::parse(path).unwrap().singular(),
                singular,
                "{path}"
            );
        }
        assert!(Selector::parse("/a/b").unwrap().singular());
    }

    #[test]
    fn paths_are_pointers_or_jsonpaths() {
        for bad in ["data/x", "$.a[", "$.a[?match(@.b, 'x')]", "/a~2", "@.a"] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
        let long = format!("$.{}", "a".repeat(MAX_PATH_BYTES));
        assert!(Selector::parse(&long).unwrap_err().contains("at most 512"));
    }

    #[test]
    fn plain_paths_read_values_strictly() {
        let doc = json!({"data": {"qf": 612, "qfs": [1, 2], "s": "612", "n": null}});
        let claims = extract(
            json!({"qf": "$.data.qf", "mois": "/data/absent"}),
            doc.clone(),
        )
        .unwrap();
        assert_eq!(
            claims.into_iter().collect::<Vec<_>>(),
            [("qf".to_string(), ClaimValue::Integer(612))]
        );
        assert!(
            extract(json!({"qf": "$.data.n"}), doc.clone())
                .unwrap()
                .is_empty()
        );
        let err = extract(json!({"qf": "$.data.qfs[*]"}), doc.clone()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid provider response: claim \"qf\": the path selects 2 values where one is expected"
        );
        let err = extract(json!({"qf": "$.data.s"}), doc).unwrap_err();
        assert!(
            err.to_string()
                .contains("expected an integer, found a string"),
            "{err}"
        );
    }

    #[test]
    fn count_gives_an_array_length_or_a_number_of_nodes() {
        let doc = json!({"data": {"enfants": [{"rang": 1}, {"rang": 2}, {"rang": 2}], "vide": [], "x": 3}});
        let count = |path: &str| {
            extract(json!({"qf": {"count": path}}), doc.clone()).map(|c| c.get("qf").cloned())
        };
        assert_eq!(
            count("$.data.enfants").unwrap(),
            Some(ClaimValue::Integer(3))
        );
        assert_eq!(
            count("/data/enfants").unwrap(),
            Some(ClaimValue::Integer(3))
        );
        assert_eq!(count("$.data.vide").unwrap(), Some(ClaimValue::Integer(0)));
        assert_eq!(
            count("$.data.enfants[*]").unwrap(),
            Some(ClaimValue::Integer(3))
        );
        assert_eq!(
            count("$.data.enfants[?@.rang == 2]").unwrap(),
            Some(ClaimValue::Integer(2))
        );
        assert_eq!(
            count("$.data.absent[*]").unwrap(),
            Some(ClaimValue::Integer(0))
        );
        // A singular path to nothing: the provider holds no value.
        assert_eq!(count("$.data.absent").unwrap(), None);
        assert!(
            count("$.data.x")
                .unwrap_err()
                .to_string()
                .contains("expected an array")
        );
    }

    #[test]
    fn format_joins_paths_with_padding() {
        let config = json!({"mois": {"format": "{annee}-{mois:02}", "paths": {"annee": "$.qf.annee", "mois": "$.qf.mois"}}});
        let claims = extract(config.clone(), json!({"qf": {"annee": 2026, "mois": 3}})).unwrap();
        assert_eq!(claims["mois"], ClaimValue::String("2026-03".into()));
        let claims = extract(
            config.clone(),
            json!({"qf": {"annee": "2026", "mois": "11"}}),
        )
        .unwrap();
        assert_eq!(claims["mois"], ClaimValue::String("2026-11".into()));
        // One part absent: no value.
        assert!(
            extract(config.clone(), json!({"qf": {"annee": 2026}}))
                .unwrap()
                .is_empty()
        );
        assert!(extract(config, json!({"qf": {"annee": 2026, "mois": [3]}})).is_err());
        // To a date claim: the text must be a date.
        let config =
            json!({"depuis": {"format": "{a}-{m:02}-01", "paths": {"a": "$.a", "m": "$.m"}}});
        let claims = extract(config.clone(), json!({"a": 2024, "m": 2})).unwrap();
        assert_eq!(claims["depuis"], ClaimValue::Date(date!(2024 - 02 - 01)));
        assert!(extract(config, json!({"a": 2024, "m": 13})).is_err());
    }

    #[test]
    fn date_map_and_conversions() {
        let doc = json!({"d": "29/02/2024", "bad": "31/02/2024", "f": "O", "g": "?", "i": "0612",
                         "x": 12.0, "y": 12.5, "z": "12,5", "t": "TRUE", "one": 1, "two": 2});
        let claims = extract(
            json!({
                "depuis": {"date": "$.d", "pattern": "[day]/[month]/[year]"},
                "boursier": {"map": {"O": true, "N": false}, "path": "$.f"},
                "qf": {"integer": "$.i"},
                "montant": {"decimal": "$.y"},
            }),
            doc.clone(),
        )
        .unwrap();
        assert_eq!(claims["depuis"], ClaimValue::Date(date!(2024 - 02 - 29)));
        assert_eq!(claims["boursier"], ClaimValue::Boolean(true));
        assert_eq!(claims["qf"], ClaimValue::Integer(612));
        assert_eq!(claims["montant"], ClaimValue::Number(12.5));
        for (config, why) in [
            (
                json!({"depuis": {"date": "$.bad", "pattern": "[day]/[month]/[year]"}}),
                "declared pattern",
            ),
            (
                json!({"boursier": {"map": {"O": true}, "path": "$.g"}}),
                "not in the table",
            ),
            (json!({"qf": {"integer": "$.y"}}), "fraction"),
            (json!({"montant": {"decimal": "$.z"}}), "not a decimal"),
            (json!({"boursier": {"boolean": "$.two"}}), "not one of"),
        ] {
            let err = extract(config.clone(), doc.clone())
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{config}: {err}");
        }
        let claims = extract(json!({"qf": {"integer": "$.x"}, "boursier": {"boolean": "$.t"}, "montant": {"decimal": "$.i"}}), doc.clone()).unwrap();
        assert_eq!(claims["qf"], ClaimValue::Integer(12));
        assert_eq!(claims["boursier"], ClaimValue::Boolean(true));
        assert_eq!(claims["montant"], ClaimValue::Number(612.0));
        let claims = extract(json!({"boursier": {"boolean": "$.one"}}), doc).unwrap();
        assert_eq!(claims["boursier"], ClaimValue::Boolean(true));
    }

    #[test]
    fn filters_pick_an_element_by_a_field() {
        let doc =
            json!({"enfants": [{"rang": 2, "prenom": "LEO"}, {"rang": 1, "prenom": "THOMAS"}]});
        let claims = extract(json!({"mois": "$.enfants[?@.rang == 1].prenom"}), doc).unwrap();
        assert_eq!(claims["mois"], ClaimValue::String("THOMAS".into()));
    }

    #[test]
    fn transforms_are_type_checked_at_load() {
        for (config, field, why) in [
            (
                json!({"mois": {"count": "$.a"}}),
                "claims.mois.count",
                "count gives integer, and the claim is declared string",
            ),
            (
                json!({"qf": {"format": "{a}", "paths": {"a": "$.a"}}}),
                "claims.qf.format",
                "format gives string or date",
            ),
            (
                json!({"qf": {"date": "$.a", "pattern": "[year]"}}),
                "claims.qf.date",
                "declared integer",
            ),
            (
                json!({"depuis": {"date": "$.a"}}),
                "claims.depuis.pattern",
                "required",
            ),
            (
                json!({"depuis": {"date": "$.a", "pattern": "[year]-[month]"}}),
                "claims.depuis.pattern",
                "whole date",
            ),
            (
                json!({"depuis": {"date": "$.a", "pattern": "[nope]"}}),
                "claims.depuis.pattern",
                "not a date pattern",
            ),
            (
                json!({"boursier": {"map": {"O": "oui"}, "path": "$.a"}}),
                "claims.boursier.map.O",
                "declared boolean",
            ),
            (
                json!({"boursier": {"map": {"O": true}}}),
                "claims.boursier.path",
                "required",
            ),
            (
                json!({"boursier": {"map": {}, "path": "$.a"}}),
                "claims.boursier.map",
                "1 to 256",
            ),
            (
                json!({"mois": {"format": "{a}-{b}", "paths": {"a": "$.a"}}}),
                "claims.mois.format",
                "{b} names no entry",
            ),
            (
                json!({"mois": {"format": "{a}", "paths": {"a": "$.a", "b": "$.b"}}}),
                "claims.mois.paths.b",
                "not used",
            ),
            (
                json!({"mois": {"format": "{a}", "paths": {"a": "a"}}}),
                "claims.mois.paths.a",
                "neither a JSON pointer",
            ),
            (
                json!({"qf": {"count": "$.a", "integer": "$.b"}}),
                "claims.qf",
                "count and integer",
            ),
            (json!({"qf": {}}), "claims.qf", "names one of"),
            (
                json!({"qf": {"count": "$.a", "path": "$.b"}}),
                "claims.qf.path",
                "path goes with map",
            ),
            (
                json!({"montant": {"integer": "$.a"}}),
                "claims.montant.integer",
                "declared number",
            ),
            (json!({"nir": "$.a"}), "claims.nir", "not in the schema"),
            (
                json!({"qf": "data/qf"}),
                "claims.qf",
                "neither a JSON pointer",
            ),
        ] {
            let (f, reason) = mapping(config.clone()).unwrap_err();
            assert_eq!(f, field, "{config}: {reason}");
            assert!(reason.contains(why), "{config}: {reason}");
        }
        // An unknown key, or a key of the wrong type, names the claim.
        let (f, reason) = mapping(json!({"qf": {"count": "$.a", "sum": "$.b"}})).unwrap_err();
        assert_eq!(f, "claims.qf.sum");
        assert!(
            reason.contains("not a key of a transform table"),
            "{reason}"
        );
        let (f, reason) = mapping(json!({"qf": {"count": 3}})).unwrap_err();
        assert_eq!(f, "claims.qf");
        assert!(reason.contains("expected a string"), "{reason}");
    }

    #[test]
    fn errors_never_quote_values() {
        let doc = json!({"s": "secret-value", "d": "secret-date"});
        for config in [
            json!({"qf": {"integer": "$.s"}}),
            json!({"depuis": {"date": "$.d", "pattern": "[day]/[month]/[year]"}}),
            json!({"boursier": {"map": {"O": true}, "path": "$.s"}}),
            json!({"montant": {"decimal": "$.s"}}),
        ] {
            let err = extract(config, doc.clone()).unwrap_err().to_string();
            assert!(!err.contains("secret"), "{err}");
        }
    }
}
