//! Finding a domain's iSchedule receiver (draft-desruisseaux-ischedule-05 §4): a configured
//! override, else SRV `_ischedules._tcp.<domain>` (RFC 2782 order) with the context path from a
//! TXT `path=` record at the same name, else `/.well-known/ischedule`. Also the name lookups the
//! HTTPS client and the key lookups need, all through one resolver with the configured
//! nameservers (hickory caches answers for their TTL). Every lookup is bounded in time.

use mail_auth::hickory_resolver::proto::rr::RData;
use mail_auth::hickory_resolver::TokioResolver;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

pub const WELL_KNOWN: &str = "/.well-known/ischedule";

/// A lookup that found nothing is not a failure: the domain simply has no such record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    NotFound,
    Failed(String),
}

impl std::fmt::Display for LookupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LookupError::NotFound => write!(f, "no such record"),
            LookupError::Failed(e) => write!(f, "DNS lookup failed: {e}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// The DNS resolver for iSchedule.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<crate::auth::dns::Dns>,
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

impl Resolver {
    pub fn new(nameservers: &[SocketAddr], timeout: Duration) -> Result<Resolver, String> {
        let dns = crate::auth::dns::Dns::new(nameservers, timeout).map_err(|e| e.to_string())?;
        Ok(Resolver {
            inner: Arc::new(dns),
        })
    }

    fn resolver(&self) -> &TokioResolver {
        self.inner.resolver.resolver()
    }

    fn timeout(&self) -> Duration {
        // The resolver makes one attempt per server; leave it room for TCP fallback.
        self.inner.timeout * 2
    }

    async fn bounded<T, E: std::fmt::Display>(
        &self,
        f: impl std::future::Future<Output = Result<T, E>>,
        is_empty: impl Fn(&E) -> bool,
    ) -> Result<T, LookupError> {
        match tokio::time::timeout(self.timeout(), f).await {
            Err(_) => Err(LookupError::Failed("timed out".into())),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if is_empty(&e) => Err(LookupError::NotFound),
            Ok(Err(e)) => Err(LookupError::Failed(e.to_string())),
        }
    }

    pub async fn srv(&self, name: &str) -> Result<Vec<SrvTarget>, LookupError> {
        let lookup = self
            .bounded(self.resolver().srv_lookup(fqdn(name)), |e| {
                e.is_no_records_found() || e.is_nx_domain()
            })
            .await?;
        let mut out: Vec<SrvTarget> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some(SrvTarget {
                    priority: s.priority,
                    weight: s.weight,
                    port: s.port,
                    target: s.target.to_ascii().trim_end_matches('.').to_string(),
                }),
                _ => None,
            })
            .collect();
        if out.is_empty() {
            return Err(LookupError::NotFound);
        }
        // RFC 2782: lowest priority first; within one priority, heavier first (a deterministic
        // stand-in for the weighted random choice, which only matters for load spreading).
        out.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
        Ok(out)
    }

    /// TXT records at `name`, each one's strings joined.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, LookupError> {
        let lookup = self
            .bounded(self.resolver().txt_lookup(fqdn(name)), |e| {
                e.is_no_records_found() || e.is_nx_domain()
            })
            .await?;
        let out: Vec<String> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(t) => Some(
                    t.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect();
        if out.is_empty() {
            return Err(LookupError::NotFound);
        }
        Ok(out)
    }

    pub async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, LookupError> {
        let lookup = self
            .bounded(self.resolver().lookup_ip(fqdn(host)), |e| {
                e.is_no_records_found() || e.is_nx_domain()
            })
            .await?;
        let out: Vec<IpAddr> = lookup.iter().collect();
        if out.is_empty() {
            return Err(LookupError::NotFound);
        }
        Ok(out)
    }
}

/// Lets the HTTPS client resolve host names through our resolver.
impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let r = self.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let ips =
                r.ips(&host)
                    .await
                    .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> {
                        format!("{host}: {e}").into()
                    })?;
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// Where to send a domain's iSchedule requests, best first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovered {
    /// Base URLs (scheme, host, port and context path).
    Urls(Vec<String>),
    /// The domain has no iSchedule service (no SRV, or the "." target).
    None,
}

/// The value of a DNS-SD style `path=` key among TXT records.
pub fn path_from_txt(records: &[String]) -> Option<String> {
    records.iter().find_map(|r| {
        let (k, v) = r.trim().split_once('=')?;
        (k.trim().eq_ignore_ascii_case("path") && v.trim().starts_with('/'))
            .then(|| v.trim().to_string())
    })
}

/// Discovers the receiver of `domain`; `overrides` maps domains to base URLs.
pub async fn discover(
    resolver: &Resolver,
    overrides: &BTreeMap<String, String>,
    domain: &str,
) -> Result<Discovered, LookupError> {
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    if let Some(url) = overrides
        .iter()
        .find(|(d, _)| d.eq_ignore_ascii_case(&domain))
        .map(|(_, u)| u.clone())
    {
        return Ok(Discovered::Urls(vec![url]));
    }
    let name = format!("_ischedules._tcp.{domain}");
    let targets = match resolver.srv(&name).await {
        Ok(t) => t,
        Err(LookupError::NotFound) => return Ok(Discovered::None),
        Err(e) => return Err(e),
    };
    if targets.len() == 1 && (targets[0].target.is_empty() || targets[0].target == ".") {
        return Ok(Discovered::None);
    }
    let path = match resolver.txt(&name).await {
        Ok(records) => path_from_txt(&records),
        Err(_) => None,
    }
    .unwrap_or_else(|| WELL_KNOWN.to_string());
    Ok(Discovered::Urls(
        targets
            .iter()
            .filter(|t| !t.target.is_empty())
            .map(|t| {
                if t.port == 443 {
                    format!("https://{}{path}", t.target)
                } else {
                    format!("https://{}:{}{path}", t.target, t.port)
                }
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_path_key() {
        assert_eq!(
            path_from_txt(&["txtvers=1".into(), "path=/isched".into()]),
            Some("/isched".into())
        );
        assert_eq!(path_from_txt(&["path=relative".into()]), None);
    }
}
