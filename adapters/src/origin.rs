//! Proof of origin: a provider signs its answer with a key the registry declares, the broker
//! verifies it, and the attestation says so (docs/origin.md for consumers,
//! docs/adapters/origin.md for providers).
//!
//! Each call to a provider whose keys are declared carries a fresh [`Challenge`]: a nonce, and
//! a key for the subject digest (`base64url(HMAC-SHA-256(subject_key, subject))`), so that a
//! signature is good for one call and one person, without a subject id in what is signed. The
//! provider signs, with a key of its JWKS (EdDSA, ES256 or RS256), either
//! - a **statement** (the `grpc` adapter): a compact JWS whose payload states the attestation
//!   type, exactly the claims of the answer, the nonce, the subject digest and the time
//!   ([`verify_statement`]); or
//! - its **native HTTP body** (the `http` adapter): a detached JWS (RFC 7515, appendix F) in the
//!   [`SIGNATURE_HEADER`] response header, whose protected header states the attestation type,
//!   the nonce, the subject digest and the time ([`verify_detached`]).
//!
//! Only the parameters named here are accepted, in the JWS header and in the statement: what
//! the provider signs may end up in an attestation, and nothing unknown may ride along. Any
//! failure is an [`AdapterError::InvalidResponse`] naming what failed, never a subject, a claim
//! value or a signature.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

use crate::claims::{ClaimSpec, ClaimValue, Claims, quote};
use crate::error::AdapterError;

/// The `typ` of a signed statement's JWS header.
pub const STATEMENT_TYP: &str = "unefois-origin+json";
/// The `typ` of a detached JWS over an HTTP body.
pub const DETACHED_TYP: &str = "unefois-origin-body";
/// The HTTP response header holding the detached JWS.
pub const SIGNATURE_HEADER: &str = "x-unefois-origin";
/// The HTTP request header carrying [`Challenge::nonce`].
pub const NONCE_HEADER: &str = "x-unefois-origin-nonce";
/// The HTTP request header carrying [`Challenge::subject_key`], base64url.
pub const SUBJECT_KEY_HEADER: &str = "x-unefois-origin-subject-key";
/// How far a signature's `iat` may be from the broker's clock, in seconds.
pub const MAX_SKEW_SECONDS: i64 = 300;
/// Longest signed statement accepted (a compact JWS), in bytes.
pub const MAX_STATEMENT_BYTES: usize = 256 * 1024;
/// Longest detached JWS accepted in [`SIGNATURE_HEADER`], in bytes.
pub const MAX_DETACHED_BYTES: usize = 8 * 1024;

/// The JWS header parameters of a statement; nothing else is accepted.
const STATEMENT_HEADER_PARAMS: &[&str] = &["alg", "kid", "typ"];
/// The JWS header parameters of a detached signature; nothing else is accepted (no `crit`, no
/// `b64`, no `jku`/`x5u`: keys come from the registry only).
const DETACHED_HEADER_PARAMS: &[&str] = &[
    "alg",
    "kid",
    "typ",
    "attestation_type",
    "nonce",
    "subject_digest",
    "iat",
];

/// One verification key of a provider, ready to use.
#[derive(Clone)]
struct OriginKey {
    kid: String,
    alg: Algorithm,
    key: DecodingKey,
    /// RFC 7638 SHA-256 thumbprint, base64url.
    jkt: String,
}

/// A provider's verification keys, and whether it must sign (declared in the registry).
#[derive(Clone)]
pub struct OriginPolicy {
    keys: Vec<OriginKey>,
    required: bool,
}

impl fmt::Debug for OriginPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OriginPolicy")
            .field(
                "kids",
                &self.keys.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .field("required", &self.required)
            .finish()
    }
}

