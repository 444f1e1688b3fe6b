//! SPIFFE IDs of the federation and the syntax of the names inside them.
//!
//! A participant is `spiffe://<trust-domain>/participant/<id>`; an agent of a mediator is
//! `spiffe://<trust-domain>/participant/<id>/agent/<agent>`. Parsing is strict: identity comes
//! from these URIs only, so anything that is not exactly one of those shapes is rejected.

use std::fmt;

use crate::CertError;

const SCHEME: &str = "spiffe://";

/// A SPIFFE ID of the federation: `spiffe://<trust-domain>/participant/<id>[/agent/<agent>]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    /// The federation's trust domain, e.g. `unefois.test`.
    pub trust_domain: String,
    /// The participant id, e.g. `caf`.
    pub participant: String,
    /// The agent id when the certificate belongs to an agent of the participant.
    pub agent: Option<String>,
}

impl SpiffeId {
    /// The SPIFFE ID of a participant, after validating both names.
    pub fn participant(trust_domain: &str, id: &str) -> Result<Self, CertError> {
        validate_trust_domain(trust_domain)?;
        validate_participant_id(id)?;
        Ok(SpiffeId {
            trust_domain: trust_domain.to_owned(),
            participant: id.to_owned(),
            agent: None,
        })
    }

    /// The SPIFFE ID of an agent of a participant, after validating all names.
    pub fn agent(trust_domain: &str, participant: &str, agent: &str) -> Result<Self, CertError> {
        validate_agent_id(agent)?;
        let mut id = Self::participant(trust_domain, participant)?;
        id.agent = Some(agent.to_owned());
        Ok(id)
    }

    /// Parses a URI of exactly the shape above: lowercase scheme, no port, user info, query,
    /// fragment, percent-encoding, empty or extra path segments; all names validated.
    pub fn parse(uri: &str) -> Result<Self, CertError> {
        let reject = |reason: &str| CertError::InvalidSpiffeId {
            uri: uri.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| reject("must start with \"spiffe://\""))?;
        if rest.contains(['?', '#']) {
            return Err(reject("query and fragment are not allowed"));
        }
        if rest.contains('%') {
            return Err(reject("percent-encoding is not allowed"));
        }
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| reject("missing path /participant/<id>"))?;
        validate_trust_domain(trust_domain).map_err(|e| reject(&e.to_string()))?;
        let segments: Vec<&str> = path.split('/').collect();
        let (participant, agent) = match segments.as_slice() {
            ["participant", id] => (*id, None),
            ["participant", id, "agent", agent] => (*id, Some(*agent)),
            _ => {
                return Err(reject(
                    "path must be /participant/<id> or /participant/<id>/agent/<agent>",
                ));
            }
        };
        validate_participant_id(participant).map_err(|e| reject(&e.to_string()))?;
        if let Some(agent) = agent {
            validate_agent_id(agent).map_err(|e| reject(&e.to_string()))?;
        }
        Ok(SpiffeId {
            trust_domain: trust_domain.to_owned(),
            participant: participant.to_owned(),
            agent: agent.map(str::to_owned),
        })
    }

    /// The URI of the trust domain itself, `spiffe://<trust-domain>`, as carried by the CA.
    pub fn trust_domain_uri(trust_domain: &str) -> String {
        format!("{SCHEME}{trust_domain}")
    }
}

impl fmt::Display for SpiffeId {
    /// Writes the URI form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/participant/{}",
            self.trust_domain, self.participant
        )?;
        if let Some(agent) = &self.agent {
            write!(f, "/agent/{agent}")?;
        }
        Ok(())
    }
}

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// Checks a participant id: `^[a-z0-9][a-z0-9-]{1,62}$` (e.g. `caf`, `mairie-lyon`).
pub fn validate_participant_id(id: &str) -> Result<(), CertError> {
    let b = id.as_bytes();
    let ok = (2..=63).contains(&b.len())
        && is_lower_alnum(b[0])
        && b[1..].iter().all(|&c| is_lower_alnum(c) || c == b'-');
    if ok {
        Ok(())
    } else {
        Err(CertError::InvalidParticipantId(id.to_owned()))
    }
}

