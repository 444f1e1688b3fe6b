//! The development identity provider's login page, served by the broker itself in a development
//! federation only (one that accepts `test:` people and declares the committed development key,
//! examples/dev-idp/): a clearly marked page where one picks a fictitious person, then an
//! OpenID Connect authorization code (with PKCE) that the citizen pages redeem for an ID token
//! signed with that public key. Outside a development federation nothing here is served, and a
//! production registry cannot declare that key at all (docs/security.md).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::pages::{self, Layout};
use super::session::Bounded;
use super::{Web, random_token, see_other};
use crate::idp::dev::{self, DevKey};
use crate::registry::Registry;

/// The fictitious people of the sample datasets (examples/data/).
pub const TEST_PEOPLE: &[(&str, &str)] = &[
    ("test:alice", "Alice Martin"),
    ("test:bob", "Bob Durand"),
    ("test:carol", "Carole Petit"),
    ("test:david", "David Moreau"),
    ("test:eve", "Ève Laurent"),
    ("test:frank", "Franck Simon"),
];

/// How long an authorization code may wait to be redeemed.
const CODE_LIFETIME: Duration = Duration::from_secs(60);
/// Codes waiting at once.
const MAX_CODES: usize = 10_000;

/// The provider: its signing key and the codes it handed out.
pub struct DevIdp {
    key: DevKey,
    codes: Mutex<Bounded<Issued>>,
}

/// A code handed out, until it is redeemed.
struct Issued {
    id_token: String,
    client_id: String,
    redirect_uri: String,
    challenge: String,
    created: Instant,
}

/// Whether `registry` is a development federation whose citizens' identity provider has the
/// committed development key: the only registries the development provider serves.
pub(super) fn still_served(registry: &Registry) -> bool {
    registry.allow_test_subjects()
        && registry
            .identity_providers()
            .iter()
            .any(|p| p.keys.keys.iter().any(dev::is_committed_key))
}

impl DevIdp {
    /// The provider, if `registry` is a development federation that declares the committed
    /// development key and its signing key lies beside its JWKS.
    pub fn for_registry(registry: &Registry) -> Option<DevIdp> {
        if !still_served(registry) {
            return None;
        }
        let provider = registry
            .identity_providers()
            .iter()
            .find(|p| p.keys.keys.iter().any(dev::is_committed_key))?;
        let folder = registry.file().parent()?;
        let path = folder
            .join(provider.jwks.parent()?)
            .join("dev-signing-key.json");
        let bytes = std::fs::read(&path).ok()?;
        let key = DevKey::parse(&path, &bytes).ok()?;
        Some(DevIdp {
            key,
            codes: Mutex::new(Bounded::new(MAX_CODES)),
        })
    }

    /// The ID token of `code`, once, if it was handed to `client_id` for `redirect_uri` and
    /// `verifier` is the PKCE verifier of its challenge.
    pub fn redeem(
        &self,
        code: &str,
        client_id: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Option<String> {
        let issued = self.codes.lock().ok()?.remove(code)?;
        let fresh = issued.created.elapsed() <= CODE_LIFETIME;
        (fresh
            && issued.client_id == client_id
            && issued.redirect_uri == redirect_uri
            && super::same_secret(&issued.challenge, &pkce_challenge(verifier)))
        .then_some(issued.id_token)
    }
}

/// The S256 PKCE challenge of `verifier`.
pub fn pkce_challenge(verifier: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier))
}

/// An authorization request (OpenID Connect Core 3.1.2.1), as the citizen pages send it.
#[derive(Deserialize)]
pub struct AuthorizeQuery {
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    redirect_uri: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    nonce: String,
    #[serde(default)]
    code_challenge: String,
    #[serde(default)]
    code_challenge_method: String,
    #[serde(default)]
    response_type: String,
}

/// The same, with the person picked on the page.
#[derive(Deserialize)]
pub struct AuthorizeForm {
    #[serde(flatten)]
    request: AuthorizeQuery,
    #[serde(default)]
    person: String,
}

#[derive(Template)]
#[template(path = "dev_idp.html")]
struct AuthorizePage<'a> {
    layout: Layout,
    request: &'a AuthorizeQuery,
    people: &'a [(&'static str, &'static str)],
    error: Option<&'static str>,
}

