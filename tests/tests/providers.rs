//! Providers behind real HTTP APIs: answers mapped through JSON pointers, and a failing or
//! hung provider degrades its own type only (circuit breaker, readiness, isolation).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use broker::grpc::status::reason_of;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_tests::{BrokerOptions, TestBroker, TestPki, repo_root};

const DOWN: u8 = 1;
const HUNG: u8 = 2;

/// A DGFiP-like REST API: `GET /v1/rfr/{subject}`, switchable between up, down and hung.
#[derive(Default)]
struct Api {
    mode: AtomicU8,
    hits: AtomicUsize,
    consumer_header: std::sync::Mutex<Option<String>>,
}

async fn rfr(
    State(api): State<Arc<Api>>,
    UrlPath(subject): UrlPath<String>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    api.hits.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut seen) = api.consumer_header.lock() {
        *seen = headers
            .get("x-unefois-consumer")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
    }
    match api.mode.load(Ordering::SeqCst) {
        DOWN => return (StatusCode::SERVICE_UNAVAILABLE, String::new()),
        HUNG => tokio::time::sleep(Duration::from_secs(30)).await,
        _ => {}
    }
    match subject.as_str() {
        "test:alice" => (
            StatusCode::OK,
            r#"{"data":{"rfr":23870,"parts":3.0,"year":2025}}"#.into(),
        ),
        _ => (StatusCode::NOT_FOUND, String::new()),
    }
}

async fn serve_api() -> anyhow::Result<(SocketAddr, Arc<Api>)> {
    let api = Arc::new(Api::default());
    let app = axum::Router::new()
        .route("/v1/rfr/{subject}", get(rfr))
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, api))
}

/// The sample registry with the DGFiP type served by the HTTP API at `addr`.
fn registry(dir: &Path, addr: SocketAddr) -> anyhow::Result<PathBuf> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    for entry in std::fs::read_dir(repo_root().join("examples/data"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), data.join(entry.file_name()))?;
    }
    let sample = std::fs::read_to_string(repo_root().join("examples/registry.toml"))?;
    let http = format!(
        "adapter = {{ kind = \"http\", url = \"http://{addr}/v1/rfr/{{subject}}\", timeout_ms = 5000, retries = 0, claims = {{ revenu_fiscal_reference = \"/data/rfr\", nombre_parts = \"/data/parts\", annee_revenus = \"/data/year\" }} }}\nresilience = {{ max_concurrency = 4, failure_threshold = 3, open_seconds = 30 }}"
    );
    let edited = sample.replacen(
        "adapter = { kind = \"static\", dataset = \"data/dgfip.revenu_fiscal_reference.json\" }",
        &http,
        1,
    );
    anyhow::ensure!(edited != sample);
    let path = dir.join("registry.toml");
    std::fs::write(&path, edited)?;
    Ok(path)
}

fn rfr_request(subject: &str) -> pb::FetchRequest {
    pb::FetchRequest {
        subject: subject.into(),
        attestation_type: "dgfip.revenu_fiscal_reference".into(),
        purpose: "tarification_cantine".into(),
        ..Default::default()
    }
}

async fn provider_health(broker: &TestBroker, ty: &str) -> anyhow::Result<ServingStatus> {
    let mut health = HealthClient::new(broker.channel("dinum").await?);
    Ok(health
        .check(tonic_health::pb::HealthCheckRequest {
            service: format!("unefois.provider.{ty}"),
        })
        .await?
        .into_inner()
        .status())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_provider_answers_and_a_failing_one_is_isolated() -> anyhow::Result<()> {
    let (addr, api) = serve_api().await?;
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            registry: registry(scratch.path(), addr)?,
            ..Default::default()
        },
    )
    .await?;
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);

    // Up: claims through their JSON pointers, only the permitted ones.
    let answer = lyon.fetch(rfr_request("test:alice")).await?.into_inner();
    let claims = answer.attestation.expect("attestation").claims;
    assert_eq!(
        claims["revenu_fiscal_reference"].value,
        Some(pb::claim_value::Value::IntegerValue(23870))
    );
    assert!(
        !claims.contains_key("annee_revenus"),
        "not in the habilitation"
    );
    assert_eq!(
        api.consumer_header
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .as_deref(),
        Some("mairie-lyon"),
        "the provider learns who asks"
    );
    let unknown = lyon
        .fetch(rfr_request("test:zoe"))
        .await
        .expect_err("found");
    assert_eq!(reason_of(&unknown), Some(ErrorReason::SubjectNotFound));

    // Down: three failures open the breaker; then calls are refused without reaching it.
    api.mode.store(DOWN, Ordering::SeqCst);
    for _ in 0..3 {
        let e = lyon
            .fetch(rfr_request("test:alice"))
            .await
            .expect_err("down");
        assert_eq!(e.code(), Code::Unavailable);
        assert_eq!(reason_of(&e), Some(ErrorReason::ProviderUnavailable));
    }
    let hits = api.hits.load(Ordering::SeqCst);
    let open = lyon
        .fetch(rfr_request("test:alice"))
        .await
        .expect_err("open");
    assert_eq!(open.code(), Code::Unavailable);
    assert_eq!(reason_of(&open), Some(ErrorReason::ProviderCircuitOpen));
    assert_eq!(
        api.hits.load(Ordering::SeqCst),
        hits,
        "not called while open"
    );
    // Readiness per provider: DGFiP is not serving, the CAF still is.
    let mut status = ServingStatus::Serving;
    for _ in 0..50 {
        status = provider_health(&broker, "dgfip.revenu_fiscal_reference").await?;
        if status == ServingStatus::NotServing {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, ServingStatus::NotServing);
    assert_eq!(
        provider_health(&broker, "caf.quotient_familial").await?,
        ServingStatus::Serving
    );
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_provider_costs_its_callers_their_deadline_and_nobody_else_anything()
-> anyhow::Result<()> {
    let (addr, api) = serve_api().await?;
    api.mode.store(HUNG, Ordering::SeqCst);
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let broker = Arc::new(
        TestBroker::start_with(
            pki.dir(),
            BrokerOptions {
                registry: registry(scratch.path(), addr)?,
                ..Default::default()
            },
        )
        .await?,
    );
    // Eight callers wait on the hung DGFiP with a 1 s deadline...
    let mut hung = Vec::new();
    for _ in 0..8 {
        let channel = broker.channel("mairie-lyon").await?;
        hung.push(tokio::spawn(async move {
            let mut client = ExchangeClient::new(channel);
            let mut request = tonic::Request::new(rfr_request("test:alice"));
            request.set_timeout(Duration::from_secs(1));
            let started = Instant::now();
            let result = client.fetch(request).await;
            (result.map(|_| ()), started.elapsed())
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...while another type is served at once.
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);
    let started_other = Instant::now();
    lyon.fetch(pb::FetchRequest {
        subject: "test:alice".into(),
        attestation_type: "mesr.statut_etudiant".into(),
        purpose: "tarif_etudiant".into(),
        ..Default::default()
    })
    .await
    .expect_err("no consent, but answered");
    assert!(
        started_other.elapsed() < Duration::from_millis(500),
        "another type is not slowed: {:?}",
        started_other.elapsed()
    );
    for call in hung {
        let (result, elapsed) = call.await?;
        let status = result.expect_err("hung provider answered");
        assert!(
            matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{status:?}"
        );
        assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
    }
    match Arc::try_unwrap(broker) {
        Ok(broker) => broker.stop().await,
        Err(_) => Ok(()),
    }
}
