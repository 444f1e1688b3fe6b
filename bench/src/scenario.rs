//! What one request of each scenario is: the RPC, its message, and what makes its answer a
//! success. Requests cycle over the sample `test:` subjects the datasets know (load on the same
//! few subjects is fine: the broker's cost does not depend on which person is asked about).

use std::collections::HashMap;

use anyhow::{Context, bail};
use tonic::transport::Channel;
use unefois_proto::v1 as pb;
use unefois_proto::v1::audit_client::AuditClient;
use unefois_proto::v1::consents_client::ConsentsClient;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_proto::v1::guichet_client::GuichetClient;
use unefois_proto::v1::provider_client::ProviderClient;

use crate::setup::{BROKER_CLIENT, GUICHET, IdTokens, PURPOSE};

/// The bench scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Exchange.Fetch of `caf.quotient_familial` under the citizen's consent (broker).
    FetchConsent,
    /// Exchange.Fetch of `dgfip.revenu_fiscal_reference` under the law (broker).
    FetchLaw,
    /// Guichet.Prefill of the form `bench_trois_types`: three types, three providers (broker).
    Prefill,
    /// Consents.Grant of `mesr.statut_etudiant` with identity evidence (broker).
    ConsentGrant,
    /// Audit.GetInclusionProof of a leaf of the current tree (broker).
    InclusionProof,
    /// Audit.GetCheckpoint of the latest tree (broker): on a cluster, the bound of what a
    /// standby has, read for every call that does not know a newer head.
    Checkpoint,
    /// Provider.Provide on the echo server: the floor cost of a gRPC service here.
    Echo,
    /// Provider.Provide on the provider itself, or on nginx in front of it.
    ProviderDirect,
}

impl Scenario {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::FetchConsent => "fetch-consent",
            Scenario::FetchLaw => "fetch-law",
            Scenario::Prefill => "prefill",
            Scenario::ConsentGrant => "consent-grant",
            Scenario::InclusionProof => "inclusion-proof",
            Scenario::Checkpoint => "checkpoint",
            Scenario::Echo => "echo",
            Scenario::ProviderDirect => "provider-direct",
        }
    }

    /// The client certificate it presents: the guichet to the broker, the broker's own client
    /// certificate to a provider.
    pub fn identity(self) -> &'static str {
        match self {
            Scenario::Echo | Scenario::ProviderDirect => BROKER_CLIENT,
            _ => GUICHET,
        }
    }

    /// The attestation type it asks for, by default.
    fn default_type(self) -> &'static str {
        match self {
            Scenario::FetchLaw => "dgfip.revenu_fiscal_reference",
            Scenario::ConsentGrant => "mesr.statut_etudiant",
            _ => "caf.quotient_familial",
        }
    }

    /// The subjects it cycles over, by default. test:bob is kept for the pre-fill (the only
    /// person in all three datasets, and the one the provider may slow down).
    fn default_subjects(self) -> &'static [&'static str] {
        match self {
            Scenario::FetchLaw => &["test:alice", "test:carol", "test:eve"],
            Scenario::Prefill => &["test:bob"],
            Scenario::ConsentGrant => &["test:eve", "test:frank"],
            _ => &["test:alice", "test:carol", "test:david"],
        }
    }
}

/// Overrides of a scenario's defaults.
#[derive(Clone, Debug, Default)]
pub struct WorkloadOptions {
    /// The attestation type (fetch, provider-direct, consent-grant).
    pub attestation_type: Option<String>,
    /// The subjects to cycle over.
    pub subjects: Vec<String>,
    /// The claims asked for (provider-direct, echo; empty: those the broker asks for fetch).
    pub claims: Vec<String>,
    /// How to mint ID tokens (pre-fill, consent-grant).
    pub id_tokens: Option<IdTokens>,
}

/// A prepared scenario: everything its requests need, computed once.
#[derive(Clone, Debug)]
pub struct Workload {
    scenario: Scenario,
    attestation_type: String,
    subjects: Vec<String>,
    claims: Vec<String>,
    /// ID token per subject.
    tokens: HashMap<String, String>,
    /// The audit tree size the inclusion proofs are asked against.
    tree_size: u64,
}

impl Workload {
    /// Prepares `scenario`: ID tokens for its subjects, the current tree size for inclusion
    /// proofs (through `channel`).
    pub async fn prepare(
        scenario: Scenario,
        options: &WorkloadOptions,
        channel: &Channel,
    ) -> anyhow::Result<Workload> {
        let attestation_type = options
            .attestation_type
            .clone()
            .unwrap_or_else(|| scenario.default_type().to_string());
        let subjects: Vec<String> = if options.subjects.is_empty() {
            scenario
                .default_subjects()
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            options.subjects.clone()
        };
        let claims = if options.claims.is_empty() && attestation_type == "caf.quotient_familial" {
            // What the broker asks the provider for mairie-lyon's habilitation.
            vec!["quotient_familial".into(), "mois_reference".into()]
        } else {
            options.claims.clone()
        };
        let mut tokens = HashMap::new();
        if matches!(scenario, Scenario::Prefill | Scenario::ConsentGrant) {
            let Some(minter) = &options.id_tokens else {
                bail!("{} needs ID tokens (--broker-bin)", scenario.name());
            };
            for subject in &subjects {
                tokens.insert(subject.clone(), minter.mint(subject, GUICHET)?);
            }
        }
        let mut tree_size = 0;
        if scenario == Scenario::InclusionProof {
            let checkpoint = AuditClient::new(channel.clone())
                .get_checkpoint(pb::GetCheckpointRequest::default())
                .await
                .context("Audit.GetCheckpoint")?
                .into_inner()
                .checkpoint;
            tree_size = tree_size_of(&checkpoint)?;
            if tree_size == 0 {
                bail!("the audit log is empty: run another scenario first");
            }
        }
        Ok(Workload {
            scenario,
            attestation_type,
            subjects,
            claims,
            tokens,
            tree_size,
        })
    }

