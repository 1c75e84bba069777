//! Which mail concerns imipd at all, before any parse: one linear pass over the MIME
//! structure (the header blocks and the boundary lines, nothing decoded), allocation-light.
//!
//! [`certainly_no_calendar`] answers `true` only for a message that the full reading
//! ([`super::extract::may_hold_calendar`] on the one MIME parse) would also find without a
//! calendar; anything it does not read exactly as that parser would (a bare CR, a comment or
//! RFC 2231 parameter in a Content-Type, a boundary that prefixes a line, a nested message, a
//! header line that is not a field) is left to the full reading. So a wrong answer here can
//! only cost time, never skip a calendar that the full reading would have seen. One exception
//! is by design: where the parser departs from RFC 5322 itself (it reads a header section on
//! past its first empty line), the message is flagged ambiguous by the full reading, proves
//! nothing, and the triage's reading, which every other reader shares, stands.

use memchr::memchr;

/// Nesting of multiparts followed; deeper mail is left to the full reading.
const MAX_DEPTH: usize = 16;

/// Multiparts followed in one message; more are left to the full reading.
const MAX_MULTIPARTS: usize = 64;

/// Whether the message certainly holds no calendar part and no opaque S/MIME entity.
pub fn certainly_no_calendar(raw: &[u8]) -> bool {
    if has_bare_cr(raw) {
        return false;
    }
    let Some((headers, body)) = split_block(raw) else {
        return false;
    };
    let mut stack: Vec<Vec<u8>> = Vec::new();
    match classify(headers, false) {
        Kind::Maybe => return false,
        Kind::Leaf => return true,
        Kind::Multipart(b, _) => stack.push(b),
    }
    // Inside the multiparts only "--" followed by a boundary can change the structure, and
    // the full reading takes one even in the middle of a line: such a message is its business.
    let mut digest = vec![is_digest(headers)];
    // Parts seen so far in each open multipart.
    let mut parts: Vec<usize> = vec![0];
    let dashes = memchr::memmem::Finder::new(b"--");
    // Boundaries of multiparts already closed: seen again, they are read in ways that differ.
    let mut closed: Vec<Vec<u8>> = Vec::new();
    let mut multiparts = 1;
    // Bounded work per byte: comparing boundaries at every "--" (a body of dashes, dozens of
    // boundaries) stops once it has cost this much, and the message goes to the full reading.
    let mut budget = raw.len().saturating_mul(8).saturating_add(1 << 16);
    let mut costs = |b: &[u8], after: &[u8]| -> bool {
        let n = b.len().min(after.len()) + 1;
        budget = budget.saturating_sub(n);
        budget > 0
    };
    let mut pos = body;
    while let Some(at) = dashes.find(&raw[pos..]).map(|n| pos + n) {
        let after = &raw[at + 2..];
        let mut known = false;
        for b in stack.iter().chain(&closed) {
            if !costs(b, after) {
                return false;
            }
            known |= after.starts_with(b);
        }
        if closed.iter().any(|b| after.starts_with(b)) {
            return false;
        }
        if !known {
            pos = at + 1;
            continue;
        }
        if at > 0 && raw[at - 1] != b'\n' {
            return false;
        }
        let end = memchr(b'\n', &raw[at..]).map_or(raw.len(), |n| at + n);
        let after = trim_cr(&raw[at + 2..end]);
        let next = (end + 1).min(raw.len());
        let mut matched = None;
        for (depth, b) in stack.iter().enumerate().rev() {
            if let Some(rest) = after.strip_prefix(b.as_slice()) {
                let rest = trim_wsp(rest);
                if rest.is_empty() {
                    matched = Some((depth, false));
                } else if rest
                    .strip_prefix(b"--")
                    .is_some_and(|r| trim_wsp(r).is_empty())
                {
                    matched = Some((depth, true));
                } else {
                    return false; // a boundary that prefixes a longer one, or text after a close
                }
                break;
            }
        }
        let Some((depth, close)) = matched else {
            return false; // unreachable: some boundary starts `after`
        };
        if depth + 1 != stack.len() {
            return false; // an outer boundary closes inner parts implicitly
        }
        if close {
            if parts.pop() == Some(0) {
                return false; // a multipart closed before its first part
            }
            closed.extend(stack.pop());
            digest.pop();
            pos = next;
            continue;
        }
        if let Some(n) = parts.last_mut() {
            *n += 1;
        }
        // A part: its header block up to the first empty line.
        let Some((block, part_body)) = split_block(&raw[next..]) else {
            return false;
        };
        for i in dashes.find_iter(block) {
            for b in stack.iter().chain(&closed) {
                if !costs(b, &block[i + 2..]) || block[i + 2..].starts_with(b) {
                    return false; // a delimiter inside a part's header block, or no budget
                }
            }
        }
        match classify(block, digest.last().copied().unwrap_or(false)) {
            Kind::Maybe => return false,
            Kind::Leaf => {}
            Kind::Multipart(b, is_digest) => {
                multiparts += 1;
                if stack.len() >= MAX_DEPTH || multiparts > MAX_MULTIPARTS || stack.contains(&b) {
                    return false;
                }
                stack.push(b);
                digest.push(is_digest);
                parts.push(0);
            }
        }
        pos = next + part_body;
    }
    // Unclosed multiparts end with the message; every part header was read.
    true
}

