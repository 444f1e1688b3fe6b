//! Mandates as a service: create (an agent, the citizen present), revoke, list, each recorded
//! and acknowledged once durable. The mandate itself and its rules are `mandate`'s.

use time::OffsetDateTime;

use crate::caller::Caller;
use crate::error::ApiError;
use crate::event::{Event, Record};
use crate::mandate::Mandate;
use crate::registry::Role;
use crate::state::State;
use crate::store::MandatesOf;
use crate::subject::Subject;
use crate::validate;

/// A mandate creation, in domain terms.
#[derive(Debug, Default)]
pub struct CreateInput {
    /// `scheme:value`.
    pub subject: String,
    /// Purposes covered.
    pub purposes: Vec<String>,
    /// One of [`DURATIONS`].
    pub duration_days: u32,
    /// The signed document (only its digest is kept), or empty.
    pub signed_document: Vec<u8>,
    /// The document's SHA-256, or empty.
    pub document_sha256: Vec<u8>,
    /// The citizen's ID token: the citizen is present.
    pub id_token: String,
    /// Idempotency key.
    pub request_id: String,
}

/// Records a mandate given by a citizen present at a mediation structure's desk; acknowledged
/// only once durable. A retry with the same request id returns the same mandate. Returns it
/// with the person's pairwise pseudonym for the structure.
pub async fn create(
    state: &State,
    caller: &Caller,
    input: CreateInput,
) -> Result<(Mandate, String), ApiError> {
    let agent = crate::mandate::taker(caller)?;
    let registry = state.federation.registry();
    let request_id = validate::request_id(&input.request_id)?;
    let document = crate::mandate::terms(
        &registry,
        &input.purposes,
        input.duration_days,
        &input.signed_document,
        &input.document_sha256,
    )?;
    let subject = Subject::parse(&input.subject, registry.allow_test_subjects())?;
    // Verified now, spent when the mandate is recorded (a retry that finds it spends nothing).
    let evidence = crate::evidence::require(&input.id_token, caller, &registry, &subject)?;

    let pseudonym = state.pseudonyms.audit(&subject);
    let mut purposes = input.purposes.clone();
    purposes.sort();
    let actor = caller.actor();
    let days = input.duration_days.to_string();
    let fingerprint = state.sealer.fingerprint(
        [
            "mandate",
            actor.as_str(),
            pseudonym.as_str(),
            document.as_str(),
            days.as_str(),
        ]
        .into_iter()
        .chain(purposes.iter().map(String::as_str)),
    );
    let recorded_request_id = request_id
        .as_deref()
        .map(|id| state.sealer.blind_id(&actor, id));
    let id_for_record = recorded_request_id.clone();
    let pairwise = state.pseudonyms.pairwise(&caller.participant, &subject);
    let mandate = crate::idempotency::create_once(
        &state.store,
        &state.grants,
        crate::idempotency::Creation {
            actor: &actor,
            person: &pseudonym.clone(),
            request_id: request_id.as_deref().zip(recorded_request_id.as_deref()),
            fingerprint: &fingerprint.clone(),
        },
        |id| async move { state.store.mandate(&id).await },
        || async move {
            crate::evidence::spend(state, &evidence).await?;
            let mandate_id = uuid::Uuid::now_v7().to_string();
            let record = Record::now(Event::MandateCreated {
                mandate_id: mandate_id.clone(),
                subject: None,
                subject_sealed: Some(state.sealer.seal(&pseudonym)),
                pseudonym_key: state.pseudonyms.audit_key_id().to_string(),
                structure: caller.participant.clone(),
                agent,
                purposes,
                duration_days: input.duration_days,
                document_sha256: document,
                expires_at: OffsetDateTime::now_utc()
                    + time::Duration::days(i64::from(input.duration_days)),
                request_id: id_for_record,
                request_fingerprint: Some(fingerprint),
            });
            state.store.append(vec![record]).await?;
            stored(state, &mandate_id).await
        },
    )
    .await?;
    Ok((mandate, pairwise))
}

/// A mandate just recorded (the derived state shows it once the record is durable).
async fn stored(state: &State, mandate_id: &str) -> Result<Mandate, ApiError> {
    state
        .store
        .mandate(mandate_id)
        .await?
        .ok_or(ApiError::StoreUnavailable)
}

/// Revokes a mandate: an agent of its structure, or a guichet (or the structure) presenting the
/// citizen's own ID token. Applies to the very next request. The consents an agent recorded
/// under it end with it, in the same batch of the log, and answers kept for retries under
/// either are dropped.
pub async fn revoke(
    state: &State,
    caller: &Caller,
    mandate_id: &str,
    id_token: &str,
) -> Result<Mandate, ApiError> {
    validate::identifier("mandate_id", mandate_id, 64)?;
    // The citizen present proves it with their ID token, which spends one of its acts whatever
    // the decision (a token cannot probe more mandates than it has acts).
    let mut presented = None;
    let decided = crate::mandate::revocation(
        caller,
        mandate_id,
        state.store.mandate(mandate_id).await?,
        || {
            let verified = crate::evidence::proven(id_token, caller, &state.federation.registry())?;
            let citizen = state.pseudonyms.audit(&verified.subject);
            presented = Some(verified);
            Ok(citizen)
        },
    );
    if let Some(verified) = &presented {
        crate::evidence::spend(state, verified).await?;
    }
    let mandate = decided?;
    if mandate.revoked_at.is_some() {
        // Revoked already: only once that revocation is durable.
        state.store.reads_durable().await?;
        return Ok(mandate);
    }
    // Serialised with grants, in this broker and across the cluster: a consent granted under
    // this mandate meanwhile is either recorded before (and ended here) or refused (it reads
    // the mandate again under the same hold).
    crate::idempotency::serialised(
        &state.store,
        &state.grants,
        &mandate.subject,
        None,
        end(state, caller, mandate_id),
    )
    .await
}

