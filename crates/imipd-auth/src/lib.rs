//! Sender proof: which calendar-user addresses a message is proven to come from.
//!
//! A message proves its RFC 5322 From address through one of:
//! - a DKIM signature that verifies and whose signing domain aligns with the From domain
//!   (DMARC-style relaxed alignment, strict when the domain's DMARC record says `adkim=s`);
//! - an S/MIME signature (RFC 8551) chaining to a configured trust anchor, by a certificate that
//!   names the From address;
//! - a PGP/MIME signature (RFC 3156) by a valid key of the configured keyring whose user ID
//!   carries the From address;
//! - a trusted path, each off by default: authenticated submission, a trusted relay, or an
//!   `Authentication-Results` header from a trusted upstream verifier.
//!
//! Each proof says which bytes it covers ([`Coverage`]): S/MIME and PGP/MIME only the signed
//! entity, DKIM with `l=` only the signed prefix of the body. The proof is checked on the one
//! MIME tree of the message ([`crate::message::Parsed`]) that calendars are later read from;
//! a message that MIME readers could see two ways gets no proof from its content at all.
//!
//! The verdict also carries the `Authentication-Results` header value to stamp on the message
//! (RFC 8601, `smime` per RFC 7281) and the indexes of forged or untrusted A-R headers to remove.

pub mod message;
pub mod proof;

mod dkim;
mod dmarc;
pub mod dns;
mod mime;
mod pgp;
mod results;
mod smime;

use crate::message::Parsed;
use imipd_core::addr::norm_mailbox;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use results::{parse_auth_results, AuthResults, ResInfo};

/// How sender proof is configured. Every trust path is off by default.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Our own authserv-id for the `Authentication-Results` header, e.g. the host name.
    pub authserv_id: String,
    /// DNS servers to ask; empty means the system resolver.
    pub nameservers: Vec<SocketAddr>,
    /// PEM bundle of CA certificates that S/MIME signers must chain to.
    pub smime_trust_anchors: Option<PathBuf>,
    /// File of OpenPGP certificates (binary or armored, several concatenated).
    pub pgp_keyring: Option<PathBuf>,
    /// Trust `Authentication-Results` headers carrying one of these authserv-ids.
    pub trusted_authserv_ids: Vec<String>,
    /// Messages arriving from these client addresses are trusted for their From.
    pub trusted_relays: Vec<IpAddr>,
    /// A message submitted with SMTP AUTH (the milter saw `{auth_authen}`) proves its From,
    /// when From is one of the login's own addresses.
    pub trust_authenticated_submission: bool,
    /// The addresses each SASL login may send as (lowercase). A login missing here owns itself
    /// when it is an address, else `login@` each of `local_domains`.
    pub submission_logins: HashMap<String, Vec<String>>,
    /// The local domains, for logins that are not addresses.
    pub local_domains: Vec<String>,
    /// Upper bound for every DNS lookup.
    pub dns_timeout: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            authserv_id: "localhost".to_string(),
            nameservers: Vec::new(),
            smime_trust_anchors: None,
            pgp_keyring: None,
            trusted_authserv_ids: Vec::new(),
            trusted_relays: Vec::new(),
            trust_authenticated_submission: false,
            submission_logins: HashMap::new(),
            local_domains: Vec::new(),
            dns_timeout: Duration::from_secs(5),
        }
    }
}

/// What the front door knows about how the message arrived.
#[derive(Debug, Clone, Default)]
pub struct TransportFacts {
    /// The SMTP client's address.
    pub client_ip: Option<IpAddr>,
    /// The SASL login name when the message was submitted with SMTP AUTH.
    pub auth_authen: Option<String>,
}

/// Why the authenticator could not be built. Each error names the file and what is wrong.
#[derive(Debug)]
pub enum AuthError {
    /// A configured file could not be read.
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A configured file was read but its content is unusable.
    Invalid { path: PathBuf, reason: String },
    /// The DNS resolver could not be set up.
    Resolver(String),
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Read { path, error } => {
                write!(f, "cannot read {}: {error}", path.display())
            }
            AuthError::Invalid { path, reason } => write!(f, "{}: {reason}", path.display()),
            AuthError::Resolver(reason) => write!(f, "cannot set up the DNS resolver: {reason}"),
        }
    }
}

