//! The hold across brokers ([`crate::Serialised`]) on PostgreSQL: transaction-scoped advisory
//! locks, one per key, on a connection of their own held for the act. Brokers take them in the
//! same order (by the keys' numbers), so two acts never wait on each other crosswise. The
//! connection goes back to an idle list when the act ends. A hold dropped instead (the act
//! failed, maybe on an append timeout; or its caller went away midway) ends only once this
//! broker's writer has answered every append queued before (a barrier through its queue): an
//! append whose caller stopped waiting may still be committing, and another broker's act must
//! not read before it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_postgres::types::Type;

use tokio::sync::mpsc;

use super::connect::{Conn, Connector};
use super::{NO_TRANSACTION_TIMEOUT, Pending, db, settled};
use crate::{Held, Serialised, StoreError};

/// Acts held at once by one broker, each on a connection of its own (acts about different
/// people go on together); more wait for one of them, within the wait. Their connections are
/// kept for the next acts.
const HOLDS: usize = 8;

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
            _ => Conn::new(self.connector.connect().await?),
        };
        let mut ids: Vec<i64> = keys.iter().map(|k| lock_id(k)).collect();
        ids.sort_unstable();
        ids.dedup();
        // The wait bounded; while the act runs, the transaction idles: no role's idle or
        // transaction timeout (PostgreSQL 17's `transaction_timeout`) may end it (its locks would
        // end with it, unseen).
        let wait = format!(
            "BEGIN; SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = 0; \
             SET LOCAL idle_in_transaction_session_timeout = 0; {NO_TRANSACTION_TIMEOUT}",
            self.wait.as_millis().max(1)
        );
        conn.batch_execute(&wait)
            .await
            .map_err(db("begin an act's hold"))?;
        // Taken in the array's order (sorted): unnest yields it as given.
        conn.query_typed(
            "SELECT pg_advisory_xact_lock(id) FROM unnest($1::bigint[]) AS id",
            &[(&ids, Type::INT8_ARRAY)],
        )
        .await
        .map_err(db(
            "wait for another broker's act on the same person or request",
        ))?;
        Ok(Serialised::held(Box::new(Hold {
            conn: Some(conn),
            locks: self.clone(),
            permit: Some(permit),
        })))
    }
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

struct Hold {
    conn: Option<Conn>,
    locks: Arc<Locks>,
    /// This act's place among the broker's `HOLDS`, given back with the connection.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
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