/// Checks an agent id: `^[a-z0-9][a-z0-9._-]{0,62}$` (e.g. `a.martin`), without `..`, not
/// ending with `.`, so that it is also a safe file name.
pub fn validate_agent_id(id: &str) -> Result<(), CertError> {
    let b = id.as_bytes();
    let ok = (1..=63).contains(&b.len())
        && is_lower_alnum(b[0])
        && b[1..]
            .iter()
            .all(|&c| is_lower_alnum(c) || matches!(c, b'.' | b'_' | b'-'))
        && !id.contains("..")
        && !id.ends_with('.');
    if ok {
        Ok(())
    } else {
        Err(CertError::InvalidAgentId(id.to_owned()))
    }
}

/// Checks a trust domain: a lowercase DNS-like name (e.g. `unefois.test`): dot-separated labels
/// of 1 to 63 characters in `[a-z0-9-]` that neither start nor end with `-`, 253 characters at most.
pub fn validate_trust_domain(td: &str) -> Result<(), CertError> {
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        (1..=63).contains(&b.len())
            && b.iter().all(|&c| is_lower_alnum(c) || c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    if !td.is_empty() && td.len() <= 253 && td.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(CertError::InvalidTrustDomain(td.to_owned()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let p = SpiffeId::participant("unefois.test", "caf").unwrap();
        assert_eq!(p.to_string(), "spiffe://unefois.test/participant/caf");
        assert_eq!(SpiffeId::parse(&p.to_string()).unwrap(), p);
        let a = SpiffeId::agent("unefois.test", "mediation-x", "a.martin").unwrap();
        assert_eq!(
            a.to_string(),
            "spiffe://unefois.test/participant/mediation-x/agent/a.martin"
        );
        assert_eq!(SpiffeId::parse(&a.to_string()).unwrap(), a);
    }

    #[test]
    fn parse_rejects_malformed_uris() {
        let long = "a".repeat(64);
        let rejected = [
            "https://unefois.test/participant/caf",
            "SPIFFE://unefois.test/participant/caf",
            "spiffe://Unefois.test/participant/caf",
            "spiffe://unefois.test/participant/CAF",
            "spiffe://unefois.test/Participant/caf",
            "spiffe://unefois.test/participant/caf/extra",
            "spiffe://unefois.test/participant/caf/agent",
            "spiffe://unefois.test/participant/caf/agent/a/b",
            "spiffe://unefois.test/participant/caf/",
            "spiffe://unefois.test/participant/",
            "spiffe://unefois.test/participant",
            "spiffe://unefois.test/",
            "spiffe://unefois.test",
            "spiffe:///participant/caf",
            "spiffe://unefois.test/participant/../x",
            "spiffe://unefois.test/participant/caf/../dgfip",
            "spiffe://unefois.test/participant/caf/agent/..",
            "spiffe://unefois.test/participant/caf?x=1",
            "spiffe://unefois.test/participant/caf#frag",
            "spiffe://unefois.test/participant/c%61f",
            "spiffe://unefois.test:443/participant/caf",
            "spiffe://user@unefois.test/participant/caf",
            "spiffe://unefois.test//participant/caf",
            " spiffe://unefois.test/participant/caf",
            "spiffe://unefois.test/participant/caf ",
            &format!("spiffe://unefois.test/participant/{long}"),
            &format!("spiffe://unefois.test/participant/caf/agent/{long}"),
        ];
        for uri in rejected {
            assert!(SpiffeId::parse(uri).is_err(), "accepted {uri:?}");
        }
        let max = "a".repeat(63);
        assert!(SpiffeId::parse(&format!("spiffe://unefois.test/participant/{max}")).is_ok());
    }

    #[test]
    fn participant_ids() {
        for ok in ["caf", "dgfip", "mairie-lyon", "ab", "0a", "a-"] {
            assert!(validate_participant_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a",
            "-ab",
            "Caf",
            "ca_f",
            "ca.f",
            "caf/x",
            "é-a",
            &"a".repeat(64),
        ] {
            assert!(validate_participant_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn agent_ids() {
        for ok in ["a", "a.martin", "jean-pierre_2", "x.y.z"] {
            assert!(validate_agent_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".a",
            "a..b",
            "a.",
            "A.martin",
            "a/b",
            "-a",
            &"a".repeat(64),
        ] {
            assert!(validate_agent_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn trust_domains() {
        for ok in ["unefois.test", "localhost", "a-b.example.fr"] {
            assert!(validate_trust_domain(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Unefois.test",
            "a..b",
            ".a",
            "a.",
            "-a.b",
            "a_b.test",
            "a:1",
        ] {
            assert!(validate_trust_domain(bad).is_err(), "{bad}");
        }
    }
}
