//! The few MIME facts sender proof needs: the From address, the top-level signed structure,
//! and the exact bytes a signature covers.

use crate::message::Parsed;
use mail_parser::{Address, ContentType, HeaderName, HeaderValue, Message, PartType};

/// A message as far as sender proof looks at it: headers and the top-level entity, read from
/// the one MIME tree of the message.
pub(crate) struct TopLevel<'p, 'a> {
    raw: &'a [u8],
    message: &'p Message<'a>,
}

/// A top-level S/MIME signature.
pub(crate) enum SmimeSigned {
    /// `multipart/signed`: the first part (CRLF canonical) and the DER signature.
    Detached {
        content: Vec<u8>,
        signature: Vec<u8>,
        /// The tree index of the signed entity.
        entity: usize,
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
    /// The tree index of the signed entity.
    pub(crate) entity: usize,
}

impl<'p, 'a> TopLevel<'p, 'a> {
    /// The top level of a parsed message; `None` when it has no header section at all.
    pub(crate) fn of(parsed: &'p Parsed<'a>) -> Option<Self> {
        let message = parsed.tree.as_ref()?;
        Some(TopLevel {
            raw: parsed.bytes,
            message,
        })
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
            let (content, signature, entity) = self.signed_parts()?;
            return Some(SmimeSigned::Detached {
                content,
                signature,
                entity,
            });
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
        let (content, signature, entity) = self.signed_parts()?;
        Some(PgpSigned {
            content,
            signature,
            entity,
        })
    }

    fn root_headers(&self) -> &'p [mail_parser::Header<'a>] {
        self.message
            .parts
            .first()
            .map(|p| p.headers.as_slice())
            .unwrap_or_default()
    }

    fn content_type(&self) -> Option<&'p ContentType<'a>> {
        self.root_headers()
            .iter()
            .find(|h| h.name == HeaderName::ContentType)
            .and_then(|h| match &h.value {
                HeaderValue::ContentType(ct) => Some(ct),
                _ => None,
            })
    }

    /// The first part (CRLF canonical), the decoded second part of a `multipart/signed`, and
    /// the tree index of the first part. Exactly two parts, as RFC 1847 §2.1 says: a third part
    /// would be unsigned content beside the signed entity.
    fn signed_parts(&self) -> Option<(Vec<u8>, Vec<u8>, usize)> {
        let PartType::Multipart(children) = &self.message.parts.first()?.body else {
            return None;
        };
        let [content, signature] = children.as_slice() else {
            return None;
        };
        let content_part = self.message.parts.get(*content as usize)?;
        let bytes = self
            .raw
            .get(content_part.offset_header as usize..content_part.offset_end as usize)?;
        let signature = self
            .message
            .parts
            .get(*signature as usize)?
            .contents()
            .to_vec();
        Some((canonical_crlf(bytes), signature, *content as usize))
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
    fn canonical_crlf_fixes_bare_line_breaks() {
        assert_eq!(
            canonical_crlf(b"a\nb\r\nc\rd"),
            b"a\r\nb\r\nc\r\nd".to_vec()
        );
    }

    fn from_of(raw: &[u8]) -> Result<String, String> {
        let parsed = Parsed::new(raw, false);
        TopLevel::of(&parsed).expect("parses").single_from()
    }

    #[test]
    fn from_must_be_single() {
        assert_eq!(
            from_of(b"From: Alice <Alice@Example.COM>\r\n\r\nx").as_deref(),
            Ok("alice@example.com")
        );
        assert!(from_of(b"From: a@example.com, b@example.com\r\n\r\nx").is_err());
        assert!(from_of(b"From: a@example.com\r\nFrom: b@example.com\r\n\r\nx").is_err());
        assert!(from_of(b"To: a@example.com\r\n\r\nx").is_err());
    }
}
