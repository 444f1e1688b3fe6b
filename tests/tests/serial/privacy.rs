//! Privacy canary: after exchanges about a person with distinctive ids and claim values, neither
//! appears anywhere in the broker's data directory (journal, derived state, keys) nor in its
//! TRACE-level logs.
//!
//! In the `serial` binary: it installs the process's log subscriber (a second would fail), at
//! TRACE while it runs and off once it is done, and what it captures must come from its own
//! broker alone.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{Registry, fmt, reload};
use unefois_tests::canary;
use unefois_tests::{BrokerOptions, TestBroker, TestPki};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut log) = self.0.lock() {
            log.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The process's log subscriber, writing everything at TRACE level to a [`Captured`] until
/// dropped; then off, so that the tests of this binary that run later are not slowed by it
/// and the capture stops growing. Installed once per process.
struct TraceLogs(reload::Handle<LevelFilter, Registry>);

impl TraceLogs {
    fn capture(log: Captured) -> anyhow::Result<TraceLogs> {
        let (filter, handle) = reload::Layer::new(LevelFilter::TRACE);
        tracing_subscriber::registry()
            .with(filter)
            .with(
                fmt::layer()
                    .with_writer(move || log.clone())
                    .with_ansi(false),
            )
            .try_init()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(TraceLogs(handle))
    }
}

impl Drop for TraceLogs {
    fn drop(&mut self) {
        let _ = self.0.reload(LevelFilter::OFF);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_subject_id_or_claim_value_at_rest_or_in_trace_logs() -> anyhow::Result<()> {
    let _alone = crate::alone().await;
    let log = Captured::default();
    let trace = TraceLogs::capture(log.clone())?;

    let pki = TestPki::for_sample_registry()?;
    let scratch = tempfile::tempdir()?;
    let registry = canary::canary_registry(scratch.path())?;
    let data = scratch.path().join("broker-data");
    let broker = TestBroker::start_with(
        pki.dir(),
        BrokerOptions {
            registry,
            data_dir: Some(data.clone()),
            ..Default::default()
        },
    )
    .await?;

    canary::exchanges(broker.channel("mairie-lyon").await?).await?;
    broker.stop().await?;

    let needles = canary::needles();
    let needles: Vec<&[u8]> = needles.iter().map(Vec::as_slice).collect();
    let at_rest = canary::files_containing(&data, &needles)?;
    assert!(at_rest.is_empty(), "found at rest: {at_rest:?}");

    drop(trace);
    let logs = log
        .0
        .lock()
        .map(|mut l| std::mem::take(&mut *l))
        .unwrap_or_default();
    assert!(
        logs.len() > 10_000,
        "TRACE logging was captured ({} bytes)",
        logs.len()
    );
    for needle in needles {
        assert!(
            !logs.windows(needle.len()).any(|w| w == needle),
            "{:?} appears in the TRACE logs",
            String::from_utf8_lossy(needle)
        );
    }
    Ok(())
}
