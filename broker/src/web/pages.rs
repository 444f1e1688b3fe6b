//! The pages every visitor sees (the landing page, the accessibility statement, errors) and
//! what every page shares: its layout and its rendering.

use crate::error::ApiError;
use askama::Template;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

/// What the layout of every page needs: its title and, when someone is logged in, the logout
/// form's CSRF token and when the session ends.
pub struct Layout {
    /// The page's own title (the `<title>` adds « — Une Fois »).
    pub title: String,
    /// The logged-in session, if any.
    pub session: Option<LayoutSession>,
    /// At a mediator's desk, the mandate the agent acts under: a banner on every page.
    pub acting: Option<Acting>,
}

/// The session as the layout shows it.
pub struct LayoutSession {
    /// The logout form's CSRF token.
    pub csrf: String,
    /// When it ends, Paris time (`18 h 05`).
    pub ends: String,
    /// The same, Unix seconds.
    pub ends_unix: i64,
    /// Seconds left when the page is sent, for `static/session.js` to say the end before it
    /// comes (counted from the page's arrival: the device's clock may be wrong).
    pub left_seconds: i64,
    /// Where the logout form posts (`/logout`, `/desk/logout`).
    pub logout: &'static str,
    /// Where « Prolonger la session » leads (a new login).
    pub relogin: &'static str,
    /// Who is logged in, when the header names them (an agent, their structure).
    pub who: Option<String>,
}

/// « Vous agissez pour … — mandat n° … — expire le … ».
pub struct Acting {
    /// The person, as their ID token names them.
    pub person: String,
    /// The mandate's id.
    pub mandate: String,
    /// When it expires, Paris time.
    pub expires: String,
}

impl Layout {
    /// A page titled `title`, with `session` if one is open.
    pub fn new(title: &str, session: Option<LayoutSession>) -> Layout {
        Layout {
            title: title.to_string(),
            session,
            acting: None,
        }
    }
}

/// Renders `page` with `status`; a template that fails is [`NOT_RENDERED`].
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "web page not rendered");
            (StatusCode::INTERNAL_SERVER_ERROR, Html(NOT_RENDERED)).into_response()
        }
    }
}

/// The page of a template that failed: fixed, so that it cannot fail too, and still a page in
/// French with the site's style and a way home, not a line of text.
const NOT_RENDERED: &str = "<!doctype html>
<html lang=\"fr\">
<head>
<meta charset=\"utf-8\">
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">
<title>Erreur interne — Une Fois</title>
<link rel=\"stylesheet\" href=\"/static/site.css\">
</head>
<body>
<main id=\"contenu\" class=\"wrap\">
<h1>Erreur interne</h1>
<p>La page n'a pas pu être affichée. Ce qui a pu être fait avant reste fait ; réessayez dans un \
moment. Si l'erreur persiste, signalez-la à l'assistance avec l'heure à laquelle elle est \
survenue.</p>
<p><a href=\"/\">Revenir à l'accueil</a></p>
</main>
</body>
</html>
";

#[derive(Template)]
#[template(path = "message.html")]
struct Message<'a> {
    layout: Layout,
    text: &'a str,
    /// Where to go from there, besides the home page: (href, words).
    next: Option<(&'a str, &'a str)>,
}

/// A page that says what went wrong and where to go from there.
pub fn error_page(status: StatusCode, title: &str, text: &str) -> Response {
    render(
        status,
        &Message {
            layout: Layout::new(title, None),
            text,
            next: None,
        },
    )
}

/// [`error_page`] with somewhere to go from there besides the home page: (href, words).
pub fn error_page_on_to(
    status: StatusCode,
    title: &str,
    text: &str,
    next: (&str, &str),
) -> Response {
    render(
        status,
        &Message {
            layout: Layout::new(title, None),
            text,
            next: Some(next),
        },
    )
}

/// 403: a form sent after its session ended; nothing was done. `relogin` is where to log in
/// again.
pub fn session_ended(relogin: &str) -> Response {
    render(
        StatusCode::FORBIDDEN,
        &Message {
            layout: Layout::new("Votre session a pris fin", None),
            text: "Votre session a pris fin avant l'envoi du formulaire : rien n'a été fait. \
                   Reconnectez-vous, puis recommencez.",
            next: Some((relogin, "Se reconnecter")),
        },
    )
}

/// 403: the person's proof of identity no longer allows acts (it expired, or served as many
/// acts as it may): nothing was done. `relogin` is where to log in again.
pub fn proof_spent(relogin: &str) -> Response {
    render(
        StatusCode::FORBIDDEN,
        &Message {
            layout: Layout::new("Reconnectez-vous pour agir", None),
            text: "Votre connexion ne permet plus d'agir : elle a expiré, ou elle a déjà servi \
                   autant de fois que le permet votre fournisseur d'identité. Rien n'a été \
                   fait. Reconnectez-vous, puis recommencez.",
            next: Some((relogin, "Se reconnecter")),
        },
    )
}

