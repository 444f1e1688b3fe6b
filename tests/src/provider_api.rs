//! A DGFiP-like HTTP API that a test switches between answering, asking to wait and refusing
//! the broker's credentials, and the sample registry with the DGFiP's types served by it: the
//! provider of the provider-access tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tonic_health::pb::health_check_response::ServingStatus;
use unefois_proto::v1 as pb;

use crate::TestBroker;
use crate::clients::provider_health;
use crate::sample::{CANTINE, DGFIP_STATIC, ENERGIE, RFR};

/// A second type of the DGFiP, appended to the sample registry (see [`situation_type`]).
pub const SITUATION: &str = "dgfip.situation_fiscale";

/// The claims of the reference tax income, read from the API's answer.
pub const CLAIMS: &str =
    "claims = { revenu_fiscal_reference = \"/data/rfr\", nombre_parts = \"/data/parts\" }";

/// [`Api::mode`]: answer.
pub const OK: u8 = 0;
/// [`Api::mode`]: 429 with `Retry-After: 2`.
pub const THROTTLE: u8 = 1;
/// [`Api::mode`]: 401, the broker's credentials refused.
pub const REFUSE: u8 = 2;
/// [`Api::mode`]: 429 with `Retry-After: 60`.
pub const THROTTLE_LONG: u8 = 3;

/// A DGFiP-like API: `/v1/rfr/{subject}` and `/v1/situation/{subject}`, switchable; API
/// Particulier's error document for an unknown person; any other route a plain 404.
#[derive(Default)]
pub struct Api {
    /// How it answers: [`OK`], [`THROTTLE`], [`REFUSE`] or [`THROTTLE_LONG`].
    pub mode: AtomicU8,
    /// When each request came, by first path segment after `/v1/`.
    pub hits: Mutex<Vec<(Instant, String)>>,
    /// The `X-Api-Key` of each request.
    pub keys: Mutex<Vec<Option<String>>>,
    /// The key the API accepts, if it checks one.
    pub accepted_key: Mutex<Option<String>>,
}

impl Api {
    /// When the requests for `route` came.
    pub fn hits(&self, route: &str) -> Vec<Instant> {
        self.hits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, r)| r == route)
            .map(|(at, _)| *at)
            .collect()
    }
}

async fn answer(
    State(api): State<Arc<Api>>,
    UrlPath((route, subject)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Ok(mut hits) = api.hits.lock() {
        hits.push((Instant::now(), route.clone()));
    }
    if let Ok(mut keys) = api.keys.lock() {
        keys.push(key.clone());
    }
    let json = [("content-type", "application/json")];
    let accepted = api.accepted_key.lock().map(|k| k.clone()).unwrap_or(None);
    if accepted.is_some() && key != accepted {
        return (
            StatusCode::UNAUTHORIZED,
            json,
            r#"{"errors":[{"code":"00101"}]}"#,
        )
            .into_response();
    }
    match api.mode.load(Ordering::SeqCst) {
        THROTTLE => {
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "2")], "").into_response();
        }
        REFUSE => return (StatusCode::UNAUTHORIZED, json, "{}").into_response(),
        THROTTLE_LONG => {
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "60")], "").into_response();
        }
        _ => {}
    }
    match (route.as_str(), subject.as_str()) {
        ("rfr" | "situation", "test:alice") => (
            StatusCode::OK,
            json,
            r#"{"data":{"rfr":23870,"parts":3.0,"revenu":23870}}"#,
        )
            .into_response(),
        ("rfr" | "situation", _) => (
            StatusCode::NOT_FOUND,
            json,
            r#"{"errors":[{"code":"37003","title":"Entité non trouvée","detail":"Dossier inexistant."}]}"#,
        )
            .into_response(),
        _ => (StatusCode::NOT_FOUND, "<html>Not Found</html>").into_response(),
    }
}

fn api_router(api: Arc<Api>) -> axum::Router {
    axum::Router::new()
        .route("/v1/{route}/{subject}", get(answer))
        .with_state(api)
}

