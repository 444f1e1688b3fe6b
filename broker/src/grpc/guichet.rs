//! `unefois.v1.Guichet`: form pre-fill (with preview and confirmation) and the citizen's access
//! history.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use unefois_proto::v1 as pb;
use unefois_proto::v1::guichet_server::Guichet as GuichetApi;

use crate::grpc::auth::caller;
use crate::grpc::exchange::legal_basis;
use crate::grpc::registry::timestamp;
use crate::grpc::status::status;
use crate::state::State;

/// The Guichet service.
pub struct GuichetService {
    state: Arc<State>,
}

impl GuichetService {
    /// Serves guichets from the broker's state.
    pub fn new(state: Arc<State>) -> GuichetService {
        GuichetService { state }
    }
}

/// The protobuf form of a pre-filled (or confirmed) form.
fn prefill_response(done: &crate::prefill::Prefilled) -> pb::PrefillResponse {
    let (prefill_id, expires_at) = match &done.preview {
        Some((id, at)) => (id.clone(), Some(timestamp(*at))),
        None => (String::new(), None),
    };
    pb::PrefillResponse {
        form: done.form.clone(),
        fields: done
            .filled
            .iter()
            .map(|f| pb::PrefilledField {
                name: f.name.clone(),
                value: Some(crate::grpc::exchange::claim_value(&f.value)),
                attestation_type: f.source.attestation_type.clone(),
                provider: f.source.provider.clone(),
                attestation_id: f.source.attestation_id.clone().unwrap_or_default(),
                issued_at: Some(timestamp(f.source.retrieved_at)),
                required: f.required,
            })
            .collect(),
        unavailable: done
            .missing
            .iter()
            .map(|m| pb::FieldError {
                name: m.name.clone(),
                reason: pb::ErrorReason::from_str_name(m.reason).map_or(0, |r| r as i32),
                message: m.message.clone(),
            })
            .collect(),
        attestations: done
            .attestations
            .iter()
            .map(|a| crate::grpc::exchange::fetch_response(a))
            .collect(),
        prefill_id,
        preview_expires_at: expires_at,
    }
}

#[tonic::async_trait]
impl GuichetApi for GuichetService {
    async fn prefill(
        &self,
        request: Request<pb::PrefillRequest>,
    ) -> Result<Response<pb::PrefillResponse>, Status> {
        let caller = caller(&request)?.clone();
        let deadline = crate::grpc::exchange::deadline(&request);
        let r = request.into_inner();
        let input = crate::prefill::PrefillInput {
            subject: r.subject,
            form: r.form,
            mandate_id: r.mandate_id,
            request_id: r.request_id,
            deadline,
            preview: r.preview,
            id_token: r.id_token,
        };
        let state = self.state.clone();
        let done = crate::grpc::detached("pre-fill", async move {
            crate::prefill::prefill(&state, &caller, input).await
        })
        .await?;
        Ok(Response::new(prefill_response(&done)))
    }

    async fn confirm(
        &self,
        request: Request<pb::ConfirmRequest>,
    ) -> Result<Response<pb::ConfirmResponse>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let input = crate::prefill::ConfirmInput {
            subject: r.subject,
            form: r.form,
            prefill_id: r.prefill_id,
            reject: r.reject,
            attestation_types: r.attestation_types,
            mandate_id: r.mandate_id,
            id_token: r.id_token,
        };
        let state = self.state.clone();
        let done = crate::grpc::detached("confirmation", async move {
            crate::prefill::confirm(&state, &caller, input).await
        })
        .await?;
        let answer = prefill_response(&done);
        Ok(Response::new(pb::ConfirmResponse {
            attestations: answer.attestations,
            fields: answer.fields,
            unavailable: answer.unavailable,
        }))
    }

    async fn list_accesses(
        &self,
        request: Request<pb::ListAccessesRequest>,
    ) -> Result<Response<pb::ListAccessesResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let input = crate::accesses::ListInput {
            subject: r.subject.clone(),
            mandate_id: r.mandate_id.clone(),
            id_token: r.id_token.clone(),
            page_token: r.page_token.clone(),
            page_size: r.page_size,
            filter: Default::default(),
        };
        let page = crate::accesses::list(&self.state, caller, &input)
            .await
            .map_err(status)?;
        let accesses = page
            .accesses
            .into_iter()
            .map(|a| pb::Access {
                time: Some(timestamp(a.time)),
                consumer: a.exchange.participant.clone(),
                consumer_name: a.consumer_name,
                attestation_type: a.exchange.attestation_type.clone(),
                purpose: a.exchange.purpose.clone(),
                purpose_label: a.purpose_label,
                legal_basis: a.exchange.legal_basis.as_ref().map(legal_basis),
                mandate_id: a.exchange.mandate_id.clone().unwrap_or_default(),
                agent: a.exchange.agent.clone().unwrap_or_default(),
                outcome: a.exchange.outcome.name().to_string(),
                leaf_index: a.leaf_index,
                entry: a.entry,
                inclusion_proof: a.inclusion_proof.iter().map(|h| h.to_vec()).collect(),
            })
            .collect();
        Ok(Response::new(pb::ListAccessesResponse {
            accesses,
            next_page_token: page.next_page_token,
            checkpoint: page.checkpoint,
        }))
    }
}
