//! The journal's own metrics, recorded through the `metrics` facade (the broker installs the
//! exporter).

/// Records per group-commit batch: how well concurrent appends share one sync.
pub const JOURNAL_BATCH_RECORDS: &str = "unefois_journal_batch_records";

/// One append, from its submission until it is durable and through the commit hook (where
/// the broker applies its derived state): what an answer waits for the audit log.
pub(crate) fn journal_append(seconds: f64) {
    metrics::histogram!("unefois_journal_append_seconds").record(seconds);
}

/// One batch of the group commit: its records, and how long its `fdatasync` took (the disk's
/// own latency, the floor of every answer).
pub(crate) fn journal_batch(records: u64, sync_seconds: Option<f64>) {
    metrics::histogram!(JOURNAL_BATCH_RECORDS).record(records as f64);
    if let Some(seconds) = sync_seconds {
        metrics::histogram!("unefois_journal_sync_seconds").record(seconds);
    }
}
