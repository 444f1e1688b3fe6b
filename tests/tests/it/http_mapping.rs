//! An HTTP provider shaped like API Particulier (v3, quotient familial, identity route), behind a
//! real broker over mTLS: what the provider receives (the consumer's SIRET as `recipient`, the
//! civil status of a `pivot:` subject, percent-encoded; the recorded request id digest, never
//! the caller's id), how its answer becomes the attestation's claims (JSONPath, transforms),
//! and the registry settings that refuse the start, named by file and key.
//!
//! The registry is tests/registries/api_particulier.toml, as a provider administration would
//! declare it; only the provider's address is rewritten.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode, Uri};
use broker::client::reason_of;
use broker::event::{Event, Record};
use tonic::Code;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_tests::{BrokerOptions, TestBroker, TestPki, repo_root};

const QF: &str = "caf.quotient_familial";
const ROUTE: &str = "/v3/dss/quotient_familial/identite";
/// The SIRET of `mairie-lyon` in the registry, normalised.
const LYON_SIRET: &str = "21690123100011";

/// API Particulier v3's answer for a parent of two children (its staging data).
const ANSWER: &str = r#"{
  "data": {
    "allocataires": [
      {"nom_naissance": "BERNARD", "nom_usage": null, "prenoms": "JULIEN",
       "date_naissance": "1979-02-27", "sexe": "M"}
    ],
    "enfants": [
      {"nom_naissance": "BERNARD", "nom_usage": null, "prenoms": "THOMAS",
       "date_naissance": "2006-06-08", "sexe": "M"},
      {"nom_naissance": "BERNARD", "nom_usage": null, "prenoms": "LEO",
       "date_naissance": "2011-03-19", "sexe": "M"}
    ],
    "adresse": {"destinataire": "Monsieur BERNARD JULIEN", "numero_libelle_voie": "28 BOULEVARD MICHELET",
                "code_postal_ville": "13008 MARSEILLE", "pays": "FRANCE"},
    "quotient_familial": {"fournisseur": "CNAF", "valeur": 1050, "annee": 2023, "mois": 6,
                          "annee_calcul": 2024, "mois_calcul": 12}
  },
  "links": {},
  "meta": {}
}"#;

/// What the provider received: path, raw query, headers.
type Received = Arc<Mutex<Vec<(Uri, HeaderMap)>>>;

/// A server shaped like API Particulier that records every request and answers [`ANSWER`].
async fn api_particulier() -> anyhow::Result<(SocketAddr, Received)> {
    let received: Received = Arc::default();
    let seen = received.clone();
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
        let seen = seen.clone();
        async move {
            let known = uri.path() == ROUTE;
            if let Ok(mut seen) = seen.lock() {
                seen.push((uri, headers));
            }
            if known {
                (
                    StatusCode::OK,
                    [("content-type", "application/json")],
                    ANSWER,
                )
            } else {
                (
                    StatusCode::NOT_FOUND,
                    [("content-type", "application/json")],
                    "{}",
                )
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, received))
}

fn received(r: &Received) -> Vec<(Uri, HeaderMap)> {
    r.lock().map(|r| r.clone()).unwrap_or_default()
}

/// The committed registry with the provider at `addr` and `edit` applied, written to `dir`.
fn registry(dir: &Path, addr: &str, edit: impl Fn(&str) -> String) -> anyhow::Result<PathBuf> {
    let committed = std::fs::read_to_string(
        repo_root()
            .join("tests")
            .join("registries")
            .join("api_particulier.toml"),
    )?;
    anyhow::ensure!(committed.contains("127.0.0.1:9/"), "no address to rewrite");
    let path = dir.join("registry.toml");
    std::fs::write(&path, edit(&committed.replace("127.0.0.1:9", addr)))?;
    Ok(path)
}

fn pki() -> anyhow::Result<TestPki> {
    TestPki::new("unefois.test", &["caf", "mairie-lyon"])
}

