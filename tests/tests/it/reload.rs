//! Live reload of the registry and the CRL (SIGHUP for the binary): a new habilitation applies
//! without a restart, a bad registry is rejected while the old one keeps serving, every reload is
//! recorded, and a certificate revoked by the reload is refused on a connection that was
//! already open (checked per call, not only at the handshake).

use broker::client::reason_of;
use tonic::Code;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_tests::{TestBroker, TestPki, sample_registry_with};

const HABILITATION: &str = "
[[habilitations]]
id = \"mairie-test.dgfip.revenu_fiscal_reference\"
consumer = \"mairie-test\"
attestation_type = \"dgfip.revenu_fiscal_reference\"
purposes = [\"tarification_cantine\"]
claims = [\"revenu_fiscal_reference\"]
legal_basis = { law = \"CRPA, art. L. 114-8\" }
expires = 2028-12-31
";

fn rfr() -> pb::FetchRequest {
    pb::FetchRequest {
        subject: "test:alice".into(),
        attestation_type: "dgfip.revenu_fiscal_reference".into(),
        purpose: "tarification_cantine".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_registry_reloads_without_restart_and_a_bad_one_is_rejected() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let dir = pki.scratch();
    let registry = sample_registry_with(&dir, |s| format!("{s}\n# reload test\n"))?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry.clone()).await?;
    let mut commune = ExchangeClient::new(broker.channel("mairie-test").await?);
    let before = commune.fetch(rfr()).await.expect_err("no habilitation yet");
    assert_eq!(reason_of(&before), Some(ErrorReason::NoHabilitation));

    // The operator adds a habilitation and reloads: the same connection is now served.
    let original = std::fs::read_to_string(&registry)?;
    std::fs::write(&registry, format!("{original}{HABILITATION}"))?;
    let sha = broker.reload().await?.map_err(anyhow::Error::msg)?;
    commune.fetch(rfr()).await?;

    // A broken registry is rejected, named by file and key; the one in force keeps serving.
    std::fs::write(
        &registry,
        format!(
            "{original}{}",
            HABILITATION.replace("mairie-test\"\nattestation", "nobody\"\nattestation")
        ),
    )?;
    let rejected = broker.reload().await?.expect_err("unknown consumer");
    assert!(
        rejected.contains("registry.toml") && rejected.contains("habilitations["),
        "{rejected}"
    );
    commune.fetch(rfr()).await?;

    // Each applied reload is on the record, with the registry's hash; the rejected one is not.
    let mut audit =
        unefois_proto::v1::audit_client::AuditClient::new(broker.channel("cnil").await?);
    let loads: Vec<String> = audit
        .list_events(pb::ListEventsRequest {
            kind: "registry_loaded".into(),
            limit: 100,
            ..Default::default()
        })
        .await?
        .into_inner()
        .events
        .iter()
        .map(|e| e.registry_sha256.clone())
        .collect();
    assert_eq!(loads.len(), 2, "{loads:?}");
    assert_eq!(loads[1], sha);
    assert_ne!(loads[0], loads[1]);

    // Another trust domain is refused: the broker's keys and its callers' certificates are
    // the one it started under's (without the check every call was then refused).
    std::fs::write(
        &registry,
        original.replace(
            "trust_domain = \"unefois.test\"",
            "trust_domain = \"autre.test\"",
        ),
    )?;
    let rejected = broker.reload().await?.expect_err("another trust domain");
    assert!(
        rejected.contains("autre.test") && rejected.contains("restart"),
        "{rejected}"
    );
    commune.fetch(rfr()).await?;
    broker.stop().await
}

#[tokio::test]
async fn a_certificate_revoked_by_a_reload_is_refused_on_an_open_connection() -> anyhow::Result<()>
{
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);
    lyon.fetch(rfr()).await?;

    pki.pki.revoke("mairie-lyon")?;
    broker.reload().await?.map_err(anyhow::Error::msg)?;
    // The same HTTP/2 connection, opened before the revocation.
    let refused = lyon.fetch(rfr()).await.expect_err("revoked");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(reason_of(&refused), Some(ErrorReason::CertificateRevoked));
    // Others are still served.
    ExchangeClient::new(broker.channel("ccas-lyon").await?)
        .fetch(pb::FetchRequest {
            purpose: "aide_energie".into(),
            ..rfr()
        })
        .await?;
    broker.stop().await
}

/// A CRL renewed and reloaded is the one new connections are checked against: before the fix
/// the handshakes kept the CRL the broker started with, and once it expired (30 days) every new
/// connection was refused, whatever `renew-crl` and the reload had said.
#[tokio::test]
async fn a_crl_renewed_and_reloaded_serves_the_handshakes_that_follow() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let now = time::OffsetDateTime::now_utc();
    pki.pki.write_crl(
        now - time::Duration::minutes(1),
        now + time::Duration::seconds(4),
    )?;
    let broker = TestBroker::start(pki.dir()).await?;
    pki.pki.write_crl(now, now + unefois_certs::CRL_VALIDITY)?;
    broker.reload().await?.map_err(anyhow::Error::msg)?;
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    // The CRL the broker started with has expired: a new connection is checked against the
    // renewed one.
    ExchangeClient::new(broker.channel("mairie-lyon").await?)
        .fetch(rfr())
        .await?;
    broker.stop().await
}

/// A reload refuses a CRL older than the one in force (a copy put back from a backup) and one
/// the federation's CA did not sign: either would give revoked certificates their access back
/// on the connections already open (checked per call against the CRL in force).
#[tokio::test]
async fn an_older_or_forged_crl_is_refused_by_a_reload() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mut caf = ExchangeClient::new(broker.channel("mairie-lyon").await?);
    caf.fetch(rfr()).await?;
    let crl = pki.dir().join("crl.pem");
    let before = std::fs::read(&crl)?;
    pki.pki.revoke("mairie-lyon")?;
    broker.reload().await?.map_err(anyhow::Error::msg)?;
    let revoked = std::fs::read(&crl)?;

    std::fs::write(&crl, &before)?;
    let older = broker
        .reload()
        .await?
        .expect_err("an older CRL was put in force");
    assert!(older.contains("older than the one in force"), "{older}");
    let other = TestPki::for_sample_registry()?;
    std::fs::copy(other.dir().join("crl.pem"), &crl)?;
    let forged = broker
        .reload()
        .await?
        .expect_err("another CA's CRL was put in force");
    assert!(
        forged.contains("not signed by the federation's CA"),
        "{forged}"
    );

    // The CRL in force still revokes Lyon, on the connection open since before.
    let refused = caf.fetch(rfr()).await.expect_err("revoked");
    assert_eq!(reason_of(&refused), Some(ErrorReason::CertificateRevoked));
    std::fs::write(&crl, &revoked)?;
    broker.reload().await?.map_err(anyhow::Error::msg)?;
    broker.stop().await
}

