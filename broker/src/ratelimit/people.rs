//! The harvesting alarm's count: the distinct people each habilitation was used for in a
//! minute (of the wall clock, the same for every broker), by this broker exactly and, on a
//! cluster, by the others as they share them: sketches of bits (linear counting), which merge
//! whatever broker saw a person and name nobody.

use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};
use unefois_store::limits::{PeopleSeen, SKETCH_BYTES};

const WORDS: usize = SKETCH_BYTES / 8;
const BITS: usize = SKETCH_BYTES * 8;

/// People as the bits their pseudonyms' hashes set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sketch([u64; WORDS]);

impl Default for Sketch {
    fn default() -> Sketch {
        Sketch([0; WORDS])
    }
}

impl Sketch {
    /// Sets `subject`'s bit; whether it was not set.
    pub fn insert(&mut self, subject: &str) -> bool {
        let hash = Sha256::digest(subject.as_bytes());
        let bit = usize::from(u16::from_le_bytes([hash[0], hash[1]])) % BITS;
        let (word, mask) = (bit / 64, 1u64 << (bit % 64));
        let new = self.0[word] & mask == 0;
        self.0[word] |= mask;
        new
    }

    /// The people of both.
    pub fn union(&self, other: &Sketch) -> Sketch {
        let mut out = self.clone();
        for (a, b) in out.0.iter_mut().zip(other.0.iter()) {
            *a |= b;
        }
        out
    }

    /// How many people, estimated from the bits still clear (within a few percent up to tens
    /// of thousands; saturated beyond).
    pub fn count(&self) -> f64 {
        estimate(self.0.iter().map(|w| w.count_ones()).sum())
    }

    /// How many people in both together, as [`Sketch::count`] of their union.
    pub fn count_with(&self, other: &Sketch) -> f64 {
        estimate(
            self.0
                .iter()
                .zip(other.0.iter())
                .map(|(a, b)| (a | b).count_ones())
                .sum(),
        )
    }

    /// The bytes shared with the other brokers.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// A sketch shared by another broker; `None` when it is not one.
    pub fn from_bytes(bytes: &[u8]) -> Option<Sketch> {
        if bytes.len() != SKETCH_BYTES {
            return None;
        }
        let mut out = Sketch::default();
        for (w, chunk) in out.0.iter_mut().zip(bytes.chunks_exact(8)) {
            *w = u64::from_le_bytes(chunk.try_into().ok()?);
        }
        Some(out)
    }
}

/// Linear counting: the people that leave `set` of the sketch's bits set, most likely.
fn estimate(set: u32) -> f64 {
    let clear = BITS as f64 - f64::from(set);
    let bits = BITS as f64;
    if clear < 1.0 {
        return bits * bits.ln();
    }
    -bits * (clear / bits).ln()
}

/// A consumer's use of a habilitation in one minute.
type Key = (String, String, i64);

/// What is known of one habilitation's use in one minute.
#[derive(Default)]
struct Seen {
    /// The people this broker saw, exactly, up to one more than the limit.
    subjects: HashSet<String>,
    /// The same, as this broker shares them.
    mine: Sketch,
    /// What the other brokers shared, by broker, and all of them together.
    others: HashMap<String, Sketch>,
    others_union: Option<Sketch>,
    /// The limit this broker applies (known once it saw the habilitation used).
    limit: Option<u32>,
    /// Whether this broker raised the alarm for this minute (recorded, or being recorded).
    alarmed: bool,
    /// Whether its record is being appended: not shared until it is, so that no other broker
    /// counts on an alarm this broker may have to take back.
    recording: bool,
    /// Whether another broker raised it.
    alarmed_elsewhere: bool,
    /// Changes to share, and how many of them were shared.
    changes: u64,
    shared: u64,
}

impl Seen {
    /// The people seen by any broker: this broker's exactly, plus what the others' sketches
    /// add to its own.
    fn count(&self) -> usize {
        let exact = self.subjects.len();
        let Some(others) = &self.others_union else {
            return exact;
        };
        let added = self.mine.count_with(others) - self.mine.count();
        exact + added.max(0.0).round() as usize
    }

