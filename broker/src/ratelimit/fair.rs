//! What a broker's cell of one participant is charged at a share of the brokers' counts: the
//! rate between the brokers, and, over it, each broker's fair part of it.
//!
//! Under its rate a participant's calls go through whichever broker they reach, and each broker
//! charges the calls the others admitted to its own cell: a burst spent through two brokers is
//! spent for the third. Over its rate that alone is not fair: each broker takes the others'
//! calls late, at its own moment, their counts drift apart, and one broker could admit nearly
//! all of the rate while another refused every call (docs/cluster.md). So, once some call was
//! refused anywhere since the last share, each broker charges its cell the others' part of the
//! time elapsed, in proportion to the calls each was asked (admitted or refused), or the calls
//! they admitted beyond their parts so far when more (bursts spent together are spent once):
//! one that admits more than its part is held to it, which frees the others' parts, and over a
//! sustained overload each broker admits the rate times its part of the demand.

use std::time::Duration;

/// Calls of one participant over one period, as a broker counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    /// Asked: admitted or refused.
    pub asked: u64,
    /// Admitted.
    pub admitted: u64,
}

impl Calls {
    /// The calls asked, at least those admitted (a broker that counts no refusals, of a version
    /// before they were shared, asked what it admitted).
    fn demand(self) -> u64 {
        self.asked.max(self.admitted)
    }
}

/// What a cell takes at a share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charge {
    /// No call refused anywhere: the calls the other brokers admitted.
    Admitted(u64),
    /// Some call refused: this many nanoseconds of the sustained rate, the other brokers' part
    /// of the time elapsed or the calls they admitted beyond their parts so far.
    Time(u64),
}

/// A cell as a share finds it, in nanoseconds of its sustained rate.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    /// Between two calls.
    pub interval: u64,
    /// The burst's worth of calls.
    pub tolerance: u64,
    /// What the calls it took still owe (its next call due this far ahead).
    pub owed: u64,
}

