//! A fast `unefois.v1.Provider` in Rust, serving the sample datasets (examples/data/*.json)
//! over mTLS, so that the broker's `grpc` adapter can be measured against a provider whose own
//! cost is small and known (and against nginx proxying the same provider).
//!
//! Answers as the Python reference provider does (examples/providers/python/provider.py): the
//! requested claims only, a claim the dataset lacks left out, NOT_FOUND for an unknown subject
//! (without echoing it), INVALID_ARGUMENT for a type it does not serve. JSON booleans,
//! integers, numbers and strings become the matching `ClaimValue`; the claims named as dates
//! are sent as `date_value`.
//!
//! A delay per attestation type (optionally for one subject only) imitates slower back ends,
//! for the pre-fill target ("three types in the time of the slowest provider").

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tonic::{Request, Response, Status};
use unefois_proto::v1 as pb;
use unefois_proto::v1::claim_value::Value;
use unefois_proto::v1::provider_server::{Provider, ProviderServer};

/// Claim values of one subject, by claim name.
type Record = HashMap<String, pb::ClaimValue>;

/// The datasets, by attestation type then subject, and the configured delays.
#[derive(Debug, Default)]
pub struct Datasets {
    types: HashMap<String, HashMap<String, Record>>,
    /// Added latency per attestation type.
    delays: HashMap<String, Duration>,
    /// When set, the delays apply to this subject only.
    delay_subject: Option<String>,
}

impl Datasets {
    /// Loads every `<type>.json` of `dir` (an object: subject → claims); the claims named in
    /// `date_claims` become `date_value`.
    pub fn load(dir: &Path, date_claims: &HashSet<String>) -> anyhow::Result<Datasets> {
        let mut types = HashMap::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(attestation_type) = name.strip_suffix(".json") else {
                continue;
            };
            let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)
                .with_context(|| format!("{}", path.display()))?;
            let Some(subjects) = json.as_object() else {
                bail!("{}: not a JSON object keyed by subject", path.display());
            };
            let mut records = HashMap::new();
            for (subject, claims) in subjects {
                let Some(claims) = claims.as_object() else {
                    bail!("{}: {subject:?} is not an object of claims", path.display());
                };
                let mut record = Record::new();
                for (claim, value) in claims {
                    if let Some(value) = claim_value(claim, value, date_claims)
                        .with_context(|| format!("{}: claim {claim:?}", path.display()))?
                    {
                        record.insert(claim.clone(), value);
                    }
                }
                records.insert(subject.clone(), record);
            }
            types.insert(attestation_type.to_string(), records);
        }
        if types.is_empty() {
            bail!("no <type>.json dataset in {}", dir.display());
        }
        Ok(Datasets {
            types,
            ..Datasets::default()
        })
    }

    /// Adds `delay` to every answer for `attestation_type` (for `delay_subject` only, if set).
    pub fn with_delays(
        mut self,
        delays: HashMap<String, Duration>,
        delay_subject: Option<String>,
    ) -> Datasets {
        self.delays = delays;
        self.delay_subject = delay_subject;
        self
    }

    /// The attestation types served.
    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    /// The answer to one request, or its status.
    fn answer(&self, request: &pb::ProvideRequest) -> Result<pb::ProvideResponse, Status> {
        let Some(records) = self.types.get(&request.attestation_type) else {
            return Err(Status::invalid_argument("attestation type not served here"));
        };
        let Some(record) = records.get(&request.subject) else {
            return Err(Status::not_found("subject unknown"));
        };
        let claims = request
            .claims
            .iter()
            .filter_map(|name| record.get(name).map(|v| (name.clone(), v.clone())))
            .collect();
        Ok(pb::ProvideResponse {
            claims,
            ..Default::default()
        })
    }

    /// The delay of one request, if any.
    fn delay(&self, request: &pb::ProvideRequest) -> Option<Duration> {
        let delay = self.delays.get(&request.attestation_type)?;
        match &self.delay_subject {
            Some(subject) if *subject != request.subject => None,
            _ => Some(*delay),
        }
    }
}

