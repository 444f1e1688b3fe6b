//! Exchange.Fetch end to end: a signed attestation under law, only permitted claims, every
//! refusal explained and recorded, and nothing about the person at rest.

use broker::client::reason_of;
use broker::event::{Event, Outcome, Record};
use broker::journal::{Journal, JournalOptions};
use tonic::Code;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_proto::v1::registry_client::RegistryClient;
use unefois_tests::journal::records_and_bytes as journal_records;
use unefois_tests::requests::{fetch as request, rfr};
use unefois_tests::{TestBroker, TestPki};

async fn fetch(
    broker: &TestBroker,
    name: &str,
    request: pb::FetchRequest,
) -> anyhow::Result<Result<pb::FetchResponse, tonic::Status>> {
    let mut client = ExchangeClient::new(broker.channel(name).await?);
    Ok(client.fetch(request).await.map(tonic::Response::into_inner))
}

#[tokio::test]
async fn a_consumer_obtains_a_signed_attestation_under_law() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let answer = fetch(&broker, "mairie-lyon", rfr("test:alice")).await??;

    let attestation = answer.attestation.expect("decoded attestation");
    assert_eq!(
        attestation.attestation_type,
        "dgfip.revenu_fiscal_reference"
    );
    assert_eq!(attestation.type_version, 1);
    assert_eq!(attestation.audience, "mairie-lyon");
    assert_eq!(attestation.provider, "dgfip");
    assert_eq!(attestation.purpose, "tarification_cantine");
    assert_eq!(attestation.nonce.len(), 16);
    assert!(!attestation.subject_pseudonym.contains("alice"));
    let basis = attestation.legal_basis.expect("legal basis");
    assert_eq!(basis.kind(), pb::LegalBasisKind::Law);
    assert!(basis.law_citation.contains("L. 114-8"));
    // Only the claims the habilitation allows: never annee_revenus.
    let mut names: Vec<_> = attestation.claims.keys().cloned().collect();
    names.sort();
    assert_eq!(names, vec!["nombre_parts", "revenu_fiscal_reference"]);
    assert_eq!(
        attestation.claims["revenu_fiscal_reference"].value,
        Some(pb::claim_value::Value::IntegerValue(23870))
    );
    let issued = attestation.issued_at.expect("issued_at").seconds;
    let valid_until = attestation.valid_until.expect("valid_until").seconds;
    assert_eq!(valid_until - issued, 365 * 86_400, "max age of the type");

    // The envelope verifies with the key published over Registry and in the PKI folder,
    // and its payload is the attestation that was decoded.
    let envelope = unefois_tests::envelope_of(&answer.envelope.expect("envelope"));
    let published = RegistryClient::new(broker.channel("dgfip").await?)
        .get_verifier_keys(pb::GetVerifierKeysRequest {})
        .await?
        .into_inner()
        .attestation_key;
    let on_disk = std::fs::read_to_string(pki.dir().join("attestation.vkey"))?;
    assert_eq!(on_disk.trim(), published);
    unefois_tlog::dsse::verify(&published, &envelope)?;
    let payload: serde_json::Value = serde_json::from_slice(&envelope.payload)?;
    assert_eq!(payload["id"], attestation.id.as_str());
    assert_eq!(payload["subject"], attestation.subject_pseudonym.as_str());
    assert_eq!(payload["claims"]["revenu_fiscal_reference"], 23870);
    assert_eq!(payload["legal_basis"]["kind"], "law");

    // A tampered payload does not verify.
    let mut tampered = envelope.clone();
    tampered.payload = String::from_utf8(tampered.payload)?
        .replace("23870", "13870")
        .into_bytes();
    assert!(unefois_tlog::dsse::verify(&published, &tampered).is_err());
    broker.stop().await
}

#[tokio::test]
async fn requested_claims_narrow_the_answer_and_others_are_refused() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let mut narrow = rfr("test:bob");
    narrow.claims = vec!["nombre_parts".into()];
    let answer = fetch(&broker, "mairie-lyon", narrow).await??;
    let claims = answer.attestation.expect("attestation").claims;
    assert_eq!(claims.len(), 1);
    assert_eq!(
        claims["nombre_parts"].value,
        Some(pb::claim_value::Value::NumberValue(1.5))
    );

    let mut wider = rfr("test:bob");
    wider.claims = vec!["annee_revenus".into()];
    let refused = fetch(&broker, "mairie-lyon", wider)
        .await?
        .expect_err("granted");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(reason_of(&refused), Some(ErrorReason::ClaimNotAllowed));
    broker.stop().await
}

