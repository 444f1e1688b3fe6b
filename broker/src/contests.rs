//! « Je ne reconnais pas cette consultation »: a citizen, with their identity evidence, reports
//! an exchange about them that they do not recognise. The report is an entry of the log
//! (`access_contested`: the exchange's leaf index and a reason from a closed list, the person
//! sealed), which auditors see among the events and follow up. The citizen pages call it.

use crate::caller::Caller;
use crate::error::ApiError;
use crate::event::{ContestReason, Event, Record};
use crate::state::State;

/// A report.
#[derive(Debug)]
pub struct ContestInput {
    /// The citizen's ID token: who reports (and whose exchange it must be).
    pub id_token: String,
    /// The leaf index of the exchange contested.
    pub entry: u64,
    /// Why.
    pub reason: ContestReason,
}

/// Records the report once the token proves the person and the entry is an exchange about
/// them (spending one of the token's acts); returns the report's leaf index.
pub async fn contest(
    state: &State,
    caller: &Caller,
    input: &ContestInput,
) -> Result<u64, ApiError> {
    caller.require_citizen_facing()?;
    let registry = state.federation.registry();
    let verified = crate::evidence::proven(&input.id_token, caller, &registry)?;
    let pseudonym = state.pseudonyms.audit(&verified.subject);
    // Only one of their own exchanges: nobody learns, by trying, what is about whom.
    let not_theirs = || ApiError::invalid("entry", "is not an exchange about this person");
    let entry = state
        .store
        .entry(input.entry)
        .await?
        .ok_or_else(not_theirs)?;
    let record = Record::decode(&entry).map_err(|_| not_theirs())?;
    let theirs = matches!(record.event, Event::Exchange(_))
        && state.store.subject_of(&record.event).as_deref() == Some(pseudonym.as_str());
    if !theirs {
        return Err(not_theirs());
    }
    crate::evidence::spend(state, &verified).await?;
    let appended = state
        .store
        .append_entry(Record::now(Event::AccessContested {
            participant: caller.participant.clone(),
            subject_sealed: state.sealer.seal(&pseudonym),
            entry: input.entry,
            reason: input.reason,
        }))
        .await?;
    Ok(appended.seq)
}
