//! Finds the iTIP objects in a real client's message (RFC 6047; see the corpus QUIRKS notes):
//! text/calendar and application/ics parts anywhere in the MIME tree, .ics files sent as
//! text/plain or octet-stream, QP and base64 (decoded leniently), charsets that lie, bare CR,
//! duplicated parts, and the method from the body with the Content-Type parameter as fallback.
//! Never a calendar inside a bounce or a forwarded message.
//!
//! Extraction reads the same MIME tree that sender proof was checked on, and gives each object
//! the addresses whose proof covers the part it came from: a calendar beside a signed entity,
//! or after a DKIM `l=` prefix, is unproven whatever else in the message is signed.
//! Work is linear in the message: objects are grouped and de-duplicated with hash maps, a
//! calendar's time zones are shared by its objects, and the number of objects is capped.

use crate::ical::{self, Component};
use crate::itip::{Incoming, Method};
use crate::message::Parsed;
use crate::proof::Proof;
use mail_parser::{Message, MimeHeaders, PartType};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A calendar object refused while extracting, with the reason.
#[derive(Debug, Clone)]
pub struct Refused {
    pub method: String,
    pub component: String,
    pub uid: String,
    pub reason: Unread,
}

/// Why a calendar part or object was not read: typed until it is written out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Unread {
    /// The decoded part is larger than this many octets.
    TooLarge(usize),
    /// The iCalendar text does not parse (the parser's words).
    Malformed(String),
    /// Neither the calendar nor its media type names an iTIP method.
    NoMethod,
    /// A METHOD that RFC 5546 does not define.
    UnknownMethod(String),
    /// One iTIP message about this many objects (RFC 5546 1.4: one UID).
    SeveralUids(usize),
    /// A component without UID (RFC 5545 3.8.4.7).
    NoUid,
}

impl std::fmt::Display for Unread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unread::TooLarge(n) => write!(f, "calendar part larger than {n} octets"),
            Unread::Malformed(e) => write!(f, "malformed calendar: {e}"),
            Unread::NoMethod => write!(
                f,
                "not an iTIP message: no METHOD in the calendar or its media type"
            ),
            Unread::UnknownMethod(m) => write!(f, "unknown iTIP method {m}"),
            Unread::SeveralUids(n) => {
                write!(f, "{n} objects with different UIDs in one iTIP message")
            }
            Unread::NoUid => write!(f, "component has no UID"),
        }
    }
}

/// One iTIP object found in a message, with the addresses proven for the part it came from.
#[derive(Debug, Clone)]
pub struct Found {
    pub incoming: Incoming,
    /// Normalized addresses whose proof covers this object.
    pub proven: Vec<String>,
    /// About how many octets of calendar text it came from (for the pipeline's work budget).
    pub size: usize,
}

impl std::ops::Deref for Found {
    type Target = Incoming;
    fn deref(&self) -> &Incoming {
        &self.incoming
    }
}

