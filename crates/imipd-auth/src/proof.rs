//! Sender proof as the front doors use it: which addresses a message is proven to come from,
//! the Authentication-Results header to stamp, and which forged A-R headers to remove.

use crate::message::Parsed;
use std::net::IpAddr;

/// What the transport knows about a message.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    pub client_ip: Option<IpAddr>,
    pub auth_authen: Option<String>,
}

pub use crate::Coverage;

/// One proven address and what the proof covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Normalized address.
    pub address: String,
    pub covers: Coverage,
}

#[derive(Debug, Default, Clone)]
pub struct Proof {
    pub from: Option<String>,
    /// Proven addresses, each with what its proof covers.
    pub grants: Vec<Grant>,
    /// Authentication-Results header value (RFC 8601), authserv-id first.
    pub results: String,
    /// 0-based indexes among the message's Authentication-Results headers to remove.
    pub remove_results: Vec<usize>,
    /// An opaque S/MIME message's decoded entity inside the outer headers, to read calendars
    /// from (whether or not the signature verified: only `grants` says what is proven).
    pub inner: Option<Vec<u8>>,
    /// Why the message's content proves nothing (MIME that readers could see two ways).
    pub ambiguity: Option<String>,
    /// The From address (calendar form) that the SMTP AUTH login proved: the message is that
    /// user's own submission (only with `policy.trust_authenticated_submission`).
    pub submitter: Option<String>,
}

impl Proof {
    /// An admin's word that the From address sent the whole message (`process --trust-sender`).
    pub fn trusted_sender(from: Option<String>) -> Proof {
        Proof {
            grants: from
                .iter()
                .map(|f| Grant {
                    address: f.clone(),
                    covers: Coverage::Transport,
                })
                .collect(),
            from,
            ..Default::default()
        }
    }

    /// Addresses proven for a part of the outer tree (`in_headers`: its calendar was read from
    /// the part's header section).
    pub fn proven_for_part(&self, index: usize, end: usize, in_headers: bool) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for g in self
            .grants
            .iter()
            .filter(|g| g.covers.covers_part(index, end, in_headers))
        {
            if !out.contains(&g.address) {
                out.push(g.address.clone());
            }
        }
        out
    }

    /// DKIM `l=` prefixes that end inside a part's body (after `body_start`, before `end`):
    /// (address, offset where the signed bytes end). Objects wholly inside are proven.
    pub fn partial_for_part(&self, body_start: usize, end: usize) -> Vec<(String, usize)> {
        self.grants
            .iter()
            .filter_map(|g| match g.covers {
                Coverage::Prefix(until) if until > body_start && until < end => {
                    Some((g.address.clone(), until))
                }
                _ => None,
            })
            .collect()
    }

    /// Addresses proven for the decoded content of an opaque S/MIME message; only transport
    /// proofs when that content is itself ambiguous.
    pub fn proven_for_opaque(&self, in_headers: bool, ambiguous: bool) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for g in self.grants.iter().filter(|g| {
            g.covers.covers_opaque(in_headers) && (!ambiguous || g.covers.is_transport())
        }) {
            if !out.contains(&g.address) {
                out.push(g.address.clone());
            }
        }
        out
    }
}

/// The proof checks configured for this daemon: DKIM with alignment, S/MIME, PGP/MIME and the
/// trusted paths, through [`crate::Authenticator`].
pub struct Prover {
    authserv_id: String,
    auth: crate::Authenticator,
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Prover {
    pub fn new(ac: &crate::AuthConfig) -> Result<Prover, String> {
        Ok(Prover {
            authserv_id: ac.authserv_id.clone(),
            auth: crate::Authenticator::new(ac).map_err(|e| e.to_string())?,
        })
    }

    pub fn authserv_id(&self) -> &str {
        &self.authserv_id
    }

    /// The addresses a SASL login may send as.
    pub fn login_addresses(&self, login: &str) -> Vec<String> {
        self.auth.login_addresses(login)
    }

    /// Checks the sender proof of a parsed message.
    pub async fn prove(&self, parsed: &Parsed<'_>, facts: &Facts) -> Proof {
        let tf = crate::TransportFacts {
            client_ip: facts.client_ip,
            auth_authen: facts.auth_authen.clone(),
        };
        let v = self.auth.verify(parsed, &tf).await;
        let mut proof = Proof {
            from: v
                .from
                .clone()
                .map(|f| imipd_core::addr::mailbox_as_cal_addr(&f)),
            results: v.header_value.clone(),
            remove_results: v.remove_headers.clone(),
            inner: v
                .inner
                .as_deref()
                .and_then(|inner| splice_opaque(parsed.bytes, inner)),
            ambiguity: parsed.ambiguity.clone(),
            ..Default::default()
        };
        for p in &v.proofs {
            if p.method == crate::ProofMethod::AuthenticatedSubmission {
                proof.submitter = Some(imipd_core::addr::mailbox_as_cal_addr(&p.address));
            }
            proof.grants.push(Grant {
                address: imipd_core::addr::mailbox_as_cal_addr(&p.address),
                covers: p.covers.clone(),
            });
        }
        proof
    }

    /// For a message that holds no calendar: only which Authentication-Results headers claim
    /// our own authserv-id or another untrusted one (RFC 8601 §5), with no signature checked.
    pub fn forged_results(&self, parsed: &Parsed<'_>) -> Proof {
        Proof {
            remove_results: self.auth.forged_results(parsed),
            ..Default::default()
        }
    }

    /// [`Prover::forged_results`] from the raw header section, for a message told apart as
    /// ordinary without a parse (whose header section every reader splits the same way).
    pub fn forged_results_in(&self, raw: &[u8]) -> Proof {
        Proof {
            remove_results: self
                .auth
                .judge_results(&header_values(raw, "Authentication-Results")),
            ..Default::default()
        }
    }

    /// [`Prover::prove`] from synchronous code: on a blocking thread of a tokio runtime (the
    /// daemon's doors), or outside any runtime (the CLI).
    pub fn prove_blocking(&self, parsed: &Parsed<'_>, facts: &Facts) -> Proof {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle.block_on(self.prove(parsed, facts)),
            Err(_) => match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(self.prove(parsed, facts)),
                Err(e) => Proof {
                    results: format!(
                        "{}; x-imipd-sender=temperror reason={}",
                        self.authserv_id,
                        imipd_core::sanitize::quoted(&e.to_string())
                    ),
                    ..Default::default()
                },
            },
        }
    }
}

