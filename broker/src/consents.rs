//! Consents as a service: grant (by a guichet, or an agent under a mandate), revoke, get and
//! list, each recorded and acknowledged once durable. The consent itself and its rules are
//! `consent`'s; who may act is `policy`'s.

use time::OffsetDateTime;

use crate::caller::Caller;
use crate::consent::{Consent, ConsentStatus, MAX_VALID_DAYS, expiry};
use crate::error::ApiError;
use crate::event::{Event, Record};
use crate::policy::Withdrawer;
use crate::state::State;
use crate::subject::Subject;
use crate::validate;

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

/// Records a citizen's consent given at a guichet; acknowledged only once durable. One consent
/// per scope: a grant for the person, consumer, types and purpose of a consent in force renews
/// that consent (recorded as a renewal, lasting until the later expiry). A retry with the same
/// request id returns the same consent. Returns it with the person's pairwise pseudonym for
/// the caller.
pub async fn grant(state: &State, caller: &Caller, input: GrantInput) -> Result<Granted, ApiError> {
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
    // a mandate to, within its scope; a consent that benefits that structure itself needs the
    // citizen's own evidence: an agent never consents to its own structure for the person.
    let mandate = crate::policy::acting(
        &*state.store,
        caller,
        &input.mandate_id,
        &pseudonym,
        Some(&input.purpose),
        time::OffsetDateTime::now_utc(),
    )
    .await?;
    // Verified now, spent when the consent is recorded (a retry that finds it spends nothing).
    let evidence =
        if crate::policy::consent_needs_evidence(caller, mandate.as_ref(), &input.consumer) {
            Some(crate::evidence::require(
                &input.id_token,
                caller,
                &registry,
                &subject,
            )?)
        } else {
            None
        };
    let now = OffsetDateTime::now_utc();
    crate::policy::consent_scope(
        &registry,
        &input.consumer,
        &input.purpose,
        &input.attestation_types,
        now,
    )?;

    let mut types = input.attestation_types.clone();
    types.sort();
    let actor = caller.actor();
    let days = input.valid_days.to_string();
    let fingerprint = state.sealer.fingerprint(
        [
            "consent",
            actor.as_str(),
            pseudonym.as_str(),
            &input.consumer,
            &input.purpose,
            &days,
            mandate.as_ref().map_or("", |m| m.id.as_str()),
        ]
        .into_iter()
        .chain(types.iter().map(String::as_str)),
    );
    let recorded_request_id = request_id
        .as_deref()
        .map(|id| state.sealer.blind_id(&actor, id));
    let id_for_record = recorded_request_id.clone();
    let pairwise = state.pseudonyms.pairwise(&caller.participant, &subject);
    let asked_expiry = expiry(
        now,
        input.valid_days,
        mandate.as_ref().map(|m| m.expires_at),
    );
    let (consent, renewed) = crate::idempotency::create_once(
        &state.store,
        &state.grants,
        crate::idempotency::Creation {
            actor: &actor,
            person: &pseudonym.clone(),
            request_id: request_id.as_deref().zip(recorded_request_id.as_deref()),
            fingerprint: &fingerprint.clone(),
        },
        |id| async move {
            Ok(state.store.consent(&id).await?.map(|c| {
                let renewed = c.renewed_at.is_some();
                (c, renewed)
            }))
        },
        || async move {
            // The mandate read again, held: a revocation of it recorded meanwhile through any
            // broker (revocations take the same hold) refuses the grant.
            if mandate.is_some() {
                crate::policy::acting(
                    &*state.store,
                    caller,
                    &input.mandate_id,
                    &pseudonym,
                    Some(&input.purpose),
                    now,
                )
                .await?;
            }
            // Serialised with every other grant and revocation (`create_once`): the consent in
            // force found here is still the one in force when the renewal is recorded.
            let in_force = in_force_for_scope(
                state,
                &pseudonym,
                &input.consumer,
                &types,
                &input.purpose,
                (&caller.participant, mandate.as_ref().map(|m| m.id.as_str())),
                now,
            )
            .await?;
            if let Some(evidence) = &evidence {
                crate::evidence::spend(state, evidence).await?;
            }
            let mandate_id = mandate.map(|m| m.id);
            let (consent_id, event) = match in_force {
                Some(current) => (
                    current.id.clone(),
                    Event::ConsentRenewed {
                        consent_id: current.id,
                        participant: caller.participant.clone(),
                        agent: caller.agent.clone(),
                        expires_at: current.expires_at.max(asked_expiry),
                        mandate_id,
                        request_id: id_for_record,
                        request_fingerprint: Some(fingerprint),
                    },
                ),
                None => {
                    let consent_id = uuid::Uuid::now_v7().to_string();
                    (
                        consent_id.clone(),
                        Event::ConsentGranted {
                            consent_id,
                            subject: None,
                            subject_sealed: Some(state.sealer.seal(&pseudonym)),
                            pseudonym_key: state.pseudonyms.audit_key_id().to_string(),
                            consumer: input.consumer.clone(),
                            participant: caller.participant.clone(),
                            agent: caller.agent.clone(),
                            attestation_types: types,
                            purpose: input.purpose.clone(),
                            expires_at: asked_expiry,
                            request_id: id_for_record,
                            request_fingerprint: Some(fingerprint),
                            mandate_id,
                        },
                    )
                }
            };
            let renewed = matches!(event, Event::ConsentRenewed { .. });
            state.store.append(vec![Record::now(event)]).await?;
            let consent = state
                .store
                .consent(&consent_id)
                .await?
                .ok_or(ApiError::StoreUnavailable)?;
            Ok((consent, renewed))
        },
    )
    .await?;
    Ok(Granted {
        consent,
        pairwise,
        renewed,
    })
}