impl std::error::Error for AuthError {}

/// How an address was proven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofMethod {
    /// A DKIM signature by `domain`, aligned with the From domain.
    Dkim { domain: String, selector: String },
    /// An S/MIME signature whose certificate names the address.
    Smime,
    /// A PGP/MIME signature by a key bound to the address.
    Pgp,
    /// The message was submitted with SMTP AUTH.
    AuthenticatedSubmission,
    /// A trusted upstream verifier's `Authentication-Results` header.
    TrustedAuthResults,
    /// The message came from a trusted relay.
    TrustedRelay,
}

/// Which parts of the message a proof vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coverage {
    /// Everything, header lines included: the transport vouches for the whole message (a
    /// trusted relay, authenticated submission, an admin's replay).
    Transport,
    /// All of the content (DKIM over the whole body, a trusted upstream's verdict), an opaque
    /// S/MIME entity included, but never calendar lines in the top-level header section, which
    /// no content signature covers.
    Message,
    /// These parts of the tree (sorted indexes into its parts): a multipart/signed's entity.
    Parts(Vec<usize>),
    /// The parts that end at or before this offset of the message bytes (DKIM `l=`).
    Prefix(usize),
    /// The decoded content of an opaque S/MIME message, and nothing outside it.
    Opaque,
}

impl Coverage {
    /// Whether a part of the outer tree, at `index`, ending at `end`, is covered;
    /// `in_headers` when its calendar was read from the top-level header section.
    pub fn covers_part(&self, index: usize, end: usize, in_headers: bool) -> bool {
        match self {
            Coverage::Transport => true,
            _ if in_headers && index == 0 => false,
            Coverage::Message => true,
            Coverage::Parts(parts) => parts.binary_search(&index).is_ok(),
            Coverage::Prefix(until) => end <= *until,
            Coverage::Opaque => false,
        }
    }

    /// Whether the decoded content of an opaque S/MIME message is covered (`in_headers`: the
    /// calendar was read from the spliced message's header section, which holds outer headers).
    pub fn covers_opaque(&self, in_headers: bool) -> bool {
        match self {
            Coverage::Transport => true,
            Coverage::Message | Coverage::Opaque => !in_headers,
            _ => false,
        }
    }

    /// Whether the proof comes from the transport rather than from the content.
    pub fn is_transport(&self) -> bool {
        matches!(self, Coverage::Transport)
    }
}

/// One proven address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// Lowercase bare addr-spec, without `mailto:`.
    pub address: String,
    pub method: ProofMethod,
    /// What the proof covers.
    pub covers: Coverage,
}

/// The outcome of [`Authenticator::verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthVerdict {
    /// The single RFC 5322 From address, lowercase.
    pub from: Option<String>,
    /// Addresses proven, and how.
    pub proofs: Vec<Proof>,
    /// `Authentication-Results` resinfo items, e.g. `dkim=pass header.d=example.com ...`.
    pub results: Vec<String>,
    /// The full `Authentication-Results` header value: `<authserv-id>; item; item`.
    pub header_value: String,
    /// For S/MIME or PGP/MIME: the signed MIME entity (for opaque S/MIME, decoded), so the
    /// calendar can be extracted from it. Set whether or not the signature verified: only
    /// `proofs` says what is proven.
    pub inner: Option<Vec<u8>>,
    /// 0-based indexes, among the message's `Authentication-Results` headers, of those that
    /// claim our authserv-id or one we do not trust (RFC 8601 §5: remove them).
    pub remove_headers: Vec<usize>,
}

impl AuthVerdict {
    /// Whether `addr` (case-insensitive, `mailto:` accepted) is proven by some method.
    pub fn proves(&self, addr: &str) -> bool {
        let wanted = norm_mailbox(addr);
        !wanted.is_empty() && self.proofs.iter().any(|p| p.address == wanted)
    }

    /// The proof for `addr`, preferring one that covers the whole message.
    pub fn proof_for(&self, addr: &str) -> Option<&Proof> {
        let wanted = norm_mailbox(addr);
        let mut limited = None;
        for proof in self.proofs.iter().filter(|p| p.address == wanted) {
            if matches!(proof.covers, Coverage::Message | Coverage::Transport) {
                return Some(proof);
            }
            limited = limited.or(Some(proof));
        }
        limited
    }
}

