//! What a journal record changes in the read models (consents, mandates, request ids, the keys
//! the broker started with): a pure function of the record and of what the views already hold,
//! so that every store backend derives the same state from the same journal. A backend reads
//! through [`Views`], applies the [`Change`]s in order, then projects the next record.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;

use time::OffsetDateTime;

use crate::caller::actor;
use crate::consent::Consent;
use crate::event::{Event, Record, RecordedKeys, RecordedRegistry};
use crate::mandate::Mandate;

/// What an idempotency key was used for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestUse {
    /// A digest of the request's fields, to tell a retry from a different request.
    pub fingerprint: String,
    /// The id of what it created (a consent or mandate id; a Fetch's entry index).
    pub result: String,
}

/// One change to the read models.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new consent, to index by scope (person, consumer, each type, purpose), by person, by
    /// party (the recording guichet and the consumer) and by the mandate it was recorded under.
    ConsentGranted(Consent),
    /// A consent already indexed, changed (renewed or revoked): its indexes stay.
    ConsentChanged(Consent),
    /// A new mandate, to index by person and by structure.
    MandateCreated(Mandate),
    /// A mandate already indexed, revoked.
    MandateChanged(Mandate),
    /// A consent or mandate request id: what `actor` created with it (a later use replaces it).
    RequestUsed {
        /// The participant, or `participant/agent`.
        actor: String,
        /// The request id as recorded (blinded).
        request_id: String,
        /// What it was used for.
        used: RequestUse,
    },
    /// A Fetch request id (recorded blinded): the first exchange that used it, kept if one is
    /// already there (retries point to the first). Kept apart from consent and mandate request
    /// ids, under [`fetch_request_key`].
    FetchRequestUsed {
        /// The participant, or `participant/agent`.
        actor: String,
        /// The blinded request id.
        request_id: String,
        /// The request's fingerprint and the exchange's entry index.
        used: RequestUse,
    },
    /// The ids of the keys a broker started with, as of entry `entry`.
    KeysRecorded {
        /// The entry (leaf index) that recorded them.
        entry: u64,
        /// Key file name → key id.
        ids: BTreeMap<String, String>,
    },
    /// The registry a broker started or reloaded with, as of entry `entry`.
    RegistryRecorded(RecordedRegistry),
}

/// What the projection reads of the state built from earlier records.
pub trait Views {
    /// A backend's failure to read.
    type Error;
    /// The consent with this id, if one is held (and readable).
    fn consent(&self, id: &str) -> Result<Option<Consent>, Self::Error>;
    /// The mandate with this id, if one is held (and readable).
    fn mandate(&self, id: &str) -> Result<Option<Mandate>, Self::Error>;
    /// The consents recorded under this mandate.
    fn consents_under(&self, mandate_id: &str) -> Result<Vec<Consent>, Self::Error>;
}

/// Where a backend keeps a Fetch's (blinded) request id among the request ids: apart from the
/// consent and mandate ones, which the caller chooses freely.
pub fn fetch_request_key(request_id: &str) -> String {
    format!("fetch/{request_id}")
}

/// The read models held in memory, changes applied as they come: the store's in-memory backend
/// keeps them so (and the projection's tests).
#[derive(Clone, Debug, Default)]
pub struct Models {
    /// By consent id.
    pub consents: BTreeMap<String, Consent>,
    /// By mandate id.
    pub mandates: BTreeMap<String, Mandate>,
    /// By (actor, request id); a Fetch's under [`fetch_request_key`].
    pub requests: HashMap<(String, String), RequestUse>,
    /// The key ids the latest broker start recorded.
    pub recorded_keys: Option<RecordedKeys>,
    /// The registry the latest start or reload recorded.
    pub recorded_registry: Option<RecordedRegistry>,
}

