//! An out-of-process provider in Python (examples/providers/python/provider.py, grpcio) behind
//! the `grpc` adapter: the claims come through, an unknown subject is NOT_FOUND, a dead
//! provider is UNAVAILABLE, and the broker reconnects by itself when the provider comes back
//! on the same port or closes its connections with HTTP/2 GOAWAY, even all of them at once.
//!
//! The provider's virtual environment and stubs are set up by `.ci/run`; when they are missing
//! (a plain `cargo test` on a fresh clone) the test runs the same `bootstrap.py` itself.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use broker::client::reason_of;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::Code;
use tonic::transport::Channel;
use unefois_certs::{Pki, Validity};
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_tests::clients::grant_consent;
use unefois_tests::{BrokerOptions, TestBroker, TestPki, repo_root};

const TYPE: &str = "mesr.statut_etudiant";
const PURPOSE: &str = "tarif_etudiant";

/// The example provider's folder.
fn provider_dir() -> PathBuf {
    repo_root().join("examples/providers/python")
}

/// A running provider.py, killed on drop.
struct PythonProvider {
    child: Child,
    port: u16,
}

impl PythonProvider {
    /// Starts provider.py on the MESR dataset, on `port` (0: any), with extra flags; its log
    /// (stderr) is appended to `log`.
    async fn start(port: u16, log: &Path, extra: &[&str]) -> anyhow::Result<PythonProvider> {
        let python = unefois_tests::example_python()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut child = Command::new(python)
            .arg(provider_dir().join("provider.py"))
            .arg("--dataset")
            .arg(repo_root().join("examples/data/mesr.statut_etudiant.json"))
            .arg("--port")
            .arg(port.to_string())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting provider.py")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("provider.py did not say where it listens within 30 s")??
            .context("provider.py exited before listening")?;
        let port = line
            .strip_prefix("listening on 127.0.0.1:")
            .and_then(|p| p.trim().parse::<u16>().ok())
            .with_context(|| format!("unexpected first line from provider.py: {line:?}"))?;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(PythonProvider { child, port })
    }

    /// Kills the process and waits for it.
    async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// The sample registry with the MESR type served by the gRPC provider at `port`.
fn registry(dir: &Path, port: u16) -> anyhow::Result<PathBuf> {
    registry_with_adapter(
        dir,
        &format!(
            "adapter = {{ kind = \"grpc\", endpoint = \"http://127.0.0.1:{port}\", allow_plain_http = true }}"
        ),
    )
}

/// The sample registry with the MESR type's adapter line replaced by `adapter`.
fn registry_with_adapter(dir: &Path, adapter: &str) -> anyhow::Result<PathBuf> {
    unefois_tests::copy_sample_files(dir)?;
    let sample = std::fs::read_to_string(repo_root().join("examples/registry.toml"))?;
    let edited = sample.replacen(
        "adapter = { kind = \"static\", dataset = \"data/mesr.statut_etudiant.json\" }",
        adapter,
        1,
    );
    ensure!(
        edited != sample,
        "the sample registry's MESR adapter was not found"
    );
    let path = dir.join("registry.toml");
    std::fs::write(&path, edited)?;
    Ok(path)
}

fn fetch(subject: &str) -> pb::FetchRequest {
    pb::FetchRequest {
        subject: subject.into(),
        attestation_type: TYPE.into(),
        purpose: PURPOSE.into(),
        ..Default::default()
    }
}

/// Records the consent of `subject`, through the guichet of the city of Lyon, for Lyon.
async fn consent(broker: &TestBroker, subject: &str) -> anyhow::Result<()> {
    grant_consent(broker, subject, TYPE, PURPOSE).await?;
    Ok(())
}

/// Fetches eve's student status and checks the attestation: the allowed claims, nothing else.
async fn fetch_eve(lyon: &mut ExchangeClient<Channel>) -> anyhow::Result<()> {
    let answer = lyon.fetch(fetch("test:eve")).await?.into_inner();
    let claims = answer.attestation.context("no attestation")?.claims;
    let mut names: Vec<&str> = claims.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["annee_universitaire", "est_etudiant"]);
    assert_eq!(
        claims["est_etudiant"].value,
        Some(pb::claim_value::Value::BooleanValue(true))
    );
    assert_eq!(
        claims["annee_universitaire"].value,
        Some(pb::claim_value::Value::StringValue("2026-2027".into()))
    );
    Ok(())
}

