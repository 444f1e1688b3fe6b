//! The reverse proxies an HTTP listener trusts (`--web-trusted-proxy`), and the client address
//! one forwarded: the rightmost entry of `X-Forwarded-For` that is not itself a trusted proxy
//! (each proxy appends the address it saw). From any other peer the header is ignored: a client
//! cannot choose the address it is counted under.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::{IpNet, Ipv4Net};

/// Entries of `X-Forwarded-For` examined at most, from the right.
const MAX_HOPS: usize = 16;

/// The reverse proxies whose `X-Forwarded-For` is believed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// The proxies in `networks` (addresses or CIDR blocks; an IPv4 block written mapped into
    /// IPv6 is taken as the IPv4 block, as the addresses it is compared with are).
    pub fn new(networks: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies(networks.into_iter().map(canonical_net).collect())
    }

    /// Whether any proxy is named.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is one of them.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind `peer`, as the trusted proxies forwarded it in `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.contains(client) {
            return client;
        }
        // Each entry on its own: a byte a client wrote that is not text spoils its own entry
        // only, never the address a proxy appended after it.
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .rev()
            .flat_map(|line| line.as_bytes().rsplit(|&b| b == b','))
            .take(MAX_HOPS);
        for hop in hops {
            // Not an address (`unknown`, an obfuscated name): the last hop known stands.
            let Some(ip) = address(hop) else {
                break;
            };
            client = ip.to_canonical();
            if !self.contains(client) {
                break;
            }
        }
        client
    }
}

/// The address of an entry: `192.0.2.1`, `2001:db8::1`, and as some proxies write them,
/// `192.0.2.1:443`, `[2001:db8::1]` or `[2001:db8::1]:443`.
fn address(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            text.strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<IpAddr>()
                .ok()
        })
}

/// An IPv4 block mapped into IPv6 (`::ffff:10.0.0.0/104`) as the IPv4 block.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for line in lines {
            h.append("x-forwarded-for", line.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_client_is_the_rightmost_address_no_trusted_proxy_holds() {
        let proxies = TrustedProxies::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ]);
        let cases: &[(&str, &[&str], &str)] = &[
            // (peer, X-Forwarded-For lines, the client counted)
            // Not from a trusted proxy: the header is the client's own, ignored.
            ("203.0.113.9", &["198.51.100.1"], "203.0.113.9"),
            // From a trusted proxy: what it saw.
            ("10.0.0.2", &["198.51.100.1"], "198.51.100.1"),
            // Whatever the client put first, the address the first trusted proxy appended.
            ("10.0.0.2", &["6.6.6.6, 198.51.100.1"], "198.51.100.1"),
            (
                "10.0.0.2",
                &["6.6.6.6", "198.51.100.1, 10.0.0.7"],
                "198.51.100.1",
            ),
            // Through trusted proxies only: the outermost.
            ("10.0.0.2", &["10.0.0.9, 10.0.0.7"], "10.0.0.9"),
            // No header, or not an address: the last hop known.
            ("10.0.0.2", &[], "10.0.0.2"),
            ("10.0.0.2", &["unknown"], "10.0.0.2"),
            ("10.0.0.2", &["198.51.100.1, garbage, 10.0.0.7"], "10.0.0.7"),
            // IPv6, and IPv4 mapped into IPv6.
            ("::1", &["2001:db8::5"], "2001:db8::5"),
            ("::ffff:10.0.0.2", &["198.51.100.1"], "198.51.100.1"),
            // With ports and brackets, as some load balancers write them.
            ("10.0.0.2", &["198.51.100.1:5678"], "198.51.100.1"),
            ("10.0.0.2", &["[2001:db8::7]:443"], "2001:db8::7"),
            ("10.0.0.2", &["[2001:db8::7]"], "2001:db8::7"),
        ];
        for (peer, lines, client) in cases {
            assert_eq!(
                proxies.client(ip(peer), &headers(lines)),
                ip(client),
                "{peer} {lines:?}"
            );
        }
        // A byte that is not text, written by the client, spoils its own entry only.
        let mut spoiled = HeaderMap::new();
        spoiled.append(
            "x-forwarded-for",
            axum::http::HeaderValue::from_bytes(b"\xff, 198.51.100.1").unwrap(),
        );
        assert_eq!(proxies.client(ip("10.0.0.2"), &spoiled), ip("198.51.100.1"));
        // A proxy named mapped into IPv6 is the IPv4 one.
        let mapped = TrustedProxies::new(vec!["::ffff:10.0.0.0/104".parse().unwrap()]);
        assert!(mapped.contains(ip("10.1.2.3")) && !mapped.contains(ip("11.0.0.1")));
        // No proxy trusted: always the peer.
        let none = TrustedProxies::default();
        assert_eq!(
            none.client(ip("10.0.0.2"), &headers(&["198.51.100.1"])),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn a_long_chain_is_read_up_to_its_bound() {
        let proxies = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let chain = vec!["10.1.1.1"; 100].join(", ");
        let line = format!("198.51.100.1, {chain}");
        assert_eq!(
            proxies.client(ip("10.0.0.2"), &headers(&[&line])),
            ip("10.1.1.1")
        );
    }
}
