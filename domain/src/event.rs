//! Journal records: every state change and every exchange, as recorded.
//!
//! One record is one JSON object with a version `v` and a `kind`; fields are written in a fixed
//! order (serde's declaration order, maps sorted), so the same event always encodes to the same
//! bytes. Records hold pseudonyms, ids, the habilitation used and hashes: never a claim value,
//! never a raw subject id.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Version of the record encoding written now. 2: the person an entry is about is sealed
/// (`subject_sealed`), never the audit pseudonym in clear (`subject`, version 1).
pub const RECORD_VERSION: u32 = 2;
/// The oldest version this broker still reads (entries are never rewritten).
pub const OLDEST_READABLE_VERSION: u32 = 1;

/// One journal record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Encoding version, [`RECORD_VERSION`].
    pub v: u32,
    /// When the broker recorded it (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

impl Record {
    /// A record of `event`, now.
    pub fn now(event: Event) -> Record {
        Record {
            v: RECORD_VERSION,
            time: OffsetDateTime::now_utc(),
            event,
        }
    }

    /// The exact bytes written to the journal.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain structs of strings, numbers and sorted maps cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads back a journal record; a version this broker does not know is refused, never read
    /// as the current one.
    pub fn decode(bytes: &[u8]) -> Result<Record, serde_json::Error> {
        let record: Record = serde_json::from_slice(bytes)?;
        if !(OLDEST_READABLE_VERSION..=RECORD_VERSION).contains(&record.v) {
            return Err(<serde_json::Error as serde::de::Error>::custom(format!(
                "record version {} is not known to this broker (it reads versions \
                 {OLDEST_READABLE_VERSION} to {RECORD_VERSION})",
                record.v
            )));
        }
        Ok(record)
    }
}

/// The person a record is about, as written: the audit pseudonym in clear (version 1), or
/// sealed under the broker's seal key (version 2, `crate::seal`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordedSubject<'a> {
    /// A version 1 entry's audit pseudonym.
    Clear(&'a str),
    /// A version 2 entry's sealed audit pseudonym.
    Sealed(&'a str),
}

impl RecordedSubject<'_> {
    /// From a record's `subject` and `subject_sealed` fields (the sealed one wins).
    fn of<'a>(
        clear: Option<&'a String>,
        sealed: Option<&'a String>,
    ) -> Option<RecordedSubject<'a>> {
        match (sealed, clear) {
            (Some(s), _) => Some(RecordedSubject::Sealed(s)),
            (None, Some(c)) => Some(RecordedSubject::Clear(c)),
            (None, None) => None,
        }
    }
}

impl Event {
    /// The participant an event is attributed to, if any.
    pub fn participant(&self) -> Option<&str> {
        match self {
            Event::RegistryLoaded { .. }
            | Event::BrokerStarted { .. }
            | Event::BrokerStopped {} => None,
            Event::ConsentGranted { participant, .. }
            | Event::ConsentRenewed { participant, .. }
            | Event::ConsentRevoked { participant, .. }
            | Event::AuditRead { participant, .. }
            | Event::RateLimited { participant, .. }
            | Event::AccessHistoryRead { participant, .. }
            | Event::ConsentsRead { participant, .. }
            | Event::HarvestingAlarm { participant, .. }
            | Event::AccessContested { participant, .. }
            | Event::MandateRevoked { participant, .. } => Some(participant),
            Event::MandateCreated { structure, .. } => Some(structure),
            Event::Exchange(e) => Some(&e.participant),
        }
    }

    /// The person the record is about, as written, if it is about one.
    pub fn recorded_subject(&self) -> Option<RecordedSubject<'_>> {
        match self {
            Event::ConsentGranted {
                subject,
                subject_sealed,
                ..
            }
            | Event::MandateCreated {
                subject,
                subject_sealed,
                ..
            }
            | Event::AccessHistoryRead {
                subject,
                subject_sealed,
                ..
            } => RecordedSubject::of(subject.as_ref(), subject_sealed.as_ref()),
            Event::ConsentsRead { subject_sealed, .. } => {
                subject_sealed.as_deref().map(RecordedSubject::Sealed)
            }
            Event::AccessContested { subject_sealed, .. } => {
                Some(RecordedSubject::Sealed(subject_sealed))
            }
            Event::AuditRead { subject_sealed, .. } => {
                subject_sealed.as_deref().map(RecordedSubject::Sealed)
            }
            Event::Exchange(e) => {
                RecordedSubject::of(e.subject.as_ref(), e.subject_sealed.as_ref())
            }
            _ => None,
        }
    }
}

