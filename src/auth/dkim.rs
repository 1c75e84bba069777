//! DKIM (RFC 6376) through mail-auth: one outcome per signature.

use mail_auth::dkim::DkimError;
use mail_auth::{AuthenticatedMessage, DkimResult, Error, Parameters};

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
    /// Set when `l=` leaves part of the body unsigned.
    pub(crate) body_limit: Option<usize>,
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
            body_limit: None,
        }
    }
}

/// Verifies every DKIM signature of `raw`; all DNS work is bounded by the resolver's timeout.
pub(crate) async fn verify(dns: &Dns, raw: &[u8]) -> Vec<DkimOutcome> {
    // Non-strict parsing accepts `l=`; the unsigned tail is reported through `body_limit`.
    let Some(message) = AuthenticatedMessage::parse_with_opts(raw, None, false) else {
        return vec![DkimOutcome {
            reason: Some("unparseable message".to_string()),
            result: "permerror",
            ..DkimOutcome::none()
        }];
    };
    if message.dkim_headers.is_empty() && !message.has_dkim_errors {
        return vec![DkimOutcome::none()];
    }
    let body_len = raw.len().saturating_sub(message.body_offset as usize);
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
                if signature.l > 0 && (signature.l as usize) < body_len {
                    outcome.body_limit = Some(signature.l as usize);
                }
            }
            outcome
        })
        .collect()
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
    fn short_b_is_base64_prefix() {
        // "hello!" is "aGVsbG8h" in base64.
        assert_eq!(short_b(b"hello!world"), "aGVsbG8h");
        assert_eq!(short_b(b"h"), "aA");
    }
}
