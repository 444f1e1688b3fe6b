//! The `static` adapter: a provider's data as a JSON file, loaded and validated
//! entirely at start, then served from memory.
//!
//! The file is one JSON object mapping subject ids to records, each record an object
//! of claims: `{ "test:alice": { "quotient_familial": 612, ... }, ... }`. A record may
//! omit claims the provider does not hold.

use std::collections::btree_map::Entry;
use std::collections::{HashMap, hash_map};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::adapter::{Adapter, AdapterError, AdapterRequest};
use crate::claims::{ClaimSpec, ClaimValue, Claims, quote};

/// Largest dataset file accepted, in bytes (64 MiB).
pub const MAX_DATASET_BYTES: u64 = 64 * 1024 * 1024;

/// Longest subject id accepted as a dataset key, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 256;

/// Why a dataset file cannot be served. Messages name the file, the record at fault by its
/// place in the file and the claim (quoted, shortened), never a claim value nor a subject id:
/// these errors are logged, and a `pivot:` id is a person's name and birth date.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file cannot be opened or read.
    #[error("cannot read dataset {}: {source}", path.display())]
    Io {
        /// The dataset file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than the limit.
    #[error("dataset {} is larger than {limit} bytes", path.display())]
    TooLarge {
        /// The dataset file.
        path: PathBuf,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The file is not JSON, or not a JSON object of subjects.
    #[error("dataset {} is malformed: {reason}", path.display())]
    Malformed {
        /// The dataset file.
        path: PathBuf,
        /// The parser's message, with line and column.
        reason: String,
    },
    /// A subject key or its record is invalid (empty or too long key, duplicate
    /// subject, record that is not an object).
    #[error("dataset {}: {record}: {reason}", path.display())]
    InvalidRecord {
        /// The dataset file.
        path: PathBuf,
        /// The record at fault.
        record: RecordAt,
        /// What is wrong.
        reason: String,
    },
    /// A claim of a record is invalid (not in the schema, wrong type, out of
    /// bounds, duplicate).
    #[error("dataset {}: {record}, claim {claim}: {reason}", path.display())]
    InvalidClaim {
        /// The dataset file.
        path: PathBuf,
        /// The record at fault.
        record: RecordAt,
        /// The claim, quoted and shortened for display.
        claim: String,
        /// What is wrong (never the value).
        reason: String,
    },
}

/// A record of a dataset file, as an error names it: its place in the file and its subject's
/// scheme, never the subject's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordAt {
    /// 1 for the file's first record, in file order.
    pub position: usize,
    /// The subject's scheme, when it is one of the broker's (`pivot`, `siret`...).
    pub scheme: Option<&'static str>,
}

impl RecordAt {
    fn new(index: usize, subject: &str) -> RecordAt {
        // Only a known scheme is shown: the text before a ':' may be anything, a name too.
        let scheme = subject.split_once(':').and_then(|(scheme, _)| {
            SUBJECT_SCHEMES
                .iter()
                .copied()
                .find(|known| *known == scheme)
        });
        RecordAt {
            position: index + 1,
            scheme,
        }
    }
}

impl fmt::Display for RecordAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record {}", self.position)?;
        match self.scheme {
            Some(scheme) => write!(f, " ({scheme}:...)"),
            None => Ok(()),
        }
    }
}

/// The subject schemes named in errors (domain/src/subject.rs defines them).
const SUBJECT_SCHEMES: &[&str] = &["pivot", "siren", "siret", "test"];

/// A provider's data for one attestation type, held in memory.
///
/// `Debug` shows the file, the type and the number of subjects, never the data.
pub struct StaticDataset {
    path: PathBuf,
    attestation_type: String,
    records: HashMap<String, Claims>,
}

impl fmt::Debug for StaticDataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticDataset")
            .field("path", &self.path)
            .field("attestation_type", &self.attestation_type)
            .field("subjects", &self.records.len())
            .finish()
    }
}

impl StaticDataset {
    /// Reads and validates the dataset at `path` for `attestation_type`: at most
    /// [`MAX_DATASET_BYTES`], every subject key non-empty, at most
    /// [`MAX_SUBJECT_BYTES`] and without control characters, unique, every record an
    /// object, every claim in `schema`, unique and of its declared type.
    pub fn load(
        path: &Path,
        attestation_type: &str,
        schema: &[ClaimSpec],
    ) -> Result<StaticDataset, DatasetError> {
        Self::load_bounded(path, attestation_type, schema, MAX_DATASET_BYTES)
    }

