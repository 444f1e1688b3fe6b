//! The policy: whether a request about a person may be served and what it may release, decided
//! from the registry, the caller, the request, the facts the store holds and the time. Nothing
//! here does I/O or reads the clock: the facts come through [`Facts`] (the store in the broker,
//! a table in the unit tests below) and `now` is an argument, so that each rule is checked by a
//! table of cases without a broker (DESIGN.md "Policy"; issue 21).

use std::time::Duration;

use time::OffsetDateTime;
use unefois_adapters::Claims;

use crate::caller::Caller;
use crate::consent::{Consent, ConsentStatus};
use crate::derived::DerivedClaim;
use crate::error::ApiError;
use crate::event::RecordedBasis;
use crate::mandate::{Mandate, MandateStatus};
use crate::registry::{Habilitation, LegalBasis, Registry, Role};
use crate::subject::Subject;
use crate::validate;

/// A Fetch request, in domain terms.
#[derive(Clone, Debug, Default)]
pub struct FetchInput {
    /// `scheme:value`.
    pub subject: String,
    /// The attestation type.
    pub attestation_type: String,
    /// The purpose.
    pub purpose: String,
    /// Claims wanted (empty: all allowed).
    pub claims: Vec<String>,
    /// Idempotency key.
    pub request_id: String,
    /// The mandate acted under.
    pub mandate_id: String,
    /// The caller's deadline, if it sent one.
    pub deadline: Option<Duration>,
}

/// What the policy reads from the record: looked up only when a rule needs it (a fetch on a
/// legal basis never reads consents). A failure to read is the store's, already converted.
pub trait Facts {
    /// The mandate recorded under `id`, if any.
    fn mandate(
        &self,
        id: &str,
    ) -> impl std::future::Future<Output = Result<Option<Mandate>, ApiError>> + Send;
    /// The consents recorded about `subject` (audit pseudonym) for this consumer, type and
    /// purpose, whatever their status, oldest first.
    fn consents(
        &self,
        subject: &str,
        consumer: &str,
        attestation_type: &str,
        purpose: &str,
    ) -> impl std::future::Future<Output = Result<Vec<Consent>, ApiError>> + Send;
}

/// What policy allows for one request, decided before any provider is asked.
#[derive(Clone, Debug)]
pub struct Decision {
    /// The person, as parsed once from the request.
    pub subject: Subject,
    /// The person's audit pseudonym.
    pub audit: String,
    /// The registered type.
    pub attestation_type: String,
    /// Its version, signed in the attestation.
    pub type_version: u32,
    /// How long the attestation is valid, in days.
    pub max_age_days: u32,
    /// The provider asked.
    pub provider: String,
    /// The purpose.
    pub purpose: String,
    /// The habilitation that allows it.
    pub habilitation: String,
    /// What the consumer may receive: allowed raw claims and derived claims, by name.
    pub requested: Vec<String>,
    /// The derived claims among them, with their rules.
    pub derived: Vec<DerivedClaim>,
    /// What the provider is asked for: the raw requested claims and derived claims' sources.
    pub provider_claims: Vec<String>,
    /// The law, or the consent in force.
    pub basis: RecordedBasis,
    /// The mandate the caller acts under, if any.
    pub mandate: Option<String>,
}

/// A decision and what the policy established on the way to it, which the record of the
/// exchange keeps whether the request is allowed or not.
#[derive(Debug)]
pub struct Verdict<'r> {
    /// The mandate the caller acts under, once checked.
    pub mandate: Option<String>,
    /// The habilitation found, once found (the harvesting alarm watches its use).
    pub habilitation: Option<&'r Habilitation>,
    /// The derived claims' rules in words, once the claims are allowed.
    pub derived_rules: Vec<String>,
    /// The decision, or the refusal.
    pub decision: Result<Decision, ApiError>,
}

/// The checks made before anything is looked up: the caller's role and the request's bounded
/// names. The subject is parsed by the caller of [`decide`], once per request.
pub fn admissible(caller: &Caller, input: &FetchInput) -> Result<(), ApiError> {
    if !(caller.has_role(Role::Consumer)
        || caller.has_role(Role::Guichet)
        || caller.has_role(Role::Mediator))
    {
        return Err(ApiError::WrongRole {
            participant: caller.participant.clone(),
            role: Role::Consumer,
        });
    }
    validate::identifier("attestation_type", &input.attestation_type, 128)?;
    validate::identifier("purpose", &input.purpose, 64)?;
    validate::identifiers("claims", &input.claims, validate::MAX_CLAIMS)?;
    validate::request_id(&input.request_id)?;
    Ok(())
}

/// Applies the policy to an admissible request about `subject` (audit pseudonym `audit`):
/// mandate, type and purpose registered, habilitation (deny by default), claims allowed, legal
/// basis (the law, or an active consent).
pub async fn decide<'r>(
    registry: &'r Registry,
    caller: &Caller,
    input: &FetchInput,
    subject: Subject,
    audit: &str,
    facts: &(impl Facts + ?Sized),
    now: OffsetDateTime,
) -> Verdict<'r> {
    let mut found = Found::default();
    let decision = decided(
        registry, caller, input, subject, audit, facts, now, &mut found,
    )
    .await;
    Verdict {
        mandate: found.mandate,
        habilitation: found.habilitation,
        derived_rules: found.derived_rules,
        decision,
    }
}

/// What [`decided`] established so far.
#[derive(Default)]
struct Found<'r> {
    mandate: Option<String>,
    habilitation: Option<&'r Habilitation>,
    derived_rules: Vec<String>,
}

