//! The audit log end to end: a FetchResponse verifies offline with the published keys, signed
//! checkpoints only ever grow consistently, auditors read (and are recorded reading) every
//! event, a citizen sees who read their data, and an entry altered at rest or a forked log is
//! detected by a verifier holding only signed checkpoints and proofs.

use std::path::Path;

use anyhow::{Context, anyhow};
use broker::client::reason_of;
use broker::signing::AttestationSigner;
use tokio_stream::StreamExt;
use tonic::Code;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::audit_client::AuditClient;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_proto::v1::guichet_client::GuichetClient;
use unefois_tests::requests::{fetch as request, rfr};
use unefois_tests::sample::{QF, RFR};
use unefois_tests::{TestBroker, TestPki};
use unefois_tlog::VerifiedCheckpoint;
use unefois_tlog::verify_checkpoint;
use unefois_tlog::{root_of, verify_consistency, verify_inclusion};

async fn fetch(
    broker: &TestBroker,
    name: &str,
    request: pb::FetchRequest,
) -> anyhow::Result<Result<pb::FetchResponse, tonic::Status>> {
    let mut client = ExchangeClient::new(broker.channel(name).await?);
    Ok(client.fetch(request).await.map(tonic::Response::into_inner))
}

async fn granted(
    broker: &TestBroker,
    name: &str,
    request: pb::FetchRequest,
) -> anyhow::Result<pb::FetchResponse> {
    let what = format!(
        "{name} fetching {} for {}",
        request.attestation_type, request.subject
    );
    fetch(broker, name, request)
        .await?
        .map_err(|s| anyhow!("{what}: {s:?}"))
}

async fn denied(broker: &TestBroker, name: &str, request: pb::FetchRequest) -> anyhow::Result<()> {
    let what = format!(
        "{name} fetching {} for {}",
        request.attestation_type, request.subject
    );
    match fetch(broker, name, request).await? {
        Ok(_) => Err(anyhow!("{what}: granted, expected a refusal")),
        Err(_) => Ok(()),
    }
}

async fn audit(
    broker: &TestBroker,
    name: &str,
) -> anyhow::Result<AuditClient<tonic::transport::Channel>> {
    Ok(AuditClient::new(broker.channel(name).await?))
}

/// The two verifier keys the broker published in the PKI folder: (attestation, log).
fn published_keys(pki_dir: &Path) -> anyhow::Result<(String, String)> {
    let read = |name: &str| -> anyhow::Result<String> {
        let path = pki_dir.join(name);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(text.trim().to_string())
    };
    Ok((read("attestation.vkey")?, read("log.vkey")?))
}

fn hashes(proof: &[Vec<u8>]) -> anyhow::Result<Vec<[u8; 32]>> {
    proof
        .iter()
        .map(|h| {
            <[u8; 32]>::try_from(h.as_slice())
                .map_err(|_| anyhow!("a proof hash of {} bytes", h.len()))
        })
        .collect()
}

fn json(entry: &[u8]) -> anyhow::Result<serde_json::Value> {
    serde_json::from_slice(entry).context("an audit entry is not JSON")
}

/// The signed note of the checkpoint of `size` entries (0: the latest).
async fn checkpoint_note(broker: &TestBroker, name: &str, size: u64) -> anyhow::Result<String> {
    Ok(audit(broker, name)
        .await?
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: size })
        .await?
        .into_inner()
        .checkpoint)
}

/// The latest checkpoint, verified with the log key.
async fn latest(
    broker: &TestBroker,
    log_vkey: &str,
) -> anyhow::Result<(String, VerifiedCheckpoint)> {
    let note = checkpoint_note(broker, "caf", 0).await?;
    let verified = verify_checkpoint(log_vkey, &note)?;
    Ok((note, verified))
}

async fn inclusion_proof(
    broker: &TestBroker,
    leaf_index: u64,
    tree_size: u64,
) -> Result<Vec<Vec<u8>>, tonic::Status> {
    let mut client = audit(broker, "dgfip")
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    client
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            leaf_index,
            tree_size,
        })
        .await
        .map(|r| r.into_inner().hashes)
}

async fn consistency_proof(
    broker: &TestBroker,
    first_size: u64,
    second_size: u64,
) -> Result<Vec<Vec<u8>>, tonic::Status> {
    let mut client = audit(broker, "dgfip")
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    client
        .get_consistency_proof(pb::GetConsistencyProofRequest {
            first_size,
            second_size,
        })
        .await
        .map(|r| r.into_inner().hashes)
}

/// One ListEvents call as `name` (at most 1000 events).
async fn list_events(
    broker: &TestBroker,
    name: &str,
    request: pb::ListEventsRequest,
) -> Result<Vec<pb::AuditEvent>, tonic::Status> {
    let mut client = audit(broker, name)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    client
        .list_events(pb::ListEventsRequest {
            limit: 1000,
            ..request
        })
        .await
        .map(|r| r.into_inner().events)
}

async fn all_events(broker: &TestBroker) -> anyhow::Result<Vec<pb::AuditEvent>> {
    Ok(list_events(broker, "cnil", pb::ListEventsRequest::default()).await?)
}

fn expect_refused(
    result: Result<impl std::fmt::Debug, tonic::Status>,
    code: Code,
    reason: ErrorReason,
) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(&status), Some(reason), "{status:?}");
}

