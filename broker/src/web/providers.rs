//! Where the pages send people to log in, and how they redeem the answer: an identity provider
//! of the registry with login endpoints (FranceConnect-like for citizens, ProConnect-like for
//! agents; the code redeemed at its token endpoint over HTTPS, with PKCE and, for a
//! confidential client, its secret), or, in a development federation, the development
//! provider the broker serves itself. Either way the ID token is then verified against the
//! registry's keys for that provider, exactly as identity evidence is.

use std::time::Duration;

use serde::Deserialize;

use super::Web;
use crate::registry::OidcLogin;

/// Where a login goes.
#[derive(Clone)]
pub(super) enum Door {
    /// The development provider served by the broker (`/dev-idp/...`).
    Development,
    /// A provider of the registry, over HTTPS.
    Remote(OidcLogin),
}

/// Longest wait for a token endpoint.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest token endpoint answer read.
const MAX_TOKEN_ANSWER: usize = 64 * 1024;

impl Web {
    /// Where citizens log in (the citizen space, the person present at a desk): the first
    /// citizens' identity provider of the registry with login endpoints, else the development
    /// provider when it is served.
    pub(super) fn citizens_door(&self) -> Option<Door> {
        let registry = self.state.federation.registry();
        match registry
            .identity_providers()
            .iter()
            .find_map(|p| p.login.clone())
        {
            Some(login) => Some(Door::Remote(login)),
            None => self.dev_idp().map(|_| Door::Development),
        }
    }

    /// Where agents log in: the first agents' identity provider with login endpoints, else the
    /// development one when it is served.
    pub(super) fn agents_door(&self) -> Option<AgentsDoor> {
        let registry = self.state.federation.registry();
        if let Some((login, p)) = registry
            .agent_identity_providers()
            .iter()
            .find_map(|p| p.login.clone().map(|l| (l, p)))
        {
            return Some(AgentsDoor {
                door: Door::Remote(login),
                client_id: p.client_id.clone(),
                multi_factor_acr: p.multi_factor_acr.clone(),
            });
        }
        let dev = super::dev_idp::agents_provider(&registry)?;
        self.dev_idp().map(|_| AgentsDoor {
            door: Door::Development,
            client_id: dev.client_id.clone(),
            multi_factor_acr: dev.multi_factor_acr.clone(),
        })
    }
}

/// Where agents log in, as the registry in force declares their identity provider.
pub(super) struct AgentsDoor {
    pub(super) door: Door,
    /// The pages' client id there.
    pub(super) client_id: String,
    /// Its `acr` values that mean a second factor: the login asks for one of them.
    pub(super) multi_factor_acr: Vec<String>,
}

impl AgentsDoor {
    /// The authorization request's `claims` parameter (OpenID Connect Core 5.5): an ID token
    /// whose `acr` is essential and one of the provider's multi-factor values. ProConnect gives
    /// a two-factor `acr` (and asks the agent for their second factor) only when asked so; an
    /// agent's login without it ends in « Second facteur exigé » whatever the agent could do.
    pub(super) fn claims(&self) -> String {
        serde_json::json!({
            "id_token": {
                "acr": { "essential": true, "values": self.multi_factor_acr }
            }
        })
        .to_string()
    }
}

impl Door {
    /// The authorization endpoint to send the browser to (`dev` the development page's path).
    pub(super) fn authorization_endpoint(&self, base: &str, dev: &str) -> String {
        match self {
            Door::Development => format!("{base}{dev}"),
            Door::Remote(login) => login.authorization_endpoint.clone(),
        }
    }

    /// The scopes to ask for (`openid` first).
    pub(super) fn scope(&self) -> String {
        match self {
            Door::Development => "openid".to_string(),
            Door::Remote(login) => std::iter::once("openid")
                .chain(login.scopes.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    /// The ID token the provider gives for `code`, asked for `client_id` and `redirect_uri`
    /// with the PKCE `verifier`; `None` (logged) when it gives none.
    pub(super) async fn redeem(
        &self,
        web: &Web,
        code: &str,
        client_id: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Option<String> {
        match self {
            Door::Development => web
                .dev_idp()?
                .redeem(code, client_id, redirect_uri, verifier),
            Door::Remote(login) => {
                match token_request(login, code, client_id, redirect_uri, verifier).await {
                    Ok(token) => Some(token),
                    Err(why) => {
                        tracing::warn!(
                            endpoint = %login.token_endpoint,
                            error = %why,
                            "web: an identity provider's token endpoint gave no ID token"
                        );
                        None
                    }
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    id_token: String,
}

/// OpenID Connect Core 3.1.3.1: the code, the redirect URI, the client (and its secret, posted)
/// and the PKCE verifier, to the token endpoint over HTTPS trusting its CA only.
async fn token_request(
    login: &OidcLogin,
    code: &str,
    client_id: &str,
    redirect_uri: &str,
    verifier: &str,
) -> Result<String, String> {
    let certificates =
        unefois_certs::load_certificates(&login.ca_file).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates {
        roots.add(certificate).map_err(|e| e.to_string())?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TOKEN_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let secret = match &login.client_secret_file {
        Some(path) => Some(
            tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("client_id", client_id),
        ("code_verifier", verifier),
    ];
    if let Some(secret) = &secret {
        form.push(("client_secret", secret));
    }
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut answer = client
        .post(&login.token_endpoint)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = answer.status();
    let mut bytes = Vec::new();
    while let Some(chunk) = answer.chunk().await.map_err(|e| e.to_string())? {
        if bytes.len() + chunk.len() > MAX_TOKEN_ANSWER {
            return Err(format!("answer larger than {MAX_TOKEN_ANSWER} bytes"));
        }
        bytes.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let answer: TokenAnswer = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    Ok(answer.id_token)
}
