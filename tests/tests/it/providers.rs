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
use broker::client::reason_of;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_tests::clients::provider_health;
use unefois_tests::refusals::retry_delay;
use unefois_tests::{BrokerOptions, TestBroker, TestPki};

const DOWN: u8 = 1;
const HUNG: u8 = 2;
const THROTTLED: u8 = 3;
const GARBAGE: u8 = 4;
const HUGE: u8 = 5;
const WRONG_TYPE: u8 = 6;
const SERVER_ERROR: u8 = 7;

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
) -> (StatusCode, HeaderMap, String) {
    let (status, body) = answer(&api, &subject, &headers).await;
    let mut out = HeaderMap::new();
    if status == StatusCode::TOO_MANY_REQUESTS {
        out.insert("retry-after", axum::http::HeaderValue::from_static("1"));
    }
    (status, out, body)
}

async fn answer(api: &Api, subject: &str, headers: &HeaderMap) -> (StatusCode, String) {
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
        THROTTLED => return (StatusCode::TOO_MANY_REQUESTS, String::new()),
        GARBAGE => return (StatusCode::OK, "{\"data\": {\"rfr\": 23".into()),
        HUGE => {
            return (
                StatusCode::OK,
                format!("{{\"pad\":\"{}\"}}", "x".repeat(2 << 20)),
            );
        }
        WRONG_TYPE => return (StatusCode::OK, r#"{"data":{"rfr":"23870"}}"#.into()),
        SERVER_ERROR => return (StatusCode::INTERNAL_SERVER_ERROR, String::new()),
        _ => {}
    }
    match subject {
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
    let http = format!(
        "adapter = {{ kind = \"http\", url = \"http://{addr}/v1/rfr/{{subject}}\", allow_plain_http = true, timeout_ms = 5000, retries = 0, claims = {{ revenu_fiscal_reference = \"/data/rfr\", nombre_parts = \"/data/parts\", annee_revenus = \"/data/year\" }} }}\nresilience = {{ max_concurrency = 4, failure_threshold = 3, open_seconds = 30 }}"
    );
    unefois_tests::sample_registry_with(dir, |sample| {
        sample.replacen(
            "adapter = { kind = \"static\", dataset = \"data/dgfip.revenu_fiscal_reference.json\" }",
            &http,
            1,
        )
    })
}

/// A broker on the sample registry with the DGFiP type served by the HTTP API at `addr`, with
/// the PKI and the scratch folder it lives on (kept while the test runs).
async fn broker_on(addr: SocketAddr) -> anyhow::Result<(TestPki, tempfile::TempDir, TestBroker)> {
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
    Ok((pki, scratch, broker))
}

fn rfr_request(subject: &str) -> pb::FetchRequest {
    pb::FetchRequest {
        subject: subject.into(),
        attestation_type: "dgfip.revenu_fiscal_reference".into(),
        purpose: "tarification_cantine".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_provider_answers_and_a_failing_one_is_isolated() -> anyhow::Result<()> {
    let (addr, api) = serve_api().await?;
    let (_pki, _scratch, broker) = broker_on(addr).await?;
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

/// A caller's own deadline, too short for any provider, is not the provider's failure: before
/// the fix, three such calls opened DGFiP's breaker for every consumer for 30 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_callers_too_short_deadlines_leave_the_provider_to_the_others() -> anyhow::Result<()> {
    let (addr, api) = serve_api().await?;
    let (_pki, _scratch, broker) = broker_on(addr).await?;
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);
    for _ in 0..5 {
        let mut request = tonic::Request::new(rfr_request("test:alice"));
        request.set_timeout(Duration::from_millis(50));
        let status = lyon.fetch(request).await.expect_err("no time to answer");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    }
    let answer = lyon.fetch(rfr_request("test:alice")).await?.into_inner();
    assert!(answer.attestation.is_some());
    assert_eq!(
        provider_health(&broker, "dgfip.revenu_fiscal_reference").await?,
        ServingStatus::Serving
    );
    assert!(api.hits.load(Ordering::SeqCst) >= 1);
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_provider_failure_has_its_status_and_reason_and_the_circuit_recovers()
-> anyhow::Result<()> {
    let (addr, api) = serve_api().await?;
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let registry = registry(scratch.path(), addr)?;
    // A breaker that would open only after many failures, then one that recovers fast.
    let text = std::fs::read_to_string(&registry)?.replace(
        "resilience = { max_concurrency = 4, failure_threshold = 3, open_seconds = 30 }",
        "resilience = { max_concurrency = 4, failure_threshold = 20, open_seconds = 1 }",
    );
    std::fs::write(&registry, text)?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry).await?;
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);
    let cases = [
        (
            THROTTLED,
            Code::Unavailable,
            ErrorReason::ProviderUnavailable,
        ),
        (
            SERVER_ERROR,
            Code::Unavailable,
            ErrorReason::ProviderUnavailable,
        ),
        (
            GARBAGE,
            Code::Unavailable,
            ErrorReason::ProviderInvalidResponse,
        ),
        (
            HUGE,
            Code::Unavailable,
            ErrorReason::ProviderInvalidResponse,
        ),
        (
            WRONG_TYPE,
            Code::Unavailable,
            ErrorReason::ProviderInvalidResponse,
        ),
    ];
    for (mode, code, reason) in cases {
        api.mode.store(mode, Ordering::SeqCst);
        let status = lyon
            .fetch(rfr_request("test:alice"))
            .await
            .expect_err("answered");
        assert_eq!(status.code(), code, "mode {mode}: {status:?}");
        assert_eq!(reason_of(&status), Some(reason), "mode {mode}");
        if mode == THROTTLED {
            let retry = retry_delay(&status);
            assert_eq!(retry, Some(Duration::from_secs(1)), "Retry-After passed on");
            // The broker holds the provider's calls until then (tests/tests/serial/provider_access.rs).
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
    // A provider that resets the connection: nothing listens there any more.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let scratch2 = tempfile::tempdir()?;
    // A second broker, with keys of its own, publishes them in a PKI folder of its own.
    let other_pki = TestPki::for_sample_registry()?;
    let reset = TestBroker::start_with(
        other_pki.dir(),
        BrokerOptions {
            registry: self::registry(scratch2.path(), closed)?,
            ..Default::default()
        },
    )
    .await?;
    let status = ExchangeClient::new(reset.channel("mairie-lyon").await?)
        .fetch(rfr_request("test:alice"))
        .await
        .expect_err("nothing listens");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(reason_of(&status), Some(ErrorReason::ProviderUnavailable));
    reset.stop().await?;

    // The circuit opens after its threshold and recovers once the provider does.
    api.mode.store(DOWN, Ordering::SeqCst);
    let mut opened = false;
    for _ in 0..25 {
        let status = lyon
            .fetch(rfr_request("test:alice"))
            .await
            .expect_err("down");
        if reason_of(&status) == Some(ErrorReason::ProviderCircuitOpen) {
            opened = true;
            break;
        }
    }
    assert!(opened, "the breaker opened");
    api.mode.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    lyon.fetch(rfr_request("test:alice")).await?;
    let mut status = ServingStatus::NotServing;
    for _ in 0..50 {
        status = provider_health(&broker, "dgfip.revenu_fiscal_reference").await?;
        if status == ServingStatus::Serving {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, ServingStatus::Serving, "ready again");
    broker.stop().await
}
