//! The sample registry's walkthrough (README, docs/adapters.md §6): one attestation type of each
//! adapter kind, each answered by what the walkthrough starts: the broker's own dataset
//! (`static`), the example server shaped like API Particulier (`http`, examples/providers/http,
//! Python's standard library), and the Python gRPC provider (`grpc`, examples/providers/python,
//! its answers signed). Only the providers' ports differ from the committed file.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use broker::client::reason_of;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::Code;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_tests::requests::fetch;
use unefois_tests::{TestBroker, TestPki, repo_root};

/// A person the example HTTP provider knows (examples/providers/http/people.json), born in Lyon.
const DUPONT: &str = "pivot:DUPONT|MARIE CLAIRE|1985-07-14|F|69123|99100";

/// Starts `program args`, returns it (killed on drop) and the port of its first stdout line,
/// which must start with `prefix`.
async fn start(program: &Path, args: &[&str], prefix: &str) -> anyhow::Result<(Child, u16)> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .context("the provider did not say where it listens within 60 s")??
        .context("the provider exited before listening")?;
    let port = line
        .strip_prefix(prefix)
        .and_then(|rest| rest.split(['/', ' ']).next())
        .and_then(|p| p.trim().parse::<u16>().ok())
        .with_context(|| format!("unexpected first line: {line:?}"))?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, port))
}

fn claims(answer: &pb::FetchResponse) -> anyhow::Result<Vec<(String, pb::claim_value::Value)>> {
    let attestation = answer.attestation.as_ref().context("no attestation")?;
    let mut claims: Vec<_> = attestation
        .claims
        .iter()
        .filter_map(|(name, value)| value.value.clone().map(|v| (name.clone(), v)))
        .collect();
    claims.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(claims)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_adapter_kind_of_the_sample_registry_answers_out_of_the_box() -> anyhow::Result<()> {
    use pb::claim_value::Value::{BooleanValue, IntegerValue, StringValue};

    let examples = repo_root().join("examples");
    let (_http, http_port) = start(
        Path::new("python3"),
        &[
            examples
                .join("providers/http/provider.py")
                .to_str()
                .context("path")?,
            "--port",
            "0",
        ],
        "listening on https://127.0.0.1:",
    )
    .await?;
    let (_grpc, grpc_port) = start(
        &unefois_tests::example_python()?,
        &[
            examples
                .join("providers/python/provider.py")
                .to_str()
                .context("path")?,
            "--dataset",
            examples
                .join("data/cnous.statut_boursier.json")
                .to_str()
                .context("path")?,
            "--port",
            "0",
        ],
        "listening on 127.0.0.1:",
    )
    .await?;

    let pki = TestPki::for_sample_registry()?;
    let dir = pki.scratch();
    let registry = unefois_tests::sample_registry_with(&dir, |text| {
        text.replace("127.0.0.1:8443", &format!("127.0.0.1:{http_port}"))
            .replace("127.0.0.1:50061", &format!("127.0.0.1:{grpc_port}"))
    })?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry).await?;
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);

    // static: the broker's own dataset.
    let answer = lyon
        .fetch(fetch(
            "test:alice",
            "dgfip.revenu_fiscal_reference",
            "aide_energie",
        ))
        .await?
        .into_inner();
    assert_eq!(
        claims(&answer)?,
        [
            (
                "nombre_parts".to_string(),
                pb::claim_value::Value::NumberValue(3.0)
            ),
            ("revenu_fiscal_reference".to_string(), IntegerValue(23870)),
        ]
    );

    // http: API Particulier's identity route, the civil status from the pivot subject, the
    // commune's SIRET as recipient (the example server answers 400 without it), the answer
    // mapped through JSONPath, a format and a count.
    let answer = lyon
        .fetch(fetch(
            DUPONT,
            "api-particulier.quotient_familial",
            "tarification_cantine",
        ))
        .await?
        .into_inner();
    assert_eq!(
        claims(&answer)?,
        [
            ("mois_reference".to_string(), StringValue("2026-09".into())),
            ("nombre_enfants".to_string(), IntegerValue(1)),
            ("quotient_familial".to_string(), IntegerValue(742)),
        ]
    );
    // A person the provider does not know: its 404 carries code 37003, "nobody known".
    let unknown = lyon
        .fetch(fetch(
            "pivot:MARTIN|PAUL|1990-01-02|M|75056|99100",
            "api-particulier.quotient_familial",
            "tarification_cantine",
        ))
        .await
        .expect_err("an unknown person");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert_eq!(reason_of(&unknown), Some(ErrorReason::SubjectNotFound));

    // grpc: the CNOUS's provider, its signature carried in the attestation.
    let answer = lyon
        .fetch(fetch("test:eve", "cnous.statut_boursier", "tarif_etudiant"))
        .await?
        .into_inner();
    assert_eq!(
        claims(&answer)?,
        [
            (
                "annee_universitaire".to_string(),
                StringValue("2026-2027".into())
            ),
            ("echelon".to_string(), StringValue("5".into())),
            ("est_boursier".to_string(), BooleanValue(true)),
        ]
    );
    let keys = unefois_proto::v1::registry_client::RegistryClient::new(
        broker.channel("mairie-lyon").await?,
    )
    .get_verifier_keys(pb::GetVerifierKeysRequest {})
    .await?
    .into_inner();
    let envelope = answer.envelope.as_ref().context("no envelope")?;
    let payload = unefois_tests::offline::verify_envelope(envelope, &keys.attestation_key)
        .map_err(anyhow::Error::msg)?;
    let jwks = std::fs::read_to_string(examples.join("providers/python/origin-jwks.json"))?;
    unefois_tests::offline::verify_statement(
        &payload,
        &jwks,
        Some(("test:eve", &answer.origin_subject_key)),
    )
    .map_err(anyhow::Error::msg)?;
    assert_eq!(payload["origin"]["kid"], "unefois-example-provider-1");

    broker.stop().await
}
