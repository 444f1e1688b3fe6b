//! Per-provider isolation: a concurrency limit and a circuit breaker around each attestation
//! type's adapter, so that a slow or failing provider degrades its own answers and never the
//! broker or another type.
//!
//! The breaker opens after `failure_threshold` consecutive failures (unavailable, invalid
//! answer, deadline), refuses calls at once while open, lets one probe through after
//! `open_for` (half-open), and closes on the probe's success. "Subject not found" is an answer,
//! not a failure.
//!
//! Types that call a provider also pass through their provider participant's gate
//! (provider_gate.rs): its cool-down (the provider asked to wait) and its request-rate limit.
//! A type is ready when its breaker is closed and no cool-down runs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use unefois_adapters::{Adapter, AdapterError, AdapterRequest, Answer, Claims, ProviderRateLimit};

use crate::provider_config::ResilienceConfig;
use crate::provider_gate::{Member, ProviderGate};

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the instant.
    Open {
        /// When a probe may go through.
        until: Instant,
    },
    /// One probe is in flight; other calls are refused.
    HalfOpen,
}

/// A provider's guard as an operator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardStatus {
    /// The breaker.
    pub state: BreakerState,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Calls in flight now.
    pub in_flight: usize,
    /// The concurrency limit.
    pub max_concurrency: usize,
    /// The adapter's kind.
    pub adapter: &'static str,
    /// What is left of the provider's cool-down, if one runs.
    pub cool_down: Option<Duration>,
    /// The provider's request-rate limit, if declared.
    pub rate_limit: Option<ProviderRateLimit>,
}

/// Told when a provider becomes ready (breaker closed, no cool-down) or not: feeds health and
/// metrics.
pub type ReadinessHook = Arc<dyn Fn(&str, bool) + Send + Sync>;

struct Breaker {
    state: BreakerState,
    failures: u32,
}

/// An adapter behind a concurrency limit and a circuit breaker.
pub struct Guarded {
    attestation_type: String,
    inner: Arc<dyn Adapter>,
    config: ResilienceConfig,
    permits: Semaphore,
    breaker: Mutex<Breaker>,
    readiness: Option<ReadinessHook>,
    gate: Option<Arc<ProviderGate>>,
    /// The readiness last reported to `readiness`.
    reported: Mutex<bool>,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("attestation_type", &self.attestation_type)
            .field("adapter", &self.inner.kind())
            .field("config", &self.config)
            .finish()
    }
}

enum Admission {
    Call,
    Probe,
}

impl Guarded {
    /// Guards `inner`, the adapter of `attestation_type`.
    pub fn new(
        attestation_type: &str,
        inner: Arc<dyn Adapter>,
        config: ResilienceConfig,
        readiness: Option<ReadinessHook>,
    ) -> Guarded {
        Guarded {
            attestation_type: attestation_type.to_string(),
            inner,
            config,
            permits: Semaphore::new(config.max_concurrency.max(1)),
            breaker: Mutex::new(Breaker {
                state: BreakerState::Closed,
                failures: 0,
            }),
            readiness,
            gate: None,
            reported: Mutex::new(true),
        }
    }

    /// Puts the guarded adapter behind its provider's gate (cool-down and rate limit).
    pub fn with_gate(mut self, gate: Arc<ProviderGate>) -> Guarded {
        self.gate = Some(gate);
        self
    }

    /// The provider's gate, if the adapter calls out.
    pub fn gate(&self) -> Option<&Arc<ProviderGate>> {
        self.gate.as_ref()
    }

    /// What an operator sees of this provider now.
    pub fn status(&self) -> GuardStatus {
        let (state, failures) = self
            .breaker
            .lock()
            .map(|b| (b.state, b.failures))
            .unwrap_or((BreakerState::Closed, 0));
        GuardStatus {
            state,
            consecutive_failures: failures,
            in_flight: self
                .config
                .max_concurrency
                .max(1)
                .saturating_sub(self.permits.available_permits()),
            max_concurrency: self.config.max_concurrency,
            adapter: self.inner.kind(),
            cool_down: self.gate.as_ref().and_then(|g| g.cool_down_left()),
            rate_limit: self.gate.as_ref().and_then(|g| g.rate_limit()),
        }
    }

    /// Lets the next call probe a half-open breaker whose probe was refused before it called the
    /// provider (rate limit, cool-down): that refusal says nothing of the provider's health.
    fn release_probe(&self) {
        if let Ok(mut b) = self.breaker.lock()
            && b.state == BreakerState::HalfOpen
        {
            b.state = BreakerState::Open {
                until: Instant::now(),
            };
        }
    }

