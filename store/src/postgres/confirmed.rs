//! The log's head as far as a synchronous standby has it: the bound of every read of the log
//! (checkpoints, proofs, entries, a person's exchanges).
//!
//! A commit normally becomes visible on the primary only once a synchronous standby has flushed
//! it, but not always: a COMMIT whose wait for the standby was cancelled, the waits a fast
//! shutdown of the primary ends, a primary restarted without failover all show what no standby
//! has. A checkpoint of that, handed out, is not a prefix of the log a failover then gives: the
//! auditor holding it would see a fork. So a read serves the head of the coordination row only
//! once every synchronous standby's flushed position (`pg_stat_replication.flush_lsn`) has
//! passed the primary's own flushed position taken after the row was read (the writers commit
//! with `synchronous_commit` at least `on`: the row's commit was flushed on the primary before
//! it became visible), waiting a little for a standby that lags; otherwise the newest head known
//! confirmed: one this broker's writer had acknowledged, or one an earlier read confirmed. Every
//! synchronous standby, not one: a commit may need several (`ANY 2 (…)`), and a failover may
//! promote any of them. The flushed position rather than the insert one: WAL inserted and not
//! yet flushed (a page's header, the hint bits a read logged) would hold an idle cluster's reads
//! until the WAL writer's next flush.
//! A primary that requires no synchronous standby (`synchronous_standby_names` empty: a
//! promoted standby alone, a single server) confirms its own commits.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_postgres::types::{PgLsn, Type};

use super::connect::{Conn, Shared};
use super::db;
use crate::StoreError;

/// How long a read waits for a synchronous standby that lags behind the row it read.
const WAIT: Duration = Duration::from_millis(200);
/// How often it asks, meanwhile.
const POLL: Duration = Duration::from_millis(1);

/// The coordination row's head as a read sees it, and how far standbys have it: the primary's
/// flushed WAL position after the row was read, whether every synchronous standby has flushed
/// up to it (or none is required), and whether one is streaming at all.
const SEEN: &str = "SELECT log.size, log.checkpoint, at.lsn, \
     btrim(current_setting('synchronous_standby_names')) = '' \
         OR coalesce(sync.flushed >= at.lsn, false), \
     sync.flushed IS NOT NULL \
     FROM unefois_log AS log, \
     (SELECT pg_current_wal_flush_lsn() AS lsn) AS at, \
     (SELECT min(flush_lsn) AS flushed FROM pg_stat_replication \
      WHERE sync_state IN ('sync', 'quorum')) AS sync";

/// Whether every synchronous standby has flushed up to `$1`, and whether one is streaming.
const FLUSHED: &str = "SELECT coalesce(min(flush_lsn) >= $1, false), min(flush_lsn) IS NOT NULL \
     FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')";

/// The primary's flushed WAL position, whether every synchronous standby has flushed up to it
/// (or none is required), and whether one is streaming.
const NOW_FLUSHED: &str = "SELECT at.lsn, \
     btrim(current_setting('synchronous_standby_names')) = '' \
         OR coalesce(sync.flushed >= at.lsn, false), \
     sync.flushed IS NOT NULL \
     FROM (SELECT pg_current_wal_flush_lsn() AS lsn) AS at, \
     (SELECT min(flush_lsn) AS flushed FROM pg_stat_replication \
      WHERE sync_state IN ('sync', 'quorum')) AS sync";

/// Returns once every synchronous standby has what the primary showed the reads before the
/// call (its flushed WAL position now: a commit is flushed there before it is visible), waiting
/// a little for one that lags; fails when none has it. What the primary shows a standby may
/// lack: a COMMIT whose wait for the standby was cancelled (see the module's documentation).
pub async fn all_flushed(reads: &Shared) -> Result<(), StoreError> {
    let client = reads.client().await?;
    let row = client
        .query_typed(NOW_FLUSHED, &[])
        .await
        .map_err(db("read the standbys' position"))?;
    let row = row.first().ok_or_else(unreadable_standbys)?;
    let unreadable = db("read the standbys' position");
    let at: PgLsn = row.try_get(0).map_err(&unreadable)?;
    let (flushed, streaming): (bool, bool) = (
        row.try_get(1).map_err(&unreadable)?,
        row.try_get(2).map_err(&unreadable)?,
    );
    match flushed_within_the_wait(&client, at, flushed, streaming).await? {
        true => Ok(()),
        false => Err(StoreError::Database(
            "what the database shows is not on a synchronous standby yet (is one streaming?)"
                .into(),
        )),
    }
}

