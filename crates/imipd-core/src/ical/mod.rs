//! A lossless iCalendar (RFC 5545) content-line model.
//!
//! The iTIP engine needs to read and rewrite a handful of properties and parameters while keeping
//! everything else (X- properties, unknown parameters, VALARMs) byte-for-byte. A generic tree of
//! content lines does exactly that; calcard is used beside it for what is hard (recurrence
//! expansion and time zones, see [`time`]).

pub mod time;

use std::fmt::Write as _;

/// Hard limits: no input may make the parser balloon.
pub const MAX_DEPTH: usize = 8;
pub const MAX_LINES: usize = 200_000;
pub const MAX_PROPS_PER_COMPONENT: usize = 20_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Upper-case name.
    pub name: String,
    /// Values without surrounding quotes.
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prop {
    /// Upper-case name.
    pub name: String,
    pub params: Vec<Param>,
    /// The value as written on the wire (still escaped for TEXT values).
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Component {
    /// Upper-case name (VCALENDAR, VEVENT, ...).
    pub name: String,
    pub props: Vec<Prop>,
    pub subs: Vec<Component>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for ParseError {}

impl Prop {
    pub fn new(name: &str, value: impl Into<String>) -> Self {
        Prop {
            name: name.to_ascii_uppercase(),
            params: Vec::new(),
            value: value.into(),
        }
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .and_then(|p| p.values.first())
            .map(String::as_str)
    }

    pub fn param_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.params
            .iter()
            .filter(move |p| p.name.eq_ignore_ascii_case(name))
            .flat_map(|p| p.values.iter().map(String::as_str))
    }

    pub fn set_param(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        if let Some(p) = self
            .params
            .iter_mut()
            .find(|p| p.name.eq_ignore_ascii_case(name))
        {
            p.values = vec![value];
        } else {
            self.params.push(Param {
                name: name.to_ascii_uppercase(),
                values: vec![value],
            });
        }
    }

    pub fn set_param_values(&mut self, name: &str, values: Vec<String>) {
        self.remove_param(name);
        if !values.is_empty() {
            self.params.push(Param {
                name: name.to_ascii_uppercase(),
                values,
            });
        }
    }

    pub fn remove_param(&mut self, name: &str) {
        self.params.retain(|p| !p.name.eq_ignore_ascii_case(name));
    }

    /// The value with RFC 5545 TEXT escapes undone.
    pub fn text(&self) -> String {
        unescape_text(&self.value)
    }

    fn write(&self, out: &mut String) {
        let mut line = String::with_capacity(self.name.len() + self.value.len() + 16);
        line.push_str(&self.name);
        for p in &self.params {
            line.push(';');
            line.push_str(&p.name);
            line.push('=');
            for (i, v) in p.values.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                if v.contains([':', ';', ',']) {
                    line.push('"');
                    line.extend(v.chars().filter(|c| *c != '"'));
                    line.push('"');
                } else {
                    line.push_str(v);
                }
            }
        }
        line.push(':');
        line.push_str(&self.value);
        fold_into(&line, out);
    }
}

/// Writes `line` folded at 75 octets without splitting a UTF-8 sequence, ending in CRLF.
fn fold_into(line: &str, out: &mut String) {
    let mut width = 0usize;
    for ch in line.chars() {
        let len = ch.len_utf8();
        if width + len > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(ch);
        width += len;
    }
    out.push_str("\r\n");
}

