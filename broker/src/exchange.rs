//! Exchange.Fetch, the broker's core: a consumer obtains a signed attestation about a subject.
//!
//! validate → habilitation (deny by default) → legal basis (law, or an active consent) →
//! provider under a deadline → only the claims both requested and allowed → sign → record →
//! answer once the record is durable. Denials and failures are recorded too, before the
//! caller hears of them.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use unefois_adapters::{AdapterError, AdapterRequest, Answer, Claims, check_claims};

use crate::attestation::{Attestation, AttestationContent};
use crate::caller::Caller;
use crate::error::ApiError;
use crate::event::{Event, ExchangeEvent, Outcome, Record, RecordedBasis};
use crate::federation::Loaded;
use crate::idempotency::{self, Previous};
use crate::policy::{self, Decision};
use crate::ratelimit::Alarm;
use crate::registry::Habilitation;
use crate::signing::Envelope;
use crate::state::State;
use crate::subject::Subject;
use crate::validate;

pub use crate::fetched::{Fetched, Previewed, Receipt};
pub use crate::policy::FetchInput;

/// The receipt of the durable, checkpointed entry `seq`, whose exact bytes are `entry`: as the
/// store appended it when it proved it then, read from the store otherwise.
pub async fn receipt(state: &State, logged: Logged) -> Result<Receipt, ApiError> {
    let crate::store::Appended { seq, entry, proven } = logged;
    if let Some(proven) = proven {
        return Ok(Receipt {
            leaf_index: seq,
            entry,
            checkpoint: proven.checkpoint,
            tree_size: proven.tree_size,
            inclusion_proof: proven.inclusion_proof,
        });
    }
    let (tree_size, checkpoint) = state
        .store
        .latest_checkpoint()
        .await?
        .filter(|(size, _)| *size > seq)
        .ok_or(ApiError::StoreUnavailable)?;
    Ok(Receipt {
        leaf_index: seq,
        entry,
        checkpoint,
        tree_size,
        inclusion_proof: state.store.inclusion_proof(seq, tree_size).await?,
    })
}

/// Serves a Fetch: returns the attestation only once its record is durable. A retry with the
/// same request id and the same request within the window gets the same answer.
pub async fn fetch(
    state: &State,
    caller: &Caller,
    input: FetchInput,
) -> Result<Arc<Fetched>, ApiError> {
    admit(state, caller)?;
    if input.request_id.is_empty() {
        let person = Person::parse(state, &input.subject);
        return fetch_once(state, caller, input, person, Retry::default())
            .await
            .map(Arc::new);
    }
    if let Err(e) = validate::request_id(&input.request_id) {
        return Err(refuse(state, caller, &input, e).await);
    }
    // Request ids are the caller's own: an agent's, not its structure's.
    let actor = caller.actor();
    let fingerprint = idempotency::fingerprint(&input);
    match state
        .recent
        .previous(&actor, &input.request_id, &fingerprint)
    {
        Previous::Same(answer) => return resend(state, &answer).await.map(Arc::new),
        Previous::Different => {
            let reused = ApiError::RequestIdReused(input.request_id.clone());
            return Err(refuse(state, caller, &input, reused).await);
        }
        Previous::New => {}
    }
    // Answers are kept in memory only (they carry claim values); the journal remembers that
    // the request id was used, so that a retry after a restart is recorded as one.
    let person = Person::parse(state, &input.subject);
    let mut retry = Retry {
        fingerprint: person
            .as_ref()
            .ok()
            .map(|person| recorded_fingerprint(state, caller, &input, person)),
        retry_of: None,
    };
    if let Some(fingerprint) = &retry.fingerprint {
        let earlier = state
            .store
            .fetch_request_use(&actor, &state.sealer.blind_id(&actor, &input.request_id))
            .await?;
        if let Some(earlier) = earlier {
            if earlier.fingerprint != *fingerprint {
                let reused = ApiError::RequestIdReused(input.request_id.clone());
                return Err(refuse(state, caller, &input, reused).await);
            }
            retry.retry_of = earlier.result.parse().ok();
        }
    }
    let request_id = input.request_id.clone();
    let answer = Arc::new(fetch_once(state, caller, input, person, retry).await?);
    state
        .recent
        .keep(&actor, &request_id, fingerprint, answer.clone());
    Ok(answer)
}

