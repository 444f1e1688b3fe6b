//! Proof of origin (issue 20, item 8): providers sign their answers, the broker verifies the
//! signature with the keys the registry declares and refuses an answer whose signature fails
//! (counted by the breaker), and the attestation a consumer receives lets it verify offline
//! both the broker's DSSE signature and the provider's statement, without a raw subject id or
//! an unreleased value in it.
//!
//! The providers are written here: a gRPC `Provider` in Rust (tonic) and an HTTP API (axum),
//! each signing with its own Ed25519 key, and able to sign wrongly on demand.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use broker::client::reason_of;
use hmac::{Hmac, Mac};
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use sha2::Sha256;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_proto::v1::provider_server::{Provider, ProviderServer};
use unefois_proto::v1::registry_client::RegistryClient;
use unefois_tests::clients::{grant_consent, provider_health};
use unefois_tests::offline::{verify_envelope, verify_statement};
use unefois_tests::sample::DGFIP_STATIC;
use unefois_tests::{TestBroker, TestPki, sample_registry_with};

const CAF: &str = "caf.quotient_familial";
const DGFIP: &str = "dgfip.revenu_fiscal_reference";
const CAF_STATIC: &str =
    "adapter = { kind = \"static\", dataset = \"data/caf.quotient_familial.json\" }";
const CAF_PARTICIPANT: &str =
    "id = \"caf\"\nname = \"Caisse d'allocations familiales du Rhône\"\nroles = [\"provider\"]";
const DGFIP_PARTICIPANT: &str =
    "id = \"dgfip\"\nname = \"Direction générale des Finances publiques\"\nroles = [\"provider\"]";

// ------------------------------------------------------------------ keys

/// A provider's Ed25519 signing key and its public JWK.
struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Jwk,
}

impl SigningKey {
    /// The key of a 32-byte seed, under `kid`.
    fn new(kid: &str, seed: u8) -> SigningKey {
        // PKCS#8 v1 DER of an Ed25519 private key: a fixed prefix, then the seed.
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&[seed; 32]);
        let encoding = EncodingKey::from_ed_der(&der);
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::EdDSA).expect("an Ed25519 JWK");
        jwk.common.key_id = Some(kid.into());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        SigningKey {
            kid: kid.into(),
            encoding,
            jwk,
        }
    }

    /// A compact JWS of `payload` under `header` (`detached`: without its payload part).
    fn jws(&self, header: &Value, payload: &[u8], detached: bool) -> String {
        let h = B64.encode(serde_json::to_vec(header).expect("JSON"));
        let p = B64.encode(payload);
        let s = jsonwebtoken::crypto::sign(
            format!("{h}.{p}").as_bytes(),
            &self.encoding,
            Algorithm::EdDSA,
        )
        .expect("signing");
        if detached {
            format!("{h}..{s}")
        } else {
            format!("{h}.{p}.{s}")
        }
    }
}

/// The JWKS text of `keys`.
fn jwks(keys: &[&SigningKey]) -> String {
    serde_json::to_string_pretty(&JwkSet {
        keys: keys.iter().map(|k| k.jwk.clone()).collect(),
    })
    .expect("JSON")
}