impl Models {
    /// Applies one change.
    pub fn write(&mut self, change: Change) {
        match change {
            Change::ConsentGranted(c) | Change::ConsentChanged(c) => {
                self.consents.insert(c.id.clone(), c);
            }
            Change::MandateCreated(m) | Change::MandateChanged(m) => {
                self.mandates.insert(m.id.clone(), m);
            }
            Change::RequestUsed {
                actor,
                request_id,
                used,
            } => {
                self.requests.insert((actor, request_id), used);
            }
            Change::FetchRequestUsed {
                actor,
                request_id,
                used,
            } => {
                let key = (actor, fetch_request_key(&request_id));
                self.requests.entry(key).or_insert(used);
            }
            Change::KeysRecorded { entry, ids } => {
                self.recorded_keys = Some(RecordedKeys { entry, ids });
            }
            Change::RegistryRecorded(registry) => self.recorded_registry = Some(registry),
        }
    }

    /// The consents `keep` accepts after the id `after` (exclusive; from the first when
    /// empty), in id order.
    pub fn consents_after(&self, after: &str, keep: impl Fn(&Consent) -> bool) -> Vec<Consent> {
        self.consents
            .values()
            .filter(|c| (after.is_empty() || c.id.as_str() > after) && keep(c))
            .cloned()
            .collect()
    }
}

impl Views for Models {
    type Error = Infallible;

    fn consent(&self, id: &str) -> Result<Option<Consent>, Infallible> {
        Ok(self.consents.get(id).cloned())
    }

    fn mandate(&self, id: &str) -> Result<Option<Mandate>, Infallible> {
        Ok(self.mandates.get(id).cloned())
    }

    fn consents_under(&self, mandate_id: &str) -> Result<Vec<Consent>, Infallible> {
        Ok(self.consents_after("", |c| c.mandate_id.as_deref() == Some(mandate_id)))
    }
}

/// The changes record `seq` makes, given the person it is about (its audit pseudonym, once
/// the backend has opened the seal; `None` when it is about no one or the seal does not open).
pub fn apply<V: Views>(
    views: &V,
    seq: u64,
    record: Record,
    subject: Option<String>,
) -> Result<Vec<Change>, V::Error> {
    let mut changes = Vec::new();
    let at = record.time;
    match record.event {
        Event::ConsentGranted {
            consent_id,
            pseudonym_key,
            consumer,
            participant,
            agent,
            attestation_types,
            purpose,
            expires_at,
            request_id,
            request_fingerprint,
            mandate_id,
            ..
        } => {
            // A consent whose person cannot be told (a seal that does not open) is kept under
            // no person: it can be the basis of nothing.
            let subject = subject.unwrap_or_default();
            // A consent recorded under a mandate lapses with it at the latest, also one
            // recorded before brokers capped it at the grant.
            let expires_at = capped(views, mandate_id.as_deref(), expires_at)?;
            let requester = actor(&participant, agent.as_deref());
            changes.push(Change::ConsentGranted(Consent {
                id: consent_id.clone(),
                subject,
                pseudonym_key,
                consumer,
                participant,
                agent,
                mandate_id,
                attestation_types,
                purpose,
                granted_at: at,
                expires_at,
                revoked_at: None,
                renewed_at: None,
                seq,
            }));
            changes.extend(request_used(
                requester,
                request_id,
                request_fingerprint,
                consent_id,
            ));
        }
        Event::ConsentRenewed {
            consent_id,
            participant,
            agent,
            expires_at,
            request_id,
            request_fingerprint,
            ..
        } => {
            if let Some(mut consent) = views.consent(&consent_id)?
                && consent.revoked_at.is_none()
            {
                let renewed = consent.expires_at.max(expires_at);
                // A consent recorded under a mandate still lapses with it at the latest.
                consent.expires_at = capped(views, consent.mandate_id.as_deref(), renewed)?;
                consent.renewed_at = Some(at);
                changes.push(Change::ConsentChanged(consent));
            }
            let requester = actor(&participant, agent.as_deref());
            changes.extend(request_used(
                requester,
                request_id,
                request_fingerprint,
                consent_id,
            ));
        }
        Event::ConsentRevoked { consent_id, .. } => {
            if let Some(mut consent) = views.consent(&consent_id)?
                && consent.revoked_at.is_none()
            {
                consent.revoked_at = Some(at);
                changes.push(Change::ConsentChanged(consent));
            }
        }
        Event::MandateCreated {
            mandate_id,
            pseudonym_key,
            structure,
            agent,
            purposes,
            duration_days,
            document_sha256,
            expires_at,
            request_id,
            request_fingerprint,
            ..
        } => {
            let requester = actor(&structure, Some(&agent));
            changes.push(Change::MandateCreated(Mandate {
                id: mandate_id.clone(),
                subject: subject.unwrap_or_default(),
                pseudonym_key,
                structure,
                agent,
                purposes,
                duration_days,
                document_sha256,
                created_at: at,
                expires_at,
                revoked_at: None,
                seq,
            }));
            changes.extend(request_used(
                requester,
                request_id,
                request_fingerprint,
                mandate_id,
            ));
        }
        Event::MandateRevoked { mandate_id, .. } => {
            if let Some(mut mandate) = views.mandate(&mandate_id)?
                && mandate.revoked_at.is_none()
            {
                mandate.revoked_at = Some(at);
                changes.push(Change::MandateChanged(mandate));
            }
            // The consents an agent recorded under it end with it (the broker also records
            // their revocation in the same batch; consents recorded before it did are ended
            // here, when the state is rebuilt).
            for mut consent in views.consents_under(&mandate_id)? {
                if consent.revoked_at.is_none() {
                    consent.revoked_at = Some(at);
                    changes.push(Change::ConsentChanged(consent));
                }
            }
        }
        Event::Exchange(exchange) => {
            if let (Some(request_id), Some(fingerprint)) =
                (exchange.request_id, exchange.request_fingerprint)
            {
                changes.push(Change::FetchRequestUsed {
                    actor: actor(&exchange.participant, exchange.agent.as_deref()),
                    request_id,
                    used: RequestUse {
                        fingerprint,
                        result: seq.to_string(),
                    },
                });
            }
        }
        Event::BrokerStarted { keys, .. } if !keys.is_empty() => {
            changes.push(Change::KeysRecorded {
                entry: seq,
                ids: keys,
            });
        }
        Event::RegistryLoaded {
            registry_sha256,
            files,
        } => changes.push(Change::RegistryRecorded(RecordedRegistry {
            entry: seq,
            sha256: registry_sha256,
            files,
        })),
        Event::AuditRead { .. }
        | Event::AccessContested { .. }
        | Event::BrokerStarted { .. }
        | Event::BrokerStopped {}
        | Event::RateLimited { .. }
        | Event::AccessHistoryRead { .. }
        | Event::ConsentsRead { .. }
        | Event::HarvestingAlarm { .. } => {}
    }
    Ok(changes)
}

