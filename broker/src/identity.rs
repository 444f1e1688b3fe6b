//! Identity evidence: the citizen's OIDC ID token, signed by an identity provider of the
//! registry, checked here (signature by `kid`, issuer, audience of the calling guichet, expiry,
//! freshness) before the broker derives the `pivot:` subject from its identity claims
//! (FranceConnect's, normalised as docs/subjects.md documents).
//!
//! In a development federation (`allow_test_subjects = true`) a token may instead carry
//! `unefois_test_subject` (`test:alice`): the development identity provider of examples/dev-idp
//! mints such tokens for the fictitious people of the sample datasets. Never in production.

use std::path::Path;

use jsonwebtoken::jwk::{Jwk, JwkSet};
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
    /// SHA-256 of the token's bytes: its identity for counting its acts (never recorded).
    pub digest: [u8; 32],
    /// `iat`, Unix seconds.
    pub issued_at: i64,
    /// Until when it can be presented (`exp` plus the leeway), Unix seconds.
    pub usable_until: i64,
    /// The most acts its identity provider allows one token.
    pub max_acts: u32,
}

/// `aud`: one audience or several.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
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
    iss: String,
    aud: Audience,
    exp: i64,
    iat: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    azp: Option<String>,
    family_name: Option<String>,
    given_name: Option<String>,
    birthdate: Option<String>,
    gender: Option<String>,
    birthplace: Option<String>,
    birthcountry: Option<String>,
    unefois_test_subject: Option<String>,
}

/// Reads a JWKS file (what a registry's `identity_providers[].jwks` names); every key needs a
/// `kid`.
pub fn load_jwks(path: &Path) -> Result<JwkSet, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let set: JwkSet = serde_json::from_slice(&bytes)
        .map_err(|e| format!("not a JWKS ({}): {e}", path.display()))?;
    if set.keys.is_empty() {
        return Err(format!("{} holds no key", path.display()));
    }
    for key in &set.keys {
        if key.common.key_id.as_deref().unwrap_or_default().is_empty() {
            return Err(format!("{}: every key needs a \"kid\"", path.display()));
        }
        DecodingKey::from_jwk(key).map_err(|e| format!("{}: unusable key: {e}", path.display()))?;
    }
    Ok(set)
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
    let provider = registry
        .identity_provider_by_issuer(&unverified.iss)
        .ok_or(IdentityError::UnknownIssuer)?;
    let kid = header.kid.unwrap_or_default();
    let jwk: &Jwk = provider
        .keys
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
    let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
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
    let claims = data.claims;
    if claims.iss != provider.issuer {
        return Err(IdentityError::UnknownIssuer);
    }
    let audience = guichet.audience();
    if !claims.aud.contains(audience) {
        return Err(IdentityError::WrongAudience(audience.to_string()));
    }
    // OpenID Connect Core 3.1.3.7: with several audiences, the party the token was issued to
    // (azp) must be this guichet; a token a citizen gave one guichet never serves another.
    let several = matches!(&claims.aud, Audience::Many(all) if all.len() > 1);
    match claims.azp.as_deref() {
        Some(azp) if azp != audience => {
            return Err(IdentityError::NotAuthorizedParty(
                azp.chars().take(64).collect(),
            ));
        }
        None if several => {
            return Err(IdentityError::NotAuthorizedParty(String::new()));
        }
        _ => {}
    }
    let now = now.unix_timestamp();
    if claims.exp.saturating_add(LEEWAY_SECONDS) <= now {
        return Err(IdentityError::Expired);
    }
    if claims
        .nbf
        .is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECONDS))
    {
        return Err(IdentityError::NotYetValid);
    }
    if claims.iat > now.saturating_add(LEEWAY_SECONDS) {
        return Err(IdentityError::IssuedInFuture);
    }
    let max_age = i64::try_from(provider.max_token_age_seconds).unwrap_or(i64::MAX);
    if now.saturating_sub(claims.iat) > max_age.saturating_add(LEEWAY_SECONDS) {
        return Err(IdentityError::Stale(provider.max_token_age_seconds));
    }
    // Usable while both its expiry and its freshness allow it.
    let usable_until = claims
        .exp
        .min(claims.iat.saturating_add(max_age))
        .saturating_add(LEEWAY_SECONDS);
    Ok(Verified {
        subject: subject_of(&claims, registry.allow_test_subjects())?,
        digest: <sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()).into(),
        issued_at: claims.iat,
        usable_until,
        max_acts: provider.max_acts_per_token,
    })
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

