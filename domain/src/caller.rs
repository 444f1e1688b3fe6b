//! The authenticated caller of a request: a participant, and the agent when a mediator's agent
//! acts. Derived only from the verified client certificate, never from a request field.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::registry::{Participant, Role};

/// Who is calling, resolved against the registry once per request.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The participant's id.
    pub participant: String,
    /// Its name in the registry.
    pub name: String,
    /// Its roles in the registry in force when the call arrived.
    pub roles: BTreeSet<Role>,
    /// The agent of a mediator structure, when the certificate is an agent's.
    pub agent: Option<String>,
    /// The SPIFFE ID of the certificate, for logs.
    pub spiffe_id: Arc<str>,
}

impl Caller {
    /// A caller for a registered participant.
    pub fn new(participant: &Participant, agent: Option<String>, spiffe_id: Arc<str>) -> Caller {
        Caller {
            participant: participant.id.clone(),
            name: participant.name.clone(),
            roles: participant.roles.clone(),
            agent,
            spiffe_id,
        }
    }

    /// Who acts, as request ids and per-caller quotas are scoped: the participant, or the
    /// agent of a mediation structure (`structure/agent`), never the structure as a whole.
    pub fn actor(&self) -> String {
        actor(&self.participant, self.agent.as_deref())
    }

    /// Whether the caller holds `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Refuses a caller that does not serve citizens directly: a guichet, or a mediation
    /// structure (whose agents act under mandates). The refusal names the guichet role.
    pub fn require_citizen_facing(&self) -> Result<(), crate::error::ApiError> {
        if self.has_role(Role::Guichet) || self.has_role(Role::Mediator) {
            Ok(())
        } else {
            Err(crate::error::ApiError::WrongRole {
                participant: self.participant.clone(),
                role: Role::Guichet,
            })
        }
    }
}

/// Who made a request, as request ids are scoped: the participant, and its agent when one acts
/// (`participant/agent`; neither holds a `/`): one agent's request id is never another's.
pub fn actor(participant: &str, agent: Option<&str>) -> String {
    match agent {
        Some(agent) => format!("{participant}/{agent}"),
        None => participant.to_string(),
    }
}
