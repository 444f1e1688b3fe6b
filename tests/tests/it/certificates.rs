//! The rest of the certificate matrix (mtls.rs has none, another CA, revoked, expired, not yet
//! valid, unknown participant): a certificate of the federation CA naming another trust domain,
//! the broker's server certificate presented as a client one, and a client limited to TLS 1.2.
//! Each is refused, and the broker keeps serving the others.

use std::sync::Arc;

use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use unefois_proto::v1 as pb;
use unefois_proto::v1::registry_client::RegistryClient;
use unefois_tests::{TestBroker, TestPki, install_crypto};

/// WhoAmI as `name`: the participant, or why the call failed (handshake or status).
async fn who_am_i(broker: &TestBroker, name: &str) -> Result<String, String> {
    let channel = broker.channel(name).await.map_err(|e| e.to_string())?;
    RegistryClient::new(channel)
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map(|r| r.into_inner().participant)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[tokio::test]
async fn a_certificate_of_the_federation_ca_for_another_trust_domain_is_refused()
-> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    // Signed by the federation's own CA key, for spiffe://other.test/participant/caf.
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(pki.dir().join("ca.key"))?)?;
    let ca_der = pki.pki.ca_certificate().clone();
    let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        "spiffe://other.test/participant/caf".try_into()?,
    )];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    std::fs::write(pki.dir().join("intruder.crt"), cert.pem())?;
    std::fs::write(pki.dir().join("intruder.key"), key.serialize_pem())?;

    let refused = who_am_i(&broker, "intruder").await;
    // The chain verifies (same CA); the identity is refused at the first call.
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.starts_with("Unauthenticated") && e.contains("other.test")),
        "another trust domain: {refused:?}"
    );
    assert_eq!(who_am_i(&broker, "caf").await, Ok("caf".to_string()));
    broker.stop().await
}

#[tokio::test]
async fn the_broker_server_certificate_is_refused_as_a_client_certificate() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    // broker.crt / broker.key: the listener's own certificate (serverAuth only).
    let refused = who_am_i(&broker, "broker").await;
    assert!(
        refused.is_err(),
        "a server certificate authenticated a client: {refused:?}"
    );
    assert_eq!(who_am_i(&broker, "dgfip").await, Ok("dgfip".to_string()));
    broker.stop().await
}

#[tokio::test]
async fn a_client_limited_to_tls_1_2_cannot_connect() -> anyhow::Result<()> {
    install_crypto();
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.pki.ca_certificate().clone())?;
    let (cert, key) = broker::client::credential_paths(pki.dir(), "caf");
    let certs = unefois_certs::load_certificates(&cert)?;
    let key = unefois_certs::load_private_key(&key)?;
    let config = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(broker.addr).await?;
    let handshake = connector
        .connect(rustls_pki_types::ServerName::try_from("localhost")?, tcp)
        .await;
    let refused = handshake.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        refused.contains("ProtocolVersion"),
        "a TLS 1.2 handshake was not refused for its version: {refused}"
    );
    assert_eq!(who_am_i(&broker, "caf").await, Ok("caf".to_string()));
    broker.stop().await
}