/// Checks the identity evidence a guichet (`caller`) presents for `subject` to read (a list,
/// an access history): the token is required, must verify, and must prove that very subject.
/// Acts that change state go through `crate::evidence`, which also counts them.
pub fn require(
    token: &str,
    caller: &crate::caller::Caller,
    registry: &Registry,
    subject: &Subject,
) -> Result<Verified, crate::error::ApiError> {
    let verified = proven(token, caller, registry)?;
    if verified.subject != *subject {
        return Err(crate::error::ApiError::SubjectMismatch);
    }
    Ok(verified)
}

/// What a guichet's (or mediation structure's) `caller` identity evidence proves.
pub fn proven(
    token: &str,
    caller: &crate::caller::Caller,
    registry: &Registry,
) -> Result<Verified, crate::error::ApiError> {
    use crate::error::ApiError;
    if token.is_empty() {
        return Err(ApiError::IdentityEvidenceRequired);
    }
    let guichet = registry
        .participant(&caller.participant)
        .ok_or_else(|| ApiError::UnknownParticipant(caller.participant.clone()))?;
    Ok(verify(token, guichet, registry, OffsetDateTime::now_utc())?)
}

/// The development identity provider: a PUBLIC Ed25519 key committed under examples/dev-idp/,
/// for the fictitious people of the sample registry. Its tokens prove nothing.
pub mod dev {
    use std::path::Path;

    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use ed25519_dalek::SigningKey;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::{Value, json};
    use time::OffsetDateTime;

    /// The issuer of the development identity provider.
    pub const ISSUER: &str = "https://idp.unefois.test";
    /// The public key (`x`, base64url Ed25519) of examples/dev-idp/jwks.json, whose private half
    /// is committed beside it: a registry that trusts it accepts tokens anyone can mint.
    pub const PUBLIC_KEY_X: &str = "JRh8iwRkOsltlbRp8YHfDfX5eBAqTWdJpfUYaUa1LOE";

    /// Whether `jwk` is the committed development key, whatever its `kid` (the key material is
    /// compared, not its spelling).
    pub fn is_committed_key(jwk: &jsonwebtoken::jwk::Jwk) -> bool {
        use jsonwebtoken::jwk::AlgorithmParameters;
        let AlgorithmParameters::OctetKeyPair(okp) = &jwk.algorithm else {
            return false;
        };
        let decode = |x: &str| B64.decode(x.trim_end_matches('=').as_bytes()).ok();
        decode(&okp.x).is_some_and(|x| Some(x) == decode(PUBLIC_KEY_X))
    }
    /// Lifetime of the tokens it mints, in seconds.
    pub const TOKEN_LIFETIME_SECONDS: i64 = 300;

    /// An Ed25519 signing key with its `kid`.
    pub struct DevKey {
        /// Key id, in the JWKS and the tokens' header.
        pub kid: String,
        signing: SigningKey,
    }

    #[derive(serde::Deserialize)]
    struct KeyFile {
        kid: String,
        d: String,
    }