/// Sends a kept answer again to a retry, recorded as a retry of the entry it was first
/// recorded as (every answer that leaves is on the record): the same attestation, with the
/// receipt of the new entry. A revocation drops kept answers first (`RecentAnswers::forget_*`),
/// so that no answer its revocation covers is sent again.
pub(crate) async fn resend(state: &State, answer: &Fetched) -> Result<Fetched, ApiError> {
    let original = Record::decode(&answer.receipt.entry).map_err(|e| {
        tracing::error!(error = %e, "a kept answer's entry does not decode");
        ApiError::StoreUnavailable
    })?;
    let Event::Exchange(mut event) = original.event else {
        tracing::error!("a kept answer's entry is not an exchange");
        return Err(ApiError::StoreUnavailable);
    };
    event.retry_of = Some(answer.receipt.leaf_index);
    // A new entry seals the person anew: even two entries of one request share no byte.
    event.subject_sealed = event
        .subject_sealed
        .as_deref()
        .and_then(|sealed| state.sealer.open(sealed).ok())
        .map(|pseudonym| state.sealer.seal(&pseudonym));
    // A kept answer is a granted one: no refusal.
    let logged = record(state, *event, None).await?;
    Ok(Fetched {
        attestation: answer.attestation.clone(),
        envelope: answer.envelope.clone(),
        claims: answer.claims.clone(),
        receipt: receipt(state, logged).await?,
        origin_subject_key: answer.origin_subject_key,
    })
}

/// What the journal records about a Fetch's request id: the digest of the request (to tell a
/// retry from another request after a restart), and the earlier exchange it retries.
#[derive(Default)]
struct Retry {
    fingerprint: Option<String>,
    retry_of: Option<u64>,
}

/// The person a request is about, parsed once: the subject and its audit pseudonym.
struct Person {
    subject: Subject,
    audit: String,
}

impl Person {
    /// Parses `raw` under the registry in force, or says why it is not a subject.
    fn parse(state: &State, raw: &str) -> Result<Person, ApiError> {
        let registry = state.federation.registry();
        let subject = Subject::parse(raw, registry.allow_test_subjects())?;
        Ok(Person {
            audit: state.pseudonyms.audit(&subject),
            subject,
        })
    }
}

/// The digest of a request as recorded: keyed (the seal key's blinding), over the caller, the
/// subject's audit pseudonym (never the raw id), the type, the purpose, the mandate and the
/// claims, so that two consumers' identical requests about one person record unrelated
/// digests.
fn recorded_fingerprint(
    state: &State,
    caller: &Caller,
    input: &FetchInput,
    person: &Person,
) -> String {
    let actor = caller.actor();
    state.sealer.fingerprint(
        [
            actor.as_str(),
            person.audit.as_str(),
            &input.attestation_type,
            &input.purpose,
            &input.mandate_id,
        ]
        .into_iter()
        .chain(input.claims.iter().map(String::as_str)),
    )
}

/// Below this, a deadline that runs out says nothing of the provider: a consumer who sends calls
/// with a few milliseconds would otherwise open a provider's breaker for every other one. From
/// it on, a provider that does not answer in time is failing, whoever chose the time: callers
/// who all send short deadlines still open the breaker of a provider that hangs.
pub const MIN_JUDGING_BUDGET: Duration = Duration::from_secs(1);

/// Whether a provider call given `budget` (the broker's own time for a provider being
/// `provider_timeout`) is too short for its running out to count against the provider.
fn too_short_to_judge(budget: Duration, provider_timeout: Duration) -> bool {
    budget < MIN_JUDGING_BUDGET.min(provider_timeout)
}

/// The caller's rate limit.
fn admit(state: &State, caller: &Caller) -> Result<(), ApiError> {
    state
        .limits
        .check(&caller.participant)
        .map_err(|retry_after| {
            crate::metrics::rate_limited(&caller.participant);
            ApiError::RateLimited { retry_after }
        })
}

async fn fetch_once(
    state: &State,
    caller: &Caller,
    input: FetchInput,
    person: Result<Person, ApiError>,
    retry: Retry,
) -> Result<Fetched, ApiError> {
    let started = std::time::Instant::now();
    let loaded = state.federation.loaded();
    // A bounded label: a registered type, never what a caller typed.
    let type_label = if loaded
        .registry
        .attestation_type(&input.attestation_type)
        .is_some()
    {
        input.attestation_type.clone()
    } else {
        "unknown".to_string()
    };
    let answer = fetch_recorded(state, caller, input, person, &loaded, retry).await;
    let outcome = match &answer {
        Ok(_) => "granted",
        Err(e) if e.is_failure() => "failed",
        Err(_) => "denied",
    };
    crate::metrics::fetch_duration(&type_label, outcome, started.elapsed().as_secs_f64());
    answer
}

