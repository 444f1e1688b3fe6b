//! `unefois.v1.Guichet`: form pre-fill (with preview and confirmation) and the citizen's access
//! history.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use unefois_proto::v1 as pb;
use unefois_proto::v1::guichet_server::Guichet as GuichetApi;

use crate::audit::events;
use crate::error::ApiError;
use crate::event::Event;
use crate::grpc::auth::caller;
use crate::grpc::exchange::legal_basis;
use crate::grpc::registry::timestamp;
use crate::grpc::status::{IntoStatus, status};
use crate::state::State;
use crate::subject::Subject;

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
        caller.require_citizen_facing().map_err(status)?;
        let r = request.get_ref();
        let registry = self.state.federation.registry();
        let subject = Subject::parse(&r.subject, registry.allow_test_subjects())
            .map_err(ApiError::from)
            .map_err(status)?;
        let pseudonym = self.state.pseudonyms.audit(&subject);
        // The citizen in person (identity evidence), or an agent under the citizen's mandate.
        let mandate = crate::policy::acting(
            &*self.state.store,
            caller,
            &r.mandate_id,
            &pseudonym,
            None,
            time::OffsetDateTime::now_utc(),
        )
        .map_err(status)?;
        if mandate.is_none() {
            crate::evidence::require(&r.id_token, caller, &registry, &subject).map_err(status)?;
        }
        let before = match r.page_token.as_str() {
            "" => None,
            token => Some(
                token
                    .parse::<u64>()
                    .map_err(|_| ApiError::invalid("page_token", "not a token of this list"))
                    .map_err(status)?,
            ),
        };
        let size = match r.page_size {
            0 => 50,
            n => n.min(200),
        } as usize;
        let store = &self.state.store;
        // The read is on the record before it happens.
        store
            .append(vec![crate::event::Record::now(Event::AccessHistoryRead {
                participant: caller.participant.clone(),
                agent: caller.agent.clone(),
                subject: None,
                subject_sealed: Some(self.state.sealer.seal(&pseudonym)),
                mandate_id: mandate.map(|m| m.id),
            })])
            .await
            .into_status()?;
        let (found, more) = events::accesses(&**store, &pseudonym, before, size).into_status()?;
        let (tree_size, checkpoint) = store
            .latest_checkpoint()
            .into_status()?
            .unwrap_or((0, String::new()));
        let mut accesses = Vec::with_capacity(found.len());
        for logged in &found {
            let Some(record) = &logged.record else {
                continue;
            };
            let Event::Exchange(x) = &record.event else {
                continue;
            };
            let proof = store
                .inclusion_proof(logged.index, tree_size)
                .into_status()?;
            accesses.push(pb::Access {
                time: Some(timestamp(record.time)),
                consumer: x.participant.clone(),
                consumer_name: registry
                    .participant(&x.participant)
                    .map(|p| p.name.clone())
                    .unwrap_or_default(),
                attestation_type: x.attestation_type.clone(),
                purpose: x.purpose.clone(),
                purpose_label: registry
                    .purpose(&x.purpose)
                    .map(|p| p.label.clone())
                    .unwrap_or_default(),
                legal_basis: x.legal_basis.as_ref().map(legal_basis),
                mandate_id: x.mandate_id.clone().unwrap_or_default(),
                agent: x.agent.clone().unwrap_or_default(),
                outcome: x.outcome.name().to_string(),
                leaf_index: logged.index,
                entry: logged.entry.clone(),
                inclusion_proof: proof.iter().map(|h| h.to_vec()).collect(),
            });
        }
        let next_page_token = if more {
            found
                .last()
                .map(|l| l.index.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListAccessesResponse {
            accesses,
            next_page_token,
            checkpoint,
        }))
    }
}
