//! A person's browser, as far as the web pages' HTTP goes: cookies kept as a browser keeps them,
//! redirects followed one by one (each `Location` kept, to check that no person is ever in a
//! URL), forms read from the pages. The headless-browser tests (tests/browser/) check what
//! this cannot: layout, keyboard, accessibility, JavaScript.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, anyhow};

/// An answer of the pages.
#[derive(Debug)]
pub struct Page {
    /// HTTP status.
    pub status: u16,
    /// Every header, by lowercase name (the last value of each).
    pub headers: BTreeMap<String, String>,
    /// Every `Set-Cookie` value.
    pub set_cookies: Vec<String>,
    /// The body.
    pub body: String,
}

impl Page {
    /// The `Location` of a redirect.
    pub fn location(&self) -> Option<&str> {
        self.headers.get("location").map(String::as_str)
    }

    /// The value of the (first) form field `name` in the page, unescaped.
    pub fn field(&self, name: &str) -> Option<String> {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self.body.find(&marker)? + marker.len();
        let end = self.body[start..].find('"')? + start;
        Some(unescape(&self.body[start..end]))
    }

    /// Every `href` of the page, unescaped.
    pub fn links(&self) -> Vec<String> {
        self.body
            .split("href=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .map(unescape)
            .collect()
    }
}

fn unescape(s: &str) -> String {
    s.replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#38;", "&")
        .replace("&amp;", "&")
}

/// A browser on the pages at `base`.
pub struct Browser {
    /// `http://addr`.
    pub base: String,
    client: reqwest::Client,
    cookies: BTreeMap<String, String>,
    /// Every URL this browser was sent to or asked for, in order.
    pub visited: Vec<String>,
    /// Every `Set-Cookie` it received, in order.
    set_cookies: Vec<String>,
    /// The `X-Forwarded-For` its requests carry, as a reverse proxy in front adds it.
    forwarded_for: Option<String>,
}

impl Browser {
    /// A browser with no cookie, on the pages served at `addr`.
    pub fn new(addr: SocketAddr) -> anyhow::Result<Browser> {
        crate::install_crypto();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Browser {
            base: format!("http://{addr}"),
            client,
            cookies: BTreeMap::new(),
            visited: Vec::new(),
            set_cookies: Vec::new(),
            forwarded_for: None,
        })
    }

    /// This browser, as a reverse proxy in front of the pages forwards it: from `ip`.
    pub fn forwarded_for(self, ip: &str) -> Browser {
        Browser {
            forwarded_for: Some(ip.to_string()),
            ..self
        }
    }

    /// A browser on the pages at `addr` that also trusts the CA of `ca` (a PEM file): the
    /// HTTPS identity providers of a test.
    pub fn trusting(addr: SocketAddr, ca: &std::path::Path) -> anyhow::Result<Browser> {
        crate::install_crypto();
        let mut roots = rustls::RootCertStore::empty();
        for cert in unefois_certs::load_certificates(ca)? {
            roots.add(cert)?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Browser {
            base: format!("http://{addr}"),
            client,
            cookies: BTreeMap::new(),
            visited: Vec::new(),
            set_cookies: Vec::new(),
            forwarded_for: None,
        })
    }