/// Verifies messages; built once and shared between tasks.
pub struct Authenticator {
    authserv_id: String,
    trusted_authserv_ids: Vec<String>,
    trusted_relays: Vec<IpAddr>,
    trust_authenticated_submission: bool,
    submission_logins: HashMap<String, Vec<String>>,
    local_domains: Vec<String>,
    dns: dns::Dns,
    smime: Option<smime::TrustAnchors>,
    pgp: Option<pgp::Keyring>,
}

impl Authenticator {
    /// Sets up the resolver and loads the S/MIME trust anchors and the OpenPGP keyring.
    pub fn new(cfg: &AuthConfig) -> Result<Self, AuthError> {
        let dns = dns::Dns::new(&cfg.nameservers, cfg.dns_timeout)?;
        let smime = match &cfg.smime_trust_anchors {
            Some(path) => Some(smime::TrustAnchors::load(path)?),
            None => None,
        };
        let pgp = match &cfg.pgp_keyring {
            Some(path) => Some(pgp::Keyring::load(path)?),
            None => None,
        };
        Ok(Authenticator {
            authserv_id: cfg.authserv_id.clone(),
            trusted_authserv_ids: cfg.trusted_authserv_ids.clone(),
            trusted_relays: cfg.trusted_relays.clone(),
            trust_authenticated_submission: cfg.trust_authenticated_submission,
            submission_logins: cfg
                .submission_logins
                .iter()
                .map(|(login, addrs)| {
                    let addrs = addrs.iter().map(|a| norm_mailbox(a)).collect();
                    (login.to_lowercase(), addrs)
                })
                .collect(),
            local_domains: cfg.local_domains.iter().map(|d| d.to_lowercase()).collect(),
            dns,
            smime,
            pgp,
        })
    }

    /// The addresses a SASL login may send as.
    pub fn login_addresses(&self, login: &str) -> Vec<String> {
        let login = login.trim().to_lowercase();
        if let Some(addrs) = self.submission_logins.get(&login) {
            return addrs.clone();
        }
        if login.contains('@') {
            return vec![norm_mailbox(&login)];
        }
        self.local_domains
            .iter()
            .map(|d| format!("{login}@{d}"))
            .collect()
    }

    /// The 0-based indexes of the Authentication-Results headers to remove, without any
    /// signature check (for mail that imipd does not judge).
    pub fn forged_results(&self, parsed: &Parsed<'_>) -> Vec<usize> {
        let headers = mime::TopLevel::of(parsed)
            .map(|m| m.auth_results_headers())
            .unwrap_or_default();
        self.judge_results(&headers)
    }

    /// The 0-based indexes, among these Authentication-Results values, of the ones to remove.
    pub fn judge_results(&self, headers: &[String]) -> Vec<usize> {
        results::judge_upstream(headers, &self.authserv_id, &self.trusted_authserv_ids).remove
    }

    /// [`Authenticator::verify`] on raw message bytes (parsed here, once).
    pub async fn verify_message(&self, raw: &[u8], facts: &TransportFacts) -> AuthVerdict {
        let (bytes, bare_cr) = crate::message::normalize_line_ends(raw);
        let parsed = Parsed::new(&bytes, bare_cr);
        self.verify(&parsed, facts).await
    }

    /// Decides which addresses a parsed RFC 5322 message is proven to come from, and which of
    /// its parts each proof covers.
    pub async fn verify(&self, parsed: &Parsed<'_>, facts: &TransportFacts) -> AuthVerdict {
        let mut verdict = AuthVerdict::default();
        let message = mime::TopLevel::of(parsed);
        let ar_headers = match &message {
            Some(m) => m.auth_results_headers(),
            None => Vec::new(),
        };
        let upstream =
            results::judge_upstream(&ar_headers, &self.authserv_id, &self.trusted_authserv_ids);
        verdict.remove_headers = upstream.remove;

        match message {
            None => verdict
                .results
                .push("x-imipd-sender=none reason=\"unparseable message\"".to_string()),
            Some(message) => {
                self.verify_parsed(parsed, &message, facts, &upstream.trusted, &mut verdict)
                    .await
            }
        }
        // Content that MIME readers could see two ways proves nothing; the transport still may.
        if let Some(why) = &parsed.ambiguity {
            let before = verdict.proofs.len();
            verdict.proofs.retain(|p| {
                matches!(
                    p.method,
                    ProofMethod::AuthenticatedSubmission | ProofMethod::TrustedRelay
                )
            });
            if verdict.proofs.len() < before || parsed.tree.is_some() {
                verdict.results.push(format!(
                    "x-imipd-mime=ambiguous reason={}",
                    results::quote(why)
                ));
            }
        }
        verdict.header_value = results::header_value(&self.authserv_id, &verdict.results);
        verdict
    }