    impl DevKey {
        /// Reads a key file: `{"kid": ..., "d": <base64url Ed25519 seed>}`.
        pub fn load(path: &Path) -> anyhow::Result<DevKey> {
            let file: KeyFile = serde_json::from_slice(&std::fs::read(path)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let seed: [u8; 32] = B64
                .decode(file.d.as_bytes())?
                .try_into()
                .map_err(|_| anyhow::anyhow!("{}: d must be 32 bytes", path.display()))?;
            Ok(DevKey::from_seed(&file.kid, seed))
        }

        /// A key from its 32-byte seed.
        pub fn from_seed(kid: &str, seed: [u8; 32]) -> DevKey {
            DevKey {
                kid: kid.to_string(),
                signing: SigningKey::from_bytes(&seed),
            }
        }

        /// A fresh random key.
        pub fn generate(kid: &str) -> anyhow::Result<DevKey> {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
            Ok(DevKey::from_seed(kid, seed))
        }

        /// The key file's JSON (secret).
        pub fn key_file(&self) -> Value {
            json!({ "kid": self.kid, "d": B64.encode(self.signing.to_bytes()) })
        }

        /// The public JWKS.
        pub fn jwks(&self) -> Value {
            json!({ "keys": [{
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": "EdDSA",
                "use": "sig",
                "kid": self.kid,
                "x": B64.encode(self.signing.verifying_key().as_bytes()),
            }]})
        }

        /// Signs `claims` as a JWS compact token (EdDSA).
        pub fn sign(&self, claims: &Value) -> anyhow::Result<String> {
            // PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410).
            let mut der = hex::decode("302e020100300506032b657004220420")?;
            der.extend_from_slice(&self.signing.to_bytes());
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = Some(self.kid.clone());
            Ok(jsonwebtoken::encode(
                &header,
                claims,
                &EncodingKey::from_ed_der(&der),
            )?)
        }
    }

    /// The claims of a token for `subject` (`test:` or canonical `pivot:`) and `audience`,
    /// issued at `now` by the development identity provider.
    pub fn claims(subject: &str, audience: &str, now: OffsetDateTime) -> anyhow::Result<Value> {
        claims_lasting(subject, audience, now, TOKEN_LIFETIME_SECONDS)
    }

    /// [`claims`] of a token valid for `lifetime_seconds` from `now` (the broker still refuses
    /// one issued longer ago than its identity provider's `max_token_age_seconds`).
    pub fn claims_lasting(
        subject: &str,
        audience: &str,
        now: OffsetDateTime,
        lifetime_seconds: i64,
    ) -> anyhow::Result<Value> {
        let iat = now.unix_timestamp();
        // A unique `jti`, as a real identity provider's tokens have: two logins in the same
        // second are two tokens, each with its own count of acts.
        let mut c = json!({
            "iss": ISSUER,
            "aud": audience,
            "iat": iat,
            "exp": iat.saturating_add(lifetime_seconds),
            "jti": uuid::Uuid::now_v7().to_string(),
        });
        let identity = if subject.starts_with("test:") {
            json!({ "sub": subject, "unefois_test_subject": subject })
        } else if let Some(value) = subject.strip_prefix("pivot:") {
            let f: Vec<&str> = value.split('|').collect();
            let [family, given, date, sex, place, country] = f[..] else {
                anyhow::bail!("not a canonical pivot: subject");
            };
            json!({
                "sub": hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(value.as_bytes())[..16]),
                "family_name": family,
                "given_name": given,
                "birthdate": date,
                "gender": if sex == "M" { "male" } else { "female" },
                "birthplace": place,
                "birthcountry": country,
            })
        } else {
            anyhow::bail!("the development identity provider knows test: and pivot: subjects");
        };
        if let (Some(c), Some(i)) = (c.as_object_mut(), identity.as_object()) {
            c.extend(i.clone());
        }
        Ok(c)
    }

    #[cfg(test)]
    #[allow(clippy::unwrap_used)]
    mod tests {
        use super::*;

        #[test]
        fn the_committed_key_is_recognised_whatever_its_kid() {
            let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dev-idp");
            let jwks = crate::identity::load_jwks(&examples.join("jwks.json")).unwrap();
            assert!(jwks.keys.iter().all(is_committed_key));
            let committed = DevKey::load(&examples.join("dev-signing-key.json")).unwrap();
            let mut renamed = committed.jwks();
            renamed["keys"][0]["kid"] = "another-kid".into();
            let renamed: jsonwebtoken::jwk::JwkSet = serde_json::from_value(renamed).unwrap();
            assert!(is_committed_key(&renamed.keys[0]));
            let other: jsonwebtoken::jwk::JwkSet =
                serde_json::from_value(DevKey::generate("k").unwrap().jwks()).unwrap();
            assert!(!is_committed_key(&other.keys[0]));
        }
    }
}
