//! A rate as the generic cell rate algorithm (GCRA, the one `governor` implements), which can
//! also be charged the calls other brokers admitted: `governor` only admits or refuses, and
//! cannot take a use it did not see. A participant's rate (its calls to the brokers) and a
//! provider's (the brokers' calls to it, provider_gate.rs) are each one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use unefois_adapters::ProviderRateLimit;

use crate::registry::RateLimit;

/// The most a participant may owe for calls other brokers admitted beyond its burst: a use
/// reported late or twice (a broker's counts lost and written again) refuses it for at most this
/// long.
const MOST_OWED: Duration = Duration::from_secs(60);

/// One participant's rate: when its next call is due at the sustained rate.
#[derive(Debug)]
pub struct Cell {
    /// Nanoseconds between two calls at the sustained rate.
    interval: u64,
    /// How far ahead of now that due time may be for a call to pass: the burst's worth.
    tolerance: u64,
    /// When the next call is due at the sustained rate (the theoretical arrival time), in
    /// nanoseconds on the caller's clock.
    due: AtomicU64,
}

impl Cell {
    /// The cell of `limit`; `None` when it allows no call (a sustained rate or a burst of 0: not
    /// limited, as a participant without a declared limit was before defaults existed).
    pub fn new(limit: RateLimit) -> Option<Cell> {
        if limit.per_minute == 0 || limit.burst == 0 {
            return None;
        }
        Some(Cell::of(
            60_000_000_000 / u64::from(limit.per_minute),
            limit.burst,
        ))
    }

    /// The cell of a provider's `limit`; `None` when it allows no call (the registry refuses
    /// such a limit).
    pub fn for_provider(limit: ProviderRateLimit) -> Option<Cell> {
        if limit.per_second == 0 || limit.burst() == 0 {
            return None;
        }
        Some(Cell::of(
            1_000_000_000 / u64::from(limit.per_second),
            limit.burst(),
        ))
    }

    /// A call every `interval` nanoseconds, `burst` at once.
    fn of(interval: u64, burst: u32) -> Cell {
        let interval = interval.max(1);
        Cell {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)),
            due: AtomicU64::new(0),
        }
    }

    /// Admits one call at `now` (nanoseconds), or says how long until one would pass.
    pub fn check(&self, now: u64) -> Result<(), Duration> {
        let mut due = self.due.load(Ordering::Relaxed);
        loop {
            let next = due.max(now).saturating_add(self.interval);
            let ahead = next - now;
            if ahead > self.tolerance {
                return Err(Duration::from_nanos(ahead - self.tolerance));
            }
            match self
                .due
                .compare_exchange_weak(due, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(current) => due = current,
            }
        }
    }

    /// Takes `calls` admitted elsewhere at `now`, whether or not they fit: the next calls here
    /// wait for them, up to [`MOST_OWED`] beyond the burst.
    pub fn charge(&self, calls: u64, now: u64) {
        self.charge_time(calls.saturating_mul(self.interval), now);
    }

    /// Takes `nanos` of the sustained rate's time for calls elsewhere (the other brokers' part
    /// of it, over the rate): the due time moves that much later, up to [`MOST_OWED`] beyond
    /// the burst.
    pub fn charge_time(&self, nanos: u64, now: u64) {
        let most = now
            .saturating_add(self.tolerance)
            .saturating_add(u64::try_from(MOST_OWED.as_nanos()).unwrap_or(u64::MAX));
        let _ = self
            .due
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |due| {
                let charged = due.max(now).saturating_add(nanos);
                Some(charged.min(most.max(due)))
            });
    }

    /// How far ahead of `now` the next call is due: what the calls taken so far still owe.
    pub fn owed(&self, now: u64) -> u64 {
        self.due.load(Ordering::Relaxed).saturating_sub(now)
    }

    /// Nanoseconds between two calls at the sustained rate.
    pub fn interval(&self) -> u64 {
        self.interval
    }

    /// The burst's worth, in nanoseconds of the sustained rate.
    pub fn tolerance(&self) -> u64 {
        self.tolerance
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn cell(per_minute: u32, burst: u32) -> Cell {
        Cell::new(RateLimit { per_minute, burst }).expect("a limit")
    }

    /// How many calls pass at `now`, one after another, until one is refused.
    fn passing(cell: &Cell, now: u64) -> (u32, Duration) {
        let mut n = 0;
        loop {
            match cell.check(now) {
                Ok(()) => n += 1,
                Err(wait) => return (n, wait),
            }
        }
    }

    #[test]
    fn a_burst_passes_then_the_sustained_rate() {
        // 60 a minute: one a second; 3 at once.
        let c = cell(60, 3);
        assert_eq!(passing(&c, 0), (3, Duration::from_secs(1)));
        assert_eq!(passing(&c, SECOND / 2), (0, Duration::from_millis(500)));
        assert_eq!(passing(&c, SECOND).0, 1);
        // Idle long enough, the whole burst again, never more.
        assert_eq!(passing(&c, 100 * SECOND).0, 3);
    }

    #[test]
    fn calls_admitted_elsewhere_are_waited_for() {
        let c = cell(60, 3);
        // Two calls elsewhere leave one here.
        c.charge(2, 0);
        assert_eq!(passing(&c, 0).0, 1);
        // Five more elsewhere than the burst allowed: owed, waited for at the sustained rate.
        c.charge(5, 0);
        assert_eq!(passing(&c, 0), (0, Duration::from_secs(6)));
        assert_eq!(passing(&c, 6 * SECOND).0, 1);
    }

    #[test]
    fn time_taken_elsewhere_is_waited_for_and_bounded() {
        let c = cell(60, 3);
        // Half a second of the others' part: two calls left of the burst.
        c.charge_time(SECOND / 2, 0);
        assert_eq!(passing(&c, 0).0, 2);
        // What is owed is kept, up to a minute beyond the burst.
        c.charge_time(1_000 * SECOND, 0);
        assert_eq!(passing(&c, 0), (0, MOST_OWED + Duration::from_secs(1)));
    }

    #[test]
    fn what_is_owed_is_bounded() {
        let c = cell(60, 3);
        c.charge(1_000_000, 0);
        let (n, wait) = passing(&c, 0);
        assert_eq!(n, 0);
        assert_eq!(wait, MOST_OWED + Duration::from_secs(1));
    }

    #[test]
    fn no_rate_or_no_burst_is_no_limit_and_huge_ones_do_not_overflow() {
        assert!(
            Cell::new(RateLimit {
                per_minute: 0,
                burst: 5
            })
            .is_none()
        );
        assert!(
            Cell::new(RateLimit {
                per_minute: 5,
                burst: 0
            })
            .is_none()
        );
        let c = cell(u32::MAX, u32::MAX);
        assert_eq!(passing_some(&c, u64::MAX - 1, 1_000), 1_000);
        let slow = cell(1, u32::MAX);
        assert_eq!(passing_some(&slow, 0, 1_000), 1_000);
    }

    fn passing_some(cell: &Cell, now: u64, most: u32) -> u32 {
        (0..most).take_while(|_| cell.check(now).is_ok()).count() as u32
    }
}