/// A recorded consent grant, as the guichet is told of it.
#[derive(Debug)]
pub struct Granted {
    /// The consent in force for the scope.
    pub consent: Consent,
    /// The person's pairwise pseudonym for the caller.
    pub pairwise: String,
    /// Whether the grant renewed the consent already in force for the same scope.
    pub renewed: bool,
}

/// The consent in force of this person to this consumer for exactly these (sorted) types and
/// this purpose, recorded by `recorder` under `mandate`, if there is one: a new grant of the
/// same scope the same way renews it rather than adding a second one (a withdrawal ends every
/// consent of the scope, [`scope_in_force`]).
async fn in_force_for_scope(
    state: &State,
    pseudonym: &str,
    consumer: &str,
    types: &[String],
    purpose: &str,
    (recorder, mandate): (&str, Option<&str>),
    now: OffsetDateTime,
) -> Result<Option<Consent>, ApiError> {
    let Some(first) = types.first() else {
        return Ok(None);
    };
    let candidates = state
        .store
        .consents_for(pseudonym, consumer, first, purpose)
        .await?;
    // Renewed only as it was recorded: by the same guichet (which alone sees and answers for
    // it) under the same mandate (with which it lapses). A renewal under a mandate of a
    // consent given in person would outlive the mandate's revocation; one by another guichet
    // would be a consent that guichet cannot see.
    Ok(candidates.into_iter().find(|c| {
        c.status(now) == ConsentStatus::Active
            && c.participant == recorder
            && c.mandate_id.as_deref() == mandate
            && {
                let mut theirs = c.attestation_types.clone();
                theirs.sort();
                theirs == types
            }
    }))
}

/// Every consent in force that ends with `consent`: itself (unless it is no longer in force)
/// and every other of the same person, consumer and purpose sharing one of its types, oldest
/// first. A person who withdraws is never still bound by an earlier or broader grant.
async fn scope_in_force(
    state: &State,
    consent: &Consent,
    now: OffsetDateTime,
) -> Result<Vec<Consent>, ApiError> {
    let mut ended: Vec<Consent> = Vec::new();
    if consent.status(now) == ConsentStatus::Active {
        ended.push(consent.clone());
    }
    for ty in &consent.attestation_types {
        let mates = state
            .store
            .consents_for(&consent.subject, &consent.consumer, ty, &consent.purpose)
            .await?;
        for mate in mates {
            if mate.status(now) == ConsentStatus::Active && !ended.iter().any(|e| e.id == mate.id) {
                ended.push(mate);
            }
        }
    }
    Ok(ended)
}

