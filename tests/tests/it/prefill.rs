//! Guichet.Prefill: every field of a form from several administrations at once, through the
//! same policy path as a Fetch, with partial answers and the reason for each missing field.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::get;
use broker::client::reason_of;
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

/// A value that appears nowhere but in the CAF API's answer for test:carol: if it shows up in
/// the broker's files, an answer was kept.
const MARKER: &str = "MOIS-7f3a9c-unique";

async fn qf(UrlPath(subject): UrlPath<String>) -> (StatusCode, String) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    match subject.as_str() {
        "test:alice" => (StatusCode::OK, r#"{"qf":612,"mois":"2026-10"}"#.into()),
        "test:carol" => (StatusCode::OK, format!(r#"{{"qf":389,"mois":"{MARKER}"}}"#)),
        _ => (StatusCode::NOT_FOUND, String::new()),
    }
}

async fn etu(UrlPath(subject): UrlPath<String>) -> (StatusCode, String) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    match subject.as_str() {
        "test:alice" | "test:carol" => (StatusCode::OK, r#"{"etudiant":false}"#.into()),
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
        "test:alice" | "test:carol" => (StatusCode::OK, r#"{"rfr":23870,"parts":3.0}"#.into()),
        _ => (StatusCode::NOT_FOUND, String::new()),
    }
}

async fn serve_apis() -> anyhow::Result<(SocketAddr, Arc<Apis>)> {
    let apis = Arc::new(Apis::default());
    let app = axum::Router::new()
        .route("/qf/{subject}", get(qf))
        .route("/rfr/{subject}", get(rfr))
        .route("/etu/{subject}", get(etu))
        .with_state(apis.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, apis))
}

/// The sample federation with three types served by the slow APIs (three administrations),
/// the canteen's CAF and MESR habilitations under law (so that no consent is needed in these
/// tests), and a form `dossier_famille` that needs all three.
async fn start(pki: &TestPki, dir: &std::path::Path) -> anyhow::Result<(TestBroker, Arc<Apis>)> {
    start_holding(pki, dir, broker::defaults::PREVIEW_TTL).await
}

async fn start_holding(
    pki: &TestPki,
    dir: &std::path::Path,
    preview_ttl: Duration,
) -> anyhow::Result<(TestBroker, Arc<Apis>)> {
    let (addr, apis) = serve_apis().await?;
    let registry = sample_registry_with(dir, |s| {
        s.replacen(
            "adapter = { kind = \"static\", dataset = \"data/caf.quotient_familial.json\" }",
            &format!("adapter = {{ kind = \"http\", allow_plain_http = true, url = \"http://{addr}/qf/{{subject}}\", retries = 0, claims = {{ quotient_familial = \"/qf\", mois_reference = \"/mois\" }} }}"),
            1,
        )
        .replacen(
            "adapter = { kind = \"static\", dataset = \"data/dgfip.revenu_fiscal_reference.json\" }",
            &format!("adapter = {{ kind = \"http\", allow_plain_http = true, url = \"http://{addr}/rfr/{{subject}}\", retries = 0, claims = {{ revenu_fiscal_reference = \"/rfr\", nombre_parts = \"/parts\" }} }}"),
            1,
        )
        .replacen(
            "adapter = { kind = \"static\", dataset = \"data/mesr.statut_etudiant.json\" }",
            &format!("adapter = {{ kind = \"http\", allow_plain_http = true, url = \"http://{addr}/etu/{{subject}}\", retries = 0, claims = {{ est_etudiant = \"/etudiant\" }} }}"),
            1,
        )
        .replacen(
            "claims = [\"quotient_familial\", \"mois_reference\"]\nlegal_basis = \"consent\"",
            "claims = [\"quotient_familial\", \"mois_reference\"]\nlegal_basis = { law = \"Code de l'éducation, art. R. 531-52\" }",
            1,
        )
        .replacen(
            "purposes = [\"tarif_etudiant\"]\nclaims = [\"est_etudiant\", \"annee_universitaire\"]\nlegal_basis = \"consent\"",
            "purposes = [\"tarif_etudiant\", \"tarification_cantine\"]\nclaims = [\"est_etudiant\", \"annee_universitaire\"]\nlegal_basis = { law = \"Code de l'éducation, art. R. 531-52\" }",
            1,
        )
            + "\n[[forms]]\nid = \"dossier_famille\"\nlabel = \"Dossier famille\"\npurpose = \"tarification_cantine\"\nfields = [\n  { name = \"quotient_familial\", claim = \"caf.quotient_familial.quotient_familial\", required = true },\n  { name = \"revenu_fiscal_reference\", claim = \"dgfip.revenu_fiscal_reference.revenu_fiscal_reference\" },\n  { name = \"etudiant\", claim = \"mesr.statut_etudiant.est_etudiant\" },\n]\n"
    })?;
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            registry,
            preview_ttl,
            ..Default::default()
        },
    )
    .await?;
    Ok((broker, apis))
}

