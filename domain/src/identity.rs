//! Identity evidence: the citizen's OIDC ID token, signed by an identity provider of the
//! registry, checked here (signature by `kid`, issuer, audience of the calling guichet, expiry,
//! freshness) before the broker derives the `pivot:` subject from its identity claims
//! (FranceConnect's, normalised as docs/subjects.md documents).
//!
//! In a development federation (`allow_test_subjects = true`) a token may instead carry
//! `unefois_test_subject` (`test:alice`): the development identity provider of examples/dev-idp
//! mints such tokens for the fictitious people of the sample datasets. Never in production.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::registry::{Participant, Registry};
use crate::subject::{PivotIdentity, Subject, SubjectError};

/// Clock skew tolerated on `exp` and `iat`, in seconds.
pub const LEEWAY_SECONDS: i64 = 60;

/// Largest ID token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why an ID token is not identity evidence.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Not a JWS compact token this broker can read.
    #[error("the ID token is malformed: {0}")]
    Malformed(String),
    /// An algorithm other than EdDSA, ES256 or RS256.
    #[error("the ID token's algorithm {0:?} is not accepted (EdDSA, ES256 or RS256)")]
    Algorithm(String),
    /// The issuer is not an identity provider of the registry.
    #[error("the ID token's issuer is not an identity provider of this federation")]
    UnknownIssuer,
    /// No key of the provider has the token's `kid`.
    #[error("the identity provider has no key {0:?}")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("the ID token's signature does not verify")]
    BadSignature,
    /// The token is for another audience.
    #[error("the ID token is not for this guichet's audience {0:?}")]
    WrongAudience(String),
    /// The token names several audiences and another party (`azp`) it was issued to.
    #[error(
        "the ID token was issued to another party than this guichet ({0:?}): a token listing \
         several audiences must name this guichet as its authorized party (azp)"
    )]
    NotAuthorizedParty(String),
    /// `nbf` is still in the future.
    #[error("the ID token is not valid yet (nbf)")]
    NotYetValid,
    /// `exp` has passed.
    #[error("the ID token has expired")]
    Expired,
    /// `iat` is older than the provider's maximum token age.
    #[error("the ID token was issued more than {0} s ago")]
    Stale(u64),
    /// `iat` is in the future.
    #[error("the ID token was issued in the future")]
    IssuedInFuture,
    /// The identity claims do not make a subject.
    #[error("the ID token's identity claims are not usable: {0}")]
    Claims(String),
    /// The token already proved as many acts as its identity provider allows.
    #[error(
        "this ID token was already used for {0} acts, the most its identity provider allows: \
         a token serves one sitting; the citizen must log in again"
    )]
    Exhausted(u32),
    /// The token was issued before this broker started: the count of its acts was not kept.
    #[error(
        "this ID token was issued before the broker restarted, which does not remember how \
         many acts it proved: the citizen must log in again"
    )]
    IssuedBeforeRestart,
    /// Too many tokens are in use at once to count one more.
    #[error("too many ID tokens are in use at once; retry shortly")]
    TooManyInUse,
}

/// Identity evidence that verified: who it proves, and what counting its acts needs.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The person it proves.
    pub subject: Subject,
    /// SHA-256 of what its signature covers (`header.payload`): its identity for counting its
    /// acts (never recorded), the same for every spelling of its signature.
    pub digest: [u8; 32],
    /// `iat`, Unix seconds.
    pub issued_at: i64,
    /// Until when it can be presented (`exp` plus the leeway), Unix seconds.
    pub usable_until: i64,
    /// The most acts its identity provider allows one token.
    pub max_acts: u32,
    /// The `nonce` it carries, if any: a login that asked for one checks it (OpenID Connect
    /// Core 3.1.3.7).
    pub nonce: Option<String>,
    /// `auth_time`, Unix seconds, if it carries one: when the person last authenticated at
    /// the provider. A login that asked for a fresh authentication (`max_age`) checks it
    /// (OpenID Connect Core 3.1.2.1, 3.1.3.7).
    pub auth_time: Option<i64>,
    /// The person's name (`given_name family_name`) when the token carries it: shown to the
    /// agent and the person at a mediator's desk, kept in memory only, never recorded.
    pub display_name: Option<String>,
}

/// `aud`: one audience or several.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, aud: &str) -> bool {
        match self {
            Audience::One(a) => a == aud,
            Audience::Many(all) => all.iter().any(|a| a == aud),
        }
    }
}

#[derive(Deserialize)]
struct Issuer {
    iss: String,
}

