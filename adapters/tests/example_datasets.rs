//! The sample datasets under examples/data load against the schemas declared in
//! examples/registry.toml (written here by hand) and answer as expected.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use time::macros::date;
use unefois_adapters::{
    Adapter, AdapterError, AdapterRequest, ClaimSpec, ClaimType, ClaimValue, LegalBasis,
    StaticDataset, check_claims,
};

fn schema(claims: &[(&str, ClaimType)]) -> Vec<ClaimSpec> {
    claims
        .iter()
        .map(|(name, claim_type)| ClaimSpec {
            name: (*name).into(),
            claim_type: *claim_type,
        })
        .collect()
}

fn caf_schema() -> Vec<ClaimSpec> {
    schema(&[
        ("quotient_familial", ClaimType::Integer),
        ("mois_reference", ClaimType::String),
        ("nombre_enfants", ClaimType::Integer),
        ("allocataire_depuis", ClaimType::Date),
    ])
}

fn dgfip_schema() -> Vec<ClaimSpec> {
    schema(&[
        ("revenu_fiscal_reference", ClaimType::Integer),
        ("nombre_parts", ClaimType::Number),
        ("annee_revenus", ClaimType::Integer),
    ])
}

fn mesr_schema() -> Vec<ClaimSpec> {
    schema(&[
        ("est_etudiant", ClaimType::Boolean),
        ("etablissement", ClaimType::String),
        ("annee_universitaire", ClaimType::String),
        ("boursier", ClaimType::Boolean),
    ])
}

const CAF: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/data/caf.quotient_familial.json"
);
const DGFIP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/data/dgfip.revenu_fiscal_reference.json"
);
const MESR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/data/mesr.statut_etudiant.json"
);

fn request(attestation_type: &str, subject: &str, claims: &[&str]) -> AdapterRequest {
    AdapterRequest {
        subject: subject.into(),
        attestation_type: attestation_type.into(),
        claims: claims.iter().map(|c| (*c).to_string()).collect(),
        consumer: "mairie-lyon".into(),
        purpose: "tarification_cantine".into(),
        legal_basis: LegalBasis::Law {
            citation: "CRPA, art. L. 114-8".into(),
        },
        request_id: "req-1".into(),
        consumer_siret: None,
        purpose_label: String::new(),
        civil_status: None,
        deadline: tokio::time::Instant::now() + Duration::from_secs(5),
    }
}

#[test]
fn every_example_dataset_loads() {
    let caf = StaticDataset::load(Path::new(CAF), "caf.quotient_familial", &caf_schema()).unwrap();
    assert_eq!(caf.len(), 4);
    let dgfip = StaticDataset::load(
        Path::new(DGFIP),
        "dgfip.revenu_fiscal_reference",
        &dgfip_schema(),
    )
    .unwrap();
    assert_eq!(dgfip.len(), 4);
    let mesr =
        StaticDataset::load(Path::new(MESR), "mesr.statut_etudiant", &mesr_schema()).unwrap();
    assert_eq!(mesr.len(), 3);
}

#[tokio::test]
async fn alice_quotient_familial() {
    let schema = caf_schema();
    let caf = StaticDataset::load(Path::new(CAF), "caf.quotient_familial", &schema).unwrap();
    let req = request(
        "caf.quotient_familial",
        "test:alice",
        &["quotient_familial", "mois_reference"],
    );
    let claims = caf.fetch(&req).await.unwrap();
    assert_eq!(claims.len(), 2);
    assert_eq!(claims["quotient_familial"], ClaimValue::Integer(612));
    assert_eq!(
        claims["mois_reference"],
        ClaimValue::String("2026-10".into())
    );
    check_claims(&schema, &req.claims, &claims).unwrap();

    let req = request(
        "caf.quotient_familial",
        "test:carol",
        &["allocataire_depuis"],
    );
    let claims = caf.fetch(&req).await.unwrap();
    assert_eq!(
        claims["allocataire_depuis"],
        ClaimValue::Date(date!(2015 - 01 - 01))
    );

    // eve has no CAF record.
    let err = caf
        .fetch(&request(
            "caf.quotient_familial",
            "test:eve",
            &["quotient_familial"],
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, AdapterError::NotFound), "{err:?}");
}

#[tokio::test]
async fn typed_values_of_the_other_datasets() {
    let dgfip = StaticDataset::load(
        Path::new(DGFIP),
        "dgfip.revenu_fiscal_reference",
        &dgfip_schema(),
    )
    .unwrap();
    let claims = dgfip
        .fetch(&request(
            "dgfip.revenu_fiscal_reference",
            "test:bob",
            &["revenu_fiscal_reference", "nombre_parts"],
        ))
        .await
        .unwrap();
    assert_eq!(
        claims["revenu_fiscal_reference"],
        ClaimValue::Integer(41250)
    );
    assert_eq!(claims["nombre_parts"], ClaimValue::Number(1.5));
    assert!(!claims.contains_key("annee_revenus"));

    let mesr =
        StaticDataset::load(Path::new(MESR), "mesr.statut_etudiant", &mesr_schema()).unwrap();
    let claims = mesr
        .fetch(&request(
            "mesr.statut_etudiant",
            "test:eve",
            &["est_etudiant", "annee_universitaire", "boursier"],
        ))
        .await
        .unwrap();
    assert_eq!(claims["est_etudiant"], ClaimValue::Boolean(true));
    assert_eq!(
        claims["annee_universitaire"],
        ClaimValue::String("2026-2027".into())
    );
    assert_eq!(claims["boursier"], ClaimValue::Boolean(true));
    assert!(!claims.contains_key("etablissement"));
}

#[test]
fn a_dataset_against_the_wrong_schema_fails() {
    let err =
        StaticDataset::load(Path::new(DGFIP), "caf.quotient_familial", &caf_schema()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("dgfip.revenu_fiscal_reference.json"),
        "{message}"
    );
    assert!(
        message
            .contains("record 1 (test:...), claim \"revenu_fiscal_reference\": not in the schema"),
        "{message}"
    );
}
