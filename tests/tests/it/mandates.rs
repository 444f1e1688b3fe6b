//! Mandates end to end (modelled on Aidants Connect): an agent of a mediation structure takes a
//! citizen's mandate with the citizen present, then acts for them (consent, fetch, pre-fill,
//! access history) within its scope; every act records the mandate and the agent; anything
//! outside the mandate is refused with its reason.

use tonic::Code;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::consents_client::ConsentsClient;
use unefois_proto::v1::guichet_client::GuichetClient;
use unefois_proto::v1::mandates_client::MandatesClient;
use unefois_tests::clients::exchange;
use unefois_tests::refusals::refused;
use unefois_tests::sample::{AGENT, STRUCTURE};
use unefois_tests::{TestBroker, TestPki, audit_entry, id_token, sample_registry_with};

fn create(subject: &str, purposes: &[&str], days: u32) -> pb::CreateMandateRequest {
    pb::CreateMandateRequest {
        subject: subject.into(),
        purposes: purposes.iter().map(|p| p.to_string()).collect(),
        duration_days: days,
        signed_document: b"%PDF mandat signe par la personne et l'aidant".to_vec(),
        id_token: id_token(subject, STRUCTURE),
        ..Default::default()
    }
}

fn fetch_rfr(subject: &str, purpose: &str, mandate_id: &str) -> pb::FetchRequest {
    pb::FetchRequest {
        subject: subject.into(),
        attestation_type: "dgfip.revenu_fiscal_reference".into(),
        purpose: purpose.into(),
        mandate_id: mandate_id.into(),
        ..Default::default()
    }
}

async fn mandate_for(
    broker: &TestBroker,
    subject: &str,
    purposes: &[&str],
) -> anyhow::Result<pb::Mandate> {
    let mut agent = MandatesClient::new(broker.channel(AGENT).await?);
    agent
        .create(create(subject, purposes, 31))
        .await?
        .into_inner()
        .mandate
        .ok_or_else(|| anyhow::anyhow!("no mandate in the answer"))
}