#[allow(clippy::too_many_arguments)]
async fn decided<'r>(
    registry: &'r Registry,
    caller: &Caller,
    input: &FetchInput,
    subject: Subject,
    audit: &str,
    facts: &(impl Facts + ?Sized),
    now: OffsetDateTime,
    found: &mut Found<'r>,
) -> Result<Decision, ApiError> {
    let mandate = acting(
        facts,
        caller,
        &input.mandate_id,
        audit,
        Some(&input.purpose),
        now,
    )
    .await?
    .map(|m| m.id);
    found.mandate.clone_from(&mandate);
    let ty = registry
        .attestation_type(&input.attestation_type)
        .ok_or_else(|| ApiError::UnknownAttestationType(input.attestation_type.clone()))?;
    if registry.purpose(&input.purpose).is_none() {
        return Err(ApiError::UnknownPurpose(input.purpose.clone()));
    }
    let habilitation = habilitation_for(
        registry.habilitations_of(&caller.participant),
        &caller.participant,
        &ty.id,
        &input.purpose,
        now,
    )?;
    found.habilitation = Some(habilitation);
    // What the consumer may receive: the allowed claims, and the derived ones (never their
    // sources, unless allowed themselves).
    let allowed = |c: &String| {
        habilitation.claims.contains(c) || habilitation.derived.iter().any(|d| d.name == *c)
    };
    let requested: Vec<String> = if input.claims.is_empty() {
        habilitation
            .claims
            .iter()
            .cloned()
            .chain(habilitation.derived.iter().map(|d| d.name.clone()))
            .collect()
    } else {
        if let Some(claim) = input.claims.iter().find(|c| !allowed(c)) {
            return Err(ApiError::ClaimNotAllowed {
                habilitation: habilitation.id.clone(),
                claim: claim.clone(),
            });
        }
        input.claims.clone()
    };
    let derived: Vec<DerivedClaim> = habilitation
        .derived
        .iter()
        .filter(|d| requested.contains(&d.name))
        .cloned()
        .collect();
    // What the provider is asked for: the requested claims and the sources of derived ones.
    let mut provider_claims: Vec<String> = requested
        .iter()
        .filter(|c| habilitation.claims.contains(*c))
        .cloned()
        .collect();
    for d in &derived {
        if !provider_claims.contains(&d.from) {
            provider_claims.push(d.from.clone());
        }
    }
    found.derived_rules = derived
        .iter()
        .map(|d| format!("{}: {}", d.name, d.describe()))
        .collect();
    let basis = match &habilitation.legal_basis {
        LegalBasis::Law(citation) => RecordedBasis::Law {
            citation: citation.clone(),
        },
        LegalBasis::Consent => RecordedBasis::Consent {
            consent_id: consent_in_force(facts, audit, caller, &ty.id, &input.purpose, now).await?,
        },
    };
    Ok(Decision {
        subject,
        audit: audit.to_string(),
        attestation_type: ty.id.clone(),
        type_version: ty.version,
        max_age_days: ty.max_age_days,
        provider: ty.provider.clone(),
        purpose: input.purpose.clone(),
        habilitation: habilitation.id.clone(),
        requested,
        derived,
        provider_claims,
        basis,
        mandate,
    })
}

/// What the consumer receives of a provider's answer: the requested raw claims as answered,
/// the derived claims computed from their sources, and nothing else (the sources of derived
/// claims are dropped unless requested themselves). A claim the provider did not answer, or a
/// derived claim whose source does not fit its rule, is left out.
pub fn release(decision: &Decision, answered: &Claims) -> Claims {
    let mut released = Claims::new();
    for name in &decision.requested {
        if let Some(d) = decision.derived.iter().find(|d| d.name == *name) {
            if let Some(value) = answered.get(&d.from).and_then(|v| d.apply(v)) {
                released.insert(name.clone(), value);
            }
        } else if let Some(value) = answered.get(name) {
            released.insert(name.clone(), value.clone());
        }
    }
    released
}

