//! The little XML iSchedule needs: a writer for our documents and a tolerant reader for the
//! peers' (capabilities, schedule-response, error). Namespace prefixes are dropped: every
//! element iSchedule defines lives in one namespace, and peers differ in how they spell it.
//! No DTDs, no entities beyond the five predefined and numeric ones; depth and size bounded.

/// The iSchedule namespace (draft-desruisseaux-ischedule §10).
pub const NS: &str = "urn:ietf:params:xml:ns:ischedule";

/// Deepest nesting accepted from a peer.
const MAX_DEPTH: usize = 32;
/// Most elements accepted from a peer in one document.
const MAX_ELEMENTS: usize = 20_000;

/// Escapes text for element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Text as a CDATA section (split where the text itself contains `]]>`).
pub fn cdata(s: &str) -> String {
    format!("<![CDATA[{}]]>", s.replace("]]>", "]]]]><![CDATA[>"))
}

/// One element of a parsed document, prefixes removed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    /// Character data directly inside this element (text and CDATA, concatenated).
    pub text: String,
}

impl Element {
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.name == name)
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Trimmed text of the named child, if present.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }
}

fn local(name: &str) -> &str {
    name.rsplit_once(':').map(|(_, l)| l).unwrap_or(name)
}

fn decode_entities(s: &str) -> Result<String, String> {
    if !s.contains('&') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest
            .find(';')
            .filter(|&e| e <= 12)
            .ok_or("unterminated entity")?;
        let ent = &rest[1..end];
        let c = match ent {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let n = if let Some(h) = ent.strip_prefix("#x").or(ent.strip_prefix("#X")) {
                    u32::from_str_radix(h, 16).ok()
                } else if let Some(d) = ent.strip_prefix('#') {
                    d.parse().ok()
                } else {
                    None
                };
                n.and_then(char::from_u32)
                    .ok_or_else(|| format!("unknown entity &{ent};"))?
            }
        };
        out.push(c);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn parse_attrs(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or("attribute without value")?;
        let name = rest[..eq].trim();
        let after = rest[eq + 1..].trim_start();
        let quote = after.chars().next().ok_or("attribute without value")?;
        if quote != '"' && quote != '\'' {
            return Err("unquoted attribute".into());
        }
        let close = after[1..].find(quote).ok_or("unterminated attribute")?;
        let value = decode_entities(&after[1..1 + close])?;
        if !name.starts_with("xmlns") {
            out.push((local(name).to_string(), value));
        }
        rest = after[close + 2..].trim_start();
    }
    Ok(out)
}

/// Parses a document and returns its root element.
pub fn parse(doc: &str) -> Result<Element, String> {
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut rest = doc.trim_start_matches('\u{feff}');
    let mut count = 0usize;
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            if let Some(top) = stack.last_mut() {
                top.text.push_str(&decode_entities(rest)?);
            }
            break;
        };
        if lt > 0 {
            if let Some(top) = stack.last_mut() {
                top.text.push_str(&decode_entities(&rest[..lt])?);
            }
        }
        rest = &rest[lt..];
        if let Some(r) = rest.strip_prefix("<![CDATA[") {
            let end = r.find("]]>").ok_or("unterminated CDATA")?;
            if let Some(top) = stack.last_mut() {
                top.text.push_str(&r[..end]);
            }
            rest = &r[end + 3..];
        } else if let Some(r) = rest.strip_prefix("<!--") {
            let end = r.find("-->").ok_or("unterminated comment")?;
            rest = &r[end + 3..];
        } else if rest.starts_with("<?") {
            let end = rest.find("?>").ok_or("unterminated declaration")?;
            rest = &rest[end + 2..];
        } else if rest.starts_with("<!") {
            return Err("DTDs are not accepted".into());
        } else if let Some(r) = rest.strip_prefix("</") {
            let end = r.find('>').ok_or("unterminated end tag")?;
            let name = local(r[..end].trim());
            let el = stack.pop().ok_or("end tag without start tag")?;
            if el.name != name {
                return Err(format!("</{name}> closes <{}>", el.name));
            }
            match stack.last_mut() {
                Some(parent) => parent.children.push(el),
                None => root = Some(el),
            }
            rest = &r[end + 1..];
        } else {
            let end = rest.find('>').ok_or("unterminated start tag")?;
            let inner = &rest[1..end];
            let (inner, empty) = match inner.strip_suffix('/') {
                Some(i) => (i, true),
                None => (inner, false),
            };
            let (name, attrs) = match inner.find(|c: char| c.is_whitespace()) {
                Some(i) => (&inner[..i], &inner[i..]),
                None => (inner, ""),
            };
            if name.is_empty() {
                return Err("element without a name".into());
            }
            count += 1;
            if count > MAX_ELEMENTS || stack.len() >= MAX_DEPTH {
                return Err("document too large or too deep".into());
            }
            if root.is_some() {
                return Err("content after the root element".into());
            }
            let el = Element {
                name: local(name).to_string(),
                attrs: parse_attrs(attrs)?,
                ..Default::default()
            };
            if empty {
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            } else {
                stack.push(el);
            }
            rest = &rest[end + 1..];
        }
    }
    if !stack.is_empty() {
        return Err("unclosed element".into());
    }
    root.ok_or_else(|| "no root element".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_prefixed_names_cdata_and_entities() {
        let doc =
            "<?xml version=\"1.0\"?>\n<IS:a xmlns:IS=\"urn:x\"><IS:b k='v&amp;w'>x &lt; y</IS:b>\
                   <c><![CDATA[BEGIN:X\r\n<raw>]]></c><d/></IS:a>";
        let r = parse(doc).unwrap();
        assert_eq!(r.name, "a");
        assert_eq!(r.child("b").unwrap().attr("k"), Some("v&w"));
        assert_eq!(r.child_text("b"), Some("x < y"));
        assert_eq!(r.child("c").unwrap().text, "BEGIN:X\r\n<raw>");
        assert!(r.child("d").is_some());
    }

    #[test]
    fn refuses_doctype_and_mismatched_tags() {
        assert!(parse("<!DOCTYPE x [<!ENTITY a 'b'>]><x/>").is_err());
        assert!(parse("<a><b></a></b>").is_err());
        assert!(parse(&"<a>".repeat(100)).is_err());
    }

    #[test]
    fn cdata_with_terminator_round_trips() {
        let t = "a]]>b";
        let doc = format!("<x>{}</x>", cdata(t));
        assert_eq!(parse(&doc).unwrap().text, t);
    }
}
