//! Fills a broker's data directory with synthetic exchange records, for the log-size scaling
//! benchmark (does a fetch slow down as the log grows?). Goes through the real `Store` (journal,
//! derived state, Merkle tree, checkpoints) with the broker's own log key, without fdatasync
//! (the figures it prepares are about reading, not writing).
//!
//! `cargo run --release -p broker --example fill_log -- DATA_DIR TRUST_DOMAIN RECORDS`

#![allow(missing_docs)]

use std::path::PathBuf;
use std::time::Instant;

use broker::LogSigner;
use broker::event::{Event, ExchangeEvent, Outcome, Record, RecordedBasis};
use broker::journal::JournalOptions;
use broker::seal::Sealer;
use broker::store::{Embedded, Store};

/// One exchange as the broker records a granted fetch under law (synthetic pseudonym, sealed
/// with the broker's seal key as the broker seals it).
fn record(sealer: &Sealer, i: u64) -> Record {
    let hex = |n: u64| format!("{n:016x}").repeat(4);
    Record::now(Event::Exchange(Box::new(ExchangeEvent {
        outcome: Outcome::Granted,
        reason: None,
        participant: "mairie-lyon".into(),
        agent: None,
        subject: None,
        subject_sealed: Some(sealer.seal(&hex(i % 100_000))),
        pseudonym_key: Some("0000000000000000".into()),
        attestation_type: "dgfip.revenu_fiscal_reference".into(),
        purpose: "tarification_cantine".into(),
        legal_basis: Some(RecordedBasis::Law {
            citation: "CRPA, art. L. 114-8".into(),
        }),
        habilitation: Some("mairie-lyon.dgfip.revenu_fiscal_reference".into()),
        mandate_id: None,
        attestation_id: Some(uuid::Uuid::now_v7().to_string()),
        payload_sha256: Some(hex(i)),
        provider: Some("dgfip".into()),
        derived_rules: Vec::new(),
        request_id: None,
        registry_sha256: "0".repeat(64),
        prefill_id: None,
        request_fingerprint: None,
        retry_of: None,
    })))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: fill_log DATA_DIR TRUST_DOMAIN RECORDS";
    let data = PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!(usage))?);
    let trust_domain = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let records: u64 = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    std::fs::create_dir_all(&data)?;
    // Every key a broker needs, as it creates them over an empty journal.
    let empty = !broker::journal::holds_records(&data.join("journal"))?;
    let keys = broker::keys::Keys::load(&data, empty)?;
    let sealer = std::sync::Arc::new(keys.sealer()?);
    let store = Embedded::open(
        &data,
        JournalOptions {
            sync: false,
            ..JournalOptions::default()
        },
        LogSigner::new(&keys, &trust_domain)?,
        sealer.clone(),
    )?;
    let started = Instant::now();
    let batch = 1_000;
    let mut written = 0;
    while written < records {
        let n = batch.min(records - written);
        store
            .append((written..written + n).map(|i| record(&sealer, i)).collect())
            .await?;
        written += n;
        if written % 100_000 == 0 {
            eprintln!("{written} records in {:.0?}", started.elapsed());
        }
    }
    let size = store.journal().next_seq();
    store.close().await;
    println!(
        "{records} records appended in {:.1?}; the log has {size} entries",
        started.elapsed()
    );
    Ok(())
}
