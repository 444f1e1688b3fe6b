//! `unefois.v1.Audit`: checkpoints and proofs for every participant; events for auditors.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use unefois_proto::v1 as pb;
use unefois_proto::v1::audit_server::Audit as AuditApi;

use crate::audit::events::{self, EventFilter, LoggedEvent};
use crate::caller::Caller;
use crate::error::ApiError;
use crate::event::Event;
use crate::grpc::auth::caller;
use crate::grpc::exchange::legal_basis;
use crate::grpc::registry::timestamp;
use crate::grpc::status::{IntoStatus, status};
use crate::state::State;

/// The Audit service.
pub struct AuditService {
    state: Arc<State>,
}

impl AuditService {
    /// Serves the audit log of the broker's store.
    pub fn new(state: Arc<State>) -> AuditService {
        AuditService { state }
    }
}

/// The protobuf view of one logged event.
pub fn audit_event(e: &LoggedEvent) -> pb::AuditEvent {
    let Some(record) = &e.record else {
        return pb::AuditEvent {
            index: e.index,
            entry: e.entry.clone(),
            kind: "unreadable".to_string(),
            ..Default::default()
        };
    };
    let mut out = pb::AuditEvent {
        index: e.index,
        entry: e.entry.clone(),
        kind: record.event.kind().to_string(),
        time: Some(timestamp(record.time)),
        participant: record.event.participant().unwrap_or_default().to_string(),
        subject_pseudonym: e.subject.clone().unwrap_or_default(),
        ..Default::default()
    };
    match &record.event {
        Event::Exchange(x) => {
            out.agent = x.agent.clone().unwrap_or_default();
            out.pseudonym_key_id = x.pseudonym_key.clone().unwrap_or_default();
            out.attestation_type = x.attestation_type.clone();
            out.purpose = x.purpose.clone();
            out.legal_basis = x.legal_basis.as_ref().map(legal_basis);
            out.habilitation = x.habilitation.clone().unwrap_or_default();
            out.mandate_id = x.mandate_id.clone().unwrap_or_default();
            out.outcome = x.outcome.name().to_string();
            out.reason = x
                .reason
                .as_deref()
                .and_then(pb::ErrorReason::from_str_name)
                .map_or(0, |r| r as i32);
            out.attestation_id = x.attestation_id.clone().unwrap_or_default();
            out.payload_sha256 = x
                .payload_sha256
                .as_deref()
                .and_then(|h| hex::decode(h).ok())
                .unwrap_or_default();
            out.registry_sha256 = x.registry_sha256.clone();
        }
        Event::ConsentGranted {
            pseudonym_key,
            agent,
            attestation_types,
            purpose,
            mandate_id,
            ..
        } => {
            out.pseudonym_key_id = pseudonym_key.clone();
            out.agent = agent.clone().unwrap_or_default();
            out.attestation_type = attestation_types.join(",");
            out.purpose = purpose.clone();
            out.mandate_id = mandate_id.clone().unwrap_or_default();
        }
        Event::AccessHistoryRead {
            agent, mandate_id, ..
        }
        | Event::ConsentsRead {
            agent, mandate_id, ..
        } => {
            out.agent = agent.clone().unwrap_or_default();
            out.mandate_id = mandate_id.clone().unwrap_or_default();
        }
        Event::ConsentRenewed {
            agent, mandate_id, ..
        } => {
            out.agent = agent.clone().unwrap_or_default();
            out.mandate_id = mandate_id.clone().unwrap_or_default();
        }
        Event::ConsentRevoked { agent, .. } | Event::AuditRead { agent, .. } => {
            out.agent = agent.clone().unwrap_or_default();
        }
        Event::MandateRevoked {
            agent, mandate_id, ..
        } => {
            out.agent = agent.clone().unwrap_or_default();
            out.mandate_id = mandate_id.clone();
        }
        Event::MandateCreated {
            mandate_id,
            pseudonym_key,
            agent,
            purposes,
            ..
        } => {
            out.pseudonym_key_id = pseudonym_key.clone();
            out.agent = agent.clone();
            out.purpose = purposes.join(",");
            out.mandate_id = mandate_id.clone();
        }
        Event::RegistryLoaded {
            registry_sha256, ..
        } => {
            out.registry_sha256 = registry_sha256.clone();
        }
        Event::AccessContested { entry, reason, .. } => {
            out.contested_index = *entry;
            out.contest_reason = reason.name().to_string();
        }
        Event::HarvestingAlarm { habilitation, .. } => {
            out.habilitation = habilitation.clone();
        }
        Event::BrokerStarted { .. } | Event::BrokerStopped {} | Event::RateLimited { .. } => {}
    }
    out
}