/// The legal basis of an exchange, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordedBasis {
    /// Under the cited law.
    Law {
        /// The citation of the habilitation.
        citation: String,
    },
    /// Under the subject's consent.
    Consent {
        /// The consent's id.
        consent_id: String,
    },
}

/// The key ids the journal recorded last (in its latest `broker_started` entry that has them):
/// a broker started with other keys is refused.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedKeys {
    /// The entry (leaf index) that recorded them.
    pub entry: u64,
    /// Key file name → key id.
    pub ids: std::collections::BTreeMap<String, String>,
}

/// The registry the log recorded last (its latest `registry_loaded` entry): a cluster broker
/// started with another one is refused, naming the files that differ.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedRegistry {
    /// The entry (leaf index) that recorded it.
    pub entry: u64,
    /// The registry's hash, hex (`registry_sha256`).
    pub sha256: String,
    /// Its manifest: registry key → hex SHA-256 of each file (empty for old entries).
    #[serde(default)]
    pub files: std::collections::BTreeMap<String, String>,
}

/// Why a citizen contests an exchange: a closed list, so that nothing personal is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContestReason {
    /// « Je ne connais pas cet organisme ».
    UnknownOrganisation,
    /// « Je n'ai fait aucune démarche auprès de cet organisme ».
    NoProcedure,
    /// « Une autre raison » (to be told to an auditor or a mediator).
    Other,
}

impl ContestReason {
    /// Its name as recorded.
    pub fn name(self) -> &'static str {
        match self {
            ContestReason::UnknownOrganisation => "unknown_organisation",
            ContestReason::NoProcedure => "no_procedure",
            ContestReason::Other => "other",
        }
    }

    /// The reason of that name.
    pub fn parse(name: &str) -> Option<ContestReason> {
        [
            ContestReason::UnknownOrganisation,
            ContestReason::NoProcedure,
            ContestReason::Other,
        ]
        .into_iter()
        .find(|r| r.name() == name)
    }
}

/// How an exchange ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// An attestation was issued.
    Granted,
    /// Refused by policy or validation.
    Denied,
    /// Allowed, but the provider or the broker could not deliver.
    Failed,
    /// Retrieved for the citizen to check (preview): nothing released to the consumer yet.
    Previewed,
    /// The citizen rejected a preview: nothing was released.
    Rejected,
}

impl Event {
    /// Every [`Event::kind`]: what an auditor's filter by kind may name.
    pub const KINDS: [&'static str; 15] = [
        "broker_started",
        "broker_stopped",
        "registry_loaded",
        "consent_granted",
        "consent_renewed",
        "consent_revoked",
        "audit_read",
        "rate_limited",
        "access_history_read",
        "consents_read",
        "harvesting_alarm",
        "mandate_created",
        "mandate_revoked",
        "access_contested",
        "exchange",
    ];

    /// The record's kind, as its `kind` field names it (and metrics and auditors' filters).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::BrokerStarted { .. } => "broker_started",
            Event::BrokerStopped {} => "broker_stopped",
            Event::RegistryLoaded { .. } => "registry_loaded",
            Event::ConsentGranted { .. } => "consent_granted",
            Event::ConsentRenewed { .. } => "consent_renewed",
            Event::ConsentRevoked { .. } => "consent_revoked",
            Event::AuditRead { .. } => "audit_read",
            Event::RateLimited { .. } => "rate_limited",
            Event::AccessHistoryRead { .. } => "access_history_read",
            Event::ConsentsRead { .. } => "consents_read",
            Event::HarvestingAlarm { .. } => "harvesting_alarm",
            Event::MandateCreated { .. } => "mandate_created",
            Event::MandateRevoked { .. } => "mandate_revoked",
            Event::AccessContested { .. } => "access_contested",
            Event::Exchange(_) => "exchange",
        }
    }
}

impl Outcome {
    /// Its name as recorded (and as auditors and citizens read it).
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Granted => "granted",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
            Outcome::Previewed => "previewed",
            Outcome::Rejected => "rejected",
        }
    }
}