impl OriginPolicy {
    /// The keys of a JWKS. Every key needs a unique `kid` and is Ed25519 (EdDSA), P-256 (ES256)
    /// or RSA (RS256); its `alg`, if given, must be that one, its `use`, if given, `sig`. The
    /// error names the key by position and never quotes key material.
    pub fn new(jwks: &JwkSet, required: bool) -> Result<OriginPolicy, String> {
        if jwks.keys.is_empty() {
            return Err("the JWKS holds no key".into());
        }
        let mut keys: Vec<OriginKey> = Vec::with_capacity(jwks.keys.len());
        for (i, jwk) in jwks.keys.iter().enumerate() {
            let at = |why: &str| format!("key {i}: {why}");
            let kid = jwk.common.key_id.clone().unwrap_or_default();
            if kid.is_empty() || kid.len() > 128 || kid.chars().any(char::is_control) {
                return Err(at("needs a \"kid\" of 1 to 128 characters"));
            }
            if keys.iter().any(|k| k.kid == kid) {
                return Err(at(&format!("kid {} is used twice", quote(&kid))));
            }
            let alg = match &jwk.algorithm {
                AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                    ed25519_key_length(jwk).map_err(|e| at(&e))?;
                    Algorithm::EdDSA
                }
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                AlgorithmParameters::RSA(p) => {
                    let modulus = B64.decode(p.n.trim_end_matches('=')).unwrap_or_default();
                    let bits = modulus.iter().skip_while(|b| **b == 0).count() * 8;
                    if bits < 2048 {
                        return Err(at("an RSA key needs 2048 bits or more"));
                    }
                    Algorithm::RS256
                }
                _ => {
                    return Err(at(
                        "only Ed25519 (EdDSA), P-256 (ES256) and RSA (RS256) keys are accepted",
                    ));
                }
            };
            if let Some(declared) = &jwk.common.key_algorithm
                && format!("{declared:?}") != format!("{alg:?}")
            {
                return Err(at(&format!("its \"alg\" is {declared:?}, not {alg:?}")));
            }
            if let Some(usage) = &jwk.common.public_key_use
                && *usage != jsonwebtoken::jwk::PublicKeyUse::Signature
            {
                return Err(at("its \"use\" must be \"sig\""));
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| at(&format!("unusable: {e}")))?;
            let jkt = jwk
                .thumbprint(ThumbprintHash::SHA256)
                .map_err(|e| at(&format!("no thumbprint: {e}")))?;
            keys.push(OriginKey { kid, alg, key, jkt });
        }
        Ok(OriginPolicy { keys, required })
    }

    /// Whether an answer without a signature is refused.
    pub fn required(&self) -> bool {
        self.required
    }

    /// The key ids, in JWKS order.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.kid.as_str())
    }

    /// Verifies `signature` (unpadded base64url) over `signing_input` with key `kid` under
    /// `alg`; returns the key.
    fn verify(
        &self,
        kid: &str,
        alg: &str,
        signing_input: &[u8],
        signature: &str,
    ) -> Result<&OriginKey, AdapterError> {
        let key =
            self.keys.iter().find(|k| k.kid == kid).ok_or_else(|| {
                invalid(format!("no key {} among the provider's keys", quote(kid)))
            })?;
        if alg != format!("{:?}", key.alg) {
            return Err(invalid(format!(
                "algorithm {} is not that of key {} ({:?})",
                quote(alg),
                quote(kid),
                key.alg
            )));
        }
        let verified = jsonwebtoken::crypto::verify(signature, signing_input, &key.key, key.alg)
            .unwrap_or(false);
        if !verified {
            return Err(invalid(format!(
                "the signature does not verify with key {}",
                quote(kid)
            )));
        }
        Ok(key)
    }
}

/// What the broker sends a provider whose keys are declared, fresh for each call.
#[derive(Clone)]
pub struct Challenge {
    /// 128 random bits, base64url: the signature is good for this call only.
    pub nonce: String,
    /// 256 random bits: the key of the subject digest.
    pub subject_key: [u8; 32],
}

impl fmt::Debug for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Challenge")
            .field("nonce", &self.nonce)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "runtime")]
