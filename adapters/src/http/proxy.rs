//! An outbound forward proxy per adapter, as administration networks often require: plain
//! `http://` requests are forwarded by the proxy, `https://` ones go through a `CONNECT` tunnel
//! (TLS stays end to end with the provider, checked against the adapter's `ca_file`). Hosts of
//! the `no_proxy` list are reached directly. The environment's `HTTP_PROXY`, `HTTPS_PROXY` and
//! `NO_PROXY` are never used: what the registry says is what happens.

use std::path::Path;

use base64::Engine;
use reqwest::header::HeaderValue;
use reqwest::{NoProxy, Proxy};

use super::auth::read_secret;

/// Checks the proxy settings and builds the proxy. Errors are `(field, reason)`.
pub(crate) fn build(
    url: &str,
    no_proxy: &[String],
    credentials_file: Option<&Path>,
) -> Result<Proxy, (String, String)> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ("proxy".to_string(), format!("not a valid URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err((
            "proxy".into(),
            "an http:// or https:// proxy URL with a host is needed, e.g. \"http://proxy:3128\""
                .into(),
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err((
            "proxy".into(),
            "credentials in the proxy URL are not allowed (use proxy_credentials_file)".into(),
        ));
    }
    if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() {
        return Err((
            "proxy".into(),
            "a proxy URL is scheme://host:port only".into(),
        ));
    }
    for (i, entry) in no_proxy.iter().enumerate() {
        let valid = !entry.is_empty()
            && entry.len() <= 253
            && entry.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'/' | b'*')
            });
        if !valid {
            return Err((
                format!("no_proxy[{i}]"),
                "a host name, a domain (\".interieur.gouv.fr\"), an IP address or a network \
                 (\"10.0.0.0/8\")"
                    .into(),
            ));
        }
    }
    let mut proxy = Proxy::all(url).map_err(|e| ("proxy".to_string(), e.to_string()))?;
    if !no_proxy.is_empty() {
        proxy = proxy.no_proxy(NoProxy::from_string(&no_proxy.join(",")));
    }
    if let Some(path) = credentials_file {
        let field = || "proxy_credentials_file".to_string();
        let text = read_secret(path).map_err(|why| (field(), why))?;
        let Some((user, _)) = text.split_once(':').filter(|(user, _)| !user.is_empty()) else {
            return Err((
                field(),
                format!("{} must hold one line \"user:password\"", path.display()),
            ));
        };
        if user.contains(char::is_whitespace) {
            return Err((
                field(),
                format!("{}: the user name has spaces", path.display()),
            ));
        }
        let encoded = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
        let mut header = HeaderValue::from_str(&format!("Basic {encoded}"))
            .map_err(|_| (field(), format!("{} cannot be sent", path.display())))?;
        header.set_sensitive(true);
        proxy = proxy.custom_http_auth(header);
    }
    Ok(proxy)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn proxy_settings_are_checked() {
        build("http://proxy.mairie.test:3128", &[], None).unwrap();
        build(
            "http://proxy:3128",
            &[
                ".interieur.gouv.fr".into(),
                "10.0.0.0/8".into(),
                "localhost".into(),
            ],
            None,
        )
        .unwrap();
        for bad in [
            "socks5://proxy:1080",
            "proxy:3128",
            "http://user:pw@proxy:3128",
            "http://proxy:3128/path",
        ] {
            assert_eq!(build(bad, &[], None).unwrap_err().0, "proxy", "{bad}");
        }
        assert_eq!(
            build("http://proxy:3128", &["a.test".into(), "b, c".into()], None)
                .unwrap_err()
                .0,
            "no_proxy[1]"
        );
    }

    #[test]
    fn proxy_credentials_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("proxy.cred");
        std::fs::write(&file, "mairie:s3cret\n").unwrap();
        build("http://proxy:3128", &[], Some(&file)).unwrap();
        std::fs::write(&file, "no-colon-here").unwrap();
        let (field, reason) = build("http://proxy:3128", &[], Some(&file)).unwrap_err();
        assert_eq!(field, "proxy_credentials_file");
        assert!(!reason.contains("no-colon-here"), "{reason}");
    }
}
