//! An agent's login at the people's pages: the ID token of an agents' identity provider of the
//! registry (ProConnect-like) verified as the citizens' are (signature by `kid`, issuer,
//! audience — the pages' client id there —, `azp`, `exp`, `nbf`, freshness), plus what an
//! agent's login needs: a second factor (`acr` among the provider's multi-factor values, or
//! `amr` listing `mfa`, RFC 8176), and an enrolment in the registry that says as whom they act.
//! A citizen's token never logs an agent in: their issuers differ (the registry refuses one
//! issuer for both).

use serde::Deserialize;
use time::OffsetDateTime;

use crate::identity::{Audience, IdentityError, audience_is, signed_claims, usable_until};
use crate::registry::{EnrolledAgent, Registry};

/// Why an agent's ID token does not log them in.
#[derive(Debug, thiserror::Error)]
pub enum AgentLoginError {
    /// The token itself does not verify.
    #[error(transparent)]
    Token(#[from] IdentityError),
    /// The agent authenticated with one factor only.
    #[error("the agent's login used a single factor: a second factor (acr or amr) is required")]
    SingleFactor,
    /// Nobody is enrolled under this `sub` at this provider.
    #[error("this agent is not enrolled in the registry")]
    NotEnrolled,
}

/// An agent whose login verified.
#[derive(Clone, Debug)]
pub struct SignedInAgent {
    /// Their enrolment: as whom they act.
    pub enrolled: EnrolledAgent,
    /// The `nonce` the token carries, for the login to check.
    pub nonce: Option<String>,
    /// Until when the token itself is usable (Unix seconds).
    pub usable_until: i64,
}

#[derive(Deserialize)]
struct Claims {
    aud: Audience,
    #[serde(default)]
    azp: Option<String>,
    sub: String,
    exp: i64,
    iat: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    acr: Option<String>,
    #[serde(default)]
    amr: Vec<String>,
}

/// Verifies an agent's ID token at `now`: who is enrolled under it, if they used a second
/// factor.
pub fn verify(
    token: &str,
    registry: &Registry,
    now: OffsetDateTime,
) -> Result<SignedInAgent, AgentLoginError> {
    let mut provider = None;
    let claims: Claims = signed_claims(token, |iss| {
        let p = registry.agent_identity_provider_by_issuer(iss)?;
        provider = Some(p);
        Some((p.issuer.as_str(), &p.keys))
    })?;
    let provider = provider.ok_or(IdentityError::UnknownIssuer)?;
    audience_is(&claims.aud, claims.azp.as_deref(), &provider.client_id)?;
    let usable_until = usable_until(
        claims.exp,
        claims.iat,
        claims.nbf,
        provider.max_token_age_seconds,
        now,
    )?;
    let by_acr = claims
        .acr
        .as_deref()
        .is_some_and(|acr| provider.multi_factor_acr.iter().any(|v| v == acr));
    let by_amr = claims.amr.iter().any(|m| m == "mfa");
    if !by_acr && !by_amr {
        return Err(AgentLoginError::SingleFactor);
    }
    let enrolled = registry
        .enrolled_agent(&provider.id, &claims.sub)
        .ok_or(AgentLoginError::NotEnrolled)?
        .clone();
    Ok(SignedInAgent {
        enrolled,
        nonce: claims.nonce,
        usable_until,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Agents' tokens of the development agents' provider of the sample registry, one case a
    //! line: what a claim is set to (or removed), and what the login says.

    use serde_json::{Value, json};
    use time::macros::datetime;

    use super::*;
    use crate::idp::dev;

    const NOW: OffsetDateTime = datetime!(2026-06-01 12:00 UTC);

    fn outcome(token: &str) -> String {
        let registry = crate::test_support::sample_registry();
        match verify(token, &registry, NOW) {
            Ok(a) => format!("ok {}/{}", a.enrolled.participant, a.enrolled.agent),
            Err(AgentLoginError::Token(e)) => format!("{e:?}")
                .split(['(', ' '])
                .next()
                .unwrap()
                .to_string(),
            Err(e) => format!("{e:?}"),
        }
    }

    fn token(edit: Value) -> String {
        let mut claims = dev::agent_claims("agent-marie", "unefois-pages", NOW, true);
        for (k, v) in edit.as_object().unwrap() {
            match v {
                Value::Null => claims.as_object_mut().unwrap().remove(k),
                v => claims.as_object_mut().unwrap().insert(k.clone(), v.clone()),
            };
        }
        crate::test_support::committed_dev_key()
            .sign(&claims)
            .unwrap()
    }

    #[test]
    fn an_agent_logs_in_only_enrolled_with_a_second_factor() {
        let cases: &[(Value, &str)] = &[
            (json!({}), "ok france-services-lyon/marie.dupont"),
            (json!({"sub": "agent-cnil"}), "ok cnil/controleur.1"),
            (json!({"sub": "nobody"}), "NotEnrolled"),
            (json!({"acr": "eidas1", "amr": ["pwd"]}), "SingleFactor"),
            (json!({"acr": null, "amr": null}), "SingleFactor"),
            (
                json!({"acr": "eidas1", "amr": ["pwd", "mfa"]}),
                "ok france-services-lyon/marie.dupont",
            ),
            (
                json!({"acr": "eidas3", "amr": null}),
                "ok france-services-lyon/marie.dupont",
            ),
            (json!({"aud": "espace-usager"}), "WrongAudience"),
            (
                json!({"aud": ["unefois-pages", "other"]}),
                "NotAuthorizedParty",
            ),
            (json!({"iss": dev::ISSUER}), "UnknownIssuer"),
            (json!({"exp": NOW.unix_timestamp() - 120}), "Expired"),
            (json!({"nbf": NOW.unix_timestamp() + 600}), "NotYetValid"),
            (json!({"iat": NOW.unix_timestamp() - 3_600}), "Stale"),
        ];
        for (edit, expect) in cases {
            assert_eq!(outcome(&token(edit.clone())), *expect, "{edit}");
        }
    }

    #[test]
    fn a_citizens_token_never_logs_an_agent_in() {
        let claims = dev::claims("test:alice", "unefois-pages", NOW).unwrap();
        let token = crate::test_support::committed_dev_key()
            .sign(&claims)
            .unwrap();
        assert_eq!(outcome(&token), "UnknownIssuer");
    }
}