async fn fetch_recorded(
    state: &State,
    caller: &Caller,
    input: FetchInput,
    person: Result<Person, ApiError>,
    loaded: &Loaded,
    retry: Retry,
) -> Result<Fetched, ApiError> {
    let mut event = base_event(state, caller, &input, loaded);
    event.request_fingerprint = retry.fingerprint;
    event.retry_of = retry.retry_of;
    let served = serve(state, caller, &input, person, loaded, &mut event).await;
    let ((attestation, envelope, claims, origin_subject_key), logged) =
        conclude(state, event, served, Outcome::Granted).await?;
    Ok(Fetched {
        attestation,
        envelope,
        claims,
        receipt: receipt(state, logged).await?,
        origin_subject_key,
    })
}

/// Records how a request ended (`success`, or the refusal or failure) and only then returns
/// it, with the record's sequence number and bytes: nothing is answered without its record.
async fn conclude<T>(
    state: &State,
    mut event: ExchangeEvent,
    result: Result<T, ApiError>,
    success: Outcome,
) -> Result<(T, Logged), ApiError> {
    match result {
        Ok(value) => {
            event.outcome = success;
            let logged = record(state, event, None).await?;
            Ok((value, logged))
        }
        Err(error) => {
            event.outcome = if error.is_failure() {
                Outcome::Failed
            } else {
                Outcome::Denied
            };
            record(state, event, Some(&error)).await?;
            Err(error)
        }
    }
}

/// Retrieves what a Fetch would release, for the citizen to check, without issuing anything:
/// the same policy path, recorded as a `previewed` access of preview `prefill_id`.
pub async fn preview(
    state: &State,
    caller: &Caller,
    input: FetchInput,
    prefill_id: &str,
) -> Result<Previewed, ApiError> {
    admit(state, caller)?;
    let loaded = state.federation.loaded();
    let mut event = base_event(state, caller, &input, &loaded);
    event.prefill_id = Some(prefill_id.to_string());
    let retrieved = async {
        let person = Person::parse(state, &input.subject);
        let decision = decide(state, caller, &input, person, &loaded, &mut event).await?;
        let released = obtain(state, caller, &input, &loaded, &decision).await?;
        Ok((decision, released))
    }
    .await;
    let ((decision, released), _) = conclude(state, event, retrieved, Outcome::Previewed).await?;
    Ok(Previewed {
        input,
        provider: decision.provider.clone(),
        decision,
        claims: released.claims,
        origin: released.origin,
        retrieved_at: OffsetDateTime::now_utc(),
    })
}

/// Turns a confirmed preview into a signed attestation for the consumer. The policy is applied
/// again (a consent or mandate revoked since the preview stops it), and only the held claims
/// it still allows are released.
pub async fn confirm(
    state: &State,
    caller: &Caller,
    held: &Previewed,
    prefill_id: &str,
) -> Result<Fetched, ApiError> {
    let loaded = state.federation.loaded();
    let mut event = base_event(state, caller, &held.input, &loaded);
    event.prefill_id = Some(prefill_id.to_string());
    let issued = async {
        let person = Person::parse(state, &held.input.subject);
        let decision = decide(state, caller, &held.input, person, &loaded, &mut event).await?;
        let claims = policy::still_released(&decision, &held.claims);
        let origin = held.origin.as_ref().map(|o| {
            o.narrowed(&held.claims, &claims)
                .issued_at(OffsetDateTime::now_utc().unix_timestamp())
        });
        issue(
            state,
            caller,
            &decision,
            Released { claims, origin },
            &mut event,
        )
    }
    .await;
    let ((attestation, envelope, claims, origin_subject_key), logged) =
        conclude(state, event, issued, Outcome::Granted).await?;
    Ok(Fetched {
        attestation,
        envelope,
        claims,
        receipt: receipt(state, logged).await?,
        origin_subject_key,
    })
}

