//! Rate limits per consumer, and the harvesting alarm, enforced by all the brokers of a store
//! together.
//!
//! A consumer over its declared rate gets RESOURCE_EXHAUSTED with a retry-after. Denials are
//! counted in memory and recorded once per consumer per window, with the count, so that a
//! flood cannot multiply disk writes. A consumer that reads more distinct people per minute
//! than its habilitation allows raises one alarm entry per minute.
//!
//! On a cluster each broker decides alone, at once, and shares its counts through the store
//! every [`SHARE_EVERY`] ([`RateLimits::share`]): the calls the others admitted are charged to
//! its own cells (over the rate, at least the others' part of it, by the calls each was asked:
//! `fair`), and the people they saw are added to its counts. Between two shares the brokers
//! together may admit up to one burst each, and a harvester be seen a little late.
//! What each broker owes the providers (provider_gate.rs) is shared the same way: the calls
//! the others sent a provider are charged to its gate here, and a provider's request to wait
//! holds every broker's calls.

mod fair;
mod people;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use time::OffsetDateTime;
use unefois_store::limits::{CallsAdmitted, LimitUse, ProviderUse};
use unefois_store::{Store, StoreError};

use crate::provider_gate::{ProviderGate, ProviderOwed, unix_micros};
use crate::registry::Registry;
pub use people::Alarm;

/// The length of a counting window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// How often a broker shares its counts with the other brokers of its store.
pub const SHARE_EVERY: Duration = Duration::from_millis(200);
/// How often a broker shares all its counts, changed or not.
const SHARE_ALL_EVERY: Duration = Duration::from_secs(60);
/// How long the counts of a broker not heard from are kept (it stopped, or restarted under a
/// new id): longer than [`SHARE_ALL_EVERY`].
const FORGET_BROKER_AFTER: Duration = Duration::from_secs(600);
/// Reads of the others' counts this far apart are a new start (see `Shares::admitted_since`).
const READS_RESUMED_AFTER: Duration = Duration::from_secs(10);
/// How far the brokers' clocks may differ, for when a broker started.
const CLOCKS_SKEW: Duration = Duration::from_secs(2);

/// When the broker of id `broker` started: the time in its UUID v7.
fn started_at(broker: &str) -> Option<SystemTime> {
    let (seconds, nanos) = uuid::Uuid::parse_str(broker)
        .ok()?
        .get_timestamp()?
        .to_unix();
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
}

/// The limiter of every participant of `registry`, reusing those of `kept` whose limit is the
/// same; each with its counts of calls from `counts` (kept for participants removed then added
/// again: the other brokers know the counts they last read).
fn limiters(
    registry: &Registry,
    kept: &HashMap<String, Limiter>,
    counts: &mut HashMap<String, Arc<Counts>>,
) -> HashMap<String, Limiter> {
    let mut out = HashMap::new();
    // Every participant is limited: by its own rate, or by the federation's default.
    for p in registry.participants() {
        let limit = registry.rate_limit_of(p);
        let before = kept.get(&p.id);
        let cell = match before.filter(|k| k.limit == limit) {
            Some(same) => same.cell.clone(),
            None => crate::gcra::Cell::new(limit).map(Arc::new),
        };
        let counts = counts.entry(p.id.clone()).or_default().clone();
        out.insert(
            p.id.clone(),
            Limiter {
                limit,
                cell,
                counts,
            },
        );
    }
    out
}

/// The limit of every participant (its own, or the federation's default).
pub struct RateLimits {
    /// Swapped whole on reload; a participant whose limit did not change keeps its limiter.
    limiters: arc_swap::ArcSwap<HashMap<String, Limiter>>,
    /// The clock of the cells.
    epoch: Instant,
    denied: Mutex<HashMap<String, u64>>,
    people: Mutex<people::People>,
    /// Every participant's counts of calls, including those no longer registered.
    counts: Mutex<HashMap<String, Arc<Counts>>>,
    /// This broker's id in what it shares (a new one at each start: a UUID v7, which says when).
    id: String,
    /// What this broker and the others shared so far.
    shares: Mutex<Shares>,
    /// What this broker owes each provider since it started, kept across reloads.
    owed: Mutex<HashMap<String, Arc<ProviderOwed>>>,
}

/// One participant's limiter, with the limit it enforces.
struct Limiter {
    limit: crate::registry::RateLimit,
    /// `None`: not limited (a rate or burst of 0).
    cell: Option<Arc<crate::gcra::Cell>>,
    /// The calls this broker admitted and was asked since it started, for the other brokers.
    counts: Arc<Counts>,
}

