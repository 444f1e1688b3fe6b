//! Rows past their use, removed by each broker in the background, at most once a period: the
//! counts of ID tokens no longer usable (`acts`), the limits' counts nobody shares (`limits`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use super::connect::Shared;
use super::db;

/// One kind of rows to remove, on the connection that writes them.
pub struct Sweep {
    conn: Arc<Shared>,
    /// What is removed, for the error's message.
    what: &'static str,
    /// Seconds between two sweeps, at least.
    every: i64,
    /// When this broker last swept (Unix seconds).
    swept_at: AtomicI64,
}

impl Sweep {
    pub fn new(conn: Arc<Shared>, what: &'static str, every: i64) -> Sweep {
        Sweep {
            conn,
            what,
            every,
            swept_at: AtomicI64::new(0),
        }
    }

    /// Runs `statements` (no parameters) in the background, unless a sweep ran less than a
    /// period before `now` (Unix seconds).
    pub fn sweep(&self, now: i64, statements: impl FnOnce() -> String) {
        let last = self.swept_at.load(Ordering::Relaxed);
        if now - last < self.every
            || self
                .swept_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let conn = self.conn.clone();
        let (sql, what) = (statements(), self.what);
        tokio::spawn(async move {
            let swept = async {
                conn.client()
                    .await?
                    .batch_execute(&sql)
                    .await
                    .map_err(db(what))
            };
            if let Err(e) = swept.await {
                tracing::warn!(error = %e, "rows past their use stay");
            }
        });
    }
}