/// Records that the citizen rejected a preview: nothing is released.
pub async fn reject(
    state: &State,
    caller: &Caller,
    held: &Previewed,
    prefill_id: &str,
) -> Result<(), ApiError> {
    let loaded = state.federation.loaded();
    let mut event = base_event(state, caller, &held.input, &loaded);
    let d = &held.decision;
    event.outcome = Outcome::Rejected;
    event.prefill_id = Some(prefill_id.to_string());
    event.subject_sealed = Some(state.sealer.seal(&d.audit));
    event.pseudonym_key = Some(state.pseudonyms.audit_key_id().to_string());
    event.habilitation = Some(d.habilitation.clone());
    event.legal_basis = Some(d.basis.clone());
    event.provider = Some(d.provider.clone());
    if d.mandate.is_some() {
        event.mandate_id = d.mandate.clone();
    }
    record(state, event, None).await.map(|_| ())
}

/// The record of a Fetch before it is decided. Only registered names and bounded ids go in:
/// free-form input (which a careless client could fill with a subject id) never reaches the
/// journal; the request id is kept as a digest, enough to match retries.
fn base_event(
    state: &State,
    caller: &Caller,
    input: &FetchInput,
    loaded: &Loaded,
) -> ExchangeEvent {
    let registered = |known: bool, value: &str| {
        if known {
            value.to_string()
        } else {
            "(unregistered)".to_string()
        }
    };
    let registry = &loaded.registry;
    ExchangeEvent {
        outcome: Outcome::Denied,
        reason: None,
        participant: caller.participant.clone(),
        agent: caller.agent.clone(),
        subject: None,
        subject_sealed: None,
        pseudonym_key: None,
        attestation_type: registered(
            registry.attestation_type(&input.attestation_type).is_some(),
            &input.attestation_type,
        ),
        purpose: registered(registry.purpose(&input.purpose).is_some(), &input.purpose),
        legal_basis: None,
        habilitation: None,
        mandate_id: (!input.mandate_id.is_empty())
            .then(|| state.sealer.blind_id(&caller.actor(), &input.mandate_id)),
        attestation_id: None,
        payload_sha256: None,
        provider: None,
        derived_rules: Vec::new(),
        request_id: (!input.request_id.is_empty())
            .then(|| state.sealer.blind_id(&caller.actor(), &input.request_id)),
        registry_sha256: registry.sha256_hex(),
        prefill_id: None,
        request_fingerprint: None,
        retry_of: None,
    }
}

/// Records a Fetch refused before it was looked at, and returns the refusal (or the failure
/// to record it: nothing is answered without its record).
async fn refuse(state: &State, caller: &Caller, input: &FetchInput, error: ApiError) -> ApiError {
    let loaded = state.federation.loaded();
    let event = base_event(state, caller, input, &loaded);
    match record(state, event, Some(&error)).await {
        Ok(_) => error,
        Err(e) => e,
    }
}

/// Records an act about a person refused before any of its types was looked at (a pre-fill, or
/// the confirmation of a preview, whose caller, mandate or identity evidence does not hold):
/// one denied exchange per type, about the person, with the refusal's reason, as a Fetch
/// refused for that reason would be. Returns the refusal, or the failure to record it (nothing
/// is answered without its record).
pub async fn refuse_act(
    state: &State,
    caller: &Caller,
    requests: &[FetchInput],
    prefill_id: Option<&str>,
    error: ApiError,
) -> ApiError {
    let loaded = state.federation.loaded();
    for input in requests {
        let mut event = base_event(state, caller, input, &loaded);
        if let Ok(person) = Person::parse(state, &input.subject) {
            event.subject_sealed = Some(state.sealer.seal(&person.audit));
            event.pseudonym_key = Some(state.pseudonyms.audit_key_id().to_string());
        }
        event.prefill_id = prefill_id.map(str::to_string);
        if let Err(e) = record(state, event, Some(&error)).await {
            return e;
        }
    }
    error
}

/// A durable entry: its sequence number and exact bytes.
type Logged = crate::store::Appended;

