//! `unefois.v1.Registry`: each participant reads the federation as it concerns it.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use unefois_proto::v1 as pb;
use unefois_proto::v1::registry_server::Registry as RegistryApi;

use crate::caller::Caller;
use crate::grpc::auth::caller;
use crate::grpc::status::status;
use crate::registry::{self, ClaimType, Habilitation, LegalBasis, Registry, Role};
use crate::resilience::BreakerState;
use crate::state::State;

/// The Registry service.
pub struct RegistryService {
    state: Arc<State>,
}

impl RegistryService {
    /// Serves the federation's current registry and the broker's verifier keys.
    pub fn new(state: Arc<State>) -> RegistryService {
        RegistryService { state }
    }
}

/// Which habilitations a caller may read: its own as a consumer, those on the types it
/// provides, or all of them for auditors and operators.
fn visible_to(caller: &Caller, registry: &Registry, h: &Habilitation) -> bool {
    if caller.has_role(Role::Auditor) || caller.has_role(Role::Operator) {
        return true;
    }
    h.consumer == caller.participant
        || registry
            .attestation_type(&h.attestation_type)
            .is_some_and(|t| t.provider == caller.participant)
}

fn role(r: Role) -> pb::Role {
    match r {
        Role::Provider => pb::Role::Provider,
        Role::Consumer => pb::Role::Consumer,
        Role::Guichet => pb::Role::Guichet,
        Role::Mediator => pb::Role::Mediator,
        Role::Auditor => pb::Role::Auditor,
        Role::Operator => pb::Role::Operator,
    }
}

fn roles(p: &registry::Participant) -> Vec<i32> {
    p.roles.iter().map(|r| role(*r) as i32).collect()
}

fn claim_type(t: ClaimType) -> pb::ClaimType {
    match t {
        ClaimType::String => pb::ClaimType::String,
        ClaimType::Integer => pb::ClaimType::Integer,
        ClaimType::Number => pb::ClaimType::Number,
        ClaimType::Boolean => pb::ClaimType::Boolean,
        ClaimType::Date => pb::ClaimType::Date,
    }
}

/// The protobuf form of a legal basis.
pub fn legal_basis(b: &LegalBasis) -> pb::LegalBasis {
    match b {
        LegalBasis::Consent => pb::LegalBasis {
            kind: pb::LegalBasisKind::Consent as i32,
            ..Default::default()
        },
        LegalBasis::Law(citation) => pb::LegalBasis {
            kind: pb::LegalBasisKind::Law as i32,
            law_citation: citation.clone(),
            ..Default::default()
        },
    }
}

/// The protobuf form of an instant.
pub fn timestamp(t: time::OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    }
}

