//! Finds the iTIP objects in a real client's message (RFC 6047; see the corpus QUIRKS notes):
//! text/calendar and application/ics parts anywhere in the MIME tree, .ics files sent as
//! text/plain or octet-stream, QP and base64 (decoded leniently), charsets that lie, bare CR,
//! duplicated parts, and the method from the body with the Content-Type parameter as fallback.
//! Never a calendar inside a bounce or a forwarded message.

use crate::ical::{self, Component};
use crate::itip::{Incoming, Method};
use mail_parser::{MessageParser, MimeHeaders, PartType};

/// A calendar object refused while extracting, with the reason.
#[derive(Debug, Clone)]
pub struct Refused {
    pub method: String,
    pub component: String,
    pub uid: String,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Extracted {
    pub message_id: Option<String>,
    pub from: Option<String>,
    pub subject: Option<String>,
    /// To and Cc addresses, normalized.
    pub recipients: Vec<String>,
    pub objects: Vec<Incoming>,
    /// Notes about the message (method mismatch, duplicates dropped).
    pub notes: Vec<String>,
    pub refused: Vec<Refused>,
    /// The message is a delivery report (bounce): nothing in it is applied.
    pub is_report: bool,
}

/// Maximum size of one calendar part after decoding.
pub const MAX_PART: usize = 8 * 1024 * 1024;
/// Maximum number of To/Cc recipients taken from the headers (each is a calendar to update).
pub const MAX_RECIPIENTS: usize = 1000;
/// Maximum number of calendar parts looked at in one message.
pub const MAX_PARTS: usize = 32;

/// Normalizes line ends so that a message written with bare CR (old Exchange/CDO) parses.
pub fn normalize_line_ends(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !raw.contains(&b'\r') {
        return raw.into();
    }
    let mut has_bare = false;
    for (i, b) in raw.iter().enumerate() {
        if *b == b'\r' && raw.get(i + 1) != Some(&b'\n') {
            has_bare = true;
            break;
        }
    }
    if !has_bare {
        return raw.into();
    }
    let mut out = Vec::with_capacity(raw.len() + 64);
    for (i, b) in raw.iter().enumerate() {
        if *b == b'\r' && raw.get(i + 1) != Some(&b'\n') {
            out.extend_from_slice(b"\r\n");
        } else {
            out.push(*b);
        }
    }
    out.into()
}

struct Part {
    text: String,
    ct_method: Option<String>,
    is_text_calendar: bool,
    order: usize,
}

/// Extracts every iTIP object of a message.
pub fn extract(raw: &[u8]) -> Extracted {
    let raw = normalize_line_ends(raw);
    let mut ex = Extracted::default();
    let Some(msg) = MessageParser::default().parse(raw.as_ref()) else {
        ex.notes
            .push("message could not be parsed as RFC 5322".into());
        return ex;
    };
    ex.message_id = msg.message_id().map(|s| s.to_string());
    ex.from = msg
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(ical::norm_addr);
    ex.subject = msg.subject().map(str::to_string);
    let mut seen_rcpt = std::collections::HashSet::new();
    'headers: for list in [msg.to(), msg.cc()].into_iter().flatten() {
        for a in list.iter() {
            if ex.recipients.len() >= MAX_RECIPIENTS {
                ex.notes.push(format!(
                    "more than {MAX_RECIPIENTS} To/Cc recipients; the rest were skipped"
                ));
                break 'headers;
            }
            if let Some(addr) = a.address() {
                let n = ical::norm_addr(addr);
                if !n.is_empty() && seen_rcpt.insert(n.clone()) {
                    ex.recipients.push(n);
                }
            }
        }
    }
    let raw_msg = msg.raw_message();
    let mut parts: Vec<Part> = Vec::new();
    for (idx, part) in msg.parts.iter().enumerate() {
        let ct = part.content_type();
        let (ctype, csub) = match ct {
            Some(ct) => (
                ct.c_type.to_ascii_lowercase(),
                ct.c_subtype.as_deref().unwrap_or("").to_ascii_lowercase(),
            ),
            None => ("text".into(), "plain".into()),
        };
        if idx == 0 && ctype == "multipart" && csub == "report" {
            ex.is_report = true;
            ex.notes
                .push("delivery report: calendars inside are not applied".into());
            return ex;
        }
        if matches!(part.body, PartType::Multipart(_) | PartType::Message(_)) {
            continue;
        }
        let attr = |name: &str| -> Option<String> {
            ct.and_then(|ct| ct.attribute(name)).map(str::to_string)
        };
        let filename = attr("name").or_else(|| {
            part.content_disposition()
                .and_then(|d| d.attribute("filename"))
                .map(str::to_string)
        });
        let ics_name = filename.as_deref().is_some_and(|f| {
            f.to_ascii_lowercase().ends_with(".ics") || f.to_ascii_lowercase().ends_with(".vcs")
        });
        let is_text_calendar = ctype == "text" && (csub == "calendar" || csub == "x-vcalendar");
        let is_calendar = is_text_calendar
            || (ctype == "application" && matches!(csub.as_str(), "ics" | "x-ics" | "calendar"))
            || (ics_name
                && matches!(
                    (ctype.as_str(), csub.as_str()),
                    ("text", "plain") | ("application", "octet-stream")
                ));
        let body_start = part.offset_body as usize;
        let body_end = (part.offset_end as usize).min(raw_msg.len());
        // A part whose iCalendar lines were read as headers (its real headers follow the body).
        let headers_are_calendar = part
            .headers
            .first()
            .is_some_and(|h| h.name().eq_ignore_ascii_case("BEGIN"));
        if !is_calendar && !headers_are_calendar {
            continue;
        }
        if parts.len() >= MAX_PARTS {
            ex.notes.push(format!(
                "more than {MAX_PARTS} calendar parts; the rest were skipped"
            ));
            break;
        }
        let bytes: Vec<u8> = if headers_are_calendar {
            let start = (part.offset_header as usize).min(body_end);
            raw_msg[start..body_end].to_vec()
        } else {
            let body = &raw_msg[body_start.min(body_end)..body_end];
            let cte = part
                .headers
                .iter()
                .find(|h| h.name().eq_ignore_ascii_case("Content-Transfer-Encoding"))
                .and_then(|h| h.value().as_text())
                .map(|s| s.trim().to_ascii_lowercase())
                .unwrap_or_default();
            match cte.as_str() {
                "base64" => decode_base64_lenient(body),
                "quoted-printable" => decode_qp_lenient(body),
                _ => body.to_vec(),
            }
        };
        if bytes.len() > MAX_PART {
            ex.refused.push(Refused {
                method: attr("method").unwrap_or_default().to_ascii_uppercase(),
                component: String::new(),
                uid: String::new(),
                reason: format!("calendar part larger than {MAX_PART} octets"),
            });
            continue;
        }
        let text = decode_charset(&bytes, attr("charset").as_deref());
        let text = if headers_are_calendar {
            strip_trailing_headers(&text)
        } else {
            text
        };
        parts.push(Part {
            text,
            ct_method: attr("method").map(|m| m.trim().to_ascii_uppercase()),
            is_text_calendar,
            order: idx,
        });
    }
    // Prefer the text/calendar alternative that carries method=, then other text/calendar.
    parts.sort_by_key(|p| {
        (
            !(p.is_text_calendar && p.ct_method.is_some()),
            !p.is_text_calendar,
            p.order,
        )
    });
    let mut seen: Vec<(String, i64, String)> = Vec::new();
    for part in parts {
        objects_of_part(&part, &mut ex, &mut seen);
    }
    // The same broken object in two parts (inline copy + attachment) is one refusal.
    let mut seen_refusals = std::collections::HashSet::new();
    ex.refused.retain(|r| {
        seen_refusals.insert((
            r.method.clone(),
            r.component.clone(),
            r.uid.clone(),
            r.reason.clone(),
        ))
    });
    ex
}