#[derive(Deserialize)]
struct Claims {
    aud: Audience,
    exp: i64,
    iat: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
    /// A NumericDate (a number, perhaps with a fraction): read leniently, as only the
    /// desk's login checks it.
    #[serde(default)]
    auth_time: Option<serde_json::Value>,
    family_name: Option<String>,
    given_name: Option<String>,
    birthdate: Option<String>,
    gender: Option<String>,
    birthplace: Option<String>,
    birthcountry: Option<String>,
    unefois_test_subject: Option<String>,
}

fn accepted(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::EdDSA | Algorithm::ES256 | Algorithm::RS256)
}

/// Verifies `token` as identity evidence presented by `guichet` at `now`, and returns what it
/// proves.
pub fn verify(
    token: &str,
    guichet: &Participant,
    registry: &Registry,
    now: OffsetDateTime,
) -> Result<Verified, IdentityError> {
    let mut provider = None;
    let claims: Claims = signed_claims(token, |iss| {
        let p = registry.identity_provider_by_issuer(iss)?;
        provider = Some(p);
        Some((p.issuer.as_str(), &p.keys))
    })?;
    let provider = provider.ok_or(IdentityError::UnknownIssuer)?;
    audience_is(&claims.aud, claims.azp.as_deref(), guichet.audience())?;
    let usable_until = usable_until(
        claims.exp,
        claims.iat,
        claims.nbf,
        provider.max_token_age_seconds,
        now,
    )?;
    Ok(Verified {
        subject: subject_of(&claims, registry.allow_test_subjects())?,
        // Not the whole token: an ECDSA signature (r, s) also verifies as (r, n - s), so the
        // same signed token could be spelled twice, each with a fresh count.
        digest: <sha2::Sha256 as sha2::Digest>::digest(signing_input(token).as_bytes()).into(),
        issued_at: claims.iat,
        usable_until,
        max_acts: provider.max_acts_per_token,
        nonce: claims.nonce.clone(),
        auth_time: claims
            .auth_time
            .as_ref()
            .and_then(|t| t.as_i64().or_else(|| t.as_f64().map(|f| f as i64))),
        display_name: display_name(claims.given_name.as_deref(), claims.family_name.as_deref()),
    })
}

/// What the signature of a JWS compact `token` covers: its text up to its last '.'.
fn signing_input(token: &str) -> &str {
    token
        .rsplit_once('.')
        .map_or(token, |(input, _signature)| input)
}

/// How a person is named on a page at a desk (« Marie Dupont »), from their ID token's
/// `given_name` and `family_name`, when it has them.
fn display_name(given: Option<&str>, family: Option<&str>) -> Option<String> {
    let name: String = [given, family]
        .into_iter()
        .flatten()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .take(120)
        .collect();
    (!name.is_empty()).then_some(name)
}

/// The claims of a JWS compact `token`, once its signature verifies with the key its `kid`
/// names among the keys `keys_of` gives for its issuer (`iss`, read unverified only to choose
/// them; `keys_of` answers the issuer's own spelling, which the verified `iss` must equal).
/// Shared by the citizens' identity evidence and the agents' logins (`agent_identity`).
pub(crate) fn signed_claims<'r, C: serde::de::DeserializeOwned>(
    token: &str,
    keys_of: impl FnOnce(&str) -> Option<(&'r str, &'r jsonwebtoken::jwk::JwkSet)>,
) -> Result<C, IdentityError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(IdentityError::Malformed("too large".into()));
    }
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| IdentityError::Malformed(e.to_string()))?;
    if !accepted(header.alg) {
        return Err(IdentityError::Algorithm(format!("{:?}", header.alg)));
    }
    // The issuer, read before verification, only selects the keys to verify with.
    let unverified: Issuer = jsonwebtoken::dangerous::insecure_decode_claims(token)
        .map_err(|e| IdentityError::Malformed(e.to_string()))?;
    let (issuer, keys) = keys_of(&unverified.iss).ok_or(IdentityError::UnknownIssuer)?;
    let kid = header.kid.unwrap_or_default();
    let jwk: &Jwk = keys
        .keys
        .iter()
        .find(|k| k.common.key_id.as_deref() == Some(kid.as_str()))
        .ok_or_else(|| IdentityError::UnknownKey(kid.chars().take(64).collect()))?;
    if let Some(alg) = jwk.common.key_algorithm
        && format!("{alg:?}") != format!("{:?}", header.alg)
    {
        return Err(IdentityError::BadSignature);
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| IdentityError::BadSignature)?;
    let mut validation = Validation::new(header.alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let data =
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature
                | K::InvalidAlgorithm
                | K::InvalidKeyFormat
                | K::InvalidEcdsaKey
                | K::InvalidEddsaKey
                | K::InvalidRsaKey(_) => IdentityError::BadSignature,
                _ => IdentityError::Malformed(e.to_string()),
            }
        })?;
    if data.claims.get("iss").and_then(serde_json::Value::as_str) != Some(issuer) {
        return Err(IdentityError::UnknownIssuer);
    }
    serde_json::from_value(data.claims).map_err(|e| IdentityError::Malformed(claims_error(&e)))
}