    /// [`StaticDataset::load`] with a size limit of `limit` bytes.
    fn load_bounded(
        path: &Path,
        attestation_type: &str,
        schema: &[ClaimSpec],
        limit: u64,
    ) -> Result<StaticDataset, DatasetError> {
        let bytes = read_bounded(path, limit)?;
        let raw: RawDataset =
            serde_json::from_slice(&bytes).map_err(|e| DatasetError::Malformed {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        drop(bytes);

        let mut records = HashMap::with_capacity(raw.0.len());
        for (index, (subject, record)) in raw.0.into_iter().enumerate() {
            let at = RecordAt::new(index, &subject);
            let record_error = |reason: String| DatasetError::InvalidRecord {
                path: path.to_path_buf(),
                record: at,
                reason,
            };
            if subject.is_empty() {
                return Err(record_error("empty subject".into()));
            }
            if subject.len() > MAX_SUBJECT_BYTES {
                return Err(record_error(format!(
                    "subject longer than {MAX_SUBJECT_BYTES} bytes"
                )));
            }
            if subject.chars().any(char::is_control) {
                return Err(record_error("subject contains a control character".into()));
            }
            let entries = match record {
                RawRecord::Object(entries) => entries,
                RawRecord::NotObject(kind) => {
                    return Err(record_error(format!(
                        "record must be an object of claims, found {kind}"
                    )));
                }
            };
            let claims = claims_of(path, attestation_type, schema, at, entries)?;
            match records.entry(subject) {
                hash_map::Entry::Occupied(_) => {
                    return Err(record_error("duplicate subject".into()));
                }
                hash_map::Entry::Vacant(e) => {
                    e.insert(claims);
                }
            }
        }
        Ok(StaticDataset {
            path: path.to_path_buf(),
            attestation_type: attestation_type.to_string(),
            records,
        })
    }

    /// Number of subjects in the dataset.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the dataset holds no subject at all.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The attestation type this dataset serves.
    pub fn attestation_type(&self) -> &str {
        &self.attestation_type
    }
}

#[async_trait::async_trait]
impl Adapter for StaticDataset {
    /// Answers from memory. A request for another attestation type than the
    /// dataset's is a routing error in the broker: answered `Unavailable`.
    async fn fetch(&self, request: &AdapterRequest) -> Result<Claims, AdapterError> {
        if tokio::time::Instant::now() >= request.deadline {
            return Err(AdapterError::DeadlineExceeded);
        }
        if request.attestation_type != self.attestation_type {
            return Err(AdapterError::Unavailable {
                reason: format!(
                    "static dataset serves {}, not {}",
                    quote(&self.attestation_type),
                    quote(&request.attestation_type)
                ),
                retry_after: None,
            });
        }
        let record = self
            .records
            .get(&request.subject)
            .ok_or(AdapterError::NotFound)?;
        Ok(request
            .claims
            .iter()
            .filter_map(|name| record.get_key_value(name))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect())
    }

    fn kind(&self) -> &'static str {
        "static"
    }
}

/// Reads at most `limit` bytes of `path`, failing if there are more.
fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, DatasetError> {
    let io = |source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    };
    let too_large = || DatasetError::TooLarge {
        path: path.to_path_buf(),
        limit,
    };
    let file = File::open(path).map_err(io)?;
    // The size on disk gives an early answer; the bounded read below is the real limit
    // (a file may grow, or not be a regular file).
    if file.metadata().map_err(io)?.len() > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if u64::try_from(bytes.len()).map_or(true, |n| n > limit) {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Validates one record's claims against the schema.
fn claims_of(
    path: &Path,
    attestation_type: &str,
    schema: &[ClaimSpec],
    record: RecordAt,
    entries: Vec<(String, Value)>,
) -> Result<Claims, DatasetError> {
    let claim_error = |claim: &str, reason: String| DatasetError::InvalidClaim {
        path: path.to_path_buf(),
        record,
        claim: quote(claim),
        reason,
    };
    let mut claims = Claims::new();
    for (name, json) in entries {
        let Some(spec) = schema.iter().find(|spec| spec.name == name) else {
            return Err(claim_error(
                &name,
                format!("not in the schema of {}", quote(attestation_type)),
            ));
        };
        let value =
            ClaimValue::from_json(spec.claim_type, &json).map_err(|why| claim_error(&name, why))?;
        match claims.entry(name) {
            Entry::Occupied(e) => return Err(claim_error(e.key(), "duplicate claim".into())),
            Entry::Vacant(e) => {
                e.insert(value);
            }
        }
    }
    Ok(claims)
}

/// The file as parsed, in file order, duplicates kept (so that they can be refused).
struct RawDataset(Vec<(String, RawRecord)>);

/// One record as parsed: an object's entries in file order, or the kind of the
/// non-object found instead.
enum RawRecord {
    Object(Vec<(String, Value)>),
    NotObject(&'static str),
}

impl<'de> Deserialize<'de> for RawDataset {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DatasetVisitor;
        impl<'de> Visitor<'de> for DatasetVisitor {
            type Value = RawDataset;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object mapping subjects to records")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawDataset, A::Error> {
                let mut records = Vec::new();
                while let Some(entry) = map.next_entry::<String, RawRecord>()? {
                    records.push(entry);
                }
                Ok(RawDataset(records))
            }
        }
        deserializer.deserialize_map(DatasetVisitor)
    }
}

impl<'de> Deserialize<'de> for RawRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RecordVisitor;
        impl<'de> Visitor<'de> for RecordVisitor {
            type Value = RawRecord;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a record")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRecord, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(RawRecord::Object(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawRecord, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(RawRecord::NotObject("an array"))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawRecord, E> {
                Ok(RawRecord::NotObject("a boolean"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawRecord, E> {
                Ok(RawRecord::NotObject("a number"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawRecord, E> {
                Ok(RawRecord::NotObject("a number"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawRecord, E> {
                Ok(RawRecord::NotObject("a number"))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<RawRecord, E> {
                Ok(RawRecord::NotObject("a string"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawRecord, E> {
                Ok(RawRecord::NotObject("null"))
            }
        }
        deserializer.deserialize_any(RecordVisitor)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use time::macros::date;

    use super::*;
    use crate::adapter::LegalBasis;
    use crate::claims::ClaimType;

    const TYPE: &str = "caf.quotient_familial";

    fn schema() -> Vec<ClaimSpec> {
        [
            ("quotient_familial", ClaimType::Integer),
            ("mois_reference", ClaimType::String),
            ("nombre_enfants", ClaimType::Integer),
            ("allocataire_depuis", ClaimType::Date),
        ]
        .into_iter()
        .map(|(name, claim_type)| ClaimSpec {
            name: name.into(),
            claim_type,
        })
        .collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn load(text: &str) -> Result<StaticDataset, DatasetError> {
        let f = file(text);
        StaticDataset::load(f.path(), TYPE, &schema())
    }

    fn load_err(text: &str) -> String {
        let f = file(text);
        let err = StaticDataset::load(f.path(), TYPE, &schema()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(&f.path().display().to_string()),
            "{message}"
        );
        message
    }

    fn request(subject: &str, claims: &[&str]) -> AdapterRequest {
        AdapterRequest {
            subject: subject.into(),
            attestation_type: TYPE.into(),
            claims: claims.iter().map(|c| c.to_string()).collect(),
            consumer: "mairie-lyon".into(),
            purpose: "tarification_cantine".into(),
            legal_basis: LegalBasis::Consent {
                consent_id: "c-1".into(),
            },
            request_id: "r-1".into(),
            consumer_siret: None,
            purpose_label: String::new(),
            civil_status: None,
            deadline: tokio::time::Instant::now() + Duration::from_secs(5),
        }
    }

    const ALICE: &str = r#"{
        "test:alice": { "quotient_familial": 612, "mois_reference": "2026-10", "allocataire_depuis": "2019-04-01" },
        "test:bob": {}
    }"#;

    #[tokio::test]
    async fn fetch_returns_only_requested_claims_the_record_has() {
        let dataset = load(ALICE).unwrap();
        assert_eq!(dataset.len(), 2);
        assert!(!dataset.is_empty());
        assert_eq!(dataset.kind(), "static");
        assert_eq!(dataset.attestation_type(), TYPE);

        let claims = dataset
            .fetch(&request(
                "test:alice",
                &[
                    "quotient_familial",
                    "nombre_enfants",
                    "allocataire_depuis",
                    "not_in_schema",
                ],
            ))
            .await
            .unwrap();
        let expected: Claims = [
            ("quotient_familial".to_string(), ClaimValue::Integer(612)),
            (
                "allocataire_depuis".to_string(),
                ClaimValue::Date(date!(2019 - 04 - 01)),
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(claims, expected);

        let none = dataset.fetch(&request("test:alice", &[])).await.unwrap();
        assert!(none.is_empty());
        let empty_record = dataset
            .fetch(&request("test:bob", &["quotient_familial"]))
            .await
            .unwrap();
        assert!(empty_record.is_empty());
    }

    #[tokio::test]
    async fn unknown_subject_is_not_found() {
        let dataset = load(ALICE).unwrap();
        let err = dataset
            .fetch(&request("test:zoe", &["quotient_familial"]))
            .await
            .unwrap_err();
        assert!(matches!(err, AdapterError::NotFound), "{err:?}");
        // Subjects are matched exactly.
        let err = dataset
            .fetch(&request("TEST:alice", &["quotient_familial"]))
            .await
            .unwrap_err();
        assert!(matches!(err, AdapterError::NotFound), "{err:?}");
    }

    #[tokio::test]
    async fn past_deadline_is_exceeded() {
        let dataset = load(ALICE).unwrap();
        let mut req = request("test:alice", &["quotient_familial"]);
        req.deadline = tokio::time::Instant::now();
        let err = dataset.fetch(&req).await.unwrap_err();
        assert!(matches!(err, AdapterError::DeadlineExceeded), "{err:?}");
    }

    #[tokio::test]
    async fn other_attestation_type_is_refused() {
        let dataset = load(ALICE).unwrap();
        let mut req = request("test:alice", &["quotient_familial"]);
        req.attestation_type = "dgfip.revenu_fiscal_reference".into();
        let err = dataset.fetch(&req).await.unwrap_err();
        assert!(matches!(err, AdapterError::Unavailable { .. }), "{err:?}");
    }

    #[test]
    fn debug_shows_no_data() {
        let dataset = load(ALICE).unwrap();
        let debug = format!("{dataset:?}");
        assert!(debug.contains("subjects: 2"), "{debug}");
        assert!(
            !debug.contains("alice") && !debug.contains("612"),
            "{debug}"
        );
        let debug = format!("{:?}", request("test:alice", &[]));
        assert!(!debug.contains("alice"), "{debug}");
    }

    #[test]
    fn wrong_type_names_subject_and_claim() {
        let message = load_err(r#"{ "test:alice": { "quotient_familial": "612" } }"#);
        assert!(message.contains("record 1 (test:...)"), "{message}");
        assert!(message.contains("claim \"quotient_familial\""), "{message}");
        assert!(
            message.contains("expected an integer, found a string"),
            "{message}"
        );

        let message = load_err(r#"{ "test:alice": { "allocataire_depuis": "2026-02-30" } }"#);
        assert!(
            message.contains("record 1 (test:...), claim \"allocataire_depuis\""),
            "{message}"
        );
        let message = load_err(r#"{ "test:alice": { "nombre_enfants": 1.5 } }"#);
        assert!(
            message.contains("record 1 (test:...), claim \"nombre_enfants\""),
            "{message}"
        );
    }

    #[test]
    fn unknown_claim_names_subject_and_claim() {
        let message = load_err(
            r#"{ "test:alice": { "quotient_familial": 612 }, "test:bob": { "nir": "1 85" } }"#,
        );
        assert!(
            message.contains("record 2 (test:...), claim \"nir\""),
            "{message}"
        );
        assert!(
            message.contains("not in the schema of \"caf.quotient_familial\""),
            "{message}"
        );
        assert!(!message.contains("1 85"), "value leaked: {message}");
    }

    #[test]
    fn non_object_record_names_subject() {
        for (record, kind) in [
            ("612", "a number"),
            ("\"x\"", "a string"),
            ("[1, {\"a\": 2}]", "an array"),
            ("null", "null"),
            ("true", "a boolean"),
        ] {
            let message = load_err(&format!(r#"{{ "test:alice": {record} }}"#));
            assert!(message.contains("record 1 (test:...)"), "{message}");
            assert!(message.contains(&format!("found {kind}")), "{message}");
        }
    }

    #[test]
    fn bad_subject_keys_are_refused() {
        let message = load_err(r#"{ "": {} }"#);
        assert!(message.contains("empty subject"), "{message}");
        let long = format!("test:{}", "a".repeat(MAX_SUBJECT_BYTES));
        let message = load_err(&format!(r#"{{ "{long}": {{}} }}"#));
        assert!(message.contains("longer than 256 bytes"), "{message}");
        let max = format!("test:{}", "a".repeat(MAX_SUBJECT_BYTES - 5));
        assert_eq!(load(&format!(r#"{{ "{max}": {{}} }}"#)).unwrap().len(), 1);
        let message = load_err(r#"{ "test:al\nice": {} }"#);
        assert!(message.contains("control character"), "{message}");
    }

    #[test]
    fn errors_name_the_record_never_its_subject() {
        const PIVOT: &str = "pivot:DUPONT|JEAN|1980-01-01|M|69123|99100";
        let cases = [
            (
                format!(r#"{{ "test:alice": {{}}, "{PIVOT}": {{ "nir": "1 80" }} }}"#),
                "record 2 (pivot:...), claim \"nir\": not in the schema",
            ),
            (
                format!(r#"{{ "{PIVOT}": {{ "quotient_familial": "612" }} }}"#),
                "record 1 (pivot:...), claim \"quotient_familial\"",
            ),
            (
                format!(r#"{{ "{PIVOT}": 612 }}"#),
                "record 1 (pivot:...): record must be an object",
            ),
            (
                format!(r#"{{ "{PIVOT}": {{}}, "{PIVOT}": {{}} }}"#),
                "record 2 (pivot:...): duplicate subject",
            ),
            (
                format!(r#"{{ "{}": {{}} }}"#, PIVOT.repeat(8)),
                "record 1 (pivot:...): subject longer than",
            ),
            // The text before a ':' is shown only when it is a known scheme.
            (
                r#"{ "DUPONT:JEAN": [] }"#.to_string(),
                "record 1: record must be an object",
            ),
        ];
        for (text, expected) in cases {
            let message = load_err(&text);
            assert!(message.contains(expected), "{message}");
            assert!(
                !message.contains("DUPONT") && !message.contains("1980"),
                "subject leaked: {message}"
            );
        }
    }

    #[test]
    fn duplicates_are_refused() {
        let message = load_err(r#"{ "test:alice": {}, "test:alice": {} }"#);
        assert!(
            message.contains("record 2 (test:...): duplicate subject"),
            "{message}"
        );
        let message =
            load_err(r#"{ "test:alice": { "quotient_familial": 1, "quotient_familial": 2 } }"#);
        assert!(
            message.contains("claim \"quotient_familial\": duplicate claim"),
            "{message}"
        );
    }

    #[test]
    fn malformed_files_are_refused() {
        for text in [
            "",
            "[]",
            "{",
            "{\"test:alice\": {}} trailing",
            "\"x\"",
            "null",
        ] {
            let message = load_err(text);
            assert!(message.contains("is malformed"), "{text}: {message}");
        }
        assert_eq!(load("{}").unwrap().len(), 0);
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.json");
        let err = StaticDataset::load(&path, TYPE, &schema()).unwrap_err();
        assert!(matches!(err, DatasetError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("absent.json"), "{err}");
    }

    #[test]
    fn size_is_bounded() {
        let f = file(ALICE);
        let size = u64::try_from(ALICE.len()).unwrap();
        assert!(StaticDataset::load_bounded(f.path(), TYPE, &schema(), size).is_ok());
        let err = StaticDataset::load_bounded(f.path(), TYPE, &schema(), size - 1).unwrap_err();
        assert!(matches!(err, DatasetError::TooLarge { .. }), "{err:?}");
        assert!(err.to_string().contains("larger than"), "{err}");
        // The bounded read is the real limit, whatever the metadata says.
        let err = read_bounded(f.path(), size - 1).unwrap_err();
        assert!(matches!(err, DatasetError::TooLarge { .. }), "{err:?}");
    }
}