/// base64url(HMAC-SHA-256(key, subject)).
fn digest(key: &[u8], subject: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(subject.as_bytes());
    B64.encode(mac.finalize().into_bytes())
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

// ------------------------------------------------------------------ a gRPC provider

const GOOD: u8 = 0;
const UNSIGNED: u8 = 1;
const OTHER_KEY: u8 = 2;
const UNKNOWN_KID: u8 = 3;
const WRONG_VALUE: u8 = 4;

/// What the CAF's provider saw and how it signs now.
#[derive(Default)]
struct Seen {
    mode: AtomicU8,
    calls: AtomicUsize,
    /// The nonce of each call, and the claims asked for.
    nonces: Mutex<Vec<String>>,
    asked: Mutex<Vec<Vec<String>>>,
}

/// The CAF's provider: the sample dataset, answers signed with `key` (or wrongly, by `mode`).
struct CafProvider {
    dataset: HashMap<String, serde_json::Map<String, Value>>,
    key: SigningKey,
    rogue: SigningKey,
    seen: Arc<Seen>,
}

fn claim_value(name: &str, value: &Value) -> pb::ClaimValue {
    use pb::claim_value::Value as V;
    let value = match value {
        Value::String(s) if name == "allocataire_depuis" => V::DateValue(s.clone()),
        Value::String(s) => V::StringValue(s.clone()),
        Value::Bool(b) => V::BooleanValue(*b),
        Value::Number(n) if n.is_i64() => V::IntegerValue(n.as_i64().unwrap_or_default()),
        Value::Number(n) => V::NumberValue(n.as_f64().unwrap_or_default()),
        _ => V::StringValue(String::new()),
    };
    pb::ClaimValue { value: Some(value) }
}

#[tonic::async_trait]
impl Provider for CafProvider {
    async fn provide(
        &self,
        request: Request<pb::ProvideRequest>,
    ) -> Result<Response<pb::ProvideResponse>, Status> {
        let r = request.into_inner();
        self.seen.calls.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut nonces) = self.seen.nonces.lock() {
            nonces.push(r.origin_nonce.clone());
        }
        if let Ok(mut asked) = self.seen.asked.lock() {
            asked.push(r.claims.clone());
        }
        let record = self
            .dataset
            .get(&r.subject)
            .ok_or_else(|| Status::not_found("subject unknown"))?;
        let mut stated = serde_json::Map::new();
        let mut response = pb::ProvideResponse::default();
        for name in &r.claims {
            if let Some(value) = record.get(name) {
                response
                    .claims
                    .insert(name.clone(), claim_value(name, value));
                stated.insert(name.clone(), value.clone());
            }
        }
        let mode = self.seen.mode.load(Ordering::SeqCst);
        if mode == UNSIGNED {
            return Ok(Response::new(response));
        }
        if mode == WRONG_VALUE {
            stated.insert("quotient_familial".into(), json!(1));
        }
        let statement = json!({
            "attestation_type": r.attestation_type,
            "claims": stated,
            "nonce": r.origin_nonce,
            "subject_digest": digest(&r.origin_subject_key, &r.subject),
            "iat": now(),
        });
        let (key, kid) = match mode {
            OTHER_KEY => (&self.rogue, self.key.kid.as_str()),
            UNKNOWN_KID => (&self.key, "caf-9"),
            _ => (&self.key, self.key.kid.as_str()),
        };
        let header = json!({"alg": "EdDSA", "kid": kid, "typ": "unefois-origin+json"});
        response.origin = key.jws(
            &header,
            &serde_json::to_vec(&statement).expect("JSON"),
            false,
        );
        Ok(Response::new(response))
    }
}

/// Serves the CAF's provider on 127.0.0.1 (plain HTTP/2: the broker is on the same host);
/// returns its port, what it sees, and its key.
async fn serve_caf() -> anyhow::Result<(u16, Arc<Seen>, String)> {
    let text = std::fs::read_to_string(
        unefois_tests::repo_root().join("examples/data/caf.quotient_familial.json"),
    )?;
    let dataset: HashMap<String, serde_json::Map<String, Value>> = serde_json::from_str(&text)?;
    let seen = Arc::new(Seen::default());
    let key = SigningKey::new("caf-1", 11);
    let keys = jwks(&[&key]);
    let provider = CafProvider {
        dataset,
        key,
        // The same kid, another key: what a forger without the CAF's key can do.
        rogue: SigningKey::new("caf-1", 12),
        seen: seen.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ProviderServer::new(provider))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok((port, seen, keys))
}