/// The calls of one participant this broker admitted since it started, and refused: two
/// counts that each only grow, so that a read between a call's two counts never shows a
/// refusal that was not.
#[derive(Default)]
struct Counts {
    admitted: AtomicU64,
    refused: AtomicU64,
}

impl Counts {
    fn read(&self) -> fair::Calls {
        let admitted = self.admitted.load(Ordering::Relaxed);
        let refused = self.refused.load(Ordering::Relaxed);
        fair::Calls {
            asked: admitted.saturating_add(refused),
            admitted,
        }
    }
}

/// The counts shared: this broker's, as last written, and the others', as last read.
#[derive(Default)]
struct Shares {
    /// Calls asked and admitted per participant, as this broker last shared them.
    mine: HashMap<String, fair::Calls>,
    /// Calls asked and admitted per participant at this broker's last share, and when: what
    /// it did since is its part of the demand.
    charged: HashMap<String, fair::Calls>,
    charged_at: Option<Instant>,
    /// Over the rate, what the others' parts left unused, per participant (`fair::charge`).
    unused: HashMap<String, u64>,
    /// Calls sent and wait asked per provider, as this broker last shared them.
    mine_owed: HashMap<String, (u64, i64)>,
    /// When this broker last shared every count, changed or not: a broker whose counts do not
    /// change stays heard of, and its rows stay in the store.
    all_shared_at: Option<Instant>,
    /// The calls the other brokers admitted, per participant.
    admitted: Heard,
    /// The calls the other brokers sent, per provider.
    sent: Heard,
    /// The end of each wait a provider asked of another broker, per broker and provider, as
    /// that broker wrote it, and when it was first read (both microseconds since 1970): held
    /// once, not at each share that reads it again; one broker's wait, or its clock, never
    /// hides another's.
    held: HashMap<(String, String), (i64, i64)>,
}

/// One kind of the other brokers' counts (calls admitted per participant, or sent per
/// provider), as last read.
#[derive(Default)]
struct Heard {
    /// Calls per other broker and participant (or provider), as last read.
    theirs: HashMap<(String, String), fair::Calls>,
    /// The other brokers heard from, and when last.
    brokers: HashMap<String, Instant>,
    /// When this broker last read the others' counts (its monotonic and wall clocks).
    read_at: Option<(Instant, SystemTime)>,
}

impl Shares {
    /// The latest end, per provider, of the waits `rows` (the other brokers') asked that this
    /// broker has not held yet and that end after `wall` (microseconds since 1970), each
    /// capped at the longest cool-down from now: a broker's clock ahead, or a row written by
    /// hand, holds the calls that long, again every [`FORGET_BROKER_AFTER`] while the row
    /// still says so, and hides no later wait of another broker. A wait is forgotten once
    /// ended, or that long after it was first read.
    fn newer_waits(&mut self, rows: &[ProviderUse], wall: i64) -> HashMap<String, i64> {
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        let most = wall.saturating_add(micros(crate::provider_gate::MAX_COOL_DOWN));
        let forget = wall.saturating_sub(micros(FORGET_BROKER_AFTER));
        self.held
            .retain(|_, (until, seen)| *until > wall && *seen > forget);
        let mut newer: HashMap<String, i64> = HashMap::new();
        for row in rows.iter().filter(|r| r.held_until > wall) {
            let key = (row.broker.clone(), row.provider.clone());
            if self
                .held
                .get(&key)
                .is_none_or(|&(was, _)| row.held_until > was)
            {
                self.held.insert(key, (row.held_until, wall));
                let latest = newer.entry(row.provider.clone()).or_default();
                *latest = (*latest).max(row.held_until.min(most));
            }
        }
        newer
    }

    /// Whether every count is to be shared again, changed or not.
    fn share_all(&mut self, now: Instant) -> bool {
        if self
            .all_shared_at
            .is_some_and(|at| now.duration_since(at) < SHARE_ALL_EVERY)
        {
            return false;
        }
        self.all_shared_at = Some(now);
        self.mine.clear();
        self.mine_owed.clear();
        true
    }
}

