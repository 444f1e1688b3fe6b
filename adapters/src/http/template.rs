//! The URL a call goes to: a template whose placeholders stay out of the scheme and authority.

use url::{Position, Url};

use super::placeholder::{Placeholder, Template, Token, parse_template};

/// Checks a URL template and returns it parsed, with its `scheme://host:port` for display.
pub(crate) fn validate_url_template(template: &str) -> Result<(Template, String), String> {
    let parsed = parse_template(template)?;
    if parsed.iter().any(|t| {
        matches!(
            t,
            Token::Field {
                name: Placeholder::GivenNamesEach,
                ..
            }
        )
    }) {
        return Err(
            "{given_names[]} repeats a query parameter: declare it in the query table \
             (query = { \"prenoms[]\" = \"{given_names[]}\" }), not in the URL"
                .into(),
        );
    }
    let sample = |value: &str| -> String {
        parsed
            .iter()
            .map(|t| match t {
                Token::Literal(text) => text.as_str(),
                Token::Field { .. } => value,
            })
            .collect()
    };
    let url = Url::parse(&sample("x")).map_err(|e| format!("not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("the scheme must be http or https".into());
    }
    let Some(host) = url.host_str() else {
        return Err("the URL has no host".into());
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL are not allowed (use bearer_token_file)".into());
    }
    if url.fragment().is_some() {
        return Err("a fragment is not allowed".into());
    }
    // Where the authority ends is the parser's call, not the text's: it reads `http:/{subject}/x`
    // as `http://{subject}/x`. A placeholder there changes the scheme, host or port with its value.
    if Url::parse(&sample("y")).map_or(true, |other| {
        other[..Position::BeforePath] != url[..Position::BeforePath]
    }) {
        return Err("placeholders may appear in the path or query only".into());
    }
    let target = match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    };
    Ok((parsed, target))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn url_templates_keep_placeholders_out_of_the_authority() {
        let (_, target) =
            validate_url_template("https://api.caf.test:8443/v1/q/{subject}?c={claims}").unwrap();
        assert_eq!(target, "https://api.caf.test:8443");
        // The target, whose scheme decides TLS, is the URL as the parser reads it.
        for (template, expected) in [
            ("HTTPS://api.test/{subject}", "https://api.test"),
            ("https:/api.test/{subject}", "https://api.test"),
            ("http:api.test/{subject}", "http://api.test"),
            ("http:\\\\api.test\\{subject}", "http://api.test"),
        ] {
            assert_eq!(
                validate_url_template(template).unwrap().1,
                expected,
                "{template}"
            );
        }
        validate_url_template(
            "https://api.test/v1/{family_name}/{birth_date}?r={consumer_siret}&id={request_id}",
        )
        .unwrap();
        for bad in [
            "https://{subject}.evil.test/",
            "http://host{subject}/x",
            "http:/{subject}/x",
            "http:{family_name}/x",
            "http:/host{subject}/x",
            "http:\\\\{subject}\\x",
            "http://{consumer}@host/x",
            "ftp://host/{subject}",
            "http://host/{other}",
            "http://host/{subject",
            "not a url",
            "http://user:pw@host/{subject}",
            "http://host/x#{subject}",
            "http://host/x?p={given_names[]}",
        ] {
            assert!(validate_url_template(bad).is_err(), "{bad}");
        }
    }
}
