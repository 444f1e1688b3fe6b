//! Prometheus metrics, served on the operational listener at `/metrics`.
//!
//! Labels are bounded by construction: participants, attestation types and providers of the
//! registry, outcomes and reasons of closed lists. Never a subject, never a claim value.

use std::collections::HashMap;
use std::sync::{LazyLock, Once, OnceLock, RwLock};
use std::time::Duration;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
static UPKEEP: Once = Once::new();

/// How often histogram samples are folded into their buckets. Until then each sample is kept:
/// without upkeep, a broker nobody scrapes would keep every latency it ever measured.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(2);

/// Installs the process-wide recorder once (several brokers in one process, as in tests,
/// share it), with a thread that folds histogram samples every [`UPKEEP_EVERY`], and returns
/// the handle that renders the text format.
pub fn handle() -> Option<&'static PrometheusHandle> {
    let handle = installed();
    if let Some(handle) = handle {
        UPKEEP.call_once(|| {
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        handle.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no metrics upkeep thread: histograms grow until scraped");
            }
        });
    }
    handle
}

fn installed() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0,
                ])
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full(JOURNAL_BATCH_RECORDS.into()),
                    &[
                        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                    ],
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            unefois_store::metrics::recorder_installed();
            Some(handle)
        })
        .as_ref()
}

/// One exchange recorded in the audit log (a Fetch, a preview, a confirmation, a rejection, a
/// refusal): counted where it is recorded, by consumer, type, outcome and reason, so that the
/// counts agree with the log's `exchange` entries.
///
/// The counter is taken before the exchange's event is handed to the store, so that its labels
/// need no copy to outlive it, and added to once the exchange is recorded.
pub fn exchange_counter(
    consumer: &str,
    attestation_type: &str,
    outcome: &'static str,
    reason: &'static str,
) -> Counter {
    static COUNTERS: Handles<Counter> = Handles::new();
    COUNTERS.get([consumer, attestation_type], [outcome, reason], || {
        metrics::counter!(
            "unefois_fetch_total",
            "consumer" => consumer.to_string(),
            "attestation_type" => attestation_type.to_string(),
            "outcome" => outcome,
            "reason" => reason
        )
    })
}

/// How long one Fetch took, from its arrival to its recorded answer, by type and outcome.
pub fn fetch_duration(attestation_type: &str, outcome: &'static str, seconds: f64) {
    static LATENCIES: Handles<Histogram> = Handles::new();
    LATENCIES
        .get([attestation_type, ""], [outcome, ""], || {
            metrics::histogram!(
                "unefois_fetch_duration_seconds",
                "attestation_type" => attestation_type.to_string(),
                "outcome" => outcome
            )
        })
        .record(seconds);
}

/// One provider call: by provider, type and result; its latency.
pub fn provider_call(provider: &str, attestation_type: &str, result: &'static str, seconds: f64) {
    static COUNTERS: Handles<Counter> = Handles::new();
    static LATENCIES: Handles<Histogram> = Handles::new();
    COUNTERS
        .get([provider, attestation_type], [result, ""], || {
            metrics::counter!(
                "unefois_provider_calls_total",
                "provider" => provider.to_string(),
                "attestation_type" => attestation_type.to_string(),
                "result" => result
            )
        })
        .increment(1);
    LATENCIES
        .get([provider, attestation_type], ["", ""], || {
            metrics::histogram!(
                "unefois_provider_duration_seconds",
                "provider" => provider.to_string(),
                "attestation_type" => attestation_type.to_string()
            )
        })
        .record(seconds);
}

/// One gRPC call, by method (a label of a closed list): counted, and its latency.
pub fn grpc_request(method: &str, seconds: f64) {
    static COUNTERS: Handles<Counter> = Handles::new();
    static LATENCIES: Handles<Histogram> = Handles::new();
    COUNTERS
        .get(
            [method, ""],
            ["", ""],
            || metrics::counter!("unefois_grpc_requests_total", "method" => method.to_string()),
        )
        .increment(1);
    LATENCIES
        .get([method, ""], ["", ""], || {
            metrics::histogram!("unefois_grpc_request_duration_seconds", "method" => method.to_string())
        })
        .record(seconds);
}

/// Handles of one labelled metric, kept once registered. Registering at each call copies and
/// hashes every label (about 2 % of a fetch's CPU, BENCHMARKS.md "Run I"); a kept handle is an
/// atomic update. Labels are bounded (see the module's doc), so the map is too. Two labels come
/// from the registry (borrowed for the lookup), two from closed lists; unused ones are `""`.
struct Handles<H> {
    by_labels: LazyLock<RwLock<ByLabels<H>>>,
}

