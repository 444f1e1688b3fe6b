//! Identity evidence end to end: Consents.Grant and Guichet.ListAccesses from a guichet need the
//! citizen's OIDC ID token, signed by an identity provider of the registry, for the calling
//! guichet's audience, fresh, and proving the request's very subject.

use broker::idp::dev::{self, DevKey};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tonic::transport::Channel;
use tonic::{Code, Response, Status};
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::consents_client::ConsentsClient;
use unefois_proto::v1::guichet_client::GuichetClient;
use unefois_tests::sample::LYON;
use unefois_tests::{TestBroker, TestPki, dev_idp_key, id_token};

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

/// Asserts that a call was refused as a precondition failure, with `reason`.
#[track_caller]
fn refused<T: std::fmt::Debug>(result: Result<Response<T>, Status>, reason: ErrorReason) {
    unefois_tests::refusals::refused(result, Code::FailedPrecondition, reason);
}

/// Claims for test:alice at mairie-lyon, issued `age` seconds ago.
fn alice_claims(age: i64) -> anyhow::Result<Value> {
    Ok(dev::claims(
        "test:alice",
        LYON,
        OffsetDateTime::now_utc() - time::Duration::seconds(age),
    )?)
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

/// The start-up error of a broker on `registry`, as a registry error (file, key, message).
async fn registry_refused(
    pki: &TestPki,
    registry: &std::path::Path,
) -> anyhow::Result<broker::registry::RegistryError> {
    let started = TestBroker::start_with(
        pki.dir(),
        unefois_tests::BrokerOptions {
            registry: registry.to_path_buf(),
            ..Default::default()
        },
    )
    .await;
    let error = match started {
        Ok(broker) => {
            broker.stop().await?;
            anyhow::bail!("the broker started on {}", registry.display());
        }
        Err(e) => e,
    };
    match error.downcast::<broker::BrokerError>() {
        Ok(broker::BrokerError::Registry(e)) => Ok(e),
        Ok(other) => anyhow::bail!("not a registry error: {other}"),
        Err(other) => anyhow::bail!("not a broker error: {other:#}"),
    }
}

/// A production identity provider's JWKS in `dir/prod-idp/jwks.json`: a fresh key, plus the
/// committed development key under another `kid` when `with_dev_key`.
fn production_jwks(dir: &std::path::Path, with_dev_key: bool) -> anyhow::Result<()> {
    let mut jwks = DevKey::generate("prod-2025")?.jwks();
    if with_dev_key {
        let mut dev = dev_idp_key().jwks()["keys"][0].clone();
        dev["kid"] = json!("prod-2024");
        jwks["keys"]
            .as_array_mut()
            .ok_or_else(|| anyhow::anyhow!("keys"))?
            .push(dev);
    }
    std::fs::create_dir_all(dir.join("prod-idp"))?;
    std::fs::write(
        dir.join("prod-idp/jwks.json"),
        serde_json::to_vec_pretty(&jwks)?,
    )?;
    Ok(())
}

const DEV_IDP: &str = "issuer = \"https://idp.unefois.test\"\njwks = \"dev-idp/jwks.json\"";
const DEV_AGENTS: &str = "issuer = \"https://agents.unefois.test\"\njwks = \"dev-idp/jwks.json\"";
const PROD_AGENTS: &str =
    "issuer = \"https://agents.production.example\"\njwks = \"prod-idp/jwks.json\"";

/// The sample registry as a production federation's: no test people, no committed key but the
/// citizens' identity provider's (each case puts its own there); the agents' provider a real one.
fn production(s: &str) -> String {
    s.replacen(DEV_AGENTS, PROD_AGENTS, 1)
        .replacen(
            "allow_test_subjects = true",
            "allow_test_subjects = false",
            1,
        )
        // The example gRPC provider's origin key is committed too, refused likewise.
        .replacen(
            "origin = { jwks = \"providers/python/origin-jwks.json\" }",
            "",
            1,
        )
}

#[tokio::test]
async fn a_production_federation_never_trusts_the_development_identity_provider()
-> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let cases: [(&str, bool, &str, &str); 3] = [
        // The sample's development provider, as is.
        ("dev", false, DEV_IDP, "https://idp.unefois.test"),
        // The committed public key under a production-looking issuer.
        (
            "renamed",
            false,
            "issuer = \"https://idp.production.example\"\njwks = \"dev-idp/jwks.json\"",
            "public key",
        ),
        // The committed key hidden among the keys of a real provider, under another kid.
        (
            "hidden",
            true,
            "issuer = \"https://idp.production.example\"\njwks = \"prod-idp/jwks.json\"",
            "key 1 of prod-idp/jwks.json",
        ),
    ];
    for (label, with_dev_key, provider, why) in cases {
        let dir = scratch.path().join(label);
        std::fs::create_dir_all(&dir)?;
        production_jwks(&dir, with_dev_key)?;
        let registry = unefois_tests::sample_registry_with(&dir, |s| {
            production(s).replacen(DEV_IDP, provider, 1)
        })?;
        let e = registry_refused(&pki, &registry).await?;
        let text = e.to_string();
        assert_eq!(e.file, registry, "{label}: {text}");
        assert_eq!(e.key, "identity_providers[0]", "{label}: {text}");
        assert!(
            e.message.contains(why)
                && e.message.contains("allow_test_subjects = false")
                && e.message.contains("anyone can mint"),
            "{label}: {text}"
        );
    }
    // The agents' development provider (issue 23) is refused likewise: its issuer is the
    // development one's and its key the committed one.
    let dir = scratch.path().join("agents");
    std::fs::create_dir_all(&dir)?;
    production_jwks(&dir, false)?;
    let registry = unefois_tests::sample_registry_with(&dir, |s| {
        production(s)
            .replacen(
                DEV_IDP,
                "issuer = \"https://idp.production.example\"\njwks = \"prod-idp/jwks.json\"",
                1,
            )
            .replacen(PROD_AGENTS, DEV_AGENTS, 1)
    })?;
    let e = registry_refused(&pki, &registry).await?;
    assert_eq!(e.key, "agent_identity_providers[0]", "{e}");
    assert!(
        e.message.contains("https://agents.unefois.test") && e.message.contains("anyone can mint"),
        "{e}"
    );

    // A production provider of its own: the production federation starts.
    let dir = scratch.path().join("production");
    std::fs::create_dir_all(&dir)?;
    production_jwks(&dir, false)?;
    let registry = unefois_tests::sample_registry_with(&dir, |s| {
        production(s).replacen(
            DEV_IDP,
            "issuer = \"https://idp.production.example\"\njwks = \"prod-idp/jwks.json\"",
            1,
        )
    })?;
    let broker = TestBroker::start_with(
        pki.dir(),
        unefois_tests::BrokerOptions {
            registry: registry.clone(),
            ..Default::default()
        },
    )
    .await?;
    // A reload that brings the development key back is rejected; the registry in force serves.
    production_jwks(&dir, true)?;
    let rejected = broker
        .reload()
        .await?
        .expect_err("the development key is back");
    assert!(
        rejected.contains(&registry.display().to_string())
            && rejected.contains("identity_providers[0]")
            && rejected.contains("development identity provider's public key"),
        "{rejected}"
    );
    // The production provider in force: a token forged with the development key is not
    // identity evidence.
    let pivot = "pivot:DUPONT|MARIE|1985-07-14|F|69123|99100";
    refused(
        ConsentsClient::new(broker.channel(LYON).await?)
            .grant(grant(pivot, id_token(pivot, LYON)))
            .await,
        ErrorReason::IdentityEvidenceInvalid,
    );
    broker.stop().await
}