#[tokio::test]
async fn every_refusal_has_its_status_and_reason() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let cases: Vec<(&str, pb::FetchRequest, Code, ErrorReason)> = vec![
        (
            "mairie-test",
            rfr("test:alice"),
            Code::PermissionDenied,
            ErrorReason::NoHabilitation,
        ),
        (
            "caf",
            rfr("test:alice"),
            Code::PermissionDenied,
            ErrorReason::WrongRole,
        ),
        (
            "mairie-lyon",
            request(
                "test:alice",
                "dgfip.revenu_fiscal_reference",
                "tarif_etudiant",
            ),
            Code::PermissionDenied,
            ErrorReason::PurposeNotAllowed,
        ),
        (
            "mairie-lyon",
            request("test:alice", "dgfip.revenu_fiscal_reference", "inconnu"),
            Code::InvalidArgument,
            ErrorReason::UnknownPurpose,
        ),
        (
            "mairie-lyon",
            request("test:alice", "dgfip.patrimoine", "tarification_cantine"),
            Code::NotFound,
            ErrorReason::UnknownAttestationType,
        ),
        (
            "mairie-lyon",
            rfr("test:zoe"),
            Code::NotFound,
            ErrorReason::SubjectNotFound,
        ),
        (
            "mairie-lyon",
            rfr("alice"),
            Code::InvalidArgument,
            ErrorReason::InvalidArgument,
        ),
        (
            "mairie-lyon",
            request("test:alice", "dgfip.revenu_fiscal_reference", ""),
            Code::InvalidArgument,
            ErrorReason::InvalidArgument,
        ),
        (
            "mairie-lyon",
            rfr("siren:110002012"),
            Code::InvalidArgument,
            ErrorReason::InvalidArgument,
        ),
        (
            "mairie-lyon",
            pb::FetchRequest {
                mandate_id: "m-1".into(),
                ..rfr("test:alice")
            },
            Code::NotFound,
            ErrorReason::UnknownMandate,
        ),
        (
            "mairie-lyon",
            pb::FetchRequest {
                claims: vec!["x".repeat(100)],
                ..rfr("test:alice")
            },
            Code::InvalidArgument,
            ErrorReason::InvalidArgument,
        ),
        (
            "mairie-lyon",
            pb::FetchRequest {
                claims: (0..65).map(|i| format!("c{i}")).collect(),
                ..rfr("test:alice")
            },
            Code::InvalidArgument,
            ErrorReason::InvalidArgument,
        ),
    ];
    for (caller, req, code, reason) in cases {
        let label = format!("{caller} {:?} {}", req.subject, req.purpose);
        let refused = fetch(&broker, caller, req)
            .await?
            .expect_err(&format!("{label}: granted"));
        assert_eq!(refused.code(), code, "{label}: {}", refused.message());
        assert_eq!(reason_of(&refused), Some(reason), "{label}");
        assert!(!refused.message().is_empty(), "{label}: explained");
    }
    // A request larger than any legitimate one is refused before it is decoded.
    let huge = pb::FetchRequest {
        subject: "test:alice".into(),
        attestation_type: "x".repeat(65 * 1024),
        ..Default::default()
    };
    let refused = fetch(&broker, "mairie-lyon", huge)
        .await?
        .expect_err("decoded");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(reason_of(&refused), Some(ErrorReason::RequestTooLarge));
    // The broker keeps serving the others.
    assert!(
        fetch(&broker, "mairie-lyon", rfr("test:alice"))
            .await?
            .is_ok()
    );
    broker.stop().await
}

