//! The citizen's space (`/citizen`): log in at the identity provider, then "Qui a consulté mes
//! données" (every exchange about the person, newest first, paged from the index) and their
//! consents, each withdrawable after a confirmation page. Each read and act goes through the
//! orchestration the gRPC services use, as the guichet `Web::guichet`, with the session's ID
//! token as identity evidence, and is journaled as its gRPC twin.

use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use time::OffsetDateTime;

use super::agent_login::{CallbackQuery, Logins};
use super::client::ClientSource;
use super::pages::{self, Layout, LayoutSession};
use super::paris_time;
use super::rows::{AccessRow, ConsentRow, MandateRow, Names};
use super::session::{LoginKind, SESSION_LIFETIME, Session};
use super::{Web, same_secret, see_other};
use crate::caller::Caller;
use crate::consent::ConsentStatus;
use crate::error::ApiError;
use crate::mandate::MandateStatus;

const SESSION_COOKIE: &str = "unefois_session";
const LOGIN_COOKIE: &str = "unefois_login";
/// Accesses on one page.
const PAGE_SIZE: u32 = 20;

/// The guichet the pages act as, from the registry in force.
fn caller(web: &Web) -> Result<Caller, Box<Response>> {
    let registry = web.state.federation.registry();
    match registry.participant(&web.guichet) {
        Some(p) => Ok(Caller::new(p, None, Arc::from(format!("web:{}", p.id)))),
        None => Err(Box::new(pages::error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Espace usager indisponible",
            "L'espace usager n'est pas ouvert sur ce service : le registre de la fédération ne \
             le déclare pas. Pour toute démarche, adressez-vous à un espace France Services.",
        ))),
    }
}

/// The open session of this browser, if any.
fn session(web: &Web, headers: &HeaderMap) -> Option<(String, Session)> {
    let id = web.cookie_of(headers, SESSION_COOKIE)?;
    web.sessions.session(id).map(|s| (id.to_string(), s))
}

fn layout(title: &str, session: &Session) -> Layout {
    Layout::new(
        title,
        Some(LayoutSession {
            csrf: session.csrf.clone(),
            ends: paris_time::clock(session.ends_at),
            ends_unix: session.ends_at.unix_timestamp(),
            left_seconds: (session.ends_at - OffsetDateTime::now_utc())
                .whole_seconds()
                .max(0),
            logout: "/logout",
            relogin: "/citizen/login",
            who: None,
        }),
    )
}

/// What an act refused by the broker tells the person; a proof of identity that no longer
/// allows acts, that nothing was done and to log in again.
fn refused(e: &ApiError) -> Response {
    match e {
        ApiError::IdentityEvidenceInvalid(_) | ApiError::IdentityEvidenceRequired => {
            pages::proof_spent("/citizen/login")
        }
        ApiError::StoreUnavailable => pages::unavailable(),
        other => {
            tracing::info!(reason = other.reason_code(), "web: citizen act refused");
            pages::refusal(other)
        }
    }
}

/// The person's consents (every one, wherever recorded: the ID token shows it is them), as
/// `Consents.List` reads them.
async fn consents_of(
    web: &Web,
    caller: &Caller,
    session: &Session,
) -> Result<Vec<crate::consent::Consent>, ApiError> {
    every_page(|after| {
        let input = crate::consents::ListInput {
            subject: session.subject.as_str().to_string(),
            id_token: session.id_token.clone(),
            page_size: crate::page::MAX_PAGE_SIZE,
            page_token: after,
            ..Default::default()
        };
        async move {
            let (page, next, _) = crate::consents::list(&web.state, caller, &input).await?;
            Ok((page, next))
        }
    })
    .await
}

/// The person's mandates (every structure's: the ID token shows it is them), as
/// `Mandates.List` reads them.
async fn mandates_of(
    web: &Web,
    caller: &Caller,
    session: &Session,
) -> Result<Vec<crate::mandate::Mandate>, ApiError> {
    every_page(|after| {
        let input = crate::mandates::ListInput {
            subject: session.subject.as_str().to_string(),
            id_token: session.id_token.clone(),
            page_size: crate::page::MAX_PAGE_SIZE,
            page_token: after,
            ..Default::default()
        };
        async move {
            let (page, next, _) = crate::mandates::list(&web.state, caller, &input).await?;
            Ok((page, next))
        }
    })
    .await
}