/// Records an exchange, refused or failed for `refusal` if any (its `ErrorReason` name is the
/// entry's reason); the one place where exchanges are counted in the metrics, so that they agree
/// with the log (by outcome and reason, both from closed lists; the type label is
/// "(unregistered)" as recorded).
async fn record(
    state: &State,
    mut event: ExchangeEvent,
    refusal: Option<&ApiError>,
) -> Result<Logged, ApiError> {
    let reason = refusal.map_or("", ApiError::reason_code);
    event.reason = refusal.map(|e| e.reason_code().to_string());
    let recorded = crate::metrics::exchange_counter(
        &event.participant,
        &event.attestation_type,
        event.outcome.name(),
        reason,
    );
    let logged = state
        .store
        .append_entry(Record::now(Event::Exchange(Box::new(event))))
        .await?;
    recorded.increment(1);
    Ok(logged)
}

async fn serve(
    state: &State,
    caller: &Caller,
    input: &FetchInput,
    person: Result<Person, ApiError>,
    loaded: &Loaded,
    event: &mut ExchangeEvent,
) -> Result<Issued, ApiError> {
    let decision = decide(state, caller, input, person, loaded, event).await?;
    let released = obtain(state, caller, input, loaded, &decision).await?;
    issue(state, caller, &decision, released, event)
}

/// A signed attestation: decoded, its envelope, its claims typed, and the key of the subject
/// digest of the provider's statement it carries, if any.
type Issued = (Attestation, Envelope, Claims, Option<[u8; 32]>);

/// What may be released to the consumer, and the provider's proof of origin for it.
struct Released {
    claims: Claims,
    origin: Option<crate::origin::Recorded>,
}

/// Applies the policy (`crate::policy`, pure) to the request about `person`, parsed once, with
/// the store's facts, and fills the record with what it established, allowed or not. Raises
/// the harvesting alarm when a habilitation was used for too many people in a minute.
async fn decide(
    state: &State,
    caller: &Caller,
    input: &FetchInput,
    person: Result<Person, ApiError>,
    loaded: &Loaded,
    event: &mut ExchangeEvent,
) -> Result<Decision, ApiError> {
    policy::admissible(caller, input)?;
    let Person { subject, audit } = person?;
    event.subject_sealed = Some(state.sealer.seal(&audit));
    event.pseudonym_key = Some(state.pseudonyms.audit_key_id().to_string());
    let now = OffsetDateTime::now_utc();
    let verdict = policy::decide(
        &loaded.registry,
        caller,
        input,
        subject,
        &audit,
        &*state.store,
        now,
    )
    .await;
    if verdict.mandate.is_some() {
        event.mandate_id = verdict.mandate;
    }
    if let Some(habilitation) = verdict.habilitation {
        event.habilitation = Some(habilitation.id.clone());
        watch_harvesting(state, caller, habilitation, &audit).await?;
    }
    event.derived_rules = verdict.derived_rules;
    let decision = verdict.decision?;
    event.legal_basis = Some(decision.basis.clone());
    event.provider = Some(decision.provider.clone());
    Ok(decision)
}

/// Counts the person among those `habilitation` was used for this minute, and records the
/// harvesting alarm when they are more than it allows.
async fn watch_harvesting(
    state: &State,
    caller: &Caller,
    habilitation: &Habilitation,
    audit: &str,
) -> Result<(), ApiError> {
    if let Some(limit) = habilitation.max_subjects_per_minute
        && let Some(alarm) =
            state
                .limits
                .observe(&caller.participant, &habilitation.id, audit, limit)
    {
        record_alarm(state, alarm).await?;
    }
    Ok(())
}

/// Records a harvesting alarm that the people other brokers saw made this broker raise.
pub(crate) async fn raise_harvesting_alarm(state: &State, alarm: Alarm) {
    if let Err(e) = record_alarm(state, alarm).await {
        tracing::error!(error = %e, "cannot record a harvesting alarm");
    }
}

/// Records `alarm`, then logs and counts it; one whose record could not be appended is taken
/// back, to be raised again within its minute (by the next person read, or the next share)
/// rather than lost for it.
async fn record_alarm(state: &State, alarm: Alarm) -> Result<(), crate::store::StoreError> {
    let recording = Recording {
        limits: &state.limits,
        alarm: &alarm,
        settled: false,
    };
    let appended = state.store.append(vec![alarm_record(&alarm)]).await;
    recording.settle(appended.is_ok());
    appended?;
    tracing::warn!(consumer = %alarm.consumer, habilitation = %alarm.habilitation, distinct = alarm.distinct, "harvesting alarm");
    crate::metrics::harvesting_alarm(&alarm.consumer, &alarm.habilitation);
    Ok(())
}