#[tokio::test]
async fn every_exchange_is_journaled_without_claim_values_or_subject_ids() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let data = tempfile::tempdir()?;
    let broker = TestBroker::start_with(
        pki.dir(),
        unefois_tests::BrokerOptions {
            data_dir: Some(data.path().to_path_buf()),
            ..Default::default()
        },
    )
    .await?;
    let granted = fetch(&broker, "mairie-lyon", rfr("test:alice")).await??;
    fetch(&broker, "mairie-test", rfr("test:alice"))
        .await?
        .expect_err("denied");
    fetch(&broker, "mairie-lyon", rfr("test:zoe"))
        .await?
        .expect_err("failed");
    broker.stop().await?;

    let records = journal_records(data.path())?;
    let exchanges: Vec<_> = records
        .iter()
        .filter_map(|(r, _)| match &r.event {
            Event::Exchange(e) => Some(e.as_ref()),
            _ => None,
        })
        .collect();
    assert_eq!(exchanges.len(), 3);
    let envelope = granted.envelope.expect("envelope");
    let attestation = granted.attestation.expect("attestation");
    assert_eq!(exchanges[0].outcome, Outcome::Granted);
    assert_eq!(
        exchanges[0].attestation_id.as_deref(),
        Some(attestation.id.as_str())
    );
    assert_eq!(
        exchanges[0].payload_sha256.as_deref(),
        Some(unefois_tests::sha256_hex(&envelope.payload).as_str())
    );
    assert_eq!(
        exchanges[0].habilitation.as_deref(),
        Some("mairie-lyon.dgfip.revenu_fiscal_reference")
    );
    assert_eq!(exchanges[1].outcome, Outcome::Denied);
    assert_eq!(exchanges[1].reason.as_deref(), Some("NO_HABILITATION"));
    assert_eq!(exchanges[2].outcome, Outcome::Failed);
    assert_eq!(exchanges[2].reason.as_deref(), Some("SUBJECT_NOT_FOUND"));
    // Same person whoever asked, as the broker (holding the seal key) reads the entries; two
    // entries share nothing for whoever does not; never the raw id.
    let sealer = broker::keys::Keys::load(data.path(), false)?.sealer()?;
    let person = |e: &broker::event::ExchangeEvent| {
        assert!(e.subject.is_none(), "no audit pseudonym in clear");
        e.subject_sealed
            .as_deref()
            .map(|s| sealer.open(s).expect("opens"))
    };
    assert_eq!(person(exchanges[0]), person(exchanges[1]));
    assert_ne!(person(exchanges[0]), person(exchanges[2]));
    assert_ne!(exchanges[0].subject_sealed, exchanges[1].subject_sealed);
    for (_, bytes) in &records {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains("alice") && !text.contains("zoe"), "{text}");
        assert!(!text.contains("23870"), "claim value at rest: {text}");
    }
    Ok(())
}

#[tokio::test]
async fn a_retry_with_the_same_request_id_gets_the_same_answer() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let with_id = pb::FetchRequest {
        request_id: "lyon-2026-000042".into(),
        ..rfr("test:alice")
    };
    let first = fetch(&broker, "mairie-lyon", with_id.clone()).await??;
    let again = fetch(&broker, "mairie-lyon", with_id.clone()).await??;
    assert_eq!(first.attestation, again.attestation, "the same attestation");
    assert_eq!(first.envelope, again.envelope);

    // The same id for another request is refused.
    let other = pb::FetchRequest {
        subject: "test:bob".into(),
        ..with_id.clone()
    };
    let refused = fetch(&broker, "mairie-lyon", other)
        .await?
        .expect_err("reused");
    assert_eq!(refused.code(), Code::AlreadyExists);
    assert_eq!(reason_of(&refused), Some(ErrorReason::RequestIdReused));

    // Request ids are scoped to the caller: another consumer's id never returns this answer.
    let ccas = fetch(
        &broker,
        "ccas-lyon",
        pb::FetchRequest {
            purpose: "aide_energie".into(),
            ..with_id
        },
    )
    .await??;
    assert_ne!(
        ccas.attestation.as_ref().map(|a| &a.id),
        first.attestation.as_ref().map(|a| &a.id)
    );
    // Without a request id, every call is a new exchange.
    let a = fetch(&broker, "mairie-lyon", rfr("test:alice")).await??;
    let b = fetch(&broker, "mairie-lyon", rfr("test:alice")).await??;
    assert_ne!(a.attestation.map(|a| a.id), b.attestation.map(|a| a.id));
    broker.stop().await
}

#[tokio::test]
async fn two_consumers_get_unlinkable_pseudonyms_for_one_person() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let pseudonym = |answer: pb::FetchResponse| {
        answer
            .attestation
            .map(|a| a.subject_pseudonym)
            .unwrap_or_default()
    };
    let lyon = pseudonym(fetch(&broker, "mairie-lyon", rfr("test:carol")).await??);
    let lyon_again = pseudonym(fetch(&broker, "mairie-lyon", rfr("test:carol")).await??);
    let ccas = pseudonym(
        fetch(
            &broker,
            "ccas-lyon",
            request(
                "test:carol",
                "dgfip.revenu_fiscal_reference",
                "aide_energie",
            ),
        )
        .await??,
    );
    assert_eq!(lyon, lyon_again, "stable for one consumer");
    assert_ne!(lyon, ccas, "different for another consumer");
    assert!(!lyon.is_empty() && !ccas.contains("carol"));
    broker.stop().await
}