/// What is wrong with an ID token's claims, without quoting them: serde's message for a claim
/// of the wrong type quotes its value (`invalid type: string "DUPONT"`), and a refusal is
/// logged and sent to the caller. A missing or repeated claim is named (its name is not
/// personal).
fn claims_error(e: &serde_json::Error) -> String {
    let message = e.to_string();
    if message.starts_with("missing field") || message.starts_with("duplicate field") {
        message
    } else {
        "a claim is not of the expected type".to_string()
    }
}

/// Whether a token whose `aud` and `azp` are these was issued to `audience`: listed in `aud`
/// and, when `aud` lists several or `azp` is present, named by `azp` (OpenID Connect Core
/// 3.1.3.7): a token one party received never serves another.
pub(crate) fn audience_is(
    aud: &Audience,
    azp: Option<&str>,
    audience: &str,
) -> Result<(), IdentityError> {
    if !aud.contains(audience) {
        return Err(IdentityError::WrongAudience(audience.to_string()));
    }
    let several = matches!(aud, Audience::Many(all) if all.len() > 1);
    match azp {
        Some(azp) if azp != audience => Err(IdentityError::NotAuthorizedParty(
            azp.chars().take(64).collect(),
        )),
        None if several => Err(IdentityError::NotAuthorizedParty(String::new())),
        _ => Ok(()),
    }
}

/// Until when (Unix seconds) a token of these times is usable at `now`, given its provider's
/// `max_age` seconds after issuance, or why it is not: expired, not valid yet, issued in the
/// future, or too old.
pub(crate) fn usable_until(
    exp: i64,
    iat: i64,
    nbf: Option<i64>,
    max_age: u64,
    now: OffsetDateTime,
) -> Result<i64, IdentityError> {
    let now = now.unix_timestamp();
    if exp.saturating_add(LEEWAY_SECONDS) <= now {
        return Err(IdentityError::Expired);
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECONDS)) {
        return Err(IdentityError::NotYetValid);
    }
    if iat > now.saturating_add(LEEWAY_SECONDS) {
        return Err(IdentityError::IssuedInFuture);
    }
    let max_age_s = i64::try_from(max_age).unwrap_or(i64::MAX);
    if now.saturating_sub(iat) > max_age_s.saturating_add(LEEWAY_SECONDS) {
        return Err(IdentityError::Stale(max_age));
    }
    // Usable while both its expiry and its freshness allow it.
    Ok(exp
        .min(iat.saturating_add(max_age_s))
        .saturating_add(LEEWAY_SECONDS))
}