/// Records the end of mandate `mandate_id` and of the consents in force under it, the
/// person's acts held; the mandate as stored after.
async fn end(state: &State, caller: &Caller, mandate_id: &str) -> Result<Mandate, ApiError> {
    let mandate = state
        .store
        .mandate(mandate_id)
        .await?
        .ok_or(ApiError::StoreUnavailable)?;
    if mandate.revoked_at.is_some() {
        state.store.reads_durable().await?;
        return Ok(mandate);
    }
    let ended: Vec<String> = state
        .store
        .consents_under_mandate(&mandate.id)
        .await?
        .into_iter()
        .filter(|c| c.revoked_at.is_none())
        .map(|c| c.id)
        .collect();
    let mut records = vec![Record::now(Event::MandateRevoked {
        mandate_id: mandate.id.clone(),
        participant: caller.participant.clone(),
        agent: caller.agent.clone(),
    })];
    records.extend(ended.iter().map(|consent_id| {
        Record::now(Event::ConsentRevoked {
            consent_id: consent_id.clone(),
            participant: caller.participant.clone(),
            agent: caller.agent.clone(),
            ended_with_mandate: Some(mandate.id.clone()),
            with_identity_evidence: false,
            ended_with_consent: None,
        })
    }));
    state.store.append(records).await?;
    state.recent.forget_mandate(&mandate.id);
    for consent_id in &ended {
        state.recent.forget_consent(consent_id);
    }
    stored(state, mandate_id).await
}

/// What a List asks for.
#[derive(Debug, Default)]
pub struct ListInput {
    /// The subject, or empty to list the caller's structure's mandates.
    pub subject: String,
    /// The citizen's ID token, when a guichet lists for the citizen.
    pub id_token: String,
    /// Only this structure's mandates.
    pub structure: String,
    /// Page size; 0 for the default.
    pub page_size: u32,
    /// The last mandate id of the previous page.
    pub page_token: String,
}

/// Lists mandates, oldest first: a structure sees its own (of one subject, or all); a guichet
/// sees all of a subject's, with the citizen's ID token. With a subject, the person's pairwise
/// pseudonym for the caller comes too (empty otherwise).
pub async fn list(
    state: &State,
    caller: &Caller,
    input: &ListInput,
) -> Result<(Vec<Mandate>, String, String), ApiError> {
    if !input.structure.is_empty() {
        validate::identifier("structure", &input.structure, 64)?;
    }
    if !input.page_token.is_empty() {
        validate::identifier("page_token", &input.page_token, 64)?;
    }
    let mediator = caller.has_role(Role::Mediator);
    // Whose mandates, and whether only the caller's structure's among them.
    let pseudonym: String;
    let mut pairwise = String::new();
    let (of, own_only) = if input.subject.is_empty() {
        if !mediator {
            return Err(ApiError::invalid(
                "subject",
                "is required unless a mediation structure lists its own mandates",
            ));
        }
        if !input.structure.is_empty() && input.structure != caller.participant {
            return Err(ApiError::invalid(
                "structure",
                "a structure lists only its own mandates",
            ));
        }
        (MandatesOf::Structure(&caller.participant), false)
    } else {
        let registry = state.federation.registry();
        let subject = Subject::parse(&input.subject, registry.allow_test_subjects())?;
        // A structure's agent without the person's token sees its structure's mandates, even
        // when the structure is a guichet too.
        let agent_of_structure = mediator && caller.agent.is_some() && input.id_token.is_empty();
        let own_only = if agent_of_structure {
            true
        } else if caller.has_role(Role::Guichet) || !input.id_token.is_empty() {
            crate::evidence::require(&input.id_token, caller, &registry, &subject)?;
            false
        } else if mediator {
            true
        } else {
            return Err(ApiError::WrongRole {
                participant: caller.participant.clone(),
                role: Role::Guichet,
            });
        };
        pseudonym = state.pseudonyms.audit(&subject);
        pairwise = state.pseudonyms.pairwise(&caller.participant, &subject);
        (MandatesOf::Subject(&pseudonym), own_only)
    };
    let mandates = state.store.mandates_after(of, &input.page_token).await?;
    let (page, next) = crate::store::page(
        mandates,
        crate::page::size(input.page_size),
        |m: &Mandate| {
            (!own_only || m.structure == caller.participant)
                && (input.structure.is_empty() || m.structure == input.structure)
        },
        |m: &Mandate| &m.id,
    )
    .await?;
    Ok((page, next, pairwise))
}