/// The sample registry with the CAF's type served by the gRPC provider at `port`, the CAF's
/// keys declared (`origin`, its text in the participant's table), and a breaker that opens
/// after `failures` failures.
fn caf_registry(
    dir: &Path,
    port: u16,
    keys: &str,
    origin: &str,
    failures: u32,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("keys"))?;
    std::fs::write(dir.join("keys/caf.jwks.json"), keys)?;
    sample_registry_with(dir, |s| {
        s.replacen(
            CAF_PARTICIPANT,
            &format!("{CAF_PARTICIPANT}\n{origin}"),
            1,
        )
        .replacen(
            CAF_STATIC,
            &format!(
                "adapter = {{ kind = \"grpc\", endpoint = \"http://127.0.0.1:{port}\", allow_plain_http = true }}\nresilience = {{ max_concurrency = 4, failure_threshold = {failures}, open_seconds = 30 }}"
            ),
            1,
        )
    })
}

fn caf_request(purpose: &str) -> pb::FetchRequest {
    pb::FetchRequest {
        subject: "test:alice".into(),
        attestation_type: CAF.into(),
        purpose: purpose.into(),
        ..Default::default()
    }
}

/// Records alice's consent to Lyon for her family quotient (canteen pricing).
async fn consent(broker: &TestBroker) -> anyhow::Result<()> {
    grant_consent(broker, "test:alice", CAF, "tarification_cantine").await?;
    Ok(())
}

/// The broker's published keys: the attestation vkey and the providers' JWKS.
async fn published_keys(channel: Channel) -> anyhow::Result<pb::GetVerifierKeysResponse> {
    Ok(RegistryClient::new(channel)
        .get_verifier_keys(pb::GetVerifierKeysRequest {})
        .await?
        .into_inner())
}

/// Every number anywhere in a JSON value.
fn numbers(v: &Value, out: &mut Vec<f64>) {
    match v {
        Value::Number(n) => out.extend(n.as_f64()),
        Value::Array(a) => a.iter().for_each(|x| numbers(x, out)),
        Value::Object(o) => o.values().for_each(|x| numbers(x, out)),
        _ => {}
    }
}