fn subject_of(claims: &Claims, allow_test: bool) -> Result<Subject, IdentityError> {
    let bad = |e: SubjectError| IdentityError::Claims(e.to_string());
    if let Some(test) = &claims.unefois_test_subject {
        if !allow_test || !test.starts_with("test:") {
            return Err(IdentityError::Claims(
                "unefois_test_subject is accepted only in development federations".into(),
            ));
        }
        return Subject::parse(test, true).map_err(bad);
    }
    let need = |name: &'static str, v: &Option<String>| {
        v.clone()
            .ok_or_else(|| IdentityError::Claims(format!("{name} is missing")))
    };
    let family_name = need("family_name", &claims.family_name)?;
    let given_names = need("given_name", &claims.given_name)?;
    let birthdate = need("birthdate", &claims.birthdate)?;
    let gender = need("gender", &claims.gender)?;
    let birthplace = claims.birthplace.clone().unwrap_or_default();
    let birthcountry = need("birthcountry", &claims.birthcountry)?;
    Subject::pivot(&PivotIdentity {
        family_name: &family_name,
        given_names: &given_names,
        birthdate: &birthdate,
        gender: &gender,
        birthplace: &birthplace,
        birthcountry: &birthcountry,
    })
    .map_err(bad)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! ID tokens of the development identity provider, one case a line: what a claim is set
    //! to (or removed), and what the guichet `mairie-lyon` of the sample registry is told.

    use serde_json::{Value, json};
    use time::macros::datetime;

    use super::*;
    use crate::idp::dev::{self, DevKey};

    const NOW: OffsetDateTime = datetime!(2026-06-01 12:00 UTC);
    const PIVOT: &str = "pivot:DUPONT|MARIE|1980-01-02|F|69123|99100";

    /// What `verify` says of a token of `claims` signed with `key`: `ok <subject>` or the
    /// error's variant.
    fn outcome(token: &str) -> String {
        let registry = crate::test_support::sample_registry();
        let guichet = registry.participant("mairie-lyon").unwrap();
        match verify(token, guichet, &registry, NOW) {
            Ok(v) => format!("ok {}", v.subject.as_str()),
            Err(e) => format!("{e:?}")
                .split(['(', ' '])
                .next()
                .unwrap()
                .to_string(),
        }
    }

    /// A token for `subject` and the guichet, issued at [`NOW`], with `edit` applied to its
    /// claims (a `null` removes one), signed by the committed development key.
    fn token(subject: &str, edit: Value) -> String {
        let mut claims = dev::claims(subject, "mairie-lyon", NOW).unwrap();
        for (k, v) in edit.as_object().unwrap() {
            match v {
                Value::Null => claims.as_object_mut().unwrap().remove(k),
                v => claims.as_object_mut().unwrap().insert(k.clone(), v.clone()),
            };
        }
        let key = crate::test_support::committed_dev_key();
        key.sign(&claims).unwrap()
    }

    fn check(subject: &str, edit: Value, expect: &str) {
        assert_eq!(
            outcome(&token(subject, edit.clone())),
            expect,
            "{subject} {edit}"
        );
    }

    #[test]
    fn id_tokens_prove_a_person_to_their_own_guichet_while_fresh() {
        let t = NOW.unix_timestamp();
        check("test:alice", json!({}), "ok test:alice");
        check(PIVOT, json!({}), &format!("ok {PIVOT}"));
        // Audience, and the authorized party when several.
        check(
            "test:alice",
            json!({"aud": "another-guichet"}),
            "WrongAudience",
        );
        check(
            "test:alice",
            json!({"aud": ["mairie-lyon", "caf"]}),
            "NotAuthorizedParty",
        );
        check(
            "test:alice",
            json!({"aud": ["mairie-lyon", "caf"], "azp": "mairie-lyon"}),
            "ok test:alice",
        );
        check(
            "test:alice",
            json!({"aud": ["mairie-lyon", "caf"], "azp": "caf"}),
            "NotAuthorizedParty",
        );
        check("test:alice", json!({"azp": "caf"}), "NotAuthorizedParty");
        // Time, with a minute's leeway each way.
        check("test:alice", json!({"exp": t - 30}), "ok test:alice");
        check("test:alice", json!({"exp": t - 61}), "Expired");
        check("test:alice", json!({"nbf": t + 30}), "ok test:alice");
        check("test:alice", json!({"nbf": t + 120}), "NotYetValid");
        check("test:alice", json!({"iat": t + 120}), "IssuedInFuture");
        check(
            "test:alice",
            json!({"iat": t - 600 - 61, "exp": t + 300}),
            "Stale",
        );
        check(
            "test:alice",
            json!({"iat": t - 600 + 30, "exp": t + 300}),
            "ok test:alice",
        );
        // Issuer and identity claims.
        check(
            "test:alice",
            json!({"iss": "https://idp.example"}),
            "UnknownIssuer",
        );
        check(PIVOT, json!({"birthcountry": null}), "Claims");
        check(PIVOT, json!({"birthdate": "02/01/1980"}), "Claims");
        check("test:alice", json!({"exp": null}), "Malformed");
    }

    /// A claim of the wrong type is refused without its value in the message, which is logged
    /// and sent to the caller (serde's own message quotes it).
    #[test]
    fn a_claim_of_the_wrong_type_is_not_quoted() {
        for (claim, value) in [
            ("exp", json!("DUPONT")),
            ("exp", json!(["MARIE"])),
            ("iat", json!({"name": "Lyon 69123"})),
        ] {
            let registry = crate::test_support::sample_registry();
            let guichet = registry.participant("mairie-lyon").unwrap();
            let refused = verify(
                &token("test:alice", json!({ claim: value })),
                guichet,
                &registry,
                NOW,
            )
            .err()
            .unwrap()
            .to_string();
            assert!(refused.contains("malformed"), "{refused}");
            for quoted in ["DUPONT", "MARIE", "69123"] {
                assert!(!refused.contains(quoted), "{refused}");
            }
        }
    }

    #[test]
    fn only_the_providers_own_keys_and_algorithms_sign_evidence() {
        let claims = dev::claims("test:alice", "mairie-lyon", NOW).unwrap();
        let committed = crate::test_support::committed_dev_key();
        // Another key under the committed key's id; a key id the provider does not have.
        let forged = DevKey::from_seed(&committed.kid, [9; 32])
            .sign(&claims)
            .unwrap();
        assert_eq!(outcome(&forged), "BadSignature");
        let unknown = DevKey::from_seed("another-kid", [9; 32])
            .sign(&claims)
            .unwrap();
        assert_eq!(outcome(&unknown), "UnknownKey");
        // An HMAC "signature" (the public key as a shared secret) is refused before any check.
        let b64 = |v: &Value| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let hs256 = format!(
            "{}.{}.c2ln",
            b64(&json!({"alg": "HS256", "kid": committed.kid})),
            b64(&claims)
        );
        assert_eq!(outcome(&hs256), "Algorithm");
        assert_eq!(outcome("not a token"), "Malformed");
        assert_eq!(outcome(&"a".repeat(MAX_TOKEN_BYTES + 1)), "Malformed");
        // A token altered after signing.
        let good = committed.sign(&claims).unwrap();
        let mut parts: Vec<String> = good.split('.').map(String::from).collect();
        let mut altered = claims.clone();
        altered["unefois_test_subject"] = "test:bob".into();
        parts[1] = b64(&altered);
        assert_eq!(outcome(&parts.join(".")), "BadSignature");
    }

    #[test]
    fn an_es256_tokens_acts_are_counted_once_whatever_the_spelling_of_its_signature() {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING as P256, EcdsaKeyPair, KeyPair};

        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&P256, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&P256, pkcs8.as_ref(), &rng).unwrap();
        // The public key is 0x04 ‖ x ‖ y.
        let (x, y) = key.public_key().as_ref()[1..].split_at(32);
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "p256",
            "x": B64.encode(x), "y": B64.encode(y),
        }]});
        let folder = crate::registry::MemoryFolder::new([("jwks.json", jwks.to_string().into())]);
        let text = "[federation]\ntrust_domain = \"unefois.test\"\n\
            [[participants]]\nid = \"mairie-lyon\"\nname = \"Lyon\"\nroles = [\"guichet\"]\n\
            [[identity_providers]]\nid = \"p256\"\nissuer = \"https://idp.test\"\njwks = \"jwks.json\"\n";
        let registry =
            Registry::parse(std::path::Path::new("reg.toml"), &folder, text.as_bytes()).unwrap();
        let guichet = registry.participant("mairie-lyon").unwrap();
        // A token for PIVOT, and its signature (r ‖ s, 32 bytes each).
        let sign = || {
            let mut claims = dev::claims(PIVOT, "mairie-lyon", NOW).unwrap();
            claims["iss"] = "https://idp.test".into();
            let header = json!({"alg": "ES256", "kid": "p256"});
            let input = format!(
                "{}.{}",
                B64.encode(header.to_string()),
                B64.encode(claims.to_string())
            );
            let signature = key.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec();
            (input, signature)
        };

        let (input, signature) = sign();
        // The other signature of the same token: (r, n - s), n the order of P-256.
        let n = hex::decode("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551")
            .unwrap();
        let mut other = signature.clone();
        let mut borrow = 0;
        for i in (0..32).rev() {
            let d = i16::from(n[i]) - i16::from(signature[32 + i]) - borrow;
            borrow = i16::from(d < 0);
            other[32 + i] = d.rem_euclid(256).to_le_bytes()[0];
        }
        let token = format!("{input}.{}", B64.encode(&signature));
        let other = format!("{input}.{}", B64.encode(&other));
        assert_ne!(token, other);
        let first = verify(&token, guichet, &registry, NOW).unwrap();
        assert_eq!(first.subject.as_str(), PIVOT);
        match verify(&other, guichet, &registry, NOW) {
            Ok(second) => assert_eq!(first.digest, second.digest, "one token, one count"),
            Err(e) => assert!(matches!(e, IdentityError::BadSignature), "{e:?}"),
        }
        // Another token of the same person has a count of its own.
        let (input, signature) = sign();
        let another = format!("{input}.{}", B64.encode(&signature));
        let another = verify(&another, guichet, &registry, NOW).unwrap();
        assert_ne!(first.digest, another.digest);
    }
}
