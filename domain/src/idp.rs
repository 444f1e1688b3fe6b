//! Identity providers' keys: the JWKS files a registry names, and the public development
//! identity provider of examples/dev-idp (its issuer, its committed key, and the tokens it mints
//! for the sample datasets' fictitious people).

use std::path::Path;

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;

/// Parses a JWKS file's bytes (what a registry's `identity_providers[].jwks` names; `path`
/// names it in errors); every key needs a `kid`.
pub fn parse_jwks(path: &Path, bytes: &[u8]) -> Result<JwkSet, String> {
    let set: JwkSet = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a JWKS ({}): {e}", path.display()))?;
    if set.keys.is_empty() {
        return Err(format!("{} holds no key", path.display()));
    }
    for key in &set.keys {
        if key.common.key_id.as_deref().unwrap_or_default().is_empty() {
            return Err(format!("{}: every key needs a \"kid\"", path.display()));
        }
        DecodingKey::from_jwk(key).map_err(|e| format!("{}: unusable key: {e}", path.display()))?;
        unefois_adapters::origin::ed25519_key_length(key)
            .map_err(|e| format!("{}: unusable key: {e}", path.display()))?;
    }
    Ok(set)
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
    /// The issuer of its agents' side (ProConnect-like), with the same committed key.
    pub const AGENTS_ISSUER: &str = "https://agents.unefois.test";
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

    /// Why the development identity provider cannot load a key, sign, or mint claims.
    #[derive(Debug, thiserror::Error)]
    pub enum DevError {
        /// The key file is not `{"kid", "d"}` with a 32-byte base64url seed.
        #[error("{}: {reason}", path.display())]
        KeyFile {
            /// The file.
            path: std::path::PathBuf,
            /// What is wrong.
            reason: String,
        },
        /// No randomness for a fresh key.
        #[error("randomness: {0}")]
        Randomness(String),
        /// Signing failed.
        #[error("signing: {0}")]
        Sign(#[from] jsonwebtoken::errors::Error),
        /// A subject this provider does not know.
        #[error("{0}")]
        Subject(&'static str),
    }

    #[derive(serde::Deserialize)]
    struct KeyFile {
        kid: String,
        d: String,
    }

    /// The DER prefix of a PKCS#8 v1 Ed25519 private key, before its 32-byte seed.
    const PKCS8_ED25519_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];

    impl DevKey {
        /// Parses a key file's bytes, `{"kid": ..., "d": <base64url Ed25519 seed>}` (`path`
        /// names it in errors; the caller reads it).
        pub fn parse(path: &Path, bytes: &[u8]) -> Result<DevKey, DevError> {
            let bad = |reason: String| DevError::KeyFile {
                path: path.to_path_buf(),
                reason,
            };
            let file: KeyFile = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
            let seed: [u8; 32] = B64
                .decode(file.d.as_bytes())
                .map_err(|e| bad(e.to_string()))?
                .try_into()
                .map_err(|_| bad("d must be 32 bytes".into()))?;
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
        pub fn generate(kid: &str) -> Result<DevKey, DevError> {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| DevError::Randomness(e.to_string()))?;
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
        pub fn sign(&self, claims: &Value) -> Result<String, DevError> {
            // PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410).
            let mut der = PKCS8_ED25519_PREFIX.to_vec();
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
    pub fn claims(subject: &str, audience: &str, now: OffsetDateTime) -> Result<Value, DevError> {
        claims_lasting(subject, audience, now, TOKEN_LIFETIME_SECONDS)
    }

    /// The claims of an agent's token for `sub` and the pages' `client_id`, issued at `now`
    /// by the development agents' identity provider: after a second factor (`acr` `eidas2`,
    /// `amr` `pwd`, `otp`, `mfa`) when `multi_factor`, after a password only otherwise.
    pub fn agent_claims(
        sub: &str,
        client_id: &str,
        now: OffsetDateTime,
        multi_factor: bool,
    ) -> Value {
        let iat = now.unix_timestamp();
        let (acr, amr) = match multi_factor {
            true => ("eidas2", json!(["pwd", "otp", "mfa"])),
            false => ("eidas1", json!(["pwd"])),
        };
        json!({
            "iss": AGENTS_ISSUER,
            "aud": client_id,
            "sub": sub,
            "iat": iat,
            "exp": iat.saturating_add(TOKEN_LIFETIME_SECONDS),
            "jti": uuid::Uuid::now_v7().to_string(),
            "acr": acr,
            "amr": amr,
        })
    }

    /// [`claims`] of a token valid for `lifetime_seconds` from `now` (the broker still refuses
    /// one issued longer ago than its identity provider's `max_token_age_seconds`).
    pub fn claims_lasting(
        subject: &str,
        audience: &str,
        now: OffsetDateTime,
        lifetime_seconds: i64,
    ) -> Result<Value, DevError> {
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
                return Err(DevError::Subject("not a canonical pivot: subject"));
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
            return Err(DevError::Subject(
                "the development identity provider knows test: and pivot: subjects",
            ));
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
            let path = examples.join("jwks.json");
            let jwks = crate::idp::parse_jwks(&path, &std::fs::read(&path).unwrap()).unwrap();
            assert!(jwks.keys.iter().all(is_committed_key));
            let committed = crate::test_support::committed_dev_key();
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod jwks_tests {
    use super::*;

    /// An identity provider's Ed25519 key whose `x` is short is refused at load: jsonwebtoken
    /// would take it, then panic on the first token naming its kid, signed or not.
    #[test]
    fn an_ed25519_key_of_the_wrong_length_is_refused() {
        let short = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k","x":"AAAA"}]}"#;
        let refused = parse_jwks(Path::new("jwks.json"), short).unwrap_err();
        assert!(refused.contains("32 bytes"), "{refused}");
        let right = format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"k","x":"{}"}}]}}"#,
            dev::PUBLIC_KEY_X
        );
        parse_jwks(Path::new("jwks.json"), right.as_bytes()).unwrap();
    }
}
