//! Issue 19, the broker attacked by its own participants: what one consumer receives links a
//! person to nothing another receives; a consent lives and dies with the mandate it was
//! recorded under; one ID token serves one sitting of one guichet; a guichet cannot fill the
//! shared tables; the citizen controls their own consents everywhere; pre-fill needs identity
//! evidence; a mandate bounds every act; a revocation reaches answers kept for retries; reads of
//! consents are on the record and take no longer for a busy person; edge cases say what
//! happened. Each test failed on the broker before its fix (docs/security.md).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sha2::Digest as _;

use broker::client::reason_of;
use serde_json::{Value, json};
use tonic::transport::Channel;
use tonic::{Code, Response};
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::audit_client::AuditClient;
use unefois_proto::v1::guichet_client::GuichetClient;
use unefois_proto::v1::mandates_client::MandatesClient;
use unefois_tests::clients::{consents, exchange};
use unefois_tests::refusals::refused;
use unefois_tests::requests::fetch;
use unefois_tests::sample::{AGENT, CANTINE, ENERGIE, ETU, LYON, QF, RFR, STRUCTURE};
use unefois_tests::{
    BrokerOptions, TestBroker, TestPki, dev_idp_key, id_token, sample_registry_with,
};

const CCAS: &str = "ccas-lyon";

fn grant(
    subject: &str,
    consumer: &str,
    ty: &str,
    purpose: &str,
    token: &str,
) -> pb::GrantConsentRequest {
    pb::GrantConsentRequest {
        subject: subject.into(),
        consumer: consumer.into(),
        attestation_types: vec![ty.into()],
        purpose: purpose.into(),
        valid_days: 30,
        id_token: token.into(),
        ..Default::default()
    }
}

fn mandate_request(subject: &str, purposes: &[&str], days: u32) -> pb::CreateMandateRequest {
    pb::CreateMandateRequest {
        subject: subject.into(),
        purposes: purposes.iter().map(|p| p.to_string()).collect(),
        duration_days: days,
        signed_document: b"%PDF mandat signe par la personne et l'aidant".to_vec(),
        id_token: id_token(subject, STRUCTURE),
        ..Default::default()
    }
}

async fn mandates(broker: &TestBroker, name: &str) -> anyhow::Result<MandatesClient<Channel>> {
    Ok(MandatesClient::new(broker.channel(name).await?))
}

async fn guichet(broker: &TestBroker, name: &str) -> anyhow::Result<GuichetClient<Channel>> {
    Ok(GuichetClient::new(broker.channel(name).await?))
}

/// An ID token of the development identity provider with `edit` applied to its claims.
fn token_with(subject: &str, audience: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut claims = broker::idp::dev::claims(subject, audience, time::OffsetDateTime::now_utc())
        .expect("claims");
    edit(&mut claims);
    dev_idp_key().sign(&claims).expect("signed")
}

/// The audit events of `kind`, decoded, read by the CNIL.
async fn events_of(broker: &TestBroker, kind: &str) -> anyhow::Result<Vec<Value>> {
    let page = AuditClient::new(broker.channel("cnil").await?)
        .list_events(pb::ListEventsRequest {
            kind: kind.into(),
            limit: 1000,
            ..Default::default()
        })
        .await?
        .into_inner();
    page.events
        .iter()
        .map(|e| Ok(serde_json::from_slice(&e.entry)?))
        .collect()
}

/// The sample federation plus `mairie-villeurbanne`, a guichet that is not a consumer, with
/// `edit` applied to the registry; the PKI holds a second agent `b.durand` of France Services.
fn federation(edit: impl Fn(&str) -> String) -> anyhow::Result<(TestPki, PathBuf)> {
    let sample = broker::registry::load(&unefois_tests::sample_registry())?;
    let mut ids: Vec<&str> = sample.participants().map(|p| p.id.as_str()).collect();
    ids.push("mairie-villeurbanne");
    let pki = TestPki::new(sample.trust_domain(), &ids)?;
    pki.pki
        .issue_agent(STRUCTURE, "b.durand", &unefois_certs::Validity::default())?;
    let registry = sample_registry_with(&pki.scratch(), |s| {
        edit(&format!(
            "{s}\n[[participants]]\nid = \"mairie-villeurbanne\"\nname = \"Ville de Villeurbanne\"\n\
             roles = [\"guichet\"]\n"
        ))
    })?;
    Ok((pki, registry))
}

/// Every string of a JSON value by its path (`receipt.entry.subject_sealed`, `claims.x`).
fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        Value::Null => {}
        other => {
            out.insert(
                prefix.to_string(),
                other
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_string),
            );
        }
    }
}

