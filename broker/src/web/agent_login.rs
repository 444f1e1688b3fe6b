//! Logins at the pages' spaces: citizens at the citizens' identity provider (the citizen
//! space, and the person present at a desk), agents at the agents' one (the desk, the
//! console). OpenID Connect's code flow with PKCE S256, a `state` bound to the browser by a
//! cookie of the space, a `nonce`; each space keeps its own pending logins.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use time::OffsetDateTime;

use super::pages;
use super::providers::Door;
use super::session::{Ending, LoginKind, PendingLogin, Sessions};
use super::{Web, random_token, same_secret, see_other};
use crate::caller::Caller;
use crate::registry::{EnrolledAgent, Role};
use crate::shed::Source;

/// An identity provider's answer: a code, or an error (RFC 6749, 4.1.2.1: the person cancelled,
/// the provider could not log them in).
#[derive(Deserialize)]
pub struct CallbackQuery {
    #[serde(default)]
    code: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    error: String,
}

/// The logins of one space: where they wait, the cookie that binds them to the browser.
pub(super) struct Logins<'w, S> {
    pub(super) web: &'w Web,
    pub(super) table: &'w Sessions<S>,
    pub(super) cookie: &'static str,
    /// The cookie of the space's sessions: a login cancelled while one is open says so.
    pub(super) session_cookie: &'static str,
    /// The space, as the failure page names it (« l'espace des agents »).
    pub(super) space: &'static str,
}

/// 503: no agents' identity provider is there to log in with.
pub(super) fn no_provider() -> Response {
    pages::error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Connexion indisponible",
        "Aucun fournisseur d'identité des agents n'est relié à cet espace pour l'instant.",
    )
}

