//! A broker's journal read back from its data directory, once the broker has stopped: what it
//! recorded, as the journal holds it rather than as the audit API answers.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use broker::event::Record;
use broker::journal::{FaultInjector, FaultPoint, Journal, JournalOptions};

/// A fault injector failing the journal after its write, before its sync, while `fail` is set:
/// a disk that fails, then comes back.
pub fn failing_after_write(fail: &Arc<AtomicBool>) -> FaultInjector {
    let fail = fail.clone();
    Arc::new(move |point| {
        if point == FaultPoint::AfterWrite && fail.load(Ordering::SeqCst) {
            Err(std::io::Error::other("injected"))
        } else {
            Ok(())
        }
    })
}

/// Every record of the journal in `data_dir`, decoded, in order, each with its bytes as they
/// are at rest.
pub fn records_and_bytes(data_dir: &Path) -> anyhow::Result<Vec<(Record, Vec<u8>)>> {
    let journal = Journal::open(&data_dir.join("journal"), JournalOptions::default())?;
    let mut out = Vec::new();
    for record in journal.read_from(0)? {
        let record = record?;
        out.push((Record::decode(&record.payload)?, record.payload));
    }
    Ok(out)
}

/// Every record of the journal in `data_dir`, decoded, in order.
pub fn records(data_dir: &Path) -> anyhow::Result<Vec<Record>> {
    Ok(records_and_bytes(data_dir)?
        .into_iter()
        .map(|(record, _)| record)
        .collect())
}
