//! A rolling upgrade: the broker of the version before this one's newest migration
//! (`UNEFOIS_PREVIOUS`, the `unefois` binary `.ci/previous.sh` builds) runs on the schema this
//! version's `store init` made, beside this version's broker, and they write one log. An
//! expand migration must leave every statement of the previous version working: this is where
//! that is checked, not by review alone.

use anyhow::Context;
use tonic::Code;
use unefois_proto::v1 as pb;
use unefois_proto::v1::ErrorReason;
use unefois_proto::v1::audit_client::AuditClient;
use unefois_proto::v1::consents_client::ConsentsClient;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_tests::refusals::refused;
use unefois_tests::requests::{consent, fetch, rfr};
use unefois_tests::sample::{CANTINE, QF};
use unefois_tlog::{root_of, verify_checkpoint};

use crate::harness::{Database, Process, copy_keys, log_entries, processes, receipt_holds};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_previous_version_serves_beside_this_one_on_its_schema() -> anyhow::Result<()> {
    let Some(previous) = std::env::var_os("UNEFOIS_PREVIOUS").filter(|p| !p.is_empty()) else {
        eprintln!(
            "skipped: UNEFOIS_PREVIOUS names no previous broker (.ci/previous.sh builds one)"
        );
        return Ok(());
    };
    // The schema of this version (every migration, as `store init` applies them).
    let db = Database::start().await?;
    let (homes, brokers) = processes(&db.url(), 1).await?;
    let first = homes.first().context("a home")?.path();
    let old_home = tempfile::tempdir()?;
    unefois_tests::copy_dir(&first.join("pki"), &old_home.path().join("pki"))?;
    copy_keys(&first.join("data"), &old_home.path().join("data"))?;
    let old = Process::start_binary(std::path::Path::new(&previous), old_home.path(), &db.url())
        .await
        .context("the previous version's broker on this version's schema")?;
    let new = brokers.first().context("a broker")?;

    // It says a newer version is rolling out, and serves.
    let (status, ready) = unefois_tests::http_get(old.ops_addr, "/readyz").await?;
    assert_eq!(status, 200, "{ready}");
    assert!(ready.contains("rolling out"), "{ready}");
    // A consent granted through the previous version (with the citizen's ID token: its count
    // of acts), fetches under it and under the law through both, the consent revoked through
    // this version and refused at once by the previous one.
    let granted = ConsentsClient::new(old.channel("mairie-lyon").await?)
        .grant(consent("test:alice", QF, CANTINE))
        .await?
        .into_inner()
        .consent
        .context("no consent")?;
    let mut receipts = Vec::new();
    for broker in [&old, new, &old, new] {
        for request in [rfr("test:bob"), fetch("test:alice", QF, CANTINE)] {
            let receipt = ExchangeClient::new(broker.channel("mairie-lyon").await?)
                .fetch(request)
                .await?
                .into_inner()
                .receipt
                .context("no receipt")?;
            receipts.push(receipt);
        }
    }
    ConsentsClient::new(new.channel("mairie-lyon").await?)
        .revoke(pb::RevokeConsentRequest {
            consent_id: granted.id.clone(),
            ..Default::default()
        })
        .await?;
    refused(
        ExchangeClient::new(old.channel("mairie-lyon").await?)
            .fetch(fetch("test:alice", QF, CANTINE))
            .await,
        Code::FailedPrecondition,
        ErrorReason::ConsentRevoked,
    );

    // One log, whichever version wrote each entry.
    let note = AuditClient::new(new.channel("caf").await?)
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: 0 })
        .await?
        .into_inner();
    let last = verify_checkpoint(note.verifier_key.trim(), &note.checkpoint)?;
    let bytes = log_entries(&mut AuditClient::new(old.channel("cnil").await?), last.size).await?;
    assert_eq!(
        root_of(&bytes),
        last.root,
        "the root recomputed from the entries"
    );
    for receipt in &receipts {
        assert_eq!(bytes[receipt.leaf_index as usize], receipt.entry);
        receipt_holds(note.verifier_key.trim(), receipt)?;
    }
    Ok(())
}