impl AuditService {
    /// The auditor's query of `r`, checked and recorded before it runs (`events::audited`).
    async fn audited_filter(
        &self,
        caller: &Caller,
        r: &pb::ListEventsRequest,
        verb: &'static str,
    ) -> Result<EventFilter, ApiError> {
        let query = events::AuditQuery {
            start_index: r.start_index,
            limit: r.limit,
            kind: r.kind.clone(),
            participant: r.participant.clone(),
            subject: r.subject.clone(),
            attestation_type: r.attestation_type.clone(),
            outcome: r.outcome.clone(),
            since: r.since.as_ref().map(|t| t.seconds),
            until: r.until.as_ref().map(|t| t.seconds),
        };
        events::audited(&self.state, caller, query, verb).await
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::AuditEvent, Status>> + Send>>;

#[tonic::async_trait]
impl AuditApi for AuditService {
    async fn get_checkpoint(
        &self,
        request: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::GetCheckpointResponse>, Status> {
        caller(&request)?;
        let store = &self.state.store;
        let checkpoint = match request.get_ref().tree_size {
            0 => store
                .latest_checkpoint()
                .await
                .into_status()?
                .map(|(_, note)| note)
                .ok_or(ApiError::StoreUnavailable)
                .map_err(status)?,
            size => store.checkpoint_at(size).await.into_status()?,
        };
        Ok(Response::new(pb::GetCheckpointResponse {
            checkpoint,
            verifier_key: store.log_vkey().to_string(),
        }))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::GetInclusionProofResponse>, Status> {
        caller(&request)?;
        let r = request.get_ref();
        if r.leaf_index >= r.tree_size {
            return Err(status(ApiError::LeafIndexOutOfRange(format!(
                "leaf {} is not in a tree of {} entries",
                r.leaf_index, r.tree_size
            ))));
        }
        let hashes = self
            .state
            .store
            .inclusion_proof(r.leaf_index, r.tree_size)
            .await
            .into_status()?;
        Ok(Response::new(pb::GetInclusionProofResponse {
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::GetConsistencyProofResponse>, Status> {
        caller(&request)?;
        let r = request.get_ref();
        if r.first_size == 0 || r.first_size > r.second_size {
            return Err(status(ApiError::TreeSizeOutOfRange(format!(
                "no consistency proof from {} to {} entries",
                r.first_size, r.second_size
            ))));
        }
        // Equal sizes need no hash, but only for a tree the log has: the store says which
        // (out of range, or not yet readable on a broker behind another).
        let hashes = self
            .state
            .store
            .consistency_proof(r.first_size, r.second_size)
            .await
            .into_status()?;
        Ok(Response::new(pb::GetConsistencyProofResponse {
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let caller = caller(&request)?.clone();
        let filter = self
            .audited_filter(&caller, request.get_ref(), "ListEvents")
            .await
            .map_err(status)?;
        let (found, next_index) = events::list(&*self.state.store, &filter)
            .await
            .into_status()?;
        Ok(Response::new(pb::ListEventsResponse {
            events: found.iter().map(audit_event).collect(),
            next_index,
        }))
    }

    type ExportEventsStream = EventStream;

    async fn export_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let caller = caller(&request)?.clone();
        let mut filter = self
            .audited_filter(&caller, request.get_ref(), "ExportEvents")
            .await
            .map_err(status)?;
        filter.limit = events::MAX_LIMIT;
        let state = self.state.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        // Ends when the client leaves (the stream, and so `rx`, dropped), or at the log's size
        // when it began.
        tokio::spawn(async move { events::export(&*state.store, filter, &tx).await });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(|item| item.map(|event| audit_event(&event)).into_status());
        Ok(Response::new(Box::pin(stream)))
    }
}