#[tokio::test]
async fn an_expired_consent_is_not_a_legal_basis() -> anyhow::Result<()> {
    use broker::event::RECORD_VERSION;
    use broker::subject::Subject;

    let pki = TestPki::for_sample_registry()?;
    let data = tempfile::tempdir()?;
    // A consent given 40 days ago for 30 days, as the broker would have journaled it.
    {
        // The keys a broker creates over an empty journal, before its first record.
        let keys = broker::keys::Keys::load(data.path(), true)?;
        let pseudonyms = keys.pseudonymizer()?;
        let alice = Subject::parse("test:alice", true)?;
        let given = time::OffsetDateTime::now_utc() - time::Duration::days(40);
        let journal = Journal::open(&data.path().join("journal"), JournalOptions::default())?;
        let record = Record {
            v: RECORD_VERSION,
            time: given,
            event: Event::ConsentGranted {
                consent_id: "0190c0de-0000-7000-8000-000000000001".into(),
                subject: None,
                subject_sealed: Some(keys.sealer()?.seal(&pseudonyms.audit(&alice))),
                pseudonym_key: pseudonyms.audit_key_id().into(),
                consumer: "mairie-lyon".into(),
                participant: "mairie-lyon".into(),
                agent: None,
                attestation_types: vec!["caf.quotient_familial".into()],
                purpose: "tarification_cantine".into(),
                expires_at: given + time::Duration::days(30),
                request_id: None,
                request_fingerprint: None,
                mandate_id: None,
            },
        };
        journal.append(record.encode()).await?;
        journal.close().await;
    }
    let broker = TestBroker::start_with(
        pki.dir(),
        unefois_tests::BrokerOptions {
            data_dir: Some(data.path().to_path_buf()),
            ..Default::default()
        },
    )
    .await?;
    let refused = fetch(
        &broker,
        "mairie-lyon",
        request(
            "test:alice",
            "caf.quotient_familial",
            "tarification_cantine",
        ),
    )
    .await?
    .expect_err("granted on an expired consent");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&refused), Some(ErrorReason::ConsentExpired));
    assert!(
        refused
            .message()
            .contains("0190c0de-0000-7000-8000-000000000001")
    );
    broker.stop().await
}