/// A head of the log: its size and signed checkpoint (empty for an empty log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tip {
    pub size: u64,
    pub checkpoint: String,
}

/// What a read of the coordination row learnt about its head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// A synchronous standby has it (or none is required).
    Confirmed,
    /// No synchronous standby has it yet, within the wait.
    Unconfirmed,
}

/// The head to serve, given the row's `head`, what was `seen` of it and the newest head
/// `known` confirmed; `None` when there is none to serve.
fn serve(head: Tip, seen: Seen, known: Option<&Tip>) -> Option<Tip> {
    match (seen, known) {
        (Seen::Confirmed, Some(known)) if known.size > head.size => Some(known.clone()),
        (Seen::Confirmed, _) => Some(head),
        (Seen::Unconfirmed, Some(known)) if known.size <= head.size => Some(known.clone()),
        (Seen::Unconfirmed, Some(_)) => None,
        // An empty log, and nothing known: nothing a failover could lose.
        (Seen::Unconfirmed, None) if head.size == 0 => Some(head),
        (Seen::Unconfirmed, None) => None,
    }
}

/// The newest head known to be on a synchronous standby.
#[derive(Default)]
pub struct Confirmed {
    newest: Mutex<Option<Tip>>,
    /// The newest head this broker vouches for: its writer's acknowledged commits (each extended
    /// a row it checked) and the one an earlier run kept. Not the heads reads saw, which
    /// nothing checked: a log forked in the database must not become what the writer and the
    /// kept checkpoint compare with.
    vouched: Mutex<Option<Vouched>>,
}

/// A head this broker vouches for.
#[derive(Clone, Debug)]
pub struct Vouched {
    pub tip: Tip,
    /// Its tree's rightmost complete subtree, `(level, stored index, hash)`, when known (the
    /// writer's heads; not one read back from a file): it holds the head's last entry, so a
    /// log rolled back below the head and written again has another hash there.
    pub last: Option<(u8, u64, tlog_tiles::Hash)>,
}

impl Confirmed {
    /// A head known on a standby that this broker vouches for: the writer's, once its commit
    /// was acknowledged (with its rightmost subtree, `last`), or the one an earlier run kept.
    pub fn offer(&self, size: u64, checkpoint: &str, last: Option<(u8, u64, tlog_tiles::Hash)>) {
        let tip = Tip {
            size,
            checkpoint: checkpoint.to_string(),
        };
        let mut newest = self.newest.lock().unwrap_or_else(|e| e.into_inner());
        if newest.as_ref().is_none_or(|n| n.size < size) {
            *newest = Some(tip.clone());
        }
        drop(newest);
        let mut vouched = self.vouched.lock().unwrap_or_else(|e| e.into_inner());
        if vouched.as_ref().is_none_or(|v| v.tip.size < size) {
            *vouched = Some(Vouched { tip, last });
        }
    }

    /// The newest head this broker vouches for (see [`Confirmed::offer`]).
    pub fn vouched(&self) -> Option<Vouched> {
        self.vouched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The size of the newest head known confirmed, without asking the database (0 if none):
    /// a proof or an entry below it needs no read of the head.
    pub fn known_size(&self) -> u64 {
        self.newest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |t| t.size)
    }

    /// The newest head a synchronous standby has: the row's once confirmed (see the module's
    /// documentation), else the newest known. UNAVAILABLE when neither is.
    pub async fn read(&self, reads: &Shared) -> Result<Tip, StoreError> {
        Ok(self.read_with_row(reads).await?.0)
    }