    async fn verify_parsed(
        &self,
        parsed: &Parsed<'_>,
        message: &mime::TopLevel<'_, '_>,
        facts: &TransportFacts,
        trusted: &[AuthResults],
        verdict: &mut AuthVerdict,
    ) {
        let from = match message.single_from() {
            Ok(from) => Some(from),
            Err(reason) => {
                verdict.results.push(format!(
                    "x-imipd-sender=none reason={}",
                    results::quote(&reason)
                ));
                None
            }
        };
        verdict.from = from.clone();
        let from_domain = from
            .as_deref()
            .and_then(mime::domain_of)
            .map(str::to_string);

        // The DMARC record decides strict or relaxed alignment for DKIM and trusted A-R.
        let policy = match &from_domain {
            Some(domain) => Some(dmarc::lookup(&self.dns, domain).await),
            None => None,
        };

        // DKIM is checked even without a usable From, so the header tells what was seen.
        let dkim = dkim::verify(&self.dns, message.raw(), parsed.body_offset()).await;
        for outcome in &dkim {
            verdict.results.push(outcome.resinfo());
        }
        if let (Some(from), Some(domain), Some(policy)) = (&from, &from_domain, &policy) {
            let mut aligned_pass = false;
            for outcome in dkim.iter().filter(|o| o.passed()) {
                if dmarc::aligned(&outcome.domain, domain, policy.strict()) {
                    aligned_pass = true;
                    verdict.proofs.push(Proof {
                        address: from.clone(),
                        method: ProofMethod::Dkim {
                            domain: outcome.domain.clone(),
                            selector: outcome.selector.clone(),
                        },
                        covers: match outcome.signed_until {
                            None => Coverage::Message,
                            Some(until) => Coverage::Prefix(until),
                        },
                    });
                }
            }
            verdict.results.push(policy.resinfo(domain, aligned_pass));
        }

        let mut smime_seen = false;
        if let Some(signed) = message.smime_signed() {
            smime_seen = true;
            let outcome = smime::verify(self.smime.as_ref(), &signed, from.as_deref());
            verdict.results.push(outcome.resinfo());
            let covers = match &signed {
                mime::SmimeSigned::Detached { entity, .. } => Coverage::Parts(
                    parsed
                        .tree
                        .as_ref()
                        .map(|t| crate::message::subtree(t, *entity))
                        .unwrap_or_default(),
                ),
                mime::SmimeSigned::Opaque { .. } => Coverage::Opaque,
            };
            if let Some(inner) = outcome.inner {
                if outcome.proven {
                    if let Some(from) = &from {
                        verdict.proofs.push(Proof {
                            address: from.clone(),
                            method: ProofMethod::Smime,
                            covers,
                        });
                    }
                }
                if matches!(signed, mime::SmimeSigned::Opaque { .. }) {
                    verdict.inner = Some(inner);
                }
            }
        }
        if !smime_seen {
            verdict.results.push("smime=none".to_string());
        }

        if let Some(signed) = message.pgp_signed() {
            let outcome = pgp::verify(self.pgp.as_ref(), &signed, from.as_deref());
            verdict.results.push(outcome.resinfo());
            if outcome.proven {
                if let Some(from) = &from {
                    verdict.proofs.push(Proof {
                        address: from.clone(),
                        method: ProofMethod::Pgp,
                        covers: Coverage::Parts(
                            parsed
                                .tree
                                .as_ref()
                                .map(|t| crate::message::subtree(t, signed.entity))
                                .unwrap_or_default(),
                        ),
                    });
                }
            }
        }

        let Some(from) = from else { return };
        if self.trust_authenticated_submission {
            if let Some(user) = facts.auth_authen.as_deref().filter(|u| !u.is_empty()) {
                // The login proves only its own addresses, never someone else's From.
                if self.login_addresses(user).contains(&from) {
                    verdict
                        .results
                        .push(format!("auth=pass smtp.auth={}", results::value(user)));
                    verdict.proofs.push(Proof {
                        address: from.clone(),
                        method: ProofMethod::AuthenticatedSubmission,
                        covers: Coverage::Transport,
                    });
                } else {
                    verdict.results.push(format!(
                        "auth=fail reason=\"From is not the login's address\" smtp.auth={}",
                        results::value(user)
                    ));
                }
            }
        }
        if let Some(ip) = facts
            .client_ip
            .filter(|ip| self.trusted_relays.contains(ip))
        {
            verdict
                .results
                .push(format!("x-imipd-relay=pass policy.relay={ip}"));
            verdict.proofs.push(Proof {
                address: from.clone(),
                method: ProofMethod::TrustedRelay,
                covers: Coverage::Transport,
            });
        }
        if let (Some(domain), Some(policy)) = (&from_domain, &policy) {
            if let Some(id) = results::trusted_proof(trusted, domain, policy.strict()) {
                verdict.results.push(format!(
                    "x-imipd-upstream=pass policy.authserv-id={} header.from={}",
                    results::value(&id),
                    results::value(domain)
                ));
                // The upstream may have passed a signature with l=: then only what that
                // signature covers is vouched for, as far as imipd can tell.
                let covers = match dkim.iter().filter_map(|o| o.signed_until).min() {
                    Some(until) => Coverage::Prefix(until),
                    None => Coverage::Message,
                };
                verdict.proofs.push(Proof {
                    address: from,
                    method: ProofMethod::TrustedAuthResults,
                    covers,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proves_ignores_case_and_mailto() {
        let verdict = AuthVerdict {
            proofs: vec![Proof {
                address: "alice@example.com".into(),
                method: ProofMethod::Smime,
                covers: Coverage::Message,
            }],
            ..Default::default()
        };
        assert!(verdict.proves("MAILTO:Alice@Example.COM"));
        assert!(verdict.proves("alice@example.com"));
        assert!(!verdict.proves("bob@example.com"));
        assert!(!verdict.proves(""));
        // A mailbox is never percent-decoded into another one.
        assert!(!verdict.proves("%61lice@example.com"));
    }

    /// A SASL login whose name holds a percent escape proves its own mailbox, not the one
    /// the escape would decode to.
    #[test]
    fn a_percent_login_is_not_its_decoded_neighbour() {
        let auth = Authenticator::new(&AuthConfig {
            local_domains: vec!["example.org".into()],
            ..Default::default()
        })
        .expect("authenticator");
        assert_eq!(
            auth.login_addresses("%61lice@example.org"),
            ["%61lice@example.org"]
        );
        assert!(!auth
            .login_addresses("%61lice@example.org")
            .contains(&"alice@example.org".to_string()));
    }

    #[test]
    fn proof_for_prefers_whole_body_proofs() {
        let limited = Proof {
            address: "alice@example.com".into(),
            method: ProofMethod::Dkim {
                domain: "example.com".into(),
                selector: "s".into(),
            },
            covers: Coverage::Prefix(10),
        };
        let whole = Proof {
            address: "alice@example.com".into(),
            method: ProofMethod::Pgp,
            covers: Coverage::Message,
        };
        let verdict = AuthVerdict {
            proofs: vec![limited.clone(), whole.clone()],
            ..Default::default()
        };
        assert_eq!(verdict.proof_for("mailto:alice@example.com"), Some(&whole));
        let only_limited = AuthVerdict {
            proofs: vec![limited.clone()],
            ..Default::default()
        };
        assert_eq!(only_limited.proof_for("alice@example.com"), Some(&limited));
        assert_eq!(only_limited.proof_for("bob@example.com"), None);
    }

    #[test]
    fn authenticator_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Authenticator>();
    }
}
