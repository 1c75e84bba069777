//! iSchedule (draft-desruisseaux-ischedule-05, with the -06 `calendar-data` attributes): real-time
//! scheduling and free/busy between domains over HTTPS, authenticated by DKIM for HTTP.
//!
//! - [`server`]: the receiver (axum on rustls): capabilities, POST, our public key.
//! - [`receive`]: the checks of a POST, then the shared pipeline; the per-recipient answer.
//! - [`relay`]: the sender side of the bridge: outgoing iTIP and free/busy to other domains.
//! - [`client`], [`discovery`], [`capabilities`], [`dkim`], [`xml`]: the protocol pieces.

pub mod capabilities;
pub mod client;
pub mod discovery;
pub mod dkim;
pub mod relay;
pub mod xml;

use crate::config::Config;
use dkim::{DkimError, KeyMethod, Signature, SigningKey};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long keys fetched over `http/well-known` are used without asking again.
const HTTP_KEY_TTL: Duration = Duration::from_secs(3600);

/// A key's (domain, selector).
type DomainSelector = (String, String);

/// Everything iSchedule needs at run time, built from the config (and rebuilt on reload).
pub struct Bridge {
    pub cfg: Arc<Config>,
    pub key: Option<Arc<SigningKey>>,
    pub resolver: discovery::Resolver,
    pub client: client::Client,
    /// Key records exchanged out of band, by (domain, selector).
    private_keys: HashMap<DomainSelector, Vec<String>>,
    http_keys: Mutex<HashMap<DomainSelector, (Vec<String>, Instant)>>,
    /// Public keys already decoded, by their DER bytes: OpenSSL's decoding of a key costs
    /// more than the RSA verification itself, and a peer signs every request with one key.
    parsed_keys: Mutex<HashMap<Vec<u8>, openssl::pkey::PKey<openssl::pkey::Public>>>,
    pub serial: u64,
    pub capabilities: String,
}

