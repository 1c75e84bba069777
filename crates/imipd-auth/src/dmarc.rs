//! DMARC-style identifier alignment (RFC 7489 §3.1.1) between a DKIM `d=` and the From domain.
//!
//! Relaxed alignment compares organizational domains (RFC 7489 §3.2), taken from the Public
//! Suffix List compiled into the `psl` crate: `mail.example.co.uk` and `example.co.uk` align,
//! `example.co.uk` and `other.co.uk` do not. A domain that is itself a public suffix (or not
//! under any known one) has no organizational domain and aligns only with itself.

use mail_auth::dmarc::{Alignment, Dmarc};
use mail_auth::{DnsError, Error};

use super::dns::Dns;
use super::results::value;

/// What the From domain's DMARC record says, as far as alignment is concerned.
pub(crate) struct Policy {
    state: State,
}

enum State {
    /// A record was found (at the From domain or its organizational domain).
    Record { strict: bool },
    /// No record.
    Missing,
    /// The lookup failed or timed out: treat as relaxed, report a temporary error.
    TempError(String),
}

impl Policy {
    /// Whether DKIM alignment must be exact (`adkim=s`).
    pub(crate) fn strict(&self) -> bool {
        matches!(self.state, State::Record { strict: true })
    }

    /// The `dmarc=` resinfo item, given whether an aligned DKIM signature passed.
    pub(crate) fn resinfo(&self, from_domain: &str, aligned_pass: bool) -> String {
        let from = value(from_domain);
        match (&self.state, aligned_pass) {
            (State::Record { .. }, true) => format!("dmarc=pass header.from={from}"),
            (State::Record { .. }, false) => {
                format!("dmarc=fail reason=\"no aligned DKIM signature\" header.from={from}")
            }
            (State::Missing, _) => format!("dmarc=none header.from={from}"),
            (State::TempError(reason), _) => {
                format!(
                    "dmarc=temperror reason={} header.from={from}",
                    super::results::quote(reason)
                )
            }
        }
    }
}

/// Looks up `_dmarc.<domain>`, then the organizational domain's record.
pub(crate) async fn lookup(dns: &Dns, domain: &str) -> Policy {
    let domain = domain.trim_end_matches('.').to_lowercase();
    let mut candidates = vec![domain.clone()];
    let org = organizational_domain(&domain);
    if org != domain {
        candidates.push(org.to_string());
    }
    for candidate in candidates {
        let name = format!("_dmarc.{candidate}.");
        let lookup = dns.resolver.txt_lookup::<Dmarc>(&name, Some(&dns.cache));
        match tokio::time::timeout(dns.timeout, lookup).await {
            Ok(Ok(record)) => {
                return Policy {
                    state: State::Record {
                        strict: record.adkim == Alignment::Strict,
                    },
                }
            }
            // No record: remembered as such (the cache keeps a negative answer at most a
            // minute), or every message from a domain without DMARC would cost a lookup.
            Ok(Err(err @ Error::Dns(DnsError::RecordNotFound(_)))) => {
                dns.cache.remember_missing(&name, err);
            }
            // A TXT record that is not DMARC at all is no record (mail-auth caches it).
            Ok(Err(
                Error::Dns(DnsError::InvalidRecordType) | Error::ParseError | Error::Dkim(_),
            )) => {}
            Ok(Err(err)) => {
                return Policy {
                    state: State::TempError(err.to_string()),
                }
            }
            Err(_) => {
                return Policy {
                    state: State::TempError("DNS lookup timed out".to_string()),
                }
            }
        }
    }
    Policy {
        state: State::Missing,
    }
}

/// Whether the DKIM signing domain `d` aligns with `from_domain`.
pub(crate) fn aligned(d: &str, from_domain: &str, strict: bool) -> bool {
    let d = d.trim_end_matches('.').to_ascii_lowercase();
    let from = from_domain.trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() || from.is_empty() {
        return false;
    }
    if d == from {
        return true;
    }
    if strict {
        return false;
    }
    match (org_domain(&d), org_domain(&from)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// The organizational domain (RFC 7489 §3.2): the public suffix plus one label.
fn org_domain(domain: &str) -> Option<&str> {
    psl::domain_str(domain)
}

/// The organizational domain, or the domain itself when it has none.
fn organizational_domain(domain: &str) -> &str {
    org_domain(domain).unwrap_or(domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_domain_aligns_in_both_modes() {
        assert!(aligned("example.com", "Example.COM", false));
        assert!(aligned("example.com.", "example.com", true));
    }

    #[test]
    fn parent_signature_aligns_relaxed_only() {
        assert!(aligned("example.com", "mail.example.com", false));
        assert!(!aligned("example.com", "mail.example.com", true));
    }

    #[test]
    fn subdomain_signature_aligns_relaxed() {
        assert!(aligned("mail.example.com", "example.com", false));
    }

    #[test]
    fn unrelated_or_lookalike_domains_do_not_align() {
        assert!(!aligned("example.net", "example.com", false));
        assert!(!aligned("ample.com", "example.com", false));
    }

    #[test]
    fn siblings_share_an_organizational_domain() {
        assert!(aligned("a.example.com", "b.example.com", false));
        assert!(!aligned("a.example.com", "b.example.com", true));
    }

    #[test]
    fn public_suffixes_come_from_the_list() {
        assert!(aligned("mail.example.co.uk", "example.co.uk", false));
        assert!(!aligned("example.co.uk", "other.co.uk", false));
        assert!(!aligned("co.uk", "example.co.uk", false));
        // Private suffixes of the list: two customers of one host do not align.
        assert!(!aligned("alice.github.io", "mallory.github.io", false));
    }

    #[test]
    fn top_level_domain_never_aligns_by_suffix() {
        assert!(!aligned("com", "example.com", false));
        assert!(!aligned("example.com", "com", false));
    }

    #[test]
    fn organizational_domain_follows_the_public_suffix_list() {
        assert_eq!(organizational_domain("a.b.example.com"), "example.com");
        assert_eq!(organizational_domain("example.com"), "example.com");
        assert_eq!(organizational_domain("a.b.example.co.uk"), "example.co.uk");
        assert_eq!(organizational_domain("co.uk"), "co.uk");
    }
}