/// An alarm whose record is being appended. Dropped before its outcome (a page's request gone
/// while the record was appended), it is taken back: raised again, at worst recorded twice,
/// rather than never shared.
struct Recording<'a> {
    limits: &'a crate::ratelimit::RateLimits,
    alarm: &'a Alarm,
    settled: bool,
}

impl Recording<'_> {
    /// The record's outcome: shared with the other brokers once recorded, else taken back.
    fn settle(mut self, recorded: bool) {
        self.settled = true;
        match recorded {
            true => self.limits.alarm_recorded(self.alarm),
            false => self.limits.alarm_unrecorded(self.alarm),
        }
    }
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.limits.alarm_unrecorded(self.alarm);
        }
    }
}

/// The alarm's record.
fn alarm_record(alarm: &Alarm) -> Record {
    Record::now(Event::HarvestingAlarm {
        participant: alarm.consumer.clone(),
        habilitation: alarm.habilitation.clone(),
        distinct_subjects: alarm.distinct as u64,
        limit: alarm.limit,
    })
}

/// Asks the provider under the deadline and keeps only what may be released: raw claims as
/// answered, derived claims computed here from their sources, which are then dropped. The
/// provider's verified signature is recorded as `crate::origin` decides: its statement only if
/// it states exactly what is released.
async fn obtain(
    state: &State,
    caller: &Caller,
    input: &FetchInput,
    loaded: &Loaded,
    decision: &Decision,
) -> Result<Released, ApiError> {
    let ty = loaded
        .registry
        .attestation_type(&decision.attestation_type)
        .ok_or_else(|| ApiError::UnknownAttestationType(decision.attestation_type.clone()))?;
    let Answer {
        claims: answered,
        origin,
    } = provide(state, loaded, input, caller, decision).await?;
    check_claims(&ty.claim_specs(), &decision.provider_claims, &answered).map_err(|e| {
        tracing::warn!(provider = %decision.provider, error = %e, "provider answer refused");
        ApiError::ProviderInvalidResponse {
            provider: decision.provider.clone(),
        }
    })?;
    let released = policy::release(decision, &answered);
    let origin = origin.map(|o| crate::origin::recorded(&o, &answered, &released));
    Ok(Released {
        claims: released,
        origin,
    })
}

/// Signs the attestation of the released claims for the consumer and completes the record.
fn issue(
    state: &State,
    caller: &Caller,
    decision: &Decision,
    released: Released,
    event: &mut ExchangeEvent,
) -> Result<Issued, ApiError> {
    let Released { claims, origin } = released;
    let (origin, origin_subject_key) = match origin {
        Some(o) => (Some(o.origin), o.subject_key),
        None => (None, None),
    };
    let rules = decision
        .derived
        .iter()
        .map(|d| (d.name.clone(), d.describe()))
        .collect();
    let attestation = Attestation::issue(AttestationContent {
        attestation_type: &decision.attestation_type,
        type_version: decision.type_version,
        subject: state
            .pseudonyms
            .pairwise(&caller.participant, &decision.subject),
        audience: &caller.participant,
        purpose: &decision.purpose,
        legal_basis: decision.basis.clone(),
        mandate_id: decision.mandate.clone(),
        claims: &claims,
        rules,
        provider: &decision.provider,
        origin,
        max_age: time::Duration::days(i64::from(decision.max_age_days)),
    });
    let envelope = state.signer.sign(attestation.to_payload());
    event.attestation_id = Some(attestation.id.clone());
    event.payload_sha256 = Some(hex::encode(Sha256::digest(&envelope.payload)));
    Ok((attestation, envelope, claims, origin_subject_key))
}

