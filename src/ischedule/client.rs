//! The iSchedule sender's HTTP side (draft-desruisseaux-ischedule-05 §5, §6): capabilities GET
//! (cached per receiver, refreshed when a response announces another serial), the signed POST,
//! redirects followed with the same method and body (at most 3 hops; a permanent one remembered;
//! never from `https://` to anything else, so that a peer cannot move an invitation and its
//! signature to cleartext), and the `schedule-response` / `error` documents read back. Every
//! request is bounded in time and in the size of what is read back. Keys fetched over
//! `http/well-known` come over HTTPS only, without redirects, in a few seconds and a few KiB.

use super::capabilities::{self, Capabilities};
use super::discovery::Resolver;
use super::dkim::SigningKey;
use super::xml;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 3;
/// Largest response body read.
const MAX_RESPONSE: usize = 4 * 1024 * 1024;
/// Largest key document read over `http/well-known`.
const MAX_KEY_RESPONSE: usize = 16 * 1024;
/// Budget of one key fetch.
const KEY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a capabilities document is used without asking again.
const CAPS_TTL: Duration = Duration::from_secs(3600);

/// One scheduling message to send.
#[derive(Debug, Clone)]
pub struct Request {
    /// `mailto:` URI.
    pub originator: String,
    /// `mailto:` URIs.
    pub recipients: Vec<String>,
    pub component: String,
    pub method: String,
    /// The iCalendar object (CRLF line ends).
    pub body: String,
}

/// The receiver's answer for one recipient.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipientStatus {
    pub recipient: String,
    /// `code;description`, e.g. `2.0;Success`.
    pub status: String,
    pub calendar_data: Option<String>,
    /// The error element named in the response, if any.
    pub error: Option<String>,
    pub description: Option<String>,
}

impl RecipientStatus {
    /// The numeric part of the status (`2.0`).
    pub fn code(&self) -> &str {
        self.status.split(';').next().unwrap_or("").trim()
    }

    /// 1.x and 2.x: delivered or accepted (§7 sender rule).
    pub fn delivered(&self) -> bool {
        self.code().starts_with("1.") || self.code().starts_with("2.")
    }
}

/// Why a POST produced no per-recipient answer.
#[derive(Debug, Clone, PartialEq)]
pub enum PostError {
    /// No connection, TLS failure, timeout.
    Transport(String),
    /// The receiver refused the whole request (HTTP status and the error element).
    Refused {
        status: u16,
        element: Option<String>,
        description: Option<String>,
    },
    /// A 200 whose body is not a usable schedule-response.
    BadResponse(String),
}

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PostError::Transport(e) => write!(f, "transport failure: {e}"),
            PostError::Refused {
                status,
                element,
                description,
            } => write!(
                f,
                "refused with HTTP {status} ({}){}",
                element.as_deref().unwrap_or("no error element"),
                description
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ),
            PostError::BadResponse(e) => write!(f, "unusable response: {e}"),
        }
    }
}

pub struct Client {
    http: reqwest::Client,
    /// For key fetches: HTTPS only, no redirects, short timeout.
    keys: reqwest::Client,
    key: Option<Arc<SigningKey>>,
    /// Capabilities by base URL, with the time they were fetched.
    caps: Mutex<HashMap<String, (Capabilities, Instant)>>,
    /// Permanent redirects seen: old base URL -> new base URL.
    moved: Mutex<HashMap<String, String>>,
    signature_ttl: i64,
}

use imipd_core::clock::now;

/// The ring provider for every rustls use in this process (client and server).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn base_of(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_string()
}

async fn read_limited(resp: reqwest::Response) -> Result<Vec<u8>, String> {
    read_at_most(resp, MAX_RESPONSE).await
}

