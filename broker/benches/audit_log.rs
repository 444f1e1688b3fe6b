//! Audit-log figures (measured, never asserted): durable appends per second through the whole
//! commit path (journal + fdatasync + derived state + Merkle tree + signed checkpoint), the
//! same without fdatasync, and proof cost in a tree of a million entries.
//!
//! `cargo bench -p broker --bench audit_log` (env: `UNEFOIS_BENCH_LEAVES`, default 1000000;
//! `UNEFOIS_BENCH_RECORDS`, default 40000).

#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::LogSigner;
use broker::event::{Event, ExchangeEvent, Outcome, Record, RecordedBasis};
use broker::journal::JournalOptions;
use broker::store::tree::TreeFile;
use broker::store::{Embedded, Store};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn exchange_record(i: u64) -> Record {
    Record::now(Event::Exchange(Box::new(ExchangeEvent {
        outcome: Outcome::Granted,
        reason: None,
        participant: "mairie-lyon".into(),
        agent: None,
        subject: Some(format!("{:064x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15))),
        subject_sealed: None,
        pseudonym_key: Some("0123456789abcdef".into()),
        attestation_type: "dgfip.revenu_fiscal_reference".into(),
        purpose: "tarification_cantine".into(),
        legal_basis: Some(RecordedBasis::Law {
            citation: "Code des relations entre le public et l'administration, art. L. 114-8"
                .into(),
        }),
        habilitation: Some("mairie-lyon.dgfip.revenu_fiscal_reference".into()),
        mandate_id: None,
        attestation_id: Some(format!("0190c0de-0000-7000-8000-{i:012}")),
        payload_sha256: Some(format!("{:064x}", i)),
        provider: Some("dgfip".into()),
        derived_rules: Vec::new(),
        request_id: None,
        registry_sha256: "8435b112a80cc6adefeb66ce81b4b478c5c544e214ce95b2eaca63cd5aa719a7".into(),
        prefill_id: None,
        request_fingerprint: None,
        retry_of: None,
    })))
}

/// Appends `records` records from `tasks` concurrent tasks; returns (seconds, syncs, bytes).
async fn appends(sync: bool, records: u64, tasks: u64) -> (f64, u64, usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(
        dir.path(),
        JournalOptions {
            sync,
            ..JournalOptions::default()
        },
        LogSigner::from_seed(&[1; 32], "unefois.test").unwrap(),
        std::sync::Arc::new(broker::seal::Sealer::from_secret(&[3; 32])),
    )
    .unwrap();
    let bytes = exchange_record(0).encode().len();
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..records / tasks {
                store
                    .append(vec![exchange_record(t * 1_000_000 + i)])
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let syncs = store.journal().stats().syncs;
    store.close().await;
    (elapsed, syncs, bytes)
}

fn micros(d: Duration, n: u64) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let records = env("UNEFOIS_BENCH_RECORDS", 40_000);
    let leaves = env("UNEFOIS_BENCH_LEAVES", 1_000_000);
    let tasks = 64;

    println!("# audit log: durable appends ({records} exchange records, {tasks} concurrent tasks)");
    let (synced, syncs, bytes) = appends(true, records, tasks).await;
    let (unsynced, _, _) = appends(false, records, tasks).await;
    let synced_rate = records as f64 / synced;
    let unsynced_rate = records as f64 / unsynced;
    println!("record size                         {bytes} bytes");
    println!(
        "with fdatasync (group commit)       {synced_rate:>10.0} records/s  ({syncs} syncs, {:.1} records per sync)",
        records as f64 / syncs.max(1) as f64
    );
    println!("without fdatasync                   {unsynced_rate:>10.0} records/s");
    println!(
        "ratio synced / unsynced             {:>10.2}",
        synced_rate / unsynced_rate
    );

    println!();
    println!("# Merkle tree of {leaves} entries (file of complete-subtree hashes)");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tree.hashes");
    let tree = TreeFile::open(&path, 0).unwrap();
    let entry = exchange_record(0).encode();
    let started = Instant::now();
    for _ in 0..leaves / 8 {
        tree.append(std::iter::repeat_n(entry.as_slice(), 8))
            .unwrap();
    }
    let build = started.elapsed();
    println!(
        "tree appends (hashing + file)       {:>10.0} leaves/s",
        leaves as f64 / build.as_secs_f64()
    );
    // Reopened: proofs of spread leaves read the file, as after a restart.
    drop(tree);
    let leaves = leaves / 8 * 8;
    let tree = TreeFile::open(&path, leaves).unwrap();

    let samples = 10_000u64;
    let before = tree.reads();
    let started = Instant::now();
    let mut proof_bytes = 0usize;
    for k in 0..samples {
        let leaf = k.wrapping_mul(0x9e37_79b9) % leaves;
        proof_bytes += 32 * tree.inclusion_proof(leaf, leaves).unwrap().len();
    }
    let inclusion = started.elapsed();
    println!(
        "inclusion proof                     {:>10.1} µs, {} bytes, {:.1} hash reads",
        micros(inclusion, samples),
        proof_bytes / samples as usize,
        (tree.reads() - before) as f64 / samples as f64
    );

    let before = tree.reads();
    let started = Instant::now();
    let mut proof_bytes = 0usize;
    for k in 1..=samples {
        let first = (k.wrapping_mul(0x9e37_79b9) % (leaves - 1)) + 1;
        proof_bytes += 32 * tree.consistency_proof(first, leaves).unwrap().len();
    }
    let consistency = started.elapsed();
    println!(
        "consistency proof                   {:>10.1} µs, {} bytes, {:.1} hash reads",
        micros(consistency, samples),
        proof_bytes / samples as usize,
        (tree.reads() - before) as f64 / samples as f64
    );

    let log = Arc::new(LogSigner::from_seed(&[2; 32], "unefois.test").unwrap());
    let started = Instant::now();
    for k in 0..1_000u64 {
        let root = tree.root(leaves - k).unwrap();
        std::hint::black_box(log.sign(leaves - k, root));
    }
    println!(
        "root + signed checkpoint            {:>10.1} µs",
        micros(started.elapsed(), 1_000)
    );
}