/// Everything a consumer receives from one fetch: the attestation as decoded by the broker, its
/// signed payload, the receipt's entry, the checkpoint and the proof, the answer's metadata.
fn received(answer: Response<pb::FetchResponse>) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (key, value) in answer.metadata().clone().into_headers().iter() {
        out.insert(
            format!("metadata.{key}"),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        );
    }
    let answer = answer.into_inner();
    let attestation = answer.attestation.unwrap_or_default();
    let envelope = answer.envelope.unwrap_or_default();
    let receipt = answer.receipt.unwrap_or_default();
    let decoded = json!({
        "id": attestation.id,
        "subject_pseudonym": attestation.subject_pseudonym,
        "audience": attestation.audience,
        "mandate_id": attestation.mandate_id,
        "nonce": hex::encode(&attestation.nonce),
        "legal_basis": attestation.legal_basis.map(|b| json!([b.kind, b.law_citation, b.consent_id])),
    });
    flatten("attestation", &decoded, &mut out);
    flatten(
        "payload",
        &serde_json::from_slice(&envelope.payload)?,
        &mut out,
    );
    for (i, s) in envelope.signatures.iter().enumerate() {
        out.insert(format!("signature[{i}].keyid"), s.keyid.clone());
        out.insert(format!("signature[{i}].sig"), hex::encode(&s.sig));
    }
    flatten("entry", &serde_json::from_slice(&receipt.entry)?, &mut out);
    out.insert("receipt.leaf_index".into(), receipt.leaf_index.to_string());
    out.insert("receipt.checkpoint".into(), receipt.checkpoint);
    for (i, h) in receipt.inclusion_proof.iter().enumerate() {
        out.insert(format!("receipt.proof[{i}]"), hex::encode(h));
    }
    Ok(out)
}

/// What two participants received about one person links it only if a value they share is
/// also one that differs for another person: a value shared because it is the same for
/// everyone (the registry's hash, the purpose, a key id) links nobody. Times are left out (the
/// residual of docs/security.md: two parties that compare clocks can guess). And no long value
/// one participant received about the person appears anywhere in what the other received.
fn assert_unlinkable(
    first: &BTreeMap<String, String>,
    first_other_person: &BTreeMap<String, String>,
    second: &BTreeMap<String, String>,
) {
    // Times, the log's own structure (a checkpoint and the proofs against it are the same for
    // whoever asks at one tree size), and the claims themselves (the facts each consumer is
    // entitled to: two consumers told one fact know it alike, docs/security.md): not what the
    // broker adds about the person.
    let timely = |path: &str| {
        path.starts_with("receipt.")
            || path.starts_with("payload.claims.")
            || ["time", "issued_at", "valid_until", "expires_at", "date"]
                .iter()
                .any(|t| path.ends_with(t))
    };
    for (path, value) in first {
        if timely(path) {
            continue;
        }
        if second.get(path) == Some(value) {
            assert_eq!(
                first_other_person.get(path),
                Some(value),
                "{path} = {value:?} is the same for both participants and says who the person is"
            );
        }
    }
    let everything_else: String = second.values().cloned().collect::<Vec<_>>().join("\n");
    for (path, value) in first {
        let about_the_person = first_other_person.get(path) != Some(value);
        if value.len() >= 16 && about_the_person && !timely(path) {
            assert!(
                !everything_else.contains(value.as_str()),
                "{path} = {value:?} also reached the other participant"
            );
        }
    }
}

