//! What a consumer does offline with an attestation (docs/origin.md, "Verifying an attestation
//! offline"), written from that text with general-purpose libraries, not the broker's own
//! verifier: the broker's DSSE signature with `attestation.vkey`, then the provider's signed
//! statement with the provider's JWKS.

use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};
use sha2::Sha256;
use unefois_proto::v1 as pb;

/// The DSSE payload type of attestations.
const PAYLOAD_TYPE: &str = "application/vnd.unefois.attestation+json";

/// Checks the broker's DSSE signature of `envelope` with `attestation_vkey`; returns the
/// attestation payload (JSON).
pub fn verify_envelope(envelope: &pb::Envelope, attestation_vkey: &str) -> Result<Value, String> {
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(format!("payload type {:?}", envelope.payload_type));
    }
    unefois_tlog::dsse::verify(attestation_vkey, &crate::envelope_of(envelope))
        .map_err(|e| format!("DSSE: {e}"))?;
    serde_json::from_slice(&envelope.payload).map_err(|e| format!("payload: {e}"))
}

/// A JSON object from an unpadded base64url part of a JWS.
fn object(part: &str, what: &str) -> Result<Map<String, Value>, String> {
    let bytes = B64
        .decode(part)
        .map_err(|_| format!("{what}: not base64url"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(format!("{what}: not a JSON object")),
    }
}

/// The only members `o` may have.
fn exactly(o: &Map<String, Value>, members: &[&str], what: &str) -> Result<(), String> {
    let mut names: Vec<&str> = o.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut wanted = members.to_vec();
    wanted.sort_unstable();
    if names == wanted {
        Ok(())
    } else {
        Err(format!("{what}: members {names:?}, expected {wanted:?}"))
    }
}

/// Whether two claim values are the same value (numbers as numbers).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

/// Checks the provider's statement carried by an attestation `payload` (already verified with
/// [`verify_envelope`]) with the provider's `jwks` (JSON text); with the `subject` asked about
/// and the response's `origin_subject_key`, also that the provider answered about that
/// subject. Returns the statement's payload.
pub fn verify_statement(
    payload: &Value,
    jwks: &str,
    subject: Option<(&str, &[u8])>,
) -> Result<Map<String, Value>, String> {
    let origin = payload["origin"]
        .as_object()
        .ok_or("the attestation has no origin")?;
    if origin["proof"] != "statement" {
        return Err(format!("proof is {}", origin["proof"]));
    }
    let statement = origin["statement"].as_str().ok_or("no statement")?;
    let parts: Vec<&str> = statement.split('.').collect();
    let [header_b64, payload_b64, signature] = parts[..] else {
        return Err("not a compact JWS".into());
    };
    let header = object(header_b64, "JWS header")?;
    exactly(&header, &["alg", "kid", "typ"], "JWS header")?;
    if header["typ"] != "unefois-origin+json" {
        return Err(format!("typ {}", header["typ"]));
    }
    if header["alg"] != origin["alg"] || header["kid"] != origin["kid"] {
        return Err("the header's alg or kid is not the attestation's".into());
    }
    let kid = header["kid"].as_str().ok_or("kid")?;
    let alg = Algorithm::from_str(header["alg"].as_str().ok_or("alg")?)
        .map_err(|e| format!("alg: {e}"))?;
    let set: JwkSet = serde_json::from_str(jwks).map_err(|e| format!("JWKS: {e}"))?;
    let jwk = set.find(kid).ok_or_else(|| format!("no key {kid:?}"))?;
    let key_alg = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        _ => return Err("unsupported key".into()),
    };
    if key_alg != alg {
        return Err("alg is not the key's".into());
    }
    let jkt = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(|e| format!("thumbprint: {e}"))?;
    if origin["jkt"] != jkt.as_str() {
        return Err("jkt is not the key's thumbprint".into());
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key: {e}"))?;
    let signing_input = format!("{header_b64}.{payload_b64}");
    let verified = jsonwebtoken::crypto::verify(signature, signing_input.as_bytes(), &key, alg)
        .unwrap_or(false);
    if !verified {
        return Err("the provider's signature does not verify".into());
    }

    let stated = object(payload_b64, "statement")?;
    exactly(
        &stated,
        &[
            "attestation_type",
            "claims",
            "nonce",
            "subject_digest",
            "iat",
        ],
        "statement",
    )?;
    if stated["attestation_type"] != payload["type"] {
        return Err("the statement is about another type".into());
    }
    let (Some(claims), Some(released)) =
        (stated["claims"].as_object(), payload["claims"].as_object())
    else {
        return Err("claims are not objects".into());
    };
    let same = claims.len() == released.len()
        && claims
            .iter()
            .all(|(name, v)| released.get(name).is_some_and(|r| same_value(v, r)));
    if !same {
        return Err("the statement states other claims than the attestation's".into());
    }
    let issued_at = time::OffsetDateTime::parse(
        payload["issued_at"].as_str().ok_or("issued_at")?,
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|e| format!("issued_at: {e}"))?;
    let iat = stated["iat"].as_i64().ok_or("iat")?;
    if iat
        .saturating_sub(issued_at.unix_timestamp())
        .saturating_abs()
        > 300
    {
        return Err("iat is more than 300 s from issued_at".into());
    }
    if let Some((subject, key)) = subject {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|e| e.to_string())?;
        mac.update(subject.as_bytes());
        if stated["subject_digest"] != B64.encode(mac.finalize().into_bytes()).as_str() {
            return Err("the statement is about another subject".into());
        }
    }
    Ok(stated)
}