pub fn unescape_text(value: &str) -> String {
    if !value.contains('\\') {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') | Some('N') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn escape_text(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

impl Component {
    pub fn new(name: &str) -> Self {
        Component {
            name: name.to_ascii_uppercase(),
            ..Default::default()
        }
    }

    pub fn prop(&self, name: &str) -> Option<&Prop> {
        self.props.iter().find(|p| p.name == name)
    }

    pub fn prop_mut(&mut self, name: &str) -> Option<&mut Prop> {
        self.props.iter_mut().find(|p| p.name == name)
    }

    pub fn props_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Prop> {
        self.props.iter().filter(move |p| p.name == name)
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        self.prop(name).map(|p| p.value.as_str())
    }

    /// Replaces every property `name` with one holding `value`.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        if let Some(pos) = self.props.iter().position(|p| p.name == name) {
            self.props[pos].value = value;
            self.props[pos].params.clear();
            let mut i = pos + 1;
            while i < self.props.len() {
                if self.props[i].name == name {
                    self.props.remove(i);
                } else {
                    i += 1;
                }
            }
        } else {
            self.props.push(Prop::new(name, value));
        }
    }

    pub fn set_prop(&mut self, prop: Prop) {
        if let Some(pos) = self.props.iter().position(|p| p.name == prop.name) {
            let name = prop.name.clone();
            self.props[pos] = prop;
            let mut i = pos + 1;
            while i < self.props.len() {
                if self.props[i].name == name {
                    self.props.remove(i);
                } else {
                    i += 1;
                }
            }
        } else {
            self.props.push(prop);
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.props.retain(|p| p.name != name);
    }

    pub fn uid(&self) -> Option<&str> {
        self.value("UID").map(str::trim).filter(|u| !u.is_empty())
    }

    /// SEQUENCE, 0 when absent or unparsable (RFC 5545 3.8.7.4 default).
    pub fn sequence(&self) -> i64 {
        self.value("SEQUENCE")
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(0)
    }

    pub fn is_schedulable(&self) -> bool {
        matches!(
            self.name.as_str(),
            "VEVENT" | "VTODO" | "VJOURNAL" | "VFREEBUSY"
        )
    }

    pub fn subs_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Component> {
        self.subs.iter().filter(move |c| c.name == name)
    }

    /// Serializes as iCalendar text with CRLF line ends and 75-octet folding.
    pub fn to_ical(&self) -> String {
        let mut out = String::with_capacity(512);
        self.write(&mut out);
        out
    }

    pub fn write(&self, out: &mut String) {
        let _ = write!(out, "BEGIN:{}\r\n", self.name);
        for p in &self.props {
            p.write(out);
        }
        for c in &self.subs {
            c.write(out);
        }
        let _ = write!(out, "END:{}\r\n", self.name);
    }
}

/// Parses every VCALENDAR found in `text`. Tolerates CRLF, LF and bare CR line ends, folding in
/// odd places, blank lines, text before and after the objects, and several objects in a row.
pub fn parse(text: &str) -> Result<Vec<Component>, ParseError> {
    let lines = unfold(text);
    if lines.len() > MAX_LINES {
        return Err(ParseError {
            line: MAX_LINES,
            reason: format!("more than {MAX_LINES} content lines"),
        });
    }
    let mut out = Vec::new();
    let mut stack: Vec<Component> = Vec::new();
    for (lineno, line) in lines {
        let line = line.trim_end_matches([' ', '\t']);
        if line.is_empty() {
            continue;
        }
        let prop = match parse_line(line) {
            Some(p) => p,
            None => {
                if stack.is_empty() {
                    continue; // junk outside an object
                }
                // A line without a colon inside an object: tolerate X-/garbage lines.
                continue;
            }
        };
        if prop.name == "BEGIN" {
            let name = prop.value.trim().to_ascii_uppercase();
            if stack.is_empty() && name != "VCALENDAR" {
                continue;
            }
            if stack.len() >= MAX_DEPTH {
                return Err(ParseError {
                    line: lineno,
                    reason: format!("components nested deeper than {MAX_DEPTH}"),
                });
            }
            stack.push(Component::new(&name));
        } else if prop.name == "END" {
            let name = prop.value.trim().to_ascii_uppercase();
            let Some(top) = stack.last() else { continue };
            if top.name != name {
                return Err(ParseError {
                    line: lineno,
                    reason: format!(
                        "END:{} while {} is open (truncated object?)",
                        name, top.name
                    ),
                });
            }
            let done = stack.pop().expect("checked above");
            match stack.last_mut() {
                Some(parent) => parent.subs.push(done),
                None => out.push(done),
            }
        } else if let Some(top) = stack.last_mut() {
            if top.props.len() >= MAX_PROPS_PER_COMPONENT {
                return Err(ParseError {
                    line: lineno,
                    reason: format!(
                        "more than {MAX_PROPS_PER_COMPONENT} properties in {}",
                        top.name
                    ),
                });
            }
            top.props.push(prop);
        }
    }
    if let Some(open) = stack.last() {
        return Err(ParseError {
            line: 0,
            reason: format!("object ends while {} is still open (truncated?)", open.name),
        });
    }
    if out.is_empty() {
        return Err(ParseError {
            line: 0,
            reason: "no BEGIN:VCALENDAR found".into(),
        });
    }
    Ok(out)
}

/// Splits into logical lines (numbered from 1), unfolding continuation lines.
fn unfold(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    let bytes = text.as_bytes();
    let mut start = 0usize;
    let mut lineno = 0usize;
    let mut i = 0usize;
    let push = |raw: &str, lineno: usize, out: &mut Vec<(usize, String)>| {
        if let Some(rest) = raw.strip_prefix([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push_str(rest);
                return;
            }
        }
        out.push((lineno, raw.to_string()));
    };
    while i < bytes.len() {
        match bytes[i] {
            b'\r' => {
                lineno += 1;
                push(&text[start..i], lineno, &mut out);
                if i + 1 < bytes.len() && bytes[i + 1] == b'\n' {
                    i += 1;
                }
                start = i + 1;
            }
            b'\n' => {
                lineno += 1;
                push(&text[start..i], lineno, &mut out);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < bytes.len() {
        lineno += 1;
        push(&text[start..], lineno, &mut out);
    }
    out
}

/// Parses `NAME;P=V;P="x,y":value`. Returns None when there is no name/colon.
fn parse_line(line: &str) -> Option<Prop> {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() && bytes[i] != b';' && bytes[i] != b':' {
        i += 1;
    }
    if i == 0 || i >= bytes.len() {
        return None;
    }
    let name = line[..i].trim().to_ascii_uppercase();
    if name.is_empty() || name.contains(' ') {
        return None;
    }
    let mut params = Vec::new();
    while i < bytes.len() && bytes[i] == b';' {
        i += 1;
        let pstart = i;
        while i < bytes.len() && !matches!(bytes[i], b'=' | b';' | b':') {
            i += 1;
        }
        let pname = line[pstart..i].trim().to_ascii_uppercase();
        let mut values = Vec::new();
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            loop {
                if i < bytes.len() && bytes[i] == b'"' {
                    i += 1;
                    let vstart = i;
                    while i < bytes.len() && bytes[i] != b'"' {
                        i += 1;
                    }
                    values.push(line[vstart..i].to_string());
                    if i < bytes.len() {
                        i += 1; // closing quote
                    }
                    // Tolerate junk between the closing quote and the next delimiter.
                    while i < bytes.len() && !matches!(bytes[i], b',' | b';' | b':') {
                        i += 1;
                    }
                } else {
                    let vstart = i;
                    while i < bytes.len() && !matches!(bytes[i], b',' | b';' | b':') {
                        i += 1;
                    }
                    values.push(line[vstart..i].to_string());
                }
                if i < bytes.len() && bytes[i] == b',' {
                    i += 1;
                    continue;
                }
                break;
            }
        }
        if !pname.is_empty() {
            params.push(Param {
                name: pname,
                values,
            });
        }
    }
    if i >= bytes.len() || bytes[i] != b':' {
        return None;
    }
    Some(Prop {
        name,
        params,
        value: line[i + 1..].to_string(),
    })
}

pub use crate::addr::{mailto, norm_addr};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_params_with_quotes_and_commas() {
        let cal = parse(
            "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nATTENDEE;CN=\"Doe, John\";DELEGATED-TO=\"mailto:a@x\",\"mailto:b@x\":mailto:j@x\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
        )
        .unwrap();
        let p = &cal[0].subs[0].props[0];
        assert_eq!(p.param("CN"), Some("Doe, John"));
        assert_eq!(p.param_values("DELEGATED-TO").count(), 2);
        assert_eq!(p.value, "mailto:j@x");
    }

    #[test]
    fn unfolds_bare_cr_and_odd_folds() {
        let cal = parse("BEGIN:VCALENDAR\rBEGIN:VEVENT\rDTSTART:20120101T1700\r 00\rATTENDEE;RSV\r P=TRUE:mailto:x@y\rEND:VEVENT\rEND:VCALENDAR\r").unwrap();
        assert_eq!(cal[0].subs[0].value("DTSTART"), Some("20120101T170000"));
        assert_eq!(cal[0].subs[0].props[1].param("RSVP"), Some("TRUE"));
    }

    #[test]
    fn unbalanced_end_is_refused() {
        let e =
            parse("BEGIN:VCALENDAR\nBEGIN:VTIMEZONE\nBEGIN:DAYLIGHT\nEND:VEVENT\nEND:VCALENDAR\n")
                .unwrap_err();
        assert!(e.reason.contains("END:VEVENT"));
    }

    #[test]
    fn round_trip_keeps_unknown_properties() {
        let src = "BEGIN:VCALENDAR\r\nX-WR-CALNAME:x\r\nBEGIN:VEVENT\r\nUID:1\r\nX-ENTOURAGE_UUID;X-P=1:abc\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
        let cal = parse(src).unwrap();
        assert_eq!(cal[0].to_ical(), src);
    }

    #[test]
    fn addresses_decode_unreserved_escapes_only() {
        assert_eq!(
            norm_addr("mailto:fay%2Eortiz@example.org"),
            "fay.ortiz@example.org"
        );
        assert_eq!(
            norm_addr("MAILTO:Fay%2eOrtiz@Example.ORG"),
            "fay.ortiz@example.org"
        );
        assert_eq!(
            norm_addr("mailto:%66ay%7e1@example.org"),
            "fay~1@example.org"
        );
        // Reserved and other escapes stay: %40 is not an @.
        assert_ne!(
            norm_addr("fay%40example.org@evil.example"),
            norm_addr("fay@example.org@evil.example")
        );
        assert_eq!(norm_addr("fay%40x@example.org"), "fay%40x@example.org");
        assert_ne!(norm_addr("fay@example.org."), norm_addr("fay@example.org"));
        assert_ne!(norm_addr("<fay@example.org>"), norm_addr("fay@example.org"));
        // A truncated or bad escape is kept as written.
        assert_eq!(norm_addr("fay%2@example.org%"), "fay%2@example.org%");
        assert_eq!(norm_addr("fay%zz@example.org"), "fay%zz@example.org");
        // Case folding covers the local part, also beyond ASCII.
        assert_eq!(norm_addr("mailto:ÉLODIE@Example.org"), "élodie@example.org");
    }

    #[test]
    fn folding_respects_utf8() {
        let mut c = Component::new("VEVENT");
        c.set("SUMMARY", "é".repeat(100));
        let s = c.to_ical();
        for l in s.split("\r\n") {
            assert!(l.len() <= 75);
        }
        let back = parse(&format!("BEGIN:VCALENDAR\r\n{s}END:VCALENDAR\r\n")).unwrap();
        assert_eq!(back[0].subs[0].value("SUMMARY").unwrap(), "é".repeat(100));
    }
}