#[tokio::test]
async fn what_two_consumers_receive_about_one_person_links_nothing() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    // Both consumers read the same person under the same law, with the same request id.
    let mut got = BTreeMap::new();
    for consumer in [LYON, CCAS] {
        for person in ["test:alice", "test:bob"] {
            let answer = exchange(&broker, consumer)
                .await?
                .fetch(pb::FetchRequest {
                    request_id: format!("dossier-2026-{person}"),
                    ..fetch(person, RFR, ENERGIE)
                })
                .await?;
            got.insert((consumer, person), received(answer)?);
        }
    }
    assert_unlinkable(
        &got[&(LYON, "test:alice")],
        &got[&(LYON, "test:bob")],
        &got[&(CCAS, "test:alice")],
    );
    assert_unlinkable(
        &got[&(CCAS, "test:alice")],
        &got[&(CCAS, "test:bob")],
        &got[&(LYON, "test:alice")],
    );
    // The entry is still about the person, for auditors: the broker opens the seal for them,
    // and finds every entry about Alice.
    let alice: Vec<pb::AuditEvent> = AuditClient::new(broker.channel("cnil").await?)
        .list_events(pb::ListEventsRequest {
            subject: "test:alice".into(),
            kind: "exchange".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .events;
    assert_eq!(alice.len(), 2, "one entry per consumer");
    assert_eq!(alice[0].subject_pseudonym, alice[1].subject_pseudonym);
    assert_eq!(alice[0].subject_pseudonym.len(), 64);

    // The answers about consents and mandates: what the guichet that recorded Alice's consent
    // and the structure she gave a mandate to each receive about her.
    let mut lyon = consents(&broker, LYON).await?;
    let consent = lyon
        .grant(grant(
            "test:alice",
            LYON,
            QF,
            CANTINE,
            &id_token("test:alice", LYON),
        ))
        .await?
        .into_inner()
        .consent
        .unwrap_or_default();
    let bob = lyon
        .grant(grant(
            "test:bob",
            LYON,
            QF,
            CANTINE,
            &id_token("test:bob", LYON),
        ))
        .await?
        .into_inner()
        .consent
        .unwrap_or_default();
    let mandate = mandates(&broker, AGENT)
        .await?
        .create(mandate_request("test:alice", &[CANTINE], 31))
        .await?
        .into_inner()
        .mandate
        .unwrap_or_default();
    let lyon_lists = lyon
        .list(pb::ListConsentsRequest {
            subject: "test:alice".into(),
            id_token: id_token("test:alice", LYON),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(lyon_lists.consents.len(), 1);
    assert_eq!(
        lyon_lists.consents[0].subject_pseudonym,
        consent.subject_pseudonym
    );
    for (who, pseudonym) in [
        ("consent (guichet)", &consent.subject_pseudonym),
        ("mandate (structure)", &mandate.subject_pseudonym),
    ] {
        assert!(!pseudonym.is_empty(), "{who}");
        assert!(
            alice.iter().all(|e| e.subject_pseudonym != *pseudonym),
            "{who}: the audit pseudonym"
        );
    }
    assert_ne!(consent.subject_pseudonym, mandate.subject_pseudonym);
    assert_ne!(consent.subject_pseudonym, bob.subject_pseudonym);
    // Lyon's consent answers carry Lyon's pseudonym of Alice, the one of its attestations.
    assert_eq!(
        consent.subject_pseudonym,
        got[&(LYON, "test:alice")]["attestation.subject_pseudonym"]
    );
    broker.stop().await
}

#[tokio::test]
async fn a_consent_recorded_under_a_mandate_ends_with_it() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mut agent_mandates = mandates(&broker, AGENT).await?;
    let mut agent_consents = consents(&broker, AGENT).await?;
    let mandate = agent_mandates
        .create(mandate_request("test:alice", &[CANTINE], 1))
        .await?
        .into_inner()
        .mandate
        .unwrap_or_default();
    // The agent records a 365-day consent for Lyon under the 1-day mandate, without Alice.
    let consent = agent_consents
        .grant(pb::GrantConsentRequest {
            valid_days: 365,
            mandate_id: mandate.id.clone(),
            ..grant("test:alice", LYON, QF, CANTINE, "")
        })
        .await?
        .into_inner()
        .consent
        .unwrap_or_default();
    let consent_ends = consent.expires_at.as_ref().map_or(0, |t| t.seconds);
    let mandate_ends = mandate.expires_at.as_ref().map_or(0, |t| t.seconds);
    assert!(
        consent_ends > 0 && consent_ends <= mandate_ends,
        "the consent ends with the mandate at the latest: {consent:?} {mandate:?}"
    );
    let mut lyon = exchange(&broker, LYON).await?;
    lyon.fetch(fetch("test:alice", QF, CANTINE)).await?;

    // The mandate is revoked: the consent ends with it, on the record.
    agent_mandates
        .revoke(pb::RevokeMandateRequest {
            mandate_id: mandate.id.clone(),
            ..Default::default()
        })
        .await?;
    refused(
        lyon.fetch(fetch("test:alice", QF, CANTINE)).await,
        Code::FailedPrecondition,
        ErrorReason::ConsentRevoked,
    );
    let seen = consents(&broker, LYON)
        .await?
        .get(pb::GetConsentRequest {
            consent_id: consent.id.clone(),
        })
        .await?
        .into_inner()
        .consent
        .unwrap_or_default();
    assert_eq!(seen.status(), pb::ConsentStatus::Revoked);
    let revoked = events_of(&broker, "consent_revoked").await?;
    assert!(
        revoked
            .iter()
            .any(|e| e["consent_id"] == consent.id && e["ended_with_mandate"] == mandate.id),
        "{revoked:?}"
    );

    // A consent for the structure itself needs Alice's own evidence, even under a mandate.
    let mandate = agent_mandates
        .create(mandate_request("test:alice", &[CANTINE], 31))
        .await?
        .into_inner()
        .mandate
        .unwrap_or_default();
    let for_itself = pb::GrantConsentRequest {
        mandate_id: mandate.id.clone(),
        ..grant("test:alice", STRUCTURE, QF, CANTINE, "")
    };
    refused(
        agent_consents.grant(for_itself.clone()).await,
        Code::FailedPrecondition,
        ErrorReason::IdentityEvidenceRequired,
    );
    agent_consents
        .grant(pb::GrantConsentRequest {
            id_token: id_token("test:alice", STRUCTURE),
            ..for_itself
        })
        .await?;
    broker.stop().await
}

#[tokio::test]
async fn an_id_token_serves_one_sitting_of_one_guichet() -> anyhow::Result<()> {
    let (pki, registry) = federation(str::to_string)?;
    let data = pki.scratch().join("data");
    // A token issued before the broker (re)started: its earlier uses are not known.
    let early = token_with("test:alice", LYON, |c| {
        c["iat"] = json!(time::OffsetDateTime::now_utc().unix_timestamp() - 5);
    });
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            registry: registry.clone(),
            data_dir: Some(data.clone()),
            ..BrokerOptions::default()
        },
    )
    .await?;
    let mut lyon = consents(&broker, LYON).await?;
    let status = refused(
        lyon.grant(grant("test:alice", LYON, QF, CANTINE, &early))
            .await,
        Code::FailedPrecondition,
        ErrorReason::IdentityEvidenceInvalid,
    );
    assert!(
        status.message().contains("restarted"),
        "{}",
        status.message()
    );

    // One token proves at most 8 acts (the registry's default), then the citizen logs in again.
    let token = id_token("test:alice", LYON);
    for _ in 0..8 {
        lyon.grant(grant("test:alice", LYON, QF, CANTINE, &token))
            .await?;
    }
    let status = refused(
        lyon.grant(grant("test:alice", LYON, QF, CANTINE, &token))
            .await,
        Code::FailedPrecondition,
        ErrorReason::IdentityEvidenceInvalid,
    );
    assert!(
        status.message().contains("log in again"),
        "{}",
        status.message()
    );
    lyon.grant(grant(
        "test:alice",
        LYON,
        QF,
        CANTINE,
        &id_token("test:alice", LYON),
    ))
    .await?;

    // A token listing two guichets serves neither unless it names the one it was issued to.
    let mut villeurbanne = consents(&broker, "mairie-villeurbanne").await?;
    let both = token_with("test:alice", LYON, |c| {
        c["aud"] = json!([LYON, "mairie-villeurbanne"]);
    });
    for client in [&mut lyon, &mut villeurbanne] {
        let status = refused(
            client
                .grant(grant("test:alice", LYON, QF, CANTINE, &both))
                .await,
            Code::FailedPrecondition,
            ErrorReason::IdentityEvidenceInvalid,
        );
        assert!(status.message().contains("azp"), "{}", status.message());
    }
    let lyons = token_with("test:alice", LYON, |c| {
        c["aud"] = json!([LYON, "mairie-villeurbanne"]);
        c["azp"] = json!(LYON);
    });
    lyon.grant(grant("test:alice", LYON, QF, CANTINE, &lyons))
        .await?;
    refused(
        villeurbanne
            .grant(grant("test:alice", LYON, QF, CANTINE, &lyons))
            .await,
        Code::FailedPrecondition,
        ErrorReason::IdentityEvidenceInvalid,
    );

    // A token not valid yet is refused.
    let later = token_with("test:alice", LYON, |c| {
        c["nbf"] = json!(time::OffsetDateTime::now_utc().unix_timestamp() + 600);
    });
    let status = refused(
        lyon.grant(grant("test:alice", LYON, QF, CANTINE, &later))
            .await,
        Code::FailedPrecondition,
        ErrorReason::IdentityEvidenceInvalid,
    );
    assert!(
        status.message().contains("not valid yet"),
        "{}",
        status.message()
    );

    // After a restart, a token used before is refused rather than counted from zero.
    let used = id_token("test:alice", LYON);
    lyon.grant(grant("test:alice", LYON, QF, CANTINE, &used))
        .await?;
    broker.stop().await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            registry,
            data_dir: Some(data),
            ..BrokerOptions::default()
        },
    )
    .await?;
    refused(
        consents(&broker, LYON)
            .await?
            .grant(grant("test:alice", LYON, QF, CANTINE, &used))
            .await,
        Code::FailedPrecondition,
        ErrorReason::IdentityEvidenceInvalid,
    );
    broker.stop().await
}

