//! The provider's proof of origin in the attestation (docs/origin.md).
//!
//! The adapter has verified the provider's signature (`unefois_adapters::origin`); here the
//! broker decides what the attestation records of it. The provider's signed statement is
//! carried only when what it states is exactly what is released: then a consumer verifies
//! offline, with the provider's published keys, that the values came from the provider. When
//! the answer held more than is released (a derived claim computed from a source that is not
//! released, a claim the habilitation does not allow, a native HTTP body), carrying it would
//! release what the habilitation withholds: the attestation then records only that the broker
//! verified a signature, and by which key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use unefois_adapters::{Claims, Origin, Proof};

use crate::attestation::{PROOF_STATEMENT, PROOF_VERIFIED_BY_BROKER, ProviderOrigin};

/// The public key (`x`, base64url Ed25519) of examples/providers/python/origin-jwks.json, whose
/// private half is committed beside it: a registry that trusts it accepts answers anyone can
/// sign.
pub const EXAMPLE_PUBLIC_KEY_X: &str = "OWxZwkT1zD_bYDx0rXK_lnEmgB_NBZD4ZHqYKVJlQxc";

/// Whether `jwk` is the example provider's committed key, whatever its `kid`.
pub fn is_example_key(jwk: &jsonwebtoken::jwk::Jwk) -> bool {
    use jsonwebtoken::jwk::AlgorithmParameters;
    let AlgorithmParameters::OctetKeyPair(okp) = &jwk.algorithm else {
        return false;
    };
    let decode = |x: &str| B64.decode(x.trim_end_matches('=').as_bytes()).ok();
    decode(&okp.x).is_some_and(|x| Some(x) == decode(EXAMPLE_PUBLIC_KEY_X))
}

/// What an attestation records of a provider's verified signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The attestation's `origin`.
    pub origin: ProviderOrigin,
    /// The key of the carried statement's subject digest: for the consumer, beside the
    /// attestation (`FetchResponse.origin_subject_key`), never inside it.
    pub subject_key: Option<[u8; 32]>,
}

/// What an attestation records of a verified signature: the statement when it states exactly
/// the `released` claims (then also the key of its subject digest), otherwise only that the
/// broker verified it. `answered` are the claims the signature covers (the adapter checked that
/// a statement states exactly them).
pub fn recorded(origin: &Origin, answered: &Claims, released: &Claims) -> Recorded {
    let carried = match &origin.proof {
        Proof::Statement(statement) if answered == released => Some(statement.clone()),
        Proof::Statement(_) | Proof::Body => None,
    };
    Recorded {
        subject_key: carried.as_ref().map(|_| origin.subject_key),
        origin: ProviderOrigin {
            proof: if carried.is_some() {
                PROOF_STATEMENT
            } else {
                PROOF_VERIFIED_BY_BROKER
            }
            .to_string(),
            kid: origin.kid.clone(),
            alg: origin.alg.clone(),
            jkt: origin.jkt.clone(),
            statement: carried,
        },
    }
}

impl Recorded {
    /// The record for `released`, a part of the claims `held` it was made for (a pre-fill
    /// confirmed after a habilitation narrowed): the statement stays only if nothing was
    /// dropped.
    pub fn narrowed(&self, held: &Claims, released: &Claims) -> Recorded {
        if held == released {
            return self.clone();
        }
        self.verified_by_broker()
    }

    /// The same signature, recorded as verified by the broker only: its key, nothing of what
    /// was signed.
    fn verified_by_broker(&self) -> Recorded {
        Recorded {
            origin: ProviderOrigin {
                proof: PROOF_VERIFIED_BY_BROKER.to_string(),
                statement: None,
                ..self.origin.clone()
            },
            subject_key: None,
        }
    }

