//! Guichet.Prefill: a form's fields from several administrations at once, so that the citizen
//! types only what no administration already knows.
//!
//! Each attestation type the form needs is fetched once, all concurrently, each through exactly
//! the Fetch path (habilitation, legal basis, provider under its own deadline, record); every
//! field comes back either with its value and provenance, or with the typed reason it could
//! not be filled. Partial results, never all-or-nothing.
//!
//! In preview mode the values are retrieved and recorded as accesses, but nothing is issued:
//! they wait in memory (`preview`) for the citizen's Confirm or rejection.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::caller::Caller;
use crate::error::ApiError;
use crate::exchange::{self, FetchInput, Fetched, Previewed};
use crate::preview::{Preview, PreviewState};
use crate::registry::Form;
use crate::state::State;
use crate::subject::Subject;
use crate::validate;
pub use unefois_domain::prefill::{FilledField, MissingField, Obtained, Source, Unfilled};
use unefois_domain::prefill::{fields, plan};

/// A pre-fill request, in domain terms.
#[derive(Debug, Default)]
pub struct PrefillInput {
    /// `scheme:value`.
    pub subject: String,
    /// The form id.
    pub form: String,
    /// The mandate acted under.
    pub mandate_id: String,
    /// Idempotency key (each type's fetch uses `<id>:<type>`).
    pub request_id: String,
    /// The caller's deadline, applied to each provider call.
    pub deadline: Option<Duration>,
    /// Preview mode: values for the citizen to check, nothing issued until confirmed.
    pub preview: bool,
    /// The citizen's ID token (a guichet's identity evidence), or empty under a mandate.
    pub id_token: String,
}

/// A pre-filled form.
#[derive(Debug)]
pub struct Prefilled {
    /// The form id.
    pub form: String,
    /// Filled fields, in form order.
    pub filled: Vec<FilledField>,
    /// Missing fields, in form order.
    pub missing: Vec<MissingField>,
    /// The attestations obtained, one per type (none in a preview).
    pub attestations: Vec<Arc<Fetched>>,
    /// In preview mode: the prefill id to confirm, and when the preview is forgotten.
    pub preview: Option<(String, OffsetDateTime)>,
}

impl From<&Fetched> for Obtained {
    fn from(f: &Fetched) -> Obtained {
        Obtained {
            source: Source {
                attestation_type: f.attestation.attestation_type.clone(),
                provider: f.attestation.provider.clone(),
                attestation_id: Some(f.attestation.id.clone()),
                retrieved_at: f.attestation.issued_at,
            },
            claims: f.claims.clone(),
        }
    }
}

impl From<&Previewed> for Obtained {
    fn from(p: &Previewed) -> Obtained {
        Obtained {
            source: Source {
                attestation_type: p.input.attestation_type.clone(),
                provider: p.provider.clone(),
                attestation_id: None,
                retrieved_at: p.retrieved_at,
            },
            claims: p.claims.clone(),
        }
    }
}