impl<S: Clone + Ending> Logins<'_, S> {
    /// Off to `door`'s authorization endpoint (`page` at the development provider) for a login
    /// of `kind`, started from `from`, asking for the ID token's `claims` when some are given.
    pub(super) fn authorize(
        &self,
        door: &Door,
        kind: LoginKind,
        page: &str,
        (client_id, callback): (&str, &str),
        claims: Option<&str>,
        from: Source,
    ) -> Response {
        let (Some(state), Some(nonce), Some(verifier), Some(browser)) = (
            random_token(),
            random_token(),
            random_token(),
            random_token(),
        ) else {
            return pages::unavailable();
        };
        let challenge = super::dev_idp::pkce_challenge(&verifier);
        self.table.wait_login(
            state.clone(),
            PendingLogin::new(kind, browser.clone(), nonce.clone(), verifier),
            from,
        );
        let Ok(mut to) = url::Url::parse(&door.authorization_endpoint(&self.web.base, page)) else {
            return pages::unavailable();
        };
        to.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("scope", &door.scope())
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", callback)
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        if let Some(claims) = claims {
            to.query_pairs_mut().append_pair("claims", claims);
        }
        // At a desk, the device is shared: whoever logged in there before is never taken for
        // the person present (OpenID Connect Core 3.1.2.1: a fresh authentication).
        if kind == LoginKind::PersonAtDesk {
            to.query_pairs_mut()
                .append_pair("prompt", "login")
                .append_pair("max_age", "0");
        }
        see_other(
            to.as_str(),
            &[self
                .web
                .cookie(self.cookie, &browser, Some(super::session::LOGIN_WAIT))],
        )
    }

    /// Off to the agents' identity provider, back to `callback`, for a login started from
    /// `from`: a second factor asked for (an `acr` among the provider's `multi_factor_acr`).
    pub(super) fn agent(&self, callback: &str, from: Source) -> Response {
        let Some(agents) = self.web.agents_door() else {
            return no_provider();
        };
        self.authorize(
            &agents.door,
            LoginKind::Agent,
            "/dev-idp/agents/authorize",
            (&agents.client_id, callback),
            Some(&agents.claims()),
            from,
        )
    }

    /// Opens the session a completed login earns (`make` builds it from its CSRF token, when
    /// it ends, and the same as a time people read), `lifetime` long, in place of this
    /// browser's earlier one (« Prolonger la session »); its cookie `session_cookie`, and on
    /// to `home`. The cookie is the browser session's (no `Max-Age`): at a shared desk or a
    /// kiosk, closing the browser ends it for whoever opens the browser next; the server ends
    /// the session at `lifetime` whatever the browser keeps.
    pub(super) fn open_session(
        &self,
        headers: &HeaderMap,
        session_cookie: &str,
        lifetime: std::time::Duration,
        home: &str,
        make: impl FnOnce(String, std::time::Instant, OffsetDateTime) -> S,
    ) -> Response {
        let (Some(id), Some(csrf)) = (random_token(), random_token()) else {
            return pages::unavailable();
        };
        if let Some(earlier) = self.web.cookie_of(headers, session_cookie) {
            self.table.close(earlier);
        }
        let now = OffsetDateTime::now_utc();
        self.table.open(
            id.clone(),
            make(csrf, std::time::Instant::now() + lifetime, now + lifetime),
        );
        see_other(
            home,
            &[
                self.web.cookie(session_cookie, &id, None),
                self.web
                    .cookie(self.cookie, "", Some(std::time::Duration::ZERO)),
            ],
        )
    }

    /// 400: the login did not complete; nothing was opened.
    pub(super) fn failed(&self) -> Response {
        pages::error_page(
            StatusCode::BAD_REQUEST,
            "Connexion échouée",
            &format!(
                "La connexion n'a pas abouti (demande expirée, déjà utilisée ou venue d'un autre \
                 navigateur). Recommencez depuis {}.",
                self.space
            ),
        )
    }

    /// The page for an identity provider's answer that is an error: the login it answers ends
    /// and nothing is asked of the provider. What the provider wrote beside the code
    /// (`error_description`) is not shown: anyone can write it in a link.
    fn refused_by_provider(
        &self,
        headers: &HeaderMap,
        answer: &CallbackQuery,
        kind: LoginKind,
    ) -> Response {
        self.table.take_login(&answer.state);
        // « Prolonger la session » cancelled, or the person's login at a desk: the session
        // already open in this browser stays open, and a person leaving a shared device must
        // not read that they are not logged in.
        let open = self
            .web
            .cookie_of(headers, self.session_cookie)
            .and_then(|id| self.table.session(id))
            .is_some();
        let code = match answer.error.as_str() {
            known @ ("access_denied"
            | "login_required"
            | "consent_required"
            | "interaction_required"
            | "invalid_request"
            | "invalid_scope"
            | "unauthorized_client"
            | "unsupported_response_type"
            | "server_error"
            | "temporarily_unavailable") => known,
            _ => "other",
        };
        tracing::info!(
            error = code,
            "web: the identity provider answered a login with an error"
        );
        match code {
            // The person present at a desk cancelled: the agent's session goes on, the person
            // is not logged in, and the desk is where they go on from.
            "access_denied" if kind == LoginKind::PersonAtDesk => pages::error_page_on_to(
                StatusCode::OK,
                "Connexion de la personne annulée",
                "La personne ne s'est pas connectée : la connexion a été annulée et rien n'a été \
                 fait pour elle. Elle peut recommencer depuis l'accueil de l'espace des agents.",
                ("/desk", "Revenir à l'accueil de l'espace des agents"),
            ),
            "access_denied" if open => pages::error_page(
                StatusCode::OK,
                "Connexion annulée",
                &format!(
                    "La connexion a été annulée et rien n'a été fait. La session déjà ouverte \
                     dans ce navigateur reste ouverte : si vous quittez cet appareil, \
                     déconnectez-vous depuis {} (« Se déconnecter »).",
                    self.space
                ),
            ),
            "access_denied" => pages::error_page(
                StatusCode::OK,
                "Connexion annulée",
                &format!(
                    "La connexion a été annulée : vous n'êtes pas connecté et rien n'a été fait. \
                     Pour vous connecter, recommencez depuis {}.",
                    self.space
                ),
            ),
            "server_error" | "temporarily_unavailable" => pages::error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Fournisseur d'identité indisponible",
                &format!(
                    "Le fournisseur d'identité n'a pas pu vous connecter pour l'instant. \
                     Réessayez dans quelques minutes depuis {}.",
                    self.space
                ),
            ),
            _ => pages::error_page(
                StatusCode::BAD_REQUEST,
                "Connexion échouée",
                &format!(
                    "Le fournisseur d'identité n'a pas pu vous connecter. Recommencez depuis {}.",
                    self.space
                ),
            ),
        }
    }

    /// The ID token of an identity provider's answer to a login of `kind` this browser started
    /// here, once; otherwise the page that says why.
    pub(super) async fn redeemed(
        &self,
        door: &Door,
        headers: &HeaderMap,
        answer: &CallbackQuery,
        kind: LoginKind,
        client_id: &str,
        callback: &str,
    ) -> Result<(String, PendingLogin), Box<Response>> {
        if !answer.error.is_empty() {
            return Err(Box::new(self.refused_by_provider(headers, answer, kind)));
        }
        let failed = || Box::new(self.failed());
        let login = self.table.take_login(&answer.state).ok_or_else(failed)?;
        if login.kind != kind
            || !self
                .web
                .cookie_of(headers, self.cookie)
                .is_some_and(|b| same_secret(b, &login.browser))
        {
            return Err(failed());
        }
        let token = door
            .redeem(self.web, &answer.code, client_id, callback, &login.verifier)
            .await
            .ok_or_else(failed)?;
        Ok((token, login))
    }

    /// The agent an answer of the agents' identity provider logs in: the token verifies, shows
    /// a second factor, carries the nonce asked for, and names an agent the registry enrols;
    /// otherwise the page that says why.
    pub(super) async fn agent_answer(
        &self,
        headers: &HeaderMap,
        answer: &CallbackQuery,
        callback: &str,
    ) -> Result<EnrolledAgent, Box<Response>> {
        let Some(agents) = self.web.agents_door() else {
            return Err(Box::new(no_provider()));
        };
        let (token, login) = self
            .redeemed(
                &agents.door,
                headers,
                answer,
                LoginKind::Agent,
                &agents.client_id,
                callback,
            )
            .await?;
        let registry = self.web.state.federation.registry();
        let agent =
            match crate::agent_identity::verify(&token, &registry, OffsetDateTime::now_utc()) {
                Ok(agent) => agent,
                Err(e) => {
                    tracing::warn!(error = %e, "web: an agent's login was refused");
                    use crate::agent_identity::AgentLoginError as E;
                    return Err(Box::new(match e {
                        E::SingleFactor => pages::error_page(
                            StatusCode::FORBIDDEN,
                            "Second facteur exigé",
                            "Votre connexion n'a pas utilisé de second facteur (code à usage \
                             unique, clé de sécurité). Les agents agissent pour d'autres \
                             personnes ou lisent leurs données : reconnectez-vous avec votre \
                             second facteur.",
                        ),
                        E::NotEnrolled => pages::error_page(
                            StatusCode::FORBIDDEN,
                            "Agent non inscrit",
                            "Votre compte professionnel n'est inscrit au registre de la \
                             fédération pour aucune structure. Demandez au responsable de votre \
                             structure de vous inscrire.",
                        ),
                        E::Token(_) => self.failed(),
                    }));
                }
            };
        if !agent
            .nonce
            .as_deref()
            .is_some_and(|n| same_secret(n, &login.nonce))
        {
            return Err(Box::new(self.failed()));
        }
        Ok(agent.enrolled)
    }

    /// [`Logins::agent_answer`] for a space of the structures with `role`: the agent, when the
    /// registry enrols them for such a participant; otherwise the page that says why
    /// (`refused`: its title and text).
    pub(super) async fn staff_answer(
        &self,
        headers: &HeaderMap,
        answer: &CallbackQuery,
        callback: &str,
        role: Role,
        refused: (&str, &str),
    ) -> Result<EnrolledAgent, Box<Response>> {
        let agent = self.agent_answer(headers, answer, callback).await?;
        let registry = self.web.state.federation.registry();
        if !registry
            .participant(&agent.participant)
            .is_some_and(|p| p.roles.contains(&role))
        {
            let (title, text) = refused;
            return Err(Box::new(pages::error_page(
                StatusCode::FORBIDDEN,
                title,
                text,
            )));
        }
        Ok(agent)
    }
}

/// A staff member (`agent` of `participant`) as the orchestration sees them, while the registry
/// in force still maps the account that opened their session (`sub` at the agents' identity
/// provider `provider`) to that very agent of that participant, and the participant has `role`;
/// otherwise the page saying `refused`. An account the registry no longer enrols, or no longer
/// as that agent, acts no more; nor does the session once the registry enrols another account
/// (another `sub`, another provider) as that agent, as after a compromise of the provider.
pub(super) fn staff_caller(
    web: &Web,
    (provider, sub): (&str, &str),
    (participant, agent): (&str, &str),
    role: Role,
    refused: &str,
) -> Result<Caller, Box<Response>> {
    let registry = web.state.federation.registry();
    let enrolled = registry
        .enrolled_agent(provider, sub)
        .is_some_and(|a| a.participant == participant && a.agent == agent);
    match registry.participant(participant) {
        Some(p) if enrolled && p.roles.contains(&role) => Ok(Caller::new(
            p,
            Some(agent.to_string()),
            Arc::from(format!("web:{}/agent/{agent}", p.id)),
        )),
        _ => Err(Box::new(pages::error_page(
            StatusCode::FORBIDDEN,
            "Accès refusé",
            refused,
        ))),
    }
}
