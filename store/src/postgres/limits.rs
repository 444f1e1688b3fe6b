//! The brokers' counts of their limits, shared ([`crate::Store::share_limits`]), in three
//! unlogged tables: writing them costs no WAL and no wait for a standby, and no standby keeps
//! them. A promoted standby starts them empty; each broker writes its counts again as they next
//! change (they are cumulative), and a participant may meanwhile get a few more calls once.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio_postgres::types::Type;

use super::connect::{Connector, Shared};
use super::db;
use super::sweep::Sweep;
use crate::StoreError;
use crate::limits::{CallsAdmitted, LimitUse, PeopleSeen, ProviderUse, SKETCH_BYTES};

/// The server's clock, in microseconds since 1970: when a row changed.
const NOW_MICROS: &str = "(extract(epoch FROM clock_timestamp()) * 1000000)::int8";
/// Rows changed this long before the newest one read are read again: a row is stamped before
/// its statement commits, so a reader may see a row stamped earlier than one it already read.
const OVERLAP_MICROS: i64 = 1_000_000;
/// How often every row is read, changed or not (Unix seconds): the stamps are the primary's
/// clock, which a failover or a clock set back may put behind the newest stamp read.
const READ_ALL_EVERY_SECONDS: i64 = 60;
/// The counts of a broker that stopped sharing them (stopped, or restarted under a new id) go
/// after this long.
const FORGET_AFTER_MICROS: i64 = 600_000_000;
/// How often a broker removes the counts no broker shares any more, at most (Unix seconds).
const FORGET_EVERY_SECONDS: i64 = 60;
/// This connection's session: nothing here waits for a standby (the tables are unlogged, and
/// a count lost costs a few calls, not a record), and no statement waits long.
/// The statements give up before the broker does (its `SHARE_TIMEOUT`, 2 s), so that a slow
/// database does not pile up shares the broker no longer waits for.
const SESSION: &str = "SET synchronous_commit = off; SET statement_timeout = '1500ms'";

/// What one read of the other brokers' counts saw.
struct ReadStamp {
    /// Whether it read every row (its newest stamp then replaces the one kept).
    all: bool,
    /// The newest change it read (the server's clock, microseconds).
    newest: i64,
}

/// A broker's side of the shared counts.
pub struct Limits {
    conn: Arc<Shared>,
    /// The newest change read from the other brokers (the server's clock, microseconds).
    newest: AtomicI64,
    /// When every row was last read (Unix seconds).
    read_all_at: AtomicI64,
    /// The counts nobody shares any more, removed.
    sweep: Sweep,
}

impl Limits {
    pub fn new(connector: Connector) -> Limits {
        let conn = Arc::new(Shared::with_setup(connector, SESSION));
        Limits {
            sweep: Sweep::new(
                conn.clone(),
                "forget the limits' counts nobody shares",
                FORGET_EVERY_SECONDS,
            ),
            conn,
            newest: AtomicI64::new(0),
            read_all_at: AtomicI64::new(0),
        }
    }