/// Pages of consents or mandates read for one view at most: 10,000 of them.
const MAX_LIST_PAGES: usize = 100;

/// Every page `read` gives from the first (a page, and the token of the next, empty at the
/// end), [`MAX_LIST_PAGES`] at most. Every one, oldest first: the ones in force are the
/// newest, after years of expired and withdrawn ones, and must never be cut off the page that
/// withdraws them.
async fn every_page<T, F>(mut read: impl FnMut(String) -> F) -> Result<Vec<T>, ApiError>
where
    F: std::future::Future<Output = Result<(Vec<T>, String), ApiError>>,
{
    let mut all = Vec::new();
    let mut after = String::new();
    for _ in 0..MAX_LIST_PAGES {
        let (page, next) = read(after).await?;
        all.extend(page);
        if next.is_empty() {
            break;
        }
        after = next;
    }
    Ok(all)
}

#[derive(Template)]
#[template(path = "citizen_login.html")]
struct LoginPage {
    layout: Layout,
}

#[derive(Template)]
#[template(path = "citizen.html")]
struct HomePage {
    layout: Layout,
    organisations: Vec<Choice>,
    types: Vec<Choice>,
    du: String,
    au: String,
    /// Whether filters are asked.
    filtered: bool,
    /// The filters, as the pager's links carry them (`&org=…`), or empty.
    filter_query: String,
    filter_errors: Vec<(&'static str, &'static str)>,
    error_org: bool,
    error_donnees: bool,
    error_dates: bool,
    /// The newest page, with the filters.
    newest_href: String,
    accesses: Vec<AccessRow>,
    with_actions: bool,
    older: Option<String>,
    newest: bool,
    consents: Vec<ConsentRow>,
    mandates: Vec<MandateRow>,
    status: Option<String>,
    /// The signed checkpoint the proofs lead to, base64 of its text.
    checkpoint: String,
    /// The log's verifier key (C2SP), to check it against.
    vkey: String,
}

#[derive(Deserialize)]
pub struct HomeQuery {
    /// The leaf index the previous page ended at (older accesses), never a person.
    #[serde(default)]
    avant: Option<String>,
    /// Only this organisation's accesses (a participant id).
    #[serde(default)]
    org: String,
    /// Only accesses to this type of data (an attestation type id).
    #[serde(default)]
    donnees: String,
    /// From this Paris day, `AAAA-MM-JJ`.
    #[serde(default)]
    du: String,
    /// Through this Paris day.
    #[serde(default)]
    au: String,
}

/// `GET /citizen`: the person's history and consents, or an invitation to log in.
pub async fn home(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(query): Query<HomeQuery>,
) -> Response {
    let Some((id, session)) = session(&web, &headers) else {
        return pages::render(
            StatusCode::OK,
            &LoginPage {
                layout: Layout::new("Espace usager : connexion", None),
            },
        );
    };
    let caller = match caller(&web) {
        Ok(c) => c,
        Err(page) => return *page,
    };
    let state = &web.state;
    let (filter, filter_errors) = history_filter(&web, &query);
    let input = crate::accesses::ListInput {
        subject: session.subject.as_str().to_string(),
        mandate_id: String::new(),
        id_token: session.id_token.clone(),
        page_token: query.avant.clone().unwrap_or_default(),
        page_size: PAGE_SIZE,
        filter: filter.clone(),
    };
    let page = match crate::accesses::list(state, &caller, &input).await {
        Ok(page) => page,
        Err(e) => return refused(&e),
    };
    let consents = match consents_of(&web, &caller, &session).await {
        Ok(consents) => consents,
        Err(e) => return refused(&e),
    };
    let mandates = match mandates_of(&web, &caller, &session).await {
        Ok(mandates) => mandates,
        Err(e) => return refused(&e),
    };
    let registry = state.federation.registry();
    let names = Names(&registry);
    let accesses = page.accesses.iter().map(|a| names.access(a)).collect();
    let now = OffsetDateTime::now_utc();
    let consents = consents.iter().map(|c| names.consent(c, now)).collect();
    let mandates = mandates.iter().map(|m| names.mandate(m, now)).collect();
    let filtered = !(query.org.is_empty()
        && query.donnees.is_empty()
        && query.du.is_empty()
        && query.au.is_empty());
    let mut filter_query = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("org", &query.org),
        ("donnees", &query.donnees),
        ("du", &query.du),
        ("au", &query.au),
    ] {
        if !v.is_empty() && filter_errors.is_empty() {
            filter_query.append_pair(k, v);
        }
    }
    let filter_query = match filter_query.finish() {
        q if q.is_empty() => String::new(),
        q => format!("&{q}"),
    };
    pages::render(
        if filter_errors.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        },
        &HomePage {
            layout: layout(
                if filter_errors.is_empty() {
                    "Qui a consulté mes données"
                } else {
                    "Erreur : qui a consulté mes données"
                },
                &session,
            ),
            organisations: history_choices(
                registry
                    .participants()
                    .filter(|p| {
                        p.roles.contains(&crate::registry::Role::Consumer)
                            || p.roles.contains(&crate::registry::Role::Mediator)
                    })
                    .map(|p| (p.id.clone(), p.name.clone())),
                &query.org,
            ),
            types: history_choices(
                registry
                    .attestation_types()
                    .map(|t| (t.id.clone(), t.description.clone())),
                &query.donnees,
            ),
            du: query.du.clone(),
            au: query.au.clone(),
            filtered,
            newest_href: match filter_query.strip_prefix('&') {
                Some(q) => format!("/citizen?{q}"),
                None => "/citizen".to_string(),
            },
            filter_query,
            error_org: filter_errors.iter().any(|e| e.0 == "org"),
            error_donnees: filter_errors.iter().any(|e| e.0 == "donnees"),
            error_dates: filter_errors.iter().any(|e| e.0 == "du"),
            filter_errors,
            accesses,
            with_actions: true,
            older: (!page.next_page_token.is_empty()).then_some(page.next_page_token),
            newest: query.avant.is_none(),
            consents,
            mandates,
            checkpoint: B64.encode(page.checkpoint.as_bytes()),
            vkey: state.store.log_vkey().to_string(),
            status: web.sessions.take_flash(&id, |s| s.flash.take()),
        },
    )
}

