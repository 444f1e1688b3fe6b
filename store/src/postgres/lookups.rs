//! The consent lookups of a broker's decisions, gathered: every Fetch under consent reads the
//! consents of its scope on the primary, and one query per lookup cost the database and the
//! broker a message, a wake-up and a statement each. A task takes the lookups waiting and
//! answers them with one query; those that arrive meanwhile wait for the next. Each query
//! starts after every lookup it answers was asked, so a decision still sees every write
//! acknowledged before it asked (DESIGN.md, "Cluster": reads that decide). Under load, when
//! the last query answered `GATHER_FROM` lookups or more, the next one waits `GATHER` for more,
//! as the writer does for its batches.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::Type;

use super::connect::Shared;
use super::{body, db};
use crate::StoreError;
use crate::consent::Consent;

/// Lookups in one query at most.
const MAX_GATHERED: usize = 256;
/// How long the next query waits for more lookups when the last one answered `GATHER_FROM` or
/// more: lookups then arrive faster than queries go, and each query (a message, a wake-up of
/// the backend and of this task, a statement) serves more of them. Paced at half the maximum
/// rate, one broker: 0.9 × the CPU per fetch, a p50 2 ms lower (BENCHMARKS.md, run W). One
/// lookup at a time never waits. Tokio's timer ends it at its next millisecond tick after this.
const GATHER: Duration = Duration::from_millis(1);
/// The lookups of the last query from which the next one gathers for `GATHER`.
const GATHER_FROM: usize = 2;

/// The consents recorded for one scope: subject, consumer, attestation type, purpose.
pub type Scope = [String; 4];

struct Lookup {
    scope: Scope,
    reply: oneshot::Sender<Result<Vec<Consent>, StoreError>>,
}

/// The gathering task's door; the task ends when this is dropped.
pub struct Lookups {
    queue: mpsc::Sender<Lookup>,
}

impl Lookups {
    /// Starts the task, reading through `reads`.
    pub fn start(reads: Arc<Shared>) -> Lookups {
        let (queue, waiting) = mpsc::channel(4096);
        tokio::spawn(gather(reads, waiting));
        Lookups { queue }
    }

    /// The consents of `scope`, by consent id.
    pub async fn consents(&self, scope: Scope) -> Result<Vec<Consent>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Database("the consent lookups have stopped".into());
        self.queue
            .send(Lookup { scope, reply })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

const CONSENTS_OF_SCOPES: &str = "SELECT c.body, k.n \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY \
          AS k(subject, consumer, attestation_type, purpose, n) \
     JOIN unefois_consent_scopes s ON s.subject = k.subject AND s.consumer = k.consumer \
          AND s.attestation_type = k.attestation_type AND s.purpose = k.purpose \
     JOIN unefois_consents c ON c.id = s.consent_id \
     ORDER BY k.n, s.consent_id";

async fn gather(reads: Arc<Shared>, mut waiting: mpsc::Receiver<Lookup>) {
    // Lookups the last query answered.
    let mut previous = 0usize;
    while let Some(first) = waiting.recv().await {
        let mut lookups = vec![first];
        if previous >= GATHER_FROM {
            tokio::time::sleep(GATHER).await;
        }
        while lookups.len() < MAX_GATHERED {
            match waiting.try_recv() {
                Ok(more) => lookups.push(more),
                Err(_) => break,
            }
        }
        // A caller that gave up is not looked up for.
        lookups.retain(|l| !l.reply.is_closed());
        previous = lookups.len();
        if lookups.is_empty() {
            continue;
        }
        match query(&reads, &lookups).await {
            Ok(mut found) => {
                for (lookup, consents) in lookups.into_iter().zip(found.iter_mut()) {
                    let _ = lookup.reply.send(Ok(std::mem::take(consents)));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for lookup in lookups {
                    let _ = lookup
                        .reply
                        .send(Err(StoreError::Database(message.clone())));
                }
            }
        }
    }
}

/// One query for every lookup: the consents of each, in the lookups' order.
async fn query(reads: &Shared, lookups: &[Lookup]) -> Result<Vec<Vec<Consent>>, StoreError> {
    let column = |i: usize| -> Vec<&str> { lookups.iter().map(|l| l.scope[i].as_str()).collect() };
    let (subjects, consumers, types, purposes) = (column(0), column(1), column(2), column(3));
    let rows = reads
        .client()
        .await?
        .query_typed(
            CONSENTS_OF_SCOPES,
            &[
                (&subjects, Type::TEXT_ARRAY),
                (&consumers, Type::TEXT_ARRAY),
                (&types, Type::TEXT_ARRAY),
                (&purposes, Type::TEXT_ARRAY),
            ],
        )
        .await
        .map_err(db("read the consents of a scope"))?;
    let mut found: Vec<Vec<Consent>> = lookups.iter().map(|_| Vec::new()).collect();
    for row in &rows {
        let n: i64 = row.try_get(1).map_err(db("read the consents of a scope"))?;
        let slot = usize::try_from(n - 1)
            .ok()
            .and_then(|i| found.get_mut(i))
            .ok_or_else(|| StoreError::Database("a consent lookup out of range".into()))?;
        slot.push(body(row)?);
    }
    Ok(found)
}