impl Heard {
    /// The calls of each participant the other brokers were asked and admitted since the last
    /// read, `now` (and `wall`, the same on the wall clock). What a broker counted before this
    /// broker knew it is history, not charged: at the first read, or after reads stopped for a
    /// while (the store unreachable: the calls of those minutes are past), every count read is;
    /// a broker heard of for the first time is new (all its calls charged) only if it started
    /// since the last read (its id says when), else history (this broker had forgotten it).
    fn admitted_since(
        &mut self,
        rows: Vec<CallsAdmitted>,
        now: Instant,
        wall: SystemTime,
    ) -> HashMap<String, fair::Calls> {
        let resumed = self
            .read_at
            .is_none_or(|(at, _)| now.duration_since(at) > READS_RESUMED_AFTER);
        let last_read = self.read_at.map(|(_, wall)| wall);
        self.read_at = Some((now, wall));
        let history: std::collections::HashSet<String> = rows
            .iter()
            .filter(|r| {
                resumed
                    || !self.brokers.contains_key(&r.broker)
                        && last_read
                            .zip(started_at(&r.broker))
                            .is_none_or(|(read, started)| started + CLOCKS_SKEW < read)
            })
            .map(|r| r.broker.clone())
            .collect();
        let mut out: HashMap<String, fair::Calls> = HashMap::new();
        for row in rows {
            self.brokers.insert(row.broker.clone(), now);
            let known = self
                .theirs
                .entry((row.broker.clone(), row.participant.clone()))
                .or_default();
            let since = fair::Calls {
                asked: row.asked.saturating_sub(known.asked),
                admitted: row.admitted.saturating_sub(known.admitted),
            };
            known.asked = known.asked.max(row.asked);
            known.admitted = known.admitted.max(row.admitted);
            if since != fair::Calls::default() && !history.contains(&row.broker) {
                let sum = out.entry(row.participant).or_default();
                sum.asked = sum.asked.saturating_add(since.asked);
                sum.admitted = sum.admitted.saturating_add(since.admitted);
            }
        }
        // Brokers not heard from for long are forgotten, with their counts.
        self.brokers
            .retain(|_, heard| now.duration_since(*heard) < FORGET_BROKER_AFTER);
        let brokers = &self.brokers;
        self.theirs.retain(|(b, _), _| brokers.contains_key(b));
        out
    }
}

/// Denials of one consumer over a window, to record.
#[derive(Debug, PartialEq, Eq)]
pub struct DeniedCount {
    /// The consumer.
    pub participant: String,
    /// How many calls were refused.
    pub count: u64,
}

/// The current minute of the wall clock, the same on every broker.
fn minute_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp().div_euclid(60)
}

impl RateLimits {
    /// The limits of the registry: each participant's own, or the federation's default.
    pub fn from_registry(registry: &Registry) -> RateLimits {
        let mut counts = HashMap::new();
        RateLimits {
            limiters: arc_swap::ArcSwap::from_pointee(limiters(
                registry,
                &HashMap::new(),
                &mut counts,
            )),
            counts: Mutex::new(counts),
            epoch: Instant::now(),
            denied: Mutex::new(HashMap::new()),
            people: Mutex::new(people::People::default()),
            id: uuid::Uuid::now_v7().to_string(),
            shares: Mutex::new(Shares::default()),
            owed: Mutex::new(HashMap::new()),
        }
    }

