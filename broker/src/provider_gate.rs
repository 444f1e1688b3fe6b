//! What the broker owes a provider as a whole: a cool-down when it asked to wait, and its
//! request-rate limit. Both are kept per provider participant, shared by all of its attestation
//! types that call out (http and grpc adapters; static datasets call nobody).
//!
//! Why per participant, not per type: a provider's quota is usually per credential, and one
//! API token serves all of a provider's types (API Particulier counts 20 calls per second per
//! token). A 429 on one type means the next call of another type would be refused too; and two
//! types limited apart would together send twice the quota. A participant whose types reach
//! APIs with separate quotas gets the stricter behaviour; declaring them as two participants
//! separates them.
//!
//! Cool-down: when the provider answers "wait" (HTTP 429 or 503 with `Retry-After`, gRPC
//! UNAVAILABLE or RESOURCE_EXHAUSTED with `RetryInfo`), every call to it is answered at once,
//! without calling it, until the delay has passed (capped at [`MAX_COOL_DOWN`]). Its types are
//! reported NOT_SERVING meanwhile (grpc.health.v1, `unefois providers status`, metrics).
//!
//! Rate limit: a call over the limit waits for a slot while its deadline allows, then is
//! answered UNAVAILABLE with the wait as `RetryInfo`.
//!
//! On a cluster both are the cluster's: each broker shares what it owes each provider
//! ([`ProviderOwed`]: the calls it sent, until when it was asked to wait) with the others
//! (`RateLimits::share`), which charge those calls to their own gate ([`ProviderGate::charge`])
//! and hold their calls as long ([`ProviderGate::hold_as_asked_elsewhere`]).
//!
//! A reload builds new gates: cool-downs are lifted, as breakers are closed again; a rate limit
//! left as it was keeps what was spent of it (a changed one starts full).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use unefois_adapters::{AdapterError, ProviderRateLimit};

use crate::gcra;

/// Longest cool-down: a provider asking for more is held this long, then tried again (the
/// http adapter caps `Retry-After` the same way; this also bounds gRPC `RetryInfo`).
pub const MAX_COOL_DOWN: Duration = unefois_adapters::http::MAX_RETRY_AFTER;

/// Start of the reason of a call held by a cool-down (see [`is_cooling_down`]).
const COOL_DOWN_REASON: &str = "the provider asked to be called again later";
/// Start of the reason of a call refused by the rate limit (see [`is_rate_limited`]).
const RATE_LIMIT_REASON: &str = "the broker's request-rate limit for this provider";

/// What this broker owes one provider since it started, kept across reloads (a reload's new
/// gate goes on counting, and on spending the same rate limit) and shared with the other
/// brokers of its store.
#[derive(Debug)]
pub struct ProviderOwed {
    /// Calls sent to it through its rate limit.
    sent: AtomicU64,
    /// Until when it asked this broker to wait, in microseconds since 1970; 0 if it never did.
    held_until: AtomicI64,
    /// The rate limit's cell, with the limit it enforces: a gate with the same limit takes it.
    cell: Mutex<Option<(ProviderRateLimit, Arc<gcra::Cell>)>>,
    /// The cells' clock.
    epoch: Instant,
}

impl Default for ProviderOwed {
    fn default() -> Self {
        ProviderOwed {
            sent: AtomicU64::new(0),
            held_until: AtomicI64::new(0),
            cell: Mutex::new(None),
            epoch: Instant::now(),
        }
    }
}

impl ProviderOwed {
    /// The cell of `limit`: the one in use if its limit is the same, else a new one (full).
    fn cell(&self, limit: ProviderRateLimit) -> Option<Arc<gcra::Cell>> {
        let fresh = || gcra::Cell::for_provider(limit).map(Arc::new);
        let Ok(mut kept) = self.cell.lock() else {
            return fresh();
        };
        match &*kept {
            Some((same, cell)) if *same == limit => Some(cell.clone()),
            _ => {
                let cell = fresh()?;
                *kept = Some((limit, cell.clone()));
                Some(cell)
            }
        }
    }

    /// Calls sent, and until when the provider asked to wait (microseconds since 1970, 0 if
    /// never): what the other brokers are told.
    pub fn read(&self) -> (u64, i64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.held_until.load(Ordering::Relaxed),
        )
    }
}

/// Microseconds since 1970 of `at`.
pub fn unix_micros(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Told when a type's readiness may have changed (a cool-down began or ended).
pub trait Member: Send + Sync {
    /// Re-evaluates and reports the member's readiness.
    fn report(&self);
}

/// One provider participant's cool-down and rate limit.
pub struct ProviderGate {
    provider: String,
    held_until: Mutex<Option<Instant>>,
    limit: Option<(ProviderRateLimit, Arc<gcra::Cell>)>,
    owed: Arc<ProviderOwed>,
    members: Mutex<Vec<Weak<dyn Member>>>,
}

impl std::fmt::Debug for ProviderGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderGate")
            .field("provider", &self.provider)
            .field("rate_limit", &self.limit.as_ref().map(|(l, _)| *l))
            .finish()
    }
}

