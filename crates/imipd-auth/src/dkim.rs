//! DKIM (RFC 6376) through mail-auth: one outcome per signature.
//!
//! Two things are done here rather than in mail-auth: a signature whose `h=` does not cover From
//! is not a pass (RFC 6376 §6.1.1 requires From to be signed), and `l=` counts octets of the
//! *canonicalized* body (RFC 6376 §3.5), which is what dkimpy and OpenDKIM hash; mail-auth
//! truncates the raw body instead, so a signature with `l=` over a body with later additions would
//! never verify. The body prefix is canonicalized and hashed here, and the raw offset where the
//! signed prefix ends is computed from the same walk, so "what the signature covers" is exact.

use mail_auth::common::crypto::HashAlgorithm;
use mail_auth::common::verify::VerifySignature;
use mail_auth::dkim::{Canonicalization, DkimError};
use mail_auth::{AuthenticatedMessage, DkimResult, DnsError, Error, Parameters};
use sha2::{Digest, Sha256};

use super::dns::Dns;
use super::results::{quote, value};

/// What one DKIM signature proved.
pub(crate) struct DkimOutcome {
    /// `pass`, `fail`, `neutral`, `temperror`, `permerror`, or `none` without any signature.
    result: &'static str,
    reason: Option<String>,
    /// The signing domain `d=`, lowercase.
    pub(crate) domain: String,
    pub(crate) selector: String,
    /// The first characters of `b=` to tell signatures apart (RFC 6008).
    short_b: String,
    /// Set when `l=` leaves part of the body unsigned: the signed prefix ends at this offset
    /// of the raw message (whole lines only).
    pub(crate) signed_until: Option<usize>,
}

impl DkimOutcome {
    pub(crate) fn passed(&self) -> bool {
        self.result == "pass"
    }

    /// The `dkim=` resinfo item for `Authentication-Results`.
    pub(crate) fn resinfo(&self) -> String {
        let mut item = format!("dkim={}", self.result);
        if let Some(reason) = &self.reason {
            item.push_str(&format!(" reason={}", quote(reason)));
        }
        if !self.domain.is_empty() {
            item.push_str(&format!(" header.d={}", value(&self.domain)));
        }
        if !self.selector.is_empty() {
            item.push_str(&format!(" header.s={}", value(&self.selector)));
        }
        if !self.short_b.is_empty() {
            item.push_str(&format!(" header.b={}", value(&self.short_b)));
        }
        item
    }

    fn none() -> Self {
        DkimOutcome {
            result: "none",
            reason: None,
            domain: String::new(),
            selector: String::new(),
            short_b: String::new(),
            signed_until: None,
        }
    }
}