/// A copy of `text` with the byte at `at` changed.
fn one_byte_changed(text: &[u8], at: usize) -> Vec<u8> {
    let mut changed = text.to_vec();
    changed[at] = if changed[at] == b'A' { b'B' } else { b'A' };
    changed
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_grpc_answer_verifies_offline_and_reveals_nothing_more() -> anyhow::Result<()> {
    let (port, seen, keys) = serve_caf().await?;
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let registry = caf_registry(
        scratch.path(),
        port,
        &keys,
        "origin = { jwks = \"keys/caf.jwks.json\" }",
        5,
    )?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry).await?;
    consent(&broker).await?;
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);

    // Lyon's habilitation releases the quotient and its month: the provider's statement of
    // exactly those is carried, and the attestation says so.
    let response = lyon
        .fetch(caf_request("tarification_cantine"))
        .await?
        .into_inner();
    let origin = response
        .attestation
        .as_ref()
        .and_then(|a| a.origin.clone())
        .expect("an origin");
    assert_eq!(
        (
            origin.proof.as_str(),
            origin.kid.as_str(),
            origin.alg.as_str()
        ),
        ("statement", "caf-1", "EdDSA")
    );
    assert_eq!(response.origin_subject_key.len(), 32);
    assert_eq!(
        seen.asked.lock().map(|a| a.clone()).unwrap_or_default(),
        [vec![
            "mois_reference".to_string(),
            "quotient_familial".to_string()
        ]],
        "the provider was asked for the released claims only"
    );

    // Offline, with the keys the broker publishes: the broker's DSSE signature, then the
    // provider's statement, about alice (the subject Lyon asked about).
    let published = published_keys(broker.channel("mairie-lyon").await?).await?;
    assert_eq!(published.provider_keys.get("caf"), Some(&keys));
    let envelope = response.envelope.clone().expect("an envelope");
    let payload =
        verify_envelope(&envelope, &published.attestation_key).map_err(anyhow::Error::msg)?;
    let subject_key = response.origin_subject_key.as_slice();
    let stated = verify_statement(&payload, &keys, Some(("test:alice", subject_key)))
        .map_err(anyhow::Error::msg)?;
    assert_eq!(
        Value::Object(stated["claims"].as_object().cloned().unwrap_or_default()),
        json!({"quotient_familial": 612, "mois_reference": "2026-10"})
    );
    assert_eq!(
        seen.nonces.lock().map(|n| n.clone()).unwrap_or_default(),
        [stated["nonce"].as_str().unwrap_or_default().to_string()],
        "the statement answers this call's nonce"
    );
    // About another subject it does not verify.
    assert!(verify_statement(&payload, &keys, Some(("test:bob", subject_key))).is_err());

    // One byte changed anywhere fails: in the envelope's payload (the broker's signature), and
    // in the provider's statement or its signature (the provider's), even past a lying broker.
    let statement = payload["origin"]["statement"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for at in [10, envelope.payload.len() / 2, envelope.payload.len() - 2] {
        let mut changed = envelope.clone();
        changed.payload = one_byte_changed(&envelope.payload, at);
        assert!(
            verify_envelope(&changed, &published.attestation_key).is_err(),
            "a change at byte {at} of the payload verified"
        );
    }
    let second_dot = statement.rfind('.').unwrap_or_default();
    for at in [
        5,
        statement.find('.').unwrap_or_default() + 10,
        second_dot + 10,
    ] {
        let mut forged = payload.clone();
        forged["origin"]["statement"] = Value::from(String::from_utf8(one_byte_changed(
            statement.as_bytes(),
            at,
        ))?);
        assert!(
            verify_statement(&forged, &keys, Some(("test:alice", subject_key))).is_err(),
            "a change at byte {at} of the statement verified"
        );
    }
    // Another key under the same kid (a forged JWKS) does not verify it either.
    let forged_keys = jwks(&[&SigningKey::new("caf-1", 99)]);
    assert!(verify_statement(&payload, &forged_keys, None).is_err());

    // No raw subject id, no unreleased claim, not the subject key: not in the payload, not in
    // the statement's header or payload.
    let text = String::from_utf8(envelope.payload.clone())?;
    let statement_text: String = statement
        .split('.')
        .take(2)
        .map(|part| String::from_utf8(B64.decode(part).unwrap_or_default()).unwrap_or_default())
        .collect();
    for (what, inside) in [("payload", &text), ("statement", &statement_text)] {
        for forbidden in [
            "alice",
            "nombre_enfants",
            "allocataire_depuis",
            "2019-04-01",
        ] {
            assert!(
                !inside.contains(forbidden),
                "{forbidden} in the {what}: {inside}"
            );
        }
        assert!(
            !inside.contains(&B64.encode(subject_key)),
            "the subject key in the {what}"
        );
    }

    // A second fetch: another nonce, another subject digest: two statements about one person
    // share nothing but what is released.
    let again = lyon
        .fetch(caf_request("tarification_cantine"))
        .await?
        .into_inner();
    let payload2 = verify_envelope(
        again.envelope.as_ref().expect("envelope"),
        &published.attestation_key,
    )
    .map_err(anyhow::Error::msg)?;
    let stated2 = verify_statement(
        &payload2,
        &keys,
        Some(("test:alice", &again.origin_subject_key)),
    )
    .map_err(anyhow::Error::msg)?;
    assert_ne!(stated["nonce"], stated2["nonce"]);
    assert_ne!(stated["subject_digest"], stated2["subject_digest"]);

    // The CCAS may learn only derived values: the provider's signature is verified, but its
    // statement (which holds the quotient) is not carried; no subject key is given.
    let mut ccas = ExchangeClient::new(broker.channel("ccas-lyon").await?);
    let derived = ccas.fetch(caf_request("aide_energie")).await?.into_inner();
    assert!(derived.origin_subject_key.is_empty());
    let derived_payload = verify_envelope(
        derived.envelope.as_ref().expect("envelope"),
        &published.attestation_key,
    )
    .map_err(anyhow::Error::msg)?;
    assert_eq!(
        derived_payload["origin"],
        json!({"proof": "verified_by_broker", "kid": "caf-1", "alg": "EdDSA", "jkt": origin.jkt}),
    );
    assert_eq!(
        derived_payload["claims"],
        json!({"qf_inferieur_800": true, "tranche_qf": "B"})
    );
    let mut found = Vec::new();
    numbers(&derived_payload, &mut found);
    assert!(
        !found.contains(&612.0),
        "the quotient reached the CCAS: {derived_payload}"
    );
    assert!(verify_statement(&derived_payload, &keys, None).is_err());
    // Unlinkable: the CCAS's and Lyon's attestations about alice share no pseudonym and no
    // digest.
    assert_ne!(derived_payload["subject"], payload["subject"]);
    assert!(
        !String::from_utf8(derived.envelope.expect("envelope").payload)?
            .contains(stated["subject_digest"].as_str().unwrap_or("?"))
    );
    broker.stop().await
}

