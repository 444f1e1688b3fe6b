//! `unefois.v1.Mandates`: Create, Revoke, List, converted between protobuf and the domain.

use std::sync::Arc;

use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use unefois_proto::v1 as pb;
use unefois_proto::v1::mandates_server::Mandates as MandatesApi;

use crate::grpc::auth::caller;
use crate::grpc::detached;
use crate::grpc::registry::timestamp;
use crate::grpc::status::status;
use crate::mandate::{Mandate, MandateStatus};
use crate::mandates::{self, CreateInput, ListInput};
use crate::state::State;

/// The Mandates service.
pub struct MandatesService {
    state: Arc<State>,
}

impl MandatesService {
    /// Serves mandates from the broker's state.
    pub fn new(state: Arc<State>) -> MandatesService {
        MandatesService { state }
    }
}

/// The protobuf form of a mandate, with its status now. `pseudonym` is the person's pairwise
/// pseudonym for the caller when the request named the person, empty otherwise: never the
/// audit pseudonym.
pub fn mandate(m: &Mandate, pseudonym: &str) -> pb::Mandate {
    let status = match m.status(OffsetDateTime::now_utc()) {
        MandateStatus::Active => pb::MandateStatus::Active,
        MandateStatus::Revoked => pb::MandateStatus::Revoked,
        MandateStatus::Expired => pb::MandateStatus::Expired,
    };
    pb::Mandate {
        id: m.id.clone(),
        subject_pseudonym: pseudonym.to_string(),
        structure: m.structure.clone(),
        agent: m.agent.clone(),
        purposes: m.purposes.clone(),
        duration_days: m.duration_days,
        document_sha256: hex::decode(&m.document_sha256).unwrap_or_default(),
        status: status as i32,
        created_at: Some(timestamp(m.created_at)),
        expires_at: Some(timestamp(m.expires_at)),
        revoked_at: m.revoked_at.map(timestamp),
    }
}

#[tonic::async_trait]
impl MandatesApi for MandatesService {
    async fn create(
        &self,
        request: Request<pb::CreateMandateRequest>,
    ) -> Result<Response<pb::CreateMandateResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let input = CreateInput {
            subject: r.subject,
            purposes: r.purposes,
            duration_days: r.duration_days,
            signed_document: r.signed_document,
            document_sha256: r.document_sha256,
            id_token: r.id_token,
            request_id: r.request_id,
        };
        let state = self.state.clone();
        let created = detached("mandate creation", async move {
            mandates::create(&state, &caller, input).await
        })
        .await?;
        Ok(Response::new(pb::CreateMandateResponse {
            mandate: Some(mandate(&created.0, &created.1)),
        }))
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeMandateRequest>,
    ) -> Result<Response<pb::RevokeMandateResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let state = self.state.clone();
        let revoked = detached("mandate revocation", async move {
            mandates::revoke(&state, &caller, &r.mandate_id, &r.id_token).await
        })
        .await?;
        Ok(Response::new(pb::RevokeMandateResponse {
            mandate: Some(mandate(&revoked, "")),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListMandatesRequest>,
    ) -> Result<Response<pb::ListMandatesResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let input = ListInput {
            subject: r.subject.clone(),
            id_token: r.id_token.clone(),
            structure: r.structure.clone(),
            page_size: r.page_size,
            page_token: r.page_token.clone(),
        };
        let (page, next, pseudonym) = mandates::list(&self.state, caller, &input)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListMandatesResponse {
            mandates: page.iter().map(|m| mandate(m, &pseudonym)).collect(),
            next_page_token: next,
        }))
    }
}
