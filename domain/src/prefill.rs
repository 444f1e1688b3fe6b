//! The rules of a pre-fill, without I/O: which attestation types a form asks for and which
//! claims of each ([`plan`]), and how each field is filled from what its type gave, or says why
//! it is empty ([`fields`]). The broker's `prefill` fetches, previews and confirms around them.

use std::collections::BTreeMap;

use time::OffsetDateTime;
use unefois_adapters::{ClaimValue, Claims};

use crate::error::ApiError;
use crate::registry::Form;

/// Where a field's value comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    /// The attestation type.
    pub attestation_type: String,
    /// The provider that answered.
    pub provider: String,
    /// The attestation carrying the value (none in a preview).
    pub attestation_id: Option<String>,
    /// When the value was retrieved (the attestation's issue time).
    pub retrieved_at: OffsetDateTime,
}

/// A field filled from an attestation (or a preview).
#[derive(Debug, PartialEq)]
pub struct FilledField {
    /// Field name.
    pub name: String,
    /// Whether the form requires it.
    pub required: bool,
    /// The value.
    pub value: ClaimValue,
    /// Where it comes from.
    pub source: Source,
}

/// A field that could not be filled, and why (the guichet asks the person for it).
#[derive(Debug, PartialEq, Eq)]
pub struct MissingField {
    /// Field name.
    pub name: String,
    /// Why, as a closed `ErrorReason` name.
    pub reason: &'static str,
    /// Why, for people.
    pub message: String,
}

/// What one attestation type gave: a source and the claims released (or to be released).
#[derive(Clone, Debug)]
pub struct Obtained {
    /// Where the values come from.
    pub source: Source,
    /// The claims released.
    pub claims: Claims,
}

/// Why a type of a form gave no value, kept with a preview so that its confirmation tells the
/// same reason the preview did: a closed `ErrorReason` name and words for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unfilled {
    /// The `ErrorReason` name.
    pub reason: &'static str,
    /// Why, for people.
    pub message: String,
}

impl From<&ApiError> for Unfilled {
    fn from(e: &ApiError) -> Unfilled {
        Unfilled {
            reason: e.reason_code(),
            message: e.to_string(),
        }
    }
}

impl Unfilled {
    /// A value of the preview the person did not confirm.
    pub fn not_confirmed(rejected: bool) -> Unfilled {
        Unfilled {
            reason: "PREVIEW_NOT_CONFIRMED",
            message: if rejected {
                "the person rejected the preview: nothing was released".into()
            } else {
                "the person did not confirm this value: nothing was released".into()
            },
        }
    }
}

/// The attestation types a form asks for, each once (sorted), with the claims its fields take
/// from it (in form order, each once): one fetch per type fills every field of that type.
pub fn plan(form: &Form) -> BTreeMap<&str, Vec<String>> {
    let mut by_type: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for f in &form.fields {
        let claims = by_type.entry(f.attestation_type.as_str()).or_default();
        if !claims.contains(&f.claim) {
            claims.push(f.claim.clone());
        }
    }
    by_type
}