/// What an act or a read the broker refused tells a person, in French, with the status that
/// fits (a refusal, something not found, too many requests, a provider down) and the reason's
/// code for the assistance. The reasons each space handles itself (the proof of identity, the
/// store) are answered here too, plainly.
pub fn refusal(e: &ApiError) -> Response {
    let (status, title, text) = refusal_words(e);
    error_page(
        status,
        title,
        &format!(
            "{text} Code à indiquer à l'assistance : {}.",
            e.reason_code()
        ),
    )
}

/// The status [`refusal`] answers `e` with: for the console's script, which shows the reason's
/// code itself.
pub fn refusal_status(e: &ApiError) -> StatusCode {
    refusal_words(e).0
}

/// What [`refusal`] says of `e`: its status, title and text.
fn refusal_words(e: &ApiError) -> (StatusCode, &'static str, &'static str) {
    use ApiError as E;
    match e {
        E::InvalidArgument { .. }
        | E::InvalidSubject(_)
        | E::UnknownPurpose(_)
        | E::UnknownAttestationType(_)
        | E::UnknownForm(_)
        | E::RequestTooLarge { .. } => (
            StatusCode::BAD_REQUEST,
            "Demande invalide",
            "Un élément de la demande n'a pas la forme attendue ou n'existe pas. Revenez à la \
             page précédente et vérifiez ce qui a été saisi.",
        ),
        E::TreeSizeOutOfRange(_) | E::LeafIndexOutOfRange(_) => (
            StatusCode::NOT_FOUND,
            "Inscription introuvable",
            "Le journal ne contient pas (encore) cette inscription.",
        ),
        E::UnknownConsent(_) | E::UnknownMandate(_) | E::UnknownPrefill(_) => (
            StatusCode::NOT_FOUND,
            "Introuvable",
            "Ce consentement, ce mandat ou ce formulaire n'existe pas, ou n'est plus \
             disponible.",
        ),
        E::NoConsent { .. } | E::ConsentRevoked(_) | E::ConsentExpired(_) => (
            StatusCode::FORBIDDEN,
            "Pas de consentement en vigueur",
            "Aucun consentement en vigueur ne permet cette démarche : il a été retiré, il a \
             expiré ou il n'a jamais été donné.",
        ),
        E::NoMandate(_)
        | E::MandateRevoked(_)
        | E::MandateExpired(_)
        | E::MandateOutOfScope { .. }
        | E::MandateSubjectMismatch(_) => (
            StatusCode::FORBIDDEN,
            "Mandat non valable",
            "Le mandat a pris fin, a été révoqué, ou ne couvre pas cette démarche ou cette \
             personne.",
        ),
        E::PrefillClosed(..)
        | E::PrefillInProgress(_)
        | E::PreviewSubjectMismatch
        | E::SubjectMismatch
        | E::RequestIdReused(_) => (
            StatusCode::CONFLICT,
            "Demande déjà traitée",
            "Cette demande a déjà été traitée, ou l'est en ce moment, ou concerne une autre \
             personne. Revenez à la page précédente et rechargez-la.",
        ),
        E::RateLimited { .. } | E::TooManyPreviews { .. } | E::TooManyConnections { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "Trop de demandes",
            "Trop de demandes en peu de temps. Réessayez dans quelques minutes.",
        ),
        E::SubjectNotFound => (
            StatusCode::NOT_FOUND,
            "Personne inconnue de l'administration",
            "L'administration qui détient ces données ne connaît pas cette personne.",
        ),
        E::ProviderUnavailable { .. }
        | E::ProviderInvalidResponse { .. }
        | E::ProviderCircuitOpen { .. }
        | E::ProviderAuthFailed { .. }
        | E::ProviderDeadline(_)
        | E::StoreUnavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Service momentanément indisponible",
            "Le service, ou l'administration qui détient ces données, n'a pas pu répondre. \
             Réessayez dans quelques instants.",
        ),
        E::IdentityEvidenceRequired | E::IdentityEvidenceInvalid(_) => (
            StatusCode::FORBIDDEN,
            "Reconnectez-vous pour agir",
            "La preuve d'identité de la connexion n'est plus valable. Rien n'a été fait : \
             reconnectez-vous, puis recommencez.",
        ),
        E::WrongRole { .. }
        | E::NoHabilitation { .. }
        | E::HabilitationExpired(_)
        | E::PurposeNotAllowed { .. }
        | E::ClaimNotAllowed { .. }
        | E::NotAgentOfStructure { .. }
        | E::AgentRequired { .. }
        | E::UnknownParticipant(_)
        | E::NoClientCertificate(_)
        | E::CertificateRevoked => (
            StatusCode::FORBIDDEN,
            "Action non autorisée",
            "Cette action n'est pas permise à votre organisation ou à votre rôle (habilitation \
             absente ou échue, finalité ou donnée non autorisée).",
        ),
    }
}