/// An option of a filter's select: (value, words, selected).
type Choice = (String, String, bool);

fn history_choices(all: impl Iterator<Item = (String, String)>, selected: &str) -> Vec<Choice> {
    std::iter::once((String::new(), "Tous".to_string(), selected.is_empty()))
        .chain(all.map(|(v, l)| {
            let on = v == selected;
            (v, l, on)
        }))
        .collect()
}

/// The history's filters as asked (an organisation and a type of the registry, Paris days),
/// and what is wrong with them: a filter that is wrong filters nothing.
fn history_filter(
    web: &Web,
    q: &HomeQuery,
) -> (
    crate::accesses::AccessFilter,
    Vec<(&'static str, &'static str)>,
) {
    let registry = web.state.federation.registry();
    let mut errors = Vec::new();
    let some = |s: &String| (!s.is_empty()).then(|| s.clone());
    if !q.org.is_empty() && registry.participant(&q.org).is_none() {
        errors.push(("org", "Choisissez un organisme de la liste."));
    }
    if !q.donnees.is_empty() && registry.attestation_type(&q.donnees).is_none() {
        errors.push(("donnees", "Choisissez des données de la liste."));
    }
    let day = |text: &str, plus| match text.trim() {
        "" => Ok(None),
        t => paris_time::day_start(t, plus)
            .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
            .map(Some)
            .ok_or(()),
    };
    let (since, until) = (day(&q.du, 0), day(&q.au, 1));
    if since.is_err() || until.is_err() {
        errors.push(("du", "Saisissez les dates au format AAAA-MM-JJ."));
    }
    if !errors.is_empty() {
        return (crate::accesses::AccessFilter::default(), errors);
    }
    (
        crate::accesses::AccessFilter {
            consumer: some(&q.org),
            attestation_type: some(&q.donnees),
            since: since.ok().flatten(),
            until: until.ok().flatten(),
            purposes: None,
        },
        errors,
    )
}

/// `GET /citizen/login`: off to the identity provider (OpenID Connect authorization code flow
/// with PKCE, `state` bound to this browser, `nonce`).
pub async fn login(State(web): State<Arc<Web>>, ClientSource(from): ClientSource) -> Response {
    let Some(client_id) = web.client_id() else {
        return match caller(&web) {
            Err(page) => *page,
            Ok(_) => pages::unavailable(),
        };
    };
    let Some(door) = web.citizens_door() else {
        return pages::error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Connexion indisponible",
            "Aucun fournisseur d'identité n'est relié à cet espace pour l'instant. Pour toute \
             démarche, adressez-vous à un espace France Services.",
        );
    };
    logins(&web).authorize(
        &door,
        LoginKind::Citizen,
        "/dev-idp/authorize",
        (&client_id, &web.callback_url()),
        None,
        from,
    )
}

