//! The requests participants send most often in the tests, built from the sample registry's
//! names ([`crate::sample`]).

use unefois_proto::v1 as pb;

use crate::sample::{CANTINE, LYON, RFR};

/// A Fetch of `attestation_type` about `subject` for `purpose`, every other field left empty.
pub fn fetch(subject: &str, attestation_type: &str, purpose: &str) -> pb::FetchRequest {
    pb::FetchRequest {
        subject: subject.into(),
        attestation_type: attestation_type.into(),
        purpose: purpose.into(),
        ..Default::default()
    }
}

/// A Fetch of the reference tax income for school canteen pricing: what mairie-lyon obtains
/// under law, without a consent.
pub fn rfr(subject: &str) -> pb::FetchRequest {
    fetch(subject, RFR, CANTINE)
}

/// A Fetch of the reference tax income for the energy aid: what ccas-lyon obtains under law,
/// under a habilitation with a harvesting alarm (`max_subjects_per_minute`).
pub fn energy(subject: &str) -> pb::FetchRequest {
    fetch(subject, RFR, "aide_energie")
}

/// The consent of `subject` to mairie-lyon for `attestation_type` and `purpose`, recorded by
/// mairie-lyon's guichet for 30 days with the person's ID token for mairie-lyon.
pub fn consent(subject: &str, attestation_type: &str, purpose: &str) -> pb::GrantConsentRequest {
    pb::GrantConsentRequest {
        subject: subject.into(),
        consumer: LYON.into(),
        attestation_types: vec![attestation_type.into()],
        purpose: purpose.into(),
        valid_days: 30,
        id_token: crate::id_token(subject, LYON),
        ..Default::default()
    }
}