    /// The breaker's state now.
    pub fn state(&self) -> BreakerState {
        self.breaker
            .lock()
            .map(|b| b.state)
            .unwrap_or(BreakerState::Closed)
    }

    fn admit(&self) -> Result<Admission, AdapterError> {
        let Ok(mut b) = self.breaker.lock() else {
            return Ok(Admission::Call);
        };
        match b.state {
            BreakerState::Closed => Ok(Admission::Call),
            BreakerState::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    b.state = BreakerState::HalfOpen;
                    Ok(Admission::Probe)
                } else {
                    Err(AdapterError::Unavailable {
                        reason: "circuit open".into(),
                        retry_after: Some(until - now),
                    })
                }
            }
            BreakerState::HalfOpen => Err(AdapterError::Unavailable {
                reason: "circuit open".into(),
                retry_after: Some(Duration::from_secs(1)),
            }),
        }
    }

    /// Counts `outcome` for or against the provider. A deadline the caller chose
    /// (`callers_deadline`) that ran out says nothing of the provider: a consumer who sends calls
    /// with a few milliseconds would otherwise open the breaker for every other one.
    fn settle<T>(
        &self,
        admission: &Admission,
        outcome: &Result<T, AdapterError>,
        callers_deadline: bool,
    ) {
        if callers_deadline && matches!(outcome, Err(AdapterError::DeadlineExceeded)) {
            if matches!(admission, Admission::Probe) {
                self.release_probe();
            }
            return;
        }
        let failed = matches!(
            outcome,
            Err(AdapterError::Unavailable { .. }
                | AdapterError::AuthFailed(_)
                | AdapterError::InvalidResponse(_)
                | AdapterError::DeadlineExceeded)
        );
        let Ok(mut b) = self.breaker.lock() else {
            return;
        };
        let was_ready = !matches!(b.state, BreakerState::Open { .. } | BreakerState::HalfOpen);
        if failed {
            b.failures = b.failures.saturating_add(1);
            if matches!(admission, Admission::Probe) || b.failures >= self.config.failure_threshold
            {
                b.state = BreakerState::Open {
                    until: Instant::now() + self.config.open_for,
                };
            }
        } else {
            b.failures = 0;
            b.state = BreakerState::Closed;
        }
        let ready = b.state == BreakerState::Closed;
        drop(b);
        if ready != was_ready {
            if ready {
                tracing::info!(attestation_type = %self.attestation_type, "provider recovered: circuit closed");
            } else {
                tracing::warn!(attestation_type = %self.attestation_type, "provider failing: circuit open");
            }
            self.report();
        }
    }
}

impl Member for Guarded {
    /// Reports readiness (breaker closed and no cool-down) when it changed since last told.
    fn report(&self) {
        let Ok(mut reported) = self.reported.lock() else {
            return;
        };
        let ready = self.state() == BreakerState::Closed
            && self
                .gate
                .as_ref()
                .is_none_or(|g| g.cool_down_left().is_none());
        if *reported == ready {
            return;
        }
        *reported = ready;
        if let Some(hook) = &self.readiness {
            hook(&self.attestation_type, ready);
        }
    }
}

/// Re-opens the breaker if a probe is dropped before it settled (its caller went away).
struct ProbeGuard<'a> {
    guarded: &'a Guarded,
    armed: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed
            && let Ok(mut b) = self.guarded.breaker.lock()
            && b.state == BreakerState::HalfOpen
        {
            b.state = BreakerState::Open {
                until: Instant::now() + self.guarded.config.open_for,
            };
        }
    }
}

/// Whether an error comes from an open breaker rather than the provider itself.
pub fn is_circuit_open(e: &AdapterError) -> bool {
    matches!(e, AdapterError::Unavailable { reason, .. } if reason == "circuit open")
}

#[async_trait::async_trait]
impl Adapter for Guarded {
    async fn fetch(&self, request: &AdapterRequest) -> Result<Claims, AdapterError> {
        self.answer(request).await.map(|answer| answer.claims)
    }

