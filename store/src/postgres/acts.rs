//! The acts each ID token in use has proved, counted in the database for every broker
//! ([`crate::Store::spend_act`]): with N brokers behind one name a token proves at most its
//! provider's `max_acts_per_token` acts, not N times as many, and a broker restarted in the
//! middle of a sitting still knows how many it proved (it need not refuse the tokens issued
//! before it started, as a broker counting in its memory does).
//!
//! One statement per act, on a connection of its own (the reads' connection pipelines the
//! fetches' lookups, which must not queue behind a commit's wait for the standby), committed as
//! the log's records are: on a synchronous standby too, so that a failover does not forget acts
//! (a commit whose wait for the standby was cancelled, which the server answers with a warning,
//! refuses the act as unavailable).
//! Rows go once their token can no longer be presented, a few minutes later for the brokers'
//! clock skew, at most once a minute per broker.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::Type;

use super::connect::{Connector, Shared};
use super::sweep::Sweep;
use super::{SYNCHRONOUS, db};
use crate::StoreError;
use crate::identity::{IdentityError, Verified};

/// One act more, unless the token already proved `$3`: the count after it, or no row.
const SPEND: &str = "INSERT INTO unefois_evidence_uses AS u (digest, acts, usable_until) \
                     VALUES ($1, 1, $2) \
                     ON CONFLICT (digest) DO UPDATE SET acts = u.acts + 1 WHERE u.acts < $3 \
                     RETURNING u.acts";
/// The counts of tokens no longer usable, before a time to follow.
const FORGET: &str = "DELETE FROM unefois_evidence_uses WHERE usable_until <";
/// How long after a token's end its count stays: the brokers' clocks may differ by that much.
const SKEW_SECONDS: i64 = 300;
/// How often a broker removes the counts of the tokens no longer usable, at most.
const FORGET_EVERY_SECONDS: i64 = 60;

/// A broker's side of the shared count.
pub struct Acts {
    conn: Arc<Shared>,
    /// How long an act waits for its count's commit.
    wait: Duration,
    /// The counts of tokens past their use, removed.
    sweep: Sweep,
}

impl Acts {
    pub fn new(connector: Connector, wait: Duration) -> Acts {
        let conn = Arc::new(Shared::with_setup(connector, SYNCHRONOUS));
        Acts {
            sweep: Sweep::new(
                conn.clone(),
                "forget the counts of ID tokens past their use",
                FORGET_EVERY_SECONDS,
            ),
            conn,
            wait,
        }
    }

    /// Spends one act of `token` at `now`, or says why it cannot prove one more.
    pub async fn spend(
        &self,
        token: &Verified,
        now: i64,
    ) -> Result<Result<(), IdentityError>, StoreError> {
        let max = i32::try_from(token.max_acts).unwrap_or(i32::MAX);
        if max < 1 {
            return Ok(Err(IdentityError::Exhausted(token.max_acts)));
        }
        self.forget_spent(now);
        let digest = token.digest.to_vec();
        let spent = async {
            let conn = self.conn.client().await?;
            let warned = conn.warnings();
            let row = conn
                .query_typed_opt(
                    SPEND,
                    &[
                        (&digest, Type::BYTEA),
                        (&token.usable_until, Type::INT8),
                        (&max, Type::INT4),
                    ],
                )
                .await
                .map_err(db("count an ID token's act"))?;
            if conn.warnings() > warned {
                return Err(StoreError::Database(
                    "an ID token's act was counted on the primary alone (its wait for the \
                     standby was cancelled)"
                        .into(),
                ));
            }
            Ok(row)
        };
        // The statement is not cancelled at the deadline (a cancelled wait for the standby
        // would leave the count on the primary alone); the act is refused as unavailable.
        match tokio::time::timeout(self.wait, spent).await {
            Ok(Ok(Some(_))) => Ok(Ok(())),
            Ok(Ok(None)) => Ok(Err(IdentityError::Exhausted(token.max_acts))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Database(format!(
                "an ID token's act was not counted within {:?} (is a synchronous standby \
                 streaming?)",
                self.wait
            ))),
        }
    }

    /// Removes, in the background, the counts of tokens past their use, once a minute at most.
    fn forget_spent(&self, now: i64) {
        let before = now - SKEW_SECONDS;
        self.sweep.sweep(now, || format!("{FORGET} {before}"));
    }
}