    /// Raises the alarm once when the count exceeds the limit; the count then.
    fn alarm(&mut self) -> Option<usize> {
        let limit = self.limit?;
        if self.alarmed || self.alarmed_elsewhere {
            return None;
        }
        let count = self.count();
        if count <= limit as usize {
            return None;
        }
        self.alarmed = true;
        self.recording = true;
        Some(count)
    }
}

/// A harvesting alarm to record.
#[derive(Debug, PartialEq, Eq)]
pub struct Alarm {
    pub consumer: String,
    pub habilitation: String,
    pub distinct: usize,
    pub limit: u32,
    /// The minute it is raised for (Unix seconds / 60).
    pub minute: i64,
}

impl Alarm {
    fn key(&self) -> Key {
        (
            self.consumer.clone(),
            self.habilitation.clone(),
            self.minute,
        )
    }
}

/// The people seen this minute and the minute before (whose sketches other brokers may still
/// be sharing), per consumer and habilitation.
#[derive(Default)]
pub struct People {
    seen: HashMap<Key, Seen>,
    /// The newest minute seen.
    minute: i64,
}

impl People {
    /// Forgets the minutes before the previous one, once a minute; and those after this one
    /// when the clock was set back (an NTP step after a clock set ahead), which would
    /// otherwise stay until the clock caught up with them.
    fn roll(&mut self, minute: i64) {
        if minute > self.minute {
            self.minute = minute;
            self.seen.retain(|(_, _, m), _| *m >= minute - 1);
        } else if minute < self.minute - 1 {
            self.minute = minute;
            self.seen
                .retain(|(_, _, m), _| *m >= minute - 1 && *m <= minute);
        }
    }

    /// Notes that `consumer` read `subject` under `habilitation` in `minute`; the number of
    /// distinct people the first time it exceeds `limit` in that minute.
    pub fn observe(
        &mut self,
        consumer: &str,
        habilitation: &str,
        subject: &str,
        limit: u32,
        minute: i64,
    ) -> Option<usize> {
        self.roll(minute);
        let seen = self
            .seen
            .entry((consumer.to_string(), habilitation.to_string(), minute))
            .or_default();
        seen.limit = Some(limit);
        // Bounded: past the limit, the alarm is raised and no more subjects are kept.
        if seen.subjects.len() <= limit as usize && seen.subjects.insert(subject.to_string()) {
            // Only the other brokers read the sketch.
            if seen.mine.insert(subject) {
                seen.changes += 1;
            }
        }
        seen.alarm()
    }

    /// Notes that `alarm` was recorded: the other brokers are told at the next share, and do
    /// not raise it again.
    pub fn recorded(&mut self, alarm: &Alarm) {
        if let Some(seen) = self.seen.get_mut(&alarm.key()) {
            seen.recording = false;
            seen.changes += 1;
        }
    }

    /// Takes back `alarm`, whose record could not be appended: raised again by the next person
    /// seen (or the next share) within its minute, rather than lost for that minute, unless
    /// another broker raised it meanwhile.
    pub fn unrecorded(&mut self, alarm: &Alarm) {
        if let Some(seen) = self.seen.get_mut(&alarm.key()) {
            seen.alarmed = false;
            seen.recording = false;
        }
    }

    /// What changed since the last share, as `broker` shares it, with the changes' marks.
    pub fn to_share(&self, broker: &str) -> (Vec<PeopleSeen>, Vec<u64>) {
        self.seen
            .iter()
            .filter(|(_, s)| s.changes > s.shared)
            .map(|((consumer, habilitation, minute), s)| {
                let row = PeopleSeen {
                    broker: broker.to_string(),
                    consumer: consumer.clone(),
                    habilitation: habilitation.clone(),
                    minute: *minute,
                    sketch: s.mine.to_bytes(),
                    alarmed: s.alarmed && !s.recording,
                };
                (row, s.changes)
            })
            .unzip()
    }

    /// Marks what a share took, as [`People::to_share`] gave it.
    pub fn shared(&mut self, rows: &[PeopleSeen], marks: &[u64]) {
        for (row, changes) in rows.iter().zip(marks) {
            let key = (row.consumer.clone(), row.habilitation.clone(), row.minute);
            if let Some(s) = self.seen.get_mut(&key) {
                s.shared = s.shared.max(*changes);
            }
        }
    }