#[tokio::test]
async fn an_agent_takes_a_mandate_and_acts_under_it_with_every_act_attributed() -> anyhow::Result<()>
{
    let pki = TestPki::for_sample_registry()?;
    let data_dir = pki.scratch().join("data");
    let broker = TestBroker::start_on(pki.dir(), &data_dir).await?;
    let mandate = mandate_for(&broker, "test:alice", &["aide_energie"]).await?;
    assert_eq!(mandate.structure, STRUCTURE);
    assert_eq!(mandate.agent, "a.martin");
    assert_eq!(mandate.duration_days, 31);
    assert_eq!(mandate.status(), pb::MandateStatus::Active);
    assert_eq!(mandate.document_sha256.len(), 32);
    let created = mandate.created_at.unwrap_or_default().seconds;
    let expires = mandate.expires_at.unwrap_or_default().seconds;
    assert_eq!(expires - created, 31 * 86_400);

    // Fetch under law for the person, within the mandate's scope.
    let answer = exchange(&broker, AGENT)
        .await?
        .fetch(fetch_rfr("test:alice", "aide_energie", &mandate.id))
        .await?
        .into_inner();
    let attestation = answer.attestation.unwrap_or_default();
    assert_eq!(attestation.mandate_id, mandate.id);
    let payload: serde_json::Value =
        serde_json::from_slice(&answer.envelope.unwrap_or_default().payload)?;
    assert_eq!(payload["mandate_id"], mandate.id.as_str());
    let receipt = answer.receipt.unwrap_or_default();
    let entry: serde_json::Value = serde_json::from_slice(&receipt.entry)?;
    assert_eq!(entry["mandate_id"], mandate.id.as_str());
    assert_eq!(entry["agent"], "a.martin");
    assert_eq!(entry["participant"], STRUCTURE);
    assert_eq!(entry["outcome"], "granted");

    // Consent given through the structure under the mandate, then a consent-based fetch. A
    // consent that benefits the structure itself needs Alice's own evidence too.
    let consent = ConsentsClient::new(broker.channel(AGENT).await?)
        .grant(pb::GrantConsentRequest {
            subject: "test:alice".into(),
            consumer: STRUCTURE.into(),
            attestation_types: vec!["caf.quotient_familial".into()],
            purpose: "aide_energie".into(),
            valid_days: 7,
            mandate_id: mandate.id.clone(),
            id_token: id_token("test:alice", STRUCTURE),
            ..Default::default()
        })
        .await?
        .into_inner()
        .consent
        .unwrap_or_default();
    assert_eq!(consent.mandate_id, mandate.id);
    assert_eq!(consent.agent, "a.martin");
    let qf = exchange(&broker, AGENT)
        .await?
        .fetch(pb::FetchRequest {
            subject: "test:alice".into(),
            attestation_type: "caf.quotient_familial".into(),
            purpose: "aide_energie".into(),
            mandate_id: mandate.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let basis = qf
        .attestation
        .unwrap_or_default()
        .legal_basis
        .unwrap_or_default();
    assert_eq!(basis.consent_id, consent.id);

    // Pre-fill under the mandate.
    let form = GuichetClient::new(broker.channel(AGENT).await?)
        .prefill(pb::PrefillRequest {
            subject: "test:alice".into(),
            form: "aide_energie".into(),
            mandate_id: mandate.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(form.fields.len(), 2, "{form:?}");
    for a in &form.attestations {
        assert_eq!(
            a.attestation.clone().unwrap_or_default().mandate_id,
            mandate.id
        );
    }

    // The person's access history, read by the agent under the mandate, shows every act with
    // the mandate and the agent; the read itself is recorded with them.
    let history = GuichetClient::new(broker.channel(AGENT).await?)
        .list_accesses(pb::ListAccessesRequest {
            subject: "test:alice".into(),
            mandate_id: mandate.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    // Two fetches and the pre-fill's one (both of the form's fields come from the DGFiP).
    assert_eq!(history.accesses.len(), 3);
    for access in &history.accesses {
        assert_eq!(access.mandate_id, mandate.id);
        assert_eq!(access.agent, "a.martin");
    }
    let mut audit =
        unefois_proto::v1::audit_client::AuditClient::new(broker.channel("cnil").await?);
    let events = audit
        .list_events(pb::ListEventsRequest {
            participant: STRUCTURE.into(),
            limit: 100,
            ..Default::default()
        })
        .await?
        .into_inner()
        .events;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    for kind in ["mandate_created", "consent_granted", "access_history_read"] {
        let event = events
            .iter()
            .find(|e| e.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} in {kinds:?}"));
        assert_eq!(event.mandate_id, mandate.id, "{kind}");
        assert_eq!(event.agent, "a.martin", "{kind}");
    }
    // No raw subject id anywhere in the mandate's record.
    let created = events
        .iter()
        .find(|e| e.kind == "mandate_created")
        .map(|e| e.index)
        .unwrap_or_default();
    let entry = audit_entry(&broker, "cnil", created).await?;
    assert!(!entry.to_string().contains("alice"), "{entry}");

    // The mandate survives a restart (derived from the journal).
    broker.stop().await?;
    let broker = TestBroker::start_on(pki.dir(), &data_dir).await?;
    exchange(&broker, AGENT)
        .await?
        .fetch(fetch_rfr("test:alice", "aide_energie", &mandate.id))
        .await?;
    broker.stop().await
}

#[tokio::test]
async fn acting_outside_the_mandate_is_refused_with_the_reason() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    pki.pki.issue_agent(
        "ccas-accueil",
        "b.durand",
        &unefois_certs::Validity::default(),
    )?;
    pki.pki
        .issue_participant("ccas-accueil", &unefois_certs::Validity::default())?;
    let dir = pki.scratch();
    let registry = sample_registry_with(&dir, |s| {
        s.replacen(
            "[[participants]]\nid = \"cnil\"",
            "[[participants]]\nid = \"ccas-accueil\"\nname = \"Accueil du CCAS\"\nroles = [\"mediator\"]\n\n[[participants]]\nid = \"cnil\"",
            1,
        )
    })?;
    let broker = TestBroker::start_with_registry(pki.dir(), registry).await?;
    let mandate = mandate_for(&broker, "test:alice", &["aide_energie"]).await?;
    let mut agent = exchange(&broker, AGENT).await?;

    // A mediator never acts without a mandate.
    refused(
        agent
            .fetch(fetch_rfr("test:alice", "aide_energie", ""))
            .await,
        Code::FailedPrecondition,
        ErrorReason::NoMandate,
    );
    // An agent of another structure.
    refused(
        exchange(&broker, "ccas-accueil/b.durand")
            .await?
            .fetch(fetch_rfr("test:alice", "aide_energie", &mandate.id))
            .await,
        Code::FailedPrecondition,
        ErrorReason::NotAgentOfStructure,
    );
    // The structure's own certificate is not an agent's.
    refused(
        exchange(&broker, STRUCTURE)
            .await?
            .fetch(fetch_rfr("test:alice", "aide_energie", &mandate.id))
            .await,
        Code::FailedPrecondition,
        ErrorReason::NotAgentOfStructure,
    );
    // Another person.
    refused(
        agent
            .fetch(fetch_rfr("test:bob", "aide_energie", &mandate.id))
            .await,
        Code::FailedPrecondition,
        ErrorReason::MandateSubjectMismatch,
    );
    // Out of scope.
    refused(
        agent
            .fetch(fetch_rfr("test:alice", "tarification_cantine", &mandate.id))
            .await,
        Code::FailedPrecondition,
        ErrorReason::MandateOutOfScope,
    );
    // An unknown mandate.
    refused(
        agent
            .fetch(fetch_rfr(
                "test:alice",
                "aide_energie",
                "0190aaaa-0000-7000-8000-000000000000",
            ))
            .await,
        Code::NotFound,
        ErrorReason::UnknownMandate,
    );
    // A consent grant and an access-history read are held to the same rules.
    refused(
        ConsentsClient::new(broker.channel(AGENT).await?)
            .grant(pb::GrantConsentRequest {
                subject: "test:alice".into(),
                consumer: STRUCTURE.into(),
                attestation_types: vec!["caf.quotient_familial".into()],
                purpose: "tarification_cantine".into(),
                valid_days: 7,
                mandate_id: mandate.id.clone(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        ErrorReason::MandateOutOfScope,
    );
    refused(
        GuichetClient::new(broker.channel(AGENT).await?)
            .list_accesses(pb::ListAccessesRequest {
                subject: "test:bob".into(),
                mandate_id: mandate.id.clone(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        ErrorReason::MandateSubjectMismatch,
    );
    // Every refusal was recorded with the reason, and without the raw subject id.
    let mut audit =
        unefois_proto::v1::audit_client::AuditClient::new(broker.channel("cnil").await?);
    let denied: Vec<String> = audit
        .list_events(pb::ListEventsRequest {
            outcome: "denied".into(),
            limit: 100,
            ..Default::default()
        })
        .await?
        .into_inner()
        .events
        .iter()
        .map(|e| {
            pb::ErrorReason::try_from(e.reason)
                .map(|r| r.as_str_name().to_string())
                .unwrap_or_default()
        })
        .collect();
    for reason in [
        "NO_MANDATE",
        "NOT_AGENT_OF_STRUCTURE",
        "MANDATE_SUBJECT_MISMATCH",
        "MANDATE_OUT_OF_SCOPE",
        "UNKNOWN_MANDATE",
    ] {
        assert!(
            denied.iter().any(|r| r == reason),
            "{reason} not in {denied:?}"
        );
    }

    // After revocation by the structure: the very next act is refused.
    let revoked = MandatesClient::new(broker.channel(AGENT).await?)
        .revoke(pb::RevokeMandateRequest {
            mandate_id: mandate.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .mandate
        .unwrap_or_default();
    assert_eq!(revoked.status(), pb::MandateStatus::Revoked);
    refused(
        agent
            .fetch(fetch_rfr("test:alice", "aide_energie", &mandate.id))
            .await,
        Code::FailedPrecondition,
        ErrorReason::MandateRevoked,
    );

    // A guichet revokes for the citizen, with the citizen's ID token only.
    let second = mandate_for(&broker, "test:alice", &["aide_energie"]).await?;
    let mut guichet = MandatesClient::new(broker.channel("mairie-lyon").await?);
    refused(
        guichet
            .revoke(pb::RevokeMandateRequest {
                mandate_id: second.id.clone(),
                id_token: id_token("test:bob", "mairie-lyon"),
            })
            .await,
        Code::NotFound,
        ErrorReason::UnknownMandate,
    );
    guichet
        .revoke(pb::RevokeMandateRequest {
            mandate_id: second.id.clone(),
            id_token: id_token("test:alice", "mairie-lyon"),
        })
        .await?;
    refused(
        agent
            .fetch(fetch_rfr("test:alice", "aide_energie", &second.id))
            .await,
        Code::FailedPrecondition,
        ErrorReason::MandateRevoked,
    );
    broker.stop().await
}

#[tokio::test]
async fn creating_a_mandate_needs_an_agent_the_citizen_present_and_a_valid_duration()
-> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mut agent = MandatesClient::new(broker.channel(AGENT).await?);
    let mut no_token = create("test:alice", &["aide_energie"], 31);
    no_token.id_token.clear();
    refused(
        agent.create(no_token).await,
        Code::FailedPrecondition,
        ErrorReason::IdentityEvidenceRequired,
    );
    let mut other_person = create("test:alice", &["aide_energie"], 31);
    other_person.id_token = id_token("test:bob", STRUCTURE);
    refused(
        agent.create(other_person).await,
        Code::FailedPrecondition,
        ErrorReason::SubjectMismatch,
    );
    refused(
        agent
            .create(create("test:alice", &["aide_energie"], 30))
            .await,
        Code::InvalidArgument,
        ErrorReason::InvalidArgument,
    );
    refused(
        agent.create(create("test:alice", &["inconnu"], 31)).await,
        Code::InvalidArgument,
        ErrorReason::UnknownPurpose,
    );
    let mut no_document = create("test:alice", &["aide_energie"], 31);
    no_document.signed_document.clear();
    refused(
        agent.create(no_document).await,
        Code::InvalidArgument,
        ErrorReason::InvalidArgument,
    );
    refused(
        MandatesClient::new(broker.channel(STRUCTURE).await?)
            .create(create("test:alice", &["aide_energie"], 31))
            .await,
        Code::FailedPrecondition,
        ErrorReason::NotAgentOfStructure,
    );
    refused(
        MandatesClient::new(broker.channel("mairie-lyon").await?)
            .create(create("test:alice", &["aide_energie"], 31))
            .await,
        Code::PermissionDenied,
        ErrorReason::WrongRole,
    );

    // Idempotent: a retry with the same request id gives the same mandate.
    let mut with_id = create("test:alice", &["aide_energie"], 365);
    with_id.request_id = "mandat-2026-001".into();
    let first = agent.create(with_id.clone()).await?.into_inner().mandate;
    with_id.id_token = id_token("test:alice", STRUCTURE);
    let again = agent.create(with_id).await?.into_inner().mandate;
    assert_eq!(first, again);

    // Listing: the structure sees its own; a guichet sees the person's with their token.
    let own = agent
        .list(pb::ListMandatesRequest::default())
        .await?
        .into_inner()
        .mandates;
    assert_eq!(own.len(), 1);
    let mut guichet = MandatesClient::new(broker.channel("mairie-lyon").await?);
    refused(
        guichet
            .list(pb::ListMandatesRequest {
                subject: "test:alice".into(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        ErrorReason::IdentityEvidenceRequired,
    );
    let listed = guichet
        .list(pb::ListMandatesRequest {
            subject: "test:alice".into(),
            id_token: id_token("test:alice", "mairie-lyon"),
            ..Default::default()
        })
        .await?
        .into_inner()
        .mandates;
    assert_eq!(
        listed.iter().map(|m| &m.id).collect::<Vec<_>>(),
        vec![&own[0].id]
    );
    broker.stop().await
}

#[tokio::test]
async fn an_expired_mandate_is_refused() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let data_dir = pki.scratch().join("data");
    let broker = TestBroker::start_on(pki.dir(), &data_dir).await?;
    broker.stop().await?;

    // A mandate whose term is over, written to the journal as the broker would have, one
    // year ago (the broker derives its state from the journal at start).
    let registry = broker::registry::load(&unefois_tests::sample_registry())?;
    let keys = broker::keys::Keys::load(&data_dir, false)?;
    let pseudonyms = keys.pseudonymizer()?;
    let subject = broker::subject::Subject::parse("test:alice", true)?;
    let log = broker::LogSigner::new(&keys, registry.trust_domain())?;
    let sealer = std::sync::Arc::new(keys.sealer()?);
    use broker::store::Store as _;
    let store = broker::store::Embedded::open(
        &data_dir,
        broker::journal::JournalOptions::default(),
        log,
        sealer.clone(),
    )?;
    let mut record = broker::event::Record::now(broker::event::Event::MandateCreated {
        mandate_id: "0190aaaa-1111-7000-8000-000000000001".into(),
        subject: None,
        subject_sealed: Some(sealer.seal(&pseudonyms.audit(&subject))),
        pseudonym_key: pseudonyms.audit_key_id().to_string(),
        structure: STRUCTURE.into(),
        agent: "a.martin".into(),
        purposes: vec!["aide_energie".into()],
        duration_days: 1,
        document_sha256: "00".repeat(32),
        expires_at: time::OffsetDateTime::now_utc() - time::Duration::days(364),
        request_id: None,
        request_fingerprint: None,
    });
    record.time = time::OffsetDateTime::now_utc() - time::Duration::days(365);
    store.append(vec![record]).await?;
    store.close().await;

    let broker = TestBroker::start_on(pki.dir(), &data_dir).await?;
    refused(
        exchange(&broker, AGENT)
            .await?
            .fetch(fetch_rfr(
                "test:alice",
                "aide_energie",
                "0190aaaa-1111-7000-8000-000000000001",
            ))
            .await,
        Code::FailedPrecondition,
        ErrorReason::MandateExpired,
    );
    broker.stop().await
}

#[tokio::test]
async fn a_structure_walks_its_mandates_page_by_page() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mut created = Vec::new();
    for subject in [
        "test:alice",
        "test:bob",
        "test:carol",
        "test:david",
        "test:eve",
    ] {
        created.push(mandate_for(&broker, subject, &["aide_energie"]).await?.id);
    }
    // Two for Bob: a subject's list has more than one.
    created.push(
        mandate_for(&broker, "test:bob", &["aide_energie"])
            .await?
            .id,
    );
    created.sort();

    let mut agent = MandatesClient::new(broker.channel(AGENT).await?);
    let walk = |subject: &'static str| {
        let mut agent = agent.clone();
        async move {
            let (mut walked, mut pages, mut token) = (Vec::new(), 0, String::new());
            loop {
                let page = agent
                    .list(pb::ListMandatesRequest {
                        subject: subject.into(),
                        page_size: 2,
                        page_token: token.clone(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                assert!(page.mandates.len() <= 2, "{page:?}");
                walked.extend(page.mandates.into_iter().map(|m| m.id));
                pages += 1;
                token = page.next_page_token;
                if token.is_empty() || pages > 10 {
                    break;
                }
            }
            anyhow::Ok((walked, pages))
        }
    };
    let (walked, pages) = walk("").await?;
    assert_eq!(walked, created, "every mandate once, oldest first");
    assert_eq!(pages, 3, "six mandates, two per page, no empty last page");
    let (bobs, _) = walk("test:bob").await?;
    assert_eq!(bobs.len(), 2);
    assert!(bobs.iter().all(|id| created.contains(id)));
    // After the last mandate, nothing.
    let after_last = agent
        .list(pb::ListMandatesRequest {
            page_token: created[5].clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(after_last.mandates.is_empty() && after_last.next_page_token.is_empty());
    broker.stop().await
}

/// A consent the person gave in person is not renewed by an agent under a mandate: the agent's
/// grant is a consent of its own, which ends with the mandate, and the person's keeps its own
/// term. Before the fix, the agent's grant renewed the person's one-day consent for the
/// mandate's month, and the mandate's revocation left that month standing.
#[tokio::test]
async fn a_consent_given_in_person_does_not_take_a_mandates_term() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let scope = |valid_days: u32| pb::GrantConsentRequest {
        subject: "test:alice".into(),
        consumer: "mairie-lyon".into(),
        attestation_types: vec!["caf.quotient_familial".into()],
        purpose: "tarification_cantine".into(),
        valid_days,
        ..Default::default()
    };
    let mut lyon = ConsentsClient::new(broker.channel("mairie-lyon").await?);
    let in_person = lyon
        .grant(pb::GrantConsentRequest {
            id_token: id_token("test:alice", "mairie-lyon"),
            ..scope(1)
        })
        .await?
        .into_inner()
        .consent
        .unwrap_or_default();
    let mandate = mandate_for(&broker, "test:alice", &["tarification_cantine"]).await?;
    let granted = ConsentsClient::new(broker.channel(AGENT).await?)
        .grant(pb::GrantConsentRequest {
            mandate_id: mandate.id.clone(),
            ..scope(31)
        })
        .await?
        .into_inner();
    assert!(!granted.renewed, "the person's own consent is not renewed");
    let under_mandate = granted.consent.unwrap_or_default();
    assert_ne!(under_mandate.id, in_person.id);
    assert_eq!(under_mandate.mandate_id, mandate.id);

    MandatesClient::new(broker.channel(AGENT).await?)
        .revoke(pb::RevokeMandateRequest {
            mandate_id: mandate.id.clone(),
            ..Default::default()
        })
        .await?;
    let read = |id: &str| {
        let mut lyon = lyon.clone();
        let id = id.to_string();
        async move {
            anyhow::Ok(
                lyon.get(pb::GetConsentRequest { consent_id: id })
                    .await?
                    .into_inner()
                    .consent
                    .unwrap_or_default(),
            )
        }
    };
    assert_eq!(
        read(&under_mandate.id).await?.status(),
        pb::ConsentStatus::Revoked
    );
    let own = read(&in_person.id).await?;
    assert_eq!(own.status(), pb::ConsentStatus::Active);
    assert_eq!(own.expires_at, in_person.expires_at, "its own term");
    broker.stop().await
}

/// A consent an agent records under a mandate: its consumer reads it without the mandate's id
/// (one person's: in the hands of every consumer given a consent under it, it would link their
/// records of that person); the structure that recorded it sees it.
#[tokio::test]
async fn consumers_are_not_given_the_mandate_a_consent_was_recorded_under() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mandate = mandate_for(&broker, "test:alice", &["tarification_cantine"]).await?;
    let granted = ConsentsClient::new(broker.channel(AGENT).await?)
        .grant(pb::GrantConsentRequest {
            subject: "test:alice".into(),
            consumer: "mairie-lyon".into(),
            attestation_types: vec!["caf.quotient_familial".into()],
            purpose: "tarification_cantine".into(),
            valid_days: 7,
            mandate_id: mandate.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .consent
        .unwrap_or_default();
    assert_eq!(granted.mandate_id, mandate.id, "the structure's own view");
    let mut lyon = ConsentsClient::new(broker.channel("mairie-lyon").await?);
    let read = lyon
        .get(pb::GetConsentRequest {
            consent_id: granted.id.clone(),
        })
        .await?
        .into_inner()
        .consent
        .unwrap_or_default();
    assert_eq!(read.id, granted.id);
    assert_eq!(read.agent, "a.martin");
    assert_eq!(read.mandate_id, "", "the consumer reads no mandate id");
    let listed = lyon
        .list(pb::ListConsentsRequest {
            subject: "test:alice".into(),
            consumer: "mairie-lyon".into(),
            id_token: id_token("test:alice", "mairie-lyon"),
            ..Default::default()
        })
        .await?
        .into_inner()
        .consents;
    assert!(listed.iter().any(|c| c.id == granted.id), "{listed:?}");
    for c in listed {
        assert_eq!(c.mandate_id, "", "the consumer lists no mandate id");
    }
    broker.stop().await
}

/// An agent reads a person's access history under a mandate: the accesses for the purposes the
/// mandate covers, what the person let the structure act on, not every exchange about them;
/// the person reads them all.
#[tokio::test]
async fn an_agent_reads_the_accesses_within_the_mandates_purposes() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mandate = mandate_for(&broker, "test:alice", &["aide_energie"]).await?;
    exchange(&broker, "mairie-lyon")
        .await?
        .fetch(fetch_rfr("test:alice", "tarification_cantine", ""))
        .await?;
    exchange(&broker, AGENT)
        .await?
        .fetch(fetch_rfr("test:alice", "aide_energie", &mandate.id))
        .await?;
    let agents = GuichetClient::new(broker.channel(AGENT).await?)
        .list_accesses(pb::ListAccessesRequest {
            subject: "test:alice".into(),
            mandate_id: mandate.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .accesses;
    let purposes: Vec<&str> = agents.iter().map(|a| a.purpose.as_str()).collect();
    assert_eq!(purposes, ["aide_energie"]);
    let hers = GuichetClient::new(broker.channel("mairie-lyon").await?)
        .list_accesses(pb::ListAccessesRequest {
            subject: "test:alice".into(),
            id_token: id_token("test:alice", "mairie-lyon"),
            ..Default::default()
        })
        .await?
        .into_inner()
        .accesses;
    assert_eq!(hers.len(), 2, "{hers:?}");
    broker.stop().await
}