/// The first registry label, then the second, then the two of closed lists.
type ByLabels<H> = HashMap<String, HashMap<String, Vec<([&'static str; 2], H)>>>;

impl<H: Clone> Handles<H> {
    const fn new() -> Self {
        Handles {
            by_labels: LazyLock::new(Default::default),
        }
    }

    /// The handle for these labels, registered with `register` the first time. Before the
    /// recorder is installed (`handle`), nothing is kept: the handle would be a no-op for good.
    fn get(&self, [a, b]: [&str; 2], fixed: [&'static str; 2], register: impl FnOnce() -> H) -> H {
        let kept = |map: &ByLabels<H>| {
            map.get(a)?
                .get(b)?
                .iter()
                .find(|(labels, _)| *labels == fixed)
                .map(|(_, handle)| handle.clone())
        };
        if let Some(handle) = self.by_labels.read().ok().and_then(|map| kept(&map)) {
            return handle;
        }
        let handle = register();
        if matches!(HANDLE.get(), Some(Some(_)))
            && let Ok(mut map) = self.by_labels.write()
            && kept(&map).is_none()
        {
            map.entry(a.to_string())
                .or_default()
                .entry(b.to_string())
                .or_default()
                .push((fixed, handle.clone()));
        }
        handle
    }
}

/// The journal records its own metrics (`unefois_journal_append_seconds`,
/// `unefois_journal_batch_records`, `unefois_journal_sync_seconds`); the exporter sets the
/// batch histogram's buckets.
use unefois_journal::JOURNAL_BATCH_RECORDS;

/// Whether a provider is ready (its breaker closed).
pub fn provider_ready(attestation_type: &str, ready: bool) {
    metrics::gauge!("unefois_provider_ready", "attestation_type" => attestation_type.to_string())
        .set(if ready { 1.0 } else { 0.0 });
}

/// A provider refused the broker's credentials (HTTP 401/403, or its OAuth2 token endpoint):
/// what an operator alerts on (`increase(unefois_provider_auth_failures_total[5m]) > 0`).
pub fn provider_auth_failure(provider: &str) {
    static COUNTERS: Handles<Counter> = Handles::new();
    COUNTERS
        .get([provider, ""], ["", ""], || {
            metrics::counter!("unefois_provider_auth_failures_total", "provider" => provider.to_string())
        })
        .increment(1);
}

/// A provider's cool-down began (`delay` > 0: counted, and its length shown) or ended (0).
pub fn provider_cool_down(provider: &str, delay: Duration) {
    if !delay.is_zero() {
        metrics::counter!("unefois_provider_cool_downs_total", "provider" => provider.to_string())
            .increment(1);
    }
    metrics::gauge!("unefois_provider_cool_down_seconds", "provider" => provider.to_string())
        .set(delay.as_secs_f64());
}

/// A call answered without calling its provider, by reason (a closed list: `cool_down`,
/// `rate_limit`).
pub fn provider_held(provider: &str, reason: &'static str) {
    static COUNTERS: Handles<Counter> = Handles::new();
    COUNTERS
        .get([provider, ""], [reason, ""], || {
            metrics::counter!(
                "unefois_provider_held_total",
                "provider" => provider.to_string(),
                "reason" => reason
            )
        })
        .increment(1);
}

/// A call refused for the consumer's rate limit.
pub fn rate_limited(consumer: &str) {
    metrics::counter!("unefois_rate_limited_total", "consumer" => consumer.to_string())
        .increment(1);
}

/// A connection refused, shed or dropped before it could serve, by listener (`mtls`, `ops`) and
/// reason (a closed list: `handshakes_per_source`, `handshakes_total`, `handshake_timeout`,
/// `handshake_failed`, `connections_total`, `connections_per_participant`, `http_total`,
/// `http_busy`, `header_timeout`, `write_timeout`). Counted per connection, never per request.
pub fn connection_refused(listener: &'static str, reason: &'static str) {
    metrics::counter!(
        "unefois_connections_refused_total",
        "listener" => listener,
        "reason" => reason
    )
    .increment(1);
}

/// Connections open now on a listener (`mtls`, `ops`), by state (`handshake`, `established`,
/// `open`).
pub fn connections_open(listener: &'static str, state: &'static str, count: usize) {
    metrics::gauge!(
        "unefois_connections_open",
        "listener" => listener,
        "state" => state
    )
    .set(count as f64);
}

/// A share of the limits' counts with the other brokers of a cluster, by outcome (`shared`,
/// `failed`): while it fails, each broker counts on its own.
pub fn limits_shared(outcome: &'static str) {
    metrics::counter!("unefois_limits_shares_total", "outcome" => outcome).increment(1);
}

/// A harvesting alarm raised.
pub fn harvesting_alarm(consumer: &str, habilitation: &str) {
    metrics::counter!(
        "unefois_harvesting_alarms_total",
        "consumer" => consumer.to_string(),
        "habilitation" => habilitation.to_string()
    )
    .increment(1);
}

#[cfg(test)]
mod tests {
    /// The value of the sample line that has every one of `parts`.
    fn sample(text: &str, parts: &[&str]) -> Option<f64> {
        text.lines()
            .find(|l| parts.iter().all(|p| l.contains(p)))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    }

    #[test]
    fn kept_handles_go_on_counting_each_label_set_apart() {
        let handle = super::handle().expect("the recorder installs");
        for _ in 0..3 {
            super::exchange_counter("kept-consumer", "kept.type", "granted", "").increment(1);
            super::fetch_duration("kept.type", "granted", 0.001);
        }
        super::exchange_counter("kept-consumer", "kept.type", "denied", "NO_CONSENT").increment(1);
        super::exchange_counter("kept-consumer", "kept.other", "granted", "").increment(1);
        super::provider_call("kept-provider", "kept.type", "ok", 0.001);
        super::provider_call("kept-provider", "kept.type", "ok", 0.001);
        let text = handle.render();
        let fetches = |ty: &str, outcome: &str| {
            let ty = format!("attestation_type=\"{ty}\"");
            let outcome = format!("outcome=\"{outcome}\"");
            sample(
                &text,
                &["unefois_fetch_total{", "kept-consumer", &ty, &outcome],
            )
        };
        assert_eq!(fetches("kept.type", "granted"), Some(3.0), "{text}");
        assert_eq!(fetches("kept.type", "denied"), Some(1.0), "{text}");
        assert_eq!(fetches("kept.other", "granted"), Some(1.0), "{text}");
        assert_eq!(
            sample(
                &text,
                &[
                    "unefois_provider_calls_total{",
                    "kept-provider",
                    "result=\"ok\""
                ]
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                &[
                    "unefois_fetch_duration_seconds_count{",
                    "kept.type",
                    "outcome=\"granted\""
                ]
            ),
            Some(3.0),
            "{text}"
        );
    }
}