    /// The record for an attestation issued at `now` (Unix seconds) from a statement signed
    /// earlier (a pre-fill confirmed minutes after its preview): the statement stays only while
    /// its `iat` is within what a consumer's verifier accepts of the attestation's `issued_at`
    /// (docs/origin.md, [`unefois_adapters::origin::MAX_SKEW_SECONDS`], with a margin for the
    /// time to issue it); past that, only that the broker verified it.
    pub fn issued_at(&self, now: i64) -> Recorded {
        const MARGIN_SECONDS: i64 = 10;
        let fresh = self.origin.statement.as_deref().is_none_or(|jws| {
            statement_iat(jws).is_some_and(|iat| {
                iat.saturating_sub(now).saturating_abs()
                    <= unefois_adapters::origin::MAX_SKEW_SECONDS - MARGIN_SECONDS
            })
        });
        if fresh {
            return self.clone();
        }
        self.verified_by_broker()
    }
}

/// The `iat` of a compact JWS statement the adapter verified (its payload, read again).
fn statement_iat(jws: &str) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Iat {
        iat: i64,
    }
    let payload = jws.split('.').nth(1)?;
    let bytes = B64.decode(payload.trim_end_matches('=').as_bytes()).ok()?;
    serde_json::from_slice::<Iat>(&bytes).ok().map(|i| i.iat)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use unefois_adapters::ClaimValue;

    use super::*;

    #[test]
    fn the_example_key_is_the_committed_one() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/providers/python/origin-jwks.json");
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        assert!(is_example_key(&set.keys[0]));
    }

    #[test]
    fn the_statement_is_carried_only_when_it_states_what_is_released() {
        let origin = Origin {
            kid: "k1".into(),
            alg: "EdDSA".into(),
            jkt: "t".into(),
            proof: Proof::Statement("h.p.s".into()),
            subject_key: [9; 32],
        };
        let qf = Claims::from([("quotient_familial".into(), ClaimValue::Integer(700))]);
        let carried = recorded(&origin, &qf, &qf);
        assert_eq!(carried.origin.proof, PROOF_STATEMENT);
        assert_eq!(carried.origin.statement.as_deref(), Some("h.p.s"));
        assert_eq!(carried.subject_key, Some([9; 32]));
        assert_eq!(carried.narrowed(&qf, &qf), carried);

        // A derived claim released instead of its source: the source must not travel.
        let derived = Claims::from([("qf_inferieur_800".into(), ClaimValue::Boolean(true))]);
        let verified = recorded(&origin, &qf, &derived);
        assert_eq!(verified.origin.proof, PROOF_VERIFIED_BY_BROKER);
        assert_eq!(
            (verified.origin.statement, verified.subject_key),
            (None, None)
        );
        assert_eq!(verified.origin.kid, "k1");
        // Nor once a confirmation releases less than was held.
        let narrowed = carried.narrowed(&qf, &Claims::new());
        assert_eq!(narrowed.origin.proof, PROOF_VERIFIED_BY_BROKER);
        assert_eq!(
            (narrowed.origin.statement, narrowed.subject_key),
            (None, None)
        );

        // A native HTTP body is never carried.
        let body = Origin {
            proof: Proof::Body,
            ..origin
        };
        let verified = recorded(&body, &qf, &qf);
        assert_eq!(verified.origin.proof, PROOF_VERIFIED_BY_BROKER);
        assert_eq!(
            (verified.origin.statement, verified.subject_key),
            (None, None)
        );
    }

    #[test]
    fn a_statement_older_than_a_verifier_accepts_is_not_carried() {
        let now = 1_800_000_000;
        let signed_at = |iat: i64| {
            let payload = B64.encode(format!(r#"{{"iat":{iat},"nonce":"n"}}"#));
            Recorded {
                origin: ProviderOrigin {
                    proof: PROOF_STATEMENT.to_string(),
                    kid: "k".into(),
                    alg: "EdDSA".into(),
                    jkt: "j".into(),
                    statement: Some(format!("e30.{payload}.c2ln")),
                },
                subject_key: Some([1; 32]),
            }
        };
        for (iat, carried) in [
            (now, true),
            (now - 200, true),
            (now + 200, true),
            (now - 295, false),
            (now - 400, false),
            (now + 400, false),
        ] {
            let issued = signed_at(iat).issued_at(now);
            assert_eq!(issued.origin.statement.is_some(), carried, "{}", now - iat);
            assert_eq!(issued.subject_key.is_some(), carried);
            if !carried {
                assert_eq!(issued.origin.proof, PROOF_VERIFIED_BY_BROKER);
            }
        }
    }
}
