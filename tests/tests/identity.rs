//! Identity evidence end to end: Consents.Grant and Guichet.ListAccesses from a guichet need the
//! citizen's OIDC ID token, signed by an identity provider of the registry, for the calling
//! guichet's audience, fresh, and proving the request's very subject.

use broker::grpc::status::reason_of;
use broker::identity::dev::{self, DevKey};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tonic::transport::Channel;
use tonic::{Code, Response, Status};
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::consents_client::ConsentsClient;
use unefois_proto::v1::guichet_client::GuichetClient;
use unefois_tests::{TestBroker, TestPki, dev_idp_key, id_token};

const LYON: &str = "mairie-lyon";

fn grant(subject: &str, id_token: String) -> pb::GrantConsentRequest {
    pb::GrantConsentRequest {
        subject: subject.into(),
        consumer: LYON.into(),
        attestation_types: vec!["caf.quotient_familial".into()],
        purpose: "tarification_cantine".into(),
        valid_days: 30,
        id_token,
        ..Default::default()
    }
}

fn refused<T: std::fmt::Debug>(result: Result<Response<T>, Status>, reason: ErrorReason) {
    let status = match result {
        Ok(answer) => panic!("expected {reason:?}, answered: {:?}", answer.get_ref()),
        Err(status) => status,
    };
    assert_eq!(
        (status.code(), reason_of(&status)),
        (Code::FailedPrecondition, Some(reason)),
        "{}",
        status.message()
    );
}

/// Claims for test:alice at mairie-lyon, issued `age` seconds ago.
fn alice_claims(age: i64) -> anyhow::Result<Value> {
    dev::claims(
        "test:alice",
        LYON,
        OffsetDateTime::now_utc() - time::Duration::seconds(age),
    )
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    if let Some(map) = claims.as_object_mut() {
        map.insert(key.into(), value);
    }
    claims
}

async fn start() -> anyhow::Result<(TestPki, TestBroker, ConsentsClient<Channel>)> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let lyon = ConsentsClient::new(broker.channel(LYON).await?);
    Ok((pki, broker, lyon))
}

#[tokio::test]
async fn grant_refuses_missing_and_invalid_identity_evidence() -> anyhow::Result<()> {
    let (_pki, broker, mut lyon) = start().await?;
    let key = dev_idp_key();

    refused(
        lyon.grant(grant("test:alice", String::new())).await,
        ErrorReason::IdentityEvidenceRequired,
    );
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let stranger = DevKey::generate(&key.kid)?;
    let invalid = [
        // Expired.
        key.sign(&with(alice_claims(200)?, "exp", json!(now - 120)))?,
        // Stale: issued longer ago than the provider's 600 s.
        key.sign(&with(alice_claims(900)?, "exp", json!(now + 300)))?,
        // From the future.
        key.sign(&alice_claims(-600)?)?,
        // For another guichet's audience.
        id_token("test:alice", "mairie-villeurbanne"),
        // Signed by an unknown key under the right kid, and under an unknown kid.
        stranger.sign(&alice_claims(0)?)?,
        DevKey::generate("another-kid")?.sign(&alice_claims(0)?)?,
        // An issuer the registry does not know.
        key.sign(&with(alice_claims(0)?, "iss", json!("https://idp.example")))?,
        // Tampered payload.
        {
            let t = id_token("test:alice", LYON);
            let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
            let bob = id_token("test:bob", LYON);
            parts[1] = bob.split('.').nth(1).unwrap_or_default().to_string();
            parts.join(".")
        },
        "not.a.token".to_string(),
    ];
    for token in invalid {
        refused(
            lyon.grant(grant("test:alice", token)).await,
            ErrorReason::IdentityEvidenceInvalid,
        );
    }
    // Valid evidence of someone else.
    refused(
        lyon.grant(grant("test:alice", id_token("test:bob", LYON)))
            .await,
        ErrorReason::SubjectMismatch,
    );
    // And valid evidence of alice grants.
    lyon.grant(grant("test:alice", id_token("test:alice", LYON)))
        .await?;
    broker.stop().await
}

#[tokio::test]
async fn a_franceconnect_identity_grants_for_its_pivot_subject() -> anyhow::Result<()> {
    let (_pki, broker, mut lyon) = start().await?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let token = dev_idp_key().sign(&json!({
        "iss": dev::ISSUER,
        "aud": LYON,
        "iat": now,
        "exp": now + 300,
        "sub": "b6048e95bb134ec5b1d1e1fa69f287172e91722b9354d637a1bcf2ebb0fd2ef5v1",
        "family_name": "Dupont-- de  l’Île",
        "given_name": "Marie  Clàire",
        "birthdate": "1985-07-14",
        "gender": "female",
        "birthplace": "69123",
        "birthcountry": "99100",
    }))?;
    // The documented normal form (docs/subjects.md) is the subject the token proves.
    let canonical = "pivot:DUPONT-DE L ILE|MARIE CLAIRE|1985-07-14|F|69123|99100";
    refused(
        lyon.grant(grant(
            "pivot:DUPONT-DE L ILE|MARIE|1985-07-14|F|69123|99100",
            token.clone(),
        ))
        .await,
        ErrorReason::SubjectMismatch,
    );
    let granted = lyon.grant(grant(canonical, token)).await?.into_inner();
    assert!(granted.consent.is_some());
    // The CLI's minting round-trips a canonical pivot subject.
    lyon.grant(grant(canonical, id_token(canonical, LYON)))
        .await?;
    broker.stop().await
}

#[tokio::test]
async fn list_accesses_requires_identity_evidence() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mut lyon = GuichetClient::new(broker.channel(LYON).await?);
    let request = |id_token: String| pb::ListAccessesRequest {
        subject: "test:carol".into(),
        id_token,
        ..Default::default()
    };
    refused(
        lyon.list_accesses(request(String::new())).await,
        ErrorReason::IdentityEvidenceRequired,
    );
    refused(
        lyon.list_accesses(request(id_token("test:carol", "mairie-villeurbanne")))
            .await,
        ErrorReason::IdentityEvidenceInvalid,
    );
    refused(
        lyon.list_accesses(request(id_token("test:alice", LYON)))
            .await,
        ErrorReason::SubjectMismatch,
    );
    lyon.list_accesses(request(id_token("test:carol", LYON)))
        .await?;
    broker.stop().await
}