fn fetch(subject: &str, request_id: &str) -> pb::FetchRequest {
    pb::FetchRequest {
        subject: subject.into(),
        attestation_type: QF.into(),
        purpose: "tarification_cantine".into(),
        request_id: request_id.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn api_particulier_gets_the_recipient_and_the_civil_status_and_its_answer_is_mapped()
-> anyhow::Result<()> {
    let (addr, seen) = api_particulier().await?;
    let pki = pki()?;
    let scratch = tempfile::tempdir()?;
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            registry: registry(scratch.path(), &addr.to_string(), str::to_string)?,
            ..Default::default()
        },
    )
    .await?;
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);

    // Born in Marseille (13055), one given name, with a request id.
    let answer = lyon
        .fetch(fetch(
            "pivot:BERNARD|JULIEN|1979-02-27|M|13055|99100",
            "cantine-2026-0042",
        ))
        .await?
        .into_inner();
    let requests = received(&seen);
    assert_eq!(requests.len(), 1, "one call to the provider");
    let (uri, headers) = &requests[0];
    assert_eq!(uri.path(), ROUTE);
    assert_eq!(
        uri.query(),
        Some(
            "anneeDateNaissance=1979\
             &codeCogInseeCommuneNaissance=13055\
             &codeCogInseePaysNaissance=99100\
             &jourDateNaissance=27\
             &moisDateNaissance=2\
             &nomNaissance=BERNARD\
             &prenoms%5B%5D=JULIEN\
             &recipient=21690123100011\
             &sexeEtatCivil=M"
        )
    );
    // The correlation header is the request id as the audit log records it, never the
    // caller's own id.
    let receipt = answer.receipt.expect("a receipt");
    let Event::Exchange(event) = Record::decode(&receipt.entry)?.event else {
        anyhow::bail!("the receipt is not an exchange");
    };
    let recorded = event.request_id.clone().expect("a recorded request id");
    assert!(recorded.starts_with("hmac:"), "{recorded}");
    assert_eq!(headers["x-correlation-id"], recorded.as_str());
    assert_eq!(headers["x-unefois-request-id"], recorded.as_str());
    assert_eq!(headers["x-unefois-consumer"], "mairie-lyon");
    let everything = format!("{uri} {headers:?}");
    assert!(!everything.contains("cantine-2026-0042"), "{everything}");

    // The attestation: every claim the answer holds, through JSONPath and transforms.
    let claims = answer.attestation.expect("an attestation").claims;
    let value = |name: &str| claims.get(name).and_then(|c| c.value.clone());
    use pb::claim_value::Value;
    assert_eq!(value("quotient_familial"), Some(Value::IntegerValue(1050)));
    assert_eq!(
        value("mois_reference"),
        Some(Value::StringValue("2023-06".into()))
    );
    assert_eq!(value("nombre_enfants"), Some(Value::IntegerValue(2)));
    assert_eq!(
        value("allocataire_depuis"),
        None,
        "API Particulier holds no date of opening of rights"
    );
    assert_eq!(claims.len(), 3, "{claims:?}");

    // Born abroad (Spain), two given names, a name with a space, no request id: spaces are
    // percent-encoded, `prenoms[]` repeats, the empty commune and correlation id are left out.
    lyon.fetch(fetch(
        "pivot:DUPONT-DE L ILE|MARIE CLAIRE|1985-07-04|F||99134",
        "",
    ))
    .await?;
    let requests = received(&seen);
    assert_eq!(requests.len(), 2, "one call per fetch");
    let (uri, headers) = &requests[1];
    assert_eq!(
        uri.query(),
        Some(
            "anneeDateNaissance=1985\
             &codeCogInseePaysNaissance=99134\
             &jourDateNaissance=4\
             &moisDateNaissance=7\
             &nomNaissance=DUPONT-DE%20L%20ILE\
             &prenoms%5B%5D=MARIE&prenoms%5B%5D=CLAIRE\
             &recipient=21690123100011\
             &sexeEtatCivil=F"
        )
    );
    assert!(headers.get("x-correlation-id").is_none(), "{headers:?}");
    assert!(uri.to_string().contains(LYON_SIRET));
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subject_that_is_not_pivot_is_refused_without_calling_the_provider() -> anyhow::Result<()>
{
    let (addr, seen) = api_particulier().await?;
    let pki = pki()?;
    let scratch = tempfile::tempdir()?;
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            registry: registry(scratch.path(), &addr.to_string(), str::to_string)?,
            ..Default::default()
        },
    )
    .await?;
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);
    // More refusals than the breaker's failure threshold (3): they are the caller's errors.
    for _ in 0..5 {
        let status = lyon
            .fetch(fetch("siret:11000201100044", ""))
            .await
            .expect_err("a siret: subject for an identity route");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(reason_of(&status), Some(ErrorReason::InvalidArgument));
        let message = status.message();
        assert!(
            message.starts_with("subject: ") && message.contains("must be a pivot: identity"),
            "{message}"
        );
        assert!(!message.contains("11000201100044"), "{message}");
    }
    assert!(received(&seen).is_empty(), "the provider was never called");
    // The provider's breaker is still closed: a pivot: subject is served at once.
    let answer = lyon
        .fetch(fetch("pivot:BERNARD|JULIEN|1979-02-27|M|13055|99100", ""))
        .await?
        .into_inner();
    assert!(answer.attestation.is_some());
    assert_eq!(received(&seen).len(), 1);
    broker.stop().await
}