#[tonic::async_trait]
impl RegistryApi for RegistryService {
    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let caller = caller(&request)?;
        let registry = self.state.federation.registry();
        Ok(Response::new(pb::WhoAmIResponse {
            participant: caller.participant.clone(),
            name: caller.name.clone(),
            roles: caller.roles.iter().map(|r| role(*r) as i32).collect(),
            agent: caller.agent.clone().unwrap_or_default(),
            trust_domain: registry.trust_domain().to_string(),
            registry_sha256: registry.sha256_hex(),
        }))
    }

    async fn list_participants(
        &self,
        request: Request<pb::ListParticipantsRequest>,
    ) -> Result<Response<pb::ListParticipantsResponse>, Status> {
        caller(&request)?;
        let registry = self.state.federation.registry();
        Ok(Response::new(pb::ListParticipantsResponse {
            participants: registry
                .participants()
                .map(|p| pb::Participant {
                    id: p.id.clone(),
                    name: p.name.clone(),
                    roles: roles(p),
                })
                .collect(),
            registry_sha256: registry.sha256_hex(),
        }))
    }

    async fn list_purposes(
        &self,
        request: Request<pb::ListPurposesRequest>,
    ) -> Result<Response<pb::ListPurposesResponse>, Status> {
        caller(&request)?;
        let registry = self.state.federation.registry();
        Ok(Response::new(pb::ListPurposesResponse {
            purposes: registry
                .purposes()
                .map(|p| pb::Purpose {
                    code: p.code.clone(),
                    label: p.label.clone(),
                    legal_reference: p.legal_reference.clone(),
                })
                .collect(),
            registry_sha256: registry.sha256_hex(),
        }))
    }

    async fn list_attestation_types(
        &self,
        request: Request<pb::ListAttestationTypesRequest>,
    ) -> Result<Response<pb::ListAttestationTypesResponse>, Status> {
        caller(&request)?;
        let registry = self.state.federation.registry();
        Ok(Response::new(pb::ListAttestationTypesResponse {
            attestation_types: registry
                .attestation_types()
                .map(|t| pb::AttestationType {
                    id: t.id.clone(),
                    version: t.version,
                    provider: t.provider.clone(),
                    description: t.description.clone(),
                    claims: t
                        .claims
                        .iter()
                        .map(|c| pb::ClaimSchema {
                            name: c.name.clone(),
                            r#type: claim_type(c.claim_type) as i32,
                            description: c.description.clone(),
                        })
                        .collect(),
                    max_age_seconds: u64::from(t.max_age_days) * 86_400,
                    adapter: t.adapter.kind().to_string(),
                })
                .collect(),
            registry_sha256: registry.sha256_hex(),
        }))
    }

    async fn list_forms(
        &self,
        request: Request<pb::ListFormsRequest>,
    ) -> Result<Response<pb::ListFormsResponse>, Status> {
        caller(&request)?;
        let registry = self.state.federation.registry();
        Ok(Response::new(pb::ListFormsResponse {
            forms: registry
                .forms()
                .map(|f| pb::Form {
                    id: f.id.clone(),
                    label: f.label.clone(),
                    purpose: f.purpose.clone(),
                    fields: f
                        .fields
                        .iter()
                        .map(|x| pb::FormField {
                            name: x.name.clone(),
                            attestation_type: x.attestation_type.clone(),
                            claim: x.claim.clone(),
                            required: x.required,
                        })
                        .collect(),
                })
                .collect(),
            registry_sha256: registry.sha256_hex(),
        }))
    }

    async fn list_habilitations(
        &self,
        request: Request<pb::ListHabilitationsRequest>,
    ) -> Result<Response<pb::ListHabilitationsResponse>, Status> {
        let caller = caller(&request)?;
        let registry = self.state.federation.registry();
        Ok(Response::new(pb::ListHabilitationsResponse {
            habilitations: registry
                .habilitations()
                .iter()
                .filter(|h| visible_to(caller, &registry, h))
                .map(|h| pb::Habilitation {
                    id: h.id.clone(),
                    consumer: h.consumer.clone(),
                    attestation_type: h.attestation_type.clone(),
                    purposes: h.purposes.iter().cloned().collect(),
                    claims: h.claims.iter().cloned().collect(),
                    legal_basis: Some(legal_basis(&h.legal_basis)),
                    expires_at: Some(timestamp(h.expires_at)),
                })
                .collect(),
            registry_sha256: registry.sha256_hex(),
        }))
    }

    async fn get_providers_status(
        &self,
        request: Request<pb::GetProvidersStatusRequest>,
    ) -> Result<Response<pb::GetProvidersStatusResponse>, Status> {
        let caller = caller(&request)?;
        if !caller.has_role(Role::Operator) {
            return Err(status(crate::error::ApiError::WrongRole {
                participant: caller.participant.clone(),
                role: Role::Operator,
            }));
        }
        let loaded = self.state.federation.loaded();
        let providers = loaded
            .registry
            .attestation_types()
            .filter_map(|t| {
                let status = loaded.adapters.get(&t.id)?.status();
                let breaker = match status.state {
                    BreakerState::Closed => "closed",
                    BreakerState::Open { .. } => "open",
                    BreakerState::HalfOpen => "half_open",
                };
                Some(pb::ProviderStatus {
                    attestation_type: t.id.clone(),
                    provider: t.provider.clone(),
                    adapter: status.adapter.to_string(),
                    ready: status.state == BreakerState::Closed && status.cool_down.is_none(),
                    breaker: breaker.to_string(),
                    consecutive_failures: status.consecutive_failures,
                    in_flight: u32::try_from(status.in_flight).unwrap_or(u32::MAX),
                    max_concurrency: u32::try_from(status.max_concurrency).unwrap_or(u32::MAX),
                    cool_down_ms: status.cool_down.map_or(0, |d| {
                        u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
                    }),
                    rate_limit: status.rate_limit.map(|l| l.to_string()).unwrap_or_default(),
                })
            })
            .collect();
        Ok(Response::new(pb::GetProvidersStatusResponse { providers }))
    }

    async fn get_verifier_keys(
        &self,
        request: Request<pb::GetVerifierKeysRequest>,
    ) -> Result<Response<pb::GetVerifierKeysResponse>, Status> {
        caller(&request)?;
        let registry = self.state.federation.registry();
        Ok(Response::new(pb::GetVerifierKeysResponse {
            attestation_key: self.state.signer.vkey().to_string(),
            log_key: self.state.store.log_vkey().to_string(),
            provider_keys: registry
                .participants()
                .filter_map(|p| Some((p.id.clone(), p.origin.as_ref()?.jwks_text.clone())))
                .collect(),
        }))
    }
}
