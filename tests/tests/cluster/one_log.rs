//! Three brokers on one database write one log: fetches, consents and mandates spread over
//! them, concurrently, are one log whose root, recomputed from the entries, is the checkpoint's;
//! every receipt verifies against the final tree, every consent's and mandate's record is in it,
//! no two records share a leaf index, and a revocation through one broker applies to the very
//! next request on the others.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::anyhow;
use tonic::Code;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::audit_client::AuditClient;
use unefois_tests::clients::{consents, exchange, grant_consent, take_mandate};
use unefois_tests::refusals::refused;
use unefois_tests::requests::{fetch, rfr};
use unefois_tests::sample::{CANTINE, ENERGIE, QF};
use unefois_tests::{TestBroker, TestPki};
use unefois_tlog::{root_of, verify_checkpoint, verify_consistency};

use crate::harness::{
    Cluster, Database, copy_keys, log_entries, receipt_holds, receipt_of_a_fetch, start,
    start_on_registry,
};

fn hashes(proof: &[Vec<u8>]) -> Vec<[u8; 32]> {
    unefois_tlog::tree::hashes(proof).unwrap_or_else(|| panic!("a proof hash is not 32 bytes"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_brokers_write_one_verifiable_log_and_revocations_apply_everywhere()
-> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let db = Database::start().await?;
    let cluster = Cluster::start(pki.dir(), &db.url(), 3).await?;
    let [a, b, c] = &cluster.brokers[..] else {
        return Err(anyhow!("three brokers"));
    };

    // Work spread over the three, concurrently: fetches through each, and through each a
    // consent granted and a mandate taken while the fetches run (alice's consent, which her
    // fetches need, granted first).
    let granted = grant_consent(a, "test:alice", QF, CANTINE).await?;
    let mut clients = Vec::new();
    for broker in [a, b, c] {
        for i in 0..4 {
            let request = match i % 2 {
                0 => fetch("test:alice", QF, CANTINE),
                _ => rfr("test:bob"),
            };
            clients.push((exchange(broker, "mairie-lyon").await?, request));
        }
    }
    // Each fetching task goes on until every grant and mandate is answered: their records go
    // into the log among the fetches', not after them.
    let answered = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(mut client, request)| {
            let answered = answered.clone();
            tokio::spawn(async move {
                let mut receipts = Vec::new();
                loop {
                    let answer = client.fetch(request.clone()).await?.into_inner();
                    receipts.push(answer.receipt.ok_or_else(|| anyhow!("no receipt"))?);
                    if answered.load(Ordering::Acquire) {
                        // One more, asked after every grant and mandate was answered.
                        let last = client.fetch(request.clone()).await?.into_inner();
                        receipts.push(last.receipt.ok_or_else(|| anyhow!("no receipt"))?);
                        return anyhow::Ok(receipts);
                    }
                }
            })
        })
        .collect();
    let (bob, carol, david, alice_m, bob_m, carol_m) = tokio::try_join!(
        grant_consent(a, "test:bob", QF, CANTINE),
        grant_consent(b, "test:carol", QF, CANTINE),
        grant_consent(c, "test:david", QF, CANTINE),
        take_mandate(a, "test:alice", ENERGIE),
        take_mandate(b, "test:bob", ENERGIE),
        take_mandate(c, "test:carol", ENERGIE),
    )?;
    answered.store(true, Ordering::Release);
    let mut receipts = Vec::new();
    for task in tasks {
        receipts.extend(task.await??);
    }
    let consent_ids = [&granted, &bob, &carol, &david].map(|c| c.id.clone());
    let mandate_ids = [&alice_m, &bob_m, &carol_m].map(|m| m.id.clone());

    // Revoked through a: refused at the very next fetch on b and on c.
    consents(a, "mairie-lyon")
        .await?
        .revoke(pb::RevokeConsentRequest {
            consent_id: granted.id.clone(),
            ..Default::default()
        })
        .await?;
    for broker in [b, c] {
        refused(
            exchange(broker, "mairie-lyon")
                .await?
                .fetch(fetch("test:alice", QF, CANTINE))
                .await,
            Code::FailedPrecondition,
            ErrorReason::ConsentRevoked,
        );
    }

    // One log: its root, recomputed from the entries, is the checkpoint's; every receipt's
    // entry is at its index, and its proof holds in the tree it was given and in the final one.
    let log_vkey = std::fs::read_to_string(pki.dir().join("log.vkey"))?;
    let note = AuditClient::new(c.channel("caf").await?)
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: 0 })
        .await?
        .into_inner()
        .checkpoint;
    let last = verify_checkpoint(log_vkey.trim(), &note)?;
    // Listed with their indices checked gap-free.
    let bytes = log_entries(&mut AuditClient::new(b.channel("cnil").await?), last.size).await?;
    assert_eq!(bytes.len() as u64, last.size, "every entry, once");
    assert_eq!(
        root_of(&bytes),
        last.root,
        "the root recomputed from the entries"
    );
    // Each consent's and each mandate's record is in the log, once; no two records (those and
    // the fetches') share a leaf index.
    let mut leaves: Vec<u64> = receipts.iter().map(|r| r.leaf_index).collect();
    let records: Vec<serde_json::Value> = bytes
        .iter()
        .map(|entry| serde_json::from_slice(entry).unwrap_or_default())
        .collect();
    for (kind, field, ids) in [
        ("consent_granted", "consent_id", &consent_ids[..]),
        ("mandate_created", "mandate_id", &mandate_ids[..]),
    ] {
        for id in ids {
            let at: Vec<u64> = (0..last.size)
                .filter(|i| {
                    let record = &records[*i as usize];
                    record["kind"] == kind && record[field] == id.as_str()
                })
                .collect();
            assert_eq!(at.len(), 1, "the {kind} record of {id}: at {at:?}");
            leaves.extend(at);
        }
    }
    // Those granted and taken with the fetches (alice's consent, first, aside).
    let records = &leaves[receipts.len() + 1..];
    let (first_record, last_record) = (
        records.iter().min().copied().unwrap_or_default(),
        records.iter().max().copied().unwrap_or_default(),
    );
    let last_fetch = receipts
        .iter()
        .map(|r| r.leaf_index)
        .max()
        .unwrap_or_default();
    assert!(
        receipts.iter().any(|r| r.leaf_index > first_record) && last_fetch > last_record,
        "the consents and mandates were recorded among the fetches, not after them"
    );
    let given = leaves.len();
    leaves.sort_unstable();
    leaves.dedup();
    assert_eq!(leaves.len(), given, "no two records share a leaf");
    let mut audit = AuditClient::new(a.channel("dgfip").await?);
    let mut proved = std::collections::BTreeSet::new();
    for receipt in &receipts {
        assert_eq!(bytes[receipt.leaf_index as usize], receipt.entry);
        let given = receipt_holds(log_vkey.trim(), receipt)?;
        // Each checkpoint handed out proved once (receipts of one batch share theirs).
        if !proved.insert((given.size, given.root)) {
            continue;
        }
        let consistency = audit
            .get_consistency_proof(pb::GetConsistencyProofRequest {
                first_size: given.size,
                second_size: last.size,
            })
            .await?
            .into_inner()
            .hashes;
        verify_consistency(
            &hashes(&consistency),
            given.size,
            given.root,
            last.size,
            last.root,
        )?;
    }
    for broker in cluster.brokers {
        broker.stop().await?;
    }
    Ok(())
}

