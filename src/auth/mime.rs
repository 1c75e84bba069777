//! The few MIME facts sender proof needs: the From address, the top-level signed structure,
//! and the exact bytes a signature covers.

use mail_parser::{Address, ContentType, HeaderName, HeaderValue, Message, MessageParser};

/// A message as far as sender proof looks at it: headers and the top-level entity.
pub(crate) struct TopLevel<'a> {
    raw: &'a [u8],
    message: Message<'a>,
}

/// A top-level S/MIME signature.
pub(crate) enum SmimeSigned {
    /// `multipart/signed`: the first part (CRLF canonical) and the DER signature.
    Detached {
        content: Vec<u8>,
        signature: Vec<u8>,
    },
    /// `application/pkcs7-mime; smime-type=signed-data`: the DER signed-data.
    Opaque { der: Vec<u8> },
}

/// A top-level PGP/MIME signature (RFC 3156 §5).
pub(crate) struct PgpSigned {
    /// The first part, CRLF canonical: exactly what the signature covers.
    pub(crate) content: Vec<u8>,
    /// The second part's decoded body (usually ASCII armored).
    pub(crate) signature: Vec<u8>,
}

impl<'a> TopLevel<'a> {
    /// Parses the headers; `None` when `raw` has no header section at all.
    pub(crate) fn parse(raw: &'a [u8]) -> Option<Self> {
        let message = MessageParser::default().parse(raw)?;
        if message.parts.first()?.headers.is_empty() {
            return None;
        }
        Some(TopLevel { raw, message })
    }

    pub(crate) fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The unfolded values of every top-level `Authentication-Results` header, in order.
    pub(crate) fn auth_results_headers(&self) -> Vec<String> {
        self.root_headers()
            .iter()
            .filter(|h| h.name == HeaderName::AuthenticationResults)
            .map(|h| {
                let value = self
                    .raw
                    .get(h.offset_start as usize..h.offset_end as usize)
                    .unwrap_or_default();
                unfold(&String::from_utf8_lossy(value))
            })
            .collect()
    }

    /// The single RFC 5322.From address, lowercase; otherwise why there is none.
    pub(crate) fn single_from(&self) -> Result<String, String> {
        let froms: Vec<_> = self
            .root_headers()
            .iter()
            .filter(|h| h.name == HeaderName::From)
            .collect();
        let header = match froms.as_slice() {
            [] => return Err("no From header".to_string()),
            [one] => one,
            _ => return Err("several From headers".to_string()),
        };
        let addresses: Vec<&str> = match &header.value {
            HeaderValue::Address(Address::List(list)) => {
                list.iter().filter_map(|a| a.address.as_deref()).collect()
            }
            HeaderValue::Address(Address::Group(groups)) => groups
                .iter()
                .flat_map(|g| g.addresses.iter())
                .filter_map(|a| a.address.as_deref())
                .collect(),
            _ => Vec::new(),
        };
        match addresses.as_slice() {
            [] => Err("unparseable From header".to_string()),
            [one] => {
                let address = one.trim().to_lowercase();
                match domain_of(&address) {
                    Some(_) if !address.starts_with('@') => Ok(address),
                    _ => Err("From address without a domain".to_string()),
                }
            }
            _ => Err("several From addresses".to_string()),
        }
    }

    /// The top-level S/MIME signature, if the message is S/MIME signed.
    pub(crate) fn smime_signed(&self) -> Option<SmimeSigned> {
        let ct = self.content_type()?;
        let (ctype, subtype) = (ct.ctype(), ct.subtype().unwrap_or_default());
        if ctype.eq_ignore_ascii_case("multipart") && subtype.eq_ignore_ascii_case("signed") {
            let protocol = param(ct, "protocol")?.to_ascii_lowercase();
            if protocol != "application/pkcs7-signature"
                && protocol != "application/x-pkcs7-signature"
            {
                return None;
            }
            let (content, signature) = self.signed_parts(ct)?;
            return Some(SmimeSigned::Detached { content, signature });
        }
        if ctype.eq_ignore_ascii_case("application")
            && (subtype.eq_ignore_ascii_case("pkcs7-mime")
                || subtype.eq_ignore_ascii_case("x-pkcs7-mime"))
        {
            // Without smime-type the content may still be signed-data; openssl decides.
            let smime_type = param(ct, "smime-type").unwrap_or("signed-data");
            if !smime_type.eq_ignore_ascii_case("signed-data") {
                return None;
            }
            let der = self.message.parts.first()?.contents().to_vec();
            return Some(SmimeSigned::Opaque { der });
        }
        None
    }

    /// The top-level PGP/MIME signature, if the message is PGP/MIME signed.
    pub(crate) fn pgp_signed(&self) -> Option<PgpSigned> {
        let ct = self.content_type()?;
        if !ct.ctype().eq_ignore_ascii_case("multipart")
            || !ct
                .subtype()
                .unwrap_or_default()
                .eq_ignore_ascii_case("signed")
            || !param(ct, "protocol")?.eq_ignore_ascii_case("application/pgp-signature")
        {
            return None;
        }
        let (content, signature) = self.signed_parts(ct)?;
        Some(PgpSigned { content, signature })
    }

    fn root_headers(&self) -> &[mail_parser::Header<'a>] {
        self.message
            .parts
            .first()
            .map(|p| p.headers.as_slice())
            .unwrap_or_default()
    }

