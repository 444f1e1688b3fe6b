//! `unefois.v1.Consents`: Grant, Revoke, Get, List, converted between protobuf and the domain.

use std::sync::Arc;

use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use unefois_proto::v1 as pb;
use unefois_proto::v1::consents_server::Consents as ConsentsApi;

use crate::consent::{Consent, ConsentStatus};
use crate::consents::{self, GrantInput, ListInput, RevokeInput};
use crate::grpc::auth::caller;
use crate::grpc::registry::timestamp;
use crate::grpc::status::status;
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

/// The protobuf form of a consent, with its status now, as `reader` (a participant) sees it.
/// `pseudonym` is the person's pairwise pseudonym for the caller when the request named the
/// person, empty otherwise: never the audit pseudonym, which is the same for every participant
/// and would link them. For the same reason the mandate's id goes only to the structure that
/// recorded the consent: a mandate is one person's, and two consumers given the consents
/// recorded under it would share its id.
pub fn consent(c: &Consent, pseudonym: &str, reader: &str) -> pb::Consent {
    let status = match c.status(OffsetDateTime::now_utc()) {
        ConsentStatus::Active => pb::ConsentStatus::Active,
        ConsentStatus::Revoked => pb::ConsentStatus::Revoked,
        ConsentStatus::Expired => pb::ConsentStatus::Expired,
    };
    pb::Consent {
        id: c.id.clone(),
        subject_pseudonym: pseudonym.to_string(),
        consumer: c.consumer.clone(),
        guichet: c.participant.clone(),
        attestation_types: c.attestation_types.clone(),
        purpose: c.purpose.clone(),
        status: status as i32,
        granted_at: Some(timestamp(c.granted_at)),
        expires_at: Some(timestamp(c.expires_at)),
        revoked_at: c.revoked_at.map(timestamp),
        renewed_at: c.renewed_at.map(timestamp),
        mandate_id: c
            .mandate_id
            .clone()
            .filter(|_| c.participant == reader)
            .unwrap_or_default(),
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
        let granted = consents::grant(&self.state, &caller, input)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GrantConsentResponse {
            consent: Some(consent(
                &granted.consent,
                &granted.pairwise,
                &caller.participant,
            )),
            renewed: granted.renewed,
        }))
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeConsentRequest>,
    ) -> Result<Response<pb::RevokeConsentResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let input = RevokeInput {
            consent_id: r.consent_id,
            mandate_id: r.mandate_id,
            id_token: r.id_token,
        };
        let revoked = consents::revoke(&self.state, &caller, &input)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RevokeConsentResponse {
            consent: Some(consent(&revoked.consent, "", &caller.participant)),
            ended: u32::try_from(revoked.ended).unwrap_or(u32::MAX),
        }))
    }

    async fn get(
        &self,
        request: Request<pb::GetConsentRequest>,
    ) -> Result<Response<pb::GetConsentResponse>, Status> {
        let caller = caller(&request)?.clone();
        let found = consents::get(&self.state, &caller, &request.get_ref().consent_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetConsentResponse {
            consent: Some(consent(&found, "", &caller.participant)),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListConsentsRequest>,
    ) -> Result<Response<pb::ListConsentsResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let input = ListInput {
            subject: r.subject,
            consumer: r.consumer,
            mandate_id: r.mandate_id,
            id_token: r.id_token,
            page_size: r.page_size,
            page_token: r.page_token,
        };
        let (page, next, pseudonym) = consents::list(&self.state, &caller, &input)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListConsentsResponse {
            consents: page
                .iter()
                .map(|c| consent(c, &pseudonym, &caller.participant))
                .collect(),
            next_page_token: next,
        }))
    }
}
