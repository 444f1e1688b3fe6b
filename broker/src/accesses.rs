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
}

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
    let (found, more) = events::accesses(store, &pseudonym, before, size).await?;
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
    let next_page_token = match (more, found.last()) {
        (true, Some(last)) => last.index.to_string(),
        _ => String::new(),
    };
    Ok(Accesses {
        accesses,
        next_page_token,
        checkpoint,
    })
}