/// For an opaque S/MIME message, the outer headers (From, To, Message-ID, ...) around the
/// verified inner entity, so that extract sees one ordinary message. None for other messages
/// (a detached signature leaves the calendar readable where it is).
pub fn splice_opaque(outer: &[u8], inner: &[u8]) -> Option<Vec<u8>> {
    let ct = header_values(outer, "Content-Type")
        .into_iter()
        .next()?
        .to_ascii_lowercase();
    let ct = ct.trim();
    if !(ct.starts_with("application/pkcs7-mime") || ct.starts_with("application/x-pkcs7-mime")) {
        return None;
    }
    let mut out = Vec::with_capacity(outer.len() + inner.len());
    // Only the outer headers extraction reads; nothing unsigned that could be taken as content.
    for (name, value) in header_fields(outer) {
        let n = name.to_ascii_lowercase();
        if !matches!(
            n.as_str(),
            "from" | "to" | "cc" | "date" | "message-id" | "subject"
        ) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        out.extend_from_slice(value.strip_suffix(b"\r").unwrap_or(value));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"MIME-Version: 1.0\r\n");
    out.extend_from_slice(inner);
    Some(out)
}

/// The single From address of a message, normalized.
pub fn from_address(raw: &[u8]) -> Option<String> {
    let (raw, _) = crate::message::normalize_line_ends(raw);
    let msg = mail_parser::MessageParser::default().parse_headers(raw.as_ref())?;
    let from = msg.from()?;
    if from.iter().count() != 1 {
        return None;
    }
    from.first()?
        .address()
        .map(imipd_core::addr::mailbox_as_cal_addr)
}

/// Values of the Authentication-Results headers, in order.
pub fn auth_results_headers(raw: &[u8]) -> Vec<String> {
    header_values(raw, "Authentication-Results")
}

pub use imipd_core::headers::{fields as header_fields, values as header_values};

/// Rewrites a message: removes the listed occurrences (0-based) of header `name` and puts
/// `prepend` headers on top.
pub fn rewrite_headers(
    raw: &[u8],
    name: &str,
    remove: &[usize],
    prepend: &[(String, String)],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 256);
    for (n, v) in prepend {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    let mut i = 0;
    let mut occurrence = 0;
    while i < raw.len() {
        if raw[i] == b'\r' || raw[i] == b'\n' {
            break;
        }
        let start = i;
        let mut j = i;
        loop {
            while j < raw.len() && raw[j] != b'\n' {
                j += 1;
            }
            if j + 1 < raw.len() && (raw[j + 1] == b' ' || raw[j + 1] == b'\t') {
                j += 1;
                continue;
            }
            break;
        }
        let end = (j + 1).min(raw.len());
        let field = &raw[start..end];
        let fname = field
            .iter()
            .position(|b| *b == b':')
            .map(|c| String::from_utf8_lossy(&field[..c]).trim().to_string());
        let drop = match fname {
            Some(f) if f.eq_ignore_ascii_case(name) => {
                let d = remove.contains(&occurrence);
                occurrence += 1;
                d
            }
            _ => false,
        };
        if !drop {
            out.extend_from_slice(field);
        }
        i = end;
    }
    out.extend_from_slice(&raw[i.min(raw.len())..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_removes_only_listed_occurrences() {
        let raw = b"A: 1\r\nAuthentication-Results: x;\r\n  dkim=pass\r\nAuthentication-Results: y; none\r\nB: 2\r\n\r\nbody\r\n";
        let out = rewrite_headers(
            raw,
            "authentication-results",
            &[0],
            &[("X-New".into(), "v".into())],
        );
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.starts_with(
                "X-New: v\r\nA: 1\r\nAuthentication-Results: y; none\r\nB: 2\r\n\r\nbody"
            ),
            "{s}"
        );
        assert_eq!(auth_results_headers(raw).len(), 2);
    }
}