/// Each form field, in form order: filled from what its type gave, or missing with the reason
/// (the type's refusal or failure, a claim the provider holds no value for, or a type the
/// person did not confirm).
pub fn fields(
    form: &Form,
    obtained: &BTreeMap<String, Result<Obtained, Unfilled>>,
) -> (Vec<FilledField>, Vec<MissingField>) {
    let mut filled = Vec::new();
    let mut missing = Vec::new();
    for field in &form.fields {
        let absent = |reason: &'static str, message: String| MissingField {
            name: field.name.clone(),
            reason,
            message,
        };
        match obtained.get(&field.attestation_type) {
            Some(Ok(got)) => match got.claims.get(&field.claim) {
                Some(value) => filled.push(FilledField {
                    name: field.name.clone(),
                    required: field.required,
                    value: value.clone(),
                    source: got.source.clone(),
                }),
                None => missing.push(absent(
                    "SUBJECT_NOT_FOUND",
                    "the provider holds no value for this field".into(),
                )),
            },
            Some(Err(why)) => missing.push(absent(why.reason, why.message.clone())),
            // Every type of the form is asked for, so each has a result; a form changed by a
            // registry reload between a preview and its confirmation may add one.
            None => missing.push(absent(
                "PREVIEW_NOT_CONFIRMED",
                "this field was not in the preview the person confirmed".into(),
            )),
        }
    }
    (filled, missing)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Each rule as a table: a form, what each type gave, and the fields as the guichet sees
    //! them (`check(case, expect)`).

    use time::macros::datetime;

    use super::*;
    use crate::registry::FormField;

    /// A school canteen form: the family quotient and the household size from the CAF, the
    /// reference tax income from the DGFiP.
    fn canteen() -> Form {
        let field = |name: &str, ty: &str, claim: &str, required: bool| FormField {
            name: name.into(),
            attestation_type: ty.into(),
            claim: claim.into(),
            required,
        };
        Form {
            id: "inscription_cantine".into(),
            label: "Inscription à la cantine".into(),
            purpose: "tarif_cantine".into(),
            fields: vec![
                field(
                    "quotient",
                    "caf.quotient_familial",
                    "quotient_familial",
                    true,
                ),
                field("foyer", "caf.quotient_familial", "nombre_personnes", false),
                field(
                    "rfr",
                    "dgfip.revenu_fiscal",
                    "revenu_fiscal_reference",
                    true,
                ),
                // The same claim again, under another name: fetched once.
                field(
                    "quotient_bis",
                    "caf.quotient_familial",
                    "quotient_familial",
                    false,
                ),
            ],
        }
    }

    fn got(ty: &str, claims: &[(&str, i64)]) -> Result<Obtained, Unfilled> {
        Ok(Obtained {
            source: Source {
                attestation_type: ty.into(),
                provider: "caf".into(),
                attestation_id: Some(format!("att-{ty}")),
                retrieved_at: datetime!(2026-12-03 10:00 UTC),
            },
            claims: claims
                .iter()
                .map(|(k, v)| ((*k).to_string(), ClaimValue::Integer(*v)))
                .collect(),
        })
    }

    /// Each field as one line: `name = value (type)` or `name missing REASON: message`.
    fn check(obtained: Vec<(&str, Result<Obtained, Unfilled>)>, expect: &[&str]) {
        let obtained = obtained
            .into_iter()
            .map(|(ty, r)| (ty.to_string(), r))
            .collect();
        let (filled, missing) = fields(&canteen(), &obtained);
        let mut lines: Vec<String> = filled
            .iter()
            .map(|f| {
                format!(
                    "{}{} = {:?} ({})",
                    f.name,
                    if f.required { "*" } else { "" },
                    f.value,
                    f.source.attestation_type
                )
            })
            .collect();
        lines.extend(
            missing
                .iter()
                .map(|m| format!("{} missing {}: {}", m.name, m.reason, m.message)),
        );
        assert_eq!(lines, expect);
    }

    #[test]
    fn a_form_asks_each_type_once_for_the_claims_of_its_fields() {
        let form = canteen();
        let plan = plan(&form);
        let plan: Vec<(&str, Vec<&str>)> = plan
            .iter()
            .map(|(ty, claims)| (*ty, claims.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            plan,
            [
                (
                    "caf.quotient_familial",
                    vec!["quotient_familial", "nombre_personnes"]
                ),
                ("dgfip.revenu_fiscal", vec!["revenu_fiscal_reference"]),
            ]
        );
    }

    #[test]
    fn every_type_answered_fills_every_field() {
        check(
            vec![
                (
                    "caf.quotient_familial",
                    got(
                        "caf.quotient_familial",
                        &[("quotient_familial", 820), ("nombre_personnes", 4)],
                    ),
                ),
                (
                    "dgfip.revenu_fiscal",
                    got("dgfip.revenu_fiscal", &[("revenu_fiscal_reference", 31000)]),
                ),
            ],
            &[
                "quotient* = Integer(820) (caf.quotient_familial)",
                "foyer = Integer(4) (caf.quotient_familial)",
                "rfr* = Integer(31000) (dgfip.revenu_fiscal)",
                "quotient_bis = Integer(820) (caf.quotient_familial)",
            ],
        );
    }

    #[test]
    fn a_refused_type_leaves_its_fields_with_the_refusal_and_the_others_filled() {
        let refusal = ApiError::ProviderUnavailable {
            provider: "dgfip".into(),
            reason: "timed out".into(),
            retry_after: None,
        };
        let why = Unfilled::from(&refusal);
        check(
            vec![
                (
                    "caf.quotient_familial",
                    got(
                        "caf.quotient_familial",
                        &[("quotient_familial", 820), ("nombre_personnes", 4)],
                    ),
                ),
                ("dgfip.revenu_fiscal", Err(why.clone())),
            ],
            &[
                "quotient* = Integer(820) (caf.quotient_familial)",
                "foyer = Integer(4) (caf.quotient_familial)",
                "quotient_bis = Integer(820) (caf.quotient_familial)",
                &format!("rfr missing PROVIDER_UNAVAILABLE: {}", why.message),
            ],
        );
    }

    #[test]
    fn a_claim_the_provider_lacks_is_missing_as_not_found() {
        check(
            vec![
                (
                    "caf.quotient_familial",
                    got("caf.quotient_familial", &[("quotient_familial", 820)]),
                ),
                (
                    "dgfip.revenu_fiscal",
                    got("dgfip.revenu_fiscal", &[("revenu_fiscal_reference", 31000)]),
                ),
            ],
            &[
                "quotient* = Integer(820) (caf.quotient_familial)",
                "rfr* = Integer(31000) (dgfip.revenu_fiscal)",
                "quotient_bis = Integer(820) (caf.quotient_familial)",
                "foyer missing SUBJECT_NOT_FOUND: the provider holds no value for this field",
            ],
        );
    }

    #[test]
    fn what_the_person_did_not_confirm_or_was_not_previewed_is_missing_as_not_confirmed() {
        check(
            vec![("caf.quotient_familial", Err(Unfilled::not_confirmed(true)))],
            &[
                "quotient missing PREVIEW_NOT_CONFIRMED: the person rejected the preview: \
                 nothing was released",
                "foyer missing PREVIEW_NOT_CONFIRMED: the person rejected the preview: nothing \
                 was released",
                "rfr missing PREVIEW_NOT_CONFIRMED: this field was not in the preview the person \
                 confirmed",
                "quotient_bis missing PREVIEW_NOT_CONFIRMED: the person rejected the preview: \
                 nothing was released",
            ],
        );
    }
}
