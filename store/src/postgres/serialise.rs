//! The hold across brokers ([`crate::Serialised`]) on PostgreSQL: transaction-scoped advisory
//! locks, one per key, on a connection of their own held for the act. Brokers take them in the
//! same order (by the keys' numbers), so two acts never wait on each other crosswise. The
//! connection goes back to an idle list when the act ends. A hold dropped instead (the act
//! failed, maybe on an append timeout; or its caller went away midway) ends only once this
//! broker's writer has answered every append queued before (a barrier through its queue): an
//! append whose caller stopped waiting may still be committing, and another broker's act must
//! not read before it. A broker that dies (or loses its connection) in that state cannot wait:
//! its locks end with its session while the commit goes on. So a hold, once taken, also waits
//! for the writers' transactions in flight that change the same person's consents or mandates,
//! or record under the same request id (each holds a lock per such key to its commit's end).
//!
//! The other way round, a hold's session can end while its act goes on (the connection
//! broken, `pg_terminate_backend`, a failover): its locks go, another broker's act may read
//! about the same person, and the first act's record, still queued, would then commit beside
//! the second's (two consents for one request id). So each append made under a hold carries it
//! ([`HoldProof`]: a lock of its own, taken with its keys), and the writer's transaction, once
//! it holds the `committing` locks of the people its batch changes and of the request ids it
//! records, checks that every such hold still stands ([`CHECK_HOLDS`]): past that point another
//! broker's act waits for the commit; before it, the batch is rolled back and the appends whose
//! hold ended are refused. (A dying backend lets go of its locks one lock-table partition at a
//! time: a key's lock may go microseconds before the hold's own, a window no act fits in.)

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_postgres::types::Type;

use tokio::sync::mpsc;

use super::connect::{Conn, Connector};
use super::{NO_TRANSACTION_TIMEOUT, Pending, db, settled};
use crate::{Held, HoldToken, Serialised, StoreError};

/// Acts held at once by one broker, each on a connection of its own (acts about different
/// people go on together); more wait for one of them, within the wait. Their connections are
/// kept for the next acts.
const HOLDS: usize = 8;

/// The keys' locks (`$1`, to the transaction's end), then each key's `committing` lock (`$2`)
/// taken and let go: the scalar subqueries run in order, each key's lock before the next.
const HOLD: &str = "SELECT \
     (SELECT count(pg_advisory_xact_lock(id)) FROM unnest($1::bigint[]) AS id), \
     (SELECT count(pg_advisory_lock(id)) + count(pg_advisory_unlock(id)) \
      FROM unnest($2::bigint[]) AS id)";

/// The locks of a store's acts.
pub struct Locks {
    connector: Connector,
    /// The writer's queue, for the barrier a dropped hold waits for.
    writer: mpsc::Sender<Pending>,
    idle: Mutex<Vec<Conn>>,
    /// One per act held at once (`HOLDS`).
    holds: Arc<tokio::sync::Semaphore>,
    /// How long an act waits for another broker's: then the store is unavailable.
    wait: Duration,
}

impl Locks {
    pub fn new(connector: Connector, writer: mpsc::Sender<Pending>, wait: Duration) -> Locks {
        Locks {
            connector,
            writer,
            idle: Mutex::new(Vec::new()),
            holds: Arc::new(tokio::sync::Semaphore::new(HOLDS)),
            wait,
        }
    }

    /// Holds `keys` until the answer is released or dropped.
    pub async fn hold(self: &Arc<Self>, keys: &[&str]) -> Result<Serialised, StoreError> {
        let permit = tokio::time::timeout(self.wait, self.holds.clone().acquire_owned())
            .await
            .map_err(|_| {
                StoreError::Database(format!(
                    "{HOLDS} acts of this broker held their connections for {:?}",
                    self.wait
                ))
            })?
            .map_err(|_| StoreError::Closed)?;
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(conn) if !conn.is_closed() => conn,
            _ => {
                let conn = Conn::new(self.connector.connect().await?);
                // The session holds acts only: the wait bounded; while an act runs, its
                // transaction idles, and no role's idle or transaction timeout (PostgreSQL 17's
                // `transaction_timeout`) may end it (its locks would end with it, unseen).
                let session = format!(
                    "SET lock_timeout = {}; SET statement_timeout = 0; \
                     SET idle_in_transaction_session_timeout = 0; {NO_TRANSACTION_TIMEOUT}",
                    self.wait.as_millis().max(1)
                );
                conn.batch_execute(&session)
                    .await
                    .map_err(db("set up an act's hold"))?;
                conn.prepare_all(&[(HOLD, &[Type::INT8_ARRAY, Type::INT8_ARRAY])])
                    .await
                    .map_err(db("prepare an act's hold"))?;
                conn
            }
        };
        // The keys' locks, and this hold's own, which nobody else takes: the writer tries it to
        // see that the hold still stands (`CHECK_HOLDS`).
        let token = hold_token();
        let mut ids: Vec<i64> = keys.iter().map(|k| lock_id(k)).collect();
        ids.push(token);
        ids.sort_unstable();
        ids.dedup();
        conn.batch_execute("BEGIN")
            .await
            .map_err(db("begin an act's hold"))?;
        // Then, in one statement, the keys' locks, taken in the array's order (sorted: unnest
        // yields it as given), and the wait for the records in flight about the same person:
        // an act of another broker may have lost its hold before its record's outcome was
        // known (that broker, or its connection, gone while the record's COMMIT waited for the
        // standby: the session's locks end with it, the commit goes on, not yet visible). Each
        // writer's transaction holds, to its commit's end, a shared lock per person whose
        // consents or mandates it changes (`committing`): taken here once the keys are held,
        // and let go at once, it waits for those commits. Within the same wait as the keys'
        // locks; only a writer already in flight can hold it (a new one is about people
        // nobody else holds).
        let committing: Vec<i64> = keys.iter().map(|k| committing(k)).collect();
        conn.query_prepared(
            HOLD,
            &[(&ids, Type::INT8_ARRAY), (&committing, Type::INT8_ARRAY)],
            "wait for another broker's act on the same person or request",
        )
        .await?;
        let proof = HoldProof { token };
        Ok(Serialised::held(Box::new(Hold {
            conn: Some(conn),
            locks: self.clone(),
            permit: Some(permit),
            proof: Arc::new(proof),
        })))
    }
}