impl Challenge {
    /// A fresh challenge, from the thread's CSPRNG.
    pub fn new() -> Challenge {
        use rand::Rng;
        let mut nonce = [0u8; 16];
        let mut subject_key = [0u8; 32];
        let mut rng = rand::rng();
        rng.fill_bytes(&mut nonce);
        rng.fill_bytes(&mut subject_key);
        Challenge {
            nonce: B64.encode(nonce),
            subject_key,
        }
    }

    /// [`Challenge::subject_key`], base64url (as sent in [`SUBJECT_KEY_HEADER`]).
    pub fn subject_key_text(&self) -> String {
        B64.encode(self.subject_key)
    }
}

#[cfg(feature = "runtime")]
impl Default for Challenge {
    fn default() -> Challenge {
        Challenge::new()
    }
}

/// `base64url(HMAC-SHA-256(key, subject))`: the subject as a signature states it.
pub fn subject_digest(key: &[u8; 32], subject: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(subject.as_bytes());
    B64.encode(mac.finalize().into_bytes())
}

/// How the provider's signature was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proof {
    /// A signed statement of exactly the claims answered (compact JWS), which a consumer can
    /// verify offline if the attestation carries it.
    Statement(String),
    /// A detached signature over a native HTTP body: verified by the broker, not carried.
    Body,
}

/// A provider's signature that verified, and what it was checked against.
#[derive(Clone, PartialEq, Eq)]
pub struct Origin {
    /// The key's id.
    pub kid: String,
    /// The JWS algorithm (`EdDSA`, `ES256`, `RS256`).
    pub alg: String,
    /// The key's RFC 7638 SHA-256 thumbprint, base64url.
    pub jkt: String,
    /// What was signed.
    pub proof: Proof,
    /// The key of the subject digest the signature states (for the consumer, beside the
    /// attestation: never inside it).
    pub subject_key: [u8; 32],
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Origin")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("jkt", &self.jkt)
            .field(
                "proof",
                &match self.proof {
                    Proof::Statement(_) => "statement",
                    Proof::Body => "body",
                },
            )
            .finish_non_exhaustive()
    }
}

/// What one call expects a signature to state.
pub struct Expected<'a> {
    /// The attestation type asked for.
    pub attestation_type: &'a str,
    /// The subject asked about, as sent to the provider.
    pub subject: &'a str,
    /// The call's challenge.
    pub challenge: &'a Challenge,
    /// The broker's clock, Unix seconds.
    pub now: i64,
}

impl Expected<'_> {
    /// Checks what every signature states besides its content.
    fn check(
        &self,
        attestation_type: &str,
        nonce: &str,
        digest: &str,
        iat: i64,
    ) -> Result<(), AdapterError> {
        if attestation_type != self.attestation_type {
            return Err(invalid(format!(
                "it states the attestation type {}, not {}",
                quote(attestation_type),
                quote(self.attestation_type)
            )));
        }
        if nonce != self.challenge.nonce {
            return Err(invalid("it states another nonce than this call's".into()));
        }
        if digest != subject_digest(&self.challenge.subject_key, self.subject) {
            return Err(invalid(
                "its subject digest is not that of the subject asked about".into(),
            ));
        }
        let skew = iat.saturating_sub(self.now);
        if skew.saturating_abs() > MAX_SKEW_SECONDS {
            return Err(invalid(format!(
                "its iat is {skew} s from the broker's clock (at most {MAX_SKEW_SECONDS})"
            )));
        }
        Ok(())
    }
}

/// The payload of a signed statement.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Statement {
    attestation_type: String,
    claims: UniqueMap,
    nonce: String,
    subject_digest: String,
    iat: i64,
}

/// The protected header of a detached signature.
#[derive(Deserialize)]
struct DetachedHeader {
    attestation_type: String,
    nonce: String,
    subject_digest: String,
    iat: i64,
}

/// A JSON object whose member names are unique (RFC 8259 leaves duplicates to the parser:
/// two parsers could read two different statements from one signature).
struct UniqueMap(BTreeMap<String, Value>);