/// Cuts MIME headers that a broken client wrote after END:VCALENDAR.
fn strip_trailing_headers(text: &str) -> String {
    match text.to_ascii_uppercase().rfind("END:VCALENDAR") {
        Some(pos) => text[..pos + "END:VCALENDAR".len()].to_string() + "\r\n",
        None => text.to_string(),
    }
}

fn objects_of_part(part: &Part, ex: &mut Extracted, seen: &mut Vec<(String, i64, String)>) {
    calendar_objects_into(&part.text, part.ct_method.as_deref(), ex, seen);
}

/// The iTIP objects of one iCalendar text (an iSchedule body, or one calendar part of a
/// message): components grouped by UID, duplicates dropped, the method from the body with
/// `ct_method` (the media type's `method=`) as fallback.
pub fn calendar_objects(text: &str, ct_method: Option<&str>) -> Extracted {
    let mut ex = Extracted::default();
    let mut seen = Vec::new();
    let ct_method = ct_method.map(|m| m.trim().to_ascii_uppercase());
    calendar_objects_into(text, ct_method.as_deref(), &mut ex, &mut seen);
    ex
}

fn calendar_objects_into(
    text: &str,
    ct_method: Option<&str>,
    ex: &mut Extracted,
    seen: &mut Vec<(String, i64, String)>,
) {
    let cals = match ical::parse(text) {
        Ok(c) => c,
        Err(e) => {
            ex.refused.push(Refused {
                method: ct_method.unwrap_or_default().to_string(),
                component: String::new(),
                uid: String::new(),
                reason: format!("malformed calendar: {e}"),
            });
            return;
        }
    };
    for cal in cals {
        let body_method = cal.value("METHOD").map(|m| m.trim().to_ascii_uppercase());
        let method_str = match (&body_method, ct_method) {
            (Some(b), Some(c)) if b != c => {
                ex.notes.push(format!(
                    "Content-Type says method={c}, body says METHOD:{b}; the body wins"
                ));
                b.clone()
            }
            (Some(b), _) => b.clone(),
            (None, Some(c)) => c.to_string(),
            (None, None) => "PUBLISH".into(),
        };
        let timezones: std::sync::Arc<Vec<Component>> =
            std::sync::Arc::new(cal.subs_named("VTIMEZONE").cloned().collect());
        let tzmap = {
            let refs: Vec<&Component> = timezones.iter().collect();
            ical::time::TzMap::new(&refs)
        };
        // Group schedulable components by UID, keeping their order.
        let mut groups: Vec<(String, String, Vec<Component>)> = Vec::new();
        for c in cal.subs.iter().filter(|c| c.is_schedulable()) {
            let uid = c.uid().unwrap_or("").to_string();
            if uid.is_empty() && c.name != "VFREEBUSY" {
                ex.refused.push(Refused {
                    method: method_str.clone(),
                    component: c.name.clone(),
                    uid: String::new(),
                    reason: "component has no UID".into(),
                });
                continue;
            }
            let key = (uid.clone(), c.sequence(), crate::itip::rid_key(c, &tzmap));
            if seen.contains(&key) {
                continue; // the same object again (inline copy + attachment)
            }
            seen.push(key);
            match groups.iter_mut().find(|g| g.0 == uid && g.1 == c.name) {
                Some(g) => g.2.push(c.clone()),
                None => groups.push((uid, c.name.clone(), vec![c.clone()])),
            }
        }
        let Some(method) = Method::parse(&method_str) else {
            for (uid, kind, _) in groups {
                ex.refused.push(Refused {
                    method: method_str.clone(),
                    component: kind,
                    uid,
                    reason: format!("unknown iTIP method {method_str}"),
                });
            }
            continue;
        };
        for (uid, kind, components) in groups {
            ex.objects.push(Incoming {
                method,
                kind,
                uid,
                components,
                timezones: timezones.clone(),
            });
        }
    }
}