impl ProviderGate {
    /// The gate of `provider`, with its rate limit if declared (checked by the registry),
    /// counting what is sent to it in `owed`.
    pub fn new(
        provider: &str,
        limit: Option<ProviderRateLimit>,
        owed: Arc<ProviderOwed>,
    ) -> ProviderGate {
        ProviderGate {
            provider: provider.to_string(),
            held_until: Mutex::new(None),
            limit: limit.and_then(|l| Some((l, owed.cell(l)?))),
            owed,
            members: Mutex::new(Vec::new()),
        }
    }

    /// The provider participant.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The rate limit's clock now.
    fn now(&self) -> u64 {
        u64::try_from(self.owed.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Takes `calls` other brokers sent the provider: the next calls here wait for them.
    pub fn charge(&self, calls: u64) {
        if let Some((_, cell)) = &self.limit {
            cell.charge(calls, self.now());
        }
    }

    /// The rate limit in force, if any.
    pub fn rate_limit(&self) -> Option<ProviderRateLimit> {
        self.limit.as_ref().map(|(l, _)| *l)
    }

    /// Adds a type to tell when a cool-down begins or ends.
    pub fn join(&self, member: Weak<dyn Member>) {
        if let Ok(mut members) = self.members.lock() {
            members.push(member);
        }
    }

    /// How long calls are still held, if a cool-down is running.
    pub fn cool_down_left(&self) -> Option<Duration> {
        let until = (*self.held_until.lock().ok()?)?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Refuses a call at once while a cool-down runs.
    pub fn check(&self) -> Result<(), AdapterError> {
        match self.cool_down_left() {
            None => Ok(()),
            Some(left) => {
                crate::metrics::provider_held(&self.provider, "cool_down");
                Err(AdapterError::Unavailable {
                    reason: format!(
                        "{COOL_DOWN_REASON} (in {} s); calls to it are held until then",
                        left.as_secs_f64().ceil()
                    ),
                    retry_after: Some(left),
                })
            }
        }
    }

    /// Waits for a rate-limit slot until `deadline`; refuses at once when none comes before it.
    pub async fn slot(&self, deadline: Instant) -> Result<(), AdapterError> {
        let Some((limit, cell)) = &self.limit else {
            return Ok(());
        };
        loop {
            let wait = match cell.check(self.now()) {
                Ok(()) => {
                    self.owed.sent.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(wait) => wait,
            };
            if Instant::now() + wait >= deadline {
                crate::metrics::provider_held(&self.provider, "rate_limit");
                return Err(AdapterError::Unavailable {
                    reason: format!(
                        "{RATE_LIMIT_REASON} ({limit}) leaves no slot before the deadline"
                    ),
                    retry_after: Some(wait.max(Duration::from_millis(1))),
                });
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Starts (or lengthens) a cool-down of `asked`, capped at [`MAX_COOL_DOWN`]; returns the
    /// delay in force. Its members are told now and when it ends; the other brokers, at the
    /// next share.
    pub fn hold(self: &Arc<Self>, asked: Duration, attestation_type: &str) -> Duration {
        let delay = asked.min(MAX_COOL_DOWN);
        if asked > MAX_COOL_DOWN {
            tracing::warn!(
                provider = %self.provider,
                asked_s = asked.as_secs(),
                honoured_s = delay.as_secs(),
                "provider asked to wait longer than the most honoured; its calls are held for the \
                 maximum only"
            );
        }
        self.owed
            .held_until
            .fetch_max(unix_micros(SystemTime::now() + delay), Ordering::Relaxed);
        if self.hold_for(delay) {
            tracing::warn!(
                provider = %self.provider,
                %attestation_type,
                cool_down_ms = delay.as_millis() as u64,
                "provider asked to wait: its calls are held"
            );
        }
        delay
    }

    /// Holds the calls for `left` (capped at [`MAX_COOL_DOWN`]), what is left of the wait the
    /// provider asked of another broker.
    pub fn hold_as_asked_elsewhere(self: &Arc<Self>, left: Duration) {
        let delay = left.min(MAX_COOL_DOWN);
        if self.hold_for(delay) {
            tracing::warn!(
                provider = %self.provider,
                cool_down_ms = delay.as_millis() as u64,
                "provider asked another broker to wait: its calls are held here too"
            );
        }
    }

    /// Holds the calls for `delay` unless held longer already; whether a cool-down began.
    fn hold_for(self: &Arc<Self>, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        let Ok(mut held) = self.held_until.lock() else {
            return false;
        };
        if held.is_some_and(|h| h >= until) {
            return false;
        }
        let began = held.is_none_or(|h| h <= Instant::now());
        *held = Some(until);
        drop(held);
        crate::metrics::provider_cool_down(&self.provider, delay);
        self.tell_members();
        let gate = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            let Some(gate) = gate.upgrade() else {
                return;
            };
            if gate.cool_down_left().is_none() {
                tracing::info!(provider = %gate.provider, "provider cool-down over: calls go to it again");
                crate::metrics::provider_cool_down(&gate.provider, Duration::ZERO);
                gate.tell_members();
            }
        });
        began
    }

    fn tell_members(&self) {
        let members: Vec<Arc<dyn Member>> = match self.members.lock() {
            Ok(members) => members.iter().filter_map(Weak::upgrade).collect(),
            Err(_) => return,
        };
        for member in members {
            member.report();
        }
    }
}

/// Whether an error is a call held by a provider's cool-down.
pub fn is_cooling_down(e: &AdapterError) -> bool {
    matches!(e, AdapterError::Unavailable { reason, .. } if reason.starts_with(COOL_DOWN_REASON))
}

/// Whether an error is a call refused by a provider's rate limit.
pub fn is_rate_limited(e: &AdapterError) -> bool {
    matches!(e, AdapterError::Unavailable { reason, .. } if reason.starts_with(RATE_LIMIT_REASON))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cool_down_holds_calls_then_ends() {
        let gate = Arc::new(ProviderGate::new("caf", None, Default::default()));
        gate.check().unwrap();
        assert_eq!(
            gate.hold(Duration::from_millis(200), "caf.x"),
            Duration::from_millis(200)
        );
        let err = gate.check().unwrap_err();
        assert!(is_cooling_down(&err), "{err:?}");
        let AdapterError::Unavailable { retry_after, .. } = err else {
            panic!()
        };
        assert!(retry_after.unwrap() <= Duration::from_millis(200));
        // A shorter hold does not shorten it; an absurd one is capped.
        gate.hold(Duration::from_millis(10), "caf.x");
        assert!(gate.cool_down_left().unwrap() > Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(250)).await;
        gate.check().unwrap();
        assert_eq!(
            gate.hold(Duration::from_secs(86_400), "caf.x"),
            MAX_COOL_DOWN
        );
    }

    /// What another broker sent the provider is waited for here, and what it was asked to
    /// wait holds the calls here too; this broker's own count and wait are what it shares.
    #[tokio::test]
    async fn calls_sent_and_waits_asked_elsewhere_hold_the_calls_here() {
        let owed = Arc::new(ProviderOwed::default());
        let gate = Arc::new(ProviderGate::new(
            "caf",
            Some(ProviderRateLimit {
                per_second: 1,
                burst: Some(3),
            }),
            owed.clone(),
        ));
        let soon = || Instant::now() + Duration::from_millis(50);
        gate.slot(soon()).await.unwrap();
        assert_eq!(owed.read(), (1, 0), "a call sent is counted");
        // Two sent by the other brokers: the burst is spent.
        gate.charge(2);
        let err = gate.slot(soon()).await.unwrap_err();
        assert!(is_rate_limited(&err), "{err:?}");
        assert_eq!(owed.read().0, 1, "a call refused is not counted");
        // A reload's gate with the same limit spends the same; another limit starts full.
        let reloaded = ProviderGate::new("caf", gate.rate_limit(), owed.clone());
        let err = reloaded.slot(soon()).await.unwrap_err();
        assert!(is_rate_limited(&err), "{err:?}");
        let changed = ProviderGate::new(
            "caf",
            Some(ProviderRateLimit {
                per_second: 2,
                burst: Some(3),
            }),
            owed.clone(),
        );
        changed.slot(soon()).await.unwrap();

        gate.check().unwrap();
        gate.hold_as_asked_elsewhere(Duration::from_millis(300));
        let err = gate.check().unwrap_err();
        assert!(is_cooling_down(&err), "{err:?}");
        assert_eq!(
            owed.read().1,
            0,
            "a wait asked elsewhere is not shared again"
        );
        let before = unix_micros(SystemTime::now());
        gate.hold(Duration::from_secs(2), "caf.x");
        let (_, until) = owed.read();
        assert!(
            (before + 2_000_000..before + 2_100_000).contains(&until),
            "{until} against {before}"
        );
        // Capped, as the provider's own.
        gate.hold_as_asked_elsewhere(Duration::from_secs(86_400));
        assert!(gate.cool_down_left().unwrap() <= MAX_COOL_DOWN);
    }

    #[tokio::test]
    async fn the_rate_limit_queues_within_the_deadline_then_refuses() {
        let gate = ProviderGate::new(
            "caf",
            Some(ProviderRateLimit {
                per_second: 10,
                burst: Some(2),
            }),
            Default::default(),
        );
        let started = Instant::now();
        let far = started + Duration::from_secs(5);
        for _ in 0..4 {
            gate.slot(far).await.unwrap();
        }
        // Two at once, then one every 100 ms.
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(180), "{waited:?}");
        assert!(waited < Duration::from_millis(400), "{waited:?}");
        let err = gate
            .slot(Instant::now() + Duration::from_millis(20))
            .await
            .unwrap_err();
        assert!(is_rate_limited(&err), "{err:?}");
    }
}