/// Verifies every DKIM signature of `raw`; all DNS work is bounded by the resolver's timeout.
/// `body_offset` is where the MIME tree's body starts: a different view of it is an error.
pub(crate) async fn verify(dns: &Dns, raw: &[u8], body_offset: usize) -> Vec<DkimOutcome> {
    // Non-strict parsing accepts `l=`; the unsigned tail is reported through `signed_until`.
    let Some(mut message) = AuthenticatedMessage::parse_with_opts(raw, None, false) else {
        return vec![DkimOutcome {
            reason: Some("unparseable message".to_string()),
            result: "permerror",
            ..DkimOutcome::none()
        }];
    };
    if message.dkim_headers.is_empty() && !message.has_dkim_errors {
        return vec![DkimOutcome::none()];
    }
    if message.body_offset as usize != body_offset && !message.dkim_headers.is_empty() {
        return vec![DkimOutcome {
            reason: Some("header section ends where MIME readers disagree".to_string()),
            result: "permerror",
            ..DkimOutcome::none()
        }];
    }
    let body = raw.get(message.body_offset as usize..).unwrap_or_default();
    // Body hashes with l= over the canonicalized body, as the signers computed them.
    let mut prefixes: Vec<(Canonicalization, u64, Option<usize>)> = Vec::new();
    for (cb, ha, l, bh) in message.body_hashes.iter_mut() {
        if *l == 0 {
            continue;
        }
        let canonical = CanonicalBody::new(body, *cb);
        let until = canonical.raw_end_of_prefix(*l as usize);
        match (ha, canonical.prefix_hash(*l as usize)) {
            (HashAlgorithm::Sha256, Some(hash)) => *bh = hash,
            // Shorter than l (or SHA-1 with l=, which nothing signs today): never a pass.
            _ => bh.clear(),
        }
        prefixes.push((*cb, *l, until.map(|u| u + message.body_offset as usize)));
    }
    let params = Parameters::new(&message).with_txt_cache(&dns.cache);
    // Lookups run one signature after another: bound the whole by one budget per signature.
    let signatures = message.dkim_headers.len().max(1) as u32;
    let budget = dns.timeout.saturating_mul(signatures);
    let outputs = match tokio::time::timeout(budget, dns.resolver.verify_dkim(params)).await {
        Ok(outputs) => outputs,
        Err(_) => {
            return vec![DkimOutcome {
                reason: Some("DNS lookup timed out".to_string()),
                result: "temperror",
                ..DkimOutcome::none()
            }]
        }
    };
    for output in &outputs {
        // A key that is not published: remembered as such (mail-auth caches only what it
        // found), or every message signed with that selector would cost a lookup again.
        // The name is mail-auth's own (`domain_key`), the one its lookup asked for.
        if let (DkimResult::PermError(err @ Error::Dns(DnsError::RecordNotFound(_))), Some(sig)) =
            (output.result(), output.signature())
        {
            dns.cache.remember_missing(&sig.domain_key(), err.clone());
        }
    }
    outputs
        .iter()
        .map(|output| {
            let (result, reason) = classify(output.result());
            let mut outcome = DkimOutcome {
                result,
                reason,
                ..DkimOutcome::none()
            };
            if let Some(signature) = output.signature() {
                outcome.domain = signature.d.to_lowercase();
                outcome.selector = signature.s.clone();
                outcome.short_b = short_b(&signature.b);
                if signature.l > 0 {
                    outcome.signed_until = prefixes
                        .iter()
                        .find(|(cb, l, _)| *cb == signature.cb && *l == signature.l)
                        .and_then(|(_, _, until)| *until);
                }
                // RFC 6376 §6.1.1: a signature that does not cover From proves nothing.
                if outcome.passed() && !signature.h.iter().any(|h| h.eq_ignore_ascii_case("from")) {
                    outcome.result = "policy";
                    outcome.reason = Some("From not signed".to_string());
                }
                // The MIME framing must be signed too: an unsigned Content-Type or
                // Content-Transfer-Encoding would give the signed bytes another meaning.
                for name in ["content-type", "content-transfer-encoding"] {
                    let present = message
                        .headers
                        .iter()
                        .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                        .count();
                    let signed = signature
                        .h
                        .iter()
                        .filter(|h| h.eq_ignore_ascii_case(name))
                        .count();
                    if outcome.passed() && signed < present {
                        outcome.result = "policy";
                        outcome.reason = Some(format!("{name} not signed"));
                    }
                }
            }
            outcome
        })
        .collect()
}

/// A body canonicalized line by line (RFC 6376 §3.4.3 simple, §3.4.4 relaxed), remembering where
/// each canonical line ends in the raw body. LF alone ends a line as CRLF does (a message read
/// from a file); bare CR never reaches here (sender proof refuses such messages as ambiguous).
struct CanonicalBody {
    /// (raw offset just past the line's LF, canonical text of the line including CRLF)
    lines: Vec<(usize, Vec<u8>)>,
}

