//! Where a page's request comes from, as the pages' limits per source count it: the peer, or
//! behind a trusted reverse proxy the client it forwarded ([`crate::forwarded`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use super::Web;
use crate::shed::Source;

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
        Ok(ClientSource(Source::of(
            web.trusted_proxies.client(peer, &parts.headers),
        )))
    }
}