    fn url(&self, path: &str) -> String {
        match path.starts_with("http") {
            true => path.to_string(),
            false => format!("{}{path}", self.base),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> anyhow::Result<Page> {
        let request = match self.cookies.is_empty() {
            true => request,
            false => request.header("cookie", self.cookie_header()),
        };
        let request = match &self.forwarded_for {
            Some(ip) => request.header("x-forwarded-for", ip.clone()),
            None => request,
        };
        let response = request.send().await?;
        let status = response.status().as_u16();
        let mut headers = BTreeMap::new();
        let mut set_cookies = Vec::new();
        for (name, value) in response.headers() {
            let value = value.to_str().unwrap_or_default().to_string();
            if name.as_str() == "set-cookie" {
                set_cookies.push(value.clone());
                self.set_cookies.push(value.clone());
                let pair = value.split(';').next().unwrap_or_default();
                if let Some((k, v)) = pair.split_once('=') {
                    let expired = value.contains("Max-Age=0");
                    match expired || v.is_empty() {
                        true => self.cookies.remove(k),
                        false => self.cookies.insert(k.to_string(), v.to_string()),
                    };
                }
            }
            headers.insert(name.as_str().to_string(), value);
        }
        let body = response.text().await?;
        if let Some(location) = headers.get("location") {
            self.visited.push(location.clone());
        }
        Ok(Page {
            status,
            headers,
            set_cookies,
            body,
        })
    }

    /// `GET path` (or a full URL).
    pub async fn get(&mut self, path: &str) -> anyhow::Result<Page> {
        let url = self.url(path);
        self.visited.push(url.clone());
        let request = self.client.get(url);
        self.send(request).await
    }

    /// `GET path` as a browser sends it when a page of another site (`cross-site`) or of the
    /// same site (`same-site`) leads it there (`Sec-Fetch-Site`).
    pub async fn get_from(&mut self, path: &str, site: &str) -> anyhow::Result<Page> {
        let url = self.url(path);
        self.visited.push(url.clone());
        let request = self
            .client
            .get(url)
            .header("sec-fetch-site", site.to_string());
        self.send(request).await
    }

    /// `POST path` with `form`, sent as a browser sends a form of these pages (`Origin` the
    /// pages' own), or from `origin` when given.
    pub async fn post(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
        origin: Option<&str>,
    ) -> anyhow::Result<Page> {
        let url = self.url(path);
        self.visited.push(url.clone());
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let request = self
            .client
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", origin.unwrap_or(&self.base).to_string())
            .body(body);
        self.send(request).await
    }

    /// Follows redirects from `page` until a page that is not one (5 at most).
    pub async fn follow(&mut self, mut page: Page) -> anyhow::Result<Page> {
        for _ in 0..5 {
            let Some(to) = page.location().map(str::to_string) else {
                return Ok(page);
            };
            page = self.get(&to).await?;
        }
        Err(anyhow!("too many redirects"))
    }

    /// Logs in at the citizen space as `person` (`test:alice`) through the development
    /// identity provider's page; returns the citizen page it lands on.
    pub async fn log_in(&mut self, person: &str) -> anyhow::Result<Page> {
        let to_idp = self.get("/citizen/login").await?;
        let idp_page = self.follow(to_idp).await?;
        anyhow::ensure!(
            idp_page.status == 200,
            "identity provider page: {idp_page:?}"
        );
        let answer = self.choose_person(&idp_page, person).await?;
        let callback = answer
            .location()
            .context("the identity provider did not send the browser back")?
            .to_string();
        let landed = self.get(&callback).await?;
        self.follow(landed).await
    }

    /// Submits the identity provider's page `idp_page` as `person`: its answer, a redirect to
    /// the citizen pages' callback.
    pub async fn choose_person(&mut self, idp_page: &Page, person: &str) -> anyhow::Result<Page> {
        self.submit_idp(idp_page, "/dev-idp/authorize", &[("person", person)])
            .await
    }

    /// POSTs `fields` and, when given, a file `(field, name, bytes)` to `path` as a browser sends
    /// a `multipart/form-data` form of these pages (`Origin` the pages' own).
    pub async fn post_multipart(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
        file: Option<(&str, &str, &[u8])>,
    ) -> anyhow::Result<Page> {
        let url = self.url(path);
        self.visited.push(url.clone());
        let (content_type, body) = multipart(fields, file);
        let request = self
            .client
            .post(url)
            .header("content-type", content_type)
            .header("origin", self.base.clone())
            .body(body);
        self.send(request).await
    }

    /// [`Browser::post_multipart`] over a slow connection: the body sent in 20 parts spread
    /// over `over`; the answer's status and `Location`.
    pub async fn post_multipart_slowly(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
        file: Option<(&str, &str, &[u8])>,
        over: Duration,
    ) -> anyhow::Result<(u16, String)> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (content_type, body) = multipart(fields, file);
        let host = self.base.trim_start_matches("http://").to_string();
        let mut stream = tokio::net::TcpStream::connect(&host).await?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: {}\r\nCookie: {}\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.base,
            self.cookie_header(),
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        let parts = 20;
        for part in body.chunks(body.len().div_ceil(parts)) {
            tokio::time::sleep(over / parts as u32).await;
            stream.write_all(part).await?;
        }
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        let answer = String::from_utf8_lossy(&answer);
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("no status in {answer}"))?;
        let location = answer
            .lines()
            .find_map(|line| line.strip_prefix("location: "))
            .unwrap_or_default()
            .to_string();
        Ok((status, location))
    }

