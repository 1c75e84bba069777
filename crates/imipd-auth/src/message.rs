//! One parse per message: the MIME tree that sender proof checks and extraction reads.
//!
//! A signature proves bytes; a calendar is read from a tree built from bytes. Both must be the
//! same tree, and the tree must be the only reasonable reading of the bytes: input that two MIME
//! readers could see differently (two Content-Type headers, a boundary matched mid-line or with a
//! suffix, bare CR line ends) is flagged here, and sender proof then covers nothing in it.

use mail_parser::{Message, MessageParser, MessagePart, MimeHeaders, PartType};
use std::borrow::Cow;

/// Multipart nesting deeper than this is not checked part by part: the message is ambiguous.
const MAX_DEPTH: usize = 20;

/// Line ends made uniform so that a message written with bare CR (old Exchange/CDO) parses.
/// Returns the bytes and whether any bare CR was seen (which makes a signed message ambiguous:
/// a DKIM body hash skips a bare CR that a MIME reader takes as a line break).
pub fn normalize_line_ends(raw: &[u8]) -> (Cow<'_, [u8]>, bool) {
    let bare = |i: usize| raw[i] == b'\r' && raw.get(i + 1) != Some(&b'\n');
    let Some(first) = memchr_iter_cr(raw).find(|&i| bare(i)) else {
        return (Cow::Borrowed(raw), false);
    };
    let mut out = Vec::with_capacity(raw.len() + 64);
    out.extend_from_slice(&raw[..first]);
    for (i, &b) in raw.iter().enumerate().skip(first) {
        if bare(i) {
            out.extend_from_slice(b"\r\n");
        } else {
            out.push(b);
        }
    }
    (Cow::Owned(out), true)
}

fn memchr_iter_cr(raw: &[u8]) -> impl Iterator<Item = usize> + '_ {
    raw.iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\r')
        .map(|(i, _)| i)
}

/// A message parsed once, with what makes it ambiguous.
pub struct Parsed<'a> {
    /// The bytes the tree was built from (line ends normalized).
    pub bytes: &'a [u8],
    /// The MIME tree; `None` when the bytes are not an RFC 5322 message at all.
    pub tree: Option<Message<'a>>,
    /// Why two readers could see this message differently; sender proof covers nothing then.
    pub ambiguity: Option<String>,
}

impl<'a> Parsed<'a> {
    /// Parses `bytes` (from [`normalize_line_ends`]; `bare_cr` is what it reported).
    pub fn new(bytes: &'a [u8], bare_cr: bool) -> Self {
        let tree = MessageParser::default()
            .parse(bytes)
            .filter(|m| m.parts.first().is_some_and(|p| !p.headers.is_empty()));
        let ambiguity = if bare_cr {
            Some("bare CR line ends".to_string())
        } else {
            tree.as_ref().and_then(|t| ambiguity(bytes, t))
        };
        Parsed {
            bytes,
            tree,
            ambiguity,
        }
    }

    /// The parts of the tree (empty without a tree).
    pub fn parts(&self) -> &[MessagePart<'a>] {
        self.tree
            .as_ref()
            .map(|t| t.parts.as_slice())
            .unwrap_or(&[])
    }

    /// Offset of the top-level body.
    pub fn body_offset(&self) -> usize {
        self.parts()
            .first()
            .map_or(self.bytes.len(), |p| p.offset_body as usize)
    }
}

/// Where the body of an entity whose header section starts at `start` begins, by RFC 5322:
/// after the first empty line. None when there is none.
fn rfc_body_offset(bytes: &[u8], start: usize) -> Option<usize> {
    let mut pos = start;
    loop {
        let rest = bytes.get(pos..)?;
        if rest.starts_with(b"\r\n") {
            return Some(pos + 2);
        }
        if rest.starts_with(b"\n") {
            return Some(pos + 1);
        }
        pos += rest.iter().position(|&b| b == b'\n')? + 1;
    }
}

/// Why the tree is not the only reading of `bytes`, if it is not.
fn ambiguity(bytes: &[u8], tree: &Message<'_>) -> Option<String> {
    for part in &tree.parts {
        // A malformed structured value (a Date, a comment) can make the parser read on past
        // the empty line that ends the header section for everyone else.
        if !part.headers.is_empty() {
            if let Some(body) = rfc_body_offset(bytes, part.offset_header as usize) {
                if body != part.offset_body as usize {
                    return Some("a header section read past its first empty line".to_string());
                }
            }
        }
        for name in ["Content-Type", "Content-Transfer-Encoding"] {
            if part
                .headers
                .iter()
                .filter(|h| h.name().eq_ignore_ascii_case(name))
                .count()
                > 1
            {
                return Some(format!("two {name} headers in one MIME entity"));
            }
        }
    }
    check_multipart(bytes, tree, 0, 0)
}