impl<'de> Deserialize<'de> for UniqueMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<UniqueMap, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of claims")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<UniqueMap, A::Error> {
                let mut map = BTreeMap::new();
                while let Some((name, value)) = a.next_entry::<String, Value>()? {
                    if map.insert(name, value).is_some() {
                        return Err(serde::de::Error::custom("a claim is named twice"));
                    }
                }
                Ok(UniqueMap(map))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// A compact JWS cut in three; the header decoded and checked against `allowed` and `typ`.
struct Parts<'a> {
    header_b64: &'a str,
    payload_b64: &'a str,
    signature: &'a str,
    header: serde_json::Map<String, Value>,
    alg: String,
    kid: String,
}

fn parts<'a>(jws: &'a str, allowed: &[&str], typ: &str) -> Result<Parts<'a>, AdapterError> {
    let mut split = jws.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature), None) =
        (split.next(), split.next(), split.next(), split.next())
    else {
        return Err(invalid("not a compact JWS (three base64url parts)".into()));
    };
    let header_bytes = B64
        .decode(header_b64)
        .map_err(|_| invalid("its header is not base64url".into()))?;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&header_bytes)
        .map_err(|_| invalid("its header is not a JSON object".into()))?;
    if let Some(unknown) = header.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(invalid(format!(
            "its header has a parameter {} that is not accepted",
            quote(unknown)
        )));
    }
    let text = |name: &str| match header.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(invalid(format!("its header has no {name:?}"))),
    };
    let alg = text("alg")?;
    let kid = text("kid")?;
    if text("typ")? != typ {
        return Err(invalid(format!("its header's typ is not {typ:?}")));
    }
    Ok(Parts {
        header_b64,
        payload_b64,
        signature,
        header,
        alg,
        kid,
    })
}

fn origin(key: &OriginKey, proof: Proof, challenge: &Challenge) -> Origin {
    Origin {
        kid: key.kid.clone(),
        alg: format!("{:?}", key.alg),
        jkt: key.jkt.clone(),
        proof,
        subject_key: challenge.subject_key,
    }
}

/// Verifies a signed statement (`ProvideResponse.origin`): the signature with the provider's
/// key, then that it states this call (type, nonce, subject digest, time) and exactly the
/// `claims` answered, typed by `schema`.
pub fn verify_statement(
    policy: &OriginPolicy,
    jws: &str,
    expected: &Expected<'_>,
    schema: &[ClaimSpec],
    claims: &Claims,
) -> Result<Origin, AdapterError> {
    if jws.len() > MAX_STATEMENT_BYTES {
        return Err(invalid(format!("longer than {MAX_STATEMENT_BYTES} bytes")));
    }
    let p = parts(jws, STATEMENT_HEADER_PARAMS, STATEMENT_TYP)?;
    let signing_input = format!("{}.{}", p.header_b64, p.payload_b64);
    let key = policy.verify(&p.kid, &p.alg, signing_input.as_bytes(), p.signature)?;
    let payload = B64
        .decode(p.payload_b64)
        .map_err(|_| invalid("its payload is not base64url".into()))?;
    let statement: Statement = serde_json::from_slice(&payload)
        .map_err(|e| invalid(format!("its payload is not a statement: {}", short(&e))))?;
    expected.check(
        &statement.attestation_type,
        &statement.nonce,
        &statement.subject_digest,
        statement.iat,
    )?;
    let stated = statement.claims.0;
    if stated.len() != claims.len() || stated.keys().any(|name| !claims.contains_key(name)) {
        return Err(invalid("it states other claims than those answered".into()));
    }
    for (name, value) in &stated {
        let spec = schema.iter().find(|s| s.name == *name);
        let same = spec
            .and_then(|s| ClaimValue::from_json(s.claim_type, value).ok())
            .is_some_and(|v| claims.get(name) == Some(&v));
        if !same {
            return Err(invalid(format!(
                "it states another value of claim {} than the one answered",
                quote(name)
            )));
        }
    }
    Ok(origin(
        key,
        Proof::Statement(jws.to_string()),
        expected.challenge,
    ))
}

