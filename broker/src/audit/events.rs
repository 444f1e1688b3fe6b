//! Reading the audit log: auditors' queries over entries, and a citizen's access history.

use time::OffsetDateTime;

use crate::error::ApiError;
use crate::event::{Event, ExchangeEvent, Outcome, Record};
use crate::store::{Store, StoreError};
use crate::subject::Subject;

/// Most entries one ListEvents call examines; the caller continues from `next_index`.
pub const MAX_SCAN: u64 = 10_000;
/// Most events one page returns.
pub const MAX_LIMIT: u32 = 1_000;

/// What an auditor asks for.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// First entry index to examine.
    pub start_index: u64,
    /// The entry index at which examining stops (the log's end without it).
    pub end_index: Option<u64>,
    /// Most events to return.
    pub limit: u32,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only events attributed to this participant.
    pub participant: Option<String>,
    /// Only events at or after.
    pub since: Option<OffsetDateTime>,
    /// Only events before.
    pub until: Option<OffsetDateTime>,
    /// Only events about this subject pseudonym.
    pub subject: Option<String>,
    /// Only events about this attestation type.
    pub attestation_type: Option<String>,
    /// Only exchanges with this outcome.
    pub outcome: Option<Outcome>,
}

impl EventFilter {
    /// Whether a record, about the person of audit pseudonym `subject` (opened from its seal)
    /// if any, passes the filter.
    pub fn matches(&self, record: &Record, subject: Option<&str>) -> bool {
        let event = &record.event;
        let exchange: Option<&ExchangeEvent> = match event {
            Event::Exchange(e) => Some(e),
            _ => None,
        };
        self.kind.as_deref().is_none_or(|k| k == event.kind())
            && self
                .participant
                .as_deref()
                .is_none_or(|p| event.participant() == Some(p))
            && self.since.is_none_or(|t| record.time >= t)
            && self.until.is_none_or(|t| record.time < t)
            && self.subject.as_deref().is_none_or(|s| subject == Some(s))
            && self
                .attestation_type
                .as_deref()
                .is_none_or(|t| match event {
                    Event::Exchange(e) => e.attestation_type == t,
                    Event::ConsentGranted {
                        attestation_types, ..
                    } => attestation_types.iter().any(|x| x == t),
                    _ => false,
                })
            && self
                .outcome
                .is_none_or(|o| exchange.is_some_and(|e| e.outcome == o))
    }
}

/// One entry of the log, with its exact bytes and its decoded record.
#[derive(Clone, Debug)]
pub struct LoggedEvent {
    /// Leaf index.
    pub index: u64,
    /// Exact leaf bytes.
    pub entry: Vec<u8>,
    /// Decoded; `None` when the stored bytes are not a record this broker can read (damage or
    /// tampering): auditors still get the exact bytes, so that verification names the entry.
    pub record: Option<Record>,
    /// The audit pseudonym of the person it is about, opened from its seal (for auditors; never
    /// for anyone else).
    pub subject: Option<String>,
}

impl LoggedEvent {
    fn read(store: &dyn Store, index: u64, entry: Vec<u8>) -> LoggedEvent {
        let record = Record::decode(&entry).ok();
        let subject = record.as_ref().and_then(|r| store.subject_of(&r.event));
        LoggedEvent {
            index,
            entry,
            record,
            subject,
        }
    }
}

impl EventFilter {
    /// Whether the filter selects by content (an unreadable entry passes only filters that
    /// do not).
    fn by_content(&self) -> bool {
        self.kind.is_some()
            || self.participant.is_some()
            || self.since.is_some()
            || self.until.is_some()
            || self.subject.is_some()
            || self.attestation_type.is_some()
            || self.outcome.is_some()
    }
}

/// The events matching `filter` among at most [`MAX_SCAN`] entries from its start index, and
/// the index to continue from (the log's end when it was reached).
pub async fn list(
    store: &dyn Store,
    filter: &EventFilter,
) -> Result<(Vec<LoggedEvent>, u64), StoreError> {
    let limit = match filter.limit {
        0 => 100,
        n => n.min(MAX_LIMIT),
    } as usize;
    let mut out = Vec::new();
    let mut next = filter.start_index;
    let mut items = store.entries_from(filter.start_index);
    while let Some(item) = futures::StreamExt::next(&mut items).await {
        let (index, entry) = item?;
        if index >= filter.start_index.saturating_add(MAX_SCAN)
            || filter.end_index.is_some_and(|end| index >= end)
            || out.len() >= limit
        {
            break;
        }
        next = index + 1;
        let event = LoggedEvent::read(store, index, entry);
        let selected = match &event.record {
            Some(r) => filter.matches(r, event.subject.as_deref()),
            None => !filter.by_content(),
        };
        if selected {
            out.push(event);
        }
    }
    Ok((out, next))
}

