//! Header-section scanning for the places that need a field or two without a MIME parse (the
//! milter at end of headers, the proof's header rewriting, queue ids): one splitter for all.

/// The values of every header field `name` in the header section: unfolded (line ends removed),
/// trimmed.
pub fn values(raw: &[u8], name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (n, v) in fields(raw) {
        if n.eq_ignore_ascii_case(name) {
            out.push(
                String::from_utf8_lossy(v)
                    .replace(['\r', '\n'], "")
                    .trim()
                    .to_string(),
            );
        }
    }
    out
}

/// Splits the header section into (name, raw value) fields.
pub fn fields(raw: &[u8]) -> Vec<(String, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\r' || raw[i] == b'\n' {
            break; // end of headers
        }
        let start = i;
        // find end of field: a line end not followed by WSP
        let mut j = i;
        loop {
            while j < raw.len() && raw[j] != b'\n' {
                j += 1;
            }
            if j + 1 < raw.len() && (raw[j + 1] == b' ' || raw[j + 1] == b'\t') {
                j += 1;
                continue;
            }
            break;
        }
        let field = &raw[start..j.min(raw.len())];
        if let Some(colon) = field.iter().position(|b| *b == b':') {
            let name = String::from_utf8_lossy(&field[..colon]).trim().to_string();
            out.push((name, &field[colon + 1..]));
        }
        i = j + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_fields_are_one_value_and_the_body_is_not_read() {
        let raw = b"Subject: a\r\n  b\r\nContent-Type: text/plain;\r\n\tcharset=utf-8\r\n\r\nX-Not: body\r\n";
        assert_eq!(values(raw, "subject"), ["a  b"]);
        assert_eq!(values(raw, "Content-Type"), ["text/plain;\tcharset=utf-8"]);
        assert!(values(raw, "X-Not").is_empty());
        assert_eq!(fields(raw).len(), 2);
    }

    #[test]
    fn bare_lf_and_repeats() {
        let raw = b"A: 1\nB: 2\nA: 3\n\n";
        assert_eq!(values(raw, "a"), ["1", "3"]);
    }
}