    /// The inner adapter's answer, behind the concurrency limit and the breaker: a signature
    /// that fails is an invalid answer, and counts as a failure like any other; so does a
    /// deadline that runs out (the broker's own).
    async fn answer(&self, request: &AdapterRequest) -> Result<Answer, AdapterError> {
        self.answer_within(request, false).await
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn precheck(&self, request: &AdapterRequest) -> Result<(), AdapterError> {
        self.inner.precheck(request)
    }
}

impl Guarded {
    /// [`Adapter::answer`], where `request.deadline` is the caller's (`callers_deadline`,
    /// shorter than the broker's own time for a provider) or the broker's: only the broker's
    /// counts against the provider when it runs out.
    pub async fn answer_within(
        &self,
        request: &AdapterRequest,
        callers_deadline: bool,
    ) -> Result<Answer, AdapterError> {
        // A refusal of the request itself leaves the breaker, the slots and the gate alone.
        self.inner.precheck(request)?;
        // The provider asked to wait: answered at once, without calling it.
        if let Some(gate) = &self.gate {
            gate.check()?;
        }
        let admission = self.admit()?;
        // A probe whose caller goes away must not leave the breaker half-open for ever.
        let mut probe = ProbeGuard {
            guarded: self,
            armed: matches!(admission, Admission::Probe),
        };
        // The provider's rate limit: wait for a slot within the deadline (a cool-down may have
        // begun meanwhile).
        if let Some(gate) = &self.gate
            && let Err(e) = match gate.slot(request.deadline).await {
                Ok(()) => gate.check(),
                Err(e) => Err(e),
            }
        {
            probe.armed = false;
            if matches!(admission, Admission::Probe) {
                self.release_probe();
            }
            return Err(e);
        }
        let permit = match tokio::time::timeout_at(request.deadline, self.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => {
                return Err(AdapterError::Unavailable {
                    reason: "adapter closed".into(),
                    retry_after: None,
                });
            }
            Err(_) => {
                let outcome = Err(AdapterError::DeadlineExceeded);
                probe.armed = false;
                if matches!(admission, Admission::Probe) {
                    self.settle(&admission, &outcome, callers_deadline);
                }
                return outcome;
            }
        };
        let mut outcome = tokio::time::timeout_at(request.deadline, self.inner.answer(request))
            .await
            .unwrap_or(Err(AdapterError::DeadlineExceeded));
        // The provider asked to wait: hold its calls until then (the delay as honoured).
        if let (Some(gate), Err(AdapterError::Unavailable { retry_after, .. })) =
            (&self.gate, &mut outcome)
            && let Some(asked) = retry_after.filter(|d| !d.is_zero())
        {
            *retry_after = Some(gate.hold(asked, &self.attestation_type));
        }
        drop(permit);
        probe.armed = false;
        self.settle(&admission, &outcome, callers_deadline);
        outcome
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

    use super::*;

    /// A provider whose behaviour the test switches: failing or answering, fast or slow.
    #[derive(Debug, Default)]
    struct Provider {
        failing: std::sync::atomic::AtomicBool,
        delay_ms: AtomicU32,
        calls: AtomicUsize,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Adapter for Provider {
        async fn fetch(&self, _: &AdapterRequest) -> Result<Claims, AdapterError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let delay = self.delay_ms.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(u64::from(delay))).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if self.failing.load(Ordering::SeqCst) {
                Err(AdapterError::Unavailable {
                    reason: "down".into(),
                    retry_after: None,
                })
            } else {
                Ok(Claims::new())
            }
        }

        fn kind(&self) -> &'static str {
            "test"
        }
    }

    fn request(ms: u64) -> AdapterRequest {
        AdapterRequest {
            subject: "test:alice".into(),
            attestation_type: "caf.quotient_familial".into(),
            claims: vec![],
            consumer: "mairie-lyon".into(),
            purpose: "tarification_cantine".into(),
            legal_basis: unefois_adapters::LegalBasis::Law {
                citation: "x".into(),
            },
            request_id: String::new(),
            consumer_siret: None,
            purpose_label: String::new(),
            civil_status: None,
            deadline: Instant::now() + Duration::from_millis(ms),
        }
    }

    #[tokio::test]
    async fn the_breaker_opens_refuses_probes_and_closes() {
        let provider = Arc::new(Provider::default());
        let changes = Arc::new(Mutex::new(Vec::new()));
        let seen = changes.clone();
        let guarded = Guarded::new(
            "caf.quotient_familial",
            provider.clone(),
            ResilienceConfig {
                max_concurrency: 4,
                failure_threshold: 3,
                open_for: Duration::from_millis(200),
            },
            Some(Arc::new(move |_: &str, ready: bool| {
                seen.lock().unwrap().push(ready)
            })),
        );
        provider.failing.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            assert!(guarded.fetch(&request(1000)).await.is_err());
        }
        assert!(matches!(guarded.state(), BreakerState::Open { .. }));
        // Open: refused at once, the provider is not called.
        let err = guarded.fetch(&request(1000)).await.unwrap_err();
        assert!(is_circuit_open(&err));
        assert_eq!(provider.calls.load(Ordering::SeqCst), 3);