async fn provide(
    state: &State,
    loaded: &Loaded,
    input: &FetchInput,
    caller: &Caller,
    decision: &Decision,
) -> Result<Answer, ApiError> {
    let provider = decision.provider.as_str();
    let adapter = loaded
        .adapters
        .get(&decision.attestation_type)
        .ok_or_else(|| ApiError::ProviderUnavailable {
            provider: provider.to_string(),
            reason: "no adapter configured".into(),
            retry_after: None,
        })?;
    // Keep a tenth of the caller's deadline (at least 100 ms) to sign, record and answer.
    let budget = input.deadline.map_or(state.provider_timeout, |d| {
        d.saturating_sub((d / 10).max(Duration::from_millis(100)))
            .min(state.provider_timeout)
    });
    let callers_deadline = too_short_to_judge(budget, state.provider_timeout);
    let request = AdapterRequest {
        subject: decision.subject.as_str().to_string(),
        attestation_type: decision.attestation_type.clone(),
        claims: decision.provider_claims.clone(),
        consumer: caller.participant.clone(),
        purpose: input.purpose.clone(),
        legal_basis: match &decision.basis {
            RecordedBasis::Law { citation } => unefois_adapters::LegalBasis::Law {
                citation: citation.clone(),
            },
            RecordedBasis::Consent { consent_id } => unefois_adapters::LegalBasis::Consent {
                consent_id: consent_id.clone(),
            },
        },
        // As base_event records it, never the caller's own id: a provider may log it, and it
        // matches the audit log.
        request_id: if input.request_id.is_empty() {
            String::new()
        } else {
            state.sealer.blind_id(&caller.actor(), &input.request_id)
        },
        consumer_siret: loaded
            .registry
            .participant(&caller.participant)
            .and_then(|p| p.siret.clone()),
        purpose_label: loaded
            .registry
            .purpose(&input.purpose)
            .map(|p| p.label.clone())
            .unwrap_or_default(),
        civil_status: decision.subject.civil_status(),
        deadline: tokio::time::Instant::now() + budget,
    };
    let started = std::time::Instant::now();
    // `Guarded` bounds both the wait for a slot and the call by `request.deadline`, and counts a
    // call that runs out of time against the provider's breaker.
    let answer = adapter.answer_within(&request, callers_deadline).await;
    let result = match &answer {
        Ok(_) => "ok",
        Err(AdapterError::NotFound) => "not_found",
        Err(e) if crate::resilience::is_circuit_open(e) => "circuit_open",
        Err(e) if crate::provider_gate::is_cooling_down(e) => "cooling_down",
        Err(e) if crate::provider_gate::is_rate_limited(e) => "rate_limited",
        Err(AdapterError::Unavailable { .. }) => "unavailable",
        Err(AdapterError::AuthFailed(_)) => "auth_failed",
        Err(AdapterError::InvalidResponse(_)) => "invalid_response",
        Err(AdapterError::DeadlineExceeded) => "deadline_exceeded",
        Err(AdapterError::SubjectNotAccepted(_)) => "subject_not_accepted",
    };
    crate::metrics::provider_call(
        provider,
        &input.attestation_type,
        result,
        started.elapsed().as_secs_f64(),
    );
    answer.map_err(|e| match e {
        AdapterError::Unavailable { retry_after, .. } if crate::resilience::is_circuit_open(&e) => {
            ApiError::ProviderCircuitOpen {
                provider: provider.to_string(),
                retry_after,
            }
        }
        AdapterError::NotFound => ApiError::SubjectNotFound,
        AdapterError::Unavailable {
            reason,
            retry_after,
        } => ApiError::ProviderUnavailable {
            provider: provider.to_string(),
            reason,
            retry_after,
        },
        AdapterError::AuthFailed(why) => {
            crate::metrics::provider_auth_failure(provider);
            tracing::error!(%provider, attestation_type = %input.attestation_type, %why, "provider refused the broker's credentials");
            ApiError::ProviderAuthFailed {
                provider: provider.to_string(),
                reason: why,
            }
        }
        AdapterError::InvalidResponse(why) => {
            tracing::warn!(%provider, %why, "invalid provider response");
            ApiError::ProviderInvalidResponse {
                provider: provider.to_string(),
            }
        }
        AdapterError::DeadlineExceeded => ApiError::ProviderDeadline(provider.to_string()),
        // The request's fault, not the provider's: refused like any invalid subject.
        AdapterError::SubjectNotAccepted(why) => ApiError::InvalidArgument {
            field: "subject",
            message: why,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_fair_time_run_out_counts_against_the_provider() {
        let broker_own = Duration::from_secs(5);
        for (budget_ms, too_short) in [
            (0, true),
            (50, true),
            (999, true),
            (1_000, false),
            (1_500, false),
            (5_000, false),
        ] {
            assert_eq!(
                too_short_to_judge(Duration::from_millis(budget_ms), broker_own),
                too_short,
                "{budget_ms} ms"
            );
        }
        // A broker whose own time for a provider is shorter judges by it.
        assert!(!too_short_to_judge(
            Duration::from_millis(500),
            Duration::from_millis(500)
        ));
    }
}