/// Reads a private-exchange key file: a PEM public key, or key records one per line.
fn read_private_key_file(path: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if text.contains("-----BEGIN PUBLIC KEY-----") {
        let pkey = openssl::pkey::PKey::public_key_from_pem(text.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let der = pkey
            .public_key_to_der()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(vec![format!("v=DKIM1; k=rsa; p={}", dkim::b64encode(&der))]);
    }
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// The domain part of a calendar user address, lowercase.
pub fn domain_of(addr: &str) -> String {
    crate::ical::norm_addr(addr)
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .unwrap_or_default()
}

impl Bridge {
    pub fn new(cfg: Arc<Config>) -> Result<Bridge, String> {
        let is = &cfg.ischedule;
        let key = match (&is.dkim_key, &is.dkim_domain) {
            (Some(path), Some(domain)) => {
                Some(Arc::new(SigningKey::load(path, domain, &is.dkim_selector)?))
            }
            _ => None,
        };
        let mut nameservers = Vec::new();
        for ns in &cfg.dns.nameservers {
            nameservers.push(crate::config::parse_nameserver(ns)?);
        }
        let dns_timeout = Duration::from_secs(cfg.dns.timeout_secs.unwrap_or(5).clamp(1, 60));
        let resolver = discovery::Resolver::new(&nameservers, dns_timeout)?;
        let client = client::Client::new(
            resolver.clone(),
            is.ca_file.as_deref(),
            key.clone(),
            Duration::from_secs(is.timeout_secs),
            is.signature_ttl_secs,
        )?;
        let mut private_keys = HashMap::new();
        for (ds, path) in &is.private_keys {
            let (d, s) = ds
                .split_once(':')
                .ok_or_else(|| format!("ischedule.private_keys: {ds:?} is not domain:selector"))?;
            private_keys.insert(
                (d.trim().to_ascii_lowercase(), s.trim().to_ascii_lowercase()),
                read_private_key_file(path)?,
            );
        }
        let (serial, capabilities) = capabilities::ours(&capabilities::Limits {
            max_content_length: is.max_content_length,
            max_recipients: is.max_recipients,
            max_instances: cfg.itip.max_instances,
            administrator: is.administrator.clone(),
        });
        Ok(Bridge {
            cfg: cfg.clone(),
            key,
            resolver,
            client,
            private_keys,
            http_keys: Mutex::new(HashMap::new()),
            parsed_keys: Mutex::new(HashMap::new()),
            serial,
            capabilities,
        })
    }

    /// Our key record for `/.well-known/domainkey/<d>/<s>`, when (d, s) is ours.
    pub fn own_key_record(&self, domain: &str, selector: &str) -> Option<String> {
        self.key.as_ref().and_then(|k| {
            (k.domain.eq_ignore_ascii_case(domain) && k.selector.eq_ignore_ascii_case(selector))
                .then(|| k.record())
        })
    }

    /// Finds the public key for `sig` with the methods its `q=` allows, in CalendarServer's order
    /// of preference: private exchange, http/well-known, DNS TXT.
    pub async fn lookup_key(
        &self,
        sig: &Signature,
    ) -> Result<openssl::pkey::PKey<openssl::pkey::Public>, DkimError> {
        let mut why = Vec::new();
        for method in [
            KeyMethod::PrivateExchange,
            KeyMethod::HttpWellKnown,
            KeyMethod::DnsTxt,
        ] {
            if !sig.query_methods.contains(&method) {
                continue;
            }
            let records = match method {
                KeyMethod::PrivateExchange => {
                    match self
                        .private_keys
                        .get(&(sig.domain.clone(), sig.selector.clone()))
                    {
                        Some(r) => r.clone(),
                        None => continue,
                    }
                }
                KeyMethod::HttpWellKnown => match self.http_key_records(sig).await {
                    Ok(r) => r,
                    Err(e) => {
                        why.push(format!("http/well-known: {e}"));
                        continue;
                    }
                },
                KeyMethod::DnsTxt => {
                    let name = format!("{}._domainkey.{}", sig.selector, sig.domain);
                    match self.resolver.txt(&name).await {
                        Ok(r) => r,
                        Err(e) => {
                            why.push(format!("dns/txt {name}: {e}"));
                            continue;
                        }
                    }
                }
            };
            match dkim::select_key(&records, sig.algorithm) {
                Some(k) => return self.decoded(&k),
                None => why.push(format!(
                    "{method:?}: no usable key record for {}/{}",
                    sig.domain, sig.selector
                )),
            }
        }
        Err(DkimError::NoKey(if why.is_empty() {
            format!(
                "no key for {}/{} with the methods of q=",
                sig.domain, sig.selector
            )
        } else {
            why.join("; ")
        }))
    }

    /// `k`'s public key, decoded once (the cache is bounded: cleared when full).
    fn decoded(
        &self,
        k: &dkim::KeyRecord,
    ) -> Result<openssl::pkey::PKey<openssl::pkey::Public>, DkimError> {
        const MAX_PARSED_KEYS: usize = 1024;
        let lock = || self.parsed_keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = lock().get(&k.public_key) {
            return Ok(p.clone());
        }
        let p = k.key()?;
        let mut cache = lock();
        if cache.len() >= MAX_PARSED_KEYS {
            cache.clear();
        }
        cache.insert(k.public_key.clone(), p.clone());
        Ok(p)
    }

    async fn http_key_records(&self, sig: &Signature) -> Result<Vec<String>, String> {
        // d= and s= were checked by `signer_syntax`; checked again here so that no caller can
        // make this function fetch from an address or a path of its choosing.
        if !is_dns_name(&sig.domain) || !is_dns_label(&sig.selector) {
            return Err("d= or s= is not a DNS name".into());
        }
        let k = (sig.domain.clone(), sig.selector.clone());
        if let Some((r, at)) = self
            .http_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&k)
        {
            if at.elapsed() < HTTP_KEY_TTL {
                return Ok(r.clone());
            }
        }
        // An SRV record may move the key server, but only to a host of the signing domain
        // itself (never to an address literal or another domain's host).
        let host = match self
            .resolver
            .srv(&format!("_domainkey_lookup._tcp.{}", sig.domain))
            .await
        {
            Ok(t) if !t.is_empty() => {
                let target = t[0].target.trim_end_matches('.').to_ascii_lowercase();
                if is_dns_name(&target) && within_domain(&target, &sig.domain) {
                    format!("{target}:{}", t[0].port)
                } else {
                    sig.domain.clone()
                }
            }
            _ => sig.domain.clone(),
        };
        let url = format!(
            "https://{host}/.well-known/domainkey/{}/{}",
            sig.domain, sig.selector
        );
        let r = self.client.fetch_key_records(&url).await?;
        self.http_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(k, (r.clone(), Instant::now()));
        Ok(r)
    }

    /// The cheap checks of a signature's d= and s= before any key is looked up: d= is a DNS
    /// name (no address literal, no port, no path) that equals the Originator's domain or a
    /// parent of it (or a configured signer for it); s= is one DNS label.
    pub fn signer_syntax(&self, sig: &Signature, originator: &str) -> Result<(), String> {
        if !is_dns_name(&sig.domain) {
            return Err(format!("d={} is not a DNS name", clean(&sig.domain)));
        }
        if !is_dns_label(&sig.selector) {
            return Err(format!("s={} is not a DNS label", clean(&sig.selector)));
        }
        if !self.signer_may_sign_for(&sig.domain, originator) {
            return Err(format!(
                "signing domain {} does not match the Originator's domain {}",
                sig.domain,
                domain_of(originator)
            ));
        }
        Ok(())
    }

    /// Whether a signature by `d` may speak for `originator` (the draft's d= binding: the
    /// Originator's domain or a parent of it, plus the configured exceptions).
    pub fn signer_may_sign_for(&self, d: &str, originator: &str) -> bool {
        let od = domain_of(originator);
        let within = within_domain;
        if within(&od, d) {
            return true;
        }
        self.cfg
            .ischedule
            .signer_domains
            .iter()
            .filter(|(signer, _)| signer.eq_ignore_ascii_case(d))
            .any(|(_, domains)| domains.iter().any(|x| within(&od, x)))
    }

    /// The Originator of administrative free/busy queries.
    pub fn admin_originator(&self) -> Option<String> {
        self.cfg
            .ischedule
            .originator
            .clone()
            .or_else(|| {
                self.key
                    .as_ref()
                    .map(|k| format!("postmaster@{}", k.domain))
            })
            .map(|a| crate::ical::mailto(&crate::ical::norm_addr(&a)))
    }
}

/// `s` for a log line or an answer: control characters removed, at most 200 characters.
pub fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// Whether `dom` is `parent` or a name below it (case-insensitive).
pub fn within_domain(dom: &str, parent: &str) -> bool {
    dom.eq_ignore_ascii_case(parent)
        || dom
            .to_ascii_lowercase()
            .ends_with(&format!(".{}", parent.to_ascii_lowercase()))
}

/// One DNS label: letters, digits, `-` and `_`, 1 to 63 octets, not starting or ending in `-`.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS host name of at least two labels that is not an IP address literal (no port, no
/// path, no brackets; a trailing dot is not accepted either).
pub fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.contains('.')
        && s.split('.').all(is_dns_label)
        && s.parse::<std::net::IpAddr>().is_err()
        // An all-numeric last label would be read as an IPv4 address by some resolvers.
        && !s.rsplit('.').next().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

/// The DNS record to publish for our key (for `imipd ischedule-key`).
pub fn key_publication(cfg: &Config) -> Result<serde_json::Value, String> {
    let is = &cfg.ischedule;
    let (Some(path), Some(domain)) = (&is.dkim_key, &is.dkim_domain) else {
        return Err("[ischedule] dkim_key and dkim_domain are not set".into());
    };
    let key = SigningKey::load(path, domain, &is.dkim_selector)?;
    let record = key.record();
    // A TXT character-string holds at most 255 octets.
    let strings: Vec<String> = record
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    Ok(serde_json::json!({
        "name": key.record_name(),
        "type": "TXT",
        "value": record,
        "zone": format!("{}. IN TXT {}", key.record_name(), strings.join(" ")),
        "well_known": format!("/.well-known/domainkey/{}/{}", key.domain, key.selector),
    }))
}

pub(crate) use imipd_core::clock::now as unix_now;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lookup_names_are_dns_names_only() {
        assert!(is_dns_name("a.test"));
        assert!(is_dns_name("mail-1.example.org"));
        for bad in [
            "127.0.0.1",
            "127.0.0.1:8443",
            "a.test:443",
            "[::1]",
            "::1",
            "localhost",
            "a.test/x",
            "a.test.",
            "a..test",
            "-a.test",
            "10.0.0.010",
            "a.123",
            "",
        ] {
            assert!(!is_dns_name(bad), "{bad:?}");
        }
        assert!(is_dns_label("ischedule"));
        assert!(is_dns_label("sel_2024"));
        for bad in ["../../admin?x=1", "a/b", "a.b", "", "a b", &"x".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad:?}");
        }
        assert!(within_domain("cal.a.test", "a.test"));
        assert!(!within_domain("evila.test", "a.test"));
    }
}