/// Whether a message with this top-level header block may hold a calendar, by the same
/// reading as [`certainly_no_calendar`] (for a door that has only the headers yet).
pub fn headers_may_hold_calendar(headers: &[u8]) -> bool {
    let block = split_block(headers).map_or(headers, |(b, _)| b);
    !matches!(classify(block, false), Kind::Leaf)
}

/// Whether the header section starts with clean fields only (each line a `name:` field or a
/// fold, no NUL, no bare CR): then every reader splits it the same way, and the position of an
/// Authentication-Results field among its kind is what the MTA counts.
pub fn clean_header_section(raw: &[u8]) -> bool {
    if has_bare_cr(raw) {
        return false;
    }
    let Some((block, _)) = split_block(raw) else {
        return false;
    };
    block.split(|&b| b == b'\n').all(|line| {
        let line = trim_cr(line);
        line.is_empty() || line[0] == b' ' || line[0] == b'\t' || field_name(line).is_some()
    }) && !block.contains(&0)
}

enum Kind {
    /// A leaf that holds no calendar.
    Leaf,
    /// A multipart with this boundary (and whether it is a digest).
    Multipart(Vec<u8>, bool),
    /// A calendar, or something not read exactly: left to the full reading.
    Maybe,
}

/// The kind of an entity from its header block. `in_digest`: a part of multipart/digest,
/// where a missing Content-Type means message/rfc822.
fn classify(block: &[u8], in_digest: bool) -> Kind {
    // Control octets (a NUL inside a comment, say) make readers disagree even on where the
    // header block ends.
    if block
        .iter()
        .any(|&b| b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n') || b == 0x7f)
    {
        return Kind::Maybe;
    }
    let mut ct: Option<Vec<u8>> = None;
    let mut cte: Option<Vec<u8>> = None;
    // What may name the entity's file: Content-Type and Content-Disposition.
    let mut names: Vec<u8> = Vec::new();
    for field in Fields(block) {
        let Some((name, value)) = field else {
            return Kind::Maybe; // a line that is not a field
        };
        if name.eq_ignore_ascii_case(b"begin") {
            return Kind::Maybe; // iCalendar lines read as headers
        }
        if name.eq_ignore_ascii_case(b"content-type") {
            if ct.is_some() {
                return Kind::Maybe;
            }
            ct = Some(unfold(value));
            names.extend_from_slice(value);
        } else if name.eq_ignore_ascii_case(b"content-disposition") {
            names.extend_from_slice(value);
        } else if name.eq_ignore_ascii_case(b"content-transfer-encoding") {
            cte = Some(unfold(value));
        }
    }
    let Some(ct) = ct else {
        return if in_digest {
            Kind::Maybe
        } else {
            leaf("text", "plain", &names)
        };
    };
    if ct.iter().any(|&b| (b < 0x20 && b != b'\t') || b >= 0x7f) {
        return Kind::Maybe; // control or 8-bit octets: readers may decode them differently
    }
    let (media, params) = match ct.iter().position(|&b| b == b';') {
        Some(i) => (&ct[..i], &ct[i + 1..]),
        None => (&ct[..], &[][..]),
    };
    let Some(slash) = media.iter().position(|&b| b == b'/') else {
        return Kind::Maybe;
    };
    let (ty, sub) = (trim_wsp(&media[..slash]), trim_wsp(&media[slash + 1..]));
    if ty.is_empty() || sub.is_empty() || !ty.iter().chain(sub).all(|&b| is_token(b)) {
        return Kind::Maybe;
    }
    let ty = String::from_utf8_lossy(ty).to_ascii_lowercase();
    let sub = String::from_utf8_lossy(sub).to_ascii_lowercase();
    if ty != "multipart" {
        return leaf(&ty, &sub, &names);
    }
    if cte.is_some_and(|e| {
        !matches!(
            String::from_utf8_lossy(trim_wsp(&e))
                .to_ascii_lowercase()
                .as_str(),
            "7bit" | "8bit" | "binary"
        )
    }) {
        return Kind::Maybe;
    }
    match boundary(params, &ct) {
        Some(b) => Kind::Multipart(b.to_vec(), sub == "digest"),
        None => Kind::Maybe,
    }
}

/// A leaf entity: a calendar type, an opaque S/MIME entity, a nested message, or a text or
/// octet-stream part that may be named `*.ics` / `*.vcs` (`names`: its Content-Type and
/// Content-Disposition values) is left to the full reading.
fn leaf(ty: &str, sub: &str, names: &[u8]) -> Kind {
    match (ty, sub) {
        ("text", "calendar" | "x-vcalendar") => Kind::Maybe,
        ("application", "ics" | "x-ics" | "calendar" | "pkcs7-mime" | "x-pkcs7-mime") => {
            Kind::Maybe
        }
        ("message", _) => Kind::Maybe,
        ("text", "plain") | ("application", "octet-stream") if may_name_ics(names) => Kind::Maybe,
        _ => Kind::Leaf,
    }
}

/// Whether header values may name a `.ics` / `.vcs` file, however the name is written
/// (plain, RFC 2231 or RFC 2047 encoded).
fn may_name_ics(values: &[u8]) -> bool {
    let lower = values.to_ascii_lowercase();
    [&b".ics"[..], b".vcs", b"*", b"\\", b"=?"]
        .iter()
        .any(|n| memchr::memmem::find(&lower, n).is_some())
}

fn is_digest(headers: &[u8]) -> bool {
    matches!(classify(headers, false), Kind::Multipart(_, true))
}

/// The boundary parameter of a multipart Content-Type (`ct` is the whole value, which the
/// result borrows from). None when it is missing, empty, repeated, RFC 2231 encoded or quoted
/// with escapes.
fn boundary<'a>(params: &[u8], ct: &'a [u8]) -> Option<&'a [u8]> {
    let base = ct.len() - params.len();
    let mut found: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < params.len() {
        while i < params.len() && matches!(params[i], b' ' | b'\t' | b';') {
            i += 1;
        }
        let name_start = i;
        while i < params.len() && params[i] != b'=' && params[i] != b';' {
            i += 1;
        }
        let name = trim_wsp(&params[name_start..i]);
        if name.contains(&b'*') || name.contains(&b'(') || name.contains(&b'"') {
            return None;
        }
        if i >= params.len() || params[i] == b';' {
            continue; // a name without value
        }
        i += 1; // '='
        while i < params.len() && matches!(params[i], b' ' | b'\t') {
            i += 1;
        }
        let (vs, ve);
        if params.get(i) == Some(&b'"') {
            let close = memchr(b'"', &params[i + 1..])?;
            vs = i + 1;
            ve = i + 1 + close;
            if params[vs..ve].contains(&b'\\') {
                return None;
            }
            i = ve + 1;
        } else {
            vs = i;
            while i < params.len() && params[i] != b';' {
                i += 1;
            }
            let v = trim_wsp(&params[vs..i]);
            // A space inside an unquoted value: a fold that readers end in different places.
            if v.contains(&b'"') || v.contains(&b'(') || v.contains(&b' ') || v.contains(&b'\t') {
                return None;
            }
            ve = vs + v.len();
        }
        if name.eq_ignore_ascii_case(b"boundary") {
            if found.is_some() {
                return None;
            }
            found = Some((base + vs, base + ve));
        }
    }
    let (s, e) = found?;
    let b = &ct[s..e];
    if memchr::memmem::find(b, b"=?").is_some() {
        return None; // an RFC 2047 encoded word, which the parser decodes
    }
    // RFC 2046 bchars only, no trailing space.
    let bchar = |c: &u8| c.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(c);
    (!b.is_empty() && b.len() <= 70 && b.iter().all(bchar) && !b.ends_with(b" ")).then_some(b)
}

