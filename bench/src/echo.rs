//! The floor: a plain tonic server with the broker's mTLS setup (TLS 1.3, client certificate
//! required, same CA and CRL) answering `unefois.v1.Provider/Provide` with a fixed answer of
//! the size of a real one. Whatever a gRPC service costs here, the broker cannot cost less.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use unefois_proto::v1 as pb;
use unefois_proto::v1::claim_value::Value;
use unefois_proto::v1::provider_server::{Provider, ProviderServer};

/// Answers every `Provide` with the same claims, without looking at the request.
#[derive(Clone, Debug)]
pub struct Echo {
    answer: Arc<pb::ProvideResponse>,
}

impl Default for Echo {
    fn default() -> Self {
        let claims = [
            ("quotient_familial", Value::IntegerValue(612)),
            ("mois_reference", Value::StringValue("2026-10".into())),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), pb::ClaimValue { value: Some(value) }))
        .collect();
        Echo {
            answer: Arc::new(pb::ProvideResponse {
                claims,
                ..Default::default()
            }),
        }
    }
}

#[tonic::async_trait]
impl Provider for Echo {
    async fn provide(
        &self,
        _request: Request<pb::ProvideRequest>,
    ) -> Result<Response<pb::ProvideResponse>, Status> {
        Ok(Response::new((*self.answer).clone()))
    }
}

/// Serves the echo on `listen` until the process is stopped; prints `listening on ADDR`.
pub async fn serve(listen: SocketAddr, pki: &Path) -> anyhow::Result<()> {
    let (addr, incoming) = crate::tls::incoming(listen, pki).await?;
    println!("listening on {addr}");
    tonic::transport::Server::builder()
        .add_service(ProviderServer::new(Echo::default()))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