    /// Fills the identity provider's page `idp_page` (posting to `action`): its hidden fields
    /// and `choices`; its answer, a redirect back to the pages.
    async fn submit_idp(
        &mut self,
        idp_page: &Page,
        action: &str,
        choices: &[(&str, &str)],
    ) -> anyhow::Result<Page> {
        let names = [
            "client_id",
            "redirect_uri",
            "state",
            "nonce",
            "code_challenge",
            "code_challenge_method",
            "response_type",
        ];
        let mut form: Vec<(&str, String)> = Vec::new();
        for name in names {
            form.push((
                name,
                idp_page
                    .field(name)
                    .with_context(|| format!("no {name} on the page"))?,
            ));
        }
        form.extend(choices.iter().map(|(k, v)| (*k, v.to_string())));
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.post(action, &form, None).await
    }

    /// Logs in at the desk as the agent `sub` of the development agents' identity provider,
    /// with two factors or one; the page it lands on (the desk, or the refusal).
    pub async fn log_in_agent(&mut self, sub: &str, two_factors: bool) -> anyhow::Result<Page> {
        self.log_in_staff("/desk/login", sub, two_factors).await
    }

    /// The same at the space whose login starts at `login` (`/desk/login`, `/audit/login`).
    pub async fn log_in_staff(
        &mut self,
        login: &str,
        sub: &str,
        two_factors: bool,
    ) -> anyhow::Result<Page> {
        let to_idp = self.get(login).await?;
        let idp_page = self.follow(to_idp).await?;
        anyhow::ensure!(
            idp_page.status == 200,
            "agents' identity provider page: {idp_page:?}"
        );
        let factors = if two_factors { "deux" } else { "un" };
        let answer = self
            .submit_idp(
                &idp_page,
                "/dev-idp/agents/authorize",
                &[("agent", sub), ("facteurs", factors)],
            )
            .await?;
        let callback = answer
            .location()
            .with_context(|| format!("the agents' provider did not answer: {answer:?}"))?
            .to_string();
        let landed = self.get(&callback).await?;
        self.follow(landed).await
    }

    /// At the desk, the person present logs in as `person` (`test:alice`) at the citizens'
    /// identity provider; the desk page it lands on.
    pub async fn person_at_desk(&mut self, person: &str) -> anyhow::Result<Page> {
        let to_idp = self.get("/desk/person/login").await?;
        let idp_page = self.follow(to_idp).await?;
        anyhow::ensure!(
            idp_page.status == 200,
            "identity provider page: {idp_page:?}"
        );
        let answer = self.choose_person(&idp_page, person).await?;
        let callback = answer
            .location()
            .with_context(|| format!("the identity provider did not answer: {answer:?}"))?
            .to_string();
        let landed = self.get(&callback).await?;
        self.follow(landed).await
    }

    /// The last `Set-Cookie` this browser received for `name`, attributes included.
    pub fn set_cookie_of(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}=");
        self.set_cookies
            .iter()
            .rev()
            .find(|c| c.starts_with(&prefix))
            .map(String::as_str)
    }

    /// The cookie `name` this browser holds.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    /// Holds the cookie `name` with `value`, as a browser that kept it (a copy of an old one,
    /// a cookie its owner did not clear).
    pub fn set_cookie(&mut self, name: &str, value: &str) {
        self.cookies.insert(name.to_string(), value.to_string());
    }

    /// Forgets every cookie (another browser, or one whose cookies were cleared).
    pub fn clear_cookies(&mut self) {
        self.cookies.clear();
    }
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A `multipart/form-data` body of `fields` and `file` (its field, its name, its bytes), and
/// its content type.
fn multipart(fields: &[(&str, &str)], file: Option<(&str, &str, &[u8])>) -> (String, Vec<u8>) {
    let boundary = "----unefois-test-boundary-7d1a";
    let mut body: Vec<u8> = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    if let Some((field, filename, bytes)) = file {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; \
                 filename=\"{filename}\"\r\nContent-Type: application/pdf\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