/// A lock number for one hold alone (a process's count and its random hasher's seed, hashed):
/// no other hold, of this broker or another, takes the same.
fn hold_token() -> i64 {
    static TAKEN: AtomicU64 = AtomicU64::new(0);
    let n = TAKEN.fetch_add(1, Ordering::Relaxed);
    let random = RandomState::new().hash_one(n);
    lock_id(&format!("hold\0{}\0{n}\0{random}", std::process::id()))
}

/// A key's advisory lock number: the first 8 bytes of its SHA-256, in this broker's own space
/// (other applications' advisory locks on the same database do not collide by accident).
fn lock_id(key: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(b"unefois serialised act\0")
        .chain_update(key.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// The lock a writer's transaction holds (shared) while it commits a change to the consents or
/// mandates of the person of hold key `key` ([`crate::person_key`]), or a record under the
/// request id of hold key `key` ([`crate::request_key`]).
pub(super) fn committing(key: &str) -> i64 {
    lock_id(&format!("committing\0{key}"))
}

/// What an append made under a hold carries to the writer: the hold's own lock, which its
/// transaction holds for as long as it stands ([`CHECK_HOLDS`]).
pub(super) struct HoldProof {
    token: i64,
}

impl HoldProof {
    /// The hold `token` carries, if it is one of this backend's.
    pub(super) fn of(token: HoldToken) -> Option<Arc<HoldProof>> {
        token.downcast::<HoldProof>().ok()
    }
}

/// The holds of a batch's appends, as [`LOST_HOLDS`] and [`CHECK_HOLDS`] take them: each hold's
/// own lock, with the place of its append in the batch.
#[derive(Default)]
pub(super) struct BatchHolds {
    pub tokens: Vec<i64>,
    pub appends: Vec<i32>,
}

impl BatchHolds {
    /// The holds of `proofs`, each the hold of the append at its place, if any.
    pub fn of<'a>(proofs: impl Iterator<Item = Option<&'a HoldProof>>) -> BatchHolds {
        let mut holds = BatchHolds::default();
        for (at, proof) in proofs.enumerate() {
            if let Some(proof) = proof {
                holds.tokens.push(proof.token);
                holds.appends.push(i32::try_from(at).unwrap_or(i32::MAX));
            }
        }
        holds
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The parameters of [`LOST_HOLDS`] and [`CHECK_HOLDS`].
    pub fn params(&self) -> [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 2] {
        [
            (&self.tokens, Type::INT8_ARRAY),
            (&self.appends, Type::INT4_ARRAY),
        ]
    }
}

/// The places of the appends whose hold no longer stands: its own lock, which its transaction
/// held exclusively, can be had (shared, to the end of this statement's transaction). A hold
/// that stands is one lookup in the lock table, not a read of all of it.
macro_rules! lost_holds {
    () => {
        "SELECT h.append FROM unnest($1::int8[], $2::int4[]) AS h(token, append) \
         WHERE pg_try_advisory_xact_lock_shared(h.token)"
    };
}
pub(super) const LOST_HOLDS: &str = lost_holds!();
/// In the writer's transaction: divides by zero, aborting it, when a hold of its batch no longer
/// stands ([`LOST_HOLDS`]).
pub(super) const CHECK_HOLDS: &str = concat!(
    "SELECT 1 / (count(*) = 0)::int FROM (",
    lost_holds!(),
    ") AS lost"
);
/// The parameters' types of [`LOST_HOLDS`] and [`CHECK_HOLDS`].
pub(super) const HOLDS_TYPES: &[Type] = &[Type::INT8_ARRAY, Type::INT4_ARRAY];

struct Hold {
    conn: Option<Conn>,
    locks: Arc<Locks>,
    /// This act's place among the broker's `HOLDS`, given back with the connection.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// What the act's appends carry.
    proof: Arc<HoldProof>,
}

impl Hold {
    /// Ends the locks with the transaction and keeps the connection for the next act; a
    /// connection that fails to end it is dropped, which ends them too.
    async fn end(conn: Conn, locks: &Locks) {
        if conn.batch_execute("COMMIT").await.is_ok() {
            let mut idle = locks.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < HOLDS {
                idle.push(conn);
            }
        }
    }
}

#[async_trait::async_trait]
impl Held for Hold {
    async fn release(mut self: Box<Self>) {
        if let Some(conn) = self.conn.take() {
            Hold::end(conn, &self.locks).await;
        }
    }

    fn token(&self) -> Option<HoldToken> {
        Some(self.proof.clone())
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        // Outside a runtime (the process ending), the connection goes, and the locks with it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (locks, permit) = (self.locks.clone(), self.permit.take());
        runtime.spawn(async move {
            // Every append queued before has its outcome.
            settled(&locks.writer).await;
            Hold::end(conn, &locks).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_distinct_fixed_lock_numbers() {
        assert_eq!(lock_id("a"), lock_id("a"));
        assert_ne!(lock_id("a"), lock_id("b"));
        assert_ne!(lock_id("person\0x"), lock_id("person\0y"));
    }
}
