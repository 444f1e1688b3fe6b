//! Consents: a subject allows one consumer to obtain some attestation types for one purpose,
//! until an expiry, unless revoked. Derived from the journal's consent records.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Where a consent stands at a given instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsentStatus {
    /// In force.
    Active,
    /// Revoked by the citizen (or for them).
    Revoked,
    /// Past its expiry.
    Expired,
}

/// A consent as the derived state holds it (no raw subject id: the audit pseudonym).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// UUIDv7.
    pub id: String,
    /// The subject's audit pseudonym.
    pub subject: String,
    /// The pseudonym key's id.
    pub pseudonym_key: String,
    /// The consumer it allows.
    pub consumer: String,
    /// The guichet (or mediation structure) that recorded it.
    pub participant: String,
    /// The agent, if a mediator's agent recorded it.
    pub agent: Option<String>,
    /// The mandate the agent acted under, if any.
    #[serde(default)]
    pub mandate_id: Option<String>,
    /// Attestation types covered.
    pub attestation_types: Vec<String>,
    /// Purpose covered.
    pub purpose: String,
    /// When it was recorded.
    #[serde(with = "time::serde::rfc3339")]
    pub granted_at: OffsetDateTime,
    /// When it lapses.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// When it was revoked, if it was.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Journal sequence number of the grant.
    pub seq: u64,
}

impl Consent {
    /// Its status at `now`.
    pub fn status(&self, now: OffsetDateTime) -> ConsentStatus {
        if self.revoked_at.is_some() {
            ConsentStatus::Revoked
        } else if now >= self.expires_at {
            ConsentStatus::Expired
        } else {
            ConsentStatus::Active
        }
    }

    /// Whether it is about this consumer, type and purpose (whatever its status).
    pub fn covers(&self, consumer: &str, attestation_type: &str, purpose: &str) -> bool {
        self.consumer == consumer
            && self.purpose == purpose
            && self.attestation_types.iter().any(|t| t == attestation_type)
    }

    /// Whether `participant` may read it: the guichet that recorded it, or its consumer.
    pub fn visible_to(&self, participant: &str) -> bool {
        self.participant == participant || self.consumer == participant
    }
}

use sha2::{Digest, Sha256};

use crate::caller::Caller;
use crate::error::ApiError;
use crate::event::{Event, Record};
use crate::registry::{LegalBasis, Role};
use crate::state::State;
use crate::subject::Subject;
use crate::validate;

/// Longest a consent may last, in days.
pub const MAX_VALID_DAYS: u32 = 365;
/// A consent grant, in domain terms.
#[derive(Debug, Default)]
pub struct GrantInput {
    /// `scheme:value`.
    pub subject: String,
    /// The consumer allowed.
    pub consumer: String,
    /// Types covered.
    pub attestation_types: Vec<String>,
    /// Purpose covered.
    pub purpose: String,
    /// Days until it lapses.
    pub valid_days: u32,
    /// The mandate acted under.
    pub mandate_id: String,
    /// Idempotency key.
    pub request_id: String,
    /// The citizen's OIDC ID token: identity evidence.
    pub id_token: String,
}

fn store_error(e: crate::store::StoreError) -> ApiError {
    tracing::error!(error = %e, "consent store failure");
    ApiError::StoreUnavailable
}

/// Records a citizen's consent given at a guichet; acknowledged only once durable. A retry
/// with the same request id returns the same consent.
pub async fn grant(state: &State, caller: &Caller, input: GrantInput) -> Result<Consent, ApiError> {
    caller.require_citizen_facing()?;
    let registry = state.federation.registry();
    let request_id = validate::request_id(&input.request_id)?;
    validate::identifier("consumer", &input.consumer, 64)?;
    validate::identifier("purpose", &input.purpose, 64)?;
    validate::identifiers(
        "attestation_types",
        &input.attestation_types,
        validate::MAX_CONSENT_TYPES,
    )?;
    if input.attestation_types.is_empty() {
        return Err(ApiError::invalid(
            "attestation_types",
            "at least one is required",
        ));
    }
    if !(1..=MAX_VALID_DAYS).contains(&input.valid_days) {
        return Err(ApiError::invalid(
            "valid_days",
            format!("must be between 1 and {MAX_VALID_DAYS}"),
        ));
    }
    let subject = Subject::parse(&input.subject, registry.allow_test_subjects())?;
    let pseudonym = state.pseudonyms.audit(&subject);
    // The citizen consents in person (identity evidence), or through the structure they gave
    // a mandate to, within its scope.
    let mandate = crate::mandate::acting(
        state,
        caller,
        &input.mandate_id,
        &pseudonym,
        Some(&input.purpose),
    )?;
    if mandate.is_none() {
        crate::identity::require(&input.id_token, caller, &registry, &subject)?;
    }
    if registry.participant(&input.consumer).is_none() {
        return Err(ApiError::invalid(
            "consumer",
            format!("{:?} is not a participant", input.consumer),
        ));
    }
    if registry.purpose(&input.purpose).is_none() {
        return Err(ApiError::UnknownPurpose(input.purpose.clone()));
    }
    let now = OffsetDateTime::now_utc();
    for ty in &input.attestation_types {
        if registry.attestation_type(ty).is_none() {
            return Err(ApiError::UnknownAttestationType(ty.clone()));
        }
        // Consent is only a basis for a consumer holding a consent habilitation for it.
        let covered = registry.habilitations_of(&input.consumer).any(|h| {
            h.attestation_type == *ty
                && h.legal_basis == LegalBasis::Consent
                && h.purposes.contains(&input.purpose)
                && now < h.expires_at
        });
        if !covered {
            return Err(ApiError::NoHabilitation {
                consumer: input.consumer.clone(),
                attestation_type: ty.clone(),
            });
        }
    }

    let mut types = input.attestation_types.clone();
    types.sort();
    let fingerprint = {
        let mut h = Sha256::new();
        for part in [pseudonym.as_str(), &input.consumer, &input.purpose] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        for t in &types {
            h.update(t.as_bytes());
            h.update([0]);
        }
        h.update(input.valid_days.to_be_bytes());
        if let Some(m) = &mandate {
            h.update(m.id.as_bytes());
        }
        hex::encode(&h.finalize()[..16])
    };
    let id_for_record = request_id.clone();
    crate::idempotency::create_once(
        state,
        &caller.participant,
        request_id.as_ref(),
        &fingerprint.clone(),
        |id| state.store.consent(id),
        || async move {
            let consent_id = uuid::Uuid::now_v7().to_string();
            let record = Record::now(Event::ConsentGranted {
                consent_id: consent_id.clone(),
                subject: pseudonym,
                pseudonym_key: state.pseudonyms.audit_key_id().to_string(),
                consumer: input.consumer.clone(),
                participant: caller.participant.clone(),
                agent: caller.agent.clone(),
                attestation_types: types,
                purpose: input.purpose.clone(),
                expires_at: now + time::Duration::days(i64::from(input.valid_days)),
                request_id: id_for_record,
                request_fingerprint: Some(fingerprint),
                mandate_id: mandate.map(|m| m.id),
            });
            state
                .store
                .append(vec![record])
                .await
                .map_err(store_error)?;
            state
                .store
                .consent(&consent_id)
                .map_err(store_error)?
                .ok_or(ApiError::StoreUnavailable)
        },
    )
    .await
}