/// Whether `request` comes from the pages of this broker: the citizen space (its client id and
/// callback) or a mediator's desk (the structure's audience, the desk's callback for the person
/// present), with PKCE S256, a state and a nonce.
fn check(web: &Web, request: &AuthorizeQuery) -> Result<(), &'static str> {
    let registry = web.state.federation.registry();
    let at_desk = registry.participants().any(|p| {
        p.roles.contains(&crate::registry::Role::Mediator) && p.audience() == request.client_id
    });
    let (client, callback) = if at_desk {
        (
            Some(request.client_id.clone()),
            web.desk_person_callback_url(),
        )
    } else {
        (web.client_id(), web.callback_url())
    };
    if client.as_deref() != Some(request.client_id.as_str()) {
        return Err("client_id inconnu");
    }
    if request.redirect_uri != callback {
        return Err("redirect_uri non enregistrée");
    }
    shape(request)
}

/// PKCE S256, the code flow, a state and a nonce.
fn shape(request: &AuthorizeQuery) -> Result<(), &'static str> {
    let bounded = |s: &str| !s.is_empty() && s.len() <= 256;
    if request.response_type != "code" || request.code_challenge_method != "S256" {
        return Err("seul le flux « code » avec PKCE S256 est accepté");
    }
    if !bounded(&request.state) || !bounded(&request.nonce) || !bounded(&request.code_challenge) {
        return Err("state, nonce et code_challenge sont requis");
    }
    Ok(())
}

/// `GET /dev-idp/authorize`: the page where one picks a test person.
pub async fn authorize_page(
    State(web): State<Arc<Web>>,
    Query(request): Query<AuthorizeQuery>,
) -> Response {
    if web.dev_idp().is_none() {
        return pages::not_found().await;
    }
    if let Err(why) = check(&web, &request) {
        return pages::error_page(
            StatusCode::BAD_REQUEST,
            "Demande de connexion invalide",
            why,
        );
    }
    pages::render(
        StatusCode::OK,
        &AuthorizePage {
            layout: Layout::new("Connexion de développement", None),
            request: &request,
            people: TEST_PEOPLE,
            error: None,
        },
    )
}

/// `POST /dev-idp/authorize`: the person picked; back to the citizen pages with a code.
pub async fn authorize(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<AuthorizeForm>,
) -> Response {
    let Some(idp) = web.dev_idp() else {
        return pages::not_found().await;
    };
    if !web.same_origin(&headers) {
        return pages::forbidden();
    }
    if let Err(why) = check(&web, &form.request) {
        return pages::error_page(
            StatusCode::BAD_REQUEST,
            "Demande de connexion invalide",
            why,
        );
    }
    if !TEST_PEOPLE.iter().any(|(id, _)| *id == form.person) {
        return pages::render(
            StatusCode::BAD_REQUEST,
            &AuthorizePage {
                layout: Layout::new("Erreur : connexion de développement", None),
                request: &form.request,
                people: TEST_PEOPLE,
                error: Some("Choisissez une personne de test."),
            },
        );
    }
    let now = time::OffsetDateTime::now_utc();
    let name = TEST_PEOPLE
        .iter()
        .find(|(id, _)| *id == form.person)
        .map(|(_, name)| *name)
        .unwrap_or_default();
    let token = dev::claims(&form.person, &form.request.client_id, now)
        .and_then(|mut claims| {
            claims["nonce"] = serde_json::Value::String(form.request.nonce.clone());
            // The person picked on the page just now: a fresh authentication.
            claims["auth_time"] = now.unix_timestamp().into();
            // Named as FranceConnect names people, for the desk's pages.
            if let Some((given, family)) = name.split_once(' ') {
                claims["given_name"] = given.into();
                claims["family_name"] = family.into();
            }
            idp.key.sign(&claims)
        })
        .ok();
    code_for(idp, token, &form.request)
}

/// An authorization code for `token`, and the browser back to the request's `redirect_uri`.
fn code_for(idp: &DevIdp, token: Option<String>, request: &AuthorizeQuery) -> Response {
    let (Some(id_token), Some(code)) = (token, random_token()) else {
        return pages::unavailable();
    };
    if let Ok(mut codes) = idp.codes.lock() {
        codes.insert(
            code.clone(),
            Issued {
                id_token,
                client_id: request.client_id.clone(),
                redirect_uri: request.redirect_uri.clone(),
                challenge: request.code_challenge.clone(),
                created: Instant::now(),
            },
            |i| i.created.elapsed() > CODE_LIFETIME,
        );
    }
    let mut back = match url::Url::parse(&request.redirect_uri) {
        Ok(url) => url,
        Err(_) => return pages::unavailable(),
    };
    back.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &request.state);
    see_other(back.as_str(), &[])
}

/// The agents' side of the development provider: its declaration in the registry (an agents'
/// identity provider with the committed development key), if the registry has one.
pub fn agents_provider(registry: &Registry) -> Option<&crate::registry::AgentIdentityProvider> {
    registry
        .agent_identity_providers()
        .iter()
        .find(|p| p.keys.keys.iter().any(dev::is_committed_key))
}