/// The `registry_loaded` entries, decoded, as the auditor `cnil` reads them.
async fn registry_loads(broker: &TestBroker) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut audit =
        unefois_proto::v1::audit_client::AuditClient::new(broker.channel("cnil").await?);
    audit
        .list_events(pb::ListEventsRequest {
            kind: "registry_loaded".into(),
            limit: 100,
            ..Default::default()
        })
        .await?
        .into_inner()
        .events
        .iter()
        .map(|e| Ok(serde_json::from_slice(&e.entry)?))
        .collect()
}

/// The registry hash as docs/audit-log.md says to recompute it from an entry's manifest.
fn recomputed(entry: &serde_json::Value) -> anyhow::Result<String> {
    let files = entry["files"]
        .as_object()
        .ok_or_else(|| anyhow::anyhow!("no manifest in {entry}"))?;
    let mut keys: Vec<&String> = files.keys().collect();
    keys.sort();
    let mut text = String::from("unefois-registry-manifest/v1\n");
    for key in keys {
        text.push_str(&format!(
            "{key} {}\n",
            files[key].as_str().unwrap_or_default()
        ));
    }
    Ok(unefois_tests::sha256_hex(text.as_bytes()))
}

#[tokio::test]
async fn the_recorded_registry_hash_covers_the_files_it_references() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let dir = pki.scratch();
    let registry = sample_registry_with(&dir, |s| format!("{s}\n# manifest test\n"))?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry.clone()).await?;
    let dataset = dir.join("data/caf.quotient_familial.json");
    let dataset_key = "attestation_types[0].adapter.dataset";
    let first = registry_loads(&broker).await?.remove(0);
    // The manifest names the registry file and every file it references that is not a secret,
    // each with the SHA-256 of its bytes; the recorded hash is the manifest's.
    let files = &first["files"];
    assert_eq!(
        files["(registry)"],
        unefois_tests::sha256_hex(&std::fs::read(&registry)?)
    );
    assert_eq!(
        files[dataset_key],
        unefois_tests::sha256_hex(&std::fs::read(&dataset)?)
    );
    assert_eq!(
        files["identity_providers[0].jwks"],
        unefois_tests::sha256_hex(&std::fs::read(dir.join("dev-idp/jwks.json"))?)
    );
    assert_eq!(first["registry_sha256"], recomputed(&first)?);

    // Only the dataset changes: a reload records a new hash, and the manifest says which file.
    let mut people: serde_json::Value = serde_json::from_slice(&std::fs::read(&dataset)?)?;
    people["test:zoe"] = serde_json::json!({ "quotient_familial": 512, "mois_reference": "2026-10", "nombre_enfants": 2, "allocataire_depuis": "2020-01-01" });
    std::fs::write(&dataset, serde_json::to_vec_pretty(&people)?)?;
    let sha = broker.reload().await?.map_err(anyhow::Error::msg)?;
    let loads = registry_loads(&broker).await?;
    assert_eq!(loads.len(), 2);
    let second = &loads[1];
    assert_eq!(second["registry_sha256"], sha.as_str());
    assert_ne!(second["registry_sha256"], first["registry_sha256"]);
    assert_eq!(second["registry_sha256"], recomputed(second)?);
    let changed: Vec<&String> = second["files"]
        .as_object()
        .map(|m| {
            m.keys()
                .filter(|k| second["files"][*k] != first["files"][*k])
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(changed, vec![dataset_key]);
    // Each exchange records the hash in force.
    let mut lyon = ExchangeClient::new(broker.channel("mairie-lyon").await?);
    let answer = lyon.fetch(rfr()).await?.into_inner();
    let entry: serde_json::Value = serde_json::from_slice(
        &answer
            .receipt
            .ok_or_else(|| anyhow::anyhow!("no receipt"))?
            .entry,
    )?;
    assert_eq!(entry["registry_sha256"], sha.as_str());
    broker.stop().await
}

/// Registry.WhoAmI on `channel`: its status code and reason, `None` when answered.
async fn agent_call(
    channel: tonic::transport::Channel,
) -> Option<(Code, Option<ErrorReason>, String)> {
    unefois_proto::v1::registry_client::RegistryClient::new(channel)
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .err()
        .map(|s| {
            // The message and its sources: a TLS alert is in a transport error's sources.
            let mut said = s.message().to_string();
            let mut source = std::error::Error::source(&s);
            while let Some(e) = source {
                said += &format!(": {e}");
                source = e.source();
            }
            (s.code(), reason_of(&s), said)
        })
}

#[tokio::test]
async fn revoking_a_structure_refuses_its_agents_after_a_reload() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let agent = broker.channel("france-services-lyon/a.martin").await?;
    assert_eq!(agent_call(agent.clone()).await, None, "the agent is served");

    // `unefois certs revoke france-services-lyon`: the structure and, with it, its agent.
    let revoked = pki.pki.revoke("france-services-lyon")?;
    assert_eq!(
        revoked,
        ["france-services-lyon", "france-services-lyon/a.martin"]
    );
    broker.reload().await?.map_err(anyhow::Error::msg)?;
    // On the connection opened before the revocation, and on a new one (refused at the
    // handshake, or at the call).
    let (code, reason, message) = agent_call(agent).await.expect("refused");
    assert_eq!(
        (code, reason),
        (Code::Unauthenticated, Some(ErrorReason::CertificateRevoked)),
        "{message}"
    );
    // A new connection meets the reloaded CRL at the handshake: refused, and told why (the TLS
    // alert reaches the client at its first call).
    if let Ok(channel) = broker.channel("france-services-lyon/a.martin").await {
        let (code, _, message) = agent_call(channel).await.expect("refused");
        assert!(
            code == Code::Unauthenticated || message.contains("CertificateRevoked"),
            "{code:?} {message}"
        );
    }
    // It can no longer take a mandate for anyone (refused at the handshake or at the call).
    if let Ok(channel) = broker.channel("france-services-lyon/a.martin").await {
        let created = unefois_proto::v1::mandates_client::MandatesClient::new(channel)
            .create(pb::CreateMandateRequest {
                subject: "test:alice".into(),
                purposes: vec!["aide_energie".into()],
                duration_days: 31,
                document_sha256: vec![7; 32],
                id_token: unefois_tests::id_token("test:alice", "france-services-lyon"),
                ..Default::default()
            })
            .await;
        assert!(created.is_err(), "a mandate was created");
    }
    // Others are still served.
    ExchangeClient::new(broker.channel("mairie-lyon").await?)
        .fetch(rfr())
        .await?;
    broker.stop().await
}