/// A consent by id that `caller` may see on its own standing: the guichet that recorded it, or
/// its consumer.
async fn visible(state: &State, caller: &Caller, consent_id: &str) -> Result<Consent, ApiError> {
    validate::identifier("consent_id", consent_id, 64)?;
    state
        .store
        .consent(consent_id)
        .await?
        .filter(|c| c.visible_to(&caller.participant))
        .ok_or_else(|| ApiError::UnknownConsent(consent_id.to_string()))
}

/// A consent withdrawal, in domain terms.
#[derive(Debug, Default)]
pub struct RevokeInput {
    /// The consent.
    pub consent_id: String,
    /// The mandate an agent acts under, or empty.
    pub mandate_id: String,
    /// The citizen's ID token, or empty.
    pub id_token: String,
}

/// Revokes a consent: the citizen with their ID token at any guichet (any of their consents),
/// an agent under the citizen's mandate (a consent of the mandate's purposes), or the guichet
/// that recorded it. It ends every consent in force of the same person, consumer and purpose
/// sharing one of its types (each recorded), so that the very next Fetch is refused whatever was
/// granted before (the guichet on its own standing: those it recorded); answers kept for
/// retries under them are dropped.
pub async fn revoke(
    state: &State,
    caller: &Caller,
    input: &RevokeInput,
) -> Result<Revoked, ApiError> {
    validate::identifier("consent_id", &input.consent_id, 64)?;
    let consent_id = input.consent_id.as_str();
    let with_evidence = !input.id_token.is_empty();
    // Who asks: established before the consent is read (a token that is present is always
    // verified, and spends one of its acts), then the pure rule decides on what was read.
    let citizen;
    let who = if with_evidence {
        // The citizen in person: any of their consents, wherever it was recorded.
        caller.require_citizen_facing()?;
        let subject = crate::evidence::proven_for_act(state, &input.id_token, caller).await?;
        citizen = state.pseudonyms.audit(&subject);
        Withdrawer::Citizen(&citizen)
    } else if !input.mandate_id.is_empty() {
        Withdrawer::Agent(&input.mandate_id)
    } else {
        Withdrawer::Recorder
    };
    let consent = crate::policy::consent_withdrawal(
        &*state.store,
        caller,
        who,
        consent_id,
        state.store.consent(consent_id).await?,
        OffsetDateTime::now_utc(),
    )
    .await?;
    // Serialised with grants, in this broker and across the cluster: a renewal recorded
    // meanwhile would otherwise be lost with it.
    let subject = consent.subject.clone();
    // The guichet on its own standing withdraws what it recorded, not what others did.
    let recorder = matches!(who, Withdrawer::Recorder).then_some(caller.participant.as_str());
    crate::idempotency::serialised(
        &state.store,
        &state.grants,
        &subject,
        None,
        revoke_in_force(state, caller, consent, with_evidence, recorder),
    )
    .await
}

/// Records the end of every consent in force of `consent`'s scope (see [`revoke`]), those
/// recorded by `recorder` only when given, the person's acts held.
async fn revoke_in_force(
    state: &State,
    caller: &Caller,
    consent: Consent,
    with_evidence: bool,
    recorder: Option<&str>,
) -> Result<Revoked, ApiError> {
    let now = OffsetDateTime::now_utc();
    let mut ended = scope_in_force(state, &consent, now).await?;
    if let Some(recorder) = recorder {
        ended.retain(|c| c.participant == recorder);
    }
    if ended.is_empty() {
        // Nothing left to end: only once the revocations read are durable.
        state.store.reads_durable().await?;
        return Ok(Revoked { consent, ended: 0 });
    }
    let records = ended
        .iter()
        .map(|c| {
            Record::now(Event::ConsentRevoked {
                consent_id: c.id.clone(),
                participant: caller.participant.clone(),
                agent: caller.agent.clone(),
                ended_with_mandate: None,
                with_identity_evidence: with_evidence,
                ended_with_consent: (c.id != consent.id).then(|| consent.id.clone()),
            })
        })
        .collect();
    state.store.append(records).await?;
    for c in &ended {
        state.recent.forget_consent(&c.id);
    }
    let consent = state
        .store
        .consent(&consent.id)
        .await?
        .ok_or(ApiError::StoreUnavailable)?;
    Ok(Revoked {
        consent,
        ended: ended.len(),
    })
}