#[derive(Debug, Default)]
pub struct Extracted {
    pub message_id: Option<String>,
    pub from: Option<String>,
    pub subject: Option<String>,
    /// To and Cc addresses, normalized.
    pub recipients: Vec<String>,
    pub objects: Vec<Found>,
    /// Notes about the message (method mismatch, duplicates dropped, what proof covered).
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
/// Maximum number of iTIP objects taken from one message (a real one has one or two).
pub const MAX_OBJECTS: usize = 64;

pub use crate::message::normalize_line_ends;

struct Part {
    text: String,
    ct_method: Option<String>,
    is_text_calendar: bool,
    order: usize,
    proven: Vec<String>,
    /// DKIM `l=` proofs that end inside this part: (address, the signed text of the part).
    partial: Vec<(String, String)>,
}

/// Extracts every iTIP object of a message, all unproven (for tools and tests that need no
/// sender proof).
pub fn extract(raw: &[u8]) -> Extracted {
    let (bytes, bare_cr) = normalize_line_ends(raw);
    let parsed = Parsed::new(&bytes, bare_cr);
    extract_parsed(&parsed, &Proof::default())
}

/// Extracts every iTIP object of a parsed message, each with the addresses that `proof`
/// proves for the part it came from.
pub fn extract_parsed(parsed: &Parsed<'_>, proof: &Proof) -> Extracted {
    let mut ex = Extracted::default();
    let Some(msg) = parsed.tree.as_ref() else {
        ex.notes
            .push("message could not be parsed as RFC 5322".into());
        return ex;
    };
    ex.message_id = msg.message_id().map(|s| s.to_string());
    ex.from = msg
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(imipd_core::addr::mailbox_as_cal_addr);
    ex.subject = msg.subject().map(str::to_string);
    let mut seen_rcpt = HashSet::new();
    'headers: for list in [msg.to(), msg.cc()].into_iter().flatten() {
        for a in list.iter() {
            if ex.recipients.len() >= MAX_RECIPIENTS {
                ex.notes.push(format!(
                    "more than {MAX_RECIPIENTS} To/Cc recipients; the rest were skipped"
                ));
                break 'headers;
            }
            if let Some(addr) = a.address() {
                let n = imipd_core::addr::mailbox_as_cal_addr(addr);
                if !n.is_empty() && seen_rcpt.insert(n.clone()) {
                    ex.recipients.push(n);
                }
            }
        }
    }
    if let Some(why) = &proof.ambiguity {
        if !proof.grants.is_empty() || !proof.results.is_empty() {
            ex.notes.push(format!(
                "sender proof covers no calendar: the MIME structure is ambiguous ({why})"
            ));
        }
    }
    let mut parts: Vec<Part> = Vec::new();
    match &proof.inner {
        // An opaque S/MIME message: the calendars are inside the decoded entity.
        Some(inner) => {
            let (bytes, bare_cr) = normalize_line_ends(inner);
            let inner = Parsed::new(&bytes, bare_cr);
            if let Some(tree) = inner.tree.as_ref() {
                let ambiguous = inner.ambiguity.is_some();
                if report_in(tree) {
                    return report(ex);
                }
                calendar_parts(
                    tree,
                    inner.bytes,
                    &mut ex,
                    &mut parts,
                    |index, _, in_headers| {
                        proof.proven_for_opaque(in_headers && index == 0, ambiguous)
                    },
                    |_, _| Vec::new(),
                );
            }
        }
        None => {
            if report_in(msg) {
                return report(ex);
            }
            calendar_parts(
                msg,
                parsed.bytes,
                &mut ex,
                &mut parts,
                |index, end, in_headers| proof.proven_for_part(index, end, in_headers),
                |body_start, end| proof.partial_for_part(body_start, end),
            );
        }
    }
    if !proof.grants.is_empty() && parts.iter().any(|p| p.proven.is_empty()) {
        ex.notes.push(
            "a calendar part lies outside what the sender's signature covers, in whole or in part"
                .into(),
        );
    }
    // Prefer proven parts, then the text/calendar alternative that carries method=, then
    // other text/calendar: a copy outside the signature never displaces the signed one.
    parts.sort_by_key(|p| {
        (
            p.proven.is_empty(),
            !(p.is_text_calendar && p.ct_method.is_some()),
            !p.is_text_calendar,
            p.order,
        )
    });
    let mut seen = HashSet::new();
    for part in parts {
        let first = ex.objects.len();
        calendar_objects_into(
            &part.text,
            part.ct_method.as_deref(),
            &part.proven,
            &mut ex,
            &mut seen,
        );
        // A DKIM l= prefix ending inside the part proves the objects that read the same
        // from the signed text alone (a folded line continued after the prefix does not).
        for (address, signed) in &part.partial {
            let signed_objects = calendar_objects(signed, part.ct_method.as_deref());
            let keys: HashSet<String> = signed_objects
                .objects
                .iter()
                .map(|f| object_key(f))
                .collect();
            for found in &mut ex.objects[first..] {
                if keys.contains(&object_key(found)) && !found.proven.contains(address) {
                    found.proven.push(address.clone());
                }
            }
        }
    }
    dedup_refusals(&mut ex);
    ex
}

/// An object's identity for comparing two readings: method and the exact components.
fn object_key(inc: &Incoming) -> String {
    let mut key = inc.method.as_str().to_string();
    for c in &inc.components {
        key.push('\n');
        key.push_str(&c.to_ical());
    }
    key
}

/// The single From address of a parsed message, normalized.
pub fn from_of(parsed: &Parsed<'_>) -> Option<String> {
    parsed
        .tree
        .as_ref()?
        .from()?
        .first()?
        .address()
        .map(imipd_core::addr::mailbox_as_cal_addr)
}