/// Pre-fills `input.form` for the calling guichet (or mediator's agent under a mandate); in
/// preview mode, retrieves the values without issuing anything and holds them for Confirm.
pub async fn prefill(
    state: &State,
    caller: &Caller,
    input: PrefillInput,
) -> Result<Prefilled, ApiError> {
    validate::identifier("form", &input.form, 64)?;
    validate::request_id(&input.request_id)?;
    let registry = state.federation.registry();
    let subject = Subject::parse(&input.subject, registry.allow_test_subjects())?;
    let form = registry
        .form(&input.form)
        .ok_or_else(|| ApiError::UnknownForm(input.form.clone()))?
        .clone();
    let pseudonym = state.pseudonyms.audit(&subject);
    // A guichet or a mediator; the citizen is present (identity evidence, one of the token's
    // acts), or an agent acts under the citizen's mandate for the form's purpose. A refusal
    // here is recorded for each type the form asked for, as the Fetch of each would be.
    let standing = async {
        caller.require_citizen_facing()?;
        let mandate = crate::policy::acting(
            &*state.store,
            caller,
            &input.mandate_id,
            &pseudonym,
            Some(&form.purpose),
            time::OffsetDateTime::now_utc(),
        )
        .await?;
        if mandate.is_none() {
            crate::evidence::for_act(state, &input.id_token, caller, &subject).await?;
        }
        Ok::<_, ApiError>(mandate)
    };
    let mandate = match standing.await {
        Ok(mandate) => mandate,
        Err(e) => {
            let requests: Vec<FetchInput> = plan(&form)
                .into_keys()
                .map(|ty| FetchInput {
                    subject: input.subject.clone(),
                    attestation_type: ty.to_string(),
                    purpose: form.purpose.clone(),
                    mandate_id: input.mandate_id.clone(),
                    ..FetchInput::default()
                })
                .collect();
            return Err(exchange::refuse_act(state, caller, &requests, None, e).await);
        }
    };

    // The claims each type must provide.
    let by_type = plan(&form);
    let fetch_input = |ty: &str, claims: &[String]| FetchInput {
        subject: input.subject.clone(),
        attestation_type: ty.to_string(),
        purpose: form.purpose.clone(),
        claims: claims.to_vec(),
        request_id: if input.request_id.is_empty() || input.preview {
            String::new()
        } else {
            fetch_request_id(&input.request_id, ty)
        },
        mandate_id: input.mandate_id.clone(),
        deadline: input.deadline,
    };

    if input.preview {
        let prefill_id = uuid::Uuid::now_v7().to_string();
        let previews = by_type.iter().map(|(ty, claims)| {
            let one = fetch_input(ty, claims);
            let prefill_id = prefill_id.as_str();
            async move {
                (
                    (*ty).to_string(),
                    exchange::preview(state, caller, one, prefill_id).await,
                )
            }
        });
        let results: BTreeMap<String, Result<Previewed, ApiError>> =
            futures::future::join_all(previews)
                .await
                .into_iter()
                .collect();
        refuse_unrecorded(&results)?;
        let obtained = results
            .iter()
            .map(|(ty, r)| {
                (
                    ty.clone(),
                    r.as_ref().map(Obtained::from).map_err(Unfilled::from),
                )
            })
            .collect();
        let (filled, missing) = fields(&form, &obtained);
        let mut held = Vec::new();
        let mut unfilled = BTreeMap::new();
        for (ty, result) in results {
            match result {
                Ok(previewed) => held.push(previewed),
                Err(e) => {
                    unfilled.insert(ty, Unfilled::from(&e));
                }
            }
        }
        let preview = Preview::open(
            &caller.participant,
            pseudonym,
            &form.id,
            mandate.map(|m| m.id),
            held,
            unfilled,
            state.previews.ttl(),
        );
        let expires_at = preview.expires_at;
        state.previews.hold(&prefill_id, preview)?;
        return Ok(Prefilled {
            form: form.id,
            filled,
            missing,
            attestations: Vec::new(),
            preview: Some((prefill_id, expires_at)),
        });
    }

    let fetches = by_type.iter().map(|(ty, claims)| {
        let one = fetch_input(ty, claims);
        async move { ((*ty).to_string(), exchange::fetch(state, caller, one).await) }
    });
    let results: BTreeMap<String, Result<Arc<Fetched>, ApiError>> =
        futures::future::join_all(fetches)
            .await
            .into_iter()
            .collect();
    refuse_unrecorded(&results)?;
    Ok(answer(&form, results, BTreeMap::new()))
}

/// The request id of the Fetch for type `ty` of a pre-fill sent with `request_id`: the same at
/// each retry of the pre-fill. `request_id:ty` while it is a request id (128 characters at
/// most), else a digest of it: a pre-fill's own id of up to 128 characters is valid, and must
/// not have its Fetches refused as malformed after the person's act is spent.
fn fetch_request_id(request_id: &str, ty: &str) -> String {
    let joined = format!("{request_id}:{ty}");
    if validate::request_id(&joined).is_ok() {
        return joined;
    }
    let digest = <sha2::Sha256 as sha2::Digest>::digest(joined.as_bytes());
    format!("prefill-{}", hex::encode(digest))
}

/// A confirmed attestation sent again to a repeated Confirm: refused once the consent it was
/// obtained under is no longer in force (a revocation since), else recorded as a retry of its
/// first entry (`exchange::resend`), with that new entry's receipt.
async fn confirmed_again(
    state: &State,
    confirmed: &Fetched,
    now: OffsetDateTime,
) -> Result<Fetched, ApiError> {
    if let crate::event::RecordedBasis::Consent { consent_id } = &confirmed.attestation.legal_basis
    {
        use crate::consent::ConsentStatus;
        match state.store.consent(consent_id).await? {
            Some(c) if c.status(now) == ConsentStatus::Active => {}
            Some(c) if c.status(now) == ConsentStatus::Revoked => {
                return Err(ApiError::ConsentRevoked(consent_id.clone()));
            }
            _ => return Err(ApiError::ConsentExpired(consent_id.clone())),
        }
    }
    exchange::resend(state, confirmed).await
}

/// Nothing is answered that the journal could not record.
fn refuse_unrecorded<T>(results: &BTreeMap<String, Result<T, ApiError>>) -> Result<(), ApiError> {
    if results
        .values()
        .any(|r| matches!(r, Err(ApiError::StoreUnavailable)))
    {
        return Err(ApiError::StoreUnavailable);
    }
    Ok(())
}

