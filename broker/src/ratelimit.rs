//! Rate limits per consumer, and the harvesting alarm.
//!
//! A consumer over its declared rate gets RESOURCE_EXHAUSTED with a retry-after. Denials are
//! counted in memory and recorded once per consumer per window, with the count, so that a
//! flood cannot multiply disk writes. A consumer that reads more distinct subjects per minute
//! than its habilitation allows raises one alarm entry per window.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use time::OffsetDateTime;

use crate::registry::Registry;

/// The limiter of every participant of `registry`, reusing those of `kept` whose limit is the
/// same.
fn limiters(registry: &Registry, kept: &HashMap<String, Limiter>) -> HashMap<String, Limiter> {
    let mut out = HashMap::new();
    // Every participant is limited: by its own rate, or by the federation's default.
    for p in registry.participants() {
        let limit = registry.rate_limit_of(p);
        if let Some(same) = kept.get(&p.id).filter(|k| k.limit == limit) {
            out.insert(
                p.id.clone(),
                Limiter {
                    limit,
                    state: same.state.clone(),
                },
            );
            continue;
        }
        if let (Some(per_minute), Some(burst)) = (
            NonZeroU32::new(limit.per_minute),
            NonZeroU32::new(limit.burst),
        ) {
            let quota = Quota::per_minute(per_minute).allow_burst(burst);
            out.insert(
                p.id.clone(),
                Limiter {
                    limit,
                    state: Arc::new(RateLimiter::direct(quota)),
                },
            );
        }
    }
    out
}

/// The length of a counting window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The limit of every participant (its own, or the federation's default).
pub struct RateLimits {
    /// Swapped whole on reload; a participant whose limit did not change keeps its limiter.
    limiters: arc_swap::ArcSwap<HashMap<String, Limiter>>,
    clock: DefaultClock,
    denied: Mutex<HashMap<String, u64>>,
    harvest: Mutex<Harvest>,
}

struct Harvest {
    window_start: OffsetDateTime,
    seen: HashMap<(String, String), HashSet<String>>,
    alarmed: HashSet<(String, String)>,
}

/// One participant's limiter, with the limit it enforces.
struct Limiter {
    limit: crate::registry::RateLimit,
    state: Arc<DefaultDirectRateLimiter>,
}

/// Denials of one consumer over a window, to record.
#[derive(Debug, PartialEq, Eq)]
pub struct DeniedCount {
    /// The consumer.
    pub participant: String,
    /// How many calls were refused.
    pub count: u64,
}

impl RateLimits {
    /// The limits of the registry: each participant's own, or the federation's default.
    pub fn from_registry(registry: &Registry) -> RateLimits {
        RateLimits {
            limiters: arc_swap::ArcSwap::from_pointee(limiters(registry, &HashMap::new())),
            clock: DefaultClock::default(),
            denied: Mutex::new(HashMap::new()),
            harvest: Mutex::new(Harvest {
                window_start: OffsetDateTime::now_utc(),
                seen: HashMap::new(),
                alarmed: HashSet::new(),
            }),
        }
    }

    /// Applies a reloaded registry's limits: a participant added gets one at once, one whose
    /// limit is unchanged keeps what it has used of it.
    pub fn update(&self, registry: &Registry) {
        let kept = self.limiters.load();
        self.limiters.store(Arc::new(limiters(registry, &kept)));
    }

    /// Admits a call of `consumer`, or says when to retry (and counts the denial).
    pub fn check(&self, consumer: &str) -> Result<(), Duration> {
        let limiters = self.limiters.load();
        let Some(limiter) = limiters.get(consumer) else {
            return Ok(());
        };
        match limiter.state.check() {
            Ok(()) => Ok(()),
            Err(not_until) => {
                if let Ok(mut denied) = self.denied.lock() {
                    *denied.entry(consumer.to_string()).or_default() += 1;
                }
                Err(not_until.wait_time_from(self.clock.now()))
            }
        }
    }

    /// The denials counted since the last call, to record, and resets the counts.
    pub fn take_denied(&self) -> Vec<DeniedCount> {
        let Ok(mut denied) = self.denied.lock() else {
            return Vec::new();
        };
        let mut out: Vec<DeniedCount> = denied
            .drain()
            .map(|(participant, count)| DeniedCount { participant, count })
            .collect();
        out.sort_by(|a, b| a.participant.cmp(&b.participant));
        out
    }

    /// Notes that `consumer` read `subject` (a pseudonym) under `habilitation`; returns the
    /// number of distinct subjects the first time it exceeds `limit` in the current window.
    pub fn observe(
        &self,
        consumer: &str,
        habilitation: &str,
        subject: &str,
        limit: u32,
    ) -> Option<usize> {
        let mut h = self.harvest.lock().ok()?;
        let now = OffsetDateTime::now_utc();
        if now - h.window_start >= WINDOW {
            h.window_start = now;
            h.seen.clear();
            h.alarmed.clear();
        }
        let key = (consumer.to_string(), habilitation.to_string());
        let seen = h.seen.entry(key.clone()).or_default();
        // Bounded: once over the limit, the alarm is raised and no more subjects are kept.
        if seen.len() <= limit as usize {
            seen.insert(subject.to_string());
        }
        let count = seen.len();
        if count > limit as usize && h.alarmed.insert(key) {
            return Some(count);
        }
        None
    }
}