/// What of claims released at a preview a confirmation may still release: those the policy
/// allows now (a habilitation narrowed since gives less, never more).
pub fn still_released(decision: &Decision, held: &Claims) -> Claims {
    held.iter()
        .filter(|(name, _)| decision.requested.contains(name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// The habilitation allowing `consumer` this type for this purpose now, or why there is none:
/// NO_HABILITATION, PURPOSE_NOT_ALLOWED or HABILITATION_EXPIRED, the same for a Fetch and for a
/// consent grant.
pub fn habilitation_for<'a>(
    held: impl Iterator<Item = &'a Habilitation>,
    consumer: &str,
    attestation_type: &str,
    purpose: &str,
    now: OffsetDateTime,
) -> Result<&'a Habilitation, ApiError> {
    let for_type: Vec<&Habilitation> = held
        .filter(|h| h.attestation_type == attestation_type)
        .collect();
    let Some(first) = for_type.first() else {
        return Err(ApiError::NoHabilitation {
            consumer: consumer.to_string(),
            attestation_type: attestation_type.to_string(),
        });
    };
    let for_purpose: Vec<&Habilitation> = for_type
        .iter()
        .copied()
        .filter(|h| h.purposes.contains(purpose))
        .collect();
    if for_purpose.is_empty() {
        return Err(ApiError::PurposeNotAllowed {
            habilitation: first.id.clone(),
            purpose: purpose.to_string(),
        });
    }
    for_purpose
        .iter()
        .copied()
        .find(|h| now < h.expires_at)
        .ok_or_else(|| ApiError::HabilitationExpired(for_purpose[0].id.clone()))
}

/// The id of the subject's consent in force for this consumer, type and purpose, or why there
/// is none: the newest matching one revoked (CONSENT_REVOKED) or lapsed (CONSENT_EXPIRED), or
/// none ever given (NO_CONSENT).
pub async fn consent_in_force(
    facts: &(impl Facts + ?Sized),
    subject: &str,
    caller: &Caller,
    attestation_type: &str,
    purpose: &str,
    now: OffsetDateTime,
) -> Result<String, ApiError> {
    let consents = facts
        .consents(subject, &caller.participant, attestation_type, purpose)
        .await?;
    let matching: Vec<_> = consents
        .iter()
        .filter(|c| c.covers(&caller.participant, attestation_type, purpose))
        .collect();
    if let Some(active) = matching
        .iter()
        .find(|c| c.status(now) == ConsentStatus::Active)
    {
        return Ok(active.id.clone());
    }
    match matching.last() {
        Some(c) if c.status(now) == ConsentStatus::Revoked => {
            Err(ApiError::ConsentRevoked(c.id.clone()))
        }
        Some(c) => Err(ApiError::ConsentExpired(c.id.clone())),
        None => Err(ApiError::NoConsent {
            consumer: caller.participant.clone(),
            attestation_type: attestation_type.to_string(),
            purpose: purpose.to_string(),
        }),
    }
}

/// Checks that `caller` may act for the subject (audit pseudonym `subject`) under `mandate_id`,
/// for `purpose` when the act has one: an agent of the mandate's structure, the mandate's
/// subject, the mandate active at `now`, the purpose in scope.
pub async fn authorize(
    facts: &(impl Facts + ?Sized),
    caller: &Caller,
    mandate_id: &str,
    subject: &str,
    purpose: Option<&str>,
    now: OffsetDateTime,
) -> Result<Mandate, ApiError> {
    validate::identifier("mandate_id", mandate_id, 64)?;
    let mandate = facts
        .mandate(mandate_id)
        .await?
        .ok_or_else(|| ApiError::UnknownMandate(mandate_id.to_string()))?;
    if caller.participant != mandate.structure || caller.agent.is_none() {
        return Err(ApiError::NotAgentOfStructure {
            mandate: mandate.id,
            structure: mandate.structure,
        });
    }
    if mandate.subject != subject {
        return Err(ApiError::MandateSubjectMismatch(mandate.id));
    }
    match mandate.status(now) {
        MandateStatus::Active => {}
        MandateStatus::Revoked => return Err(ApiError::MandateRevoked(mandate.id)),
        MandateStatus::Expired => return Err(ApiError::MandateExpired(mandate.id)),
    }
    if let Some(purpose) = purpose
        && !mandate.purposes.iter().any(|p| p == purpose)
    {
        return Err(ApiError::MandateOutOfScope {
            mandate: mandate.id,
            purpose: purpose.to_string(),
        });
    }
    Ok(mandate)
}

/// Whether recording a consent needs the citizen's own identity evidence: always, but for an
/// agent acting under the person's mandate for another participant than its own structure (an
/// agent never consents to its own structure for the person).
pub fn consent_needs_evidence(caller: &Caller, mandate: Option<&Mandate>, consumer: &str) -> bool {
    mandate.is_none() || consumer == caller.participant
}

/// What a consent may cover: a registered consumer and purpose, and registered types for each
/// of which the consumer holds a consent habilitation for that purpose, in force at `now`. A
/// scope it does not cover is refused with the reason a Fetch would give.
pub fn consent_scope(
    registry: &Registry,
    consumer: &str,
    purpose: &str,
    attestation_types: &[String],
    now: OffsetDateTime,
) -> Result<(), ApiError> {
    if registry.participant(consumer).is_none() {
        return Err(ApiError::invalid(
            "consumer",
            format!("{consumer:?} is not a participant"),
        ));
    }
    if registry.purpose(purpose).is_none() {
        return Err(ApiError::UnknownPurpose(purpose.to_string()));
    }
    for ty in attestation_types {
        if registry.attestation_type(ty).is_none() {
            return Err(ApiError::UnknownAttestationType(ty.clone()));
        }
        habilitation_for(
            registry
                .habilitations_of(consumer)
                .filter(|h| h.legal_basis == LegalBasis::Consent),
            consumer,
            ty,
            purpose,
            now,
        )?;
    }
    Ok(())
}

/// Who asks to withdraw a consent, as the orchestration established it before reading it.
#[derive(Clone, Copy, Debug)]
pub enum Withdrawer<'a> {
    /// The citizen in person, at any guichet: the audit pseudonym their verified ID token names.
    Citizen(&'a str),
    /// An agent under this mandate of the person (the mandate id).
    Agent(&'a str),
    /// The caller on its own standing: only the guichet that recorded the consent.
    Recorder,
}

/// Whether `caller` may withdraw the consent `consent_id`, `recorded` as the store read it (none
/// when it does not exist): the citizen any of their own consents; an agent a consent of the
/// person whose mandate it holds, of one of the mandate's purposes, the mandate in force at
/// `now`; otherwise the guichet that recorded it. A consent the caller may not know of is, to
/// it, unknown (never "someone else's"); one it may read but did not record is WRONG_ROLE.
pub async fn consent_withdrawal(
    facts: &(impl Facts + ?Sized),
    caller: &Caller,
    who: Withdrawer<'_>,
    consent_id: &str,
    recorded: Option<Consent>,
    now: OffsetDateTime,
) -> Result<Consent, ApiError> {
    let unknown = || ApiError::UnknownConsent(consent_id.to_string());
    let consent = recorded.ok_or_else(unknown)?;
    match who {
        Withdrawer::Citizen(person) if consent.subject == person => Ok(consent),
        Withdrawer::Citizen(_) => Err(unknown()),
        Withdrawer::Agent(mandate_id) => {
            // Another person's consent is, to this mandate, a consent that does not exist; one
            // of another purpose is outside what the person allowed the structure to do.
            authorize(
                facts,
                caller,
                mandate_id,
                &consent.subject,
                Some(&consent.purpose),
                now,
            )
            .await
            .map_err(|e| match e {
                ApiError::MandateSubjectMismatch(_) => unknown(),
                other => other,
            })?;
            Ok(consent)
        }
        Withdrawer::Recorder if !consent.visible_to(&caller.participant) => Err(unknown()),
        Withdrawer::Recorder if consent.participant != caller.participant => {
            Err(ApiError::WrongRole {
                participant: caller.participant.clone(),
                role: Role::Guichet,
            })
        }
        Withdrawer::Recorder => Ok(consent),
    }
}

/// How a call about a person is allowed to proceed: on the caller's own standing (a guichet,
/// a consumer), or under a mandate. A mediator never acts without one, nor does any agent:
/// an agent's certificate is a person's, who acts for another only under that person's
/// mandate, even when the structure is also a guichet or a consumer (whose own systems call
/// with the structure's certificate).
pub async fn acting(
    facts: &(impl Facts + ?Sized),
    caller: &Caller,
    mandate_id: &str,
    subject: &str,
    purpose: Option<&str>,
    now: OffsetDateTime,
) -> Result<Option<Mandate>, ApiError> {
    if !mandate_id.is_empty() {
        return authorize(facts, caller, mandate_id, subject, purpose, now)
            .await
            .map(Some);
    }
    if caller.agent.is_some() {
        return Err(ApiError::NoMandate(
            "an agent acts for a person only under that person's mandate (mandate_id)".into(),
        ));
    }
    if caller.has_role(Role::Mediator)
        && !caller.has_role(Role::Guichet)
        && !caller.has_role(Role::Consumer)
    {
        return Err(ApiError::NoMandate(
            "a mediation structure acts for a person only under that person's mandate (mandate_id)"
                .into(),
        ));
    }
    Ok(None)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Each rule as a table: a request, the facts, and what the policy answers, written the way
    //! the record and the consumer would see it (`check(case, expect)`, as in rust-analyzer).

    use std::sync::Arc;

    use time::macros::datetime;

    use crate::test_support::ready;
    use unefois_adapters::ClaimValue;

    use super::*;

    /// A registry with a consumer-and-guichet city, a CCAS that sees only derived values, a
    /// consumer without habilitations, a mediation structure, an auditor and two providers.
    const REGISTRY: &str = r#"
[federation]
trust_domain = "unefois.test"
allow_test_subjects = true

[[participants]]
id = "caf"
name = "CAF"
roles = ["provider"]

[[participants]]
id = "dgfip"
name = "DGFiP"
roles = ["provider"]

[[participants]]
id = "mairie-lyon"
name = "Ville de Lyon"
roles = ["guichet", "consumer"]

[[participants]]
id = "ccas-lyon"
name = "CCAS de Lyon"
roles = ["consumer"]

[[participants]]
id = "mairie-test"
name = "Mairie sans habilitation"
roles = ["consumer"]

[[participants]]
id = "fs-lyon"
name = "France Services Lyon"
roles = ["mediator"]

[[participants]]
id = "mairie-vaulx"
name = "Mairie de Vaulx, guichet et médiateur"
roles = ["guichet", "consumer", "mediator"]

[[participants]]
id = "cnil"
name = "CNIL"
roles = ["auditor"]

[[purposes]]
code = "cantine"
label = "Cantine"
legal_reference = "Code de l'éducation"

[[purposes]]
code = "energie"
label = "Aide énergie"
legal_reference = "CASF"

[[purposes]]
code = "sport"
label = "Sport"
legal_reference = "Délibération"

[[attestation_types]]
id = "caf.qf"
version = 2
provider = "caf"
description = "QF"
max_age_days = 31
adapter = { kind = "static", dataset = "qf.json" }
claims = [
  { name = "quotient_familial", type = "integer", description = "QF" },
  { name = "mois_reference", type = "string", description = "Mois" },
]

[[attestation_types]]
id = "dgfip.rfr"
version = 1
provider = "dgfip"
description = "RFR"
max_age_days = 365
adapter = { kind = "static", dataset = "qf.json" }
claims = [
  { name = "revenu", type = "integer", description = "RFR" },
  { name = "parts", type = "number", description = "Parts" },
]

[[habilitations]]
id = "lyon-qf"
consumer = "mairie-lyon"
attestation_type = "caf.qf"
purposes = ["cantine"]
claims = ["quotient_familial", "mois_reference"]
legal_basis = "consent"
expires = 2030-12-31

[[habilitations]]
id = "lyon-rfr"
consumer = "mairie-lyon"
attestation_type = "dgfip.rfr"
purposes = ["cantine"]
claims = ["revenu"]
legal_basis = { law = "CRPA L. 114-8" }
expires = 2030-12-31

[[habilitations]]
id = "lyon-rfr-2020"
consumer = "mairie-lyon"
attestation_type = "dgfip.rfr"
purposes = ["energie"]
claims = ["revenu"]
legal_basis = { law = "CRPA L. 114-8" }
expires = 2020-12-31

[[habilitations]]
id = "ccas-qf"
consumer = "ccas-lyon"
attestation_type = "caf.qf"
purposes = ["energie"]
claims = []
derived_claims = [
  { name = "qf_bas", from = "quotient_familial", rule = { at_most = 800 } },
  { name = "tranche", from = "quotient_familial", rule = { brackets = { bounds = [500, 800], labels = ["A", "B", "C"] } } },
]
legal_basis = { law = "CASF L. 123-5" }
expires = 2030-12-31

[[habilitations]]
id = "vaulx-rfr"
consumer = "mairie-vaulx"
attestation_type = "dgfip.rfr"
purposes = ["cantine"]
claims = ["revenu"]
legal_basis = { law = "CRPA L. 114-8" }
expires = 2030-12-31

[[habilitations]]
id = "fs-qf"
consumer = "fs-lyon"
attestation_type = "caf.qf"
purposes = ["cantine", "energie"]
claims = ["quotient_familial"]
legal_basis = "consent"
expires = 2030-12-31
"#;

    const NOW: OffsetDateTime = datetime!(2026-06-01 12:00 UTC);
    /// Alice's and Bob's audit pseudonyms, as the store knows them.
    const ALICE: &str = "p-alice";
    const BOB: &str = "p-bob";

    fn registry() -> Registry {
        let folder = crate::registry::MemoryFolder::new([("qf.json", b"{}".to_vec())]);
        Registry::parse(Path::new("reg.toml"), &folder, REGISTRY.as_bytes()).unwrap()
    }

    use std::path::Path;

    /// The store's facts as a table; `failing` stands for a store that cannot be read.
    #[derive(Default)]
    struct Table {
        mandates: Vec<Mandate>,
        consents: Vec<Consent>,
        failing: bool,
    }

    impl Facts for Table {
        async fn mandate(&self, id: &str) -> Result<Option<Mandate>, ApiError> {
            if self.failing {
                return Err(ApiError::StoreUnavailable);
            }
            Ok(self.mandates.iter().find(|m| m.id == id).cloned())
        }

        async fn consents(
            &self,
            subject: &str,
            consumer: &str,
            attestation_type: &str,
            purpose: &str,
        ) -> Result<Vec<Consent>, ApiError> {
            if self.failing {
                return Err(ApiError::StoreUnavailable);
            }
            Ok(self
                .consents
                .iter()
                .filter(|c| c.subject == subject && c.covers(consumer, attestation_type, purpose))
                .cloned()
                .collect())
        }
    }

    /// A consent of Alice to `consumer` for `caf.qf` and `purpose`, granted a month before
    /// [`NOW`] for a year, in `state`: "active", "revoked" or "expired".
    fn consent(id: &str, consumer: &str, purpose: &str, state: &str) -> Consent {
        let granted = NOW - time::Duration::days(30);
        Consent {
            id: id.into(),
            subject: ALICE.into(),
            pseudonym_key: "k1".into(),
            consumer: consumer.into(),
            participant: "mairie-lyon".into(),
            agent: None,
            mandate_id: None,
            attestation_types: vec!["caf.qf".into()],
            purpose: purpose.into(),
            granted_at: granted,
            expires_at: match state {
                "expired" => NOW - time::Duration::days(1),
                _ => granted + time::Duration::days(365),
            },
            revoked_at: (state == "revoked").then_some(NOW - time::Duration::days(2)),
            renewed_at: None,
            seq: 1,
        }
    }

    /// Alice's mandate to fs-lyon (agent "agent-1") for `purposes`, in `state`.
    fn mandate(id: &str, subject: &str, purposes: &[&str], state: &str) -> Mandate {
        Mandate {
            id: id.into(),
            subject: subject.into(),
            pseudonym_key: "k1".into(),
            structure: "fs-lyon".into(),
            agent: "agent-1".into(),
            purposes: purposes.iter().map(|p| p.to_string()).collect(),
            duration_days: 31,
            document_sha256: "00".repeat(32),
            created_at: NOW - time::Duration::days(3),
            expires_at: match state {
                "expired" => NOW - time::Duration::seconds(1),
                _ => NOW + time::Duration::days(28),
            },
            revoked_at: (state == "revoked").then_some(NOW - time::Duration::hours(1)),
            seq: 2,
        }
    }

    /// `participant` (`participant/agent` for an agent) as the certificate names it.
    fn caller(registry: &Registry, who: &str) -> Caller {
        let (participant, agent) = match who.split_once('/') {
            Some((p, a)) => (p, Some(a.to_string())),
            None => (who, None),
        };
        let known = registry.participant(participant).unwrap();
        Caller::new(
            known,
            agent,
            Arc::from(format!("spiffe://unefois.test/{who}")),
        )
    }

    /// A request about Alice: `type purpose [claim,claim] [mandate:id]`.
    fn request(line: &str) -> FetchInput {
        let mut words = line.split_whitespace();
        let mut input = FetchInput {
            subject: "test:alice".into(),
            attestation_type: words.next().unwrap_or_default().into(),
            purpose: words.next().unwrap_or_default().into(),
            ..FetchInput::default()
        };
        for word in words {
            if let Some(id) = word.strip_prefix("mandate:") {
                input.mandate_id = id.into();
            } else if let Some(id) = word.strip_prefix("request:") {
                input.request_id = id.into();
            } else {
                input.claims = word.split(',').map(str::to_string).collect();
            }
        }
        input
    }

    /// What a verdict tells the consumer and the record, on one line.
    fn render(verdict: &Verdict<'_>) -> String {
        let mut line = match &verdict.decision {
            Ok(d) => {
                let basis = match &d.basis {
                    RecordedBasis::Law { citation } => format!("law \"{citation}\""),
                    RecordedBasis::Consent { consent_id } => format!("consent {consent_id}"),
                };
                format!(
                    "granted by {} on {basis}: receives [{}], provider {} v{} asked [{}]",
                    d.habilitation,
                    d.requested.join(","),
                    d.provider,
                    d.type_version,
                    d.provider_claims.join(","),
                )
            }
            Err(e) => format!("refused {}", e.reason_code()),
        };
        if let Some(m) = &verdict.mandate {
            line.push_str(&format!("; mandate {m}"));
        }
        if verdict.decision.is_err()
            && let Some(h) = verdict.habilitation
        {
            line.push_str(&format!("; habilitation {} on record", h.id));
        }
        if !verdict.derived_rules.is_empty() {
            line.push_str(&format!("; rules [{}]", verdict.derived_rules.join("; ")));
        }
        line
    }

    /// Runs each case `(who, request, facts, expected)` and reports every mismatch at once.
    fn check(cases: Vec<(&str, &str, Table, &str)>) {
        let registry = registry();
        let mut wrong = Vec::new();
        for (who, line, facts, expected) in cases {
            let caller = caller(&registry, who);
            let input = request(line);
            let subject = Subject::parse(&input.subject, true).unwrap();
            let verdict = admissible(&caller, &input).map(|()| {
                ready(decide(
                    &registry, &caller, &input, subject, ALICE, &facts, NOW,
                ))
            });
            let got = match verdict {
                Ok(verdict) => render(&verdict),
                Err(e) => format!("inadmissible {}", e.reason_code()),
            };
            if got != expected {
                wrong.push(format!(
                    "{who} asks {line:?}\n  expected: {expected}\n  got:      {got}"
                ));
            }
        }
        assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    }

    fn facts(consents: Vec<Consent>, mandates: Vec<Mandate>) -> Table {
        Table {
            consents,
            mandates,
            failing: false,
        }
    }

    fn none() -> Table {
        Table::default()
    }

    fn failing() -> Table {
        Table {
            failing: true,
            ..Table::default()
        }
    }

    #[test]
    fn roles_and_bounded_fields() {
        check(vec![
            (
                "cnil",
                "dgfip.rfr cantine",
                none(),
                "inadmissible WRONG_ROLE",
            ),
            (
                "caf",
                "dgfip.rfr cantine",
                none(),
                "inadmissible WRONG_ROLE",
            ),
            (
                "mairie-lyon",
                " cantine",
                none(),
                "inadmissible INVALID_ARGUMENT",
            ),
            (
                "mairie-lyon",
                "dgfip.rfr cantine revenu,revenu",
                none(),
                "inadmissible INVALID_ARGUMENT",
            ),
            (
                "mairie-lyon",
                "dgfip.rfr cantine request:a/b",
                none(),
                "inadmissible INVALID_ARGUMENT",
            ),
            (
                "mairie-lyon",
                "dgfip.rfr cantine request:r-1",
                none(),
                "granted by lyon-rfr on law \"CRPA L. 114-8\": receives [revenu], provider dgfip v1 asked [revenu]",
            ),
        ]);
    }

    #[test]
    fn habilitations_deny_by_default() {
        check(vec![
            (
                "mairie-test",
                "dgfip.rfr cantine",
                none(),
                "refused NO_HABILITATION",
            ),
            (
                "mairie-lyon",
                "caf.qf energie",
                none(),
                "refused PURPOSE_NOT_ALLOWED",
            ),
            (
                "mairie-lyon",
                "dgfip.rfr energie",
                none(),
                "refused HABILITATION_EXPIRED",
            ),
            (
                "mairie-lyon",
                "insee.naissance cantine",
                none(),
                "refused UNKNOWN_ATTESTATION_TYPE",
            ),
            (
                "mairie-lyon",
                "dgfip.rfr piscine",
                none(),
                "refused UNKNOWN_PURPOSE",
            ),
            (
                "mairie-lyon",
                "dgfip.rfr sport",
                none(),
                "refused PURPOSE_NOT_ALLOWED",
            ),
            (
                "mairie-lyon",
                "dgfip.rfr cantine parts",
                none(),
                "refused CLAIM_NOT_ALLOWED; habilitation lyon-rfr on record",
            ),
        ]);
    }

    #[test]
    fn a_legal_basis_is_the_law_or_a_consent_in_force() {
        let granted = "granted by lyon-qf on consent c-1: receives [mois_reference,quotient_familial], provider caf v2 asked [mois_reference,quotient_familial]";
        check(vec![
            (
                "mairie-lyon",
                "dgfip.rfr cantine",
                failing(),
                "granted by lyon-rfr on law \"CRPA L. 114-8\": receives [revenu], provider dgfip v1 asked [revenu]",
            ),
            (
                "mairie-lyon",
                "caf.qf cantine",
                none(),
                "refused NO_CONSENT; habilitation lyon-qf on record",
            ),
            (
                "mairie-lyon",
                "caf.qf cantine",
                facts(
                    vec![consent("c-1", "mairie-lyon", "cantine", "active")],
                    vec![],
                ),
                granted,
            ),
            (
                "mairie-lyon",
                "caf.qf cantine",
                facts(
                    vec![consent("c-1", "mairie-lyon", "cantine", "revoked")],
                    vec![],
                ),
                "refused CONSENT_REVOKED; habilitation lyon-qf on record",
            ),
            (
                "mairie-lyon",
                "caf.qf cantine",
                facts(
                    vec![consent("c-1", "mairie-lyon", "cantine", "expired")],
                    vec![],
                ),
                "refused CONSENT_EXPIRED; habilitation lyon-qf on record",
            ),
            (
                "mairie-lyon",
                "caf.qf cantine",
                facts(
                    vec![
                        consent("c-0", "mairie-lyon", "cantine", "revoked"),
                        consent("c-1", "mairie-lyon", "cantine", "active"),
                    ],
                    vec![],
                ),
                granted,
            ),
            (
                "mairie-lyon",
                "caf.qf cantine",
                facts(
                    vec![
                        consent("c-1", "mairie-lyon", "cantine", "expired"),
                        consent("c-2", "mairie-lyon", "cantine", "revoked"),
                    ],
                    vec![],
                ),
                "refused CONSENT_REVOKED; habilitation lyon-qf on record",
            ),
            (
                "mairie-lyon",
                "caf.qf cantine",
                facts(
                    vec![
                        consent("c-1", "ccas-lyon", "cantine", "active"),
                        consent("c-2", "mairie-lyon", "energie", "active"),
                    ],
                    vec![],
                ),
                "refused NO_CONSENT; habilitation lyon-qf on record",
            ),
            (
                "mairie-lyon",
                "caf.qf cantine",
                failing(),
                "refused STORE_UNAVAILABLE; habilitation lyon-qf on record",
            ),
            (
                "mairie-lyon",
                "caf.qf cantine quotient_familial",
                facts(
                    vec![consent("c-1", "mairie-lyon", "cantine", "active")],
                    vec![],
                ),
                "granted by lyon-qf on consent c-1: receives [quotient_familial], provider caf v2 asked [quotient_familial]",
            ),
        ]);
    }

    #[test]
    fn derived_claims_replace_their_sources() {
        check(vec![
            (
                "ccas-lyon",
                "caf.qf energie",
                none(),
                "granted by ccas-qf on law \"CASF L. 123-5\": receives [qf_bas,tranche], provider caf v2 asked [quotient_familial]; rules [qf_bas: quotient_familial <= 800; tranche: quotient_familial: A if <= 500, B if <= 800, C otherwise]",
            ),
            (
                "ccas-lyon",
                "caf.qf energie tranche",
                none(),
                "granted by ccas-qf on law \"CASF L. 123-5\": receives [tranche], provider caf v2 asked [quotient_familial]; rules [tranche: quotient_familial: A if <= 500, B if <= 800, C otherwise]",
            ),
            (
                "ccas-lyon",
                "caf.qf energie quotient_familial",
                none(),
                "refused CLAIM_NOT_ALLOWED; habilitation ccas-qf on record",
            ),
        ]);
    }

    #[test]
    fn a_mediator_acts_only_under_a_mandate_in_force_and_in_scope() {
        let with = |state: &str, subject: &str, purposes: &[&str]| {
            facts(
                vec![consent("c-9", "fs-lyon", "cantine", "active")],
                vec![mandate("m-1", subject, purposes, state)],
            )
        };
        check(vec![
            (
                "fs-lyon/agent-1",
                "caf.qf cantine",
                with("active", ALICE, &["cantine"]),
                "refused NO_MANDATE",
            ),
            // An agent of a structure that is also a guichet and a consumer: still a person
            // acting for another, under a mandate only; the structure's own systems (its
            // certificate, no agent) fetch on its habilitation.
            (
                "mairie-vaulx/agent-2",
                "dgfip.rfr cantine",
                with("active", ALICE, &["cantine"]),
                "refused NO_MANDATE",
            ),
            (
                "mairie-vaulx",
                "dgfip.rfr cantine",
                with("active", ALICE, &["cantine"]),
                "granted by vaulx-rfr on law \"CRPA L. 114-8\": receives [revenu], provider dgfip v1 asked [revenu]",
            ),
            (
                "fs-lyon/agent-1",
                "caf.qf cantine mandate:m-1",
                with("active", ALICE, &["cantine"]),
                "granted by fs-qf on consent c-9: receives [quotient_familial], provider caf v2 asked [quotient_familial]; mandate m-1",
            ),
            (
                "fs-lyon/agent-1",
                "caf.qf cantine mandate:m-2",
                with("active", ALICE, &["cantine"]),
                "refused UNKNOWN_MANDATE",
            ),
            (
                "fs-lyon",
                "caf.qf cantine mandate:m-1",
                with("active", ALICE, &["cantine"]),
                "refused NOT_AGENT_OF_STRUCTURE",
            ),
            (
                "mairie-lyon/agent-1",
                "caf.qf cantine mandate:m-1",
                with("active", ALICE, &["cantine"]),
                "refused NOT_AGENT_OF_STRUCTURE",
            ),
            (
                "fs-lyon/agent-1",
                "caf.qf cantine mandate:m-1",
                with("active", BOB, &["cantine"]),
                "refused MANDATE_SUBJECT_MISMATCH",
            ),
            (
                "fs-lyon/agent-1",
                "caf.qf cantine mandate:m-1",
                with("revoked", ALICE, &["cantine"]),
                "refused MANDATE_REVOKED",
            ),
            (
                "fs-lyon/agent-1",
                "caf.qf cantine mandate:m-1",
                with("expired", ALICE, &["cantine"]),
                "refused MANDATE_EXPIRED",
            ),
            (
                "fs-lyon/agent-1",
                "caf.qf cantine mandate:m-1",
                with("active", ALICE, &["energie"]),
                "refused MANDATE_OUT_OF_SCOPE",
            ),
            (
                "fs-lyon/agent-1",
                "caf.qf cantine mandate:m-é",
                with("active", ALICE, &["cantine"]),
                "refused INVALID_ARGUMENT",
            ),
            (
                "fs-lyon/agent-1",
                "caf.qf cantine mandate:m-1",
                failing(),
                "refused STORE_UNAVAILABLE",
            ),
            (
                "fs-lyon/agent-1",
                "dgfip.rfr cantine mandate:m-1",
                with("active", ALICE, &["cantine"]),
                "refused NO_HABILITATION; mandate m-1",
            ),
        ]);
    }

    #[test]
    fn release_gives_what_was_decided_and_nothing_else() {
        let registry = registry();
        let ccas = caller(&registry, "ccas-lyon");
        let decided = |line: &str| {
            let input = request(line);
            let subject = Subject::parse(&input.subject, true).unwrap();
            ready(decide(
                &registry,
                &ccas,
                &input,
                subject,
                ALICE,
                &none(),
                NOW,
            ))
            .decision
            .unwrap()
        };
        let answered = |qf: Option<i64>| -> Claims {
            let mut claims = Claims::new();
            if let Some(qf) = qf {
                claims.insert("quotient_familial".into(), ClaimValue::Integer(qf));
            }
            claims.insert(
                "mois_reference".into(),
                ClaimValue::String("2026-05".into()),
            );
            claims
        };
        let shown = |claims: &Claims| {
            claims
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let cases = [
            (
                "caf.qf energie",
                Some(450),
                "qf_bas=Boolean(true) tranche=String(\"A\")",
            ),
            (
                "caf.qf energie",
                Some(801),
                "qf_bas=Boolean(false) tranche=String(\"C\")",
            ),
            ("caf.qf energie tranche", Some(700), "tranche=String(\"B\")"),
            ("caf.qf energie", None, ""),
        ];
        for (line, qf, expected) in cases {
            let released = release(&decided(line), &answered(qf));
            assert_eq!(shown(&released), expected, "{line} with {qf:?}");
        }
        // A confirmation releases what a preview held, as far as the policy allows it now.
        let held = release(&decided("caf.qf energie"), &answered(Some(450)));
        let now_allowed = still_released(&decided("caf.qf energie tranche"), &held);
        assert_eq!(shown(&now_allowed), "tranche=String(\"A\")");
    }

    #[test]
    fn a_consent_covers_only_what_its_consumer_may_obtain_on_consent() {
        let registry = registry();
        let later = datetime!(2031-01-01 00:00 UTC);
        let cases: [(&str, &str, &[&str], OffsetDateTime, &str); 9] = [
            ("mairie-lyon", "cantine", &["caf.qf"], NOW, "ok"),
            ("nobody", "cantine", &["caf.qf"], NOW, "INVALID_ARGUMENT"),
            (
                "mairie-lyon",
                "inconnu",
                &["caf.qf"],
                NOW,
                "UNKNOWN_PURPOSE",
            ),
            (
                "mairie-lyon",
                "cantine",
                &["x.y"],
                NOW,
                "UNKNOWN_ATTESTATION_TYPE",
            ),
            // A law habilitation is no ground for a consent.
            (
                "mairie-lyon",
                "cantine",
                &["dgfip.rfr"],
                NOW,
                "NO_HABILITATION",
            ),
            (
                "mairie-lyon",
                "cantine",
                &["caf.qf", "dgfip.rfr"],
                NOW,
                "NO_HABILITATION",
            ),
            (
                "mairie-lyon",
                "energie",
                &["caf.qf"],
                NOW,
                "PURPOSE_NOT_ALLOWED",
            ),
            (
                "mairie-test",
                "cantine",
                &["caf.qf"],
                NOW,
                "NO_HABILITATION",
            ),
            (
                "mairie-lyon",
                "cantine",
                &["caf.qf"],
                later,
                "HABILITATION_EXPIRED",
            ),
        ];
        for (consumer, purpose, types, now, expect) in cases {
            let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
            let got = match consent_scope(&registry, consumer, purpose, &types, now) {
                Ok(()) => "ok".to_string(),
                Err(e) => e.reason_code().to_string(),
            };
            assert_eq!(got, expect, "{consumer} {purpose} {types:?} at {now}");
        }
    }

    #[test]
    fn an_agent_consents_without_the_citizens_token_only_for_another_participant() {
        let registry = registry();
        let m = mandate("m1", ALICE, &["cantine"], "active");
        let cases = [
            ("mairie-lyon", None, "caf", true),
            ("fs-lyon/agent-1", Some(&m), "mairie-lyon", false),
            ("fs-lyon/agent-1", Some(&m), "fs-lyon", true),
            ("fs-lyon/agent-1", None, "mairie-lyon", true),
        ];
        for (who, mandate, consumer, needs) in cases {
            let caller = caller(&registry, who);
            assert_eq!(
                consent_needs_evidence(&caller, mandate, consumer),
                needs,
                "{who} for {consumer} under {:?}",
                mandate.map(|m| &m.id)
            );
        }
    }

    #[test]
    fn a_consent_is_withdrawn_by_its_citizen_an_agent_in_scope_or_its_recording_guichet() {
        let registry = registry();
        // c1: Alice's, recorded by mairie-lyon for consumer ccas-lyon, purpose cantine.
        let c1 = consent("c1", "ccas-lyon", "cantine", "active");
        let active = mandate("m1", ALICE, &["cantine"], "active");
        let elsewhere = mandate("m2", ALICE, &["energie"], "active");
        let bobs = mandate("m3", BOB, &["cantine"], "active");
        let revoked = mandate("m4", ALICE, &["cantine"], "revoked");
        let table = || {
            facts(
                vec![],
                vec![
                    active.clone(),
                    elsewhere.clone(),
                    bobs.clone(),
                    revoked.clone(),
                ],
            )
        };
        let cases: Vec<(&str, Withdrawer<'_>, Option<Consent>, &str)> = vec![
            (
                "mairie-lyon",
                Withdrawer::Citizen(ALICE),
                Some(c1.clone()),
                "withdrawn c1",
            ),
            (
                "mairie-lyon",
                Withdrawer::Citizen(BOB),
                Some(c1.clone()),
                "refused UNKNOWN_CONSENT",
            ),
            (
                "mairie-lyon",
                Withdrawer::Citizen(ALICE),
                None,
                "refused UNKNOWN_CONSENT",
            ),
            (
                "fs-lyon/agent-1",
                Withdrawer::Agent("m1"),
                Some(c1.clone()),
                "withdrawn c1",
            ),
            (
                "fs-lyon/agent-1",
                Withdrawer::Agent("m2"),
                Some(c1.clone()),
                "refused MANDATE_OUT_OF_SCOPE",
            ),
            (
                "fs-lyon/agent-1",
                Withdrawer::Agent("m3"),
                Some(c1.clone()),
                "refused UNKNOWN_CONSENT",
            ),
            (
                "fs-lyon/agent-1",
                Withdrawer::Agent("m4"),
                Some(c1.clone()),
                "refused MANDATE_REVOKED",
            ),
            (
                "fs-lyon/agent-1",
                Withdrawer::Agent("m9"),
                Some(c1.clone()),
                "refused UNKNOWN_MANDATE",
            ),
            (
                "mairie-lyon",
                Withdrawer::Agent("m1"),
                Some(c1.clone()),
                "refused NOT_AGENT_OF_STRUCTURE",
            ),
            (
                "mairie-lyon",
                Withdrawer::Recorder,
                Some(c1.clone()),
                "withdrawn c1",
            ),
            (
                "ccas-lyon",
                Withdrawer::Recorder,
                Some(c1.clone()),
                "refused WRONG_ROLE",
            ),
            (
                "mairie-test",
                Withdrawer::Recorder,
                Some(c1.clone()),
                "refused UNKNOWN_CONSENT",
            ),
            (
                "mairie-lyon",
                Withdrawer::Recorder,
                None,
                "refused UNKNOWN_CONSENT",
            ),
        ];
        let mut wrong = Vec::new();
        for (who, withdrawer, recorded, expected) in cases {
            let caller = caller(&registry, who);
            let got = match ready(consent_withdrawal(
                &table(),
                &caller,
                withdrawer,
                "c1",
                recorded,
                NOW,
            )) {
                Ok(c) => format!("withdrawn {}", c.id),
                Err(e) => format!("refused {}", e.reason_code()),
            };
            if got != expected {
                wrong.push(format!(
                    "{who} as {withdrawer:?}: expected {expected}, got {got}"
                ));
            }
        }
        assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    }
}
