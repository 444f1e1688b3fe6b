//! Identity evidence presented for an act: one ID token serves one sitting of one guichet.
//!
//! A token that verifies (`crate::identity`) proves the citizen's presence; each act that changes
//! state and leans on it (a consent granted or withdrawn, a mandate created or revoked, a form
//! pre-filled or confirmed) spends one of the few acts its identity provider allows one token
//! (`max_acts_per_token`, 8 by default), counted by the store (`Store::spend_act`: in memory on
//! one broker, in the database for the brokers of a cluster).

use crate::caller::Caller;
use crate::error::ApiError;
use crate::identity::Verified;
use crate::state::State;
use crate::subject::Subject;

/// The identity evidence of an act for `subject`: the token is required, verifies for the
/// caller's audience, proves that very person, and spends one of its acts.
pub async fn for_act(
    state: &State,
    token: &str,
    caller: &Caller,
    subject: &Subject,
) -> Result<(), ApiError> {
    let verified = require(token, caller, &state.federation.registry(), subject)?;
    spend(state, &verified).await
}

/// The person an act's identity evidence proves, once it spent one of the token's acts.
pub async fn proven_for_act(
    state: &State,
    token: &str,
    caller: &Caller,
) -> Result<Subject, ApiError> {
    let verified = proven(token, caller, &state.federation.registry())?;
    spend(state, &verified).await?;
    Ok(verified.subject)
}

/// Spends one act of evidence verified earlier: for an act that turns out to create
/// something (a retry that finds its earlier result spends nothing).
pub async fn spend(state: &State, verified: &Verified) -> Result<(), ApiError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Ok(state.store.spend_act(verified, now).await??)
}

/// Checks the identity evidence a guichet (`caller`) presents for `subject` to read (a list,
/// an access history): the token is required, must verify, and must prove that very subject.
/// Acts that change state go through [`for_act`], which also counts them.
pub fn require(
    token: &str,
    caller: &Caller,
    registry: &crate::registry::Registry,
    subject: &Subject,
) -> Result<Verified, ApiError> {
    let verified = proven(token, caller, registry)?;
    if verified.subject != *subject {
        return Err(ApiError::SubjectMismatch);
    }
    Ok(verified)
}

/// What a guichet's (or mediation structure's) `caller` identity evidence proves.
pub fn proven(
    token: &str,
    caller: &Caller,
    registry: &crate::registry::Registry,
) -> Result<Verified, ApiError> {
    if token.is_empty() {
        return Err(ApiError::IdentityEvidenceRequired);
    }
    let guichet = registry
        .participant(&caller.participant)
        .ok_or_else(|| ApiError::UnknownParticipant(caller.participant.clone()))?;
    Ok(crate::identity::verify(
        token,
        guichet,
        registry,
        time::OffsetDateTime::now_utc(),
    )?)
}