    /// The subject of request number `seq`.
    fn subject(&self, seq: u64) -> &str {
        let i = (seq % self.subjects.len().max(1) as u64) as usize;
        self.subjects.get(i).map(String::as_str).unwrap_or("")
    }

    /// The ID token of `subject` (empty when none was minted).
    fn token(&self, subject: &str) -> String {
        self.tokens.get(subject).cloned().unwrap_or_default()
    }

    /// Sends request number `seq` on `channel`; the error is a short label for the report
    /// (the gRPC code, or what was wrong with the answer).
    pub async fn call(&self, channel: &Channel, seq: u64) -> Result<(), String> {
        let subject = self.subject(seq).to_string();
        match self.scenario {
            Scenario::FetchConsent | Scenario::FetchLaw => {
                let answer = ExchangeClient::new(channel.clone())
                    .fetch(pb::FetchRequest {
                        subject,
                        attestation_type: self.attestation_type.clone(),
                        purpose: PURPOSE.into(),
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| label(&s))?
                    .into_inner();
                if answer.envelope.is_none() || answer.receipt.is_none() {
                    return Err("answer without envelope or receipt".into());
                }
            }
            Scenario::Prefill => {
                let answer = GuichetClient::new(channel.clone())
                    .prefill(pb::PrefillRequest {
                        id_token: self.token(&subject),
                        subject,
                        form: "bench_trois_types".into(),
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| label(&s))?
                    .into_inner();
                if let Some(missing) = answer.unavailable.first() {
                    let reason = pb::ErrorReason::try_from(missing.reason)
                        .map(|r| r.as_str_name())
                        .unwrap_or("?");
                    return Err(format!("field not filled: {reason}"));
                }
            }
            Scenario::ConsentGrant => {
                ConsentsClient::new(channel.clone())
                    .grant(pb::GrantConsentRequest {
                        id_token: self.token(&subject),
                        subject,
                        consumer: GUICHET.into(),
                        attestation_types: vec![self.attestation_type.clone()],
                        purpose: "tarif_etudiant".into(),
                        valid_days: 1,
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| label(&s))?;
            }
            Scenario::InclusionProof => {
                // Spread the leaves over the tree (Fibonacci hashing of the sequence number).
                let leaf_index = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) % self.tree_size;
                AuditClient::new(channel.clone())
                    .get_inclusion_proof(pb::GetInclusionProofRequest {
                        leaf_index,
                        tree_size: self.tree_size,
                    })
                    .await
                    .map_err(|s| label(&s))?;
            }
            Scenario::Checkpoint => {
                AuditClient::new(channel.clone())
                    .get_checkpoint(pb::GetCheckpointRequest::default())
                    .await
                    .map_err(|s| label(&s))?;
            }
            Scenario::Echo | Scenario::ProviderDirect => {
                ProviderClient::new(channel.clone())
                    .provide(self.provide_request(subject, seq))
                    .await
                    .map_err(|s| label(&s))?;
            }
        }
        Ok(())
    }

    /// A `ProvideRequest` as the broker's `grpc` adapter sends it for a consent-based fetch.
    fn provide_request(&self, subject: String, seq: u64) -> pb::ProvideRequest {
        pb::ProvideRequest {
            subject,
            attestation_type: self.attestation_type.clone(),
            claims: self.claims.clone(),
            consumer: GUICHET.into(),
            purpose: PURPOSE.into(),
            legal_basis: Some(pb::LegalBasis {
                kind: pb::LegalBasisKind::Consent as i32,
                law_citation: String::new(),
                consent_id: "019a0000-0000-7000-8000-000000000000".into(),
            }),
            request_id: format!("019a0000-0000-7000-8000-{seq:012x}"),
            ..Default::default()
        }
    }
}

/// The report label of a failed call: its gRPC code, and whether the transport failed.
fn label(status: &tonic::Status) -> String {
    let transport = std::error::Error::source(status).is_some();
    if transport {
        format!("{:?} (transport)", status.code())
    } else {
        format!("{:?}", status.code())
    }
}

/// The tree size of a C2SP checkpoint (its second line).
fn tree_size_of(checkpoint: &str) -> anyhow::Result<u64> {
    let Some(line) = checkpoint.lines().nth(1) else {
        bail!("the checkpoint has no tree size line");
    };
    line.trim()
        .parse()
        .with_context(|| format!("not a tree size: {line:?}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn checkpoints_give_their_tree_size() {
        let note = "unefois.test/log\n42\nq1XmzFz6Yw==\n\n— unefois abc\n";
        assert_eq!(tree_size_of(note).unwrap(), 42);
        assert!(tree_size_of("origin only").is_err());
        assert!(tree_size_of("o\nx\n").is_err());
    }

    #[test]
    fn providers_get_the_claims_the_broker_asks_for() {
        assert_eq!(Scenario::Echo.identity(), BROKER_CLIENT);
        assert_eq!(Scenario::FetchConsent.identity(), GUICHET);
        assert!(
            !Scenario::FetchConsent
                .default_subjects()
                .contains(&"test:bob")
        );
    }
}