/// Verifies a detached signature over an HTTP `body` (the [`SIGNATURE_HEADER`] value): the
/// signature over `BASE64URL(header) . BASE64URL(body)` with the provider's key, then that its
/// protected header states this call (type, nonce, subject digest, time).
pub fn verify_detached(
    policy: &OriginPolicy,
    jws: &str,
    body: &[u8],
    expected: &Expected<'_>,
) -> Result<Origin, AdapterError> {
    if jws.len() > MAX_DETACHED_BYTES {
        return Err(invalid(format!("longer than {MAX_DETACHED_BYTES} bytes")));
    }
    let p = parts(jws, DETACHED_HEADER_PARAMS, DETACHED_TYP)?;
    if !p.payload_b64.is_empty() {
        return Err(invalid(
            "not a detached JWS (its payload part must be empty)".into(),
        ));
    }
    let mut signing_input = String::with_capacity(p.header_b64.len() + 1 + body.len() * 4 / 3 + 4);
    signing_input.push_str(p.header_b64);
    signing_input.push('.');
    B64.encode_string(body, &mut signing_input);
    let key = policy.verify(&p.kid, &p.alg, signing_input.as_bytes(), p.signature)?;
    let header: DetachedHeader = serde_json::from_value(Value::Object(p.header))
        .map_err(|e| invalid(format!("its header does not state the call: {}", short(&e))))?;
    expected.check(
        &header.attestation_type,
        &header.nonce,
        &header.subject_digest,
        header.iat,
    )?;
    Ok(origin(key, Proof::Body, expected.challenge))
}

/// The error of an answer whose signature is required and missing.
pub fn missing() -> AdapterError {
    invalid("the provider must sign its answers, and this one is not signed".into())
}

fn invalid(why: String) -> AdapterError {
    AdapterError::InvalidResponse(format!("provider signature: {why}"))
}

/// A serde_json error without the input it quotes (a claim value may be in it).
fn short(e: &serde_json::Error) -> String {
    format!(
        "{:?} at line {}, column {}",
        e.classify(),
        e.line(),
        e.column()
    )
}