    /// What this broker owes `provider`: the count a gate of it (one per registry loaded)
    /// adds to, and the other brokers read.
    pub fn owed_to(&self, provider: &str) -> Arc<ProviderOwed> {
        match self.owed.lock() {
            Ok(mut owed) => owed.entry(provider.to_string()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    /// Applies a reloaded registry's limits: a participant added gets one at once, one whose
    /// limit is unchanged keeps what it has used of it.
    pub fn update(&self, registry: &Registry) {
        let kept = self.limiters.load();
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        self.limiters
            .store(Arc::new(limiters(registry, &kept, &mut counts)));
    }

    /// The cells' clock now.
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Admits a call of `consumer`, or says when to retry (and counts the denial).
    pub fn check(&self, consumer: &str) -> Result<(), Duration> {
        let limiters = self.limiters.load();
        let Some(limiter) = limiters.get(consumer) else {
            return Ok(());
        };
        let admitted = match &limiter.cell {
            None => Ok(()),
            Some(cell) => cell.check(self.now()),
        };
        match admitted {
            Ok(()) => {
                limiter.counts.admitted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(wait) => {
                limiter.counts.refused.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut denied) = self.denied.lock() {
                    *denied.entry(consumer.to_string()).or_default() += 1;
                }
                Err(wait)
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

    /// Puts back denials [`Limits::take_denied`] took whose record could not be appended: they
    /// go in the next window's record, rather than nowhere.
    pub fn restore_denied(&self, counts: Vec<DeniedCount>) {
        let Ok(mut denied) = self.denied.lock() else {
            return;
        };
        for d in counts {
            let count = denied.entry(d.participant).or_default();
            *count = count.saturating_add(d.count);
        }
    }

    /// Notes that `consumer` read `subject` (a pseudonym) under `habilitation`; returns the
    /// alarm, with the number of distinct subjects as far as this broker knows, the first time
    /// it exceeds `limit` in the current minute.
    pub fn observe(
        &self,
        consumer: &str,
        habilitation: &str,
        subject: &str,
        limit: u32,
    ) -> Option<Alarm> {
        let minute = minute_now();
        let distinct =
            self.people
                .lock()
                .ok()?
                .observe(consumer, habilitation, subject, limit, minute)?;
        Some(Alarm {
            consumer: consumer.to_string(),
            habilitation: habilitation.to_string(),
            distinct,
            limit,
            minute,
        })
    }

    /// Notes that `alarm` was recorded: shared with the other brokers from now on.
    pub fn alarm_recorded(&self, alarm: &Alarm) {
        if let Ok(mut people) = self.people.lock() {
            people.recorded(alarm);
        }
    }

    /// Takes back `alarm`, whose record could not be appended: raised again within its minute.
    pub fn alarm_unrecorded(&self, alarm: &Alarm) {
        if let Ok(mut people) = self.people.lock() {
            people.unrecorded(alarm);
        }
    }

    /// Shares this broker's counts with the other brokers of `store` and takes theirs: the
    /// calls they admitted are charged to this broker's cells, the calls they sent a provider
    /// to its gate among `gates` (those in force once their counts are read: a reload during
    /// the share's round trip must not leave them to gates no call goes through), and a
    /// provider's request to wait holds its calls here too. Returns the harvesting alarms their
    /// people make this broker raise, or `None` when `store` has no other broker (the embedded
    /// backend): there is nothing to share, now or later.
    pub async fn share(
        &self,
        store: &dyn Store,
        gates: impl FnOnce() -> Vec<Arc<ProviderGate>>,
    ) -> Result<Option<Vec<Alarm>>, StoreError> {
        let limiters = self.limiters.load_full();
        let owed: Vec<(String, (u64, i64))> = self
            .owed
            .lock()
            .map_err(|_| poisoned())?
            .iter()
            .map(|(provider, owed)| (provider.clone(), owed.read()))
            .collect();
        let (calls, providers): (Vec<CallsAdmitted>, Vec<ProviderUse>) = {
            let mut shares = self.shares.lock().map_err(|_| poisoned())?;
            shares.share_all(Instant::now());
            let calls = limiters
                .iter()
                .filter_map(|(participant, l)| {
                    let counts = l.counts.read();
                    (shares.mine.get(participant) != Some(&counts)).then(|| CallsAdmitted {
                        broker: self.id.clone(),
                        participant: participant.clone(),
                        admitted: counts.admitted,
                        asked: counts.asked,
                    })
                })
                .collect();
            let providers = owed
                .into_iter()
                .filter(|(provider, now)| shares.mine_owed.get(provider) != Some(now))
                .map(|(provider, (sent, held_until))| ProviderUse {
                    broker: self.id.clone(),
                    provider,
                    sent,
                    held_until,
                })
                .collect();
            (calls, providers)
        };
        let (people, marks) = self
            .people
            .lock()
            .map_err(|_| poisoned())?
            .to_share(&self.id);
        let mine = LimitUse {
            calls,
            people,
            providers,
        };
        let Some(theirs) = store.share_limits(&self.id, &mine).await? else {
            return Ok(None);
        };
        let minute = minute_now();
        let wall = unix_micros(SystemTime::now());
        let sent_rows = theirs
            .providers
            .iter()
            .cloned()
            .map(|p| CallsAdmitted {
                broker: p.broker,
                participant: p.provider,
                admitted: p.sent,
                asked: 0,
            })
            .collect();
        let (charges, sent, held) = {
            let mut shares = self.shares.lock().map_err(|_| poisoned())?;
            for c in &mine.calls {
                let shared = fair::Calls {
                    asked: c.asked,
                    admitted: c.admitted,
                };
                shares.mine.insert(c.participant.clone(), shared);
            }
            for p in &mine.providers {
                shares
                    .mine_owed
                    .insert(p.provider.clone(), (p.sent, p.held_until));
            }
            let held = shares.newer_waits(&theirs.providers, wall);
            let (now, wall) = (Instant::now(), SystemTime::now());
            let cells_now = self.now();
            let theirs = shares.admitted.admitted_since(theirs.calls, now, wall);
            // What each cell takes: the others' calls, or over the rate their part of the time
            // since this broker's last share, by what each was asked since.
            let elapsed = shares
                .charged_at
                .map_or(Duration::ZERO, |at| now.duration_since(at));
            shares.charged_at = Some(now);
            // A participant no longer registered is forgotten here (its counts are kept).
            shares.charged.retain(|p, _| limiters.contains_key(p));
            shares.unused.retain(|p, _| limiters.contains_key(p));
            let mut charges = Vec::new();
            for (participant, l) in limiters.iter() {
                let counts = l.counts.read();
                let before = shares
                    .charged
                    .insert(participant.clone(), counts)
                    .unwrap_or(counts);
                let mine = fair::Calls {
                    asked: counts.asked.saturating_sub(before.asked),
                    admitted: counts.admitted.saturating_sub(before.admitted),
                };
                let theirs = theirs.get(participant).copied().unwrap_or_default();
                if let Some(cell) = &l.cell {
                    let rate = fair::Rate {
                        interval: cell.interval(),
                        tolerance: cell.tolerance(),
                        owed: cell.owed(cells_now),
                    };
                    let unused = shares.unused.entry(participant.clone()).or_default();
                    let charge = fair::charge(theirs, mine, elapsed, rate, unused);
                    charges.push((cell.clone(), charge));
                }
            }
            let sent = shares.sent.admitted_since(sent_rows, now, wall);
            (charges, sent, held)
        };
        let now = self.now();
        for (cell, charge) in charges {
            match charge {
                fair::Charge::Admitted(calls) => cell.charge(calls, now),
                fair::Charge::Time(nanos) => cell.charge_time(nanos, now),
            }
        }
        for gate in gates() {
            if let Some(calls) = sent.get(gate.provider()) {
                gate.charge(calls.admitted);
            }
            if let Some(&until) = held.get(gate.provider())
                && until > wall
            {
                gate.hold_as_asked_elsewhere(Duration::from_micros(until.abs_diff(wall)));
            }
        }
        let mut seen = self.people.lock().map_err(|_| poisoned())?;
        seen.shared(&mine.people, &marks);
        Ok(Some(seen.merge(theirs.people, minute)))
    }
}

fn poisoned() -> StoreError {
    StoreError::Database("the limits' counts are unusable (a thread panicked)".into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Denials whose record could not be appended are put back, and recorded with the next
    /// window's rather than lost.
    #[test]
    fn denials_whose_record_failed_are_put_back() {
        let registry = crate::registry::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/registry.toml"
        )))
        .unwrap();
        let limits = RateLimits::from_registry(&registry);
        limits.denied.lock().unwrap().insert("ccas-lyon".into(), 3);
        let taken = limits.take_denied();
        assert!(limits.take_denied().is_empty());
        limits.restore_denied(taken);
        *limits
            .denied
            .lock()
            .unwrap()
            .entry("ccas-lyon".into())
            .or_default() += 2;
        assert_eq!(
            limits.take_denied(),
            [DeniedCount {
                participant: "ccas-lyon".into(),
                count: 5
            }]
        );
    }

    fn row(broker: &str, participant: &str, admitted: u64) -> CallsAdmitted {
        CallsAdmitted {
            broker: broker.into(),
            participant: participant.into(),
            admitted,
            asked: admitted * 2,
        }
    }

    /// `admitted` calls of `admitted * 2` asked.
    fn calls(admitted: u64) -> fair::Calls {
        fair::Calls {
            asked: admitted * 2,
            admitted,
        }
    }

    /// A broker's id, as started `ago` before `wall`.
    fn id_started(wall: SystemTime, ago: Duration) -> String {
        let started = wall - ago;
        let since = started
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970");
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, since.as_secs(), since.subsec_nanos());
        uuid::Uuid::new_v7(ts).to_string()
    }

    #[test]
    fn the_others_calls_are_charged_once_from_when_they_are_first_heard_of() {
        let mut s = Heard::default();
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let at = |ms| {
            (
                t0 + Duration::from_millis(ms),
                w0 + Duration::from_millis(ms),
            )
        };
        let mut read = |rows, (now, wall)| s.admitted_since(rows, now, wall);
        let old = id_started(w0, Duration::from_secs(3_600));
        let b = old.as_str();
        // The first read: what the brokers admitted before is history.
        assert!(read(vec![row(b, "ccas", 40)], at(0)).is_empty());
        // Then what they admitted since, over every broker; a row read again adds nothing.
        let since = read(
            vec![row(b, "ccas", 45), row(b, "caf", 3), row(b, "ccas", 45)],
            at(200),
        );
        assert_eq!(
            since,
            HashMap::from([("ccas".into(), calls(5)), ("caf".into(), calls(3))])
        );
        // A broker started since the last read: all it admitted is new. One started long
        // before (forgotten, or missed): history.
        let new = id_started(w0, Duration::ZERO);
        let forgotten = id_started(w0, Duration::from_secs(7_200));
        let since = read(
            vec![
                row(&new, "ccas", 9),
                row(b, "ccas", 47),
                row(&forgotten, "ccas", 1_000),
                row("not-a-uuid", "ccas", 1_000),
            ],
            at(400),
        );
        assert_eq!(since, HashMap::from([("ccas".into(), calls(11))]));
        // A count that went back (the store keeps the greatest) charges nothing, and the
        // greatest stays the mark.
        assert!(read(vec![row(b, "ccas", 1)], at(600)).is_empty());
        let since = read(vec![row(b, "ccas", 48)], at(800));
        assert_eq!(since, HashMap::from([("ccas".into(), calls(1))]));
        // Reads resumed after a gap: what every broker admitted meanwhile is history.
        let gap = 800 + READS_RESUMED_AFTER.as_millis() as u64 + 1_000;
        let resumed = read(
            vec![
                row(b, "ccas", 900),
                row(&id_started(w0, Duration::ZERO), "ccas", 5),
            ],
            at(gap),
        );
        assert!(resumed.is_empty(), "{resumed:?}");
        let since = read(vec![row(b, "ccas", 901)], at(gap + 200));
        assert_eq!(since, HashMap::from([("ccas".into(), calls(1))]));
        // A broker not heard from for long is forgotten.
        let later = gap + 1_200 + FORGET_BROKER_AFTER.as_millis() as u64;
        read(vec![row(&new, "ccas", 9)], at(later));
        assert!(!s.brokers.contains_key(b) && s.brokers.contains_key(&new));
    }

    #[test]
    fn a_providers_wait_is_held_once_per_broker_and_capped() {
        let mut s = Shares::default();
        let wait = |broker: &str, held_until| ProviderUse {
            broker: broker.into(),
            provider: "dgfip".into(),
            sent: 0,
            held_until,
        };
        let second = 1_000_000;
        let wall = 1_000 * second;
        let most = wall + 300 * second;
        // One broker's clock far ahead (or a row written by hand): held, capped.
        let rows = [wait("a", i64::MAX), wait("b", wall + 10 * second)];
        assert_eq!(
            s.newer_waits(&rows, wall),
            HashMap::from([("dgfip".into(), most)])
        );
        // Read again: nothing new. A later wait of another broker is still held.
        assert!(s.newer_waits(&rows, wall).is_empty());
        let rows = [wait("a", i64::MAX), wait("b", wall + 20 * second)];
        assert_eq!(
            s.newer_waits(&rows, wall),
            HashMap::from([("dgfip".into(), wall + 20 * second)])
        );
        // A wait held is not held again while its row says the same; an ended one is
        // forgotten, and holds nothing when read again.
        let later = wall + 400 * second;
        assert!(s.newer_waits(&rows, later).is_empty());
        assert_eq!(s.held.len(), 1);
        // Ten minutes after it was first read, what a row still says is held again, capped.
        let much_later = wall + 700 * second;
        assert_eq!(
            s.newer_waits(&rows, much_later),
            HashMap::from([("dgfip".into(), much_later + 300 * second)])
        );
    }

    #[test]
    fn every_count_is_shared_again_once_a_minute() {
        let mut s = Shares::default();
        let t0 = Instant::now();
        assert!(s.share_all(t0));
        s.mine.insert("ccas".into(), calls(3));
        assert!(!s.share_all(t0 + Duration::from_secs(59)));
        assert_eq!(s.mine.len(), 1);
        assert!(s.share_all(t0 + SHARE_ALL_EVERY));
        assert!(s.mine.is_empty());
    }
}