/// What a broker's cell takes at a share, from `theirs` (the other brokers' calls since its
/// last read), `mine` (its own since its last share) and the time `elapsed` since then.
/// `unused` carries, from share to share over the rate, what the others' parts left unused:
/// calls they admit beyond a part later are taken from it first, so that over a period the
/// cell takes the greater of the others' parts and their calls, not the sum of each share's
/// greater (which, calls coming in whole numbers, would leave part of the rate unused). It is
/// at most a burst's worth, and at most what the cell still owes: a cell that refilled owes
/// nothing, and carries nothing.
pub fn charge(
    theirs: Calls,
    mine: Calls,
    elapsed: Duration,
    rate: Rate,
    unused: &mut u64,
) -> Charge {
    *unused = (*unused).min(rate.owed).min(rate.tolerance);
    let asked = u128::from(theirs.demand()) + u128::from(mine.demand());
    let admitted = u128::from(theirs.admitted) + u128::from(mine.admitted);
    if asked <= admitted || theirs.demand() == 0 {
        return Charge::Admitted(theirs.admitted);
    }
    let part = elapsed
        .as_nanos()
        .saturating_mul(u128::from(theirs.demand()))
        / asked;
    let part = u64::try_from(part).unwrap_or(u64::MAX);
    let calls = theirs.admitted.saturating_mul(rate.interval);
    if calls <= part {
        *unused = unused.saturating_add(part - calls).min(rate.tolerance);
        Charge::Time(part)
    } else {
        let covered = (calls - part).min(*unused);
        *unused -= covered;
        Charge::Time(calls - covered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gcra::Cell;
    use crate::registry::RateLimit;

    const SECOND: u64 = 1_000_000_000;
    /// 100 a second, 20 at once.
    const HUNDRED_A_SECOND: RateLimit = RateLimit {
        per_minute: 6_000,
        burst: 20,
    };

    fn calls(asked: u64, admitted: u64) -> Calls {
        Calls { asked, admitted }
    }

    #[test]
    fn the_charge_is_the_others_calls_under_the_rate_and_their_part_over_it() {
        let ms = |n: u64| n * 1_000_000;
        // 100 a second, 10 at once.
        let rate = Rate {
            interval: ms(10),
            tolerance: ms(100),
            owed: ms(80),
        };
        // (theirs, mine, elapsed ms, unused before, charge, unused after)
        let cases = [
            // Nothing refused: what the others admitted, whatever the time; the carry kept.
            (
                calls(5, 5),
                calls(3, 3),
                200,
                ms(7),
                Charge::Admitted(5),
                ms(7),
            ),
            (calls(0, 0), calls(0, 0), 200, 0, Charge::Admitted(0), 0),
            // Refused here only, nobody else asked: nothing to charge.
            (calls(0, 0), calls(9, 4), 200, 0, Charge::Admitted(0), 0),
            // Refused somewhere: the others' part of the demand, of the time elapsed (150 ms of
            // 200); what their 10 calls left of it is carried.
            (
                calls(30, 10),
                calls(10, 10),
                200,
                0,
                Charge::Time(ms(150)),
                ms(50),
            ),
            // Their calls beyond their part are taken from what was carried first.
            (
                calls(30, 20),
                calls(10, 10),
                200,
                ms(50),
                Charge::Time(ms(150)),
                0,
            ),
            (
                calls(30, 25),
                calls(10, 10),
                200,
                ms(20),
                Charge::Time(ms(230)),
                0,
            ),
            // At most a burst's worth is carried, and at most what the cell owed before.
            (
                calls(30, 0),
                calls(10, 10),
                200,
                ms(90),
                Charge::Time(ms(150)),
                ms(100),
            ),
            (
                calls(30, 20),
                calls(10, 10),
                200,
                ms(95),
                Charge::Time(ms(150)),
                ms(30),
            ),
            // A broker that counts no refusals asked what it admitted.
            (calls(0, 20), calls(20, 5), 100, 0, Charge::Time(ms(200)), 0),
        ];
        for (theirs, mine, elapsed, before, want, after) in cases {
            let mut unused = before;
            let elapsed = Duration::from_millis(elapsed);
            assert_eq!(
                charge(theirs, mine, elapsed, rate, &mut unused),
                want,
                "{theirs:?} {mine:?}"
            );
            assert_eq!(unused, after, "{theirs:?} {mine:?}");
        }
        // No overflow.
        let mut unused = u64::MAX;
        assert!(matches!(
            charge(calls(u64::MAX, 3), calls(u64::MAX, 0), Duration::MAX, rate, &mut unused),
            Charge::Time(nanos) if nanos > u64::MAX / 4
        ));
    }

    /// How a broker is asked calls.
    #[derive(Clone, Copy)]
    enum Demand {
        /// This many a second, evenly.
        Steady(u64),
        /// This many at once (a millisecond apart), every this many seconds.
        Bursts(u64, u64),
        /// This many a second on average, at random (a Poisson process, from this seed).
        Random(u64, u64),
    }

    impl Demand {
        /// The first call, for broker `b` of three.
        fn first(self, b: u64) -> u64 {
            match self {
                Demand::Steady(n) | Demand::Random(n, _) => b * SECOND / n / 3,
                Demand::Bursts(..) => b * 1_000_000 / 3,
            }
        }

        /// The call after the `n`th (from 1), asked at `at`.
        fn next(self, n: u64, at: u64) -> u64 {
            match self {
                Demand::Steady(per_second) => at + SECOND / per_second,
                Demand::Bursts(calls, _) if !n.is_multiple_of(calls) => at + 1_000_000,
                Demand::Bursts(calls, every) => at + every * SECOND - (calls - 1) * 1_000_000,
                Demand::Random(per_second, seed) => {
                    // xorshift64*, seeded by the broker and the call: an exponential wait.
                    let mut x = (seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
                    for _ in 0..4 {
                        x ^= x >> 12;
                        x ^= x << 25;
                        x ^= x >> 27;
                    }
                    let u =
                        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
                    let wait = -(1.0 - u).ln() / per_second as f64;
                    at + (wait * SECOND as f64) as u64 + 1
                }
            }
        }
    }

    /// Brokers each asked calls of one participant limited to `limit` as `demand[b]` says,
    /// broker 0 started at `start` (a restart: what the others counted before is history to
    /// it), each sharing every 200 ms at moments of its own as `RateLimits::share` does (its
    /// counts written, the others' read and charged). The calls each admitted over the last
    /// half of `seconds`.
    fn brokers_asked(limit: RateLimit, demand: [Demand; 3], start: u64, seconds: u64) -> [u64; 3] {
        let cells = [limit; 3].map(|l| Cell::new(l).expect("a limit"));
        let mut unused = [0u64; 3];
        let (mut counts, mut counted) = ([Calls::default(); 3], [0u64; 3]);
        // What each broker last shared, each one's last read of the others' counts, and its own
        // counts and clock at its last share.
        let mut shared = [Calls::default(); 3];
        let mut read = [[Calls::default(); 3]; 3];
        let mut last = [(Calls::default(), 0u64); 3];
        let (share_every, end) = (SECOND / 5, seconds * SECOND);
        let mut next_call = [0u64, 1, 2].map(|b| demand[b as usize].first(b));
        let mut next_share = [0u64, 1, 2].map(|b| b * share_every / 3 + 7);
        (next_call[0], next_share[0]) = (start + 7, start);
        let mut started = false;
        loop {
            let (now, b, share) = (0..3)
                .flat_map(|b| [(next_call[b], b, false), (next_share[b], b, true)])
                .min()
                .expect("brokers");
            if now >= end {
                return counted;
            }
            if b == 0 && !started {
                started = true;
                read[b] = shared;
                last[b] = (counts[b], now);
            }
            if share {
                shared[b] = counts[b];
                let mut theirs = Calls::default();
                for other in (0..3).filter(|&o| o != b) {
                    theirs.asked += shared[other].asked - read[b][other].asked;
                    theirs.admitted += shared[other].admitted - read[b][other].admitted;
                    read[b][other] = shared[other];
                }
                let (before, at) = last[b];
                let mine = Calls {
                    asked: counts[b].asked - before.asked,
                    admitted: counts[b].admitted - before.admitted,
                };
                let elapsed = Duration::from_nanos(now - at);
                let rate = Rate {
                    interval: cells[b].interval(),
                    tolerance: cells[b].tolerance(),
                    owed: cells[b].owed(now),
                };
                match charge(theirs, mine, elapsed, rate, &mut unused[b]) {
                    Charge::Admitted(n) => cells[b].charge(n, now),
                    Charge::Time(nanos) => cells[b].charge_time(nanos, now),
                }
                last[b] = (counts[b], now);
                next_share[b] += share_every;
            } else {
                counts[b].asked += 1;
                if cells[b].check(now).is_ok() {
                    counts[b].admitted += 1;
                    counted[b] += u64::from(now >= end / 2);
                }
                next_call[b] = demand[b].next(counts[b].asked, now);
            }
        }
    }

    /// [`brokers_asked`], each broker asked `per_second[b]` calls a second.
    fn brokers_sharing(
        limit: RateLimit,
        per_second: [u64; 3],
        start: u64,
        seconds: u64,
    ) -> [u64; 3] {
        brokers_asked(limit, per_second.map(Demand::Steady), start, seconds)
    }

    /// Brokers asked their burst at once, together, every 10 s: the rate over that time, and
    /// not one burst more than the brokers each admit at once (without the others' admitted
    /// calls charged over the rate, they admitted twice the rate).
    #[test]
    fn brokers_asked_bursts_together_admit_the_rate_once() {
        let limit = RateLimit {
            per_minute: 600,
            burst: 60,
        };
        for calls in [60, 61, 67] {
            let seconds = 600;
            let counted = brokers_asked(limit, [Demand::Bursts(calls, 10); 3], 0, seconds);
            let total: u64 = counted.iter().sum();
            // The last half: 10 a second, and the bursts the brokers hold at its start.
            let most = 10 * seconds / 2 + 3 * 60;
            assert!(
                total <= most,
                "{calls} at once: {counted:?}, at most {most}"
            );
        }
    }

    /// Three brokers each sent three times a participant's rate, one restarted at one moment or
    /// another: between them they admit the rate, within 5 %, each about a third of it.
    /// (Charging the others' admitted calls alone, one broker took 58 % to nearly all of it.)
    #[test]
    fn brokers_over_a_rate_share_it_fairly() {
        let limit = HUNDRED_A_SECOND;
        let seconds = 60;
        let rate = 100 * seconds / 2;
        for start in (10..=20).map(|s| s * SECOND + s * 37_000_000) {
            let counted = brokers_sharing(limit, [300; 3], start, seconds);
            let total: u64 = counted.iter().sum();
            assert!(
                (rate * 95 / 100..=rate * 105 / 100).contains(&total),
                "restarted at {start} ns: {counted:?}"
            );
            for part in counted {
                assert!(
                    (rate * 28 / 100..=rate * 39 / 100).contains(&part),
                    "restarted at {start} ns: {counted:?}"
                );
            }
        }
    }

    /// Calls coming at random, as they do: over the rate the brokers still admit it all
    /// between them, a third each (taking each share's greater of the others' part and their
    /// calls, without carrying what was left unused, admitted 68 to 91 % of it).
    #[test]
    fn brokers_asked_at_random_over_a_rate_admit_it_all_fairly() {
        for (per_minute, burst) in [(60, 6), (120, 10), (600, 60), (1_200, 20), (6_000, 20)] {
            let limit = RateLimit { per_minute, burst };
            // Long enough for a thousand calls or more.
            let seconds = if per_minute < 600 { 2_400 } else { 120 };
            let rate = u64::from(per_minute) / 60 * seconds / 2;
            let per_second = u64::from(per_minute) / 20;
            let demand = [1, 2, 3].map(|seed| Demand::Random(per_second, seed));
            let counted = brokers_asked(limit, demand, 10 * SECOND, seconds);
            let total: u64 = counted.iter().sum();
            let most = rate + 3 * u64::from(burst);
            assert!(
                (rate * 95 / 100..=most).contains(&total),
                "{per_minute} a minute: {counted:?}, the rate {rate}"
            );
            // A third each; at a call or two a second, a share sees one call or none, and the
            // parts are rougher: nobody is left out.
            let fair = if per_minute >= 600 { 27..=40 } else { 15..=50 };
            for part in counted {
                assert!(
                    fair.contains(&(part * 100 / rate)),
                    "{per_minute} a minute: {counted:?}, the rate {rate}"
                );
            }
        }
    }

    /// Brokers asked unequally share the rate in proportion to what each was asked; under the
    /// rate every call passes.
    #[test]
    fn brokers_share_a_rate_by_demand_and_admit_everything_under_it() {
        let limit = HUNDRED_A_SECOND;
        let seconds = 60;
        let rate = 100 * seconds / 2;
        let counted = brokers_sharing(limit, [50, 100, 300], 10 * SECOND, seconds);
        let total: u64 = counted.iter().sum();
        assert!(
            (rate * 95 / 100..=rate * 105 / 100).contains(&total),
            "{counted:?}"
        );
        for (part, share) in counted.iter().zip([50, 100, 300]) {
            let fair = rate * share / 450;
            assert!(
                (fair * 80 / 100..=fair * 120 / 100).contains(part),
                "{counted:?}"
            );
        }
        // 90 a second in all, under the rate: everything.
        let counted = brokers_sharing(limit, [20, 30, 40], 10 * SECOND, seconds);
        for (part, asked) in counted.iter().zip([20, 30, 40]) {
            assert!(part.abs_diff(asked * seconds / 2) <= 2, "{counted:?}");
        }
    }
}