#[tokio::test]
async fn one_guichet_cannot_fill_the_previews_and_every_participant_has_a_rate()
-> anyhow::Result<()> {
    // A generous default rate for the previews, then a tight one.
    let (pki, registry) = federation(|s| {
        s.replace(
            "allow_test_subjects = true\n",
            "allow_test_subjects = true\ndefault_rate_limit = { per_minute = 600000, burst = 100000 }\n",
        )
        .replace(
            "max_token_age_seconds = 600\n",
            "max_token_age_seconds = 600\nmax_acts_per_token = 100000\n",
        )
    })?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry).await?;
    let limit = broker::defaults::PREVIEWS_PER_PARTICIPANT;
    let token = id_token("test:alice", LYON);
    let preview = |token: &str| pb::PrefillRequest {
        subject: "test:alice".into(),
        form: "aide_energie".into(),
        preview: true,
        id_token: token.into(),
        ..Default::default()
    };
    let mut lyon = guichet(&broker, LYON).await?;
    let mut opened = 0;
    let started = Instant::now();
    let refusal = loop {
        let calls: Vec<_> = (0..32)
            .map(|_| {
                let mut client = lyon.clone();
                let request = preview(&token);
                tokio::spawn(async move { client.prefill(request).await })
            })
            .collect();
        let mut refusal = None;
        for call in calls {
            match call.await? {
                Ok(_) => opened += 1,
                Err(status) => refusal = Some(status),
            }
        }
        if let Some(refusal) = refusal {
            break refusal;
        }
        assert!(opened <= limit, "more previews than the share: {opened}");
        assert!(started.elapsed() < Duration::from_secs(120), "too slow");
    };
    assert_eq!(opened, limit, "{}", refusal.message());
    assert_eq!(refusal.code(), Code::ResourceExhausted);
    assert_eq!(reason_of(&refusal), Some(ErrorReason::RateLimited));
    assert!(
        refusal.message().contains("previews"),
        "{}",
        refusal.message()
    );
    // Told when to try again, as every RATE_LIMITED is: when its oldest preview expires.
    let delay = unefois_tests::refusals::retry_delay(&refusal).expect("a RetryInfo");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(600),
        "{delay:?}"
    );
    lyon.prefill(preview(&token)).await.expect_err("still full");
    // Another guichet is not refused for Lyon's previews.
    guichet(&broker, "mairie-villeurbanne")
        .await?
        .prefill(pb::PrefillRequest {
            id_token: id_token("test:alice", "mairie-villeurbanne"),
            ..preview("")
        })
        .await?;
    broker.stop().await?;

    // A participant that declares no rate gets the federation's default.
    let (pki, registry) = federation(|s| {
        s.replace(
            "allow_test_subjects = true\n",
            "allow_test_subjects = true\ndefault_rate_limit = { per_minute = 60, burst = 3 }\n",
        )
    })?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry).await?;
    let mut lyon = exchange(&broker, LYON).await?;
    for _ in 0..3 {
        lyon.fetch(fetch("test:alice", RFR, CANTINE)).await?;
    }
    refused(
        lyon.fetch(fetch("test:alice", RFR, CANTINE)).await,
        Code::ResourceExhausted,
        ErrorReason::RateLimited,
    );
    // CCAS declares its own rate (600 a minute, 60 at once): Lyon's refusals are not its.
    let mut ccas = exchange(&broker, CCAS).await?;
    for _ in 0..5 {
        ccas.fetch(fetch("test:alice", RFR, ENERGIE)).await?;
    }
    broker.stop().await
}