impl CanonicalBody {
    fn new(body: &[u8], cb: Canonicalization) -> Self {
        let mut lines = Vec::new();
        let mut start = 0;
        while start < body.len() {
            let end = body[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(body.len(), |i| start + i + 1);
            let mut text = &body[start..end];
            text = text.strip_suffix(b"\n").unwrap_or(text);
            text = text.strip_suffix(b"\r").unwrap_or(text);
            let mut line = Vec::with_capacity(text.len() + 2);
            match cb {
                Canonicalization::Simple => line.extend_from_slice(text),
                Canonicalization::Relaxed => {
                    let mut in_wsp = false;
                    for &b in text {
                        if b == b' ' || b == b'\t' {
                            in_wsp = true;
                        } else {
                            if in_wsp {
                                line.push(b' ');
                            }
                            in_wsp = false;
                            line.push(b);
                        }
                    }
                }
            }
            line.extend_from_slice(b"\r\n");
            lines.push((end, line));
            start = end;
        }
        // Trailing empty lines are not part of the canonical body.
        while lines.last().is_some_and(|(_, l)| l == b"\r\n") {
            lines.pop();
        }
        if lines.is_empty() && cb == Canonicalization::Simple {
            lines.push((0, b"\r\n".to_vec()));
        }
        CanonicalBody { lines }
    }

    /// SHA-256 of the first `l` canonical octets; `None` when the body is shorter than that.
    fn prefix_hash(&self, l: usize) -> Option<Vec<u8>> {
        let mut hasher = Sha256::new();
        let mut left = l;
        for (_, line) in &self.lines {
            let take = left.min(line.len());
            hasher.update(&line[..take]);
            left -= take;
            if left == 0 {
                break;
            }
        }
        (left == 0).then(|| hasher.finalize().to_vec())
    }

    /// Raw body offset where the last canonical line lying wholly inside the first `l` octets
    /// ends; `None` when the prefix covers the whole canonical body.
    fn raw_end_of_prefix(&self, l: usize) -> Option<usize> {
        let mut total = 0;
        let mut end = 0;
        for (raw_end, line) in &self.lines {
            if total + line.len() > l {
                return Some(end);
            }
            total += line.len();
            end = *raw_end;
        }
        None
    }
}

/// Maps mail-auth's result to an RFC 8601 result and a reason.
fn classify(result: &DkimResult) -> (&'static str, Option<String>) {
    match result {
        DkimResult::Pass => ("pass", None),
        DkimResult::None => ("none", None),
        // A mismatched body hash or an expired x= is a failed check, whatever mail-auth calls it.
        DkimResult::Neutral(
            err @ Error::Dkim(DkimError::FailedBodyHashMatch | DkimError::SignatureExpired),
        ) => ("fail", Some(reason(err))),
        DkimResult::Neutral(err) => ("neutral", Some(reason(err))),
        DkimResult::Fail(err) => ("fail", Some(reason(err))),
        DkimResult::PermError(Error::Dkim(DkimError::RevokedPublicKey)) => {
            ("fail", Some("key revoked".to_string()))
        }
        DkimResult::PermError(err) => ("permerror", Some(reason(err))),
        DkimResult::TempError(err) => ("temperror", Some(reason(err))),
    }
}

fn reason(err: &Error) -> String {
    match err {
        Error::Dkim(DkimError::FailedBodyHashMatch) => "body hash mismatch".to_string(),
        Error::Dkim(DkimError::SignatureExpired) => "signature expired".to_string(),
        Error::Dkim(DkimError::RevokedPublicKey) => "key revoked".to_string(),
        Error::Crypto(_) => "signature verification failed".to_string(),
        other => other.to_string(),
    }
}

/// The first 8 characters of the base64 signature (RFC 6008 `header.b`).
fn short_b(b: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in b.chunks(3).take(2) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &byte)| {
            acc | (u32::from(byte) << (16 - 8 * i))
        });
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_prefix_maps_to_whole_raw_lines() {
        let body = b"a  b \r\n\r\nc\r\n\r\n\r\n";
        let relaxed = CanonicalBody::new(body, Canonicalization::Relaxed);
        // "a b\r\n" "\r\n" "c\r\n": trailing empty lines dropped.
        assert_eq!(relaxed.lines.len(), 3);
        assert_eq!(relaxed.raw_end_of_prefix(5), Some(7));
        assert_eq!(relaxed.raw_end_of_prefix(7), Some(9));
        assert_eq!(relaxed.raw_end_of_prefix(8), Some(9));
        assert_eq!(relaxed.raw_end_of_prefix(10), None);
        let full: Vec<u8> = relaxed.lines.iter().flat_map(|(_, l)| l.clone()).collect();
        assert_eq!(full, b"a b\r\n\r\nc\r\n");
        assert_eq!(
            relaxed.prefix_hash(5),
            Some(Sha256::digest(b"a b\r\n").to_vec())
        );
        assert_eq!(relaxed.prefix_hash(11), None);
        let simple = CanonicalBody::new(b"x\n\n", Canonicalization::Simple);
        assert_eq!(simple.lines.len(), 1);
        assert_eq!(
            CanonicalBody::new(b"", Canonicalization::Simple)
                .lines
                .len(),
            1
        );
        assert!(CanonicalBody::new(b"", Canonicalization::Relaxed)
            .lines
            .is_empty());
    }

    #[test]
    fn short_b_is_base64_prefix() {
        // "hello!" is "aGVsbG8h" in base64.
        assert_eq!(short_b(b"hello!world"), "aGVsbG8h");
        assert_eq!(short_b(b"h"), "aA");
    }
}