fn report(mut ex: Extracted) -> Extracted {
    ex.is_report = true;
    ex.notes
        .push("delivery report: calendars inside are not applied".into());
    ex
}

/// Whether any part of the tree makes it a delivery report (RFC 6522), at any depth.
fn report_in(msg: &Message<'_>) -> bool {
    msg.parts.iter().any(|part| {
        part.content_type().is_some_and(|ct| {
            let sub = ct.c_subtype.as_deref().unwrap_or("");
            (ct.c_type.eq_ignore_ascii_case("multipart") && sub.eq_ignore_ascii_case("report"))
                || (ct.c_type.eq_ignore_ascii_case("message")
                    && (sub.eq_ignore_ascii_case("delivery-status")
                        || sub.eq_ignore_ascii_case("global-delivery-status")))
        })
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CalendarKind {
    /// text/calendar (or text/x-vcalendar).
    Text,
    /// application/ics and the like, or a .ics/.vcs file as text/plain or octet-stream.
    Other,
    /// A part whose iCalendar lines were read as headers (its real headers follow the body).
    InHeaders,
}

/// Whether a leaf part holds a calendar, and how.
fn calendar_kind(part: &mail_parser::MessagePart<'_>) -> Option<CalendarKind> {
    if part
        .headers
        .first()
        .is_some_and(|h| h.name().eq_ignore_ascii_case("BEGIN"))
    {
        return Some(CalendarKind::InHeaders);
    }
    let ct = part.content_type();
    let (ctype, csub) = match ct {
        Some(ct) => (
            ct.c_type.to_ascii_lowercase(),
            ct.c_subtype.as_deref().unwrap_or("").to_ascii_lowercase(),
        ),
        None => ("text".into(), "plain".into()),
    };
    if ctype == "text" && (csub == "calendar" || csub == "x-vcalendar") {
        return Some(CalendarKind::Text);
    }
    if ctype == "application" && matches!(csub.as_str(), "ics" | "x-ics" | "calendar") {
        return Some(CalendarKind::Other);
    }
    let ics_name = ct
        .and_then(|ct| ct.attribute("name"))
        .or_else(|| {
            part.content_disposition()
                .and_then(|d| d.attribute("filename"))
        })
        .is_some_and(|f| {
            let f = f.to_ascii_lowercase();
            f.ends_with(".ics") || f.ends_with(".vcs")
        });
    if ics_name
        && matches!(
            (ctype.as_str(), csub.as_str()),
            ("text", "plain") | ("application", "octet-stream")
        )
    {
        return Some(CalendarKind::Other);
    }
    None
}

/// Whether the message may hold a calendar at all: a calendar part anywhere in its tree, or
/// an opaque S/MIME entity (which may wrap one). Decided from the MIME structure alone, so
/// that ordinary mail costs no signature check, DNS lookup or store access.
pub fn may_hold_calendar(parsed: &Parsed<'_>) -> bool {
    parsed.parts().iter().any(|part| match &part.body {
        PartType::Multipart(_) | PartType::Message(_) => false,
        _ => {
            calendar_kind(part).is_some()
                || part.content_type().is_some_and(|ct| {
                    ct.c_type.eq_ignore_ascii_case("application")
                        && ct.c_subtype.as_deref().is_some_and(|s| {
                            s.eq_ignore_ascii_case("pkcs7-mime")
                                || s.eq_ignore_ascii_case("x-pkcs7-mime")
                        })
                })
        }
    })
}

/// The calendar parts of one tree (never inside message/rfc822: those are separate trees).
fn calendar_parts(
    msg: &Message<'_>,
    raw_msg: &[u8],
    ex: &mut Extracted,
    parts: &mut Vec<Part>,
    proven_for: impl Fn(usize, usize, bool) -> Vec<String>,
    partial_for: impl Fn(usize, usize) -> Vec<(String, usize)>,
) {
    for (idx, part) in msg.parts.iter().enumerate() {
        if matches!(part.body, PartType::Multipart(_) | PartType::Message(_)) {
            continue;
        }
        let ct = part.content_type();
        let attr = |name: &str| -> Option<String> {
            ct.and_then(|ct| ct.attribute(name)).map(str::to_string)
        };
        let Some(kind) = calendar_kind(part) else {
            continue;
        };
        let is_text_calendar = kind == CalendarKind::Text;
        let headers_are_calendar = kind == CalendarKind::InHeaders;
        let body_start = part.offset_body as usize;
        let body_end = (part.offset_end as usize).min(raw_msg.len());
        if parts.len() >= MAX_PARTS {
            ex.notes.push(format!(
                "more than {MAX_PARTS} calendar parts; the rest were skipped"
            ));
            break;
        }
        let cte = part
            .headers
            .iter()
            .find(|h| h.name().eq_ignore_ascii_case("Content-Transfer-Encoding"))
            .and_then(|h| h.value().as_text())
            .map(|s| s.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let content_start = if headers_are_calendar {
            (part.offset_header as usize).min(body_end)
        } else {
            body_start.min(body_end)
        };
        let decode = |end: usize| -> Vec<u8> {
            let body = &raw_msg[content_start..end];
            match cte.as_str() {
                _ if headers_are_calendar => body.to_vec(),
                "base64" => imipd_core::codec::decode_base64_lenient(body),
                "quoted-printable" => imipd_core::codec::decode_qp_lenient(body),
                _ => body.to_vec(),
            }
        };
        let bytes = decode(body_end);
        if bytes.len() > MAX_PART {
            ex.refused.push(Refused {
                method: attr("method").unwrap_or_default().to_ascii_uppercase(),
                component: String::new(),
                uid: String::new(),
                reason: Unread::TooLarge(MAX_PART),
            });
            continue;
        }
        let charset = attr("charset");
        let text = decode_charset(&bytes, charset.as_deref());
        let text = if headers_are_calendar {
            strip_trailing_headers(&text)
        } else {
            text
        };
        let proven = proven_for(idx, part.offset_end as usize, headers_are_calendar);
        // Calendar lines in the top-level header section are never part of a signed prefix.
        let partial_start = if headers_are_calendar && idx == 0 {
            body_end
        } else {
            content_start
        };
        let partial = partial_for(partial_start, body_end)
            .into_iter()
            .filter(|(address, _)| !proven.contains(address))
            .map(|(address, until)| {
                let signed = decode_charset(&decode(until.min(body_end)), charset.as_deref());
                (address, complete_calendars(&signed))
            })
            .collect();
        parts.push(Part {
            text,
            ct_method: attr("method").map(|m| m.trim().to_ascii_uppercase()),
            is_text_calendar,
            order: idx,
            proven,
            partial,
        });
    }
}

/// The same broken object in two parts (inline copy + attachment) is one refusal.
fn dedup_refusals(ex: &mut Extracted) {
    let mut seen_refusals = HashSet::new();
    ex.refused.retain(|r| {
        seen_refusals.insert((
            r.method.clone(),
            r.component.clone(),
            r.uid.clone(),
            r.reason.clone(),
        ))
    });
}

/// The text up to and including its last END:VCALENDAR line (a signed prefix may stop inside
/// a later calendar, which is not signed whole).
fn complete_calendars(text: &str) -> String {
    match text.to_ascii_uppercase().rfind("END:VCALENDAR") {
        Some(pos) => {
            let end = text[pos..].find('\n').map_or(text.len(), |n| pos + n + 1);
            text[..end].to_string()
        }
        None => String::new(),
    }
}

/// Cuts MIME headers that a broken client wrote after END:VCALENDAR.
fn strip_trailing_headers(text: &str) -> String {
    match text.to_ascii_uppercase().rfind("END:VCALENDAR") {
        Some(pos) => text[..pos + "END:VCALENDAR".len()].to_string() + "\r\n",
        None => text.to_string(),
    }
}

/// The iTIP objects of one iCalendar text (an iSchedule body, or one calendar part of a
/// message): components grouped by UID, duplicates dropped, the method from the body with
/// `ct_method` (the media type's `method=`) as fallback. The objects carry no proof.
pub fn calendar_objects(text: &str, ct_method: Option<&str>) -> Extracted {
    let mut ex = Extracted::default();
    let mut seen = HashSet::new();
    let ct_method = ct_method.map(|m| m.trim().to_ascii_uppercase());
    calendar_objects_into(text, ct_method.as_deref(), &[], &mut ex, &mut seen);
    dedup_refusals(&mut ex);
    ex
}

/// What identifies one object copy: UID, SEQUENCE, RECURRENCE-ID.
type SeenKey = (String, i64, String);

fn calendar_objects_into(
    text: &str,
    ct_method: Option<&str>,
    proven: &[String],
    ex: &mut Extracted,
    seen: &mut HashSet<SeenKey>,
) {
    let cals = match ical::parse(text) {
        Ok(c) => c,
        Err(e) => {
            ex.refused.push(Refused {
                method: ct_method.unwrap_or_default().to_string(),
                component: String::new(),
                uid: String::new(),
                reason: Unread::Malformed(e.to_string()),
            });
            return;
        }
    };
    // The text's size shared among its components: what each object weighs in the work budget.
    let components: usize = cals
        .iter()
        .map(|c| c.subs.iter().filter(|s| s.is_schedulable()).count())
        .sum();
    let per_component = text.len() / components.max(1);
    for cal in cals {
        if ex.objects.len() + ex.refused.len() >= MAX_OBJECTS {
            ex.notes.push(format!(
                "more than {MAX_OBJECTS} calendar objects; the rest were not looked at"
            ));
            return;
        }
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
            (None, None) => String::new(),
        };
        let schedulable: Vec<&Component> = cal.subs.iter().filter(|c| c.is_schedulable()).collect();
        let timezones: Arc<Vec<Component>> =
            Arc::new(cal.subs_named("VTIMEZONE").cloned().collect());
        let tzmap = {
            let refs: Vec<&Component> = timezones.iter().collect();
            ical::time::TzMap::new(&refs)
        };
        let key_of = |c: &Component| -> SeenKey {
            (
                c.uid().unwrap_or("").to_string(),
                c.sequence(),
                crate::itip::rid_key(c, &tzmap),
            )
        };
        // A copy of objects already taken from another part (an attachment without the
        // method of the inline part, say) is no object of its own.
        if !schedulable.is_empty()
            && schedulable.len() <= MAX_OBJECTS
            && schedulable.iter().all(|c| seen.contains(&key_of(c)))
        {
            continue;
        }
        let first = schedulable.first();
        let refuse_all = |ex: &mut Extracted, reason: Unread| {
            ex.refused.push(Refused {
                method: method_str.clone(),
                component: first.map(|c| c.name.clone()).unwrap_or_default(),
                uid: first.and_then(|c| c.uid()).unwrap_or_default().to_string(),
                reason,
            });
        };
        if method_str.is_empty() {
            if !schedulable.is_empty() {
                refuse_all(ex, Unread::NoMethod);
            }
            continue;
        }
        let Some(method) = Method::parse(&method_str) else {
            if !schedulable.is_empty() {
                refuse_all(ex, Unread::UnknownMethod(method_str.clone()));
            }
            continue;
        };
        // RFC 5546 §1.4: one iTIP message is about one object (one UID).
        let uids: HashSet<&str> = schedulable
            .iter()
            .filter(|c| c.name != "VFREEBUSY")
            .map(|c| c.uid().unwrap_or(""))
            .collect();
        if uids.len() > 1 {
            refuse_all(ex, Unread::SeveralUids(uids.len()));
            continue;
        }
        // Group schedulable components by UID and kind, keeping their order.
        let mut groups: Vec<(String, String, Vec<Component>)> = Vec::new();
        let mut group_of: HashMap<(String, String), usize> = HashMap::new();
        for c in schedulable {
            let uid = c.uid().unwrap_or("").to_string();
            if uid.is_empty() && c.name != "VFREEBUSY" {
                ex.refused.push(Refused {
                    method: method_str.clone(),
                    component: c.name.clone(),
                    uid: String::new(),
                    reason: Unread::NoUid,
                });
                continue;
            }
            if !seen.insert(key_of(c)) {
                continue; // the same object again (inline copy + attachment)
            }
            let slot = *group_of
                .entry((uid.clone(), c.name.clone()))
                .or_insert_with(|| {
                    groups.push((uid.clone(), c.name.clone(), Vec::new()));
                    groups.len() - 1
                });
            groups[slot].2.push(c.clone());
        }
        for (uid, kind, components) in groups {
            let size = per_component * components.len();
            ex.objects.push(Found {
                incoming: Incoming {
                    method,
                    kind,
                    uid,
                    components,
                    timezones: timezones.clone(),
                },
                proven: proven.to_vec(),
                size,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_without_charset() {
        assert_eq!(decode_charset(b"B\xfcro", None), "Büro");
    }
}