#[tokio::test]
async fn caller_chosen_ids_and_unregistered_names_never_reach_the_journal_verbatim()
-> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let data = tempfile::tempdir()?;
    let broker = TestBroker::start_with(
        pki.dir(),
        unefois_tests::BrokerOptions {
            data_dir: Some(data.path().to_path_buf()),
            ..Default::default()
        },
    )
    .await?;
    // A careless client builds its request ids (and a type name) from business keys.
    let with_id = pb::FetchRequest {
        request_id: "siren:552100554".into(),
        ..rfr("test:alice")
    };
    fetch(&broker, "mairie-lyon", with_id.clone()).await??;
    let reused = fetch(
        &broker,
        "mairie-lyon",
        pb::FetchRequest {
            subject: "test:bob".into(),
            ..with_id
        },
    )
    .await?
    .expect_err("reused id");
    assert_eq!(reason_of(&reused), Some(ErrorReason::RequestIdReused));
    fetch(
        &broker,
        "mairie-lyon",
        request("test:alice", "siret:11000201100044", "tarification_cantine"),
    )
    .await?
    .expect_err("unknown type");
    broker.stop().await?;

    let records = journal_records(data.path())?;
    let exchanges: Vec<_> = records
        .iter()
        .filter_map(|(r, _)| match &r.event {
            Event::Exchange(e) => Some(e.as_ref()),
            _ => None,
        })
        .collect();
    assert_eq!(exchanges.len(), 3, "the refused retry is recorded too");
    assert_eq!(exchanges[1].reason.as_deref(), Some("REQUEST_ID_REUSED"));
    assert_eq!(
        exchanges[0].request_id, exchanges[1].request_id,
        "retries match"
    );
    assert!(
        exchanges[0]
            .request_id
            .as_deref()
            .is_some_and(|id| id.starts_with("hmac:"))
    );
    assert_eq!(exchanges[2].attestation_type, "(unregistered)");
    for (_, bytes) in &records {
        let text = String::from_utf8_lossy(bytes);
        assert!(
            !text.contains("552100554") && !text.contains("11000201100044"),
            "{text}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_derived_claim_is_released_and_its_source_never_is() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let data = tempfile::tempdir()?;
    let broker = TestBroker::start_with(
        pki.dir(),
        unefois_tests::BrokerOptions {
            data_dir: Some(data.path().to_path_buf()),
            ..Default::default()
        },
    )
    .await?;
    let qf = |subject: &str| request(subject, "caf.quotient_familial", "aide_energie");
    // Alice's family quotient is 612: under 800, bracket B.
    let answer = fetch(&broker, "ccas-lyon", qf("test:alice")).await??;
    let attestation = answer.attestation.expect("attestation");
    let mut names: Vec<_> = attestation.claims.keys().cloned().collect();
    names.sort();
    assert_eq!(names, vec!["qf_inferieur_800", "tranche_qf"]);
    assert_eq!(
        attestation.claims["qf_inferieur_800"].value,
        Some(pb::claim_value::Value::BooleanValue(true))
    );
    assert_eq!(
        attestation.claims["tranche_qf"].value,
        Some(pb::claim_value::Value::StringValue("B".into()))
    );
    let payload: serde_json::Value =
        serde_json::from_slice(&answer.envelope.expect("envelope").payload)?;
    assert_eq!(
        payload["rules"]["qf_inferieur_800"],
        "quotient_familial <= 800"
    );
    assert!(!payload.to_string().contains(":612"), "{payload}");
    // The raw value is not obtainable by asking for it.
    let refused = fetch(
        &broker,
        "ccas-lyon",
        pb::FetchRequest {
            claims: vec!["quotient_familial".into()],
            ..qf("test:alice")
        },
    )
    .await?
    .expect_err("raw value released");
    assert_eq!(reason_of(&refused), Some(ErrorReason::ClaimNotAllowed));
    broker.stop().await?;

    let records = journal_records(data.path())?;
    let granted = records
        .iter()
        .find_map(|(r, _)| match &r.event {
            Event::Exchange(e) if e.outcome == Outcome::Granted => Some(e.clone()),
            _ => None,
        })
        .expect("granted exchange");
    assert_eq!(
        granted.derived_rules,
        vec![
            "qf_inferieur_800: quotient_familial <= 800".to_string(),
            "tranche_qf: quotient_familial: A if <= 500, B if <= 800, C otherwise".to_string()
        ]
    );
    // As a JSON value (a bare "612" could appear inside a hash or an id by chance).
    for (_, bytes) in &records {
        assert!(!String::from_utf8_lossy(bytes).contains(":612"));
    }
    Ok(())
}

#[tokio::test]
async fn a_retry_after_a_restart_is_recorded_as_a_retry_of_the_earlier_request()
-> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let data_dir = pki.scratch().join("data");
    let options = || unefois_tests::BrokerOptions {
        data_dir: Some(data_dir.clone()),
        ..unefois_tests::BrokerOptions::default()
    };
    let with_id = |subject: &str| pb::FetchRequest {
        request_id: "dossier-2026-0042".into(),
        ..rfr(subject)
    };
    let broker = TestBroker::start_with(pki.dir(), options()).await?;
    let first = fetch(&broker, "mairie-lyon", with_id("test:alice"))
        .await??
        .receipt
        .unwrap_or_default();
    broker.stop().await?;

    // The answer was in memory only: after the restart the retry is served again, and its
    // entry points to the earlier one.
    let broker = TestBroker::start_with(pki.dir(), options()).await?;
    let again = fetch(&broker, "mairie-lyon", with_id("test:alice"))
        .await??
        .receipt
        .unwrap_or_default();
    let entry: serde_json::Value = serde_json::from_slice(&again.entry)?;
    assert_eq!(entry["retry_of"], first.leaf_index, "{entry}");
    let original: serde_json::Value = serde_json::from_slice(&first.entry)?;
    assert_eq!(
        entry["request_fingerprint"],
        original["request_fingerprint"]
    );
    assert!(original.get("retry_of").is_none(), "{original}");
    // No raw subject id in what identifies the request.
    assert!(!entry.to_string().contains("alice"), "{entry}");

    // The same id for another request is still refused after the restart.
    let reused = fetch(&broker, "mairie-lyon", with_id("test:bob"))
        .await?
        .expect_err("another request with the same id");
    assert_eq!(reused.code(), Code::AlreadyExists);
    assert_eq!(reason_of(&reused), Some(ErrorReason::RequestIdReused));

    // Another participant's request id is its own: served, never anyone's retry.
    let other = fetch(
        &broker,
        "ccas-lyon",
        pb::FetchRequest {
            purpose: "aide_energie".into(),
            ..with_id("test:alice")
        },
    )
    .await??
    .receipt
    .unwrap_or_default();
    let entry: serde_json::Value = serde_json::from_slice(&other.entry)?;
    assert!(entry.get("retry_of").is_none(), "{entry}");
    broker.stop().await
}