/// The header block and the offset of the body: up to the first empty line. None when there
/// is no empty line (a header section that runs to the end).
fn split_block(raw: &[u8]) -> Option<(&[u8], usize)> {
    let mut pos = 0;
    loop {
        if raw.get(pos..pos + 2) == Some(b"\r\n") {
            return Some((&raw[..pos], pos + 2));
        }
        if raw.get(pos) == Some(&b'\n') {
            return Some((&raw[..pos], pos + 1));
        }
        pos += memchr(b'\n', raw.get(pos..)?)? + 1;
    }
}

/// The fields of a header block: Some((name, raw value incl. folds)) or None for a line that
/// is neither a field nor a fold.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Option<(&'a [u8], &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        let raw = self.0;
        if raw.is_empty() {
            return None;
        }
        // The field runs to a line end not followed by white space.
        let mut end = 0;
        loop {
            match memchr(b'\n', &raw[end..]) {
                Some(n) => {
                    end += n + 1;
                    if !matches!(raw.get(end), Some(b' ' | b'\t')) {
                        break;
                    }
                }
                None => {
                    end = raw.len();
                    break;
                }
            }
        }
        let field = &raw[..end];
        self.0 = &raw[end..];
        Some(field_name(field).map(|n| (n, &field[n.len() + 1..])))
    }
}