/// Whether an Ed25519 JWK's `x` is 32 bytes (any other key passes): jsonwebtoken loads a
/// shorter one, then panics on the first signature naming it, before checking anything (its
/// verifier slices `[..32]`). Providers' origin keys and identity providers' keys (the
/// domain's JWKS) are checked with it when the registry is loaded.
pub fn ed25519_key_length(jwk: &jsonwebtoken::jwk::Jwk) -> Result<(), String> {
    match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            let x = B64
                .decode(okp.x.trim_end_matches('='))
                .map_err(|e| format!("its \"x\" is not base64url: {e}"))?;
            match x.len() {
                32 => Ok(()),
                n => Err(format!("an Ed25519 \"x\" is 32 bytes, not {n}")),
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::claims::ClaimType;

    /// A registered Ed25519 key whose `x` is short is refused when the registry is loaded:
    /// jsonwebtoken would take it, then panic at the first answer signed under its kid.
    #[test]
    fn an_ed25519_key_of_the_wrong_length_is_refused() {
        let short: JwkSet = serde_json::from_str(
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k","x":"AAAA"}]}"#,
        )
        .unwrap();
        let refused = OriginPolicy::new(&short, true).err().unwrap_or_default();
        assert!(refused.contains("32 bytes"), "{refused}");
    }

    /// An Ed25519 key pair from a seed: its JWKS (kid `k1`) and a signer of JWS signing inputs.
    fn keys(seed: u8) -> (JwkSet, impl Fn(&[u8]) -> String) {
        use jsonwebtoken::EncodingKey;
        // PKCS#8 v1 DER of an Ed25519 private key: a fixed prefix and the 32-byte seed.
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&[seed; 32]);
        let encoding = EncodingKey::from_ed_der(&der);
        let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, Algorithm::EdDSA).unwrap();
        let mut jwk = jwk;
        jwk.common.key_id = Some("k1".into());
        let sign = move |input: &[u8]| {
            jsonwebtoken::crypto::sign(input, &encoding, Algorithm::EdDSA).unwrap()
        };
        (JwkSet { keys: vec![jwk] }, sign)
    }

    fn schema() -> Vec<ClaimSpec> {
        vec![
            ClaimSpec {
                name: "est_etudiant".into(),
                claim_type: ClaimType::Boolean,
            },
            ClaimSpec {
                name: "date_inscription".into(),
                claim_type: ClaimType::Date,
            },
        ]
    }

    fn answered() -> Claims {
        Claims::from([
            ("est_etudiant".into(), ClaimValue::Boolean(true)),
            (
                "date_inscription".into(),
                ClaimValue::from_json(ClaimType::Date, &Value::from("2026-09-01")).unwrap(),
            ),
        ])
    }

    fn jws(header: &Value, payload: &[u8], sign: &impl Fn(&[u8]) -> String) -> String {
        let h = B64.encode(serde_json::to_vec(header).unwrap());
        let p = B64.encode(payload);
        let s = sign(format!("{h}.{p}").as_bytes());
        format!("{h}.{p}.{s}")
    }

    fn statement(challenge: &Challenge, subject: &str, now: i64) -> Value {
        serde_json::json!({
            "attestation_type": "mesr.statut_etudiant",
            "claims": {"est_etudiant": true, "date_inscription": "2026-09-01"},
            "nonce": challenge.nonce,
            "subject_digest": subject_digest(&challenge.subject_key, subject),
            "iat": now,
        })
    }

    fn header() -> Value {
        serde_json::json!({"alg": "EdDSA", "kid": "k1", "typ": STATEMENT_TYP})
    }

    #[test]
    fn a_statement_verifies_and_states_exactly_the_call() {
        let (jwks, sign) = keys(1);
        let policy = OriginPolicy::new(&jwks, true).unwrap();
        let challenge = Challenge::new();
        let now = 1_800_000_000;
        let expected = Expected {
            attestation_type: "mesr.statut_etudiant",
            subject: "test:eve",
            challenge: &challenge,
            now,
        };
        let body = serde_json::to_vec(&statement(&challenge, "test:eve", now)).unwrap();
        let good = jws(&header(), &body, &sign);
        let origin = verify_statement(&policy, &good, &expected, &schema(), &answered()).unwrap();
        assert_eq!(origin.kid, "k1");
        assert_eq!(origin.alg, "EdDSA");
        assert_eq!(origin.proof, Proof::Statement(good.clone()));

        let refused = |jws: &str, claims: &Claims| match verify_statement(
            &policy,
            jws,
            &expected,
            &schema(),
            claims,
        ) {
            Err(AdapterError::InvalidResponse(why)) => why,
            other => panic!("accepted: {other:?}"),
        };
        // One byte of the payload changed.
        let mut bytes = good.clone().into_bytes();
        let at = good.find('.').unwrap() + 5;
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        assert!(
            refused(std::str::from_utf8(&bytes).unwrap(), &answered()).contains("does not verify")
        );
        // Another value answered than the one stated.
        let mut other = answered();
        other.insert("est_etudiant".into(), ClaimValue::Boolean(false));
        assert!(refused(&good, &other).contains("another value"));
        // A claim answered that is not stated.
        let mut fewer = answered();
        fewer.remove("date_inscription");
        assert!(refused(&good, &fewer).contains("other claims"));
        // Another subject, nonce, type, an old iat.
        for (field, value) in [
            (
                "subject_digest",
                Value::from(subject_digest(&challenge.subject_key, "test:bob")),
            ),
            ("nonce", Value::from(Challenge::new().nonce)),
            ("attestation_type", Value::from("caf.quotient_familial")),
            ("iat", Value::from(now - 301)),
            ("iat", Value::from(i64::MIN)),
        ] {
            let mut s = statement(&challenge, "test:eve", now);
            s[field] = value;
            let j = jws(&header(), &serde_json::to_vec(&s).unwrap(), &sign);
            refused(&j, &answered());
        }
        // Anything more in the statement or the header is refused: it could reach an attestation.
        let mut more = statement(&challenge, "test:eve", now);
        more["nom"] = Value::from("Martin");
        let j = jws(&header(), &serde_json::to_vec(&more).unwrap(), &sign);
        assert!(refused(&j, &answered()).contains("not a statement"));
        let mut h = header();
        h["x-subject"] = Value::from("test:eve");
        assert!(refused(&jws(&h, &body, &sign), &answered()).contains("not accepted"));
        // A claim named twice.
        let twice = format!(
            r#"{{"attestation_type":"mesr.statut_etudiant","claims":{{"est_etudiant":false,"est_etudiant":true,"date_inscription":"2026-09-01"}},"nonce":"{}","subject_digest":"{}","iat":{now}}}"#,
            challenge.nonce,
            subject_digest(&challenge.subject_key, "test:eve")
        );
        refused(&jws(&header(), twice.as_bytes(), &sign), &answered());
        // Under a key the provider does not have, or another key with the same kid.
        let (_, rogue) = keys(2);
        assert!(refused(&jws(&header(), &body, &rogue), &answered()).contains("does not verify"));
        let mut unknown = header();
        unknown["kid"] = Value::from("k9");
        assert!(refused(&jws(&unknown, &body, &sign), &answered()).contains("no key"));
        // Another algorithm than the key's, another typ.
        let mut hs = header();
        hs["alg"] = Value::from("HS256");
        refused(&jws(&hs, &body, &sign), &answered());
        let mut typ = header();
        typ["typ"] = Value::from("JWT");
        refused(&jws(&typ, &body, &sign), &answered());
    }

    #[test]
    fn a_detached_signature_covers_the_body_and_states_the_call() {
        let (jwks, sign) = keys(3);
        let policy = OriginPolicy::new(&jwks, false).unwrap();
        let challenge = Challenge::new();
        let now = 1_800_000_000;
        let expected = Expected {
            attestation_type: "caf.quotient_familial",
            subject: "test:alice",
            challenge: &challenge,
            now,
        };
        let header = serde_json::json!({
            "alg": "EdDSA", "kid": "k1", "typ": DETACHED_TYP,
            "attestation_type": "caf.quotient_familial",
            "nonce": challenge.nonce,
            "subject_digest": subject_digest(&challenge.subject_key, "test:alice"),
            "iat": now,
        });
        let body = br#"{"data":{"quotient_familial":700}}"#;
        let full = jws(&header, body, &sign);
        let mut cut = full.split('.');
        let detached = format!("{}..{}", cut.next().unwrap(), cut.nth(1).unwrap());
        let origin = verify_detached(&policy, &detached, body, &expected).unwrap();
        assert_eq!(origin.proof, Proof::Body);
        assert!(
            verify_detached(
                &policy,
                &detached,
                br#"{"data":{"quotient_familial":701}}"#,
                &expected
            )
            .is_err()
        );
        assert!(
            verify_detached(&policy, &full, body, &expected).is_err(),
            "not detached"
        );
        let other_subject = Expected {
            subject: "test:bob",
            ..expected
        };
        assert!(verify_detached(&policy, &detached, body, &other_subject).is_err());
    }

    #[test]
    fn keys_are_checked_when_declared() {
        let (mut jwks, _) = keys(4);
        assert!(OriginPolicy::new(&jwks, true).is_ok());
        jwks.keys[0].common.key_id = None;
        assert!(OriginPolicy::new(&jwks, true).unwrap_err().contains("kid"));
        let (one, _) = keys(5);
        let twice = JwkSet {
            keys: vec![one.keys[0].clone(), one.keys[0].clone()],
        };
        assert!(
            OriginPolicy::new(&twice, true)
                .unwrap_err()
                .contains("twice")
        );
        assert!(OriginPolicy::new(&JwkSet { keys: vec![] }, true).is_err());
    }
}
