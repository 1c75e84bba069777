//! `Authentication-Results` (RFC 8601): reading upstream headers and writing ours.

use super::dmarc;

/// One parsed `Authentication-Results` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthResults {
    /// The authserv-id, as written.
    pub authserv_id: String,
    /// The resinfo items; empty for `none`.
    pub results: Vec<ResInfo>,
}

/// One resinfo item: `method=result reason=... ptype.property=value ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResInfo {
    /// Lowercase method, without a version.
    pub method: String,
    /// Lowercase result.
    pub result: String,
    pub reason: Option<String>,
    /// `(ptype.property lowercase, value unquoted)` in order.
    pub properties: Vec<(String, String)>,
}

impl ResInfo {
    /// The first value of a property such as `header.d`.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses an unfolded `Authentication-Results` header value; `None` when it has no authserv-id
/// or a resinfo item without `method=result`.
pub fn parse_auth_results(value: &str) -> Option<AuthResults> {
    let text = strip_comments(value);
    let mut segments = split_outside_quotes(&text, b';').into_iter();
    let head = tokens(segments.next()?);
    let authserv_id = match head.first()? {
        Token::Word(w) | Token::Quoted(w) => w.clone(),
        Token::Equals => return None,
    };
    if authserv_id.is_empty() {
        return None;
    }
    let mut results = Vec::new();
    for segment in segments {
        let toks = tokens(segment);
        if toks.is_empty() {
            continue;
        }
        if let [Token::Word(w)] = toks.as_slice() {
            if w.eq_ignore_ascii_case("none") {
                continue;
            }
        }
        results.push(resinfo(&toks)?);
    }
    Some(AuthResults {
        authserv_id,
        results,
    })
}

fn resinfo(toks: &[Token]) -> Option<ResInfo> {
    let mut pairs = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match (toks.get(i), toks.get(i + 1), toks.get(i + 2)) {
            (
                Some(Token::Word(key)),
                Some(Token::Equals),
                Some(Token::Word(v) | Token::Quoted(v)),
            ) => {
                pairs.push((key.to_ascii_lowercase(), v.clone()));
                i += 3;
            }
            _ => return None,
        }
    }
    let mut pairs = pairs.into_iter();
    let (method, result) = pairs.next()?;
    let method = method.split('/').next().unwrap_or_default().to_string();
    let mut info = ResInfo {
        method,
        result: result.to_ascii_lowercase(),
        reason: None,
        properties: Vec::new(),
    };
    for (key, v) in pairs {
        if key == "reason" {
            info.reason = Some(v);
        } else {
            info.properties.push((key, v));
        }
    }
    Some(info)
}

/// What to do with the message's existing `Authentication-Results` headers.
pub(crate) struct Upstream {
    /// Indexes to remove: ours (forged) or from verifiers we do not trust.
    pub(crate) remove: Vec<usize>,
    /// Parsed headers of trusted verifiers.
    pub(crate) trusted: Vec<AuthResults>,
}

/// Sorts `headers` (unfolded values, in order) into trusted ones and ones to remove.
pub(crate) fn judge_upstream(headers: &[String], ours: &str, trusted_ids: &[String]) -> Upstream {
    let mut upstream = Upstream {
        remove: Vec::new(),
        trusted: Vec::new(),
    };
    let mut seen_trusted = false;
    for (index, header) in headers.iter().enumerate() {
        // Only the topmost header of a trusted upstream is its own (RFC 8601 §5): one lower
        // down was there before the upstream saw the message, so it may be the sender's. The
        // authserv-id alone decides which header is topmost: one the parser cannot read still
        // ends the search, so an unreadable upstream header never lets a lower one count.
        let id = header
            .split(';')
            .next()
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or("");
        let trusted_id = !id.eq_ignore_ascii_case(ours)
            && trusted_ids.iter().any(|t| t.eq_ignore_ascii_case(id));
        if trusted_id && seen_trusted {
            upstream.remove.push(index);
            continue;
        }
        seen_trusted |= trusted_id;
        match parse_auth_results(header) {
            Some(parsed) if trusted_id && parsed.authserv_id.eq_ignore_ascii_case(id) => {
                upstream.trusted.push(parsed)
            }
            // Unparseable headers cannot be attributed, so nobody downstream should trust them.
            _ => upstream.remove.push(index),
        }
    }
    upstream
}