/// Where the citizen space's logins wait: its pending logins, its login cookie.
fn logins(web: &Web) -> Logins<'_, Session> {
    Logins {
        web,
        table: &web.sessions,
        cookie: LOGIN_COOKIE,
        session_cookie: SESSION_COOKIE,
        space: "l'espace usager",
    }
}

/// `GET /citizen/callback`: the identity provider's answer; a session once the ID token
/// verifies as this guichet's identity evidence and carries the nonce asked for.
pub async fn callback(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(answer): Query<CallbackQuery>,
) -> Response {
    let logins = logins(&web);
    let failed = || logins.failed();
    let caller = match caller(&web) {
        Ok(c) => c,
        Err(page) => return *page,
    };
    let Some(door) = web.citizens_door() else {
        return failed();
    };
    let client_id = web.client_id().unwrap_or_default();
    let (id_token, login) = match logins
        .redeemed(
            &door,
            &headers,
            &answer,
            LoginKind::Citizen,
            &client_id,
            &web.callback_url(),
        )
        .await
    {
        Ok(redeemed) => redeemed,
        Err(page) => return *page,
    };
    let registry = web.state.federation.registry();
    let verified = match crate::evidence::proven(&id_token, &caller, &registry) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(
                reason = e.reason_code(),
                "web: an ID token from the login was refused"
            );
            return failed();
        }
    };
    if !verified
        .nonce
        .as_deref()
        .is_some_and(|n| same_secret(n, &login.nonce))
    {
        return failed();
    }
    let now = OffsetDateTime::now_utc();
    let usable = Duration::from_secs(
        u64::try_from(verified.usable_until.saturating_sub(now.unix_timestamp())).unwrap_or(0),
    );
    // Logged in again (« Prolonger la session »): the earlier session of this browser ends.
    logins.open_session(
        &headers,
        SESSION_COOKIE,
        SESSION_LIFETIME.min(usable),
        "/citizen",
        |csrf, ends, ends_at| Session {
            subject: verified.subject,
            id_token,
            csrf,
            ends,
            ends_at,
            flash: None,
        },
    )
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// The session a POST acts in: only from these pages (origin) with the session's CSRF token.
fn posted(
    web: &Web,
    headers: &HeaderMap,
    form: &CsrfForm,
) -> Result<(String, Session, Caller), Box<Response>> {
    if !web.same_origin(headers) {
        return Err(Box::new(pages::forbidden()));
    }
    let Some((id, session)) = session(web, headers) else {
        // No session (it ended, or never was): nothing done, and the person told so.
        return Err(Box::new(pages::session_ended("/citizen/login")));
    };
    if !same_secret(&form.csrf, &session.csrf) {
        return Err(Box::new(pages::forbidden()));
    }
    Ok((id, session, caller(web)?))
}

/// The open session of this browser and the guichet the pages act as; without a session, off
/// to the citizen space's login invitation.
fn signed_in(web: &Web, headers: &HeaderMap) -> Result<(Session, Caller), Box<Response>> {
    let Some((_, session)) = session(web, headers) else {
        return Err(Box::new(see_other("/citizen", &[])));
    };
    Ok((session, caller(web)?))
}

/// Back to the citizen's page, which announces `message` once.
fn announce(web: &Web, id: &str, message: String) -> Response {
    web.sessions.update(id, |s| s.flash = Some(message));
    see_other("/citizen", &[])
}

/// `POST /logout`.
pub async fn logout(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if session(&web, &headers).is_none() {
        return see_other("/", &[]);
    }
    match posted(&web, &headers, &form) {
        Ok((id, _, _)) => {
            web.sessions.close(&id);
            see_other("/", &[web.cookie(SESSION_COOKIE, "", Some(Duration::ZERO))])
        }
        Err(page) => *page,
    }
}

#[derive(Template)]
#[template(path = "consent_withdraw.html")]
struct WithdrawPage {
    layout: Layout,
    consent: ConsentRow,
    csrf: String,
}