/// 200: a page that reads much of a person's data, reached from another site (a page that
/// would have those reads recorded in their name): nothing read yet, a link to go on from
/// here.
pub fn continue_here(href: &str, words: &str) -> Response {
    continue_with(
        href,
        words,
        "Vous arrivez d'un autre site. Pour afficher vos données, continuez depuis cette page.",
    )
}

/// [`continue_here`] for the agents' and auditors' pages whose reads are recorded in their
/// name (a person's history at a desk, the console's events, exports and proofs).
pub fn continue_staff(href: &str, words: &str) -> Response {
    continue_with(
        href,
        words,
        "Vous arrivez d'un autre site. Cette page lit des données et sa lecture est inscrite au \
         journal à votre nom : rien n'a encore été lu. Pour l'afficher, continuez depuis cette \
         page.",
    )
}

fn continue_with(href: &str, words: &str, text: &str) -> Response {
    render(
        StatusCode::OK,
        &Message {
            layout: Layout::new("Continuer vers votre espace", None),
            text,
            next: Some((href, words)),
        },
    )
}

/// 403: a form that did not come from these pages (no CSRF token, a foreign origin).
pub fn forbidden() -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        "Action refusée",
        "Cette action n'a pas été envoyée depuis nos pages (jeton de sécurité absent ou \
         périmé). Revenez à la page précédente, rechargez-la, puis recommencez.",
    )
}

/// 503: the broker could not do it now.
pub fn unavailable() -> Response {
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service momentanément indisponible",
        "Le service n'a pas pu traiter votre demande. Réessayez dans quelques instants.",
    )
}

/// 404.
pub async fn not_found() -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        "Page introuvable",
        "Cette adresse ne correspond à aucune page. Revenez à l'accueil.",
    )
}

#[derive(Template)]
#[template(path = "landing.html")]
struct Landing {
    layout: Layout,
}

/// `GET /`: the three spaces, and where to get help in person.
pub async fn landing() -> Response {
    render(
        StatusCode::OK,
        &Landing {
            layout: Layout::new("Accueil", None),
        },
    )
}

#[derive(Template)]
#[template(path = "accessibilite.html")]
struct Accessibility {
    layout: Layout,
}

/// `GET /accessibilite`: the accessibility statement.
pub async fn accessibility() -> Response {
    render(
        StatusCode::OK,
        &Accessibility {
            layout: Layout::new("Déclaration d'accessibilité", None),
        },
    )
}

/// A script of the pages, as `text/javascript`.
fn javascript(source: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        source,
    )
        .into_response()
}

/// `GET /static/proofs.js`: the proof checks the pages run in the browser (signed notes, RFC
/// 9162 inclusion and consistency), shared by the two scripts below and the offline verifier.
pub async fn proofs_script() -> Response {
    javascript(include_str!("../../static/proofs.js"))
}

/// `GET /static/verify.js`: « Vérifier » on the citizen's history.
pub async fn verify_script() -> Response {
    javascript(include_str!("../../static/verify.js"))
}

/// `GET /static/session.js`: the session's end said before it comes.
pub async fn session_script() -> Response {
    javascript(include_str!("../../static/session.js"))
}

/// `GET /static/console.js`: the auditors' console's proof checks.
pub async fn console_script() -> Response {
    javascript(include_str!("../../static/console.js"))
}

/// `GET /static/site.css`: the pages' one stylesheet.
pub async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../static/site.css"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value whose display fails, as a broken filter or field would.
    struct Failing;

    impl std::fmt::Display for Failing {
        fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            Err(std::fmt::Error)
        }
    }

    #[derive(Template)]
    #[template(source = "<p>{{ value }}</p>", ext = "html")]
    struct Broken {
        value: Failing,
    }

    #[tokio::test]
    async fn a_page_that_fails_to_render_is_still_a_page() {
        let response = render(StatusCode::OK, &Broken { value: Failing });
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let body = String::from_utf8(body.to_vec()).expect("UTF-8");
        assert!(body.contains("<html lang=\"fr\">"), "{body}");
        assert!(body.contains("<h1>Erreur interne</h1>"), "{body}");
        assert!(body.contains("href=\"/\""), "{body}");
    }
}