/// The authserv-id of a trusted header proving `from_domain`: an aligned `dkim=pass` or a
/// `dmarc=pass` for that domain.
pub(crate) fn trusted_proof(
    trusted: &[AuthResults],
    from_domain: &str,
    strict: bool,
) -> Option<String> {
    trusted
        .iter()
        .find(|ar| {
            ar.results.iter().any(|r| {
                r.result == "pass"
                    && match r.method.as_str() {
                        "dkim" => r
                            .property("header.d")
                            .is_some_and(|d| dmarc::aligned(d, from_domain, strict)),
                        "dmarc" => r.property("header.from").is_some_and(|f| {
                            f.trim_end_matches('.').eq_ignore_ascii_case(from_domain)
                        }),
                        _ => false,
                    }
            })
        })
        .map(|ar| ar.authserv_id.clone())
}

/// Our header value: `<authserv-id>; item; item`, or `<authserv-id>; none`.
pub(crate) fn header_value(authserv_id: &str, results: &[String]) -> String {
    let value = if results.is_empty() {
        format!("{}; none", value(authserv_id))
    } else {
        format!("{}; {}", value(authserv_id), results.join("; "))
    };
    imipd_core::sanitize::clean(&value)
}

/// A value as an RFC 2045 token when possible, else a quoted string.
/// The resinfo of a signature check: `METHOD=RESULT [reason="..."] [METHOD.signer=ADDR]`
/// (RFC 8601 2.7; `smime` per RFC 7281, `pgp` alike).
pub(crate) fn signature_resinfo(
    method: &str,
    result: &str,
    reason: Option<&str>,
    signer: Option<&str>,
) -> String {
    let mut item = format!("{method}={result}");
    if let Some(reason) = reason {
        item.push_str(&format!(" reason={}", quote(reason)));
    }
    if let Some(signer) = signer {
        item.push_str(&format!(" {method}.signer={}", value(signer)));
    }
    item
}

pub(crate) fn quote(text: &str) -> String {
    let is_token = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b));
    if is_token {
        text.to_string()
    } else {
        quoted(text)
    }
}

/// A property value: domain names and addresses stay bare (RFC 8601 `pvalue`).
pub(crate) fn value(text: &str) -> String {
    let is_plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.@:".contains(&b));
    if is_plain {
        text.to_string()
    } else {
        quoted(text)
    }
}

fn quoted(text: &str) -> String {
    imipd_core::sanitize::quoted(text)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Equals,
}

/// Replaces (possibly nested) comments with a space, leaving quoted strings alone.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut depth = 0usize;
    let mut in_quote = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_quote || depth > 0 => {
                let next = chars.next();
                if depth == 0 {
                    out.push('\\');
                    out.extend(next);
                }
            }
            '"' if depth == 0 => {
                in_quote = !in_quote;
                out.push(c);
            }
            '(' if !in_quote => depth += 1,
            ')' if !in_quote && depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    out.push(' ');
                }
            }
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