    /// [`Confirmed::read`], and the size of the head the row holds: larger than the head
    /// served while a standby has not confirmed it (what is beyond the head served is then
    /// not yet readable here, rather than not in the log).
    pub async fn read_with_row(&self, reads: &Shared) -> Result<(Tip, u64), StoreError> {
        let client = reads.client().await?;
        let row = client
            .query_typed(SEEN, &[])
            .await
            .map_err(db("read the log's head"))?;
        let row = row
            .first()
            .ok_or_else(|| StoreError::Database("the log's coordination row is missing".into()))?;
        let unreadable = db("read the log's coordination row");
        let size: i64 = row.try_get(0).map_err(&unreadable)?;
        let head = Tip {
            size: u64::try_from(size).unwrap_or_default(),
            checkpoint: row.try_get(1).map_err(&unreadable)?,
        };
        let at: PgLsn = row.try_get(2).map_err(&unreadable)?;
        let (flushed, streaming): (bool, bool) = (
            row.try_get(3).map_err(&unreadable)?,
            row.try_get(4).map_err(&unreadable)?,
        );
        let seen = match flushed_within_the_wait(&client, at, flushed, streaming).await? {
            true => Seen::Confirmed,
            false => Seen::Unconfirmed,
        };
        let row_size = head.size;
        let mut newest = self.newest.lock().unwrap_or_else(|e| e.into_inner());
        let served = serve(head, seen, newest.as_ref()).ok_or_else(|| {
            StoreError::Database(
                "no synchronous standby has confirmed the log's head yet (is one streaming?)"
                    .into(),
            )
        })?;
        if seen == Seen::Confirmed {
            *newest = Some(served.clone());
        }
        Ok((served, row_size))
    }
}

/// Whether every synchronous standby has flushed up to `at`, given what a first read found
/// (`flushed`, and whether one is `streaming`): asked again every `POLL` while one streams and
/// lags, `WAIT` at most.
async fn flushed_within_the_wait(
    client: &Conn,
    at: PgLsn,
    mut flushed: bool,
    mut streaming: bool,
) -> Result<bool, StoreError> {
    let unreadable = db("read the standbys' position");
    let started = Instant::now();
    while !flushed && streaming && started.elapsed() < WAIT {
        tokio::time::sleep(POLL).await;
        let row = client
            .query_typed(FLUSHED, &[(&at, Type::PG_LSN)])
            .await
            .map_err(&unreadable)?;
        let row = row.first().ok_or_else(unreadable_standbys)?;
        (flushed, streaming) = (
            row.try_get(0).map_err(&unreadable)?,
            row.try_get(1).map_err(&unreadable)?,
        );
    }
    Ok(flushed)
}

fn unreadable_standbys() -> StoreError {
    StoreError::Database("pg_stat_replication answered no row".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tip(size: u64) -> Tip {
        Tip {
            size,
            checkpoint: format!("checkpoint {size}"),
        }
    }

    #[test]
    fn a_head_is_served_only_once_a_standby_has_it() {
        use Seen::*;
        let cases: &[(u64, Seen, Option<u64>, Option<u64>)] = &[
            // (row's size, seen, newest known, served)
            (5, Confirmed, None, Some(5)),
            (5, Confirmed, Some(3), Some(5)),
            (5, Confirmed, Some(5), Some(5)),
            // The writer's acknowledged commit, newer than the row this read saw.
            (5, Confirmed, Some(7), Some(7)),
            // Committed on the primary alone: the last head known on a standby.
            (7, Unconfirmed, Some(5), Some(5)),
            (7, Unconfirmed, None, None),
            (0, Unconfirmed, None, Some(0)),
            // The row behind what was known confirmed (another database after a failover that
            // lost commits): nothing known is served from this one.
            (3, Unconfirmed, Some(5), None),
            (0, Unconfirmed, Some(5), None),
        ];
        for &(size, seen, known, served) in cases {
            let got = serve(tip(size), seen, known.map(tip).as_ref());
            assert_eq!(
                got,
                served.map(tip),
                "row {size}, {seen:?}, known {known:?}"
            );
        }
    }

    #[test]
    fn the_newest_offer_is_kept() {
        let confirmed = Confirmed::default();
        assert_eq!(confirmed.known_size(), 0);
        confirmed.offer(5, "five", None);
        confirmed.offer(3, "three", None);
        assert_eq!(confirmed.known_size(), 5);
        confirmed.offer(8, "eight", None);
        assert_eq!(confirmed.known_size(), 8);
    }
}