/// Writes an attestation key in a broker's data dir before its first start: one whose vkey's
/// base64 part holds a '+' (`with_plus`), or one whose vkey holds none.
fn seed_attestation_key(data_dir: &Path, with_plus: bool) -> anyhow::Result<String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    let (seed, vkey) = (0u8..=255)
        .map(|i| {
            let seed = [i; 32];
            let vkey = AttestationSigner::from_seed(&seed, "unefois.test")
                .unwrap()
                .vkey()
                .to_string();
            (seed, vkey)
        })
        .find(|(_, vkey)| {
            let key = vkey.splitn(3, '+').nth(2).unwrap_or_default();
            key.contains('+') == with_plus
        })
        .context("no such seed")?;
    let keys = data_dir.join("keys");
    std::fs::create_dir_all(&keys)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(keys.join("attestation.ed25519"))?
        .write_all(&seed)?;
    Ok(vkey)
}

#[tokio::test]
async fn a_fetch_response_alone_verifies_offline() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let data = tempfile::tempdir()?;
    // A key whose vkey has no '+' in its base64: see
    // `an_attestation_key_with_a_plus_in_its_vkey_verifies` for the others.
    seed_attestation_key(data.path(), false)?;
    let broker = TestBroker::start_on(pki.dir(), data.path()).await?;
    let answer = granted(&broker, "mairie-lyon", rfr("test:alice")).await?;
    broker.stop().await?;

    // From here on: only the FetchResponse and the two key files, the broker is gone.
    let (attestation_vkey, log_vkey) = published_keys(pki.dir())?;
    assert_ne!(attestation_vkey, log_vkey, "two different keys");
    let attestation = answer.attestation.expect("attestation");
    let envelope = unefois_tests::envelope_of(&answer.envelope.expect("envelope"));
    let receipt = answer.receipt.expect("receipt");

    unefois_tlog::dsse::verify(&attestation_vkey, &envelope)
        .with_context(|| format!("attestation key {attestation_vkey:?}"))?;
    assert!(
        unefois_tlog::dsse::verify(&log_vkey, &envelope).is_err(),
        "the log key does not sign attestations"
    );

    let checkpoint = verify_checkpoint(&log_vkey, &receipt.checkpoint)?;
    assert_eq!(checkpoint.origin, "unefois.test/unefois/audit");
    assert!(
        verify_checkpoint(&attestation_vkey, &receipt.checkpoint).is_err(),
        "the attestation key does not sign checkpoints"
    );
    assert!(receipt.leaf_index >= 1, "entry 0 is the registry load");
    assert!(receipt.leaf_index < checkpoint.size);

    let proof = hashes(&receipt.inclusion_proof)?;
    verify_inclusion(
        &proof,
        checkpoint.size,
        checkpoint.root,
        receipt.leaf_index,
        &receipt.entry,
    )?;

    let entry = json(&receipt.entry)?;
    assert_eq!(entry["kind"], "exchange");
    assert_eq!(entry["outcome"], "granted");
    assert_eq!(entry["participant"], "mairie-lyon");
    assert_eq!(entry["attestation_type"], RFR);
    assert_eq!(entry["attestation_id"], attestation.id.as_str());
    assert_eq!(
        entry["payload_sha256"],
        unefois_tests::sha256_hex(&envelope.payload).as_str()
    );
    let text = String::from_utf8(receipt.entry.clone())?;
    assert!(!text.contains("alice"), "no raw subject id: {text}");
    assert!(!text.contains("23870"), "no claim value: {text}");

    // One byte changed anywhere in the entry: the proof no longer holds.
    for at in [0, receipt.entry.len() / 2, receipt.entry.len() - 1] {
        let mut altered = receipt.entry.clone();
        altered[at] ^= 0x01;
        assert!(
            verify_inclusion(
                &proof,
                checkpoint.size,
                checkpoint.root,
                receipt.leaf_index,
                &altered
            )
            .is_err(),
            "byte {at} altered"
        );
    }
    // Nor does the entry verify at another index, or against another root.
    if receipt.leaf_index + 1 < checkpoint.size {
        assert!(
            verify_inclusion(
                &proof,
                checkpoint.size,
                checkpoint.root,
                receipt.leaf_index + 1,
                &receipt.entry
            )
            .is_err()
        );
    }
    assert!(
        verify_inclusion(
            &proof,
            checkpoint.size,
            [0; 32],
            receipt.leaf_index,
            &receipt.entry
        )
        .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn checkpoints_grow_consistently() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let (_, log_vkey) = published_keys(pki.dir())?;

    let response = audit(&broker, "caf")
        .await?
        .get_checkpoint(pb::GetCheckpointRequest::default())
        .await?
        .into_inner();
    assert_eq!(response.verifier_key, log_vkey, "the key published on disk");
    let first_note = response.checkpoint;
    let first = verify_checkpoint(&log_vkey, &first_note)?;
    assert!(first.size >= 1, "the registry load is logged");

    granted(&broker, "mairie-lyon", rfr("test:alice")).await?;
    granted(&broker, "mairie-lyon", rfr("test:bob")).await?;
    denied(&broker, "mairie-test", rfr("test:alice")).await?;

    let (_, second) = latest(&broker, &log_vkey).await?;
    assert_eq!(second.size, first.size + 3, "one entry per fetch");
    assert_ne!(second.root, first.root);

    let proof = hashes(&consistency_proof(&broker, first.size, second.size).await?)?;
    verify_consistency(&proof, first.size, first.root, second.size, second.root)?;
    assert!(verify_consistency(&proof, first.size, second.root, second.size, second.root).is_err());
    assert!(verify_consistency(&proof, first.size, first.root, second.size, first.root).is_err());
    // Same size: an empty proof.
    assert!(
        consistency_proof(&broker, second.size, second.size)
            .await?
            .is_empty()
    );

    // Checkpoints are deterministic: the old size yields the very same signed note.
    assert_eq!(
        checkpoint_note(&broker, "dgfip", first.size).await?,
        first_note
    );

    // Every leaf of the second tree is proven included, against the entries an auditor lists.
    let events = all_events(&broker).await?;
    assert!(events.len() as u64 > second.size);
    for leaf in 0..second.size {
        let event = &events[leaf as usize];
        assert_eq!(event.index, leaf);
        let proof = hashes(&inclusion_proof(&broker, leaf, second.size).await?)?;
        verify_inclusion(&proof, second.size, second.root, leaf, &event.entry)
            .map_err(|e| anyhow!("leaf {leaf}: {e}"))?;
    }

    // Out of range.
    let (_, now) = latest(&broker, &log_vkey).await?;
    expect_refused(
        inclusion_proof(&broker, second.size, second.size).await,
        Code::InvalidArgument,
        ErrorReason::LeafIndexOutOfRange,
    );
    expect_refused(
        inclusion_proof(&broker, 0, now.size + 1).await,
        Code::InvalidArgument,
        ErrorReason::TreeSizeOutOfRange,
    );
    expect_refused(
        inclusion_proof(&broker, 0, 0).await,
        Code::InvalidArgument,
        ErrorReason::LeafIndexOutOfRange,
    );
    expect_refused(
        consistency_proof(&broker, 0, second.size).await,
        Code::InvalidArgument,
        ErrorReason::TreeSizeOutOfRange,
    );
    expect_refused(
        consistency_proof(&broker, first.size, now.size + 1).await,
        Code::InvalidArgument,
        ErrorReason::TreeSizeOutOfRange,
    );
    expect_refused(
        consistency_proof(&broker, second.size, first.size).await,
        Code::InvalidArgument,
        ErrorReason::TreeSizeOutOfRange,
    );
    expect_refused(
        checkpoint_note(&broker, "caf", now.size + 1)
            .await
            .map_err(|e| e.downcast::<tonic::Status>().expect("a status")),
        Code::InvalidArgument,
        ErrorReason::TreeSizeOutOfRange,
    );
    broker.stop().await
}

