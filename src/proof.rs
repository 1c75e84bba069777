//! Sender proof as the front doors use it: which addresses a message is proven to come from,
//! the Authentication-Results header to stamp, and which forged A-R headers to remove.

use crate::config::Config;
use std::net::IpAddr;

/// What the transport knows about a message.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    pub client_ip: Option<IpAddr>,
    pub auth_authen: Option<String>,
}

#[derive(Debug, Default, Clone)]
pub struct Proof {
    pub from: Option<String>,
    /// Proven addresses, normalized.
    pub proven: Vec<String>,
    /// Authentication-Results header value (RFC 8601), authserv-id first.
    pub results: String,
    /// 0-based indexes among the message's Authentication-Results headers to remove.
    pub remove_results: Vec<usize>,
    /// DKIM l=: proof covers only calendars found in this prefix of the message.
    pub signed_prefix: Option<Vec<u8>>,
    /// A verified signed entity (opaque S/MIME) to extract the calendar from.
    pub inner: Option<Vec<u8>>,
}

/// The proof checks configured for this daemon.
pub struct Prover {
    authserv_id: String,
    trust_submission: bool,
    trusted_relays: Vec<IpAddr>,
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Prover {
    pub fn new(cfg: &Config) -> Result<Prover, String> {
        Ok(Prover {
            authserv_id: cfg.authserv_id.clone().unwrap_or_else(hostname),
            trust_submission: cfg.policy.trust_authenticated_submission,
            trusted_relays: cfg
                .policy
                .trusted_relays
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
        })
    }

    pub fn authserv_id(&self) -> &str {
        &self.authserv_id
    }

    pub async fn prove(&self, raw: &[u8], facts: &Facts) -> Proof {
        let ex_from = from_address(raw);
        let mut proof = Proof {
            from: ex_from.clone(),
            ..Default::default()
        };
        let mut results = vec!["dkim=none".to_string()];
        if let Some(from) = &ex_from {
            if self.trust_submission && facts.auth_authen.is_some() {
                proof.proven.push(from.clone());
                results.push(format!(
                    "auth=pass smtp.auth={}",
                    facts.auth_authen.as_deref().unwrap_or("")
                ));
            } else if facts
                .client_ip
                .is_some_and(|ip| self.trusted_relays.contains(&ip))
            {
                proof.proven.push(from.clone());
            }
        }
        // RFC 8601 5: A-R headers claiming our id come from outside; remove them.
        for (i, v) in auth_results_headers(raw).iter().enumerate() {
            let id = v.split(';').next().unwrap_or("").trim();
            let id = id.split_whitespace().next().unwrap_or("");
            if id.eq_ignore_ascii_case(&self.authserv_id) {
                proof.remove_results.push(i);
            }
        }
        proof.results = format!("{}; {}", self.authserv_id, results.join("; "));
        proof
    }
}

/// The single From address of a message, normalized.
pub fn from_address(raw: &[u8]) -> Option<String> {
    let msg = mail_parser::MessageParser::default().parse_headers(raw)?;
    let from = msg.from()?;
    if from.iter().count() != 1 {
        return None;
    }
    from.first()?.address().map(crate::ical::norm_addr)
}

/// Values of the Authentication-Results headers, in order.
pub fn auth_results_headers(raw: &[u8]) -> Vec<String> {
    header_values(raw, "Authentication-Results")
}

/// Values of every header `name` in the header section (unfolded).
pub fn header_values(raw: &[u8], name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (n, v) in header_fields(raw) {
        if n.eq_ignore_ascii_case(name) {
            out.push(String::from_utf8_lossy(v).replace(['\r', '\n'], ""));
        }
    }
    out
}

/// Splits the header section into (name, raw value) fields.
pub fn header_fields(raw: &[u8]) -> Vec<(String, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\r' || raw[i] == b'\n' {
            break; // end of headers
        }
        let start = i;
        // find end of field: a line end not followed by WSP
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
        let field = &raw[start..j.min(raw.len())];
        if let Some(colon) = field.iter().position(|b| *b == b':') {
            let name = String::from_utf8_lossy(&field[..colon]).trim().to_string();
            out.push((name, &field[colon + 1..]));
        }
        i = j + 1;
    }
    out
}

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
