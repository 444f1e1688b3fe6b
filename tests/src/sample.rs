//! Names of the sample registry (examples/registry.toml) that the tests use again and again:
//! attestation types, purposes, participants, and the adapter line tests replace to put a
//! provider of their own behind a type.

/// The DGFiP's reference tax income.
pub const RFR: &str = "dgfip.revenu_fiscal_reference";

/// The CAF's family quotient.
pub const QF: &str = "caf.quotient_familial";

/// The MESR's student status.
pub const ETU: &str = "mesr.statut_etudiant";

/// The purpose of school canteen pricing.
pub const CANTINE: &str = "tarification_cantine";

/// The purpose of energy aid.
pub const ENERGIE: &str = "aide_energie";

/// The city of Lyon: a consumer and a guichet.
pub const LYON: &str = "mairie-lyon";

/// The mediation structure whose agent is [`AGENT`].
pub const STRUCTURE: &str = "france-services-lyon";

/// The agent of [`STRUCTURE`]: a test PKI of the sample registry holds its certificate.
pub const AGENT: &str = "france-services-lyon/a.martin";

/// The adapter line of [`RFR`] in the sample registry: its static dataset.
pub const DGFIP_STATIC: &str =
    "adapter = { kind = \"static\", dataset = \"data/dgfip.revenu_fiscal_reference.json\" }";
