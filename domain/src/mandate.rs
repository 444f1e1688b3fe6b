//! Mandates, modelled on Aidants Connect: a citizen who cannot act alone gives a mediation
//! structure (town-hall desk, France Services) a mandate, in front of one of its agents, for some
//! purposes and a fixed duration. Any agent of that structure may then act for the citizen
//! within that scope; every act records the mandate and the agent.
//!
//! Derived from the journal's mandate records, like consents.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::caller::Caller;
use crate::error::ApiError;
use crate::registry::{Registry, Role};
use crate::validate;

/// The durations a mandate may have, in days (those of Aidants Connect).
pub const DURATIONS: [u32; 4] = [1, 31, 182, 365];
/// Most purposes one mandate may cover.
pub const MAX_PURPOSES: usize = 16;
/// Where a mandate stands at a given instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MandateStatus {
    /// In force.
    Active,
    /// Revoked by the structure or by the citizen.
    Revoked,
    /// Past its duration.
    Expired,
}

/// A mandate as the derived state holds it (no raw subject id: the audit pseudonym).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mandate {
    /// UUIDv7.
    pub id: String,
    /// The subject's audit pseudonym.
    pub subject: String,
    /// The pseudonym key's id.
    pub pseudonym_key: String,
    /// The mediation structure (participant) that holds it.
    pub structure: String,
    /// The agent who took it.
    pub agent: String,
    /// The purposes it covers.
    pub purposes: Vec<String>,
    /// One of [`DURATIONS`].
    pub duration_days: u32,
    /// SHA-256 of the signed mandate document, hex.
    pub document_sha256: String,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it lapses.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// When it was revoked, if it was.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Journal sequence number of its creation.
    pub seq: u64,
}

impl Mandate {
    /// Its status at `now`.
    pub fn status(&self, now: OffsetDateTime) -> MandateStatus {
        if self.revoked_at.is_some() {
            MandateStatus::Revoked
        } else if now >= self.expires_at {
            MandateStatus::Expired
        } else {
            MandateStatus::Active
        }
    }
}

/// Who may take a mandate: an agent of a mediation structure (the citizen in front of them);
/// returns the agent.
pub fn taker(caller: &Caller) -> Result<String, ApiError> {
    if !caller.has_role(Role::Mediator) {
        return Err(ApiError::WrongRole {
            participant: caller.participant.clone(),
            role: Role::Mediator,
        });
    }
    caller.agent.clone().ok_or_else(|| ApiError::AgentRequired {
        structure: caller.participant.clone(),
    })
}

/// Whether `caller` may revoke the mandate `mandate_id` (`recorded` as the store read it, none
/// when it does not exist), and the mandate if so: an agent of its structure; or, at a guichet
/// or at the structure, the citizen present, whose ID token `citizen` verifies (spending one of
/// its acts) and names (their audit pseudonym), asked only then. To anyone else, and to another
/// person's citizen, the mandate is unknown, never "someone else's".
pub fn revocation(
    caller: &Caller,
    mandate_id: &str,
    recorded: Option<Mandate>,
    citizen: impl FnOnce() -> Result<String, ApiError>,
) -> Result<Mandate, ApiError> {
    let unknown = || ApiError::UnknownMandate(mandate_id.to_string());
    let mandate = recorded.ok_or_else(unknown)?;
    if caller.participant == mandate.structure && caller.agent.is_some() {
        return Ok(mandate);
    }
    if !(caller.has_role(Role::Guichet) || caller.participant == mandate.structure) {
        return Err(unknown());
    }
    if citizen()? != mandate.subject {
        return Err(unknown());
    }
    Ok(mandate)
}

/// What a mandate may say: one to [`MAX_PURPOSES`] registered purposes, one of the
/// [`DURATIONS`], and a signed document (or its digest); returns the document's digest, hex.
pub fn terms(
    registry: &Registry,
    purposes: &[String],
    duration_days: u32,
    document: &[u8],
    given_digest: &[u8],
) -> Result<String, ApiError> {
    validate::identifiers("purposes", purposes, MAX_PURPOSES)?;
    if purposes.is_empty() {
        return Err(ApiError::invalid("purposes", "at least one is required"));
    }
    for purpose in purposes {
        if registry.purpose(purpose).is_none() {
            return Err(ApiError::UnknownPurpose(purpose.clone()));
        }
    }
    if !DURATIONS.contains(&duration_days) {
        return Err(ApiError::invalid(
            "duration_days",
            "must be 1, 31, 182 or 365 days",
        ));
    }
    document_digest(document, given_digest)
}

