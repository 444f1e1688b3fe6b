//! The URL a call goes to: a template whose placeholders stay out of the scheme and authority.

use reqwest::Url;

/// Checks a URL template and returns it parsed (placeholders replaced by a sample) with
/// its `scheme://host:port` for display.
pub(crate) fn validate_url_template(template: &str) -> Result<(Url, String), String> {
    // Only the two known placeholders, outside the scheme and authority.
    let mut rest = template;
    let mut first_placeholder = None;
    let mut offset = 0;
    while let Some(open) = rest.find(['{', '}']) {
        let tail = &rest[open..];
        let placeholder = ["{subject}", "{claims}"]
            .into_iter()
            .find(|p| tail.starts_with(p))
            .ok_or_else(|| "only {subject} and {claims} may appear between braces".to_string())?;
        first_placeholder.get_or_insert(offset + open);
        offset += open + placeholder.len();
        rest = &tail[placeholder.len()..];
    }
    let sample = template
        .replace("{subject}", "subject")
        .replace("{claims}", "claims");
    let url = Url::parse(&sample).map_err(|e| format!("not a valid URL: {e}"))?;
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
    if let Some(position) = first_placeholder {
        // The authority ends at the first '/', '?' or '#' after "://".
        let authority_start = template.find("://").map_or(0, |i| i + 3);
        let authority_end = template[authority_start..]
            .find(['/', '?', '#'])
            .map_or(template.len(), |i| authority_start + i);
        if position < authority_end {
            return Err("placeholders may appear in the path or query only".into());
        }
    }
    let target = match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    };
    Ok((url, target))
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
        for bad in [
            "https://{subject}.evil.test/",
            "http://host{subject}/x",
            "ftp://host/{subject}",
            "http://host/{other}",
            "http://host/{subject",
            "not a url",
            "http://user:pw@host/{subject}",
            "http://host/x#{subject}",
        ] {
            assert!(validate_url_template(bad).is_err(), "{bad}");
        }
    }
}
