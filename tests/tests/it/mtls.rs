//! The mTLS listener admits registered participants only, and says why it refuses the others.

use std::time::Duration;

use broker::AcceptLimits;
use broker::client::reason_of;
use time::OffsetDateTime;
use tokio::io::AsyncReadExt;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use unefois_certs::Validity;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::registry_client::RegistryClient;
use unefois_tests::{BrokerOptions, TestBroker, TestPki};

async fn who_am_i(broker: &TestBroker, name: &str) -> Result<pb::WhoAmIResponse, tonic::Status> {
    let channel = match broker.channel(name).await {
        Ok(c) => c,
        // A refused handshake may already surface at connect time with TLS 1.2 semantics;
        // report it as the RPC failure the caller would see.
        Err(e) => return Err(tonic::Status::unavailable(e.to_string())),
    };
    RegistryClient::new(channel)
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map(tonic::Response::into_inner)
}

/// A refusal and all its causes, as a client's log would show them.
fn error_chain(status: &tonic::Status) -> String {
    let mut text = status.to_string();
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        text.push_str(&format!(": {e}"));
        cause = e.source();
    }
    text
}

async fn habilitation_ids(broker: &TestBroker, name: &str) -> anyhow::Result<Vec<String>> {
    let mut client = RegistryClient::new(broker.channel(name).await?);
    let list = client
        .list_habilitations(pb::ListHabilitationsRequest {})
        .await?
        .into_inner();
    Ok(list.habilitations.into_iter().map(|h| h.id).collect())
}

#[tokio::test]
async fn registered_participants_read_their_own_view_of_the_registry() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;

    let me = who_am_i(&broker, "mairie-lyon").await?;
    assert_eq!(me.participant, "mairie-lyon");
    assert_eq!(me.name, "Ville de Lyon");
    assert_eq!(me.trust_domain, "unefois.test");
    assert_eq!(me.registry_sha256.len(), 64);
    let mut roles: Vec<_> = me.roles().collect();
    roles.sort_by_key(|r| *r as i32);
    assert_eq!(roles, vec![pb::Role::Consumer, pb::Role::Guichet]);

    // A consumer sees its own habilitations; a participant without any sees none.
    let lyon = habilitation_ids(&broker, "mairie-lyon").await?;
    assert_eq!(
        lyon,
        vec![
            "mairie-lyon.caf.quotient_familial",
            "mairie-lyon.dgfip.revenu_fiscal_reference",
            "mairie-lyon.mesr.statut_etudiant",
            "mairie-lyon.api-particulier.quotient_familial",
            "mairie-lyon.cnous.statut_boursier",
        ]
    );
    assert!(habilitation_ids(&broker, "mairie-test").await?.is_empty());
    // A provider sees who may read its data; an auditor sees everything.
    assert_eq!(
        habilitation_ids(&broker, "caf").await?,
        vec![
            "mairie-lyon.caf.quotient_familial",
            "ccas-lyon.caf.quotient_familial",
            "france-services-lyon.caf.quotient_familial"
        ]
    );
    assert_eq!(habilitation_ids(&broker, "dgfip").await?.len(), 3);
    assert_eq!(habilitation_ids(&broker, "cnil").await?.len(), 9);

    // An agent of a mediation structure is identified with its structure.
    let agent = who_am_i(&broker, "france-services-lyon/a.martin").await?;
    assert_eq!(agent.participant, "france-services-lyon");
    assert_eq!(agent.agent, "a.martin");
    broker.stop().await
}

#[tokio::test]
async fn a_connection_without_client_certificate_is_refused() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let ca = std::fs::read(pki.pki.ca_cert_path())?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    let result = match Endpoint::from_shared(format!("https://{}", broker.addr))?
        .tls_config(tls)?
        .connect()
        .await
    {
        Ok(channel) => RegistryClient::new(channel)
            .who_am_i(pb::WhoAmIRequest {})
            .await
            .map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    assert!(result.is_err(), "a call without certificate was answered");
    // The broker still serves registered participants.
    assert_eq!(who_am_i(&broker, "dgfip").await?.participant, "dgfip");
    broker.stop().await
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let other = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    // Same SPIFFE ID, same file names, but issued by another CA.
    let ca = std::fs::read(pki.pki.ca_cert_path())?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(
            std::fs::read(other.pki.cert_path("mairie-lyon"))?,
            std::fs::read(other.pki.key_path("mairie-lyon"))?,
        ))
        .domain_name("localhost");
    let result = match Endpoint::from_shared(format!("https://{}", broker.addr))?
        .tls_config(tls)?
        .connect()
        .await
    {
        Ok(channel) => RegistryClient::new(channel)
            .who_am_i(pb::WhoAmIRequest {})
            .await
            .map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    assert!(result.is_err(), "a certificate of another CA was admitted");
    assert!(who_am_i(&broker, "mairie-lyon").await.is_ok());
    broker.stop().await
}