#[tokio::test]
async fn an_agent_is_refused_once_its_structure_leaves_the_registry() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let dir = pki.scratch();
    let registry = sample_registry_with(&dir, |s| format!("{s}\n# a copy\n"))?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry.clone()).await?;
    let agent = broker.channel("france-services-lyon/a.martin").await?;
    assert_eq!(agent_call(agent.clone()).await, None, "the agent is served");

    // The operator removes the structure (its participant entry and its habilitations).
    let text = std::fs::read_to_string(&registry)?;
    let without: String = text
        .split("\n[[")
        .filter(|block| !block.contains("\"france-services-lyon"))
        .collect::<Vec<_>>()
        .join("\n[[");
    std::fs::write(&registry, without)?;
    broker.reload().await?.map_err(anyhow::Error::msg)?;
    let (code, reason, message) = agent_call(agent).await.expect("refused");
    assert_eq!(
        (code, reason),
        (Code::Unauthenticated, Some(ErrorReason::UnknownParticipant)),
        "{message}"
    );
    ExchangeClient::new(broker.channel("mairie-lyon").await?)
        .fetch(rfr())
        .await?;
    broker.stop().await
}

/// An attestation type removed by a reload is no longer reported by the health service: it
/// was still SERVING, so that a balancer or a consumer's check kept counting on it. Its
/// provider's name is now unknown (NOT_FOUND), as a type never declared; the others serve.
/// Fails without the fix (SERVING).
#[tokio::test]
async fn a_type_removed_by_a_reload_leaves_the_health_service() -> anyhow::Result<()> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let pki = TestPki::for_sample_registry()?;
    let dir = pki.scratch();
    let registry = sample_registry_with(&dir, |s| format!("{s}\n# reload test\n"))?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry.clone()).await?;
    let mut health = HealthClient::new(broker.channel("dinum").await?);
    let status = |service: &str| HealthCheckRequest {
        service: format!("unefois.provider.{service}"),
    };
    let before = health.check(status("mesr.statut_etudiant")).await?;
    assert_eq!(before.into_inner().status(), ServingStatus::Serving);

    // The type and its one habilitation removed (each a `[[…]]` block of its own).
    let original = std::fs::read_to_string(&registry)?;
    let blocks: Vec<&str> = original.split("\n[[").collect();
    let without = blocks
        .iter()
        .enumerate()
        .filter(|(i, block)| *i == 0 || !block.contains("mesr.statut_etudiant"))
        .map(|(_, block)| *block)
        .collect::<Vec<_>>()
        .join("\n[[");
    assert_eq!(blocks.len(), without.matches("\n[[").count() + 3);
    std::fs::write(&registry, without)?;
    broker.reload().await?.map_err(anyhow::Error::msg)?;

    let after = health.check(status("mesr.statut_etudiant")).await;
    assert_eq!(after.map_err(|s| s.code()).err(), Some(Code::NotFound));
    let kept = health.check(status("caf.quotient_familial")).await?;
    assert_eq!(kept.into_inner().status(), ServingStatus::Serving);
    broker.stop().await
}