    /// Writes `mine` (broker `me`'s) and reads the other brokers' counts changed since the last
    /// read (the people of the minute before `now`'s on; `now` in Unix seconds).
    pub async fn share(&self, me: &str, mine: &LimitUse, now: i64) -> Result<LimitUse, StoreError> {
        let conn = self.conn.client().await?;
        let participants: Vec<&str> = mine.calls.iter().map(|c| c.participant.as_str()).collect();
        let admitted: Vec<i64> = mine
            .calls
            .iter()
            .map(|c| i64::try_from(c.admitted).unwrap_or(i64::MAX))
            .collect();
        let asked: Vec<i64> = mine
            .calls
            .iter()
            .map(|c| i64::try_from(c.asked).unwrap_or(i64::MAX))
            .collect();
        let consumers: Vec<&str> = mine.people.iter().map(|p| p.consumer.as_str()).collect();
        let habilitations: Vec<&str> = mine
            .people
            .iter()
            .map(|p| p.habilitation.as_str())
            .collect();
        let minutes: Vec<i64> = mine.people.iter().map(|p| p.minute).collect();
        let sketches: Vec<&[u8]> = mine.people.iter().map(|p| p.sketch.as_slice()).collect();
        let alarmed: Vec<bool> = mine.people.iter().map(|p| p.alarmed).collect();
        let providers: Vec<&str> = mine.providers.iter().map(|p| p.provider.as_str()).collect();
        let sent: Vec<i64> = mine
            .providers
            .iter()
            .map(|p| i64::try_from(p.sent).unwrap_or(i64::MAX))
            .collect();
        let held_until: Vec<i64> = mine.providers.iter().map(|p| p.held_until).collect();
        let calls = async {
            if participants.is_empty() {
                return Ok(());
            }
            conn.query_typed(
                &format!(
                    "INSERT INTO unefois_limit_calls AS c (participant, broker, admitted, asked, \
                     changed_at) \
                     SELECT p, $1, a, k, {NOW_MICROS} \
                     FROM unnest($2::text[], $3::int8[], $4::int8[]) AS t(p, a, k) \
                     ON CONFLICT (participant, broker) DO UPDATE \
                     SET admitted = greatest(c.admitted, excluded.admitted), \
                         asked = greatest(c.asked, excluded.asked), \
                         changed_at = excluded.changed_at"
                ),
                &[
                    (&me, Type::TEXT),
                    (&participants, Type::TEXT_ARRAY),
                    (&admitted, Type::INT8_ARRAY),
                    (&asked, Type::INT8_ARRAY),
                ],
            )
            .await
            .map(drop)
            .map_err(db("share the calls admitted"))
        };
        let people = async {
            if consumers.is_empty() {
                return Ok(());
            }
            conn.query_typed(
                &format!(
                    "INSERT INTO unefois_limit_people AS p (consumer, habilitation, minute, \
                     broker, sketch, alarmed, changed_at) \
                     SELECT c, h, m, $1, s, a, {NOW_MICROS} \
                     FROM unnest($2::text[], $3::text[], $4::int8[], $5::bytea[], $6::bool[]) \
                         AS t(c, h, m, s, a) \
                     ON CONFLICT (consumer, habilitation, minute, broker) DO UPDATE \
                     SET sketch = excluded.sketch, alarmed = p.alarmed OR excluded.alarmed, \
                         changed_at = excluded.changed_at"
                ),
                &[
                    (&me, Type::TEXT),
                    (&consumers, Type::TEXT_ARRAY),
                    (&habilitations, Type::TEXT_ARRAY),
                    (&minutes, Type::INT8_ARRAY),
                    (&sketches, Type::BYTEA_ARRAY),
                    (&alarmed, Type::BOOL_ARRAY),
                ],
            )
            .await
            .map(drop)
            .map_err(db("share the people seen"))
        };
        let providers = async {
            if providers.is_empty() {
                return Ok(());
            }
            conn.query_typed(
                &format!(
                    "INSERT INTO unefois_limit_providers AS p (provider, broker, sent, \
                     held_until, changed_at) \
                     SELECT p, $1, s, h, {NOW_MICROS} \
                     FROM unnest($2::text[], $3::int8[], $4::int8[]) AS t(p, s, h) \
                     ON CONFLICT (provider, broker) DO UPDATE \
                     SET sent = greatest(p.sent, excluded.sent), \
                         held_until = greatest(p.held_until, excluded.held_until), \
                         changed_at = excluded.changed_at"
                ),
                &[
                    (&me, Type::TEXT),
                    (&providers, Type::TEXT_ARRAY),
                    (&sent, Type::INT8_ARRAY),
                    (&held_until, Type::INT8_ARRAY),
                ],
            )
            .await
            .map(drop)
            .map_err(db("share what the providers asked"))
        };
        // Sent together: the connection pipelines them, in order.
        let (calls, people, providers, others) =
            futures::join!(calls, people, providers, self.read(&conn, me, now));
        // What was read counts as read only here, past the last await: a share given up
        // midway (the broker's timeout drops it) reads the same rows again next time, rather
        // than skipping them (a provider's wait is written once).
        let read = calls.and(people).and(providers).and(others);
        match &read {
            Ok((_, stamp)) if stamp.all => {
                self.read_all_at.store(now, Ordering::Relaxed);
                self.newest.store(stamp.newest, Ordering::Relaxed);
            }
            Ok((_, stamp)) => {
                self.newest.fetch_max(stamp.newest, Ordering::Relaxed);
            }
            // Whatever was read is dropped: read it all again next time.
            Err(_) => self.read_all_at.store(0, Ordering::Relaxed),
        }
        self.forget_unshared(now);
        read.map(|(others, _)| others)
    }

