//! What the store counts: the entries appended to the log, by kind, once durable (with the
//! broker's `unefois_fetch_total`, what an operator reconciles with the log itself).

/// Entries appended to the audit log, by kind (`exchange`, `consent_granted`, …).
pub(crate) fn audit_entries(kind: &'static str, count: u64) {
    metrics::counter!("unefois_audit_entries_total", "kind" => kind).increment(count);
}