/// Decodes text in `charset`; without one (or with a bogus one) UTF-8, else Latin-1.
fn decode_charset(bytes: &[u8], charset: Option<&str>) -> String {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if let Ok(s) = std::str::from_utf8(bytes) {
        return s.to_string();
    }
    if let Some(cs) = charset {
        let cs = cs.trim().to_ascii_lowercase();
        if !matches!(cs.as_str(), "utf-8" | "utf8" | "us-ascii" | "ascii") {
            if let Some(dec) = mail_parser::decoders::charsets::map::charset_decoder(cs.as_bytes())
            {
                return dec(bytes);
            }
        }
    }
    // Latin-1: every byte is a code point.
    bytes.iter().map(|&b| b as char).collect()
}

/// Quoted-printable that tolerates what real clients send: invalid escapes stay literal, soft
/// breaks with LF or CRLF, trailing white space.
pub fn decode_qp_lenient(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    let hex = |b: u8| -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    };
    while i < input.len() {
        let b = input[i];
        if b == b'=' {
            // Soft line break: "=" [spaces] CRLF|LF
            let mut j = i + 1;
            while j < input.len() && (input[j] == b' ' || input[j] == b'\t') {
                j += 1;
            }
            if j < input.len() && input[j] == b'\n' {
                i = j + 1;
                continue;
            }
            if j + 1 < input.len() && input[j] == b'\r' && input[j + 1] == b'\n' {
                i = j + 2;
                continue;
            }
            if j >= input.len() {
                break;
            }
            if i + 2 < input.len() {
                if let (Some(h), Some(l)) = (hex(input[i + 1]), hex(input[i + 2])) {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
            }
            out.push(b'=');
            i += 1;
        } else {
            out.push(b);
            i += 1;
        }
    }
    out
}

/// Base64 that skips anything outside the alphabet and stops at padding.
pub fn decode_base64_lenient(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in input {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => {
                acc = 0;
                bits = 0;
                continue;
            }
            _ => continue,
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qp_keeps_invalid_escapes() {
        assert_eq!(decode_qp_lenient(b"CN=Receiver=3D=\nx"), b"CN=Receiver=x");
        assert_eq!(decode_qp_lenient(b"a=0D=0Ab"), b"a\r\nb");
        assert_eq!(decode_qp_lenient(b"x="), b"x");
    }

    #[test]
    fn base64_skips_line_breaks() {
        assert_eq!(decode_base64_lenient(b"aGVs\r\nbG8=\r\n"), b"hello");
    }

    #[test]
    fn latin1_without_charset() {
        assert_eq!(decode_charset(b"B\xfcro", None), "Büro");
    }
}