/// A pre-fill at Lyon's guichet, the person logged in there (their ID token).
fn request(subject: &str, form: &str) -> pb::PrefillRequest {
    pb::PrefillRequest {
        subject: subject.into(),
        form: form.into(),
        id_token: unefois_tests::id_token(subject, "mairie-lyon"),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_form_is_filled_from_three_administrations_concurrently() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let (broker, _apis) = start(&pki, scratch.path()).await?;
    let mut guichet = GuichetClient::new(broker.channel("mairie-lyon").await?);

    let started = Instant::now();
    let three = guichet
        .prefill(request("test:alice", "dossier_famille"))
        .await?
        .into_inner();
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(500),
        "three 300 ms providers answered in {elapsed:?}: not concurrent"
    );
    assert_eq!(three.fields.len(), 3, "{:?}", three.unavailable);
    assert_eq!(three.attestations.len(), 3);

    // Sent with a request id of 120 characters (valid): each type's Fetch has one too. Before
    // the fix, `id:type` was refused as malformed and every field was missing.
    let filled = guichet
        .prefill(pb::PrefillRequest {
            request_id: "r".repeat(120),
            ..request("test:alice", "inscription_cantine")
        })
        .await?
        .into_inner();
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
    let two_of_three = guichet
        .prefill(request("test:alice", "dossier_famille"))
        .await?
        .into_inner();
    let names: Vec<&str> = two_of_three
        .fields
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(names, vec!["quotient_familial", "etudiant"]);
    assert_eq!(
        two_of_three
            .unavailable
            .iter()
            .map(|f| (f.name.as_str(), f.reason))
            .collect::<Vec<_>>(),
        vec![(
            "revenu_fiscal_reference",
            ErrorReason::ProviderUnavailable as i32
        )]
    );
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

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                stack.push(entry.path());
            }
        } else if std::fs::read(&path)
            .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
            .unwrap_or(false)
        {
            found.push(path);
        }
    }
    found
}

fn preview(subject: &str) -> pb::PrefillRequest {
    pb::PrefillRequest {
        preview: true,
        ..request(subject, "inscription_cantine")
    }
}

fn confirm(prefill_id: &str, types: &[&str], reject: bool) -> pb::ConfirmRequest {
    pb::ConfirmRequest {
        subject: "test:carol".into(),
        form: "inscription_cantine".into(),
        prefill_id: prefill_id.into(),
        reject,
        attestation_types: types.iter().map(|t| t.to_string()).collect(),
        id_token: unefois_tests::id_token("test:carol", "mairie-lyon"),
        ..Default::default()
    }
}

async fn exchange_events(broker: &TestBroker) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut audit =
        unefois_proto::v1::audit_client::AuditClient::new(broker.channel("cnil").await?);
    let events = audit
        .list_events(pb::ListEventsRequest {
            kind: "exchange".into(),
            limit: 1000,
            ..Default::default()
        })
        .await?
        .into_inner()
        .events;
    events
        .iter()
        .map(|e| Ok(serde_json::from_slice(&e.entry)?))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_preview_releases_nothing_until_the_citizen_confirms_and_keeps_nothing_on_disk()
-> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let (broker, _apis) = start(&pki, scratch.path()).await?;
    let mut guichet = GuichetClient::new(broker.channel("mairie-lyon").await?);

    let shown = guichet.prefill(preview("test:carol")).await?.into_inner();
    assert!(!shown.prefill_id.is_empty());
    assert!(shown.preview_expires_at.is_some());
    assert!(shown.attestations.is_empty(), "a preview issues nothing");
    let mois = shown
        .fields
        .iter()
        .find(|f| f.name == "mois_reference_qf")
        .expect("the preview shows the value to the citizen");
    assert_eq!(
        mois.value.clone().and_then(|v| v.value),
        Some(pb::claim_value::Value::StringValue(MARKER.into()))
    );
    assert!(shown.fields.iter().all(|f| f.attestation_id.is_empty()));

    // The preview is an access, recorded as such, with nothing issued.
    let events = exchange_events(&broker).await?;
    let previewed: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["prefill_id"] == shown.prefill_id.as_str())
        .collect();
    assert_eq!(previewed.len(), 2);
    for e in &previewed {
        assert_eq!(e["outcome"], "previewed");
        assert!(e["attestation_id"].is_null() && e["payload_sha256"].is_null());
    }
    // Nothing of the values is on disk, anywhere in the broker's files.
    assert_eq!(
        files_containing(&broker.data_dir, MARKER.as_bytes()),
        Vec::<std::path::PathBuf>::new()
    );

    // Only the participant that asked may confirm (even an agent holding Carol's mandate),
    // and only for the same person.
    let mandate = unefois_proto::v1::mandates_client::MandatesClient::new(
        broker.channel("france-services-lyon/a.martin").await?,
    )
    .create(pb::CreateMandateRequest {
        subject: "test:carol".into(),
        purposes: vec!["tarification_cantine".into()],
        duration_days: 1,
        signed_document: b"%PDF mandat".to_vec(),
        id_token: unefois_tests::id_token("test:carol", "france-services-lyon"),
        ..Default::default()
    })
    .await?
    .into_inner()
    .mandate
    .unwrap_or_default();
    let other = GuichetClient::new(broker.channel("france-services-lyon/a.martin").await?)
        .confirm(pb::ConfirmRequest {
            mandate_id: mandate.id,
            id_token: String::new(),
            ..confirm(&shown.prefill_id, &[], false)
        })
        .await
        .expect_err("another participant's preview");
    assert_eq!(reason_of(&other), Some(ErrorReason::UnknownPrefill));
    let mut bob = confirm(&shown.prefill_id, &[], false);
    bob.subject = "test:bob".into();
    let mismatch = guichet.confirm(bob).await.expect_err("another person");
    assert_eq!(reason_of(&mismatch), Some(ErrorReason::SubjectMismatch));

    // The citizen keeps the CAF values only: one attestation, the DGFiP values rejected.
    let confirmed = guichet
        .confirm(confirm(
            &shown.prefill_id,
            &["caf.quotient_familial"],
            false,
        ))
        .await?
        .into_inner();
    assert_eq!(confirmed.attestations.len(), 1);
    let issued = confirmed.attestations[0]
        .attestation
        .clone()
        .unwrap_or_default();
    assert_eq!(issued.attestation_type, "caf.quotient_familial");
    assert_eq!(
        issued
            .claims
            .get("mois_reference")
            .cloned()
            .and_then(|v| v.value),
        Some(pb::claim_value::Value::StringValue(MARKER.into()))
    );
    assert!(
        confirmed
            .fields
            .iter()
            .all(|f| f.attestation_id == issued.id)
    );
    let events = exchange_events(&broker).await?;
    let outcomes: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["prefill_id"] == shown.prefill_id.as_str())
        .map(|e| {
            (
                e["attestation_type"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                e["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .filter(|(_, outcome)| outcome != "previewed")
        .collect();
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert!(outcomes.contains(&("caf.quotient_familial".into(), "granted".into())));
    assert!(outcomes.contains(&("dgfip.revenu_fiscal_reference".into(), "rejected".into())));

    // A repeated Confirm answers the same attestation; a rejection now is too late.
    let again = guichet
        .confirm(confirm(
            &shown.prefill_id,
            &["caf.quotient_familial"],
            false,
        ))
        .await?
        .into_inner();
    assert_eq!(
        again.attestations[0]
            .attestation
            .clone()
            .unwrap_or_default()
            .id,
        issued.id
    );
    let late = guichet
        .confirm(confirm(&shown.prefill_id, &[], true))
        .await
        .expect_err("already confirmed");
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&late), Some(ErrorReason::PrefillClosed));
    // Sent again, it is on the record again, as a retry of its first entry.
    let granted: Vec<serde_json::Value> = exchange_events(&broker)
        .await?
        .into_iter()
        .filter(|e| e["prefill_id"] == shown.prefill_id.as_str() && e["outcome"] == "granted")
        .collect();
    assert_eq!(granted.len(), 2, "{granted:?}");
    assert!(granted[1]["retry_of"].is_u64(), "{granted:?}");

    // A rejected preview releases nothing and is recorded.
    let second = guichet.prefill(preview("test:carol")).await?.into_inner();
    let rejected = guichet
        .confirm(confirm(&second.prefill_id, &[], true))
        .await?
        .into_inner();
    assert!(rejected.attestations.is_empty());
    let events = exchange_events(&broker).await?;
    assert_eq!(
        events
            .iter()
            .filter(|e| e["prefill_id"] == second.prefill_id.as_str() && e["outcome"] == "rejected")
            .count(),
        2
    );
    let closed = guichet
        .confirm(confirm(&second.prefill_id, &[], false))
        .await
        .expect_err("rejected");
    assert_eq!(reason_of(&closed), Some(ErrorReason::PrefillClosed));
    assert!(files_containing(&broker.data_dir, MARKER.as_bytes()).is_empty());
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unconfirmed_preview_is_forgotten_when_it_expires() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let (broker, _apis) = start_holding(&pki, scratch.path(), Duration::from_millis(300)).await?;
    let mut guichet = GuichetClient::new(broker.channel("mairie-lyon").await?);
    let shown = guichet.prefill(preview("test:carol")).await?.into_inner();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let expired = guichet
        .confirm(confirm(&shown.prefill_id, &[], false))
        .await
        .expect_err("expired");
    assert_eq!(expired.code(), Code::NotFound);
    assert_eq!(reason_of(&expired), Some(ErrorReason::UnknownPrefill));
    // Nothing was ever issued for it.
    let events = exchange_events(&broker).await?;
    assert!(
        events
            .iter()
            .filter(|e| e["prefill_id"] == shown.prefill_id.as_str())
            .all(|e| e["outcome"] == "previewed")
    );
    broker.stop().await
}

/// The reason of each field left empty, by field name.
fn reasons(unavailable: &[pb::FieldError]) -> Vec<(String, ErrorReason)> {
    let mut r: Vec<(String, ErrorReason)> = unavailable
        .iter()
        .map(|f| (f.name.clone(), f.reason()))
        .collect();
    r.sort();
    r
}

/// Every empty field says why, in the preview and after its confirmation: a field whose consent
/// was revoked says CONSENT_REVOKED both times (the confirmation said PROVIDER_UNAVAILABLE,
/// which a guichet shows the person as an outage), and one the person did not confirm says
/// PREVIEW_NOT_CONFIRMED.
#[tokio::test(flavor = "multi_thread")]
async fn every_empty_field_says_its_real_reason_through_a_confirmation() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mut guichet = GuichetClient::new(broker.channel("mairie-lyon").await?);
    let mut consents = unefois_proto::v1::consents_client::ConsentsClient::new(
        broker.channel("mairie-lyon").await?,
    );
    let grant = || {
        unefois_tests::requests::consent(
            "test:alice",
            "caf.quotient_familial",
            "tarification_cantine",
        )
    };
    let consent = consents
        .grant(grant())
        .await?
        .into_inner()
        .consent
        .unwrap_or_default();
    consents
        .revoke(pb::RevokeConsentRequest {
            consent_id: consent.id,
            ..Default::default()
        })
        .await?;
    let confirm = |prefill_id: &str, types: &[&str], reject: bool| pb::ConfirmRequest {
        subject: "test:alice".into(),
        prefill_id: prefill_id.into(),
        reject,
        attestation_types: types.iter().map(|t| t.to_string()).collect(),
        id_token: unefois_tests::id_token("test:alice", "mairie-lyon"),
        ..Default::default()
    };
    let revoked = vec![
        ("mois_reference_qf".to_string(), ErrorReason::ConsentRevoked),
        ("quotient_familial".to_string(), ErrorReason::ConsentRevoked),
    ];

    let shown = guichet
        .prefill(pb::PrefillRequest {
            preview: true,
            ..request("test:alice", "inscription_cantine")
        })
        .await?
        .into_inner();
    assert_eq!(reasons(&shown.unavailable), revoked);
    let confirmed = guichet
        .confirm(confirm(&shown.prefill_id, &[], false))
        .await?
        .into_inner();
    assert_eq!(confirmed.attestations.len(), 1);
    assert_eq!(reasons(&confirmed.unavailable), revoked);
    // A repeated Confirm says the same.
    let again = guichet
        .confirm(confirm(&shown.prefill_id, &[], false))
        .await?
        .into_inner();
    assert_eq!(reasons(&again.unavailable), revoked);

    // A rejected preview: the fields it held were not confirmed; the others keep their reason.
    let second = guichet
        .prefill(pb::PrefillRequest {
            preview: true,
            ..request("test:alice", "inscription_cantine")
        })
        .await?
        .into_inner();
    let rejected = guichet
        .confirm(confirm(&second.prefill_id, &[], true))
        .await?
        .into_inner();
    let mut expected = revoked.clone();
    expected.extend([
        ("nombre_parts".to_string(), ErrorReason::PreviewNotConfirmed),
        (
            "revenu_fiscal_reference".to_string(),
            ErrorReason::PreviewNotConfirmed,
        ),
    ]);
    expected.sort();
    assert_eq!(reasons(&rejected.unavailable), expected);

    // With consent again, the person confirms the DGFiP values only.
    consents.grant(grant()).await?;
    let third = guichet
        .prefill(pb::PrefillRequest {
            preview: true,
            ..request("test:alice", "inscription_cantine")
        })
        .await?
        .into_inner();
    assert!(third.unavailable.is_empty(), "{:?}", third.unavailable);
    let partly = guichet
        .confirm(confirm(
            &third.prefill_id,
            &["dgfip.revenu_fiscal_reference"],
            false,
        ))
        .await?
        .into_inner();
    assert_eq!(
        reasons(&partly.unavailable),
        vec![
            (
                "mois_reference_qf".to_string(),
                ErrorReason::PreviewNotConfirmed
            ),
            (
                "quotient_familial".to_string(),
                ErrorReason::PreviewNotConfirmed
            ),
        ]
    );

    // Confirmed under consent, then the consent withdrawn: a repeated Confirm sends the CAF's
    // values no more (before the fix it sent them again, unrecorded).
    let fourth = guichet
        .prefill(pb::PrefillRequest {
            preview: true,
            ..request("test:alice", "inscription_cantine")
        })
        .await?
        .into_inner();
    let both = guichet
        .confirm(confirm(&fourth.prefill_id, &[], false))
        .await?
        .into_inner();
    assert_eq!(both.attestations.len(), 2, "{:?}", both.unavailable);
    let consent_id = both
        .attestations
        .iter()
        .filter_map(|a| a.attestation.as_ref()?.legal_basis.as_ref())
        .map(|b| b.consent_id.clone())
        .find(|id| !id.is_empty())
        .expect("the CAF's under consent");
    consents
        .revoke(pb::RevokeConsentRequest {
            consent_id,
            ..Default::default()
        })
        .await?;
    let withdrawn = guichet
        .confirm(confirm(&fourth.prefill_id, &[], false))
        .await?
        .into_inner();
    assert_eq!(withdrawn.attestations.len(), 1, "the DGFiP's, under law");
    assert_eq!(reasons(&withdrawn.unavailable), revoked);
    broker.stop().await
}
