//! The mediator's desk (`/desk`): an agent of a mediation structure logs in at the agents'
//! identity provider (second factor, enrolment in the registry), welcomes a person who proves
//! who they are on the desk's device (the citizens' identity provider, for the structure's
//! audience), records the mandate the person gives (`Mandates.Create`), prints it, and acts
//! for the person under it: pre-fills a form (`Guichet.Prefill`), records a consent
//! (`Consents.Grant`), reads their history (`Guichet.ListAccesses`), renews or revokes it.
//! The pages act as the agent (`Caller` of the structure with the agent's id), exactly as an
//! agent's certificate does over gRPC: one policy decides, and everything is journaled and
//! shown on the person's own citizen page, attributed to the agent and the structure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use time::OffsetDateTime;

use super::agent_login::{CallbackQuery, Logins};
use super::client::ClientSource;
use super::pages::{self, Acting, Layout, LayoutSession};
use super::paris_time;
use super::rows::{AccessRow, MandateRow, Names};
use super::session::{Ending, LoginKind};
use super::{Web, same_secret, see_other};
use crate::caller::Caller;
use crate::error::ApiError;
use crate::mandate::{Mandate, MandateStatus};
use crate::registry::{LegalBasis, Role};
use crate::subject::Subject;

const DESK_COOKIE: &str = "unefois_desk";
const DESK_LOGIN_COOKIE: &str = "unefois_desk_login";
/// An agent's working stretch at the desk; « Prolonger la session » is a new login.
const AGENT_SESSION: Duration = Duration::from_secs(60 * 60);
/// Accesses on one page of the person's history.
const PAGE_SIZE: u32 = 20;
/// Largest signed mandate document accepted (a scan or a PDF).
pub const MAX_DOCUMENT_BYTES: usize = 5 * 1024 * 1024;
/// How long a pre-fill may wait for the providers.
const PREFILL_DEADLINE: Duration = Duration::from_secs(10);

/// An agent logged in at the desk, and the person they welcome, if any.
#[derive(Clone)]
pub struct DeskSession {
    /// The agents' identity provider the agent logged in at (its registry id).
    pub provider: String,
    /// Their account there (`sub`): the session acts only while the registry in force still
    /// enrols that account as this agent.
    pub sub: String,
    /// The mediation structure.
    pub participant: String,
    /// The agent's id in it.
    pub agent: String,
    /// The agent's name (registry enrolment).
    pub agent_name: String,
    /// The token every form of this session carries.
    pub csrf: String,
    /// When the session ends.
    pub ends: Instant,
    /// The same, as a time people read.
    pub ends_at: OffsetDateTime,
    /// The person present, once they proved who they are.
    pub person: Option<Person>,
    /// The mandate the agent acts under, once chosen.
    pub acting: Option<String>,
    /// What the next page announces, once (never in a URL).
    pub flash: Option<&'static str>,
    /// A pre-filled form between its POST and the GET that shows it, once.
    pub prefilled: Option<Prefilled>,
}

/// A pre-filled form waiting to be shown: a reload of its page shows it no more and reads
/// nothing again (each read is in the person's history), a shared device's « Précédent »
/// neither.
#[derive(Clone)]
pub struct Prefilled {
    /// When it was filled: shown within [`PREFILLED_SHOWN_WITHIN`] only.
    at: Instant,
    /// The person and the mandate it was filled for.
    subject: Subject,
    mandate: String,
    /// The page.
    title: String,
    form: String,
    fields: Vec<FieldRow>,
}

/// How long a pre-filled form waits for its page: the browser follows the redirect at once.
const PREFILLED_SHOWN_WITHIN: Duration = Duration::from_secs(60);

impl Ending for DeskSession {
    fn ends(&self) -> Instant {
        self.ends
    }

    fn holder(&self) -> String {
        format!("{}/{}", self.participant, self.agent)
    }
}

/// The person present at the desk (kept in this session only, never in a URL or a log).
#[derive(Clone)]
pub struct Person {
    /// Who their ID token proved.
    pub subject: Subject,
    /// Their name as the token gives it, for the banner and the printed mandate.
    pub name: String,
    /// The ID token: the evidence of their presence that a mandate's creation needs.
    pub id_token: String,
    /// Until when that token proves their presence.
    pub present_until: OffsetDateTime,
    /// This visit's random id: a form opened for this person carries it, and is refused once
    /// someone else is at the desk.
    pub visit: String,
}

/// The open desk session of this browser, if any.
fn session(web: &Web, headers: &HeaderMap) -> Option<(String, DeskSession)> {
    let id = web.cookie_of(headers, DESK_COOKIE)?;
    web.desk.session(id).map(|s| (id.to_string(), s))
}

/// The agent as the orchestration sees them: the structure of the registry in force, with the
/// agent's id, while the registry still enrols the account they logged in with as that agent.
fn caller(web: &Web, s: &DeskSession) -> Result<Caller, Box<Response>> {
    super::agent_login::staff_caller(
        web,
        (&s.provider, &s.sub),
        (&s.participant, &s.agent),
        Role::Mediator,
        "Le registre de la fédération n'inscrit plus cet agent pour cette structure. \
         Adressez-vous au responsable de votre structure.",
    )
}

fn layout(web: &Web, title: &str, s: &DeskSession, acting: Option<&Mandate>) -> Layout {
    let registry = web.state.federation.registry();
    let mut layout = Layout::new(
        title,
        Some(LayoutSession {
            csrf: s.csrf.clone(),
            ends: paris_time::clock(s.ends_at),
            ends_unix: s.ends_at.unix_timestamp(),
            left_seconds: (s.ends_at - OffsetDateTime::now_utc())
                .whole_seconds()
                .max(0),
            logout: "/desk/logout",
            relogin: "/desk/login",
            who: Some(format!(
                "{}, {}",
                s.agent_name,
                Names(&registry).participant(&s.participant)
            )),
        }),
    );
    layout.acting = match (acting, &s.person) {
        (Some(m), Some(p)) => Some(Acting {
            person: p.name.clone(),
            mandate: m.id.clone(),
            expires: paris_time::long(m.expires_at),
        }),
        _ => None,
    };
    layout
}

