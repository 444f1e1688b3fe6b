//! `unefois.v1.Exchange`: Fetch, converted between protobuf and the domain.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use unefois_adapters::ClaimValue;
use unefois_proto::v1 as pb;
use unefois_proto::v1::exchange_server::Exchange as ExchangeApi;

use crate::attestation::Attestation;
use crate::event::RecordedBasis;
use crate::exchange::{FetchInput, Fetched, fetch};
use crate::grpc::auth::caller;
use crate::grpc::registry::timestamp;
use crate::signing::Envelope;
use crate::state::State;

/// The Exchange service.
pub struct ExchangeService {
    state: Arc<State>,
}

impl ExchangeService {
    /// Serves Fetch from the broker's state.
    pub fn new(state: Arc<State>) -> ExchangeService {
        ExchangeService { state }
    }
}

/// The caller's deadline from the `grpc-timeout` header, if it sent one.
pub fn deadline<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(split);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The protobuf form of a recorded legal basis.
pub fn legal_basis(b: &RecordedBasis) -> pb::LegalBasis {
    match b {
        RecordedBasis::Law { citation } => pb::LegalBasis {
            kind: pb::LegalBasisKind::Law as i32,
            law_citation: citation.clone(),
            ..Default::default()
        },
        RecordedBasis::Consent { consent_id } => pb::LegalBasis {
            kind: pb::LegalBasisKind::Consent as i32,
            consent_id: consent_id.clone(),
            ..Default::default()
        },
    }
}

/// The protobuf form of a claim value.
pub fn claim_value(v: &ClaimValue) -> pb::ClaimValue {
    use pb::claim_value::Value;
    pb::ClaimValue {
        value: Some(match v {
            ClaimValue::String(s) => Value::StringValue(s.clone()),
            ClaimValue::Integer(i) => Value::IntegerValue(*i),
            ClaimValue::Number(n) => Value::NumberValue(*n),
            ClaimValue::Boolean(b) => Value::BooleanValue(*b),
            ClaimValue::Date(d) => Value::DateValue(d.to_string()),
        }),
    }
}

fn attestation(a: &Attestation, claims: &unefois_adapters::Claims) -> pb::Attestation {
    pb::Attestation {
        id: a.id.clone(),
        attestation_type: a.attestation_type.clone(),
        type_version: a.type_version,
        subject_pseudonym: a.subject.clone(),
        audience: a.audience.clone(),
        purpose: a.purpose.clone(),
        legal_basis: Some(legal_basis(&a.legal_basis)),
        mandate_id: a.mandate_id.clone().unwrap_or_default(),
        claims: claims
            .iter()
            .map(|(k, v)| (k.clone(), claim_value(v)))
            .collect(),
        provider: a.provider.clone(),
        issued_at: Some(timestamp(a.issued_at)),
        valid_until: Some(timestamp(a.valid_until)),
        nonce: base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &a.nonce)
            .unwrap_or_default(),
        origin: a.origin.as_ref().map(|o| pb::ProviderOrigin {
            proof: o.proof.clone(),
            kid: o.kid.clone(),
            alg: o.alg.clone(),
            jkt: o.jkt.clone(),
            statement: o.statement.clone().unwrap_or_default(),
        }),
    }
}

/// The protobuf form of a DSSE envelope.
pub fn envelope(e: &Envelope) -> pb::Envelope {
    pb::Envelope {
        payload: e.payload.clone(),
        payload_type: e.payload_type.clone(),
        signatures: e
            .signatures
            .iter()
            .map(|s| pb::Signature {
                keyid: s.keyid.clone(),
                sig: s.sig.clone(),
            })
            .collect(),
    }
}

/// The protobuf answer to a granted Fetch.
pub fn fetch_response(f: &Fetched) -> pb::FetchResponse {
    pb::FetchResponse {
        attestation: Some(attestation(&f.attestation, &f.claims)),
        envelope: Some(envelope(&f.envelope)),
        receipt: Some(pb::Receipt {
            leaf_index: f.receipt.leaf_index,
            entry: f.receipt.entry.clone(),
            checkpoint: f.receipt.checkpoint.clone(),
            inclusion_proof: f
                .receipt
                .inclusion_proof
                .iter()
                .map(|h| h.to_vec())
                .collect(),
        }),
        origin_subject_key: f.origin_subject_key.map(|k| k.to_vec()).unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl ExchangeApi for ExchangeService {
    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        let caller = caller(&request)?.clone();
        let deadline = deadline(&request);
        let r = request.into_inner();
        let input = FetchInput {
            subject: r.subject,
            attestation_type: r.attestation_type,
            purpose: r.purpose,
            claims: r.claims,
            request_id: r.request_id,
            mandate_id: r.mandate_id,
            deadline,
        };
        let state = self.state.clone();
        let fetched =
            crate::grpc::detached(
                "exchange",
                async move { fetch(&state, &caller, input).await },
            )
            .await?;
        Ok(Response::new(fetch_response(&fetched)))
    }
}