fn visible(state: &State, caller: &Caller, consent_id: &str) -> Result<Consent, ApiError> {
    validate::identifier("consent_id", consent_id, 64)?;
    state
        .store
        .consent(consent_id)
        .map_err(store_error)?
        .filter(|c| c.visible_to(&caller.participant))
        .ok_or_else(|| ApiError::UnknownConsent(consent_id.to_string()))
}

/// Revokes a consent: the guichet (or structure) that recorded it, or an agent acting under the
/// citizen's mandate. Applies to the very next Fetch.
pub async fn revoke(
    state: &State,
    caller: &Caller,
    consent_id: &str,
    mandate_id: &str,
) -> Result<Consent, ApiError> {
    let consent = if mandate_id.is_empty() {
        let consent = visible(state, caller, consent_id)?;
        if consent.participant != caller.participant {
            return Err(ApiError::WrongRole {
                participant: caller.participant.clone(),
                role: Role::Guichet,
            });
        }
        consent
    } else {
        validate::identifier("consent_id", consent_id, 64)?;
        let consent = state
            .store
            .consent(consent_id)
            .map_err(store_error)?
            .ok_or_else(|| ApiError::UnknownConsent(consent_id.to_string()))?;
        // Another person's consent is, to this mandate, a consent that does not exist.
        crate::mandate::authorize(state, caller, mandate_id, &consent.subject, None).map_err(
            |e| match e {
                ApiError::MandateSubjectMismatch(_) => {
                    ApiError::UnknownConsent(consent_id.to_string())
                }
                other => other,
            },
        )?;
        consent
    };
    if consent.revoked_at.is_some() {
        return Ok(consent);
    }
    let record = Record::now(Event::ConsentRevoked {
        consent_id: consent.id.clone(),
        participant: caller.participant.clone(),
        agent: caller.agent.clone(),
    });
    state
        .store
        .append(vec![record])
        .await
        .map_err(store_error)?;
    state
        .store
        .consent(consent_id)
        .map_err(store_error)?
        .ok_or(ApiError::StoreUnavailable)
}

/// A consent, to the guichet that recorded it or the consumer it is for.
pub fn get(state: &State, caller: &Caller, consent_id: &str) -> Result<Consent, ApiError> {
    visible(state, caller, consent_id)
}

/// The consents of a subject visible to the caller (all of them to an agent acting under the
/// subject's mandate), oldest first, one page at a time; the next page starts after
/// `page_token` (a consent id).
pub fn list(
    state: &State,
    caller: &Caller,
    subject: &str,
    consumer: &str,
    mandate_id: &str,
    page_size: u32,
    page_token: &str,
) -> Result<(Vec<Consent>, String), ApiError> {
    let registry = state.federation.registry();
    let subject = Subject::parse(subject, registry.allow_test_subjects())?;
    let pseudonym = state.pseudonyms.audit(&subject);
    let mandate = crate::mandate::acting(state, caller, mandate_id, &pseudonym, None)?;
    if !consumer.is_empty() {
        validate::identifier("consumer", consumer, 64)?;
    }
    if !page_token.is_empty() {
        validate::identifier("page_token", page_token, 64)?;
    }
    let consents = state
        .store
        .consents_of_after(&pseudonym, page_token)
        .map_err(store_error)?;
    crate::page::collect(
        consents,
        crate::page::size(page_size),
        |c: &Consent| {
            (mandate.is_some() || c.visible_to(&caller.participant))
                && (consumer.is_empty() || c.consumer == consumer)
        },
        |c: &Consent| &c.id,
    )
    .map_err(store_error)
}