        // After open_for, one probe; it fails: open again.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(guarded.fetch(&request(1000)).await.is_err());
        assert_eq!(provider.calls.load(Ordering::SeqCst), 4);
        assert!(matches!(guarded.state(), BreakerState::Open { .. }));

        // The provider recovers: the next probe closes the breaker.
        provider.failing.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(guarded.fetch(&request(1000)).await.is_ok());
        assert_eq!(guarded.state(), BreakerState::Closed);
        assert_eq!(*changes.lock().unwrap(), vec![false, true]);
    }

    #[tokio::test]
    async fn deadlines_the_callers_chose_too_short_leave_the_breaker_closed() {
        let provider = Arc::new(Provider::default());
        provider.delay_ms.store(100, Ordering::SeqCst);
        let guarded = Guarded::new(
            "t",
            provider.clone(),
            ResilienceConfig {
                failure_threshold: 3,
                open_for: Duration::from_millis(50),
                ..ResilienceConfig::default()
            },
            None,
        );
        // A consumer's calls with 20 ms, or none at all: the provider is not at fault.
        for ms in [20, 20, 0, 0, 20] {
            let err = guarded.answer_within(&request(ms), true).await.unwrap_err();
            assert!(matches!(err, AdapterError::DeadlineExceeded), "{err:?}");
        }
        assert_eq!(guarded.state(), BreakerState::Closed);
        assert!(guarded.fetch(&request(1000)).await.is_ok());

        // The broker's own time running out is the provider's failure.
        provider.delay_ms.store(10_000, Ordering::SeqCst);
        for _ in 0..3 {
            assert!(guarded.answer_within(&request(20), false).await.is_err());
        }
        assert!(matches!(guarded.state(), BreakerState::Open { .. }));

        // Half-open, a probe its caller cut short lets the next call probe, which closes it.
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(guarded.answer_within(&request(20), true).await.is_err());
        assert_ne!(guarded.state(), BreakerState::HalfOpen);
        provider.delay_ms.store(0, Ordering::SeqCst);
        assert!(guarded.fetch(&request(1000)).await.is_ok());
        assert_eq!(guarded.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn a_probe_whose_caller_gives_up_reopens_the_breaker() {
        let provider = Arc::new(Provider::default());
        provider.failing.store(true, Ordering::SeqCst);
        let guarded = Arc::new(Guarded::new(
            "t",
            provider.clone(),
            ResilienceConfig {
                max_concurrency: 4,
                failure_threshold: 1,
                open_for: Duration::from_millis(100),
            },
            None,
        ));
        assert!(guarded.fetch(&request(1000)).await.is_err());
        tokio::time::sleep(Duration::from_millis(150)).await;
        // The probe hangs and its caller drops it.
        provider.delay_ms.store(10_000, Ordering::SeqCst);
        let slow = request(5000);
        let probe = tokio::time::timeout(Duration::from_millis(50), guarded.fetch(&slow));
        assert!(probe.await.is_err(), "the probe was still running");
        assert!(matches!(guarded.state(), BreakerState::Open { .. }));
        // Later, a new probe is let through and the recovered provider closes the breaker.
        provider.delay_ms.store(0, Ordering::SeqCst);
        provider.failing.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(guarded.fetch(&request(1000)).await.is_ok());
        assert_eq!(guarded.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn concurrency_is_bounded_and_a_hung_provider_costs_only_its_deadline() {
        let provider = Arc::new(Provider::default());
        provider.delay_ms.store(100, Ordering::SeqCst);
        let guarded = Arc::new(Guarded::new(
            "t",
            provider.clone(),
            ResilienceConfig {
                max_concurrency: 2,
                ..ResilienceConfig::default()
            },
            None,
        ));
        let mut calls = Vec::new();
        for _ in 0..6 {
            let g = guarded.clone();
            calls.push(tokio::spawn(async move { g.fetch(&request(2000)).await }));
        }
        for c in calls {
            assert!(c.await.unwrap().is_ok());
        }
        assert_eq!(provider.max_in_flight.load(Ordering::SeqCst), 2);

        provider.delay_ms.store(10_000, Ordering::SeqCst);
        let started = std::time::Instant::now();
        let err = guarded.fetch(&request(150)).await.unwrap_err();
        assert!(matches!(err, AdapterError::DeadlineExceeded));
        assert!(started.elapsed() < Duration::from_millis(400));
    }
}