/// ExportEvents' reading: every event `filter` selects, page after page, sent to `tx`, up to
/// the log's size when the export began (entries appended since are not followed: an export
/// ends). It stops as soon as the receiver is gone (the client left): the page under way is
/// abandoned and no other is read, so that a filter matching nothing does not scan, decode
/// and open every entry of the log for nobody. A store failure is sent, and ends it. Returns
/// the index it stopped at.
pub async fn export(
    store: &dyn Store,
    mut filter: EventFilter,
    tx: &tokio::sync::mpsc::Sender<Result<LoggedEvent, StoreError>>,
) -> u64 {
    let size = match store.latest_checkpoint().await {
        Ok(latest) => latest.map_or(0, |(size, _)| size),
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return filter.start_index;
        }
    };
    let end = filter.end_index.map_or(size, |end| end.min(size));
    filter.end_index = Some(end);
    while filter.start_index < end {
        let page = tokio::select! {
            biased;
            () = tx.closed() => return filter.start_index,
            page = list(store, &filter) => page,
        };
        let (found, next) = match page {
            Ok(page) => page,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return filter.start_index;
            }
        };
        for event in found {
            if tx.send(Ok(event)).await.is_err() {
                return next;
            }
        }
        if next <= filter.start_index {
            break;
        }
        filter.start_index = next;
    }
    filter.start_index
}

/// The exchanges about a subject (by audit pseudonym), newest first, older than leaf `before`
/// (exclusive) when given, at most `size` of them, and whether more remain.
pub async fn accesses(
    store: &dyn Store,
    subject: &str,
    before: Option<u64>,
    size: usize,
) -> Result<(Vec<LoggedEvent>, bool), StoreError> {
    let mut seqs = store
        .exchanges_about(subject, before, size.saturating_add(1))
        .await?;
    let more = seqs.len() > size;
    seqs.truncate(size);
    let mut out = Vec::with_capacity(seqs.len());
    for index in seqs {
        if let Some(entry) = store.entry(index).await? {
            out.push(LoggedEvent::read(store, index, entry));
        }
    }
    Ok((out, more))
}

fn time_of(seconds: Option<i64>) -> Result<Option<OffsetDateTime>, ApiError> {
    seconds
        .map(|s| {
            OffsetDateTime::from_unix_timestamp(s)
                .map_err(|_| ApiError::invalid("since/until", "timestamp out of range"))
        })
        .transpose()
}

/// An auditor's query of the log, as asked (fields empty when not given).
#[derive(Debug, Default)]
pub struct AuditQuery {
    /// First leaf index to examine.
    pub start_index: u64,
    /// Most events to return (0: the default).
    pub limit: u32,
    /// A record kind (`exchange`, `consent_granted`, …).
    pub kind: String,
    /// A participant.
    pub participant: String,
    /// A person (`scheme:value`): read as their audit pseudonym, never recorded in clear.
    pub subject: String,
    /// An attestation type.
    pub attestation_type: String,
    /// An exchange outcome (`granted`, `denied`, `failed`, `previewed`, `rejected`).
    pub outcome: String,
    /// Recorded at or after, Unix seconds.
    pub since: Option<i64>,
    /// Recorded before, Unix seconds.
    pub until: Option<i64>,
}