/// A dataset value as a claim value; `None` for JSON null (the claim is not held).
fn claim_value(
    name: &str,
    value: &serde_json::Value,
    date_claims: &HashSet<String>,
) -> anyhow::Result<Option<pb::ClaimValue>> {
    use serde_json::Value as J;
    let value = match value {
        J::Null => return Ok(None),
        J::String(s) if date_claims.contains(name) => Value::DateValue(s.clone()),
        J::String(s) => Value::StringValue(s.clone()),
        J::Bool(b) => Value::BooleanValue(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::IntegerValue(i),
            None => match n.as_f64() {
                Some(x) => Value::NumberValue(x),
                None => bail!("number out of range"),
            },
        },
        J::Array(_) | J::Object(_) => bail!("unsupported JSON type"),
    };
    Ok(Some(pb::ClaimValue { value: Some(value) }))
}

/// The `Provider` service over the datasets.
#[derive(Clone, Debug)]
pub struct DatasetProvider {
    datasets: Arc<Datasets>,
}

#[tonic::async_trait]
impl Provider for DatasetProvider {
    async fn provide(
        &self,
        request: Request<pb::ProvideRequest>,
    ) -> Result<Response<pb::ProvideResponse>, Status> {
        let request = request.into_inner();
        if let Some(delay) = self.datasets.delay(&request) {
            // A thread's sleep, not Tokio's: Tokio's timer fires on whole milliseconds, so its
            // delay would run up to 1 ms long, by how the request's arrival falls between two
            // ticks. A provider's latency does not depend on that; the pre-fill's target (the
            // slowest provider + 1 ms) is measured against this same delay and needs it exact.
            tokio::task::spawn_blocking(move || std::thread::sleep(delay))
                .await
                .map_err(|_| Status::internal("the delay's thread failed"))?;
        }
        self.datasets.answer(&request).map(Response::new)
    }
}

/// Serves the datasets on `listen` over mTLS with the PKI's server certificate until the
/// process is stopped; prints `listening on ADDR` once ready.
pub async fn serve(listen: SocketAddr, pki: &Path, datasets: Datasets) -> anyhow::Result<()> {
    let (addr, incoming) = crate::tls::incoming(listen, pki).await?;
    let mut types: Vec<&str> = datasets.types().collect();
    types.sort_unstable();
    eprintln!("provider: serving {}", types.join(", "));
    println!("listening on {addr}");
    let service = DatasetProvider {
        datasets: Arc::new(datasets),
    };
    tonic::transport::Server::builder()
        .add_service(ProviderServer::new(service))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn datasets() -> Datasets {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data");
        let dates = HashSet::from(["allocataire_depuis".to_string()]);
        Datasets::load(&dir, &dates).unwrap()
    }

    fn request(ty: &str, subject: &str, claims: &[&str]) -> pb::ProvideRequest {
        pb::ProvideRequest {
            subject: subject.into(),
            attestation_type: ty.into(),
            claims: claims.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn answers_like_the_reference_provider() {
        let d = datasets();
        let answer = d
            .answer(&request(
                "caf.quotient_familial",
                "test:alice",
                &["quotient_familial", "allocataire_depuis", "absent"],
            ))
            .unwrap();
        assert_eq!(answer.claims.len(), 2);
        assert_eq!(
            answer.claims["quotient_familial"].value,
            Some(Value::IntegerValue(612))
        );
        assert_eq!(
            answer.claims["allocataire_depuis"].value,
            Some(Value::DateValue("2019-04-01".into()))
        );
        let parts = d
            .answer(&request(
                "dgfip.revenu_fiscal_reference",
                "test:alice",
                &["nombre_parts"],
            ))
            .unwrap();
        assert_eq!(
            parts.claims["nombre_parts"].value,
            Some(Value::NumberValue(3.0))
        );
        let unknown = d
            .answer(&request("caf.quotient_familial", "test:zoe", &[]))
            .unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);
        assert!(!unknown.message().contains("zoe"));
        let other = d.answer(&request("x.y", "test:alice", &[])).unwrap_err();
        assert_eq!(other.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn delays_apply_to_their_type_and_subject() {
        let d = datasets().with_delays(
            HashMap::from([("mesr.statut_etudiant".to_string(), Duration::from_millis(6))]),
            Some("test:bob".into()),
        );
        assert_eq!(
            d.delay(&request("mesr.statut_etudiant", "test:bob", &[])),
            Some(Duration::from_millis(6))
        );
        assert_eq!(
            d.delay(&request("mesr.statut_etudiant", "test:eve", &[])),
            None
        );
        assert_eq!(
            d.delay(&request("caf.quotient_familial", "test:bob", &[])),
            None
        );
    }
}
