//! Where a page's request comes from, as the pages' limits per source count it: the peer, or
//! behind a trusted reverse proxy the client it forwarded ([`crate::forwarded`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use super::Web;
use crate::shed::Source;

/// Whether a request with `X-Forwarded-For` came from a peer not trusted (logged once).
static UNTRUSTED_SEEN: AtomicBool = AtomicBool::new(false);

/// The source of a page's request, as the limits per source count it (see
/// [`crate::forwarded::TrustedProxies::client`]); the unspecified address when the connection's is not known.
pub struct ClientSource(pub Source);

impl FromRequestParts<Arc<Web>> for ClientSource {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        web: &Arc<Web>,
    ) -> Result<ClientSource, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
        // A proxy in front that is not named makes everyone behind it one source: said once.
        if parts.headers.contains_key("x-forwarded-for")
            && !web.trusted_proxies.contains(peer)
            && !UNTRUSTED_SEEN.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                %peer,
                "X-Forwarded-For from a peer that is not a trusted proxy, ignored: if a reverse \
                 proxy is in front of the pages, name it with --web-trusted-proxy (docs/web.md)"
            );
        }
        Ok(ClientSource(Source::of(
            web.trusted_proxies.client(peer, &parts.headers),
        )))
    }
}