/// Checks that `caller` is an auditor and `query` well formed, and records the read (`verb`:
/// the call that reads) before it happens; returns the filter to read with.
pub async fn audited(
    state: &crate::state::State,
    caller: &crate::caller::Caller,
    query: AuditQuery,
    verb: &str,
) -> Result<EventFilter, ApiError> {
    use crate::registry::Role;
    if !caller.has_role(Role::Auditor) {
        return Err(ApiError::WrongRole {
            participant: caller.participant.clone(),
            role: Role::Auditor,
        });
    }
    let registry = state.federation.registry();
    let subject = if query.subject.is_empty() {
        None
    } else {
        let s = Subject::parse(&query.subject, registry.allow_test_subjects())?;
        Some(state.pseudonyms.audit(&s))
    };
    let outcome = match query.outcome.as_str() {
        "" => None,
        "granted" => Some(Outcome::Granted),
        "denied" => Some(Outcome::Denied),
        "failed" => Some(Outcome::Failed),
        "previewed" => Some(Outcome::Previewed),
        "rejected" => Some(Outcome::Rejected),
        _ => {
            return Err(ApiError::invalid(
                "outcome",
                "granted, denied, failed, previewed or rejected",
            ));
        }
    };
    for (field, value) in [
        ("kind", &query.kind),
        ("participant", &query.participant),
        ("attestation_type", &query.attestation_type),
    ] {
        if !value.is_empty() {
            crate::validate::identifier(field, value, 128)?;
        }
    }
    if !query.kind.is_empty() && !Event::KINDS.contains(&query.kind.as_str()) {
        return Err(ApiError::invalid(
            "kind",
            "a record's kind (exchange, consent_granted, mandate_created, audit_read, …)",
        ));
    }
    let some = |s: &String| (!s.is_empty()).then(|| s.clone());
    // The read is recorded for good: a name the registry does not know (a participant or a
    // type since removed, or whatever a client typed there, a person's identifier included)
    // is recorded as "(unregistered)", as exchanges record theirs; the filter still applies.
    let recorded = |name: &Option<String>, known: bool| match name {
        Some(_) if !known => Some("(unregistered)".to_string()),
        name => name.clone(),
    };
    let filter = EventFilter {
        start_index: query.start_index,
        end_index: None,
        limit: query.limit,
        kind: some(&query.kind),
        participant: some(&query.participant),
        since: time_of(query.since)?,
        until: time_of(query.until)?,
        subject,
        attestation_type: some(&query.attestation_type),
        outcome,
    };
    let query = format!(
        "{verb} start={} kind={:?} participant={:?} type={:?} outcome={:?} subject={} since={:?} until={:?}",
        filter.start_index,
        filter.kind,
        recorded(
            &filter.participant,
            registry.participant(&query.participant).is_some()
        ),
        recorded(
            &filter.attestation_type,
            registry
                .attestation_types()
                .any(|t| t.id == query.attestation_type)
        ),
        query.outcome,
        // Sealed beside the query, never in it: in clear, the audit pseudonym would link this
        // read to every other search for the person, and to their version 1 entries.
        if filter.subject.is_some() {
            "sealed"
        } else {
            "-"
        },
        filter.since,
        filter.until,
    );
    state
        .store
        .append(vec![Record::now(Event::AuditRead {
            participant: caller.participant.clone(),
            agent: caller.agent.clone(),
            query,
            subject_sealed: filter.subject.as_deref().map(|s| state.sealer.seal(s)),
        })])
        .await?;
    Ok(filter)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::seal::Sealer;

    fn store() -> Arc<crate::store::Memory> {
        Arc::new(crate::store::Memory::new(
            crate::LogSigner::from_seed(&[6; 32], "unefois.test").unwrap(),
            Arc::new(Sealer::from_secret(&[5; 32])),
        ))
    }

    fn stops(n: usize) -> Vec<Record> {
        (0..n)
            .map(|_| Record::now(Event::BrokerStopped {}))
            .collect()
    }

    /// A filter matching nothing sends nothing, so the export never learnt from a failed send
    /// that the client had left: it read every page of the log for nobody.
    #[tokio::test]
    async fn an_export_whose_client_left_reads_no_further_page() {
        let store = store();
        let size = 3 * MAX_SCAN;
        store.append(stops(size as usize)).await.unwrap();
        let filter = EventFilter {
            kind: Some("consent_granted".into()),
            limit: MAX_LIMIT,
            ..EventFilter::default()
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        drop(rx);
        let reached = export(&*store, filter.clone(), &tx).await;
        assert_eq!(
            reached, 0,
            "read up to {reached} of {size} entries for nobody"
        );
        // With the client there, the same export reads the whole log, and ends.
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        assert_eq!(export(&*store, filter, &tx).await, size);
    }

    /// An export ends at the log's size when it began: it does not follow the entries appended
    /// while it runs.
    #[tokio::test]
    async fn an_export_ends_at_the_size_the_log_had_when_it_began() {
        let store = store();
        store.append(stops(5)).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let exporter = {
            let store = store.clone();
            let filter = EventFilter {
                limit: MAX_LIMIT,
                ..EventFilter::default()
            };
            tokio::spawn(async move { export(&*store, filter, &tx).await })
        };
        // The first page is read whole before its first event is sent.
        assert_eq!(rx.recv().await.unwrap().unwrap().index, 0);
        store.append(stops(3)).await.unwrap();
        let mut sent = 1;
        while let Some(event) = rx.recv().await {
            assert!(event.unwrap().index < 5);
            sent += 1;
        }
        assert_eq!(
            sent, 5,
            "the export followed the log past its size at the start"
        );
        assert_eq!(exporter.await.unwrap(), 5);
    }
}
