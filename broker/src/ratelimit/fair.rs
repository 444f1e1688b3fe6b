//! What a broker's cell of one participant is charged at a share of the brokers' counts: the
//! rate between the brokers, and, over it, each broker's fair part of it.
//!
//! Under its rate a participant's calls go through whichever broker they reach, and each broker
//! charges the calls the others admitted to its own cell: a burst spent through two brokers is
//! spent for the third. Over its rate that alone is not fair: each broker takes the others'
//! calls late, at its own moment, their counts drift apart, and one broker could admit nearly
//! all of the rate while another refused every call (docs/cluster.md). So, once some call was
//! refused anywhere since the last share, each broker charges its cell at least the others'
//! part of the time elapsed, in proportion to the calls each was asked (admitted or refused):
//! one that admits more than its part is held to it, which frees the others' parts, and over a
//! sustained overload each broker admits the rate times its part of the demand. The others'
//! admitted calls are still charged when more (bursts spent together are spent once).

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
    /// Some call refused: the calls the other brokers admitted or, when more, their part of
    /// the time elapsed, in nanoseconds of the sustained rate.
    Share {
        /// The calls the other brokers admitted.
        admitted: u64,
        /// Their part of the time elapsed.
        nanos: u64,
    },
}

/// What a broker's cell takes at a share, from `theirs` (the other brokers' calls since its
/// last read), `mine` (its own since its last share) and the time `elapsed` since then.
pub fn charge(theirs: Calls, mine: Calls, elapsed: Duration) -> Charge {
    let asked = u128::from(theirs.demand()) + u128::from(mine.demand());
    let admitted = u128::from(theirs.admitted) + u128::from(mine.admitted);
    if asked <= admitted || theirs.demand() == 0 {
        return Charge::Admitted(theirs.admitted);
    }
    let part = elapsed
        .as_nanos()
        .saturating_mul(u128::from(theirs.demand()))
        / asked;
    Charge::Share {
        admitted: theirs.admitted,
        nanos: u64::try_from(part).unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gcra::Cell;
    use crate::registry::RateLimit;

    const SECOND: u64 = 1_000_000_000;

    fn calls(asked: u64, admitted: u64) -> Calls {
        Calls { asked, admitted }
    }

    #[test]
    fn the_charge_is_the_others_calls_under_the_rate_and_their_part_over_it() {
        let ms = Duration::from_millis;
        // (theirs, mine, elapsed, charge)
        let cases = [
            // Nothing refused: what the others admitted, whatever the time.
            (calls(5, 5), calls(3, 3), ms(200), Charge::Admitted(5)),
            (calls(0, 0), calls(0, 0), ms(200), Charge::Admitted(0)),
            // Refused here only, nobody else asked: nothing to charge.
            (calls(0, 0), calls(9, 4), ms(200), Charge::Admitted(0)),
            // Refused somewhere: the others' part of the demand, of the time elapsed.
            (
                calls(30, 10),
                calls(10, 10),
                ms(200),
                Charge::Share {
                    admitted: 10,
                    nanos: 150_000_000,
                },
            ),
            (
                calls(10, 10),
                calls(30, 3),
                ms(200),
                Charge::Share {
                    admitted: 10,
                    nanos: 50_000_000,
                },
            ),
            // A broker that counts no refusals asked what it admitted.
            (
                calls(0, 20),
                calls(20, 5),
                ms(100),
                Charge::Share {
                    admitted: 20,
                    nanos: 50_000_000,
                },
            ),
        ];
        for (theirs, mine, elapsed, want) in cases {
            assert_eq!(charge(theirs, mine, elapsed), want, "{theirs:?} {mine:?}");
        }
        // No overflow.
        assert!(matches!(
            charge(calls(u64::MAX, 0), calls(u64::MAX, 0), Duration::MAX),
            Charge::Share { nanos, .. } if nanos > u64::MAX / 4
        ));
    }

    /// How a broker is asked calls.
    #[derive(Clone, Copy)]
    enum Demand {
        /// This many a second, evenly.
        Steady(u64),
        /// This many at once (a millisecond apart), every this many seconds.
        Bursts(u64, u64),
    }

    impl Demand {
        /// The first call, for broker `b` of three.
        fn first(self, b: u64) -> u64 {
            match self {
                Demand::Steady(n) => b * SECOND / n / 3,
                Demand::Bursts(..) => b * 1_000_000 / 3,
            }
        }

        /// The call after the `n`th (from 1), asked at `at`.
        fn next(self, n: u64, at: u64) -> u64 {
            match self {
                Demand::Steady(per_second) => at + SECOND / per_second,
                Demand::Bursts(calls, _) if !n.is_multiple_of(calls) => at + 1_000_000,
                Demand::Bursts(calls, every) => at + every * SECOND - (calls - 1) * 1_000_000,
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
                match charge(theirs, mine, Duration::from_nanos(now - at)) {
                    Charge::Admitted(n) => cells[b].charge(n, now),
                    Charge::Share { admitted, nanos } => {
                        cells[b].charge_share(admitted, nanos, now)
                    }
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
        let limit = RateLimit {
            per_minute: 6_000,
            burst: 20,
        };
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

    /// Brokers asked unequally share the rate in proportion to what each was asked; under the
    /// rate every call passes.
    #[test]
    fn brokers_share_a_rate_by_demand_and_admit_everything_under_it() {
        let limit = RateLimit {
            per_minute: 6_000,
            burst: 20,
        };
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