/// The name of a `name: value` line: printable ASCII without ':' or space, then ':'.
fn field_name(line: &[u8]) -> Option<&[u8]> {
    let colon = memchr(b':', line)?;
    let name = &line[..colon];
    (!name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b))).then_some(name)
}

fn unfold(value: &[u8]) -> Vec<u8> {
    value
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect()
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`{|}~".contains(&b)
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_wsp(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// A CR not followed by LF anywhere: readers disagree on where such lines end.
fn has_bare_cr(raw: &[u8]) -> bool {
    memchr::memchr_iter(b'\r', raw).any(|i| raw.get(i + 1) != Some(&b'\n'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ct: &str, body: &str) -> Vec<u8> {
        format!("From: a@example.com\r\nTo: b@example.org\r\nSubject: x\r\n{ct}\r\n{body}")
            .into_bytes()
    }

    #[test]
    fn ordinary_mail_is_told_apart_without_a_parse() {
        assert!(certainly_no_calendar(&msg("", "hello\r\n")));
        assert!(certainly_no_calendar(&msg(
            "Content-Type: text/plain; charset=utf-8\r\n",
            "hi\r\n"
        )));
        let mixed = "--m\r\nContent-Type: multipart/alternative; boundary=\"a\"\r\n\r\n\
--a\r\nContent-Type: text/plain\r\n\r\ntext\r\n--a\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n\
--a--\r\n--m\r\nContent-Type: application/pdf; name=\"minutes.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nQUJD\r\n--m--\r\n";
        assert!(certainly_no_calendar(&msg(
            "Content-Type: multipart/mixed; boundary=m\r\n",
            mixed
        )));
    }

    #[test]
    fn anything_that_may_hold_a_calendar_goes_to_the_full_reading() {
        let part = |headers: &str| {
            msg(
                "Content-Type: multipart/mixed; boundary=\"m\"\r\n",
                &format!("--m\r\nContent-Type: text/plain\r\n\r\nx\r\n--m\r\n{headers}\r\n\r\ndata\r\n--m--\r\n"),
            )
        };
        for h in [
            "Content-Type: text/calendar; method=REQUEST",
            "Content-Type: TEXT/Calendar",
            "Content-Type: text / calendar",
            "Content-Type: application/ics",
            "Content-Type: application/pkcs7-mime; smime-type=enveloped-data",
            "Content-Type: message/rfc822",
            "Content-Type: text/plain; name=invite.ics",
            "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename*=UTF-8''invite%2Eics",
            "Content-Type: text/plain; name=\"=?UTF-8?B?aW52aXRlLmljcw==?=\"",
            "Content-Type: text/(comment)plain",
            "Content-Type: text/plain\r\nContent-Type: text/calendar",
            "BEGIN:VCALENDAR",
            "not a header line",
            "Content-Type: multipart/alternative",
            "Content-Type: multipart/alternative; boundary*0=\"x\"",
        ] {
            assert!(!certainly_no_calendar(&part(h)), "{h}");
        }
        assert!(!certainly_no_calendar(&msg(
            "Content-Type: text/calendar; method=REQUEST\r\n",
            "BEGIN:VCALENDAR\r\n"
        )));
        // Boundary tricks: a delimiter that is a prefix of another line, bare CR line ends,
        // an outer boundary closing inner parts.
        assert!(!certainly_no_calendar(&msg(
            "Content-Type: multipart/mixed; boundary=m\r\n",
            "--mx\r\nContent-Type: text/calendar\r\n\r\nx\r\n--m--\r\n"
        )));
        assert!(!certainly_no_calendar(
            b"Content-Type: multipart/mixed; boundary=m\r\n\r\n--m\rContent-Type: text/calendar\r\r\nx\r\n--m--\r\n"
        ));
        assert!(!certainly_no_calendar(&msg(
            "Content-Type: multipart/mixed; boundary=m\r\n",
            "--m\r\nContent-Type: multipart/alternative; boundary=a\r\n\r\n--a\r\n\
Content-Type: text/plain\r\n\r\nx\r\n--m\r\nContent-Type: text/calendar\r\n\r\nx\r\n--m--\r\n"
        )));
        // The full reading takes a boundary in the middle of a line, or after the close.
        assert!(!certainly_no_calendar(&msg(
            "Content-Type: multipart/mixed; boundary=m\r\n",
            "pre x--m\r\nContent-Type: text/calendar\r\n\r\nx\r\n--m--\r\n"
        )));
        assert!(!certainly_no_calendar(&msg(
            "Content-Type: multipart/mixed; boundary=m\r\n",
            "--m\r\n\r\nx\r\n--m--\r\n--m\r\nContent-Type: text/calendar\r\n\r\nx\r\n"
        )));
        // Boundaries and names that the parser decodes or ends elsewhere.
        for ct in [
            "Content-Type: multipart/mixed; boundary=\"=?us-ascii?q?x?=\"\r\n",
            "Content-Type: multipart/mixed; boundary=x\r\n y\r\n",
        ] {
            assert!(
                !certainly_no_calendar(&msg(
                    ct,
                    "--x\r\nContent-Type: text/calendar\r\n\r\nBEGIN:VCALENDAR\r\n--x--\r\n"
                )),
                "{ct}"
            );
        }
        for h in [
            "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"invite.i\\cs\"",
            "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"invite.i\"; filename*1=\"cs\"",
        ] {
            assert!(!certainly_no_calendar(&part(h)), "{h}");
        }
        // Work stays linear: many closed multiparts and a body of dashes.
        let mut body = String::new();
        for i in 0..60 {
            let b = format!("{:-<60}{i}", "");
            body.push_str(&format!(
                "--m\r\nContent-Type: multipart/alternative; boundary=\"{b}\"\r\n\r\n\
--{b}\r\nContent-Type: text/plain\r\n\r\nx\r\n--{b}--\r\n"
            ));
        }
        body.push_str("--m\r\nContent-Type: text/plain\r\n\r\n");
        body.push_str(&"-".repeat(200_000));
        let big = msg("Content-Type: multipart/mixed; boundary=m\r\n", &body);
        let t = std::time::Instant::now();
        assert!(!certainly_no_calendar(&big));
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );
        // Parts of a digest are messages unless they say otherwise.
        assert!(!certainly_no_calendar(&msg(
            "Content-Type: multipart/digest; boundary=d\r\n",
            "--d\r\n\r\nFrom: x\r\n\r\nbody\r\n--d--\r\n"
        )));
    }

    #[test]
    fn end_of_headers_keeps_every_body_that_may_hold_a_calendar() {
        for h in [
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n",
            "Content-Type: text/x-vcalendar\r\n\r\n",
            "Content-Type: application/x-ics\r\n\r\n",
            "Content-Type: text/plain; name=invite.ics\r\n\r\n",
            "Content-Disposition: attachment; filename=invite.ics\r\n\r\n",
            "Content-Type: (c)multipart/mixed; boundary=b\r\n\r\n",
            "Content-Type: application/pkcs7-mime\r\n\r\n",
            "Content-Type: Multipart/Mixed; boundary=x\r\n\r\n",
            "Content-Type: text/calendar; method=REQUEST\r\n\r\n",
            "Content-Type: application/ics\r\n\r\n",
            "Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n\r\n",
            "Content-Type: application/x-pkcs7-mime\r\n\r\n",
            "Content-Type: text/plain\r\nContent-Type: text/calendar\r\n\r\n",
        ] {
            assert!(headers_may_hold_calendar(h.as_bytes()), "{h}");
        }
        for h in [
            "Content-Type: text/plain\r\n\r\n",
            "Content-Type: text/plain; charset=utf-8\r\n\r\n",
            "Content-Type: text/html\r\n\r\n",
            "Subject: x\r\n\r\n",
            "Content-Type: application/pdf\r\n\r\n",
        ] {
            assert!(!headers_may_hold_calendar(h.as_bytes()), "{h}");
        }
    }

    #[test]
    fn header_sections_that_readers_may_split_differently_are_not_clean() {
        assert!(clean_header_section(b"A: 1\r\n folded\r\nB: 2\r\n\r\nbody"));
        assert!(!clean_header_section(b"A: 1\r\nno colon here\r\n\r\nbody"));
        assert!(!clean_header_section(b"A: 1\rB: 2\r\n\r\nbody"));
        assert!(!clean_header_section(b"A: 1\r\nB: 2\r\n"));
    }
}