/// The broker's answer to a CCAS fetch of alice's family quotient, as (code, reason).
async fn ccas_fetch(ccas: &mut ExchangeClient<Channel>) -> (Code, Option<ErrorReason>, String) {
    match ccas.fetch(caf_request("aide_energie")).await {
        Ok(_) => (Code::Ok, None, String::new()),
        Err(e) => (e.code(), reason_of(&e), e.message().to_string()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_or_missing_grpc_signature_is_refused_and_opens_the_breaker() -> anyhow::Result<()> {
    let (port, seen, keys) = serve_caf().await?;
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let registry = caf_registry(
        scratch.path(),
        port,
        &keys,
        "origin = { jwks = \"keys/caf.jwks.json\" }",
        4,
    )?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry).await?;
    let mut ccas = ExchangeClient::new(broker.channel("ccas-lyon").await?);
    assert_eq!(ccas_fetch(&mut ccas).await.0, Code::Ok);

    // Signed by another key under the CAF's kid, under a kid the CAF does not have, not signed
    // (the registry requires it by default), or stating another value than the one answered:
    // each refused, never forwarded, and counted as a failure.
    for mode in [OTHER_KEY, UNKNOWN_KID, UNSIGNED, WRONG_VALUE] {
        seen.mode.store(mode, Ordering::SeqCst);
        let (code, reason, message) = ccas_fetch(&mut ccas).await;
        assert_eq!(
            (code, reason),
            (
                Code::Unavailable,
                Some(ErrorReason::ProviderInvalidResponse)
            ),
            "mode {mode}: {message}"
        );
        assert!(!message.contains("alice"), "{message}");
    }
    assert_eq!(seen.calls.load(Ordering::SeqCst), 5);

    // Four failures in a row: the breaker is open, the provider is no longer called, even now
    // that it signs well again, and health says the CAF is not serving.
    seen.mode.store(GOOD, Ordering::SeqCst);
    let (code, reason, message) = ccas_fetch(&mut ccas).await;
    assert_eq!(
        (code, reason),
        (Code::Unavailable, Some(ErrorReason::ProviderCircuitOpen)),
        "{message}"
    );
    assert_eq!(seen.calls.load(Ordering::SeqCst), 5, "called while open");
    let mut status = ServingStatus::Serving;
    for _ in 0..50 {
        status = provider_health(&broker, CAF).await?;
        if status == ServingStatus::NotServing {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, ServingStatus::NotServing);
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_optional_signature_may_be_missing_but_never_wrong() -> anyhow::Result<()> {
    let (port, seen, keys) = serve_caf().await?;
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let registry = caf_registry(
        scratch.path(),
        port,
        &keys,
        "origin = { jwks = \"keys/caf.jwks.json\", required = false }",
        5,
    )?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry).await?;
    let mut ccas = ExchangeClient::new(broker.channel("ccas-lyon").await?);

    // Not signed: granted, and the attestation has no origin at all.
    seen.mode.store(UNSIGNED, Ordering::SeqCst);
    let answer = ccas.fetch(caf_request("aide_energie")).await?.into_inner();
    assert_eq!(
        answer.attestation.as_ref().and_then(|a| a.origin.clone()),
        None
    );
    let payload: Value = serde_json::from_slice(&answer.envelope.expect("envelope").payload)?;
    assert!(payload.get("origin").is_none(), "{payload}");

    // Signed, but not by the CAF's key: refused all the same.
    seen.mode.store(OTHER_KEY, Ordering::SeqCst);
    let (code, reason, message) = ccas_fetch(&mut ccas).await;
    assert_eq!(
        (code, reason),
        (
            Code::Unavailable,
            Some(ErrorReason::ProviderInvalidResponse)
        ),
        "{message}"
    );
    broker.stop().await
}

// ------------------------------------------------------------------ an HTTP provider

const TAMPERED: u8 = 1;

/// The DGFiP's API: what it saw, and whether it tampers with its body after signing it.
#[derive(Default)]
struct Api {
    mode: AtomicU8,
    hits: AtomicUsize,
    challenge: Mutex<Option<(String, String)>>,
}

struct DgfipApi {
    key: SigningKey,
    api: Arc<Api>,
}

/// `GET /v1/rfr/{subject}`: the DGFiP's native answer (it holds more than Lyon may receive),
/// signed with a detached JWS in `X-Unefois-Origin`.
async fn rfr(
    State(state): State<Arc<DgfipApi>>,
    UrlPath(subject): UrlPath<String>,
    headers: HeaderMap,
) -> (StatusCode, HeaderMap, String) {
    let api = &state.api;
    api.hits.fetch_add(1, Ordering::SeqCst);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let nonce = header("x-unefois-origin-nonce");
    let subject_key = B64
        .decode(header("x-unefois-origin-subject-key"))
        .unwrap_or_default();
    if let Ok(mut seen) = api.challenge.lock() {
        *seen = Some((nonce.clone(), header("x-unefois-origin-subject-key")));
    }
    if subject != "test:alice" {
        return (StatusCode::NOT_FOUND, HeaderMap::new(), String::new());
    }
    let body = r#"{"data":{"rfr":23870,"parts":3.0,"year":2025}}"#;
    let protected = json!({
        "alg": "EdDSA", "kid": state.key.kid, "typ": "unefois-origin-body",
        "attestation_type": DGFIP,
        "nonce": nonce,
        "subject_digest": digest(&subject_key, &subject),
        "iat": now(),
    });
    let signature = state.key.jws(&protected, body.as_bytes(), true);
    let mut out = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&signature) {
        out.insert("x-unefois-origin", value);
    }
    let sent = if api.mode.load(Ordering::SeqCst) == TAMPERED {
        body.replace("23870", "13870")
    } else {
        body.to_string()
    };
    (StatusCode::OK, out, sent)
}

async fn serve_dgfip() -> anyhow::Result<(SocketAddr, Arc<Api>, String)> {
    let key = SigningKey::new("dgfip-1", 21);
    let keys = jwks(&[&key]);
    let api = Arc::new(Api::default());
    let app = axum::Router::new()
        .route("/v1/rfr/{subject}", axum::routing::get(rfr))
        .with_state(Arc::new(DgfipApi {
            key,
            api: api.clone(),
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, api, keys))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_provider_signs_its_body_and_a_tampered_body_is_refused() -> anyhow::Result<()> {
    let (addr, api, keys) = serve_dgfip().await?;
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    std::fs::create_dir_all(scratch.path().join("keys"))?;
    std::fs::write(scratch.path().join("keys/dgfip.jwks.json"), &keys)?;
    let http = format!(
        "adapter = {{ kind = \"http\", url = \"http://{addr}/v1/rfr/{{subject}}\", allow_plain_http = true, retries = 0, claims = {{ revenu_fiscal_reference = \"/data/rfr\", nombre_parts = \"/data/parts\", annee_revenus = \"/data/year\" }} }}\nresilience = {{ max_concurrency = 4, failure_threshold = 3, open_seconds = 30 }}"
    );
    let registry = sample_registry_with(scratch.path(), |s| {
        s.replacen(
            DGFIP_PARTICIPANT,
            &format!("{DGFIP_PARTICIPANT}\norigin = {{ jwks = \"keys/dgfip.jwks.json\" }}"),
            1,
        )
        .replacen(DGFIP_STATIC, &http, 1)
    })?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry).await?;
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);
    let request = || pb::FetchRequest {
        subject: "test:alice".into(),
        attestation_type: DGFIP.into(),
        purpose: "tarification_cantine".into(),
        ..Default::default()
    };

    // Signed: granted. The body holds the year, which Lyon may not receive: the attestation
    // records that the broker verified the DGFiP's signature, by which key, and carries
    // nothing of the body.
    let answer = lyon.fetch(request()).await?.into_inner();
    let (nonce, subject_key) = api
        .challenge
        .lock()
        .ok()
        .and_then(|c| c.clone())
        .unwrap_or_default();
    assert_eq!(
        (nonce.len(), subject_key.len()),
        (22, 43),
        "a fresh challenge was sent"
    );
    assert!(answer.origin_subject_key.is_empty());
    let published = published_keys(broker.channel("mairie-lyon").await?).await?;
    let payload = verify_envelope(
        answer.envelope.as_ref().expect("envelope"),
        &published.attestation_key,
    )
    .map_err(anyhow::Error::msg)?;
    let set: JwkSet = serde_json::from_str(&published.provider_keys["dgfip"])?;
    let jkt = set.keys[0].thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)?;
    assert_eq!(
        payload["origin"],
        json!({"proof": "verified_by_broker", "kid": "dgfip-1", "alg": "EdDSA", "jkt": jkt})
    );
    assert_eq!(
        payload["claims"],
        json!({"revenu_fiscal_reference": 23870, "nombre_parts": 3.0})
    );
    let mut found = Vec::new();
    numbers(&payload, &mut found);
    assert!(
        !found.contains(&2025.0),
        "the unreleased year is in {payload}"
    );
    assert!(!String::from_utf8(answer.envelope.expect("envelope").payload)?.contains("alice"));

    // A body changed after it was signed: refused, never forwarded, and counted: three in a
    // row open the breaker, and the API is not called any more.
    api.mode.store(TAMPERED, Ordering::SeqCst);
    for _ in 0..3 {
        let e = lyon
            .fetch(request())
            .await
            .expect_err("a tampered body was accepted");
        assert_eq!(
            (e.code(), reason_of(&e)),
            (
                Code::Unavailable,
                Some(ErrorReason::ProviderInvalidResponse)
            ),
            "{}",
            e.message()
        );
        assert!(!e.message().contains("13870"), "{}", e.message());
    }
    assert_eq!(api.hits.load(Ordering::SeqCst), 4);
    let open = lyon.fetch(request()).await.expect_err("open");
    assert_eq!(
        (open.code(), reason_of(&open)),
        (Code::Unavailable, Some(ErrorReason::ProviderCircuitOpen))
    );
    assert_eq!(api.hits.load(Ordering::SeqCst), 4, "called while open");
    broker.stop().await
}

// ------------------------------------------------------------------ the registry

/// The registry error of the sample registry with `edit` applied and `keys` written to
/// `keys/caf.jwks.json`: (key, message), after checking it names the file.
async fn start_error(
    pki: &TestPki,
    keys: &str,
    edit: impl Fn(&str) -> String,
) -> anyhow::Result<(String, String)> {
    let scratch = tempfile::tempdir()?;
    std::fs::create_dir_all(scratch.path().join("keys"))?;
    std::fs::write(scratch.path().join("keys/caf.jwks.json"), keys)?;
    let registry = sample_registry_with(scratch.path(), edit)?;
    let error = match TestBroker::start_with_registry(pki.dir(), registry.clone()).await {
        Ok(broker) => {
            broker.stop().await?;
            anyhow::bail!("the broker started");
        }
        Err(e) => e,
    };
    let text = format!("{error:#}");
    let Some(broker::BrokerError::Registry(e)) = error.downcast_ref::<broker::BrokerError>() else {
        anyhow::bail!("not a registry error: {text}");
    };
    anyhow::ensure!(e.file == registry, "another file: {text}");
    anyhow::ensure!(
        text.contains(&registry.display().to_string()) && text.contains(&e.key),
        "the message names the file and the key: {text}"
    );
    Ok((e.key.clone(), e.message.clone()))
}

#[tokio::test]
async fn bad_origin_settings_refuse_the_start_naming_file_and_key() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let keys = jwks(&[&SigningKey::new("caf-1", 11)]);
    let on_caf = |origin: &str| {
        let origin = origin.to_string();
        move |s: &str| s.replacen(CAF_PARTICIPANT, &format!("{CAF_PARTICIPANT}\n{origin}"), 1)
    };

    // The CAF must sign, but its type is a static dataset, which cannot.
    let (key, message) = start_error(
        &pki,
        &keys,
        on_caf("origin = { jwks = \"keys/caf.jwks.json\" }"),
    )
    .await?;
    assert_eq!(key, "attestation_types[0].adapter");
    assert!(message.contains("must sign"), "{message}");

    // Outside the registry's folder; not a JWKS; a key without kid; an unknown setting.
    for (origin, expected_key, words) in [
        (
            "origin = { jwks = \"../../etc/passwd\", required = false }",
            "participants[0].origin.jwks",
            "inside the registry's folder",
        ),
        (
            "origin = { jwks = \"data/caf.quotient_familial.json\", required = false }",
            "participants[0].origin.jwks",
            "not a JWKS",
        ),
        (
            "origin = { jwks = \"keys/caf.jwks.json\", required = false, keys = 1 }",
            "participants[0].origin",
            "unknown field",
        ),
    ] {
        let (key, message) = start_error(&pki, &keys, on_caf(origin)).await?;
        assert!(key.starts_with(expected_key), "{origin}: {key}: {message}");
        assert!(message.contains(words), "{origin}: {message}");
    }
    let no_kid = keys.replace("\"kid\": \"caf-1\",", "");
    assert_ne!(no_kid, keys);
    let (key, message) = start_error(
        &pki,
        &no_kid,
        on_caf("origin = { jwks = \"keys/caf.jwks.json\", required = false }"),
    )
    .await?;
    assert_eq!(key, "participants[0].origin.jwks");
    assert!(message.contains("kid"), "{message}");

    // Only a provider signs answers.
    let (key, message) = start_error(&pki, &keys, |s| {
        s.replacen(
            "roles = [\"guichet\", \"consumer\"]",
            "roles = [\"guichet\", \"consumer\"]\norigin = { jwks = \"keys/caf.jwks.json\", required = false }",
            1,
        )
    })
    .await?;
    assert_eq!(key, "participants[3].origin");
    assert!(message.contains("provider role"), "{message}");

    // The example provider's committed key, outside a development federation.
    let example = std::fs::read_to_string(
        unefois_tests::repo_root().join("examples/providers/python/origin-jwks.json"),
    )?;
    let (key, message) = start_error(&pki, &example, |s| {
        on_caf("origin = { jwks = \"keys/caf.jwks.json\", required = false }")(s).replacen(
            "allow_test_subjects = true",
            "allow_test_subjects = false",
            1,
        )
    })
    .await?;
    assert_eq!(key, "participants[0].origin.jwks");
    assert!(message.contains("example provider"), "{message}");
    Ok(())
}