    fn content_type(&self) -> Option<&ContentType<'a>> {
        self.root_headers()
            .iter()
            .find(|h| h.name == HeaderName::ContentType)
            .and_then(|h| match &h.value {
                HeaderValue::ContentType(ct) => Some(ct),
                _ => None,
            })
    }

    /// The first part (CRLF canonical) and the decoded second part of a `multipart/signed`.
    fn signed_parts(&self, ct: &ContentType<'_>) -> Option<(Vec<u8>, Vec<u8>)> {
        let boundary = param(ct, "boundary")?;
        let offset = self.message.parts.first()?.raw_body_offset() as usize;
        let body = self.raw.get(offset..)?;
        let parts = split_multipart(body, boundary.as_bytes())?;
        let [content, signature, ..] = parts.as_slice() else {
            return None;
        };
        let signature = MessageParser::default().parse(*signature)?;
        let signature = signature.parts.first()?.contents().to_vec();
        Some((canonical_crlf(content), signature))
    }
}

/// A Content-Type parameter, by case-insensitive name.
fn param<'c>(ct: &'c ContentType<'_>, name: &str) -> Option<&'c str> {
    ct.attributes()?
        .iter()
        .find(|a| a.name.eq_ignore_ascii_case(name))
        .map(|a| a.value.as_ref())
}

/// The domain of an addr-spec, without a trailing dot.
pub(crate) fn domain_of(address: &str) -> Option<&str> {
    let (_, domain) = address.rsplit_once('@')?;
    let domain = domain.trim_end_matches('.');
    (!domain.is_empty()).then_some(domain)
}

/// Removes header folding: CRLF (or LF) followed by white space becomes that white space.
pub(crate) fn unfold(value: &str) -> String {
    value
        .replace("\r\n", "\n")
        .split('\n')
        .collect::<Vec<_>>()
        .join("")
        .trim()
        .to_string()
}

/// The body parts of a multipart body (RFC 2046 §5.1.1), each without the line break that
/// belongs to the following delimiter. `None` without a closing delimiter.
pub(crate) fn split_multipart<'b>(body: &'b [u8], boundary: &[u8]) -> Option<Vec<&'b [u8]>> {
    if boundary.is_empty() {
        return None;
    }
    let mut delimiter = b"--".to_vec();
    delimiter.extend_from_slice(boundary);
    let mut parts = Vec::new();
    let mut part_start: Option<usize> = None;
    let mut line_start = 0;
    while line_start < body.len() {
        let line_end = body[line_start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |i| line_start + i + 1);
        let line = &body[line_start..line_end];
        if let Some(rest) = line.strip_prefix(delimiter.as_slice()) {
            let is_close = rest.starts_with(b"--");
            let tail = if is_close { &rest[2..] } else { rest };
            // Only transport padding may follow the boundary on its line.
            if tail.iter().all(|b| b" \t\r\n".contains(b)) {
                if let Some(start) = part_start {
                    let mut end = line_start.max(start);
                    if end > start && body[end - 1] == b'\n' {
                        end -= 1;
                        if end > start && body[end - 1] == b'\r' {
                            end -= 1;
                        }
                    }
                    parts.push(&body[start..end]);
                }
                if is_close {
                    return Some(parts);
                }
                part_start = Some(line_end);
            }
        }
        line_start = line_end;
    }
    None
}

/// Line breaks as CRLF (RFC 5751 §3.1.1, RFC 3156 §5): what a signature covers.
pub(crate) fn canonical_crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 32);
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\r' if data.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_split_keeps_exact_part_bytes() {
        let body = b"preamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n\r\n--b1\r\nsig\r\n--b1--\r\n";
        let parts = split_multipart(body, b"b1").expect("closed multipart");
        assert_eq!(
            parts,
            vec![&b"Content-Type: text/plain\r\n\r\nhi\r\n"[..], &b"sig"[..]]
        );
    }

    #[test]
    fn multipart_split_ignores_longer_boundaries_and_needs_close() {
        let body = b"--b1\nx\n--b1x\ny\n--b1--\n";
        let parts = split_multipart(body, b"b1").expect("closed multipart");
        assert_eq!(parts, vec![&b"x\n--b1x\ny"[..]]);
        assert!(split_multipart(b"--b1\r\nx\r\n", b"b1").is_none());
    }

    #[test]
    fn canonical_crlf_fixes_bare_line_breaks() {
        assert_eq!(
            canonical_crlf(b"a\nb\r\nc\rd"),
            b"a\r\nb\r\nc\r\nd".to_vec()
        );
    }

    #[test]
    fn from_must_be_single() {
        let one = TopLevel::parse(b"From: Alice <Alice@Example.COM>\r\n\r\nx").expect("parses");
        assert_eq!(one.single_from().as_deref(), Ok("alice@example.com"));
        let two = TopLevel::parse(b"From: a@example.com, b@example.com\r\n\r\nx").expect("parses");
        assert!(two.single_from().is_err());
        let headers = TopLevel::parse(b"From: a@example.com\r\nFrom: b@example.com\r\n\r\nx")
            .expect("parses");
        assert!(headers.single_from().is_err());
        let none = TopLevel::parse(b"To: a@example.com\r\n\r\nx").expect("parses");
        assert!(none.single_from().is_err());
    }
}