/// The document digest, hex, from the document or from its given digest (both must agree).
/// A digest that no signed document has (all zeros, or the SHA-256 of nothing) is refused: a
/// mandate is taken on a document the person signed.
pub fn document_digest(document: &[u8], given: &[u8]) -> Result<String, ApiError> {
    let computed = (!document.is_empty()).then(|| Sha256::digest(document).to_vec());
    if !given.is_empty() && given.len() != 32 {
        return Err(ApiError::invalid(
            "document_sha256",
            "must be 32 bytes (a SHA-256)",
        ));
    }
    if given.iter().all(|b| *b == 0) && !given.is_empty() {
        return Err(ApiError::invalid(
            "document_sha256",
            "is all zeros: not the SHA-256 of a signed mandate document",
        ));
    }
    if given == Sha256::digest(b"").as_slice() {
        return Err(ApiError::invalid(
            "document_sha256",
            "is the SHA-256 of an empty document: not a signed mandate document",
        ));
    }
    match (computed, given.is_empty()) {
        (None, true) => Err(ApiError::invalid(
            "signed_document",
            "the signed mandate document or its SHA-256 (document_sha256) is required",
        )),
        (Some(c), false) if c != given => Err(ApiError::invalid(
            "document_sha256",
            "is not the SHA-256 of signed_document",
        )),
        (Some(c), _) => Ok(hex::encode(c)),
        (None, false) => Ok(hex::encode(given)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_document_digest_comes_from_the_document_or_its_given_digest_and_both_must_agree() {
        let doc = b"mandat signe";
        let sha = Sha256::digest(doc).to_vec();
        assert_eq!(document_digest(doc, &[]).ok(), Some(hex::encode(&sha)));
        assert_eq!(document_digest(&[], &sha).ok(), Some(hex::encode(&sha)));
        assert_eq!(document_digest(doc, &sha).ok(), Some(hex::encode(&sha)));
        assert!(document_digest(b"another", &sha).is_err());
        assert!(document_digest(&[], &[]).is_err());
        assert!(document_digest(&[], &[1, 2, 3]).is_err());
        assert!(document_digest(&[], &[0; 32]).is_err(), "all zeros");
        assert!(
            document_digest(&[], &Sha256::digest(b"")).is_err(),
            "the digest of nothing"
        );
    }

    const REGISTRY: &str = r#"
[federation]
trust_domain = "unefois.test"
allow_test_subjects = true

[[participants]]
id = "fs-lyon"
name = "France Services Lyon"
roles = ["mediator"]

[[participants]]
id = "mairie-lyon"
name = "Ville de Lyon"
roles = ["guichet", "consumer"]

[[participants]]
id = "fs-paris"
name = "France Services Paris"
roles = ["mediator"]

[[purposes]]
code = "cantine"
label = "Cantine"
legal_reference = "Code de l'éducation"

[[purposes]]
code = "energie"
label = "Aide énergie"
legal_reference = "CASF"
"#;

    fn registry() -> Registry {
        Registry::parse(
            std::path::Path::new("reg.toml"),
            &crate::registry::MemoryFolder::default(),
            REGISTRY.as_bytes(),
        )
        .unwrap()
    }

    fn outcome<T>(r: Result<T, ApiError>) -> String {
        match r {
            Ok(_) => "ok".into(),
            Err(e) => e.reason_code().to_string(),
        }
    }

    #[test]
    fn only_an_agent_of_a_mediation_structure_takes_a_mandate() {
        let registry = registry();
        let cases = [
            ("fs-lyon", Some("agent-1"), "ok"),
            ("fs-lyon", None, "NOT_AGENT_OF_STRUCTURE"),
            ("mairie-lyon", Some("agent-1"), "WRONG_ROLE"),
            ("mairie-lyon", None, "WRONG_ROLE"),
        ];
        for (participant, agent, expect) in cases {
            let caller = Caller::new(
                registry.participant(participant).unwrap(),
                agent.map(String::from),
                std::sync::Arc::from("spiffe://unefois.test/x"),
            );
            assert_eq!(outcome(taker(&caller)), expect, "{participant} {agent:?}");
        }
    }

    #[test]
    fn a_mandate_names_registered_purposes_a_known_duration_and_a_signed_document() {
        let registry = registry();
        let doc = b"mandat signe".as_slice();
        let many: Vec<String> = (0..=MAX_PURPOSES).map(|_| "cantine".to_string()).collect();
        let cases: [(&[&str], u32, &[u8], &str); 8] = [
            (&["cantine"], 31, doc, "ok"),
            (&["cantine", "energie"], 365, doc, "ok"),
            (&[], 31, doc, "INVALID_ARGUMENT"),
            (&["sport"], 31, doc, "UNKNOWN_PURPOSE"),
            (&["Cantine !"], 31, doc, "INVALID_ARGUMENT"),
            (&["cantine"], 30, doc, "INVALID_ARGUMENT"),
            (&["cantine"], 0, doc, "INVALID_ARGUMENT"),
            (&["cantine"], 31, b"", "INVALID_ARGUMENT"),
        ];
        for (purposes, days, document, expect) in cases {
            let purposes: Vec<String> = purposes.iter().map(|p| p.to_string()).collect();
            let got = outcome(terms(&registry, &purposes, days, document, &[]));
            assert_eq!(
                got,
                expect,
                "{purposes:?} {days} days, {} bytes",
                document.len()
            );
        }
        assert_eq!(
            outcome(terms(&registry, &many, 31, doc, &[])),
            "INVALID_ARGUMENT"
        );
        assert_eq!(
            terms(&registry, &["cantine".into()], 1, doc, &[]).unwrap(),
            hex::encode(Sha256::digest(doc))
        );
    }

    #[test]
    fn a_mandate_is_revoked_by_an_agent_of_its_structure_or_its_citizen_present() {
        let registry = registry();
        let now = time::OffsetDateTime::now_utc();
        let alices = Mandate {
            id: "m1".into(),
            subject: "p-alice".into(),
            pseudonym_key: "k1".into(),
            structure: "fs-lyon".into(),
            agent: "agent-1".into(),
            purposes: vec!["cantine".into()],
            duration_days: 31,
            document_sha256: "ab".repeat(32),
            created_at: now,
            expires_at: now + time::Duration::days(31),
            revoked_at: None,
            seq: 1,
        };
        // (caller, agent, recorded, the citizen's token names (None: no valid token)) →
        // outcome, and whether the token was asked for (spent)
        let cases = [
            ("fs-lyon", Some("agent-2"), true, None, "ok", false),
            ("fs-lyon", None, true, Some("p-alice"), "ok", true),
            (
                "fs-lyon",
                None,
                true,
                None,
                "IDENTITY_EVIDENCE_REQUIRED",
                true,
            ),
            ("mairie-lyon", None, true, Some("p-alice"), "ok", true),
            (
                "mairie-lyon",
                None,
                true,
                Some("p-bob"),
                "UNKNOWN_MANDATE",
                true,
            ),
            (
                "mairie-lyon",
                None,
                false,
                Some("p-alice"),
                "UNKNOWN_MANDATE",
                false,
            ),
            (
                "fs-paris",
                Some("agent-1"),
                true,
                Some("p-alice"),
                "UNKNOWN_MANDATE",
                false,
            ),
        ];
        for (participant, agent, recorded, citizen, expect, asked) in cases {
            let caller = Caller::new(
                registry.participant(participant).unwrap(),
                agent.map(String::from),
                std::sync::Arc::from("spiffe://unefois.test/x"),
            );
            let mut spent = false;
            let got = revocation(&caller, "m1", recorded.then(|| alices.clone()), || {
                spent = true;
                citizen
                    .map(String::from)
                    .ok_or(ApiError::IdentityEvidenceRequired)
            });
            let case = format!("{participant} {agent:?} {citizen:?}");
            assert_eq!(outcome(got), expect, "{case}");
            assert_eq!(spent, asked, "{case}: the token asked for");
        }
    }
}