async fn start_broker(
    pki: &TestPki,
    scratch: &Path,
    port: u16,
) -> anyhow::Result<(TestBroker, ExchangeClient<Channel>)> {
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            registry: registry(scratch, port)?,
            ..Default::default()
        },
    )
    .await?;
    consent(&broker, "test:eve").await?;
    let lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);
    Ok((broker, lyon))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_provider_answers_fails_and_comes_back() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let log = scratch.path().join("provider.log");
    let provider = PythonProvider::start(0, &log, &[]).await?;
    let port = provider.port;
    let pki = TestPki::for_sample_registry()?;
    let (broker, mut lyon) = start_broker(&pki, scratch.path(), port).await?;

    // Up: the claims the habilitation allows, typed through the ClaimValue oneof.
    fetch_eve(&mut lyon).await?;
    // The provider learnt who asks, why and under which consent, and logged it, not the subject.
    let logged = std::fs::read_to_string(&log)?;
    assert!(
        logged.contains(
            "type=mesr.statut_etudiant consumer=mairie-lyon purpose=tarif_etudiant legal_basis=consent:"
        ),
        "{logged}"
    );

    // A subject the provider does not know: NOT_FOUND from the provider, SUBJECT_NOT_FOUND.
    consent(&broker, "test:zoe").await?;
    let unknown = lyon.fetch(fetch("test:zoe")).await.expect_err("found");
    assert_eq!(
        (unknown.code(), reason_of(&unknown)),
        (Code::NotFound, Some(ErrorReason::SubjectNotFound)),
        "{}",
        unknown.message()
    );

    // Down: the connection is refused, even after the adapter's retries.
    provider.kill().await?;
    let down = lyon.fetch(fetch("test:eve")).await.expect_err("answered");
    assert_eq!(
        (down.code(), reason_of(&down)),
        (Code::Unavailable, Some(ErrorReason::ProviderUnavailable)),
        "{}",
        down.message()
    );

    // Back on the same port: the broker's channel reconnects by itself.
    let provider = PythonProvider::start(port, &log, &[]).await?;
    assert_eq!(provider.port, port);
    fetch_eve(&mut lyon).await?;
    fetch_eve(&mut lyon).await?;

    provider.kill().await?;
    let logged = std::fs::read_to_string(&log)?;
    assert!(
        !logged.contains("test:eve") && !logged.contains("test:zoe"),
        "a subject reached the provider's log: {logged}"
    );
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_broker_survives_goaway_from_the_provider() -> anyhow::Result<()> {
    // The provider closes every connection older than 100 ms with an HTTP/2 GOAWAY.
    let scratch = tempfile::tempdir()?;
    let log = scratch.path().join("provider.log");
    let provider = PythonProvider::start(0, &log, &["--max-connection-age-ms", "100"]).await?;
    let pki = TestPki::for_sample_registry()?;
    let (broker, lyon) = start_broker(&pki, scratch.path(), provider.port).await?;

    // Sequential and concurrent fetches over a second and a half: several GOAWAYs, no failure.
    let started = std::time::Instant::now();
    let mut rounds = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        let mut calls = Vec::new();
        for _ in 0..8 {
            let mut client = lyon.clone();
            calls.push(tokio::spawn(async move { fetch_eve(&mut client).await }));
        }
        for call in calls {
            call.await??;
        }
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if rounds < 10 {
        bail!("only {rounds} rounds in 1.5 s");
    }

    provider.kill().await?;
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_gets_through_when_every_provider_connection_closes_at_once() -> anyhow::Result<()>
{
    // The adapter keeps N connections to its provider, opened together; a GOAWAY from a
    // provider with a maximum connection age closes them all at once. A relay between broker
    // and provider stands for that: it closes the first N connections it accepts, and passes
    // the next ones through to the provider.
    let scratch = tempfile::tempdir()?;
    let log = scratch.path().join("provider.log");
    let provider = PythonProvider::start(0, &log, &[]).await?;
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let relay_port = relay.local_addr()?.port();
    let closing = broker::provider_connections();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&accepted);
    let provider_port = provider.port;
    let relay = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = relay.accept().await {
            if counted.fetch_add(1, Ordering::SeqCst) < closing {
                continue; // dropped: closed at once
            }
            tokio::spawn(async move {
                if let Ok(mut outbound) =
                    tokio::net::TcpStream::connect(("127.0.0.1", provider_port)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    let pki = TestPki::for_sample_registry()?;
    let (broker, mut lyon) = start_broker(&pki, scratch.path(), relay_port).await?;

    // One fetch: a try on each closing connection, then one on a fresh connection.
    fetch_eve(&mut lyon).await?;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        closing + 1,
        "connections the fetch opened, with {closing} closing"
    );

    relay.abort();
    provider.kill().await?;
    broker.stop().await
}

/// The sample registry with the MESR type served over mTLS by the gRPC provider at `port`
/// (checked as `localhost`): the CA trusted for the provider and the broker's client
/// certificate and key are copied to `dir/prov`, beside the registry.
fn mtls_registry(
    dir: &Path,
    port: u16,
    ca: &Path,
    client_cert: &Path,
    client_key: &Path,
) -> anyhow::Result<PathBuf> {
    let prov = dir.join("prov");
    std::fs::create_dir_all(&prov)?;
    std::fs::copy(ca, prov.join("ca.crt"))?;
    std::fs::copy(client_cert, prov.join("client.crt"))?;
    std::fs::copy(client_key, prov.join("client.key"))?;
    registry_with_adapter(
        dir,
        &format!(
            "adapter = {{ kind = \"grpc\", endpoint = \"https://127.0.0.1:{port}\", \
             server_name = \"localhost\", ca_file = \"prov/ca.crt\", \
             client_cert_file = \"prov/client.crt\", client_key_file = \"prov/client.key\" }}"
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_broker_reaches_a_python_provider_over_mtls() -> anyhow::Result<()> {
    // The provider's own PKI: its CA, the broker's client certificate (EKU clientAuth) and the
    // provider's server certificate for localhost and 127.0.0.1.
    let provider_pki_dir = tempfile::tempdir()?;
    let provider_pki = Pki::init(provider_pki_dir.path(), "unefois.test", &["unefois-broker"])?;
    let server = provider_pki.issue_broker(&["localhost", "127.0.0.1"], &Validity::default())?;
    let ca = provider_pki.ca_cert_path();

    let scratch = tempfile::tempdir()?;
    let log = scratch.path().join("provider.log");
    let tls = [
        "--tls-cert".to_owned(),
        server.cert_path.display().to_string(),
        "--tls-key".to_owned(),
        server.key_path.display().to_string(),
        "--ca".to_owned(),
        ca.display().to_string(),
    ];
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let provider = PythonProvider::start(0, &log, &tls).await?;

    // A broker holding a client certificate of the provider's CA: the claims come through.
    let good = scratch.path().join("good");
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            registry: mtls_registry(
                &good,
                provider.port,
                &ca,
                &provider_pki.cert_path("unefois-broker"),
                &provider_pki.key_path("unefois-broker"),
            )?,
            ..Default::default()
        },
    )
    .await?;
    consent(&broker, "test:eve").await?;
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);
    fetch_eve(&mut lyon).await?;
    let logged = std::fs::read_to_string(&log)?;
    assert!(logged.contains("over mTLS"), "{logged}");
    assert!(
        logged.contains("type=mesr.statut_etudiant consumer=mairie-lyon"),
        "{logged}"
    );

    // A broker whose client certificate comes from another CA (same trust domain, same name):
    // the provider refuses the handshake, the fetch is UNAVAILABLE.
    let rogue_pki_dir = tempfile::tempdir()?;
    let rogue_pki = Pki::init(rogue_pki_dir.path(), "unefois.test", &["unefois-broker"])?;
    let bad = scratch.path().join("bad");
    let other_pki = TestPki::for_sample_registry()?;
    let refused = TestBroker::start_with(
        other_pki.dir(),
        BrokerOptions {
            registry: mtls_registry(
                &bad,
                provider.port,
                &ca,
                &rogue_pki.cert_path("unefois-broker"),
                &rogue_pki.key_path("unefois-broker"),
            )?,
            ..Default::default()
        },
    )
    .await?;
    consent(&refused, "test:eve").await?;
    let mut lyon_refused = ExchangeClient::new(refused.channel("mairie-lyon").await?);
    let denied = lyon_refused
        .fetch(fetch("test:eve"))
        .await
        .expect_err("a client certificate of another CA was accepted");
    assert_eq!(
        (denied.code(), reason_of(&denied)),
        (Code::Unavailable, Some(ErrorReason::ProviderUnavailable)),
        "{}",
        denied.message()
    );

    // The first broker is still served.
    fetch_eve(&mut lyon).await?;

    provider.kill().await?;
    refused.stop().await?;
    broker.stop().await
}

/// The sample registry with the MESR type served by the gRPC provider at `port`, and the
/// example provider's keys declared for the MESR (proof of origin, required).
fn signed_registry(dir: &Path, port: u16) -> anyhow::Result<PathBuf> {
    let path = registry(dir, port)?;
    std::fs::create_dir_all(dir.join("keys"))?;
    std::fs::copy(
        provider_dir().join("origin-jwks.json"),
        dir.join("keys/mesr.jwks.json"),
    )?;
    let text = std::fs::read_to_string(&path)?;
    let participant = "id = \"mesr\"\nname = \"Ministère de l'Enseignement supérieur et de la Recherche\"\nroles = [\"provider\"]";
    let edited = text.replacen(
        participant,
        &format!("{participant}\norigin = {{ jwks = \"keys/mesr.jwks.json\" }}"),
        1,
    );
    ensure!(
        edited != text,
        "the sample registry's MESR participant was not found"
    );
    std::fs::write(&path, edited)?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_provider_signs_its_answers() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let log = scratch.path().join("provider.log");
    let provider = PythonProvider::start(0, &log, &[]).await?;
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            registry: signed_registry(scratch.path(), provider.port)?,
            ..Default::default()
        },
    )
    .await?;
    consent(&broker, "test:eve").await?;
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);

    // The statement the Python provider signed is carried, and verifies offline with the
    // example's JWKS (examples/providers/python/origin-jwks.json), about eve.
    let answer = lyon.fetch(fetch("test:eve")).await?.into_inner();
    let keys = unefois_proto::v1::registry_client::RegistryClient::new(
        broker.channel("mairie-lyon").await?,
    )
    .get_verifier_keys(pb::GetVerifierKeysRequest {})
    .await?
    .into_inner();
    let envelope = answer.envelope.context("no envelope")?;
    let payload = unefois_tests::offline::verify_envelope(&envelope, &keys.attestation_key)
        .map_err(anyhow::Error::msg)?;
    let jwks = std::fs::read_to_string(provider_dir().join("origin-jwks.json"))?;
    let stated = unefois_tests::offline::verify_statement(
        &payload,
        &jwks,
        Some(("test:eve", &answer.origin_subject_key)),
    )
    .map_err(anyhow::Error::msg)?;
    assert_eq!(payload["origin"]["kid"], "unefois-example-provider-1");
    assert_eq!(
        stated["claims"],
        serde_json::json!({"est_etudiant": true, "annee_universitaire": "2026-2027"})
    );
    let logged = std::fs::read_to_string(&log)?;
    assert!(
        logged.contains("signing with key unefois-example-provider-1"),
        "{logged}"
    );
    provider.kill().await?;

    // The same provider told not to sign: the registry requires it, the answer is refused.
    let unsigned = PythonProvider::start(0, &log, &["--no-signing"]).await?;
    let other = scratch.path().join("unsigned");
    let other_pki = TestPki::for_sample_registry()?;
    let refusing = TestBroker::start_with(
        other_pki.dir(),
        BrokerOptions {
            registry: signed_registry(&other, unsigned.port)?,
            ..Default::default()
        },
    )
    .await?;
    consent(&refusing, "test:eve").await?;
    let mut lyon = ExchangeClient::new(refusing.channel("mairie-lyon").await?);
    let refused = lyon.fetch(fetch("test:eve")).await.expect_err("unsigned");
    assert_eq!(
        (refused.code(), reason_of(&refused)),
        (
            Code::Unavailable,
            Some(ErrorReason::ProviderInvalidResponse)
        ),
        "{}",
        refused.message()
    );
    unsigned.kill().await?;
    refusing.stop().await?;
    broker.stop().await
}