/// `GET /citizen/consents/{id}/withdraw`: what withdrawing this consent means, and the button.
pub async fn confirm_withdraw(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    // Reached from another site, it reads (and records a read of) nothing until asked.
    if web.sent_from_elsewhere(&headers) && crate::validate::identifier("id", &id, 64).is_ok() {
        return pages::continue_here(
            &format!("/citizen/consents/{id}/withdraw"),
            "Afficher le retrait du consentement",
        );
    }
    let (session, caller) = match signed_in(&web, &headers) {
        Ok(signed) => signed,
        Err(page) => return *page,
    };
    let consents = match consents_of(&web, &caller, &session).await {
        Ok(consents) => consents,
        Err(e) => return refused(&e),
    };
    let now = OffsetDateTime::now_utc();
    let Some(c) = consents
        .iter()
        .find(|c| c.id == id && c.status(now) == ConsentStatus::Active)
    else {
        return pages::error_page(
            StatusCode::NOT_FOUND,
            "Consentement introuvable",
            "Ce consentement n'existe pas, n'est pas le vôtre ou n'est plus en vigueur.",
        );
    };
    let consent = Names(&web.state.federation.registry()).consent(c, now);
    pages::render(
        StatusCode::OK,
        &WithdrawPage {
            layout: layout("Retirer un consentement", &session),
            consent,
            csrf: session.csrf.clone(),
        },
    )
}

/// `POST /citizen/consents/{id}/withdraw`: `Consents.Revoke` with the session's identity
/// evidence; the very next Fetch under it is refused.
pub async fn withdraw(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let (session_id, session, caller) = match posted(&web, &headers, &form) {
        Ok(s) => s,
        Err(page) => return *page,
    };
    let revoked = crate::consents::revoke(
        &web.state,
        &caller,
        &crate::consents::RevokeInput {
            consent_id: id,
            mandate_id: String::new(),
            id_token: session.id_token.clone(),
        },
    )
    .await;
    match revoked {
        Ok(r) if r.ended == 0 => announce(
            &web,
            &session_id,
            "Ce consentement n'était plus en vigueur (expiré ou déjà retiré) : il n'y avait rien \
             à retirer."
                .into(),
        ),
        Ok(_) => announce(&web, &session_id, "Votre consentement a été retiré.".into()),
        Err(e) => refused(&e),
    }
}

#[derive(Template)]
#[template(path = "mandate_revoke.html")]
struct RevokeMandatePage {
    layout: Layout,
    mandate: MandateRow,
    csrf: String,
}

/// `GET /citizen/mandates/{id}/revoke`: what revoking this mandate means, and the button.
pub async fn confirm_revoke_mandate(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    // Reached from another site, it reads (and records a read of) nothing until asked.
    if web.sent_from_elsewhere(&headers) && crate::validate::identifier("id", &id, 64).is_ok() {
        return pages::continue_here(
            &format!("/citizen/mandates/{id}/revoke"),
            "Afficher la révocation du mandat",
        );
    }
    let (session, caller) = match signed_in(&web, &headers) {
        Ok(signed) => signed,
        Err(page) => return *page,
    };
    let mandates = match mandates_of(&web, &caller, &session).await {
        Ok(mandates) => mandates,
        Err(e) => return refused(&e),
    };
    let now = OffsetDateTime::now_utc();
    let Some(m) = mandates
        .iter()
        .find(|m| m.id == id && m.status(now) == MandateStatus::Active)
    else {
        return pages::error_page(
            StatusCode::NOT_FOUND,
            "Mandat introuvable",
            "Ce mandat n'existe pas, n'est pas le vôtre ou n'est plus en vigueur.",
        );
    };
    let mandate = Names(&web.state.federation.registry()).mandate(m, now);
    pages::render(
        StatusCode::OK,
        &RevokeMandatePage {
            layout: layout("Révoquer un mandat", &session),
            mandate,
            csrf: session.csrf.clone(),
        },
    )
}

/// `POST /citizen/mandates/{id}/revoke`: `Mandates.Revoke` with the session's identity
/// evidence; the consents recorded under it end with it.
pub async fn revoke_mandate(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let (session_id, session, caller) = match posted(&web, &headers, &form) {
        Ok(s) => s,
        Err(page) => return *page,
    };
    match crate::mandates::revoke(&web.state, &caller, &id, &session.id_token).await {
        Ok(_) => announce(
            &web,
            &session_id,
            "Votre mandat a été révoqué. Les consentements donnés sous ce mandat ont pris fin \
             avec lui."
                .into(),
        ),
        Err(e) => refused(&e),
    }
}