async fn read_at_most(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > max {
            return Err(format!("response larger than {max} octets"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

impl Client {
    pub fn new(
        resolver: Resolver,
        ca_file: Option<&Path>,
        key: Option<Arc<SigningKey>>,
        timeout: Duration,
        signature_ttl: i64,
    ) -> Result<Client, String> {
        install_crypto_provider();
        let mut kb = reqwest::Client::builder()
            .dns_resolver(Arc::new(resolver.clone()))
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .timeout(KEY_TIMEOUT.min(timeout))
            .connect_timeout(KEY_TIMEOUT.min(timeout))
            .user_agent(concat!("imipd/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(0)
            .no_proxy();
        let mut b = reqwest::Client::builder()
            .dns_resolver(Arc::new(resolver))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("imipd/", env!("CARGO_PKG_VERSION")))
            // Connections to a peer are kept a few seconds, so that a burst (the attendees
            // of one meeting, free/busy lookups) shares one TLS handshake. Peers such as
            // Cyrus close kept-alive connections at will: the idle time stays short, and a
            // request given a kept connection that turns out closed before the request was
            // written is sent again on a new one (hyper's retry of canceled requests).
            .pool_max_idle_per_host(8)
            .pool_idle_timeout(Duration::from_secs(4))
            .no_proxy();
        if let Some(p) = ca_file {
            let pem = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            if certs.is_empty() {
                return Err(format!("{}: no certificate found", p.display()));
            }
            kb = kb.tls_certs_merge(certs.clone());
            b = b.tls_certs_merge(certs);
        }
        Ok(Client {
            http: b.build().map_err(|e| describe(&e))?,
            keys: kb.build().map_err(|e| describe(&e))?,
            key,
            caps: Mutex::new(HashMap::new()),
            moved: Mutex::new(HashMap::new()),
            signature_ttl,
        })
    }

    fn current_base(&self, base: &str) -> String {
        lock(&self.moved)
            .get(base)
            .cloned()
            .unwrap_or_else(|| base.to_string())
    }

    /// Sends a request built by `build` for `url`, following redirects with the same request.
    async fn send_following(
        &self,
        url: &str,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::Response, String), PostError> {
        let mut url = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let resp = build(&url)
                .send()
                .await
                .map_err(|e| PostError::Transport(describe(&e)))?;
            let status = resp.status().as_u16();
            if !matches!(status, 301 | 302 | 307 | 308) {
                return Ok((resp, url));
            }
            let loc = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| PostError::BadResponse(format!("{status} without Location")))?;
            let here = reqwest::Url::parse(&url)
                .map_err(|e| PostError::BadResponse(format!("bad URL {url:?}: {e}")))?;
            let next = here
                .join(loc)
                .map_err(|e| PostError::BadResponse(format!("bad Location {loc:?}: {e}")))?;
            if !redirect_allowed(&here, &next) {
                return Err(PostError::BadResponse(format!(
                    "redirect from {} to {} refused: iSchedule never leaves HTTPS",
                    base_of(here.as_str()),
                    base_of(next.as_str())
                )));
            }
            if matches!(status, 301 | 308) {
                lock(&self.moved).insert(base_of(&url), base_of(next.as_str()));
            }
            url = next.to_string();
        }
        Err(PostError::BadResponse(format!(
            "more than {MAX_REDIRECTS} redirects"
        )))
    }

    /// The receiver's capabilities, from the cache when fresh.
    pub async fn capabilities(&self, base: &str) -> Result<Capabilities, PostError> {
        let base = self.current_base(base);
        if let Some((c, at)) = lock(&self.caps).get(&base) {
            if at.elapsed() < CAPS_TTL {
                return Ok(c.clone());
            }
        }
        // A GET is safe to repeat: peers that drop connections at random (Cyrus 3.6 does,
        // every other connection on a quiet server) get three more chances.
        let mut last = PostError::Transport("no attempt".into());
        for attempt in 0..4 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            // After a permanent redirect the retry goes straight to the new place.
            let base = self.current_base(&base);
            match self.fetch_capabilities(&base).await {
                Ok(caps) => {
                    let base = self.current_base(&base);
                    lock(&self.caps).insert(base, (caps.clone(), Instant::now()));
                    return Ok(caps);
                }
                Err(e @ (PostError::Transport(_) | PostError::BadResponse(_))) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    async fn fetch_capabilities(&self, base: &str) -> Result<Capabilities, PostError> {
        let url = format!("{base}?action=capabilities");
        let (resp, _) = self
            .send_following(&url, |u| {
                self.http
                    .get(u)
                    .header(reqwest::header::ACCEPT, "application/xml")
            })
            .await?;
        let status = resp.status().as_u16();
        let body = read_limited(resp).await.map_err(PostError::Transport)?;
        if status != 200 {
            return Err(PostError::Refused {
                status,
                element: None,
                description: Some("capabilities request failed".into()),
            });
        }
        capabilities::parse(&String::from_utf8_lossy(&body)).map_err(PostError::BadResponse)
    }

    /// The headers of a request, in the order they are sent, DKIM-Signature last.
    pub fn headers(&self, req: &Request) -> Result<Vec<(String, String)>, String> {
        let mut h: Vec<(String, String)> = vec![
            ("iSchedule-Version".into(), "1.0".into()),
            (
                "iSchedule-Message-ID".into(),
                format!("<{}@imipd>", crate::outbound::unique_token()),
            ),
            ("Originator".into(), req.originator.clone()),
        ];
        for r in &req.recipients {
            h.push(("Recipient".into(), r.clone()));
        }
        h.push((
            "Content-Type".into(),
            format!(
                "text/calendar; charset=utf-8; component={}; method={}",
                req.component, req.method
            ),
        ));
        h.push((
            "User-Agent".into(),
            concat!("imipd/", env!("CARGO_PKG_VERSION")).into(),
        ));
        if let Some(key) = &self.key {
            let sig = key.sign(&h, req.body.as_bytes(), now(), self.signature_ttl)?;
            h.push(("DKIM-Signature".into(), sig));
        }
        Ok(h)
    }

    /// Signs and POSTs one request; returns one status per recipient as the receiver gave them.
    pub async fn post(&self, base: &str, req: &Request) -> Result<Vec<RecipientStatus>, PostError> {
        let headers = self.headers(req).map_err(PostError::Transport)?;
        let base = self.current_base(base);
        let (resp, _) = self
            .send_following(&base, |u| {
                let mut b = self
                    .http
                    .post(u)
                    .header(reqwest::header::CACHE_CONTROL, "no-cache, no-transform");
                for (n, v) in &headers {
                    if n != "User-Agent" {
                        b = b.header(n.as_str(), v.as_str());
                    }
                }
                b.body(req.body.clone())
            })
            .await?;
        let status = resp.status().as_u16();
        let serial = resp
            .headers()
            .get("ischedule-capabilities")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_string());
        if let Some(serial) = serial {
            let mut caps = lock(&self.caps);
            if caps
                .get(&base)
                .is_some_and(|(c, _)| c.serial.as_deref() != Some(serial.as_str()))
            {
                caps.remove(&base);
            }
        }
        let body = read_limited(resp).await.map_err(PostError::Transport)?;
        let text = String::from_utf8_lossy(&body);
        if status != 200 {
            let (element, description) = parse_error(&text);
            return Err(PostError::Refused {
                status,
                element,
                description,
            });
        }
        parse_schedule_response(&text).map_err(|e| {
            let start: String = text.chars().take(160).collect();
            PostError::BadResponse(format!("{e} in {start:?}"))
        })
    }

    /// `http/well-known` key records: GET `url` (HTTPS, certificate checked, no redirect),
    /// which must answer 200 text/plain within a few seconds and a few KiB.
    pub async fn fetch_key_records(&self, url: &str) -> Result<Vec<String>, String> {
        if !url.starts_with("https://") {
            return Err(format!("{url}: key URLs are https:// only"));
        }
        let resp = self.keys.get(url).send().await.map_err(|e| describe(&e))?;
        if resp.status().as_u16() != 200 {
            return Err(format!("{url}: HTTP {}", resp.status().as_u16()));
        }
        let ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if !ct.starts_with("text/plain") {
            return Err(format!("{url}: content type {ct:?} is not text/plain"));
        }
        let body = tokio::time::timeout(KEY_TIMEOUT, read_at_most(resp, MAX_KEY_RESPONSE))
            .await
            .map_err(|_| format!("{url}: timed out"))??;
        Ok(String::from_utf8_lossy(&body)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }
}

/// A redirect from `here` to `next` is followed only when it stays on HTTPS; from a plain
/// `http://` peer (`allow_http`, configured per peer) to HTTPS or to the same origin.
pub fn redirect_allowed(here: &reqwest::Url, next: &reqwest::Url) -> bool {
    match (here.scheme(), next.scheme()) {
        (_, "https") => true,
        ("http", "http") => {
            here.host_str() == next.host_str()
                && here.port_or_known_default() == next.port_or_known_default()
        }
        _ => false,
    }
}

/// Reads an `error` document: (error element, response-description).
pub fn parse_error(text: &str) -> (Option<String>, Option<String>) {
    match xml::parse(text) {
        Ok(root) if root.name == "error" => (
            root.children
                .iter()
                .find(|c| c.name != "response-description")
                .map(|c| c.name.clone()),
            root.child_text("response-description").map(str::to_string),
        ),
        _ => (None, None),
    }
}

/// Reads a `schedule-response`: every response needs a recipient and a request-status.
pub fn parse_schedule_response(text: &str) -> Result<Vec<RecipientStatus>, String> {
    let root = xml::parse(text)?;
    if root.name != "schedule-response" {
        return Err(format!(
            "root element is {}, not schedule-response",
            root.name
        ));
    }
    let mut out = Vec::new();
    for r in root.children_named("response") {
        let recipient = r
            .child("recipient")
            // Some servers wrap the address in DAV:href.
            .map(|e| match e.child("href") {
                Some(h) => h.text.trim().to_string(),
                None => e.text.trim().to_string(),
            })
            .filter(|s| !s.is_empty())
            .ok_or("a response without recipient")?;
        let status = r
            .child_text("request-status")
            .filter(|s| !s.is_empty())
            .ok_or("a response without request-status")?
            .to_string();
        out.push(RecipientStatus {
            recipient,
            status,
            calendar_data: r.child("calendar-data").map(|c| c.text.clone()),
            error: r
                .child("error")
                .and_then(|e| e.children.first())
                .map(|e| e.name.clone()),
            description: r.child_text("response-description").map(str::to_string),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(name: &str) -> Option<String> {
        let p = format!(
            "{}/../shared/specs/ischedule/observed/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        match std::fs::read_to_string(p) {
            Ok(t) => Some(t.split_once("\n\n").map(|x| x.1.to_string()).unwrap_or(t)),
            Err(_) => {
                eprintln!("NOTICE: skipping: observed transcript {name} not available");
                None
            }
        }
    }

    /// Cyrus 3.6.1's answers (observed): CDATA calendar-data, an extra DAV namespace.
    #[test]
    fn cyrus_freebusy_response_parses() {
        let Some(t) = observed("cyrus-3.6.1-deb12-post-derived-v05-freebusy.txt") else {
            return;
        };
        let r = parse_schedule_response(&t).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].recipient, "mailto:bob@example.org");
        assert!(r[0].delivered());
        assert!(r[0]
            .calendar_data
            .as_deref()
            .unwrap()
            .contains("METHOD:REPLY"));
    }

    #[test]
    fn cyrus_mixed_and_error_responses_parse() {
        if let Some(t) = observed("cyrus-3.6.1-deb12-post-mixed-recipients.txt") {
            let r = parse_schedule_response(&t).unwrap();
            assert_eq!(r[0].code(), "3.7");
            assert!(!r[0].delivered());
            assert!(r[1].delivered());
        }
        if let Some(t) = observed("cyrus-3.6.1-deb12-post-two-originators.txt") {
            assert_eq!(parse_error(&t).0.as_deref(), Some("too-many-originators"));
        }
    }

    #[test]
    fn redirects_never_leave_https() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        let h = u("https://cal.example/.well-known/ischedule");
        assert!(redirect_allowed(&h, &u("https://other.example/x")));
        assert!(!redirect_allowed(
            &h,
            &u("http://cal.example/.well-known/ischedule")
        ));
        assert!(!redirect_allowed(&h, &u("ftp://cal.example/x")));
        let p = u("http://127.0.0.1:8080/ischedule");
        assert!(redirect_allowed(&p, &u("http://127.0.0.1:8080/other")));
        assert!(!redirect_allowed(&p, &u("http://127.0.0.1:9090/other")));
        assert!(redirect_allowed(&p, &u("https://cal.example/")));
    }

    #[test]
    fn response_without_status_is_refused() {
        let t = "<schedule-response xmlns=\"urn:ietf:params:xml:ns:ischedule\"><response>\
                 <recipient>mailto:a@b</recipient></response></schedule-response>";
        assert!(parse_schedule_response(t).is_err());
    }
}
