//! A citizen's access history ("who read my data"): the exchanges about them, newest first, each
//! with its exact log entry and its inclusion proof in the latest checkpoint, so that they can
//! check every line offline. Read by the citizen in person (identity evidence) or by an agent
//! under their mandate; the read itself is on the record before it happens. The gRPC edge
//! (`Guichet.ListAccesses`) and, later, the citizen's pages call the same function.

use time::OffsetDateTime;

use crate::audit::events;
use crate::caller::Caller;
use crate::error::ApiError;
use crate::event::{Event, ExchangeEvent, Record};
use crate::state::State;
use crate::subject::Subject;

/// Default page size.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page size.
pub const MAX_PAGE_SIZE: u32 = 200;
/// How far out of time order the log's records may be (the console's period bounds likewise).
const TIME_SLACK_SECONDS: i64 = 60;

/// A request for a page of a person's access history.
#[derive(Debug, Default)]
pub struct ListInput {
    /// `scheme:value`.
    pub subject: String,
    /// The mandate an agent acts under, or empty.
    pub mandate_id: String,
    /// The citizen's ID token (identity evidence), when no mandate is given.
    pub id_token: String,
    /// The last leaf index of the previous page, or empty for the newest.
    pub page_token: String,
    /// How many, at most (0: the default).
    pub page_size: u32,
    /// Only the accesses it selects (the citizen's page's filters; none over gRPC).
    pub filter: AccessFilter,
}

/// What a person looks for in their history: one organisation, one type of data, a period.
#[derive(Clone, Debug, Default)]
pub struct AccessFilter {
    /// Only this consumer's accesses.
    pub consumer: Option<String>,
    /// Only accesses to this attestation type.
    pub attestation_type: Option<String>,
    /// Only accesses at or after.
    pub since: Option<OffsetDateTime>,
    /// Only accesses before.
    pub until: Option<OffsetDateTime>,
    /// Only accesses for these purposes: an agent reads, under a mandate, what the person
    /// allowed the structure to act on (the mandate's purposes), not the whole history.
    pub purposes: Option<Vec<String>>,
}

impl AccessFilter {
    fn is_empty(&self) -> bool {
        self.consumer.is_none()
            && self.attestation_type.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.purposes.is_none()
    }

    fn selects(&self, time: OffsetDateTime, exchange: &ExchangeEvent) -> bool {
        self.consumer
            .as_deref()
            .is_none_or(|c| exchange.participant == c)
            && self
                .attestation_type
                .as_deref()
                .is_none_or(|t| exchange.attestation_type == t)
            && self.since.is_none_or(|s| time >= s)
            && self.until.is_none_or(|u| time < u)
            && self
                .purposes
                .as_ref()
                .is_none_or(|p| p.contains(&exchange.purpose))
    }
}

/// Most accesses one filtered page examines; the page then offers to look further back.
pub const MAX_FILTER_SCAN: usize = 2_000;

/// One exchange about the person, as the log holds it.
#[derive(Debug)]
pub struct Access {
    /// When it was recorded.
    pub time: OffsetDateTime,
    /// The exchange (consumer, type, purpose, basis, outcome, mandate and agent).
    pub exchange: Box<ExchangeEvent>,
    /// The consumer's name in the registry, if it is still registered.
    pub consumer_name: String,
    /// The purpose's label in the registry, if it is still registered.
    pub purpose_label: String,
    /// Its leaf index.
    pub leaf_index: u64,
    /// Its exact entry bytes.
    pub entry: Vec<u8>,
    /// Its inclusion proof in the tree of [`Accesses::checkpoint`].
    pub inclusion_proof: Vec<[u8; 32]>,
}

/// A page of the history.
#[derive(Debug)]
pub struct Accesses {
    /// Newest first.
    pub accesses: Vec<Access>,
    /// The token of the next (older) page, or empty.
    pub next_page_token: String,
    /// The signed checkpoint the proofs lead to (empty while the log is empty).
    pub checkpoint: String,
}

/// Up to `size` of the person's accesses that `filter` selects, newest first, older than
/// `before`, examining at most [`MAX_FILTER_SCAN`] of them (and none older than its period);
/// with the leaf index the next page starts before, if more may remain (where this page
/// stopped looking, whether or not that access was selected).
async fn filtered(
    store: &dyn crate::store::Store,
    pseudonym: &str,
    mut before: Option<u64>,
    size: usize,
    filter: &AccessFilter,
) -> Result<(Vec<events::LoggedEvent>, Option<u64>), ApiError> {
    // Read a page's worth first (a filter that selects most accesses reads no more than an
    // unfiltered page), then 200 at a time.
    const MAX_CHUNK: usize = 200;
    let mut chunk_size = size.clamp(1, MAX_CHUNK);
    let mut kept = Vec::new();
    let mut scanned = 0;
    loop {
        let (chunk, more) = events::accesses(store, pseudonym, before, chunk_size).await?;
        chunk_size = MAX_CHUNK;
        // An index that names entries the store no longer has would not move `before`.
        if chunk.is_empty() {
            return Ok((kept, None));
        }
        let last = chunk.len() - 1;
        for (i, logged) in chunk.into_iter().enumerate() {
            scanned += 1;
            before = Some(logged.index);
            let Some(Record {
                time,
                event: Event::Exchange(exchange),
                ..
            }) = &logged.record
            else {
                continue;
            };
            // Older than the period by more than records of one log can be out of time order
            // (a record's time is taken before its batch gives it an index; brokers' clocks):
            // nothing further back can be in it. Within that, the filter decides.
            if filter
                .since
                .is_some_and(|s| *time < s - time::Duration::seconds(TIME_SLACK_SECONDS))
            {
                return Ok((kept, None));
            }
            if filter.selects(*time, exchange) {
                kept.push(logged);
                if kept.len() >= size {
                    // Further back only if something older remains.
                    let older = i < last || more;
                    return Ok((kept, before.filter(|_| older)));
                }
            }
        }
        if !more {
            return Ok((kept, None));
        }
        if scanned >= MAX_FILTER_SCAN {
            return Ok((kept, before));
        }
    }
}