/// Two brokers started together over an empty log each create their own keys; both find the
/// log empty, but only the first to commit writes it: the other's first append finds the log
/// signed by another key and its start is refused, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_first_brokers_started_together_do_not_both_write_the_log() -> anyhow::Result<()> {
    // Each broker its own PKI folder, as on two hosts (a shared one refuses the second start
    // earlier: it publishes another attestation key).
    let (pki, other_pki) = (
        TestPki::for_sample_registry()?,
        TestPki::for_sample_registry()?,
    );
    let db = Database::start().await?;
    let (one, two) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (url, one, two) = (db.url(), one.path().join("data"), two.path().join("data"));
    // The log's row held while both start: both read it empty, both wait to append.
    let mut holder = db
        .primary
        .sql_meanwhile("BEGIN; SELECT 1 FROM unefois_log FOR UPDATE; SELECT pg_sleep(3); COMMIT");
    let started = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        tokio::join!(
            start(pki.dir(), &url, &one),
            start(other_pki.dir(), &url, &two)
        )
    }
    .await;
    tokio::task::block_in_place(|| holder.wait())?;
    let (started, refused) = match started {
        (Ok(b), Err(e)) | (Err(e), Ok(b)) => (b, e),
        (Ok(_), Ok(_)) => return Err(anyhow!("both started: two log keys on one log")),
        (Err(a), Err(b)) => return Err(anyhow!("neither started: {a:#}; {b:#}")),
    };
    let message = format!("{refused:#}");
    assert!(
        message.contains("not signed by this broker's log key")
            && message.contains("start the first one alone"),
        "{message}"
    );
    receipt_of_a_fetch(&started).await?;
    started.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_with_other_keys_or_another_registry_refuses_to_start() -> anyhow::Result<()> {
    let pki = TestPki::for_sample_registry()?;
    let db = Database::start().await?;
    let cluster = Cluster::start(pki.dir(), &db.url(), 1).await?;

    // No keys at all: it does not make new ones over a cluster's log.
    let bare = tempfile::tempdir()?;
    let refused = start(pki.dir(), &db.url(), &bare.path().join("data")).await;
    let message = format!("{:#}", refused.err().ok_or_else(|| anyhow!("it started"))?);
    assert!(message.contains("key is missing"), "{message}");

    // Another broker's keys (its own embedded log): refused, naming the key that differs.
    let other_pki = TestPki::for_sample_registry()?;
    let other = TestBroker::start(other_pki.dir()).await?;
    let stranger = tempfile::tempdir()?;
    copy_keys(&other.data_dir, &stranger.path().join("data"))?;
    other.stop().await?;
    let refused = start(pki.dir(), &db.url(), &stranger.path().join("data")).await;
    let message = format!("{:#}", refused.err().ok_or_else(|| anyhow!("it started"))?);
    assert!(message.contains("another log key"), "{message}");

    // The cluster's keys but another registry (one participant renamed): refused, naming the
    // file that differs and how to roll a registry out on purpose.
    let edited = tempfile::tempdir()?;
    let renamed = unefois_tests::sample_registry_with(edited.path(), |text| {
        text.replacen(
            "name = \"Caisse d'allocations familiales du Rhône\"",
            "name = \"CAF du Rhône\"",
            1,
        )
    })?;
    let first = cluster.brokers[0].data_dir.clone();
    let joining = tempfile::tempdir()?;
    copy_keys(&first, &joining.path().join("data"))?;
    let refused = start_on_registry(
        pki.dir(),
        &db.url(),
        &joining.path().join("data"),
        renamed.clone(),
        false,
    )
    .await;
    let message = format!("{:#}", refused.err().ok_or_else(|| anyhow!("it started"))?);
    assert!(
        message.contains("is not the cluster's")
            && message.contains("(registry): changed")
            && message.contains("--change-registry"),
        "{message}"
    );

    // Brought on purpose: it starts, and the cluster's registry is now the new one, so that a
    // broker restarted on the old file is the one refused.
    let bringer = start_on_registry(
        pki.dir(),
        &db.url(),
        &joining.path().join("data"),
        renamed,
        true,
    )
    .await?;
    let late = tempfile::tempdir()?;
    copy_keys(&first, &late.path().join("data"))?;
    let refused = start(pki.dir(), &db.url(), &late.path().join("data")).await;
    let message = format!("{:#}", refused.err().ok_or_else(|| anyhow!("it started"))?);
    assert!(message.contains("(registry): changed"), "{message}");
    bringer.stop().await?;
    for broker in cluster.brokers {
        broker.stop().await?;
    }
    Ok(())
}