/// What a record says happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// The broker started (this software version).
    BrokerStarted {
        /// The broker's version.
        version: String,
        /// The ids of the keys it started with, by key file name (the store's `key_files::KEYS`); a
        /// later start refuses keys whose ids differ. Absent from entries of versions that
        /// did not record them.
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        keys: std::collections::BTreeMap<String, String>,
    },
    /// The broker stopped cleanly (a start without a stop before it means a crash).
    BrokerStopped {},
    /// The broker started serving with this registry.
    RegistryLoaded {
        /// The registry's hash, hex: SHA-256 of its manifest (`registry::manifest_text` of
        /// `files`); entries written before manifests existed hold the registry file's SHA-256.
        registry_sha256: String,
        /// The manifest: `(registry)` and each referenced file that is not a secret, by its
        /// registry key → hex SHA-256 (absent from entries written before manifests existed).
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        files: std::collections::BTreeMap<String, String>,
    },
    /// A citizen's consent was recorded.
    ConsentGranted {
        /// The new consent's id (UUIDv7).
        consent_id: String,
        /// Version 1: the subject's audit pseudonym, in clear.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
        /// Version 2: the subject's audit pseudonym, sealed (`crate::seal`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject_sealed: Option<String>,
        /// The pseudonym key's id.
        pseudonym_key: String,
        /// The consumer it allows.
        consumer: String,
        /// The guichet (or mediation structure) that recorded it.
        participant: String,
        /// The mediator's agent, if one recorded it.
        agent: Option<String>,
        /// The attestation types it covers.
        attestation_types: Vec<String>,
        /// The purpose it covers.
        purpose: String,
        /// When it lapses.
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
        /// The caller's idempotency key.
        request_id: Option<String>,
        /// Digest of the request's fields, to tell a retry from another request.
        request_fingerprint: Option<String>,
        /// The mandate a mediator's agent acted under, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mandate_id: Option<String>,
    },
    /// A citizen consented again to a scope (person, consumer, attestation types, purpose) that
    /// already had a consent in force: that consent, renewed until the later of its expiry and
    /// the new one (one consent per scope, so that one revocation ends it).
    ConsentRenewed {
        /// The consent renewed.
        consent_id: String,
        /// The guichet (or mediation structure) that recorded the renewal.
        participant: String,
        /// The mediator's agent, if one recorded it.
        agent: Option<String>,
        /// When it now lapses.
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
        /// The mandate a mediator's agent acted under, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mandate_id: Option<String>,
        /// The caller's idempotency key.
        request_id: Option<String>,
        /// Digest of the request's fields, to tell a retry from another request.
        request_fingerprint: Option<String>,
    },
    /// A consent was revoked.
    ConsentRevoked {
        /// The consent.
        consent_id: String,
        /// Who revoked it.
        participant: String,
        /// The agent, if a mediator's agent did.
        agent: Option<String>,
        /// The mandate whose revocation ended it, when it was recorded under that mandate
        /// (recorded in the same batch as the mandate's revocation).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ended_with_mandate: Option<String>,
        /// Whether the citizen's own identity evidence was presented (a guichet revoking a
        /// consent it did not record).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        with_identity_evidence: bool,
        /// The consent whose revocation ended this one too: a consent of the same person,
        /// consumer and purpose sharing one of its types (recorded in the same batch).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ended_with_consent: Option<String>,
    },
    /// An auditor read the log (ListEvents or ExportEvents): auditors' reads are audited too.
    AuditRead {
        /// The auditor.
        participant: String,
        /// The agent, if any.
        agent: Option<String>,
        /// What was asked, in words (filters, start index); never a raw subject id, nor the
        /// person's audit pseudonym (`subject=sealed` when filtered by a person; entries written
        /// before held the pseudonym there, in clear).
        query: String,
        /// The person the query was filtered by: their audit pseudonym, sealed (`crate::seal`),
        /// as other entries hold the person they are about.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject_sealed: Option<String>,
    },
    /// A guichet read a person's access history (Guichet.ListAccesses).
    AccessHistoryRead {
        /// The guichet.
        participant: String,
        /// The agent, if any.
        agent: Option<String>,
        /// Version 1: the person's audit pseudonym, in clear.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
        /// Version 2: the person's audit pseudonym, sealed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject_sealed: Option<String>,
        /// The mandate a mediator's agent acted under, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mandate_id: Option<String>,
    },
    /// A citizen said they do not recognise an exchange about them (« Je ne reconnais pas cette
    /// consultation », on the citizen pages, with their identity evidence): auditors follow it
    /// up.
    AccessContested {
        /// The guichet the citizen reported through (the citizen pages' participant).
        participant: String,
        /// The person, sealed.
        subject_sealed: String,
        /// The leaf index of the exchange contested.
        entry: u64,
        /// Why, from a closed list (never free text: nothing personal in the log).
        reason: ContestReason,
    },
    /// A participant read consents (Consents.List of a person, or Consents.Get of one): every
    /// read of who allowed what is on the record, like the access history.
    ConsentsRead {
        /// Who read.
        participant: String,
        /// The agent, if any.
        agent: Option<String>,
        /// The person whose consents were listed, sealed, for a List.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject_sealed: Option<String>,
        /// The consent read, for a Get.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        consent_id: Option<String>,
        /// The mandate a mediator's agent acted under, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mandate_id: Option<String>,
        /// Whether the citizen's identity evidence was presented (then every consent of the
        /// person is listed, to any consumer).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        with_identity_evidence: bool,
    },
    /// A citizen gave a mediation structure a mandate, in front of one of its agents.
    MandateCreated {
        /// The new mandate's id (UUIDv7).
        mandate_id: String,
        /// Version 1: the subject's audit pseudonym, in clear.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
        /// Version 2: the subject's audit pseudonym, sealed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject_sealed: Option<String>,
        /// The pseudonym key's id.
        pseudonym_key: String,
        /// The mediation structure that holds it.
        structure: String,
        /// The agent who took it.
        agent: String,
        /// The purposes it covers.
        purposes: Vec<String>,
        /// Its duration in days.
        duration_days: u32,
        /// SHA-256 of the signed mandate document, hex.
        document_sha256: String,
        /// When it lapses.
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
        /// The caller's idempotency key.
        request_id: Option<String>,
        /// Digest of the request's fields, to tell a retry from another request.
        request_fingerprint: Option<String>,
    },
    /// A mandate was revoked.
    MandateRevoked {
        /// The mandate.
        mandate_id: String,
        /// Who revoked it: the structure, or the guichet acting for the citizen.
        participant: String,
        /// The agent, if an agent of the structure did.
        agent: Option<String>,
    },
    /// Calls of a consumer refused for its rate limit over a window, counted (one entry per
    /// consumer per window, so that a flood cannot multiply writes).
    RateLimited {
        /// The consumer.
        participant: String,
        /// How many calls were refused.
        count: u64,
        /// The window's length, in seconds.
        window_seconds: u64,
    },
    /// A consumer read more distinct subjects in a minute than its habilitation allows.
    HarvestingAlarm {
        /// The consumer.
        participant: String,
        /// The habilitation concerned.
        habilitation: String,
        /// Distinct subjects seen in the window when the alarm was raised.
        distinct_subjects: u64,
        /// The habilitation's threshold.
        limit: u32,
    },
    /// An attestation was requested: granted, denied or failed.
    Exchange(Box<ExchangeEvent>),
}