#[tokio::test]
async fn with_their_id_token_a_citizen_sees_and_withdraws_every_consent() -> anyhow::Result<()> {
    let (pki, registry) = federation(str::to_string)?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry).await?;
    let mut lyon = consents(&broker, LYON).await?;
    let mut villeurbanne = consents(&broker, "mairie-villeurbanne").await?;
    let at_lyon = lyon
        .grant(grant(
            "test:carol",
            LYON,
            ETU,
            "tarif_etudiant",
            &id_token("test:carol", LYON),
        ))
        .await?
        .into_inner()
        .consent
        .unwrap_or_default();
    let at_villeurbanne = villeurbanne
        .grant(grant(
            "test:carol",
            LYON,
            QF,
            CANTINE,
            &id_token("test:carol", "mairie-villeurbanne"),
        ))
        .await?
        .into_inner()
        .consent
        .unwrap_or_default();
    let listed = |page: pb::ListConsentsResponse| -> Vec<String> {
        let mut ids: Vec<String> = page.consents.into_iter().map(|c| c.id).collect();
        ids.sort();
        ids
    };
    let list = |token: &str| pb::ListConsentsRequest {
        subject: "test:carol".into(),
        id_token: token.into(),
        ..Default::default()
    };
    // Without her token, Villeurbanne sees what it recorded; with it, every consent of Carol.
    assert_eq!(
        listed(villeurbanne.list(list("")).await?.into_inner()),
        vec![at_villeurbanne.id.clone()]
    );
    let mut both = vec![at_lyon.id.clone(), at_villeurbanne.id.clone()];
    both.sort();
    let carol_here = id_token("test:carol", "mairie-villeurbanne");
    assert_eq!(
        listed(villeurbanne.list(list(&carol_here)).await?.into_inner()),
        both
    );
    // Another person's token is not Carol's.
    refused(
        villeurbanne
            .list(list(&id_token("test:dave", "mairie-villeurbanne")))
            .await,
        Code::FailedPrecondition,
        ErrorReason::SubjectMismatch,
    );
    // A token that is present is always verified, even for the guichet that recorded it.
    refused(
        lyon.revoke(pb::RevokeConsentRequest {
            consent_id: at_lyon.id.clone(),
            id_token: "not-a-token".into(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        ErrorReason::IdentityEvidenceInvalid,
    );
    // Dave's token withdraws nothing of Carol's.
    refused(
        villeurbanne
            .revoke(pb::RevokeConsentRequest {
                consent_id: at_lyon.id.clone(),
                id_token: id_token("test:dave", "mairie-villeurbanne"),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        ErrorReason::UnknownConsent,
    );
    // Carol withdraws, at Villeurbanne, the consent she gave at Lyon: the next fetch is refused.
    let revoked = villeurbanne
        .revoke(pb::RevokeConsentRequest {
            consent_id: at_lyon.id.clone(),
            id_token: carol_here,
            ..Default::default()
        })
        .await?
        .into_inner()
        .consent
        .unwrap_or_default();
    assert_eq!(revoked.status(), pb::ConsentStatus::Revoked);
    refused(
        exchange(&broker, LYON)
            .await?
            .fetch(fetch("test:carol", ETU, "tarif_etudiant"))
            .await,
        Code::FailedPrecondition,
        ErrorReason::ConsentRevoked,
    );
    let revocations = events_of(&broker, "consent_revoked").await?;
    assert!(
        revocations.iter().any(|e| e["consent_id"] == at_lyon.id
            && e["participant"] == "mairie-villeurbanne"
            && e["with_identity_evidence"] == true),
        "{revocations:?}"
    );
    broker.stop().await
}

#[tokio::test]
async fn a_guichet_prefills_and_confirms_only_with_the_citizens_evidence() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mut lyon = guichet(&broker, LYON).await?;
    let form = |preview: bool, token: &str| pb::PrefillRequest {
        subject: "test:alice".into(),
        form: "aide_energie".into(),
        preview,
        id_token: token.into(),
        ..Default::default()
    };
    for preview in [false, true] {
        refused(
            lyon.prefill(form(preview, "")).await,
            Code::FailedPrecondition,
            ErrorReason::IdentityEvidenceRequired,
        );
        refused(
            lyon.prefill(form(preview, &id_token("test:bob", LYON)))
                .await,
            Code::FailedPrecondition,
            ErrorReason::SubjectMismatch,
        );
    }
    let filled = lyon
        .prefill(form(false, &id_token("test:alice", LYON)))
        .await?
        .into_inner();
    assert_eq!(filled.fields.len(), 2, "{filled:?}");
    let preview = lyon
        .prefill(form(true, &id_token("test:alice", LYON)))
        .await?
        .into_inner();
    let confirm = |token: &str| pb::ConfirmRequest {
        subject: "test:alice".into(),
        prefill_id: preview.prefill_id.clone(),
        id_token: token.into(),
        ..Default::default()
    };
    refused(
        lyon.confirm(confirm("")).await,
        Code::FailedPrecondition,
        ErrorReason::IdentityEvidenceRequired,
    );
    let confirmed = lyon
        .confirm(confirm(&id_token("test:alice", LYON)))
        .await?
        .into_inner();
    assert_eq!(confirmed.attestations.len(), 1);

    // An agent acts under an active mandate: once revoked, neither pre-fill nor the
    // confirmation of a preview made under it goes through.
    let mut agent_mandates = mandates(&broker, AGENT).await?;
    let mandate = agent_mandates
        .create(mandate_request("test:alice", &[ENERGIE], 31))
        .await?
        .into_inner()
        .mandate
        .unwrap_or_default();
    let mut agent = guichet(&broker, AGENT).await?;
    let under = |preview: bool| pb::PrefillRequest {
        mandate_id: mandate.id.clone(),
        ..form(preview, "")
    };
    agent.prefill(under(false)).await?;
    let held = agent.prefill(under(true)).await?.into_inner();
    agent_mandates
        .revoke(pb::RevokeMandateRequest {
            mandate_id: mandate.id.clone(),
            ..Default::default()
        })
        .await?;
    refused(
        agent.prefill(under(false)).await,
        Code::FailedPrecondition,
        ErrorReason::MandateRevoked,
    );
    refused(
        agent
            .confirm(pb::ConfirmRequest {
                subject: "test:alice".into(),
                prefill_id: held.prefill_id,
                mandate_id: mandate.id.clone(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        ErrorReason::MandateRevoked,
    );
    broker.stop().await
}

#[tokio::test]
async fn an_agent_lists_and_revokes_only_within_the_mandates_purposes() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mut lyon = consents(&broker, LYON).await?;
    let token = id_token("test:bob", LYON);
    let cantine = lyon
        .grant(grant("test:bob", LYON, QF, CANTINE, &token))
        .await?
        .into_inner()
        .consent
        .unwrap_or_default();
    let etudiant = lyon
        .grant(grant("test:bob", LYON, ETU, "tarif_etudiant", &token))
        .await?
        .into_inner()
        .consent
        .unwrap_or_default();
    let mandate = mandates(&broker, AGENT)
        .await?
        .create(mandate_request("test:bob", &[CANTINE], 31))
        .await?
        .into_inner()
        .mandate
        .unwrap_or_default();
    let mut agent = consents(&broker, AGENT).await?;
    let listed: Vec<String> = agent
        .list(pb::ListConsentsRequest {
            subject: "test:bob".into(),
            mandate_id: mandate.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .consents
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(
        listed,
        vec![cantine.id.clone()],
        "only the mandate's purposes"
    );
    refused(
        agent
            .revoke(pb::RevokeConsentRequest {
                consent_id: etudiant.id.clone(),
                mandate_id: mandate.id.clone(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        ErrorReason::MandateOutOfScope,
    );
    exchange(&broker, LYON)
        .await?
        .fetch(fetch("test:bob", ETU, "tarif_etudiant"))
        .await?;
    // Within its purposes, the agent withdraws for Alice.
    agent
        .revoke(pb::RevokeConsentRequest {
            consent_id: cantine.id.clone(),
            mandate_id: mandate.id.clone(),
            ..Default::default()
        })
        .await?;
    refused(
        exchange(&broker, LYON)
            .await?
            .fetch(fetch("test:bob", QF, CANTINE))
            .await,
        Code::FailedPrecondition,
        ErrorReason::ConsentRevoked,
    );
    broker.stop().await
}

#[tokio::test]
async fn a_revocation_reaches_kept_answers_and_every_answer_is_recorded() -> anyhow::Result<()> {
    let (pki, registry) = federation(str::to_string)?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry).await?;
    let consent = consents(&broker, LYON)
        .await?
        .grant(grant(
            "test:alice",
            LYON,
            QF,
            CANTINE,
            &id_token("test:alice", LYON),
        ))
        .await?
        .into_inner()
        .consent
        .unwrap_or_default();
    let mut lyon = exchange(&broker, LYON).await?;
    let with_id = pb::FetchRequest {
        request_id: "dossier-77".into(),
        ..fetch("test:alice", QF, CANTINE)
    };
    let first = lyon.fetch(with_id.clone()).await?.into_inner();
    let again = lyon.fetch(with_id.clone()).await?.into_inner();
    assert_eq!(first.attestation, again.attestation, "the same answer");
    let (first_receipt, again_receipt) = (
        first.receipt.unwrap_or_default(),
        again.receipt.unwrap_or_default(),
    );
    assert!(
        again_receipt.leaf_index > first_receipt.leaf_index,
        "recorded again"
    );
    let entry: Value = serde_json::from_slice(&again_receipt.entry)?;
    assert_eq!(entry["retry_of"], first_receipt.leaf_index, "{entry}");
    assert_eq!(entry["outcome"], "granted");

    consents(&broker, LYON)
        .await?
        .revoke(pb::RevokeConsentRequest {
            consent_id: consent.id.clone(),
            ..Default::default()
        })
        .await?;
    refused(
        lyon.fetch(with_id).await,
        Code::FailedPrecondition,
        ErrorReason::ConsentRevoked,
    );

    // Request ids are an agent's own: another agent of the structure never gets its answer.
    let mandate = mandates(&broker, AGENT)
        .await?
        .create(mandate_request("test:alice", &[ENERGIE], 31))
        .await?
        .into_inner()
        .mandate
        .unwrap_or_default();
    let under = pb::FetchRequest {
        request_id: "dossier-78".into(),
        mandate_id: mandate.id.clone(),
        ..fetch("test:alice", RFR, ENERGIE)
    };
    let martin = exchange(&broker, AGENT)
        .await?
        .fetch(under.clone())
        .await?
        .into_inner();
    let mut durand = exchange(&broker, "france-services-lyon/b.durand").await?;
    let other = durand.fetch(under.clone()).await?.into_inner();
    assert_ne!(
        martin.attestation.map(|a| a.id),
        other.attestation.map(|a| a.id),
        "another agent's answer"
    );
    let entry: Value = serde_json::from_slice(&other.receipt.unwrap_or_default().entry)?;
    assert_eq!(entry["agent"], "b.durand");
    assert!(entry.get("retry_of").is_none(), "{entry}");
    mandates(&broker, AGENT)
        .await?
        .revoke(pb::RevokeMandateRequest {
            mandate_id: mandate.id.clone(),
            ..Default::default()
        })
        .await?;
    for client in [&mut durand, &mut exchange(&broker, AGENT).await?] {
        refused(
            client.fetch(under.clone()).await,
            Code::FailedPrecondition,
            ErrorReason::MandateRevoked,
        );
    }
    broker.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_of_consents_are_recorded_and_take_no_longer_for_a_busy_person() -> anyhow::Result<()>
{
    let (pki, registry) = federation(|s| {
        s.replace(
            "max_token_age_seconds = 600\n",
            "max_token_age_seconds = 600\nmax_acts_per_token = 100000\n",
        )
    })?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry).await?;
    // Carol holds 2,000 consents recorded at Lyon; Dave holds none.
    let lyon = consents(&broker, LYON).await?;
    let token = id_token("test:carol", LYON);
    for _ in 0..(2_000 / 50) {
        let calls: Vec<_> = (0..50)
            .map(|_| {
                let mut client = lyon.clone();
                let request = grant("test:carol", LYON, QF, CANTINE, &token);
                tokio::spawn(async move { client.grant(request).await })
            })
            .collect();
        for call in calls {
            call.await??;
        }
    }
    // Villeurbanne may see none of them: listing Carol takes it no longer than listing Dave.
    let mut villeurbanne = consents(&broker, "mairie-villeurbanne").await?;
    let median = |subject: &'static str| {
        let mut client = villeurbanne.clone();
        async move {
            let mut times = Vec::new();
            for _ in 0..15 {
                let started = Instant::now();
                let page = client
                    .list(pb::ListConsentsRequest {
                        subject: subject.into(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                times.push(started.elapsed());
                assert!(page.consents.is_empty());
            }
            times.sort();
            anyhow::Ok(times[times.len() / 2])
        }
    };
    let (carol, dave) = (median("test:carol").await?, median("test:dave").await?);
    assert!(
        carol < dave * 3 + Duration::from_millis(5),
        "listing a busy person took {carol:?}, an unknown one {dave:?}"
    );
    // Every read of consents is on the record: a List names the person (sealed), a Get the
    // consent.
    let one = lyon
        .clone()
        .list(pb::ListConsentsRequest {
            subject: "test:carol".into(),
            page_size: 1,
            ..Default::default()
        })
        .await?
        .into_inner()
        .consents
        .remove(0);
    villeurbanne
        .get(pb::GetConsentRequest {
            consent_id: one.id.clone(),
        })
        .await
        .expect_err("not Villeurbanne's");
    lyon.clone()
        .get(pb::GetConsentRequest {
            consent_id: one.id.clone(),
        })
        .await?;
    let reads = events_of(&broker, "consents_read").await?;
    let by = |who: &str| reads.iter().filter(|e| e["participant"] == who).count();
    assert_eq!(
        by("mairie-villeurbanne"),
        30,
        "every list, refused Gets aside"
    );
    assert!(
        reads
            .iter()
            .any(|e| e["participant"] == LYON && e["consent_id"] == one.id),
        "the Get"
    );
    assert!(
        reads
            .iter()
            .all(|e| e.get("subject_sealed").is_some() || e.get("consent_id").is_some())
    );
    broker.stop().await
}

#[tokio::test]
async fn edge_cases_say_what_happened() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    // A consistency proof between two sizes beyond the log.
    let mut audit = AuditClient::new(broker.channel(LYON).await?);
    let status = refused(
        audit
            .get_consistency_proof(pb::GetConsistencyProofRequest {
                first_size: u64::MAX,
                second_size: u64::MAX,
            })
            .await,
        Code::InvalidArgument,
        ErrorReason::TreeSizeOutOfRange,
    );
    assert!(status.message().contains("beyond"), "{}", status.message());

    // A mandate on a document digest that no document has.
    let mut agent = mandates(&broker, AGENT).await?;
    for digest in [vec![0u8; 32], sha2::Sha256::digest(b"").to_vec()] {
        refused(
            agent
                .create(pb::CreateMandateRequest {
                    signed_document: Vec::new(),
                    document_sha256: digest,
                    ..mandate_request("test:alice", &[ENERGIE], 31)
                })
                .await,
            Code::InvalidArgument,
            ErrorReason::InvalidArgument,
        );
    }

    // A Confirm for another person than the preview's is told so, not about an ID token.
    let mut lyon = guichet(&broker, LYON).await?;
    let preview = lyon
        .prefill(pb::PrefillRequest {
            subject: "test:alice".into(),
            form: "aide_energie".into(),
            preview: true,
            id_token: id_token("test:alice", LYON),
            ..Default::default()
        })
        .await?
        .into_inner();
    let status = refused(
        lyon.confirm(pb::ConfirmRequest {
            subject: "test:bob".into(),
            prefill_id: preview.prefill_id.clone(),
            id_token: id_token("test:bob", LYON),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        ErrorReason::SubjectMismatch,
    );
    assert!(status.message().contains("preview"), "{}", status.message());
    assert!(
        !status.message().contains("ID token"),
        "{}",
        status.message()
    );

    // Concurrent Confirms of one preview: one confirms, the others hear that it is under way
    // or get its outcome; none is told the preview "may have expired".
    let token = id_token("test:alice", LYON);
    let confirms: Vec<_> = (0..6)
        .map(|_| {
            let mut client = lyon.clone();
            let request = pb::ConfirmRequest {
                subject: "test:alice".into(),
                prefill_id: preview.prefill_id.clone(),
                id_token: token.clone(),
                ..Default::default()
            };
            tokio::spawn(async move { client.confirm(request).await })
        })
        .collect();
    let mut confirmed = Vec::new();
    for call in confirms {
        match call.await? {
            Ok(answer) => confirmed.push(answer.into_inner()),
            Err(status) => {
                assert_eq!(
                    (status.code(), reason_of(&status)),
                    (Code::Aborted, Some(ErrorReason::PrefillInProgress)),
                    "{}",
                    status.message()
                );
            }
        }
    }
    assert!(!confirmed.is_empty());
    let ids = |c: &pb::ConfirmResponse| -> Vec<String> {
        c.attestations
            .iter()
            .filter_map(|a| a.attestation.as_ref().map(|a| a.id.clone()))
            .collect()
    };
    assert!(confirmed.iter().all(|c| ids(c) == ids(&confirmed[0])));
    broker.stop().await
}
