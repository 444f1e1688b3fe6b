//! The public fields of an exchange's audit entry, read the way a third-party verifier reads
//! them: only what a receipt or an access history is tied to (when, who, what, why, how it
//! ended, which attestation and its payload hash). The entry is JSON with a version `v` and a
//! `kind` (docs/audit-log.md); the broker's record schema writes it, and a broker test checks
//! that what it writes reads back here for every outcome.

use serde::Deserialize;
use time::OffsetDateTime;

/// The entry versions this verifier reads: 1 (the audit pseudonym in clear) and 2 (sealed).
pub const READABLE_VERSIONS: std::ops::RangeInclusive<u32> = 1..=2;

/// What an exchange's entry records, as far as receipts and access histories go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeEntry {
    /// When the broker recorded it.
    pub time: OffsetDateTime,
    /// The consumer (or guichet) that asked.
    pub participant: String,
    /// The attestation type.
    pub attestation_type: String,
    /// The purpose code.
    pub purpose: String,
    /// `granted`, `denied`, `failed`, `previewed` or `rejected`.
    pub outcome: String,
    /// The attestation issued, if any.
    pub attestation_id: Option<String>,
    /// The hex SHA-256 of its signed payload, if any.
    pub payload_sha256: Option<String>,
}

/// An entry's time as people read it: RFC 3339 UTC to the second (`2026-12-02T10:29:52Z`);
/// the entry keeps the exact instant.
pub fn time_to_the_second(time: OffsetDateTime) -> String {
    time.replace_nanosecond(0)
        .unwrap_or(time)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[derive(Deserialize)]
struct Raw {
    v: u32,
    #[serde(with = "time::serde::rfc3339")]
    time: OffsetDateTime,
    kind: String,
    #[serde(default)]
    participant: String,
    #[serde(default)]
    attestation_type: String,
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    attestation_id: Option<String>,
    #[serde(default)]
    payload_sha256: Option<String>,
}

impl ExchangeEntry {
    /// Reads an exchange's entry from its exact bytes; says why when it is not one.
    pub fn read(entry: &[u8]) -> Result<ExchangeEntry, String> {
        let raw: Raw =
            serde_json::from_slice(entry).map_err(|e| format!("the entry does not decode: {e}"))?;
        if !READABLE_VERSIONS.contains(&raw.v) {
            return Err(format!(
                "the entry does not decode: version {} is not known to this verifier (it reads \
                 versions {} to {})",
                raw.v,
                READABLE_VERSIONS.start(),
                READABLE_VERSIONS.end()
            ));
        }
        if raw.kind != "exchange" {
            return Err("the entry is not an exchange".to_string());
        }
        Ok(ExchangeEntry {
            time: raw.time,
            participant: raw.participant,
            attestation_type: raw.attestation_type,
            purpose: raw.purpose,
            outcome: raw.outcome,
            attestation_id: raw.attestation_id,
            payload_sha256: raw.payload_sha256,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_exchange_reads_and_anything_else_says_why_not() {
        let entry = br#"{"v":2,"time":"2026-12-02T10:29:52.5Z","kind":"exchange","outcome":"granted","participant":"mairie-lyon","attestation_type":"caf.quotient_familial","purpose":"tarification_cantine","attestation_id":"a1","payload_sha256":"ff","registry_sha256":"00"}"#;
        let read = ExchangeEntry::read(entry).unwrap();
        assert_eq!(read.participant, "mairie-lyon");
        assert_eq!(read.outcome, "granted");
        assert_eq!(read.attestation_id.as_deref(), Some("a1"));
        assert_eq!(read.payload_sha256.as_deref(), Some("ff"));
        assert_eq!(read.time.unix_timestamp(), 1_796_207_392);
        assert_eq!(time_to_the_second(read.time), "2026-12-02T10:29:52Z");

        let cases: [(&[u8], &str); 4] = [
            (b"not json", "the entry does not decode"),
            (
                br#"{"v":9,"time":"2026-12-02T10:29:52Z","kind":"exchange"}"#,
                "version 9 is not known",
            ),
            (
                br#"{"v":2,"time":"2026-12-02T10:29:52Z","kind":"consent_granted"}"#,
                "not an exchange",
            ),
            (br#"{"v":2,"kind":"exchange"}"#, "missing field `time`"),
        ];
        for (bytes, said) in cases {
            let err = ExchangeEntry::read(bytes).unwrap_err();
            assert!(err.contains(said), "{err}");
        }
    }
}