/// `expires_at`, no later than the mandate it was recorded under, if any.
fn capped<V: Views>(
    views: &V,
    mandate_id: Option<&str>,
    expires_at: OffsetDateTime,
) -> Result<OffsetDateTime, V::Error> {
    let Some(id) = mandate_id else {
        return Ok(expires_at);
    };
    Ok(views
        .mandate(id)?
        .map_or(expires_at, |m| expires_at.min(m.expires_at)))
}

fn request_used(
    actor: String,
    request_id: Option<String>,
    fingerprint: Option<String>,
    result: String,
) -> Option<Change> {
    let (request_id, fingerprint) = request_id.zip(fingerprint)?;
    Some(Change::RequestUsed {
        actor,
        request_id,
        used: RequestUse {
            fingerprint,
            result,
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! The projection over an in-memory backend, one case a line: records in, what the read
    //! models then hold out.
    use serde_json::json;
    use time::macros::datetime;

    use super::*;

    /// What the read models hold, in lines.
    trait Lines {
        fn lines(&self) -> Vec<String>;
    }

    impl Lines for Models {
        /// One line per consent, mandate, request id and recorded keys, days counted from
        /// day 0.
        fn lines(&self) -> Vec<String> {
            let day = |t: OffsetDateTime| (t - DAY0).whole_days();
            let mut out = Vec::new();
            for c in self.consents.values() {
                let mut line = format!(
                    "consent {} of {} until {}",
                    c.id,
                    c.subject,
                    day(c.expires_at)
                );
                if let Some(r) = c.renewed_at {
                    line += &format!(", renewed {}", day(r));
                }
                if let Some(r) = c.revoked_at {
                    line += &format!(", revoked {}", day(r));
                }
                out.push(line);
            }
            for m in self.mandates.values() {
                let mut line = format!(
                    "mandate {} of {} until {}",
                    m.id,
                    m.subject,
                    day(m.expires_at)
                );
                if let Some(r) = m.revoked_at {
                    line += &format!(", revoked {}", day(r));
                }
                out.push(line);
            }
            let mut requests: Vec<String> = (self.requests.iter())
                .map(|((actor, id), used)| format!("request {actor} {id} -> {}", used.result))
                .collect();
            requests.sort();
            out.extend(requests);
            if let Some(keys) = &self.recorded_keys {
                out.push(format!("keys at {}: {}", keys.entry, keys.ids.len()));
            }
            if let Some(registry) = &self.recorded_registry {
                out.push(format!(
                    "registry at {}: {}",
                    registry.entry, registry.sha256
                ));
            }
            out
        }
    }

    const DAY0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

    /// A version-1 record (the person in clear) of `kind` on `day`, with `fields`.
    fn record(day: i64, kind: &str, fields: serde_json::Value) -> Record {
        let mut value = json!({
            "v": 1,
            "time": (DAY0 + time::Duration::days(day)).format(&time::format_description::well_known::Rfc3339).unwrap(),
            "kind": kind,
        });
        value
            .as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        Record::decode(&serde_json::to_vec(&value).unwrap()).unwrap()
    }

    fn at(day: i64) -> String {
        (DAY0 + time::Duration::days(day))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    }

    /// A step of a case: `grant c1 until 30`, `grant c1 until 30 under m1`, `grant c1 until 30
    /// as r1`, `renew c1 until 60`, `revoke c1`, `mandate m1 until 10 as r2`, `end m1`,
    /// `fetch r3`, `start`; each on the day it follows (`5: revoke c1`).
    fn step(line: &str) -> Record {
        let (day, what) = line.split_once(": ").unwrap();
        let day: i64 = day.parse().unwrap();
        let w: Vec<&str> = what.split(' ').collect();
        let word = |k: &str| w.iter().position(|x| *x == k).map(|i| w[i + 1].to_string());
        let until = word("until").map(|d| at(d.parse().unwrap()));
        let request = word("as");
        let fingerprint = request.as_ref().map(|r| format!("fp-{r}"));
        match w[0] {
            "grant" => record(
                day,
                "consent_granted",
                json!({
                    "consent_id": w[1], "subject": "alice", "pseudonym_key": "k1",
                    "consumer": "caf", "participant": "mairie", "agent": word("by"),
                    "attestation_types": ["qf"], "purpose": "cantine", "expires_at": until,
                    "request_id": request, "request_fingerprint": fingerprint,
                    "mandate_id": word("under"),
                }),
            ),
            "renew" => record(
                day,
                "consent_renewed",
                json!({
                    "consent_id": w[1], "participant": "mairie", "agent": null,
                    "expires_at": until, "request_id": request,
                    "request_fingerprint": fingerprint,
                }),
            ),
            "revoke" => record(
                day,
                "consent_revoked",
                json!({
                    "consent_id": w[1], "participant": "mairie", "agent": null,
                }),
            ),
            "mandate" => record(
                day,
                "mandate_created",
                json!({
                    "mandate_id": w[1], "subject": "alice", "pseudonym_key": "k1",
                    "structure": "fs", "agent": "a1", "purposes": ["cantine"],
                    "duration_days": 31, "document_sha256": "00", "expires_at": until,
                    "request_id": request, "request_fingerprint": fingerprint,
                }),
            ),
            "end" => record(
                day,
                "mandate_revoked",
                json!({
                    "mandate_id": w[1], "participant": "fs", "agent": "a1",
                }),
            ),
            "fetch" => record(
                day,
                "exchange",
                json!({
                    "outcome": "granted", "participant": "caf", "agent": null,
                    "subject": "alice", "attestation_type": "qf", "purpose": "cantine",
                    "registry_sha256": "00", "request_id": w[1],
                    "request_fingerprint": format!("fp-{}", w[1]),
                }),
            ),
            "start" => record(
                day,
                "broker_started",
                json!({
                    "version": "0", "keys": { "audit.key": "id1" },
                }),
            ),
            other => panic!("no step {other}"),
        }
    }

    fn check(steps: &[&str], expect: &[&str]) {
        let mut memory = Models::default();
        for (seq, line) in steps.iter().enumerate() {
            let record = step(line);
            let subject = record.event.recorded_subject().map(|s| match s {
                crate::event::RecordedSubject::Clear(s)
                | crate::event::RecordedSubject::Sealed(s) => s.to_string(),
            });
            for change in apply(&memory, seq as u64, record, subject).unwrap() {
                memory.write(change);
            }
        }
        assert_eq!(memory.lines(), expect, "after {steps:?}");
    }

    #[test]
    fn records_project_to_consents_mandates_and_request_ids() {
        check(&["0: grant c1 until 30"], &["consent c1 of alice until 30"]);
        // A renewal lasts until the later expiry, and never shortens a consent.
        check(
            &["0: grant c1 until 30", "10: renew c1 until 60"],
            &["consent c1 of alice until 60, renewed 10"],
        );
        check(
            &["0: grant c1 until 30", "10: renew c1 until 20"],
            &["consent c1 of alice until 30, renewed 10"],
        );
        // A revoked consent stays revoked: neither a renewal nor a second revocation moves it.
        check(
            &[
                "0: grant c1 until 30",
                "5: revoke c1",
                "6: renew c1 until 90",
                "7: revoke c1",
            ],
            &["consent c1 of alice until 30, revoked 5"],
        );
        // Under a mandate: capped at the mandate's end, also when renewed, and ended with it.
        check(
            &[
                "0: mandate m1 until 10",
                "1: grant c1 until 30 under m1 by a1",
            ],
            &[
                "consent c1 of alice until 10",
                "mandate m1 of alice until 10",
            ],
        );
        check(
            &[
                "0: mandate m1 until 10",
                "1: grant c1 until 5 under m1 by a1",
                "2: renew c1 until 40",
            ],
            &[
                "consent c1 of alice until 10, renewed 2",
                "mandate m1 of alice until 10",
            ],
        );
        check(
            &[
                "0: mandate m1 until 10",
                "1: grant c1 until 30 under m1 by a1",
                "2: grant c2 until 30",
                "3: revoke c1",
                "4: end m1",
                "5: end m1",
            ],
            &[
                "consent c1 of alice until 10, revoked 3",
                "consent c2 of alice until 30",
                "mandate m1 of alice until 10, revoked 4",
            ],
        );
        check(
            &[
                "0: mandate m1 until 10",
                "1: grant c1 until 30 under m1 by a1",
                "4: end m1",
            ],
            &[
                "consent c1 of alice until 10, revoked 4",
                "mandate m1 of alice until 10, revoked 4",
            ],
        );
        // A consent under a mandate the state does not hold keeps its own expiry.
        check(
            &["0: grant c1 until 30 under m9"],
            &["consent c1 of alice until 30"],
        );
        // Request ids: a consent's or mandate's is replaced by a later use; a Fetch's keeps the
        // first exchange (retries point to it).
        check(
            &["0: grant c1 until 30 as r1", "1: renew c1 until 40 as r1"],
            &[
                "consent c1 of alice until 40, renewed 1",
                "request mairie r1 -> c1",
            ],
        );
        check(
            &["0: grant c1 until 30 as r1 by a1"],
            &["consent c1 of alice until 30", "request mairie/a1 r1 -> c1"],
        );
        check(
            &["0: mandate m1 until 10 as r2"],
            &["mandate m1 of alice until 10", "request fs/a1 r2 -> m1"],
        );
        check(
            &["0: fetch r3", "1: fetch r3"],
            &["request caf fetch/r3 -> 0"],
        );
        // Only a start that names its keys records them; others change nothing.
        check(
            &["0: fetch x", "1: start"],
            &["request caf fetch/x -> 0", "keys at 1: 1"],
        );
        check(&["0: revoke c9", "0: end m9", "0: renew c9 until 3"], &[]);
    }
}
