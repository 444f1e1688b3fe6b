//! The auditors' console (`/audit`): an auditor's staff member logs in at the agents' identity
//! provider (second factor, enrolment for an auditor of the registry) and reads the log as
//! `Audit.ListEvents` gives it (the same `audit::events::audited`, so that every read is
//! recorded before it happens, as an `audit_read` entry): events filtered by time, kind,
//! participant, attestation type, outcome and a person (given in full, read as their audit
//! pseudonym, shown only as that), the citizens' contest reports, CSV and JSON exports; and
//! the proofs, checked in the auditor's browser against the key they pin (console.js): the
//! latest checkpoint, its consistency with one they kept, an entry's inclusion; a proof
//! bundle of an entry, and a single-file verifier that checks it offline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use super::agent_login::{CallbackQuery, Logins};
use super::client::ClientSource;
use super::pages::{self, Layout, LayoutSession};
use super::paris_time;
use super::rows::Names;
use super::session::Ending;
use super::{Web, same_secret, see_other};
use crate::audit::events::{self, AuditQuery, LoggedEvent};
use crate::caller::Caller;
use crate::error::ApiError;
use crate::event::{Event, Record};
use crate::registry::Role;
use crate::store::{Store, StoreError};

const CONSOLE_COOKIE: &str = "unefois_audit";
const CONSOLE_LOGIN_COOKIE: &str = "unefois_audit_login";
/// A staff member's working stretch at the console; « Prolonger la session » is a new login.
const STAFF_SESSION: Duration = Duration::from_secs(60 * 60);
/// Events on one page.
const PAGE_EVENTS: u32 = 50;
/// Most events one export holds (the export says when it holds fewer than selected).
pub const MAX_EXPORT: usize = 50_000;

/// An auditor's staff member at the console, and the query they last asked.
#[derive(Clone)]
pub struct ConsoleSession {
    /// The agents' identity provider the staff member logged in at (its registry id).
    pub provider: String,
    /// Their account there (`sub`): the session acts only while the registry in force still
    /// enrols that account as this staff member.
    pub sub: String,
    /// The auditor participant.
    pub participant: String,
    /// The staff member's agent id there.
    pub agent: String,
    /// Their name (registry enrolment).
    pub name: String,
    /// The token every form of this session carries.
    pub csrf: String,
    /// When the session ends.
    pub ends: Instant,
    /// The same, as a time people read.
    pub ends_at: OffsetDateTime,
    /// The filters last asked (the person among them stays here, never in a URL).
    pub filters: Filters,
}

impl Ending for ConsoleSession {
    fn ends(&self) -> Instant {
        self.ends
    }

    fn holder(&self) -> String {
        format!("{}/{}", self.participant, self.agent)
    }
}

/// The filters of the events' form, as typed.
#[derive(Clone, Default, Deserialize)]
pub struct Filters {
    #[serde(default)]
    genre: String,
    #[serde(default)]
    participant: String,
    #[serde(default)]
    attestation: String,
    #[serde(default)]
    resultat: String,
    /// A person (`test:…`, `pivot:…`): read as their audit pseudonym by the broker.
    #[serde(default)]
    personne: String,
    /// From this day (Paris), `AAAA-MM-JJ`.
    #[serde(default)]
    du: String,
    /// Through this day (Paris), `AAAA-MM-JJ`.
    #[serde(default)]
    au: String,
}

fn session(web: &Web, headers: &HeaderMap) -> Option<(String, ConsoleSession)> {
    let id = web.cookie_of(headers, CONSOLE_COOKIE)?;
    web.console.session(id).map(|s| (id.to_string(), s))
}

/// The staff member as the orchestration sees them: the auditor of the registry in force,
/// with their agent id, while the registry still enrols the account they logged in with as
/// that staff member.
fn caller(web: &Web, s: &ConsoleSession) -> Result<Caller, Box<Response>> {
    super::agent_login::staff_caller(
        web,
        (&s.provider, &s.sub),
        (&s.participant, &s.agent),
        Role::Auditor,
        "Le registre de la fédération n'inscrit plus ce compte pour un contrôleur.",
    )
}

fn signed_in(
    web: &Web,
    headers: &HeaderMap,
) -> Result<(String, ConsoleSession, Caller), Box<Response>> {
    let Some((id, s)) = session(web, headers) else {
        return Err(Box::new(see_other("/audit", &[])));
    };
    let caller = caller(web, &s)?;
    Ok((id, s, caller))
}

fn layout(web: &Web, title: &str, s: &ConsoleSession) -> Layout {
    let registry = web.state.federation.registry();
    Layout::new(
        title,
        Some(LayoutSession {
            csrf: s.csrf.clone(),
            ends: paris_time::clock(s.ends_at),
            ends_unix: s.ends_at.unix_timestamp(),
            left_seconds: (s.ends_at - OffsetDateTime::now_utc())
                .whole_seconds()
                .max(0),
            logout: "/audit/logout",
            relogin: "/audit/login",
            who: Some(format!(
                "{}, {}",
                s.name,
                Names(&registry).participant(&s.participant)
            )),
        }),
    )
}

fn refused(e: &ApiError) -> Response {
    match e {
        ApiError::StoreUnavailable => pages::unavailable(),
        other => {
            tracing::info!(reason = other.reason_code(), "web: console read refused");
            pages::refusal(other)
        }
    }
}

fn logins(web: &Web) -> Logins<'_, ConsoleSession> {
    Logins {
        web,
        table: &web.console,
        cookie: CONSOLE_LOGIN_COOKIE,
        session_cookie: CONSOLE_COOKIE,
        space: "la console d'audit",
    }
}

/// `GET /audit/login`: off to the agents' identity provider.
pub async fn login(State(web): State<Arc<Web>>, ClientSource(from): ClientSource) -> Response {
    logins(&web).agent(&web.console_callback_url(), from)
}