/// The answer of a pre-fill or a confirmation: each type's attestation or refusal, and the
/// types that gave nothing for another reason (`unfilled`: not confirmed, refused at preview).
fn answer(
    form: &Form,
    results: BTreeMap<String, Result<Arc<Fetched>, ApiError>>,
    unfilled: BTreeMap<String, Unfilled>,
) -> Prefilled {
    let mut obtained: BTreeMap<String, Result<Obtained, Unfilled>> = unfilled
        .into_iter()
        .map(|(ty, why)| (ty, Err(why)))
        .collect();
    for (ty, r) in &results {
        obtained.insert(
            ty.clone(),
            r.as_deref().map(Obtained::from).map_err(Unfilled::from),
        );
    }
    let (filled, missing) = fields(form, &obtained);
    Prefilled {
        form: form.id.clone(),
        filled,
        missing,
        attestations: results.into_values().filter_map(Result::ok).collect(),
        preview: None,
    }
}

/// A Confirm request, in domain terms.
#[derive(Debug, Default)]
pub struct ConfirmInput {
    /// `scheme:value`: must be the preview's subject.
    pub subject: String,
    /// The form id: empty, or the preview's form.
    pub form: String,
    /// The preview's id.
    pub prefill_id: String,
    /// The citizen rejects the preview.
    pub reject: bool,
    /// The types the citizen confirms; empty for all.
    pub attestation_types: Vec<String>,
    /// The mandate an agent acts under (the preview's), or empty.
    pub mandate_id: String,
    /// The citizen's ID token (a guichet's identity evidence), or empty under a mandate.
    pub id_token: String,
}

/// A confirmation under way: the preview is marked busy until it ends, and given up (left as
/// it was) if the call ends early.
struct Confirming<'a> {
    previews: &'a crate::preview::Previews,
    id: &'a str,
    done: bool,
}

impl Confirming<'_> {
    fn finish(mut self, preview: Preview) {
        self.done = true;
        self.previews.finish(self.id, preview);
    }
}

impl Drop for Confirming<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.previews.abandon(self.id);
        }
    }
}

