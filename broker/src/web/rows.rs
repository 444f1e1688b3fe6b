//! What the citizen pages show: the rows of the history, consents and mandates, in the words
//! of the registry (names, descriptions, purposes' labels) and Paris time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use time::OffsetDateTime;

use super::paris_time;
use crate::consent::ConsentStatus;
use crate::event::{Outcome, RecordedBasis};
use crate::mandate::MandateStatus;

/// One line of "Qui a consulté mes données".
pub(super) struct AccessRow {
    pub(super) date: String,
    pub(super) datetime: String,
    pub(super) organisation: String,
    pub(super) data: String,
    pub(super) fields: String,
    pub(super) purpose: String,
    pub(super) basis: String,
    pub(super) channel: String,
    pub(super) outcome: &'static str,
    pub(super) leaf_index: u64,
    /// What the row shows as the entry records it (participant, attestation type, purpose and
    /// outcome codes): « Vérifier » checks that the entry it proves says the same.
    pub(super) recorded: Recorded,
    /// The entry's bytes, base64.
    pub(super) entry: String,
    /// Its inclusion proof, base64 hashes joined by commas.
    pub(super) proof: String,
}

/// The codes an access row is made from, as its entry records them.
pub(super) struct Recorded {
    pub(super) participant: String,
    pub(super) attestation_type: String,
    pub(super) purpose: String,
    pub(super) outcome: &'static str,
}

/// One consent.
pub(super) struct ConsentRow {
    pub(super) id: String,
    pub(super) consumer: String,
    pub(super) data: String,
    pub(super) purpose: String,
    pub(super) granted: String,
    pub(super) expires: String,
    pub(super) status: &'static str,
    pub(super) active: bool,
    pub(super) recorded_by: String,
}

/// One mandate.
pub(super) struct MandateRow {
    pub(super) id: String,
    pub(super) structure: String,
    pub(super) agent: String,
    pub(super) purposes: String,
    pub(super) created: String,
    pub(super) expires: String,
    pub(super) status: &'static str,
    pub(super) active: bool,
}

/// What the registry calls things, for people; the id when it no longer knows one.
pub(super) struct Names<'r>(pub(super) &'r crate::registry::Registry);

impl Names<'_> {
    pub(super) fn participant(&self, id: &str) -> String {
        self.0
            .participant(id)
            .map_or_else(|| id.to_string(), |p| p.name.clone())
    }

    /// An agent of `structure` as people read it: their enrolled name and id
    /// (« Marie Dupont (marie.dupont) »), or the id alone when the registry does not enrol them
    /// (an agent with a certificate only, or no longer enrolled).
    pub(super) fn agent(&self, structure: &str, agent: &str) -> String {
        self.0
            .agents()
            .iter()
            .find(|a| a.participant == structure && a.agent == agent)
            .map_or_else(|| agent.to_string(), |a| format!("{} ({agent})", a.name))
    }

    pub(super) fn attestation_type(&self, id: &str) -> String {
        self.0
            .attestation_type(id)
            .map_or_else(|| id.to_string(), |t| t.description.clone())
    }

    pub(super) fn purpose(&self, code: &str) -> String {
        self.0
            .purpose(code)
            .map_or_else(|| code.to_string(), |p| p.label.clone())
    }

    pub(super) fn access(&self, a: &crate::accesses::Access) -> AccessRow {
        let x = &a.exchange;
        let fields = x
            .habilitation
            .as_deref()
            .and_then(|h| self.0.habilitations().iter().find(|k| k.id == h))
            .map(|h| h.claims.iter().cloned().collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        let basis = match &x.legal_basis {
            Some(RecordedBasis::Law { citation }) => format!("La loi : {citation}"),
            Some(RecordedBasis::Consent { .. }) => "Votre consentement".to_string(),
            None => "Aucune (refusé)".to_string(),
        };
        let channel = match (&x.mandate_id, &x.agent, &x.prefill_id) {
            (Some(mandate), agent, _) => format!(
                "Par un médiateur : {}{}, mandat n° {mandate}",
                self.participant(&x.participant),
                agent
                    .as_deref()
                    .map(|a| format!(", agent {}", self.agent(&x.participant, a)))
                    .unwrap_or_default()
            ),
            (None, _, Some(_)) => "Par un guichet numérique (formulaire pré-rempli)".into(),
            (None, _, None) => "Directement entre administrations".into(),
        };
        AccessRow {
            date: paris_time::long(a.time),
            datetime: paris_time::machine(a.time),
            organisation: if a.consumer_name.is_empty() {
                x.participant.clone()
            } else {
                a.consumer_name.clone()
            },
            data: self.attestation_type(&x.attestation_type),
            fields,
            purpose: if a.purpose_label.is_empty() {
                x.purpose.clone()
            } else {
                a.purpose_label.clone()
            },
            basis,
            channel,
            outcome: match x.outcome {
                Outcome::Granted => "Transmises",
                Outcome::Denied => "Refusé : rien n'a été transmis",
                Outcome::Failed => "Échec : rien n'a été transmis",
                Outcome::Previewed => "Affichées pour votre vérification",
                Outcome::Rejected => "Refusées par vous : rien n'a été transmis",
            },
            leaf_index: a.leaf_index,
            recorded: Recorded {
                participant: x.participant.clone(),
                attestation_type: x.attestation_type.clone(),
                purpose: x.purpose.clone(),
                outcome: x.outcome.name(),
            },
            entry: B64.encode(&a.entry),
            proof: a
                .inclusion_proof
                .iter()
                .map(|h| B64.encode(h))
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    pub(super) fn mandate(&self, m: &crate::mandate::Mandate, now: OffsetDateTime) -> MandateRow {
        let status = m.status(now);
        MandateRow {
            id: m.id.clone(),
            structure: self.participant(&m.structure),
            agent: self.agent(&m.structure, &m.agent),
            purposes: m
                .purposes
                .iter()
                .map(|p| self.purpose(p))
                .collect::<Vec<_>>()
                .join(" ; "),
            created: paris_time::day(m.created_at),
            expires: paris_time::day(m.expires_at),
            status: match status {
                MandateStatus::Active => "En vigueur",
                MandateStatus::Revoked => "Révoqué",
                MandateStatus::Expired => "Expiré",
            },
            active: status == MandateStatus::Active,
        }
    }

    pub(super) fn consent(&self, c: &crate::consent::Consent, now: OffsetDateTime) -> ConsentRow {
        let status = c.status(now);
        ConsentRow {
            id: c.id.clone(),
            consumer: self.participant(&c.consumer),
            data: c
                .attestation_types
                .iter()
                .map(|t| self.attestation_type(t))
                .collect::<Vec<_>>()
                .join(", "),
            purpose: self.purpose(&c.purpose),
            granted: paris_time::day(c.granted_at),
            expires: paris_time::day(c.expires_at),
            status: match status {
                ConsentStatus::Active => "En vigueur",
                ConsentStatus::Revoked => "Retiré",
                ConsentStatus::Expired => "Expiré",
            },
            active: status == ConsentStatus::Active,
            recorded_by: format!(
                "{}{}{}",
                self.participant(&c.participant),
                c.agent
                    .as_deref()
                    .map(|a| format!(", agent {}", self.agent(&c.participant, a)))
                    .unwrap_or_default(),
                c.mandate_id
                    .as_deref()
                    .map(|m| format!(", mandat n° {m}"))
                    .unwrap_or_default()
            ),
        }
    }
}