/// A revocation, as the caller is told of it.
#[derive(Debug)]
pub struct Revoked {
    /// The consent named, as stored after the revocation.
    pub consent: Consent,
    /// How many consents in force it ended: the one named and every other of its scope (0 when
    /// the one named was no longer in force and none of its scope was).
    pub ended: usize,
}

/// A consent, to the guichet that recorded it or the consumer it is for; the read is on the
/// record before the answer leaves.
pub async fn get(state: &State, caller: &Caller, consent_id: &str) -> Result<Consent, ApiError> {
    let consent = visible(state, caller, consent_id).await?;
    state
        .store
        .append(vec![Record::now(Event::ConsentsRead {
            participant: caller.participant.clone(),
            agent: caller.agent.clone(),
            subject_sealed: None,
            consent_id: Some(consent.id.clone()),
            mandate_id: None,
            with_identity_evidence: false,
        })])
        .await?;
    Ok(consent)
}

/// What a Consents.List asks for.
#[derive(Debug, Default)]
pub struct ListInput {
    /// The person, `scheme:value`.
    pub subject: String,
    /// Only consents to this consumer; empty for all the caller may see.
    pub consumer: String,
    /// The mandate an agent acts under, or empty.
    pub mandate_id: String,
    /// The citizen's ID token, or empty.
    pub id_token: String,
    /// Page size; 0 for the default.
    pub page_size: u32,
    /// The last consent id of the previous page.
    pub page_token: String,
}

/// One page of a person's consents, oldest first, with the person's pairwise pseudonym for the
/// caller: every consent of the person (to any consumer, recorded anywhere) with the citizen's
/// ID token; those of the mandate's purposes to an agent under the person's mandate; otherwise
/// those the caller recorded or is the consumer of, read from an index of what it may see (the
/// answer takes no longer for a person with many consents elsewhere). The read is on the record
/// before it happens.
pub async fn list(
    state: &State,
    caller: &Caller,
    input: &ListInput,
) -> Result<(Vec<Consent>, String, String), ApiError> {
    let registry = state.federation.registry();
    let subject = Subject::parse(&input.subject, registry.allow_test_subjects())?;
    if !input.consumer.is_empty() {
        validate::identifier("consumer", &input.consumer, 64)?;
    }
    if !input.page_token.is_empty() {
        validate::identifier("page_token", &input.page_token, 64)?;
    }
    let pseudonym = state.pseudonyms.audit(&subject);
    let with_evidence = !input.id_token.is_empty();
    let mandate = if with_evidence {
        caller.require_citizen_facing()?;
        crate::evidence::require(&input.id_token, caller, &registry, &subject)?;
        None
    } else {
        crate::policy::acting(
            &*state.store,
            caller,
            &input.mandate_id,
            &pseudonym,
            None,
            time::OffsetDateTime::now_utc(),
        )
        .await?
    };
    state
        .store
        .append(vec![Record::now(Event::ConsentsRead {
            participant: caller.participant.clone(),
            agent: caller.agent.clone(),
            subject_sealed: Some(state.sealer.seal(&pseudonym)),
            consent_id: None,
            mandate_id: mandate.as_ref().map(|m| m.id.clone()),
            with_identity_evidence: with_evidence,
        })])
        .await?;
    let size = crate::page::size(input.page_size);
    let of_consumer = |c: &Consent| input.consumer.is_empty() || c.consumer == input.consumer;
    let (page, next) = if with_evidence || mandate.is_some() {
        let purposes = mandate.as_ref().map(|m| m.purposes.clone());
        let consents = state
            .store
            .consents_of_after(&pseudonym, &input.page_token)
            .await?;
        crate::store::page(
            consents,
            size,
            |c: &Consent| {
                of_consumer(c) && purposes.as_ref().is_none_or(|p| p.contains(&c.purpose))
            },
            |c: &Consent| &c.id,
        )
        .await?
    } else {
        let consents = state
            .store
            .consents_seen_by_after(&caller.participant, &pseudonym, &input.page_token)
            .await?;
        crate::store::page(consents, size, of_consumer, |c: &Consent| &c.id).await?
    };
    Ok((
        page,
        next,
        state.pseudonyms.pairwise(&caller.participant, &subject),
    ))
}