#[tokio::test]
async fn list_events_is_for_auditors_and_is_itself_audited() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let (_, log_vkey) = published_keys(pki.dir())?;

    expect_refused(
        list_events(&broker, "mairie-lyon", pb::ListEventsRequest::default()).await,
        Code::PermissionDenied,
        ErrorReason::WrongRole,
    );

    let alice = granted(&broker, "mairie-lyon", rfr("test:alice")).await?;
    let alice_id = alice.attestation.expect("attestation").id;
    let bob = granted(&broker, "mairie-lyon", rfr("test:bob")).await?;
    let bob_id = bob.attestation.expect("attestation").id;
    denied(&broker, "mairie-test", rfr("test:alice")).await?;
    // No consent recorded: refused.
    denied(
        &broker,
        "mairie-lyon",
        request("test:bob", QF, "tarification_cantine"),
    )
    .await?;

    let events = all_events(&broker).await?;
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.index, i as u64, "every entry, in order");
        let entry = json(&event.entry)?;
        assert_eq!(
            entry["kind"],
            event.kind.as_str(),
            "decoded beside the entry"
        );
    }
    assert_eq!(events[0].kind, "broker_started");
    assert_eq!(events[1].kind, "registry_loaded");
    // The read is recorded before it happens: it lists itself.
    let last = events.last().expect("events");
    assert_eq!(last.kind, "audit_read");
    assert_eq!(last.participant, "cnil");

    // The downloaded entries are exactly the signed log.
    let (_, checkpoint) = latest(&broker, &log_vkey).await?;
    assert_eq!(checkpoint.size, events.len() as u64);
    assert_eq!(root_of(events.iter().map(|e| &e.entry)), checkpoint.root);

    let reads = list_events(
        &broker,
        "cnil",
        pb::ListEventsRequest {
            kind: "audit_read".into(),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(reads.len(), 2, "{reads:?}");
    assert!(reads.iter().all(|e| e.participant == "cnil"));
    assert!(reads.iter().any(|e| e.index == last.index));
    // The refused read of mairie-lyon is not an audited read.
    assert!(!reads.iter().any(|e| e.participant == "mairie-lyon"));

    // By subject, given raw: the broker pseudonymises it.
    let exchange_of = |id: &str| {
        events
            .iter()
            .find(|e| e.kind == "exchange" && e.attestation_id == id)
            .cloned()
            .expect("the exchange of an issued attestation")
    };
    let alice_event = exchange_of(&alice_id);
    let bob_event = exchange_of(&bob_id);
    assert_eq!(alice_event.outcome, "granted");
    assert!(!alice_event.subject_pseudonym.is_empty());
    assert!(!alice_event.subject_pseudonym.contains("alice"));
    assert_ne!(alice_event.subject_pseudonym, bob_event.subject_pseudonym);
    let about_alice = list_events(
        &broker,
        "cnil",
        pb::ListEventsRequest {
            subject: "test:alice".into(),
            ..Default::default()
        },
    )
    .await?;
    let exchanges = about_alice.iter().filter(|e| e.kind == "exchange").count();
    assert_eq!(
        exchanges, 2,
        "granted to mairie-lyon, denied to mairie-test"
    );
    assert!(
        about_alice
            .iter()
            .all(|e| e.subject_pseudonym == alice_event.subject_pseudonym)
    );
    assert!(about_alice.iter().any(|e| e.index == alice_event.index));
    // The auditor's query is recorded without the raw subject id, and without her audit
    // pseudonym: two searches for her share nothing, nor one with her entries.
    let reads = list_events(
        &broker,
        "cnil",
        pb::ListEventsRequest {
            kind: "audit_read".into(),
            ..Default::default()
        },
    )
    .await?;
    for read in &reads {
        let text = String::from_utf8(read.entry.clone())?;
        assert!(!text.contains("alice"), "{text}");
        assert!(!text.contains(&alice_event.subject_pseudonym), "{text}");
    }
    // Sealed, as every entry holds the person: auditors find the search among the entries
    // about her, with her pseudonym opened.
    let kinds: Vec<&str> = about_alice.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["exchange", "exchange", "audit_read"],
        "this very search"
    );
    let search = about_alice.last().expect("the search");
    let text = String::from_utf8(search.entry.clone())?;
    assert!(text.contains("subject=sealed"), "{text}");
    assert!(json(&search.entry)?["subject_sealed"].is_string(), "{text}");

    // By outcome.
    let refused = list_events(
        &broker,
        "cnil",
        pb::ListEventsRequest {
            outcome: "denied".into(),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused
            .iter()
            .all(|e| e.kind == "exchange" && e.outcome == "denied")
    );
    assert!(refused.iter().any(|e| e.participant == "mairie-test"
        && reason_name(e.reason) == Some(ErrorReason::NoHabilitation)));

    // By attestation type.
    let qf = list_events(
        &broker,
        "cnil",
        pb::ListEventsRequest {
            attestation_type: QF.into(),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(qf.len(), 1, "{qf:?}");
    assert_eq!(qf[0].attestation_type, QF);
    assert_eq!(qf[0].outcome, "denied");
    let rfrs = list_events(
        &broker,
        "cnil",
        pb::ListEventsRequest {
            attestation_type: RFR.into(),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(rfrs.len(), 3);
    assert!(rfrs.iter().all(|e| e.attestation_type == RFR));

    // By participant.
    let of_test = list_events(
        &broker,
        "cnil",
        pb::ListEventsRequest {
            participant: "mairie-test".into(),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(of_test.len(), 1);
    assert_eq!(of_test[0].participant, "mairie-test");
    let of_lyon = list_events(
        &broker,
        "cnil",
        pb::ListEventsRequest {
            participant: "mairie-lyon".into(),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(of_lyon.len(), 3);
    assert!(of_lyon.iter().all(|e| e.participant == "mairie-lyon"));

    // Export: every matching event, in order, the same entries as listed.
    let mut exported = Vec::new();
    let mut stream = audit(&broker, "cnil")
        .await?
        .export_events(pb::ListEventsRequest::default())
        .await?
        .into_inner();
    while let Some(event) = stream.next().await {
        exported.push(event?);
    }
    let (_, now) = latest(&broker, &log_vkey).await?;
    assert_eq!(exported.len() as u64, now.size, "every entry");
    for (i, event) in exported.iter().enumerate() {
        assert_eq!(event.index, i as u64);
    }
    for listed in &events {
        assert_eq!(exported[listed.index as usize].entry, listed.entry);
    }
    let own = exported.last().expect("exported");
    assert_eq!(own.kind, "audit_read");
    assert_eq!(own.participant, "cnil");
    assert!(String::from_utf8(own.entry.clone())?.contains("ExportEvents"));
    assert_eq!(root_of(exported.iter().map(|e| &e.entry)), now.root);

    let mut stream = audit(&broker, "cnil")
        .await?
        .export_events(pb::ListEventsRequest {
            outcome: "denied".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut exported_refusals = Vec::new();
    while let Some(event) = stream.next().await {
        exported_refusals.push(event?.index);
    }
    assert_eq!(
        exported_refusals,
        refused.iter().map(|e| e.index).collect::<Vec<_>>()
    );

    let mut caf = audit(&broker, "caf").await?;
    expect_refused(
        caf.export_events(pb::ListEventsRequest::default())
            .await
            .map(|_| ()),
        Code::PermissionDenied,
        ErrorReason::WrongRole,
    );
    drop(caf);
    broker.stop().await
}

fn reason_name(reason: i32) -> Option<ErrorReason> {
    ErrorReason::try_from(reason).ok()
}

/// An auditor's search is recorded for good, in the signed log: a filter's participant or type
/// that the registry does not know (a careless client's free text there, a person's identifier
/// included) is recorded as "(unregistered)", as exchanges record theirs, and the filter still
/// applies; a kind that no record has is refused. Fails without it (the free text in the entry).
#[tokio::test]
async fn an_auditors_free_text_filters_never_reach_the_log_verbatim() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    granted(&broker, "mairie-lyon", rfr("test:alice")).await?;
    for (participant, attestation_type) in [("siren:552100554", ""), ("", "DUPONT|MARIE")] {
        let found = list_events(
            &broker,
            "cnil",
            pb::ListEventsRequest {
                participant: participant.into(),
                attestation_type: attestation_type.into(),
                ..Default::default()
            },
        )
        .await?;
        assert!(found.is_empty(), "{found:?}");
    }
    expect_refused(
        list_events(
            &broker,
            "cnil",
            pb::ListEventsRequest {
                kind: "siren:552100554".into(),
                ..Default::default()
            },
        )
        .await,
        Code::InvalidArgument,
        ErrorReason::InvalidArgument,
    );
    // Registered names are recorded as given, and filter as before.
    let lyon = list_events(
        &broker,
        "cnil",
        pb::ListEventsRequest {
            participant: "mairie-lyon".into(),
            attestation_type: RFR.into(),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(lyon.len(), 1, "{lyon:?}");
    let reads = all_events(&broker)
        .await?
        .into_iter()
        .filter(|e| e.kind == "audit_read")
        .map(|e| String::from_utf8(e.entry))
        .collect::<Result<Vec<_>, _>>()?;
    assert_eq!(reads.len(), 4, "{reads:?}");
    for read in &reads {
        assert!(
            !read.contains("552100554") && !read.contains("DUPONT"),
            "{read}"
        );
    }
    assert!(
        reads[0].contains(r#"participant=Some(\"(unregistered)\")"#),
        "{}",
        reads[0]
    );
    assert!(
        reads[1].contains(r#"type=Some(\"(unregistered)\")"#),
        "{}",
        reads[1]
    );
    assert!(
        reads[2].contains(r#"participant=Some(\"mairie-lyon\")"#),
        "{}",
        reads[2]
    );
    broker.stop().await?;
    Ok(())
}

async fn list_accesses(
    broker: &TestBroker,
    name: &str,
    subject: &str,
    page_size: u32,
    page_token: &str,
) -> Result<pb::ListAccessesResponse, tonic::Status> {
    let mut client = GuichetClient::new(
        broker
            .channel(name)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?,
    );
    client
        .list_accesses(pb::ListAccessesRequest {
            subject: subject.into(),
            page_size,
            page_token: page_token.into(),
            id_token: if subject.starts_with("test:") {
                unefois_tests::id_token(subject, name)
            } else {
                String::new()
            },
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Checks every access of a page against the page's checkpoint, with the log key only.
fn verify_accesses(page: &pb::ListAccessesResponse, log_vkey: &str) -> anyhow::Result<()> {
    let checkpoint = verify_checkpoint(log_vkey, &page.checkpoint)?;
    for access in &page.accesses {
        let proof = hashes(&access.inclusion_proof)?;
        verify_inclusion(
            &proof,
            checkpoint.size,
            checkpoint.root,
            access.leaf_index,
            &access.entry,
        )
        .map_err(|e| anyhow!("access at leaf {}: {e}", access.leaf_index))?;
        let entry = json(&access.entry)?;
        assert_eq!(entry["kind"], "exchange");
        assert_eq!(entry["participant"], access.consumer.as_str());
        assert_eq!(entry["outcome"], access.outcome.as_str());
    }
    Ok(())
}

/// mairie-lyon and ccas-lyon read carol's tax income, mairie-test is refused it; mairie-lyon
/// also reads alice's. Returns the leaf indexes of carol's three exchanges and alice's.
async fn carol_is_read(broker: &TestBroker) -> anyhow::Result<(Vec<u64>, u64)> {
    let lyon = granted(broker, "mairie-lyon", rfr("test:carol")).await?;
    let alice = granted(broker, "mairie-lyon", rfr("test:alice")).await?;
    let ccas = granted(
        broker,
        "ccas-lyon",
        request("test:carol", RFR, "aide_energie"),
    )
    .await?;
    denied(broker, "mairie-test", rfr("test:carol")).await?;
    let index = |r: &pb::FetchResponse| r.receipt.as_ref().map_or(u64::MAX, |r| r.leaf_index);
    Ok((
        vec![index(&lyon), index(&ccas), index(&ccas) + 1],
        index(&alice),
    ))
}

#[tokio::test]
async fn a_citizen_sees_who_read_their_data() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let (_, log_vkey) = published_keys(pki.dir())?;
    let (carol_leaves, alice_leaf) = carol_is_read(&broker).await?;

    let page = list_accesses(&broker, "mairie-lyon", "test:carol", 0, "").await?;
    verify_accesses(&page, &log_vkey)?;
    assert!(page.next_page_token.is_empty());
    assert_eq!(page.accesses.len(), 3, "{:?}", page.accesses);
    let mut leaves: Vec<u64> = page.accesses.iter().map(|a| a.leaf_index).collect();
    leaves.sort_unstable();
    assert_eq!(leaves, carol_leaves);
    assert!(!leaves.contains(&alice_leaf), "nothing about alice");
    // Each entry seals the person anew: the consumers' entries about Carol share nothing.
    let mut sealed: Vec<String> = page
        .accesses
        .iter()
        .map(|a| {
            json(&a.entry).map(|e| {
                assert!(
                    e.get("subject").is_none(),
                    "no audit pseudonym in clear: {e}"
                );
                e["subject_sealed"].as_str().unwrap_or_default().to_string()
            })
        })
        .collect::<anyhow::Result<_>>()?;
    assert!(sealed.iter().all(|s| s.len() > 64), "{sealed:?}");
    sealed.sort();
    sealed.dedup();
    assert_eq!(sealed.len(), 3, "{sealed:?}");

    let by = |consumer: &str| {
        page.accesses
            .iter()
            .find(|a| a.consumer == consumer)
            .cloned()
            .unwrap_or_else(|| panic!("no access by {consumer}: {:?}", page.accesses))
    };
    let lyon = by("mairie-lyon");
    assert_eq!(lyon.consumer_name, "Ville de Lyon");
    assert_eq!(lyon.attestation_type, RFR);
    assert_eq!(lyon.purpose, "tarification_cantine");
    assert!(lyon.purpose_label.contains("restauration scolaire"));
    assert_eq!(lyon.outcome, "granted");
    let basis = lyon.legal_basis.clone().expect("legal basis");
    assert_eq!(basis.kind(), pb::LegalBasisKind::Law);
    assert!(basis.law_citation.contains("L. 114-8"), "{basis:?}");
    assert!(lyon.time.is_some());

    let ccas = by("ccas-lyon");
    assert_eq!(
        ccas.consumer_name,
        "Centre communal d'action sociale de Lyon"
    );
    assert_eq!(ccas.purpose, "aide_energie");
    assert!(!ccas.purpose_label.is_empty());
    assert_eq!(ccas.outcome, "granted");
    let basis = ccas.legal_basis.clone().expect("legal basis");
    assert_eq!(basis.kind(), pb::LegalBasisKind::Law);
    assert!(basis.law_citation.contains("L. 123-5"), "{basis:?}");

    let test = by("mairie-test");
    assert_eq!(test.consumer_name, "Commune de test (aucune habilitation)");
    assert!(!test.purpose_label.is_empty());
    assert_eq!(test.outcome, "denied");

    // Only guichets serve the citizen's tracker.
    expect_refused(
        list_accesses(&broker, "caf", "test:carol", 0, "").await,
        Code::PermissionDenied,
        ErrorReason::WrongRole,
    );

    // One at a time, the same three.
    let mut walked = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let page = list_accesses(&broker, "mairie-lyon", "test:carol", 1, &token).await?;
        verify_accesses(&page, &log_vkey)?;
        assert!(page.accesses.len() <= 1);
        walked.extend(page.accesses.iter().map(|a| a.leaf_index));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert!(token.is_empty(), "paging ends");
    walked.sort_unstable();
    assert_eq!(walked, carol_leaves);
    // Every read of a person's history is on the record, with the reader.
    let reads = list_events(
        &broker,
        "cnil",
        pb::ListEventsRequest {
            kind: "access_history_read".into(),
            subject: "test:carol".into(),
            ..Default::default()
        },
    )
    .await?;
    assert!(!reads.is_empty());
    assert!(reads.iter().all(|e| e.participant == "mairie-lyon"));
    broker.stop().await
}

/// guichet.proto: `ListAccessesResponse.accesses` are "newest first".
#[tokio::test]
async fn accesses_are_listed_newest_first() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let broker = TestBroker::start(pki.dir()).await?;
    let (carol_leaves, _) = carol_is_read(&broker).await?;
    let page = list_accesses(&broker, "mairie-lyon", "test:carol", 0, "").await?;
    let listed: Vec<u64> = page.accesses.iter().map(|a| a.leaf_index).collect();
    let mut newest_first = carol_leaves.clone();
    newest_first.reverse();
    let mut walked = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let page = list_accesses(&broker, "mairie-lyon", "test:carol", 1, &token).await?;
        walked.extend(page.accesses.iter().map(|a| a.leaf_index));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    broker.stop().await?;
    assert_eq!(listed, newest_first, "one page");
    assert_eq!(walked, newest_first, "page by page");
    Ok(())
}

/// Rewrites journal record `k` offline as an operator with disk access could: the new payload
/// with a valid checksum (the journal's framing is no seal; the Merkle tree is). Returns the
/// original payload.
fn rewrite_journal_entry(
    data_dir: &Path,
    k: u64,
    alter: impl Fn(&str) -> String,
) -> anyhow::Result<Vec<u8>> {
    let dir = data_dir.join("journal");
    let mut segments: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    for path in segments {
        let bytes = std::fs::read(&path)?;
        let mut out = Vec::with_capacity(bytes.len());
        let (mut at, mut original) = (0usize, None);
        while at + 16 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into()?) as usize;
            let seq = u64::from_le_bytes(bytes[at + 8..at + 16].try_into()?);
            let payload = &bytes[at + 16..at + 16 + len];
            let payload = if seq == k {
                original = Some(payload.to_vec());
                alter(std::str::from_utf8(payload)?).into_bytes()
            } else {
                payload.to_vec()
            };
            let crc = crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), &payload);
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(&crc.to_le_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&payload);
            at += 16 + len;
        }
        if let Some(original) = original {
            std::fs::write(&path, out)?;
            return Ok(original);
        }
    }
    Err(anyhow!("journal record {k} not found"))
}

#[tokio::test]
async fn an_entry_altered_offline_is_detected() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let data = tempfile::tempdir()?;
    let broker = TestBroker::start_on(pki.dir(), data.path()).await?;
    let (_, log_vkey) = published_keys(pki.dir())?;
    granted(&broker, "mairie-lyon", rfr("test:alice")).await?;
    let bob = granted(&broker, "mairie-lyon", rfr("test:bob")).await?;
    granted(&broker, "mairie-lyon", rfr("test:carol")).await?;
    let (signed_note, signed) = latest(&broker, &log_vkey).await?;
    broker.stop().await?;

    // Offline, someone rewrites bob's granted exchange as denied in the journal itself (same
    // length, so that every other record stays where it was).
    let receipt = bob.receipt.expect("receipt");
    let k = receipt.leaf_index;
    let original = rewrite_journal_entry(data.path(), k, |entry| {
        entry.replacen("\"outcome\":\"granted\"", "\"outcome\": \"denied\"", 1)
    })?;
    assert_eq!(original, receipt.entry);

    let broker = TestBroker::start_on(pki.dir(), data.path()).await?;
    let events = all_events(&broker).await?;
    let (_, now) = latest(&broker, &log_vkey).await?;
    let served = &events[k as usize];
    assert_eq!(served.index, k);
    assert_ne!(served.entry, receipt.entry, "the altered entry is served");
    assert_eq!(json(&served.entry)?["outcome"], "denied");

    // The signed history itself is unchanged...
    assert_eq!(
        checkpoint_note(&broker, "caf", signed.size).await?,
        signed_note
    );
    let proof = hashes(&consistency_proof(&broker, signed.size, now.size).await?)?;
    verify_consistency(&proof, signed.size, signed.root, now.size, now.root)
        .context("consistency of the signed history")?;
    // ...and bob's receipt still proves what was really logged...
    let at_fetch = verify_checkpoint(&log_vkey, &receipt.checkpoint)?;
    verify_inclusion(
        &hashes(&receipt.inclusion_proof)?,
        at_fetch.size,
        at_fetch.root,
        k,
        &receipt.entry,
    )
    .context("bob's receipt")?;
    let proof = hashes(&consistency_proof(&broker, at_fetch.size, now.size).await?)?;
    verify_consistency(&proof, at_fetch.size, at_fetch.root, now.size, now.root)
        .context("from bob's receipt to the latest checkpoint")?;
    // ...so the downloaded entries no longer match it.
    let prefix: Vec<&Vec<u8>> = events
        .iter()
        .take(signed.size as usize)
        .map(|e| &e.entry)
        .collect();
    assert_ne!(root_of(prefix), signed.root);
    assert!(events.len() as u64 >= now.size);
    assert_ne!(
        root_of(events.iter().take(now.size as usize).map(|e| &e.entry)),
        now.root
    );

    // Entry by entry against the latest checkpoint: exactly entry k fails.
    let mut failing = Vec::new();
    for leaf in 0..now.size {
        let proof = hashes(&inclusion_proof(&broker, leaf, now.size).await?)?;
        if verify_inclusion(
            &proof,
            now.size,
            now.root,
            leaf,
            &events[leaf as usize].entry,
        )
        .is_err()
        {
            failing.push(leaf);
        }
    }
    assert_eq!(failing, vec![k]);
    broker.stop().await
}

#[tokio::test]
async fn a_fork_is_detected() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let first_dir = scratch.path().join("first");
    let second_dir = scratch.path().join("second");

    let broker = TestBroker::start_on(pki.dir(), &first_dir).await?;
    let (_, log_vkey) = published_keys(pki.dir())?;
    granted(&broker, "mairie-lyon", rfr("test:alice")).await?;
    let (_, a) = latest(&broker, &log_vkey).await?;
    broker.stop().await?;
    unefois_tests::copy_dir(&first_dir, &second_dir)?;

    let first = TestBroker::start_on(pki.dir(), &first_dir).await?;
    let second = TestBroker::start_on(pki.dir(), &second_dir).await?;
    // Same history up to A, then each its own.
    granted(&first, "mairie-lyon", rfr("test:bob")).await?;
    granted(
        &second,
        "ccas-lyon",
        request("test:carol", RFR, "aide_energie"),
    )
    .await?;
    let (_, one) = latest(&first, &log_vkey).await?;
    let (_, two) = latest(&second, &log_vkey).await?;
    assert_eq!(one.size, two.size, "same size");
    assert!(one.size > a.size);
    let n = one.size;

    // Both signed by the same log key (the copy shares it), same size, different roots.
    for broker in [&first, &second] {
        let response = audit(broker, "caf")
            .await?
            .get_checkpoint(pb::GetCheckpointRequest { tree_size: n })
            .await?
            .into_inner();
        assert_eq!(response.verifier_key, log_vkey);
        verify_checkpoint(&log_vkey, &response.checkpoint)?;
    }
    assert_eq!(one.origin, two.origin);
    assert_ne!(one.root, two.root, "a fork");

    // Each is consistent with A on its own...
    let from_first = hashes(&consistency_proof(&first, a.size, n).await?)?;
    let from_second = hashes(&consistency_proof(&second, a.size, n).await?)?;
    verify_consistency(&from_first, a.size, a.root, n, one.root)?;
    verify_consistency(&from_second, a.size, a.root, n, two.root)?;
    // ...but no proof makes both true: a verifier who has seen both detects the fork.
    assert!(verify_consistency(&from_first, a.size, a.root, n, two.root).is_err());
    assert!(verify_consistency(&from_second, a.size, a.root, n, one.root).is_err());

    first.stop().await?;
    second.stop().await
}

/// A C2SP vkey is `<name>+<hash>+<base64 key>`, and standard base64 has '+' in its alphabet:
/// about half of all keys have one. Such a key must verify the envelopes it signed.
#[tokio::test]
async fn an_attestation_key_with_a_plus_in_its_vkey_verifies() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let data = tempfile::tempdir()?;
    let seeded = seed_attestation_key(data.path(), true)?;
    let broker = TestBroker::start_on(pki.dir(), data.path()).await?;
    let answer = granted(&broker, "mairie-lyon", rfr("test:alice")).await?;
    broker.stop().await?;
    let (attestation_vkey, _) = published_keys(pki.dir())?;
    assert_eq!(attestation_vkey, seeded);
    let envelope = unefois_tests::envelope_of(&answer.envelope.expect("envelope"));
    unefois_tlog::dsse::verify(&attestation_vkey, &envelope)
        .with_context(|| format!("attestation key {attestation_vkey:?}"))?;
    let keyid = attestation_vkey
        .splitn(3, '+')
        .take(2)
        .collect::<Vec<_>>()
        .join("+");
    assert_eq!(
        envelope.signatures[0].keyid, keyid,
        "keyid is <name>+<hash>"
    );
    Ok(())
}

#[tokio::test]
async fn audit_verify_trusts_then_checks_growth_and_names_the_first_bad_entry() -> anyhow::Result<()>
{
    use broker::auditor::{LogError, verify_log};

    let pki = TestPki::for_sample_registry()?;
    let data = tempfile::tempdir()?;
    let trusted = data.path().join("cnil.checkpoint");
    let broker = TestBroker::start_on(pki.dir(), data.path()).await?;
    let (_, log_vkey) = published_keys(pki.dir())?;
    granted(&broker, "mairie-lyon", rfr("test:alice")).await?;
    let bob = granted(&broker, "mairie-lyon", rfr("test:bob")).await?;

    // First run: trust on first use.
    let first = verify_log(broker.channel("cnil").await?, &log_vkey, &trusted).await?;
    assert_eq!(first.previous_size, None);
    assert!(trusted.is_file());
    // The log grows (the auditor's own reads are entries too); the next run checks that it
    // only grew.
    granted(&broker, "mairie-lyon", rfr("test:carol")).await?;
    let second = verify_log(broker.channel("cnil").await?, &log_vkey, &trusted).await?;
    assert_eq!(second.previous_size, Some(first.checkpoint.size));
    assert!(second.checkpoint.size > first.checkpoint.size);
    broker.stop().await?;

    // Offline, bob's exchange is rewritten in the journal: verify names its index.
    let k = bob.receipt.expect("receipt").leaf_index;
    rewrite_journal_entry(data.path(), k, |entry| {
        entry.replacen("\"outcome\":\"granted\"", "\"outcome\": \"denied\"", 1)
    })?;
    let broker = TestBroker::start_on(pki.dir(), data.path()).await?;
    match verify_log(broker.channel("cnil").await?, &log_vkey, &trusted).await {
        Err(LogError::BadEntry { index }) => assert_eq!(index, k),
        other => panic!("expected the bad entry {k}, got {other:?}"),
    }
    broker.stop().await?;

    Ok(())
}

#[tokio::test]
async fn audit_verify_detects_a_fork() -> anyhow::Result<()> {
    use broker::auditor::{LogError, verify_log};

    // Two brokers with the same keys (one data dir copied into another) and diverging
    // histories: a checkpoint trusted from one is not extended by the other.
    let pki = TestPki::for_sample_registry()?;
    let a_dir = tempfile::tempdir()?;
    let b_dir = tempfile::tempdir()?;
    let broker = TestBroker::start_on(pki.dir(), a_dir.path()).await?;
    granted(&broker, "mairie-lyon", rfr("test:alice")).await?;
    broker.stop().await?;
    unefois_tests::copy_dir(a_dir.path(), b_dir.path())?;

    let a = TestBroker::start_on(pki.dir(), a_dir.path()).await?;
    let (_, log_vkey) = published_keys(pki.dir())?;
    for _ in 0..3 {
        granted(&a, "mairie-lyon", rfr("test:alice")).await?;
    }
    let trusted = a_dir.path().join("cnil.checkpoint");
    let seen = verify_log(a.channel("cnil").await?, &log_vkey, &trusted).await?;
    a.stop().await?;

    let b = TestBroker::start_on(pki.dir(), b_dir.path()).await?;
    for _ in 0..6 {
        granted(&b, "mairie-lyon", rfr("test:bob")).await?;
    }
    match verify_log(b.channel("cnil").await?, &log_vkey, &trusted).await {
        Err(LogError::Fork(unefois_tlog::log::Fork { trusted_size, .. })) => {
            assert_eq!(trusted_size, seen.checkpoint.size)
        }
        other => panic!("expected a fork, got {other:?}"),
    }
    b.stop().await
}