fn split_outside_quotes(text: &str, separator: u8) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut in_quote = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, b) in text.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if in_quote => escaped = true,
            b'"' => in_quote = !in_quote,
            b if b == separator && !in_quote => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn tokens(text: &str) -> Vec<Token> {
    let mut toks = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '=' {
            chars.next();
            toks.push(Token::Equals);
        } else if c == '"' {
            chars.next();
            let mut s = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => s.extend(chars.next()),
                    '"' => break,
                    c => s.push(c),
                }
            }
            toks.push(Token::Quoted(s));
        } else {
            let mut s = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '=' || c == '"' {
                    break;
                }
                s.push(c);
                chars.next();
            }
            toks.push(Token::Word(s));
        }
    }
    toks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8601 Appendix B.4-style header with comments, a version and several results.
    #[test]
    fn parses_results_with_comments_and_versions() {
        let ar = parse_auth_results(
            "example.com 1; spf=pass smtp.mailfrom=example.net (sender ok); \
             dkim/1=pass (good signature) header.d=Example.NET header.s=\"sel 1\"; \
             dmarc=fail reason=\"not aligned\" header.from=example.net",
        )
        .expect("parses");
        assert_eq!(ar.authserv_id, "example.com");
        assert_eq!(ar.results.len(), 3);
        assert_eq!(ar.results[1].method, "dkim");
        assert_eq!(ar.results[1].result, "pass");
        assert_eq!(ar.results[1].property("header.d"), Some("Example.NET"));
        assert_eq!(ar.results[1].property("header.s"), Some("sel 1"));
        assert_eq!(ar.results[2].reason.as_deref(), Some("not aligned"));
    }

    #[test]
    fn parses_none_and_rejects_garbage() {
        let ar = parse_auth_results("mx.example.org; none").expect("parses");
        assert!(ar.results.is_empty());
        assert!(parse_auth_results("").is_none());
        assert!(parse_auth_results("mx.example.org; dkim").is_none());
        assert!(parse_auth_results("mx.example.org; dkim=").is_none());
    }

    #[test]
    fn semicolons_in_quotes_and_comments_do_not_split() {
        let ar = parse_auth_results("mx (a; b); dkim=pass reason=\"x; y\" header.d=example.com")
            .expect("parses");
        assert_eq!(ar.results.len(), 1);
        assert_eq!(ar.results[0].reason.as_deref(), Some("x; y"));
    }

    #[test]
    fn untrusted_and_own_headers_are_removed() {
        let headers = vec![
            "mx.ours.example; dkim=pass header.d=example.com".to_string(),
            "relay.trusted.example; dkim=pass header.d=example.com".to_string(),
            "evil.example; dkim=pass header.d=example.com".to_string(),
            "garbage without semicolon=".to_string(),
        ];
        let upstream = judge_upstream(
            &headers,
            "mx.ours.example",
            &[
                "relay.trusted.example".to_string(),
                "mx.ours.example".to_string(),
            ],
        );
        assert_eq!(upstream.remove, vec![0, 2, 3]);
        assert_eq!(upstream.trusted.len(), 1);
        assert_eq!(
            trusted_proof(&upstream.trusted, "example.com", false).as_deref(),
            Some("relay.trusted.example")
        );
        assert_eq!(trusted_proof(&upstream.trusted, "example.org", false), None);
    }

    #[test]
    fn trusted_dmarc_pass_proves_its_domain_only() {
        let trusted =
            vec![parse_auth_results("up; dmarc=pass header.from=example.com").expect("parses")];
        assert!(trusted_proof(&trusted, "example.com", true).is_some());
        assert!(trusted_proof(&trusted, "sub.example.com", false).is_none());
        let failed =
            vec![parse_auth_results("up; dkim=fail header.d=example.com").expect("parses")];
        assert!(trusted_proof(&failed, "example.com", false).is_none());
    }

    #[test]
    fn header_value_quotes_when_needed() {
        assert_eq!(header_value("mx.example.org", &[]), "mx.example.org; none");
        assert_eq!(
            header_value("mx", &["dkim=pass".into(), "smime=none".into()]),
            "mx; dkim=pass; smime=none"
        );
        assert_eq!(quote("a b\"c"), "\"a b\\\"c\"");
        assert_eq!(value("alice@example.com"), "alice@example.com");
    }
}