#[tokio::test]
async fn a_development_federation_keeps_its_identity_provider_and_cannot_reload_out_of_it()
-> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let dir = tempfile::tempdir()?;
    let registry = unefois_tests::sample_registry_with(dir.path(), |s| format!("{s}\n# a copy\n"))?;
    let broker = TestBroker::start_with(
        pki.dir(),
        unefois_tests::BrokerOptions {
            registry: registry.clone(),
            ..Default::default()
        },
    )
    .await?;
    let mut lyon = ConsentsClient::new(broker.channel(LYON).await?);
    lyon.grant(grant("test:alice", id_token("test:alice", LYON)))
        .await?;
    // The operator turns the federation into a production one but forgets the provider.
    std::fs::write(&registry, production(&std::fs::read_to_string(&registry)?))?;
    let rejected = broker
        .reload()
        .await?
        .expect_err("the development provider stayed");
    assert!(
        rejected.contains(&registry.display().to_string())
            && rejected.contains("identity_providers[0]")
            && rejected.contains("https://idp.unefois.test"),
        "{rejected}"
    );
    // The development registry in force keeps serving, its provider with it.
    lyon.grant(grant("test:bob", id_token("test:bob", LYON)))
        .await?;
    broker.stop().await
}

/// A reload from a development federation into a production one ends the development identity
/// provider: its page of fictitious people, its codes signed with the committed key, and the
/// citizens' login that led there. Before the fix, what the broker started with stayed served.
#[tokio::test]
async fn a_reload_into_production_ends_the_development_identity_provider() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let dir = tempfile::tempdir()?;
    unefois_tests::copy_sample_files(dir.path())?;
    let registry = dir.path().join("registry.toml");
    std::fs::copy(unefois_tests::sample_registry(), &registry)?;
    let broker = TestBroker::start_with(
        pki.dir(),
        unefois_tests::BrokerOptions {
            registry: registry.clone(),
            web: true,
            ..Default::default()
        },
    )
    .await?;
    let mut browser = unefois_tests::web::Browser::new(
        broker.web_addr.ok_or_else(|| anyhow::anyhow!("no pages"))?,
    )?;
    let served = browser.get("/dev-idp/authorize").await?;
    assert_ne!(served.status, 404, "served in development");

    production_jwks(dir.path(), false)?;
    let sample = std::fs::read_to_string(unefois_tests::sample_registry())?;
    std::fs::write(
        &registry,
        production(&sample).replacen(
            DEV_IDP,
            "issuer = \"https://idp.production.example\"\njwks = \"prod-idp/jwks.json\"",
            1,
        ),
    )?;
    broker.reload().await?.map_err(anyhow::Error::msg)?;
    let ended = browser.get("/dev-idp/authorize").await?;
    assert_eq!(ended.status, 404, "{}", ended.body);
    let login = browser.get("/citizen/login").await?;
    assert!(
        !login.location().unwrap_or_default().contains("/dev-idp/"),
        "{login:?}"
    );
    broker.stop().await
}