/// The registry error a broker started on the committed registry with `edit` refuses with:
/// (key, message), after checking that it names the file.
async fn start_error(
    pki: &TestPki,
    edit: impl Fn(&str) -> String,
) -> anyhow::Result<(String, String)> {
    let scratch = tempfile::tempdir()?;
    let unedited =
        std::fs::read_to_string(registry(scratch.path(), "127.0.0.1:9", str::to_string)?)?;
    let path = registry(scratch.path(), "127.0.0.1:9", &edit)?;
    anyhow::ensure!(
        std::fs::read_to_string(&path)? != unedited,
        "the edit changed nothing"
    );
    let started = TestBroker::start_with_registry(pki.dir(), path.clone()).await;
    let error = match started {
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
    anyhow::ensure!(e.file == path, "another file: {text}");
    anyhow::ensure!(
        text.contains(&path.display().to_string()) && text.contains(&e.key),
        "the message names the file and the key: {text}"
    );
    Ok((e.key.clone(), e.message.clone()))
}

#[tokio::test]
async fn bad_placeholders_mappings_and_sirets_refuse_the_start_naming_file_and_key()
-> anyhow::Result<()> {
    let pki = pki()?;
    type Edit = Box<dyn Fn(&str) -> String>;
    let replace = |from: &'static str, to: &'static str| -> Edit {
        Box::new(move |s: &str| s.replacen(from, to, 1))
    };
    let rows: Vec<(&str, Edit, &str, &[&str])> = vec![
        (
            "unknown placeholder in a query parameter",
            replace(
                "recipient = \"{consumer_siret}\"",
                "recipient = \"{siret}\"",
            ),
            "attestation_types[0].adapter.query.recipient",
            &["unknown placeholder {siret}", "{consumer_siret}"],
        ),
        (
            "unclosed placeholder in a header",
            replace("= \"{request_id}\"", "= \"{request_id\""),
            "attestation_types[0].adapter.headers.X-Correlation-Id",
            &["without its '}'"],
        ),
        (
            "unknown placeholder in the URL",
            replace(
                "identite\"\nallow_plain_http",
                "identite/{nir}\"\nallow_plain_http",
            ),
            "attestation_types[0].adapter.url",
            &["unknown placeholder {nir}"],
        ),
        (
            "given names as one parameter inside a longer value",
            replace("\"{given_names[]}\"", "\"x{given_names[]}\""),
            "attestation_types[0].adapter.query.\"prenoms[]\"",
            &["whole value"],
        ),
        (
            "a consumer whose SIRET the provider needs declares none",
            replace("siret = \"216 901 231 00011\"", ""),
            "habilitations[0].consumer",
            &[
                "attestation_types[0].adapter.query.recipient sends {consumer_siret}",
                "\"mairie-lyon\" declares no siret",
                "empty recipient",
            ],
        ),
        (
            "a SIRET with a wrong check digit",
            replace("216 901 231 00011", "216 901 231 00012"),
            "participants[1].siret",
            &["check digit"],
        ),
        (
            "a count into a string claim",
            replace(
                "mois_reference = { format",
                "mois_reference = { count = \"$.data.enfants\", format",
            ),
            "attestation_types[0].adapter.claims.mois_reference",
            &["one transform per claim, not count and format"],
        ),
        (
            "a transform into a claim of another type",
            replace(
                "nombre_enfants = { count = \"$.data.enfants\" }",
                "nombre_enfants = { decimal = \"$.data.enfants\" }",
            ),
            "attestation_types[0].adapter.claims.nombre_enfants.decimal",
            &["decimal gives number, and the claim is declared integer"],
        ),
        (
            "a format naming a path it does not declare",
            replace("{annee}-{mois:02}", "{annee}-{moi:02}"),
            "attestation_types[0].adapter.claims.mois_reference.format",
            &["{moi} names no entry of paths"],
        ),
        (
            "a JSONPath that does not parse",
            replace(
                "\"$.data.quotient_familial.valeur\"",
                "\"$.data.quotient_familial.valeur[\"",
            ),
            "attestation_types[0].adapter.claims.quotient_familial",
            &["JSONPath"],
        ),
        (
            "a path that is neither a pointer nor a JSONPath",
            replace(
                "\"$.data.quotient_familial.valeur\"",
                "\"data.quotient_familial.valeur\"",
            ),
            "attestation_types[0].adapter.claims.quotient_familial",
            &["neither a JSON pointer"],
        ),
        (
            "a transform the closed set does not have",
            replace(
                "nombre_enfants = { count = \"$.data.enfants\" }",
                "nombre_enfants = { sum = \"$.data.enfants\" }",
            ),
            "attestation_types[0].adapter.claims.nombre_enfants.sum",
            &["not a key of a transform table", "count"],
        ),
    ];
    for (label, edit, key, needles) in rows {
        let (k, message) = anyhow::Context::context(start_error(&pki, edit).await, label)?;
        assert_eq!(k, key, "{label}: {message}");
        for needle in needles {
            assert!(message.contains(needle), "{label}: {message}");
        }
    }
    Ok(())
}