/// Confirms a preview (the kept types become signed attestations for the consumer, the others
/// are recorded as rejected) or rejects it whole. A repeated Confirm answers the same
/// attestations.
pub async fn confirm(
    state: &State,
    caller: &Caller,
    input: ConfirmInput,
) -> Result<Prefilled, ApiError> {
    validate::identifier("prefill_id", &input.prefill_id, 64)?;
    if !input.form.is_empty() {
        validate::identifier("form", &input.form, 64)?;
    }
    validate::identifiers(
        "attestation_types",
        &input.attestation_types,
        validate::MAX_CONSENT_TYPES,
    )?;
    let registry = state.federation.registry();
    let subject = Subject::parse(&input.subject, registry.allow_test_subjects())?;
    let pseudonym = state.pseudonyms.audit(&subject);
    let id = input.prefill_id.as_str();
    // A guichet or a mediator; the citizen is present (identity evidence, one of the token's
    // acts), or an agent acts under the mandate the preview was made under, still in force. A
    // refusal here is recorded for each type the preview holds for this person.
    let standing = async {
        caller.require_citizen_facing()?;
        let mandate = crate::policy::acting(
            &*state.store,
            caller,
            &input.mandate_id,
            &pseudonym,
            None,
            time::OffsetDateTime::now_utc(),
        )
        .await?;
        if mandate.is_none() {
            crate::evidence::for_act(state, &input.id_token, caller, &subject).await?;
        }
        Ok::<_, ApiError>(mandate)
    };
    let mandate = match standing.await {
        Ok(mandate) => mandate,
        Err(e) => {
            let mut requests = state
                .previews
                .open_requests(id, &caller.participant, &pseudonym);
            for r in &mut requests {
                // The Confirm's own words: the mandate it named, not the preview's.
                r.mandate_id = input.mandate_id.clone();
                r.request_id.clear();
            }
            return Err(exchange::refuse_act(state, caller, &requests, Some(id), e).await);
        }
    };
    let mut preview = state.previews.begin(id, &caller.participant, |p| {
        if p.subject != pseudonym {
            return Err(ApiError::PreviewSubjectMismatch);
        }
        if p.mandate_id.as_deref() != mandate.as_ref().map(|m| m.id.as_str()) {
            return Err(ApiError::invalid(
                "mandate_id",
                match &p.mandate_id {
                    Some(_) => "is not the mandate this preview was made under",
                    None => "this preview was made without a mandate",
                },
            ));
        }
        if !input.form.is_empty() && p.form != input.form {
            return Err(ApiError::invalid("form", "is not the form of this preview"));
        }
        match &p.state {
            PreviewState::Open(items) => {
                if let Some(ty) = input
                    .attestation_types
                    .iter()
                    .find(|t| !items.iter().any(|i| i.input.attestation_type == **t))
                {
                    return Err(ApiError::invalid(
                        "attestation_types",
                        format!("{ty:?} is not in this preview"),
                    ));
                }
                Ok(())
            }
            PreviewState::Confirmed(_) if !input.reject => Ok(()),
            PreviewState::Confirmed(_) => Err(ApiError::PrefillClosed(id.into(), "confirmed")),
            PreviewState::Rejected => Err(ApiError::PrefillClosed(id.into(), "rejected")),
        }
    })?;
    let confirming = Confirming {
        previews: &state.previews,
        id,
        done: false,
    };
    let form = registry
        .form(&preview.form)
        .ok_or_else(|| ApiError::UnknownForm(preview.form.clone()))?
        .clone();
    if let Some(m) = &mandate
        && !m.purposes.contains(&form.purpose)
    {
        return Err(ApiError::MandateOutOfScope {
            mandate: m.id.clone(),
            purpose: form.purpose.clone(),
        });
    }
    let items = match std::mem::replace(&mut preview.state, PreviewState::Rejected) {
        PreviewState::Open(items) => items,
        PreviewState::Confirmed(done) => {
            preview.state = PreviewState::Confirmed(done.clone());
            let unfilled = preview.unfilled.clone();
            confirming.finish(preview);
            // Sent again as a Fetch's retry is: each on the record anew, and only while the
            // consent it was obtained under is in force.
            let now = OffsetDateTime::now_utc();
            let resends = done.into_iter().map(|f| async move {
                let ty = f.attestation.attestation_type.clone();
                (ty, confirmed_again(state, &f, now).await.map(Arc::new))
            });
            let results: BTreeMap<String, Result<Arc<Fetched>, ApiError>> =
                futures::future::join_all(resends)
                    .await
                    .into_iter()
                    .collect();
            refuse_unrecorded(&results)?;
            return Ok(answer(&form, results, unfilled));
        }
        PreviewState::Rejected => return Err(ApiError::PrefillClosed(id.into(), "rejected")),
    };
    let kept = |p: &Previewed| {
        !input.reject
            && (input.attestation_types.is_empty()
                || input.attestation_types.contains(&p.input.attestation_type))
    };
    let (keep, drop): (Vec<&Previewed>, Vec<&Previewed>) = items.iter().partition(|p| kept(p));
    for p in &drop {
        // Not recorded: the preview stays open for another try (`confirming` gives it up).
        exchange::reject(state, caller, p, id).await?;
    }
    // Each field says why it is empty: refused or failed at the preview, or not confirmed.
    for p in &drop {
        preview.unfilled.insert(
            p.input.attestation_type.clone(),
            Unfilled::not_confirmed(input.reject),
        );
    }
    let confirmations = keep.iter().map(|p| async move {
        (
            p.input.attestation_type.clone(),
            exchange::confirm(state, caller, p, id).await.map(Arc::new),
        )
    });
    let results: BTreeMap<String, Result<Arc<Fetched>, ApiError>> =
        futures::future::join_all(confirmations)
            .await
            .into_iter()
            .collect();
    refuse_unrecorded(&results)?;
    preview.state = if input.reject {
        PreviewState::Rejected
    } else {
        PreviewState::Confirmed(
            results
                .values()
                .filter_map(|r| r.as_ref().ok().cloned())
                .collect(),
        )
    };
    let unfilled = preview.unfilled.clone();
    confirming.finish(preview);
    Ok(answer(&form, results, unfilled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_types_fetch_has_a_valid_request_id_the_same_at_each_retry() {
        let long = "r".repeat(128);
        for (sent, ty) in [
            ("demande-1", "caf.quotient_familial"),
            (long.as_str(), "caf.quotient_familial"),
            (long.as_str(), "dgfip.revenu_fiscal_reference"),
        ] {
            let id = fetch_request_id(sent, ty);
            assert!(validate::request_id(&id).is_ok(), "{id}");
            assert_eq!(id, fetch_request_id(sent, ty));
        }
        assert_eq!(
            fetch_request_id("demande-1", "caf.quotient_familial"),
            "demande-1:caf.quotient_familial"
        );
        assert_ne!(
            fetch_request_id(&long, "caf.quotient_familial"),
            fetch_request_id(&long, "dgfip.revenu_fiscal_reference")
        );
    }
}
