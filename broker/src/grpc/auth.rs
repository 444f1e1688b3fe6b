//! Maps the verified peer certificate of each call to a [`Caller`], once, before any handler.

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::caller::Caller;
use crate::federation::Federation;
use crate::grpc::status::ApiError;
use crate::grpc::status::status;
use crate::listener::PeerInfo;
use crate::registry::Role;

/// The interceptor in front of every service of the mTLS listener.
#[derive(Clone)]
pub struct Authenticate {
    federation: Arc<Federation>,
}

impl Authenticate {
    /// Checks callers against the federation's current registry and CRL.
    pub fn new(federation: Arc<Federation>) -> Authenticate {
        Authenticate { federation }
    }

    fn caller(&self, peer: Option<&PeerInfo>) -> Result<Caller, ApiError> {
        let peer =
            peer.ok_or_else(|| ApiError::NoClientCertificate("not a TLS connection".into()))?;
        if let Some(cap) = &peer.over_cap {
            return Err(ApiError::TooManyConnections {
                identity: cap.identity.to_string(),
                limit: cap.limit,
            });
        }
        let cert = peer
            .certificate
            .as_ref()
            .map_err(|e| ApiError::NoClientCertificate(e.clone()))?;
        // Checked per call, not only at the handshake: a revocation or a registry change
        // reaches connections that were already open.
        if self.federation.is_revoked(&cert.serial) {
            return Err(ApiError::CertificateRevoked);
        }
        // Its validity too: an HTTP/2 connection opened just before it expired would otherwise
        // be served for as long as it is kept alive, a rotated (not revoked) key with it.
        if cert.not_after <= std::time::SystemTime::now() {
            return Err(ApiError::NoClientCertificate(
                "the client certificate has expired".into(),
            ));
        }
        let id = &cert.spiffe_id;
        let spiffe: Arc<str> = id.to_string().into();
        let registry = self.federation.registry();
        if id.trust_domain != registry.trust_domain() {
            return Err(ApiError::UnknownParticipant(spiffe.to_string()));
        }
        let participant = registry
            .participant(&id.participant)
            .ok_or_else(|| ApiError::UnknownParticipant(spiffe.to_string()))?;
        // Only a mediation structure has agents acting in its name.
        if id.agent.is_some() && !participant.has_role(Role::Mediator) {
            return Err(ApiError::UnknownParticipant(spiffe.to_string()));
        }
        Ok(Caller::new(participant, id.agent.clone(), spiffe))
    }
}

impl Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        match self.caller(request.extensions().get::<PeerInfo>()) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Ok(request)
            }
            Err(e) => {
                let remote = request
                    .extensions()
                    .get::<PeerInfo>()
                    .and_then(|p| p.remote);
                tracing::info!(?remote, error = %e, "call refused");
                Err(status(e))
            }
        }
    }
}

/// The caller that [`Authenticate`] attached to a request.
pub fn caller<T>(request: &Request<T>) -> Result<&Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .ok_or_else(|| Status::internal("request reached a handler without authentication"))
}