/// Serves a new [`Api`] over plain HTTP on 127.0.0.1:0: its address and the API.
pub async fn serve_api() -> anyhow::Result<(SocketAddr, Arc<Api>)> {
    let api = Arc::new(Api::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = api_router(api.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, api))
}

/// An HTTPS listener for axum: TLS with a certificate of `pki`'s CA for 127.0.0.1.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Serves a new [`Api`] over HTTPS on 127.0.0.1:0, with the certificate `pki` issued to
/// `broker`: its address and the API.
pub async fn serve_api_over_tls(
    pki: &unefois_certs::Pki,
) -> anyhow::Result<(SocketAddr, Arc<Api>)> {
    let api = Arc::new(Api::default());
    let addr = serve_over_tls(pki, api_router(api.clone())).await?;
    Ok((addr, api))
}

/// Serves `app` over HTTPS on 127.0.0.1:0 with the certificate `pki` issued to `broker` (for
/// 127.0.0.1): its address.
pub async fn serve_over_tls(
    pki: &unefois_certs::Pki,
    app: axum::Router,
) -> anyhow::Result<SocketAddr> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let chain =
        CertificateDer::pem_file_iter(pki.cert_path("broker"))?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(pki.key_path("broker"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = tcp.local_addr()?;
    let listener = TlsListener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    };
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// A type `<provider>.situation_fiscale` to append to the sample registry, with its adapter
/// and a law habilitation for mairie-lyon. Tests that read metrics labelled by provider use
/// providers of their own (the metrics are the process's, shared by the tests of a binary).
pub fn situation_type(provider: &str, adapter: &str) -> String {
    let id = format!("{provider}.situation_fiscale");
    format!(
        r#"
[[attestation_types]]
id = "{id}"
version = 1
provider = "{provider}"
description = "Situation fiscale (test)"
max_age_days = 365
{adapter}
claims = [{{ name = "revenu", type = "integer", description = "Revenu" }}]

[[habilitations]]
id = "mairie-lyon.{id}"
consumer = "mairie-lyon"
attestation_type = "{id}"
purposes = ["aide_energie"]
claims = ["revenu"]
legal_basis = {{ law = "CRPA, art. L. 114-8" }}
expires = 2028-12-31
"#
    )
}

/// The sample registry, the DGFiP type's adapter replaced by `rfr_adapter`, with `extra`
/// appended.
pub fn registry(dir: &Path, rfr_adapter: &str, extra: &str) -> anyhow::Result<PathBuf> {
    crate::sample_registry_with(dir, |sample| {
        format!("{}\n{extra}", sample.replacen(DGFIP_STATIC, rfr_adapter, 1))
    })
}

/// An `http` adapter line for `route` of the API at `addr` (plain HTTP, no retry), with its
/// `claims` mapping and `extra` settings.
pub fn http_adapter(addr: SocketAddr, route: &str, claims: &str, extra: &str) -> String {
    format!(
        "adapter = {{ kind = \"http\", url = \"http://{addr}/v1/{route}/{{subject}}\", allow_plain_http = true, retries = 0, {claims}{extra} }}"
    )
}

/// A Fetch of `ty` about `subject` by mairie-lyon: for canteen pricing when `ty` is [`RFR`],
/// for energy aid (the purpose of [`situation_type`]'s habilitation) otherwise.
pub fn fetch(ty: &str, subject: &str) -> pb::FetchRequest {
    pb::FetchRequest {
        subject: subject.into(),
        attestation_type: ty.into(),
        purpose: if ty == RFR { CANTINE } else { ENERGIE }.into(),
        ..Default::default()
    }
}

/// Waits (up to 2 s) for a type's health to become `want`.
pub async fn wait_health(broker: &TestBroker, ty: &str, want: ServingStatus) -> anyhow::Result<()> {
    let mut seen = ServingStatus::Unknown;
    for _ in 0..100 {
        seen = provider_health(broker, ty).await?;
        if seen == want {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("{ty}: health {seen:?}, expected {want:?}")
}