/// Every multipart's children must be exactly the parts that anchored delimiter lines
/// (RFC 2046 §5.1.1: `--boundary` at the start of a line, then only white space) delimit.
fn check_multipart(bytes: &[u8], tree: &Message<'_>, index: usize, depth: usize) -> Option<String> {
    let part = tree.parts.get(index)?;
    let PartType::Multipart(children) = &part.body else {
        return None;
    };
    if depth > MAX_DEPTH {
        return Some(format!("multipart nesting deeper than {MAX_DEPTH}"));
    }
    let Some(boundary) = part.content_type().and_then(|ct| ct.attribute("boundary")) else {
        return Some("multipart without a boundary".to_string());
    };
    let start = (part.offset_body as usize).min(bytes.len());
    let end = (part.offset_end as usize).clamp(start, bytes.len());
    let strict = split_multipart_offsets(&bytes[start..end], boundary.as_bytes());
    let seen: Vec<(usize, usize)> = children
        .iter()
        .filter_map(|&c| tree.parts.get(c as usize))
        .map(|c| (c.offset_header as usize, c.offset_end as usize))
        .collect();
    let expected: Option<Vec<(usize, usize)>> =
        strict.map(|v| v.iter().map(|&(s, e)| (start + s, start + e)).collect());
    if expected.as_deref() != Some(seen.as_slice()) {
        return Some("MIME boundaries that readers split differently".to_string());
    }
    for &child in children {
        if let Some(reason) = check_multipart(bytes, tree, child as usize, depth + 1) {
            return Some(reason);
        }
    }
    None
}

/// The body parts of a multipart body (RFC 2046 §5.1.1) as offsets into `body`, each without
/// the line break that belongs to the following delimiter. `None` without a closing delimiter.
pub fn split_multipart_offsets(body: &[u8], boundary: &[u8]) -> Option<Vec<(usize, usize)>> {
    if boundary.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    let mut part_start: Option<usize> = None;
    let mut line_start = 0;
    while line_start < body.len() {
        let line_end = body[line_start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |i| line_start + i + 1);
        let line = &body[line_start..line_end];
        if let Some(rest) = line
            .strip_prefix(b"--")
            .and_then(|r| r.strip_prefix(boundary))
        {
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
                    parts.push((start, end));
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

/// The indexes of `index` and every part below it in the tree, sorted.
pub fn subtree(tree: &Message<'_>, index: usize) -> Vec<usize> {
    let mut seen = vec![false; tree.parts.len()];
    let mut out = Vec::new();
    let mut stack = vec![index];
    while let Some(i) = stack.pop() {
        match seen.get_mut(i) {
            Some(s) if !*s => *s = true,
            _ => continue,
        }
        out.push(i);
        if let Some(PartType::Multipart(children)) = tree.parts.get(i).map(|p| &p.body) {
            stack.extend(children.iter().map(|&c| c as usize));
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &[u8]) -> Option<String> {
        let (bytes, bare) = normalize_line_ends(raw);
        Parsed::new(&bytes, bare).ambiguity
    }

    #[test]
    fn plain_multipart_is_unambiguous() {
        let raw = b"From: a@b.example\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\npre\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b1\r\nContent-Type: text/calendar\r\n\r\nCAL\r\n--b1--\r\nepilogue\r\n";
        assert_eq!(parsed(raw), None);
        let lf = b"From: a@b.example\nContent-Type: multipart/mixed; boundary=b1\n\n--b1\nContent-Type: text/calendar\n\nCAL\n--b1--\n";
        assert_eq!(parsed(lf), None);
    }

    #[test]
    fn mid_line_and_suffixed_boundaries_are_ambiguous() {
        let mid = b"From: a@b.example\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\npre x--b1\r\nContent-Type: text/calendar\r\n\r\nFORGED\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b1--\r\n";
        assert!(parsed(mid).is_some());
        let suffixed = b"From: a@b.example\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n--b1x\r\nContent-Type: text/calendar\r\n\r\nFORGED\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b1--\r\n";
        assert!(parsed(suffixed).is_some());
    }

    #[test]
    fn duplicate_content_type_and_bare_cr_are_ambiguous() {
        let two = b"From: a@b.example\r\nContent-Type: text/plain\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/calendar\r\n\r\nCAL\r\n--b1--\r\n";
        assert!(parsed(two).unwrap().contains("Content-Type"));
        let cr = b"From: a@b.example\r\nContent-Type: text/calendar\r\n\r\nRRULE:FREQ=DAILY;\rCOUNT=10\r\n";
        assert_eq!(parsed(cr).as_deref(), Some("bare CR line ends"));
    }

    #[test]
    fn unclosed_multipart_is_ambiguous() {
        let raw = b"From: a@b.example\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/calendar\r\n\r\nCAL\r\n";
        assert!(parsed(raw).is_some());
    }

    #[test]
    fn normalize_reports_bare_cr_only() {
        assert!(!normalize_line_ends(b"a\r\nb\n").1);
        let (out, bare) = normalize_line_ends(b"a\rb\r\n");
        assert!(bare);
        assert_eq!(&out[..], b"a\r\nb\r\n");
    }

    #[test]
    fn a_header_section_read_past_its_empty_line_is_ambiguous() {
        let raw = b"Received: x\r\nDate: Tue, 01 Nov 2011 08:03:02 G\r\n\r\nSubject: y\r\n\
Content-Type: text/calendar\r\n\r\nBEGIN:VCALENDAR\r\n";
        let p = Parsed::new(raw, false);
        // mail-parser's Date parser takes the empty line after a broken zone.
        let rfc_body = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_ne!(p.parts()[0].offset_body as usize, rfc_body);
        assert_eq!(
            p.ambiguity.as_deref(),
            Some("a header section read past its first empty line")
        );
        let ok = Parsed::new(b"From: a@example.com\r\nSubject: y\r\n\r\nbody\r\n", false);
        assert_eq!(ok.ambiguity, None);
    }
}