    /// The counts of the brokers other than `me` changed since the newest read, and what the
    /// read saw (for the next one's stamp).
    async fn read(
        &self,
        conn: &tokio_postgres::Client,
        me: &str,
        now: i64,
    ) -> Result<(LimitUse, ReadStamp), StoreError> {
        let all = now - self.read_all_at.load(Ordering::Relaxed) >= READ_ALL_EVERY_SECONDS;
        let since = if all {
            i64::MIN
        } else {
            self.newest
                .load(Ordering::Relaxed)
                .saturating_sub(OVERLAP_MICROS)
        };
        let first = now.div_euclid(60) - 1;
        let calls_params = [(&me as _, Type::TEXT), (&since as _, Type::INT8)];
        let people_params = [
            (&me as _, Type::TEXT),
            (&since as _, Type::INT8),
            (&first as _, Type::INT8),
        ];
        let calls = conn.query_typed(
            "SELECT participant, broker, admitted, changed_at, asked FROM unefois_limit_calls \
             WHERE broker <> $1 AND changed_at > $2",
            &calls_params,
        );
        let people = conn.query_typed(
            "SELECT consumer, habilitation, minute, broker, sketch, alarmed, changed_at \
             FROM unefois_limit_people WHERE broker <> $1 AND changed_at > $2 AND minute >= $3",
            &people_params,
        );
        let providers = conn.query_typed(
            "SELECT provider, broker, sent, held_until, changed_at FROM unefois_limit_providers \
             WHERE broker <> $1 AND changed_at > $2",
            &calls_params,
        );
        let (calls, people, providers) = futures::join!(calls, people, providers);
        let calls = calls.map_err(db("read the calls other brokers admitted"))?;
        let people = people.map_err(db("read the people other brokers saw"))?;
        let providers = providers.map_err(db("read what the providers asked other brokers"))?;
        // A full read sets the newest stamp anew (it may have gone back).
        let mut newest = if all {
            i64::MIN
        } else {
            since.saturating_add(OVERLAP_MICROS)
        };
        let mut out = LimitUse::default();
        for row in calls {
            let admitted: i64 = row.get(2);
            let asked: i64 = row.get(4);
            newest = newest.max(row.get(3));
            out.calls.push(CallsAdmitted {
                participant: row.get(0),
                broker: row.get(1),
                admitted: u64::try_from(admitted).unwrap_or(0),
                asked: u64::try_from(asked).unwrap_or(0),
            });
        }
        for row in providers {
            let sent: i64 = row.get(2);
            newest = newest.max(row.get(4));
            out.providers.push(ProviderUse {
                provider: row.get(0),
                broker: row.get(1),
                sent: u64::try_from(sent).unwrap_or(0),
                held_until: row.get(3),
            });
        }
        for row in people {
            newest = newest.max(row.get(6));
            let sketch: Vec<u8> = row.get(4);
            // A row of another size is not a sketch this build can merge (a later version's).
            if sketch.len() != SKETCH_BYTES {
                continue;
            }
            out.people.push(PeopleSeen {
                consumer: row.get(0),
                habilitation: row.get(1),
                minute: row.get(2),
                broker: row.get(3),
                sketch,
                alarmed: row.get(5),
            });
        }
        Ok((out, ReadStamp { all, newest }))
    }

    /// Removes, in the background, the counts no broker shares any more, once a minute at most.
    fn forget_unshared(&self, now: i64) {
        let before_minute = now.div_euclid(60) - 2;
        self.sweep.sweep(now, || {
            format!(
                "DELETE FROM unefois_limit_calls \
                     WHERE changed_at < {NOW_MICROS} - {FORGET_AFTER_MICROS}; \
                 DELETE FROM unefois_limit_providers \
                     WHERE changed_at < {NOW_MICROS} - {FORGET_AFTER_MICROS}; \
                 DELETE FROM unefois_limit_people WHERE minute < {before_minute}"
            )
        });
    }
}