/// The record of one Fetch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeEvent {
    /// How it ended.
    pub outcome: Outcome,
    /// The `ErrorReason` name when not granted.
    pub reason: Option<String>,
    /// The consumer (or guichet, or mediation structure).
    pub participant: String,
    /// The mediator's agent, if any.
    pub agent: Option<String>,
    /// Version 1: the subject's audit pseudonym in clear, when the subject id was valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Version 2: the subject's audit pseudonym, sealed (a fresh nonce per entry: two
    /// consumers' receipts about one person share nothing), when the subject id was valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_sealed: Option<String>,
    /// The pseudonym key's id, with the pseudonym.
    pub pseudonym_key: Option<String>,
    /// The attestation type asked for (as given, bounded).
    pub attestation_type: String,
    /// The purpose given (bounded).
    pub purpose: String,
    /// The basis it was granted on.
    pub legal_basis: Option<RecordedBasis>,
    /// The habilitation that allowed it.
    pub habilitation: Option<String>,
    /// The mandate acted under.
    pub mandate_id: Option<String>,
    /// The issued attestation's id.
    pub attestation_id: Option<String>,
    /// SHA-256 of the signed payload, hex (the payload carries a random nonce).
    pub payload_sha256: Option<String>,
    /// The provider that answered.
    pub provider: Option<String>,
    /// The rules of the derived claims released (`name: rule`), when any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub derived_rules: Vec<String>,
    /// The caller's idempotency key.
    pub request_id: Option<String>,
    /// The registry in force, hex SHA-256.
    pub registry_sha256: String,
    /// The preview this exchange belongs to (Guichet.Prefill in preview mode, then Confirm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_id: Option<String>,
    /// Digest of the request (over the subject's pseudonym, never its id), when it carried a
    /// request id: a retry after a restart is told from another request with the same id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_fingerprint: Option<String>,
    /// The leaf index of the earlier exchange this one retries (same caller, request id and
    /// request), when the answer was no longer in memory (after a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<u64>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// [`Event::KINDS`] names every variant's kind: a variant added without it would have
    /// auditors' filters by its kind refused. Read from this file's source, as the compiler
    /// cannot list an enum's variants: each variant of `Event`, each arm of `Event::kind`.
    #[test]
    fn every_kind_is_listed() {
        let source = include_str!("event.rs");
        let body = |start: &str| {
            let from = source.find(start).unwrap() + start.len();
            let len = source[from..].find("\n}\n").unwrap();
            &source[from..from + len]
        };
        let variants = body("pub enum Event {")
            .lines()
            .filter(|l| {
                l.strip_prefix("    ")
                    .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_uppercase()))
            })
            .count();
        let kind_fn = &source[source.find("pub fn kind(&self)").unwrap()..];
        let kind_fn = &kind_fn[..kind_fn.find("\n    }\n").unwrap()];
        let arms: Vec<&str> = kind_fn
            .split("=> \"")
            .skip(1)
            .map(|rest| &rest[..rest.find('"').unwrap()])
            .collect();
        assert_eq!(arms.len(), variants, "an arm of Event::kind per variant");
        assert_eq!(arms.len(), Event::KINDS.len(), "{arms:?}");
        for kind in arms {
            assert!(
                Event::KINDS.contains(&kind),
                "{kind} missing from Event::KINDS"
            );
        }
    }

    #[test]
    fn records_round_trip_and_encode_deterministically() {
        let record = Record {
            v: RECORD_VERSION,
            time: time::macros::datetime!(2026-11-22 10:00 UTC),
            event: Event::ConsentRevoked {
                consent_id: "c1".into(),
                participant: "mairie-lyon".into(),
                agent: None,
                ended_with_mandate: None,
                with_identity_evidence: false,
                ended_with_consent: None,
            },
        };
        let bytes = record.encode();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"v":2,"time":"2026-11-22T10:00:00Z","kind":"consent_revoked","consent_id":"c1","participant":"mairie-lyon","agent":null}"#
        );
        assert_eq!(Record::decode(&bytes).unwrap(), record);
        assert_eq!(record.encode(), bytes);
    }

    /// What the broker writes, a third-party verifier reads (`unefois_tlog::entry`): the two
    /// schemas are tied here, outcome by outcome.
    #[test]
    fn exchange_entries_read_back_in_the_verifier_crate() {
        let outcomes = [
            (Outcome::Granted, "granted"),
            (Outcome::Denied, "denied"),
            (Outcome::Failed, "failed"),
            (Outcome::Previewed, "previewed"),
            (Outcome::Rejected, "rejected"),
        ];
        for (outcome, name) in outcomes {
            let record = Record {
                v: RECORD_VERSION,
                time: time::macros::datetime!(2026-11-22 10:00:01.5 UTC),
                event: Event::Exchange(Box::new(ExchangeEvent {
                    outcome,
                    reason: None,
                    participant: "mairie-lyon".into(),
                    agent: None,
                    subject: None,
                    subject_sealed: Some("sealed".into()),
                    pseudonym_key: None,
                    attestation_type: "caf.quotient_familial".into(),
                    purpose: "tarification_cantine".into(),
                    legal_basis: None,
                    habilitation: None,
                    mandate_id: None,
                    attestation_id: Some("att-1".into()),
                    payload_sha256: Some("ab".into()),
                    provider: None,
                    derived_rules: Vec::new(),
                    request_id: None,
                    registry_sha256: "00".into(),
                    prefill_id: None,
                    request_fingerprint: None,
                    retry_of: None,
                })),
            };
            let read = unefois_tlog::entry::ExchangeEntry::read(&record.encode()).unwrap();
            assert_eq!(read.outcome, name);
            assert_eq!(read.time, record.time);
            assert_eq!(read.participant, "mairie-lyon");
            assert_eq!(read.attestation_type, "caf.quotient_familial");
            assert_eq!(read.purpose, "tarification_cantine");
            assert_eq!(read.attestation_id.as_deref(), Some("att-1"));
            assert_eq!(read.payload_sha256.as_deref(), Some("ab"));
        }
        assert!(unefois_tlog::entry::READABLE_VERSIONS.contains(&RECORD_VERSION));
        assert!(unefois_tlog::entry::READABLE_VERSIONS.contains(&OLDEST_READABLE_VERSION));
    }
}