/// `GET /audit/callback`: a console session once the agents' identity provider's answer logs
/// in a staff member the registry enrols for an auditor.
pub async fn callback(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(answer): Query<CallbackQuery>,
) -> Response {
    let refused = (
        "Console réservée aux contrôleurs",
        "Vous êtes inscrit pour une structure qui ne contrôle pas la fédération : la console \
         d'audit ne vous est pas ouverte.",
    );
    let agent = match logins(&web)
        .staff_answer(
            &headers,
            &answer,
            &web.console_callback_url(),
            Role::Auditor,
            refused,
        )
        .await
    {
        Ok(agent) => agent,
        Err(page) => return *page,
    };
    logins(&web).open_session(
        &headers,
        CONSOLE_COOKIE,
        STAFF_SESSION,
        "/audit",
        |csrf, ends, ends_at| ConsoleSession {
            provider: agent.provider,
            sub: agent.sub,
            participant: agent.participant,
            agent: agent.agent,
            name: agent.name,
            csrf,
            ends,
            ends_at,
            filters: Filters::default(),
        },
    )
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /audit/logout`.
pub async fn logout(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let Some((id, s)) = session(&web, &headers) else {
        return see_other("/audit", &[]);
    };
    if !web.same_origin(&headers) || !same_secret(&form.csrf, &s.csrf) {
        return pages::forbidden();
    }
    web.console.close(&id);
    see_other("/", &[web.cookie(CONSOLE_COOKIE, "", Some(Duration::ZERO))])
}

/// An option of a select: (value, words, selected).
type Choice = (String, String, bool);

#[derive(Template)]
#[template(path = "audit_login.html")]
struct LoginPage {
    layout: Layout,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct HomePage {
    layout: Layout,
    csrf: String,
    kinds: Vec<Choice>,
    participants: Vec<Choice>,
    types: Vec<Choice>,
    outcomes: Vec<Choice>,
    du: String,
    au: String,
    /// (field id, message).
    errors: Vec<(&'static str, String)>,
    error_person: bool,
    error_dates: bool,
}

/// The record kinds, in the console's words.
const KINDS: &[(&str, &str)] = &[
    ("exchange", "Échange de données"),
    ("consent_granted", "Consentement donné"),
    ("consent_renewed", "Consentement renouvelé"),
    ("consent_revoked", "Consentement retiré"),
    ("consents_read", "Consentements consultés"),
    ("access_history_read", "Historique consulté"),
    ("mandate_created", "Mandat créé"),
    ("mandate_revoked", "Mandat révoqué"),
    ("access_contested", "Consultation contestée"),
    ("audit_read", "Lecture d'audit"),
    ("harvesting_alarm", "Alerte de moissonnage"),
    ("rate_limited", "Débit limité"),
    ("registry_loaded", "Registre chargé"),
    ("broker_started", "Démarrage du service"),
    ("broker_stopped", "Arrêt du service"),
];

const OUTCOMES: &[(&str, &str)] = &[
    ("granted", "Transmises"),
    ("denied", "Refusé"),
    ("failed", "Échec"),
    ("previewed", "Prévisualisées"),
    ("rejected", "Refusées par la personne"),
];

fn kind_label(kind: &str) -> String {
    KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or_else(|| kind.to_string(), |(_, l)| (*l).to_string())
}

fn choices<'a>(all: impl Iterator<Item = (String, String)> + 'a, selected: &'a str) -> Vec<Choice> {
    std::iter::once((String::new(), "Tous".to_string(), selected.is_empty()))
        .chain(all.map(|(v, l)| {
            let on = v == selected;
            (v, l, on)
        }))
        .collect()
}

fn home_page(
    web: &Web,
    s: &ConsoleSession,
    f: &Filters,
    errors: Vec<(&'static str, String)>,
) -> HomePage {
    let registry = web.state.federation.registry();
    let error_person = errors.iter().any(|(id, _)| *id == "personne");
    let error_dates = errors.iter().any(|(id, _)| *id == "du");
    HomePage {
        layout: layout(
            web,
            if errors.is_empty() {
                "Console d'audit"
            } else {
                "Erreur : console d'audit"
            },
            s,
        ),
        csrf: s.csrf.clone(),
        kinds: choices(
            KINDS
                .iter()
                .map(|(k, l)| ((*k).to_string(), (*l).to_string())),
            &f.genre,
        ),
        participants: choices(
            registry
                .participants()
                .map(|p| (p.id.clone(), p.name.clone())),
            &f.participant,
        ),
        types: choices(
            registry
                .attestation_types()
                .map(|t| (t.id.clone(), t.description.clone())),
            &f.attestation,
        ),
        outcomes: choices(
            OUTCOMES
                .iter()
                .map(|(k, l)| ((*k).to_string(), (*l).to_string())),
            &f.resultat,
        ),
        du: f.du.clone(),
        au: f.au.clone(),
        errors,
        error_person,
        error_dates,
    }
}

/// `GET /audit`: the login invitation, or the events' filters and the console's tools.
pub async fn home(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let Some((_, s)) = session(&web, &headers) else {
        return pages::render(
            StatusCode::OK,
            &LoginPage {
                layout: Layout::new("Console d'audit : connexion", None),
            },
        );
    };
    if let Err(page) = caller(&web, &s) {
        return *page;
    }
    pages::render(StatusCode::OK, &home_page(&web, &s, &s.filters, Vec::new()))
}

/// What a form's filters ask `audited` for, or the errors to show.
fn query_of(
    web: &Web,
    f: &Filters,
    start: u64,
    limit: u32,
) -> Result<AuditQuery, Vec<(&'static str, String)>> {
    let mut errors = Vec::new();
    let registry = web.state.federation.registry();
    let person = f.personne.trim();
    if !person.is_empty()
        && crate::subject::Subject::parse(person, registry.allow_test_subjects()).is_err()
    {
        errors.push((
            "personne",
            "Identifiant de personne invalide : test:… (développement) ou pivot:NOM|PRÉNOMS|AAAA-MM-JJ|F ou M|COG naissance|COG pays."
                .to_string(),
        ));
    }
    // The lists offer only these: anything else was not sent by the form, and saved in the
    // session it would have every later read of the console refused.
    let offered = [
        (
            "genre",
            f.genre.is_empty() || KINDS.iter().any(|(k, _)| *k == f.genre),
        ),
        (
            "participant",
            f.participant.is_empty() || registry.participant(&f.participant).is_some(),
        ),
        (
            "attestation",
            f.attestation.is_empty() || registry.attestation_types().any(|t| t.id == f.attestation),
        ),
        (
            "resultat",
            f.resultat.is_empty() || OUTCOMES.iter().any(|(k, _)| *k == f.resultat),
        ),
    ];
    for (field, ok) in offered {
        if !ok {
            errors.push((field, "Choisissez une valeur de la liste.".to_string()));
        }
    }
    let since = (!f.du.trim().is_empty()).then(|| paris_time::day_start(&f.du, 0));
    let until = (!f.au.trim().is_empty()).then(|| paris_time::day_start(&f.au, 1));
    if matches!(since, Some(None)) || matches!(until, Some(None)) {
        errors.push(("du", "Dates invalides : AAAA-MM-JJ.".to_string()));
    } else if let (Some(Some(since)), Some(Some(until))) = (since, until)
        && since >= until
    {
        // An empty period would read nothing, and say so only after reading.
        errors.push((
            "du",
            "La date de début (« Du ») est après la date de fin (« Au »).".to_string(),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(AuditQuery {
        start_index: start,
        limit,
        kind: f.genre.clone(),
        participant: f.participant.clone(),
        subject: person.to_string(),
        attestation_type: f.attestation.clone(),
        outcome: f.resultat.clone(),
        since: since.flatten(),
        until: until.flatten(),
    })
}

#[derive(Deserialize)]
pub struct FilterForm {
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    filters: Filters,
}

/// `POST /audit/evenements`: the filters (a person among them stays in the session, never in
/// a URL), then the events.
pub async fn filter(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<FilterForm>,
) -> Response {
    if !web.same_origin(&headers) {
        return pages::forbidden();
    }
    let Some((id, s)) = session(&web, &headers) else {
        return pages::session_ended("/audit/login");
    };
    if !same_secret(&form.csrf, &s.csrf) {
        return pages::forbidden();
    }
    if let Err(errors) = query_of(&web, &form.filters, 0, PAGE_EVENTS) {
        return pages::render(
            StatusCode::BAD_REQUEST,
            &home_page(&web, &s, &form.filters, errors),
        );
    }
    web.console.update(&id, |s| s.filters = form.filters);
    see_other("/audit/evenements", &[])
}

/// One event as the console shows it.
struct EventRow {
    index: u64,
    date: String,
    datetime: String,
    kind: String,
    participant: String,
    agent: String,
    data: String,
    outcome: String,
    person: String,
    detail: String,
    /// What the row shows, as its entry records it: « Vérifier » checks the entry it proves.
    recorded: Recorded,
}

/// The codes a row's words are named from, as its entry records them (empty when it records
/// none), read from the entry's JSON as console.js reads them from the entry it proves, so
/// that « Vérifier » names any that differ: a row the entry does not record fails.
#[derive(Default)]
struct Recorded {
    /// `kind`, or `unreadable` for an entry this broker cannot decode.
    kind: String,
    /// `participant` (`structure` for a mandate).
    participant: String,
    agent: String,
    /// `attestation_type`, or the `attestation_types` of a consent, joined by commas.
    data: String,
    /// `purpose`, or the `purposes` of a mandate, joined by commas.
    purpose: String,
    outcome: String,
    /// `mandate_id`.
    mandate: String,
    /// A contest's `entry` and `reason`.
    contested: String,
    reason: String,
    /// An audit read's `query`.
    query: String,
}

impl Recorded {
    fn of(record: &Record) -> Recorded {
        use serde_json::Value;
        let v = serde_json::to_value(record).unwrap_or_default();
        let text = |x: &Value| match x {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let list = |many: &str, one: &str| match &v[many] {
            Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
            _ => text(&v[one]),
        };
        let contest = |field: &str| match record.event {
            Event::AccessContested { .. } => text(&v[field]),
            _ => String::new(),
        };
        Recorded {
            kind: text(&v["kind"]),
            participant: text(match record.event {
                Event::MandateCreated { .. } => &v["structure"],
                _ => &v["participant"],
            }),
            agent: text(&v["agent"]),
            data: list("attestation_types", "attestation_type"),
            purpose: list("purposes", "purpose"),
            outcome: text(&v["outcome"]),
            mandate: text(&v["mandate_id"]),
            contested: contest("entry"),
            reason: contest("reason"),
            query: text(&v["query"]),
        }
    }
}

/// The agent an event names, if any.
fn agent_of(event: &Event) -> Option<&str> {
    match event {
        Event::Exchange(x) => x.agent.as_deref(),
        Event::ConsentGranted { agent, .. }
        | Event::ConsentRevoked { agent, .. }
        | Event::ConsentRenewed { agent, .. }
        | Event::AccessHistoryRead { agent, .. }
        | Event::ConsentsRead { agent, .. }
        | Event::MandateRevoked { agent, .. }
        | Event::AuditRead { agent, .. } => agent.as_deref(),
        Event::MandateCreated { agent, .. } => Some(agent.as_str()),
        _ => None,
    }
}

fn row(names: &Names<'_>, e: &LoggedEvent) -> EventRow {
    let Some(record) = &e.record else {
        return EventRow {
            index: e.index,
            date: String::new(),
            datetime: String::new(),
            kind: "Illisible".into(),
            participant: String::new(),
            agent: String::new(),
            data: String::new(),
            outcome: String::new(),
            person: String::new(),
            detail: "Cette inscription n'est pas lisible : vérifiez le journal.".into(),
            recorded: Recorded {
                kind: "unreadable".into(),
                ..Recorded::default()
            },
        };
    };
    let event = &record.event;
    let participant = event.participant().unwrap_or_default();
    let (data, outcome, detail) = match event {
        Event::Exchange(x) => (
            names.attestation_type(&x.attestation_type),
            OUTCOMES
                .iter()
                .find(|(k, _)| *k == x.outcome.name())
                .map_or_else(|| x.outcome.name().to_string(), |(_, l)| (*l).to_string()),
            format!(
                "{}{}",
                names.purpose(&x.purpose),
                x.mandate_id
                    .as_deref()
                    .map(|m| format!(" ; mandat n° {m}"))
                    .unwrap_or_default()
            ),
        ),
        Event::ConsentGranted {
            attestation_types,
            purpose,
            ..
        } => (
            attestation_types
                .iter()
                .map(|t| names.attestation_type(t))
                .collect::<Vec<_>>()
                .join(" ; "),
            String::new(),
            names.purpose(purpose),
        ),
        Event::MandateCreated {
            purposes,
            mandate_id,
            duration_days,
            ..
        } => (
            String::new(),
            String::new(),
            format!(
                "mandat n° {mandate_id}, {duration_days} jours : {}",
                purposes
                    .iter()
                    .map(|p| names.purpose(p))
                    .collect::<Vec<_>>()
                    .join(" ; ")
            ),
        ),
        Event::AccessContested { entry, reason, .. } => (
            String::new(),
            String::new(),
            format!(
                "contestation de l'inscription n° {entry} : {}",
                contest_reason(reason.name())
            ),
        ),
        Event::AuditRead { query, .. } => (String::new(), String::new(), query.clone()),
        _ => (String::new(), String::new(), String::new()),
    };
    EventRow {
        index: e.index,
        date: paris_time::long(record.time),
        datetime: paris_time::machine(record.time),
        kind: kind_label(event.kind()),
        participant: if participant.is_empty() {
            String::new()
        } else {
            names.participant(participant)
        },
        agent: agent_of(event)
            .map(|a| names.agent(participant, a))
            .unwrap_or_default(),
        data,
        outcome,
        person: e
            .subject
            .as_deref()
            .map(|p| p.chars().take(16).collect::<String>() + "…")
            .unwrap_or_default(),
        detail,
        recorded: Recorded::of(record),
    }
}

fn contest_reason(name: &str) -> &'static str {
    match name {
        "unknown_organisation" => "« Je ne connais pas cet organisme »",
        "no_procedure" => "« Je n'ai fait aucune démarche auprès de cet organisme »",
        _ => "« Une autre raison »",
    }
}

#[derive(Template)]
#[template(path = "audit_events.html")]
struct EventsPage {
    layout: Layout,
    events: Vec<EventRow>,
    first: u64,
    next: Option<u64>,
    /// The last leaf examined; none when the period holds none from `first` on.
    last_examined: Option<u64>,
    filters: Vec<String>,
    /// The log's verifier key, the pinned key's default for « Vérifier ».
    vkey: String,
}

#[derive(Deserialize)]
pub struct EventsQuery {
    /// The first leaf index to examine.
    #[serde(default)]
    debut: Option<u64>,
}

/// What the session's filters say, in words (the person as « une personne », never named).
fn filters_said(names: &Names<'_>, f: &Filters) -> Vec<String> {
    let mut said = Vec::new();
    if !f.genre.is_empty() {
        said.push(format!("genre : {}", kind_label(&f.genre)));
    }
    if !f.participant.is_empty() {
        said.push(format!(
            "participant : {}",
            names.participant(&f.participant)
        ));
    }
    if !f.attestation.is_empty() {
        said.push(format!(
            "données : {}",
            names.attestation_type(&f.attestation)
        ));
    }
    if !f.resultat.is_empty() {
        said.push(format!("résultat : {}", f.resultat));
    }
    if !f.personne.trim().is_empty() {
        said.push("une personne (lue sous son pseudonyme d'audit)".to_string());
    }
    if !f.du.is_empty() {
        said.push(format!("du {}", f.du));
    }
    if !f.au.is_empty() {
        said.push(format!("au {}", f.au));
    }
    said
}

/// `GET /audit/evenements`: the events the session's filters select, from leaf `debut`; the
/// read is recorded first (`audit_read`).
pub async fn events(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Response {
    // Reached from another site, it reads (and records a read of) nothing until asked.
    if web.sent_from_elsewhere(&headers) {
        let href = match q.debut {
            Some(n) => format!("/audit/evenements?debut={n}"),
            None => "/audit/evenements".to_string(),
        };
        return pages::continue_staff(&href, "Afficher les événements");
    }
    let (_, s, caller) = match signed_in(&web, &headers) {
        Ok(x) => x,
        Err(page) => return *page,
    };
    let Ok(query) = query_of(&web, &s.filters, 0, PAGE_EVENTS) else {
        return see_other("/audit", &[]);
    };
    // From the period's first entry, not from the log's: a recent week is not reached by
    // clicking through years.
    let (start, end) = match period(&*web.state.store, query.since, query.until).await {
        Ok(x) => x,
        Err(e) => return refused(&ApiError::from(e)),
    };
    let first = q.debut.unwrap_or(start);
    let query = AuditQuery {
        start_index: first,
        ..query
    };
    let mut filter = match events::audited(&web.state, &caller, query, "web:ListEvents").await {
        Ok(f) => f,
        Err(e) => return refused(&e),
    };
    filter.end_index = Some(end);
    let (found, next) = match events::list(&*web.state.store, &filter).await {
        Ok(x) => x,
        Err(e) => return refused(&ApiError::from(e)),
    };
    let registry = web.state.federation.registry();
    let names = Names(&registry);
    pages::render(
        StatusCode::OK,
        &EventsPage {
            layout: layout(&web, "Événements du journal", &s),
            events: found.iter().map(|e| row(&names, e)).collect(),
            first,
            next: (next < end).then_some(next),
            last_examined: (next > first).then(|| next - 1),
            filters: filters_said(&names, &s.filters),
            vkey: web.state.store.log_vkey().to_string(),
        },
    )
}

/// Entries are in append order and their times in that order within this many seconds
/// (records of one batch, brokers' clocks): a period's bounds are sought this much wider, and
/// the filter still checks each entry's time.
const TIME_SLACK: i64 = 60;

/// The leaves a period may hold: from the first recorded at or after `since` (0 without it) to
/// the first recorded at or after `until` (the log's size without it), both found by halving
/// the log and widened by [`TIME_SLACK`]. Paging and exports stop at the end: a period that
/// ended last year is not read through this year's entries. A store that fails is an error:
/// bounds guessed without it would leave entries out of the listing, and say nothing.
async fn period(
    store: &dyn Store,
    since: Option<i64>,
    until: Option<i64>,
) -> Result<(u64, u64), StoreError> {
    let size = log_size(store).await?;
    let first = match since {
        Some(t) => first_at(store, t.saturating_sub(TIME_SLACK), size).await?,
        None => 0,
    };
    let end = match until {
        Some(t) => first_at(store, t.saturating_add(TIME_SLACK), size).await?,
        None => size,
    };
    Ok((first, end.max(first)))
}

/// The first leaf index below `size` recorded at or after `wanted` (Unix seconds), `size` if
/// none. An entry this broker cannot decode (damage, tampering: the listing shows it as such)
/// has no time: the first readable entry after it stands for it, so that it never moves the
/// search past readable entries of the period (a run of them reaching the end counts as
/// later: the period's bounds then hold them, and the filter says what they are). An entry
/// the log's size counts but the store does not give is an error, as the store's failures are.
async fn first_at(store: &dyn Store, wanted: i64, size: u64) -> Result<u64, StoreError> {
    let (mut low, mut high) = (0, size);
    while low < high {
        let middle = low + (high - low) / 2;
        let mut probe = middle;
        let time = loop {
            if probe >= high {
                break None;
            }
            let Some(bytes) = store.entry(probe).await? else {
                return Err(StoreError::Diverged { size });
            };
            match Record::decode(&bytes) {
                Ok(r) => break Some(r.time.unix_timestamp()),
                Err(_) => probe += 1,
            }
        };
        match time {
            Some(t) if t < wanted => low = probe + 1,
            // At or after `wanted`, or nothing readable from `middle` on.
            _ => high = middle,
        }
    }
    Ok(low)
}

/// The log's size, as its latest checkpoint says (0 before the first).
async fn log_size(store: &dyn Store) -> Result<u64, StoreError> {
    Ok(store.latest_checkpoint().await?.map_or(0, |(size, _)| size))
}

/// Every event the session's filters select (up to [`MAX_EXPORT`]), and whether more are
/// selected; the read recorded first.
async fn selected(
    web: &Web,
    s: &ConsoleSession,
    caller: &Caller,
    verb: &str,
) -> Result<(Vec<LoggedEvent>, bool), Box<Response>> {
    let Ok(query) = query_of(web, &s.filters, 0, events::MAX_LIMIT) else {
        return Err(Box::new(see_other("/audit", &[])));
    };
    let (start, end) = period(&*web.state.store, query.since, query.until)
        .await
        .map_err(|e| Box::new(refused(&ApiError::from(e))))?;
    let query = AuditQuery {
        start_index: start,
        ..query
    };
    let filter = events::audited(&web.state, caller, query, verb)
        .await
        .map_err(|e| Box::new(refused(&e)))?;
    gather(&*web.state.store, filter, end, MAX_EXPORT)
        .await
        .map_err(|e| Box::new(refused(&ApiError::from(e))))
}

/// The first `max` events `filter` selects before leaf `end`, and whether it selects more: one
/// more is read to know, so that exactly `max` events is a whole export, not a truncated one.
async fn gather(
    store: &dyn Store,
    mut filter: events::EventFilter,
    end: u64,
    max: usize,
) -> Result<(Vec<LoggedEvent>, bool), StoreError> {
    filter.end_index = Some(end);
    let mut out = Vec::new();
    while filter.start_index < end && out.len() <= max {
        let (found, next) = events::list(store, &filter).await?;
        out.extend(found);
        if next <= filter.start_index {
            break;
        }
        filter.start_index = next;
    }
    let truncated = out.len() > max;
    out.truncate(max);
    Ok((out, truncated))
}

/// What a truncated export says, in the file itself (the CSV's last row, as its kind; the
/// JSON's `truncated_said`): a download shows no header.
fn truncated_said() -> String {
    format!(
        "EXPORT TRONQUÉ : seuls les {MAX_EXPORT} premiers événements de ces filtres y figurent ; \
         d'autres suivent : resserrez les filtres (la période ou le genre)."
    )
}

/// An export's file name: `-tronque` when it holds the first [`MAX_EXPORT`] events only.
fn export_name(extension: &str, truncated: bool) -> String {
    let mark = if truncated { "-tronque" } else { "" };
    format!("unefois-evenements{mark}.{extension}")
}

/// An export's download, with the `X-Unefois-Truncated` header when it is truncated.
fn export_file(content_type: &'static str, name: &str, body: Vec<u8>, truncated: bool) -> Response {
    let mut response = attachment(content_type, name, body);
    if truncated {
        response.headers_mut().insert(
            header::HeaderName::from_static("x-unefois-truncated"),
            HeaderValue::from_static("true"),
        );
    }
    response
}

/// One event of an export, as auditors' tools read it.
fn exported(e: &LoggedEvent) -> serde_json::Value {
    let mut v = json!({
        "index": e.index,
        "entry": B64.encode(&e.entry),
        "subject_pseudonym": e.subject,
    });
    if let Some(record) = &e.record {
        let event = &record.event;
        v["time"] = json!(paris_time::machine(record.time));
        v["kind"] = json!(event.kind());
        v["participant"] = json!(event.participant());
        v["agent"] = json!(agent_of(event));
        if let Event::Exchange(x) = event {
            v["attestation_type"] = json!(x.attestation_type);
            v["purpose"] = json!(x.purpose);
            v["outcome"] = json!(x.outcome.name());
            v["mandate_id"] = json!(x.mandate_id);
        }
        if let Event::AccessContested { entry, reason, .. } = event {
            v["contested_index"] = json!(entry);
            v["contest_reason"] = json!(reason.name());
        }
    } else {
        v["kind"] = json!("unreadable");
    }
    v
}

fn attachment(content_type: &'static str, filename: &str, body: Vec<u8>) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// `GET /audit/export.json`: the selected events, with the checkpoint and key to check them.
pub async fn export_json(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if web.sent_from_elsewhere(&headers) {
        return pages::continue_staff("/audit/export.json", "Télécharger l'export JSON");
    }
    let (_, s, caller) = match signed_in(&web, &headers) {
        Ok(x) => x,
        Err(page) => return *page,
    };
    let (found, truncated) = match selected(&web, &s, &caller, "web:ExportEvents json").await {
        Ok(f) => f,
        Err(page) => return *page,
    };
    let checkpoint = web.state.store.latest_checkpoint().await.ok().flatten();
    let body = json!({
        "format": "unefois-audit-export/v1",
        "log_key": web.state.store.log_vkey(),
        "checkpoint": checkpoint.map(|(_, note)| note),
        "truncated": truncated,
        "truncated_said": truncated.then(truncated_said),
        "events": found.iter().map(exported).collect::<Vec<_>>(),
    });
    export_file(
        "application/json",
        &export_name("json", truncated),
        serde_json::to_vec(&body).unwrap_or_default(),
        truncated,
    )
}

/// A CSV cell: quoted when it must be, and never read as a formula by a spreadsheet.
fn cell(value: &str) -> String {
    let guarded = match value.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{value}"),
        _ => value.to_string(),
    };
    if guarded.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

/// `GET /audit/export.csv`: the selected events, one line each.
pub async fn export_csv(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if web.sent_from_elsewhere(&headers) {
        return pages::continue_staff("/audit/export.csv", "Télécharger l'export CSV");
    }
    let (_, s, caller) = match signed_in(&web, &headers) {
        Ok(x) => x,
        Err(page) => return *page,
    };
    let (found, truncated) = match selected(&web, &s, &caller, "web:ExportEvents csv").await {
        Ok(f) => f,
        Err(page) => return *page,
    };
    export_file(
        "text/csv; charset=utf-8",
        &export_name("csv", truncated),
        csv(&found, truncated).into_bytes(),
        truncated,
    )
}

/// The CSV of `found`, one line each, ending with [`truncated_said`] when `truncated`.
fn csv(found: &[LoggedEvent], truncated: bool) -> String {
    const COLUMNS: [&str; 12] = [
        "index",
        "time",
        "kind",
        "participant",
        "agent",
        "subject_pseudonym",
        "attestation_type",
        "purpose",
        "outcome",
        "mandate_id",
        "contested_index",
        "entry",
    ];
    let mut out = COLUMNS.join(",") + "\r\n";
    for e in found {
        let v = exported(e);
        let line: Vec<String> = COLUMNS
            .iter()
            .map(|c| match &v[*c] {
                serde_json::Value::String(s) => cell(s),
                serde_json::Value::Null => String::new(),
                other => cell(&other.to_string()),
            })
            .collect();
        out += &line.join(",");
        out += "\r\n";
    }
    if truncated {
        // A row of the same columns (a parser refuses a short one), the warning as its kind:
        // no index nor entry, so that no script takes it for an event.
        let line: Vec<String> = COLUMNS
            .iter()
            .map(|c| match *c {
                "kind" => cell(&truncated_said()),
                _ => String::new(),
            })
            .collect();
        out += &line.join(",");
        out += "\r\n";
    }
    out
}

/// One contest report as the console lists it.
struct ContestRow {
    index: u64,
    date: String,
    datetime: String,
    guichet: String,
    contested: u64,
    reason: &'static str,
    what: String,
}

#[derive(Template)]
#[template(path = "audit_contests.html")]
struct ContestsPage {
    layout: Layout,
    reports: Vec<ContestRow>,
    /// Whether the whole log was read (else only its most recent part).
    scanned_all: bool,
}

/// Reports listed at once, the newest.
const MAX_REPORTS: usize = 200;
/// Windows of [`events::MAX_SCAN`] entries read backwards for them, at most.
const CONTEST_WINDOWS: usize = 20;

/// `GET /audit/signalements`: the citizens' « Je ne reconnais pas cette consultation »
/// reports, each with the exchange it contests (the read recorded first).
pub async fn contests(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if web.sent_from_elsewhere(&headers) {
        return pages::continue_staff("/audit/signalements", "Afficher les signalements");
    }
    let (_, s, caller) = match signed_in(&web, &headers) {
        Ok(x) => x,
        Err(page) => return *page,
    };
    let query = AuditQuery {
        kind: "access_contested".into(),
        limit: events::MAX_LIMIT,
        ..Default::default()
    };
    let mut filter = match events::audited(&web.state, &caller, query, "web:Contests").await {
        Ok(f) => f,
        Err(e) => return refused(&e),
    };
    // The newest first: windows of the log read backwards from its end, until enough reports
    // or [`CONTEST_WINDOWS`] windows.
    let mut end = match log_size(&*web.state.store).await {
        Ok(size) => size,
        Err(e) => return refused(&ApiError::from(e)),
    };
    let mut found: Vec<LoggedEvent> = Vec::new();
    for _ in 0..CONTEST_WINDOWS {
        if end == 0 || found.len() >= MAX_REPORTS {
            break;
        }
        let start = end.saturating_sub(events::MAX_SCAN);
        filter.start_index = start;
        filter.end_index = Some(end);
        let mut window = Vec::new();
        while filter.start_index < end {
            match events::list(&*web.state.store, &filter).await {
                Ok((page, next)) => {
                    window.extend(page);
                    if next <= filter.start_index {
                        break;
                    }
                    filter.start_index = next;
                }
                Err(e) => return refused(&ApiError::from(e)),
            }
        }
        window.extend(found);
        found = window;
        end = start;
    }
    let scanned_all = end == 0;
    let registry = web.state.federation.registry();
    let names = Names(&registry);
    let mut reports = Vec::new();
    for e in found.iter().rev().take(MAX_REPORTS) {
        let Some(Record {
            time,
            event:
                Event::AccessContested {
                    participant,
                    entry,
                    reason,
                    ..
                },
            ..
        }) = &e.record
        else {
            continue;
        };
        let what = match web.state.store.entry(*entry).await {
            Err(e) => return refused(&ApiError::from(e)),
            Ok(Some(bytes)) => match Record::decode(&bytes).map(|r| r.event) {
                Ok(Event::Exchange(x)) => format!(
                    "{} : {}, pour {}",
                    names.participant(&x.participant),
                    names.attestation_type(&x.attestation_type),
                    names.purpose(&x.purpose)
                ),
                _ => "une inscription qui n'est pas un échange".to_string(),
            },
            Ok(None) => "une inscription introuvable".to_string(),
        };
        reports.push(ContestRow {
            index: e.index,
            date: paris_time::long(*time),
            datetime: paris_time::machine(*time),
            guichet: names.participant(participant),
            contested: *entry,
            reason: contest_reason(reason.name()),
            what,
        });
    }
    pages::render(
        StatusCode::OK,
        &ContestsPage {
            layout: layout(&web, "Signalements des personnes", &s),
            reports,
            scanned_all,
        },
    )
}

#[derive(Template)]
#[template(path = "audit_proofs.html")]
struct ProofsPage {
    layout: Layout,
    checkpoint: String,
    checkpoint_b64: String,
    vkey: String,
    size: u64,
    index: Option<u64>,
}

#[derive(Deserialize)]
pub struct ProofsQuery {
    /// An entry to check, prefilled.
    #[serde(default)]
    n: Option<u64>,
}

/// `GET /audit/preuves`: the latest checkpoint and the proof checks run in the browser.
pub async fn proofs(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(q): Query<ProofsQuery>,
) -> Response {
    let (_, s, _) = match signed_in(&web, &headers) {
        Ok(x) => x,
        Err(page) => return *page,
    };
    let Ok(Some((size, note))) = web.state.store.latest_checkpoint().await else {
        return pages::unavailable();
    };
    pages::render(
        StatusCode::OK,
        &ProofsPage {
            layout: layout(&web, "Vérifier le journal", &s),
            checkpoint_b64: B64.encode(note.as_bytes()),
            checkpoint: note,
            vkey: web.state.store.log_vkey().to_string(),
            size,
            index: q.n,
        },
    )
}

/// A JSON answer of the console's proof API.
fn json_answer(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&body).unwrap_or_default(),
    )
        .into_response()
}

fn json_error(status: StatusCode, message: &str) -> Response {
    json_answer(status, json!({ "erreur": message }))
}

#[derive(Deserialize)]
pub struct InclusionQuery {
    #[serde(default)]
    n: u64,
}

/// Why entry `index`'s proof is not given.
enum NoProof {
    /// The read was refused (the auditor's role, their filters).
    Refused(ApiError),
    /// The log has this many entries, not the one asked for.
    Beyond(u64),
    /// The store did not answer.
    Unavailable,
}

impl NoProof {
    /// For the console's script (`/audit/api/…`).
    fn json(self) -> Response {
        match self {
            // As the page says it: a store that did not answer is no fault of the auditor's.
            NoProof::Refused(e) => json_error(pages::refusal_status(&e), e.reason_code()),
            NoProof::Beyond(size) => json_error(
                StatusCode::NOT_FOUND,
                &format!("le journal n'a que {size} inscriptions"),
            ),
            NoProof::Unavailable => {
                json_error(StatusCode::SERVICE_UNAVAILABLE, "journal indisponible")
            }
        }
    }

    /// For a link the auditor followed (a proof bundle): a page.
    fn page(self) -> Response {
        match self {
            NoProof::Refused(e) => refused(&e),
            NoProof::Beyond(size) => pages::error_page(
                StatusCode::NOT_FOUND,
                "Inscription introuvable",
                &format!(
                    "Le journal n'a que {size} inscriptions : celle demandée n'existe pas \
                     (encore)."
                ),
            ),
            NoProof::Unavailable => pages::unavailable(),
        }
    }
}

/// Entry `index`, its inclusion proof and the latest checkpoint it leads to; the read of the
/// entry recorded first (`audit_read`).
async fn inclusion(
    web: &Web,
    caller: &Caller,
    index: u64,
) -> Result<(Vec<u8>, Vec<[u8; 32]>, String), NoProof> {
    let query = AuditQuery {
        start_index: index,
        limit: 1,
        ..Default::default()
    };
    events::audited(&web.state, caller, query, "web:Entry")
        .await
        .map_err(NoProof::Refused)?;
    let store = &web.state.store;
    let Ok(Some((size, note))) = store.latest_checkpoint().await else {
        return Err(NoProof::Unavailable);
    };
    if index >= size {
        return Err(NoProof::Beyond(size));
    }
    let (Ok(Some(entry)), Ok(proof)) = (
        store.entry(index).await,
        store.inclusion_proof(index, size).await,
    ) else {
        return Err(NoProof::Unavailable);
    };
    Ok((entry, proof, note))
}

fn b64_hashes(hashes: &[[u8; 32]]) -> Vec<String> {
    hashes.iter().map(|h| B64.encode(h)).collect()
}

/// `GET /audit/api/inclusion?n=I`: for the browser's check of entry `I`.
pub async fn api_inclusion(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(q): Query<InclusionQuery>,
) -> Response {
    if web.sent_from_elsewhere(&headers) {
        return json_error(StatusCode::FORBIDDEN, "demande venue d'un autre site");
    }
    let Ok((_, _, caller)) = signed_in(&web, &headers) else {
        return json_error(StatusCode::FORBIDDEN, "session terminée");
    };
    match inclusion(&web, &caller, q.n).await {
        Ok((entry, proof, note)) => json_answer(
            StatusCode::OK,
            json!({
                "index": q.n,
                "entry": B64.encode(&entry),
                "proof": b64_hashes(&proof),
                "checkpoint": note,
            }),
        ),
        Err(no) => no.json(),
    }
}

#[derive(Deserialize)]
pub struct ConsistencyQuery {
    #[serde(default)]
    premier: u64,
}

/// `GET /audit/api/coherence?premier=A`: the checkpoint of the tree of `A` entries (to compare
/// with one the auditor kept), the latest checkpoint, and the consistency proof between them.
pub async fn api_consistency(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(q): Query<ConsistencyQuery>,
) -> Response {
    if signed_in(&web, &headers).is_err() {
        return json_error(StatusCode::FORBIDDEN, "session terminée");
    }
    let store = &web.state.store;
    let Ok(Some((size, note))) = store.latest_checkpoint().await else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "journal indisponible");
    };
    if q.premier == 0 || q.premier > size {
        return json_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "aucune preuve de cohérence de {} à {size} inscriptions",
                q.premier
            ),
        );
    }
    let proof = if q.premier == size {
        Vec::new()
    } else {
        match store.consistency_proof(q.premier, size).await {
            Ok(p) => p,
            Err(_) => {
                return json_error(StatusCode::SERVICE_UNAVAILABLE, "journal indisponible");
            }
        }
    };
    let Ok(first) = store.checkpoint_at(q.premier).await else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "journal indisponible");
    };
    json_answer(
        StatusCode::OK,
        json!({ "first_checkpoint": first, "checkpoint": note, "proof": b64_hashes(&proof) }),
    )
}

/// `GET /audit/dossier/{n}`: the proof bundle of entry `n` (unefois-proof-bundle/v1), for the
/// offline verifier.
pub async fn bundle(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(index): Path<u64>,
) -> Response {
    if web.sent_from_elsewhere(&headers) {
        return pages::continue_staff(
            &format!("/audit/dossier/{index}"),
            &format!("Télécharger le dossier de preuve de l'inscription n° {index}"),
        );
    }
    let (_, _, caller) = match signed_in(&web, &headers) {
        Ok(x) => x,
        Err(page) => return *page,
    };
    match inclusion(&web, &caller, index).await {
        Ok((entry, proof, note)) => {
            let body = json!({
                "format": "unefois-proof-bundle/v1",
                "log_key": web.state.store.log_vkey(),
                "checkpoint": note,
                "entries": [{
                    "index": index,
                    "entry": B64.encode(&entry),
                    "inclusion_proof": b64_hashes(&proof),
                }],
            });
            attachment(
                "application/json",
                &format!("unefois-preuve-{index}.json"),
                serde_json::to_vec_pretty(&body).unwrap_or_default(),
            )
        }
        Err(no) => no.page(),
    }
}

/// `GET /audit/verificateur.html`: the offline verifier, one HTML file carrying its scripts,
/// to keep and run without the broker (a download, never a page of these pages).
pub async fn offline_verifier() -> Response {
    let html = include_str!("../../static/offline.html")
        .replace("/*PROOFS*/", include_str!("../../static/proofs.js"))
        .replace("/*OFFLINE*/", include_str!("../../static/offline.js"));
    attachment(
        "text/html; charset=utf-8",
        "unefois-verificateur.html",
        html.into_bytes(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use time::OffsetDateTime;

    use super::*;
    use crate::consent::Consent;
    use crate::event::{RECORD_VERSION, RecordedKeys, RecordedRegistry};
    use crate::identity::{IdentityError, Verified};
    use crate::mandate::Mandate;
    use crate::seal::Sealer;
    use crate::store::{Appended, Items, MandatesOf, Memory};

    /// What [`Faulty`] does at one entry.
    #[derive(Clone, Copy)]
    enum Fault {
        /// The store fails to read it.
        Fails,
        /// It gives bytes that are no record.
        Garbles,
    }

    /// The in-memory store, but for one entry.
    struct Faulty {
        inner: Memory,
        at: u64,
        fault: Fault,
    }

    #[async_trait::async_trait]
    impl Store for Faulty {
        async fn recorded_keys(&self) -> Result<Option<RecordedKeys>, StoreError> {
            self.inner.recorded_keys().await
        }
        async fn recorded_registry(&self) -> Result<Option<RecordedRegistry>, StoreError> {
            self.inner.recorded_registry().await
        }
        async fn append_entry(&self, record: Record) -> Result<Appended, StoreError> {
            self.inner.append_entry(record).await
        }
        async fn append(&self, records: Vec<Record>) -> Result<Vec<u64>, StoreError> {
            self.inner.append(records).await
        }
        async fn consent(&self, id: &str) -> Result<Option<Consent>, StoreError> {
            self.inner.consent(id).await
        }
        async fn consents_of_after<'a>(
            &'a self,
            subject: &str,
            after: &str,
        ) -> Result<Items<'a, Consent>, StoreError> {
            self.inner.consents_of_after(subject, after).await
        }
        async fn consents_seen_by_after<'a>(
            &'a self,
            party: &str,
            subject: &str,
            after: &str,
        ) -> Result<Items<'a, Consent>, StoreError> {
            self.inner
                .consents_seen_by_after(party, subject, after)
                .await
        }
        async fn consents_under_mandate(&self, id: &str) -> Result<Vec<Consent>, StoreError> {
            self.inner.consents_under_mandate(id).await
        }
        async fn consents_for(
            &self,
            subject: &str,
            consumer: &str,
            attestation_type: &str,
            purpose: &str,
        ) -> Result<Vec<Consent>, StoreError> {
            self.inner
                .consents_for(subject, consumer, attestation_type, purpose)
                .await
        }
        async fn mandate(&self, id: &str) -> Result<Option<Mandate>, StoreError> {
            self.inner.mandate(id).await
        }
        async fn mandates_after<'a>(
            &'a self,
            of: MandatesOf<'_>,
            after: &str,
        ) -> Result<Items<'a, Mandate>, StoreError> {
            self.inner.mandates_after(of, after).await
        }
        async fn spend_act(
            &self,
            token: &Verified,
            now: i64,
        ) -> Result<Result<(), IdentityError>, StoreError> {
            self.inner.spend_act(token, now).await
        }
        async fn request_use(
            &self,
            actor: &str,
            request_id: &str,
        ) -> Result<Option<unefois_domain::projection::RequestUse>, StoreError> {
            self.inner.request_use(actor, request_id).await
        }
        async fn exchanges_about(
            &self,
            subject: &str,
            before: Option<u64>,
            limit: usize,
        ) -> Result<Vec<u64>, StoreError> {
            self.inner.exchanges_about(subject, before, limit).await
        }
        async fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
            match (index == self.at, self.fault) {
                (true, Fault::Fails) => Err(StoreError::Closed),
                (true, Fault::Garbles) => Ok(Some(b"{\"not\":\"a record\"}".to_vec())),
                (false, _) => self.inner.entry(index).await,
            }
        }
        fn entries_from(&self, start: u64) -> Items<'_, (u64, Vec<u8>)> {
            self.inner.entries_from(start)
        }
        async fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
            self.inner.latest_checkpoint().await
        }
        async fn checkpoint_at(&self, size: u64) -> Result<String, StoreError> {
            self.inner.checkpoint_at(size).await
        }
        async fn inclusion_proof(&self, leaf: u64, size: u64) -> Result<Vec<[u8; 32]>, StoreError> {
            self.inner.inclusion_proof(leaf, size).await
        }
        async fn consistency_proof(
            &self,
            first: u64,
            second: u64,
        ) -> Result<Vec<[u8; 32]>, StoreError> {
            self.inner.consistency_proof(first, second).await
        }
        fn subject_of(&self, event: &Event) -> Option<String> {
            self.inner.subject_of(event)
        }
        fn log_vkey(&self) -> &str {
            self.inner.log_vkey()
        }
        async fn close(&self) {
            self.inner.close().await;
        }
    }

    const T0: i64 = 1_800_000_000;

    /// A log of `n` entries, entry `i` recorded at `T0 + 1000 i`, and `fault` at entry `at`.
    async fn log(n: u64, at: u64, fault: Fault) -> Faulty {
        let inner = Memory::new(
            crate::LogSigner::from_seed(&[6; 32], "unefois.test").unwrap(),
            Arc::new(Sealer::from_secret(&[5; 32])),
        );
        let records = (0..n)
            .map(|i| Record {
                v: RECORD_VERSION,
                time: OffsetDateTime::from_unix_timestamp(T0 + 1000 * i as i64).unwrap(),
                event: Event::BrokerStopped {},
            })
            .collect();
        inner.append(records).await.unwrap();
        Faulty { inner, at, fault }
    }

    /// A store that fails while the bounds of a period are sought is an error, the
    /// unavailable store's page (503), not a listing that starts past the entries it could not
    /// read. Fails when a failed read counts as an earlier entry (the period then began at
    /// entry 5 of 8, entries 2 to 4 of it left out, and the page said 200).
    #[tokio::test]
    async fn a_store_failing_while_a_period_is_sought_is_an_error_page() {
        // Entries 0 to 7; the halving reads entry 4 first.
        let store = log(8, 4, Fault::Fails).await;
        let since = T0 + 2000 + TIME_SLACK;
        let found = period(&store, Some(since), None).await;
        let Err(e) = found else {
            panic!("a failed read gave the period {found:?}");
        };
        let page = refused(&ApiError::from(e));
        assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
        // Without the failure, the same period begins at entry 2.
        let sound = log(8, 99, Fault::Fails).await;
        assert_eq!(period(&sound, Some(since), None).await.unwrap(), (2, 8));
    }

    /// An entry that cannot be decoded where the halving looks does not move the period's
    /// start past the readable entries of the period. Fails when it counts as earlier (the
    /// period then began at entry 5, entries 2 and 3 left out of the listing and exports).
    #[tokio::test]
    async fn an_unreadable_entry_does_not_move_a_period_past_readable_ones() {
        let store = log(8, 4, Fault::Garbles).await;
        // Entry 4 stands for no time: a period from entry 5's time may begin at it (the filter
        // leaves it out), never after a readable entry of the period.
        for (wanted, first) in [
            (2, 2),
            (3, 3),
            (4, 4),
            (5, 4),
            (6, 6),
            (0, 0),
            (7, 7),
            (8, 8),
        ] {
            assert_eq!(
                first_at(&store, T0 + 1000 * wanted, 8).await.unwrap(),
                first,
                "the first entry at or after entry {wanted}'s time"
            );
        }
        // Every entry from the middle on unreadable but the last: still found.
        let store = log(8, 7, Fault::Garbles).await;
        assert_eq!(first_at(&store, T0 + 6500, 8).await.unwrap(), 7);
    }

    /// An export holds the first [`MAX_EXPORT`] events and says, in the file an auditor
    /// opens, when more were selected, and only then: exactly that many is a whole export.
    /// Fails when `truncated` is set as soon as the export holds that many, or when only a
    /// header says it.
    #[tokio::test]
    async fn an_export_says_in_the_file_when_it_leaves_events_out_and_only_then() {
        let store = log(3, 99, Fault::Fails).await;
        let filter = || events::EventFilter {
            limit: events::MAX_LIMIT,
            ..Default::default()
        };
        let (whole, truncated) = gather(&store, filter(), 3, 3).await.unwrap();
        assert_eq!((whole.len(), truncated), (3, false), "three of three");
        let (first, truncated) = gather(&store, filter(), 3, 2).await.unwrap();
        assert_eq!((first.len(), truncated), (2, true), "two of three");

        let lines = |text: String| text.lines().map(str::to_string).collect::<Vec<_>>();
        let file = lines(csv(&whole, false));
        assert_eq!(file.len(), 4, "a header and three events: {file:?}");
        assert!(!file.concat().contains("TRONQUÉ"), "{file:?}");
        assert_eq!(export_name("csv", false), "unefois-evenements.csv");

        let file = lines(csv(&first, true));
        assert_eq!(file.len(), 4, "a header, two events, the warning: {file:?}");
        assert!(
            file[3].starts_with(",,EXPORT TRONQUÉ : seuls les 50000 premiers"),
            "{file:?}"
        );
        // As many cells as the header (CSV readers refuse a shorter row); the warning holds no
        // comma nor quote that would shift them.
        assert_eq!(file[3].matches(',').count(), file[0].matches(',').count());
        assert!(!truncated_said().contains([',', '"']));
        assert_eq!(export_name("csv", true), "unefois-evenements-tronque.csv");
        assert_eq!(export_name("json", true), "unefois-evenements-tronque.json");
    }
}
