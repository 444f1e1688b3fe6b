//! The gRPC edge: the only module of the broker that speaks protobuf. Services convert between
//! protobuf messages and domain types here and nowhere else.

pub mod audit;
pub mod auth;
pub mod consents;
pub mod exchange;
pub mod guichet;
pub mod limits;
pub mod mandates;
pub mod observe;
pub mod registry;
pub mod status;

use std::sync::Arc;

use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use unefois_proto::v1::audit_server::AuditServer;
use unefois_proto::v1::consents_server::ConsentsServer;
use unefois_proto::v1::exchange_server::ExchangeServer;
use unefois_proto::v1::guichet_server::GuichetServer;
use unefois_proto::v1::mandates_server::MandatesServer;
use unefois_proto::v1::registry_server::RegistryServer;

use crate::state::State;

/// The names under which grpc.health.v1 reports the broker's services.
pub const SERVICE_NAMES: &[&str] = &[
    "",
    "unefois.v1.Registry",
    "unefois.v1.Exchange",
    "unefois.v1.Consents",
    "unefois.v1.Audit",
    "unefois.v1.Guichet",
    "unefois.v1.Mandates",
];

/// Every service of the mTLS listener, each behind the caller authentication.
pub async fn routes(
    state: Arc<State>,
    max_request_bytes: usize,
    (health, health_service): (
        HealthReporter,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    ),
) -> Result<(Routes, HealthReporter), tonic_reflection::server::Error> {
    let authenticate = auth::Authenticate::new(state.federation.clone());
    for name in SERVICE_NAMES {
        health
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    for ty in state.federation.registry().attestation_types() {
        health
            .set_service_status(provider_service_name(&ty.id), ServingStatus::Serving)
            .await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(unefois_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let registry = RegistryServer::new(registry::RegistryService::new(state.clone()))
        .max_decoding_message_size(max_request_bytes);
    let exchange = ExchangeServer::new(exchange::ExchangeService::new(state.clone()))
        .max_decoding_message_size(max_request_bytes);
    let consents = ConsentsServer::new(consents::ConsentsService::new(state.clone()))
        .max_decoding_message_size(max_request_bytes);
    let audit = AuditServer::new(audit::AuditService::new(state.clone()))
        .max_decoding_message_size(max_request_bytes);
    let mandates = MandatesServer::new(mandates::MandatesService::new(state.clone()))
        .max_decoding_message_size(max_request_bytes);
    let guichet = GuichetServer::new(guichet::GuichetService::new(state))
        .max_decoding_message_size(max_request_bytes);
    let routes = Routes::new(InterceptedService::new(registry, authenticate.clone()))
        .add_service(InterceptedService::new(exchange, authenticate.clone()))
        .add_service(InterceptedService::new(consents, authenticate.clone()))
        .add_service(InterceptedService::new(audit, authenticate.clone()))
        .add_service(InterceptedService::new(guichet, authenticate.clone()))
        .add_service(InterceptedService::new(mandates, authenticate.clone()))
        .add_service(InterceptedService::new(
            health_service,
            authenticate.clone(),
        ))
        .add_service(InterceptedService::new(reflection, authenticate));
    Ok((routes, health))
}

/// Runs a domain call in its own task: a caller that gives up (deadline, disconnect) does not
/// cut it short between a provider's answer and its record, or between a record and the state
/// it updates.
///
/// The call is boxed as it is spawned, at once: a Fetch's future is several kilobytes, and
/// every move of it (into this function's future, the handler's, the task's cell, the task's
/// output slot) was a copy of all of it (BENCHMARKS.md, run T); a box moves as a pointer.
pub fn detached<T, F>(
    what: &'static str,
    call: F,
) -> impl std::future::Future<Output = Result<T, tonic::Status>>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, crate::error::ApiError>> + Send + 'static,
{
    let task = tokio::spawn(Box::pin(call));
    async move {
        task.await
            .map_err(|e| {
                tracing::error!(error = %e, what, "request task failed");
                tonic::Status::internal(format!("the {what} could not complete"))
            })?
            .map_err(status::status)
    }
}

/// The grpc.health.v1 service name under which a provider's readiness is reported.
pub fn provider_service_name(attestation_type: &str) -> String {
    format!("unefois.provider.{attestation_type}")
}

/// A readiness hook that reports breakers opening and closing in grpc.health.v1.
pub fn provider_readiness(health: HealthReporter) -> crate::resilience::ReadinessHook {
    Arc::new(move |attestation_type: &str, ready: bool| {
        crate::metrics::provider_ready(attestation_type, ready);
        let health = health.clone();
        let name = provider_service_name(attestation_type);
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { health.set_service_status(name, status).await });
        }
    })
}

/// Tells health clients that every service is going away.
pub async fn set_not_serving(health: &HealthReporter) {
    for name in SERVICE_NAMES {
        health
            .set_service_status(*name, ServingStatus::NotServing)
            .await;
    }
}
