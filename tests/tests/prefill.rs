//! Guichet.Prefill: every field of a form from several administrations at once, through the
//! same policy path as a Fetch, with partial answers and the reason for each missing field.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::get;
use broker::grpc::status::reason_of;
use tonic::Code;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::guichet_client::GuichetClient;
use unefois_tests::{BrokerOptions, TestBroker, TestPki, sample_registry_with};

/// CAF- and DGFiP-like APIs, each taking 300 ms; the DGFiP one can be switched off.
#[derive(Default)]
struct Apis {
    dgfip_down: AtomicBool,
}

async fn qf(UrlPath(subject): UrlPath<String>) -> (StatusCode, String) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    match subject.as_str() {
        "test:alice" => (StatusCode::OK, r#"{"qf":612,"mois":"2026-10"}"#.into()),
        _ => (StatusCode::NOT_FOUND, String::new()),
    }
}

async fn rfr(
    State(apis): State<Arc<Apis>>,
    UrlPath(subject): UrlPath<String>,
) -> (StatusCode, String) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    if apis.dgfip_down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, String::new());
    }
    match subject.as_str() {
        "test:alice" => (StatusCode::OK, r#"{"rfr":23870,"parts":3.0}"#.into()),
        _ => (StatusCode::NOT_FOUND, String::new()),
    }
}

async fn serve_apis() -> anyhow::Result<(SocketAddr, Arc<Apis>)> {
    let apis = Arc::new(Apis::default());
    let app = axum::Router::new()
        .route("/qf/{subject}", get(qf))
        .route("/rfr/{subject}", get(rfr))
        .with_state(apis.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, apis))
}

/// The sample federation with both types served by the slow APIs, and the canteen's CAF
/// habilitation under law (so that no consent is needed in this test).
async fn start(pki: &TestPki, dir: &std::path::Path) -> anyhow::Result<(TestBroker, Arc<Apis>)> {
    let (addr, apis) = serve_apis().await?;
    let registry = sample_registry_with(dir, |s| {
        s.replacen(
            "adapter = { kind = \"static\", dataset = \"data/caf.quotient_familial.json\" }",
            &format!("adapter = {{ kind = \"http\", url = \"http://{addr}/qf/{{subject}}\", retries = 0, claims = {{ quotient_familial = \"/qf\", mois_reference = \"/mois\" }} }}"),
            1,
        )
        .replacen(
            "adapter = { kind = \"static\", dataset = \"data/dgfip.revenu_fiscal_reference.json\" }",
            &format!("adapter = {{ kind = \"http\", url = \"http://{addr}/rfr/{{subject}}\", retries = 0, claims = {{ revenu_fiscal_reference = \"/rfr\", nombre_parts = \"/parts\" }} }}"),
            1,
        )
        .replacen(
            "claims = [\"quotient_familial\", \"mois_reference\"]\nlegal_basis = \"consent\"",
            "claims = [\"quotient_familial\", \"mois_reference\"]\nlegal_basis = { law = \"Code de l'éducation, art. R. 531-52\" }",
            1,
        )
    })?;
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            registry,
            ..Default::default()
        },
    )
    .await?;
    Ok((broker, apis))
}

fn request(subject: &str, form: &str) -> pb::PrefillRequest {
    pb::PrefillRequest {
        subject: subject.into(),
        form: form.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_form_is_filled_from_two_administrations_concurrently() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let (broker, _apis) = start(&pki, scratch.path()).await?;
    let mut guichet = GuichetClient::new(broker.channel("mairie-lyon").await?);

    let started = Instant::now();
    let filled = guichet
        .prefill(request("test:alice", "inscription_cantine"))
        .await?
        .into_inner();
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(550),
        "two 300 ms providers answered in {elapsed:?}: not concurrent"
    );
    assert!(filled.unavailable.is_empty(), "{:?}", filled.unavailable);
    let value = |name: &str| {
        filled
            .fields
            .iter()
            .find(|f| f.name == name)
            .and_then(|f| f.value.clone())
            .and_then(|v| v.value)
    };
    assert_eq!(
        value("quotient_familial"),
        Some(pb::claim_value::Value::IntegerValue(612))
    );
    assert_eq!(
        value("revenu_fiscal_reference"),
        Some(pb::claim_value::Value::IntegerValue(23870))
    );
    // Each field carries its provenance; the attestations behind them are signed, with receipts.
    let qf = filled
        .fields
        .iter()
        .find(|f| f.name == "quotient_familial")
        .expect("field");
    assert_eq!((qf.provider.as_str(), qf.required), ("caf", true));
    assert_eq!(filled.attestations.len(), 2);
    for a in &filled.attestations {
        let attestation = a.attestation.as_ref().expect("attestation");
        assert_eq!(attestation.purpose, "tarification_cantine");
        assert!(a.receipt.is_some() && a.envelope.is_some());
    }
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_down_leaves_its_fields_to_ask_and_the_others_filled() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let (broker, apis) = start(&pki, scratch.path()).await?;
    apis.dgfip_down.store(true, Ordering::SeqCst);
    let mut guichet = GuichetClient::new(broker.channel("mairie-lyon").await?);
    let partial = guichet
        .prefill(request("test:alice", "inscription_cantine"))
        .await?
        .into_inner();
    let names: Vec<&str> = partial.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, vec!["quotient_familial", "mois_reference_qf"]);
    let missing: Vec<(&str, i32)> = partial
        .unavailable
        .iter()
        .map(|f| (f.name.as_str(), f.reason))
        .collect();
    assert_eq!(
        missing,
        vec![
            (
                "revenu_fiscal_reference",
                ErrorReason::ProviderUnavailable as i32
            ),
            ("nombre_parts", ErrorReason::ProviderUnavailable as i32),
        ]
    );

    // A person unknown to the providers: every field to ask, each with its reason.
    let unknown = guichet
        .prefill(request("test:zoe", "inscription_cantine"))
        .await?
        .into_inner();
    assert!(unknown.fields.is_empty());
    assert!(
        unknown
            .unavailable
            .iter()
            .all(|f| f.reason == ErrorReason::SubjectNotFound as i32
                || f.reason == ErrorReason::ProviderUnavailable as i32)
    );

    // Deny by default holds field by field: a guichet without habilitation gets nothing.
    let refused = GuichetClient::new(broker.channel("mairie-test").await?)
        .prefill(request("test:alice", "inscription_cantine"))
        .await
        .expect_err("mairie-test is no guichet");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(reason_of(&refused), Some(ErrorReason::WrongRole));
    let unknown_form = guichet
        .prefill(request("test:alice", "permis_de_chasse"))
        .await
        .expect_err("unknown form");
    assert_eq!(unknown_form.code(), Code::NotFound);
    assert_eq!(reason_of(&unknown_form), Some(ErrorReason::UnknownForm));
    broker.stop().await
}
