//! `unefois.v1.Consents`: Grant, Revoke, Get, List, converted between protobuf and the domain.

use std::sync::Arc;

use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use unefois_proto::v1 as pb;
use unefois_proto::v1::consents_server::Consents as ConsentsApi;

use crate::consent::{self, Consent, ConsentStatus, GrantInput};
use crate::grpc::auth::caller;
use crate::grpc::registry::timestamp;
use crate::state::State;

/// The Consents service.
pub struct ConsentsService {
    state: Arc<State>,
}

impl ConsentsService {
    /// Serves consents from the broker's state.
    pub fn new(state: Arc<State>) -> ConsentsService {
        ConsentsService { state }
    }
}

/// The protobuf form of a consent, with its status now, as `viewer` may see it: the audit
/// pseudonym links a person across consumers, so only the guichet that recorded the consent
/// (which knows the person anyway) receives it.
pub fn consent_for(c: &Consent, viewer: &str) -> pb::Consent {
    let mut out = consent(c);
    if c.participant != viewer {
        out.subject_pseudonym.clear();
    }
    out
}

/// The protobuf form of a consent, with its status now.
fn consent(c: &Consent) -> pb::Consent {
    let status = match c.status(OffsetDateTime::now_utc()) {
        ConsentStatus::Active => pb::ConsentStatus::Active,
        ConsentStatus::Revoked => pb::ConsentStatus::Revoked,
        ConsentStatus::Expired => pb::ConsentStatus::Expired,
    };
    pb::Consent {
        id: c.id.clone(),
        subject_pseudonym: c.subject.clone(),
        consumer: c.consumer.clone(),
        guichet: c.participant.clone(),
        attestation_types: c.attestation_types.clone(),
        purpose: c.purpose.clone(),
        status: status as i32,
        granted_at: Some(timestamp(c.granted_at)),
        expires_at: Some(timestamp(c.expires_at)),
        revoked_at: c.revoked_at.map(timestamp),
        mandate_id: c.mandate_id.clone().unwrap_or_default(),
        agent: c.agent.clone().unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl ConsentsApi for ConsentsService {
    async fn grant(
        &self,
        request: Request<pb::GrantConsentRequest>,
    ) -> Result<Response<pb::GrantConsentResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let input = GrantInput {
            subject: r.subject,
            consumer: r.consumer,
            attestation_types: r.attestation_types,
            purpose: r.purpose,
            valid_days: r.valid_days,
            mandate_id: r.mandate_id,
            request_id: r.request_id,
            id_token: r.id_token,
        };
        let granted = consent::grant(&self.state, &caller, input).await?;
        Ok(Response::new(pb::GrantConsentResponse {
            consent: Some(consent(&granted)),
        }))
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeConsentRequest>,
    ) -> Result<Response<pb::RevokeConsentResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let revoked = consent::revoke(&self.state, &caller, &r.consent_id, &r.mandate_id).await?;
        Ok(Response::new(pb::RevokeConsentResponse {
            consent: Some(consent(&revoked)),
        }))
    }

    async fn get(
        &self,
        request: Request<pb::GetConsentRequest>,
    ) -> Result<Response<pb::GetConsentResponse>, Status> {
        let caller = caller(&request)?;
        let found = consent::get(&self.state, caller, &request.get_ref().consent_id)?;
        Ok(Response::new(pb::GetConsentResponse {
            consent: Some(consent_for(&found, &caller.participant)),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListConsentsRequest>,
    ) -> Result<Response<pb::ListConsentsResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let (page, next) = consent::list(
            &self.state,
            caller,
            &r.subject,
            &r.consumer,
            &r.mandate_id,
            r.page_size,
            &r.page_token,
        )?;
        Ok(Response::new(pb::ListConsentsResponse {
            consents: page
                .iter()
                .map(|c| consent_for(c, &caller.participant))
                .collect(),
            next_page_token: next,
        }))
    }
}