/// A page of `input.subject`'s access history, for `caller` (a guichet or a mediation
/// structure), recorded as read before it is read.
pub async fn list(state: &State, caller: &Caller, input: &ListInput) -> Result<Accesses, ApiError> {
    caller.require_citizen_facing()?;
    let registry = state.federation.registry();
    let subject = Subject::parse(&input.subject, registry.allow_test_subjects())?;
    let pseudonym = state.pseudonyms.audit(&subject);
    // The citizen in person (identity evidence), or an agent under the citizen's mandate.
    let mandate = crate::policy::acting(
        &*state.store,
        caller,
        &input.mandate_id,
        &pseudonym,
        None,
        OffsetDateTime::now_utc(),
    )
    .await?;
    if mandate.is_none() {
        crate::evidence::require(&input.id_token, caller, &registry, &subject)?;
    }
    let before = match input.page_token.as_str() {
        "" => None,
        token => Some(
            token
                .parse::<u64>()
                .map_err(|_| ApiError::invalid("page_token", "not a token of this list"))?,
        ),
    };
    let size = match input.page_size {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    } as usize;
    let store = &*state.store;
    // Under a mandate, the accesses for what it lets the structure act on.
    let mut filter = input.filter.clone();
    if let Some(m) = &mandate {
        filter.purposes = Some(m.purposes.clone());
    }
    // The read is on the record before it happens.
    store
        .append(vec![Record::now(Event::AccessHistoryRead {
            participant: caller.participant.clone(),
            agent: caller.agent.clone(),
            subject: None,
            subject_sealed: Some(state.sealer.seal(&pseudonym)),
            mandate_id: mandate.map(|m| m.id),
        })])
        .await?;
    let (found, next) = if filter.is_empty() {
        let (found, more) = events::accesses(store, &pseudonym, before, size).await?;
        let next = found.last().filter(|_| more).map(|last| last.index);
        (found, next)
    } else {
        filtered(store, &pseudonym, before, size, &filter).await?
    };
    let (tree_size, checkpoint) = store
        .latest_checkpoint()
        .await?
        .unwrap_or((0, String::new()));
    let mut accesses = Vec::with_capacity(found.len());
    for logged in &found {
        let Some(Record {
            time,
            event: Event::Exchange(exchange),
            ..
        }) = &logged.record
        else {
            continue;
        };
        let inclusion_proof = store.inclusion_proof(logged.index, tree_size).await?;
        accesses.push(Access {
            time: *time,
            consumer_name: registry
                .participant(&exchange.participant)
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            purpose_label: registry
                .purpose(&exchange.purpose)
                .map(|p| p.label.clone())
                .unwrap_or_default(),
            exchange: exchange.clone(),
            leaf_index: logged.index,
            entry: logged.entry.clone(),
            inclusion_proof,
        });
    }
    let next_page_token = next.map(|n| n.to_string()).unwrap_or_default();
    Ok(Accesses {
        accesses,
        next_page_token,
        checkpoint,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::{Event, Outcome, Record};
    use crate::seal::Sealer;
    use crate::store::Store as _;

    fn exchange_at(sealer: &Sealer, pseudonym: &str, time: OffsetDateTime) -> Record {
        Record {
            time,
            ..Record::now(Event::Exchange(Box::new(ExchangeEvent {
                outcome: Outcome::Granted,
                reason: None,
                participant: "mairie-lyon".into(),
                agent: None,
                subject: None,
                subject_sealed: Some(sealer.seal(pseudonym)),
                pseudonym_key: None,
                attestation_type: "dgfip.revenu_fiscal_reference".into(),
                purpose: "tarification_cantine".into(),
                legal_basis: None,
                habilitation: None,
                mandate_id: None,
                attestation_id: None,
                payload_sha256: None,
                provider: None,
                derived_rules: Vec::new(),
                request_id: None,
                registry_sha256: "00".into(),
                prefill_id: None,
                request_fingerprint: None,
                retry_of: None,
            })))
        }
    }

    /// Leaf order is time order only within a little: an access of the period recorded before
    /// one stamped a millisecond before it is still found.
    #[tokio::test]
    async fn a_period_keeps_an_access_recorded_just_out_of_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Arc::new(Sealer::from_secret(&[5; 32]));
        let store = crate::store::Embedded::open(
            dir.path(),
            crate::journal::JournalOptions::default(),
            crate::LogSigner::from_seed(&[6; 32], "unefois.test").unwrap(),
            sealer.clone(),
        )
        .unwrap();
        let person = "cd".repeat(32);
        let since = OffsetDateTime::now_utc() - time::Duration::hours(1);
        let in_period = exchange_at(&sealer, &person, since + time::Duration::milliseconds(2));
        let just_before = exchange_at(&sealer, &person, since - time::Duration::milliseconds(1));
        store.append(vec![in_period, just_before]).await.unwrap();
        let filter = AccessFilter {
            since: Some(since),
            ..AccessFilter::default()
        };
        let (kept, _) = filtered(&store, &person, None, 10, &filter).await.unwrap();
        assert_eq!(kept.len(), 1, "the access of the period was dropped");
        assert_eq!(kept[0].index, 0);
        store.close().await;
    }
}