/// Rows of the printable statement, at most: the newest first.
const MAX_STATEMENT_ROWS: usize = 2_000;

#[derive(Template)]
#[template(path = "statement.html")]
struct StatementPage {
    layout: Layout,
    accesses: Vec<AccessRow>,
    with_actions: bool,
    issued: String,
    truncated: bool,
    checkpoint: String,
    vkey: String,
}

/// `GET /citizen/releve`: every access (up to [`MAX_STATEMENT_ROWS`]) on one page to print,
/// with the checkpoint and the log key they can be checked against later.
pub async fn statement(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let (session, caller) = match signed_in(&web, &headers) {
        Ok(signed) => signed,
        Err(page) => return *page,
    };
    // Up to ten pages of reads, each recorded: not for a page elsewhere that sends the person
    // here. (The history page, one read, is where guichets' links and the identity providers'
    // answers lead: it is served whatever the referring site.)
    if web.sent_from_elsewhere(&headers) {
        return pages::continue_here("/citizen/releve", "Afficher le relevé à imprimer");
    }
    let registry = web.state.federation.registry();
    let names = Names(&registry);
    let mut accesses = Vec::new();
    let mut checkpoint = None;
    let mut page_token = String::new();
    let truncated = loop {
        let input = crate::accesses::ListInput {
            subject: session.subject.as_str().to_string(),
            mandate_id: String::new(),
            id_token: session.id_token.clone(),
            page_token,
            page_size: crate::accesses::MAX_PAGE_SIZE,
            filter: Default::default(),
        };
        let page = match crate::accesses::list(&web.state, &caller, &input).await {
            Ok(page) => page,
            Err(e) => return refused(&e),
        };
        checkpoint.get_or_insert(page.checkpoint);
        accesses.extend(page.accesses.iter().map(|a| names.access(a)));
        if page.next_page_token.is_empty() {
            break false;
        }
        if accesses.len() >= MAX_STATEMENT_ROWS {
            break true;
        }
        page_token = page.next_page_token;
    };
    pages::render(
        StatusCode::OK,
        &StatementPage {
            layout: layout("Relevé des consultations de vos données", &session),
            accesses,
            with_actions: false,
            issued: paris_time::long(OffsetDateTime::now_utc()),
            truncated,
            checkpoint: checkpoint.unwrap_or_default(),
            vkey: web.state.store.log_vkey().to_string(),
        },
    )
}

#[derive(Template)]
#[template(path = "contest.html")]
struct ContestPage {
    layout: Layout,
    entry: u64,
    csrf: String,
    error: bool,
}

/// `GET /citizen/contest/{entry}`: « Je ne reconnais pas cette consultation », why.
pub async fn contest_form(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(entry): Path<u64>,
) -> Response {
    let Some((_, session)) = session(&web, &headers) else {
        return see_other("/citizen", &[]);
    };
    pages::render(
        StatusCode::OK,
        &ContestPage {
            layout: layout("Je ne reconnais pas cette consultation", &session),
            entry,
            csrf: session.csrf.clone(),
            error: false,
        },
    )
}

#[derive(Deserialize)]
pub struct ContestForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    raison: String,
}

/// `POST /citizen/contest/{entry}`: the report, recorded in the log for auditors.
pub async fn contest(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(entry): Path<u64>,
    Form(form): Form<ContestForm>,
) -> Response {
    let csrf = CsrfForm {
        csrf: form.csrf.clone(),
    };
    let (id, session, caller) = match posted(&web, &headers, &csrf) {
        Ok(s) => s,
        Err(page) => return *page,
    };
    let Some(reason) = crate::event::ContestReason::parse(&form.raison) else {
        return pages::render(
            StatusCode::BAD_REQUEST,
            &ContestPage {
                layout: layout("Erreur : je ne reconnais pas cette consultation", &session),
                entry,
                csrf: session.csrf.clone(),
                error: true,
            },
        );
    };
    let input = crate::contests::ContestInput {
        id_token: session.id_token.clone(),
        entry,
        reason,
    };
    match crate::contests::contest(&web.state, &caller, &input).await {
        Ok(report) => announce(
            &web,
            &id,
            format!(
                "Votre signalement est inscrit au journal (n° {report}). Les contrôleurs de la \
                 fédération le verront et donneront suite."
            ),
        ),
        Err(e) => refused(&e),
    }
}