    /// Takes the other brokers' people of `minute` and the minute before; the alarms they make
    /// this broker raise (only where it applies a limit: it saw the habilitation used).
    pub fn merge(&mut self, rows: Vec<PeopleSeen>, minute: i64) -> Vec<Alarm> {
        self.roll(minute);
        let mut touched = HashSet::new();
        for row in rows {
            if row.minute < minute - 1 || row.minute > minute + 1 {
                continue;
            }
            let Some(sketch) = Sketch::from_bytes(&row.sketch) else {
                continue;
            };
            let key = (row.consumer, row.habilitation, row.minute);
            let seen = self.seen.entry(key.clone()).or_default();
            seen.alarmed_elsewhere |= row.alarmed;
            seen.others.insert(row.broker, sketch);
            touched.insert(key);
        }
        let mut alarms = Vec::new();
        for key in touched {
            let Some(seen) = self.seen.get_mut(&key) else {
                continue;
            };
            seen.others_union = seen.others.values().fold(None, |acc, s| {
                Some(acc.map_or_else(|| s.clone(), |a: Sketch| a.union(s)))
            });
            if let Some(distinct) = seen.alarm() {
                alarms.push(Alarm {
                    consumer: key.0.clone(),
                    habilitation: key.1.clone(),
                    distinct,
                    limit: seen.limit.unwrap_or_default(),
                    minute: key.2,
                });
            }
        }
        alarms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn people(n: usize, prefix: &str) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    fn sketch_of(subjects: &[String]) -> Sketch {
        let mut s = Sketch::default();
        for p in subjects {
            s.insert(p);
        }
        s
    }

    #[test]
    fn a_sketch_counts_within_a_few_percent_and_survives_its_bytes() {
        for n in [1, 10, 120, 1_000, 10_000, 30_000] {
            let s = sketch_of(&people(n, "p"));
            let count = s.count();
            let error = (count - n as f64).abs() / n as f64;
            assert!(error < 0.05, "{n} counted {count}");
            assert_eq!(Sketch::from_bytes(&s.to_bytes()), Some(s));
        }
        assert_eq!(Sketch::default().count(), 0.0);
        assert_eq!(Sketch::from_bytes(&[0; 12]), None);
    }

    #[test]
    fn one_broker_counts_exactly_and_alarms_once_a_minute() {
        let mut p = People::default();
        for s in ["a", "a", "b"] {
            assert_eq!(p.observe("ccas", "h", s, 2, 10), None);
        }
        assert_eq!(p.observe("ccas", "h", "c", 2, 10), Some(3));
        assert_eq!(p.observe("ccas", "h", "d", 2, 10), None);
        // Another habilitation, another minute: counted apart.
        assert_eq!(p.observe("ccas", "other", "c", 2, 10), None);
        for s in ["a", "b"] {
            assert_eq!(p.observe("ccas", "h", s, 2, 11), None);
        }
        assert_eq!(p.observe("ccas", "h", "c", 2, 11), Some(3));
    }

    /// A clock set ahead, then back: the minutes ahead are forgotten, not kept until the clock
    /// catches up with them (each a sketch and up to `limit` pseudonyms).
    #[test]
    fn a_clock_set_back_forgets_the_minutes_ahead() {
        let mut p = People::default();
        p.observe("ccas", "h", "a", 5, 1_000_000);
        for minute in 0..1000 {
            p.observe("ccas", "h", "a", 5, minute);
        }
        assert!(p.seen.len() <= 2, "{} minutes kept", p.seen.len());
    }

    /// Each broker sees `n` people of its own and `shared` people every broker saw.
    fn brokers(count: usize, own: usize, shared: usize, limit: u32) -> Vec<Vec<Alarm>> {
        let mut brokers: Vec<People> = (0..count).map(|_| People::default()).collect();
        let mut raised: Vec<Vec<Alarm>> = Vec::new();
        for (i, b) in brokers.iter_mut().enumerate() {
            let mut mine = Vec::new();
            for s in people(own, &format!("b{i}-"))
                .iter()
                .chain(&people(shared, "all-"))
            {
                if let Some(distinct) = b.observe("ccas", "h", s, limit, 7) {
                    mine.push(Alarm {
                        consumer: "ccas".into(),
                        habilitation: "h".into(),
                        distinct,
                        limit,
                        minute: 7,
                    });
                }
            }
            raised.push(mine);
        }
        let rows: Vec<Vec<PeopleSeen>> = brokers
            .iter()
            .enumerate()
            .map(|(i, b)| b.to_share(&format!("b{i}")).0)
            .collect();
        for (i, b) in brokers.iter_mut().enumerate() {
            let others = rows
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .flat_map(|(_, r)| r.clone())
                .collect();
            raised[i].extend(b.merge(others, 7));
        }
        raised
    }

    #[test]
    fn brokers_that_each_saw_fewer_than_the_limit_raise_it_together() {
        // Three brokers, 50 people each: 150 against 120, none over alone.
        let raised = brokers(3, 50, 0, 120);
        let alarms: Vec<&Alarm> = raised.iter().flatten().collect();
        assert!(!alarms.is_empty(), "no broker raised the alarm");
        for a in alarms {
            assert!((145..=155).contains(&a.distinct), "{a:?}");
        }
    }

    #[test]
    fn people_every_broker_saw_count_once() {
        // 100 people read through each of three brokers: 100, under 120.
        assert!(brokers(3, 0, 100, 120).iter().all(Vec::is_empty));
        // 40 of their own each and 60 in common: 180.
        assert!(brokers(3, 40, 60, 120).iter().any(|a| !a.is_empty()));
    }

    #[test]
    fn an_alarm_raised_elsewhere_is_not_raised_again() {
        let mut a = People::default();
        let mut b = People::default();
        for s in people(3, "x") {
            a.observe("ccas", "h", &s, 2, 7);
        }
        a.recorded(&alarm(3));
        b.observe("ccas", "h", "y", 2, 7);
        let rows = a.to_share("a").0;
        assert_eq!(b.merge(rows, 7), vec![]);
        assert_eq!(b.observe("ccas", "h", "z", 2, 7), None);
    }

    fn alarm(distinct: usize) -> Alarm {
        Alarm {
            consumer: "ccas".into(),
            habilitation: "h".into(),
            distinct,
            limit: 2,
            minute: 7,
        }
    }

    /// An alarm is shared once recorded. One whose record failed is taken back and raised again,
    /// unless another broker raised it meanwhile: taking it back undoes nothing of theirs.
    #[test]
    fn an_alarm_is_shared_once_recorded_or_taken_back() {
        let alarmed = |p: &People| p.to_share("a").0.iter().any(|r| r.alarmed);
        let mut a = People::default();
        let raised: Vec<_> = people(3, "x")
            .iter()
            .filter_map(|s| a.observe("ccas", "h", s, 2, 7))
            .collect();
        assert_eq!(raised, [3]);
        assert!(!alarmed(&a), "shared while its record is being appended");
        let (rows, marks) = a.to_share("a");
        a.shared(&rows, &marks);
        a.unrecorded(&alarm(3));
        assert_eq!(a.observe("ccas", "h", "x-next", 2, 7), Some(3));
        let (rows, marks) = a.to_share("a");
        a.shared(&rows, &marks);
        a.recorded(&alarm(3));
        assert!(alarmed(&a), "shared again once recorded");

        // Another broker raises it too, its record being appended when a's arrives, then fails.
        let mut b = People::default();
        for s in people(3, "y") {
            b.observe("ccas", "h", &s, 2, 7);
        }
        b.merge(a.to_share("a").0, 7);
        b.unrecorded(&alarm(3));
        assert_eq!(b.observe("ccas", "h", "y-next", 2, 7), None);
    }

    #[test]
    fn only_what_changed_is_shared_again() {
        let mut p = People::default();
        p.observe("ccas", "h", "a", 5, 7);
        let (rows, marks) = p.to_share("me");
        assert_eq!(rows.len(), 1);
        p.shared(&rows, &marks);
        assert!(p.to_share("me").0.is_empty());
        p.observe("ccas", "h", "a", 5, 7);
        assert!(
            p.to_share("me").0.is_empty(),
            "the same person changes nothing"
        );
        p.observe("ccas", "h", "b", 5, 7);
        assert_eq!(p.to_share("me").0.len(), 1);
        // Minutes before the previous one are forgotten.
        p.observe("ccas", "h", "a", 5, 9);
        assert!(p.to_share("me").0.iter().all(|r| r.minute == 9));
    }
}
