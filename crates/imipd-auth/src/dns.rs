//! The DNS resolver and TXT cache shared by DKIM and DMARC checks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::system_conf::read_system_conf;
use mail_auth::{MessageAuthenticator, ResolverCache, Txt};

use super::AuthError;

/// Entries kept at most; a full cache drops its expired entries, then everything.
const CACHE_CAPACITY: usize = 4096;
/// Negative or failed answers are kept this long at most, so a fixed record is seen soon.
const MAX_ERROR_TTL: Duration = Duration::from_secs(60);

pub struct Dns {
    pub resolver: MessageAuthenticator,
    pub cache: TxtCache,
    pub timeout: Duration,
}

impl Dns {
    pub fn new(nameservers: &[SocketAddr], timeout: Duration) -> Result<Self, AuthError> {
        let (config, mut opts) = if nameservers.is_empty() {
            read_system_conf().map_err(|e| AuthError::Resolver(e.to_string()))?
        } else {
            let servers = nameservers
                .iter()
                .map(|addr| {
                    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                    for connection in &mut server.connections {
                        connection.port = addr.port();
                    }
                    server
                })
                .collect();
            (
                ResolverConfig::from_name_servers(servers),
                ResolverOpts::default(),
            )
        };
        opts.timeout = timeout;
        opts.attempts = 1;
        let resolver = MessageAuthenticator::new(config, opts)
            .map_err(|e| AuthError::Resolver(e.to_string()))?;
        Ok(Dns {
            resolver,
            cache: TxtCache::default(),
            timeout,
        })
    }
}

/// TXT lookups answered from the cache, and those that went to the resolver, since start:
/// read by the metrics endpoint (`imipd_dns_lookups_total`).
pub static CACHE_HITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static QUERIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A bounded TXT cache honouring the records' TTLs.
#[derive(Default)]
pub struct TxtCache {
    entries: Mutex<HashMap<Box<str>, (Txt, Instant)>>,
}

impl TxtCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, (Txt, Instant)>> {
        // A panic elsewhere while holding the lock leaves a usable map.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers that `name` has no record (`err`, the resolver's "not found"), for at most
    /// [`MAX_ERROR_TTL`]: mail-auth caches what it found and what it could not parse, not a
    /// name that is not there, so each message would look it up again.
    pub(crate) fn remember_missing(&self, name: &str, err: mail_auth::Error) {
        use mail_auth::common::resolver::ToFqdn;
        self.insert(
            name.to_fqdn().into(),
            Txt::Error(err),
            Instant::now() + MAX_ERROR_TTL,
        );
    }
}

impl ResolverCache<Box<str>, Txt> for TxtCache {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        use std::sync::atomic::Ordering::Relaxed;
        let mut entries = self.lock();
        // A miss is followed by a query to the resolver.
        match entries.get(name) {
            Some((value, expires)) if *expires > Instant::now() => {
                CACHE_HITS.fetch_add(1, Relaxed);
                Some(value.clone())
            }
            Some(_) => {
                entries.remove(name);
                QUERIES.fetch_add(1, Relaxed);
                None
            }
            None => {
                QUERIES.fetch_add(1, Relaxed);
                None
            }
        }
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.lock().remove(name).map(|(value, _)| value)
    }

    fn insert(&self, key: Box<str>, value: Txt, valid_until: Instant) {
        let valid_until = if matches!(value, Txt::Error(_)) {
            valid_until.min(Instant::now() + MAX_ERROR_TTL)
        } else {
            valid_until
        };
        let mut entries = self.lock();
        if entries.len() >= CACHE_CAPACITY {
            let now = Instant::now();
            entries.retain(|_, (_, expires)| *expires > now);
            // Names anyone can make up (a selector, a From domain) go before keys and
            // policies that were found.
            if entries.len() >= CACHE_CAPACITY {
                entries.retain(|_, (value, _)| !matches!(value, Txt::Error(_)));
            }
            if entries.len() >= CACHE_CAPACITY {
                entries.clear();
            }
        }
        entries.insert(key, (value, valid_until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_auth::common::parse::TxtRecordParser;
    use mail_auth::dmarc::Dmarc;

    /// Names anyone can make up fill a full cache with "not found" answers; they are dropped
    /// before the records that were found.
    #[test]
    fn made_up_names_do_not_push_found_records_out() {
        let cache = TxtCache::default();
        let policy = Dmarc::parse(b"v=DMARC1; p=reject").expect("record");
        let later = Instant::now() + Duration::from_secs(3600);
        cache.insert(
            "_dmarc.example.com.".into(),
            Txt::Dmarc(policy.into()),
            later,
        );
        let missing = || {
            mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(
                mail_auth::hickory_resolver::proto::op::ResponseCode::NXDomain,
            ))
        };
        for i in 0..CACHE_CAPACITY + 10 {
            cache.remember_missing(&format!("s{i}._domainkey.attacker.example."), missing());
        }
        assert!(matches!(
            cache.get::<str>("_dmarc.example.com."),
            Some(Txt::Dmarc(_))
        ));
        assert!(cache.lock().len() <= CACHE_CAPACITY);
        // A remembered miss is answered from the cache, as mail-auth's lookup expects.
        let n = format!("s{}._domainkey.attacker.example.", CACHE_CAPACITY + 9);
        assert!(matches!(cache.get::<str>(&n), Some(Txt::Error(_))));
    }
}