/// The mandate the agent acts under, while it is in force and the person present's: the
/// banner of every page says it.
async fn acting_mandate(web: &Web, s: &DeskSession) -> Option<Mandate> {
    let (id, person) = (s.acting.as_deref()?, s.person.as_ref()?);
    let m = web.state.store.mandate(id).await.ok().flatten()?;
    let pseudonym = web.state.pseudonyms.audit(&person.subject);
    (m.structure == s.participant
        && m.subject == pseudonym
        && m.status(OffsetDateTime::now_utc()) == MandateStatus::Active)
        .then_some(m)
}

/// What an act refused by the broker tells the agent.
fn refused(e: &ApiError) -> Response {
    match e {
        ApiError::StoreUnavailable => pages::unavailable(),
        ApiError::IdentityEvidenceInvalid(_) | ApiError::IdentityEvidenceRequired => pages::render(
            StatusCode::FORBIDDEN,
            &Message {
                layout: Layout::new("La personne doit se reconnecter", None),
                text: "La preuve de présence de la personne n'est plus valable (elle a \
                           expiré ou a déjà servi). Demandez-lui de se reconnecter sur ce poste.",
                next: Some(("/desk/person/login", "La personne se reconnecte")),
            },
        ),
        other => {
            tracing::info!(reason = other.reason_code(), "web: desk act refused");
            pages::refusal(other)
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct Message<'a> {
    layout: Layout,
    text: &'a str,
    next: Option<(&'a str, &'a str)>,
}

/// The signed-in agent and their caller; without a session, off to the desk's login page.
fn signed_in(
    web: &Web,
    headers: &HeaderMap,
) -> Result<(String, DeskSession, Caller), Box<Response>> {
    let Some((id, s)) = session(web, headers) else {
        return Err(Box::new(see_other("/desk", &[])));
    };
    let caller = caller(web, &s)?;
    Ok((id, s, caller))
}

/// The same, with the person present (otherwise back to the desk's home).
fn with_person(
    web: &Web,
    headers: &HeaderMap,
) -> Result<(String, DeskSession, Person, Caller), Box<Response>> {
    let (id, s, caller) = signed_in(web, headers)?;
    match s.person.clone() {
        Some(p) => Ok((id, s, p, caller)),
        None => Err(Box::new(see_other("/desk", &[]))),
    }
}

/// The session a POST acts in: only from these pages (origin), with the session's CSRF token.
fn posted(
    web: &Web,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<(String, DeskSession, Caller), Box<Response>> {
    let (id, s) = posted_session(web, headers, csrf)?;
    let caller = caller(web, &s)?;
    Ok((id, s, caller))
}

/// The same, whatever the registry now says of the agent: for what ends the session or the
/// person's visit, which an agent no longer enrolled must still be able to do.
fn posted_session(
    web: &Web,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<(String, DeskSession), Box<Response>> {
    if !web.same_origin(headers) {
        return Err(Box::new(pages::forbidden()));
    }
    let Some((id, s)) = session(web, headers) else {
        return Err(Box::new(pages::session_ended("/desk/login")));
    };
    if !same_secret(csrf, &s.csrf) {
        return Err(Box::new(pages::forbidden()));
    }
    Ok((id, s))
}

/// The person's mandates with the structure, as `Mandates.List` gives them to its agent: the
/// ones in force first, then the others, newest first, [`SHOWN_MANDATES`] at most.
async fn mandates_of(
    web: &Web,
    caller: &Caller,
    person: &Person,
) -> Result<Vec<Mandate>, ApiError> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    // A person who gives a one-day mandate every week has a few hundred in ten years.
    for _ in 0..MAX_MANDATE_PAGES {
        let input = crate::mandates::ListInput {
            subject: person.subject.as_str().to_string(),
            page_size: crate::page::MAX_PAGE_SIZE,
            page_token,
            ..Default::default()
        };
        let (page, next, _) = crate::mandates::list(&web.state, caller, &input).await?;
        all.extend(page);
        if next.is_empty() {
            break;
        }
        page_token = next;
    }
    let now = OffsetDateTime::now_utc();
    all.sort_by_key(|m| {
        (
            m.status(now) != MandateStatus::Active,
            std::cmp::Reverse(m.created_at),
        )
    });
    all.truncate(SHOWN_MANDATES);
    Ok(all)
}

/// Mandates of a person listed at the desk, at most.
const SHOWN_MANDATES: usize = 50;
/// Pages of the person's mandates read to list them, at most.
const MAX_MANDATE_PAGES: usize = 20;

/// The person's mandate `id` with the structure, if it is theirs: read by its id, whoever
/// else's it might be is « introuvable ».
async fn mandate_of(
    web: &Web,
    caller: &Caller,
    person: &Person,
    id: &str,
) -> Result<Option<Mandate>, ApiError> {
    crate::validate::identifier("mandate_id", id, 64)?;
    let pseudonym = web.state.pseudonyms.audit(&person.subject);
    Ok(web
        .state
        .store
        .mandate(id)
        .await?
        .filter(|m| m.structure == caller.participant && m.subject == pseudonym))
}

fn no_such_mandate() -> Response {
    pages::error_page(
        StatusCode::NOT_FOUND,
        "Mandat introuvable",
        "Ce mandat n'existe pas, n'est pas celui de la personne présente, ou n'est plus en \
         vigueur.",
    )
}

#[derive(Template)]
#[template(path = "desk_login.html")]
struct LoginPage {
    layout: Layout,
}

#[derive(Template)]
#[template(path = "desk.html")]
struct HomePage {
    layout: Layout,
    csrf: String,
    structure: String,
    person: Option<String>,
    present: bool,
    mandates: Vec<MandateRow>,
    status: Option<String>,
}

/// `GET /desk`: the login invitation, the welcome of a person, or the person's mandates.
pub async fn home(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let Some((id, s)) = session(&web, &headers) else {
        return pages::render(
            StatusCode::OK,
            &LoginPage {
                layout: Layout::new("Espace des agents : connexion", None),
            },
        );
    };
    let caller = match caller(&web, &s) {
        Ok(c) => c,
        Err(page) => return *page,
    };
    let registry = web.state.federation.registry();
    let names = Names(&registry);
    let now = OffsetDateTime::now_utc();
    let mandates = match &s.person {
        Some(p) => match mandates_of(&web, &caller, p).await {
            Ok(m) => m.iter().map(|m| names.mandate(m, now)).collect(),
            Err(e) => return refused(&e),
        },
        None => Vec::new(),
    };
    pages::render(
        StatusCode::OK,
        &HomePage {
            layout: layout(
                &web,
                "Accueil d'une personne",
                &s,
                acting_mandate(&web, &s).await.as_ref(),
            ),
            csrf: s.csrf.clone(),
            structure: names.participant(&s.participant),
            person: s.person.as_ref().map(|p| p.name.clone()),
            present: s.person.as_ref().is_some_and(|p| p.present_until > now),
            mandates,
            status: web
                .desk
                .take_flash(&id, |s| s.flash.take().map(str::to_string)),
        },
    )
}

/// Where the desk's logins wait: its pending logins, its login cookie.
fn logins(web: &Web) -> Logins<'_, DeskSession> {
    Logins {
        web,
        table: &web.desk,
        cookie: DESK_LOGIN_COOKIE,
        session_cookie: DESK_COOKIE,
        space: "l'espace des agents",
    }
}

/// `GET /desk/login`: off to the agents' identity provider.
pub async fn login(State(web): State<Arc<Web>>, ClientSource(from): ClientSource) -> Response {
    logins(&web).agent(&web.agent_callback_url(), from)
}

/// `GET /desk/callback`: the agents' identity provider's answer; a desk session once the
/// token verifies, shows a second factor, and names an agent the registry enrols for a
/// mediation structure.
pub async fn callback(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(answer): Query<CallbackQuery>,
) -> Response {
    let refused = (
        "Espace réservé aux structures d'accompagnement",
        "Vous êtes inscrit pour une structure qui n'accompagne pas des personnes : l'espace \
         des agents ne vous est pas ouvert.",
    );
    let agent = match logins(&web)
        .staff_answer(
            &headers,
            &answer,
            &web.agent_callback_url(),
            Role::Mediator,
            refused,
        )
        .await
    {
        Ok(agent) => agent,
        Err(page) => return *page,
    };
    // « Prolonger la session »: the same agent logging in again in this browser with the same
    // account goes on with the person present and the mandate acted under while it is still in
    // force for them; another agent, or another account, starts afresh.
    let (person, acting) = match session(&web, &headers) {
        Some((_, earlier))
            if earlier.provider == agent.provider
                && earlier.sub == agent.sub
                && earlier.participant == agent.participant
                && earlier.agent == agent.agent =>
        {
            let acting = acting_mandate(&web, &earlier).await.map(|m| m.id);
            (earlier.person, acting)
        }
        _ => (None, None),
    };
    logins(&web).open_session(
        &headers,
        DESK_COOKIE,
        AGENT_SESSION,
        "/desk",
        |csrf, ends, ends_at| DeskSession {
            provider: agent.provider,
            sub: agent.sub,
            participant: agent.participant,
            agent: agent.agent,
            agent_name: agent.name,
            csrf,
            ends,
            ends_at,
            person,
            acting,
            flash: None,
            prefilled: None,
        },
    )
}

/// `GET /desk/person/login`: the person present logs in, on the desk's device, at the
/// citizens' identity provider, for the structure's audience (their token serves the structure
/// only).
pub async fn person_login(
    State(web): State<Arc<Web>>,
    ClientSource(from): ClientSource,
    headers: HeaderMap,
) -> Response {
    let (_, _, caller) = match signed_in(&web, &headers) {
        Ok(s) => s,
        Err(page) => return *page,
    };
    let Some(door) = web.citizens_door() else {
        return pages::error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Connexion de la personne indisponible",
            "Aucun fournisseur d'identité des usagers n'est relié à cet espace pour l'instant : \
             la personne ne peut pas se connecter sur ce poste. Réessayez plus tard.",
        );
    };
    let registry = web.state.federation.registry();
    let Some(structure) = registry.participant(&caller.participant) else {
        return pages::unavailable();
    };
    logins(&web).authorize(
        &door,
        LoginKind::PersonAtDesk,
        "/dev-idp/authorize",
        (structure.audience(), &web.desk_person_callback_url()),
        None,
        from,
    )
}

/// `GET /desk/person/callback`: the person is present once their ID token verifies as the
/// structure's identity evidence and carries the nonce asked for.
pub async fn person_callback(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(answer): Query<CallbackQuery>,
) -> Response {
    let (id, _, caller) = match signed_in(&web, &headers) {
        Ok(s) => s,
        Err(page) => return *page,
    };
    let registry = web.state.federation.registry();
    let Some(structure) = registry.participant(&caller.participant) else {
        return pages::unavailable();
    };
    let logins = logins(&web);
    let Some(door) = web.citizens_door() else {
        return logins.failed();
    };
    let (token, login) = match logins
        .redeemed(
            &door,
            &headers,
            &answer,
            LoginKind::PersonAtDesk,
            structure.audience(),
            &web.desk_person_callback_url(),
        )
        .await
    {
        Ok(redeemed) => redeemed,
        Err(page) => return *page,
    };
    let verified = match crate::evidence::proven(&token, &caller, &registry) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(
                reason = e.reason_code(),
                "web: the ID token of a person at a desk was refused"
            );
            return logins.failed();
        }
    };
    if !verified
        .nonce
        .as_deref()
        .is_some_and(|n| same_secret(n, &login.nonce))
    {
        return logins.failed();
    }
    // The login asked for a fresh authentication (`max_age=0`): a provider that ignored it and
    // answered with an earlier one, perhaps the previous visitor's on this shared device, does
    // not make anyone present (OpenID Connect Core 3.1.2.1: the client checks `auth_time`).
    if !verified.auth_time.is_some_and(|t| {
        t >= login
            .began_at
            .saturating_sub(crate::identity::LEEWAY_SECONDS)
    }) {
        tracing::warn!(
            "web: the ID token of a person at a desk shows no authentication since the login began"
        );
        return pages::render(
            StatusCode::FORBIDDEN,
            &Message {
                layout: Layout::new("La personne doit se connecter elle-même", None),
                text: "Le fournisseur d'identité n'a pas demandé à la personne de se connecter : \
                       il a repris une connexion plus ancienne, peut-être celle de la personne \
                       précédente sur ce poste. Personne n'est accueilli. Demandez à la personne \
                       de se déconnecter du fournisseur d'identité, puis de se connecter de \
                       nouveau.",
                next: Some(("/desk", "Revenir à l'accueil")),
            },
        );
    }
    let present_until = OffsetDateTime::from_unix_timestamp(verified.usable_until)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let Some(visit) = super::random_token() else {
        return pages::unavailable();
    };
    let mut person = Person {
        subject: verified.subject,
        name: verified
            .display_name
            .unwrap_or_else(|| "la personne présente".to_string()),
        id_token: token,
        present_until,
        visit,
    };
    web.desk.update(&id, |s| {
        match &s.person {
            // The same person logs in again: the same visit, its forms still theirs.
            Some(earlier) if earlier.subject == person.subject => {
                person.visit = earlier.visit.clone();
            }
            // Another person: nothing of the previous one's stays.
            _ => {
                s.acting = None;
                s.prefilled = None;
            }
        }
        s.person = Some(person);
    });
    see_other(
        "/desk",
        &[web.cookie(DESK_LOGIN_COOKIE, "", Some(Duration::ZERO))],
    )
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /desk/person/end`: the person leaves; nothing of them stays in the session.
pub async fn end_person(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    axum::extract::Form(form): axum::extract::Form<CsrfForm>,
) -> Response {
    // The person leaves whatever the registry now says of the agent: nothing of them stays.
    let (id, _) = match posted_session(&web, &headers, &form.csrf) {
        Ok(s) => s,
        Err(page) => return *page,
    };
    web.desk.update(&id, |s| {
        s.person = None;
        s.acting = None;
        s.prefilled = None;
        s.flash = Some("L'accueil de la personne est terminé.");
    });
    see_other("/desk", &[])
}

/// `POST /desk/logout`.
pub async fn logout(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    axum::extract::Form(form): axum::extract::Form<CsrfForm>,
) -> Response {
    if session(&web, &headers).is_none() {
        return see_other("/desk", &[]);
    }
    // Closed whenever the form is ours, even if the registry no longer enrols the agent: the
    // person present, their ID token and the mandate acted under go with it.
    match posted_session(&web, &headers, &form.csrf) {
        Ok((id, _)) => {
            web.desk.close(&id);
            see_other("/", &[web.cookie(DESK_COOKIE, "", Some(Duration::ZERO))])
        }
        Err(page) => *page,
    }
}

/// A purpose offered on the mandate form.
struct PurposeChoice {
    code: String,
    label: String,
    legal_reference: String,
    checked: bool,
}

#[derive(Template)]
#[template(path = "desk_mandate_new.html")]
struct NewMandatePage {
    layout: Layout,
    csrf: String,
    /// The visit of the person this form is for.
    visit: String,
    /// The request id this form is sent with (sent twice, one mandate).
    request_id: String,
    /// The SHA-256 typed, kept when the form comes back with errors; that of the document
    /// attached when it was received (a browser never fills a file field again).
    digest: String,
    /// The form came back with errors, but the document attached was received: its SHA-256
    /// stands in for it.
    document_received: bool,
    purposes: Vec<PurposeChoice>,
    durations: Vec<(u32, &'static str, bool)>,
    informed: bool,
    /// (field id, message).
    errors: Vec<(&'static str, &'static str)>,
    error_purposes: bool,
    error_duration: bool,
    error_informed: bool,
    error_document: bool,
}

const DURATIONS: [(u32, &str); 4] = [
    (1, "1 jour (une démarche aujourd'hui)"),
    (31, "1 mois (31 jours)"),
    (182, "6 mois (182 jours)"),
    (365, "1 an (365 jours)"),
];

/// The purposes a structure's mandate may name: those of its habilitations (it obtains data
/// only under them), else every purpose of the registry.
fn purposes_for(web: &Web, structure: &str, checked: &[String]) -> Vec<PurposeChoice> {
    let registry = web.state.federation.registry();
    let own: std::collections::BTreeSet<&str> = registry
        .habilitations()
        .iter()
        .filter(|h| h.consumer == structure)
        .flat_map(|h| h.purposes.iter().map(String::as_str))
        .collect();
    registry
        .purposes()
        .filter(|p| own.is_empty() || own.contains(p.code.as_str()))
        .map(|p| PurposeChoice {
            code: p.code.clone(),
            label: p.label.clone(),
            legal_reference: p.legal_reference.clone(),
            checked: checked.contains(&p.code),
        })
        .collect()
}

#[derive(Deserialize)]
pub struct NewQuery {
    /// Renewing this mandate: its purposes come checked.
    #[serde(default)]
    depuis: Option<String>,
}

/// `GET /desk/mandates/new`: the mandate form (purposes, duration, « personne informée », the
/// signed document).
pub async fn new_mandate(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(query): Query<NewQuery>,
) -> Response {
    let (_, s, person, caller) = match with_person(&web, &headers) {
        Ok(x) => x,
        Err(page) => return *page,
    };
    let checked = match &query.depuis {
        Some(id) => match mandate_of(&web, &caller, &person, id).await {
            Ok(m) => m.map(|m| m.purposes).unwrap_or_default(),
            Err(e) => return refused(&e),
        },
        None => Vec::new(),
    };
    pages::render(
        StatusCode::OK,
        &NewMandatePage {
            layout: layout(
                &web,
                "Créer un mandat",
                &s,
                acting_mandate(&web, &s).await.as_ref(),
            ),
            csrf: s.csrf.clone(),
            visit: person.visit.clone(),
            request_id: uuid::Uuid::now_v7().to_string(),
            digest: String::new(),
            document_received: false,
            purposes: purposes_for(&web, &s.participant, &checked),
            durations: DURATIONS.iter().map(|(d, l)| (*d, *l, false)).collect(),
            informed: false,
            errors: Vec::new(),
            error_purposes: false,
            error_duration: false,
            error_informed: false,
            error_document: false,
        },
    )
}

/// What the mandate form sent.
#[derive(Default)]
struct MandateForm {
    csrf: String,
    /// The visit of the person the form was served for.
    visit: String,
    /// The request id the form was served with: sent twice, one mandate.
    request_id: String,
    purposes: Vec<String>,
    duration: Option<u32>,
    informed: bool,
    /// The attached document's SHA-256 (the document itself is not kept).
    document_sha256: Option<[u8; 32]>,
    /// The SHA-256 typed, as typed.
    digest: String,
}

/// A request id the form carries (a UUID), or a fresh one.
fn request_id(sent: &str) -> String {
    match uuid::Uuid::parse_str(sent) {
        Ok(id) => id.to_string(),
        Err(_) => uuid::Uuid::now_v7().to_string(),
    }
}

async fn read_mandate_form(mut multipart: Multipart) -> Result<MandateForm, Response> {
    let bad = || {
        pages::error_page(
            StatusCode::BAD_REQUEST,
            "Formulaire illisible",
            "Le formulaire n'a pas pu être lu (fichier trop gros ? 5 Mo au plus). Revenez à la \
             page précédente et recommencez.",
        )
    };
    let mut form = MandateForm::default();
    while let Some(field) = multipart.next_field().await.map_err(|_| bad())? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "document" => {
                let bytes = field.bytes().await.map_err(|_| bad())?;
                if bytes.len() > MAX_DOCUMENT_BYTES {
                    return Err(bad());
                }
                if !bytes.is_empty() {
                    use sha2::Digest as _;
                    form.document_sha256 = Some(sha2::Sha256::digest(&bytes).into());
                }
            }
            _ => {
                let text = field.text().await.map_err(|_| bad())?;
                if text.len() > 1024 {
                    return Err(bad());
                }
                match name.as_str() {
                    "csrf" => form.csrf = text,
                    "visite" => form.visit = text,
                    "demande" => form.request_id = text,
                    "finalite" if form.purposes.len() < 32 => form.purposes.push(text),
                    "duree" => form.duration = text.parse().ok(),
                    "informee" => form.informed = text == "oui",
                    "empreinte" => form.digest = text.trim().to_ascii_lowercase(),
                    _ => {}
                }
            }
        }
    }
    Ok(form)
}

/// `POST /desk/mandates/new`: `Mandates.Create` with the person's identity evidence; then the
/// printable mandate.
pub async fn create_mandate(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    multipart: Multipart,
) -> Response {
    // Before its body is read (a signed document of up to 5 MiB): a form of these pages, in an
    // open session; its CSRF token is checked once read.
    if !web.same_origin(&headers) {
        return pages::forbidden();
    }
    if session(&web, &headers).is_none() {
        return pages::session_ended("/desk/login");
    }
    let form = match read_mandate_form(multipart).await {
        Ok(f) => f,
        Err(page) => return page,
    };
    let (id, s, caller) = match posted(&web, &headers, &form.csrf) {
        Ok(x) => x,
        Err(page) => return *page,
    };
    let Some(person) = s.person.clone() else {
        return see_other("/desk", &[]);
    };
    // Filled for the person present when it was opened: after another was welcomed (in another
    // tab), its purposes and document are not theirs.
    if !same_secret(&form.visit, &person.visit) {
        return pages::render(
            StatusCode::CONFLICT,
            &Message {
                layout: layout(&web, "La personne à l'accueil a changé", &s, None),
                text: "Ce formulaire a été ouvert pour une autre personne que celle qui est \
                       maintenant à l'accueil : aucun mandat n'a été enregistré. Remplissez de \
                       nouveau le formulaire avec la personne présente.",
                next: Some(("/desk/mandates/new", "Remplir de nouveau le formulaire")),
            },
        );
    }
    let offered = purposes_for(&web, &s.participant, &form.purposes);
    let purposes_ok = !form.purposes.is_empty()
        && form
            .purposes
            .iter()
            .all(|p| offered.iter().any(|o| &o.code == p));
    let duration_ok = form
        .duration
        .is_some_and(|d| DURATIONS.iter().any(|(x, _)| *x == d));
    let typed = match form.digest.as_str() {
        "" => Ok(None),
        hex_digest => hex::decode(hex_digest)
            .ok()
            .and_then(|d| <[u8; 32]>::try_from(d).ok())
            .map(Some)
            .ok_or(()),
    };
    // The document attached, or its SHA-256 typed; both, they must agree.
    let digest = match (form.document_sha256, typed) {
        (Some(attached), Ok(None)) => Some(attached),
        (Some(attached), Ok(Some(t))) if t == attached => Some(attached),
        (None, Ok(Some(t))) => Some(t),
        _ => None,
    };
    let document_ok = digest.is_some();
    let mut errors = Vec::new();
    if !purposes_ok {
        errors.push(("finalite-0", "Choisissez au moins une finalité."));
    }
    if !duration_ok {
        errors.push(("duree-0", "Choisissez une durée."));
    }
    if !form.informed {
        errors.push((
            "informee",
            "Cochez la case : la personne a été informée de ce que permet le mandat.",
        ));
    }
    if !document_ok {
        errors.push((
            "document",
            "Joignez le mandat signé par la personne, ou donnez son empreinte SHA-256 \
             (64 caractères hexadécimaux).",
        ));
    }
    if !errors.is_empty() {
        return pages::render(
            StatusCode::BAD_REQUEST,
            &NewMandatePage {
                layout: layout(&web, "Erreur : créer un mandat", &s, None),
                csrf: s.csrf.clone(),
                visit: person.visit.clone(),
                request_id: request_id(&form.request_id),
                digest: digest.map_or_else(|| form.digest.clone(), hex::encode),
                document_received: form.document_sha256.is_some() && document_ok,
                purposes: offered,
                durations: DURATIONS
                    .iter()
                    .map(|(d, l)| (*d, *l, form.duration == Some(*d)))
                    .collect(),
                informed: form.informed,
                error_purposes: !purposes_ok,
                error_duration: !duration_ok,
                error_informed: !form.informed,
                error_document: !document_ok,
                errors,
            },
        );
    }
    let input = crate::mandates::CreateInput {
        subject: person.subject.as_str().to_string(),
        purposes: form.purposes,
        duration_days: form.duration.unwrap_or_default(),
        signed_document: Vec::new(),
        document_sha256: digest.map(|d| d.to_vec()).unwrap_or_default(),
        id_token: person.id_token.clone(),
        request_id: request_id(&form.request_id),
    };
    match crate::mandates::create(&web.state, &caller, input).await {
        Ok((mandate, _)) => {
            web.desk
                .update(&id, |s| s.acting = Some(mandate.id.clone()));
            see_other(&format!("/desk/mandates/{}", mandate.id), &[])
        }
        Err(e) => refused(&e),
    }
}

#[derive(Template)]
#[template(path = "desk_mandate.html")]
struct MandatePage {
    layout: Layout,
    csrf: String,
    mandate: MandateRow,
    person: String,
    agent: String,
    purposes: Vec<(String, String)>,
    days: u32,
    created: String,
    expires: String,
    document: String,
    acting: bool,
}

/// `GET /desk/mandates/{id}`: the mandate in large type, to print and give the person.
pub async fn mandate_page(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(mandate_id): Path<String>,
) -> Response {
    let (_, s, person, caller) = match with_person(&web, &headers) {
        Ok(x) => x,
        Err(page) => return *page,
    };
    let m = match mandate_of(&web, &caller, &person, &mandate_id).await {
        Ok(Some(m)) => m,
        Ok(None) => return no_such_mandate(),
        Err(e) => return refused(&e),
    };
    let registry = web.state.federation.registry();
    let names = Names(&registry);
    let now = OffsetDateTime::now_utc();
    let acting = s.acting.as_deref() == Some(m.id.as_str());
    pages::render(
        StatusCode::OK,
        &MandatePage {
            layout: layout(
                &web,
                &format!("Mandat n° {}", m.id),
                &s,
                acting.then_some(&m),
            ),
            csrf: s.csrf.clone(),
            mandate: names.mandate(&m, now),
            person: person.name.clone(),
            agent: names.agent(&m.structure, &m.agent),
            purposes: m
                .purposes
                .iter()
                .map(|p| {
                    let purpose = registry.purpose(p);
                    (
                        purpose.map_or_else(|| p.clone(), |x| x.label.clone()),
                        purpose
                            .map(|x| x.legal_reference.clone())
                            .unwrap_or_default(),
                    )
                })
                .collect(),
            days: m.duration_days,
            created: paris_time::long(m.created_at),
            expires: paris_time::long(m.expires_at),
            document: m.document_sha256.clone(),
            acting,
        },
    )
}

/// `POST /desk/mandates/{id}/act`: the agent acts for the person under this mandate.
pub async fn act(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(mandate_id): Path<String>,
    axum::extract::Form(form): axum::extract::Form<CsrfForm>,
) -> Response {
    let (id, s, caller) = match posted(&web, &headers, &form.csrf) {
        Ok(x) => x,
        Err(page) => return *page,
    };
    let Some(person) = s.person else {
        return see_other("/desk", &[]);
    };
    match mandate_of(&web, &caller, &person, &mandate_id).await {
        Ok(Some(m)) if m.status(OffsetDateTime::now_utc()) == MandateStatus::Active => {
            web.desk.update(&id, |s| s.acting = Some(m.id.clone()));
            see_other("/desk/agir", &[])
        }
        Ok(_) => no_such_mandate(),
        Err(e) => refused(&e),
    }
}

/// [`acting`] for a form posted from these pages with the session's CSRF token.
async fn posted_acting(
    web: &Web,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<(String, DeskSession, Person, Caller, Mandate), Box<Response>> {
    let (id, s, caller) = posted(web, headers, csrf)?;
    acting_in(web, id, s, caller).await
}

/// The session, the person, the caller and the mandate in force the agent acts under;
/// without one, back to the desk's home.
async fn acting(
    web: &Web,
    headers: &HeaderMap,
) -> Result<(String, DeskSession, Person, Caller, Mandate), Box<Response>> {
    let (id, s, caller) = signed_in(web, headers)?;
    acting_in(web, id, s, caller).await
}

/// [`acting`] in the session `id` already read (`s`, its `caller`).
async fn acting_in(
    web: &Web,
    id: String,
    s: DeskSession,
    caller: Caller,
) -> Result<(String, DeskSession, Person, Caller, Mandate), Box<Response>> {
    let Some(person) = s.person.clone() else {
        return Err(Box::new(see_other("/desk", &[])));
    };
    let Some(mandate_id) = s.acting.clone() else {
        return Err(Box::new(see_other("/desk", &[])));
    };
    match mandate_of(web, &caller, &person, &mandate_id).await {
        Ok(Some(m)) if m.status(OffsetDateTime::now_utc()) == MandateStatus::Active => {
            Ok((id, s, person, caller, m))
        }
        Ok(_) => Err(Box::new(no_such_mandate())),
        Err(e) => Err(Box::new(refused(&e))),
    }
}

/// A form the agent may pre-fill under the mandate.
struct FormChoice {
    id: String,
    label: String,
}

/// A consent the agent may record for the person under the mandate: a habilitation on consent
/// of another consumer, for one of the mandate's purposes.
struct ConsentChoice {
    value: String,
    consumer: String,
    data: String,
    purpose: String,
}

#[derive(Template)]
#[template(path = "desk_acting.html")]
struct ActingPage {
    layout: Layout,
    csrf: String,
    /// The mandate acted under: its forms are refused once the agent acts under another (for
    /// another person, in another tab).
    mandate: String,
    /// The request id of the consent's form.
    request_id: String,
    forms: Vec<FormChoice>,
    consents: Vec<ConsentChoice>,
    status: Option<String>,
}

/// `GET /desk/agir`: what the agent can do for the person under the mandate.
pub async fn acting_page(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let (id, s, _, _, m) = match acting(&web, &headers).await {
        Ok(x) => x,
        Err(page) => return *page,
    };
    let registry = web.state.federation.registry();
    let names = Names(&registry);
    let forms = registry
        .forms()
        .filter(|f| m.purposes.contains(&f.purpose))
        .map(|f| FormChoice {
            id: f.id.clone(),
            label: f.label.clone(),
        })
        .collect();
    let consents = consent_choices(&registry, &m, &s.participant)
        .into_iter()
        .map(|(h, purpose)| ConsentChoice {
            value: format!("{}|{}", h.id, purpose),
            consumer: names.participant(&h.consumer),
            data: names.attestation_type(&h.attestation_type),
            purpose: names.purpose(&purpose),
        })
        .collect();
    pages::render(
        StatusCode::OK,
        &ActingPage {
            layout: layout(&web, "Agir pour la personne", &s, Some(&m)),
            csrf: s.csrf.clone(),
            mandate: m.id.clone(),
            request_id: uuid::Uuid::now_v7().to_string(),
            forms,
            consents,
            status: web
                .desk
                .take_flash(&id, |s| s.flash.take().map(str::to_string)),
        },
    )
}

/// The consents an agent may record under `m`: habilitations on consent, of another consumer
/// than the structure itself (a consent that benefits the structure needs the person's own
/// identity evidence, docs/security.md), for a purpose of the mandate.
fn consent_choices<'r>(
    registry: &'r crate::registry::Registry,
    m: &Mandate,
    structure: &str,
) -> Vec<(&'r crate::registry::Habilitation, String)> {
    registry
        .habilitations()
        .iter()
        .filter(|h| h.legal_basis == LegalBasis::Consent && h.consumer != structure)
        .flat_map(|h| {
            h.purposes
                .iter()
                .filter(|p| m.purposes.contains(p))
                .map(move |p| (h, p.clone()))
        })
        .collect()
}

/// One field of a pre-filled form, as the agent sees it.
#[derive(Clone)]
struct FieldRow {
    /// The field's name in the form.
    key: String,
    /// What it holds, for people.
    name: String,
    value: String,
    source: String,
    missing: Option<String>,
}

#[derive(Template)]
#[template(path = "desk_prefilled.html")]
struct PrefilledPage {
    layout: Layout,
    form: String,
    fields: Vec<FieldRow>,
}

#[derive(Deserialize)]
pub struct PrefillForm {
    #[serde(default)]
    csrf: String,
    /// The mandate the page was served under.
    #[serde(default)]
    mandat: String,
    #[serde(default)]
    formulaire: String,
}

/// The answer to a form of the acting page served under another mandate than the one the agent
/// now acts under (another person welcomed, or another mandate chosen, in another tab):
/// nothing done for the person present on the strength of a choice made for someone else.
fn acting_changed(web: &Web, s: &DeskSession, m: &Mandate) -> Response {
    pages::render(
        StatusCode::CONFLICT,
        &Message {
            layout: layout(web, "Le mandat a changé", s, Some(m)),
            text: "Ce formulaire a été ouvert sous un autre mandat que celui sous lequel vous \
                   agissez maintenant, peut-être pour une autre personne : rien n'a été fait. \
                   Choisissez de nouveau avec la personne présente.",
            next: Some(("/desk/agir", "Revenir à la page du mandat")),
        },
    )
}

/// `POST /desk/agir/formulaire`: `Guichet.Prefill` under the mandate; each field's value and
/// where it comes from, or why it is missing, shown once by [`prefilled`].
pub async fn prefill(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    axum::extract::Form(form): axum::extract::Form<PrefillForm>,
) -> Response {
    let (id, s, person, caller, m) = match posted_acting(&web, &headers, &form.csrf).await {
        Ok(x) => x,
        Err(page) => return *page,
    };
    if form.mandat != m.id {
        return acting_changed(&web, &s, &m);
    }
    let input = crate::prefill::PrefillInput {
        subject: person.subject.as_str().to_string(),
        form: form.formulaire.clone(),
        mandate_id: m.id.clone(),
        request_id: uuid::Uuid::now_v7().to_string(),
        deadline: Some(PREFILL_DEADLINE),
        preview: false,
        id_token: String::new(),
    };
    let filled = match crate::prefill::prefill(&web.state, &caller, input).await {
        Ok(f) => f,
        Err(e) => return refused(&e),
    };
    let registry = web.state.federation.registry();
    let names = Names(&registry);
    let label = registry
        .form(&filled.form)
        .map_or_else(|| filled.form.clone(), |f| f.label.clone());
    // A field as people read it: its claim's description in the registry, else its name.
    let described = |name: &str| -> String {
        registry
            .form(&filled.form)
            .and_then(|spec| spec.fields.iter().find(|x| x.name == name))
            .and_then(|field| {
                registry
                    .attestation_type(&field.attestation_type)?
                    .claims
                    .iter()
                    .find(|c| c.name == field.claim)
                    .map(|c| c.description.clone())
            })
            .unwrap_or_else(|| name.to_string())
    };
    let mut fields: Vec<FieldRow> = filled
        .filled
        .iter()
        .map(|f| FieldRow {
            key: f.name.clone(),
            name: described(&f.name),
            value: claim_text(&f.value),
            source: format!(
                "{} ({}), le {}",
                names.attestation_type(&f.source.attestation_type),
                names.participant(&f.source.provider),
                paris_time::long(f.source.retrieved_at)
            ),
            missing: None,
        })
        .collect();
    fields.extend(filled.missing.iter().map(|f| FieldRow {
        key: f.name.clone(),
        name: described(&f.name),
        value: String::new(),
        source: String::new(),
        missing: Some(f.message.clone()),
    }));
    // In the form's own order.
    if let Some(spec) = registry.form(&filled.form) {
        fields.sort_by_key(|f| spec.fields.iter().position(|x| x.name == f.key));
    }
    let prefilled = Prefilled {
        at: Instant::now(),
        subject: person.subject,
        mandate: m.id,
        title: format!("Formulaire pré-rempli : {label}"),
        form: label,
        fields,
    };
    web.desk.update(&id, |s| s.prefilled = Some(prefilled));
    see_other("/desk/agir/formulaire", &[])
}

/// `GET /desk/agir/formulaire`: the form [`prefill`] just filled, once; after that (a reload,
/// « Précédent »), back to the actions, where asking again reads again.
pub async fn prefilled(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let (id, s, person, _, m) = match acting(&web, &headers).await {
        Ok(x) => x,
        Err(page) => return *page,
    };
    let mut taken = None;
    web.desk.update(&id, |s| taken = s.prefilled.take());
    match taken {
        Some(p)
            if p.at.elapsed() < PREFILLED_SHOWN_WITHIN
                && p.subject == person.subject
                && p.mandate == m.id =>
        {
            pages::render(
                StatusCode::OK,
                &PrefilledPage {
                    layout: layout(&web, &p.title, &s, Some(&m)),
                    form: p.form,
                    fields: p.fields,
                },
            )
        }
        _ => {
            web.desk.update(&id, |s| {
                s.flash = Some(
                    "Le formulaire pré-rempli n'est affiché qu'une fois. Pour le revoir, \
                     demandez-le de nouveau : chaque lecture est inscrite dans l'historique de \
                     la personne.",
                );
            });
            see_other("/desk/agir", &[])
        }
    }
}

/// A claim's value as a person reads it.
fn claim_text(v: &unefois_adapters::ClaimValue) -> String {
    use unefois_adapters::ClaimValue as V;
    match v {
        V::String(s) => s.clone(),
        V::Integer(i) => i.to_string(),
        V::Number(n) => n.to_string().replace('.', ","),
        V::Boolean(true) => "oui".into(),
        V::Boolean(false) => "non".into(),
        V::Date(d) => paris_time::date(*d),
    }
}

#[derive(Deserialize)]
pub struct GrantForm {
    #[serde(default)]
    csrf: String,
    /// The mandate the page was served under.
    #[serde(default)]
    mandat: String,
    #[serde(default)]
    offre: String,
    /// The request id the acting page was served with: sent twice, one consent.
    #[serde(default)]
    demande: String,
}

/// `POST /desk/agir/consentement`: `Consents.Grant` under the mandate, for as long as the
/// mandate lasts (a year at most).
pub async fn grant(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    axum::extract::Form(form): axum::extract::Form<GrantForm>,
) -> Response {
    let (id, s, person, caller, m) = match posted_acting(&web, &headers, &form.csrf).await {
        Ok(x) => x,
        Err(page) => return *page,
    };
    if form.mandat != m.id {
        return acting_changed(&web, &s, &m);
    }
    let registry = web.state.federation.registry();
    let Some((h, purpose)) = consent_choices(&registry, &m, &s.participant)
        .into_iter()
        .find(|(h, p)| format!("{}|{}", h.id, p) == form.offre)
    else {
        return pages::error_page(
            StatusCode::BAD_REQUEST,
            "Consentement impossible",
            "Ce consentement ne peut pas être donné sous ce mandat. Revenez à la page \
             précédente et choisissez-en un de la liste.",
        );
    };
    let left = (m.expires_at - OffsetDateTime::now_utc()).whole_days();
    let input = crate::consents::GrantInput {
        subject: person.subject.as_str().to_string(),
        consumer: h.consumer.clone(),
        attestation_types: vec![h.attestation_type.clone()],
        purpose,
        valid_days: u32::try_from(left.clamp(1, 365)).unwrap_or(1),
        mandate_id: m.id.clone(),
        request_id: request_id(&form.demande),
        ..Default::default()
    };
    match crate::consents::grant(&web.state, &caller, input).await {
        Ok(_) => {
            web.desk.update(&id, |s| {
                s.flash = Some(
                    "Le consentement est enregistré. Il prend fin au plus tard avec le mandat, et \
                     la personne peut le retirer depuis son espace usager.",
                );
            });
            see_other("/desk/agir", &[])
        }
        Err(e) => refused(&e),
    }
}

#[derive(Template)]
#[template(path = "desk_history.html")]
struct HistoryPage {
    layout: Layout,
    accesses: Vec<AccessRow>,
    with_actions: bool,
    older: Option<String>,
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    #[serde(default)]
    avant: Option<String>,
}

/// `GET /desk/agir/historique`: the person's history, as `Guichet.ListAccesses` gives it to
/// an agent under their mandate.
pub async fn history(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(query): Query<HistoryQuery>,
) -> Response {
    // Reached from another site, it reads (and records a read of) nothing until asked.
    if web.sent_from_elsewhere(&headers) {
        let href = match &query.avant {
            Some(token) => format!(
                "/desk/agir/historique?{}",
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("avant", token)
                    .finish()
            ),
            None => "/desk/agir/historique".to_string(),
        };
        return pages::continue_staff(&href, "Afficher l'historique de la personne");
    }
    let (_, s, person, caller, m) = match acting(&web, &headers).await {
        Ok(x) => x,
        Err(page) => return *page,
    };
    let input = crate::accesses::ListInput {
        subject: person.subject.as_str().to_string(),
        mandate_id: m.id.clone(),
        id_token: String::new(),
        page_token: query.avant.unwrap_or_default(),
        page_size: PAGE_SIZE,
        filter: Default::default(),
    };
    let page = match crate::accesses::list(&web.state, &caller, &input).await {
        Ok(p) => p,
        Err(e) => return refused(&e),
    };
    let registry = web.state.federation.registry();
    let names = Names(&registry);
    pages::render(
        StatusCode::OK,
        &HistoryPage {
            layout: layout(
                &web,
                "Historique des consultations de la personne",
                &s,
                Some(&m),
            ),
            accesses: page.accesses.iter().map(|a| names.access(a)).collect(),
            with_actions: false,
            older: (!page.next_page_token.is_empty()).then_some(page.next_page_token),
        },
    )
}

#[derive(Template)]
#[template(path = "desk_mandate_revoke.html")]
struct RevokePage {
    layout: Layout,
    csrf: String,
    mandate: MandateRow,
}

/// `GET /desk/mandates/{id}/revoke`: what revoking means, and the button.
pub async fn confirm_revoke(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(mandate_id): Path<String>,
) -> Response {
    let (_, s, person, caller) = match with_person(&web, &headers) {
        Ok(x) => x,
        Err(page) => return *page,
    };
    let now = OffsetDateTime::now_utc();
    match mandate_of(&web, &caller, &person, &mandate_id).await {
        Ok(Some(m)) if m.status(now) == MandateStatus::Active => {
            let mandate = Names(&web.state.federation.registry()).mandate(&m, now);
            pages::render(
                StatusCode::OK,
                &RevokePage {
                    layout: layout(
                        &web,
                        "Révoquer un mandat",
                        &s,
                        acting_mandate(&web, &s).await.as_ref(),
                    ),
                    csrf: s.csrf.clone(),
                    mandate,
                },
            )
        }
        Ok(_) => no_such_mandate(),
        Err(e) => refused(&e),
    }
}

/// `POST /desk/mandates/{id}/revoke`: `Mandates.Revoke` by the structure's agent; the
/// consents recorded under it end with it.
pub async fn revoke(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(mandate_id): Path<String>,
    axum::extract::Form(form): axum::extract::Form<CsrfForm>,
) -> Response {
    let (id, s, caller) = match posted(&web, &headers, &form.csrf) {
        Ok(x) => x,
        Err(page) => return *page,
    };
    let Some(person) = s.person else {
        return see_other("/desk", &[]);
    };
    // Only a mandate of the person present, as the pages show them.
    match mandate_of(&web, &caller, &person, &mandate_id).await {
        Ok(Some(_)) => {}
        Ok(None) => return no_such_mandate(),
        Err(e) => return refused(&e),
    }
    match crate::mandates::revoke(&web.state, &caller, &mandate_id, "").await {
        Ok(_) => {
            web.desk.update(&id, |s| {
                if s.acting.as_deref() == Some(mandate_id.as_str()) {
                    s.acting = None;
                }
                s.flash = Some(
                    "Le mandat est révoqué. Les consentements donnés sous ce mandat ont pris fin \
                     avec lui.",
                );
            });
            see_other("/desk", &[])
        }
        Err(e) => refused(&e),
    }
}