#[tokio::test]
async fn a_revoked_certificate_is_refused() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    pki.pki.revoke("caf")?;
    pki.pki.revoke("france-services-lyon/a.martin")?;
    let broker = TestBroker::start(pki.dir()).await?;
    let refused = who_am_i(&broker, "caf")
        .await
        .expect_err("a revoked certificate was admitted");
    // The client is told why: the TLS alert reaches it before the connection is dropped.
    assert!(
        error_chain(&refused).contains("CertificateRevoked"),
        "{}",
        error_chain(&refused)
    );
    assert!(
        who_am_i(&broker, "france-services-lyon/a.martin")
            .await
            .is_err()
    );
    // Revoking one certificate leaves the others alone.
    assert_eq!(who_am_i(&broker, "dgfip").await?.participant, "dgfip");
    broker.stop().await
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_refused() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let now = OffsetDateTime::now_utc();
    pki.pki.issue_participant(
        "dgfip",
        &Validity {
            not_before: now - time::Duration::days(30),
            not_after: now - time::Duration::days(1),
        },
    )?;
    pki.pki.issue_participant(
        "mesr",
        &Validity {
            not_before: now + time::Duration::days(1),
            not_after: now + time::Duration::days(30),
        },
    )?;
    let broker = TestBroker::start(pki.dir()).await?;
    assert!(who_am_i(&broker, "dgfip").await.is_err(), "expired");
    assert!(who_am_i(&broker, "mesr").await.is_err(), "not yet valid");
    assert!(who_am_i(&broker, "caf").await.is_ok());
    broker.stop().await
}

/// A certificate that expires while its connection is open is refused at the next call: the
/// connection, kept alive, no longer outlives it. Before the fix, only the handshake checked.
#[tokio::test]
async fn a_certificate_that_expires_on_an_open_connection_is_refused_at_the_next_call()
-> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let now = OffsetDateTime::now_utc();
    pki.pki.issue_participant(
        "dgfip",
        &Validity {
            not_before: now - time::Duration::days(1),
            not_after: now + time::Duration::seconds(3),
        },
    )?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mut dgfip = RegistryClient::new(broker.channel("dgfip").await?);
    dgfip.who_am_i(pb::WhoAmIRequest {}).await?;
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let refused = dgfip
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect_err("served past its certificate");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("expired"), "{refused:?}");
    broker.stop().await
}

#[tokio::test]
async fn a_valid_certificate_of_an_unregistered_participant_is_unauthenticated()
-> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    pki.pki.issue_participant("inconnu", &Validity::default())?;
    // An agent certificate under a structure that is not a mediator is not an identity either.
    pki.pki
        .issue_agent("mairie-lyon", "guichetier", &Validity::default())?;
    let broker = TestBroker::start(pki.dir()).await?;

    let refused = who_am_i(&broker, "inconnu").await.expect_err("admitted");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(reason_of(&refused), Some(ErrorReason::UnknownParticipant));
    assert!(
        refused
            .message()
            .contains("spiffe://unefois.test/participant/inconnu"),
        "{}",
        refused.message()
    );

    let refused = who_am_i(&broker, "mairie-lyon/guichetier")
        .await
        .expect_err("admitted");
    assert_eq!(reason_of(&refused), Some(ErrorReason::UnknownParticipant));
    broker.stop().await
}

#[tokio::test]
async fn silent_tcp_clients_do_not_stall_other_handshakes() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            accept: AcceptLimits {
                handshake_timeout: Duration::from_millis(800),
                ..AcceptLimits::default()
            },
            ..BrokerOptions::default()
        },
    )
    .await?;
    let mut silent = Vec::new();
    for _ in 0..64 {
        silent.push(tokio::net::TcpStream::connect(broker.addr).await?);
    }
    // A real participant is served at once, well before the silent ones time out.
    let started = std::time::Instant::now();
    let me = tokio::time::timeout(Duration::from_millis(700), who_am_i(&broker, "caf")).await??;
    assert_eq!(me.participant, "caf");
    assert!(started.elapsed() < Duration::from_millis(700));

    // The silent clients are dropped once their handshake time is up.
    let mut first = silent.swap_remove(0);
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buf))
        .await?
        .unwrap_or(0);
    assert_eq!(n, 0, "a silent client was kept open");
    broker.stop().await
}

#[tokio::test]
async fn an_expired_crl_stops_the_broker_from_starting() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let now = OffsetDateTime::now_utc();
    pki.pki.write_crl(
        now - time::Duration::days(31),
        now - time::Duration::days(1),
    )?;
    let error = match TestBroker::start(pki.dir()).await {
        Ok(_) => panic!("the broker started with an expired CRL"),
        Err(e) => e,
    };
    let text = format!("{error:#}");
    assert!(text.contains("crl.pem"), "{text}");
    assert!(text.contains("expired"), "{text}");
    Ok(())
}

#[tokio::test]
async fn health_and_reflection_answer_on_the_mtls_listener() -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let channel = broker.channel("dinum").await?;
    let status = HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "unefois.v1.Registry".into(),
        })
        .await?
        .into_inner();
    assert_eq!(status.status(), ServingStatus::Serving);

    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let Some(response) = responses.message().await? else {
        panic!("no reflection response");
    };
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "unefois.v1.Registry",
        "unefois.v1.Exchange",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }

    // The unauthenticated probe lives on the operational listener only.
    let (code, body) = unefois_tests::http_get(broker.ops_addr, "/healthz").await?;
    assert_eq!((code, body.trim()), (200, "ok"));
    broker.stop().await
}
