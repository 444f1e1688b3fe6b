//! An OpenID Connect identity provider for the web pages' tests, over HTTPS on loopback: what
//! FranceConnect or ProConnect is to the broker (an external service, never one of ours). Its
//! authorization endpoint answers at once for one configured person (no page: a real provider's
//! pages are its own), its token endpoint redeems a code once, for its client, its secret and
//! the PKCE verifier, with an ID token signed by a key of its own.
//!
//! As ProConnect does, it asks for a second factor only when the request asks for it: a person
//! whose claims give an `acr` (an agent who has a second factor) gets that `acr`, and their
//! `amr`, only when the authorization request's `claims` parameter asks for the ID token's
//! `acr` as essential with that value (`{"id_token":{"acr":{"essential":true,"values":[...]}}}`,
//! OpenID Connect Core 5.5.1.1); otherwise their token says one factor (`acr` `eidas1`, `amr`
//! `pwd`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use broker::idp::dev::DevKey;
use serde::Deserialize;
use serde_json::{Value, json};

/// The provider, as the test sets it up.
pub struct IdentityProvider {
    /// `https://127.0.0.1:port`.
    pub base: String,
    state: Arc<Provider>,
}

struct Provider {
    issuer: String,
    client_ids: Vec<String>,
    secret: String,
    key: DevKey,
    /// Claims of the person who logs in (identity claims, `acr`, `amr`, ...).
    person: Value,
    codes: Mutex<HashMap<String, Pending>>,
    redeemed: Mutex<usize>,
    auth_time: Mutex<AuthTime>,
}

/// The `auth_time` its ID tokens carry: when the person authenticated there.
#[derive(Clone, Copy, Debug)]
pub enum AuthTime {
    /// Just now, as when the person logs in at each request (the default).
    Fresh,
    /// That many seconds ago: a provider that reuses an earlier single sign-on session,
    /// whatever `prompt` and `max_age` ask.
    SecondsAgo(i64),
    /// None at all.
    Absent,
}

struct Pending {
    client_id: String,
    nonce: String,
    challenge: String,
    redirect_uri: String,
    /// The request's `claims` parameter, as sent (empty when none).
    claims: String,
}

#[derive(Deserialize)]
struct AuthorizeQuery {
    client_id: String,
    redirect_uri: String,
    state: String,
    nonce: String,
    code_challenge: String,
    code_challenge_method: String,
    #[serde(default)]
    claims: String,
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    code: String,
    redirect_uri: String,
    client_id: String,
    #[serde(default)]
    client_secret: String,
    code_verifier: String,
}

impl IdentityProvider {
    /// Serves a provider of `issuer` for `client_ids` (one secret for all) over HTTPS with
    /// `pki`'s certificate for 127.0.0.1, logging in the person of `claims`; signs with `key`.
    pub async fn start(
        pki: &unefois_certs::Pki,
        issuer: &str,
        client_ids: &[&str],
        secret: &str,
        key: DevKey,
        claims: Value,
    ) -> anyhow::Result<IdentityProvider> {
        let state = Arc::new(Provider {
            issuer: issuer.to_string(),
            client_ids: client_ids.iter().map(ToString::to_string).collect(),
            secret: secret.to_string(),
            key,
            person: claims,
            codes: Mutex::new(HashMap::new()),
            redeemed: Mutex::new(0),
            auth_time: Mutex::new(AuthTime::Fresh),
        });
        let app = axum::Router::new()
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .with_state(state.clone());
        let addr: SocketAddr = crate::provider_api::serve_over_tls(pki, app).await?;
        Ok(IdentityProvider {
            base: format!("https://{addr}"),
            state,
        })
    }

    /// Its signing key's JWKS, for the registry.
    pub fn jwks(&self) -> Value {
        self.state.key.jwks()
    }

    /// From now on, its ID tokens carry `auth_time` as `when` says.
    pub fn set_auth_time(&self, when: AuthTime) {
        if let Ok(mut t) = self.state.auth_time.lock() {
            *t = when;
        }
    }

    /// How many codes it redeemed.
    pub fn redeemed(&self) -> usize {
        self.state.redeemed.lock().map(|n| *n).unwrap_or(0)
    }
}

async fn authorize(State(p): State<Arc<Provider>>, Query(q): Query<AuthorizeQuery>) -> Response {
    if !p.client_ids.contains(&q.client_id) || q.code_challenge_method != "S256" {
        return (StatusCode::BAD_REQUEST, "unknown client or no PKCE").into_response();
    }
    let code = uuid::Uuid::now_v7().to_string();
    if let Ok(mut codes) = p.codes.lock() {
        codes.insert(
            code.clone(),
            Pending {
                client_id: q.client_id.clone(),
                nonce: q.nonce,
                challenge: q.code_challenge,
                redirect_uri: q.redirect_uri.clone(),
                claims: q.claims,
            },
        );
    }
    let Ok(mut back) = url::Url::parse(&q.redirect_uri) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri").into_response();
    };
    back.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &q.state);
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, back.to_string())],
    )
        .into_response()
}

/// Whether the `claims` parameter `asked` requires the ID token's `acr` to be `acr`: essential,
/// and `acr` its `value` or among its `values`.
fn acr_asked(asked: &str, acr: &str) -> bool {
    let Ok(asked) = serde_json::from_str::<Value>(asked) else {
        return false;
    };
    let wanted = &asked["id_token"]["acr"];
    wanted["essential"] == json!(true)
        && (wanted["value"] == json!(acr)
            || wanted["values"]
                .as_array()
                .is_some_and(|v| v.iter().any(|v| v == acr)))
}

async fn token(State(p): State<Arc<Provider>>, Form(f): Form<TokenForm>) -> Response {
    let refused = || {
        (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":"invalid_grant"}"#,
        )
            .into_response()
    };
    let Some(pending) = p.codes.lock().ok().and_then(|mut c| c.remove(&f.code)) else {
        return refused();
    };
    use base64::Engine as _;
    use sha2::Digest as _;
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(f.code_verifier.as_bytes()));
    if f.grant_type != "authorization_code"
        || f.client_id != pending.client_id
        || f.client_secret != p.secret
        || f.redirect_uri != pending.redirect_uri
        || challenge != pending.challenge
    {
        return refused();
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut claims = json!({
        "iss": p.issuer,
        "aud": f.client_id,
        "iat": now,
        "exp": now + 300,
        "nonce": pending.nonce,
    });
    let auth_time = p.auth_time.lock().map(|t| *t).unwrap_or(AuthTime::Fresh);
    match auth_time {
        AuthTime::Fresh => claims["auth_time"] = now.into(),
        AuthTime::SecondsAgo(ago) => claims["auth_time"] = (now - ago).into(),
        AuthTime::Absent => {}
    }
    if let (Some(c), Some(person)) = (claims.as_object_mut(), p.person.as_object()) {
        c.extend(person.clone());
        if let Some(acr) = person.get("acr").and_then(Value::as_str)
            && !acr_asked(&pending.claims, acr)
        {
            c.insert("acr".into(), json!("eidas1"));
            c.insert("amr".into(), json!(["pwd"]));
        }
    }
    let Ok(id_token) = p.key.sign(&claims) else {
        return refused();
    };
    if let Ok(mut n) = p.redeemed.lock() {
        *n += 1;
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "access_token": "opaque", "token_type": "Bearer", "id_token": id_token })
            .to_string(),
    )
        .into_response()
}
