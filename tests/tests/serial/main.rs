//! The end-to-end tests that need the process to themselves, linked into one test binary apart
//! from `it` and run one at a time: each first takes [`alone`].
//!
//! Why: the broker installs one Prometheus recorder per process (broker/src/metrics.rs), which
//! every broker of the process shares, so a test that asserts on the values at `/metrics` would
//! count the traffic of the tests running beside it; flood's budgets and memory bounds assume
//! no unrelated load in the process; the privacy canary installs the process's log subscriber
//! and reads everything logged while it runs.
//!
//! Counters also accumulate over the tests that ran before in the process: a test that asserts
//! a total either subtracts what the process had counted before its broker started
//! (`reconcile`) or reads series no other test of this binary moves (`limits`,
//! `provider_access`; flood compares counters before and after).

mod flood;
mod limits;
mod privacy;
mod provider_access;
mod reconcile;

/// Held for the whole of each test of this binary, so that they run one at a time (see the
/// binary's documentation). A Tokio mutex: each test holds it across its awaits, on a runtime of
/// its own.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for the tests of this binary that run before, and keeps the others waiting until the
/// guard drops (at the end of the test, or when it panics).
async fn alone() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}
