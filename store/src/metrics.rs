//! What the store counts: the entries appended to the log, by kind, once durable (with the
//! broker's `unefois_fetch_total`, what an operator reconciles with the log itself).

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use metrics::Counter;

/// Whether the process's metrics recorder is installed: before, `counter!` hands out no-op
/// handles, which must not be kept.
static RECORDER_INSTALLED: AtomicBool = AtomicBool::new(false);

/// The counters registered so far, by kind: a closed list (`Event::kind`), hence small. A kept
/// handle is an atomic add; `counter!` at each append copied and hashed its label and took the
/// registry's lock, once per fetch (BENCHMARKS.md, run T).
static COUNTERS: RwLock<Vec<(&'static str, Counter)>> = RwLock::new(Vec::new());

/// Says that the global metrics recorder is installed (the broker calls it once it is), so
/// that the store may keep the handles it registers from then on.
pub fn recorder_installed() {
    RECORDER_INSTALLED.store(true, Ordering::Release);
}

/// Entries appended to the audit log, by kind (`exchange`, `consent_granted`, …).
pub(crate) fn audit_entries(kind: &'static str, count: u64) {
    let kept = |counters: &[(&'static str, Counter)]| {
        counters
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, c)| c.clone())
    };
    if let Some(counter) = COUNTERS.read().ok().and_then(|c| kept(&c)) {
        counter.increment(count);
        return;
    }
    let counter = metrics::counter!("unefois_audit_entries_total", "kind" => kind);
    if RECORDER_INSTALLED.load(Ordering::Acquire)
        && let Ok(mut counters) = COUNTERS.write()
        && kept(&counters).is_none()
    {
        counters.push((kind, counter.clone()));
    }
    counter.increment(count);
}
