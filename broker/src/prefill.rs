//! Guichet.Prefill: a form's fields from several administrations at once, so that the citizen
//! types only what no administration already knows.
//!
//! Each attestation type the form needs is fetched once, all concurrently, each through exactly
//! the Fetch path (habilitation, legal basis, provider under its own deadline, record); every
//! field comes back either with its value and provenance, or with the typed reason it could
//! not be filled. Partial results, never all-or-nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use unefois_adapters::ClaimValue;

use crate::caller::Caller;
use crate::error::ApiError;
use crate::exchange::{self, FetchInput, Fetched};
use crate::registry::Role;
use crate::state::State;
use crate::subject::Subject;
use crate::validate;

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
}

/// A field filled from an attestation.
#[derive(Debug)]
pub struct FilledField {
    /// Field name.
    pub name: String,
    /// Whether the form requires it.
    pub required: bool,
    /// The value.
    pub value: ClaimValue,
    /// Where it comes from.
    pub fetched: Arc<Fetched>,
}

/// A field that could not be filled, and why (the guichet asks the person for it).
#[derive(Debug)]
pub struct MissingField {
    /// Field name.
    pub name: String,
    /// Whether the form requires it.
    pub required: bool,
    /// Why, as a closed `ErrorReason` name.
    pub reason: &'static str,
    /// Why, for people.
    pub message: String,
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
    /// The attestations obtained, one per type.
    pub attestations: Vec<Arc<Fetched>>,
}

/// Pre-fills `input.form` for the calling guichet.
pub async fn prefill(
    state: &State,
    caller: &Caller,
    input: PrefillInput,
) -> Result<Prefilled, ApiError> {
    if !caller.has_role(Role::Guichet) {
        return Err(ApiError::WrongRole {
            participant: caller.participant.clone(),
            role: Role::Guichet,
        });
    }
    validate::identifier("form", &input.form, 64)?;
    validate::request_id(&input.request_id)?;
    let registry = state.federation.registry();
    Subject::parse(&input.subject, registry.allow_test_subjects())?;
    let form = registry
        .form(&input.form)
        .ok_or_else(|| ApiError::UnknownForm(input.form.clone()))?
        .clone();

    // The claims each type must provide, in first-use order of the types.
    let mut by_type: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for f in &form.fields {
        let claims = by_type.entry(f.attestation_type.as_str()).or_default();
        if !claims.contains(&f.claim) {
            claims.push(f.claim.clone());
        }
    }
    let fetches = by_type.iter().map(|(ty, claims)| {
        let fetch_input = FetchInput {
            subject: input.subject.clone(),
            attestation_type: (*ty).to_string(),
            purpose: form.purpose.clone(),
            claims: claims.clone(),
            request_id: if input.request_id.is_empty() {
                String::new()
            } else {
                format!("{}:{ty}", input.request_id)
            },
            mandate_id: input.mandate_id.clone(),
            deadline: input.deadline,
        };
        async move {
            (
                (*ty).to_string(),
                exchange::fetch(state, caller, fetch_input).await,
            )
        }
    });
    let results: BTreeMap<String, Result<Arc<Fetched>, ApiError>> =
        futures::future::join_all(fetches)
            .await
            .into_iter()
            .collect();
    // Nothing is answered that the journal could not record.
    if results
        .values()
        .any(|r| matches!(r, Err(ApiError::StoreUnavailable)))
    {
        return Err(ApiError::StoreUnavailable);
    }

    let mut filled = Vec::new();
    let mut missing = Vec::new();
    for field in &form.fields {
        match results.get(&field.attestation_type) {
            Some(Ok(fetched)) => match fetched.claims.get(&field.claim) {
                Some(value) => filled.push(FilledField {
                    name: field.name.clone(),
                    required: field.required,
                    value: value.clone(),
                    fetched: fetched.clone(),
                }),
                None => missing.push(MissingField {
                    name: field.name.clone(),
                    required: field.required,
                    reason: "SUBJECT_NOT_FOUND",
                    message: "the provider holds no value for this field".into(),
                }),
            },
            Some(Err(e)) => missing.push(MissingField {
                name: field.name.clone(),
                required: field.required,
                reason: e.reason_code(),
                message: e.to_string(),
            }),
            None => missing.push(MissingField {
                name: field.name.clone(),
                required: field.required,
                reason: "PROVIDER_UNAVAILABLE",
                message: "not fetched".into(),
            }),
        }
    }
    let attestations = results.into_values().filter_map(Result::ok).collect();
    Ok(Prefilled {
        form: form.id,
        filled,
        missing,
        attestations,
    })
}