/// An agent's authorization, with the agent and the factors picked on the page.
#[derive(Deserialize)]
pub struct AgentAuthorizeForm {
    #[serde(flatten)]
    request: AuthorizeQuery,
    #[serde(default)]
    agent: String,
    #[serde(default)]
    facteurs: String,
}

/// A `sub` no agent is enrolled under, to try a refused login.
const UNENROLLED: &str = "agent-non-inscrit";

#[derive(Template)]
#[template(path = "dev_idp_agents.html")]
struct AgentsPage<'a> {
    layout: Layout,
    request: &'a AuthorizeQuery,
    /// (sub, name, structure).
    agents: Vec<(String, String, String)>,
    unenrolled: &'static str,
    /// (the field it is about, what is wrong).
    error: Option<(&'static str, &'static str)>,
}

/// Whether `request` comes from the desk's agent login: the provider's client id, the agents'
/// callback.
fn check_agents(web: &Web, request: &AuthorizeQuery) -> Result<(), &'static str> {
    let registry = web.state.federation.registry();
    let Some(provider) = agents_provider(&registry) else {
        return Err("aucun fournisseur d'identité des agents de développement");
    };
    if provider.client_id != request.client_id {
        return Err("client_id inconnu");
    }
    if request.redirect_uri != web.agent_callback_url()
        && request.redirect_uri != web.console_callback_url()
    {
        return Err("redirect_uri non enregistrée");
    }
    shape(request)
}

fn agents_page(
    web: &Web,
    request: &AuthorizeQuery,
    error: Option<(&'static str, &'static str)>,
) -> Response {
    let registry = web.state.federation.registry();
    let names = super::rows::Names(&registry);
    let agents = agents_provider(&registry)
        .map(|p| {
            registry
                .agents()
                .iter()
                .filter(|a| a.provider == p.id)
                .map(|a| {
                    (
                        a.sub.clone(),
                        a.name.clone(),
                        names.participant(&a.participant),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let title = match error {
        Some(_) => "Erreur : connexion des agents (développement)",
        None => "Connexion des agents (développement)",
    };
    pages::render(
        match error {
            Some(_) => StatusCode::BAD_REQUEST,
            None => StatusCode::OK,
        },
        &AgentsPage {
            layout: Layout::new(title, None),
            request,
            agents,
            unenrolled: UNENROLLED,
            error,
        },
    )
}

/// `GET /dev-idp/agents/authorize`: the page where one picks a test agent and how they
/// authenticate (one factor or two).
pub async fn agents_authorize_page(
    State(web): State<Arc<Web>>,
    Query(request): Query<AuthorizeQuery>,
) -> Response {
    if web.dev_idp().is_none() {
        return pages::not_found().await;
    }
    if let Err(why) = check_agents(&web, &request) {
        return pages::error_page(
            StatusCode::BAD_REQUEST,
            "Demande de connexion invalide",
            why,
        );
    }
    agents_page(&web, &request, None)
}

/// `POST /dev-idp/agents/authorize`: back to the desk with a code for the agent's ID token.
pub async fn agents_authorize(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<AgentAuthorizeForm>,
) -> Response {
    let Some(idp) = web.dev_idp() else {
        return pages::not_found().await;
    };
    if !web.same_origin(&headers) {
        return pages::forbidden();
    }
    if let Err(why) = check_agents(&web, &form.request) {
        return pages::error_page(
            StatusCode::BAD_REQUEST,
            "Demande de connexion invalide",
            why,
        );
    }
    let registry = web.state.federation.registry();
    let known = form.agent == UNENROLLED || registry.agents().iter().any(|a| a.sub == form.agent);
    if !known {
        return agents_page(
            &web,
            &form.request,
            Some(("agent-0", "Choisissez un agent de test.")),
        );
    }
    let multi_factor = match form.facteurs.as_str() {
        "deux" => true,
        "un" => false,
        _ => {
            return agents_page(
                &web,
                &form.request,
                Some((
                    "facteurs-deux",
                    "Choisissez une méthode d'authentification.",
                )),
            );
        }
    };
    let now = time::OffsetDateTime::now_utc();
    let mut claims = dev::agent_claims(&form.agent, &form.request.client_id, now, multi_factor);
    claims["nonce"] = serde_json::Value::String(form.request.nonce.clone());
    claims["auth_time"] = now.unix_timestamp().into();
    code_for(idp, idp.key.sign(&claims).ok(), &form.request)
}
